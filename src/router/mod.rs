//! The route table: maps (Host, method, path) to a route index.
//!
//! # Key components
//!
//! * [`RouteTable`]: built once per configuration by [`RouteTable::build`]
//!   from [`RouteSpec`]s, then shared read-only (e.g. behind an `Arc`) by all
//!   worker threads. It is `Send + Sync` and has no interior mutability.
//! * Host tables: one path trie per distinct host pattern. Exact hosts live in
//!   a hash map, `*.suffix` wildcards in a list sorted longest suffix first,
//!   and host-less routes in one trailing table. A lookup tries them in that
//!   order, falling through when the path is not found.
//! * The path trie (`trie.rs`): a flat `Vec` arena of nodes linked by `u32`
//!   indices. Each node has static children (linear scan when few, an
//!   FxHash-style map when more than eight), one `{param}` child and one
//!   `{*rest}` catch-all leaf, tried in that order with backtracking.
//! * Leaves hold a route per method slot (the nine [`Method`]s plus one for
//!   unknown tokens), so the method check is an array index, and an interned,
//!   precomputed `Allow` value for 405 responses.
//! * [`Params`]: a fixed array of up to [`MAX_PARAMS`] sub-slices of the
//!   request path, living on the caller's stack.
//!
//! # How it fits
//!
//! The config layer turns each `[[routes]]` entry into a [`RouteSpec`] whose
//! `route` is the entry's index and reports [`RouteError`]s (all of them, via
//! `Display`). The request path calls [`RouteTable::lookup`] with the raw
//! Host header, method token and path (query string stripped), then uses the
//! route index, [`RouteTable::param_names`] and the captured [`Params`];
//! [`Lookup::MethodNotAllowed`] carries the ready-made `Allow` header value.
//!
//! # Performance
//!
//! * `lookup` never allocates: the host is lower-cased into a 256-byte stack
//!   buffer, params are slices into the request path, `Allow` strings are
//!   precomputed, and the trie is only read.
//! * Cost is independent of the number of routes on the common path: one hash
//!   for the exact host, then per path segment one hash or a scan of at most
//!   eight short keys, then an array index for the method. Backtracking
//!   explores at most the static/param/catch-all alternatives present at each
//!   level of the request's own path, bounded by the deepest pattern.
//! * Wildcard hosts are checked one by one (a suffix compare each); that list
//!   is expected to be short.
//! * Matching is on raw bytes: no percent-decoding or path normalisation is
//!   done here, and `//` yields an empty segment.

mod hash;
mod pattern;
mod trie;

#[cfg(test)]
mod tests;

use std::fmt;

use hash::FxHashMap;
use trie::{AllowInterner, OTHER_SLOT, Outcome, PathTrie, TrieBuilder};

/// Most parameters (including a catch-all) a pattern may have; also the
/// capacity of [`Params`].
pub const MAX_PARAMS: usize = 16;

/// Longest Host (after removing the port) that can match a host pattern;
/// longer Host values only match routes without a host. DNS names are at most
/// 253 bytes.
const MAX_HOST: usize = 256;

/// HTTP method as a bit in a [`MethodSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `CONNECT`
    Connect,
    /// `OPTIONS`
    Options,
    /// `TRACE`
    Trace,
    /// `PATCH`
    Patch,
}

