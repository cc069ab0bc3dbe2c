//! Llama (and Mistral, which llama.cpp loads the same way): RMSNorm, separate
//! Q/K/V without biases, SwiGLU feed-forward, normal RoPE with optional
//! Llama 3 frequency factors.

use super::common::*;
use super::{Activation, Arch, AttnScale, RopeStyle};

/// The llama family.
pub const LLAMA: Arch = Arch {
    name: "llama",
    architectures: &["llama", "mistral"],
    layer: &[ATTN_NORM, Q, K, V, OUT, FFN_NORM, GATE, UP, DOWN],
    rope: RopeStyle::Normal,
    rope_freqs: true,
    long_rope: false,
    scale_q: false,
    attn_scale: AttnScale::KeyLength,
    embd_scale: false,
    act: Activation::Silu,
    sliding_window: false,
    experts: false,
    with_experts: Some(&super::mixtral::MIXTRAL),
};
