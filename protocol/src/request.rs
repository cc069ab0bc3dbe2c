//! Requests: `cmd: u8 | size: u64 | payload[size]`.
//!
//! Encoding appends whole frames to a caller's buffer (one function per
//! command, plus [`Request::encode`]). Decoding is the server's view of
//! untrusted bytes, used by fake servers and the fuzzer.

use crate::command::{Command, RequestSize};
use crate::error::{DecodeError, EncodeError};
use crate::response::ExpectedResponse;
use crate::tensor::RpcTensor;
use crate::wire::{len_u64, put_u32, put_u64, put_u8};
use crate::{CONN_CAPS_SIZE, GGML_MAX_SRC, REQUEST_HEADER_LEN, RPC_TENSOR_SIZE};
use bytes::BufMut;

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

fn header(out: &mut impl BufMut, cmd: Command, payload_len: u64) {
    put_u8(out, cmd.as_u8());
    put_u64(out, payload_len);
}

fn fixed_len(cmd: Command) -> u64 {
    match cmd.request_size() {
        RequestSize::Exact(n) | RequestSize::AtLeast(n) => len_u64(n),
    }
}

/// `ALLOC_BUFFER`: `device u32 | size u64`.
pub fn encode_alloc_buffer(device: u32, size: u64, out: &mut impl BufMut) {
    header(out, Command::AllocBuffer, fixed_len(Command::AllocBuffer));
    put_u32(out, device);
    put_u64(out, size);
}

/// `GET_ALIGNMENT`: `device u32`.
pub fn encode_get_alignment(device: u32, out: &mut impl BufMut) {
    header(out, Command::GetAlignment, 4);
    put_u32(out, device);
}

/// `GET_MAX_SIZE`: `device u32`.
pub fn encode_get_max_size(device: u32, out: &mut impl BufMut) {
    header(out, Command::GetMaxSize, 4);
    put_u32(out, device);
}

/// `BUFFER_GET_BASE`: `remote_ptr u64`.
pub fn encode_buffer_get_base(remote_ptr: u64, out: &mut impl BufMut) {
    header(out, Command::BufferGetBase, 8);
    put_u64(out, remote_ptr);
}

/// `FREE_BUFFER`: `remote_ptr u64`.
pub fn encode_free_buffer(remote_ptr: u64, out: &mut impl BufMut) {
    header(out, Command::FreeBuffer, 8);
    put_u64(out, remote_ptr);
}

/// `BUFFER_CLEAR`: `remote_ptr u64 | value u8`.
pub fn encode_buffer_clear(remote_ptr: u64, value: u8, out: &mut impl BufMut) {
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
    out: &mut impl BufMut,
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
    out: &mut impl BufMut,
) -> Result<(), EncodeError> {
    encode_set_tensor_header(tensor, cache, offset, len_u64(data.len()), out)?;
    out.put_slice(data);
    Ok(())
}

/// `SET_TENSOR_HASH`: `rpc_tensor | offset u64 | hash u64`.
pub fn encode_set_tensor_hash(tensor: &RpcTensor, offset: u64, hash: u64, out: &mut impl BufMut) {
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
pub fn encode_get_tensor(tensor: &RpcTensor, offset: u64, size: u64, out: &mut impl BufMut) {
    header(out, Command::GetTensor, fixed_len(Command::GetTensor));
    tensor.encode(out);
    put_u64(out, offset);
    put_u64(out, size);
}

/// `COPY_TENSOR`: `src rpc_tensor | dst rpc_tensor`.
pub fn encode_copy_tensor(src: &RpcTensor, dst: &RpcTensor, out: &mut impl BufMut) {
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
    out: &mut impl BufMut,
) -> Result<(), EncodeError> {
    let n_nodes = count_u32("graph nodes", nodes.len())?;
    let n_tensors = count_u32("graph tensors", tensors.len())?;
    let len = graph_compute_payload_len(u64::from(n_nodes), u64::from(n_tensors)).ok_or(
        EncodeError::PayloadTooLarge {
            cmd: Command::GraphCompute,
        },
    )?;
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
pub fn encode_get_device_memory(device: u32, out: &mut impl BufMut) {
    header(out, Command::GetDeviceMemory, 4);
    put_u32(out, device);
}

/// `INIT_TENSOR`: `rpc_tensor`.
pub fn encode_init_tensor(tensor: &RpcTensor, out: &mut impl BufMut) {
    header(out, Command::InitTensor, fixed_len(Command::InitTensor));
    tensor.encode(out);
}

/// `GET_ALLOC_SIZE`: `device u32 | rpc_tensor | rpc_tensor[10]`. `srcs` holds
/// up to 10 sources; the remaining slots are sent as all-zero tensors.
pub fn encode_get_alloc_size(
    device: u32,
    tensor: &RpcTensor,
    srcs: &[RpcTensor],
    out: &mut impl BufMut,
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
pub fn encode_hello(conn_caps: &[u8; CONN_CAPS_SIZE], out: &mut impl BufMut) {
    header(out, Command::Hello, len_u64(CONN_CAPS_SIZE));
    out.put_slice(conn_caps);
}

/// `DEVICE_COUNT`: empty payload.
pub fn encode_device_count(out: &mut impl BufMut) {
    header(out, Command::DeviceCount, 0);
}

/// `GRAPH_RECOMPUTE`: `device u32`.
pub fn encode_graph_recompute(device: u32, out: &mut impl BufMut) {
    header(out, Command::GraphRecompute, 4);
    put_u32(out, device);
}

/// `MEMSET_TENSOR`: `rpc_tensor | offset u64 | size u64 | value u8`.
pub fn encode_memset_tensor(
    tensor: &RpcTensor,
    offset: u64,
    size: u64,
    value: u8,
    out: &mut impl BufMut,
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
    pub fn encode(&self, out: &mut impl BufMut) -> Result<(), EncodeError> {
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

mod decode;
pub use decode::*;

#[cfg(test)]
mod tests;
