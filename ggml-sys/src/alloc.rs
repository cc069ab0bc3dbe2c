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
