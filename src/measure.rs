//! Measuring each server's speed and link, for the throughput planner
//! ([`crate::plan::Strategy::Throughput`]), on the coordinator's own
//! connection: what the planner gets is what a token will see.
//!
//! Per server: the round trip (a cheap command, several times), the
//! bandwidth (a few MiB written into a scratch buffer), then per device
//! three short stages of the real model built and run as the engine runs
//! them: layer 0, layers 0-3, and the last layer with the output head.
//! Timed for 1 token, [`BATCH_POINT`] tokens and a prompt chunk (the mean
//! of back-to-back runs), the difference of the first two (per layer) is
//! what a layer costs, the rest of the first is what a stage costs apart
//! from its layers and link, and the third less the first is the head. Everything is freed when the
//! connection closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline_protocol::RpcTensor;

use crate::exec::local::stage_weight_names;
use crate::exec::remote::RemoteStage;
use crate::exec::{ExecError, Step};
use crate::gguf::Gguf;
use crate::load::{TensorHashes, UploadError};
use crate::model::LlamaConfig;
use crate::plan::{Curve, DeviceSpeed};
use crate::rpc::{ClientOptions, RpcClient, RpcError};

/// The middle batch size timed (the "8 streams" of the benches).
pub const BATCH_POINT: u32 = 8;

/// Shortest stretch of back-to-back runs timed per stage and batch size:
/// several scheduling periods of a CPU quota.
const MIN_TIMED: Duration = Duration::from_millis(40);

/// Most runs timed per stage and batch size.
const MAX_RUNS: usize = 64;

/// Layers of the multi-layer stage whose difference from the one-layer
/// stage is what a layer costs.
const MULTI_LAYERS: u32 = 4;

/// How long and how much to measure.
#[derive(Debug, Clone)]
pub struct MeasureOptions {
    /// Fewest timed runs of each stage and batch size (their mean counts).
    pub rounds: usize,
    /// Tokens of the prompt chunk timed (at least [`BATCH_POINT`] + 1).
    pub prompt_tokens: u32,
    /// Round trips timed for the link's latency.
    pub pings: usize,
    /// Largest scratch write for the bandwidth, bytes.
    pub max_probe_bytes: u64,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            rounds: 5,
            prompt_tokens: 64,
            pings: 8,
            max_probe_bytes: 8 << 20,
        }
    }
}

/// Why a server could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The server failed or refused a command.
    #[error("measuring {endpoint}: {source}")]
    Rpc {
        /// The server.
        endpoint: String,
        /// What went wrong.
        source: RpcError,
    },
    /// Placing the measured layers failed.
    #[error("measuring: {0}")]
    Upload(#[from] UploadError),
    /// Running a measured stage failed.
    #[error("measuring: {0}")]
    Exec(#[from] ExecError),
}

/// Measures `devices` of the server at `endpoint` with the model `g`.
/// `hashes` lets a server's cache answer for the layers uploaded.
pub async fn measure_server(
    endpoint: &str,
    devices: &[u32],
    g: &Gguf,
    cfg: &LlamaConfig,
    hashes: &TensorHashes,
    opts: &MeasureOptions,
) -> Result<Vec<DeviceSpeed>, MeasureError> {
    let rpc = |source| MeasureError::Rpc {
        endpoint: endpoint.to_string(),
        source,
    };
    let client = RpcClient::connect(endpoint, ClientOptions::default())
        .await
        .map_err(rpc)?;
    let shared = Arc::new(tokio::sync::Mutex::new(client));
    let rtt_s = {
        let mut c = shared.lock().await;
        let rtt = ping(&mut c, opts.pings).await.map_err(rpc)?;
        rtt.as_secs_f64()
    };
    let mut out = Vec::with_capacity(devices.len());
    for &device in devices {
        let bandwidth = {
            let mut c = shared.lock().await;
            bandwidth(&mut c, device, rtt_s, opts.max_probe_bytes)
                .await
                .map_err(rpc)?
        };
        let stages = Stages::load(&shared, device, g, cfg, hashes, opts).await?;
        out.push(stages.time(cfg, opts, rtt_s, bandwidth).await?);
    }
    // Closing the connection frees everything the measurement allocated
    // (the stages, holding the other handles, are gone by now; a handle
    // still held elsewhere closes the connection when it drops).
    if let Ok(m) = Arc::try_unwrap(shared) {
        m.into_inner().close().await.map_err(rpc)?;
    }
    Ok(out)
}

/// Median of `n` cheap round trips.
async fn ping(c: &mut RpcClient, n: usize) -> Result<Duration, RpcError> {
    let mut t = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let started = Instant::now();
        c.sync().await?;
        t.push(started.elapsed());
    }
    t.sort();
    Ok(t[t.len() / 2])
}

