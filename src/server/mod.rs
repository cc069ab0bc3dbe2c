//! `shardline serve`: an OpenAI-compatible HTTP API over an [`Engine`].
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/chat/completions` | `chat.completion`, or `chat.completion.chunk` events ending `data: [DONE]` |
//! | `POST /v1/completions` | `text_completion` (whole or streamed) |
//! | `GET /v1/models`, `GET /v1/models/{id}` | the one model served |
//! | `GET /health` | 200 `{status:"ok",servers}`; 503 while loading (`{status:"loading",bytes_done,bytes_total}`) or when a server is lost |
//! | `GET /metrics` | Prometheus text: HTTP counters, then the engine's |
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
mod error;
mod limits;
mod listen;
mod request;
mod respond;
mod routes;
mod state;
mod stream;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

pub use auth::{read_api_key_file, ApiKeyFileError};
pub use error::ApiError;
pub use limits::{
    parse_duration, DurationError, HttpLimits, LimitsError, DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};
pub use state::{AppState, Status};

use crate::engine::{Engine, EngineError, EngineOptions};

/// Largest request body accepted (413 above).
pub const BODY_LIMIT: usize = 1 << 20;

/// How long in-flight answers may go on after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What `shardline serve` needs.
pub struct ServeOptions {
    /// The model and cluster, `parallel` and `queue` included.
    pub engine: EngineOptions,
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
    /// A task of the server panicked or was cancelled.
    #[error("internal error: {0}")]
    Task(String),
}

/// The HTTP routes over `state` (for serving or for in-process tests).
pub fn router(state: AppState) -> Router {
    use axum::middleware::from_fn_with_state;
    Router::new()
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/models", get(routes::models))
        .route("/v1/models/{model}", get(routes::model))
        .route_layer(from_fn_with_state(state.clone(), auth::auth))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
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
        engine: mut engine_opts,
        host,
        port,
        api_key,
        limits,
    } = opts;
    // Options that cannot work fail before the port is bound.
    limits.check()?;
    engine_opts
        .check()
        .map_err(|e| ServeError::Load(e.into()))?;
    let mut signals = Signals::new()?;
    let addr = SocketAddr::new(host, port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;

    let state = AppState::new(api_key, limits.body_timeout);
    let progress_state = state.clone();
    let chained = engine_opts.on_progress.take();
    engine_opts.on_progress = Some(Arc::new(move |p| {
        progress_state.set_progress(p);
        if let Some(f) = &chained {
            f(p);
        }
    }));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = router(state.clone());
    let mut server = tokio::spawn(listen::run(listener, app, limits, state.clone(), stop_rx));
    print_line(&format!(
        "shardline serve listening: http://{local} (loading {})",
        engine_opts.model.display()
    ));

    let mut load = tokio::spawn(Engine::load(engine_opts));
    let engine = tokio::select! {
        r = &mut load => match r {
            Ok(Ok(engine)) => engine,
            Ok(Err(e)) => {
                state.set_failed(e.to_string());
                let _ = stop_tx.send(true);
                // On timeout, end the listener rather than detach it.
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await;
                server.abort();
                return Err(ServeError::Load(e));
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
    state.set_ready(engine.clone());
    print_line(&format!(
        "shardline serve ready: http://{local} model={}\n{}",
        engine.model_name(),
        engine.plan()
    ));
    drop(engine);

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
