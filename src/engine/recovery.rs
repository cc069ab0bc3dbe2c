//! Recovery after a failed server: requests in flight end, the connections
//! close, and the engine reconnects and reloads (or plans around a server
//! gone for good) while new requests wait.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::scheduler::{Scheduler, Seq, StepFailure, MAX_BACKOFF, MAX_WAIT_WHILE_RECOVERING};
use super::Event;

impl Scheduler {
    /// A step or probe failed (a server died, hung or closed the
    /// connection): every request in flight ends at once with the error;
    /// then the engine reconnects to the plan's servers and reloads them
    /// (their caches make that quick), with growing pauses between attempts,
    /// while new requests wait on the queue (each at most
    /// [`MAX_WAIT_WHILE_RECOVERING`]). Returns false when the engine has
    /// been dropped meanwhile and the task should end.
    pub(super) async fn recover(
        &mut self,
        slots: &mut [Option<Seq>],
        failure: StepFailure,
    ) -> bool {
        let StepFailure { endpoint, message } = failure;
        tracing::error!(server = ?endpoint, error = %message, "a server failed; recovering");
        self.health.failed(endpoint.as_deref(), &message);
        self.metrics.failure();
        for s in slots.iter_mut().filter_map(Option::take) {
            let _ = s
                .job
                .tx
                .send(Event::Error(format!("server failed: {message}")));
        }
        self.metrics.set_active(0);
        self.flights.clear();
        // Close every connection before reconnecting.
        self.pipeline = None;
        let failed_at = Instant::now();
        let mut lost: BTreeSet<String> = endpoint.into_iter().collect();
        let mut pause = Duration::from_millis(250);
        loop {
            if !self.hold_waiting() {
                return false;
            }
            // A server gone for longer than `replan_after` is planned
            // around, if the model fits the others.
            let on_lost = self.builder.endpoints().iter().any(|e| lost.contains(e));
            let replanned = if on_lost && failed_at.elapsed() >= self.replan_after {
                match self.replanner.without(&lost).await {
                    Ok(plan) => {
                        tracing::warn!(lost = ?lost, "planning again over the servers left:\n{plan}");
                        Some(self.builder.with_plan(plan))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the servers left cannot take the model; waiting for the lost one");
                        None
                    }
                }
            } else {
                None
            };
            let builder = replanned.as_ref().unwrap_or(&self.builder);
            match builder.build().await {
                Ok((pipeline, stats)) => {
                    self.pipeline = Some(pipeline);
                    let took = match replanned {
                        Some(b) => {
                            if let Ok(mut p) = self.plan_now.lock() {
                                *p = b.plan.clone();
                            }
                            self.builder = b;
                            self.health.degraded(&lost)
                        }
                        None => self.health.recovered(),
                    }
                    .unwrap_or_default();
                    self.metrics.recovered(took.as_secs_f64());
                    tracing::info!(
                        secs = took.as_secs_f64(),
                        sent_bytes = stats.sent_bytes,
                        cached_bytes = stats.cached_bytes,
                        "recovered: serving again"
                    );
                    return true;
                }
                Err(e) => {
                    if let Some(ep) = e.endpoint() {
                        lost.insert(ep.to_string());
                    }
                    let e = e.to_string();
                    tracing::warn!(error = %e, retry_in = ?pause, "recovery attempt failed");
                    self.health.attempt_failed(&e);
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }

    /// Moves queued requests into `waiting` and ends those that waited too
    /// long for a recovery. False once the engine is gone.
    fn hold_waiting(&mut self) -> bool {
        // As many as the queue holds: past that, new requests get "queue
        // full" as they would without a recovery.
        while self.waiting.len() < self.jobs.max_capacity() {
            match self.jobs.try_recv() {
                Ok(job) => self.waiting.push_back((job, Instant::now())),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    if self.waiting.is_empty() {
                        return false;
                    }
                    break;
                }
            }
        }
        while let Some((job, since)) = self.waiting.front() {
            if job.tx.is_closed() || since.elapsed() > MAX_WAIT_WHILE_RECOVERING {
                if let Some((job, _)) = self.waiting.pop_front() {
                    self.metrics.queued(-(job.size() as i64));
                    job.fail("the cluster is recovering from a failed server; try again");
                }
            } else {
                break;
            }
        }
        true
    }
}
