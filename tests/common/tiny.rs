//! A tiny but complete llama model written with the project's GGUF writer:
//! 2 layers, width 8, 2 query heads of 4, 1 KV head, feed-forward 16, a
//! 4-token SentencePiece vocabulary, f32 weights. It passes every check the
//! loader makes, so changing one key or one byte of it makes a hostile file
//! that fails in exactly one way.

use shardline::gguf::writer::GgufWriter;
use shardline::gguf::{GgmlType, Value};

/// Layers the tiny model's tensors cover.
pub const N_LAYER: u32 = 2;

/// The tiny model's bytes, with `overrides` replacing or adding keys, and
/// the Q and attention-output projections `q_rows` wide (8 is right).
pub fn tiny_model(overrides: &[(&str, Value)], q_rows: u64) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama")
        .add_kv("general.name", "tiny")
        .add_kv("llama.block_count", N_LAYER)
        .add_kv("llama.context_length", 256u32)
        .add_kv("llama.embedding_length", 8u32)
        .add_kv("llama.feed_forward_length", 16u32)
        .add_kv("llama.attention.head_count", 2u32)
        .add_kv("llama.attention.head_count_kv", 1u32)
        .add_kv("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
        .add_kv("tokenizer.ggml.model", "llama")
        .add_kv("tokenizer.ggml.tokens", vec!["<unk>", "<s>", "</s>", "a"])
        .add_kv("tokenizer.ggml.scores", vec![0f32; 4])
        .add_kv("tokenizer.ggml.token_type", vec![2i32, 3, 3, 1]);
    for (k, v) in overrides {
        w.add_kv(*k, v.clone());
    }
    let mut add = |name: String, dims: &[u64]| {
        let n: u64 = dims.iter().product();
        // Small distinct values, so the weights are not all alike.
        let data: Vec<u8> = (0..n)
            .flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes())
            .collect();
        w.add_tensor(name, GgmlType::F32, dims, data).unwrap();
    };
    add("token_embd.weight".into(), &[8, 4]);
    add("output_norm.weight".into(), &[8]);
    for l in 0..N_LAYER {
        add(format!("blk.{l}.attn_norm.weight"), &[8]);
        add(format!("blk.{l}.attn_q.weight"), &[8, q_rows]);
        add(format!("blk.{l}.attn_k.weight"), &[8, 4]);
        add(format!("blk.{l}.attn_v.weight"), &[8, 4]);
        add(format!("blk.{l}.attn_output.weight"), &[q_rows, 8]);
        add(format!("blk.{l}.ffn_norm.weight"), &[8]);
        add(format!("blk.{l}.ffn_gate.weight"), &[8, 16]);
        add(format!("blk.{l}.ffn_up.weight"), &[8, 16]);
        add(format!("blk.{l}.ffn_down.weight"), &[16, 8]);
    }
    w.to_bytes().unwrap().0
}

/// The tiny model, unchanged.
pub fn valid() -> Vec<u8> {
    tiny_model(&[], 8)
}
