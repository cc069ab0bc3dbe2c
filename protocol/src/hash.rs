//! FNV-1a, 64-bit: the hash `SET_TENSOR_HASH` and the server's cache use.
//!
//! The standard variant: offset basis `0xcbf29ce484222325`, prime
//! `0x100000001b3`, each byte XORed in before the multiplication.

/// FNV-1a 64 offset basis.
pub const FNV1A_64_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
pub const FNV1A_64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `data`.
pub fn fnv1a_64(data: &[u8]) -> u64 {
    let mut h = Fnv1a64::new();
    h.update(data);
    h.finish()
}

/// Incremental FNV-1a 64, for data that arrives in pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv1a64(u64);

impl Fnv1a64 {
    /// A hasher at the offset basis.
    pub const fn new() -> Self {
        Fnv1a64(FNV1A_64_OFFSET_BASIS)
    }

    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV1A_64_PRIME);
        }
        self.0 = h;
    }

    /// The hash of every byte fed so far.
    pub const fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn incremental_matches_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = Fnv1a64::new();
        for chunk in data.chunks(33) {
            h.update(chunk);
        }
        assert_eq!(h.finish(), fnv1a_64(&data));
    }
}