impl Method {
    /// Every method, in bit order (the order used in `Allow` values).
    pub const VARIANTS: [Method; 9] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Connect,
        Method::Options,
        Method::Trace,
        Method::Patch,
    ];

    /// Parses a method token exactly and case-sensitively (`b"GET"`, not
    /// `b"get"`); `None` for any other token.
    #[inline]
    pub fn from_bytes(b: &[u8]) -> Option<Method> {
        Some(match b {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => return None,
        })
    }

    /// The method token, e.g. `"GET"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
        }
    }

    #[inline]
    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Method`]s, one bit each.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct MethodSet(u16);

impl MethodSet {
    /// All nine methods.
    pub const ALL: MethodSet = MethodSet((1 << Method::VARIANTS.len()) - 1);

    /// The empty set.
    pub const fn empty() -> Self {
        MethodSet(0)
    }

    /// Adds `m`.
    pub fn insert(&mut self, m: Method) {
        self.0 |= m.bit();
    }

    /// `self` with `m` added (for building sets in expressions).
    #[must_use]
    pub const fn with(self, m: Method) -> Self {
        MethodSet(self.0 | m.bit())
    }

    /// Whether `m` is in the set.
    #[inline]
    pub fn contains(self, m: Method) -> bool {
        self.0 & m.bit() != 0
    }

    /// Whether every method is in the set.
    pub fn is_all(self) -> bool {
        self.0 == Self::ALL.0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bits (bit `i` is `Method::VARIANTS[i]`).
    pub fn bits(self) -> u16 {
        self.0
    }

    /// The methods in the set, in bit order.
    pub fn iter(self) -> impl Iterator<Item = Method> {
        Method::VARIANTS
            .into_iter()
            .filter(move |&m| self.contains(m))
    }
}

impl From<Method> for MethodSet {
    fn from(m: Method) -> Self {
        MethodSet(m.bit())
    }
}

impl FromIterator<Method> for MethodSet {
    fn from_iter<I: IntoIterator<Item = Method>>(iter: I) -> Self {
        iter.into_iter().fold(MethodSet::empty(), MethodSet::with)
    }
}

/// Formats as an `Allow` header value: `"GET, HEAD, POST"`.
impl fmt::Display for MethodSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(m.as_str())?;
        }
        Ok(())
    }
}

/// One route to put in a [`RouteTable`].
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec<'a> {
    /// `None` matches any host; `"api.example.com"` matches that host exactly
    /// (ASCII case-insensitively, port ignored); `"*.example.com"` matches
    /// `a.example.com` and `a.b.example.com` but not `example.com`.
    pub host: Option<&'a str>,
    /// Path pattern starting with `/`. Segments are static text, `{param}`
    /// (one non-empty segment) or, last only, `{*rest}` (the remaining path,
    /// possibly empty, slashes included).
    pub path: &'a str,
    /// Allowed methods; `None` allows any method, including tokens that are
    /// not a [`Method`].
    pub methods: Option<MethodSet>,
    /// The caller's route index, returned by [`RouteTable::lookup`].
    pub route: u32,
}

/// Why a set of [`RouteSpec`]s cannot be built into a [`RouteTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Two specs have the same host, the same pattern (parameter names
    /// ignored) and overlapping methods, so one could never be chosen.
    Conflict {
        /// The host pattern as written, `None` for any host.
        host: Option<String>,
        /// Pattern of the later spec.
        path: String,
        /// Route index of the later spec.
        route: u32,
        /// Pattern of the earlier spec it collides with.
        other_path: String,
        /// Route index of the earlier spec.
        other_route: u32,
        /// The standard methods both claim (all of them when both are
        /// method-less).
        methods: MethodSet,
    },
    /// The path pattern is malformed (or the method set is empty).
    BadPattern {
        /// The pattern as written.
        path: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The host pattern is malformed.
    BadHost {
        /// The host as written.
        host: String,
        /// The pattern of the spec it belongs to.
        path: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// One route index is used by several specs whose patterns name their
    /// parameters differently, so [`RouteTable::param_names`] would be
    /// ambiguous.
    ParamNamesMismatch {
        /// The route index.
        route: u32,
        /// Pattern of the later spec.
        path: String,
        /// Pattern of the earlier spec with the same route index.
        other_path: String,
    },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::Conflict {
                host,
                path,
                route,
                other_path,
                other_route,
                methods,
            } => {
                let on_host = match host {
                    Some(h) => format!("host \"{h}\""),
                    None => String::from("any host"),
                };
                let which = if methods.is_all() {
                    String::from("all methods")
                } else {
                    format!("methods {methods}")
                };
                write!(
                    f,
                    "route {route} \"{path}\" conflicts with route {other_route} \"{other_path}\" \
                     on {on_host} for {which}: both patterns match the same requests; \
                     give them disjoint methods, different paths or different hosts"
                )
            }
            RouteError::BadPattern { path, reason } => {
                write!(f, "invalid route path \"{path}\": {reason}")
            }
            RouteError::BadHost { host, path, reason } => {
                write!(
                    f,
                    "invalid host \"{host}\" for route path \"{path}\": {reason}"
                )
            }
            RouteError::ParamNamesMismatch {
                route,
                path,
                other_path,
            } => write!(
                f,
                "route {route} is used for \"{path}\" and \"{other_path}\", whose parameter names \
                 differ; use the same parameter names or distinct route indices"
            ),
        }
    }
}

