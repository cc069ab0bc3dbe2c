//! Text ⇄ token ids for the vocabularies llama-family GGUF files carry, with
//! the same results as llama.cpp's tokenizer, piece and detokenizer
//! functions (checked against them in tests/tokenizer_vs_llama.rs).
//!
//! Two vocabulary kinds are supported, picked by `tokenizer.ggml.model`:
//!
//! - `gpt2`: byte-level BPE. Text is split into words by the pre-tokenizer
//!   that `tokenizer.ggml.pre` names, each word's UTF-8
//!   bytes are mapped to GPT-2's printable stand-ins, and adjacent symbols are
//!   merged lowest merge rank first (`tokenizer.ggml.merges`).
//! - `llama`: SentencePiece. Spaces become `▁`, a space is put in front of
//!   text that starts the input or follows a special token
//!   (`tokenizer.ggml.add_space_prefix`), adjacent symbols are merged highest
//!   score first when the merged text is a token, and whatever is left that is
//!   no token is spelled with byte tokens `<0xXX>`.
//!
//! Special tokens (types CONTROL, USER_DEFINED and UNKNOWN) are cut out of the
//! text before either: user-defined ones always, control and unknown ones only
//! when `parse_special` is set.
//!
//! Loading never panics on hostile metadata: missing or mistyped arrays,
//! arrays shorter than the vocabulary and duplicate tokens are
//! [`TokenizerError`]s. Special-token ids outside the vocabulary are ignored
//! with a warning, as llama.cpp does (real files have them, e.g. a padding id
//! equal to the vocabulary size).

mod bpe;
mod load;
mod pretokenize;
mod special;
mod spm;
pub mod stream;
mod unicode;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};

pub use stream::StreamDecoder;

use crate::gguf::GgufError;

/// Why a vocabulary could not be built from a GGUF file's metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A `tokenizer.ggml.*` key is missing or has the wrong type.
    #[error("tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),
    /// `tokenizer.ggml.model` names a model llama.cpp does not know; holds the name.
    #[error("unknown tokenizer model '{0}'")]
    UnknownModel(String),
    /// `tokenizer.ggml.model` names a model llama.cpp knows but this crate
    /// does not implement (only `gpt2` and `llama` are); holds the name.
    #[error(
        "tokenizer model '{0}' is not supported (only 'gpt2' BPE and 'llama' SentencePiece are)"
    )]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer llama.cpp does not know; holds the name.
    #[error("unknown pre-tokenizer '{0}'")]
    UnknownPreTokenizer(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer that needs code of its own
    /// beyond regex splitting, which this crate does not have; holds the name.
    #[error("pre-tokenizer '{0}' is not supported")]
    UnsupportedPreTokenizer(String),
    /// `tokenizer.ggml.tokens` has no entries.
    #[error("the vocabulary is empty")]
    EmptyVocabulary,
    /// The vocabulary has more tokens than fit in an `i32` id; holds the count.
    #[error("the vocabulary has {0} tokens, more than token ids can number")]
    TooManyTokens(usize),
    /// A per-token array (types or scores) has fewer entries than there are tokens.
    #[error("'{key}' has {found} entries, fewer than the {expected} tokens")]
    ShortArray {
        /// The metadata key of the array.
        key: &'static str,
        /// Number of tokens in the vocabulary.
        expected: usize,
        /// Number of entries in the array.
        found: usize,
    },
    /// Two tokens have the same text.
    #[error("token {second} has the same text as token {first}: {text:?}")]
    DuplicateToken {
        /// The shared text.
        text: String,
        /// Id of the first token with it.
        first: u32,
        /// Id of the second token with it.
        second: u32,
    },
    /// A pre-tokenizer regex could not be translated or compiled.
    #[error("pre-tokenizer pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern as llama.cpp writes it.
        pattern: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// The vocabulary kind (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// `llama`: SentencePiece with byte fallback.
    Spm,
    /// `gpt2`: byte-level BPE.
    Bpe,
}

/// Token attributes (llama.cpp's `llama_token_attr`, which GGUF files carry
/// as `tokenizer.ggml.token_type`).
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 6;
    pub const RSTRIP: u16 = 1 << 7;
}

#[derive(Debug, Clone)]
pub(crate) struct TokenData {
    pub text: String,
    pub score: f32,
    pub attr: u16,
}

