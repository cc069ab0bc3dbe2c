//! Running a batch through the pipeline: the token embedding on the
//! coordinator, then each stage in order (on the coordinator's CPU or on a
//! server), activations handed from stage to stage, logits from the last.

pub mod head;
pub mod local;
pub mod pipeline;
pub mod remote;
pub mod stage_task;
mod stat;

pub use stat::StageStat;

use ggml_sys::GgmlError;

use crate::gguf::Gguf;
use crate::model::{LlamaConfig, TOKEN_EMBD};
use crate::rpc::RpcError;

/// Errors while executing a step.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// ggml refused an operation (a bug or an unsupported model shape).
    #[error("building or computing the graph: {0}")]
    Ggml(#[from] GgmlError),
    /// A server failed.
    #[error("server {endpoint}: {source}")]
    Rpc {
        /// The server.
        endpoint: String,
        /// What went wrong.
        source: RpcError,
    },
    /// A graph could not be put on the wire.
    #[error(transparent)]
    Wire(#[from] crate::graph::WireError),
    /// A graph needs more memory than its server gave.
    #[error("server {endpoint}: {detail}")]
    Memory {
        /// The server.
        endpoint: String,
        /// What went wrong.
        detail: String,
    },
    /// A server took far longer than its recent steps of the same size: it
    /// is treated as hung (a stopped process, a stuck driver, a dead link).
    #[error("server {endpoint}: no answer within the step deadline of {after:?} (recent steps of this size took at most {typical:?})")]
    Deadline {
        /// The server.
        endpoint: String,
        /// The deadline that passed.
        after: std::time::Duration,
        /// The slowest recent step of the same size.
        typical: std::time::Duration,
    },
    /// A weight is missing or malformed.
    #[error("weight '{0}': {1}")]
    Weight(String, String),
    /// The local CPU cannot compute a node the graph needs (a server could
    /// not either, and would abort).
    #[error("op {op} of tensor '{name}' is not supported by ggml's CPU backend")]
    Unsupported {
        /// The op.
        op: String,
        /// The tensor.
        name: String,
    },
    /// The server's device is of a kind that cannot compute a node the
    /// graph needs (it would abort); the planner leaves such devices out.
    #[error("op {op} of tensor '{name}' cannot run on {endpoint} device {device}: {reason}")]
    UnsupportedOnDevice {
        /// The server.
        endpoint: String,
        /// The device there.
        device: u32,
        /// The op.
        op: String,
        /// The tensor.
        name: String,
        /// Why, from the device kind's rules.
        reason: String,
    },
}

impl ExecError {
    /// The server that failed, when a server did.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            ExecError::Rpc { endpoint, .. }
            | ExecError::Memory { endpoint, .. }
            | ExecError::Deadline { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }
}

/// The inputs of one step, shared by every stage, encoded once as the
/// little-endian bytes every stage writes into its input tensors.
#[derive(Debug, Clone)]
pub struct Step {
    /// Tokens in the batch.
    pub n_tokens: usize,
    /// Position of each token, I32.
    pub pos: Vec<u8>,
    /// KV cell of each token, I64.
    pub kv_idx: Vec<u8>,
    /// Cells attention looks at: the first `n_kv` of the cache.
    pub n_kv: usize,
    /// Mask rows, f16, `[n_tokens][n_kv]`.
    pub mask: Vec<u8>,
    /// Tokens whose logits are wanted (indices into the batch), I32.
    pub out_ids: Vec<u8>,
    /// How many tokens' logits are wanted.
    pub n_outputs: usize,
}

/// A run of KV cells copied to another place in the cache, on every stage:
/// cells `src..src + n` into `dst..dst + n` (cell indices). A sequence that
/// shares another's prompt starts from a copy of its cells instead of
/// computing them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellCopy {
    /// First source cell.
    pub src: usize,
    /// First destination cell.
    pub dst: usize,
    /// Cells copied.
    pub n: usize,
}

