//! One HTTP/2 stream as one request through the session's phases.
//!
//! The stream's request is written into the connection state ([`Conn`])
//! as ringgate's canonical HTTP/1.1 head, rendered from the decoded
//! HTTP/2 fields (`:method`, `:path`, `:authority` as `Host`, cookies
//! joined, `Content-Length` or chunked framing stated by ringgate) and
//! parsed by the same parser as any request: routing, filters, cache,
//! forwarding, metrics and the access log then run unchanged. The
//! stream itself is the session's client transport ([`H2Client`]):
//! - reads give the request body, framed as the head says, and grant the
//!   client flow-control credit only for bytes already handed on (a slow
//!   backend holds the client back, never ringgate's memory);
//! - writes take the answer ringgate writes (its own head and framing)
//!   and send it as HEADERS, DATA within the client's window, and
//!   trailers, with the connection-specific fields dropped;
//! - a proxied answer's head comes as fields instead
//!   ([`TxSide::head_fields`]: the HTTP/1.1 backend's, what the text
//!   would have said), or the whole answer does ([`TxSide::respond`],
//!   [`TxSide::data`], [`TxSide::end`]: an HTTP/2 backend's HEADERS, DATA
//!   and trailers), so no HTTP/1.1 text is written only to be read back.
//!
//! Performance notes: a stream's connection state comes from the
//! worker's spares, which keep up to `SPARE_STREAM_CONNS` while streams
//! keep coming; the request head is rendered once and parsed once, as
//! an HTTP/1.1 request's is read once.

use crate::http::chunked::ChunkedScanner;
use crate::http::conn::{Held, write_error};
use crate::http::parse::{self, Parsed};
use crate::proxy::forward::Conn;
use crate::proxy::session::Session;
use crate::runtime::worker::Worker;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Longest response head ringgate takes from its own writer.
const MAX_HEAD: usize = 256 * 1024;

/// Client stream cancellations within a window, per connection.
pub struct Resets {
    max: u32,
    since: Cell<Instant>,
    count: Cell<u32>,
}

/// The window [`Resets`] counts in.
const RESET_WINDOW: Duration = Duration::from_secs(10);

impl Resets {
    /// Allows `max` per window.
    pub fn new(max: u32) -> Self {
        Resets {
            max,
            since: Cell::new(Instant::now()),
            count: Cell::new(0),
        }
    }

    /// Counts a stream the client cancelled before its answer ended.
    pub fn record(&self) {
        if self.since.get().elapsed() > RESET_WINDOW {
            self.since.set(Instant::now());
            self.count.set(0);
        }
        self.count.set(self.count.get() + 1);
    }

    /// More than allowed in the current window.
    pub fn exceeded(&self) -> bool {
        self.count.get() > self.max
    }
}

/// Serves one stream: its request through the session, its answer back.
/// A stream the client cancels is dropped at once (its exchange with the
/// backend with it) and counted.
pub async fn serve(
    w: &Worker,
    peer: SocketAddr,
    tls: Option<Rc<crate::tls::ConnTls>>,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    resets: &Resets,
) {
    let tx = Rc::new(RefCell::new(Tx {
        respond,
        send: None,
    }));
    let watch = tx.clone();
    let work = run(w, peer, tls, req, tx);
    // Resolves only on the client's RST_STREAM (an error of the stream
    // or connection is the work's to see).
    let cancelled = poll_fn(move |cx| {
        let mut t = watch.borrow_mut();
        let r = match t.send.as_mut() {
            Some(s) => s.poll_reset(cx),
            None => t.respond.poll_reset(cx),
        };
        match r {
            std::task::Poll::Ready(Ok(_)) => std::task::Poll::Ready(()),
            _ => std::task::Poll::Pending,
        }
    });
    monoio::select! {
        _ = work => {}
        _ = cancelled => resets.record(),
    }
}

/// The stream's sending side: before the answer's head, and after.
struct Tx {
    respond: SendResponse<Bytes>,
    send: Option<SendStream<Bytes>>,
}

