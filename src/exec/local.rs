//! A stage on the coordinator's own CPU (`--local-layers`): weights copied
//! from the model into CPU memory, the KV cache next to them, graphs computed
//! by ggml's CPU backend.

use std::collections::HashMap;
use std::ops::Range;

use ggml_sys::{ty, Context, CpuBackend, CpuGraphAllocator, Graph, KeptGraph, Tensor};

use super::{ExecError, Step};
use crate::gguf::Gguf;
use crate::graph::llama::{build_stage, Head, StageInputs, StageTensors};
pub(crate) use crate::graph::window::CELL_POS;
use crate::model::{LlamaConfig, OUTPUT, OUTPUT_NORM, TOKEN_EMBD};

/// Graph size for one step: generous for the ~30 nodes a dense layer takes
/// and the ~50 of a layer routing over 8 experts.
pub(crate) fn graph_size(n_layers: usize) -> usize {
    128 * n_layers + 256
}

/// Weight names a stage holds: its layers' weights, the RoPE factors, and the
/// output weights when it makes the logits.
pub(crate) fn stage_weight_names(
    cfg: &LlamaConfig,
    layers: &Range<u32>,
    head: impl Into<Head>,
) -> Vec<String> {
    let mut names: Vec<String> = layers
        .clone()
        .flat_map(|il| cfg.layer_weight_names(il))
        .collect();
    if cfg.rope_freqs {
        names.push(cfg.rope_freqs_name.into());
    }
    let head = head.into();
    if head != Head::None {
        names.push(OUTPUT_NORM.into());
    }
    if head == Head::Full {
        names.push(if cfg.tied_output { TOKEN_EMBD } else { OUTPUT }.into());
    }
    names
}

pub(crate) fn k_cache_name(il: u32) -> String {
    format!("cache_k_l{il}")
}

pub(crate) fn v_cache_name(il: u32) -> String {
    format!("cache_v_l{il}")
}

/// Looks up the stage's tensors by name in `by_name` and arranges them for the
/// graph builder.
pub(crate) fn stage_tensors<'c>(
    cfg: &LlamaConfig,
    layers: &Range<u32>,
    head: impl Into<Head>,
    by_name: &HashMap<String, Tensor<'c>>,
) -> Result<StageTensors<'c>, ExecError> {
    let get = |n: &str| {
        by_name
            .get(n)
            .copied()
            .ok_or_else(|| ExecError::Weight(n.to_string(), "not loaded on this stage".into()))
    };
    let cache = |il: u32, v: bool| {
        get(&if v {
            v_cache_name(il)
        } else {
            k_cache_name(il)
        })
    };
    StageTensors::gather(cfg, layers.clone(), head, get, cache)
}

/// Layers computed on the coordinator.
#[derive(Debug)]
pub struct LocalStage {
    layers: Range<u32>,
    head: bool,
    weights: Context,
    backend: CpuBackend,
    /// The compute buffer, reused by every step.
    compute: CpuGraphAllocator,
    /// Graphs by step shape (tokens, cells, outputs), run again as they are.
    built: HashMap<(i64, i64, i64), KeptGraph>,
    graphs_built: u64,
    stat: super::StageStat,
}

