//! What the handlers share: the models (each engine once loaded, its load
//! progress), the API key, the body timeout and the HTTP counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::ApiError;
use super::models::{ModelSlot, ModelTable, Slot};
use crate::engine::{Engine, LoadProgress};

#[derive(Debug)]
struct Shared {
    /// The served models; the first is the one the single-model methods
    /// (`status`, `engine`, `set_ready`, …) speak of.
    models: ModelTable,
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
            .field("models", &self.shared.models)
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
        AppState::with_models(
            ModelTable::new(vec![ModelSlot::local(None, None)]),
            api_key,
            body_timeout,
        )
    }

    /// A server for `models` (at least one).
    pub(crate) fn with_models(
        models: ModelTable,
        api_key: Option<String>,
        body_timeout: Duration,
    ) -> AppState {
        AppState {
            shared: Arc::new(Shared {
                models,
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

    /// Records the first model's upload progress (for `/health`).
    pub fn set_progress(&self, p: LoadProgress) {
        self.shared.models.primary().set_progress(p);
    }

    /// The first model is loaded: serve it.
    pub fn set_ready(&self, engine: Engine) {
        self.shared.models.primary().set_slot(Slot::Ready(engine));
    }

    /// Loading the first model failed; its requests get 503 with `message`.
    pub fn set_failed(&self, message: String) {
        self.shared.models.primary().set_slot(Slot::Failed(message));
    }

    fn progress(&self) -> LoadProgress {
        self.shared.models.primary().progress()
    }

    /// The first model: loading, ready or failed.
    pub fn status(&self) -> Status {
        match self.shared.models.primary().slot() {
            Slot::Loading => Status::Loading(self.progress()),
            Slot::Ready(e) => Status::Ready(e),
            Slot::Failed(m) => Status::Failed(m),
        }
    }

    /// The first model's engine, or 503 while it is loading or after
    /// loading failed.
    pub fn engine(&self) -> Result<Engine, ApiError> {
        self.shared.models.primary().engine()
    }

    /// The served models.
    pub fn models(&self) -> &ModelTable {
        &self.shared.models
    }

    /// The local model `asked` names (none: the first) and its engine:
    /// 404 for a model not served, 503 while it loads.
    pub fn engine_for(&self, asked: Option<&str>) -> Result<(Engine, Arc<ModelSlot>), ApiError> {
        let m = self.shared.models.find(asked)?;
        Ok((m.engine()?, m.clone()))
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

    /// OpenMetrics text (through `prometheus-client`): the server's own
    /// counters, then the engine's.
    pub fn metrics_text(&self) -> String {
        use crate::engine::metrics::{counter, encode_registry, gauge};
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        let mut reg = prometheus_client::registry::Registry::default();
        let requests = self
            .shared
            .requests
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let by_route = Family::<Vec<(String, String)>, Counter>::default();
        for ((route, status), n) in &requests {
            by_route
                .get_or_create(&vec![
                    ("route".to_owned(), route.clone()),
                    ("status".to_owned(), status.to_string()),
                ])
                .inc_by(*n);
        }
        reg.register(
            "shardline_http_requests",
            "HTTP requests answered, by route and status",
            by_route,
        );
        gauge(
            &mut reg,
            "shardline_http_connections",
            "HTTP connections open now",
            self.shared.connections.load(Ordering::Relaxed) as i64,
        );
        counter(
            &mut reg,
            "shardline_http_connections_refused",
            "Connections turned away because --max-connections were open",
            self.shared.connections_refused.load(Ordering::Relaxed),
        );
        let status = self.status();
        let p = self.progress();
        let loaded = i64::from(matches!(status, Status::Ready(_)));
        gauge(
            &mut reg,
            "shardline_model_loaded",
            "Whether the model is loaded and being served",
            loaded,
        );
        let bytes = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut reg,
            "shardline_load_bytes_done",
            "Weight bytes uploaded so far",
            bytes(p.bytes_done),
        );
        gauge(
            &mut reg,
            "shardline_load_bytes_planned",
            "Weight bytes to upload",
            bytes(p.bytes_total),
        );
        gauge(
            &mut reg,
            "shardline_load_bytes_sent",
            "Weight bytes sent over the network while loading",
            bytes(p.bytes_sent),
        );
        gauge(
            &mut reg,
            "shardline_load_bytes_cached",
            "Weight bytes the servers' caches supplied while loading",
            bytes(p.bytes_cached),
        );
        if let Status::Ready(engine) = status {
            engine.metrics().register(&mut reg);
        }
        encode_registry(&reg)
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
