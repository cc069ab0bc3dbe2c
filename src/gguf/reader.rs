//! Parsing a GGUF file held in memory.
//!
//! Every length and count read from the file is checked against the named
//! limits in the parent module and against the bytes that remain before
//! anything is allocated for it. Arithmetic on file-provided numbers is
//! checked. Nothing here indexes a slice with an unchecked range.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::error::GgufError;
use super::metadata::Metadata;
use super::types::{GgmlType, TypeLookup};
use super::value::Value;
mod cursor;

use super::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_DIMS, MAX_KV_COUNT, MAX_TENSOR_COUNT, MAX_TENSOR_NAME_LEN,
};
use cursor::{read_header_version, read_metadata, Ctx, Cursor, MAX_PREALLOC};

/// Fewest bytes one key-value pair takes: key length, a one-byte key, type, a one-byte value.
const MIN_KV_SIZE: u64 = 8 + 1 + 4 + 1;
/// Fewest bytes one tensor info takes: name length, a one-byte name, n_dims,
/// no dims, type, offset.
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 1 + 4 + 4 + 8;

/// One tensor as described by its tensor info, checked against the file: its
/// shape fits its type, its data is aligned and lies inside the file, and it
/// overlaps no other tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    offset: u64,
    n_bytes: u64,
    data: Range<usize>,
}

impl TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tensor's element type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Dims in ggml order: `dims()[0]` is the contiguous row length (`ne[0]`).
    /// Between 0 and [`MAX_DIMS`] entries.
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Offset of the data from the start of the data section, as stored.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Offset of the data from the start of the file.
    pub fn file_offset(&self) -> u64 {
        self.data.start as u64
    }

    /// Bytes of tensor data.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Number of elements: the product of the dims (1 for a scalar).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes in one row (`dims()[0]` elements); a scalar counts as one element.
    pub fn row_bytes(&self) -> u64 {
        let ne0 = self.dims.first().copied().unwrap_or(1);
        // Checked when the file was parsed.
        self.ty.row_size(ne0).unwrap_or(0)
    }

    /// Byte range of the data in the file.
    pub fn data_range(&self) -> Range<usize> {
        self.data.clone()
    }
}

/// Everything a GGUF file declares, parsed and validated, without the bytes
/// themselves: use with the same bytes it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufContent {
    version: u32,
    alignment: u32,
    data_offset: u64,
    file_len: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl GgufContent {
    /// Parses and validates a whole GGUF file. Never panics; every problem is a
    /// [`GgufError`] naming what is wrong and where.
    pub fn parse(bytes: &[u8]) -> Result<GgufContent, GgufError> {
        GgufContent::parse_with(bytes, false)
    }

    /// Parses the header, metadata and tensor infos of a file that may end
    /// before its tensor data (a header saved on its own: enough for
    /// planning and simulating). Everything [`GgufContent::parse`] checks is
    /// checked, except that the data lies inside `bytes`; tensors still may
    /// not overlap. [`GgufContent::tensor_data`] of a tensor past the end is
    /// `None`.
    pub fn parse_header(bytes: &[u8]) -> Result<GgufContent, GgufError> {
        GgufContent::parse_with(bytes, true)
    }

    fn parse_with(bytes: &[u8], header_only: bool) -> Result<GgufContent, GgufError> {
        let mut cur = Cursor { buf: bytes, pos: 0 };
        let version = read_header_version(&mut cur)?;
        let n_tensors = cur.count(
            "tensor count",
            MAX_TENSOR_COUNT,
            MIN_TENSOR_INFO_SIZE,
            Ctx::Header,
        )?;
        let n_kv = cur.count("key-value count", MAX_KV_COUNT, MIN_KV_SIZE, Ctx::Header)?;

        let metadata = read_metadata(&mut cur, n_kv)?;
        let alignment = alignment_of(&metadata)?;
        let infos = read_tensor_infos(&mut cur, n_tensors, alignment)?;

        // With no tensors there is no data section to align.
        let header_end = cur.pos as u64;
        let data_offset = if infos.is_empty() {
            header_end
        } else {
            align_up(header_end, alignment)
        };
        let file_len = bytes.len() as u64;
        // A header on its own stands for a file as long as its data needs.
        let placed_len = if header_only {
            u64::try_from(usize::MAX).unwrap_or(u64::MAX)
        } else {
            file_len
        };
        if data_offset > placed_len {
            return Err(GgufError::DataPastEnd {
                data_offset,
                file_len,
            });
        }

        let tensors = place_tensors(infos, data_offset, placed_len)?;
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufContent {
            version,
            alignment,
            data_offset,
            file_len,
            metadata,
            tensors,
            by_name,
        })
    }

    /// The GGUF version from the header (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data: `general.alignment`, or [`DEFAULT_ALIGNMENT`].
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Length of the file that was parsed.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The key-value pairs, in file order.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor info called `name`, if there is one.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The data of `info` inside `bytes`, which must be the bytes this content
    /// was parsed from; `None` if `info` does not lie inside `bytes`.
    pub fn tensor_data<'b>(&self, bytes: &'b [u8], info: &TensorInfo) -> Option<&'b [u8]> {
        bytes.get(info.data_range())
    }
}

