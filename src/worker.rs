//! `shardline worker`: ggml's own RPC server, wrapped so that it picks a free
//! port when asked, says when it is ready, and stops cleanly on a signal.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ggml_sys::{Device, DeviceKind};

/// How a worker is started.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Address to listen on.
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
    /// CPU threads for computing graphs.
    pub threads: usize,
    /// Folder where the server caches tensors by hash (the SET_TENSOR_HASH path).
    pub cache: Option<PathBuf>,
    /// Names of the ggml devices to serve (e.g. `CPU`, `CUDA0`); empty serves
    /// every GPU or accelerator, or the CPU when there is none.
    pub devices: Vec<String>,
    /// Models to write into the cache before serving (needs `cache`).
    pub seed: Vec<PathBuf>,
    /// How the cache is checked before serving.
    pub verify: crate::cache::VerifyMode,
    /// Exit when the parent process exits.
    pub exit_with_parent: bool,
}

/// Errors that stop a worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No free port could be found, or the chosen port is taken.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A device named on the command line does not exist in this build.
    #[error("unknown device '{0}' (this build has: {1})")]
    UnknownDevice(String, String),
    /// The cache folder could not be created.
    #[error("cannot create cache folder {0}: {1}")]
    Cache(PathBuf, std::io::Error),
    /// Seeding or checking the cache failed.
    #[error("cache: {0}")]
    CacheCheck(#[from] crate::cache::CacheError),
    /// A model to seed the cache from cannot be read.
    #[error("seeding from {0}: {1}")]
    Seed(PathBuf, crate::gguf::GgufError),
    /// `--seed` without a cache folder.
    #[error("--seed needs --cache DIR")]
    SeedWithoutCache,
    /// ggml's server stopped or never started.
    #[error("rpc server failed: {0}")]
    Server(String),
    /// The server did not accept connections in time.
    #[error("rpc server did not start listening on {0} within {1:?}")]
    NotListening(SocketAddr, Duration),
}

/// A worker that is listening, as reported on its ready line.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Where clients connect.
    pub endpoint: SocketAddr,
    /// Devices served, by name.
    pub devices: Vec<String>,
}

impl std::fmt::Display for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shardline worker ready: endpoint={} protocol={}.{}.{} devices={}",
            self.endpoint,
            ggml_sys::RPC_PROTO_MAJOR,
            ggml_sys::RPC_PROTO_MINOR,
            ggml_sys::RPC_PROTO_PATCH,
            self.devices.join(",")
        )
    }
}

fn select_devices(names: &[String]) -> Result<Vec<Device>, WorkerError> {
    let all = Device::all();
    if names.is_empty() {
        let accel: Vec<Device> = all
            .iter()
            .copied()
            .filter(|d| matches!(d.kind(), DeviceKind::Gpu | DeviceKind::Accelerator))
            .collect();
        if !accel.is_empty() {
            return Ok(accel);
        }
        return Device::cpu()
            .map(|d| vec![d])
            .ok_or_else(|| WorkerError::UnknownDevice("CPU".into(), "none".into()));
    }
    names
        .iter()
        .map(|n| {
            all.iter()
                .copied()
                .find(|d| d.name().eq_ignore_ascii_case(n))
                .ok_or_else(|| {
                    let have: Vec<String> = all.iter().map(Device::name).collect();
                    WorkerError::UnknownDevice(n.clone(), have.join(", "))
                })
        })
        .collect()
}

fn resolve_port(host: IpAddr, port: u16) -> Result<SocketAddr, WorkerError> {
    let addr = SocketAddr::new(host, port);
    // Binding here both picks a free port (for port 0) and reports a taken port
    // with a clear error before ggml's server prints its own.
    let listener = TcpListener::bind(addr).map_err(|source| WorkerError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| WorkerError::Bind { addr, source })?;
    drop(listener);
    Ok(local)
}

