//! Connecting to the plan's servers, placing the weights and setting up
//! every stage: what a load does, and what recovery does again after a
//! server failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::task::JoinSet;

use super::{DeviceAllocation, LoadProgress, LoadStats, ProgressFn, ServerLoad};
use crate::cluster::{devices_from_reports, probe_all};
use crate::exec::head::{HeadShard, SplitHead};
use crate::exec::local::LocalStage;
use crate::exec::pipeline::{Pipeline, StageRunner};
use crate::exec::remote::{RemoteStage, SharedClient};
use crate::exec::{Embedder, ExecError};
use crate::gguf::Gguf;
use crate::load::{TensorHashes, UploadStats};
use crate::model::LlamaConfig;
use crate::plan::{plan_with_speeds, ModelCost, Plan, PlanOptions, Target};
use crate::rpc::{ClientOptions, RpcClient, Upload};

use super::load::EngineError;

/// Everything needed to (re)build the pipeline of one plan.
#[derive(Clone)]
pub(crate) struct Builder {
    pub gguf: Gguf,
    pub cfg: LlamaConfig,
    pub plan: Plan,
    pub n_ctx: u32,
    pub n_batch: u32,
    pub threads: usize,
    pub hashes: Arc<TensorHashes>,
    pub progress: bool,
    pub on_progress: Option<ProgressFn>,
    /// Where every pipeline built records its step spans.
    pub trace: Arc<crate::exec::stage_task::StepTrace>,
}

/// What is needed to plan the model again over fewer servers.
#[derive(Debug, Clone)]
pub(crate) struct Replanner {
    pub cost: ModelCost,
    pub popts: PlanOptions,
    /// Every server the engine was given (or started).
    pub servers: Vec<String>,
    /// Caps on the servers' memory.
    pub mem_caps: Vec<crate::memcap::MemCap>,
    /// Measured speeds by server and device, for the throughput strategy.
    pub speeds: std::collections::HashMap<(String, u32), crate::plan::DeviceSpeed>,
}

impl Replanner {
    /// A plan over the servers not in `lost`, if the model fits them.
    pub async fn without(
        &self,
        lost: &std::collections::BTreeSet<String>,
    ) -> Result<Plan, EngineError> {
        let left: Vec<String> = self
            .servers
            .iter()
            .filter(|s| !lost.contains(*s))
            .cloned()
            .collect();
        let reports = probe_all(&left, ClientOptions::default())
            .await
            .map_err(|(endpoint, source)| EngineError::Server { endpoint, source })?;
        let mut devices = devices_from_reports(&reports);
        crate::memcap::apply_caps(&mut devices, &self.mem_caps);
        let speeds: Vec<_> = devices
            .iter()
            .map(|d| self.speeds.get(&(d.endpoint.clone(), d.device)).cloned())
            .collect();
        Ok(plan_with_speeds(
            &self.cost,
            &devices,
            &speeds,
            &self.popts,
        )?)
    }
}

