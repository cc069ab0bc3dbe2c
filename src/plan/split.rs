//! Layer counts per device, and the stages and checks built from them.

use std::ops::Range;

use super::{
    DeviceKind, DeviceSpec, ModelCost, ParseStrategyError, PlanError, PlanOptions, Stage, Target,
    LOCAL_ALIGNMENT,
};

/// Layer counts from `10,20` (spaces around counts allowed).
pub fn parse_split(s: &str) -> Result<Vec<u32>, ParseStrategyError> {
    s.split(',')
        .map(|item| {
            let item = item.trim();
            item.parse::<u32>()
                .map_err(|_| ParseStrategyError::BadCount {
                    split: s.to_owned(),
                    item: item.to_owned(),
                })
        })
        .collect()
}

/// `n` layers over `devices` devices, the first `n % devices` one more.
pub(super) fn even(n: u32, devices: usize) -> Vec<u32> {
    let Ok(d) = u32::try_from(devices) else {
        // More than u32::MAX devices: one layer each on the first n.
        return (0..devices)
            .map(|i| u32::from((i as u64) < u64::from(n)))
            .collect();
    };
    if d == 0 {
        return Vec::new();
    }
    (0..d).map(|i| n / d + u32::from(i < n % d)).collect()
}

/// `n` layers in proportion to `weights`, by largest remainder: each device
/// gets the floor of its share, and the layers left over go to the largest
/// fractional parts (the earlier device on a tie). All-zero weights split
/// evenly.
pub(super) fn proportional(n: u32, weights: &[u64]) -> Vec<u32> {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if total == 0 {
        return even(n, weights.len());
    }
    let n128 = u128::from(n);
    let mut counts: Vec<u32> = weights
        .iter()
        // share <= n, so it fits in u32.
        .map(|&w| (n128 * u128::from(w) / total) as u32)
        .collect();
    let given: u32 = counts.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(n128 * u128::from(weights[i]) % total), i));
    for &i in order.iter().take((n - given) as usize) {
        counts[i] += 1;
    }
    counts
}

fn align(bytes: u64, alignment: u64) -> u64 {
    bytes.div_ceil(alignment).saturating_mul(alignment)
}

/// A stage with what the checks need to know about its device.
#[derive(Debug, Clone)]
pub(super) struct Built {
    pub stage: Stage,
    /// Index into the devices; `None` for the local stage.
    device: Option<usize>,
    /// Free bytes less the reserve; `None` when unknown.
    available: Option<u64>,
}

/// Builds and checks stages for one model, device list and options.
#[derive(Debug)]
pub(super) struct Placer<'a> {
    cost: &'a ModelCost,
    devices: &'a [DeviceSpec],
    opts: &'a PlanOptions,
    /// Per device, prefix sums of the aligned weight bytes of the layers:
    /// layers `a..b` weigh `prefix[b] - prefix[a]`.
    prefix: Vec<Vec<u64>>,
    local_prefix: Vec<u64>,
}

