//! Layer placement: which contiguous range of a model's layers runs on which
//! device, and what that costs each device in memory.
//!
//! Pure: no I/O, no async. The planner returns a plain [`Plan`] that the
//! rest of the code reads ([`Plan::stage_of_layer`]). The `plan` command is:
//! probe the servers → `cluster::devices_from_reports` → [`ModelCost::from_gguf`] →
//! [`plan`] → print the [`Plan`] (a table through `Display`, or JSON).
//!
//! Placement rules:
//! - the first [`PlanOptions::local_layers`] layers run on the coordinator's
//!   CPU; the rest go to the devices in the order given, each device one
//!   contiguous range, devices with no layers left out;
//! - the input embedding lookup runs on the coordinator (it reads the mapped
//!   file), so `token_embd.weight` costs the servers nothing, unless the
//!   output is tied to it;
//! - the device of the last stage also holds the output norm, the output
//!   matrix (`token_embd.weight` again when the file has no `output.weight`)
//!   and the logits;
//! - every stage holds its layers' weights and KV cache and one compute
//!   buffer, measured on the stage's graph (`graph::measure`) or, for a
//!   cost built from parts, estimated by a formula; see [`cost`].
//!
//! Every tensor is rounded up to its device's alignment, and each device
//! keeps [`PlanOptions::reserve`] bytes free.

pub mod cost;
mod display;
mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod head;
pub mod kind;
pub mod slots;
pub mod speed;
mod speed_display;
#[cfg(test)]
mod speed_tests;
mod split;
#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::Serialize;

pub use cost::{
    compute_estimate, kv_tensor_bytes, InputLayout, MeasuredCompute, ModelCost, ModelShape,
    ModelWeights, StageCompute, TensorCost,
};
pub use display::human_bytes;
pub(crate) use display::write_table;
pub use error::{layer_range, PlanError};
pub use head::{Head, HeadShare, HeadSplit};
pub use kind::DeviceKind;
pub use speed::{predict, Curve, DeviceSpeed, LeftOut, Prediction, StageTime};
pub use speed_display::PredictionTable;
pub use split::parse_split;

/// Default [`PlanOptions::reserve`]: 256 MiB left free on each device.
pub const DEFAULT_RESERVE: u64 = 256 << 20;
/// Alignment assumed for tensors on the coordinator's CPU backend.
pub const LOCAL_ALIGNMENT: u64 = 64;

/// One device of one server, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSpec {
    /// `host:port` of its server.
    pub endpoint: String,
    /// Index of the device on its server.
    pub device: u32,
    /// Free memory in bytes.
    pub free: u64,
    /// Total memory in bytes.
    pub total: u64,
    /// Buffer alignment in bytes (0 is taken as 1).
    pub alignment: u64,
    /// Largest single buffer in bytes (0 is taken as no limit).
    pub max_size: u64,
}

impl DeviceSpec {
    fn alignment(&self) -> u64 {
        self.alignment.max(1)
    }

    fn max_buffer(&self) -> u64 {
        if self.max_size == 0 {
            u64::MAX
        } else {
            self.max_size
        }
    }
}

/// How the layers that are not local divide between the devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Layers in proportion to each device's free memory (less the reserve),
    /// as llama.cpp splits by free memory. When that leaves a device short,
    /// layers move one at a time from the short device to the one with the
    /// most room left, while any device has room.
    Memory,
    /// The same number of layers on every device; the first devices get one
    /// more when the count does not divide.
    Even,
    /// Explicit layer counts, one per device, summing to the number of
    /// layers that are not local. A 0 leaves the device out.
    Split(Vec<u32>),
    /// Layer counts that make one stream decode fastest by the cost model
    /// in [`speed`], from measured device and link speeds, within memory;
    /// near ties go to the plan whose slowest stage is fastest (the rate
    /// under load). A device that only slows tokens down gets no layers.
    /// Without speeds for every device it falls back to [`Strategy::Memory`].
    Throughput,
}

