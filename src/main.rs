//! The `shardline` command line.

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Run one llama-family model across several llama.cpp rpc-servers.
#[derive(Debug, Parser)]
#[command(name = "shardline", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        /// ggml devices to serve, comma separated (e.g. CPU or CUDA0)
        /// [default: every GPU, else the CPU].
        #[arg(long, value_delimiter = ',')]
        device: Vec<String>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
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
        Command::Worker {
            host,
            port,
            threads,
            cache,
            device,
        } => run_worker(shardline::worker::WorkerOptions {
            host,
            port,
            threads: threads.unwrap_or_else(default_threads),
            cache,
            devices: device,
        }),
    }
}

/// Starts `n` workers on this machine, splitting its cores between them.
fn start_local_workers(n: usize) -> anyhow::Result<Vec<shardline::worker::LocalWorker>> {
    let exe = std::env::current_exe().context("locating the shardline binary")?;
    let threads = (default_threads() / n.max(1)).max(1).to_string();
    tracing::info!(count = n, "no --rpc given: starting local workers");
    (0..n)
        .map(|_| {
            shardline::worker::LocalWorker::spawn(
                &exe,
                &["--threads", &threads],
                std::time::Duration::from_secs(60),
            )
            .context("starting a local worker")
        })
        .collect()
}

fn run_cluster(rpc: Vec<String>, local_workers: usize, json: bool) -> anyhow::Result<()> {
    let workers = if rpc.is_empty() {
        start_local_workers(local_workers)?
    } else {
        Vec::new()
    };
    let endpoints: Vec<String> = if rpc.is_empty() {
        workers.iter().map(|w| w.endpoint.to_string()).collect()
    } else {
        rpc
    };
    let rt = tokio::runtime::Runtime::new()?;
    let reports = rt.block_on(async {
        let mut out = Vec::new();
        for ep in &endpoints {
            let r = shardline::cluster::probe(ep, Default::default())
                .await
                .with_context(|| format!("probing {ep}"))?;
            out.push(r);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
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
        Ok::<_, std::io::Error>((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
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
