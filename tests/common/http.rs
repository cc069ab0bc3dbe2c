//! A tiny HTTP/1.1 client over `std::net::TcpStream` (no dependencies, so
//! the tests see exactly what goes over the wire), a server-sent-events
//! reader, and `shardline serve` as a child process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one read may block before a test fails instead of hanging.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).expect("connect to the server")
}

fn try_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.set_write_timeout(Some(READ_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn request_head(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: Option<usize>,
) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = body_len {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Reads the status line and headers.
fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    try_read_head(r).unwrap_or_else(|e| panic!("read the response head: {e}"))
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// [`read_head`] that returns errors (a closed connection, a bad line).
fn try_read_head(r: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before the status line",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed in the headers",
            ));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    Ok((status, headers))
}

/// A response body: chunked, sized, or up to the end of the connection.
pub enum Body {
    Chunked {
        r: BufReader<TcpStream>,
        left: usize,
        done: bool,
    },
    Sized {
        r: BufReader<TcpStream>,
        left: usize,
    },
    ToEof(BufReader<TcpStream>),
}

impl Body {
    fn new(r: BufReader<TcpStream>, headers: &[(String, String)]) -> Body {
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            Body::Chunked {
                r,
                left: 0,
                done: false,
            }
        } else if let Some(n) = get("content-length") {
            Body::Sized {
                r,
                left: n.parse().expect("content-length"),
            }
        } else {
            Body::ToEof(r)
        }
    }

    /// The socket underneath (to shut it down).
    pub fn socket(&self) -> &TcpStream {
        match self {
            Body::Chunked { r, .. } | Body::Sized { r, .. } | Body::ToEof(r) => r.get_ref(),
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Body::ToEof(r) => r.read(buf),
            Body::Sized { r, left } => {
                if *left == 0 {
                    return Ok(0);
                }
                let n = buf.len().min(*left);
                let got = r.read(&mut buf[..n])?;
                if got == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "body cut short",
                    ));
                }
                *left -= got;
                Ok(got)
            }
            Body::Chunked { r, left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let mut line = String::new();
                    if r.read_line(&mut line)? == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "chunked body cut short",
                        ));
                    }
                    let size = line.trim().split(';').next().unwrap_or("");
                    let size = usize::from_str_radix(size, 16).map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("chunk size {line:?}"),
                        )
                    })?;
                    if size == 0 {
                        // Trailers, then the blank line.
                        loop {
                            line.clear();
                            if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let n = buf.len().min(*left);
                let got = r.read(&mut buf[..n])?;
                if got == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "chunk cut short",
                    ));
                }
                *left -= got;
                if *left == 0 {
                    let mut crlf = [0u8; 2];
                    r.read_exact(&mut crlf)?;
                }
                Ok(got)
            }
        }
    }
}

/// Sends `raw` bytes as they are and reads the whole response.
pub fn raw(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut s = connect(addr);
    s.write_all(raw).expect("send the request");
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    Body::new(r, &headers)
        .read_to_end(&mut body)
        .expect("read the body");
    Response {
        status,
        headers,
        body,
    }
}

/// One request; the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let len = (method != "GET" || !body.is_empty()).then_some(body.len());
    let mut bytes = request_head(method, path, headers, len).into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

/// POST of a JSON body, with `Authorization: Bearer key` when given.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
    key: Option<&str>,
) -> Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    request(addr, "POST", path, &headers, body.to_string().as_bytes())
}

/// An open streamed response: read `data:` payloads one by one.
pub struct Sse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    lines: BufReader<Body>,
}

impl Sse {
    /// POSTs `body` and returns once the response head arrived.
    pub fn open(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Sse {
        Sse::try_open(addr, path, body).unwrap_or_else(|e| panic!("open {path}: {e}"))
    }

    /// [`Sse::open`] that returns errors (connect, send, a bad head) instead
    /// of panicking, for tests that count them.
    pub fn try_open(
        addr: SocketAddr,
        path: &str,
        body: &serde_json::Value,
    ) -> std::io::Result<Sse> {
        let body = body.to_string();
        let mut s = try_connect(addr)?;
        let head = request_head(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body.len()),
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body.as_bytes())?;
        let mut r = BufReader::new(s);
        let (status, headers) = try_read_head(&mut r)?;
        let lines = BufReader::new(Body::new(r, &headers));
        Ok(Sse {
            status,
            headers,
            lines,
        })
    }

    /// The next event's `data`, or `None` at the end of the stream.
    pub fn next_data(&mut self) -> Option<String> {
        self.try_next_data()
            .unwrap_or_else(|e| panic!("read an event: {e}"))
    }

    /// [`Sse::next_data`] that returns read errors instead of panicking.
    pub fn try_next_data(&mut self) -> std::io::Result<Option<String>> {
        let mut data: Option<String> = None;
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.lines.read_line(&mut line)?;
            if n == 0 {
                return Ok(data);
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if data.is_some() {
                    return Ok(data);
                }
                continue;
            }
            if let Some(d) = l.strip_prefix("data:") {
                let d = d.strip_prefix(' ').unwrap_or(d);
                match &mut data {
                    Some(s) => {
                        s.push('\n');
                        s.push_str(d);
                    }
                    None => data = Some(d.to_owned()),
                }
            }
        }
    }

    /// The rest of the body (for a non-stream answer, e.g. an error).
    pub fn rest(mut self) -> String {
        let mut s = String::new();
        self.lines.read_to_string(&mut s).expect("read the body");
        s
    }

    /// The connection (e.g. to `try_clone` it and shut it down from another
    /// thread).
    pub fn socket(&self) -> &TcpStream {
        self.lines.get_ref().socket()
    }

    /// Closes the connection now, as a client that goes away.
    pub fn disconnect(self) {
        let _ = self
            .lines
            .get_ref()
            .socket()
            .shutdown(std::net::Shutdown::Both);
    }
}

