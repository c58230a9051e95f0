//! Request filters: the per-route chain that runs between routing and the
//! upstream (design phase 3), and the response header and body phases (phase 5).
//! The core reaches it through [`crate::phases`].
//!
//! Key components: [`Chain`] (a route's filters in order, assembled once in
//! [`Chain::compile`] — read that one function to know what a route does),
//! [`RequestCtx`] (what a filter sees and may change), [`Verdict`] (go on,
//! or answer the client directly; the request then never reaches a
//! backend).
//!
//! Performance notes: a route without filters has an empty chain and pays a
//! length check. Filters dispatch through an enum (static calls, no boxing).
//! Worker-local filter state (token caches, rate-limit shards) lives in the
//! worker's config generation ([`crate::runtime::worker::Generation`]), so
//! a reload replaces it with the config; global state lives in the config's
//! `Arc`s and is updated by control-plane threads.

pub mod auth;
pub mod cache;
pub mod client_addr;
pub mod compose;
pub mod compress;
pub mod cors;
pub mod grpc_json;
pub mod ip_list;
pub mod rate_limit;
pub mod transform;
pub mod versioning;

pub use cache::PurgeLog;

use crate::http::parse::{HeaderLine, RequestHead};
use crate::proxy::forward::Conn;
use crate::runtime::worker::{Generation, Worker};

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A JWT (Bearer, header, query or cookie).
    Jwt,
    /// An API key.
    ApiKey,
    /// A verified TLS client certificate (`auth = ["mtls"]`).
    Mtls,
}

impl AuthMethod {
    /// The value of `X-Auth-Method`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Mtls => "mtls",
        }
    }
}

/// Who the caller is, once authenticated.
#[derive(Debug, Clone)]
pub struct Identity {
    /// How they authenticated.
    pub method: AuthMethod,
    /// The subject (`sub` claim, or the consumer id for API keys).
    pub subject: String,
    /// Consumer id, when the caller is a configured consumer.
    pub consumer: Option<String>,
    /// Consumer tier (for per-tier limits).
    pub tier: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// SHA-256 of the API key used (hex), for rate-limit keys.
    pub api_key_id: Option<String>,
}

/// What a filter sees of the request, and where it writes.
pub struct RequestCtx<'a> {
    /// The worker running this request.
    pub worker: &'a Worker,
    /// The config generation serving this request (its config, and this
    /// worker's auth state and rate-limit shard for it).
    pub generation: &'a crate::runtime::worker::Generation,
    /// Route index.
    pub route: usize,
    /// The client buffer the head spans point into.
    pub buf: &'a [u8],
    /// Parsed head.
    pub head: &'a RequestHead,
    /// Header lines.
    pub lines: &'a [HeaderLine],
    /// Client address (socket peer).
    pub peer: SocketAddr,
    /// Set by the auth filter.
    pub identity: Option<Rc<Identity>>,
    /// The connection's TLS facts (`None` on plain HTTP): the verified
    /// client certificate for `auth = ["mtls"]`.
    pub tls: Option<&'a crate::tls::ConnTls>,
    /// Header lines (`Name: value\r\n`) to add to the upstream request.
    pub upstream_headers: &'a mut Vec<u8>,
    /// Header lines to add to the response for the client.
    pub response_headers: &'a mut Vec<u8>,
    /// Set by the auth filter on a route with `hide_credentials`: where the
    /// credential that authenticated the request was found. The connection
    /// loop removes it after the filters ([`auth::hide_credentials`]).
    pub hide_credentials: auth::CredentialSources,
    /// The request id.
    pub request_id: &'a [u8],
}

