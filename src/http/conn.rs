//! The downstream connection loop: read a head (header timeout, size
//! limits), parse, route, hand the request to the proxy, repeat while the
//! connection stays keep-alive. Pipelined requests are answered in order:
//! bytes after a request stay in the buffer for the next turn.
//!
//! Every error ringgate answers itself goes through [`write_error`]: a JSON
//! body with the status and request id, written in full before a close.
//!
//! Idle connections cost no buffer. A connection's state ([`Conn`]: its
//! read buffer, header tables, outgoing head) is taken from the worker's
//! spares for a *turn* and given back when the turn ends. A turn waits
//! for the next request with an ordinary receive (one per request on a busy
//! connection), under a grace period ([`IDLE_GRACE`]) kept by the
//! watchdog: a receive still waiting when it ends is cancelled, the state
//! goes back to the worker with the turn's task, and the connection waits
//! for readability with nothing lent (a poll, no buffer) until bytes come,
//! its deadline passes or a drain ends it.

use super::parse::{self, BodyFraming, Parsed, RequestHead};
use crate::proxy::forward::Conn;
use crate::proxy::session::{Next, Session};
use crate::runtime::watchdog::Watchdog;
use crate::runtime::worker::Worker;
use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, Splitable,
};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

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

/// How long a connection waits for its next request (or its first) with
/// its state and a receive armed; after that it waits for readability
/// with no buffer (see the module header). The watchdog ends the grace
/// within a tick or two of it.
pub const IDLE_GRACE: Duration = Duration::from_millis(100);

/// What a wait for a request's first bytes came to.
enum Wait {
    /// The receive completed (bytes, end of file or an error).
    Read(std::io::Result<usize>),
    /// The deadline passed: close.
    TimedOut,
    /// Nothing came within the grace period: wait without the state.
    Idle,
}

/// Waits for the first bytes of a request into `buf` (empty) until `at`,
/// like [`read_more_until`], but gives up with [`Wait::Idle`] once the
/// grace period is over (the receive is cancelled and its buffer comes
/// back).
async fn read_or_idle<S: CancelableAsyncReadRent>(
    s: &mut S,
    fd: std::os::fd::RawFd,
    buf: Vec<u8>,
    dog: &Watchdog,
    at: u64,
    idle: bool,
) -> (Wait, Vec<u8>) {
    let grace = dog.after(IDLE_GRACE);
    if at <= grace {
        // The deadline comes first: a plain timed read.
        let (r, b) = read_more_until(s, fd, buf, dog, at, idle).await;
        return match r {
            Ok(r) => (Wait::Read(r), b),
            Err(()) => (Wait::TimedOut, b),
        };
    }
    let (armed, cancel) = dog.arm_graced(fd, at, idle, grace);
    let len = buf.len();
    let (r, b) = s.cancelable_read(buf.slice_mut(len..), cancel).await;
    let b = b.into_inner();
    if armed.fired() {
        return (Wait::TimedOut, b);
    }
    match r {
        Err(e) if armed.graced() && e.raw_os_error() == Some(libc::ECANCELED) => (Wait::Idle, b),
        r => (Wait::Read(r), b),
    }
}

/// A client transport a connection can wait on for readability without
/// lending it a buffer.
pub trait ReadReady {
    /// Completes once the transport has bytes to read, end of file or an
    /// error (its read side shut by the watchdog among them).
    fn read_ready(&mut self) -> impl std::future::Future<Output = std::io::Result<()>>;

    /// A descriptor whose readability means the stream has bytes to read,
    /// to be polled from elsewhere (a tunnel's direction at rest); `None`
    /// when the stream may hold decoded bytes the descriptor does not show.
    fn ready_fd(&self) -> Option<std::os::fd::RawFd>;
}

impl ReadReady for monoio::net::TcpStream {
    #[inline]
    fn read_ready(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> {
        // Not relaxed: on the epoll fallback a readiness left over from
        // before the cancelled receive is checked with a poll first.
        self.readable(false)
    }

    fn ready_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.as_raw_fd())
    }
}

