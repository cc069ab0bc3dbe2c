//! The engine: loads a model onto a cluster once (plan, upload), then serves
//! generation requests from a background task that batches every active
//! sequence into one step per stage (continuous batching).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use shardline::engine::{Engine, EngineOptions, Event, GenerateRequest, Prompt};
//! let engine = Engine::load(EngineOptions {
//!     model: "model.gguf".into(),
//!     servers: vec!["10.0.0.2:50052".into(), "10.0.0.3:50052".into()],
//!     ..EngineOptions::default()
//! })
//! .await?;
//! let mut stream = engine.generate(GenerateRequest::new(Prompt::Text("Hello".into())))?;
//! while let Some(ev) = stream.next().await {
//!     match ev {
//!         Event::Text(t) => print!("{t}"),
//!         Event::Done(usage) => println!("\n{usage:?}"),
//!         Event::Error(e) => eprintln!("{e}"),
//!     }
//! }
//! # Ok(()) }
//! ```

mod build;
mod builder;
pub mod health;
mod load;
pub mod metrics;
mod recovery;
mod scheduler;
mod speed;
pub mod status;
mod stream;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::chat::{ChatError, ChatMessage, ChatTemplate};
use crate::constrain::{Constraint, ConstraintError, Vocab};
use crate::gguf::Gguf;
use crate::plan::{Plan, Strategy};
use crate::sample::{SamplerConfig, SamplerError, MAX_TOP_LOGPROBS};
use crate::tokenizer::Tokenizer;
use crate::worker::LocalWorker;

pub use builder::EngineBuilder;
pub use health::{Health, Recovery, ServerHealth, Status};
pub use load::{EngineError, OptionsError};
pub use metrics::Metrics;
pub use stream::TokenStream;

/// Upload progress while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LoadProgress {
    /// Weight bytes placed so far.
    pub bytes_done: u64,
    /// Weight bytes to place in all.
    pub bytes_total: u64,
    /// Of `bytes_done`, bytes sent over the network.
    pub bytes_sent: u64,
    /// Of `bytes_done`, bytes the servers' caches supplied.
    pub bytes_cached: u64,
}

/// Where the tensor hashes of a model file are remembered between loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HashMemo {
    /// `hashes/` under the user's cache folder
    /// ([`crate::load::hashes::user_cache_dir`]).
    #[default]
    Default,
    /// This folder.
    Dir(PathBuf),
    /// Nowhere: hash on every load.
    Off,
}

/// What loading cost: bytes over the network and from caches, hashing, and
/// round trips per server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoadStats {
    /// Weight bytes placed on servers.
    pub weight_bytes: u64,
    /// Of those, bytes sent over the network.
    pub sent_bytes: u64,
    /// Of those, bytes the servers' caches supplied.
    pub cached_bytes: u64,
    /// Model bytes hashed during this load (0 when the memo had them all).
    pub hashed_bytes: u64,
    /// Whether every tensor hash came from the memo.
    pub hashes_from_memo: bool,
    /// Per server: the load connection's traffic.
    pub servers: Vec<ServerLoad>,
}

/// One server's share of a load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerLoad {
    /// The server.
    pub endpoint: String,
    /// Round trips on the connection, from HELLO to the last stage set up.
    pub round_trips: u64,
    /// Bytes the coordinator wrote to the connection (frames and data).
    pub wire_bytes_sent: u64,
    /// Per device of the server that runs a stage: the bytes of the buffers
    /// the coordinator holds there once loaded (weights, KV cache, inputs,
    /// compute), to set against the plan's figures.
    pub allocated: Vec<DeviceAllocation>,
}

/// What the coordinator holds on one device of a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeviceAllocation {
    /// Index of the device on its server.
    pub device: u32,
    /// Bytes of the live buffers there.
    pub bytes: u64,
}

/// Called as weights are uploaded.
pub type ProgressFn = Arc<dyn Fn(LoadProgress) + Send + Sync>;

