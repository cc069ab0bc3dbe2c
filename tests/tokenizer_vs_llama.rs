//! shardline's tokenizer against llama.cpp's (`llama_tokenize`,
//! `llama_token_to_piece`, `llama_detokenize`): byte-level BPE on
//! SmolLM2-135M-Instruct, and SentencePiece on synthetic vocabularies written
//! as GGUF files that llama.cpp loads vocab-only (`common::tokenizer`).
mod common;

use common::llama_ref::LlamaVocab;
use common::tokenizer::*;
use shardline::gguf::writer::GgufWriter;
use shardline::gguf::Gguf;
use shardline::tokenizer::{StreamDecoder, Tokenizer, VocabKind};

struct Smol {
    ours: Tokenizer,
    theirs: LlamaVocab,
}

fn smol() -> Smol {
    let path = common::model_path();
    let gguf = Gguf::open(&path).expect("open model");
    let ours = Tokenizer::from_gguf(&gguf).expect("tokenizer from SmolLM2");
    let theirs = LlamaVocab::load(&path).expect("llama.cpp loads SmolLM2 vocab-only");
    Smol { ours, theirs }
}

#[test]
fn smollm2_encode_matches_llama_cpp() {
    let s = smol();
    assert_eq!(s.ours.kind(), VocabKind::Bpe);
    let mut all = texts();
    all.extend(random_texts(400, 7));
    let mut compared = 0;
    for text in &all {
        for add_special in [false, true] {
            for parse_special in [false, true] {
                let ours = ids(&s.ours.encode(text, add_special, parse_special));
                let theirs = s.theirs.tokenize(text, add_special, parse_special);
                assert_eq!(
                    ours, theirs,
                    "encode({text:?}, add_special={add_special}, parse_special={parse_special})"
                );
                compared += 1;
            }
        }
    }
    eprintln!("{compared} encodings equal to llama.cpp's");
}

#[test]
fn smollm2_round_trips() {
    let s = smol();
    let mut all = texts();
    all.extend(random_texts(200, 11));
    for text in &all {
        let plain = s.ours.encode(text, false, false);
        assert_eq!(
            &s.ours.decode(&plain, false),
            text,
            "decode(encode({text:?}))"
        );
        let parsed = s.ours.encode(text, false, true);
        assert_eq!(
            &s.ours.decode(&parsed, true),
            text,
            "with special tokens: {text:?}"
        );
        // Streaming gives the same text, whatever the token boundaries.
        let mut stream = StreamDecoder::new(true);
        let mut streamed = String::new();
        for &id in &parsed {
            let part = stream.push(&s.ours, id);
            assert!(
                !part.contains('\u{fffd}') || text.contains('\u{fffd}'),
                "{text:?}"
            );
            streamed.push_str(&part);
        }
        streamed.push_str(&stream.finish());
        assert_eq!(&streamed, text);
    }
}

#[test]
fn smollm2_pieces_match_llama_cpp() {
    let s = smol();
    let n = s.theirs.n_tokens();
    assert_eq!(s.ours.n_vocab(), n as usize);
    for id in 0..n {
        for special in [false, true] {
            assert_eq!(
                s.ours.token_to_piece(id as u32, special),
                s.theirs.piece(id, 0, special),
                "piece of {id} (special={special})"
            );
        }
        assert_eq!(
            s.ours.is_eog(id as u32),
            s.theirs.is_eog(id),
            "is_eog({id})"
        );
    }
    eprintln!("{} pieces × 2 and EOG flags equal to llama.cpp's", n);
    let (bos, eos, eot) = s.theirs.bos_eos_eot();
    assert_eq!(s.ours.bos().map(|x| x as i32), Some(bos));
    assert_eq!(s.ours.eos().map(|x| x as i32), Some(eos));
    // llama.cpp picks EOT among several candidate texts in hash-map order;
    // either way it is an end-of-generation token.
    assert!(s.ours.is_eog(eot as u32));
    assert_eq!(s.ours.token_to_piece(u32::MAX, true), Vec::<u8>::new());
}

#[test]
fn smollm2_detokenize_matches_llama_cpp() {
    let s = smol();
    for text in texts().iter().chain(random_texts(100, 3).iter()) {
        for add_special in [false, true] {
            let toks = s.ours.encode(text, add_special, true);
            for remove_special in [false, true] {
                for unparse_special in [false, true] {
                    assert_eq!(
                        s.ours.detokenize(&toks, remove_special, unparse_special),
                        s.theirs
                            .detokenize(&ids(&toks), remove_special, unparse_special),
                        "detokenize({text:?}, {remove_special}, {unparse_special})"
                    );
                }
            }
        }
    }
}

