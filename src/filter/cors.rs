//! CORS: preflights answered by the gateway, and the
//! `Access-Control-Allow-*` headers on actual requests from allowed
//! origins.
//!
//! Keys: `[cors]` (the default for every route) and a route's
//! `cors = { ... }` (replaces the default as a whole for that route: keys
//! it leaves out take their defaults, not the global values), `cors =
//! false` (no CORS on that route, whatever `[cors]` says) and
//! `cors = true` (the `[cors]` table, an error when there is none).
//!
//! What a request gets, on a route with CORS:
//!
//! - **Preflight** (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`): answered here, never forwarded.
//!   Allowed (origin listed, method listed, every requested header
//!   listed): `204` with `Access-Control-Allow-Origin` (the origin),
//!   `-Allow-Methods`, `-Allow-Headers`, `-Max-Age`, `-Allow-Credentials`
//!   as configured. Refused: `403` with the JSON error body and no CORS
//!   headers; the browser then blocks the actual request (it needs an
//!   ok status *and* its origin echoed), and a person reading the answer
//!   with curl sees why.
//! - **Actual request** from an allowed origin: `Access-Control-Allow-Origin`
//!   (the origin itself, `*` only for `origins = ["*"]` without
//!   credentials), `-Allow-Credentials`, `-Expose-Headers`, on the proxied
//!   answer and on ringgate's own (a 401 from auth, a 429, a 502 or 504
//!   when the backend fails): the browser lets the page read those too.
//!   Every answer on the route carries
//!   `Vary: Origin`, so a cache never serves one origin's answer to
//!   another. A disallowed origin gets no CORS headers and the request
//!   still goes through (the browser keeps the answer from the page).
//!
//! The router matches methods before the chain runs, so a route whose
//! `methods` leave out `OPTIONS` would answer a preflight 405. The early
//! phase ([`early_preflight`], before routing) therefore looks the route
//! up with the method the preflight asks about, and runs that route's
//! chain up to CORS (IP lists first) to answer it.
//!
//! Key components: [`CorsFile`] / [`RouteCorsFile`] (the keys),
//! [`Policy`] (compiled, shared by the routes that use it), [`preflight`],
//! [`request_filter`].
//!
//! Performance notes: the header lines for allowed actual requests are
//! built once at compile time; a request copies them into the response's
//! header buffer, which the connection keeps (no allocation). Only a
//! preflight allocates its reply. Routes without CORS pay nothing; the
//! early check is one method comparison.

use crate::config::Errors;
use crate::config::file::{FileConfig, RouteFile};
use crate::filter::{Reply, RequestCtx, Verdict};
use crate::phases::Early;
use crate::proxy::forward::Conn;
use crate::router::{Lookup, Method, Params};
use crate::runtime::worker::{Generation, Worker};
use serde::Deserialize;
use std::sync::Arc;

/// `[cors]`, or a route's `cors = { ... }`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    /// Allowed origins: `scheme://host[:port]`, `scheme://*.domain`
    /// (any subdomain) or `"*"` (any origin; not with credentials).
    pub origins: Option<Vec<String>>,
    /// Methods a preflight may ask for (default GET, HEAD, POST).
    pub methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for (default none beyond the
    /// CORS-safelisted ones; `"*"` = any).
    pub headers: Option<Vec<String>>,
    /// Response headers the page may read (default none beyond the
    /// safelisted ones).
    pub expose_headers: Option<Vec<String>>,
    /// Allow cookies and HTTP auth (default false).
    pub credentials: Option<bool>,
    /// How long a browser may cache a preflight (default: not sent).
    pub max_age_s: Option<u64>,
}

/// A route's `cors`: `false`, `true` or a table.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteCorsFile {
    /// `cors = false` (off on this route) or `cors = true` (the `[cors]` table).
    Switch(bool),
    /// `cors = { origins = [...], ... }`: this route's own settings.
    Table(CorsFile),
}

// By the value's type rather than `untagged`, so a misspelt key in the
// table is reported as such; a value of another type gets the message of
// an untagged enum, which the config reader words as the forms it takes.
fn no_form<E: serde::de::Error>() -> E {
    E::custom("data did not match any variant of untagged enum RouteCorsFile")
}

