//! Model families as data: for each `general.architecture` shardline runs,
//! the tensors a layer holds (role, GGUF name, shape) and the choices its
//! forward pass makes (RoPE style, where the attention scale goes). The
//! config check, the tensor cross-check, the weight lists of the uploader
//! and the local stage, and the graph builder all read the same
//! description, so a family is a table entry here plus whatever ops it
//! needs in the graph, not a copied builder.
//!
//! This module is plain data with no ggml in it: the fuzz targets compile it
//! in with the GGUF reader and the planner.

pub mod gemma3;
pub mod llama;
pub mod mixtral;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod qwen3moe;

/// A width the hyperparameters fix, used to state tensor shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// `embedding_length`.
    Embd,
    /// The vocabulary size.
    Vocab,
    /// `feed_forward_length`.
    Ff,
    /// `2 x feed_forward_length` (gate and up in one matrix).
    Ff2,
    /// `head_count x key_length`.
    Q,
    /// `head_count_kv x key_length`.
    Kv,
    /// `(head_count + 2 x head_count_kv) x key_length` (Q, K and V in one matrix).
    Qkv,
    /// `key_length`.
    HeadDim,
    /// `rope.dimension_count / 2`.
    HalfRot,
    /// `expert_count`.
    Expert,
    /// `expert_feed_forward_length`, or `feed_forward_length` without it.
    FfExp,
}

/// The weights of one transformer layer, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerRole {
    /// RMSNorm weight before attention.
    AttnNorm,
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Query bias.
    QBias,
    /// Key bias.
    KBias,
    /// Value bias.
    VBias,
    /// Query, key and value projections in one matrix (rows Q, then K, then V).
    Qkv,
    /// Per-head RMSNorm weight of the queries.
    QNorm,
    /// Per-head RMSNorm weight of the keys.
    KNorm,
    /// Attention output projection.
    Out,
    /// RMSNorm weight before the feed-forward.
    FfnNorm,
    /// RMSNorm weight after attention, before the residual add.
    PostAttnNorm,
    /// RMSNorm weight after the feed-forward, before the residual add.
    PostFfnNorm,
    /// Feed-forward gate projection.
    Gate,
    /// Feed-forward up projection.
    Up,
    /// Feed-forward gate and up projections in one matrix (rows gate, then up).
    GateUp,
    /// Feed-forward down projection.
    Down,
    /// Router: one logit per expert.
    GateInp,
    /// Every expert's gate projection, `[n_embd, n_ff, n_expert]`.
    GateExps,
    /// Every expert's up projection, `[n_embd, n_ff, n_expert]`.
    UpExps,
    /// Every expert's down projection, `[n_ff, n_embd, n_expert]`.
    DownExps,
}

impl LayerRole {
    /// Every role, in a fixed order (the order of [`LayerRole::index`]).
    pub const ALL: [LayerRole; 22] = [
        LayerRole::AttnNorm,
        LayerRole::Q,
        LayerRole::K,
        LayerRole::V,
        LayerRole::QBias,
        LayerRole::KBias,
        LayerRole::VBias,
        LayerRole::Qkv,
        LayerRole::QNorm,
        LayerRole::KNorm,
        LayerRole::Out,
        LayerRole::FfnNorm,
        LayerRole::PostAttnNorm,
        LayerRole::PostFfnNorm,
        LayerRole::Gate,
        LayerRole::Up,
        LayerRole::GateUp,
        LayerRole::Down,
        LayerRole::GateInp,
        LayerRole::GateExps,
        LayerRole::UpExps,
        LayerRole::DownExps,
    ];

    /// Number of roles.
    pub const COUNT: usize = Self::ALL.len();

