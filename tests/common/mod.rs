//! Shared helpers for the end-to-end tests: the test model and real
//! `shardline worker` processes on loopback.
#![allow(dead_code)]

pub mod families;
pub mod http;
pub mod llama_ref;
pub mod ollama_store;
pub mod openai;
pub mod pipeline;
pub mod synth;
pub mod tiny;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Path of SmolLM2-135M-Instruct Q4_1, fetched by `scripts/fetch-model.sh`.
pub fn model_path() -> PathBuf {
    let p = std::env::var_os("SHARDLINE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/shardline/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.is_file(),
        "test model not found at {}: run scripts/fetch-model.sh (or set SHARDLINE_TEST_MODEL)",
        p.display()
    );
    p
}

/// The `shardline` binary under test: `SHARDLINE_BIN` when set (a copy
/// that builds from other checkouts sharing the target folder cannot
/// replace meanwhile), else the one cargo built for these tests.
pub fn shardline_bin() -> PathBuf {
    std::env::var_os("SHARDLINE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_shardline")))
}

/// A real `shardline worker` on a free loopback port (killed by pid on drop).
pub type Worker = shardline::worker::LocalWorker;

/// Starts a worker with `--threads 1` plus `extra` arguments.
pub fn start_worker(extra: &[&str]) -> Worker {
    let mut args = vec!["--threads", "1"];
    args.extend_from_slice(extra);
    Worker::spawn(&shardline_bin(), &args, Duration::from_secs(60)).expect("start shardline worker")
}

/// The `--rpc` value naming `ws`.
pub fn rpc(ws: &[&Worker]) -> String {
    ws.iter()
        .map(|w| w.endpoint.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `tests/SCRIPT` with `args` under the Python of
/// `$SHARDLINE_TEST_PYTHON` (the venv scripts/test.sh makes, with the
/// `openai`, `ollama` and `jsonschema` packages); it must exit 0 and print
/// "all checks passed". `server_log` is shown with a failure.
pub fn python_checks(script: &str, args: &[&str], server_log: impl FnOnce() -> String) {
    let python = std::env::var("SHARDLINE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("SHARDLINE_TEST_PYTHON is not set: run scripts/test.sh (it makes a venv with the client packages)")
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = std::process::Command::new(&python)
        .arg(&path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{script} failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server_log()
    );
    eprintln!("{stdout}");
}
