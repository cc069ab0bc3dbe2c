//! A serializable snapshot of the cluster and of every model on it, for
//! dashboards: servers and their devices' memory, each model's layer map,
//! load progress, speed, queue, per-stage step time and bytes, health and
//! recent events.
//!
//! [`snapshot`] takes a list of models, each loading, ready (an
//! [`Engine`]) or failed, so a server holding several models passes them
//! all; servers that several models use are listed once.

use std::collections::BTreeMap;

use serde::Serialize;

use super::health::{HealthEvent, Recovery, ServerHealth, Status};
use super::{Engine, LoadProgress};
use crate::cluster::ServerReport;
use crate::plan::{Plan, Target};

impl Engine {
    /// What each server offered when the model was loaded: protocol,
    /// devices, free and total memory.
    pub fn cluster(&self) -> &[ServerReport] {
        &self.shared.cluster
    }

    /// The engine's recent events (failures, retries, recoveries), newest
    /// first.
    pub fn events(&self) -> Vec<HealthEvent> {
        self.shared.health.events()
    }
}

/// One model as the caller holds it.
#[derive(Debug, Clone, Copy)]
pub enum ModelState<'a> {
    /// Its weights are being uploaded.
    Loading(LoadProgress),
    /// Loaded and serving (or recovering).
    Ready(&'a Engine),
    /// Loading failed, for this reason.
    Failed(&'a str),
}

/// The whole picture.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// shardline's version.
    pub version: &'static str,
    /// Milliseconds since the Unix epoch, when the snapshot was taken.
    pub time_ms: u64,
    /// Every server any model uses, in the order first seen.
    pub servers: Vec<ServerStatus>,
    /// The models, in the order given.
    pub models: Vec<ModelStatus>,
}

/// One server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// `host:port`.
    pub endpoint: String,
    /// Protocol version.
    pub protocol: String,
    /// Whether it answered last time a model asked (false if any model
    /// saw it fail).
    pub ok: bool,
    /// What went wrong, when not.
    pub error: Option<String>,
    /// Milliseconds since it last answered.
    pub last_ok_ms_ago: Option<u64>,
    /// The models with layers on it.
    pub models: Vec<String>,
    /// Its devices.
    pub devices: Vec<DeviceStatus>,
}

/// One device of a server.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceStatus {
    /// Index on its server.
    pub index: u32,
    /// Total memory, bytes.
    pub total: u64,
    /// Free memory when the model(s) were loaded, bytes (before their
    /// weights went there).
    pub free_at_load: u64,
    /// What the plans of the models put there: weights, KV cache, compute
    /// and output buffers, bytes.
    pub planned: u64,
    /// Bytes of the buffers the models' stages hold there now.
    pub allocated: u64,
}

/// One model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    /// The name clients use.
    pub name: String,
    /// `loading`, `ok`, `degraded`, `recovering`, `unavailable` or `failed`.
    pub state: String,
    /// Why it failed or stopped.
    pub error: Option<String>,
    /// Upload progress while loading.
    pub loading: Option<LoadProgress>,
    /// The rest, once loaded.
    #[serde(flatten)]
    pub ready: Option<ReadyStatus>,
}

/// What a loaded model reports.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyStatus {
    /// Layers of the model.
    pub n_layer: u32,
    /// KV cells in all.
    pub n_ctx: u32,
    /// Sequences decoded together.
    pub parallel: u32,
    /// Tokens of context per sequence.
    pub ctx_per_seq: usize,
    /// The strategy that placed the layers.
    pub strategy: String,
    /// Seconds the load took.
    pub load_s: f64,
    /// Weight bytes loaded, sent over the network, and supplied by caches.
    pub weight_bytes: u64,
    /// Of those, bytes sent.
    pub sent_bytes: u64,
    /// Of those, bytes the servers' caches had.
    pub cached_bytes: u64,
    /// The layer map: one entry per stage of the plan it runs now.
    pub stages: Vec<StageStatus>,
    /// With the output matrix split: which device computes which rows.
    pub head_shares: Vec<HeadShareStatus>,
    /// Tokens per second of the last decode step.
    pub tokens_per_second: f64,
    /// Tokens generated so far.
    pub tokens_generated: u64,
    /// Prompt tokens processed so far.
    pub prompt_tokens: u64,
    /// Requests accepted so far.
    pub requests: u64,
    /// Requests waiting for a sequence.
    pub queue_depth: i64,
    /// Sequences being generated.
    pub active_sequences: i64,
    /// Server failures seen.
    pub failures: u64,
    /// Recoveries completed.
    pub recoveries: u64,
    /// Seconds the last recovery took.
    pub last_recovery_s: f64,
    /// While recovering: how far it got.
    pub recovery: Option<Recovery>,
    /// Recent failures, retries and recoveries, newest first.
    pub events: Vec<HealthEvent>,
}

