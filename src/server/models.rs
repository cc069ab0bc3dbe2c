//! The models one `serve` offers: each loaded on its own servers, or
//! forwarded to an upstream OpenAI-compatible server. Requests pick one by
//! their `model` field.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::http::StatusCode;

use super::error::ApiError;
use super::upstream::Upstream;
use crate::chat::ChatMessage;
use crate::engine::{Engine, EngineOptions, LoadProgress};
use crate::ollama::{ModelName, OllamaModel};

/// How a local model's servers are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Whole on one free server when it fits there (no network hop per
    /// token), else sharded over every free server it may use.
    #[default]
    Auto,
    /// Sharded over every free server it may use.
    Shard,
}

/// One model to serve.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The id requests name it by.
    pub name: String,
    /// Where it runs.
    pub source: Source,
}

/// Where a model runs.
#[derive(Debug, Clone)]
pub enum Source {
    /// Loaded here. `engine.servers` are the servers it may use (empty:
    /// those of [`super::ServeOptions::engine`], or local workers).
    Local {
        /// The model file and cluster settings.
        engine: Box<EngineOptions>,
        /// How its servers are chosen.
        placement: Placement,
        /// What the Ollama store says of it, when it came from there.
        ollama: Option<Box<OllamaModel>>,
    },
    /// Forwarded: requests for it go to `url` with `model` set to `model`.
    Upstream {
        /// The upstream server.
        url: String,
        /// Its name for the model.
        model: String,
    },
}

/// Where a local model's engine is.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Loading,
    Ready(Engine),
    Failed(String),
}

/// One served model at run time.
#[derive(Debug)]
pub struct ModelSlot {
    /// Fixed at start, or (for [`super::AppState::new`]) the engine's own
    /// once loaded.
    name: Option<String>,
    slot: RwLock<Slot>,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_cached: AtomicU64,
    ollama: Option<Box<OllamaModel>>,
    upstream: Option<Upstream>,
}

impl ModelSlot {
    pub(crate) fn local(name: Option<String>, ollama: Option<Box<OllamaModel>>) -> ModelSlot {
        ModelSlot {
            name,
            slot: RwLock::new(Slot::Loading),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_cached: AtomicU64::new(0),
            ollama,
            upstream: None,
        }
    }

    pub(crate) fn upstream(name: String, upstream: Upstream) -> ModelSlot {
        let mut m = ModelSlot::local(Some(name), None);
        m.upstream = Some(upstream);
        m
    }

    /// The id requests use, once known.
    pub fn name(&self) -> Option<String> {
        self.name.clone().or_else(|| match self.slot() {
            Slot::Ready(e) => Some(e.model_name().to_owned()),
            _ => None,
        })
    }

    /// The Ollama model it came from.
    pub fn ollama(&self) -> Option<&OllamaModel> {
        self.ollama.as_deref()
    }

    /// The upstream it is forwarded to.
    pub fn upstream_target(&self) -> Option<&Upstream> {
        self.upstream.as_ref()
    }

