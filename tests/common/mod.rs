//! Shared helpers for the end-to-end tests: the test model and real
//! `shardline worker` processes on loopback.
#![allow(dead_code)]

pub mod llama_ref;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Path of SmolLM2-135M-Instruct Q4_1, fetched by `scripts/fetch-model.sh`.
pub fn model_path() -> PathBuf {
    let p = std::env::var_os("SHARDLINE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/shardline/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.is_file(),
        "test model not found at {}: run scripts/fetch-model.sh (or set SHARDLINE_TEST_MODEL)",
        p.display()
    );
    p
}

/// A `shardline worker` child process, killed (by pid) when dropped.
pub struct Worker {
    child: Child,
    /// Where it listens.
    pub endpoint: SocketAddr,
}

impl Worker {
    /// Starts a worker on a free loopback port and waits for its ready line.
    pub fn start() -> Worker {
        Self::start_with(&[])
    }

    /// Starts a worker with extra command-line arguments.
    pub fn start_with(extra: &[&str]) -> Worker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardline"))
            .args(["worker", "--host", "127.0.0.1", "--port", "0", "--threads", "1"])
            .args(extra)
            .env("SHARDLINE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shardline worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // Keep draining stdout for the worker's whole life so it never
            // blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("shardline worker ready: endpoint=") {
                    if let Some(tx) = tx.take() {
                        let ep = rest.split_whitespace().next().unwrap_or_default().to_string();
                        let _ = tx.send(ep);
                    }
                }
            }
        });
        let ep = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(ep) => ep,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("worker did not print its ready line within 60 s");
            }
        };
        Worker {
            child,
            endpoint: ep.parse().expect("endpoint on the ready line"),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the worker now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(ok.success());
        for _ in 0..200 {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill();
        panic!("worker did not exit within 5 s of SIGTERM");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}
