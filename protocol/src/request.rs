//! Requests: `cmd: u8 | size: u64 | payload[size]`.
//!
//! Encoding appends whole frames to a caller's buffer (one function per
//! command, plus [`Request::encode`]). Decoding is the server's view of
//! untrusted bytes, used by fake servers and the fuzzer.

use crate::command::{Command, RequestSize};
use crate::error::{DecodeError, EncodeError};
use crate::response::ExpectedResponse;
use crate::tensor::RpcTensor;
use crate::wire::{len_u64, put_u32, put_u64, put_u8, Reader};
use crate::{CONN_CAPS_SIZE, GGML_MAX_SRC, REQUEST_HEADER_LEN, RPC_TENSOR_SIZE};

/// Bytes of `SET_TENSOR`'s payload before the data: `rpc_tensor | cache_flag u8 | offset u64`.
pub const SET_TENSOR_FIXED_LEN: usize = RPC_TENSOR_SIZE + 1 + 8;
/// Payload length of `GET_ALLOC_SIZE`: `device u32 | rpc_tensor | rpc_tensor[10]`.
pub const GET_ALLOC_SIZE_PAYLOAD_LEN: usize = 4 + RPC_TENSOR_SIZE * (1 + GGML_MAX_SRC);

/// A decoded request.
///
/// Decoding is a little stricter than rpc-server 7.0.0 in two places, both
/// of which this crate's encoders never produce: `SET_TENSOR`'s cache flag
/// must be 0 or 1 (the server takes any non-zero byte as 1), and a
/// `GRAPH_COMPUTE` payload must end right after its last tensor (the server
/// ignores trailing bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // short-lived values; boxing every tensor would not pay off
pub enum Request<'a> {
    /// Allocate a buffer of `size` bytes on `device`.
    AllocBuffer {
        /// Device index.
        device: u32,
        /// Requested size in bytes.
        size: u64,
    },
    /// Ask for the buffer alignment of `device`.
    GetAlignment {
        /// Device index.
        device: u32,
    },
    /// Ask for the largest buffer `device` can allocate.
    GetMaxSize {
        /// Device index.
        device: u32,
    },
    /// Ask for the base address of a buffer.
    BufferGetBase {
        /// The buffer's `remote_ptr`.
        remote_ptr: u64,
    },
    /// Free a buffer.
    FreeBuffer {
        /// The buffer's `remote_ptr`.
        remote_ptr: u64,
    },
    /// Fill a whole buffer with `value`.
    BufferClear {
        /// The buffer's `remote_ptr`.
        remote_ptr: u64,
        /// The byte to fill with.
        value: u8,
    },
    /// Write `data` at `offset` bytes into the tensor's data.
    SetTensor {
        /// Target tensor.
        tensor: RpcTensor,
        /// Ask a server with a cache directory to store the data under its hash.
        cache: bool,
        /// Byte offset inside the tensor.
        offset: u64,
        /// The bytes to write.
        data: &'a [u8],
    },
    /// Write the server's cached data with this hash at `offset`.
    SetTensorHash {
        /// Target tensor.
        tensor: RpcTensor,
        /// Byte offset inside the tensor.
        offset: u64,
        /// FNV-1a 64 of the data.
        hash: u64,
    },
    /// Read `size` bytes at `offset` bytes into the tensor's data.
    GetTensor {
        /// Source tensor.
        tensor: RpcTensor,
        /// Byte offset inside the tensor.
        offset: u64,
        /// Bytes to read.
        size: u64,
    },
    /// Copy `src`'s data into `dst` (same server).
    CopyTensor {
        /// Source tensor.
        src: RpcTensor,
        /// Destination tensor.
        dst: RpcTensor,
    },
    /// Build, compute and store a graph.
    GraphCompute(GraphCompute),
    /// Ask for a device's free and total memory.
    GetDeviceMemory {
        /// Device index.
        device: u32,
    },
    /// Let the backend initialise a tensor (padding of quantized tensors).
    InitTensor {
        /// The tensor.
        tensor: RpcTensor,
    },
    /// Ask how many bytes a tensor needs on `device`.
    GetAllocSize {
        /// Device index.
        device: u32,
        /// The tensor.
        tensor: RpcTensor,
        /// Its sources (all-zero tensors for unused slots).
        srcs: Box<[RpcTensor; GGML_MAX_SRC]>,
    },
    /// Version and transport negotiation; must be the first command.
    Hello {
        /// Transport capabilities (all zeros = plain TCP).
        conn_caps: [u8; CONN_CAPS_SIZE],
    },
    /// Ask how many devices the server has.
    DeviceCount,
    /// Run the graph last stored for `device` again.
    GraphRecompute {
        /// Device index.
        device: u32,
    },
    /// Fill `size` bytes at `offset` bytes into the tensor with `value`.
    MemsetTensor {
        /// Target tensor.
        tensor: RpcTensor,
        /// Byte offset inside the tensor.
        offset: u64,
        /// Bytes to fill.
        size: u64,
        /// The byte to fill with.
        value: u8,
    },
}

