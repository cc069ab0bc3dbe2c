//! The attention mask of windowed layers (Gemma 3's sliding window), built
//! inside the stage's graph so that the coordinator sends one mask for all
//! layers: each stage keeps the position of every KV cell it has written
//! (`cell_pos`, F32 `[1, kv_size]`, next to its KV cache), and a windowed
//! layer additionally masks the cells `window` or more positions behind the
//! query token, as llama.cpp's standard sliding window does
//! (`is_masked_swa`).

use ggml_sys::ty::{F16, F32};
use ggml_sys::{Context, GgmlError, Graph, Tensor};

use super::llama::StageInputs;

/// Name of a stage's cell-position tensor, looked up with its weights.
pub const CELL_POS: &str = "cache_cell_pos";

/// Records this batch's positions in `cell_pos` and returns the mask of
/// windowed layers: `inp.mask`, plus -inf wherever the query's position is
/// `window` or more past the cell's.
pub(crate) fn windowed_mask<'c>(
    ctx: &'c Context,
    graph: &mut Graph<'c>,
    window: u32,
    cell_pos: Tensor<'c>,
    inp: &StageInputs<'c>,
) -> Result<Tensor<'c>, GgmlError> {
    let n_kv = inp.mask.ne()[0];
    let n_tokens = inp.pos.ne()[0];
    let pos = ctx.cast(inp.pos, F32)?;
    let pos = ctx.reshape_2d(pos, 1, n_tokens)?;
    // Written before the mask reads it: the batch's own cells count too.
    let store = ctx
        .set_rows(cell_pos, pos, inp.kv_idx)?
        .set_name("cell_pos_store");
    graph.build_forward(store)?;

    let cells = ctx.view(cell_pos, &[n_kv, 1], &[4 * n_kv as usize], 0)?;
    let minus_cells = ctx.scale(cells, -1.0)?;
    let mask = ctx.cast(inp.mask, F32)?;
    let query = ctx.repeat(pos, mask)?;
    let behind = ctx.add(query, minus_cells)?;
    // Positions are whole numbers: `behind >= window` is `behind - window + 0.5 > 0`.
    let outside = ctx.step(ctx.scale_bias(behind, 1.0, 0.5 - window as f32)?)?;
    // -f32::MAX becomes -inf in F16, and adds to 0 or -inf without a NaN.
    let block = ctx.scale(outside, -f32::MAX)?;
    let windowed = ctx.add(mask, block)?;
    Ok(ctx.cast(windowed, F16)?.set_name("inp_mask_swa"))
}
