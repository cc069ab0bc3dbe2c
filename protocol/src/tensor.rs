//! `rpc_tensor`: a ggml tensor as it travels on the wire (296 bytes, packed).

use bytes::BufMut;
use std::fmt;

use crate::error::NameError;
use crate::{GGML_MAX_DIMS, GGML_MAX_NAME, GGML_MAX_SRC, OP_PARAMS_LEN, RPC_TENSOR_SIZE};

// Byte offsets of the fields inside the packed struct.
const OFF_ID: usize = 0;
const OFF_TYPE: usize = 8;
const OFF_BUFFER: usize = 12;
const OFF_NE: usize = 20;
const OFF_NB: usize = OFF_NE + 4 * GGML_MAX_DIMS; // 36
const OFF_OP: usize = OFF_NB + 4 * GGML_MAX_DIMS; // 52
const OFF_OP_PARAMS: usize = OFF_OP + 4; // 56
const OFF_FLAGS: usize = OFF_OP_PARAMS + 4 * OP_PARAMS_LEN; // 120
const OFF_SRC: usize = OFF_FLAGS + 4; // 124
const OFF_VIEW_SRC: usize = OFF_SRC + 8 * GGML_MAX_SRC; // 204
const OFF_VIEW_OFFS: usize = OFF_VIEW_SRC + 8; // 212
const OFF_DATA: usize = OFF_VIEW_OFFS + 8; // 220
const OFF_NAME: usize = OFF_DATA + 8; // 228
const OFF_USE_COUNT: usize = OFF_NAME + GGML_MAX_NAME; // 292
const END: usize = OFF_USE_COUNT + 4;

const _: () = assert!(END == RPC_TENSOR_SIZE);

/// A tensor as described on the wire.
///
/// Ids are client-chosen, non-zero and unique within one graph message;
/// `src` and `view_src` refer to other tensors by id (0 = none). `buffer` is
/// the `remote_ptr` of the buffer holding the data (0 = none) and `data` the
/// absolute remote address `base + offset`, which must lie inside `buffer`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RpcTensor {
    /// Client-chosen id (non-zero for a real tensor).
    pub id: u64,
    /// `ggml_type`.
    pub ty: u32,
    /// `remote_ptr` of the buffer holding the data, 0 if none.
    pub buffer: u64,
    /// Elements per dimension.
    pub ne: [u32; GGML_MAX_DIMS],
    /// Byte strides per dimension.
    pub nb: [u32; GGML_MAX_DIMS],
    /// `ggml_op` (numbering of the server's ggml build).
    pub op: u32,
    /// Op parameters.
    pub op_params: [i32; OP_PARAMS_LEN],
    /// `ggml_tensor_flag` bits.
    pub flags: i32,
    /// Ids of the source tensors, 0 = none.
    pub src: [u64; GGML_MAX_SRC],
    /// Id of the tensor this one is a view of, 0 = none.
    pub view_src: u64,
    /// Byte offset of the view inside `view_src`.
    pub view_offs: u64,
    /// Absolute remote address of the data (buffer base + offset), 0 if none.
    pub data: u64,
    /// Name, NUL-padded (see [`RpcTensor::name`] and [`RpcTensor::set_name`]).
    pub name: [u8; GGML_MAX_NAME],
    /// How many graph nodes use this tensor.
    pub use_count: i32,
}

impl Default for RpcTensor {
    /// The all-zero tensor: what llama.cpp sends for "no tensor" (e.g. unused
    /// `GET_ALLOC_SIZE` source slots).
    fn default() -> Self {
        RpcTensor {
            id: 0,
            ty: 0,
            buffer: 0,
            ne: [0; GGML_MAX_DIMS],
            nb: [0; GGML_MAX_DIMS],
            op: 0,
            op_params: [0; OP_PARAMS_LEN],
            flags: 0,
            src: [0; GGML_MAX_SRC],
            view_src: 0,
            view_offs: 0,
            data: 0,
            name: [0; GGML_MAX_NAME],
            use_count: 0,
        }
    }
}

/// Copies `N` bytes at `off`; constant offsets inside the array, so never out of bounds.
fn get<const N: usize>(b: &[u8; RPC_TENSOR_SIZE], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(off..off.saturating_add(N)) {
        out.copy_from_slice(s);
    }
    out
}

fn put(b: &mut [u8; RPC_TENSOR_SIZE], off: usize, v: &[u8]) {
    if let Some(s) = b.get_mut(off..off.saturating_add(v.len())) {
        s.copy_from_slice(v);
    }
}

