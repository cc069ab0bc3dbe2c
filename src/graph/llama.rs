//! The llama-family forward graph, one pipeline stage at a time.
//!
//! A stage runs a contiguous range of layers. It takes the hidden state of
//! its batch (`[n_embd, n_tokens]`, F32) and returns either the hidden state
//! for the next stage or, on the stage holding the last layer and the output
//! weights, the logits of the batch's output tokens. Each layer writes its K
//! and V into the KV cache of the stage (cells chosen by the coordinator) and
//! attends over the whole cache through a mask.

use ggml_sys::{Context, GgmlError, Graph, Tensor};

use crate::model::LlamaConfig;

use ggml_sys::ty::F16;

/// One layer's weights and KV cache as tensors of the stage's graph.
#[derive(Debug, Clone, Copy)]
pub struct LayerTensors<'c> {
    /// Layer index in the model.
    pub il: u32,
    /// RMSNorm weight before attention, `[n_embd]`.
    pub attn_norm: Tensor<'c>,
    /// `[n_embd, n_head*head_dim]`.
    pub wq: Tensor<'c>,
    /// `[n_embd, n_embd_kv]`.
    pub wk: Tensor<'c>,
    /// `[n_embd, n_embd_kv]`.
    pub wv: Tensor<'c>,
    /// `[n_head*head_dim, n_embd]`.
    pub wo: Tensor<'c>,
    /// RMSNorm weight before the feed-forward, `[n_embd]`.
    pub ffn_norm: Tensor<'c>,
    /// `[n_embd, n_ff]`.
    pub gate: Tensor<'c>,
    /// `[n_embd, n_ff]`.
    pub up: Tensor<'c>,
    /// `[n_ff, n_embd]`.
    pub down: Tensor<'c>,
    /// K cache, F16 `[n_embd_kv, kv_size, 1]`.
    pub k_cache: Tensor<'c>,
    /// V cache, F16 `[n_embd_kv, kv_size, 1]` (not transposed).
    pub v_cache: Tensor<'c>,
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

/// How much of the output head a stage computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// None: the stage returns its last layer's hidden state.
    None,
    /// The final norm only: the output matrix is split over devices
    /// (`build_head_shard` on each), which all need the normalised state.
    Norm,
    /// Norm and output matrix: the stage returns logits.
    Full,
}

impl From<bool> for Head {
    fn from(full: bool) -> Head {
        if full {
            Head::Full
        } else {
            Head::None
        }
    }
}

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
}

