//! The fields of structured output, tools, log-probabilities and the
//! penalties, and the check that a request names no field this server does
//! not act on.

use serde_json::{Map, Value};

use super::Fields;
use crate::chat::tools::{Tool, ToolCall, ToolChoice};
use crate::constrain::Grammar;
use crate::server::error::ApiError;

/// Fields of a chat request this server acts on (or, for `user`, that
/// cannot change the answer).
const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "stop",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
];

/// Fields of a text completion request this server acts on.
const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "stream",
    "stream_options",
    "max_tokens",
    "n",
    "best_of",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "stop",
    "logprobs",
    "echo",
    "suffix",
    "user",
];

/// Which endpoint's fields to check against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    Chat,
    Completion,
}

/// A 400 naming the first field (not `null`) this server would ignore:
/// OpenAI's own fields it does not support (`audio`, `functions`,
/// `prediction`, …) and names it does not know, rather than an answer that
/// silently differs from what was asked.
pub(crate) fn check_fields(body: &Map<String, Value>, endpoint: Endpoint) -> Result<(), ApiError> {
    let known = match endpoint {
        Endpoint::Chat => CHAT_FIELDS,
        Endpoint::Completion => COMPLETION_FIELDS,
    };
    match body
        .iter()
        .find(|(k, v)| !v.is_null() && !known.contains(&k.as_str()))
    {
        Some((k, _)) => Err(ApiError::bad_request(
            Some(k),
            Some("unsupported_parameter"),
            format!("'{k}' is not supported by this server."),
        )),
        None => Ok(()),
    }
}

/// Renames the `param` of an error from a nested parser.
/// The `function` object of a tool or call at `p`, and its `name`.
fn function_of<'a>(f: &Fields<'a>, p: &str) -> Result<(Fields<'a>, &'a str), ApiError> {
    let func = match f.get("function") {
        Some(Value::Object(m)) => Fields(m),
        Some(v) => {
            return Err(ApiError::invalid_type(
                &format!("{p}.function"),
                "an object",
                v,
            ))
        }
        None => return Err(ApiError::missing(&format!("{p}.function"))),
    };
    let name = func
        .string("name")
        .map_err(at(format!("{p}.function.name")))?
        .ok_or_else(|| ApiError::missing(&format!("{p}.function.name")))?;
    Ok((func, name))
}

fn at(param: String) -> impl FnOnce(ApiError) -> ApiError {
    move |mut e| {
        e.param = Some(param);
        e
    }
}

/// `logit_bias`: an object from token ids (as strings) to biases in
/// `[-100, 100]`.
pub(crate) fn logit_bias(f: &Fields<'_>) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match f.get("logit_bias") {
        None => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(v) => return Err(ApiError::invalid_type("logit_bias", "an object", v)),
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let param = format!("logit_bias.{k}");
        let id: u32 = k.parse().map_err(|_| {
            ApiError::invalid_value(
                "logit_bias",
                format!("Invalid key in 'logit_bias': '{k}' is not a token id."),
            )
        })?;
        let bias = match v.as_f64() {
            Some(b) if (-100.0..=100.0).contains(&b) => b as f32,
            Some(b) => {
                return Err(ApiError::invalid_value(
                    &param,
                    format!("Invalid value for '{param}': {b} is not between -100 and 100."),
                ))
            }
            None => return Err(ApiError::invalid_type(&param, "a number", v)),
        };
        out.push((id, bias));
    }
    Ok(out)
}

/// `response_format`: `text` (none), `json_object`, or `json_schema` with
/// `json_schema.schema`.
pub(crate) fn response_format(f: &Fields<'_>) -> Result<Option<Grammar>, ApiError> {
    let m = match f.get("response_format") {
        None => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(v) => return Err(ApiError::invalid_type("response_format", "an object", v)),
    };
    let rf = Fields(m);
    match rf
        .string("type")
        .map_err(at("response_format.type".into()))?
    {
        None => Err(ApiError::missing("response_format.type")),
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::json_object())),
        Some("json_schema") => {
            let js = match rf.get("json_schema") {
                None => return Err(ApiError::missing("response_format.json_schema")),
                Some(Value::Object(m)) => Fields(m),
                Some(v) => {
                    return Err(ApiError::invalid_type(
                        "response_format.json_schema",
                        "an object",
                        v,
                    ))
                }
            };
            if js
                .string("name")
                .map_err(at("response_format.json_schema.name".into()))?
                .is_none()
            {
                return Err(ApiError::missing("response_format.json_schema.name"));
            }
            // Strict or not, the schema is enforced: constrained decoding
            // cannot do less.
            js.bool("strict")
                .map_err(at("response_format.json_schema.strict".into()))?;
            match js.get("schema") {
                // OpenAI's default: any JSON object.
                None => Ok(Some(Grammar::json_object())),
                Some(s @ Value::Object(_)) => Ok(Some(Grammar::JsonSchema(s.clone()))),
                Some(v) => Err(ApiError::invalid_type(
                    "response_format.json_schema.schema",
                    "an object",
                    v,
                )),
            }
        }
        Some(other) => Err(ApiError::invalid_value(
            "response_format.type",
            format!("'{other}' is not one of 'text', 'json_object', 'json_schema'."),
        )),
    }
}

