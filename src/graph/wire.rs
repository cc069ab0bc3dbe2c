//! Turning a ggml graph into `GRAPH_COMPUTE`'s payload.

use std::collections::HashMap;

use ggml_sys::{Graph, Tensor, TensorId};
use shardline_protocol::{GraphCompute, RpcTensor};

/// Where a tensor's data lives on the server that computes the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteLocation {
    /// `remote_ptr` of the buffer.
    pub buffer: u64,
    /// Absolute remote address of the first byte (buffer base + offset).
    pub data: u64,
}

/// Why a graph cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A tensor the server needs has no remote memory assigned.
    #[error("tensor '{0}' has no place on the server")]
    Unplaced(String),
    /// An extent or stride does not fit the wire format's 32 bits.
    #[error("tensor '{name}' has {what} {value}, more than the wire format's u32")]
    TooLarge {
        /// The tensor.
        name: String,
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The tensor's name cannot be carried.
    #[error("tensor name '{0}' does not fit the wire format")]
    BadName(String),
}

fn u32_field(name: &str, what: &'static str, v: u64) -> Result<u32, WireError> {
    u32::try_from(v).map_err(|_| WireError::TooLarge {
        name: name.to_string(),
        what,
        value: v,
    })
}

/// A graph ready for `GRAPH_COMPUTE`, with each tensor's byte size (in the
/// order of `msg.tensors`) so the client can check it against its buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGraph {
    /// The message.
    pub msg: GraphCompute,
    /// `ggml_nbytes` of each tensor of `msg.tensors`.
    pub nbytes: Vec<u64>,
    /// Position in `msg.tensors` of each graph tensor.
    pub index: HashMap<TensorId, usize>,
}

/// Serializes `graph` for computing on `device`. `locate` gives the remote
/// place of every tensor that owns data (weights, inputs, computed nodes);
/// views are placed at their source's place plus their offset. Tensors are
/// listed sources first, as the server rebuilds them in order; ids are small
/// numbers local to this message.
pub fn to_wire<'c>(
    graph: &Graph<'c>,
    device: u32,
    locate: impl Fn(&Tensor<'c>) -> Option<RemoteLocation>,
) -> Result<WireGraph, WireError> {
    let nodes = graph.nodes();
    let mut ids: HashMap<TensorId, u64> = HashMap::new();
    let mut order: Vec<Tensor<'c>> = Vec::new();
    for &node in &nodes {
        visit(node, &mut ids, &mut order);
    }
    // How many graph nodes use each tensor, as ggml counts it when it builds a
    // graph; backends read it to decide which ops they may fuse.
    let mut use_count: HashMap<TensorId, i32> = HashMap::new();
    for node in &nodes {
        for s in node.sources() {
            *use_count.entry(s.id()).or_default() += 1;
        }
    }

    let mut tensors = Vec::with_capacity(order.len());
    let mut nbytes = Vec::with_capacity(order.len());
    for t in &order {
        let info = t.info();
        let place = match t.view_source() {
            Some(src) => locate(&src).map(|l| RemoteLocation {
                buffer: l.buffer,
                data: l.data + info.view_offs as u64,
            }),
            None => locate(t),
        }
        .ok_or_else(|| WireError::Unplaced(info.name.clone()))?;
        let mut w = RpcTensor {
            id: ids[&info.id],
            ty: info.ty,
            buffer: place.buffer,
            op: info.op,
            op_params: info.op_params,
            flags: info.flags,
            view_offs: info.view_offs as u64,
            data: place.data,
            use_count: use_count.get(&info.id).copied().unwrap_or(0),
            ..RpcTensor::default()
        };
        for i in 0..4 {
            w.ne[i] = u32_field(&info.name, "extent", info.ne[i].max(0) as u64)?;
            w.nb[i] = u32_field(&info.name, "stride", info.nb[i] as u64)?;
        }
        for (dst, src) in w.src.iter_mut().zip(info.src.iter()) {
            *dst = src.map_or(0, |s| ids[&s]);
        }
        w.view_src = info.view_src.map_or(0, |s| ids[&s]);
        w.set_name(&info.name)
            .map_err(|_| WireError::BadName(info.name.clone()))?;
        tensors.push(w);
        nbytes.push(info.nbytes as u64);
    }
    let msg = GraphCompute {
        device,
        nodes: nodes.iter().map(|n| ids[&n.id()]).collect(),
        tensors,
    };
    let index = order.iter().enumerate().map(|(i, t)| (t.id(), i)).collect();
    Ok(WireGraph { msg, nbytes, index })
}

/// Depth-first, sources (and view source) before the tensor itself.
fn visit<'c>(root: Tensor<'c>, ids: &mut HashMap<TensorId, u64>, order: &mut Vec<Tensor<'c>>) {
    // Explicit stack: real graphs are thousands of nodes deep in chains.
    let mut stack: Vec<(Tensor<'c>, bool)> = vec![(root, false)];
    while let Some((t, expanded)) = stack.pop() {
        if ids.contains_key(&t.id()) {
            continue;
        }
        if expanded {
            let id = ids.len() as u64 + 1;
            ids.insert(t.id(), id);
            order.push(t);
            continue;
        }
        stack.push((t, true));
        if let Some(v) = t.view_source() {
            stack.push((v, false));
        }
        // A cast (ggml_cast) names itself as its second source.
        for s in t.sources().into_iter().rev().filter(|s| s.id() != t.id()) {
            stack.push((s, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ggml_sys::{ty, Context};

    #[test]
    fn a_cast_that_names_itself_as_a_source_is_listed_once() {
        let ctx = Context::new(
            Context::tensor_overhead() * 8 + Context::graph_overhead(8),
            true,
        )
        .unwrap();
        let a = ctx.new_tensor(ty::I32, &[4]).unwrap().set_name("a");
        let b = ctx.cast(a, ty::F32).unwrap();
        assert!(
            b.sources().iter().any(|s| s.id() == b.id()),
            "ggml_cast's own quirk"
        );
        let mut g = ctx.new_graph(8).unwrap();
        g.build_forward(b).unwrap();
        let place = |_: &Tensor<'_>| {
            Some(RemoteLocation {
                buffer: 1,
                data: 64,
            })
        };
        let w = to_wire(&g, 0, place).unwrap();
        assert_eq!(w.msg.tensors.len(), 2);
        let cast = &w.msg.tensors[1];
        assert_eq!((cast.src[0], cast.src[1]), (1, cast.id));
    }
}
