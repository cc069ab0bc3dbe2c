//! The ggml tensor type table: every `enum ggml_type` id of the pinned ggml
//! release, with its block size (elements per block) and bytes per block, and
//! overflow-checked row and tensor byte sizes.

use std::fmt;

/// Number of ggml type ids (`GGML_TYPE_COUNT`) in the pinned ggml release:
/// every id below this is either a [`GgmlType`] or one of [`REMOVED_TYPES`].
pub const GGML_TYPE_COUNT: u32 = 43;

/// Largest element count ggml accepts for one tensor (it keeps counts in `int64_t`).
pub const MAX_ELEMENTS: u64 = i64::MAX as u64;

/// Elements per block of the k-quant and i-quant "super-block" types.
const QK_K: u32 = 256;

/// A tensor element type that GGUF files may contain.
///
/// The discriminant is the ggml type id stored in the file.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    /// 32-bit IEEE float.
    F32 = 0,
    /// 16-bit IEEE half float.
    F16 = 1,
    /// 4-bit quantization, blocks of 32 with an f16 scale (18 bytes).
    Q4_0 = 2,
    /// 4-bit quantization, blocks of 32 with an f16 scale and minimum (20 bytes).
    Q4_1 = 3,
    /// 5-bit quantization, blocks of 32 with an f16 scale (22 bytes).
    Q5_0 = 6,
    /// 5-bit quantization, blocks of 32 with an f16 scale and minimum (24 bytes).
    Q5_1 = 7,
    /// 8-bit quantization, blocks of 32 with an f16 scale (34 bytes).
    Q8_0 = 8,
    /// 8-bit quantization, blocks of 32 with an f16 scale and sum (36 bytes).
    Q8_1 = 9,
    /// 2-bit k-quant, super-blocks of 256 (84 bytes).
    Q2_K = 10,
    /// 3-bit k-quant, super-blocks of 256 (110 bytes).
    Q3_K = 11,
    /// 4-bit k-quant, super-blocks of 256 (144 bytes).
    Q4_K = 12,
    /// 5-bit k-quant, super-blocks of 256 (176 bytes).
    Q5_K = 13,
    /// 6-bit k-quant, super-blocks of 256 (210 bytes).
    Q6_K = 14,
    /// 8-bit k-quant with an f32 scale, super-blocks of 256 (292 bytes).
    Q8_K = 15,
    /// i-quant, about 2.06 bits per weight: super-blocks of 256 in 66 bytes.
    IQ2_XXS = 16,
    /// i-quant, about 2.31 bits per weight: super-blocks of 256 in 74 bytes.
    IQ2_XS = 17,
    /// i-quant, about 3.06 bits per weight: super-blocks of 256 in 98 bytes.
    IQ3_XXS = 18,
    /// i-quant, about 1.56 bits per weight: super-blocks of 256 in 50 bytes.
    IQ1_S = 19,
    /// 4-bit non-linear i-quant, blocks of 32 in 18 bytes.
    IQ4_NL = 20,
    /// i-quant, about 3.44 bits per weight: super-blocks of 256 in 110 bytes.
    IQ3_S = 21,
    /// i-quant, about 2.56 bits per weight: super-blocks of 256 in 82 bytes.
    IQ2_S = 22,
    /// i-quant, 4.25 bits per weight: super-blocks of 256 in 136 bytes.
    IQ4_XS = 23,
    /// 8-bit signed integer.
    I8 = 24,
    /// 16-bit signed integer.
    I16 = 25,
    /// 32-bit signed integer.
    I32 = 26,
    /// 64-bit signed integer.
    I64 = 27,
    /// 64-bit IEEE float.
    F64 = 28,
    /// i-quant, 1.75 bits per weight: super-blocks of 256 in 56 bytes.
    IQ1_M = 29,
    /// bfloat16: the top 16 bits of an f32.
    BF16 = 30,
    /// Ternary quantization, about 1.69 bits per weight: super-blocks of 256 in 54 bytes.
    TQ1_0 = 34,
    /// Ternary quantization in 2-bit fields: super-blocks of 256 in 66 bytes.
    TQ2_0 = 35,
    /// OCP microscaling 4-bit float: blocks of 32 with a shared 8-bit exponent (17 bytes).
    MXFP4 = 39,
    /// NVIDIA's 4-bit float format: blocks of 64 in 36 bytes.
    NVFP4 = 40,
    /// 1-bit quantization, blocks of 128 in 18 bytes.
    Q1_0 = 41,
    /// 2-bit quantization, blocks of 64 in 18 bytes.
    Q2_0 = 42,
}

