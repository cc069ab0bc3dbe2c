//! Request bodies of the OpenAI endpoints, read field by field from JSON so
//! that a field of the wrong type names itself (`param`) in the 400 answer.
//! A field this server does not act on is a 400 naming it, as OpenAI
//! answers fields it does not know ([`structured::check_fields`]); `null`
//! counts as absent.

mod structured;

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::chat::tools::{Tool, ToolChoice};
use crate::chat::ChatMessage;
use crate::constrain::Grammar;
use crate::engine::Prompt;
use crate::sample::{SamplerConfig, MAX_TOP_LOGPROBS};
use structured::Endpoint;

/// Most choices one request may ask for (`n`).
pub const MAX_N: usize = 16;

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
    /// Choices to generate (`n`), each its own sequence.
    pub n: usize,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// What the output must follow (`response_format`).
    pub response_format: Option<Grammar>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// Shared settings.
    pub common: Common,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Functions the model may call.
    pub tools: Vec<Tool>,
    /// Whether it is to call one.
    pub tool_choice: ToolChoice,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// Shared settings.
    pub common: Common,
    /// Text or token ids.
    pub prompt: Prompt,
    /// Put the prompt before the completion in the answer.
    pub echo: bool,
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
        let n = f.count("n", 1)?.unwrap_or(1);
        if n > MAX_N {
            return Err(ApiError::invalid_value(
                "n",
                format!("Invalid value for 'n': at most {MAX_N} choices, got {n}."),
            ));
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
        if let Some(p) = f.number("presence_penalty", -2.0, 2.0)? {
            sampler.presence_penalty = p;
        }
        if let Some(p) = f.number("frequency_penalty", -2.0, 2.0)? {
            sampler.frequency_penalty = p;
        }
        sampler.logit_bias = structured::logit_bias(f)?;
        sampler.seed = match f.integer("seed")? {
            // Any integer OpenAI accepts (i64) maps onto a distinct u64.
            Some(s) => s as u64,
            None => random_seed(),
        };
        let stop = f.stop("stop")?;
        let response_format = structured::response_format(f)?;
        Ok(Common {
            model,
            stream,
            include_usage,
            max_tokens,
            sampler,
            stop,
            n,
            logprobs: None,
            response_format,
        })
    }
}

impl ChatRequest {
    /// Reads a chat request.
    pub fn parse(body: &Map<String, Value>) -> Result<ChatRequest, ApiError> {
        structured::check_fields(body, Endpoint::Chat)?;
        let f = Fields(body);
        let mut common = Common::parse(&f)?;
        // `logprobs: true` with `top_logprobs` alternatives (0 to 20).
        let top = f.count("top_logprobs", 0)?;
        if top.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(ApiError::invalid_value(
                "top_logprobs",
                format!("Invalid value for 'top_logprobs': at most {MAX_TOP_LOGPROBS}."),
            ));
        }
        match (f.bool("logprobs")?.unwrap_or(false), top) {
            (true, top) => common.logprobs = Some(top.unwrap_or(0)),
            (false, Some(_)) => {
                return Err(ApiError::invalid_value(
                    "top_logprobs",
                    "'top_logprobs' needs 'logprobs' set to true.",
                ))
            }
            (false, None) => {}
        }
        f.bool("parallel_tool_calls")?;
        f.string("user")?;
        let tools = structured::tools(&f)?;
        let tool_choice = structured::tool_choice(&f, &tools)?;
        if common.response_format.is_some() && !matches!(tool_choice, ToolChoice::None) {
            return Err(ApiError::invalid_value(
                "response_format",
                "'response_format' cannot be combined with 'tools' unless 'tool_choice' is 'none'.",
            ));
        }
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
        Ok(ChatRequest {
            common,
            messages,
            tools,
            tool_choice,
        })
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
    let mut msg = ChatMessage::new(role, content);
    msg.tool_calls = structured::tool_calls(i, &f)?;
    if !msg.tool_calls.is_empty() && role != "assistant" {
        return Err(ApiError::invalid_value(
            &at("tool_calls"),
            "Only assistant messages carry 'tool_calls'.",
        ));
    }
    msg.tool_call_id = f.string("tool_call_id")?.map(str::to_owned);
    if role == "tool" && msg.tool_call_id.is_none() {
        return Err(ApiError::missing(&at("tool_call_id")));
    }
    Ok(msg)
}

impl CompletionRequest {
    /// Reads a text completion request.
    pub fn parse(body: &Map<String, Value>) -> Result<CompletionRequest, ApiError> {
        structured::check_fields(body, Endpoint::Completion)?;
        let f = Fields(body);
        let mut common = Common::parse(&f)?;
        // The legacy `logprobs`: a count of alternatives (0 to 5 for
        // OpenAI; up to 20 here).
        if let Some(n) = f.count("logprobs", 0)? {
            if n > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid_value(
                    "logprobs",
                    format!("Invalid value for 'logprobs': at most {MAX_TOP_LOGPROBS}."),
                ));
            }
            common.logprobs = Some(n);
        }
        if let Some(b) = f.count("best_of", 1)? {
            if b != common.n {
                return Err(ApiError::invalid_value(
                    "best_of",
                    "Only 'best_of' equal to 'n' is supported.",
                ));
            }
        }
        if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_value(
                "suffix",
                "'suffix' is not supported.",
            ));
        }
        f.string("user")?;
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
        let echo = f.bool("echo")?.unwrap_or(false);
        if echo && common.logprobs.is_some() {
            // The prompt's own log-probabilities are not computed.
            return Err(ApiError::invalid_value(
                "echo",
                "'echo' together with 'logprobs' is not supported.",
            ));
        }
        Ok(CompletionRequest {
            common,
            prompt,
            echo,
        })
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
mod tests;
