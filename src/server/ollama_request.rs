//! Request bodies of Ollama's API (`/api/chat`, `/api/generate`), with
//! Ollama's field names and defaults (from Ollama's `api/types.go` and its
//! API documentation; no code taken).
//!
//! Options: `temperature`, `top_k`, `top_p`, `min_p`, `repeat_penalty`,
//! `repeat_last_n`, `presence_penalty`, `frequency_penalty`, `seed`,
//! `num_predict` and `stop` are used; the rest
//! (`num_ctx`, `num_gpu`, `mirostat`, …) are fixed at load or not
//! implemented, and, as Ollama does with options it does not know, ignored.
//! A used option of the wrong type is a 400.

use serde_json::{Map, Value};

use crate::chat::ChatMessage;
use crate::ollama::Params;
use crate::sample::SamplerConfig;

/// An Ollama API error: the HTTP status and the `error` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaError {
    /// HTTP status.
    pub status: u16,
    /// The `error` field.
    pub message: String,
}

impl OllamaError {
    pub(crate) fn bad(message: impl Into<String>) -> OllamaError {
        OllamaError {
            status: 400,
            message: message.into(),
        }
    }
}

/// How many tokens to generate (`num_predict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Predict {
    /// Up to the end of the context (`-1`, `-2`, or absent).
    Unlimited,
    /// At most this many.
    Most(usize),
}

/// Settings both endpoints share.
#[derive(Debug, Clone)]
pub struct Common {
    /// The model asked for.
    pub model: String,
    /// NDJSON stream (Ollama's default) or one object.
    pub stream: bool,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Tokens to generate.
    pub predict: Predict,
    /// Texts that end the generation.
    pub stop: Vec<String>,
}

/// `POST /api/chat`.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// Shared settings.
    pub common: Common,
    /// The conversation (may be empty: Ollama then only loads the model).
    pub messages: Vec<ChatMessage>,
}

/// `POST /api/generate`.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Shared settings.
    pub common: Common,
    /// The prompt (empty: Ollama then only loads the model).
    pub prompt: String,
    /// A system prompt replacing the model's.
    pub system: Option<String>,
    /// Use the prompt as is, without the chat template.
    pub raw: bool,
    /// A Go template used instead of the model's (`template`).
    pub template: Option<std::sync::Arc<crate::chat::ChatTemplate>>,
    /// Tokens of an earlier exchange (`context` of its answer), put before
    /// the prompt.
    pub context: Vec<u32>,
}

/// Reads a JSON object body; Ollama answers a bad body with 400.
pub fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, OllamaError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(OllamaError::bad("the request body must be a JSON object")),
        Err(e) => Err(OllamaError::bad(format!("invalid JSON: {e}"))),
    }
}

fn get<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    o.get(k).filter(|v| !v.is_null())
}

fn string(o: &Map<String, Value>, k: &str) -> Result<Option<String>, OllamaError> {
    match get(o, k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(OllamaError::bad(format!("'{k}' must be a string"))),
    }
}

fn boolean(o: &Map<String, Value>, k: &str) -> Result<Option<bool>, OllamaError> {
    match get(o, k) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(OllamaError::bad(format!("'{k}' must be a boolean"))),
    }
}

fn number(o: &Map<String, Value>, k: &str) -> Result<Option<f64>, OllamaError> {
    match get(o, k) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(OllamaError::bad(format!("option '{k}' must be a number"))),
    }
}

fn integer(o: &Map<String, Value>, k: &str) -> Result<Option<i64>, OllamaError> {
    match number(o, k)? {
        None => Ok(None),
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Ok(Some(f as i64)),
        Some(_) => Err(OllamaError::bad(format!("option '{k}' must be an integer"))),
    }
}

