//! The downstream connection loop: read a head (header timeout, size
//! limits), parse, route, hand the request to the proxy, repeat while the
//! connection stays keep-alive. Pipelined requests are answered in order:
//! bytes after a request stay in the buffer for the next turn.
//!
//! Every error ringgate answers itself goes through [`write_error`]: a JSON
//! body with the status and request id, written in full before a close.

use super::parse::{self, BodyFraming, Parsed, RequestHead};
use crate::filter::{Reply, RequestCtx, Verdict};
use crate::proxy::forward::{self, Conn, Outcome};
use crate::router::{Lookup, Params};
use crate::runtime::watchdog::Watchdog;
use crate::runtime::worker::Worker;
use crate::telemetry::access_log::{Record, push_redacted};
use crate::telemetry::trace::TraceContext;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Reads more bytes into `buf` after its current contents.
pub async fn read_more<S: AsyncReadRent>(
    s: &mut S,
    buf: Vec<u8>,
) -> (std::io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    let (r, slice) = s.read(buf.slice_mut(len..)).await;
    (r, slice.into_inner())
}

/// Like [`read_more`] with a timeout; on timeout the buffer is replaced by
/// an empty one of the same capacity (the old one is still owned by the
/// cancelled read).
pub async fn read_more_within<S: AsyncReadRent>(
    s: &mut S,
    buf: Vec<u8>,
    t: Duration,
) -> (Result<std::io::Result<usize>, ()>, Vec<u8>) {
    let cap = buf.capacity();
    match monoio::time::timeout(t, read_more(s, buf)).await {
        Ok((r, b)) => (Ok(r), b),
        Err(_) => (Err(()), Vec::with_capacity(cap)),
    }
}

/// Like [`read_more`] under a deadline kept by the worker's watchdog: `at`
/// on its coarse clock; `Err(())` when the deadline passed (close the
/// socket then: its read side may be shut, or a cancelled read may own the
/// old buffer, in which case an empty one of the same capacity comes
/// back). `idle` marks a keep-alive wait for the next request, which a
/// drain ends at once. Deadlines under [`PRECISE_BELOW_MS`] away use a
/// runtime timer, so short timeouts keep millisecond precision.
pub async fn read_more_until<S: AsyncReadRent>(
    s: &mut S,
    fd: std::os::fd::RawFd,
    buf: Vec<u8>,
    dog: &Watchdog,
    at: u64,
    idle: bool,
) -> (Result<std::io::Result<usize>, ()>, Vec<u8>) {
    let armed = dog.arm(fd, at, idle);
    let left = at.saturating_sub(dog.now_ms());
    if left < PRECISE_BELOW_MS {
        // A deadline this close would be too coarse on the watchdog's
        // tick: a runtime timer ends it on time (the watchdog slot stays
        // armed for a drain).
        let cap = buf.capacity();
        return match monoio::time::timeout(Duration::from_millis(left), read_more(s, buf)).await {
            Ok((r, b)) if !armed.fired() => (Ok(r), b),
            Ok((_, b)) => (Err(()), b),
            Err(_) => (Err(()), Vec::with_capacity(cap)),
        };
    }
    let (r, b) = read_more(s, buf).await;
    if armed.fired() {
        (Err(()), b)
    } else {
        (Ok(r), b)
    }
}

/// Deadlines closer than this (ms) get a runtime timer of their own
/// instead of waiting for the watchdog's tick.
pub const PRECISE_BELOW_MS: u64 = 100;

/// A connection's state, taken from the worker's spares (or allocated)
/// and given back when the connection ends, however it ends.
struct Held<'w> {
    w: &'w Worker,
    c: std::mem::ManuallyDrop<Box<Conn>>,
}

impl<'w> Held<'w> {
    fn take(w: &'w Worker, peer: SocketAddr) -> Self {
        let srv = &w.config.server;
        let c = match w.spare_conns.borrow_mut().pop() {
            Some(mut c) => {
                Conn::reuse(&mut c, srv.buffer_bytes, peer);
                c
            }
            None => Box::new(Conn::new(srv.buffer_bytes, peer, srv.max_headers)),
        };
        Held {
            w,
            c: std::mem::ManuallyDrop::new(c),
        }
    }
}

impl std::ops::Deref for Held<'_> {
    type Target = Conn;
    #[inline]
    fn deref(&self) -> &Conn {
        &self.c
    }
}

