//! API composition: one client request, several upstream calls in
//! parallel on the same core, one merged JSON answer.
//!
//! Key components: [`ComposeFile`]/[`PartFile`] (the `[routes.compose]`
//! keys), [`Compose`] (compiled: parts with their path templates, timeouts
//! and fallbacks), [`serve`] (runs the parts and answers the client) and
//! [`merge`] (the merge step, also what `benches/compose.rs` measures).
//!
//! How it fits: `config::validate` compiles a route's `compose` table with
//! [`compile`]; the connection loop (`http::conn`) calls [`serve`] instead
//! of `proxy::forward` for such a route, after the route's filters ran (so
//! the auth context headers they added to `c.up_extra` go to every part).
//! Each part is a future on this worker's runtime: they are polled together
//! by `futures_util::future::join_all` (no threads, no `spawn`), each under its own timeout
//! inside the route's overall deadline.
//!
//! Failure rules: a `required` part that fails (connect error, non-2xx,
//! invalid JSON, body over `max_part_bytes`) answers 502; one that times
//! out answers 504; one whose upstream's circuit breaker is open answers
//! 503 with `Retry-After`; each time the JSON error names the part. An
//! optional part that fails (an open breaker included) contributes its
//! `fallback` (or `null`) and the answer carries `X-Gateway-Partial: <keys>`.
//!
//! Caching: with `cache = {...}` on the route, the connection loop goes
//! through `filter::cache::serve`, which answers hits without calling any
//! part and calls [`serve`] on a miss with the client side recorded; it
//! stores the answer only when [`Answered::cacheable`] (a complete 200, no
//! part saying `no-store`, `private` or `no-cache`), fresh for the route's
//! `ttl_s`.
//!
//! Upstream calls: each part is one exchange with its upstream
//! ([`crate::upstream::exchange`]), the client ringgate uses for every
//! request it makes itself, under the same rules as a forwarded request:
//! the upstream's circuit breaker (an open one fails the part at once,
//! without a connection), its balancer (with a `consistent_hash`
//! upstream's `hash_key` taken from the client request), pooled
//! connections (counted in the upstream connection metrics), a stale
//! pooled connection replaced once, retries on another target within
//! `retries` and the retry budget (connect failures; 502/503/504 and
//! connections closed before answering, parts being GETs), passive outlier
//! detection and `p2c_ewma` latency. The breaker judges the final answer
//! by its `failure_statuses`; a connect error, a broken connection, an
//! invalid response or the deadline passing is a failure. A part dropped
//! before its verdict (the request abandoned) gives a half-open probe slot
//! back, so probes never leak.
//!
//! Performance notes: parts' bodies are validated and split one level deep
//! by [`crate::proxy::json`] and spliced as raw slices into the output
//! (serde_json with `RawValue`: measured against building `Value` trees in
//! `benches/compose.rs`); with `merge = "keys"` and no `fields`, a part's
//! body is copied once. Allocation per request: one head and one body
//! buffer per part, the output buffer and the entry lists of the parts
//! that are split.

use crate::config::{Balance, Config, Errors};
use crate::error::{Error, ErrorKind};
use crate::proxy::forward::Conn;
use crate::proxy::json::{self, Doc};
use crate::runtime::worker::{Generation, Worker};
use crate::upstream::exchange;
use monoio::io::AsyncWriteRent;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

/// `[routes.compose]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeFile {
    /// Overall deadline for all parts (default 1000).
    pub timeout_ms: Option<u64>,
    /// `keys` (each part under its key; default) or `root` (parts' members
    /// merged into one object).
    pub merge: Option<String>,
    /// Largest part body accepted (default 1 MiB).
    pub max_part_bytes: Option<usize>,
    /// `[[routes.compose.parts]]`
    #[serde(default)]
    pub parts: Vec<PartFile>,
}

/// `[[routes.compose.parts]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartFile {
    /// Key of the part in the merged document.
    pub key: Option<String>,
    /// `[upstreams.NAME]` that serves it.
    pub upstream: Option<String>,
    /// Path requested, with `{param}`s of the route filled in.
    pub path: Option<String>,
    /// A failure fails the whole request (default false).
    pub required: Option<bool>,
    /// This part's deadline (default: the compose `timeout_ms`).
    pub timeout_ms: Option<u64>,
    /// Value used when an optional part fails (any TOML value; default null).
    pub fallback: Option<serde_json::Value>,
    /// Keep only these top-level fields of the part's object.
    pub fields: Option<Vec<String>>,
    /// Pass the client's query string to the part (default false).
    pub query: Option<bool>,
}

