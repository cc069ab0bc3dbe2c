//! Speed: how long a stage takes, predicted from measured (or described)
//! device and link facts, and the throughput strategy that picks layer
//! counts to make tokens come fastest.
//!
//! Pure, like the rest of the planner: the facts come in as
//! [`DeviceSpeed`] values (measured by `crate::measure`, or built from a
//! cluster description by [`DeviceSpeed::roofline`]).
//!
//! The cost model. A step sends the hidden state of `n` tokens to each stage
//! in turn, through the coordinator, and waits for its answer (one round
//! trip: inputs and the graph run are pipelined, the output read waits), so
//! a stage of `k` layers costs
//!
//! ```text
//! rtt + overhead + bytes_in/bandwidth + bytes_out/bandwidth + k * layer(n) [+ head(outputs)]
//! ```
//!
//! where the last stage returns logits instead of the hidden state and adds
//! the output head. One stream waits for every stage in turn (the sum);
//! under load a pipelined engine is limited by its slowest stage.

use serde::Serialize;

use super::cost::ACTIVATION_BYTES;
use super::split::Placer;
use super::{ModelCost, Plan, Target};

/// Relative slack within which a plan counts as tied with the fastest one
/// for a single stream; among those, the one with the fastest slowest stage
/// (the rate under load) wins.
pub const NEAR_TIE: f64 = 0.02;

/// How much of one stream's speed an engine serving several streams gives
/// up, at most, for a faster slowest stage (its rate under load, since it
/// pipelines them): enough to take a second server on a fast link, far
/// too little to put a stage behind a slow one.
pub const LOAD_TIE: f64 = 0.10;

/// Streams the "under load" figures assume (prompted by the 8-stream bench).
pub const LOAD_STREAMS: u32 = 8;

/// Time as a function of the tokens in a batch: measured points, linear
/// between them, proportional past the last.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Curve(pub Vec<(u32, f64)>);

impl Curve {
    /// Seconds for a batch of `n` tokens (0 for an empty curve).
    pub fn at(&self, n: u32) -> f64 {
        let pts = &self.0;
        let Some(&(n0, t0)) = pts.first() else {
            return 0.0;
        };
        if n <= n0 {
            return t0;
        }
        for w in pts.windows(2) {
            let ((a, ta), (b, tb)) = (w[0], w[1]);
            if n <= b && b > a {
                let f = f64::from(n - a) / f64::from(b - a);
                return ta + f * (tb - ta);
            }
        }
        let (nl, tl) = pts[pts.len() - 1];
        tl * f64::from(n) / f64::from(nl.max(1))
    }
}

/// How fast one device computes and how far it is from the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DeviceSpeed {
    /// Seconds one transformer layer takes, by tokens in the batch.
    pub layer: Curve,
    /// Seconds the output head (norm, output matrix) takes, by outputs.
    pub head: Curve,
    /// Fixed seconds per step on the device, apart from the link (graph
    /// launch, the server's own bookkeeping).
    pub overhead_s: f64,
    /// Round-trip time of the link, seconds.
    pub rtt_s: f64,
    /// Link bandwidth, bytes per second (each way).
    pub bandwidth: f64,
}

impl DeviceSpeed {
    /// A device described rather than measured: memory bandwidth and
    /// arithmetic rate, a layer taking the longer of reading its weights and
    /// doing its multiply-adds (two flops per weight per token).
    pub fn roofline(
        cost: &ModelCost,
        mem_gbps: f64,
        gflops: f64,
        rtt_s: f64,
        link_bps: f64,
    ) -> Self {
        let layer_bytes = average_layer_bytes(cost) as f64;
        let s = &cost.shape;
        let (e, ff, kv) = (f64::from(s.n_embd), f64::from(s.n_ff), s.n_embd_kv() as f64);
        let layer_params = e * (2.0 * e + 2.0 * kv) + 3.0 * e * ff;
        let head_bytes = head_bytes(cost) as f64;
        let head_params = e * f64::from(s.n_vocab);
        let point = |bytes: f64, params: f64, n: u32| {
            let read = bytes / (mem_gbps.max(1e-9) * 1e9);
            let math = 2.0 * params * f64::from(n) / (gflops.max(1e-9) * 1e9);
            (n, read.max(math))
        };
        let curve = |bytes, params| {
            Curve(
                [1, 8, 64, 512]
                    .iter()
                    .map(|&n| point(bytes, params, n))
                    .collect(),
            )
        };
        DeviceSpeed {
            layer: curve(layer_bytes, layer_params),
            head: curve(head_bytes, head_params),
            overhead_s: 0.0,
            rtt_s,
            bandwidth: link_bps / 8.0,
        }
    }

