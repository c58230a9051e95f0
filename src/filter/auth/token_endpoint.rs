//! The token endpoint: `POST` to `[auth.token_endpoint] path` with the
//! OAuth2 client-credentials grant (client id and secret in the form body
//! or HTTP Basic), or an API key, returns a JWT signed with the gateway's
//! key: `{"access_token", "token_type": "Bearer", "expires_in"}`.
//!
//! The token carries `iss` and `aud` from `[auth.jwt]`, `sub` and
//! `client_id` = the consumer id, the consumer's tier and roles (under
//! `roles_claim`) and scopes (under the first scope claim), `iat`, `nbf`,
//! `exp` = now + `ttl_s` and a random `jti`; it then passes the gateway's
//! own JWT check. Errors follow RFC 6749 §5.2 (`invalid_client`,
//! `invalid_request`, `unsupported_grant_type`, `invalid_scope`) inside the
//! gateway's JSON error shape.
//!
//! # Failed-attempt limit
//!
//! [`FailureLimit`] stops credential guessing. Every answer that refuses the
//! client's authentication (401 `invalid_client`: wrong secret, unknown
//! client, bad API key, no or malformed credentials) counts one failure for
//! the client address. Once an address has `max_failures` failures in a
//! window of `failure_window_s` seconds, starting at its first failure,
//! every request from it gets 429 `too_many_attempts` with `Retry-After`
//! (seconds until the window ends) **before any credential is looked at**,
//! so a right secret is refused too and guessing on gains nothing. When the
//! window ends the address starts afresh. 400s (a malformed request, an
//! unsupported grant, a scope the client lacks) do not count: they test no
//! secret.
//!
//! A success does not reset the address's count: the key is the address,
//! not the client id, so a caller holding one valid credential could
//! otherwise interleave it with guesses at other clients' secrets and never
//! be stopped. A legitimate client that mistyped its secret a few times
//! just has fewer attempts left until the window ends.
//!
//! The client address is the TCP peer; when the peer is one of the
//! endpoint's `trusted_proxies`, it is the rightmost `X-Forwarded-For` entry
//! that is not itself a trusted proxy (the rule of the rate limiter's `ip`
//! key). `X-Forwarded-For` from any other peer is ignored. IPv6 clients
//! are counted by /64, the block one subscriber usually holds.
//!
//! State: one table for all workers, in the compiled [`Auth`] (so a reload
//! starts every address afresh). Counts are shared rather than kept per
//! worker because `SO_REUSEPORT` spreads an attacker's connections over
//! the workers: per-worker tables would allow workers × `max_failures`
//! guesses per window. The table is [`SLOTS`] `AtomicU64`s (512 KiB),
//! direct-mapped by a keyed SipHash of the address; each slot packs a
//! 16-bit tag of the hash, the window start (tenths of a second) and the
//! count, updated by compare-and-swap, so there are no locks and no lost
//! updates. A failure from an address whose slot holds another live
//! address replaces it (the keyed hash means a client cannot aim at a
//! slot); the evicted address starts afresh, which gives it no more than a
//! fresh address would. Checking and recording run in one synchronous call
//! on the worker, so simultaneous attempts from one address can exceed
//! `max_failures` by at most the number of workers minus one. Cost: one
//! hash and one atomic load per token request, one CAS per failure; the
//! plain proxy path never touches it.

use super::consumers::Consumer;
use super::extract::{self, pct_decode, strip_scheme, trim};
use super::keys::SigningKey;
use super::{Auth, unix_now};
use crate::filter::rate_limit::{Cidr, Client, client_address};
use crate::filter::{Reply, RequestCtx};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// `[auth.token_endpoint]`, compiled.
#[derive(Debug)]
pub(crate) struct TokenEndpoint {
    pub path: String,
    pub ttl: u64,
    pub key: SigningKey,
    /// The failed-attempt limit (None with `max_failures = 0`).
    pub failures: Option<FailureLimit>,
}

/// Slots in the failure table: at most this many addresses are tracked at
/// once (a power of two; the index is the hash's low bits).
pub(crate) const SLOTS: usize = 1 << 16;
/// Milliseconds per tick of the failure table's clock.
const TICK_MS: u128 = 100;
const TICKS_PER_S: u64 = 1000 / TICK_MS as u64;
/// A window start this many ticks after "now" is another worker that read
/// the clock a moment later and wrote first: age 0, not a wrapped clock.
const CLOCK_SLACK: u32 = 600;

