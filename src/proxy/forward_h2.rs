//! Forwarding to an HTTP/2 upstream (`protocol = "h2"`): the request as a
//! stream on the worker's connection to the target, its answer back to the
//! client, trailers included (gRPC's status travels in them).
//!
//! ```text
//! pick target (balancer) → connection (upstream::h2::sender) → HEADERS
//!   request body:  HTTP/2 client: its DATA frames, at once (full duplex:
//!                  a bidirectional gRPC call streams both ways)
//!                  HTTP/1 client: its body (Content-Length or chunked)
//!   response:      head → the client, DATA as they come, trailers
//! ```
//!
//! The forwarded head is the one [`build_request_head`] makes for an
//! HTTP/1.1 upstream (hop-by-hop fields dropped, forwarding, request id,
//! trace context, the filters' edits), turned into HTTP/2 fields with
//! `:authority` from `Host` and `te: trailers`. To an HTTP/2 client the
//! answer goes as it came (`respond_fields`): the upstream's fields (plus
//! the request id and the filters' lines) as the stream's HEADERS, its
//! DATA without a copy, its trailers as trailing HEADERS (a Trailers-Only
//! answer stays one HEADERS frame). To an HTTP/1.1 client, and for
//! gRPC-Web, it is written as ringgate's HTTP/1.1 form (chunked, trailers
//! in the last chunk or, for gRPC-Web, in the body).
//!
//! Performance notes: the per-request values (`x-request-id`,
//! `traceparent`, `grpc-timeout`) go out never-indexed so that the
//! connection's HPACK table keeps the fields that repeat (see
//! [`crate::http::h2::fields`]).
//!
//! Timeouts: `request_timeout_ms`, or a shorter `grpc-timeout` of the
//! request, bounds the whole exchange; `grpc-timeout` is passed on reduced
//! by the time already spent. Connect failures go to another target while
//! `retries` allows; the breaker sees every answer.

use super::forward::{Conn, Outcome, build_request_head};
use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::http::ClientIo;
use crate::http::chunked::ChunkedScanner;
use crate::http::h2::stream::TxSide;
use crate::http::parse::BodyFraming;
use crate::runtime::worker::{Generation, Worker};
use crate::upstream::breaker::Ticket;
use crate::upstream::shared::Report;
use crate::upstream::{balance, pool};
use bytes::Bytes;
use h2::{RecvStream, SendStream};
use monoio::buf::IoBufMut;
use monoio::io::AsyncWriteRentExt;
use std::future::poll_fn;
use std::io::Write;
use std::time::{Duration, Instant};

/// Forwards the request in `c` to HTTP/2 upstream `up_id`.
pub async fn forward_h2<S: ClientIo>(
    w: &Worker,
    snap: &Generation,
    client: &mut S,
    c: &mut Conn,
    up_id: usize,
) -> Outcome {
    let cfg: &Config = &snap.config;
    let up_cfg = &cfg.upstreams[up_id];
    let up = &snap.upstreams[up_id];
    let shared = &*up.shared;
    let mut ticket = Ticket::new(shared.breaker.as_ref());
    if ticket.rejected() {
        return Outcome::Error(
            Error::new(
                ErrorKind::CircuitOpen,
                "upstream unavailable (circuit breaker open)",
            )
            .closing(c.head.has_body()),
        );
    }
    let mut timeout = up_cfg.request_timeout;
    let grpc_timeout = c
        .lines
        .iter()
        .find(|l| l.name.of(&c.buf).eq_ignore_ascii_case(b"grpc-timeout"))
        .and_then(|l| parse_grpc_timeout(l.value.of(&c.buf)));
    if let Some(t) = grpc_timeout {
        timeout = timeout.min(t);
    }
    let deadline = c.started + timeout;
    let list = up.list();
    up.budget.deposit();
    let mut tries = Tries {
        tried: 0,
        retries: crate::upstream::retry::Retries::new(up_cfg.retries, list.targets.len(), deadline),
    };
    // An answer of 502, 503 or 504 to a request that can be sent again
    // (idempotent, no body) goes to another target while `retries` allow,
    // as on HTTP/1.1.
    let retry_ok = c.head.idempotent && !c.head.has_body();
    loop {
        let a = attempt(
            w,
            snap,
            client,
            c,
            up_id,
            &list,
            &mut ticket,
            deadline,
            &mut tries,
            retry_ok,
        )
        .await;
        match a {
            Attempt::Done(o) => return o,
            Attempt::Retry => {}
        }
    }
}

