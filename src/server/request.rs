//! Request bodies of the OpenAI endpoints, read field by field from JSON so
//! that a field of the wrong type names itself (`param`) in the 400 answer.
//! Unknown fields are ignored, as OpenAI does; `null` counts as absent.

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::chat::ChatMessage;
use crate::engine::Prompt;
use crate::sample::SamplerConfig;

/// Most stop strings one request may give.
pub const MAX_STOP: usize = 16;
/// Most messages in one chat request.
pub const MAX_MESSAGES: usize = 4096;

/// Settings both endpoints share.
#[derive(Debug, Clone)]
pub struct Common {
    /// The model asked for (absent: the one served).
    pub model: Option<String>,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Send a usage chunk at the end of a stream.
    pub include_usage: bool,
    /// `max_tokens` (or `max_completion_tokens`).
    pub max_tokens: Option<usize>,
    /// Sampling, OpenAI's defaults where absent.
    pub sampler: SamplerConfig,
    /// Texts that end the generation.
    pub stop: Vec<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// Shared settings.
    pub common: Common,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// Shared settings.
    pub common: Common,
    /// Text or token ids.
    pub prompt: Prompt,
}

/// Parses a body into a JSON object (400 when it is not one).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::malformed(format!(
            "The request body must be a JSON object, got {}.",
            match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        ))),
        Err(e) => Err(ApiError::malformed(format!(
            "We could not parse the JSON body of your request: {e}."
        ))),
    }
}

/// Typed access to the fields of one JSON object.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    fn string(&self, k: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::invalid_type(k, "a string", v)),
        }
    }

    fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::invalid_type(k, "a boolean", v)),
        }
    }

    /// A number in `[lo, hi]`.
    fn number(&self, k: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if !(lo..=hi).contains(&x) {
                    return Err(ApiError::invalid_value(
                        k,
                        format!("Invalid value for '{k}': {x} is not between {lo} and {hi}."),
                    ));
                }
                Ok(Some(x as f32))
            }
            Some(v) => Err(ApiError::invalid_type(k, "a number", v)),
        }
    }

    /// An integer (any sign; `1.0` counts).
    fn integer(&self, k: &str) -> Result<Option<i128>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    Ok(Some(i.into()))
                } else if let Some(u) = n.as_u64() {
                    Ok(Some(u.into()))
                } else {
                    match n.as_f64() {
                        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i128)),
                        _ => Err(ApiError::invalid_type(
                            k,
                            "an integer",
                            &Value::Number(n.clone()),
                        )),
                    }
                }
            }
            Some(v) => Err(ApiError::invalid_type(k, "an integer", v)),
        }
    }

    /// An integer of at least `min`.
    fn count(&self, k: &str, min: i128) -> Result<Option<usize>, ApiError> {
        match self.integer(k)? {
            None => Ok(None),
            Some(i) if i < min => Err(ApiError::invalid_value(
                k,
                format!("Invalid value for '{k}': {i} is less than the minimum of {min}."),
            )),
            Some(i) => Ok(Some(usize::try_from(i).unwrap_or(usize::MAX))),
        }
    }

    /// `stop`: a string or an array of strings.
    fn stop(&self, k: &str) -> Result<Vec<String>, ApiError> {
        let list = match self.get(k) {
            None => return Ok(Vec::new()),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(ApiError::invalid_type(
                        k,
                        "a string or an array of strings",
                        v,
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(v) => {
                return Err(ApiError::invalid_type(
                    k,
                    "a string or an array of strings",
                    v,
                ))
            }
        };
        if list.len() > MAX_STOP {
            return Err(ApiError::invalid_value(
                k,
                format!(
                    "Invalid value for '{k}': at most {MAX_STOP} stop sequences, got {}.",
                    list.len()
                ),
            ));
        }
        Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
    }
}

fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // splitmix64 over clock and a counter: distinct seeds for requests in the
    // same nanosecond.
    let mut z = t ^ NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Common {
    fn parse(f: &Fields<'_>) -> Result<Common, ApiError> {
        let model = f.string("model")?.map(str::to_owned);
        let stream = f.bool("stream")?.unwrap_or(false);
        let include_usage = match f.get("stream_options") {
            None => false,
            Some(Value::Object(o)) => Fields(o)
                .bool("include_usage")
                .map_err(|mut e| {
                    e.param = Some("stream_options.include_usage".into());
                    e
                })?
                .unwrap_or(false),
            Some(v) => return Err(ApiError::invalid_type("stream_options", "an object", v)),
        };
        let max_tokens = match f.count("max_completion_tokens", 1)? {
            Some(n) => Some(n),
            None => f.count("max_tokens", 1)?,
        };
        if let Some(n) = f.count("n", 1)? {
            if n != 1 {
                return Err(ApiError::invalid_value("n", "Only n=1 is supported."));
            }
        }
        // OpenAI's semantics: plain temperature sampling unless asked.
        let mut sampler = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            ..SamplerConfig::default()
        };
        if let Some(t) = f.number("temperature", 0.0, 2.0)? {
            sampler.temperature = t;
        }
        if let Some(p) = f.number("top_p", 0.0, 1.0)? {
            sampler.top_p = p;
        }
        // Extensions llama.cpp's server also takes.
        if let Some(k) = f.count("top_k", 0)? {
            sampler.top_k = u32::try_from(k).unwrap_or(u32::MAX);
        }
        if let Some(p) = f.number("min_p", 0.0, 1.0)? {
            sampler.min_p = p;
        }
        if let Some(r) = f.number("repeat_penalty", f64::MIN_POSITIVE, f64::from(f32::MAX))? {
            sampler.repeat_penalty = r;
        }
        sampler.seed = match f.integer("seed")? {
            // Any integer OpenAI accepts (i64) maps onto a distinct u64.
            Some(s) => s as u64,
            None => random_seed(),
        };
        let stop = f.stop("stop")?;
        Ok(Common {
            model,
            stream,
            include_usage,
            max_tokens,
            sampler,
            stop,
        })
    }
}

