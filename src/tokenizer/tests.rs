use super::pretokenize::{for_name, split};
use super::unicode::{class_of, ByteMap, Class};
use super::*;
use crate::gguf::{Metadata, Value};

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// A tiny byte-level BPE vocabulary ("Ġ" is GPT-2's stand-in for a space).
fn bpe_metadata() -> Metadata {
    let mut md = Metadata::new();
    md.insert("tokenizer.ggml.model", "gpt2");
    md.insert("tokenizer.ggml.pre", "gpt-2");
    let tokens = vec![
        "<|end|>", "a", "b", "c", "Ġ", "ab", "abc", "Ġa", "<user>", "Ċ", "1", "2",
    ];
    let types = vec![
        CONTROL,
        NORMAL,
        NORMAL,
        NORMAL,
        NORMAL,
        NORMAL,
        NORMAL,
        NORMAL,
        USER_DEFINED,
        NORMAL,
        NORMAL,
        NORMAL,
    ];
    md.insert("tokenizer.ggml.tokens", tokens);
    md.insert("tokenizer.ggml.token_type", types);
    md.insert("tokenizer.ggml.merges", vec!["a b", "ab c", "Ġ a"]);
    md.insert("tokenizer.ggml.eos_token_id", 0u32);
    md
}

/// A tiny SentencePiece vocabulary with byte fallback for `x` only.
fn spm_metadata() -> Metadata {
    let mut md = Metadata::new();
    md.insert("tokenizer.ggml.model", "llama");
    let entries: &[(&str, f32, i32)] = &[
        ("<unk>", 0.0, UNKNOWN),
        ("<s>", 0.0, CONTROL),
        ("</s>", 0.0, CONTROL),
        ("<0x78>", 0.0, BYTE),
        ("\u{2581}", -1.0, NORMAL),
        ("h", -2.0, NORMAL),
        ("e", -2.0, NORMAL),
        ("l", -2.0, NORMAL),
        ("o", -2.0, NORMAL),
        ("\u{2581}h", -1.0, NORMAL),
        ("he", -3.0, NORMAL),
        ("ll", -0.5, NORMAL),
        ("llo", -0.2, NORMAL),
        ("\u{2581}he", -0.1, NORMAL),
        ("lo", -5.0, NORMAL),
    ];
    md.insert(
        "tokenizer.ggml.tokens",
        entries.iter().map(|e| e.0).collect::<Vec<_>>(),
    );
    md.insert(
        "tokenizer.ggml.scores",
        entries.iter().map(|e| e.1).collect::<Vec<_>>(),
    );
    md.insert(
        "tokenizer.ggml.token_type",
        entries.iter().map(|e| e.2).collect::<Vec<_>>(),
    );
    md
}

#[test]
fn bpe_merges_lowest_rank_first() {
    let tok = Tokenizer::from_metadata(&bpe_metadata()).unwrap();
    assert_eq!(tok.kind(), VocabKind::Bpe);
    // "abc" → a b c → ab c → abc; " ab" → Ġ a b → Ġ ab (a b outranks Ġ a).
    assert_eq!(tok.encode("abc ab", false, false), vec![6, 4, 5]);
    // Digits each alone.
    assert_eq!(tok.encode("12", false, false), vec![10, 11]);
    // No token for "d": dropped, as llama.cpp does.
    assert_eq!(tok.encode("d", false, false), Vec::<u32>::new());
    assert_eq!(tok.decode(&[6, 4, 5], false), "abc ab");
}