/// `GRAPH_COMPUTE`'s payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GraphCompute {
    /// Device index.
    pub device: u32,
    /// Ids of the graph's nodes, in execution order.
    pub nodes: Vec<u64>,
    /// Every node plus every tensor reachable through `src`/`view_src`.
    pub tensors: Vec<RpcTensor>,
}

/// A request frame's header, validated against its command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// The command.
    pub cmd: Command,
    /// Declared payload length (already checked against the command's size rule).
    pub payload_len: u64,
}

impl RequestHeader {
    /// Header plus payload length, if it fits a `usize`.
    pub fn frame_len(&self) -> Option<usize> {
        usize::try_from(self.payload_len)
            .ok()?
            .checked_add(REQUEST_HEADER_LEN)
    }
}

// ---------------------------------------------------------------- encoding

fn header(out: &mut Vec<u8>, cmd: Command, payload_len: u64) {
    put_u8(out, cmd.as_u8());
    put_u64(out, payload_len);
}

fn fixed_len(cmd: Command) -> u64 {
    match cmd.request_size() {
        RequestSize::Exact(n) | RequestSize::AtLeast(n) => len_u64(n),
    }
}

/// `ALLOC_BUFFER`: `device u32 | size u64`.
pub fn encode_alloc_buffer(device: u32, size: u64, out: &mut Vec<u8>) {
    header(out, Command::AllocBuffer, fixed_len(Command::AllocBuffer));
    put_u32(out, device);
    put_u64(out, size);
}

/// `GET_ALIGNMENT`: `device u32`.
pub fn encode_get_alignment(device: u32, out: &mut Vec<u8>) {
    header(out, Command::GetAlignment, 4);
    put_u32(out, device);
}

/// `GET_MAX_SIZE`: `device u32`.
pub fn encode_get_max_size(device: u32, out: &mut Vec<u8>) {
    header(out, Command::GetMaxSize, 4);
    put_u32(out, device);
}

/// `BUFFER_GET_BASE`: `remote_ptr u64`.
pub fn encode_buffer_get_base(remote_ptr: u64, out: &mut Vec<u8>) {
    header(out, Command::BufferGetBase, 8);
    put_u64(out, remote_ptr);
}

/// `FREE_BUFFER`: `remote_ptr u64`.
pub fn encode_free_buffer(remote_ptr: u64, out: &mut Vec<u8>) {
    header(out, Command::FreeBuffer, 8);
    put_u64(out, remote_ptr);
}

/// `BUFFER_CLEAR`: `remote_ptr u64 | value u8`.
pub fn encode_buffer_clear(remote_ptr: u64, value: u8, out: &mut Vec<u8>) {
    header(out, Command::BufferClear, 9);
    put_u64(out, remote_ptr);
    put_u8(out, value);
}

/// `SET_TENSOR` without its data: the frame header and
/// `rpc_tensor | cache_flag u8 | offset u64`. The caller sends exactly
/// `data_len` bytes of data right after it.
pub fn encode_set_tensor_header(
    tensor: &RpcTensor,
    cache: bool,
    offset: u64,
    data_len: u64,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let payload_len = len_u64(SET_TENSOR_FIXED_LEN).checked_add(data_len).ok_or(
        EncodeError::PayloadTooLarge {
            cmd: Command::SetTensor,
        },
    )?;
    header(out, Command::SetTensor, payload_len);
    tensor.encode(out);
    put_u8(out, u8::from(cache));
    put_u64(out, offset);
    Ok(())
}

/// `SET_TENSOR` with its data copied into `out` (see
/// [`encode_set_tensor_header`] to avoid the copy).
pub fn encode_set_tensor(
    tensor: &RpcTensor,
    cache: bool,
    offset: u64,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_set_tensor_header(tensor, cache, offset, len_u64(data.len()), out)?;
    out.extend_from_slice(data);
    Ok(())
}

/// `SET_TENSOR_HASH`: `rpc_tensor | offset u64 | hash u64`.
pub fn encode_set_tensor_hash(tensor: &RpcTensor, offset: u64, hash: u64, out: &mut Vec<u8>) {
    header(
        out,
        Command::SetTensorHash,
        fixed_len(Command::SetTensorHash),
    );
    tensor.encode(out);
    put_u64(out, offset);
    put_u64(out, hash);
}

