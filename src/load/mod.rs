//! Placing model weights on servers: the wire description of a GGUF tensor
//! stored in a remote buffer, each tensor's hash (what a server's cache
//! knows it by), and the upload itself.

pub mod hashes;
mod upload;

pub use hashes::TensorHashes;
pub use upload::{upload_weights, UploadStats};

use shardline_protocol::RpcTensor;

use crate::gguf::TensorInfo;

/// Byte strides of a contiguous tensor of `info`'s type and shape.
pub fn contiguous_strides(info: &TensorInfo) -> [u64; 4] {
    let ty = info.ty();
    let mut ne = [1u64; 4];
    for (d, &n) in ne.iter_mut().zip(info.dims()) {
        *d = n;
    }
    let mut nb = [0u64; 4];
    nb[0] = u64::from(ty.type_size());
    nb[1] = info.row_bytes();
    nb[2] = nb[1] * ne[1];
    nb[3] = nb[2] * ne[2];
    nb
}

/// Why a weight cannot be described on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightError {
    /// An extent or stride exceeds the wire format's 32 bits.
    #[error("tensor '{0}' is too large for the RPC wire format (an extent or stride exceeds u32)")]
    TooLarge(String),
    /// The name does not fit in 63 bytes.
    #[error("tensor name '{0}' is longer than 63 bytes")]
    Name(String),
}

/// The wire description of weight `info` stored at absolute remote address
/// `data` inside buffer `buffer`, with message-local id `id`.
pub fn weight_tensor(
    info: &TensorInfo,
    id: u64,
    buffer: u64,
    data: u64,
) -> Result<RpcTensor, WeightError> {
    let too_large = || WeightError::TooLarge(info.name().to_string());
    let mut t = RpcTensor {
        id,
        ty: info.ty().id(),
        buffer,
        data,
        ..RpcTensor::default()
    };
    let nb = contiguous_strides(info);
    for (i, &stride) in nb.iter().enumerate() {
        let ne = info.dims().get(i).copied().unwrap_or(1);
        t.ne[i] = u32::try_from(ne).map_err(|_| too_large())?;
        t.nb[i] = u32::try_from(stride).map_err(|_| too_large())?;
    }
    t.set_name(info.name())
        .map_err(|_| WeightError::Name(info.name().to_string()))?;
    Ok(t)
}

/// A weight stored on a server.
#[derive(Debug, Clone)]
pub struct PlacedWeight {
    /// Its wire description (buffer, address, type, shape, strides, name).
    pub wire: RpcTensor,
    /// Its size in bytes.
    pub nbytes: u64,
}

/// Errors while uploading weights.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The model lacks a weight the stage needs.
    #[error("weight '{0}' is missing from the model")]
    Missing(String),
    /// A weight cannot be described on the wire.
    #[error(transparent)]
    Weight(#[from] WeightError),
    /// A share of the split output head names rows the output matrix does
    /// not have (or the file's data is short).
    #[error("share of the output head: {0}")]
    BadShare(String),
    /// One tensor is larger than the server's largest buffer.
    #[error(
        "weight '{name}' needs {size} bytes, more than the largest buffer ({max}) of {endpoint}"
    )]
    TooLarge {
        /// The server.
        endpoint: String,
        /// The weight.
        name: String,
        /// Its size.
        size: u64,
        /// The server's limit.
        max: u64,
    },
    /// The server failed.
    #[error("uploading to {endpoint}: {source}")]
    Rpc {
        /// The server.
        endpoint: String,
        /// What went wrong.
        source: crate::rpc::RpcError,
    },
}