/// `memory`, `even`, `throughput`, or a split such as `10,20`.
impl FromStr for Strategy {
    type Err = ParseStrategyError;
    fn from_str(s: &str) -> Result<Strategy, ParseStrategyError> {
        match s.trim() {
            "memory" => Ok(Strategy::Memory),
            "even" => Ok(Strategy::Even),
            "throughput" => Ok(Strategy::Throughput),
            t if t.starts_with(|c: char| c.is_ascii_digit()) => parse_split(t).map(Strategy::Split),
            _ => Err(ParseStrategyError::Unknown(s.to_owned())),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Memory => f.write_str("memory"),
            Strategy::Even => f.write_str("even"),
            Strategy::Throughput => f.write_str("throughput"),
            Strategy::Split(counts) => {
                for (i, c) in counts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a strategy or split does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseStrategyError {
    /// Neither `memory`, `even`, nor something starting with a digit; holds the input.
    #[error("unknown strategy '{0}': expected 'memory', 'even', 'throughput' or layer counts such as '10,20'")]
    Unknown(String),
    #[error("bad layer count '{item}' in split '{split}': expected comma-separated whole numbers such as '10,20'")]
    /// One comma-separated item of a split is not a `u32`.
    BadCount {
        /// The whole split as given.
        split: String,
        /// The item that does not parse (trimmed).
        item: String,
    },
}

/// What to plan for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanOptions {
    /// KV cells, shared by all sequences (at least 1).
    pub n_ctx: u32,
    /// Tokens per forward pass (at least 1; at most `n_ctx` is used).
    pub n_batch: u32,
    /// Sequences that share the KV cache (at least 1).
    pub n_seq_max: u32,
    /// How the layers that are not local divide between the devices.
    pub strategy: Strategy,
    /// The first `local_layers` layers run on the coordinator's CPU.
    pub local_layers: u32,
    /// Bytes to leave free on each device (and on the coordinator).
    pub reserve: u64,
    /// Free memory of the coordinator for its local layers; `None` leaves
    /// the local stage unchecked.
    pub local_free: Option<u64>,
    /// Whether the output matrix is split over the devices with layers
    /// ([`head`]).
    pub head_split: HeadSplit,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            n_ctx: 4096,
            n_batch: 512,
            n_seq_max: 1,
            strategy: Strategy::Memory,
            local_layers: 0,
            reserve: DEFAULT_RESERVE,
            local_free: None,
            head_split: HeadSplit::Auto,
        }
    }
}

/// Where a stage runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// The coordinator's own ggml CPU backend.
    Local,
    /// A device of an rpc-server.
    Remote {
        /// Index into the `devices` given to [`plan`].
        server: usize,
        /// `host:port` of the server.
        endpoint: String,
        /// Index of the device on its server.
        device: u32,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Local => f.write_str("local CPU"),
            Target::Remote {
                endpoint, device, ..
            } => write!(f, "{endpoint}/{device}"),
        }
    }
}

/// A contiguous range of layers on one device, and what it costs there
/// (every size rounded up to the device's alignment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// The device the stage runs on.
    pub target: Target,
    /// The device's kind (the coordinator's own is its CPU).
    pub kind: DeviceKind,
    /// The layers it runs, a non-empty contiguous range.
    pub layers: Range<u32>,
    /// The layers' weights, plus tensors every stage needs.
    pub weight_bytes: u64,
    /// The part of `weight_bytes` that is routed experts (0 for a dense model).
    pub expert_bytes: u64,
    /// K and V of the layers.
    pub kv_bytes: u64,
    /// The compute buffer (the logits too on the last stage) and, with a
    /// measured cost, the input buffer.
    pub compute_bytes: u64,
    /// Output norm and output matrix on the last stage; with the head split
    /// ([`Plan::head_shares`]), the norm there and each share's rows, hidden
    /// states and logits on the stage of the share's device.
    pub output_bytes: u64,
    /// True for the last stage, which computes the logits.
    pub holds_output: bool,
    /// A spare graph slot of the stage's device with no layers (a second
    /// CPU device of its server, see [`slots`]): its prompt chunks run
    /// there, so its decode graph stays stored on the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spare_slot: Option<u32>,
    /// The device's free memory after this stage is loaded (the reserve is
    /// still free); `None` for a local stage without
    /// [`PlanOptions::local_free`].
    pub free_after: Option<u64>,
}

impl Stage {
    /// Number of layers in the stage.
    pub fn n_layers(&self) -> u32 {
        self.layers.end - self.layers.start
    }

    /// Everything the stage needs on its device.
    pub fn needed_bytes(&self) -> u64 {
        self.weight_bytes
            .saturating_add(self.kv_bytes)
            .saturating_add(self.compute_bytes)
            .saturating_add(self.output_bytes)
    }

    /// Whether the stage runs on the coordinator's CPU.
    pub fn is_local(&self) -> bool {
        self.target == Target::Local
    }
}