/// `GET_TENSOR`: `rpc_tensor | offset u64 | size u64`.
pub fn encode_get_tensor(tensor: &RpcTensor, offset: u64, size: u64, out: &mut Vec<u8>) {
    header(out, Command::GetTensor, fixed_len(Command::GetTensor));
    tensor.encode(out);
    put_u64(out, offset);
    put_u64(out, size);
}

/// `COPY_TENSOR`: `src rpc_tensor | dst rpc_tensor`.
pub fn encode_copy_tensor(src: &RpcTensor, dst: &RpcTensor, out: &mut Vec<u8>) {
    header(out, Command::CopyTensor, fixed_len(Command::CopyTensor));
    src.encode(out);
    dst.encode(out);
}

/// Payload length of a `GRAPH_COMPUTE` with these counts:
/// `4 + 4 + 8 * n_nodes + 4 + 296 * n_tensors`.
pub fn graph_compute_payload_len(n_nodes: u64, n_tensors: u64) -> Option<u64> {
    let nodes = n_nodes.checked_mul(8)?;
    let tensors = n_tensors.checked_mul(len_u64(RPC_TENSOR_SIZE))?;
    12u64.checked_add(nodes)?.checked_add(tensors)
}

fn count_u32(what: &'static str, count: usize) -> Result<u32, EncodeError> {
    u32::try_from(count).map_err(|_| EncodeError::CountTooLarge { what, count })
}

/// `GRAPH_COMPUTE`: `device u32 | n_nodes u32 | node ids u64[n_nodes] |
/// n_tensors u32 | rpc_tensor[n_tensors]`.
pub fn encode_graph_compute(
    device: u32,
    nodes: &[u64],
    tensors: &[RpcTensor],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let n_nodes = count_u32("graph nodes", nodes.len())?;
    let n_tensors = count_u32("graph tensors", tensors.len())?;
    let len = graph_compute_payload_len(u64::from(n_nodes), u64::from(n_tensors)).ok_or(
        EncodeError::PayloadTooLarge {
            cmd: Command::GraphCompute,
        },
    )?;
    out.reserve(
        usize::try_from(len)
            .unwrap_or(0)
            .saturating_add(REQUEST_HEADER_LEN),
    );
    header(out, Command::GraphCompute, len);
    put_u32(out, device);
    put_u32(out, n_nodes);
    for &id in nodes {
        put_u64(out, id);
    }
    put_u32(out, n_tensors);
    for t in tensors {
        t.encode(out);
    }
    Ok(())
}

/// `GET_DEVICE_MEMORY`: `device u32`.
pub fn encode_get_device_memory(device: u32, out: &mut Vec<u8>) {
    header(out, Command::GetDeviceMemory, 4);
    put_u32(out, device);
}

/// `INIT_TENSOR`: `rpc_tensor`.
pub fn encode_init_tensor(tensor: &RpcTensor, out: &mut Vec<u8>) {
    header(out, Command::InitTensor, fixed_len(Command::InitTensor));
    tensor.encode(out);
}

/// `GET_ALLOC_SIZE`: `device u32 | rpc_tensor | rpc_tensor[10]`. `srcs` holds
/// up to 10 sources; the remaining slots are sent as all-zero tensors.
pub fn encode_get_alloc_size(
    device: u32,
    tensor: &RpcTensor,
    srcs: &[RpcTensor],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    if srcs.len() > GGML_MAX_SRC {
        return Err(EncodeError::TooManySources {
            max: GGML_MAX_SRC,
            got: srcs.len(),
        });
    }
    header(
        out,
        Command::GetAllocSize,
        len_u64(GET_ALLOC_SIZE_PAYLOAD_LEN),
    );
    put_u32(out, device);
    tensor.encode(out);
    for s in srcs {
        s.encode(out);
    }
    for _ in srcs.len()..GGML_MAX_SRC {
        RpcTensor::default().encode(out);
    }
    Ok(())
}

/// `HELLO`: `conn_caps[24]` (all zeros = plain TCP).
pub fn encode_hello(conn_caps: &[u8; CONN_CAPS_SIZE], out: &mut Vec<u8>) {
    header(out, Command::Hello, len_u64(CONN_CAPS_SIZE));
    out.extend_from_slice(conn_caps);
}

/// `DEVICE_COUNT`: empty payload.
pub fn encode_device_count(out: &mut Vec<u8>) {
    header(out, Command::DeviceCount, 0);
}

/// `GRAPH_RECOMPUTE`: `device u32`.
pub fn encode_graph_recompute(device: u32, out: &mut Vec<u8>) {
    header(out, Command::GraphRecompute, 4);
    put_u32(out, device);
}

