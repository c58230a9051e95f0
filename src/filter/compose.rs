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
//! by [`JoinAll`] (no threads, no `spawn`), each under its own timeout
//! inside the route's overall deadline, each on a pooled or fresh
//! connection of its upstream.
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
//! Upstream protections: a part goes through its upstream's breaker and
//! passive outlier detection like a forwarded request
//! (`crate::upstream::breaker::Ticket`, the same rules as
//! `proxy::forward`). An open breaker fails the part at once, without a
//! connection. Otherwise the outcome is recorded once: the response's
//! status is judged by the breaker's `failure_statuses` (and a 5xx counts
//! for outlier ejection); a connect error, a broken connection, an invalid
//! response or the part's deadline passing is a failure. A part dropped
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

use crate::config::{Config, Errors, UpstreamConfig};
use crate::http::chunked::ChunkedScanner;
use crate::http::conn::read_more_within;
use crate::http::parse::{self, BodyFraming, Parsed, ResponseHead};
use crate::proxy::forward::Conn;
use crate::proxy::json::{self, Doc};
use crate::runtime::worker::{Generation, Worker};
use crate::upstream::breaker::Ticket;
use crate::upstream::pool::{TargetState, UpstreamState};
use crate::upstream::shared::Report;
use crate::upstream::tls::UpStream;
use crate::upstream::{balance, pool};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
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
    // The parts' request heads, built while the client buffer is borrowed.
    let (lines, common) = {
        let buf = &c.buf;
        let mut params = crate::router::Params::new();
        let host = c.head.host.map_or(&b""[..], |h| h.of(buf));
        let path = crate::filter::transform::routing_path(buf, &c.head);
        let _ = cfg
            .table
            .lookup(host, c.head.method.of(buf), path, &mut params);
        let pq = c.head.path_query.of(buf);
        let query = pq.iter().position(|&b| b == b'?').map(|i| &pq[i..]);
        let lines: Vec<Vec<u8>> = comp
            .parts
            .iter()
            .map(|p| {
                let mut l = Vec::with_capacity(64);
                l.extend_from_slice(b"GET ");
                p.path.render(params.as_slice(), &mut l);
                if p.query
                    && let Some(q) = query
                {
                    l.extend_from_slice(q);
                }
                l.extend_from_slice(b" HTTP/1.1\r\n");
                l
            })
            .collect();
        let mut common = Vec::with_capacity(256 + c.up_extra.len());
        common.extend_from_slice(b"X-Request-Id: ");
        common.extend_from_slice(c.rid.as_bytes());
        let _ = write!(
            common,
            "\r\nX-Forwarded-For: {}\r\nX-Forwarded-Proto: http\r\n",
            c.peer.ip()
        );
        if let Some(h) = c.head.host {
            common.extend_from_slice(b"X-Forwarded-Host: ");
            common.extend_from_slice(h.of(buf));
            common.extend_from_slice(b"\r\n");
        }
        common.extend_from_slice(b"Via: 1.1 ringgate\r\nAccept: application/json\r\n");
        common.extend_from_slice(&c.up_extra);
        common.extend_from_slice(b"\r\n");
        (lines, common)
    };

    let futs: Vec<_> = comp
        .parts
        .iter()
        .zip(&lines)
        .map(|(p, line)| {
            // The part's deadline (never after the overall one).
            let until = (started + p.timeout).min(deadline);
            Box::pin(fetch(w, snap, p, line, &common, comp.max_part_bytes, until))
        })
        .collect();
    let mut cacheable = true;
    let results: Vec<_> = JoinAll::new(futs)
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
    let ok = crate::http::conn::write_reply(
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

/// One part: asks its upstream's breaker, picks a target, runs the
/// exchange until `until` (the part's deadline), then records the outcome
/// with the breaker and passive outlier detection under the rules
/// `proxy::forward` uses: a response is judged by its status (the
/// breaker's `failure_statuses`; a 5xx for outlier detection), a connect
/// error, broken connection, invalid response or timeout is a failure.
/// An open breaker fails the part at once, without a connection. If this
/// future is dropped before a verdict (the request was abandoned), the
/// breaker ticket gives its probe slot back.
///
/// Also returns whether the answer forbids storing (`Cache-Control:
/// no-store`, `private` or `no-cache`), for a cached compose route.
async fn fetch(
    w: &Worker,
    snap: &Generation,
    p: &Part,
    line: &[u8],
    common: &[u8],
    cap: usize,
    until: Instant,
) -> (Result<Vec<u8>, PartError>, bool) {
    let cfg: &Config = &snap.config;
    let up_cfg = &cfg.upstreams[p.upstream];
    let up = &snap.upstreams[p.upstream];
    let mut ticket = Ticket::new(up.shared.breaker.as_ref());
    if ticket.rejected() {
        return (Err(PartError::CircuitOpen), false);
    }
    let list = up.list();
    // No target to try: no verdict, the ticket is released (as forward does).
    let Some(t) = balance::pick(up, &list, up_cfg.balance, None, 0) else {
        return (Err(PartError::Failed("has no available target")), false);
    };
    let target = InFlight::begin(&list.targets[t]);
    let mut head = Vec::with_capacity(line.len() + common.len() + 32);
    head.extend_from_slice(line);
    let _ = write!(head, "Host: {}\r\n", target.0.addr);
    head.extend_from_slice(common);
    let left = until.saturating_duration_since(Instant::now());
    let r = monoio::time::timeout(left, exchange(w, up, up_cfg, target.0, head, cap))
        .await
        .unwrap_or(Err(ReadError::TimedOut));
    drop(target);
    let shared = &list.targets[t].shared;
    let (status, result, no_store) = match r {
        Ok((status, body, no_store)) if (200..300).contains(&status) => {
            (status, Ok(body), no_store)
        }
        Ok((status, _, _)) => (status, Err(PartError::Status(status)), false),
        // An answer, only too large for the merge.
        Err(ReadError::TooLarge(status)) => (status, Err(PartError::TooLarge), false),
        Err(e) => {
            up.shared.report(shared, Report::Failure);
            ticket.record(false);
            return (Err(e.into()), false);
        }
    };
    let report = if status >= 500 {
        Report::Status5xx
    } else {
        Report::Success
    };
    up.shared.report(shared, report);
    ticket.record_status(status);
    (result, no_store)
}

/// A request in flight to a target (its `least_conn` count) for as long
/// as this lives, however the part ends.
struct InFlight<'a>(&'a TargetState);