/// Targets tried (a bit each) and retries made for one request.
struct Tries {
    tried: u64,
    retries: crate::upstream::retry::Retries,
}

/// How one try ended.
enum Attempt {
    Done(Outcome),
    /// The target answered 502-504 before anything reached the client.
    Retry,
}

/// One try: a target, a stream on its connection, the exchange.
#[allow(clippy::too_many_arguments)]
async fn attempt<S: ClientIo>(
    w: &Worker,
    snap: &Generation,
    client: &mut S,
    c: &mut Conn,
    up_id: usize,
    list: &crate::upstream::pool::TargetList,
    ticket: &mut Ticket<'_>,
    deadline: Instant,
    tries: &mut Tries,
    retry_ok: bool,
) -> Attempt {
    let cfg: &Config = &snap.config;
    let up_cfg = &cfg.upstreams[up_id];
    let up = &snap.upstreams[up_id];
    let shared = &*up.shared;

    // The target, and a stream on its connection.
    let (send, t) = loop {
        let Some(t) = balance::pick(up, list, up_cfg.balance, None, tries.tried) else {
            ticket.record(false);
            return Attempt::Done(Outcome::Error(
                Error::new(ErrorKind::NoHealthyTarget, "no healthy upstream target")
                    .closing(c.head.has_body()),
            ));
        };
        balance::mark(&mut tries.tried, t);
        let target = &*list.targets[t];
        let left = deadline.saturating_duration_since(Instant::now());
        match crate::upstream::h2::sender(
            target,
            up_cfg.tls.as_deref(),
            up_cfg.connect_timeout.min(left),
        )
        .await
        {
            Ok(s) => break (s, t),
            Err(e) => {
                shared.report(&target.shared, Report::Failure);
                if tries.retries.allow(tries.tried, &up.budget) {
                    continue;
                }
                ticket.record(false);
                return Attempt::Done(Outcome::Error(e.error().closing(c.head.has_body())));
            }
        }
    };
    let target = &*list.targets[t];
    c.upstream_addr = Some(target.addr);
    if cfg.metrics_enabled {
        w.metrics.upstream_conn(cfg.upstream_slots[up_id], true);
    }
    let web = web_mode(c).map(|m| (m, web_format(c)));
    let body_follows = c.head.has_body();
    let sent_at = Instant::now();
    target.begin();
    // A connection that ended meanwhile (a GOAWAY or a reset not yet
    // seen) is replaced once by a fresh one: no byte of the request was
    // taken by it.
    let mut send = send;
    let mut stale_retry = true;
    let (response, body) = loop {
        let Some(req) = request_for(
            c,
            target.addr,
            up_cfg.tls.is_some(),
            deadline,
            web.as_ref().map(|w| w.0),
        ) else {
            target.end();
            return Attempt::Done(Outcome::Error(Error::new(
                ErrorKind::BadRequest,
                "request cannot be sent over HTTP/2",
            )));
        };
        let started = async {
            let mut send = send.clone().ready().await?;
            send.send_request(req, !body_follows)
        };
        match monoio::time::timeout_at(deadline.into(), started).await {
            Ok(Ok(x)) => break x,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 upstream refused the stream");
                if stale_retry {
                    stale_retry = false;
                    target.h2.replace(None);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Ok(s) = crate::upstream::h2::sender(
                        target,
                        up_cfg.tls.as_deref(),
                        up_cfg.connect_timeout.min(left),
                    )
                    .await
                    {
                        send = s;
                        continue;
                    }
                }
                target.end();
                shared.report(&target.shared, Report::Failure);
                ticket.record(false);
                return Attempt::Done(Outcome::Error(
                    Error::new(ErrorKind::UpstreamClosed, "upstream refused the request")
                        .closing(body_follows),
                ));
            }
            Err(_) => {
                target.end();
                ticket.record(false);
                return Attempt::Done(Outcome::Error(
                    Error::new(ErrorKind::UpstreamTimeout, "upstream timed out").closing(true),
                ));
            }
        }
    };

    // This answer may be dropped for another target's (before anything of
    // it is written) while the retries allow.
    let retry = retry_ok && tries.retries.may(tries.tried) && up.budget.available() > 0;
    let r = match client.h2_stream() {
        // Full duplex: the client's DATA go up while the answer comes down.
        Some(h) => {
            let (rx, tx) = h.halves();
            let up_body = pump_h2(rx.stream(), body, body_follows, web.as_ref().map(|w| w.0));
            let down = respond(
                retry, c, tx, response, deadline, sent_at, target, up_cfg, web,
            );
            let mut up_body = std::pin::pin!(up_body);
            let mut down = std::pin::pin!(down);
            // The answer decides the end: once it is whole, a request body
            // still streaming is cut (the call is over).
            let mut up_done = !body_follows;
            loop {
                if up_done {
                    break down.await;
                }
                monoio::select! {
                    r = &mut down => break r,
                    _ = &mut up_body => up_done = true,
                }
            }
        }
        None => {
            let mut body = body;
            if body_follows {
                // Bounded as the whole exchange is: a client that stops
                // sending, or an upstream that never opens its window,
                // ends the exchange at its deadline (504, then a close).
                let pumped = monoio::time::timeout_at(
                    deadline.into(),
                    pump_h1(client, c, &mut body, web.as_ref().map(|w| w.0)),
                )
                .await
                .unwrap_or(Err(PumpStop::Upstream));
                match pumped {
                    Ok(()) => {}
                    Err(PumpStop::Client) => {
                        target.end();
                        return Attempt::Done(Outcome::Abort);
                    }
                    // The upstream stopped taking the body (a stream reset
                    // after an early answer: 413, 401...). Its answer, if
                    // it gave one, still goes to the client; the rest of
                    // the body is unread, so the connection closes after.
                    Err(PumpStop::Upstream) => c.head.keep_alive = false,
                }
            }
            respond(
                retry,
                c,
                Writer(client),
                response,
                deadline,
                sent_at,
                target,
                up_cfg,
                web,
            )
            .await
        }
    };
    target.end();
    Attempt::Done(match r {
        Ok(status) => {
            ticket.record_status(status);
            let close = c.head.minor == 0 || !c.head.keep_alive || w.draining.get();
            if !body_follows {
                // The request leaves the buffer (one with a body left it
                // when the body was sent); what follows is the next one.
                c.consume_head_only();
            }
            Outcome::Done { keep_alive: !close }
        }
        Err(Failed::Retry(status)) => {
            shared.report(&target.shared, Report::Status5xx);
            if tries.retries.allow(tries.tried, &up.budget) {
                return Attempt::Retry;
            }
            // The budget ran out meanwhile: the answer was dropped, so the
            // client gets the status as ringgate's error.
            ticket.record(false);
            Outcome::Error(Error::new(
                ErrorKind::UpstreamStatus(status),
                "upstream unavailable",
            ))
        }
        Err(Failed::Upstream(e)) => {
            shared.report(&target.shared, Report::Failure);
            ticket.record(false);
            Outcome::Error(e)
        }
        Err(Failed::Client) => Outcome::Abort,
    })
}

