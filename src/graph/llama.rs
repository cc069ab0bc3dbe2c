//! The forward graph, one pipeline stage at a time: the stage's tensors and
//! inputs, its layers (built by [`super::layer`] from the family's
//! description) and the output head.
//!
//! A stage runs a contiguous range of layers. It takes the hidden state of
//! its batch (`[n_embd, n_tokens]`, F32) and returns either the hidden state
//! for the next stage or, on the stage holding the last layer and the output
//! weights, the logits of the batch's output tokens. Each layer writes its K
//! and V into the KV cache of the stage (cells chosen by the coordinator) and
//! attends over the whole cache through a mask.

use ggml_sys::{Context, GgmlError, Graph, Tensor};

use super::layer::build_layer;
use crate::model::{LayerRole, LlamaConfig};

use ggml_sys::ty::F16;

/// One layer's weights and KV cache as tensors of the stage's graph.
#[derive(Debug, Clone, Copy)]
pub struct LayerTensors<'c> {
    /// Layer index in the model.
    pub il: u32,
    /// The layer's weights by role ([`LayerRole::index`]); `None` for the
    /// roles its family does not have.
    pub weights: [Option<Tensor<'c>>; LayerRole::COUNT],
    /// K cache, F16 `[n_embd_kv, kv_size, 1]`.
    pub k_cache: Tensor<'c>,
    /// V cache, F16 `[n_embd_kv, kv_size, 1]` (not transposed).
    pub v_cache: Tensor<'c>,
}

impl<'c> LayerTensors<'c> {
    /// The weight of role `r`, if the layer has one.
    pub fn get(&self, r: LayerRole) -> Option<Tensor<'c>> {
        self.weights[r.index()]
    }

    /// The weight of role `r`, which the family's graph needs.
    pub fn need(&self, r: LayerRole) -> Result<Tensor<'c>, GgmlError> {
        self.get(r).ok_or_else(|| GgmlError::IncompatibleOperands {
            op: "build_stage",
            detail: format!("layer {} has no {}", self.il, r.suffix()),
        })
    }
}

/// The final norm and output matrix, on the stage that produces logits.
#[derive(Debug, Clone, Copy)]
pub struct HeadTensors<'c> {
    /// `[n_embd]`.
    pub output_norm: Tensor<'c>,
    /// `[n_embd, n_vocab]` (the token embedding when tied); `None` when the
    /// output matrix is split over several devices ([`Head::Norm`]) and the
    /// stage returns the normalised hidden state instead of logits.
    pub output: Option<Tensor<'c>>,
}

pub use crate::plan::Head;

/// Per-step inputs of a stage.
#[derive(Debug, Clone, Copy)]
pub struct StageInputs<'c> {
    /// Hidden state in, F32 `[n_embd, n_tokens]`.
    pub hidden: Tensor<'c>,
    /// Positions, I32 `[n_tokens]`.
    pub pos: Tensor<'c>,
    /// KV cell of each token, I64 `[n_tokens]`.
    pub kv_idx: Tensor<'c>,
    /// Attention mask, F16 `[n_kv, n_tokens]` (0 or -inf): attention looks
    /// at the first `n_kv` cells of the cache.
    pub mask: Tensor<'c>,
    /// Rows (tokens) whose output is wanted, I32 `[n_outputs]`; used in the
    /// model's last layer.
    pub out_ids: Option<Tensor<'c>>,
}

impl<'c> StageInputs<'c> {
    /// New input tensors in `ctx` for a batch of `n_tokens` tokens of width
    /// `n_embd`, attending over `n_kv` cells, with `n_outputs` output rows
    /// (0: the stage does not hold the model's last layer).
    pub fn new(
        ctx: &'c Context,
        n_embd: i64,
        n_tokens: i64,
        n_kv: i64,
        n_outputs: i64,
    ) -> Result<Self, GgmlError> {
        let input = |ty: u32, ne: &[i64], name: &str| -> Result<Tensor<'c>, GgmlError> {
            Ok(ctx.new_tensor(ty, ne)?.set_name(name).set_input())
        };
        Ok(StageInputs {
            hidden: input(ggml_sys::ty::F32, &[n_embd, n_tokens], "inp_hidden")?,
            pos: input(ggml_sys::ty::I32, &[n_tokens], "inp_pos")?,
            kv_idx: input(ggml_sys::ty::I64, &[n_tokens], "inp_kv_idx")?,
            mask: input(F16, &[n_kv, n_tokens], "inp_mask")?,
            out_ids: if n_outputs > 0 {
                Some(input(ggml_sys::ty::I32, &[n_outputs], "inp_out_ids")?)
            } else {
                None
            },
        })
    }
}

/// What a stage computes.
#[derive(Debug)]
pub struct StageTensors<'c> {
    /// Its layers, in order.
    pub layers: Vec<LayerTensors<'c>>,
    /// Output weights when this stage makes the logits.
    pub head: Option<HeadTensors<'c>>,
    /// RoPE frequency factors, when the model has them.
    pub rope_freqs: Option<Tensor<'c>>,
    /// Position of each KV cell, F32 `[1, kv_size]`, when the model has
    /// windowed layers ([`super::window`]).
    pub cell_pos: Option<Tensor<'c>>,
}

