//! Request and response transformation, per route: headers added, set,
//! removed or renamed both ways; the forwarded path rewritten
//! (`strip_prefix`, `add_prefix`, or a template using route params); query
//! parameters added or removed; response JSON members renamed, removed or
//! whitelisted; response statuses mapped.
//!
//! Key components: [`TransformFile`] (the `transform = {...}` keys),
//! [`Transform`] (compiled), [`Rewrite`] (per-connection scratch the proxy
//! reads: the rewritten request target), [`apply_request`] (the upstream
//! request phase, after the route's filters), [`response_filter`] (the
//! response header phase, through the route's chain: status mapped and
//! headers edited through the transport-neutral `ResponseHeader`),
//! [`rewrites_response`] and [`rewrite_json`] (the response header and
//! body phases of `response_json`).
//!
//! How the head edits work without rebuilding heads: a request header that
//! is removed, set or renamed has its line marked `HeaderRole::Drop` and the
//! new line goes to `c.up_extra`; a rewritten path is written once into
//! [`Rewrite::target`] and the forwarded request line uses it. Response
//! headers go through `ResponseHeader` (a removed line is marked, added
//! ones follow the backend's); a mapped status has its status line written
//! anew.
//!
//! Response JSON ops need the whole body: the response header phase
//! ([`rewrites_response`], through the route's chain) picks answers with a
//! JSON content type, and the forward's body phase holds their payload
//! (after the backend's framing, up to `response_json.max_body_bytes`; a
//! larger body is relayed as it is, re-framed), rewrites it with
//! [`rewrite_json`] and sends it with its own `Content-Length`. A body that
//! is not JSON (by `Content-Type` or by parse) is relayed unchanged.
//!
//! Performance notes: a route without a transform pays nothing here (no
//! call, no allocation: `tests/alloc.rs`). With header and path ops, the
//! per-request work is a scan of the header lines and a few copies into
//! buffers the connection reuses; only response JSON ops buffer a body.

use crate::config::{Config, Errors};
use crate::filter::compose::PathTemplate;
use crate::http::message::ResponseHeader;
use crate::http::parse::{HeaderRole, RequestHead};
use crate::proxy::forward::Conn;
use crate::proxy::json::{self, Doc};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `transform = { ... }` on a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformFile {
    /// Header ops on the request sent upstream.
    pub request_headers: Option<HeaderOpsFile>,
    /// Header ops on the response sent to the client.
    pub response_headers: Option<HeaderOpsFile>,
    /// Removed from the start of the path (on a segment boundary).
    pub strip_prefix: Option<String>,
    /// Put before the path (after `strip_prefix`).
    pub add_prefix: Option<String>,
    /// The forwarded path, with the route's `{param}`s filled in (instead
    /// of `strip_prefix`/`add_prefix`).
    pub path: Option<String>,
    /// Query parameter ops.
    pub query: Option<QueryOpsFile>,
    /// Response JSON ops.
    pub response_json: Option<JsonOpsFile>,
    /// Response status mapping: `{ "404" = 200 }`.
    pub status: Option<BTreeMap<String, u16>>,
}

/// `{ add, set, remove, rename }` for headers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsFile {
    /// Added, whatever is there (`{ "X-A" = "1" }`).
    pub add: Option<BTreeMap<String, String>>,
    /// Replacing every header of that name.
    pub set: Option<BTreeMap<String, String>>,
    /// Removed (names).
    pub remove: Option<Vec<String>>,
    /// Renamed, keeping the value (`{ "X-Old" = "X-New" }`).
    pub rename: Option<BTreeMap<String, String>>,
}

/// `query = { add, remove }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryOpsFile {
    /// Parameters set (an existing one of that name is replaced).
    pub add: Option<BTreeMap<String, String>>,
    /// Parameters removed (names).
    pub remove: Option<Vec<String>>,
}

/// `response_json = { rename, remove, only, max_body_bytes }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonOpsFile {
    /// Top-level members renamed (`{ "old" = "new" }`).
    pub rename: Option<BTreeMap<String, String>>,
    /// Top-level members removed.
    pub remove: Option<Vec<String>>,
    /// Only these top-level members kept (applied before `rename`).
    pub only: Option<Vec<String>>,
    /// Largest body rewritten (default 1 MiB); larger ones pass unchanged.
    pub max_body_bytes: Option<usize>,
}

/// A `(name, value)` or `(from, to)` pair of byte strings.
type BytePair = (Box<[u8]>, Box<[u8]>);

