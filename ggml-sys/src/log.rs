//! Routing ggml's log messages (its server's included) to a Rust function,
//! so a program can file them under its own log levels instead of ggml
//! printing every one of them to stderr.

use std::ffi::CStr;
use std::os::raw::{c_char, c_void};
use std::sync::OnceLock;

use llama_cpp_sys_2 as sys;

/// Severity of a ggml log message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Debugging detail.
    Debug,
    /// Ordinary progress (e.g. the RPC server's "saved to" cache lines).
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// Receives each message (without its trailing newline).
pub type LogHandler = fn(LogLevel, &str);

static HANDLER: OnceLock<LogHandler> = OnceLock::new();

extern "C" fn trampoline(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: ggml passes a NUL-terminated string valid for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let text = text.trim_end();
    if text.is_empty() {
        return;
    }
    let level = match level {
        sys::GGML_LOG_LEVEL_WARN => LogLevel::Warn,
        sys::GGML_LOG_LEVEL_ERROR => LogLevel::Error,
        sys::GGML_LOG_LEVEL_INFO => LogLevel::Info,
        _ => LogLevel::Debug,
    };
    if let Some(h) = HANDLER.get() {
        h(level, text);
    }
}

/// Sends every ggml log message to `handler` from now on. Only the first
/// handler set in a process is used.
pub fn set_log_handler(handler: LogHandler) {
    let _ = HANDLER.set(handler);
    // SAFETY: `trampoline` matches ggml_log_callback and lives for the whole
    // program; it ignores the user data pointer.
    unsafe { sys::ggml_log_set(Some(trampoline), std::ptr::null_mut()) };
}
