//! Tools (function calling): showing the model the tools it may call,
//! constraining its answer to a well-formed call, and reading the call back.
//!
//! A call in the model's output is one JSON object, `{"name": NAME,
//! "arguments": ARGS}`, with `ARGS` valid under the tool's parameter schema;
//! decoding is constrained so that it is ([`grammar`]). Families whose
//! template wraps calls in tags (Hermes and Qwen's `<tool_call>`) get the
//! object inside those tags ([`ToolFormat`]).
//!
//! Templates that read `tools` (Qwen2.5, Llama 3.1, Hermes, …) are given
//! the tools and the calls in OpenAI's shape and show them their own way.
//! For templates that do not (SmolLM2's, plain ChatML), [`prepare`] puts a
//! description of the tools in the system message (added first when there
//! is none), written as [`system_text`] shows: each tool as one JSON line
//! `{"name", "description", "parameters"}`, then how to call one. An
//! assistant message with calls shows them as the model would have written
//! them; a `tool` message keeps its role and content.

use serde::ser::SerializeStruct as _;
use serde_json::{json, Value};

use super::ChatMessage;
use crate::constrain::{compact_options, Grammar};

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// JSON schema of its arguments (an object schema).
    pub parameters: Value,
}

/// A call of a tool, made by the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// OpenAI's call id (`call_…`), which the tool's answer names.
    pub id: String,
    /// The tool called.
    pub name: String,
    /// Its arguments: JSON text of an object.
    pub arguments: String,
}

impl serde::Serialize for ToolCall {
    /// OpenAI's shape, the arguments as an object (what Hugging Face
    /// templates expect), or as text when they are not JSON.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let arguments: Value = serde_json::from_str(&self.arguments)
            .unwrap_or_else(|_| Value::String(self.arguments.clone()));
        let mut st = s.serialize_struct("ToolCall", 3)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("type", "function")?;
        st.serialize_field(
            "function",
            &json!({"name": self.name, "arguments": arguments}),
        )?;
        st.end()
    }
}

/// Whether and how the model is to call a tool (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// Never: plain text, unconstrained.
    None,
    /// Text or one call, as the model likes (the default with tools).
    #[default]
    Auto,
    /// One call of any tool.
    Required,
    /// One call of this tool.
    Function(String),
}

/// How a call is written in a family's output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolFormat {
    /// Text before the call's JSON.
    pub open: String,
    /// Text after it.
    pub close: String,
}

impl ToolFormat {
    /// The format a chat template asks for: Hermes-style `<tool_call>` tags
    /// when it names them, a bare JSON object otherwise.
    pub fn for_template(source: &str) -> ToolFormat {
        if source.contains("<tool_call>") {
            ToolFormat {
                open: "<tool_call>\n".into(),
                close: "\n</tool_call>".into(),
            }
        } else {
            ToolFormat::default()
        }
    }
}

/// The JSON schema of one call of `tool`.
fn call_schema(tool: &Tool) -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"const": tool.name},
            "arguments": tool.parameters,
        },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// The grammar of the answer: `None` when it is free (no tools, or
/// `tool_choice` none); one call for `required` or a named function; for
/// `auto`, either one call or text that does not begin like one.
pub fn grammar(tools: &[Tool], choice: &ToolChoice, format: &ToolFormat) -> Option<Grammar> {
    let chosen: Vec<&Tool> = match choice {
        ToolChoice::None => return None,
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    if chosen.is_empty() {
        return None;
    }
    let mut schema = if chosen.len() == 1 {
        call_schema(chosen[0])
    } else {
        json!({"anyOf": chosen.iter().map(|t| call_schema(t)).collect::<Vec<_>>()})
    };
    schema["x-guidance"] = compact_options();
    if *choice != ToolChoice::Auto && format.open.is_empty() && format.close.is_empty() {
        return Some(Grammar::JsonSchema(schema));
    }
    let call = format!(
        "{} %json {} {}",
        lark_literal(&format.open),
        schema,
        lark_literal(&format.close)
    );
    let lark = if *choice == ToolChoice::Auto {
        // Text may not start the way a call does (nor with white space,
        // after which a call would go unconstrained).
        let first = format.open.chars().next().unwrap_or('{');
        let not_first = regex_class_escape(first);
        format!("start: call | TEXT\ncall: {call}\nTEXT: /[^{not_first}\\s](.|\\n)*/\n")
    } else {
        format!("start: {call}\n")
    };
    Some(Grammar::Lark(lark))
}

/// A Lark string literal of `s` (`""` for nothing).
fn lark_literal(s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    // JSON string escapes are Lark's too.
    Value::String(s.to_owned()).to_string()
}

fn regex_class_escape(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        c.to_string()
    } else {
        format!("\\{c}")
    }
}