/// The failed-attempt limit of the token endpoint, shared by every worker
/// (see the module docs).
pub(crate) struct FailureLimit {
    /// Failures that block an address (1..=1000).
    max: u16,
    /// Window length, ticks.
    window: u32,
    window_s: u64,
    /// Peers whose `X-Forwarded-For` names the client.
    trusted: Vec<Cidr>,
    /// Keyed per table, so a client cannot pick addresses that collide.
    hasher: RandomState,
    epoch: Instant,
    /// `tag:16 | window start tick:32 | failures:16`; 0 is empty (tags are
    /// never 0).
    slots: Box<[AtomicU64]>,
}

impl std::fmt::Debug for FailureLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLimit")
            .field("max", &self.max)
            .field("window_s", &self.window_s)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

fn pack(tag: u16, start: u32, count: u16) -> u64 {
    (tag as u64) << 48 | (start as u64) << 16 | count as u64
}

fn unpack(v: u64) -> (u16, u32, u16) {
    ((v >> 48) as u16, (v >> 16) as u32, v as u16)
}

/// Ticks from `start` to `now` on the wrapping 32-bit clock.
fn age(now: u32, start: u32) -> u32 {
    let a = now.wrapping_sub(start);
    if a > u32::MAX - CLOCK_SLACK { 0 } else { a }
}

