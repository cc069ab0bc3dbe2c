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
    Key {
        /// Index of the key-value pair (0-based).
        index: u64,
    },
    /// The value of this key.
    Value {
        /// The key whose value was being read.
        key: String,
    },
    /// The tensor info with this index (0-based), with its name once known.
    TensorInfo {
        /// Index of the tensor info (0-based).
        index: u64,
        /// The tensor's name, once it has been read.
        name: Option<String>,
    },
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
    /// The file could not be opened or memory-mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that was being opened.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file does not start with the magic `GGUF`.
    #[error("not a GGUF file: the first bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic {
        /// The first four bytes of the file.
        found: [u8; 4],
    },

    /// The header's version is not 2 or 3.
    #[error("unsupported GGUF version {version}: {reason}")]
    UnsupportedVersion {
        /// The version number read from the header.
        version: u32,
        /// Why it is rejected (unknown, too old, too new, or byte-swapped).
        reason: &'static str,
    },

    /// A field runs past the end of the file.
    #[error(
        "file ends early at byte {offset} in {location}: {needed} bytes needed, {remaining} left"
    )]
    Truncated {
        /// Byte offset in the file where the field starts.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file from `offset`.
        remaining: u64,
        /// What was being read.
        location: Location,
    },

    /// A count or length read from the file is above this reader's limit for it.
    #[error("{what} {count} at byte {offset} in {location} is over the limit of {max}")]
    CountOverLimit {
        /// What the count is of, e.g. `tensor count` or `string length`.
        what: &'static str,
        /// The count as read.
        count: u64,
        /// The limit (one of the `MAX_*` constants).
        max: u64,
        /// Byte offset of the count in the file.
        offset: u64,
        /// What was being read.
        location: Location,
    },

    /// A count or length read from the file needs more bytes than are left.
    #[error(
        "{what} {count} at byte {offset} in {location} cannot fit in the {remaining} bytes \
         left (each entry takes at least {min_each})"
    )]
    CountPastEnd {
        /// What the count is of, e.g. `array length`.
        what: &'static str,
        /// The count as read.
        count: u64,
        /// The fewest bytes each counted entry takes.
        min_each: u64,
        /// Bytes left in the file after the count.
        remaining: u64,
        /// Byte offset of the count in the file.
        offset: u64,
        /// What was being read.
        location: Location,
    },

    /// A string (key, value or tensor name) is not valid UTF-8.
    #[error("string at byte {offset} in {location} is not valid UTF-8")]
    InvalidUtf8 {
        /// Byte offset of the string's bytes (after its length prefix).
        offset: u64,
        /// What was being read.
        location: Location,
    },

    /// A bool value is a byte other than 0 or 1.
    #[error("bool at byte {offset} in {location} is {byte}, expected 0 or 1")]
    InvalidBool {
        /// Byte offset of the bool in the file.
        offset: u64,
        /// The byte found.
        byte: u8,
        /// What was being read.
        location: Location,
    },

    /// A value or array element type tag is not one of the thirteen GGUF value types.
    #[error("unknown value type {type_id} at byte {offset} in {location}")]
    UnknownValueType {
        /// The tag as read.
        type_id: u32,
        /// Byte offset of the tag in the file.
        offset: u64,
        /// What was being read.
        location: Location,
    },

    /// Arrays nest deeper than [`MAX_ARRAY_DEPTH`](super::MAX_ARRAY_DEPTH).
    #[error("arrays nest deeper than {max} at byte {offset} in {location}")]
    ArrayTooDeep {
        /// The deepest nesting allowed.
        max: usize,
        /// Byte offset of the array that goes too deep.
        offset: u64,
        /// What was being read.
        location: Location,
    },

    /// A metadata key is the empty string.
    #[error("key #{index} at byte {offset} is empty")]
    EmptyKey {
        /// Index of the key-value pair (0-based).
        index: u64,
        /// Byte offset of the key's length prefix.
        offset: u64,
    },

    /// A metadata key appears more than once.
    #[error("key '{key}' at byte {offset} appears twice")]
    DuplicateKey {
        /// The repeated key.
        key: String,
        /// Byte offset of the second occurrence's length prefix.
        offset: u64,
    },

    /// `general.alignment` is present but not a `u32`.
    #[error("key 'general.alignment' must be a u32, found {found}")]
    AlignmentType {
        /// The type it has instead.
        found: ValueType,
    },

    /// `general.alignment` is a `u32` but not a power of two.
    #[error("key 'general.alignment' is {alignment}, which is not a power of two")]
    BadAlignment {
        /// The value found.
        alignment: u32,
    },

    /// A tensor info has an empty name.
    #[error("tensor info #{index} at byte {offset} has an empty name")]
    EmptyTensorName {
        /// Index of the tensor info (0-based).
        index: u64,
        /// Byte offset of the name's length prefix.
        offset: u64,
    },

    /// Two tensor infos have the same name.
    #[error("tensor '{name}' appears twice (second at tensor info #{index})")]
    DuplicateTensor {
        /// The repeated name.
        name: String,
        /// Index of the second tensor info with it (0-based).
        index: u64,
    },

    /// A tensor has more than [`MAX_DIMS`](super::MAX_DIMS) dimensions.
    #[error("tensor '{tensor}' has {n_dims} dimensions, at most {max} are allowed")]
    TooManyDims {
        /// The tensor's name.
        tensor: String,
        /// The dimension count as read.
        n_dims: u32,
        /// The most dimensions allowed.
        max: usize,
    },

    /// A tensor's ggml type id is not one this reader knows.
    #[error("tensor '{tensor}' has unknown ggml type {type_id}")]
    UnknownTensorType {
        /// The tensor's name.
        tensor: String,
        /// The type id as read.
        type_id: u32,
    },

    /// A tensor's ggml type id is one ggml has removed
    /// (see [`REMOVED_TYPES`](super::REMOVED_TYPES)).
    #[error("tensor '{tensor}' has ggml type {type_id} ({type_name}), which was removed from GGUF files")]
    RemovedTensorType {
        /// The tensor's name.
        tensor: String,
        /// The type id as read.
        type_id: u32,
        /// ggml's former name for the type.
        type_name: &'static str,
    },

    /// A tensor's shape does not fit its type: the row length is not a
    /// multiple of the block size, or the size overflows.
    #[error("tensor '{tensor}' of type {ty} with shape {dims:?}: {source}")]
    BadShape {
        /// The tensor's name.
        tensor: String,
        /// The tensor's type.
        ty: GgmlType,
        /// The dims as read, in ggml order.
        dims: Vec<u64>,
        /// Why the size cannot be computed.
        #[source]
        source: SizeError,
    },

    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error(
        "tensor '{tensor}' has data offset {offset}, not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        /// The tensor's name.
        tensor: String,
        /// The offset as stored, relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u32,
    },

    /// The aligned end of the header lies past the end of the file.
    #[error("the data section would start at byte {data_offset}, past the end of the {file_len}-byte file")]
    DataPastEnd {
        /// Byte offset where the data section would start.
        data_offset: u64,
        /// Length of the file in bytes.
        file_len: u64,
    },

    /// A tensor's data extends past the end of the file.
    #[error(
        "tensor '{tensor}' spans bytes {start}..{end}, past the end of the {file_len}-byte file"
    )]
    TensorPastEnd {
        /// The tensor's name.
        tensor: String,
        /// Byte offset of the data's start in the file.
        start: u64,
        /// Byte offset just past the data's end (`u64::MAX` if it overflows).
        end: u64,
        /// Length of the file in bytes.
        file_len: u64,
    },

    /// Two tensors' data ranges overlap.
    #[error("tensor '{tensor}' (bytes {start}..{end}) overlaps tensor '{other}' (bytes {other_start}..{other_end})")]
    TensorOverlap {
        /// The tensor whose data starts later.
        tensor: String,
        /// Start of its data in the file.
        start: u64,
        /// End (exclusive) of its data in the file.
        end: u64,
        /// The tensor it overlaps, whose data starts earlier.
        other: String,
        /// Start of the other tensor's data in the file.
        other_start: u64,
        /// End (exclusive) of the other tensor's data in the file.
        other_end: u64,
    },

    /// A required metadata key is absent.
    #[error("missing metadata key '{key}'")]
    MissingKey {
        /// The key (or a description of the keys) that was looked for.
        key: String,
    },

    /// A metadata value has a different type from the one asked for.
    #[error("metadata key '{key}' is {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type asked for, e.g. `u32` or `array of string`.
        expected: &'static str,
        /// The type the value has, e.g. `u64` or `array of i32`.
        found: String,
    },

    /// A metadata value has the right kind of type but does not fit the
    /// type it is converted to (a negative count, a count above `u32::MAX`).
    #[error("metadata key '{key}' has value {value}, which is out of range for {target}")]
    OutOfRange {
        /// The key.
        key: String,
        /// The value, formatted for the message.
        value: String,
        /// What it was converted to, e.g. `u32`.
        target: &'static str,
    },

    /// A model hyperparameter is readable but invalid (zero, or inconsistent
    /// with another).
    #[error("metadata key '{key}' has value {value}: {reason}")]
    BadHyperparameter {
        /// The key.
        key: String,
        /// The value, formatted for the message.
        value: String,
        /// What is wrong with it, e.g. `must be at least 1`.
        reason: &'static str,
    },

    /// A model hyperparameter, or a product of two, is above this reader's
    /// cap for it (see [`llama::limits`](super::llama::limits)).
    #[error("metadata key '{key}' has value {value}, over the limit of {max}")]
    HyperparameterOverLimit {
        /// The key, or `a x b` for a product of two keys.
        key: String,
        /// The value as read (or the product), exact.
        value: u64,
        /// The cap.
        max: u64,
    },

    /// A tensor's shape disagrees with the hyperparameters that describe it.
    #[error("tensor '{tensor}' has shape {dims:?}, but {keys} give {expected:?}")]
    TensorDisagrees {
        /// The tensor's name.
        tensor: String,
        /// Its dims as stored.
        dims: Vec<u64>,
        /// The dims the hyperparameters imply.
        expected: Vec<u64>,
        /// The hyperparameters the expected dims come from, e.g.
        /// `embedding_length and head_count x key_length`.
        keys: &'static str,
    },

    /// A layer below the declared layer count has no tensors.
    #[error("metadata key '{key}' says {n_layer} layers, but no tensor belongs to layer {layer} (blk.{layer}.*)")]
    LayerMissing {
        /// The layer-count key, `{arch}.block_count`.
        key: String,
        /// The first layer without tensors.
        layer: u32,
        /// The declared layer count.
        n_layer: u32,
    },

    /// No tensor has the name asked for.
    #[error("no tensor named '{name}'")]
    NoSuchTensor {
        /// The name asked for.
        name: String,
    },

    /// A `blk.N.` tensor names a layer at or past the model's layer count.
    #[error("tensor '{tensor}' belongs to layer {layer}, but the model has {n_layer} layers")]
    LayerOutOfRange {
        /// The tensor's name.
        tensor: String,
        /// The layer index `N` from its name.
        layer: u64,
        /// The model's layer count (`{arch}.block_count`).
        n_layer: u32,
    },
}
