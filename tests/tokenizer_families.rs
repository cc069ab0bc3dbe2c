//! The tokenizers the model families ship, each in a GGUF of its family's
//! architecture, against llama.cpp's tokenizer on the same file (loaded
//! vocab-only): Qwen's byte-level BPE with the `qwen2` pre-tokenizer,
//! Gemma's SentencePiece settings and Phi-3's.
mod common;

use common::tokenizer::*;
use shardline::gguf::writer::GgufWriter;
use shardline::gguf::Gguf;
use shardline::tokenizer::VocabKind;

/// A byte-level BPE vocabulary with merges (SmolLM2's tokens, merges and
/// special tokens, Qwen's `<|im_start|>` and `<|im_end|>` among them) under
/// the `qwen2` pre-tokenizer, in a vocab-only qwen2 GGUF: shardline
/// encodes, decodes and names every piece as llama.cpp does.
#[test]
fn qwen2_bpe_matches_llama_cpp() {
    let src = Gguf::open(common::model_path()).unwrap();
    let path = temp_path("qwen2-bpe");
    let mut w = GgufWriter::new();
    let key = |s: &str| format!("qwen2.{s}");
    w.add_kv("general.architecture", "qwen2")
        .add_kv("general.name", "synthetic qwen2 tokenizer")
        .add_kv(key("context_length"), 256u32)
        .add_kv(key("embedding_length"), 64u32)
        .add_kv(key("block_count"), 1u32)
        .add_kv(key("feed_forward_length"), 128u32)
        .add_kv(key("attention.head_count"), 4u32)
        .add_kv(key("attention.head_count_kv"), 4u32)
        .add_kv(key("attention.layer_norm_rms_epsilon"), 1e-6f32);
    for (k, v) in src.metadata_map().iter() {
        if k.starts_with("tokenizer.")
            && k != "tokenizer.ggml.pre"
            && k != "tokenizer.chat_template"
        {
            w.add_kv(k, v.clone());
        }
    }
    w.add_kv("tokenizer.ggml.pre", "qwen2");
    w.write_file(&path).unwrap();
    let mut all = texts();
    all.extend(random_texts(150, 11));
    check_file("qwen2 bpe", &path, VocabKind::Bpe, &all);
    let _ = std::fs::remove_file(&path);
}

/// Gemma's SentencePiece settings: a `llama` vocabulary with byte fallback
/// tokens and no space prefix, in a gemma3 GGUF.
#[test]
fn gemma3_spm_matches_llama_cpp() {
    check_spm(
        "gemma3-spm",
        "gemma3",
        &[
            ("tokenizer.ggml.add_space_prefix", false.into()),
            ("tokenizer.ggml.add_bos_token", true.into()),
            ("gemma3.attention.sliding_window", 512u32.into()),
        ],
    );
}

/// Phi-3's: a `llama` SentencePiece vocabulary in a phi3 GGUF.
#[test]
fn phi3_spm_matches_llama_cpp() {
    check_spm("phi3-spm", "phi3", &[]);
}
