//! Models forwarded to an upstream OpenAI-compatible server (`serve
//! --upstream URL`, `upstream =` in a config): `/v1/chat/completions` and
//! `/v1/completions` bodies naming such a model go there with `model` set to
//! the upstream's name for it, and the answer comes back as it arrives
//! (server-sent events relayed byte for byte, never buffered whole).
//! Ollama-API requests for such a model are asked of the upstream as a
//! streamed OpenAI request and read back as text pieces ([`UpstreamStream`]).
//!
//! Plain `http://` only: no TLS stack is linked in (put a TLS proxy on the
//! same host for a remote upstream).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::request::parse_object;
use super::routes::read_body;
use super::state::AppState;
use crate::engine::{Event, Finish, Usage};

/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the upstream may take to start answering (it may queue).
const HEAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an upstream URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamUrlError {
    /// Not a URL.
    #[error("upstream '{0}' is not a URL: {1}")]
    Invalid(String, String),
    /// Not `http://`.
    #[error("upstream '{0}': only http:// URLs are supported (no TLS client is built in)")]
    Scheme(String),
}

/// An upstream server and the model name it knows.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http://host:port` plus any path prefix, without a trailing `/v1`.
    base: String,
    /// Its name for the model.
    model: String,
    client: Client<HttpConnector, Body>,
}

impl Upstream {
    /// `url` is the upstream's base (`http://host:11434` or
    /// `http://host:11434/v1`); `model` its name for the model.
    pub fn new(url: &str, model: &str) -> Result<Upstream, UpstreamUrlError> {
        let uri: Uri = url.parse().map_err(|e: axum::http::uri::InvalidUri| {
            UpstreamUrlError::Invalid(url.into(), e.to_string())
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(UpstreamUrlError::Scheme(url.into()));
        }
        let Some(authority) = uri.authority() else {
            return Err(UpstreamUrlError::Invalid(url.into(), "no host".into()));
        };
        let path = uri.path().trim_end_matches('/');
        let path = path.strip_suffix("/v1").unwrap_or(path);
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(CONNECT_TIMEOUT));
        conn.set_nodelay(true);
        Ok(Upstream {
            base: format!("http://{authority}{path}"),
            model: model.to_owned(),
            client: Client::builder(TokioExecutor::new()).build(conn),
        })
    }

    /// The upstream's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Its name for the model.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// POSTs `body` (with `model` replaced) to `path` of the upstream; the
    /// answer's head, its body left streaming.
    async fn post(
        &self,
        path: &str,
        mut body: Map<String, Value>,
        accept: Option<HeaderValue>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ApiError> {
        body.insert("model".into(), Value::String(self.model.clone()));
        let bytes = Value::Object(body).to_string();
        let mut req = hyper::Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let req = req
            .body(Body::from(bytes))
            .map_err(|e| self.failed(format!("building the request: {e}")))?;
        match tokio::time::timeout(HEAD_TIMEOUT, self.client.request(req)).await {
            Err(_) => Err(self.failed(format!("no answer within {}s", HEAD_TIMEOUT.as_secs()))),
            Ok(Err(e)) => Err(self.failed(error_chain(&e))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    fn failed(&self, why: String) -> ApiError {
        ApiError {
            status: StatusCode::BAD_GATEWAY,
            kind: "server_error",
            message: format!("The upstream server {} failed: {why}", self.base),
            param: None,
            code: Some("upstream_error"),
        }
    }

    /// Forwards an OpenAI request; the upstream's status, content type and
    /// body (streamed as it comes) are the answer.
    pub async fn forward(
        &self,
        path: &str,
        body: Map<String, Value>,
        accept: Option<HeaderValue>,
    ) -> Response {
        let resp = match self.post(path, body, accept).await {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let (parts, incoming) = resp.into_parts();
        let mut out = Response::new(Body::new(incoming));
        *out.status_mut() = parts.status;
        for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
            if let Some(v) = parts.headers.get(&name) {
                out.headers_mut().insert(name, v.clone());
            }
        }
        out
    }

    /// Asks for a streamed answer to an OpenAI request body (chat when it
    /// has `messages`) and returns its text as it comes.
    pub async fn stream(&self, mut body: Map<String, Value>) -> Result<UpstreamStream, ApiError> {
        let chat = body.contains_key("messages");
        body.insert("stream".into(), Value::Bool(true));
        body.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
        let path = if chat {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let resp = self.post(path, body, None).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = match axum::body::to_bytes(Body::new(resp.into_body()), 64 << 10).await {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => e.to_string(),
            };
            let mut e = self.failed(format!("{status}: {}", text.trim()));
            e.status = status;
            return Err(e);
        }
        Ok(UpstreamStream {
            body: Body::new(resp.into_body()).into_data_stream(),
            buf: Vec::new(),
            pending: std::collections::VecDeque::new(),
            usage: Usage::default(),
            ended: false,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

/// The text of a streamed upstream answer, as engine [`Event`]s.
#[derive(Debug)]
pub struct UpstreamStream {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<Event>,
    usage: Usage,
    ended: bool,
}

impl UpstreamStream {
    /// The next piece of text, then `Done` (or `Error`), then `None`.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            if self.ended {
                return None;
            }
            match self.body.next().await {
                Some(Ok(data)) => self.push(&data),
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Event::Error(format!("the upstream stream broke: {e}")));
                }
                None => {
                    self.ended = true;
                    return Some(Event::Error(
                        "the upstream ended its answer without [DONE]".into(),
                    ));
                }
            }
        }
    }

    /// Takes in bytes; each whole `data:` line becomes events.
    fn push(&mut self, data: &Bytes) {
        self.buf.extend_from_slice(data);
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(payload) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let payload = payload.trim();
            if payload == "[DONE]" {
                self.ended = true;
                self.pending.push_back(Event::Done(self.usage));
                return;
            }
            let Ok(v) = serde_json::from_str::<Value>(payload) else {
                continue;
            };
            if let Some(err) = v.get("error") {
                self.ended = true;
                let msg = err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                self.pending
                    .push_back(Event::Error(format!("upstream: {msg}")));
                return;
            }
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
                self.usage.prompt_tokens = n("prompt_tokens");
                self.usage.completion_tokens = n("completion_tokens");
            }
            let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
                continue;
            };
            let text = choice
                .get("delta")
                .and_then(|d| d.get("content"))
                .or_else(|| choice.get("text"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !text.is_empty() {
                self.pending.push_back(Event::Text(text.to_owned()));
            }
            if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
                self.usage.finish = if f == "length" {
                    Finish::Length
                } else {
                    Finish::Stop
                };
            }
        }
    }
}

/// Middleware on the OpenAI generation routes: a body naming a forwarded
/// model goes upstream; anything else (a local model, a body that does not
/// parse) goes on to the handler unchanged.
pub(crate) async fn forward(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.models().has_upstream() {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    let accept = req.headers().get(header::ACCEPT).cloned();
    let (parts, body) = req.into_parts();
    let bytes = match read_body(&state, Request::from_parts(parts.clone(), body)).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if let Ok(obj) = parse_object(&bytes) {
        let target = obj
            .get("model")
            .and_then(Value::as_str)
            .and_then(|m| state.models().find(Some(m)).ok())
            .and_then(|m| m.upstream_target().cloned());
        if let Some(up) = target {
            return up.forward(&path, obj, accept).await;
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