/// The layout facts of one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeTraits {
    /// ggml's name for the type (`ggml_type_name`), e.g. `q4_1`.
    pub name: &'static str,
    /// Elements per block.
    pub block_size: u32,
    /// Bytes per block.
    pub type_size: u32,
    /// Whether the type is a block quantization (as opposed to a plain scalar).
    pub quantized: bool,
}

const fn plain(name: &'static str, type_size: u32) -> TypeTraits {
    TypeTraits {
        name,
        block_size: 1,
        type_size,
        quantized: false,
    }
}

const fn quant(name: &'static str, block_size: u32, type_size: u32) -> TypeTraits {
    TypeTraits {
        name,
        block_size,
        type_size,
        quantized: true,
    }
}

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 35] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
        GgmlType::Q2_0,
    ];

    /// Block sizes and bytes per block, as ggml's `ggml-common.h` lays the
    /// blocks out (`ggml_half` is 2 bytes).
    pub const fn traits(self) -> TypeTraits {
        use GgmlType::*;
        match self {
            F32 => plain("f32", 4),
            F16 => plain("f16", 2),
            Q4_0 => quant("q4_0", 32, 18),
            Q4_1 => quant("q4_1", 32, 20),
            Q5_0 => quant("q5_0", 32, 22),
            Q5_1 => quant("q5_1", 32, 24),
            Q8_0 => quant("q8_0", 32, 34),
            Q8_1 => quant("q8_1", 32, 36),
            Q2_K => quant("q2_K", QK_K, 84),
            Q3_K => quant("q3_K", QK_K, 110),
            Q4_K => quant("q4_K", QK_K, 144),
            Q5_K => quant("q5_K", QK_K, 176),
            Q6_K => quant("q6_K", QK_K, 210),
            Q8_K => quant("q8_K", QK_K, 292),
            IQ2_XXS => quant("iq2_xxs", QK_K, 66),
            IQ2_XS => quant("iq2_xs", QK_K, 74),
            IQ3_XXS => quant("iq3_xxs", QK_K, 98),
            IQ1_S => quant("iq1_s", QK_K, 50),
            IQ4_NL => quant("iq4_nl", 32, 18),
            IQ3_S => quant("iq3_s", QK_K, 110),
            IQ2_S => quant("iq2_s", QK_K, 82),
            IQ4_XS => quant("iq4_xs", QK_K, 136),
            I8 => plain("i8", 1),
            I16 => plain("i16", 2),
            I32 => plain("i32", 4),
            I64 => plain("i64", 8),
            F64 => plain("f64", 8),
            IQ1_M => quant("iq1_m", QK_K, 56),
            BF16 => plain("bf16", 2),
            TQ1_0 => quant("tq1_0", QK_K, 54),
            TQ2_0 => quant("tq2_0", QK_K, 66),
            MXFP4 => quant("mxfp4", 32, 17),
            NVFP4 => quant("nvfp4", 64, 36),
            Q1_0 => quant("q1_0", 128, 18),
            Q2_0 => quant("q2_0", 64, 18),
        }
    }

    /// The ggml type id stored in GGUF tensor infos.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type, e.g. `q4_1`.
    pub const fn name(self) -> &'static str {
        self.traits().name
    }

    /// Elements per block.
    pub const fn block_size(self) -> u32 {
        self.traits().block_size
    }

    /// Bytes per block.
    pub const fn type_size(self) -> u32 {
        self.traits().type_size
    }

    /// Whether the type is a block quantization.
    pub const fn is_quantized(self) -> bool {
        self.traits().quantized
    }

    /// Looks up a type id read from a file.
    pub fn from_id(id: u32) -> TypeLookup {
        if let Some(ty) = GgmlType::ALL.iter().copied().find(|t| t.id() == id) {
            return TypeLookup::Known(ty);
        }
        match REMOVED_TYPES.iter().find(|r| r.id == id) {
            Some(removed) => TypeLookup::Removed(removed),
            None => TypeLookup::Unknown(id),
        }
    }

    /// Bytes of one row of `ne0` elements. `ne0` must be a multiple of the block size.
    pub fn row_size(self, ne0: u64) -> Result<u64, SizeError> {
        let block = u64::from(self.block_size());
        if !ne0.is_multiple_of(block) {
            return Err(SizeError::NotBlockMultiple {
                ne0,
                block_size: block,
            });
        }
        (ne0 / block)
            .checked_mul(u64::from(self.type_size()))
            .ok_or(SizeError::Overflow)
    }

    /// Bytes of a whole tensor with dims in ggml order (`dims[0]` is the
    /// contiguous row length). The element count must stay within
    /// [`MAX_ELEMENTS`] and the row length must be a multiple of the block size.
    /// No dims (a scalar) means one element.
    pub fn byte_size(self, dims: &[u64]) -> Result<u64, SizeError> {
        element_count(dims)?;
        let Some((&ne0, rest)) = dims.split_first() else {
            return self.row_size(1);
        };
        let row = self.row_size(ne0)?;
        let rows = rest
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or(SizeError::Overflow)?;
        row.checked_mul(rows).ok_or(SizeError::Overflow)
    }
}

