//! IP allow and deny lists: a request filter that refuses clients by
//! address with a 403, before CORS, auth and rate limits.
//!
//! Keys: `ip_allow` / `ip_deny` on a route and in `[server]` (CIDR ranges
//! or single addresses, IPv4 and IPv6). How the lists combine, for one
//! request:
//!
//! - any deny list (`server.ip_deny` or the route's `ip_deny`) that holds
//!   the client refuses it: **deny wins** over every allow list;
//! - every allow list that is set (`server.ip_allow`, the route's
//!   `ip_allow`) must hold the client: a route's list narrows the global
//!   one, it does not widen it. An absent allow list lets everyone in.
//!
//! The client is the socket peer, or the `X-Forwarded-For` client when the
//! peer is one of `server.trusted_proxies` ([`client_addr::client`], the
//! same rule as the rate limiter's). IPv4-mapped IPv6 addresses are
//! compared as IPv4. A forwarded entry that is not an address (a trusted
//! proxy wrote `unknown`) is refused whenever a list applies: the lists
//! fail closed.
//!
//! Key components: [`Global`] (the `[server]` lists, compiled once),
//! [`Policy`] (one route's lists, global ones included), [`request_filter`].
//!
//! Performance notes: a route without lists has no `IpList` filter; one
//! with lists pays a linear scan of its ranges, no allocation.

use crate::config::Errors;
use crate::config::file::{RouteFile, ServerFile};
use crate::filter::client_addr::{self, Cidr, Client};
use crate::filter::{Reply, RequestCtx, Verdict};

/// The `[server]` lists, applied to every route.
#[derive(Debug, Default)]
pub struct Global {
    allow: Option<Box<[Cidr]>>,
    deny: Box<[Cidr]>,
}

/// One route's lists, the global ones included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Lists the client must each be in (global, route): zero to two.
    allow: Box<[Box<[Cidr]>]>,
    /// Global and route deny lists, merged.
    deny: Box<[Cidr]>,
}

impl Policy {
    /// True when `ip` may pass.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip))
            && self.allow.iter().all(|l| l.iter().any(|c| c.contains(ip)))
    }
}

/// Parses one list; `key` names it in errors. An empty allow list is an
/// error (it would refuse everyone); an empty deny list refuses no one.
fn parse(key: &str, list: Option<&Vec<String>>, errs: &mut Errors) -> Option<Box<[Cidr]>> {
    let list = list?;
    if list.is_empty() && key.ends_with("ip_allow") {
        errs.push(
            key,
            "the list is empty, so no client could pass",
            "list address ranges, e.g. [\"10.0.0.0/8\", \"2001:db8::/32\"], or remove the key to let everyone in",
        );
        return None;
    }
    let before = errs.0.len();
    let cidrs = Cidr::parse_list(list, |msg, _| {
        errs.push(
            key,
            msg,
            "write an address or a CIDR range, e.g. \"10.0.0.0/8\", \"192.168.1.7\" or \"2001:db8::/32\"",
        )
    });
    (errs.0.len() == before).then(|| cidrs.into_boxed_slice())
}

/// Compiles `server.ip_allow` and `server.ip_deny`.
pub fn compile_global(s: &ServerFile, errs: &mut Errors) -> Global {
    Global {
        allow: parse("server.ip_allow", s.ip_allow.as_ref(), errs),
        deny: parse("server.ip_deny", s.ip_deny.as_ref(), errs).unwrap_or_default(),
    }
}

/// Compiles route `i`'s lists with the global ones; `None` when no list
/// applies to the route (no filter).
pub fn route_policy(global: &Global, r: &RouteFile, i: usize, errs: &mut Errors) -> Option<Policy> {
    let allow = parse(&format!("routes[{i}].ip_allow"), r.ip_allow.as_ref(), errs);
    let deny = parse(&format!("routes[{i}].ip_deny"), r.ip_deny.as_ref(), errs);
    let allow: Box<[Box<[Cidr]>]> = global.allow.iter().cloned().chain(allow).collect();
    let deny: Box<[Cidr]> = global
        .deny
        .iter()
        .chain(deny.iter().flatten())
        .copied()
        .collect();
    (!allow.is_empty() || !deny.is_empty()).then_some(Policy { allow, deny })
}

/// The request filter: a client the lists refuse gets 403.
pub fn request_filter(p: &Policy, ctx: &RequestCtx<'_>) -> Verdict {
    let trusted = &ctx.generation.config.server.trusted_proxies;
    let admitted = match client_addr::client(ctx, trusted) {
        Client::Ip(ip) => p.admits(ip),
        Client::Raw(_) => false,
    };
    if admitted {
        Verdict::Continue
    } else {
        Verdict::Reply(Reply::error(
            403,
            "the client address is not allowed on this route",
            ctx.request_id,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(global: (&[&str], &[&str]), route: (&[&str], &[&str])) -> Option<Policy> {
        let owned = |l: &[&str]| (!l.is_empty()).then(|| l.iter().map(|s| s.to_string()).collect());
        let s = ServerFile {
            ip_allow: owned(global.0),
            ip_deny: owned(global.1),
            ..Default::default()
        };
        let r = RouteFile {
            ip_allow: owned(route.0),
            ip_deny: owned(route.1),
            ..Default::default()
        };
        let mut errs = Errors(Vec::new());
        let g = compile_global(&s, &mut errs);
        let p = route_policy(&g, &r, 0, &mut errs);
        assert!(errs.0.is_empty(), "{:?}", errs.0);
        p
    }

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_lists_no_filter() {
        assert!(policy((&[], &[]), (&[], &[])).is_none());
    }

    #[test]
    fn deny_wins_and_allow_lists_narrow() {
        let p = policy(
            (&["10.0.0.0/8"], &["10.9.0.0/16"]),
            (&["10.1.0.0/16"], &["10.1.2.3"]),
        )
        .unwrap();
        assert!(p.admits(ip("10.1.0.1")));
        assert!(
            !p.admits(ip("10.1.2.3")),
            "route deny wins over both allows"
        );
        assert!(!p.admits(ip("10.2.0.1")), "outside the route's allow list");
        assert!(
            !p.admits(ip("192.168.0.1")),
            "outside the global allow list"
        );
        let g = policy((&[], &["10.1.0.0/16"]), (&["10.0.0.0/8"], &[])).unwrap();
        assert!(
            !g.admits(ip("10.1.0.1")),
            "global deny wins over a route allow"
        );
        assert!(g.admits(ip("10.2.0.1")));
    }

    #[test]
    fn v6_and_mapped_v4() {
        let p = policy((&[], &[]), (&["2001:db8::/32", "127.0.0.0/8"], &[])).unwrap();
        assert!(p.admits(ip("2001:db8::1")));
        assert!(!p.admits(ip("2001:db9::1")));
        assert!(p.admits(ip("::ffff:127.0.0.1")));
        assert!(!p.admits(ip("::1")));
    }

    #[test]
    fn bad_entries_name_the_key() {
        let r = RouteFile {
            ip_deny: Some(vec!["10.0.0.0/33".into(), "nope".into()]),
            ip_allow: Some(vec![]),
            ..Default::default()
        };
        let mut errs = Errors(Vec::new());
        let _ = route_policy(&Global::default(), &r, 3, &mut errs);
        let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "routes[3].ip_allow",
                "routes[3].ip_deny",
                "routes[3].ip_deny"
            ]
        );
        assert!(errs.0[1].message.contains("10.0.0.0/33"));
    }
}
