//! Typed errors of the RPC client.

use std::io;
use std::time::Duration;

use shardline_protocol::{Command, DecodeError, EncodeError, Version};
use thiserror::Error;

/// Everything that can go wrong talking to an rpc-server.
///
/// After any error except [`RpcError::InvalidRequest`], [`RpcError::AllocFailed`]
/// and [`RpcError::Poisoned`] itself, the session is unusable (the stream
/// may be half-written or out of step) and every later call returns
/// [`RpcError::Poisoned`]: reconnect. The server frees everything this
/// session allocated when the connection closes.
#[derive(Debug, Error)]
pub enum RpcError {
    /// The TCP connection could not be opened.
    #[error("cannot connect to rpc-server at {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The TCP connection was not established within the connect timeout.
    #[error("connecting to rpc-server at {addr} timed out after {after:?}")]
    ConnectTimeout {
        /// The address as given.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// The server speaks a protocol version this client refuses.
    #[error(
        "rpc-server speaks protocol {server}, this client speaks {client} \
         (needs the same major version and a minor version no newer than the client's)"
    )]
    VersionMismatch {
        /// The server's version.
        server: Version,
        /// Ours.
        client: Version,
    },
    /// A call did not complete in time (dead or overloaded peer, or a peer
    /// that is not an rpc-server and waits for something else).
    #[error("{cmd} timed out after {after:?} (server dead, stuck, or not an rpc-server)")]
    Timeout {
        /// The command in flight.
        cmd: Command,
        /// The time allowed for it.
        after: Duration,
    },
    /// The server closed the connection. rpc-server closes it on any request
    /// it rejects, including pipelined ones that have no response, so the
    /// culprit is often an earlier request.
    #[error("rpc-server closed the connection during {cmd}{}", closed_hint(*.cmd, *.last_pipelined))]
    Closed {
        /// The command in flight.
        cmd: Command,
        /// The last command sent without waiting for a response since the
        /// last completed round trip, if any.
        last_pipelined: Option<Command>,
    },
    /// The response's declared size is not the one the command requires
    /// (garbage, or a peer that is not an rpc-server).
    #[error(
        "bad response to {cmd}: expected a {expected}-byte payload, the peer announced {got}{}",
        ascii_hint(*.got)
    )]
    BadResponse {
        /// The command answered.
        cmd: Command,
        /// The payload size required.
        expected: u64,
        /// The size the peer announced (the first 8 bytes it sent, little-endian).
        got: u64,
    },
    /// A response of the right size with an impossible value.
    #[error("malformed response to {cmd}: {source}")]
    MalformedResponse {
        /// The command answered.
        cmd: Command,
        /// What is wrong with it.
        source: DecodeError,
    },
    /// A socket error other than the peer closing the connection.
    #[error("I/O error during {cmd}: {source}")]
    Io {
        /// The command in flight.
        cmd: Command,
        /// The error.
        source: io::Error,
    },
    /// The request was refused by the client before anything was sent.
    #[error("invalid request, not sent: {0}")]
    InvalidRequest(#[from] InvalidRequest),
    /// The server could not allocate the buffer (it answered `remote_ptr` 0).
    #[error("rpc-server could not allocate {size} bytes on device {device}")]
    AllocFailed {
        /// The device.
        device: u32,
        /// The size requested.
        size: u64,
    },
    /// An earlier call failed or was cancelled mid-flight; the connection's
    /// state is unknown.
    #[error("RPC session unusable: an earlier {during} failed or was cancelled; reconnect")]
    Poisoned {
        /// The command that was in flight.
        during: Command,
    },
}

fn closed_hint(cmd: Command, last_pipelined: Option<Command>) -> String {
    match (cmd, last_pipelined) {
        (Command::Hello, _) => " (is the peer an rpc-server speaking protocol 7? \
             servers of another protocol version hang up on this HELLO)"
            .to_owned(),
        (_, Some(p)) => format!(" (probably rejected an earlier request: {p})"),
        (_, None) => " (it rejected this request, or exited)".to_owned(),
    }
}

fn ascii_hint(got: u64) -> String {
    let bytes = got.to_le_bytes();
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!(
            " (bytes {:?}: not an rpc-server?)",
            String::from_utf8_lossy(&bytes)
        )
    } else {
        String::new()
    }
}

