//! A model as shardline runs it: hyperparameters resolved into the numbers
//! the graph needs, its family's description ([`crate::arch`]), and the
//! weights as named roles with shapes.

use ggml_sys::RopeParams;

use crate::arch::{Arch, AttnScale};

mod window;
pub use window::{windowed_layers, SlidingWindow};

use crate::gguf::llama::limits::MAX_CONTEXT;
use crate::gguf::llama::{keys, LlamaHparams};
use crate::gguf::{Gguf, GgufError, TensorInfo};

/// Why a model cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The metadata is missing or malformed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// An architecture no family in [`crate::arch`] covers.
    #[error(
        "general.architecture = '{0}' is not supported (supported: {list})",
        list = crate::arch::supported()
    )]
    Architecture(String),
    /// A required weight is missing.
    #[error("weight '{0}' is missing from the model")]
    MissingWeight(String),
    /// A weight has a shape the architecture does not allow.
    #[error("weight '{name}' has shape {got:?}, expected {expected:?}")]
    Shape {
        /// The weight.
        name: String,
        /// Its dims.
        got: Vec<u64>,
        /// What the hyperparameters require.
        expected: Vec<u64>,
    },
    /// A setting this implementation does not handle.
    #[error("unsupported model setting: {0}")]
    Unsupported(String),
}

/// Everything the forward graph needs to know about the model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Hyperparameters as stored.
    pub hp: LlamaHparams,
    /// RoPE settings.
    pub rope: RopeParams,
    /// Attention scale (1/sqrt(head_dim) unless the model says otherwise).
    pub kq_scale: f32,
    /// Whether the graph multiplies RoPE frequencies by factors: Llama 3's
    /// `rope_freqs.weight`, or Phi-3's LongRoPE factors.
    pub rope_freqs: bool,
    /// The tensor of those factors ([`ROPE_FREQS`], [`ROPE_FACTORS_SHORT`]
    /// or [`ROPE_FACTORS_LONG`]; see [`LlamaConfig::for_seq_context`]).
    pub rope_freqs_name: &'static str,
    /// Whether the file has LongRoPE's pair of factor tensors.
    pub long_rope: bool,
    /// Whether the output matrix is the token embedding (no `output.weight`).
    pub tied_output: bool,
    /// The model's family: its layers' tensors and its graph's choices.
    pub arch: &'static Arch,
    /// Sliding-window attention, when the model has windowed layers.
    pub swa: Option<SlidingWindow>,
}

