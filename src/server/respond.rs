//! Answers in OpenAI's shapes: whole (`chat.completion`, `text_completion`)
//! here, streamed in [`super::stream`]. Both build their choices, tool calls
//! and log-probabilities with the helpers here.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use crate::chat::tools::{parse_call, Tool, ToolChoice, ToolFormat};
use crate::engine::{Engine, Event, Finish, TokenStream, Usage};
use crate::sample::TokenLogprob;

/// Which endpoint is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// The tools of a chat request, to read calls back from the output.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    /// The tools offered.
    pub tools: Vec<Tool>,
    /// How calls are written.
    pub format: ToolFormat,
    /// Whether a call was asked for.
    pub choice: ToolChoice,
}

impl ToolSpec {
    /// Whether the output is to be read as a call (not `tool_choice:
    /// none`).
    pub fn active(&self) -> bool {
        self.choice != ToolChoice::None && !self.tools.is_empty()
    }
}

/// What every object of one answer repeats, and how to build its choices.
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
    /// Chat with tools: calls are read back from the output.
    pub tools: Option<ToolSpec>,
    /// Log-probabilities asked for (the number of alternatives).
    pub logprobs: Option<usize>,
    /// Completions with `echo`: the prompt text, put first.
    pub echo: Option<String>,
    /// For the tokens' texts.
    pub engine: Engine,
}

/// OpenAI's `finish_reason`.
pub(super) fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

/// Usage of an answer: the prompt once, the completions of every choice.
pub(super) fn usage_json(usages: &[Usage]) -> Value {
    let prompt = usages.first().map_or(0, |u| u.prompt_tokens);
    let completion: usize = usages.iter().map(|u| u.completion_tokens).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// A fresh tool call id.
pub(super) fn call_id(answer_id: &str, index: usize) -> String {
    let tail = answer_id.rsplit('-').next().unwrap_or(answer_id);
    format!("call_{tail}_{index}")
}

impl Meta {
    /// A token's text (lossy where it splits a character) and bytes.
    fn token(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self.engine.tokenizer().token_to_piece(id, false);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// Chat's `logprobs.content` entries.
    pub(super) fn chat_logprobs(&self, lps: &[TokenLogprob]) -> Value {
        let entry = |id: u32, lp: f32| {
            let (token, bytes) = self.token(id);
            json!({"token": token, "logprob": lp, "bytes": bytes})
        };
        let content: Vec<Value> = lps
            .iter()
            .map(|t| {
                let mut e = entry(t.id, t.logprob);
                e["top_logprobs"] =
                    Value::Array(t.top.iter().map(|&(id, lp)| entry(id, lp)).collect());
                e
            })
            .collect();
        json!({"content": content, "refusal": null})
    }

    /// The legacy completions `logprobs` object; `offset` is where the
    /// first token's text starts in the choice's text.
    pub(super) fn completion_logprobs(&self, lps: &[TokenLogprob], mut offset: usize) -> Value {
        let (mut tokens, mut lp, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
        for t in lps {
            let (text, _) = self.token(t.id);
            offsets.push(offset);
            offset += text.chars().count();
            tokens.push(text);
            lp.push(t.logprob);
            let mut top = Map::new();
            for &(id, l) in &t.top {
                top.entry(self.token(id).0).or_insert(json!(l));
            }
            tops.push(Value::Object(top));
        }
        json!({"tokens": tokens, "token_logprobs": lp, "top_logprobs": tops, "text_offset": offsets})
    }

    /// The call in a chat output, when it is one: `(name, arguments)`.
    pub(super) fn call_in(&self, text: &str) -> Option<(String, String)> {
        let spec = self.tools.as_ref().filter(|s| s.active())?;
        parse_call(text, &spec.tools, &spec.format)
    }

    /// One whole choice.
    fn choice(&self, index: usize, text: String, lps: &[TokenLogprob], usage: &Usage) -> Value {
        match self.kind {
            Kind::Chat => {
                let logprobs = match (self.logprobs, self.call_in(&text)) {
                    (Some(_), None) => self.chat_logprobs(lps),
                    _ => Value::Null,
                };
                let (message, finish) = match self.call_in(&text) {
                    Some((name, arguments)) => (
                        json!({"role": "assistant", "content": null, "tool_calls": [{
                            "id": call_id(&self.id, index),
                            "type": "function",
                            "function": {"name": name, "arguments": arguments},
                        }]}),
                        "tool_calls",
                    ),
                    None => (
                        json!({"role": "assistant", "content": text}),
                        finish_reason(usage.finish),
                    ),
                };
                json!({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish})
            }
            Kind::Completion => {
                let echo = self.echo.as_deref().unwrap_or("");
                let logprobs = match self.logprobs {
                    Some(_) => self.completion_logprobs(lps, echo.chars().count()),
                    None => Value::Null,
                };
                json!({
                    "index": index,
                    "text": format!("{echo}{text}"),
                    "logprobs": logprobs,
                    "finish_reason": finish_reason(usage.finish),
                })
            }
        }
    }
}

/// One generation's text, log-probabilities and usage.
async fn collect(mut tokens: TokenStream) -> Result<(String, Vec<TokenLogprob>, Usage), ApiError> {
    let mut text = String::new();
    let mut lps = Vec::new();
    while let Some(ev) = tokens.next().await {
        lps.extend(tokens.take_logprobs());
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done(usage) => return Ok((text, lps, usage)),
            Event::Error(e) => {
                return Err(ApiError::unavailable(format!("Generation failed: {e}")))
            }
        }
    }
    Err(ApiError::unavailable(
        "Generation failed: the engine stopped.",
    ))
}

/// Waits for every choice and answers with one JSON object. A lost server
/// is a 503.
pub async fn whole(meta: Meta, streams: Vec<TokenStream>) -> Result<Response, ApiError> {
    let results = futures_util::future::join_all(streams.into_iter().map(collect)).await;
    let mut choices = Vec::with_capacity(results.len());
    let mut usages = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        let (text, lps, usage) = r?;
        choices.push(meta.choice(i, text, &lps, &usage));
        usages.push(usage);
    }
    let object = match meta.kind {
        Kind::Chat => "chat.completion",
        Kind::Completion => "text_completion",
    };
    Ok(Json(json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage_json(&usages),
    }))
    .into_response())
}
