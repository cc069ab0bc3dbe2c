//! Comparing layouts: each strategy's plan (and explicit splits) with what
//! the cost model predicts for it, and, on a real cluster, what it measures.
//! Used by `shardline bench --layouts` / `--simulate` and by
//! `benches/layouts.rs`.
//!
//! A simulation needs no servers: a cluster description ([`ClusterFile`])
//! gives each device's memory, speed and link, and a GGUF (its header is
//! enough) gives the model; the table comes from the cost model alone.

mod run;
mod throttle;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use run::{run_layouts, RunOptions};
pub use throttle::{CpuThrottle, ThrottleError};

use crate::plan::{
    plan_with_speeds, predict, DeviceSpec, DeviceSpeed, ModelCost, PlanError, PlanOptions,
    Prediction, Stage, Strategy, Target,
};

/// One layout to compare: a name and the strategy that places it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// What the table calls it.
    pub name: String,
    /// How it places the layers.
    pub strategy: Strategy,
}

impl Layout {
    /// The memory, even and throughput strategies, then `splits`.
    pub fn standard(splits: &[Vec<u32>]) -> Vec<Layout> {
        let mut v: Vec<Layout> = [Strategy::Memory, Strategy::Even, Strategy::Throughput]
            .into_iter()
            .map(|s| Layout {
                name: s.to_string(),
                strategy: s,
            })
            .collect();
        v.extend(splits.iter().map(|c| {
            let s = Strategy::Split(c.clone());
            Layout {
                name: format!("split {s}"),
                strategy: s,
            }
        }));
        v
    }
}

/// What each layout is timed (or simulated) on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// Streams submitted at once in the load figures.
    pub streams: u32,
    /// Prompt length in tokens.
    pub prompt_tokens: u32,
    /// Tokens generated per request.
    pub gen_tokens: u32,
    /// Tokens per prompt chunk (the batch size, at most the prompt).
    pub prompt_chunk: u32,
}

impl Workload {
    /// Generated tokens per second of a round of [`Workload::streams`]
    /// requests submitted at once, by the cost model, for the pipelined
    /// engine: prompt chunks of different requests follow each other
    /// through the stages, as do the decode micro-batches, so with several
    /// stages the slowest one sets both rates (one stage: nothing overlaps).
    pub fn round_tok_s(&self, p: &Prediction) -> f64 {
        let s = f64::from(self.streams.max(1));
        let g = f64::from(self.gen_tokens.max(1));
        let known: Vec<_> = p.stages.iter().flatten().collect();
        let slowest_prompt_ms = known.iter().map(|t| t.prompt_ms).fold(0.0, f64::max);
        let prompt_rate = if self.streams > 1 && known.len() > 1 && slowest_prompt_ms > 0.0 {
            1e3 * f64::from(p.prompt_chunk) / slowest_prompt_ms
        } else {
            p.prompt_tok_s
        };
        let prompt_s = s * f64::from(self.prompt_tokens) / prompt_rate.max(1e-9);
        let decode_s = g * s / p.pipelined_tok_s.max(1e-9);
        s * g / (prompt_s + decode_s)
    }
}

/// Speeds measured on a real cluster with one layout.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measured {
    /// Seconds to load the model (connect, upload, set up).
    pub load_s: f64,
    /// Prompt tokens per second of one stream.
    pub prompt_tok_s: f64,
    /// Decode tokens per second of one stream.
    pub decode_tok_s: f64,
    /// Generated tokens per second of a round of streams submitted at
    /// once: all generated tokens over the round's wall time (prompts
    /// included).
    pub streams_tok_s: f64,
}

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayoutRow {
    /// The layout's name.
    pub name: String,
    /// Layers per device, in device order (empty when it did not plan).
    pub counts: Vec<u32>,
    /// The cost model's figures.
    pub predicted: Option<Prediction>,
    /// [`Workload::round_tok_s`] of the prediction.
    pub predicted_round_tok_s: Option<f64>,
    /// The measured figures (a real cluster only).
    pub measured: Option<Measured>,
    /// Why the layout could not be planned or run.
    pub error: Option<String>,
}

