//! A stage on an rpc-server: weights uploaded once, KV cache and inputs in
//! buffers of the server, the stage's graph sent with GRAPH_COMPUTE and rerun
//! with GRAPH_RECOMPUTE while its shape stays the same.

use std::collections::HashMap;
use std::ops::Range;

use ggml_sys::{ty, Context, Tensor, TensorId};
use shardline_protocol::RpcTensor;

use super::local::{
    graph_size, k_cache_name, stage_tensors, stage_weight_names, v_cache_name, CELL_POS,
};
use super::{ExecError, Step};
use crate::gguf::Gguf;
use crate::graph::llama::{build_stage, Head, StageInputs};
use crate::graph::{layout_nodes, to_wire, RemoteLocation};
use crate::load::{upload_weights, PlacedWeight, TensorHashes, UploadError, UploadStats};
use crate::model::LlamaConfig;
use crate::plan::{DeviceKind, InputLayout};
use crate::rpc::{RemoteBuffer, RpcClient, RpcError};

/// One connection to a server, shared by the stages on its devices (a server
/// serves one connection at a time).
pub type SharedClient = std::sync::Arc<tokio::sync::Mutex<RpcClient>>;

/// Shape of the step a stored graph was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GraphKey {
    n_tokens: usize,
    n_outputs: usize,
    n_kv: usize,
}

