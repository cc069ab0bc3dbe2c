//! A link emulator: a TCP relay on loopback that puts a one-way delay and a
//! bandwidth cap on each direction, so benches and tests can place servers
//! behind "1 GbE, 0.2 ms", "Wi-Fi, 100 Mbit/s, 3 ms" or "WAN, 10 ms" links.
//!
//! Each direction of a connection is a reader thread and a writer thread
//! joined by a queue of at most [`LinkSpec::buffer`] bytes. A chunk read from
//! one side occupies the link for `len / rate` behind the chunks before it,
//! then propagates for `delay`; the writer sends it no earlier than that
//! arrival time. When the queue is full the reader stops reading, so the
//! sender feels TCP backpressure just as it would from a real, slow link.
//!
//! It runs on plain threads with blocking sockets rather than on a tokio
//! runtime: it is then usable from blocking code (llama.cpp's C client) and
//! from async tests alike, and `std::thread::sleep`-grade timing is precise
//! enough for the 0.2 ms of the 1 GbE preset, which tokio's 1 ms timer is not.
//! Thread hand-offs and timer slack add some 0.1 ms to each direction
//! (a 1 GbE round trip measures about 0.55 ms, not 0.4). A few threads per
//! connection are fine for the handful that benches open.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use thiserror::Error;

mod spec;
#[cfg(test)]
mod tests;

pub use spec::LinkSpec;
use spec::MAX_DELAY;

/// Most bytes moved per read; smaller than most buffers so that a chunk
/// cannot hold the link for long at low rates.
const CHUNK: usize = 64 * 1024;
/// Time allowed to reach the target for each accepted connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a link spec was refused or a relay could not start.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The spec string held no items.
    #[error("empty link spec (expected gbe, wifi, wan or items like delay=10ms,rate=100mbit,buffer=4mib)")]
    EmptySpec,
    /// An item is neither a preset nor a known `key=value`.
    #[error("unknown link spec item '{0}' (expected gbe, wifi, wan, delay=, rate= or buffer=)")]
    UnknownItem(String),
    /// A value could not be read or is out of range.
    #[error("bad {key} '{value}': {reason}")]
    BadValue {
        /// `delay`, `rate` or `buffer`.
        key: &'static str,
        /// The value as given.
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// The loopback listener could not be opened.
    #[error("cannot listen on 127.0.0.1: {source}")]
    Listen {
        /// Why.
        source: io::Error,
    },
    /// The relay's accept thread could not be started.
    #[error("cannot start the relay thread: {source}")]
    Thread {
        /// Why.
        source: io::Error,
    },
}

/// Traffic through a relay so far, over all its connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Bytes delivered from clients to the target.
    pub client_to_server: u64,
    /// Bytes delivered from the target to clients.
    pub server_to_client: u64,
    /// Client connections accepted.
    pub connections: u64,
}

#[derive(Debug, Default)]
struct Counters {
    up: AtomicU64,
    down: AtomicU64,
    accepted: AtomicU64,
}

/// What the accept thread and [`Relay`]'s drop share.
#[derive(Debug, Default)]
struct Registry {
    stopped: bool,
    conns: Vec<Weak<Conn>>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    spec: LinkSpec,
    counters: Counters,
    registry: Mutex<Registry>,
}

