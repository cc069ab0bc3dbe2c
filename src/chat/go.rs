//! Ollama's chat templates: the Go `text/template` text of a model's
//! template layer, run with `gotmpl` on the data Ollama hands its templates.
//!
//! Ollama templates come in two shapes, and Ollama runs them differently
//! (described from Ollama's `template` package):
//! - **Whole conversation**: the template reads `.Messages` and is run once.
//!   Consecutive messages of one role are merged (texts joined by a blank
//!   line) and `.System` holds the system messages' text.
//! - **One turn at a time** (older templates: `.System`, `.Prompt`,
//!   `.Response` only): the template is run once per user turn with the
//!   assistant's answer as `.Response`; in the last turn the output stops
//!   where `.Response` would be printed, which is where the model writes.
//!
//! Field names are Go's (`.Role`, `.Content`, `.ToolCalls`, `.Function.Name`,
//! `.Function.Arguments`, `.Tools`); `json` prints a value as JSON with the
//! API's own field names, and `.Function.Arguments` prints as JSON text, as
//! Ollama's types do. A tool definition printed directly (not through
//! `json`) prints as Go prints a map, not as JSON: Ollama's `String` methods
//! on tool types have no counterpart here.

use std::collections::BTreeMap;
use std::sync::Arc;

use gotmpl::{Template, TemplateError, Value};

use super::ChatMessage;

/// Marks the assistant's reply in a one-turn-at-a-time template's last run;
/// the output is cut there. Private-use characters: never in a conversation
/// a template author could expect.
const REPLY_MARK: &str = "\u{F8FF}shardline-reply\u{F8FF}";
/// Key under which a struct-shaped map keeps its JSON text for `json`
/// (templates read fields by name and never range over these maps).
const JSON_KEY: &str = "\u{1}json";
/// Most `range` iterations a template may run (a runaway template is an
/// error, not a hang).
const MAX_RANGE: u64 = 100_000;

/// A compiled Ollama (Go) chat template.
#[derive(Clone)]
pub struct GoTemplate {
    template: Template,
    whole_conversation: bool,
}

impl std::fmt::Debug for GoTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoTemplate")
            .field("whole_conversation", &self.whole_conversation)
            .finish_non_exhaustive()
    }
}

impl GoTemplate {
    /// Compiles `source`.
    pub fn new(source: &str) -> Result<GoTemplate, TemplateError> {
        let template = Template::new("ollama")
            .max_range_iters(MAX_RANGE)
            .func("json", json_func)
            .func("currentDate", |_| {
                Ok(Value::from(super::strftime_now("%Y-%m-%d".to_owned())))
            })
            .parse(source)?;
        Ok(GoTemplate {
            template,
            whole_conversation: source.contains(".Messages"),
        })
    }

    /// The conversation as the model's prompt, ending where the assistant
    /// answers; `tools` are OpenAI's tool objects.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<String, TemplateError> {
        let tools = tools.map(tools_value).unwrap_or(Value::List(Arc::from([])));
        if self.whole_conversation {
            let (system, merged) = collate(messages);
            let data = map([
                ("System", Value::from(system)),
                ("Prompt", Value::from("")),
                ("Response", Value::from("")),
                (
                    "Messages",
                    Value::List(merged.iter().map(message_value).collect()),
                ),
                ("Tools", tools),
            ]);
            return self.template.execute_to_string(&data);
        }
        let mut out = String::new();
        let mut turn = Turn::default();
        for m in messages {
            match m.role.as_str() {
                "system" => {
                    if !turn.prompt.is_empty() || !turn.response.is_empty() {
                        self.run_turn(&mut out, std::mem::take(&mut turn), &tools)?;
                    }
                    turn.system = m.content.clone();
                }
                "assistant" => turn.response = m.content.clone(),
                // user, and tool answers: what the model reads next.
                _ => {
                    if !turn.response.is_empty() {
                        self.run_turn(&mut out, std::mem::take(&mut turn), &tools)?;
                    }
                    turn.prompt = m.content.clone();
                }
            }
        }
        // The last turn: the reply (or the start of it, when the
        // conversation ends with the assistant) is where the output stops.
        turn.response.push_str(REPLY_MARK);
        let last = self.turn_text(turn, &tools)?;
        match last.find(REPLY_MARK) {
            Some(at) => out.push_str(&last[..at]),
            None => out.push_str(&last),
        }
        Ok(out)
    }

    fn run_turn(&self, out: &mut String, turn: Turn, tools: &Value) -> Result<(), TemplateError> {
        out.push_str(&self.turn_text(turn, tools)?);
        Ok(())
    }

    fn turn_text(&self, turn: Turn, tools: &Value) -> Result<String, TemplateError> {
        let data = map([
            ("System", Value::from(turn.system)),
            ("Prompt", Value::from(turn.prompt)),
            ("Response", Value::from(turn.response)),
            ("Messages", Value::List(Arc::from([]))),
            ("Tools", tools.clone()),
        ]);
        self.template.execute_to_string(&data)
    }
}

/// One run of a one-turn-at-a-time template.
#[derive(Default)]
struct Turn {
    system: String,
    prompt: String,
    response: String,
}

