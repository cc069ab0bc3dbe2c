//! Decode speed per model family against llama.cpp's own RPC client, on the
//! same two workers in the same run: each family's small synthetic model
//! (`tests/common/families.rs`, plain llama included as the reference),
//! split evenly over both workers, a 40-token prompt, greedy decoding.
//! The figure that matters is each family's ratio (shardline / llama.cpp)
//! next to llama's: no family should be a slow path.
//!
//! `cargo bench --bench families` (env: SHARDLINE_BENCH_ROUNDS,
//! SHARDLINE_BENCH_TOKENS, SHARDLINE_BENCH_THREADS, SHARDLINE_BENCH_SCALE:
//! the test models' widths times this, 8 by default (width 1024), so that
//! arithmetic rather than per-step overhead takes the time; 1 is the
//! tests' own small models). Prints a Markdown
//! table for docs/BENCHMARKS.md and checks that both produced the same
//! tokens.

#[path = "../tests/common/mod.rs"]
mod tests_common;

mod common;

use std::path::Path;

use shardline::engine::{Engine, EngineOptions};
use shardline::plan::{HeadSplit, Strategy};

use common::{env_or, median};
use tests_common::families::{write_model, Extra, Family, BEYOND_LLAMA, N_VOCAB};
use tests_common::llama_ref::{rpc_devices, LlamaRef};
use tests_common::synth::id_prompts;

fn main() {
    let families: Vec<Family> = std::iter::once(Family::Llama).chain(BEYOND_LLAMA).collect();
    let rounds: usize = env_or("SHARDLINE_BENCH_ROUNDS", 3);
    let n_gen: usize = env_or("SHARDLINE_BENCH_TOKENS", 64);
    let threads: usize = env_or("SHARDLINE_BENCH_THREADS", 1);
    let scale: usize = env_or("SHARDLINE_BENCH_SCALE", 8);
    let n_ctx = 256u32;
    let exe = Path::new(env!("CARGO_BIN_EXE_shardline"));
    let workers = common::start_workers(exe, 2, threads);
    let servers: Vec<String> = workers.iter().map(|w| w.endpoint.to_string()).collect();
    let prompt = id_prompts(N_VOCAB, &[(7, 40)]).remove(0);
    let with_vocab = Extra {
        vocab: true,
        scale,
        ..Extra::default()
    };
    let bare_extra = Extra {
        scale,
        ..Extra::default()
    };
    // The engine needs a tokenizer even for token prompts; llama.cpp takes
    // the same weights with no vocabulary (it refuses some families' files
    // with the generic test vocabulary).
    let models: Vec<_> = families
        .iter()
        .map(|&f| write_model(f, "bench", &with_vocab))
        .collect();
    let bare: Vec<_> = families
        .iter()
        .map(|&f| write_model(f, "bench-bare", &bare_extra))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Every family with shardline first: llama.cpp's client keeps its
    // connections for the whole process, and a server serves one client
    // at a time.
    let mut ours = Vec::new();
    for (f, m) in families.iter().zip(&models) {
        let mut speeds = Vec::new();
        let mut tokens = Vec::new();
        for _ in 0..rounds {
            let e = rt
                .block_on(Engine::load(EngineOptions {
                    model: m.0.clone(),
                    servers: servers.clone(),
                    n_ctx,
                    n_batch: n_ctx,
                    strategy: Strategy::Even,
                    head_split: HeadSplit::Off,
                    threads,
                    progress: false,
                    ..EngineOptions::default()
                }))
                .unwrap_or_else(|e| panic!("{f:?}: {e}"));
            let (toks, st) = common::greedy(&rt, &e, prompt.clone(), n_gen);
            tokens = toks.into_iter().map(|t| t as i32).collect::<Vec<_>>();
            speeds.push(st.gen_steps as f64 / st.gen_s);
        }
        ours.push((median(speeds), tokens));
    }

    let devices = rpc_devices(&workers.iter().map(|w| w.endpoint).collect::<Vec<_>>());
    let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let mut theirs = Vec::new();
    for m in &bare {
        let mut speeds = Vec::new();
        let mut tokens = Vec::new();
        for _ in 0..rounds {
            let mut r = LlamaRef::load(&m.0, &devices, n_ctx);
            let (toks, _, decode_s) = r.greedy_timed(&ids, n_gen);
            tokens = toks;
            speeds.push((n_gen - 1) as f64 / decode_s);
        }
        theirs.push((median(speeds), tokens));
    }

    println!("widths x{scale} (embedding {}); 2 workers on loopback, {threads} thread(s) each; layers split evenly, output on the last worker; prompt {} tokens; {n_gen} tokens generated greedily; median of {rounds} rounds", tests_common::families::N_EMBD * scale.max(1), prompt.len());
    println!();
    println!("| family | shardline decode (tok/s) | llama.cpp decode (tok/s) | ratio | ratio / llama's | same tokens |");
    println!("|---|---:|---:|---:|---:|---|");
    let llama_ratio = ours[0].0 / theirs[0].0;
    for ((f, (a, at)), (b, bt)) in families.iter().zip(&ours).zip(&theirs) {
        let ratio = a / b;
        println!(
            "| {} | {a:.1} | {b:.1} | {ratio:.2}x | {:.2} | {} |",
            f.description(),
            ratio / llama_ratio,
            at == bt
        );
    }
}