/// Bytes per second into `device`: a scratch write, growing until it takes
/// long enough to time (or reaches `max_bytes`), the round trip taken off.
async fn bandwidth(
    c: &mut RpcClient,
    device: u32,
    rtt_s: f64,
    max_bytes: u64,
) -> Result<f64, RpcError> {
    let max_bytes = max_bytes.max(1 << 16);
    let buf = c.alloc_buffer(device, max_bytes).await?;
    let data = vec![0x5a_u8; max_bytes as usize];
    let mut size = (256u64 << 10).min(max_bytes);
    loop {
        let n = size / 4;
        let mut t = RpcTensor {
            id: 1,
            ty: 0, // F32
            buffer: buf.remote_ptr,
            data: buf.base,
            ..RpcTensor::default()
        };
        t.ne = [n as u32, 1, 1, 1];
        t.nb = [4, (4 * n) as u32, (4 * n) as u32, (4 * n) as u32];
        let bytes = 4 * n;
        let started = Instant::now();
        c.set_tensor(&t, bytes, 0, &data[..bytes as usize]).await?;
        c.sync().await?;
        let took = started.elapsed().as_secs_f64();
        let transfer = (took - rtt_s).max(took / 10.0);
        if took > 0.05 || size >= max_bytes {
            c.free_buffer(buf.remote_ptr).await?;
            return Ok(bytes as f64 / transfer.max(1e-9));
        }
        size = (size * 4).min(max_bytes);
    }
}

/// The stages a device is timed with.
struct Stages {
    one: RemoteStage,
    two: Option<(RemoteStage, u32)>,
    head: RemoteStage,
}

impl Stages {
    async fn load(
        shared: &crate::exec::remote::SharedClient,
        device: u32,
        g: &Gguf,
        cfg: &LlamaConfig,
        hashes: &TensorHashes,
        opts: &MeasureOptions,
    ) -> Result<Stages, MeasureError> {
        let n_layer = cfg.hp.n_layer;
        let p = opts.prompt_tokens.max(BATCH_POINT + 1);
        let quiet = |_: u64, _: crate::rpc::Upload| {};
        let stage = |layers: std::ops::Range<u32>, head: bool| {
            RemoteStage::load(
                shared.clone(),
                device,
                g,
                cfg,
                layers,
                head,
                p,
                p,
                hashes,
                &quiet,
            )
        };
        let one = stage(0..1, false).await?;
        // Several layers, so that their cost stands out of a far link's
        // jitter; never the last layer (that one has the head).
        let k = MULTI_LAYERS.min(n_layer.saturating_sub(1));
        let two = if k >= 2 {
            Some((stage(0..k, false).await?, k))
        } else {
            None
        };
        let head = stage(n_layer - 1..n_layer, true).await?;
        Ok(Stages { one, two, head })
    }

    async fn time(
        mut self,
        cfg: &LlamaConfig,
        opts: &MeasureOptions,
        rtt_s: f64,
        bandwidth: f64,
    ) -> Result<DeviceSpeed, MeasureError> {
        let p = opts.prompt_tokens.max(BATCH_POINT + 1);
        let points = [1, BATCH_POINT, p];
        let embd = 4.0 * f64::from(cfg.hp.n_embd);
        let vocab = 4.0 * f64::from(cfg.hp.n_vocab);
        let mut layer = Vec::new();
        let mut head = Vec::new();
        let mut overhead_s = 0.0;
        for &n in &points {
            // Prompt chunks take long and vary little: fewer runs.
            let rounds = if n > BATCH_POINT {
                opts.rounds.div_ceil(2)
            } else {
                opts.rounds
            };
            let one = sustained(&mut self.one, cfg, n, n, p, rounds).await?;
            let link = rtt_s + 2.0 * embd * f64::from(n) / bandwidth;
            // At most: the whole of a one-layer stage past its link.
            let bound = (one - link).max(1e-6);
            let per_layer = match &mut self.two {
                Some((two, k)) => {
                    let tk = sustained(two, cfg, n, n, p, rounds).await?;
                    let d = (tk - one) / f64::from(*k - 1);
                    // Jitter larger than the layers' cost: fall back to
                    // the bound rather than call a layer free.
                    if d > 0.05 * bound {
                        d.min(bound)
                    } else {
                        bound
                    }
                }
                None => bound,
            };
            if n == 1 {
                overhead_s = (one - per_layer - link).max(0.0);
            }
            layer.push((n, per_layer));
            if n <= BATCH_POINT {
                // Outputs = tokens: what decoding `n` streams asks for.
                let th = sustained(&mut self.head, cfg, n, n, p, opts.rounds).await?;
                let logits = (vocab - embd) * f64::from(n) / bandwidth;
                head.push((n, (th - one - logits).max(1e-6)));
            }
        }
        Ok(DeviceSpeed {
            layer: Curve(layer),
            head: Curve(head),
            overhead_s,
            rtt_s,
            bandwidth,
        })
    }
}

