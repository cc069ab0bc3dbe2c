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

use std::path::{Path, PathBuf};

use common::llama_ref::LlamaRef;
use common::pipeline::greedy_with_logits as greedy;
use common::start_worker;
use shardline::exec::local::LocalStage;
use shardline::exec::pipeline::{Pipeline, StageRunner};
use shardline::exec::remote::RemoteStage;
use shardline::exec::Embedder;
use shardline::gguf::writer::GgufWriter;
use shardline::gguf::{GgmlType, Gguf};
use shardline::model::LlamaConfig;
use shardline::rpc::{ClientOptions, RpcClient};

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

/// xorshift64*: deterministic weights without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Roughly normal with standard deviation `sd` (sum of four uniforms).
    fn normal(&mut self, sd: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum();
        // Each uniform has variance 1/3: the sum has variance 4/3.
        s * sd / (4.0f32 / 3.0).sqrt()
    }
}

/// f32 to IEEE half, round to nearest even (normal and subnormal halves;
/// our values never overflow).
fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0 && man == 0 {
        return sign;
    }
    let e = exp - 127 + 15;
    assert!(e < 31, "{x} overflows f16");
    let round = |m: u32, shift: u32| -> u32 {
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut q = m >> shift;
        if rest > half || (rest == half && q & 1 == 1) {
            q += 1;
        }
        q
    };
    if e <= 0 {
        // Subnormal half: the implicit 1 joins the mantissa.
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        return sign | round(m, (14 - e) as u32) as u16;
    }
    // Carry from the mantissa into the exponent is what we want.
    let v = ((e as u32) << 10) + round(man, 13);
    sign | v as u16
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f16(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| f16_bits(x).to_le_bytes()).collect()
}

/// ggml's `quantize_row_q8_0_ref`: blocks of 32, f16 scale amax/127, i8
/// quants rounded half away from zero.
fn bytes_q8_0(v: &[f32]) -> Vec<u8> {
    assert_eq!(v.len() % 32, 0);
    let mut out = Vec::with_capacity(v.len() / 32 * 34);
    for b in v.chunks(32) {
        let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16_bits(d).to_le_bytes());
        out.extend(b.iter().map(|&x| ((x * id).round() as i8) as u8));
    }
    out
}

/// ggml's `quantize_row_q4_1_ref`: blocks of 32, f16 scale (max-min)/15 and
/// f16 min, element j in the low nibble of byte j and element j+16 in its
/// high nibble.
fn bytes_q4_1(v: &[f32]) -> Vec<u8> {
    assert_eq!(v.len() % 32, 0);
    let mut out = Vec::with_capacity(v.len() / 32 * 20);
    for b in v.chunks(32) {
        let min = b.iter().fold(f32::MAX, |m, &x| m.min(x));
        let max = b.iter().fold(-f32::MAX, |m, &x| m.max(x));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16_bits(d).to_le_bytes());
        out.extend_from_slice(&f16_bits(min).to_le_bytes());
        let q = |x: f32| (((x - min) * id + 0.5) as i8 as i32).min(15) as u8;
        for j in 0..16 {
            out.push(q(b[j]) | (q(b[j + 16]) << 4));
        }
    }
    out
}

fn encode(ty: GgmlType, v: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F32 => bytes_f32(v),
        GgmlType::F16 => bytes_f16(v),
        GgmlType::Q8_0 => bytes_q8_0(v),
        GgmlType::Q4_1 => bytes_q4_1(v),
        other => panic!("no encoder for {other}"),
    }
}

/// Writes the model to a fresh file under the test target's temp dir.
fn write_model(name: &str, variant: Variant) -> PathBuf {
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
    let seed = |name: &str| {
        name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    let normal = |name: &str, n: usize, sd: f32| -> Vec<f32> {
        let mut r = Rng::new(seed(name));
        (0..n).map(|_| r.normal(sd)).collect()
    };
    let norm = |name: &str, n: usize| -> Vec<f32> {
        let mut r = Rng::new(seed(name));
        (0..n).map(|_| 1.0 + 0.2 * r.unit()).collect()
    };
    let mut add = |name: &str, ty: GgmlType, dims: &[usize], values: Vec<f32>| {
        assert_eq!(values.len(), dims.iter().product::<usize>());
        let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        w.add_tensor(name, ty, &dims, encode(ty, &values)).unwrap();
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

    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "synthetic-llama3-{name}-{}.gguf",
        std::process::id()
    ));
    w.write_file(&path).unwrap();
    path
}