impl CellCopy {
    /// The byte ranges of a tensor with rows of `row` bytes, one per cell:
    /// (source offset, destination offset, length).
    pub(crate) fn bytes(&self, row: usize) -> (usize, usize, usize) {
        (self.src * row, self.dst * row, self.n * row)
    }
}

pub(crate) fn le_bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn le_bytes_i32(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn le_bytes_i64(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn le_bytes_f16(v: &[half::f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A graph a server cannot compute would abort it: checks every node of
/// `graph` against ggml's CPU backend, which is what CPU servers run.
pub(crate) fn check_cpu_supports(graph: &ggml_sys::Graph<'_>) -> Result<(), ExecError> {
    let Some(cpu) = ggml_sys::Device::cpu() else {
        return Ok(());
    };
    match graph.nodes().into_iter().find(|n| !cpu.supports_op(n)) {
        None => Ok(()),
        Some(node) => {
            let info = node.info();
            Err(ExecError::Unsupported {
                op: ggml_sys::op_name(info.op).unwrap_or("?").to_string(),
                name: info.name,
            })
        }
    }
}

/// [`check_cpu_supports`], then the rules known for a server device of
/// `kind` (`endpoint`, `device`): the graph must run there before it is
/// sent, since a server aborts on one it cannot compute.
pub(crate) fn check_device_supports(
    graph: &ggml_sys::Graph<'_>,
    kind: crate::plan::DeviceKind,
    endpoint: &str,
    device: u32,
) -> Result<(), ExecError> {
    check_cpu_supports(graph)?;
    for node in graph.nodes() {
        let info = node.info();
        if info.op != ggml_sys::op::FLASH_ATTN_EXT {
            continue;
        }
        let src = node.sources();
        let (Some(k), Some(v)) = (src.get(1), src.get(2)) else {
            continue;
        };
        if let Some(reason) = kind.attention_refusal(k.ne()[0] as u32, v.ne()[0] as u32) {
            return Err(ExecError::UnsupportedOnDevice {
                endpoint: endpoint.to_string(),
                device,
                op: "FLASH_ATTN_EXT".to_string(),
                name: info.name,
                reason: format!("a {kind}: {reason}"),
            });
        }
    }
    Ok(())
}

/// Runs CPU-heavy `f` (a ggml computation on the coordinator, copying
/// weights) without stalling the other tasks of a multi-threaded tokio
/// runtime: `block_in_place` hands this worker thread's queued tasks to
/// another one first. On a current-thread runtime, or outside any, it just
/// runs `f`.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub(crate) fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Token embedding lookup on the coordinator's CPU: each token's row of the
/// table converted to f32 by ggml's own conversion for the table's type,
/// which is what ggml's `get_rows` does, so the result is bit for bit what a
/// graph would give, without building one per step.
#[derive(Debug)]
pub struct Embedder {
    table: Vec<u8>,
    ty: ggml_sys::GgmlType,
    n_embd: usize,
    row_bytes: usize,
    n_rows: usize,
}

impl Embedder {
    /// Copies the token embedding out of the model into CPU memory.
    pub fn new(g: &Gguf, cfg: &LlamaConfig) -> Result<Self, ExecError> {
        let info = g
            .tensor(TOKEN_EMBD)
            .ok_or_else(|| ExecError::Weight(TOKEN_EMBD.into(), "missing".into()))?;
        let bad = |why: String| ExecError::Weight(TOKEN_EMBD.into(), why);
        let n_embd = cfg.hp.n_embd as usize;
        let dims = info.dims();
        if dims.first().copied() != Some(n_embd as u64) {
            return Err(bad(format!(
                "shape {dims:?} does not start with n_embd {n_embd}"
            )));
        }
        let (Some(bs), Some(ts)) = (
            ggml_sys::type_blck_size(info.ty().id()),
            ggml_sys::type_size(info.ty().id()),
        ) else {
            return Err(bad(format!("unknown type {:?}", info.ty())));
        };
        if bs == 0 || !n_embd.is_multiple_of(bs) {
            return Err(bad(format!(
                "rows of {n_embd} are not whole blocks of {bs}"
            )));
        }
        let row_bytes = n_embd / bs * ts;
        let table = g.tensor_data(info).to_vec();
        let n_rows = table.len() / row_bytes.max(1);
        Ok(Embedder {
            table,
            ty: info.ty().id(),
            n_embd,
            row_bytes,
            n_rows,
        })
    }

    /// F32 `[n_embd, tokens.len()]` embeddings of `tokens`, as
    /// little-endian bytes (what the first stage's input takes).
    pub fn embed_bytes(&mut self, tokens: &[i32]) -> Result<Vec<u8>, ExecError> {
        Ok(le_bytes_f32(&self.embed(tokens)?))
    }

    /// F32 `[n_embd, tokens.len()]` embeddings of `tokens`.
    pub fn embed(&mut self, tokens: &[i32]) -> Result<Vec<f32>, ExecError> {
        let mut out = vec![0f32; self.n_embd * tokens.len()];
        for (&t, row) in tokens.iter().zip(out.chunks_exact_mut(self.n_embd)) {
            let i = usize::try_from(t)
                .ok()
                .filter(|&i| i < self.n_rows)
                .ok_or_else(|| {
                    ExecError::Weight(
                        TOKEN_EMBD.into(),
                        format!("token {t} is outside the table of {}", self.n_rows),
                    )
                })?;
            let src = &self.table[i * self.row_bytes..(i + 1) * self.row_bytes];
            ggml_sys::to_f32(self.ty, src, row)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod blocking_tests {
    use super::blocking;

    #[test]
    fn runs_outside_a_runtime() {
        assert_eq!(blocking(|| 2 + 2), 4);
    }

    #[tokio::test]
    async fn runs_on_a_current_thread_runtime() {
        assert_eq!(blocking(|| 3), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_tasks_go_on_while_it_runs() {
        let (tx, rx) = std::sync::mpsc::channel();
        let other = tokio::spawn(async move {
            tx.send(()).unwrap();
        });
        // Waits for a task that can only run on another worker thread.
        blocking(|| rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap());
        other.await.unwrap();
    }
}

#[cfg(test)]
mod device_check_tests {
    use super::{check_device_supports, ExecError};
    use crate::plan::DeviceKind;
    use ggml_sys::{ty, Context};

    /// Checks a graph with one flash attention of `head`-wide heads on a
    /// device of `kind`.
    fn check(head: i64, kind: DeviceKind) -> Result<(), ExecError> {
        let ctx = Context::new(
            Context::tensor_overhead() * 8 + Context::graph_overhead(16),
            true,
        )
        .unwrap();
        let q = ctx.new_tensor(ty::F32, &[head, 1, 2]).unwrap();
        let k = ctx.new_tensor(ty::F16, &[head, 64, 2]).unwrap();
        let v = ctx.new_tensor(ty::F16, &[head, 64, 2]).unwrap();
        let mask = ctx.new_tensor(ty::F16, &[64, 1]).unwrap();
        let out = ctx
            .flash_attn_ext(q, k, v, Some(mask), 0.125, 0.0, 0.0)
            .unwrap();
        let mut graph = ctx.new_graph(16).unwrap();
        graph.build_forward(out).unwrap();
        check_device_supports(&graph, kind, "gpu-box:50052", 1)
    }

    #[test]
    fn attention_a_device_kind_cannot_run_is_refused_before_sending() {
        // 16-wide heads: CUDA's flash attention has no kernel for them.
        let e = check(16, DeviceKind::CudaLike).unwrap_err();
        match &e {
            ExecError::UnsupportedOnDevice {
                endpoint,
                device,
                op,
                reason,
                ..
            } => {
                assert_eq!((endpoint.as_str(), *device), ("gpu-box:50052", 1));
                assert_eq!(op, "FLASH_ATTN_EXT");
                assert!(reason.contains("CUDA") && reason.contains("16"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string()
                .contains("cannot run on gpu-box:50052 device 1"),
            "{e}"
        );
        // The same graph runs on a CPU, and 64-wide heads run on CUDA.
        check(16, DeviceKind::Cpu).unwrap();
        check(64, DeviceKind::CudaLike).unwrap();
    }
}