    /// Position of this role in [`LayerRole::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The tensor name after `blk.N.`. Names are llama.cpp's
    /// (`LLM_TENSOR_NAMES` in `src/llama-arch.cpp`).
    pub fn suffix(self) -> &'static str {
        match self {
            LayerRole::AttnNorm => "attn_norm.weight",
            LayerRole::Q => "attn_q.weight",
            LayerRole::K => "attn_k.weight",
            LayerRole::V => "attn_v.weight",
            LayerRole::QBias => "attn_q.bias",
            LayerRole::KBias => "attn_k.bias",
            LayerRole::VBias => "attn_v.bias",
            LayerRole::Qkv => "attn_qkv.weight",
            LayerRole::QNorm => "attn_q_norm.weight",
            LayerRole::KNorm => "attn_k_norm.weight",
            LayerRole::Out => "attn_output.weight",
            LayerRole::FfnNorm => "ffn_norm.weight",
            LayerRole::PostAttnNorm => "post_attention_norm.weight",
            LayerRole::PostFfnNorm => "post_ffw_norm.weight",
            LayerRole::Gate => "ffn_gate.weight",
            // Phi-3 stores the fused gate-up matrix under the up name.
            LayerRole::Up | LayerRole::GateUp => "ffn_up.weight",
            LayerRole::Down => "ffn_down.weight",
            LayerRole::GateInp => "ffn_gate_inp.weight",
            LayerRole::GateExps => "ffn_gate_exps.weight",
            LayerRole::UpExps => "ffn_up_exps.weight",
            LayerRole::DownExps => "ffn_down_exps.weight",
        }
    }

    /// The GGUF tensor name of this role in layer `il`.
    pub fn name(self, il: u32) -> String {
        format!("blk.{il}.{}", self.suffix())
    }
}

/// One tensor of a layer: its role, its shape (ggml order) and the keys to
/// blame when the shape disagrees with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerTensor {
    /// What it is.
    pub role: LayerRole,
    /// Its dims, as widths the hyperparameters fix.
    pub dims: &'static [Width],
    /// The keys those widths come from.
    pub keys: &'static str,
}

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (llama): ggml mode 0.
    Normal,
    /// Halves (GPT-NeoX): ggml mode 2.
    Neox,
}

impl RopeStyle {
    /// ggml's rope mode number.
    pub fn mode(self) -> i32 {
        match self {
            RopeStyle::Normal => 0,
            RopeStyle::Neox => 2,
        }
    }
}

/// Where the attention scale comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnScale {
    /// `attention.scale` when set (and not 0), else `1/sqrt(key_length)`.
    KeyLength,
    /// Gemma's rule, whatever the keys say: `1/sqrt(key_length)`, except
    /// the 62-layer (27B) model, which scales by the width per head,
    /// `1/sqrt(embedding_length / head_count)` (llama.cpp: `gemma3.cpp`,
    /// after gemma_pytorch).
    GemmaBySize,
}

/// The activation of the gated feed-forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up`.
    Silu,
    /// `gelu(gate) * up` (tanh approximation).
    Gelu,
}

/// One model family.
#[derive(Debug, PartialEq)]
pub struct Arch {
    /// The family's name.
    pub name: &'static str,
    /// The `general.architecture` values it covers.
    pub architectures: &'static [&'static str],
    /// Every tensor of a layer; all are required.
    pub layer: &'static [LayerTensor],
    /// How RoPE rotates.
    pub rope: RopeStyle,
    /// Whether `rope_freqs.weight` (frequency factors) is read when present.
    pub rope_freqs: bool,
    /// Whether LongRoPE's `rope_factors_short.weight` and
    /// `rope_factors_long.weight` are read when present (Phi-3's long
    /// context models): the long ones when a sequence's context exceeds
    /// `rope.scaling.original_context_length`, as llama.cpp chooses.
    pub long_rope: bool,
    /// Whether the queries are scaled before attention, which then scales
    /// by one, rather than in it: the same product, rounded as the family's
    /// reference implementation rounds it.
    pub scale_q: bool,
    /// Where the attention scale comes from.
    pub attn_scale: AttnScale,
    /// Whether the input embedding is multiplied by `sqrt(n_embd)` before
    /// the first layer.
    pub embd_scale: bool,
    /// The feed-forward's activation.
    pub act: Activation,
    /// Whether `attention.sliding_window` makes some layers windowed (other
    /// families' files may carry the key; llama.cpp ignores it for them,
    /// Phi-3 and Mistral among them).
    pub sliding_window: bool,
    /// Whether the feed-forward routes over experts (and `expert_count`
    /// must be set).
    pub experts: bool,
    /// The family's layout when a file of the same architecture declares
    /// experts (llama files with experts are Mixtral's).
    pub with_experts: Option<&'static Arch>,
}