impl<'de> Deserialize<'de> for RouteCorsFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RouteCorsFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "true, false or a table like { origins = [\"https://app.example.com\"] }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<RouteCorsFile, E> {
                Err(no_form())
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<RouteCorsFile, E> {
                Err(no_form())
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<RouteCorsFile, E> {
                Err(no_form())
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<RouteCorsFile, E> {
                Err(no_form())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                _: A,
            ) -> Result<RouteCorsFile, A::Error> {
                Err(no_form())
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RouteCorsFile, E> {
                Ok(RouteCorsFile::Switch(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<RouteCorsFile, A::Error> {
                CorsFile::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(RouteCorsFile::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// `https://app.example.com` (lower case).
    Exact(Box<[u8]>),
    /// `https://*.example.com`: `https://` then one or more labels then
    /// `.example.com`.
    Subdomain {
        scheme: Box<[u8]>,
        suffix: Box<[u8]>,
    },
    /// `*`
    Any,
}

impl Origin {
    fn matches(&self, o: &[u8]) -> bool {
        match self {
            Origin::Exact(e) => o.eq_ignore_ascii_case(e),
            Origin::Subdomain { scheme, suffix } => {
                o.len() > scheme.len() + suffix.len()
                    && o[..scheme.len()].eq_ignore_ascii_case(scheme)
                    && o[o.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && o[scheme.len()..o.len() - suffix.len()]
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                    && o[scheme.len()] != b'.'
                    && o[o.len() - suffix.len() - 1] != b'.'
            }
            Origin::Any => true,
        }
    }
}

/// A compiled CORS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    origins: Box<[Origin]>,
    /// `Access-Control-Allow-Origin: *` (any origin, no credentials).
    star: bool,
    methods: Box<[Box<[u8]>]>,
    any_method: bool,
    /// Lower-case names.
    headers: Box<[Box<[u8]>]>,
    any_header: bool,
    /// The preflight's fixed lines: `-Allow-Methods` (unless any),
    /// `-Allow-Headers` (unless any or none), `-Max-Age`, `-Allow-Credentials`.
    preflight_lines: Box<[u8]>,
    /// An actual request's lines after `-Allow-Origin`:
    /// `-Allow-Credentials`, `-Expose-Headers`.
    actual_lines: Box<[u8]>,
}

impl Policy {
    fn origin_allowed(&self, o: &[u8]) -> bool {
        self.origins.iter().any(|p| p.matches(o))
    }
}

/// Compiles `[cors]` (errors under `cors.`).
pub fn compile_global(file: &FileConfig, errs: &mut Errors) -> Option<Arc<Policy>> {
    file.cors
        .as_ref()
        .and_then(|f| compile(f, "cors", errs))
        .map(Arc::new)
}

/// Route `i`'s policy: its own table, the global one, or none.
pub fn route_policy(
    global: Option<&Arc<Policy>>,
    r: &RouteFile,
    i: usize,
    errs: &mut Errors,
) -> Option<Arc<Policy>> {
    match &r.cors {
        None => global.cloned(),
        Some(RouteCorsFile::Switch(false)) => None,
        Some(RouteCorsFile::Switch(true)) => {
            if global.is_none() {
                errs.push(
                    format!("routes[{i}].cors"),
                    "cors = true uses the [cors] table, and there is none",
                    "add a [cors] table with origins, or give the route its own cors = { origins = [...] }",
                );
            }
            global.cloned()
        }
        Some(RouteCorsFile::Table(t)) => {
            compile(t, &format!("routes[{i}].cors"), errs).map(Arc::new)
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(crate::http::chunked::is_tchar)
}

fn compile(f: &CorsFile, key: &str, errs: &mut Errors) -> Option<Policy> {
    let before = errs.0.len();
    let k = |name: &str| format!("{key}.{name}");
    let credentials = f.credentials.unwrap_or(false);
    let mut origins = Vec::new();
    match &f.origins {
        None => errs.push(
            k("origins"),
            "missing: CORS needs the origins it allows",
            "add origins = [\"https://app.example.com\"]",
        ),
        Some(list) if list.is_empty() => errs.push(
            k("origins"),
            "the list is empty, so no origin would be allowed",
            "list origins, e.g. [\"https://app.example.com\", \"https://*.example.com\"], or turn CORS off with cors = false",
        ),
        Some(list) => {
            for o in list {
                match parse_origin(o) {
                    Some(Origin::Any) if credentials => errs.push(
                        k("origins"),
                        "\"*\" with credentials = true would let every site read answers with the user's cookies",
                        "list the origins that may send credentials",
                    ),
                    Some(p) => origins.push(p),
                    None => errs.push(
                        k("origins"),
                        format!("{o:?} is not an origin"),
                        "write scheme://host[:port] without a path, e.g. \"https://app.example.com\", \"https://*.example.com\" or \"*\"",
                    ),
                }
            }
        }
    }
    let default_methods = ["GET", "HEAD", "POST"].map(String::from).to_vec();
    let method_list = f.methods.as_ref().unwrap_or(&default_methods);
    if method_list.is_empty() {
        errs.push(
            k("methods"),
            "the list is empty, so every preflight would be refused",
            "list methods, e.g. [\"GET\", \"POST\"], or remove the key for GET, HEAD, POST",
        );
    }
    for m in method_list {
        if m != "*" && Method::from_bytes(m.as_bytes()).is_none() {
            errs.push(
                k("methods"),
                format!("unknown method {m:?}"),
                "use upper-case methods: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, or \"*\"",
            );
        }
    }
    let names = |name: &str, list: Option<&Vec<String>>, errs: &mut Errors| -> Vec<String> {
        let list = list.cloned().unwrap_or_default();
        for h in &list {
            if h != "*" && !is_token(h) {
                errs.push(
                    k(name),
                    format!("{h:?} is not a header name"),
                    "list header names, e.g. [\"Authorization\", \"Content-Type\"]",
                );
            }
        }
        list
    };
    let headers = names("headers", f.headers.as_ref(), errs);
    let expose = names("expose_headers", f.expose_headers.as_ref(), errs);
    if errs.0.len() > before {
        return None;
    }

    let any_method = method_list.iter().any(|m| m == "*");
    let any_header = headers.iter().any(|h| h == "*");
    let mut preflight_lines = Vec::new();
    let line = |out: &mut Vec<u8>, name: &str, value: &str| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    if !any_method {
        line(
            &mut preflight_lines,
            "Access-Control-Allow-Methods",
            &method_list.join(", "),
        );
    }
    if !any_header && !headers.is_empty() {
        line(
            &mut preflight_lines,
            "Access-Control-Allow-Headers",
            &headers.join(", "),
        );
    }
    if let Some(s) = f.max_age_s {
        line(
            &mut preflight_lines,
            "Access-Control-Max-Age",
            itoa::Buffer::new().format(s),
        );
    }
    let mut actual_lines = Vec::new();
    if credentials {
        line(
            &mut preflight_lines,
            "Access-Control-Allow-Credentials",
            "true",
        );
        line(
            &mut actual_lines,
            "Access-Control-Allow-Credentials",
            "true",
        );
    }
    if !expose.is_empty() {
        line(
            &mut actual_lines,
            "Access-Control-Expose-Headers",
            &expose.join(", "),
        );
    }
    Some(Policy {
        star: origins.contains(&Origin::Any) && !credentials,
        origins: origins.into(),
        methods: method_list.iter().map(|m| m.as_bytes().into()).collect(),
        any_method,
        headers: headers
            .iter()
            .map(|h| h.to_ascii_lowercase().into_bytes().into())
            .collect(),
        any_header,
        preflight_lines: preflight_lines.into(),
        actual_lines: actual_lines.into(),
    })
}

/// Parses `scheme://host[:port]`, `scheme://*.domain[:port]` or `*`.
fn parse_origin(s: &str) -> Option<Origin> {
    if s == "*" {
        return Some(Origin::Any);
    }
    let lower = s.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    let scheme_ok = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']')?;
        match &rest[end + 1..] {
            "" => (&rest[..=end], None),
            after => (&rest[..=end], Some(after.strip_prefix(':')?)),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let (wild, name) = match host.strip_prefix("*.") {
        Some(n) => (true, n),
        None => (false, host),
    };
    let host_ok = if name.starts_with('[') && !wild {
        name.ends_with(']')
            && name[1..name.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok()
    } else {
        !name.is_empty()
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if !scheme_ok || !port_ok || !host_ok {
        return None;
    }
    if wild {
        let scheme = format!("{scheme}://").into_bytes().into();
        let suffix = match port {
            Some(p) => format!(".{name}:{p}"),
            None => format!(".{name}"),
        };
        Some(Origin::Subdomain {
            scheme,
            suffix: suffix.into_bytes().into(),
        })
    } else {
        Some(Origin::Exact(lower.into_bytes().into()))
    }
}

/// True when the request is a CORS preflight.
fn is_preflight(ctx: &RequestCtx<'_>) -> bool {
    ctx.method() == b"OPTIONS"
        && ctx.header(b"origin").is_some()
        && ctx.header(b"access-control-request-method").is_some()
}

/// The request filter: answers a preflight; on an actual request adds
/// the CORS response headers (and `Vary: Origin`) and goes on.
pub fn request_filter(p: &Policy, ctx: &mut RequestCtx<'_>) -> Verdict {
    if is_preflight(ctx) {
        return Verdict::Reply(preflight(p, ctx));
    }
    let out = &mut *ctx.response_headers;
    if p.star {
        out.extend_from_slice(b"Access-Control-Allow-Origin: *\r\n");
        out.extend_from_slice(&p.actual_lines);
        return Verdict::Continue;
    }
    out.extend_from_slice(b"Vary: Origin\r\n");
    let origin = ctx
        .lines
        .iter()
        .find(|l| crate::http::name_eq(l.name.of(ctx.buf), b"origin"))
        .map(|l| l.value.of(ctx.buf));
    if let Some(o) = origin
        && p.origin_allowed(o)
    {
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(o);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&p.actual_lines);
    }
    Verdict::Continue
}

/// The answer to a preflight (the caller checked it is one).
pub fn preflight(p: &Policy, ctx: &RequestCtx<'_>) -> Reply {
    let origin = ctx.header(b"origin").unwrap_or_default();
    let method = ctx
        .header(b"access-control-request-method")
        .unwrap_or_default();
    let vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
    let refuse = |why: &str| Reply::error(403, why, ctx.request_id).with_header("Vary", vary);
    if !p.origin_allowed(origin) {
        return refuse("CORS preflight refused: the origin is not allowed");
    }
    if !p.any_method && !p.methods.iter().any(|m| **m == *method) {
        return refuse("CORS preflight refused: the method is not allowed");
    }
    let asked = ctx.headers(b"access-control-request-headers");
    let mut asked_all = Vec::new();
    for v in asked {
        for name in v.split(|&b| b == b',') {
            let name = name.trim_ascii();
            if name.is_empty() {
                continue;
            }
            if !p.any_header && !p.headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                return refuse("CORS preflight refused: a requested header is not allowed");
            }
            if !asked_all.is_empty() {
                asked_all.extend_from_slice(b", ");
            }
            asked_all.extend_from_slice(name);
        }
    }
    let mut headers = Vec::with_capacity(256);
    headers.extend_from_slice(b"Access-Control-Allow-Origin: ");
    headers.extend_from_slice(if p.star { b"*" } else { origin });
    headers.extend_from_slice(b"\r\n");
    if p.any_method {
        headers.extend_from_slice(b"Access-Control-Allow-Methods: ");
        headers.extend_from_slice(method);
        headers.extend_from_slice(b"\r\n");
    }
    if p.any_header && !asked_all.is_empty() {
        headers.extend_from_slice(b"Access-Control-Allow-Headers: ");
        headers.extend_from_slice(&asked_all);
        headers.extend_from_slice(b"\r\n");
    }
    headers.extend_from_slice(&p.preflight_lines);
    headers.extend_from_slice(b"Vary: ");
    headers.extend_from_slice(vary.as_bytes());
    headers.extend_from_slice(b"\r\n");
    Reply {
        status: 204,
        headers,
        content_type: "text/plain",
        body: Vec::new(),
    }
}

/// The early phase's part: a preflight for a route that has CORS is
/// answered before routing, so the route's `methods` need not list
/// `OPTIONS`. The route is the one the preflight's
/// `Access-Control-Request-Method` would reach; its chain runs up to CORS
/// (IP lists refuse first). `None`: not a preflight, or that route has no
/// CORS (routing goes on as usual).
pub fn early_preflight(w: &Worker, snap: &Generation, c: &mut Conn) -> Option<Early> {
    let cfg = &snap.config;
    let header = |name: &[u8]| {
        c.lines
            .iter()
            .find(|l| crate::http::name_eq(l.name.of(&c.buf), name))
            .map(|l| l.value.of(&c.buf))
    };
    header(b"origin")?;
    let method = header(b"access-control-request-method")?;
    let host = c.head.host.map_or(&b""[..], |h| h.of(&c.buf));
    let path = c.head.path.of(&c.buf);
    let version = cfg
        .versioning
        .as_ref()
        .map(|v| v.resolve(&c.buf, &c.head, &c.lines));
    let mut params = Params::new();
    let route = match cfg.table.lookup(
        host,
        method,
        version.as_ref().map_or(path, |v| v.route_path(path)),
        &mut params,
    ) {
        Lookup::Found { route } => match (&cfg.versioning, &version) {
            (Some(v), Some(req)) => v.select(route, req).ok()?,
            _ => route,
        },
        _ => return None,
    } as usize;
    let chain = cfg.routes[route].chain.clone();
    let rid = c.rid;
    let mut ctx = RequestCtx::new(w, snap, route, c, rid.as_bytes());
    let reply = chain.preflight(&mut ctx)?;
    Some(Early::Answer {
        reply,
        body_end: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml: &str) -> Result<Policy, Vec<String>> {
        let f: CorsFile = toml::from_str(toml).unwrap();
        let mut errs = Errors(Vec::new());
        compile(&f, "cors", &mut errs).ok_or_else(|| errs.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn wildcard_subdomains() {
        let p =
            policy(r#"origins = ["https://app.example.com", "https://*.example.com"]"#).unwrap();
        for ok in [
            "https://app.example.com",
            "https://a.example.com",
            "https://a.b.example.com",
            "HTTPS://A.Example.com",
        ] {
            assert!(p.origin_allowed(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "https://example.com",
            "https://.example.com",
            "http://a.example.com",
            "https://a.example.com.evil.test",
            "https://a.example.com:8443",
            "https://evil.test/.example.com",
            "https://evil.test@a.example.com",
            "null",
            "",
        ] {
            assert!(!p.origin_allowed(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn ports_and_ipv6_origins() {
        let p = policy(r#"origins = ["http://127.0.0.1:8080", "http://[::1]:3000", "https://*.example.com:8443"]"#)
            .unwrap();
        assert!(p.origin_allowed(b"http://127.0.0.1:8080"));
        assert!(!p.origin_allowed(b"http://127.0.0.1:8081"));
        assert!(p.origin_allowed(b"http://[::1]:3000"));
        assert!(p.origin_allowed(b"https://a.example.com:8443"));
        assert!(!p.origin_allowed(b"https://a.example.com"));
    }

    #[test]
    fn config_errors() {
        let e = policy(
            r#"origins = ["https://app.example.com/", "*"]
credentials = true
methods = ["get"]
headers = ["Bad Header"]"#,
        )
        .unwrap_err();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("cors.origins: \"https://app.example.com/\" is not an origin"));
        assert!(e[1].contains("credentials"));
        assert!(e[2].starts_with("cors.methods: unknown method \"get\""));
        assert!(e[3].starts_with("cors.headers:"));
        assert!(policy("").unwrap_err()[0].starts_with("cors.origins: missing"));
    }

    #[test]
    fn fixed_lines() {
        let p = policy(
            r#"origins = ["https://app.example.com"]
methods = ["GET", "POST"]
headers = ["Authorization", "Content-Type"]
expose_headers = ["X-Request-Id"]
credentials = true
max_age_s = 600"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&p.preflight_lines),
            "Access-Control-Allow-Methods: GET, POST\r\nAccess-Control-Allow-Headers: Authorization, Content-Type\r\nAccess-Control-Max-Age: 600\r\nAccess-Control-Allow-Credentials: true\r\n"
        );
        assert_eq!(
            String::from_utf8_lossy(&p.actual_lines),
            "Access-Control-Allow-Credentials: true\r\nAccess-Control-Expose-Headers: X-Request-Id\r\n"
        );
        assert!(!p.star);
    }
}