/// The system text and the messages with runs of one role merged.
fn collate(messages: &[ChatMessage]) -> (String, Vec<ChatMessage>) {
    let mut system: Vec<&str> = Vec::new();
    let mut merged: Vec<ChatMessage> = Vec::new();
    for m in messages {
        if m.role == "system" {
            system.push(&m.content);
        }
        match merged.last_mut() {
            // Tool answers stay apart: each answers its own call.
            Some(prev) if prev.role == m.role && m.role != "tool" => {
                prev.content.push_str("\n\n");
                prev.content.push_str(&m.content);
                prev.tool_calls.extend(m.tool_calls.iter().cloned());
            }
            _ => merged.push(m.clone()),
        }
    }
    (system.join("\n\n"), merged)
}

fn map<const N: usize>(fields: [(&str, Value); N]) -> Value {
    let m: BTreeMap<Arc<str>, Value> = fields.into_iter().map(|(k, v)| (Arc::from(k), v)).collect();
    Value::Map(Arc::new(m))
}

/// A struct-shaped map: Go field names for templates, `json` for `json`.
fn struct_value<const N: usize>(fields: [(&str, Value); N], json: serde_json::Value) -> Value {
    let mut m: BTreeMap<Arc<str>, Value> =
        fields.into_iter().map(|(k, v)| (Arc::from(k), v)).collect();
    m.insert(Arc::from(JSON_KEY), Value::from(json.to_string()));
    Value::Map(Arc::new(m))
}

fn message_value(m: &ChatMessage) -> Value {
    let calls: Vec<Value> = m
        .tool_calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let args: serde_json::Value = serde_json::from_str(&c.arguments)
                .unwrap_or_else(|_| serde_json::Value::String(c.arguments.clone()));
            let function = struct_value(
                [
                    ("Index", Value::Int(i as i64)),
                    ("Name", Value::from(c.name.clone())),
                    // Ollama's arguments print as JSON.
                    ("Arguments", Value::from(args.to_string())),
                ],
                serde_json::json!({"index": i, "name": c.name, "arguments": args}),
            );
            struct_value(
                [("Function", function)],
                serde_json::json!({"function": {"index": i, "name": c.name, "arguments": args}}),
            )
        })
        .collect();
    let json = serde_json::json!({"role": m.role, "content": m.content});
    struct_value(
        [
            ("Role", Value::from(m.role.clone())),
            ("Content", Value::from(m.content.clone())),
            ("ToolCalls", Value::List(calls.into())),
            (
                "ToolCallID",
                Value::from(m.tool_call_id.clone().unwrap_or_default()),
            ),
        ],
        json,
    )
}

/// OpenAI's tool objects with Go field names on the outer two levels
/// (`.Type`, `.Function.Name`, `.Function.Description`,
/// `.Function.Parameters`); the parameters' schema keeps its own keys.
fn tools_value(tools: &serde_json::Value) -> Value {
    let Some(list) = tools.as_array() else {
        return Value::List(Arc::from([]));
    };
    let items: Vec<Value> = list
        .iter()
        .map(|t| {
            let f = &t["function"];
            let text =
                |v: &serde_json::Value| Value::from(v.as_str().unwrap_or_default().to_owned());
            let function = struct_value(
                [
                    ("Name", text(&f["name"])),
                    ("Description", text(&f["description"])),
                    ("Parameters", from_json(&f["parameters"])),
                ],
                f.clone(),
            );
            struct_value(
                [
                    (
                        "Type",
                        Value::from(t["type"].as_str().unwrap_or("function").to_owned()),
                    ),
                    ("Function", function),
                ],
                t.clone(),
            )
        })
        .collect();
    Value::List(items.into())
}

fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(f)) => Value::Float(f),
            _ => Value::Nil,
        },
        serde_json::Value::String(s) => Value::from(s.clone()),
        serde_json::Value::Array(a) => Value::List(a.iter().map(from_json).collect()),
        serde_json::Value::Object(o) => Value::Map(Arc::new(
            o.iter()
                .map(|(k, v)| (Arc::from(k.as_str()), from_json(v)))
                .collect(),
        )),
    }
}

fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Nil => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::Uint(u) => serde_json::Value::from(*u),
        Value::Float(f) => serde_json::Value::from(*f),
        Value::String(s) => serde_json::Value::String(s.to_string()),
        Value::List(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Map(m) => match m.get(JSON_KEY) {
            Some(Value::String(text)) => {
                serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
            }
            _ => serde_json::Value::Object(
                m.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect(),
            ),
        },
        // Functions and anything else have no JSON form.
        _ => serde_json::Value::Null,
    }
}

/// `json VALUE`: the value as compact JSON text.
fn json_func(args: &[Value]) -> gotmpl::Result<Value> {
    let text = match args {
        [v] => to_json(v).to_string(),
        _ => serde_json::Value::Array(args.iter().map(to_json).collect()).to_string(),
    };
    Ok(Value::from(text))
}

#[cfg(test)]
#[path = "go_tests.rs"]
mod tests;
