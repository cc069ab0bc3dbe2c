//! Typed hyperparameters of llama-family models, read once from metadata with
//! every required key checked here; file-type names; and how tensor bytes
//! divide between the layers (`blk.N.*`) and the rest.
//!
//! Key names follow llama.cpp's (`llama-arch.cpp`): general keys are fixed,
//! model keys are `{arch}.{suffix}` with `arch` from `general.architecture`.

use std::fmt;

use super::error::GgufError;
use super::metadata::Metadata;
use super::reader::TensorInfo;
use super::value::Value;

pub mod limits;

pub mod keys;

/// RoPE base frequency when `{arch}.rope.freq_base` is absent (llama.cpp's default).
pub const DEFAULT_ROPE_FREQ_BASE: f32 = 10_000.0;
/// RMS norm epsilon when `{arch}.attention.layer_norm_rms_epsilon` is absent.
pub const DEFAULT_RMS_EPS: f32 = 1e-5;
/// Prefix of the names of per-layer tensors: `blk.{N}.`.
pub const LAYER_PREFIX: &str = "blk.";

/// `general.file_type`: llama.cpp's `llama_ftype`, the predominant tensor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileType(pub u32);

impl FileType {
    /// llama.cpp's marker bit for "not in the file, guessed from the tensors".
    pub const GUESSED: u32 = 1024;

    /// The `llama_ftype` name without its `LLAMA_FTYPE_` prefix, e.g.
    /// `MOSTLY_Q4_1`; `None` for ids this release does not define.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 & !Self::GUESSED {
            0 => "ALL_F32",
            1 => "MOSTLY_F16",
            2 => "MOSTLY_Q4_0",
            3 => "MOSTLY_Q4_1",
            7 => "MOSTLY_Q8_0",
            8 => "MOSTLY_Q5_0",
            9 => "MOSTLY_Q5_1",
            10 => "MOSTLY_Q2_K",
            11 => "MOSTLY_Q3_K_S",
            12 => "MOSTLY_Q3_K_M",
            13 => "MOSTLY_Q3_K_L",
            14 => "MOSTLY_Q4_K_S",
            15 => "MOSTLY_Q4_K_M",
            16 => "MOSTLY_Q5_K_S",
            17 => "MOSTLY_Q5_K_M",
            18 => "MOSTLY_Q6_K",
            19 => "MOSTLY_IQ2_XXS",
            20 => "MOSTLY_IQ2_XS",
            21 => "MOSTLY_Q2_K_S",
            22 => "MOSTLY_IQ3_XS",
            23 => "MOSTLY_IQ3_XXS",
            24 => "MOSTLY_IQ1_S",
            25 => "MOSTLY_IQ4_NL",
            26 => "MOSTLY_IQ3_S",
            27 => "MOSTLY_IQ3_M",
            28 => "MOSTLY_IQ2_S",
            29 => "MOSTLY_IQ2_M",
            30 => "MOSTLY_IQ4_XS",
            31 => "MOSTLY_IQ1_M",
            32 => "MOSTLY_BF16",
            36 => "MOSTLY_TQ1_0",
            37 => "MOSTLY_TQ2_0",
            38 => "MOSTLY_MXFP4_MOE",
            39 => "MOSTLY_NVFP4",
            40 => "MOSTLY_Q1_0",
            41 => "MOSTLY_Q2_0",
            _ => return None,
        })
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "unknown ({})", self.0),
        }
    }
}

