//! `hide_credentials`: the credential a request authenticated with is not
//! forwarded to the backend.
//!
//! The auth filter records where that credential was found
//! ([`CredentialSources`]); after the route's filters, [`hide_credentials`]
//! removes it from the request in the connection: an `Authorization:
//! Bearer`, token or API-key header line is marked
//! [`HeaderRole::Drop`]; a query parameter is cut out of the request line
//! (and out of a rewritten target, if one was set already); a cookie is cut
//! out of its `Cookie` line, which is dropped when nothing is left. Only the
//! credential of the method that authenticated the request is removed:
//! an API key sent alongside the JWT that was checked is forwarded.
//!
//! Performance notes: cuts are made in place. The bytes before a cut (from
//! the start of its line) move right over it and the spans into them move
//! with them, so the forwarded head is still written as slices of the
//! buffer, everything after the filters (the request transform, compose,
//! the cache key) sees the request without the credential, and nothing is
//! allocated. Routes without `hide_credentials` never get here.

use super::Auth;
use super::extract::{strip_scheme, trim};
use crate::http::name_eq;
use crate::http::parse::{HeaderRole, Span};
use crate::proxy::forward::Conn;
use std::ops::Range;

/// Where a request's credential was found: a set of sources, kept per
/// method by the credential search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CredentialSources(u8);

impl CredentialSources {
    /// `Authorization: Bearer`.
    pub(crate) const BEARER: Self = Self(1);
    /// `[auth.jwt] token_header`.
    pub(crate) const TOKEN_HEADER: Self = Self(1 << 1);
    /// `[auth.jwt] token_query`.
    pub(crate) const TOKEN_QUERY: Self = Self(1 << 2);
    /// `[auth.jwt] token_cookie`.
    pub(crate) const TOKEN_COOKIE: Self = Self(1 << 3);
    /// `[auth.api_key] header`.
    pub(crate) const KEY_HEADER: Self = Self(1 << 4);
    /// `[auth.api_key] query`.
    pub(crate) const KEY_QUERY: Self = Self(1 << 5);

    /// True when no source is in the set.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when `s` is in the set.
    #[inline]
    pub(crate) fn contains(self, s: Self) -> bool {
        self.0 & s.0 != 0
    }

    /// Adds `s`.
    #[inline]
    pub(crate) fn insert(&mut self, s: Self) {
        self.0 |= s.0;
    }
}

/// Removes the credential found at `used` from the request in `c` (see the
/// module docs). Called after the route's filters, before its transform.
pub fn hide_credentials(auth: &Auth, used: CredentialSources, c: &mut Conn) {
    if used.is_empty() {
        return;
    }
    let sources = auth.jwt.as_ref().map(|j| &j.sources);
    let token_header = sources
        .and_then(|s| s.header.as_deref())
        .filter(|_| used.contains(CredentialSources::TOKEN_HEADER));
    let key_header =
        Some(&auth.api_key.header[..]).filter(|_| used.contains(CredentialSources::KEY_HEADER));
    let cookie = sources
        .and_then(|s| s.cookie.as_deref())
        .filter(|_| used.contains(CredentialSources::TOKEN_COOKIE));
    for i in 0..c.lines.len() {
        let l = c.lines[i];
        if !l.role.forwarded() {
            continue;
        }
        let name = l.name.of(&c.buf);
        let drop = (used.contains(CredentialSources::BEARER)
            && name_eq(name, b"authorization")
            && strip_scheme(l.value.of(&c.buf), b"bearer").is_some())
            || token_header.is_some_and(|h| name_eq(name, h))
            || key_header.is_some_and(|h| name_eq(name, h));
        if drop {
            c.lines[i].role = HeaderRole::Drop;
        } else if let Some(cookie) = cookie
            && name_eq(name, b"cookie")
        {
            remove_cookie(c, i, cookie);
        }
    }
    let token_query = sources
        .and_then(|s| s.query.as_deref())
        .filter(|_| used.contains(CredentialSources::TOKEN_QUERY));
    let key_query = auth
        .api_key
        .query
        .as_deref()
        .filter(|_| used.contains(CredentialSources::KEY_QUERY));
    for name in [token_query, key_query].into_iter().flatten() {
        remove_param(c, name);
    }
}

