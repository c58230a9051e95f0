//! What may be cached and for how long: request and response
//! `Cache-Control`, `Expires`/`Date`/`Age`, `Vary`, `Set-Cookie`, and the
//! conversion of an answer (its head and body as the client received them,
//! read back by the fill: [`Filled`]) into the stored form: the head
//! without per-request and hop-by-hop lines, and the body.
//!
//! Everything here is pure (no I/O, no worker state), so the rules are unit
//! tested below.

use super::RouteCache;
use super::wire::Filled;
use crate::http::message::OwnedResponse;
use crate::http::name_eq;
use crate::http::parse::HeaderLine;
use std::time::Duration;

/// The directives of one or more `Cache-Control` values that matter here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store`
    pub no_store: bool,
    /// `no-cache` (with or without a field list)
    pub no_cache: bool,
    /// `private` (with or without a field list)
    pub private: bool,
    /// `must-revalidate` or `proxy-revalidate`
    pub must_revalidate: bool,
    /// `only-if-cached` (requests)
    pub only_if_cached: bool,
    /// `max-age=N`
    pub max_age: Option<u64>,
    /// `s-maxage=N`
    pub s_maxage: Option<u64>,
    /// `stale-while-revalidate=N` (RFC 5861)
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error=N` (RFC 5861)
    pub stale_if_error: Option<u64>,
    /// Some directive was present.
    pub any: bool,
}

fn delta_seconds(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    let v = v
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(v);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Larger than any useful lifetime: saturate (RFC 9111 §1.2.2).
    Some(
        v.iter()
            .try_fold(0u64, |a, d| {
                a.checked_mul(10)?.checked_add((d - b'0') as u64)
            })
            .unwrap_or(u32::MAX as u64)
            .min(u32::MAX as u64),
    )
}

impl CacheControl {
    /// Adds the directives of one header value.
    pub fn add(&mut self, value: &[u8]) {
        for t in crate::http::tokens(value) {
            self.any = true;
            let (name, arg) = match t.iter().position(|&b| b == b'=') {
                Some(i) => (t[..i].trim_ascii(), Some(&t[i + 1..])),
                None => (t, None),
            };
            let lower = |s: &[u8]| name.eq_ignore_ascii_case(s);
            if lower(b"no-store") {
                self.no_store = true;
            } else if lower(b"no-cache") {
                self.no_cache = true;
            } else if lower(b"private") {
                self.private = true;
            } else if lower(b"must-revalidate") || lower(b"proxy-revalidate") {
                self.must_revalidate = true;
            } else if lower(b"only-if-cached") {
                self.only_if_cached = true;
            } else if lower(b"max-age") {
                // An invalid max-age makes the response stale (RFC 9111 §4.2.1).
                self.max_age = Some(arg.and_then(delta_seconds).unwrap_or(0));
            } else if lower(b"s-maxage") {
                self.s_maxage = Some(arg.and_then(delta_seconds).unwrap_or(0));
            } else if lower(b"stale-while-revalidate") {
                self.stale_while_revalidate = arg.and_then(delta_seconds);
            } else if lower(b"stale-if-error") {
                self.stale_if_error = arg.and_then(delta_seconds);
            }
        }
    }
}

/// How a request may use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestMode {
    /// Neither looked up nor stored (method, body, `Authorization`,
    /// `no-store`, upgrade).
    Bypass,
    /// Looked up; a miss is fetched and stored.
    Use {
        /// The client accepts no stored answer (`no-cache`, `max-age=0`,
        /// `Pragma: no-cache`): fetch, then store.
        revalidate: bool,
        /// Oldest stored answer the client accepts (`max-age=N`), seconds.
        max_age: Option<u64>,
        /// Answer 504 rather than go to the backend (`only-if-cached`).
        only_if_cached: bool,
        /// The client accepts no stale answer (`max-age` given, or
        /// `no-cache`).
        no_stale: bool,
    },
}

/// How the request in `buf`/`lines` may use a cached route.
pub fn request_mode(
    buf: &[u8],
    head: &crate::http::parse::RequestHead,
    lines: &[HeaderLine],
    policy: &RouteCache,
) -> RequestMode {
    let method = head.method.of(buf);
    if (method != b"GET" && method != b"HEAD") || head.has_body() || head.upgrade.is_some() {
        return RequestMode::Bypass;
    }
    let mut cc = CacheControl::default();
    let mut pragma_no_cache = false;
    for l in lines {
        let name = l.name.of(buf);
        match name.len() {
            13 if !policy.allow_authorization && name_eq(name, b"authorization") => {
                return RequestMode::Bypass;
            }
            13 if name_eq(name, b"cache-control") => cc.add(l.value.of(buf)),
            6 if name_eq(name, b"pragma") => {
                pragma_no_cache |= crate::http::tokens(l.value.of(buf))
                    .any(|t| t.eq_ignore_ascii_case(b"no-cache"));
            }
            _ => {}
        }
    }
    if cc.no_store {
        return RequestMode::Bypass;
    }
    let revalidate = cc.no_cache || cc.max_age == Some(0) || (pragma_no_cache && !cc.any);
    RequestMode::Use {
        revalidate,
        max_age: cc.max_age,
        only_if_cached: cc.only_if_cached,
        no_stale: revalidate || cc.max_age.is_some(),
    }
}

/// A response ready to be stored, structured (status, the header fields
/// kept, the body: whatever transport it came over or will be served on),
/// and how long it serves.
#[derive(Debug)]
pub struct Storable {
    /// Status, reason and the header fields kept (no framing fields).
    pub head: OwnedResponse,
    /// The body.
    pub body: Vec<u8>,
    /// Lower-case names from `Vary`.
    pub vary: Vec<Box<[u8]>>,
    /// Freshness lifetime from the time of storing (the response's
    /// initial age already taken off).
    pub fresh_for: Duration,
    /// The response's age when it arrived (`Age`), seconds.
    pub initial_age: u64,
    /// Stale-while-revalidate window after `fresh_for`.
    pub stale_while_revalidate: Duration,
    /// Stale-if-error window after `fresh_for`.
    pub stale_if_error: Duration,
    /// The response's `ETag`, if any (for `If-None-Match`).
    pub etag: Option<Box<[u8]>>,
}

impl Storable {
    /// Bytes the response takes (fields and body).
    pub fn size(&self) -> usize {
        self.body.len()
            + self.head.reason.len()
            + self
                .head
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>()
    }
}

/// Why an answer was not stored (for tests and debugging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Not a complete, readable answer (its body cut short, or past the
    /// size bound).
    Incomplete,
    /// Status not in the route's `statuses`.
    Status,
    /// `no-store`, `private` or `no-cache`.
    Directive,
    /// `Set-Cookie` without `allow_set_cookie`.
    SetCookie,
    /// `Vary: *`.
    VaryStar,
    /// No freshness lifetime (no `max-age`/`Expires` and `ttl_s = 0`).
    NoLifetime,
}

/// Response header lines that are never stored: framing, hop-by-hop,
/// and the lines the gateway writes itself on every answer.
const NOT_STORED: &[&[u8]] = &[
    b"content-length",
    b"transfer-encoding",
    b"trailer",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"x-request-id",
    b"x-cache",
    b"age",
];

/// Turns an answer read back whole ([`Filled`]: its head and body) into
/// its stored form, or says why not. `drop_names` are lower-case names of
/// lines the gateway added for this request only (they are added again on
/// every hit); `now_unix` is the wall-clock time in seconds (for `Expires`
/// and `Date`).
pub fn storable(
    answer: Filled,
    policy: &RouteCache,
    drop_names: &[&[u8]],
    now_unix: u64,
) -> Result<Storable, NotStored> {
    let Filled { head, body } = answer;
    let status = head.status;
    if !policy.statuses.contains(&status) {
        return Err(NotStored::Status);
    }
    let mut cc = CacheControl::default();
    let mut expires: Option<&[u8]> = None;
    let mut date: Option<&[u8]> = None;
    let mut age = 0u64;
    let mut vary = Vec::new();
    let mut etag = None;
    for (name, value) in &head.headers {
        let (name, value) = (name.as_slice(), value.as_slice());
        if name_eq(name, b"cache-control") {
            cc.add(value);
        } else if name_eq(name, b"expires") {
            expires = Some(value);
        } else if name_eq(name, b"date") {
            date = Some(value);
        } else if name_eq(name, b"age") {
            age = delta_seconds(value).unwrap_or(0);
        } else if name_eq(name, b"set-cookie") {
            if !policy.allow_set_cookie {
                return Err(NotStored::SetCookie);
            }
        } else if name_eq(name, b"etag") {
            etag = Some(value.trim_ascii().into());
        } else if name_eq(name, b"vary") {
            for t in crate::http::tokens(value) {
                if t == b"*" {
                    return Err(NotStored::VaryStar);
                }
                let lower: Box<[u8]> = t.to_ascii_lowercase().into();
                if !vary.contains(&lower) {
                    vary.push(lower);
                }
            }
        }
    }
    if cc.no_store || cc.private || cc.no_cache {
        return Err(NotStored::Directive);
    }
    let lifetime = if let Some(s) = cc.s_maxage {
        s
    } else if let Some(m) = cc.max_age {
        m
    } else if let Some(e) = expires {
        // An invalid Expires (e.g. "0") means already expired.
        let base = date.and_then(parse_http_date).unwrap_or(now_unix);
        parse_http_date(e).map_or(0, |e| e.saturating_sub(base))
    } else {
        policy.ttl.as_secs()
    };
    let fresh = lifetime.saturating_sub(age);
    let (swr, sie) = if cc.must_revalidate {
        (0, 0)
    } else {
        (
            cc.stale_while_revalidate
                .unwrap_or(policy.stale_while_revalidate.as_secs()),
            cc.stale_if_error.unwrap_or(policy.stale_if_error.as_secs()),
        )
    };
    if fresh == 0 && swr == 0 && sie == 0 {
        return Err(NotStored::NoLifetime);
    }
    let mut stored = OwnedResponse::new(status);
    stored.reason = head.reason;
    stored.headers = head
        .headers
        .into_iter()
        .filter(|(name, _)| {
            !NOT_STORED.iter().any(|n| name_eq(name, n))
                && !drop_names.iter().any(|n| name.eq_ignore_ascii_case(n))
        })
        .collect();
    Ok(Storable {
        head: stored,
        body,
        vary,
        fresh_for: Duration::from_secs(fresh),
        initial_age: age,
        stale_while_revalidate: Duration::from_secs(swr),
        stale_if_error: Duration::from_secs(sie),
        etag,
    })
}

/// Lower-case names of the header lines in `extra` (`Name: value\r\n`...).
pub fn line_names(extra: &[u8]) -> Vec<&[u8]> {
    extra
        .split(|&b| b == b'\n')
        .filter_map(|l| {
            let i = l.iter().position(|&b| b == b':')?;
            Some(l[..i].trim_ascii())
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// Parses an HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime
/// forms; see [`crate::http::date`]) into seconds since the Unix epoch. An
/// `Expires` that does not parse counts as already expired.
pub fn parse_http_date(v: &[u8]) -> Option<u64> {
    crate::http::date::parse(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `storable` of an answer written as HTTP/1.1 bytes, read back as the
    /// fill reads it.
    fn storable_h1(
        resp: &[u8],
        r: &RouteCache,
        drop: &[&[u8]],
        now: u64,
    ) -> Result<Storable, NotStored> {
        let filled = super::super::wire::read_back(resp).ok_or(NotStored::Incomplete)?;
        storable(filled, r, drop, now)
    }

    fn route() -> RouteCache {
        RouteCache {
            ttl: Duration::from_secs(30),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
            allow_authorization: false,
            allow_set_cookie: false,
            statuses: vec![200, 203, 204, 301, 404, 410].into(),
            route_name: b"r".as_slice().into(),
        }
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(parse_http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date(b"0"), None);
        // The obsolete forms a recipient must accept (RFC 9110 §5.6.7).
        assert_eq!(
            parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(
            parse_http_date(b"Sun Nov  6 08:49:37 1994"),
            Some(784111777)
        );
    }

    #[test]
    fn cache_control() {
        let mut cc = CacheControl::default();
        cc.add(b"public, max-age=60, S-MAXAGE=\"120\", stale-while-revalidate=5");
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(120));
        assert_eq!(cc.stale_while_revalidate, Some(5));
        assert!(!cc.no_store);
        let mut cc = CacheControl::default();
        cc.add(b"no-cache=\"Set-Cookie\", max-age=abc");
        assert!(cc.no_cache);
        assert_eq!(cc.max_age, Some(0));
        let mut cc = CacheControl::default();
        cc.add(b"max-age=99999999999999999999999");
        assert_eq!(cc.max_age, Some(u32::MAX as u64));
    }

    #[test]
    fn lifetime_sources() {
        let r = route();
        let s = storable_h1(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=5, s-maxage=7\r\nAge: 2\r\nContent-Length: 2\r\n\r\nhi",
            &r,
            &[],
            0,
        )
        .unwrap();
        assert_eq!(s.fresh_for, Duration::from_secs(5));
        assert_eq!(s.initial_age, 2);
        let s = storable_h1(
            b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nExpires: Sun, 06 Nov 1994 08:50:37 GMT\r\nContent-Length: 0\r\n\r\n",
            &r,
            &[],
            0,
        )
        .unwrap();
        assert_eq!(s.fresh_for, Duration::from_secs(60));
        let s = storable_h1(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            &r,
            &[],
            0,
        )
        .unwrap();
        assert_eq!(s.fresh_for, Duration::from_secs(30));
        let s = storable_h1(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1, must-revalidate\r\nContent-Length: 0\r\n\r\n",
            &r,
            &[],
            0,
        )
        .unwrap();
        assert_eq!(s.stale_if_error, Duration::ZERO);
    }

    #[test]
    fn refusals() {
        let r = route();
        let no = |resp: &[u8]| storable_h1(resp, &r, &[], 0).unwrap_err();
        assert_eq!(
            no(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 0\r\n\r\n"),
            NotStored::Directive
        );
        assert_eq!(
            no(b"HTTP/1.1 200 OK\r\nCache-Control: private, max-age=9\r\nContent-Length: 0\r\n\r\n"),
            NotStored::Directive
        );
        assert_eq!(
            no(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nContent-Length: 0\r\n\r\n"),
            NotStored::SetCookie
        );
        assert_eq!(
            no(b"HTTP/1.1 200 OK\r\nVary: Accept, *\r\nContent-Length: 0\r\n\r\n"),
            NotStored::VaryStar
        );
        assert_eq!(
            no(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"),
            NotStored::Status
        );
        assert_eq!(
            no(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi"),
            NotStored::Incomplete
        );
        assert_eq!(
            no(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=0, stale-while-revalidate=0, stale-if-error=0\r\nContent-Length: 0\r\n\r\n"),
            NotStored::NoLifetime
        );
    }

    #[test]
    fn stored_form() {
        let r = route();
        let resp = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Request-Id: old\r\nX-RateLimit-Remaining: 4\r\nX-Cache: MISS\r\nVary: Accept-Language, accept-language\r\nX-A: 1\r\n\r\n2\r\nhi\r\n1\r\n!\r\n0\r\n\r\n";
        let s = storable_h1(resp, &r, &[b"X-RateLimit-Remaining"], 0).unwrap();
        assert_eq!(s.head.status, 200);
        assert_eq!(
            s.head.headers,
            vec![
                (
                    b"Vary".to_vec(),
                    b"Accept-Language, accept-language".to_vec()
                ),
                (b"X-A".to_vec(), b"1".to_vec()),
            ]
        );
        assert_eq!(s.body, b"hi!");
        let mut h1 = Vec::new();
        s.head.render_h1(s.body.len(), &mut h1);
        assert_eq!(
            std::str::from_utf8(&h1).unwrap(),
            "HTTP/1.1 200 OK\r\nVary: Accept-Language, accept-language\r\nX-A: 1\r\nContent-Length: 3\r\n"
        );
        assert_eq!(s.vary, vec![Box::from(&b"accept-language"[..])]);
    }

    #[test]
    fn extra_line_names() {
        assert_eq!(
            line_names(b"X-Cache: MISS\r\nX-RateLimit-Limit: 5\r\n"),
            vec![&b"X-Cache"[..], &b"X-RateLimit-Limit"[..]]
        );
    }
}
