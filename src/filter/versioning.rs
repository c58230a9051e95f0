//! API versioning: which version a request asks for, and which of the
//! routes sharing a path serves it.
//!
//! Key components: [`VersioningFile`] (the `[versioning]` keys),
//! [`Versioning`] (compiled: sources in order, the known versions, the
//! groups of routes that share a path), [`Versioning::resolve`] (reads the
//! requested version from the request: path prefix `/v2/...`, query
//! parameter, header, vendor media type in `Accept`, in the configured
//! order; absent → the default) and [`Versioning::select`] (after the
//! trie lookup: the route of that version, or one without `version`, which
//! serves every version).
//!
//! How it fits: routes that share host, path and methods and differ by
//! `version` form a group; only the group's first route goes into the trie
//! (so they do not conflict there) and [`Versioning::select`] picks the
//! member. A path prefix `/v2` is not part of any route path: it is
//! stripped before matching and from the forwarded path
//! ([`Requested::apply`]). A route's `deprecated`/`sunset` become the
//! `Deprecation: true` and `Sunset` response header lines of
//! [`route_fields`].
//!
//! Performance notes: resolving allocates nothing (the version is an index
//! into the known versions, the stripped path a sub-span of the request).
//! Without versioned routes and without `[versioning]` none of this runs.

use crate::config::Errors;
use crate::config::file::RouteFile;
use crate::http::parse::{HeaderLine, RequestHead};
use crate::proxy::forward::Conn;
use serde::Deserialize;
use std::collections::HashMap;

/// `[versioning]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersioningFile {
    /// Where the version is read, in order: `path`, `header`, `query`,
    /// `accept` (default: all four, in that order).
    pub sources: Option<Vec<String>>,
    /// Header carrying the version (default `Accept-Version`).
    pub header: Option<String>,
    /// Query parameter carrying the version (default `version`).
    pub query: Option<String>,
    /// Vendor of the media type `application/vnd.VENDOR.v2+json` (the
    /// `accept` source; without it that source is off).
    pub vendor: Option<String>,
    /// Version of requests that name none (default `1`).
    pub default: Option<String>,
}

/// Where a requested version is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A first path segment `v2`.
    Path,
    /// A header (`Accept-Version: 2`).
    Header,
    /// A query parameter (`?version=2`).
    Query,
    /// The vendor media type (`Accept: application/vnd.acme.v2+json`).
    Accept,
}

/// A version that no route declares.
pub const UNKNOWN: u16 = u16::MAX;

/// The version a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested {
    /// Index into [`Versioning::versions`], or [`UNKNOWN`].
    pub version: u16,
    /// Bytes of a `/v2` path prefix to strip (0 = none).
    pub strip: u16,
}

impl Requested {
    /// The path to route on: `path` without the version prefix (`/` when
    /// nothing is left).
    #[inline]
    pub fn route_path<'a>(&self, path: &'a [u8]) -> &'a [u8] {
        match self.strip as usize {
            0 => path,
            n if n >= path.len() => b"/",
            n => &path[n..],
        }
    }

    /// Removes the version prefix from the request in `c` (so it is not
    /// forwarded): the path spans start after it; when nothing of the path
    /// is left, `/` (and the query) is forwarded through `c.rewrite`.
    pub fn apply(&self, c: &mut Conn) {
        let n = self.strip as u32;
        if n == 0 {
            return;
        }
        let h = &mut c.head;
        h.path.start += n;
        h.path_query.start += n;
        if h.path.is_empty() {
            let t = &mut c.rewrite.target;
            t.clear();
            t.push(b'/');
            t.extend_from_slice(h.path_query.of(&c.buf));
        }
    }
}

/// `[versioning]` and the routes' versions, compiled.
#[derive(Debug)]
pub struct Versioning {
    sources: Vec<Source>,
    header: Box<[u8]>,
    query: Box<[u8]>,
    /// `application/vnd.VENDOR.v`, lower-case.
    vendor_prefix: Option<Box<[u8]>>,
    /// Known versions (normalised, without a leading `v`).
    pub versions: Vec<Box<str>>,
    default: u16,
    /// Per route: its version index, `None` = every version.
    route_version: Vec<Option<u16>>,
    /// Per route: true when it is a non-first member of a group (kept out
    /// of the trie).
    hidden: Vec<bool>,
    /// First member → all members, in config order.
    groups: HashMap<u32, Box<[u32]>>,
    /// Per group first member: "… exists in versions: …".
    group_msg: HashMap<u32, Box<str>>,
    unknown_msg: Box<str>,
}