impl std::ops::DerefMut for Held<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.c
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // SAFETY: `c` is taken once, here, and never used afterwards.
        let mut c = unsafe { std::mem::ManuallyDrop::take(&mut self.c) };
        // A spare does not keep the TLS listener (and its certificates)
        // of its last connection alive across reloads.
        c.tls = None;
        let mut spares = self.w.spare_conns.borrow_mut();
        if spares.len() < crate::runtime::worker::SPARE_CONNS
            && c.reusable(self.w.config.server.buffer_bytes)
        {
            spares.push(c);
        }
    }
}

/// Answers a connection over the per-worker limit with 503 (under a fresh
/// request id, `rid`) and closes it.
pub async fn refuse_overloaded(mut s: monoio::net::TcpStream, rid: [u8; 32]) {
    let mut buf = Vec::with_capacity(256);
    error_response(
        &mut buf,
        503,
        "too many connections on this worker",
        &rid,
        true,
        None,
    );
    let _ = monoio::time::timeout(Duration::from_secs(1), s.write_all(buf)).await;
}

/// Formats a JSON error response into `buf`.
pub fn error_response(
    buf: &mut Vec<u8>,
    status: u16,
    message: &str,
    request_id: &[u8],
    close: bool,
    allow: Option<&str>,
) {
    buf.clear();
    let rid = std::str::from_utf8(request_id).unwrap_or("-");
    let mut body = [0u8; 512];
    let body_len = {
        let mut w = &mut body[..];
        let _ = write!(
            w,
            "{{\"error\":\"{}\",\"status\":{},\"request_id\":\"{}\"}}",
            JsonStr(message),
            status,
            JsonStr(rid)
        );
        512 - w.len()
    };
    let _ = write!(
        buf,
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: {}\r\n",
        status,
        super::reason(status),
        body_len,
        rid
    );
    if let Some(a) = allow {
        let _ = write!(buf, "Allow: {a}\r\n");
    }
    if close {
        buf.extend_from_slice(b"Connection: close\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(&body[..body_len]);
}

struct JsonStr<'a>(&'a str);

impl std::fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => std::fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

/// Writes an error response; returns false when the client is gone.
pub async fn write_error<S: AsyncWriteRent>(
    s: &mut S,
    scratch: &mut Vec<u8>,
    status: u16,
    message: &str,
    request_id: &[u8],
    close: bool,
    allow: Option<&str>,
) -> bool {
    let mut buf = std::mem::take(scratch);
    error_response(&mut buf, status, message, request_id, close, allow);
    let (r, b) = match monoio::time::timeout(Duration::from_secs(10), s.write_all(buf)).await {
        Ok(x) => x,
        Err(_) => return false,
    };
    *scratch = b;
    r.is_ok()
}

/// Answers a request whose head was refused (or never came) with a JSON
/// error under a fresh request id, and closes.
async fn refuse_head<S: AsyncWriteRent>(
    s: &mut S,
    w: &Worker,
    c: &mut Conn,
    status: u16,
    msg: &str,
) {
    w.next_request_id(&mut c.fresh);
    let rid = c.fresh;
    let _ = write_error(s, &mut c.scratch, status, msg, &rid, true, None).await;
}

/// Reads a whole (small) request body for a request the gateway answers
/// itself. On success the body bytes are returned and `c.body_end` is the
/// offset in `c.buf` where the request ends (pipelined bytes follow).
pub async fn read_body<S: AsyncReadRent>(
    s: &mut S,
    c: &mut Conn,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, (u16, &'static str)> {
    use super::chunked::ChunkedScanner;
    let start = c.head.len;
    let mut body = Vec::new();
    let mut scanner = ChunkedScanner::new();
    let mut pos = start;
    loop {
        match c.head.framing {
            BodyFraming::None | BodyFraming::UntilClose => {
                c.body_end = start;
                return Ok(body);
            }
            BodyFraming::Length(n) => {
                if n as usize > limit {
                    return Err((413, "request body too large"));
                }
                if c.buf.len() >= start + n as usize {
                    body.extend_from_slice(&c.buf[start..start + n as usize]);
                    c.body_end = start + n as usize;
                    return Ok(body);
                }
            }
            BodyFraming::Chunked => {
                let buf = &c.buf;
                let k = scanner
                    .scan(&buf[pos..], |a, b| {
                        body.extend_from_slice(&buf[pos + a..pos + b])
                    })
                    .map_err(|e| (400, e.0))?;
                pos += k;
                if body.len() > limit {
                    return Err((413, "request body too large"));
                }
                if scanner.is_done() {
                    c.body_end = pos;
                    return Ok(body);
                }
            }
        }
        if c.buf.len() == c.buf.capacity() {
            c.buf.reserve(c.buf.capacity().max(4096));
        }
        let (r, b) = read_more_within(s, std::mem::take(&mut c.buf), timeout).await;
        c.buf = b;
        match r {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err((400, "request body ended early")),
            Err(()) => return Err((408, "request body not received in time")),
        }
    }
}

/// Writes a filter's reply (plus the response headers filters added).
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
        super::reason(reply.status),
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

/// Serves one client connection until it closes.
pub async fn serve<S>(w: &Worker, stream: S, peer: SocketAddr)
where
    S: AsyncReadRent + AsyncWriteRent + Splitable + AsRawFd + 'static,
    S::OwnedRead: AsyncReadRent,
    S::OwnedWrite: AsyncWriteRent,
{
    serve_with(w, stream, peer, None).await
}

/// Serves one TLS client connection (handshake done) until it closes.
pub async fn serve_tls(
    w: &Worker,
    stream: crate::tls::stream::TlsStream,
    peer: SocketAddr,
    tls: std::rc::Rc<crate::tls::ConnTls>,
) {
    serve_with(w, stream, peer, Some(tls)).await
}

async fn serve_with<S>(
    w: &Worker,
    mut stream: S,
    peer: SocketAddr,
    tls: Option<std::rc::Rc<crate::tls::ConnTls>>,
) where
    S: AsyncReadRent + AsyncWriteRent + Splitable + AsRawFd + 'static,
    S::OwnedRead: AsyncReadRent,
    S::OwnedWrite: AsyncWriteRent,
{
    let mut held = Held::take(w, peer);
    let c: &mut Conn = &mut held;
    c.tls = tls;
    let fd = stream.as_raw_fd();
    let mut first = true;
    loop {
        // Each request is served with the config generation current when
        // it starts (a reload switches between requests, never during one).
        let snap = w.current();
        let cfg: &crate::config::Config = &snap.config;
        let srv = &cfg.server;
        // Phase 1: read and parse a head.
        if c.buf.is_empty() {
            let t = if first {
                srv.header_timeout
            } else {
                srv.idle_timeout
            };
            // Between requests on a keep-alive connection, the connection is
            // listed so a drain can end the wait at once (shutdown(SHUT_RD)
            // makes this read return EOF). A new connection's first request
            // is always awaited: the client sent it to a listener that was
            // still open.
            if !first && w.draining.get() {
                return;
            }
            let (r, b) = read_more_until(
                &mut stream,
                fd,
                std::mem::take(&mut c.buf),
                &w.watchdog,
                w.watchdog.after(t),
                !first,
            )
            .await;
            c.buf = b;
            match r {
                Ok(Ok(n)) if n > 0 => {}
                Err(()) if first => {
                    refuse_head(&mut stream, w, c, 408, "no request received in time").await;
                    return;
                }
                _ => return,
            }
        }
        // The header deadline is only needed when the head did not arrive
        // in one piece.
        let mut deadline: Option<u64> = None;
        loop {
            let limits = parse::RequestLimits {
                max_headers: srv.max_headers,
                max_uri: srv.max_uri_bytes,
                underscores: srv.underscores_in_headers,
            };
            let mut parsed = parse::parse_request_with(&c.buf, &limits, &mut c.head, &mut c.lines);
            if let Err(parse::HeadError::Version) = parsed {
                // HTTP/1.2 and later 1.x are served as 1.1; 2.0 and later
                // (the HTTP/2 preface among them) get 505.
                parsed = match parse::downgrade_minor(&mut c.buf) {
                    Ok(()) => parse::parse_request_with(&c.buf, &limits, &mut c.head, &mut c.lines),
                    Err(e) => Err(e),
                };
            }
            match parsed {
                Ok(Parsed::Complete) => {
                    if c.head.len > srv.max_header_bytes {
                        refuse_head(&mut stream, w, c, 431, "request head too large").await;
                        return;
                    }
                    break;
                }
                Ok(Parsed::Partial) => {
                    if c.buf.len() >= srv.max_header_bytes {
                        let line_done = c.buf.contains(&b'\n');
                        let (status, msg) = if !line_done && c.buf.len() > srv.max_uri_bytes {
                            (414, "request target too long")
                        } else {
                            (431, "request head too large")
                        };
                        refuse_head(&mut stream, w, c, status, msg).await;
                        return;
                    }
                    if c.buf.len() == c.buf.capacity() {
                        let want = (c.buf.capacity() * 2).min(srv.max_header_bytes);
                        c.buf.reserve_exact(want - c.buf.len());
                    }
                    let at = *deadline.get_or_insert(w.watchdog.after(srv.header_timeout));
                    let (r, b) = read_more_until(
                        &mut stream,
                        fd,
                        std::mem::take(&mut c.buf),
                        &w.watchdog,
                        at,
                        false,
                    )
                    .await;
                    c.buf = b;
                    match r {
                        Ok(Ok(n)) if n > 0 => {}
                        Err(()) => {
                            refuse_head(
                                &mut stream,
                                w,
                                c,
                                408,
                                "request head not received in time",
                            )
                            .await;
                            return;
                        }
                        _ => return,
                    }
                }
                Err(e) => {
                    refuse_head(&mut stream, w, c, e.status(), e.message()).await;
                    return;
                }
            }
        }
        first = false;
        // The head may have waited through a reload on an idle keep-alive
        // connection: serve it with the generation current now, so a
        // reload (a revoked key, a changed route) applies to every request
        // that arrives after it.
        let snap = w.current();
        let cfg: &crate::config::Config = &snap.config;
        let srv = &cfg.server;
        c.set_request_id(w);
        c.trusted_peer = srv.trusts(c.peer.ip());

        // The token endpoint is answered by the gateway itself.
        if let Some(auth) = &cfg.auth
            && let Some(tp) = auth.token_path()
            && c.head.path.of(&c.buf) == tp.as_bytes()
        {
            let rid = c.rid;
            let reply = if c.head.method.of(&c.buf) != b"POST" {
                Reply::error(405, "use POST", rid.as_bytes()).with_header("Allow", "POST")
            } else {
                match read_body(&mut stream, c, 64 * 1024, srv.idle_timeout).await {
                    Ok(body) => {
                        let ctx = RequestCtx {
                            worker: w,
                            generation: &snap,
                            route: usize::MAX,
                            buf: &c.buf,
                            head: &c.head,
                            lines: &c.lines,
                            peer: c.peer,
                            identity: None,
                            tls: c.tls.as_deref(),
                            upstream_headers: &mut c.up_extra,
                            response_headers: &mut c.resp_extra,
                            hide_credentials: Default::default(),
                            request_id: rid.as_bytes(),
                        };
                        auth.token_endpoint(&ctx, &body)
                    }
                    Err((status, msg)) => {
                        let _ = write_error(
                            &mut stream,
                            &mut c.scratch,
                            status,
                            msg,
                            rid.as_bytes(),
                            true,
                            None,
                        )
                        .await;
                        return;
                    }
                }
            };
            let close =
                c.head.has_body() && c.head.method.of(&c.buf) != b"POST" || !c.head.keep_alive;
            c.resp_extra.clear();
            let ok = write_reply(
                &mut stream,
                &mut c.scratch,
                &reply,
                rid.as_bytes(),
                &[],
                close,
                false,
            )
            .await;
            if close || !ok {
                return;
            }
            if c.head.method.of(&c.buf) == b"POST" {
                let n = c.body_end;
                c.consume_to(n);
            } else {
                c.consume_head_only();
            }
            continue;
        }

        // Phase 2: route.
        let started = Instant::now();
        c.started = started;
        c.upstream_addr = None;
        c.upstream_id = None;
        c.upstream_us = None;
        c.bytes_out = 0;
        c.rewrite.clear();
        // The requested API version (its `/v2` path prefix is not routed on).
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
                    (Some(v), Some(req)) => v.select(route, req).map_err(|m| (400, m, None)),
                    _ => Ok(route),
                },
                Lookup::MethodNotAllowed { allow } => Err((405, "method not allowed", Some(allow))),
                Lookup::NotFound => Err((404, "no route matches this request", None)),
            }
        };
        let mut info = ReqInfo::capture(w, c, started, &cfg.log.redact_query);
        let route = match lookup {
            Ok(r) => r,
            Err((status, msg, allow)) => {
                // A body we will not read would be taken for the next request.
                let close =
                    c.head.framing != BodyFraming::None || !c.head.keep_alive || w.draining.get();
                let rid = c.rid;
                let ok = write_error(
                    &mut stream,
                    &mut c.scratch,
                    status,
                    msg,
                    rid.as_bytes(),
                    close,
                    allow,
                )
                .await;
                c.count_reply();
                info.finish(w, cfg, c, status);
                if close || !ok {
                    return;
                }
                c.consume_head_only();
                continue;
            }
        };
        info.route = Some(route as usize);
        if let Some(v) = version {
            v.apply(c);
        }
        if let BodyFraming::Length(n) = c.head.framing
            && n > srv.max_body_bytes
        {
            let rid = c.rid;
            let _ = write_error(
                &mut stream,
                &mut c.scratch,
                413,
                "request body too large",
                rid.as_bytes(),
                true,
                None,
            )
            .await;
            c.count_reply();
            info.finish(w, cfg, c, 413);
            return;
        }

        // Phase 3: the route's request filters.
        c.up_extra.clear();
        c.resp_extra.clear();
        if let Some(h) = c.tls.as_ref().and_then(|t| t.listener.hsts.as_ref()) {
            c.resp_extra.extend_from_slice(h);
        }
        info.trace.write_header(&mut c.up_extra);
        let rc = &cfg.routes[route as usize];
        if let Some(d) = &rc.deprecation {
            c.resp_extra.extend_from_slice(d);
        }
        let chain = &rc.chain;
        if !chain.is_empty() {
            let rid = c.rid;
            let (verdict, hide) = {
                let mut ctx = RequestCtx {
                    worker: w,
                    generation: &snap,
                    route: route as usize,
                    buf: &c.buf,
                    head: &c.head,
                    lines: &c.lines,
                    peer: c.peer,
                    identity: None,
                    tls: c.tls.as_deref(),
                    upstream_headers: &mut c.up_extra,
                    response_headers: &mut c.resp_extra,
                    hide_credentials: Default::default(),
                    request_id: rid.as_bytes(),
                };
                let v = chain.request(&mut ctx).await;
                (v, ctx.hide_credentials)
            };
            if let Verdict::Reply(reply) = verdict {
                let close = c.head.has_body() || !c.head.keep_alive || w.draining.get();
                let ok = write_reply(
                    &mut stream,
                    &mut c.scratch,
                    &reply,
                    rid.as_bytes(),
                    &c.resp_extra,
                    close,
                    c.head.is_head,
                )
                .await;
                c.count_reply();
                info.finish(w, cfg, c, reply.status);
                if close || !ok {
                    return;
                }
                c.consume_head_only();
                continue;
            }
            // `hide_credentials`: the credential used is not forwarded, nor
            // written to the access log (whose path was copied before).
            if !hide.is_empty()
                && let Some(auth) = &cfg.auth
            {
                crate::filter::auth::hide_credentials(auth, hide, c);
                if w.log.borrow().is_some() {
                    let l = &mut c.log_fields;
                    let start = l.len();
                    push_redacted(l, c.head.path_query.of(&c.buf), &cfg.log.redact_query);
                    c.log_spans[1] = (start, l.len());
                }
            }
        }

        // The request transform (after the filters, so it sees what they added).
        if let Some(t) = &rc.transform {
            crate::filter::transform::apply_request(t, cfg, c);
        }

        // Phase 4, composed: several upstreams in parallel, one merged answer
        // (a cached compose route goes through its cache below).
        if let Some(comp) = &rc.compose
            && rc.cache.is_none()
        {
            w.in_flight.set(w.in_flight.get() + 1);
            let a =
                crate::proxy::compose::serve(w, &snap, route as usize, comp, &mut stream, c).await;
            w.in_flight.set(w.in_flight.get() - 1);
            info.finish(w, cfg, c, a.status);
            if !a.keep_alive {
                return;
            }
            c.consume_head_only();
            continue;
        }

        // Phases 4-5: the request goes upstream, or to its compose parts (a
        // cached route's may be answered from its cache instead).
        w.in_flight.set(w.in_flight.get() + 1);
        let json_ops = rc.transform.as_deref().and_then(|t| t.json.as_ref());
        let outcome = match (rc.cache.as_deref(), json_ops) {
            (Some(policy), _) => {
                crate::filter::cache::serve(w, &snap, route as usize, policy, &mut stream, c).await
            }
            (None, Some(ops)) => {
                crate::filter::transform::forward_json(
                    w,
                    &snap,
                    route as usize,
                    ops,
                    &mut stream,
                    c,
                )
                .await
            }
            (None, None) => forward::forward(w, &snap, route as usize, &mut stream, c).await,
        };
        w.in_flight.set(w.in_flight.get() - 1);
        // The upstream buffer `forward` borrowed goes back to the worker.
        w.return_ubuf(&mut c.ubuf, srv.buffer_bytes);
        match outcome {
            Outcome::Done { keep_alive } => {
                info.finish(w, cfg, c, c.rhead.status);
                if !keep_alive {
                    return;
                }
            }
            Outcome::Error {
                status,
                message,
                close,
            } => {
                if status == 502 || status == 504 {
                    let up = c.upstream_id.unwrap_or(cfg.routes[route as usize].upstream);
                    w.metrics.upstream_error(cfg.upstream_slots[up]);
                }
                // The failed request is still in the buffer unless its body
                // was streamed; drop it so the next one is read next.
                let end = match c.head.framing {
                    BodyFraming::None | BodyFraming::UntilClose => Some(c.head.len),
                    BodyFraming::Length(n) => Some(c.head.len + n as usize),
                    BodyFraming::Chunked => None,
                };
                let close = close
                    || !c.head.keep_alive
                    || w.draining.get()
                    || end.is_none_or(|e| e > c.buf.len());
                let rid = c.rid;
                let ok = write_error(
                    &mut stream,
                    &mut c.scratch,
                    status,
                    message,
                    rid.as_bytes(),
                    close,
                    None,
                )
                .await;
                c.count_reply();
                info.finish(w, cfg, c, status);
                if close || !ok {
                    return;
                }
                if let Some(e) = end {
                    c.consume_to(e);
                }
            }
            Outcome::Upgrade(upstream) => {
                info.finish(w, cfg, c, 101);
                crate::proxy::tunnel::tunnel(
                    stream,
                    upstream,
                    std::mem::take(&mut c.buf),
                    srv.idle_timeout,
                )
                .await;
                return;
            }
            Outcome::Abort => {
                info.finish(w, cfg, c, 499);
                return;
            }
        }
    }
}