/// One stage: where it runs, its layers, its memory and its numbers.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    /// `local` or `host:port/device`.
    pub target: String,
    /// The server's `host:port` (absent on the coordinator's CPU).
    pub endpoint: Option<String>,
    /// The device on that server.
    pub device: Option<u32>,
    /// The device's kind as the planner read it (`CPU`, `CUDA GPU`, …).
    pub kind: String,
    /// First layer.
    pub first_layer: u32,
    /// One past the last layer.
    pub end_layer: u32,
    /// Whether it computes the logits.
    pub holds_output: bool,
    /// Weights, KV cache, compute and output buffers the plan gives it.
    pub planned_bytes: u64,
    /// Steps run.
    pub steps: u64,
    /// Average milliseconds per step (send, compute, receive).
    pub step_ms: f64,
    /// Bytes sent to it while generating.
    pub bytes_sent: u64,
    /// Bytes received from it while generating.
    pub bytes_received: u64,
    /// Bytes of the buffers it holds on its device.
    pub allocated_bytes: u64,
}

/// A share of the split output matrix.
#[derive(Debug, Clone, Serialize)]
pub struct HeadShareStatus {
    /// `host:port/device`.
    pub target: String,
    /// First row (vocabulary id).
    pub first_row: u32,
    /// One past the last row.
    pub end_row: u32,
}

fn target_name(t: &Target) -> (String, Option<String>, Option<u32>) {
    match t {
        Target::Local => ("local".into(), None, None),
        Target::Remote {
            endpoint, device, ..
        } => (
            format!("{endpoint}/{device}"),
            Some(endpoint.clone()),
            Some(*device),
        ),
    }
}

fn ready_status(e: &Engine) -> ReadyStatus {
    let plan: Plan = e.current_plan();
    let m = e.metrics();
    let stats = m.stages();
    let stages = plan
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (target, endpoint, device) = target_name(&s.target);
            let st = stats.get(i).cloned().unwrap_or_default();
            StageStatus {
                target,
                endpoint,
                device,
                kind: s.kind.to_string(),
                first_layer: s.layers.start,
                end_layer: s.layers.end,
                holds_output: s.holds_output,
                planned_bytes: s.needed_bytes(),
                steps: st.steps,
                step_ms: if st.steps == 0 {
                    0.0
                } else {
                    st.seconds * 1e3 / st.steps as f64
                },
                bytes_sent: st.bytes_sent,
                bytes_received: st.bytes_received,
                allocated_bytes: st.allocated_bytes,
            }
        })
        .collect();
    let load = e.load_stats();
    let health = e.health();
    ReadyStatus {
        n_layer: plan.n_layer,
        n_ctx: plan.n_ctx,
        parallel: plan.n_seq_max,
        ctx_per_seq: e.ctx_per_seq(),
        strategy: plan.strategy.to_string(),
        load_s: e.load_time().as_secs_f64(),
        weight_bytes: load.weight_bytes,
        sent_bytes: load.sent_bytes,
        cached_bytes: load.cached_bytes,
        stages,
        head_shares: plan
            .head_shares
            .iter()
            .map(|h| HeadShareStatus {
                target: target_name(&h.target).0,
                first_row: h.rows.start,
                end_row: h.rows.end,
            })
            .collect(),
        tokens_per_second: m.tokens_per_second(),
        tokens_generated: m.tokens_generated(),
        prompt_tokens: m.prompt_tokens(),
        requests: m.requests(),
        queue_depth: m.queue_depth(),
        active_sequences: m.active_sequences(),
        failures: m.failures(),
        recoveries: m.recoveries(),
        last_recovery_s: m.last_recovery_seconds(),
        recovery: health.recovery,
        events: e.events(),
    }
}

