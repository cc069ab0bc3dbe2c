//! Errors from reading a GGUF file or its metadata.
//!
//! Every variant says what is wrong and where: a byte offset into the file, the
//! metadata key, or the tensor name.

use std::fmt;
use std::path::PathBuf;

use super::types::{GgmlType, SizeError};
use super::value::ValueType;

/// Where in the file a problem was found, for errors that can happen in more
/// than one place (a string or a count can be short in the header, a key, a
/// value or a tensor info).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The fixed header: magic, version, tensor and key-value counts.
    Header,
    /// The name of the key-value pair with this index (0-based).
    Key { index: u64 },
    /// The value of this key.
    Value { key: String },
    /// The tensor info with this index (0-based), with its name once known.
    TensorInfo { index: u64, name: Option<String> },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Header => write!(f, "the header"),
            Location::Key { index } => write!(f, "the name of key #{index}"),
            Location::Value { key } => write!(f, "the value of key '{key}'"),
            Location::TensorInfo { index, name: None } => write!(f, "tensor info #{index}"),
            Location::TensorInfo {
                index,
                name: Some(name),
            } => {
                write!(f, "tensor info #{index} ('{name}')")
            }
        }
    }
}

/// Anything that can go wrong opening, parsing or querying a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("not a GGUF file: the first bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },

    #[error("unsupported GGUF version {version}: {reason}")]
    UnsupportedVersion { version: u32, reason: &'static str },

    #[error(
        "file ends early at byte {offset} in {location}: {needed} bytes needed, {remaining} left"
    )]
    Truncated {
        offset: u64,
        needed: u64,
        remaining: u64,
        location: Location,
    },

    #[error("{what} {count} at byte {offset} in {location} is over the limit of {max}")]
    CountOverLimit {
        what: &'static str,
        count: u64,
        max: u64,
        offset: u64,
        location: Location,
    },

    #[error(
        "{what} {count} at byte {offset} in {location} cannot fit in the {remaining} bytes \
         left (each entry takes at least {min_each})"
    )]
    CountPastEnd {
        what: &'static str,
        count: u64,
        min_each: u64,
        remaining: u64,
        offset: u64,
        location: Location,
    },

    #[error("string at byte {offset} in {location} is not valid UTF-8")]
    InvalidUtf8 { offset: u64, location: Location },

    #[error("bool at byte {offset} in {location} is {byte}, expected 0 or 1")]
    InvalidBool {
        offset: u64,
        byte: u8,
        location: Location,
    },

    #[error("unknown value type {type_id} at byte {offset} in {location}")]
    UnknownValueType {
        type_id: u32,
        offset: u64,
        location: Location,
    },

    #[error("arrays nest deeper than {max} at byte {offset} in {location}")]
    ArrayTooDeep {
        max: usize,
        offset: u64,
        location: Location,
    },

    #[error("key #{index} at byte {offset} is empty")]
    EmptyKey { index: u64, offset: u64 },

    #[error("key '{key}' at byte {offset} appears twice")]
    DuplicateKey { key: String, offset: u64 },

    #[error("key 'general.alignment' must be a u32, found {found}")]
    AlignmentType { found: ValueType },

    #[error("key 'general.alignment' is {alignment}, which is not a power of two")]
    BadAlignment { alignment: u32 },

    #[error("tensor info #{index} at byte {offset} has an empty name")]
    EmptyTensorName { index: u64, offset: u64 },

    #[error("tensor '{name}' appears twice (second at tensor info #{index})")]
    DuplicateTensor { name: String, index: u64 },

    #[error("tensor '{tensor}' has {n_dims} dimensions, at most {max} are allowed")]
    TooManyDims {
        tensor: String,
        n_dims: u32,
        max: usize,
    },

    #[error("tensor '{tensor}' has unknown ggml type {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },

    #[error("tensor '{tensor}' has ggml type {type_id} ({type_name}), which was removed from GGUF files")]
    RemovedTensorType {
        tensor: String,
        type_id: u32,
        type_name: &'static str,
    },

    #[error("tensor '{tensor}' of type {ty} with shape {dims:?}: {source}")]
    BadShape {
        tensor: String,
        ty: GgmlType,
        dims: Vec<u64>,
        #[source]
        source: SizeError,
    },

    #[error(
        "tensor '{tensor}' has data offset {offset}, not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u32,
    },

    #[error("the data section would start at byte {data_offset}, past the end of the {file_len}-byte file")]
    DataPastEnd { data_offset: u64, file_len: u64 },

    #[error(
        "tensor '{tensor}' spans bytes {start}..{end}, past the end of the {file_len}-byte file"
    )]
    TensorPastEnd {
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },

    #[error("tensor '{tensor}' (bytes {start}..{end}) overlaps tensor '{other}' (bytes {other_start}..{other_end})")]
    TensorOverlap {
        tensor: String,
        start: u64,
        end: u64,
        other: String,
        other_start: u64,
        other_end: u64,
    },

    #[error("missing metadata key '{key}'")]
    MissingKey { key: String },

    #[error("metadata key '{key}' is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("metadata key '{key}' has value {value}, which is out of range for {target}")]
    OutOfRange {
        key: String,
        value: String,
        target: &'static str,
    },

    #[error("metadata key '{key}' has value {value}: {reason}")]
    BadHyperparameter {
        key: String,
        value: String,
        reason: &'static str,
    },

    #[error("no tensor named '{name}'")]
    NoSuchTensor { name: String },

    #[error("tensor '{tensor}' belongs to layer {layer}, but the model has {n_layer} layers")]
    LayerOutOfRange {
        tensor: String,
        layer: u64,
        n_layer: u32,
    },
}
