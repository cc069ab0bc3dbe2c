//! Gemma 3 (llama.cpp: `src/models/gemma3.cpp`): the input embedding scaled
//! by `sqrt(n_embd)`, RMSNorms before and after both attention and the
//! feed-forward, per-head Q/K norms, queries scaled before attention, a
//! GELU-gated feed-forward and NeoX RoPE. Layers alternate between sliding-
//! window attention, with their own RoPE base, and global attention
//! (`attention.sliding_window`, `attention.sliding_window_pattern`,
//! `rope.freq_base_swa`; read in `model.rs`).

use super::common::*;
use super::{t, Activation, Arch, AttnScale, LayerRole as R, RopeStyle, Width as W};

/// The gemma3 family.
pub const GEMMA3: Arch = Arch {
    name: "gemma3",
    architectures: &["gemma3"],
    layer: &[
        ATTN_NORM,
        Q,
        K,
        V,
        t(R::QNorm, &[W::HeadDim], "key_length"),
        t(R::KNorm, &[W::HeadDim], "key_length"),
        OUT,
        t(R::PostAttnNorm, &[W::Embd], "embedding_length"),
        FFN_NORM,
        GATE,
        UP,
        DOWN,
        t(R::PostFfnNorm, &[W::Embd], "embedding_length"),
    ],
    rope: RopeStyle::Neox,
    rope_freqs: false,
    long_rope: false,
    scale_q: true,
    attn_scale: AttnScale::GemmaBySize,
    embd_scale: true,
    act: Activation::Gelu,
    sliding_window: true,
    experts: false,
    with_experts: None,
};