    pub(crate) fn transfer_s(&self, bytes: u64) -> f64 {
        if self.bandwidth > 0.0 {
            bytes as f64 / self.bandwidth
        } else {
            0.0
        }
    }

    /// Seconds a stage of `layers` layers takes on this device for a batch
    /// of `n_tokens` tokens of which `n_outputs` want logits; `head` when it
    /// is the last stage.
    pub fn stage_s(
        &self,
        cost: &ModelCost,
        layers: u32,
        n_tokens: u32,
        n_outputs: u32,
        head: bool,
    ) -> f64 {
        let embd = ACTIVATION_BYTES * u64::from(cost.shape.n_embd);
        let sent = embd * u64::from(n_tokens);
        let back = if head {
            ACTIVATION_BYTES * u64::from(cost.shape.n_vocab) * u64::from(n_outputs)
        } else {
            sent
        };
        let head_s = if head {
            self.head.at(n_outputs.max(1))
        } else {
            0.0
        };
        self.rtt_s
            + self.overhead_s
            + self.transfer_s(sent)
            + self.transfer_s(back)
            + f64::from(layers) * self.layer.at(n_tokens)
            + head_s
    }
}

fn average_layer_bytes(cost: &ModelCost) -> u64 {
    let n = cost.weights.layers.len().max(1) as u64;
    (0..cost.n_layer())
        .map(|l| cost.weights.layer_bytes(l))
        .sum::<u64>()
        / n
}

fn head_bytes(cost: &ModelCost) -> u64 {
    cost.weights.output.iter().map(|t| t.bytes).sum()
}

/// Predicted time of one stage of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageTime {
    /// Milliseconds per decode step of one stream.
    pub decode_ms: f64,
    /// Milliseconds per decode step of [`Prediction::streams`] streams batched.
    pub load_ms: f64,
    /// Milliseconds per prompt chunk of [`Prediction::prompt_chunk`] tokens.
    pub prompt_ms: f64,
}

/// A device the plan gives no layers, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeftOut {
    /// `host:port` of its server.
    pub endpoint: String,
    /// Index of the device on its server.
    pub device: u32,
    /// Why, in words.
    pub reason: String,
}

/// What a plan should do, by the cost model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// One entry per stage of the plan, in order (`None` for a stage
    /// without speed facts: the coordinator's CPU is not measured).
    pub stages: Vec<Option<StageTime>>,
    /// The split output head ([`Plan::head_shares`]) as one more stage
    /// after the last: its slowest share; `None` when not split.
    pub head: Option<StageTime>,
    /// Tokens per second of one stream decoding.
    pub decode_tok_s: f64,
    /// Prompt tokens per second of one stream.
    pub prompt_tok_s: f64,
    /// Tokens per prompt chunk assumed.
    pub prompt_chunk: u32,
    /// Streams decoding together in the load figures.
    pub streams: u32,
    /// Generated tokens per second of all streams together when every step
    /// goes through the stages one after the other (batched, not pipelined).
    pub load_tok_s: f64,
    /// The same when stages work on different batches at once (pipelined):
    /// the slowest stage sets the rate.
    pub pipelined_tok_s: f64,
    /// Seconds to upload the weights, every server at once at its link's
    /// bandwidth (a server's cache makes it less).
    pub load_s: f64,
    /// Devices the plan leaves out.
    pub left_out: Vec<LeftOut>,
}

/// Predicts `plan`'s speed from `speeds` (one per device given to the
/// planner, `None` when unknown), for `streams` streams under load and
/// prompts processed in chunks of `prompt_chunk` tokens.
pub fn predict(
    plan: &Plan,
    cost: &ModelCost,
    devices: &[super::DeviceSpec],
    speeds: &[Option<DeviceSpeed>],
    streams: u32,
    prompt_chunk: u32,
) -> Prediction {
    predict_slots(plan, cost, devices, speeds, streams, prompt_chunk, &[])
}

