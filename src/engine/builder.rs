//! [`EngineBuilder`]: the options of an [`Engine`], one call at a time.

use std::path::PathBuf;

use super::{Engine, EngineError, EngineOptions, HashMemo};
use crate::plan::Strategy;

/// Builds an [`Engine`]: model, servers, layout, context, concurrency.
///
/// ```no_run
/// # async fn demo() -> Result<(), shardline::engine::EngineError> {
/// let engine = shardline::engine::Engine::builder("model.gguf")
///     .servers(["10.0.0.2:50052", "10.0.0.3:50052"])
///     .ctx(8192)
///     .parallel(4)
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct EngineBuilder {
    opts: EngineOptions,
}

impl EngineBuilder {
    /// Starts from the defaults of [`EngineOptions`] for `model`.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        EngineBuilder {
            opts: EngineOptions {
                model: model.into(),
                ..EngineOptions::default()
            },
        }
    }

    /// rpc-servers (`host:port`); none: local workers are started.
    pub fn servers<S: Into<String>>(mut self, servers: impl IntoIterator<Item = S>) -> Self {
        self.opts.servers = servers.into_iter().map(Into::into).collect();
        self
    }

    /// How layers are spread over the servers.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.opts.strategy = strategy;
        self
    }

    /// Context size (KV cells, shared by the parallel sequences).
    pub fn ctx(mut self, n_ctx: u32) -> Self {
        self.opts.n_ctx = n_ctx;
        self
    }

    /// Largest batch per step (prompt chunk size).
    pub fn batch(mut self, n_batch: u32) -> Self {
        self.opts.n_batch = n_batch;
        self
    }

    /// Layers kept on the coordinator's CPU.
    pub fn local_layers(mut self, n: u32) -> Self {
        self.opts.local_layers = n;
        self
    }

    /// Sequences decoded together.
    pub fn parallel(mut self, n: usize) -> Self {
        self.opts.parallel = n;
        self
    }

    /// Caps what the plan may use of a server's devices (or of every
    /// server's, for a cap without an endpoint).
    pub fn mem_cap(mut self, cap: crate::memcap::MemCap) -> Self {
        self.opts.mem_caps.push(cap);
        self
    }

    /// Requests that may wait before new ones are refused.
    pub fn queue(mut self, n: usize) -> Self {
        self.opts.queue = n;
        self
    }

    /// Where tensor hashes are remembered between loads.
    pub fn hash_memo(mut self, memo: HashMemo) -> Self {
        self.opts.hash_memo = memo;
        self
    }

    /// CPU threads for the coordinator's own work.
    pub fn threads(mut self, n: usize) -> Self {
        self.opts.threads = n;
        self
    }

    /// The `shardline` binary to start local workers with.
    pub fn worker_exe(mut self, exe: impl Into<PathBuf>) -> Self {
        self.opts.worker_exe = Some(exe.into());
        self
    }

    /// Every option at once.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Loads the model; see [`Engine::load`].
    pub async fn build(self) -> Result<Engine, EngineError> {
        Engine::load(self.opts).await
    }
}
