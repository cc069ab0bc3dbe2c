//! The RPC client against real `shardline worker` processes (ggml's own
//! rpc-server code) on loopback.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{model_path, start_worker};
use ggml_sys::{Context, CpuBackend, Tensor};
use shardline::gguf::{Gguf, TensorInfo};
use shardline::graph::{layout_nodes, to_wire, RemoteLocation};
use shardline::load::weight_tensor;
use shardline::rpc::{ClientOptions, RemoteBuffer, RpcClient, RpcError, RpcTensor, Upload};

const GGML_TYPE_F32: u32 = 0;

async fn connect(ep: std::net::SocketAddr) -> RpcClient {
    RpcClient::connect(&ep.to_string(), ClientOptions::default())
        .await
        .expect("connect to worker")
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// Offsets of `infos` packed into one buffer with `alignment`; total size.
fn pack(infos: &[&TensorInfo], alignment: u64) -> (Vec<u64>, u64) {
    let mut offs = Vec::new();
    let mut at = 0;
    for i in infos {
        at = align_up(at, alignment);
        offs.push(at);
        at += i.n_bytes();
    }
    (offs, at.max(1))
}

#[tokio::test]
async fn handshake_devices_memory_alloc_free_on_two_workers() {
    let workers = [start_worker(&[]), start_worker(&[])];
    for w in &workers {
        let mut c = connect(w.endpoint).await;
        let v = c.server_version();
        assert_eq!((v.major, v.minor, v.patch), (7, 0, 0));
        assert_eq!(c.device_count(), 1);
        assert_eq!(c.query_device_count().await.unwrap(), 1);

        let mem = c.device_memory(0).await.unwrap();
        assert!(mem.total > 0 && mem.free <= mem.total, "{mem:?}");
        let align = c.alignment(0).await.unwrap();
        assert!(align.is_power_of_two(), "alignment {align}");
        assert!(c.max_size(0).await.unwrap() >= 1 << 20);

        let a = c.alloc_buffer(0, 1 << 20).await.unwrap();
        let b = c.alloc_buffer(0, 4096).await.unwrap();
        assert!(a.size >= 1 << 20 && b.size >= 4096);
        assert_ne!(a.remote_ptr, b.remote_ptr);
        assert_eq!(c.buffer_get_base(a.remote_ptr).await.unwrap(), a.base);
        c.buffer_clear(a.remote_ptr, 7).await.unwrap();
        c.free_buffer(b.remote_ptr).await.unwrap();
        c.sync().await.unwrap();
        assert!(
            c.buffer(b.remote_ptr).is_none(),
            "freed buffer is forgotten"
        );

        // A device the server does not have is refused before sending.
        let err = c.device_memory(1).await.unwrap_err();
        assert!(matches!(err, RpcError::InvalidRequest(_)), "{err}");
        // ...and the session is still fine.
        c.sync().await.unwrap();
    }
}

#[tokio::test]
async fn every_weight_uploads_and_reads_back_bit_identical() {
    let gguf = Gguf::open(model_path()).unwrap();
    let workers = [start_worker(&[]), start_worker(&[])];
    let mut clients = Vec::new();
    for w in &workers {
        clients.push(connect(w.endpoint).await);
    }
    // Alternate tensors between the two workers.
    let mut shards: [Vec<&TensorInfo>; 2] = [Vec::new(), Vec::new()];
    for (i, t) in gguf.tensors().iter().enumerate() {
        shards[i % 2].push(t);
    }
    assert_eq!(
        shards[0].len() + shards[1].len(),
        272,
        "SmolLM2 has 272 tensors"
    );
    for (c, shard) in clients.iter_mut().zip(&shards) {
        let align = c.alignment(0).await.unwrap();
        let (offs, size) = pack(shard, align);
        let buf = c.alloc_buffer(0, size).await.unwrap();
        let mut wires = Vec::new();
        for (k, (info, off)) in shard.iter().zip(&offs).enumerate() {
            let t = weight_tensor(info, k as u64 + 1, buf.remote_ptr, buf.base + off).unwrap();
            c.set_tensor(&t, info.n_bytes(), 0, gguf.tensor_data(info))
                .await
                .unwrap();
            wires.push(t);
        }
        for (info, t) in shard.iter().zip(&wires) {
            let back = c
                .get_tensor(t, info.n_bytes(), 0, info.n_bytes())
                .await
                .unwrap();
            assert!(
                back == gguf.tensor_data(info),
                "{} differs after upload",
                info.name()
            );
        }
        // A partial read at an offset too.
        let (info, t) = (shard[0], &wires[0]);
        let part = c.get_tensor(t, info.n_bytes(), 8, 16).await.unwrap();
        assert_eq!(part, gguf.tensor_data(info)[8..24]);
    }
}

#[tokio::test]
async fn cache_dir_answers_hash_path_on_second_connection() {
    let dir = std::env::temp_dir().join(format!("shardline-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let w = start_worker(&["--cache", dir.to_str().unwrap()]);
    let gguf = Gguf::open(model_path()).unwrap();
    let info = gguf.tensor("token_embd.weight").unwrap();
    assert!(
        info.n_bytes() > 10 << 20,
        "needs a tensor over the 10 MiB hash threshold"
    );
    let data = gguf.tensor_data(info);

    let mut results = Vec::new();
    for _ in 0..2 {
        let mut c = connect(w.endpoint).await;
        let buf = c.alloc_buffer(0, info.n_bytes()).await.unwrap();
        let t = weight_tensor(info, 1, buf.remote_ptr, buf.base).unwrap();
        results.push(
            c.set_tensor_cached(&t, info.n_bytes(), 0, data)
                .await
                .unwrap(),
        );
        let back = c
            .get_tensor(&t, info.n_bytes(), 0, info.n_bytes())
            .await
            .unwrap();
        assert!(
            back == data,
            "token_embd differs after {:?}",
            results.last()
        );
        c.close().await.unwrap();
    }
    assert_eq!(results, [Upload::Sent, Upload::Cached]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Deterministic inputs without a random-number crate.
fn inputs(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[tokio::test]
async fn remote_graph_matches_local_cpu_and_recompute_takes_new_inputs() {
    let gguf = Gguf::open(model_path()).unwrap();
    let up = gguf.tensor("blk.0.ffn_up.weight").unwrap();
    let gate = gguf.tensor("blk.0.ffn_gate.weight").unwrap();
    let (k, m) = (up.dims()[0] as i64, up.dims()[1] as i64);
    let n_tok = 4i64;

    // y = up·x + gate·x, on real Q4_1 weights.
    let ctx = Context::new(
        Context::tensor_overhead() * 16 + Context::graph_overhead(64),
        true,
    )
    .unwrap();
    let w_up = ctx
        .new_tensor(up.ty().id(), &[k, m])
        .unwrap()
        .set_name(up.name());
    let w_gate = ctx
        .new_tensor(gate.ty().id(), &[k, m])
        .unwrap()
        .set_name(gate.name());
    let x = ctx
        .new_tensor(GGML_TYPE_F32, &[k, n_tok])
        .unwrap()
        .set_name("x")
        .set_input();
    let a = ctx.mul_mat(w_up, x).unwrap().set_name("up");
    let b = ctx.mul_mat(w_gate, x).unwrap().set_name("gate");
    let y = ctx.add(a, b).unwrap().set_name("y").set_output();
    let mut graph = ctx.new_graph(64).unwrap();
    graph.build_forward(y).unwrap();
    assert_eq!(graph.nodes().len(), 3);

    // Local reference on ggml's CPU backend.
    let mut cpu = CpuBackend::new(1).unwrap();
    cpu.alloc_context(&ctx).unwrap();
    w_up.write_bytes(0, gguf.tensor_data(up)).unwrap();
    w_gate.write_bytes(0, gguf.tensor_data(gate)).unwrap();
    let mut local = |xs: &[f32]| {
        x.write_f32(xs).unwrap();
        cpu.compute(&graph).unwrap();
        y.read_f32().unwrap()
    };
    let x1 = inputs((k * n_tok) as usize, 1);
    let x2 = inputs((k * n_tok) as usize, 2);
    let (local1, local2) = (local(&x1), local(&x2));
    assert_ne!(local1, local2);

    // The same graph on a worker.
    let w = start_worker(&[]);
    let mut c = connect(w.endpoint).await;
    let align = c.alignment(0).await.unwrap();
    let (offs, size) = pack(&[up, gate], align);
    let wbuf = c.alloc_buffer(0, size).await.unwrap();
    let xbuf = c.alloc_buffer(0, x.nbytes() as u64).await.unwrap();
    let mut place: HashMap<_, RemoteLocation> = HashMap::new();
    for ((t, info), off) in [(w_up, up), (w_gate, gate)].into_iter().zip(offs) {
        let wire = weight_tensor(info, 1, wbuf.remote_ptr, wbuf.base + off).unwrap();
        c.set_tensor(&wire, info.n_bytes(), 0, gguf.tensor_data(info))
            .await
            .unwrap();
        place.insert(
            t.id(),
            RemoteLocation {
                buffer: wbuf.remote_ptr,
                data: wbuf.base + off,
            },
        );
    }
    place.insert(
        x.id(),
        RemoteLocation {
            buffer: xbuf.remote_ptr,
            data: xbuf.base,
        },
    );
    let layout = layout_nodes(
        &graph,
        align,
        |t| place.contains_key(&t.id()),
        |t| t.nbytes() as u64,
    )
    .unwrap();
    let cbuf = c.alloc_buffer(0, layout.size).await.unwrap();
    for (id, off) in &layout.offsets {
        place.insert(
            *id,
            RemoteLocation {
                buffer: cbuf.remote_ptr,
                data: cbuf.base + off,
            },
        );
    }
    let wire = to_wire(&graph, 0, |t: &Tensor<'_>| place.get(&t.id()).copied()).unwrap();
    let wire_of = |t: Tensor<'_>| -> (RpcTensor, u64) {
        let i = wire
            .msg
            .tensors
            .iter()
            .position(|w| w.name() == Some(t.name().as_str()))
            .unwrap();
        (wire.msg.tensors[i], wire.nbytes[i])
    };
    let (x_wire, x_n) = wire_of(x);
    let (y_wire, y_n) = wire_of(y);

    c.set_tensor(&x_wire, x_n, 0, &f32_bytes(&x1))
        .await
        .unwrap();
    c.graph_compute_sized(0, &wire.msg.nodes, &wire.msg.tensors, &wire.nbytes)
        .await
        .unwrap();
    let remote1 = f32s(&c.get_tensor(&y_wire, y_n, 0, y_n).await.unwrap());
    assert_eq!(
        remote1, local1,
        "remote graph differs from ggml's CPU backend"
    );

    c.set_tensor(&x_wire, x_n, 0, &f32_bytes(&x2))
        .await
        .unwrap();
    c.graph_recompute(0).await.unwrap();
    let remote2 = f32s(&c.get_tensor(&y_wire, y_n, 0, y_n).await.unwrap());
    assert_eq!(remote2, local2, "GRAPH_RECOMPUTE did not use the new input");
}

#[tokio::test]
async fn tensor_outside_its_buffer_is_refused_and_the_worker_lives() {
    let mut w = start_worker(&[]);
    let mut c = connect(w.endpoint).await;
    let buf: RemoteBuffer = c.alloc_buffer(0, 4096).await.unwrap();
    let mut t = RpcTensor {
        id: 1,
        ty: GGML_TYPE_F32,
        buffer: buf.remote_ptr,
        data: buf.base + 4096 - 64,
        ne: [32, 1, 1, 1],
        nb: [4, 128, 128, 128],
        ..RpcTensor::default()
    };
    let err = c.set_tensor(&t, 128, 0, &[0u8; 128]).await.unwrap_err();
    assert!(matches!(err, RpcError::InvalidRequest(_)), "{err}");
    t.buffer = 0xdead_beef; // a buffer this session never allocated
    t.data = buf.base;
    let err = c.get_tensor(&t, 128, 0, 128).await.unwrap_err();
    assert!(matches!(err, RpcError::InvalidRequest(_)), "{err}");
    c.sync().await.unwrap();
    assert!(w.is_running());
}

#[tokio::test]
async fn worker_killed_mid_upload_is_a_clear_error_within_the_timeout() {
    let mut w = start_worker(&[]);
    let opts = ClientOptions {
        call_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let mut c = RpcClient::connect(&w.endpoint.to_string(), opts)
        .await
        .unwrap();
    let chunk = 1u64 << 20;
    let buf = c.alloc_buffer(0, 256 * chunk).await.unwrap();
    let t = RpcTensor {
        id: 1,
        ty: GGML_TYPE_F32,
        buffer: buf.remote_ptr,
        data: buf.base,
        ne: [(256 * chunk / 4) as u32, 1, 1, 1],
        nb: [
            4,
            256 * chunk as u32,
            256 * chunk as u32,
            256 * chunk as u32,
        ],
        ..RpcTensor::default()
    };
    let data = vec![0x5au8; chunk as usize];
    let started = Instant::now();
    let mut err = None;
    for i in 0..256u64 {
        if i == 8 {
            w.kill();
        }
        let r = match c.set_tensor(&t, 256 * chunk, i * chunk, &data).await {
            Ok(()) if i % 4 == 3 => c.sync().await,
            other => other,
        };
        if let Err(e) = r {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("uploading to a killed worker must fail");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, RpcError::Closed { .. } | RpcError::Io { .. }),
        "unexpected error kind: {err}"
    );
    // Later calls fail fast too, instead of hanging.
    let again = tokio::time::timeout(Duration::from_secs(6), c.sync()).await;
    assert!(matches!(again, Ok(Err(_))), "{again:?}");
}

/// Per-tensor questions asked as one batch cost one round trip, and answer
/// what the one-at-a-time calls answer.
#[tokio::test]
async fn batched_queries_take_one_round_trip() {
    let gguf = Gguf::open(model_path()).unwrap();
    let worker = start_worker(&[]);
    let mut c = connect(worker.endpoint).await;
    let infos: Vec<&TensorInfo> = gguf.tensors().iter().take(40).collect();
    let probes: Vec<RpcTensor> = infos
        .iter()
        .map(|i| weight_tensor(i, 1, 0, 0).unwrap())
        .collect();
    let before = c.traffic();
    let sizes = c.get_alloc_sizes(0, &probes).await.unwrap();
    assert_eq!(c.traffic().round_trips, before.round_trips + 1);
    for (p, s) in probes.iter().zip(&sizes).take(5) {
        assert_eq!(c.get_alloc_size(0, p, &[]).await.unwrap(), *s);
    }

    let align = c.alignment(0).await.unwrap();
    let (offs, total) = pack(&infos, align);
    let buf = c.alloc_buffer(0, total).await.unwrap();
    let items: Vec<(RpcTensor, u64, u64)> = infos
        .iter()
        .zip(&offs)
        .map(|(i, off)| {
            let w = weight_tensor(i, 1, buf.remote_ptr, buf.base + off).unwrap();
            (
                w,
                i.n_bytes(),
                shardline_protocol::fnv1a_64(gguf.tensor_data(i)),
            )
        })
        .collect();
    let before = c.traffic();
    let hits = c.set_tensors_from_cache(&items).await.unwrap();
    assert_eq!(c.traffic().round_trips, before.round_trips + 1);
    assert!(
        hits.iter().all(|h| !h),
        "a worker without a cache has nothing"
    );
    // The session is still in step: a plain round trip works.
    c.sync().await.unwrap();
    assert!(c.get_alloc_sizes(0, &[]).await.unwrap().is_empty());
}
