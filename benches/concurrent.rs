//! Eight requests one after another vs. the same eight at once (continuous
//! batching), greedy, on two local workers.
//!
//! `cargo bench --bench concurrent` (env: SHARDLINE_BENCH_TOKENS,
//! SHARDLINE_BENCH_THREADS, SHARDLINE_TEST_MODEL).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use shardline::engine::{Engine, EngineOptions, GenerateRequest, Prompt};
use shardline::plan::Strategy;
use shardline::sample::SamplerConfig;
use shardline::worker::LocalWorker;

use common::{env_or, model_path};

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away,",
    "The three primary colors are",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
    "In 1969, the first person to walk on the moon was",
    "A haiku about autumn leaves:",
];

fn request(p: &str, n: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text(p.to_string()),
        max_tokens: n,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        stop_at_eog: false,
    }
}

fn main() {
    let n_gen: usize = env_or("SHARDLINE_BENCH_TOKENS", 64);
    let threads: usize = env_or("SHARDLINE_BENCH_THREADS", 1);
    let exe = Path::new(env!("CARGO_BIN_EXE_shardline"));
    let t = threads.to_string();
    let workers: Vec<LocalWorker> = (0..2)
        .map(|_| {
            LocalWorker::spawn(exe, &["--threads", &t], Duration::from_secs(60))
                .expect("start worker")
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::load(EngineOptions {
            model: model_path(),
            servers: workers.iter().map(|w| w.endpoint.to_string()).collect(),
            n_ctx: 2048,
            n_batch: 256,
            strategy: Strategy::Even,
            threads,
            progress: false,
            parallel: 8,
            ..EngineOptions::default()
        })
        .await
        .expect("load");

        let started = Instant::now();
        let mut alone = Vec::new();
        for p in PROMPTS {
            alone.push(
                engine
                    .generate(request(p, n_gen))
                    .unwrap()
                    .collect_text()
                    .await
                    .unwrap()
                    .0,
            );
        }
        let sequential = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let streams: Vec<_> = PROMPTS
            .iter()
            .map(|p| engine.generate(request(p, n_gen)).unwrap())
            .collect();
        let mut together = Vec::new();
        for s in streams {
            together.push(s.collect_text().await.unwrap().0);
        }
        let concurrent = started.elapsed().as_secs_f64();

        let tokens = (PROMPTS.len() * n_gen) as f64;
        println!(
            "8 requests × {n_gen} tokens, greedy, 2 workers ({threads} thread each), --parallel 8"
        );
        println!();
        println!("| | wall (s) | tokens/s |");
        println!("|---|---:|---:|");
        println!(
            "| one after another | {sequential:.2} | {:.1} |",
            tokens / sequential
        );
        println!(
            "| all at once | {concurrent:.2} | {:.1} |",
            tokens / concurrent
        );
        println!("| speed-up | {:.2}x | |", sequential / concurrent);
        println!();
        println!("same texts: {}", alone == together);
    });
}
