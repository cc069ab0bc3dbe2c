//! ggml backends and devices.

use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use crate::context::{cstr_lossy, Context};
use crate::graph::Graph;
use crate::GgmlError;

/// What kind of hardware a [`Device`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A CPU.
    Cpu,
    /// A discrete GPU.
    Gpu,
    /// An integrated GPU.
    IntegratedGpu,
    /// An accelerator.
    Accelerator,
    /// Anything else ggml reports.
    Other,
}

/// A device registered in ggml's backend registry (the CPU, GPUs of a CUDA
/// build, ...).
#[derive(Debug, Clone, Copy)]
pub struct Device(NonNull<sys::ggml_backend_device>);

// SAFETY: devices are entries of ggml's global registry, created once and never
// freed; ggml's device functions are safe to call from any thread.
unsafe impl Send for Device {}
// SAFETY: as above; a Device is an immutable handle.
unsafe impl Sync for Device {}

impl Device {
    /// Every device ggml knows in this build.
    pub fn all() -> Vec<Device> {
        // SAFETY: registry queries with in-range indices.
        let n = unsafe { sys::ggml_backend_dev_count() };
        (0..n)
            // SAFETY: `i` < dev_count.
            .filter_map(|i| NonNull::new(unsafe { sys::ggml_backend_dev_get(i) }).map(Device))
            .collect()
    }

    /// The CPU device.
    pub fn cpu() -> Option<Device> {
        // SAFETY: registry query by enum value.
        let p = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
        NonNull::new(p).map(Device)
    }

    pub(crate) fn raw(&self) -> sys::ggml_backend_dev_t {
        self.0.as_ptr()
    }

    /// Short name, e.g. `CPU` or `CUDA0`.
    pub fn name(&self) -> String {
        // SAFETY: valid device; returns a string owned by the device.
        cstr_lossy(unsafe { sys::ggml_backend_dev_name(self.raw()) })
    }

    /// Human-readable description.
    pub fn description(&self) -> String {
        // SAFETY: valid device; returns a string owned by the device.
        cstr_lossy(unsafe { sys::ggml_backend_dev_description(self.raw()) })
    }

    /// Free and total memory in bytes.
    pub fn memory(&self) -> (usize, usize) {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid device and two valid out-pointers.
        unsafe { sys::ggml_backend_dev_memory(self.raw(), &mut free, &mut total) };
        (free, total)
    }

    /// Whether this device can compute `t`'s op with `t`'s types and shapes.
    /// A graph a server cannot compute aborts the server, so the coordinator
    /// checks every node before it sends a graph to a server of this kind.
    pub fn supports_op(&self, t: &crate::Tensor<'_>) -> bool {
        // SAFETY: valid device and live tensor; the call only inspects it.
        unsafe { sys::ggml_backend_dev_supports_op(self.raw(), t.raw()) }
    }

    /// Its kind.
    pub fn kind(&self) -> DeviceKind {
        // SAFETY: valid device.
        match unsafe { sys::ggml_backend_dev_type(self.raw()) } {
            sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
            sys::GGML_BACKEND_DEVICE_TYPE_GPU => DeviceKind::Gpu,
            sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceKind::IntegratedGpu,
            sys::GGML_BACKEND_DEVICE_TYPE_ACCEL => DeviceKind::Accelerator,
            _ => DeviceKind::Other,
        }
    }
}

/// ggml's CPU backend, used to compute graphs locally.
#[derive(Debug)]
pub struct CpuBackend(NonNull<sys::ggml_backend>);

// SAFETY: a backend has no thread affinity; `&mut self` on compute keeps it to
// one thread at a time.
unsafe impl Send for CpuBackend {}

impl CpuBackend {
    /// A CPU backend using `n_threads` threads.
    pub fn new(n_threads: usize) -> Result<Self, GgmlError> {
        // SAFETY: no arguments; null on failure is checked.
        let p = unsafe { sys::ggml_backend_cpu_init() };
        let ptr =
            NonNull::new(p).ok_or_else(|| GgmlError::Backend("CPU backend init failed".into()))?;
        let n = n_threads.clamp(1, i32::MAX as usize) as i32;
        // SAFETY: `ptr` is a CPU backend, as the function requires.
        unsafe { sys::ggml_backend_cpu_set_n_threads(ptr.as_ptr(), n) };
        Ok(Self(ptr))
    }

    /// Allocate backend memory for every tensor of `ctx` that has none. The
    /// buffer belongs to `ctx` from then on.
    pub fn alloc_context(&self, ctx: &Context) -> Result<(), GgmlError> {
        if ctx.tensors().iter().all(|t| t.is_allocated()) {
            return Ok(());
        }
        // SAFETY: live context and backend; ggml returns null on failure.
        let p = unsafe { sys::ggml_backend_alloc_ctx_tensors(ctx.raw(), self.0.as_ptr()) };
        let buf = NonNull::new(p).ok_or_else(|| {
            GgmlError::Backend("could not allocate a CPU buffer for the context".into())
        })?;
        ctx.buffers.borrow_mut().push(buf);
        Ok(())
    }

    /// Compute `graph`; every tensor in it must be allocated.
    pub fn compute(&mut self, graph: &Graph<'_>) -> Result<(), GgmlError> {
        graph.check_allocated()?;
        // SAFETY: live backend; every node and source has memory (checked), and
        // the graph's context outlives this call.
        let status = unsafe { sys::ggml_backend_graph_compute(self.0.as_ptr(), graph.raw()) };
        if status != sys::GGML_STATUS_SUCCESS {
            // SAFETY: ggml returns a static string for any status value.
            let msg = cstr_lossy(unsafe { sys::ggml_status_to_string(status) });
            return Err(GgmlError::Compute(msg));
        }
        Ok(())
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        // SAFETY: freed exactly once; buffers it allocated are independent of it.
        unsafe { sys::ggml_backend_free(self.0.as_ptr()) };
    }
}
