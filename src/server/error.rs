//! Errors in OpenAI's shape: `{"error":{"message","type","param","code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::engine::SubmitError;

/// An error answer: HTTP status plus OpenAI's error object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type` (`invalid_request_error`, `server_error`, ...).
    pub kind: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A stable machine-readable code, when there is one.
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code,
        }
    }

    fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 400: the body is not JSON, or not a JSON object.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("invalid_json"),
            message,
        )
    }

    /// 400: a field has the wrong JSON type.
    pub fn invalid_type(param: &str, expected: &str, got: &serde_json::Value) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("invalid_type"),
            format!(
                "Invalid type for '{param}': expected {expected}, but got {} instead.",
                json_kind(got)
            ),
        )
        .with_param(param)
    }

    /// 400: a field has the right type but a value out of range.
    pub fn invalid_value(param: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("invalid_value"),
            message,
        )
        .with_param(param)
    }

    /// 400: a required field is absent.
    pub fn missing(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("missing_required_parameter"),
            format!("Missing required parameter: '{param}'."),
        )
        .with_param(param)
    }

    /// 400: anything else wrong with the request.
    pub fn bad_request(
        param: Option<&str>,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        let e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        );
        match param {
            Some(p) => e.with_param(p),
            None => e,
        }
    }

    /// 401: no API key, or the wrong one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            message,
        )
    }

    /// 404: a model this server does not serve.
    pub fn unknown_model(asked: &str, served: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            format!("The model '{asked}' does not exist; this server serves '{served}'."),
        )
        .with_param("model")
    }

    /// 404: no such route.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("unknown_url"),
            format!("Unknown request URL: {method} {path}."),
        )
    }

    /// 405: the route exists, the method does not.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("Method {method} is not allowed for {path}."),
        )
    }

    /// 408: the body did not arrive in time.
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            Some("request_timeout"),
            "The request body did not arrive in time.",
        )
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    }

    /// 429: too many requests waiting.
    pub fn queue_full() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("queue_full"),
            "Too many requests are waiting for this model; retry later.",
        )
    }

    /// 503: the model is still being loaded.
    pub fn loading(done: u64, total: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("model_loading"),
            format!("The model is still loading ({done} of {total} bytes uploaded); retry later."),
        )
    }

    /// 503: the engine cannot serve (a server was lost).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("engine_unavailable"),
            message,
        )
    }

    /// The error object alone, `{"error":{...}}`, as sent in a stream too.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull => ApiError::queue_full(),
            SubmitError::EmptyPrompt => {
                ApiError::bad_request(Some("prompt"), Some("empty_prompt"), e.to_string())
            }
            SubmitError::TooLong { .. } => ApiError::bad_request(
                Some("max_tokens"),
                Some("context_length_exceeded"),
                e.to_string(),
            ),
            SubmitError::BadToken(_) => {
                ApiError::bad_request(Some("prompt"), Some("invalid_value"), e.to_string())
            }
            SubmitError::Unavailable(msg) => {
                ApiError::unavailable(format!("The model is unavailable: {msg}"))
            }
            SubmitError::Sampler(s) => {
                ApiError::bad_request(None, Some("invalid_value"), s.to_string())
            }
            SubmitError::BadBiasToken(_) => {
                ApiError::bad_request(Some("logit_bias"), Some("invalid_value"), e.to_string())
            }
            SubmitError::TopLogprobs(_) => {
                ApiError::bad_request(Some("top_logprobs"), Some("invalid_value"), e.to_string())
            }
        }
    }
}

/// How OpenAI names a JSON value's type in its messages.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        serde_json::Value::Number(_) => "a decimal",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
