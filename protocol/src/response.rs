//! Responses: `size: u64 | payload[size]`, for the commands that answer.
//!
//! A response does not say which command it answers; the client knows from
//! the request it sent ([`ExpectedResponse`]). Every size is exact.

use crate::command::{Command, ResponseShape};
use crate::error::DecodeError;
use crate::wire::{len_u64, put_u32, put_u64, put_u8, Reader};
use crate::{Version, CONN_CAPS_SIZE, RESPONSE_HEADER_LEN};
use bytes::BufMut;

/// `ALLOC_BUFFER`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocBufferResponse {
    /// Handle of the new buffer; 0 means the allocation failed.
    pub remote_ptr: u64,
    /// Actual size of the buffer (may exceed the request).
    pub remote_size: u64,
}

/// `GET_DEVICE_MEMORY`'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Free bytes.
    pub free: u64,
    /// Total bytes.
    pub total: u64,
}

/// `HELLO`'s answer: `major u8 | minor u8 | patch u8 | pad u8 | conn_caps[24]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloResponse {
    /// The server's protocol version.
    pub version: Version,
    /// The server's transport capabilities. Non-zero only for a server built
    /// with RDMA; a client that sent all-zero caps stays on plain TCP whatever
    /// the server advertises here.
    pub conn_caps: [u8; CONN_CAPS_SIZE],
}

/// A decoded response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// `ALLOC_BUFFER`.
    AllocBuffer(AllocBufferResponse),
    /// `GET_ALIGNMENT`: alignment in bytes.
    GetAlignment(u64),
    /// `GET_MAX_SIZE`: largest buffer in bytes.
    GetMaxSize(u64),
    /// `BUFFER_GET_BASE`: base address.
    BufferGetBase(u64),
    /// `SET_TENSOR_HASH`: whether the server had the data cached (and wrote it).
    SetTensorHash(bool),
    /// `GET_TENSOR`: the bytes read.
    GetTensor(&'a [u8]),
    /// `COPY_TENSOR`: whether the backend copied.
    CopyTensor(bool),
    /// `GET_DEVICE_MEMORY`.
    GetDeviceMemory(DeviceMemory),
    /// `GET_ALLOC_SIZE`: bytes needed.
    GetAllocSize(u64),
    /// `HELLO`.
    Hello(HelloResponse),
    /// `DEVICE_COUNT`.
    DeviceCount(u32),
}

/// What the answer to a request must look like: its command and exact
/// payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedResponse {
    /// The command answered.
    pub cmd: Command,
    /// Exact payload length.
    pub len: u64,
}

impl ExpectedResponse {
    /// The answer to a command with a fixed-size response; `None` for
    /// commands without a response and for `GET_TENSOR` (use
    /// [`ExpectedResponse::get_tensor`]).
    pub fn fixed(cmd: Command) -> Option<Self> {
        match cmd.response_shape() {
            ResponseShape::Fixed(n) => Some(ExpectedResponse {
                cmd,
                len: len_u64(n),
            }),
            ResponseShape::None | ResponseShape::Requested => None,
        }
    }

    /// The answer to a `GET_TENSOR` of `size` bytes.
    pub fn get_tensor(size: u64) -> Self {
        ExpectedResponse {
            cmd: Command::GetTensor,
            len: size,
        }
    }

    /// Checks a declared payload length.
    pub fn check_len(&self, got: u64) -> Result<(), DecodeError> {
        if got == self.len {
            Ok(())
        } else {
            Err(DecodeError::SizeMismatch {
                cmd: self.cmd,
                expected: self.len,
                got,
            })
        }
    }
}

/// The declared payload length at the start of a response; `None` if fewer
/// than 8 bytes.
pub fn decode_response_header(buf: &[u8]) -> Option<u64> {
    Reader::new(buf).u64()
}

/// Parses one response frame from the start of `buf`.
///
/// A declared length other than `expected.len` is an error as soon as the
/// 8-byte header is there (before the payload is read); `Ok(None)` means
/// more bytes are needed.
pub fn decode_response_frame(
    expected: ExpectedResponse,
    buf: &[u8],
) -> Result<Option<(Response<'_>, usize)>, DecodeError> {
    let Some(declared) = decode_response_header(buf) else {
        return Ok(None);
    };
    expected.check_len(declared)?;
    let Some(end) = usize::try_from(declared)
        .ok()
        .and_then(|n| n.checked_add(RESPONSE_HEADER_LEN))
    else {
        return Ok(None);
    };
    let Some(payload) = buf.get(RESPONSE_HEADER_LEN..end) else {
        return Ok(None);
    };
    Ok(Some((Response::decode(expected, payload)?, end)))
}

