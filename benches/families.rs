//! Decode speed per model family against llama.cpp's own RPC client, on
//! two workers each (alike, started by the bench) in the same run, the two
//! clients measured back to back in every round: each family's small synthetic model
//! (`tests/common/families.rs`, plain llama included as the reference),
//! split evenly over both workers, a 40-token prompt, greedy decoding.
//! The figure that matters is each family's ratio (shardline / llama.cpp)
//! next to llama's: no family should be a slow path.
//!
//! In each round both clients load the family's model, then decode
//! SHARDLINE_BENCH_REPS times each, one right after the other; the table
//! also gives the CPU time each client's runs took on the client and on
//! its workers, which a busy machine hardly moves.
//!
//! `cargo bench --bench families` (env: SHARDLINE_BENCH_ROUNDS,
//! SHARDLINE_BENCH_REPS, SHARDLINE_BENCH_TOKENS, SHARDLINE_BENCH_THREADS,
//! SHARDLINE_BENCH_FAMILIES: a comma-separated subset besides llama,
//! SHARDLINE_BENCH_SCALE:
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

/// CPU time so far of every thread of process `pid` (Linux's
/// per-thread `schedstat`, in ns); 0 where it cannot be read.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn main() {
    // SHARDLINE_BENCH_FAMILIES: a comma-separated subset, in the order
    // given (llama, the reference, is always measured, first).
    let families: Vec<Family> = match std::env::var("SHARDLINE_BENCH_FAMILIES") {
        Ok(only) => std::iter::once(Family::Llama)
            .chain(only.split(',').map(|n| {
                *BEYOND_LLAMA
                    .iter()
                    .find(|f| f.description() == n)
                    .unwrap_or_else(|| panic!("no family '{n}'"))
            }))
            .collect(),
        Err(_) => std::iter::once(Family::Llama).chain(BEYOND_LLAMA).collect(),
    };
    let rounds: usize = env_or("SHARDLINE_BENCH_ROUNDS", 3);
    let n_gen: usize = env_or("SHARDLINE_BENCH_TOKENS", 64);
    let reps: usize = env_or("SHARDLINE_BENCH_REPS", 3).max(1);
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

    let load_ours = |f: Family, m: &Path| {
        rt.block_on(Engine::load(EngineOptions {
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
        .unwrap_or_else(|e| panic!("{f:?}: {e}"))
    };
    // CPU seconds a run takes on this process (the client) and on the
    // client's workers, prompt included: unlike the speeds, they hardly
    // move with the machine's load, so they show whether a family costs
    // one client more work.
    let me = std::process::id();
    let ours_pids: Vec<u32> = ours_workers.iter().map(|w| w.pid()).collect();
    let their_pids: Vec<u32> = their_workers.iter().map(|w| w.pid()).collect();
    let cpu = |pids: &[u32]| (cpu_ns(me), pids.iter().map(|&p| cpu_ns(p)).sum::<u64>());
    let spent = |before: (u64, u64), pids: &[u32]| {
        let after = cpu(pids);
        [after.0 - before.0, after.1 - before.1].map(|ns| ns as f64 * 1e-9)
    };
    let shardline_run = |e: &Engine| {
        let before = cpu(&ours_pids);
        let (toks, st) = common::greedy(&rt, e, prompt.clone(), n_gen);
        let toks: Vec<i32> = toks.into_iter().map(|t| t as i32).collect();
        (
            st.gen_steps as f64 / st.gen_s,
            toks,
            spent(before, &ours_pids),
        )
    };
    let llama_run = |r: &mut LlamaRef| {
        let before = cpu(&their_pids);
        let (toks, _, decode_s) = r.greedy_timed(&ids, n_gen);
        (
            (n_gen - 1) as f64 / decode_s,
            toks,
            spent(before, &their_pids),
        )
    };

    // Per family: speeds of each client, and per-round ratios.
    let n = families.len();
    let mut ours = vec![Vec::new(); n];
    let mut theirs = vec![Vec::new(); n];
    let mut ratios = vec![Vec::new(); n];
    let mut same = vec![true; n];
    // Per family and client: [client, workers] CPU seconds over all runs.
    let mut cpu_ours = vec![[0.0f64; 2]; n];
    let mut cpu_theirs = vec![[0.0f64; 2]; n];
    for round in 0..rounds {
        for (i, &f) in families.iter().enumerate() {
            // Both clients loaded, then `reps` decodes of each, one right
            // after the other (order alternating): the two halves of a pair
            // are a second apart, not a model load apart, so a burst of
            // load on the machine falls on both less often. The round's
            // figures are the medians over its pairs.
            let e = load_ours(f, &models[i].0);
            let mut r = LlamaRef::load(&bare[i].0, &devices, n_ctx);
            let (mut a_v, mut b_v, mut pair) = (Vec::new(), Vec::new(), Vec::new());
            for rep in 0..reps {
                let ((a, a_toks, a_cpu), (b, b_toks, b_cpu)) = if (round + rep) % 2 == 0 {
                    let a = shardline_run(&e);
                    (a, llama_run(&mut r))
                } else {
                    let b = llama_run(&mut r);
                    (shardline_run(&e), b)
                };
                a_v.push(a);
                b_v.push(b);
                pair.push(a / b);
                same[i] &= a_toks == b_toks;
                for k in 0..2 {
                    cpu_ours[i][k] += a_cpu[k];
                    cpu_theirs[i][k] += b_cpu[k];
                }
            }
            let (a, b) = (median(a_v), median(b_v));
            let ratio = median(pair);
            ours[i].push(a);
            theirs[i].push(b);
            ratios[i].push(ratio);
        }
    }
    // Each round's family ratio over that round's llama ratio.
    let per_round: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..rounds).map(|r| ratios[i][r] / ratios[0][r]).collect())
        .collect();
    let relative: Vec<f64> = per_round.iter().map(|v| median(v.clone())).collect();
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.2}-{hi:.2}")
    };

    println!("widths x{scale} (embedding {}); 2 workers on loopback per client, {threads} thread(s) each; layers split evenly, output on the last worker; prompt {} tokens; {n_gen} tokens generated greedily; {rounds} rounds of {reps} decodes per client, the two clients back to back (order alternating); medians", tests_common::families::N_EMBD * scale.max(1), prompt.len());
    println!();
    println!("| family | shardline decode (tok/s) | llama.cpp decode (tok/s) | ratio | ratio / llama's | its range over rounds | CPU ms per run, shardline: client + workers | llama.cpp: client + workers | same tokens |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let runs = (rounds * reps) as f64;
    let ms = |c: [f64; 2]| format!("{:.0} + {:.0}", 1e3 * c[0] / runs, 1e3 * c[1] / runs);
    for i in 0..n {
        println!(
            "| {} | {:.1} | {:.1} | {:.2}x | {:.2} | {} | {} | {} | {} |",
            families[i].description(),
            median(ours[i].clone()),
            median(theirs[i].clone()),
            median(ratios[i].clone()),
            relative[i],
            range(&per_round[i]),
            ms(cpu_ours[i]),
            ms(cpu_theirs[i]),
            same[i]
        );
    }
}