/// What is kept of a request for metrics and the access log once its
/// bytes have left the buffer.
struct ReqInfo {
    started: Instant,
    route: Option<usize>,
    method_slot: usize,
    bytes_in: u64,
    trace: TraceContext,
}

impl ReqInfo {
    fn capture(w: &Worker, c: &mut Conn, started: Instant, redact: &[Box<[u8]>]) -> ReqInfo {
        let method = c.head.method.of(&c.buf);
        let trace = TraceContext::new(c.head.traceparent.map(|t| t.of(&c.buf)), &c.fresh);
        let bytes_in = c.head.len as u64
            + match c.head.framing {
                BodyFraming::Length(n) => n,
                _ => 0,
            };
        if w.log.borrow().is_some() {
            // Copy what the log line needs before the request leaves the buffer.
            let l = &mut c.log_fields;
            l.clear();
            // Query credentials are written as `REDACTED` (`log.redact_query`).
            let mut push = |b: &[u8], names: &[Box<[u8]>]| {
                let start = l.len();
                push_redacted(l, b, names);
                (start, l.len())
            };
            let m = push(method, &[]);
            let p = push(c.head.path_query.of(&c.buf), redact);
            let ua = c
                .lines
                .iter()
                .find(|h| super::name_eq(h.name.of(&c.buf), b"user-agent"))
                .map(|h| h.value.of(&c.buf))
                .unwrap_or(b"");
            let ua = push(ua, &[]);
            let rf = c
                .lines
                .iter()
                .find(|h| super::name_eq(h.name.of(&c.buf), b"referer"))
                .map(|h| h.value.of(&c.buf))
                .unwrap_or(b"");
            let rf = push(rf, redact);
            c.log_spans = [m, p, ua, rf];
        }
        ReqInfo {
            started,
            route: None,
            method_slot: crate::telemetry::metrics::method_slot(method),
            bytes_in,
            trace,
        }
    }

    fn finish(&self, w: &Worker, cfg: &crate::config::Config, c: &Conn, status: u16) {
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

impl RequestHead {
    /// True when the request carries a body.
    pub fn has_body(&self) -> bool {
        self.framing != BodyFraming::None
    }
}
