//! What a model costs in device memory: weights per layer, the KV cache, and
//! the compute buffers, for one context size and batch size.
//!
//! The compute buffers come from the stage graphs themselves, measured by
//! `graph::measure` and handed in with [`ModelCost::with_measured`] (the
//! planner stays free of ggml and of I/O). Without a measure, a formula
//! ([`compute_estimate`]) stands in: an upper bound, kept for costs built
//! from parts.
//!
//! Everything here is counted in bytes before alignment; [`super::plan`]
//! rounds each tensor up to the alignment of the device it lands on.

use serde::Serialize;

use crate::gguf::llama::limits::MAX_LAYERS;
use crate::gguf::llama::{keys, layer_index, LlamaHparams};
use crate::gguf::{Gguf, GgufError, TensorInfo};

use super::{PlanError, PlanOptions};

/// The input embedding. Its lookup runs on the coordinator, reading the
/// mapped file, so it costs the servers nothing, unless the output is tied
/// to it.
pub const TOKEN_EMBD: &str = "token_embd.weight";
/// The final norm, on the device of the last stage.
pub const OUTPUT_NORM: &str = "output_norm.weight";
/// The output projection, on the device of the last stage; when a file has
/// none, the output is tied to [`TOKEN_EMBD`].
pub const OUTPUT: &str = "output.weight";

/// Whether `name` holds routed experts' weights (every expert of a layer
/// stacked in one tensor: `blk.N.ffn_{gate,up,down,gate_up}_exps.weight`,
/// llama.cpp's names).
pub fn is_expert_tensor(name: &str) -> bool {
    name.ends_with("_exps.weight")
}

/// Bytes per element of the KV cache (f16).
pub const KV_ELEMENT_BYTES: u64 = 2;
/// Bytes per element of activations (f32).
pub const ACTIVATION_BYTES: u64 = 4;
/// Added to every compute-buffer estimate for the small tensors the formula
/// leaves out (positions, norms' scratch, per-tensor alignment padding).
pub const COMPUTE_SLACK: u64 = 1 << 20;
/// Alignment the compute figures are measured at: ggml's CPU buffers
/// (`TENSOR_ALIGNMENT` in ggml-impl.h; `ggml_sys::CPU_BUFFER_ALIGNMENT`,
/// which a test keeps equal). Written here so the planner builds without
/// ggml (the fuzz targets).
pub const MEASURED_ALIGNMENT: u64 = 32;

/// The dimensions the memory estimates depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelShape {
    /// Number of transformer layers.
    pub n_layer: u32,
    /// Width of the hidden state.
    pub n_embd: u32,
    /// Width of the feed-forward hidden layer.
    pub n_ff: u32,
    /// Number of attention (query) heads.
    pub n_head: u32,
    /// Number of key/value heads.
    pub n_head_kv: u32,
    /// Size of one attention head.
    pub head_dim: u32,
    /// Vocabulary size (the width of the logits).
    pub n_vocab: u32,
}

impl From<&LlamaHparams> for ModelShape {
    fn from(hp: &LlamaHparams) -> ModelShape {
        ModelShape {
            n_layer: hp.n_layer,
            n_embd: hp.n_embd,
            n_ff: hp.n_ff,
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hp.head_dim,
            n_vocab: hp.n_vocab,
        }
    }
}

impl ModelShape {
    /// Width of K and V rows: `n_head_kv * head_dim`.
    pub fn n_embd_kv(&self) -> u64 {
        u64::from(self.n_head_kv) * u64::from(self.head_dim)
    }
}

/// A named tensor and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorCost {
    /// The tensor's name.
    pub name: String,
    /// Its data size in bytes, before alignment.
    pub bytes: u64,
}

/// The model's weights, sorted by where they must go.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ModelWeights {
    /// Byte size of each tensor of each layer (`blk.N.*`), indexed by layer.
    pub layers: Vec<Vec<u64>>,
    /// Byte size of each routed-expert tensor of each layer (a subset of
    /// `layers`, for showing how much of a layer its experts are), indexed
    /// by layer; empty for a dense model.
    pub experts: Vec<Vec<u64>>,
    /// Tensors outside any layer that every stage needs (anything not
    /// [`TOKEN_EMBD`], [`OUTPUT_NORM`] or [`OUTPUT`], e.g. llama 3's
    /// `rope_freqs.weight`, which every layer reads). Counted on every stage:
    /// conservative for files with tensors no stage uses.
    pub shared: Vec<TensorCost>,
    /// The output norm and the output matrix: on the device of the last stage.
    pub output: Vec<TensorCost>,
    /// True when the file has no [`OUTPUT`] and the output matrix in
    /// `output` is [`TOKEN_EMBD`].
    pub output_tied: bool,
    /// Bytes of [`TOKEN_EMBD`], which stays with the coordinator.
    pub input_bytes: u64,
}