/// Moves `s` for a cut of `n` bytes at `at` made by moving the bytes
/// before it right: a span before the cut moves whole, a span around it
/// loses the cut from its start; spans after it keep their place.
#[inline]
fn shift(s: &mut Span, at: u32, n: u32) {
    if s.start <= at {
        s.start += n;
        if s.end <= at {
            s.end += n;
        }
    }
}

/// Removes `buf[cut]` by moving `buf[from..cut.start]` right over it.
fn cut(buf: &mut [u8], from: usize, cut: &Range<usize>) {
    buf.copy_within(from..cut.start, from + cut.len());
}

/// Removes every query parameter `name` from the forwarded target.
fn remove_param(c: &mut Conn, name: &[u8]) {
    let mut removed = false;
    loop {
        let pq = c.head.path_query;
        let Some(r) = param_cut(pq.of(&c.buf), name, removed) else {
            break;
        };
        removed = true;
        let r = pq.start as usize + r.start..pq.start as usize + r.end;
        cut(&mut c.buf, c.head.method.start as usize, &r);
        let (at, n) = (r.start as u32, r.len() as u32);
        let h = &mut c.head;
        for s in [&mut h.method, &mut h.target, &mut h.path_query, &mut h.path] {
            shift(s, at, n);
        }
        // An absolute-form target's authority (a Host header's value lies
        // after the cut and keeps its place).
        if let Some(host) = &mut h.host {
            shift(host, at, n);
        }
    }
    // A target rewritten before the filters (an API version prefix taken
    // off) is forwarded instead of the client's: cut it there too.
    let t = &mut c.rewrite.target;
    if !t.is_empty() {
        let mut removed = false;
        while let Some(r) = param_cut(t, name, removed) {
            removed = true;
            t.drain(r);
        }
    }
}

/// What to cut from `pq` (a path and query) to remove the first parameter
/// `name` (a raw name, compared as the credential search does), with one
/// separator; `None` when there is none. With `tidy`, a query left empty
/// by earlier cuts is cut (its `?`).
fn param_cut(pq: &[u8], name: &[u8], tidy: bool) -> Option<Range<usize>> {
    let q = pq.iter().position(|&b| b == b'?')?;
    if tidy && q + 1 == pq.len() {
        return Some(q..pq.len());
    }
    let mut start = q + 1;
    while start <= pq.len() {
        let end = pq[start..]
            .iter()
            .position(|&b| b == b'&')
            .map_or(pq.len(), |p| start + p);
        let kv = &pq[start..end];
        let key = kv.split(|&b| b == b'=').next().unwrap_or(kv);
        if !kv.is_empty() && key == name {
            return Some(if end < pq.len() {
                start..end + 1
            } else if start > q + 1 {
                start - 1..end
            } else {
                q..end
            });
        }
        start = end + 1;
    }
    None
}

/// Removes every `name` cookie from the `Cookie` line `i`; drops the line
/// when no cookie is left.
fn remove_cookie(c: &mut Conn, i: usize, name: &[u8]) {
    loop {
        let l = c.lines[i];
        let Some(r) = cookie_cut(l.value.of(&c.buf), name) else {
            break;
        };
        let r = l.value.start as usize + r.start..l.value.start as usize + r.end;
        cut(&mut c.buf, l.line.start as usize, &r);
        let (at, n) = (r.start as u32, r.len() as u32);
        let l = &mut c.lines[i];
        for s in [&mut l.line, &mut l.name, &mut l.value] {
            shift(s, at, n);
        }
    }
    let v = c.lines[i].value.of(&c.buf);
    if v.iter().all(|&b| b == b';' || b.is_ascii_whitespace()) {
        c.lines[i].role = HeaderRole::Drop;
    }
}

