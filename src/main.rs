//! The `shardline` command line.

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod layouts_cli;

/// Run one llama-family model across several llama.cpp rpc-servers.
#[derive(Debug, Parser)]
#[command(name = "shardline", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the model runs: servers, layer split, context.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// The model (.gguf).
    #[arg(long)]
    model: PathBuf,
    /// rpc-servers as host:port, comma separated. Without it, shardline
    /// starts --local-workers workers on this machine.
    #[arg(long, value_delimiter = ',')]
    rpc: Vec<String>,
    /// Local workers to start when no --rpc is given.
    #[arg(long, default_value_t = 2)]
    local_workers: usize,
    /// Context size (KV cache cells).
    #[arg(long, default_value_t = 4096)]
    ctx: u32,
    /// Largest batch of tokens per step (prompts are processed in chunks of it).
    #[arg(long, default_value_t = 512)]
    batch: u32,
    /// How to spread layers: memory (by free memory), even, or throughput
    /// (measures each server's speed and link first, then picks the layer
    /// counts that decode fastest; servers that only slow tokens down are
    /// left out).
    #[arg(long, default_value = "throughput")]
    strategy: shardline::plan::Strategy,
    /// Explicit layer counts per server, e.g. 10,20 (overrides --strategy).
    #[arg(long)]
    split: Option<String>,
    /// Keep the first N layers on this machine's CPU.
    #[arg(long, default_value_t = 0)]
    local_layers: u32,
    /// Micro-batches in the pipeline at once (0: one per stage, so every
    /// server computes while the others do; 1: one step at a time).
    #[arg(long, default_value_t = 0)]
    micro_batches: usize,
    /// Most memory the plan may use on each device of a server:
    /// HOST:PORT=SIZE for one server, SIZE for all (e.g. 24GiB, 512MiB;
    /// binary units). Repeat or comma-separate for several servers. ggml's
    /// server cannot report less than its device has, so this is applied
    /// here, to keep memory free on a shared machine.
    #[arg(long, value_delimiter = ',')]
    mem_cap: Vec<shardline::memcap::MemCap>,
    /// Split the output matrix by vocabulary rows over the servers that run
    /// layers, which then compute it at the same time: auto (for one
    /// stream, when the measured speeds predict faster decoding; needs
    /// --strategy throughput), on, or off.
    #[arg(long, default_value = "auto")]
    head_split: shardline::plan::HeadSplit,
}