/// [`predict`], where `free_slot` says which devices (by index into
/// `devices`) run their share of a split head in a spare graph slot even
/// though the plan's share names the device itself (the planner's view
/// before it moves the shares there; see [`super::slots`]).
pub(crate) fn predict_slots(
    plan: &Plan,
    cost: &ModelCost,
    devices: &[super::DeviceSpec],
    speeds: &[Option<DeviceSpeed>],
    streams: u32,
    prompt_chunk: u32,
    free_slot: &[bool],
) -> Prediction {
    let streams = streams.max(1);
    let chunk = prompt_chunk.max(1);
    let times: Vec<Option<StageTime>> = plan
        .stages
        .iter()
        .map(|s| {
            let Target::Remote { server, .. } = &s.target else {
                return None;
            };
            let sp = speeds.get(*server)?.as_ref()?;
            let whole_head = s.holds_output && plan.head_shares.is_empty();
            let t = |n, o| 1e3 * sp.stage_s(cost, s.n_layers(), n, o, whole_head);
            Some(StageTime {
                decode_ms: t(1, 1),
                load_ms: t(streams, streams),
                prompt_ms: t(chunk, 1),
            })
        })
        .collect();
    let load_s = plan
        .stages
        .iter()
        .filter_map(|s| match &s.target {
            Target::Remote { server, .. } => {
                let sp = speeds.get(*server)?.as_ref()?;
                Some(sp.transfer_s(s.weight_bytes.saturating_add(s.output_bytes)))
            }
            Target::Local => None,
        })
        .fold(0.0, f64::max);
    let head = split_head_time(plan, cost, speeds, streams, free_slot);
    let mut known: Vec<&StageTime> = times.iter().flatten().collect();
    known.extend(head.as_ref().map(|(t, _)| t));
    let sum = |f: fn(&StageTime) -> f64| known.iter().map(|t| f(t)).sum::<f64>();
    let rate = |n: f64, ms: f64| if ms > 0.0 { 1e3 * n / ms } else { 0.0 };
    // Under load each device is busy with its stage and its share of the
    // head; the busiest sets the rate.
    let slowest = times
        .iter()
        .enumerate()
        .filter_map(|(k, t)| {
            let share = head.as_ref().map_or(0.0, |(_, per_stage)| per_stage[k]);
            Some(t.as_ref()?.load_ms + share)
        })
        .fold(0.0, f64::max);
    let used: Vec<usize> = plan
        .remote_stages()
        .filter_map(|s| match &s.target {
            Target::Remote { server, .. } => Some(*server),
            Target::Local => None,
        })
        .collect();
    let spares = super::slots::spares(devices);
    let left_out = devices
        .iter()
        .enumerate()
        .filter(|(i, _)| !used.contains(i))
        .map(|(i, d)| LeftOut {
            endpoint: d.endpoint.clone(),
            device: d.device,
            reason: if plan.head_shares.iter().any(|h| {
                matches!(&h.target, Target::Remote { server, .. } if *server == i)
            }) {
                "a spare graph slot: no layers; prompt chunks and a share of the output head"
                    .to_string()
            } else if let Some(p) = spares[i] {
                format!(
                    "a second graph slot of CPU device {} (the same memory): no layers; prompt chunks of its stage, if any",
                    devices[p].device
                )
            } else {
                left_out_reason(cost, plan, speeds, i)
            },
        })
        .collect();
    Prediction {
        stages: times.clone(),
        head: head.as_ref().map(|(t, _)| t.clone()),
        decode_tok_s: rate(1.0, sum(|t| t.decode_ms)),
        prompt_tok_s: rate(f64::from(chunk), sum(|t| t.prompt_ms)),
        prompt_chunk: chunk,
        streams,
        load_tok_s: rate(f64::from(streams), sum(|t| t.load_ms)),
        pipelined_tok_s: rate(f64::from(streams), slowest),
        load_s,
        left_out,
    }
}

