//! `shardline serve` over raw HTTP: answers and their shapes, every error
//! case with its status and OpenAI error object, /health through loading,
//! /metrics, the queue limit, a lost worker, and a client that goes away.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::http::{self, assert_error, sample, Serve, Sse};
use common::openai::{chat_body, metrics, read_stream, wait_healthy, READY};
use common::{model_path, rpc, start_worker, Worker};
use serde_json::{json, Value};

fn serve(ws: &[&Worker], extra: &[&str]) -> Serve {
    let model = model_path();
    let mut args = vec!["--model", model.to_str().unwrap(), "--ctx", "2048"];
    let rpc = rpc(ws);
    args.extend_from_slice(&["--rpc", &rpc]);
    args.extend_from_slice(extra);
    Serve::start(&args)
}

#[test]
fn errors_have_openai_shape_and_status() {
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let s = serve(&[&w1, &w2], &["--api-key", "sekret"]);
    let key = Some("sekret");
    wait_healthy(&s);
    let ready = s.wait_ready(READY);
    assert!(ready.contains(&format!("http://{}", s.addr)), "{ready}");

    // 401: /v1 wants the key; /health and /metrics stay open.
    let body = chat_body("Hi", 4, false);
    let e = assert_error(
        &http::post_json(s.addr, "/v1/chat/completions", &body, None),
        401,
    );
    assert_eq!(e["code"], "invalid_api_key");
    let e = assert_error(
        &http::post_json(s.addr, "/v1/chat/completions", &body, Some("wrong")),
        401,
    );
    assert_eq!(e["code"], "invalid_api_key");
    assert_error(&http::get(s.addr, "/v1/models"), 401);
    assert_eq!(http::get(s.addr, "/health").status, 200);
    assert_eq!(http::get(s.addr, "/metrics").status, 200);

    // 400: malformed JSON, a body that is not an object, wrong field types.
    let auth = [
        ("Authorization", "Bearer sekret"),
        ("Content-Type", "application/json"),
    ];
    let r = http::request(
        s.addr,
        "POST",
        "/v1/chat/completions",
        &auth,
        br#"{"messages": [{"role":"#,
    );
    assert_eq!(assert_error(&r, 400)["type"], "invalid_request_error");
    let r = http::request(s.addr, "POST", "/v1/completions", &auth, b"[1, 2]");
    assert_error(&r, 400);
    let r = http::request(s.addr, "POST", "/v1/completions", &auth, b"");
    assert_error(&r, 400);
    let mut bad = chat_body("Hi", 4, false);
    bad["max_tokens"] = json!("ten");
    let e = assert_error(
        &http::post_json(s.addr, "/v1/chat/completions", &bad, key),
        400,
    );
    assert_eq!(e["param"], "max_tokens");
    assert_eq!(e["code"], "invalid_type");
    for (field, value) in [
        ("temperature", json!("hot")),
        ("stream", json!("yes")),
        ("stop", json!(7)),
        ("seed", json!(1.5)),
        ("messages", json!("hello")),
    ] {
        let mut bad = chat_body("Hi", 4, false);
        bad[field] = value;
        let e = assert_error(
            &http::post_json(s.addr, "/v1/chat/completions", &bad, key),
            400,
        );
        assert_eq!(e["param"], field, "{e}");
    }
    let e = assert_error(
        &http::post_json(
            s.addr,
            "/v1/completions",
            &json!({"prompt": {"text": "x"}}),
            key,
        ),
        400,
    );
    assert_eq!(e["param"], "prompt");
    let e = assert_error(
        &http::post_json(s.addr, "/v1/chat/completions", &json!({"model": "x"}), key),
        400,
    );
    assert_eq!(e["param"], "messages");
    // Prompt plus max_tokens over the context (however large).
    for max in [json!(100000), json!(u64::MAX)] {
        let body = json!({"prompt": "Hi", "max_tokens": max});
        let e = assert_error(&http::post_json(s.addr, "/v1/completions", &body, key), 400);
        assert_eq!(e["code"], "context_length_exceeded");
    }
    // A conversation the chat template refuses, an empty prompt: 400, not 500.
    let odd = json!({"messages": [{"role": "tool", "content": "x"}], "max_tokens": 2});
    let r = http::post_json(s.addr, "/v1/chat/completions", &odd, key);
    assert!(r.status == 200 || r.status == 400, "{}", r.text());
    let r = http::post_json(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "", "max_tokens": 2}),
        key,
    );
    assert!(r.status == 200 || r.status == 400, "{}", r.text());
    if r.status == 400 {
        assert_error(&r, 400);
    }

    // 404: an unknown model, an unknown path.
    let mut other = chat_body("Hi", 4, false);
    other["model"] = json!("gpt-4o");
    let e = assert_error(
        &http::post_json(s.addr, "/v1/chat/completions", &other, key),
        404,
    );
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["param"], "model");
    assert_error(&http::get(s.addr, "/v1/nope"), 404);
    // `/` is the dashboard now; any other unknown path is a 404.
    assert_error(&http::get(s.addr, "/no-such-page"), 404);

    // 405: a known path with the wrong method.
    let r = http::request(s.addr, "GET", "/v1/chat/completions", &auth[..1], b"");
    assert_error(&r, 405);
    let r = http::request(s.addr, "DELETE", "/health", &[], b"");
    assert_error(&r, 405);

    // 413: a body over 1 MiB, declared...
    let head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer sekret\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\n\r\n";
    let e = assert_error(&http::raw(s.addr, head.as_bytes()), 413);
    assert_eq!(e["code"], "request_too_large");
    // ...or sent in chunks with no length given.
    let e = assert_error(&oversized_chunked(s.addr), 413);
    assert_eq!(e["code"], "request_too_large");

    // A good chat answer, with the key: OpenAI's shape.
    let mut good = chat_body("What is the capital of France?", 8, false);
    good["model"] = json!(model_name(&s, key));
    // A field the server would ignore is a 400 naming it, never silence.
    let mut unknown = good.clone();
    unknown["unknown_extra_field"] = json!({"ignored": true});
    let r = http::post_json(s.addr, "/v1/chat/completions", &unknown, key);
    let e = assert_error(&r, 400);
    assert_eq!(e["param"], "unknown_extra_field");
    let r = http::post_json(s.addr, "/v1/chat/completions", &good, key);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(
        v["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-")),
        "{v}"
    );
    assert!(v["created"].is_u64());
    assert_eq!(v["model"], good["model"]);
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert!(
        c["message"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{v}"
    );
    assert!(
        c["finish_reason"] == "stop" || c["finish_reason"] == "length",
        "{v}"
    );
    let u = &v["usage"];
    assert_eq!(
        u["completion_tokens"].as_u64().unwrap() + u["prompt_tokens"].as_u64().unwrap(),
        u["total_tokens"]
    );
    assert!(u["completion_tokens"].as_u64().unwrap() <= 8);

    // A text completion: max_tokens reached is "length".
    let r = http::post_json(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "One, two, three, four,", "max_tokens": 5, "temperature": 0}),
        key,
    );
    let v = r.json();
    assert_eq!(r.status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert!(v["choices"][0]["text"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));

    // /metrics counts requests by route and status.
    let m = metrics(&s);
    let count = |route: &str, status: u16| {
        m.iter()
            .filter(|(n, l, _)| {
                n == "shardline_http_requests_total"
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("status=\"{status}\""))
            })
            .map(|x| x.2)
            .sum::<f64>()
    };
    assert!(count("/v1/chat/completions", 401) >= 2.0, "{m:?}");
    assert!(count("/v1/chat/completions", 400) >= 6.0, "{m:?}");
    assert!(count("/v1/chat/completions", 200) >= 1.0, "{m:?}");
    assert!(count("unmatched", 404) >= 2.0, "{m:?}");
}

