//! The client address and address ranges, shared by every feature that
//! decides by who is asking (IP lists, rate limits, the token endpoint's
//! failed-attempt limit).
//!
//! Key components: [`Cidr`] (an address range, IPv4-mapped IPv6 compared
//! as IPv4), [`client`] (the socket peer, or the `X-Forwarded-For` client
//! when the peer is one of `server.trusted_proxies`).
//!
//! Performance notes: both read the request in place; nothing allocates.

use crate::filter::RequestCtx;
use std::net::{IpAddr, SocketAddr};

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

/// `ip`, with an IPv4-mapped IPv6 address as the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
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
    fn hops_parse() {
        assert_eq!(
            parse_hop(b"1.2.3.4:80"),
            Client::Ip("1.2.3.4".parse().unwrap())
        );
        assert_eq!(parse_hop(b"[::1]:80"), Client::Ip("::1".parse().unwrap()));
        assert_eq!(parse_hop(b"unknown"), Client::Raw(b"unknown"));
    }
}
