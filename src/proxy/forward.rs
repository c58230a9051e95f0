//! One request through the upstream phases: choose the upstream (a route's
//! canary split), ask its circuit breaker (open: the fallback answers),
//! pick an available target, take a pooled connection (or connect), write
//! the forwarded head and body, read the response head, relay it and the
//! body back, return the connection.
//!
//! Key components: [`Conn`] (all per-connection buffers, reused for every
//! request on it) and [`forward`].
//!
//! Retries: a request that failed on a reused pooled connection before any
//! response byte arrived is sent once more on a fresh connection when it is
//! idempotent and its body was held whole. Beyond that, up to `retries`
//! tries go to other targets — for connect failures always, and for
//! idempotent requests held whole also for 502/503/504, resets before any
//! response byte and per-try timeouts — within the worker's retry budget
//! and the request deadline. Nothing is retried once the response head went
//! to the client. Every try reports to passive outlier detection; the
//! request's final result is recorded once with the breaker.
//!
//! Performance notes: the forwarded head is a list of slices of the client
//! buffer plus a few added header lines, written with one `writev`; the
//! response head likewise. No allocation per request after warm-up.

use crate::config::Config;
use crate::config::{Balance, Split, UpstreamConfig};
use crate::error::{Error, ErrorKind};
use crate::http::chunked::ChunkedScanner;
use crate::http::conn::{read_more_until, read_more_within};
use crate::http::head::{OutHead, write_head};
use crate::http::parse::{self, BodyFraming, HeaderLine, Parsed, RequestHead, ResponseHead};
use crate::runtime::watchdog::Watchdog;
use crate::runtime::worker::{Generation, Worker};
use crate::upstream::breaker::Ticket;
use crate::upstream::shared::Report;
use crate::upstream::tls::UpStream;
use crate::upstream::{balance, pool};
use monoio::buf::IoBuf;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Instant;

pub use crate::http::client::MAX_RESPONSE_HEAD;

/// The request id of the current request (client's or generated).
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; 128],
    len: u8,
    /// True when the client sent it.
    pub from_client: bool,
}

impl RequestId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Everything a client connection owns, reused across its requests.
pub struct Conn {
    /// Client read buffer; `len()` is the bytes held.
    pub buf: Vec<u8>,
    /// Upstream read buffer.
    pub ubuf: Vec<u8>,
    /// Current request head.
    pub head: RequestHead,
    /// Its header lines.
    pub lines: Vec<HeaderLine>,
    /// Current response head.
    pub rhead: ResponseHead,
    /// Its header lines.
    pub rlines: Vec<HeaderLine>,
    /// Outgoing head under construction.
    pub out: OutHead,
    /// Buffer for error responses.
    pub scratch: Vec<u8>,
    /// End of the current request in `buf` when ringgate read its body
    /// itself (see [`crate::http::conn::read_body`]).
    pub body_end: usize,
    /// Header lines filters add to the upstream request.
    pub up_extra: Vec<u8>,
    /// The upstream chosen for the current request (after a canary split).
    pub upstream_id: Option<usize>,
    /// The target that served the current request, if any.
    pub upstream_addr: Option<SocketAddr>,
    /// Time from request sent to response head, in µs.
    pub upstream_us: Option<u64>,
    /// Response bytes written to the client for the current request.
    pub bytes_out: u64,
    /// Copies of the request fields the access log needs.
    pub log_fields: Vec<u8>,
    /// Method, path, user agent, referer: ranges of `log_fields`.
    pub log_spans: [(usize, usize); 4],
    /// Header lines filters add to the client response.
    pub resp_extra: Vec<u8>,
    /// Transform and versioning rewrites of the current request (request
    /// target, status line, response head ops); empty for plain routes.
    pub rewrite: crate::filter::transform::Rewrite,
    /// Current request id.
    pub rid: RequestId,
    /// A fresh random id for the current request (see `set_request_id`).
    pub fresh: [u8; 32],
    /// Client address.
    pub peer: SocketAddr,
    /// When the current request's head was parsed (its timeouts and its
    /// duration count from here).
    pub started: Instant,
    /// The peer is one of `server.trusted_proxies`: its identity headers
    /// are extended, not replaced.
    pub trusted_peer: bool,
    /// The last compose answer may be stored by a cache (every part
    /// answered, none said not to store).
    pub compose_cacheable: bool,
    /// The content coding negotiated for the current request's answer
    /// (a route with `compress`).
    pub coding: Option<crate::filter::compress::Coding>,
    /// The body phase's encoder, when the response header phase chose to
    /// compress the current answer.
    pub encoder: Option<crate::filter::compress::Encoder>,
    /// The framing ringgate chose for a body that goes through the body
    /// phase (read by `build_response_head`).
    pub out_framing: Option<BodyFraming>,
    /// The connection's TLS facts (`None`: plain HTTP).
    pub tls: Option<std::rc::Rc<crate::tls::ConnTls>>,
    /// The request is an HTTP/2 stream (its head rendered by ringgate).
    pub h2: bool,
    /// The request is a gRPC call (HTTP/2, `application/grpc`): errors
    /// ringgate makes are gRPC statuses.
    pub grpc: bool,
    peer_ip: ([u8; 48], u8),
}

/// The allocations a connection's state owns.
struct Buffers {
    buf: Vec<u8>,
    ubuf: Vec<u8>,
    lines: Vec<HeaderLine>,
    rlines: Vec<HeaderLine>,
    out: OutHead,
    scratch: Vec<u8>,
    /// `up_extra`, `resp_extra`, `log_fields`.
    small: [Vec<u8>; 3],
}

impl Conn {
    /// Buffers for a new connection from `peer`.
    pub fn new(buffer_bytes: usize, peer: SocketAddr, max_headers: usize) -> Self {
        Conn::with_buffers(
            Buffers {
                buf: Vec::with_capacity(buffer_bytes),
                // Lent by the worker for each exchange (`Worker::lend_ubuf`).
                ubuf: Vec::new(),
                lines: Vec::with_capacity(max_headers.min(64)),
                rlines: Vec::with_capacity(64),
                out: OutHead::new(),
                scratch: Vec::with_capacity(512),
                small: Default::default(),
            },
            peer,
        )
    }