fn align_up(n: u64, alignment: u32) -> u64 {
    let a = u64::from(alignment);
    // `n` is at most the file length, far below u64::MAX - a.
    n.div_ceil(a) * a
}

fn alignment_of(metadata: &Metadata) -> Result<u32, GgufError> {
    match metadata.get(ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(&Value::U32(alignment)) if alignment.is_power_of_two() => Ok(alignment),
        Some(&Value::U32(alignment)) => Err(GgufError::BadAlignment { alignment }),
        Some(other) => Err(GgufError::AlignmentType {
            found: other.value_type(),
        }),
    }
}

/// A tensor info as read, before its data is placed in the file.
struct RawTensor {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    offset: u64,
    n_bytes: u64,
}

fn read_tensor_infos(
    cur: &mut Cursor<'_>,
    n_tensors: u64,
    alignment: u32,
) -> Result<Vec<RawTensor>, GgufError> {
    let reserve = n_tensors.min(MAX_PREALLOC) as usize;
    let mut out: Vec<RawTensor> = Vec::with_capacity(reserve);
    let mut seen: HashSet<String> = HashSet::with_capacity(reserve);
    for index in 0..n_tensors {
        let name_offset = cur.offset();
        let name = cur.string(MAX_TENSOR_NAME_LEN, Ctx::TensorInfo(index, None))?;
        if name.is_empty() {
            return Err(GgufError::EmptyTensorName {
                index,
                offset: name_offset,
            });
        }
        if seen.contains(&name) {
            return Err(GgufError::DuplicateTensor { name, index });
        }
        let raw = read_tensor_info_body(cur, index, name, alignment)?;
        seen.insert(raw.name.clone());
        out.push(raw);
    }
    Ok(out)
}

fn read_tensor_info_body(
    cur: &mut Cursor<'_>,
    index: u64,
    name: String,
    alignment: u32,
) -> Result<RawTensor, GgufError> {
    let ctx = Ctx::TensorInfo(index, Some(&name));
    let n_dims = cur.u32(ctx)?;
    if n_dims as usize > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            tensor: name,
            n_dims,
            max: MAX_DIMS,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.u64(ctx)?);
    }
    let type_id = cur.u32(ctx)?;
    let offset = cur.u64(ctx)?;
    let ty = match GgmlType::from_id(type_id) {
        TypeLookup::Known(ty) => ty,
        TypeLookup::Removed(removed) => {
            return Err(GgufError::RemovedTensorType {
                tensor: name,
                type_id,
                type_name: removed.name,
            })
        }
        TypeLookup::Unknown(type_id) => {
            return Err(GgufError::UnknownTensorType {
                tensor: name,
                type_id,
            })
        }
    };
    let n_bytes = match ty.byte_size(&dims) {
        Ok(n) => n,
        Err(source) => {
            return Err(GgufError::BadShape {
                tensor: name,
                ty,
                dims,
                source,
            })
        }
    };
    if offset % u64::from(alignment) != 0 {
        return Err(GgufError::MisalignedTensor {
            tensor: name,
            offset,
            alignment,
        });
    }
    Ok(RawTensor {
        name,
        ty,
        dims,
        offset,
        n_bytes,
    })
}

/// Places each tensor's data in the file and checks that it lies inside the
/// file and overlaps no other tensor.
fn place_tensors(
    raw: Vec<RawTensor>,
    data_offset: u64,
    file_len: u64,
) -> Result<Vec<TensorInfo>, GgufError> {
    let mut tensors = Vec::with_capacity(raw.len());
    for t in raw {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(GgufError::TensorPastEnd {
                tensor: t.name,
                start: data_offset.saturating_add(t.offset),
                end: u64::MAX,
                file_len,
            });
        };
        if end > file_len {
            return Err(GgufError::TensorPastEnd {
                tensor: t.name,
                start,
                end,
                file_len,
            });
        }
        // end <= file_len, which came from a slice length.
        let data = start as usize..end as usize;
        tensors.push(TensorInfo {
            name: t.name,
            ty: t.ty,
            dims: t.dims,
            offset: t.offset,
            n_bytes: t.n_bytes,
            data,
        });
    }

    let mut order: Vec<usize> = (0..tensors.len())
        .filter(|&i| tensors[i].n_bytes > 0)
        .collect();
    order.sort_by_key(|&i| tensors[i].data.start);
    for pair in order.windows(2) {
        let (a, b) = (&tensors[pair[0]], &tensors[pair[1]]);
        if a.data.end > b.data.start {
            return Err(GgufError::TensorOverlap {
                tensor: b.name.clone(),
                start: b.data.start as u64,
                end: b.data.end as u64,
                other: a.name.clone(),
                other_start: a.data.start as u64,
                other_end: a.data.end as u64,
            });
        }
    }
    Ok(tensors)
}