/// Ids of the tokens with a role. `None`: the vocabulary has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// End of turn (e.g. `<|eot_id|>`, `<|im_end|>`).
    pub eot: Option<u32>,
    /// End of message (`<|eom_id|>`).
    pub eom: Option<u32>,
    /// Unknown token.
    pub unk: Option<u32>,
    /// Separator.
    pub sep: Option<u32>,
    /// Padding.
    pub pad: Option<u32>,
    /// Mask.
    pub mask: Option<u32>,
    /// Fill-in-the-middle: start of the prefix.
    pub fim_pre: Option<u32>,
    /// Fill-in-the-middle: start of the suffix.
    pub fim_suf: Option<u32>,
    /// Fill-in-the-middle: start of the middle, to be generated.
    pub fim_mid: Option<u32>,
    /// Fill-in-the-middle: padding.
    pub fim_pad: Option<u32>,
    /// Fill-in-the-middle: repository name marker.
    pub fim_rep: Option<u32>,
    /// Fill-in-the-middle: file separator.
    pub fim_sep: Option<u32>,
}

/// Merge ranks of a BPE vocabulary. Merge halves are interned so that a
/// lookup of two `&str`s allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct MergeRanks {
    halves: HashMap<String, u32>,
    ranks: HashMap<(u32, u32), u32>,
}

impl MergeRanks {
    pub fn rank(&self, left: &str, right: &str) -> Option<u32> {
        let l = *self.halves.get(left)?;
        let r = *self.halves.get(right)?;
        self.ranks.get(&(l, r)).copied()
    }
}

#[derive(Debug)]
pub(crate) enum Model {
    Spm,
    Bpe {
        steps: Vec<pretokenize::Step>,
        ranks: MergeRanks,
        ignore_merges: bool,
    },
}

