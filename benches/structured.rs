//! Constrained vs unconstrained decoding: does constrained sampling cost
//! unconstrained requests anything, and what does a constraint cost?
//!
//! 1. Sampling alone, on the test model's vocabulary and random logits:
//!    microseconds per token for plain greedy sampling, for greedy sampling
//!    under a JSON-schema constraint (mask, sample, commit), and the one-off
//!    cost of preparing the vocabulary and compiling the schema.
//! 2. End to end on two local workers: decode tokens/s of greedy requests
//!    without a constraint and with the same schema.
//!
//! `cargo bench --bench structured` (env: SHARDLINE_BENCH_TOKENS,
//! SHARDLINE_BENCH_ROUNDS, SHARDLINE_TEST_MODEL).

mod common;

use std::path::Path;
use std::time::Instant;

use serde_json::json;
use shardline::constrain::{Grammar, Vocab};
use shardline::engine::{Engine, EngineOptions, GenerateRequest, OutputOptions, Prompt};
use shardline::plan::Strategy;
use shardline::sample::{Sampler, SamplerConfig};

use common::{env_or, median, model_path};

fn schema() -> Grammar {
    Grammar::JsonSchema(json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4}
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": false
    }))
}

/// Pseudo-random logits (xorshift), the same every run.
fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 20_000) as f32 / 1000.0 - 10.0
        })
        .collect()
}

fn sampling(tokenizer: &shardline::tokenizer::Tokenizer) {
    let n = tokenizer.n_vocab();
    let rows: Vec<Vec<f32>> = (0..64).map(|s| logits(n, s + 1)).collect();
    let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
    let reps = 2000;
    let t = Instant::now();
    for i in 0..reps {
        std::hint::black_box(s.sample(&rows[i % rows.len()], &[]));
    }
    let plain_us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;

    let t = Instant::now();
    let vocab = Vocab::new(tokenizer).unwrap();
    let vocab_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let mut c = vocab.compile(&schema()).unwrap();
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let (mut steps, mut spent) = (0usize, 0.0f64);
    let mut i = 0;
    // Outputs of the schema, one after another, until enough steps.
    while steps < 400 {
        let t = Instant::now();
        let mask = c.mask().unwrap();
        let tok = s.sample_masked(&rows[i % rows.len()], &[], Some(&mask));
        let done = tok == tokenizer.eos().unwrap_or(0) || c.commit(tok).is_err() || c.is_done();
        spent += t.elapsed().as_secs_f64();
        steps += 1;
        i += 1;
        if done {
            c = vocab.compile(&schema()).unwrap();
        }
    }
    let constrained_us = spent * 1e6 / steps as f64;
    println!(
        "sampling, {n} tokens: plain greedy {plain_us:.1} us/token; under the schema {constrained_us:.1} us/token (mask + sample + commit); vocabulary prepared once in {vocab_ms:.0} ms, schema compiled in {compile_ms:.1} ms"
    );
}

async fn decode(engine: &Engine, prompt: &[u32], n: usize, constrained: bool) -> (f64, usize) {
    let req = GenerateRequest {
        prompt: Prompt::Tokens(prompt.to_vec()),
        max_tokens: n,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        stop_at_eog: true,
    };
    let out = OutputOptions {
        constraint: constrained.then(|| engine.vocab().unwrap().compile(&schema()).unwrap()),
        logprobs: None,
    };
    let (_, usage) = engine
        .generate_with(req, out)
        .unwrap()
        .collect_text()
        .await
        .unwrap();
    (usage.gen_s, usage.completion_tokens)
}

fn main() {
    let n_gen: usize = env_or("SHARDLINE_BENCH_TOKENS", 64);
    let rounds: usize = env_or("SHARDLINE_BENCH_ROUNDS", 3);
    let exe = Path::new(env!("CARGO_BIN_EXE_shardline"));
    let workers = common::start_workers(exe, 2, 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = Engine::load(EngineOptions {
            model: model_path(),
            servers: workers.iter().map(|w| w.endpoint.to_string()).collect(),
            n_ctx: 1024,
            strategy: Strategy::Memory,
            threads: 1,
            progress: false,
            ..EngineOptions::default()
        })
        .await
        .expect("load");
        sampling(engine.tokenizer());
        let text = engine
            .render_chat(&[shardline::chat::ChatMessage::new(
                "user",
                "Describe a person as JSON with name, age and tags.",
            )])
            .unwrap();
        let prompt = engine.tokenizer().encode(&text, true, true);
        for constrained in [false, true, false, true] {
            let mut rates = Vec::new();
            let mut tokens = 0;
            for _ in 0..rounds {
                let (s, n) = decode(&engine, &prompt, n_gen, constrained).await;
                rates.push(n.saturating_sub(1) as f64 / s.max(1e-9));
                tokens = n;
            }
            println!(
                "decode, 2 workers, greedy, {}: {:.1} tok/s (median of {rounds}, {tokens} tokens)",
                if constrained {
                    "JSON schema"
                } else {
                    "unconstrained"
                },
                median(rates)
            );
        }
    });
}