/// A connection's state, taken from the worker's spares (or allocated)
/// and given back when the connection ends, however it ends.
pub(crate) struct Held<'w> {
    w: &'w Worker,
    c: std::mem::ManuallyDrop<Box<Conn>>,
    /// An HTTP/2 stream's (kept among more spares).
    stream: bool,
}

impl<'w> Held<'w> {
    pub(crate) fn take(w: &'w Worker, peer: SocketAddr) -> Self {
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
            stream: false,
        }
    }

    /// Like [`Held::take`], for an HTTP/2 stream: while streams keep
    /// coming, up to [`SPARE_STREAM_CONNS`](crate::runtime::worker::SPARE_STREAM_CONNS)
    /// finished ones are kept for the next.
    pub(crate) fn take_stream(w: &'w Worker, peer: SocketAddr) -> Self {
        w.streams_begun.set(w.streams_begun.get() + 1);
        let mut held = Held::take(w, peer);
        held.stream = true;
        held
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
        c.h2 = false;
        c.grpc = false;
        let mut spares = self.w.spare_conns.borrow_mut();
        let keep = if self.stream {
            crate::runtime::worker::SPARE_STREAM_CONNS
        } else {
            crate::runtime::worker::SPARE_CONNS
        };
        if spares.len() < keep && c.reusable(self.w.config.server.buffer_bytes) {
            spares.push(c);
        } else {
            // Freed: the worker gives such memory back to the system once
            // enough of it piled up (connections gone idle or closed).
            self.w.freed_conns.set(self.w.freed_conns.get() + 1);
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
        &[],
    );
    let _ = monoio::time::timeout(Duration::from_secs(1), s.write_all(buf)).await;
}