/// `tools`: function tools only.
pub(crate) fn tools(f: &Fields<'_>) -> Result<Vec<Tool>, ApiError> {
    let list = match f.get("tools") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(ApiError::invalid_type("tools", "an array", v)),
    };
    let mut out: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let p = format!("tools[{i}]");
        let Value::Object(m) = t else {
            return Err(ApiError::invalid_type(&p, "an object", t));
        };
        let tf = Fields(m);
        match tf.string("type").map_err(at(format!("{p}.type")))? {
            Some("function") => {}
            Some(other) => {
                return Err(ApiError::invalid_value(
                    &format!("{p}.type"),
                    format!("Tools of type '{other}' are not supported; only 'function' is."),
                ))
            }
            None => return Err(ApiError::missing(&format!("{p}.type"))),
        }
        let (func, name) = function_of(&tf, &p)?;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(ApiError::invalid_value(
                &format!("{p}.function.name"),
                "Function names are 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'.",
            ));
        }
        if out.iter().any(|t| t.name == name) {
            return Err(ApiError::invalid_value(
                &format!("{p}.function.name"),
                format!("Two tools are named '{name}'."),
            ));
        }
        let description = func
            .string("description")
            .map_err(at(format!("{p}.function.description")))?
            .map(str::to_owned);
        func.bool("strict")
            .map_err(at(format!("{p}.function.strict")))?;
        let parameters = match func.get("parameters") {
            None => serde_json::json!({"type": "object", "properties": {}}),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(v) => {
                return Err(ApiError::invalid_type(
                    &format!("{p}.function.parameters"),
                    "an object",
                    v,
                ))
            }
        };
        out.push(Tool {
            name: name.to_owned(),
            description,
            parameters,
        });
    }
    Ok(out)
}

/// `tool_choice`: `none`, `auto`, `required` or `{type: function,
/// function: {name}}` naming one of `tools`.
pub(crate) fn tool_choice(f: &Fields<'_>, tools: &[Tool]) -> Result<ToolChoice, ApiError> {
    let choice = match f.get("tool_choice") {
        None if tools.is_empty() => ToolChoice::None,
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid_value(
                    "tool_choice",
                    format!("'{other}' is not one of 'none', 'auto', 'required'."),
                ))
            }
        },
        Some(Value::Object(m)) => {
            let name = match m.get("function") {
                Some(Value::Object(func)) => Fields(func)
                    .string("name")
                    .map_err(at("tool_choice.function.name".into()))?
                    .ok_or_else(|| ApiError::missing("tool_choice.function.name"))?,
                _ => return Err(ApiError::missing("tool_choice.function")),
            };
            ToolChoice::Function(name.to_owned())
        }
        Some(v) => {
            return Err(ApiError::invalid_type(
                "tool_choice",
                "a string or an object",
                v,
            ))
        }
    };
    match &choice {
        ToolChoice::Required | ToolChoice::Auto if tools.is_empty() => Err(
            ApiError::invalid_value("tool_choice", "'tool_choice' needs 'tools'."),
        ),
        ToolChoice::Function(name) if !tools.iter().any(|t| &t.name == name) => Err(
            ApiError::invalid_value("tool_choice", format!("No tool named '{name}' in 'tools'.")),
        ),
        _ => Ok(choice),
    }
}

/// An assistant message's `tool_calls`.
pub(crate) fn tool_calls(i: usize, f: &Fields<'_>) -> Result<Vec<ToolCall>, ApiError> {
    let p = format!("messages[{i}].tool_calls");
    let list = match f.get("tool_calls") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(ApiError::invalid_type(&p, "an array", v)),
    };
    list.iter()
        .enumerate()
        .map(|(j, c)| {
            let p = format!("{p}[{j}]");
            let Value::Object(m) = c else {
                return Err(ApiError::invalid_type(&p, "an object", c));
            };
            let cf = Fields(m);
            let id = cf
                .string("id")
                .map_err(at(format!("{p}.id")))?
                .unwrap_or("");
            let (func, name) = function_of(&cf, &p)?;
            let arguments = func
                .string("arguments")
                .map_err(at(format!("{p}.function.arguments")))?
                .unwrap_or("{}");
            Ok(ToolCall {
                id: id.to_owned(),
                name: name.to_owned(),
                arguments: arguments.to_owned(),
            })
        })
        .collect()
}
