//! ggml type and op ids, and the type traits ggml itself reports.

use std::ffi::CStr;

use llama_cpp_sys_2 as sys;

/// A ggml tensor element type id (`enum ggml_type`).
pub type GgmlType = u32;

/// Op ids (`enum ggml_op`) of the ggml version this crate is built against.
/// The RPC wire format carries these numbers, so they must match the servers'.
pub mod op {
    #![allow(missing_docs)]
    use llama_cpp_sys_2 as sys;
    pub const NONE: u32 = sys::GGML_OP_NONE;
    pub const ADD: u32 = sys::GGML_OP_ADD;
    pub const MUL: u32 = sys::GGML_OP_MUL;
    pub const MUL_MAT: u32 = sys::GGML_OP_MUL_MAT;
    pub const VIEW: u32 = sys::GGML_OP_VIEW;
    pub const RESHAPE: u32 = sys::GGML_OP_RESHAPE;
    pub const PERMUTE: u32 = sys::GGML_OP_PERMUTE;
    pub const TRANSPOSE: u32 = sys::GGML_OP_TRANSPOSE;
    pub const GET_ROWS: u32 = sys::GGML_OP_GET_ROWS;
    pub const CPY: u32 = sys::GGML_OP_CPY;
    pub const FLASH_ATTN_EXT: u32 = sys::GGML_OP_FLASH_ATTN_EXT;

    /// Whether ggml's graph allocator lets a node of `op` write over a
    /// source it is the last reader of (same type, shape and strides): the
    /// element-wise ops, norms, RoPE and softmax (`ggml_op_can_inplace` in
    /// ggml-alloc.c). Every backend computes these correctly in place.
    pub fn can_run_in_place(op: u32) -> bool {
        matches!(
            op,
            sys::GGML_OP_FILL
                | sys::GGML_OP_SCALE
                | sys::GGML_OP_DIAG_MASK_ZERO
                | sys::GGML_OP_DIAG_MASK_INF
                | sys::GGML_OP_ADD
                | sys::GGML_OP_ADD_ID
                | sys::GGML_OP_ADD1
                | sys::GGML_OP_SUB
                | sys::GGML_OP_MUL
                | sys::GGML_OP_DIV
                | sys::GGML_OP_SQR
                | sys::GGML_OP_SQRT
                | sys::GGML_OP_LOG
                | sys::GGML_OP_UNARY
                | sys::GGML_OP_ROPE
                | sys::GGML_OP_ROPE_BACK
                | sys::GGML_OP_SILU_BACK
                | sys::GGML_OP_RMS_NORM
                | sys::GGML_OP_RMS_NORM_BACK
                | sys::GGML_OP_CLAMP
                | sys::GGML_OP_SOFT_MAX
                | sys::GGML_OP_SOFT_MAX_BACK
        )
    }
}

/// Number of ops (`GGML_OP_COUNT`) in this ggml build.
pub fn op_count() -> u32 {
    sys::GGML_OP_COUNT
}

/// Whether `ty` names a type ggml can size (not a removed or out-of-range id).
fn is_known_type(ty: GgmlType) -> bool {
    if ty >= sys::GGML_TYPE_COUNT {
        return false;
    }
    // SAFETY: `ty` is below GGML_TYPE_COUNT, so ggml indexes its own type table
    // in bounds; removed types have block size 0 there.
    unsafe { sys::ggml_blck_size(ty) > 0 }
}

/// Bytes per block of `ty`, or `None` for an unknown or removed type.
pub fn type_size(ty: GgmlType) -> Option<usize> {
    if !is_known_type(ty) {
        return None;
    }
    // SAFETY: `ty` was checked to be a valid index into ggml's type table.
    Some(unsafe { sys::ggml_type_size(ty) })
}

/// Elements per block of `ty`, or `None` for an unknown or removed type.
pub fn type_blck_size(ty: GgmlType) -> Option<usize> {
    if !is_known_type(ty) {
        return None;
    }
    // SAFETY: `ty` was checked to be a valid index into ggml's type table.
    let b = unsafe { sys::ggml_blck_size(ty) };
    usize::try_from(b).ok()
}

