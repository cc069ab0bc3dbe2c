//! Mixtral: a llama file whose layers route each token over experts
//! (`llama.expert_count` set): a router, then each expert's gate, up and
//! down stacked in one tensor each, as wide as `feed_forward_length`
//! (llama.cpp: the expert branch of `src/models/llama.cpp`). The top
//! `expert_used_count` experts by softmax weight run, weights renormalised.

use super::common::*;
use super::{t, Activation, Arch, AttnScale, LayerRole as R, RopeStyle, Width as W};

/// Keys behind the expert matrices' shapes.
const KEYS: &str = "embedding_length, feed_forward_length and expert_count";

/// The llama family with experts.
pub const MIXTRAL: Arch = Arch {
    name: "mixtral",
    // Reached from llama's description, never by name.
    architectures: &[],
    layer: &[
        ATTN_NORM,
        Q,
        K,
        V,
        OUT,
        FFN_NORM,
        GATE_INP,
        t(R::GateExps, &[W::Embd, W::Ff, W::Expert], KEYS),
        t(R::UpExps, &[W::Embd, W::Ff, W::Expert], KEYS),
        t(R::DownExps, &[W::Ff, W::Embd, W::Expert], KEYS),
    ],
    rope: RopeStyle::Normal,
    rope_freqs: true,
    long_rope: false,
    scale_q: false,
    attn_scale: AttnScale::KeyLength,
    embd_scale: false,
    act: Activation::Silu,
    sliding_window: false,
    experts: true,
    with_experts: None,
};
