//! `shardline bench --layouts` and `--simulate`: the command-line side of
//! `shardline::layouts` (starting workers, slowing them down, links).

use std::path::PathBuf;

use anyhow::Context as _;
use shardline::layouts::{
    cost_from_file, run_layouts, simulate, ClusterFile, CpuThrottle, Layout, LayoutTable,
    RunOptions, Workload,
};
use shardline::plan::{parse_split, PlanOptions};
use shardline::relay::{LinkSpec, Relay};

/// What `bench --layouts` / `--simulate` was asked for.
#[derive(Debug, clap::Args)]
pub struct LayoutArgs {
    /// Compare layouts: the memory, even and throughput strategies (and any
    /// --layout-split), each planned, predicted by the cost model, loaded and
    /// timed; prints predicted / measured load s, prompt and decode tok/s at
    /// 1 and --streams streams.
    #[arg(long)]
    pub layouts: bool,
    /// With --layouts: an emulated link in front of each server, one per
    /// server in order ("none" for a direct one), e.g. `--link none --link
    /// delay=10ms,rate=1gbit`; presets gbe, wifi, wan.
    #[arg(long = "link", value_name = "SPEC")]
    pub links: Vec<String>,
    /// With --layouts and local workers: slow each worker down by a factor,
    /// one per worker in order (1 = full speed), with a CPU quota through a
    /// cgroup (Linux, root).
    #[arg(long = "slow", value_name = "FACTOR")]
    pub slow: Vec<f64>,
    /// An explicit split to compare as well, e.g. 20,10 (repeatable).
    #[arg(long = "layout-split", value_name = "COUNTS")]
    pub layout_splits: Vec<String>,
    /// Streams decoding together in the load column.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Simulate the layouts on a described cluster (JSON: devices with
    /// memory_gib, mem_gbps, gflops, rtt_ms, link_gbit; see
    /// docs/cluster-example.json) from the cost model alone; --model may be
    /// a GGUF header on its own.
    #[arg(long, value_name = "CLUSTER.json")]
    pub simulate: Option<PathBuf>,
}

impl LayoutArgs {
    /// Whether a layout comparison was asked for.
    pub fn wanted(&self) -> bool {
        self.layouts || self.simulate.is_some()
    }
}

/// What the plain bench options say, for the layouts.
#[derive(Debug)]
pub struct BenchShape {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub rounds: usize,
    pub json: bool,
}

pub fn run(
    cluster: &crate::args::ClusterArgs,
    args: &LayoutArgs,
    shape: &BenchShape,
    threads: usize,
) -> anyhow::Result<()> {
    let splits = args
        .layout_splits
        .iter()
        .map(|s| parse_split(s))
        .collect::<Result<Vec<_>, _>>()?;
    let layouts = Layout::standard(&splits);
    let streams = args.streams.max(1);
    let chunk = u32::try_from(shape.prompt_tokens)
        .unwrap_or(u32::MAX)
        .clamp(9, cluster.batch.max(9));
    let rows = if let Some(path) = &args.simulate {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let described = ClusterFile::parse(&text)?;
        let popts = PlanOptions {
            n_ctx: cluster.ctx,
            n_batch: cluster.batch,
            n_seq_max: u32::try_from(streams).unwrap_or(u32::MAX),
            ..PlanOptions::default()
        };
        let cost = cost_from_file(&cluster.model()?, &popts)?;
        let work = Workload {
            streams: popts.n_seq_max,
            prompt_tokens: u32::try_from(shape.prompt_tokens).unwrap_or(u32::MAX),
            gen_tokens: u32::try_from(shape.gen_tokens).unwrap_or(u32::MAX),
            prompt_chunk: chunk,
        };
        simulate(&cost, &described, &layouts, &work)
    } else {
        measure(cluster, args, shape, layouts, threads)?
    };
    if shape.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", LayoutTable(&rows));
    }
    Ok(())
}

fn measure(
    cluster: &crate::args::ClusterArgs,
    args: &LayoutArgs,
    shape: &BenchShape,
    layouts: Vec<Layout>,
    threads: usize,
) -> anyhow::Result<Vec<shardline::layouts::LayoutRow>> {
    let workers = if cluster.rpc.is_empty() {
        let exe = std::env::current_exe().context("locating the shardline binary")?;
        shardline::worker::start_local(&exe, cluster.local_workers, threads)
            .context("starting local workers")?
    } else {
        anyhow::ensure!(
            args.slow.is_empty(),
            "--slow works on local workers only (leave out --rpc)"
        );
        Vec::new()
    };
    let mut endpoints: Vec<String> = if cluster.rpc.is_empty() {
        workers.iter().map(|w| w.endpoint.to_string()).collect()
    } else {
        cluster.rpc.clone()
    };
    anyhow::ensure!(
        args.links.len() <= endpoints.len() && args.slow.len() <= endpoints.len(),
        "{} servers but {} --link and {} --slow given: at most one each per server",
        endpoints.len(),
        args.links.len(),
        args.slow.len()
    );
    let mut throttles = Vec::new();
    for (w, &factor) in workers.iter().zip(&args.slow) {
        if factor > 1.0 {
            throttles.push(
                CpuThrottle::new(w.pid(), factor)
                    .with_context(|| format!("slowing {} down {factor}x", w.endpoint))?,
            );
        }
    }
    let mut relays = Vec::new();
    for (ep, spec) in endpoints.iter_mut().zip(&args.links) {
        if spec == "none" {
            continue;
        }
        let spec: LinkSpec = spec.parse().with_context(|| format!("--link {spec}"))?;
        use std::net::ToSocketAddrs as _;
        let addr = ep
            .to_socket_addrs()
            .with_context(|| format!("resolving {ep}"))?
            .next()
            .with_context(|| format!("resolving {ep}"))?;
        let relay = Relay::start(addr, spec).context("starting a relay")?;
        eprintln!("{ep} behind an emulated link ({spec}) at {}", relay.addr());
        *ep = relay.addr().to_string();
        relays.push(relay);
    }
    let opts = RunOptions {
        model: cluster.model()?.to_path_buf(),
        servers: endpoints,
        layouts,
        n_ctx: cluster.ctx,
        n_batch: cluster.batch,
        prompt_tokens: shape.prompt_tokens,
        gen_tokens: shape.gen_tokens,
        rounds: shape.rounds,
        streams: args.streams.max(1),
        threads,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let rows = rt.block_on(run_layouts(&opts))?;
    drop((relays, throttles, workers));
    Ok(rows)
}