/// Why the client refused to send a request. Nothing was sent; the session
/// is still usable.
///
/// rpc-server answers most malformed requests by closing the connection
/// (which frees every buffer of the session), and a few by aborting the whole
/// server process, so the client checks what it can first.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidRequest {
    /// A device index the server does not have.
    #[error("device {device} does not exist (the server has {count})")]
    UnknownDevice {
        /// The index.
        device: u32,
        /// The server's device count.
        count: u32,
    },
    /// A buffer this session did not allocate (or already freed).
    #[error("buffer {buffer:#x} is not a live buffer of this session")]
    UnknownBuffer {
        /// The `remote_ptr`.
        buffer: u64,
    },
    /// A data operation on a tensor without a buffer.
    #[error("tensor {tensor} has no buffer")]
    NoBuffer {
        /// The tensor (`name#id`).
        tensor: String,
    },
    /// A tensor without a buffer but with a data address (the server rejects it).
    #[error("tensor {tensor} has a data address {data:#x} but no buffer")]
    DataWithoutBuffer {
        /// The tensor (`name#id`).
        tensor: String,
        /// Its data address.
        data: u64,
    },
    /// `data .. data + nbytes` is not inside the tensor's buffer (the
    /// server would abort).
    #[error(
        "tensor {tensor}: bytes {data:#x}+{nbytes} are outside its buffer \
         {base:#x}+{size}"
    )]
    OutsideBuffer {
        /// The tensor (`name#id`).
        tensor: String,
        /// Its data address.
        data: u64,
        /// Its byte size (as given by the caller).
        nbytes: u64,
        /// The buffer's base address.
        base: u64,
        /// The buffer's size.
        size: u64,
    },
    /// `offset .. offset + len` is not inside the tensor (the server would
    /// abort, or close the connection).
    #[error("tensor {tensor}: range {offset}+{len} is outside its {nbytes} bytes")]
    OutsideTensor {
        /// The tensor (`name#id`).
        tensor: String,
        /// Byte offset inside the tensor.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The tensor's byte size (as given by the caller).
        nbytes: u64,
    },
    /// A `ggml_type` the server does not know.
    #[error("tensor {tensor} has type {ty}, not below GGML_TYPE_COUNT")]
    InvalidType {
        /// The tensor (`name#id`).
        tensor: String,
        /// The type.
        ty: u32,
    },
    /// A `ggml_op` the server does not know.
    #[error("tensor {tensor} has op {op}, not below GGML_OP_COUNT")]
    InvalidOp {
        /// The tensor (`name#id`).
        tensor: String,
        /// The op.
        op: u32,
    },
    /// A graph without nodes.
    #[error("graph has no nodes")]
    EmptyGraph,
    /// A graph tensor with id 0 (0 means "none" on the wire).
    #[error("graph tensor {tensor} has id 0")]
    ZeroId {
        /// The tensor (`name#id`).
        tensor: String,
    },
    /// Two graph tensors with the same id.
    #[error("graph tensor id {id} appears twice")]
    DuplicateId {
        /// The id.
        id: u64,
    },
    /// A node, source or view source id that is not among the graph's tensors.
    #[error("graph references tensor id {id} ({role}), which is not in the tensor list")]
    MissingTensor {
        /// The id.
        id: u64,
        /// Where it was referenced: "node", "src" or "view_src".
        role: &'static str,
    },
    /// A list whose length must match another's.
    #[error("{what}: {got} entries, expected {expected}")]
    LengthMismatch {
        /// What was passed.
        what: &'static str,
        /// The required length.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// `COPY_TENSOR` of more bytes than the destination tensor holds.
    #[error("copy of {src_nbytes} bytes into tensor {dst} of {dst_nbytes} bytes")]
    CopyTooLarge {
        /// The destination (`name#id`).
        dst: String,
        /// Bytes copied.
        src_nbytes: u64,
        /// Bytes of the destination.
        dst_nbytes: u64,
    },
    /// `GRAPH_RECOMPUTE` with no graph stored for that device (none was
    /// computed, or a `FREE_BUFFER` since dropped it).
    #[error("no graph is stored for device {device}")]
    NoStoredGraph {
        /// The device.
        device: u32,
    },
    /// The request cannot be encoded (counts too large).
    #[error(transparent)]
    Encode(#[from] EncodeError),
}