/// How to load a model.
#[derive(Clone)]
pub struct EngineOptions {
    /// The GGUF file.
    pub model: PathBuf,
    /// rpc-servers (`host:port`). Empty: start `local_workers` workers on
    /// this machine with `worker_exe`.
    pub servers: Vec<String>,
    /// Workers to start when no servers are given.
    pub local_workers: usize,
    /// The `shardline` binary used to start local workers (default: the
    /// running executable).
    pub worker_exe: Option<PathBuf>,
    /// Context size: KV cache cells, split evenly between the `parallel`
    /// sequences.
    pub n_ctx: u32,
    /// Largest batch of tokens per step; prompts are processed in chunks of
    /// this size.
    pub n_batch: u32,
    /// How layers are spread over the servers.
    pub strategy: Strategy,
    /// Layers (the first ones) kept on the coordinator's CPU.
    pub local_layers: u32,
    /// CPU threads for the coordinator's own work.
    pub threads: usize,
    /// Show a progress bar while uploading (when stderr is a terminal).
    pub progress: bool,
    /// Sequences decoded together: at least 1, at most the batch size
    /// (a decode step carries one token of each) and the context size.
    pub parallel: usize,
    /// Requests that may wait for a free sequence before new ones are
    /// refused ([`SubmitError::QueueFull`]).
    pub queue: usize,
    /// Called as weights are uploaded.
    pub on_progress: Option<ProgressFn>,
    /// Where tensor hashes are remembered between loads.
    pub hash_memo: HashMemo,
    /// How long a lost server may take to come back before the model is
    /// planned again over the servers left (when it fits them).
    pub replan_after: Duration,
    /// Micro-batches kept in the pipeline at once; 0 (the default) keeps
    /// one per stage, so every stage has work while the others compute.
    pub micro_batches: usize,
    /// Caps on the memory the plan may use of each server's devices.
    pub mem_caps: Vec<crate::memcap::MemCap>,
    /// Whether the output matrix may be split over the servers
    /// (`plan::head`): by default when the cost model predicts faster
    /// decoding.
    pub head_split: crate::plan::HeadSplit,
    /// The id the model is served and reported under; `None`: the file
    /// name without `.gguf` (an Ollama model passes its name, since its
    /// file is a `sha256-…` blob).
    pub name: Option<String>,
    /// The chat template used when the GGUF carries none (an Ollama
    /// model's template layer).
    pub chat_template: Option<crate::chat::TemplateSource>,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("model", &self.model)
            .field("servers", &self.servers)
            .field("n_ctx", &self.n_ctx)
            .field("n_batch", &self.n_batch)
            .field("strategy", &self.strategy)
            .field("local_layers", &self.local_layers)
            .field("parallel", &self.parallel)
            .field("queue", &self.queue)
            .field("mem_caps", &self.mem_caps)
            .field("head_split", &self.head_split)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            model: PathBuf::new(),
            servers: Vec::new(),
            local_workers: 2,
            worker_exe: None,
            n_ctx: 4096,
            n_batch: 512,
            strategy: Strategy::Throughput,
            local_layers: 0,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            progress: true,
            parallel: 1,
            queue: 64,
            on_progress: None,
            hash_memo: HashMemo::Default,
            replan_after: Duration::from_secs(10),
            micro_batches: 0,
            mem_caps: Vec::new(),
            head_split: crate::plan::HeadSplit::Auto,
            name: None,
            chat_template: None,
        }
    }
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Text, tokenized with the model's special tokens parsed and its BOS
    /// added when the model asks for one.
    Text(String),
    /// Tokens as they are.
    Tokens(Vec<u32>),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Texts that end the generation (not included in the output).
    pub stop: Vec<String>,
    /// End at an end-of-generation token (not included in the output).
    pub stop_at_eog: bool,
}

impl GenerateRequest {
    /// Greedy, 256 tokens, stopping at end-of-generation tokens.
    pub fn new(prompt: Prompt) -> Self {
        GenerateRequest {
            prompt,
            max_tokens: 256,
            sampler: SamplerConfig::greedy(),
            stop: Vec::new(),
            stop_at_eog: true,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// An end-of-generation token or a stop text.
    #[default]
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// Counts and timings of a finished generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens generated (stop texts and end tokens included).
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish: Finish,
    /// Seconds from admission to the end of the prompt.
    pub prompt_s: f64,
    /// Seconds from the end of the prompt to the end.
    pub gen_s: f64,
    /// Decode steps while generating.
    pub gen_steps: usize,
}

/// What a [`TokenStream`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The next piece of generated text (whole UTF-8 characters).
    Text(String),
    /// The generation ended normally.
    Done(Usage),
    /// The generation failed (e.g. a server was lost).
    Error(String),
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// Too many requests are waiting.
    #[error("too many requests waiting (queue full)")]
    QueueFull,
    /// The prompt has no tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// Prompt plus `max_tokens` exceed one sequence's context.
    #[error("prompt of {prompt} tokens plus max_tokens {max} exceed the context of {ctx} tokens per sequence")]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Tokens asked for.
        max: usize,
        /// Context per sequence.
        ctx: usize,
    },
    /// A prompt token is outside the vocabulary.
    #[error("token {0} is outside the vocabulary")]
    BadToken(u32),
    /// The engine stopped (a server was lost).
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// Invalid sampling settings.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// A logit bias names a token outside the vocabulary.
    #[error("logit bias for token {0}, outside the vocabulary")]
    BadBiasToken(u32),
    /// More log-probability alternatives than [`MAX_TOP_LOGPROBS`].
    #[error("at most {MAX_TOP_LOGPROBS} top log-probabilities, asked for {0}")]
    TopLogprobs(usize),
}