/// Formats a JSON error response into `buf`, with `extra` header lines
/// (those filters added for the client's answer, e.g. CORS).
pub fn error_response(
    buf: &mut Vec<u8>,
    status: u16,
    message: &str,
    request_id: &[u8],
    close: bool,
    allow: Option<&str>,
    extra: &[u8],
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
    buf.extend_from_slice(extra);
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

/// Writes an error response (with `extra` header lines); returns false
/// when the client is gone.
#[allow(clippy::too_many_arguments)]
pub async fn write_error<S: AsyncWriteRent>(
    s: &mut S,
    scratch: &mut Vec<u8>,
    status: u16,
    message: &str,
    request_id: &[u8],
    close: bool,
    allow: Option<&str>,
    extra: &[u8],
) -> bool {
    let mut buf = std::mem::take(scratch);
    error_response(&mut buf, status, message, request_id, close, allow, extra);
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
    let _ = write_error(s, &mut c.scratch, status, msg, &rid, true, None, &[]).await;
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

/// How a connection's turn with its state ended.
enum Turn {
    /// No request came within the grace period: wait for one without the
    /// state until `at` (`first`: it would be the connection's first).
    Idle { at: u64, first: bool },
    /// Close the connection.
    Close,
    /// Close the connection after a request that declared a body, which
    /// may not have been read whole: linger (see [`linger`]).
    CloseAfterBody,
    /// Tunnel (the backend's stream, client bytes already read, the
    /// tunnel's idle timeout).
    Upgrade(crate::upstream::tls::UpStream, Vec<u8>, Duration),
    /// The client opened with the HTTP/2 preface (prior knowledge): serve
    /// HTTP/2, the bytes read so far first.
    H2(Vec<u8>),
}

/// A client transport that can be served as HTTP/2 (its poll-style form).
pub trait IntoH2 {
    /// The transport for the h2 crate; `Err` when it cannot be converted.
    fn into_h2(self) -> std::io::Result<super::h2::io::Io>;
}

impl IntoH2 for monoio::net::TcpStream {
    fn into_h2(self) -> std::io::Result<super::h2::io::Io> {
        super::h2::io::Io::plain(self)
    }
}

impl IntoH2 for crate::tls::stream::TlsStream {
    fn into_h2(self) -> std::io::Result<super::h2::io::Io> {
        super::h2::io::Io::tls(self)
    }
}

/// Serves one client connection until it closes.
pub async fn serve<S>(w: &Worker, stream: S, peer: SocketAddr)
where
    S: AsyncReadRent
        + CancelableAsyncReadRent
        + ReadReady
        + IntoH2
        + super::ClientIo
        + AsyncWriteRent
        + Splitable
        + AsRawFd
        + 'static,
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

/// Serves a connection (`tls`: what its handshake settled).
///
/// The connection's own task holds only the socket and the wait between
/// turns; a turn (its state and its request futures) lives in an
/// allocation of its own for as long as the connection is busy.
async fn serve_with<S>(
    w: &Worker,
    mut stream: S,
    peer: SocketAddr,
    tls: Option<std::rc::Rc<crate::tls::ConnTls>>,
) where
    S: AsyncReadRent
        + CancelableAsyncReadRent
        + ReadReady
        + IntoH2
        + super::ClientIo
        + AsyncWriteRent
        + Splitable
        + AsRawFd
        + 'static,
    S::OwnedRead: AsyncReadRent,
    S::OwnedWrite: AsyncWriteRent,
{
    let fd = stream.as_raw_fd();
    let mut first = true;
    let mut at = None;
    loop {
        match Box::pin(turn(w, &mut stream, fd, peer, &tls, first, at)).await {
            Turn::Close => {
                if !w.draining.get() && unread(fd) {
                    Box::pin(linger(w, &mut stream, fd)).await;
                }
                return;
            }
            Turn::CloseAfterBody => {
                if !w.draining.get() {
                    Box::pin(linger(w, &mut stream, fd)).await;
                }
                return;
            }
            Turn::Upgrade(upstream, pending, idle_timeout) => {
                Box::pin(crate::proxy::tunnel::tunnel(
                    w,
                    stream,
                    upstream,
                    pending,
                    idle_timeout,
                ))
                .await;
                return;
            }
            Turn::H2(pending) => {
                if let Ok(io) = stream.into_h2() {
                    Box::pin(super::h2::serve(w, io, pending, peer, tls)).await;
                }
                return;
            }
            Turn::Idle {
                at: deadline,
                first: f,
            } => {
                first = f;
                at = Some(deadline);
            }
        }
        // Idle: listed (unless before a first request) so a drain ends the
        // wait at once, as in a turn.
        if !first && w.draining.get() {
            return;
        }
        let Some(deadline) = at else { return };
        let armed = w.watchdog.arm(fd, deadline, !first);
        let r = stream.read_ready().await;
        let fired = armed.fired();
        drop(armed);
        if fired {
            if first {
                let mut held = Held::take(w, peer);
                held.tls = tls.clone();
                Box::pin(refuse_head(
                    &mut stream,
                    w,
                    &mut held,
                    408,
                    "no request received in time",
                ))
                .await;
            }
            return;
        }
        if r.is_err() {
            return;
        }
    }
}

/// Longest a closing connection keeps reading what its client still sends.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes a closing connection reads and drops.
const LINGER_BYTES: usize = 4 << 20;

/// True when the client's bytes are waiting unread on `fd` (one
/// non-blocking peek).
fn unread(fd: std::os::fd::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is the connection's open socket; at most one byte is
    // written, into a local.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// Closes a connection whose client may still be sending: the last
/// request declared a body (refused on its head, or cut short by an early
/// answer), or bytes are waiting unread. Closed with bytes unread, the
/// socket would answer with a reset, and a client still writing could lose
/// the answer already sent to it. So the answer ends with the stream's
/// shutdown (a FIN; a close_notify first over TLS) and what the client
/// still sends is read and dropped until it closes, for at most [`LINGER`]
/// and [`LINGER_BYTES`] (the watchdog ends the wait; a drain at once).
async fn linger<S: AsyncReadRent + AsyncWriteRent>(
    w: &Worker,
    stream: &mut S,
    fd: std::os::fd::RawFd,
) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let armed = w.watchdog.arm(fd, w.watchdog.after(LINGER), true);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        let (r, b) = stream.read(buf).await;
        buf = b;
        buf.clear();
        match r {
            Ok(n) if n > 0 && !armed.fired() => dropped += n,
            _ => break,
        }
    }
}

/// One turn of a connection with its state: requests until it closes,
/// upgrades or waits past the grace period for the next one. `at`: the
/// deadline of the wait for the turn's first request, when an idle wait
/// already began it.
async fn turn<S>(
    w: &Worker,
    stream: &mut S,
    fd: std::os::fd::RawFd,
    peer: SocketAddr,
    tls: &Option<std::rc::Rc<crate::tls::ConnTls>>,
    mut first: bool,
    mut at: Option<u64>,
) -> Turn
where
    S: AsyncReadRent + CancelableAsyncReadRent + AsyncWriteRent + AsRawFd + super::ClientIo,
{
    let mut held = Held::take(w, peer);
    let c: &mut Conn = &mut held;
    c.tls = tls.clone();
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
                return Turn::Close;
            }
            let deadline = at.take().unwrap_or_else(|| w.watchdog.after(t));
            let (r, b) = read_or_idle(
                stream,
                fd,
                std::mem::take(&mut c.buf),
                &w.watchdog,
                deadline,
                !first,
            )
            .await;
            c.buf = b;
            match r {
                Wait::Read(Ok(n)) if n > 0 => {}
                Wait::Idle => {
                    return Turn::Idle {
                        at: deadline,
                        first,
                    };
                }
                Wait::TimedOut if first => {
                    refuse_head(stream, w, c, 408, "no request received in time").await;
                    return Turn::Close;
                }
                _ => return Turn::Close,
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
                // HTTP/2 with prior knowledge: the preface opens the
                // connection.
                if first && srv.http2.enabled && c.buf.starts_with(super::h2::PREFACE_LINE) {
                    return Turn::H2(std::mem::take(&mut c.buf));
                }
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
                        refuse_head(stream, w, c, 431, "request head too large").await;
                        return Turn::Close;
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
                        refuse_head(stream, w, c, status, msg).await;
                        return Turn::Close;
                    }
                    if c.buf.len() == c.buf.capacity() {
                        let want = (c.buf.capacity() * 2).min(srv.max_header_bytes);
                        c.buf.reserve_exact(want - c.buf.len());
                    }
                    let until = *deadline.get_or_insert(w.watchdog.after(srv.header_timeout));
                    let (r, b) = read_more_until(
                        stream,
                        fd,
                        std::mem::take(&mut c.buf),
                        &w.watchdog,
                        until,
                        false,
                    )
                    .await;
                    c.buf = b;
                    match r {
                        Ok(Ok(n)) if n > 0 => {}
                        Err(()) => {
                            refuse_head(stream, w, c, 408, "request head not received in time")
                                .await;
                            return Turn::Close;
                        }
                        _ => return Turn::Close,
                    }
                }
                Err(e) => {
                    refuse_head(stream, w, c, e.status(), e.message()).await;
                    return Turn::Close;
                }
            }
        }
        first = false;
        // The head may have waited through a reload on an idle keep-alive
        // connection: serve it with the generation current now, so a
        // reload (a revoked key, a changed route) applies to every request
        // that arrives after it.
        let snap = w.current();
        let idle_timeout = snap.config.server.idle_timeout;
        let mut session = Session::start(w, snap, c);
        let answer = session.run(stream, c).await;
        match session.respond(stream, c, answer).await {
            Next::KeepAlive => {}
            Next::Close => {
                return match c.head.framing {
                    BodyFraming::Length(0) | BodyFraming::None => Turn::Close,
                    _ => Turn::CloseAfterBody,
                };
            }
            Next::Upgrade(upstream) => {
                // The client's bytes after the upgrade request, if any (the
                // buffer stays with the state otherwise).
                let pending = if c.buf.is_empty() {
                    Vec::new()
                } else {
                    std::mem::take(&mut c.buf)
                };
                return Turn::Upgrade(upstream, pending, idle_timeout);
            }
        }
    }
}

impl RequestHead {
    /// True when the request carries a body.
    pub fn has_body(&self) -> bool {
        self.framing != BodyFraming::None
    }
}
