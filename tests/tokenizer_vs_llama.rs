//! shardline's tokenizer against llama.cpp's (`llama_tokenize`,
//! `llama_token_to_piece`, `llama_detokenize`): byte-level BPE on
//! SmolLM2-135M-Instruct, and SentencePiece on synthetic vocabularies written
//! here as GGUF files that llama.cpp loads vocab-only.
mod common;

use std::path::{Path, PathBuf};

use common::llama_ref::LlamaVocab;
use shardline::gguf::writer::GgufWriter;
use shardline::gguf::Gguf;
use shardline::tokenizer::{StreamDecoder, Tokenizer, VocabKind};

/// Texts that exercise the pre-tokenizer, merges and special tokens.
fn texts() -> Vec<String> {
    let mut t: Vec<String> = [
        "",
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        "\n\n",
        "\n\n\n",
        " \n \n",
        "\r\n",
        "Hello world",
        " Hello world",
        "Hello world ",
        "  Hello   world  ",
        "Hello\tworld\t\tagain",
        "line one\nline two\n\nline four\n\n\n",
        "The quick brown fox jumps over the lazy dog.",
        "I'm sure you don't know what 'S means, they'll say we've I'd.",
        "I'M DON'T 'S 'T 'RE 'VE 'LL 'D 's's ''s '",
        "café naïve résumé Ångström façade Straße",
        "中文测试：你好，世界！日本語のテキスト。한국어 텍스트",
        "مرحبا بالعالم",
        "नमस्ते दुनिया, यह एक परीक्षण है।",
        "Привет, мир! Ελληνικά",
        "emoji 😀 🤷‍♂️ 👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽 ❤️",
        "0 12 345 6789 1234567890 3.14159 -42 1,000,000 1e-9 0x1F",
        "99999999999999999999999999999999",
        "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n",
        "def f(a, b):\n\treturn a**2 + b // 3  # comment\n",
        "<html><body class=\"x\">&amp; &lt;</body></html>",
        "a+b=c; x<=y>=z != w && p || q ~ r ^ s | t $ u % v @ #",
        "...!!!???,,,;;;::: --- ___ *** ((( ))) [[[ ]]] {{{ }}}",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|><|im_end|><|endoftext|>",
        "text<|im_start|>text<|im_end|>text",
        " <|im_start|> spaced <|im_end|> ",
        "<|im_start|",
        "|im_end|>",
        "<|im_start|><",
        "<repo_name>x<reponame>y<file_sep>z<filename>",
        "\u{a0}non-breaking\u{2003}em-space\u{3000}ideographic",
        "zero\u{200b}width\u{200d}joiner\u{feff}bom",
        "combining e\u{301} a\u{308}\u{323} ﬁ ligature",
        "\u{1}\u{2}\u{7f} controls \u{85} nel",
        "𝕳𝖊𝖑𝖑𝖔 𝔀𝓸𝓻𝓵𝓭 math letters",
        "ǅ ǈ title-case",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    t.push("word ".repeat(200));
    t.push("x".repeat(3000));
    t.push(" ".repeat(100) + "end");
    t.push("🙂".repeat(50));
    t
}

/// Deterministic pseudo-random strings over a mixed alphabet.
fn random_texts(n: usize, seed: u64) -> Vec<String> {
    let pool: Vec<&str> = vec![
        "a",
        "b",
        "e",
        "t",
        "h",
        "the",
        "The",
        " ",
        " ",
        "  ",
        "\n",
        "\t",
        "\r",
        "'",
        "'s",
        "'T",
        "0",
        "7",
        "42",
        ".",
        ",",
        "!",
        "?",
        "-",
        "_",
        "(",
        ")",
        "é",
        "ñ",
        "ß",
        "中",
        "文",
        "語",
        "😀",
        "‍",
        "🏽",
        "ا",
        "न",
        "्",
        "\u{301}",
        "<|im_start|>",
        "<|im_end|>",
        "<|",
        "|>",
        "<",
        ">",
        "\u{a0}",
        "\u{3000}",
        "ｆ",
        "１",
    ];
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    (0..n)
        .map(|_| {
            let len = next() % 24;
            (0..len).map(|_| pool[next() % pool.len()]).collect()
        })
        .collect()
}

fn ids(v: &[u32]) -> Vec<i32> {
    v.iter().map(|&x| x as i32).collect()
}

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

// ---------------------------------------------------------------------------
// SentencePiece on synthetic vocabularies.

/// Token types as GGUF stores them.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// A llama-style SentencePiece vocabulary: `<unk> <s> </s>`, the 256 byte
/// tokens, a control and a user-defined token, then pieces: every substring
/// (up to 4 characters) of some words, with and without `▁`, scored
/// pseudo-randomly (with ties).
fn spm_vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![UNKNOWN, CONTROL, CONTROL];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(BYTE);
    }
    tokens.push("<|ctl|>".into());
    types.push(CONTROL);
    tokens.push("<|user|>".into());
    types.push(USER_DEFINED);
    let words = [
        "the",
        "then",
        "there",
        "hello",
        "world",
        "word",
        "low",
        "lower",
        "newest",
        "widest",
        "abc",
        "abcd",
        "ab",
        "bc",
        "cd",
        "aaaa",
        "é",
        "café",
        "日本語",
        "本",
        "語",
        "12",
        "123",
        "'s",
        "don't",
        ".",
        ",",
        "!",
        "\n",
    ];
    let mut pieces: Vec<String> = Vec::new();
    for w in words {
        for prefixed in [w.to_string(), format!("\u{2581}{w}")] {
            let chars: Vec<char> = prefixed.chars().collect();
            for i in 0..chars.len() {
                for j in i + 1..=(i + 4).min(chars.len()) {
                    let p: String = chars[i..j].iter().collect();
                    if !pieces.contains(&p) && !tokens.contains(&p) {
                        pieces.push(p);
                    }
                }
            }
        }
    }
    for extra in ["\u{2581}", "\u{2581}\u{2581}"] {
        if !pieces.iter().any(|p| p == extra) {
            pieces.push(extra.into());
        }
    }
    let mut scores = vec![0.0f32; tokens.len()];
    let mut state = 12345u64;
    for p in pieces {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Few distinct scores, so ties happen and the leftmost pair must win.
        let score = -(((state >> 33) % 40) as f32) / 4.0;
        tokens.push(p);
        scores.push(score);
        types.push(NORMAL);
    }
    (tokens, scores, types)
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("shardline-tok-{}-{name}.gguf", std::process::id()))
}