impl ChatRequest {
    /// Reads a chat request.
    pub fn parse(body: &Map<String, Value>) -> Result<ChatRequest, ApiError> {
        let f = Fields(body);
        let common = Common::parse(&f)?;
        let list = match f.get("messages") {
            None => return Err(ApiError::missing("messages")),
            Some(Value::Array(a)) => a,
            Some(v) => return Err(ApiError::invalid_type("messages", "an array", v)),
        };
        if list.is_empty() {
            return Err(ApiError::invalid_value(
                "messages",
                "'messages' must not be empty.",
            ));
        }
        if list.len() > MAX_MESSAGES {
            return Err(ApiError::invalid_value(
                "messages",
                format!("At most {MAX_MESSAGES} messages, got {}.", list.len()),
            ));
        }
        let messages = list
            .iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ChatRequest { common, messages })
    }
}

/// One message: `role` and `content` (a string, `null`, or text parts).
fn message(i: usize, v: &Value) -> Result<ChatMessage, ApiError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let Value::Object(m) = v else {
        return Err(ApiError::invalid_type(
            &format!("messages[{i}]"),
            "an object",
            v,
        ));
    };
    let f = Fields(m);
    let role = match f.get("role") {
        None => return Err(ApiError::missing(&at("role"))),
        Some(Value::String(s)) => s.as_str(),
        Some(v) => return Err(ApiError::invalid_type(&at("role"), "a string", v)),
    };
    // OpenAI's newer name for the system role.
    let role = if role == "developer" { "system" } else { role };
    let content = match f.get("content") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let param = format!("messages[{i}].content[{j}]");
                let Value::Object(po) = p else {
                    return Err(ApiError::invalid_type(&param, "an object", p));
                };
                let pf = Fields(po);
                match pf.string("type").map_err(|mut e| {
                    e.param = Some(format!("{param}.type"));
                    e
                })? {
                    Some("text") => {}
                    Some(other) => {
                        return Err(ApiError::invalid_value(
                            &format!("{param}.type"),
                            format!(
                            "Content parts of type '{other}' are not supported; only 'text' is."
                        ),
                        ))
                    }
                    None => return Err(ApiError::missing(&format!("{param}.type"))),
                }
                match pf.get("text") {
                    Some(Value::String(s)) => text.push_str(s),
                    Some(v) => {
                        return Err(ApiError::invalid_type(
                            &format!("{param}.text"),
                            "a string",
                            v,
                        ))
                    }
                    None => return Err(ApiError::missing(&format!("{param}.text"))),
                }
            }
            text
        }
        Some(v) => {
            return Err(ApiError::invalid_type(
                &at("content"),
                "a string or an array of content parts",
                v,
            ))
        }
    };
    Ok(ChatMessage::new(role, content))
}

