//! Where one stream's decode time goes: loads a model on two local workers
//! (layers split evenly), generates 64 greedy tokens twice, and prints the
//! mean milliseconds each pipeline stage took per decode step, from the
//! engine's step trace.
//!
//! `cargo run --release --example step_trace -- MODEL.gguf [on|off]`
//! (`on`/`off`: the output head split over the workers or not; the workers
//! are started from `target/release/shardline`, or `SHARDLINE_EXE`).

use std::collections::BTreeMap;

use shardline::engine::{Engine, EngineOptions, GenerateRequest, Prompt};
use shardline::plan::{HeadSplit, Strategy};
use shardline::sample::SamplerConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: step_trace MODEL.gguf [on|off]")?;
    let head_split: HeadSplit = args.next().as_deref().unwrap_or("on").parse()?;
    let exe = match std::env::var_os("SHARDLINE_EXE") {
        Some(e) => e.into(),
        // Examples live in target/<profile>/examples/.
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .ok_or("no target directory")?
            .join("shardline"),
    };
    let engine = Engine::load(EngineOptions {
        model: model.into(),
        n_ctx: 512,
        n_batch: 512,
        strategy: Strategy::Even,
        head_split,
        threads: 1,
        progress: false,
        worker_exe: Some(exe),
        // SHARDLINE_SERVERS=h:p,h:p uses running workers (e.g. started with
        // `--device CPU,CPU` for spare graph slots) instead of local ones.
        servers: std::env::var("SHARDLINE_SERVERS")
            .map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        ..EngineOptions::default()
    })
    .await?;
    for round in 0..2 {
        engine.step_trace().clear();
        let req = GenerateRequest {
            prompt: Prompt::Text("The history of printing".into()),
            max_tokens: 64,
            sampler: SamplerConfig::greedy(),
            stop: Vec::new(),
            stop_at_eog: false,
        };
        let started = std::time::Instant::now();
        let mut stream = engine.generate(req)?;
        while stream.next().await.is_some() {}
        let wall = started.elapsed().as_secs_f64();
        let mut per_stage: BTreeMap<(usize, String), (f64, usize)> = BTreeMap::new();
        for s in engine
            .step_trace()
            .spans()
            .iter()
            .filter(|s| s.n_tokens == 1)
        {
            let e = per_stage.entry((s.stage, s.endpoint.clone())).or_default();
            e.0 += (s.end - s.start).as_secs_f64() * 1e3;
            e.1 += 1;
        }
        println!("round {round}: {:.1} tok/s", 64.0 / wall);
        for ((stage, endpoint), (ms, n)) in per_stage {
            println!(
                "  stage {stage} ({endpoint}): {:.2} ms per decode step ({n} steps)",
                ms / n as f64
            );
        }
    }
    Ok(())
}
