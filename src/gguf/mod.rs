//! GGUF model files: a defensive zero-copy reader, the ggml type table, a
//! writer, and typed llama-family hyperparameters.
//!
//! A GGUF file is, all little-endian: the magic `GGUF`, a `u32` version (2 and
//! 3 are read; they differ only in that v3 may be big-endian, which is not
//! supported), `u64` tensor and key-value counts, the key-value pairs (string
//! key, `u32` value type, value), the tensor infos (name, `u32` n_dims, `u64`
//! dims, `u32` ggml type, `u64` offset into the data section), padding to
//! `general.alignment`, then the tensor data.
//!
//! [`Gguf`] owns the bytes (usually a read-only memory map) and hands out
//! tensor data as `&[u8]` slices of them. [`GgufContent::parse`] is the parser
//! itself, over any `&[u8]`. A corrupt or hostile file gives a [`GgufError`]
//! naming what is wrong and where; the parser never panics, never reads out of
//! bounds, and never allocates for a declared count that the rest of the file
//! cannot hold. The limits it enforces are the `MAX_*` constants below.
//!
//! This module uses only `std`, `memmap2` and `thiserror`, and nothing else
//! from the crate: the fuzz target compiles it on its own.

mod error;
pub mod llama;
mod metadata;
mod mmap;
mod reader;
mod types;
mod value;
pub mod writer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use error::{GgufError, Location};
pub use metadata::Metadata;
pub use mmap::{map_file, MappedFile};
pub use reader::{GgufContent, TensorInfo};
pub use types::{
    element_count, GgmlType, RemovedType, SizeError, TypeLookup, TypeTraits, GGML_TYPE_COUNT,
    MAX_ELEMENTS, REMOVED_TYPES,
};
pub use value::{Array, FromValue, Value, ValueType};

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The versions this reader accepts.
pub const SUPPORTED_VERSIONS: [u32; 2] = [2, 3];
/// The version [`writer::GgufWriter`] writes unless told otherwise.
pub const WRITE_VERSION: u32 = 3;
/// The key that sets the alignment of tensor data (a `u32` power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;

/// Longest metadata string (key or value), in bytes. Real files stay far
/// below: the largest strings are chat templates of a few KiB.
pub const MAX_STRING_LEN: u64 = 64 * 1024 * 1024;
/// Most elements in one metadata array. The largest real arrays are
/// vocabularies and merge lists of a few hundred thousand entries.
pub const MAX_ARRAY_LEN: u64 = 1 << 28;
/// How deep arrays may nest: 1 is a plain array, 2 an array of arrays.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most key-value pairs in one file.
pub const MAX_KV_COUNT: u64 = 1 << 20;
/// Most tensors in one file.
pub const MAX_TENSOR_COUNT: u64 = 1 << 20;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Longest tensor name in bytes: ggml keeps names in a 64-byte buffer with a
/// terminating NUL (`GGML_MAX_NAME`).
pub const MAX_TENSOR_NAME_LEN: u64 = 63;

/// Bytes a [`Gguf`] can own: a memory map, a `Vec<u8>`, a `Box<[u8]>`, an
/// `Arc<[u8]>`, a `&'static [u8]`…
pub trait ByteSource: AsRef<[u8]> + Send + Sync + 'static {}

impl<T: AsRef<[u8]> + Send + Sync + 'static> ByteSource for T {}

/// A parsed GGUF file together with its bytes. Cheap to clone (the bytes are shared).
#[derive(Clone)]
pub struct Gguf {
    bytes: Arc<dyn ByteSource>,
    content: GgufContent,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("len", &self.bytes().len())
            .field("version", &self.content.version())
            .field("kv_count", &self.content.metadata().len())
            .field("tensor_count", &self.content.tensors().len())
            .finish()
    }
}

