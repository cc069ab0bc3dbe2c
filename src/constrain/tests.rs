//! Masks of small grammars over a small byte vocabulary.

use super::*;
use serde_json::json;

const EOS: u32 = 0;

/// A vocabulary of single characters, a few longer pieces and an end token.
fn vocab() -> (Vocab, Vec<String>) {
    let mut texts: Vec<String> = vec!["<eos>".into()];
    for c in " {}[]\":,0123456789abcdefghijklmnopqrstuvwxyz-.\n".chars() {
        texts.push(c.to_string());
    }
    for piece in [
        "{\"", "\": ", ", \"", "true", "false", "null", "name", "\"}",
    ] {
        texts.push(piece.into());
    }
    let words = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i as u32 == EOS {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(t.as_bytes());
                w
            } else {
                t.as_bytes().to_vec()
            }
        })
        .collect();
    (Vocab::from_words(words, EOS).unwrap(), texts)
}

/// Runs a constraint to the end, choosing with `pick` among the allowed
/// tokens at each step; the text made.
fn walk(
    vocab: &Vocab,
    texts: &[String],
    grammar: &Grammar,
    mut pick: impl FnMut(&[u32], usize) -> u32,
) -> String {
    let mut c = vocab.compile(grammar).unwrap();
    let mut out = String::new();
    for step in 0..200 {
        let mask = c.mask().unwrap();
        let allowed: Vec<u32> = mask.ids().collect();
        assert!(!allowed.is_empty(), "nothing allowed after {out:?}");
        let tok = pick(&allowed, step);
        assert!(mask.allows(tok));
        if tok == EOS {
            return out;
        }
        c.commit(tok).unwrap();
        out.push_str(&texts[tok as usize]);
    }
    panic!("no end after 200 tokens: {out:?}");
}

#[test]
fn an_object_must_start_with_a_brace_and_ends_with_eos_only() {
    let (v, texts) = vocab();
    let mut c = v.compile(&Grammar::json_object()).unwrap();
    let first: Vec<&str> = c
        .mask()
        .unwrap()
        .ids()
        .map(|i| texts[i as usize].as_str())
        .collect();
    assert!(first.iter().all(|t| t.starts_with('{')), "{first:?}");
    assert!(!first.is_empty());
    // "{}" then only the end token.
    let open = texts.iter().position(|t| t == "{").unwrap() as u32;
    let close = texts.iter().position(|t| t == "}").unwrap() as u32;
    c.commit(open).unwrap();
    c.commit(close).unwrap();
    let after: Vec<u32> = c.mask().unwrap().ids().collect();
    assert_eq!(after, [EOS]);
}

#[test]
fn walks_under_a_schema_give_valid_json() {
    let (v, texts) = vocab();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 5},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "n", "ok"],
        "additionalProperties": false
    });
    let g = Grammar::JsonSchema(schema);
    // Several pseudo-random choosers, and always-the-last.
    for seed in 0..8u64 {
        let mut x = seed * 2654435761 + 1;
        let out = walk(&v, &texts, &g, |allowed, _| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            allowed[(x >> 33) as usize % allowed.len()]
        });
        let value: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        assert!(
            value["name"].as_str().unwrap().chars().count() <= 5,
            "{out}"
        );
        let n = value["n"].as_i64().unwrap();
        assert!((0..=99).contains(&n), "{out}");
        assert!(value["ok"].is_boolean(), "{out}");
        assert_eq!(value.as_object().unwrap().len(), 3, "{out}");
        // Compact layout: no newline anywhere.
        assert!(!out.contains('\n'), "{out:?}");
    }
}

#[test]
fn lark_alternatives_and_enums() {
    let (v, texts) = vocab();
    let g = Grammar::Lark(r#"start: "yes" | "no" | %json {"enum": [1, 22]}"#.into());
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..20u64 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let out = walk(&v, &texts, &g, |allowed, _| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            allowed[x as usize % allowed.len()]
        });
        assert!(["yes", "no", "1", "22"].contains(&out.as_str()), "{out:?}");
        seen.insert(out);
    }
    assert!(seen.len() >= 2, "{seen:?}");
}

#[test]
fn bad_schemas_are_grammar_errors() {
    let (v, _) = vocab();
    let bad = [
        json!({"type": "no-such-type"}),
        json!({"type": "integer", "minimum": 5, "maximum": 1}),
    ];
    for s in bad {
        match v.compile(&Grammar::JsonSchema(s.clone())) {
            Err(ConstraintError::Grammar(_)) => {}
            other => panic!("{s}: {other:?}"),
        }
    }
    assert!(matches!(
        v.compile(&Grammar::Lark("start: ( ".into())),
        Err(ConstraintError::Grammar(_))
    ));
}

#[test]
fn the_end_token_must_be_in_the_vocabulary() {
    assert!(matches!(
        Vocab::from_words(vec![b"a".to_vec()], 3),
        Err(ConstraintError::Vocab(_))
    ));
}

#[test]
fn a_token_outside_the_mask_is_an_error() {
    let (v, texts) = vocab();
    let mut c = v.compile(&Grammar::json_object()).unwrap();
    let a = texts.iter().position(|t| t == "a").unwrap() as u32;
    assert!(!c.mask().unwrap().allows(a));
    assert!(matches!(c.commit(a), Err(ConstraintError::Runtime(_))));
}
