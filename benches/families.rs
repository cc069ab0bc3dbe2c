//! Decode speed per model family against llama.cpp's own RPC client, on
//! two workers each (alike, started by the bench) in the same run, the two
//! clients measured back to back in every round: each family's small synthetic model
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
    // SHARDLINE_BENCH_FAMILIES: a comma-separated subset (llama, the
    // reference, is always measured).
    let only: Option<Vec<String>> = std::env::var("SHARDLINE_BENCH_FAMILIES")
        .ok()
        .map(|s| s.split(',').map(str::to_owned).collect());
    let families: Vec<Family> = std::iter::once(Family::Llama)
        .chain(BEYOND_LLAMA.into_iter().filter(|f| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|n| n == f.description()))
        }))
        .collect();
    let rounds: usize = env_or("SHARDLINE_BENCH_ROUNDS", 3);
    let n_gen: usize = env_or("SHARDLINE_BENCH_TOKENS", 64);
    let threads: usize = env_or("SHARDLINE_BENCH_THREADS", 1);
    let scale: usize = env_or("SHARDLINE_BENCH_SCALE", 8);
    let n_ctx = 256u32;
    let exe = Path::new(env!("CARGO_BIN_EXE_shardline"));
    // Two pairs of workers: llama.cpp's client keeps its connections for
    // the whole process and a server serves one client at a time, so each
    // client gets its own pair. That lets every round measure both clients
    // back to back (order alternating), and the ratio is taken per round:
    // drift in the machine's speed between rounds (large on a shared
    // 2-core machine) then cancels instead of landing on one side.
    let ours_workers = common::start_workers(exe, 2, threads);
    let their_workers = common::start_workers(exe, 2, threads);
    let servers: Vec<String> = ours_workers
        .iter()
        .map(|w| w.endpoint.to_string())
        .collect();
    let devices = rpc_devices(&their_workers.iter().map(|w| w.endpoint).collect::<Vec<_>>());
    let prompt = id_prompts(N_VOCAB, &[(7, 40)]).remove(0);
    let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
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

    let shardline_run = |f: Family, m: &Path| {
        let e = rt
            .block_on(Engine::load(EngineOptions {
                model: m.to_path_buf(),
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
        let toks: Vec<i32> = toks.into_iter().map(|t| t as i32).collect();
        (st.gen_steps as f64 / st.gen_s, toks)
    };
    let llama_run = |m: &Path| {
        let mut r = LlamaRef::load(m, &devices, n_ctx);
        let (toks, _, decode_s) = r.greedy_timed(&ids, n_gen);
        ((n_gen - 1) as f64 / decode_s, toks)
    };

    // Per family: speeds of each client, and per-round ratios.
    let n = families.len();
    let mut ours = vec![Vec::new(); n];
    let mut theirs = vec![Vec::new(); n];
    let mut ratios = vec![Vec::new(); n];
    let mut same = vec![true; n];
    for round in 0..rounds {
        for (i, &f) in families.iter().enumerate() {
            let ((a, at), (b, bt)) = if round % 2 == 0 {
                let a = shardline_run(f, &models[i].0);
                (a, llama_run(&bare[i].0))
            } else {
                let b = llama_run(&bare[i].0);
                (shardline_run(f, &models[i].0), b)
            };
            same[i] &= at == bt;
            ours[i].push(a);
            theirs[i].push(b);
            ratios[i].push(a / b);
        }
    }
    // Each round's family ratio over that round's llama ratio.
    let relative: Vec<f64> = (0..n)
        .map(|i| median((0..rounds).map(|r| ratios[i][r] / ratios[0][r]).collect()))
        .collect();

    println!("widths x{scale} (embedding {}); 2 workers on loopback per client, {threads} thread(s) each; layers split evenly, output on the last worker; prompt {} tokens; {n_gen} tokens generated greedily; {rounds} rounds, the two clients back to back in each (order alternating); medians", tests_common::families::N_EMBD * scale.max(1), prompt.len());
    println!();
    println!("| family | shardline decode (tok/s) | llama.cpp decode (tok/s) | ratio | ratio / llama's | same tokens |");
    println!("|---|---:|---:|---:|---:|---|");
    for i in 0..n {
        println!(
            "| {} | {:.1} | {:.1} | {:.2}x | {:.2} | {} |",
            families[i].description(),
            median(ours[i].clone()),
            median(theirs[i].clone()),
            median(ratios[i].clone()),
            relative[i],
            same[i]
        );
    }
}
