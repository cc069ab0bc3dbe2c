//! The output head split over several servers.
//!
//! For one stream, every stage waits for the one before it, so the servers
//! take turns and all but one sit idle. The output matrix is the one piece of
//! a token's work that splits without any exchange between the parts: each
//! logit is one row of the matrix times the normalised hidden state. With the
//! head split, the last stage stops at the final norm, and every share
//! ([`HeadShard`]) multiplies its own contiguous rows of the matrix by that
//! state at the same time as the others. The logits are the same bytes the
//! whole matrix gives (each is the same dot product), concatenated.
//!
//! A server stores one graph per device: a share on a device that also runs
//! layers replaces that stage's graph, so each of them sends its graph
//! again on its next step (a few hundred bytes per tensor, no rebuild).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use ggml_sys::{ty, Context, Tensor, TensorId};
use shardline_protocol::{GraphCompute, RpcTensor};

use super::remote::{new_graph_owner, SharedClient};
use super::StageStat;
use super::{ExecError, Step};
use crate::gguf::Gguf;
use crate::graph::llama::build_head_shard;
use crate::graph::{to_wire, RemoteLocation};
use crate::load::{weight_tensor, UploadError, UploadStats};
use crate::model::{LlamaConfig, OUTPUT, TOKEN_EMBD};
use crate::rpc::{RemoteBuffer, RpcClient, RpcError, Upload};

/// A graph a share sends: the message, each wire tensor's size, and where
/// its input and output are.
#[derive(Debug)]
struct ShardGraph {
    n_outputs: usize,
    msg: GraphCompute,
    nbytes: Vec<u64>,
    input: (RpcTensor, u64),
    output: (RpcTensor, u64),
}

/// Rows `rows` of the output matrix on one device of one server.
#[derive(Debug)]
pub struct HeadShard {
    client: SharedClient,
    endpoint: String,
    device: u32,
    rows: Range<u32>,
    n_embd: u32,
    max_outputs: u32,
    weight: RpcTensor,
    weight_bytes: u64,
    input_buf: RemoteBuffer,
    output_buf: RemoteBuffer,
    /// Graphs by number of outputs, built once each.
    built: HashMap<usize, Arc<ShardGraph>>,
    /// The one this share sent last.
    stored: Option<Arc<ShardGraph>>,
    owner: u64,
    stat: StageStat,
    upload: UploadStats,
}

impl HeadShard {
    /// Uploads rows `rows` of the output matrix to `device` of the server
    /// behind `shared` (a copy of their bytes from the mapped file), and
    /// allocates room for up to `max_outputs` tokens' hidden states and
    /// logits.
    pub async fn load(
        shared: SharedClient,
        device: u32,
        g: &Gguf,
        cfg: &LlamaConfig,
        rows: Range<u32>,
        max_outputs: u32,
        progress: &(dyn Fn(u64, Upload) + Send + Sync),
    ) -> Result<Self, UploadError> {
        let name = if cfg.tied_output { TOKEN_EMBD } else { OUTPUT };
        let info = g
            .tensor(name)
            .ok_or_else(|| UploadError::Missing(name.to_string()))?;
        let row_bytes = info.row_bytes();
        let n_vocab = info.dims().get(1).copied().unwrap_or(1);
        if rows.is_empty() || u64::from(rows.end) > n_vocab {
            return Err(UploadError::BadShare(format!(
                "rows {}..{} of '{name}', which has {n_vocab}",
                rows.start, rows.end
            )));
        }
        let n_rows = u64::from(rows.end - rows.start);
        let start = usize::try_from(u64::from(rows.start) * row_bytes).unwrap_or(usize::MAX);
        let len = usize::try_from(n_rows * row_bytes).unwrap_or(usize::MAX);
        let bytes = g
            .tensor_data(info)
            .get(start..start.saturating_add(len))
            .ok_or_else(|| {
                UploadError::BadShare(format!("'{name}' data is shorter than its shape"))
            })?;

        let mut guard = shared.lock().await;
        let c = &mut *guard;
        let endpoint = c.addr().to_string();
        let rpc = |source: RpcError| UploadError::Rpc {
            endpoint: endpoint.clone(),
            source,
        };
        let weight_buf = c.alloc_buffer(device, len as u64).await.map_err(rpc)?;
        let mut weight = weight_tensor(info, 1, weight_buf.remote_ptr, weight_buf.base)?;
        weight.ne[1] = u32::try_from(n_rows)
            .map_err(|_| crate::load::WeightError::TooLarge(name.to_string()))?;
        for d in 2..4 {
            weight.nb[d] = u32::try_from(n_rows * row_bytes)
                .map_err(|_| crate::load::WeightError::TooLarge(name.to_string()))?;
        }
        weight
            .set_name(&format!("output.rows{}-{}", rows.start, rows.end))
            .map_err(|_| crate::load::WeightError::Name(name.to_string()))?;
        c.set_tensor(&weight, len as u64, 0, bytes)
            .await
            .map_err(rpc)?;
        progress(len as u64, Upload::Sent);
        let n_embd = cfg.hp.n_embd;
        let input_buf = c
            .alloc_buffer(device, 4 * u64::from(n_embd) * u64::from(max_outputs))
            .await
            .map_err(rpc)?;
        let output_buf = c
            .alloc_buffer(device, 4 * n_rows * u64::from(max_outputs))
            .await
            .map_err(rpc)?;
        c.sync().await.map_err(rpc)?;
        let allocated_bytes = c.allocated_bytes(device);
        drop(guard);
        Ok(HeadShard {
            client: shared,
            endpoint: endpoint.clone(),
            device,
            rows,
            n_embd,
            max_outputs,
            weight,
            weight_bytes: len as u64,
            input_buf,
            output_buf,
            built: HashMap::new(),
            stored: None,
            owner: new_graph_owner(),
            stat: StageStat {
                server: endpoint,
                allocated_bytes,
                ..StageStat::default()
            },
            upload: UploadStats {
                bytes: len as u64,
                sent: len as u64,
                cached: 0,
            },
        })
    }