#[test]
fn special_tokens_in_text() {
    let tok = Tokenizer::from_metadata(&bpe_metadata()).unwrap();
    // Control tokens only with parse_special; user-defined ones always.
    assert_eq!(tok.encode("a<|end|>", false, true), vec![1, 0]);
    assert_ne!(tok.encode("a<|end|>", false, false), vec![1, 0]);
    assert_eq!(tok.encode("a<user>b", false, false), vec![1, 8, 2]);
    assert_eq!(tok.token_to_piece(0, false), b"");
    assert_eq!(tok.token_to_piece(0, true), b"<|end|>");
    assert_eq!(tok.token_to_piece(8, false), b"<user>");
    assert_eq!(tok.token_to_piece(9, false), b"\n");
    assert_eq!(tok.token_to_piece(999, true), b"");
    assert!(tok.is_eog(0));
    assert!(!tok.is_eog(1));
    assert_eq!(tok.eos(), Some(0));
    // The BPE default BOS (11) is in range here; add_bos is off for gpt-2.
    assert_eq!(tok.bos(), Some(11));
    assert_eq!(tok.encode("a", true, false), vec![1]);
}

#[test]
fn spm_merges_highest_score_first() {
    let tok = Tokenizer::from_metadata(&spm_metadata()).unwrap();
    assert_eq!(tok.kind(), VocabKind::Spm);
    // ▁hello: ll, then llo, then ▁h, then ▁he → [▁he, llo].
    assert_eq!(tok.encode("hello", false, false), vec![13, 12]);
    assert_eq!(tok.encode("hello", true, false), vec![1, 13, 12]);
    // "x" has only its byte token; the leading ▁ stands alone.
    assert_eq!(tok.encode("x", false, false), vec![4, 3]);
    // After a special token the text gets a space prefix again.
    assert_eq!(
        tok.encode("hello<s>hello", false, true),
        vec![13, 12, 1, 13, 12]
    );
    assert_eq!(tok.token_to_piece(3, false), b"x");
    assert_eq!(tok.token_to_piece(13, false), b" he");
    assert_eq!(tok.decode(&[13, 12], false), " hello");
    // llama.cpp strips the SentencePiece space only when no BOS was removed.
    assert_eq!(tok.detokenize(&[13, 12], false, false), b"hello");
    assert_eq!(tok.detokenize(&[1, 13, 12], true, false), b" hello");
    assert!(tok.is_eog(2));
}

#[test]
fn spm_without_space_prefix() {
    let mut md = spm_metadata();
    md.insert("tokenizer.ggml.add_space_prefix", false);
    md.insert("tokenizer.ggml.add_bos_token", false);
    let tok = Tokenizer::from_metadata(&md).unwrap();
    // h e l l o: ll, then llo, then he.
    assert_eq!(tok.encode("hello", true, false), vec![10, 12]);
}

fn err_of(md: &Metadata) -> TokenizerError {
    Tokenizer::from_metadata(md).unwrap_err()
}

#[test]
fn hostile_metadata_is_an_error() {
    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.tokens", Value::U32(3));
    assert!(matches!(err_of(&md), TokenizerError::Gguf(_)));

    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.tokens", Vec::<String>::new());
    assert!(matches!(err_of(&md), TokenizerError::EmptyVocabulary));

    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.token_type", vec![NORMAL; 3]);
    assert!(matches!(
        err_of(&md),
        TokenizerError::ShortArray {
            key: "tokenizer.ggml.token_type",
            expected: 12,
            found: 3
        }
    ));

    let mut md = spm_metadata();
    md.insert("tokenizer.ggml.scores", vec![0.0f32; 2]);
    assert!(matches!(
        err_of(&md),
        TokenizerError::ShortArray {
            key: "tokenizer.ggml.scores",
            ..
        }
    ));

    let mut md = spm_metadata();
    md.insert("tokenizer.ggml.scores", vec!["x"; 15]);
    assert!(matches!(err_of(&md), TokenizerError::Gguf(_)));

    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.tokens", vec!["a", "b", "a"]);
    md.insert("tokenizer.ggml.token_type", vec![NORMAL; 3]);
    assert!(matches!(
        err_of(&md),
        TokenizerError::DuplicateToken {
            first: 0,
            second: 2,
            ..
        }
    ));

    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.merges", Value::Bool(true));
    assert!(matches!(err_of(&md), TokenizerError::Gguf(_)));

    let mut md = Metadata::new();
    md.insert("tokenizer.ggml.model", "gpt2");
    md.insert("tokenizer.ggml.tokens", vec!["a"]);
    assert!(matches!(err_of(&md), TokenizerError::Gguf(_)), "no merges");

    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.model", "klingon");
    assert!(matches!(err_of(&md), TokenizerError::UnknownModel(_)));
    md.insert("tokenizer.ggml.model", "bert");
    assert!(matches!(err_of(&md), TokenizerError::UnsupportedModel(_)));

    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.pre", "no-such-pre");
    assert!(matches!(
        err_of(&md),
        TokenizerError::UnknownPreTokenizer(_)
    ));
    md.insert("tokenizer.ggml.pre", "kimi-k2");
    assert!(matches!(
        err_of(&md),
        TokenizerError::UnsupportedPreTokenizer(_)
    ));

    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.eos_token_id", "two");
    assert!(matches!(err_of(&md), TokenizerError::Gguf(_)));

    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.add_bos_token", 1u32);
    assert!(matches!(err_of(&md), TokenizerError::Gguf(_)));
}

