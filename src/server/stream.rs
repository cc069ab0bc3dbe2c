//! Answers streamed as server-sent events: `chat.completion.chunk` or
//! `text_completion` objects, ending with `data: [DONE]`.
//!
//! With `n` > 1 the choices' chunks interleave as they come, each naming its
//! `index`. A chat choice that is a tool call is held back until it is
//! complete (with `tool_choice` `auto`, from its first character on: text
//! never starts like a call), then sent in OpenAI's delta format: the call's
//! id and name with empty arguments, then the arguments, then
//! `finish_reason: "tool_calls"`.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt as _};
use serde_json::{json, Value};

use super::error::ApiError;
use super::respond::{call_id, finish_reason, usage_json, Kind, Meta};
use crate::chat::tools::ToolChoice;
use crate::engine::{Event, TokenStream, Usage};
use crate::sample::TokenLogprob;

/// How often an idle stream (queued, or a long prompt) sends a comment line,
/// which also notices a client that went away.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// Whether a chat choice's text goes out as it comes or is held as a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Sent as content.
    Text,
    /// Held until the end: a call (or, with `auto`, undecided while empty).
    Held,
    /// `auto`, nothing seen yet.
    Undecided,
}

struct Choice {
    mode: Mode,
    held: String,
    done: bool,
}

impl Meta {
    /// One chunk whose single choice carries `delta` (chat) or `text`
    /// (completion), log-probabilities and `finish`.
    fn chunk(
        &self,
        index: usize,
        delta: Value,
        text: &str,
        logprobs: Value,
        finish: Option<&str>,
    ) -> SseEvent {
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion.chunk",
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}),
            ),
            Kind::Completion => (
                "text_completion",
                json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}),
            ),
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        data(&v)
    }

    /// The usage chunk: no choices, only `usage`.
    fn usage_chunk(&self, usages: &[Usage]) -> SseEvent {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        data(&json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_json(usages),
        }))
    }

    fn logprobs_of(&self, lps: &[TokenLogprob], offset: usize) -> Value {
        match (self.logprobs, self.kind) {
            (None, _) => Value::Null,
            (Some(_), Kind::Chat) => self.chat_logprobs(lps),
            (Some(_), Kind::Completion) => self.completion_logprobs(lps, offset),
        }
    }

    /// Text that goes out now.
    fn text_chunk(
        &self,
        index: usize,
        text: &str,
        lps: &[TokenLogprob],
        offset: usize,
    ) -> SseEvent {
        self.chunk(
            index,
            json!({ "content": text }),
            text,
            self.logprobs_of(lps, offset),
            None,
        )
    }
}

/// What one choice's stream yields: its index, the event, and the
/// log-probabilities of the tokens that came with it.
type Item = (usize, Event, Vec<TokenLogprob>);

fn events(index: usize, tokens: TokenStream) -> impl futures_util::Stream<Item = Item> {
    stream::unfold(Some(tokens), move |tokens| async move {
        let mut t = tokens?;
        let ev = t.next().await;
        let lps = t.take_logprobs();
        match ev {
            Some(ev @ Event::Text(_)) => Some(((index, ev, lps), Some(t))),
            Some(ev) => Some(((index, ev, lps), None)),
            None => Some((
                (index, Event::Error("the engine stopped".into()), lps),
                None,
            )),
        }
    })
}

