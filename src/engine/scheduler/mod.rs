//! The scheduler task: admits requests into sequence slots, processes their
//! prompts in chunks, and decodes the generating sequences together
//! (continuous batching), in micro-batches that keep every stage of the
//! pipeline busy: while one server computes a micro-batch, the next computes
//! the one before it. Prompt chunks and decode micro-batches take turns for
//! the places in the pipeline, a pipeline's worth each.
//!
//! Two rules keep a sequence's output identical whether it runs alone or
//! beside others: a prompt chunk is never batched with other sequences'
//! tokens, and each sequence owns a fixed, 64-cell-aligned slot of the KV
//! cache, so ggml's attention groups its cells the same way in both cases.
//! Which micro-batch a decoding sequence lands in does not change its
//! arithmetic: each token's row is computed on its own.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::build::{Builder, Replanner};
use super::health::HealthState;
use super::metrics::Metrics;
use super::{Event, Finish, Job, Usage};
use crate::exec::pipeline::Pipeline;
use crate::kv::{Cell, SeqId};
use crate::sample::Sampler;
use crate::tokenizer::stream::StreamDecoder;
use crate::tokenizer::Tokenizer;

mod emit;

/// Cells per sequence slot: an equal share of the cache, a multiple of 64
/// when there is room for it.
pub(crate) fn slot_size(n_ctx: u32, parallel: usize) -> u32 {
    if parallel <= 1 {
        return n_ctx;
    }
    let share = n_ctx / parallel as u32;
    if share >= 64 {
        share / 64 * 64
    } else {
        share
    }
}

pub(crate) struct Seq {
    pub(super) job: Job,
    sampler: Sampler,
    /// The log-probability of the token just chosen, when asked for, until
    /// the token is taken.
    pending_logprob: Option<crate::sample::TokenLogprob>,
    prompt_done: usize,
    history: Vec<u32>,
    generated: usize,
    decoder: StreamDecoder,
    held: String,
    next: Option<u32>,
    admitted: Instant,
    prompt_end: Option<Instant>,
    gen_steps: usize,
    order: u64,
    /// Prompt tokens handed to the pipeline (`prompt_done` counts those
    /// whose chunk came back).
    prompt_sent: usize,
    /// Micro-batches of this sequence in the pipeline.
    in_flight: usize,
    /// Its client went away while it had work in flight: the slot is freed
    /// when that work comes back.
    dropped: bool,
    /// When its next token was sampled: the longest waiting go first.
    ready_at: Instant,
    /// The slot of the sequence whose prompt cells this one will copy,
    /// while that one reads the prompt they share.
    waits_for: Option<usize>,
    /// Sequences (slot, admission order) waiting for this one's prompt.
    followers: Vec<(usize, u64)>,
}

impl Seq {
    fn prompt_left(&self) -> bool {
        self.prompt_done < self.job.tokens.len()
    }

    fn prompt_unsent(&self) -> bool {
        self.prompt_sent < self.job.tokens.len()
    }

    /// Past its prompt and generating (in flight or with a token to feed).
    fn decoding(&self) -> bool {
        !self.dropped && !self.prompt_left() && (self.next.is_some() || self.in_flight > 0)
    }

    fn usage(&self, finish: Finish) -> Usage {
        let now = Instant::now();
        let prompt_end = self.prompt_end.unwrap_or(now);
        Usage {
            prompt_tokens: self.job.tokens.len(),
            completion_tokens: self.generated,
            finish,
            prompt_s: (prompt_end - self.admitted).as_secs_f64(),
            gen_s: (now - prompt_end).as_secs_f64(),
            gen_steps: self.gen_steps,
        }
    }
}

