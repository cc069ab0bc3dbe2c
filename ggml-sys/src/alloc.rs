//! ggml's graph allocator (ggml-alloc), used only to measure: how large a
//! compute buffer ggml would give a graph, without allocating it.

use llama_cpp_sys_2 as sys;

use crate::context::Tensor;
use crate::graph::Graph;
use crate::GgmlError;

/// Alignment of ggml's CPU buffer type, which [`measure_compute`] measures
/// with (`TENSOR_ALIGNMENT` in ggml-impl.h).
pub const CPU_BUFFER_ALIGNMENT: u64 = 32;

/// Bytes ggml's graph allocator would reserve for `graph` in one CPU
/// buffer (`ggml_gallocr_reserve_n_size`: the sizes only, nothing is
/// allocated). Tensors in `elsewhere` (weights, caches, inputs kept in
/// buffers of their own) are marked as living in another buffer, as
/// llama.cpp does for its weights when it simulates allocations, so only
/// the computed intermediates are counted. The graph's context must be
/// `no_alloc` and its tensors without memory.
pub fn measure_compute(graph: &Graph<'_>, elsewhere: &[Tensor<'_>]) -> Result<u64, GgmlError> {
    for node in graph.nodes() {
        for t in std::iter::once(node).chain(node.sources()) {
            if t.is_allocated() {
                return Err(GgmlError::Backend(format!(
                    "tensor '{}' already has memory: measure a graph of a no_alloc context",
                    t.name()
                )));
            }
        }
    }
    // SAFETY: returns ggml's static CPU buffer type.
    let buft = unsafe { sys::ggml_backend_cpu_buffer_type() };
    // SAFETY: a size of 0 makes ggml return a dummy buffer with no memory
    // (null base), never touched by the measuring below.
    let dummy = unsafe { sys::ggml_backend_buft_alloc_buffer(buft, 0) };
    if dummy.is_null() {
        return Err(GgmlError::Backend("could not create a dummy buffer".into()));
    }
    for t in elsewhere {
        // SAFETY: `t` is a live tensor of the graph's context; setting its
        // buffer field only tells the allocator not to place it. It is reset
        // to null below, before the dummy buffer is freed.
        unsafe { (*t.raw()).buffer = dummy };
    }
    // SAFETY: a fresh allocator for a valid buffer type; checked for null.
    let galloc = unsafe { sys::ggml_gallocr_new(buft) };
    let result = if galloc.is_null() {
        Err(GgmlError::Backend(
            "could not create a graph allocator".into(),
        ))
    } else {
        let mut size = 0usize;
        // SAFETY: live allocator and graph; null buffer ids put every tensor
        // in the allocator's one buffer, and `size` has room for its one
        // size. With no_alloc it only measures; every tensor without memory
        // is either marked above or computed by the graph.
        unsafe {
            sys::ggml_gallocr_reserve_n_size(
                galloc,
                graph.raw(),
                std::ptr::null(),
                std::ptr::null(),
                &mut size,
            );
            sys::ggml_gallocr_free(galloc);
        }
        Ok(size as u64)
    };
    for t in elsewhere {
        // SAFETY: as above; the tensor is back to having no buffer.
        unsafe { (*t.raw()).buffer = std::ptr::null_mut() };
    }
    // SAFETY: the dummy buffer is no longer referenced by any tensor.
    unsafe { sys::ggml_backend_buffer_free(dummy) };
    result
}

/// A compute buffer in CPU memory, laid out by ggml's graph allocator and
/// reused from graph to graph: what the coordinator's own stage computes in.
#[derive(Debug)]
pub struct CpuGraphAllocator(std::ptr::NonNull<sys::ggml_gallocr>);

// SAFETY: the allocator has no thread affinity; `&mut self` on every use
// keeps it to one thread at a time.
unsafe impl Send for CpuGraphAllocator {}

impl CpuGraphAllocator {
    /// An allocator with no buffer yet.
    pub fn new() -> Result<Self, GgmlError> {
        // SAFETY: ggml's static CPU buffer type; null is checked.
        let p = unsafe { sys::ggml_gallocr_new(sys::ggml_backend_cpu_buffer_type()) };
        std::ptr::NonNull::new(p)
            .map(CpuGraphAllocator)
            .ok_or_else(|| GgmlError::Backend("could not create a graph allocator".into()))
    }

    /// Allocates the buffer for `worst`, the largest graph to come, leaving
    /// the graph itself untouched; returns the buffer's size.
    pub fn reserve(&mut self, worst: &Graph<'_>) -> Result<u64, GgmlError> {
        // SAFETY: live allocator and graph; ggml only reads the graph.
        if !unsafe { sys::ggml_gallocr_reserve(self.0.as_ptr(), worst.raw()) } {
            return Err(GgmlError::Backend(
                "could not allocate the CPU compute buffer".into(),
            ));
        }
        Ok(self.buffer_size())
    }

    /// Bytes of the buffer (0 before the first graph).
    pub fn buffer_size(&self) -> u64 {
        // SAFETY: live allocator with one buffer, index 0.
        unsafe { sys::ggml_gallocr_get_buffer_size(self.0.as_ptr(), 0) as u64 }
    }

    /// Places every tensor of `graph` that has no memory in the buffer
    /// (growing it if the graph needs more), runs `f` (write the inputs,
    /// compute, read the outputs), then gives each tensor back the memory
    /// it had before, so that none points into the buffer afterwards.
    pub fn with_graph<R>(
        &mut self,
        graph: &Graph<'_>,
        f: impl FnOnce() -> Result<R, GgmlError>,
    ) -> Result<R, GgmlError> {
        let mut touched: Vec<*mut sys::ggml_tensor> = Vec::new();
        for node in graph.nodes() {
            for t in std::iter::once(node)
                .chain(node.sources())
                .chain(node.view_source())
            {
                touched.push(t.raw());
            }
        }
        touched.sort_unstable();
        touched.dedup();
        // SAFETY: every pointer is a live tensor of the graph's context.
        let before: Vec<_> = touched
            .iter()
            .map(|&t| unsafe { ((*t).data, (*t).buffer) })
            .collect();
        // SAFETY: live allocator and graph; on success every tensor of the
        // graph has memory in the allocator's buffer (or had its own).
        let placed = unsafe { sys::ggml_gallocr_alloc_graph(self.0.as_ptr(), graph.raw()) };
        let out = if placed {
            f()
        } else {
            Err(GgmlError::Backend(
                "could not place the graph in the CPU compute buffer".into(),
            ))
        };
        for (&t, &(data, buffer)) in touched.iter().zip(&before) {
            // SAFETY: as above; restores the fields ggml set, nothing else.
            unsafe {
                (*t).data = data;
                (*t).buffer = buffer;
            }
        }
        out
    }
}

impl Drop for CpuGraphAllocator {
    fn drop(&mut self) {
        // SAFETY: freed once; no tensor points into its buffer (see
        // `with_graph`).
        unsafe { sys::ggml_gallocr_free(self.0.as_ptr()) };
    }
}
