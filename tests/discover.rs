//! `shardline discover` against real workers on loopback: one ready, one held
//! by another client (busy), a peer answering HELLO with another protocol
//! version, and a port nobody listens on; then a worker started with
//! `--announce`, heard by `discover` and used by `plan --rpc auto`. The
//! beacon goes to a UDP port picked free for the test and is joined on
//! loopback only, so nothing leaves the machine. Last, the beacon over a
//! real link: two network namespaces the test creates, joined by a veth
//! pair, a worker announcing in one and `discover` listening in the other
//! with its defaults.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::time::Duration;

use common::{model_path, start_worker};
use serde_json::Value;

fn shardline(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::shardline_bin());
    cmd.args(args).env("SHARDLINE_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run shardline")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn row<'a>(rows: &'a Value, endpoint: &str) -> &'a Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("{endpoint} not in {rows}"))
}

/// A peer that answers the first HELLO as a protocol 6.0.0 server would,
/// then waits for the client to hang up.
fn old_protocol_peer() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // HELLO: command 14, an 8-byte size of 24, 24 bytes of capabilities.
        let mut req = [0u8; 1 + 8 + 24];
        s.read_exact(&mut req).unwrap();
        assert_eq!(req[0], 14, "expected HELLO");
        // Size 28, then major, minor, patch, a pad byte and 24 caps bytes.
        let mut resp = 28u64.to_le_bytes().to_vec();
        resp.extend_from_slice(&[6, 0, 0, 0]);
        resp.extend_from_slice(&[0; 24]);
        s.write_all(&resp).unwrap();
        let _ = s.read(&mut [0u8; 64]);
    });
    addr
}

#[test]
fn discover_tells_ready_busy_wrong_version_and_unreachable() {
    let ready = start_worker(&[]);
    let held = start_worker(&[]);
    // Another client holds `held`: a real session that completed HELLO.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt
        .block_on(shardline::rpc::RpcClient::connect(
            &held.endpoint.to_string(),
            Default::default(),
        ))
        .expect("hold the second worker");
    let old = old_protocol_peer();
    let nobody = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (ready_ep, held_ep) = (ready.endpoint.to_string(), held.endpoint.to_string());
    let out = shardline(
        &[
            "discover",
            &ready_ep,
            &held_ep,
            &old,
            &nobody,
            "--json",
            "--answer-timeout",
            "1s",
        ],
        &[],
    );
    let rows = json_of(&out);
    assert_eq!(rows.as_array().unwrap().len(), 4, "{rows}");
    let r = row(&rows, &ready_ep);
    assert_eq!(r["state"], "ready", "{r}");
    assert_eq!(r["protocol"], "7.0.0");
    assert!(r["devices"][0]["total"].as_u64().unwrap() > 0, "{r}");
    let b = row(&rows, &held_ep);
    assert_eq!(b["state"], "busy", "{b}");
    assert!(b["detail"].as_str().unwrap().contains("HELLO"), "{b}");
    let w = row(&rows, &old);
    assert_eq!(w["state"], "wrong_version", "{w}");
    assert_eq!(w["protocol"], "6.0.0", "{w}");
    assert_eq!(row(&rows, &nobody)["state"], "unreachable");

    // Once the holder lets go, the same server is ready.
    drop(holder);
    std::thread::sleep(Duration::from_millis(200));
    let rows = json_of(&shardline(&["discover", &held_ep, "--json"], &[]));
    assert_eq!(row(&rows, &held_ep)["state"], "ready", "{rows}");

    // The table, the summary and a range too large.
    let out = shardline(&["discover", &ready_ep, &nobody], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ready") && text.contains("unreachable"),
        "{text}"
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("1 ready") && summary.contains("1 unreachable"),
        "{summary}"
    );
    let out = shardline(&["discover", "10.0.0.0/8"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/16") && err.contains("16777216"), "{err}");
}

#[test]
fn announced_workers_are_found_and_used_by_rpc_auto() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let worker = start_worker(&["--announce", "--announce-port", &port]);
    let ep = worker.endpoint.to_string();
    let out = shardline(
        &[
            "discover",
            "--json",
            "--listen",
            "1500ms",
            "--announce-port",
            &port,
            "--interface",
            "127.0.0.1",
        ],
        &[],
    );
    let rows = json_of(&out);
    assert_eq!(row(&rows, &ep)["state"], "ready", "{rows}");

    // `--rpc auto` plans over what it heard.
    let model = model_path();
    let env = [
        ("SHARDLINE_ANNOUNCE_PORT", port.as_str()),
        ("SHARDLINE_ANNOUNCE_INTERFACE", "127.0.0.1"),
    ];
    let plan_args = [
        "plan",
        "--model",
        model.to_str().unwrap(),
        "--rpc",
        "auto",
        "--strategy",
        "memory",
        "--ctx",
        "512",
    ];
    let out = shardline(&plan_args, &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&ep),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("--rpc auto: using {ep}")));

    // Nobody announcing: a clear error, not a hang.
    drop(worker);
    let silent = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let env = [
        ("SHARDLINE_ANNOUNCE_PORT", silent.as_str()),
        ("SHARDLINE_ANNOUNCE_INTERFACE", "127.0.0.1"),
    ];
    let out = shardline(&plan_args, &env);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--rpc auto") && err.contains("no shardline worker announced"),
        "{err}"
    );
}

