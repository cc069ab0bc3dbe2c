//! Tests only: llama.cpp's per-device memory breakdown, which it offers as a
//! C++ function only, reached through a small C++ bridge (`src/breakdown.cpp`).
#![allow(unsafe_code)]

use std::os::raw::c_void;

use llama_cpp_sys_2 as sys;

extern "C" {
    fn shardline_llama_memory_breakdown(
        ctx: *const sys::llama_context,
        bufts: *mut *mut c_void,
        model: *mut usize,
        context: *mut usize,
        compute: *mut usize,
        cap: usize,
    ) -> usize;
}

/// What llama.cpp's context holds, or would hold in no_alloc mode, in one
/// buffer type (one device's memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breakdown {
    /// The buffer type's name, e.g. `RPC0[127.0.0.1:5000]` or `CPU`.
    pub buffer_type: String,
    /// Model weights, bytes.
    pub model: usize,
    /// The context's memory (the KV cache), bytes.
    pub context: usize,
    /// Compute buffers, bytes.
    pub compute: usize,
}

/// llama.cpp's memory breakdown of `ctx`, one entry per buffer type.
///
/// # Safety
/// `ctx` must be a live context from `llama_init_from_model`.
pub unsafe fn memory_breakdown(ctx: *const sys::llama_context) -> Vec<Breakdown> {
    const CAP: usize = 64;
    let mut bufts = [std::ptr::null_mut::<c_void>(); CAP];
    let (mut model, mut context, mut compute) = ([0usize; CAP], [0usize; CAP], [0usize; CAP]);
    // SAFETY: `ctx` is live (the caller's promise); the four arrays hold
    // CAP entries each, and the bridge writes at most CAP.
    let n = unsafe {
        shardline_llama_memory_breakdown(
            ctx,
            bufts.as_mut_ptr(),
            model.as_mut_ptr(),
            context.as_mut_ptr(),
            compute.as_mut_ptr(),
            CAP,
        )
    };
    assert!(n <= CAP, "{n} buffer types");
    (0..n)
        .map(|i| {
            // SAFETY: a buffer type of the live context; ggml returns a
            // NUL-terminated name that lives as long as the type.
            let name =
                unsafe { std::ffi::CStr::from_ptr(sys::ggml_backend_buft_name(bufts[i] as _)) };
            Breakdown {
                buffer_type: name.to_string_lossy().into_owned(),
                model: model[i],
                context: context[i],
                compute: compute[i],
            }
        })
        .collect()
}
