//! The command byte and what each command sends and answers.

use std::fmt;

use crate::error::UnknownCommand;
use crate::{CONN_CAPS_SIZE, GGML_MAX_SRC, RPC_TENSOR_SIZE};

/// Number of commands in protocol 7.0.0 (bytes `0..=17`).
pub const COMMAND_COUNT: u8 = 18;

/// A request's command byte.
///
/// Server behaviour worth knowing (rpc-server 7.0.0):
/// * The first command on a connection must be [`Command::Hello`], with a
///   24-byte payload; anything else closes the connection. A second `HELLO`
///   later on closes it too.
/// * Any request the server cannot parse or refuses closes the connection
///   (the commands without a response included), and closing frees every
///   buffer the connection allocated.
/// * Some requests abort the whole server process instead (`GGML_ASSERT`):
///   a tensor naming a known buffer whose `data .. data + nbytes` is outside
///   that buffer (any command carrying a tensor, graphs included), a
///   `SET_TENSOR`/`GET_TENSOR`/`MEMSET_TENSOR` whose `offset + size` exceeds
///   the tensor's own `nbytes` (the server checks only the buffer bounds
///   before handing it to ggml), and a graph that fails to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Command {
    /// `device u32, size u64` → `remote_ptr u64, remote_size u64` (ptr 0: failed).
    AllocBuffer = 0,
    /// `device u32` → `alignment u64`.
    GetAlignment = 1,
    /// `device u32` → `max_size u64`.
    GetMaxSize = 2,
    /// `remote_ptr u64` → `base_ptr u64`.
    BufferGetBase = 3,
    /// `remote_ptr u64`, no response. Also drops every stored graph.
    FreeBuffer = 4,
    /// `remote_ptr u64, value u8`, no response.
    BufferClear = 5,
    /// `rpc_tensor, cache_flag u8, offset u64, data[..]`, no response.
    SetTensor = 6,
    /// `rpc_tensor, offset u64, hash u64` → `result u8` (1: found in the cache and written).
    SetTensorHash = 7,
    /// `rpc_tensor, offset u64, size u64` → `data[size]`.
    GetTensor = 8,
    /// `src rpc_tensor, dst rpc_tensor` → `result u8`.
    CopyTensor = 9,
    /// `device u32, n_nodes u32, ids u64[n_nodes], n_tensors u32, rpc_tensor[n_tensors]`, no response.
    GraphCompute = 10,
    /// `device u32` → `free u64, total u64`.
    GetDeviceMemory = 11,
    /// `rpc_tensor`, no response.
    InitTensor = 12,
    /// `device u32, rpc_tensor, rpc_tensor[10]` → `alloc_size u64`.
    GetAllocSize = 13,
    /// `conn_caps[24]` → `major u8, minor u8, patch u8, pad u8, conn_caps[24]`.
    Hello = 14,
    /// empty → `device_count u32`.
    DeviceCount = 15,
    /// `device u32`, no response: runs the graph last stored for that device again.
    GraphRecompute = 16,
    /// `rpc_tensor, offset u64, size u64, value u8`, no response.
    MemsetTensor = 17,
}

/// How long a request payload must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestSize {
    /// Exactly this many bytes (the server compares the declared size).
    Exact(usize),
    /// At least this many bytes; the rest is variable (data or arrays).
    AtLeast(usize),
}

/// What a command answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseShape {
    /// No response at all: the command can be pipelined.
    None,
    /// A payload of exactly this many bytes.
    Fixed(usize),
    /// `GET_TENSOR`: exactly the number of bytes the request asked for.
    Requested,
}

impl Command {
    /// Every command, in wire order.
    pub const ALL: [Command; COMMAND_COUNT as usize] = [
        Command::AllocBuffer,
        Command::GetAlignment,
        Command::GetMaxSize,
        Command::BufferGetBase,
        Command::FreeBuffer,
        Command::BufferClear,
        Command::SetTensor,
        Command::SetTensorHash,
        Command::GetTensor,
        Command::CopyTensor,
        Command::GraphCompute,
        Command::GetDeviceMemory,
        Command::InitTensor,
        Command::GetAllocSize,
        Command::Hello,
        Command::DeviceCount,
        Command::GraphRecompute,
        Command::MemsetTensor,
    ];

