//! The `shardline` command line.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

mod args;
mod bench;
mod discover;
mod generate;
mod layouts;
mod plan;
mod serve;
mod worker;

/// Run one llama-family model across several llama.cpp rpc-servers.
#[derive(Debug, Parser)]
#[command(name = "shardline", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text with a model sharded across rpc-servers. Only the
    /// generated text goes to stdout.
    Run(generate::RunArgs),
    /// Measure load time, prompt and decode speed on the cluster (greedy,
    /// synthetic prompt), optionally with several requests at once.
    Bench(bench::BenchArgs),
    /// Show how a model's layers would be spread over the servers, without
    /// uploading anything.
    Plan(plan::PlanArgs),
    /// Show what each rpc-server offers (protocol, devices, memory). With no
    /// --rpc, starts two local workers and shows those.
    Cluster(plan::ClusterCmdArgs),
    /// Summarize a GGUF model: architecture, layers, sizes, bytes per layer.
    Inspect(plan::InspectArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions,
    /// /v1/completions, /v1/models, /health, /metrics) and Ollama's (/api/chat,
    /// /api/generate, /api/tags, /api/show); several models with --config.
    /// Prints one ready line, `shardline serve ready: http://HOST:PORT
    /// model=NAME` (`models=A,B` for several), then the plan.
    Serve(serve::ServeArgs),
    /// Write a model's weights into a cache folder, as `DIR/<hash>` files that
    /// `shardline worker --cache DIR` and llama.cpp's `rpc-server -c DIR` read,
    /// with a manifest for checking them. Files already right are kept.
    Seed(worker::SeedArgs),
    /// Find rpc-servers: probe hosts or CIDR ranges, or (without any) hear
    /// workers started with --announce; each is ready, busy, wrong version
    /// or unreachable.
    Discover(discover::DiscoverArgs),
    /// Run ggml's RPC server on this machine (wire-compatible with llama.cpp's
    /// rpc-server), serving its CPU (or GPUs in a GPU build) to a coordinator.
    Worker(worker::WorkerArgs),
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
        if matches!(cli.command, Command::Worker(_) | Command::Serve(_)) {
            "info"
        } else {
            "warn"
        },
    );
    match cli.command {
        Command::Run(a) => generate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Plan(a) => plan::run_plan(a),
        Command::Cluster(a) => plan::run_cluster(a),
        Command::Inspect(a) => plan::run_inspect(a),
        Command::Serve(a) => serve::run(a),
        Command::Seed(a) => worker::run_seed_cmd(a),
        Command::Worker(a) => worker::run(a),
        Command::Discover(a) => discover::run(a),
    }
}