/// Why a chat was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ChatSubmitError {
    /// The messages do not render.
    #[error(transparent)]
    Template(#[from] ChatError),
    /// The request was refused.
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// What a request asks for beyond text and sampling: a grammar its output
/// must follow, and the log-probabilities of its tokens.
#[derive(Debug, Default)]
pub struct OutputOptions {
    /// Only tokens this constraint allows are chosen (see
    /// [`crate::constrain`]); the generation ends once it is complete.
    pub constraint: Option<Constraint>,
    /// Report each generated token's log-probability and this many of the
    /// most likely alternatives (at most [`MAX_TOP_LOGPROBS`]); see
    /// [`TokenStream::take_logprobs`].
    pub logprobs: Option<usize>,
}

/// A job for the scheduler.
pub(crate) struct Job {
    tokens: Vec<u32>,
    req: GenerateRequest,
    out: OutputOptions,
    tx: mpsc::UnboundedSender<Event>,
    produced: Arc<Mutex<stream::Produced>>,
    /// Jobs with the same prompt that start from a copy of this one's
    /// prompt cells instead of computing them again.
    followers: Vec<Job>,
}

impl Job {
    /// This job and its followers.
    pub(crate) fn size(&self) -> usize {
        1 + self.followers.len()
    }

    /// Ends this job and its followers with `message`.
    pub(crate) fn fail(self, message: &str) {
        let _ = self.tx.send(Event::Error(message.to_owned()));
        for f in self.followers {
            f.fail(message);
        }
    }
}

struct Shared {
    gguf: Gguf,
    tokenizer: Arc<Tokenizer>,
    chat: Option<ChatTemplate>,
    plan: Plan,
    name: String,
    load_time: Duration,
    load_stats: LoadStats,
    ctx_per_seq: usize,
    jobs: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    health: Arc<health::HealthState>,
    plan_now: Arc<Mutex<Plan>>,
    trace: Arc<crate::exec::stage_task::StepTrace>,
    prediction: Option<crate::plan::Prediction>,
    /// The vocabulary prepared for constrained decoding, on first use.
    vocab: OnceLock<Result<Vocab, ConstraintError>>,
    /// What the servers offered when the model was loaded.
    cluster: Vec<crate::cluster::ServerReport>,
    // Last: workers this engine started stop when the last handle goes.
    _workers: Vec<LocalWorker>,
}

/// A loaded model: a cheap handle to the task that runs it.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A builder for `model`.
    pub fn builder(model: impl Into<PathBuf>) -> EngineBuilder {
        EngineBuilder::new(model)
    }

    /// Loads the model onto the cluster (see [`EngineOptions`]) and starts
    /// the scheduler task. Must be called inside a tokio runtime.
    pub async fn load(opts: EngineOptions) -> Result<Engine, EngineError> {
        load::load(opts).await
    }

    /// The model's id: [`EngineOptions::name`], or its file name without
    /// `.gguf`.
    pub fn model_name(&self) -> &str {
        &self.shared.name
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// The model file.
    pub fn gguf(&self) -> &Gguf {
        &self.shared.gguf
    }

    /// The plan the model was loaded with.
    pub fn plan(&self) -> &Plan {
        &self.shared.plan
    }

    /// When each stage ran its recent micro-batches (the last few
    /// thousand), as the coordinator saw it: shows whether the stages
    /// compute at the same time.
    pub fn step_trace(&self) -> &crate::exec::stage_task::StepTrace {
        &self.shared.trace
    }

    /// The plan the engine runs now: the one it was loaded with, or, after
    /// a server was lost for good, the plan over the servers left.
    pub fn current_plan(&self) -> Plan {
        self.shared
            .plan_now
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|_| self.shared.plan.clone())
    }

    /// What the cost model predicts for the plan the model was loaded
    /// with: only with [`Strategy::Throughput`], which measures the
    /// servers before planning.
    pub fn prediction(&self) -> Option<&crate::plan::Prediction> {
        self.shared.prediction.as_ref()
    }

    /// Time spent loading.
    pub fn load_time(&self) -> Duration {
        self.shared.load_time
    }

    /// What loading cost: bytes sent, bytes from caches, hashing, round
    /// trips.
    pub fn load_stats(&self) -> &LoadStats {
        &self.shared.load_stats
    }

    /// Context (tokens) each sequence has.
    pub fn ctx_per_seq(&self) -> usize {
        self.shared.ctx_per_seq
    }

    /// The model's chat template, when its file carries one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.shared.chat.as_ref()
    }

    /// The conversation in the model's chat template, ending with the
    /// assistant's turn.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, ChatError> {
        self.shared
            .chat
            .as_ref()
            .ok_or(ChatError::NoTemplate)?
            .render(messages, true)
    }

    /// The engine's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The engine's counters in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }

    /// Whether the engine serves, recovers or has stopped, and each
    /// server's state from the last step or keepalive probe.
    pub fn health(&self) -> Health {
        self.shared.health.snapshot()
    }

    /// Queues a chat: `messages` in the model's chat template, answered as
    /// the assistant; `params.prompt` is ignored.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        params: GenerateRequest,
    ) -> Result<TokenStream, ChatSubmitError> {
        let text = self.render_chat(messages)?;
        Ok(self.generate(GenerateRequest {
            prompt: Prompt::Text(text),
            ..params
        })?)
    }

    /// The vocabulary prepared for constrained decoding (built on first
    /// use, then shared): compile a [`crate::constrain::Grammar`] with it
    /// for [`OutputOptions::constraint`].
    pub fn vocab(&self) -> Result<&Vocab, ConstraintError> {
        self.shared
            .vocab
            .get_or_init(|| Vocab::new(&self.shared.tokenizer))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Queues a request; its text arrives on the returned stream.
    pub fn generate(&self, req: GenerateRequest) -> Result<TokenStream, SubmitError> {
        self.generate_with(req, OutputOptions::default())
    }

    /// [`Engine::generate`] with a constraint on the output or its
    /// log-probabilities.
    pub fn generate_with(
        &self,
        req: GenerateRequest,
        out: OutputOptions,
    ) -> Result<TokenStream, SubmitError> {
        let (job, stream) = self.job(req, out)?;
        self.queue(job)?;
        Ok(stream)
    }

    /// Several generations from one prompt (an API request's `n` choices),
    /// each with its own sampling and output options: the prompt is read
    /// once, and the others start from a copy of its KV cells when the
    /// engine has a free slot for each of them at once (else, or when the
    /// prompts differ, each reads it itself). Every stream produces what it
    /// would alone.
    pub fn generate_many(
        &self,
        reqs: Vec<(GenerateRequest, OutputOptions)>,
    ) -> Result<Vec<TokenStream>, SubmitError> {
        let mut jobs = Vec::with_capacity(reqs.len());
        let mut streams = Vec::with_capacity(reqs.len());
        for (req, out) in reqs {
            let (job, stream) = self.job(req, out)?;
            jobs.push(job);
            streams.push(stream);
        }
        let mut jobs = jobs.into_iter();
        let Some(mut leader) = jobs.next() else {
            return Ok(streams);
        };
        for job in jobs {
            if job.tokens == leader.tokens {
                leader.followers.push(job);
            } else {
                self.queue(job)?;
            }
        }
        self.queue(leader)?;
        Ok(streams)
    }

    /// A checked job for `req` and the stream its output arrives on.
    fn job(
        &self,
        req: GenerateRequest,
        out: OutputOptions,
    ) -> Result<(Job, TokenStream), SubmitError> {
        if let Some(why) = self.shared.health.refusal() {
            return Err(SubmitError::Unavailable(why));
        }
        crate::sample::Sampler::new(req.sampler.clone())?;
        let tokens = match &req.prompt {
            Prompt::Text(t) => self.shared.tokenizer.encode(t, true, true),
            Prompt::Tokens(t) => t.clone(),
        };
        if tokens.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        let ctx = self.shared.ctx_per_seq;
        if tokens.len().saturating_add(req.max_tokens) > ctx {
            return Err(SubmitError::TooLong {
                prompt: tokens.len(),
                max: req.max_tokens,
                ctx,
            });
        }
        let n_vocab = self.shared.tokenizer.n_vocab();
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(SubmitError::BadToken(t));
        }
        if let Some(&(t, _)) = req
            .sampler
            .logit_bias
            .iter()
            .find(|(t, _)| *t as usize >= n_vocab)
        {
            return Err(SubmitError::BadBiasToken(t));
        }
        if let Some(n) = out.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return Err(SubmitError::TopLogprobs(n));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let produced = Arc::new(Mutex::new(stream::Produced::default()));
        let job = Job {
            tokens,
            req,
            out,
            tx,
            produced: produced.clone(),
            followers: Vec::new(),
        };
        let stream = TokenStream {
            rx,
            done: false,
            produced,
        };
        Ok((job, stream))
    }

    /// Puts a job (and its followers) on the scheduler's queue.
    fn queue(&self, job: Job) -> Result<(), SubmitError> {
        let n = job.size() as i64;
        // Count it before the scheduler can take it off the queue.
        self.shared.metrics.queued(n);
        match self.shared.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.metrics.queued(-n);
                self.shared.metrics.unqueued_requests(n as u64);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => SubmitError::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => SubmitError::Unavailable(
                        self.shared
                            .health
                            .refusal()
                            .unwrap_or_else(|| "the engine stopped".into()),
                    ),
                })
            }
        }
    }
}
