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

mod requests;