/// A running link emulator: connections to [`Relay::addr`] are forwarded to
/// the target through the emulated link. Dropping it (or [`Relay::stop`])
/// stops accepting, closes every live connection and joins its threads.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on `127.0.0.1:0` and forwards each connection to `target`
    /// through a link with `spec`, on background threads of its own.
    pub fn start(target: SocketAddr, spec: LinkSpec) -> Result<Relay, RelayError> {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).map_err(|source| RelayError::Listen { source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| RelayError::Listen { source })?;
        let shared = Arc::new(Shared {
            target,
            spec,
            counters: Counters::default(),
            registry: Mutex::new(Registry::default()),
        });
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("relay-accept".into())
            .spawn(move || accept_loop(listener, &s))
            .map_err(|source| RelayError::Thread { source })?;
        Ok(Relay {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The link every connection goes through.
    pub fn spec(&self) -> LinkSpec {
        self.shared.spec
    }

    /// Bytes forwarded and connections accepted so far.
    pub fn stats(&self) -> RelayStats {
        let c = &self.shared.counters;
        RelayStats {
            client_to_server: c.up.load(Ordering::Relaxed),
            server_to_client: c.down.load(Ordering::Relaxed),
            connections: c.accepted.load(Ordering::Relaxed),
        }
    }

    /// Stops the relay and closes its connections (what dropping it does).
    pub fn stop(self) {}
}

impl Drop for Relay {
    fn drop(&mut self) {
        lock(&self.shared.registry).stopped = true;
        if let Some(accept) = self.accept.take() {
            // The accept thread sits in a blocking accept; a connection of
            // our own wakes it to see `stopped`. Were that to fail, joining
            // could hang forever, so the thread is left to the process then.
            if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok() {
                let _ = accept.join();
            }
        }
        let (conns, threads) = {
            let mut reg = lock(&self.shared.registry);
            (
                std::mem::take(&mut reg.conns),
                std::mem::take(&mut reg.threads),
            )
        };
        for conn in conns.iter().filter_map(Weak::upgrade) {
            conn.abort();
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking relay thread leaves consistent data behind (counters and
    // queues), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    for incoming in listener.incoming() {
        let mut reg = lock(&shared.registry);
        if reg.stopped {
            return;
        }
        let client = match incoming {
            Ok(c) => c,
            Err(_) => {
                // Out of descriptors and the like: back off rather than spin.
                drop(reg);
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        reg.threads.retain(|t| !t.is_finished());
        let s = Arc::clone(shared);
        // If no thread can be had, dropping `client` closes it, which is
        // what the client of a failed relay should see.
        if let Ok(t) = thread::Builder::new()
            .name("relay-conn".into())
            .spawn(move || serve(client, &s))
        {
            reg.threads.push(t);
        }
    }
}

/// One client connection: both sockets and both directions' queues.
#[derive(Debug)]
struct Conn {
    client: TcpStream,
    server: TcpStream,
    up: Pipe,
    down: Pipe,
    /// Directions that ended cleanly (EOF passed on).
    done: AtomicUsize,
}

impl Conn {
    /// Ends the connection now: unblocks every read and write on both
    /// sockets and wakes the queues' waiters.
    fn abort(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
        self.up.close();
        self.down.close();
    }
}

fn serve(client: TcpStream, shared: &Shared) {
    let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
        // Dropping `client` closes it: the client sees the target is away.
        return;
    };
    // Request/response traffic: small writes must leave at once.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let conn = Arc::new(Conn {
        client,
        server,
        up: Pipe::new(),
        down: Pipe::new(),
        done: AtomicUsize::new(0),
    });
    {
        let mut reg = lock(&shared.registry);
        if reg.stopped {
            return;
        }
        reg.conns.retain(|c| c.strong_count() > 0);
        reg.conns.push(Arc::downgrade(&conn));
    }
    let (spec, c) = (&shared.spec, &shared.counters);
    let c2s = (&conn.client, &conn.up, &conn.server, &c.up);
    let s2c = (&conn.server, &conn.down, &conn.client, &c.down);
    thread::scope(|scope| {
        for (name, (src, pipe, dst, count)) in [("relay-c2s", c2s), ("relay-s2c", s2c)] {
            let conn = &conn;
            let spawned = thread::Builder::new()
                .name(format!("{name}-in"))
                .spawn_scoped(scope, move || read_side(src, pipe, spec, conn))
                .and_then(|_| {
                    thread::Builder::new()
                        .name(format!("{name}-out"))
                        .spawn_scoped(scope, move || write_side(dst, pipe, count, conn))
                });
            if spawned.is_err() {
                conn.abort();
            }
        }
    });
}

/// Reads from `src` into the link while the link has room for a chunk.
fn read_side(mut src: &TcpStream, pipe: &Pipe, spec: &LinkSpec, conn: &Conn) {
    let limit = spec.buffer.max(1);
    let mut buf = vec![0u8; CHUNK.min(limit)];
    loop {
        if !pipe.wait_for_room(buf.len(), limit) {
            return;
        }
        match src.read(&mut buf) {
            Ok(0) => return pipe.finish(),
            Ok(n) => pipe.push(&buf[..n], spec),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return conn.abort(),
        }
    }
}

/// Delivers the link's chunks to `dst` at their arrival times; passes on
/// EOF once the queue is empty.
fn write_side(mut dst: &TcpStream, pipe: &Pipe, count: &AtomicU64, conn: &Conn) {
    loop {
        match pipe.next_due() {
            Next::Closed => return,
            Next::Eof => {
                let _ = dst.shutdown(Shutdown::Write);
                if conn.done.fetch_add(1, Ordering::AcqRel) + 1 == 2 {
                    conn.abort();
                }
                return;
            }
            Next::Chunk(data) => {
                if dst.write_all(&data).is_err() {
                    return conn.abort();
                }
                count.fetch_add(data.len() as u64, Ordering::Relaxed);
                pipe.release(data);
            }
        }
    }
}

/// One direction's link: chunks in flight with their arrival times.
#[derive(Debug)]
struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
}

#[derive(Debug)]
struct PipeState {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    /// Delivered chunks' buffers, for the next reads to fill.
    spare: Vec<Vec<u8>>,
    /// Bytes read and not yet delivered.
    queued: usize,
    /// When the link finishes serializing what it already holds.
    free_at: Instant,
    eof: bool,
    closed: bool,
}

enum Next {
    Chunk(Vec<u8>),
    Eof,
    Closed,
}

impl Pipe {
    fn new() -> Self {
        Pipe {
            state: Mutex::new(PipeState {
                chunks: VecDeque::new(),
                spare: Vec::new(),
                queued: 0,
                free_at: Instant::now(),
                eof: false,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// Waits until `want` more bytes fit under `limit`; false once closed.
    fn wait_for_room(&self, want: usize, limit: usize) -> bool {
        let mut st = lock(&self.state);
        while !st.closed && st.queued + want > limit {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        !st.closed
    }

    fn push(&self, data: &[u8], spec: &LinkSpec) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let busy = match spec.rate {
            Some(r) if r > 0 => {
                let ns = data.len() as u128 * 1_000_000_000 / u128::from(r);
                Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
            }
            _ => Duration::ZERO,
        };
        // Saturating: a spec built by hand may hold absurd durations.
        let far = || now + MAX_DELAY * 1000;
        st.free_at = st.free_at.max(now).checked_add(busy).unwrap_or_else(far);
        let due = st.free_at.checked_add(spec.delay).unwrap_or_else(far);
        st.queued += data.len();
        let mut chunk = st.spare.pop().unwrap_or_default();
        chunk.clear();
        chunk.extend_from_slice(data);
        st.chunks.push_back((due, chunk));
        self.changed.notify_all();
    }

    /// Waits for the next chunk's arrival time, or the end of the stream.
    fn next_due(&self) -> Next {
        let mut st = lock(&self.state);
        loop {
            if st.closed {
                return Next::Closed;
            }
            let now = Instant::now();
            match st.chunks.front() {
                Some((due, _)) if *due <= now => {
                    return st
                        .chunks
                        .pop_front()
                        .map_or(Next::Closed, |(_, d)| Next::Chunk(d));
                }
                Some((due, _)) => {
                    let wait = due.saturating_duration_since(now);
                    st = self
                        .changed
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None if st.eof => return Next::Eof,
                None => st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// A delivered chunk: its bytes leave the link, its buffer is kept.
    fn release(&self, chunk: Vec<u8>) {
        let mut st = lock(&self.state);
        st.queued = st.queued.saturating_sub(chunk.len());
        // The link never holds more than its buffer's worth of chunks.
        if st.spare.len() < 64 {
            st.spare.push(chunk);
        }
        self.changed.notify_all();
    }

    fn finish(&self) {
        lock(&self.state).eof = true;
        self.changed.notify_all();
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }
}
