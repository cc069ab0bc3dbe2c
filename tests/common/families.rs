//! Small synthetic models of every family beyond llama (random weights in
//! F32, F16 and Q8_0; each family's real key and tensor names and shapes;
//! three layers), for `tests/families.rs`, `tests/family_checks.rs` and
//! `benches/families.rs` (with plain llama as the reference).

use shardline::gguf::writer::GgufWriter;
use shardline::gguf::{GgmlType, Value};

use super::synth::{add, norm, normal, TempModel};

pub const N_LAYER: u32 = 3;
pub const N_EMBD: usize = 128;
pub const N_FF: usize = 256;
pub const N_HEAD: usize = 4;
pub const N_HEAD_KV: usize = 2;
pub const N_VOCAB: usize = 256;
pub const N_CTX: u32 = 256;
pub const N_GEN: usize = 16;
/// Gemma 3's window: shorter than the 40-token prompt.
pub const WINDOW: u32 = 16;

/// A family under test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Family {
    /// Plain llama: the reference the others' speed is compared with.
    Llama,
    /// Q/K/V biases.
    Qwen2,
    /// Per-head Q/K norms; heads wider than `n_embd / n_head`.
    Qwen3,
    /// Fused QKV and gate-up; queries scaled before attention.
    Phi3,
    /// A llama file with experts.
    Mixtral,
    /// Qwen3's attention with experts narrower than `feed_forward_length`.
    Qwen3Moe,
    /// Scaled embedding, pre- and post-norms, GELU, Q/K norms, windowed
    /// layers (0 and 2) with their own RoPE base between global ones.
    Gemma3,
}

/// Every family beyond plain llama.
pub const BEYOND_LLAMA: [Family; 6] = [
    Family::Qwen2,
    Family::Qwen3,
    Family::Phi3,
    Family::Mixtral,
    Family::Qwen3Moe,
    Family::Gemma3,
];

impl Family {
    pub fn arch(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Phi3 => "phi3",
            Family::Mixtral => "llama",
            Family::Qwen3Moe => "qwen3moe",
            Family::Gemma3 => "gemma3",
        }
    }

    pub fn head_dim(self) -> usize {
        match self {
            // Qwen3 sets `key_length` (e.g. 128 with a width of 1024 and 16
            // heads): a head wider than the width per head.
            Family::Qwen3 | Family::Qwen3Moe | Family::Gemma3 => 64,
            _ => N_EMBD / N_HEAD,
        }
    }

    /// The name of its description in `shardline::arch`.
    pub fn description(self) -> &'static str {
        match self {
            Family::Mixtral => "mixtral",
            f => f.arch(),
        }
    }

    pub fn qk_norm(self) -> bool {
        matches!(self, Family::Qwen3 | Family::Qwen3Moe | Family::Gemma3)
    }

    /// Experts per layer and experts per token.
    pub fn experts(self) -> Option<(usize, usize)> {
        match self {
            Family::Mixtral => Some((4, 2)),
            Family::Qwen3Moe => Some((6, 3)),
            _ => None,
        }
    }

    /// Width of each expert's feed-forward layer.
    pub fn n_ff_exp(self) -> usize {
        match self {
            Family::Qwen3Moe => 128,
            _ => N_FF,
        }
    }
}

