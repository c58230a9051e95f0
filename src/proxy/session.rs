//! One request, from its parsed head to its log line: the lifecycle in one
//! place.
//!
//! ```text
//! Session::start     request id, trace context, what the log line needs
//!   run:
//!     early request  features answering before routing (token endpoint),
//!                    the API version asked for           phases::early_request
//!     route          host + path trie + method + version  → 404 / 405 / 400
//!     limits         Content-Length over max_body_bytes   → 413
//!     request        the route's chain: IP lists, CORS preflight, auth,
//!                    rate limits; any filter may answer    Chain::request
//!     upstream req   the chain edits the forwarded head    Chain::upstream_request
//!     exchange       cache, compose or forward (response   phases::exchange
//!                    header and body phases run inside)
//!   respond          THE way out: every answer — proxied, filter-made,
//!                    error, cache hit, token endpoint — is written (when
//!                    not yet), the keep-alive decision is made, the
//!                    request leaves the buffer, metrics and the access log
//!                    are written. Nothing else ends a request.
//! ```
//!
//! Performance notes: a route without filters runs no filter code (the
//! chain's emptiness is one length check); nothing here allocates per
//! request: the log fields are copied into a buffer the connection keeps.

use crate::error::{Error, ErrorKind};
use crate::filter::{Reply, RequestCtx, Verdict};
use crate::http::conn::write_error;
use crate::http::parse::BodyFraming;
use crate::proxy::forward::{Conn, Outcome};
use crate::router::{Lookup, Params};
use crate::runtime::worker::{Generation, Worker};
use crate::telemetry::access_log::{Record, push_redacted};
use crate::telemetry::trace::TraceContext;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;
use std::time::Instant;

/// What the connection does after a request.
pub enum Next {
    /// Read the next request (pipelined bytes may already be buffered).
    KeepAlive,
    /// Close the connection.
    Close,
    /// The backend switched protocols: tunnel the bytes both ways.
    Upgrade(crate::upstream::tls::UpStream),
}

/// How a request is answered; [`Session::respond`] turns each into bytes
/// on the wire (when not written yet), a keep-alive decision and a log
/// line.
pub enum Answer {
    /// ringgate answers with this (a filter's reply, the token endpoint).
    Reply(Reply),
    /// ringgate answers with this error.
    Error(Error, Detail),
    /// The response was written already (proxied, a cache hit, compose).
    Sent {
        /// Status the client got.
        status: u16,
        /// The connection may serve another request.
        keep_alive: bool,
        /// The request is still in the buffer (the head only: the
        /// answer did not need its body).
        head_left: bool,
    },
    /// The backend switched protocols (the 101 was written).
    Upgrade(crate::upstream::tls::UpStream),
    /// The client connection is unusable: close without a word.
    Abort,
}

/// What an error answer carries beyond its [`Error`] (copies: the error
/// path may allocate).
#[derive(Default)]
pub struct Detail {
    /// `Allow` of a 405.
    allow: Option<Box<str>>,
    /// A message made from the config, instead of the error's own.
    message: Option<Box<str>>,
}

/// Where the request's body is, for the way out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Not read by ringgate: still in the buffer or on the socket.
    Unread,
    /// Read by ringgate (a request it answered itself): the request ends
    /// at this offset in the buffer.
    ReadTo(usize),
}

/// One request's state between its head and its log line.
pub struct Session<'a> {
    w: &'a Worker,
    snap: Rc<Generation>,
    started: Instant,
    route: Option<usize>,
    method_slot: usize,
    bytes_in: u64,
    trace: TraceContext,
    body: Body,
}