impl ClusterArgs {
    fn strategy(&self) -> anyhow::Result<shardline::plan::Strategy> {
        Ok(match &self.split {
            Some(s) => shardline::plan::Strategy::Split(shardline::plan::parse_split(s)?),
            None => self.strategy.clone(),
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text with a model sharded across rpc-servers. Only the
    /// generated text goes to stdout.
    Run {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The prompt (read from stdin when absent).
        #[arg(long)]
        prompt: Option<String>,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        /// Most tokens to generate.
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Sampling temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        /// Keep the K most likely tokens (0 = off).
        #[arg(long, default_value_t = 40)]
        top_k: u32,
        /// Nucleus sampling threshold (1 = off).
        #[arg(long, default_value_t = 0.95)]
        top_p: f32,
        /// Minimum probability relative to the best token (0 = off).
        #[arg(long, default_value_t = 0.05)]
        min_p: f32,
        /// Repetition penalty (1 = off).
        #[arg(long, default_value_t = 1.0)]
        repeat_penalty: f32,
        /// Random seed [default: from the clock].
        #[arg(long)]
        seed: Option<u64>,
        /// Print one JSON line of timings on stderr at the end.
        #[arg(long)]
        stats: bool,
    },
    /// Measure load time, prompt and decode speed on the cluster (greedy,
    /// synthetic prompt), optionally with several requests at once.
    Bench {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Prompt length in tokens.
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// Tokens to generate per request.
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Rounds to run (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Requests submitted at once in each round.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        layouts: layouts_cli::LayoutArgs,
    },
    /// Show how a model's layers would be spread over the servers, without
    /// uploading anything.
    Plan {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what each rpc-server offers (protocol, devices, memory). With no
    /// --rpc, starts two local workers and shows those.
    Cluster {
        /// rpc-servers as host:port, comma separated.
        #[arg(long, value_delimiter = ',')]
        rpc: Vec<String>,
        /// Local workers to start when no --rpc is given.
        #[arg(long, default_value_t = 2)]
        local_workers: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Summarize a GGUF model: architecture, layers, sizes, bytes per layer.
    Inspect {
        /// The .gguf file.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions,
    /// /v1/completions, /v1/models, /health, /metrics). Prints one ready line,
    /// `shardline serve ready: http://HOST:PORT model=NAME`, then the plan.
    Serve {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// Port to listen on; 0 picks a free one (printed on the ready line).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Sequences generated together (the context is split between them).
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Requests that may wait for a sequence; more get 429.
        #[arg(long, default_value_t = 64)]
        queue: usize,
        /// Require `Authorization: Bearer KEY` on /v1/*. Visible to other
        /// users in `ps`: prefer --api-key-file or SHARDLINE_API_KEY.
        #[arg(long, env = "SHARDLINE_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Read the API key from this file (one line; surrounding white space
        /// is dropped). Conflicts with --api-key and SHARDLINE_API_KEY.
        #[arg(long, value_name = "PATH", conflicts_with = "api_key")]
        api_key_file: Option<PathBuf>,
        /// Close a connection whose request line and headers take longer than
        /// this (slow or silent clients, idle keep-alive connections), e.g.
        /// 10s, 500ms.
        #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = shardline::server::parse_duration)]
        header_timeout: std::time::Duration,
        /// Answer 408 to a request body that takes longer than this to arrive.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = shardline::server::parse_duration)]
        body_timeout: std::time::Duration,
        /// Connections served at once; past it new ones get 503 and are closed.
        #[arg(long, value_name = "N", default_value_t = shardline::server::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
    },
    /// Write a model's weights into a cache folder, as `DIR/<hash>` files that
    /// `shardline worker --cache DIR` and llama.cpp's `rpc-server -c DIR` read,
    /// with a manifest for checking them. Files already right are kept.
    Seed {
        /// The cache folder.
        #[arg(long)]
        cache: PathBuf,
        /// The models (.gguf).
        #[arg(required = true)]
        models: Vec<PathBuf>,
        /// Threads for hashing and writing [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Run ggml's RPC server on this machine (wire-compatible with llama.cpp's
    /// rpc-server), serving its CPU (or GPUs in a GPU build) to a coordinator.
    Worker {
        /// Address to listen on. Anything but loopback exposes the machine's
        /// memory to the network: the protocol has no authentication.
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// Port to listen on; 0 picks a free one (printed on the ready line).
        #[arg(long, default_value_t = 50052)]
        port: u16,
        /// CPU threads used to compute graphs [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
        /// Folder to cache uploaded weights in, by hash, so a later upload of
        /// the same bytes skips the network.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Write this model's weights into the cache before serving, so a
        /// coordinator's load sends almost nothing (repeatable; needs --cache).
        #[arg(long, value_name = "MODEL.gguf")]
        seed: Vec<PathBuf>,
        /// Check the cache before serving: full (size and CRC32 of every
        /// file), size, or off. Damaged files are moved to DIR/bad/ and sent
        /// again by the next load.
        #[arg(long, default_value = "full", value_name = "full|size|off")]
        verify_cache: shardline::cache::VerifyMode,
        /// ggml devices to serve, comma separated (e.g. CPU or CUDA0)
        /// [default: every GPU, else the CPU].
        #[arg(long, value_delimiter = ',')]
        device: Vec<String>,
        /// Stop when the process that started this worker exits (used for
        /// the local workers shardline starts itself).
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line; no backtrace, whatever
            // RUST_BACKTRACE says: these are user-facing errors, not bugs.
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text
/// the message before it already includes (many errors print their source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Workers and servers are services: they say what they do. The others print
    // their results; logs only for trouble unless SHARDLINE_LOG asks.
    init_tracing(
        if matches!(cli.command, Command::Worker { .. } | Command::Serve { .. }) {
            "info"
        } else {
            "warn"
        },
    );
    match cli.command {
        Command::Run {
            cluster,
            prompt,
            chat,
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            seed,
            stats,
        } => {
            let sampler = shardline::sample::SamplerConfig {
                temperature,
                top_k,
                top_p,
                min_p,
                repeat_penalty,
                seed: seed.unwrap_or_else(clock_seed),
                ..Default::default()
            };
            run_generate(cluster, prompt, chat, max_tokens, sampler, stats)
        }
        Command::Plan { cluster, json } => run_plan(cluster, json),
        Command::Bench {
            cluster,
            prompt_tokens,
            gen_tokens,
            rounds,
            concurrency: _,
            json,
            layouts,
        } if layouts.wanted() => layouts_cli::run(
            &cluster,
            &layouts,
            &layouts_cli::BenchShape {
                prompt_tokens,
                gen_tokens,
                rounds,
                json,
            },
            default_threads(),
        ),
        Command::Bench {
            cluster,
            prompt_tokens,
            gen_tokens,
            rounds,
            concurrency,
            json,
            ..
        } => run_bench(
            cluster,
            prompt_tokens,
            gen_tokens,
            rounds,
            concurrency,
            json,
        ),
        Command::Cluster {
            rpc,
            local_workers,
            json,
        } => run_cluster(rpc, local_workers, json),
        Command::Inspect { path, json } => {
            let out = shardline::inspect::run_inspect(&path, json)
                .with_context(|| format!("inspecting {}", path.display()))?;
            print!("{out}");
            if !out.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        Command::Serve {
            cluster,
            host,
            port,
            parallel,
            queue,
            api_key,
            api_key_file,
            header_timeout,
            body_timeout,
            max_connections,
        } => {
            // Read before anything starts, so a bad file costs no load.
            let api_key = match api_key_file {
                Some(path) => Some(shardline::server::read_api_key_file(&path)?),
                None => api_key.map(|k| checked_api_key(&k)).transpose()?,
            };
            let serve = shardline::server::ServeOptions {
                engine: engine_options(&cluster)?,
                host,
                port,
                api_key,
                limits: shardline::server::HttpLimits {
                    header_timeout,
                    body_timeout,
                    max_connections,
                },
            };
            run_serve(serve, parallel, queue)
        }
        Command::Worker {
            host,
            port,
            threads,
            cache,
            seed,
            verify_cache,
            device,
            exit_with_parent,
        } => run_worker(shardline::worker::WorkerOptions {
            host,
            port,
            threads: threads.unwrap_or_else(default_threads),
            cache,
            seed,
            verify: verify_cache,
            devices: device,
            exit_with_parent,
        }),
        Command::Seed {
            cache,
            models,
            threads,
        } => run_seed(&cache, &models, threads.unwrap_or_else(default_threads)),
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A key from `--api-key` or `SHARDLINE_API_KEY`, held to the rules of a
/// key file: an empty one would silently turn authentication off, and one
/// with control characters could never be sent.
fn checked_api_key(key: &str) -> anyhow::Result<String> {
    let key = key.trim();
    anyhow::ensure!(
        !key.is_empty(),
        "the API key (--api-key or SHARDLINE_API_KEY) is empty: leave it unset to serve without one"
    );
    anyhow::ensure!(
        key.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
        "the API key (--api-key or SHARDLINE_API_KEY) must be printable ASCII"
    );
    Ok(key.to_string())
}

fn run_seed(cache: &std::path::Path, models: &[PathBuf], threads: usize) -> anyhow::Result<()> {
    for m in models {
        let g =
            shardline::gguf::Gguf::open(m).with_context(|| format!("reading {}", m.display()))?;
        let total: u64 = g.tensors().iter().map(|t| t.n_bytes()).sum();
        let bar = shardline::progress::byte_bar("seeding", total, true);
        let started = std::time::Instant::now();
        let r = shardline::cache::seed(cache, &g, threads, &|n| bar.inc(n))
            .with_context(|| format!("seeding {}", cache.display()))?;
        bar.finish_and_clear();
        println!(
            "{}: {} tensors, {} files written ({}), {} already right, {:.1} s",
            m.display(),
            r.tensors,
            r.written,
            indicatif::HumanBytes(r.bytes_written),
            r.kept,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn engine_options(c: &ClusterArgs) -> anyhow::Result<shardline::engine::EngineOptions> {
    Ok(shardline::engine::EngineOptions {
        model: c.model.clone(),
        servers: c.rpc.clone(),
        local_workers: c.local_workers,
        worker_exe: Some(std::env::current_exe().context("locating the shardline binary")?),
        n_ctx: c.ctx,
        n_batch: c.batch,
        strategy: c.strategy()?,
        local_layers: c.local_layers,
        micro_batches: c.micro_batches,
        mem_caps: c.mem_cap.clone(),
        head_split: c.head_split,
        ..Default::default()
    })
}

fn run_generate(
    cluster: ClusterArgs,
    prompt: Option<String>,
    chat: bool,
    max_tokens: usize,
    sampler: shardline::sample::SamplerConfig,
    stats: bool,
) -> anyhow::Result<()> {
    use std::io::Read;
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
            engine
                .render_chat(&[shardline::chat::ChatMessage::new("user", prompt)])
                .context("rendering the chat template")?
        } else {
            prompt
        };
        let req = shardline::engine::GenerateRequest {
            prompt: shardline::engine::Prompt::Text(text),
            max_tokens,
            sampler,
            stop: Vec::new(),
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
        .filter_map(|s| match &s.target {
            Target::Remote {
                endpoint, device, ..
            } => {
                let allocated = ls
                    .servers
                    .iter()
                    .filter(|l| &l.endpoint == endpoint)
                    .flat_map(|l| &l.allocated)
                    .filter(|a| a.device == *device)
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

fn run_serve(
    mut opts: shardline::server::ServeOptions,
    parallel: usize,
    queue: usize,
) -> anyhow::Result<()> {
    opts.engine.parallel = parallel;
    opts.engine.queue = queue;
    let rt = tokio::runtime::Runtime::new()?;
    let r = rt.block_on(shardline::server::serve(opts));
    // Streams still open at shutdown are dropped, not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(r?)
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

fn run_plan(cluster: ClusterArgs, json: bool) -> anyhow::Result<()> {
    use shardline::cluster::devices_from_reports;
    use shardline::plan::{plan, PlanOptions};
    let gguf = shardline::gguf::Gguf::open(&cluster.model)
        .with_context(|| format!("reading {}", cluster.model.display()))?;
    let opts = PlanOptions {
        n_ctx: cluster.ctx,
        n_batch: cluster.batch,
        strategy: cluster.strategy()?,
        local_layers: cluster.local_layers,
        head_split: cluster.head_split,
        ..PlanOptions::default()
    };
    // The model and the options are checked before any worker starts.
    let cost = shardline::graph::measure::measured_cost(&gguf, &opts)
        .with_context(|| format!("planning {}", cluster.model.display()))?;
    let (_workers, reports) = survey(&cluster.rpc, cluster.local_workers)?;
    let mut devices = devices_from_reports(&reports);
    shardline::memcap::apply_caps(&mut devices, &cluster.mem_cap);
    if opts.strategy != shardline::plan::Strategy::Throughput {
        let p = plan(&cost, &devices, &opts)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&p)?);
        } else {
            println!("{p}");
        }
        return Ok(());
    }
    // Throughput: measure every server first (a few seconds at most).
    let chunk = cost.n_batch.clamp(9, 128);
    let rt = tokio::runtime::Runtime::new()?;
    let speeds = rt.block_on(shardline::measure::measure_model(
        &cluster.model,
        &gguf,
        &reports,
        chunk,
        default_threads(),
    ))?;
    let p = shardline::plan::plan_with_speeds(&cost, &devices, &speeds, &opts)?;
    let predicted = shardline::plan::predict(
        &p,
        &cost,
        &devices,
        &speeds,
        shardline::plan::speed::LOAD_STREAMS,
        chunk,
    );
    if json {
        let out = serde_json::json!({ "plan": p, "speeds": speeds, "predicted": predicted });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{p}");
        print!("{}", shardline::plan::PredictionTable(&p, &predicted));
    }
    Ok(())
}

/// Probes the servers in `rpc`, or `local_workers` workers started here
/// when there are none (returned, so they live as long as the caller needs).
fn survey(
    rpc: &[String],
    local_workers: usize,
) -> anyhow::Result<(
    Vec<shardline::worker::LocalWorker>,
    Vec<shardline::cluster::ServerReport>,
)> {
    let workers = if rpc.is_empty() {
        let exe = std::env::current_exe().context("locating the shardline binary")?;
        shardline::worker::start_local(&exe, local_workers, default_threads())
            .context("starting local workers")?
    } else {
        Vec::new()
    };
    let endpoints: Vec<String> = if rpc.is_empty() {
        workers.iter().map(|w| w.endpoint.to_string()).collect()
    } else {
        rpc.to_vec()
    };
    let rt = tokio::runtime::Runtime::new()?;
    let reports = rt
        .block_on(shardline::cluster::probe_all(
            &endpoints,
            Default::default(),
        ))
        .map_err(|(ep, e)| anyhow::Error::new(e).context(format!("probing {ep}")))?;
    Ok((workers, reports))
}

fn run_cluster(rpc: Vec<String>, local_workers: usize, json: bool) -> anyhow::Result<()> {
    let (_workers, reports) = survey(&rpc, local_workers)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", shardline::cluster::ClusterTable(&reports));
    }
    Ok(())
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run_worker(opts: shardline::worker::WorkerOptions) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Handlers go in before the ready line, so a signal sent right after it
    // still means a clean stop.
    let (mut term, mut int) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let (ready, failed) = shardline::worker::start(&opts).context("starting the worker")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{ready}")?;
        out.flush()?;
    }
    tracing::info!(endpoint = %ready.endpoint, threads = opts.threads, "worker ready");
    let stopped_by = rt.block_on(async {
        let server = tokio::task::spawn_blocking(move || failed.recv());
        tokio::select! {
            _ = int.recv() => Ok("SIGINT"),
            _ = term.recv() => Ok("SIGTERM"),
            r = server => Err(match r {
                Ok(Ok(e)) => anyhow::Error::new(e),
                _ => anyhow::anyhow!("rpc server thread ended"),
            }),
        }
    })?;
    tracing::info!(signal = stopped_by, "worker stopping");
    // ggml's server loop cannot be interrupted; ending the process closes its
    // socket and frees every client's buffers.
    std::process::exit(0)
}
