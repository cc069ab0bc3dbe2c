//! What the engine knows about its cluster: whether it serves, is
//! recovering from a lost server, or has stopped; each server's state from
//! the last step or keepalive probe.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// Whether the engine serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every server answers; requests are served.
    Ok,
    /// Requests are served by fewer servers than the engine was given: a
    /// lost one was planned around.
    Degraded,
    /// A server failed: in-flight requests were ended, new ones wait while
    /// the engine reconnects and reloads.
    Recovering,
    /// The engine stopped and will not serve again.
    Unavailable,
}

/// One server as the engine sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerHealth {
    /// `host:port`.
    pub endpoint: String,
    /// Whether it answered last time it was asked.
    pub ok: bool,
    /// What went wrong, when not.
    pub error: Option<String>,
    /// Milliseconds since it last answered (a step or a probe).
    pub last_ok_ms_ago: Option<u64>,
}

/// Progress of a recovery.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Recovery {
    /// Reconnect-and-reload attempts so far.
    pub attempts: u32,
    /// Milliseconds since the failure.
    pub since_ms: u64,
    /// Why the engine is recovering (the failure, then the last attempt's
    /// error).
    pub error: String,
}

/// The engine's state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Health {
    /// Whether requests are being served now.
    pub ok: bool,
    /// ok, degraded, recovering or unavailable.
    pub status: Status,
    /// Each server.
    pub servers: Vec<ServerHealth>,
    /// While recovering: how far it got.
    pub recovery: Option<Recovery>,
    /// Once unavailable: why.
    pub error: Option<String>,
}

/// Something that happened to the engine's cluster, for the dashboard.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HealthEvent {
    /// Milliseconds ago.
    pub ms_ago: u64,
    /// `failure`, `retry_failed`, `recovered`, `degraded` or `stopped`.
    pub kind: &'static str,
    /// What happened, in words.
    pub message: String,
}

/// Events kept for [`HealthState::events`].
const EVENTS_KEPT: usize = 32;

#[derive(Debug, Default)]
struct ServerState {
    error: Option<String>,
    last_ok: Option<Instant>,
    /// Left out of the plan after it failed.
    excluded: bool,
}