    /// State for a new connection from `peer` in `spare`, a finished
    /// connection's state: its buffers are kept (emptied), every other
    /// field starts fresh, so nothing of the previous client carries over.
    /// Saves the buffer allocations of a new connection.
    pub fn reuse(spare: &mut Conn, buffer_bytes: usize, peer: SocketAddr) {
        let take = |v: &mut Vec<u8>| {
            let mut v = std::mem::take(v);
            v.clear();
            // A buffer still held by a cancelled operation came back empty.
            v.reserve(buffer_bytes);
            v
        };
        let buf = take(&mut spare.buf);
        let mut ubuf = std::mem::take(&mut spare.ubuf);
        ubuf.clear();
        let mut lines = std::mem::take(&mut spare.lines);
        lines.clear();
        let mut rlines = std::mem::take(&mut spare.rlines);
        rlines.clear();
        let mut out = std::mem::take(&mut spare.out);
        out.clear();
        out.src = Vec::new();
        let mut scratch = std::mem::take(&mut spare.scratch);
        scratch.clear();
        // The small per-request buffers too (an HTTP/2 stream's state is
        // reused for every stream), unless one grew large.
        let small = [
            &mut spare.up_extra,
            &mut spare.resp_extra,
            &mut spare.log_fields,
        ]
        .map(|v| {
            let mut v = std::mem::take(v);
            v.clear();
            if v.capacity() > 4096 {
                v = Vec::new();
            }
            v
        });
        *spare = Conn::with_buffers(
            Buffers {
                buf,
                ubuf,
                lines,
                rlines,
                out,
                scratch,
                small,
            },
            peer,
        );
    }

    /// Whether this state is worth keeping for another connection: its
    /// buffers did not grow past twice `buffer_bytes` (a large head or
    /// body would otherwise stay allocated in the spares).
    pub fn reusable(&self, buffer_bytes: usize) -> bool {
        self.buf.capacity() <= 2 * buffer_bytes && self.ubuf.capacity() <= 2 * buffer_bytes
    }

    fn with_buffers(b: Buffers, peer: SocketAddr) -> Self {
        let [up_extra, resp_extra, log_fields] = b.small;
        let mut ip = [0u8; 48];
        let n = match peer.ip() {
            // Four numbers and three dots, without the formatter (a new
            // connection's state, and each HTTP/2 stream's, starts here).
            std::net::IpAddr::V4(v4) => {
                let mut n = 0;
                for (i, o) in v4.octets().iter().enumerate() {
                    if i > 0 {
                        ip[n] = b'.';
                        n += 1;
                    }
                    let mut d = itoa::Buffer::new();
                    let d = d.format(*o).as_bytes();
                    ip[n..n + d.len()].copy_from_slice(d);
                    n += d.len();
                }
                n
            }
            v6 => {
                let mut w = &mut ip[..];
                let _ = write!(w, "{v6}");
                48 - w.len()
            }
        };
        Conn {
            buf: b.buf,
            ubuf: b.ubuf,
            head: RequestHead::default(),
            lines: b.lines,
            rhead: ResponseHead::default(),
            rlines: b.rlines,
            out: b.out,
            scratch: b.scratch,
            body_end: 0,
            up_extra,
            upstream_id: None,
            upstream_addr: None,
            upstream_us: None,
            bytes_out: 0,
            log_fields,
            log_spans: [(0, 0); 4],
            resp_extra,
            rewrite: Default::default(),
            rid: RequestId {
                bytes: [0; 128],
                len: 0,
                from_client: false,
            },
            fresh: [0; 32],
            peer,
            started: Instant::now(),
            trusted_peer: false,
            compose_cacheable: false,
            coding: None,
            encoder: None,
            out_framing: None,
            tls: None,
            h2: false,
            grpc: false,
            peer_ip: (ip, n as u8),
        }
    }

    /// Takes the client's `X-Request-Id` or generates one. Either way a
    /// fresh 32-hex-digit id is left in `fresh` (it seeds the trace id).
    pub fn set_request_id(&mut self, w: &Worker) {
        w.next_request_id(&mut self.fresh);
        if let Some(s) = self.head.request_id {
            let v = s.of(&self.buf);
            self.rid.bytes[..v.len()].copy_from_slice(v);
            self.rid.len = v.len() as u8;
            self.rid.from_client = true;
        } else {
            self.rid.bytes[..32].copy_from_slice(&self.fresh);
            self.rid.len = 32;
            self.rid.from_client = false;
        }
    }

    /// Counts a reply the gateway wrote itself (an error, a filter's
    /// answer) as the response bytes: the reply writers leave what they
    /// sent in `scratch`, and nothing when the write failed.
    pub fn count_reply(&mut self) {
        self.bytes_out = self.scratch.len() as u64;
    }

    /// Drops a body-less request's head from the buffer.
    pub fn consume_head_only(&mut self) {
        let n = self.head.len;
        self.consume(n);
    }

    /// Drops the first `n` bytes of the buffer (a finished request).
    pub fn consume_to(&mut self, n: usize) {
        self.consume(n)
    }

    fn consume(&mut self, n: usize) {
        let len = self.buf.len();
        self.buf.copy_within(n..len, 0);
        self.buf.truncate(len - n);
    }
}

/// How a forwarded request ended.
pub enum Outcome {
    /// The response was relayed.
    Done {
        /// The client connection may serve another request.
        keep_alive: bool,
    },
    /// A compose route answered (its parts' merge was written); the
    /// request head is still in the buffer.
    Composed {
        /// The status sent.
        status: u16,
        /// The client connection may serve another request.
        keep_alive: bool,
    },
    /// Nothing was sent to the client yet: answer with this error.
    Error(Error),
    /// The backend switched protocols: tunnel.
    Upgrade(UpStream),
    /// The client connection is unusable; close it silently.
    Abort,
}

fn err(kind: ErrorKind, message: &'static str, close: bool) -> Outcome {
    Outcome::Error(Error::new(kind, message).closing(close))
}

