//! Client tests against the scripted fake peer: fault injection and the
//! exact requests each call sends.

use std::time::Duration;

use shardline_protocol::{
    fnv1a_64, Command, DeviceMemory, Request, Response, RpcTensor, Version, HASH_THRESHOLD,
};

use super::fake::{alloc, handshake, hello, reply, FakeServer, Step};
use super::{ClientOptions, InvalidRequest, RemoteBuffer, RpcClient, RpcError, Upload};

fn quick() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_millis(300),
        min_throughput: 0,
        compute_timeout: Duration::from_secs(2),
    }
}

/// Connects through the handshake plus `rest`.
async fn session(rest: Vec<Step>) -> (RpcClient, FakeServer) {
    let mut script = handshake(1);
    script.extend(rest);
    let server = FakeServer::start(script).await;
    let client = RpcClient::connect(&server.addr, quick())
        .await
        .expect("connect");
    (client, server)
}

const PTR: u64 = 0xb0;
const BASE: u64 = 0x7000_0000;
const SIZE: u64 = 4096;

fn tensor_at(buf: &RemoteBuffer, id: u64, offset: u64) -> RpcTensor {
    RpcTensor {
        id,
        ty: 0, // F32
        buffer: buf.remote_ptr,
        ne: [16, 1, 1, 1],
        nb: [4, 64, 64, 64],
        data: buf.addr(offset).unwrap(),
        ..RpcTensor::default()
    }
    .with_name(&format!("t{id}"))
    .unwrap()
}

// ------------------------------------------------------------ connecting

#[tokio::test]
async fn connect_to_closed_port() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = RpcClient::connect(&addr, quick()).await.unwrap_err();
    assert!(matches!(err, RpcError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&addr));
}

#[tokio::test]
async fn peer_that_never_answers_times_out() {
    let server = FakeServer::start(vec![Step::Stall]).await;
    let err = RpcClient::connect(&server.addr, quick()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::Timeout {
                cmd: Command::Hello,
                ..
            }
        ),
        "{err}"
    );
    let log = server.finish().await;
    assert_eq!(log.commands(), [Command::Hello]);
    assert_eq!(log.request(0), Request::Hello { conn_caps: [0; 24] });
}

