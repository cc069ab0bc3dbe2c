//! `shardline serve`: an OpenAI-compatible HTTP API over an [`Engine`](crate::engine::Engine).
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/chat/completions` | `chat.completion`, or `chat.completion.chunk` events ending `data: [DONE]` |
//! | `POST /v1/completions` | `text_completion` (whole or streamed) |
//! | `GET /v1/models`, `GET /v1/models/{id}` | the one model served |
//! | `GET /health` | 200 `{status:"ok",servers}`; 503 while loading (`{status:"loading",bytes_done,bytes_total}`) or when a server is lost |
//! | `GET /metrics` | Prometheus text: HTTP counters, then the engine's |
//! | `/api/chat`, `/api/generate`, `/api/tags`, `/api/show`, `/api/ps`, `/api/version` | Ollama's API ([`ollama`](self::ollama)) |
//!
//! Several models can be served at once ([`ServeOptions::models`]): each
//! request picks one by its `model` (none: the first); a model may be
//! forwarded to an upstream OpenAI-compatible server. `/health` and
//! `/metrics` speak of the first model.
//! | `GET /` | the cluster dashboard (see [`dashboard`]) |
//! | `GET /api/cluster` | the dashboard's JSON: servers, devices, each model's layer map and numbers |
//!
//! Errors come in OpenAI's shape, `{"error":{"message","type","param","code"}}`:
//! 400 malformed JSON or a field of the wrong type, 401 a missing or wrong
//! API key (`/v1/*` only), 404 an unknown model or path, 405 a wrong method,
//! 408 a body that does not arrive in time ([`HttpLimits::body_timeout`]),
//! 413 a body over 1 MiB, 429 the engine's queue is full, 503 loading, a
//! server lost, or a connection past [`HttpLimits::max_connections`].
//!
//! A connection whose request head does not arrive within
//! [`HttpLimits::header_timeout`] is closed without an answer.
//!
//! The listener is bound before the model loads, so `/health` can report
//! progress; a streamed answer owns its [`crate::engine::TokenStream`], so a
//! client that disconnects frees its sequence at once.

mod auth;
pub mod config;
pub mod dashboard;
mod error;
mod launch;
mod limits;
mod listen;
mod models;
mod ollama;
mod ollama_request;
mod request;
mod respond;
mod routes;
mod state;
mod stream;
mod upstream;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

pub use auth::{read_api_key_file, ApiKeyFileError};
pub use error::ApiError;
pub use launch::ModelsError;
pub use limits::{
    parse_duration, DurationError, HttpLimits, LimitsError, DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};
pub use models::{same_model, ModelSlot, ModelSpec, ModelTable, Placement, Source};
pub use ollama::OLLAMA_API_VERSION;
pub use state::{AppState, Status};
pub use upstream::{Upstream, UpstreamUrlError};

use crate::engine::{EngineError, EngineOptions};

/// Largest request body accepted (413 above).
pub const BODY_LIMIT: usize = 1 << 20;

/// How long in-flight answers may go on after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What `shardline serve` needs.
pub struct ServeOptions {
    /// The model and cluster, `parallel` and `queue` included (when
    /// `models` is empty).
    pub engine: EngineOptions,
    /// The models to serve, in order (the first answers requests that name
    /// none); empty: the one in `engine`.
    pub models: Vec<ModelSpec>,
    /// Address to listen on.
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed).
    pub port: u16,
    /// When set, `/v1/*` wants `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Timeouts and the connection cap.
    pub limits: HttpLimits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            engine: EngineOptions::default(),
            models: Vec::new(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            api_key: None,
            limits: HttpLimits::default(),
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("engine", &self.engine)
            .field("models", &self.models)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("limits", &self.limits)
            .finish()
    }
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("listening on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A timeout or the connection cap cannot work.
    #[error("HTTP limits")]
    Limits(#[from] LimitsError),
    /// Signal handlers could not be installed.
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    /// The model could not be loaded.
    #[error("loading the model")]
    Load(#[from] EngineError),
    /// The models cannot be served (a duplicate name, a bad upstream, no
    /// free server, a load that failed).
    #[error(transparent)]
    Models(#[from] ModelsError),
    /// A task of the server panicked or was cancelled.
    #[error("internal error: {0}")]
    Task(String),
}

/// The HTTP routes over `state` (for serving or for in-process tests).
pub fn router(state: AppState) -> Router {
    use axum::middleware::from_fn_with_state;
    let forward = || from_fn_with_state(state.clone(), upstream::forward);
    Router::new()
        .route("/v1/chat/completions", post(routes::chat).layer(forward()))
        .route(
            "/v1/completions",
            post(routes::completions).layer(forward()),
        )
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{model}", get(routes::model))
        .merge(ollama::routes())
        .route_layer(from_fn_with_state(state.clone(), auth::auth))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .merge(dashboard::routes())
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn_with_state(state.clone(), routes::count))
        .with_state(state)
}

/// Ends on the first SIGINT or SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, ServeError> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).map_err(ServeError::Signals)?,
            term: signal(SignalKind::terminate()).map_err(ServeError::Signals)?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Binds, serves, loads the model (`/health` says `loading` meanwhile), and
/// runs until SIGINT or SIGTERM. Prints `shardline serve listening:
/// http://ADDR` once bound and `shardline serve ready: http://ADDR
/// model=NAME` plus the plan once loaded.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let ServeOptions {
        engine: engine_opts,
        models,
        host,
        port,
        api_key,
        limits,
    } = opts;
    // Options that cannot work fail before the port is bound.
    limits.check()?;
    let specs = if models.is_empty() {
        vec![ModelSpec {
            name: engine_opts.served_name(),
            source: Source::Local {
                engine: Box::new(engine_opts),
                placement: Placement::Shard,
                ollama: None,
            },
        }]
    } else {
        models
    };
    for spec in &specs {
        if let Source::Local { engine, .. } = &spec.source {
            engine.check().map_err(|e| ServeError::Load(e.into()))?;
        }
    }
    let single = specs.len() == 1;
    let names: Vec<String> = specs.iter().map(|m| m.name.clone()).collect();
    let loading: Vec<String> = specs
        .iter()
        .filter_map(|m| match &m.source {
            Source::Local { engine, .. } => Some(engine.model.display().to_string()),
            Source::Upstream { .. } => None,
        })
        .collect();
    let (table, pending) = launch::table(specs)?;
    let mut signals = Signals::new()?;
    let addr = SocketAddr::new(host, port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;

    let state = AppState::with_models(table, api_key, limits.body_timeout);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = router(state.clone());
    let mut server = tokio::spawn(listen::run(listener, app, limits, state.clone(), stop_rx));
    print_line(&format!(
        "shardline serve listening: http://{local} (loading {})",
        loading.join(", ")
    ));

    let mut load = tokio::spawn(launch::load_all(pending));
    let engines = tokio::select! {
        r = &mut load => match r {
            Ok(Ok(engines)) => engines,
            Ok(Err(e)) => {
                let _ = stop_tx.send(true);
                // On timeout, end the listener rather than detach it.
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await;
                server.abort();
                return Err(match e {
                    // One model: the error it always had.
                    ModelsError::Load { source, .. } if single => ServeError::Load(*source),
                    e => ServeError::Models(e),
                });
            }
            Err(e) => return Err(ServeError::Task(format!("loading: {e}"))),
        },
        sig = signals.recv() => {
            tracing::info!(signal = sig, "stopping while loading");
            load.abort();
            let _ = stop_tx.send(true);
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await;
            server.abort();
            return Ok(());
        }
        r = &mut server => {
            load.abort();
            return Err(server_ended(r));
        }
    };
    if single && engines.len() == 1 {
        print_line(&format!(
            "shardline serve ready: http://{local} model={}\n{}",
            engines[0].model_name(),
            engines[0].plan()
        ));
    } else {
        let mut text = format!(
            "shardline serve ready: http://{local} models={}",
            names.join(",")
        );
        for m in state.models().all() {
            let name = m.name().unwrap_or_default();
            match (m.upstream_target(), m.engine()) {
                (Some(up), _) => text.push_str(&format!(
                    "\nmodel {name}: forwarded to {} as {}",
                    up.url(),
                    up.model()
                )),
                (None, Ok(e)) => text.push_str(&format!("\nmodel {name}:\n{}", e.plan())),
                (None, Err(_)) => {}
            }
        }
        print_line(&text);
    }
    drop(engines);

    tokio::select! {
        sig = signals.recv() => tracing::info!(signal = sig, "stopping"),
        r = &mut server => return Err(server_ended(r)),
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(r) => match r {
            Ok(()) => Ok(()),
            Err(e) => Err(ServeError::Task(format!("HTTP server: {e}"))),
        },
        Err(_) => {
            // Streams still open: end them (dropping their token streams
            // cancels their sequences).
            server.abort();
            Ok(())
        }
    }
}

fn server_ended(r: Result<(), tokio::task::JoinError>) -> ServeError {
    match r {
        Ok(()) => ServeError::Task("the HTTP server stopped".into()),
        Err(e) => ServeError::Task(format!("HTTP server: {e}")),
    }
}