/// Streams the choices as server-sent events. The response body owns the
/// [`TokenStream`]s: a client that goes away drops the body, which cancels
/// the generations and frees their sequences.
pub fn streamed(meta: Meta, streams: Vec<TokenStream>) -> Response {
    let n = streams.len();
    let initial = match meta.tools.as_ref().filter(|s| s.active()) {
        None => Mode::Text,
        Some(s) if s.choice == ToolChoice::Auto => Mode::Undecided,
        Some(_) => Mode::Held,
    };
    let choices: Vec<Choice> = (0..n)
        .map(|_| Choice {
            mode: initial,
            held: String::new(),
            done: false,
        })
        .collect();
    let mut first: Vec<SseEvent> = Vec::new();
    if meta.kind == Kind::Chat {
        for i in 0..n {
            first.push(meta.chunk(
                i,
                json!({"role": "assistant", "content": ""}),
                "",
                Value::Null,
                None,
            ));
        }
    }
    let offsets = vec![meta.echo.as_ref().map_or(0, |e| e.chars().count()); n];
    if let Some(echo) = meta.echo.as_ref() {
        for i in 0..n {
            first.push(meta.text_chunk(i, echo, &[], 0));
        }
    }
    let merged = stream::select_all((0..n).zip(streams).map(|(i, s)| events(i, s).boxed()));
    let state = State {
        meta,
        choices,
        usages: vec![None; n],
        offsets,
        ended: false,
    };
    let body = stream::unfold((merged, state), |(mut merged, mut st)| async move {
        if st.ended {
            return None;
        }
        let (i, ev, lps) = merged.next().await?;
        let out = st.handle(i, ev, &lps);
        Some((out, (merged, st)))
    })
    .flat_map(stream::iter);
    let events = stream::iter(first).chain(body).map(Ok::<_, Infallible>);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// A streamed answer's progress.
struct State {
    meta: Meta,
    choices: Vec<Choice>,
    usages: Vec<Option<Usage>>,
    /// Per choice: characters sent so far (completions' `text_offset`).
    offsets: Vec<usize>,
    /// `[DONE]` or an error went out.
    ended: bool,
}

impl State {
    fn token_chars(&self, id: u32) -> usize {
        String::from_utf8_lossy(&self.meta.engine.tokenizer().token_to_piece(id, false))
            .chars()
            .count()
    }

    /// The chunks one event of choice `i` makes.
    fn handle(&mut self, i: usize, ev: Event, lps: &[TokenLogprob]) -> Vec<SseEvent> {
        let meta = &self.meta;
        let mut out = Vec::new();
        match ev {
            Event::Text(t) => {
                let c = &mut self.choices[i];
                if c.mode == Mode::Undecided && !t.is_empty() {
                    let opener = meta
                        .tools
                        .as_ref()
                        .and_then(|s| s.format.open.chars().next())
                        .unwrap_or('{');
                    c.mode = if t.starts_with(opener) {
                        Mode::Held
                    } else {
                        Mode::Text
                    };
                }
                match c.mode {
                    Mode::Text => {
                        out.push(meta.text_chunk(i, &t, lps, self.offsets[i]));
                        let n: usize = lps.iter().map(|l| self.token_chars(l.id)).sum();
                        self.offsets[i] += n;
                    }
                    Mode::Held | Mode::Undecided => c.held.push_str(&t),
                }
            }
            Event::Done(usage) => {
                let c = &mut self.choices[i];
                c.done = true;
                let held = std::mem::take(&mut c.held);
                match meta.call_in(&held) {
                    Some((name, arguments)) => {
                        let id = call_id(&meta.id, i);
                        let head = json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                            "function": {"name": name, "arguments": ""}}]});
                        let args = json!({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]});
                        out.push(meta.chunk(i, head, "", Value::Null, None));
                        out.push(meta.chunk(i, args, "", Value::Null, None));
                        out.push(meta.chunk(i, json!({}), "", Value::Null, Some("tool_calls")));
                    }
                    None => {
                        if !held.is_empty() {
                            out.push(meta.text_chunk(i, &held, &[], self.offsets[i]));
                        }
                        let finish = Some(finish_reason(usage.finish));
                        out.push(meta.chunk(i, json!({}), "", Value::Null, finish));
                    }
                }
                self.usages[i] = Some(usage);
                if self.choices.iter().all(|c| c.done) {
                    if meta.include_usage {
                        let all: Vec<Usage> = self.usages.iter().flatten().copied().collect();
                        out.push(meta.usage_chunk(&all));
                    }
                    out.push(SseEvent::default().data("[DONE]"));
                    self.ended = true;
                }
            }
            Event::Error(e) => {
                // One failed choice ends the answer (dropping the others).
                self.ended = true;
                out.push(data(
                    &ApiError::unavailable(format!("Generation failed: {e}")).body(),
                ));
            }
        }
        out
    }
}
