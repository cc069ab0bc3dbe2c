//! Running each layout on a real cluster: measure the servers once, plan
//! every layout with those speeds, then load and time each plan.

use std::path::PathBuf;

use super::{predict_layouts, Layout, LayoutError, LayoutRow, Measured, Workload};
use crate::cluster::{devices_from_reports, probe_all};
use crate::engine::{Engine, EngineOptions, GenerateRequest, Prompt};
use crate::gguf::Gguf;
use crate::plan::{ModelCost, PlanOptions, Strategy};
use crate::rpc::ClientOptions;
use crate::sample::SamplerConfig;

/// What to compare, and how long to time each layout.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The model.
    pub model: PathBuf,
    /// The servers, in planning order.
    pub servers: Vec<String>,
    /// The layouts to compare.
    pub layouts: Vec<Layout>,
    /// Context size (shared by the streams).
    pub n_ctx: u32,
    /// Largest batch per step.
    pub n_batch: u32,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokens generated per request.
    pub gen_tokens: usize,
    /// Rounds per measurement (the median counts).
    pub rounds: usize,
    /// Streams decoding together in the load measurement.
    pub streams: usize,
    /// Coordinator threads.
    pub threads: usize,
}

/// Measures the servers, plans and predicts every layout, then loads and
/// times each one that planned. A layout that fails to load or run keeps
/// its prediction and names the error.
pub async fn run_layouts(opts: &RunOptions) -> Result<Vec<LayoutRow>, LayoutError> {
    let gguf = Gguf::open(&opts.model).map_err(crate::plan::PlanError::from)?;
    let streams = opts.streams.max(1);
    let popts = PlanOptions {
        n_ctx: opts.n_ctx,
        n_batch: opts.n_batch,
        n_seq_max: u32::try_from(streams).unwrap_or(u32::MAX),
        ..PlanOptions::default()
    };
    let cost = ModelCost::from_gguf(&gguf, &popts)?;
    let reports = probe_all(&opts.servers, ClientOptions::default())
        .await
        .map_err(|(endpoint, source)| LayoutError::Probe { endpoint, source })?;
    let devices = devices_from_reports(&reports);
    let chunk = u32::try_from(opts.prompt_tokens)
        .unwrap_or(u32::MAX)
        .min(cost.n_batch)
        .max(crate::measure::BATCH_POINT + 1);
    let speeds =
        crate::measure::measure_model(&opts.model, &gguf, &reports, chunk, opts.threads).await?;
    let work = Workload {
        streams: popts.n_seq_max,
        prompt_tokens: u32::try_from(opts.prompt_tokens).unwrap_or(u32::MAX),
        gen_tokens: u32::try_from(opts.gen_tokens).unwrap_or(u32::MAX),
        prompt_chunk: chunk,
    };
    let planned = predict_layouts(&cost, &devices, &speeds, &opts.layouts, &work);
    let mut rows = Vec::with_capacity(planned.len());
    for (mut row, plan) in planned {
        if plan.is_some() {
            match time_layout(opts, Strategy::Split(row.counts.clone())).await {
                Ok(m) => row.measured = Some(m),
                Err(e) => row.error = Some(e),
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Loads the model with exactly `split` and times it.
async fn time_layout(opts: &RunOptions, split: Strategy) -> Result<Measured, String> {
    let streams = opts.streams.max(1);
    let engine = Engine::load(EngineOptions {
        model: opts.model.clone(),
        servers: opts.servers.clone(),
        n_ctx: opts.n_ctx,
        n_batch: opts.n_batch,
        strategy: split,
        parallel: streams,
        queue: streams,
        threads: opts.threads.max(1),
        ..EngineOptions::default()
    })
    .await
    .map_err(|e| format!("loading: {e}"))?;
    let text =
        "The quick brown fox jumps over the lazy dog while the river runs past old stone bridges. ";
    let mut prompt =
        engine
            .tokenizer()
            .encode(&text.repeat(opts.prompt_tokens / 8 + 2), true, true);
    prompt.truncate(opts.prompt_tokens.max(1));
    let request = || GenerateRequest {
        prompt: Prompt::Tokens(prompt.clone()),
        max_tokens: opts.gen_tokens.max(1),
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        stop_at_eog: false,
    };
    let rate = |n: usize, s: f64| n as f64 / s.max(1e-9);
    let (mut pp, mut tg, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.rounds.max(1) {
        let s = engine.generate(request()).map_err(|e| e.to_string())?;
        let (_, u) = s.collect_text().await.map_err(|e| e.to_string())?;
        pp.push(rate(u.prompt_tokens, u.prompt_s));
        tg.push(rate(u.gen_steps, u.gen_s));
    }
    for _ in 0..opts.rounds.max(1) {
        let round = std::time::Instant::now();
        let started: Vec<_> = (0..streams)
            .map(|_| engine.generate(request()))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let mut generated = 0;
        for s in started {
            let (_, u) = s.collect_text().await.map_err(|e| e.to_string())?;
            generated += u.completion_tokens;
        }
        all.push(rate(generated, round.elapsed().as_secs_f64()));
    }
    Ok(Measured {
        load_s: engine.load_time().as_secs_f64(),
        prompt_tok_s: median(pp),
        decode_tok_s: median(tg),
        streams_tok_s: median(all),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