/// Hyperparameters of a llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaHparams {
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// `{arch}.block_count`: number of transformer layers.
    pub n_layer: u32,
    /// `{arch}.embedding_length`.
    pub n_embd: u32,
    /// `{arch}.feed_forward_length`.
    pub n_ff: u32,
    /// `{arch}.attention.head_count`.
    pub n_head: u32,
    /// `{arch}.attention.head_count_kv`; equal to `n_head` when absent.
    pub n_head_kv: u32,
    /// Size of one attention head: `{arch}.attention.key_length`, or `n_embd / n_head`.
    pub head_dim: u32,
    /// Length of `tokenizer.ggml.tokens`, or `{arch}.vocab_size` without it.
    pub n_vocab: u32,
    /// `{arch}.context_length`: the context the model was trained for.
    pub n_ctx_train: u32,
    /// `{arch}.rope.dimension_count`, or `head_dim`.
    pub n_rot: u32,
    /// `{arch}.rope.freq_base`, or [`DEFAULT_ROPE_FREQ_BASE`].
    pub rope_freq_base: f32,
    /// `{arch}.attention.layer_norm_rms_epsilon`, or [`DEFAULT_RMS_EPS`].
    pub rms_eps: f32,
    /// `{arch}.expert_count`; 0 for a dense model.
    pub n_expert: u32,
    /// `{arch}.expert_used_count`, from 1 to `n_expert`; 0 for a dense model.
    pub n_expert_used: u32,
    /// `{arch}.expert_feed_forward_length`, when present.
    pub n_ff_exp: Option<u32>,
}

impl LlamaHparams {
    /// Reads and checks every hyperparameter. Counts may be stored as any
    /// integer type; floats must be `f32`. Each count is at least 1 and at
    /// most its cap in [`limits`], and the products the model forms from them
    /// stay under theirs, so nothing sized from them can overflow or be huge;
    /// [`LlamaHparams::check_tensors`] then checks them against the tensors.
    pub fn from_metadata(md: &Metadata) -> Result<LlamaHparams, GgufError> {
        let architecture = md.get_str(keys::ARCHITECTURE)?.to_owned();
        let key = |suffix: &str| keys::arch_key(&architecture, suffix);
        let count = |suffix: &str, max: u32| -> Result<u32, GgufError> {
            let k = key(suffix);
            limits::bounded(&k, md.get_unsigned(&k)?, max)
        };
        let opt_count = |suffix: &str, max: u32| -> Result<Option<u32>, GgufError> {
            if md.contains(&key(suffix)) {
                count(suffix, max).map(Some)
            } else {
                Ok(None)
            }
        };

        let n_layer = count(keys::BLOCK_COUNT, limits::MAX_LAYERS)?;
        let n_embd = count(keys::EMBEDDING_LENGTH, limits::MAX_EMBD)?;
        let n_ff = count(keys::FEED_FORWARD_LENGTH, limits::MAX_FF)?;
        let n_head = count(keys::HEAD_COUNT, limits::MAX_HEADS)?;
        let n_head_kv = opt_count(keys::HEAD_COUNT_KV, limits::MAX_HEADS)?.unwrap_or(n_head);
        let n_ctx_train = count(keys::CONTEXT_LENGTH, limits::MAX_CONTEXT)?;
        if n_head % n_head_kv != 0 {
            return Err(bad(
                &key(keys::HEAD_COUNT_KV),
                n_head_kv,
                "must divide the head count",
            ));
        }
        let head_dim = match opt_count(keys::KEY_LENGTH, limits::MAX_HEAD_DIM)? {
            Some(d) => d,
            None if n_embd % n_head == 0 => limits::bounded(
                &key(keys::KEY_LENGTH),
                u64::from(n_embd / n_head),
                limits::MAX_HEAD_DIM,
            )?,
            None => {
                return Err(bad(
                    &key(keys::HEAD_COUNT),
                    n_head,
                    "must divide the embedding length",
                ))
            }
        };
        // K and V are narrower than Q (n_head_kv divides n_head): one cap covers all three.
        limits::bounded_product(
            (&key(keys::HEAD_COUNT), n_head),
            (&key(keys::KEY_LENGTH), head_dim),
            limits::MAX_ATTN_WIDTH,
        )?;
        let n_rot =
            opt_count(keys::ROPE_DIMENSION_COUNT, limits::MAX_HEAD_DIM)?.unwrap_or(head_dim);
        if n_rot > head_dim {
            return Err(bad(
                &key(keys::ROPE_DIMENSION_COUNT),
                n_rot,
                "must not exceed the head size",
            ));
        }
        let n_vocab = vocab_size(md, &architecture)?;
        let rope_freq_base = md
            .get_opt::<f32>(&key(keys::ROPE_FREQ_BASE))?
            .unwrap_or(DEFAULT_ROPE_FREQ_BASE);
        if !(rope_freq_base.is_finite() && rope_freq_base > 0.0) {
            return Err(bad(
                &key(keys::ROPE_FREQ_BASE),
                rope_freq_base,
                "must be a finite number above 0",
            ));
        }
        let rms_eps = md
            .get_opt::<f32>(&key(keys::RMS_EPS))?
            .unwrap_or(DEFAULT_RMS_EPS);
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(bad(
                &key(keys::RMS_EPS),
                rms_eps,
                "must be a finite number, 0 or above",
            ));
        }