async fn run(
    w: &Worker,
    peer: SocketAddr,
    tls: Option<Rc<crate::tls::ConnTls>>,
    req: Request<RecvStream>,
    tx: Rc<RefCell<Tx>>,
) {
    let (parts, recv) = req.into_parts();
    let mut held = Held::take_stream(w, peer);
    let c: &mut Conn = &mut held;
    c.tls = tls;
    c.h2 = true;
    c.grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let snap = w.current();
    let srv = &snap.config.server;
    let has_body = !recv.is_end_stream();
    let head_request = parts.method == http::Method::HEAD;
    let rendered = render_head(&parts, has_body, &mut c.buf);
    let mut client = H2Client::new(recv, tx, head_request, srv.idle_timeout);
    let refused = match rendered {
        Err(msg) => Some((400, msg)),
        Ok(mode) => {
            client.rx.rx_mode = mode;
            let limits = parse::RequestLimits {
                max_headers: srv.max_headers,
                max_uri: srv.max_uri_bytes,
                underscores: srv.underscores_in_headers,
            };
            match parse::parse_request_with(&c.buf, &limits, &mut c.head, &mut c.lines) {
                Ok(Parsed::Complete) if c.head.len > srv.max_header_bytes => {
                    Some((431, "request head too large"))
                }
                Ok(Parsed::Complete) => None,
                Ok(Parsed::Partial) => Some((400, "malformed request head")),
                Err(e) => Some((e.status(), e.message())),
            }
        }
    };
    if let Some((status, msg)) = refused {
        w.next_request_id(&mut c.fresh);
        let rid = c.fresh;
        write_error(
            &mut client,
            &mut c.scratch,
            status,
            msg,
            &rid,
            false,
            None,
            &[],
        )
        .await;
        client.finish();
        return;
    }
    let mut session = Session::start(w, snap, c);
    let answer = session.run(&mut client, c).await;
    // An upgrade cannot come back: the rendered head never asks for one.
    let _ = session.respond(&mut client, c, answer).await;
    client.finish();
}

/// Fields HTTP/2 forbids or ringgate states itself (RFC 9113 8.2.2).
fn connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "http2-settings"
            | "expect"
            | "host"
            | "cookie"
    )
}

