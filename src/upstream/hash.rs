//! Fixed-seed hashing for `consistent_hash` and sticky canary splits.
//!
//! The seed is a constant, so every worker of every gateway instance maps a
//! key to the same target. The hash is FNV-1a over the bytes followed by a
//! splitmix64 finaliser: cheap, allocation-free, and well mixed enough for
//! rendezvous scoring. It is not meant to resist chosen keys.

/// The fixed seed (never change it: instances must agree).
pub const SEED: u64 = 0x6a09_e667_f3bc_c908;

/// Hashes `bytes` with the fixed seed.
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ SEED;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser.
#[inline]
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Rendezvous hash of `key` on a target whose address hashes to `target`
/// (higher wins). With equal weights the winner is the same as with
/// [`rendezvous_score`], which is monotonic in this hash.
#[inline]
pub fn rendezvous_hash(key: u64, target: u64) -> u64 {
    mix(key ^ target.rotate_left(32))
}

/// Weighted rendezvous score of `key` on a target whose address hashes to
/// `target` (higher wins): `-weight / ln(u)` with `u` uniform in (0, 1)
/// from the pair's hash. Removing a target moves only the keys it won.
#[inline]
pub fn rendezvous_score(key: u64, target: u64, weight: u32) -> f64 {
    let h = rendezvous_hash(key, target);
    // 53 random bits → u in (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight as f64 / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: u64 = 0x1baa_6ad1_3f97_43bb;

    #[test]
    fn hashing_is_stable_across_runs() {
        // Pinned value: a change here would remap every key in production.
        assert_eq!(hash_bytes(b"user-1"), PINNED);
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
    }

    /// The equal-weight fast path picks what the weighted score picks, so
    /// instances agree whichever path they take.
    #[test]
    fn equal_weight_fast_path_agrees_with_the_score() {
        let targets: Vec<u64> = (0..7)
            .map(|i| hash_bytes(format!("t{i}").as_bytes()))
            .collect();
        for k in 0..10_000u64 {
            let key = mix(k);
            let by_hash = (0..7).max_by_key(|&i| rendezvous_hash(key, targets[i]));
            let by_score = (0..7).max_by(|&a, &b| {
                rendezvous_score(key, targets[a], 3)
                    .total_cmp(&rendezvous_score(key, targets[b], 3))
            });
            assert_eq!(by_hash, by_score, "key {k}");
        }
    }

    #[test]
    fn rendezvous_respects_weights() {
        let targets: Vec<u64> = (0..3)
            .map(|i| hash_bytes(format!("t{i}").as_bytes()))
            .collect();
        let weights = [1u32, 1, 2];
        let mut wins = [0u32; 3];
        for k in 0..40_000u64 {
            let key = mix(k);
            let best = (0..3)
                .max_by(|&a, &b| {
                    rendezvous_score(key, targets[a], weights[a])
                        .total_cmp(&rendezvous_score(key, targets[b], weights[b]))
                })
                .unwrap();
            wins[best] += 1;
        }
        // Expect 25% / 25% / 50%.
        assert!((9_000..11_000).contains(&wins[0]), "{wins:?}");
        assert!((9_000..11_000).contains(&wins[1]), "{wins:?}");
        assert!((19_000..21_000).contains(&wins[2]), "{wins:?}");
    }
}
