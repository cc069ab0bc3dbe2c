//! Qwen3: the llama layer plus an RMSNorm over each query and key head
//! before RoPE, and NeoX RoPE (llama.cpp: `src/models/qwen3.cpp`).

use super::common::*;
use super::{t, Activation, Arch, AttnScale, LayerRole as R, RopeStyle, Width as W};

/// The qwen3 family.
pub const QWEN3: Arch = Arch {
    name: "qwen3",
    architectures: &["qwen3"],
    layer: &[
        ATTN_NORM,
        Q,
        K,
        V,
        t(R::QNorm, &[W::HeadDim], "key_length"),
        t(R::KNorm, &[W::HeadDim], "key_length"),
        OUT,
        FFN_NORM,
        GATE,
        UP,
        DOWN,
    ],
    rope: RopeStyle::Neox,
    rope_freqs: false,
    long_rope: false,
    scale_q: false,
    attn_scale: AttnScale::KeyLength,
    embd_scale: false,
    act: Activation::Silu,
    sliding_window: false,
    experts: false,
    with_experts: None,
};