/// A vocabulary with its tokenizer.
pub struct Tokenizer {
    model: Model,
    tokens: Vec<TokenData>,
    token_to_id: HashMap<String, u32>,
    special: SpecialTokens,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    eog: BTreeSet<u32>,
    /// Tokens cut out of text before tokenizing, longest text first.
    special_cache: Vec<u32>,
    /// Each token's piece with `special = true`.
    pieces: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("n_vocab", &self.tokens.len())
            .field("special", &self.special)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("add_space_prefix", &self.add_space_prefix)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &crate::gguf::Gguf) -> Result<Tokenizer, TokenizerError> {
        load::from_metadata(gguf.metadata_map())
    }

    /// Builds the tokenizer from metadata alone.
    pub fn from_metadata(metadata: &crate::gguf::Metadata) -> Result<Tokenizer, TokenizerError> {
        load::from_metadata(metadata)
    }

    /// Whether this is a SentencePiece or a byte-level BPE vocabulary.
    pub fn kind(&self) -> VocabKind {
        match self.model {
            Model::Spm => VocabKind::Spm,
            Model::Bpe { .. } => VocabKind::Bpe,
        }
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// Id of the beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.special.bos
    }

    /// Id of the end-of-sequence token, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.special.eos
    }

    /// Ids of all tokens with a role.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Whether [`Tokenizer::encode`] with `add_special` puts BOS first (it
    /// does nothing when the vocabulary has no BOS, where llama.cpp aborts).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether [`Tokenizer::encode`] with `add_special` puts EOS last.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether generating `id` ends generation: EOS, EOT, EOM, and the tokens
    /// llama.cpp recognises by their text (`<|im_end|>`, `<|endoftext|>`,
    /// `<|eot_id|>`, `<end_of_turn>`, FIM pad/repo/separator tokens, …).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation tokens, ascending.
    pub fn eog_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// The stored text of a token (not its piece: byte-level and `▁`
    /// encodings are left as they are).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }

    /// The id of the token whose stored text is `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Whether `id` is a control token (BOS, EOS, chat markers, …).
    pub fn is_control(&self, id: u32) -> bool {
        self.attr(id) & attr::CONTROL != 0
    }

    fn attr(&self, id: u32) -> u16 {
        self.tokens.get(id as usize).map_or(0, |t| t.attr)
    }

    /// Text to token ids, as llama.cpp tokenizes. `add_special` adds BOS/EOS
    /// where the vocabulary asks for them; `parse_special` lets control
    /// tokens written in the text (e.g. `<|im_start|>`) become those tokens.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let fragments = special::partition(self, text, parse_special);
        let mut out = Vec::new();
        match &self.model {
            Model::Spm => {
                if add_special && self.add_bos {
                    out.extend(self.special.bos);
                }
                // Text at the very start, or right after a special token,
                // gets a leading space.
                let mut prev_special = true;
                for fragment in fragments {
                    match fragment {
                        special::Fragment::Text(range) => {
                            let mut piece = String::with_capacity(range.len() + 3);
                            if self.add_space_prefix && prev_special {
                                piece.push(' ');
                            }
                            piece.push_str(&text[range]);
                            spm::tokenize(self, &piece.replace(' ', "\u{2581}"), &mut out);
                            prev_special = false;
                        }
                        special::Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe {
                steps,
                ranks,
                ignore_merges,
            } => {
                if add_special && self.add_bos {
                    out.extend(self.special.bos);
                }
                for fragment in fragments {
                    match fragment {
                        special::Fragment::Text(range) => {
                            for word in pretokenize::split(&text[range], steps) {
                                bpe::tokenize_word(self, ranks, *ignore_merges, &word, &mut out);
                            }
                        }
                        special::Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.special.eos);
        }
        out
    }

    /// The bytes a token stands for, as `llama_token_to_piece` with
    /// `lstrip = 0`. Control and unknown tokens give nothing unless
    /// `special`; ids outside the vocabulary give nothing.
    pub fn token_to_piece(&self, id: u32, special: bool) -> Vec<u8> {
        self.piece(id, special).to_vec()
    }

    pub(crate) fn piece(&self, id: u32, special: bool) -> &[u8] {
        if !special && self.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return &[];
        }
        self.pieces.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// The pieces of `ids` concatenated, as lossy UTF-8.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.piece(id, special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Token ids to text, as `llama_detokenize`: with `remove_special`, a
    /// leading BOS and trailing EOS that the vocabulary adds are dropped; the
    /// space a SentencePiece vocabulary puts first is removed; byte-level
    /// vocabularies that ask for it get spaces before `?!.,` and some
    /// apostrophes tidied away. `unparse_special` renders control tokens.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut strip_space = self.add_space_prefix;
        if remove_special && self.add_bos {
            if let (Some(&first), Some(bos)) = (ids.first(), self.special.bos) {
                if first == bos {
                    strip_space = false;
                    ids = &ids[1..];
                }
            }
        }
        if remove_special && self.add_eos {
            if let (Some(&last), Some(eos)) = (ids.last(), self.special.eos) {
                if last == eos {
                    ids = &ids[..ids.len() - 1];
                }
            }
        }
        let mut text = Vec::new();
        for &id in ids {
            let piece = self.piece(id, unparse_special);
            let piece = match piece.split_first() {
                Some((b' ', rest)) if strip_space => rest,
                _ => piece,
            };
            strip_space = false;
            text.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_up_spaces(&mut text);
        }
        text
    }

    pub(crate) fn text_to_token(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The token for one byte of text: `<0xXX>`, else the byte itself as a
    /// token, else UNK (where llama.cpp would throw).
    pub(crate) fn byte_to_token(&self, b: u8) -> Option<u32> {
        self.text_to_token(&format!("<0x{b:02X}>"))
            .or_else(|| {
                std::str::from_utf8(&[b])
                    .ok()
                    .and_then(|s| self.text_to_token(s))
            })
            .or(self.special.unk)
    }

    pub(crate) fn token(&self, id: u32) -> Option<&TokenData> {
        self.tokens.get(id as usize)
    }
}

/// llama.cpp's `clean_up_tokenization_spaces`: drop the space before `?!.,`;
/// turn ` ' ` into `'`; drop the space before `'s`, `'m`, `'re`, `'ve`.
fn clean_up_spaces(text: &mut Vec<u8>) {
    // Each pass keeps the first byte and decides every later byte looking at
    // the original bytes around it.
    let mut out = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(x);
    }
    *text = out;

    // The space after ` ' ` is blanked in place, so it cannot also count as
    // the space before a following apostrophe.
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let x = text[i];
        if i > 0 && x == b'\'' && i + 1 < text.len() && text[i - 1] == b' ' && text[i + 1] == b' ' {
            out.pop();
            out.push(x);
            text[i + 1] = 0;
            i += 2;
            continue;
        }
        out.push(x);
        i += 1;
    }
    *text = out;

    let mut out = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && x == b'\'' && i + 1 < text.len() {
            let x1 = text[i + 1];
            let x2 = text.get(i + 2).copied();
            if matches!(x1, b's' | b'm') || matches!((x1, x2), (b'r' | b'v', Some(b'e'))) {
                out.pop();
            }
        }
        out.push(x);
    }
    *text = out;
}