#[test]
fn out_of_range_special_ids_are_ignored() {
    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.bos_token_id", 1000u32);
    md.insert("tokenizer.ggml.eos_token_id", -1i32);
    md.insert("tokenizer.ggml.padding_token_id", 12u64);
    md.insert("tokenizer.ggml.add_bos_token", true);
    let tok = Tokenizer::from_metadata(&md).unwrap();
    // Defaults stay: 11 for both in a BPE vocabulary of 12 tokens.
    assert_eq!(tok.bos(), Some(11));
    assert_eq!(tok.eos(), Some(11));
    assert_eq!(tok.special_tokens().pad, None);
    assert_eq!(tok.encode("a", true, false), vec![11, 1]);

    // A vocabulary too small for the defaults has none.
    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.tokens", vec!["a", "b"]);
    md.insert("tokenizer.ggml.token_type", vec![NORMAL; 2]);
    md.insert("tokenizer.ggml.eos_token_id", 5u32);
    md.insert("tokenizer.ggml.add_bos_token", true);
    let tok = Tokenizer::from_metadata(&md).unwrap();
    assert_eq!((tok.bos(), tok.eos()), (None, None));
    assert_eq!(tok.encode("a", true, false), vec![0]);
}

#[test]
fn empty_tokens_are_renamed_and_odd_types_render_nothing() {
    let mut md = bpe_metadata();
    md.insert("tokenizer.ggml.tokens", vec!["a", "", "b"]);
    md.insert("tokenizer.ggml.token_type", vec![NORMAL, NORMAL, 77]);
    let tok = Tokenizer::from_metadata(&md).unwrap();
    assert_eq!(tok.token_text(1), Some("[EMPTY_1]"));
    assert_eq!(tok.token_to_piece(2, true), b"");
}

#[test]
fn eog_by_text() {
    let mut md = Metadata::new();
    md.insert("tokenizer.ggml.model", "gpt2");
    md.insert("tokenizer.ggml.merges", Vec::<String>::new());
    md.insert(
        "tokenizer.ggml.tokens",
        vec![
            "<|im_end|>",
            "<|endoftext|>",
            "x",
            "<|fim_pad|>",
            "<|eom_id|>",
        ],
    );
    md.insert(
        "tokenizer.ggml.token_type",
        vec![NORMAL, CONTROL, NORMAL, CONTROL, CONTROL],
    );
    let tok = Tokenizer::from_metadata(&md).unwrap();
    let eog: Vec<u32> = tok.eog_tokens().collect();
    assert_eq!(eog, vec![0, 1, 3, 4]);
    // A normal-typed <|im_end|> becomes a control token.
    assert!(tok.is_control(0));
    assert_eq!(tok.special_tokens().eot, Some(0));
    assert_eq!(tok.special_tokens().eom, Some(4));
}