    /// The server's address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The rows of the output matrix it holds.
    pub fn rows(&self) -> Range<u32> {
        self.rows.clone()
    }

    /// What placing its rows sent.
    pub fn upload_stats(&self) -> UploadStats {
        self.upload
    }

    fn err(&self, source: RpcError) -> ExecError {
        ExecError::Rpc {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// The graph for `n_outputs` tokens: this share's rows times the
    /// normalised states, inputs and output in the share's own buffers.
    fn build(&self, n_outputs: usize) -> Result<ShardGraph, ExecError> {
        let ctx = Context::new(
            Context::tensor_overhead() * 8 + Context::graph_overhead(8),
            true,
        )?;
        let n_rows = i64::from(self.rows.end - self.rows.start);
        let n = n_outputs as i64;
        let w = ctx
            .new_tensor(self.weight.ty, &[i64::from(self.n_embd), n_rows])?
            .set_name("output_rows");
        let x = ctx
            .new_tensor(ty::F32, &[i64::from(self.n_embd), n])?
            .set_name("inp_normed")
            .set_input();
        let mut graph = ctx.new_graph(8)?;
        let out = build_head_shard(&ctx, &mut graph, w, x)?;
        super::check_cpu_supports(&graph)?;
        let mut place: HashMap<TensorId, RemoteLocation> = HashMap::new();
        let at = |b: &RemoteBuffer| RemoteLocation {
            buffer: b.remote_ptr,
            data: b.base,
        };
        place.insert(
            w.id(),
            RemoteLocation {
                buffer: self.weight.buffer,
                data: self.weight.data,
            },
        );
        place.insert(x.id(), at(&self.input_buf));
        place.insert(out.id(), at(&self.output_buf));
        let wire = to_wire(&graph, self.device, |t: &Tensor<'_>| {
            place.get(&t.id()).copied()
        })?;
        let find = |t: Tensor<'_>| -> (RpcTensor, u64) {
            let i = wire.index[&t.id()];
            (wire.msg.tensors[i], wire.nbytes[i])
        };
        let (input, output) = (find(x), find(out));
        Ok(ShardGraph {
            n_outputs,
            input,
            output,
            msg: wire.msg,
            nbytes: wire.nbytes,
        })
    }

    /// The logits of this share's rows for `normed` (F32 `[n_embd,
    /// n_outputs]`, little-endian bytes): `[n_rows, n_outputs]`, the same.
    pub async fn run(&mut self, normed: &[u8], n_outputs: usize) -> Result<Vec<u8>, ExecError> {
        let started = std::time::Instant::now();
        let out = self.run_inner(normed, n_outputs).await;
        self.stat.steps += 1;
        self.stat.seconds += started.elapsed().as_secs_f64();
        out
    }

