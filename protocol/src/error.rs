//! Typed errors of encoding and decoding.

use thiserror::Error;

use crate::Command;

/// A command byte that is not one of protocol 7.0.0's commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("unknown RPC command byte {0}")]
pub struct UnknownCommand(pub u8);

/// Bytes that are not a valid request or response.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The command byte is not a known command.
    #[error(transparent)]
    UnknownCommand(#[from] UnknownCommand),
    /// A payload (or a response) whose length must be exact is not.
    #[error("{cmd}: payload is {got} bytes, expected exactly {expected}")]
    SizeMismatch {
        /// The command.
        cmd: Command,
        /// The length the protocol requires.
        expected: u64,
        /// The length declared or found.
        got: u64,
    },
    /// A variable-length payload shorter than its fixed part.
    #[error("{cmd}: payload is {got} bytes, at least {min} required")]
    TooShort {
        /// The command.
        cmd: Command,
        /// The minimum length.
        min: u64,
        /// The length declared or found.
        got: u64,
    },
    /// `GRAPH_COMPUTE` counts that do not match the bytes of the payload.
    #[error(
        "GRAPH_COMPUTE: {n_nodes} node ids and {n_tensors} tensors need {needed} bytes, payload has {got}"
    )]
    GraphSize {
        /// Declared number of node ids.
        n_nodes: u32,
        /// Declared number of tensors (0 when the payload ends before the count).
        n_tensors: u32,
        /// Bytes the declared counts need (saturating).
        needed: u64,
        /// Bytes the payload has.
        got: u64,
    },
    /// A flag byte that must be 0 or 1.
    #[error("{cmd}: {field} must be 0 or 1, got {value}")]
    InvalidBool {
        /// The command.
        cmd: Command,
        /// Which field.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// A response was asked for a command that has none.
    #[error("{0} has no response")]
    NoResponse(Command),
}

/// A request that cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// A count that does not fit the wire's `u32`.
    #[error("{what}: {count} does not fit in a u32 count")]
    CountTooLarge {
        /// What was counted.
        what: &'static str,
        /// The count.
        count: usize,
    },
    /// A payload whose length does not fit the wire's `u64` size field.
    #[error("{cmd}: payload length does not fit in a u64")]
    PayloadTooLarge {
        /// The command.
        cmd: Command,
    },
    /// More source tensors than `GET_ALLOC_SIZE` carries.
    #[error("GET_ALLOC_SIZE carries at most {max} source tensors, got {got}")]
    TooManySources {
        /// The limit (`GGML_MAX_SRC`).
        max: usize,
        /// How many were given.
        got: usize,
    },
}

/// A tensor name that cannot be stored in `rpc_tensor::name`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NameError {
    /// Longer than 63 bytes (64 with the terminating NUL).
    #[error("tensor name is {len} bytes, at most {max} fit")]
    TooLong {
        /// Length of the name in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Contains a NUL byte, which would cut it short on the server.
    #[error("tensor name contains a NUL byte")]
    InteriorNul,
}