fn state_name(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Degraded => "degraded",
        Status::Recovering => "recovering",
        Status::Unavailable => "unavailable",
    }
}

/// Adds `e`'s servers and what its stages use there to `servers`.
fn merge_servers(servers: &mut Vec<ServerStatus>, name: &str, e: &Engine, r: &ReadyStatus) {
    let health: BTreeMap<String, ServerHealth> = e
        .health()
        .servers
        .into_iter()
        .map(|s| (s.endpoint.clone(), s))
        .collect();
    for rep in e.cluster() {
        let at = match servers.iter().position(|s| s.endpoint == rep.endpoint) {
            Some(i) => i,
            None => {
                servers.push(ServerStatus {
                    endpoint: rep.endpoint.clone(),
                    protocol: rep.protocol.clone(),
                    ok: true,
                    error: None,
                    last_ok_ms_ago: None,
                    models: Vec::new(),
                    devices: rep
                        .devices
                        .iter()
                        .map(|d| DeviceStatus {
                            index: d.index,
                            total: d.total,
                            free_at_load: d.free,
                            planned: 0,
                            allocated: 0,
                        })
                        .collect(),
                });
                servers.len() - 1
            }
        };
        let s = &mut servers[at];
        if let Some(h) = health.get(&rep.endpoint) {
            s.ok &= h.ok;
            if s.error.is_none() {
                s.error = h.error.clone();
            }
            s.last_ok_ms_ago = match (s.last_ok_ms_ago, h.last_ok_ms_ago) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let mut used = false;
        for st in r
            .stages
            .iter()
            .filter(|st| st.endpoint.as_deref() == Some(rep.endpoint.as_str()))
        {
            used = true;
            if let Some(d) = s.devices.iter_mut().find(|d| Some(d.index) == st.device) {
                d.planned = d.planned.saturating_add(st.planned_bytes);
                d.allocated = d.allocated.saturating_add(st.allocated_bytes);
            }
        }
        if used && !s.models.iter().any(|m| m == name) {
            s.models.push(name.to_string());
        }
    }
}

/// The snapshot of `models` (name and state each) and of the servers the
/// loaded ones use.
pub fn snapshot(models: &[(&str, ModelState<'_>)]) -> ClusterStatus {
    let mut servers = Vec::new();
    let mut out = Vec::with_capacity(models.len());
    for (name, state) in models {
        out.push(match state {
            ModelState::Loading(p) => ModelStatus {
                name: name.to_string(),
                state: "loading".into(),
                error: None,
                loading: Some(*p),
                ready: None,
            },
            ModelState::Failed(why) => ModelStatus {
                name: name.to_string(),
                state: "failed".into(),
                error: Some(why.to_string()),
                loading: None,
                ready: None,
            },
            ModelState::Ready(e) => {
                let r = ready_status(e);
                merge_servers(&mut servers, name, e, &r);
                let h = e.health();
                ModelStatus {
                    name: name.to_string(),
                    state: state_name(h.status).into(),
                    error: h.error,
                    loading: None,
                    ready: Some(r),
                }
            }
        });
    }
    ClusterStatus {
        version: env!("CARGO_PKG_VERSION"),
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        servers,
        models: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_loading_and_failed_serialize_without_servers() {
        let s = snapshot(&[
            (
                "a",
                ModelState::Loading(LoadProgress {
                    bytes_done: 5,
                    bytes_total: 10,
                    ..LoadProgress::default()
                }),
            ),
            ("b", ModelState::Failed("no room")),
        ]);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["models"][0]["state"], "loading");
        assert_eq!(v["models"][0]["loading"]["bytes_done"], 5);
        assert_eq!(v["models"][1]["state"], "failed");
        assert_eq!(v["models"][1]["error"], "no room");
        assert!(v["models"][1].get("stages").is_none());
        assert_eq!(v["servers"].as_array().unwrap().len(), 0);
    }
}
