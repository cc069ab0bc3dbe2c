//! Tokenizer test helpers shared by `tests/tokenizer_vs_llama.rs` and
//! `tests/tokenizer_families.rs`: texts, synthetic SentencePiece
//! vocabularies written as vocab-only GGUF files, and the comparison of
//! shardline's tokenizer with llama.cpp's on them.

use std::path::{Path, PathBuf};

use super::llama_ref::LlamaVocab;
use shardline::gguf::writer::GgufWriter;
use shardline::gguf::Gguf;
use shardline::tokenizer::{Tokenizer, VocabKind};

/// Texts that exercise the pre-tokenizer, merges and special tokens.
pub fn texts() -> Vec<String> {
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
pub fn random_texts(n: usize, seed: u64) -> Vec<String> {
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

pub fn ids(v: &[u32]) -> Vec<i32> {
    v.iter().map(|&x| x as i32).collect()
}

// ---------------------------------------------------------------------------
// SentencePiece on synthetic vocabularies.

/// Token types as GGUF stores them.
pub const NORMAL: i32 = 1;
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const USER_DEFINED: i32 = 4;
pub const BYTE: i32 = 6;

/// A llama-style SentencePiece vocabulary: `<unk> <s> </s>`, the 256 byte
/// tokens, control and user-defined tokens (Gemma's and Phi-3's turn
/// markers among them), then pieces: every substring
/// (up to 4 characters) of some words, with and without `▁`, scored
/// pseudo-randomly (with ties).
pub fn spm_vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
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
    // The families' turn markers, which llama.cpp recognises by their text
    // as end of generation: Gemma's and Phi-3's.
    for (t, ty) in [
        ("<start_of_turn>", CONTROL),
        ("<end_of_turn>", CONTROL),
        ("<|endoftext|>", CONTROL),
        ("<|end|>", CONTROL),
        ("<|assistant|>", USER_DEFINED),
    ] {
        tokens.push(t.into());
        types.push(ty);
    }
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

pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("shardline-tok-{}-{name}.gguf", std::process::id()))
}

/// Writes a vocab-only llama GGUF with the SPM vocabulary and `extra` keys.
pub fn write_spm_gguf(path: &Path, arch: &str, extra: &[(&str, shardline::gguf::Value)]) {
    let (tokens, scores, types) = spm_vocab();
    let mut w = GgufWriter::new();
    let key = |s: &str| format!("{arch}.{s}");
    w.add_kv("general.architecture", arch)
        .add_kv("general.name", "synthetic spm")
        .add_kv(key("context_length"), 256u32)
        .add_kv(key("embedding_length"), 64u32)
        .add_kv(key("block_count"), 1u32)
        .add_kv(key("feed_forward_length"), 128u32)
        .add_kv(key("attention.head_count"), 4u32)
        .add_kv(key("attention.head_count_kv"), 4u32)
        .add_kv(key("attention.layer_norm_rms_epsilon"), 1e-5f32)
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

pub fn spm_texts() -> Vec<String> {
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
        "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
        "<|user|>\nhello<|end|>\n<|assistant|>\nworld<|end|><|endoftext|>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pool = [
        "the",
        "hello",
        " ",
        "  ",
        "ab",
        "c",
        "d",
        "é",
        "日本",
        "語",
        "x",
        "'s",
        "1",
        "<s>",
        "<|user|>",
        "<|ctl|>",
        "\n",
        "🙂",
        "<start_of_turn>",
        "<end_of_turn>",
        "<|end|>",
        "<|assistant|>",
        "<|endoftext|>",
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

/// Writes the SPM vocabulary as a vocab-only `arch` GGUF with `extra`
/// keys and checks it against llama.cpp on [`spm_texts`].
pub fn check_spm(name: &str, arch: &str, extra: &[(&str, shardline::gguf::Value)]) {
    let path = temp_path(name);
    write_spm_gguf(&path, arch, extra);
    check_file(name, &path, VocabKind::Spm, &spm_texts());
    let _ = std::fs::remove_file(&path);
}

/// Loads the GGUF at `path` with shardline's tokenizer (which must be of
/// `kind`) and llama.cpp's, and asserts they agree: encodings of `texts`
/// (with and without special tokens added and parsed), their
/// detokenizations, every token's piece, and which tokens end generation.
pub fn check_file(name: &str, path: &Path, kind: VocabKind, texts: &[String]) {
    let gguf = Gguf::open(path).unwrap();
    let ours = Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(ours.kind(), kind, "{name}");
    let theirs = LlamaVocab::load(path)
        .unwrap_or_else(|| panic!("{name}: llama.cpp does not load the vocabulary"));
    let mut compared = 0;
    for text in texts {
        let text = text.as_str();
        for add_special in [false, true] {
            for parse_special in [false, true] {
                let o = ours.encode(text, add_special, parse_special);
                assert_eq!(
                    ids(&o),
                    theirs.tokenize(text, add_special, parse_special),
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
}