/// `grpc-timeout` (gRPC over HTTP/2: an integer of at most 8 digits and a
/// unit H, M, S, m, u or n).
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let v = v.trim_ascii();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The forwarded request as HTTP/2 fields (no body): the head
/// [`build_request_head`] makes, its lines as fields (values sharing one
/// copy of the head), `Host` as `:authority`.
fn request_for(
    c: &mut Conn,
    target: std::net::SocketAddr,
    tls: bool,
    deadline: Instant,
    web: Option<Web>,
) -> Option<http::Request<()>> {
    use crate::http::h2::fields;
    build_request_head(c, target);
    let mut out = std::mem::take(&mut c.out);
    out.src = std::mem::take(&mut c.buf);
    let head = Bytes::from(out.to_vec());
    c.buf = std::mem::take(&mut out.src);
    c.out = out;
    // The request line ringgate wrote: METHOD SP target SP HTTP/1.1.
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = head[..line_end].strip_suffix(b"\r")?;
    let sp1 = line.iter().position(|&b| b == b' ')?;
    let sp2 = sp1 + 1 + line[sp1 + 1..].iter().position(|&b| b == b' ')?;
    let method = http::Method::from_bytes(&line[..sp1]).ok()?;
    // Origin form only (what the URI of an HTTP/2 request can carry).
    if line.get(sp1 + 1) != Some(&b'/') {
        return None;
    }
    let blank = head.len().checked_sub(2)?;
    let mut headers = http::HeaderMap::with_capacity(24);
    let mut host: Option<(usize, usize)> = None;
    fields::lines(
        &head[line_end + 1..blank],
        line_end + 1,
        |ns, ne, vs, ve| {
            let name = fields::name(&head[ns..ne])?;
            match name.as_str() {
                "host" => {
                    host.get_or_insert((vs, ve));
                }
                "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding"
                | "upgrade" | "te" | "grpc-timeout" => {}
                "content-type" if web.is_some() => {
                    // gRPC-Web to gRPC: `application/grpc-web[-text][+fmt]`
                    // becomes `application/grpc[+fmt]`.
                    let v = std::str::from_utf8(&head[vs..ve]).unwrap_or("");
                    let fmt = v.find('+').map_or("", |i| &v[i..]);
                    let v = http::HeaderValue::try_from(format!("application/grpc{fmt}")).ok()?;
                    headers.append(name, v);
                }
                _ => fields::append(&mut headers, name, fields::value(&head, vs, ve)?),
            }
            Some(())
        },
    )?;
    let authority = match host.map(|(a, b)| &head[a..b]) {
        Some(h) if !h.is_empty() && std::str::from_utf8(h).is_ok() => {
            http::uri::Authority::from_maybe_shared(head.slice(host?.0..host?.1)).ok()?
        }
        _ => http::uri::Authority::try_from(target.to_string()).ok()?,
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = Some(authority);
    parts.path_and_query =
        Some(http::uri::PathAndQuery::from_maybe_shared(head.slice(sp1 + 1..sp2)).ok()?);
    let uri = http::Uri::from_parts(parts).ok()?;
    // ringgate relays trailers (gRPC's status is in them).
    headers.append(http::header::TE, http::HeaderValue::from_static("trailers"));
    // What is left of the deadline, for the backend to keep.
    let left = deadline.saturating_duration_since(Instant::now());
    if c.lines
        .iter()
        .any(|l| l.name.of(&c.buf).eq_ignore_ascii_case(b"grpc-timeout"))
    {
        let v = http::HeaderValue::try_from(format!("{}m", left.as_millis().max(1))).ok()?;
        fields::append(&mut headers, fields::name(b"grpc-timeout")?, v);
    }
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Some(req)
}

/// Why an exchange failed once it began.
enum Failed {
    /// The upstream failed before the answer's head was written: an error
    /// answer is still possible.
    Upstream(Error),
    /// The client is gone, or the answer broke after its head.
    Client,
    /// The answer is 502-504 (this status) and another target may be
    /// asked (nothing was written).
    Retry(u16),
}

/// Where the answer goes: an HTTP/2 client's sending half, or any client
/// transport.
trait Sink {
    async fn put(&mut self, bytes: &[u8]) -> std::io::Result<()>;

    /// An HTTP/2 client's sending half, which takes an answer as fields.
    fn fields(&mut self) -> Option<&mut TxSide> {
        None
    }
}

impl Sink for &mut TxSide {
    async fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        TxSide::put(self, bytes).await
    }

    fn fields(&mut self) -> Option<&mut TxSide> {
        Some(self)
    }
}

