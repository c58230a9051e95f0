//! Configured consumers: API keys and client secrets, stored only as
//! SHA-256 digests.
//!
//! A presented key is hashed, the digest finds the consumer in a map, and
//! the stored digest is then compared in constant time. Looking a digest up
//! in a map leaks, through timing, at most something about the digest of a
//! key the caller already holds, never about a stored key (SHA-256 is
//! one-way), so the map keeps the lookup O(1) with any number of consumers.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// One `[[consumers]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// `id`
    pub id: String,
    /// `tier`
    pub tier: Option<String>,
    /// `roles`
    pub roles: Vec<String>,
    /// `scopes`
    pub scopes: Vec<String>,
    /// SHA-256 of the API key.
    pub api_key_sha256: Option<[u8; 32]>,
    /// SHA-256 of the client secret (client credentials grant).
    pub client_secret_sha256: Option<[u8; 32]>,
}

/// All consumers, indexed by id and by API-key digest.
#[derive(Debug, Default)]
pub struct Consumers {
    /// In config order.
    pub list: Vec<Consumer>,
    by_id: HashMap<String, usize>,
    by_key: HashMap<[u8; 32], usize>,
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Consumers {
    pub(crate) fn new(list: Vec<Consumer>) -> Consumers {
        let mut by_id = HashMap::new();
        let mut by_key = HashMap::new();
        for (i, c) in list.iter().enumerate() {
            by_id.insert(c.id.clone(), i);
            if let Some(d) = c.api_key_sha256 {
                by_key.insert(d, i);
            }
        }
        Consumers {
            list,
            by_id,
            by_key,
        }
    }

    /// True when at least one consumer has an API key.
    pub fn has_api_keys(&self) -> bool {
        !self.by_key.is_empty()
    }

    /// True when at least one consumer has a client secret.
    pub fn has_client_secrets(&self) -> bool {
        self.list.iter().any(|c| c.client_secret_sha256.is_some())
    }

    /// The consumer with this id.
    pub fn by_id(&self, id: &str) -> Option<&Consumer> {
        self.by_id.get(id).map(|&i| &self.list[i])
    }

    /// The index of the consumer whose API key is `key`, and the key's
    /// digest.
    pub fn by_api_key(&self, key: &[u8]) -> Option<(usize, [u8; 32])> {
        let d = sha256(key);
        let &i = self.by_key.get(&d)?;
        let stored = self.list[i].api_key_sha256?;
        bool::from(stored.ct_eq(&d)).then_some((i, d))
    }

    /// The consumer `id` when `secret` is its client secret.
    pub fn by_client_secret(&self, id: &str, secret: &[u8]) -> Option<&Consumer> {
        let d = sha256(secret);
        // Compare against a digest even for an unknown id, so the timing
        // does not tell which ids exist.
        let c = self.by_id(id);
        let stored = c.and_then(|c| c.client_secret_sha256).unwrap_or([0xa5; 32]);
        let eq = bool::from(stored.ct_eq(&d));
        match c {
            Some(c) if eq && c.client_secret_sha256.is_some() => Some(c),
            _ => None,
        }
    }
}
