//! The whole model as a pipeline of stages over one KV cell table.

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

/// Embedding, stages, and the KV cell table they share.
#[derive(Debug)]
pub struct Pipeline {
    cfg: LlamaConfig,
    embedder: Embedder,
    stages: Vec<StageRunner>,
    kv: KvCells,
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
        for stage in &mut self.stages {
            hidden = match stage {
                StageRunner::Local(s) => super::blocking(|| s.run(&self.cfg, step, &hidden))?,
                StageRunner::Remote(s) => s.run(&self.cfg, step, &hidden).await?,
            };
        }
        Ok(hidden)
    }
}