/// Any client transport, written whole.
struct Writer<'a, S>(&'a mut S);

impl<S: ClientIo> Sink for Writer<'_, S> {
    async fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let (r, _) = self.0.write_all(bytes.to_vec()).await;
        r.map(|_| ())
    }
}

/// The request body of an HTTP/2 client, DATA for DATA (credit given back
/// once sent on), then its trailers or the end.
async fn pump_h2(rx: &mut RecvStream, mut up: SendStream<Bytes>, body: bool, web: Option<Web>) {
    if !body {
        return;
    }
    let mut text = B64Stream::default();
    loop {
        match poll_fn(|cx| rx.poll_data(cx)).await {
            Some(Ok(d)) => {
                let n = d.len();
                let d = if web == Some(Web::Text) {
                    match text.decode(&d) {
                        Some(v) => Bytes::from(v),
                        None => {
                            up.send_reset(h2::Reason::CANCEL);
                            return;
                        }
                    }
                } else {
                    d
                };
                if crate::http::h2::send_all(&mut up, d, false).await.is_err() {
                    return;
                }
                let _ = rx.flow_control().release_capacity(n);
            }
            Some(Err(_)) => {
                up.send_reset(h2::Reason::CANCEL);
                return;
            }
            None => break,
        }
    }
    match poll_fn(|cx| rx.poll_trailers(cx)).await {
        Ok(Some(t)) => {
            let _ = up.send_trailers(t);
        }
        _ => {
            let _ = up.send_data(Bytes::new(), true);
        }
    }
}

