//! Metadata values: the thirteen GGUF value types, arrays (possibly nested),
//! and typed extraction.

use std::fmt;

/// The type tag of a metadata value, as stored in the file (a `u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// 8-bit unsigned integer (`u8`).
    U8 = 0,
    /// 8-bit signed integer (`i8`).
    I8 = 1,
    /// Little-endian 16-bit unsigned integer (`u16`).
    U16 = 2,
    /// Little-endian 16-bit signed integer (`i16`).
    I16 = 3,
    /// Little-endian 32-bit unsigned integer (`u32`).
    U32 = 4,
    /// Little-endian 32-bit signed integer (`i32`).
    I32 = 5,
    /// Little-endian 32-bit IEEE float (`f32`).
    F32 = 6,
    /// One byte, 0 or 1.
    Bool = 7,
    /// UTF-8 string: `u64` byte length, then the bytes.
    String = 8,
    /// Array: `u32` element type, `u64` length, then the elements.
    Array = 9,
    /// Little-endian 64-bit unsigned integer (`u64`).
    U64 = 10,
    /// Little-endian 64-bit signed integer (`i64`).
    I64 = 11,
    /// Little-endian 64-bit IEEE float (`f64`).
    F64 = 12,
}

impl ValueType {
    /// Every value type, in id order.
    pub const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    /// The type for a tag read from a file, if it is one.
    pub fn from_id(id: u32) -> Option<ValueType> {
        ValueType::ALL.get(usize::try_from(id).ok()?).copied()
    }

