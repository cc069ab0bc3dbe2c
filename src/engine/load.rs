//! Loading: servers (given, or local workers), plan, upload, pipeline.

use std::time::Instant;

use std::sync::Arc;

use super::build::{Builder, Replanner};
use super::health::HealthState;
use super::scheduler::{slot_size, Scheduler};
use super::{Engine, EngineOptions, HashMemo, Metrics, Shared};
use crate::chat::ChatTemplate;
use crate::cluster::{devices_from_reports, probe_all, ServerReport};
use crate::exec::local::stage_weight_names;
use crate::exec::ExecError;
use crate::gguf::{Gguf, GgufError};
use crate::load::{TensorHashes, UploadError};
use crate::model::{LlamaConfig, ModelError};
use crate::plan::{plan_with_speeds, PlanError, PlanOptions};
use crate::rpc::{ClientOptions, RpcError};
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::worker::WorkerError;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file cannot be read.
    #[error("reading {path}: {source}")]
    Model {
        /// The file.
        path: String,
        /// What is wrong.
        source: GgufError,
    },
    /// The model is not one shardline can run.
    #[error(transparent)]
    Unsupported(#[from] ModelError),
    /// Its tokenizer cannot be built.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Local workers could not be started.
    #[error("starting local workers: {0}")]
    Workers(#[from] WorkerError),
    /// A server could not be reached or probed.
    #[error("server {endpoint}: {source}")]
    Server {
        /// The server.
        endpoint: String,
        /// What went wrong.
        source: RpcError,
    },
    /// The model does not fit the cluster (nothing was uploaded).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Uploading weights failed.
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// Setting up a stage failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A task of the load stopped unexpectedly (a bug).
    #[error("{what} failed unexpectedly: {detail}")]
    Internal {
        /// What the task was doing.
        what: &'static str,
        /// The task's end (a panic message).
        detail: String,
    },
    /// The options cannot work together (nothing was started).
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The stage graphs could not be measured for the plan.
    #[error(transparent)]
    Measure(crate::graph::measure::MeasureError),
}

impl From<crate::graph::measure::MeasureError> for EngineError {
    fn from(e: crate::graph::measure::MeasureError) -> EngineError {
        use crate::graph::measure::MeasureError;
        // The model's own faults keep the variants they had before the
        // compute buffers were measured.
        match e {
            MeasureError::Plan(p) => EngineError::Plan(p),
            MeasureError::Model(m) => EngineError::Unsupported(m),
            other => EngineError::Measure(other),
        }
    }
}

/// Engine options that cannot work together, found before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A context of 0 cells.
    #[error("the context size must be at least 1")]
    ZeroContext,
    /// A batch of 0 tokens.
    #[error("the batch size must be at least 1")]
    ZeroBatch,
    /// No sequences.
    #[error("parallel must be at least 1")]
    ZeroParallel,
    /// More sequences than KV cells: some sequence would get no cell.
    #[error(
        "parallel {parallel} is more than the context size {n_ctx}: each sequence needs its own KV cells"
    )]
    ParallelOverContext {
        /// Sequences asked for.
        parallel: usize,
        /// The context size.
        n_ctx: u32,
    },
    /// More sequences than a step holds: a decode step carries one token of
    /// every sequence at once.
    #[error(
        "parallel {parallel} is more than the batch size {n_batch}: a decode step carries one token of every sequence, so the batch must hold them all"
    )]
    ParallelOverBatch {
        /// Sequences asked for.
        parallel: usize,
        /// Tokens per step (the batch, at most the context size).
        n_batch: u32,
    },
}

impl EngineError {
    /// The server at fault, when one is.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            EngineError::Server { endpoint, .. }
            | EngineError::Upload(UploadError::Rpc { endpoint, .. })
            | EngineError::Upload(UploadError::TooLarge { endpoint, .. }) => Some(endpoint),
            EngineError::Exec(e) => e.endpoint(),
            _ => None,
        }
    }

    /// Whether trying again may help: a server failed or went away, as
    /// opposed to a model, plan or setting that cannot work.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Server { .. } | EngineError::Workers(_) => true,
            EngineError::Upload(UploadError::Rpc { .. }) => true,
            EngineError::Exec(e) => e.endpoint().is_some(),
            _ => false,
        }
    }
}

