//! The handlers and the middleware around them.

use crate::engine::Status as EngineStatus;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest as _, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::request::{parse_object, ChatRequest, Common, CompletionRequest};
use super::respond::{self, Kind, Meta, ToolSpec};
use super::state::{AppState, Status};
use super::BODY_LIMIT;
use crate::chat::tools::{self, ToolChoice, ToolFormat};
use crate::constrain::{Constraint, Grammar};
use crate::engine::{Engine, GenerateRequest, OutputOptions, Prompt, SubmitError};

/// `max_tokens` of a text completion that gives none (OpenAI's default).
const COMPLETION_DEFAULT_MAX_TOKENS: usize = 16;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads the body (size limit, time limit) as a JSON object.
pub(crate) async fn read_json(
    state: &AppState,
    req: Request,
) -> Result<Map<String, Value>, ApiError> {
    parse_object(&read_body(state, req).await?)
}

/// Reads the body, refusing one over [`BODY_LIMIT`] or slower than the
/// body timeout.
pub(crate) async fn read_body(state: &AppState, req: Request) -> Result<Bytes, ApiError> {
    // A declared length over the limit is refused before reading anything.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(ApiError::too_large(BODY_LIMIT));
    }
    let body = tokio::time::timeout(state.body_timeout(), Bytes::from_request(req, &()))
        .await
        .map_err(|_| ApiError::body_timeout())?
        .map_err(body_error)?;
    Ok(body)
}

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(BODY_LIMIT)
    } else {
        ApiError::malformed(format!(
            "Could not read the request body: {}",
            e.body_text()
        ))
    }
}

/// Runs `f` off the async threads (tokenizing a prompt as large as the body
/// limit takes a while).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::unavailable(format!("internal error: {e}"))))
}

/// What a request adds to its tokens: constraints (one per choice), tools
/// to read calls back, the prompt to echo.
#[derive(Default)]
struct Extras {
    constraints: Vec<Constraint>,
    tools: Option<ToolSpec>,
    echo: Option<String>,
}

/// Compiles `grammar` once per choice; a grammar that does not compile is a
/// 400 naming `param`.
fn compile(
    engine: &Engine,
    grammar: Option<Grammar>,
    n: usize,
    param: &str,
) -> Result<Vec<Constraint>, ApiError> {
    let Some(g) = grammar else {
        return Ok(Vec::new());
    };
    let vocab = engine
        .vocab()
        .map_err(|e| ApiError::bad_request(Some(param), Some("invalid_value"), e.to_string()))?;
    (0..n)
        .map(|_| {
            vocab.compile(&g).map_err(|e| {
                ApiError::bad_request(
                    Some(param),
                    Some("invalid_value"),
                    format!("The schema cannot be used: {e}"),
                )
            })
        })
        .collect()
}

