//! What the client sends: requests it refuses to send, the exact bytes of
//! every call, corked writes, the hash path and stored-graph ownership.

use super::*;

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
    // A batch with one bad copy sends none of them.
    let e = c
        .copy_tensors(&[(good, 64, good, 64), (big, 128, good, 64)])
        .await
        .unwrap_err();
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
