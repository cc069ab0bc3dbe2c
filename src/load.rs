//! Placing model weights on servers: the wire description of a GGUF tensor
//! stored in a remote buffer.

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
pub fn weight_tensor(info: &TensorInfo, id: u64, buffer: u64, data: u64) -> Result<RpcTensor, WeightError> {
    let too_large = || WeightError::TooLarge(info.name().to_string());
    let mut t = RpcTensor {
        id,
        ty: info.ty().id(),
        buffer,
        data,
        ..RpcTensor::default()
    };
    let nb = contiguous_strides(info);
    for i in 0..4 {
        let ne = info.dims().get(i).copied().unwrap_or(1);
        t.ne[i] = u32::try_from(ne).map_err(|_| too_large())?;
        t.nb[i] = u32::try_from(nb[i]).map_err(|_| too_large())?;
    }
    t.set_name(info.name()).map_err(|_| WeightError::Name(info.name().to_string()))?;
    Ok(t)
}
