//! JWT validation: header, key choice, signature, then claims.
//!
//! The order matters: nothing in the payload is looked at before the
//! signature verified, and the `alg` a token names must be in the
//! configured list *and* in the chosen key's own set (no `none`, no
//! HS/RS confusion). Claims checked: `exp` (always required), `nbf`, with
//! `leeway_s` either way; `iss` and `aud` when configured; any
//! `required_claims`.

use super::consumers::Consumers;
use super::keys::{AlgSet, KeySet, parse_alg};
use crate::filter::{AuthMethod, Identity};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Longest token accepted (bytes).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The claim rules of `[auth.jwt]`.
#[derive(Debug, Clone)]
pub(crate) struct JwtRules {
    pub algs: AlgSet,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub leeway: u64,
    pub required: Vec<String>,
    /// Path of the roles claim (`realm_access.roles` → two segments).
    pub roles_claim: Vec<String>,
    /// Scope claims, tried in order (default `scope`, then `scp`).
    pub scopes_claims: Vec<Vec<String>>,
}

/// Why a token was refused. The description goes into
/// `WWW-Authenticate: Bearer error="invalid_token", error_description=".."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts, or parts that do not decode.
    Malformed(&'static str),
    /// `alg` is `none`, unknown, or not in `algorithms`.
    AlgorithmNotAllowed,
    /// The `kid` names no key and no other key fits.
    UnknownKey,
    /// No key verifies the signature.
    BadSignature,
    /// `exp` (plus leeway) has passed.
    Expired,
    /// `nbf` (minus leeway) is still ahead.
    NotYetValid,
    /// `iss` is missing or not accepted.
    Issuer,
    /// `aud` is missing or names none of the accepted audiences.
    Audience,
    /// A required claim is missing.
    MissingClaim(String),
    /// A claim has the wrong type or unusable content.
    BadClaim(&'static str),
}

impl JwtError {
    /// A short description (no quotes or backslashes).
    pub fn description(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            JwtError::Malformed(m) => m,
            JwtError::AlgorithmNotAllowed => "the token's algorithm is not accepted",
            JwtError::UnknownKey => "the token's key id is unknown",
            JwtError::BadSignature => "the signature does not verify",
            JwtError::Expired => "the token has expired",
            JwtError::NotYetValid => "the token is not valid yet",
            JwtError::Issuer => "the token's issuer is not accepted",
            JwtError::Audience => "the token's audience is not accepted",
            JwtError::MissingClaim(c) => {
                let c: String = c
                    .chars()
                    .filter(|&ch| ch != '"' && ch != '\\' && !ch.is_control())
                    .collect();
                return Cow::Owned(format!("the token lacks the {c} claim"));
            }
            JwtError::BadClaim(m) => m,
        })
    }
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Who the token speaks for.
    pub identity: Identity,
    /// Unix time (s) after which the token is no longer accepted
    /// (`exp` plus leeway).
    pub expires_at: u64,
}

#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    enc: Option<serde::de::IgnoredAny>,
}

/// Splits a compact JWS into its three parts, checking the alphabet.
fn split(token: &[u8]) -> Result<(&str, &str, &str), JwtError> {
    if token.is_empty() {
        return Err(JwtError::Malformed("the token is empty"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed("the token is too long"));
    }
    if !token
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(JwtError::Malformed(
            "the token holds characters outside base64url",
        ));
    }
    // Only ASCII from here on, so this cannot fail.
    let s = std::str::from_utf8(token).map_err(|_| JwtError::Malformed("not ASCII"))?;
    let mut parts = s.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(sig), None) if !h.is_empty() && !p.is_empty() => Ok((h, p, sig)),
        (_, _, _, Some(_)) => Err(JwtError::Malformed(
            "the token has more than three parts (encrypted tokens are not accepted)",
        )),
        _ => Err(JwtError::Malformed(
            "the token is not three dot-separated parts",
        )),
    }
}

