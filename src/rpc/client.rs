//! One session with one rpc-server.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use shardline_protocol as proto;
use shardline_protocol::{
    Command, DecodeError, DeviceMemory, ExpectedResponse, HelloResponse, RpcTensor, Version,
    CONN_CAPS_SIZE, HASH_THRESHOLD, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::{InvalidRequest, RpcError};
use super::validate::{check_device, Buffers, RemoteBuffer};

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
    /// The frame being sent.
    scratch: Vec<u8>,
    /// Counted traffic.
    traffic: Traffic,
    /// Pipelined commands held back by [`RpcClient::cork`], written with
    /// the next round trip in one write.
    corked: Option<Vec<u8>>,
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
            scratch: Vec::with_capacity(4096),
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
            self.corked = Some(Vec::new());
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

    // ------------------------------------------------------------ commands

    async fn hello(&mut self) -> Result<HelloResponse, RpcError> {
        self.scratch.clear();
        proto::encode_hello(&[0; CONN_CAPS_SIZE], &mut self.scratch);
        let a = self.round_trip(Command::Hello).await?;
        let hello = proto::decode_hello_response(a.bytes())
            .map_err(|e| self.malformed(Command::Hello, e))?;
        if !PROTOCOL_VERSION.accepts_server(hello.version) {
            self.poisoned_by = Some(Command::Hello);
            return Err(RpcError::VersionMismatch {
                server: hello.version,
                client: PROTOCOL_VERSION,
            });
        }
        Ok(hello)
    }

    /// Asks the server for its device count (`DEVICE_COUNT`).
    pub async fn query_device_count(&mut self) -> Result<u32, RpcError> {
        self.scratch.clear();
        proto::encode_device_count(&mut self.scratch);
        let a = self.round_trip(Command::DeviceCount).await?;
        proto::decode_device_count_response(a.bytes())
            .map_err(|e| self.malformed(Command::DeviceCount, e))
    }

    /// A cheap round trip (`DEVICE_COUNT`): returns once the server has
    /// processed every request sent before it, or reports the connection
    /// the server closed because one of them was rejected.
    pub async fn sync(&mut self) -> Result<(), RpcError> {
        self.query_device_count().await.map(|_| ())
    }

    /// Free and total memory of `device` (`GET_DEVICE_MEMORY`).
    pub async fn device_memory(&mut self, device: u32) -> Result<DeviceMemory, RpcError> {
        self.check_device(device)?;
        self.scratch.clear();
        proto::encode_get_device_memory(device, &mut self.scratch);
        let a = self.round_trip(Command::GetDeviceMemory).await?;
        proto::decode_get_device_memory_response(a.bytes())
            .map_err(|e| self.malformed(Command::GetDeviceMemory, e))
    }

    /// Buffer alignment of `device` in bytes (`GET_ALIGNMENT`).
    pub async fn alignment(&mut self, device: u32) -> Result<u64, RpcError> {
        self.check_device(device)?;
        self.scratch.clear();
        proto::encode_get_alignment(device, &mut self.scratch);
        let a = self.round_trip(Command::GetAlignment).await?;
        proto::decode_get_alignment_response(a.bytes())
            .map_err(|e| self.malformed(Command::GetAlignment, e))
    }

    /// Largest buffer `device` can allocate (`GET_MAX_SIZE`).
    pub async fn max_size(&mut self, device: u32) -> Result<u64, RpcError> {
        self.check_device(device)?;
        self.scratch.clear();
        proto::encode_get_max_size(device, &mut self.scratch);
        let a = self.round_trip(Command::GetMaxSize).await?;
        proto::decode_get_max_size_response(a.bytes())
            .map_err(|e| self.malformed(Command::GetMaxSize, e))
    }

    /// Allocates a buffer of at least `size` bytes on `device`
    /// (`ALLOC_BUFFER`, then `BUFFER_GET_BASE` for its base address) and
    /// records it in the session's buffer table.
    ///
    /// [`RpcError::AllocFailed`] when the server cannot allocate it.
    pub async fn alloc_buffer(&mut self, device: u32, size: u64) -> Result<RemoteBuffer, RpcError> {
        self.check_device(device)?;
        self.scratch.clear();
        proto::encode_alloc_buffer(device, size, &mut self.scratch);
        let a = self.round_trip(Command::AllocBuffer).await?;
        let r = proto::decode_alloc_buffer_response(a.bytes())
            .map_err(|e| self.malformed(Command::AllocBuffer, e))?;
        if r.remote_ptr == 0 {
            return Err(RpcError::AllocFailed { device, size });
        }
        let base = self.raw_buffer_get_base(r.remote_ptr).await?;
        let buffer = RemoteBuffer {
            remote_ptr: r.remote_ptr,
            base,
            size: r.remote_size,
            device,
        };
        self.buffers.insert(buffer);
        tracing::trace!(addr = %self.addr, ?buffer, "allocated buffer");
        Ok(buffer)
    }

    async fn raw_buffer_get_base(&mut self, remote_ptr: u64) -> Result<u64, RpcError> {
        self.scratch.clear();
        proto::encode_buffer_get_base(remote_ptr, &mut self.scratch);
        let a = self.round_trip(Command::BufferGetBase).await?;
        proto::decode_buffer_get_base_response(a.bytes())
            .map_err(|e| self.malformed(Command::BufferGetBase, e))
    }

    /// Base address of one of this session's buffers (`BUFFER_GET_BASE`).
    /// [`RemoteBuffer::base`] already holds it; this asks the server again.
    pub async fn buffer_get_base(&mut self, remote_ptr: u64) -> Result<u64, RpcError> {
        self.buffers.get(remote_ptr)?;
        self.raw_buffer_get_base(remote_ptr).await
    }

    /// Frees one of this session's buffers (`FREE_BUFFER`, pipelined). The
    /// server also drops every stored graph, so a later
    /// [`RpcClient::graph_recompute`] needs a new [`RpcClient::graph_compute`].
    pub async fn free_buffer(&mut self, remote_ptr: u64) -> Result<(), RpcError> {
        self.buffers.get(remote_ptr)?;
        self.scratch.clear();
        proto::encode_free_buffer(remote_ptr, &mut self.scratch);
        self.buffers.remove(remote_ptr);
        self.stored_graphs.clear();
        self.pipeline(Command::FreeBuffer, &[], Duration::ZERO)
            .await
    }

    /// Bytes of the buffers this connection holds on `device` (allocated
    /// and not freed): what the coordinator has taken of the device.
    pub fn allocated_bytes(&self, device: u32) -> u64 {
        self.buffers
            .iter()
            .filter(|b| b.device == device)
            .map(|b| b.size)
            .sum()
    }

    /// Fills a whole buffer with `value` (`BUFFER_CLEAR`, pipelined).
    pub async fn buffer_clear(&mut self, remote_ptr: u64, value: u8) -> Result<(), RpcError> {
        self.buffers.get(remote_ptr)?;
        self.scratch.clear();
        proto::encode_buffer_clear(remote_ptr, value, &mut self.scratch);
        self.pipeline(Command::BufferClear, &[], Duration::ZERO)
            .await
    }

    /// Writes `data` at byte `offset` of `tensor` (`SET_TENSOR`, pipelined).
    /// `nbytes` is the tensor's byte size. The data goes to the socket
    /// straight from the slice (e.g. an mmapped file), without a copy.
    pub async fn set_tensor(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), RpcError> {
        self.send_set_tensor(tensor, nbytes, offset, data, false)
            .await
    }

    async fn send_set_tensor(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        data: &[u8],
        cache: bool,
    ) -> Result<(), RpcError> {
        self.buffers
            .check_range(tensor, nbytes, offset, len64(data.len()))?;
        self.scratch.clear();
        proto::encode_set_tensor_header(
            tensor,
            cache,
            offset,
            len64(data.len()),
            &mut self.scratch,
        )
        .map_err(InvalidRequest::from)?;
        self.pipeline(Command::SetTensor, data, Duration::ZERO)
            .await
    }

    /// Like [`RpcClient::set_tensor`], through the server's cache for data
    /// over 10 MiB, as llama.cpp does for weights: first `SET_TENSOR_HASH`
    /// with the data's FNV-1a hash (a round trip); if the server does not
    /// have it, `SET_TENSOR` with the cache flag set, so that a server
    /// started with a cache directory keeps a copy for next time.
    ///
    /// Hashing runs on the calling task (about a second per GiB).
    pub async fn set_tensor_cached(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<Upload, RpcError> {
        if len64(data.len()) <= HASH_THRESHOLD {
            self.send_set_tensor(tensor, nbytes, offset, data, false)
                .await?;
            return Ok(Upload::Sent);
        }
        self.buffers
            .check_range(tensor, nbytes, offset, len64(data.len()))?;
        let hash = proto::fnv1a_64(data);
        self.scratch.clear();
        proto::encode_set_tensor_hash(tensor, offset, hash, &mut self.scratch);
        let a = self.round_trip(Command::SetTensorHash).await?;
        let cached = proto::decode_set_tensor_hash_response(a.bytes())
            .map_err(|e| self.malformed(Command::SetTensorHash, e))?;
        if cached {
            return Ok(Upload::Cached);
        }
        self.send_set_tensor(tensor, nbytes, offset, data, true)
            .await?;
        Ok(Upload::Sent)
    }

    /// Writes all of `data` to `tensor` (`SET_TENSOR`, pipelined) with the
    /// cache flag set, so that a server started with a cache directory keeps
    /// a copy under the data's FNV-1a hash for the next load.
    pub async fn set_tensor_to_cache(
        &mut self,
        tensor: &RpcTensor,
        data: &[u8],
    ) -> Result<(), RpcError> {
        self.send_set_tensor(tensor, len64(data.len()), 0, data, true)
            .await
    }

    /// Asks the server to fill whole tensors from its cache: one
    /// `SET_TENSOR_HASH` per `(tensor, nbytes, hash)` with the FNV-1a hash
    /// of the tensor's `nbytes` bytes, all sent at once and answered in one
    /// round trip. `true` where the server had the data and wrote it; the
    /// others still need their bytes sent.
    pub async fn set_tensors_from_cache(
        &mut self,
        items: &[(RpcTensor, u64, u64)],
    ) -> Result<Vec<bool>, RpcError> {
        self.scratch.clear();
        let mut work = 0u64;
        for (tensor, nbytes, hash) in items {
            self.buffers.check_range(tensor, *nbytes, 0, *nbytes)?;
            proto::encode_set_tensor_hash(tensor, 0, *hash, &mut self.scratch);
            work = work.saturating_add(*nbytes);
        }
        let answers = self
            .batch(Command::SetTensorHash, items.len(), work)
            .await?;
        self.decode_all(
            Command::SetTensorHash,
            &answers,
            proto::decode_set_tensor_hash_response,
        )
    }

    /// Decodes each answer of a batch; one malformed answer poisons the
    /// session.
    fn decode_all<T>(
        &mut self,
        cmd: Command,
        answers: &[Answer],
        decode: fn(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, RpcError> {
        let mut out = Vec::with_capacity(answers.len());
        for a in answers {
            match decode(a.bytes()) {
                Ok(v) => out.push(v),
                Err(e) => return Err(self.malformed(cmd, e)),
            }
        }
        Ok(out)
    }

    /// Reads `len` bytes at byte `offset` of `tensor` (`GET_TENSOR`).
    pub async fn get_tensor(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, RpcError> {
        // Validate before allocating `len` bytes.
        self.buffers.check_range(tensor, nbytes, offset, len)?;
        let n = usize::try_from(len).map_err(|_| InvalidRequest::OutsideTensor {
            tensor: super::validate::label(tensor),
            offset,
            len,
            nbytes,
        })?;
        let mut out = vec![0u8; n];
        self.get_tensor_into(tensor, nbytes, offset, &mut out)
            .await?;
        Ok(out)
    }

    /// Reads `out.len()` bytes at byte `offset` of `tensor` into `out`
    /// (`GET_TENSOR`).
    pub async fn get_tensor_into(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), RpcError> {
        self.buffers
            .check_range(tensor, nbytes, offset, len64(out.len()))?;
        self.scratch.clear();
        proto::encode_get_tensor(tensor, offset, len64(out.len()), &mut self.scratch);
        self.exchange(Command::GetTensor, &[], Some(out), Duration::ZERO)
            .await
    }

    /// Fills `len` bytes at byte `offset` of `tensor` with `value`
    /// (`MEMSET_TENSOR`, pipelined).
    pub async fn memset_tensor(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        len: u64,
        value: u8,
    ) -> Result<(), RpcError> {
        self.buffers.check_range(tensor, nbytes, offset, len)?;
        self.scratch.clear();
        proto::encode_memset_tensor(tensor, offset, len, value, &mut self.scratch);
        self.pipeline(Command::MemsetTensor, &[], Duration::ZERO)
            .await
    }

    /// Copies `src`'s `src_nbytes` bytes into `dst` on the server
    /// (`COPY_TENSOR`); both tensors must be in this session's buffers.
    /// Returns whether the server's backend did the copy.
    pub async fn copy_tensor(
        &mut self,
        src: &RpcTensor,
        src_nbytes: u64,
        dst: &RpcTensor,
        dst_nbytes: u64,
    ) -> Result<bool, RpcError> {
        self.buffers.check_tensor(src, src_nbytes)?;
        self.buffers.check_tensor(dst, dst_nbytes)?;
        if src_nbytes > dst_nbytes {
            return Err(InvalidRequest::CopyTooLarge {
                dst: super::validate::label(dst),
                src_nbytes,
                dst_nbytes,
            }
            .into());
        }
        self.scratch.clear();
        proto::encode_copy_tensor(src, dst, &mut self.scratch);
        let a = self.round_trip(Command::CopyTensor).await?;
        proto::decode_copy_tensor_response(a.bytes())
            .map_err(|e| self.malformed(Command::CopyTensor, e))
    }

    /// Lets the server's backend initialise a tensor in its buffer
    /// (`INIT_TENSOR`, pipelined); llama.cpp does this for quantized tensors
    /// whose first dimension is not a multiple of 512.
    pub async fn init_tensor(&mut self, tensor: &RpcTensor, nbytes: u64) -> Result<(), RpcError> {
        self.buffers.check_tensor(tensor, nbytes)?;
        self.scratch.clear();
        proto::encode_init_tensor(tensor, &mut self.scratch);
        self.pipeline(Command::InitTensor, &[], Duration::ZERO)
            .await
    }

    /// Bytes `tensor` needs in a buffer of `device` (`GET_ALLOC_SIZE`);
    /// `srcs` are its sources (at most 10), which some ops need.
    pub async fn get_alloc_size(
        &mut self,
        device: u32,
        tensor: &RpcTensor,
        srcs: &[RpcTensor],
    ) -> Result<u64, RpcError> {
        self.check_device(device)?;
        self.buffers.check_optional(tensor, None)?;
        for s in srcs.iter().filter(|s| s.id != 0) {
            self.buffers.check_optional(s, None)?;
        }
        self.scratch.clear();
        proto::encode_get_alloc_size(device, tensor, srcs, &mut self.scratch)
            .map_err(InvalidRequest::from)?;
        let a = self.round_trip(Command::GetAllocSize).await?;
        proto::decode_get_alloc_size_response(a.bytes())
            .map_err(|e| self.malformed(Command::GetAllocSize, e))
    }

    /// Bytes each of `tensors` needs in a buffer of `device`
    /// (`GET_ALLOC_SIZE` without sources), asked all at once: one round trip
    /// for the whole list.
    pub async fn get_alloc_sizes(
        &mut self,
        device: u32,
        tensors: &[RpcTensor],
    ) -> Result<Vec<u64>, RpcError> {
        self.check_device(device)?;
        self.scratch.clear();
        for t in tensors {
            self.buffers.check_optional(t, None)?;
            proto::encode_get_alloc_size(device, t, &[], &mut self.scratch)
                .map_err(InvalidRequest::from)?;
        }
        let answers = self.batch(Command::GetAllocSize, tensors.len(), 0).await?;
        self.decode_all(
            Command::GetAllocSize,
            &answers,
            proto::decode_get_alloc_size_response,
        )
    }

    /// Computes a graph on `device` (`GRAPH_COMPUTE`, pipelined): `nodes`
    /// are the node ids in execution order, `tensors` every node plus every
    /// tensor reachable through `src`/`view_src`. The server keeps the graph
    /// for [`RpcClient::graph_recompute`].
    ///
    /// Checks ids, references, types, ops and that every data address lies in
    /// one of this session's buffers; use [`RpcClient::graph_compute_sized`]
    /// to check whole byte ranges too (a tensor that overruns its buffer
    /// aborts the server).
    pub async fn graph_compute(
        &mut self,
        device: u32,
        nodes: &[u64],
        tensors: &[RpcTensor],
    ) -> Result<(), RpcError> {
        self.send_graph(0, device, nodes, tensors, None).await
    }

    /// [`RpcClient::graph_compute`] with each tensor's byte size
    /// (`nbytes[i]` for `tensors[i]`), so that every tensor's whole range is
    /// checked against its buffer.
    pub async fn graph_compute_sized(
        &mut self,
        device: u32,
        nodes: &[u64],
        tensors: &[RpcTensor],
        nbytes: &[u64],
    ) -> Result<(), RpcError> {
        self.send_graph(0, device, nodes, tensors, Some(nbytes))
            .await
    }

    /// [`RpcClient::graph_compute_sized`], remembering `owner` (non-zero) as
    /// the sender of the graph the server now stores for `device`
    /// ([`RpcClient::stored_graph_is`]).
    pub async fn graph_compute_for(
        &mut self,
        owner: u64,
        device: u32,
        nodes: &[u64],
        tensors: &[RpcTensor],
        nbytes: &[u64],
    ) -> Result<(), RpcError> {
        self.send_graph(owner, device, nodes, tensors, Some(nbytes))
            .await
    }

    async fn send_graph(
        &mut self,
        owner: u64,
        device: u32,
        nodes: &[u64],
        tensors: &[RpcTensor],
        nbytes: Option<&[u64]>,
    ) -> Result<(), RpcError> {
        self.check_device(device)?;
        self.buffers.check_graph(nodes, tensors, nbytes)?;
        self.scratch.clear();
        proto::encode_graph_compute(device, nodes, tensors, &mut self.scratch)
            .map_err(InvalidRequest::from)?;
        let work = self.opts.compute_timeout;
        self.pipeline(Command::GraphCompute, &[], work).await?;
        self.stored_graphs.insert(device, owner);
        Ok(())
    }

    /// Runs the graph last computed on `device` again (`GRAPH_RECOMPUTE`,
    /// pipelined), e.g. after refreshing its inputs with
    /// [`RpcClient::set_tensor`].
    pub async fn graph_recompute(&mut self, device: u32) -> Result<(), RpcError> {
        self.check_device(device)?;
        if !self.stored_graphs.contains_key(&device) {
            return Err(InvalidRequest::NoStoredGraph { device }.into());
        }
        self.scratch.clear();
        proto::encode_graph_recompute(device, &mut self.scratch);
        let work = self.opts.compute_timeout;
        self.pipeline(Command::GraphRecompute, &[], work).await
    }

    /// Shuts the connection down (the server then frees every buffer of the
    /// session). Pipelined requests are not confirmed: call
    /// [`RpcClient::sync`] first to know they succeeded.
    pub async fn close(mut self) -> Result<(), RpcError> {
        self.uncork().await?;
        let cmd = self.last_pipelined.unwrap_or(Command::DeviceCount);
        self.stream
            .shutdown()
            .await
            .map_err(|source| RpcError::Io { cmd, source })
    }
}