impl std::error::Error for RouteError {}

/// Captured parameter values: up to [`MAX_PARAMS`] sub-slices of the request
/// path, in pattern order, stored inline (no heap).
///
/// A `{*rest}` value excludes the `/` before it: `/static/{*rest}` captures
/// `a/b` from `/static/a/b` and the empty slice from `/static` and `/static/`.
#[derive(Clone, Copy)]
pub struct Params<'p> {
    values: [&'p [u8]; MAX_PARAMS],
    len: usize,
}

impl<'p> Params<'p> {
    /// An empty set of params.
    pub fn new() -> Self {
        Params {
            values: [&[]; MAX_PARAMS],
            len: 0,
        }
    }

    /// Removes all values.
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Number of values.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no values.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`-th value in pattern order.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&'p [u8]> {
        self.as_slice().get(i).copied()
    }

    /// The values in pattern order.
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = &'p [u8]> {
        self.as_slice().iter().copied()
    }

    /// The values as a slice.
    #[inline]
    pub fn as_slice(&self) -> &[&'p [u8]] {
        &self.values[..self.len]
    }

    /// Appends a value; `false` (and nothing stored) when full.
    #[inline]
    fn push(&mut self, v: &'p [u8]) -> bool {
        match self.values.get_mut(self.len) {
            Some(slot) => {
                *slot = v;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    #[inline]
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Default for Params<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Params<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

/// Result of [`RouteTable::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'t> {
    /// A route matched the host, path and method.
    Found {
        /// The [`RouteSpec::route`] of the matching spec.
        route: u32,
    },
    /// A pattern matched the path but none of its routes allows the method.
    MethodNotAllowed {
        /// Value for the `Allow` header, e.g. `"GET, HEAD, POST"`: the union
        /// of the methods of all routes with that pattern on that host table.
        allow: &'t str,
    },
    /// Nothing matched.
    NotFound,
}

/// Parameter names of one route, in pattern order.
type ParamNames = Box<[Box<str>]>;

/// Host pattern of a spec, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostKey {
    Any,
    Exact(Box<[u8]>),
    /// The suffix including its leading dot: `*.example.com` -> `.example.com`.
    Wildcard(Box<[u8]>),
}

/// The immutable route table. See the [module docs](self).
pub struct RouteTable {
    exact: FxHashMap<Box<[u8]>, PathTrie>,
    /// Sorted by suffix length, longest (most specific) first.
    wildcard: Box<[(Box<[u8]>, PathTrie)]>,
    any: Option<PathTrie>,
    allow: Box<[Box<str>]>,
    param_names: FxHashMap<u32, ParamNames>,
    len: usize,
}