#[test]
fn smollm2_encodes_fast() {
    let s = smol();
    let text: String = texts().concat().chars().cycle().take(8000).collect();
    // Warm the lazily built Unicode tables.
    s.ours.encode("warm up", false, false);
    let t = std::time::Instant::now();
    let n = s.ours.encode(&text, false, true).len();
    let took = t.elapsed();
    eprintln!("encoded {} bytes into {n} tokens in {took:?}", text.len());
    assert!(took.as_millis() < 500, "encoding 8 KB took {took:?}");
}

/// SmolLM2's vocabulary and merges under other `tokenizer.ggml.pre` values:
/// every pre-tokenizer shardline knows splits text as llama.cpp's does.
#[test]
fn pre_tokenizers_match_llama_cpp() {
    let src = Gguf::open(common::model_path()).unwrap();
    let pres: &[Option<&str>] = &[
        None,
        Some("default"),
        Some("llama3"),
        Some("llama-bpe"),
        Some("dbrx"),
        Some("qwen2"),
        Some("qwen35"),
        Some("stablelm2"),
        Some("gpt-2"),
        Some("olmo"),
        Some("falcon"),
        Some("starcoder"),
        Some("command-r"),
        Some("deepseek-llm"),
        Some("deepseek-coder"),
        Some("deepseek-v3"),
        Some("poro-chat"),
        Some("bloom"),
        Some("viking"),
        Some("tekken"),
        Some("gpt-4o"),
        Some("chameleon"),
        Some("bailingmoe"),
        Some("seed-coder"),
        Some("ufakzeka"),
        Some("laguna"),
        Some("exaone-moe"),
        Some("minicpm5"),
        Some("youtu"),
        Some("chatglm-bpe"),
        Some("glm4"),
        Some("grok-2"),
    ];
    let mut all = texts();
    all.extend(random_texts(150, 5));
    for pre in pres {
        let name = pre.unwrap_or("none");
        let path = temp_path(&format!("pre-{name}"));
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata_map().iter() {
            if k != "tokenizer.ggml.pre" && k != "tokenizer.chat_template" {
                w.add_kv(k, v.clone());
            }
        }
        if let Some(p) = pre {
            w.add_kv("tokenizer.ggml.pre", *p);
        }
        w.write_file(&path).unwrap();
        let ours = Tokenizer::from_gguf(&Gguf::open(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs =
            LlamaVocab::load(&path).unwrap_or_else(|| panic!("llama.cpp refuses pre {name}"));
        let mut mismatches = Vec::new();
        for text in &all {
            for add_special in [false, true] {
                let o = ids(&ours.encode(text, add_special, true));
                let t = theirs.tokenize(text, add_special, true);
                if o != t {
                    mismatches.push(format!(
                        "{text:?} add_special={add_special}:\n  ours   {o:?}\n  theirs {t:?}"
                    ));
                }
            }
            let toks = ours.encode(text, false, true);
            let (o, t) = (
                ours.detokenize(&toks, true, false),
                theirs.detokenize(&ids(&toks), true, false),
            );
            if o != t {
                mismatches.push(format!(
                    "detokenize {text:?}: {:?} vs {:?}",
                    String::from_utf8_lossy(&o),
                    String::from_utf8_lossy(&t)
                ));
            }
        }
        let _ = std::fs::remove_file(&path);
        assert!(
            mismatches.is_empty(),
            "pre-tokenizer {name}: {} mismatches:\n{}",
            mismatches.len(),
            mismatches[..mismatches.len().min(5)].join("\n")
        );
        eprintln!(
            "pre-tokenizer {name}: {} texts equal to llama.cpp's",
            all.len()
        );
    }
}

#[test]
fn spm_matches_llama_cpp() {
    check_spm("spm-default", "llama", &[]);
}

#[test]
fn spm_without_space_prefix_or_bos_matches_llama_cpp() {
    check_spm(
        "spm-noprefix",
        "llama",
        &[
            ("tokenizer.ggml.add_space_prefix", false.into()),
            ("tokenizer.ggml.add_bos_token", false.into()),
            ("tokenizer.ggml.add_eos_token", true.into()),
        ],
    );
}

#[test]
fn spm_round_trips() {
    let path = temp_path("spm-roundtrip");
    write_spm_gguf(
        &path,
        "llama",
        &[("tokenizer.ggml.add_space_prefix", false.into())],
    );
    let ours = Tokenizer::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
    for text in spm_texts() {
        let toks = ours.encode(&text, false, false);
        assert_eq!(ours.decode(&toks, false), text);
    }
    let _ = std::fs::remove_file(&path);
}
