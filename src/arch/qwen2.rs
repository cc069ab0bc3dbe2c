//! Qwen2 and Qwen2.5: the llama layer plus biases on Q, K and V, and NeoX
//! RoPE (llama.cpp: `src/models/qwen2.cpp`, `llama_model_rope_type`).

use super::common::*;
use super::{t, Activation, Arch, AttnScale, LayerRole as R, RopeStyle, Width as W};

/// The qwen2 family.
pub const QWEN2: Arch = Arch {
    name: "qwen2",
    architectures: &["qwen2"],
    layer: &[
        ATTN_NORM,
        Q,
        K,
        V,
        t(R::QBias, &[W::Q], "head_count x key_length"),
        t(R::KBias, &[W::Kv], "head_count_kv x key_length"),
        t(R::VBias, &[W::Kv], "head_count_kv x key_length"),
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
