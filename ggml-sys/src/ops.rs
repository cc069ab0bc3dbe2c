//! Tensor operations, each with the checks ggml would otherwise abort on.

use llama_cpp_sys_2 as sys;

use crate::context::{Context, Tensor};
use crate::{GgmlError, GgmlType};

const F32: u32 = sys::GGML_TYPE_F32;
const F16: u32 = sys::GGML_TYPE_F16;
const I32: u32 = sys::GGML_TYPE_I32;
const I64: u32 = sys::GGML_TYPE_I64;

/// RoPE parameters (`ggml_rope_ext`'s scalars).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    /// Rotated dimensions per head.
    pub n_dims: i32,
    /// ggml rope mode (0 = normal/llama, 2 = NeoX).
    pub mode: i32,
    /// Context length the model was trained with (YaRN).
    pub n_ctx_orig: i32,
    /// Base frequency.
    pub freq_base: f32,
    /// Frequency scale (1 / linear scaling factor).
    pub freq_scale: f32,
    /// YaRN extrapolation mix factor.
    pub ext_factor: f32,
    /// Magnitude scale.
    pub attn_factor: f32,
    /// YaRN low correction dim.
    pub beta_fast: f32,
    /// YaRN high correction dim.
    pub beta_slow: f32,
}

pub(crate) fn bad(op: &'static str, detail: String) -> GgmlError {
    GgmlError::IncompatibleOperands { op, detail }
}