impl FailureLimit {
    /// A limit of `max` failures (1..=1000) per `window_s` seconds
    /// (1..=86400) per client address.
    pub(crate) fn new(max: u16, window_s: u64, trusted: Vec<Cidr>) -> Self {
        FailureLimit {
            max,
            window: (window_s * TICKS_PER_S) as u32,
            window_s,
            trusted,
            hasher: RandomState::new(),
            epoch: Instant::now(),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The table's clock, ticks (wraps after 13 years; see [`age`]).
    fn now(&self) -> u32 {
        (self.epoch.elapsed().as_millis() / TICK_MS) as u32
    }

    /// The hash of a client address. IPv6 clients count by /64: one
    /// subscriber usually holds a whole /64, so counting single addresses
    /// would let it guess from 2^64 of them.
    fn hash(&self, client: Client<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        match client {
            Client::Ip(IpAddr::V4(a)) => {
                h.write_u8(4);
                h.write(&a.octets());
            }
            Client::Ip(IpAddr::V6(a)) => {
                h.write_u8(6);
                h.write(&a.octets()[..8]);
            }
            Client::Raw(b) => {
                h.write_u8(0);
                h.write(b);
            }
        }
        h.finish()
    }

    fn slot(&self, hash: u64) -> (&AtomicU64, u16) {
        let tag = ((hash >> 48) as u16).max(1);
        (&self.slots[hash as usize & (SLOTS - 1)], tag)
    }

    /// While the address of `hash` has used up its failures: the seconds
    /// until its window ends (at least 1).
    pub(crate) fn blocked_at(&self, hash: u64, now: u32) -> Option<u64> {
        let (slot, tag) = self.slot(hash);
        let (t, start, count) = unpack(slot.load(Relaxed));
        let age = age(now, start);
        if t != tag || age >= self.window || count < self.max {
            return None;
        }
        Some(u64::from(self.window - age).div_ceil(TICKS_PER_S).max(1))
    }

    /// Counts one failure for the address of `hash`; returns its failures
    /// in the current window.
    pub(crate) fn fail_at(&self, hash: u64, now: u32) -> u16 {
        let (slot, tag) = self.slot(hash);
        let mut cur = slot.load(Relaxed);
        loop {
            let (t, start, count) = unpack(cur);
            let next = if t == tag && age(now, start) < self.window {
                pack(tag, start, count.saturating_add(1))
            } else {
                // Empty, expired, or another address: a new window.
                pack(tag, now, 1)
            };
            match slot.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                Ok(_) => return unpack(next).2,
                Err(v) => cur = v,
            }
        }
    }
}

fn oauth_error(status: u16, code: &str, description: &str, rid: &[u8]) -> Reply {
    let r = Reply {
        status,
        headers: Vec::new(),
        content_type: "application/json",
        body: crate::filter::error_body(status, code, &[("error_description", description)], rid),
    }
    .with_header("Cache-Control", "no-store");
    if status == 401 {
        r.with_header("WWW-Authenticate", "Basic realm=\"ringgate\"")
    } else {
        r
    }
}

/// One decoded form field: name and value.
type Field<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Form fields; a repeated field is an error (RFC 6749 §3.2).
fn parse_form(body: &[u8]) -> Result<Vec<Field<'_>>, &'static str> {
    let mut out: Vec<Field<'_>> = Vec::new();
    for kv in body.split(|&b| b == b'&').filter(|kv| !kv.is_empty()) {
        let (k, v) = match kv.iter().position(|&b| b == b'=') {
            Some(i) => (&kv[..i], &kv[i + 1..]),
            None => (kv, &b""[..]),
        };
        let k = pct_decode(k, true);
        if out.iter().any(|(x, _)| *x == k) {
            return Err("a form field is repeated");
        }
        out.push((k, pct_decode(v, true)));
    }
    Ok(out)
}

fn field<'f>(form: &'f [Field<'_>], name: &[u8]) -> Option<&'f [u8]> {
    form.iter().find(|(k, _)| &**k == name).map(|(_, v)| &**v)
}

/// Answers one token request: 429 while the client address is blocked
/// (credentials unchecked), else [`grant`], counting a refused client
/// authentication as a failure.
pub(crate) fn answer(auth: &Auth, ep: &TokenEndpoint, ctx: &RequestCtx<'_>, body: &[u8]) -> Reply {
    let Some(limit) = &ep.failures else {
        return grant(auth, ep, ctx, body);
    };
    let client = client_address(ctx, &limit.trusted);
    let hash = limit.hash(client);
    if let Some(retry) = limit.blocked_at(hash, limit.now()) {
        let description =
            format!("too many failed client authentications from this address; retry in {retry} s");
        return oauth_error(429, "too_many_attempts", &description, ctx.request_id)
            .with_header("Retry-After", &retry.to_string());
    }
    let reply = grant(auth, ep, ctx, body);
    if reply.status == 401 && limit.fail_at(hash, limit.now()) == limit.max {
        tracing::warn!(
            client = %client,
            failures = limit.max,
            window_s = limit.window_s,
            "token endpoint: client address blocked after failed client authentications"
        );
    }
    reply
}

/// Authenticates the client and issues its token.
fn grant(auth: &Auth, ep: &TokenEndpoint, ctx: &RequestCtx<'_>, body: &[u8]) -> Reply {
    let rid = ctx.request_id;
    let bad = |code: &str, d: &str| oauth_error(400, code, d, rid);
    let unauthorized = |d: &str| oauth_error(401, "invalid_client", d, rid);

    if !body.is_empty() {
        let ct = ctx.header(b"content-type").unwrap_or(b"");
        let media = ct.split(|&b| b == b';').next().unwrap_or(b"");
        if !trim(media).eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
            return bad(
                "invalid_request",
                "send the form as Content-Type: application/x-www-form-urlencoded",
            );
        }
    }
    let form = match parse_form(body) {
        Ok(f) => f,
        Err(e) => return bad("invalid_request", e),
    };
    let grant = field(&form, b"grant_type");
    if let Some(g) = grant
        && g != b"client_credentials"
    {
        return bad(
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        );
    }

    // Client authentication: HTTP Basic, form fields, or an API key.
    let mut basic: Option<(Vec<u8>, Vec<u8>)> = None;
    for v in ctx.headers(b"authorization") {
        if let Some(b64) = strip_scheme(v, b"basic") {
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
                return unauthorized("the Basic credentials are not base64");
            };
            let Some(colon) = raw.iter().position(|&b| b == b':') else {
                return unauthorized("the Basic credentials have no ':'");
            };
            let id = pct_decode(&raw[..colon], true).into_owned();
            let secret = pct_decode(&raw[colon + 1..], true).into_owned();
            if basic.is_some() {
                return bad("invalid_request", "more than one Authorization header");
            }
            basic = Some((id, secret));
        }
    }
    let form_id = field(&form, b"client_id");
    let form_secret = field(&form, b"client_secret");
    let creds: Option<(&[u8], &[u8])> = match (&basic, form_id, form_secret) {
        (Some(_), _, Some(_)) => {
            return bad(
                "invalid_request",
                "use one client authentication method, not Basic and client_secret",
            );
        }
        (Some((id, s)), fid, None) => {
            if fid.is_some_and(|f| f != &id[..]) {
                return bad("invalid_request", "client_id differs from the Basic user");
            }
            Some((id, s))
        }
        (None, Some(id), Some(s)) => Some((id, s)),
        (None, Some(_), None) => return unauthorized("client_secret is missing"),
        (None, None, Some(_)) => return bad("invalid_request", "client_id is missing"),
        (None, None, None) => None,
    };

