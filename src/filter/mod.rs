//! Request filters: the per-route chain that runs between routing and the
//! upstream (design phase 3), and adds headers on the way back (phase 5).
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
pub mod rate_limit;
pub mod transform;

use crate::http::parse::{HeaderLine, RequestHead};
use crate::runtime::worker::Worker;
use std::net::SocketAddr;
use std::rc::Rc;

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

impl RequestCtx<'_> {
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
    /// Authentication and authorization.
    Auth(auth::RoutePolicy),
    /// Rate limits.
    RateLimit(rate_limit::RoutePolicy),
}

/// A route's filters, in order.
#[derive(Debug, Default)]
pub struct Chain {
    /// The filters, run first to last.
    pub filters: Vec<RouteFilter>,
}

impl Chain {
    /// Points the chain's auth policy at `auth` (a reload that kept the
    /// running auth).
    pub fn use_auth(&mut self, auth: &std::sync::Arc<auth::Auth>) {
        for f in &mut self.filters {
            if let RouteFilter::Auth(p) = f {
                p.use_auth(auth);
            }
        }
    }

    /// Assembles a route's chain: auth, then rate limits (then, as it
    /// lands, cache lookup). This is the one place that decides which
    /// filters a route runs; after them the connection loop applies the
    /// route's request transform ([`transform::apply_request`], which edits
    /// the forwarded head itself) and then composes ([`crate::proxy::compose`])
    /// or forwards.
    pub fn compile(
        auth: Option<auth::RoutePolicy>,
        rate: Option<rate_limit::RoutePolicy>,
    ) -> Chain {
        let mut filters = Vec::new();
        if let Some(a) = auth {
            filters.push(RouteFilter::Auth(a));
        }
        if let Some(r) = rate {
            filters.push(RouteFilter::RateLimit(r));
        }
        Chain { filters }
    }

    /// True when the route has no filters (the plain proxy path).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs the request filters in order.
    pub async fn request(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        for f in &self.filters {
            let v = match f {
                RouteFilter::Auth(p) => auth::request_filter(p, ctx),
                RouteFilter::RateLimit(p) => rate_limit::request_filter(p, ctx).await,
            };
            if let Verdict::Reply(r) = v {
                return Verdict::Reply(r);
            }
        }
        Verdict::Continue
    }
}
