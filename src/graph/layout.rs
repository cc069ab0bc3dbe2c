//! Placement of a graph's computed tensors inside one remote compute buffer.

use std::collections::HashMap;

use ggml_sys::{op, Graph, Tensor, TensorId};

/// Where each computed (non-view) node of a graph lives inside a compute
/// buffer, and how large that buffer must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// Byte offset of each placed tensor from the start of the buffer.
    pub offsets: HashMap<TensorId, u64>,
    /// Bytes the buffer needs.
    pub size: u64,
}

fn align_up(n: u64, align: u64) -> Option<u64> {
    let align = align.max(1);
    n.checked_add(align - 1).map(|v| v / align * align)
}

/// Gives every node that computes new data (not a view, not already placed by
/// `is_placed`) its own aligned slot. `alloc_size` is the bytes the server's
/// device needs for a tensor (its `GET_ALLOC_SIZE` answer, or `nbytes`).
///
/// Slots are never shared: simple and safe for the small graphs this is used
/// for; a reusing allocator can replace it without changing callers.
pub fn layout_nodes<'c>(
    graph: &Graph<'c>,
    alignment: u64,
    is_placed: impl Fn(&Tensor<'c>) -> bool,
    alloc_size: impl Fn(&Tensor<'c>) -> u64,
) -> Option<Layout> {
    let mut layout = Layout::default();
    for node in graph.nodes() {
        let is_view = node.view_source().is_some() || is_view_op(node.info().op);
        if is_view || is_placed(&node) || layout.offsets.contains_key(&node.id()) {
            continue;
        }
        let at = align_up(layout.size, alignment)?;
        layout.offsets.insert(node.id(), at);
        layout.size = at.checked_add(alloc_size(&node).max(1))?;
    }
    layout.size = align_up(layout.size, alignment)?;
    Some(layout)
}

fn is_view_op(o: u32) -> bool {
    matches!(o, op::VIEW | op::RESHAPE | op::PERMUTE | op::TRANSPOSE)
}