fn exact<'a>(cmd: Command, payload: &'a [u8]) -> Result<(Reader<'a>, usize), DecodeError> {
    let expected = match cmd.response_shape() {
        ResponseShape::Fixed(n) => n,
        ResponseShape::None => return Err(DecodeError::NoResponse(cmd)),
        ResponseShape::Requested => payload.len(),
    };
    if payload.len() != expected {
        return Err(DecodeError::SizeMismatch {
            cmd,
            expected: len_u64(expected),
            got: len_u64(payload.len()),
        });
    }
    Ok((Reader::new(payload), expected))
}

/// Reads a fixed-size answer with `f`; the size was checked by `exact`, so a
/// `None` from `f` cannot happen but is still an error, not a panic.
fn fixed<'a, T>(
    cmd: Command,
    payload: &'a [u8],
    f: impl FnOnce(&mut Reader<'a>) -> Option<T>,
) -> Result<T, DecodeError> {
    let (mut r, expected) = exact(cmd, payload)?;
    f(&mut r).ok_or(DecodeError::SizeMismatch {
        cmd,
        expected: len_u64(expected),
        got: len_u64(payload.len()),
    })
}

fn bool_result(cmd: Command, payload: &[u8]) -> Result<bool, DecodeError> {
    match fixed(cmd, payload, Reader::u8)? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(DecodeError::InvalidBool {
            cmd,
            field: "result",
            value,
        }),
    }
}

/// `ALLOC_BUFFER`: `remote_ptr u64 | remote_size u64`.
pub fn decode_alloc_buffer_response(payload: &[u8]) -> Result<AllocBufferResponse, DecodeError> {
    fixed(Command::AllocBuffer, payload, |r| {
        Some(AllocBufferResponse {
            remote_ptr: r.u64()?,
            remote_size: r.u64()?,
        })
    })
}

/// `GET_ALIGNMENT`: `alignment u64`.
pub fn decode_get_alignment_response(payload: &[u8]) -> Result<u64, DecodeError> {
    fixed(Command::GetAlignment, payload, Reader::u64)
}

/// `GET_MAX_SIZE`: `max_size u64`.
pub fn decode_get_max_size_response(payload: &[u8]) -> Result<u64, DecodeError> {
    fixed(Command::GetMaxSize, payload, Reader::u64)
}

/// `BUFFER_GET_BASE`: `base_ptr u64`.
pub fn decode_buffer_get_base_response(payload: &[u8]) -> Result<u64, DecodeError> {
    fixed(Command::BufferGetBase, payload, Reader::u64)
}

/// `SET_TENSOR_HASH`: `result u8` (0 or 1).
pub fn decode_set_tensor_hash_response(payload: &[u8]) -> Result<bool, DecodeError> {
    bool_result(Command::SetTensorHash, payload)
}

/// `GET_TENSOR`: exactly the `requested` bytes.
pub fn decode_get_tensor_response(payload: &[u8], requested: u64) -> Result<&[u8], DecodeError> {
    ExpectedResponse::get_tensor(requested).check_len(len_u64(payload.len()))?;
    Ok(payload)
}

/// `COPY_TENSOR`: `result u8` (0 or 1).
pub fn decode_copy_tensor_response(payload: &[u8]) -> Result<bool, DecodeError> {
    bool_result(Command::CopyTensor, payload)
}

/// `GET_DEVICE_MEMORY`: `free u64 | total u64`.
pub fn decode_get_device_memory_response(payload: &[u8]) -> Result<DeviceMemory, DecodeError> {
    fixed(Command::GetDeviceMemory, payload, |r| {
        Some(DeviceMemory {
            free: r.u64()?,
            total: r.u64()?,
        })
    })
}

/// `GET_ALLOC_SIZE`: `alloc_size u64`.
pub fn decode_get_alloc_size_response(payload: &[u8]) -> Result<u64, DecodeError> {
    fixed(Command::GetAllocSize, payload, Reader::u64)
}

/// `HELLO`: `major u8 | minor u8 | patch u8 | pad u8 | conn_caps[24]`. The
/// padding byte is ignored.
pub fn decode_hello_response(payload: &[u8]) -> Result<HelloResponse, DecodeError> {
    fixed(Command::Hello, payload, |r| {
        let version = Version {
            major: r.u8()?,
            minor: r.u8()?,
            patch: r.u8()?,
        };
        let _pad = r.u8()?;
        Some(HelloResponse {
            version,
            conn_caps: r.array()?,
        })
    })
}

/// `DEVICE_COUNT`: `device_count u32`.
pub fn decode_device_count_response(payload: &[u8]) -> Result<u32, DecodeError> {
    fixed(Command::DeviceCount, payload, Reader::u32)
}