impl ModelWeights {
    /// Sorts `tensors` of a model with `n_layer` layers. A `blk.N.` tensor
    /// with `N >= n_layer` is [`GgufError::LayerOutOfRange`]; a model with
    /// neither [`OUTPUT`] nor [`TOKEN_EMBD`] is [`PlanError::MissingOutput`];
    /// `n_layer` above [`MAX_LAYERS`] is refused before the per-layer table
    /// is allocated.
    pub fn from_tensors(tensors: &[TensorInfo], n_layer: u32) -> Result<ModelWeights, PlanError> {
        if n_layer > MAX_LAYERS {
            return Err(GgufError::HyperparameterOverLimit {
                key: keys::BLOCK_COUNT.to_owned(),
                value: u64::from(n_layer),
                max: u64::from(MAX_LAYERS),
            }
            .into());
        }
        let mut w = ModelWeights {
            layers: vec![Vec::new(); n_layer as usize],
            ..ModelWeights::default()
        };
        let mut has_output = false;
        let mut token_embd = None;
        for t in tensors {
            let cost = || TensorCost {
                name: t.name().to_owned(),
                bytes: t.n_bytes(),
            };
            if let Some(layer) = layer_index(t.name()) {
                let slot = usize::try_from(layer)
                    .ok()
                    .and_then(|i| w.layers.get_mut(i))
                    .ok_or_else(|| GgufError::LayerOutOfRange {
                        tensor: t.name().to_owned(),
                        layer,
                        n_layer,
                    })?;
                slot.push(t.n_bytes());
                if is_expert_tensor(t.name()) {
                    if w.experts.is_empty() {
                        w.experts = vec![Vec::new(); n_layer as usize];
                    }
                    // The index was checked against the layers just above.
                    w.experts[layer as usize].push(t.n_bytes());
                }
                continue;
            }
            match t.name() {
                TOKEN_EMBD => {
                    w.input_bytes = t.n_bytes();
                    token_embd = Some(cost());
                }
                OUTPUT => {
                    has_output = true;
                    w.output.push(cost());
                }
                OUTPUT_NORM => w.output.push(cost()),
                _ => w.shared.push(cost()),
            }
        }
        if !has_output {
            w.output.push(token_embd.ok_or(PlanError::MissingOutput)?);
            w.output_tied = true;
        }
        Ok(w)
    }

    /// Unaligned weight bytes of layer `l` (0 past the last layer).
    pub fn layer_bytes(&self, l: u32) -> u64 {
        self.layers.get(l as usize).map_or(0, |t| t.iter().sum())
    }
}

/// Everything the planner needs to know about a model at one context and
/// batch size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelCost {
    /// The model's dimensions.
    pub shape: ModelShape,
    /// The model's weights, sorted by where they go.
    pub weights: ModelWeights,
    /// KV cells: the context of all sequences together (llama.cpp's unified
    /// cache: `n_seq_max` sequences share `n_ctx` cells).
    pub n_ctx: u32,
    /// Tokens per forward pass: the requested batch, at most `n_ctx`.
    pub n_batch: u32,
    /// Sequences that share the KV cache (does not change any size here).
    pub n_seq_max: u32,
    /// One of K or V of one layer: [`kv_tensor_bytes`].
    pub kv_tensor_bytes: u64,
    /// Compute buffer of one stage by the formula, [`compute_estimate`]:
    /// used only when [`ModelCost::measured`] is `None`.
    pub compute_bytes: u64,
    /// The logits buffer, on the device of the last stage:
    /// `n_vocab * n_batch * 4`. Only used with the formula.
    pub logits_bytes: u64,
    /// The compute buffers measured on the stage graphs; when present they
    /// replace [`compute_estimate`] and `logits_bytes`.
    pub measured: Option<MeasuredCompute>,
    /// Position of each KV cell (F32), which every stage of a model with
    /// windowed layers keeps beside its cache; 0 for other models.
    pub cell_pos_bytes: u64,
}

/// One stage graph's compute buffer, measured at ggml's CPU alignment
/// (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StageCompute {
    /// What ggml's graph allocator reserves for it (as llama.cpp would).
    pub ggml_bytes: u64,
    /// What our own placement of its intermediates needs (what the stage
    /// uses at run time).
    pub layout_bytes: u64,
    /// Intermediates placed: each may grow by the difference when a
    /// device aligns more coarsely than 32 bytes.
    pub tensors: u64,
}