impl CompletionRequest {
    /// Reads a text completion request.
    pub fn parse(body: &Map<String, Value>) -> Result<CompletionRequest, ApiError> {
        let f = Fields(body);
        let common = Common::parse(&f)?;
        const EXPECTED: &str = "a string, an array of one string, or an array of token ids";
        let prompt = match f.get("prompt") {
            None => return Err(ApiError::missing("prompt")),
            Some(Value::String(s)) => Prompt::Text(s.clone()),
            Some(Value::Array(a)) => match a.as_slice() {
                [Value::String(s)] => Prompt::Text(s.clone()),
                [Value::Array(toks)] => Prompt::Tokens(token_ids(toks)?),
                [] => {
                    return Err(ApiError::invalid_value(
                        "prompt",
                        "'prompt' must not be empty.",
                    ))
                }
                toks if toks.iter().all(Value::is_number) => Prompt::Tokens(token_ids(toks)?),
                [_, _, ..] if a.iter().all(|v| v.is_string() || v.is_array()) => {
                    return Err(ApiError::invalid_value(
                        "prompt",
                        "Only one prompt per request is supported.",
                    ))
                }
                _ => {
                    return Err(ApiError::invalid_type(
                        "prompt",
                        EXPECTED,
                        f.get("prompt").unwrap_or(&Value::Null),
                    ))
                }
            },
            Some(v) => return Err(ApiError::invalid_type("prompt", EXPECTED, v)),
        };
        if f.bool("echo")?.unwrap_or(false) {
            return Err(ApiError::invalid_value("echo", "'echo' is not supported."));
        }
        Ok(CompletionRequest { common, prompt })
    }
}

fn token_ids(list: &[Value]) -> Result<Vec<u32>, ApiError> {
    list.iter()
        .map(|v| {
            v.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| {
                    ApiError::invalid_type(
                        "prompt",
                        "an array of token ids (non-negative integers)",
                        v,
                    )
                })
        })
        .collect()
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
    fn chat_defaults_follow_openai() {
        let r = ChatRequest::parse(&obj(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "unknown_field": [1, 2]
        })))
        .unwrap();
        assert_eq!(r.common.sampler.temperature, 1.0);
        assert_eq!(r.common.sampler.top_p, 1.0);
        assert_eq!(r.common.sampler.top_k, 0);
        assert_eq!(r.common.sampler.min_p, 0.0);
        assert_eq!(r.common.max_tokens, None);
        assert!(!r.common.stream);
        assert_eq!(r.messages, vec![ChatMessage::new("user", "hi")]);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = ChatRequest::parse(&obj(json!({
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"
        })))
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert_eq!(e.code, Some("invalid_type"));

        let e = ChatRequest::parse(&obj(json!({"messages": [{"role": 1, "content": "hi"}]})))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = ChatRequest::parse(&obj(json!({"messages": "hi"}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = ChatRequest::parse(&obj(
            json!({"messages": [{"role": "user", "content": "x"}], "stop": 3}),
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        let e = ChatRequest::parse(&obj(
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
        ))
        .unwrap_err();
        assert_eq!(e.code, Some("invalid_value"));
        let e = ChatRequest::parse(&obj(
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = ChatRequest::parse(&obj(json!({"model": 5, "messages": []}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
    }

    #[test]
    fn content_parts_stop_and_seed() {
        let r = ChatRequest::parse(&obj(json!({
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
                {"role": "assistant", "content": null},
            ],
            "stop": "\n", "seed": -1, "max_completion_tokens": 5, "max_tokens": 9,
            "stream": true, "stream_options": {"include_usage": true}, "temperature": null,
        })))
        .unwrap();
        assert_eq!(r.messages[0], ChatMessage::new("system", "be brief"));
        assert_eq!(r.messages[1], ChatMessage::new("assistant", ""));
        assert_eq!(r.common.stop, vec!["\n".to_string()]);
        assert_eq!(r.common.sampler.seed, u64::MAX);
        assert_eq!(r.common.max_tokens, Some(5));
        assert!(r.common.stream && r.common.include_usage);
        assert_eq!(r.common.sampler.temperature, 1.0);
    }

    #[test]
    fn completion_prompts() {
        let p = |v: Value| CompletionRequest::parse(&obj(json!({ "prompt": v }))).map(|r| r.prompt);
        assert_eq!(p(json!("hi")).unwrap(), Prompt::Text("hi".into()));
        assert_eq!(p(json!(["hi"])).unwrap(), Prompt::Text("hi".into()));
        assert_eq!(p(json!([1, 2, 3])).unwrap(), Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(p(json!([[4, 5]])).unwrap(), Prompt::Tokens(vec![4, 5]));
        assert_eq!(
            p(json!(["a", "b"])).unwrap_err().code,
            Some("invalid_value")
        );
        assert_eq!(p(json!([1, -2])).unwrap_err().code, Some("invalid_type"));
        assert_eq!(p(json!(7)).unwrap_err().code, Some("invalid_type"));
        assert_eq!(
            CompletionRequest::parse(&obj(json!({}))).unwrap_err().code,
            Some("missing_required_parameter")
        );
    }

    #[test]
    fn malformed_bodies() {
        assert_eq!(parse_object(b"{").unwrap_err().code, Some("invalid_json"));
        assert_eq!(parse_object(b"[1]").unwrap_err().code, Some("invalid_json"));
        assert!(parse_object(b"{}").is_ok());
    }
}
