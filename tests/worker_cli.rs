//! `shardline worker`: ready line, clean exit on signals, clear start errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::start_worker;

fn shardline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
}

#[test]
fn ready_line_names_endpoint_protocol_and_device() {
    let mut child = shardline()
        .args(["worker", "--port", "0", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // ggml's server prints its own banner on the same stdout; the ready line
    // may come before or after it.
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..50 {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 || line.starts_with("shardline worker ready") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("shardline worker ready: endpoint=127.0.0.1:"),
        "{line}"
    );
    assert!(line.contains(" protocol=7.0.0 "), "{line}");
    assert!(line.trim_end().ends_with("devices=CPU"), "{line}");
}

#[test]
fn exits_cleanly_on_sigterm_and_sigint() {
    for sig in ["-TERM", "-INT"] {
        let mut w = start_worker(&[]);
        // A connected client must not keep it from stopping.
        let _conn = std::net::TcpStream::connect(w.endpoint).unwrap();
        signal(w.pid(), sig);
        let st = w
            .wait_timeout(Duration::from_secs(10))
            .expect("worker exits after the signal");
        assert!(st.success(), "{sig}: exit status {st:?}");
    }
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = shardline()
        .args(["worker", "--port", &port])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on 127.0.0.1:"), "{err}");
}

#[test]
fn unknown_device_is_a_clear_error() {
    let out = shardline()
        .args(["worker", "--port", "0", "--device", "NOPE9"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown device 'NOPE9'") && err.contains("CPU"),
        "{err}"
    );
}
