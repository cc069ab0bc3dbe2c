//! Helpers for `shardline serve`'s OpenAI-compatible answers, shared by
//! the HTTP tests.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::{self, parse_prometheus, Serve, Sse};

/// How long a server may take to become healthy.
pub const READY: Duration = Duration::from_secs(120);

/// A greedy chat request body with one user message.
pub fn chat_body(content: &str, max_tokens: u32, stream: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// Polls /health until 200; checks every answer's shape on the way.
/// Returns whether "loading" was seen.
pub fn wait_healthy(s: &Serve) -> bool {
    let start = Instant::now();
    let mut saw_loading = false;
    loop {
        let r = http::get(s.addr, "/health");
        let v = r.json();
        match r.status {
            200 => {
                assert_eq!(v["status"], "ok", "{v}");
                let servers = v["servers"]
                    .as_array()
                    .unwrap_or_else(|| panic!("servers: {v}"));
                assert!(
                    !servers.is_empty() && servers.iter().all(|s| s["ok"] == true),
                    "{v}"
                );
                return saw_loading;
            }
            503 => {
                assert_eq!(v["status"], "loading", "{v}");
                let (done, total) = (v["bytes_done"].as_u64(), v["bytes_total"].as_u64());
                assert!(done.is_some() && total.is_some(), "{v}");
                assert!(done <= total || total == Some(0), "{v}");
                saw_loading = true;
            }
            other => panic!("/health answered {other}: {v}"),
        }
        assert!(
            start.elapsed() < READY,
            "not healthy in time; stderr:\n{}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// /metrics, parsed (checks the OpenMetrics content type).
pub fn metrics(s: &Serve) -> Vec<(String, String, f64)> {
    let r = http::get(s.addr, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        r.headers
    );
    parse_prometheus(&r.text())
}

/// Reads an event stream to its end: (text, finish_reason, usage, ended with [DONE]).
pub fn read_stream(sse: &mut Sse, chat: bool) -> (String, Option<String>, Option<Value>, bool) {
    let (mut text, mut finish, mut usage) = (String::new(), None, None);
    while let Some(d) = sse.next_data() {
        if d == "[DONE]" {
            assert!(sse.next_data().is_none(), "events after [DONE]");
            return (text, finish, usage, true);
        }
        let v: Value =
            serde_json::from_str(&d).unwrap_or_else(|e| panic!("event is not JSON ({e}): {d}"));
        assert!(v.get("error").is_none(), "error event: {v}");
        assert_eq!(
            v["object"],
            if chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            },
            "{v}"
        );
        assert!(
            v["id"].is_string() && v["created"].is_u64() && v["model"].is_string(),
            "{v}"
        );
        let choices = v["choices"]
            .as_array()
            .unwrap_or_else(|| panic!("choices: {v}"));
        if choices.is_empty() {
            assert!(
                v["usage"].is_object(),
                "a chunk without choices carries usage: {v}"
            );
            usage = Some(v["usage"].clone());
            continue;
        }
        let c = &choices[0];
        assert_eq!(c["index"], 0);
        let piece = if chat {
            c["delta"]["content"].as_str()
        } else {
            c["text"].as_str()
        };
        text.push_str(piece.unwrap_or(""));
        if let Some(f) = c["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    (text, finish, usage, false)
}