/// `MEMSET_TENSOR`: `rpc_tensor | offset u64 | size u64 | value u8`.
pub fn encode_memset_tensor(
    tensor: &RpcTensor,
    offset: u64,
    size: u64,
    value: u8,
    out: &mut Vec<u8>,
) {
    header(out, Command::MemsetTensor, fixed_len(Command::MemsetTensor));
    tensor.encode(out);
    put_u64(out, offset);
    put_u64(out, size);
    put_u8(out, value);
}

impl Request<'_> {
    /// The request's command.
    pub fn command(&self) -> Command {
        match self {
            Request::AllocBuffer { .. } => Command::AllocBuffer,
            Request::GetAlignment { .. } => Command::GetAlignment,
            Request::GetMaxSize { .. } => Command::GetMaxSize,
            Request::BufferGetBase { .. } => Command::BufferGetBase,
            Request::FreeBuffer { .. } => Command::FreeBuffer,
            Request::BufferClear { .. } => Command::BufferClear,
            Request::SetTensor { .. } => Command::SetTensor,
            Request::SetTensorHash { .. } => Command::SetTensorHash,
            Request::GetTensor { .. } => Command::GetTensor,
            Request::CopyTensor { .. } => Command::CopyTensor,
            Request::GraphCompute(_) => Command::GraphCompute,
            Request::GetDeviceMemory { .. } => Command::GetDeviceMemory,
            Request::InitTensor { .. } => Command::InitTensor,
            Request::GetAllocSize { .. } => Command::GetAllocSize,
            Request::Hello { .. } => Command::Hello,
            Request::DeviceCount => Command::DeviceCount,
            Request::GraphRecompute { .. } => Command::GraphRecompute,
            Request::MemsetTensor { .. } => Command::MemsetTensor,
        }
    }

    /// The response the server sends to this request, if any.
    pub fn expected_response(&self) -> Option<ExpectedResponse> {
        match self {
            Request::GetTensor { size, .. } => Some(ExpectedResponse::get_tensor(*size)),
            other => ExpectedResponse::fixed(other.command()),
        }
    }

    /// Appends the whole frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Request::AllocBuffer { device, size } => encode_alloc_buffer(*device, *size, out),
            Request::GetAlignment { device } => encode_get_alignment(*device, out),
            Request::GetMaxSize { device } => encode_get_max_size(*device, out),
            Request::BufferGetBase { remote_ptr } => encode_buffer_get_base(*remote_ptr, out),
            Request::FreeBuffer { remote_ptr } => encode_free_buffer(*remote_ptr, out),
            Request::BufferClear { remote_ptr, value } => {
                encode_buffer_clear(*remote_ptr, *value, out)
            }
            Request::SetTensor {
                tensor,
                cache,
                offset,
                data,
            } => encode_set_tensor(tensor, *cache, *offset, data, out)?,
            Request::SetTensorHash {
                tensor,
                offset,
                hash,
            } => encode_set_tensor_hash(tensor, *offset, *hash, out),
            Request::GetTensor {
                tensor,
                offset,
                size,
            } => encode_get_tensor(tensor, *offset, *size, out),
            Request::CopyTensor { src, dst } => encode_copy_tensor(src, dst, out),
            Request::GraphCompute(g) => encode_graph_compute(g.device, &g.nodes, &g.tensors, out)?,
            Request::GetDeviceMemory { device } => encode_get_device_memory(*device, out),
            Request::InitTensor { tensor } => encode_init_tensor(tensor, out),
            Request::GetAllocSize {
                device,
                tensor,
                srcs,
            } => encode_get_alloc_size(*device, tensor, &srcs[..], out)?,
            Request::Hello { conn_caps } => encode_hello(conn_caps, out),
            Request::DeviceCount => encode_device_count(out),
            Request::GraphRecompute { device } => encode_graph_recompute(*device, out),
            Request::MemsetTensor {
                tensor,
                offset,
                size,
                value,
            } => encode_memset_tensor(tensor, *offset, *size, *value, out),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- decoding

/// Parses and validates a request frame's header.
///
/// `Ok(None)`: fewer than 9 bytes so far (an unknown command byte is
/// reported as soon as it arrives). The declared payload length is checked
/// against the command's rule (exact, or a minimum) before anything is read
/// or allocated.
pub fn decode_request_header(buf: &[u8]) -> Result<Option<RequestHeader>, DecodeError> {
    let mut r = Reader::new(buf);
    let Some(cmd_byte) = r.u8() else {
        return Ok(None);
    };
    let cmd = Command::try_from(cmd_byte)?;
    let Some(payload_len) = r.u64() else {
        return Ok(None);
    };
    match cmd.request_size() {
        RequestSize::Exact(n) if payload_len != len_u64(n) => {
            return Err(DecodeError::SizeMismatch {
                cmd,
                expected: len_u64(n),
                got: payload_len,
            });
        }
        RequestSize::AtLeast(n) if payload_len < len_u64(n) => {
            return Err(DecodeError::TooShort {
                cmd,
                min: len_u64(n),
                got: payload_len,
            });
        }
        _ => {}
    }
    Ok(Some(RequestHeader { cmd, payload_len }))
}