impl LlamaConfig {
    /// Reads the configuration and checks every weight's presence and shape.
    pub fn from_gguf(g: &Gguf) -> Result<LlamaConfig, ModelError> {
        // The family first: an unknown one is named as such, not as its
        // first missing key.
        let arch = g.metadata_map().get_str(keys::ARCHITECTURE)?.to_owned();
        let family =
            crate::arch::lookup(&arch).ok_or_else(|| ModelError::Architecture(arch.clone()))?;
        let hp = LlamaHparams::from_metadata(g.metadata_map())?;
        let family = family.variant(hp.n_expert > 0);
        if family.experts != (hp.n_expert > 0) {
            let k = keys::arch_key(&arch, keys::EXPERT_COUNT);
            return Err(ModelError::Unsupported(if family.experts {
                format!("{k} is missing or 0, and {arch} layers route over experts")
            } else {
                format!("{k} = {}, and {arch} layers have no experts", hp.n_expert)
            }));
        }
        hp.check_tensors(g.tensors())?;
        let key = |s: &str| keys::arch_key(&arch, s);
        // Values wider than keys are not something the graph handles.
        if let Some(v) = g.get_opt::<u32>(&key(keys::VALUE_LENGTH)).ok().flatten() {
            if v != hp.head_dim {
                return Err(ModelError::Unsupported(format!(
                    "{} = {v} differs from the key size {}",
                    key(keys::VALUE_LENGTH),
                    hp.head_dim
                )));
            }
        }
        if hp.n_rot != hp.head_dim {
            return Err(ModelError::Unsupported(format!(
                "rope dimension count {} differs from head size {}",
                hp.n_rot, hp.head_dim
            )));
        }
        // ggml's RoPE rotates pairs and aborts the process (coordinator or
        // worker) on an odd count.
        if hp.n_rot % 2 != 0 {
            return Err(ModelError::Unsupported(format!(
                "rope dimension count {} is odd (RoPE rotates pairs of dimensions)",
                hp.n_rot
            )));
        }
        let scaling = g
            .get_opt::<&str>(&key(keys::ROPE_SCALING_TYPE))?
            .unwrap_or("linear");
        // The factor, or the older `rope.scale_linear` key when the factor is
        // absent (a factor of 0 present means no scaling).
        let factor = match g.get_opt::<f32>(&key(keys::ROPE_SCALING_FACTOR))? {
            Some(f) => f,
            None => g.get_opt::<f32>(&key("rope.scale_linear"))?.unwrap_or(0.0),
        };
        let linear = if factor > 0.0 { 1.0 / factor } else { 1.0 };
        // (freq_scale, ext_factor) as llama.cpp sets them: YaRN is linear
        // scaling plus the ramp between interpolated and extrapolated
        // frequencies (ext_factor 1); LongRoPE scales through its factor
        // tensors.
        let (freq_scale, ext_factor) = match scaling {
            // A type of "none" never scales, whatever the factor says.
            "none" => (1.0, 0.0),
            "linear" | "longrope" => (linear, 0.0),
            "yarn" => (linear, 1.0),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{} = '{other}'",
                    key(keys::ROPE_SCALING_TYPE)
                )));
            }
        };
        let rope_attn_factor = g
            .get_opt::<f32>(&key("rope.scaling.attn_factor"))?
            .unwrap_or(1.0);
        let attn_factor = rope_attn_factor * yarn_attn_factor(freq_scale, ext_factor);
        // Capped like the training context, so it fits ggml's i32.
        let n_ctx_orig = g
            .get_opt::<u32>(&key("rope.scaling.original_context_length"))
            .ok()
            .flatten()
            .filter(|&n| n > 0 && n <= MAX_CONTEXT)
            .unwrap_or(hp.n_ctx_train);
        let attn_scale = g
            .get_opt::<f32>(&key("attention.scale"))
            .ok()
            .flatten()
            .unwrap_or(0.0);
        let kq_scale = match family.attn_scale {
            AttnScale::GemmaBySize if hp.n_layer == 62 => {
                1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt()
            }
            AttnScale::GemmaBySize => 1.0 / (hp.head_dim as f32).sqrt(),
            AttnScale::KeyLength if attn_scale == 0.0 || !attn_scale.is_finite() => {
                1.0 / (hp.head_dim as f32).sqrt()
            }
            AttnScale::KeyLength => attn_scale,
        };
        // The head does not cap logits; a model that asks for it is refused.
        let softcap = key("final_logit_softcapping");
        if let Some(c) = g.get_opt::<f32>(&softcap)?.filter(|&c| c != 0.0) {
            return Err(ModelError::Unsupported(format!("{softcap} = {c}")));
        }
        let rope = RopeParams {
            n_dims: hp.n_rot as i32,
            mode: family.rope.mode(),
            n_ctx_orig: n_ctx_orig as i32,
            freq_base: hp.rope_freq_base,
            freq_scale,
            ext_factor,
            attn_factor,
            beta_fast: 32.0,
            beta_slow: 1.0,
        };
        // A family that does not read the factors ignores them, as
        // llama.cpp does; of LongRoPE's pair, the short ones until a
        // context is known (`for_seq_context`).
        let long_rope = family.long_rope
            && g.tensor(ROPE_FACTORS_SHORT).is_some()
            && g.tensor(ROPE_FACTORS_LONG).is_some();
        let rope_freqs_name = if family.rope_freqs && g.tensor(ROPE_FREQS).is_some() {
            Some(ROPE_FREQS)
        } else if long_rope {
            Some(ROPE_FACTORS_SHORT)
        } else {
            None
        };
        let swa = if family.sliding_window {
            SlidingWindow::read(g, &arch, hp.n_layer, rope)?
        } else {
            None
        };
        let cfg = LlamaConfig {
            swa,
            rope_freqs: rope_freqs_name.is_some(),
            rope_freqs_name: rope_freqs_name.unwrap_or(ROPE_FREQS),
            long_rope,
            arch: family,
            tied_output: g.tensor(OUTPUT).is_none(),
            hp,
            rope,
            kq_scale,
        };
        cfg.check_weights(g)?;
        Ok(cfg)
    }

    /// The configuration for sequences of `n_ctx_seq` cells: LongRoPE's
    /// long factors when that exceeds the original context, as llama.cpp
    /// chooses per context.
    pub fn for_seq_context(mut self, n_ctx_seq: u32) -> LlamaConfig {
        if self.long_rope {
            self.rope_freqs_name = if n_ctx_seq as i32 > self.rope.n_ctx_orig {
                ROPE_FACTORS_LONG
            } else {
                ROPE_FACTORS_SHORT
            };
        }
        self
    }

    /// The RoPE of layer `il`: windowed layers have their own.
    pub fn rope_for(&self, il: u32) -> RopeParams {
        match &self.swa {
            Some(w) if w.is_windowed(il) => w.rope,
            _ => self.rope,
        }
    }

    /// Width of K and V per token.
    pub fn n_embd_kv(&self) -> u64 {
        u64::from(self.hp.n_embd_kv())
    }

    /// Name and expected dims of every weight a layer has.
    pub fn layer_weights(&self, il: u32) -> Vec<(String, Vec<u64>)> {
        self.arch
            .layer
            .iter()
            .map(|t| {
                let dims = t.dims.iter().map(|&w| self.hp.width(w)).collect();
                (t.role.name(il), dims)
            })
            .collect()
    }

    /// Names of the weights of layer `il`, in the description's order.
    pub fn layer_weight_names(&self, il: u32) -> impl Iterator<Item = String> + '_ {
        self.arch.roles().map(move |r| r.name(il))
    }

    fn check_weights(&self, g: &Gguf) -> Result<(), ModelError> {
        let (e, v) = (u64::from(self.hp.n_embd), u64::from(self.hp.n_vocab));
        let mut expect: Vec<(String, Vec<u64>)> = vec![
            (TOKEN_EMBD.into(), vec![e, v]),
            (OUTPUT_NORM.into(), vec![e]),
        ];
        if !self.tied_output {
            expect.push((OUTPUT.into(), vec![e, v]));
        }
        let half_rot = vec![u64::from(self.hp.n_rot / 2)];
        if self.long_rope {
            expect.push((ROPE_FACTORS_SHORT.into(), half_rot.clone()));
            expect.push((ROPE_FACTORS_LONG.into(), half_rot));
        } else if self.rope_freqs {
            expect.push((ROPE_FREQS.into(), half_rot));
        }
        for il in 0..self.hp.n_layer {
            expect.extend(self.layer_weights(il));
        }
        for (name, dims) in expect {
            let t = g
                .tensor(&name)
                .ok_or_else(|| ModelError::MissingWeight(name.clone()))?;
            check_dims(t, &dims)?;
        }
        // A layer tensor the description does not list (a bias, an extra
        // norm, experts) would change the output if it were ignored.
        // Outside the layers likewise (Phi-3's long-context RoPE factors,
        // an output bias): llama.cpp too refuses a file with tensors it
        // does not load.
        for t in g.tensors() {
            let known = match t
                .name()
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
            {
                Some((_, rest)) => self.arch.layer_tensor(rest).is_some(),
                None => {
                    [TOKEN_EMBD, OUTPUT_NORM, OUTPUT, ROPE_FREQS].contains(&t.name())
                        || (self.long_rope
                            && [ROPE_FACTORS_SHORT, ROPE_FACTORS_LONG].contains(&t.name()))
                }
            };
            if !known {
                return Err(ModelError::Unsupported(format!(
                    "tensor '{}' (not part of a {} model)",
                    t.name(),
                    self.hp.architecture
                )));
            }
        }
        Ok(())
    }
}