/// Strips one leading `v`/`V` before a digit.
fn normalize(v: &[u8]) -> &[u8] {
    match v {
        [b'v' | b'V', d, ..] if d.is_ascii_digit() => &v[1..],
        _ => v,
    }
}

impl Versioning {
    /// True when route `i` is served through its group's first route.
    pub fn is_hidden(&self, i: usize) -> bool {
        self.hidden.get(i).copied().unwrap_or(false)
    }

    fn index(&self, v: &[u8]) -> Option<u16> {
        let v = normalize(v.trim_ascii());
        self.versions
            .iter()
            .position(|k| k.as_bytes() == v)
            .map(|i| i as u16)
    }

    /// Reads the requested version, sources in order; the first source
    /// that names a version decides (an unknown one gives [`UNKNOWN`]).
    pub fn resolve(&self, buf: &[u8], head: &RequestHead, lines: &[HeaderLine]) -> Requested {
        for s in &self.sources {
            let found = match s {
                Source::Path => {
                    let p = head.path.of(buf);
                    let seg_end = p[1.min(p.len())..]
                        .iter()
                        .position(|&b| b == b'/')
                        .map_or(p.len(), |i| i + 1);
                    let seg = &p[1.min(p.len())..seg_end];
                    match seg {
                        [b'v' | b'V', rest @ ..] if !rest.is_empty() => match self.index(seg) {
                            Some(i) => Some((i, seg_end as u16)),
                            // Looks like a version ("v9", "v2.1"): unknown.
                            None if rest.iter().all(|b| b.is_ascii_digit() || *b == b'.')
                                && rest[0].is_ascii_digit() =>
                            {
                                Some((UNKNOWN, seg_end as u16))
                            }
                            None => None,
                        },
                        _ => None,
                    }
                }
                Source::Header => lines
                    .iter()
                    .find(|l| crate::http::name_eq(l.name.of(buf), &self.header))
                    .map(|l| (self.index(l.value.of(buf)).unwrap_or(UNKNOWN), 0)),
                Source::Query => {
                    let pq = head.path_query.of(buf);
                    pq.iter()
                        .position(|&b| b == b'?')
                        .and_then(|i| {
                            pq[i + 1..].split(|&b| b == b'&').find_map(|kv| {
                                let eq = kv.iter().position(|&b| b == b'=')?;
                                (kv[..eq] == *self.query).then(|| &kv[eq + 1..])
                            })
                        })
                        .map(|v| (self.index(v).unwrap_or(UNKNOWN), 0))
                }
                Source::Accept => self.vendor_prefix.as_ref().and_then(|prefix| {
                    lines
                        .iter()
                        .filter(|l| crate::http::name_eq(l.name.of(buf), b"accept"))
                        .flat_map(|l| crate::http::tokens(l.value.of(buf)))
                        .find_map(|range| {
                            let mt = range.split(|&b| b == b';').next()?.trim_ascii();
                            if mt.len() <= prefix.len()
                                || !mt[..prefix.len()].eq_ignore_ascii_case(prefix)
                            {
                                return None;
                            }
                            let rest = &mt[prefix.len()..];
                            let v = rest.split(|&b| b == b'+').next()?;
                            Some((self.index(v).unwrap_or(UNKNOWN), 0))
                        })
                }),
            };
            if let Some((version, strip)) = found {
                return Requested { version, strip };
            }
        }
        Requested {
            version: self.default,
            strip: 0,
        }
    }

    /// The route serving `req` among the group of `route` (the trie's
    /// answer): the member of that version, else one without `version`.
    /// `Err` carries the message of a 400 naming the versions that exist.
    pub fn select(&self, route: u32, req: &Requested) -> Result<u32, &str> {
        if req.version == UNKNOWN {
            return Err(&self.unknown_msg);
        }
        let one = [route];
        let members = self.groups.get(&route).map_or(&one[..], |g| &g[..]);
        let rv = |r: u32| self.route_version.get(r as usize).copied().flatten();
        if let Some(&r) = members.iter().find(|&&r| rv(r) == Some(req.version)) {
            return Ok(r);
        }
        if let Some(&r) = members.iter().find(|&&r| rv(r).is_none()) {
            return Ok(r);
        }
        Err(self
            .group_msg
            .get(&route)
            .map_or(&*self.unknown_msg, |m| &**m))
    }
}

