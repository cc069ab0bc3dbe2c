//! Safe bindings to ggml, as built by the `llama-cpp-sys-2` crate with
//! `GGML_RPC=ON`.
//!
//! This crate is the only place in shardline with `unsafe` code. It exposes what
//! the coordinator needs from ggml: contexts, tensor and graph building
//! ([`Context`], [`Tensor`], [`Graph`]), the CPU backend ([`CpuBackend`]),
//! devices ([`Device`]), ggml's graph allocator as a measure
//! ([`measure_compute`]) and ggml's own RPC server ([`rpc_start_server`]).
//!
//! ggml aborts the process on a failed assertion. Every wrapper here checks the
//! preconditions it knows of before calling into ggml and returns a
//! [`GgmlError`] instead.

mod alloc;
mod backend;
mod context;
mod elementwise;
mod experts;
mod graph;
mod kept;
mod log;
mod ops;
mod rpc_server;
mod types;
#[cfg(all(feature = "vulkan", target_os = "linux"))]
mod vk_descriptors;

pub use alloc::{measure_compute, CpuGraphAllocator, CPU_BUFFER_ALIGNMENT};
pub use backend::{CpuBackend, Device, DeviceKind};
pub use context::{Context, Tensor, TensorId, TensorInfo};
pub use graph::Graph;
pub use kept::KeptGraph;
pub use log::{set_log_handler, LogHandler, LogLevel};
pub use ops::RopeParams;
pub use rpc_server::{rpc_start_server, RPC_PROTO_MAJOR, RPC_PROTO_MINOR, RPC_PROTO_PATCH};
pub use types::{
    op, op_count, op_name, to_f32, ty, type_blck_size, type_name, type_size, GgmlType,
};
#[cfg(all(feature = "vulkan", target_os = "linux"))]
pub use vk_descriptors::vk_descriptor_writes_extended;

/// Errors from the safe ggml layer. Each names the precondition ggml would
/// otherwise have aborted on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GgmlError {
    /// ggml could not create a context of the requested size.
    ContextInit { mem_size: usize },
    /// A context has no room left for another tensor or graph.
    ContextFull { needed: usize, available: usize },
    /// A tensor shape is invalid (too many dimensions, a negative extent, a row
    /// that is not a whole number of blocks of its type...).
    BadShape(String),
    /// An unknown ggml type id.
    UnknownType(u32),
    /// The operands of an operation do not fit together.
    IncompatibleOperands { op: &'static str, detail: String },
    /// A graph has no room for more nodes or leaves.
    GraphFull { size: usize },
    /// Bytes written to or read from a tensor do not fit inside it.
    OutOfBounds {
        offset: usize,
        len: usize,
        nbytes: usize,
    },
    /// A tensor has no backend buffer (allocate the context first).
    NotAllocated(String),
    /// A backend could not be created or could not allocate a buffer.
    Backend(String),
    /// A graph computation returned a failure status.
    Compute(String),
}

impl std::fmt::Display for GgmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ContextInit { mem_size } => {
                write!(f, "ggml could not create a context of {mem_size} bytes")
            }
            Self::ContextFull { needed, available } => write!(
                f,
                "ggml context is full: {needed} bytes needed, {available} available"
            ),
            Self::BadShape(s) => write!(f, "bad tensor shape: {s}"),
            Self::UnknownType(t) => write!(f, "unknown ggml type id {t}"),
            Self::IncompatibleOperands { op, detail } => {
                write!(f, "incompatible operands for {op}: {detail}")
            }
            Self::GraphFull { size } => write!(f, "ggml graph is full ({size} entries)"),
            Self::OutOfBounds {
                offset,
                len,
                nbytes,
            } => write!(
                f,
                "{len} bytes at offset {offset} do not fit in a tensor of {nbytes} bytes"
            ),
            Self::NotAllocated(name) => write!(f, "tensor '{name}' has no backend buffer"),
            Self::Backend(s) => write!(f, "ggml backend error: {s}"),
            Self::Compute(s) => write!(f, "ggml graph compute failed: {s}"),
        }
    }
}

impl std::error::Error for GgmlError {}