impl Context {
    pub(crate) fn made<'a>(
        &'a self,
        p: *mut sys::ggml_tensor,
        op: &'static str,
    ) -> Result<Tensor<'a>, GgmlError> {
        Tensor::from_raw(p).ok_or_else(|| GgmlError::Backend(format!("ggml_{op} returned null")))
    }

    /// Element-wise `a * b`, `b` broadcast over `a`.
    pub fn mul<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let (an, bn) = (a.ne(), b.ne());
        if !(0..4).all(|i| bn[i] > 0 && an[i] % bn[i] == 0) {
            return Err(bad(
                "mul",
                format!("a {an:?} is not a repetition of b {bn:?}"),
            ));
        }
        self.ensure_room(a.nbytes())?;
        // SAFETY: same context; `b` repeats into `a` as ggml_mul asserts.
        self.made(
            unsafe { sys::ggml_mul(self.raw(), a.raw(), b.raw()) },
            "mul",
        )
    }

    /// `a * s`.
    pub fn scale<'a>(&'a self, a: Tensor<'a>, s: f32) -> Result<Tensor<'a>, GgmlError> {
        self.ensure_room(a.nbytes())?;
        // SAFETY: live tensor of this context; no preconditions.
        self.made(unsafe { sys::ggml_scale(self.raw(), a.raw(), s) }, "scale")
    }

    /// RMS normalization over rows (F32).
    pub fn rms_norm<'a>(&'a self, a: Tensor<'a>, eps: f32) -> Result<Tensor<'a>, GgmlError> {
        if a.ty() != F32 {
            return Err(bad("rms_norm", format!("'{}' is not F32", a.name())));
        }
        self.ensure_room(a.nbytes())?;
        // SAFETY: live F32 tensor of this context.
        self.made(
            unsafe { sys::ggml_rms_norm(self.raw(), a.raw(), eps) },
            "rms_norm",
        )
    }

    /// Rows `b` (I32 ids) of `a`, as F32.
    pub fn get_rows<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let (an, bn) = (a.ne(), b.ne());
        if b.ty() != I32 || an[2] != bn[1] || an[3] != bn[2] || bn[3] != 1 {
            return Err(bad(
                "get_rows",
                format!("a {an:?}, ids {bn:?} of type {}", b.ty()),
            ));
        }
        let out = [an[0], bn[0], bn[1], bn[2]];
        self.ensure_room(4 * out.iter().product::<i64>().max(0) as usize)?;
        // SAFETY: shapes and id type satisfy ggml_get_rows' asserts.
        self.made(
            unsafe { sys::ggml_get_rows(self.raw(), a.raw(), b.raw()) },
            "get_rows",
        )
    }

    /// Writes the rows of `b` into rows `c` (I64 ids) of `a`; returns a view of
    /// `a` to keep in the graph.
    pub fn set_rows<'a>(
        &'a self,
        a: Tensor<'a>,
        b: Tensor<'a>,
        c: Tensor<'a>,
    ) -> Result<Tensor<'a>, GgmlError> {
        let (an, bn, cn) = (a.ne(), b.ne(), c.ne());
        let ok = an[0] == bn[0]
            && an[2] == bn[2]
            && an[3] == bn[3]
            && bn[1] == cn[0]
            && cn[1] > 0
            && cn[2] > 0
            && bn[2] % cn[1] == 0
            && bn[3] % cn[2] == 0
            && cn[3] == 1
            && matches!(b.ty(), F32 | F16)
            && matches!(c.ty(), I64 | I32)
            && a.is_contiguous_rows()
            && b.is_contiguous_rows();
        if !ok {
            return Err(bad(
                "set_rows",
                format!("dst {an:?}, src {bn:?}, ids {cn:?}"),
            ));
        }
        self.ensure_room(0)?;
        // SAFETY: every ggml_set_rows precondition was checked above.
        self.made(
            unsafe { sys::ggml_set_rows(self.raw(), a.raw(), b.raw(), c.raw()) },
            "set_rows",
        )
    }

    /// RoPE of `a` ([head_dim, n_head, n_tokens]) at positions `pos` (I32
    /// [n_tokens]), with optional frequency factors (F32 [>= n_dims/2]).
    pub fn rope_ext<'a>(
        &'a self,
        a: Tensor<'a>,
        pos: Tensor<'a>,
        freq_factors: Option<Tensor<'a>>,
        p: RopeParams,
    ) -> Result<Tensor<'a>, GgmlError> {
        let (an, pn) = (a.ne(), pos.ne());
        let pos_ok = pos.ty() == I32 && pn[1] == 1 && pn[2] == 1 && pn[3] == 1 && an[2] == pn[0];
        let ff_ok =
            freq_factors.is_none_or(|c| c.ty() == F32 && c.ne()[0] >= i64::from(p.n_dims / 2));
        // Only the normal and NeoX modes: the multi-section ones take other positions.
        if !pos_ok
            || !ff_ok
            || (p.mode != 0 && p.mode != 2)
            || p.n_dims <= 0
            || i64::from(p.n_dims) > an[0]
        {
            return Err(bad("rope_ext", format!("a {an:?}, pos {pn:?}, {p:?}")));
        }
        self.ensure_room(a.nbytes())?;
        let c = freq_factors.map_or(std::ptr::null_mut(), |t| t.raw());
        // SAFETY: checked as ggml_rope_impl asserts; `c` is null or F32.
        let t = unsafe {
            sys::ggml_rope_ext(
                self.raw(),
                a.raw(),
                pos.raw(),
                c,
                p.n_dims,
                p.mode,
                p.n_ctx_orig,
                p.freq_base,
                p.freq_scale,
                p.ext_factor,
                p.attn_factor,
                p.beta_fast,
                p.beta_slow,
            )
        };
        self.made(t, "rope_ext")
    }

    /// Flash attention: `q` [d, n_q, n_head], `k` [d, n_kv, n_head_kv], `v`
    /// [d_v, n_kv, n_head_kv], `mask` F16 [n_kv, >= n_q]. The result is
    /// [d_v, n_head, n_q] (permuted). Accumulates in F32.
    #[allow(clippy::too_many_arguments)] // ggml's own parameter list
    pub fn flash_attn_ext<'a>(
        &'a self,
        q: Tensor<'a>,
        k: Tensor<'a>,
        v: Tensor<'a>,
        mask: Option<Tensor<'a>>,
        scale: f32,
        max_bias: f32,
        softcap: f32,
    ) -> Result<Tensor<'a>, GgmlError> {
        let (qn, kn, vn) = (q.ne(), k.ne(), v.ne());
        let can_mul =
            kn[0] == qn[0] && kn[2] > 0 && kn[3] > 0 && qn[2] % kn[2] == 0 && qn[3] % kn[3] == 0;
        let mut ok =
            can_mul && qn[3] == kn[3] && qn[3] == vn[3] && vn[1] == kn[1] && vn[2] == kn[2];
        if let Some(m) = mask {
            let mn = m.ne();
            ok &= m.ty() == F16
                && m.is_contiguous()
                && mn[0] == kn[1]
                && mn[1] >= qn[1]
                && mn[2] > 0
                && mn[3] > 0
                && qn[2] % mn[2] == 0
                && qn[3] % mn[3] == 0;
        } else {
            ok &= max_bias == 0.0;
        }
        if !ok {
            return Err(bad(
                "flash_attn_ext",
                format!("q {qn:?}, k {kn:?}, v {vn:?}"),
            ));
        }
        self.ensure_room(4 * (vn[0] * qn[2] * qn[1] * qn[3]).max(0) as usize)?;
        let m = mask.map_or(std::ptr::null_mut(), |t| t.raw());
        // SAFETY: shapes and mask checked as ggml_flash_attn_ext asserts.
        let t = unsafe {
            sys::ggml_flash_attn_ext(
                self.raw(),
                q.raw(),
                k.raw(),
                v.raw(),
                m,
                scale,
                max_bias,
                softcap,
            )
        };
        let t = self.made(t, "flash_attn_ext")?;
        // SAFETY: `t` is a FLASH_ATTN_EXT node; this sets one of its op params.
        unsafe { sys::ggml_flash_attn_ext_set_prec(t.raw(), sys::GGML_PREC_F32) };
        Ok(t)
    }

    /// SwiGLU of two same-shaped tensors: `silu(a) * b`.
    pub fn swiglu_split<'a>(
        &'a self,
        a: Tensor<'a>,
        b: Tensor<'a>,
    ) -> Result<Tensor<'a>, GgmlError> {
        self.glu_split(a, b, "swiglu_split", sys::ggml_swiglu_split)
    }

    /// A gated unit of two same-shaped tensors made by ggml's `f`, one of
    /// its `*_split` GLU functions (checked as they all assert).
    pub(crate) fn glu_split<'a>(
        &'a self,
        a: Tensor<'a>,
        b: Tensor<'a>,
        name: &'static str,
        f: unsafe extern "C" fn(
            *mut sys::ggml_context,
            *mut sys::ggml_tensor,
            *mut sys::ggml_tensor,
        ) -> *mut sys::ggml_tensor,
    ) -> Result<Tensor<'a>, GgmlError> {
        if a.ne() != b.ne() || a.ty() != b.ty() || !a.is_contiguous_1() || !b.is_contiguous_1() {
            return Err(bad(name, format!("a {:?}, b {:?}", a.ne(), b.ne())));
        }
        self.ensure_room(a.nbytes())?;
        // SAFETY: same shape and type, row-contiguous, as ggml_glu_impl asserts.
        self.made(unsafe { f(self.raw(), a.raw(), b.raw()) }, name)
    }

    /// SwiGLU of one tensor holding both halves of each row: `silu(x0) * x1`
    /// where `x0` is the first half of the row and `x1` the second.
    pub fn swiglu<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let an = a.ne();
        if an[0] % 2 != 0 || !a.is_contiguous_1() || !matches!(a.ty(), F32 | F16) {
            return Err(bad("swiglu", format!("a {an:?} of type {}", a.ty())));
        }
        self.ensure_room(a.nbytes() / 2)?;
        // SAFETY: an even, row-contiguous F32/F16 row, as ggml_glu_impl asserts.
        self.made(unsafe { sys::ggml_swiglu(self.raw(), a.raw()) }, "swiglu")
    }

    /// `a` converted to `ty`.
    pub fn cast<'a>(&'a self, a: Tensor<'a>, ty: GgmlType) -> Result<Tensor<'a>, GgmlError> {
        let n = a.ne();
        let bytes = crate::context::shape_nbytes(ty, &n)?;
        self.ensure_room(bytes)?;
        // SAFETY: valid target type and shape (checked by shape_nbytes).
        self.made(unsafe { sys::ggml_cast(self.raw(), a.raw(), ty) }, "cast")
    }

    /// Copies `a` into `b` (same element count); returns a view of `b`.
    pub fn cpy<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        if a.nelements() != b.nelements() {
            return Err(bad("cpy", format!("{:?} into {:?}", a.ne(), b.ne())));
        }
        self.ensure_room(0)?;
        // SAFETY: element counts match, as ggml_cpy asserts.
        self.made(
            unsafe { sys::ggml_cpy(self.raw(), a.raw(), b.raw()) },
            "cpy",
        )
    }

    /// A contiguous copy of `a`.
    pub fn cont<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        self.ensure_room(a.nbytes())?;
        // SAFETY: live tensor; no preconditions.
        self.made(unsafe { sys::ggml_cont(self.raw(), a.raw()) }, "cont")
    }

    /// `a` (contiguous) seen with a new 2-D shape.
    pub fn reshape_2d<'a>(
        &'a self,
        a: Tensor<'a>,
        ne0: i64,
        ne1: i64,
    ) -> Result<Tensor<'a>, GgmlError> {
        self.reshape_check(a, &[ne0, ne1])?;
        // SAFETY: contiguous and same element count, checked.
        self.made(
            unsafe { sys::ggml_reshape_2d(self.raw(), a.raw(), ne0, ne1) },
            "reshape_2d",
        )
    }

    /// `a` (contiguous) seen with a new 3-D shape.
    pub fn reshape_3d<'a>(
        &'a self,
        a: Tensor<'a>,
        ne0: i64,
        ne1: i64,
        ne2: i64,
    ) -> Result<Tensor<'a>, GgmlError> {
        self.reshape_check(a, &[ne0, ne1, ne2])?;
        // SAFETY: contiguous and same element count, checked.
        self.made(
            unsafe { sys::ggml_reshape_3d(self.raw(), a.raw(), ne0, ne1, ne2) },
            "reshape_3d",
        )
    }

    fn reshape_check(&self, a: Tensor<'_>, ne: &[i64]) -> Result<(), GgmlError> {
        let n: Option<i64> =
            ne.iter().try_fold(
                1i64,
                |acc, &x| if x < 0 { None } else { acc.checked_mul(x) },
            );
        if !a.is_contiguous() || n != Some(a.nelements()) {
            return Err(bad("reshape", format!("{:?} to {ne:?}", a.ne())));
        }
        self.ensure_room(0)
    }

    /// Swaps axes as ggml_permute does (axis i of `a` goes to position
    /// `axes[i]`).
    pub fn permute<'a>(&'a self, a: Tensor<'a>, axes: [i32; 4]) -> Result<Tensor<'a>, GgmlError> {
        let mut seen = [false; 4];
        for &x in &axes {
            if !(0..4).contains(&x) || std::mem::replace(&mut seen[x as usize], true) {
                return Err(bad("permute", format!("axes {axes:?}")));
            }
        }
        self.ensure_room(0)?;
        // SAFETY: axes are a permutation of 0..4, as ggml_permute asserts.
        self.made(
            unsafe { sys::ggml_permute(self.raw(), a.raw(), axes[0], axes[1], axes[2], axes[3]) },
            "permute",
        )
    }

    /// A view into `a`: extents `ne` (1 to 4), byte strides `nb` for
    /// dimensions 1.. (`nb.len() == ne.len() - 1`), at byte `offset`.
    pub fn view<'a>(
        &'a self,
        a: Tensor<'a>,
        ne: &[i64],
        nb: &[usize],
        offset: usize,
    ) -> Result<Tensor<'a>, GgmlError> {
        if ne.is_empty() || ne.len() > 4 || nb.len() + 1 != ne.len() || ne.iter().any(|&n| n <= 0) {
            return Err(bad("view", format!("ne {ne:?}, nb {nb:?}")));
        }
        // Bytes the view spans, as ggml sizes it.
        let ts = crate::types::type_size(a.ty()).ok_or(GgmlError::UnknownType(a.ty()))? as u128;
        let bs =
            crate::types::type_blck_size(a.ty()).ok_or(GgmlError::UnknownType(a.ty()))? as u128;
        if !(ne[0] as u128).is_multiple_of(bs) {
            return Err(bad("view", format!("row of {} is not whole blocks", ne[0])));
        }
        let mut span = ne[0] as u128 / bs * ts;
        for (i, &n) in ne.iter().enumerate().skip(1) {
            span += (n as u128 - 1) * nb[i - 1] as u128;
        }
        if offset as u128 + span > a.nbytes() as u128 {
            return Err(bad(
                "view",
                format!(
                    "{span} bytes at {offset} exceed {} bytes of '{}'",
                    a.nbytes(),
                    a.name()
                ),
            ));
        }
        self.ensure_room(0)?;
        // SAFETY: the view lies inside `a`'s data, checked above.
        let t = unsafe {
            match ne.len() {
                1 => sys::ggml_view_1d(self.raw(), a.raw(), ne[0], offset),
                2 => sys::ggml_view_2d(self.raw(), a.raw(), ne[0], ne[1], nb[0], offset),
                3 => sys::ggml_view_3d(
                    self.raw(),
                    a.raw(),
                    ne[0],
                    ne[1],
                    ne[2],
                    nb[0],
                    nb[1],
                    offset,
                ),
                _ => sys::ggml_view_4d(
                    self.raw(),
                    a.raw(),
                    ne[0],
                    ne[1],
                    ne[2],
                    ne[3],
                    nb[0],
                    nb[1],
                    nb[2],
                    offset,
                ),
            }
        };
        self.made(t, "view")
    }
}

impl Tensor<'_> {
    /// Number of elements.
    pub fn nelements(&self) -> i64 {
        // SAFETY: live tensor.
        unsafe { sys::ggml_nelements(self.raw()) }
    }

    /// Whether the data is contiguous.
    pub fn is_contiguous(&self) -> bool {
        // SAFETY: live tensor; reads shape and strides.
        unsafe { sys::ggml_is_contiguous(self.raw()) }
    }

    /// Whether rows are contiguous from dimension 1 on.
    pub fn is_contiguous_1(&self) -> bool {
        // SAFETY: live tensor; reads shape and strides.
        unsafe { sys::ggml_is_contiguous_1(self.raw()) }
    }

    /// Whether each row is contiguous.
    pub fn is_contiguous_rows(&self) -> bool {
        // SAFETY: live tensor; reads shape and strides.
        unsafe { sys::ggml_is_contiguous_rows(self.raw()) }
    }
}