    /// The byte on the wire.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The command's name as llama.cpp spells it (without the `RPC_CMD_` prefix).
    pub const fn name(self) -> &'static str {
        match self {
            Command::AllocBuffer => "ALLOC_BUFFER",
            Command::GetAlignment => "GET_ALIGNMENT",
            Command::GetMaxSize => "GET_MAX_SIZE",
            Command::BufferGetBase => "BUFFER_GET_BASE",
            Command::FreeBuffer => "FREE_BUFFER",
            Command::BufferClear => "BUFFER_CLEAR",
            Command::SetTensor => "SET_TENSOR",
            Command::SetTensorHash => "SET_TENSOR_HASH",
            Command::GetTensor => "GET_TENSOR",
            Command::CopyTensor => "COPY_TENSOR",
            Command::GraphCompute => "GRAPH_COMPUTE",
            Command::GetDeviceMemory => "GET_DEVICE_MEMORY",
            Command::InitTensor => "INIT_TENSOR",
            Command::GetAllocSize => "GET_ALLOC_SIZE",
            Command::Hello => "HELLO",
            Command::DeviceCount => "DEVICE_COUNT",
            Command::GraphRecompute => "GRAPH_RECOMPUTE",
            Command::MemsetTensor => "MEMSET_TENSOR",
        }
    }

    /// The payload length the server accepts for this command.
    pub const fn request_size(self) -> RequestSize {
        const T: usize = RPC_TENSOR_SIZE;
        match self {
            Command::AllocBuffer => RequestSize::Exact(4 + 8),
            Command::GetAlignment
            | Command::GetMaxSize
            | Command::GetDeviceMemory
            | Command::GraphRecompute => RequestSize::Exact(4),
            Command::BufferGetBase | Command::FreeBuffer => RequestSize::Exact(8),
            Command::BufferClear => RequestSize::Exact(8 + 1),
            Command::SetTensor => RequestSize::AtLeast(T + 1 + 8),
            Command::SetTensorHash => RequestSize::Exact(T + 8 + 8),
            Command::GetTensor => RequestSize::Exact(T + 8 + 8),
            Command::CopyTensor => RequestSize::Exact(2 * T),
            Command::GraphCompute => RequestSize::AtLeast(4 + 4 + 4),
            Command::InitTensor => RequestSize::Exact(T),
            Command::GetAllocSize => RequestSize::Exact(4 + T * (1 + GGML_MAX_SRC)),
            Command::Hello => RequestSize::Exact(CONN_CAPS_SIZE),
            Command::DeviceCount => RequestSize::Exact(0),
            Command::MemsetTensor => RequestSize::Exact(T + 8 + 8 + 1),
        }
    }

    /// What the server answers to this command.
    pub const fn response_shape(self) -> ResponseShape {
        match self {
            Command::AllocBuffer => ResponseShape::Fixed(16),
            Command::GetAlignment
            | Command::GetMaxSize
            | Command::BufferGetBase
            | Command::GetAllocSize => ResponseShape::Fixed(8),
            Command::SetTensorHash | Command::CopyTensor => ResponseShape::Fixed(1),
            Command::GetDeviceMemory => ResponseShape::Fixed(16),
            Command::Hello => ResponseShape::Fixed(4 + CONN_CAPS_SIZE),
            Command::DeviceCount => ResponseShape::Fixed(4),
            Command::GetTensor => ResponseShape::Requested,
            Command::FreeBuffer
            | Command::BufferClear
            | Command::SetTensor
            | Command::GraphCompute
            | Command::InitTensor
            | Command::GraphRecompute
            | Command::MemsetTensor => ResponseShape::None,
        }
    }

    /// Whether the server answers this command (if not, it can be pipelined).
    pub const fn has_response(self) -> bool {
        !matches!(self.response_shape(), ResponseShape::None)
    }
}

impl TryFrom<u8> for Command {
    type Error = UnknownCommand;

    fn try_from(b: u8) -> Result<Self, Self::Error> {
        match Command::ALL.get(usize::from(b)) {
            Some(&cmd) => Ok(cmd),
            None => Err(UnknownCommand(b)),
        }
    }
}

impl From<Command> for u8 {
    fn from(c: Command) -> u8 {
        c as u8
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        for b in 0..=u8::MAX {
            match Command::try_from(b) {
                Ok(c) => {
                    assert!(b < COMMAND_COUNT);
                    assert_eq!(c.as_u8(), b);
                    assert_eq!(u8::from(c), b);
                }
                Err(UnknownCommand(x)) => {
                    assert_eq!(x, b);
                    assert!(b >= COMMAND_COUNT);
                }
            }
        }
    }

    #[test]
    fn fixed_numbers() {
        assert_eq!(Command::Hello as u8, 14);
        assert_eq!(Command::MemsetTensor as u8, 17);
        assert_eq!(Command::GraphRecompute as u8, 16);
        assert_eq!(
            Command::GetAllocSize.request_size(),
            RequestSize::Exact(3260)
        );
        assert_eq!(Command::SetTensor.request_size(), RequestSize::AtLeast(305));
        assert_eq!(Command::Hello.response_shape(), ResponseShape::Fixed(28));
    }

    #[test]
    fn pipelined_commands() {
        let pipelined: Vec<Command> = Command::ALL
            .into_iter()
            .filter(|c| !c.has_response())
            .collect();
        assert_eq!(
            pipelined,
            [
                Command::FreeBuffer,
                Command::BufferClear,
                Command::SetTensor,
                Command::GraphCompute,
                Command::InitTensor,
                Command::GraphRecompute,
                Command::MemsetTensor,
            ]
        );
    }
}
