//! A small synthetic llama model with the features the real test model
//! (SmolLM2: tied output, no RoPE factors) leaves out: a separate
//! `output.weight`, Llama 3 RoPE frequency factors (`rope_freqs.weight`),
//! linear RoPE scaling, head size 32 with 2 query heads per KV head, and
//! weights in F32, F16, Q8_0 and Q4_1. shardline's greedy tokens (and first
//! logits) must be llama.cpp's on the coordinator's CPU and on a real worker.
//!
//! Two control models (without the factors; without the scaling) show that
//! llama.cpp's output depends on each feature, so matching it means shardline
//! implements them.

mod common;

use std::path::Path;

use common::start_worker;
use common::synth::{self, id_prompts, max_abs_diff, norm, normal, remote_stage, TempModel};
use shardline::exec::local::LocalStage;
use shardline::exec::pipeline::{Pipeline, StageRunner};
use shardline::exec::Embedder;
use shardline::gguf::writer::GgufWriter;
use shardline::gguf::{GgmlType, Gguf};
use shardline::model::LlamaConfig;

const N_LAYER: u32 = 2;
const N_EMBD: usize = 128;
const N_FF: usize = 256;
const N_HEAD: usize = 4;
const N_HEAD_KV: usize = 2;
const HEAD_DIM: usize = N_EMBD / N_HEAD;
const N_VOCAB: usize = 256;
const N_CTX: u32 = 256;
const ROPE_FACTOR: f32 = 4.0;
const N_GEN: usize = 24;

/// What a model file has.
#[derive(Debug, Clone, Copy)]
struct Variant {
    rope_freqs: bool,
    scaling: Scaling,
}

/// The RoPE scaling keys a model file has.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scaling {
    /// None at all.
    Absent,
    /// `rope.scaling.type = "linear"`, `rope.scaling.factor = ROPE_FACTOR`.
    Linear,
    /// `rope.scaling.type = "none"` with a factor, which llama.cpp ignores.
    NoneWithFactor,
    /// Only the old key `rope.scale_linear = ROPE_FACTOR`, which llama.cpp
    /// reads when `rope.scaling.factor` is absent.
    LegacyScaleLinear,
    /// [`Scaling::Linear`] plus `rope.scaling.attn_factor = 2`, which
    /// llama.cpp multiplies into RoPE's attention factor.
    LinearWithAttnFactor,
}

const FULL: Variant = Variant {
    rope_freqs: true,
    scaling: Scaling::Linear,
};