impl Builder {
    /// Connects to every server of the plan (one connection each), uploads
    /// the weights to all of them at once (their caches answer what they
    /// can), sets up the stages and returns the pipeline with what the
    /// upload cost.
    pub async fn build(&self) -> Result<(Pipeline, LoadStats), EngineError> {
        // One connection per server; stages on several devices of one server
        // share it (a server serves one connection at a time).
        let mut clients: std::collections::HashMap<String, SharedClient> =
            std::collections::HashMap::new();
        for s in &self.plan.stages {
            if let Target::Remote { endpoint, .. } = &s.target {
                if !clients.contains_key(endpoint) {
                    let c = RpcClient::connect(endpoint, ClientOptions::default())
                        .await
                        .map_err(|source| EngineError::Server {
                            endpoint: endpoint.clone(),
                            source,
                        })?;
                    clients.insert(endpoint.clone(), Arc::new(tokio::sync::Mutex::new(c)));
                }
            }
        }

        // Upload to every server at once.
        let total: u64 = self
            .plan
            .stages
            .iter()
            .filter(|s| !s.is_local())
            .map(|s| s.weight_bytes + s.output_bytes)
            .sum();
        let bar = crate::progress::byte_bar("uploading", total, self.progress);
        let counters = Arc::new(ProgressCounters::default());
        if let Some(cb) = &self.on_progress {
            cb(LoadProgress {
                bytes_total: total,
                ..LoadProgress::default()
            });
        }
        // The embedding table is copied on the coordinator while the
        // servers are busy with their weights.
        let (g, cfg) = (self.gguf.clone(), self.cfg.clone());
        let embedder = tokio::task::spawn_blocking(move || Embedder::new(&g, &cfg));
        let mut uploads = JoinSet::new();
        let last = self.plan.stages.len() - 1;
        for (i, s) in self.plan.stages.iter().enumerate() {
            let Target::Remote {
                endpoint, device, ..
            } = &s.target
            else {
                continue;
            };
            let (endpoint, device, layers) = (endpoint.clone(), *device, s.layers.clone());
            let (g, cfg, bar) = (self.gguf.clone(), self.cfg.clone(), bar.clone());
            let (counters, cb, hashes) = (
                counters.clone(),
                self.on_progress.clone(),
                self.hashes.clone(),
            );
            let (n_ctx, n_batch) = (self.n_ctx, self.n_batch);
            let planned_compute = s.compute_bytes;
            let spare_slot = s.spare_slot;
            let head = self.plan.head_of(i);
            let client = clients[&endpoint].clone();
            uploads.spawn(async move {
                let tick = move |n: u64, how: Upload| {
                    bar.inc(n);
                    let p = counters.add(n, how, total);
                    if bar.is_hidden() {
                        // Without a progress bar, log each quarter of the upload.
                        let quarter = |x: u64| x.saturating_mul(4) / total.max(1);
                        if quarter(p.bytes_done) != quarter(p.bytes_done - n) {
                            tracing::info!(
                                done_bytes = p.bytes_done,
                                total_bytes = total,
                                sent_bytes = p.bytes_sent,
                                cached_bytes = p.bytes_cached,
                                "uploading weights: {}%",
                                p.bytes_done * 100 / total.max(1)
                            );
                        }
                    } else {
                        bar.set_message(format!(
                            "sent {}, from caches {}",
                            indicatif::HumanBytes(p.bytes_sent),
                            indicatif::HumanBytes(p.bytes_cached)
                        ));
                    }
                    if let Some(cb) = &cb {
                        cb(p);
                    }
                };
                let mut stage = RemoteStage::load(
                    client, device, &g, &cfg, layers, head, n_ctx, n_batch, &hashes, &tick,
                )
                .await?;
                if let Some(d) = spare_slot {
                    if !stage.use_spare_slot(d) {
                        tracing::warn!(device = d, "not a CPU device: no spare graph slot");
                    }
                }
                stage.reserve_compute(planned_compute).await?;
                Ok::<_, EngineError>((i, stage))
            });
        }
        let mut remote: Vec<Option<RemoteStage>> =
            (0..self.plan.stages.len()).map(|_| None).collect();
        let mut weights = UploadStats::default();
        while let Some(r) = uploads.join_next().await {
            let (i, stage) =
                r.map_err(|e| ExecError::Weight("upload task".into(), e.to_string()))??;
            let st = stage.upload_stats();
            weights += st;
            tracing::info!(
                endpoint = stage.endpoint(),
                layers = ?stage.layers(),
                sent_bytes = st.sent,
                cached_bytes = st.cached,
                "stage loaded"
            );
            remote[i] = Some(stage);
        }
        // The shares of a split head, all at once.
        let mut shares = JoinSet::new();
        let max_outputs = self.plan.n_seq_max.min(self.n_batch).max(1);
        for (k, h) in self.plan.head_shares.iter().enumerate() {
            let Target::Remote {
                endpoint, device, ..
            } = &h.target
            else {
                continue;
            };
            let client = clients
                .get(endpoint)
                .cloned()
                .ok_or_else(|| EngineError::Internal {
                    what: "placing the output head",
                    detail: format!("{endpoint} has no stage"),
                })?;
            let (g, cfg, device, rows, bar) = (
                self.gguf.clone(),
                self.cfg.clone(),
                *device,
                h.rows.clone(),
                bar.clone(),
            );
            shares.spawn(async move {
                let tick = move |n: u64, _: Upload| bar.inc(n);
                let share =
                    HeadShard::load(client, device, &g, &cfg, rows, max_outputs, &tick).await?;
                Ok::<_, EngineError>((k, share))
            });
        }
        let mut placed: Vec<(usize, HeadShard)> = Vec::new();
        while let Some(r) = shares.join_next().await {
            let (k, share) =
                r.map_err(|e| ExecError::Weight("head share task".into(), e.to_string()))??;
            weights += share.upload_stats();
            tracing::info!(
                endpoint = share.endpoint(),
                rows = ?share.rows(),
                "share of the output head loaded"
            );
            placed.push((k, share));
        }
        placed.sort_by_key(|(k, _)| *k);
        bar.finish_and_clear();
        // Hashing ends soon after the uploads; waiting for its memo means a
        // short-lived `run` still leaves it for the next load.
        self.hashes.finished().await;
        let mut servers = Vec::new();
        for (endpoint, c) in &clients {
            let c = c.lock().await;
            let t = c.traffic();
            // Stages' devices, and the spare slots that hold shares of the head.
            let mut devices: Vec<u32> = self
                .plan
                .stages
                .iter()
                .map(|s| &s.target)
                .chain(self.plan.head_shares.iter().map(|h| &h.target))
                .filter_map(|t| match t {
                    Target::Remote {
                        endpoint: e,
                        device,
                        ..
                    } if e == endpoint => Some(*device),
                    _ => None,
                })
                .collect();
            devices.sort_unstable();
            devices.dedup();
            servers.push(ServerLoad {
                endpoint: endpoint.clone(),
                round_trips: t.round_trips,
                wire_bytes_sent: t.bytes_sent,
                allocated: devices
                    .into_iter()
                    .map(|device| DeviceAllocation {
                        device,
                        bytes: c.allocated_bytes(device),
                    })
                    .collect(),
            });
        }
        servers.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        let load_stats = LoadStats {
            weight_bytes: weights.bytes,
            sent_bytes: weights.sent,
            cached_bytes: weights.cached,
            hashed_bytes: self.hashes.hashed_bytes(),
            hashes_from_memo: self.hashes.from_memo(),
            servers,
        };
        tracing::info!(
            sent_bytes = load_stats.sent_bytes,
            cached_bytes = load_stats.cached_bytes,
            hashed_bytes = load_stats.hashed_bytes,
            "weights placed"
        );

        let mut stages = Vec::new();
        for (i, s) in self.plan.stages.iter().enumerate() {
            match &s.target {
                Target::Local => stages.push(StageRunner::Local(crate::exec::blocking(|| {
                    let mut stage = LocalStage::new(
                        &self.gguf,
                        &self.cfg,
                        s.layers.clone(),
                        i == last,
                        self.n_ctx,
                        self.threads,
                    )?;
                    // The compute buffer for the largest step, once.
                    stage.reserve_compute(&self.cfg, self.n_batch, self.plan.n_seq_max)?;
                    Ok::<_, ExecError>(stage)
                })?)),
                Target::Remote { .. } => stages.push(StageRunner::Remote(Box::new(
                    remote[i].take().expect("every remote stage was loaded"),
                ))),
            }
        }
        if !placed.is_empty() {
            let head = SplitHead::new(placed.into_iter().map(|(_, s)| s).collect())?;
            stages.push(StageRunner::Head(Box::new(head)));
        }
        let embedder = embedder.await.map_err(|e| EngineError::Internal {
            what: "building the embedder",
            detail: e.to_string(),
        })??;
        let pipeline = Pipeline::with_trace(
            self.cfg.clone(),
            embedder,
            stages,
            self.n_ctx,
            self.trace.clone(),
        );
        Ok((pipeline, load_stats))
    }

    /// The same model and settings on another plan.
    pub fn with_plan(&self, plan: Plan) -> Builder {
        Builder {
            plan,
            progress: false,
            ..self.clone()
        }
    }

    /// The servers of the plan.
    pub fn endpoints(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .plan
            .stages
            .iter()
            .filter_map(|s| match &s.target {
                Target::Remote { endpoint, .. } => Some(endpoint.clone()),
                Target::Local => None,
            })
            .collect();
        v.dedup();
        v
    }
}

/// Upload progress summed over every stage's task.
#[derive(Debug, Default)]
struct ProgressCounters {
    done: AtomicU64,
    sent: AtomicU64,
    cached: AtomicU64,
}

impl ProgressCounters {
    fn add(&self, n: u64, how: Upload, total: u64) -> LoadProgress {
        let bytes_done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        match how {
            Upload::Sent => self.sent.fetch_add(n, Ordering::Relaxed),
            Upload::Cached => self.cached.fetch_add(n, Ordering::Relaxed),
        };
        LoadProgress {
            bytes_done,
            bytes_total: total,
            bytes_sent: self.sent.load(Ordering::Relaxed),
            bytes_cached: self.cached.load(Ordering::Relaxed),
        }
    }
}