/// The graph the server holds for GRAPH_RECOMPUTE, with the wire form of
/// its inputs and output.
#[derive(Debug, Clone)]
struct StoredGraph {
    key: GraphKey,
    inputs: Vec<(Input, RpcTensor, u64)>,
    output: (RpcTensor, u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Hidden,
    Pos,
    KvIdx,
    Mask,
    OutIds,
}

/// Offset of input `i` inside the input buffer; `None` for the hidden
/// state, which the graph's layout places in the compute buffer.
fn input_offset(layout: &InputLayout, i: Input) -> Option<u64> {
    Some(match i {
        Input::Hidden => return None,
        Input::Pos => layout.pos,
        Input::KvIdx => layout.kv_idx,
        Input::Mask => layout.mask,
        Input::OutIds => layout.out_ids,
    })
}

/// Layers computed on one device of one server.
#[derive(Debug)]
pub struct RemoteStage {
    client: SharedClient,
    endpoint: String,
    device: u32,
    layers: Range<u32>,
    head: Head,
    alignment: u64,
    kind: DeviceKind,
    n_batch: u32,
    kv_size: u32,
    weights: HashMap<String, PlacedWeight>,
    kv_buf: RemoteBuffer,
    input_buf: RemoteBuffer,
    inputs: InputLayout,
    compute_buf: Option<RemoteBuffer>,
    stored: Option<StoredGraph>,
    /// A spare graph slot on this server (`plan::slots`: a second CPU
    /// device over the same memory) for prompt chunks, and what it holds:
    /// decode steps then keep their graph stored while prompts are read.
    spare: Option<(u32, Option<StoredGraph>)>,
    /// Graphs already built for this compute buffer, by shape: switching
    /// between a prompt chunk and a decode step sends the graph again (a
    /// server stores one per device) but does not build it again.
    built: HashMap<GraphKey, BuiltGraph>,
    upload: UploadStats,
    stat: super::StageStat,
    /// Tags the graphs this stage sends ([`RpcClient::stored_graph_is`]).
    owner: u64,
}

/// A tag no other graph sender of this process uses.
pub(crate) fn new_graph_owner() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl RemoteStage {
    /// Uploads the stage's weights, and allocates its KV cache (zeroed) and
    /// input buffer on `device` of the server behind `client`.
    #[allow(clippy::too_many_arguments)]
    pub async fn load(
        shared: SharedClient,
        device: u32,
        g: &Gguf,
        cfg: &LlamaConfig,
        layers: Range<u32>,
        head: impl Into<Head>,
        kv_size: u32,
        n_batch: u32,
        hashes: &TensorHashes,
        progress: &(dyn Fn(u64, crate::rpc::Upload) + Send + Sync),
    ) -> Result<Self, UploadError> {
        let mut guard = shared.lock().await;
        let client = &mut *guard;
        let endpoint = client.addr().to_string();
        let rpc = |source| UploadError::Rpc {
            endpoint: endpoint.clone(),
            source,
        };
        let head = head.into();
        let names = stage_weight_names(cfg, &layers, head);
        let (weights, upload) = upload_weights(client, device, g, &names, hashes, progress).await?;
        // A server that reports 0 means no constraint (and must not divide by 0).
        let alignment = client.alignment(device).await.map_err(rpc)?.max(1);
        // The protocol names no device; its kind decides which graphs it takes.
        let kind = DeviceKind::infer(alignment, client.max_size(device).await.map_err(rpc)?);
        let kv_tensor = 2 * cfg.n_embd_kv() * u64::from(kv_size);
        let kv_stride = kv_tensor.div_ceil(alignment) * alignment;
        // With windowed layers, the cells' positions follow the caches.
        let pos_bytes = if cfg.swa.is_some() {
            4 * u64::from(kv_size)
        } else {
            0
        };
        let kv_buf = client
            .alloc_buffer(
                device,
                (2 * kv_stride * layers.len() as u64 + pos_bytes).max(1),
            )
            .await
            .map_err(rpc)?;
        // A zeroed cache: attention multiplies masked cells by 0.
        client
            .buffer_clear(kv_buf.remote_ptr, 0)
            .await
            .map_err(rpc)?;
        let inputs = InputLayout::new(u64::from(kv_size), u64::from(n_batch), alignment);
        let input_buf = client
            .alloc_buffer(device, inputs.size)
            .await
            .map_err(rpc)?;
        client.sync().await.map_err(rpc)?;
        let allocated_bytes = client.allocated_bytes(device);
        drop(guard);
        Ok(RemoteStage {
            client: shared,
            endpoint: endpoint.clone(),
            device,
            layers,
            head,
            alignment,
            kind,
            n_batch,
            kv_size,
            weights,
            kv_buf,
            input_buf,
            inputs,
            compute_buf: None,
            stored: None,
            spare: None,
            built: HashMap::new(),
            upload,
            stat: super::StageStat {
                server: endpoint.clone(),
                allocated_bytes,
                ..Default::default()
            },
            owner: new_graph_owner(),
        })
    }

    /// Allocates the compute buffer once, at the size the plan counted for
    /// this stage (`plan::Stage::compute_bytes`, which includes the input
    /// buffer already allocated), as llama.cpp reserves its worst case at
    /// load: the plan's figure is then what the server holds. Should a
    /// step's layout ever need more, the step still gets a larger buffer
    /// (a graph outside its buffer would abort the server).
    pub async fn reserve_compute(&mut self, planned: u64) -> Result<(), ExecError> {
        let size = planned.saturating_sub(self.inputs.size);
        if size == 0 || self.compute_buf.is_some_and(|b| b.size >= size) {
            return Ok(());
        }
        let shared = self.client.clone();
        let mut c = shared.lock().await;
        self.replace_compute(&mut c, size).await
    }

    /// Frees the compute buffer and allocates one of `size` bytes. Graphs
    /// built so far are placed in the old one, so they are dropped too.
    async fn replace_compute(&mut self, c: &mut RpcClient, size: u64) -> Result<(), ExecError> {
        self.built.clear();
        if let Some(old) = self.compute_buf.take() {
            c.free_buffer(old.remote_ptr)
                .await
                .map_err(|e| self.err(e))?;
        }
        let buf = c
            .alloc_buffer(self.device, size)
            .await
            .map_err(|e| self.err(e))?;
        self.compute_buf = Some(buf);
        self.stat.allocated_bytes = c.allocated_bytes(self.device);
        Ok(())
    }

    /// The server's address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The layers it runs.
    pub fn layers(&self) -> Range<u32> {
        self.layers.clone()
    }

    /// The connection the stage uses.
    pub fn client(&self) -> SharedClient {
        self.client.clone()
    }

    /// A cheap round trip to the server within `within`.
    pub async fn probe(&mut self, within: std::time::Duration) -> Result<(), ExecError> {
        probe(&self.endpoint, &self.client, within).await
    }

    /// Cumulative step numbers.
    pub fn stat(&self) -> super::StageStat {
        self.stat.clone()
    }

    /// What the weight upload sent and what the server's cache answered.
    pub fn upload_stats(&self) -> UploadStats {
        self.upload
    }

    fn kv_location(&self, cfg: &LlamaConfig, il: u32, v: bool) -> RemoteLocation {
        let kv_tensor = 2 * cfg.n_embd_kv() * u64::from(self.kv_size);
        let stride = kv_tensor.div_ceil(self.alignment) * self.alignment;
        let slot = 2 * u64::from(il - self.layers.start) + u64::from(v);
        RemoteLocation {
            buffer: self.kv_buf.remote_ptr,
            data: self.kv_buf.base + slot * stride,
        }
    }

    /// Where the cell positions of a model with windowed layers live: after
    /// the last layer's V cache.
    fn cell_pos_location(&self, cfg: &LlamaConfig) -> RemoteLocation {
        let kv_tensor = 2 * cfg.n_embd_kv() * u64::from(self.kv_size);
        let stride = kv_tensor.div_ceil(self.alignment) * self.alignment;
        RemoteLocation {
            buffer: self.kv_buf.remote_ptr,
            data: self.kv_buf.base + 2 * stride * self.layers.len() as u64,
        }
    }

    fn err(&self, source: RpcError) -> ExecError {
        ExecError::Rpc {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// Builds the stage's graph for `key` and puts it on the wire, placed in
    /// `compute`; or says how large a compute buffer it needs.
    fn build_wire(
        &self,
        cfg: &LlamaConfig,
        key: GraphKey,
        compute: Option<RemoteBuffer>,
    ) -> Result<Built, ExecError> {
        let gsize = graph_size(self.layers.len());
        let ctx = Context::new(
            Context::tensor_overhead() * gsize + Context::graph_overhead(gsize),
            true,
        )?;
        let mut place: HashMap<TensorId, RemoteLocation> = HashMap::new();
        let mut by_name: HashMap<String, Tensor<'_>> = HashMap::new();
        for (name, w) in &self.weights {
            let ne: Vec<i64> = w.wire.ne.iter().map(|&n| i64::from(n)).collect();
            let t = ctx.new_tensor(w.wire.ty, &ne)?.set_name(name);
            place.insert(
                t.id(),
                RemoteLocation {
                    buffer: w.wire.buffer,
                    data: w.wire.data,
                },
            );
            by_name.insert(name.clone(), t);
        }
        let n_embd_kv = cfg.n_embd_kv() as i64;
        for il in self.layers.clone() {
            for (v, name) in [(false, k_cache_name(il)), (true, v_cache_name(il))] {
                let t = ctx
                    .new_tensor(ty::F16, &[n_embd_kv, i64::from(self.kv_size), 1])?
                    .set_name(&name);
                place.insert(t.id(), self.kv_location(cfg, il, v));
                by_name.insert(name, t);
            }
        }
        if cfg.swa.is_some() {
            let t = ctx
                .new_tensor(ty::F32, &[1, i64::from(self.kv_size)])?
                .set_name(CELL_POS);
            place.insert(t.id(), self.cell_pos_location(cfg));
            by_name.insert(CELL_POS.to_owned(), t);
        }
        let st = stage_tensors(cfg, &self.layers, self.head, &by_name)?;
        let n = key.n_tokens as i64;
        let mut input = |what: Input, t: Tensor<'_>| {
            if let Some(offset) = input_offset(&self.inputs, what) {
                place.insert(
                    t.id(),
                    RemoteLocation {
                        buffer: self.input_buf.remote_ptr,
                        data: self.input_buf.base + offset,
                    },
                );
            }
        };
        let inp = StageInputs::new(
            &ctx,
            i64::from(cfg.hp.n_embd),
            n,
            key.n_kv as i64,
            key.n_outputs as i64,
        )?;
        let mut inputs = vec![
            (Input::Hidden, inp.hidden),
            (Input::Pos, inp.pos),
            (Input::KvIdx, inp.kv_idx),
            (Input::Mask, inp.mask),
        ];
        if let Some(ids) = inp.out_ids {
            inputs.push((Input::OutIds, ids));
        }
        for &(what, t) in &inputs {
            input(what, t);
        }
        let mut graph = ctx.new_graph(gsize)?;
        let out = build_stage(&ctx, &mut graph, cfg, &st, &inp)?;

        super::check_device_supports(&graph, self.kind, self.endpoint(), self.device)?;

        let layout = layout_nodes(
            &graph,
            self.alignment,
            |t| place.contains_key(&t.id()),
            |t| t.nbytes() as u64,
        )
        .ok_or_else(|| ExecError::Memory {
            endpoint: self.endpoint().to_string(),
            detail: "compute buffer size overflows".into(),
        })?;
        let compute = match compute {
            Some(c) if c.size >= layout.size => c,
            _ => return Ok(Built::NeedCompute(layout.size)),
        };
        for (id, off) in &layout.offsets {
            place.insert(
                *id,
                RemoteLocation {
                    buffer: compute.remote_ptr,
                    data: compute.base + off,
                },
            );
        }
        let wire = to_wire(&graph, self.device, |t: &Tensor<'_>| {
            place.get(&t.id()).copied()
        })?;
        let find = |t: Tensor<'_>| -> (RpcTensor, u64) {
            let i = wire.index[&t.id()];
            (wire.msg.tensors[i], wire.nbytes[i])
        };
        let stored = StoredGraph {
            key,
            inputs: inputs
                .iter()
                .map(|&(what, t)| {
                    let (w, n) = find(t);
                    (what, w, n)
                })
                .collect(),
            output: find(out),
        };
        Ok(Built::Ready(std::sync::Arc::new((
            stored,
            wire.msg,
            wire.nbytes,
        ))))
    }