/// Ends the process once its parent is gone (it is then re-parented, so its
/// parent id changes), so local workers never outlive their coordinator.
fn watch_parent() {
    let parent = std::os::unix::process::parent_id();
    let _ = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            if std::os::unix::process::parent_id() != parent {
                tracing::info!("parent process exited: stopping");
                std::process::exit(0);
            }
        });
}

/// ggml's messages under shardline's log levels: its per-tensor "saved to"
/// lines during an upload to a cache are detail, not news.
fn ggml_log(level: ggml_sys::LogLevel, text: &str) {
    use ggml_sys::LogLevel as L;
    match level {
        L::Error => tracing::error!(target: "ggml", "{text}"),
        L::Warn => tracing::warn!(target: "ggml", "{text}"),
        L::Info | L::Debug => tracing::debug!(target: "ggml", "{text}"),
    }
}

/// Seeds cache folder `dir` from `models`, then checks the rest of it as
/// `mode` says, before the server may read it.
fn prepare_cache(
    dir: &std::path::Path,
    models: &[PathBuf],
    mode: crate::cache::VerifyMode,
    threads: usize,
) -> Result<(), WorkerError> {
    let mut trusted = std::collections::HashSet::new();
    for m in models {
        let g = crate::gguf::Gguf::open(m).map_err(|e| WorkerError::Seed(m.clone(), e))?;
        let started = Instant::now();
        let total: u64 = g.tensors().iter().map(|t| t.n_bytes()).sum();
        let bar = crate::progress::byte_bar("seeding", total, true);
        let r = crate::cache::seed(dir, &g, threads, &|n| bar.inc(n))?;
        bar.finish_and_clear();
        tracing::info!(
            model = %m.display(),
            files_written = r.written,
            files_kept = r.kept,
            bytes_written = r.bytes_written,
            secs = started.elapsed().as_secs_f64(),
            "cache seeded"
        );
        trusted.extend(r.files);
    }
    let started = Instant::now();
    let r = crate::cache::verify(dir, mode, &trusted, threads)?;
    for b in &r.bad {
        tracing::warn!(
            file = %b.name,
            "damaged cache file ({}): moved to {}/ and will be sent again",
            b.reason,
            crate::cache::BAD_DIR
        );
    }
    tracing::info!(
        cache = %dir.display(),
        check = %mode,
        files = r.files,
        bytes = r.bytes,
        rehashed = r.rehashed,
        damaged = r.bad.len(),
        secs = started.elapsed().as_secs_f64(),
        "cache checked"
    );
    Ok(())
}

