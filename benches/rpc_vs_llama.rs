//! shardline against llama.cpp's own RPC client, on the same two workers, in
//! the same run: load time, prompt and decode speed with greedy sampling.
//!
//! `cargo bench --bench rpc_vs_llama` (env: SHARDLINE_BENCH_ROUNDS,
//! SHARDLINE_BENCH_SAME_WORKERS (1: both clients on the same two workers,
//! one after the other; 0: a pair each),
//! SHARDLINE_BENCH_TOKENS, SHARDLINE_BENCH_THREADS, SHARDLINE_BENCH_STRATEGY
//! (even: the layers split as llama.cpp splits them), SHARDLINE_BENCH_HEAD_SPLIT
//! (on: the output matrix shared by both workers; off: on the last one),
//! SHARDLINE_BENCH_SLOTS (2: each worker serves its CPU twice, `--device
//! CPU,CPU`, so a share of the head has a graph slot of its own; llama.cpp
//! is given the first device of each; 1: plain workers), SHARDLINE_TEST_MODEL).
//! Prints a Markdown table for docs/BENCHMARKS.md and checks that both
//! produced the same tokens in every round (exit 1 if not). scripts/test.sh
//! runs a short version (`cargo test --bench rpc_vs_llama`, 2 rounds of 8
//! tokens, unoptimised).

#[path = "../tests/common/llama_ref.rs"]
mod llama_ref;

mod common;

use std::path::Path;
use std::time::Instant;

use shardline::engine::{Engine, EngineOptions};
use shardline::plan::{HeadSplit, Strategy};

use common::{env_or, median, model_path};

#[derive(Default, Clone, Copy)]
struct Round {
    load_s: f64,
    prompt_tok_s: f64,
    gen_tok_s: f64,
}

fn summarize(rounds: &[Round]) -> Round {
    Round {
        load_s: median(rounds.iter().map(|r| r.load_s).collect()),
        prompt_tok_s: median(rounds.iter().map(|r| r.prompt_tok_s).collect()),
        gen_tok_s: median(rounds.iter().map(|r| r.gen_tok_s).collect()),
    }
}

const PROMPT: &str = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg \
combined movable metal type, oil-based ink and a screw press adapted from wine making. Within fifty years \
printing shops had spread to more than two hundred cities across Europe, and the cost of books fell sharply. \
Historians still debate how quickly literacy followed, but the effect on science, religion and politics";