    /// Builds the graph for `key`, first growing the compute buffer when
    /// it needs more (which makes every graph built before it stale).
    async fn build_graph(
        &mut self,
        c: &mut RpcClient,
        cfg: &LlamaConfig,
        key: GraphKey,
    ) -> Result<BuiltGraph, ExecError> {
        let mut built = self.build_wire(cfg, key, self.compute_buf)?;
        if let Built::NeedCompute(size) = built {
            self.replace_compute(c, size).await?;
            tracing::debug!(endpoint = %self.endpoint, size, "compute buffer allocated for a step");
            built = self.build_wire(cfg, key, self.compute_buf)?;
        }
        match built {
            Built::Ready(ready) => Ok(ready),
            Built::NeedCompute(_) => Err(ExecError::Memory {
                endpoint: self.endpoint().to_string(),
                detail: "compute buffer still too small after reallocation".into(),
            }),
        }
    }

    async fn upload_inputs(
        &mut self,
        c: &mut RpcClient,
        stored: &StoredGraph,
        step: &Step,
        hidden: &[u8],
    ) -> Result<(), ExecError> {
        for (what, wire, n) in &stored.inputs {
            let bytes: &[u8] = match what {
                Input::Hidden => hidden,
                Input::Pos => &step.pos,
                Input::KvIdx => &step.kv_idx,
                Input::Mask => &step.mask,
                Input::OutIds => &step.out_ids,
            };
            if bytes.len() as u64 != *n {
                return Err(ExecError::Memory {
                    endpoint: self.endpoint().to_string(),
                    detail: format!(
                        "input {what:?} has {} bytes, the graph expects {n}",
                        bytes.len()
                    ),
                });
            }
            c.set_tensor(wire, *n, 0, bytes)
                .await
                .map_err(|e| self.err(e))?;
            self.stat.bytes_sent += *n;
        }
        Ok(())
    }