/// How parts are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// `{"key1": part1, "key2": part2}`.
    Keys,
    /// The members of every part's object in one object (later parts win
    /// on equal keys); a part that is not an object goes under its key.
    Root,
}

/// A path with `{param}`s of the route, compiled.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    pieces: Vec<TemplatePiece>,
}

#[derive(Debug, Clone)]
enum TemplatePiece {
    Lit(Box<[u8]>),
    Param(usize),
}

impl PathTemplate {
    /// Compiles `template` against the route pattern `route_path`: each
    /// `{name}` must be one of the route's parameters (`{rest}` for a
    /// `{*rest}` catch-all).
    pub fn compile(template: &str, route_path: &str) -> Result<PathTemplate, String> {
        if !template.starts_with('/') {
            return Err(format!("{template:?} does not start with '/'"));
        }
        let names = route_param_names(route_path);
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(TemplatePiece::Lit(rest.as_bytes()[..open].into()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{template:?} has a '{{' without '}}'"))?;
            let name = after[..close].trim_start_matches('*');
            match names.iter().position(|n| n == name) {
                Some(i) => pieces.push(TemplatePiece::Param(i)),
                None => {
                    return Err(if names.is_empty() {
                        format!(
                            "{{{name}}} is not a parameter of the route path {route_path:?}, which has none"
                        )
                    } else {
                        format!(
                            "{{{name}}} is not a parameter of the route path {route_path:?} (it has: {})",
                            names.join(", ")
                        )
                    });
                }
            }
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{template:?} has a '}}' without '{{'"));
        }
        if !rest.is_empty() {
            pieces.push(TemplatePiece::Lit(rest.as_bytes().into()));
        }
        Ok(PathTemplate { pieces })
    }

    /// Appends the path with `params` (values in route pattern order)
    /// filled in.
    pub fn render(&self, params: &[&[u8]], out: &mut Vec<u8>) {
        for p in &self.pieces {
            match p {
                TemplatePiece::Lit(b) => out.extend_from_slice(b),
                TemplatePiece::Param(i) => {
                    out.extend_from_slice(params.get(*i).unwrap_or(&&b""[..]))
                }
            }
        }
    }

    /// True when the template uses route parameters.
    pub fn has_params(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, TemplatePiece::Param(_)))
    }
}

/// Parameter names of a route pattern, in order (`rest` for `{*rest}`).
pub fn route_param_names(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|n| n.trim_start_matches('*').to_string())
        .collect()
}

/// One part, compiled.
#[derive(Debug)]
pub struct Part {
    /// Key in the merged document.
    pub key: String,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    /// Path template.
    pub path: PathTemplate,
    /// Failure fails the request.
    pub required: bool,
    /// Own deadline.
    pub timeout: Duration,
    /// Serialized fallback value (`null` when none was given).
    pub fallback: String,
    /// Top-level fields kept, when filtered.
    pub fields: Option<Vec<String>>,
    /// Pass the query string.
    pub query: bool,
}

/// A route's `[routes.compose]`, compiled.
#[derive(Debug)]
pub struct Compose {
    /// Overall deadline.
    pub timeout: Duration,
    /// Merge mode.
    pub merge: Merge,
    /// Largest part body.
    pub max_part_bytes: usize,
    /// The parts, in config order (also the order of the output).
    pub parts: Vec<Part>,
}