impl<'a> Response<'a> {
    /// The command this answers.
    pub fn command(&self) -> Command {
        match self {
            Response::AllocBuffer(_) => Command::AllocBuffer,
            Response::GetAlignment(_) => Command::GetAlignment,
            Response::GetMaxSize(_) => Command::GetMaxSize,
            Response::BufferGetBase(_) => Command::BufferGetBase,
            Response::SetTensorHash(_) => Command::SetTensorHash,
            Response::GetTensor(_) => Command::GetTensor,
            Response::CopyTensor(_) => Command::CopyTensor,
            Response::GetDeviceMemory(_) => Command::GetDeviceMemory,
            Response::GetAllocSize(_) => Command::GetAllocSize,
            Response::Hello(_) => Command::Hello,
            Response::DeviceCount(_) => Command::DeviceCount,
        }
    }

    /// Parses a response payload (without the 8-byte size header).
    pub fn decode(expected: ExpectedResponse, payload: &'a [u8]) -> Result<Self, DecodeError> {
        expected.check_len(len_u64(payload.len()))?;
        Ok(match expected.cmd {
            Command::AllocBuffer => Response::AllocBuffer(decode_alloc_buffer_response(payload)?),
            Command::GetAlignment => {
                Response::GetAlignment(decode_get_alignment_response(payload)?)
            }
            Command::GetMaxSize => Response::GetMaxSize(decode_get_max_size_response(payload)?),
            Command::BufferGetBase => {
                Response::BufferGetBase(decode_buffer_get_base_response(payload)?)
            }
            Command::SetTensorHash => {
                Response::SetTensorHash(decode_set_tensor_hash_response(payload)?)
            }
            Command::GetTensor => Response::GetTensor(payload),
            Command::CopyTensor => Response::CopyTensor(decode_copy_tensor_response(payload)?),
            Command::GetDeviceMemory => {
                Response::GetDeviceMemory(decode_get_device_memory_response(payload)?)
            }
            Command::GetAllocSize => {
                Response::GetAllocSize(decode_get_alloc_size_response(payload)?)
            }
            Command::Hello => Response::Hello(decode_hello_response(payload)?),
            Command::DeviceCount => Response::DeviceCount(decode_device_count_response(payload)?),
            cmd @ (Command::FreeBuffer
            | Command::BufferClear
            | Command::SetTensor
            | Command::GraphCompute
            | Command::InitTensor
            | Command::GraphRecompute
            | Command::MemsetTensor) => return Err(DecodeError::NoResponse(cmd)),
        })
    }

    /// What a client expects for this response (its command and length).
    pub fn expected(&self) -> ExpectedResponse {
        let len = match self {
            Response::GetTensor(data) => len_u64(data.len()),
            other => match other.command().response_shape() {
                ResponseShape::Fixed(n) => len_u64(n),
                ResponseShape::None | ResponseShape::Requested => 0,
            },
        };
        ExpectedResponse {
            cmd: self.command(),
            len,
        }
    }

