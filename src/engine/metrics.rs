//! The engine's counters, exposed through `prometheus-client` in
//! OpenMetrics text (what Prometheus scrapes).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use crate::exec::StageStat;

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

    /// `n` requests counted by `queued` were refused after all.
    pub(crate) fn unqueued_requests(&self, n: u64) {
        self.requests.fetch_sub(n, Ordering::Relaxed);
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

    /// Tokens per second of the last decode step (all sequences).
    pub fn tokens_per_second(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// Prompt tokens processed so far.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_tokens.load(Ordering::Relaxed)
    }

    /// Seconds from the last failure until serving again (0 before any).
    pub fn last_recovery_seconds(&self) -> f64 {
        f64::from_bits(self.last_recovery_bits.load(Ordering::Relaxed))
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

    /// The counters in OpenMetrics text (what Prometheus scrapes), ending
    /// with `# EOF`.
    pub fn render(&self) -> String {
        let mut reg = Registry::default();
        self.register(&mut reg);
        encode_registry(&reg)
    }

    /// Adds a snapshot of every counter to `reg` (for an exposition that
    /// holds other families too, such as the HTTP server's).
    pub fn register(&self, reg: &mut Registry) {
        counter(
            reg,
            "shardline_requests",
            "Generation requests accepted",
            self.requests(),
        );
        counter(
            reg,
            "shardline_prompt_tokens",
            "Prompt tokens processed",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            reg,
            "shardline_tokens_generated",
            "Tokens generated",
            self.tokens_generated(),
        );
        gauge_f64(
            reg,
            "shardline_tokens_per_second",
            "Tokens generated per second in the last decode step (all sequences)",
            f64::from_bits(self.rate_bits.load(Ordering::Relaxed)),
        );
        counter(
            reg,
            "shardline_server_failures",
            "Server failures seen (a step or keepalive probe that failed or hung)",
            self.failures(),
        );
        counter(
            reg,
            "shardline_recoveries",
            "Recoveries completed (reconnected, reloaded, serving again)",
            self.recoveries(),
        );
        gauge_f64(
            reg,
            "shardline_last_recovery_seconds",
            "Seconds from the last failure until serving again",
            f64::from_bits(self.last_recovery_bits.load(Ordering::Relaxed)),
        );
        gauge(
            reg,
            "shardline_queue_depth",
            "Requests waiting for a sequence",
            self.queue_depth(),
        );
        gauge(
            reg,
            "shardline_active_sequences",
            "Sequences being generated",
            self.active_sequences(),
        );
        // One family per server-level number, a sample per server.
        let stages = self.stages();
        let per_server = |f: fn(&StageStat) -> u64| {
            let fam = Family::<Vec<(String, String)>, Counter>::default();
            for s in &stages {
                fam.get_or_create(&vec![("server".to_owned(), s.server.clone())])
                    .inc_by(f(s));
            }
            fam
        };
        let seconds = Family::<Vec<(String, String)>, Counter<f64, AtomicU64>>::default();
        for s in &stages {
            seconds
                .get_or_create(&vec![("server".to_owned(), s.server.clone())])
                .inc_by(s.seconds);
        }
        reg.register(
            "shardline_stage_step_seconds",
            "Time spent on each server's steps (send, compute, receive)",
            seconds,
        );
        reg.register(
            "shardline_stage_steps",
            "Steps each server took part in",
            per_server(|s| s.steps),
        );
        reg.register(
            "shardline_bytes_sent",
            "Bytes sent to each server while generating",
            per_server(|s| s.bytes_sent),
        );
        reg.register(
            "shardline_bytes_received",
            "Bytes received from each server while generating",
            per_server(|s| s.bytes_received),
        );
        reg.register(
            "shardline_graphs_sent",
            "Steps that sent a stage's graph instead of rerunning the one its server held",
            per_server(|s| s.graphs_sent),
        );
    }
}

/// `reg` in OpenMetrics text.
pub fn encode_registry(reg: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, reg);
    out
}

/// Registers a counter (exposed as `NAME_total`) holding `v`.
pub fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// Registers an integer gauge holding `v`.
pub fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

/// Registers a float gauge holding `v`.
pub fn gauge_f64(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(v);
    reg.register(name, help, g);
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
        assert!(text.contains("shardline_tokens_per_second 20.0"), "{text}");
        assert!(text.contains("shardline_stage_steps_total{server=\"127.0.0.1:1\"} 4"));
        assert!(text.contains("shardline_stage_step_seconds_total{server=\"127.0.0.1:1\"} 0.25"));
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("shardline_bytes_received_total{server=\"127.0.0.1:1\"} 200"));
        // Every sample line belongs to a family declared by a TYPE line.
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(!line.is_empty());
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