impl<'a> InFlight<'a> {
    fn begin(t: &'a TargetState) -> Self {
        t.begin();
        InFlight(t)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A GET on a pooled (or fresh) connection of `target`, the whole body
/// read (up to `cap`): the status, the body and whether the answer forbids
/// storing. A pooled connection that turns out stale is replaced by a
/// fresh one once.
async fn exchange(
    w: &Worker,
    up: &UpstreamState,
    up_cfg: &UpstreamConfig,
    target: &TargetState,
    mut head: Vec<u8>,
    cap: usize,
) -> Result<(u16, Vec<u8>, bool), ReadError> {
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else {
            up.checkout(target, w.watchdog.now_ms())
        };
        let reused = pooled.is_some();
        let mut s = match pooled {
            Some(s) => s,
            None => match pool::connect(target.addr, up_cfg.connect_timeout, up_cfg.tls.as_deref())
                .await
            {
                Ok(s) => s,
                Err(pool::ConnectError::TimedOut) => return Err(ReadError::TimedOut),
                Err(pool::ConnectError::Failed(_) | pool::ConnectError::Tls(_)) => {
                    return Err(ReadError::Refused);
                }
            },
        };
        let (wr, h) = s.write_all(head).await;
        head = h;
        if wr.is_err() {
            if reused {
                fresh_only = true;
                continue;
            }
            return Err(ReadError::Closed);
        }
        match read_response(&mut s, cap, up_cfg.request_timeout).await {
            Err(ReadError::Nothing) if reused => {
                fresh_only = true;
                continue;
            }
            Err(e) => return Err(e),
            Ok(ReadResponse {
                status,
                body,
                reusable,
                no_store,
            }) => {
                if reusable {
                    up.checkin(target, s, w.watchdog.now_ms());
                }
                return Ok((status, body, no_store));
            }
        }
    }
}

enum ReadError {
    /// EOF before any byte: a stale pooled connection.
    Nothing,
    /// Connect refused or failed.
    Refused,
    /// The connection broke while the request was written.
    Closed,
    TimedOut,
    Invalid,
    /// A response with this status whose body is over the cap.
    TooLarge(u16),
}

impl From<ReadError> for PartError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Nothing => PartError::Failed("closed the connection before responding"),
            ReadError::Refused => PartError::Failed("refused the connection"),
            ReadError::Closed => PartError::Failed("closed the connection"),
            ReadError::TimedOut => PartError::TimedOut,
            ReadError::Invalid => PartError::Failed("sent an invalid response"),
            ReadError::TooLarge(_) => PartError::TooLarge,
        }
    }
}

/// A part's response, read whole.
struct ReadResponse {
    status: u16,
    body: Vec<u8>,
    /// The connection can be pooled again.
    reusable: bool,
    /// `Cache-Control: no-store`, `private` or `no-cache`.
    no_store: bool,
}

