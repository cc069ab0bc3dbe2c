//! Little-endian reading and writing of primitive fields.
//!
//! The reader never indexes: every read is a checked split that yields `None`
//! when the bytes run out.

use bytes::BufMut;

/// A cursor over untrusted bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.rest.split_first_chunk::<N>()?;
        self.rest = tail;
        Some(*head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
}

pub(crate) fn put_u8(out: &mut impl BufMut, v: u8) {
    out.put_u8(v);
}

pub(crate) fn put_u32(out: &mut impl BufMut, v: u32) {
    out.put_u32_le(v);
}

pub(crate) fn put_u64(out: &mut impl BufMut, v: u64) {
    out.put_u64_le(v);
}

/// `usize` → `u64` without a lossy cast (every supported target has
/// `usize` ≤ 64 bits; saturate otherwise).
pub(crate) fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
