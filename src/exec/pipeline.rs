//! The whole model as a pipeline of stages over one KV cell table.
//!
//! Each stage runs in its own task ([`super::stage_task`]); hidden states go
//! from one to the next through channels. The caller submits micro-batches
//! ([`Pipeline::submit_at`]) and collects their logits in submission order
//! ([`Pipeline::next_done`]); while stage k computes one micro-batch, stage
//! k+1 computes the one submitted before it. Every stage handles its
//! micro-batches in order, so a sequence's next micro-batch may be submitted
//! before the previous one is out: each stage has written the earlier
//! tokens' K/V by the time it reaches the later ones.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::remote::SharedClient;
use super::stage_task::{run_stage, StageShared, StepTrace, Work};
use super::StageStat;
use super::{Embedder, ExecError, Step};
use crate::kv::{CacheFull, Cell, KvCells};
use crate::model::LlamaConfig;

pub use super::stage_task::{StageRunner, StepSpan, MIN_STEP_DEADLINE};

/// Errors of a decode call.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The batch does not fit in the KV cache.
    #[error(transparent)]
    CacheFull(#[from] CacheFull),
    /// The batch is malformed.
    #[error("bad batch: {0}")]
    BadBatch(String),
    /// A stage failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A stage failed on an earlier micro-batch, so this one was dropped.
    #[error("the pipeline stopped after a stage failed")]
    Stopped,
}

impl DecodeError {
    /// The server that failed, when a server did.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            DecodeError::Exec(e) => e.endpoint(),
            _ => None,
        }
    }
}

/// A submitted micro-batch: its tag and the KV cells it claimed.
#[derive(Debug)]
struct Flight {
    tag: u64,
    idx: Vec<usize>,
}

