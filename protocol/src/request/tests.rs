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
