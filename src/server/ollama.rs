//! Ollama's own API beside OpenAI's, so Ollama clients (the `ollama`
//! packages, Open WebUI) can use `shardline serve`:
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/chat` | NDJSON lines `{model, created_at, message, done:false}`, then one with `done:true`, `done_reason` and the counts and durations; one object with `"stream": false` |
//! | `POST /api/generate` | the same with `response` for `message`, and `context` (the tokens) at the end |
//! | `GET /api/tags` | the models served (`models: [{name, model, size, digest, details}]`) |
//! | `POST /api/show` | a model's template, parameters, details and metadata (`model_info`) |
//! | `GET /api/ps` | the loaded models |
//! | `GET /api/version` | `{version}` |
//!
//! Field names and shapes follow Ollama's API documentation; errors are
//! Ollama's `{"error": "..."}` with its status codes (400 a bad body, 404 an
//! unknown model). Durations are nanoseconds, as Ollama's are.

use std::convert::Infallible;
use std::time::{Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::models::ModelSlot;
use super::ollama_request::{parse_body, ChatRequest, GenerateRequest, OllamaError, Predict};
use super::routes::read_body;
use super::state::AppState;
use super::upstream::UpstreamStream;
use crate::engine::{Engine, Event, Finish, Prompt, TokenStream, Usage};

/// The Ollama release whose API these routes follow (clients check it).
pub const OLLAMA_API_VERSION: &str = "0.6.0";

/// The Ollama routes (`/api/...`).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/ps", get(ps))
        .route("/api/version", get(version))
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> OllamaError {
        OllamaError {
            status: e.status.as_u16(),
            message: e.message,
        }
    }
}

/// Ollama's 404 for a model it does not have.
fn not_found(name: &str, state: &AppState) -> OllamaError {
    let served: Vec<String> = state
        .models()
        .all()
        .iter()
        .filter_map(|m| m.name())
        .collect();
    OllamaError {
        status: 404,
        message: format!(
            "model '{name}' not found; this server serves: {}",
            served.join(", ")
        ),
    }
}

async fn body_of(state: &AppState, req: Request) -> Result<Map<String, Value>, OllamaError> {
    parse_body(&read_body(state, req).await?)
}

fn find<'a>(
    state: &'a AppState,
    body: &Map<String, Value>,
    key: &str,
) -> Result<&'a std::sync::Arc<ModelSlot>, OllamaError> {
    let name = body
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OllamaError::bad("model is required"))?;
    state
        .models()
        .find(Some(name))
        .map_err(|_| not_found(name, state))
}

fn seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ N.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// `created_at`: RFC 3339 in UTC with nanoseconds, as Ollama writes it.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Where the text of an answer comes from.
enum Source {
    Engine(TokenStream),
    Upstream(UpstreamStream),
}

impl Source {
    async fn next(&mut self) -> Option<Event> {
        match self {
            Source::Engine(t) => t.next().await,
            Source::Upstream(u) => u.next().await,
        }
    }
}

/// One answer under way.
struct Answer {
    chat: bool,
    model: String,
    start: Instant,
    /// `/api/generate`: the prompt's tokens, for `context`.
    prompt_ids: Option<Vec<u32>>,
    source: Source,
}

impl Answer {
    fn piece(&self, text: &str) -> Value {
        let mut v = json!({"model": self.model, "created_at": rfc3339(SystemTime::now())});
        if self.chat {
            v["message"] = json!({"role": "assistant", "content": text});
        } else {
            v["response"] = json!(text);
        }
        v["done"] = json!(false);
        v
    }

    fn last(&self, text: &str, u: &Usage) -> Value {
        let ns = |s: f64| (s * 1e9) as u64;
        let mut v = self.piece(text);
        v["done"] = json!(true);
        v["done_reason"] = json!(match u.finish {
            Finish::Stop => "stop",
            Finish::Length => "length",
        });
        v["total_duration"] = json!(self.start.elapsed().as_nanos() as u64);
        v["load_duration"] = json!(0);
        v["prompt_eval_count"] = json!(u.prompt_tokens);
        v["prompt_eval_duration"] = json!(ns(u.prompt_s));
        v["eval_count"] = json!(u.completion_tokens);
        v["eval_duration"] = json!(ns(u.gen_s));
        if let (Some(p), Source::Engine(t)) = (&self.prompt_ids, &self.source) {
            let mut ctx = p.clone();
            ctx.extend(t.token_ids());
            v["context"] = json!(ctx);
        }
        v
    }

    async fn whole(mut self) -> Response {
        let mut text = String::new();
        while let Some(ev) = self.source.next().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Done(u) => return Json(self.last(&text, &u)).into_response(),
                Event::Error(e) => {
                    return OllamaError {
                        status: 500,
                        message: format!("generation failed: {e}"),
                    }
                    .into_response()
                }
            }
        }
        OllamaError {
            status: 500,
            message: "generation failed: the engine stopped".into(),
        }
        .into_response()
    }

    /// NDJSON: one object a line as the text comes. The body owns the
    /// source: a client that goes away cancels the generation.
    fn streamed(self) -> Response {
        let lines = stream::unfold(Some(self), |st| async move {
            let mut a = st?;
            let line = |v: Value| Ok::<_, Infallible>(Bytes::from(format!("{v}\n")));
            match a.source.next().await {
                Some(Event::Text(t)) => {
                    let v = a.piece(&t);
                    Some((line(v), Some(a)))
                }
                Some(Event::Done(u)) => Some((line(a.last("", &u)), None)),
                Some(Event::Error(e)) => Some((
                    line(json!({"error": format!("generation failed: {e}")})),
                    None,
                )),
                None => Some((
                    line(json!({"error": "generation failed: the engine stopped"})),
                    None,
                )),
            }
        });
        (
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from_stream(lines),
        )
            .into_response()
    }
}

async fn finish(a: Answer, stream: bool) -> Response {
    if stream {
        a.streamed()
    } else {
        a.whole().await
    }
}

/// Ollama's answer to a request with nothing to generate: it loads the
/// model and says so.
fn loaded(model: &str, chat: bool) -> Response {
    let mut v = json!({"model": model, "created_at": rfc3339(SystemTime::now())});
    if chat {
        v["message"] = json!({"role": "assistant", "content": ""});
    } else {
        v["response"] = json!("");
    }
    v["done"] = json!(true);
    v["done_reason"] = json!("load");
    Json(v).into_response()
}

/// The most tokens to ask for, given the prompt's length.
fn max_tokens(engine: &Engine, prompt: usize, predict: Predict) -> Result<usize, OllamaError> {
    let ctx = engine.ctx_per_seq();
    let room = ctx.saturating_sub(prompt);
    let max = match predict {
        Predict::Unlimited => room,
        Predict::Most(n) => n,
    };
    if room == 0 || max > room {
        return Err(OllamaError::bad(format!(
            "the prompt ({prompt} tokens) plus num_predict ({max}) exceed the context of {ctx} tokens per sequence"
        )));
    }
    Ok(max.max(1))
}

fn submit(
    engine: &Engine,
    tokens: Vec<u32>,
    c: super::ollama_request::Common,
) -> Result<TokenStream, OllamaError> {
    let max = max_tokens(engine, tokens.len(), c.predict)?;
    engine
        .generate(crate::engine::GenerateRequest {
            prompt: Prompt::Tokens(tokens),
            max_tokens: max,
            sampler: c.sampler,
            stop: c.stop,
            stop_at_eog: true,
        })
        .map_err(|e| OllamaError::from(ApiError::from(e)))
}

/// The OpenAI body asking an upstream for the same thing.
fn upstream_body(c: &super::ollama_request::Common) -> Map<String, Value> {
    let mut b = Map::new();
    b.insert("temperature".into(), json!(c.sampler.temperature));
    b.insert("top_p".into(), json!(c.sampler.top_p));
    b.insert("seed".into(), json!(c.sampler.seed as i64));
    if let Predict::Most(n) = c.predict {
        b.insert("max_tokens".into(), json!(n));
    }
    if !c.stop.is_empty() {
        b.insert("stop".into(), json!(c.stop));
    }
    b
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OllamaError> + Send + 'static,
) -> Result<T, OllamaError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(OllamaError {
            status: 500,
            message: format!("internal error: {e}"),
        })
    })
}

/// `POST /api/chat`.
async fn chat(State(state): State<AppState>, req: Request) -> Response {
    chat_inner(state, req)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn chat_inner(state: AppState, req: Request) -> Result<Response, OllamaError> {
    let start = Instant::now();
    let body = body_of(&state, req).await?;
    let slot = find(&state, &body, "model")?.clone();
    let params = slot.ollama().map(|m| m.params.clone()).unwrap_or_default();
    let mut r = ChatRequest::parse(&body, &params, seed())?;
    let model = slot.name().unwrap_or(r.common.model.clone());
    if r.messages.is_empty() {
        return Ok(loaded(&model, true));
    }
    let source = if let Some(up) = slot.upstream_target() {
        let mut b = upstream_body(&r.common);
        let msgs: Vec<Value> = r
            .messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        b.insert("messages".into(), Value::Array(msgs));
        Source::Upstream(up.stream(b).await?)
    } else {
        let engine = slot.engine()?;
        slot.apply_defaults(Some(&mut r.messages), &mut r.common.stop);
        let e = engine.clone();
        let messages = std::mem::take(&mut r.messages);
        let tokens = blocking(move || {
            let text = e.render_chat(&messages).map_err(|err| match err {
                crate::chat::ChatError::NoTemplate => OllamaError::bad(
                    "the model has no chat template (neither tokenizer.chat_template in the GGUF nor an Ollama template layer); use /api/generate with raw",
                ),
                err => OllamaError::bad(format!(
                    "the messages do not fit the model's chat template: {err}"
                )),
            })?;
            Ok(e.tokenizer().encode(&text, true, true))
        })
        .await?;
        Source::Engine(submit(&engine, tokens, r.common.clone())?)
    };
    let a = Answer {
        chat: true,
        model,
        start,
        prompt_ids: None,
        source,
    };
    Ok(finish(a, r.common.stream).await)
}

/// `POST /api/generate`.
async fn generate(State(state): State<AppState>, req: Request) -> Response {
    generate_inner(state, req)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn generate_inner(state: AppState, req: Request) -> Result<Response, OllamaError> {
    let start = Instant::now();
    let body = body_of(&state, req).await?;
    let slot = find(&state, &body, "model")?.clone();
    let params = slot.ollama().map(|m| m.params.clone()).unwrap_or_default();
    let mut r = GenerateRequest::parse(&body, &params, seed())?;
    let model = slot.name().unwrap_or(r.common.model.clone());
    if r.prompt.is_empty() {
        return Ok(loaded(&model, false));
    }
    if let Some(up) = slot.upstream_target() {
        let mut b = upstream_body(&r.common);
        if r.raw {
            b.insert("prompt".into(), json!(r.prompt));
        } else {
            let mut msgs = Vec::new();
            if let Some(s) = &r.system {
                msgs.push(json!({"role": "system", "content": s}));
            }
            msgs.push(json!({"role": "user", "content": r.prompt}));
            b.insert("messages".into(), Value::Array(msgs));
        }
        let a = Answer {
            chat: false,
            model,
            start,
            prompt_ids: None,
            source: Source::Upstream(up.stream(b).await?),
        };
        return Ok(finish(a, r.common.stream).await);
    }
    let engine = slot.engine()?;
    let mut messages = Vec::new();
    if let Some(s) = r.system.take() {
        messages.push(crate::chat::ChatMessage::new("system", s));
    }
    messages.push(crate::chat::ChatMessage::new(
        "user",
        std::mem::take(&mut r.prompt),
    ));
    // The model's system prompt (unless the request gave one) and stops.
    slot.apply_defaults(
        if r.raw { None } else { Some(&mut messages) },
        &mut r.common.stop,
    );
    let e = engine.clone();
    let (raw, context, template) = (r.raw, std::mem::take(&mut r.context), r.template.take());
    let tokens = blocking(move || {
        // Raw, or a model with no chat template: the prompt as it is.
        let text = if raw {
            messages.pop().map(|m| m.content).unwrap_or_default()
        } else {
            let rendered = match &template {
                Some(t) => t.render(&messages, true),
                None => e.render_chat(&messages),
            };
            match rendered {
                Ok(t) => t,
                Err(crate::chat::ChatError::NoTemplate) => {
                    messages.pop().map(|m| m.content).unwrap_or_default()
                }
                Err(err) => {
                    return Err(OllamaError::bad(format!(
                        "the prompt does not fit the model's chat template: {err}"
                    )))
                }
            }
        };
        // After an earlier exchange's tokens, no second BOS.
        let mut tokens = context.clone();
        tokens.extend(e.tokenizer().encode(&text, context.is_empty(), true));
        Ok(tokens)
    })
    .await?;
    let vocab = engine.tokenizer().n_vocab();
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(OllamaError::bad(format!(
            "context token {t} is outside the vocabulary"
        )));
    }
    let stream = r.common.stream;
    let a = Answer {
        chat: false,
        model,
        start,
        prompt_ids: Some(tokens.clone()),
        source: Source::Engine(submit(&engine, tokens, r.common)?),
    };
    Ok(finish(a, stream).await)
}

#[path = "ollama_info.rs"]
mod info;
use info::{ps, show, tags, version};
