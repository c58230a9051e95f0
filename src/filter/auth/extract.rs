//! Finding credentials in a request: the token (`Authorization: Bearer`, a
//! configured header, query parameter or cookie) and the API key (a header,
//! or a query parameter). One pass over the header lines; a second,
//! *different* value anywhere is an error, never a silent choice.

use super::Auth;
use super::hide::CredentialSources;
use crate::filter::RequestCtx;
use crate::http::name_eq;
use std::borrow::Cow;

/// The request carries two different tokens.
pub(crate) const TWO_TOKENS: &str = "the request carries more than one different token";
/// The request carries two different API keys.
pub(crate) const TWO_KEYS: &str = "the request carries more than one different API key";

/// Credentials found in a request, and where each was found.
#[derive(Default)]
pub(crate) struct Found<'a> {
    pub token: Option<Cow<'a, [u8]>>,
    pub api_key: Option<Cow<'a, [u8]>>,
    pub token_from: CredentialSources,
    pub key_from: CredentialSources,
}

fn put<'a>(
    slot: &mut Option<Cow<'a, [u8]>>,
    v: Cow<'a, [u8]>,
    err: &'static str,
) -> Result<(), &'static str> {
    match slot {
        Some(old) if **old != *v => Err(err),
        Some(_) => Ok(()),
        None => {
            *slot = Some(v);
            Ok(())
        }
    }
}

/// `v` without leading and trailing ASCII whitespace.
pub(crate) fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &v[s..e]
}

/// The credentials of `scheme` in an `Authorization`-style value.
pub(crate) fn strip_scheme<'v>(value: &'v [u8], scheme: &[u8]) -> Option<&'v [u8]> {
    let v = trim(value);
    if v.len() > scheme.len()
        && v[..scheme.len()].eq_ignore_ascii_case(scheme)
        && (v[scheme.len()] == b' ' || v[scheme.len()] == b'\t')
    {
        Some(trim(&v[scheme.len()..]))
    } else if v.eq_ignore_ascii_case(scheme) {
        Some(&v[v.len()..])
    } else {
        None
    }
}

/// Decodes `%XX` escapes (and `+` as space when `plus`); borrowed when
/// there is nothing to decode.
pub(crate) fn pct_decode(v: &[u8], plus: bool) -> Cow<'_, [u8]> {
    if !v.iter().any(|&b| b == b'%' || (plus && b == b'+')) {
        return Cow::Borrowed(v);
    }
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'%' if i + 2 < v.len() => match (hex(v[i + 1]), hex(v[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Finds the token (when `want_token`) and the API key (when
/// `want_key`); Err names a conflict.
pub(crate) fn credentials<'a>(
    auth: &Auth,
    ctx: &RequestCtx<'a>,
    want_token: bool,
    want_key: bool,
) -> Result<Found<'a>, &'static str> {
    let buf: &'a [u8] = ctx.buf;
    let mut f = Found::default();
    let src = auth.jwt.as_ref().map(|j| &j.sources).filter(|_| want_token);
    for l in ctx.lines {
        let name = l.name.of(buf);
        let value: &'a [u8] = l.value.of(buf);
        if let Some(s) = src {
            if name_eq(name, b"authorization") {
                if let Some(t) = strip_scheme(value, b"bearer") {
                    put(&mut f.token, Cow::Borrowed(t), TWO_TOKENS)?;
                    f.token_from.insert(CredentialSources::BEARER);
                }
                continue;
            }
            if let Some(h) = &s.header
                && name_eq(name, h)
            {
                let t = strip_scheme(value, b"bearer").unwrap_or_else(|| trim(value));
                put(&mut f.token, Cow::Borrowed(t), TWO_TOKENS)?;
                f.token_from.insert(CredentialSources::TOKEN_HEADER);
                continue;
            }
            if let Some(c) = &s.cookie
                && name_eq(name, b"cookie")
            {
                for pair in value.split(|&b| b == b';') {
                    let pair = trim(pair);
                    if let Some(eq) = pair.iter().position(|&b| b == b'=')
                        && trim(&pair[..eq]) == &c[..]
                    {
                        let mut v = trim(&pair[eq + 1..]);
                        if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
                            v = &v[1..v.len() - 1];
                        }
                        put(&mut f.token, Cow::Borrowed(v), TWO_TOKENS)?;
                        f.token_from.insert(CredentialSources::TOKEN_COOKIE);
                    }
                }
                continue;
            }
        }
        if want_key && name_eq(name, &auth.api_key.header) {
            put(&mut f.api_key, Cow::Borrowed(trim(value)), TWO_KEYS)?;
            f.key_from.insert(CredentialSources::KEY_HEADER);
        }
    }
    if let Some(q) = src.and_then(|s| s.query.as_deref()) {
        for v in query_values(ctx, q) {
            put(&mut f.token, pct_decode(v, false), TWO_TOKENS)?;
            f.token_from.insert(CredentialSources::TOKEN_QUERY);
        }
    }
    if want_key && let Some(q) = auth.api_key.query.as_deref() {
        for v in query_values(ctx, q) {
            put(&mut f.api_key, pct_decode(v, false), TWO_KEYS)?;
            f.key_from.insert(CredentialSources::KEY_QUERY);
        }
    }
    Ok(f)
}

/// Every value of query parameter `name` (raw).
fn query_values<'a, 'n>(
    ctx: &RequestCtx<'a>,
    name: &'n [u8],
) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
    let buf: &'a [u8] = ctx.buf;
    let pq = ctx.head.path_query.of(buf);
    let q = match pq.iter().position(|&b| b == b'?') {
        Some(i) => &pq[i + 1..],
        None => &pq[pq.len()..],
    };
    q.split(|&b| b == b'&').filter_map(move |kv| {
        let (k, v) = match kv.iter().position(|&b| b == b'=') {
            Some(i) => (&kv[..i], &kv[i + 1..]),
            None => (kv, &b""[..]),
        };
        (k == name && !kv.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(strip_scheme(b"Bearer abc", b"bearer"), Some(&b"abc"[..]));
        assert_eq!(strip_scheme(b"bearer   abc ", b"bearer"), Some(&b"abc"[..]));
        assert_eq!(strip_scheme(b"Bearer", b"bearer"), Some(&b""[..]));
        assert_eq!(strip_scheme(b"Basic abc", b"bearer"), None);
        assert_eq!(strip_scheme(b"Bearerabc", b"bearer"), None);
    }

    #[test]
    fn percent() {
        assert_eq!(&*pct_decode(b"a%2Fb+c", true), b"a/b c");
        assert_eq!(&*pct_decode(b"a%2Fb+c", false), b"a/b+c");
        assert_eq!(&*pct_decode(b"100%", false), b"100%");
        assert_eq!(&*pct_decode(b"%zz%4", false), b"%zz%4");
    }
}