pub(crate) struct Scheduler {
    /// `None` only while recovering (the old connections are closed first:
    /// a server serves one client at a time).
    pub pipeline: Option<Pipeline>,
    pub tokenizer: Arc<Tokenizer>,
    pub jobs: mpsc::Receiver<Job>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<HealthState>,
    /// Builds the pipeline of the plan in use.
    pub builder: Builder,
    /// Plans again over fewer servers.
    pub replanner: Replanner,
    /// How long a lost server may take to return before re-planning.
    pub replan_after: Duration,
    /// The plan in use, for the engine's handles.
    pub plan_now: Arc<std::sync::Mutex<crate::plan::Plan>>,
    pub parallel: usize,
    pub slot_size: u32,
    pub n_batch: usize,
    /// Requests taken off the queue while recovering, with when they came.
    pub waiting: VecDeque<(Job, Instant)>,
    /// Micro-batches kept in the pipeline at once (0: one per stage).
    pub micro_batches: usize,
    /// What each micro-batch in the pipeline is, by tag.
    pub flights: HashMap<u64, Flight>,
    /// Whether the next free place in the pipeline goes to a prompt chunk
    /// when decode steps are also waiting.
    pub prompt_turn: bool,
    /// Submissions of the current turn's kind so far: turns last one
    /// pipeline's worth, so that a stage switches graphs (and the server is
    /// sent the other one: it stores one per device) once per turn, not once
    /// per step.
    pub turn_run: usize,
}

/// What a micro-batch in the pipeline carries.
pub(crate) enum Flight {
    /// Prompt tokens of one sequence, up to `end`.
    Prompt { slot: usize, n: usize, end: usize },
    /// One token of each of these sequences.
    Decode { slots: Vec<usize>, sent: Instant },
    /// A copy of one sequence's prompt cells for the sequences that share
    /// its prompt.
    Copy,
}

/// An idle engine checks its servers this often.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A probe must be answered within this.
const PROBE_WITHIN: Duration = Duration::from_secs(2);
/// A request waits at most this long for a recovery to finish.
pub(crate) const MAX_WAIT_WHILE_RECOVERING: Duration = Duration::from_secs(120);
/// Longest pause between two recovery attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// A failed step: the server at fault (when known) and what happened.
pub(crate) struct StepFailure {
    pub(super) endpoint: Option<String>,
    pub(super) message: String,
}

impl From<crate::exec::pipeline::DecodeError> for StepFailure {
    fn from(e: crate::exec::pipeline::DecodeError) -> Self {
        StepFailure {
            endpoint: e.endpoint().map(str::to_string),
            message: e.to_string(),
        }
    }
}

impl From<crate::exec::ExecError> for StepFailure {
    fn from(e: crate::exec::ExecError) -> Self {
        StepFailure {
            endpoint: e.endpoint().map(str::to_string),
            message: e.to_string(),
        }
    }
}

/// What happened to a sequence after a token.
enum After {
    Continue,
    Finished,
}

impl Scheduler {
    pub async fn run(mut self) {
        let mut slots: Vec<Option<Seq>> = (0..self.parallel.max(1)).map(|_| None).collect();
        let mut order = 0u64;
        loop {
            #[cfg(debug_assertions)]
            if std::env::var_os("SHARDLINE_TEST_SCHEDULER_PANIC").is_some() {
                panic!("scheduler panic injected by SHARDLINE_TEST_SCHEDULER_PANIC");
            }
            // Requests whose client went away free their slot at once, or
            // when their work in the pipeline comes back.
            let mut orphans = Vec::new();
            for (i, s) in slots.iter_mut().enumerate() {
                if let Some(seq) = s.as_mut().filter(|s| s.job.tx.is_closed()) {
                    // Those waiting for its prompt read it themselves.
                    orphans.append(&mut seq.followers);
                    if seq.in_flight == 0 {
                        *s = None;
                        self.pipe().remove_seq(i as SeqId);
                    } else {
                        seq.dropped = true;
                    }
                }
            }
            for (f, ord) in orphans {
                if let Some(seq) = slots[f].as_mut().filter(|s| s.order == ord) {
                    seq.waits_for = None;
                    seq.prompt_sent = 0;
                }
            }
            // Admit waiting requests into free slots: first those that
            // waited out a recovery, then the queue.
            let mut closed = false;
            while slots.iter().any(Option::is_none) {
                let (job, since) = match self.waiting.pop_front() {
                    Some(w) => w,
                    None => match self.jobs.try_recv() {
                        Ok(job) => (job, Instant::now()),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    },
                };
                if let Err(job) = self.place(&mut slots, job, &mut order) {
                    // Its group needs more free slots: first in line.
                    self.waiting.push_front((*job, since));
                    break;
                }
            }
            let active = slots.iter().filter(|s| s.is_some()).count();
            self.metrics.set_active(active);
            if active == 0 {
                if closed {
                    return;
                }
                // Idle: wait for a request, checking the servers meanwhile
                // so a dead one is found before a request needs it.
                match tokio::time::timeout(PROBE_EVERY, self.jobs.recv()).await {
                    Ok(Some(job)) => {
                        // Every slot is free: a group that fits the engine
                        // fits now, and a larger one is split.
                        if let Err(job) = self.place(&mut slots, job, &mut order) {
                            self.waiting.push_front((*job, Instant::now()));
                        }
                        continue;
                    }
                    Ok(None) => return,
                    Err(_) => {
                        let probe = self.pipe().probe(PROBE_WITHIN).await;
                        match probe {
                            Ok(()) => self.health.all_ok(),
                            Err(e) => {
                                if !self.recover(&mut slots, e.into()).await {
                                    return;
                                }
                            }
                        }
                        continue;
                    }
                }
            }

            // Keep the pipeline full: prompt chunks and decode micro-batches
            // take turns for the free places.
            let depth = self.depth();
            let mut failed = None;
            while self.pipe().in_flight() < depth {
                match self.submit_next(&mut slots) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                if !self.recover(&mut slots, e).await {
                    return;
                }
                continue;
            }
            // Then take the oldest micro-batch's result.
            match self.pipe().next_done().await {
                Some((tag, result)) => {
                    if let Err(e) = self.collect(&mut slots, tag, result) {
                        if !self.recover(&mut slots, e).await {
                            return;
                        }
                        continue;
                    }
                }
                // Every busy slot has work it can submit or work in flight;
                // this only passes while a dropped one drains.
                None => tokio::task::yield_now().await,
            }
            let stats = self.pipe().stage_stats();
            self.metrics.set_stages(stats);
        }
    }