/// Compiles route `i`'s `compose` table (`route_path` is its pattern).
pub fn compile(
    i: usize,
    f: &ComposeFile,
    route_path: &str,
    has_upstream: bool,
    upstream_ids: &HashMap<String, usize>,
    errs: &mut Errors,
) -> Option<Compose> {
    let key = |k: &str| format!("routes[{i}].compose.{k}");
    let before = errs.0.len();
    if has_upstream {
        errs.push(
            format!("routes[{i}].upstream"),
            "a route with [routes.compose] is answered by its parts, so upstream/upstreams would never be used",
            "remove upstream/upstreams from the route, or remove [routes.compose]",
        );
    }
    let timeout_ms = f.timeout_ms.unwrap_or(1000);
    if timeout_ms == 0 {
        errs.push(
            key("timeout_ms"),
            "must be greater than 0",
            "use milliseconds, e.g. 300",
        );
    }
    let merge = match f.merge.as_deref().unwrap_or("keys") {
        "keys" => Merge::Keys,
        "root" => Merge::Root,
        other => {
            errs.push(
                key("merge"),
                format!("unknown merge mode {other:?}"),
                "use \"keys\" (each part under its key) or \"root\" (members merged into one object)",
            );
            Merge::Keys
        }
    };
    let max_part_bytes = f.max_part_bytes.unwrap_or(1 << 20);
    if max_part_bytes == 0 {
        errs.push(
            key("max_part_bytes"),
            "must be greater than 0",
            "use a size in bytes, e.g. 1048576",
        );
    }
    if f.parts.is_empty() {
        errs.push(
            key("parts"),
            "no [[routes.compose.parts]] are defined",
            "add at least one [[routes.compose.parts]] with key, upstream and path",
        );
    }
    let mut parts = Vec::with_capacity(f.parts.len());
    for (j, p) in f.parts.iter().enumerate() {
        let pkey = |k: &str| format!("routes[{i}].compose.parts[{j}].{k}");
        let k = match &p.key {
            Some(k) if !k.is_empty() => k.clone(),
            _ => {
                errs.push(
                    pkey("key"),
                    "missing",
                    "add key = \"NAME\" (the part's key in the answer)",
                );
                String::new()
            }
        };
        if !k.is_empty() && f.parts[..j].iter().any(|o| o.key.as_deref() == Some(&k)) {
            errs.push(
                pkey("key"),
                format!("key {k:?} is used by an earlier part"),
                "give each part its own key",
            );
        }
        let upstream = match &p.upstream {
            Some(u) => match upstream_ids.get(u) {
                Some(&id) => id,
                None => {
                    let mut known: Vec<&str> = upstream_ids.keys().map(|s| s.as_str()).collect();
                    known.sort_unstable();
                    errs.push(
                        pkey("upstream"),
                        format!("upstream {u:?} is not defined"),
                        if known.is_empty() {
                            String::from("add an [upstreams.NAME] table")
                        } else {
                            format!("use one of: {}", known.join(", "))
                        },
                    );
                    0
                }
            },
            None => {
                errs.push(
                    pkey("upstream"),
                    "missing",
                    "add upstream = \"NAME\" naming an [upstreams.NAME] table",
                );
                0
            }
        };
        let path = match &p.path {
            Some(t) => match PathTemplate::compile(t, route_path) {
                Ok(t) => t,
                Err(m) => {
                    errs.push(
                        pkey("path"),
                        m,
                        "write a path like \"/prices/{id}\" using the route's parameters",
                    );
                    PathTemplate { pieces: Vec::new() }
                }
            },
            None => {
                errs.push(
                    pkey("path"),
                    "missing",
                    "add path = \"/...\" (route parameters as {name})",
                );
                PathTemplate { pieces: Vec::new() }
            }
        };
        let timeout = match p.timeout_ms {
            Some(0) => {
                errs.push(
                    pkey("timeout_ms"),
                    "must be greater than 0",
                    "use milliseconds, e.g. 100",
                );
                Duration::from_millis(timeout_ms)
            }
            Some(t) => Duration::from_millis(t.min(timeout_ms)),
            None => Duration::from_millis(timeout_ms),
        };
        let required = p.required.unwrap_or(false);
        if required && p.fallback.is_some() {
            errs.push(
                pkey("fallback"),
                "a required part never uses its fallback (its failure fails the request)",
                "remove fallback, or set required = false",
            );
        }
        if let Some(fs) = &p.fields
            && fs.is_empty()
        {
            errs.push(
                pkey("fields"),
                "the list is empty, so the part would be {}",
                "list the fields to keep, or remove the key",
            );
        }
        let fallback = match &p.fallback {
            Some(v) => serde_json::to_string(v).unwrap_or_else(|_| String::from("null")),
            None => String::from("null"),
        };
        parts.push(Part {
            key: k,
            upstream,
            path,
            required,
            timeout,
            fallback,
            fields: p.fields.clone(),
            query: p.query.unwrap_or(false),
        });
    }
    if errs.0.len() > before {
        return None;
    }
    Some(Compose {
        timeout: Duration::from_millis(timeout_ms),
        merge,
        max_part_bytes,
        parts,
    })
}

/// Why a part has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartError {
    /// Its deadline (or the overall one) passed.
    TimedOut,
    /// Connect failed, the connection broke, or the response was invalid.
    Failed(&'static str),
    /// A status other than 2xx.
    Status(u16),
    /// The body was not JSON.
    NotJson,
    /// The body was over `max_part_bytes`.
    TooLarge,
    /// The upstream's circuit breaker is open: nothing was sent.
    CircuitOpen,
}