/// The split head's times, and under load the milliseconds each stage's
/// device spends on its share; `None` without a split or speeds.
fn split_head_time(
    plan: &Plan,
    cost: &ModelCost,
    speeds: &[Option<DeviceSpeed>],
    streams: u32,
    free_slot: &[bool],
) -> Option<(StageTime, Vec<f64>)> {
    if plan.head_shares.is_empty() {
        return None;
    }
    let server = |t: &Target| match t {
        Target::Remote { server, .. } => Some(*server),
        Target::Local => None,
    };
    // The layers of the stage graph a share evicts from its device's one
    // graph slot: none for a share in a spare slot.
    let evicts = |h: &super::HeadShare| {
        let stage = plan.stages.get(h.stage)?;
        let own = h.target == stage.target
            && !server(&stage.target).is_some_and(|i| free_slot.get(i).copied().unwrap_or(false));
        Some(if own { stage.n_layers() } else { 0 })
    };
    let mut parts = Vec::new();
    for h in &plan.head_shares {
        // Speeds are the stage's device's: a spare slot is the same device.
        parts.push((
            server(&plan.stages.get(h.stage)?.target)?,
            h.rows.end - h.rows.start,
            evicts(h)?,
            h.stage,
        ));
    }
    let last_k = plan.stages.len().checked_sub(1)?;
    let last = &plan.stages[last_k];
    let last_evicted = match plan.head_shares.iter().find(|h| h.stage == last_k) {
        Some(h) => evicts(h)?,
        None => 0,
    };
    let model: Vec<(usize, u32, u32)> = parts.iter().map(|&(i, r, l, _)| (i, r, l)).collect();
    let at = |outputs| {
        super::head::head_step_s(
            cost,
            speeds,
            server(&last.target)?,
            last_evicted,
            Some(&model),
            outputs,
        )
        .map(|s| 1e3 * s)
    };
    let time = StageTime {
        decode_ms: at(1)?,
        load_ms: at(streams)?,
        prompt_ms: at(1)?,
    };
    let mut per_stage = vec![0.0; plan.stages.len()];
    for &(i, rows, layers, k) in &parts {
        let sp = speeds.get(i)?.as_ref()?;
        per_stage[k] = 1e3 * super::head::share_s(cost, sp, rows, streams, layers);
    }
    Some((time, per_stage))
}

fn left_out_reason(
    cost: &ModelCost,
    plan: &Plan,
    speeds: &[Option<DeviceSpeed>],
    i: usize,
) -> String {
    let Some(sp) = speeds.get(i).and_then(Option::as_ref) else {
        return format!("the {} strategy gave it no layers", plan.strategy);
    };
    // What one more stage costs a token however few layers it takes, next
    // to what a layer costs on the devices that were used.
    let entry_ms = 1e3 * sp.stage_s(cost, 0, 1, 1, false);
    let layer_ms = 1e3 * sp.layer.at(1);
    let best_ms = plan
        .remote_stages()
        .filter_map(|s| match &s.target {
            Target::Remote { server, .. } => speeds.get(*server)?.as_ref(),
            Target::Local => None,
        })
        .map(|o| 1e3 * o.layer.at(1))
        .fold(f64::INFINITY, f64::min);
    if best_ms.is_finite() {
        format!(
            "slows decoding: a stage there costs {entry_ms:.2} ms a token before any layer \
             (round trip {:.2} ms) and {layer_ms:.3} ms per layer, against {best_ms:.3} ms per layer on the devices used",
            1e3 * sp.rtt_s
        )
    } else {
        format!("slows decoding or has no room: {entry_ms:.2} ms a token per stage, {layer_ms:.3} ms per layer")
    }
}