/// Why an HTTP/1 client's request body stopped short of the upstream.
enum PumpStop {
    /// The client: gone, or its body malformed.
    Client,
    /// The upstream's stream stopped taking it (reset, or its connection
    /// ended).
    Upstream,
}

/// The request body of an HTTP/1 client (what came with the head, then
/// the rest), its framing removed.
async fn pump_h1<S: ClientIo>(
    client: &mut S,
    c: &mut Conn,
    up: &mut SendStream<Bytes>,
    web: Option<Web>,
) -> Result<(), PumpStop> {
    let mut text = B64Stream::default();
    let head_len = c.head.len;
    let mut pending: Vec<u8> = c.buf[head_len..].to_vec();
    c.buf.truncate(head_len);
    let mut left = match c.head.framing {
        BodyFraming::Length(n) => n,
        _ => u64::MAX,
    };
    let mut scanner = ChunkedScanner::new();
    let chunked = c.head.framing == BodyFraming::Chunked;
    loop {
        let mut payload = Vec::new();
        let used = if chunked {
            scanner
                .scan(&pending, |a, b| payload.extend_from_slice(&pending[a..b]))
                .map_err(|_| PumpStop::Client)?
        } else {
            let k = (left.min(pending.len() as u64)) as usize;
            payload.extend_from_slice(&pending[..k]);
            left -= k as u64;
            k
        };
        let done = if chunked {
            scanner.is_done()
        } else {
            left == 0
        };
        if web == Some(Web::Text) {
            payload = text.decode(&payload).ok_or(PumpStop::Client)?;
        }
        if !payload.is_empty() || done {
            crate::http::h2::send_all(up, Bytes::from(payload), done)
                .await
                .map_err(|e| {
                    tracing::debug!(error = %e, "HTTP/2 upstream stopped taking the request body");
                    PumpStop::Upstream
                })?;
        }
        pending.drain(..used);
        if done {
            // Pipelined bytes after the body stay for the next request.
            c.buf.extend_from_slice(&pending);
            c.consume_head_only();
            return Ok(());
        }
        let mut buf = std::mem::take(&mut pending);
        let len = buf.len();
        buf.reserve(16 * 1024);
        let (r, b) = monoio::io::AsyncReadRent::read(client, buf.slice_mut(len..)).await;
        pending = b.into_inner();
        match r {
            Ok(n) if n > 0 => {}
            _ => return Err(PumpStop::Client),
        }
    }
}

