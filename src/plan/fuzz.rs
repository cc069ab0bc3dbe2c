//! The chain the `gguf_plan` fuzz target drives, kept here so that the fuzz
//! target and the stable-Rust driver test exercise the same code: bytes →
//! GGUF → hyperparameters cross-checked against the tensors → cost → plan,
//! against a fixed cluster that needs no servers.

use crate::gguf::Gguf;

use super::{plan, DeviceSpec, ModelCost, Plan, PlanError, PlanOptions, Strategy};

/// A fixed cluster: two roomy devices with different alignments, and one
/// small device whose buffers are capped, so plans that fit, plans that do
/// not, and the per-device rounding are all reached. The capped ones read
/// as GPUs ([`super::DeviceKind`]), so models whose heads a GPU cannot take
/// are planned around them.
pub fn devices() -> Vec<DeviceSpec> {
    let device = |port: u16, free: u64, alignment: u64, max_size: u64| DeviceSpec {
        endpoint: format!("127.0.0.1:{port}"),
        device: 0,
        free,
        total: free,
        alignment,
        max_size,
    };
    vec![
        device(1, 8 << 30, 32, 0),
        device(2, 4 << 30, 64, 1 << 30),
        device(3, 512 << 20, 4096, 64 << 20),
    ]
}

/// Options for each strategy the planner has, at a small context.
pub fn options() -> Vec<PlanOptions> {
    let base = PlanOptions {
        n_ctx: 256,
        n_batch: 64,
        n_seq_max: 2,
        reserve: 16 << 20,
        ..PlanOptions::default()
    };
    vec![
        base.clone(),
        PlanOptions {
            strategy: Strategy::Even,
            local_layers: 1,
            local_free: Some(1 << 30),
            ..base.clone()
        },
        PlanOptions {
            // The CPU device: the seed's 4-wide heads run on no GPU.
            strategy: Strategy::Split(vec![2, 0, 0]),
            ..base
        },
    ]
}

/// Parses `bytes` as a model and plans it with each of [`options`] on
/// [`devices`]. Checks that every plan it makes covers each layer exactly
/// once, in order, and panics if not: the fuzzer's signal that the planner
/// is wrong. Returns the plans, or the first error (after trying every
/// option, so one refused strategy does not hide the others).
pub fn plan_bytes(bytes: &[u8]) -> Result<Vec<Plan>, PlanError> {
    let gguf = Gguf::from_bytes(bytes.to_vec())?;
    let devices = devices();
    let mut plans = Vec::new();
    let mut first_err = None;
    for opts in options() {
        let made = ModelCost::from_gguf(&gguf, &opts).and_then(|cost| {
            let p = plan(&cost, &devices, &opts)?;
            assert_covers(&p, cost.n_layer());
            Ok(p)
        });
        match made {
            Ok(p) => plans.push(p),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(plans),
    }
}

fn assert_covers(p: &Plan, n_layer: u32) {
    let mut next = 0;
    for s in &p.stages {
        assert_eq!(s.layers.start, next, "stages are contiguous");
        assert!(s.layers.end > s.layers.start, "no stage is empty");
        next = s.layers.end;
    }
    assert_eq!(next, n_layer, "the stages cover every layer");
}
