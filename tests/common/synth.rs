//! Synthetic models for the end-to-end tests: deterministic weights encoded
//! in F32, F16, Q8_0 or Q4_1 and written with the project's GGUF writer,
//! token-id prompts, llama.cpp's output on them as the reference, and the
//! comparison of a pipeline's greedy tokens and first logits against it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use shardline::exec::pipeline::Pipeline;
use shardline::exec::remote::RemoteStage;
use shardline::gguf::writer::GgufWriter;
use shardline::gguf::{GgmlType, Gguf};
use shardline::model::LlamaConfig;
use shardline::rpc::{ClientOptions, RpcClient};

use super::llama_ref::LlamaRef;
use super::pipeline::greedy_with_logits;
use super::Worker;

/// xorshift64*: deterministic weights without a dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Roughly normal with standard deviation `sd` (sum of four uniforms).
    pub fn normal(&mut self, sd: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum();
        // Each uniform has variance 1/3: the sum has variance 4/3.
        s * sd / (4.0f32 / 3.0).sqrt()
    }
}

/// f32 to IEEE half bits, rounded to nearest even (the `half` crate,
/// as ggml's own conversion rounds).
pub fn f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
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

/// `v` in ggml's encoding of `ty`.
pub fn encode(ty: GgmlType, v: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F32 => bytes_f32(v),
        GgmlType::F16 => bytes_f16(v),
        GgmlType::Q8_0 => bytes_q8_0(v),
        GgmlType::Q4_1 => bytes_q4_1(v),
        other => panic!("no encoder for {other}"),
    }
}

/// FNV-1a of a name: one generator per tensor name, so a tensor's values do
/// not depend on which other tensors a file has.
fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `n` roughly normal values with standard deviation `sd`, fixed by `name`.
pub fn normal(name: &str, n: usize, sd: f32) -> Vec<f32> {
    let mut r = Rng::new(seed(name));
    (0..n).map(|_| r.normal(sd)).collect()
}

/// `n` norm weights around 1 (within 0.2), fixed by `name`.
pub fn norm(name: &str, n: usize) -> Vec<f32> {
    let mut r = Rng::new(seed(name));
    (0..n).map(|_| 1.0 + 0.2 * r.unit()).collect()
}

/// Adds tensor `name` of type `ty` and dims `dims` holding `values`.
pub fn add(w: &mut GgufWriter, name: &str, ty: GgmlType, dims: &[usize], values: Vec<f32>) {
    assert_eq!(values.len(), dims.iter().product::<usize>(), "{name}");
    let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    w.add_tensor(name, ty, &dims, encode(ty, &values)).unwrap();
}

/// A model file under the test target's temp dir, removed when dropped.
pub struct TempModel(pub PathBuf);

impl TempModel {
    /// Writes `w` to a fresh file named after `name` and this process.
    pub fn write(w: &mut GgufWriter, name: &str) -> TempModel {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("synthetic-{name}-{}.gguf", std::process::id()));
        w.write_file(&path).unwrap();
        TempModel(path)
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Token-id prompts of ids below `n_vocab`, one per `(seed, length)`.
pub fn id_prompts(n_vocab: usize, spec: &[(u64, usize)]) -> Vec<Vec<u32>> {
    spec.iter()
        .map(|&(s, n)| {
            let mut r = Rng::new(1000 + s);
            (0..n)
                .map(|_| (r.next_u64() % n_vocab as u64) as u32)
                .collect()
        })
        .collect()
}

/// The largest element-wise difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// llama.cpp's `n_gen` greedy tokens and first logits for every prompt, on
/// the CPU with a context of `n_ctx`.
pub fn reference(
    path: &Path,
    prompts: &[Vec<u32>],
    n_ctx: u32,
    n_gen: usize,
) -> Vec<(Vec<u32>, Vec<f32>)> {
    let mut r = LlamaRef::load(path, &[], n_ctx);
    prompts
        .iter()
        .map(|p| {
            let ids: Vec<i32> = p.iter().map(|&t| t as i32).collect();
            let logits = r.prompt_logits(&ids);
            let toks = r
                .greedy(&ids, n_gen)
                .into_iter()
                .map(|t| t as u32)
                .collect();
            (toks, logits)
        })
        .collect()
}

/// Runs every prompt through `p` and compares its greedy tokens (exactly)
/// and first logits (within 1e-3 of the largest) with llama.cpp's.
pub async fn check_against(
    p: &mut Pipeline,
    prompts: &[Vec<u32>],
    want: &[(Vec<u32>, Vec<f32>)],
    what: &str,
) {
    for (prompt, (want_toks, want_logits)) in prompts.iter().zip(want) {
        let (got_toks, got_logits) = greedy_with_logits(p, prompt, want_toks.len()).await;
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

/// Loads layers `layers` (and the head when `head`) of the model at `path`
/// onto `worker`, with a KV cache and batch of `n_ctx`.
pub async fn remote_stage(
    worker: &Worker,
    path: &Path,
    g: &Gguf,
    cfg: &LlamaConfig,
    layers: std::ops::Range<u32>,
    head: bool,
    n_ctx: u32,
) -> RemoteStage {
    remote_stage_at(
        &worker.endpoint.to_string(),
        path,
        g,
        cfg,
        layers,
        head,
        n_ctx,
    )
    .await
}

/// [`remote_stage`] on the server at `endpoint`.
pub async fn remote_stage_at(
    endpoint: &str,
    path: &Path,
    g: &Gguf,
    cfg: &LlamaConfig,
    layers: std::ops::Range<u32>,
    head: bool,
    n_ctx: u32,
) -> RemoteStage {
    let c = RpcClient::connect(endpoint, ClientOptions::default())
        .await
        .unwrap();
    RemoteStage::load(
        Arc::new(tokio::sync::Mutex::new(c)),
        0,
        g,
        cfg,
        layers,
        head,
        n_ctx,
        n_ctx,
        &shardline::load::TensorHashes::start(g, path, None, &[], 1),
        &|_, _| {},
    )
    .await
    .unwrap()
}