impl PartError {
    /// The status a required part's failure answers with.
    pub fn status(&self) -> u16 {
        match self {
            PartError::TimedOut => 504,
            PartError::CircuitOpen => 503,
            _ => 502,
        }
    }

    /// Text for the error body.
    pub fn describe(&self) -> String {
        match self {
            PartError::TimedOut => String::from("timed out"),
            PartError::Failed(m) => (*m).to_string(),
            PartError::Status(s) => format!("answered {s}"),
            PartError::NotJson => String::from("answered a body that is not JSON"),
            PartError::TooLarge => String::from("answered a body over max_part_bytes"),
            PartError::CircuitOpen => String::from("is unavailable (circuit breaker open)"),
        }
    }
}

/// The merged answer.
#[derive(Debug, Default)]
pub struct Merged {
    /// The JSON body.
    pub body: Vec<u8>,
    /// Keys of optional parts that failed, comma-separated (empty when
    /// complete).
    pub partial: String,
}

/// Merges part results (in `comp.parts` order) into one document, or
/// returns the index of the first required part that failed.
pub fn merge(comp: &Compose, results: &[Result<Vec<u8>, PartError>]) -> Result<Merged, usize> {
    let mut out = Merged {
        body: Vec::with_capacity(
            results
                .iter()
                .map(|r| r.as_ref().map_or(16, |b| b.len() + 16))
                .sum::<usize>()
                + 16,
        ),
        partial: String::new(),
    };
    // Each part's value: a raw JSON slice, or (filtered/split) entries.
    let mut docs: Vec<PartValue<'_>> = Vec::with_capacity(results.len());
    for (i, (p, r)) in comp.parts.iter().zip(results).enumerate() {
        let v = match r {
            Ok(body) => match part_value(p, body, comp.merge) {
                Ok(v) => Some(v),
                Err(()) if p.required => return Err(i),
                Err(()) => None,
            },
            Err(_) if p.required => return Err(i),
            Err(_) => None,
        };
        let v = match v {
            Some(v) => v,
            None => {
                if !out.partial.is_empty() {
                    out.partial.push_str(", ");
                }
                out.partial.push_str(&p.key);
                match comp.merge {
                    Merge::Root => match json::parse(p.fallback.as_bytes()) {
                        Ok(Doc::Object(e)) => PartValue::Entries(e.0),
                        _ => PartValue::Raw(&p.fallback),
                    },
                    Merge::Keys => PartValue::Raw(&p.fallback),
                }
            }
        };
        docs.push(v);
    }
    let b = &mut out.body;
    match comp.merge {
        Merge::Keys => {
            b.push(b'{');
            for (i, (p, v)) in comp.parts.iter().zip(&docs).enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                json::write_key(b, &p.key);
                v.write(b);
            }
            b.push(b'}');
        }
        Merge::Root => {
            let mut all: Vec<(std::borrow::Cow<'_, str>, &str)> = Vec::new();
            for (p, v) in comp.parts.iter().zip(&docs) {
                match v {
                    PartValue::Entries(e) => {
                        all.extend(e.iter().map(|(k, v)| (k.clone(), v.get())))
                    }
                    PartValue::Raw(r) => all.push((std::borrow::Cow::Borrowed(p.key.as_str()), r)),
                    PartValue::Owned(r) => all.push((
                        std::borrow::Cow::Borrowed(p.key.as_str()),
                        std::str::from_utf8(r).unwrap_or("null"),
                    )),
                }
            }
            json::dedup_last_wins(&mut all);
            json::write_object(b, all.iter().map(|(k, v)| (k.as_ref(), *v)));
        }
    }
    Ok(out)
}

enum PartValue<'a> {
    Raw(&'a str),
    Owned(Vec<u8>),
    Entries(Vec<(std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue)>),
}

impl PartValue<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            PartValue::Raw(r) => out.extend_from_slice(r.as_bytes()),
            PartValue::Owned(r) => out.extend_from_slice(r),
            PartValue::Entries(e) => {
                json::write_object(out, e.iter().map(|(k, v)| (k.as_ref(), v.get())))
            }
        }
    }
}

