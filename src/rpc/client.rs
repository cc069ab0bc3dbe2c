//! One session with one rpc-server.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use bytes::BytesMut;

use shardline_protocol::{
    Command, DecodeError, ExpectedResponse, HelloResponse, Version, CONN_CAPS_SIZE,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::{InvalidRequest, RpcError};
use super::validate::{check_device, Buffers, RemoteBuffer};

mod commands;

/// Timeouts of a session.
///
/// Each call gets `call_timeout`, plus the time its bytes take at
/// `min_throughput`, counted from the moment the server is expected to have
/// finished the work already queued by pipelined commands (their transfers,
/// and `compute_timeout` for each graph computation). A dead peer is thus
/// detected within about `call_timeout` of the point where it should have
/// answered, while long uploads and computations are not cut short.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Time allowed to open the TCP connection.
    pub connect_timeout: Duration,
    /// Base time allowed for every call (HELLO included).
    pub call_timeout: Duration,
    /// Slowest transfer rate tolerated, in bytes per second; a call moving
    /// `n` bytes gets `n / min_throughput` more time. 0 adds nothing.
    pub min_throughput: u64,
    /// Time a graph computation (`GRAPH_COMPUTE`, `GRAPH_RECOMPUTE`) may
    /// take on the server.
    pub compute_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            min_throughput: 10 * 1024 * 1024,
            compute_timeout: Duration::from_secs(300),
        }
    }
}

/// How [`RpcClient::set_tensor_cached`] delivered the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upload {
    /// The data went over the network (`SET_TENSOR`).
    Sent,
    /// The server had it in its cache (`SET_TENSOR_HASH` answered 1).
    Cached,
}

/// What a session has moved so far, as counted by the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Times the client waited for the server's answer (a batch of
    /// pipelined queries answered together counts once).
    pub round_trips: u64,
    /// Bytes written to the socket (frames and tensor data).
    pub bytes_sent: u64,
    /// Bytes read from the socket.
    pub bytes_received: u64,
}

/// A fixed-size response payload (the largest is HELLO's 28 bytes).
struct Answer {
    buf: [u8; 32],
    len: usize,
}