impl StageCompute {
    /// The buffer to reserve: enough for both placements, so that the run
    /// time layout always fits in what the plan counted.
    pub fn bytes(&self) -> u64 {
        self.ggml_bytes.max(self.layout_bytes)
    }

    /// [`StageCompute::bytes`] on a device with `alignment`.
    pub fn bytes_at(&self, alignment: u64) -> u64 {
        let extra = alignment.saturating_sub(MEASURED_ALIGNMENT);
        self.bytes()
            .saturating_add(self.tensors.saturating_mul(extra))
            .div_ceil(alignment.max(1))
            .saturating_mul(alignment.max(1))
    }
}

/// The compute buffers of the two kinds of stage, at the worst-case step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MeasuredCompute {
    /// A stage without the model's last layer.
    pub stage: StageCompute,
    /// The stage with the last layer and the output (logits included).
    pub head: StageCompute,
}

/// Byte offsets of a remote stage's small inputs inside its input buffer,
/// sized for the largest step: positions I32, KV cells I64, mask F16
/// `[n_ctx, n_batch]`, output rows I32, each starting at the device's
/// alignment. The hidden state is not here: it opens the compute buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLayout {
    /// Offset of the positions.
    pub pos: u64,
    /// Offset of the KV cell indices.
    pub kv_idx: u64,
    /// Offset of the mask.
    pub mask: u64,
    /// Offset of the output rows.
    pub out_ids: u64,
    /// Size of the buffer.
    pub size: u64,
}

impl InputLayout {
    /// The layout for `kv_size` cells and `n_batch` tokens on a device with
    /// `align` (0 is taken as 1).
    pub fn new(kv_size: u64, n_batch: u64, align: u64) -> Self {
        let align = align.max(1);
        let up = |n: u64| n.saturating_add(align - 1) / align * align;
        let pos = 0;
        let kv_idx = up(pos + 4 * n_batch);
        let mask = up(kv_idx + 8 * n_batch);
        let out_ids = up(mask + 2 * kv_size * n_batch);
        let size = up(out_ids + 4 * n_batch);
        InputLayout {
            pos,
            kv_idx,
            mask,
            out_ids,
            size,
        }
    }
}

impl ModelCost {
    /// Reads the hyperparameters and tensor sizes of a llama-family file,
    /// checking the hyperparameters against the tensors first.
    pub fn from_gguf(gguf: &Gguf, opts: &PlanOptions) -> Result<ModelCost, PlanError> {
        let hp = LlamaHparams::from_metadata(gguf.metadata_map())?;
        hp.check_tensors(gguf.tensors())?;
        let weights = ModelWeights::from_tensors(gguf.tensors(), hp.n_layer)?;
        let mut cost = ModelCost::from_parts(ModelShape::from(&hp), weights, opts)?;
        // A family that windows, with a window set: see `graph::window`.
        let windowed = crate::arch::lookup(&hp.architecture).is_some_and(|a| a.sliding_window)
            && gguf
                .metadata_map()
                .get_opt::<u32>(&keys::arch_key(
                    &hp.architecture,
                    "attention.sliding_window",
                ))
                .ok()
                .flatten()
                .is_some_and(|w| w > 0);
        if windowed {
            cost.cell_pos_bytes = 4 * u64::from(cost.n_ctx);
        }
        Ok(cost)
    }

    /// A cost from its parts, with `opts`' context, batch and sequence count
    /// (each at least 1).
    pub fn from_parts(
        shape: ModelShape,
        weights: ModelWeights,
        opts: &PlanOptions,
    ) -> Result<ModelCost, PlanError> {
        if opts.n_ctx == 0 {
            return Err(PlanError::ZeroContext);
        }
        if opts.n_batch == 0 {
            return Err(PlanError::ZeroBatch);
        }
        if opts.n_seq_max == 0 {
            return Err(PlanError::ZeroSequences);
        }
        if weights.layers.len() != shape.n_layer as usize {
            return Err(PlanError::LayerCountMismatch {
                n_layer: shape.n_layer,
                layers: weights.layers.len(),
            });
        }
        let n_batch = opts.n_batch.min(opts.n_ctx);
        Ok(ModelCost {
            shape,
            weights,
            n_ctx: opts.n_ctx,
            n_batch,
            n_seq_max: opts.n_seq_max,
            kv_tensor_bytes: kv_tensor_bytes(&shape, opts.n_ctx),
            compute_bytes: compute_estimate(&shape, opts.n_ctx, n_batch),
            logits_bytes: saturating_product(&[
                u64::from(shape.n_vocab),
                u64::from(n_batch),
                ACTIVATION_BYTES,
            ]),
            measured: None,
            cell_pos_bytes: 0,
        })
    }