    /// Runs the stage on `hidden` (F32 `[n_embd, n_tokens]`, little-endian
    /// bytes); returns its output in the same form.
    pub async fn run(
        &mut self,
        cfg: &LlamaConfig,
        step: &Step,
        hidden: &[u8],
    ) -> Result<Vec<u8>, ExecError> {
        let started = std::time::Instant::now();
        let out = self.run_inner(cfg, step, hidden).await;
        self.stat.steps += 1;
        self.stat.seconds += started.elapsed().as_secs_f64();
        out
    }

    async fn run_inner(
        &mut self,
        cfg: &LlamaConfig,
        step: &Step,
        hidden: &[u8],
    ) -> Result<Vec<u8>, ExecError> {
        if step.n_tokens > self.n_batch as usize {
            return Err(ExecError::Memory {
                endpoint: self.endpoint().to_string(),
                detail: format!(
                    "batch of {} tokens exceeds the stage's {}",
                    step.n_tokens, self.n_batch
                ),
            });
        }
        // Stages on other devices of this server share the connection.
        let shared = self.client.clone();
        let mut guard = shared.lock().await;
        let c = &mut *guard;
        let has_last = self.layers.contains(&(cfg.hp.n_layer - 1));
        let key = GraphKey {
            n_tokens: step.n_tokens,
            n_outputs: if has_last { step.n_outputs } else { 0 },
            n_kv: step.n_kv,
        };
        // Prompt chunks (not every token an output) go to the spare slot,
        // when there is one, so the decode graph stays stored.
        let prompt = step.n_outputs < step.n_tokens;
        let (device, held) = match &mut self.spare {
            Some((d, held)) if prompt => (*d, held.take()),
            _ => (self.device, self.stored.take()),
        };
        let stored = match held {
            // A FREE_BUFFER on this connection (by any stage) drops the
            // server's stored graphs, and a share of the output head on
            // this device replaces it: then the graph is sent again.
            Some(s) if s.key == key && c.stored_graph_is(device, self.owner) => {
                // Inputs, rerun and the read of the output: one write.
                c.cork();
                self.upload_inputs(c, &s, step, hidden).await?;
                c.graph_recompute(device).await.map_err(|e| self.err(e))?;
                s
            }
            _ => {
                let ready = match self.built.get(&key) {
                    Some(b) => b.clone(),
                    None => {
                        let b = self.build_graph(c, cfg, key).await?;
                        if self.built.len() >= MAX_BUILT_GRAPHS {
                            self.built.clear();
                        }
                        self.built.insert(key, b.clone());
                        b
                    }
                };
                let (stored, msg, nbytes) = (ready.0.clone(), &ready.1, &ready.2);
                c.cork();
                self.upload_inputs(c, &stored, step, hidden).await?;
                c.graph_compute_for(self.owner, device, &msg.nodes, &msg.tensors, nbytes)
                    .await
                    .map_err(|e| self.err(e))?;
                self.stat.graphs_sent += 1;
                self.stat.bytes_sent += (msg.tensors.len() * shardline_protocol::RPC_TENSOR_SIZE
                    + msg.nodes.len() * 8) as u64;
                stored
            }
        };
        let (out, n) = stored.output;
        let bytes = c.get_tensor(&out, n, 0, n).await.map_err(|e| self.err(e));
        self.stat.bytes_received += n;
        match &mut self.spare {
            Some((d, held)) if *d == device => *held = Some(stored),
            _ => self.stored = Some(stored),
        }
        bytes
    }