impl LocalStage {
    /// Copies the stage's weights into CPU memory and makes a zeroed KV cache
    /// of `kv_size` cells per layer.
    pub fn new(
        g: &Gguf,
        cfg: &LlamaConfig,
        layers: Range<u32>,
        head: bool,
        kv_size: u32,
        threads: usize,
    ) -> Result<Self, ExecError> {
        let names = stage_weight_names(cfg, &layers, head);
        let n_tensors = names.len() + 2 * layers.len() + 1;
        let ctx = Context::new(Context::tensor_overhead() * (n_tensors + 1), true)?;
        let mut data = Vec::new();
        for name in &names {
            let info = g
                .tensor(name)
                .ok_or_else(|| ExecError::Weight(name.clone(), "missing".into()))?;
            let ne: Vec<i64> = info.dims().iter().map(|&d| d as i64).collect();
            let t = ctx.new_tensor(info.ty().id(), &ne)?.set_name(name);
            data.push((t, g.tensor_data(info)));
        }
        let n_embd_kv = cfg.n_embd_kv() as i64;
        for il in layers.clone() {
            ctx.new_tensor(ty::F16, &[n_embd_kv, i64::from(kv_size), 1])?
                .set_name(&k_cache_name(il));
            ctx.new_tensor(ty::F16, &[n_embd_kv, i64::from(kv_size), 1])?
                .set_name(&v_cache_name(il));
        }
        if cfg.swa.is_some() {
            ctx.new_tensor(ty::F32, &[1, i64::from(kv_size)])?
                .set_name(CELL_POS);
        }
        let backend = CpuBackend::new(threads)?;
        backend.alloc_context(&ctx)?;
        // A zeroed cache: attention multiplies masked cells by 0, and 0 × NaN
        // from stale memory would not be 0.
        ctx.clear_buffers(0);
        for (t, bytes) in data {
            t.write_bytes(0, bytes)?;
        }
        Ok(LocalStage {
            layers,
            head,
            weights: ctx,
            backend,
            compute: CpuGraphAllocator::new()?,
            built: HashMap::new(),
            graphs_built: 0,
            stat: super::StageStat {
                server: "local".into(),
                ..Default::default()
            },
        })
    }

    /// Cumulative step numbers.
    pub fn stat(&self) -> super::StageStat {
        self.stat.clone()
    }

    /// Copies KV cells (and their positions, with windowed layers) within
    /// the stage's cache: each cell is one row of every cache tensor.
    pub fn copy_cells(&self, copy: &super::CellCopy) -> Result<(), ExecError> {
        let mut row = Vec::new();
        for t in self.weights.tensors() {
            let name = t.name();
            let cache = self
                .layers
                .clone()
                .any(|il| name == k_cache_name(il) || name == v_cache_name(il))
                || name == CELL_POS;
            if !cache {
                continue;
            }
            let (src, dst, len) = copy.bytes(t.nb()[1]);
            row.resize(len, 0);
            t.read_bytes(src, &mut row)?;
            t.write_bytes(dst, &row)?;
        }
        Ok(())
    }

    /// Runs the stage on `hidden` (F32 `[n_embd, n_tokens]`, little-endian
    /// bytes); returns its output in the same form.
    pub fn run(
        &mut self,
        cfg: &LlamaConfig,
        step: &Step,
        hidden: &[u8],
    ) -> Result<Vec<u8>, ExecError> {
        let started = std::time::Instant::now();
        let out = self.run_inner(cfg, step, hidden);
        self.stat.steps += 1;
        self.stat.seconds += started.elapsed().as_secs_f64();
        out
    }

    /// Allocates the compute buffer for the largest step, `n_batch` tokens
    /// over the whole cache with up to `n_outputs` output rows, as the plan
    /// measured it; returns its size. Steps then reuse it.
    pub fn reserve_compute(
        &mut self,
        cfg: &LlamaConfig,
        n_batch: u32,
        n_outputs: u32,
    ) -> Result<u64, ExecError> {
        let kv_size = self
            .weights
            .tensors()
            .iter()
            .find(|t| t.name() == k_cache_name(self.layers.start))
            .map_or(1, |t| t.ne()[1]);
        let n_tokens = i64::from(n_batch.max(1)).min(kv_size);
        let n_out = i64::from(n_outputs.max(1)).min(n_tokens);
        let ctx = self.step_context()?;
        let (graph, _, _) = Self::build(
            &self.weights,
            &self.layers,
            self.head,
            &ctx,
            cfg,
            n_tokens,
            kv_size,
            n_out,
        )?;
        let size = self.compute.reserve(&graph)?;
        self.stat.allocated_bytes = self.weights.buffer_bytes() + size;
        Ok(size)
    }

    fn step_context(&self) -> Result<Context, ExecError> {
        Ok(Context::new(self.step_context_bytes(), true)?)
    }

    fn step_context_bytes(&self) -> usize {
        let gsize = graph_size(self.layers.len());
        Context::tensor_overhead() * gsize + Context::graph_overhead(gsize)
    }

