//! One transformer layer, built from the family's description: which
//! tensors the layer has decides the graph (biases are added when present,
//! per-head Q/K norms applied when present, fused projections split by
//! views), and the description's flags decide the rest (RoPE style, where
//! the attention scale goes).

use ggml_sys::ty::F16;
use ggml_sys::{Context, GgmlError, Graph, Tensor};

use super::llama::{LayerTensors, StageInputs};
use crate::arch::Activation;
use crate::model::{LayerRole as R, LlamaConfig};

/// Adds `layer`'s computation on hidden state `inp_l` (`[n_embd, n_tokens]`)
/// to `graph`, writing its K and V into its cache and attending through
/// `mask`, and returns the layer's output (only the output rows after the
/// model's last layer).
#[allow(clippy::too_many_arguments)] // the layer's tensors, inputs and state
pub(crate) fn build_layer<'c>(
    ctx: &'c Context,
    graph: &mut Graph<'c>,
    cfg: &LlamaConfig,
    l: &LayerTensors<'c>,
    rope_freqs: Option<Tensor<'c>>,
    inp: &StageInputs<'c>,
    mask: Tensor<'c>,
    inp_l: Tensor<'c>,
) -> Result<Tensor<'c>, GgmlError> {
    let hp = &cfg.hp;
    let il = l.il;
    let n_tokens = inp_l.ne()[1];
    let head_dim = i64::from(hp.head_dim);
    let (n_head, n_head_kv) = (i64::from(hp.n_head), i64::from(hp.n_head_kv));
    let n_embd_kv = head_dim * n_head_kv;
    // The embedding's scale, applied where the first layer reads it.
    let inp_l = if il == 0 && cfg.arch.embd_scale {
        ctx.scale(inp_l, (hp.n_embd as f32).sqrt())?
    } else {
        inp_l
    };
    let rope = cfg.rope_for(il);

    let cur = ctx
        .rms_norm(inp_l, hp.rms_eps)?
        .set_name(&format!("norm-{il}"));
    let cur = ctx
        .mul(cur, l.need(R::AttnNorm)?)?
        .set_name(&format!("attn_norm-{il}"));

    let (q, k, v) = qkv(ctx, cfg, l, cur)?;
    let q = optional_norm(ctx, cfg, q, l.get(R::QNorm))?;
    let k = optional_norm(ctx, cfg, k, l.get(R::KNorm))?;
    let q = ctx
        .rope_ext(q, inp.pos, rope_freqs, rope)?
        .set_name(&format!("Qcur-{il}"));
    let k = ctx
        .rope_ext(k, inp.pos, rope_freqs, rope)?
        .set_name(&format!("Kcur-{il}"));
    let (q, kq_scale) = if cfg.arch.scale_q {
        (ctx.scale(q, cfg.kq_scale)?, 1.0)
    } else {
        (q, cfg.kq_scale)
    };
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

    let cur = attention(ctx, cfg, q, l.k_cache, l.v_cache, mask, kq_scale)?;
    let cur = ctx.reshape_2d(cur, head_dim * n_head, n_tokens)?;
    graph.build_forward(cur)?;
    let mut cur = ctx
        .mul_mat(l.need(R::Out)?, cur)?
        .set_name(&format!("attn_out-{il}"));

    let mut inp_sa = inp_l;
    if il == hp.n_layer - 1 {
        if let Some(ids) = inp.out_ids {
            cur = ctx.get_rows(cur, ids)?;
            inp_sa = ctx.get_rows(inp_sa, ids)?;
        }
    }
    let cur = optional_norm(ctx, cfg, cur, l.get(R::PostAttnNorm))?;
    let ffn_inp = ctx.add(cur, inp_sa)?.set_name(&format!("ffn_inp-{il}"));
    let cur = ctx.rms_norm(ffn_inp, hp.rms_eps)?;
    let cur = ctx
        .mul(cur, l.need(R::FfnNorm)?)?
        .set_name(&format!("ffn_norm-{il}"));
    let cur = match l.get(R::GateInp) {
        Some(router) => moe_ffn(ctx, graph, cfg, l, router, cur)?,
        None => ffn(ctx, cfg, l, cur)?,
    };
    let cur = optional_norm(ctx, cfg, cur, l.get(R::PostFfnNorm))?;
    Ok(ctx.add(cur, ffn_inp)?.set_name(&format!("l_out-{il}")))
}

/// Q `[head_dim, n_head, n]`, K and V `[head_dim, n_head_kv, n]` of the
/// normed hidden state `cur`: from one fused matrix (as views of its rows)
/// or three, each with its bias when the layer has one.
fn qkv<'c>(
    ctx: &'c Context,
    cfg: &LlamaConfig,
    l: &LayerTensors<'c>,
    cur: Tensor<'c>,
) -> Result<(Tensor<'c>, Tensor<'c>, Tensor<'c>), GgmlError> {
    let hp = &cfg.hp;
    let n_tokens = cur.ne()[1];
    let head_dim = i64::from(hp.head_dim);
    let (n_head, n_head_kv) = (i64::from(hp.n_head), i64::from(hp.n_head_kv));
    if let Some(wqkv) = l.get(R::Qkv) {
        let qkv = ctx.mul_mat(wqkv, cur)?;
        // F32 rows: Q's columns, then K's, then V's.
        let (row, f) = (qkv.nb()[1], std::mem::size_of::<f32>());
        let head = head_dim as usize * f;
        let part = |heads: i64, at: i64| {
            ctx.view(
                qkv,
                &[head_dim, heads, n_tokens],
                &[head, row],
                at as usize * head,
            )
        };
        let q = part(n_head, 0)?;
        let k = part(n_head_kv, n_head)?;
        let v = part(n_head_kv, n_head + n_head_kv)?;
        return Ok((q, k, v));
    }
    let proj = |w: R, b: R, heads: i64| -> Result<Tensor<'c>, GgmlError> {
        let mut x = ctx.mul_mat(l.need(w)?, cur)?;
        if let Some(bias) = l.get(b) {
            x = ctx.add(x, bias)?;
        }
        ctx.reshape_3d(x, head_dim, heads, n_tokens)
    };
    Ok((
        proj(R::Q, R::QBias, n_head)?,
        proj(R::K, R::KBias, n_head_kv)?,
        proj(R::V, R::VBias, n_head_kv)?,
    ))
}

