//! What the handlers share: the engine (once loaded), load progress, the API
//! key, the body timeout and the HTTP counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::error::ApiError;
use crate::engine::{Engine, LoadProgress};

/// Where the engine is.
#[derive(Debug, Clone)]
enum Slot {
    Loading,
    Ready(Engine),
    Failed(String),
}

#[derive(Debug)]
struct Shared {
    slot: RwLock<Slot>,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_cached: AtomicU64,
    api_key: Option<String>,
    body_timeout: Duration,
    next_id: AtomicU64,
    /// Requests answered, by (route, status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Connections being served now.
    connections: AtomicU64,
    /// Connections turned away because `--max-connections` were open.
    connections_refused: AtomicU64,
}

/// Handle to the server's shared state (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("slot", &self.shared.slot)
            .field("api_key", &self.shared.api_key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// What `/health` reports.
#[derive(Debug, Clone)]
pub enum Status {
    /// Uploading weights.
    Loading(LoadProgress),
    /// Serving.
    Ready(Engine),
    /// Loading failed.
    Failed(String),
}

impl AppState {
    /// A server whose model is still loading. With `api_key`, the `/v1`
    /// routes want `Authorization: Bearer <api_key>`; a request body that
    /// takes longer than `body_timeout` to arrive gets 408.
    pub fn new(api_key: Option<String>, body_timeout: Duration) -> AppState {
        AppState {
            shared: Arc::new(Shared {
                slot: RwLock::new(Slot::Loading),
                bytes_done: AtomicU64::new(0),
                bytes_total: AtomicU64::new(0),
                bytes_sent: AtomicU64::new(0),
                bytes_cached: AtomicU64::new(0),
                api_key: api_key.filter(|k| !k.is_empty()),
                body_timeout,
                next_id: AtomicU64::new(0),
                requests: Mutex::new(BTreeMap::new()),
                connections: AtomicU64::new(0),
                connections_refused: AtomicU64::new(0),
            }),
        }
    }

    /// A server for an engine already loaded.
    pub fn ready(engine: Engine, api_key: Option<String>, body_timeout: Duration) -> AppState {
        let s = AppState::new(api_key, body_timeout);
        s.set_ready(engine);
        s
    }

    /// Records upload progress (for `/health` while loading).
    pub fn set_progress(&self, p: LoadProgress) {
        self.shared
            .bytes_total
            .store(p.bytes_total, Ordering::Relaxed);
        self.shared
            .bytes_done
            .store(p.bytes_done, Ordering::Relaxed);
        self.shared
            .bytes_sent
            .store(p.bytes_sent, Ordering::Relaxed);
        self.shared
            .bytes_cached
            .store(p.bytes_cached, Ordering::Relaxed);
    }

    /// The model is loaded: serve it.
    pub fn set_ready(&self, engine: Engine) {
        if let Ok(mut s) = self.shared.slot.write() {
            *s = Slot::Ready(engine);
        }
    }

    /// Loading failed; requests get 503 with `message`.
    pub fn set_failed(&self, message: String) {
        if let Ok(mut s) = self.shared.slot.write() {
            *s = Slot::Failed(message);
        }
    }

    fn progress(&self) -> LoadProgress {
        LoadProgress {
            bytes_done: self.shared.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.shared.bytes_total.load(Ordering::Relaxed),
            bytes_sent: self.shared.bytes_sent.load(Ordering::Relaxed),
            bytes_cached: self.shared.bytes_cached.load(Ordering::Relaxed),
        }
    }

    /// Loading, ready or failed.
    pub fn status(&self) -> Status {
        let slot = self
            .shared
            .slot
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|_| Slot::Failed("internal error: state lock poisoned".into()));
        match slot {
            Slot::Loading => Status::Loading(self.progress()),
            Slot::Ready(e) => Status::Ready(e),
            Slot::Failed(m) => Status::Failed(m),
        }
    }

    /// The engine, or 503 while it is loading or after loading failed.
    pub fn engine(&self) -> Result<Engine, ApiError> {
        match self.status() {
            Status::Ready(e) => Ok(e),
            Status::Loading(p) => Err(ApiError::loading(p.bytes_done, p.bytes_total)),
            Status::Failed(m) => Err(ApiError::unavailable(format!(
                "The model failed to load: {m}"
            ))),
        }
    }

    pub(crate) fn api_key(&self) -> Option<&str> {
        self.shared.api_key.as_deref()
    }

    pub(crate) fn body_timeout(&self) -> Duration {
        self.shared.body_timeout
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub(crate) fn connection_opened(&self) -> ConnectionGuard {
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            shared: self.shared.clone(),
        }
    }

    pub(crate) fn connection_refused(&self) {
        self.shared
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A fresh response id: `{prefix}-` plus time and a counter in hex.
    pub(crate) fn next_id(&self, prefix: &str) -> String {
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        format!("{prefix}-{t:x}{n:04x}")
    }

    pub(crate) fn count_request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.shared.requests.lock() {
            *m.entry((route.to_owned(), status)).or_insert(0) += 1;
        }
    }

    /// Prometheus text: the server's own counters, then the engine's.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let requests = self
            .shared
            .requests
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP shardline_http_requests_total HTTP requests answered, by route and status.\n# TYPE shardline_http_requests_total counter"
        );
        for ((route, status), n) in &requests {
            let route = route.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "shardline_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP shardline_http_connections HTTP connections open now.\n# TYPE shardline_http_connections gauge\nshardline_http_connections {}",
            self.shared.connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP shardline_http_connections_refused_total Connections turned away because --max-connections were open.\n# TYPE shardline_http_connections_refused_total counter\nshardline_http_connections_refused_total {}",
            self.shared.connections_refused.load(Ordering::Relaxed)
        );
        let status = self.status();
        let (loaded, p) = match &status {
            Status::Ready(_) => (1, self.progress()),
            _ => (0, self.progress()),
        };
        let _ = writeln!(
            out,
            "# HELP shardline_model_loaded Whether the model is loaded and being served.\n# TYPE shardline_model_loaded gauge\nshardline_model_loaded {loaded}"
        );
        let _ = writeln!(
            out,
            "# HELP shardline_load_bytes_done Weight bytes uploaded so far.\n# TYPE shardline_load_bytes_done gauge\nshardline_load_bytes_done {}",
            p.bytes_done
        );
        let _ = writeln!(
            out,
            "# HELP shardline_load_bytes_total Weight bytes to upload.\n# TYPE shardline_load_bytes_total gauge\nshardline_load_bytes_total {}",
            p.bytes_total
        );
        let _ = writeln!(
            out,
            "# HELP shardline_load_bytes_sent Weight bytes sent over the network while loading.\n# TYPE shardline_load_bytes_sent gauge\nshardline_load_bytes_sent {}",
            p.bytes_sent
        );
        let _ = writeln!(
            out,
            "# HELP shardline_load_bytes_cached Weight bytes the servers' caches supplied while loading.\n# TYPE shardline_load_bytes_cached gauge\nshardline_load_bytes_cached {}",
            p.bytes_cached
        );
        if let Status::Ready(engine) = status {
            out.push_str(&engine.metrics_text());
        }
        out
    }
}

/// One open connection in `/metrics`, for as long as it lives.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    shared: Arc<Shared>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
