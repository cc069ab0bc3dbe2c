//! Metadata key names.

/// The model architecture, e.g. `llama`; the prefix of the model keys.
pub const ARCHITECTURE: &str = "general.architecture";
/// A human-readable model name.
pub const NAME: &str = "general.name";
/// The predominant tensor type, as a [`FileType`](super::FileType) id.
pub const FILE_TYPE: &str = "general.file_type";
/// Version of the quantization formats used.
pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
/// Alignment of tensor data (see [`ALIGNMENT_KEY`](super::super::ALIGNMENT_KEY)).
pub const ALIGNMENT: &str = super::super::ALIGNMENT_KEY;

/// Tokenizer family, e.g. `llama` (SentencePiece) or `gpt2` (byte-level BPE).
pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
/// Pre-tokenizer name, e.g. `llama-bpe`.
pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
/// The vocabulary: token texts indexed by id.
pub const TOKENS: &str = "tokenizer.ggml.tokens";
/// Per-token type (normal, control, user-defined, byte, …), indexed by id.
pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
/// Per-token scores (SentencePiece log-probabilities), indexed by id.
pub const SCORES: &str = "tokenizer.ggml.scores";
/// BPE merges, `"left right"` strings in priority order.
pub const MERGES: &str = "tokenizer.ggml.merges";
/// Id of the beginning-of-sequence token.
pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
/// Id of the end-of-sequence token.
pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
/// The Jinja chat template.
pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

// Suffixes of `{arch}.{suffix}` keys.
/// `{arch}.vocab_size`: vocabulary size; read only when `tokenizer.ggml.tokens` is absent.
pub const VOCAB_SIZE: &str = "vocab_size";
/// `{arch}.context_length`: context length the model was trained with.
pub const CONTEXT_LENGTH: &str = "context_length";
/// `{arch}.embedding_length`: width of the hidden state (`n_embd`).
pub const EMBEDDING_LENGTH: &str = "embedding_length";
/// `{arch}.block_count`: number of transformer layers.
pub const BLOCK_COUNT: &str = "block_count";
/// `{arch}.feed_forward_length`: width of the feed-forward hidden layer.
pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
/// `{arch}.attention.head_count`: number of attention (query) heads.
pub const HEAD_COUNT: &str = "attention.head_count";
/// `{arch}.attention.head_count_kv`: number of key/value heads (fewer with GQA).
pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
/// `{arch}.attention.key_length`: size of one key head.
pub const KEY_LENGTH: &str = "attention.key_length";
/// `{arch}.attention.value_length`: size of one value head.
pub const VALUE_LENGTH: &str = "attention.value_length";
/// `{arch}.expert_count`: routed experts per layer (absent or 0: none).
pub const EXPERT_COUNT: &str = "expert_count";
/// `{arch}.expert_used_count`: experts each token goes through.
pub const EXPERT_USED_COUNT: &str = "expert_used_count";
/// `{arch}.expert_feed_forward_length`: width of each expert's feed-forward layer.
pub const EXPERT_FEED_FORWARD_LENGTH: &str = "expert_feed_forward_length";
/// `{arch}.attention.layer_norm_rms_epsilon`: epsilon of the RMS norms.
pub const RMS_EPS: &str = "attention.layer_norm_rms_epsilon";
/// `{arch}.rope.dimension_count`: number of dimensions of each head that RoPE rotates.
pub const ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";
/// `{arch}.rope.freq_base`: RoPE base frequency.
pub const ROPE_FREQ_BASE: &str = "rope.freq_base";
/// `{arch}.rope.scaling.type`: RoPE scaling method, e.g. `linear` or `yarn`.
pub const ROPE_SCALING_TYPE: &str = "rope.scaling.type";
/// `{arch}.rope.scaling.factor`: RoPE context scaling factor.
pub const ROPE_SCALING_FACTOR: &str = "rope.scaling.factor";

/// `{arch}.{suffix}`.
pub fn arch_key(arch: &str, suffix: &str) -> String {
    format!("{arch}.{suffix}")
}