/// `shardline serve` as a child process, killed on drop.
pub struct Serve {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    ready: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    /// Starts `shardline serve --port 0 ARGS` and waits for its listening line.
    /// Without a `--strategy` in ARGS the layers are placed by memory: the
    /// serve tests stop, kill and restart workers and need every worker to
    /// hold layers, which the default (throughput, measured) need not give.
    pub fn start(args: &[&str]) -> Serve {
        Serve::start_env(args, &[])
    }

    /// [`Serve::start`] with these environment variables set for it.
    pub fn start_env(args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) -> Serve {
        let mut cmd = Command::new(super::shardline_bin());
        cmd.arg("serve").args(["--port", "0"]).args(args);
        cmd.envs(envs.iter().copied());
        if !args
            .iter()
            .any(|a| a.starts_with("--strategy") || *a == "--split")
        {
            cmd.args(["--strategy", "memory"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shardline serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let mut err = BufReader::new(child.stderr.take().unwrap());
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                while err.read_line(&mut line).is_ok_and(|n| n > 0) {
                    sink.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        let (listen_tx, listen_rx) = mpsc::channel::<String>();
        let (ready_tx, ready) = mpsc::channel::<String>();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if line.starts_with("shardline serve listening:") {
                    let _ = listen_tx.send(line);
                } else if line.starts_with("shardline serve ready:") {
                    let _ = ready_tx.send(line);
                }
            }
        });
        let mut serve = Serve {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            ready,
            stderr,
        };
        let line = match listen_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => panic!(
                "no listening line from shardline serve; stderr:\n{}",
                serve.stderr()
            ),
        };
        serve.addr = url_addr(&line);
        serve
    }

    /// Waits for the ready line; returns it.
    pub fn wait_ready(&self, timeout: Duration) -> String {
        match self.ready.recv_timeout(timeout) {
            Ok(l) => l,
            Err(_) => panic!(
                "shardline serve never got ready; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(st) = self.child.try_wait().expect("poll shardline serve") {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `HOST:PORT` of the first `http://HOST:PORT` in `line`.
pub fn url_addr(line: &str) -> SocketAddr {
    let rest = &line[line
        .find("http://")
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        + 7..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '/')
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
}

/// Checks Prometheus text format: every sample is `name{labels} value`
/// with a `# TYPE` line for its family before it. Returns the samples as
/// (name, labels text, value).
pub fn parse_prometheus(text: &str) -> Vec<(String, String, f64)> {
    let mut typed: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.split_whitespace();
            match it.next() {
                Some("TYPE") => {
                    let name = it
                        .next()
                        .unwrap_or_else(|| panic!("TYPE without a name: {line:?}"));
                    let kind = it
                        .next()
                        .unwrap_or_else(|| panic!("TYPE without a kind: {line:?}"));
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "summary",
                            "histogram",
                            "untyped",
                            "unknown"
                        ]
                        .contains(&kind),
                        "bad type in {line:?}"
                    );
                    assert!(
                        !typed.contains(&name.to_owned()),
                        "second TYPE line for {name}"
                    );
                    typed.push(name.to_owned());
                }
                Some("HELP") | Some("UNIT") => {}
                // OpenMetrics ends the exposition with it.
                Some("EOF") => {}
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        let (labels, value) = if line[name_end..].starts_with('{') {
            let close = line
                .rfind('}')
                .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
            let labels = &line[name_end + 1..close];
            for pair in split_labels(labels) {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name in {line:?}"
                );
                assert!(
                    v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                    "unquoted label value in {line:?}"
                );
            }
            (labels.to_owned(), line[close + 1..].trim())
        } else {
            (String::new(), line[name_end..].trim())
        };
        let value: f64 = match value.split_whitespace().next().unwrap_or("") {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let family_typed = typed.iter().any(|t| {
            name == t
                || ["_sum", "_count", "_bucket", "_total"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(t))
        });
        assert!(family_typed, "sample before its # TYPE line: {line:?}");
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// The value of the sample `name` (no labels), if present.
pub fn sample(samples: &[(String, String, f64)], name: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l.is_empty())
        .map(|s| s.2)
}

/// Asserts `r` is an OpenAI error object with `status`; returns its `error`.
pub fn assert_error(r: &Response, status: u16) -> serde_json::Value {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "error content-type: {:?}",
        r.header("content-type")
    );
    let v = r.json();
    let e = v
        .get("error")
        .unwrap_or_else(|| panic!("no 'error' object in {v}"))
        .clone();
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {e}"
    );
    assert!(e["type"].is_string(), "type: {e}");
    assert!(
        e.get("param").is_some_and(|p| p.is_null() || p.is_string()),
        "param: {e}"
    );
    assert!(
        e.get("code").is_some_and(|c| c.is_null() || c.is_string()),
        "code: {e}"
    );
    e
}
