//! Placement of a graph's computed tensors inside one remote compute buffer,
//! reusing the memory of tensors no later node reads.

use std::collections::{BTreeMap, HashMap, HashSet};

use ggml_sys::{Graph, Tensor, TensorId};

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

/// Free ranges of the buffer, best fit, merged on release.
#[derive(Debug, Default)]
struct FreeList {
    /// offset → size
    free: BTreeMap<u64, u64>,
    end: u64,
}

impl FreeList {
    fn alloc(&mut self, size: u64) -> Option<u64> {
        let best = self
            .free
            .iter()
            .filter(|&(_, &s)| s >= size)
            .min_by_key(|&(_, &s)| s)
            .map(|(&o, &s)| (o, s));
        if let Some((off, s)) = best {
            self.free.remove(&off);
            if s > size {
                self.free.insert(off + size, s - size);
            }
            return Some(off);
        }
        // Grow at the end, absorbing a free block that touches the end.
        let last = self.free.iter().next_back().map(|(&o, &s)| (o, s));
        if let Some((o, s)) = last {
            if o + s == self.end {
                self.free.remove(&o);
                self.end = o.checked_add(size)?;
                return Some(o);
            }
        }
        let off = self.end;
        self.end = self.end.checked_add(size)?;
        Some(off)
    }

    fn release(&mut self, mut off: u64, mut size: u64) {
        if let Some((&po, &ps)) = self.free.range(..off).next_back() {
            if po + ps == off {
                self.free.remove(&po);
                off = po;
                size += ps;
            }
        }
        if let Some(&ns) = self.free.get(&(off + size)) {
            self.free.remove(&(off + size));
            size += ns;
        }
        self.free.insert(off, size);
    }
}

/// Gives every node that computes new data (not a view, not already placed by
/// `is_placed`) a slot, in execution order, and hands a slot back once every
/// node reading it (directly or through a view) has run. Graph outputs (flag
/// set with `set_output`) and the last node keep their slot. `alloc_size` is
/// the bytes the server's device needs for a tensor (its `GET_ALLOC_SIZE`
/// answer, or `nbytes`); sizes are rounded up to `alignment`.
pub fn layout_nodes<'c>(
    graph: &Graph<'c>,
    alignment: u64,
    is_placed: impl Fn(&Tensor<'c>) -> bool,
    alloc_size: impl Fn(&Tensor<'c>) -> u64,
) -> Option<Layout> {
    let nodes = graph.nodes();
    let root = |t: Tensor<'c>| t.view_source().unwrap_or(t);
    // How many nodes still have to read each owner of memory.
    let mut readers: HashMap<TensorId, usize> = HashMap::new();
    for n in &nodes {
        for s in n.sources() {
            *readers.entry(root(s).id()).or_default() += 1;
        }
    }
    let keep: HashSet<TensorId> = nodes
        .iter()
        .filter(|n| n.is_output())
        .chain(nodes.last())
        .map(|n| root(*n).id())
        .collect();

    let mut layout = Layout::default();
    let mut slots: HashMap<TensorId, (u64, u64)> = HashMap::new();
    let mut free = FreeList::default();
    for n in &nodes {
        let owns = n.view_source().is_none() && !is_placed(n) && !slots.contains_key(&n.id());
        if owns {
            let size = align_up(alloc_size(n).max(1), alignment)?;
            let off = free.alloc(size)?;
            slots.insert(n.id(), (off, size));
            layout.offsets.insert(n.id(), off);
        }
        for s in n.sources() {
            let r = root(s).id();
            let left = readers.get_mut(&r)?;
            *left -= 1;
            if *left == 0 && !keep.contains(&r) {
                if let Some(&(off, size)) = slots.get(&r) {
                    free.release(off, size);
                }
            }
        }
    }
    layout.size = align_up(free.end, alignment)?;
    Some(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ggml_sys::Context;

    #[test]
    fn free_list_reuses_and_merges() {
        let mut f = FreeList::default();
        let a = f.alloc(100).unwrap();
        let b = f.alloc(50).unwrap();
        let c = f.alloc(100).unwrap();
        assert_eq!((a, b, c), (0, 100, 150));
        f.release(a, 100);
        f.release(b, 50);
        assert_eq!(f.free.get(&0), Some(&150), "neighbours merge");
        assert_eq!(f.alloc(120).unwrap(), 0, "reused");
        f.release(c, 100);
        assert_eq!(
            f.alloc(200).unwrap(),
            120,
            "grows from a free block at the end"
        );
        assert_eq!(f.end, 320);
    }

    /// A chain x → a → b → c → d of element-wise ops: two slots suffice, and
    /// no node's slot overlaps a slot still to be read.
    #[test]
    fn chain_reuses_memory_without_overlapping_live_tensors() {
        let ctx = Context::new(
            Context::tensor_overhead() * 16 + Context::graph_overhead(32),
            true,
        )
        .unwrap();
        let x = ctx.new_tensor(0, &[256]).unwrap();
        let w = ctx.new_tensor(0, &[256]).unwrap();
        let a = ctx.mul(x, w).unwrap();
        let b = ctx.mul(a, w).unwrap();
        let c = ctx.add(b, a).unwrap(); // `a` is read twice
        let d = ctx.mul(c, w).unwrap();
        let mut g = ctx.new_graph(32).unwrap();
        g.build_forward(d).unwrap();
        let placed = [x.id(), w.id()];
        let l = layout_nodes(&g, 32, |t| placed.contains(&t.id()), |t| t.nbytes() as u64).unwrap();
        let off = |t: Tensor<'_>| l.offsets[&t.id()];
        assert_eq!(l.offsets.len(), 4);
        // a and b are both live when c runs; c must not overlap either.
        let slot = 1024u64;
        let overlap = |p: u64, q: u64| p < q + slot && q < p + slot;
        assert!(!overlap(off(a), off(b)));
        assert!(!overlap(off(c), off(a)) && !overlap(off(c), off(b)));
        // d may reuse a's or b's slot, but not c's.
        assert!(!overlap(off(d), off(c)));
        assert!(l.size <= 3 * slot, "size {}", l.size);
    }
}