/// Header ops, compiled.
#[derive(Debug, Default)]
pub struct HeaderOps {
    /// Lower-case names whose lines are dropped (remove, set, rename).
    drop: Vec<Box<[u8]>>,
    /// `(lower-case from, to)`.
    rename: Vec<BytePair>,
    /// The `add` and `set` lines, ready to append (the request side's
    /// HTTP/1 fast path).
    lines: Box<[u8]>,
    /// The same `add` and `set` fields as `(name, value)` (the response
    /// header phase, through `ResponseHeader`).
    fields: Vec<BytePair>,
}

impl HeaderOps {
    fn is_empty(&self) -> bool {
        self.drop.is_empty() && self.lines.is_empty()
    }
}

/// How the forwarded path is rewritten.
#[derive(Debug)]
enum PathOp {
    None,
    Prefix { strip: Box<[u8]>, add: Box<[u8]> },
    Template(PathTemplate),
}

/// JSON ops, compiled.
#[derive(Debug)]
pub struct JsonOps {
    rename: Vec<(String, String)>,
    remove: Vec<String>,
    only: Option<Vec<String>>,
    /// Largest body rewritten.
    pub max_body_bytes: usize,
}

/// A route's transform, compiled.
#[derive(Debug)]
pub struct Transform {
    request_headers: HeaderOps,
    response_headers: HeaderOps,
    path: PathOp,
    /// Query parameters set: encoded `(name, value)`.
    query_add: Vec<BytePair>,
    /// Query parameters removed: encoded names.
    query_remove: Vec<Box<[u8]>>,
    /// Response JSON ops.
    pub json: Option<JsonOps>,
    status: Vec<(u16, u16)>,
}

impl Transform {
    /// True when the response head is edited (headers or status).
    pub fn edits_response_head(&self) -> bool {
        !self.response_headers.is_empty() || !self.status.is_empty()
    }

    fn rewrites_target(&self) -> bool {
        !matches!(self.path, PathOp::None)
            || !self.query_add.is_empty()
            || !self.query_remove.is_empty()
    }

    /// The status `s` is mapped to, if any.
    pub fn map_status(&self, s: u16) -> Option<u16> {
        self.status.iter().find(|(a, _)| *a == s).map(|(_, b)| *b)
    }
}

/// Per-connection rewrite state the proxy reads (see the module docs).
#[derive(Debug, Default)]
pub struct Rewrite {
    /// Request target (path and query) to forward instead of the client's;
    /// empty = the client's.
    pub target: Vec<u8>,
}

impl Rewrite {
    /// Forgets the previous request's rewrite (keeps capacity).
    #[inline]
    pub fn clear(&mut self) {
        self.target.clear();
    }
}

/// Header names a transform may not touch: they frame the message or
/// belong to one hop.
const FRAMING: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "expect",
];

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn valid_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn compile_header_ops(key: &str, f: &HeaderOpsFile, request: bool, errs: &mut Errors) -> HeaderOps {
    let mut ops = HeaderOps::default();
    let mut lines = Vec::new();
    let check_name = |errs: &mut Errors, op: &str, name: &str| -> bool {
        let lower = name.to_ascii_lowercase();
        if !valid_token(name) {
            errs.push(
                format!("{key}.{op}"),
                format!("{name:?} is not a valid header name"),
                "use letters, digits and '-', e.g. \"X-Api-Version\"",
            );
            return false;
        }
        if FRAMING.contains(&lower.as_str()) {
            errs.push(
                format!("{key}.{op}"),
                format!("{name:?} frames the message or belongs to one hop; ringgate manages it"),
                "remove this header from the transform",
            );
            return false;
        }
        if request && lower == "host" && (op == "remove" || op == "rename") {
            errs.push(
                format!("{key}.{op}"),
                "the request must keep a Host header",
                "use set = { \"Host\" = \"...\" } to change it",
            );
            return false;
        }
        true
    };
    for (op, map) in [("add", &f.add), ("set", &f.set)] {
        for (name, value) in map.iter().flatten() {
            if !check_name(errs, op, name) {
                continue;
            }
            if !valid_value(value) {
                errs.push(
                    format!("{key}.{op}"),
                    format!("the value of {name:?} contains a control character"),
                    "remove CR, LF and other control characters from the value",
                );
                continue;
            }
            if op == "set" {
                ops.drop.push(name.to_ascii_lowercase().into_bytes().into());
            }
            lines.extend_from_slice(name.as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value.as_bytes());
            lines.extend_from_slice(b"\r\n");
            ops.fields
                .push((name.as_bytes().into(), value.as_bytes().into()));
        }
    }
    for name in f.remove.iter().flatten() {
        if check_name(errs, "remove", name) {
            ops.drop.push(name.to_ascii_lowercase().into_bytes().into());
        }
    }
    for (from, to) in f.rename.iter().flatten() {
        if check_name(errs, "rename", from) && check_name(errs, "rename", to) {
            let lower: Box<[u8]> = from.to_ascii_lowercase().into_bytes().into();
            ops.drop.push(lower.clone());
            ops.rename.push((lower, to.as_bytes().into()));
        }
    }
    ops.lines = lines.into();
    ops
}

