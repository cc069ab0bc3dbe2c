//! Uploading a stage's weights to one device of one server in a handful of
//! round trips, asking the server's cache first.
//!
//! Per-tensor questions are batched: every tensor's allocation size in one
//! round trip, then every tensor's hash (`SET_TENSOR_HASH`) in a few waves as
//! the hashes become known. The server answers from its cache where it can;
//! the rest goes as `SET_TENSOR` with the cache flag set, pipelined, so a
//! server with a cache folder keeps a copy for the next load. Unlike
//! llama.cpp's client, which asks by hash only for tensors over 10 MiB, every
//! weight is asked for: a seeded cache then serves the whole model, small
//! layer tensors included, and a server without a cache costs one small
//! query per tensor, in the same round trips.

use std::collections::HashMap;

use super::hashes::TensorHashes;
use super::{weight_tensor, PlacedWeight, UploadError};
use crate::gguf::{Gguf, TensorInfo};
use crate::rpc::{RpcClient, RpcTensor, Upload};

/// How much of an upload went over the network and how much the server's
/// cache answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Bytes of weights placed.
    pub bytes: u64,
    /// Bytes sent over the network.
    pub sent: u64,
    /// Bytes the server had in its cache (hash path).
    pub cached: u64,
}

impl std::ops::AddAssign for UploadStats {
    fn add_assign(&mut self, o: UploadStats) {
        self.bytes += o.bytes;
        self.sent += o.sent;
        self.cached += o.cached;
    }
}

fn align_up(n: u64, a: u64) -> u64 {
    let a = a.max(1);
    n.div_ceil(a) * a
}

/// Packs tensors of `sizes` into as few buffers of at most `max` bytes as
/// first-fit in order allows: each group is its total size and the members'
/// (index, offset).
fn pack(sizes: &[u64], align: u64, max: u64) -> Vec<(u64, Vec<(usize, u64)>)> {
    let mut groups: Vec<(u64, Vec<(usize, u64)>)> = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let fits = groups.last().is_some_and(|(used, _)| {
            align_up(*used, align)
                .checked_add(size)
                .is_some_and(|e| e <= max)
        });
        if !fits {
            groups.push((0, Vec::new()));
        }
        if let Some((used, members)) = groups.last_mut() {
            let off = align_up(*used, align);
            members.push((i, off));
            *used = off.saturating_add(size);
        }
    }
    groups
}

