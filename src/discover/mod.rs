//! Finding rpc-servers: probing hosts and ranges in parallel, and hearing
//! workers that announce themselves.
//!
//! A probe opens a connection with short timeouts, says HELLO, asks for the
//! devices and their memory, and closes. Its [`State`] says what it found:
//!
//! - [`State::Ready`]: it answered; its devices are listed.
//! - [`State::Busy`]: it accepted the connection but did not answer HELLO in
//!   time. ggml's rpc-server serves one client at a time and leaves the
//!   others waiting in its listen queue, so this is what a server held by
//!   another coordinator looks like (it would be served once that one
//!   disconnects).
//! - [`State::WrongVersion`]: it answered HELLO with a protocol this client
//!   cannot use, or hung up on HELLO, as servers of protocols older than
//!   HELLO do.
//! - [`State::Unreachable`]: the connection was refused or timed out.
//! - [`State::Error`]: anything else (not an rpc-server, a failure after
//!   HELLO).
//!
//! [`announce`] is the other way round: workers started with `--announce`
//! send a UDP multicast beacon that [`announce::listen`] hears.

pub mod announce;
pub mod targets;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{probe, DeviceReport};
use crate::rpc::{ClientOptions, Command, RpcError};

pub use announce::{AnnounceError, Announcement, Announcer, Heard, ListenOptions};
pub use targets::{expand, TargetError, MAX_HOSTS};

/// The default port of a worker (and of llama.cpp's rpc-server).
pub const DEFAULT_PORT: u16 = 50052;

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Answered HELLO, devices and memory: usable now.
    Ready,
    /// Accepted the connection but did not answer HELLO in time: another
    /// client holds it.
    Busy,
    /// Speaks another protocol version (or hung up on HELLO).
    WrongVersion,
    /// Refused the connection, or did not accept it in time.
    Unreachable,
    /// Something else went wrong.
    Error,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Ready => "ready",
            State::Busy => "busy",
            State::WrongVersion => "wrong version",
            State::Unreachable => "unreachable",
            State::Error => "error",
        })
    }
}

/// One probed server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probed {
    /// `host:port` as probed.
    pub endpoint: String,
    /// What was found.
    pub state: State,
    /// The protocol version it announced in HELLO, when it answered.
    pub protocol: Option<String>,
    /// Its devices and their memory (ready servers only).
    pub devices: Vec<DeviceReport>,
    /// Why it is not ready, in words.
    pub detail: Option<String>,
    /// Milliseconds the probe took.
    pub ms: u64,
}

/// Timeouts and parallelism of a scan.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Time to open the TCP connection (past it: unreachable).
    pub connect_timeout: Duration,
    /// Time for HELLO and each later answer (no HELLO in time: busy).
    pub answer_timeout: Duration,
    /// Probes in flight at once.
    pub parallel: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            connect_timeout: Duration::from_millis(1000),
            answer_timeout: Duration::from_millis(1500),
            parallel: 256,
        }
    }
}