/// Percent-encodes a query component (unreserved characters stay).
fn encode_query(s: &str) -> Box<[u8]> {
    let mut out = Vec::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out.into()
}

/// Compiles route `i`'s `transform` (`route_path` is its pattern).
pub fn compile(
    i: usize,
    f: &TransformFile,
    route_path: &str,
    errs: &mut Errors,
) -> Option<Transform> {
    let before = errs.0.len();
    let key = |k: &str| format!("routes[{i}].transform.{k}");
    let empty = HeaderOpsFile::default();
    let request_headers = compile_header_ops(
        &key("request_headers"),
        f.request_headers.as_ref().unwrap_or(&empty),
        true,
        errs,
    );
    let response_headers = compile_header_ops(
        &key("response_headers"),
        f.response_headers.as_ref().unwrap_or(&empty),
        false,
        errs,
    );
    let prefix_ok = |errs: &mut Errors, k: &str, p: &str| -> bool {
        if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') || p.contains(['?', '#', ' ']) {
            errs.push(
                key(k),
                format!("{p:?} is not a path prefix"),
                "write it as \"/users\": a leading '/', no trailing '/', no query",
            );
            false
        } else {
            true
        }
    };
    let path = match (&f.path, &f.strip_prefix, &f.add_prefix) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            errs.push(
                key("path"),
                "path replaces the whole path, so strip_prefix/add_prefix would be ignored",
                "use either path = \"/template/{id}\" or strip_prefix/add_prefix",
            );
            PathOp::None
        }
        (Some(t), None, None) => {
            if t.contains(['?', '#', ' ']) {
                errs.push(
                    key("path"),
                    format!("{t:?} contains '?', '#' or a space"),
                    "put query parameters under query.add",
                );
                PathOp::None
            } else {
                match PathTemplate::compile(t, route_path) {
                    Ok(t) => PathOp::Template(t),
                    Err(m) => {
                        errs.push(
                            key("path"),
                            m,
                            "write a path like \"/items/{id}\" using the route's parameters",
                        );
                        PathOp::None
                    }
                }
            }
        }
        (None, None, None) => PathOp::None,
        (None, strip, add) => {
            let s = strip
                .as_deref()
                .filter(|p| prefix_ok(errs, "strip_prefix", p));
            let a = add.as_deref().filter(|p| prefix_ok(errs, "add_prefix", p));
            PathOp::Prefix {
                strip: s.unwrap_or("").as_bytes().into(),
                add: a.unwrap_or("").as_bytes().into(),
            }
        }
    };
    let (query_add, query_remove) = match &f.query {
        Some(q) => (
            q.add
                .iter()
                .flatten()
                .map(|(k, v)| (encode_query(k), encode_query(v)))
                .collect(),
            q.remove.iter().flatten().map(|k| encode_query(k)).collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let json = f.response_json.as_ref().map(|j| {
        let max = j.max_body_bytes.unwrap_or(1 << 20);
        if max == 0 {
            errs.push(
                key("response_json.max_body_bytes"),
                "must be greater than 0",
                "use a size in bytes, e.g. 1048576",
            );
        }
        if let Some(o) = &j.only
            && o.is_empty()
        {
            errs.push(
                key("response_json.only"),
                "the list is empty, so every member would be removed",
                "list the members to keep, or remove the key",
            );
        }
        JsonOps {
            rename: j
                .rename
                .iter()
                .flatten()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
            remove: j.remove.clone().unwrap_or_default(),
            only: j.only.clone(),
            max_body_bytes: max,
        }
    });
    let mut status = Vec::new();
    for (from, to) in f.status.iter().flatten() {
        let bodiless = |s: u16| (100..200).contains(&s) || s == 204 || s == 304;
        match from.parse::<u16>() {
            Ok(s) if (200..600).contains(&s) && (200..600).contains(to) && !bodiless(s) && !bodiless(*to) => {
                status.push((s, *to))
            }
            _ => errs.push(
                key("status"),
                format!("cannot map {from:?} to {to}"),
                "map statuses 200-599 other than 204 and 304 (their framing differs), e.g. { \"404\" = 200 }",
            ),
        }
    }
    if errs.0.len() > before {
        return None;
    }
    Some(Transform {
        request_headers,
        response_headers,
        path,
        query_add,
        query_remove,
        json,
        status,
    })
}

/// The path routing sees: the request path (after a version prefix was
/// stripped), `/` when nothing is left.
#[inline]
pub fn routing_path<'a>(buf: &'a [u8], head: &RequestHead) -> &'a [u8] {
    let p = head.path.of(buf);
    if p.is_empty() { b"/" } else { p }
}