/// Submits the tokens once per choice and answers, whole or streamed.
/// `room` is the `max_tokens` used when the request gives none.
async fn submit(
    state: &AppState,
    engine: &Engine,
    kind: Kind,
    tokens: Vec<u32>,
    common: Common,
    room: usize,
    extras: Extras,
) -> Result<Response, ApiError> {
    let max_tokens = common.max_tokens.unwrap_or(room.max(1));
    let ctx = engine.ctx_per_seq();
    if tokens.len().saturating_add(max_tokens) > ctx {
        return Err(SubmitError::TooLong {
            prompt: tokens.len(),
            max: max_tokens,
            ctx,
        }
        .into());
    }
    let mut constraints = extras.constraints.into_iter();
    let mut reqs = Vec::with_capacity(common.n);
    for i in 0..common.n {
        let mut sampler = common.sampler.clone();
        // Each choice its own draws, all reproducible from the seed.
        sampler.seed = sampler.seed.wrapping_add(i as u64);
        let req = GenerateRequest {
            prompt: Prompt::Tokens(tokens.clone()),
            max_tokens,
            sampler,
            stop: common.stop.clone(),
            stop_at_eog: true,
        };
        let out = OutputOptions {
            constraint: constraints.next(),
            logprobs: common.logprobs,
        };
        reqs.push((req, out));
    }
    // The choices share one reading of the prompt.
    let streams = engine.generate_many(reqs)?;
    let meta = Meta {
        kind,
        id: state.next_id(match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        }),
        created: unix_now(),
        model: engine.model_name().to_owned(),
        include_usage: common.include_usage,
        tools: extras.tools,
        logprobs: common.logprobs,
        echo: extras.echo,
        engine: engine.clone(),
    };
    if common.stream {
        Ok(super::stream::streamed(meta, streams))
    } else {
        respond::whole(meta, streams).await
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let body = read_json(&state, req).await?;
    let mut r = ChatRequest::parse(&body)?;
    let (engine, served) = state.engine_for(r.common.model.as_deref())?;
    served.apply_defaults(Some(&mut r.messages), &mut r.common.stop);
    let e = engine.clone();
    let messages = r.messages;
    let (tool_list, choice) = (r.tools, r.tool_choice);
    let response_format = r.common.response_format.take();
    let n = r.common.n;
    let (tokens, extras) = blocking(move || {
        let template_error = |err: crate::chat::ChatError| {
            ApiError::bad_request(
                Some("messages"),
                Some("invalid_value"),
                format!("The messages do not fit the model's chat template: {err}"),
            )
        };
        let tmpl = e
            .chat_template()
            .ok_or_else(|| template_error(crate::chat::ChatError::NoTemplate))?;
        let format = ToolFormat::for_template(tmpl.source());
        let knows = tmpl.knows_tools();
        let shown = tools::prepare(&messages, &tool_list, &choice, &format, knows);
        let tools_var = (knows && !tool_list.is_empty() && choice != ToolChoice::None)
            .then(|| tools::openai_tools(&tool_list));
        let text = tmpl
            .render_with_tools(&shown, tools_var.as_ref(), true)
            .map_err(template_error)?;
        let tokens = e.tokenizer().encode(&text, true, true);
        let constraints = match response_format {
            Some(g) => compile(&e, Some(g), n, "response_format")?,
            None => compile(&e, tools::grammar(&tool_list, &choice, &format), n, "tools")?,
        };
        let spec = ToolSpec {
            tools: tool_list,
            format,
            choice,
        };
        Ok((
            tokens,
            Extras {
                constraints,
                tools: spec.active().then_some(spec),
                echo: None,
            },
        ))
    })
    .await?;
    // Without max_tokens, a chat answer may use the rest of the context.
    let room = engine.ctx_per_seq().saturating_sub(tokens.len());
    submit(&state, &engine, Kind::Chat, tokens, r.common, room, extras).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let body = read_json(&state, req).await?;
    let mut r = CompletionRequest::parse(&body)?;
    let (engine, served) = state.engine_for(r.common.model.as_deref())?;
    served.apply_defaults(None, &mut r.common.stop);
    let echo = r.echo;
    let response_format = r.common.response_format.take();
    let n = r.common.n;
    let e = engine.clone();
    let (tokens, extras) = blocking(move || {
        let (tokens, text) = match r.prompt {
            Prompt::Tokens(t) => {
                let text = echo.then(|| e.tokenizer().decode(&t, false));
                (t, text)
            }
            Prompt::Text(text) => (
                e.tokenizer().encode(&text, true, true),
                echo.then_some(text),
            ),
        };
        let constraints = compile(&e, response_format, n, "response_format")?;
        Ok((
            tokens,
            Extras {
                constraints,
                tools: None,
                echo: text,
            },
        ))
    })
    .await?;
    submit(
        &state,
        &engine,
        Kind::Completion,
        tokens,
        r.common,
        COMPLETION_DEFAULT_MAX_TOKENS,
        extras,
    )
    .await
}

fn model_object(name: &str, upstream: bool) -> Value {
    json!({
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": if upstream { "upstream" } else { "shardline" },
    })
}

/// `GET /v1/models`: the models that can answer now (loaded, or
/// forwarded); 503 while none can.
pub async fn models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let data: Vec<Value> = state
        .models()
        .all()
        .iter()
        .filter(|m| m.available())
        .filter_map(|m| Some(model_object(&m.name()?, m.upstream_target().is_some())))
        .collect();
    if data.is_empty() {
        state.engine()?;
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/models/{model}`.
pub async fn model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = state.models().find(Some(&name))?;
    if m.upstream_target().is_none() {
        m.engine()?;
    }
    let served = m.name().unwrap_or(name);
    Ok(Json(model_object(&served, m.upstream_target().is_some())))
}

/// `GET /health`: 503 while loading (with progress) or when a server is
/// lost, 200 when serving.
pub async fn health(State(state): State<AppState>) -> Response {
    match state.status() {
        Status::Loading(p) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "loading",
                "bytes_done": p.bytes_done,
                "bytes_total": p.bytes_total,
                "bytes_sent": p.bytes_sent,
                "bytes_cached": p.bytes_cached,
            })),
        )
            .into_response(),
        Status::Failed(m) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "error": m})),
        )
            .into_response(),
        Status::Ready(engine) => {
            let h = engine.health();
            let (code, status) = match h.status {
                EngineStatus::Ok => (StatusCode::OK, "ok"),
                EngineStatus::Degraded => (StatusCode::OK, "degraded"),
                EngineStatus::Recovering => (StatusCode::SERVICE_UNAVAILABLE, "recovering"),
                EngineStatus::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            (
                code,
                Json(json!({
                    "status": status,
                    "model": engine.model_name(),
                    "servers": h.servers,
                    "recovery": h.recovery,
                    "error": h.error,
                })),
            )
                .into_response()
        }
    }
}

/// `GET /metrics`: OpenMetrics text (Prometheus scrapes it).
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics_text(),
    )
        .into_response()
}

/// Unknown path: 404 in the error shape.
pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(method.as_str(), uri.path())
}

/// Known path, wrong method: 405 in the error shape.
pub async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

/// Counts answers by route and status for `/metrics`.
pub async fn count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    state.count_request(&route, resp.status().as_u16());
    resp
}