/// A part's body as it goes into the merge: validated, filtered to
/// `fields`, split into members for a root merge.
fn part_value<'a>(p: &Part, body: &'a [u8], merge: Merge) -> Result<PartValue<'a>, ()> {
    if p.fields.is_none() && merge == Merge::Keys {
        return json::validate(body).map(PartValue::Raw).map_err(|_| ());
    }
    match json::parse(body).map_err(|_| ())? {
        Doc::Object(mut e) => {
            if let Some(fs) = &p.fields {
                e.retain_keys(fs);
            }
            Ok(PartValue::Entries(e.0))
        }
        Doc::Array(items) if p.fields.is_some() => {
            // Filter each object element; other elements stay as they are.
            let fs = p.fields.as_deref().unwrap_or(&[]);
            let mut s = Vec::with_capacity(body.len());
            s.push(b'[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    s.push(b',');
                }
                match json::split(it) {
                    Ok(Doc::Object(mut e)) => {
                        e.retain_keys(fs);
                        json::write_object(&mut s, e.0.iter().map(|(k, v)| (k.as_ref(), v.get())));
                    }
                    _ => s.extend_from_slice(it.get().as_bytes()),
                }
            }
            s.push(b']');
            Ok(PartValue::Owned(s))
        }
        Doc::Array(_) | Doc::Scalar(_) => json::validate(body).map(PartValue::Raw).map_err(|_| ()),
    }
}

/// What [`serve`] sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// The status sent.
    pub status: u16,
    /// The connection stays open.
    pub keep_alive: bool,
    /// A complete 200: every part answered (no `X-Gateway-Partial`) and
    /// none with `Cache-Control: no-store`, `private` or `no-cache`. Only
    /// such an answer is stored by a cached compose route.
    pub cacheable: bool,
}

/// Runs a compose route for the request in `c` and answers the client.
/// Leaves the request in `c.buf` (the caller drops it).
pub async fn serve<S: AsyncWriteRent>(
    w: &Worker,
    snap: &Generation,
    route: usize,
    comp: &Compose,
    client: &mut S,
    c: &mut Conn,
) -> Answered {
    let cfg: &Config = &snap.config;
    let started = Instant::now();
    let deadline = started + comp.timeout;
    // The parts' request targets and header lines (and consistent-hash
    // keys), built while the client buffer is borrowed.
    let (targets, common, keys) = {
        let buf = &c.buf;
        let mut params = crate::router::Params::new();
        let host = c.head.host.map_or(&b""[..], |h| h.of(buf));
        let path = crate::filter::transform::routing_path(buf, &c.head);
        let _ = cfg
            .table
            .lookup(host, c.head.method.of(buf), path, &mut params);
        let pq = c.head.path_query.of(buf);
        let query = pq.iter().position(|&b| b == b'?').map(|i| &pq[i..]);
        let targets: Vec<Vec<u8>> = comp
            .parts
            .iter()
            .map(|p| {
                let mut t = Vec::with_capacity(64);
                p.path.render(params.as_slice(), &mut t);
                if p.query
                    && let Some(q) = query
                {
                    t.extend_from_slice(q);
                }
                t
            })
            .collect();
        let ip = c.peer.ip().to_string();
        let keys: Vec<Option<u64>> = comp
            .parts
            .iter()
            .map(|p| {
                let u = &cfg.upstreams[p.upstream];
                match (&u.hash_key, u.balance) {
                    (Some(k), Balance::ConsistentHash) => {
                        crate::upstream::request_key(k, buf, &c.lines, ip.as_bytes())
                    }
                    _ => None,
                }
            })
            .collect();
        let mut common = Vec::with_capacity(256 + c.up_extra.len());
        common.extend_from_slice(b"X-Request-Id: ");
        common.extend_from_slice(c.rid.as_bytes());
        let _ = write!(
            common,
            "\r\nX-Forwarded-For: {ip}\r\nX-Forwarded-Proto: http\r\n"
        );
        if let Some(h) = c.head.host {
            common.extend_from_slice(b"X-Forwarded-Host: ");
            common.extend_from_slice(h.of(buf));
            common.extend_from_slice(b"\r\n");
        }
        common.extend_from_slice(b"Via: 1.1 ringgate\r\nAccept: application/json\r\n");
        common.extend_from_slice(&c.up_extra);
        (targets, common, keys)
    };

    let futs: Vec<_> = comp
        .parts
        .iter()
        .zip(&targets)
        .zip(&keys)
        .map(|((p, target), &key)| {
            // The part's deadline (never after the overall one).
            let until = (started + p.timeout).min(deadline);
            let req = exchange::Request {
                headers: &common,
                key,
                ..exchange::Request::get(p.upstream, target, until, comp.max_part_bytes)
            };
            fetch(w, snap, req)
        })
        .collect();
    let mut cacheable = true;
    // Polled together on this thread (no spawn): futures-util's join_all.
    let results: Vec<_> = futures_util::future::join_all(futs)
        .await
        .into_iter()
        .map(|(r, no_store)| {
            cacheable &= !no_store;
            r
        })
        .collect();
    c.upstream_us = Some(started.elapsed().as_micros() as u64);

    let close = c.head.has_body() || !c.head.keep_alive || w.draining.get();
    let rid = c.rid;
    let reply = match merge(comp, &results) {
        Ok(m) => {
            let mut r = crate::filter::Reply {
                status: 200,
                headers: Vec::new(),
                content_type: "application/json",
                body: m.body,
            };
            if !m.partial.is_empty() {
                cacheable = false;
                r = r.with_header("X-Gateway-Partial", &m.partial);
            }
            r
        }
        Err(i) => {
            let p = &comp.parts[i];
            let e = match &results[i] {
                Err(e) => e.clone(),
                Ok(_) => PartError::NotJson,
            };
            let status = e.status();
            let message = format!(
                "required part {:?} (upstream {}) {}",
                p.key,
                cfg.upstreams[p.upstream].name,
                e.describe()
            );
            let r = crate::filter::Reply {
                status,
                headers: Vec::new(),
                content_type: "application/json",
                body: crate::filter::error_body(
                    status,
                    &message,
                    &[("part", &p.key)],
                    rid.as_bytes(),
                ),
            };
            if e == PartError::CircuitOpen {
                let secs = snap.upstreams[p.upstream]
                    .shared
                    .breaker
                    .as_ref()
                    .map_or(1, |b| b.retry_after_secs());
                r.with_header("Retry-After", &secs.to_string())
            } else {
                r
            }
        }
    };
    if reply.status != 200 {
        w.metrics.upstream_error(cfg.routes[route].upstream);
    }
    let ok = crate::proxy::session::write_reply(
        client,
        &mut c.scratch,
        &reply,
        rid.as_bytes(),
        &c.resp_extra,
        close,
        c.head.is_head,
    )
    .await;
    if ok {
        // The scratch buffer holds the response that was written.
        c.bytes_out = c.scratch.len() as u64;
    }
    Answered {
        status: reply.status,
        keep_alive: ok && !close,
        cacheable: cacheable && reply.status == 200,
    }
}

