//! Splitting the output head over the plan's servers.
//!
//! One stream waits for each stage in turn, so while one server computes the
//! others idle. The output matrix (a fifth of a small model's arithmetic per
//! token) is the part that splits with no exchange between the parts: each
//! device multiplies its own rows by the normalised hidden state, all at
//! once, and the coordinator puts the logits side by side (`exec::head`).
//! The last stage then stops at the final norm.
//!
//! The cost: one more round trip per token, and, since a server keeps one
//! graph per device, each device with both layers and a share sends both
//! graphs again every step. Whether that pays is the cost model's call
//! ([`HeadSplit::Auto`]); the rows go to each device in proportion to its
//! measured head speed.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::Serialize;

use super::cost::ACTIVATION_BYTES;
use super::cost::{OUTPUT, TOKEN_EMBD};
use super::speed::{DeviceSpeed, NEAR_TIE};
use super::{ModelCost, Plan, Target};

/// How much of the output head a stage computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// None: the stage returns its last layer's hidden state.
    None,
    /// The final norm only: the output matrix is split over devices
    /// (`graph::llama::build_head_shard` on each), which all need the normalised state.
    Norm,
    /// Norm and output matrix: the stage returns logits.
    Full,
}

impl From<bool> for Head {
    fn from(full: bool) -> Head {
        if full {
            Head::Full
        } else {
            Head::None
        }
    }
}

/// Rows of the output matrix are shared out in multiples of this.
pub const ROW_QUANTUM: u32 = 64;

/// Bytes a stage's graph takes on the wire per layer (about forty tensors
/// of 296 bytes), sent again each step when a share of the head takes
/// turns with it on one device.
pub const GRAPH_BYTES_PER_LAYER: u64 = 12 << 10;

/// Seconds a server spends per layer of a stage graph sent again (taking
/// it apart, building it anew), apart from the bytes on the wire: measured
/// on the development machine (CPU workers on loopback) as about 0.7 ms
/// for a 15-layer SmolLM2 stage against rerunning the stored graph.
pub const RESEND_S_PER_LAYER: f64 = 45e-6;

/// Whether the output head is split over the plan's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadSplit {
    /// For an engine serving one stream, when the cost model predicts a
    /// faster token (needs measured speeds, i.e. the throughput strategy).
    #[default]
    Auto,
    /// Never: the last stage holds the whole head.
    Off,
    /// Always, over every device with layers (by measured speed when known,
    /// else in equal shares).
    On,
}

impl FromStr for HeadSplit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(HeadSplit::Auto),
            "off" => Ok(HeadSplit::Off),
            "on" => Ok(HeadSplit::On),
            other => Err(format!(
                "unknown head split '{other}': expected auto, off or on"
            )),
        }
    }
}

impl fmt::Display for HeadSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeadSplit::Auto => "auto",
            HeadSplit::Off => "off",
            HeadSplit::On => "on",
        })
    }
}

/// Rows of the output matrix computed on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeadShare {
    /// The device: the one that runs stage `stage`, or that device's spare
    /// graph slot ([`super::slots`]: the same memory, its own stored graph).
    pub target: Target,
    /// The stage whose device's memory holds the share.
    pub stage: usize,
    /// Its rows (vocabulary ids), contiguous; the shares follow each other
    /// from 0 to the vocabulary size.
    pub rows: Range<u32>,
}

/// Bytes of one row of the output matrix, and the matrix's name.
fn matrix(cost: &ModelCost) -> Option<(u64, u64)> {
    let name = if cost.weights.output_tied {
        TOKEN_EMBD
    } else {
        OUTPUT
    };
    let t = cost.weights.output.iter().find(|t| t.name == name)?;
    let n_vocab = u64::from(cost.shape.n_vocab.max(1));
    Some((t.bytes, t.bytes / n_vocab))
}

fn align(bytes: u64, alignment: u64) -> u64 {
    let a = alignment.max(1);
    bytes.div_ceil(a).saturating_mul(a)
}

/// What a share of `rows` rows needs on a device: the rows, the hidden
/// states in and the logits out for `outputs` tokens.
pub fn share_bytes(cost: &ModelCost, rows: u32, outputs: u32, alignment: u64) -> u64 {
    let row_bytes = matrix(cost).map_or(0, |(_, r)| r);
    let a = |b| align(b, alignment);
    a(row_bytes.saturating_mul(u64::from(rows)))
        .saturating_add(a(ACTIVATION_BYTES
            * u64::from(cost.shape.n_embd)
            * u64::from(outputs)))
        .saturating_add(a(ACTIVATION_BYTES * u64::from(rows) * u64::from(outputs)))
}