    pub(crate) fn slot(&self) -> Slot {
        self.slot
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|_| Slot::Failed("internal error: state lock poisoned".into()))
    }

    pub(crate) fn set_slot(&self, s: Slot) {
        if let Ok(mut w) = self.slot.write() {
            *w = s;
        }
    }

    pub(crate) fn set_progress(&self, p: LoadProgress) {
        self.bytes_total.store(p.bytes_total, Ordering::Relaxed);
        self.bytes_done.store(p.bytes_done, Ordering::Relaxed);
        self.bytes_sent.store(p.bytes_sent, Ordering::Relaxed);
        self.bytes_cached.store(p.bytes_cached, Ordering::Relaxed);
    }

    pub(crate) fn progress(&self) -> LoadProgress {
        LoadProgress {
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_cached: self.bytes_cached.load(Ordering::Relaxed),
        }
    }

    /// The engine, or 503 while it loads or after loading failed.
    pub fn engine(&self) -> Result<Engine, ApiError> {
        if let Some(u) = &self.upstream {
            return Err(ApiError::bad_request(
                Some("model"),
                Some("model_forwarded"),
                format!(
                    "The model '{}' is forwarded to {}, which this endpoint does not reach; use /v1/chat/completions or /v1/completions.",
                    self.name.as_deref().unwrap_or_default(),
                    u.url()
                ),
            ));
        }
        match self.slot() {
            Slot::Ready(e) => Ok(e),
            Slot::Loading => {
                let p = self.progress();
                Err(ApiError::loading(p.bytes_done, p.bytes_total))
            }
            Slot::Failed(m) => Err(ApiError::unavailable(format!(
                "The model failed to load: {m}"
            ))),
        }
    }

    /// Whether requests can be answered now (loaded, or forwarded).
    pub fn available(&self) -> bool {
        self.upstream.is_some() || matches!(self.slot(), Slot::Ready(_))
    }

    /// The Ollama model's defaults applied to a request: its system prompt
    /// when the conversation has none, and its `stop` parameters.
    pub fn apply_defaults(&self, messages: Option<&mut Vec<ChatMessage>>, stop: &mut Vec<String>) {
        let Some(m) = &self.ollama else { return };
        if let (Some(system), Some(messages)) = (&m.system, messages) {
            if !messages.iter().any(|x| x.role == "system") {
                messages.insert(0, ChatMessage::new("system", system.clone()));
            }
        }
        for s in &m.params.stop {
            if !stop.contains(s) {
                stop.push(s.clone());
            }
        }
    }
}

/// Whether `asked` names the model served as `served`: the same text, or
/// the same Ollama name once defaults are filled in (`smollm2` is
/// `smollm2:latest`, `library/x:t` is `x:t`).
pub fn same_model(asked: &str, served: &str) -> bool {
    if asked == served {
        return true;
    }
    match (ModelName::parse(asked), ModelName::parse(served)) {
        (Ok(a), Ok(s)) => a == s,
        _ => false,
    }
}

/// The served models, in the order given; the first answers requests that
/// name none.
#[derive(Debug, Clone)]
pub struct ModelTable(Arc<Vec<Arc<ModelSlot>>>);

impl ModelTable {
    pub(crate) fn new(models: Vec<ModelSlot>) -> ModelTable {
        ModelTable(Arc::new(models.into_iter().map(Arc::new).collect()))
    }

    /// Every model.
    pub fn all(&self) -> &[Arc<ModelSlot>] {
        &self.0
    }

    /// The first model.
    pub fn primary(&self) -> &Arc<ModelSlot> {
        // Never empty: built from at least one model.
        &self.0[0]
    }

    /// The model `asked` names (none: the first), or 404 naming those served.
    pub fn find(&self, asked: Option<&str>) -> Result<&Arc<ModelSlot>, ApiError> {
        let Some(asked) = asked else {
            return Ok(self.primary());
        };
        // A single model still loading has no name yet when the state was
        // made without one: it answers 503 (loading) rather than 404.
        if self.0.len() == 1 && self.primary().name().is_none() {
            return Ok(self.primary());
        }
        self.0
            .iter()
            .find(|m| m.name().is_some_and(|n| same_model(asked, &n)))
            .ok_or_else(|| self.unknown(asked))
    }

    /// 404: `asked` is not served; the message names what is.
    pub fn unknown(&self, asked: &str) -> ApiError {
        let served: Vec<String> = self
            .0
            .iter()
            .filter_map(|m| m.name())
            .map(|n| format!("'{n}'"))
            .collect();
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!(
                "The model '{asked}' does not exist; this server serves {}.",
                served.join(", ")
            ),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// Whether any model is forwarded upstream.
    pub fn has_upstream(&self) -> bool {
        self.0.iter().any(|m| m.upstream.is_some())
    }
}