/// Plans `layouts` over `devices` and predicts each; no I/O.
pub fn predict_layouts(
    cost: &ModelCost,
    devices: &[DeviceSpec],
    speeds: &[Option<DeviceSpeed>],
    layouts: &[Layout],
    work: &Workload,
) -> Vec<(LayoutRow, Option<crate::plan::Plan>)> {
    layouts
        .iter()
        .map(|l| {
            let opts = PlanOptions {
                strategy: l.strategy.clone(),
                n_ctx: cost.n_ctx,
                n_batch: cost.n_batch,
                n_seq_max: cost.n_seq_max,
                ..PlanOptions::default()
            };
            match plan_with_speeds(cost, devices, speeds, &opts) {
                Ok(p) => {
                    let pr = predict(&p, cost, devices, speeds, work.streams, work.prompt_chunk);
                    let row = LayoutRow {
                        name: l.name.clone(),
                        counts: counts_of(&p.stages, devices.len()),
                        predicted_round_tok_s: Some(work.round_tok_s(&pr)),
                        predicted: Some(pr),
                        measured: None,
                        error: None,
                    };
                    (row, Some(p))
                }
                Err(e) => (
                    LayoutRow {
                        name: l.name.clone(),
                        counts: Vec::new(),
                        predicted: None,
                        predicted_round_tok_s: None,
                        measured: None,
                        error: Some(e.to_string()),
                    },
                    None,
                ),
            }
        })
        .collect()
}

fn counts_of(stages: &[Stage], devices: usize) -> Vec<u32> {
    let mut counts = vec![0; devices];
    for s in stages {
        if let Target::Remote { server, .. } = s.target {
            counts[server] += s.n_layers();
        }
    }
    counts
}

/// A cluster described rather than measured, for simulations. JSON:
///
/// ```json
/// { "devices": [
///     { "name": "gpu24", "memory_gib": 24, "mem_gbps": 900, "gflops": 80000,
///       "rtt_ms": 0.2, "link_gbit": 1 },
///     { "name": "cpu64", "memory_gib": 64, "mem_gbps": 60, "gflops": 1000,
///       "rtt_ms": 0.2, "link_gbit": 1 } ] }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The devices, in planning order.
    pub devices: Vec<DeviceFile>,
}

/// One described device: memory, speed and the link to it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFile {
    /// What the table calls it.
    pub name: String,
    /// Memory free for the model, GiB.
    pub memory_gib: f64,
    /// Memory bandwidth, GB/s (what decoding is bound by).
    pub mem_gbps: f64,
    /// Arithmetic rate, GFLOP/s (what long prompts are bound by).
    pub gflops: f64,
    /// Round trip to it from the coordinator, milliseconds.
    pub rtt_ms: f64,
    /// Link bandwidth, Gbit/s.
    pub link_gbit: f64,
}

/// Why a cluster description is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    /// Not valid JSON of the expected shape.
    #[error("cluster description: {0}")]
    Json(#[from] serde_json::Error),
    /// No devices.
    #[error("cluster description: no devices")]
    Empty,
    /// A number is negative, zero where it must not be, or not finite.
    #[error("cluster description: device '{name}': {field} must be a positive number")]
    Bad {
        /// The device.
        name: String,
        /// The field.
        field: &'static str,
    },
}

impl ClusterFile {
    /// Parses and checks a description.
    pub fn parse(text: &str) -> Result<ClusterFile, ClusterFileError> {
        let c: ClusterFile = serde_json::from_str(text)?;
        if c.devices.is_empty() {
            return Err(ClusterFileError::Empty);
        }
        for d in &c.devices {
            let fields = [
                ("memory_gib", d.memory_gib, false),
                ("mem_gbps", d.mem_gbps, false),
                ("gflops", d.gflops, false),
                ("rtt_ms", d.rtt_ms, true),
                ("link_gbit", d.link_gbit, false),
            ];
            for (field, v, zero_ok) in fields {
                if !v.is_finite() || v < 0.0 || (!zero_ok && v == 0.0) {
                    return Err(ClusterFileError::Bad {
                        name: d.name.clone(),
                        field,
                    });
                }
            }
        }
        Ok(c)
    }

