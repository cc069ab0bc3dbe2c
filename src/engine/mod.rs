//! The engine: loads a model onto a cluster once (plan, upload) and generates
//! text from it.

mod load;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::exec::pipeline::{DecodeError, Pipeline};
use crate::gguf::Gguf;
use crate::kv::{Cell, SeqId};
use crate::plan::{Plan, Strategy};
use crate::sample::{Sampler, SamplerConfig, SamplerError};
use crate::tokenizer::stream::StreamDecoder;
use crate::tokenizer::Tokenizer;
use crate::worker::LocalWorker;

pub use load::EngineError;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The GGUF file.
    pub model: PathBuf,
    /// rpc-servers (`host:port`). Empty: start `local_workers` workers on
    /// this machine with `worker_exe`.
    pub servers: Vec<String>,
    /// Workers to start when no servers are given.
    pub local_workers: usize,
    /// The `shardline` binary used to start local workers.
    pub worker_exe: Option<PathBuf>,
    /// Context size: KV cache cells shared by all sequences.
    pub n_ctx: u32,
    /// Largest batch of tokens per step.
    pub n_batch: u32,
    /// How layers are spread over the servers.
    pub strategy: Strategy,
    /// Layers (the first ones) kept on the coordinator's CPU.
    pub local_layers: u32,
    /// CPU threads for the coordinator's own work.
    pub threads: usize,
    /// Show a progress bar while uploading (when stderr is a terminal).
    pub progress: bool,
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
            strategy: Strategy::Memory,
            local_layers: 0,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            progress: true,
        }
    }
}

/// A loaded model, ready to generate.
#[derive(Debug)]
pub struct Engine {
    gguf: Gguf,
    tokenizer: Tokenizer,
    pipeline: Pipeline,
    plan: Plan,
    n_batch: u32,
    load_time: Duration,
    // Kept last: workers this engine started stop when it is dropped.
    _workers: Vec<LocalWorker>,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Stop at an end-of-generation token (not printed).
    pub stop_at_eog: bool,
}

/// Counts and speeds of one generation.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct GenerateStats {
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt.
    pub prompt_s: f64,
    /// Tokens generated.
    pub gen_tokens: usize,
    /// Seconds spent generating.
    pub gen_s: f64,
    /// Decode steps run while generating (the first token comes from the
    /// prompt's logits, so one fewer than the tokens).
    pub gen_steps: usize,
    /// Why it stopped.
    #[serde(skip)]
    pub finish: Finish,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token, or the callback asked to stop.
    #[default]
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// Errors while generating.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The sampler settings are invalid.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// The prompt is empty.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt plus the tokens to generate exceed the context.
    #[error("prompt of {prompt} tokens plus {max} to generate exceed the context of {ctx}")]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Tokens asked for.
        max: usize,
        /// Context size.
        ctx: usize,
    },
    /// A step failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Engine {
    /// Loads the model onto the cluster; see [`EngineOptions`].
    pub async fn load(opts: EngineOptions) -> Result<Engine, EngineError> {
        load::load(opts).await
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model file.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// The plan the model was loaded with.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Time spent loading.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Generates from `prompt` tokens in sequence 0. `on_text` gets each
    /// piece of text as it is decoded (whole UTF-8 characters only) and may
    /// return `false` to stop.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<(Vec<u32>, GenerateStats), GenerateError> {
        const SEQ: SeqId = 0;
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let ctx = self.pipeline.kv().size();
        if prompt.len() + params.max_tokens > ctx {
            return Err(GenerateError::TooLong {
                prompt: prompt.len(),
                max: params.max_tokens,
                ctx,
            });
        }
        let mut sampler = Sampler::new(params.sampler.clone())?;
        let mut stats = GenerateStats {
            prompt_tokens: prompt.len(),
            finish: Finish::Length,
            ..GenerateStats::default()
        };
        self.pipeline.remove_seq(SEQ);
        let result = self.generate_inner(prompt, params, &mut sampler, &mut stats, &mut on_text).await;
        self.pipeline.remove_seq(SEQ);
        result.map(|out| (out, stats))
    }

    async fn generate_inner(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        sampler: &mut Sampler,
        stats: &mut GenerateStats,
        on_text: &mut impl FnMut(&str) -> bool,
    ) -> Result<Vec<u32>, GenerateError> {
        const SEQ: SeqId = 0;
        let started = Instant::now();
        let mut history: Vec<u32> = prompt.to_vec();
        let mut logits = Vec::new();
        let chunk = self.n_batch.max(1) as usize;
        for (ci, part) in prompt.chunks(chunk).enumerate() {
            let start = ci * chunk;
            let cells: Vec<Cell> = (0..part.len())
                .map(|i| Cell {
                    seq: SEQ,
                    pos: (start + i) as u32,
                })
                .collect();
            // Only the last prompt token's logits are needed; earlier chunks
            // still compute one output row, which is dropped.
            logits = self.pipeline.decode(part, &cells, &[part.len() - 1]).await?;
        }
        stats.prompt_s = started.elapsed().as_secs_f64();

        let gen_started = Instant::now();
        let mut out = Vec::new();
        let mut text = StreamDecoder::new(false);
        while out.len() < params.max_tokens {
            if !out.is_empty() {
                let pos = (history.len() - 1) as u32;
                let last = *history.last().expect("history has the prompt");
                logits = self.pipeline.decode(&[last], &[Cell { seq: SEQ, pos }], &[0]).await?;
                stats.gen_steps += 1;
            }
            let tok = sampler.sample(&logits, &history);
            if params.stop_at_eog && self.tokenizer.is_eog(tok) {
                stats.finish = Finish::Stop;
                break;
            }
            out.push(tok);
            history.push(tok);
            let piece = text.push(&self.tokenizer, tok);
            if !piece.is_empty() && !on_text(&piece) {
                stats.finish = Finish::Stop;
                break;
            }
        }
        let rest = text.finish();
        if !rest.is_empty() {
            on_text(&rest);
        }
        stats.gen_tokens = out.len();
        stats.gen_s = gen_started.elapsed().as_secs_f64();
        Ok(out)
    }
}