/// Where every layer runs: stages in layer order, covering `0..n_layer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The stages, in layer order; a local stage, if any, comes first.
    pub stages: Vec<Stage>,
    /// Number of layers of the model.
    pub n_layer: u32,
    /// KV cells planned for, shared by all sequences.
    pub n_ctx: u32,
    /// Tokens per forward pass planned for (at most `n_ctx`).
    pub n_batch: u32,
    /// Sequences that share the KV cache.
    pub n_seq_max: u32,
    /// The output matrix on the last stage is `token_embd.weight`.
    pub output_tied: bool,
    /// The strategy that placed the layers.
    pub strategy: Strategy,
    /// Bytes kept free on each device (and on the coordinator).
    pub reserve: u64,
    /// The output matrix split by rows over these devices, computed at once;
    /// empty when the last stage computes the whole head.
    pub head_shares: Vec<HeadShare>,
    /// Devices given but left out of layer placement: their kind cannot
    /// run the model, or they are a spare graph slot ([`slots`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<kind::Excluded>,
}

impl Plan {
    /// Index of the stage that runs layer `l`.
    pub fn stage_of_layer(&self, l: u32) -> Option<usize> {
        self.stages.iter().position(|s| s.layers.contains(&l))
    }

    /// The stage that runs layer `l`.
    pub fn stage_for_layer(&self, l: u32) -> Option<&Stage> {
        self.stage_of_layer(l).map(|i| &self.stages[i])
    }

    /// Where layer `l` runs.
    pub fn target_of_layer(&self, l: u32) -> Option<&Target> {
        self.stage_for_layer(l).map(|s| &s.target)
    }

    /// The stage that holds the output and computes the logits.
    pub fn last_stage(&self) -> &Stage {
        // A plan has at least one layer, so at least one stage.
        self.stages.last().expect("a plan has at least one stage")
    }

    /// How much of the output head stage `i` computes: all of it on the
    /// last stage, only the final norm there when the head is split.
    pub fn head_of(&self, i: usize) -> Head {
        if i + 1 != self.stages.len() {
            Head::None
        } else if self.head_shares.is_empty() {
            Head::Full
        } else {
            Head::Norm
        }
    }

    /// The stage on the coordinator's CPU, when there is one (always first).
    pub fn local_stage(&self) -> Option<&Stage> {
        self.stages.first().filter(|s| s.is_local())
    }

    /// Stages on rpc-servers, in order.
    pub fn remote_stages(&self) -> impl Iterator<Item = &Stage> {
        self.stages.iter().filter(|s| !s.is_local())
    }

    /// Everything all stages need.
    pub fn needed_bytes(&self) -> u64 {
        self.stages
            .iter()
            .map(Stage::needed_bytes)
            .fold(0, u64::saturating_add)
    }
}

/// Places `cost`'s layers on the coordinator (the first
/// [`PlanOptions::local_layers`]) and on `devices`, by
/// [`PlanOptions::strategy`], and checks that every stage fits.
///
/// The context, batch and sequence count come from `cost` (built with its
/// own options); `opts` gives the strategy, local layers, reserve and local
/// memory. A plan that does not fit names the first device that is short in
/// layer order, with the shortfall.
pub fn plan(
    cost: &ModelCost,
    devices: &[DeviceSpec],
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    plan_with_speeds(cost, devices, &[], opts)
}

/// [`plan`], with the speed of each device (in the order of `devices`;
/// `None` or missing where unknown) for [`Strategy::Throughput`]. Other
/// strategies ignore `speeds`; throughput without a speed for every device
/// places layers as [`Strategy::Memory`] does (the plan still says
/// `throughput`, and [`predict`] has nothing to say about those stages).
pub fn plan_with_speeds(
    cost: &ModelCost,
    devices: &[DeviceSpec],
    speeds: &[Option<DeviceSpeed>],
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    let n_layer = cost.n_layer();
    if n_layer == 0 {
        return Err(PlanError::NoLayers);
    }
    if opts.local_layers > n_layer {
        return Err(PlanError::TooManyLocalLayers {
            local_layers: opts.local_layers,
            n_layer,
        });
    }
    let n_remote = n_layer - opts.local_layers;
    if n_remote > 0 && devices.is_empty() {
        return Err(PlanError::NoDevices { layers: n_remote });
    }
    let spares = slots::spares(devices);
    let mut excluded = kind::excluded(cost, devices);
    if !matches!(opts.strategy, Strategy::Split(_)) {
        excluded.extend(slots::excluded(devices, &spares));
    }
    let (kept, kept_devices, kept_speeds, kept_opts) = if excluded.is_empty() {
        (
            (0..devices.len()).collect(),
            devices.to_vec(),
            speeds.to_vec(),
            opts.clone(),
        )
    } else {
        kind::without(&excluded, devices, speeds, opts)?
    };
    // The spare slot each kept device can run its share of the head in:
    // one that gets no layers (a split may give it some).
    let layers_on = |j: usize| match &kept_opts.strategy {
        Strategy::Split(c) => kept.iter().position(|&k| k == j).map_or(0, |k| c[k]),
        _ => 0,
    };
    let slot: Vec<Option<usize>> = kept
        .iter()
        .map(|&i| slots::slot_of(i, &spares).filter(|&j| layers_on(j) == 0))
        .collect();
    let free_slot: Vec<bool> = slot.iter().map(Option::is_some).collect();
    let mut p = plan_kept(cost, &kept_devices, &kept_speeds, &kept_opts, &free_slot)?;
    // Server indices point into the devices given, not the ones kept.
    for s in &mut p.stages {
        if let Target::Remote { server, .. } = &mut s.target {
            s.spare_slot = slot[*server].map(|j| devices[j].device);
            *server = kept[*server];
        }
    }
    for h in &mut p.head_shares {
        if let Target::Remote { server, .. } = h.target {
            h.target = match slot[server] {
                Some(j) => Target::Remote {
                    server: j,
                    endpoint: devices[j].endpoint.clone(),
                    device: devices[j].device,
                },
                None => p.stages[h.stage].target.clone(),
            };
        }
    }
    p.excluded = excluded;
    Ok(p)
}