/// Removes the file when dropped.
struct TempModel(PathBuf);

impl TempModel {
    fn new(name: &str, variant: Variant) -> TempModel {
        TempModel(write_model(name, variant))
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Token-id prompts: short and long, so that positions reach well past the
/// point where the scaled, factored rotations differ from plain ones.
fn prompts() -> Vec<Vec<u32>> {
    [(1u64, 20usize), (2, 20), (3, 96)]
        .iter()
        .map(|&(s, n)| {
            let mut r = Rng::new(1000 + s);
            (0..n)
                .map(|_| (r.next_u64() % N_VOCAB as u64) as u32)
                .collect()
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// llama.cpp's greedy tokens and first logits for every prompt.
fn reference(path: &Path) -> Vec<(Vec<u32>, Vec<f32>)> {
    let mut r = LlamaRef::load(path, &[], N_CTX);
    prompts()
        .iter()
        .map(|p| {
            let ids: Vec<i32> = p.iter().map(|&t| t as i32).collect();
            let logits = r.prompt_logits(&ids);
            let toks = r
                .greedy(&ids, N_GEN)
                .into_iter()
                .map(|t| t as u32)
                .collect();
            (toks, logits)
        })
        .collect()
}

/// Runs every prompt through `p` and compares with llama.cpp.
async fn check_against(p: &mut Pipeline, want: &[(Vec<u32>, Vec<f32>)], what: &str) {
    for (prompt, (want_toks, want_logits)) in prompts().iter().zip(want) {
        let (got_toks, got_logits) = greedy(p, prompt, N_GEN).await;
        let diff = max_abs_diff(&got_logits, want_logits);
        let scale = want_logits.iter().fold(0f32, |m, x| m.max(x.abs()));
        eprintln!(
            "{what}: prompt of {} tokens: first-step logits max |diff| {diff:e} (max |logit| {scale}); tokens {got_toks:?}",
            prompt.len()
        );
        assert_eq!(
            got_toks, *want_toks,
            "{what}: prompt {prompt:?}: greedy tokens differ (first-step logits max |diff| {diff:e})"
        );
        assert!(
            diff <= 1e-3 * scale.max(1.0),
            "{what}: first-step logits differ by {diff:e}"
        );
    }
}

#[test]
fn config_sees_the_llama3_features() {
    let m = TempModel::new("config", FULL);
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

    let plain = TempModel::new(
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
    let full = TempModel::new("sens-full", FULL);
    let no_freqs = TempModel::new(
        "sens-nofreqs",
        Variant {
            rope_freqs: false,
            scaling: Scaling::Linear,
        },
    );
    let no_scaling = TempModel::new(
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
    let m = TempModel::new("remote", FULL);
    let want = reference(&m.0);
    let g = Gguf::open(&m.0).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let workers = [start_worker(&[]), start_worker(&[])];

    // Layer 0 on the coordinator; layer 1, the factors and the separate
    // output matrix on a worker.
    let c = RpcClient::connect(&workers[0].endpoint.to_string(), ClientOptions::default())
        .await
        .unwrap();
    let remote = RemoteStage::load(
        std::sync::Arc::new(tokio::sync::Mutex::new(c)),
        0,
        &g,
        &cfg,
        1..N_LAYER,
        true,
        N_CTX,
        N_CTX,
        &shardline::load::TensorHashes::start(&g, &m.0, None, &[], 1),
        &|_, _| {},
    )
    .await
    .unwrap();
    let stages = vec![
        StageRunner::Local(LocalStage::new(&g, &cfg, 0..1, false, N_CTX, 1).unwrap()),
        StageRunner::Remote(remote.into()),
    ];
    let embedder = Embedder::new(&g, &cfg).unwrap();
    let mut p = Pipeline::new(cfg.clone(), embedder, stages, N_CTX);
    check_against(&mut p, &want, "layer 0 local, layer 1 + head on a worker").await;

    // The whole model on the other worker.
    let c = RpcClient::connect(&workers[1].endpoint.to_string(), ClientOptions::default())
        .await
        .unwrap();
    let remote = RemoteStage::load(
        std::sync::Arc::new(tokio::sync::Mutex::new(c)),
        0,
        &g,
        &cfg,
        0..N_LAYER,
        true,
        N_CTX,
        N_CTX,
        &shardline::load::TensorHashes::start(&g, &m.0, None, &[], 1),
        &|_, _| {},
    )
    .await
    .unwrap();
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
    let m = TempModel::new(name, variant);
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
