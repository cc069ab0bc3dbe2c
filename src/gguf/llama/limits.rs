//! Caps on llama-family hyperparameters, and the cross-check of the
//! hyperparameters against the tensors a file holds.
//!
//! A GGUF file is small; what it declares need not be. Every count that later
//! sizes a per-layer table, a graph or a buffer is capped here, so a 4 KB file
//! that declares two billion layers is an error before anything is allocated
//! for them. The caps sit an order of magnitude or more above the largest
//! released llama-family models (126 layers, hidden width 16,384, 128 heads
//! of 128, feed-forward width 53,248, vocabularies of 262,144 tokens,
//! contexts of 10M tokens), and low enough that every product the planner and
//! the graph form from them fits a `u64` (most fit a `u32`).

use super::super::error::GgufError;
use super::super::reader::TensorInfo;
use super::{keys, layer_index, LlamaHparams};
use crate::arch::{self, Width};

/// Most transformer layers (`{arch}.block_count`).
pub const MAX_LAYERS: u32 = 4096;
/// Widest hidden state (`{arch}.embedding_length`).
pub const MAX_EMBD: u32 = 1 << 20;
/// Widest feed-forward layer (`{arch}.feed_forward_length`).
pub const MAX_FF: u32 = 1 << 22;
/// Most attention heads, query or key/value (`{arch}.attention.head_count`,
/// `head_count_kv`).
pub const MAX_HEADS: u32 = 1024;
/// Largest attention head (`{arch}.attention.key_length`, or `n_embd / n_head`).
pub const MAX_HEAD_DIM: u32 = 4096;
/// Widest Q projection, `n_head * head_dim` (which bounds K and V too).
pub const MAX_ATTN_WIDTH: u32 = 1 << 20;
/// Most routed experts per layer (`{arch}.expert_count`).
pub const MAX_EXPERTS: u32 = 4096;
/// Largest vocabulary (`tokenizer.ggml.tokens` or `{arch}.vocab_size`).
pub const MAX_VOCAB: u32 = 1 << 22;
/// Longest training context (`{arch}.context_length`); also keeps it, and
/// the RoPE context derived from it, inside ggml's `i32`.
pub const MAX_CONTEXT: u32 = 1 << 27;

/// Checks a count read as `u64`: at least 1 and at most `max`.
pub(super) fn bounded(key: &str, value: u64, max: u32) -> Result<u32, GgufError> {
    if value == 0 {
        return Err(GgufError::BadHyperparameter {
            key: key.to_owned(),
            value: value.to_string(),
            reason: "must be at least 1",
        });
    }
    if value > u64::from(max) {
        return Err(GgufError::HyperparameterOverLimit {
            key: key.to_owned(),
            value,
            max: u64::from(max),
        });
    }
    // value <= max <= u32::MAX.
    Ok(value as u32)
}

/// `a * b` of two bounded counts, itself at most `max`; the error names both keys.
pub(super) fn bounded_product(
    (key_a, a): (&str, u32),
    (key_b, b): (&str, u32),
    max: u32,
) -> Result<u32, GgufError> {
    let product = u64::from(a) * u64::from(b);
    if product > u64::from(max) {
        return Err(GgufError::HyperparameterOverLimit {
            key: format!("{key_a} x {key_b}"),
            value: product,
            max: u64::from(max),
        });
    }
    Ok(product as u32)
}

/// Expected dims (ggml order) of the tensors outside the layers whose shape
/// the hyperparameters fix, by name, and the keys to blame when they
/// disagree. Per-layer shapes come from the family's description
/// ([`crate::arch`]).
const SHAPES: &[(&str, &[Width], &str)] = &[
    (
        "token_embd.weight",
        &[Width::Embd, Width::Vocab],
        "embedding_length and the vocabulary size",
    ),
    (
        "output.weight",
        &[Width::Embd, Width::Vocab],
        "embedding_length and the vocabulary size",
    ),
    ("output_norm.weight", &[Width::Embd], "embedding_length"),
    (
        "rope_freqs.weight",
        &[Width::HalfRot],
        "rope.dimension_count / 2",
    ),
];