/// [`plan_with_speeds`] on the devices that may hold layers; `free_slot`
/// says which of them has a spare graph slot for its share of the head.
fn plan_kept(
    cost: &ModelCost,
    devices: &[DeviceSpec],
    speeds: &[Option<DeviceSpeed>],
    opts: &PlanOptions,
    free_slot: &[bool],
) -> Result<Plan, PlanError> {
    let n_remote = cost.n_layer() - opts.local_layers;
    let placer = split::Placer::new(cost, devices, opts);
    let counts = match &opts.strategy {
        Strategy::Split(counts) => {
            if counts.len() != devices.len() {
                return Err(PlanError::SplitCount {
                    given: counts.len(),
                    devices: devices.len(),
                });
            }
            let sum: u64 = counts.iter().map(|&c| u64::from(c)).sum();
            if sum != u64::from(n_remote) {
                return Err(PlanError::SplitSum {
                    sum,
                    expected: n_remote,
                    n_layer: cost.n_layer(),
                    local_layers: opts.local_layers,
                });
            }
            counts.clone()
        }
        Strategy::Even => split::even(n_remote, devices.len()),
        Strategy::Memory => placer.memory_counts(n_remote),
        Strategy::Throughput if n_remote == 0 => vec![0; devices.len()],
        Strategy::Throughput => speed::throughput_counts(
            &placer,
            cost,
            speeds,
            n_remote,
            opts.local_layers,
            opts.n_seq_max,
        )
        .unwrap_or_else(|| placer.memory_counts(n_remote)),
    };
    let mut plan = assemble(&placer, &counts, cost, devices, speeds, opts, free_slot)?;
    if opts.strategy == Strategy::Throughput && opts.head_split == HeadSplit::Auto {
        // The layer counts were chosen for a head on one device. A split
        // head needs devices with layers to share it with, so a plan that
        // uses more of them may now decode faster: try the plain ones.
        for alt in [
            split::even(n_remote, devices.len()),
            placer.memory_counts(n_remote),
        ] {
            if alt == counts {
                continue;
            }
            if let Ok(p) = assemble(&placer, &alt, cost, devices, speeds, opts, free_slot) {
                if head::faster_with_split(&p, &plan, cost, devices, speeds, free_slot) {
                    plan = p;
                }
            }
        }
    }
    Ok(plan)
}

/// The plan of `counts` layers per device, with the head split as
/// `opts` asks.
fn assemble(
    placer: &split::Placer<'_>,
    counts: &[u32],
    cost: &ModelCost,
    devices: &[DeviceSpec],
    speeds: &[Option<DeviceSpeed>],
    opts: &PlanOptions,
    free_slot: &[bool],
) -> Result<Plan, PlanError> {
    let stages = placer.stages(counts);
    placer.check(&stages)?;
    let mut plan = Plan {
        stages: stages.into_iter().map(|s| s.stage).collect(),
        n_layer: cost.n_layer(),
        n_ctx: cost.n_ctx,
        n_batch: cost.n_batch,
        n_seq_max: cost.n_seq_max,
        output_tied: cost.weights.output_tied,
        strategy: opts.strategy.clone(),
        reserve: opts.reserve,
        head_shares: Vec::new(),
        excluded: Vec::new(),
    };
    head::split_head(
        &mut plan,
        cost,
        devices,
        speeds,
        free_slot,
        opts.head_split,
        opts.reserve,
    );
    Ok(plan)
}