/// Embedding, stage tasks, and the KV cell table they share.
#[derive(Debug)]
pub struct Pipeline {
    cfg: LlamaConfig,
    embedder: Embedder,
    kv: KvCells,
    head: mpsc::UnboundedSender<Work>,
    tail: mpsc::UnboundedReceiver<Work>,
    flights: VecDeque<Flight>,
    next_tag: u64,
    /// Each server's connection, for probes while idle.
    servers: Vec<(String, SharedClient)>,
    stats: Vec<Arc<Mutex<StageStat>>>,
    endpoints: Vec<String>,
    trace: Arc<StepTrace>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Stages hold the connections: ending their tasks closes them, so
        // that a reconnect does not wait behind the old session.
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Pipeline {
    /// A pipeline over `stages` (in layer order, the last holding the head)
    /// with a KV cache of `kv_size` cells. Starts one task per stage, so it
    /// must be called inside a tokio runtime.
    pub fn new(
        cfg: LlamaConfig,
        embedder: Embedder,
        stages: Vec<StageRunner>,
        kv_size: u32,
    ) -> Self {
        Self::with_trace(cfg, embedder, stages, kv_size, Arc::default())
    }

    /// Like [`Pipeline::new`], recording step spans into `trace`.
    pub fn with_trace(
        cfg: LlamaConfig,
        embedder: Embedder,
        stages: Vec<StageRunner>,
        kv_size: u32,
        trace: Arc<StepTrace>,
    ) -> Self {
        let shared_cfg = Arc::new(cfg.clone());
        let mut servers: Vec<(String, SharedClient)> = Vec::new();
        let mut stats = Vec::new();
        let mut endpoints = Vec::new();
        let mut tasks = Vec::new();
        let (head, mut rx) = mpsc::unbounded_channel();
        for (index, stage) in stages.into_iter().enumerate() {
            if let StageRunner::Remote(r) = &stage {
                if !servers.iter().any(|(e, _)| e == r.endpoint()) {
                    servers.push((r.endpoint().to_string(), r.client()));
                }
            }
            endpoints.push(stage.endpoint().to_string());
            let stat = Arc::new(Mutex::new(StageStat {
                server: stage.endpoint().to_string(),
                ..StageStat::default()
            }));
            stats.push(stat.clone());
            let (tx, next_rx) = mpsc::unbounded_channel();
            let shared = StageShared {
                index,
                cfg: shared_cfg.clone(),
                stat,
                trace: trace.clone(),
            };
            tasks.push(tokio::spawn(run_stage(stage, shared, rx, tx)));
            rx = next_rx;
        }
        Pipeline {
            cfg,
            embedder,
            kv: KvCells::new(kv_size as usize),
            head,
            tail: rx,
            flights: VecDeque::new(),
            next_tag: 0,
            servers,
            stats,
            endpoints,
            trace,
            tasks,
        }
    }

    /// The model configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The KV cell table.
    pub fn kv(&self) -> &KvCells {
        &self.kv
    }

    /// Forgets a sequence's cells.
    pub fn remove_seq(&mut self, seq: crate::kv::SeqId) {
        self.kv.remove_seq(seq);
    }

    /// Where each stage runs, in order: `host:port`, or `local`.
    pub fn stage_endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The step spans recorded so far.
    pub fn trace(&self) -> &Arc<StepTrace> {
        &self.trace
    }

    /// Micro-batches submitted and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Runs one batch and waits for it: `tokens[i]` is at `cells[i]`
    /// (sequence, position); the logits of the tokens at indices `outputs`
    /// come back, `n_vocab` each, in that order. Nothing else may be in
    /// flight.
    pub async fn decode(
        &mut self,
        tokens: &[u32],
        cells: &[Cell],
        outputs: &[usize],
    ) -> Result<Vec<f32>, DecodeError> {
        self.check_batch(tokens, cells, outputs)?;
        let idx = self.kv.claim(cells)?;
        self.wait_alone(tokens, cells, idx, outputs).await
    }

    /// Like [`Pipeline::decode`], with the KV cell of each token chosen by the
    /// caller (`idx`); the cells must be free.
    pub async fn decode_at(
        &mut self,
        tokens: &[u32],
        cells: &[Cell],
        idx: &[usize],
        outputs: &[usize],
    ) -> Result<Vec<f32>, DecodeError> {
        self.check_batch(tokens, cells, outputs)?;
        self.kv.place(idx, cells)?;
        self.wait_alone(tokens, cells, idx.to_vec(), outputs).await
    }

    async fn wait_alone(
        &mut self,
        tokens: &[u32],
        cells: &[Cell],
        idx: Vec<usize>,
        outputs: &[usize],
    ) -> Result<Vec<f32>, DecodeError> {
        if !self.flights.is_empty() {
            self.release(&idx);
            return Err(DecodeError::BadBatch(format!(
                "{} micro-batches are still in flight",
                self.flights.len()
            )));
        }
        let tag = self.send(tokens, cells, idx, outputs)?;
        match self.next_done().await {
            Some((t, r)) if t == tag => r,
            _ => Err(DecodeError::Stopped),
        }
    }

    /// Submits a micro-batch without waiting for it, the KV cell of each
    /// token chosen by the caller (`idx`, free cells). Returns its tag;
    /// [`Pipeline::next_done`] gives results back in submission order.
    pub fn submit_at(
        &mut self,
        tokens: &[u32],
        cells: &[Cell],
        idx: &[usize],
        outputs: &[usize],
    ) -> Result<u64, DecodeError> {
        self.check_batch(tokens, cells, outputs)?;
        self.kv.place(idx, cells)?;
        self.send(tokens, cells, idx.to_vec(), outputs)
    }

    /// Gives each of `copies` (destination sequence, cells) a copy of the
    /// KV cells `src..src + n` on every stage, in order with the
    /// micro-batches around it: a micro-batch submitted after this sees the
    /// copied cells. The destination cells (`dst..dst + n`, holding
    /// `cells`) must be free. Returns its tag; [`Pipeline::next_done`]
    /// gives it back with no logits.
    pub fn submit_copy(
        &mut self,
        src: usize,
        copies: &[(usize, Vec<Cell>)],
    ) -> Result<u64, DecodeError> {
        let mut idx = Vec::new();
        let mut runs = Vec::with_capacity(copies.len());
        for (dst, cells) in copies {
            let n = cells.len();
            let mine: Vec<usize> = (*dst..dst + n).collect();
            let overlaps = src < dst + n && *dst < src + n;
            if n == 0 || overlaps || src + n > self.kv.size() {
                self.release(&idx);
                return Err(DecodeError::BadBatch(format!(
                    "a copy of {n} cells from {src} to {dst}"
                )));
            }
            if let Err(e) = self.kv.place(&mine, cells) {
                self.release(&idx);
                return Err(e.into());
            }
            idx.extend(mine);
            runs.push(super::CellCopy { src, dst: *dst, n });
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let work = Work::Copy {
            tag,
            copies: Arc::new(runs),
        };
        if self.head.send(work).is_err() {
            self.release(&idx);
            return Err(DecodeError::Stopped);
        }
        self.flights.push_back(Flight { tag, idx });
        Ok(tag)
    }

    /// The oldest micro-batch still in flight, once its logits are out;
    /// `None` when nothing is in flight. After a failure every later
    /// micro-batch ends with [`DecodeError::Stopped`].
    pub async fn next_done(&mut self) -> Option<(u64, Result<Vec<f32>, DecodeError>)> {
        let flight = self.flights.pop_front()?;
        let result = match self.tail.recv().await {
            Some(Work::Step { tag, hidden, .. }) if tag == flight.tag => Ok(super::f32s(&hidden)),
            Some(Work::Copy { tag, .. }) if tag == flight.tag => Ok(Vec::new()),
            Some(Work::Failed { tag, error }) if tag == flight.tag => Err(error.into()),
            Some(Work::Failed { error, .. }) => Err(error.into()),
            _ => Err(DecodeError::Stopped),
        };
        if result.is_err() {
            // The cells were claimed but their K/V may not have been written.
            self.release(&flight.idx);
        }
        Some((flight.tag, result))
    }

    fn release(&mut self, idx: &[usize]) {
        for &i in idx {
            self.kv.release(i);
        }
    }

    /// Checks that every server answers (a cheap round trip each, within
    /// `within`); the first that does not is the error. Used on idle
    /// connections, which would otherwise hide a dead server until the next
    /// request.
    pub async fn probe(&mut self, within: Duration) -> Result<(), ExecError> {
        for (endpoint, client) in &self.servers {
            super::remote::probe(endpoint, client, within).await?;
        }
        Ok(())
    }

    /// Cumulative step numbers of every stage.
    pub fn stage_stats(&self) -> Vec<StageStat> {
        self.stats
            .iter()
            .map(|s| s.lock().map(|s| s.clone()).unwrap_or_default())
            .collect()
    }

    fn check_batch(
        &self,
        tokens: &[u32],
        cells: &[Cell],
        outputs: &[usize],
    ) -> Result<(), DecodeError> {
        let n = tokens.len();
        if n == 0 || cells.len() != n || outputs.is_empty() || outputs.iter().any(|&o| o >= n) {
            return Err(DecodeError::BadBatch(format!(
                "{n} tokens, {} cells, outputs {outputs:?}",
                cells.len()
            )));
        }
        let n_vocab = self.cfg.hp.n_vocab;
        if let Some(&t) = tokens.iter().find(|&&t| t >= n_vocab) {
            return Err(DecodeError::BadBatch(format!(
                "token {t} is outside the vocabulary of {n_vocab}"
            )));
        }
        Ok(())
    }

    /// Embeds the tokens and hands them to the first stage; the cells at
    /// `idx` are already claimed.
    fn send(
        &mut self,
        tokens: &[u32],
        cells: &[Cell],
        idx: Vec<usize>,
        outputs: &[usize],
    ) -> Result<u64, DecodeError> {
        let n = tokens.len();
        let n_kv = self.kv.attention_window();
        let pos: Vec<i32> = cells.iter().map(|c| c.pos as i32).collect();
        let kv_idx: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        let out_ids: Vec<i32> = outputs.iter().map(|&o| o as i32).collect();
        let step = Step {
            n_tokens: n,
            pos: super::le_bytes_i32(&pos),
            kv_idx: super::le_bytes_i64(&kv_idx),
            n_kv,
            mask: super::le_bytes_f16(&self.kv.mask_f16(cells, n, n_kv)),
            out_ids: super::le_bytes_i32(&out_ids),
            n_outputs: outputs.len(),
        };
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let hidden = match self.embedder.embed_bytes(&ids) {
            Ok(h) => h,
            Err(e) => {
                self.release(&idx);
                return Err(e.into());
            }
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let work = Work::Step {
            tag,
            step: Arc::new(step),
            hidden,
        };
        if self.head.send(work).is_err() {
            self.release(&idx);
            return Err(DecodeError::Stopped);
        }
        self.flights.push_back(Flight { tag, idx });
        Ok(tag)
    }
}