#[tokio::test]
async fn http_server_is_a_bad_response() {
    let http = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec();
    let server = FakeServer::start(vec![Step::Send(http), Step::Close]).await;
    let err = RpcClient::connect(&server.addr, quick()).await.unwrap_err();
    match &err {
        RpcError::BadResponse {
            cmd: Command::Hello,
            expected: 28,
            got,
        } => {
            assert_eq!(&got.to_le_bytes(), b"HTTP/1.1");
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("HTTP/1.1"), "{err}");
}

#[tokio::test]
async fn peer_closing_on_hello() {
    let server = FakeServer::start(vec![Step::Close]).await;
    let err = RpcClient::connect(&server.addr, quick()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::Closed {
                cmd: Command::Hello,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("protocol 7"), "{err}");
}

#[tokio::test]
async fn version_mismatch_names_both_versions() {
    for (major, minor) in [(8, 0), (6, 0), (7, 1)] {
        let v = Version {
            major,
            minor,
            patch: 0,
        };
        let server = FakeServer::start(vec![hello(v), Step::Stall]).await;
        let err = RpcClient::connect(&server.addr, quick()).await.unwrap_err();
        match &err {
            RpcError::VersionMismatch { server, client } => {
                assert_eq!(*server, v);
                assert_eq!(client.to_string(), "7.0.0");
            }
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&v.to_string()) && msg.contains("7.0.0"),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn newer_patch_is_accepted() {
    let v = Version {
        major: 7,
        minor: 0,
        patch: 3,
    };
    let server = FakeServer::start(vec![
        hello(v),
        Step::Expect(Command::DeviceCount, reply(Response::DeviceCount(2))),
    ])
    .await;
    let client = RpcClient::connect(&server.addr, quick()).await.unwrap();
    assert_eq!(client.server_version(), v);
    assert_eq!(client.device_count(), 2);
}

// ------------------------------------------------------------ faults mid-session

#[tokio::test]
async fn wrong_response_size_then_poisoned() {
    let mut short = 4u64.to_le_bytes().to_vec();
    short.extend_from_slice(&[1, 2, 3, 4]);
    let (mut c, server) = session(vec![
        Step::Expect(Command::GetAlignment, short),
        Step::Stall,
    ])
    .await;
    let err = c.alignment(0).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::BadResponse {
                cmd: Command::GetAlignment,
                expected: 8,
                got: 4
            }
        ),
        "{err}"
    );
    let again = c.max_size(0).await.unwrap_err();
    assert!(
        matches!(
            again,
            RpcError::Poisoned {
                during: Command::GetAlignment
            }
        ),
        "{again}"
    );
    drop(c);
    // Nothing was sent after the failure.
    assert_eq!(
        server.finish().await.commands().last(),
        Some(&Command::GetAlignment)
    );
}

#[tokio::test]
async fn peer_closing_mid_call() {
    let (mut c, _server) =
        session(vec![Step::Expect(Command::GetMaxSize, vec![]), Step::Close]).await;
    let err = c.max_size(0).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::Closed {
                cmd: Command::GetMaxSize,
                last_pipelined: None
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn peer_closing_mid_response() {
    // Announces 16 bytes, sends 3, hangs up.
    let mut partial = 16u64.to_le_bytes().to_vec();
    partial.extend_from_slice(&[1, 2, 3]);
    let (mut c, _server) = session(vec![
        Step::Expect(Command::GetDeviceMemory, partial),
        Step::Close,
    ])
    .await;
    let err = c.device_memory(0).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::Closed {
                cmd: Command::GetDeviceMemory,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn rejected_pipelined_request_surfaces_on_next_round_trip() {
    let mut script = alloc(PTR, SIZE, BASE);
    script.push(Step::Expect(Command::SetTensor, vec![]));
    script.push(Step::Close); // as rpc-server does when it rejects a request
    let (mut c, server) = session(script).await;
    let buf = c.alloc_buffer(0, SIZE).await.unwrap();
    let t = tensor_at(&buf, 1, 0);
    c.set_tensor(&t, 64, 0, &[0u8; 64]).await.unwrap();
    let err = c.sync().await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::Closed {
                cmd: Command::DeviceCount,
                last_pipelined: Some(Command::SetTensor)
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("SET_TENSOR"), "{err}");
    server.finish().await;
}

#[tokio::test]
async fn malformed_bool_is_reported() {
    let mut script = alloc(PTR, SIZE, BASE);
    let mut bad = 1u64.to_le_bytes().to_vec();
    bad.push(7);
    script.push(Step::Expect(Command::CopyTensor, bad));
    let (mut c, _server) = session(script).await;
    let buf = c.alloc_buffer(0, SIZE).await.unwrap();
    let (a, b) = (tensor_at(&buf, 1, 0), tensor_at(&buf, 2, 64));
    let err = c.copy_tensor(&a, 64, &b, 64).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::MalformedResponse {
                cmd: Command::CopyTensor,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn cancelled_call_poisons_the_session() {
    let (mut c, _server) = session(vec![Step::Stall]).await;
    let cancelled = tokio::time::timeout(Duration::from_millis(50), c.alignment(0)).await;
    assert!(cancelled.is_err());
    let err = c.alignment(0).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::Poisoned {
                during: Command::GetAlignment
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn alloc_failure() {
    let script = vec![Step::Expect(
        Command::AllocBuffer,
        reply(Response::AllocBuffer(
            shardline_protocol::AllocBufferResponse {
                remote_ptr: 0,
                remote_size: 0,
            },
        )),
    )];
    let (mut c, _server) = session(script).await;
    let err = c.alloc_buffer(0, 1 << 40).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::AllocFailed {
                device: 0,
                size: 1099511627776
            }
        ),
        "{err}"
    );
    assert_eq!(c.buffers().count(), 0);
}

// ------------------------------------------------------------ timing budget

#[tokio::test]
async fn pipelined_compute_extends_the_next_deadline() {
    // The fake answers the round trip after 600 ms: twice the call timeout,
    // but within the compute budget queued by GRAPH_COMPUTE.
    let mut script = alloc(PTR, SIZE, BASE);
    script.push(Step::Expect(Command::GraphCompute, vec![]));
    script.push(Step::Expect(Command::DeviceCount, vec![]));
    script.push(Step::Sleep(Duration::from_millis(600)));
    script.push(Step::Send(reply(Response::DeviceCount(1))));
    script.push(Step::Expect(Command::DeviceCount, vec![]));
    script.push(Step::Sleep(Duration::from_millis(600)));
    script.push(Step::Send(reply(Response::DeviceCount(1))));
    let (mut c, _server) = session(script).await;
    let buf = c.alloc_buffer(0, SIZE).await.unwrap();
    let t = tensor_at(&buf, 1, 0);
    c.graph_compute(0, &[1], &[t]).await.unwrap();
    c.sync().await.unwrap();
    // Without queued work the same delay is a timeout.
    let err = c.sync().await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::Timeout {
                cmd: Command::DeviceCount,
                ..
            }
        ),
        "{err}"
    );
}

// ------------------------------------------------------------ client-side validation

#[tokio::test]
async fn invalid_requests_send_nothing() {
    let (mut c, server) = session(alloc(PTR, SIZE, BASE)).await;
    let buf = c.alloc_buffer(0, SIZE).await.unwrap();
    let good = tensor_at(&buf, 1, 0);

    let mut unknown = good;
    unknown.buffer = 0xdead;
    let e = c.set_tensor(&unknown, 64, 0, &[0; 4]).await.unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::UnknownBuffer { buffer: 0xdead })
        ),
        "{e}"
    );

    let past_end = tensor_at(&buf, 2, SIZE - 32);
    let e = c.set_tensor(&past_end, 64, 0, &[0; 4]).await.unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::OutsideBuffer { .. })
        ),
        "{e}"
    );

    let e = c.set_tensor(&good, 64, 62, &[0; 4]).await.unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::OutsideTensor { .. })
        ),
        "{e}"
    );

    let e = c.get_tensor(&good, 64, 0, 65).await.unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::OutsideTensor { .. })
        ),
        "{e}"
    );

    let e = c
        .memset_tensor(&good, 64, 0, u64::MAX, 0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::OutsideTensor { .. })
        ),
        "{e}"
    );

    let mut before = good;
    before.data = BASE - 8;
    let e = c.init_tensor(&before, 8).await.unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::OutsideBuffer { .. })
        ),
        "{e}"
    );

    let e = c.alignment(1).await.unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::UnknownDevice {
                device: 1,
                count: 1
            })
        ),
        "{e}"
    );

    let e = c.alloc_buffer(5, 16).await.unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::UnknownDevice { .. })
        ),
        "{e}"
    );

    let e = c.graph_recompute(0).await.unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::NoStoredGraph { device: 0 })
        ),
        "{e}"
    );

    let mut user = tensor_at(&buf, 3, 64);
    user.src[0] = 99;
    let e = c.graph_compute(0, &[3], &[user]).await.unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::MissingTensor { id: 99, .. })
        ),
        "{e}"
    );

    let e = c
        .graph_compute_sized(0, &[1], &[good], &[SIZE + 1])
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::OutsideBuffer { .. })
        ),
        "{e}"
    );

    let big = tensor_at(&buf, 4, 128);
    let e = c.copy_tensor(&big, 128, &good, 64).await.unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::CopyTooLarge { .. })
        ),
        "{e}"
    );

    let e = c.free_buffer(0x1234).await.unwrap_err();
    assert!(
        matches!(
            e,
            RpcError::InvalidRequest(InvalidRequest::UnknownBuffer { .. })
        ),
        "{e}"
    );

    let e = c
        .get_alloc_size(0, &good, &[RpcTensor::default(); 11])
        .await
        .unwrap_err();
    assert!(
        matches!(e, RpcError::InvalidRequest(InvalidRequest::Encode(_))),
        "{e}"
    );

    // The session is still usable, and nothing after the alloc was sent.
    c.close().await.unwrap();
    let log = server.finish().await;
    assert_eq!(log.error, None);
    assert_eq!(
        log.commands(),
        [
            Command::Hello,
            Command::DeviceCount,
            Command::AllocBuffer,
            Command::BufferGetBase
        ]
    );
}