/// Reads one response (head and whole body, Content-Length, chunked or
/// until close) of at most `cap` body bytes.
async fn read_response(
    s: &mut crate::upstream::tls::UpStream,
    cap: usize,
    gap: Duration,
) -> Result<ReadResponse, ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut head = ResponseHead::default();
    let mut lines = Vec::new();
    // Head (skipping interim 1xx responses).
    loop {
        if !buf.is_empty() {
            match parse::parse_response(&buf, &mut head, &mut lines) {
                Ok(Parsed::Complete) if (100..200).contains(&head.status) => {
                    buf.drain(..head.len);
                    continue;
                }
                Ok(Parsed::Complete) => break,
                Ok(Parsed::Partial) if buf.len() >= crate::proxy::forward::MAX_RESPONSE_HEAD => {
                    return Err(ReadError::Invalid);
                }
                Ok(Parsed::Partial) => {}
                Err(_) => return Err(ReadError::Invalid),
            }
        }
        let got_any = !buf.is_empty();
        read_into(s, &mut buf, gap).await.map_err(|e| match e {
            ReadError::Nothing if got_any => ReadError::Invalid,
            e => e,
        })?;
    }
    let no_store = lines.iter().any(|l| {
        crate::http::name_eq(l.name.of(&buf), b"cache-control") && {
            let mut cc = crate::filter::cache::CacheControl::default();
            cc.add(l.value.of(&buf));
            cc.no_store || cc.private || cc.no_cache
        }
    });
    let framing = head.framing_for(false);
    let mut body = Vec::new();
    let mut reusable = head.keep_alive;
    let hlen = head.len;
    match framing {
        BodyFraming::None => {
            reusable &= buf.len() == hlen;
        }
        BodyFraming::Length(n) => {
            if n as usize > cap {
                return Err(ReadError::TooLarge(head.status));
            }
            let n = n as usize;
            while buf.len() < hlen + n {
                read_into(s, &mut buf, gap).await.map_err(eof_invalid)?;
            }
            reusable &= buf.len() == hlen + n;
            buf.truncate(hlen + n);
            buf.drain(..hlen);
            body = buf;
        }
        BodyFraming::Chunked => {
            let mut scanner = ChunkedScanner::new();
            let mut pos = hlen;
            loop {
                let k = scanner
                    .scan(&buf[pos..], |a, b| {
                        body.extend_from_slice(&buf[pos + a..pos + b])
                    })
                    .map_err(|_| ReadError::Invalid)?;
                pos += k;
                if body.len() > cap {
                    return Err(ReadError::TooLarge(head.status));
                }
                if scanner.is_done() {
                    reusable &= pos == buf.len();
                    break;
                }
                buf.drain(..pos);
                pos = 0;
                read_into(s, &mut buf, gap).await.map_err(eof_invalid)?;
            }
        }
        BodyFraming::UntilClose => {
            reusable = false;
            loop {
                if buf.len() - hlen > cap {
                    return Err(ReadError::TooLarge(head.status));
                }
                match read_into(s, &mut buf, gap).await {
                    Ok(()) => {}
                    // EOF ends the body.
                    Err(ReadError::Nothing) => break,
                    Err(e) => return Err(e),
                }
            }
            buf.drain(..hlen);
            body = buf;
        }
    }
    Ok(ReadResponse {
        status: head.status,
        body,
        reusable,
        no_store,
    })
}

fn eof_invalid(e: ReadError) -> ReadError {
    match e {
        ReadError::Nothing => ReadError::Invalid,
        e => e,
    }
}

/// Reads more bytes after `buf`'s contents; `Nothing` on EOF.
async fn read_into(s: &mut UpStream, buf: &mut Vec<u8>, gap: Duration) -> Result<(), ReadError> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(buf.capacity().max(4096));
    }
    let (r, b) = read_more_within(s, std::mem::take(buf), gap).await;
    *buf = b;
    match r {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(_) => Err(ReadError::Nothing),
        Err(()) => Err(ReadError::TimedOut),
    }
}

/// Polls a set of futures of one type together on the current thread and
/// yields their outputs in order once all are done.
pub struct JoinAll<F: Future> {
    futs: Vec<Option<Pin<Box<F>>>>,
    out: Vec<Option<F::Output>>,
    left: usize,
}

impl<F: Future> JoinAll<F> {
    /// Joins `futs` (already pinned).
    pub fn new(futs: Vec<Pin<Box<F>>>) -> Self {
        let n = futs.len();
        JoinAll {
            futs: futs.into_iter().map(Some).collect(),
            out: (0..n).map(|_| None).collect(),
            left: n,
        }
    }
}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        for (slot, out) in this.futs.iter_mut().zip(this.out.iter_mut()) {
            if let Some(f) = slot
                && let Poll::Ready(v) = f.as_mut().poll(cx)
            {
                *out = Some(v);
                *slot = None;
                this.left -= 1;
            }
        }
        if this.left == 0 {
            Poll::Ready(this.out.iter_mut().filter_map(Option::take).collect())
        } else {
            Poll::Pending
        }
    }
}

impl<F: Future> Unpin for JoinAll<F> {}