    /// The same cost with the compute buffers measured on the stage graphs
    /// (`graph::measure::measure_model`) instead of the formula.
    pub fn with_measured(mut self, measured: MeasuredCompute) -> ModelCost {
        self.measured = Some(measured);
        self
    }

    /// Compute buffer and input buffer of one stage on a device with
    /// `alignment`; `last` for the stage with the output.
    pub fn stage_compute_bytes(&self, alignment: u64, last: bool) -> u64 {
        let alignment = alignment.max(1);
        let align = |b: u64| b.div_ceil(alignment).saturating_mul(alignment);
        match &self.measured {
            Some(m) => {
                let graph = if last { m.head } else { m.stage };
                let inputs =
                    InputLayout::new(u64::from(self.n_ctx), u64::from(self.n_batch), alignment);
                graph.bytes_at(alignment).saturating_add(inputs.size)
            }
            None => {
                let logits = if last { self.logits_bytes } else { 0 };
                align(self.compute_bytes.saturating_add(logits))
            }
        }
    }

    /// Number of layers of the model.
    pub fn n_layer(&self) -> u32 {
        self.shape.n_layer
    }

    /// KV bytes of one layer, K and V together, before alignment.
    pub fn kv_layer_bytes(&self) -> u64 {
        self.kv_tensor_bytes.saturating_mul(2)
    }

    /// Unaligned bytes of everything but the input embedding: all layers'
    /// weights and KV, shared and output tensors once, one compute buffer and
    /// the logits. A lower bound for what a cluster needs in total.
    pub fn total_bytes(&self) -> u64 {
        let w = &self.weights;
        let layers: u64 = (0..self.n_layer()).map(|l| w.layer_bytes(l)).sum();
        let kv = self
            .kv_layer_bytes()
            .saturating_mul(u64::from(self.n_layer()));
        let other: u64 = w.shared.iter().chain(&w.output).map(|t| t.bytes).sum();
        layers
            .saturating_add(kv)
            .saturating_add(other)
            .saturating_add(self.stage_compute_bytes(1, true))
    }
}

/// One of K or V of one layer, f16: `n_ctx * n_head_kv * head_dim * 2` bytes.
///
/// The cache is unified as in llama.cpp: all sequences share `n_ctx` cells,
/// so the sequence count does not multiply it.
pub fn kv_tensor_bytes(shape: &ModelShape, n_ctx: u32) -> u64 {
    saturating_product(&[u64::from(n_ctx), shape.n_embd_kv(), KV_ELEMENT_BYTES])
}

/// Compute buffer of one stage for a batch of `n_batch` tokens and `n_ctx` KV
/// cells, f32 throughout (`B = n_batch`, `C = n_ctx`, `H = n_head`):
///
/// ```text
/// 4 * ( B * n_embd * 6          residual in, norm, attention out, merged heads, FFN norm, FFN out
///     + B * H * head_dim        Q
///     + B * n_embd_kv * 2       new K and V before they are copied into the cache
///     + B * n_ff * 3            gate, up, gated product
///     + B * C * H * 2           attention scores and their softmax
///     + B * C )                 the causal mask
/// + COMPUTE_SLACK (1 MiB)
/// ```
///
/// A graph allocator reuses memory between layers, so this is per stage, not
/// per layer. It is the peak of one layer with every intermediate of the
/// layer alive at once, so it is an overestimate. The logits of the last
/// stage are counted apart ([`ModelCost::logits_bytes`]).
pub fn compute_estimate(shape: &ModelShape, n_ctx: u32, n_batch: u32) -> u64 {
    let b = u128::from(n_batch);
    let c = u128::from(n_ctx);
    let h = u128::from(shape.n_head);
    let elements = b * u128::from(shape.n_embd) * 6
        + b * h * u128::from(shape.head_dim)
        + b * u128::from(shape.n_embd_kv()) * 2
        + b * u128::from(shape.n_ff) * 3
        + b * c * h * 2
        + b * c;
    let bytes = elements * u128::from(ACTIVATION_BYTES) + u128::from(COMPUTE_SLACK);
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

fn saturating_product(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |acc, &f| acc.saturating_mul(f))
}
