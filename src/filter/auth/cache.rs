//! The per-worker cache of validated tokens.
//!
//! Keyed by a seeded 64-bit hash of the token bytes; an entry stores the
//! whole token, compared in full on every hit, so a hash collision is only
//! ever a miss. Only tokens that passed every check are inserted, and an
//! entry is dropped once the token's `exp` (plus leeway) has passed. When
//! full, expired entries are swept and, if that freed too little, arbitrary
//! entries (the map's order is randomised by the seed) are evicted down to
//! 90 % so the sweep's cost is spread over many inserts.
//!
//! Performance notes: a hit is one hash of the token (a few multiplies per
//! 8 bytes), one map probe, one memcmp and an `Rc` clone — no allocation.

use super::Authenticated;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// Passes a `u64` key through (the keys are already good hashes).
#[derive(Default)]
struct U64Pass(u64);

impl Hasher for U64Pass {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

struct Entry {
    token: Box<[u8]>,
    value: Rc<Authenticated>,
    expires_at: u64,
}

/// Validated tokens of one worker.
pub(crate) struct TokenCache {
    map: HashMap<u64, Entry, BuildHasherDefault<U64Pass>>,
    cap: usize,
    seed: u64,
    /// Which key set the entries were validated against.
    pub epoch: (usize, u64),
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn mix(a: u64, b: u64) -> u64 {
    let m = (a as u128).wrapping_mul(b as u128);
    (m as u64) ^ ((m >> 64) as u64)
}

/// A seeded hash of the token bytes.
#[inline]
pub(crate) fn token_hash(seed: u64, t: &[u8]) -> u64 {
    let mut h = seed ^ (t.len() as u64).wrapping_mul(K);
    let mut chunks = t.chunks_exact(16);
    for c in &mut chunks {
        let a = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
        let b = u64::from_le_bytes(c[8..].try_into().unwrap_or_default());
        h = mix(a ^ h, b ^ K);
    }
    let rest = chunks.remainder();
    let mut buf = [0u8; 16];
    buf[..rest.len()].copy_from_slice(rest);
    let a = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
    let b = u64::from_le_bytes(buf[8..].try_into().unwrap_or_default());
    mix(mix(a ^ h, b ^ K), seed ^ K)
}

impl TokenCache {
    pub(crate) fn new(cap: usize) -> TokenCache {
        let mut s = [0u8; 8];
        let seed = match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s) {
            Ok(()) => u64::from_le_bytes(s),
            Err(_) => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                t ^ (&s as *const _ as u64)
            }
        };
        TokenCache {
            map: HashMap::default(),
            cap: cap.max(1),
            seed,
            epoch: (0, 0),
        }
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Drops every entry.
    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }

    /// The cached result for `token`, if still valid at `now`.
    #[inline]
    pub(crate) fn get(&mut self, token: &[u8], now: u64) -> Option<Rc<Authenticated>> {
        let h = token_hash(self.seed, token);
        let e = self.map.get(&h)?;
        // A plain compare: only a token whose seeded hash equals a cached
        // token's reaches it, and without the per-worker seed finding one
        // is a 2^-64 guess, so its timing tells a client nothing; a
        // constant-time compare would cost every hit hundreds of
        // nanoseconds for no gain. The secrets ringgate checks (API keys,
        // client secrets, the admin token, HMAC signatures) are compared
        // in constant time.
        if &*e.token != token {
            return None;
        }
        if now >= e.expires_at {
            self.map.remove(&h);
            return None;
        }
        Some(e.value.clone())
    }

    /// Remembers a validated token until `expires_at`.
    pub(crate) fn insert(
        &mut self,
        token: &[u8],
        value: Rc<Authenticated>,
        expires_at: u64,
        now: u64,
    ) {
        if self.map.len() >= self.cap {
            self.make_room(now);
        }
        let h = token_hash(self.seed, token);
        self.map.insert(
            h,
            Entry {
                token: token.into(),
                value,
                expires_at,
            },
        );
    }

    fn make_room(&mut self, now: u64) {
        self.map.retain(|_, e| e.expires_at > now);
        let target = self.cap - self.cap / 10 - 1;
        if self.map.len() > target {
            let drop: Vec<u64> = self
                .map
                .keys()
                .copied()
                .take(self.map.len() - target)
                .collect();
            for k in drop {
                self.map.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{AuthMethod, Identity};

    fn value() -> Rc<Authenticated> {
        Rc::new(Authenticated::new(Identity {
            method: AuthMethod::Jwt,
            subject: "s".into(),
            consumer: None,
            tier: None,
            roles: Vec::new(),
            scopes: Vec::new(),
            api_key_id: None,
        }))
    }

    #[test]
    fn hit_miss_and_expiry() {
        let mut c = TokenCache::new(10);
        c.insert(b"token-a", value(), 100, 50);
        assert!(c.get(b"token-a", 99).is_some());
        assert!(c.get(b"token-b", 99).is_none());
        assert!(c.get(b"token-", 99).is_none());
        // Expired at exactly expires_at, and removed.
        assert!(c.get(b"token-a", 100).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn stays_bounded_and_sweeps_expired_first() {
        let mut c = TokenCache::new(100);
        for i in 0..100u32 {
            // Half expire at 10, half at 1000.
            let exp = if i % 2 == 0 { 10 } else { 1000 };
            c.insert(format!("t{i}").as_bytes(), value(), exp, 0);
        }
        assert_eq!(c.len(), 100);
        c.insert(b"new", value(), 1000, 20);
        // The 50 expired entries were swept; nothing live was evicted.
        assert_eq!(c.len(), 51);
        for i in (1..100u32).step_by(2) {
            assert!(c.get(format!("t{i}").as_bytes(), 20).is_some());
        }
        for i in 0..10_000u32 {
            c.insert(format!("u{i}").as_bytes(), value(), 1000, 20);
            assert!(c.len() <= 100);
        }
        assert!(c.get(format!("u{}", 9_999).as_bytes(), 20).is_some());
    }

    #[test]
    fn hash_depends_on_every_byte_and_the_seed() {
        let t = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        let h = token_hash(1, t);
        for i in 0..t.len() {
            let mut u = t.to_vec();
            u[i] ^= 1;
            assert_ne!(token_hash(1, &u), h, "byte {i}");
        }
        assert_ne!(token_hash(2, t), h);
        assert_ne!(token_hash(1, &t[..t.len() - 1]), h);
    }
}