#[test]
fn stream_decoder_holds_back_partial_characters() {
    let mut d = StreamDecoder::new(false);
    let snowman = "☃".as_bytes();
    assert_eq!(d.push_bytes(b"a"), "a");
    assert_eq!(d.push_bytes(&snowman[..1]), "");
    assert_eq!(d.push_bytes(&snowman[1..2]), "");
    assert_eq!(d.pending().len(), 2);
    assert_eq!(d.push_bytes(&[snowman[2], b'b']), "☃b");
    // A byte that can never start a character is replaced at once.
    assert_eq!(d.push_bytes(&[0xFF, b'c']), "\u{FFFD}c");
    // A truncated character at the end comes out lossy on finish.
    assert_eq!(d.push_bytes(&"é".as_bytes()[..1]), "");
    assert_eq!(d.finish(), "\u{FFFD}");
    assert_eq!(d.finish(), "");
    // Emoji split over byte tokens.
    let emoji = "🙂".as_bytes();
    let out: String = emoji.iter().map(|&b| d.push_bytes(&[b])).collect();
    assert_eq!(out, "🙂");
}

#[test]
fn byte_map_round_trips() {
    let map = ByteMap::get();
    let mut seen = std::collections::HashSet::new();
    for b in 0..=255u8 {
        let c = map.byte_to_char(b);
        assert!(seen.insert(c));
        assert_eq!(map.char_to_byte(c), Some(b));
    }
    assert_eq!(map.byte_to_char(b' '), 'Ġ');
    assert_eq!(map.byte_to_char(b'\n'), 'Ċ');
    assert_eq!(map.char_to_byte('\u{144}'), None);
    assert_eq!(map.char_to_byte(' '), None);
}

#[test]
fn unicode_classes() {
    assert_eq!(class_of('a'), Class::Letter);
    assert_eq!(class_of('中'), Class::Letter);
    assert_eq!(class_of('٣'), Class::Number);
    assert_eq!(class_of(' '), Class::Separator);
    assert_eq!(class_of('\u{301}'), Class::Mark);
    assert_eq!(class_of('!'), Class::Punctuation);
    assert_eq!(class_of('€'), Class::Symbol);
    assert_eq!(class_of('\n'), Class::Control);
    assert_eq!(class_of('\u{E000}'), Class::Control);
    assert_eq!(class_of('\u{378}'), Class::Unassigned);
}

#[test]
fn gpt2_and_llama3_splits() {
    let words = |pre: &str, text: &str| -> Vec<String> {
        let (steps, _) = for_name(Some(pre)).unwrap();
        let map = ByteMap::get();
        split(text, &steps)
            .into_iter()
            .map(|w| {
                String::from_utf8(w.chars().map(|c| map.char_to_byte(c).unwrap()).collect())
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(
        words("gpt-2", "I'm  here 123!!\n"),
        ["I", "'m", " ", " here", " 123", "!!", "\n"]
    );
    assert_eq!(words("smollm", "a 123"), ["a", " ", "1", "2", "3"]);
    assert_eq!(
        words("llama3", "I'M 12345 ab\n\n  x"),
        ["I", "'M", " ", "123", "45", " ab", "\n\n", " ", " x"]
    );
    assert_eq!(words("qwen2", "x12"), ["x", "1", "2"]);
    assert_eq!(words("default", "a+b"), ["a", "+", "b"]);
}

#[test]
fn clean_up_spaces_like_llama_cpp() {
    let clean = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        clean_up_spaces(&mut v);
        String::from_utf8(v).unwrap()
    };
    assert_eq!(clean("a , b . c ? d !"), "a, b. c? d!");
    assert_eq!(clean("x ' y"), "x'y");
    // The space after the first quote is used up and cannot count again.
    assert_eq!(clean("x ' ' y"), "x'' y");
    assert_eq!(
        clean("it 's we 're I 'm they 've you 'll he 'd don 't"),
        "it's we're I'm they've you 'll he 'd don 't"
    );
}

#[test]
fn encoding_long_input_is_fast() {
    let tok = Tokenizer::from_metadata(&bpe_metadata()).unwrap();
    let text = "ab".repeat(20_000) + &" abc".repeat(5_000);
    let t = std::time::Instant::now();
    let ids = tok.encode(&text, false, false);
    assert_eq!(ids.len(), 20_000 + 10_000);
    assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
}
