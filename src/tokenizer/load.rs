//! Building a [`Tokenizer`] from `tokenizer.ggml.*` metadata, with llama.cpp's
//! defaults and its fix-ups of special tokens recognised by their text.

use std::collections::{BTreeSet, HashMap};

use crate::gguf::{GgufError, Metadata, Value};

use super::unicode::ByteMap;
use super::{
    attr, pretokenize, MergeRanks, Model, SpecialTokens, TokenData, Tokenizer, TokenizerError,
};

pub const KEY_MODEL: &str = "tokenizer.ggml.model";
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
pub const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
pub const KEY_SCORES: &str = "tokenizer.ggml.scores";
pub const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub const KEY_MERGES: &str = "tokenizer.ggml.merges";
pub const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
pub const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// Token types as GGUF stores them (`tokenizer.ggml.token_type`).
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Texts that mark a token as ending a turn, when no id is given.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Texts of tokens that end generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Tokens that always render (gpt-oss's channel markers).
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// The most tokens a vocabulary may have: ids are `i32` in llama.cpp.
const MAX_TOKENS: usize = i32::MAX as usize;

pub(crate) fn from_metadata(md: &Metadata) -> Result<Tokenizer, TokenizerError> {
    let model_name: &str = md.get_as(KEY_MODEL)?;
    let pre_name: Option<&str> = md.get_opt(KEY_PRE)?;
    let texts: &[String] = md.get_as(KEY_TOKENS)?;
    let n = texts.len();
    if n == 0 {
        return Err(TokenizerError::EmptyVocabulary);
    }
    if n > MAX_TOKENS {
        return Err(TokenizerError::TooManyTokens(n));
    }

    let mut special = SpecialTokens::default();
    let (model, mut add_bos, mut add_eos, mut add_space_prefix, clean_spaces);
    match model_name {
        "llama" => {
            model = Model::Spm;
            special.bos = Some(1);
            special.eos = Some(2);
            special.unk = Some(0);
            add_bos = true;
            add_eos = false;
            add_space_prefix = true;
            clean_spaces = false;
        }
        "gpt2" => {
            let (steps, opts) = pretokenize::for_name(pre_name.filter(|p| !p.is_empty()))?;
            if pre_name.is_none_or(str::is_empty) {
                tracing::warn!("GGUF has no '{KEY_PRE}': using the default pre-tokenizer; tokenization may be poor");
            }
            model = Model::Bpe {
                steps,
                ranks: merge_ranks(md)?,
                ignore_merges: opts.ignore_merges,
            };
            if !opts.no_default_bos {
                special.bos = Some(11);
            }
            special.eos = Some(11);
            add_bos = opts.add_bos;
            add_eos = false;
            add_space_prefix = false;
            clean_spaces = opts.clean_spaces;
        }
        "bert" | "t5" | "rwkv" | "plamo2" | "gemma4" | "hybriddna" | "whitespace" | "no_vocab"
        | "none" | "test" => return Err(TokenizerError::UnsupportedModel(model_name.to_owned())),
        other => return Err(TokenizerError::UnknownModel(other.to_owned())),
    }
    if let Some(v) = md.get_opt::<bool>(KEY_ADD_SPACE_PREFIX)? {
        add_space_prefix = v;
    }

    let scores = scores(md, n)?;
    let types: Option<&[i32]> = md.get_opt(KEY_TOKEN_TYPE)?;
    if let Some(t) = types {
        if t.len() < n {
            return Err(TokenizerError::ShortArray {
                key: KEY_TOKEN_TYPE,
                expected: n,
                found: t.len(),
            });
        }
    }

    let mut tokens = Vec::with_capacity(n);
    let mut token_to_id = HashMap::with_capacity(n);
    for (i, text) in texts.iter().enumerate() {
        let id = i as u32;
        let text = if text.is_empty() {
            tracing::warn!("empty token at index {i}");
            format!("[EMPTY_{i}]")
        } else {
            text.clone()
        };
        if let Some(first) = token_to_id.insert(text.clone(), id) {
            return Err(TokenizerError::DuplicateToken {
                text,
                first,
                second: id,
            });
        }
        let attr = match types.map(|t| t[i]) {
            None | Some(token_type::NORMAL) => attr::NORMAL,
            Some(token_type::UNKNOWN) => attr::UNKNOWN,
            Some(token_type::CONTROL) => attr::CONTROL,
            Some(token_type::USER_DEFINED) => attr::USER_DEFINED,
            Some(token_type::UNUSED) => attr::UNUSED,
            Some(token_type::BYTE) => attr::BYTE,
            Some(_) => 0,
        };
        tokens.push(TokenData {
            text,
            score: scores.as_ref().map_or(0.0, |s| s[i]),
            attr,
        });
    }

    read_special_ids(md, &mut special, n)?;
    if let Some(v) = md.get_opt::<bool>(KEY_ADD_BOS)? {
        add_bos = v;
    }
    if let Some(v) = md.get_opt::<bool>(KEY_ADD_EOS)? {
        add_eos = v;
    }

    let eog = find_by_text(&mut tokens, &mut special);

    let mut tok = Tokenizer {
        model,
        tokens,
        token_to_id,
        special,
        add_bos,
        add_eos,
        add_space_prefix,
        clean_spaces,
        eog,
        special_cache: Vec::new(),
        pieces: Vec::new(),
    };
    tok.special_cache = special_cache(&tok.tokens);
    tok.pieces = (0..n as u32).map(|id| piece_for_cache(&tok, id)).collect();
    strip_attributes(md, pre_name, &mut tok);
    Ok(tok)
}

/// `tokenizer.ggml.scores`, as `f32` or `i32`.
fn scores(md: &Metadata, n: usize) -> Result<Option<Vec<f32>>, TokenizerError> {
    let scores: Option<Vec<f32>> = match md.get(KEY_SCORES) {
        None => None,
        Some(_) => match md.get_opt::<&[f32]>(KEY_SCORES) {
            Ok(s) => s.map(<[f32]>::to_vec),
            Err(_) => md
                .get_opt::<&[i32]>(KEY_SCORES)?
                .map(|s| s.iter().map(|&v| v as f32).collect()),
        },
    };
    if let Some(s) = &scores {
        if s.len() < n {
            return Err(TokenizerError::ShortArray {
                key: KEY_SCORES,
                expected: n,
                found: s.len(),
            });
        }
    }
    Ok(scores)
}

fn merge_ranks(md: &Metadata) -> Result<MergeRanks, TokenizerError> {
    let merges: &[String] = md.get_as(KEY_MERGES)?;
    let mut ranks = MergeRanks::default();
    for (rank, merge) in merges.iter().enumerate() {
        // Split at the first space after the first byte, so a half may
        // itself start with a space.
        let space = merge.bytes().skip(1).position(|b| b == b' ');
        let Some(at) = space.map(|p| p + 1) else {
            continue;
        };
        let (left, right) = (&merge[..at], &merge[at + 1..]);
        let mut intern = |s: &str| {
            let next = ranks.halves.len() as u32;
            *ranks.halves.entry(s.to_owned()).or_insert(next)
        };
        let key = (intern(left), intern(right));
        // The first occurrence of a pair sets its rank.
        ranks.ranks.entry(key).or_insert(rank as u32);
    }
    Ok(ranks)
}

/// Reads the `tokenizer.ggml.*_token_id` keys over the defaults. An id
/// outside the vocabulary is ignored (the default stays, itself dropped if
/// outside), as llama.cpp does.
fn read_special_ids(md: &Metadata, s: &mut SpecialTokens, n: usize) -> Result<(), TokenizerError> {
    type Slot = fn(&mut SpecialTokens) -> &mut Option<u32>;
    let keys: [(&str, Slot); 17] = [
        ("tokenizer.ggml.bos_token_id", |s| &mut s.bos),
        ("tokenizer.ggml.eos_token_id", |s| &mut s.eos),
        ("tokenizer.ggml.eot_token_id", |s| &mut s.eot),
        ("tokenizer.ggml.eom_token_id", |s| &mut s.eom),
        ("tokenizer.ggml.unknown_token_id", |s| &mut s.unk),
        ("tokenizer.ggml.seperator_token_id", |s| &mut s.sep),
        ("tokenizer.ggml.padding_token_id", |s| &mut s.pad),
        ("tokenizer.ggml.mask_token_id", |s| &mut s.mask),
        ("tokenizer.ggml.fim_pre_token_id", |s| &mut s.fim_pre),
        ("tokenizer.ggml.fim_suf_token_id", |s| &mut s.fim_suf),
        ("tokenizer.ggml.fim_mid_token_id", |s| &mut s.fim_mid),
        ("tokenizer.ggml.fim_pad_token_id", |s| &mut s.fim_pad),
        ("tokenizer.ggml.fim_rep_token_id", |s| &mut s.fim_rep),
        ("tokenizer.ggml.fim_sep_token_id", |s| &mut s.fim_sep),
        // Older names of the FIM keys.
        ("tokenizer.ggml.prefix_token_id", |s| &mut s.fim_pre),
        ("tokenizer.ggml.suffix_token_id", |s| &mut s.fim_suf),
        ("tokenizer.ggml.middle_token_id", |s| &mut s.fim_mid),
    ];
    for (key, slot_of) in keys {
        let slot = slot_of(s);
        if slot.is_some_and(|id| id as usize >= n) {
            tracing::warn!(
                "default special token '{key}' = {slot:?} is outside the vocabulary; disabling it"
            );
            *slot = None;
        }
        let Some(value) = md.get(key) else { continue };
        let id = read_id(key, value)?;
        match id {
            Some(id) if (id as usize) < n => *slot = Some(id),
            _ => tracing::warn!(
                "special token '{key}' = {value} is outside the vocabulary; using {slot:?}"
            ),
        }
    }
    Ok(())
}

/// A token id stored as any integer type; `None` if negative or too large.
fn read_id(key: &str, value: &Value) -> Result<Option<u32>, TokenizerError> {
    if !value.is_integer() {
        return Err(GgufError::WrongType {
            key: key.to_owned(),
            expected: "an integer",
            found: value.type_description(),
        }
        .into());
    }
    Ok(value.as_unsigned().and_then(|v| u32::try_from(v).ok()))
}

/// Finds EOT/EOM/FIM tokens not named by id, marks "unused" control tokens,
/// and builds the end-of-generation set; tokens recognised here become
/// control tokens. Candidates are taken in id order.
fn find_by_text(tokens: &mut [TokenData], s: &mut SpecialTokens) -> BTreeSet<u32> {
    let mark_control = |tokens: &mut [TokenData], id: u32| {
        let t = &mut tokens[id as usize];
        if t.attr & attr::CONTROL == 0 {
            tracing::warn!("token {id} {:?} looks like a control token but is not typed so; treating it as one", t.text);
            t.attr |= attr::CONTROL;
        }
    };
    let roles: [(&mut Option<u32>, &[&str]); 8] = [
        (&mut s.eot, EOT_TEXTS),
        (&mut s.eom, EOM_TEXTS),
        (&mut s.fim_pre, FIM_PRE_TEXTS),
        (&mut s.fim_suf, FIM_SUF_TEXTS),
        (&mut s.fim_mid, FIM_MID_TEXTS),
        (&mut s.fim_pad, FIM_PAD_TEXTS),
        (&mut s.fim_rep, FIM_REP_TEXTS),
        (&mut s.fim_sep, FIM_SEP_TEXTS),
    ];
    for (slot, texts) in roles {
        if slot.is_some() {
            continue;
        }
        if let Some(i) = tokens.iter().position(|t| texts.contains(&t.text.as_str())) {
            *slot = Some(i as u32);
            mark_control(tokens, i as u32);
        }
    }
    for t in tokens.iter_mut() {
        if t.attr & attr::CONTROL != 0 && t.text.contains("unused") {
            t.attr |= attr::UNUSED;
        }
    }

    let mut eog: BTreeSet<u32> = [s.fim_pad, s.fim_rep, s.fim_sep]
        .into_iter()
        .flatten()
        .collect();
    for i in 0..tokens.len() {
        if EOG_TEXTS.contains(&tokens[i].text.as_str()) {
            eog.insert(i as u32);
            mark_control(tokens, i as u32);
        }
    }
    for t in tokens.iter_mut() {
        if ALWAYS_RENDERED.contains(&t.text.as_str()) {
            t.attr = attr::USER_DEFINED;
        }
    }
    eog.extend([s.eos, s.eot, s.eom].into_iter().flatten());

    let with_text = |eog: &BTreeSet<u32>, tokens: &[TokenData], text: &str| {
        eog.iter()
            .copied()
            .find(|&id| tokens[id as usize].text == text)
    };
    // Harmony-style vocabularies end a message with <|end|> but a turn with
    // <|return|>/<|call|> (or <|calls|>/<|flush|>): there <|end|> is no EOG.
    let has =
        |eog: &BTreeSet<u32>, tokens: &[TokenData], t: &str| with_text(eog, tokens, t).is_some();
    if let Some(end) = with_text(&eog, tokens, "<|end|>") {
        let call = has(&eog, tokens, "<|call|>") || has(&eog, tokens, "<|calls|>");
        if call && (has(&eog, tokens, "<|return|>") || has(&eog, tokens, "<|flush|>")) {
            eog.remove(&end);
            tokens[end as usize].attr = attr::USER_DEFINED;
        }
    }
    // Where </s> is an ordinary token (vocabularies with their own end marker).
    if has(&eog, tokens, "<|tool_response>") || has(&eog, tokens, "<|plamo:eos|>") {
        if let Some(id) = with_text(&eog, tokens, "</s>") {
            eog.remove(&id);
            tokens[id as usize].attr = attr::NORMAL;
        }
    }
    eog
}

/// Control, user-defined and unknown tokens, longest text first (ties by id).
fn special_cache(tokens: &[TokenData]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..tokens.len() as u32)
        .filter(|&id| {
            tokens[id as usize].attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
        })
        .collect();
    ids.sort_by_key(|&id| std::cmp::Reverse(tokens[id as usize].text.len()));
    ids
}

