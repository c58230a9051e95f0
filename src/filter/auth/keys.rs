//! Verification keys (a secret, a PEM public key, JWKS keys) and the
//! gateway's own signing key for the token endpoint.
//!
//! Every key carries the set of algorithms it may verify: the configured
//! `algorithms` intersected with what the key's type can do (and with a
//! JWK's own `alg`). A token is only ever checked with a key whose set holds
//! the token's `alg`, which is what rules out algorithm confusion (an HS256
//! token is never "verified" with an RSA public key used as an HMAC secret).

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use std::collections::HashMap;

/// Every algorithm ringgate verifies, in the order config errors list them.
pub(crate) const ALL: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The JOSE name of an algorithm.
pub(crate) fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// An algorithm from its exact JOSE name (`none` and unknown names: None).
pub(crate) fn parse_alg(s: &str) -> Option<Algorithm> {
    ALL.iter().copied().find(|&a| alg_name(a) == s)
}

/// Key types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl Family {
    pub(crate) fn of(a: Algorithm) -> Family {
        match a {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
            Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
            Algorithm::EdDSA => Family::Ed,
            _ => Family::Rsa,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::Hmac => "HMAC secret",
            Family::Rsa => "RSA key",
            Family::Ec => "EC key",
            Family::Ed => "Ed25519 key",
        }
    }

    /// The algorithms a key of this family can verify.
    pub(crate) fn algs(self) -> AlgSet {
        ALL.iter()
            .copied()
            .filter(|&a| Family::of(a) == self)
            .collect()
    }
}

/// A set of algorithms (a bit per entry of [`ALL`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlgSet(u16);

impl AlgSet {
    fn bit(a: Algorithm) -> u16 {
        1 << ALL.iter().position(|&x| x == a).unwrap_or(0)
    }

    /// Adds an algorithm.
    pub(crate) fn insert(&mut self, a: Algorithm) {
        self.0 |= Self::bit(a);
    }

    /// True when `a` is in the set.
    #[inline]
    pub(crate) fn contains(self, a: Algorithm) -> bool {
        self.0 & Self::bit(a) != 0
    }

    /// Both sets.
    pub(crate) fn and(self, o: AlgSet) -> AlgSet {
        AlgSet(self.0 & o.0)
    }

    /// True when empty.
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The algorithms, in [`ALL`] order.
    pub(crate) fn iter(self) -> impl Iterator<Item = Algorithm> {
        ALL.into_iter().filter(move |&a| self.contains(a))
    }

    /// A single algorithm.
    pub(crate) fn one(a: Algorithm) -> AlgSet {
        AlgSet(Self::bit(a))
    }
}

impl FromIterator<Algorithm> for AlgSet {
    fn from_iter<I: IntoIterator<Item = Algorithm>>(it: I) -> Self {
        let mut s = AlgSet::default();
        for a in it {
            s.insert(a);
        }
        s
    }
}

/// One key that can verify signatures.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    /// `kid`, when the key has one.
    pub kid: Option<Box<str>>,
    /// Algorithms this key may verify (all of one [`Family`]).
    pub algs: AlgSet,
    /// The key.
    pub key: DecodingKey,
}

impl VerifyKey {
    /// True when this key may verify `alg`: in its set, and of its family
    /// (checked twice on purpose: jsonwebtoken panics on an HMAC check with
    /// an RSA-components key, and a worker panic aborts the process).
    #[inline]
    pub(crate) fn allows(&self, alg: Algorithm) -> bool {
        self.algs.contains(alg)
            && self
                .algs
                .iter()
                .next()
                .is_some_and(|a| Family::of(a) == Family::of(alg))
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish_non_exhaustive()
    }
}

/// The keys in force: immutable, swapped whole when a JWKS changes.
#[derive(Debug, Default)]
pub struct KeySet {
    pub(crate) keys: Vec<VerifyKey>,
    by_kid: HashMap<Box<str>, Vec<u32>>,
}

/// Most keys tried for one token that names no known `kid` (each try is a
/// signature check, so this bounds the work a forged token can cause).
pub(crate) const MAX_TRIES: usize = 4;

impl KeySet {
    pub(crate) fn new(keys: Vec<VerifyKey>) -> KeySet {
        let mut by_kid: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(kid) = &k.kid {
                by_kid.entry(kid.clone()).or_default().push(i as u32);
            }
        }
        KeySet { keys, by_kid }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys to try for a token with this `kid` and `alg`, and whether
    /// the `kid` was known. A known `kid` selects exactly its keys; an
    /// unknown one falls back to the keys without a `kid` (a secret or a PEM
    /// key); no `kid` tries every key that can do `alg`.
    pub(crate) fn candidates(&self, kid: Option<&str>, alg: Algorithm, out: &mut Vec<u32>) -> bool {
        out.clear();
        let mut known = true;
        match kid.map(|k| (k, self.by_kid.get(k))) {
            Some((_, Some(ix))) => out.extend(
                ix.iter()
                    .copied()
                    .filter(|&i| self.keys[i as usize].allows(alg)),
            ),
            Some((_, None)) => {
                known = false;
                out.extend(
                    self.keys
                        .iter()
                        .enumerate()
                        .filter(|(_, k)| k.kid.is_none() && k.allows(alg))
                        .map(|(i, _)| i as u32),
                );
            }
            None => out.extend(
                self.keys
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| k.allows(alg))
                    .map(|(i, _)| i as u32),
            ),
        }
        out.truncate(MAX_TRIES);
        known
    }
}