/// Builds the forwarded request head into `c.out` (pieces only), by the
/// rules README's "What ringgate forwards" states: the framing header and
/// `Host` are ringgate's own, lines go out as slices of the bytes read only
/// when the whole head had CRLF line ends (else each is rewritten with
/// CRLF), and the client's identity headers are replaced unless the peer
/// is a trusted proxy (`c.trusted_peer`).
pub fn build_request_head(c: &mut Conn, target: SocketAddr) {
    let buf = &c.buf;
    let h = &c.head;
    let out = &mut c.out;
    out.clear();
    // Request line: always HTTP/1.1 upstream, origin-form (a transform's
    // or versioning's rewritten target when there is one).
    if !c.rewrite.target.is_empty() {
        out.src(h.method.start as usize, h.method.end as usize);
        out.stat(b" ");
        out.extra(&c.rewrite.target);
        out.stat(b" HTTP/1.1\r\n");
    } else if h.minor == 1 && h.path_query == h.target && !h.bare_lf {
        let line_end = h.target.end as usize
            + buf[h.target.end as usize..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
        out.src(h.method.start as usize, line_end);
    } else {
        out.src(h.method.start as usize, h.method.end as usize);
        out.stat(b" ");
        out.src(h.path_query.start as usize, h.path_query.end as usize);
        out.stat(b" HTTP/1.1\r\n");
    }
    push_lines(out, &c.lines, buf, h.bare_lf);
    let e = &mut out.extra;
    let start = e.len();
    let ip = &c.peer_ip.0[..c.peer_ip.1 as usize];
    match h.host {
        None => {
            let _ = write!(e, "Host: {target}\r\n");
        }
        Some(host) if h.host_from_target => {
            e.extend_from_slice(b"Host: ");
            e.extend_from_slice(host.of(buf));
            e.extend_from_slice(b"\r\n");
        }
        Some(_) => {}
    }
    match h.framing {
        BodyFraming::Length(n) => {
            e.extend_from_slice(b"Content-Length: ");
            e.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            e.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => e.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyFraming::None if h.zero_length => e.extend_from_slice(b"Content-Length: 0\r\n"),
        _ => {}
    }
    e.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(x) = h.forwarded_for
        && c.trusted_peer
    {
        e.extend_from_slice(x.of(buf));
        e.extend_from_slice(b", ");
    }
    e.extend_from_slice(ip);
    // One copy each (this runs for every request).
    match &c.tls {
        None => e.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\n"),
        Some(t) => {
            e.extend_from_slice(b"\r\nX-Forwarded-Proto: https\r\n");
            e.extend_from_slice(&t.upstream_lines);
        }
    }
    if let Some(f) = h.forwarded {
        e.extend_from_slice(b"Forwarded: ");
        if c.trusted_peer {
            e.extend_from_slice(f.of(buf));
            e.extend_from_slice(b", ");
        }
        if c.peer.is_ipv6() {
            e.extend_from_slice(b"for=\"[");
            e.extend_from_slice(ip);
            e.extend_from_slice(b"]\"");
        } else {
            e.extend_from_slice(b"for=");
            e.extend_from_slice(ip);
        }
        e.extend_from_slice(if c.tls.is_some() {
            b";proto=https\r\n"
        } else {
            b";proto=http\r\n"
        });
    }
    if let Some(r) = h.real_ip {
        e.extend_from_slice(b"X-Real-IP: ");
        e.extend_from_slice(if c.trusted_peer { r.of(buf) } else { ip });
        e.extend_from_slice(b"\r\n");
    }
    if let Some(host) = h.host {
        e.extend_from_slice(b"X-Forwarded-Host: ");
        e.extend_from_slice(host.of(buf));
        e.extend_from_slice(b"\r\n");
    }
    e.extend_from_slice(b"Via: ");
    if let Some(v) = h.via {
        e.extend_from_slice(v.of(buf));
        e.extend_from_slice(b", ");
    }
    e.extend_from_slice(if h.minor == 1 {
        b"1.1 ringgate\r\n"
    } else {
        b"1.0 ringgate\r\n"
    });
    if !c.rid.from_client {
        e.extend_from_slice(b"X-Request-Id: ");
        e.extend_from_slice(c.rid.as_bytes());
        e.extend_from_slice(b"\r\n");
    }
    if let Some(u) = h.upgrade {
        e.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        e.extend_from_slice(u.of(buf));
        e.extend_from_slice(b"\r\n");
    }
    e.extend_from_slice(&c.up_extra);
    e.extend_from_slice(b"\r\n");
    out.mark_extra(start);
}

/// Appends the header lines that are not dropped: as slices of `buf`, or
/// with `crlf`, each without its own line end plus a CRLF of ringgate's (a
/// head that had bare LF line ends).
fn push_lines(out: &mut OutHead, lines: &[HeaderLine], buf: &[u8], crlf: bool) {
    for l in lines.iter().filter(|l| l.role.forwarded()) {
        if crlf {
            let (s, e) = parse::line_content(l.line, buf);
            out.src(s, e);
            out.stat(b"\r\n");
        } else {
            out.src(l.line.start as usize, l.line.end as usize);
        }
    }
}

/// Appends a backend's status line: as read, or with `rebuild` as
/// `HTTP/1.1` plus its code and reason and a CRLF ("HTTP/1.x " is 9
/// bytes, which the parser checked).
fn push_status_line(out: &mut OutHead, rh: &ResponseHead, buf: &[u8], rebuild: bool) {
    if rebuild {
        let (_, e) = parse::line_content(rh.status_line, buf);
        out.stat(b"HTTP/1.1 ");
        out.src(9, e);
        out.stat(b"\r\n");
    } else {
        out.src(rh.status_line.start as usize, rh.status_line.end as usize);
    }
}

/// Builds the response head for the client into `c.out`: the status line
/// (as `HTTP/1.1`) and end-to-end headers of the backend, the framing
/// header ringgate chose (`Content-Length` or `Transfer-Encoding: chunked`
/// for a re-framed body; none when the body is delimited by the close,
/// which `close` then announces), `X-Request-Id` and `Connection` as
/// needed; with `dechunk`, the chunked body goes out as its payload only
/// (an HTTP/1.0 client), delimited by the close. Returns where the lines
/// ringgate adds begin in `c.out.extra` (they run to its end).
pub fn build_response_head(c: &mut Conn, close: bool, dechunk: bool) -> usize {
    let buf = &c.ubuf;
    let rh = &c.rhead;
    let out = &mut c.out;
    out.clear();
    if rh.status_rewritten {
        // A filter changed the status (the response header phase).
        let e = &mut out.extra;
        let start = e.len();
        e.extend_from_slice(b"HTTP/1.1 ");
        e.extend_from_slice(itoa::Buffer::new().format(rh.status).as_bytes());
        e.push(b' ');
        let reason = crate::http::reason(rh.status);
        if reason != "Unknown" {
            e.extend_from_slice(reason.as_bytes());
        }
        e.extend_from_slice(b"\r\n");
        out.mark_extra(start);
    } else {
        push_status_line(out, rh, buf, rh.minor != 1 || rh.bare_lf);
    }
    push_lines(out, &c.rlines, buf, rh.bare_lf);
    let e = &mut out.extra;
    let start = e.len();
    // A body that went through the body phase is framed by ringgate
    // (`out_framing`, set by the body phase); any other keeps the
    // backend's framing, rewritten.
    let framing = c
        .out_framing
        .take()
        .unwrap_or_else(|| rh.framing_for(c.head.is_head));
    match framing {
        BodyFraming::Length(n) => {
            e.extend_from_slice(b"Content-Length: ");
            e.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            e.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked if !dechunk => e.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyFraming::None if c.head.is_head || rh.status == 304 => {
            // The length of the body a GET would have had.
            if let Some(n) = rh.content_length {
                e.extend_from_slice(b"Content-Length: ");
                e.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                e.extend_from_slice(b"\r\n");
            }
        }
        _ => {}
    }
    if !rh.has_request_id {
        e.extend_from_slice(b"X-Request-Id: ");
        e.extend_from_slice(c.rid.as_bytes());
        e.extend_from_slice(b"\r\n");
    }
    if rh.status == 101 {
        // Connection: upgrade was dropped as hop-by-hop; restore it.
        e.extend_from_slice(b"Connection: upgrade\r\n");
    } else if close {
        e.extend_from_slice(b"Connection: close\r\n");
    } else if c.head.minor == 0 {
        e.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    e.extend_from_slice(&c.resp_extra);
    e.extend_from_slice(b"\r\n");
    out.mark_extra(start);
    start
}

/// Sends the response head [`build_response_head`] made to an HTTP/2
/// client's stream as fields: the backend's forwarded lines and those
/// ringgate added (from `added` in `c.out.extra`), each as the stream
/// would have read it from the text.
fn send_head_fields(
    tx: &mut crate::http::h2::stream::TxSide,
    c: &Conn,
    added: usize,
) -> std::io::Result<()> {
    let head = bytes::Bytes::copy_from_slice(&c.ubuf[..c.rhead.len]);
    let mut f = crate::http::h2::stream::HeadFields::new();
    for l in c.rlines.iter().filter(|l| l.role.forwarded()) {
        let (a, b) = (l.value.start as usize, l.value.end as usize);
        let v = &head[a..b];
        let a = a + (v.len() - v.trim_ascii_start().len());
        let b = a + v.trim_ascii().len();
        f.add(l.name.of(&head), &head, a, b);
    }
    let extra = bytes::Bytes::copy_from_slice(&c.out.extra[added..]);
    crate::http::h2::fields::lines(&extra, 0, |ns, ne, vs, ve| {
        f.add(&extra[ns..ne], &extra, vs, ve);
        Some(())
    });
    tx.head_fields(c.rhead.status, f)
}

async fn write_out<S: AsyncWriteRent>(
    s: &mut S,
    c: &mut Conn,
    from_client_buf: bool,
) -> std::io::Result<()> {
    if !from_client_buf {
        c.bytes_out += c.out.len() as u64;
    }
    let mut out = std::mem::take(&mut c.out);
    out.src = if from_client_buf {
        std::mem::take(&mut c.buf)
    } else {
        std::mem::take(&mut c.ubuf)
    };
    let (r, mut out) = write_head(s, out).await;
    let src = std::mem::take(&mut out.src);
    if from_client_buf {
        c.buf = src;
    } else {
        c.ubuf = src;
    }
    c.out = out;
    r
}

/// Result of waiting for a response head.
enum HeadWait {
    Ok,
    /// Nothing arrived before EOF or an error: may be a stale connection.
    Nothing,
    TimedOut,
    Invalid,
    ClientGone,
}

async fn read_response_head<S: AsyncWriteRent>(
    us: &mut UpStream,
    client: &mut S,
    c: &mut Conn,
    dog: &Watchdog,
    at: u64,
) -> HeadWait {
    c.ubuf.clear();
    let fd = us.as_raw_fd();
    let mut got_any = false;
    loop {
        if !c.ubuf.is_empty() {
            match parse::parse_response(&c.ubuf, &mut c.rhead, &mut c.rlines) {
                Ok(Parsed::Complete) => {
                    let st = c.rhead.status;
                    if (100..200).contains(&st) && st != 101 {
                        // Interim response: relay (HTTP/1.1 clients only), then read on.
                        let n = c.rhead.len;
                        if c.head.minor == 1 && st != 100 {
                            // Rebuilt like a final head: HTTP/1.1, CRLF,
                            // only the lines that may be relayed.
                            let out = &mut c.out;
                            out.clear();
                            push_status_line(out, &c.rhead, &c.ubuf, true);
                            push_lines(out, &c.rlines, &c.ubuf, true);
                            out.stat(b"\r\n");
                            if write_out(client, c, false).await.is_err() {
                                return HeadWait::ClientGone;
                            }
                        }
                        let len = c.ubuf.len();
                        c.ubuf.copy_within(n..len, 0);
                        c.ubuf.truncate(len - n);
                        continue;
                    }
                    return HeadWait::Ok;
                }
                Ok(Parsed::Partial) => {
                    if c.ubuf.len() >= MAX_RESPONSE_HEAD {
                        return HeadWait::Invalid;
                    }
                }
                Err(_) => return HeadWait::Invalid,
            }
        }
        if c.ubuf.len() == c.ubuf.capacity() {
            let want = (c.ubuf.capacity() * 2).min(MAX_RESPONSE_HEAD);
            c.ubuf
                .reserve_exact(want.saturating_sub(c.ubuf.len()).max(1));
        }
        let (r, b) = read_more_until(us, fd, std::mem::take(&mut c.ubuf), dog, at, false).await;
        c.ubuf = b;
        match r {
            Ok(Ok(n)) if n > 0 => got_any = true,
            Ok(_) => {
                return if got_any {
                    HeadWait::Invalid
                } else {
                    HeadWait::Nothing
                };
            }
            Err(()) => return HeadWait::TimedOut,
        }
    }
}

/// Forwards the request in `c` to the route's upstream and relays the
/// response to `client`.
pub async fn forward<S>(
    w: &Worker,
    snap: &Generation,
    route: usize,
    client: &mut S,
    c: &mut Conn,
) -> Outcome
where
    S: crate::http::ClientIo,
{
    let cfg: &Config = &snap.config;
    let srv = &cfg.server;
    let rc = &cfg.routes[route];
    let up_id = match &rc.split {
        None => rc.upstream,
        Some(split) => choose_split(snap, split, c),
    };
    let up_cfg = &cfg.upstreams[up_id];
    c.upstream_id = Some(up_id);
    if up_cfg.protocol == crate::config::Protocol::H2 {
        return Box::pin(super::forward_h2::forward_h2(w, snap, client, c, up_id)).await;
    }
    let up = &snap.upstreams[up_id];
    let shared = &*up.shared;
    // The response is read into a buffer the worker lends for the exchange
    // (the connection's caller gives it back).
    w.lend_ubuf(&mut c.ubuf, srv.buffer_bytes);

    // Request body bytes already read with the head.
    let head_len = c.head.len;
    let avail = c.buf.len() - head_len;
    let mut scanner = ChunkedScanner::new();
    let (body_in_buf, mut body_left, body_done) = match c.head.framing {
        BodyFraming::None | BodyFraming::UntilClose => (0usize, 0u64, true),
        BodyFraming::Length(n) => {
            let k = (avail as u64).min(n) as usize;
            (k, n - k as u64, k as u64 == n)
        }
        BodyFraming::Chunked => match scanner.scan(&c.buf[head_len..], |_, _| {}) {
            Ok(k) => {
                if scanner.payload > srv.max_body_bytes {
                    return err(ErrorKind::BodyTooLarge, "request body too large", true);
                }
                (k, 0, scanner.is_done())
            }
            Err(e) => return err(ErrorKind::BadRequest, e.0, true),
        },
    };
    let req_end = head_len + body_in_buf;
    if c.head.expect_continue && !body_done && c.head.minor == 1 {
        let (r, _) = client
            .write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])
            .await;
        if r.is_err() {
            return Outcome::Abort;
        }
    }

    // The breaker: an open one answers at once, with the fallback.
    let mut ticket = Ticket::new(shared.breaker.as_ref());
    if ticket.rejected() {
        return breaker_open(w, client, c, up_cfg, body_done, req_end).await;
    }
    up.budget.deposit();
    let key = match (&up_cfg.hash_key, up_cfg.balance) {
        (Some(k), Balance::ConsistentHash) => {
            let ip = &c.peer_ip.0[..c.peer_ip.1 as usize];
            crate::upstream::request_key(k, &c.buf, &c.lines, ip)
        }
        _ => None,
    };

    // Tries: the first on the balancer's pick; a stale pooled connection
    // is retried once on a fresh one to the same target; other failures
    // go to another target while `retries`, the budget and the deadline
    // allow (connect failures always, the rest only when the request is
    // idempotent and held whole).
    let list = up.list();
    let retry_ok = c.head.idempotent && body_done;
    let start = c.started;
    let deadline = start + up_cfg.request_timeout;
    // The same deadline on the watchdog's coarse clock, for the reads.
    let request_at = w.watchdog.after(up_cfg.request_timeout);
    let mut try_now = start;
    let mut tried = 0u64;
    let mut next: Option<usize> = None;
    let mut fresh_only = false;
    let mut stale_used = false;
    let mut last: Option<Error> = None;
    let mut retries =
        crate::upstream::retry::Retries::new(up_cfg.retries, list.targets.len(), deadline);
    let mut may_retry = |tried: u64| retries.allow(tried, &up.budget);
    let (mut us, t) = loop {
        let t = match next.take() {
            Some(t) => t,
            None => match balance::pick(up, &list, up_cfg.balance, key, tried) {
                Some(t) => t,
                None => {
                    return match last {
                        Some(e) => {
                            ticket.record(false);
                            Outcome::Error(e)
                        }
                        None => err(
                            ErrorKind::NoHealthyTarget,
                            "no healthy upstream target",
                            !body_done,
                        ),
                    };
                }
            },
        };
        if tried != 0 {
            try_now = Instant::now();
        }
        balance::mark(&mut tried, t);
        let target = &*list.targets[t];
        let pooled = if fresh_only {
            None
        } else {
            up.checkout(target, w.watchdog.now_ms())
        };
        fresh_only = false;
        let reused = pooled.is_some();
        let mut us = match pooled {
            Some(s) => s,
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                match pool::connect(
                    target.addr,
                    up_cfg.connect_timeout.min(left),
                    up_cfg.tls.as_deref(),
                )
                .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        shared.report(&target.shared, Report::Failure);
                        let e = e.error().closing(!body_done);
                        if may_retry(tried) {
                            last = Some(e);
                            continue;
                        }
                        ticket.record(false);
                        return Outcome::Error(e);
                    }
                }
            }
        };
        build_request_head(c, target.addr);
        if c.head.framing == BodyFraming::Chunked {
            // The body bytes read with the head, re-framed (a fresh scan:
            // every try sends them anew).
            let _ = ChunkedScanner::new().reframe(
                &c.buf[head_len..req_end],
                head_len,
                &mut c.out,
                &srv.forward_trailers,
            );
        } else {
            c.out.src(head_len, req_end);
        }
        target.begin();
        if cfg.metrics_enabled {
            w.metrics.upstream_conn(cfg.upstream_slots[up_id], reused);
        }
        c.upstream_addr = Some(target.addr);
        let sent_at = if reused { try_now } else { Instant::now() };
        let wr = write_out(&mut *us, c, true).await;
        if wr.is_err() {
            target.end();
            if reused && retry_ok && !stale_used {
                stale_used = true;
                fresh_only = true;
                next = Some(t);
                continue;
            }
            shared.report(&target.shared, Report::Failure);
            let e = Error::new(ErrorKind::UpstreamClosed, "upstream closed the connection")
                .closing(true);
            if retry_ok && may_retry(tried) {
                last = Some(e);
                continue;
            }
            ticket.record(false);
            return Outcome::Error(e);
        }
        // Rest of the request body.
        if !body_done {
            c.buf.clear();
            loop {
                let (r, b) =
                    read_more_within(client, std::mem::take(&mut c.buf), srv.idle_timeout).await;
                c.buf = b;
                let n = match r {
                    Ok(Ok(n)) if n > 0 => n,
                    Ok(_) => {
                        target.end();
                        return Outcome::Abort;
                    }
                    Err(()) => {
                        target.end();
                        return err(
                            ErrorKind::ClientTimeout,
                            "request body not received in time",
                            true,
                        );
                    }
                };
                c.out.clear();
                let (k, done) = match c.head.framing {
                    BodyFraming::Length(_) => {
                        let k = (n as u64).min(body_left) as usize;
                        body_left -= k as u64;
                        (k, body_left == 0)
                    }
                    _ => match scanner.reframe(&c.buf, 0, &mut c.out, &srv.forward_trailers) {
                        Ok(k) => {
                            if scanner.payload > srv.max_body_bytes {
                                target.end();
                                return err(
                                    ErrorKind::BodyTooLarge,
                                    "request body too large",
                                    true,
                                );
                            }
                            (k, scanner.is_done())
                        }
                        Err(e) => {
                            target.end();
                            return err(ErrorKind::BadRequest, e.0, true);
                        }
                    },
                };
                let r = if c.head.framing == BodyFraming::Chunked {
                    write_out(&mut *us, c, true).await
                } else {
                    let b = std::mem::take(&mut c.buf);
                    let (r, b) = us.write_all(b.slice(0..k)).await;
                    c.buf = b.into_inner();
                    r.map(|_| ())
                };
                if r.is_err() {
                    target.end();
                    shared.report(&target.shared, Report::Failure);
                    ticket.record(false);
                    return err(
                        ErrorKind::UpstreamClosed,
                        "upstream closed the connection while receiving the body",
                        true,
                    );
                }
                if done {
                    let len = c.buf.len();
                    c.buf.copy_within(k..len, 0);
                    c.buf.truncate(len - k);
                    break;
                }
                c.buf.clear();
            }
        }
        let at = w.watchdog.after(up_cfg.try_timeout).min(request_at);
        match read_response_head(&mut us, client, c, &w.watchdog, at).await {
            HeadWait::Ok => {
                let now = Instant::now();
                try_now = now;
                let rtt = now.saturating_duration_since(sent_at);
                c.upstream_us = Some(rtt.as_micros() as u64);
                if up_cfg.balance == Balance::P2cEwma {
                    target.observe(rtt, now);
                }
                let status = c.rhead.status;
                if status >= 500 {
                    shared.report(&target.shared, Report::Status5xx);
                } else {
                    shared.report(&target.shared, Report::Success);
                }
                if matches!(status, 502..=504) && retry_ok && may_retry(tried) {
                    // Nothing reached the client yet: drop this answer
                    // (and its connection) and ask another target.
                    target.end();
                    last = Some(Error::new(
                        ErrorKind::UpstreamStatus(status),
                        "upstream unavailable",
                    ));
                    continue;
                }
                break (us, t);
            }
            HeadWait::Nothing => {
                target.end();
                if reused && retry_ok && !stale_used {
                    stale_used = true;
                    fresh_only = true;
                    next = Some(t);
                    continue;
                }
                shared.report(&target.shared, Report::Failure);
                let e = Error::new(
                    ErrorKind::UpstreamClosed,
                    "upstream closed the connection before responding",
                )
                .closing(!body_done);
                if retry_ok && may_retry(tried) {
                    last = Some(e);
                    continue;
                }
                ticket.record(false);
                return Outcome::Error(e);
            }
            HeadWait::TimedOut => {
                target.end();
                if up_cfg.balance == Balance::P2cEwma {
                    let now = Instant::now();
                    target.observe(now.saturating_duration_since(sent_at), now);
                }
                shared.report(&target.shared, Report::Failure);
                let e = Error::new(ErrorKind::UpstreamTimeout, "upstream timed out").closing(true);
                // Only a per-try timeout shorter than the request's leaves
                // time for another try.
                if retry_ok && up_cfg.try_timeout < up_cfg.request_timeout && may_retry(tried) {
                    last = Some(e);
                    continue;
                }
                ticket.record(false);
                return Outcome::Error(e);
            }
            HeadWait::Invalid => {
                target.end();
                shared.report(&target.shared, Report::Failure);
                ticket.record(false);
                return err(
                    ErrorKind::InvalidResponse,
                    "invalid response from upstream",
                    !body_done,
                );
            }
            HeadWait::ClientGone => {
                target.end();
                return Outcome::Abort;
            }
        }
    };
    let target = &*list.targets[t];
    ticket.record_status(c.rhead.status);
    let done_target = || target.end();
    if body_done {
        c.consume(req_end);
    }

    // Response head.
    if c.rhead.status == 101 {
        done_target();
        if c.head.upgrade.is_none() {
            return err(
                ErrorKind::InvalidResponse,
                "upstream switched protocols without an upgrade request",
                true,
            );
        }
        build_response_head(c, false, false);
        let rlen = c.rhead.len;
        let ulen = c.ubuf.len();
        c.out.src(rlen, ulen);
        if write_out(client, c, false).await.is_err() {
            return Outcome::Abort;
        }
        return Outcome::Upgrade(us.into_stream());
    }
    let framing = c.rhead.framing_for(c.head.is_head);
    // The response header phase: the route's filters read and change the
    // head, and decide whether the body goes through the body phase
    // (compression, a JSON rewrite).
    let hold_json = if rc.chain.has_response_phase() {
        rc.chain.response(c)
    } else {
        None
    };
    if c.encoder.is_some() || hold_json.is_some() {
        let r = relay_filtered(
            w,
            client,
            c,
            &mut us,
            framing,
            up_cfg.request_timeout,
            hold_json,
        )
        .await;
        done_target();
        return match r {
            Some((up_reusable, close)) => {
                if up_reusable {
                    up.checkin(target, us, w.watchdog.now_ms());
                }
                Outcome::Done { keep_alive: !close }
            }
            None => Outcome::Abort,
        };
    }
    let dechunk = framing == BodyFraming::Chunked && c.head.minor == 0;
    let close =
        !c.head.keep_alive || w.draining.get() || framing == BodyFraming::UntilClose || dechunk;
    let added = build_response_head(c, close, dechunk);
    let mut head_sent = false;
    if let Some(h) = client.h2_stream() {
        // An HTTP/2 client's stream takes the head as fields (the same
        // ones), not as HTTP/1.1 text to read back; the body follows as
        // bytes.
        c.bytes_out += c.out.len() as u64;
        if send_head_fields(&mut h.tx, c, added).is_err() {
            done_target();
            return Outcome::Abort;
        }
        c.out.clear();
        head_sent = true;
    }
    let rlen = c.rhead.len;
    let uavail = c.ubuf.len() - rlen;
    let mut rscan = ChunkedScanner::new();
    let mut up_reusable = c.rhead.keep_alive;
    let mut left: u64 = 0;
    let resp_done = match framing {
        BodyFraming::None => {
            up_reusable &= uavail == 0;
            true
        }
        BodyFraming::Length(n) => {
            let k = (uavail as u64).min(n) as usize;
            c.out.src(rlen, rlen + k);
            left = n - k as u64;
            up_reusable &= uavail as u64 <= n;
            left == 0
        }
        BodyFraming::Chunked => {
            let out = &mut c.out;
            let res = if dechunk {
                rscan.scan(&c.ubuf[rlen..], |a, b| out.src(rlen + a, rlen + b))
            } else {
                rscan.reframe(&c.ubuf[rlen..], rlen, out, &srv.forward_trailers)
            };
            match res {
                Ok(k) => {
                    up_reusable &= k == uavail;
                    rscan.is_done()
                }
                Err(_) => {
                    done_target();
                    return err(
                        ErrorKind::InvalidResponse,
                        "invalid chunked body from upstream",
                        true,
                    );
                }
            }
        }
        BodyFraming::UntilClose => {
            let ulen = c.ubuf.len();
            c.out.src(rlen, ulen);
            up_reusable = false;
            false
        }
    };
    // (Nothing to write when the head went as fields and no body bytes
    // came with it.)
    let nothing = head_sent && c.out.is_empty();
    if !nothing && write_out(client, c, false).await.is_err() {
        done_target();
        return Outcome::Abort;
    }

    // Response body.
    let mut ok = true;
    let ufd = us.as_raw_fd();
    if !resp_done {
        loop {
            c.ubuf.clear();
            let (r, b) = read_more_until(
                &mut *us,
                ufd,
                std::mem::take(&mut c.ubuf),
                &w.watchdog,
                w.watchdog.after(up_cfg.request_timeout),
                false,
            )
            .await;
            c.ubuf = b;
            let n = match r {
                Ok(Ok(n)) if n > 0 => n,
                Ok(_) if framing == BodyFraming::UntilClose => break,
                _ => {
                    ok = false;
                    break;
                }
            };
            let (k, done) = match framing {
                BodyFraming::Length(_) => {
                    let k = (n as u64).min(left) as usize;
                    left -= k as u64;
                    up_reusable &= k == n;
                    (k, left == 0)
                }
                BodyFraming::Chunked => {
                    let out = &mut c.out;
                    out.clear();
                    let res = if dechunk {
                        rscan.scan(&c.ubuf, |a, b| out.src(a, b))
                    } else {
                        rscan.reframe(&c.ubuf, 0, out, &srv.forward_trailers)
                    };
                    match res {
                        Ok(k) => {
                            up_reusable &= k == n;
                            (k, rscan.is_done())
                        }
                        Err(_) => {
                            ok = false;
                            break;
                        }
                    }
                }
                _ => (n, false),
            };
            let wr = if framing == BodyFraming::Chunked {
                write_out(client, c, false).await
            } else {
                c.bytes_out += k as u64;
                let b = std::mem::take(&mut c.ubuf);
                let (r, b) = client.write_all(b.slice(0..k)).await;
                c.ubuf = b.into_inner();
                r.map(|_| ())
            };
            if wr.is_err() {
                done_target();
                return Outcome::Abort;
            }
            if done {
                break;
            }
        }
    }
    done_target();
    if !ok {
        // The response was cut short: the client must not wait for more.
        return Outcome::Abort;
    }
    if up_reusable {
        up.checkin(target, us, w.watchdog.now_ms());
    }
    Outcome::Done { keep_alive: !close }
}