fn main() {
    let rounds: usize = env_or("SHARDLINE_BENCH_ROUNDS", 3);
    let n_gen: usize = env_or("SHARDLINE_BENCH_TOKENS", 64);
    let threads: usize = env_or("SHARDLINE_BENCH_THREADS", 1);
    let strategy: Strategy = env_or("SHARDLINE_BENCH_STRATEGY", Strategy::Even);
    let head_split: HeadSplit = env_or("SHARDLINE_BENCH_HEAD_SPLIT", HeadSplit::On);
    let n_ctx = 512u32;
    let model = model_path();
    let exe = Path::new(env!("CARGO_BIN_EXE_shardline"));
    let slots: usize = env_or("SHARDLINE_BENCH_SLOTS", 2);
    let device_arg = vec!["CPU"; slots.max(1)].join(",");
    // Both clients use the same two workers, one after the other (a server
    // serves one client at a time; llama.cpp's client lets go of its
    // connections when its model is dropped). Every round runs both clients
    // back to back, the order alternating, and ratios are taken per round:
    // the machine's speed drifts over a run by more than the differences
    // measured. SHARDLINE_BENCH_SAME_WORKERS=0 gives each client a pair of
    // its own, alike.
    let ours_workers = common::start_workers_with(exe, 2, threads, &["--device", &device_arg]);
    let same_workers: u8 = env_or("SHARDLINE_BENCH_SAME_WORKERS", 1);
    let own_pair = match same_workers {
        0 => common::start_workers_with(exe, 2, threads, &["--device", &device_arg]),
        _ => Vec::new(),
    };
    let their_workers = if own_pair.is_empty() {
        &ours_workers
    } else {
        &own_pair
    };
    let servers: Vec<String> = ours_workers
        .iter()
        .map(|w| w.endpoint.to_string())
        .collect();
    // llama.cpp gets one device per server, the memory it would split by:
    // given the spare too, it would give it layers (one more stage).
    let devices = llama_ref::rpc_devices_up_to(
        &their_workers.iter().map(|w| w.endpoint).collect::<Vec<_>>(),
        1,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();

    let run_ours = || {
        let started = Instant::now();
        let e = rt
            .block_on(Engine::load(EngineOptions {
                model: model.clone(),
                servers: servers.clone(),
                n_ctx,
                n_batch: n_ctx,
                strategy: strategy.clone(),
                head_split,
                threads,
                progress: false,
                ..EngineOptions::default()
            }))
            .expect("load");
        let load_s = started.elapsed().as_secs_f64();
        let prompt = e.tokenizer().encode(PROMPT, true, true);
        let (toks, st) = common::greedy(&rt, &e, prompt, n_gen);
        let round = Round {
            load_s,
            prompt_tok_s: st.prompt_tokens as f64 / st.prompt_s,
            gen_tok_s: st.gen_steps as f64 / st.gen_s,
        };
        (
            round,
            toks.into_iter().map(|t| t as i32).collect::<Vec<_>>(),
        )
    };
    let run_theirs = || {
        let started = Instant::now();
        let mut r = llama_ref::LlamaRef::load(&model, &devices, n_ctx);
        let load_s = started.elapsed().as_secs_f64();
        let prompt = r.tokenize(PROMPT, true);
        let (toks, prompt_s, decode_s) = r.greedy_timed(&prompt, n_gen);
        let round = Round {
            load_s,
            prompt_tok_s: prompt.len() as f64 / prompt_s,
            gen_tok_s: (n_gen - 1) as f64 / decode_s,
        };
        (round, toks, prompt.len())
    };

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut same = true;
    let mut n_prompt = 0;
    for round in 0..rounds {
        let ((a, a_toks), (b, b_toks, n)) = if round % 2 == 0 {
            let a = run_ours();
            (a, run_theirs())
        } else {
            let b = run_theirs();
            (run_ours(), b)
        };
        same &= a_toks == b_toks;
        n_prompt = n;
        eprintln!(
            "round {round}: decode {:.1} / {:.1} tok/s ({:.2}x), prompt {:.1} / {:.1} tok/s",
            a.gen_tok_s,
            b.gen_tok_s,
            a.gen_tok_s / b.gen_tok_s,
            a.prompt_tok_s,
            b.prompt_tok_s
        );
        ours.push(a);
        theirs.push(b);
    }
    let ratios = |f: fn(&Round) -> f64| -> Vec<f64> {
        ours.iter().zip(&theirs).map(|(a, b)| f(a) / f(b)).collect()
    };
    let decode_ratios = ratios(|r| r.gen_tok_s);
    let prompt_ratios = ratios(|r| r.prompt_tok_s);
    let load_ratios: Vec<f64> = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| b.load_s / a.load_s)
        .collect();
    let range = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        format!("{lo:.2}-{hi:.2}")
    };

    let (a, b) = (summarize(&ours), summarize(&theirs));
    println!("model: {}", model.display());
    println!("2 workers on loopback ({}), {threads} thread(s) each, serving {device_arg}; shardline strategy {strategy}, head split {head_split}; prompt {n_prompt} tokens; {n_gen} tokens generated greedily; medians of {rounds} rounds, the two clients back to back (order alternating)", if same_workers == 0 { "a pair per client" } else { "the same for both clients" });
    println!();
    println!("| | load (s) | prompt (tok/s) | decode (tok/s) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| shardline | {:.3} | {:.1} | {:.1} |",
        a.load_s, a.prompt_tok_s, a.gen_tok_s
    );
    println!(
        "| llama.cpp RPC client | {:.3} | {:.1} | {:.1} |",
        b.load_s, b.prompt_tok_s, b.gen_tok_s
    );
    let ranges = [&load_ratios, &prompt_ratios, &decode_ratios].map(|v| range(v));
    println!(
        "| ratio (shardline / llama.cpp), median of per-round ratios | {:.2}x faster | {:.2}x | {:.2}x |",
        median(load_ratios),
        median(prompt_ratios),
        median(decode_ratios)
    );
    println!(
        "| its range over rounds | {} | {} | {} |",
        ranges[0], ranges[1], ranges[2]
    );
    println!();
    println!("same greedy tokens: {same}");
    if !same {
        // Exiting skips destructors: stop the workers first.
        drop(own_pair);
        drop(ours_workers);
        // A ratio between two different generations means nothing; the short
        // run in scripts/test.sh fails on it.
        std::process::exit(1);
    }
}
