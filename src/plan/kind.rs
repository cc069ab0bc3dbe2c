//! What kind of device a server offers, read from the two facts protocol
//! 7.0.0 reports about a device besides its memory (buffer alignment and
//! largest buffer), and which attention shapes each kind's kernels take.
//!
//! The protocol has no supports-op command and no device names, and a
//! server aborts on a graph its device cannot compute, so the planner keeps
//! a model off devices whose kind is known not to run its attention, and the
//! stages check their graphs against the same rules before sending them.
//!
//! Facts from the pinned ggml (llama-cpp-sys-2 0.1.161): the CPU buffer type
//! aligns to 32 bytes (`TENSOR_ALIGNMENT`) with no size limit; CUDA's (also
//! ROCm's and MUSA's, built from the same code) to 128 with no limit;
//! Metal's to 32 with the device's largest buffer as limit; Vulkan's, SYCL's
//! and OpenCL's to a device limit with a largest allocation. Flash attention
//! head sizes, with values as wide as keys: CUDA 40, 64, 72, 80, 96, 112,
//! 128, 256 (`ggml_cuda_get_best_fattn_kernel`); Metal 32, 40, 48, 64, 72,
//! 80, 96, 112, 128, 256 (`ggml_metal_device_supports_op`); for the others
//! the sizes every GPU backend takes, 64, 80, 96, 112, 128, 256.

use std::fmt;

use serde::Serialize;

use super::{DeviceSpec, ModelCost, PlanError, PlanOptions, Strategy};
use crate::plan::speed::DeviceSpeed;

/// A device's kind, inferred from its alignment and largest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// ggml's CPU backend.
    Cpu,
    /// A CUDA device (or ROCm/MUSA, which share ggml's CUDA code).
    CudaLike,
    /// An Apple GPU through Metal.
    Metal,
    /// Another GPU backend (Vulkan, SYCL, OpenCL): a limited buffer size.
    OtherGpu,
    /// None of the above patterns.
    Unknown,
}

/// Flash attention head sizes CUDA's kernels take (values as wide as keys).
const CUDA_HEADS: &[u32] = &[40, 64, 72, 80, 96, 112, 128, 256];
/// Flash attention head sizes Metal's kernels take.
const METAL_HEADS: &[u32] = &[32, 40, 48, 64, 72, 80, 96, 112, 128, 256];
/// Head sizes every GPU backend's flash attention takes.
const ANY_GPU_HEADS: &[u32] = &[64, 80, 96, 112, 128, 256];

impl DeviceKind {
    /// The kind whose buffer type reports `alignment` and `max_size`
    /// (`SIZE_MAX` of a 64- or 32-bit server, or 0, means no limit).
    pub fn infer(alignment: u64, max_size: u64) -> DeviceKind {
        let unlimited = max_size == 0 || max_size == u64::MAX || max_size == u64::from(u32::MAX);
        match (alignment, unlimited) {
            (32, true) => DeviceKind::Cpu,
            (128, true) => DeviceKind::CudaLike,
            (32, false) => DeviceKind::Metal,
            (_, false) => DeviceKind::OtherGpu,
            _ => DeviceKind::Unknown,
        }
    }

    /// Whether this is a GPU of some kind.
    pub fn is_gpu(self) -> bool {
        matches!(
            self,
            DeviceKind::CudaLike | DeviceKind::Metal | DeviceKind::OtherGpu
        )
    }

    /// A short name: `cpu`, `cuda`, `metal`, `gpu` or `unknown`.
    pub fn short(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::CudaLike => "cuda",
            DeviceKind::Metal => "metal",
            DeviceKind::OtherGpu => "gpu",
            DeviceKind::Unknown => "unknown",
        }
    }

    /// Why this kind of device cannot run flash attention over keys `k` and
    /// values `v` wide, or `None` when it can (or nothing is known against
    /// it: the CPU takes every size, and an unknown kind is not refused).
    pub fn attention_refusal(self, k: u32, v: u32) -> Option<String> {
        let heads = match self {
            DeviceKind::Cpu | DeviceKind::Unknown => return None,
            DeviceKind::CudaLike => CUDA_HEADS,
            DeviceKind::Metal => METAL_HEADS,
            DeviceKind::OtherGpu => ANY_GPU_HEADS,
        };
        if k != v {
            return Some(format!(
                "its flash attention needs values as wide as keys ({k} and {v} here)"
            ));
        }
        if !heads.contains(&k) {
            return Some(format!(
                "its flash attention takes heads {heads:?} wide, not {k}"
            ));
        }
        None
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "CPU",
            DeviceKind::CudaLike => "CUDA GPU",
            DeviceKind::Metal => "Metal GPU",
            DeviceKind::OtherGpu => "GPU (Vulkan/SYCL/OpenCL)",
            DeviceKind::Unknown => "unknown",
        })
    }
}

