//! A small FxHash-style hasher for the route table's build-once maps.
//!
//! The keys of these maps (path segments, host names, route ids) come from the
//! trusted configuration, so HashDoS resistance is not needed: a request can
//! only probe a table whose layout the operator chose. What matters is that
//! hashing a short byte string costs a handful of multiplies, not SipHash's
//! dozens of rounds.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiplier from rustc-hash 2 (an odd constant with good bit dispersion).
const SEED: u64 = 0xf135_7aea_2e62_a9c5;

/// `BuildHasher` for [`FxHasher`]; zero-sized, `Send + Sync`.
pub(crate) type FxBuildHasher = BuildHasherDefault<FxHasher>;

/// A `HashMap` using [`FxHasher`].
pub(crate) type FxHashMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// FxHash-style hasher: fold each word in with a rotate, xor and multiply.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let mut rest = chunks.remainder();
        if rest.len() >= 4 {
            let mut w = [0u8; 4];
            w.copy_from_slice(&rest[..4]);
            self.add(u64::from(u32::from_le_bytes(w)));
            rest = &rest[4..];
        }
        for &b in rest {
            self.add(u64::from(b));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The multiply leaves the best-mixed bits at the top; hashbrown takes
        // the bucket index from the low bits, so rotate the good ones down.
        self.hash.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn similar_keys_spread_over_low_bits() {
        let bh = FxBuildHasher::default();
        let buckets: HashSet<u64> = (0..4096)
            .map(|i| bh.hash_one(format!("svc{i}").as_bytes()) & 0xfff)
            .collect();
        // A decent hash fills well over half of 4096 buckets with 4096 keys.
        assert!(buckets.len() > 2000, "only {} buckets used", buckets.len());
    }

    #[test]
    fn equal_bytes_equal_hash() {
        let bh = FxBuildHasher::default();
        let boxed: Box<[u8]> = Box::from(&b"items"[..]);
        assert_eq!(bh.hash_one(&boxed), bh.hash_one(&b"items"[..]));
    }
}