impl RpcTensor {
    /// Size on the wire (296).
    pub const WIRE_SIZE: usize = RPC_TENSOR_SIZE;

    /// The packed little-endian wire form.
    pub fn to_bytes(&self) -> [u8; RPC_TENSOR_SIZE] {
        let mut b = [0u8; RPC_TENSOR_SIZE];
        put(&mut b, OFF_ID, &self.id.to_le_bytes());
        put(&mut b, OFF_TYPE, &self.ty.to_le_bytes());
        put(&mut b, OFF_BUFFER, &self.buffer.to_le_bytes());
        for (i, v) in self.ne.iter().enumerate() {
            put(&mut b, OFF_NE + 4 * i, &v.to_le_bytes());
        }
        for (i, v) in self.nb.iter().enumerate() {
            put(&mut b, OFF_NB + 4 * i, &v.to_le_bytes());
        }
        put(&mut b, OFF_OP, &self.op.to_le_bytes());
        for (i, v) in self.op_params.iter().enumerate() {
            put(&mut b, OFF_OP_PARAMS + 4 * i, &v.to_le_bytes());
        }
        put(&mut b, OFF_FLAGS, &self.flags.to_le_bytes());
        for (i, v) in self.src.iter().enumerate() {
            put(&mut b, OFF_SRC + 8 * i, &v.to_le_bytes());
        }
        put(&mut b, OFF_VIEW_SRC, &self.view_src.to_le_bytes());
        put(&mut b, OFF_VIEW_OFFS, &self.view_offs.to_le_bytes());
        put(&mut b, OFF_DATA, &self.data.to_le_bytes());
        put(&mut b, OFF_NAME, &self.name);
        put(&mut b, OFF_USE_COUNT, &self.use_count.to_le_bytes());
        b
    }

    /// Parses the packed wire form. Every bit pattern is a valid `RpcTensor`.
    pub fn from_bytes(b: &[u8; RPC_TENSOR_SIZE]) -> Self {
        let u32_at = |off| u32::from_le_bytes(get(b, off));
        let i32_at = |off| i32::from_le_bytes(get(b, off));
        let u64_at = |off| u64::from_le_bytes(get(b, off));
        RpcTensor {
            id: u64_at(OFF_ID),
            ty: u32_at(OFF_TYPE),
            buffer: u64_at(OFF_BUFFER),
            ne: std::array::from_fn(|i| u32_at(OFF_NE + 4 * i)),
            nb: std::array::from_fn(|i| u32_at(OFF_NB + 4 * i)),
            op: u32_at(OFF_OP),
            op_params: std::array::from_fn(|i| i32_at(OFF_OP_PARAMS + 4 * i)),
            flags: i32_at(OFF_FLAGS),
            src: std::array::from_fn(|i| u64_at(OFF_SRC + 8 * i)),
            view_src: u64_at(OFF_VIEW_SRC),
            view_offs: u64_at(OFF_VIEW_OFFS),
            data: u64_at(OFF_DATA),
            name: get(b, OFF_NAME),
            use_count: i32_at(OFF_USE_COUNT),
        }
    }

    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_slice(&self.to_bytes());
    }

    /// Parses the wire form from a slice of exactly [`RpcTensor::WIRE_SIZE`]
    /// bytes; `None` for any other length.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let arr: &[u8; RPC_TENSOR_SIZE] = b.try_into().ok()?;
        Some(Self::from_bytes(arr))
    }

    /// The name's bytes, up to the first NUL (all 64 bytes if there is none).
    pub fn name_bytes(&self) -> &[u8] {
        let end = self
            .name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(self.name.len());
        self.name.get(..end).unwrap_or(&[])
    }

    /// The name as text, up to the first NUL; `None` if it is not UTF-8.
    pub fn name(&self) -> Option<&str> {
        std::str::from_utf8(self.name_bytes()).ok()
    }

    /// Stores `name`, NUL-padded. At most 63 bytes (ggml keeps a terminating
    /// NUL), no NUL inside.
    pub fn set_name(&mut self, name: &str) -> Result<(), NameError> {
        let bytes = name.as_bytes();
        let max = GGML_MAX_NAME - 1;
        if bytes.len() > max {
            return Err(NameError::TooLong {
                len: bytes.len(),
                max,
            });
        }
        if bytes.contains(&0) {
            return Err(NameError::InteriorNul);
        }
        self.name = [0; GGML_MAX_NAME];
        if let Some(dst) = self.name.get_mut(..bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        Ok(())
    }

    /// Like [`RpcTensor::set_name`], returning `self` for chaining.
    pub fn with_name(mut self, name: &str) -> Result<Self, NameError> {
        self.set_name(name)?;
        Ok(self)
    }
}

