//! Measuring the servers before planning, when the strategy needs speeds.

use std::collections::HashMap;
use std::path::Path;

use super::EngineOptions;
use crate::cluster::ServerReport;
use crate::gguf::Gguf;
use crate::load::TensorHashes;
use crate::measure::{measure_cluster, measured_weight_names, MeasureOptions};
use crate::model::LlamaConfig;
use crate::plan::{predict, DeviceSpec, DeviceSpeed, ModelCost, Plan, Prediction, Strategy};

/// Speeds of the devices, in planner order (empty when not measured).
#[derive(Debug, Default)]
pub(crate) struct Measured {
    pub speeds: Vec<Option<DeviceSpeed>>,
    prompt_chunk: u32,
}

impl Measured {
    /// The prediction for `plan` when anything was measured.
    pub fn predict(
        &self,
        plan: &Plan,
        cost: &ModelCost,
        devices: &[DeviceSpec],
        streams: usize,
    ) -> Option<Prediction> {
        if self.speeds.iter().all(Option::is_none) {
            return None;
        }
        let streams = u32::try_from(streams).unwrap_or(u32::MAX);
        Some(predict(
            plan,
            cost,
            devices,
            &self.speeds,
            streams,
            self.prompt_chunk,
        ))
    }

    /// The speeds by server and device, for planning again later.
    pub fn by_device(&self, devices: &[DeviceSpec]) -> HashMap<(String, u32), DeviceSpeed> {
        devices
            .iter()
            .zip(&self.speeds)
            .filter_map(|(d, s)| Some(((d.endpoint.clone(), d.device), s.clone()?)))
            .collect()
    }
}

/// The prompt chunk measured and predicted for: the batch size, at most
/// 128 tokens (larger chunks are extrapolated in proportion).
pub(crate) fn prompt_chunk(n_batch: u32) -> u32 {
    n_batch.clamp(crate::measure::BATCH_POINT + 1, 128)
}

/// Measures every device when the strategy is [`Strategy::Throughput`];
/// nothing otherwise.
pub(crate) async fn measure_for_plan(
    opts: &EngineOptions,
    gguf: &Gguf,
    cfg: &LlamaConfig,
    reports: &[ServerReport],
    memo_dir: Option<&Path>,
    n_batch: u32,
) -> Measured {
    if opts.strategy != Strategy::Throughput || opts.local_layers >= cfg.hp.n_layer {
        return Measured::default();
    }
    let started = std::time::Instant::now();
    let hashes = TensorHashes::start(
        gguf,
        &opts.model,
        memo_dir,
        &measured_weight_names(cfg),
        opts.threads,
    );
    let mopts = MeasureOptions {
        prompt_tokens: prompt_chunk(n_batch),
        ..MeasureOptions::default()
    };
    let speeds = measure_cluster(reports, gguf, cfg, &hashes, &mopts).await;
    tracing::info!(
        "measured {} devices in {:.2} s",
        speeds.iter().flatten().count(),
        started.elapsed().as_secs_f64()
    );
    Measured {
        speeds,
        prompt_chunk: mopts.prompt_tokens,
    }
}
