//! Operations of mixture-of-experts layers: the router's softmax and top-k
//! choice, and matrix products that pick one matrix per expert, each with
//! the checks ggml would otherwise abort on.

use llama_cpp_sys_2 as sys;

use crate::context::{Context, Tensor};
use crate::ops::bad;
use crate::GgmlError;

const F32: u32 = sys::GGML_TYPE_F32;
const I32: u32 = sys::GGML_TYPE_I32;

impl Context {
    /// Softmax of each row of `a` (F32, contiguous).
    pub fn soft_max<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        if a.ty() != F32 || !a.is_contiguous() {
            return Err(bad(
                "soft_max",
                format!("a {:?} of type {}", a.ne(), a.ty()),
            ));
        }
        self.ensure_room(a.nbytes())?;
        // SAFETY: a contiguous F32 tensor and no mask, as ggml_soft_max_impl asserts.
        self.made(
            unsafe { sys::ggml_soft_max(self.raw(), a.raw()) },
            "soft_max",
        )
    }

    /// Indices (I32) of the `k` largest values of each row of `a`, largest
    /// first: a view of the rows' descending argsort.
    pub fn argsort_top_k<'a>(&'a self, a: Tensor<'a>, k: i64) -> Result<Tensor<'a>, GgmlError> {
        let an = a.ne();
        if a.ty() != F32 || k < 1 || an[0] < k || an[0] > i64::from(i32::MAX) {
            return Err(bad("argsort_top_k", format!("a {an:?}, k {k}")));
        }
        // The full argsort, then the view.
        self.ensure_room(4 * an.iter().product::<i64>().max(0) as usize)?;
        self.ensure_room(0)?;
        // SAFETY: 1 <= k <= the row length, which fits an i32, as
        // ggml_argsort and ggml_argsort_top_k assert.
        self.made(
            unsafe { sys::ggml_argsort_top_k(self.raw(), a.raw(), k as i32) },
            "argsort_top_k",
        )
    }

    /// The sum of each row of `a` (F32): `[1, ne1, ne2, ne3]`.
    pub fn sum_rows<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        if a.ty() != F32 {
            return Err(bad("sum_rows", format!("a of type {}", a.ty())));
        }
        let an = a.ne();
        self.ensure_room(4 * (an[1] * an[2] * an[3]).max(0) as usize)?;
        // SAFETY: an F32 tensor of this context; ggml_sum_rows asserts nothing more.
        self.made(
            unsafe { sys::ggml_sum_rows(self.raw(), a.raw()) },
            "sum_rows",
        )
    }

    /// Matrix products with one of several matrices per row (mixture of
    /// experts): `as_` is `[k, m, n_as]` (one matrix per expert), `b` is
    /// `[k, n_b, n]`, `ids` (I32 `[n_used, n]`) picks the matrices for each
    /// of the `n` columns; the result is F32 `[m, n_used, n]`.
    pub fn mul_mat_id<'a>(
        &'a self,
        as_: Tensor<'a>,
        b: Tensor<'a>,
        ids: Tensor<'a>,
    ) -> Result<Tensor<'a>, GgmlError> {
        let (an, bn, idn) = (as_.ne(), b.ne(), ids.ne());
        let ok = !as_.is_transposed()
            && ids.ty() == I32
            && an[3] == 1
            && bn[3] == 1
            && idn[2] == 1
            && idn[3] == 1
            && idn[1] == bn[2]
            && an[0] == bn[0]
            && bn[1] > 0
            && idn[0] % bn[1] == 0;
        if !ok {
            return Err(bad(
                "mul_mat_id",
                format!("as {an:?}, b {bn:?}, ids {idn:?}"),
            ));
        }
        self.ensure_room(4 * (an[1] * idn[0] * bn[2]).max(0) as usize)?;
        // SAFETY: every ggml_mul_mat_id assertion was checked above.
        self.made(
            unsafe { sys::ggml_mul_mat_id(self.raw(), as_.raw(), b.raw(), ids.raw()) },
            "mul_mat_id",
        )
    }

    /// GeGLU of two same-shaped tensors: `gelu(a) * b` (ggml's tanh
    /// approximation of GELU).
    pub fn geglu_split<'a>(
        &'a self,
        a: Tensor<'a>,
        b: Tensor<'a>,
    ) -> Result<Tensor<'a>, GgmlError> {
        self.glu_split(a, b, "geglu_split", sys::ggml_geglu_split)
    }
}
