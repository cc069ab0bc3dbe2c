//! Computation graphs.

use std::collections::HashSet;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use crate::context::{count_new, Context, Tensor, TensorId};
use crate::GgmlError;

/// A forward computation graph built in a [`Context`].
#[derive(Debug)]
pub struct Graph<'ctx> {
    ptr: NonNull<sys::ggml_cgraph>,
    _ctx: &'ctx Context,
    size: usize,
    n_nodes: usize,
    n_leafs: usize,
    seen: HashSet<TensorId>,
}

impl Context {
    /// A new graph with room for `size` nodes and `size` leaves.
    pub fn new_graph(&self, size: usize) -> Result<Graph<'_>, GgmlError> {
        self.ensure_graph_room(size)?;
        // SAFETY: live context with room for the graph object, checked above.
        let p = unsafe { sys::ggml_new_graph_custom(self.raw(), size, false) };
        let ptr = NonNull::new(p)
            .ok_or_else(|| GgmlError::Backend("ggml_new_graph_custom returned null".into()))?;
        Ok(Graph {
            ptr,
            _ctx: self,
            size,
            n_nodes: 0,
            n_leafs: 0,
            seen: HashSet::new(),
        })
    }
}

impl<'ctx> Graph<'ctx> {
    pub(crate) fn raw(&self) -> *mut sys::ggml_cgraph {
        self.ptr.as_ptr()
    }

    /// Add `t` and everything it depends on.
    pub fn build_forward(&mut self, t: Tensor<'ctx>) -> Result<(), GgmlError> {
        let mut seen = self.seen.clone();
        let (nodes, leafs) = count_new(t, &mut seen);
        if self.n_nodes + nodes > self.size || self.n_leafs + leafs > self.size {
            return Err(GgmlError::GraphFull { size: self.size });
        }
        // SAFETY: graph and tensor live in the same context; the graph has room
        // for every new node and leaf, counted above the way ggml counts them.
        unsafe { sys::ggml_build_forward_expand(self.ptr.as_ptr(), t.raw()) };
        self.seen = seen;
        self.n_nodes += nodes;
        self.n_leafs += leafs;
        Ok(())
    }

    /// The graph's nodes (computed tensors) in execution order.
    pub fn nodes(&self) -> Vec<Tensor<'ctx>> {
        // SAFETY: live graph.
        let n = unsafe { sys::ggml_graph_n_nodes(self.ptr.as_ptr()) };
        (0..n)
            // SAFETY: `i` is in 0..n_nodes.
            .filter_map(|i| Tensor::from_raw(unsafe { sys::ggml_graph_node(self.ptr.as_ptr(), i) }))
            .collect()
    }

    /// Checks that every node and source has local memory, so a local backend
    /// can compute the graph without touching a null pointer.
    pub(crate) fn check_allocated(&self) -> Result<(), GgmlError> {
        for node in self.nodes() {
            for t in std::iter::once(node).chain(node.sources()) {
                if !t.is_allocated() {
                    return Err(GgmlError::NotAllocated(t.name()));
                }
            }
        }
        Ok(())
    }
}