/// RMSNorm of `x` times `w`, when the layer has `w`: per head for Q/K norms
/// (`x` is `[head_dim, heads, n]`, `w` `[head_dim]`), per token for the
/// norms after a sublayer.
fn optional_norm<'c>(
    ctx: &'c Context,
    cfg: &LlamaConfig,
    x: Tensor<'c>,
    w: Option<Tensor<'c>>,
) -> Result<Tensor<'c>, GgmlError> {
    match w {
        Some(w) => ctx.mul(ctx.rms_norm(x, cfg.hp.rms_eps)?, w),
        None => Ok(x),
    }
}

/// The gated feed-forward: `down(act(gate x) * up x)`, from separate gate
/// and up matrices or one fused matrix (gate rows first).
fn ffn<'c>(
    ctx: &'c Context,
    cfg: &LlamaConfig,
    l: &LayerTensors<'c>,
    cur: Tensor<'c>,
) -> Result<Tensor<'c>, GgmlError> {
    let act = match l.get(R::GateUp) {
        Some(w) => {
            let gate_up = ctx.mul_mat(w, cur)?;
            ctx.swiglu(gate_up)?
        }
        None => {
            let up = ctx.mul_mat(l.need(R::Up)?, cur)?;
            let gate = ctx.mul_mat(l.need(R::Gate)?, cur)?;
            match cfg.arch.act {
                Activation::Silu => ctx.swiglu_split(gate, up)?,
                Activation::Gelu => ctx.geglu_split(gate, up)?,
            }
        }
    };
    ctx.mul_mat(l.need(R::Down)?, act)
}

/// The feed-forward of a layer with routed experts: the router's softmax
/// picks the `n_expert_used` most likely experts of each token, their
/// weights are renormalised to sum to 1, and the token's output is the
/// weighted sum of those experts' gated feed-forwards. The expert matrices
/// stay whole on the device; `mul_mat_id` reads only the chosen ones.
fn moe_ffn<'c>(
    ctx: &'c Context,
    graph: &mut Graph<'c>,
    cfg: &LlamaConfig,
    l: &LayerTensors<'c>,
    router: Tensor<'c>,
    cur: Tensor<'c>,
) -> Result<Tensor<'c>, GgmlError> {
    let (n_embd, n_tokens) = (cur.ne()[0], cur.ne()[1]);
    let n_expert = i64::from(cfg.hp.n_expert);
    let k = i64::from(cfg.hp.n_expert_used);
    let il = l.il;

    let logits = ctx.mul_mat(router, cur)?;
    let probs = ctx
        .soft_max(logits)?
        .set_name(&format!("ffn_moe_probs-{il}"));
    let chosen = ctx
        .argsort_top_k(probs, k)?
        .set_name(&format!("ffn_moe_topk-{il}"));
    let probs = ctx.reshape_3d(probs, 1, n_expert, n_tokens)?;
    let weights = ctx.get_rows(probs, chosen)?;
    let weights = ctx.reshape_2d(weights, k, n_tokens)?;
    // The floor keeps a row of underflowed weights from dividing by 0.
    let sum = ctx.clamp(ctx.sum_rows(weights)?, 6.103_515_6e-5, f32::INFINITY)?;
    let weights = ctx.div(weights, sum)?;
    let weights = ctx
        .reshape_3d(weights, 1, k, n_tokens)?
        .set_name(&format!("ffn_moe_weights-{il}"));
    graph.build_forward(weights)?;

    let x = ctx.reshape_3d(cur, n_embd, 1, n_tokens)?;
    let up = ctx.mul_mat_id(l.need(R::UpExps)?, x, chosen)?;
    let gate = ctx.mul_mat_id(l.need(R::GateExps)?, x, chosen)?;
    let act = ctx.swiglu_split(gate, up)?;
    let experts = ctx.mul_mat_id(l.need(R::DownExps)?, act, chosen)?;
    let experts = ctx.mul(experts, weights)?;
    graph.build_forward(experts)?;

    // Sum the chosen experts' outputs, in order of their weight.
    let nb = experts.nb();
    let mut out = ctx.view(experts, &[n_embd, n_tokens], &[nb[2]], 0)?;
    for i in 1..k as usize {
        let e = ctx.view(experts, &[n_embd, n_tokens], &[nb[2]], i * nb[1])?;
        out = ctx.add(out, e)?;
    }
    if k == 1 {
        out = ctx.cont(out)?;
    }
    Ok(out.set_name(&format!("ffn_moe_out-{il}")))
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
    kq_scale: f32,
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
    ctx.flash_attn_ext(q, k, v, Some(mask), kq_scale, 0.0, 0.0)
}
