#![forbid(unsafe_code)]
//! The wire protocol of llama.cpp's ggml RPC backend, version 7.0.0: pure
//! encoding and decoding, no I/O.
//!
//! Every value on the wire is little-endian and every struct is packed; this
//! crate writes and reads each field explicitly and never relies on the host's
//! struct layout.
//!
//! * A request frame is `cmd: u8 | size: u64 | payload[size]`.
//!   Encoders (`encode_*`, [`Request::encode`]) append whole frames to a
//!   caller's `Vec<u8>`; [`encode_set_tensor_header`] writes only the frame
//!   header and the fixed part of `SET_TENSOR` so that a large data slice can
//!   go to the socket without being copied.
//! * A response frame is `size: u64 | payload[size]`, sent only by the
//!   commands for which [`Command::response_shape`] is not
//!   [`ResponseShape::None`]. The size must match what the client expects
//!   exactly ([`ExpectedResponse`]).
//! * [`decode_request_frame`] parses untrusted bytes from the server's point of
//!   view (for fake servers and fuzzing); [`decode_response_frame`] and the
//!   per-command `decode_*_response` functions parse a server's answer.
//!   Decoding says "incomplete, need more bytes" (`Ok(None)`) apart from
//!   "invalid" (`Err`), checks every declared size and count against the bytes
//!   that remain before allocating, and never panics.
//!
//! Facts about the protocol that a client must respect but that are not
//! visible in the byte layout are documented on the items they concern (see
//! [`Command`]).

mod command;
mod error;
mod hash;
mod request;
mod response;
mod tensor;
mod wire;

pub use command::{Command, RequestSize, ResponseShape, COMMAND_COUNT};
pub use error::{DecodeError, EncodeError, NameError, UnknownCommand};
pub use hash::{fnv1a_64, Fnv1a64, FNV1A_64_OFFSET_BASIS, FNV1A_64_PRIME};
pub use request::{
    decode_request_frame, decode_request_header, decode_request_payload, encode_alloc_buffer,
    encode_buffer_clear, encode_buffer_get_base, encode_copy_tensor, encode_device_count,
    encode_free_buffer, encode_get_alignment, encode_get_alloc_size, encode_get_device_memory,
    encode_get_max_size, encode_get_tensor, encode_graph_compute, encode_graph_recompute,
    encode_hello, encode_init_tensor, encode_memset_tensor, encode_set_tensor,
    encode_set_tensor_hash, encode_set_tensor_header, graph_compute_payload_len, GraphCompute,
    Request, RequestHeader, GET_ALLOC_SIZE_PAYLOAD_LEN, SET_TENSOR_FIXED_LEN,
};
pub use response::{
    decode_alloc_buffer_response, decode_buffer_get_base_response, decode_copy_tensor_response,
    decode_device_count_response, decode_get_alignment_response, decode_get_alloc_size_response,
    decode_get_device_memory_response, decode_get_max_size_response, decode_get_tensor_response,
    decode_hello_response, decode_response_frame, decode_response_header,
    decode_set_tensor_hash_response, AllocBufferResponse, DeviceMemory, ExpectedResponse,
    HelloResponse, Response,
};
pub use tensor::RpcTensor;

use std::fmt;

/// Major version of the protocol this crate speaks.
pub const PROTO_MAJOR: u8 = 7;
/// Minor version of the protocol this crate speaks.
pub const PROTO_MINOR: u8 = 0;
/// Patch version of the protocol this crate speaks.
pub const PROTO_PATCH: u8 = 0;
/// The protocol version this crate speaks: 7.0.0.
pub const PROTOCOL_VERSION: Version = Version {
    major: PROTO_MAJOR,
    minor: PROTO_MINOR,
    patch: PROTO_PATCH,
};

/// Number of ggml ops (`GGML_OP_COUNT`) in the ggml release that speaks 7.0.0.
/// `RpcTensor::op` must be below this; the server does not check it.
pub const GGML_OP_COUNT: u32 = 101;
/// Number of ggml tensor types (`GGML_TYPE_COUNT`) in the ggml release that
/// speaks 7.0.0. The server rejects (closes the connection on) a tensor whose
/// type is not below this.
pub const GGML_TYPE_COUNT: u32 = 43;
/// Dimensions of a tensor (`GGML_MAX_DIMS`): length of `ne` and `nb`.
pub const GGML_MAX_DIMS: usize = 4;
/// Source tensors per tensor (`GGML_MAX_SRC`): length of `src`, and the number
/// of source tensors `GET_ALLOC_SIZE` carries.
pub const GGML_MAX_SRC: usize = 10;
/// Bytes of a tensor name on the wire (`GGML_MAX_NAME`), NUL padding included.
pub const GGML_MAX_NAME: usize = 64;
/// Bytes of op parameters (`GGML_MAX_OP_PARAMS`).
pub const GGML_MAX_OP_PARAMS: usize = 64;
/// Op parameters as `i32` values: `GGML_MAX_OP_PARAMS / 4`.
pub const OP_PARAMS_LEN: usize = GGML_MAX_OP_PARAMS / 4;
/// Size in bytes of the connection capabilities exchanged by `HELLO`
/// (all zeros = plain TCP).
pub const CONN_CAPS_SIZE: usize = 24;
/// Size in bytes of the packed `rpc_tensor` on the wire.
pub const RPC_TENSOR_SIZE: usize = 296;
/// Size of a request frame header: `cmd: u8 | size: u64`.
pub const REQUEST_HEADER_LEN: usize = 9;
/// Size of a response frame header: `size: u64`.
pub const RESPONSE_HEADER_LEN: usize = 8;
/// Uploads larger than this many bytes try `SET_TENSOR_HASH` first (10 MiB),
/// as llama.cpp's own client does for weights.
pub const HASH_THRESHOLD: u64 = 10 * 1024 * 1024;

/// A protocol version as exchanged by `HELLO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Incompatible changes.
    pub major: u8,
    /// Additions a newer client may rely on.
    pub minor: u8,
    /// Changes that do not affect compatibility (e.g. the op numbering).
    pub patch: u8,
}

impl Version {
    /// Whether a client speaking `self` may talk to a server reporting
    /// `server`: same major, and the server's minor not newer than ours.
    pub const fn accepts_server(self, server: Version) -> bool {
        server.major == self.major && server.minor <= self.minor
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rule() {
        let v = PROTOCOL_VERSION;
        assert_eq!(v.to_string(), "7.0.0");
        assert!(v.accepts_server(Version {
            major: 7,
            minor: 0,
            patch: 9
        }));
        assert!(!v.accepts_server(Version {
            major: 7,
            minor: 1,
            patch: 0
        }));
        assert!(!v.accepts_server(Version {
            major: 6,
            minor: 0,
            patch: 0
        }));
        assert!(!v.accepts_server(Version {
            major: 8,
            minor: 0,
            patch: 0
        }));
    }

    #[test]
    fn sizes_are_consistent() {
        assert_eq!(OP_PARAMS_LEN, 16);
        assert_eq!(RPC_TENSOR_SIZE % 8, 0);
        assert_eq!(HASH_THRESHOLD, 10_485_760);
    }
}