// ------------------------------------------------------------ exact requests

#[tokio::test]
async fn every_call_sends_the_expected_request() {
    let data: Vec<u8> = (0..64u8).collect();
    let mut script = vec![
        Step::Expect(
            Command::GetDeviceMemory,
            reply(Response::GetDeviceMemory(DeviceMemory {
                free: 10,
                total: 20,
            })),
        ),
        Step::Expect(Command::GetAlignment, reply(Response::GetAlignment(32))),
        Step::Expect(Command::GetMaxSize, reply(Response::GetMaxSize(1 << 30))),
    ];
    script.extend(alloc(PTR, SIZE, BASE));
    script.extend([
        Step::Expect(Command::BufferGetBase, reply(Response::BufferGetBase(BASE))),
        Step::Expect(Command::BufferClear, vec![]),
        Step::Expect(Command::InitTensor, vec![]),
        Step::Expect(Command::SetTensor, vec![]),
        Step::Expect(Command::MemsetTensor, vec![]),
        Step::Expect(Command::GetTensor, reply(Response::GetTensor(&data[8..24]))),
        Step::Expect(Command::CopyTensor, reply(Response::CopyTensor(true))),
        Step::Expect(Command::GetAllocSize, reply(Response::GetAllocSize(256))),
        Step::Expect(Command::GraphCompute, vec![]),
        Step::Expect(Command::GraphRecompute, vec![]),
        Step::Expect(Command::FreeBuffer, vec![]),
        Step::Expect(Command::DeviceCount, reply(Response::DeviceCount(1))),
    ]);
    let (mut c, server) = session(script).await;

    assert_eq!(
        c.device_memory(0).await.unwrap(),
        DeviceMemory {
            free: 10,
            total: 20
        }
    );
    assert_eq!(c.alignment(0).await.unwrap(), 32);
    assert_eq!(c.max_size(0).await.unwrap(), 1 << 30);
    let buf = c.alloc_buffer(0, 4000).await.unwrap();
    assert_eq!(
        buf,
        RemoteBuffer {
            remote_ptr: PTR,
            base: BASE,
            size: SIZE,
            device: 0
        }
    );
    assert_eq!(c.buffer(PTR), Some(buf));
    assert_eq!(c.buffer_get_base(PTR).await.unwrap(), BASE);
    c.buffer_clear(PTR, 0).await.unwrap();

    let a = tensor_at(&buf, 1, 0);
    let mut b = tensor_at(&buf, 2, 64);
    b.src[0] = 1;
    c.init_tensor(&a, 64).await.unwrap();
    c.set_tensor(&a, 64, 0, &data).await.unwrap();
    c.memset_tensor(&a, 64, 4, 8, 0xee).await.unwrap();
    assert_eq!(c.get_tensor(&a, 64, 8, 16).await.unwrap(), &data[8..24]);
    assert!(c.copy_tensor(&a, 64, &b, 64).await.unwrap());
    assert_eq!(c.get_alloc_size(0, &b, &[a]).await.unwrap(), 256);
    c.graph_compute_sized(0, &[2], &[a, b], &[64, 64])
        .await
        .unwrap();
    c.graph_recompute(0).await.unwrap();
    c.free_buffer(PTR).await.unwrap();
    assert_eq!(c.buffers().count(), 0);
    // FREE_BUFFER drops the server's stored graphs.
    assert!(c.graph_recompute(0).await.is_err());
    c.sync().await.unwrap();
    c.close().await.unwrap();

    let log = server.finish().await;
    assert_eq!(log.error, None);
    let r = |i| log.request(i);
    assert_eq!(r(2), Request::GetDeviceMemory { device: 0 });
    assert_eq!(
        r(5),
        Request::AllocBuffer {
            device: 0,
            size: 4000
        }
    );
    assert_eq!(r(6), Request::BufferGetBase { remote_ptr: PTR });
    assert_eq!(
        r(8),
        Request::BufferClear {
            remote_ptr: PTR,
            value: 0
        }
    );
    assert_eq!(r(9), Request::InitTensor { tensor: a });
    assert_eq!(
        r(10),
        Request::SetTensor {
            tensor: a,
            cache: false,
            offset: 0,
            data: &data
        }
    );
    assert_eq!(
        r(11),
        Request::MemsetTensor {
            tensor: a,
            offset: 4,
            size: 8,
            value: 0xee
        }
    );
    assert_eq!(
        r(12),
        Request::GetTensor {
            tensor: a,
            offset: 8,
            size: 16
        }
    );
    assert_eq!(r(13), Request::CopyTensor { src: a, dst: b });
    match r(14) {
        Request::GetAllocSize {
            device: 0,
            tensor,
            srcs,
        } => {
            assert_eq!(tensor, b);
            assert_eq!(srcs[0], a);
            assert!(srcs[1..].iter().all(|s| *s == RpcTensor::default()));
        }
        other => panic!("{other:?}"),
    }
    match r(15) {
        Request::GraphCompute(g) => {
            assert_eq!((g.device, g.nodes, g.tensors), (0, vec![2], vec![a, b]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r(16), Request::GraphRecompute { device: 0 });
    assert_eq!(r(17), Request::FreeBuffer { remote_ptr: PTR });
    assert_eq!(log.frames.len(), 19);
}

#[tokio::test]
async fn corked_commands_go_out_with_the_next_round_trip_in_one_write() {
    let mut script = alloc(PTR, SIZE, BASE);
    script.push(Step::Expect(Command::SetTensor, vec![]));
    script.push(Step::Expect(Command::SetTensor, vec![]));
    script.push(Step::Expect(
        Command::GetTensor,
        reply(Response::GetTensor(&[7, 8, 9, 10])),
    ));
    script.push(Step::Expect(Command::SetTensor, vec![]));
    script.push(Step::Expect(
        Command::GetTensor,
        reply(Response::GetTensor(&[1, 2, 3, 4])),
    ));
    let (mut c, server) = session(script).await;
    let buf = c.alloc_buffer(0, SIZE).await.unwrap();
    let t = tensor_at(&buf, 1, 0);
    c.cork();
    c.set_tensor(&t, 64, 0, &[1u8; 64]).await.unwrap();
    c.set_tensor(&t, 64, 0, &[2u8; 64]).await.unwrap();
    // Uncorked, both would be on their way (and read) by now.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(c.get_tensor(&t, 64, 0, 4).await.unwrap(), [7, 8, 9, 10]);
    // The round trip ended the burst: this one goes out alone.
    c.set_tensor(&t, 64, 0, &[3u8; 64]).await.unwrap();
    assert_eq!(c.get_tensor(&t, 64, 0, 4).await.unwrap(), [1, 2, 3, 4]);
    drop(c);
    let log = server.finish().await;
    assert_eq!(log.error, None);
    let n = log.frames.len();
    let size = |i: usize| log.frames[i].len();
    let burst = size(n - 5) + size(n - 4) + size(n - 3);
    assert!(
        log.reads.contains(&burst),
        "no single read of the {burst}-byte burst: {:?}",
        log.reads
    );
}

#[tokio::test]
async fn wrong_get_tensor_length_is_a_bad_response() {
    let mut script = alloc(PTR, SIZE, BASE);
    script.push(Step::Expect(
        Command::GetTensor,
        reply(Response::GetTensor(&[1, 2, 3])),
    ));
    let (mut c, _server) = session(script).await;
    let buf = c.alloc_buffer(0, SIZE).await.unwrap();
    let t = tensor_at(&buf, 1, 0);
    let err = c.get_tensor(&t, 64, 0, 4).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::BadResponse {
                cmd: Command::GetTensor,
                expected: 4,
                got: 3
            }
        ),
        "{err}"
    );
}

// ------------------------------------------------------------ the hash path

#[tokio::test]
async fn cached_upload_paths() {
    let big_len = usize::try_from(HASH_THRESHOLD).unwrap() + 1;
    let big: Vec<u8> = (0..big_len).map(|i| (i % 251) as u8).collect();
    let size = 2 * HASH_THRESHOLD;
    let mut script = alloc(PTR, size, BASE);
    script.extend([
        // Miss: SET_TENSOR_HASH answers 0, then SET_TENSOR with the cache flag.
        Step::Expect(
            Command::SetTensorHash,
            reply(Response::SetTensorHash(false)),
        ),
        Step::Expect(Command::SetTensor, vec![]),
        // Hit: SET_TENSOR_HASH answers 1, nothing else.
        Step::Expect(Command::SetTensorHash, reply(Response::SetTensorHash(true))),
        // Small: plain SET_TENSOR without the cache flag.
        Step::Expect(Command::SetTensor, vec![]),
        Step::Expect(Command::DeviceCount, reply(Response::DeviceCount(1))),
    ]);
    let (mut c, server) = session(script).await;
    let buf = c.alloc_buffer(0, size).await.unwrap();
    let t = RpcTensor {
        ne: [big_len as u32, 1, 1, 1],
        ty: 24,
        ..tensor_at(&buf, 1, 0)
    }; // I8
    let nbytes = big_len as u64;
    assert_eq!(
        c.set_tensor_cached(&t, nbytes, 0, &big).await.unwrap(),
        Upload::Sent
    );
    assert_eq!(
        c.set_tensor_cached(&t, nbytes, 0, &big).await.unwrap(),
        Upload::Cached
    );
    assert_eq!(
        c.set_tensor_cached(&t, nbytes, 0, &big[..100])
            .await
            .unwrap(),
        Upload::Sent
    );
    c.sync().await.unwrap();
    c.close().await.unwrap();

    let log = server.finish().await;
    assert_eq!(log.error, None);
    let hash = fnv1a_64(&big);
    assert_eq!(
        log.request(4),
        Request::SetTensorHash {
            tensor: t,
            offset: 0,
            hash
        }
    );
    assert_eq!(
        log.request(5),
        Request::SetTensor {
            tensor: t,
            cache: true,
            offset: 0,
            data: &big
        }
    );
    assert_eq!(
        log.request(6),
        Request::SetTensorHash {
            tensor: t,
            offset: 0,
            hash
        }
    );
    assert_eq!(
        log.request(7),
        Request::SetTensor {
            tensor: t,
            cache: false,
            offset: 0,
            data: &big[..100]
        }
    );
}

// ------------------------------------------------------------ stored graphs

#[tokio::test]
async fn the_stored_graph_belongs_to_whoever_sent_it_last() {
    let mut script = alloc(PTR, SIZE, BASE);
    for _ in 0..3 {
        script.push(Step::Expect(Command::GraphCompute, vec![]));
    }
    script.push(Step::Expect(Command::FreeBuffer, vec![]));
    script.push(Step::Expect(Command::DeviceCount, vec![]));
    script.push(Step::Send(reply(Response::DeviceCount(1))));
    let (mut c, _server) = session(script).await;
    let buf = c.alloc_buffer(0, SIZE).await.unwrap();
    let t = tensor_at(&buf, 1, 0);
    assert!(!c.stored_graph_is(0, 7));
    c.graph_compute_for(7, 0, &[1], &[t], &[64]).await.unwrap();
    assert!(c.stored_graph_is(0, 7) && !c.stored_graph_is(0, 8));
    // Another sender on the same device takes the slot.
    c.graph_compute_for(8, 0, &[1], &[t], &[64]).await.unwrap();
    assert!(!c.stored_graph_is(0, 7) && c.stored_graph_is(0, 8));
    c.graph_compute(0, &[1], &[t]).await.unwrap();
    assert!(!c.stored_graph_is(0, 8) && c.has_stored_graph(0));
    // Freeing any buffer drops every stored graph on the server.
    c.free_buffer(buf.remote_ptr).await.unwrap();
    assert!(!c.has_stored_graph(0));
    c.sync().await.unwrap();
}
