//! Options several commands share, and the small helpers around them.

use anyhow::Context as _;

/// Where the model runs: servers, layer split, context.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The model: a .gguf file, or a model pulled with Ollama by name
    /// (llama3.1:70b, library/…, registry/namespace/name:tag; no tag is
    /// `latest`), found in $OLLAMA_MODELS, ~/.ollama/models or
    /// /usr/share/ollama/.ollama/models. A path that exists is a path.
    /// Required, except by `serve --config`.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// rpc-servers as host:port, comma separated, or `auto`: the ready
    /// workers that announce themselves (`shardline worker --announce`).
    /// Without it, shardline starts --local-workers workers on this machine.
    #[arg(long, value_delimiter = ',')]
    pub rpc: Vec<String>,
    /// Local workers to start when no --rpc is given.
    #[arg(long, default_value_t = 2)]
    pub local_workers: usize,
    /// Context size (KV cache cells).
    #[arg(long, default_value_t = 4096)]
    pub ctx: u32,
    /// Largest batch of tokens per step (prompts are processed in chunks of it).
    #[arg(long, default_value_t = 512)]
    pub batch: u32,
    /// How to spread layers: memory (by free memory), even, or throughput
    /// (measures each server's speed and link first, then picks the layer
    /// counts that decode fastest; servers that only slow tokens down are
    /// left out).
    #[arg(long, default_value = "throughput")]
    pub strategy: shardline::plan::Strategy,
    /// Explicit layer counts per server, e.g. 10,20 (overrides --strategy).
    #[arg(long)]
    pub split: Option<String>,
    /// Keep the first N layers on this machine's CPU.
    #[arg(long, default_value_t = 0)]
    pub local_layers: u32,
    /// Micro-batches in the pipeline at once (0: one per stage, so every
    /// server computes while the others do; 1: one step at a time).
    #[arg(long, default_value_t = 0)]
    pub micro_batches: usize,
    /// Most memory the plan may use on each device of a server:
    /// HOST:PORT=SIZE for one server, SIZE for all (e.g. 24GiB, 512MiB;
    /// binary units). Repeat or comma-separate for several servers. ggml's
    /// server cannot report less than its device has, so this is applied
    /// here, to keep memory free on a shared machine.
    #[arg(long, value_delimiter = ',')]
    pub mem_cap: Vec<shardline::memcap::MemCap>,
    /// Split the output matrix by vocabulary rows over the servers that run
    /// layers, which then compute it at the same time: auto (for one
    /// stream, when the measured speeds predict faster decoding; needs
    /// --strategy throughput), on, or off.
    #[arg(long, default_value = "auto")]
    pub head_split: shardline::plan::HeadSplit,
}

impl ClusterArgs {
    /// `--model`, resolved: a file, or an Ollama model and its file.
    pub fn model(&self) -> anyhow::Result<ModelArg> {
        let arg = self
            .model
            .as_deref()
            .context("the following required argument was not provided: --model <MODEL>")?;
        Ok(parse_model(arg)?)
    }

    pub fn strategy(&self) -> anyhow::Result<shardline::plan::Strategy> {
        Ok(match &self.split {
            Some(s) => shardline::plan::Strategy::Split(shardline::plan::parse_split(s)?),
            None => self.strategy.clone(),
        })
    }
}

/// The engine options of `--model` and the cluster flags.
pub fn engine_options(c: &ClusterArgs) -> anyhow::Result<shardline::engine::EngineOptions> {
    let model = c.model()?;
    Ok(shardline::engine::EngineOptions {
        model: model.to_path_buf(),
        name: model.ollama().map(|m| m.name.to_string()),
        chat_template: model
            .ollama()
            .and_then(|m| m.template.clone())
            .map(shardline::chat::TemplateSource::Go),
        ..cluster_options(c)?
    })
}

/// The engine options of the cluster flags, with no model.
pub fn cluster_options(c: &ClusterArgs) -> anyhow::Result<shardline::engine::EngineOptions> {
    Ok(shardline::engine::EngineOptions {
        servers: crate::discover::resolve_rpc(&c.rpc)?,
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

/// `--model`: a GGUF file, or an Ollama model and the file behind it.
/// Derefs to the file's path.
#[derive(Debug, Clone)]
pub struct ModelArg(shardline::ollama::ModelSource);

impl ModelArg {
    /// The Ollama model, when `--model` named one.
    pub fn ollama(&self) -> Option<&shardline::ollama::OllamaModel> {
        self.0.ollama()
    }
}

impl std::ops::Deref for ModelArg {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        self.0.gguf()
    }
}

impl AsRef<std::path::Path> for ModelArg {
    fn as_ref(&self) -> &std::path::Path {
        self.0.gguf()
    }
}

/// Resolves `--model` (and a config file's `model =`) against the Ollama
/// stores the environment names.
pub fn parse_model(arg: &str) -> Result<ModelArg, shardline::ollama::StoreError> {
    shardline::ollama::resolve_model_arg(arg, &ollama_roots()).map(ModelArg)
}

/// The Ollama stores to look in: `$OLLAMA_MODELS`, else the user's and
/// the system service's.
pub fn ollama_roots() -> Vec<std::path::PathBuf> {
    shardline::ollama::default_roots(
        std::env::var_os("OLLAMA_MODELS")
            .as_deref()
            .map(std::path::Path::new),
        std::env::var_os("HOME")
            .as_deref()
            .map(std::path::Path::new),
    )
}

/// A seed from the clock, for sampling when none is given.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Threads to use when none are given: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Probes the servers in `rpc`, or `local_workers` workers started here
/// when there are none (returned, so they live as long as the caller needs).
pub fn survey(
    rpc: &[String],
    local_workers: usize,
) -> anyhow::Result<(
    Vec<shardline::worker::LocalWorker>,
    Vec<shardline::cluster::ServerReport>,
)> {
    let rpc = &crate::discover::resolve_rpc(rpc)?;
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