/// The state an error of [`probe`] stands for, and the words for it.
pub fn classify(err: &RpcError, answer_timeout: Duration) -> (State, String) {
    match err {
        RpcError::Connect { source, .. } => (State::Unreachable, source.to_string()),
        RpcError::ConnectTimeout { after, .. } => (
            State::Unreachable,
            format!("no connection within {}", secs(*after)),
        ),
        RpcError::VersionMismatch { server, client } => (
            State::WrongVersion,
            format!("speaks protocol {server}; shardline speaks {client}"),
        ),
        RpcError::Timeout {
            cmd: Command::Hello,
            ..
        } => (
            State::Busy,
            format!(
                "accepted the connection but did not answer HELLO within {}: \
                 another client holds it (rpc-server serves one at a time)",
                secs(answer_timeout)
            ),
        ),
        RpcError::Closed {
            cmd: Command::Hello,
            ..
        } => (
            State::WrongVersion,
            "hung up on HELLO: an rpc-server of an older protocol, or not an rpc-server".into(),
        ),
        other => (State::Error, other.to_string()),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Probes one server and says what it found; never fails.
pub async fn probe_one(endpoint: &str, opts: &ProbeOptions) -> Probed {
    let started = Instant::now();
    let copts = ClientOptions {
        connect_timeout: opts.connect_timeout,
        call_timeout: opts.answer_timeout,
        ..ClientOptions::default()
    };
    // A whole-probe bound as well, so that a peer trickling bytes cannot
    // hold the scan (connect, HELLO, device count, then per device three
    // answers; a few devices at most in practice).
    let bound = opts.connect_timeout + opts.answer_timeout * 8;
    let r = tokio::time::timeout(bound, probe(endpoint, copts)).await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (state, report, detail, protocol) = match r {
        Ok(Ok(report)) => (State::Ready, Some(report), None, None),
        Ok(Err(e)) => {
            let protocol = match &e {
                RpcError::VersionMismatch { server, .. } => Some(server.to_string()),
                _ => None,
            };
            let (state, detail) = classify(&e, opts.answer_timeout);
            (state, None, Some(detail), protocol)
        }
        Err(_) => (
            State::Error,
            None,
            Some(format!("the probe took longer than {}", secs(bound))),
            None,
        ),
    };
    match report {
        Some(r) => Probed {
            endpoint: endpoint.to_string(),
            state,
            protocol: Some(r.protocol),
            devices: r.devices,
            detail,
            ms,
        },
        None => Probed {
            endpoint: endpoint.to_string(),
            state,
            protocol,
            devices: Vec::new(),
            detail,
            ms,
        },
    }
}

/// Probes every endpoint, `opts.parallel` at once; results in the order
/// given.
pub async fn probe_many(endpoints: &[String], opts: &ProbeOptions) -> Vec<Probed> {
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let (ep, opts, permits) = (ep.clone(), opts.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (i, probe_one(&ep, &opts).await)
        });
    }
    let mut out: Vec<Option<Probed>> = vec![None; endpoints.len()];
    while let Some(r) = tasks.join_next().await {
        if let Ok((i, p)) = r {
            out[i] = Some(p);
        }
    }
    out.into_iter()
        .zip(endpoints)
        .map(|(p, ep)| {
            p.unwrap_or_else(|| Probed {
                endpoint: ep.clone(),
                state: State::Error,
                protocol: None,
                devices: Vec::new(),
                detail: Some("the probe task failed".into()),
                ms: 0,
            })
        })
        .collect()
}

/// Why [`find_ready`] found nothing to use.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// Listening for announcements failed.
    #[error("listening for announced workers: {0}")]
    Listen(#[from] AnnounceError),
    /// No worker announced itself.
    #[error(
        "no shardline worker announced itself on {group} within {secs:.1} s: start workers \
         with `shardline worker --announce --host <LAN address>`, or give --rpc HOST:PORT,..."
    )]
    NoneHeard {
        /// The group listened on.
        group: std::net::SocketAddrV4,
        /// Seconds listened.
        secs: f64,
    },
    /// Workers announced themselves, but none is ready.
    #[error("no announced worker is ready: {0}")]
    NoneReady(String),
}

/// Listens for announced workers, probes them, and returns the ready ones'
/// endpoints (sorted), as `--rpc auto` uses them. The listening blocks a
/// thread for `listen.duration`.
pub async fn find_ready(
    listen: &ListenOptions,
    opts: &ProbeOptions,
) -> Result<Vec<String>, DiscoverError> {
    let lopts = listen.clone();
    let heard = tokio::task::spawn_blocking(move || announce::listen(&lopts))
        .await
        .map_err(|e| AnnounceError::Socket {
            what: "the listening thread".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
    if heard.is_empty() {
        return Err(DiscoverError::NoneHeard {
            group: listen.group,
            secs: listen.duration.as_secs_f64(),
        });
    }
    let endpoints: Vec<String> = heard.into_iter().map(|h| h.endpoint).collect();
    let probed = probe_many(&endpoints, opts).await;
    let ready: Vec<String> = probed
        .iter()
        .filter(|p| p.state == State::Ready)
        .map(|p| p.endpoint.clone())
        .collect();
    if ready.is_empty() {
        let why = probed
            .iter()
            .map(|p| format!("{} {}", p.endpoint, p.state))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(DiscoverError::NoneReady(why));
    }
    Ok(ready)
}