/// Rows for each of `weights.len()` devices in proportion to `weights`, in
/// multiples of [`ROW_QUANTUM`], the last taking what is left.
fn shares(n_vocab: u32, weights: &[f64]) -> Vec<u32> {
    let total: f64 = weights.iter().sum();
    let mut out = Vec::with_capacity(weights.len());
    let mut given = 0u32;
    for (i, w) in weights.iter().enumerate() {
        let rows = if i + 1 == weights.len() {
            n_vocab - given
        } else {
            let ideal = f64::from(n_vocab) * w / total;
            let q = ((ideal / f64::from(ROW_QUANTUM)).round() as u32) * ROW_QUANTUM;
            q.min(n_vocab - given)
        };
        given += rows;
        out.push(rows);
    }
    out
}

/// Seconds one share of `rows` rows takes a step of `outputs` outputs on a
/// device with speed `s` whose stage has `stage_layers` layers (its graph
/// and the share's take turns in the device's one graph slot; 0 for a share
/// in a spare slot, which evicts nothing).
pub(crate) fn share_s(
    cost: &ModelCost,
    s: &DeviceSpeed,
    rows: u32,
    outputs: u32,
    stage_layers: u32,
) -> f64 {
    let n_vocab = f64::from(cost.shape.n_vocab.max(1));
    let embd = ACTIVATION_BYTES * u64::from(cost.shape.n_embd) * u64::from(outputs);
    let logits = ACTIVATION_BYTES * u64::from(rows) * u64::from(outputs);
    s.rtt_s
        + s.overhead_s
        + s.transfer_s(embd)
        + s.transfer_s(logits)
        + s.transfer_s(GRAPH_BYTES_PER_LAYER * u64::from(stage_layers))
        + RESEND_S_PER_LAYER * f64::from(stage_layers)
        + s.head.at(outputs.max(1)) * f64::from(rows) / n_vocab
}

/// Seconds a step of `outputs` outputs spends on the head: whole on the
/// last stage's device `last` (what it adds to that stage), or split as
/// `split` (device index into `speeds`, rows, layers of the stage graph it
/// evicts), the slowest share plus the last stage's graph sent again
/// (`last_layers`: 0 when nothing evicts it).
pub(crate) fn head_step_s(
    cost: &ModelCost,
    speeds: &[Option<DeviceSpeed>],
    last: usize,
    last_layers: u32,
    split: Option<&[(usize, u32, u32)]>,
    outputs: u32,
) -> Option<f64> {
    let sp = |i: usize| speeds.get(i).and_then(Option::as_ref);
    let s = sp(last)?;
    match split {
        None => {
            let logits = ACTIVATION_BYTES * u64::from(cost.shape.n_vocab) * u64::from(outputs);
            Some(s.head.at(outputs.max(1)) + s.transfer_s(logits))
        }
        Some(parts) => {
            let mut worst: f64 = 0.0;
            for &(i, rows, layers) in parts {
                worst = worst.max(share_s(cost, sp(i)?, rows, outputs, layers));
            }
            Some(
                worst
                    + s.transfer_s(GRAPH_BYTES_PER_LAYER * u64::from(last_layers))
                    + RESEND_S_PER_LAYER * f64::from(last_layers),
            )
        }
    }
}

