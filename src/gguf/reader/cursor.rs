//! The byte cursor over an untrusted file and the reading of the header
//! and metadata values, every read checked against the bytes that remain.

use super::super::error::{GgufError, Location};
use super::super::metadata::Metadata;
use super::super::value::{Array, Value, ValueType};
use super::super::{GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_STRING_LEN};

/// Where the cursor is, borrowed; turned into an owned [`Location`] only on error.
#[derive(Clone, Copy)]
pub(super) enum Ctx<'a> {
    Header,
    Key(u64),
    Value(&'a str),
    TensorInfo(u64, Option<&'a str>),
}

impl Ctx<'_> {
    pub(super) fn location(self) -> Location {
        match self {
            Ctx::Header => Location::Header,
            Ctx::Key(index) => Location::Key { index },
            Ctx::Value(key) => Location::Value {
                key: key.to_owned(),
            },
            Ctx::TensorInfo(index, name) => Location::TensorInfo {
                index,
                name: name.map(str::to_owned),
            },
        }
    }
}

pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    pub(super) fn offset(&self) -> u64 {
        self.pos as u64
    }

    pub(super) fn take(&mut self, n: u64, ctx: Ctx<'_>) -> Result<&'a [u8], GgufError> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(GgufError::Truncated {
                offset: self.offset(),
                needed: n,
                remaining,
                location: ctx.location(),
            });
        }
        // n <= remaining <= usize::MAX
        let end = self.pos + n as usize;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(super) fn array<const N: usize>(&mut self, ctx: Ctx<'_>) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, ctx)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(super) fn u32(&mut self, ctx: Ctx<'_>) -> Result<u32, GgufError> {
        self.array(ctx).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, ctx: Ctx<'_>) -> Result<u64, GgufError> {
        self.array(ctx).map(u64::from_le_bytes)
    }

    /// A length or count, checked against a cap and against the bytes left
    /// (each element needs at least `min_each` bytes).
    pub(super) fn count(
        &mut self,
        what: &'static str,
        max: u64,
        min_each: u64,
        ctx: Ctx<'_>,
    ) -> Result<u64, GgufError> {
        let offset = self.offset();
        let count = self.u64(ctx)?;
        if count > max {
            return Err(GgufError::CountOverLimit {
                what,
                count,
                max,
                offset,
                location: ctx.location(),
            });
        }
        let remaining = self.remaining();
        if count
            .checked_mul(min_each)
            .is_none_or(|least| least > remaining)
        {
            return Err(GgufError::CountPastEnd {
                what,
                count,
                min_each,
                remaining,
                offset,
                location: ctx.location(),
            });
        }
        Ok(count)
    }

    pub(super) fn string(&mut self, max_len: u64, ctx: Ctx<'_>) -> Result<String, GgufError> {
        let len = self.count("string length", max_len, 1, ctx)?;
        let offset = self.offset();
        let bytes = self.take(len, ctx)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            offset,
            location: ctx.location(),
        })
    }
}

pub(super) fn read_header_version(cur: &mut Cursor<'_>) -> Result<u32, GgufError> {
    let magic: [u8; 4] = cur.array(Ctx::Header)?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cur.u32(Ctx::Header)?;
    let reason = match version {
        2 | 3 => return Ok(version),
        0 => "version 0 does not exist",
        1 => "GGUF v1 (32-bit counts) is no longer supported; convert the model again",
        // A v2/v3 file written big-endian reads as 0x0200_0000 / 0x0300_0000.
        v if v & 0xFFFF == 0 => "looks byte-swapped; big-endian GGUF files are not supported",
        _ => "newer than this reader, which supports versions 2 and 3",
    };
    Err(GgufError::UnsupportedVersion { version, reason })
}

pub(super) fn read_metadata(cur: &mut Cursor<'_>, n_kv: u64) -> Result<Metadata, GgufError> {
    let mut metadata = Metadata::new();
    for index in 0..n_kv {
        let key_offset = cur.offset();
        let key = cur.string(MAX_STRING_LEN, Ctx::Key(index))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey {
                index,
                offset: key_offset,
            });
        }
        if metadata.contains(&key) {
            return Err(GgufError::DuplicateKey {
                key,
                offset: key_offset,
            });
        }
        let ctx = Ctx::Value(&key);
        let ty = read_value_type(cur, ctx)?;
        let value = read_value(cur, ty, ctx)?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

