//! `shardline serve`: the HTTP API.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::args::{cluster_options, default_threads, engine_options, ClusterArgs};

/// `shardline serve`'s options.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed on the ready line).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences generated together (the context is split between them).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Requests that may wait for a sequence; more get 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1/*. Visible to other
    /// users in `ps`: prefer --api-key-file or SHARDLINE_API_KEY.
    #[arg(long, env = "SHARDLINE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Read the API key from this file (one line; surrounding white space
    /// is dropped). Conflicts with --api-key and SHARDLINE_API_KEY.
    #[arg(long, value_name = "PATH", conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,
    /// Close a connection whose request line and headers take longer than
    /// this (slow or silent clients, idle keep-alive connections), e.g.
    /// 10s, 500ms.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = shardline::server::parse_duration)]
    pub header_timeout: std::time::Duration,
    /// Answer 408 to a request body that takes longer than this to arrive.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = shardline::server::parse_duration)]
    pub body_timeout: std::time::Duration,
    /// Connections served at once; past it new ones get 503 and are closed.
    #[arg(long, value_name = "N", default_value_t = shardline::server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Serve the models this TOML file lists (instead of --model), each on
    /// its own servers: whole on one when it fits, else sharded; or
    /// forwarded upstream. See the README for its keys.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["model", "upstream"])]
    pub config: Option<PathBuf>,
    /// Forward --model (the upstream's name for it) to this OpenAI-compatible
    /// server, e.g. http://ollama-box:11434, instead of loading it here.
    #[arg(long, value_name = "URL", requires = "model")]
    pub upstream: Option<String>,
}

/// `shardline serve`.
pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    // Read before anything starts, so a bad file costs no load.
    let api_key = match a.api_key_file {
        Some(path) => Some(shardline::server::read_api_key_file(&path)?),
        None => a.api_key.map(|k| checked_api_key(&k)).transpose()?,
    };
    // Local workers for a config whose models name no servers: started
    // once, shared out between the models (each takes its own).
    let mut workers = Vec::new();
    let models = if let Some(path) = &a.config {
        let config = shardline::server::config::ServeConfig::read(path)?;
        let mut base = cluster_options(&a.cluster)?;
        base.parallel = a.parallel;
        base.queue = a.queue;
        let needs_workers = base.servers.is_empty()
            && config.servers.is_empty()
            && config
                .models
                .iter()
                .any(|m| m.upstream.is_none() && m.servers.is_none());
        if needs_workers {
            let exe = std::env::current_exe().context("locating the shardline binary")?;
            workers =
                shardline::worker::start_local(&exe, a.cluster.local_workers, default_threads())
                    .context("starting local workers")?;
            base.servers = workers.iter().map(|w| w.endpoint.to_string()).collect();
        }
        config.specs(&base, &crate::args::ollama_roots(), path)?
    } else if let Some(url) = &a.upstream {
        let name = a.cluster.model.clone().unwrap_or_default();
        vec![shardline::server::ModelSpec {
            name: name.clone(),
            source: shardline::server::Source::Upstream {
                url: url.clone(),
                model: name,
            },
        }]
    } else {
        let model = a.cluster.model()?;
        let mut engine = engine_options(&a.cluster)?;
        engine.parallel = a.parallel;
        engine.queue = a.queue;
        vec![shardline::server::ModelSpec {
            name: engine.served_name(),
            source: shardline::server::Source::Local {
                engine: Box::new(engine),
                placement: shardline::server::Placement::Shard,
                ollama: model.ollama().cloned().map(Box::new),
            },
        }]
    };
    let serve = shardline::server::ServeOptions {
        engine: Default::default(),
        models,
        host: a.host,
        port: a.port,
        api_key,
        limits: shardline::server::HttpLimits {
            header_timeout: a.header_timeout,
            body_timeout: a.body_timeout,
            max_connections: a.max_connections,
        },
    };
    let r = run_serve(serve);
    drop(workers);
    r
}

fn run_serve(opts: shardline::server::ServeOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let r = rt.block_on(shardline::server::serve(opts));
    // Streams still open at shutdown are dropped, not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(r?)
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