impl<'a> RequestCtx<'a> {
    /// The context of the request parsed in `c`, on `route`.
    pub fn new(
        worker: &'a Worker,
        generation: &'a Generation,
        route: usize,
        c: &'a mut Conn,
        request_id: &'a [u8],
    ) -> RequestCtx<'a> {
        RequestCtx {
            worker,
            generation,
            route,
            buf: &c.buf,
            head: &c.head,
            lines: &c.lines,
            peer: c.peer,
            identity: None,
            tls: c.tls.as_deref(),
            upstream_headers: &mut c.up_extra,
            response_headers: &mut c.resp_extra,
            hide_credentials: Default::default(),
            request_id,
        }
    }

    /// The method token.
    pub fn method(&self) -> &[u8] {
        self.head.method.of(self.buf)
    }

    /// The path (without the query).
    pub fn path(&self) -> &[u8] {
        self.head.path.of(self.buf)
    }

    /// First value of a request header (case-insensitive name).
    pub fn header(&self, lower_name: &[u8]) -> Option<&[u8]> {
        self.lines
            .iter()
            .find(|l| crate::http::name_eq(l.name.of(self.buf), lower_name))
            .map(|l| l.value.of(self.buf))
    }

    /// All values of a request header.
    pub fn headers<'s>(&'s self, lower_name: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's {
        self.lines
            .iter()
            .filter(move |l| crate::http::name_eq(l.name.of(self.buf), lower_name))
            .map(|l| l.value.of(self.buf))
    }

    /// The query string (after `?`), if any.
    pub fn query(&self) -> Option<&[u8]> {
        let pq = self.head.path_query.of(self.buf);
        pq.iter().position(|&b| b == b'?').map(|i| &pq[i + 1..])
    }

    /// The value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &[u8]) -> Option<&[u8]> {
        self.query()?.split(|&b| b == b'&').find_map(|kv| {
            let (k, v) = match kv.iter().position(|&b| b == b'=') {
                Some(i) => (&kv[..i], &kv[i + 1..]),
                None => (kv, &b""[..]),
            };
            (k == name).then_some(v)
        })
    }
}

/// A response a filter sends instead of forwarding.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra header lines (`Name: value\r\n`).
    pub headers: Vec<u8>,
    /// Content type of `body`.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON error reply in the gateway's error format.
    pub fn error(status: u16, message: &str, request_id: &[u8]) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            body: error_body(status, message, &[], request_id),
        }
    }

    /// Adds a header line.
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.extend_from_slice(name.as_bytes());
        self.headers.extend_from_slice(b": ");
        self.headers.extend_from_slice(value.as_bytes());
        self.headers.extend_from_slice(b"\r\n");
        self
    }
}

/// An error body in the one key order every error ringgate answers has:
/// `{"error": ..., "status": N, "request_id": ...}`, with `more` string
/// members after `error` (serde_json's maps sort their keys, which put
/// `request_id` before `status`).
pub fn error_body(status: u16, message: &str, more: &[(&str, &str)], request_id: &[u8]) -> Vec<u8> {
    let rid = String::from_utf8_lossy(request_id);
    let mut b = Vec::with_capacity(48 + message.len() + rid.len());
    let string = |b: &mut Vec<u8>, name: &str, value: &str| {
        b.extend_from_slice(if b.is_empty() { b"{" } else { b"," });
        // Writing a str to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *b, name);
        b.push(b':');
        let _ = serde_json::to_writer(&mut *b, value);
    };
    string(&mut b, "error", message);
    for (name, value) in more {
        string(&mut b, name, value);
    }
    b.extend_from_slice(b",\"status\":");
    b.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    string(&mut b, "request_id", &rid);
    b.push(b'}');
    b
}

/// A filter's decision.
pub enum Verdict {
    /// Go on to the next filter, then the upstream.
    Continue,
    /// Answer the client with this and stop.
    Reply(Reply),
}

/// One filter on a route.
#[derive(Debug)]
pub enum RouteFilter {
    /// IP allow and deny lists.
    IpList(ip_list::Policy),
    /// CORS: preflights answered, `Access-Control-*` on answers.
    Cors(Arc<cors::Policy>),
    /// Authentication and authorization.
    Auth(auth::RoutePolicy),
    /// Rate limits.
    RateLimit(rate_limit::RoutePolicy),
}

/// A route's filters, in order, and what they change on the way up.
#[derive(Debug, Default)]
pub struct Chain {
    /// The request filters, run first to last.
    pub filters: Vec<RouteFilter>,
    /// The route's request and response transform.
    pub transform: Option<Arc<transform::Transform>>,
    /// Response compression.
    pub compress: Option<Arc<compress::Policy>>,
}

impl Chain {
    /// Points the chain's auth policy at `auth` (a reload that kept the
    /// running auth).
    pub fn use_auth(&mut self, auth: &Arc<auth::Auth>) {
        for f in &mut self.filters {
            if let RouteFilter::Auth(p) = f {
                p.use_auth(auth);
            }
        }
    }

