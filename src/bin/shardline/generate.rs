//! `shardline run`: generate text from a prompt on stdout.

use std::io::{IsTerminal, Write};

use anyhow::Context as _;

use crate::args::{clock_seed, engine_options, ClusterArgs};

/// `shardline run`'s options.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The prompt (read from stdin when absent).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: u32,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Minimum probability relative to the best token (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON line of timings on stderr at the end.
    #[arg(long)]
    pub stats: bool,
}

/// `shardline run`.
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    use std::io::Read;
    let sampler = shardline::sample::SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        seed: a.seed.unwrap_or_else(clock_seed),
        ..Default::default()
    };
    let RunArgs {
        cluster,
        prompt,
        chat,
        max_tokens,
        stats,
        ..
    } = a;
    let prompt = match prompt {
        Some(p) => p,
        None => {
            if std::io::stdin().is_terminal() {
                anyhow::bail!("no prompt: pass --prompt TEXT or pipe it on stdin");
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from stdin")?;
            s
        }
    };
    let opts = engine_options(&cluster)?;
    // An Ollama model's params layer may name stop texts its template needs;
    // its system layer is the default system prompt of a chat.
    let model = cluster.model()?;
    let ollama = model.ollama();
    let stop = ollama.map(|m| m.params.stop.clone()).unwrap_or_default();
    let mut messages: Vec<shardline::chat::ChatMessage> = ollama
        .and_then(|m| m.system.clone())
        .map(|s| shardline::chat::ChatMessage::new("system", s))
        .into_iter()
        .collect();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        // A server that failed during the load (dropped, restarted) gets
        // one more chance; a model or plan that cannot work does not.
        let engine = match shardline::engine::Engine::load(opts.clone()).await {
            Err(e) if e.is_transient() => {
                tracing::warn!("loading failed ({e}); trying once more");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                shardline::engine::Engine::load(opts).await
            }
            r => r,
        }
        .context("loading the model")?;
        let text = if chat {
            messages.push(shardline::chat::ChatMessage::new("user", prompt));
            engine
                .render_chat(&messages)
                .context("rendering the chat template")?
        } else {
            prompt
        };
        let req = shardline::engine::GenerateRequest {
            prompt: shardline::engine::Prompt::Text(text),
            max_tokens,
            sampler,
            stop,
            stop_at_eog: true,
        };
        let mut stream = engine.generate(req).context("starting generation")?;
        let mut out = std::io::stdout();
        let mut usage = None;
        while let Some(ev) = stream.next().await {
            match ev {
                shardline::engine::Event::Text(piece) => {
                    let r = out.write_all(piece.as_bytes()).and_then(|_| out.flush());
                    if let Err(e) = r {
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            return Ok(());
                        }
                        return Err(anyhow::Error::new(e).context("writing to stdout"));
                    }
                }
                shardline::engine::Event::Done(u) => usage = Some(u),
                shardline::engine::Event::Error(e) => anyhow::bail!("generation failed: {e}"),
            }
        }
        let st = usage.context("the engine stopped before finishing")?;
        if out.is_terminal() {
            writeln!(out)?;
        }
        if stats {
            let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
            let ls = engine.load_stats();
            let line = serde_json::json!({
                "load_s": engine.load_time().as_secs_f64(),
                "sent_bytes": ls.sent_bytes,
                "cached_bytes": ls.cached_bytes,
                "hashed_bytes": ls.hashed_bytes,
                "load_round_trips": ls.servers.iter().map(|s| s.round_trips).max().unwrap_or(0),
                "devices": memory_stats(engine.plan(), ls),
                "prompt_tokens": st.prompt_tokens,
                "prompt_tok_s": rate(st.prompt_tokens, st.prompt_s),
                "gen_tokens": st.completion_tokens,
                "gen_tok_s": rate(st.gen_steps, st.gen_s),
            });
            eprintln!("{line}");
        }
        Ok(())
    })
}

/// Per device of the plan: what the plan counted and what the coordinator
/// then allocated there.
fn memory_stats(
    plan: &shardline::plan::Plan,
    ls: &shardline::engine::LoadStats,
) -> Vec<serde_json::Value> {
    use shardline::plan::Target;
    plan.stages
        .iter()
        .enumerate()
        .filter_map(|(k, s)| match &s.target {
            Target::Remote {
                endpoint, device, ..
            } => {
                // The plan counts a share of the head in a spare graph slot
                // with its stage (one memory); the allocation is the slot's.
                let slots: Vec<u32> = plan
                    .head_shares
                    .iter()
                    .filter(|h| h.stage == k && h.target != s.target)
                    .filter_map(|h| match &h.target {
                        Target::Remote { device, .. } => Some(*device),
                        Target::Local => None,
                    })
                    .collect();
                let allocated = ls
                    .servers
                    .iter()
                    .filter(|l| &l.endpoint == endpoint)
                    .flat_map(|l| &l.allocated)
                    .filter(|a| a.device == *device || slots.contains(&a.device))
                    .map(|a| a.bytes)
                    .sum::<u64>();
                Some(serde_json::json!({
                    "endpoint": endpoint,
                    "device": device,
                    "planned_bytes": s.needed_bytes(),
                    "allocated_bytes": allocated,
                }))
            }
            Target::Local => None,
        })
        .collect()
}