    /// Runs prompt chunks on `device`, a spare graph slot of this stage's
    /// device (the same memory, its own stored graph; see `plan::slots`).
    /// Only a CPU device can be one (a graph computed there reads the
    /// stage's buffers in place): false, and nothing changed, otherwise.
    pub fn use_spare_slot(&mut self, device: u32) -> bool {
        if self.kind != DeviceKind::Cpu || device == self.device {
            return false;
        }
        self.spare = Some((device, None));
        true
    }
}

impl RemoteStage {
    /// Copies runs of KV cells (and their positions, with windowed layers)
    /// within the stage's cache on the server: one COPY_TENSOR per cache
    /// tensor and run, each a run of whole rows, all in one round trip.
    pub async fn copy_cells(
        &mut self,
        cfg: &LlamaConfig,
        copies: &[super::CellCopy],
    ) -> Result<(), ExecError> {
        let kv_row = 2 * cfg.n_embd_kv() as usize;
        // (where, type, element size, bytes per cell)
        let mut tensors = Vec::new();
        for il in self.layers.clone() {
            for v in [false, true] {
                tensors.push((self.kv_location(cfg, il, v), ty::F16, 2, kv_row));
            }
        }
        if cfg.swa.is_some() {
            tensors.push((self.cell_pos_location(cfg), ty::F32, 4, 4));
        }
        let mut items = Vec::with_capacity(tensors.len() * copies.len());
        for copy in copies {
            for &(at, ty, size, row) in &tensors {
                let (src, dst, len) = copy.bytes(row);
                let (Ok(elems), Ok(all)) = (u32::try_from(len / size), u32::try_from(len)) else {
                    return Err(ExecError::Memory {
                        endpoint: self.endpoint.clone(),
                        detail: format!(
                            "a copy of {len} bytes of KV cells does not fit one tensor"
                        ),
                    });
                };
                let run = |id: u64, offset: usize| {
                    let mut t = RpcTensor {
                        id,
                        ty,
                        buffer: at.buffer,
                        data: at.data + offset as u64,
                        ..RpcTensor::default()
                    };
                    t.ne = [elems, 1, 1, 1];
                    t.nb = [size as u32, all, all, all];
                    t
                };
                items.push((run(1, src), len as u64, run(2, dst), len as u64));
            }
        }
        let shared = self.client.clone();
        let mut c = shared.lock().await;
        let done = c.copy_tensors(&items).await.map_err(|e| self.err(e))?;
        if done.iter().any(|&d| !d) {
            return Err(ExecError::Memory {
                endpoint: self.endpoint.clone(),
                detail: "the server's backend did not copy KV cells".into(),
            });
        }
        Ok(())
    }
}

/// A cheap round trip to the server behind `client` within `within`.
pub async fn probe(
    endpoint: &str,
    client: &SharedClient,
    within: std::time::Duration,
) -> Result<(), ExecError> {
    let probe = async {
        let mut c = client.lock().await;
        c.sync().await
    };
    match tokio::time::timeout(within, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(ExecError::Rpc {
            endpoint: endpoint.to_string(),
            source,
        }),
        Err(_) => Err(ExecError::Deadline {
            endpoint: endpoint.to_string(),
            after: within,
            typical: std::time::Duration::ZERO,
        }),
    }
}

/// A graph ready to send: what the server will store, the message, and each
/// wire tensor's byte size. Shared, so sending a kept graph again copies
/// nothing but the bytes on the wire.
type BuiltGraph = std::sync::Arc<(StoredGraph, shardline_protocol::GraphCompute, Vec<u64>)>;

/// Built graphs a stage keeps (shapes seen recently).
const MAX_BUILT_GRAPHS: usize = 8;

/// Result of [`RemoteStage::build_wire`].
enum Built {
    Ready(BuiltGraph),
    NeedCompute(u64),
}