#[derive(Debug)]
struct Inner {
    status: Status,
    error: Option<String>,
    failed_at: Option<Instant>,
    attempts: u32,
    servers: BTreeMap<String, ServerState>,
    /// The last [`EVENTS_KEPT`] events, oldest first.
    events: std::collections::VecDeque<(Instant, &'static str, String)>,
}

impl Inner {
    fn event(&mut self, kind: &'static str, message: String) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back((Instant::now(), kind, message));
    }
}

/// Shared between the scheduler (which writes) and the engine's handles.
#[derive(Debug)]
pub(crate) struct HealthState {
    inner: Mutex<Inner>,
}

impl HealthState {
    pub fn new(endpoints: &[String]) -> HealthState {
        let now = Instant::now();
        HealthState {
            inner: Mutex::new(Inner {
                status: Status::Ok,
                error: None,
                failed_at: None,
                attempts: 0,
                events: std::collections::VecDeque::new(),
                servers: endpoints
                    .iter()
                    .map(|e| {
                        (
                            e.clone(),
                            ServerState {
                                error: None,
                                last_ok: Some(now),
                                excluded: false,
                            },
                        )
                    })
                    .collect(),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> Option<R> {
        self.inner.lock().ok().map(|mut g| f(&mut g))
    }

    /// Why the engine cannot take requests, if it cannot.
    pub fn refusal(&self) -> Option<String> {
        self.with(|i| match i.status {
            Status::Unavailable => Some(i.error.clone().unwrap_or_else(|| "stopped".into())),
            _ => None,
        })
        .unwrap_or_else(|| Some("engine state lost".into()))
    }

    /// Every server answered just now.
    pub fn all_ok(&self) {
        let now = Instant::now();
        self.with(|i| {
            for s in i.servers.values_mut().filter(|s| !s.excluded) {
                s.error = None;
                s.last_ok = Some(now);
            }
        });
    }

    /// A server (or, with `None`, an unknown one) failed: recovery starts.
    pub fn failed(&self, endpoint: Option<&str>, error: &str) {
        self.with(|i| {
            if let Some(s) = endpoint.and_then(|e| i.servers.get_mut(e)) {
                s.error = Some(error.to_string());
            }
            i.event("failure", error.to_string());
            if i.status != Status::Unavailable {
                i.status = Status::Recovering;
                i.failed_at.get_or_insert_with(Instant::now);
                i.error = Some(error.to_string());
            }
        });
    }

    /// A recovery attempt failed.
    pub fn attempt_failed(&self, error: &str) {
        self.with(|i| {
            i.attempts += 1;
            i.error = Some(error.to_string());
            i.event("retry_failed", error.to_string());
        });
    }

    /// Serving again; returns how long the engine was recovering.
    pub fn recovered(&self) -> Option<std::time::Duration> {
        let took = self.with(|i| {
            i.status = if i.servers.values().any(|s| s.excluded) {
                Status::Degraded
            } else {
                Status::Ok
            };
            i.error = None;
            i.attempts = 0;
            let took = i.failed_at.take().map(|t| t.elapsed());
            let after = took.map_or(String::new(), |t| {
                format!(" after {:.1} s", t.as_secs_f64())
            });
            i.event("recovered", format!("serving again{after}"));
            took
        });
        self.all_ok();
        took.flatten()
    }

    /// Serving again over a plan without `lost`; returns how long the
    /// engine was recovering.
    pub fn degraded(
        &self,
        lost: &std::collections::BTreeSet<String>,
    ) -> Option<std::time::Duration> {
        let took = self.with(|i| {
            for (e, s) in i.servers.iter_mut() {
                if lost.contains(e) {
                    s.excluded = true;
                    let why = s.error.take().unwrap_or_else(|| "failed".into());
                    s.error = Some(format!("left out of the plan: {why}"));
                }
            }
            i.status = Status::Degraded;
            i.error = None;
            i.attempts = 0;
            let names: Vec<&str> = lost.iter().map(String::as_str).collect();
            i.event("degraded", format!("serving without {}", names.join(", ")));
            i.failed_at.take().map(|t| t.elapsed())
        });
        self.all_ok();
        took.flatten()
    }

    /// The engine stopped for good.
    pub fn unavailable(&self, error: &str) {
        self.with(|i| {
            i.status = Status::Unavailable;
            i.error = Some(error.to_string());
            i.event("stopped", error.to_string());
        });
    }

    /// The recent events, newest first.
    pub fn events(&self) -> Vec<HealthEvent> {
        let now = Instant::now();
        self.with(|i| {
            i.events
                .iter()
                .rev()
                .map(|(t, kind, message)| HealthEvent {
                    ms_ago: u64::try_from(now.duration_since(*t).as_millis()).unwrap_or(u64::MAX),
                    kind,
                    message: message.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
    }

    pub fn snapshot(&self) -> Health {
        let now = Instant::now();
        let ms = |t: Instant| u64::try_from(now.duration_since(t).as_millis()).unwrap_or(u64::MAX);
        self.with(|i| Health {
            ok: matches!(i.status, Status::Ok | Status::Degraded),
            status: i.status,
            servers: i
                .servers
                .iter()
                .map(|(e, s)| ServerHealth {
                    endpoint: e.clone(),
                    ok: s.error.is_none() && i.status != Status::Unavailable,
                    error: s.error.clone(),
                    last_ok_ms_ago: s.last_ok.map(ms),
                })
                .collect(),
            recovery: (i.status == Status::Recovering).then(|| Recovery {
                attempts: i.attempts,
                since_ms: i.failed_at.map_or(0, ms),
                error: i.error.clone().unwrap_or_default(),
            }),
            error: (i.status == Status::Unavailable)
                .then(|| i.error.clone())
                .flatten(),
        })
        .unwrap_or(Health {
            ok: false,
            status: Status::Unavailable,
            servers: Vec::new(),
            recovery: None,
            error: Some("engine state lost".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_recovery_and_stop() {
        let h = HealthState::new(&["a:1".into(), "b:2".into()]);
        assert!(h.snapshot().ok);
        h.failed(Some("b:2"), "b:2 closed the connection");
        let s = h.snapshot();
        assert_eq!(s.status, Status::Recovering);
        assert!(s.servers[0].ok && !s.servers[1].ok);
        assert!(h.refusal().is_none(), "requests wait while recovering");
        h.attempt_failed("connect refused");
        assert_eq!(h.snapshot().recovery.unwrap().attempts, 1);
        assert!(h.recovered().is_some());
        let s = h.snapshot();
        assert!(s.ok && s.servers.iter().all(|s| s.ok) && s.recovery.is_none());
        h.unavailable("scheduler panicked");
        assert_eq!(h.snapshot().status, Status::Unavailable);
        assert!(h.refusal().unwrap().contains("panicked"));
        let kinds: Vec<&str> = h.events().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["stopped", "recovered", "retry_failed", "failure"]);
    }
}
