//! `shardline serve` against hostile or careless clients: request heads and
//! bodies that trickle in (or never come), more connections than
//! `--max-connections`, and the API key read from `--api-key-file`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{self, assert_error, parse_prometheus, sample, Serve};
use common::{model_path, start_worker, Worker};
use serde_json::json;

const READY: Duration = Duration::from_secs(120);
/// Generous bound on "promptly": far over the 1 s limits the tests set.
const PROMPTLY: Duration = Duration::from_secs(10);

fn serve(ws: &[&Worker], extra: &[&str]) -> Serve {
    let model = model_path();
    let rpc = ws
        .iter()
        .map(|w| w.endpoint.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec!["--model", model.to_str().unwrap(), "--ctx", "512"];
    args.extend_from_slice(&["--rpc", &rpc]);
    args.extend_from_slice(extra);
    let s = Serve::start(&args);
    s.wait_ready(READY);
    s
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// How the server ended a connection that never completed its request.
#[derive(Debug)]
enum Ended {
    /// End of stream or a reset, with no answer.
    Closed,
    /// An answer first (its status).
    Answered(u16),
}

/// Sends `trickle` one byte every 100 ms (then just waits) until the server
/// ends the connection; panics if it has not after `limit`. Returns how and
/// when, measured from `since`.
fn wait_closed(
    mut s: TcpStream,
    trickle: &[u8],
    since: Instant,
    limit: Duration,
) -> (Ended, Duration) {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut left = trickle.iter();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            since.elapsed() < limit,
            "the server kept a slow connection open for {:?}",
            since.elapsed()
        );
        if let Some(b) = left.next() {
            if s.write_all(&[*b]).is_err() {
                // Written into a closed connection: it is closed.
                break;
            }
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // Nothing yet.
            Err(e) if matches!(e.kind(), WouldBlock | TimedOut) => {}
            // Reset.
            Err(_) => break,
        }
    }
    let at = since.elapsed();
    let ended = match status_of(&got) {
        Some(code) => Ended::Answered(code),
        None => Ended::Closed,
    };
    (ended, at)
}

fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[test]
fn slow_request_heads_are_cut_off() {
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let s = serve(&[&w1, &w2], &["--header-timeout", "1s"]);
    let addr = s.addr;

    let started = Instant::now();
    // One client says nothing; one sends its headers a byte at a time and
    // never ends them.
    let silent = connect(addr);
    let slow = connect(addr);
    let mut trickle = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
    trickle.extend(std::iter::repeat_n(b'a', 200));
    let (silent_end, slow_end) = std::thread::scope(|sc| {
        let a = sc.spawn(|| wait_closed(silent, b"", started, PROMPTLY));
        let b = sc.spawn(|| wait_closed(slow, &trickle, started, PROMPTLY));
        // Meanwhile other clients are served.
        let r = http::get(addr, "/health");
        assert_eq!(r.status, 200, "{}", r.text());
        let r = http::post_json(
            addr,
            "/v1/completions",
            &json!({"prompt": "Hello", "max_tokens": 2, "temperature": 0}),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!("silent: {silent_end:?}, slow: {slow_end:?}");
    for (ended, at) in [silent_end, slow_end] {
        // Not before the timeout (less a little for clock granularity).
        assert!(at >= Duration::from_millis(900), "closed after {at:?}");
        assert!(
            matches!(ended, Ended::Closed | Ended::Answered(408)),
            "{ended:?}"
        );
    }

    // A keep-alive connection left idle after an answer is closed too.
    let mut idle = connect(addr);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(idle.try_clone().unwrap());
    idle.set_read_timeout(Some(PROMPTLY)).unwrap();
    let resp = read_response(&mut r);
    assert_eq!(resp.status, 200);
    let (ended, at) = wait_closed(idle, b"", Instant::now(), PROMPTLY);
    eprintln!("idle keep-alive: {ended:?} after {at:?}");
    assert!(matches!(ended, Ended::Closed), "{ended:?}");

    // The server is still fine.
    assert_eq!(http::get(addr, "/health").status, 200);
}

#[test]
fn slow_body_is_408() {
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let s = serve(&[&w1, &w2], &["--body-timeout", "1s"]);
    let addr = s.addr;

    let mut c = connect(addr);
    c.set_read_timeout(Some(PROMPTLY + PROMPTLY)).unwrap();
    let started = Instant::now();
    c.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"prompt\": \"",
    )
    .unwrap();
    // The rest of the body, a byte every 100 ms (40 s worth), from another
    // thread while this one waits for the answer.
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for _ in 0..400 {
            if w.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let resp = read_response(&mut BufReader::new(c.try_clone().unwrap()));
    let at = started.elapsed();
    // Ends the writer at its next byte.
    let _ = c.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    eprintln!("408 after {at:?}");
    let e = assert_error(&resp, 408);
    assert_eq!(e["code"], "request_timeout");
    assert!(at >= Duration::from_millis(900), "answered after {at:?}");
    assert!(at < PROMPTLY, "answered after {at:?}");

    // A body sent at once is read as usual.
    let r = http::post_json(
        addr,
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 2, "temperature": 0}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn connections_past_the_cap_are_refused() {
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    // A long header timeout, so the held connections stay open while the
    // test looks (nothing else has connected yet: the ready line comes on
    // stdout).
    let s = serve(
        &[&w1, &w2],
        &["--max-connections", "2", "--header-timeout", "60s"],
    );
    let addr = s.addr;
    let mut a = connect(addr);
    let mut b = connect(addr);
    for c in [&a, &b] {
        c.set_read_timeout(Some(PROMPTLY)).unwrap();
    }

    // A third connection is turned away at once: a 503, or closed unanswered.
    let third = connect(addr);
    let mut w = third.try_clone().unwrap();
    // The server may have closed it already; a failed write is fine.
    let _ = w.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let (ended, at) = wait_closed(third, b"", Instant::now(), PROMPTLY);
    eprintln!("third connection: {ended:?} after {at:?}");
    assert!(
        matches!(ended, Ended::Closed | Ended::Answered(503)),
        "{ended:?}"
    );

    // The two held connections are served as usual.
    a.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = read_response(&mut BufReader::new(a.try_clone().unwrap()));
    assert_eq!(r.status, 200, "{}", r.text());
    b.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = read_response(&mut BufReader::new(b.try_clone().unwrap()));
    assert_eq!(r.status, 200, "{}", r.text());
    let m = parse_prometheus(&r.text());
    assert_eq!(sample(&m, "shardline_http_connections"), Some(2.0));
    assert!(
        sample(&m, "shardline_http_connections_refused_total").is_some_and(|n| n >= 1.0),
        "{m:?}"
    );

    // Once they close, new connections are served.
    drop(a);
    drop(b);
    let start = Instant::now();
    loop {
        let c = connect(addr);
        let mut w = c.try_clone().unwrap();
        let _ = w.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        c.set_read_timeout(Some(PROMPTLY)).unwrap();
        let mut bytes = Vec::new();
        let _ = BufReader::new(c).read_to_end(&mut bytes);
        match status_of(&bytes) {
            Some(200) => break,
            other => {
                assert!(
                    matches!(other, None | Some(503)),
                    "{}",
                    String::from_utf8_lossy(&bytes)
                );
                if other == Some(503) {
                    let body =
                        &bytes[bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
                    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                    assert_eq!(v["error"]["code"], "too_many_connections", "{v}");
                }
            }
        }
        assert!(
            start.elapsed() < PROMPTLY,
            "still refused after the held connections closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn temp_file(name: &str, content: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shardline-hardening-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn api_key_from_a_file() {
    let key_file = temp_file("key", b"from-a-file-7c1e\n");
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let s = serve(&[&w1, &w2], &["--api-key-file", key_file.to_str().unwrap()]);
    let addr = s.addr;

    // The key is not on the command line for `ps` to show.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", s.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("from-a-file-7c1e"));

    let models = |key: Option<&str>| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http::request(addr, "GET", "/v1/models", &headers, b"")
    };
    let e = assert_error(&models(None), 401);
    assert_eq!(e["code"], "invalid_api_key");
    for wrong in [
        "from-a-file-7c1",
        "from-a-file-7c1e0",
        "from-a-file-7c1f",
        "x",
    ] {
        assert_error(&models(Some(wrong)), 401);
    }
    let r = models(Some("from-a-file-7c1e"));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = json!({"prompt": "Hi", "max_tokens": 2});
    let r = http::post_json(addr, "/v1/completions", &body, Some("from-a-file-7c1e"));
    assert_eq!(r.status, 200, "{}", r.text());
    let _ = std::fs::remove_file(&key_file);
}

/// Runs `shardline serve ARGS` to its end (it must end promptly); returns
/// the exit code and stderr.
fn serve_fails(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shardline serve");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shardline serve {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

#[test]
fn bad_api_key_files_are_one_line_errors() {
    let model = model_path();
    let model = model.to_str().unwrap();
    let empty = temp_file("empty", b"\n");
    let missing = empty.with_file_name("missing");
    for (file, says) in [(&empty, "is empty"), (&missing, "missing")] {
        let (code, err) = serve_fails(&[
            "--model",
            model,
            "--port",
            "0",
            "--api-key-file",
            file.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.starts_with("error: ") && err.contains(says), "{err}");
    }
    // --api-key and --api-key-file together: a usage error.
    let (code, err) = serve_fails(&[
        "--model",
        model,
        "--api-key",
        "x",
        "--api-key-file",
        empty.to_str().unwrap(),
    ]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    // An empty key would turn authentication off: refused.
    let (code, err) = serve_fails(&["--model", model, "--port", "0", "--api-key", " "]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("API key") && err.contains("empty"), "{err}");
    // Limits that cannot work are refused before anything starts.
    for args in [
        ["--header-timeout", "0s"],
        ["--body-timeout", "soon"],
        ["--max-connections", "0"],
        ["--max-connections", "99999999999"],
    ] {
        let mut all = vec!["--model", model, "--port", "0"];
        all.extend_from_slice(&args);
        let (code, err) = serve_fails(&all);
        assert_ne!(code, Some(0), "{args:?}: {err}");
        assert!(
            err.contains(args[0].trim_start_matches('-')),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_file(&empty);
}

/// Reads one response (sized body) from a connection that may stay open.
fn read_response(r: &mut BufReader<TcpStream>) -> http::Response {
    let mut line = String::new();
    r.read_line(&mut line).expect("read the status line");
    let status = status_of(line.as_bytes()).unwrap_or_else(|| panic!("status line {line:?}"));
    let mut headers = Vec::new();
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line).expect("read a header");
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
    r.read_exact(&mut body).expect("read the body");
    http::Response {
        status,
        headers,
        body,
    }
}