impl Arch {
    /// This family, or its layout with experts when `has_experts` and it
    /// has one.
    pub fn variant(&'static self, has_experts: bool) -> &'static Arch {
        match (has_experts, self.with_experts) {
            (true, Some(moe)) => moe,
            _ => self,
        }
    }

    /// Whether a layer has a tensor of role `r`.
    pub fn has(&self, r: LayerRole) -> bool {
        self.layer.iter().any(|t| t.role == r)
    }

    /// The roles of a layer's tensors, in table order.
    pub fn roles(&self) -> impl Iterator<Item = LayerRole> + '_ {
        self.layer.iter().map(|t| t.role)
    }

    /// The description of the per-layer tensor whose name after `blk.N.` is
    /// `suffix`.
    pub fn layer_tensor(&self, suffix: &str) -> Option<&LayerTensor> {
        self.layer.iter().find(|t| t.role.suffix() == suffix)
    }
}

/// Every family shardline runs.
pub const FAMILIES: &[&Arch] = &[
    &llama::LLAMA,
    &gemma3::GEMMA3,
    &mixtral::MIXTRAL,
    &qwen2::QWEN2,
    &qwen3::QWEN3,
    &qwen3moe::QWEN3MOE,
    &phi3::PHI3,
];

/// The family of `general.architecture` value `architecture`.
pub fn lookup(architecture: &str) -> Option<&'static Arch> {
    FAMILIES
        .iter()
        .copied()
        .find(|a| a.architectures.contains(&architecture))
}

/// Every supported `general.architecture` value, comma-separated.
pub fn supported() -> String {
    FAMILIES
        .iter()
        .flat_map(|a| a.architectures.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Shorthand for the tables.
pub(crate) const fn t(role: LayerRole, dims: &'static [Width], keys: &'static str) -> LayerTensor {
    LayerTensor { role, dims, keys }
}

/// Tensors most families share, for their tables.
pub(crate) mod common {
    use super::{t, LayerRole as R, LayerTensor, Width as W};

    pub const ATTN_NORM: LayerTensor = t(R::AttnNorm, &[W::Embd], "embedding_length");
    pub const FFN_NORM: LayerTensor = t(R::FfnNorm, &[W::Embd], "embedding_length");
    pub const Q: LayerTensor = t(
        R::Q,
        &[W::Embd, W::Q],
        "embedding_length and head_count x key_length",
    );
    pub const K: LayerTensor = t(
        R::K,
        &[W::Embd, W::Kv],
        "embedding_length and head_count_kv x key_length",
    );
    pub const V: LayerTensor = t(
        R::V,
        &[W::Embd, W::Kv],
        "embedding_length and head_count_kv x key_length",
    );
    pub const OUT: LayerTensor = t(
        R::Out,
        &[W::Q, W::Embd],
        "head_count x key_length and embedding_length",
    );
    pub const GATE: LayerTensor = t(
        R::Gate,
        &[W::Embd, W::Ff],
        "embedding_length and feed_forward_length",
    );
    pub const UP: LayerTensor = t(
        R::Up,
        &[W::Embd, W::Ff],
        "embedding_length and feed_forward_length",
    );
    pub const DOWN: LayerTensor = t(
        R::Down,
        &[W::Ff, W::Embd],
        "feed_forward_length and embedding_length",
    );
    pub const GATE_INP: LayerTensor = t(
        R::GateInp,
        &[W::Embd, W::Expert],
        "embedding_length and expert_count",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_index_their_table() {
        for (i, r) in LayerRole::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn lookup_by_architecture() {
        assert_eq!(lookup("llama").unwrap().name, "llama");
        assert_eq!(lookup("mistral").unwrap().name, "llama");
        assert_eq!(lookup("qwen2").unwrap().name, "qwen2");
        assert_eq!(lookup("llama").unwrap().variant(true).name, "mixtral");
        assert_eq!(lookup("qwen2").unwrap().variant(true).name, "qwen2");
        assert!(lookup("gpt2").is_none());
        assert!(supported().contains("qwen3"));
    }

    #[test]
    fn each_family_names_each_tensor_once() {
        for a in FAMILIES {
            let mut names: Vec<_> = a.roles().map(LayerRole::suffix).collect();
            names.sort();
            let n = names.len();
            names.dedup();
            assert_eq!(names.len(), n, "{}", a.name);
        }
    }
}