/// Converts `out.len()` elements of type `ty` stored in `src` to f32 with
/// ggml's own conversion (what its `get_rows` does on the CPU, so a row
/// comes out bit for bit as a server would produce it). `out.len()` must be
/// a whole number of blocks and `src` exactly their size.
pub fn to_f32(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<(), crate::GgmlError> {
    let bad = |why: String| crate::GgmlError::Backend(why);
    let (Some(bs), Some(ts)) = (type_blck_size(ty), type_size(ty)) else {
        return Err(bad(format!("unknown ggml type {ty}")));
    };
    let n = out.len();
    if bs == 0 || !n.is_multiple_of(bs) || src.len() != n / bs * ts {
        return Err(bad(format!(
            "{} elements of {} take {} bytes, not {}",
            n,
            type_name(ty).unwrap_or("?"),
            n / bs.max(1) * ts,
            src.len()
        )));
    }
    // SAFETY: `ty` is a known type, so ggml returns its static traits entry.
    let traits = unsafe { sys::ggml_get_type_traits(ty) };
    // SAFETY: non-null pointers from ggml point at its static table.
    let to_float = unsafe { traits.as_ref() }.and_then(|t| t.to_float);
    if ty == sys::GGML_TYPE_F32 {
        for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        return Ok(());
    }
    let Some(f) = to_float else {
        return Err(bad(format!(
            "ggml cannot convert {} to f32",
            type_name(ty).unwrap_or("?")
        )));
    };
    let n64 = i64::try_from(n).map_err(|_| bad("row too long".into()))?;
    // SAFETY: `src` holds exactly n/bs blocks of `ty` and `out` has room for
    // n floats (both checked above); the function reads and writes only those.
    unsafe { f(src.as_ptr().cast(), out.as_mut_ptr(), n64) };
    Ok(())
}

/// ggml's name of `ty` (e.g. `q4_1`), or `None` for an unknown type.
pub fn type_name(ty: GgmlType) -> Option<&'static str> {
    if !is_known_type(ty) {
        return None;
    }
    // SAFETY: valid type id; ggml returns a pointer to a static NUL-terminated
    // string in its type table.
    let p = unsafe { sys::ggml_type_name(ty) };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null static C string (see above).
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

/// ggml's name of op `op` (e.g. `MUL_MAT`), or `None` if out of range.
pub fn op_name(op: u32) -> Option<&'static str> {
    if op >= sys::GGML_OP_COUNT {
        return None;
    }
    // SAFETY: `op` is in range, ggml returns a static NUL-terminated string.
    let p = unsafe { sys::ggml_op_name(op) };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null static C string.
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

/// Type ids of the element types the coordinator builds tensors of.
pub mod ty {
    #![allow(missing_docs)]
    use llama_cpp_sys_2 as sys;
    pub const F32: u32 = sys::GGML_TYPE_F32;
    pub const F16: u32 = sys::GGML_TYPE_F16;
    pub const I32: u32 = sys::GGML_TYPE_I32;
    pub const I64: u32 = sys::GGML_TYPE_I64;
}

#[cfg(test)]
mod tests {
    use super::{to_f32, ty};

    #[test]
    fn converts_f16_and_f32_rows_and_refuses_wrong_sizes() {
        // 1.0, -2.0 and 0.5 as IEEE half floats.
        let half: Vec<u8> = [0x3c00u16, 0xc000, 0x3800]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let mut out = [0f32; 3];
        to_f32(ty::F16, &half, &mut out).unwrap();
        assert_eq!(out, [1.0, -2.0, 0.5]);
        let full: Vec<u8> = [3.5f32, -1.25]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mut out = [0f32; 2];
        to_f32(ty::F32, &full, &mut out).unwrap();
        assert_eq!(out, [3.5, -1.25]);
        assert!(to_f32(ty::F16, &half[..4], &mut [0f32; 3]).is_err());
        assert!(to_f32(9999, &half, &mut [0f32; 3]).is_err());
    }

    #[test]
    fn converts_a_quantized_block() {
        // One Q8_0 block: f16 scale 0.5, then 32 signed bytes.
        let mut block = 0x3800u16.to_le_bytes().to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = [0f32; 32];
        to_f32(llama_cpp_sys_2::GGML_TYPE_Q8_0, &block, &mut out).unwrap();
        for (i, v) in out.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 16.0) * 0.5);
        }
        // Not a whole block.
        assert!(to_f32(llama_cpp_sys_2::GGML_TYPE_Q8_0, &block, &mut [0f32; 16]).is_err());
    }
}
