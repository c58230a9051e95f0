//! What a limit counts by: the client IP (the socket peer, or the
//! `X-Forwarded-For` client when the peer is a trusted proxy), the consumer,
//! the API key, a header's value, the route, or a list of these.
//!
//! A key is hashed straight from the request bytes (no allocation); the
//! bytes themselves are only gathered for a global limit's first request,
//! to name the key in Redis. A missing consumer, API key or header falls
//! back to the client IP, so anonymous callers are limited per address.

use crate::filter::RequestCtx;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};

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

/// An address range (`10.0.0.0/8`, `::1`, `192.168.1.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: u128,
    bits: u8,
    v4: bool,
}

impl Cidr {
    /// Parses a `trusted_proxies` list; `bad(message, fix)` is called for
    /// each entry that is not an address or CIDR range.
    pub fn parse_list<'a>(
        items: impl IntoIterator<Item = &'a String>,
        mut bad: impl FnMut(String, &'static str),
    ) -> Vec<Cidr> {
        let mut out = Vec::new();
        for s in items {
            match Cidr::parse(s) {
                Some(c) => out.push(c),
                None => bad(
                    format!("{s:?} is not an address or CIDR range"),
                    "write \"10.0.0.0/8\", \"192.168.1.7\" or \"fd00::/8\"",
                ),
            }
        }
        out
    }

    /// Parses an address or a CIDR range.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let ip: IpAddr = addr.trim().parse().ok()?;
        let (v, max, v4) = match ip {
            IpAddr::V4(a) => (u32::from(a) as u128, 32, true),
            IpAddr::V6(a) => (u128::from(a), 128, false),
        };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return None;
        }
        let c = Cidr { net: 0, bits, v4 };
        Some(Cidr {
            net: v & c.mask(),
            ..c
        })
    }

    fn mask(&self) -> u128 {
        let width = if self.v4 { 32 } else { 128 };
        if self.bits == 0 {
            0
        } else {
            let all = if self.v4 { u32::MAX as u128 } else { u128::MAX };
            (all >> (width - self.bits as u32)) << (width - self.bits as u32)
        }
    }

    /// True when `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v, v4) = match canonical(ip) {
            IpAddr::V4(a) => (u32::from(a) as u128, true),
            IpAddr::V6(a) => (u128::from(a), false),
        };
        v4 == self.v4 && v & self.mask() == self.net
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The client address: the socket peer, or, when the peer is a trusted
/// proxy, the rightmost `X-Forwarded-For` entry that is not itself a
/// trusted proxy. An entry that is not an address is returned as bytes.
pub fn client<'a>(ctx: &'a RequestCtx<'_>, trusted: &[Cidr]) -> Client<'a> {
    let peer = canonical(ctx.peer.ip());
    if trusted.is_empty() || !trusted.iter().any(|c| c.contains(peer)) {
        return Client::Ip(peer);
    }
    // Header lines in order; entries within a line left to right. Walk
    // from the right: the nearest hop first.
    let mut found: Option<Client<'a>> = None;
    let mut leftmost: Option<Client<'a>> = None;
    let all: smallvec_lite::Stack<&'a [u8], 8> = ctx
        .lines
        .iter()
        .filter(|l| crate::http::name_eq(l.name.of(ctx.buf), b"x-forwarded-for"))
        .map(|l| l.value.of(ctx.buf))
        .collect();
    'outer: for value in all.iter().rev() {
        for part in value.rsplit(|&b| b == b',') {
            let part = trim(part);
            if part.is_empty() {
                continue;
            }
            let c = parse_hop(part);
            leftmost = Some(c);
            match c {
                Client::Ip(ip) if trusted.iter().any(|t| t.contains(ip)) => continue,
                _ => {
                    found = Some(c);
                    break 'outer;
                }
            }
        }
    }
    found.or(leftmost).unwrap_or(Client::Ip(peer))
}

/// A client, as an address or (for a malformed forwarded entry) bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client<'a> {
    /// An address.
    Ip(IpAddr),
    /// Whatever the trusted proxy wrote.
    Raw(&'a [u8]),
}

impl std::fmt::Display for Client<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Ip(ip) => ip.fmt(f),
            Client::Raw(b) => String::from_utf8_lossy(b).fmt(f),
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &b[s..e.max(s)]
}

fn parse_hop(b: &[u8]) -> Client<'_> {
    let Ok(s) = std::str::from_utf8(b) else {
        return Client::Raw(b);
    };
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Client::Ip(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Client::Ip(canonical(sa.ip()));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.split(']').next())
        && let Ok(ip) = inner.parse::<IpAddr>()
    {
        return Client::Ip(canonical(ip));
    }
    Client::Raw(b)
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

/// A tiny fixed-capacity stack collection (spills to nothing: extra items
/// beyond `N` are dropped, which for forwarded-for lines means the
/// leftmost, least trusted ones).
mod smallvec_lite {
    pub struct Stack<T: Copy, const N: usize> {
        items: [Option<T>; N],
        len: usize,
    }

    impl<T: Copy, const N: usize> Stack<T, N> {
        pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
            self.items[..self.len].iter().flatten()
        }
    }

    impl<T: Copy, const N: usize> FromIterator<T> for Stack<T, N> {
        fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Self {
            let mut s = Stack {
                items: [None; N],
                len: 0,
            };
            for x in it {
                if s.len == N {
                    // Keep the rightmost N lines: shift left.
                    s.items.copy_within(1.., 0);
                    s.items[N - 1] = Some(x);
                } else {
                    s.items[s.len] = Some(x);
                    s.len += 1;
                }
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("1.2.3.4/33").is_none());
        assert!(Cidr::parse("nope").is_none());
    }

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

    #[test]
    fn hops_parse() {
        assert_eq!(
            parse_hop(b"1.2.3.4:80"),
            Client::Ip("1.2.3.4".parse().unwrap())
        );
        assert_eq!(parse_hop(b"[::1]:80"), Client::Ip("::1".parse().unwrap()));
        assert_eq!(parse_hop(b"unknown"), Client::Raw(b"unknown"));
    }
}