/// Waits for the answer's head, writes it to the client, then its DATA as
/// they come and its trailers; returns the status.
#[allow(clippy::too_many_arguments)]
async fn respond<K: Sink>(
    retry: bool,
    c: &mut Conn,
    mut out: K,
    response: h2::client::ResponseFuture,
    deadline: Instant,
    sent_at: Instant,
    target: &pool::TargetState,
    up_cfg: &crate::config::UpstreamConfig,
    web: Option<(Web, String)>,
) -> Result<u16, Failed> {
    // (The request's spans may be gone: an HTTP/1 request body was
    // consumed from the buffer.)
    let (web, asked) = match web {
        Some((m, f)) => (Some(m), f),
        None => (None, String::new()),
    };
    let resp = match monoio::time::timeout_at(deadline.into(), response).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP/2 upstream ended the stream");
            return Err(Failed::Upstream(
                Error::new(
                    ErrorKind::UpstreamClosed,
                    "upstream closed the stream before responding",
                )
                .closing(true),
            ));
        }
        Err(_) => {
            return Err(Failed::Upstream(
                Error::new(ErrorKind::UpstreamTimeout, "upstream timed out").closing(true),
            ));
        }
    };
    let now = Instant::now();
    let rtt = now.saturating_duration_since(sent_at);
    c.upstream_us = Some(rtt.as_micros() as u64);
    if up_cfg.balance == crate::config::Balance::P2cEwma {
        target.observe(rtt, now);
    }
    let (parts, mut body) = resp.into_parts();
    let status = parts.status.as_u16();
    if retry && (502..=504).contains(&status) {
        return Err(Failed::Retry(status));
    }
    c.rhead.status = status;
    let trailers_only = body.is_end_stream();
    // gRPC-Web carries the trailers in the body, so a Trailers-Only answer
    // has one.
    let no_body =
        c.head.is_head || status == 204 || status == 304 || (trailers_only && web.is_none());
    let chunked = !no_body && c.head.minor == 1;
    // An HTTP/2 client takes the answer's fields as they are.
    if web.is_none()
        && status >= 200
        && let Some(tx) = out.fields()
    {
        return respond_fields(c, tx, status, &parts.headers, body, no_body, deadline).await;
    }
    let mut head = Vec::with_capacity(512);
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\n",
        crate::http::reason(status)
    );
    for (name, value) in parts.headers.iter() {
        if matches!(
            name.as_str(),
            "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "content-length"
        ) && (name != "content-length" || chunked || no_body)
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        match web {
            Some(mode) if name == "content-type" => {
                // The message format the backend names, else the one the
                // request named.
                let v = value.to_str().unwrap_or("");
                let fmt = v.find('+').map_or(asked.as_str(), |i| &v[i..]);
                head.extend_from_slice(match mode {
                    Web::Binary => b"application/grpc-web".as_slice(),
                    Web::Text => b"application/grpc-web-text".as_slice(),
                });
                head.extend_from_slice(fmt.as_bytes());
            }
            _ => head.extend_from_slice(value.as_bytes()),
        }
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"X-Request-Id: ");
    head.extend_from_slice(c.rid.as_bytes());
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(&c.resp_extra);
    if no_body {
        if !c.head.is_head {
            head.extend_from_slice(b"Content-Length: 0\r\n");
        }
    } else if chunked {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    // The answer is the connection's last: said as the HTTP/1.1 upstream
    // path says it (the client asked, or its body was cut short), and
    // always when the body is close-delimited.
    if !(no_body || chunked) || !c.head.keep_alive && c.head.minor >= 1 {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    c.bytes_out = head.len() as u64;
    if out.put(&head).await.is_err() {
        return Err(Failed::Client);
    }
    if no_body {
        return Ok(status);
    }
    let mut frame = Vec::new();
    if web.is_some() && trailers_only {
        // The status came in the head: it is the body's trailer frame.
        let t = web_trailers(&parts.headers, web);
        return end_web(&mut out, c, chunked, &t).await.map(|_| status);
    }
    while let Some(d) = next_data(&mut body, deadline).await? {
        let n = d.len();
        let d = if web == Some(Web::Text) {
            Bytes::from(B64.encode(&d))
        } else {
            d
        };
        frame.clear();
        if chunked {
            let _ = write!(frame, "{:x}\r\n", d.len());
            frame.extend_from_slice(&d);
            frame.extend_from_slice(b"\r\n");
        } else {
            frame.extend_from_slice(&d);
        }
        if n == 0 {
            continue;
        }
        if out.put(&frame).await.is_err() {
            return Err(Failed::Client);
        }
        c.bytes_out += frame.len() as u64;
        let _ = body.flow_control().release_capacity(n);
    }
    let trailers = trailers_by(&mut body, deadline).await?;
    if web.is_some() {
        let t = web_trailers(&trailers.unwrap_or_default(), web);
        return end_web(&mut out, c, chunked, &t).await.map(|_| status);
    }
    if chunked {
        frame.clear();
        frame.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.iter().flat_map(|t| t.iter()) {
            frame.extend_from_slice(name.as_str().as_bytes());
            frame.extend_from_slice(b": ");
            frame.extend_from_slice(value.as_bytes());
            frame.extend_from_slice(b"\r\n");
        }
        frame.extend_from_slice(b"\r\n");
        if out.put(&frame).await.is_err() {
            return Err(Failed::Client);
        }
        c.bytes_out += frame.len() as u64;
    }
    Ok(status)
}

/// The answer to an HTTP/2 client, as fields: the upstream's HEADERS,
/// DATA and trailers handed on as they are, without the HTTP/1.1 form
/// between. The fields are those that form would have carried to the
/// client's stream: the upstream's end-to-end ones, `X-Request-Id`, the
/// filters' lines and `content-length: 0` on an empty answer (not to a
/// HEAD); `c.bytes_out` counts that form's bytes (head, chunk framing,
/// trailers), so the access log reads the same either way.
#[allow(clippy::too_many_arguments)]
async fn respond_fields(
    c: &mut Conn,
    tx: &mut TxSide,
    status: u16,
    upstream: &http::HeaderMap,
    mut body: RecvStream,
    no_body: bool,
    deadline: Instant,
) -> Result<u16, Failed> {
    use crate::http::h2::fields;
    // "HTTP/1.1 " status SP reason CRLF
    let reason = crate::http::reason(status);
    let mut head_len = 9 + 3 + 1 + reason.len() + 2;
    let mut headers = http::HeaderMap::with_capacity(upstream.len() + 4);
    for (name, value) in upstream.iter() {
        let n = name.as_str();
        // (The HTTP/1.1 form drops these four and the length, as its body
        // is chunked or empty.)
        if matches!(
            n,
            "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "content-length"
        ) {
            continue;
        }
        head_len += n.len() + 2 + value.len() + 2;
        if !fields::not_in_h2_answer(n) {
            headers.append(name.clone(), value.clone());
        }
    }
    let rid = http::HeaderValue::from_bytes(c.rid.as_bytes()).map_err(|_| Failed::Client)?;
    head_len += b"X-Request-Id: ".len() + rid.len() + 2;
    fields::append(
        &mut headers,
        http::HeaderName::from_static("x-request-id"),
        rid,
    );
    head_len += c.resp_extra.len();
    if !c.resp_extra.is_empty() {
        let extra = Bytes::copy_from_slice(&c.resp_extra);
        fields::lines(&extra, 0, |ns, ne, vs, ve| {
            if let Some(name) = fields::name(&extra[ns..ne])
                && !fields::not_in_h2_answer(name.as_str())
                && let Some(v) = fields::value(&extra, vs, ve)
            {
                fields::append(&mut headers, name, v);
            }
            Some(())
        });
    }
    if no_body {
        if !c.head.is_head {
            head_len += b"Content-Length: 0\r\n".len();
            headers.append(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_static("0"),
            );
        }
    } else {
        head_len += b"Transfer-Encoding: chunked\r\n".len();
    }
    head_len += 2;
    c.bytes_out = head_len as u64;
    let mut resp = http::Response::new(());
    *resp.status_mut() = http::StatusCode::from_u16(status).map_err(|_| Failed::Client)?;
    *resp.headers_mut() = headers;
    if tx.respond(resp, !no_body).is_err() {
        return Err(Failed::Client);
    }
    if no_body {
        return Ok(status);
    }
    while let Some(d) = next_data(&mut body, deadline).await? {
        let n = d.len();
        if n == 0 {
            continue;
        }
        if tx.data(d).await.is_err() {
            return Err(Failed::Client);
        }
        // As a chunk: its size in hex, CRLF, the data, CRLF.
        let hex = (usize::BITS - n.leading_zeros()).div_ceil(4) as usize;
        c.bytes_out += (hex + 2 + n + 2) as u64;
        let _ = body.flow_control().release_capacity(n);
    }
    let trailers = trailers_by(&mut body, deadline).await?;
    // As the last chunk: "0" CRLF, the trailer lines, CRLF.
    let mut tail = 3 + 2;
    for (name, value) in trailers.iter().flat_map(|t| t.iter()) {
        tail += name.as_str().len() + 2 + value.len() + 2;
    }
    if tx.end(trailers).is_err() {
        return Err(Failed::Client);
    }
    c.bytes_out += tail as u64;
    Ok(status)
}

/// The answer's next DATA by `deadline`; `None` at its end.
async fn next_data(body: &mut RecvStream, deadline: Instant) -> Result<Option<Bytes>, Failed> {
    match monoio::time::timeout_at(deadline.into(), poll_fn(|cx| body.poll_data(cx))).await {
        Ok(Some(Ok(d))) => Ok(Some(d)),
        Ok(None) => Ok(None),
        Ok(Some(Err(_))) | Err(_) => Err(Failed::Client),
    }
}

/// The answer's trailers (after its last DATA) by `deadline`.
async fn trailers_by(
    body: &mut RecvStream,
    deadline: Instant,
) -> Result<Option<http::HeaderMap>, Failed> {
    match monoio::time::timeout_at(deadline.into(), poll_fn(|cx| body.poll_trailers(cx))).await {
        Ok(Ok(t)) => Ok(t),
        _ => Err(Failed::Client),
    }
}

/// A gRPC-Web request's encoding.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Web {
    /// `application/grpc-web[+fmt]`: frames as gRPC's.
    Binary,
    /// `application/grpc-web-text[+fmt]`: the frames base64-encoded.
    Text,
}

