//! One task per stage: it takes work from the stage before (or from the
//! coordinator's embedding), runs it, and hands the hidden state on. With
//! several micro-batches in flight, every stage computes at the same time as
//! the others, each on a different micro-batch.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::head::SplitHead;
use super::local::LocalStage;
use super::remote::RemoteStage;
use super::StageStat;
use super::{ExecError, Step};
use crate::model::LlamaConfig;

/// One stage of the pipeline.
#[derive(Debug)]
pub enum StageRunner {
    /// On the coordinator's CPU.
    Local(LocalStage),
    /// On a server.
    Remote(Box<RemoteStage>),
    /// The output head, split over servers (after a last stage that stops
    /// at the final norm).
    Head(Box<SplitHead>),
}

impl StageRunner {
    /// Where it runs: `host:port`, or `local`.
    pub fn endpoint(&self) -> &str {
        match self {
            StageRunner::Local(_) => "local",
            StageRunner::Remote(r) => r.endpoint(),
            StageRunner::Head(h) => h.endpoint(),
        }
    }

    fn stat(&self) -> StageStat {
        match self {
            StageRunner::Local(l) => l.stat(),
            StageRunner::Remote(r) => r.stat(),
            StageRunner::Head(h) => h.stat(),
        }
    }
}

/// Work travelling down the pipeline: a micro-batch and its hidden state, or
/// the failure that stopped it.
pub(crate) enum Work {
    /// Run `step` on `hidden`.
    Step {
        tag: u64,
        step: Arc<Step>,
        /// F32 `[n_embd, n_tokens]` as little-endian bytes: what one
        /// server returns is what the next one is sent, unconverted.
        hidden: Vec<u8>,
    },
    /// Copy KV cells within every stage's cache (in order with the steps
    /// around it).
    Copy {
        tag: u64,
        copies: Arc<Vec<super::CellCopy>>,
    },
    /// A stage failed on micro-batch `tag`; the stages after pass it on.
    Failed { tag: u64, error: ExecError },
}

/// When one stage ran one micro-batch, as the coordinator saw it (from
/// sending the inputs to having the output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpan {
    /// Index of the stage.
    pub stage: usize,
    /// Where it ran: `host:port`, or `local`.
    pub endpoint: String,
    /// Tokens in the micro-batch.
    pub n_tokens: usize,
    /// When the stage started on it.
    pub start: Instant,
    /// When its output was back.
    pub end: Instant,
}

/// The most recent step spans of every stage, for tests, benches and the
/// curious: it shows whether stages really run at the same time.
#[derive(Debug, Default)]
pub struct StepTrace {
    spans: Mutex<VecDeque<StepSpan>>,
}

/// Spans a trace keeps.
const TRACE_LEN: usize = 4096;

impl StepTrace {
    fn push(&self, span: StepSpan) {
        if let Ok(mut q) = self.spans.lock() {
            if q.len() == TRACE_LEN {
                q.pop_front();
            }
            q.push_back(span);
        }
    }