/// Product of `dims`, checked against [`MAX_ELEMENTS`]. A zero anywhere makes
/// the count zero, but dims before it must not already overflow.
pub fn element_count(dims: &[u64]) -> Result<u64, SizeError> {
    let mut count: u64 = 1;
    for &d in dims {
        count = count
            .checked_mul(d)
            .filter(|&c| c <= MAX_ELEMENTS)
            .ok_or(SizeError::Overflow)?;
    }
    Ok(count)
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A type id that ggml once used and no longer accepts in GGUF files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovedType {
    /// The type id, still reserved in ggml's numbering.
    pub id: u32,
    /// ggml's former name for the type.
    pub name: &'static str,
}

/// Type ids that are gone from this ggml release (their numbers stay reserved).
pub const REMOVED_TYPES: [RemovedType; 8] = [
    RemovedType {
        id: 4,
        name: "Q4_2",
    },
    RemovedType {
        id: 5,
        name: "Q4_3",
    },
    RemovedType {
        id: 31,
        name: "Q4_0_4_4",
    },
    RemovedType {
        id: 32,
        name: "Q4_0_4_8",
    },
    RemovedType {
        id: 33,
        name: "Q4_0_8_8",
    },
    RemovedType {
        id: 36,
        name: "IQ4_NL_4_4",
    },
    RemovedType {
        id: 37,
        name: "IQ4_NL_4_8",
    },
    RemovedType {
        id: 38,
        name: "IQ4_NL_8_8",
    },
];

/// What a type id read from a file refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeLookup {
    /// A type this reader supports.
    Known(GgmlType),
    /// A type ggml used to have and has removed.
    Removed(&'static RemovedType),
    /// An id ggml has never assigned (in the pinned release); holds the id.
    Unknown(u32),
}

/// Why a tensor's byte size cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// The row length is not a whole number of blocks.
    #[error("row length {ne0} is not a multiple of the block size {block_size}")]
    NotBlockMultiple {
        /// Elements per row (`dims[0]`).
        ne0: u64,
        /// Elements per block of the type.
        block_size: u64,
    },
    /// The element count exceeds [`MAX_ELEMENTS`] or the byte size overflows `u64`.
    #[error("element count or byte size overflows")]
    Overflow,
}