impl<'a> Session<'a> {
    /// Starts the session of the request whose head is parsed in `c`.
    pub fn start(w: &'a Worker, snap: Rc<Generation>, c: &mut Conn) -> Session<'a> {
        let srv = &snap.config.server;
        c.set_request_id(w);
        c.trusted_peer = srv.trusts(c.peer.ip());
        let started = Instant::now();
        c.started = started;
        c.upstream_addr = None;
        c.upstream_id = None;
        c.upstream_us = None;
        c.bytes_out = 0;
        c.rewrite.clear();
        c.coding = None;
        c.encoder = None;
        c.up_extra.clear();
        c.resp_extra.clear();
        // Strict-Transport-Security on every answer of an HTTPS listener
        // that sets hsts_max_age_s.
        if let Some(h) = c.tls.as_ref().and_then(|t| t.listener.hsts.as_ref()) {
            c.resp_extra.extend_from_slice(h);
        }
        let method = c.head.method.of(&c.buf);
        let trace = TraceContext::new(c.head.traceparent.map(|t| t.of(&c.buf)), &c.fresh);
        let bytes_in = c.head.len as u64
            + match c.head.framing {
                BodyFraming::Length(n) => n,
                _ => 0,
            };
        let method_slot = crate::telemetry::metrics::method_slot(method);
        if w.log.borrow().is_some() {
            capture_log_fields(c, &snap.config.log.redact_query);
        }
        Session {
            w,
            snap,
            started,
            route: None,
            method_slot,
            bytes_in,
            trace,
            body: Body::Unread,
        }
    }

    /// The phases up to an answer (the connection loop then hands it to
    /// [`Self::respond`]).
    pub async fn run<S>(&mut self, client: &mut S, c: &mut Conn) -> Answer
    where
        S: crate::http::ClientIo,
    {
        let w = self.w;
        let snap = self.snap.clone();
        let cfg = &snap.config;

        // Early request: features that answer before routing.
        let early = if crate::phases::wants_early(cfg, c) {
            crate::phases::early_request(w, &snap, client, c).await
        } else {
            crate::phases::Early::Continue
        };
        match early {
            crate::phases::Early::Continue => {}
            crate::phases::Early::Answer { reply, body_end } => {
                if let Some(end) = body_end {
                    self.body = Body::ReadTo(end);
                }
                return Answer::Reply(reply);
            }
            crate::phases::Early::Error(e) => return Answer::Error(e, Detail::default()),
        }

        // Route: host, path (without a version prefix), method, version.
        let version = cfg
            .versioning
            .as_ref()
            .map(|v| v.resolve(&c.buf, &c.head, &c.lines));
        let lookup = {
            let host = c.head.host.map_or(&b""[..], |h| h.of(&c.buf));
            let mut params = Params::new();
            let path = c.head.path.of(&c.buf);
            match cfg.table.lookup(
                host,
                c.head.method.of(&c.buf),
                version.map_or(path, |v| v.route_path(path)),
                &mut params,
            ) {
                Lookup::Found { route } => match (&cfg.versioning, &version) {
                    (Some(v), Some(req)) => v.select(route, req).map_err(|m| {
                        let e = Error::new(ErrorKind::BadRequest, "unknown API version");
                        let detail = Detail {
                            allow: None,
                            message: Some(m.into()),
                        };
                        (e, detail)
                    }),
                    _ => Ok(route),
                },
                Lookup::MethodNotAllowed { allow } => Err((
                    Error::new(ErrorKind::MethodNotAllowed, "method not allowed"),
                    Detail {
                        allow: Some(allow.into()),
                        message: None,
                    },
                )),
                Lookup::NotFound => Err((
                    Error::new(ErrorKind::NoRoute, "no route matches this request"),
                    Detail::default(),
                )),
            }
        };
        let route = match lookup {
            Ok(r) => r as usize,
            Err((e, detail)) => return Answer::Error(e, detail),
        };
        self.route = Some(route);
        // An upgrade the route does not allow is dropped: the request goes
        // on as plain HTTP/1.1.
        if let Some(u) = c.head.upgrade {
            let p = u.of(&c.buf).trim_ascii();
            if !cfg.routes[route]
                .upgrades
                .iter()
                .any(|a| a.eq_ignore_ascii_case(p))
            {
                c.head.upgrade = None;
            }
        }
        if let Some(v) = version {
            v.apply(c);
        }
        if let BodyFraming::Length(n) = c.head.framing
            && n > cfg.server.max_body_bytes
        {
            return Answer::Error(
                Error::new(ErrorKind::BodyTooLarge, "request body too large").closing(true),
                Detail::default(),
            );
        }

        // Request filters, in the route's compiled chain.
        self.trace.write_header(&mut c.up_extra);
        let rc = &cfg.routes[route];
        if let Some(d) = &rc.deprecation {
            c.resp_extra.extend_from_slice(d);
        }
        let chain = &rc.chain;
        if !chain.is_empty() {
            let rid = c.rid;
            let mut ctx = RequestCtx::new(w, &snap, route, c, rid.as_bytes());
            let verdict = chain.request(&mut ctx).await;
            let hide = ctx.hide_credentials;
            if let Verdict::Reply(reply) = verdict {
                return Answer::Reply(reply);
            }
            // Upstream request filters: the chain edits the forwarded head
            // (credentials hidden, the request transform).
            chain.upstream_request(cfg, c, hide);
            if !hide.is_empty() && w.log.borrow().is_some() {
                // The hidden credential is not logged either.
                let l = &mut c.log_fields;
                let start = l.len();
                push_redacted(l, c.head.path_query.of(&c.buf), &cfg.log.redact_query);
                c.log_spans[1] = (start, l.len());
            }
        }

        // The exchange: cache, compose or forward; the response phases run
        // inside it.
        w.in_flight.set(w.in_flight.get() + 1);
        // A route with no cache, compose or body transform is forwarded
        // here, one future less deep than through the registry's dispatch
        // (each level of nesting moves the forward's state once more).
        let outcome = if rc.cache.is_none()
            && rc.compose.is_none()
            && rc.transform.is_none()
            && rc.grpc_json.is_none()
        {
            crate::proxy::forward::forward(w, &snap, route, client, c).await
        } else {
            crate::phases::exchange(w, &snap, route, client, c).await
        };
        w.in_flight.set(w.in_flight.get() - 1);
        // The upstream buffer the exchange borrowed goes back to the worker.
        w.return_ubuf(&mut c.ubuf, cfg.server.buffer_bytes);
        match outcome {
            Outcome::Done { keep_alive } => Answer::Sent {
                status: c.rhead.status,
                keep_alive,
                head_left: false,
            },
            Outcome::Composed { status, keep_alive } => Answer::Sent {
                status,
                keep_alive,
                head_left: true,
            },
            Outcome::Error(e) => Answer::Error(e, Detail::default()),
            Outcome::Upgrade(us) => Answer::Upgrade(us),
            Outcome::Abort => Answer::Abort,
        }
    }

    /// The one way out: writes the answer when ringgate makes it, decides
    /// whether the connection stays open, drops the request from the
    /// buffer, and records the request in metrics and the access log.
    pub async fn respond<S>(&mut self, client: &mut S, c: &mut Conn, answer: Answer) -> Next
    where
        S: AsyncWriteRent,
    {
        let w = self.w;
        let draining = w.draining.get();
        let (status, next) = match answer {
            Answer::Sent {
                status,
                keep_alive,
                head_left,
            } => {
                if keep_alive && head_left {
                    c.consume_head_only();
                }
                (
                    status,
                    if keep_alive {
                        Next::KeepAlive
                    } else {
                        Next::Close
                    },
                )
            }
            Answer::Reply(reply) if c.grpc => {
                let code = grpc_code(reply.status);
                let ok = write_grpc_status(
                    client,
                    c,
                    code,
                    crate::http::reason(reply.status),
                    &reply.headers,
                )
                .await;
                (reply.status, if ok { Next::KeepAlive } else { Next::Close })
            }
            Answer::Error(e, detail) if c.grpc => {
                if e.is_upstream() {
                    let cfg = &self.snap.config;
                    let route = self.route.unwrap_or(0);
                    let up = c.upstream_id.unwrap_or(cfg.routes[route].upstream);
                    w.metrics.upstream_error(cfg.upstream_slots[up]);
                }
                let code = grpc_code(e.status());
                let msg = detail.message.as_deref().unwrap_or(e.message);
                let ok = write_grpc_status(client, c, code, msg, &[]).await;
                (e.status(), if ok { Next::KeepAlive } else { Next::Close })
            }
            Answer::Reply(reply) => {
                let end = self.request_end(c);
                let close = end.is_none() || !c.head.keep_alive || draining;
                let rid = c.rid;
                let ok = write_reply(
                    client,
                    &mut c.scratch,
                    &reply,
                    rid.as_bytes(),
                    &c.resp_extra,
                    close,
                    c.head.is_head,
                )
                .await;
                c.count_reply();
                (reply.status, self.after_own_answer(c, end, close || !ok))
            }
            Answer::Error(e, detail) => {
                if e.is_upstream() {
                    let cfg = &self.snap.config;
                    let route = self.route.unwrap_or(0);
                    let up = c.upstream_id.unwrap_or(cfg.routes[route].upstream);
                    w.metrics.upstream_error(cfg.upstream_slots[up]);
                }
                let end = self.request_end(c);
                let close = e.close || end.is_none() || !c.head.keep_alive || draining;
                let rid = c.rid;
                let ok = write_error(
                    client,
                    &mut c.scratch,
                    e.status(),
                    detail.message.as_deref().unwrap_or(e.message),
                    rid.as_bytes(),
                    close,
                    detail.allow.as_deref(),
                    &c.resp_extra,
                )
                .await;
                c.count_reply();
                (e.status(), self.after_own_answer(c, end, close || !ok))
            }
            Answer::Upgrade(us) => (101, Next::Upgrade(us)),
            Answer::Abort => (499, Next::Close),
        };
        self.log(c, status);
        next
    }

    /// Where the request ends in the buffer, when the whole of it is
    /// there (the body read by ringgate, or not needed and buffered
    /// whole); `None` when its body is (partly) still on the socket, so
    /// the connection must close after an answer.
    fn request_end(&self, c: &Conn) -> Option<usize> {
        match (self.body, c.head.framing) {
            (Body::ReadTo(end), _) => Some(end),
            (_, BodyFraming::None | BodyFraming::UntilClose) => Some(c.head.len),
            (_, BodyFraming::Length(n)) => {
                let end = c.head.len + n as usize;
                (end <= c.buf.len()).then_some(end)
            }
            (_, BodyFraming::Chunked) => None,
        }
    }

    fn after_own_answer(&self, c: &mut Conn, end: Option<usize>, close: bool) -> Next {
        match end {
            Some(e) if !close => {
                c.consume_to(e);
                Next::KeepAlive
            }
            _ => Next::Close,
        }
    }

    /// The logging phase: the metric shard and the access log.
    fn log(&self, c: &Conn, status: u16) {
        let w = self.w;
        let cfg = &self.snap.config;
        if !cfg.metrics_enabled && w.log.borrow().is_none() {
            return;
        }
        let total_us = self.started.elapsed().as_micros() as u64;
        if cfg.metrics_enabled {
            w.metrics.request_slot(
                self.route.map_or(0, |r| cfg.route_slots[r]),
                self.method_slot,
                status,
                total_us,
                c.upstream_us,
            );
        }
        if let Some(log) = w.log.borrow().as_ref() {
            let f = |i: usize| {
                let (a, b) = c.log_spans[i];
                &c.log_fields[a..b]
            };
            log.log(&Record {
                request_id: c.rid.as_bytes(),
                trace_id: &self.trace.trace_id,
                client: c.peer,
                method: f(0),
                path: f(1),
                minor: c.head.minor,
                h2: c.h2,
                route: self.route.map_or("-", |r| cfg.routes[r].name.as_str()),
                upstream: c.upstream_addr,
                status,
                bytes_in: self.bytes_in,
                bytes_out: c.bytes_out,
                total_us,
                upstream_us: c.upstream_us,
                user_agent: f(2),
                referer: f(3),
                tls: c.tls.as_deref(),
            });
        }
    }
}

/// The gRPC status for an answer ringgate makes with this HTTP status:
/// unauthenticated 16, permission denied 7, rate limited or too large 8
/// (resource exhausted), no upstream or breaker open 14 (unavailable),
/// timeouts 4 (deadline exceeded), no route or method 12
/// (unimplemented), anything else 13 (internal).
pub fn grpc_code(status: u16) -> u8 {
    match status {
        401 => 16,
        403 => 7,
        413 | 429 => 8,
        502 | 503 => 14,
        408 | 504 => 4,
        404 | 405 => 12,
        _ => 13,
    }
}

/// Writes a gRPC status answer (HTTP 200, `grpc-status` and
/// `grpc-message` with no body: over HTTP/2 one HEADERS frame, the
/// Trailers-Only form), with `lines` and the filters' response lines.
async fn write_grpc_status<S: AsyncWriteRent>(
    s: &mut S,
    c: &mut Conn,
    code: u8,
    message: &str,
    lines: &[u8],
) -> bool {
    let mut buf = std::mem::take(&mut c.scratch);
    buf.clear();
    let _ = write!(
        buf,
        "HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\ngrpc-status: {code}\r\ngrpc-message: "
    );
    // Percent-encoded as gRPC requires.
    for &b in message.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            buf.push(b);
        } else {
            let _ = write!(buf, "%{b:02X}");
        }
    }
    buf.extend_from_slice(b"\r\nX-Request-Id: ");
    buf.extend_from_slice(c.rid.as_bytes());
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(lines);
    buf.extend_from_slice(&c.resp_extra);
    buf.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    let (r, b) = match monoio::time::timeout(Duration::from_secs(10), s.write_all(buf)).await {
        Ok(x) => x,
        Err(_) => return false,
    };
    c.scratch = b;
    c.count_reply();
    r.is_ok()
}