/// The message format suffix of the request's `Content-Type` (`+proto`),
/// or nothing.
fn web_format(c: &Conn) -> String {
    c.lines
        .iter()
        .find(|l| l.name.of(&c.buf).eq_ignore_ascii_case(b"content-type"))
        .map(|l| String::from_utf8_lossy(l.value.of(&c.buf)).into_owned())
        .and_then(|v| v.find('+').map(|i| v[i..].trim().to_string()))
        .unwrap_or_default()
}

/// The gRPC-Web encoding of the request, from its `Content-Type`.
fn web_mode(c: &Conn) -> Option<Web> {
    let ct = c
        .lines
        .iter()
        .find(|l| l.name.of(&c.buf).eq_ignore_ascii_case(b"content-type"))?
        .value
        .of(&c.buf);
    if ct.starts_with(b"application/grpc-web-text") {
        Some(Web::Text)
    } else if ct.starts_with(b"application/grpc-web") {
        Some(Web::Binary)
    } else {
        None
    }
}

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// gRPC's trailers as gRPC-Web's trailer frame (flag 0x80, length, the
/// fields as `name:value` lines), base64-encoded in text mode.
fn web_trailers(fields: &http::HeaderMap, web: Option<Web>) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields.iter() {
        let n = name.as_str();
        if n.starts_with("grpc-") || !matches!(n, "content-type" | "content-length" | "date") {
            block.extend_from_slice(n.as_bytes());
            block.push(b':');
            block.extend_from_slice(value.as_bytes());
            block.extend_from_slice(b"\r\n");
        }
    }
    let mut frame = Vec::with_capacity(5 + block.len());
    frame.push(0x80);
    frame.extend_from_slice(&(block.len() as u32).to_be_bytes());
    frame.extend_from_slice(&block);
    if web == Some(Web::Text) {
        B64.encode(&frame).into_bytes()
    } else {
        frame
    }
}