impl RouteTable {
    /// Builds the table, validating every spec and collecting all errors.
    pub fn build(specs: &[RouteSpec<'_>]) -> Result<RouteTable, Vec<RouteError>> {
        let mut errors = Vec::new();
        // Vec + index map keeps table order deterministic.
        let mut hosts: Vec<(HostKey, TrieBuilder)> = Vec::new();
        let mut host_index: FxHashMap<HostKey, usize> = FxHashMap::default();
        // Route index -> (first spec using it, its parameter names).
        let mut names: FxHashMap<u32, (usize, ParamNames)> = FxHashMap::default();

        for (i, spec) in specs.iter().enumerate() {
            let host = match spec.host {
                None => Some(HostKey::Any),
                Some(h) => match parse_host(h) {
                    Ok(key) => Some(key),
                    Err(reason) => {
                        errors.push(RouteError::BadHost {
                            host: h.to_owned(),
                            path: spec.path.to_owned(),
                            reason,
                        });
                        None
                    }
                },
            };
            let pattern = match pattern::parse(spec.path) {
                Ok(p) => Some(p),
                Err(reason) => {
                    errors.push(RouteError::BadPattern {
                        path: spec.path.to_owned(),
                        reason,
                    });
                    None
                }
            };
            if spec.methods.is_some_and(MethodSet::is_empty) {
                errors.push(RouteError::BadPattern {
                    path: spec.path.to_owned(),
                    reason: String::from(
                        "its method set is empty, so it would match nothing; \
                         list methods, or use None to allow any method",
                    ),
                });
                continue;
            }
            let (Some(host), Some(pattern)) = (host, pattern) else {
                continue;
            };

            let these: ParamNames = pattern.param_names().map(Box::from).collect();
            match names.get(&spec.route) {
                Some((other, existing)) if *existing != these => {
                    errors.push(RouteError::ParamNamesMismatch {
                        route: spec.route,
                        path: spec.path.to_owned(),
                        other_path: specs[*other].path.to_owned(),
                    });
                    continue;
                }
                Some(_) => {}
                None => {
                    names.insert(spec.route, (i, these));
                }
            }

            let slot = *host_index.entry(host.clone()).or_insert_with(|| {
                hosts.push((host, TrieBuilder::new()));
                hosts.len() - 1
            });
            if let Err(clashes) = hosts[slot].1.insert(&pattern, spec.methods, spec.route, i) {
                for c in clashes {
                    let other = &specs[c.other_spec];
                    errors.push(RouteError::Conflict {
                        host: spec.host.map(str::to_owned),
                        path: spec.path.to_owned(),
                        route: spec.route,
                        other_path: other.path.to_owned(),
                        other_route: other.route,
                        methods: c.overlap,
                    });
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut allow = AllowInterner::default();
        let mut exact = FxHashMap::default();
        let mut wildcard = Vec::new();
        let mut any = None;
        for (key, builder) in hosts {
            let trie = builder.finish(&mut allow);
            match key {
                HostKey::Any => any = Some(trie),
                HostKey::Exact(h) => {
                    exact.insert(h, trie);
                }
                HostKey::Wildcard(suffix) => wildcard.push((suffix, trie)),
            }
        }
        wildcard.sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));

        Ok(RouteTable {
            exact,
            wildcard: wildcard.into_boxed_slice(),
            any,
            allow: allow.into_strings(),
            param_names: names.into_iter().map(|(r, (_, n))| (r, n)).collect(),
            len: specs.len(),
        })
    }

    /// Finds the route for a request. Does not allocate.
    ///
    /// `host` is the raw Host header value (may carry `:port`, any case) or
    /// `b""` when absent; `method` the raw method token; `path` the path part
    /// of the request target (no query string), starting with `/`.
    ///
    /// `params` is cleared first; on [`Lookup::Found`] it holds the captured
    /// values of the matched pattern, otherwise it is left empty.
    pub fn lookup<'p>(
        &self,
        host: &[u8],
        method: &[u8],
        path: &'p [u8],
        params: &mut Params<'p>,
    ) -> Lookup<'_> {
        params.clear();
        let slot = Method::from_bytes(method).map_or(OTHER_SLOT, |m| m as usize);
        let mut not_allowed: Option<u16> = None;

        if !self.exact.is_empty() || !self.wildcard.is_empty() {
            let mut buf = [0u8; MAX_HOST];
            if let Some(h) = normalize_request_host(host, &mut buf) {
                let exact = self.exact.get(h).into_iter();
                let wild = self
                    .wildcard
                    .iter()
                    .filter(|(suffix, _)| h.len() > suffix.len() && h.ends_with(suffix))
                    .map(|(_, trie)| trie);
                for trie in exact.chain(wild) {
                    match trie.lookup(slot, path, params) {
                        Outcome::Found(route) => return Lookup::Found { route },
                        Outcome::NotAllowed(a) => {
                            not_allowed.get_or_insert(a);
                        }
                        Outcome::NotFound => {}
                    }
                    params.clear();
                }
            }
        }
        if let Some(trie) = &self.any {
            match trie.lookup(slot, path, params) {
                Outcome::Found(route) => return Lookup::Found { route },
                Outcome::NotAllowed(a) => {
                    not_allowed.get_or_insert(a);
                }
                Outcome::NotFound => {}
            }
            params.clear();
        }
        match not_allowed {
            Some(a) => Lookup::MethodNotAllowed {
                allow: &self.allow[usize::from(a)],
            },
            None => Lookup::NotFound,
        }
    }