/// The parts of a route that versioning needs, as compiled by the config.
pub struct RouteKey<'a> {
    /// Host pattern.
    pub host: Option<&'a str>,
    /// Path pattern.
    pub path: &'a str,
    /// Methods (raw bits; `None` = any).
    pub methods: Option<u16>,
    /// Its `version`.
    pub version: Option<&'a str>,
}

/// Compiles `[versioning]` and the routes' versions. `None` when no route
/// declares a version and there is no `[versioning]` table.
pub fn compile(
    file: Option<&VersioningFile>,
    routes: &[RouteKey<'_>],
    errs: &mut Errors,
) -> Option<Versioning> {
    if file.is_none() && routes.iter().all(|r| r.version.is_none()) {
        return None;
    }
    let empty = VersioningFile::default();
    let f = file.unwrap_or(&empty);
    let sources = match &f.sources {
        None => vec![Source::Path, Source::Header, Source::Query, Source::Accept],
        Some(list) => {
            let mut out = Vec::new();
            for s in list {
                let src = match s.as_str() {
                    "path" => Source::Path,
                    "header" => Source::Header,
                    "query" => Source::Query,
                    "accept" => Source::Accept,
                    other => {
                        errs.push(
                            "versioning.sources",
                            format!("unknown source {other:?}"),
                            "use \"path\", \"header\", \"query\" and/or \"accept\"",
                        );
                        continue;
                    }
                };
                if out.contains(&src) {
                    errs.push(
                        "versioning.sources",
                        format!("{s:?} is listed twice"),
                        "list each source once",
                    );
                }
                out.push(src);
            }
            if list.is_empty() {
                errs.push(
                    "versioning.sources",
                    "the list is empty, so every request would get the default version",
                    "list sources, e.g. [\"path\", \"header\"]",
                );
            }
            out
        }
    };
    let header = f.header.as_deref().unwrap_or("Accept-Version");
    if header.is_empty()
        || !header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        errs.push(
            "versioning.header",
            format!("{header:?} is not a header name"),
            "use e.g. \"Accept-Version\"",
        );
    }
    let query = f.query.as_deref().unwrap_or("version");
    if query.is_empty() || query.contains(['&', '=', '?', '#', ' ']) {
        errs.push(
            "versioning.query",
            format!("{query:?} is not a query parameter name"),
            "use e.g. \"version\"",
        );
    }
    let vendor_prefix = match &f.vendor {
        Some(v)
            if !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
        {
            Some(
                format!("application/vnd.{}.v", v.to_ascii_lowercase())
                    .into_bytes()
                    .into(),
            )
        }
        Some(v) => {
            errs.push(
                "versioning.vendor",
                format!("{v:?} is not a vendor name"),
                "use letters, digits, '-' or '.', e.g. \"acme\"",
            );
            None
        }
        None => {
            if f.sources
                .as_ref()
                .is_some_and(|s| s.iter().any(|x| x == "accept"))
            {
                errs.push(
                    "versioning.vendor",
                    "the \"accept\" source needs a vendor (application/vnd.VENDOR.v2+json)",
                    "add vendor = \"acme\", or remove \"accept\" from sources",
                );
            }
            None
        }
    };
    let check = |errs: &mut Errors, key: String, v: &str| -> Option<Box<str>> {
        let n = std::str::from_utf8(normalize(v.trim().as_bytes())).unwrap_or("");
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            errs.push(
                key,
                format!("{v:?} is not a version"),
                "use e.g. \"2\" or \"2.1\"",
            );
            None
        } else {
            Some(n.into())
        }
    };
    let default = check(
        errs,
        String::from("versioning.default"),
        f.default.as_deref().unwrap_or("1"),
    )
    .unwrap_or_else(|| "1".into());
    if sources.contains(&Source::Path) {
        // Such a route could never match: the prefix is stripped first.
        for (i, r) in routes.iter().enumerate() {
            let seg = r
                .path
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or("");
            let looks = seg.len() > 1
                && seg.as_bytes()[0].eq_ignore_ascii_case(&b'v')
                && seg.as_bytes()[1].is_ascii_digit()
                && seg[1..].bytes().all(|b| b.is_ascii_digit() || b == b'.');
            if looks {
                errs.push(
                    format!("routes[{i}].path"),
                    format!(
                        "{:?} starts with a version segment, which the \"path\" version source strips before matching, so the route is never reached",
                        r.path
                    ),
                    format!(
                        "write the path without /{seg} and set version = \"{}\", or remove \"path\" from versioning.sources",
                        &seg[1..]
                    ),
                );
            }
        }
    }
    let mut versions: Vec<Box<str>> = vec![default.clone()];
    let mut route_version = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let v = r
            .version
            .and_then(|v| check(errs, format!("routes[{i}].version"), v))
            .map(|v| match versions.iter().position(|k| *k == v) {
                Some(p) => p as u16,
                None => {
                    versions.push(v);
                    (versions.len() - 1) as u16
                }
            });
        route_version.push(v);
    }
    let mut sorted: Vec<&str> = versions.iter().map(|v| &**v).collect();
    sorted.sort_by(|a, b| version_order(a, b));
    let unknown_msg: Box<str> = format!(
        "unknown API version; this API has versions {}",
        sorted.join(", ")
    )
    .into();

    // Groups: routes with the same host, path and methods.
    let mut hidden = vec![false; routes.len()];
    let mut first_of: HashMap<(Option<&str>, &str, Option<u16>), u32> = HashMap::new();
    let mut members: HashMap<u32, Vec<u32>> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        let k = (r.host, r.path, r.methods);
        match first_of.get(&k) {
            Some(&f) => {
                let g = members.entry(f).or_insert_with(|| vec![f]);
                let same = g
                    .iter()
                    .find(|&&m| route_version[m as usize] == route_version[i]);
                if let Some(&m) = same {
                    let what = match route_version[i] {
                        Some(v) => format!("version {}", versions[v as usize]),
                        None => String::from("every version (no version key)"),
                    };
                    errs.push(
                        format!("routes[{i}].version"),
                        format!(
                            "routes[{m}] and routes[{i}] both serve {what} of path {:?}",
                            r.path
                        ),
                        "give each route sharing a path its own version, or remove one",
                    );
                }
                g.push(i as u32);
                hidden[i] = true;
            }
            None => {
                first_of.insert(k, i as u32);
            }
        }
    }
    let mut groups = HashMap::new();
    let mut group_msg = HashMap::new();
    for (f, g) in members {
        let mut vs: Vec<&str> = g
            .iter()
            .filter_map(|&m| route_version[m as usize].map(|v| &*versions[v as usize]))
            .collect();
        vs.sort_by(|a, b| version_order(a, b));
        group_msg.insert(
            f,
            format!(
                "this path does not exist in the requested API version; it exists in versions {}",
                vs.join(", ")
            )
            .into(),
        );
        groups.insert(f, g.into_boxed_slice());
    }
    for (i, r) in routes.iter().enumerate() {
        if !hidden[i]
            && !groups.contains_key(&(i as u32))
            && let Some(v) = route_version[i]
        {
            let _ = r;
            group_msg.insert(
                i as u32,
                format!(
                    "this path does not exist in the requested API version; it exists in version {}",
                    versions[v as usize]
                )
                .into(),
            );
        }
    }
    Some(Versioning {
        sources,
        header: header.to_ascii_lowercase().into_bytes().into(),
        query: query.as_bytes().into(),
        vendor_prefix,
        default: 0,
        versions,
        route_version,
        hidden,
        groups,
        group_msg,
        unknown_msg,
    })
}