/// Starts ggml's RPC server on a background thread and returns once it accepts
/// connections. The returned receiver yields the server's error if it stops.
pub fn start(opts: &WorkerOptions) -> Result<(Ready, mpsc::Receiver<WorkerError>), WorkerError> {
    ggml_sys::set_log_handler(ggml_log);
    let devices = select_devices(&opts.devices)?;
    // ggml's Vulkan function table goes through ggml-sys's wrapper, which
    // writes every binding of a descriptor set (Mesa lavapipe 22.x reads
    // them all; see ggml-sys/src/vk_descriptors.rs).
    #[cfg(all(feature = "vulkan", target_os = "linux"))]
    {
        let (hooked, _) = ggml_sys::vk_descriptor_writes_extended();
        tracing::debug!(hooked, "vulkan: full descriptor-set writes");
    }
    if let Some(dir) = &opts.cache {
        std::fs::create_dir_all(dir).map_err(|e| WorkerError::Cache(dir.clone(), e))?;
        prepare_cache(dir, &opts.seed, opts.verify, opts.threads)?;
    } else if !opts.seed.is_empty() {
        return Err(WorkerError::SeedWithoutCache);
    }
    let addr = resolve_port(opts.host, opts.port)?;
    let endpoint = addr.to_string();
    let (tx, rx) = mpsc::channel();
    let cache = opts.cache.clone();
    let threads = opts.threads;
    let served = devices.clone();
    std::thread::Builder::new()
        .name("rpc-server".into())
        .spawn(move || {
            let err =
                match ggml_sys::rpc_start_server(&endpoint, cache.as_deref(), threads, &served) {
                    Ok(()) => "stopped".to_string(),
                    Err(e) => e,
                };
            let _ = tx.send(WorkerError::Server(err));
        })
        .map_err(|e| WorkerError::Server(format!("cannot spawn server thread: {e}")))?;

    // The server binds inside ggml; wait until a connection goes through. The
    // probe connection is closed at once, which the server treats as a client
    // that left before saying HELLO.
    let probe = SocketAddr::new(
        if addr.ip().is_unspecified() {
            match addr.ip() {
                IpAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
                IpAddr::V6(_) => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            }
        } else {
            addr.ip()
        },
        addr.port(),
    );
    let deadline = Duration::from_secs(30);
    let start = Instant::now();
    loop {
        if let Ok(err) = rx.try_recv() {
            return Err(err);
        }
        if TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
            break;
        }
        if start.elapsed() > deadline {
            return Err(WorkerError::NotListening(addr, deadline));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if opts.exit_with_parent {
        watch_parent();
    }
    let ready = Ready {
        endpoint: addr,
        devices: devices.iter().map(Device::name).collect(),
    };
    Ok((ready, rx))
}

/// Starts `n` local workers with `exe`, splitting `threads` CPU threads
/// between them; what the coordinator does when no servers are given.
pub fn start_local(
    exe: &std::path::Path,
    n: usize,
    threads: usize,
) -> Result<Vec<LocalWorker>, WorkerError> {
    let n = n.max(1);
    let per = (threads / n).max(1).to_string();
    tracing::info!(count = n, "no servers given: starting local workers");
    (0..n)
        .map(|_| LocalWorker::spawn(exe, &["--threads", &per], Duration::from_secs(60)))
        .collect()
}

/// A `shardline worker` child process on this machine, started by the
/// coordinator when no servers are given (and by the tests). Killed, by pid,
/// when dropped.
#[derive(Debug)]
pub struct LocalWorker {
    child: std::process::Child,
    /// Where it listens.
    pub endpoint: SocketAddr,
}

impl LocalWorker {
    /// Starts `exe worker --host 127.0.0.1 --port 0 <extra>` and waits up to
    /// `timeout` for its ready line.
    pub fn spawn(
        exe: &std::path::Path,
        extra: &[&str],
        timeout: Duration,
    ) -> Result<LocalWorker, WorkerError> {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let mut cmd = Command::new(exe);
        if std::env::var_os("SHARDLINE_LOG").is_none() {
            cmd.env("SHARDLINE_LOG", "warn");
        }
        let mut child = cmd
            .args([
                "worker",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--exit-with-parent",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| WorkerError::Server(format!("cannot start {}: {e}", exe.display())))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("worker-stdout".into())
            .spawn(move || {
                let mut tx = Some(tx);
                // Drain stdout for the worker's whole life so ggml's server
                // never blocks on a full pipe.
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(rest) = line.strip_prefix("shardline worker ready: endpoint=") {
                        if let Some(tx) = tx.take() {
                            let ep = rest
                                .split_whitespace()
                                .next()
                                .unwrap_or_default()
                                .to_string();
                            let _ = tx.send(ep);
                        }
                    }
                }
            })
            .map_err(|e| WorkerError::Server(format!("cannot spawn reader thread: {e}")))?;
        let mut worker = LocalWorker {
            child,
            endpoint: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let ep = rx.recv_timeout(timeout).map_err(|_| {
            WorkerError::Server(format!(
                "local worker did not become ready within {timeout:?}"
            ))
        })?;
        worker.endpoint = ep
            .parse()
            .map_err(|_| WorkerError::Server(format!("bad endpoint on ready line: {ep:?}")))?;
        Ok(worker)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the worker now (SIGKILL, by pid) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit; returns its status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalWorker {
    fn drop(&mut self) {
        self.kill();
    }
}