impl fmt::Debug for RpcTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcTensor")
            .field("id", &self.id)
            .field("name", &String::from_utf8_lossy(self.name_bytes()))
            .field("ty", &self.ty)
            .field("buffer", &format_args!("{:#x}", self.buffer))
            .field("data", &format_args!("{:#x}", self.data))
            .field("ne", &self.ne)
            .field("nb", &self.nb)
            .field("op", &self.op)
            .field("op_params", &self.op_params)
            .field("flags", &self.flags)
            .field("src", &self.src)
            .field("view_src", &self.view_src)
            .field("view_offs", &self.view_offs)
            .field("use_count", &self.use_count)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor whose every field has a distinct, recognisable value.
    pub(crate) fn sample() -> RpcTensor {
        let mut t = RpcTensor {
            id: 0x0102_0304_0506_0708,
            ty: 0x1112_1314,
            buffer: 0x2122_2324_2526_2728,
            ne: [1, 2, 3, 4],
            nb: [5, 6, 7, 8],
            op: 0x3132_3334,
            op_params: std::array::from_fn(|i| -(i as i32) - 1),
            flags: -7,
            src: std::array::from_fn(|i| 100 + i as u64),
            view_src: 0x4142_4344_4546_4748,
            view_offs: 0x5152_5354_5556_5758,
            data: 0x6162_6364_6566_6768,
            name: [0; GGML_MAX_NAME],
            use_count: 0x7172_7374,
        };
        t.set_name("blk.0.attn_q.weight").unwrap();
        t
    }

    #[test]
    fn field_offsets() {
        let b = sample().to_bytes();
        assert_eq!(b.len(), 296);
        assert_eq!(b[0..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(b[8..12], 0x1112_1314u32.to_le_bytes());
        assert_eq!(b[12..20], 0x2122_2324_2526_2728u64.to_le_bytes());
        assert_eq!(b[20..24], 1u32.to_le_bytes());
        assert_eq!(b[32..36], 4u32.to_le_bytes());
        assert_eq!(b[36..40], 5u32.to_le_bytes());
        assert_eq!(b[48..52], 8u32.to_le_bytes());
        assert_eq!(b[52..56], 0x3132_3334u32.to_le_bytes());
        assert_eq!(b[56..60], (-1i32).to_le_bytes());
        assert_eq!(b[116..120], (-16i32).to_le_bytes());
        assert_eq!(b[120..124], (-7i32).to_le_bytes());
        assert_eq!(b[124..132], 100u64.to_le_bytes());
        assert_eq!(b[196..204], 109u64.to_le_bytes());
        assert_eq!(b[204..212], 0x4142_4344_4546_4748u64.to_le_bytes());
        assert_eq!(b[212..220], 0x5152_5354_5556_5758u64.to_le_bytes());
        assert_eq!(b[220..228], 0x6162_6364_6566_6768u64.to_le_bytes());
        assert_eq!(&b[228..247], b"blk.0.attn_q.weight");
        assert!(b[247..292].iter().all(|&c| c == 0));
        assert_eq!(b[292..296], 0x7172_7374u32.to_le_bytes());
    }

    #[test]
    fn round_trip() {
        let t = sample();
        assert_eq!(RpcTensor::from_bytes(&t.to_bytes()), t);
        let mut v = Vec::new();
        t.encode(&mut v);
        assert_eq!(RpcTensor::from_slice(&v), Some(t));
        assert_eq!(RpcTensor::from_slice(&v[..295]), None);
        assert_eq!(RpcTensor::default().to_bytes(), [0u8; 296]);
    }

    #[test]
    fn names() {
        let mut t = RpcTensor::default();
        assert_eq!(t.name(), Some(""));
        t.set_name(&"x".repeat(63)).unwrap();
        assert_eq!(t.name().unwrap().len(), 63);
        assert_eq!(
            t.set_name(&"x".repeat(64)),
            Err(NameError::TooLong { len: 64, max: 63 })
        );
        assert_eq!(t.set_name("a\0b"), Err(NameError::InteriorNul));
        t.set_name("short").unwrap();
        assert_eq!(t.name(), Some("short"));
        assert!(t.name[5..].iter().all(|&c| c == 0));
        // 64 bytes without a NUL (possible from the wire): all of them.
        t.name = [b'y'; 64];
        assert_eq!(t.name_bytes().len(), 64);
        t.name[0] = 0xff;
        assert_eq!(t.name(), None);
    }
}