/// Layer counts per device, among the memory-valid ones, by the cost
/// model: those whose slowest stage under [`LOAD_STREAMS`] streams is
/// fastest among the counts within a tie of the fastest single stream:
/// [`NEAR_TIE`] for one sequence (`streams` 1), [`LOAD_TIE`] for an engine
/// serving several, which pipelines them. `None` when a device has no
/// speed, or no counts fit.
pub(super) fn throughput_counts(
    placer: &Placer<'_>,
    cost: &ModelCost,
    speeds: &[Option<DeviceSpeed>],
    n_remote: u32,
    first_layer: u32,
    streams: u32,
) -> Option<Vec<u32>> {
    let m = placer.device_count();
    if speeds.len() != m || speeds.iter().any(Option::is_none) || m == 0 {
        return None;
    }
    let speeds: Vec<&DeviceSpeed> = speeds.iter().flatten().collect();
    let l = n_remote as usize;
    // cost[j][start][count][head]: None when it does not fit. Stage times
    // depend on the count only; memory depends on the range too.
    let stage = |j: usize, start: usize, c: usize, head: bool| -> Option<(f64, f64)> {
        let a = first_layer + start as u32;
        if !placer.fits(j, a..a + c as u32, head) {
            return None;
        }
        let one = speeds[j].stage_s(cost, c as u32, 1, 1, head);
        let load = speeds[j].stage_s(cost, c as u32, LOAD_STREAMS, LOAD_STREAMS, head);
        Some((one, load))
    };
    // Pass 1: the fastest single stream, any bottleneck.
    let best = solve(m, l, &stage, f64::INFINITY)?;
    // Pass 2: the smallest bottleneck whose best single-stream time stays
    // within the near tie; candidates are the stage times that can occur.
    let mut caps: Vec<f64> = Vec::new();
    for j in 0..m {
        for c in 1..=l {
            for head in [false, true] {
                if let Some((_, load)) = stage(j, 0, c, head) {
                    caps.push(load);
                }
            }
        }
    }
    caps.sort_by(f64::total_cmp);
    caps.dedup();
    let tie = if streams > 1 { LOAD_TIE } else { NEAR_TIE };
    let limit = best.0 * (1.0 + tie);
    let (mut lo, mut hi) = (0usize, caps.len());
    let mut chosen = best.1;
    while lo < hi {
        let mid = (lo + hi) / 2;
        match solve(m, l, &stage, caps[mid]) {
            Some((t, counts)) if t <= limit => {
                chosen = counts;
                hi = mid;
            }
            _ => lo = mid + 1,
        }
    }
    Some(chosen)
}

/// Dynamic programme over devices in order: the least sum of one-stream
/// stage times placing all `l` layers, each device one contiguous range
/// (possibly empty), no stage slower than `cap` under load, the last
/// non-empty device holding the head. Returns the time and the counts.
fn solve(
    m: usize,
    l: usize,
    stage: &dyn Fn(usize, usize, usize, bool) -> Option<(f64, f64)>,
    cap: f64,
) -> Option<(f64, Vec<u32>)> {
    let ok = |s: Option<(f64, f64)>| s.filter(|&(_, load)| load <= cap).map(|(one, _)| one);
    // g[j][k]: least time placing layers 0..k on devices 0..j, none of
    // them holding the head; back[j][k] the count device j-1 took.
    let mut g = vec![vec![f64::INFINITY; l + 1]; m + 1];
    let mut back = vec![vec![0usize; l + 1]; m + 1];
    g[0][0] = 0.0;
    for j in 0..m {
        for k in 0..=l {
            if g[j][k] < g[j + 1][k] {
                g[j + 1][k] = g[j][k];
                back[j + 1][k] = 0;
            }
        }
        for start in 0..l {
            if !g[j][start].is_finite() {
                continue;
            }
            for c in 1..l - start {
                let Some(t) = ok(stage(j, start, c, false)) else {
                    // Memory grows with the count: more will not fit either.
                    break;
                };
                let total = g[j][start] + t;
                if total < g[j + 1][start + c] {
                    g[j + 1][start + c] = total;
                    back[j + 1][start + c] = c;
                }
            }
        }
    }
    // The head's device j takes the last c layers; devices after it none.
    let mut best: Option<(f64, usize, usize)> = None;
    for (j, before) in g.iter().take(m).enumerate() {
        for c in 1..=l {
            let start = l - c;
            if !before[start].is_finite() {
                continue;
            }
            let Some(t) = ok(stage(j, start, c, true)) else {
                continue;
            };
            let total = before[start] + t;
            if best.is_none_or(|(b, _, _)| total < b) {
                best = Some((total, j, c));
            }
        }
    }
    let (total, j_head, c_head) = best?;
    let mut counts = vec![0u32; m];
    counts[j_head] = c_head as u32;
    let mut k = l - c_head;
    for j in (0..j_head).rev() {
        let c = back[j + 1][k];
        counts[j] = c as u32;
        k -= c;
    }
    Some((total, counts))
}
