//! `shardline worker` and `seed`: the server side of a cluster.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::args::default_threads;

/// `shardline worker`'s options.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// Address to listen on. Anything but loopback exposes the machine's
    /// memory to the network: the protocol has no authentication.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed on the ready line).
    #[arg(long, default_value_t = 50052)]
    pub port: u16,
    /// CPU threads used to compute graphs [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Folder to cache uploaded weights in, by hash, so a later upload of
    /// the same bytes skips the network.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Write this model's weights into the cache before serving, so a
    /// coordinator's load sends almost nothing (repeatable; needs --cache).
    #[arg(long, value_name = "MODEL.gguf")]
    pub seed: Vec<PathBuf>,
    /// Check the cache before serving: full (size and CRC32 of every
    /// file), size, or off. Damaged files are moved to DIR/bad/ and sent
    /// again by the next load.
    #[arg(long, default_value = "full", value_name = "full|size|off")]
    pub verify_cache: shardline::cache::VerifyMode,
    /// ggml devices to serve, comma separated (e.g. CPU or CUDA0)
    /// [default: every GPU, else the CPU]. `CPU,CPU` serves the CPU twice:
    /// the coordinator uses the second as a spare graph slot for its share
    /// of a split output head.
    #[arg(long, value_delimiter = ',')]
    pub device: Vec<String>,
    /// Announce this worker on the LAN (a UDP multicast beacon to
    /// 239.255.77.52, once a second, TTL 1) so that `shardline discover`
    /// and `--rpc auto` find it. It goes out of the interface of --host
    /// (the default route's for 0.0.0.0).
    #[arg(long)]
    pub announce: bool,
    /// UDP port of the announce beacon.
    #[arg(long, env = "SHARDLINE_ANNOUNCE_PORT", default_value_t = shardline::discover::announce::PORT)]
    pub announce_port: u16,
    /// Stop when the process that started this worker exits (used for
    /// the local workers shardline starts itself).
    #[arg(long, hide = true)]
    pub exit_with_parent: bool,
}

/// `shardline seed`'s options.
#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    /// The cache folder.
    #[arg(long)]
    pub cache: PathBuf,
    /// The models (.gguf).
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
    /// Threads for hashing and writing [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `shardline worker`.
pub fn run(a: WorkerArgs) -> anyhow::Result<()> {
    let announce = a.announce.then_some(a.announce_port);
    run_worker(
        shardline::worker::WorkerOptions {
            host: a.host,
            port: a.port,
            threads: a.threads.unwrap_or_else(default_threads),
            cache: a.cache,
            seed: a.seed,
            verify: a.verify_cache,
            devices: a.device,
            exit_with_parent: a.exit_with_parent,
        },
        announce,
    )
}

/// `shardline seed`.
pub fn run_seed_cmd(a: SeedArgs) -> anyhow::Result<()> {
    run_seed(
        &a.cache,
        &a.models,
        a.threads.unwrap_or_else(default_threads),
    )
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

fn run_worker(
    opts: shardline::worker::WorkerOptions,
    announce_port: Option<u16>,
) -> anyhow::Result<()> {
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
    // Lives until the process exits.
    let _announcer = announce_port
        .map(|p| start_announcing(&ready, p))
        .transpose()?;
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

/// Starts the beacon for a worker that is ready.
fn start_announcing(
    ready: &shardline::worker::Ready,
    port: u16,
) -> anyhow::Result<shardline::discover::Announcer> {
    use shardline::discover::announce::{AnnounceOptions, Announcement, GROUP};
    let host = ready.endpoint.ip();
    let mut opts = AnnounceOptions::new(
        host,
        Announcement::worker(host, ready.endpoint.port(), ready.devices.clone()),
    );
    opts.group = std::net::SocketAddrV4::new(GROUP, port);
    let a = shardline::discover::Announcer::start(opts)
        .with_context(|| format!("announcing on {GROUP}:{port}"))?;
    if host.is_loopback() {
        tracing::info!("announcing on loopback only: other machines will not hear it (--host)");
    } else {
        tracing::info!(group = %format!("{GROUP}:{port}"), "announcing");
    }
    Ok(a)
}
