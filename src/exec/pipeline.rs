//! The whole model as a pipeline of stages over one KV cell table.

use std::time::Duration;

use super::local::LocalStage;
use super::remote::RemoteStage;
use super::{Embedder, ExecError, Step};
use crate::kv::{CacheFull, Cell, KvCells};
use crate::model::LlamaConfig;

/// One stage of the pipeline.
#[derive(Debug)]
pub enum StageRunner {
    /// On the coordinator's CPU.
    Local(LocalStage),
    /// On a server.
    Remote(Box<RemoteStage>),
}

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

/// Step deadlines learnt from measured step times.
///
/// A hung server (a stopped process, a saturated link) would otherwise be
/// noticed only when the RPC client's per-call timeout passes, which has to
/// allow for the slowest prompt a server may ever compute. Steps of the same
/// size take about the same time, so once a few have been seen, a step that
/// takes ten times the slowest recent one is called hung.
#[derive(Debug, Default)]
struct StepClock {
    /// Recent durations by step size (tokens, rounded up to a power of 2).
    recent: std::collections::HashMap<u32, std::collections::VecDeque<Duration>>,
}

/// Steps remembered per size.
const CLOCK_WINDOW: usize = 32;
/// Steps of a size to see before their deadline applies.
const CLOCK_WARMUP: usize = 3;
/// No deadline is shorter than this.
pub const MIN_STEP_DEADLINE: Duration = Duration::from_secs(2);
/// A deadline is this many times the slowest recent step.
const DEADLINE_FACTOR: u32 = 10;

impl StepClock {
    fn bucket(n_tokens: usize) -> u32 {
        u32::try_from(n_tokens.max(1).next_power_of_two()).unwrap_or(u32::MAX)
    }

    /// The deadline for a step of `n_tokens`, once enough are known, with
    /// the slowest recent one.
    fn deadline(&self, n_tokens: usize) -> Option<(Duration, Duration)> {
        let seen = self.recent.get(&Self::bucket(n_tokens))?;
        if seen.len() < CLOCK_WARMUP {
            return None;
        }
        let slowest = seen.iter().copied().max()?;
        Some((
            slowest
                .saturating_mul(DEADLINE_FACTOR)
                .max(MIN_STEP_DEADLINE),
            slowest,
        ))
    }

    fn record(&mut self, n_tokens: usize, took: Duration) {
        let q = self.recent.entry(Self::bucket(n_tokens)).or_default();
        if q.len() == CLOCK_WINDOW {
            q.pop_front();
        }
        q.push_back(took);
    }
}

/// Embedding, stages, and the KV cell table they share.
#[derive(Debug)]
pub struct Pipeline {
    cfg: LlamaConfig,
    embedder: Embedder,
    stages: Vec<StageRunner>,
    kv: KvCells,
    clocks: Vec<StepClock>,
}