/// What to cut from a `Cookie` value to remove the first cookie `name`
/// (matched as the credential search does) with one separator.
fn cookie_cut(v: &[u8], name: &[u8]) -> Option<Range<usize>> {
    let mut start = 0;
    while start <= v.len() {
        let end = v[start..]
            .iter()
            .position(|&b| b == b';')
            .map_or(v.len(), |p| start + p);
        let pair = trim(&v[start..end]);
        if let Some(eq) = pair.iter().position(|&b| b == b'=')
            && trim(&pair[..eq]) == name
        {
            return Some(if end < v.len() {
                // `name=x; ` at the start, or ` name=x;` further on.
                let mut e = end + 1;
                if start == 0 {
                    while e < v.len() && (v[e] == b' ' || v[e] == b'\t') {
                        e += 1;
                    }
                }
                start..e
            } else if start > 0 {
                start - 1..end
            } else {
                start..end
            });
        }
        start = end + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn without_param(pq: &str, name: &str) -> String {
        let mut v = pq.as_bytes().to_vec();
        let mut removed = false;
        while let Some(r) = param_cut(&v, name.as_bytes(), removed) {
            removed = true;
            v.drain(r);
        }
        String::from_utf8(v).unwrap()
    }

    fn without_cookie(value: &str, name: &str) -> String {
        let mut v = value.as_bytes().to_vec();
        while let Some(r) = cookie_cut(&v, name.as_bytes()) {
            v.drain(r);
        }
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn query_parameters_are_cut_with_one_separator() {
        for (pq, want) in [
            ("/p?k=1", "/p"),
            ("/p?k=1&a=2", "/p?a=2"),
            ("/p?a=2&k=1", "/p?a=2"),
            ("/p?a=1&k=2&b=3", "/p?a=1&b=3"),
            ("/p?k=1&a=2&k=3&b=4", "/p?a=2&b=4"),
            ("/p?k", "/p"),
            ("/p?k=1&", "/p"),
            ("/p?a=1&&k=2", "/p?a=1&"),
            ("/p?kk=1&k2=2&ak=3", "/p?kk=1&k2=2&ak=3"),
            ("/p?a=k", "/p?a=k"),
            ("/p", "/p"),
            ("/p?", "/p?"),
            ("?k=1", ""),
        ] {
            assert_eq!(without_param(pq, "k"), want, "{pq}");
        }
    }

    #[test]
    fn cookies_are_cut_with_one_separator() {
        for (v, want) in [
            ("s=t", ""),
            ("s=t; a=1", "a=1"),
            ("a=1; s=t", "a=1"),
            ("a=1; s=t; b=2", "a=1; b=2"),
            ("s=t;a=1", "a=1"),
            ("a=1;s=t;b=2", "a=1;b=2"),
            (" s = \"t\" ; a=1", "a=1"),
            ("s=t; a=1; s=t", "a=1"),
            ("ss=t; a=1", "ss=t; a=1"),
            ("a=s", "a=s"),
        ] {
            assert_eq!(without_cookie(v, "s"), want, "{v:?}");
        }
    }

    #[test]
    fn spans_follow_a_cut() {
        // "GET /p?k=1&a=2 HTTP/1.1": cut "k=1&" (7..11); the method, the
        // target's start and the path move right by 4, a header stays.
        let mut method = Span { start: 0, end: 3 };
        let mut target = Span { start: 4, end: 14 };
        let mut path = Span { start: 4, end: 6 };
        let mut header = Span { start: 25, end: 30 };
        for s in [&mut method, &mut target, &mut path, &mut header] {
            shift(s, 7, 4);
        }
        assert_eq!(method, Span { start: 4, end: 7 });
        assert_eq!(target, Span { start: 8, end: 14 });
        assert_eq!(path, Span { start: 8, end: 10 });
        assert_eq!(header, Span { start: 25, end: 30 });
    }
}