    /// The spans kept, oldest first.
    pub fn spans(&self) -> Vec<StepSpan> {
        self.spans
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets every span.
    pub fn clear(&self) {
        if let Ok(mut q) = self.spans.lock() {
            q.clear();
        }
    }

    /// The longest time two different stages computed at once, over every
    /// pair of kept spans.
    pub fn max_overlap(&self) -> Duration {
        let spans = self.spans();
        let mut best = Duration::ZERO;
        for (i, a) in spans.iter().enumerate() {
            for b in &spans[i + 1..] {
                if a.stage == b.stage {
                    continue;
                }
                let start = a.start.max(b.start);
                let end = a.end.min(b.end);
                best = best.max(end.saturating_duration_since(start));
            }
        }
        best
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
pub(crate) struct StepClock {
    /// Recent durations by step size (tokens, rounded up to a power of 2).
    recent: HashMap<u32, VecDeque<Duration>>,
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
    pub(crate) fn deadline(&self, n_tokens: usize) -> Option<(Duration, Duration)> {
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

    pub(crate) fn record(&mut self, n_tokens: usize, took: Duration) {
        let q = self.recent.entry(Self::bucket(n_tokens)).or_default();
        if q.len() == CLOCK_WINDOW {
            q.pop_front();
        }
        q.push_back(took);
    }
}

/// What a stage task shares with the pipeline that started it.
pub(crate) struct StageShared {
    pub index: usize,
    pub cfg: Arc<LlamaConfig>,
    pub stat: Arc<Mutex<StageStat>>,
    pub trace: Arc<StepTrace>,
}

/// Runs `stage` on every piece of work from `rx` in order, sending results
/// to `tx`. Stops after the first failure (its connection is then closed by
/// dropping the stage; the engine reconnects) or when either side is gone.
pub(crate) async fn run_stage(
    mut stage: StageRunner,
    shared: StageShared,
    mut rx: mpsc::UnboundedReceiver<Work>,
    tx: mpsc::UnboundedSender<Work>,
) {
    let mut clock = StepClock::default();
    while let Some(work) = rx.recv().await {
        let (tag, step, hidden) = match work {
            Work::Step { tag, step, hidden } => (tag, step, hidden),
            Work::Copy { tag, copies } => {
                let out = copy_cells(&mut stage, &shared.cfg, &copies).await;
                let next = match out {
                    Ok(()) => Work::Copy { tag, copies },
                    Err(error) => Work::Failed { tag, error },
                };
                let failed = matches!(next, Work::Failed { .. });
                if tx.send(next).is_err() || failed {
                    return;
                }
                continue;
            }
            failed @ Work::Failed { .. } => {
                let _ = tx.send(failed);
                return;
            }
        };
        let start = Instant::now();
        let out = run_once(&mut stage, &shared.cfg, &mut clock, &step, &hidden).await;
        let end = Instant::now();
        if let Ok(mut s) = shared.stat.lock() {
            *s = stage.stat();
        }
        match out {
            Ok(hidden) => {
                clock.record(step.n_tokens, end - start);
                shared.trace.push(StepSpan {
                    stage: shared.index,
                    endpoint: stage.endpoint().to_string(),
                    n_tokens: step.n_tokens,
                    start,
                    end,
                });
                if tx.send(Work::Step { tag, step, hidden }).is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = tx.send(Work::Failed { tag, error });
                return;
            }
        }
    }
}

/// Copies KV cells on a stage that holds a cache (the split head holds
/// none).
async fn copy_cells(
    stage: &mut StageRunner,
    cfg: &LlamaConfig,
    copies: &[super::CellCopy],
) -> Result<(), ExecError> {
    match stage {
        StageRunner::Local(s) => {
            super::blocking(|| copies.iter().try_for_each(|c| s.copy_cells(c)))
        }
        StageRunner::Remote(s) => s.copy_cells(cfg, copies).await,
        StageRunner::Head(_) => Ok(()),
    }
}

async fn run_once(
    stage: &mut StageRunner,
    cfg: &LlamaConfig,
    clock: &mut StepClock,
    step: &Step,
    hidden: &[u8],
) -> Result<Vec<u8>, ExecError> {
    let (endpoint, run): (
        String,
        std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>>,
    ) = match stage {
        StageRunner::Local(s) => return super::blocking(|| s.run(cfg, step, hidden)),
        StageRunner::Remote(s) => (s.endpoint().to_string(), Box::pin(s.run(cfg, step, hidden))),
        // Each share keeps its own deadline, so that a hung one is named.
        StageRunner::Head(h) => {
            return h.run(step, hidden, clock.deadline(step.n_tokens)).await;
        }
    };
    match clock.deadline(step.n_tokens) {
        None => run.await,
        Some((after, typical)) => {
            // Dropping the step mid-call leaves the session poisoned:
            // recovery reconnects anyway.
            match tokio::time::timeout(after, run).await {
                Ok(r) => r,
                Err(_) => Err(ExecError::Deadline {
                    endpoint,
                    after,
                    typical,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
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

    fn span(stage: usize, from_ms: u64, to_ms: u64, t0: Instant) -> StepSpan {
        StepSpan {
            stage,
            endpoint: format!("s{stage}"),
            n_tokens: 1,
            start: t0 + Duration::from_millis(from_ms),
            end: t0 + Duration::from_millis(to_ms),
        }
    }

    #[test]
    fn overlap_counts_only_different_stages_at_the_same_time() {
        let t0 = Instant::now();
        let t = StepTrace::default();
        t.push(span(0, 0, 10, t0));
        t.push(span(0, 5, 20, t0));
        t.push(span(1, 20, 30, t0));
        assert_eq!(
            t.max_overlap(),
            Duration::ZERO,
            "back to back is not overlap"
        );
        t.push(span(1, 14, 40, t0));
        assert_eq!(t.max_overlap(), Duration::from_millis(6));
        t.clear();
        assert!(t.spans().is_empty());
    }
}
