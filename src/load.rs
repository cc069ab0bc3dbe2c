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

/// How much of an upload went over the network and how much the server's
/// cache answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Bytes of weights placed.
    pub bytes: u64,
    /// Bytes sent over the network.
    pub sent: u64,
    /// Bytes the server had in its cache (hash path).
    pub cached: u64,
}

fn align_up(n: u64, a: u64) -> u64 {
    let a = a.max(1);
    n.div_ceil(a) * a
}

/// Allocates buffers on `device` of the server behind `client` (each at most
/// the server's largest buffer) and uploads the weights `names` from `g`,
/// streaming each straight from the mapped file. Weights over 10 MiB go by the
/// hash path, so a server started with a cache skips the ones it has.
/// `progress` is called with the bytes of each weight once it is placed.
pub async fn upload_weights(
    client: &mut crate::rpc::RpcClient,
    device: u32,
    g: &crate::gguf::Gguf,
    names: &[String],
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(std::collections::HashMap<String, PlacedWeight>, UploadStats), UploadError> {
    use crate::rpc::Upload;
    let endpoint = client.addr().to_string();
    let rpc = |source| UploadError::Rpc {
        endpoint: endpoint.clone(),
        source,
    };
    let align = client.alignment(device).await.map_err(rpc)?;
    let max = match client.max_size(device).await.map_err(rpc)? {
        0 => u64::MAX,
        m => m,
    };
    // Sizes the device needs (a GPU may pad quantized rows).
    let mut items = Vec::with_capacity(names.len());
    for name in names {
        let info = g
            .tensor(name)
            .ok_or_else(|| UploadError::Missing(name.clone()))?;
        let probe = weight_tensor(info, 1, 0, 0)?;
        let size = client
            .get_alloc_size(device, &probe, &[])
            .await
            .map_err(rpc)?
            .max(info.n_bytes());
        if size > max {
            return Err(UploadError::TooLarge {
                endpoint: endpoint.clone(),
                name: name.clone(),
                size,
                max,
            });
        }
        items.push((info, size));
    }
    // Pack into as few buffers as the size limit allows.
    let mut groups: Vec<(u64, Vec<(usize, u64)>)> = Vec::new();
    for (i, (_, size)) in items.iter().enumerate() {
        let fits = groups.last().is_some_and(|(used, _)| {
            align_up(*used, align)
                .checked_add(*size)
                .is_some_and(|e| e <= max)
        });
        if !fits {
            groups.push((0, Vec::new()));
        }
        let (used, members) = groups.last_mut().expect("a group was just pushed");
        let off = align_up(*used, align);
        members.push((i, off));
        *used = off + size;
    }
    let mut placed = std::collections::HashMap::new();
    let mut stats = UploadStats::default();
    for (used, members) in groups {
        let buf = client
            .alloc_buffer(device, used.max(1))
            .await
            .map_err(rpc)?;
        for (i, off) in members {
            let (info, _) = items[i];
            let wire = weight_tensor(info, 1, buf.remote_ptr, buf.base + off)?;
            let data = g.tensor_data(info);
            match client
                .set_tensor_cached(&wire, info.n_bytes(), 0, data)
                .await
                .map_err(rpc)?
            {
                Upload::Sent => stats.sent += info.n_bytes(),
                Upload::Cached => stats.cached += info.n_bytes(),
            }
            stats.bytes += info.n_bytes();
            progress(info.n_bytes());
            placed.insert(
                info.name().to_string(),
                PlacedWeight {
                    wire,
                    nbytes: info.n_bytes(),
                },
            );
        }
    }
    // Uploads are pipelined; make sure the server took them all.
    client.sync().await.map_err(rpc)?;
    Ok((placed, stats))
}
