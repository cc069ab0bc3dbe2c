//! Why there is no plan.

use std::ops::Range;

use super::human_bytes;
#[cfg(doc)]
use super::{DeviceSpec, ModelCost, ModelShape, ModelWeights, PlanOptions, Stage, Strategy};
use crate::gguf::GgufError;

/// Why there is no plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The model's hyperparameters or tensors could not be read.
    #[error("reading the model: {0}")]
    Gguf(#[from] GgufError),
    /// The model has neither `output.weight` nor `token_embd.weight`.
    #[error("the model has neither output.weight nor token_embd.weight to compute logits with")]
    MissingOutput,
    /// The model has zero layers.
    #[error("the model has no layers")]
    NoLayers,
    /// The weights given to [`ModelCost::from_parts`] have a different
    /// number of layers from the shape.
    #[error("the model declares {n_layer} layers but weights were given for {layers}")]
    LayerCountMismatch {
        /// Layers in the [`ModelShape`].
        n_layer: u32,
        /// Layers in the [`ModelWeights`].
        layers: usize,
    },
    /// [`PlanOptions::n_ctx`] is 0.
    #[error("the context size must be at least 1 token")]
    ZeroContext,
    /// [`PlanOptions::n_batch`] is 0.
    #[error("the batch size must be at least 1 token")]
    ZeroBatch,
    /// [`PlanOptions::n_seq_max`] is 0.
    #[error("the number of sequences must be at least 1")]
    ZeroSequences,
    /// More local layers were asked for than the model has.
    #[error("{local_layers} local layers asked for, but the model has only {n_layer}")]
    TooManyLocalLayers {
        /// [`PlanOptions::local_layers`].
        local_layers: u32,
        /// Layers in the model.
        n_layer: u32,
    },
    /// Some layers are not local but no devices were given.
    #[error("no rpc-server devices to place {layers} layers on (give servers, or run every layer locally)")]
    NoDevices {
        /// Layers that need a device.
        layers: u32,
    },
    /// Every device given is of a kind that cannot run the model.
    #[error("no device given can run this model: {reasons}")]
    NoDeviceRuns {
        /// Each device and why, `; `-separated.
        reasons: String,
    },
    /// A [`Strategy::Split`] gives layers to a device that cannot run them.
    #[error("the split gives {layers} layers to {endpoint} device {device}, which cannot run them: {reason}")]
    SplitOnExcluded {
        /// Its server.
        endpoint: String,
        /// Its index there.
        device: u32,
        /// Layers the split gives it.
        layers: u32,
        /// Why it cannot run them.
        reason: String,
    },
    /// A [`Strategy::Split`] has a different number of counts from the devices.
    #[error("the split gives {given} layer counts but there are {devices} devices: give one count per device, in order")]
    SplitCount {
        /// Counts in the split.
        given: usize,
        /// Devices given.
        devices: usize,
    },
    /// A [`Strategy::Split`]'s counts do not add up to the layers that are not local.
    #[error("the split places {sum} layers but {expected} layers need a server ({n_layer} layers, {local_layers} local)")]
    SplitSum {
        /// Sum of the split's counts.
        sum: u64,
        /// Layers that need a device: `n_layer - local_layers`.
        expected: u32,
        /// Layers in the model.
        n_layer: u32,
        /// [`PlanOptions::local_layers`].
        local_layers: u32,
    },
    /// A device's stage needs more memory than the device has free, less the reserve.
    #[error(
        "{endpoint} device {device} is short by {}: layers {} need {} there \
         but it has {} free after the {} reserve (use a smaller context, more or larger devices, or another split)",
        human_bytes(*short_by), layer_range(layers), human_bytes(*needed), human_bytes(*available), human_bytes(*reserve)
    )]
    DoesNotFit {
        /// `host:port` of the device's server.
        endpoint: String,
        /// Index of the device on its server.
        device: u32,
        /// The layers of the stage.
        layers: Range<u32>,
        /// Bytes the stage needs ([`Stage::needed_bytes`]).
        needed: u64,
        /// Bytes free on the device less the reserve.
        available: u64,
        /// `needed - available`.
        short_by: u64,
        /// The reserve in bytes ([`PlanOptions::reserve`]).
        reserve: u64,
    },
    /// The local stage needs more memory than [`PlanOptions::local_free`], less the reserve.
    #[error(
        "the coordinator's CPU is short by {}: local layers {} need {} but it has {} free after the {} reserve (use fewer local layers)",
        human_bytes(*short_by), layer_range(layers), human_bytes(*needed), human_bytes(*available), human_bytes(*reserve)
    )]
    LocalDoesNotFit {
        /// The local layers.
        layers: Range<u32>,
        /// Bytes the local stage needs ([`Stage::needed_bytes`]).
        needed: u64,
        /// The coordinator's free memory less the reserve.
        available: u64,
        /// `needed - available`.
        short_by: u64,
        /// The reserve in bytes ([`PlanOptions::reserve`]).
        reserve: u64,
    },
    /// One buffer a stage needs (a layer's weights, a layer's KV cache, the
    /// compute buffer or the output tensors) is larger than the device's
    /// largest buffer.
    #[error(
        "{endpoint} device {device} cannot hold {what}: it needs one buffer of {} but the device's largest buffer is {}",
        human_bytes(*bytes), human_bytes(*max_size)
    )]
    BufferTooLarge {
        /// `host:port` of the device's server.
        endpoint: String,
        /// Index of the device on its server.
        device: u32,
        /// What the buffer holds, e.g. `the weights of layer 3`.
        what: String,
        /// Size of the buffer in bytes.
        bytes: u64,
        /// The device's largest buffer in bytes ([`DeviceSpec::max_size`]).
        max_size: u64,
    },
}

/// `0-9 (10)`.
pub fn layer_range(layers: &Range<u32>) -> String {
    match layers.len() {
        0 => "none (0)".to_owned(),
        n => format!("{}-{} ({n})", layers.start, layers.end - 1),
    }
}
