//! llama.cpp as the reference (tests only): its model API and its own RPC
//! client, linked from the same `llama-cpp-sys-2` build as shardline's ggml.
#![allow(unsafe_code, dead_code)]

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

unsafe extern "C" fn quiet_log(
    _level: sys::ggml_log_level,
    _text: *const c_char,
    _ud: *mut std::ffi::c_void,
) {
}

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
    rpc_devices_up_to(endpoints, usize::MAX)
}

/// [`rpc_devices`], at most the first `per_server` devices of each server.
pub fn rpc_devices_up_to(
    endpoints: &[SocketAddr],
    per_server: usize,
) -> Vec<sys::ggml_backend_dev_t> {
    init();
    let mut devs = Vec::new();
    for ep in endpoints {
        let c = CString::new(ep.to_string()).unwrap();
        // SAFETY: valid C string; ggml registers the server (or returns null).
        let reg = unsafe { ggml_backend_rpc_add_server(c.as_ptr()) };
        assert!(!reg.is_null(), "llama.cpp could not add RPC server {ep}");
        // SAFETY: valid registry handle and in-range indices.
        let n = unsafe { sys::ggml_backend_reg_dev_count(reg) };
        for i in 0..n.min(per_server) {
            // SAFETY: `i` is below the registry's device count.
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
        Self::load_seqs(path, devices, n_ctx, 1)
    }

    /// Like [`LlamaRef::load`], with a context for `n_seq` sequences that
    /// share one KV cache of `n_ctx` cells (llama.cpp's unified cache).
    pub fn load_seqs(
        path: &Path,
        devices: &[sys::ggml_backend_dev_t],
        n_ctx: u32,
        n_seq: u32,
    ) -> LlamaRef {
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
            assert!(
                !model.is_null(),
                "llama.cpp failed to load {}",
                path.display()
            );
            let mut cp = sys::llama_context_default_params();
            cp.n_ctx = n_ctx;
            cp.n_batch = n_ctx;
            cp.n_ubatch = n_ctx;
            cp.n_threads = 1;
            cp.n_threads_batch = 1;
            cp.n_seq_max = n_seq.max(1);
            cp.kv_unified = true;
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
            sys::llama_token_to_piece(
                self.vocab,
                token,
                buf.as_mut_ptr().cast(),
                buf.len() as i32,
                0,
                false,
            )
        };
        assert!(n >= 0);
        buf.truncate(n as usize);
        buf
    }

    /// Greedy generation of `n` tokens after `prompt` tokens; returns them.
    pub fn greedy(&mut self, prompt: &[i32], n: usize) -> Vec<i32> {
        self.greedy_timed(prompt, n).0
    }

    /// Greedy generation, also timing the prompt and the decode steps
    /// (seconds): what the benchmarks compare against.
    pub fn greedy_timed(&mut self, prompt: &[i32], n: usize) -> (Vec<i32>, f64, f64) {
        let mut prompt_s = 0.0;
        let started = std::time::Instant::now();
        // SAFETY: valid context; the batch points into `tokens`, which lives
        // across each decode call; logits are read for the last position only.
        let out = unsafe {
            let mem = sys::llama_get_memory(self.ctx);
            sys::llama_memory_clear(mem, true);
            let n_vocab = sys::llama_vocab_n_tokens(self.vocab) as usize;
            let mut tokens = prompt.to_vec();
            let mut out = Vec::new();
            let mut batch = sys::llama_batch_get_one(tokens.as_mut_ptr(), tokens.len() as i32);
            for i in 0..n {
                let rc = sys::llama_decode(self.ctx, batch);
                assert_eq!(rc, 0, "llama_decode failed");
                // Decoding may run asynchronously on the servers: wait for it
                // before reading the clock.
                sys::llama_synchronize(self.ctx);
                if i == 0 {
                    prompt_s = started.elapsed().as_secs_f64();
                }
                let logits =
                    std::slice::from_raw_parts(sys::llama_get_logits_ith(self.ctx, -1), n_vocab);
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
        };
        // The last sampled token is never decoded: n-1 decode steps.
        let decode_s = started.elapsed().as_secs_f64() - prompt_s;
        (out, prompt_s, decode_s)
    }
}

impl LlamaRef {
    /// Greedy generation for several sequences at once, as llama.cpp's
    /// batched clients do: every prompt in one batch (sequence `i` for
    /// `prompts[i]`), then one batch per step with one token of each
    /// sequence. Returns each sequence's `n` tokens, the seconds of the
    /// prompt batch and of the decode steps. Needs a context from
    /// [`LlamaRef::load_seqs`] with at least `prompts.len()` sequences.
    pub fn greedy_batch_timed(
        &mut self,
        prompts: &[Vec<i32>],
        n: usize,
    ) -> (Vec<Vec<i32>>, f64, f64) {
        let total: usize = prompts.iter().map(Vec::len).sum();
        let mut outs: Vec<Vec<i32>> = vec![Vec::new(); prompts.len()];
        let started = std::time::Instant::now();
        let mut prompt_s = 0.0;
        // SAFETY: valid context; the batch from llama_batch_init has room for
        // `total` tokens with one sequence id each, is filled within those
        // bounds, and is freed once at the end; logits are read only for
        // positions marked as outputs.
        unsafe {
            let mem = sys::llama_get_memory(self.ctx);
            sys::llama_memory_clear(mem, true);
            let n_vocab = sys::llama_vocab_n_tokens(self.vocab) as usize;
            let batch = sys::llama_batch_init(total.max(prompts.len()) as i32, 0, 1);
            let mut b = batch;
            let mut pos: Vec<i32> = vec![0; prompts.len()];
            let mut next: Vec<i32> = Vec::new();
            for step in 0..n {
                let mut k = 0usize;
                let mut out_at = Vec::new();
                for (s, p) in prompts.iter().enumerate() {
                    let toks: &[i32] = if step == 0 {
                        p
                    } else {
                        std::slice::from_ref(&next[s])
                    };
                    for (j, &t) in toks.iter().enumerate() {
                        *b.token.add(k) = t;
                        *b.pos.add(k) = pos[s];
                        *b.n_seq_id.add(k) = 1;
                        *(*b.seq_id.add(k)) = s as i32;
                        let last = j + 1 == toks.len();
                        *b.logits.add(k) = i8::from(last);
                        if last {
                            out_at.push(k);
                        }
                        pos[s] += 1;
                        k += 1;
                    }
                }
                b.n_tokens = k as i32;
                let rc = sys::llama_decode(self.ctx, b);
                assert_eq!(rc, 0, "llama_decode failed");
                sys::llama_synchronize(self.ctx);
                if step == 0 {
                    prompt_s = started.elapsed().as_secs_f64();
                }
                next.clear();
                for (s, &at) in out_at.iter().enumerate() {
                    let logits = std::slice::from_raw_parts(
                        sys::llama_get_logits_ith(self.ctx, at as i32),
                        n_vocab,
                    );
                    let mut best = 0usize;
                    for (i, &l) in logits.iter().enumerate() {
                        if l > logits[best] {
                            best = i;
                        }
                    }
                    outs[s].push(best as i32);
                    next.push(best as i32);
                }
            }
            sys::llama_batch_free(batch);
        }
        let decode_s = started.elapsed().as_secs_f64() - prompt_s;
        (outs, prompt_s, decode_s)
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

/// A model loaded by llama.cpp with its vocabulary only (no tensors, no
/// context): the tokenizer reference.
pub struct LlamaVocab {
    model: *mut sys::llama_model,
    vocab: *const sys::llama_vocab,
}

impl LlamaVocab {
    /// Loads the vocabulary of `path`; `None` if llama.cpp refuses the file.
    pub fn load(path: &Path) -> Option<LlamaVocab> {
        init();
        let cpath = CString::new(path.to_str()?).ok()?;
        // SAFETY: default params with one plain field write; valid C string.
        unsafe {
            let mut mp = sys::llama_model_default_params();
            mp.vocab_only = true;
            mp.n_gpu_layers = 0;
            let model = sys::llama_model_load_from_file(cpath.as_ptr(), mp);
            if model.is_null() {
                return None;
            }
            let vocab = sys::llama_model_get_vocab(model);
            Some(LlamaVocab { model, vocab })
        }
    }

    pub fn n_tokens(&self) -> i32 {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_n_tokens(self.vocab) }
    }

    /// `llama_tokenize` with both flags explicit.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<i32> {
        let mut out = vec![0i32; text.len() + 16];
        loop {
            // SAFETY: valid vocab; text pointer/len describe a live buffer;
            // `out` has room for out.len() tokens.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab,
                    text.as_ptr().cast(),
                    text.len() as i32,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return out;
            }
            out.resize((-n) as usize, 0);
        }
    }

    /// `llama_token_to_piece`.
    pub fn piece(&self, token: i32, lstrip: i32, special: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: valid vocab and a writable buffer of the stated length.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.vocab,
                    token,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    lstrip,
                    special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    /// `llama_detokenize`.
    pub fn detokenize(
        &self,
        tokens: &[i32],
        remove_special: bool,
        unparse_special: bool,
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 64 + tokens.len() * 8];
        loop {
            // SAFETY: valid vocab; token slice and writable buffer with their lengths.
            let n = unsafe {
                sys::llama_detokenize(
                    self.vocab,
                    tokens.as_ptr(),
                    tokens.len() as i32,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    remove_special,
                    unparse_special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    pub fn is_eog(&self, token: i32) -> bool {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_is_eog(self.vocab, token) }
    }

    /// BOS, EOS, EOT ids (-1: none).
    pub fn bos_eos_eot(&self) -> (i32, i32, i32) {
        // SAFETY: valid vocab.
        unsafe {
            (
                sys::llama_vocab_bos(self.vocab),
                sys::llama_vocab_eos(self.vocab),
                sys::llama_vocab_eot(self.vocab),
            )
        }
    }

    /// The model's default chat template, if any.
    pub fn chat_template(&self) -> Option<String> {
        // SAFETY: valid model; a null name asks for the default template; the
        // returned string is owned by the model and copied at once.
        unsafe {
            let p = sys::llama_model_chat_template(self.model, std::ptr::null());
            if p.is_null() {
                return None;
            }
            Some(std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }
}

impl Drop for LlamaVocab {
    fn drop(&mut self) {
        // SAFETY: created in `load`, freed once.
        unsafe { sys::llama_model_free(self.model) }
    }
}

/// `llama_chat_apply_template`: llama.cpp's built-in formatting of `messages`
/// (role, content) for the template family it detects in `template`. `None`
/// if llama.cpp does not recognise the template.
pub fn chat_apply_template(
    template: &str,
    messages: &[(&str, &str)],
    add_assistant: bool,
) -> Option<String> {
    let tmpl = CString::new(template).ok()?;
    let owned: Vec<(CString, CString)> = messages
        .iter()
        .map(|(r, c)| (CString::new(*r).unwrap(), CString::new(*c).unwrap()))
        .collect();
    let msgs: Vec<sys::llama_chat_message> = owned
        .iter()
        .map(|(r, c)| sys::llama_chat_message {
            role: r.as_ptr(),
            content: c.as_ptr(),
        })
        .collect();
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `msgs` points into `owned`, alive across the call; `buf`
        // is writable for its stated length.
        let n = unsafe {
            sys::llama_chat_apply_template(
                tmpl.as_ptr(),
                msgs.as_ptr(),
                msgs.len(),
                add_assistant,
                buf.as_mut_ptr().cast(),
                buf.len() as i32,
            )
        };
        if n < 0 {
            return None;
        }
        if (n as usize) <= buf.len() {
            buf.truncate(n as usize);
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        buf.resize(n as usize, 0);
    }
}

impl LlamaRef {
    /// The logits (`n_vocab`) of the last token of `prompt`, decoded in one
    /// batch into an empty context: what the first greedy step picks from.
    pub fn prompt_logits(&mut self, prompt: &[i32]) -> Vec<f32> {
        // SAFETY: valid context; the batch points into `tokens`, which lives
        // across the decode call; the logits are copied out at once.
        unsafe {
            let mem = sys::llama_get_memory(self.ctx);
            sys::llama_memory_clear(mem, true);
            let n_vocab = sys::llama_vocab_n_tokens(self.vocab) as usize;
            let mut tokens = prompt.to_vec();
            let batch = sys::llama_batch_get_one(tokens.as_mut_ptr(), tokens.len() as i32);
            let rc = sys::llama_decode(self.ctx, batch);
            assert_eq!(rc, 0, "llama_decode failed");
            sys::llama_synchronize(self.ctx);
            std::slice::from_raw_parts(sys::llama_get_logits_ith(self.ctx, -1), n_vocab).to_vec()
        }
    }
}

/// Everything llama.cpp logged while loading a model and creating a context
/// with `no_alloc` (allocations simulated, nothing allocated).
static SIM_LOG: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

unsafe extern "C" fn capture_log(
    _level: sys::ggml_log_level,
    text: *const c_char,
    _ud: *mut std::ffi::c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the call.
    let s = unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy();
    if let Ok(mut log) = SIM_LOG.lock() {
        log.push_str(&s);
    }
}

/// What llama.cpp would allocate for `path` with every layer on `devices`,
/// split by `tensor_split`, at `n_ctx` cells, `n_batch` tokens per step,
/// one sequence and `n_outputs_max` output rows, flash attention on: loads
/// with `no_alloc` (its memory-fit mode) and returns its log, where it
/// prints each buffer, its weights' size, and its memory breakdown (what
/// each buffer type, one per device, would hold).
///
/// Pipeline parallelism stays off, as shardline runs one step at a time
/// per stage: on (llama.cpp's default on several devices that have
/// events) it keeps four copies of each device's graph inputs. llama.cpp
/// turns it off when tensor overrides are given, so one that matches no
/// tensor is.
pub fn simulate_no_alloc(
    path: &Path,
    devices: &[sys::ggml_backend_dev_t],
    tensor_split: &[f32],
    n_ctx: u32,
    n_batch: u32,
    n_outputs_max: u32,
) -> (String, u64, Vec<llama_ref_shim::Breakdown>) {
    init();
    SIM_LOG.lock().unwrap().clear();
    let mut devs: Vec<sys::ggml_backend_dev_t> = devices.to_vec();
    devs.push(std::ptr::null_mut());
    let mut split = tensor_split.to_vec();
    // SAFETY: llama_max_devices is a pure query.
    split.resize(unsafe { sys::llama_max_devices() }.max(split.len()), 0.0);
    let cpath = CString::new(path.to_str().unwrap()).unwrap();
    let no_match = CString::new("^shardline-matches-no-tensor$").unwrap();
    // SAFETY: default params then plain field writes; `devs` (null
    // terminated), `split`, `overrides` (ended by a null pattern) and
    // `no_match` outlive the calls; the breakdown is read while the context
    // lives; the logger is restored to the quiet one before returning.
    unsafe {
        let overrides = [
            sys::llama_model_tensor_buft_override {
                pattern: no_match.as_ptr(),
                buft: sys::ggml_backend_cpu_buffer_type(),
            },
            sys::llama_model_tensor_buft_override {
                pattern: std::ptr::null(),
                buft: std::ptr::null_mut(),
            },
        ];
        sys::llama_log_set(Some(capture_log), std::ptr::null_mut());
        let mut mp = sys::llama_model_default_params();
        mp.devices = devs.as_mut_ptr();
        mp.n_gpu_layers = 999;
        mp.tensor_split = split.as_ptr();
        mp.tensor_buft_overrides = overrides.as_ptr();
        mp.no_alloc = true;
        // Its memory-fit pass maps nothing (llama.cpp asserts on no_alloc
        // with an mmapped host buffer).
        mp.load_mode = sys::LLAMA_LOAD_MODE_NONE;
        let model = sys::llama_model_load_from_file(cpath.as_ptr(), mp);
        assert!(
            !model.is_null(),
            "llama.cpp failed to load {}",
            path.display()
        );
        let size = sys::llama_model_size(model);
        let mut cp = sys::llama_context_default_params();
        cp.n_ctx = n_ctx;
        cp.n_batch = n_batch;
        cp.n_ubatch = n_batch;
        cp.n_seq_max = 1;
        cp.n_outputs_max = n_outputs_max;
        cp.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_ENABLED;
        cp.n_threads = 1;
        cp.n_threads_batch = 1;
        let ctx = sys::llama_init_from_model(model, cp);
        assert!(!ctx.is_null(), "llama.cpp failed to create a context");
        let breakdown = llama_ref_shim::memory_breakdown(ctx);
        sys::llama_free(ctx);
        sys::llama_model_free(model);
        if std::env::var_os("SHARDLINE_TEST_LLAMA_LOG").is_none() {
            sys::llama_log_set(Some(quiet_log), std::ptr::null_mut());
        }
        (SIM_LOG.lock().unwrap().clone(), size, breakdown)
    }
}
