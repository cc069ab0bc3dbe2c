//! `shardline serve`: the HTTP API.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::args::{engine_options, ClusterArgs};

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
}

/// `shardline serve`.
pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    // Read before anything starts, so a bad file costs no load.
    let api_key = match a.api_key_file {
        Some(path) => Some(shardline::server::read_api_key_file(&path)?),
        None => a.api_key.map(|k| checked_api_key(&k)).transpose()?,
    };
    let serve = shardline::server::ServeOptions {
        engine: engine_options(&a.cluster)?,
        host: a.host,
        port: a.port,
        api_key,
        limits: shardline::server::HttpLimits {
            header_timeout: a.header_timeout,
            body_timeout: a.body_timeout,
            max_connections: a.max_connections,
        },
    };
    run_serve(serve, a.parallel, a.queue)
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