/// Writes the model to a fresh file under the test target's temp dir.
fn write_model(name: &str, variant: Variant) -> TempModel {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama")
        .add_kv("general.name", "shardline synthetic llama 3")
        .add_kv("llama.block_count", N_LAYER)
        .add_kv("llama.context_length", 512u32)
        .add_kv("llama.embedding_length", N_EMBD as u32)
        .add_kv("llama.feed_forward_length", N_FF as u32)
        .add_kv("llama.attention.head_count", N_HEAD as u32)
        .add_kv("llama.attention.head_count_kv", N_HEAD_KV as u32)
        .add_kv("llama.rope.freq_base", 500_000f32)
        .add_kv("llama.rope.dimension_count", HEAD_DIM as u32)
        .add_kv("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
        .add_kv("llama.vocab_size", N_VOCAB as u32)
        // No tokenizer: llama.cpp makes N_VOCAB dummy tokens; prompts are ids.
        .add_kv("tokenizer.ggml.model", "none");
    match variant.scaling {
        Scaling::Absent => {}
        Scaling::Linear => {
            w.add_kv("llama.rope.scaling.type", "linear")
                .add_kv("llama.rope.scaling.factor", ROPE_FACTOR);
        }
        Scaling::NoneWithFactor => {
            w.add_kv("llama.rope.scaling.type", "none")
                .add_kv("llama.rope.scaling.factor", ROPE_FACTOR);
        }
        Scaling::LegacyScaleLinear => {
            w.add_kv("llama.rope.scale_linear", ROPE_FACTOR);
        }
        Scaling::LinearWithAttnFactor => {
            w.add_kv("llama.rope.scaling.type", "linear")
                .add_kv("llama.rope.scaling.factor", ROPE_FACTOR)
                .add_kv("llama.rope.scaling.attn_factor", 2.0f32);
        }
    }

    // The same weights in every variant: one generator per tensor name.
    let mut add = |name: &str, ty: GgmlType, dims: &[usize], values: Vec<f32>| {
        synth::add(&mut w, name, ty, dims, values)
    };

    let (e, ff, q, kv, v) = (
        N_EMBD,
        N_FF,
        HEAD_DIM * N_HEAD,
        HEAD_DIM * N_HEAD_KV,
        N_VOCAB,
    );
    add(
        "token_embd.weight",
        GgmlType::Q4_1,
        &[e, v],
        normal("token_embd.weight", e * v, 1.0),
    );
    add(
        "output_norm.weight",
        GgmlType::F32,
        &[e],
        norm("output_norm.weight", e),
    );
    add(
        "output.weight",
        GgmlType::Q8_0,
        &[e, v],
        normal("output.weight", e * v, 0.1),
    );
    if variant.rope_freqs {
        // Factors from 1 to 8 (Llama 3's range), shuffled so that the fast
        // dimensions, which move most over a short context, get large ones too.
        let f: Vec<f32> = (0..HEAD_DIM / 2)
            .map(|i| 1.0 + 7.0 * ((i * 7) % 16) as f32 / 15.0)
            .collect();
        add("rope_freqs.weight", GgmlType::F32, &[HEAD_DIM / 2], f);
    }
    use GgmlType::{F16, F32, Q8_0};
    // Per layer: (role, dims, sd, type in layer 0, type in layer 1).
    let roles: [(&str, [usize; 2], f32, GgmlType, GgmlType); 7] = [
        ("attn_q", [e, q], 0.12, F16, Q8_0),
        ("attn_k", [e, kv], 0.12, F16, Q8_0),
        ("attn_v", [e, kv], 0.1, Q8_0, F16),
        ("attn_output", [q, e], 0.1, Q8_0, F32),
        ("ffn_gate", [e, ff], 0.1, Q8_0, F16),
        ("ffn_up", [e, ff], 0.1, F16, Q8_0),
        ("ffn_down", [ff, e], 0.1, F32, F16),
    ];
    for il in 0..N_LAYER as usize {
        let attn_norm = format!("blk.{il}.attn_norm.weight");
        add(&attn_norm, F32, &[e], norm(&attn_norm, e));
        let ffn_norm = format!("blk.{il}.ffn_norm.weight");
        add(&ffn_norm, F32, &[e], norm(&ffn_norm, e));
        for (role, dims, sd, t0, t1) in roles {
            let name = format!("blk.{il}.{role}.weight");
            let ty = if il == 0 { t0 } else { t1 };
            add(&name, ty, &dims, normal(&name, dims[0] * dims[1], sd));
        }
    }

    TempModel::write(&mut w, &format!("llama3-{name}"))
}

/// Token-id prompts: short and long, so that positions reach well past the
/// point where the scaled, factored rotations differ from plain ones.
fn prompts() -> Vec<Vec<u32>> {
    id_prompts(N_VOCAB, &[(1, 20), (2, 20), (3, 96)])
}

/// llama.cpp's greedy tokens and first logits for every prompt.
fn reference(path: &Path) -> Vec<(Vec<u32>, Vec<f32>)> {
    synth::reference(path, &prompts(), N_CTX, N_GEN)
}

/// Runs every prompt through `p` and compares with llama.cpp.
async fn check_against(p: &mut Pipeline, want: &[(Vec<u32>, Vec<f32>)], what: &str) {
    synth::check_against(p, &prompts(), want, what).await
}

#[test]
fn config_sees_the_llama3_features() {
    let m = write_model("config", FULL);
    let g = Gguf::open(&m.0).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    assert!(cfg.rope_freqs, "rope_freqs.weight is there");
    assert!(!cfg.tied_output, "output.weight is there");
    assert_eq!(cfg.rope.freq_scale, 1.0 / ROPE_FACTOR);
    assert_eq!(cfg.rope.n_dims, HEAD_DIM as i32);
    assert_eq!(cfg.rope.mode, 0);
    assert_eq!(cfg.rope.freq_base, 500_000.0);
    assert_eq!(cfg.hp.head_dim as usize, HEAD_DIM);
    assert_eq!(
        (cfg.hp.n_head as usize, cfg.hp.n_head_kv as usize),
        (N_HEAD, N_HEAD_KV)
    );
    assert_eq!(cfg.hp.n_vocab as usize, N_VOCAB);
    assert_eq!(cfg.n_embd_kv() as usize, HEAD_DIM * N_HEAD_KV);
    assert_eq!(cfg.kq_scale, 1.0 / (HEAD_DIM as f32).sqrt());

    let plain = write_model(
        "config-plain",
        Variant {
            rope_freqs: false,
            scaling: Scaling::Absent,
        },
    );
    let g = Gguf::open(&plain.0).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    assert!(!cfg.rope_freqs);
    assert_eq!(cfg.rope.freq_scale, 1.0);
}

#[test]
fn the_features_change_llama_cpp_output() {
    // Without this, matching llama.cpp would prove nothing about them.
    let full = write_model("sens-full", FULL);
    let no_freqs = write_model(
        "sens-nofreqs",
        Variant {
            rope_freqs: false,
            scaling: Scaling::Linear,
        },
    );
    let no_scaling = write_model(
        "sens-noscale",
        Variant {
            rope_freqs: true,
            scaling: Scaling::Absent,
        },
    );
    let base = reference(&full.0);
    for (m, what) in [
        (&no_freqs, "without rope_freqs"),
        (&no_scaling, "without rope scaling"),
    ] {
        let other = reference(&m.0);
        let mut tokens_differ = false;
        let mut max_diff = 0f32;
        for ((bt, bl), (ot, ol)) in base.iter().zip(&other) {
            tokens_differ |= bt != ot;
            max_diff = max_diff.max(max_abs_diff(bl, ol));
        }
        eprintln!(
            "{what}: first-step logits max |diff| {max_diff}, tokens differ: {tokens_differ}"
        );
        assert!(max_diff > 0.05, "{what}: logits barely move ({max_diff})");
        assert!(tokens_differ, "{what}: same greedy tokens for every prompt");
    }
}

#[tokio::test]
async fn coordinator_cpu_matches_llama_cpp() {
    check_on_coordinator("coordinator", FULL).await;
}

#[tokio::test]
async fn worker_matches_llama_cpp() {
    let m = write_model("remote", FULL);
    let want = reference(&m.0);
    let g = Gguf::open(&m.0).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let workers = [start_worker(&[]), start_worker(&[])];

    // Layer 0 on the coordinator; layer 1, the factors and the separate
    // output matrix on a worker.
    let remote = remote_stage(&workers[0], &m.0, &g, &cfg, 1..N_LAYER, true, N_CTX).await;
    let stages = vec![
        StageRunner::Local(LocalStage::new(&g, &cfg, 0..1, false, N_CTX, 1).unwrap()),
        StageRunner::Remote(remote.into()),
    ];
    let embedder = Embedder::new(&g, &cfg).unwrap();
    let mut p = Pipeline::new(cfg.clone(), embedder, stages, N_CTX);
    check_against(&mut p, &want, "layer 0 local, layer 1 + head on a worker").await;

    // The whole model on the other worker.
    let remote = remote_stage(&workers[1], &m.0, &g, &cfg, 0..N_LAYER, true, N_CTX).await;
    let embedder = Embedder::new(&g, &cfg).unwrap();
    let mut p = Pipeline::new(
        cfg,
        embedder,
        vec![StageRunner::Remote(remote.into())],
        N_CTX,
    );
    check_against(&mut p, &want, "all layers + head on a worker").await;
}

/// All layers and the head on the coordinator's CPU, against llama.cpp.
async fn check_on_coordinator(name: &str, variant: Variant) {
    let m = write_model(name, variant);
    let want = reference(&m.0);
    let g = Gguf::open(&m.0).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let stage = LocalStage::new(&g, &cfg, 0..N_LAYER, true, N_CTX, 2).unwrap();
    let embedder = Embedder::new(&g, &cfg).unwrap();
    let mut p = Pipeline::new(cfg, embedder, vec![StageRunner::Local(stage)], N_CTX);
    check_against(&mut p, &want, name).await;
}

// Less common RoPE scaling keys llama.cpp honours: `LlamaConfig` must read
// them the same way, or the model gives other tokens than llama.cpp.
#[tokio::test]

async fn scaling_type_none_ignores_the_factor() {
    check_on_coordinator(
        "none-factor",
        Variant {
            rope_freqs: true,
            scaling: Scaling::NoneWithFactor,
        },
    )
    .await;
}

#[tokio::test]

async fn legacy_scale_linear_key() {
    check_on_coordinator(
        "legacy",
        Variant {
            rope_freqs: true,
            scaling: Scaling::LegacyScaleLinear,
        },
    )
    .await;
}

#[tokio::test]

async fn rope_scaling_attn_factor() {
    check_on_coordinator(
        "attn-factor",
        Variant {
            rope_freqs: true,
            scaling: Scaling::LinearWithAttnFactor,
        },
    )
    .await;
}