/// Splits `plan`'s output head when `mode` asks for it (and, for
/// [`HeadSplit::Auto`], the engine serves one stream and the cost model
/// predicts a faster token), moving the output matrix's bytes from the last stage to the
/// shares' stages. Leaves the plan alone where the head cannot be split:
/// a local last stage, a single device, a share that does not fit.
pub(super) fn split_head(
    plan: &mut Plan,
    cost: &ModelCost,
    devices: &[super::DeviceSpec],
    speeds: &[Option<DeviceSpeed>],
    free_slot: &[bool],
    mode: HeadSplit,
    reserve: u64,
) {
    if mode == HeadSplit::Off || plan.stages.len() < 2 {
        return;
    }
    let Some((matrix_bytes, _)) = matrix(cost) else {
        return;
    };
    let last = plan.stages.len() - 1;
    let Target::Remote {
        server: last_server,
        ..
    } = plan.stages[last].target
    else {
        return;
    };
    // Devices with a stage on them, in stage order.
    let used: Vec<(usize, usize)> = plan
        .stages
        .iter()
        .enumerate()
        .filter_map(|(k, s)| match s.target {
            Target::Remote { server, .. } => Some((k, server)),
            Target::Local => None,
        })
        .collect();
    if used.len() < 2 {
        return;
    }
    let known = used
        .iter()
        .all(|&(_, i)| speeds.get(i).and_then(Option::as_ref).is_some());
    if mode == HeadSplit::Auto && !known {
        return;
    }
    // With several streams the pipeline already keeps every server busy:
    // the split then only adds a stage and graphs sent again (measured:
    // 8 streams went from 2.1x to 1.6x one stream with it).
    if mode == HeadSplit::Auto && plan.n_seq_max > 1 {
        return;
    }
    let weights: Vec<f64> = used
        .iter()
        .map(|&(_, i)| match speeds.get(i).and_then(Option::as_ref) {
            Some(s) if known => 1.0 / s.head.at(1).max(1e-9),
            _ => 1.0,
        })
        .collect();
    let rows = shares(cost.shape.n_vocab, &weights);
    let parts: Vec<(usize, usize, u32)> = used
        .iter()
        .zip(&rows)
        .filter(|(_, &r)| r > 0)
        .map(|(&(k, i), &r)| (k, i, r))
        .collect();
    if parts.len() < 2 {
        return;
    }
    if mode == HeadSplit::Auto {
        let evicts = |k: usize, i: usize| {
            if free_slot.get(i).copied().unwrap_or(false) {
                0
            } else {
                plan.stages[k].n_layers()
            }
        };
        let model: Vec<(usize, u32, u32)> = parts
            .iter()
            .map(|&(k, i, r)| (i, r, evicts(k, i)))
            .collect();
        let last_layers = evicts(last, last_server);
        let whole = head_step_s(cost, speeds, last_server, last_layers, None, 1);
        let split = head_step_s(cost, speeds, last_server, last_layers, Some(&model), 1);
        let one_stream: f64 = used
            .iter()
            .filter_map(|&(k, i)| {
                let s = speeds.get(i)?.as_ref()?;
                Some(s.stage_s(cost, plan.stages[k].n_layers(), 1, 1, false))
            })
            .sum();
        match (whole, split) {
            (Some(w), Some(s)) if one_stream + s < (one_stream + w) * (1.0 - NEAR_TIE) => {}
            _ => return,
        }
    }
    // Memory: each share on its stage's device, the matrix off the last.
    let outputs = plan.n_seq_max.min(plan.n_batch).max(1);
    let mut added = vec![0u64; plan.stages.len()];
    for &(k, i, r) in &parts {
        let alignment = devices.get(i).map_or(1, |d| d.alignment.max(1));
        added[k] = share_bytes(cost, r, outputs, alignment);
    }
    let last_alignment = devices.get(last_server).map_or(1, |d| d.alignment.max(1));
    let freed = align(matrix_bytes, last_alignment);
    for (k, s) in plan.stages.iter().enumerate() {
        let Some(free) = s.free_after else { continue };
        let back = if k == last { freed } else { 0 };
        if free.saturating_add(back) < added[k].saturating_add(reserve) {
            return;
        }
    }
    let mut start = 0u32;
    let mut shares_out = Vec::with_capacity(parts.len());
    for &(k, _, r) in &parts {
        shares_out.push(HeadShare {
            target: plan.stages[k].target.clone(),
            stage: k,
            rows: start..start + r,
        });
        start += r;
    }
    for (k, s) in plan.stages.iter_mut().enumerate() {
        let back = if k == last { freed } else { 0 };
        s.output_bytes = s.output_bytes.saturating_sub(back).saturating_add(added[k]);
        s.free_after = s
            .free_after
            .map(|f| f.saturating_add(back).saturating_sub(added[k]));
    }
    plan.head_shares = shares_out;
}

/// Whether `alt`, a plan with a split head, decodes one stream faster than
/// `base` by more than [`NEAR_TIE`]; never for an engine serving several
/// streams (see [`split_head`]).
pub(super) fn faster_with_split(
    alt: &Plan,
    base: &Plan,
    cost: &ModelCost,
    devices: &[super::DeviceSpec],
    speeds: &[Option<DeviceSpeed>],
    free_slot: &[bool],
) -> bool {
    if alt.head_shares.is_empty() || base.n_seq_max > 1 {
        return false;
    }
    let known = |p: &Plan| {
        p.stages.iter().all(|s| match s.target {
            Target::Remote { server, .. } => speeds.get(server).is_some_and(Option::is_some),
            Target::Local => false,
        })
    };
    if !known(alt) || !known(base) {
        return false;
    }
    let streams = super::speed::LOAD_STREAMS;
    let a = super::speed::predict_slots(alt, cost, devices, speeds, streams, 1, free_slot);
    let b = super::speed::predict_slots(base, cost, devices, speeds, streams, 1, free_slot);
    a.decode_tok_s > b.decode_tok_s * (1.0 + NEAR_TIE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_weights_in_whole_quanta() {
        assert_eq!(shares(49152, &[1.0, 1.0]), vec![24576, 24576]);
        let s = shares(1000, &[3.0, 1.0]);
        assert_eq!(s.iter().sum::<u32>(), 1000);
        assert_eq!(s[0] % ROW_QUANTUM, 0);
        assert_eq!(s[0], 768);
        // A device too slow for one quantum gets no rows.
        assert_eq!(shares(100, &[1.0, 0.001]), vec![100, 0]);
        assert_eq!(shares(100, &[0.001, 1.0]), vec![0, 100]);
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [HeadSplit::Auto, HeadSplit::Off, HeadSplit::On] {
            assert_eq!(m.to_string().parse::<HeadSplit>(), Ok(m));
        }
        assert!("sometimes"
            .parse::<HeadSplit>()
            .unwrap_err()
            .contains("auto, off or on"));
    }
}