impl LlamaHparams {
    /// Cross-checks the hyperparameters against `tensors`: every `blk.N.`
    /// tensor lies below the layer count, every layer below it has tensors,
    /// and every tensor whose shape the hyperparameters fix (embeddings,
    /// norms, and every per-layer tensor the family's description lists)
    /// has that shape.
    /// Allocates at most one flag per layer ([`MAX_LAYERS`]).
    pub fn check_tensors(&self, tensors: &[TensorInfo]) -> Result<(), GgufError> {
        // An architecture shardline does not run is checked as llama, which
        // is what `inspect` and `plan` assumed before families were data.
        let family = arch::lookup(&self.architecture)
            .map(|a| a.variant(self.n_expert > 0))
            .unwrap_or(&arch::llama::LLAMA);
        let mut seen = vec![false; self.n_layer as usize];
        for t in tensors {
            let name = t.name();
            let role = match layer_index(name) {
                None => name,
                Some(layer) => {
                    let slot = usize::try_from(layer)
                        .ok()
                        .and_then(|i| seen.get_mut(i))
                        .ok_or_else(|| GgufError::LayerOutOfRange {
                            tensor: name.to_owned(),
                            layer,
                            n_layer: self.n_layer,
                        })?;
                    *slot = true;
                    // `blk.N.` is ASCII, so the split lands on a char boundary.
                    name.split_once('.')
                        .and_then(|(_, rest)| rest.split_once('.'))
                        .map_or(name, |(_, role)| role)
                }
            };
            let shape = if layer_index(name).is_some() {
                family.layer_tensor(role).map(|t| (t.dims, t.keys))
            } else {
                SHAPES
                    .iter()
                    .find(|(n, _, _)| *n == role)
                    .map(|&(_, dims, keys)| (dims, keys))
            };
            if let Some((widths, keys)) = shape {
                let expected: Vec<u64> = widths.iter().map(|&w| self.width(w)).collect();
                if trim(t.dims()) != trim(&expected) {
                    return Err(GgufError::TensorDisagrees {
                        tensor: name.to_owned(),
                        dims: t.dims().to_vec(),
                        expected,
                        keys,
                    });
                }
            }
        }
        if let Some(layer) = seen.iter().position(|&s| !s) {
            return Err(GgufError::LayerMissing {
                key: keys::arch_key(&self.architecture, keys::BLOCK_COUNT),
                // layer < n_layer, a u32.
                layer: layer as u32,
                n_layer: self.n_layer,
            });
        }
        Ok(())
    }

    /// The value of width `w` for these hyperparameters.
    pub fn width(&self, w: Width) -> u64 {
        // Each factor is capped, so no product here overflows a u64.
        match w {
            Width::Ff2 => 2 * u64::from(self.n_ff),
            Width::Qkv => {
                (u64::from(self.n_head) + 2 * u64::from(self.n_head_kv)) * u64::from(self.head_dim)
            }
            Width::HeadDim => u64::from(self.head_dim),
            Width::Expert => u64::from(self.n_expert),
            Width::FfExp => u64::from(self.n_ff_exp.unwrap_or(self.n_ff)),
            Width::Embd => u64::from(self.n_embd),
            Width::Vocab => u64::from(self.n_vocab),
            Width::Ff => u64::from(self.n_ff),
            Width::Q => u64::from(self.n_head) * u64::from(self.head_dim),
            Width::Kv => u64::from(self.n_head_kv) * u64::from(self.head_dim),
            Width::HalfRot => u64::from(self.n_rot / 2),
        }
    }
}

/// Dims without trailing 1s: `[64, 1]` and `[64]` are the same shape.
fn trim(dims: &[u64]) -> &[u64] {
    let mut d = dims;
    while d.len() > 1 && d.last() == Some(&1) {
        d = &d[..d.len() - 1];
    }
    d
}

#[cfg(test)]
mod tests {
    use super::super::super::writer::GgufWriter;
    use super::super::super::{GgmlType, Gguf, Metadata, Value};
    use super::*;

    /// Metadata of a tiny model: 2 layers, width 8, 2 heads of 4, 1 KV head,
    /// feed-forward 16, 3 tokens.
    fn md() -> Metadata {
        let mut md = Metadata::new();
        md.insert(keys::ARCHITECTURE, "llama");
        md.insert("llama.block_count", 2u32);
        md.insert("llama.embedding_length", 8u32);
        md.insert("llama.feed_forward_length", 16u32);
        md.insert("llama.attention.head_count", 2u32);
        md.insert("llama.attention.head_count_kv", 1u32);
        md.insert("llama.context_length", 64u32);
        md.insert(keys::TOKENS, vec!["a", "b", "c"]);
        md
    }