    /// The stage's graph for a step of `n_tokens` over `n_kv` cells with
    /// `n_out` output rows (used only when the stage has the last layer).
    /// (An associated function: the graph borrows the weights, not the
    /// whole stage, whose backend and buffer the step then uses mutably.)
    #[allow(clippy::too_many_arguments)]
    fn build<'c>(
        weights: &'c Context,
        layers: &Range<u32>,
        head: bool,
        ctx: &'c Context,
        cfg: &LlamaConfig,
        n_tokens: i64,
        n_kv: i64,
        n_out: i64,
    ) -> Result<(Graph<'c>, StageInputs<'c>, Tensor<'c>), ExecError> {
        let by_name: HashMap<String, Tensor<'_>> = weights
            .tensors()
            .into_iter()
            .map(|t| (t.name(), t))
            .collect();
        let st = stage_tensors(cfg, layers, head, &by_name)?;
        let n_out = if layers.contains(&(cfg.hp.n_layer - 1)) {
            n_out
        } else {
            0
        };
        let inp = StageInputs::new(ctx, i64::from(cfg.hp.n_embd), n_tokens, n_kv, n_out)?;
        let mut graph = ctx.new_graph(graph_size(layers.len()))?;
        let out = build_stage(ctx, &mut graph, cfg, &st, &inp)?;
        Ok((graph, inp, out))
    }

    /// The kept graph for `key` (tokens, cells, outputs), built the first
    /// time that shape is seen.
    fn kept(&mut self, cfg: &LlamaConfig, key: (i64, i64, i64)) -> Result<&KeptGraph, ExecError> {
        if !self.built.contains_key(&key) {
            if self.built.len() >= MAX_KEPT_GRAPHS {
                self.built.clear();
            }
            let (layers, head) = (self.layers.clone(), self.head);
            let kept =
                KeptGraph::build(self.step_context_bytes(), &self.weights, |ctx, weights| {
                    let (graph, inp, out) =
                        Self::build(weights, &layers, head, ctx, cfg, key.0, key.1, key.2)?;
                    // Handles in the order `run_inner` reads them.
                    let mut handles = vec![out, inp.hidden, inp.pos, inp.kv_idx, inp.mask];
                    handles.extend(inp.out_ids);
                    Ok::<_, ExecError>((graph, handles))
                })?;
            self.graphs_built += 1;
            self.stat.graphs_sent = self.graphs_built;
            self.built.insert(key, kept);
        }
        Ok(&self.built[&key])
    }

    /// Graphs built so far (one per step shape, until the cache of
    /// eight is full).
    pub fn graphs_built(&self) -> u64 {
        self.graphs_built
    }

    fn run_inner(
        &mut self,
        cfg: &LlamaConfig,
        step: &Step,
        hidden: &[u8],
    ) -> Result<Vec<u8>, ExecError> {
        let key = (
            step.n_tokens as i64,
            step.n_kv as i64,
            step.n_outputs as i64,
        );
        self.kept(cfg, key)?;
        let kept = &self.built[&key];
        // Intermediates go to the reused compute buffer, and come back out
        // of it before the step ends.
        let (backend, compute) = (&mut self.backend, &mut self.compute);
        let result = kept.with(&self.weights, |graph, t| {
            compute.with_graph(graph, || {
                let (out, inputs) = (t[0], &t[1..]);
                inputs[0].write_bytes(0, hidden)?;
                inputs[1].write_bytes(0, &step.pos)?;
                inputs[2].write_bytes(0, &step.kv_idx)?;
                inputs[3].write_bytes(0, &step.mask)?;
                if let Some(ids) = inputs.get(4) {
                    ids.write_bytes(0, &step.out_ids)?;
                }
                backend.compute(graph)?;
                let mut bytes = vec![0u8; out.nbytes()];
                out.read_bytes(0, &mut bytes)?;
                Ok(bytes)
            })
        })??;
        // The buffer grows should a step need more than was reserved.
        self.stat.allocated_bytes = self.weights.buffer_bytes() + self.compute.buffer_size();
        Ok(result)
    }
}

/// Step shapes whose graphs a local stage keeps.
const MAX_KEPT_GRAPHS: usize = 8;