/// Result of the signature stage: the payload bytes, or an error plus
/// whether the `kid` was unknown (the caller then asks for a JWKS refresh).
pub(crate) fn check_signature(
    algs: AlgSet,
    keys: &KeySet,
    token: &[u8],
    scratch: &mut Vec<u32>,
) -> Result<Vec<u8>, (JwtError, bool)> {
    let (h64, p64, sig) = split(token).map_err(|e| (e, false))?;
    let head_bytes = URL_SAFE_NO_PAD.decode(h64).map_err(|_| {
        (
            JwtError::Malformed("the token header is not base64url"),
            false,
        )
    })?;
    let head: JoseHeader<'_> = serde_json::from_slice(&head_bytes).map_err(|_| {
        (
            JwtError::Malformed("the token header is not a JOSE header"),
            false,
        )
    })?;
    if head.crit.is_some() {
        return Err((
            JwtError::Malformed("the token header has critical extensions"),
            false,
        ));
    }
    if head.enc.is_some() {
        return Err((
            JwtError::Malformed("encrypted tokens are not accepted"),
            false,
        ));
    }
    let alg = match parse_alg(&head.alg) {
        Some(a) if algs.contains(a) => a,
        _ => return Err((JwtError::AlgorithmNotAllowed, false)),
    };
    let known = keys.candidates(head.kid.as_deref(), alg, scratch);
    if scratch.is_empty() {
        return Err(if known {
            (JwtError::AlgorithmNotAllowed, false)
        } else {
            (JwtError::UnknownKey, true)
        });
    }
    let message = &token[..h64.len() + 1 + p64.len()];
    let ok = scratch.iter().any(|&i| {
        let k = &keys.keys[i as usize];
        // Candidates were filtered on `allows`; checked again right at the
        // call so no future change can hand an HMAC check an RSA key.
        k.allows(alg)
            && matches!(
                jsonwebtoken::crypto::verify(sig, message, &k.key, alg),
                Ok(true)
            )
    });
    if !ok {
        return Err((JwtError::BadSignature, !known));
    }
    URL_SAFE_NO_PAD.decode(p64).map_err(|_| {
        (
            JwtError::Malformed("the token payload is not base64url"),
            false,
        )
    })
}

fn number(v: &Value) -> Option<u64> {
    let f = v.as_f64()?;
    if f.is_nan() {
        return None;
    }
    Some(if f <= 0.0 {
        0
    } else if f >= u64::MAX as f64 {
        u64::MAX
    } else {
        f as u64
    })
}

/// The value at a dotted claim path.
fn at<'v>(claims: &'v Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first.as_str())?;
    for seg in rest {
        v = v.as_object()?.get(seg.as_str())?;
    }
    Some(v)
}

/// A list claim: an array of strings, or one string split on `seps`.
fn list(v: &Value, seps: &[char]) -> Result<Vec<String>, JwtError> {
    match v {
        Value::String(s) => Ok(s
            .split(seps)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or(JwtError::BadClaim(
                    "a roles or scopes claim holds a non-string",
                ))
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        _ => Err(JwtError::BadClaim(
            "a roles or scopes claim is neither a string nor an array",
        )),
    }
}

/// True when `s` can go into a header value (no control characters).
pub(crate) fn header_safe(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != 0x7f)
}

/// Checks the claims of a payload whose signature verified.
pub(crate) fn check_claims(
    rules: &JwtRules,
    consumers: &Consumers,
    payload: &[u8],
    now: u64,
) -> Result<Verified, JwtError> {
    let claims: Map<String, Value> = serde_json::from_slice(payload)
        .map_err(|_| JwtError::Malformed("the token payload is not a JSON object"))?;
    let exp = match claims.get("exp") {
        None | Some(Value::Null) => return Err(JwtError::MissingClaim("exp".into())),
        Some(v) => number(v).ok_or(JwtError::BadClaim("exp is not a number"))?,
    };
    let expires_at = exp.saturating_add(rules.leeway);
    if now >= expires_at {
        return Err(JwtError::Expired);
    }
    if let Some(v) = claims.get("nbf").filter(|v| !v.is_null()) {
        let nbf = number(v).ok_or(JwtError::BadClaim("nbf is not a number"))?;
        if now.saturating_add(rules.leeway) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if !rules.issuers.is_empty() {
        match claims.get("iss").and_then(Value::as_str) {
            Some(iss) if rules.issuers.iter().any(|i| i == iss) => {}
            _ => return Err(JwtError::Issuer),
        }
    }
    if !rules.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => rules.audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| rules.audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::Audience);
        }
    }
    for c in &rules.required {
        if claims.get(c.as_str()).is_none_or(Value::is_null) {
            return Err(JwtError::MissingClaim(c.clone()));
        }
    }
    let subject = match claims.get("sub") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(JwtError::BadClaim("sub is not a string")),
    };
    let roles = match at(&claims, &rules.roles_claim) {
        Some(v) => list(v, &[' ', ','])?,
        None => Vec::new(),
    };
    let mut scopes = Vec::new();
    for path in &rules.scopes_claims {
        if let Some(v) = at(&claims, path) {
            scopes = list(v, &[' '])?;
            break;
        }
    }
    let consumer = claims
        .get("client_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    let known = consumer.as_deref().and_then(|c| consumers.by_id(c));
    let tier = match claims.get("tier") {
        Some(Value::String(t)) => Some(t.clone()),
        _ => known.and_then(|c| c.tier.clone()),
    };
    let safe = header_safe(&subject)
        && roles.iter().all(|r| header_safe(r))
        && consumer.as_deref().is_none_or(header_safe)
        && tier.as_deref().is_none_or(header_safe);
    if !safe {
        return Err(JwtError::BadClaim(
            "a claim forwarded to the backend holds control characters",
        ));
    }
    Ok(Verified {
        identity: Identity {
            method: AuthMethod::Jwt,
            subject,
            consumer,
            tier,
            roles,
            scopes,
            api_key_id: None,
        },
        expires_at,
    })
}
