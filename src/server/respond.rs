//! Answers in OpenAI's shapes: whole (`chat.completion`, `text_completion`)
//! or streamed as server-sent events (`chat.completion.chunk`, ending with
//! `data: [DONE]`).

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt as _};
use serde_json::{json, Value};

use super::error::ApiError;
use crate::engine::{Event, Finish, TokenStream, Usage};

/// How often an idle stream (queued, or a long prompt) sends a comment line,
/// which also notices a client that went away.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Which endpoint is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// What every object of one answer repeats.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Endpoint.
    pub kind: Kind,
    /// `chatcmpl-…` / `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model's name.
    pub model: String,
    /// Streams: end with a usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

impl Meta {
    fn whole(&self, text: String, usage: &Usage) -> Value {
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion",
                json!({
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": finish_reason(usage.finish),
                }),
            ),
            Kind::Completion => (
                "text_completion",
                json!({
                    "index": 0,
                    "text": text,
                    "logprobs": null,
                    "finish_reason": finish_reason(usage.finish),
                }),
            ),
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage_json(usage),
        })
    }

    /// One chunk whose single choice carries `delta` (chat) or `text`
    /// (completion) and `finish`.
    fn chunk(&self, delta: Value, text: &str, finish: Option<Finish>) -> SseEvent {
        let finish = finish.map(finish_reason);
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion.chunk",
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}),
            ),
            Kind::Completion => (
                "text_completion",
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
            ),
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        data(&v)
    }

    /// The usage chunk: no choices, only `usage`.
    fn usage_chunk(&self, usage: &Usage) -> SseEvent {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        data(&json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_json(usage),
        }))
    }
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// Waits for the whole generation and answers with one JSON object. A lost
/// server is a 503.
pub async fn whole(meta: Meta, mut tokens: TokenStream) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(ev) = tokens.next().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done(usage) => return Ok(Json(meta.whole(text, &usage)).into_response()),
            Event::Error(e) => {
                return Err(ApiError::unavailable(format!("Generation failed: {e}")))
            }
        }
    }
    Err(ApiError::unavailable(
        "Generation failed: the engine stopped.",
    ))
}

struct StreamState {
    meta: Meta,
    /// `None` once the generation ended: the stream then ends.
    tokens: Option<TokenStream>,
    started: bool,
}

/// Streams the generation as server-sent events. The response body owns the
/// [`TokenStream`]: a client that goes away drops the body, which cancels
/// the generation and frees its sequence.
pub fn streamed(meta: Meta, tokens: TokenStream) -> Response {
    let state = StreamState {
        meta,
        tokens: Some(tokens),
        started: false,
    };
    let events = stream::unfold(state, |mut st| async move {
        let tokens = st.tokens.as_mut()?;
        if !st.started {
            st.started = true;
            if st.meta.kind == Kind::Chat {
                let first = st
                    .meta
                    .chunk(json!({"role": "assistant", "content": ""}), "", None);
                return Some((vec![first], st));
            }
        }
        let out = match tokens.next().await {
            Some(Event::Text(t)) => vec![st.meta.chunk(json!({ "content": t }), &t, None)],
            Some(Event::Done(usage)) => {
                st.tokens = None;
                let mut v = vec![st.meta.chunk(json!({}), "", Some(usage.finish))];
                if st.meta.include_usage {
                    v.push(st.meta.usage_chunk(&usage));
                }
                v.push(SseEvent::default().data("[DONE]"));
                v
            }
            Some(Event::Error(e)) => {
                st.tokens = None;
                vec![data(
                    &ApiError::unavailable(format!("Generation failed: {e}")).body(),
                )]
            }
            None => {
                st.tokens = None;
                vec![data(
                    &ApiError::unavailable("Generation failed: the engine stopped.").body(),
                )]
            }
        };
        Some((out, st))
    })
    .flat_map(|v| stream::iter(v.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}
