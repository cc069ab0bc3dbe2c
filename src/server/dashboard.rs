//! The cluster dashboard: one page at `/` (HTML, JS and CSS built into the
//! binary, no build step) that polls `GET /api/cluster` every second.
//!
//! `/api/cluster` is [`crate::engine::status::snapshot`] as JSON: servers
//! and devices with memory, each model's layer map, load progress, speed,
//! queue, per-stage numbers, health and recent events. Like `/health` and
//! `/metrics`, neither needs the API key.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::error::ApiError;
use super::models::Slot;
use super::state::AppState;
use crate::engine::status::{snapshot, ClusterStatus, ModelState};

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// Name shown for the model while it loads (the engine names it once
/// loaded).
const LOADING_NAME: &str = "(loading)";

/// `/`, `/dashboard/{file}` and `/api/cluster`.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/{file}", get(asset))
        .route("/api/cluster", get(cluster))
}

fn text(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the page.
async fn index() -> Response {
    text("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/app.js` and `/dashboard/style.css`.
async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => text("text/javascript; charset=utf-8", APP_JS),
        "style.css" => text("text/css; charset=utf-8", STYLE),
        other => ApiError::no_route("GET", &format!("/dashboard/{other}")).into_response(),
    }
}

/// The snapshot of what `state` serves: every local model (loading, ready
/// or failed) and the servers they use. Models forwarded upstream have no
/// cluster here and are left out.
pub fn cluster_status(state: &AppState) -> ClusterStatus {
    enum Owned {
        Loading(crate::engine::LoadProgress),
        Ready(crate::engine::Engine),
        Failed(String),
    }
    let models: Vec<(String, Owned)> = state
        .models()
        .all()
        .iter()
        .filter(|m| m.upstream_target().is_none())
        .map(|m| {
            let name = m.name().unwrap_or_else(|| LOADING_NAME.to_string());
            let st = match m.slot() {
                Slot::Loading => Owned::Loading(m.progress()),
                Slot::Ready(e) => Owned::Ready(e),
                Slot::Failed(why) => Owned::Failed(why),
            };
            (name, st)
        })
        .collect();
    let list: Vec<(&str, ModelState<'_>)> = models
        .iter()
        .map(|(n, st)| {
            let s = match st {
                Owned::Loading(p) => ModelState::Loading(*p),
                Owned::Ready(e) => ModelState::Ready(e),
                Owned::Failed(why) => ModelState::Failed(why),
            };
            (n.as_str(), s)
        })
        .collect();
    snapshot(&list)
}

/// `GET /api/cluster`.
async fn cluster(State(state): State<AppState>) -> Response {
    let status = cluster_status(&state);
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(status),
    )
        .into_response()
}