impl EngineOptions {
    /// The id the model is served under: [`EngineOptions::name`], or the
    /// file name without `.gguf` (what users see and type as the model id;
    /// `general.name` often has spaces and is not unique).
    pub fn served_name(&self) -> String {
        self.name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| {
                self.model
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "model".to_string())
            })
    }

    /// Checks that the context, batch and parallel settings can work
    /// together; [`Engine::load`] calls it before opening anything.
    pub fn check(&self) -> Result<(), OptionsError> {
        if self.n_ctx == 0 {
            return Err(OptionsError::ZeroContext);
        }
        if self.n_batch == 0 {
            return Err(OptionsError::ZeroBatch);
        }
        if self.parallel == 0 {
            return Err(OptionsError::ZeroParallel);
        }
        if self.parallel > self.n_ctx as usize {
            return Err(OptionsError::ParallelOverContext {
                parallel: self.parallel,
                n_ctx: self.n_ctx,
            });
        }
        // The planner caps the batch at the context; so does a step.
        let n_batch = self.n_batch.min(self.n_ctx);
        if self.parallel > n_batch as usize {
            return Err(OptionsError::ParallelOverBatch {
                parallel: self.parallel,
                n_batch,
            });
        }
        Ok(())
    }
}

pub(super) async fn load(opts: EngineOptions) -> Result<Engine, EngineError> {
    opts.check()?;
    let started = Instant::now();
    let path = opts.model.display().to_string();
    let gguf = Gguf::open(&opts.model).map_err(|source| EngineError::Model {
        path: path.clone(),
        source,
    })?;
    // The context of one sequence picks LongRoPE's factors, as llama.cpp's
    // per-sequence context does.
    let cfg = LlamaConfig::from_gguf(&gguf)?.for_seq_context(slot_size(opts.n_ctx, opts.parallel));
    let tokenizer = crate::exec::blocking(|| Tokenizer::from_gguf(&gguf))?;
    // Everything the file and the options decide is checked before any
    // worker starts or any server is reached.
    let popts = PlanOptions {
        n_ctx: opts.n_ctx,
        n_batch: opts.n_batch,
        // parallel <= n_ctx, a u32 (checked above).
        n_seq_max: opts.parallel as u32,
        strategy: opts.strategy.clone(),
        local_layers: opts.local_layers,
        head_split: opts.head_split,
        ..PlanOptions::default()
    };
    // Measuring builds two small graphs: off the async runtime's threads.
    let cost = crate::exec::blocking(|| crate::graph::measure::measured_cost(&gguf, &popts))?;

    let mut workers = Vec::new();
    let servers = if opts.servers.is_empty() {
        let exe = match &opts.worker_exe {
            Some(e) => e.clone(),
            None => std::env::current_exe().map_err(|e| WorkerError::Server(e.to_string()))?,
        };
        // Starting workers waits for their ready lines: not on the runtime.
        let (n, threads) = (opts.local_workers, opts.threads);
        workers = tokio::task::spawn_blocking(move || crate::worker::start_local(&exe, n, threads))
            .await
            .map_err(|e| WorkerError::Server(format!("starting local workers: {e}")))??;
        workers.iter().map(|w| w.endpoint.to_string()).collect()
    } else {
        opts.servers.clone()
    };

    let reports: Vec<ServerReport> = probe_all(&servers, ClientOptions::default())
        .await
        .map_err(|(endpoint, source)| EngineError::Server { endpoint, source })?;
    let mut devices = devices_from_reports(&reports);
    crate::memcap::apply_caps(&mut devices, &opts.mem_caps);
    let memo_dir = match &opts.hash_memo {
        HashMemo::Default => crate::load::hashes::default_memo_dir(),
        HashMemo::Dir(d) => Some(d.clone()),
        HashMemo::Off => None,
    };
    let measured = super::speed::measure_for_plan(
        &opts,
        &gguf,
        &cfg,
        &reports,
        memo_dir.as_deref(),
        cost.n_batch,
    )
    .await;
    let the_plan = plan_with_speeds(&cost, &devices, &measured.speeds, &popts)?;
    tracing::info!("plan:\n{the_plan}");
    let prediction = measured.predict(&the_plan, &cost, &devices, opts.parallel);
    if let Some(p) = &prediction {
        tracing::info!("predicted:\n{}", crate::plan::PredictionTable(&the_plan, p));
    }
    let n_batch = cost.n_batch;

    // Hashes first wanted by each stage, round-robin, so that every
    // server's first wave can go out early.
    let stage_names: Vec<Vec<String>> = the_plan
        .stages
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.is_local())
        .map(|(i, s)| stage_weight_names(&cfg, &s.layers, the_plan.head_of(i)))
        .collect();
    let longest = stage_names.iter().map(Vec::len).max().unwrap_or(0);
    let first: Vec<String> = (0..longest)
        .flat_map(|k| stage_names.iter().filter_map(move |n| n.get(k).cloned()))
        .collect();
    let hashes = Arc::new(TensorHashes::start(
        &gguf,
        &opts.model,
        memo_dir.as_deref(),
        &first,
        opts.threads,
    ));

    let trace = Arc::new(crate::exec::stage_task::StepTrace::default());
    let builder = Arc::new(Builder {
        gguf: gguf.clone(),
        cfg: cfg.clone(),
        plan: the_plan.clone(),
        n_ctx: opts.n_ctx,
        n_batch,
        threads: opts.threads,
        hashes,
        progress: opts.progress,
        on_progress: opts.on_progress.clone(),
        trace: trace.clone(),
    });
    let (pipeline, load_stats) = builder.build().await?;
    let parallel = opts.parallel;
    let ctx_per_seq = slot_size(opts.n_ctx, parallel) as usize;
    // The file name (without .gguf) is what users see and type as the
    // model id; `general.name` often has spaces and is not unique.
    let name = opts.served_name();
    let chat = match ChatTemplate::from_gguf_or(&gguf, opts.chat_template.as_ref()) {
        Ok(t) => Some(t),
        Err(crate::chat::ChatError::NoTemplate) => None,
        // Chats fail with the reason, plain completions still work.
        Err(e) => {
            tracing::warn!("the chat template is not usable: {e}");
            None
        }
    };
    let tokenizer = Arc::new(tokenizer);
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(HealthState::new(&builder.endpoints()));
    let replanner = Replanner {
        cost,
        popts,
        servers,
        mem_caps: opts.mem_caps.clone(),
        speeds: measured.by_device(&devices),
    };
    let plan_now = Arc::new(std::sync::Mutex::new(the_plan.clone()));
    let (tx, rx) = tokio::sync::mpsc::channel(opts.queue.max(1));
    let scheduler = Scheduler {
        pipeline: Some(pipeline),
        tokenizer: tokenizer.clone(),
        jobs: rx,
        metrics: metrics.clone(),
        health: health.clone(),
        builder: (*builder).clone(),
        replanner,
        replan_after: opts.replan_after,
        plan_now: plan_now.clone(),
        parallel,
        slot_size: ctx_per_seq as u32,
        n_batch: n_batch as usize,
        waiting: std::collections::VecDeque::new(),
        micro_batches: opts.micro_batches,
        flights: std::collections::HashMap::new(),
        prompt_turn: true,
        turn_run: 0,
    };
    // A panicking scheduler must not leave the engine looking healthy.
    let task = tokio::spawn(scheduler.run());
    let watched = health.clone();
    tokio::spawn(async move {
        if let Err(e) = task.await {
            let why = if e.is_panic() {
                "the scheduler panicked (a bug: please report it)"
            } else {
                "the scheduler was cancelled"
            };
            tracing::error!("{why}");
            watched.unavailable(why);
        }
    });
    Ok(Engine {
        shared: Arc::new(Shared {
            gguf,
            tokenizer,
            chat,
            plan: the_plan,
            name,
            load_time: started.elapsed(),
            load_stats,
            ctx_per_seq,
            jobs: tx,
            metrics,
            health,
            plan_now,
            trace,
            prediction,
            vocab: std::sync::OnceLock::new(),
            cluster: reports,
            _workers: workers,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(n_ctx: u32, n_batch: u32, parallel: usize) -> EngineOptions {
        EngineOptions {
            n_ctx,
            n_batch,
            parallel,
            ..EngineOptions::default()
        }
    }

    #[test]
    fn only_server_failures_are_worth_a_retry() {
        let lost = EngineError::Server {
            endpoint: "127.0.0.1:1".into(),
            source: RpcError::Poisoned {
                during: crate::rpc::Command::Hello,
            },
        };
        assert!(lost.is_transient());
        assert!(!EngineError::Options(OptionsError::ZeroBatch).is_transient());
        assert!(!EngineError::Unsupported(ModelError::Architecture("gpt2".into())).is_transient());
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        assert_eq!(opts(4096, 512, 4).check(), Ok(()));
        assert_eq!(opts(8, 8, 8).check(), Ok(()));
        assert_eq!(opts(0, 512, 1).check(), Err(OptionsError::ZeroContext));
        assert_eq!(opts(64, 0, 1).check(), Err(OptionsError::ZeroBatch));
        assert_eq!(opts(64, 64, 0).check(), Err(OptionsError::ZeroParallel));
        assert_eq!(
            opts(64, 4, 8).check(),
            Err(OptionsError::ParallelOverBatch {
                parallel: 8,
                n_batch: 4
            })
        );
        assert_eq!(
            opts(4, 512, 8).check(),
            Err(OptionsError::ParallelOverContext {
                parallel: 8,
                n_ctx: 4
            })
        );
        // The batch a step can carry is capped at the context.
        assert_eq!(
            opts(16, 512, 16).check(),
            Ok(()),
            "16 sequences of one cell each fit a 16-token step"
        );
        // A huge context is the planner's to refuse: it names the device
        // that is short, before the coordinator allocates for it.
        assert_eq!(opts(u32::MAX, 512, 1).check(), Ok(()));
        let msg = opts(64, 4, 8).check().unwrap_err().to_string();
        assert!(
            msg.contains("parallel 8") && msg.contains("batch size 4"),
            "{msg}"
        );
    }
}
