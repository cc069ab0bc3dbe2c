//! Qwen3 MoE: Qwen3's attention (per-head Q/K norms, NeoX RoPE) with routed
//! experts as wide as `expert_feed_forward_length` (llama.cpp:
//! `src/models/qwen3moe.cpp`). The top `expert_used_count` experts by
//! softmax weight run, weights renormalised.

use super::common::*;
use super::{t, Activation, Arch, AttnScale, LayerRole as R, RopeStyle, Width as W};

/// Keys behind the expert matrices' shapes.
const KEYS: &str = "embedding_length, expert_feed_forward_length and expert_count";

/// The qwen3moe family.
pub const QWEN3MOE: Arch = Arch {
    name: "qwen3moe",
    architectures: &["qwen3moe"],
    layer: &[
        ATTN_NORM,
        Q,
        K,
        V,
        t(R::QNorm, &[W::HeadDim], "key_length"),
        t(R::KNorm, &[W::HeadDim], "key_length"),
        OUT,
        FFN_NORM,
        GATE_INP,
        t(R::GateExps, &[W::Embd, W::FfExp, W::Expert], KEYS),
        t(R::UpExps, &[W::Embd, W::FfExp, W::Expert], KEYS),
        t(R::DownExps, &[W::FfExp, W::Embd, W::Expert], KEYS),
    ],
    rope: RopeStyle::Neox,
    rope_freqs: false,
    long_rope: false,
    scale_q: false,
    attn_scale: AttnScale::KeyLength,
    embd_scale: false,
    act: Activation::Silu,
    sliding_window: false,
    experts: true,
    with_experts: None,
};
