//! Chat templates: rendering a conversation into a prompt with the Jinja
//! template a GGUF file carries in `tokenizer.chat_template`.
//!
//! Templates are rendered with `minijinja`, set up the way Hugging Face's
//! `apply_chat_template` sets up Jinja: `trim_blocks` and `lstrip_blocks` on,
//! the variables `messages` (a list of `{role, content}` maps),
//! `add_generation_prompt`, `bos_token` and `eos_token`, the functions
//! `raise_exception(message)` and `strftime_now(format)`, the `tojson`
//! filter, `break`/`continue` in loops, and Python string/list/dict methods
//! (`.strip()`, `.startswith()`, `.items()`, …).
//!
//! A file without a template is [`ChatError::NoTemplate`]; a caller that
//! wants a fallback can use [`ChatTemplate::chatml`] explicitly, or an
//! Ollama model's Go template ([`ChatTemplate::go`], module [`go`]).
//!
//! llama.cpp's own `llama_chat_apply_template` does not run Jinja: it guesses
//! the template family from the text and formats with built-in code, so it
//! ignores anything a template adds beyond the family's basic shape (SmolLM2's
//! default system prompt, for one).

pub mod go;
pub mod tools;

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::gguf::Gguf;

/// The metadata key holding the default template.
pub const TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// ChatML, for models that need a template and carry none.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat";
/// Prefix of the error detail `raise_exception` produces, to tell it apart.
const RAISED: &str = "raise_exception: ";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// Who speaks, e.g. `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
    /// An assistant's calls of tools (templates see OpenAI's shape, the
    /// arguments as an object: `{id, type: "function", function: {name,
    /// arguments}}`); absent when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<tools::ToolCall>,
    /// A tool's answer: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message from `role` with text `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// Why a template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The model file has no `tokenizer.chat_template`.
    #[error("the model file has no chat template ('{TEMPLATE_KEY}')")]
    NoTemplate,
    /// The template or token list in the metadata has the wrong type.
    #[error("chat template metadata: {0}")]
    Gguf(#[from] crate::gguf::GgufError),
    /// The template is not valid Jinja.
    #[error("chat template does not parse: {0:#}")]
    Syntax(#[source] Error),
    /// Rendering the template failed for a reason other than `raise_exception`.
    #[error("chat template failed: {0:#}")]
    Render(#[source] Error),
    /// The template called `raise_exception` (e.g. roles out of order).
    #[error("chat template raised: {0}")]
    Raised(String),
    /// An Ollama (Go) template does not parse or failed to run.
    #[error("Ollama (Go) chat template: {0}")]
    Go(#[source] gotmpl::TemplateError),
}

/// A compiled chat template with the special-token texts it may use.
#[derive(Debug)]
pub struct ChatTemplate {
    engine: Engine,
    source: String,
    bos_token: String,
    eos_token: String,
}

/// What runs the template.
#[derive(Debug)]
enum Engine {
    Jinja(Environment<'static>),
    Go(go::GoTemplate),
}

/// A chat template's text and its language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// Jinja, as Hugging Face and `tokenizer.chat_template` have it.
    Jinja(String),
    /// Go `text/template`, as an Ollama model's template layer has it.
    Go(String),
}

impl ChatTemplate {
    /// The template in `tokenizer.chat_template`, with `bos_token` and
    /// `eos_token` the texts of the file's BOS and EOS tokens (empty where
    /// the file names none).
    pub fn from_gguf(gguf: &Gguf) -> Result<ChatTemplate, ChatError> {
        let source: Option<&str> = gguf.get_opt(TEMPLATE_KEY)?;
        let source = source.ok_or(ChatError::NoTemplate)?;
        let (bos, eos) = special_texts(gguf)?;
        ChatTemplate::new(source, &bos, &eos)
    }

    /// The file's own template, or `fallback` where the file has none.
    pub fn from_gguf_or(
        gguf: &Gguf,
        fallback: Option<&TemplateSource>,
    ) -> Result<ChatTemplate, ChatError> {
        match (ChatTemplate::from_gguf(gguf), fallback) {
            (Err(ChatError::NoTemplate), Some(TemplateSource::Go(text))) => ChatTemplate::go(text),
            (Err(ChatError::NoTemplate), Some(TemplateSource::Jinja(text))) => {
                let (bos, eos) = special_texts(gguf)?;
                ChatTemplate::new(text, &bos, &eos)
            }
            (r, _) => r,
        }
    }

    /// Compiles an Ollama (Go) template.
    pub fn go(source: &str) -> Result<ChatTemplate, ChatError> {
        Ok(ChatTemplate {
            engine: Engine::Go(go::GoTemplate::new(source).map_err(ChatError::Go)?),
            source: source.to_owned(),
            bos_token: String::new(),
            eos_token: String::new(),
        })
    }

    /// The template's text and language.
    pub fn template_source(&self) -> TemplateSource {
        match self.engine {
            Engine::Jinja(_) => TemplateSource::Jinja(self.source.clone()),
            Engine::Go(_) => TemplateSource::Go(self.source.clone()),
        }
    }

    /// Compiles a Jinja `source`.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(ChatError::Syntax)?;
        Ok(ChatTemplate {
            engine: Engine::Jinja(env),
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// ChatML (`<|im_start|>role\ncontent<|im_end|>\n`), for a file without
    /// a template.
    pub fn chatml() -> ChatTemplate {
        match ChatTemplate::new(CHATML_TEMPLATE, "", "") {
            Ok(t) => t,
            // The built-in template is fixed and known to parse.
            Err(e) => unreachable!("built-in ChatML template: {e}"),
        }
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template reads a `tools` variable (its family has its
    /// own way to show tools and calls).
    pub fn knows_tools(&self) -> bool {
        match self.engine {
            Engine::Jinja(_) => self.source.contains("tools"),
            Engine::Go(_) => self.source.contains(".Tools"),
        }
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends
    /// where the assistant's reply begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] with `tools` (OpenAI's tool objects) in the
    /// template's `tools` variable.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let env = match &self.engine {
            Engine::Jinja(env) => env,
            // Go templates always end where the assistant answers.
            Engine::Go(t) => return t.render(messages, tools).map_err(ChatError::Go),
        };
        let template = env.get_template(TEMPLATE_NAME).map_err(ChatError::Render)?;
        let ctx = minijinja::context! {
            messages => messages,
            tools => tools.map(Value::from_serialize),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        template.render(ctx).map_err(|e| match raised_message(&e) {
            Some(msg) => ChatError::Raised(msg),
            None => ChatError::Render(e),
        })
    }
}

/// The texts of the file's BOS and EOS tokens (empty where it names none).
fn special_texts(gguf: &Gguf) -> Result<(String, String), ChatError> {
    let tokens: Option<&[String]> = gguf.get_opt("tokenizer.ggml.tokens")?;
    let text_of = |key: &str| -> String {
        let id = gguf.metadata(key).and_then(|v| v.as_unsigned());
        match (tokens, id) {
            (Some(tokens), Some(id)) => usize::try_from(id)
                .ok()
                .and_then(|i| tokens.get(i))
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        }
    };
    Ok((
        text_of("tokenizer.ggml.bos_token_id"),
        text_of("tokenizer.ggml.eos_token_id"),
    ))
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

/// The message of a `raise_exception` call somewhere in `e`'s chain.
fn raised_message(e: &Error) -> Option<String> {
    let mut err: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cur) = err {
        if let Some(me) = cur.downcast_ref::<Error>() {
            if let Some(msg) = me.detail().and_then(|d| d.strip_prefix(RAISED)) {
                return Some(msg.to_owned());
            }
        }
        err = cur.source();
    }
    None
}

/// `tojson(value, indent=None, sort_keys=False)` as Hugging Face defines
/// it: Python's `json.dumps` with `ensure_ascii=False`, so `", "` and `": "`
/// between items, or one item a line with `indent`.
fn tojson(value: &Value, indent: Option<usize>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(n) => Some(n),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(value, indent, sort_keys, 0, &mut out)?;
    Ok(Value::from(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    use minijinja::value::ValueKind;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, sort_keys, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                let name = key.as_str().map_or_else(|| key.to_string(), str::to_owned);
                out.push_str(&json_scalar(&Value::from(name))?);
                out.push_str(": ");
                write_json(&v.get_item(key)?, indent, sort_keys, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        _ => out.push_str(&json_scalar(v)?),
    }
    Ok(())
}

fn json_scalar(v: &Value) -> Result<String, Error> {
    serde_json::to_string(v)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))
}

/// `strftime_now(format)`: the current UTC time formatted with the common
/// `strftime` directives (`%Y %m %d %e %H %I %M %S %p %y %j %A %a %B %b %h
/// %F %T %D %%`); others are kept as written.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub(crate) fn strftime(format: &str, unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    // 1970-01-01 was a Thursday.
    let weekday = (days + 4).rem_euclid(7) as usize;
    const CUMULATIVE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUMULATIVE[(month - 1) as usize] + day + u32::from(month > 2 && is_leap(year));
    let month_name = MONTHS[(month - 1) as usize];
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let s = match d {
            'Y' => year.to_string(),
            'y' => format!("{:02}", year.rem_euclid(100)),
            'm' => format!("{month:02}"),
            'd' => format!("{day:02}"),
            'e' => format!("{day:2}"),
            'H' => format!("{hour:02}"),
            'I' => format!("{hour12:02}"),
            'M' => format!("{minute:02}"),
            'S' => format!("{second:02}"),
            'p' => (if hour < 12 { "AM" } else { "PM" }).to_owned(),
            'j' => format!("{yday:03}"),
            'A' => WEEKDAYS[weekday].to_owned(),
            'a' => WEEKDAYS[weekday][..3].to_owned(),
            'B' => month_name.to_owned(),
            'b' | 'h' => month_name[..3].to_owned(),
            'F' => format!("{year}-{month:02}-{day:02}"),
            'T' => format!("{hour:02}:{minute:02}:{second:02}"),
            'D' => format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100)),
            '%' => "%".to_owned(),
            other => format!("%{other}"),
        };
        out.push_str(&s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "Bye"),
        ]
    }

    #[test]
    fn chatml_renders() {
        let t = ChatTemplate::chatml();
        let out = t.render(&conv()[..2], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t.render(&conv()[..2], false).unwrap();
        assert!(out.ends_with("Hi<|im_end|>\n"));
    }

    #[test]
    fn syntax_error_is_typed() {
        let err = ChatTemplate::new("{% for m in messages %}{{ m.content }", "", "").unwrap_err();
        assert!(matches!(err, ChatError::Syntax(_)), "{err:?}");
        let err = ChatTemplate::new("{% if %}", "", "").unwrap_err();
        assert!(matches!(err, ChatError::Syntax(_)), "{err:?}");
    }

    #[test]
    fn raise_exception_is_typed() {
        let src = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('System first!') }}{% endif %}ok";
        let t = ChatTemplate::new(src, "", "").unwrap();
        match t.render(&conv()[1..], false) {
            Err(ChatError::Raised(msg)) => assert_eq!(msg, "System first!"),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.render(&conv(), false).unwrap(), "ok");
    }

    #[test]
    fn render_error_is_typed() {
        let t = ChatTemplate::new("{{ messages[0].content + 1 }}", "", "").unwrap();
        assert!(matches!(
            t.render(&conv(), false),
            Err(ChatError::Render(_))
        ));
    }

    #[test]
    fn hf_helpers() {
        let src = concat!(
            "{{ bos_token }}",
            "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}",
            "[{{ m.role | upper }}:{{ m.content.strip() }}:{{ m.content.startswith(' x') }}]",
            "{% endfor %}",
            "{{ messages[0] | tojson }}",
            "{% if add_generation_prompt %}<gen>{% endif %}{{ eos_token }}",
        );
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let msgs = vec![
            ChatMessage::new("user", " x y "),
            ChatMessage::new("assistant", "z"),
            ChatMessage::new("user", "never"),
        ];
        let out = t.render(&msgs, true).unwrap();
        assert_eq!(
            out,
            r#"<s>[USER:x y:True][ASSISTANT:z:False]{"role": "user", "content": " x y "}<gen></s>"#
        );
    }

    #[test]
    fn tojson_is_python_style() {
        let t = ChatTemplate::new(
            "{{ {'b': [1, 'é', none, true], 'a': {}} | tojson }}|{{ [1, {'k': 2}] | tojson(indent=2) }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\"b\": [1, \"é\", null, true], \"a\": {}}|[\n  1,\n  {\n    \"k\": 2\n  }\n]|{\"a\": 2, \"b\": 1}"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks() {
        let src = "{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(t.render(&conv()[..2], false).unwrap(), "Be brief.\nHi\n");
    }

    #[test]
    fn strftime_formats() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(
            strftime("%A %B %j %I%p %%", t),
            "Thursday February 060 01PM %"
        );
        assert_eq!(strftime("%F %T %q", 0), "1970-01-01 00:00:00 %q");
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
        let year: i64 = t.render(&[], false).unwrap().parse().unwrap();
        assert!(year >= 2024);
    }
}