/// One part: one exchange with its upstream
/// ([`crate::upstream::exchange`]: the breaker, the balancer with the
/// request's consistent-hash key, pooled connections, retries on another
/// target, passive health, latency and pool metrics) under the part's
/// deadline, the body read whole up to `max_part_bytes`. A non-2xx answer,
/// or an exchange error, is the part's failure. If this future is dropped
/// before a verdict (the request was abandoned), the breaker ticket gives
/// its probe slot back.
///
/// Also returns whether the answer forbids storing (`Cache-Control:
/// no-store`, `private` or `no-cache`), for a cached compose route.
async fn fetch(
    w: &Worker,
    snap: &Generation,
    req: exchange::Request<'_>,
) -> (Result<Vec<u8>, PartError>, bool) {
    match exchange::exchange(w, snap, &req).await {
        Ok(a) if (200..300).contains(&a.response.status()) => {
            let no_store = a.response.headers(b"cache-control").any(|v| {
                let mut cc = crate::filter::cache::CacheControl::default();
                cc.add(v);
                cc.no_store || cc.private || cc.no_cache
            });
            (Ok(a.response.into_body()), no_store)
        }
        Ok(a) => (Err(PartError::Status(a.response.status())), false),
        Err(e) => (Err(PartError::from(e)), false),
    }
}

impl From<Error> for PartError {
    fn from(e: Error) -> Self {
        match e.kind {
            ErrorKind::CircuitOpen => PartError::CircuitOpen,
            ErrorKind::ResponseTooLarge => PartError::TooLarge,
            ErrorKind::UpstreamStatus(s) => PartError::Status(s),
            _ if e.is_timeout() => PartError::TimedOut,
            ErrorKind::NoHealthyTarget => PartError::Failed("has no available target"),
            ErrorKind::ConnectFailed => PartError::Failed("refused the connection"),
            ErrorKind::UpstreamClosed => PartError::Failed("closed the connection"),
            ErrorKind::InvalidResponse => PartError::Failed("sent an invalid response"),
            _ => PartError::Failed(e.message),
        }
    }
}
