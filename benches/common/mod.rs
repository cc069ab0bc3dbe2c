//! Shared by the benchmarks: settings from the environment and the test model.
#![allow(dead_code)] // each bench uses a different part

use std::path::{Path, PathBuf};

/// `key` from the environment, parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The test model (`SHARDLINE_TEST_MODEL`, or where scripts/fetch-model.sh
/// caches it).
pub fn model_path() -> PathBuf {
    std::env::var_os("SHARDLINE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").expect("HOME"))
                .join(".cache/shardline/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}

/// The middle value (the upper one of an even count); `v` must not be empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Starts `n` `shardline worker`s (`exe`) on loopback with `threads` CPU
/// threads each; they stop when dropped.
pub fn start_workers(exe: &Path, n: usize, threads: usize) -> Vec<shardline::worker::LocalWorker> {
    start_workers_with(exe, n, threads, &[])
}

/// [`start_workers`], each worker also given `extra` arguments.
pub fn start_workers_with(
    exe: &Path,
    n: usize,
    threads: usize,
    extra: &[&str],
) -> Vec<shardline::worker::LocalWorker> {
    let t = threads.to_string();
    (0..n)
        .map(|_| {
            let mut args = vec!["--threads", t.as_str()];
            args.extend_from_slice(extra);
            shardline::worker::LocalWorker::spawn(exe, &args, std::time::Duration::from_secs(60))
                .expect("start worker")
        })
        .collect()
}

/// `n_gen` tokens from `prompt` (token ids) on `e`, greedily, to the end:
/// the tokens and the usage the engine reported.
pub fn greedy(
    rt: &tokio::runtime::Runtime,
    e: &shardline::engine::Engine,
    prompt: Vec<u32>,
    n_gen: usize,
) -> (Vec<u32>, shardline::engine::Usage) {
    use shardline::engine::{Event, GenerateRequest, Prompt};
    let req = GenerateRequest {
        prompt: Prompt::Tokens(prompt),
        max_tokens: n_gen,
        sampler: shardline::sample::SamplerConfig::greedy(),
        stop: Vec::new(),
        stop_at_eog: false,
    };
    rt.block_on(async {
        let mut s = e.generate(req).expect("generate");
        let mut usage = None;
        while let Some(ev) = s.next().await {
            match ev {
                Event::Done(u) => usage = Some(u),
                Event::Error(err) => panic!("{err}"),
                Event::Text(_) => {}
            }
        }
        (s.token_ids(), usage.expect("done"))
    })
}
