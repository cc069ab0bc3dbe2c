//! A stable-Rust driver for the `gguf_plan` fuzz target: mutations of the
//! tiny model (bit flips, interesting integers, truncations; a fixed-seed
//! PRNG, so every run feeds the same inputs) through the same chain the
//! target runs, plus what needs ggml and so is not in the fuzz build: the
//! model config, the tokenizer and `inspect`'s summary. Every input must
//! give a value or a typed error, never a panic.
//!
//! The files in `tests/data/hostile/` (crashes found so far, and the
//! hostile files the CLI tests build) are replayed the same way.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use shardline::gguf::Gguf;

/// Mutated inputs per run; `SHARDLINE_FUZZ_ITERATIONS` asks for more.
const ITERATIONS: u32 = 20_000;
/// The run stops early past this, so a slow machine does not stall the suite.
const TIME_BUDGET: Duration = Duration::from_secs(60);

/// Everything a model file goes through before a server is needed;
/// whether it planned.
fn chain(bytes: &[u8]) -> bool {
    let planned = shardline::plan::fuzz::plan_bytes(bytes).is_ok();
    let Ok(g) = Gguf::from_bytes(bytes.to_vec()) else {
        return planned;
    };
    let _ = shardline::model::LlamaConfig::from_gguf(&g);
    let _ = shardline::tokenizer::Tokenizer::from_gguf(&g);
    if let Ok(s) = shardline::inspect::summarize(&g) {
        let _ = s.to_string();
    }
    planned
}

/// xorshift64*: small, deterministic, good enough to pick offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that sit on the edges the checks guard.
const INTERESTING: [u64; 10] = [
    0,
    1,
    3,
    4096,
    4097,
    2_000_000_000,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    u64::MAX,
];

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    // Most of what a file declares is in its first kilobyte or so: aim there
    // three times in four.
    for _ in 0..1 + rng.below(3) {
        let header = b.len().min(1200);
        let span = if rng.below(4) < 3 { header } else { b.len() };
        let at = rng.below(span);
        match rng.below(4) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next() as u8,
            2 => {
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                let end = (at + width).min(b.len());
                b[at..end].copy_from_slice(&v[..end - at]);
            }
            _ => b.truncate(at),
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

#[test]
fn mutated_models_never_panic() {
    let seed = common::tiny::valid();
    // The seed itself goes all the way through.
    let plans = shardline::plan::fuzz::plan_bytes(&seed).expect("the seed plans");
    assert!(!plans.is_empty());

    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let started = Instant::now();
    let iterations = std::env::var("SHARDLINE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ITERATIONS);
    let budget = if iterations > ITERATIONS {
        Duration::MAX
    } else {
        TIME_BUDGET
    };
    let (mut ran, mut planned) = (0u32, 0u32);
    for i in 0..iterations {
        if started.elapsed() > budget {
            break;
        }
        let input = mutate(&seed, &mut rng);
        let outcome = catch_unwind(AssertUnwindSafe(|| chain(&input)));
        let Ok(ok) = outcome else {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{i}.gguf"));
            std::fs::write(&out, &input).unwrap();
            panic!(
                "input {i} panicked; saved to {} (add it to tests/data/hostile/)",
                out.display()
            );
        };
        planned += u32::from(ok);
        ran += 1;
    }
    eprintln!("{ran} inputs, {planned} planned");
    assert!(ran >= 100, "only {ran} inputs in the time budget");
    // Mutations that keep the file valid must still plan: a check that
    // refused everything would otherwise pass unnoticed.
    assert!(planned > 0, "none of {ran} inputs planned");
}

#[test]
fn regression_files_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "gguf") {
            let bytes = std::fs::read(&path).unwrap();
            let r = catch_unwind(AssertUnwindSafe(|| chain(&bytes)));
            assert!(r.is_ok(), "{} panicked", path.display());
            // Hostile files are refused, not planned.
            assert!(
                shardline::plan::fuzz::plan_bytes(&bytes).is_err(),
                "{} was accepted",
                path.display()
            );
            n += 1;
        }
    }
    assert!(n > 0, "no regression files in {}", dir.display());
}