impl Pipeline {
    /// A pipeline over `stages` (in layer order, the last holding the head)
    /// with a KV cache of `kv_size` cells.
    pub fn new(
        cfg: LlamaConfig,
        embedder: Embedder,
        stages: Vec<StageRunner>,
        kv_size: u32,
    ) -> Self {
        Pipeline {
            cfg,
            embedder,
            clocks: stages.iter().map(|_| StepClock::default()).collect(),
            stages,
            kv: KvCells::new(kv_size as usize),
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

    /// The stages.
    pub fn stages(&self) -> &[StageRunner] {
        &self.stages
    }

    /// Runs one batch: `tokens[i]` is at `cells[i]` (sequence, position); the
    /// logits of the tokens at indices `outputs` come back, `n_vocab` each,
    /// in that order.
    pub async fn decode(
        &mut self,
        tokens: &[u32],
        cells: &[Cell],
        outputs: &[usize],
    ) -> Result<Vec<f32>, DecodeError> {
        self.check_batch(tokens, cells, outputs)?;
        let idx = self.kv.claim(cells)?;
        self.decode_claimed(tokens, cells, idx, outputs).await
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
        self.decode_claimed(tokens, cells, idx.to_vec(), outputs)
            .await
    }

    /// Checks that every server answers (a cheap round trip each, within
    /// `within`); the first that does not is the error. Used on idle
    /// connections, which would otherwise hide a dead server until the next
    /// request.
    pub async fn probe(&mut self, within: Duration) -> Result<(), ExecError> {
        for s in &mut self.stages {
            if let StageRunner::Remote(r) = s {
                r.probe(within).await?;
            }
        }
        Ok(())
    }

    /// Cumulative step numbers of every stage.
    pub fn stage_stats(&self) -> Vec<crate::engine::metrics::StageStat> {
        self.stages
            .iter()
            .map(|s| match s {
                StageRunner::Local(l) => l.stat(),
                StageRunner::Remote(r) => r.stat(),
            })
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

    async fn decode_claimed(
        &mut self,
        tokens: &[u32],
        cells: &[Cell],
        idx: Vec<usize>,
        outputs: &[usize],
    ) -> Result<Vec<f32>, DecodeError> {
        let n = tokens.len();
        let n_kv = self.kv.attention_window();
        let step = Step {
            n_tokens: n,
            pos: cells.iter().map(|c| c.pos as i32).collect(),
            kv_idx: idx.iter().map(|&i| i as i64).collect(),
            n_kv,
            mask: self.kv.mask_f16(cells, n, n_kv),
            out_ids: outputs.iter().map(|&o| o as i32).collect(),
        };
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let result = self.run(&step, &ids).await;
        if result.is_err() {
            // The cells were claimed but their K/V may not have been written.
            for &i in &idx {
                self.kv.release(i);
            }
        }
        Ok(result?)
    }

    async fn run(&mut self, step: &Step, ids: &[i32]) -> Result<Vec<f32>, ExecError> {
        let embedder = &mut self.embedder;
        let mut hidden = super::blocking(|| embedder.embed(ids))?;
        for (stage, clock) in self.stages.iter_mut().zip(&mut self.clocks) {
            hidden = match stage {
                StageRunner::Local(s) => super::blocking(|| s.run(&self.cfg, step, &hidden))?,
                StageRunner::Remote(s) => {
                    let started = std::time::Instant::now();
                    let out = match clock.deadline(step.n_tokens) {
                        None => s.run(&self.cfg, step, &hidden).await?,
                        Some((after, typical)) => {
                            // Dropping the step mid-call leaves the session
                            // poisoned: recovery reconnects anyway.
                            match tokio::time::timeout(after, s.run(&self.cfg, step, &hidden)).await
                            {
                                Ok(r) => r?,
                                Err(_) => {
                                    return Err(ExecError::Deadline {
                                        endpoint: s.endpoint().to_string(),
                                        after,
                                        typical,
                                    })
                                }
                            }
                        }
                    };
                    clock.record(step.n_tokens, started.elapsed());
                    out
                }
            };
        }
        Ok(hidden)
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn deadlines_follow_recent_steps_of_the_same_size() {
        let mut c = StepClock::default();
        assert_eq!(c.deadline(1), None);
        for ms in [10, 30, 20] {
            c.record(1, Duration::from_millis(ms));
        }
        // Ten times 30 ms is under the floor.
        assert_eq!(
            c.deadline(1),
            Some((MIN_STEP_DEADLINE, Duration::from_millis(30)))
        );
        assert_eq!(c.deadline(2), None, "other sizes are not known yet");
        for _ in 0..3 {
            c.record(300, Duration::from_millis(900));
        }
        assert_eq!(c.deadline(400).unwrap().0, Duration::from_secs(9));
        // Old steps leave the window.
        for _ in 0..CLOCK_WINDOW {
            c.record(1, Duration::from_millis(1));
        }
        assert_eq!(c.deadline(1).unwrap().1, Duration::from_millis(1));
    }
}