/// Allocates buffers on `device` of the server behind `client` (each at most
/// the server's largest buffer) and places the weights `names` of `g` there:
/// from the server's cache where it has them (asked by hash, `hashes`), else
/// streamed straight from the mapped file. `progress` is called with each
/// weight's bytes and how it got there once it is placed.
pub async fn upload_weights(
    client: &mut RpcClient,
    device: u32,
    g: &Gguf,
    names: &[String],
    hashes: &TensorHashes,
    progress: &(dyn Fn(u64, Upload) + Send + Sync),
) -> Result<(HashMap<String, PlacedWeight>, UploadStats), UploadError> {
    let endpoint = client.addr().to_string();
    let rpc = |source| UploadError::Rpc {
        endpoint: endpoint.clone(),
        source,
    };
    let align = client.alignment(device).await.map_err(rpc)?;
    let max = match client.max_size(device).await.map_err(rpc)? {
        0 => u64::MAX,
        m => m,
    };
    let infos: Vec<&TensorInfo> = names
        .iter()
        .map(|n| g.tensor(n).ok_or_else(|| UploadError::Missing(n.clone())))
        .collect::<Result<_, _>>()?;
    // Sizes the device needs (a GPU may pad quantized rows), all at once,
    // once per distinct type and shape: every layer repeats the same few
    // shapes, and each query carries eleven 296-byte tensors.
    let mut shapes: Vec<RpcTensor> = Vec::new();
    let mut shape_of = Vec::with_capacity(infos.len());
    for info in &infos {
        let probe = weight_tensor(info, 1, 0, 0)?;
        let k = match shapes
            .iter()
            .position(|s| s.ty == probe.ty && s.ne == probe.ne && s.nb == probe.nb)
        {
            Some(k) => k,
            None => {
                shapes.push(probe);
                shapes.len() - 1
            }
        };
        shape_of.push(k);
    }
    let shape_sizes = client.get_alloc_sizes(device, &shapes).await.map_err(rpc)?;
    let asked = shape_of
        .iter()
        .map(|&k| shape_sizes.get(k).copied().unwrap_or(0));
    let mut sizes = Vec::with_capacity(infos.len());
    for (info, size) in infos.iter().zip(asked) {
        let size = size.max(info.n_bytes());
        if size > max {
            return Err(UploadError::TooLarge {
                endpoint: endpoint.clone(),
                name: info.name().to_string(),
                size,
                max,
            });
        }
        sizes.push(size);
    }

    let mut wires: Vec<Option<RpcTensor>> = vec![None; infos.len()];
    for (used, members) in pack(&sizes, align, max) {
        let buf = client
            .alloc_buffer(device, used.max(1))
            .await
            .map_err(rpc)?;
        for (i, off) in members {
            wires[i] = Some(weight_tensor(infos[i], 1, buf.remote_ptr, buf.base + off)?);
        }
    }
    let wires: Vec<RpcTensor> = wires.into_iter().flatten().collect();
    // A GPU pads quantized rows (it asked for more than the data), and its
    // matrix kernels read the padding: INIT_TENSOR has its backend zero it,
    // as llama.cpp's client asks. Left as the allocation found it, it can
    // hold NaNs that turn whole rows of results into NaN.
    for ((wire, info), &size) in wires.iter().zip(&infos).zip(&sizes) {
        if size > info.n_bytes() {
            client
                .init_tensor(wire, info.n_bytes())
                .await
                .map_err(rpc)?;
        }
    }

    // Ask by hash in waves: each wave takes the tensors whose hashes are
    // known, waiting for at least half of those left, so a cold load (hashes
    // still being computed) needs about log2(tensors) round trips and a warm
    // one a single round trip.
    let mut stats = UploadStats::default();
    let mut pending: Vec<usize> = (0..infos.len()).collect();
    while !pending.is_empty() {
        let pending_names: Vec<&str> = pending.iter().map(|&i| infos[i].name()).collect();
        let known = hashes
            .wait_some(&pending_names, pending.len().div_ceil(2))
            .await;
        let mut wave: Vec<usize> = known.iter().map(|&k| pending[k]).collect();
        if wave.is_empty() {
            // Hashing gave up (it cannot while we hold `hashes`): send them.
            wave.clone_from(&pending);
        }
        let mut queries = Vec::with_capacity(wave.len());
        let mut unhashed = Vec::new();
        for &i in &wave {
            match hashes.get(infos[i].name()) {
                Some(h) => queries.push((wires[i], infos[i].n_bytes(), h)),
                None => unhashed.push(i),
            }
        }
        let hits = client.set_tensors_from_cache(&queries).await.map_err(rpc)?;
        let asked_for = wave.iter().filter(|i| !unhashed.contains(i));
        for (&i, hit) in asked_for
            .zip(hits)
            .chain(unhashed.iter().map(|i| (i, false)))
        {
            let info = infos[i];
            let how = if hit {
                Upload::Cached
            } else {
                client
                    .set_tensor_to_cache(&wires[i], g.tensor_data(info))
                    .await
                    .map_err(rpc)?;
                Upload::Sent
            };
            match how {
                Upload::Cached => stats.cached += info.n_bytes(),
                Upload::Sent => stats.sent += info.n_bytes(),
            }
            stats.bytes += info.n_bytes();
            progress(info.n_bytes(), how);
        }
        pending.retain(|i| !wave.contains(i));
    }
    // Uploads are pipelined; make sure the server took them all.
    client.sync().await.map_err(rpc)?;

    let placed = infos
        .iter()
        .zip(wires)
        .map(|(info, wire)| {
            (
                info.name().to_string(),
                PlacedWeight {
                    wire,
                    nbytes: info.n_bytes(),
                },
            )
        })
        .collect();
    Ok((placed, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_respects_the_buffer_limit_and_alignment() {
        let groups = pack(&[10, 20, 30, 5], 32, 64);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].1, vec![(0, 0), (1, 32)]);
        assert_eq!(groups[1].1, vec![(2, 0), (3, 32)]);
        assert_eq!(groups[1].0, 37);
        assert!(pack(&[], 32, 64).is_empty());
    }

    /// Uploads a Q8_0 and an F32 weight to the scripted fake peer, which
    /// answers GET_ALLOC_SIZE with `padding` more than the Q8_0 data (as a
    /// CUDA device does for quantized rows); returns the requests it got.
    async fn upload_with_padding(padding: u64) -> crate::rpc::fake::Log {
        use crate::gguf::writer::GgufWriter;
        use crate::gguf::GgmlType;
        use crate::rpc::fake::{alloc, handshake, reply, FakeServer, Step};
        use shardline_protocol::{Command, Response};

        let q8 = vec![1u8; 2 * 2 * 34]; // 2 rows of 64: 2 blocks of 34 bytes each
        let f32s = vec![2u8; 16 * 4];
        let (bytes, _) = GgufWriter::new()
            .add_kv("general.architecture", "llama")
            .add_tensor("q", GgmlType::Q8_0, &[64, 2], q8.as_slice())
            .unwrap()
            .add_tensor("f", GgmlType::F32, &[16], f32s.as_slice())
            .unwrap()
            .to_bytes()
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "shardline-upload-init-{}-{padding}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let g = Gguf::open(&path).unwrap();

        let mut script = handshake(1);
        script.extend([
            Step::Expect(Command::GetAlignment, reply(Response::GetAlignment(32))),
            Step::Expect(Command::GetMaxSize, reply(Response::GetMaxSize(0))),
            // One query per distinct shape, in the order given.
            Step::Expect(
                Command::GetAllocSize,
                reply(Response::GetAllocSize(q8.len() as u64 + padding)),
            ),
            Step::Expect(
                Command::GetAllocSize,
                reply(Response::GetAllocSize(f32s.len() as u64)),
            ),
        ]);
        script.extend(alloc(0xb0, 4096, 0x7000_0000));
        if padding > 0 {
            script.push(Step::Expect(Command::InitTensor, vec![]));
        }
        // Asked for by hash (the peer has neither), then sent.
        let miss = reply(Response::SetTensorHash(false));
        script.extend([
            Step::Expect(Command::SetTensorHash, miss.clone()),
            Step::Expect(Command::SetTensorHash, miss),
            Step::Expect(Command::SetTensor, vec![]),
            Step::Expect(Command::SetTensor, vec![]),
            // The round trip that confirms the pipelined commands.
            Step::Expect(Command::DeviceCount, reply(Response::DeviceCount(1))),
            Step::Stall,
        ]);
        let server = FakeServer::start(script).await;
        let mut client = RpcClient::connect(&server.addr, Default::default())
            .await
            .unwrap();
        let hashes = TensorHashes::start(&g, &path, None, &[], 1);
        let names = vec!["q".to_string(), "f".to_string()];
        let placed = upload_weights(&mut client, 0, &g, &names, &hashes, &|_, _| {}).await;
        let placed = match placed {
            Ok((p, _)) => p,
            Err(e) => {
                drop(client);
                panic!("{e}; the peer saw {:?}", server.finish().await.commands());
            }
        };
        assert_eq!(placed.len(), 2);
        drop(client);
        let log = server.finish().await;
        let _ = std::fs::remove_dir_all(&dir);
        assert!(log.error.is_none(), "{:?}", log.error);
        log
    }

    #[tokio::test]
    async fn init_tensor_exactly_where_the_device_pads() {
        let log = upload_with_padding(64).await;
        let inits: Vec<usize> = log
            .commands()
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == shardline_protocol::Command::InitTensor)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(inits.len(), 1, "{:?}", log.commands());
        match log.request(inits[0]) {
            shardline_protocol::Request::InitTensor { tensor } => {
                // The Q8_0 weight: type 8, 64 by 2.
                assert_eq!((tensor.ty, tensor.ne[0], tensor.ne[1]), (8, 64, 2));
            }
            other => panic!("{other:?}"),
        }
        // No padding, no INIT_TENSOR.
        let log = upload_with_padding(0).await;
        assert!(
            !log.commands()
                .contains(&shardline_protocol::Command::InitTensor),
            "{:?}",
            log.commands()
        );
    }
}
