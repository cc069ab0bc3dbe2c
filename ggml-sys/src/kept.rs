//! A graph kept together with the context that holds its nodes, so that a
//! step of a shape seen before runs the graph built for it then instead of
//! building it again.

use crate::context::{Context, Tensor};
use crate::graph::Graph;
use crate::GgmlError;

/// A graph, some of its tensors (inputs, outputs) and the context they live
/// in. Its nodes may also read tensors of one other context (the weights),
/// which [`KeptGraph::with`] must be given again: the graph is only ever
/// used while that context is borrowed, so it cannot outlive it in use.
#[derive(Debug)]
pub struct KeptGraph {
    // Dropped in this order: nothing here frees memory but `ctx`, which
    // goes last.
    graph: Graph<'static>,
    handles: Vec<Tensor<'static>>,
    other: *const (),
    /// Owns the arena the graph and handles live in; never read.
    _ctx: Box<Context>,
}

// SAFETY: the graph, the handles and the boxed context are owned by this
// value alone (no other reference to them exists once `build` returns), so
// moving it to another thread moves all of them; ggml contexts and graphs
// have no thread affinity. The other context is only touched while `with`
// borrows it, on the caller's thread.
unsafe impl Send for KeptGraph {}

impl KeptGraph {
    /// Builds a graph with `f` in a new no-alloc context of `mem_size` bytes;
    /// `f` gets that context and `other` (whose tensors the graph may read)
    /// and returns the graph and the tensors to keep handles to.
    pub fn build<E: From<GgmlError>>(
        mem_size: usize,
        other: &Context,
        f: impl for<'a> FnOnce(&'a Context, &'a Context) -> Result<(Graph<'a>, Vec<Tensor<'a>>), E>,
    ) -> Result<Self, E> {
        let ctx = Box::new(Context::new(mem_size, true)?);
        let (graph, handles) = f(&ctx, other)?;
        // SAFETY: the graph and tensors point into `ctx`'s arena (boxed, so
        // the `&Context` inside the graph stays valid when `Self` moves, and
        // dropped after them) and into `other`, which `with` requires and
        // checks by identity before handing them out; the 'static lifetime
        // never leaves this type.
        let graph: Graph<'static> =
            unsafe { std::mem::transmute::<Graph<'_>, Graph<'static>>(graph) };
        // SAFETY: as above.
        let handles: Vec<Tensor<'static>> =
            unsafe { std::mem::transmute::<Vec<Tensor<'_>>, Vec<Tensor<'static>>>(handles) };
        Ok(KeptGraph {
            graph,
            handles,
            other: other.raw() as *const (),
            _ctx: ctx,
        })
    }

    /// Runs `f` with the graph and the kept tensors, `other` being the
    /// context given to [`KeptGraph::build`] (an error otherwise).
    pub fn with<'s, R>(
        &'s self,
        other: &'s Context,
        f: impl FnOnce(&'s Graph<'s>, &'s [Tensor<'s>]) -> R,
    ) -> Result<R, GgmlError> {
        if other.raw() as *const () != self.other {
            return Err(GgmlError::Backend(
                "a kept graph was used with another context than it was built with".into(),
            ));
        }
        Ok(f(&self.graph, &self.handles))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ty, CpuBackend};

    #[test]
    fn a_kept_graph_runs_again_with_new_inputs() {
        let weights = Context::new(Context::tensor_overhead() * 4, true).unwrap();
        let w = weights.new_tensor(ty::F32, &[4]).unwrap().set_name("w");
        let mut backend = CpuBackend::new(1).unwrap();
        backend.alloc_context(&weights).unwrap();
        w.write_f32(&[1.0, 2.0, 3.0, 4.0]).unwrap();

        let kept = KeptGraph::build(
            Context::tensor_overhead() * 8 + Context::graph_overhead(8),
            &weights,
            |ctx, weights| {
                let w = weights.tensors()[0];
                let x = ctx.new_tensor(ty::F32, &[4])?.set_input();
                let y = ctx.mul(x, w)?.set_output();
                let mut g = ctx.new_graph(8)?;
                g.build_forward(y)?;
                Ok::<_, GgmlError>((g, vec![x, y]))
            },
        )
        .unwrap();
        // Moved (as into a map) before use: the graph must still work.
        #[allow(clippy::useless_vec)] // the move to the heap is the point
        let moved = vec![kept];
        let mut alloc = crate::CpuGraphAllocator::new().unwrap();
        for k in [1.0f32, 10.0] {
            let out = moved[0]
                .with(&weights, |g, t| {
                    alloc.with_graph(g, || {
                        t[0].write_f32(&[k; 4])?;
                        backend.compute(g)?;
                        t[1].read_f32()
                    })
                })
                .unwrap()
                .unwrap();
            assert_eq!(out, [k, 2.0 * k, 3.0 * k, 4.0 * k]);
        }
        let other = Context::new(Context::tensor_overhead(), true).unwrap();
        assert!(moved[0].with(&other, |_, _| ()).is_err());
    }
}