/// Writes the trailer frame as the body's last bytes and ends the body.
async fn end_web<K: Sink>(
    out: &mut K,
    c: &mut Conn,
    chunked: bool,
    t: &[u8],
) -> Result<(), Failed> {
    let mut frame = Vec::with_capacity(t.len() + 16);
    if chunked {
        let _ = write!(frame, "{:x}\r\n", t.len());
        frame.extend_from_slice(t);
        frame.extend_from_slice(b"\r\n0\r\n\r\n");
    } else {
        frame.extend_from_slice(t);
    }
    c.bytes_out += frame.len() as u64;
    out.put(&frame).await.map_err(|_| Failed::Client)
}

/// Decodes base64 that arrives in pieces of any length (gRPC-Web text
/// bodies; a padded group may end any piece).
#[derive(Default)]
struct B64Stream {
    rest: Vec<u8>,
}

impl B64Stream {
    /// The bytes decoded from `data` (and what was left of the last
    /// piece); `None` when it is not base64.
    fn decode(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.rest
            .extend(data.iter().copied().filter(|b| !b.is_ascii_whitespace()));
        let whole = self.rest.len() / 4 * 4;
        let mut out = Vec::with_capacity(whole / 4 * 3);
        let mut from = 0;
        // Groups up to each padded one decode together.
        for g in (0..whole).step_by(4) {
            if self.rest[g + 3] == b'=' {
                B64.decode_vec(&self.rest[from..g + 4], &mut out).ok()?;
                from = g + 4;
            }
        }
        B64.decode_vec(&self.rest[from..whole], &mut out).ok()?;
        self.rest.drain(..whole);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_and_limits() {
        assert_eq!(
            parse_grpc_timeout(b"100m"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        for bad in [&b""[..], b"m", b"123456789m", b"10x", b"-1S", b"1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn base64_in_pieces_with_padding_inside() {
        let mut d = B64Stream::default();
        let a = B64.encode(b"hello");
        let b = B64.encode(b"world!");
        let all = format!("{a}{b}");
        let mut out = Vec::new();
        for piece in all.as_bytes().chunks(3) {
            out.extend(d.decode(piece).unwrap());
        }
        assert_eq!(out, b"helloworld!");
        assert!(B64Stream::default().decode(b"!!!!").is_none());
    }
}
