//! What a limit counts by: the client IP (the socket peer, or the
//! `X-Forwarded-For` client when the peer is a trusted proxy), the consumer,
//! the API key, a header's value, the route, or a list of these.
//!
//! A key is hashed straight from the request bytes (no allocation); the
//! bytes themselves are only gathered for a global limit's first request,
//! to name the key in Redis. A missing consumer, API key or header falls
//! back to the client IP, so anonymous callers are limited per address.

use crate::filter::RequestCtx;
use crate::filter::client_addr::{Cidr, Client, client};
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

/// One part of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// Client address.
    Ip,
    /// Consumer id (from auth).
    Consumer,
    /// API key id (from auth).
    ApiKey,
    /// The route.
    Route,
    /// A request header's value (lower-case name).
    Header(Vec<u8>),
}

impl KeyPart {
    /// Parses `ip | consumer | api_key | route | header:NAME`.
    pub fn parse(s: &str) -> Option<KeyPart> {
        Some(match s {
            "ip" => KeyPart::Ip,
            "consumer" => KeyPart::Consumer,
            "api_key" => KeyPart::ApiKey,
            "route" => KeyPart::Route,
            _ => {
                let name = s.strip_prefix("header:")?.trim();
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                    return None;
                }
                KeyPart::Header(name.to_ascii_lowercase().into_bytes())
            }
        })
    }
}

/// Feeds the key's bytes to `out`, part by part, each part tagged and
/// length-delimited so `("a","bc")` and `("ab","c")` differ.
pub fn visit(
    parts: &[KeyPart],
    trusted: &[Cidr],
    route_name: &[u8],
    tier: u8,
    ctx: &RequestCtx<'_>,
    mut out: impl FnMut(&[u8]),
) {
    out(&[tier]);
    for (i, p) in parts.iter().enumerate() {
        let mut emitted = false;
        let put = |tag: u8, b: &[u8], out: &mut dyn FnMut(&[u8])| {
            out(&[i as u8, tag]);
            out(&(b.len() as u32).to_le_bytes());
            out(b);
        };
        let id = ctx.identity.as_deref();
        match p {
            KeyPart::Ip => {}
            KeyPart::Consumer => {
                if let Some(c) = id.and_then(|i| i.consumer.as_deref()) {
                    put(b'c', c.as_bytes(), &mut out);
                    emitted = true;
                }
            }
            KeyPart::ApiKey => {
                if let Some(k) = id.and_then(|i| i.api_key_id.as_deref()) {
                    put(b'k', k.as_bytes(), &mut out);
                    emitted = true;
                }
            }
            KeyPart::Route => {
                put(b'r', route_name, &mut out);
                emitted = true;
            }
            KeyPart::Header(name) => {
                if let Some(v) = ctx.header(name) {
                    put(b'h', v, &mut out);
                    emitted = true;
                }
            }
        }
        if !emitted {
            match client(ctx, trusted) {
                Client::Ip(IpAddr::V4(a)) => put(b'i', &a.octets(), &mut out),
                Client::Ip(IpAddr::V6(a)) => put(b'i', &a.octets(), &mut out),
                Client::Raw(b) => put(b'i', b, &mut out),
            }
        }
    }
}

/// The 64-bit key of a request for a limit.
pub fn hash(
    hasher: &impl BuildHasher,
    parts: &[KeyPart],
    trusted: &[Cidr],
    route_name: &[u8],
    tier: u8,
    ctx: &RequestCtx<'_>,
) -> u64 {
    let mut h = hasher.build_hasher();
    visit(parts, trusted, route_name, tier, ctx, |b| h.write(b));
    h.finish()
}

/// The key's bytes (for naming it in Redis).
pub fn bytes(
    parts: &[KeyPart],
    trusted: &[Cidr],
    route_name: &[u8],
    tier: u8,
    ctx: &RequestCtx<'_>,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    visit(parts, trusted, route_name, tier, ctx, |b| {
        v.extend_from_slice(b)
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts_parse() {
        assert_eq!(KeyPart::parse("ip"), Some(KeyPart::Ip));
        assert_eq!(
            KeyPart::parse("header:X-Tenant"),
            Some(KeyPart::Header(b"x-tenant".to_vec()))
        );
        assert_eq!(KeyPart::parse("header:"), None);
        assert_eq!(KeyPart::parse("cookie"), None);
    }
}