/// One PEM block: its label and DER bytes.
pub(crate) struct Pem {
    pub label: String,
    pub der: Vec<u8>,
}

/// Reads the first PEM block of `text`.
pub(crate) fn parse_pem(text: &[u8]) -> Result<Pem, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the file is not PEM text".to_string())?;
    let begin = text
        .find("-----BEGIN ")
        .ok_or_else(|| "no \"-----BEGIN ...-----\" line".to_string())?;
    let rest = &text[begin + 11..];
    let label_end = rest
        .find("-----")
        .ok_or_else(|| "malformed BEGIN line".to_string())?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let end = rest
        .find(&end_marker)
        .ok_or_else(|| format!("no \"{end_marker}\" line"))?;
    let b64: String = rest[body_start..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the PEM body is not base64 ({e})"))?;
    Ok(Pem { label, der })
}

/// A public key from a PEM file (`PUBLIC KEY` or `RSA PUBLIC KEY`).
pub(crate) fn public_key_from_pem(text: &[u8], allowed: AlgSet) -> Result<VerifyKey, String> {
    let pem = parse_pem(text)?;
    if pem.label.contains("PRIVATE") {
        return Err(format!(
            "the file holds a private key ({})",
            pem.label.to_lowercase()
        ));
    }
    if pem.label != "PUBLIC KEY" && pem.label != "RSA PUBLIC KEY" {
        return Err(format!(
            "the file holds a {:?} block, not a public key",
            pem.label
        ));
    }
    let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(text) {
        (Family::Rsa, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(text) {
        (Family::Ec, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(text) {
        (Family::Ed, k)
    } else {
        return Err("the key is not an RSA, EC (P-256, P-384) or Ed25519 public key".into());
    };
    let algs = allowed.and(family.algs());
    if algs.is_empty() {
        return Err(format!(
            "the file holds an {} but algorithms lists no algorithm for it",
            family.name()
        ));
    }
    Ok(VerifyKey {
        kid: None,
        algs,
        key,
    })
}

/// Keys from a JWKS document, restricted to `allowed`. Keys marked for
/// encryption, of unsupported types, or whose algorithms are not allowed
/// are skipped; none usable at all is an error.
pub(crate) fn keys_from_jwks(text: &[u8], allowed: AlgSet) -> Result<Vec<VerifyKey>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not JSON ({e})"))?;
    let list = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| "no \"keys\" array".to_string())?;
    let mut out = Vec::new();
    for v in list {
        if v.get("use").and_then(|u| u.as_str()) == Some("enc") {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(v.clone()) else {
            continue;
        };
        let by_type = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa.algs(),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => AlgSet::one(Algorithm::ES256),
                EllipticCurve::P384 => AlgSet::one(Algorithm::ES384),
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => AlgSet::one(Algorithm::EdDSA),
                _ => continue,
            },
            AlgorithmParameters::OctetKey(_) => Family::Hmac.algs(),
        };
        let mut algs = allowed.and(by_type);
        if let Some(ka) = jwk.common.key_algorithm {
            match parse_alg(&ka.to_string()) {
                Some(a) => algs = algs.and(AlgSet::one(a)),
                None => continue,
            }
        }
        if algs.is_empty() {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push(VerifyKey {
            kid: jwk.common.key_id.map(String::into_boxed_str),
            algs,
            key,
        });
    }
    if out.is_empty() {
        return Err(format!(
            "none of its {} keys is usable with algorithms [{}]",
            list.len(),
            allowed.iter().map(alg_name).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(out)
}

/// The gateway's signing key (token endpoint).
#[derive(Clone)]
pub(crate) struct SigningKey {
    pub alg: Algorithm,
    pub key: EncodingKey,
    pub kid: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A private key from a PEM file (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA
/// PRIVATE KEY`): the encoding key and its public half, with the family.
pub(crate) fn private_key_from_pem(
    text: &[u8],
) -> Result<(Family, AlgSet, EncodingKey, DecodingKey), String> {
    use ring::signature::{self, KeyPair};
    let pem = parse_pem(text)?;
    match pem.label.as_str() {
        "RSA PRIVATE KEY" => {
            let kp = signature::RsaKeyPair::from_der(&pem.der)
                .map_err(|e| format!("not a usable RSA private key ({e})"))?;
            let enc = EncodingKey::from_rsa_pem(text).map_err(|e| e.to_string())?;
            let dec = DecodingKey::from_rsa_der(kp.public().as_ref());
            Ok((Family::Rsa, Family::Rsa.algs(), enc, dec))
        }
        "PRIVATE KEY" => {
            let rng = ring::rand::SystemRandom::new();
            if let Ok(kp) = signature::RsaKeyPair::from_pkcs8(&pem.der) {
                let enc = EncodingKey::from_rsa_pem(text).map_err(|e| e.to_string())?;
                let dec = DecodingKey::from_rsa_der(kp.public().as_ref());
                return Ok((Family::Rsa, Family::Rsa.algs(), enc, dec));
            }
            for (alg, ring_alg) in [
                (
                    Algorithm::ES256,
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                ),
                (
                    Algorithm::ES384,
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                ),
            ] {
                if let Ok(kp) = signature::EcdsaKeyPair::from_pkcs8(ring_alg, &pem.der, &rng) {
                    let enc = EncodingKey::from_ec_der(&pem.der);
                    let dec = DecodingKey::from_ec_der(kp.public_key().as_ref());
                    return Ok((Family::Ec, AlgSet::one(alg), enc, dec));
                }
            }
            if let Ok(kp) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pem.der) {
                let enc = EncodingKey::from_ed_der(&pem.der);
                let dec = DecodingKey::from_ed_der(kp.public_key().as_ref());
                return Ok((Family::Ed, AlgSet::one(Algorithm::EdDSA), enc, dec));
            }
            Err("not an RSA (2048 bits or more), EC (P-256, P-384) or Ed25519 PKCS#8 key".into())
        }
        "EC PRIVATE KEY" => Err("the EC key is in SEC1 form; PKCS#8 is needed".into()),
        other => Err(format!(
            "the file holds a {other:?} block, not a private key"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: Option<&str>, algs: AlgSet) -> VerifyKey {
        VerifyKey {
            kid: kid.map(Into::into),
            algs,
            key: DecodingKey::from_secret(b"x"),
        }
    }

    #[test]
    fn alg_names_round_trip_and_none_is_unknown() {
        for a in ALL {
            assert_eq!(parse_alg(alg_name(a)), Some(a));
        }
        for bad in ["none", "None", "NONE", "hs256", "RS1", ""] {
            assert_eq!(parse_alg(bad), None, "{bad}");
        }
    }

    #[test]
    fn families_partition_the_algorithms() {
        let fams = [Family::Hmac, Family::Rsa, Family::Ec, Family::Ed];
        let total: usize = fams.iter().map(|f| f.algs().iter().count()).sum();
        assert_eq!(total, ALL.len());
        assert!(Family::Rsa.algs().contains(Algorithm::PS384));
        assert!(!Family::Rsa.algs().contains(Algorithm::HS256));
    }

    #[test]
    fn candidates_by_kid_and_alg() {
        let hs = Family::Hmac.algs();
        let rs = Family::Rsa.algs();
        let set = KeySet::new(vec![
            key(None, hs),
            key(Some("a"), rs),
            key(Some("b"), AlgSet::one(Algorithm::ES256)),
        ]);
        let mut out = Vec::new();
        assert!(set.candidates(Some("a"), Algorithm::RS256, &mut out));
        assert_eq!(out, [1]);
        // A known kid with an algorithm its key cannot do: no candidate.
        assert!(set.candidates(Some("a"), Algorithm::HS256, &mut out));
        assert!(out.is_empty());
        // Unknown kid: only kid-less keys of the right family.
        assert!(!set.candidates(Some("zz"), Algorithm::HS256, &mut out));
        assert_eq!(out, [0]);
        assert!(!set.candidates(Some("zz"), Algorithm::RS256, &mut out));
        assert!(out.is_empty());
        // No kid: every key that can do alg.
        assert!(set.candidates(None, Algorithm::ES256, &mut out));
        assert_eq!(out, [2]);
        // A key never allows another family, whatever its set says.
        let mixed = key(None, AlgSet::one(Algorithm::RS256));
        assert!(!mixed.allows(Algorithm::HS256));
    }

    #[test]
    fn pem_parsing() {
        let p =
            parse_pem(b"junk\n-----BEGIN PUBLIC KEY-----\nAAEC\nAw==\n-----END PUBLIC KEY-----\n")
                .unwrap();
        assert_eq!(p.label, "PUBLIC KEY");
        assert_eq!(p.der, [0, 1, 2, 3]);
        assert!(parse_pem(b"no pem here").is_err());
        assert!(parse_pem(b"-----BEGIN X-----\nAAEC\n").is_err());
    }
}