/// The response body phase: the backend's body (its payload, after its
/// own framing: length, chunks or the close) goes through the route's body
/// filters.
/// - A JSON rewrite (`json`) holds the body whole, up to its
///   `max_body_bytes`: the rewritten document (or the body as it was, when
///   it is not JSON) goes out with its own `Content-Length`, compressed
///   first when an encoder is set. A body over the limit is relayed as it
///   is, re-framed.
/// - Otherwise (or past the limit) the payload streams through the encoder,
///   when there is one, and goes out as ringgate's own chunks (as is to an
///   HTTP/1.0 client, whose answer then ends with the close). Memory is the
///   encoder's window and one output buffer, whatever the body's size.
///
/// `Some((reusable, close))` when the answer went out whole: whether the
/// upstream connection may be pooled and whether the client connection
/// must close; `None` when either side failed.
async fn relay_filtered<S: AsyncWriteRent>(
    w: &Worker,
    client: &mut S,
    c: &mut Conn,
    us: &mut pool::PoolConn,
    framing: BodyFraming,
    timeout: std::time::Duration,
    json: Option<&crate::filter::transform::JsonOps>,
) -> Option<(bool, bool)> {
    let mut enc = c.encoder.take();
    let chunked = c.head.minor == 1;
    let mut rscan = ChunkedScanner::new();
    let mut left = match framing {
        BodyFraming::Length(n) => n,
        _ => 0,
    };
    let mut reusable = c.rhead.keep_alive && framing != BodyFraming::UntilClose;
    let mut close = !c.head.keep_alive || w.draining.get();
    let mut start = c.rhead.len;
    let mut payload = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    let mut frame = Vec::with_capacity(16 * 1024 + 16);
    let mut held: Option<Vec<u8>> = json.map(|_| Vec::new());
    let limit = json.map_or(0, |o| o.max_body_bytes);
    let ufd = us.as_raw_fd();
    if held.is_none() {
        close |= !chunked;
        send_streamed_head(client, c, chunked, close).await?;
    }
    loop {
        let n = c.ubuf.len() - start;
        let piece = &c.ubuf[start..];
        payload.clear();
        let done = match framing {
            BodyFraming::None => true,
            BodyFraming::Length(_) => {
                let k = (n as u64).min(left) as usize;
                payload.extend_from_slice(&piece[..k]);
                left -= k as u64;
                reusable &= k == n;
                left == 0
            }
            BodyFraming::Chunked => {
                let k = rscan
                    .scan(piece, |a, b| payload.extend_from_slice(&piece[a..b]))
                    .ok()?;
                reusable &= k == n;
                rscan.is_done()
            }
            BodyFraming::UntilClose => {
                payload.extend_from_slice(piece);
                false
            }
        };
        match held.as_mut() {
            Some(h) => {
                h.extend_from_slice(&payload);
                if h.len() > limit {
                    // Over the limit: relayed as it is, re-framed.
                    let h = held.take().unwrap_or_default();
                    close |= !chunked;
                    send_streamed_head(client, c, chunked, close).await?;
                    emit(&mut enc, &h, &mut out)?;
                }
            }
            None => emit(&mut enc, &payload, &mut out)?,
        }
        if done {
            break;
        }
        if held.is_none() && !out.is_empty() {
            write_piece(client, c, &mut frame, &out, chunked, false).await?;
            out.clear();
        }
        c.ubuf.clear();
        start = 0;
        let (r, b) = read_more_until(
            &mut **us,
            ufd,
            std::mem::take(&mut c.ubuf),
            &w.watchdog,
            w.watchdog.after(timeout),
            false,
        )
        .await;
        c.ubuf = b;
        match r {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) if framing == BodyFraming::UntilClose => break,
            _ => return None,
        }
    }
    match held {
        Some(h) => {
            // The whole body, within the limit: rewritten (when it is
            // JSON), then compressed, and sent with its length.
            let body = json
                .and_then(|o| crate::filter::transform::rewrite_json(o, &h))
                .unwrap_or(h);
            let body = match enc.take() {
                Some(mut e) => {
                    let mut z = Vec::with_capacity(body.len() / 2 + 64);
                    e.write(&body, &mut z).ok()?;
                    e.finish(&mut z).ok()?;
                    z
                }
                None => body,
            };
            c.out_framing = Some(BodyFraming::Length(body.len() as u64));
            build_response_head(c, close, false);
            write_out(client, c, false).await.ok()?;
            c.bytes_out += body.len() as u64;
            let (r, _) = client.write_all(body).await;
            r.ok()?;
        }
        None => {
            if let Some(e) = enc {
                e.finish(&mut out).ok()?;
            }
            write_piece(client, c, &mut frame, &out, chunked, true).await?;
        }
    }
    Some((reusable, close))
}