impl Answer {
    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// What went wrong on the socket, before it is named for the caller.
enum Failure {
    Io(io::Error),
    Size { expected: u64, got: u64 },
}

/// A session with one rpc-server: one TCP connection, HELLO done, device
/// count known.
///
/// Calls take `&mut self` and run one at a time. Commands without a response
/// (`FREE_BUFFER`, `BUFFER_CLEAR`, `SET_TENSOR`, `GRAPH_COMPUTE`,
/// `INIT_TENSOR`, `GRAPH_RECOMPUTE`, `MEMSET_TENSOR`) are pipelined: the
/// call returns once the request is written. rpc-server closes the
/// connection on any request it rejects, so such a failure surfaces on the
/// next round trip as [`RpcError::Closed`] naming the last pipelined
/// command; [`RpcClient::sync`] is a cheap round trip to force it.
///
/// Tensor operations are checked against this session's buffers first (the
/// caller passes each tensor's byte size, `ggml_nbytes`, which the client
/// cannot compute by itself); a request that fails the checks is refused
/// with [`RpcError::InvalidRequest`] and nothing is sent.
///
/// Dropping a call's future mid-flight, or any transport error, leaves the
/// session unusable ([`RpcError::Poisoned`]); closing the connection frees
/// every buffer of the session on the server.
#[derive(Debug)]
pub struct RpcClient {
    addr: String,
    stream: TcpStream,
    opts: ClientOptions,
    hello: HelloResponse,
    device_count: u32,
    buffers: Buffers,
    /// Devices with a graph stored by GRAPH_COMPUTE (what GRAPH_RECOMPUTE
    /// reruns), each with the owner tag it was sent with.
    stored_graphs: HashMap<u32, u64>,
    /// Last command written without a response since the last round trip.
    last_pipelined: Option<Command>,
    /// When the server should be done with the work pipelined so far.
    backlog_until: Option<Instant>,
    /// Set while a call's I/O is under way; left set when it fails.
    poisoned_by: Option<Command>,
    /// The frame being sent (reused: cleared, never shrunk).
    scratch: BytesMut,
    /// Counted traffic.
    traffic: Traffic,
    /// Pipelined commands held back by [`RpcClient::cork`], written with
    /// the next round trip in one write.
    corked: Option<BytesMut>,
    /// Server work (graph computations) among the held-back commands.
    corked_work: Duration,
}

/// Time `bytes` take at `rate` bytes per second (0: no time).
fn transfer_time(bytes: u64, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// `start + d`, saturating at a year from `start`.
fn later(start: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    start
        .checked_add(d.min(YEAR))
        .or_else(|| start.checked_add(YEAR))
        .unwrap_or(start)
}

fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl RpcClient {
    /// Connects to an rpc-server at `addr` (`host:port`), sets TCP_NODELAY,
    /// does HELLO (all-zero connection caps: plain TCP) and asks for the
    /// device count.
    ///
    /// Refuses a server whose major version is not 7 or whose minor version
    /// is newer than 0 ([`RpcError::VersionMismatch`]).
    pub async fn connect(addr: &str, opts: ClientOptions) -> Result<Self, RpcError> {
        let connect = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr));
        let stream = match connect.await {
            Err(_) => {
                return Err(RpcError::ConnectTimeout {
                    addr: addr.to_owned(),
                    after: opts.connect_timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(RpcError::Connect {
                    addr: addr.to_owned(),
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        stream
            .set_nodelay(true)
            .map_err(|source| RpcError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let mut client = RpcClient {
            addr: addr.to_owned(),
            stream,
            opts,
            hello: HelloResponse {
                version: PROTOCOL_VERSION,
                conn_caps: [0; CONN_CAPS_SIZE],
            },
            device_count: 0,
            buffers: Buffers::default(),
            stored_graphs: HashMap::new(),
            last_pipelined: None,
            backlog_until: None,
            poisoned_by: None,
            scratch: BytesMut::with_capacity(4096),
            traffic: Traffic::default(),
            corked: None,
            corked_work: Duration::ZERO,
        };
        client.hello = client.hello().await?;
        client.device_count = client.query_device_count().await?;
        tracing::debug!(
            addr,
            version = %client.hello.version,
            devices = client.device_count,
            "connected to rpc-server"
        );
        Ok(client)
    }

    /// The address this session was opened with.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The server's protocol version (from HELLO).
    pub fn server_version(&self) -> Version {
        self.hello.version
    }

    /// The transport capabilities the server advertised in HELLO (ignored:
    /// this client always stays on plain TCP).
    pub fn server_conn_caps(&self) -> [u8; CONN_CAPS_SIZE] {
        self.hello.conn_caps
    }

    /// The server's device count (asked once at connect time).
    pub fn device_count(&self) -> u32 {
        self.device_count
    }

    /// The options this session runs with.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Whether the server holds a graph for `device` that
    /// [`RpcClient::graph_recompute`] can re-run (none after any
    /// `FREE_BUFFER` on the connection).
    pub fn has_stored_graph(&self, device: u32) -> bool {
        self.stored_graphs.contains_key(&device)
    }

    /// Whether the graph the server holds for `device` is the one sent by
    /// [`RpcClient::graph_compute_for`] with `owner`: several graphs that
    /// take turns on one device (a stage and a share of the output head)
    /// each need to know when the other replaced theirs.
    pub fn stored_graph_is(&self, device: u32, owner: u64) -> bool {
        self.stored_graphs.get(&device) == Some(&owner)
    }

    /// Round trips and bytes moved so far on this session.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// The live buffers this session allocated.
    pub fn buffers(&self) -> impl Iterator<Item = &RemoteBuffer> {
        self.buffers.iter()
    }

    /// A live buffer of this session, by `remote_ptr`.
    pub fn buffer(&self, remote_ptr: u64) -> Option<RemoteBuffer> {
        self.buffers.get(remote_ptr).ok().copied()
    }

    // ------------------------------------------------------------ transport

    /// When a call moving `moved` bytes must be done: counted from the end
    /// of the work already pipelined (`start`), the call timeout plus the
    /// bytes' `transfer` time at the slowest tolerated rate. Also how long
    /// that is from now (`allowed`).
    fn deadline(&self, moved: u64) -> (Instant, Duration, Instant, Duration) {
        let transfer = transfer_time(moved, self.opts.min_throughput);
        let now = Instant::now();
        let start = self.backlog_until.filter(|&t| t > now).unwrap_or(now);
        let deadline = later(start, self.opts.call_timeout.saturating_add(transfer));
        (
            start,
            transfer,
            deadline,
            deadline.saturating_duration_since(now),
        )
    }

    /// Sends the frame in `self.scratch` followed by `data`, then, if
    /// `reply` is given, reads a response whose payload must be exactly
    /// `reply.len()` bytes into it. `work` is server time the command queues
    /// beyond its transfer (graph computations).
    async fn exchange(
        &mut self,
        cmd: Command,
        data: &[u8],
        reply: Option<&mut [u8]>,
        work: Duration,
    ) -> Result<(), RpcError> {
        if let Some(during) = self.poisoned_by {
            return Err(RpcError::Poisoned { during });
        }
        let mut data = data;
        if let Some(held) = self.corked.as_mut() {
            if reply.is_none() {
                held.extend_from_slice(&self.scratch);
                held.extend_from_slice(data);
                self.corked_work = self.corked_work.saturating_add(work);
                self.last_pipelined = Some(cmd);
                return Ok(());
            }
        }
        // Commands held back go first, in the same write.
        if let Some(mut held) = self.corked.take().filter(|h| !h.is_empty()) {
            held.extend_from_slice(&self.scratch);
            held.extend_from_slice(data);
            self.scratch = held;
            data = &[];
            let now = Instant::now();
            let from = self.backlog_until.filter(|&t| t > now).unwrap_or(now);
            self.backlog_until = Some(later(from, std::mem::take(&mut self.corked_work)));
        }
        let round_trip = reply.is_some();
        let reply_len = reply.as_ref().map_or(0, |r| r.len());
        let moved = len64(self.scratch.len())
            .saturating_add(len64(data.len()))
            .saturating_add(len64(reply_len));
        let (start, transfer, deadline, allowed) = self.deadline(moved);

        self.poisoned_by = Some(cmd);
        let io = Self::io(&mut self.stream, &self.scratch, data, reply);
        let result = match tokio::time::timeout_at(deadline, io).await {
            Err(_) => {
                return Err(RpcError::Timeout {
                    cmd,
                    after: allowed,
                })
            }
            Ok(r) => r,
        };
        if let Err(f) = result {
            return Err(self.failure(cmd, f));
        }
        self.poisoned_by = None;
        self.traffic.bytes_sent += len64(self.scratch.len()) + len64(data.len());
        if round_trip {
            self.traffic.round_trips += 1;
            self.traffic.bytes_received += 8 + len64(reply_len);
            self.last_pipelined = None;
            self.backlog_until = None;
        } else {
            self.last_pipelined = Some(cmd);
            self.backlog_until = Some(later(start, transfer.saturating_add(work)));
        }
        Ok(())
    }

    /// Holds back pipelined commands (SET_TENSOR, GRAPH_RECOMPUTE, ...)
    /// until the next command with a response, then writes them all in one
    /// write: a step's inputs, its graph run and the read of its output go
    /// out as one burst. [`RpcClient::uncork`] writes them without a
    /// round trip.
    pub fn cork(&mut self) {
        if self.corked.is_none() {
            self.corked = Some(BytesMut::new());
        }
    }

    /// Writes the commands held back by [`RpcClient::cork`] now and stops
    /// holding them back.
    pub async fn uncork(&mut self) -> Result<(), RpcError> {
        let Some(held) = self.corked.take() else {
            return Ok(());
        };
        if held.is_empty() {
            return Ok(());
        }
        let cmd = self.last_pipelined.unwrap_or(Command::SetTensor);
        self.scratch = held;
        let work = std::mem::take(&mut self.corked_work);
        self.exchange(cmd, &[], None, work).await
    }

    async fn io(
        stream: &mut TcpStream,
        frame: &[u8],
        data: &[u8],
        reply: Option<&mut [u8]>,
    ) -> Result<(), Failure> {
        stream.write_all(frame).await.map_err(Failure::Io)?;
        if !data.is_empty() {
            stream.write_all(data).await.map_err(Failure::Io)?;
        }
        let Some(out) = reply else {
            return Ok(());
        };
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).await.map_err(Failure::Io)?;
        let got = u64::from_le_bytes(header);
        let expected = len64(out.len());
        if got != expected {
            return Err(Failure::Size { expected, got });
        }
        stream.read_exact(out).await.map_err(Failure::Io)?;
        Ok(())
    }

    fn failure(&self, cmd: Command, f: Failure) -> RpcError {
        match f {
            Failure::Size { expected, got } => RpcError::BadResponse { cmd, expected, got },
            Failure::Io(e) => match e.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => RpcError::Closed {
                    cmd,
                    last_pipelined: self.last_pipelined,
                },
                _ => RpcError::Io { cmd, source: e },
            },
        }
    }

    /// A decoding error on a response of the right size: the peer is not
    /// trustworthy any more.
    fn malformed(&mut self, cmd: Command, source: DecodeError) -> RpcError {
        self.poisoned_by = Some(cmd);
        RpcError::MalformedResponse { cmd, source }
    }

    /// Sends the frame in `self.scratch` and reads a fixed-size answer.
    async fn round_trip(&mut self, cmd: Command) -> Result<Answer, RpcError> {
        let len = ExpectedResponse::fixed(cmd)
            .and_then(|e| usize::try_from(e.len).ok())
            .unwrap_or(0);
        let mut answer = Answer {
            buf: [0; 32],
            len: len.min(32),
        };
        let Answer { buf, len } = &mut answer;
        let out = buf.get_mut(..*len).unwrap_or(&mut []);
        self.exchange(cmd, &[], Some(out), Duration::ZERO).await?;
        Ok(answer)
    }

    /// Writes the `n` requests of `cmd` queued in `self.scratch`, each
    /// answered with a fixed-size payload, and reads the `n` answers: one
    /// round trip for the whole batch. Reading runs alongside writing, so a
    /// batch of any size cannot stall on full socket buffers. `work_bytes`
    /// is data the server moves on its side (cache files it reads) and gets
    /// time at `min_throughput` like bytes on the wire.
    async fn batch(
        &mut self,
        cmd: Command,
        n: usize,
        work_bytes: u64,
    ) -> Result<Vec<Answer>, RpcError> {
        if let Some(during) = self.poisoned_by {
            return Err(RpcError::Poisoned { during });
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        if self.corked.as_ref().is_some_and(|h| !h.is_empty()) {
            // The batch is in `scratch`: send what was held back first.
            let batch = std::mem::take(&mut self.scratch);
            self.uncork().await?;
            self.scratch = batch;
        }
        self.corked = None;
        let len = ExpectedResponse::fixed(cmd)
            .and_then(|e| usize::try_from(e.len).ok())
            .unwrap_or(0)
            .min(32);
        let replies = len64(n).saturating_mul(8 + len64(len));
        let moved = len64(self.scratch.len())
            .saturating_add(replies)
            .saturating_add(work_bytes);
        let (_, _, deadline, allowed) = self.deadline(moved);

        self.poisoned_by = Some(cmd);
        let (mut rd, mut wr) = self.stream.split();
        let frames = &self.scratch;
        let write = async {
            wr.write_all(frames).await.map_err(Failure::Io)?;
            wr.flush().await.map_err(Failure::Io)
        };
        let read = async {
            // The server answers nothing but these n requests, so a buffered
            // reader cannot swallow bytes meant for a later call.
            let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, &mut rd);
            let mut answers = Vec::with_capacity(n);
            for _ in 0..n {
                let mut header = [0u8; 8];
                rd.read_exact(&mut header).await.map_err(Failure::Io)?;
                let got = u64::from_le_bytes(header);
                if got != len64(len) {
                    return Err(Failure::Size {
                        expected: len64(len),
                        got,
                    });
                }
                let mut a = Answer { buf: [0; 32], len };
                if let Some(out) = a.buf.get_mut(..len) {
                    rd.read_exact(out).await.map_err(Failure::Io)?;
                }
                answers.push(a);
            }
            // Nothing may be left over in the buffer.
            if !rd.buffer().is_empty() {
                return Err(Failure::Size {
                    expected: 0,
                    got: len64(rd.buffer().len()),
                });
            }
            Ok(answers)
        };
        let result = match tokio::time::timeout_at(deadline, async {
            tokio::try_join!(write, read)
        })
        .await
        {
            Err(_) => {
                return Err(RpcError::Timeout {
                    cmd,
                    after: allowed,
                })
            }
            Ok(r) => r,
        };
        let answers = match result {
            Ok(((), answers)) => answers,
            Err(f) => return Err(self.failure(cmd, f)),
        };
        self.poisoned_by = None;
        self.traffic.round_trips += 1;
        self.traffic.bytes_sent += len64(self.scratch.len());
        self.traffic.bytes_received += replies;
        self.last_pipelined = None;
        self.backlog_until = None;
        Ok(answers)
    }

    /// Sends the frame in `self.scratch` (and `data`) without waiting.
    async fn pipeline(
        &mut self,
        cmd: Command,
        data: &[u8],
        work: Duration,
    ) -> Result<(), RpcError> {
        self.exchange(cmd, data, None, work).await
    }

    fn check_device(&self, device: u32) -> Result<(), RpcError> {
        Ok(check_device(device, self.device_count)?)
    }
}
