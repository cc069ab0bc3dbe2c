//! Phi-3: Q, K and V in one matrix, gate and up in one matrix (stored as
//! `ffn_up`, gate rows first), NeoX RoPE, and the queries scaled before
//! attention (llama.cpp: `src/models/phi3.cpp`).

use super::common::*;
use super::{t, Activation, Arch, AttnScale, LayerRole as R, RopeStyle, Width as W};

/// The phi3 family.
pub const PHI3: Arch = Arch {
    name: "phi3",
    architectures: &["phi3"],
    layer: &[
        ATTN_NORM,
        t(
            R::Qkv,
            &[W::Embd, W::Qkv],
            "embedding_length and (head_count + 2 x head_count_kv) x key_length",
        ),
        OUT,
        FFN_NORM,
        t(
            R::GateUp,
            &[W::Embd, W::Ff2],
            "embedding_length and 2 x feed_forward_length",
        ),
        DOWN,
    ],
    rope: RopeStyle::Neox,
    rope_freqs: false,
    long_rope: true,
    scale_q: true,
    attn_scale: AttnScale::KeyLength,
    embd_scale: false,
    act: Activation::Silu,
    sliding_window: false,
    experts: false,
    with_experts: None,
};