/// Renders the request as ringgate's HTTP/1.1 head into `buf`; returns
/// how its body is framed for the reads.
fn render_head(
    parts: &http::request::Parts,
    has_body: bool,
    buf: &mut Vec<u8>,
) -> Result<RxMode, &'static str> {
    buf.clear();
    if parts.method == http::Method::CONNECT {
        return Err("CONNECT is not served");
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .ok_or("missing :path")?;
    let authority = match parts.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => parts
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes())
            .ok_or("missing :authority")?,
    };
    buf.extend_from_slice(parts.method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(path.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    buf.extend_from_slice(authority);
    buf.extend_from_slice(b"\r\n");
    let mut length = false;
    for (name, value) in parts.headers.iter() {
        if connection_specific(name) {
            continue;
        }
        if name == http::header::CONTENT_LENGTH {
            length = true;
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    // HTTP/2 may split cookies into fields; one line again (RFC 9113 8.2.3).
    let mut cookies = parts.headers.get_all(http::header::COOKIE).iter();
    if let Some(first) = cookies.next() {
        buf.extend_from_slice(b"Cookie: ");
        buf.extend_from_slice(first.as_bytes());
        for c in cookies {
            buf.extend_from_slice(b"; ");
            buf.extend_from_slice(c.as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
    }
    let mode = if !has_body {
        RxMode::None
    } else if length {
        RxMode::Length
    } else {
        buf.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        RxMode::Chunked
    };
    buf.extend_from_slice(b"\r\n");
    Ok(mode)
}

/// How the request body is presented to the session's reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RxMode {
    None,
    Length,
    Chunked,
}

/// Where the answer's bytes are.
enum TxState {
    /// Collecting the head.
    Head,
    /// `Content-Length` bytes left.
    Length(u64),
    /// A chunked body, being decoded.
    Chunked(ChunkedScanner),
    /// Until the end of the answer.
    UntilEnd,
    /// An answer sent as fields ([`TxSide::respond`]): DATA and its end
    /// come through [`TxSide::data`] and [`TxSide::end`].
    Fields,
    /// Sent whole.
    Done,
}

/// A stream as the session's client transport: its receiving half
/// ([`Rx`], the request body) and its sending half ([`TxSide`], the
/// answer), usable at once (full duplex) through [`H2Client::halves`].
pub struct H2Client {
    /// The request body.
    pub rx: Rx,
    /// The answer.
    pub tx: TxSide,
}

/// The receiving half of a stream.
pub struct Rx {
    recv: RecvStream,
    rx_mode: RxMode,
    /// Body bytes to hand out (from `staged_at`).
    staged: Vec<u8>,
    staged_at: usize,
    /// Bytes handed out whose credit is not yet given back.
    release: usize,
    rx_done: bool,
}

/// The sending half of a stream.
pub struct TxSide {
    tx: Rc<RefCell<Tx>>,
    head: Vec<u8>,
    state: TxState,
    head_request: bool,
    /// How long an answer waits for the client's window before the
    /// stream is given up (its backend exchange with it).
    stall: Duration,
}

fn broken(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl H2Client {
    fn new(recv: RecvStream, tx: Rc<RefCell<Tx>>, head_request: bool, stall: Duration) -> Self {
        H2Client {
            rx: Rx {
                recv,
                rx_mode: RxMode::None,
                staged: Vec::new(),
                staged_at: 0,
                release: 0,
                rx_done: false,
            },
            tx: TxSide {
                tx,
                head: Vec::new(),
                state: TxState::Head,
                head_request,
                stall,
            },
        }
    }

    /// The two halves, to be used at once.
    pub fn halves(&mut self) -> (&mut Rx, &mut TxSide) {
        (&mut self.rx, &mut self.tx)
    }

    fn finish(&mut self) {
        self.tx.finish();
    }
}

impl TxSide {
    /// Ends the stream after the session: a body of unstated length ends
    /// here; an answer cut short is reset, never passed off as whole.
    fn finish(&mut self) {
        let mut t = self.tx.borrow_mut();
        let t = &mut *t;
        match &self.state {
            TxState::Done => {}
            TxState::UntilEnd => {
                if let Some(s) = t.send.as_mut() {
                    let _ = s.send_data(Bytes::new(), true);
                }
            }
            _ => match t.send.as_mut() {
                Some(s) => s.send_reset(h2::Reason::INTERNAL_ERROR),
                None => t.respond.send_reset(h2::Reason::INTERNAL_ERROR),
            },
        }
        self.state = TxState::Done;
    }
}

impl Rx {
    /// The h2 stream, for a caller that reads it directly (an HTTP/2
    /// upstream); the credit of bytes already handed out is given back.
    pub fn stream(&mut self) -> &mut RecvStream {
        if self.release > 0 {
            let _ = self.recv.flow_control().release_capacity(self.release);
            self.release = 0;
        }
        &mut self.recv
    }

    /// Request body bytes into `dst`; 0 at its end.
    pub async fn read_into(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        loop {
            if self.staged_at < self.staged.len() {
                let n = (self.staged.len() - self.staged_at).min(dst.len());
                dst[..n].copy_from_slice(&self.staged[self.staged_at..self.staged_at + n]);
                self.staged_at += n;
                return Ok(n);
            }
            if self.rx_done || self.rx_mode == RxMode::None {
                return Ok(0);
            }
            // Credit for what the last reads handed on: it has moved on.
            if self.release > 0 {
                let _ = self.recv.flow_control().release_capacity(self.release);
                self.release = 0;
            }
            self.staged.clear();
            self.staged_at = 0;
            match poll_fn(|cx| self.recv.poll_data(cx)).await {
                Some(Ok(data)) => {
                    self.release = data.len();
                    if data.is_empty() {
                        continue;
                    }
                    if self.rx_mode == RxMode::Chunked {
                        let _ = write!(self.staged, "{:x}\r\n", data.len());
                        self.staged.extend_from_slice(&data);
                        self.staged.extend_from_slice(b"\r\n");
                    } else {
                        self.staged.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(broken(e)),
                None => {
                    self.rx_done = true;
                    if self.rx_mode == RxMode::Chunked {
                        self.staged.extend_from_slice(b"0\r\n");
                        let trailers = poll_fn(|cx| self.recv.poll_trailers(cx))
                            .await
                            .map_err(broken)?;
                        for (name, value) in trailers.iter().flat_map(|t| t.iter()) {
                            self.staged.extend_from_slice(name.as_str().as_bytes());
                            self.staged.extend_from_slice(b": ");
                            self.staged.extend_from_slice(value.as_bytes());
                            self.staged.extend_from_slice(b"\r\n");
                        }
                        self.staged.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
    }
}

impl TxSide {
    /// Takes bytes of the answer as ringgate writes it.
    pub async fn put(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                TxState::Head => {
                    let from = self.head.len().saturating_sub(3);
                    self.head.extend_from_slice(data);
                    let Some(end) = find_blank_line(&self.head, from) else {
                        if self.head.len() > MAX_HEAD {
                            return Err(io::Error::other("response head too large"));
                        }
                        return Ok(());
                    };
                    let rest = self.head.len() - end;
                    data = &data[data.len() - rest..];
                    self.head.truncate(end);
                    self.start_response()?;
                    self.head.clear();
                }
                TxState::Length(left) => {
                    let k = (*left).min(data.len() as u64) as usize;
                    *left -= k as u64;
                    let last = *left == 0;
                    if last {
                        self.state = TxState::Done;
                    }
                    self.send_body(&data[..k], last).await?;
                    data = &data[k..];
                }
                TxState::Chunked(d) => {
                    let mut out = Vec::new();
                    let used = d
                        .scan(data, |a, b| out.extend_from_slice(&data[a..b]))
                        .map_err(|e| io::Error::other(e.0))?;
                    data = &data[used..];
                    let end = d.is_done().then(|| trailer_fields(d.trailers()));
                    if !out.is_empty() {
                        self.send_body(&out, false).await?;
                    }
                    if let Some(trailers) = end {
                        self.state = TxState::Done;
                        let mut t = self.tx.borrow_mut();
                        let s = t.send.as_mut().expect("a body follows a head");
                        if trailers.is_empty() {
                            s.send_data(Bytes::new(), true).map_err(broken)?;
                        } else {
                            s.send_trailers(trailers).map_err(broken)?;
                        }
                    }
                }
                TxState::UntilEnd => {
                    self.send_body(data, false).await?;
                    data = &[];
                }
                // Nothing follows a whole answer.
                TxState::Done => data = &[],
                TxState::Fields => {
                    return Err(io::Error::other("the answer was begun as fields"));
                }
            }
        }
        Ok(())
    }

    /// Turns the collected head into HEADERS (interim ones included).
    fn start_response(&mut self) -> io::Result<()> {
        // The fields' values share the head's bytes. The head is
        // ringgate's own (CRLF lines, the backend's checked by the parser).
        let head = Bytes::from(std::mem::take(&mut self.head));
        let unreadable = || io::Error::other("unreadable response head");
        let line_end = memchr::memchr(b'\n', &head).ok_or_else(unreadable)?;
        let line = &head[..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let status = match line {
            [b'H', b'T', b'T', b'P', b'/', b'1', b'.', _, b' ', d @ ..]
                if d.len() >= 3
                    && d[..3].iter().all(u8::is_ascii_digit)
                    && (d.len() == 3 || d[3] == b' ') =>
            {
                d[..3]
                    .iter()
                    .fold(0u16, |n, &b| n * 10 + u16::from(b - b'0'))
            }
            _ => return Err(unreadable()),
        };
        let mut fields = HeadFields::new();
        let body = head.len().saturating_sub(2);
        super::fields::lines(&head[line_end + 1..body], line_end + 1, |ns, ne, vs, ve| {
            fields.add(&head[ns..ne], &head, vs, ve);
            Some(())
        })
        .ok_or_else(unreadable)?;
        self.head_fields(status, fields)
    }

    /// Sends an answer head given as its status and fields (what
    /// [`Self::put`] would take as the HTTP/1.1 head `HTTP/1.1 status`
    /// plus those lines): interim heads are passed on (100 dropped), a
    /// final one's framing fields say how the body bytes that follow
    /// through [`Self::put`] end.
    pub fn head_fields(&mut self, status: u16, fields: HeadFields) -> io::Result<()> {
        debug_assert!(matches!(self.state, TxState::Head) && self.head.is_empty());
        let HeadFields {
            map,
            chunked,
            length,
        } = fields;
        let mut resp = Response::new(());
        *resp.status_mut() = http::StatusCode::from_u16(status).map_err(io::Error::other)?;
        *resp.headers_mut() = map;
        if (100..200).contains(&status) {
            // 100 Continue is HTTP/1's; other interim answers are passed.
            if status != 100 {
                let _ = self.tx.borrow_mut().respond.send_informational(resp);
            }
            return Ok(());
        }
        let no_body = self.head_request || status == 204 || status == 304;
        let state = if no_body {
            TxState::Done
        } else if chunked {
            TxState::Chunked(ChunkedScanner::new())
        } else {
            match length {
                Some(0) => TxState::Done,
                Some(n) => TxState::Length(n),
                None => TxState::UntilEnd,
            }
        };
        self.begin(resp, state)
    }

    /// Sends the answer's HEADERS (ending the stream when `state` is
    /// `Done`); what follows is taken as `state` says.
    fn begin(&mut self, resp: Response<()>, state: TxState) -> io::Result<()> {
        let eos = matches!(state, TxState::Done);
        let mut t = self.tx.borrow_mut();
        let send = t.respond.send_response(resp, eos).map_err(broken)?;
        t.send = Some(send);
        self.state = state;
        Ok(())
    }

    /// Sends a final answer made of fields rather than of HTTP/1.1 bytes
    /// (an HTTP/2 upstream's): with `body`, its DATA follow through
    /// [`Self::data`] and end with [`Self::end`]; without, the HEADERS end
    /// the stream.
    pub fn respond(&mut self, resp: Response<()>, body: bool) -> io::Result<()> {
        debug_assert!(matches!(self.state, TxState::Head) && self.head.is_empty());
        self.begin(resp, if body { TxState::Fields } else { TxState::Done })
    }

    /// Sends `data` (of an answer begun with [`Self::respond`]) as DATA,
    /// within the client's window, without a copy.
    pub async fn data(&mut self, data: Bytes) -> io::Result<()> {
        debug_assert!(matches!(self.state, TxState::Fields));
        self.send_bytes(data, false).await
    }

    /// Ends an answer begun with [`Self::respond`]: its trailers, or an
    /// empty DATA frame with END_STREAM when there are none.
    pub fn end(&mut self, trailers: Option<HeaderMap>) -> io::Result<()> {
        debug_assert!(matches!(self.state, TxState::Fields));
        self.state = TxState::Done;
        let mut t = self.tx.borrow_mut();
        let s = t.send.as_mut().expect("a body follows a head");
        match trailers {
            Some(t) if !t.is_empty() => s.send_trailers(t).map_err(broken),
            _ => s.send_data(Bytes::new(), true).map_err(broken),
        }
    }

    /// Sends body bytes as DATA, within the client's window.
    async fn send_body(&mut self, data: &[u8], eos: bool) -> io::Result<()> {
        self.send_bytes(Bytes::copy_from_slice(data), eos).await
    }

    /// Sends `data` as DATA, within the client's window (pieces of it as
    /// credit comes), `eos` on the last.
    async fn send_bytes(&mut self, mut data: Bytes, eos: bool) -> io::Result<()> {
        // The borrow of the sending side is never held across a wait.
        let tx = &self.tx;
        let with = |f: &mut dyn FnMut(&mut SendStream<Bytes>) -> Result<(), h2::Error>| {
            let mut t = tx.borrow_mut();
            f(t.send.as_mut().expect("a body follows a head")).map_err(broken)
        };
        if data.is_empty() {
            if eos {
                with(&mut |s| s.send_data(Bytes::new(), true))?;
            }
            return Ok(());
        }
        while !data.is_empty() {
            let want = data.len();
            with(&mut |s| {
                s.reserve_capacity(want);
                Ok(())
            })?;
            let poll_credit = |cx: &mut std::task::Context<'_>| {
                tx.borrow_mut()
                    .send
                    .as_mut()
                    .expect("a body follows a head")
                    .poll_capacity(cx)
            };
            // Credit at hand (the usual case) needs no timer.
            let now = poll_fn(|cx| std::task::Poll::Ready(poll_credit(cx))).await;
            let credit = match now {
                std::task::Poll::Ready(c) => Ok(c),
                std::task::Poll::Pending => {
                    monoio::time::timeout(self.stall, poll_fn(poll_credit)).await
                }
            };
            let cap = match credit {
                Ok(Some(Ok(n))) => n,
                Ok(Some(Err(e))) => return Err(broken(e)),
                Ok(None) => return Err(io::ErrorKind::ConnectionReset.into()),
                // The client's window stayed shut: the stream is given up.
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            };
            if cap == 0 {
                continue;
            }
            let k = cap.min(data.len());
            let last = k == data.len();
            let mut chunk = Some(data.split_to(k));
            with(&mut |s| s.send_data(chunk.take().unwrap_or_default(), eos && last))?;
        }
        Ok(())
    }
}

/// The fields of an answer head, as [`TxSide::head_fields`] takes them:
/// connection-specific ones left out, the body's framing noted.
pub struct HeadFields {
    map: HeaderMap,
    chunked: bool,
    length: Option<u64>,
}

impl HeadFields {
    /// None yet.
    pub fn new() -> Self {
        HeadFields {
            map: HeaderMap::with_capacity(16),
            chunked: false,
            length: None,
        }
    }

    /// Adds the field `name` with the value `src[a..b]` (shared); one
    /// whose name or value is not valid is left out.
    pub fn add(&mut self, name: &[u8], src: &Bytes, a: usize, b: usize) {
        let Some(name) = super::fields::name(name) else {
            return;
        };
        if name == http::header::TRANSFER_ENCODING {
            self.chunked = true;
            return;
        }
        if name == http::header::CONTENT_LENGTH {
            self.length = std::str::from_utf8(&src[a..b])
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        }
        if super::fields::not_in_h2_answer(name.as_str()) {
            return;
        }
        if let Some(v) = super::fields::value(src, a, b) {
            super::fields::append(&mut self.map, name, v);
        }
    }
}

impl Default for HeadFields {
    fn default() -> Self {
        HeadFields::new()
    }
}

/// The end of a head (just past its blank line), searching from `from`.
fn find_blank_line(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = memchr::memchr(b'\n', &buf[i..]) {
        let nl = i + p;
        if nl >= 3 && &buf[nl - 3..nl] == b"\r\n\r" {
            return Some(nl + 1);
        }
        i = nl + 1;
    }
    None
}

/// Trailer fields from a chunked body's trailer lines (each
/// `Name: value\r\n`, already checked by [`ChunkedScanner`]).
fn trailer_fields(lines: &[u8]) -> HeaderMap {
    let mut fields = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = HeaderName::from_bytes(line[..colon].trim_ascii());
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (name, value) {
            fields.append(n, v);
        }
    }
    fields
}

/// The initialised bytes of an owned buffer.
fn bytes_of<T: IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: `IoBuf` guarantees `read_ptr` is valid for `bytes_init`
    // bytes while the buffer lives; it is borrowed here.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

impl AsyncReadRent for H2Client {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let cap = buf.bytes_total();
        // SAFETY: `write_ptr` is valid for writes of `bytes_total` bytes;
        // `set_init` covers only what was copied in.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), cap) };
        match self.rx.read_into(dst).await {
            Ok(n) => {
                // SAFETY: `n` bytes were just written at `write_ptr`.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let n = buf.write_iovec_len();
        let ptr = buf.write_iovec_ptr();
        for i in 0..n {
            // SAFETY: `IoVecBufMut` guarantees `n` valid iovecs at `ptr`.
            let v = unsafe { *ptr.add(i) };
            if v.iov_len == 0 {
                continue;
            }
            // SAFETY: as above, valid for writes of `iov_len` bytes.
            let dst = unsafe { std::slice::from_raw_parts_mut(v.iov_base as *mut u8, v.iov_len) };
            return match self.rx.read_into(dst).await {
                Ok(k) => {
                    // SAFETY: the iovecs before this one are empty.
                    unsafe { buf.set_init(k) };
                    (Ok(k), buf)
                }
                Err(e) => (Err(e), buf),
            };
        }
        (Ok(0), buf)
    }
}

impl AsyncWriteRent for H2Client {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let n = buf.bytes_init();
        match self.tx.put(bytes_of(&buf)).await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: `IoVecBuf` guarantees the iovec array is valid for
        // `read_iovec_len` entries, each for `iov_len` bytes.
        let iovs =
            unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
        let mut total = 0;
        for v in iovs {
            // SAFETY: as above.
            let s = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            if let Err(e) = self.tx.put(s).await {
                return (Err(e), buf);
            }
            total += v.iov_len;
        }
        (Ok(total), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.finish();
        Ok(())
    }
}