        // Dense files may say `expert_count = 0`.
        let n_expert = match md.contains(&key(keys::EXPERT_COUNT)) {
            true => match md.get_unsigned(&key(keys::EXPERT_COUNT))? {
                0 => 0,
                n => limits::bounded(&key(keys::EXPERT_COUNT), n, limits::MAX_EXPERTS)?,
            },
            false => 0,
        };
        let (n_expert_used, n_ff_exp) = if n_expert > 0 {
            (
                count(keys::EXPERT_USED_COUNT, n_expert)?,
                opt_count(keys::EXPERT_FEED_FORWARD_LENGTH, limits::MAX_FF)?,
            )
        } else {
            (0, None)
        };

        Ok(LlamaHparams {
            architecture,
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx_train,
            n_rot,
            rope_freq_base,
            rms_eps,
            n_expert,
            n_expert_used,
            n_ff_exp,
        })
    }

    /// Width of the K and V projections: `n_head_kv * head_dim`.
    pub fn n_embd_kv(&self) -> u32 {
        self.n_head_kv * self.head_dim
    }
}

impl TryFrom<&Metadata> for LlamaHparams {
    type Error = GgufError;
    fn try_from(md: &Metadata) -> Result<Self, GgufError> {
        LlamaHparams::from_metadata(md)
    }
}

fn bad(key: &str, value: impl fmt::Display, reason: &'static str) -> GgufError {
    GgufError::BadHyperparameter {
        key: key.to_owned(),
        value: value.to_string(),
        reason,
    }
}

/// Vocabulary size: the length of `tokenizer.ggml.tokens` (what llama.cpp
/// uses), else `{arch}.vocab_size`; at least 1 and at most [`limits::MAX_VOCAB`].
pub fn vocab_size(md: &Metadata, arch: &str) -> Result<u32, GgufError> {
    if let Some(value) = md.get(keys::TOKENS) {
        let Value::Array(tokens) = value else {
            return Err(GgufError::WrongType {
                key: keys::TOKENS.to_owned(),
                expected: "array of string",
                found: value.type_description(),
            });
        };
        return limits::bounded(keys::TOKENS, tokens.len() as u64, limits::MAX_VOCAB);
    }
    let k = keys::arch_key(arch, keys::VOCAB_SIZE);
    if md.contains(&k) {
        limits::bounded(&k, md.get_unsigned(&k)?, limits::MAX_VOCAB)
    } else {
        Err(GgufError::MissingKey {
            key: format!("{} (or {k})", keys::TOKENS),
        })
    }
}

/// The layer a tensor belongs to: `N` for `blk.N.…`, `None` for anything else.
pub fn layer_index(tensor_name: &str) -> Option<u64> {
    let rest = tensor_name.strip_prefix(LAYER_PREFIX)?;
    let (n, _) = rest.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// How tensor bytes divide between layers and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBytes {
    /// Bytes and tensor count of each layer, indexed by layer.
    pub layers: Vec<LayerTotal>,
    /// Bytes and count of tensors outside any layer (embeddings, output norm, output).
    pub other: LayerTotal,
}

/// A byte total and the number of tensors in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerTotal {
    /// Sum of the tensors' data sizes in bytes.
    pub bytes: u64,
    /// Number of tensors.
    pub tensors: u32,
}

