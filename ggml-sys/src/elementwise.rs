//! Element-wise operations with a scalar or a broadcast operand (scale and
//! shift, step, clamp, divide, repeat), each with the checks ggml would
//! otherwise abort on.

use llama_cpp_sys_2 as sys;

use crate::context::{Context, Tensor};
use crate::ops::bad;
use crate::GgmlError;

impl Context {
    /// `a * s + b`, element-wise.
    pub fn scale_bias<'a>(
        &'a self,
        a: Tensor<'a>,
        s: f32,
        b: f32,
    ) -> Result<Tensor<'a>, GgmlError> {
        if !a.is_contiguous() {
            return Err(bad(
                "scale_bias",
                format!("a {:?} is not contiguous", a.ne()),
            ));
        }
        self.ensure_room(a.nbytes())?;
        // SAFETY: a contiguous (so padded) tensor, as ggml_scale_impl asserts.
        self.made(
            unsafe { sys::ggml_scale_bias(self.raw(), a.raw(), s, b) },
            "scale_bias",
        )
    }

    /// 1 where `a > 0`, else 0, element-wise.
    pub fn step<'a>(&'a self, a: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        if !a.is_contiguous_rows() {
            return Err(bad("step", format!("a {:?} has gaps in its rows", a.ne())));
        }
        self.ensure_room(a.nbytes())?;
        // SAFETY: rows contiguous, as ggml_unary_impl asserts.
        self.made(unsafe { sys::ggml_step(self.raw(), a.raw()) }, "step")
    }

    /// `a` repeated to the shape of `b` (each extent of `b` a multiple of
    /// `a`'s); `b` gives only the shape.
    pub fn repeat<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let (an, bn) = (a.ne(), b.ne());
        if !(0..4).all(|i| an[i] > 0 && bn[i] % an[i] == 0) {
            return Err(bad(
                "repeat",
                format!("b {bn:?} is not a repetition of a {an:?}"),
            ));
        }
        let out = crate::context::shape_nbytes(a.ty(), &bn)?;
        self.ensure_room(out)?;
        // SAFETY: `a` repeats into `b`, as ggml_repeat asserts.
        self.made(
            unsafe { sys::ggml_repeat(self.raw(), a.raw(), b.raw()) },
            "repeat",
        )
    }

    /// `a` with each element clamped into `[min, max]`.
    pub fn clamp<'a>(&'a self, a: Tensor<'a>, min: f32, max: f32) -> Result<Tensor<'a>, GgmlError> {
        self.ensure_room(a.nbytes())?;
        // SAFETY: a live tensor of this context; ggml_clamp asserts nothing.
        self.made(
            unsafe { sys::ggml_clamp(self.raw(), a.raw(), min, max) },
            "clamp",
        )
    }

    /// Element-wise `a / b`, `b` broadcast over `a`.
    pub fn div<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let (an, bn) = (a.ne(), b.ne());
        if !(0..4).all(|i| bn[i] > 0 && an[i] % bn[i] == 0) {
            return Err(bad(
                "div",
                format!("a {an:?} is not a repetition of b {bn:?}"),
            ));
        }
        self.ensure_room(a.nbytes())?;
        // SAFETY: same context; `b` repeats into `a` as ggml_div asserts.
        self.made(
            unsafe { sys::ggml_div(self.raw(), a.raw(), b.raw()) },
            "div",
        )
    }
}