/// A token's piece with `special = true`.
fn piece_for_cache(tok: &Tokenizer, id: u32) -> Vec<u8> {
    let t = &tok.tokens[id as usize];
    if t.attr & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        return t.text.as_bytes().to_vec();
    }
    if t.attr & attr::NORMAL != 0 {
        return match tok.model {
            Model::Spm => t.text.replace('\u{2581}', " ").into_bytes(),
            Model::Bpe { .. } => byte_decode(&t.text),
        };
    }
    if t.attr & attr::BYTE != 0 {
        return vec![parse_byte_token(&t.text)];
    }
    Vec::new()
}

/// Undoes GPT-2's byte-to-character mapping. A character outside the
/// mapping is spelled `[UNK_BYTE_0x..<token text>]` (llama.cpp's marker).
fn byte_decode(text: &str) -> Vec<u8> {
    let map = ByteMap::get();
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match map.char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// The byte of a `<0xXX>` token: the hex digits at offsets 3 and 4 (0 when
/// they are not hex, as `strtol` gives).
fn parse_byte_token(text: &str) -> u8 {
    let digits = text.get(3..).unwrap_or("");
    let hex: String = digits
        .chars()
        .take(2)
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u8::from_str_radix(&hex, 16).unwrap_or(0)
}

/// Per-model strip attributes for special tokens, which llama.cpp keys on
/// the model or pre-tokenizer name.
fn strip_attributes(md: &Metadata, pre: Option<&str>, tok: &mut Tokenizer) {
    let name = md
        .get_opt::<&str>("general.name")
        .ok()
        .flatten()
        .unwrap_or("")
        .to_lowercase();
    let arch = md
        .get_opt::<&str>("general.architecture")
        .ok()
        .flatten()
        .unwrap_or("");
    let pre = pre.unwrap_or("");
    let set = |tok: &mut Tokenizer, text: &str, flag: u16, on: bool| {
        if let Some(id) = tok.token_to_id.get(text).copied() {
            let a = &mut tok.tokens[id as usize].attr;
            *a = if on { *a | flag } else { *a & !flag };
        }
    };
    if ["jina-v2-de", "jina-v2-es", "jina-v2-code", "mmbert"]
        .iter()
        .any(|p| pre.contains(p))
        || ["nomic-bert-moe", "jina-bert-v3"]
            .iter()
            .any(|a| arch.contains(a))
    {
        set(tok, "<mask>", attr::LSTRIP, true);
    } else if name.contains("phi-3") || name.contains("phi3") {
        for id in tok.special_cache.clone() {
            tok.tokens[id as usize].attr |= attr::RSTRIP;
        }
        set(tok, "</s>", attr::RSTRIP, true);
        for t in ["<unk>", "<s>", "<|endoftext|>"] {
            set(tok, t, attr::RSTRIP, false);
        }
    } else if name.contains("modern-bert") {
        set(tok, "[MASK]", attr::LSTRIP, true);
    }
}
