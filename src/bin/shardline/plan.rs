//! `shardline plan`, `cluster` and `inspect`: look before loading.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::args::{default_threads, survey, ClusterArgs};

/// `shardline plan`'s options.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `shardline cluster`'s options.
#[derive(Debug, clap::Args)]
pub struct ClusterCmdArgs {
    /// rpc-servers as host:port, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub rpc: Vec<String>,
    /// Local workers to start when no --rpc is given.
    #[arg(long, default_value_t = 2)]
    pub local_workers: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `shardline inspect`'s options.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The .gguf file.
    pub path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `shardline plan`.
pub fn run_plan(a: PlanArgs) -> anyhow::Result<()> {
    plan(a.cluster, a.json)
}

/// `shardline cluster`.
pub fn run_cluster(a: ClusterCmdArgs) -> anyhow::Result<()> {
    cluster(a.rpc, a.local_workers, a.json)
}

/// `shardline inspect`.
pub fn run_inspect(a: InspectArgs) -> anyhow::Result<()> {
    let out = shardline::inspect::run_inspect(&a.path, a.json)
        .with_context(|| format!("inspecting {}", a.path.display()))?;
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn plan(cluster: ClusterArgs, json: bool) -> anyhow::Result<()> {
    use shardline::cluster::devices_from_reports;
    use shardline::plan::{plan, PlanOptions};
    let model = cluster.model()?;
    let gguf = shardline::gguf::Gguf::open(&*model)
        .with_context(|| format!("reading {}", model.display()))?;
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
        .with_context(|| format!("planning {}", model.display()))?;
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
        &model,
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

fn cluster(rpc: Vec<String>, local_workers: usize, json: bool) -> anyhow::Result<()> {
    let (_workers, reports) = survey(&rpc, local_workers)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", shardline::cluster::ClusterTable(&reports));
    }
    Ok(())
}