/// The system-message text that describes `tools` to a model whose
/// template does not know tools.
pub fn system_text(tools: &[Tool], choice: &ToolChoice, format: &ToolFormat) -> String {
    let mut out = String::from(
        "You can call functions. Each one is a JSON object with its name, description and the JSON schema of its arguments:\n",
    );
    for t in tools {
        let line = json!({"name": t.name, "description": t.description.clone().unwrap_or_default(), "parameters": t.parameters});
        out.push_str(&spaced_json(&line));
        out.push('\n');
    }
    let how = format!(
        "To call a function, answer with only {}{{\"name\": <function name>, \"arguments\": <arguments object>}}{}.",
        format.open, format.close
    );
    out.push_str(&how);
    out.push_str(match choice {
        ToolChoice::Auto => " Otherwise answer in plain text.",
        _ => " Call a function now.",
    });
    out
}

/// The conversation as the template will see it. With a template that
/// knows tools it is unchanged (the tools go in its `tools` variable, see
/// [`openai_tools`]); otherwise the tools are described in the system
/// message and earlier calls are written out as the model writes them.
pub fn prepare(
    messages: &[ChatMessage],
    tools: &[Tool],
    choice: &ToolChoice,
    format: &ToolFormat,
    template_knows_tools: bool,
) -> Vec<ChatMessage> {
    if template_knows_tools {
        return messages.to_vec();
    }
    let mut out: Vec<ChatMessage> = messages
        .iter()
        .map(|m| {
            if m.tool_calls.is_empty() {
                return m.clone();
            }
            let mut content = m.content.clone();
            for call in &m.tool_calls {
                let args: Value = serde_json::from_str(&call.arguments)
                    .unwrap_or_else(|_| Value::String(call.arguments.clone()));
                if !content.is_empty() {
                    content.push('\n');
                }
                content.push_str(&format.open);
                content.push_str(&spaced_json(&json!({"name": call.name, "arguments": args})));
                content.push_str(&format.close);
            }
            ChatMessage::new(m.role.clone(), content)
        })
        .collect();
    if tools.is_empty() || *choice == ToolChoice::None {
        return out;
    }
    let text = system_text(tools, choice, format);
    match out.first_mut() {
        Some(first) if first.role == "system" => {
            first.content = format!("{}\n\n{text}", first.content);
        }
        _ => out.insert(0, ChatMessage::new("system", text)),
    }
    out
}

/// JSON laid out as constrained decoding writes it: `", "` between items
/// and `": "` after keys (Python's `json.dumps`).
pub fn spaced_json(v: &Value) -> String {
    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    // Serializing a Value into memory cannot fail.
    let _ = serde::Serialize::serialize(v, &mut ser);
    String::from_utf8(out).unwrap_or_default()
}

/// The tools in OpenAI's shape, for a template's `tools` variable.
pub fn openai_tools(tools: &[Tool]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name,
                    "description": t.description.clone().unwrap_or_default(),
                    "parameters": t.parameters,
                }})
            })
            .collect(),
    )
}

/// Reads a call back from the model's output: `Some((name, arguments as
/// JSON text))` when the whole output (white space aside) is one call in
/// `format` naming one of `tools`, `None` when it is text.
pub fn parse_call(output: &str, tools: &[Tool], format: &ToolFormat) -> Option<(String, String)> {
    let body = output
        .trim()
        .strip_prefix(format.open.trim())?
        .strip_suffix(format.close.trim())?
        .trim();
    let Value::Object(mut call) = serde_json::from_str::<Value>(body).ok()? else {
        return None;
    };
    let Some(Value::String(name)) = call.remove("name") else {
        return None;
    };
    if !tools.iter().any(|t| t.name == name) {
        return None;
    }
    let args = call.remove("arguments").unwrap_or_else(|| json!({}));
    Some((name, args.to_string()))
}

#[cfg(test)]
mod tests;
