//! Eight streams on two workers: shardline one request after another, the
//! same eight at once (continuous batching, pipelined over both workers), and
//! llama.cpp's own RPC client decoding the same eight sequences in one batch
//! on the same workers, in the same run.
//!
//! `cargo bench --bench concurrent` (env: SHARDLINE_BENCH_TOKENS,
//! SHARDLINE_BENCH_ROUNDS, SHARDLINE_BENCH_THREADS, SHARDLINE_BENCH_MICRO,
//! SHARDLINE_BENCH_STRATEGY (throughput), SHARDLINE_TEST_MODEL).

#[path = "../tests/common/llama_ref.rs"]
mod llama_ref;

mod common;

use std::path::Path;
use std::time::Instant;

use shardline::engine::{Engine, EngineOptions, GenerateRequest, Prompt};
use shardline::plan::Strategy;
use shardline::sample::SamplerConfig;

use common::{env_or, median, model_path};

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

const N_CTX: u32 = 2048;

fn request(p: &[u32], n: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Tokens(p.to_vec()),
        max_tokens: n,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        stop_at_eog: false,
    }
}

/// Each prompt's tokens, in order, and the wall time of the whole batch.
async fn generate_all(
    engine: &Engine,
    prompts: &[Vec<u32>],
    n: usize,
    at_once: bool,
) -> (Vec<Vec<u32>>, f64) {
    let started = Instant::now();
    let mut out = Vec::new();
    if at_once {
        let streams: Vec<_> = prompts
            .iter()
            .map(|p| engine.generate(request(p, n)).unwrap())
            .collect();
        for mut s in streams {
            while s.next().await.is_some() {}
            out.push(s.token_ids());
        }
    } else {
        for p in prompts {
            let mut s = engine.generate(request(p, n)).unwrap();
            while s.next().await.is_some() {}
            out.push(s.token_ids());
        }
    }
    (out, started.elapsed().as_secs_f64())
}

fn main() {
    let n_gen: usize = env_or("SHARDLINE_BENCH_TOKENS", 64);
    let rounds: usize = env_or("SHARDLINE_BENCH_ROUNDS", 3);
    let threads: usize = env_or("SHARDLINE_BENCH_THREADS", 1);
    let micro: usize = env_or("SHARDLINE_BENCH_MICRO", 0);
    let strategy: Strategy = env_or("SHARDLINE_BENCH_STRATEGY", Strategy::Throughput);
    let exe = Path::new(env!("CARGO_BIN_EXE_shardline"));
    let workers = common::start_workers(exe, 2, threads);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (prompts, ours_seq, ours_par, spans, overlap, same, ours) = rt.block_on(async {
        let engine = Engine::load(EngineOptions {
            model: model_path(),
            servers: workers.iter().map(|w| w.endpoint.to_string()).collect(),
            n_ctx: N_CTX,
            n_batch: 256,
            strategy: strategy.clone(),
            threads,
            progress: false,
            parallel: 8,
            micro_batches: micro,
            ..EngineOptions::default()
        })
        .await
        .expect("load");
        println!("plan ({strategy}):\n{}", engine.plan());
        let prompts: Vec<Vec<u32>> = PROMPTS
            .iter()
            .map(|p| engine.tokenizer().encode(p, true, true))
            .collect();
        let mut seq = Vec::new();
        let mut par = Vec::new();
        let mut same = true;
        let mut last = Vec::new();
        for _ in 0..rounds {
            let (alone, s) = generate_all(&engine, &prompts, n_gen, false).await;
            engine.step_trace().clear();
            let (together, p) = generate_all(&engine, &prompts, n_gen, true).await;
            same &= alone == together;
            last = together;
            seq.push(s);
            par.push(p);
        }
        let spans = engine.step_trace().spans().len();
        let overlap = engine.step_trace().max_overlap();
        (
            prompts,
            median(seq),
            median(par),
            spans,
            overlap,
            same,
            last,
        )
    });

    // llama.cpp's client on the same servers, after shardline let go of
    // them (a server serves one client at a time).
    let devices = llama_ref::rpc_devices(&workers.iter().map(|w| w.endpoint).collect::<Vec<_>>());
    let mut theirs = Vec::new();
    let mut their_decode = Vec::new();
    let mut their_tokens = Vec::new();
    let as_i32: Vec<Vec<i32>> = prompts
        .iter()
        .map(|p| p.iter().map(|&t| t as i32).collect())
        .collect();
    let mut r = llama_ref::LlamaRef::load_seqs(&model_path(), &devices, N_CTX, 8);
    for _ in 0..rounds {
        let (toks, prompt_s, decode_s) = r.greedy_batch_timed(&as_i32, n_gen);
        their_tokens = toks;
        theirs.push(prompt_s + decode_s);
        their_decode.push(decode_s);
    }
    let (theirs, their_decode) = (median(theirs), median(their_decode));

    let tokens = (PROMPTS.len() * n_gen) as f64;
    println!(
        "8 requests × {n_gen} tokens, greedy, 2 workers ({threads} thread each), --parallel 8, median of {rounds} rounds"
    );
    println!();
    println!("| | wall (s) | generated tok/s (prompts included) |");
    println!("|---|---:|---:|");
    println!(
        "| shardline, one after another | {ours_seq:.2} | {:.1} |",
        tokens / ours_seq
    );
    println!(
        "| shardline, all at once (pipelined) | {ours_par:.2} | {:.1} |",
        tokens / ours_par
    );
    println!(
        "| llama.cpp RPC client, 8 sequences in one batch | {theirs:.2} | {:.1} |",
        tokens / theirs
    );
    println!();
    println!(
        "all at once vs one after another: {:.2}x; vs llama.cpp's batch: {:.2}x",
        ours_seq / ours_par,
        theirs / ours_par
    );
    println!(
        "llama.cpp decode steps alone: {:.1} tok/s (8 x {} steps in {their_decode:.2} s)",
        (PROMPTS.len() * (n_gen - 1)) as f64 / their_decode,
        n_gen - 1
    );
    println!("shardline step spans in the last concurrent round: {spans}, longest overlap of two stages {overlap:?}");
    println!("same texts alone and at once: {same}");
    // Batch composition can change llama.cpp's arithmetic, so this is
    // reported, not required.
    let matching = ours
        .iter()
        .zip(&their_tokens)
        .filter(|(a, b)| a.iter().map(|&t| t as i32).eq(b.iter().copied()))
        .count();
    println!(
        "sequences with the same tokens as llama.cpp's batch: {matching} of {}",
        PROMPTS.len()
    );
}