/// Applies the request side of `t` to the request in `c` (after the
/// route's filters): header lines dropped and added, the target rewritten
/// into `c.rewrite.target`. Also arms the response side.
pub fn apply_request(t: &Arc<Transform>, cfg: &Config, c: &mut Conn) {
    let ops = &t.request_headers;
    if !ops.is_empty() {
        edit_lines(ops, &c.buf, &mut c.lines, &mut c.up_extra);
    }
    if t.rewrites_target() {
        let buf = &c.buf;
        let path = routing_path(buf, &c.head);
        let pq = c.head.path_query.of(buf);
        let query = pq.iter().position(|&b| b == b'?').map(|i| &pq[i + 1..]);
        let out = &mut c.rewrite.target;
        out.clear();
        match &t.path {
            PathOp::None => out.extend_from_slice(path),
            PathOp::Prefix { strip, add } => {
                let rest = match path.strip_prefix(&strip[..]) {
                    Some(r) if !strip.is_empty() && (r.is_empty() || r[0] == b'/') => r,
                    _ => path,
                };
                out.extend_from_slice(add);
                if rest.is_empty() {
                    if add.is_empty() {
                        out.push(b'/');
                    }
                } else {
                    out.extend_from_slice(rest);
                }
            }
            PathOp::Template(tpl) => {
                let mut params = crate::router::Params::new();
                let host = c.head.host.map_or(&b""[..], |h| h.of(buf));
                let _ = cfg
                    .table
                    .lookup(host, c.head.method.of(buf), path, &mut params);
                tpl.render(params.as_slice(), out);
            }
        }
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            out.push(if first { b'?' } else { b'&' });
            first = false;
        };
        if let Some(q) = query {
            for kv in q.split(|&b| b == b'&').filter(|kv| !kv.is_empty()) {
                let name = kv.split(|&b| b == b'=').next().unwrap_or(kv);
                let dropped = t.query_remove.iter().any(|r| &r[..] == name)
                    || t.query_add.iter().any(|(r, _)| &r[..] == name);
                if !dropped {
                    sep(out);
                    out.extend_from_slice(kv);
                }
            }
        }
        for (k, v) in &t.query_add {
            sep(out);
            out.extend_from_slice(k);
            out.push(b'=');
            out.extend_from_slice(v);
        }
    }
}

/// Marks the lines `ops` drops and appends the renamed and added lines.
fn edit_lines(
    ops: &HeaderOps,
    buf: &[u8],
    lines: &mut [crate::http::parse::HeaderLine],
    extra: &mut Vec<u8>,
) {
    for l in lines.iter_mut() {
        if !l.role.forwarded() {
            continue;
        }
        let name = l.name.of(buf);
        if ops.drop.iter().any(|d| crate::http::name_eq(name, d)) {
            l.role = HeaderRole::Drop;
            if let Some((_, to)) = ops
                .rename
                .iter()
                .find(|(f, _)| crate::http::name_eq(name, f))
            {
                extra.extend_from_slice(to);
                extra.extend_from_slice(b": ");
                extra.extend_from_slice(l.value.of(buf));
                extra.extend_from_slice(b"\r\n");
            }
        }
    }
    extra.extend_from_slice(&ops.lines);
}