impl LayerBytes {
    /// Sums tensor bytes per layer for a model with `n_layer` layers; a
    /// `blk.N.` tensor with `N >= n_layer` is [`GgufError::LayerOutOfRange`],
    /// and `n_layer` above [`limits::MAX_LAYERS`] is
    /// [`GgufError::HyperparameterOverLimit`].
    pub fn of(tensors: &[TensorInfo], n_layer: u32) -> Result<LayerBytes, GgufError> {
        limits::bounded(
            keys::BLOCK_COUNT,
            u64::from(n_layer).max(1),
            limits::MAX_LAYERS,
        )?;
        let mut layers = vec![LayerTotal::default(); n_layer as usize];
        let mut other = LayerTotal::default();
        for t in tensors {
            let slot = match layer_index(t.name()) {
                None => &mut other,
                Some(layer) => usize::try_from(layer)
                    .ok()
                    .and_then(|i| layers.get_mut(i))
                    .ok_or_else(|| GgufError::LayerOutOfRange {
                        tensor: t.name().to_owned(),
                        layer,
                        n_layer,
                    })?,
            };
            // Tensor sizes are bounded by the file length: no overflow.
            slot.bytes += t.n_bytes();
            slot.tensors += 1;
        }
        Ok(LayerBytes { layers, other })
    }

