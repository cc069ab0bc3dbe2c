//! The engine's counters, rendered in Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

pub use crate::exec::StageStat;

/// A per-server family: name, Prometheus type (empty: continues the family
/// above), help text, and the value of one server.
type PerServer = (
    &'static str,
    &'static str,
    &'static str,
    fn(&StageStat) -> String,
);

/// Counters and gauges of an engine.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    generated: AtomicU64,
    queue: AtomicI64,
    active: AtomicI64,
    /// Tokens per second of the last decode step, as f64 bits.
    rate_bits: AtomicU64,
    stages: Mutex<Vec<StageStat>>,
    failures: AtomicU64,
    recoveries: AtomicU64,
    /// Seconds the last recovery took, as f64 bits.
    last_recovery_bits: AtomicU64,
}

impl Metrics {
    pub(crate) fn queued(&self, n: i64) {
        self.queue.fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            self.requests.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// A request counted by `queued` was refused after all.
    pub(crate) fn unqueued_request(&self) {
        self.requests.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn set_active(&self, n: usize) {
        self.active.store(n as i64, Ordering::Relaxed);
    }

    pub(crate) fn prompt(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn generated(&self, n: usize, seconds: f64) {
        self.generated.fetch_add(n as u64, Ordering::Relaxed);
        if seconds > 0.0 {
            self.rate_bits
                .store((n as f64 / seconds).to_bits(), Ordering::Relaxed);
        }
    }

    pub(crate) fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn recovered(&self, seconds: f64) {
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        self.last_recovery_bits
            .store(seconds.to_bits(), Ordering::Relaxed);
    }

    /// Server failures seen (steps or probes that failed).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Recoveries completed.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    pub(crate) fn set_stages(&self, stats: Vec<StageStat>) {
        if let Ok(mut s) = self.stages.lock() {
            *s = stats;
        }
    }

    /// Each stage's numbers, as of the last step.
    pub fn stages(&self) -> Vec<StageStat> {
        self.stages.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Requests accepted so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Tokens generated so far.
    pub fn tokens_generated(&self) -> u64 {
        self.generated.load(Ordering::Relaxed)
    }

    /// Requests waiting for a sequence.
    pub fn queue_depth(&self) -> i64 {
        self.queue.load(Ordering::Relaxed).max(0)
    }

    /// Sequences being generated.
    pub fn active_sequences(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    /// The counters in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "shardline_requests_total",
            "counter",
            "Generation requests accepted.",
            self.requests().to_string(),
        );
        metric(
            "shardline_prompt_tokens_total",
            "counter",
            "Prompt tokens processed.",
            self.prompt_tokens.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "shardline_tokens_generated_total",
            "counter",
            "Tokens generated.",
            self.tokens_generated().to_string(),
        );
        metric(
            "shardline_tokens_per_second",
            "gauge",
            "Tokens generated per second in the last decode step (all sequences).",
            f64::from_bits(self.rate_bits.load(Ordering::Relaxed)).to_string(),
        );
        metric(
            "shardline_server_failures_total",
            "counter",
            "Server failures seen (a step or keepalive probe that failed or hung).",
            self.failures().to_string(),
        );
        metric(
            "shardline_recoveries_total",
            "counter",
            "Recoveries completed (reconnected, reloaded, serving again).",
            self.recoveries().to_string(),
        );
        metric(
            "shardline_last_recovery_seconds",
            "gauge",
            "Seconds from the last failure until serving again.",
            f64::from_bits(self.last_recovery_bits.load(Ordering::Relaxed)).to_string(),
        );
        metric(
            "shardline_queue_depth",
            "gauge",
            "Requests waiting for a sequence.",
            self.queue_depth().to_string(),
        );
        metric(
            "shardline_active_sequences",
            "gauge",
            "Sequences being generated.",
            self.active_sequences().to_string(),
        );
        let stages = self.stages.lock().map(|s| s.clone()).unwrap_or_default();
        // One family per server-level number, a sample per server.
        let per_server: [PerServer; 5] = [
            (
                "shardline_stage_step_seconds_sum",
                "summary",
                "Time per step spent on each server (send, compute, receive).",
                |s| s.seconds.to_string(),
            ),
            ("shardline_stage_step_seconds_count", "", "", |s| {
                s.steps.to_string()
            }),
            (
                "shardline_bytes_sent_total",
                "counter",
                "Bytes sent to each server while generating.",
                |s| s.bytes_sent.to_string(),
            ),
            (
                "shardline_bytes_received_total",
                "counter",
                "Bytes received from each server while generating.",
                |s| s.bytes_received.to_string(),
            ),
            (
                "shardline_graphs_sent_total",
                "counter",
                "Steps that sent a stage's graph instead of rerunning the one its server held.",
                |s| s.graphs_sent.to_string(),
            ),
        ];
        for (name, kind, help, value) in per_server {
            if !kind.is_empty() {
                // A summary's family is named without its _sum/_count suffix.
                let family = name.strip_suffix("_sum").unwrap_or(name);
                let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {kind}");
            }
            for s in &stages {
                let server = s.server.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(out, "{name}{{server=\"{server}\"}} {}", value(s));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_type_lines() {
        let m = Metrics::default();
        m.queued(3);
        m.queued(-1);
        m.set_active(2);
        m.generated(10, 0.5);
        m.set_stages(vec![StageStat {
            server: "127.0.0.1:1".into(),
            steps: 4,
            seconds: 0.25,
            bytes_sent: 100,
            bytes_received: 200,
            ..StageStat::default()
        }]);
        let text = m.render();
        assert!(text.contains("shardline_requests_total 3"));
        assert!(text.contains("shardline_queue_depth 2"));
        assert!(text.contains("shardline_active_sequences 2"));
        assert!(text.contains("shardline_tokens_per_second 20"));
        assert!(text.contains("shardline_stage_step_seconds_count{server=\"127.0.0.1:1\"} 4"));
        assert!(text.contains("shardline_bytes_received_total{server=\"127.0.0.1:1\"} 200"));
        // Every sample line belongs to a family declared by a TYPE line.
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                families
                    .iter()
                    .any(|f| name == *f || name.starts_with(&format!("{f}_"))),
                "{line}"
            );
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