    let consumer: &Consumer = match creds {
        Some((id, secret)) => {
            if grant.is_none() {
                return bad(
                    "invalid_request",
                    "grant_type=client_credentials is required",
                );
            }
            let found = std::str::from_utf8(id)
                .ok()
                .and_then(|id| auth.consumers.by_client_secret(id, secret));
            match found {
                Some(c) => c,
                None => return unauthorized("unknown client or wrong secret"),
            }
        }
        None => {
            let key = match extract::credentials(auth, ctx, false, true) {
                Ok(f) => f.api_key,
                Err(e) => return unauthorized(e),
            };
            match key.and_then(|k| auth.consumers.by_api_key(&k)) {
                Some((i, _)) => &auth.consumers.list[i],
                None => {
                    return unauthorized(
                        "send client credentials (Basic or form) or a valid API key",
                    );
                }
            }
        }
    };

    // Scopes: a requested subset of the consumer's, or all of them.
    let scopes: Vec<String> = match field(&form, b"scope") {
        Some(s) => {
            let want: Vec<String> = String::from_utf8_lossy(s)
                .split(' ')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect();
            if want.iter().any(|w| !consumer.scopes.contains(w)) {
                return bad(
                    "invalid_scope",
                    "a requested scope is not granted to this client",
                );
            }
            want
        }
        None => consumer.scopes.clone(),
    };

    match issue(auth, ep, consumer, &scopes, unix_now()) {
        Ok(token) => {
            let mut body = json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": ep.ttl,
            });
            if !scopes.is_empty() {
                body["scope"] = Value::String(scopes.join(" "));
            }
            Reply {
                status: 200,
                headers: Vec::new(),
                content_type: "application/json",
                body: body.to_string().into_bytes(),
            }
            .with_header("Cache-Control", "no-store")
            .with_header("Pragma", "no-cache")
        }
        Err(e) => {
            tracing::error!(error = %e, "token endpoint cannot sign");
            Reply::error(500, "the token could not be signed", rid)
        }
    }
}

/// Puts `value` at a dotted claim path, creating objects on the way.
fn put_at(claims: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut m = claims;
    for p in parents {
        let e = m
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !e.is_object() {
            *e = Value::Object(Map::new());
        }
        let Value::Object(next) = e else {
            return;
        };
        m = next;
    }
    m.insert(last.clone(), value);
}

