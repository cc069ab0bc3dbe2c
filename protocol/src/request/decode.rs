//! Decoding requests: the server's view of untrusted bytes, used by fake
//! servers and the fuzzer.

use super::*;
use crate::wire::Reader;

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