impl<'c> StageTensors<'c> {
    /// A stage's tensors for layers `layers` (plus the output weights when
    /// `head`, and the RoPE factors when the model has them), each weight
    /// found by its GGUF name with `weight` and each layer's K and V cache by
    /// `cache(layer, is_v)`.
    pub fn gather<E>(
        cfg: &LlamaConfig,
        layers: impl Iterator<Item = u32>,
        head: impl Into<Head>,
        mut weight: impl FnMut(&str) -> Result<Tensor<'c>, E>,
        mut cache: impl FnMut(u32, bool) -> Result<Tensor<'c>, E>,
    ) -> Result<Self, E> {
        use crate::model::{LayerRole, OUTPUT, OUTPUT_NORM, ROPE_FREQS, TOKEN_EMBD};
        let mut out = Vec::new();
        for il in layers {
            let mut w = |r: LayerRole| weight(&r.name(il));
            out.push(LayerTensors {
                il,
                attn_norm: w(LayerRole::AttnNorm)?,
                wq: w(LayerRole::Q)?,
                wk: w(LayerRole::K)?,
                wv: w(LayerRole::V)?,
                wo: w(LayerRole::Out)?,
                ffn_norm: w(LayerRole::FfnNorm)?,
                gate: w(LayerRole::Gate)?,
                up: w(LayerRole::Up)?,
                down: w(LayerRole::Down)?,
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
            Some(weight(ROPE_FREQS)?)
        } else {
            None
        };
        Ok(StageTensors {
            layers: out,
            head,
            rope_freqs,
        })
    }

    /// Every weight and cache tensor the stage holds.
    pub fn held(&self) -> Vec<Tensor<'c>> {
        let mut v: Vec<Tensor<'c>> = self
            .layers
            .iter()
            .flat_map(|l| {
                [
                    l.attn_norm,
                    l.wq,
                    l.wk,
                    l.wv,
                    l.wo,
                    l.ffn_norm,
                    l.gate,
                    l.up,
                    l.down,
                    l.k_cache,
                    l.v_cache,
                ]
            })
            .collect();
        if let Some(h) = &self.head {
            v.push(h.output_norm);
            v.extend(h.output);
        }
        v.extend(self.rope_freqs);
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
    let n_tokens = inp.hidden.ne()[1];
    let head_dim = i64::from(hp.head_dim);
    let (n_head, n_head_kv) = (i64::from(hp.n_head), i64::from(hp.n_head_kv));
    let n_embd_kv = head_dim * n_head_kv;
    let last_layer = hp.n_layer - 1;

    let mut inp_l = inp.hidden;
    for l in &st.layers {
        let il = l.il;
        let inp_sa = inp_l;
        let cur = ctx
            .rms_norm(inp_l, hp.rms_eps)?
            .set_name(&format!("norm-{il}"));
        let cur = ctx
            .mul(cur, l.attn_norm)?
            .set_name(&format!("attn_norm-{il}"));

        let q = ctx.mul_mat(l.wq, cur)?;
        let q = ctx.reshape_3d(q, head_dim, n_head, n_tokens)?;
        let k = ctx.mul_mat(l.wk, cur)?;
        let k = ctx.reshape_3d(k, head_dim, n_head_kv, n_tokens)?;
        let v = ctx.mul_mat(l.wv, cur)?;
        let v = ctx.reshape_3d(v, head_dim, n_head_kv, n_tokens)?;
        let q = ctx
            .rope_ext(q, inp.pos, st.rope_freqs, cfg.rope)?
            .set_name(&format!("Qcur-{il}"));
        let k = ctx
            .rope_ext(k, inp.pos, st.rope_freqs, cfg.rope)?
            .set_name(&format!("Kcur-{il}"));
        graph.build_forward(q)?;
        graph.build_forward(v)?;
        graph.build_forward(k)?;

        // Store this batch's K and V in the cache before attending to it: the
        // attention reads the cache tensors, not these nodes, so the order of
        // expansion is what makes the writes come first.
        let k_rows = ctx.view(k, &[n_embd_kv, n_tokens], &[k.nb()[2]], 0)?;
        let k_store = ctx
            .set_rows(l.k_cache, k_rows, inp.kv_idx)?
            .set_name(&format!("k_store-{il}"));
        graph.build_forward(k_store)?;
        let v_rows = ctx.view(v, &[n_embd_kv, n_tokens], &[v.nb()[2]], 0)?;
        let v_store = ctx
            .set_rows(l.v_cache, v_rows, inp.kv_idx)?
            .set_name(&format!("v_store-{il}"));
        graph.build_forward(v_store)?;

        let cur = attention(ctx, cfg, q, l.k_cache, l.v_cache, inp.mask)?;
        let cur = ctx.reshape_2d(cur, head_dim * n_head, n_tokens)?;
        graph.build_forward(cur)?;
        let mut cur = ctx.mul_mat(l.wo, cur)?.set_name(&format!("attn_out-{il}"));

        let mut inp_sa = inp_sa;
        if il == last_layer {
            if let Some(ids) = inp.out_ids {
                cur = ctx.get_rows(cur, ids)?;
                inp_sa = ctx.get_rows(inp_sa, ids)?;
            }
        }
        let ffn_inp = ctx.add(cur, inp_sa)?.set_name(&format!("ffn_inp-{il}"));
        let cur = ctx.rms_norm(ffn_inp, hp.rms_eps)?;
        let cur = ctx
            .mul(cur, l.ffn_norm)?
            .set_name(&format!("ffn_norm-{il}"));
        let up = ctx.mul_mat(l.up, cur)?;
        let gate = ctx.mul_mat(l.gate, cur)?;
        let cur = ctx.swiglu_split(gate, up)?;
        let cur = ctx.mul_mat(l.down, cur)?;
        inp_l = ctx.add(cur, ffn_inp)?.set_name(&format!("l_out-{il}"));
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

/// Flash attention of `q` (`[head_dim, n_head, n_tokens]`) over the whole
/// KV cache, F32 accumulation; result `[head_dim, n_head, n_tokens]`.
fn attention<'c>(
    ctx: &'c Context,
    cfg: &LlamaConfig,
    q: Tensor<'c>,
    k_cache: Tensor<'c>,
    v_cache: Tensor<'c>,
    mask: Tensor<'c>,
) -> Result<Tensor<'c>, GgmlError> {
    let hp = &cfg.hp;
    let head_dim = i64::from(hp.head_dim);
    let (n_head, n_head_kv) = (i64::from(hp.n_head), i64::from(hp.n_head_kv));
    let n_tokens = q.ne()[2];
    // Only the first n_kv cells (the mask's width) can hold anything.
    let n_kv = mask.ne()[0];
    let f16_row = |n: i64| 2 * n as usize;

    let qn = q.nb();
    let q = ctx.view(
        q,
        &[head_dim, n_head, n_tokens, 1],
        &[qn[1], qn[2], qn[2] * n_tokens as usize],
        0,
    )?;
    let q = ctx.permute(q, [0, 2, 1, 3])?;
    let kv_nb = [
        f16_row(head_dim),
        f16_row(head_dim * n_head_kv),
        f16_row(head_dim * n_head_kv * k_cache.ne()[1]),
    ];
    debug_assert_eq!(k_cache.ty(), F16);
    let k = ctx.view(k_cache, &[head_dim, n_head_kv, n_kv, 1], &kv_nb, 0)?;
    let k = ctx.permute(k, [0, 2, 1, 3])?;
    let v = ctx.view(v_cache, &[head_dim, n_head_kv, n_kv, 1], &kv_nb, 0)?;
    let v = ctx.permute(v, [0, 2, 1, 3])?;
    ctx.flash_attn_ext(q, k, v, Some(mask), cfg.kq_scale, 0.0, 0.0)
}