/// Parses one request frame from the start of `buf`.
///
/// `Ok(None)`: the frame is not complete yet (read more and call again);
/// `Ok(Some((request, consumed)))`: a whole frame of `consumed` bytes;
/// `Err`: the bytes can never become a valid frame.
pub fn decode_request_frame(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, DecodeError> {
    let Some(h) = decode_request_header(buf)? else {
        return Ok(None);
    };
    let Some(frame_len) = h.frame_len() else {
        return Ok(None); // cannot fit in memory, so never complete
    };
    let Some(payload) = buf.get(REQUEST_HEADER_LEN..frame_len) else {
        return Ok(None);
    };
    let req = decode_request_payload(h.cmd, payload)?;
    Ok(Some((req, frame_len)))
}

fn read_tensor(r: &mut Reader<'_>) -> Option<RpcTensor> {
    r.array::<RPC_TENSOR_SIZE>()
        .map(|b| RpcTensor::from_bytes(&b))
}

fn decode_bool(cmd: Command, field: &'static str, value: u8) -> Result<bool, DecodeError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidBool { cmd, field, value }),
    }
}

/// Parses a request payload (the bytes after the 9-byte header).
pub fn decode_request_payload(cmd: Command, payload: &[u8]) -> Result<Request<'_>, DecodeError> {
    let got = len_u64(payload.len());
    match cmd.request_size() {
        RequestSize::Exact(n) if payload.len() != n => {
            return Err(DecodeError::SizeMismatch {
                cmd,
                expected: len_u64(n),
                got,
            });
        }
        RequestSize::AtLeast(n) if payload.len() < n => {
            return Err(DecodeError::TooShort {
                cmd,
                min: len_u64(n),
                got,
            });
        }
        _ => {}
    }
    match cmd {
        Command::GraphCompute => return decode_graph_compute(payload).map(Request::GraphCompute),
        Command::SetTensor => return decode_set_tensor(payload),
        _ => {}
    }
    // The length was checked above, so the reads below cannot run short;
    // `None` would still be reported as a size error rather than a panic.
    decode_fixed(cmd, &mut Reader::new(payload)).ok_or(DecodeError::SizeMismatch {
        cmd,
        expected: fixed_len(cmd),
        got,
    })
}

fn decode_set_tensor(payload: &[u8]) -> Result<Request<'_>, DecodeError> {
    let cmd = Command::SetTensor;
    let mut r = Reader::new(payload);
    let (Some(tensor), Some(flag), Some(offset)) = (read_tensor(&mut r), r.u8(), r.u64()) else {
        let got = len_u64(payload.len());
        return Err(DecodeError::TooShort {
            cmd,
            min: len_u64(SET_TENSOR_FIXED_LEN),
            got,
        });
    };
    let cache = decode_bool(cmd, "cache_flag", flag)?;
    Ok(Request::SetTensor {
        tensor,
        cache,
        offset,
        data: r.rest(),
    })
}

/// Commands whose payload has a fixed layout (all but `SET_TENSOR` and
/// `GRAPH_COMPUTE`); `None` if the bytes run out.
fn decode_fixed<'a>(cmd: Command, r: &mut Reader<'a>) -> Option<Request<'a>> {
    Some(match cmd {
        Command::AllocBuffer => Request::AllocBuffer {
            device: r.u32()?,
            size: r.u64()?,
        },
        Command::GetAlignment => Request::GetAlignment { device: r.u32()? },
        Command::GetMaxSize => Request::GetMaxSize { device: r.u32()? },
        Command::BufferGetBase => Request::BufferGetBase {
            remote_ptr: r.u64()?,
        },
        Command::FreeBuffer => Request::FreeBuffer {
            remote_ptr: r.u64()?,
        },
        Command::BufferClear => Request::BufferClear {
            remote_ptr: r.u64()?,
            value: r.u8()?,
        },
        Command::SetTensorHash => Request::SetTensorHash {
            tensor: read_tensor(r)?,
            offset: r.u64()?,
            hash: r.u64()?,
        },
        Command::GetTensor => Request::GetTensor {
            tensor: read_tensor(r)?,
            offset: r.u64()?,
            size: r.u64()?,
        },
        Command::CopyTensor => Request::CopyTensor {
            src: read_tensor(r)?,
            dst: read_tensor(r)?,
        },
        Command::GetDeviceMemory => Request::GetDeviceMemory { device: r.u32()? },
        Command::InitTensor => Request::InitTensor {
            tensor: read_tensor(r)?,
        },
        Command::GetAllocSize => {
            let device = r.u32()?;
            let tensor = read_tensor(r)?;
            let mut srcs = Box::new([RpcTensor::default(); GGML_MAX_SRC]);
            for s in srcs.iter_mut() {
                *s = read_tensor(r)?;
            }
            Request::GetAllocSize {
                device,
                tensor,
                srcs,
            }
        }
        Command::Hello => Request::Hello {
            conn_caps: r.array()?,
        },
        Command::DeviceCount => Request::DeviceCount,
        Command::GraphRecompute => Request::GraphRecompute { device: r.u32()? },
        Command::MemsetTensor => Request::MemsetTensor {
            tensor: read_tensor(r)?,
            offset: r.u64()?,
            size: r.u64()?,
            value: r.u8()?,
        },
        // Variable layouts, decoded by their own functions.
        Command::SetTensor | Command::GraphCompute => return None,
    })
}

