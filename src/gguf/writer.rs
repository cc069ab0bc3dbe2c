//! Writing GGUF files: metadata of every type, tensors padded to the
//! alignment, and a [`Layout`] that says where each field landed (tests use it
//! to corrupt one field at a time).
//!
//! Tensor data can be given as bytes or generated chunk by chunk while the file
//! is written, so large synthetic models never have to be held in memory.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use super::metadata::Metadata;
use super::types::{GgmlType, SizeError};
use super::value::{Array, Value};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, WRITE_VERSION};

/// Byte offset of the version field.
pub const VERSION_AT: usize = 4;
/// Byte offset of the tensor count.
pub const TENSOR_COUNT_AT: usize = 8;
/// Byte offset of the key-value count.
pub const KV_COUNT_AT: usize = 16;
/// Byte offset of the first key-value pair.
pub const FIRST_KV_AT: usize = 24;

/// Size of the chunks generated tensor data is produced in.
const GENERATE_CHUNK: usize = 1 << 20;

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Creating or writing the output failed.
    #[error("writing GGUF: {0}")]
    Io(#[from] io::Error),
    /// [`GgufWriter::set_alignment`] was given this, which is not a power of two.
    #[error("alignment {0} is not a power of two")]
    BadAlignment(u32),
    /// A tensor's shape does not fit its type (row length not a multiple of
    /// the block size, or the size overflows).
    #[error("tensor '{tensor}' of type {ty} with shape {dims:?}: {source}")]
    BadShape {
        /// The tensor's name.
        tensor: String,
        /// The tensor's type.
        ty: GgmlType,
        /// The dims given, in ggml order.
        dims: Vec<u64>,
        /// Why the size cannot be computed.
        #[source]
        source: SizeError,
    },
    /// A tensor's data bytes are not exactly the size its type and shape need.
    #[error("tensor '{tensor}' needs {expected} bytes of data, got {got}")]
    DataSize {
        /// The tensor's name.
        tensor: String,
        /// Bytes its type and shape need.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// A tensor with this name was already added.
    #[error("tensor '{0}' was added twice")]
    DuplicateTensor(String),
}

/// Fills one chunk of generated tensor data: called with the offset of the
/// chunk within the tensor's data, and the chunk (zeroed) to fill.
pub type ChunkFiller<'a> = Box<dyn FnMut(u64, &mut [u8]) + 'a>;

/// The data of a tensor to write.
pub enum TensorData<'a> {
    /// The bytes, exactly the tensor's size.
    Bytes(Cow<'a, [u8]>),
    /// Produced chunk by chunk while the file is written.
    Generate(ChunkFiller<'a>),
    /// All zeros: written as zeros, or skipped by
    /// [`GgufWriter::write_file_sparse`], so a model of tens of gigabytes
    /// takes no disk space (its shapes are what planner tests need).
    Zeros,
}

impl fmt::Debug for TensorData<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorData::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            TensorData::Generate(_) => f.write_str("Generate(..)"),
            TensorData::Zeros => f.write_str("Zeros"),
        }
    }
}

impl From<Vec<u8>> for TensorData<'_> {
    fn from(v: Vec<u8>) -> Self {
        TensorData::Bytes(Cow::Owned(v))
    }
}

impl<'a> From<&'a [u8]> for TensorData<'a> {
    fn from(v: &'a [u8]) -> Self {
        TensorData::Bytes(Cow::Borrowed(v))
    }
}

#[derive(Debug)]
struct PendingTensor<'a> {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    n_bytes: u64,
    data: TensorData<'a>,
}

/// Where one key-value pair landed in the written file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLayout {
    /// The key.
    pub key: String,
    /// The key's `u64` length prefix.
    pub key_at: usize,
    /// The `u32` value type.
    pub type_at: usize,
    /// The value (for a string, its length prefix; for an array, its element type).
    pub value_at: usize,
}

/// Where one tensor info and its data landed in the written file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    /// The tensor's name.
    pub name: String,
    /// The name's `u64` length prefix (the start of the tensor info).
    pub info_at: usize,
    /// The `u32` dimension count.
    pub n_dims_at: usize,
    /// The first `u64` dim.
    pub dims_at: usize,
    /// The `u32` ggml type id.
    pub type_at: usize,
    /// The `u64` offset into the data section.
    pub offset_at: usize,
    /// The data, from the start of the file.
    pub data_at: usize,
    /// Bytes of tensor data, without padding.
    pub n_bytes: u64,
}

/// Where everything landed in a written file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Each key-value pair, in file order.
    pub kvs: Vec<KvLayout>,
    /// Each tensor, in file order.
    pub tensors: Vec<TensorLayout>,
    /// Byte offset of the data section (the header's end, padded to the
    /// alignment when there are tensors).
    pub data_offset: usize,
    /// Length of the whole file in bytes, including the last tensor's padding.
    pub len: usize,
}