fn stop_list(o: &Map<String, Value>, k: &str) -> Result<Option<Vec<String>>, OllamaError> {
    match get(o, k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    OllamaError::bad(format!("option '{k}' must be a list of strings"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(OllamaError::bad(format!(
            "option '{k}' must be a list of strings"
        ))),
    }
}

/// Applies the options of one layer (the model's params, then the request's
/// `options`) over `c`.
fn apply_options(c: &mut Common, o: &Map<String, Value>) -> Result<(), OllamaError> {
    let s = &mut c.sampler;
    if let Some(x) = number(o, "temperature")? {
        s.temperature = x as f32;
    }
    if let Some(x) = integer(o, "top_k")? {
        s.top_k = u32::try_from(x.max(0)).unwrap_or(u32::MAX);
    }
    if let Some(x) = number(o, "top_p")? {
        s.top_p = x as f32;
    }
    if let Some(x) = number(o, "min_p")? {
        s.min_p = x as f32;
    }
    if let Some(x) = number(o, "repeat_penalty")? {
        s.repeat_penalty = x as f32;
    }
    if let Some(x) = number(o, "presence_penalty")? {
        s.presence_penalty = x as f32;
    }
    if let Some(x) = number(o, "frequency_penalty")? {
        s.frequency_penalty = x as f32;
    }
    if let Some(x) = integer(o, "repeat_last_n")? {
        // Ollama: -1 is the whole context; the history is at most that.
        s.repeat_last_n = if x < 0 { usize::MAX } else { x as usize };
    }
    if let Some(x) = integer(o, "seed")? {
        // Ollama: -1 (its default) is a random seed.
        if x >= 0 {
            s.seed = x as u64;
        }
    }
    if let Some(x) = integer(o, "num_predict")? {
        c.predict = if x < 0 {
            Predict::Unlimited
        } else {
            // 0 tokens asked: Ollama answers with none; the engine wants one.
            Predict::Most(x.max(1) as usize)
        };
    }
    if let Some(x) = stop_list(o, "stop")? {
        c.stop = x.into_iter().filter(|s| !s.is_empty()).collect();
    }
    Ok(())
}

/// Refuses what shardline does not do rather than silently ignoring it,
/// for fields whose absence changes the answer: tools, images, a format.
fn refuse_unsupported(o: &Map<String, Value>, model: &str) -> Result<(), OllamaError> {
    if get(o, "tools").is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(OllamaError::bad(format!("{model} does not support tools")));
    }
    match get(o, "format") {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(_) => {
            return Err(OllamaError::bad(
                "'format' (JSON output) is not supported by shardline's Ollama API",
            ))
        }
    }
    Ok(())
}

impl Common {
    /// Ollama's defaults, then the model's `params`, then the request's
    /// `options`.
    fn parse(o: &Map<String, Value>, params: &Params, seed: u64) -> Result<Common, OllamaError> {
        let model = string(o, "model")?
            .filter(|m| !m.is_empty())
            .ok_or_else(|| OllamaError::bad("model is required"))?;
        refuse_unsupported(o, &model)?;
        let mut c = Common {
            stream: boolean(o, "stream")?.unwrap_or(true),
            model,
            // Ollama's DefaultOptions (api/types.go).
            sampler: SamplerConfig {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.9,
                min_p: 0.0,
                repeat_penalty: 1.1,
                repeat_last_n: 64,
                seed,
                ..SamplerConfig::default()
            },
            predict: Predict::Unlimited,
            stop: Vec::new(),
        };
        apply_options(&mut c, &params.all)
            .map_err(|e| OllamaError::bad(format!("the model's parameters: {}", e.message)))?;
        match get(o, "options") {
            None => {}
            Some(Value::Object(opts)) => apply_options(&mut c, opts)?,
            Some(_) => return Err(OllamaError::bad("'options' must be an object")),
        }
        Ok(c)
    }
}

impl ChatRequest {
    /// Reads `/api/chat`; `params` are the model's (empty for a GGUF file).
    pub fn parse(
        o: &Map<String, Value>,
        params: &Params,
        seed: u64,
    ) -> Result<ChatRequest, OllamaError> {
        let common = Common::parse(o, params, seed)?;
        let list = match get(o, "messages") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(OllamaError::bad("'messages' must be a list")),
        };
        if list.len() > super::request::MAX_MESSAGES {
            return Err(OllamaError::bad(format!(
                "at most {} messages",
                super::request::MAX_MESSAGES
            )));
        }
        let mut messages = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let Value::Object(m) = m else {
                return Err(OllamaError::bad(format!("messages[{i}] must be an object")));
            };
            let role = string(m, "role")?
                .ok_or_else(|| OllamaError::bad(format!("messages[{i}] has no role")))?;
            let content = string(m, "content")?.unwrap_or_default();
            if get(m, "images").is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
                return Err(OllamaError::bad(format!(
                    "{} does not support images",
                    common.model
                )));
            }
            messages.push(ChatMessage::new(role, content));
        }
        Ok(ChatRequest { common, messages })
    }
}