    /// Micro-batches to keep in the pipeline: one per stage unless set.
    fn depth(&mut self) -> usize {
        if self.micro_batches > 0 {
            self.micro_batches
        } else {
            self.pipe().stage_endpoints().len().max(1)
        }
    }

    /// The pipeline; there is always one outside [`Scheduler::recover`].
    fn pipe(&mut self) -> &mut Pipeline {
        self.pipeline
            .as_mut()
            .expect("a pipeline exists outside recovery")
    }

    /// Admits `job` and its followers into free slots, the followers to
    /// wait for a copy of its prompt cells; gives the job back when there
    /// are not enough free slots now. A group larger than the engine's
    /// slots is split: each follower then reads the prompt itself.
    fn place(
        &mut self,
        slots: &mut [Option<Seq>],
        mut job: Job,
        order: &mut u64,
    ) -> Result<(), Box<Job>> {
        if job.size() > slots.len() {
            for f in std::mem::take(&mut job.followers).into_iter().rev() {
                self.waiting.push_front((f, Instant::now()));
            }
        }
        let free: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_none()).collect();
        if free.len() < job.size() {
            return Err(Box::new(job));
        }
        let followers = std::mem::take(&mut job.followers);
        *order += 1;
        let Some(mut leader) = self.admit(job, *order) else {
            for f in followers.into_iter().rev() {
                self.waiting.push_front((f, Instant::now()));
            }
            return Ok(());
        };
        for (f, &at) in followers.into_iter().zip(&free[1..]) {
            *order += 1;
            if let Some(mut seq) = self.admit(f, *order) {
                seq.prompt_sent = seq.job.tokens.len();
                seq.waits_for = Some(free[0]);
                leader.followers.push((at, *order));
                slots[at] = Some(seq);
            }
        }
        slots[free[0]] = Some(leader);
        Ok(())
    }

    fn admit(&mut self, job: Job, order: u64) -> Option<Seq> {
        self.metrics.queued(-1);
        let sampler = match Sampler::new(job.req.sampler.clone()) {
            Ok(s) => s,
            Err(e) => {
                let _ = job.tx.send(Event::Error(e.to_string()));
                return None;
            }
        };
        Some(Seq {
            history: job.tokens.clone(),
            job,
            sampler,
            pending_logprob: None,
            prompt_done: 0,
            generated: 0,
            decoder: StreamDecoder::new(false),
            held: String::new(),
            next: None,
            admitted: Instant::now(),
            prompt_end: None,
            gen_steps: 0,
            order,
            prompt_sent: 0,
            in_flight: 0,
            dropped: false,
            ready_at: Instant::now(),
            waits_for: None,
            followers: Vec::new(),
        })
    }

    fn cell_index(&self, slot: usize, pos: usize) -> usize {
        slot * self.slot_size as usize + pos
    }

    /// Puts the next piece of work into the pipeline: a prompt chunk of
    /// the oldest sequence still sending its prompt, or one token of each
    /// sequence ready to decode (at most an equal share of the decoding
    /// sequences, so that several micro-batches fill the stages). False when
    /// there is nothing to send.
    fn submit_next(&mut self, slots: &mut [Option<Seq>]) -> Result<bool, StepFailure> {
        let prompt = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| !s.dropped && s.prompt_unsent())
                    .map(|s| (s.order, i))
            })
            .min()
            .map(|(_, i)| i);
        let mut ready: Vec<(Instant, usize)> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| !s.dropped && s.in_flight == 0 && s.next.is_some())
                    .map(|s| (s.ready_at, i))
            })
            .collect();
        // Those waiting longest first, then in slot order within a batch.
        ready.sort();
        let ready: Vec<usize> = ready.into_iter().map(|(_, i)| i).collect();
        let take_prompt = match (prompt, ready.is_empty()) {
            (None, true) => return Ok(false),
            (Some(_), true) => true,
            (None, false) => false,
            (Some(_), false) => self.prompt_turn,
        };
        let depth = self.depth();
        self.turn_run += 1;
        if self.turn_run >= depth || take_prompt != self.prompt_turn {
            self.prompt_turn = !take_prompt;
            self.turn_run = 0;
        }
        if let (Some(i), true) = (prompt, take_prompt) {
            self.send_prompt_chunk(slots, i)?;
        } else {
            let decoding = slots.iter().flatten().filter(|s| s.decoding()).count();
            let share = decoding.div_ceil(depth).max(1);
            let mut batch = ready[..share.min(ready.len())].to_vec();
            batch.sort_unstable();
            self.send_decode(slots, &batch)?;
        }
        Ok(true)
    }

    fn send_prompt_chunk(
        &mut self,
        slots: &mut [Option<Seq>],
        i: usize,
    ) -> Result<(), StepFailure> {
        let seq = slots[i].as_mut().expect("chosen slot is busy");
        let start = seq.prompt_sent;
        let end = (start + self.n_batch.max(1)).min(seq.job.tokens.len());
        let part = seq.job.tokens[start..end].to_vec();
        let cells: Vec<Cell> = (start..end)
            .map(|p| Cell {
                seq: i as SeqId,
                pos: p as u32,
            })
            .collect();
        let idx: Vec<usize> = (start..end).map(|p| self.cell_index(i, p)).collect();
        let tag = self
            .pipe()
            .submit_at(&part, &cells, &idx, &[part.len() - 1])?;
        let seq = slots[i].as_mut().expect("still busy");
        seq.prompt_sent = end;
        seq.in_flight += 1;
        self.flights.insert(
            tag,
            Flight::Prompt {
                slot: i,
                n: part.len(),
                end,
            },
        );
        Ok(())
    }

    fn send_decode(
        &mut self,
        slots: &mut [Option<Seq>],
        ready: &[usize],
    ) -> Result<(), StepFailure> {
        let mut tokens = Vec::with_capacity(ready.len());
        let mut cells = Vec::with_capacity(ready.len());
        let mut idx = Vec::with_capacity(ready.len());
        for &i in ready {
            let s = slots[i].as_ref().expect("ready slots are busy");
            let pos = s.history.len() - 1;
            tokens.push(s.next.expect("ready sequences have a token"));
            cells.push(Cell {
                seq: i as SeqId,
                pos: pos as u32,
            });
            idx.push(self.cell_index(i, pos));
        }
        let outputs: Vec<usize> = (0..ready.len()).collect();
        let tag = self.pipe().submit_at(&tokens, &cells, &idx, &outputs)?;
        for &i in ready {
            if let Some(s) = slots[i].as_mut() {
                s.in_flight += 1;
                s.next = None;
            }
        }
        self.flights.insert(
            tag,
            Flight::Decode {
                slots: ready.to_vec(),
                sent: Instant::now(),
            },
        );
        Ok(())
    }

    /// Takes the result of micro-batch `tag`: samples the next token of each
    /// sequence that has logits in it.
    fn collect(
        &mut self,
        slots: &mut [Option<Seq>],
        tag: u64,
        result: Result<Vec<f32>, crate::exec::pipeline::DecodeError>,
    ) -> Result<(), StepFailure> {
        let flight = self.flights.remove(&tag);
        let logits = result?;
        match flight {
            Some(Flight::Prompt { slot, n, end }) => {
                self.metrics.prompt(n);
                let Some(seq) = slots[slot].as_mut() else {
                    return Ok(());
                };
                seq.in_flight -= 1;
                seq.prompt_done = end;
                if seq.dropped {
                    self.free_if_drained(slots, slot);
                } else if !seq.prompt_left() {
                    seq.prompt_end = Some(Instant::now());
                    let followers = std::mem::take(&mut seq.followers);
                    self.release_followers(slots, slot, followers, &logits)?;
                    let seq = slots[slot].as_mut().expect("still busy");
                    if let After::Finished = self.next_token(seq, &logits) {
                        slots[slot] = None;
                        self.pipe().remove_seq(slot as SeqId);
                    }
                }
            }
            Some(Flight::Decode { slots: ready, sent }) => {
                self.metrics
                    .generated(ready.len(), sent.elapsed().as_secs_f64());
                let n_vocab = logits.len() / ready.len().max(1);
                for (k, &i) in ready.iter().enumerate() {
                    let Some(seq) = slots[i].as_mut() else {
                        continue;
                    };
                    seq.in_flight -= 1;
                    if seq.dropped {
                        self.free_if_drained(slots, i);
                        continue;
                    }
                    seq.gen_steps += 1;
                    let row = &logits[k * n_vocab..(k + 1) * n_vocab];
                    if let After::Finished = self.next_token(seq, row) {
                        slots[i] = None;
                        self.pipe().remove_seq(i as SeqId);
                    }
                }
                self.health.all_ok();
            }
            Some(Flight::Copy) | None => {}
        }
        Ok(())
    }

    /// The sequence in `slot` has read its prompt (its last logits are
    /// `logits`): the followers still waiting get a copy of its prompt
    /// cells, in the pipeline ahead of their first token, and choose that
    /// token from the same logits.
    fn release_followers(
        &mut self,
        slots: &mut [Option<Seq>],
        slot: usize,
        followers: Vec<(usize, u64)>,
        logits: &[f32],
    ) -> Result<(), StepFailure> {
        let live: Vec<usize> = followers
            .into_iter()
            .filter(|&(f, ord)| {
                slots[f]
                    .as_ref()
                    .is_some_and(|s| s.order == ord && s.waits_for == Some(slot) && !s.dropped)
            })
            .map(|(f, _)| f)
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let n = slots[slot].as_ref().map_or(0, |s| s.job.tokens.len());
        let copies: Vec<(usize, Vec<Cell>)> = live
            .iter()
            .map(|&f| {
                let cells = (0..n)
                    .map(|p| Cell {
                        seq: f as SeqId,
                        pos: p as u32,
                    })
                    .collect();
                (self.cell_index(f, 0), cells)
            })
            .collect();
        let src = self.cell_index(slot, 0);
        let tag = self.pipe().submit_copy(src, &copies)?;
        self.flights.insert(tag, Flight::Copy);
        let now = Instant::now();
        for f in live {
            let seq = slots[f].as_mut().expect("checked above");
            seq.waits_for = None;
            seq.prompt_done = n;
            seq.prompt_end = Some(now);
            if let After::Finished = self.next_token(seq, logits) {
                slots[f] = None;
                self.pipe().remove_seq(f as SeqId);
            }
        }
        Ok(())
    }

    /// Frees a dropped sequence's slot once nothing of it is in flight.
    fn free_if_drained(&mut self, slots: &mut [Option<Seq>], i: usize) {
        if slots[i].as_ref().is_some_and(|s| s.in_flight == 0) {
            slots[i] = None;
            self.pipe().remove_seq(i as SeqId);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_64_aligned_shares() {
        assert_eq!(slot_size(4096, 1), 4096);
        assert_eq!(slot_size(4096, 3), 1344);
        assert_eq!(slot_size(100, 1), 100);
        assert_eq!(slot_size(200, 2), 64);
        assert_eq!(slot_size(80, 2), 40);
    }
}