/// Signs a token for `consumer`.
pub(crate) fn issue(
    auth: &Auth,
    ep: &TokenEndpoint,
    consumer: &Consumer,
    scopes: &[String],
    now: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut claims = Map::new();
    if let Some(j) = &auth.jwt {
        let r = &j.rules;
        if let Some(iss) = r.issuers.first() {
            claims.insert("iss".into(), Value::String(iss.clone()));
        }
        match r.audiences.len() {
            0 => {}
            1 => {
                claims.insert("aud".into(), Value::String(r.audiences[0].clone()));
            }
            _ => {
                claims.insert("aud".into(), json!(r.audiences));
            }
        }
        if !consumer.roles.is_empty() {
            put_at(&mut claims, &r.roles_claim, json!(consumer.roles));
        }
        if !scopes.is_empty()
            && let Some(path) = r.scopes_claims.first()
        {
            put_at(&mut claims, path, Value::String(scopes.join(" ")));
        }
    }
    claims.insert("sub".into(), Value::String(consumer.id.clone()));
    claims.insert("client_id".into(), Value::String(consumer.id.clone()));
    if let Some(t) = &consumer.tier {
        claims.insert("tier".into(), Value::String(t.clone()));
    }
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(now + ep.ttl));
    let mut jti = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti);
    claims.insert("jti".into(), Value::String(hex::encode(jti)));
    let mut header = jsonwebtoken::Header::new(ep.key.alg);
    header.kid = ep.key.kid.clone();
    jsonwebtoken::encode(&header, &claims, &ep.key.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One second, in ticks.
    const S: u32 = TICKS_PER_S as u32;

    #[test]
    fn blocks_after_max_failures_until_the_window_ends() {
        let l = FailureLimit::new(3, 60, Vec::new());
        let h = l.hash(Client::Ip("192.0.2.1".parse().unwrap()));
        let t0 = 1000;
        for i in 1..=3 {
            assert_eq!(l.blocked_at(h, t0), None, "before failure {i}");
            assert_eq!(l.fail_at(h, t0 + i), i as u16);
        }
        // The window started at the first failure (t0 + 1).
        assert_eq!(l.blocked_at(h, t0 + 4), Some(60));
        assert_eq!(l.blocked_at(h, t0 + 1 + 59 * S), Some(1));
        assert_eq!(l.blocked_at(h, t0 + 1 + 60 * S - 1), Some(1));
        assert_eq!(l.blocked_at(h, t0 + 1 + 60 * S), None);
        // After the window a failure starts a new one.
        assert_eq!(l.fail_at(h, t0 + 1 + 60 * S), 1);
        assert_eq!(l.blocked_at(h, t0 + 1 + 60 * S), None);
    }

    #[test]
    fn addresses_are_counted_apart() {
        let l = FailureLimit::new(2, 60, Vec::new());
        let a = l.hash(Client::Ip("192.0.2.1".parse().unwrap()));
        let b = l.hash(Client::Ip("192.0.2.2".parse().unwrap()));
        let mapped = l.hash(Client::Ip(
            "::ffff:192.0.2.1".parse::<IpAddr>().unwrap().to_canonical(),
        ));
        assert_ne!(a, b);
        assert_eq!(a, mapped);
        // IPv6 by /64: one subscriber's addresses share a count.
        let v6 = |s: &str| l.hash(Client::Ip(s.parse().unwrap()));
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::7"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        l.fail_at(a, 10);
        l.fail_at(a, 10);
        assert!(l.blocked_at(a, 11).is_some());
        assert_eq!(l.blocked_at(b, 11), None);
        assert_eq!(l.fail_at(b, 11), 1);
    }

    #[test]
    fn a_colliding_address_takes_the_slot_over() {
        let l = FailureLimit::new(1, 60, Vec::new());
        // Same slot (low bits), different tags (high bits).
        let a = 0x0001_0000_0000_0042;
        let b = 0x0002_0000_0000_0042;
        l.fail_at(a, 5);
        assert!(l.blocked_at(a, 5).is_some());
        assert_eq!(l.blocked_at(b, 5), None);
        assert_eq!(l.fail_at(b, 6), 1);
        assert!(l.blocked_at(b, 6).is_some());
        // a was evicted: it starts afresh.
        assert_eq!(l.blocked_at(a, 6), None);
        assert_eq!(l.fail_at(a, 7), 1);
    }

    #[test]
    fn the_clock_wraps_and_tolerates_a_start_just_ahead() {
        let l = FailureLimit::new(2, 1, Vec::new());
        let h = 0x1234_0000_0000_0001;
        // A window that began just before the 32-bit tick clock wrapped.
        l.fail_at(h, u32::MAX - 2);
        assert_eq!(l.fail_at(h, 1), 2);
        assert_eq!(l.blocked_at(h, 2), Some(1));
        assert_eq!(l.blocked_at(h, (u32::MAX - 2).wrapping_add(S)), None);
        // Another worker wrote a start one tick after this one's "now".
        let g = 0x5678_0000_0000_0002;
        l.fail_at(g, 101);
        assert_eq!(l.fail_at(g, 100), 2);
        assert_eq!(l.blocked_at(g, 100), Some(1));
    }
}