fn decode_graph_compute(payload: &[u8]) -> Result<GraphCompute, DecodeError> {
    let got = len_u64(payload.len());
    let too_short = DecodeError::TooShort {
        cmd: Command::GraphCompute,
        min: 12,
        got,
    };
    let mut r = Reader::new(payload);
    let (Some(device), Some(n_nodes)) = (r.u32(), r.u32()) else {
        return Err(too_short);
    };
    // Check the declared node count against the bytes that remain before
    // reading or allocating anything.
    let size_error = |n_tensors: u32| DecodeError::GraphSize {
        n_nodes,
        n_tensors,
        needed: graph_compute_payload_len(u64::from(n_nodes), u64::from(n_tensors))
            .unwrap_or(u64::MAX),
        got,
    };
    let nodes_len = usize::try_from(n_nodes).ok().and_then(|n| n.checked_mul(8));
    let Some(node_bytes) = nodes_len.and_then(|n| r.take(n)) else {
        return Err(size_error(0));
    };
    let Some(n_tensors) = r.u32() else {
        return Err(size_error(0));
    };
    let tensors_len = usize::try_from(n_tensors)
        .ok()
        .and_then(|n| n.checked_mul(RPC_TENSOR_SIZE));
    if tensors_len != Some(r.remaining()) {
        return Err(size_error(n_tensors));
    }
    let nodes = node_bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect();
    let tensors = r
        .rest()
        .chunks_exact(RPC_TENSOR_SIZE)
        .filter_map(RpcTensor::from_slice)
        .collect();
    Ok(GraphCompute {
        device,
        nodes,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(id: u64) -> RpcTensor {
        let mut t = RpcTensor {
            id,
            ty: 1,
            buffer: 0x5000,
            ne: [4, 3, 1, 1],
            nb: [2, 8, 24, 24],
            data: 0x9000 + id,
            ..RpcTensor::default()
        };
        t.op_params[3] = -5;
        t.src[0] = id + 1;
        t.set_name(&format!("t{id}")).unwrap();
        t
    }

    /// One request of every command.
    pub(crate) fn samples(data: &[u8]) -> Vec<Request<'_>> {
        let mut srcs = Box::new([RpcTensor::default(); GGML_MAX_SRC]);
        srcs[0] = tensor(7);
        srcs[1] = tensor(8);
        vec![
            Request::AllocBuffer {
                device: 1,
                size: 1 << 33,
            },
            Request::GetAlignment { device: 2 },
            Request::GetMaxSize { device: 3 },
            Request::BufferGetBase {
                remote_ptr: 0xdead_beef,
            },
            Request::FreeBuffer { remote_ptr: 0xfeed },
            Request::BufferClear {
                remote_ptr: 0xfeed,
                value: 0xab,
            },
            Request::SetTensor {
                tensor: tensor(1),
                cache: true,
                offset: 12,
                data,
            },
            Request::SetTensorHash {
                tensor: tensor(2),
                offset: 3,
                hash: 0x1234_5678_9abc_def0,
            },
            Request::GetTensor {
                tensor: tensor(3),
                offset: 4,
                size: 5,
            },
            Request::CopyTensor {
                src: tensor(4),
                dst: tensor(5),
            },
            Request::GraphCompute(GraphCompute {
                device: 1,
                nodes: vec![10, 11],
                tensors: vec![tensor(10), tensor(11), tensor(12)],
            }),
            Request::GetDeviceMemory { device: 4 },
            Request::InitTensor { tensor: tensor(6) },
            Request::GetAllocSize {
                device: 0,
                tensor: tensor(9),
                srcs,
            },
            Request::Hello {
                conn_caps: [0; CONN_CAPS_SIZE],
            },
            Request::DeviceCount,
            Request::GraphRecompute { device: 5 },
            Request::MemsetTensor {
                tensor: tensor(13),
                offset: 1,
                size: 2,
                value: 3,
            },
        ]
    }

    fn encode(req: &Request<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        req.encode(&mut v).unwrap();
        v
    }

    #[test]
    fn every_command_round_trips() {
        let data = [1u8, 2, 3, 4, 5];
        let reqs = samples(&data);
        let cmds: Vec<Command> = reqs.iter().map(Request::command).collect();
        assert_eq!(cmds, Command::ALL);
        for req in &reqs {
            let bytes = encode(req);
            assert_eq!(bytes[0], req.command().as_u8());
            let declared = u64::from_le_bytes(bytes[1..9].try_into().unwrap());
            assert_eq!(declared as usize, bytes.len() - 9, "{}", req.command());
            let (decoded, used) = decode_request_frame(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(&decoded, req);
            assert_eq!(encode(&decoded), bytes);
        }
    }

    #[test]
    fn exact_layouts() {
        let mut v = Vec::new();
        encode_alloc_buffer(2, 0x0102_0304_0506_0708, &mut v);
        assert_eq!(
            v,
            [0, 12, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        v.clear();
        encode_device_count(&mut v);
        assert_eq!(v, [15, 0, 0, 0, 0, 0, 0, 0, 0]);
        v.clear();
        encode_hello(&[0; CONN_CAPS_SIZE], &mut v);
        assert_eq!(v.len(), 9 + 24);
        assert_eq!(&v[..9], &[14, 24, 0, 0, 0, 0, 0, 0, 0]);
        v.clear();
        encode_buffer_clear(0x11, 0x22, &mut v);
        assert_eq!(
            v,
            [5, 9, 0, 0, 0, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0, 0, 0, 0x22]
        );
        v.clear();
        encode_memset_tensor(&tensor(1), 5, 6, 7, &mut v);
        assert_eq!(v.len(), 9 + 296 + 17);
        assert_eq!(
            v[9 + 296..],
            [5, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 7]
        );
        v.clear();
        let mut big = Vec::new();
        encode_get_alloc_size(3, &tensor(1), &[tensor(2)], &mut big).unwrap();
        assert_eq!(big.len(), 9 + 3260);
        assert!(big[9 + 4 + 2 * 296..].iter().all(|&b| b == 0));
    }

    #[test]
    fn graph_compute_layout() {
        let mut v = Vec::new();
        encode_graph_compute(3, &[0xaa, 0xbb], &[tensor(1)], &mut v).unwrap();
        let payload = &v[9..];
        assert_eq!(
            payload.len() as u64,
            graph_compute_payload_len(2, 1).unwrap()
        );
        assert_eq!(&payload[0..4], &3u32.to_le_bytes());
        assert_eq!(&payload[4..8], &2u32.to_le_bytes());
        assert_eq!(&payload[8..16], &0xaau64.to_le_bytes());
        assert_eq!(&payload[16..24], &0xbbu64.to_le_bytes());
        assert_eq!(&payload[24..28], &1u32.to_le_bytes());
        assert_eq!(&payload[28..], &tensor(1).to_bytes()[..]);
    }

    #[test]
    fn set_tensor_header_then_data_equals_whole_frame() {
        let data = [9u8; 17];
        let mut whole = Vec::new();
        encode_set_tensor(&tensor(1), false, 3, &data, &mut whole).unwrap();
        let mut split = Vec::new();
        encode_set_tensor_header(&tensor(1), false, 3, 17, &mut split).unwrap();
        assert_eq!(split.len(), 9 + SET_TENSOR_FIXED_LEN);
        split.extend_from_slice(&data);
        assert_eq!(whole, split);
        assert!(encode_set_tensor_header(&tensor(1), false, 0, u64::MAX, &mut split).is_err());
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_short_payload_an_error() {
        let data = [1u8, 2, 3];
        for req in samples(&data) {
            let bytes = encode(&req);
            for n in 0..bytes.len() {
                assert_eq!(
                    decode_request_frame(&bytes[..n]),
                    Ok(None),
                    "{} at {n}",
                    req.command()
                );
                if n < 9 {
                    continue;
                }
                let short = decode_request_payload(req.command(), &bytes[9..n]);
                match short {
                    // SET_TENSOR past its fixed part is a shorter upload.
                    Ok(Request::SetTensor { data, .. }) => {
                        assert_eq!(data.len(), n - 9 - SET_TENSOR_FIXED_LEN)
                    }
                    other => assert!(other.is_err(), "{} at {n}", req.command()),
                }
            }
        }
    }

    #[test]
    fn frames_back_to_back() {
        let mut v = Vec::new();
        encode_device_count(&mut v);
        encode_get_alignment(1, &mut v);
        let (a, n) = decode_request_frame(&v).unwrap().unwrap();
        assert_eq!(a, Request::DeviceCount);
        let (b, m) = decode_request_frame(&v[n..]).unwrap().unwrap();
        assert_eq!(b, Request::GetAlignment { device: 1 });
        assert_eq!(n + m, v.len());
    }

    #[test]
    fn invalid_headers() {
        assert_eq!(
            decode_request_frame(&[18]),
            Err(DecodeError::UnknownCommand(crate::UnknownCommand(18)))
        );
        assert_eq!(
            decode_request_frame(&[0xff, 0, 0]),
            Err(crate::UnknownCommand(0xff).into())
        );
        // A fixed-size command with a wrong declared size is invalid at once.
        let mut v = vec![Command::GetAlignment.as_u8()];
        v.extend_from_slice(&8u64.to_le_bytes());
        assert_eq!(
            decode_request_frame(&v),
            Err(DecodeError::SizeMismatch {
                cmd: Command::GetAlignment,
                expected: 4,
                got: 8
            })
        );
        let mut v = vec![Command::SetTensor.as_u8()];
        v.extend_from_slice(&304u64.to_le_bytes());
        assert_eq!(
            decode_request_frame(&v),
            Err(DecodeError::TooShort {
                cmd: Command::SetTensor,
                min: 305,
                got: 304
            })
        );
        // A huge declared size is only "incomplete": nothing is allocated.
        let mut v = vec![Command::SetTensor.as_u8()];
        v.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode_request_frame(&v), Ok(None));
    }

    #[test]
    fn cache_flag_must_be_a_bool() {
        let mut v = Vec::new();
        encode_set_tensor(&tensor(1), false, 0, &[1, 2], &mut v).unwrap();
        v[9 + 296] = 2;
        assert_eq!(
            decode_request_frame(&v),
            Err(DecodeError::InvalidBool {
                cmd: Command::SetTensor,
                field: "cache_flag",
                value: 2
            })
        );
    }

    #[test]
    fn graph_counts_are_checked_before_allocating() {
        let frame = |payload: &[u8]| {
            let mut v = vec![Command::GraphCompute.as_u8()];
            v.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            v.extend_from_slice(payload);
            v
        };
        // n_nodes = u32::MAX in a 12-byte payload.
        let mut p = Vec::new();
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            decode_request_frame(&frame(&p)),
            Err(DecodeError::GraphSize {
                n_nodes: u32::MAX,
                ..
            })
        ));
        // n_tensors = u32::MAX with no tensor bytes.
        let mut p = Vec::new();
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_request_frame(&frame(&p)),
            Err(DecodeError::GraphSize {
                n_tensors: u32::MAX,
                ..
            })
        ));
        // Trailing bytes after the last tensor.
        let mut v = Vec::new();
        encode_graph_compute(0, &[1], &[tensor(1)], &mut v).unwrap();
        let mut p = v[9..].to_vec();
        p.push(0);
        assert!(matches!(
            decode_request_frame(&frame(&p)),
            Err(DecodeError::GraphSize { .. })
        ));
        // Empty graph is well-formed.
        let mut v = Vec::new();
        encode_graph_compute(0, &[], &[], &mut v).unwrap();
        assert_eq!(v.len(), 9 + 12);
        assert!(decode_request_frame(&v).unwrap().is_some());
    }

    /// A cheap stand-in for the fuzzer that runs on stable: mutate valid
    /// frames and feed random bytes; nothing may panic, and whatever decodes
    /// re-encodes to the same bytes.
    #[test]
    fn mutated_frames_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let data = [5u8; 40];
        let frames: Vec<Vec<u8>> = samples(&data).iter().map(encode).collect();
        for round in 0..20_000 {
            let mut buf = if round % 4 == 0 {
                (0..next() % 400).map(|_| next() as u8).collect()
            } else {
                frames[next() as usize % frames.len()].clone()
            };
            for _ in 0..(next() % 4) {
                if buf.is_empty() {
                    break;
                }
                let i = next() as usize % buf.len();
                buf[i] = next() as u8;
            }
            if next() % 3 == 0 {
                let cut = next() as usize % (buf.len() + 1);
                buf.truncate(cut);
            }
            if let Ok(Some((req, used))) = decode_request_frame(&buf) {
                assert_eq!(encode(&req), buf[..used]);
            }
            for cmd in Command::ALL {
                let _ = decode_request_payload(cmd, buf.get(9..).unwrap_or(&[]));
            }
        }
    }

    #[test]
    fn too_many_alloc_size_sources() {
        let srcs = vec![RpcTensor::default(); 11];
        let mut v = Vec::new();
        assert_eq!(
            encode_get_alloc_size(0, &RpcTensor::default(), &srcs, &mut v),
            Err(EncodeError::TooManySources { max: 10, got: 11 })
        );
        assert!(v.is_empty());
    }
}