    /// The devices as the planner sees them, and their speeds for `cost`.
    pub fn devices(&self, cost: &ModelCost) -> (Vec<DeviceSpec>, Vec<Option<DeviceSpeed>>) {
        let specs = self
            .devices
            .iter()
            .map(|d| {
                let bytes = (d.memory_gib * f64::from(1u32 << 30)) as u64;
                DeviceSpec {
                    endpoint: d.name.clone(),
                    device: 0,
                    free: bytes,
                    total: bytes,
                    alignment: 32,
                    max_size: 0,
                }
            })
            .collect();
        let speeds = self
            .devices
            .iter()
            .map(|d| {
                Some(DeviceSpeed::roofline(
                    cost,
                    d.mem_gbps,
                    d.gflops,
                    d.rtt_ms / 1e3,
                    d.link_gbit * 1e9,
                ))
            })
            .collect();
        (specs, speeds)
    }
}

/// Simulates `layouts` on a described cluster: the table from the cost
/// model alone.
pub fn simulate(
    cost: &ModelCost,
    cluster: &ClusterFile,
    layouts: &[Layout],
    work: &Workload,
) -> Vec<LayoutRow> {
    let (devices, speeds) = cluster.devices(cost);
    predict_layouts(cost, &devices, &speeds, layouts, work)
        .into_iter()
        .map(|(row, _)| row)
        .collect()
}

/// Rows as a table: predicted and (when run) measured figures side by side.
#[derive(Debug)]
pub struct LayoutTable<'a>(pub &'a [LayoutRow]);

impl fmt::Display for LayoutTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let streams = self
            .0
            .iter()
            .find_map(|r| r.predicted.as_ref().map(|p| p.streams))
            .unwrap_or(crate::plan::speed::LOAD_STREAMS);
        let pair = |p: Option<f64>, m: Option<f64>, prec: usize| match (p, m) {
            (Some(p), Some(m)) => format!("{p:.prec$} / {m:.prec$}"),
            (Some(p), None) => format!("{p:.prec$}"),
            (None, Some(m)) => format!("- / {m:.prec$}"),
            (None, None) => "-".to_string(),
        };
        let measured = self.0.iter().any(|r| r.measured.is_some());
        let suffix = if measured { " (pred / meas)" } else { "" };
        let headers = [
            "layout".to_string(),
            "layers".to_string(),
            format!("load s{suffix}"),
            format!("prompt tok/s{suffix}"),
            format!("decode tok/s{suffix}"),
            format!("{streams} streams tok/s{suffix}"),
        ];
        let mut rows: Vec<[String; 6]> = Vec::new();
        for r in self.0 {
            let p = r.predicted.as_ref();
            let m = r.measured.as_ref();
            let counts = r
                .counts
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            rows.push([
                r.name.clone(),
                counts,
                pair(p.map(|p| p.load_s), m.map(|m| m.load_s), 2),
                pair(p.map(|p| p.prompt_tok_s), m.map(|m| m.prompt_tok_s), 1),
                pair(p.map(|p| p.decode_tok_s), m.map(|m| m.decode_tok_s), 1),
                pair(r.predicted_round_tok_s, m.map(|m| m.streams_tok_s), 1),
            ]);
        }
        crate::plan::write_table(f, &headers, &rows, 2)?;
        for r in self.0 {
            if let Some(e) = &r.error {
                writeln!(f, "{}: {e}", r.name)?;
            }
            for l in r.predicted.iter().flat_map(|p| &p.left_out) {
                writeln!(
                    f,
                    "{}: left out {}/{}: {}",
                    r.name, l.endpoint, l.device, l.reason
                )?;
            }
        }
        Ok(())
    }
}