    async fn run_inner(&mut self, normed: &[u8], n_outputs: usize) -> Result<Vec<u8>, ExecError> {
        if n_outputs == 0 || n_outputs > self.max_outputs as usize {
            return Err(ExecError::Memory {
                endpoint: self.endpoint.clone(),
                detail: format!(
                    "{n_outputs} outputs for a share of the head sized for {}",
                    self.max_outputs
                ),
            });
        }
        let graph = match self.built.get(&n_outputs) {
            Some(g) => g.clone(),
            None => {
                let g = Arc::new(self.build(n_outputs)?);
                self.built.insert(n_outputs, g.clone());
                g
            }
        };
        let (input, input_n) = graph.input;
        if normed.len() as u64 != input_n {
            return Err(ExecError::Memory {
                endpoint: self.endpoint.clone(),
                detail: format!(
                    "hidden state of {} bytes, the head's share expects {input_n}",
                    normed.len()
                ),
            });
        }
        let shared = self.client.clone();
        let mut guard = shared.lock().await;
        let c: &mut RpcClient = &mut guard;
        c.cork();
        c.set_tensor(&input, input_n, 0, normed)
            .await
            .map_err(|e| self.err(e))?;
        self.stat.bytes_sent += input_n;
        let same = self
            .stored
            .as_ref()
            .is_some_and(|s| s.n_outputs == n_outputs);
        if same && c.stored_graph_is(self.device, self.owner) {
            c.graph_recompute(self.device)
                .await
                .map_err(|e| self.err(e))?;
        } else {
            c.graph_compute_for(
                self.owner,
                self.device,
                &graph.msg.nodes,
                &graph.msg.tensors,
                &graph.nbytes,
            )
            .await
            .map_err(|e| self.err(e))?;
            self.stat.graphs_sent += 1;
            self.stat.bytes_sent += (graph.msg.tensors.len() * shardline_protocol::RPC_TENSOR_SIZE
                + graph.msg.nodes.len() * 8) as u64;
            self.stored = Some(graph.clone());
        }
        let (out, n) = graph.output;
        let bytes = c.get_tensor(&out, n, 0, n).await.map_err(|e| self.err(e))?;
        self.stat.bytes_received += n;
        Ok(bytes)
    }
}

/// The output head as a pipeline stage: every share at once, their logits
/// put back in vocabulary order.
#[derive(Debug)]
pub struct SplitHead {
    shards: Vec<HeadShard>,
    endpoint: String,
}

impl SplitHead {
    /// A head over `shards`, whose rows must follow each other from 0.
    pub fn new(shards: Vec<HeadShard>) -> Result<Self, ExecError> {
        let mut next = 0;
        for s in &shards {
            if s.rows.start != next {
                return Err(ExecError::Weight(
                    "output".into(),
                    format!(
                        "head shares do not follow each other: rows {}..{} after {next}",
                        s.rows.start, s.rows.end
                    ),
                ));
            }
            next = s.rows.end;
        }
        let endpoint = format!(
            "head:{}",
            shards
                .iter()
                .map(|s| s.endpoint.as_str())
                .collect::<Vec<_>>()
                .join("+")
        );
        Ok(SplitHead { shards, endpoint })
    }

    /// `head:` and the servers of its shares.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The shares.
    pub fn shards(&self) -> &[HeadShard] {
        &self.shards
    }

    /// The step numbers of all shares, summed (seconds: the slowest share's
    /// are not known apart, so the sum of each share's time).
    pub fn stat(&self) -> StageStat {
        let mut s = StageStat {
            server: self.endpoint.clone(),
            ..StageStat::default()
        };
        for h in &self.shards {
            s.steps = s.steps.max(h.stat.steps);
            s.seconds = s.seconds.max(h.stat.seconds);
            s.bytes_sent += h.stat.bytes_sent;
            s.bytes_received += h.stat.bytes_received;
            s.graphs_sent += h.stat.graphs_sent;
            s.allocated_bytes += h.weight_bytes;
        }
        s
    }

    /// Logits (F32 `[n_vocab, n_outputs]`, little-endian bytes) for the
    /// normalised hidden states the last stage returned. `deadline` (the
    /// deadline and the slowest recent step it came from) applies to each
    /// share on its own, so a hung server is the one named.
    pub async fn run(
        &mut self,
        step: &Step,
        normed: &[u8],
        deadline: Option<(std::time::Duration, std::time::Duration)>,
    ) -> Result<Vec<u8>, ExecError> {
        let n = step.n_outputs;
        let parts = futures_util::future::try_join_all(self.shards.iter_mut().map(|s| async {
            let endpoint = s.endpoint.clone();
            match deadline {
                None => s.run(normed, n).await,
                Some((after, typical)) => tokio::time::timeout(after, s.run(normed, n))
                    .await
                    .unwrap_or(Err(ExecError::Deadline {
                        endpoint,
                        after,
                        typical,
                    })),
            }
        }))
        .await?;
        let total: usize = parts.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(total);
        for o in 0..n {
            for p in &parts {
                let per = p.len() / n.max(1);
                out.extend_from_slice(&p[o * per..(o + 1) * per]);
            }
        }
        Ok(out)
    }
}