impl Gguf {
    /// Maps the file at `path` read-only and parses it.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf, GgufError> {
        Gguf::from_bytes(map_file(path.as_ref())?)
    }

    /// Parses a file held in memory.
    pub fn from_bytes(bytes: impl ByteSource) -> Result<Gguf, GgufError> {
        Gguf::from_shared(Arc::new(bytes))
    }

    /// Parses bytes that are already shared.
    pub fn from_shared(bytes: Arc<dyn ByteSource>) -> Result<Gguf, GgufError> {
        let content = GgufContent::parse((*bytes).as_ref())?;
        Ok(Gguf { bytes, content })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        (*self.bytes).as_ref()
    }

    /// The bytes, shared, e.g. to keep them alive past this `Gguf`.
    pub fn shared_bytes(&self) -> Arc<dyn ByteSource> {
        Arc::clone(&self.bytes)
    }

    /// The parsed header, metadata and tensor infos.
    pub fn content(&self) -> &GgufContent {
        &self.content
    }

    /// The GGUF version from the header (2 or 3).
    pub fn version(&self) -> u32 {
        self.content.version()
    }

    /// Alignment of tensor data in bytes: `general.alignment`, or [`DEFAULT_ALIGNMENT`].
    pub fn alignment(&self) -> u32 {
        self.content.alignment()
    }

    /// Offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.content.data_offset()
    }

    /// All key-value pairs, in file order.
    pub fn metadata_map(&self) -> &Metadata {
        self.content.metadata()
    }

    /// The value of `key`, if present.
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.metadata_map().get(key)
    }

    /// The value of `key` as `T` (see [`Metadata::get_as`]).
    pub fn get<'a, T: FromValue<'a>>(&'a self, key: &str) -> Result<T, GgufError> {
        self.metadata_map().get_as(key)
    }

    /// Like [`Gguf::get`], but a missing key is `Ok(None)`.
    pub fn get_opt<'a, T: FromValue<'a>>(&'a self, key: &str) -> Result<Option<T>, GgufError> {
        self.metadata_map().get_opt(key)
    }

    /// The value of `key` as a `u32` (see [`Metadata::get_u32`]).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.metadata_map().get_u32(key)
    }

    /// The value of `key` as a `u64` (see [`Metadata::get_u64`]).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.metadata_map().get_u64(key)
    }

    /// The value of `key` as an `i32` (see [`Metadata::get_i32`]).
    pub fn get_i32(&self, key: &str) -> Result<i32, GgufError> {
        self.metadata_map().get_i32(key)
    }

    /// The value of `key` as an `f32` (see [`Metadata::get_f32`]).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.metadata_map().get_f32(key)
    }

    /// The value of `key` as a bool (see [`Metadata::get_bool`]).
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.metadata_map().get_bool(key)
    }

    /// The value of `key` as a string (see [`Metadata::get_str`]).
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.metadata_map().get_str(key)
    }

    /// The value of `key` as an array (see [`Metadata::get_array`]).
    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        self.metadata_map().get_array(key)
    }

    /// The value of `key` as an array of strings (see [`Metadata::get_str_array`]).
    pub fn get_str_array(&self, key: &str) -> Result<&[String], GgufError> {
        self.metadata_map().get_str_array(key)
    }

    /// The value of `key` as an array of `u32` (see [`Metadata::get_u32_array`]).
    pub fn get_u32_array(&self, key: &str) -> Result<&[u32], GgufError> {
        self.metadata_map().get_u32_array(key)
    }

    /// The value of `key` as an array of `i32` (see [`Metadata::get_i32_array`]).
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32], GgufError> {
        self.metadata_map().get_i32_array(key)
    }

    /// The value of `key` as an array of `f32` (see [`Metadata::get_f32_array`]).
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32], GgufError> {
        self.metadata_map().get_f32_array(key)
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        self.content.tensors()
    }

    /// The tensor info called `name`, if there is one.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.content.tensor(name)
    }

    /// The data of a tensor of this file, borrowed from the file's bytes.
    ///
    /// # Panics
    /// If `info` comes from another file and does not lie inside this one
    /// (infos of this file always do: the parser checked them).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        match self.content.tensor_data(self.bytes(), info) {
            Some(data) => data,
            None => panic!("tensor '{}' is not from this GGUF file", info.name()),
        }
    }

    /// The data of the tensor called `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.tensor(name).ok_or_else(|| GgufError::NoSuchTensor {
            name: name.to_owned(),
        })?;
        Ok(self.tensor_data(info))
    }
}
