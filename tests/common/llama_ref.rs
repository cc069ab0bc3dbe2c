//! llama.cpp as the reference (tests only): its model API and its own RPC
//! client, linked from the same `llama-cpp-sys-2` build as shardline's ggml.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::raw::c_char;
use std::path::Path;
use std::sync::Once;

use llama_cpp_sys_2 as sys;

extern "C" {
    // From ggml-rpc.h, which the crate's generated bindings leave out.
    fn ggml_backend_rpc_add_server(endpoint: *const c_char) -> sys::ggml_backend_reg_t;
}

unsafe extern "C" fn quiet_log(_level: sys::ggml_log_level, _text: *const c_char, _ud: *mut std::ffi::c_void) {}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: one-time global init; the callback ignores its arguments.
        unsafe {
            if std::env::var_os("SHARDLINE_TEST_LLAMA_LOG").is_none() {
                sys::llama_log_set(Some(quiet_log), std::ptr::null_mut());
            }
            sys::llama_backend_init();
        }
    });
}

/// Devices llama.cpp's RPC client sees on the given servers.
pub fn rpc_devices(endpoints: &[SocketAddr]) -> Vec<sys::ggml_backend_dev_t> {
    init();
    let mut devs = Vec::new();
    for ep in endpoints {
        let c = CString::new(ep.to_string()).unwrap();
        // SAFETY: valid C string; ggml registers the server (or returns null).
        let reg = unsafe { ggml_backend_rpc_add_server(c.as_ptr()) };
        assert!(!reg.is_null(), "llama.cpp could not add RPC server {ep}");
        // SAFETY: valid registry handle and in-range indices.
        let n = unsafe { sys::ggml_backend_reg_dev_count(reg) };
        for i in 0..n {
            devs.push(unsafe { sys::ggml_backend_reg_dev_get(reg, i) });
        }
    }
    devs
}

/// A model loaded by llama.cpp, with one context.
pub struct LlamaRef {
    model: *mut sys::llama_model,
    ctx: *mut sys::llama_context,
    vocab: *const sys::llama_vocab,
}

impl LlamaRef {
    /// Loads `path` with every layer offloaded to `devices` (empty: CPU only).
    pub fn load(path: &Path, devices: &[sys::ggml_backend_dev_t], n_ctx: u32) -> LlamaRef {
        init();
        let mut devs: Vec<sys::ggml_backend_dev_t> = devices.to_vec();
        devs.push(std::ptr::null_mut());
        let cpath = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: default params, then plain field writes; `devs` is
        // null-terminated and outlives the load call.
        unsafe {
            let mut mp = sys::llama_model_default_params();
            if !devices.is_empty() {
                mp.devices = devs.as_mut_ptr();
                mp.n_gpu_layers = 999;
            } else {
                mp.n_gpu_layers = 0;
            }
            let model = sys::llama_model_load_from_file(cpath.as_ptr(), mp);
            assert!(!model.is_null(), "llama.cpp failed to load {}", path.display());
            let mut cp = sys::llama_context_default_params();
            cp.n_ctx = n_ctx;
            cp.n_batch = n_ctx;
            cp.n_ubatch = n_ctx;
            cp.n_threads = 1;
            cp.n_threads_batch = 1;
            let ctx = sys::llama_init_from_model(model, cp);
            assert!(!ctx.is_null(), "llama.cpp failed to create a context");
            let vocab = sys::llama_model_get_vocab(model);
            LlamaRef { model, ctx, vocab }
        }
    }

    /// Tokenizes like llama.cpp does (`add_special`: BOS etc.; special tokens
    /// in the text are parsed).
    pub fn tokenize(&self, text: &str, add_special: bool) -> Vec<i32> {
        let mut out = vec![0i32; text.len() + 16];
        // SAFETY: valid vocab; text pointer/len describe a live buffer; `out`
        // has room for out.len() tokens.
        let n = unsafe {
            sys::llama_tokenize(
                self.vocab,
                text.as_ptr().cast(),
                text.len() as i32,
                out.as_mut_ptr(),
                out.len() as i32,
                add_special,
                true,
            )
        };
        assert!(n >= 0, "llama_tokenize needs {} tokens", -n);
        out.truncate(n as usize);
        out
    }

    /// The bytes of one token's text.
    pub fn piece(&self, token: i32) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        // SAFETY: valid vocab and a writable buffer of the stated length.
        let n = unsafe {
            sys::llama_token_to_piece(self.vocab, token, buf.as_mut_ptr().cast(), buf.len() as i32, 0, false)
        };
        assert!(n >= 0);
        buf.truncate(n as usize);
        buf
    }

    /// Greedy generation of `n` tokens after `prompt` tokens; returns them.
    pub fn greedy(&mut self, prompt: &[i32], n: usize) -> Vec<i32> {
        // SAFETY: valid context; the batch points into `tokens`, which lives
        // across each decode call; logits are read for the last position only.
        unsafe {
            let mem = sys::llama_get_memory(self.ctx);
            sys::llama_memory_clear(mem, true);
            let n_vocab = sys::llama_vocab_n_tokens(self.vocab) as usize;
            let mut tokens = prompt.to_vec();
            let mut out = Vec::new();
            let mut batch = sys::llama_batch_get_one(tokens.as_mut_ptr(), tokens.len() as i32);
            for _ in 0..n {
                let rc = sys::llama_decode(self.ctx, batch);
                assert_eq!(rc, 0, "llama_decode failed");
                let logits = std::slice::from_raw_parts(sys::llama_get_logits_ith(self.ctx, -1), n_vocab);
                let mut best = 0usize;
                for (i, &l) in logits.iter().enumerate() {
                    if l > logits[best] {
                        best = i;
                    }
                }
                out.push(best as i32);
                tokens = vec![best as i32];
                batch = sys::llama_batch_get_one(tokens.as_mut_ptr(), 1);
            }
            out
        }
    }
}

impl Drop for LlamaRef {
    fn drop(&mut self) {
        // SAFETY: created in `load`, freed once.
        unsafe {
            sys::llama_free(self.ctx);
            sys::llama_model_free(self.model);
        }
    }
}