impl Layout {
    /// The layout of the pair with this key, if it was written.
    pub fn kv(&self, key: &str) -> Option<&KvLayout> {
        self.kvs.iter().find(|k| k.key == key)
    }

    /// The layout of the tensor with this name, if it was written.
    pub fn tensor(&self, name: &str) -> Option<&TensorLayout> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Builds a GGUF file: version 3 and alignment 32 unless set otherwise.
#[derive(Debug)]
pub struct GgufWriter<'a> {
    version: u32,
    alignment: u32,
    metadata: Metadata,
    tensors: Vec<PendingTensor<'a>>,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GgufWriter<'a> {
    /// A writer with no metadata or tensors, [`WRITE_VERSION`] and [`DEFAULT_ALIGNMENT`].
    pub fn new() -> Self {
        GgufWriter {
            version: WRITE_VERSION,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Metadata::new(),
            tensors: Vec::new(),
        }
    }

    /// The version number to put in the header. Any number is written as
    /// given (the layout is always v2/v3's), so tests can make files with
    /// versions a reader must reject.
    pub fn set_version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Aligns tensor data to `alignment` and records it as `general.alignment`.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<&mut Self, WriteError> {
        if !alignment.is_power_of_two() {
            return Err(WriteError::BadAlignment(alignment));
        }
        self.alignment = alignment;
        self.metadata.insert(ALIGNMENT_KEY, Value::U32(alignment));
        Ok(self)
    }

    /// Adds a key-value pair, or replaces the value of a key already added.
    /// A `general.alignment` that is a `u32` power of two also becomes the
    /// alignment used; any other `general.alignment` is written as given and
    /// changes nothing else (tests use that to write bad ones).
    pub fn add_kv(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        let key = key.into();
        let value = value.into();
        if key == ALIGNMENT_KEY {
            if let Value::U32(a) = value {
                if a.is_power_of_two() {
                    self.alignment = a;
                }
            }
        }
        self.metadata.insert(key, value);
        self
    }

    /// Adds every pair of `metadata`, in order.
    pub fn add_metadata(&mut self, metadata: &Metadata) -> &mut Self {
        for (k, v) in metadata.iter() {
            self.add_kv(k, v.clone());
        }
        self
    }

    /// Adds a tensor. `dims` are in ggml order (`dims[0]` is the row length).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[u64],
        data: impl Into<TensorData<'a>>,
    ) -> Result<&mut Self, WriteError> {
        let name = name.into();
        let data = data.into();
        let n_bytes = ty.byte_size(dims).map_err(|source| WriteError::BadShape {
            tensor: name.clone(),
            ty,
            dims: dims.to_vec(),
            source,
        })?;
        if let TensorData::Bytes(bytes) = &data {
            if bytes.len() as u64 != n_bytes {
                return Err(WriteError::DataSize {
                    tensor: name,
                    expected: n_bytes,
                    got: bytes.len() as u64,
                });
            }
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(WriteError::DuplicateTensor(name));
        }
        self.tensors.push(PendingTensor {
            name,
            ty,
            dims: dims.to_vec(),
            n_bytes,
            data,
        });
        Ok(self)
    }

    /// Writes the file. Generated tensor data is produced while writing.
    pub fn write_to(&mut self, out: impl Write) -> Result<Layout, WriteError> {
        self.write_with(out, |out, n| write_zeros(out, n))
    }

    /// Writes the file to `path`, leaving [`TensorData::Zeros`] data and
    /// padding as holes: a sparse file on file systems that have them.
    pub fn write_file_sparse(&mut self, path: impl AsRef<Path>) -> Result<Layout, WriteError> {
        use std::io::{Seek, SeekFrom};
        let file = std::fs::File::create(path)?;
        let mut out = io::BufWriter::new(file);
        let layout = self.write_with(&mut out, |out, n| {
            let n = i64::try_from(n).map_err(io::Error::other)?;
            out.seek(SeekFrom::Current(n)).map(|_| ())
        })?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        // Holes at the end do not extend a file: set its length.
        file.set_len(layout.len as u64)?;
        Ok(layout)
    }