    /// Parameter names of `route`'s pattern in order of appearance (`"rest"`
    /// for `{*rest}`), matching the order of [`Params`]; empty for an unknown
    /// route.
    pub fn param_names(&self, route: u32) -> &[Box<str>] {
        self.param_names.get(&route).map_or(&[], |n| n)
    }

    /// Number of specs the table was built from.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table was built from no specs (every lookup is NotFound).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wildcards: Vec<String> = self
            .wildcard
            .iter()
            .map(|(s, _)| format!("*{}", String::from_utf8_lossy(s)))
            .collect();
        f.debug_struct("RouteTable")
            .field("routes", &self.len)
            .field("exact_hosts", &self.exact.len())
            .field("wildcard_hosts", &wildcards)
            .field("any_host", &self.any.is_some())
            .finish_non_exhaustive()
    }
}

/// Strips a `:port` (keeping an IPv6 literal's brackets) and one trailing dot.
fn strip_port(raw: &[u8]) -> &[u8] {
    let h = if raw.first() == Some(&b'[') {
        match raw.iter().position(|&b| b == b']') {
            Some(i) => &raw[..=i],
            None => raw,
        }
    } else {
        match raw.iter().position(|&b| b == b':') {
            Some(i) => &raw[..i],
            None => raw,
        }
    };
    h.strip_suffix(b".").unwrap_or(h)
}

/// Lower-cases the request host (port removed) into `buf`; `None` when it is
/// too long to match any host pattern.
#[inline]
fn normalize_request_host<'b>(raw: &[u8], buf: &'b mut [u8; MAX_HOST]) -> Option<&'b [u8]> {
    let h = strip_port(raw);
    let out = buf.get_mut(..h.len())?;
    for (o, &b) in out.iter_mut().zip(h) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

/// Validates and normalises a spec's host pattern.
fn parse_host(raw: &str) -> Result<HostKey, String> {
    let lower = raw.to_ascii_lowercase();
    let h = lower.strip_suffix('.').unwrap_or(&lower);
    if h.is_empty() {
        return Err(String::from(
            "the host is empty; leave the host out to match any host",
        ));
    }
    if let Some(c) = h
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err(format!(
            "it contains {c:?}; write only the host name, e.g. \"api.example.com\""
        ));
    }
    let (name, wildcard) = match h.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (h, false),
    };
    if name.contains('*') || name.is_empty() {
        return Err(String::from(
            "'*' is only allowed as a whole leading label followed by a domain, \
             as in \"*.example.com\"; leave the host out to match any host",
        ));
    }
    if name.starts_with('.') || name.contains("..") {
        return Err(String::from("it has an empty label; remove the extra '.'"));
    }
    if let Some(inner) = name.strip_prefix('[') {
        if wildcard || !inner.ends_with(']') || inner[..inner.len() - 1].contains([']', '[']) {
            return Err(String::from(
                "an IPv6 literal must be a whole bracketed address without a port, e.g. \"[::1]\"",
            ));
        }
    } else if name.contains(':') {
        return Err(String::from(
            "it includes a port; remove it (the port in the Host header is ignored when matching)",
        ));
    } else if name.contains(['[', ']']) {
        return Err(String::from(
            "brackets are only allowed around an IPv6 literal, e.g. \"[::1]\"",
        ));
    }
    Ok(if wildcard {
        let mut suffix = Vec::with_capacity(name.len() + 1);
        suffix.push(b'.');
        suffix.extend_from_slice(name.as_bytes());
        HostKey::Wildcard(suffix.into_boxed_slice())
    } else {
        HostKey::Exact(Box::from(name.as_bytes()))
    })
}
