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
