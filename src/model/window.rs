//! Sliding-window attention as Gemma 3 declares it: which layers attend
//! over a window and which over everything, and the RoPE those layers use.
//! Key names and defaults are llama.cpp's (`src/llama-arch.cpp`,
//! `load_swa_pattern`, `llama_hparams`).

use ggml_sys::RopeParams;

use super::ModelError;
use crate::gguf::llama::keys;
use crate::gguf::{Array, Gguf, GgufError, Metadata, Value};

/// `{arch}.attention.sliding_window`: tokens a windowed layer looks back over.
pub const SLIDING_WINDOW: &str = "attention.sliding_window";
/// `{arch}.attention.sliding_window_pattern`: a period `n` (every `n`th
/// layer global, the rest windowed) or one flag per layer.
pub const SLIDING_WINDOW_PATTERN: &str = "attention.sliding_window_pattern";
/// `{arch}.rope.freq_base_swa`: the RoPE base of windowed layers.
pub const ROPE_FREQ_BASE_SWA: &str = "rope.freq_base_swa";
/// The period when the file gives none (Gemma 3's five windowed layers,
/// then one global).
pub const DEFAULT_PATTERN: u32 = 6;
/// The RoPE base of windowed layers when the file gives none.
pub const DEFAULT_FREQ_BASE_SWA: f32 = 10_000.0;

/// The windowed layers of a model and how they differ from the others.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    /// Tokens a windowed layer looks back over.
    pub window: u32,
    /// Per layer: whether it is windowed.
    pub layers: Vec<bool>,
    /// RoPE of the windowed layers (their own base, no scaling).
    pub rope: RopeParams,
}

impl SlidingWindow {
    /// The window settings of `arch`'s model with `n_layer` layers, whose
    /// global layers use `rope`; `None` when the file sets no window.
    pub fn read(
        g: &Gguf,
        arch: &str,
        n_layer: u32,
        rope: RopeParams,
    ) -> Result<Option<SlidingWindow>, ModelError> {
        let key = |s: &str| keys::arch_key(arch, s);
        let Some((window, layers)) = windowed_layers(g.metadata_map(), arch, n_layer)? else {
            return Ok(None);
        };
        let freq_base = g
            .get_opt::<f32>(&key(ROPE_FREQ_BASE_SWA))?
            .unwrap_or(DEFAULT_FREQ_BASE_SWA);
        if !(freq_base.is_finite() && freq_base > 0.0) {
            return Err(ModelError::Unsupported(format!(
                "{} = {freq_base}",
                key(ROPE_FREQ_BASE_SWA)
            )));
        }
        Ok(Some(SlidingWindow {
            window,
            layers,
            rope: RopeParams {
                freq_base,
                freq_scale: 1.0,
                ..rope
            },
        }))
    }

    /// Whether layer `il` is windowed.
    pub fn is_windowed(&self, il: u32) -> bool {
        self.layers.get(il as usize).copied().unwrap_or(false)
    }
}

/// The window and which of `n_layer` layers are windowed, as `arch`'s
/// metadata `md` declares them; `None` without a window (absent or 0).
pub fn windowed_layers(
    md: &Metadata,
    arch: &str,
    n_layer: u32,
) -> Result<Option<(u32, Vec<bool>)>, GgufError> {
    let key = |s: &str| keys::arch_key(arch, s);
    let window = match md.get_opt::<u32>(&key(SLIDING_WINDOW))? {
        None | Some(0) => return Ok(None),
        Some(w) => w,
    };
    let pattern_key = key(SLIDING_WINDOW_PATTERN);
    let layers = match md.get(&pattern_key) {
        Some(Value::Array(Array::Bool(flags))) => {
            if flags.len() != n_layer as usize {
                return Err(GgufError::BadHyperparameter {
                    key: pattern_key,
                    value: format!("{} flags", flags.len()),
                    reason: "must have one flag per layer",
                });
            }
            flags.clone()
        }
        _ => {
            let n = md.get_opt::<u32>(&pattern_key)?.unwrap_or(DEFAULT_PATTERN);
            // Period n: the last layer of each period is global; 0 makes
            // every layer windowed.
            (0..n_layer).map(|il| n == 0 || il % n < n - 1).collect()
        }
    };
    Ok(Some((window, layers)))
}