    /// Bytes of all tensors.
    pub fn total(&self) -> u64 {
        self.other.bytes + self.layers.iter().map(|l| l.bytes).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::super::writer::GgufWriter;
    use super::super::{GgmlType, Gguf};
    use super::*;

    fn base() -> Metadata {
        let mut md = Metadata::new();
        md.insert(keys::ARCHITECTURE, "llama");
        md.insert("llama.block_count", 2u32);
        md.insert("llama.embedding_length", 64u32);
        md.insert("llama.feed_forward_length", 128u32);
        md.insert("llama.attention.head_count", 8u32);
        md.insert("llama.context_length", 256u32);
        md.insert(keys::TOKENS, vec!["a", "b", "c"]);
        md
    }

    #[test]
    fn defaults() {
        let hp = LlamaHparams::from_metadata(&base()).unwrap();
        assert_eq!((hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head), (2, 64, 128, 8));
        assert_eq!(hp.n_head_kv, 8);
        assert_eq!(hp.head_dim, 8);
        assert_eq!(hp.n_rot, 8);
        assert_eq!(hp.n_vocab, 3);
        assert_eq!(hp.n_ctx_train, 256);
        assert_eq!(hp.rope_freq_base, DEFAULT_ROPE_FREQ_BASE);
        assert_eq!(hp.rms_eps, DEFAULT_RMS_EPS);
        assert_eq!(hp.n_embd_kv(), 64);
    }

    #[test]
    fn explicit_values_of_any_integer_type() {
        let mut md = base();
        md.insert("llama.block_count", 2u64);
        md.insert("llama.attention.head_count", 8i32);
        md.insert("llama.attention.head_count_kv", 2u16);
        md.insert("llama.rope.freq_base", 5e5f32);
        md.insert("llama.attention.layer_norm_rms_epsilon", 1e-6f32);
        md.insert("llama.rope.dimension_count", 4u32);
        let hp = LlamaHparams::try_from(&md).unwrap();
        assert_eq!(
            (hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_rot),
            (2, 8, 2, 4)
        );
        assert_eq!((hp.rope_freq_base, hp.rms_eps), (5e5, 1e-6));
        assert_eq!(hp.n_embd_kv(), 16);
    }

    #[test]
    fn errors_name_the_key() {
        let mut md = base();
        md.insert("llama.attention.head_count_kv", 3u32);
        let err = LlamaHparams::from_metadata(&md).unwrap_err();
        assert!(
            matches!(&err, GgufError::BadHyperparameter { key, .. } if key == "llama.attention.head_count_kv"),
            "{err}"
        );

        let mut md = base();
        md.insert("llama.block_count", 0u32);
        assert!(matches!(
            LlamaHparams::from_metadata(&md),
            Err(GgufError::BadHyperparameter { .. })
        ));

        let mut md = base();
        md.insert("llama.embedding_length", 60u32);
        assert!(matches!(
            LlamaHparams::from_metadata(&md),
            Err(GgufError::BadHyperparameter { .. })
        ));

        let mut md = base();
        md.insert("llama.rope.freq_base", 10_000u32);
        let err = LlamaHparams::from_metadata(&md).unwrap_err();
        assert!(
            matches!(&err, GgufError::WrongType { key, expected: "f32", .. } if key == "llama.rope.freq_base")
        );

        let mut md = Metadata::new();
        md.insert(keys::ARCHITECTURE, "mistral");
        let err = LlamaHparams::from_metadata(&md).unwrap_err();
        assert!(
            matches!(&err, GgufError::MissingKey { key } if key == "mistral.block_count"),
            "{err}"
        );

        let err = LlamaHparams::from_metadata(&Metadata::new()).unwrap_err();
        assert!(matches!(&err, GgufError::MissingKey { key } if key == keys::ARCHITECTURE));
    }

    #[test]
    fn vocab_size_sources() {
        let mut md = base();
        md.insert("llama.vocab_size", 1000u32);
        assert_eq!(vocab_size(&md, "llama").unwrap(), 3, "the token list wins");

        let mut md = Metadata::new();
        md.insert("llama.vocab_size", 1000u32);
        assert_eq!(vocab_size(&md, "llama").unwrap(), 1000);

        let err = vocab_size(&Metadata::new(), "llama").unwrap_err();
        assert!(
            err.to_string().contains("tokenizer.ggml.tokens")
                && err.to_string().contains("llama.vocab_size")
        );

        let mut md = Metadata::new();
        md.insert(keys::TOKENS, "not a list");
        assert!(matches!(
            vocab_size(&md, "llama"),
            Err(GgufError::WrongType { .. })
        ));
    }

    #[test]
    fn layer_indices() {
        assert_eq!(layer_index("blk.0.attn_q.weight"), Some(0));
        assert_eq!(layer_index("blk.29.ffn_down.weight"), Some(29));
        for name in [
            "token_embd.weight",
            "output.weight",
            "blk.x.y",
            "blk.1",
            "blk..a",
            "blk.+1.a",
            "blk.-1.a",
            "xblk.1.a",
        ] {
            assert_eq!(layer_index(name), None, "{name}");
        }
        assert_eq!(
            layer_index("blk.99999999999999999999999.a"),
            None,
            "too big for u64"
        );
    }

    #[test]
    fn bytes_per_layer() {
        let mut w = GgufWriter::new();
        w.add_tensor("token_embd.weight", GgmlType::F32, &[4, 3], vec![0u8; 48])
            .unwrap();
        w.add_tensor("blk.0.a", GgmlType::F32, &[2], vec![0u8; 8])
            .unwrap();
        w.add_tensor("blk.1.a", GgmlType::F32, &[3], vec![0u8; 12])
            .unwrap();
        w.add_tensor("blk.1.b", GgmlType::F16, &[3], vec![0u8; 6])
            .unwrap();
        let g = Gguf::from_bytes(w.to_bytes().unwrap().0).unwrap();
        let lb = LayerBytes::of(g.tensors(), 2).unwrap();
        assert_eq!(
            lb.layers,
            [
                LayerTotal {
                    bytes: 8,
                    tensors: 1
                },
                LayerTotal {
                    bytes: 18,
                    tensors: 2
                }
            ]
        );
        assert_eq!(
            lb.other,
            LayerTotal {
                bytes: 48,
                tensors: 1
            }
        );
        assert_eq!(lb.total(), 74);
        let err = LayerBytes::of(g.tensors(), 1).unwrap_err();
        assert!(
            matches!(&err, GgufError::LayerOutOfRange { tensor, layer: 1, n_layer: 1 } if tensor == "blk.1.a")
        );
    }

    #[test]
    fn file_type_names() {
        assert_eq!(FileType(3).name(), Some("MOSTLY_Q4_1"));
        assert_eq!(FileType(0).name(), Some("ALL_F32"));
        assert_eq!(FileType(15).to_string(), "MOSTLY_Q4_K_M");
        assert_eq!(FileType(3 | FileType::GUESSED).name(), Some("MOSTLY_Q4_1"));
        for removed in [4, 5, 6, 33, 34, 35, 42] {
            assert_eq!(FileType(removed).name(), None);
        }
        assert_eq!(FileType(4).to_string(), "unknown (4)");
    }
}