fn model_name(s: &Serve, key: Option<&str>) -> String {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let r = http::request(s.addr, "GET", "/v1/models", &headers, b"");
    let v = r.json();
    assert_eq!(r.status, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");
    v["data"][0]["id"].as_str().unwrap().to_owned()
}

/// POSTs 1.5 MiB in chunks from another thread while reading the answer.
fn oversized_chunked(addr: std::net::SocketAddr) -> http::Response {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer sekret\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    s.write_all(head.as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..24 {
            // The server may stop reading once over the limit.
            if w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .and_then(|_| w.write_all(&chunk))
                .and_then(|_| w.write_all(b"\r\n"))
                .is_err()
            {
                return;
            }
        }
        let _ = w.write_all(b"0\r\n\r\n");
    });
    let mut r = std::io::BufReader::new(s);
    let resp = read_response(&mut r);
    let _ = writer.join();
    resp
}

fn read_response(r: &mut std::io::BufReader<std::net::TcpStream>) -> http::Response {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
        if k == "content-length" {
            len = v.parse().unwrap();
        }
        headers.push((k, v));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    http::Response {
        status,
        headers,
        body,
    }
}

#[test]
fn health_loading_then_ready_streams_and_metrics() {
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let s = serve(&[&w1, &w2], &["--parallel", "2"]);
    // Generation before the model is ready is 503 "model_loading".
    let r = http::post_json(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 1}),
        None,
    );
    if r.status != 200 {
        assert_eq!(assert_error(&r, 503)["code"], "model_loading");
    }
    // Right after binding the model is (most likely) still loading: either
    // answer is fine, but "loading" must have its shape (checked inside).
    let saw_loading = wait_healthy(&s);
    eprintln!("saw loading: {saw_loading}");
    // Generation before ready would have been 503; now it's served.
    s.wait_ready(READY);

    // A streamed chat with usage: role first, text, finish, usage, [DONE].
    let mut body = chat_body("Name three colors.", 12, true);
    body["stream_options"] = json!({"include_usage": true});
    let mut sse = Sse::open(s.addr, "/v1/chat/completions", &body);
    assert_eq!(sse.status, 200);
    assert!(sse
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")));
    let first: Value = serde_json::from_str(&sse.next_data().unwrap()).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant", "{first}");
    let (text, finish, usage, done) = read_stream(&mut sse, true);
    assert!(done, "stream ends with [DONE]");
    assert!(!text.is_empty());
    assert!(finish.as_deref() == Some("stop") || finish.as_deref() == Some("length"));
    let usage = usage.expect("a usage chunk with include_usage");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 12);

    // The same request whole gives the same text (greedy).
    let whole = http::post_json(
        s.addr,
        "/v1/chat/completions",
        &chat_body("Name three colors.", 12, false),
        None,
    );
    assert_eq!(
        whole.json()["choices"][0]["message"]["content"],
        text.as_str()
    );

    // A streamed text completion without usage: no usage chunk.
    let mut sse = Sse::open(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 6, "stream": true, "seed": 7}),
    );
    let (text, finish, usage, done) = read_stream(&mut sse, false);
    assert!(done && !text.is_empty() && usage.is_none());
    assert_eq!(finish.as_deref(), Some("length"));

    // /metrics: the engine's and the server's families, well formed.
    let m = metrics(&s);
    for name in [
        "shardline_http_requests_total",
        "shardline_tokens_generated_total",
        "shardline_active_sequences",
        "shardline_queue_depth",
        "shardline_model_loaded",
    ] {
        assert!(
            m.iter().any(|(n, _, _)| n == name),
            "{name} missing from /metrics"
        );
    }
    assert_eq!(sample(&m, "shardline_model_loaded"), Some(1.0));
    assert!(sample(&m, "shardline_tokens_generated_total").unwrap() >= 18.0);

    // A client that goes away mid-stream frees its sequence at once.
    let mut sse = Sse::open(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "Count: 1, 2, 3,", "max_tokens": 1000, "stream": true, "temperature": 0}),
    );
    assert_eq!(sse.status, 200);
    for _ in 0..3 {
        sse.next_data().expect("some text");
    }
    assert_eq!(
        sample(&metrics(&s), "shardline_active_sequences"),
        Some(1.0)
    );
    sse.disconnect();
    let start = Instant::now();
    loop {
        let active = sample(&metrics(&s), "shardline_active_sequences");
        if active == Some(0.0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "sequence still active {:?} after the client left",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn full_queue_is_429() {
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let s = serve(&[&w1, &w2], &["--parallel", "1", "--queue", "1"]);
    s.wait_ready(READY);
    let addr = s.addr;
    // Six slow streams at once: one runs, one waits, the rest are refused.
    let opened: Vec<Sse> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                sc.spawn(move || {
                    Sse::open(
                        addr,
                        "/v1/chat/completions",
                        &chat_body(
                            &format!("Write a long story about the number {i}."),
                            200,
                            true,
                        ),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = opened.iter().map(|o| o.status).collect();
    eprintln!("statuses: {statuses:?}");
    assert!(
        statuses.iter().all(|&c| c == 200 || c == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|&&c| c == 200).count() >= 1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|&&c| c == 429).count() >= 3,
        "{statuses:?}"
    );
    for o in opened {
        if o.status == 429 {
            let headers = o.headers.clone();
            let r = http::Response {
                status: 429,
                headers,
                body: o.rest().into_bytes(),
            };
            let e = assert_error(&r, 429);
            assert_eq!(e["type"], "rate_limit_error");
        } else {
            o.disconnect();
        }
    }
    // Once the streams are gone, requests are served again.
    let start = Instant::now();
    loop {
        let r = http::post_json(
            addr,
            "/v1/chat/completions",
            &chat_body("Hi", 2, false),
            None,
        );
        if r.status == 200 {
            break;
        }
        assert_error(&r, 429);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still 429 after the streams left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lost_worker_is_503() {
    let (w1, mut w2) = (start_worker(&[]), start_worker(&[]));
    let s = serve(&[&w1, &w2], &[]);
    s.wait_ready(READY);
    let r = http::post_json(
        s.addr,
        "/v1/chat/completions",
        &chat_body("Hi", 2, false),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    w2.kill();
    // The next request fails: 503 up front, or a stream that ends with an
    // error event. After that, 503 up front.
    let mut sse = Sse::open(
        s.addr,
        "/v1/chat/completions",
        &chat_body("Hello there", 50, true),
    );
    eprintln!("first request after the loss: {}", sse.status);
    if sse.status == 200 {
        let mut last = None;
        while let Some(d) = sse.next_data() {
            last = Some(d);
        }
        let last = last.expect("some event");
        let v: Value = serde_json::from_str(&last)
            .unwrap_or_else(|_| panic!("the stream ends with an error, not {last}"));
        assert!(
            v["error"]["message"].is_string(),
            "the stream ends with an error event, not {v}"
        );
    } else {
        let r = http::Response {
            status: sse.status,
            headers: sse.headers.clone(),
            body: sse.rest().into_bytes(),
        };
        assert_error(&r, 503);
    }
    // The engine recovers (reconnects and reloads) instead of refusing work
    // forever; while the worker stays gone, /health says so.
    let start = Instant::now();
    let v = loop {
        let h = http::get(s.addr, "/health");
        let v = h.json();
        if v["status"] == "recovering" {
            assert_eq!(h.status, 503, "{v}");
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "/health still {} after losing a worker: {v}",
            h.status
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["ok"] == false),
        "{v}"
    );
    assert!(v["recovery"]["attempts"].is_u64(), "{v}");
    // /metrics still answers.
    metrics(&s);
}

#[test]
fn sigterm_stops_cleanly() {
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let mut s = serve(&[&w1, &w2], &[]);
    s.wait_ready(READY);
    let st = std::process::Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let exit = s
        .wait_exit(Duration::from_secs(10))
        .expect("serve exits after SIGTERM");
    assert!(exit.success(), "{exit:?}; stderr:\n{}", s.stderr());
}
