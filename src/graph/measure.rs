//! The compute buffer a stage needs, measured on the graph that will run:
//! the stage's real graph built on a no-alloc ggml context from the file's
//! header alone (weights of the right types and shapes, no data), then
//! sized by ggml's own graph allocator and by our [`layout_nodes`], which
//! places the intermediates at run time.

use std::collections::HashSet;

use ggml_sys::{measure_compute, ty, Context, Tensor, TensorId, CPU_BUFFER_ALIGNMENT};

use super::layout::layout_nodes;
use super::llama::{build_stage, StageInputs, StageTensors};
use crate::gguf::Gguf;
use crate::model::{LlamaConfig, ModelError};
use crate::plan::{MeasuredCompute, ModelCost, PlanError, PlanOptions, StageCompute};

/// Why a stage's graph could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The model's sizes could not be read.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The model cannot be run (missing weight, bad shape, ...).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// ggml refused to build or measure the graph.
    #[error("measuring the compute graph: {0}")]
    Ggml(#[from] ggml_sys::GgmlError),
    /// Our layout of the graph overflows.
    #[error("the compute buffer of the stage's graph overflows")]
    Overflow,
}

/// Layers in each measured graph: enough for the allocators' placement to
/// repeat from layer to layer.
const MEASURED_LAYERS: u32 = 4;

/// What the model costs at `opts`' context, batch and sequence count, its
/// compute buffers measured on the stage graphs ([`measure_model`]). Reads
/// the file's header only: no weight data is touched.
pub fn measured_cost(g: &Gguf, opts: &PlanOptions) -> Result<ModelCost, MeasureError> {
    let cost = ModelCost::from_gguf(g, opts)?;
    if cost.n_layer() == 0 {
        // No graph to measure: the planner says what is wrong.
        return Ok(cost);
    }
    let cfg = LlamaConfig::from_gguf(g)?;
    let measured = measure_model(g, &cfg, cost.n_ctx, cost.n_batch, cost.n_seq_max)?;
    Ok(cost.with_measured(measured))
}

/// The worst-case step the engine runs, per stage kind: `n_batch` tokens
/// over `n_ctx` KV cells, no output rows on stages without the last layer,
/// and `n_seq_max` output rows (at most `n_batch`) on the one with it: a
/// prompt chunk asks for one output, a decode step one per sequence.
///
/// Measures two graphs of a few layers each: a middle stage (no head) and
/// the last stage (the last layers and the head: the layers before the
/// last run every token through their feed-forward, the last only the
/// output rows). A stage of more layers needs no more, since the
/// allocators reuse one layer's intermediates for the next.
pub fn measure_model(
    g: &Gguf,
    cfg: &LlamaConfig,
    n_ctx: u32,
    n_batch: u32,
    n_seq_max: u32,
) -> Result<MeasuredCompute, MeasureError> {
    let n_batch = n_batch.min(n_ctx).max(1);
    let last = cfg.hp.n_layer.saturating_sub(1);
    let n_outputs = n_seq_max.clamp(1, n_batch);
    // Several layers, not one: the residual stream moves between slots
    // from layer to layer, and a stage of many layers can fragment its
    // buffer a little past what one layer needs. A model of one layer has
    // only the last stage: measure it twice rather than special-case it.
    let span = MEASURED_LAYERS - 1;
    let middle_end = last.saturating_sub(1).min(span);
    let stage = measure_stage(g, cfg, 0..=middle_end, false, n_ctx, n_batch, 0)?;
    let head = measure_stage(
        g,
        cfg,
        last.saturating_sub(span)..=last,
        true,
        n_ctx,
        n_batch,
        n_outputs,
    )?;
    Ok(MeasuredCompute { stage, head })
}

/// One graph of layers `layers` (plus the head when `head`), measured.
fn measure_stage(
    g: &Gguf,
    cfg: &LlamaConfig,
    layers: std::ops::RangeInclusive<u32>,
    head: bool,
    n_ctx: u32,
    n_batch: u32,
    n_outputs: u32,
) -> Result<StageCompute, MeasureError> {
    // The same headroom the runtime gives a stage.
    let gsize = crate::exec::local::graph_size(MEASURED_LAYERS as usize);
    let ctx = Context::new(
        Context::tensor_overhead() * gsize + Context::graph_overhead(gsize),
        true,
    )?;
    let n_embd_kv = cfg.n_embd_kv() as i64;
    let cache = |il: u32, v: bool| -> Result<Tensor<'_>, MeasureError> {
        let name = if v {
            crate::exec::local::v_cache_name(il)
        } else {
            crate::exec::local::k_cache_name(il)
        };
        Ok(ctx
            .new_tensor(ty::F16, &[n_embd_kv, i64::from(n_ctx), 1])?
            .set_name(&name))
    };
    let lookup = |n: &str| -> Result<Tensor<'_>, MeasureError> {
        if n == super::window::CELL_POS {
            return Ok(ctx.new_tensor(ty::F32, &[1, i64::from(n_ctx)])?.set_name(n));
        }
        weight(&ctx, g, n)
    };
    let st = StageTensors::gather(cfg, layers.clone(), head, lookup, cache)?;
    let mut elsewhere = st.held();
    let is_last = *layers.end() + 1 == cfg.hp.n_layer;
    let inp = StageInputs::new(
        &ctx,
        i64::from(cfg.hp.n_embd),
        i64::from(n_batch),
        i64::from(n_ctx),
        if is_last { i64::from(n_outputs) } else { 0 },
    )?;
    // The small inputs and the mask live in the stage's input buffer,
    // counted apart; the hidden state comes first in the compute buffer, as
    // in llama.cpp's, and its room serves later nodes once it is read.
    elsewhere.extend([inp.pos, inp.kv_idx, inp.mask]);
    elsewhere.extend(inp.out_ids);
    let mut graph = ctx.new_graph(gsize)?;
    build_stage(&ctx, &mut graph, cfg, &st, &inp)?;

    let ggml_bytes = measure_compute(&graph, &elsewhere)?;
    let placed: HashSet<TensorId> = elsewhere.iter().map(Tensor::id).collect();
    let layout = layout_nodes(
        &graph,
        CPU_BUFFER_ALIGNMENT,
        |t| placed.contains(&t.id()),
        |t| t.nbytes() as u64,
    )
    .ok_or(MeasureError::Overflow)?;
    Ok(StageCompute {
        ggml_bytes,
        layout_bytes: layout.size,
        tensors: layout.offsets.len() as u64,
    })
}

/// A weight of the file as a tensor without data: its type and shape only.
fn weight<'c>(ctx: &'c Context, g: &Gguf, name: &str) -> Result<Tensor<'c>, MeasureError> {
    let info = g
        .tensor(name)
        .ok_or_else(|| ModelError::MissingWeight(name.to_owned()))?;
    let ne: Vec<i64> = info.dims().iter().map(|&d| d as i64).collect();
    Ok(ctx.new_tensor(info.ty().id(), &ne)?.set_name(name))
}

#[cfg(test)]
mod alignment_tests {
    #[test]
    fn the_planner_measures_at_ggmls_cpu_alignment() {
        assert_eq!(
            crate::plan::cost::MEASURED_ALIGNMENT,
            ggml_sys::CPU_BUFFER_ALIGNMENT
        );
    }
}