    /// The tag stored in the file.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// Short lower-case name: `u8` … `f64`, `bool`, `string`, `array`.
    pub const fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type takes in a file: its payload
    /// for scalars, the length prefix for a string, the element type and
    /// count for an array. Used to reject counts that cannot fit.
    pub const fn min_encoded_size(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A `u8`.
    U8(u8),
    /// A `i8`.
    I8(i8),
    /// A `u16`.
    U16(u16),
    /// A `i16`.
    I16(i16),
    /// A `u32`.
    U32(u32),
    /// A `i32`.
    I32(i32),
    /// A `f32`.
    F32(f32),
    /// A bool.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values of one type.
    Array(Array),
    /// A `u64`.
    U64(u64),
    /// A `i64`.
    I64(i64),
    /// A `f64`.
    F64(f64),
}

/// A metadata array: every element has the same type. Arrays of arrays may
/// hold inner arrays of different element types and lengths.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u16` elements.
    U16(Vec<u16>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `u32` elements.
    U32(Vec<u32>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// Bool elements.
    Bool(Vec<bool>),
    /// String elements.
    String(Vec<String>),
    /// Nested arrays, each with its own element type and length.
    Array(Vec<Array>),
    /// `u64` elements.
    U64(Vec<u64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f64` elements.
    F64(Vec<f64>),
}

impl Value {
    /// The type tag this value is stored with.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// A description of the type for error messages: `u32`, or `array of string`.
    pub fn type_description(&self) -> String {
        match self {
            Value::Array(a) => format!("array of {}", a.element_type()),
            other => other.value_type().name().to_owned(),
        }
    }

    /// The value as an unsigned integer if it is an integer of any width and
    /// not negative.
    pub fn as_unsigned(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Whether the value is an integer of any width and signedness.
    pub fn is_integer(&self) -> bool {
        matches!(
            self,
            Value::U8(_)
                | Value::I8(_)
                | Value::U16(_)
                | Value::I16(_)
                | Value::U32(_)
                | Value::I32(_)
                | Value::U64(_)
                | Value::I64(_)
        )
    }
}

impl Array {
    /// The type of the elements.
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements (for an array of arrays, the number of inner arrays).
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shows scalars in full, strings quoted and shortened past 60 characters,
/// and arrays as their element type and length.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_SHOWN_CHARS: usize = 60;
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::String(s) if s.chars().count() > MAX_SHOWN_CHARS => {
                let head: String = s.chars().take(MAX_SHOWN_CHARS).collect();
                write!(f, "{:?}… ({} bytes)", head, s.len())
            }
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(a) => write!(f, "[{}; {}]", a.element_type(), a.len()),
        }
    }
}

/// Types a metadata value can be read as, with the exact GGUF type required
/// (a `u32` getter does not accept a `u64` value). Borrowing types (`&str`,
/// slices) point into the parsed metadata.
pub trait FromValue<'a>: Sized {
    /// What the getter expects, for the error message.
    const EXPECTED: &'static str;
    /// The value as `Self`, or `None` if its GGUF type is not exactly the one required.
    fn from_value(value: &'a Value) -> Option<Self>;
}

macro_rules! from_scalar {
    ($($ty:ty => $variant:ident, $name:literal;)*) => {$(
        impl<'a> FromValue<'a> for $ty {
            const EXPECTED: &'static str = $name;
            fn from_value(value: &'a Value) -> Option<Self> {
                match value {
                    Value::$variant(v) => Some(*v),
                    _ => None,
                }
            }
        }
    )*};
}

from_scalar! {
    u8 => U8, "u8";
    i8 => I8, "i8";
    u16 => U16, "u16";
    i16 => I16, "i16";
    u32 => U32, "u32";
    i32 => I32, "i32";
    f32 => F32, "f32";
    bool => Bool, "bool";
    u64 => U64, "u64";
    i64 => I64, "i64";
    f64 => F64, "f64";
}

macro_rules! from_array {
    ($($ty:ty => $variant:ident, $name:literal;)*) => {$(
        impl<'a> FromValue<'a> for &'a [$ty] {
            const EXPECTED: &'static str = $name;
            fn from_value(value: &'a Value) -> Option<Self> {
                match value {
                    Value::Array(Array::$variant(v)) => Some(v.as_slice()),
                    _ => None,
                }
            }
        }
    )*};
}

from_array! {
    u8 => U8, "array of u8";
    i8 => I8, "array of i8";
    u16 => U16, "array of u16";
    i16 => I16, "array of i16";
    u32 => U32, "array of u32";
    i32 => I32, "array of i32";
    f32 => F32, "array of f32";
    bool => Bool, "array of bool";
    String => String, "array of string";
    Array => Array, "array of array";
    u64 => U64, "array of u64";
    i64 => I64, "array of i64";
    f64 => F64, "array of f64";
}

impl<'a> FromValue<'a> for &'a str {
    const EXPECTED: &'static str = "string";
    fn from_value(value: &'a Value) -> Option<Self> {
        match value {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }
}

impl<'a> FromValue<'a> for &'a Array {
    const EXPECTED: &'static str = "array";
    fn from_value(value: &'a Value) -> Option<Self> {
        match value {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl<'a> FromValue<'a> for &'a Value {
    const EXPECTED: &'static str = "any value";
    fn from_value(value: &'a Value) -> Option<Self> {
        Some(value)
    }
}

macro_rules! value_from {
    ($($ty:ty => $variant:ident;)*) => {$(
        impl From<$ty> for Value {
            fn from(v: $ty) -> Self {
                Value::$variant(v)
            }
        }
        impl From<Vec<$ty>> for Value {
            fn from(v: Vec<$ty>) -> Self {
                Value::Array(Array::$variant(v))
            }
        }
    )*};
}

value_from! {
    u8 => U8;
    i8 => I8;
    u16 => U16;
    i16 => I16;
    u32 => U32;
    i32 => I32;
    f32 => F32;
    bool => Bool;
    String => String;
    u64 => U64;
    i64 => I64;
    f64 => F64;
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_owned())
    }
}

impl From<Array> for Value {
    fn from(v: Array) -> Self {
        Value::Array(v)
    }
}

impl From<Vec<&str>> for Value {
    fn from(v: Vec<&str>) -> Self {
        Value::Array(Array::String(v.into_iter().map(str::to_owned).collect()))
    }
}

impl From<Vec<Array>> for Value {
    fn from(v: Vec<Array>) -> Self {
        Value::Array(Array::Array(v))
    }
}