/// The response header phase of a route's transform, on the backend's
/// final head: its status mapped, its headers removed, renamed, set and
/// added, through the transport-neutral [`ResponseHeader`] (interim
/// answers are left alone).
pub fn response_filter(t: &Transform, resp: &mut ResponseHeader<'_>) {
    let status = resp.status();
    if (100..200).contains(&status) {
        return;
    }
    if let Some(to) = t.map_status(status) {
        resp.set_status(to);
    }
    let ops = &t.response_headers;
    if ops.is_empty() {
        return;
    }
    // Renamed values move under their new name, in order.
    let mut renamed: Vec<(&[u8], Vec<u8>)> = Vec::new();
    for (from, to) in &ops.rename {
        for v in resp.headers(from) {
            renamed.push((to, v.to_vec()));
        }
    }
    for d in &ops.drop {
        resp.remove_header(d);
    }
    for (to, v) in &renamed {
        resp.append_header(to, v);
    }
    for (name, value) in &ops.fields {
        resp.append_header(name, value);
    }
}

/// The response header phase of a route with `response_json`: whether
/// this answer's body is rewritten (a JSON content type; the caller checks
/// that it has a body).
pub fn rewrites_response(resp: &ResponseHeader<'_>) -> bool {
    resp.header(b"content-type")
        .is_some_and(|v| v.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")))
}

/// Rewrites a JSON document with `ops`; `None` when `body` is not JSON
/// (it is then relayed as it is).
pub fn rewrite_json(ops: &JsonOps, body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    match json::parse(body).ok()? {
        Doc::Object(e) => write_rewritten(ops, e, &mut out),
        Doc::Array(items) => {
            out.push(b'[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match json::split(it).ok()? {
                    Doc::Object(e) => write_rewritten(ops, e, &mut out),
                    _ => out.extend_from_slice(it.get().as_bytes()),
                }
            }
            out.push(b']');
        }
        Doc::Scalar(_) => return None,
    }
    Some(out)
}

fn write_rewritten(ops: &JsonOps, mut e: json::Entries<'_>, out: &mut Vec<u8>) {
    if let Some(only) = &ops.only {
        e.retain_keys(only);
    }
    e.0.retain(|(k, _)| !ops.remove.iter().any(|r| r == k));
    for (k, _) in e.0.iter_mut() {
        if let Some((_, to)) = ops.rename.iter().find(|(f, _)| f == k) {
            *k = std::borrow::Cow::Owned(to.clone());
        }
    }
    if !ops.rename.is_empty() {
        json::dedup_last_wins(&mut e.0);
    }
    json::write_object(out, e.0.iter().map(|(k, v)| (k.as_ref(), v.get())));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(only: Option<&[&str]>, remove: &[&str], rename: &[(&str, &str)]) -> JsonOps {
        JsonOps {
            rename: rename
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
            only: only.map(|o| o.iter().map(|s| s.to_string()).collect()),
            max_body_bytes: 1 << 20,
        }
    }

    #[test]
    fn json_ops() {
        let o = ops(None, &["secret"], &[("name", "title")]);
        let out = rewrite_json(&o, br#"{"id":1,"name":"W","secret":"x","price":1.50}"#).unwrap();
        assert_eq!(out, br#"{"id":1,"title":"W","price":1.50}"#);
        let o = ops(Some(&["id", "name"]), &[], &[]);
        let out = rewrite_json(&o, br#"[{"id":1,"name":"a","x":2},{"id":2,"x":3},7]"#).unwrap();
        assert_eq!(out, br#"[{"id":1,"name":"a"},{"id":2},7]"#);
        assert!(rewrite_json(&o, b"not json").is_none());
    }

    /// The response header phase picks answers by their JSON content type
    /// (the re-framing of a chunked JSON body is pinned over real sockets
    /// in tests/transform.rs).
    #[test]
    fn json_answers_are_picked_by_content_type() {
        use crate::http::message::{OwnedResponse, ResponseHeader};
        let pick = |ct: Option<&str>| {
            let mut r = OwnedResponse::new(200);
            if let Some(ct) = ct {
                r.push(b"Content-Type", ct.as_bytes());
            }
            let mut added = Vec::new();
            rewrites_response(&ResponseHeader::owned(&mut r, &mut added))
        };
        assert!(pick(Some("application/json")));
        assert!(pick(Some("application/problem+JSON; charset=utf-8")));
        assert!(!pick(Some("text/plain")));
        assert!(!pick(None));
    }

    #[test]
    fn query_encoding() {
        assert_eq!(&*encode_query("a b&c"), b"a%20b%26c");
    }
}
