//! `shardline bench`: load time, prompt and decode speed.

use anyhow::Context as _;

use crate::args::{default_threads, engine_options, ClusterArgs};
use crate::layouts;

/// `shardline bench`'s options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to generate per request.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Rounds to run (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Requests submitted at once in each round.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub layouts: layouts::LayoutArgs,
}

/// `shardline bench`.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.layouts.wanted() {
        return layouts::run(
            &a.cluster,
            &a.layouts,
            &layouts::BenchShape {
                prompt_tokens: a.prompt_tokens,
                gen_tokens: a.gen_tokens,
                rounds: a.rounds,
                json: a.json,
            },
            default_threads(),
        );
    }
    run_bench(
        a.cluster,
        a.prompt_tokens,
        a.gen_tokens,
        a.rounds,
        a.concurrency,
        a.json,
    )
}

fn run_bench(
    cluster: ClusterArgs,
    prompt_tokens: usize,
    gen_tokens: usize,
    rounds: usize,
    concurrency: usize,
    json: bool,
) -> anyhow::Result<()> {
    use shardline::engine::{Engine, GenerateRequest, Prompt};
    anyhow::ensure!(
        prompt_tokens > 0 && rounds > 0 && concurrency > 0,
        "counts must be at least 1"
    );
    let mut opts = engine_options(&cluster)?;
    opts.parallel = concurrency;
    opts.queue = concurrency;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let started = std::time::Instant::now();
        let engine = Engine::load(opts).await.context("loading the model")?;
        let load_s = started.elapsed().as_secs_f64();
        // A prompt of ordinary text, repeated to the length asked for.
        let text = "The quick brown fox jumps over the lazy dog while the river runs past old stone bridges. ";
        let mut prompt = engine.tokenizer().encode(&text.repeat(prompt_tokens / 8 + 2), true, true);
        prompt.truncate(prompt_tokens);
        let mut pp = Vec::new();
        let mut tg = Vec::new();
        let mut total = Vec::new();
        for _ in 0..rounds {
            let round = std::time::Instant::now();
            let streams = (0..concurrency)
                .map(|_| {
                    engine.generate(GenerateRequest {
                        prompt: Prompt::Tokens(prompt.clone()),
                        max_tokens: gen_tokens,
                        sampler: shardline::sample::SamplerConfig::greedy(),
                        stop: Vec::new(),
                        stop_at_eog: false,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut generated = 0;
            for s in streams {
                let (_, u) = s.collect_text().await.map_err(|e| anyhow::anyhow!(e))?;
                generated += u.completion_tokens;
                pp.push(u.prompt_tokens as f64 / u.prompt_s.max(1e-9));
                tg.push(u.gen_steps as f64 / u.gen_s.max(1e-9));
            }
            total.push(generated as f64 / round.elapsed().as_secs_f64());
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let ls = engine.load_stats();
        let result = serde_json::json!({
            "load_s": load_s,
            "sent_bytes": ls.sent_bytes,
            "cached_bytes": ls.cached_bytes,
            "hashed_bytes": ls.hashed_bytes,
            "prompt_tokens": prompt.len(),
            "gen_tokens": gen_tokens,
            "concurrency": concurrency,
            "rounds": rounds,
            "prompt_tok_s": median(pp),
            "gen_tok_s": median(tg),
            "total_gen_tok_s": median(total),
        });
        if json {
            println!("{result}");
        } else {
            println!("{}", engine.plan());
            println!();
            println!(
                "load          {load_s:.3} s ({} sent, {} from caches)",
                indicatif::HumanBytes(ls.sent_bytes),
                indicatif::HumanBytes(ls.cached_bytes)
            );
            println!("prompt        {:.1} tok/s ({} tokens, per request)", result["prompt_tok_s"].as_f64().unwrap_or(0.0), prompt.len());
            println!("decode        {:.1} tok/s (per request)", result["gen_tok_s"].as_f64().unwrap_or(0.0));
            println!(
                "all requests  {:.1} generated tok/s ({concurrency} at once, {gen_tokens} tokens each, median of {rounds})",
                result["total_gen_tok_s"].as_f64().unwrap_or(0.0)
            );
        }
        Ok(())
    })
}