/// Numeric-aware order: "2" < "10", "1.2" < "1.10".
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> Vec<(u64, String)> {
        s.split('.')
            .map(|p| (p.parse::<u64>().unwrap_or(u64::MAX), p.to_string()))
            .collect()
    };
    key(a).cmp(&key(b))
}

/// A route's `version` (normalised) and the response header lines of its
/// `deprecated`/`sunset` keys.
pub fn route_fields(
    i: usize,
    r: &RouteFile,
    errs: &mut Errors,
) -> (Option<Box<str>>, Option<Box<[u8]>>) {
    let version = r.version.as_deref().map(|v| {
        std::str::from_utf8(normalize(v.trim().as_bytes()))
            .unwrap_or(v)
            .into()
    });
    let mut lines = Vec::new();
    if r.deprecated == Some(true) {
        lines.extend_from_slice(b"Deprecation: true\r\n");
    }
    if let Some(s) = &r.sunset {
        match crate::http::date::parse(s.as_bytes()) {
            Some(t) => {
                // Sent as an IMF-fixdate, whichever form was written.
                lines.extend_from_slice(b"Sunset: ");
                lines.extend_from_slice(crate::http::date::format(t).as_bytes());
                lines.extend_from_slice(b"\r\n");
            }
            None => match with_its_weekday(s) {
                Some(fixed) => errs.push(
                    format!("routes[{i}].sunset"),
                    format!("{s:?} names the wrong weekday"),
                    format!("write it as {fixed:?}"),
                ),
                None => errs.push(
                    format!("routes[{i}].sunset"),
                    format!("{s:?} is not an HTTP-date"),
                    "write it as \"Sun, 31 Jan 2027 23:59:59 GMT\"",
                ),
            },
        }
    }
    (version, (!lines.is_empty()).then(|| lines.into()))
}