/// A device the plan leaves out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Excluded {
    /// `host:port` of its server.
    pub endpoint: String,
    /// Index of the device there.
    pub device: u32,
    /// Its kind, as inferred.
    pub kind: DeviceKind,
    /// Why it cannot run the model.
    pub reason: String,
}

impl DeviceSpec {
    /// The device's kind, inferred from its alignment and largest buffer.
    pub fn kind(&self) -> DeviceKind {
        DeviceKind::infer(self.alignment, self.max_size)
    }
}

/// The devices of `devices` whose kind cannot run `cost`'s attention.
pub(crate) fn excluded(cost: &ModelCost, devices: &[DeviceSpec]) -> Vec<Excluded> {
    let hd = cost.shape.head_dim;
    devices
        .iter()
        .filter_map(|d| {
            let kind = d.kind();
            kind.attention_refusal(hd, hd).map(|why| Excluded {
                endpoint: d.endpoint.clone(),
                device: d.device,
                kind,
                reason: format!("a {kind}: {why}"),
            })
        })
        .collect()
}

/// What [`without`] keeps.
type Kept = (
    Vec<usize>,
    Vec<DeviceSpec>,
    Vec<Option<DeviceSpeed>>,
    PlanOptions,
);

/// The indices of the devices kept, and `devices`, their `speeds` and
/// `opts` (a split's counts) without the `excluded` ones: an error when none
/// is left, or when a split gives one of them layers.
pub(crate) fn without(
    excluded: &[Excluded],
    devices: &[DeviceSpec],
    speeds: &[Option<DeviceSpeed>],
    opts: &PlanOptions,
) -> Result<Kept, PlanError> {
    let out = |d: &DeviceSpec| {
        excluded
            .iter()
            .find(|e| e.endpoint == d.endpoint && e.device == d.device)
    };
    if let Strategy::Split(counts) = &opts.strategy {
        for (d, &n) in devices.iter().zip(counts) {
            if let (Some(e), true) = (out(d), n > 0) {
                return Err(PlanError::SplitOnExcluded {
                    endpoint: e.endpoint.clone(),
                    device: e.device,
                    layers: n,
                    reason: e.reason.clone(),
                });
            }
        }
    }
    let keep: Vec<usize> = (0..devices.len())
        .filter(|&i| out(&devices[i]).is_none())
        .collect();
    if keep.is_empty() {
        let reasons = excluded
            .iter()
            .map(|e| format!("{} device {} is {}", e.endpoint, e.device, e.reason))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(PlanError::NoDeviceRuns { reasons });
    }
    let mut opts = opts.clone();
    if let Strategy::Split(counts) = &opts.strategy {
        opts.strategy = Strategy::Split(
            keep.iter()
                .filter_map(|&i| counts.get(i).copied())
                .collect(),
        );
    }
    Ok((
        keep.clone(),
        keep.iter().map(|&i| devices[i].clone()).collect(),
        keep.iter()
            .map(|&i| speeds.get(i).cloned().flatten())
            .collect(),
        opts,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_the_buffer_type_facts() {
        assert_eq!(DeviceKind::infer(32, u64::MAX), DeviceKind::Cpu);
        assert_eq!(DeviceKind::infer(32, u32::MAX as u64), DeviceKind::Cpu);
        assert_eq!(DeviceKind::infer(128, u64::MAX), DeviceKind::CudaLike);
        assert_eq!(DeviceKind::infer(32, 17 << 30), DeviceKind::Metal);
        assert_eq!(DeviceKind::infer(64, 1 << 30), DeviceKind::OtherGpu);
        assert_eq!(DeviceKind::infer(16, 4 << 30), DeviceKind::OtherGpu);
        assert_eq!(DeviceKind::infer(64, u64::MAX), DeviceKind::Unknown);
        assert!(DeviceKind::CudaLike.is_gpu() && !DeviceKind::Cpu.is_gpu());
    }

    #[test]
    fn attention_head_sizes_by_kind() {
        // SmolLM2 and most models: 64 or 128 everywhere.
        for k in [
            DeviceKind::Cpu,
            DeviceKind::CudaLike,
            DeviceKind::Metal,
            DeviceKind::OtherGpu,
        ] {
            assert_eq!(k.attention_refusal(64, 64), None, "{k}");
            assert_eq!(k.attention_refusal(128, 128), None, "{k}");
        }
        // Narrow test heads run on the CPU only.
        assert_eq!(DeviceKind::Cpu.attention_refusal(16, 16), None);
        let why = DeviceKind::CudaLike.attention_refusal(16, 16).unwrap();
        assert!(why.contains("not 16"), "{why}");
        assert!(DeviceKind::CudaLike.attention_refusal(72, 72).is_none());
        assert!(DeviceKind::OtherGpu.attention_refusal(72, 72).is_some());
        assert!(DeviceKind::Metal.attention_refusal(32, 32).is_none());
        assert!(DeviceKind::CudaLike.attention_refusal(128, 64).is_some());
        assert_eq!(DeviceKind::Unknown.attention_refusal(16, 16), None);
    }

    /// A model of 8 layers, heads `head_dim` wide, on the devices given.
    fn plan_on(
        head_dim: u32,
        devices: &[DeviceSpec],
        strategy: Strategy,
    ) -> Result<super::super::Plan, PlanError> {
        use crate::plan::{ModelShape, ModelWeights, TensorCost};
        let opts = PlanOptions {
            n_ctx: 256,
            n_batch: 64,
            strategy,
            ..PlanOptions::default()
        };
        let shape = ModelShape {
            n_layer: 8,
            n_embd: 256,
            n_ff: 512,
            n_head: 4,
            n_head_kv: 2,
            head_dim,
            n_vocab: 1000,
        };
        let weights = ModelWeights {
            layers: (0..8).map(|_| vec![1 << 20]).collect(),
            experts: Vec::new(),
            shared: Vec::new(),
            output: vec![TensorCost {
                name: "output.weight".into(),
                bytes: 1 << 20,
            }],
            output_tied: false,
            input_bytes: 1 << 20,
        };
        let cost = ModelCost::from_parts(shape, weights, &opts).unwrap();
        super::super::plan(&cost, devices, &opts)
    }

    fn device(port: u16, alignment: u64) -> DeviceSpec {
        DeviceSpec {
            endpoint: format!("10.0.0.1:{port}"),
            device: 0,
            free: 1 << 30,
            total: 1 << 30,
            alignment,
            max_size: u64::MAX,
        }
    }

    #[test]
    fn the_planner_keeps_a_model_off_devices_that_cannot_run_its_attention() {
        let devices = [device(1, 128), device(2, 32), device(3, 128)];
        // 64-wide heads: every device takes layers, the GPUs read as CUDA.
        let p = plan_on(64, &devices, Strategy::Even).unwrap();
        assert_eq!(p.stages.len(), 3);
        assert!(p.excluded.is_empty());
        assert_eq!(p.stages[0].kind, DeviceKind::CudaLike);
        assert_eq!(p.stages[1].kind, DeviceKind::Cpu);
        // 16-wide heads: the CUDA devices are left out, with the reason,
        // and the CPU server's index still points into the devices given.
        let p = plan_on(16, &devices, Strategy::Even).unwrap();
        assert_eq!(p.stages.len(), 1);
        assert!(matches!(
            &p.stages[0].target,
            super::super::Target::Remote { server: 1, .. }
        ));
        assert_eq!(p.excluded.len(), 2);
        assert!(p.excluded[0].reason.contains("not 16"), "{:?}", p.excluded);
        let text = p.to_string();
        assert!(text.contains("left out 10.0.0.1:1/0: a CUDA GPU"), "{text}");
        // A split may not give such a device layers; with none left, the
        // error names each device.
        let e = plan_on(16, &devices, Strategy::Split(vec![4, 4, 0])).unwrap_err();
        assert!(
            matches!(e, PlanError::SplitOnExcluded { layers: 4, .. }),
            "{e}"
        );
        let p = plan_on(16, &devices, Strategy::Split(vec![0, 8, 0])).unwrap();
        assert_eq!(p.stages[0].layers, 0..8);
        let e = plan_on(16, &[device(1, 128)], Strategy::Memory)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no device given can run this model: 10.0.0.1:1 device 0 is a CUDA GPU"),
            "{e}"
        );
    }
}