    /// Assembles a route's chain. This is the one place that decides which
    /// filters a route runs and in which order: IP lists, CORS, auth, then
    /// rate limits on the request; then, on the forwarded head, credentials
    /// hidden and the request transform.
    pub fn compile(
        ip: Option<ip_list::Policy>,
        cors: Option<Arc<cors::Policy>>,
        auth: Option<auth::RoutePolicy>,
        rate: Option<rate_limit::RoutePolicy>,
        transform: Option<Arc<transform::Transform>>,
        compress: Option<Arc<compress::Policy>>,
    ) -> Chain {
        let mut filters = Vec::new();
        if let Some(i) = ip {
            filters.push(RouteFilter::IpList(i));
        }
        if let Some(c) = cors {
            filters.push(RouteFilter::Cors(c));
        }
        if let Some(a) = auth {
            filters.push(RouteFilter::Auth(a));
        }
        if let Some(r) = rate {
            filters.push(RouteFilter::RateLimit(r));
        }
        Chain {
            filters,
            transform,
            compress,
        }
    }

    /// True when the route has no filters (the plain proxy path).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty() && self.transform.is_none() && self.compress.is_none()
    }

    /// The request filter phase: each filter in order may answer (the
    /// request then goes no further) or let it go on.
    pub async fn request(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        for f in &self.filters {
            let v = match f {
                RouteFilter::IpList(p) => ip_list::request_filter(p, ctx),
                RouteFilter::Cors(p) => cors::request_filter(p, ctx),
                RouteFilter::Auth(p) => auth::request_filter(p, ctx),
                RouteFilter::RateLimit(p) => rate_limit::request_filter(p, ctx).await,
            };
            if let Verdict::Reply(r) = v {
                return Verdict::Reply(r);
            }
        }
        Verdict::Continue
    }

    /// A CORS preflight on this route, answered before routing
    /// ([`cors::early_preflight`]): the filters before CORS (IP lists) may
    /// refuse it, then CORS answers. `None` when the route has no CORS.
    pub fn preflight(&self, ctx: &mut RequestCtx<'_>) -> Option<Reply> {
        for f in &self.filters {
            match f {
                RouteFilter::IpList(p) => {
                    if let Verdict::Reply(r) = ip_list::request_filter(p, ctx) {
                        return Some(r);
                    }
                }
                RouteFilter::Cors(p) => return Some(cors::preflight(p, ctx)),
                _ => {}
            }
        }
        None
    }

    /// The upstream request filter phase: edits the head that goes to the
    /// backend (the credential that authenticated the request removed on a
    /// `hide_credentials` route, then the request transform).
    pub fn upstream_request(
        &self,
        cfg: &crate::config::Config,
        c: &mut Conn,
        hide: auth::CredentialSources,
    ) {
        if !hide.is_empty()
            && let Some(a) = &cfg.auth
        {
            auth::hide_credentials(a, hide, c);
        }
        if let Some(t) = &self.transform {
            transform::apply_request(t, cfg, c);
        }
        // Negotiated on the request, used by the response phases.
        if let Some(p) = &self.compress {
            let buf = &c.buf;
            let accept = c
                .lines
                .iter()
                .filter(|l| crate::http::name_eq(l.name.of(buf), b"accept-encoding"))
                .map(|l| l.value.of(buf));
            c.coding = compress::negotiate(p, accept);
        }
    }

    /// True when the route has response header or body filters.
    #[inline]
    pub fn has_response_phase(&self) -> bool {
        self.compress.is_some()
            || self
                .transform
                .as_ref()
                .is_some_and(|t| t.json.is_some() || t.edits_response_head())
    }

    /// The response header phase, on a proxied answer: filters read and
    /// change its head, and decide whether its body goes through the body
    /// phase: the JSON rewrite (its ops returned: the body is held whole)
    /// and compression (an encoder left in `c.encoder`).
    pub fn response(&self, c: &mut Conn) -> Option<&transform::JsonOps> {
        let head_request = c.head.is_head;
        let has_body = c.rhead.framing_for(head_request) != crate::http::parse::BodyFraming::None;
        let mut resp = crate::http::message::ResponseHeader::h1(
            &c.ubuf,
            &mut c.rhead,
            &mut c.rlines,
            &mut c.resp_extra,
        );
        if let Some(t) = &self.transform {
            transform::response_filter(t, &mut resp);
        }
        let json = self
            .transform
            .as_ref()
            .and_then(|t| t.json.as_ref())
            .filter(|_| has_body && transform::rewrites_response(&resp));
        let mut encoder = None;
        if let (Some(p), Some(coding)) = (&self.compress, c.coding)
            && compress::response_filter(p, coding, head_request, &mut resp)
        {
            encoder = compress::Encoder::new(p, coding).ok();
        }
        c.encoder = encoder;
        json
    }
}