    /// Appends the whole frame (`size u64 | payload`) to `out`, as a server
    /// would send it.
    pub fn encode(&self, out: &mut impl BufMut) {
        put_u64(out, self.expected().len);
        match self {
            Response::AllocBuffer(a) => {
                put_u64(out, a.remote_ptr);
                put_u64(out, a.remote_size);
            }
            Response::GetAlignment(v)
            | Response::GetMaxSize(v)
            | Response::BufferGetBase(v)
            | Response::GetAllocSize(v) => put_u64(out, *v),
            Response::SetTensorHash(b) | Response::CopyTensor(b) => put_u8(out, u8::from(*b)),
            Response::GetTensor(data) => out.put_slice(data),
            Response::GetDeviceMemory(m) => {
                put_u64(out, m.free);
                put_u64(out, m.total);
            }
            Response::Hello(h) => {
                put_u8(out, h.version.major);
                put_u8(out, h.version.minor);
                put_u8(out, h.version.patch);
                put_u8(out, 0);
                out.put_slice(&h.conn_caps);
            }
            Response::DeviceCount(n) => put_u32(out, *n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROTOCOL_VERSION;

    fn samples(data: &[u8]) -> Vec<Response<'_>> {
        let mut caps = [0u8; CONN_CAPS_SIZE];
        caps[3] = 9;
        vec![
            Response::AllocBuffer(AllocBufferResponse {
                remote_ptr: 0x55aa,
                remote_size: 4096,
            }),
            Response::GetAlignment(32),
            Response::GetMaxSize(u64::MAX),
            Response::BufferGetBase(0x7f00_0000_0000),
            Response::SetTensorHash(true),
            Response::GetTensor(data),
            Response::CopyTensor(false),
            Response::GetDeviceMemory(DeviceMemory { free: 1, total: 2 }),
            Response::GetAllocSize(123),
            Response::Hello(HelloResponse {
                version: PROTOCOL_VERSION,
                conn_caps: caps,
            }),
            Response::DeviceCount(3),
        ]
    }

    #[test]
    fn every_response_round_trips() {
        let data = [7u8; 13];
        for resp in samples(&data) {
            let mut v = Vec::new();
            resp.encode(&mut v);
            let exp = resp.expected();
            assert_eq!(v.len() as u64, 8 + exp.len);
            let (back, used) = decode_response_frame(exp, &v).unwrap().unwrap();
            assert_eq!(back, resp);
            assert_eq!(used, v.len());
            for n in 0..v.len() {
                assert_eq!(decode_response_frame(exp, &v[..n]), Ok(None), "{}", exp.cmd);
                assert!(Response::decode(exp, &v[8..n.max(8)]).is_err() || n == 8 && exp.len == 0);
            }
        }
    }

    #[test]
    fn sizes() {
        let exp = |c| ExpectedResponse::fixed(c).map(|e| e.len);
        assert_eq!(exp(Command::AllocBuffer), Some(16));
        assert_eq!(exp(Command::GetAlignment), Some(8));
        assert_eq!(exp(Command::GetMaxSize), Some(8));
        assert_eq!(exp(Command::BufferGetBase), Some(8));
        assert_eq!(exp(Command::SetTensorHash), Some(1));
        assert_eq!(exp(Command::CopyTensor), Some(1));
        assert_eq!(exp(Command::GetDeviceMemory), Some(16));
        assert_eq!(exp(Command::GetAllocSize), Some(8));
        assert_eq!(exp(Command::Hello), Some(28));
        assert_eq!(exp(Command::DeviceCount), Some(4));
        assert_eq!(exp(Command::GetTensor), None);
        assert_eq!(exp(Command::SetTensor), None);
        assert_eq!(ExpectedResponse::get_tensor(77).len, 77);
    }

    #[test]
    fn hello_layout() {
        let mut v = Vec::new();
        let caps = [0xcc; CONN_CAPS_SIZE];
        Response::Hello(HelloResponse {
            version: Version {
                major: 7,
                minor: 1,
                patch: 2,
            },
            conn_caps: caps,
        })
        .encode(&mut v);
        assert_eq!(&v[..12], &[28, 0, 0, 0, 0, 0, 0, 0, 7, 1, 2, 0]);
        assert_eq!(&v[12..], &caps);
        // The padding byte is not checked.
        let mut p = v[8..].to_vec();
        p[3] = 0xee;
        assert_eq!(decode_hello_response(&p).unwrap().version.minor, 1);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let exp = ExpectedResponse::fixed(Command::GetAlignment).unwrap();
        let mut v = 4u64.to_le_bytes().to_vec();
        v.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            decode_response_frame(exp, &v),
            Err(DecodeError::SizeMismatch {
                cmd: Command::GetAlignment,
                expected: 8,
                got: 4
            })
        );
        // Reported from the header alone, before the payload arrives.
        assert!(decode_response_frame(exp, &v[..8]).is_err());
        assert!(decode_alloc_buffer_response(&[0; 15]).is_err());
        assert!(decode_alloc_buffer_response(&[0; 17]).is_err());
        assert!(decode_hello_response(&[0; 27]).is_err());
        assert!(decode_device_count_response(&[0; 8]).is_err());
        assert_eq!(
            decode_get_tensor_response(&[1, 2], 3),
            Err(DecodeError::SizeMismatch {
                cmd: Command::GetTensor,
                expected: 3,
                got: 2
            })
        );
        assert_eq!(decode_get_tensor_response(&[1, 2], 2), Ok(&[1u8, 2][..]));
        // "HTTP/1.1" read as a size.
        let http = b"HTTP/1.1 400 Bad Request\r\n";
        assert!(matches!(
            decode_response_frame(ExpectedResponse::fixed(Command::Hello).unwrap(), http),
            Err(DecodeError::SizeMismatch {
                cmd: Command::Hello,
                expected: 28,
                ..
            })
        ));
    }

    #[test]
    fn bools_are_strict() {
        assert_eq!(decode_set_tensor_hash_response(&[0]), Ok(false));
        assert_eq!(decode_set_tensor_hash_response(&[1]), Ok(true));
        assert_eq!(
            decode_copy_tensor_response(&[2]),
            Err(DecodeError::InvalidBool {
                cmd: Command::CopyTensor,
                field: "result",
                value: 2
            })
        );
    }

    #[test]
    fn no_response_commands() {
        let exp = ExpectedResponse {
            cmd: Command::SetTensor,
            len: 0,
        };
        assert_eq!(
            Response::decode(exp, &[]),
            Err(DecodeError::NoResponse(Command::SetTensor))
        );
    }
}