impl GenerateRequest {
    /// Reads `/api/generate`; `params` are the model's.
    pub fn parse(
        o: &Map<String, Value>,
        params: &Params,
        seed: u64,
    ) -> Result<GenerateRequest, OllamaError> {
        let common = Common::parse(o, params, seed)?;
        let template = match string(o, "template")?.filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(
                crate::chat::ChatTemplate::go(&t)
                    .map_err(|e| OllamaError::bad(format!("'template': {e}")))?,
            ),
        };
        if string(o, "suffix")?.is_some_and(|t| !t.is_empty()) {
            return Err(OllamaError::bad(format!(
                "{} does not support insert (suffix)",
                common.model
            )));
        }
        if get(o, "images").is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(OllamaError::bad(format!(
                "{} does not support images",
                common.model
            )));
        }
        let context = match get(o, "context") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| OllamaError::bad("'context' must be a list of token ids"))?,
            Some(_) => return Err(OllamaError::bad("'context' must be a list of token ids")),
        };
        Ok(GenerateRequest {
            prompt: string(o, "prompt")?.unwrap_or_default(),
            system: string(o, "system")?,
            raw: boolean(o, "raw")?.unwrap_or(false),
            template: template.map(std::sync::Arc::new),
            context,
            common,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_params_then_options() {
        let params =
            Params::from_json(r#"{"temperature": 0.2, "stop": ["<x>"], "num_ctx": 8}"#).unwrap();
        let r = ChatRequest::parse(
            &obj(
                json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                        "options": {"top_k": 5, "num_predict": 7, "mirostat": 2, "seed": 3}}),
            ),
            &params,
            99,
        )
        .unwrap();
        assert!(r.common.stream);
        assert_eq!(r.common.sampler.temperature, 0.2);
        assert_eq!(r.common.sampler.top_k, 5);
        assert_eq!(r.common.sampler.top_p, 0.9);
        assert_eq!(r.common.sampler.seed, 3);
        assert_eq!(r.common.stop, vec!["<x>"]);
        assert_eq!(r.common.predict, Predict::Most(7));
        assert_eq!(r.messages, vec![ChatMessage::new("user", "hi")]);
        let r = GenerateRequest::parse(
            &obj(
                json!({"model": "m", "prompt": "p", "stream": false, "context": [1, 2],
                        "options": {"num_predict": -2, "seed": -1, "stop": "\n"}}),
            ),
            &Params::default(),
            99,
        )
        .unwrap();
        assert!(!r.common.stream);
        assert_eq!(r.common.sampler.seed, 99);
        assert_eq!(r.common.predict, Predict::Unlimited);
        assert_eq!(r.common.stop, vec!["\n"]);
        assert_eq!(r.context, vec![1, 2]);
    }

    #[test]
    fn bad_fields_are_400s() {
        let p = Params::default();
        let chat = |v: Value| ChatRequest::parse(&obj(v), &p, 0).map(|_| ()).unwrap_err();
        assert_eq!(chat(json!({"messages": []})).message, "model is required");
        assert!(
            chat(json!({"model": "m", "options": {"temperature": "hot"}}))
                .message
                .contains("temperature")
        );
        assert!(chat(json!({"model": "m", "options": {"stop": [1]}}))
            .message
            .contains("stop"));
        assert!(chat(json!({"model": "m", "options": 3}))
            .message
            .contains("options"));
        assert!(chat(json!({"model": "m", "messages": [{"content": "x"}]}))
            .message
            .contains("role"));
        assert!(chat(json!({"model": "m", "tools": [{"type": "function"}]}))
            .message
            .contains("tools"));
        assert!(chat(json!({"model": "m", "format": "json"}))
            .message
            .contains("format"));
        let gen = |v: Value| {
            GenerateRequest::parse(&obj(v), &p, 0)
                .map(|_| ())
                .unwrap_err()
        };
        assert!(gen(json!({"model": "m", "template": "{{ .Prompt"}))
            .message
            .contains("'template': Ollama (Go) chat template"));
        assert!(gen(json!({"model": "m", "context": [-1]}))
            .message
            .contains("context"));
        assert_eq!(parse_body(b"{").unwrap_err().status, 400);
        assert_eq!(parse_body(b"[]").unwrap_err().status, 400);
    }
}