/// Writes a reply ringgate makes (a filter's, the token endpoint's), plus
/// the response header lines filters added; false when the client is gone.
pub async fn write_reply<S: AsyncWriteRent>(
    s: &mut S,
    scratch: &mut Vec<u8>,
    reply: &Reply,
    request_id: &[u8],
    extra: &[u8],
    close: bool,
    head_request: bool,
) -> bool {
    let mut buf = std::mem::take(scratch);
    buf.clear();
    let _ = write!(
        buf,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Request-Id: ",
        reply.status,
        crate::http::reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    buf.extend_from_slice(request_id);
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(&reply.headers);
    buf.extend_from_slice(extra);
    if close {
        buf.extend_from_slice(b"Connection: close\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    if !head_request {
        buf.extend_from_slice(&reply.body);
    }
    let (r, b) = match monoio::time::timeout(Duration::from_secs(10), s.write_all(buf)).await {
        Ok(x) => x,
        Err(_) => return false,
    };
    *scratch = b;
    r.is_ok()
}

/// Copies what the log line needs before the request leaves the buffer;
/// query credentials are written as `REDACTED` (`log.redact_query`).
fn capture_log_fields(c: &mut Conn, redact: &[Box<[u8]>]) {
    let l = &mut c.log_fields;
    l.clear();
    let mut push = |b: &[u8], names: &[Box<[u8]>]| {
        let start = l.len();
        push_redacted(l, b, names);
        (start, l.len())
    };
    let header = |name: &[u8]| {
        c.lines
            .iter()
            .find(|h| crate::http::name_eq(h.name.of(&c.buf), name))
            .map(|h| h.value.of(&c.buf))
            .unwrap_or(b"")
    };
    let m = push(c.head.method.of(&c.buf), &[]);
    let p = push(c.head.path_query.of(&c.buf), redact);
    let ua = push(header(b"user-agent"), &[]);
    let rf = push(header(b"referer"), redact);
    c.log_spans = [m, p, ua, rf];
}