impl<'a> Placer<'a> {
    pub fn new(
        cost: &'a ModelCost,
        devices: &'a [DeviceSpec],
        opts: &'a PlanOptions,
    ) -> Placer<'a> {
        let prefix_for = |alignment: u64| {
            let mut sums = Vec::with_capacity(cost.weights.layers.len() + 1);
            let mut acc = 0u64;
            sums.push(acc);
            for tensors in &cost.weights.layers {
                let layer = tensors
                    .iter()
                    .map(|&b| align(b, alignment))
                    .fold(0, u64::saturating_add);
                acc = acc.saturating_add(layer);
                sums.push(acc);
            }
            sums
        };
        Placer {
            cost,
            devices,
            opts,
            prefix: devices.iter().map(|d| prefix_for(d.alignment())).collect(),
            local_prefix: prefix_for(LOCAL_ALIGNMENT),
        }
    }

    fn prefix_of(&self, device: Option<usize>) -> &[u64] {
        match device {
            Some(i) => &self.prefix[i],
            None => &self.local_prefix,
        }
    }

    fn alignment_of(&self, device: Option<usize>) -> u64 {
        device.map_or(LOCAL_ALIGNMENT, |i| self.devices[i].alignment())
    }

    fn kv_layer(&self, alignment: u64) -> u64 {
        align(self.cost.kv_tensor_bytes, alignment).saturating_mul(2)
    }

    fn compute(&self, alignment: u64, last: bool) -> u64 {
        self.cost.stage_compute_bytes(alignment, last)
    }

    fn output(&self, alignment: u64) -> u64 {
        self.cost
            .weights
            .output
            .iter()
            .map(|t| align(t.bytes, alignment))
            .fold(0, u64::saturating_add)
    }

    /// Aligned bytes of the experts of `layers`.
    fn experts(&self, alignment: u64, layers: &Range<u32>) -> u64 {
        let per_layer = &self.cost.weights.experts;
        layers
            .clone()
            .filter_map(|l| per_layer.get(l as usize))
            .flatten()
            .map(|&b| align(b, alignment))
            .fold(0, u64::saturating_add)
    }

    fn shared(&self, alignment: u64) -> u64 {
        self.cost
            .weights
            .shared
            .iter()
            .map(|t| align(t.bytes, alignment))
            .fold(0, u64::saturating_add)
    }

    fn build(&self, device: Option<usize>, layers: Range<u32>, last: bool) -> Built {
        let alignment = self.alignment_of(device);
        let prefix = self.prefix_of(device);
        let weights = prefix[layers.end as usize] - prefix[layers.start as usize];
        let n = u64::from(layers.end - layers.start);
        let expert_bytes = self.experts(alignment, &layers);
        let mut stage = Stage {
            target: match device {
                None => Target::Local,
                Some(i) => Target::Remote {
                    server: i,
                    endpoint: self.devices[i].endpoint.clone(),
                    device: self.devices[i].device,
                },
            },
            kind: device.map_or(DeviceKind::Cpu, |i| self.devices[i].kind()),
            layers,
            weight_bytes: weights.saturating_add(self.shared(alignment)),
            expert_bytes,
            kv_bytes: self
                .kv_layer(alignment)
                .saturating_mul(n)
                .saturating_add(align(self.cost.cell_pos_bytes, alignment)),
            compute_bytes: self.compute(alignment, last),
            output_bytes: if last { self.output(alignment) } else { 0 },
            holds_output: last,
            spare_slot: None,
            free_after: None,
        };
        let free = match device {
            Some(i) => Some(self.devices[i].free),
            None => self.opts.local_free,
        };
        stage.free_after = free.map(|f| f.saturating_sub(stage.needed_bytes()));
        Built {
            stage,
            device,
            available: free.map(|f| f.saturating_sub(self.opts.reserve)),
        }
    }

    /// The local stage (if any), then one stage per device with a non-zero
    /// count, in device order; the last holds the output.
    pub fn stages(&self, counts: &[u32]) -> Vec<Built> {
        let mut spans: Vec<(Option<usize>, Range<u32>)> = Vec::new();
        let mut at = 0u32;
        if self.opts.local_layers > 0 {
            at = self.opts.local_layers;
            spans.push((None, 0..at));
        }
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 {
                spans.push((Some(i), at..at + c));
                at += c;
            }
        }
        let last = spans.len().saturating_sub(1);
        spans
            .into_iter()
            .enumerate()
            .map(|(k, (device, layers))| self.build(device, layers, k == last))
            .collect()
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Whether `layers` fit on device `i` (with the output when `last`):
    /// memory over the reserve and every buffer within the device's largest.
    pub fn fits(&self, i: usize, layers: Range<u32>, last: bool) -> bool {
        let b = self.build(Some(i), layers, last);
        self.spare(&b).is_some() && self.check_buffers(i, &b.stage).is_ok()
    }

    /// Bytes left over the reserve, or `None` when the stage does not fit.
    /// An unchecked local stage always fits.
    fn spare(&self, b: &Built) -> Option<u64> {
        match b.available {
            None => Some(u64::MAX),
            Some(avail) => avail.checked_sub(b.stage.needed_bytes()),
        }
    }

    /// Whether device `i` can hold a layer and a compute buffer within its
    /// largest buffer.
    fn hostable(&self, i: usize) -> bool {
        let d = &self.devices[i];
        let prefix = &self.prefix[i];
        let max_layer = prefix.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let limit = d.max_buffer();
        max_layer <= limit
            && self.kv_layer(d.alignment()) <= limit
            && self.compute(d.alignment(), false) <= limit
    }

    /// Counts in proportion to free memory, then rebalanced until every
    /// device fits or no move helps.
    pub fn memory_counts(&self, n_remote: u32) -> Vec<u32> {
        let hostable: Vec<bool> = (0..self.devices.len()).map(|i| self.hostable(i)).collect();
        let weights: Vec<u64> = self
            .devices
            .iter()
            .zip(&hostable)
            .map(|(d, &ok)| {
                if ok {
                    d.free.saturating_sub(self.opts.reserve)
                } else {
                    0
                }
            })
            .collect();
        let counts = proportional(n_remote, &weights);
        self.rebalance(counts, &hostable)
    }

    /// While a device is short, moves one of its layers to the device that
    /// has the most room left after taking it. Stops when all fit, or when
    /// no device can take a layer from the first short one.
    fn rebalance(&self, mut counts: Vec<u32>, hostable: &[bool]) -> Vec<u32> {
        let rounds = counts.iter().map(|&c| c as usize).sum::<usize>() * counts.len() + 1;
        for _ in 0..rounds {
            let built = self.stages(&counts);
            let Some(from) = built
                .iter()
                .find(|b| b.device.is_some() && self.spare(b).is_none())
                .and_then(|b| b.device)
            else {
                break;
            };
            let mut best: Option<(u64, Vec<u32>)> = None;
            for to in (0..counts.len()).filter(|&to| to != from && hostable[to]) {
                let mut moved = counts.clone();
                moved[from] -= 1;
                moved[to] += 1;
                let after = self.stages(&moved);
                let spare = after
                    .iter()
                    .find(|b| b.device == Some(to))
                    .and_then(|b| self.spare(b));
                if let Some(spare) = spare {
                    if best.as_ref().is_none_or(|(s, _)| spare > *s) {
                        best = Some((spare, moved));
                    }
                }
            }
            match best {
                Some((_, moved)) => counts = moved,
                None => break,
            }
        }
        counts
    }

    /// Checks stages in order: buffer limits, then memory. The first
    /// problem is the error.
    pub fn check(&self, stages: &[Built]) -> Result<(), PlanError> {
        for b in stages {
            if let Some(i) = b.device {
                self.check_buffers(i, &b.stage)?;
            }
            let (Some(available), None) = (b.available, self.spare(b)) else {
                continue;
            };
            let needed = b.stage.needed_bytes();
            let short_by = needed - available;
            let layers = b.stage.layers.clone();
            let reserve = self.opts.reserve;
            return Err(match b.device {
                Some(i) => PlanError::DoesNotFit {
                    endpoint: self.devices[i].endpoint.clone(),
                    device: self.devices[i].device,
                    layers,
                    needed,
                    available,
                    short_by,
                    reserve,
                },
                None => PlanError::LocalDoesNotFit {
                    layers,
                    needed,
                    available,
                    short_by,
                    reserve,
                },
            });
        }
        Ok(())
    }

    /// Each layer's weights, each layer's KV cache, the compute buffer and
    /// the output tensors must each fit in one buffer of the device.
    fn check_buffers(&self, i: usize, stage: &Stage) -> Result<(), PlanError> {
        let d = &self.devices[i];
        let limit = d.max_buffer();
        let err = |what: String, bytes: u64| PlanError::BufferTooLarge {
            endpoint: d.endpoint.clone(),
            device: d.device,
            what,
            bytes,
            max_size: limit,
        };
        let prefix = &self.prefix[i];
        for l in stage.layers.clone() {
            let bytes = prefix[l as usize + 1] - prefix[l as usize];
            if bytes > limit {
                return Err(err(format!("the weights of layer {l}"), bytes));
            }
        }
        let kv = self.kv_layer(d.alignment());
        if kv > limit {
            return Err(err("the KV cache of one layer".to_owned(), kv));
        }
        if stage.compute_bytes > limit {
            return Err(err("the compute buffer".to_owned(), stage.compute_bytes));
        }
        if stage.output_bytes > limit {
            return Err(err("the output tensors".to_owned(), stage.output_bytes));
        }
        Ok(())
    }
}