fn check_dims(t: &TensorInfo, expected: &[u64]) -> Result<(), ModelError> {
    // Trailing 1s are the same shape.
    let trim = |d: &[u64]| {
        let mut v = d.to_vec();
        while v.len() > 1 && v.last() == Some(&1) {
            v.pop();
        }
        v
    };
    if trim(t.dims()) != trim(expected) {
        return Err(ModelError::Shape {
            name: t.name().to_string(),
            got: t.dims().to_vec(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

/// Token embedding (looked up on the coordinator; also the output matrix
/// when the model has none).
pub const TOKEN_EMBD: &str = "token_embd.weight";
/// Final norm weight.
pub const OUTPUT_NORM: &str = "output_norm.weight";
/// Output (LM head) matrix, when not tied.
pub const OUTPUT: &str = "output.weight";
/// Llama 3 RoPE frequency factors.
pub const ROPE_FREQS: &str = "rope_freqs.weight";
/// LongRoPE's factors for contexts up to the original one.
pub const ROPE_FACTORS_SHORT: &str = "rope_factors_short.weight";
/// LongRoPE's factors for longer contexts.
pub const ROPE_FACTORS_LONG: &str = "rope_factors_long.weight";

/// The YaRN attention factor llama.cpp multiplies into RoPE: YaRN's
/// magnitude scale for the context factor, over the `1 + 0.1 ln(factor)`
/// ggml's RoPE applies by itself whenever `ext_factor` is not 0.
fn yarn_attn_factor(freq_scale: f32, ext_factor: f32) -> f32 {
    if ext_factor == 0.0 {
        return 1.0;
    }
    let factor = 1.0 / freq_scale;
    let mscale = if factor <= 1.0 {
        1.0
    } else {
        0.1 * factor.ln() + 1.0
    };
    mscale / (1.0 + 0.1 * factor.ln())
}

pub use crate::arch::LayerRole;