    /// The tiny model's file: `md` plus every weight of `n_layer` layers,
    /// with `q_rows` rows in each Q projection (8 is right).
    fn file(md: &Metadata, n_layer: u32, q_rows: u64) -> Gguf {
        let mut w = GgufWriter::new();
        w.add_metadata(md);
        let mut add = |name: String, dims: &[u64]| {
            let n: u64 = dims.iter().product();
            w.add_tensor(name, GgmlType::F32, dims, vec![0u8; n as usize * 4])
                .unwrap();
        };
        add("token_embd.weight".into(), &[8, 3]);
        add("output_norm.weight".into(), &[8]);
        for l in 0..n_layer {
            add(format!("blk.{l}.attn_norm.weight"), &[8]);
            add(format!("blk.{l}.attn_q.weight"), &[8, q_rows]);
            add(format!("blk.{l}.attn_k.weight"), &[8, 4]);
            add(format!("blk.{l}.attn_v.weight"), &[8, 4, 1]);
            add(format!("blk.{l}.attn_output.weight"), &[q_rows, 8]);
            add(format!("blk.{l}.ffn_up.weight"), &[8, 16]);
        }
        Gguf::from_bytes(w.to_bytes().unwrap().0).unwrap()
    }

    fn over_limit(md: &Metadata) -> (String, u64, u64) {
        match LlamaHparams::from_metadata(md) {
            Err(GgufError::HyperparameterOverLimit { key, value, max }) => (key, value, max),
            other => panic!("expected HyperparameterOverLimit, got {other:?}"),
        }
    }

    #[test]
    fn counts_are_capped_with_the_key_and_value_named() {
        let mut m = md();
        m.insert("llama.block_count", 2_000_000_000u32);
        let (key, value, max) = over_limit(&m);
        assert_eq!(
            (key.as_str(), value, max),
            ("llama.block_count", 2_000_000_000, 4096)
        );
        let msg = LlamaHparams::from_metadata(&m).unwrap_err().to_string();
        assert!(
            msg.contains("llama.block_count") && msg.contains("2000000000"),
            "{msg}"
        );

        // A u64 past u32 is reported as itself, not as a conversion failure.
        m.insert("llama.block_count", 1u64 << 40);
        assert_eq!(over_limit(&m).1, 1 << 40);

        for (k, max) in [
            ("llama.embedding_length", MAX_EMBD),
            ("llama.feed_forward_length", MAX_FF),
            ("llama.attention.head_count", MAX_HEADS),
            ("llama.attention.key_length", MAX_HEAD_DIM),
            ("llama.context_length", MAX_CONTEXT),
        ] {
            let mut m = md();
            m.insert(k, u64::from(max) + 1);
            assert_eq!(over_limit(&m).0, k);
        }
        let mut m = md();
        m.insert("llama.block_count", MAX_LAYERS);
        assert_eq!(LlamaHparams::from_metadata(&m).unwrap().n_layer, MAX_LAYERS);
    }

    #[test]
    fn heads_times_head_size_is_capped() {
        let mut m = md();
        m.insert("llama.attention.head_count", MAX_HEADS);
        m.insert("llama.attention.head_count_kv", MAX_HEADS);
        m.insert("llama.attention.key_length", MAX_HEAD_DIM);
        let (key, value, max) = over_limit(&m);
        assert_eq!(
            key,
            "llama.attention.head_count x llama.attention.key_length"
        );
        assert_eq!(value, u64::from(MAX_HEADS) * u64::from(MAX_HEAD_DIM));
        assert_eq!(max, u64::from(MAX_ATTN_WIDTH));
    }