/// Writes a vocab-only llama GGUF with the SPM vocabulary and `extra` keys.
fn write_spm_gguf(path: &Path, extra: &[(&str, shardline::gguf::Value)]) {
    let (tokens, scores, types) = spm_vocab();
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama")
        .add_kv("general.name", "synthetic spm")
        .add_kv("llama.context_length", 256u32)
        .add_kv("llama.embedding_length", 64u32)
        .add_kv("llama.block_count", 1u32)
        .add_kv("llama.feed_forward_length", 128u32)
        .add_kv("llama.attention.head_count", 4u32)
        .add_kv("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
        .add_kv("tokenizer.ggml.model", "llama")
        .add_kv("tokenizer.ggml.tokens", tokens)
        .add_kv("tokenizer.ggml.scores", scores)
        .add_kv("tokenizer.ggml.token_type", types)
        .add_kv("tokenizer.ggml.bos_token_id", 1u32)
        .add_kv("tokenizer.ggml.eos_token_id", 2u32)
        .add_kv("tokenizer.ggml.unknown_token_id", 0u32);
    for (k, v) in extra {
        w.add_kv(*k, v.clone());
    }
    w.write_file(path).expect("write synthetic GGUF");
}

fn spm_texts() -> Vec<String> {
    let mut t: Vec<String> = [
        "",
        " ",
        "the",
        "hello world",
        " hello  world ",
        "then there the newest widest lower low",
        "abcd abcabc aaaaaaa bcbc",
        "café 日本語 本語 é",
        "don't 's 123 12 1234",
        "unknown: xyz ✓ 🙂 Ω",
        "line\nbreak\n\n",
        "tab\there",
        "<s>hello</s>",
        "<|ctl|> hello <|user|>world<|user|>",
        "<|user|>",
        "x<|ctl|>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pool = [
        "the", "hello", " ", "  ", "ab", "c", "d", "é", "日本", "語", "x", "'s", "1", "<s>",
        "<|user|>", "<|ctl|>", "\n", "🙂",
    ];
    let mut state = 99u64;
    for _ in 0..300 {
        let mut s = String::new();
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (state >> 33) % 12;
        for _ in 0..len {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push_str(pool[((state >> 33) as usize) % pool.len()]);
        }
        t.push(s);
    }
    t
}

fn check_spm(name: &str, extra: &[(&str, shardline::gguf::Value)]) {
    let path = temp_path(name);
    write_spm_gguf(&path, extra);
    let gguf = Gguf::open(&path).unwrap();
    let ours = Tokenizer::from_gguf(&gguf).expect("our SPM tokenizer");
    assert_eq!(ours.kind(), VocabKind::Spm);
    let theirs = LlamaVocab::load(&path).expect("llama.cpp loads the synthetic SPM vocabulary");
    let mut compared = 0;
    for text in spm_texts() {
        for add_special in [false, true] {
            for parse_special in [false, true] {
                let o = ours.encode(&text, add_special, parse_special);
                assert_eq!(
                    ids(&o),
                    theirs.tokenize(&text, add_special, parse_special),
                    "{name}: encode({text:?}, {add_special}, {parse_special})"
                );
                compared += 1;
                for remove_special in [false, true] {
                    for unparse in [false, true] {
                        assert_eq!(
                            ours.detokenize(&o, remove_special, unparse),
                            theirs.detokenize(&ids(&o), remove_special, unparse),
                            "{name}: detokenize({text:?})"
                        );
                    }
                }
            }
        }
    }
    for id in 0..theirs.n_tokens() {
        for special in [false, true] {
            assert_eq!(
                ours.token_to_piece(id as u32, special),
                theirs.piece(id, 0, special),
                "{name}: piece {id}"
            );
        }
        assert_eq!(
            ours.is_eog(id as u32),
            theirs.is_eog(id),
            "{name}: is_eog({id})"
        );
    }
    eprintln!(
        "{name}: {compared} encodings and {} pieces equal to llama.cpp's",
        theirs.n_tokens()
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn spm_matches_llama_cpp() {
    check_spm("spm-default", &[]);
}

#[test]
fn spm_without_space_prefix_or_bos_matches_llama_cpp() {
    check_spm(
        "spm-noprefix",
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
    write_spm_gguf(&path, &[("tokenizer.ggml.add_space_prefix", false.into())]);
    let ours = Tokenizer::from_gguf(&Gguf::open(&path).unwrap()).unwrap();
    for text in spm_texts() {
        let toks = ours.encode(&text, false, false);
        assert_eq!(ours.decode(&toks, false), text);
    }
    let _ = std::fs::remove_file(&path);
}