/// `s`, an IMF-fixdate whose only fault is its weekday, with the weekday
/// its day falls on.
fn with_its_weekday(s: &str) -> Option<String> {
    let rest = s.trim().get(3..)?;
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        .iter()
        .map(|d| format!("{d}{rest}"))
        .find(|c| crate::http::date::parse(c.as_bytes()).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sunset` takes any HTTP-date, is sent as an IMF-fixdate, and a
    /// date naming the wrong weekday gets the right one in its fix.
    #[test]
    fn sunset_dates() {
        let route = |sunset: &str| crate::config::file::RouteFile {
            version: Some(String::from("1")),
            sunset: Some(sunset.to_string()),
            ..Default::default()
        };
        let sent = |sunset: &str| {
            let mut errs = Errors(Vec::new());
            let (_, lines) = route_fields(0, &route(sunset), &mut errs);
            (
                lines.map(|l| String::from_utf8_lossy(&l).into_owned()),
                errs.0,
            )
        };
        let (lines, errs) = sent("Sun, 31 Jan 2027 23:59:59 GMT");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            lines.as_deref(),
            Some("Sunset: Sun, 31 Jan 2027 23:59:59 GMT\r\n")
        );
        let (lines, _) = sent("Sunday, 31-Jan-27 23:59:59 GMT");
        assert_eq!(
            lines.as_deref(),
            Some("Sunset: Sun, 31 Jan 2027 23:59:59 GMT\r\n")
        );
        let (lines, _) = sent("Sun Jan 31 23:59:59 2027");
        assert_eq!(
            lines.as_deref(),
            Some("Sunset: Sun, 31 Jan 2027 23:59:59 GMT\r\n")
        );
        for bad in [
            "2027-01-31",
            "Sat, 31 Jan 2027 24:59:59 GMT",
            "Sat, 31 Foo 2027 23:59:59 GMT",
        ] {
            let (_, errs) = sent(bad);
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!(errs[0].key, "routes[0].sunset");
        }
        let (_, errs) = sent("Sat, 31 Jan 2027 23:59:59 GMT");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].fix.contains("Sun, 31 Jan 2027 23:59:59 GMT"),
            "{errs:?}"
        );
    }

    #[test]
    fn version_order_is_numeric() {
        let mut v = vec!["10", "2", "1.10", "1.2"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, ["1.2", "1.10", "2", "10"]);
    }

    #[test]
    fn requested_route_path() {
        let r = Requested {
            version: 0,
            strip: 3,
        };
        assert_eq!(r.route_path(b"/v2/users/7"), b"/users/7");
        assert_eq!(r.route_path(b"/v2"), b"/");
        let r = Requested {
            version: 0,
            strip: 0,
        };
        assert_eq!(r.route_path(b"/x"), b"/x");
    }
}
