//! Constrained decoding: output that must follow a grammar (a JSON schema,
//! any JSON object, a tool call), enforced token by token.
//!
//! The grammar engine is `llguidance`: given the vocabulary as bytes
//! ([`Vocab`], built once per model) and a grammar ([`Grammar`]), a
//! [`Constraint`] says at each step which tokens may come next
//! ([`Constraint::mask`], a [`TokenMask`] for the sampler) and is told which
//! one came ([`Constraint::commit`]). Output that follows the mask is valid
//! by construction; once the grammar is complete only the end-of-sequence
//! token is allowed.
//!
//! JSON is generated compactly (`", "` between items, `": "` after keys, no
//! other whitespace) unless the schema says otherwise with llguidance's
//! `x-guidance` options: a small model given free whitespace tends to spend
//! its tokens on newlines.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use crate::sample::TokenMask;
use crate::tokenizer::Tokenizer;

/// Why a grammar could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// The vocabulary could not be prepared (no end token, or the engine
    /// refused it).
    #[error("the vocabulary cannot be constrained: {0}")]
    Vocab(String),
    /// The grammar or schema is not valid, or not supported.
    #[error("invalid grammar: {0}")]
    Grammar(String),
    /// The constraint failed while generating (a token outside its mask).
    #[error("constraint failed: {0}")]
    Runtime(String),
}

/// What the output must follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON value valid under this JSON schema.
    JsonSchema(Value),
    /// A grammar in llguidance's Lark syntax (which may embed JSON schemas
    /// with `%json { ... }`).
    Lark(String),
}

impl Grammar {
    /// Any JSON object (OpenAI's `json_object` response format).
    pub fn json_object() -> Grammar {
        Grammar::JsonSchema(json!({"type": "object"}))
    }

    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema)),
            Grammar::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
        }
    }
}

/// The compact JSON layout llguidance's `x-guidance` options ask for.
pub fn compact_options() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// `schema` with the compact layout, unless it sets its own.
fn compact(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Value::Object(m) = &mut s {
        m.entry("x-guidance").or_insert_with(compact_options);
    }
    s
}

/// A model's vocabulary, prepared for constraining (a token trie and the
/// grammar engine's shared state). Building one takes a moment (tenths of a
/// second for 50k tokens): build it once per model.
#[derive(Clone)]
pub struct Vocab {
    factory: Arc<ParserFactory>,
    n_vocab: usize,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocab")
            .field("n_vocab", &self.n_vocab)
            .finish_non_exhaustive()
    }
}

impl Vocab {
    /// The vocabulary of `tokenizer`: each token's bytes, control tokens
    /// marked as special so that no grammar text can produce them, and the
    /// end-of-sequence token (the first end-of-generation token when the
    /// model names no EOS) as the one that ends a complete output.
    pub fn new(tokenizer: &Tokenizer) -> Result<Vocab, ConstraintError> {
        let eos = tokenizer
            .eos()
            .or_else(|| tokenizer.eog_tokens().next())
            .ok_or_else(|| ConstraintError::Vocab("the model names no end token".into()))?;
        let n = tokenizer.n_vocab();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                if tokenizer.is_control(id) || tokenizer.is_eog(id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tokenizer.token_text(id).unwrap_or("").as_bytes());
                    w
                } else {
                    tokenizer.token_to_piece(id, false)
                }
            })
            .collect();
        Vocab::from_words(words, eos)
    }

    /// A vocabulary given as each token's bytes (a special token's start
    /// with `0xFF`), `eos` ending a complete output.
    pub fn from_words(words: Vec<Vec<u8>>, eos: u32) -> Result<Vocab, ConstraintError> {
        let n_vocab = words.len();
        let n = u32::try_from(n_vocab)
            .map_err(|_| ConstraintError::Vocab("vocabulary larger than u32".into()))?;
        if eos >= n {
            return Err(ConstraintError::Vocab(format!(
                "end token {eos} outside the vocabulary"
            )));
        }
        let trie = TokTrie::from(&TokRxInfo::new(n, eos), &words);
        let env: llguidance::toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| ConstraintError::Vocab(e.to_string()))?;
        factory.quiet();
        Ok(Vocab {
            factory: Arc::new(factory),
            n_vocab,
        })
    }

    /// Tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// A fresh constraint for one output; [`ConstraintError::Grammar`] when
    /// the grammar does not compile (a schema it cannot satisfy, a feature
    /// it does not support).
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, ConstraintError> {
        let parser = self
            .factory
            .create_parser(grammar.top_level())
            .map_err(|e| ConstraintError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Grammar(e));
        }
        Ok(Constraint {
            matcher,
            n_vocab: self.n_vocab,
        })
    }
}

/// One output's constraint: which tokens may come next.
pub struct Constraint {
    matcher: Matcher,
    n_vocab: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("done", &self.is_done())
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// The tokens allowed next (only the end token once the output is
    /// complete).
    pub fn mask(&mut self) -> Result<TokenMask, ConstraintError> {
        let vob = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError::Runtime(e.to_string()))?;
        let mut words = vob.as_slice().to_vec();
        words.truncate(self.n_vocab.div_ceil(32));
        Ok(TokenMask::from_words(words))
    }

    /// Takes `token` as the next one of the output.
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError::Runtime(e.to_string()))
    }

    /// Whether nothing but the end may come.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests;