/// Two network namespaces joined by a veth pair: a two-machine LAN that
/// only this test sees. Removed on drop (the veth goes with them).
struct Lan {
    /// (namespace, address) of each end.
    ends: [(String, String); 2],
}

impl Lan {
    /// `None` where this machine cannot make namespaces (not root).
    fn new() -> Option<Lan> {
        let id = std::process::id();
        // A /24 per process, so parallel runs do not share addresses.
        let net = format!("10.231.{}", id % 250);
        let ends = [
            (format!("sl-w{id}"), format!("{net}.1")),
            (format!("sl-c{id}"), format!("{net}.2")),
        ];
        let veth = [
            format!("slw{}", id % 1_000_000),
            format!("slc{}", id % 1_000_000),
        ];
        let first = Command::new("ip")
            .args(["netns", "add", &ends[0].0])
            .output()
            .expect("run ip");
        if !first.status.success() {
            let err = String::from_utf8_lossy(&first.stderr);
            if err.contains("Operation not permitted") || err.contains("Permission denied") {
                eprintln!("SKIPPED: cannot create network namespaces here: {err}");
                return None;
            }
            panic!("ip netns add: {err}");
        }
        let lan = Lan { ends };
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &lan.ends[1].0]);
        ip(&[
            "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
        ]);
        for ((ns, addr), dev) in lan.ends.iter().zip(&veth) {
            ip(&["link", "set", dev, "netns", ns]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            // As on a LAN machine, the default route is the LAN.
            ip(&["-n", ns, "route", "add", "default", "dev", dev]);
        }
        Some(lan)
    }

    /// `shardline ARGS` inside namespace `end`.
    fn command(&self, end: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ends[end].0])
            .arg(common::shardline_bin())
            .args(args)
            .env("SHARDLINE_LOG", "warn");
        cmd
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for (ns, _) in &self.ends {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Kills a process by pid on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn announced_over_a_lan_in_network_namespaces() {
    use std::io::BufRead;
    let Some(lan) = Lan::new() else { return };
    let (worker_ip, coord_ip) = (lan.ends[0].1.clone(), lan.ends[1].1.clone());
    // The default beacon port and group: the namespaces are the whole LAN.
    // `ip netns exec` execs the program, so the child's pid is the worker's.
    let mut child = lan
        .command(
            0,
            &[
                "worker",
                "--host",
                &worker_ip,
                "--port",
                "0",
                "--threads",
                "1",
                "--announce",
                "--exit-with-parent",
            ],
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the worker in its namespace");
    let stdout = child.stdout.take().unwrap();
    let worker = Killed(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("shardline worker ready: endpoint=") {
                let _ = tx.send(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    });
    let ep = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the worker got ready");
    assert!(ep.starts_with(&format!("{worker_ip}:")), "{ep}");

    // The other machine hears it with no target and no interface given, and
    // probes it over the link.
    let out = lan
        .command(1, &["discover", "--json", "--listen", "2500ms"])
        .output()
        .unwrap();
    let rows = json_of(&out);
    assert_eq!(row(&rows, &ep)["state"], "ready", "{rows}");
    // Its own loopback hears nothing of another machine's beacon there.
    let out = lan
        .command(
            1,
            &[
                "discover",
                "--json",
                "--listen",
                "1500ms",
                "--interface",
                "127.0.0.1",
            ],
        )
        .output()
        .unwrap();
    let rows = json_of(&out);
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["endpoint"] != ep.as_str()),
        "heard on loopback: {rows} (coordinator {coord_ip})"
    );
    drop(worker);
}