    #[test]
    fn vocabulary_is_capped_and_not_empty() {
        let mut m = Metadata::new();
        for (k, v) in md().iter().filter(|(k, _)| *k != keys::TOKENS) {
            m.insert(k, v.clone());
        }
        m.insert("llama.vocab_size", u64::from(MAX_VOCAB) + 1);
        assert_eq!(over_limit(&m).0, "llama.vocab_size");
        m.insert("llama.vocab_size", 0u32);
        assert!(matches!(
            LlamaHparams::from_metadata(&m),
            Err(GgufError::BadHyperparameter { .. })
        ));
        let mut m = md();
        m.insert(keys::TOKENS, Vec::<String>::new());
        assert!(LlamaHparams::from_metadata(&m).is_err());
    }

    #[test]
    fn rope_and_norm_settings_are_checked() {
        let mut m = md();
        m.insert("llama.rope.dimension_count", 5u32);
        let err = LlamaHparams::from_metadata(&m).unwrap_err();
        assert!(
            err.to_string().contains("llama.rope.dimension_count"),
            "{err}"
        );
        for (k, v) in [
            ("llama.rope.freq_base", f32::NAN),
            ("llama.rope.freq_base", 0.0),
            ("llama.attention.layer_norm_rms_epsilon", f32::INFINITY),
            ("llama.attention.layer_norm_rms_epsilon", -1.0),
        ] {
            let mut m = md();
            m.insert(k, Value::F32(v));
            let err = LlamaHparams::from_metadata(&m).unwrap_err();
            assert!(err.to_string().contains(k), "{k}={v}: {err}");
        }
    }

    #[test]
    fn tensors_agree_with_the_hyperparameters() {
        let m = md();
        let hp = LlamaHparams::from_metadata(&m).unwrap();
        hp.check_tensors(file(&m, 2, 8).tensors()).unwrap();
    }

    #[test]
    fn every_declared_layer_has_tensors() {
        let mut m = md();
        m.insert("llama.block_count", 3u32);
        let hp = LlamaHparams::from_metadata(&m).unwrap();
        let err = hp.check_tensors(file(&m, 2, 8).tensors()).unwrap_err();
        assert!(
            matches!(&err, GgufError::LayerMissing { key, layer: 2, n_layer: 3 } if key == "llama.block_count"),
            "{err}"
        );
        let mut m = md();
        m.insert("llama.block_count", 1u32);
        let hp = LlamaHparams::from_metadata(&m).unwrap();
        let err = hp.check_tensors(file(&m, 2, 8).tensors()).unwrap_err();
        assert!(
            matches!(err, GgufError::LayerOutOfRange { layer: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn q_rows_must_be_heads_times_head_size() {
        let mut m = md();
        m.insert("llama.attention.key_length", 8u32);
        m.insert("llama.rope.dimension_count", 4u32);
        let hp = LlamaHparams::from_metadata(&m).unwrap();
        let err = hp.check_tensors(file(&m, 2, 8).tensors()).unwrap_err();
        match &err {
            GgufError::TensorDisagrees {
                tensor,
                dims,
                expected,
                keys,
            } => {
                assert_eq!(tensor, "blk.0.attn_q.weight");
                assert_eq!(
                    (dims.as_slice(), expected.as_slice()),
                    (&[8, 8][..], &[8, 16][..])
                );
                assert!(keys.contains("head_count x key_length"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn vocabulary_must_match_the_embedding() {
        let mut m = md();
        m.insert(keys::TOKENS, vec!["a", "b", "c", "d"]);
        let hp = LlamaHparams::from_metadata(&m).unwrap();
        let err = hp.check_tensors(file(&m, 2, 8).tensors()).unwrap_err();
        assert!(
            matches!(&err, GgufError::TensorDisagrees { tensor, .. } if tensor == "token_embd.weight"),
            "{err}"
        );
    }

    #[test]
    fn bounded_edges() {
        assert_eq!(bounded("k", 1, 4).unwrap(), 1);
        assert_eq!(bounded("k", 4, 4).unwrap(), 4);
        assert!(matches!(
            bounded("k", 0, 4),
            Err(GgufError::BadHyperparameter { .. })
        ));
        assert!(matches!(
            bounded("k", u64::MAX, u32::MAX),
            Err(GgufError::HyperparameterOverLimit {
                value: u64::MAX,
                ..
            })
        ));
        assert_eq!(bounded_product(("a", 4), ("b", 4), 16).unwrap(), 16);
        assert!(bounded_product(("a", u32::MAX), ("b", u32::MAX), u32::MAX).is_err());
    }
}