/// Why a layout comparison could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The model cannot be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The model is not one shardline runs.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// A server could not be probed.
    #[error("probing {endpoint}: {source}")]
    Probe {
        /// The server.
        endpoint: String,
        /// What went wrong.
        source: crate::rpc::RpcError,
    },
    /// The model file could not be read.
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
}

/// The cost of the model at `path` for `opts`: from the whole file, or,
/// when the file stops before its tensor data, from its header alone.
pub fn cost_from_file(
    path: &std::path::Path,
    opts: &PlanOptions,
) -> Result<ModelCost, LayoutError> {
    use crate::gguf::{Gguf, GgufContent, GgufError};
    let io = |e: std::io::Error| LayoutError::Read(path.display().to_string(), e);
    match Gguf::open(path) {
        Ok(g) => Ok(ModelCost::from_gguf(&g, opts)?),
        Err(GgufError::DataPastEnd { .. } | GgufError::TensorPastEnd { .. }) => {
            let bytes = std::fs::read(path).map_err(io)?;
            let content = GgufContent::parse_header(&bytes).map_err(PlanError::from)?;
            let hp = crate::gguf::llama::LlamaHparams::from_metadata(content.metadata())
                .map_err(PlanError::from)?;
            hp.check_tensors(content.tensors())
                .map_err(PlanError::from)?;
            let weights = crate::plan::ModelWeights::from_tensors(content.tensors(), hp.n_layer)?;
            Ok(ModelCost::from_parts((&hp).into(), weights, opts)?)
        }
        Err(e) => Err(PlanError::from(e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"{"devices":[
        {"name":"a","memory_gib":8,"mem_gbps":100,"gflops":1000,"rtt_ms":0.1,"link_gbit":10},
        {"name":"b","memory_gib":8,"mem_gbps":25,"gflops":250,"rtt_ms":0.1,"link_gbit":10}]}"#;

    #[test]
    fn cluster_descriptions_are_checked() {
        let c = ClusterFile::parse(ONE).unwrap();
        assert_eq!(c.devices.len(), 2);
        let err = |s: &str| ClusterFile::parse(s).unwrap_err().to_string();
        assert!(err(r#"{"devices":[]}"#).contains("no devices"));
        assert!(err("{").contains("cluster description"));
        let neg = ONE.replace("\"rtt_ms\":0.1", "\"rtt_ms\":-1");
        assert!(err(&neg).contains("rtt_ms"), "{}", err(&neg));
        let extra = ONE.replace("\"gflops\"", "\"speed\":1,\"gflops\"");
        assert!(err(&extra).contains("speed"), "{}", err(&extra));
    }

    #[test]
    fn workload_round_counts_pipelined_prompts_and_decode() {
        let mut p = Prediction {
            stages: Vec::new(),
            head: None,
            decode_tok_s: 10.0,
            prompt_tok_s: 100.0,
            prompt_chunk: 50,
            streams: 8,
            load_tok_s: 40.0,
            pipelined_tok_s: 80.0,
            load_s: 0.0,
            left_out: Vec::new(),
        };
        let w = Workload {
            streams: 8,
            prompt_tokens: 50,
            gen_tokens: 20,
            prompt_chunk: 50,
        };
        // One stage: 8 prompts of 0.5 s, then 20 steps of 8 tokens at
        // 80 tok/s (2 s).
        assert!((w.round_tok_s(&p) - 160.0 / 6.0).abs() < 1e-9);
        // Two stages: prompt chunks overlap too, at the slowest stage's
        // 0.25 s a chunk.
        let t = |prompt_ms| {
            Some(crate::plan::StageTime {
                decode_ms: 1.0,
                load_ms: 1.0,
                prompt_ms,
            })
        };
        p.stages = vec![t(250.0), t(200.0)];
        assert!((w.round_tok_s(&p) - 160.0 / 4.0).abs() < 1e-9);
    }
}
