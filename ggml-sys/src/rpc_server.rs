//! ggml's own RPC server (the code behind llama.cpp's `rpc-server`).

use std::ffi::CString;
use std::os::raw::c_char;
use std::path::Path;

use llama_cpp_sys_2 as sys;

use crate::backend::Device;

/// Protocol version the linked ggml RPC server speaks (`RPC_PROTO_*_VERSION`
/// in ggml-rpc.h).
pub const RPC_PROTO_MAJOR: u8 = 7;
/// Minor protocol version.
pub const RPC_PROTO_MINOR: u8 = 0;
/// Patch protocol version.
pub const RPC_PROTO_PATCH: u8 = 0;

// ggml-rpc.h is not part of the crate's generated bindings; these are the
// declarations of the functions libggml-rpc exports.
extern "C" {
    fn ggml_backend_rpc_start_server(
        endpoint: *const c_char,
        cache_dir: *const c_char,
        n_threads: usize,
        n_devices: usize,
        devices: *mut sys::ggml_backend_dev_t,
    );
}

/// Run ggml's RPC server on `endpoint` (`host:port`) serving `devices`. It
/// serves one client at a time, forever; it returns only when it could not
/// start (bad endpoint, port in use, backend init failure) or accept failed.
pub fn rpc_start_server(
    endpoint: &str,
    cache_dir: Option<&Path>,
    n_threads: usize,
    devices: &[Device],
) -> Result<(), String> {
    if devices.is_empty() {
        return Err("no devices to serve".into());
    }
    let endpoint =
        CString::new(endpoint).map_err(|_| "endpoint contains a NUL byte".to_string())?;
    let cache = cache_dir
        .map(|p| {
            CString::new(p.to_string_lossy().into_owned())
                .map_err(|_| "cache path contains a NUL byte".to_string())
        })
        .transpose()?;
    let mut devs: Vec<sys::ggml_backend_dev_t> = devices.iter().map(Device::raw).collect();
    // SAFETY: valid NUL-terminated strings that outlive the call (the call
    // blocks for the server's life); `devs` holds `devs.len()` registry devices.
    unsafe {
        ggml_backend_rpc_start_server(
            endpoint.as_ptr(),
            cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            n_threads.max(1),
            devs.len(),
            devs.as_mut_ptr(),
        )
    };
    Err("the RPC server stopped (see its messages above)".into())
}