    /// Writes the file with `skip` writing (or skipping) `n` zero bytes.
    fn write_with<W: Write>(
        &mut self,
        mut out: W,
        mut skip: impl FnMut(&mut W, u64) -> io::Result<()>,
    ) -> Result<Layout, WriteError> {
        let align = u64::from(self.alignment);
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        put_u32(&mut head, self.version);
        put_u64(&mut head, self.tensors.len() as u64);
        put_u64(&mut head, self.metadata.len() as u64);

        let mut kvs = Vec::with_capacity(self.metadata.len());
        for (key, value) in self.metadata.iter() {
            let key_at = head.len();
            put_str(&mut head, key);
            let type_at = head.len();
            put_u32(&mut head, value.value_type().id());
            let value_at = head.len();
            put_value(&mut head, value);
            kvs.push(KvLayout {
                key: key.to_owned(),
                key_at,
                type_at,
                value_at,
            });
        }

        let mut tensors = Vec::with_capacity(self.tensors.len());
        let mut offset = 0u64;
        for t in &self.tensors {
            let info_at = head.len();
            put_str(&mut head, &t.name);
            let n_dims_at = head.len();
            put_u32(&mut head, t.dims.len() as u32);
            let dims_at = head.len();
            for &d in &t.dims {
                put_u64(&mut head, d);
            }
            let type_at = head.len();
            put_u32(&mut head, t.ty.id());
            let offset_at = head.len();
            put_u64(&mut head, offset);
            tensors.push(TensorLayout {
                name: t.name.clone(),
                info_at,
                n_dims_at,
                dims_at,
                type_at,
                offset_at,
                data_at: offset as usize,
                n_bytes: t.n_bytes,
            });
            offset += t.n_bytes.div_ceil(align) * align;
        }

        let data_offset = if self.tensors.is_empty() {
            head.len()
        } else {
            head.len().div_ceil(align as usize) * align as usize
        };
        head.resize(data_offset, 0);
        out.write_all(&head)?;
        drop(head);

        let mut written = data_offset as u64;
        for (t, layout) in self.tensors.iter_mut().zip(&mut tensors) {
            layout.data_at += data_offset;
            match &mut t.data {
                TensorData::Bytes(bytes) => out.write_all(bytes)?,
                TensorData::Generate(fill) => generate(&mut out, t.n_bytes, fill)?,
                TensorData::Zeros => skip(&mut out, t.n_bytes)?,
            }
            let padded = t.n_bytes.div_ceil(align) * align;
            skip(&mut out, padded - t.n_bytes)?;
            written += padded;
        }
        out.flush()?;
        Ok(Layout {
            kvs,
            tensors,
            data_offset,
            len: written as usize,
        })
    }

    /// Writes the file into memory.
    pub fn to_bytes(&mut self) -> Result<(Vec<u8>, Layout), WriteError> {
        let mut buf = Vec::new();
        let layout = self.write_to(&mut buf)?;
        Ok((buf, layout))
    }

    /// Writes the file to `path`.
    pub fn write_file(&mut self, path: impl AsRef<Path>) -> Result<Layout, WriteError> {
        let file = std::fs::File::create(path)?;
        self.write_to(io::BufWriter::new(file))
    }
}

fn generate(
    out: &mut impl Write,
    n_bytes: u64,
    fill: &mut dyn FnMut(u64, &mut [u8]),
) -> io::Result<()> {
    let mut chunk = vec![0u8; GENERATE_CHUNK.min(n_bytes as usize)];
    let mut done = 0u64;
    while done < n_bytes {
        let n = (n_bytes - done).min(chunk.len() as u64) as usize;
        let buf = &mut chunk[..n];
        buf.fill(0);
        fill(done, buf);
        out.write_all(buf)?;
        done += n as u64;
    }
    Ok(())
}

fn write_zeros(out: &mut impl Write, n: u64) -> io::Result<()> {
    const ZEROS: [u8; 256] = [0; 256];
    let mut left = n;
    while left > 0 {
        let k = left.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..k])?;
        left -= k as u64;
    }
    Ok(())
}

/// Appends a little-endian `u32`.
pub fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u64`.
pub fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Appends a GGUF string: `u64` byte length, then the bytes.
pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_u64(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Appends a value without its type tag (as it follows the tag in a key-value pair).
pub fn put_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => buf.push(*v),
        Value::I8(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => buf.push(u8::from(*v)),
        Value::String(s) => put_str(buf, s),
        Value::Array(a) => put_array(buf, a),
        Value::U64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => buf.extend_from_slice(&v.to_le_bytes()),
    }
}

/// Appends an array: `u32` element type, `u64` length, elements.
pub fn put_array(buf: &mut Vec<u8>, array: &Array) {
    put_u32(buf, array.element_type().id());
    put_u64(buf, array.len() as u64);
    fn each<T: Copy, const N: usize>(buf: &mut Vec<u8>, items: &[T], enc: fn(T) -> [u8; N]) {
        for &item in items {
            buf.extend_from_slice(&enc(item));
        }
    }
    match array {
        Array::U8(v) => buf.extend_from_slice(v),
        Array::I8(v) => each(buf, v, i8::to_le_bytes),
        Array::U16(v) => each(buf, v, u16::to_le_bytes),
        Array::I16(v) => each(buf, v, i16::to_le_bytes),
        Array::U32(v) => each(buf, v, u32::to_le_bytes),
        Array::I32(v) => each(buf, v, i32::to_le_bytes),
        Array::F32(v) => each(buf, v, f32::to_le_bytes),
        Array::Bool(v) => buf.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_str(buf, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(buf, a)),
        Array::U64(v) => each(buf, v, u64::to_le_bytes),
        Array::I64(v) => each(buf, v, i64::to_le_bytes),
        Array::F64(v) => each(buf, v, f64::to_le_bytes),
    }
}
