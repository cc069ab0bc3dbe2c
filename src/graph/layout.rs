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

/// A slot `n` may compute over, as ggml's graph allocator allows (so the
/// layout needs no more than ggml's): `n`'s op runs in place, and a source
/// (or the tensor a source views from its first byte, e.g. a reshape) is a
/// slot of this layout, not kept, with the same type, shape and strides as
/// `n`, and read by no one after `n` (only once, by `n`).
fn in_place_parent<'c>(
    n: &Tensor<'c>,
    slots: &HashMap<TensorId, (u64, u64)>,
    readers: &HashMap<TensorId, usize>,
    keep: &HashSet<TensorId>,
) -> Option<TensorId> {
    let info = n.info();
    if !ggml_sys::op::can_run_in_place(info.op) {
        return None;
    }
    n.sources().into_iter().find_map(|p| {
        let pi = p.info();
        let owner = match p.view_source() {
            Some(v) if pi.view_offs == 0 => v,
            Some(_) => return None,
            None => p,
        };
        let id = owner.id();
        let fits = slots.contains_key(&id)
            && !keep.contains(&id)
            && !owner.is_output()
            && readers.get(&id) == Some(&1)
            && pi.ty == info.ty
            && pi.ne == info.ne
            && pi.nb == info.nb;
        fits.then_some(id)
    })
}

/// Gives every node that computes new data (not a view, not already placed by
/// `is_placed`) a slot, in execution order, after the leaves (graph inputs)
/// `is_placed` leaves out, and hands a slot back once every
/// node reading it (directly or through a view) has run. Graph outputs (flag
/// set with `set_output`) and the last node keep their slot. An element-wise
/// node (see [`ggml_sys::op::can_run_in_place`]) takes over the slot of a
/// source it reads last, as ggml's allocator does. `alloc_size` is
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
    // Graph inputs without a place of their own (leaves, not views) come
    // first, as ggml's allocator puts them: their slots are free for later
    // nodes once read.
    let computed: HashSet<TensorId> = nodes.iter().map(|n| n.id()).collect();
    for n in &nodes {
        for s in n.sources() {
            let leaf = !computed.contains(&s.id()) && s.view_source().is_none();
            if leaf && !is_placed(&s) && !slots.contains_key(&s.id()) {
                let size = align_up(alloc_size(&s).max(1), alignment)?;
                let off = free.alloc(size)?;
                slots.insert(s.id(), (off, size));
                layout.offsets.insert(s.id(), off);
            }
        }
    }
    for n in &nodes {
        let owns = n.view_source().is_none() && !is_placed(n) && !slots.contains_key(&n.id());
        if owns {
            let slot = match in_place_parent(n, &slots, &readers, &keep) {
                // The node writes over its source, whose slot passes to it.
                Some(p) => slots.remove(&p)?,
                None => {
                    let size = align_up(alloc_size(n).max(1), alignment)?;
                    (free.alloc(size)?, size)
                }
            };
            slots.insert(n.id(), slot);
            layout.offsets.insert(n.id(), slot.0);
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

    /// A chain x → a → b → c → d of element-wise ops: `a` is read twice
    /// (by b and c), so b gets a slot of its own; c and d, each the last
    /// reader of its source, compute in place, as ggml's allocator does.
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
        // a and b are both live when c runs; b must not overlap a.
        let slot = 1024u64;
        let overlap = |p: u64, q: u64| p < q + slot && q < p + slot;
        assert!(!overlap(off(a), off(b)));
        // c writes over b (its last reader), never over a, still to be read.
        assert_eq!(off(c), off(b));
        assert!(!overlap(off(c), off(a)));
        assert_eq!(off(d), off(c));
        assert_eq!(l.size, 2 * slot);
    }
}