/// Extra keys or tensors a refusal test adds.
#[derive(Default)]
pub struct Extra {
    /// Keys (after `{arch}.`) added or replaced.
    pub kv: Vec<(&'static str, Value)>,
    /// F32 tensors added: name and length.
    pub tensors: Vec<(&'static str, usize)>,
    /// A tensor left out.
    pub skip: Option<&'static str>,
    /// A SentencePiece vocabulary of `N_VOCAB` tokens instead of none, for
    /// the engine, which needs a tokenizer even for token prompts.
    pub vocab: bool,
    /// Widths (embedding, feed-forward, head size) times this; 0 or 1:
    /// the small model. The bench uses a larger one, where arithmetic
    /// rather than per-step overhead takes the time.
    pub scale: usize,
}

/// Writes the family's synthetic model.
pub fn write_model(f: Family, name: &str, extra: &Extra) -> TempModel {
    use GgmlType::{F16, F32, Q8_0};
    let a = f.arch();
    let key = |s: &str| format!("{a}.{s}");
    let scale = extra.scale.max(1);
    let hd = f.head_dim() * scale;
    let (n_embd, n_ff) = (N_EMBD * scale, N_FF * scale);
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", a)
        .add_kv("general.name", format!("shardline synthetic {a}"))
        .add_kv(key("block_count"), N_LAYER)
        .add_kv(key("context_length"), 512u32)
        .add_kv(key("embedding_length"), n_embd as u32)
        .add_kv(key("feed_forward_length"), n_ff as u32)
        .add_kv(key("attention.head_count"), N_HEAD as u32)
        .add_kv(key("attention.head_count_kv"), N_HEAD_KV as u32)
        .add_kv(key("rope.freq_base"), 1_000_000f32)
        .add_kv(key("attention.layer_norm_rms_epsilon"), 1e-6f32)
        .add_kv(key("vocab_size"), N_VOCAB as u32)
        // No tokenizer: llama.cpp makes N_VOCAB dummy tokens; prompts are ids.
        .add_kv("tokenizer.ggml.model", "none");
    if f.qk_norm() {
        w.add_kv(key("attention.key_length"), hd as u32)
            .add_kv(key("attention.value_length"), hd as u32);
    }
    if f == Family::Gemma3 {
        // A window the longer prompt outgrows; a period of 2 makes layers
        // 0 and 2 windowed and layer 1 global.
        w.add_kv(key("attention.sliding_window"), WINDOW)
            .add_kv(key("attention.sliding_window_pattern"), 2u32)
            .add_kv(key("rope.freq_base_swa"), 10_000f32);
    }
    if let Some((n, used)) = f.experts() {
        w.add_kv(key("expert_count"), n as u32)
            .add_kv(key("expert_used_count"), used as u32);
        if f == Family::Qwen3Moe {
            w.add_kv(
                key("expert_feed_forward_length"),
                (f.n_ff_exp() * scale) as u32,
            );
        }
    }
    if extra.vocab {
        let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
        tokens.extend((3..N_VOCAB).map(|i| format!("t{i}")));
        let types: Vec<i32> = (0..N_VOCAB as i32)
            .map(|i| if i < 3 { 3 } else { 1 })
            .collect();
        w.add_kv("tokenizer.ggml.model", "llama")
            .add_kv(
                "tokenizer.ggml.tokens",
                tokens.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .add_kv("tokenizer.ggml.scores", vec![0f32; N_VOCAB])
            .add_kv("tokenizer.ggml.token_type", types);
    }
    for (k, v) in &extra.kv {
        w.add_kv(key(k), v.clone());
    }

    let (e, ff, v) = (n_embd, n_ff, N_VOCAB);
    let (q, kv) = (hd * N_HEAD, hd * N_HEAD_KV);
    let mut put = |name: &str, ty: GgmlType, dims: &[usize], values: Vec<f32>| {
        if extra.skip != Some(name) {
            add(&mut w, name, ty, dims, values);
        }
    };
    put(
        "token_embd.weight",
        Q8_0,
        &[e, v],
        normal("token_embd.weight", e * v, 1.0),
    );
    put(
        "output_norm.weight",
        F32,
        &[e],
        norm("output_norm.weight", e),
    );
    // A separate output matrix: tied to an embedding this large, the
    // logits would mostly repeat the input token (the SmolLM2 tests cover
    // tied outputs).
    put(
        "output.weight",
        Q8_0,
        &[e, v],
        normal("output.weight", e * v, 0.1),
    );
    // Matrices: (suffix, dims, sd). Types rotate over F16, Q8_0 and F32 by
    // layer and by matrix, so each layer mixes them.
    let mut mats: Vec<(&str, Vec<usize>, f32)> = match f {
        Family::Phi3 => vec![("attn_qkv", vec![e, q + 2 * kv], 0.12)],
        _ => vec![
            ("attn_q", vec![e, q], 0.12),
            ("attn_k", vec![e, kv], 0.12),
            ("attn_v", vec![e, kv], 0.1),
        ],
    };
    mats.push(("attn_output", vec![q, e], 0.1));
    match (f, f.experts()) {
        (Family::Phi3, _) => mats.push(("ffn_up", vec![e, 2 * ff], 0.1)),
        (_, Some((n, _))) => {
            let fe = f.n_ff_exp() * scale;
            mats.push(("ffn_gate_inp", vec![e, n], 0.3));
            mats.push(("ffn_gate_exps", vec![e, fe, n], 0.1));
            mats.push(("ffn_up_exps", vec![e, fe, n], 0.1));
            mats.push(("ffn_down_exps", vec![fe, e, n], 0.1));
        }
        _ => {
            mats.push(("ffn_gate", vec![e, ff], 0.1));
            mats.push(("ffn_up", vec![e, ff], 0.1));
        }
    }
    if f.experts().is_none() {
        mats.push(("ffn_down", vec![ff, e], 0.1));
    }
    let types = [F16, Q8_0, F32];
    for il in 0..N_LAYER as usize {
        let norms: &[&str] = match f {
            Family::Gemma3 => &[
                "attn_norm",
                "ffn_norm",
                "post_attention_norm",
                "post_ffw_norm",
            ],
            _ => &["attn_norm", "ffn_norm"],
        };
        for n in norms {
            let name = format!("blk.{il}.{n}.weight");
            put(&name, F32, &[e], norm(&name, e));
        }
        for (i, (m, dims, sd)) in mats.iter().enumerate() {
            let name = format!("blk.{il}.{m}.weight");
            let ty = types[(il + i) % types.len()];
            put(&name, ty, dims, normal(&name, dims.iter().product(), *sd));
        }
        match f {
            Family::Qwen2 => {
                for (m, n) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
                    let name = format!("blk.{il}.{m}.bias");
                    put(&name, F32, &[n], normal(&name, n, 0.5));
                }
            }
            _ if f.qk_norm() => {
                for m in ["attn_q_norm", "attn_k_norm"] {
                    let name = format!("blk.{il}.{m}.weight");
                    put(&name, F32, &[hd], norm(&name, hd));
                }
            }
            _ => {}
        }
    }
    for (name, n) in &extra.tensors {
        // RoPE frequency factors divide frequencies: positive, from 1 up,
        // steeper for LongRoPE's long ones.
        let values = match *name {
            "rope_factors_long.weight" => (0..*n).map(|i| 1.0 + 0.5 * i as f32).collect(),
            "rope_factors_short.weight" => (0..*n).map(|i| 1.0 + 0.05 * i as f32).collect(),
            _ => normal(name, *n, 0.1),
        };
        put(name, F32, &[*n], values);
    }
    // Named after the family, not the architecture: plain llama and
    // Mixtral are both `llama` files, and a bench that writes both under
    // one name would otherwise run Mixtral twice.
    TempModel::write(&mut w, &format!("{}-{name}", f.description()))
}

/// A Jinja chat template in Gemma's turn format (written for these tests
/// in the shape of the ones Gemma models ship, without the leading
/// `bos_token`, which llama.cpp's formatting leaves to the tokenizer):
/// `model` for the assistant, the system text merged into the first user
/// turn, every text trimmed.
pub const GEMMA_TEMPLATE: &str = "{%- set ns = namespace(system='') -%}
{%- for m in messages -%}
{%- if m['role'] == 'system' -%}
{%- set ns.system = ns.system + (m['content'] | trim) -%}
{%- else -%}
{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}
{{ '<start_of_turn>' + role + '\n' }}
{%- if ns.system and role != 'model' -%}
{{ ns.system + '\n\n' }}
{%- set ns.system = '' -%}
{%- endif -%}
{{ (m['content'] | trim) + '<end_of_turn>\n' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// A Jinja chat template in Phi-3's format (written for these tests):
/// `<|role|>`, the text, `<|end|>`.
pub const PHI3_TEMPLATE: &str = "{%- for m in messages -%}
{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}";