/// Compresses `data` into `out` when there is an encoder, else copies it.
fn emit(
    enc: &mut Option<crate::filter::compress::Encoder>,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Option<()> {
    match enc {
        Some(e) => e.write(data, out).ok(),
        None => {
            out.extend_from_slice(data);
            Some(())
        }
    }
}

/// Writes the response head of an answer whose body ringgate frames as it
/// streams: chunked, or delimited by the close for an HTTP/1.0 client.
async fn send_streamed_head<S: AsyncWriteRent>(
    client: &mut S,
    c: &mut Conn,
    chunked: bool,
    close: bool,
) -> Option<()> {
    c.out_framing = Some(if chunked {
        BodyFraming::Chunked
    } else {
        BodyFraming::UntilClose
    });
    build_response_head(c, close, false);
    write_out(client, c, false).await.ok()
}

/// Writes `data` as one chunk (and the last chunk after it when `last`),
/// or as is to an HTTP/1.0 client.
async fn write_piece<S: AsyncWriteRent>(
    client: &mut S,
    c: &mut Conn,
    frame: &mut Vec<u8>,
    data: &[u8],
    chunked: bool,
    last: bool,
) -> Option<()> {
    frame.clear();
    if chunked && !data.is_empty() {
        let mut hex = [0u8; 16];
        let mut i = hex.len();
        let mut n = data.len();
        loop {
            i -= 1;
            hex[i] = b"0123456789abcdef"[n & 15];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        frame.extend_from_slice(&hex[i..]);
        frame.extend_from_slice(b"\r\n");
        frame.extend_from_slice(data);
        frame.extend_from_slice(b"\r\n");
    } else {
        frame.extend_from_slice(data);
    }
    if chunked && last {
        frame.extend_from_slice(b"0\r\n\r\n");
    }
    if frame.is_empty() {
        return Some(());
    }
    c.bytes_out += frame.len() as u64;
    let (r, b) = client.write_all(std::mem::take(frame)).await;
    *frame = b;
    r.ok().map(|_| ())
}

/// Which upstream of a route's split serves this request: the sticky key's
/// bucket when the request has one, else a weighted random draw.
fn choose_split(snap: &Generation, split: &Split, c: &Conn) -> usize {
    let first = split.upstreams[0].0;
    if split.upstreams.len() == 1 {
        return first;
    }
    let ip = &c.peer_ip.0[..c.peer_ip.1 as usize];
    let r = split
        .sticky
        .as_ref()
        .and_then(|k| crate::upstream::request_key(k, &c.buf, &c.lines, ip))
        .unwrap_or_else(|| snap.upstreams[first].next_random());
    let mut x = (r % split.total as u64) as u32;
    for &(id, weight) in &split.upstreams {
        if x < weight {
            return id;
        }
        x -= weight;
    }
    first
}

/// Answers a request whose upstream's breaker is open: the upstream's
/// `[fallback]`, or 503 with `Retry-After`. Allocation is fine here: this
/// is the degraded path.
async fn breaker_open<S: AsyncWriteRent>(
    w: &Worker,
    client: &mut S,
    c: &mut Conn,
    up_cfg: &UpstreamConfig,
    body_done: bool,
    req_end: usize,
) -> Outcome {
    let close = !body_done || !c.head.keep_alive || w.draining.get();
    let mut buf = std::mem::take(&mut c.scratch);
    buf.clear();
    let rid = String::from_utf8_lossy(c.rid.as_bytes()).into_owned();
    let (status, content_type, body, retry_after) = match &up_cfg.fallback {
        Some(f) => (
            f.status,
            f.content_type.as_str(),
            f.body.clone().into_bytes(),
            None,
        ),
        None => {
            let secs = up_cfg
                .state
                .breaker
                .as_ref()
                .map_or(1, |b| b.retry_after_secs());
            let message = format!(
                "upstream {} is unavailable (circuit breaker open)",
                up_cfg.name
            );
            (
                503,
                "application/json",
                crate::filter::error_body(503, &message, &[], rid.as_bytes()),
                Some(secs),
            )
        }
    };
    let _ = write!(
        buf,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nX-Request-Id: {rid}\r\n",
        crate::http::reason(status),
        body.len()
    );
    if let Some(secs) = retry_after {
        let _ = write!(buf, "Retry-After: {secs}\r\n");
    }
    buf.extend_from_slice(&c.resp_extra);
    if close {
        buf.extend_from_slice(b"Connection: close\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    if !c.head.is_head {
        buf.extend_from_slice(&body);
    }
    c.bytes_out += buf.len() as u64;
    // For the access log and metrics: the status the client got.
    c.rhead.status = status;
    let (r, b) = client.write_all(buf).await;
    c.scratch = b;
    if r.is_err() {
        return Outcome::Abort;
    }
    if !close {
        c.consume(req_end);
    }
    Outcome::Done { keep_alive: !close }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_state_keeps_buffers_and_nothing_else() {
        let a: SocketAddr = "10.0.0.1:1111".parse().unwrap();
        let b: SocketAddr = "[2001:db8::2]:2222".parse().unwrap();
        let mut c = Conn::new(4096, a, 100);
        assert_eq!(&c.peer_ip.0[..c.peer_ip.1 as usize], b"10.0.0.1");
        c.buf
            .extend_from_slice(b"GET / HTTP/1.1\r\nX-Request-Id: abc\r\n\r\n");
        c.ubuf.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        c.up_extra.extend_from_slice(b"X-User: alice\r\n");
        c.resp_extra.extend_from_slice(b"X-Cache: HIT\r\n");
        c.scratch.extend_from_slice(b"error");
        c.out.extra.extend_from_slice(b"Via: x\r\n");
        c.rid.bytes[..3].copy_from_slice(b"abc");
        c.rid.len = 3;
        c.rid.from_client = true;
        c.upstream_addr = Some(a);
        c.upstream_id = Some(1);
        c.upstream_us = Some(7);
        c.bytes_out = 99;
        c.body_end = 12;
        c.fresh = [b'f'; 32];
        let buf_ptr = c.buf.as_ptr();
        let ubuf_ptr = c.ubuf.as_ptr();
        Conn::reuse(&mut c, 4096, b);
        // The allocations carry over, empty.
        assert_eq!(c.buf.as_ptr(), buf_ptr);
        assert_eq!(c.ubuf.as_ptr(), ubuf_ptr);
        assert!(c.buf.is_empty() && c.ubuf.is_empty() && c.scratch.is_empty());
        assert!(c.out.extra.is_empty() && c.out.is_empty());
        // Nothing of the previous client does.
        assert!(c.up_extra.is_empty() && c.resp_extra.is_empty());
        assert_eq!(c.rid.as_bytes(), b"");
        assert!(!c.rid.from_client);
        assert_eq!(
            (c.upstream_addr, c.upstream_id, c.upstream_us),
            (None, None, None)
        );
        assert_eq!((c.bytes_out, c.body_end), (0, 0));
        assert_eq!(c.fresh, [0; 32]);
        assert_eq!(c.peer, b);
        assert_eq!(&c.peer_ip.0[..c.peer_ip.1 as usize], b"2001:db8::2");
        let d: SocketAddr = "255.0.10.100:1".parse().unwrap();
        Conn::reuse(&mut c, 4096, d);
        assert_eq!(&c.peer_ip.0[..c.peer_ip.1 as usize], b"255.0.10.100");
    }
}