/// Seconds per run of `stage` on `n` tokens: the mean of back-to-back runs,
/// at least `rounds` of them and at least [`MIN_TIMED`] in all (at most
/// [`MAX_RUNS`]), after one untimed run (which sends the graph and sizes
/// its compute buffer). The mean of a sustained stretch, not the fastest
/// run: a device that computes in bursts (a CPU quota, a shared or
/// throttled machine) answers one short run fast and a long stage slowly.
async fn sustained(
    stage: &mut RemoteStage,
    cfg: &LlamaConfig,
    n: u32,
    outputs: u32,
    kv: u32,
    rounds: usize,
) -> Result<f64, MeasureError> {
    let n_us = n as usize;
    let n_kv = kv as usize;
    let pos: Vec<i32> = (0..n as i32).collect();
    let kv_idx: Vec<i64> = (0..n as i64).collect();
    let out_ids: Vec<i32> = (0..outputs.min(n) as i32).collect();
    let step = Step {
        n_tokens: n_us,
        pos: crate::exec::le_bytes_i32(&pos),
        kv_idx: crate::exec::le_bytes_i64(&kv_idx),
        n_kv,
        // Every cell visible: the values do not matter, only the work.
        mask: vec![0; 2 * n_us * n_kv],
        n_outputs: out_ids.len(),
        out_ids: crate::exec::le_bytes_i32(&out_ids),
    };
    let hidden = crate::exec::le_bytes_f32(&vec![0.01f32; cfg.hp.n_embd as usize * n_us]);
    stage.run(cfg, &step, &hidden).await?;
    let started = Instant::now();
    let mut runs = 0usize;
    while runs < MAX_RUNS && (runs < rounds.max(1) || started.elapsed() < MIN_TIMED) {
        stage.run(cfg, &step, &hidden).await?;
        runs += 1;
    }
    Ok(started.elapsed().as_secs_f64() / runs as f64)
}

/// Names of the weights the measurement uploads (for hashing them first).
pub fn measured_weight_names(cfg: &LlamaConfig) -> Vec<String> {
    let n = cfg.hp.n_layer;
    let mut names = stage_weight_names(cfg, &(0..MULTI_LAYERS.min(n)), false);
    names.extend(stage_weight_names(cfg, &(n - 1..n), true));
    names
}

/// Measures every device of every server in `reports`, one server after
/// the other (so they do not slow each other down), in the order
/// `cluster::devices_from_reports` lists the devices. A server that cannot
/// be measured gets `None`s, with a warning: the planner then falls back
/// to placing by memory.
pub async fn measure_cluster(
    reports: &[crate::cluster::ServerReport],
    g: &Gguf,
    cfg: &LlamaConfig,
    hashes: &TensorHashes,
    opts: &MeasureOptions,
) -> Vec<Option<DeviceSpeed>> {
    let mut out: Vec<Option<DeviceSpeed>> = Vec::new();
    // A spare graph slot (a server's second CPU device) is the same device
    // as the first: it takes the first's speed rather than being measured.
    let spares = crate::plan::slots::spares(&crate::cluster::devices_from_reports(reports));
    let mut flat = 0usize;
    for r in reports {
        let first = flat;
        flat += r.devices.len();
        let spare = |d: usize| spares.get(first + d).copied().flatten();
        // A device whose kind cannot run the model is not sent its graphs
        // (the server would abort); the planner leaves it out.
        let runs = |d: &crate::cluster::DeviceReport| {
            d.kind()
                .attention_refusal(cfg.hp.head_dim, cfg.hp.head_dim)
                .is_none()
        };
        let devices: Vec<u32> = r
            .devices
            .iter()
            .enumerate()
            .filter(|&(k, d)| runs(d) && spare(k).is_none())
            .map(|(_, d)| d.index)
            .collect();
        let mut speeds = if devices.is_empty() {
            Vec::new()
        } else {
            match measure_server(&r.endpoint, &devices, g, cfg, hashes, opts).await {
                Ok(speeds) => speeds.into_iter().map(Some).collect(),
                Err(e) => {
                    tracing::warn!("{e}; planning without its speed");
                    devices.iter().map(|_| None).collect()
                }
            }
        }
        .into_iter();
        for (k, d) in r.devices.iter().enumerate() {
            let speed = match spare(k) {
                Some(p) => out.get(p).cloned().flatten(),
                None if runs(d) => speeds.next().flatten(),
                None => None,
            };
            out.push(speed);
        }
    }
    out
}

/// [`measure_cluster`] for the model file at `path` (already open as `g`),
/// prompt chunks of `prompt_tokens`, hashing on `threads` threads (a hash
/// memo in the default place is used and filled).
pub async fn measure_model(
    path: &std::path::Path,
    g: &Gguf,
    reports: &[crate::cluster::ServerReport],
    prompt_tokens: u32,
    threads: usize,
) -> Result<Vec<Option<DeviceSpeed>>, crate::model::ModelError> {
    let cfg = LlamaConfig::from_gguf(g)?;
    let memo = crate::load::hashes::default_memo_dir();
    let hashes = TensorHashes::start(
        g,
        path,
        memo.as_deref(),
        &measured_weight_names(&cfg),
        threads.max(1),
    );
    let opts = MeasureOptions {
        prompt_tokens,
        ..MeasureOptions::default()
    };
    Ok(measure_cluster(reports, g, &cfg, &hashes, &opts).await)
}