pub(super) fn read_value_type(cur: &mut Cursor<'_>, ctx: Ctx<'_>) -> Result<ValueType, GgufError> {
    let offset = cur.offset();
    let type_id = cur.u32(ctx)?;
    ValueType::from_id(type_id).ok_or(GgufError::UnknownValueType {
        type_id,
        offset,
        location: ctx.location(),
    })
}

pub(super) fn read_value(
    cur: &mut Cursor<'_>,
    ty: ValueType,
    ctx: Ctx<'_>,
) -> Result<Value, GgufError> {
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(cur.array(ctx)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(cur.array(ctx)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cur.array(ctx)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cur.array(ctx)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(cur.array(ctx)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(cur.array(ctx)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(cur.array(ctx)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(cur.array(ctx)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(cur.array(ctx)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(cur.array(ctx)?)),
        ValueType::Bool => Value::Bool(read_bool(cur, ctx)?),
        ValueType::String => Value::String(cur.string(MAX_STRING_LEN, ctx)?),
        ValueType::Array => Value::Array(read_array(cur, 1, ctx)?),
    })
}

pub(super) fn read_bool(cur: &mut Cursor<'_>, ctx: Ctx<'_>) -> Result<bool, GgufError> {
    let offset = cur.offset();
    match cur.array::<1>(ctx)?[0] {
        0 => Ok(false),
        1 => Ok(true),
        byte => Err(GgufError::InvalidBool {
            offset,
            byte,
            location: ctx.location(),
        }),
    }
}

/// Reads `count` fixed-size scalars in one go.
pub(super) fn read_scalars<T, const N: usize>(
    cur: &mut Cursor<'_>,
    count: u64,
    ctx: Ctx<'_>,
    decode: fn([u8; N]) -> T,
) -> Result<Vec<T>, GgufError> {
    // count * N fits: `count` was checked against the bytes left.
    let bytes = cur.take(count * N as u64, ctx)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut raw = [0u8; N];
            raw.copy_from_slice(chunk);
            decode(raw)
        })
        .collect())
}

/// Reads an array's element type, count and elements. `depth` is 1 for an
/// array that is a key's value, 2 for an array inside it, and so on.
pub(super) fn read_array(
    cur: &mut Cursor<'_>,
    depth: usize,
    ctx: Ctx<'_>,
) -> Result<Array, GgufError> {
    let offset = cur.offset();
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::ArrayTooDeep {
            max: MAX_ARRAY_DEPTH,
            offset,
            location: ctx.location(),
        });
    }
    let elem = read_value_type(cur, ctx)?;
    let n = cur.count("array length", MAX_ARRAY_LEN, elem.min_encoded_size(), ctx)?;
    Ok(match elem {
        ValueType::U8 => Array::U8(read_scalars(cur, n, ctx, u8::from_le_bytes)?),
        ValueType::I8 => Array::I8(read_scalars(cur, n, ctx, i8::from_le_bytes)?),
        ValueType::U16 => Array::U16(read_scalars(cur, n, ctx, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(read_scalars(cur, n, ctx, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(read_scalars(cur, n, ctx, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(read_scalars(cur, n, ctx, i32::from_le_bytes)?),
        ValueType::F32 => Array::F32(read_scalars(cur, n, ctx, f32::from_le_bytes)?),
        ValueType::U64 => Array::U64(read_scalars(cur, n, ctx, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(read_scalars(cur, n, ctx, i64::from_le_bytes)?),
        ValueType::F64 => Array::F64(read_scalars(cur, n, ctx, f64::from_le_bytes)?),
        ValueType::Bool => Array::Bool(collect_n(n, || read_bool(cur, ctx))?),
        ValueType::String => Array::String(collect_n(n, || cur.string(MAX_STRING_LEN, ctx))?),
        ValueType::Array => Array::Array(collect_n(n, || read_array(cur, depth + 1, ctx))?),
    })
}

/// Most elements reserved up front for a list whose elements vary in size.
/// Past this the list grows as elements are actually read, so a hostile count
/// (nested inside other hostile counts) never reserves memory the file's bytes
/// do not back.
pub(super) const MAX_PREALLOC: u64 = 4096;

/// Calls `next` `n` times.
pub(super) fn collect_n<T>(
    n: u64,
    mut next: impl FnMut() -> Result<T, GgufError>,
) -> Result<Vec<T>, GgufError> {
    let mut out = Vec::with_capacity(n.min(MAX_PREALLOC) as usize);
    for _ in 0..n {
        out.push(next()?);
    }
    Ok(out)
}