impl<'c> StageTensors<'c> {
    /// A stage's tensors for layers `layers` (plus the output weights when
    /// `head`, and the RoPE factors when the model has them), each weight
    /// found by its GGUF name with `weight` and each layer's K and V cache by
    /// `cache(layer, is_v)`; with windowed layers, the cell positions too,
    /// by [`super::window::CELL_POS`] with `weight`.
    pub fn gather<E>(
        cfg: &LlamaConfig,
        layers: impl Iterator<Item = u32>,
        head: impl Into<Head>,
        mut weight: impl FnMut(&str) -> Result<Tensor<'c>, E>,
        mut cache: impl FnMut(u32, bool) -> Result<Tensor<'c>, E>,
    ) -> Result<Self, E> {
        use crate::model::{OUTPUT, OUTPUT_NORM, TOKEN_EMBD};
        let mut out = Vec::new();
        for il in layers {
            let mut weights = [None; LayerRole::COUNT];
            for r in cfg.arch.roles() {
                weights[r.index()] = Some(weight(&r.name(il))?);
            }
            out.push(LayerTensors {
                il,
                weights,
                k_cache: cache(il, false)?,
                v_cache: cache(il, true)?,
            });
        }
        let head = match head.into() {
            Head::None => None,
            Head::Norm => Some(HeadTensors {
                output_norm: weight(OUTPUT_NORM)?,
                output: None,
            }),
            Head::Full => Some(HeadTensors {
                output_norm: weight(OUTPUT_NORM)?,
                output: Some(weight(if cfg.tied_output { TOKEN_EMBD } else { OUTPUT })?),
            }),
        };
        let rope_freqs = if cfg.rope_freqs {
            Some(weight(cfg.rope_freqs_name)?)
        } else {
            None
        };
        // Not a weight, but the stage's own state, found by name with them.
        let cell_pos = if cfg.swa.is_some() {
            Some(weight(super::window::CELL_POS)?)
        } else {
            None
        };
        Ok(StageTensors {
            layers: out,
            head,
            rope_freqs,
            cell_pos,
        })
    }

    /// Every weight and cache tensor the stage holds.
    pub fn held(&self) -> Vec<Tensor<'c>> {
        let mut v: Vec<Tensor<'c>> = self
            .layers
            .iter()
            .flat_map(|l| {
                l.weights
                    .iter()
                    .flatten()
                    .copied()
                    .chain([l.k_cache, l.v_cache])
            })
            .collect();
        if let Some(h) = &self.head {
            v.push(h.output_norm);
            v.extend(h.output);
        }
        v.extend(self.rope_freqs);
        v.extend(self.cell_pos);
        v
    }
}

/// Builds the stage's graph into `graph` and returns its result tensor:
/// hidden state `[n_embd, n]` (n = tokens, or outputs after the model's last
/// layer), or logits `[n_vocab, n_outputs]` when the stage has the head
/// (the normalised hidden state `[n_embd, n_outputs]` when it has only the
/// head's norm).
pub fn build_stage<'c>(
    ctx: &'c Context,
    graph: &mut Graph<'c>,
    cfg: &LlamaConfig,
    st: &StageTensors<'c>,
    inp: &StageInputs<'c>,
) -> Result<Tensor<'c>, GgmlError> {
    let hp = &cfg.hp;
    // Windowed layers get their own mask, made once for the stage.
    let windowed = |il: u32| cfg.swa.as_ref().is_some_and(|w| w.is_windowed(il));
    let swa_mask = match (&cfg.swa, st.cell_pos) {
        (Some(w), Some(cell_pos)) if st.layers.iter().any(|l| windowed(l.il)) => Some(
            super::window::windowed_mask(ctx, graph, w.window, cell_pos, inp)?,
        ),
        _ => None,
    };
    let mut inp_l = inp.hidden;
    for l in &st.layers {
        let mask = match swa_mask {
            Some(m) if windowed(l.il) => m,
            _ => inp.mask,
        };
        inp_l = build_layer(ctx, graph, cfg, l, st.rope_freqs, inp, mask, inp_l)?;
    }

    let out = match &st.head {
        Some(h) => {
            let cur = ctx.rms_norm(inp_l, hp.rms_eps)?;
            let cur = ctx.mul(cur, h.output_norm)?.set_name("result_norm");
            match h.output {
                Some(w) => ctx.mul_mat(w, cur)?.set_name("result_output"),
                None => cur,
            }
        }
        None => inp_l,
    };
    let out = out.set_output();
    graph.build_forward(out)?;
    Ok(out)
}

/// One device's share of a split output head: logits of its rows of the
/// output matrix (`rows`, `[n_embd, n_rows]`, a contiguous slice of it) for
/// the normalised hidden state `normed` (`[n_embd, n_outputs]`); each
/// logit is the same dot product the whole matrix would give.
pub fn build_head_shard<'c>(
    ctx: &'c Context,
    graph: &mut Graph<'c>,
    rows: Tensor<'c>,
    normed: Tensor<'c>,
) -> Result<Tensor<'c>, GgmlError> {
    let out = ctx
        .mul_mat(rows, normed)?
        .set_name("result_output")
        .set_output();
    graph.build_forward(out)?;
    Ok(out)
}
