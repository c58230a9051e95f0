//! Request and response smuggling (README "What ringgate forwards", issue
//! 16): ringgate over real sockets in front of a **strict recording
//! origin**, a raw TCP server that frames by RFC 9112 and nothing else (CRLF
//! only, exactly one of `Content-Length` / `Transfer-Encoding: chunked`,
//! strict chunk lines and trailers, one valid `Host`, `Connection` never
//! naming a framing header) and records, per connection, every request it
//! received: method, target, version, header lines in order, decoded body,
//! chunk extensions, trailers and the raw bytes. Anything ambiguous is
//! recorded as a protocol error (and answered with a plain-text 400 carrying
//! `X-Origin-Error`), so a case passes only when the origin saw one clean
//! message that means what ringgate decided it means.
//!
//! The client side reads the gateway's answers with the same strict parser,
//! so a response that is not clean RFC 9112 fails the test too.
//!
//! Each case asserts what the client got, what the origin received (nothing
//! at all for a refused request), that the next request on the same client
//! connection (when it stays open) and a request from a second client get
//! their own answers (the origin's default answer names the request:
//! `got GET /a`), and that the gateway still serves afterwards.

mod support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use support::{Gateway, GatewayConfig, READ_TIMEOUT, Response, assert_json_error};

// ===========================================================================
// A strict HTTP/1.1 message reader (RFC 9112), used by the origin for
// requests and by the test client for responses
// ===========================================================================

/// One message as the strict reader saw it.
#[derive(Debug, Clone, Default)]
struct Msg {
    /// Request method (requests).
    method: String,
    /// Request target as received (requests).
    target: String,
    /// Status code (responses).
    status: u16,
    /// `HTTP/1.1` or `HTTP/1.0`.
    version: String,
    /// Field lines in order, names as received.
    headers: Vec<(String, String)>,
    /// The body, de-chunked.
    body: Vec<u8>,
    /// The body was chunked.
    chunked: bool,
    /// The body was delimited by the connection closing (responses).
    close_delimited: bool,
    /// Chunk extensions seen (`name` or `name=value`).
    chunk_exts: Vec<String>,
    /// Trailer fields.
    trailers: Vec<(String, String)>,
    /// Raw head bytes (start line through the blank line).
    head: Vec<u8>,
    /// Raw bytes of the whole message.
    raw: Vec<u8>,
    /// Origin: connection number (0-based, in accept order).
    conn: usize,
}

impl Msg {
    fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).first().copied()
    }

    fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn has(&self, name: &str) -> bool {
        !self.header_all(name).is_empty()
    }

    fn text(&self) -> String {
        lossy(&self.body)
    }

    /// `Connection: close` on it.
    fn says_close(&self) -> bool {
        self.header_all("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    /// The raw message for assertion messages.
    fn show(&self) -> String {
        show(&self.raw)
    }

    /// As the shared harness's `Response` (for `assert_json_error`).
    fn to_response(&self) -> Response {
        Response {
            status: self.status,
            minor: u8::from(self.version == "HTTP/1.1"),
            headers: self.headers.clone(),
            body: self.body.clone(),
            trailers: self.trailers.clone(),
            chunked: self.chunked,
            close_delimited: self.close_delimited,
            head: lossy(&self.head),
            ..Response::default()
        }
    }
}

/// Why a strict read of one message stopped.
#[derive(Debug)]
enum ReadErr {
    /// The peer closed; `partial` when part of a message had arrived.
    Eof { partial: bool },
    /// The bytes break RFC 9112 or are ambiguous.
    Proto(String),
    /// A socket error (timeout, reset).
    Io(io::Error),
}

fn proto(s: String) -> ReadErr {
    ReadErr::Proto(s)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Bytes for assertion messages (long ones cut).
fn show(raw: &[u8]) -> String {
    let s = lossy(raw);
    if s.chars().count() > 400 {
        let cut: String = s.chars().take(400).collect();
        format!("{cut:?}... ({} bytes)", raw.len())
    } else {
        format!("{s:?}")
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A field value byte: HTAB, SP, VCHAR or obs-text.
fn is_field_vchar(b: u8) -> bool {
    is_ows(b) || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|&b| !is_ows(b)).map_or(start, |p| p + 1);
    &v[start..end]
}

/// One field line (header or trailer), CRLF already removed.
fn field_line(l: &[u8]) -> Result<(String, String), String> {
    if l.first().copied().is_some_and(is_ows) {
        return Err(format!("folded (obs-fold) field line {:?}", lossy(l)));
    }
    let Some(colon) = l.iter().position(|&b| b == b':') else {
        return Err(format!("field line without a colon: {:?}", lossy(l)));
    };
    let name = &l[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(format!("bad field name in {:?}", lossy(l)));
    }
    let value = trim_ows(&l[colon + 1..]);
    if let Some(b) = value.iter().find(|&&b| !is_field_vchar(b)) {
        return Err(format!(
            "control character {b:#04x} in field line {:?}",
            lossy(l)
        ));
    }
    Ok((lossy(name), lossy(value)))
}

/// A chunk line: `1*HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token /
/// quoted-string ) ] )`. Returns the size and the extensions.
fn chunk_line(l: &[u8]) -> Result<(usize, Vec<String>), String> {
    let bad = |why: &str| Err(format!("{why} in chunk line {:?}", lossy(l)));
    let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return bad("no chunk size");
    }
    if digits > 15 {
        return bad("chunk size over 15 hex digits");
    }
    let size = usize::from_str_radix(std::str::from_utf8(&l[..digits]).unwrap(), 16).unwrap();
    let mut exts = Vec::new();
    let mut i = digits;
    let skip_ws = |i: &mut usize| {
        while *i < l.len() && is_ows(l[*i]) {
            *i += 1;
        }
    };
    loop {
        let ws = i;
        skip_ws(&mut i);
        if i == l.len() {
            if i > ws {
                return bad("whitespace at the end");
            }
            return Ok((size, exts));
        }
        if l[i] != b';' {
            return bad("junk after the size");
        }
        i += 1;
        skip_ws(&mut i);
        let name_start = i;
        while i < l.len() && is_tchar(l[i]) {
            i += 1;
        }
        if i == name_start {
            return bad("an extension without a name");
        }
        let mut ext = lossy(&l[name_start..i]);
        let before_eq = i;
        skip_ws(&mut i);
        if i < l.len() && l[i] == b'=' {
            i += 1;
            skip_ws(&mut i);
            let value_start = i;
            if i < l.len() && l[i] == b'"' {
                i += 1;
                loop {
                    match l.get(i) {
                        None => return bad("an unterminated quoted extension value"),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match l.get(i + 1) {
                            Some(&q) if is_field_vchar(q) => i += 2,
                            _ => return bad("a bad quoted-pair in an extension"),
                        },
                        Some(&b) if is_field_vchar(b) => i += 1,
                        Some(_) => return bad("a control character in an extension"),
                    }
                }
            } else {
                while i < l.len() && is_tchar(l[i]) {
                    i += 1;
                }
                if i == value_start {
                    return bad("an extension '=' without a value");
                }
            }
            ext.push('=');
            ext.push_str(&lossy(&l[value_start..i]));
        } else {
            i = before_eq;
        }
        exts.push(ext);
    }
}

/// Field lines in order.
type Fields = Vec<(String, String)>;

/// How a message's body is delimited.
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// The framing of a head, refusing anything ambiguous.
fn framing(headers: &[(String, String)], response: bool) -> Result<Framing, String> {
    for (n, v) in headers {
        if n.eq_ignore_ascii_case("connection") {
            for t in v.split(',').map(str::trim) {
                if ["content-length", "transfer-encoding", "host"]
                    .iter()
                    .any(|f| t.eq_ignore_ascii_case(f))
                {
                    return Err(format!("Connection names {t}"));
                }
            }
        }
    }
    let all = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let te = all("transfer-encoding");
    let cl = all("content-length");
    if !te.is_empty() && !cl.is_empty() {
        return Err(format!(
            "both Content-Length {cl:?} and Transfer-Encoding {te:?}"
        ));
    }
    if te.len() > 1 {
        return Err(format!("{} Transfer-Encoding lines: {te:?}", te.len()));
    }
    if let Some(t) = te.first() {
        if t.eq_ignore_ascii_case("chunked") {
            return Ok(Framing::Chunked);
        }
        return Err(format!("Transfer-Encoding {t:?} is not exactly chunked"));
    }
    if cl.len() > 1 {
        return Err(format!("{} Content-Length lines: {cl:?}", cl.len()));
    }
    if let Some(c) = cl.first() {
        if c.is_empty() || c.len() > 15 || !c.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("Content-Length {c:?} is not plain digits"));
        }
        return Ok(Framing::Length(c.parse().unwrap()));
    }
    Ok(if response {
        Framing::UntilClose
    } else {
        Framing::Empty
    })
}

/// A byte stream read strictly, one message at a time.
struct Wire {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// Bytes consumed for the current message.
    raw: Vec<u8>,
    /// Counts every byte read (the origin's "received anything" counter).
    counter: Option<Arc<AtomicUsize>>,
}

impl Wire {
    fn new(stream: TcpStream, counter: Option<Arc<AtomicUsize>>) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
            raw: Vec::new(),
            counter,
        }
    }

    fn fill(&mut self) -> Result<(), ReadErr> {
        let mut t = [0u8; 16 * 1024];
        match self.stream.read(&mut t) {
            Ok(0) => Err(ReadErr::Eof {
                partial: !self.raw.is_empty() || !self.buf.is_empty(),
            }),
            Ok(n) => {
                self.buf.extend_from_slice(&t[..n]);
                if let Some(c) = &self.counter {
                    c.fetch_add(n, Ordering::SeqCst);
                }
                Ok(())
            }
            Err(e) => Err(ReadErr::Io(e)),
        }
    }

    /// One CRLF-terminated line without its CRLF; a bare LF or CR is a
    /// protocol error.
    fn line(&mut self, what: &str) -> Result<Vec<u8>, ReadErr> {
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=p).collect();
                self.raw.extend_from_slice(&line);
                if p == 0 || line[p - 1] != b'\r' {
                    return Err(proto(format!(
                        "{what} line ends in a bare LF: {:?}",
                        lossy(&line)
                    )));
                }
                let content = line[..p - 1].to_vec();
                if content.contains(&b'\r') {
                    return Err(proto(format!(
                        "bare CR in a {what} line: {:?}",
                        lossy(&line)
                    )));
                }
                return Ok(content);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(proto(format!("{what} line over 64 KiB")));
            }
            self.fill()?;
        }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, ReadErr> {
        while self.buf.len() < n {
            self.fill()?;
        }
        let v: Vec<u8> = self.buf.drain(..n).collect();
        self.raw.extend_from_slice(&v);
        Ok(v)
    }

    fn until_eof(&mut self) -> Result<Vec<u8>, ReadErr> {
        loop {
            match self.fill() {
                Ok(()) => {}
                Err(ReadErr::Eof { .. }) => break,
                Err(ReadErr::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e),
            }
        }
        let v = std::mem::take(&mut self.buf);
        self.raw.extend_from_slice(&v);
        Ok(v)
    }

    fn head(&mut self, what: &str) -> Result<(Vec<u8>, Fields), ReadErr> {
        let start = self.line(what)?;
        if start.is_empty() {
            return Err(proto(format!(
                "an empty line where the {what} line belongs"
            )));
        }
        let mut headers = Vec::new();
        loop {
            let l = self.line("header")?;
            if l.is_empty() {
                return Ok((start, headers));
            }
            headers.push(field_line(&l).map_err(ReadErr::Proto)?);
            if headers.len() > 256 {
                return Err(proto("more than 256 header lines".into()));
            }
        }
    }

    fn chunked(&mut self, m: &mut Msg) -> Result<(), ReadErr> {
        m.chunked = true;
        loop {
            let l = self.line("chunk size")?;
            let (size, exts) = chunk_line(&l).map_err(ReadErr::Proto)?;
            m.chunk_exts.extend(exts);
            if size == 0 {
                loop {
                    let t = self.line("trailer")?;
                    if t.is_empty() {
                        return Ok(());
                    }
                    m.trailers
                        .push(field_line(&t).map_err(|e| proto(format!("in the trailers: {e}")))?);
                }
            }
            if m.body.len() + size > 16 << 20 {
                return Err(proto("chunked body over 16 MiB".into()));
            }
            let data = self.take(size)?;
            m.body.extend_from_slice(&data);
            let end = self.take(2)?;
            if end != b"\r\n" {
                return Err(proto(format!(
                    "chunk data not followed by CRLF but {:?}",
                    lossy(&end)
                )));
            }
        }
    }

    /// One request, strictly.
    fn read_request(&mut self) -> Result<Msg, ReadErr> {
        self.raw.clear();
        let (start, headers) = self.head("request")?;
        let mut m = Msg {
            headers,
            ..Msg::default()
        };
        let parts: Vec<&[u8]> = start.split(|&b| b == b' ').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(proto(format!(
                "request line {:?} is not `method SP target SP version`",
                lossy(&start)
            )));
        }
        if !parts[0].iter().all(|&b| is_tchar(b)) {
            return Err(proto(format!("bad method in {:?}", lossy(&start))));
        }
        if !parts[1].iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(proto(format!("bad target in {:?}", lossy(&start))));
        }
        if parts[2] != b"HTTP/1.1" && parts[2] != b"HTTP/1.0" {
            return Err(proto(format!("bad version in {:?}", lossy(&start))));
        }
        m.method = lossy(parts[0]);
        m.target = lossy(parts[1]);
        m.version = lossy(parts[2]);
        m.head = self.raw.clone();
        let hosts = m.header_all("host");
        if m.version == "HTTP/1.1" && hosts.len() != 1 {
            return Err(proto(format!("{} Host lines: {hosts:?}", hosts.len())));
        }
        if let Some(h) = hosts
            .iter()
            .find(|h| h.is_empty() || h.bytes().any(|b| b" \t@,/".contains(&b)))
        {
            return Err(proto(format!("Host {h:?} is not a host and port")));
        }
        match framing(&m.headers, false).map_err(ReadErr::Proto)? {
            Framing::Empty | Framing::UntilClose => {}
            Framing::Length(n) => m.body = self.take(n)?,
            Framing::Chunked => self.chunked(&mut m)?,
        }
        m.raw = std::mem::take(&mut self.raw);
        Ok(m)
    }

    /// One response, strictly (interim responses are returned as such).
    fn read_response(&mut self, head_request: bool) -> Result<Msg, ReadErr> {
        self.raw.clear();
        let (start, headers) = self.head("status")?;
        let ok = start.len() >= 13
            && (start.starts_with(b"HTTP/1.1 ") || start.starts_with(b"HTTP/1.0 "))
            && start[9..12].iter().all(u8::is_ascii_digit)
            && start[12] == b' '
            && start[13..].iter().all(|&b| is_field_vchar(b));
        if !ok {
            return Err(proto(format!(
                "status line {:?} is not `HTTP/1.x SP code SP reason`",
                lossy(&start)
            )));
        }
        let mut m = Msg {
            headers,
            version: lossy(&start[..8]),
            status: lossy(&start[9..12]).parse().unwrap(),
            head: self.raw.clone(),
            ..Msg::default()
        };
        let framing = framing(&m.headers, true).map_err(ReadErr::Proto)?;
        let bodiless =
            head_request || (100..200).contains(&m.status) || m.status == 204 || m.status == 304;
        if !bodiless {
            match framing {
                Framing::Empty => {}
                Framing::Length(n) => m.body = self.take(n)?,
                Framing::Chunked => self.chunked(&mut m)?,
                Framing::UntilClose => {
                    m.close_delimited = true;
                    m.body = self.until_eof()?;
                }
            }
        }
        m.raw = std::mem::take(&mut self.raw);
        Ok(m)
    }
}

/// Asserts that a head has CRLF line ends only (no LF without CR before it,
/// no CR without LF after it).
#[track_caller]
fn assert_crlf_only(head: &[u8]) {
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' {
            assert!(
                i > 0 && head[i - 1] == b'\r',
                "bare LF at byte {i} of {}",
                show(head)
            );
        }
        if b == b'\r' {
            assert_eq!(
                head.get(i + 1),
                Some(&b'\n'),
                "bare CR at byte {i} of {}",
                show(head)
            );
        }
    }
}

// ===========================================================================
// The strict recording origin
// ===========================================================================

/// What the origin does after writing a reply (on the same connection).
enum After {
    /// Writes these bytes (a stray response, garbage).
    Bytes(Vec<u8>),
    /// Closes the connection.
    Close,
}

/// The origin's answer to one request.
struct Reply {
    bytes: Vec<u8>,
    close: bool,
    echo: bool,
    after: Option<(Duration, After)>,
}

impl Reply {
    /// `200` with the body `got METHOD TARGET`.
    fn ok(r: &Msg) -> Reply {
        let body = format!("got {} {}", r.method, r.target);
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    /// These bytes, as they are.
    fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            close: false,
            echo: false,
            after: None,
        }
    }

    /// Closes the connection after the reply.
    fn close(mut self) -> Reply {
        self.close = true;
        self
    }

    /// After the reply, echoes every byte received (a tunnel).
    fn echo(mut self) -> Reply {
        self.echo = true;
        self
    }

    /// `delay` after the reply, does `after` (then goes on reading).
    fn then(mut self, delay: Duration, after: After) -> Reply {
        self.after = Some((delay, after));
        self
    }
}

type Handler = Arc<dyn Fn(&Msg) -> Reply + Send + Sync>;

#[derive(Default)]
struct OriginState {
    requests: Mutex<Vec<Msg>>,
    errors: Mutex<Vec<String>>,
    conns: AtomicUsize,
    bytes: Arc<AtomicUsize>,
    streams: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// A strict recording origin on 127.0.0.1:0 (a thread per connection).
struct Origin {
    addr: SocketAddr,
    st: Arc<OriginState>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Origin {
    /// Answers every request with [`Reply::ok`].
    fn default_answers() -> Origin {
        Origin::start(Reply::ok)
    }

    /// Answers with `handler`.
    fn start(handler: impl Fn(&Msg) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let st = Arc::new(OriginState::default());
        let handler: Handler = Arc::new(handler);
        let st2 = st.clone();
        let accept = thread::spawn(move || {
            for s in listener.incoming() {
                if st2.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(s) = s else { continue };
                let id = st2.conns.fetch_add(1, Ordering::SeqCst);
                if let Ok(c) = s.try_clone() {
                    st2.streams.lock().unwrap().push(c);
                }
                let (st3, h) = (st2.clone(), handler.clone());
                thread::spawn(move || serve_origin_conn(s, id, &st3, &h));
            }
        });
        Origin {
            addr,
            st,
            accept: Some(accept),
        }
    }

    /// Answers the listed targets with fixed bytes (closing after them when
    /// `close`), everything else with [`Reply::ok`].
    fn with_replies(replies: Vec<(String, Vec<u8>)>, close: bool) -> Origin {
        Origin::start(
            move |r| match replies.iter().find(|(t, _)| *t == r.target) {
                Some((_, b)) if close => Reply::raw(b.clone()).close(),
                Some((_, b)) => Reply::raw(b.clone()),
                None => Reply::ok(r),
            },
        )
    }

    /// Complete requests received, in arrival order.
    fn requests(&self) -> Vec<Msg> {
        self.st.requests.lock().unwrap().clone()
    }

    /// Targets of the complete requests received.
    fn targets(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.target).collect()
    }

    /// The last complete request.
    fn last(&self) -> Msg {
        self.requests()
            .pop()
            .expect("the origin received no request")
    }

    /// The one request received for `target` (asserts there is exactly one).
    #[track_caller]
    fn only(&self, target: &str) -> Msg {
        let all: Vec<Msg> = self
            .requests()
            .into_iter()
            .filter(|r| r.target == target)
            .collect();
        assert_eq!(
            all.len(),
            1,
            "the origin received {} requests for {target}; all targets: {:?}",
            all.len(),
            self.targets()
        );
        all.into_iter().next().unwrap()
    }

    /// Bytes received on all connections.
    fn bytes(&self) -> usize {
        self.st.bytes.load(Ordering::SeqCst)
    }

    /// Protocol errors the strict parser recorded.
    fn errors(&self) -> Vec<String> {
        self.st.errors.lock().unwrap().clone()
    }

    #[track_caller]
    fn assert_no_errors(&self) {
        let e = self.errors();
        assert!(
            e.is_empty(),
            "the strict origin received ambiguous or malformed bytes:\n{}",
            e.join("\n")
        );
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.st.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for s in self.st.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve_origin_conn(mut s: TcpStream, id: usize, st: &OriginState, handler: &Handler) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.set_nodelay(true);
    let Ok(rs) = s.try_clone() else { return };
    let mut w = Wire::new(rs, Some(st.bytes.clone()));
    let mut index = 0;
    loop {
        if st.stop.load(Ordering::SeqCst) {
            break;
        }
        match w.read_request() {
            Ok(mut m) => {
                m.conn = id;
                index += 1;
                st.requests.lock().unwrap().push(m.clone());
                let r = handler(&m);
                if s.write_all(&r.bytes).is_err() {
                    break;
                }
                if r.echo {
                    let rest = std::mem::take(&mut w.buf);
                    if !rest.is_empty() && s.write_all(&rest).is_err() {
                        break;
                    }
                    let mut t = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = w.stream.read(&mut t) {
                        if s.write_all(&t[..n]).is_err() {
                            break;
                        }
                    }
                    break;
                }
                if r.close {
                    break;
                }
                if let Some((delay, after)) = r.after {
                    thread::sleep(delay);
                    match after {
                        After::Bytes(b) => {
                            if s.write_all(&b).is_err() {
                                break;
                            }
                        }
                        After::Close => break,
                    }
                }
            }
            Err(ReadErr::Proto(e)) => {
                let mut had = w.raw.clone();
                had.extend_from_slice(&w.buf);
                st.errors.lock().unwrap().push(format!(
                    "connection {id}, after {index} good requests: {e}; bytes of that request: {}",
                    show(&had)
                ));
                let body = format!("origin protocol error: {e}");
                let _ = write!(
                    s,
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nX-Origin-Error: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                break;
            }
            Err(ReadErr::Eof { .. } | ReadErr::Io(_)) => break,
        }
    }
    let _ = s.shutdown(Shutdown::Both);
}

// ===========================================================================
// The client side
// ===========================================================================

/// How a client connection looked when the client waited on it.
#[derive(Debug)]
enum Idle {
    Closed,
    Open,
    Data(Vec<u8>),
}

/// A raw client connection to the gateway, reading answers strictly.
struct Peer {
    w: Wire,
}

const H: &str = "Host: t\r\n";

impl Peer {
    fn connect(gw: &Gateway) -> Peer {
        let s = TcpStream::connect(gw.addr).expect("connect to the gateway");
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Peer {
            w: Wire::new(s, None),
        }
    }

    fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.w
            .stream
            .write_all(bytes.as_ref())
            .expect("client write");
    }

    /// The next final (or 101) response.
    fn try_read(&mut self) -> Result<Msg, ReadErr> {
        loop {
            let m = self.w.read_response(false)?;
            if (100..200).contains(&m.status) && m.status != 101 {
                continue;
            }
            return Ok(m);
        }
    }

    #[track_caller]
    fn read(&mut self, what: &str) -> Msg {
        match self.try_read() {
            Ok(m) => m,
            Err(e) => panic!(
                "reading the gateway's answer to {what}: {e:?}; bytes: {}",
                show(&[&self.w.raw[..], &self.w.buf[..]].concat())
            ),
        }
    }

    #[track_caller]
    fn get(&mut self, path: &str) -> Msg {
        self.send(format!("GET {path} HTTP/1.1\r\n{H}\r\n"));
        self.read(&format!("GET {path}"))
    }

    /// `GET path` answered by the origin for this very request.
    #[track_caller]
    fn own(&mut self, path: &str) {
        let m = self.get(path);
        assert_own(&m, "GET", path);
    }

    /// Sends `raw`, one request, and asserts that the answer is the
    /// origin's own answer to it ([`assert_own`]); returns what `origin`
    /// received for it (asserting it received exactly one such request).
    #[track_caller]
    fn forward(&mut self, origin: &Origin, raw: impl AsRef<[u8]>) -> Msg {
        let raw = raw.as_ref();
        let (method, target) = request_line(raw);
        self.send(raw);
        assert_own(&self.read(&format!("{method} {target}")), &method, &target);
        origin.only(&target)
    }

    fn raw_exact(&mut self, n: usize) -> Vec<u8> {
        self.w.raw.clear();
        self.w
            .take(n)
            .unwrap_or_else(|e| panic!("reading {n} tunnelled bytes: {e:?}"))
    }

    /// Waits up to `d` for the gateway to close the connection.
    fn wait_close(&mut self, d: Duration) -> Idle {
        if !self.w.buf.is_empty() {
            return Idle::Data(std::mem::take(&mut self.w.buf));
        }
        self.w.stream.set_read_timeout(Some(d)).unwrap();
        let mut t = [0u8; 4096];
        let r = match self.w.stream.read(&mut t) {
            Ok(0) => Idle::Closed,
            Ok(n) => Idle::Data(t[..n].to_vec()),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                Idle::Open
            }
            Err(_) => Idle::Closed,
        };
        self.w.stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        r
    }
}

/// `m` is the origin's answer to `METHOD target` (and to nothing else).
#[track_caller]
fn assert_own(m: &Msg, method: &str, target: &str) {
    let want = format!("got {method} {target}");
    assert_eq!(
        (m.status, m.text()),
        (200, want),
        "the answer to {method} {target} was: {}",
        m.show()
    );
    assert_crlf_only(&m.head);
}

/// After an answer on `c`: the next request on the same connection gets its
/// own answer, or, when the answer said `Connection: close`, the
/// connection closes and a new one does.
#[track_caller]
fn next_gets_own(c: &mut Peer, answer: &Msg, gw: &Gateway, path: &str) {
    if answer.says_close() {
        match c.wait_close(READ_TIMEOUT) {
            Idle::Closed => {}
            other => panic!("after an answer with Connection: close: {other:?}"),
        }
        Peer::connect(gw).own(path);
    } else {
        c.own(path);
    }
}

/// The method and the origin-form target of `raw`'s request line (an
/// absolute-form target without its scheme and authority): what the
/// origin's default answer names.
fn request_line(raw: &[u8]) -> (String, String) {
    let line = lossy(raw.split(|&b| b == b'\n').next().unwrap_or(raw));
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        panic!("no request line in {}", show(raw));
    };
    let target = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    (method.to_string(), target.to_string())
}

// ===========================================================================
// The harness: a gateway in front of a strict origin, refusals as tables,
// accepted requests as "what the origin received"
// ===========================================================================

/// A strict origin and a gateway in front of it (the gateway is dropped
/// first).
struct Rig {
    gw: Gateway,
    origin: Origin,
}

impl Rig {
    /// A gateway with these `server` settings in front of an origin that
    /// answers every request with [`Reply::ok`].
    fn new(server: &[&str]) -> Rig {
        let origin = Origin::default_answers();
        let cfg = server
            .iter()
            .fold(GatewayConfig::simple(&[origin.addr]), |cfg, s| {
                cfg.server(s)
            });
        Rig {
            gw: cfg.start(),
            origin,
        }
    }

    /// A gateway with default settings in front of `origin`.
    fn behind(origin: Origin) -> Rig {
        Rig {
            gw: GatewayConfig::simple(&[origin.addr]).start(),
            origin,
        }
    }

    /// A gateway with one worker, so every client shares one upstream pool.
    fn one_worker(origin: Origin) -> Rig {
        let toml = GatewayConfig::simple(&[origin.addr]).toml();
        assert!(toml.contains("workers = 2\n"), "{toml}");
        Rig {
            gw: Gateway::start(&toml.replace("workers = 2\n", "workers = 1\n")),
            origin,
        }
    }

    fn client(&self) -> Peer {
        Peer::connect(&self.gw)
    }

    /// A second client gets its own answer and the origin saw nothing
    /// malformed.
    #[track_caller]
    fn still_serves(&self) {
        self.client().own("/still-serves");
        assert_eq!(self.origin.last().target, "/still-serves");
        self.origin.assert_no_errors();
    }

    /// Sends the case on a new connection and asserts a refusal: one of
    /// its statuses as a JSON error, not one byte at the origin, and
    /// nothing more on that connection: it closes, or stays open and
    /// answers the next request for itself (never a smuggled request's
    /// answer).
    #[track_caller]
    fn refuses(&self, case: &Case) {
        let Rig { gw, origin } = self;
        let (raw, statuses) = (&case.raw[..], case.statuses);
        let what = format!("{} {}", case.what, show(raw));
        let (reqs, bytes) = (origin.requests().len(), origin.bytes());
        let mut c = Peer::connect(gw);
        c.send(raw);
        let m = c
            .try_read()
            .unwrap_or_else(|e| panic!("no answer to {what}: {e:?}"));
        assert!(
            !m.has("x-origin-error"),
            "{what} was forwarded and the strict origin refused it: {}",
            m.text()
        );
        assert!(
            statuses.contains(&m.status),
            "{what} got {} (want one of {statuses:?}): {}\nthe origin received: {:?}\norigin errors: {:?}",
            m.status,
            m.show(),
            origin.requests()[reqs..]
                .iter()
                .map(Msg::show)
                .collect::<Vec<_>>(),
            origin.errors()
        );
        assert_json_error(&m.to_response(), m.status);
        let idle = c.wait_close(if m.says_close() {
            READ_TIMEOUT
        } else {
            Duration::from_millis(300)
        });
        assert_eq!(
            origin.bytes(),
            bytes,
            "the origin received bytes of the refused {what}: {:?}",
            origin.requests()[reqs..]
                .iter()
                .map(Msg::show)
                .collect::<Vec<_>>()
        );
        assert_eq!(origin.requests().len(), reqs, "{what}");
        origin.assert_no_errors();
        match idle {
            Idle::Closed => {}
            Idle::Open if !m.says_close() => c.own("/same-connection-after-refusal"),
            Idle::Open => panic!("a {} with Connection: close left it open", m.status),
            Idle::Data(d) => panic!(
                "after its {} to {what} the gateway sent more (a smuggled request answered?): {}",
                m.status,
                show(&d)
            ),
        }
    }
}

/// One request that must be refused.
#[derive(Clone)]
struct Case {
    /// What it is, for failure messages.
    what: String,
    raw: Vec<u8>,
    /// The statuses that count as refusing it.
    statuses: &'static [u16],
}

impl Case {
    fn new(what: impl Into<String>, raw: impl Into<Vec<u8>>, statuses: &'static [u16]) -> Case {
        Case {
            what: what.into(),
            raw: raw.into(),
            statuses,
        }
    }
}

/// Sends every case on a new connection to one new gateway: each is
/// refused ([`Rig::refuses`]); afterwards no request naming `SMUGGLED`
/// ever reached the origin and the gateway still serves.
#[track_caller]
fn assert_refused_matrix(cases: &[Case]) {
    let rig = Rig::new(&[]);
    for case in cases {
        rig.refuses(case);
    }
    assert!(
        !rig.origin.targets().iter().any(|t| t.contains("SMUGGLED")),
        "{:?}",
        rig.origin.targets()
    );
    rig.still_serves();
}

/// Sends `raws` in turn on one connection to a new gateway with these
/// `server` settings: each is answered by the origin for itself
/// ([`Peer::forward`]); then the next request on that connection gets its
/// own answer and the gateway still serves. Returns what the origin
/// received for each, for the caller to inspect.
#[track_caller]
fn forwarded<const N: usize>(server: &[&str], raws: [impl AsRef<[u8]>; N]) -> [Msg; N] {
    let rig = Rig::new(server);
    let mut c = rig.client();
    let got = raws.map(|raw| c.forward(&rig.origin, raw));
    c.own("/next");
    rig.still_serves();
    got
}

/// The origin answers `GET path` with `bytes` for each of `replies`; each
/// is requested in turn on one client connection, the next request (on
/// that connection, or a new one after `Connection: close`) gets its own
/// answer, and then `check(origin, path, answer)` inspects what the client
/// got. Afterwards a second client is served and the gateway still serves.
#[track_caller]
fn relayed(replies: &[(&str, &[u8])], check: impl Fn(&Origin, &str, &Msg)) {
    let rig = Rig::behind(Origin::with_replies(
        replies
            .iter()
            .map(|(path, b)| (path.to_string(), b.to_vec()))
            .collect(),
        false,
    ));
    let mut c = rig.client();
    for (path, _) in replies {
        let m = c.get(path);
        next_gets_own(&mut c, &m, &rig.gw, &format!("/after{path}"));
        check(&rig.origin, path, &m);
    }
    rig.client().own("/second-client");
    rig.still_serves();
}

/// The origin answers `GET /bad{i}` with `bads[i]` (closing after it when
/// `close`): each must reach its client as a 502 JSON error, or, when
/// `may_cut`, as a cut connection (an incomplete message, never a complete
/// one). The next request on that connection (or a new one) and a second
/// client get their own answers.
#[track_caller]
fn bad_responses(bads: &[&[u8]], close: bool, may_cut: bool) {
    let rig = Rig::behind(Origin::with_replies(
        bads.iter()
            .enumerate()
            .map(|(i, b)| (format!("/bad{i}"), b.to_vec()))
            .collect(),
        close,
    ));
    for (i, bad) in bads.iter().enumerate() {
        let mut c = rig.client();
        c.send(format!("GET /bad{i} HTTP/1.1\r\n{H}\r\n"));
        match c.try_read() {
            Ok(m) => {
                assert_eq!(
                    m.status,
                    502,
                    "the backend's {} reached the client as {}",
                    show(bad),
                    m.show()
                );
                assert_json_error(&m.to_response(), 502);
                next_gets_own(&mut c, &m, &rig.gw, &format!("/after-bad{i}"));
            }
            Err(ReadErr::Eof { partial: true }) if may_cut => {}
            Err(e) => panic!(
                "the backend's {} reached the client as {e:?}: {}",
                show(bad),
                show(&[&c.w.raw[..], &c.w.buf[..]].concat())
            ),
        }
        rig.client().own(&format!("/second-client-after-bad{i}"));
    }
    rig.still_serves();
}

/// Each of `bads` (see [`bad_responses`]) reaches its client as a 502.
#[track_caller]
fn response_gets_502(bads: &[&[u8]], close: bool) {
    bad_responses(bads, close, false);
}

/// Each of `bads` (see [`bad_responses`], the origin closing after it): a
/// body that breaks the rules can only be refused (502) or, once the head
/// went out, cut.
#[track_caller]
fn response_refused_or_cut(bads: &[&[u8]]) {
    bad_responses(bads, true, true);
}

/// A chunked POST with this raw body.
fn chunked_post(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n{body}")
}

/// A POST with `Content-Length: 5` and the body `hello`.
fn post_hello(path: &str) -> String {
    format!("POST {path} HTTP/1.1\r\n{H}Content-Length: 5\r\n\r\nhello")
}

// ===========================================================================
// Connection naming a framing header
// ===========================================================================

/// Connection naming framing (request): `Connection` naming
/// `Content-Length`, `Transfer-Encoding` or `Host` is 400 and nothing of
/// the request reaches the origin.
#[test]
fn request_connection_naming_framing_header_is_400() {
    let smuggled = "GET /SMUGGLED HTTP/1.1\r\nHost: t\r\n\r\n";
    let n = smuggled.len();
    let cl = |conn: &str| {
        Case::new(
            format!("Connection: {conn} on a Content-Length POST"),
            format!(
                "POST /a HTTP/1.1\r\n{H}Connection: {conn}\r\nContent-Length: {n}\r\n\r\n{smuggled}"
            ),
            &[400],
        )
    };
    let te = |conn: &str| {
        Case::new(
            format!("Connection: {conn} on a chunked POST"),
            format!(
                "POST /a HTTP/1.1\r\n{H}Connection: {conn}\r\nTransfer-Encoding: chunked\r\n\r\n\
                 {n:x}\r\n{smuggled}\r\n0\r\n\r\n"
            ),
            &[400],
        )
    };
    let host = |conn: &str| {
        Case::new(
            format!("Connection: {conn}"),
            format!("GET /a HTTP/1.1\r\n{H}Connection: {conn}\r\n\r\n"),
            &[400],
        )
    };
    assert_refused_matrix(&[
        // `Connection: Content-Length` must not strip the length of a POST
        // whose body holds `GET /SMUGGLED`; the body never reaches the
        // origin.
        cl("Content-Length"),
        cl("keep-alive, content-length"),
        cl("CONTENT-LENGTH"),
        // `Connection: close, Transfer-Encoding` with a chunked body (the
        // origin used to read the chunk size line as the next request line
        // and answer the next client with it).
        te("close, Transfer-Encoding"),
        te("Transfer-Encoding"),
        te("te, transfer-encoding"),
        // `Connection: Host` (it used to deliver a request with no Host at
        // all).
        host("Host"),
        host("keep-alive, host"),
    ]);
}

/// Connection naming framing (control): `Connection` naming an ordinary
/// header removes that header and nothing else; the framing the gateway
/// writes stays (one `Content-Length: 5`, the body intact).
#[test]
fn request_connection_naming_ordinary_header_removes_only_it() {
    let [r] = forwarded(
        &[],
        [format!(
            "POST /a HTTP/1.1\r\n{H}Connection: X-Secret\r\nX-Secret: s\r\nX-Keep: k\r\nContent-Length: 5\r\n\r\nhello"
        )],
    );
    assert!(!r.has("x-secret"), "{}", r.show());
    assert_eq!(r.header_all("x-keep"), ["k"]);
    assert_eq!(r.header_all("content-length"), ["5"], "{}", r.show());
    assert_eq!(r.body, b"hello");
}

/// Connection naming framing (response): a backend's `Connection:
/// Content-Length` would leave the client an unframed response on a
/// keep-alive connection; it is a 502.
#[test]
fn response_connection_naming_content_length_is_502() {
    response_gets_502(
        &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Content-Length\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, content-length\r\nContent-Length: 5\r\n\r\nhello",
        ],
        false,
    );
}

/// Connection naming framing (response): a backend's `Connection:
/// Transfer-Encoding` on a chunked response is a 502.
#[test]
fn response_connection_naming_transfer_encoding_is_502() {
    response_gets_502(
        &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close, transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ],
        true,
    );
}

// ===========================================================================
// Transfer-Encoding
// ===========================================================================

/// Transfer-Encoding variants (request): anything but one lone `chunked`
/// (and no Content-Length beside it) is refused and never forwarded.
#[test]
fn request_te_variants_are_refused() {
    let te = |v: &str| {
        Case::new(
            format!("Transfer-Encoding: {v}"),
            format!("POST /a HTTP/1.1\r\n{H}Transfer-Encoding: {v}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            &[400],
        )
    };
    let two = |a: &str, b: &str| {
        Case::new(
            format!("Transfer-Encoding: {a} and Transfer-Encoding: {b}"),
            format!(
                "POST /a HTTP/1.1\r\n{H}Transfer-Encoding: {a}\r\nTransfer-Encoding: {b}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            &[400],
        )
    };
    assert_refused_matrix(&[
        // `identity, chunked` is not a lone `chunked`: 400, like every other
        // refused coding (it used to be forwarded verbatim).
        te("identity, chunked"),
        // `,chunked` is a malformed list: 400 (it used to be forwarded
        // verbatim).
        te(",chunked"),
        te(", chunked"),
        te("chunked,"),
        // Two `Transfer-Encoding` lines: 400 (they used to be forwarded
        // verbatim).
        two("chunked", "chunked"),
        two("identity", "chunked"),
        two("chunked", ""),
        // `chunked, chunked` is refused (400 or 501: chunked applied twice
        // is a coding ringgate cannot frame, or a malformed list; either way
        // never forwarded).
        Case {
            statuses: &[400, 501],
            ..te("chunked, chunked")
        },
        // `gzip` (no chunked) is a coding ringgate cannot frame: 400, as
        // `tests/bad_input.rs` has always pinned.
        Case::new(
            "Transfer-Encoding: gzip",
            format!("POST /a HTTP/1.1\r\n{H}Transfer-Encoding: gzip\r\n\r\nhello"),
            &[400],
        ),
        // Transfer-Encoding beside Content-Length (in either order): 400.
        Case::new(
            "Content-Length, then Transfer-Encoding",
            format!(
                "POST /a HTTP/1.1\r\n{H}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            &[400],
        ),
        Case::new(
            "Transfer-Encoding, then Content-Length",
            format!(
                "POST /a HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
            ),
            &[400],
        ),
    ]);
}

/// Transfer-Encoding variants (accepted): a lone `chunked` in any case is
/// served; the origin receives exactly one `Transfer-Encoding: chunked`
/// that ringgate wrote, no Content-Length, and the decoded body; the
/// connection goes on.
#[test]
fn request_te_chunked_any_case_is_reframed() {
    let raws = [("/te0", "chunked"), ("/te1", "Chunked"), ("/te2", "CHUNKED")].map(|(path, te)| {
        format!(
            "POST {path} HTTP/1.1\r\n{H}Transfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
    });
    for r in forwarded(&[], raws) {
        assert_eq!(
            r.header_all("transfer-encoding"),
            ["chunked"],
            "{}",
            r.show()
        );
        assert!(!r.has("content-length"), "{}", r.show());
        assert_eq!(r.text(), "hello world");
    }
}

/// Transfer-Encoding (response): a backend's transfer coding other than a
/// lone `chunked` is a 502; nothing of it reaches the client.
#[test]
fn response_te_other_than_chunked_is_502() {
    response_gets_502(
        &[
            // `gzip` (no chunked).
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot really gzip",
            // `gzip, chunked` is another transfer coding than chunked;
            // ringgate writes only `Transfer-Encoding: chunked` itself, so
            // relaying it would drop the gzip coding. (Read from "any other
            // response transfer coding is a 502".)
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ],
        true,
    );
}

/// Both framings on a response: `Content-Length` and `Transfer-Encoding:
/// chunked` (either order) are framed by the chunked coding; the client
/// receives only `Transfer-Encoding: chunked` and the right body, the
/// client connection keeps working, and the backend connection is not
/// reused (the next request reaches the origin on another connection).
#[test]
fn response_cl_and_te_framed_by_chunked_and_not_reused() {
    relayed(
        &[
            (
                "/cl-first",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            (
                "/te-first",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
        ],
        |origin, path, m| {
            assert_eq!(m.status, 200, "{}", m.show());
            assert!(!m.has("content-length"), "{}", m.show());
            assert_eq!(
                m.header_all("transfer-encoding"),
                ["chunked"],
                "{}",
                m.show()
            );
            assert_eq!(m.text(), "hello");
            let (a, b) = (origin.only(path), origin.only(&format!("/after{path}")));
            assert_ne!(
                a.conn, b.conn,
                "the backend connection that sent CL and TE was reused"
            );
        },
    );
}

// ===========================================================================
// Chunk lines and trailers
// ===========================================================================

/// Chunk lines (request): a size line that is not a size, optional
/// whitespace and well-formed `;` extensions is 400.
#[test]
fn request_bad_chunk_line_is_400() {
    let line = |l: &str| {
        Case::new(
            format!("the chunk line {l:?}"),
            chunked_post("/a", &format!("{l}\r\nhello\r\n0\r\n\r\n")),
            &[400],
        )
    };
    assert_refused_matrix(&[
        // Anything but a size, optional whitespace and `;` extensions
        // (`5 junk`, `5junk`, `0x5`, `5 5`); it used to be forwarded
        // unchecked.
        line("5 junk"),
        line("5junk"),
        line("0x5"),
        line("5 5"),
        line("5,"),
        line("5\""),
        line(""),
        // An extension with a NUL, another control character or a quoted
        // CRLF.
        line("5;a=\x00"),
        line("5;a=b\x01c"),
        line("5;\x00"),
        line("5;a=\"x\x7f\""),
        line("5;a=\"x\x00\""),
        line("5;a=\"x\r\n\""),
    ]);
}

/// Chunk lines (accepted): valid extensions (`5;name=val`, `6 ; q="a b"`)
/// are served and dropped: the origin receives no extension and the same
/// decoded body.
#[test]
fn request_chunk_extension_dropped() {
    let [r] = forwarded(
        &[],
        [chunked_post(
            "/a",
            "5;name=val\r\nhello\r\n6 ; q=\"a b\";flag\r\n world\r\n0;last=1\r\n\r\n",
        )],
    );
    assert!(
        r.chunk_exts.is_empty(),
        "extensions forwarded: {}",
        r.show()
    );
    assert_eq!(r.text(), "hello world");
}

/// Chunk sizes are ringgate's: one body sent as many tiny chunks (with
/// leading zeros in the sizes, over several writes) reaches the origin as
/// the same decoded body, strictly framed.
#[test]
fn request_chunks_reframed() {
    let rig = Rig::new(&[]);
    let body: String = (0..200)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut raw = String::new();
    for (i, ch) in body.chars().enumerate() {
        if i % 3 == 0 {
            raw.push_str(&format!("0001\r\n{ch}\r\n"));
        } else {
            raw.push_str(&format!("1\r\n{ch}\r\n"));
        }
    }
    raw.push_str("000\r\n\r\n");
    let mut c = rig.client();
    c.send(format!(
        "POST /tiny HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n"
    ));
    let (a, b) = raw.split_at(raw.len() / 3);
    let (b, rest) = b.split_at(b.len() / 2);
    c.send(a);
    c.send(b);
    c.send(rest);
    assert_own(&c.read("POST /tiny"), "POST", "/tiny");
    let r = rig.origin.only("/tiny");
    assert_eq!(r.text(), body);
    assert_eq!(r.header_all("transfer-encoding"), ["chunked"]);
    assert!(!r.has("content-length"));
    c.own("/next");
    rig.still_serves();
}

/// Trailers (request): a trailer section that is not clean field lines
/// is 400.
#[test]
fn request_bad_trailer_is_400() {
    let trailers = |what: &str, t: &str| {
        Case::new(
            what,
            chunked_post("/a", &format!("5\r\nhello\r\n0\r\n{t}")),
            &[400],
        )
    };
    assert_refused_matrix(&[
        // A trailer line that is a request line (`GET /SMUGGLED HTTP/1.1`);
        // it used to be forwarded unchecked.
        trailers(
            "a request line as a trailer",
            "GET /SMUGGLED HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        // A folded trailer line (starting with a space or a tab).
        trailers("a trailer folded with a space", "X-A: a\r\n b\r\n\r\n"),
        trailers("a trailer folded with a tab", "X-A: a\r\n\tb\r\n\r\n"),
        // A trailer line with a bare LF is refused (the README: "a bare LF
        // there is refused"), unlike a head, which is rewritten.
        trailers("a bare LF ending the last trailer", "X-A: a\n\r\n"),
        trailers("a bare LF between trailers", "X-A: a\nX-B: b\r\n\r\n"),
    ]);
}

/// Trailers are dropped by default: the origin receives the body and no
/// trailer field.
#[test]
fn request_trailers_dropped_by_default() {
    let [r] = forwarded(
        &[],
        [chunked_post(
            "/a",
            "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n",
        )],
    );
    assert!(r.trailers.is_empty(), "trailers forwarded: {}", r.show());
    assert_eq!(r.text(), "hello");
}

/// Trailers listed in `server.forward_trailers` reach the origin; others
/// do not.
#[test]
fn request_trailers_forwarded_when_listed() {
    let [r] = forwarded(
        &["forward_trailers = [\"x-checksum\"]"],
        [chunked_post(
            "/a",
            "5\r\nhello\r\n0\r\nX-Other: 1\r\nX-Checksum: abc\r\nX-Third: 3\r\n\r\n",
        )],
    );
    assert_eq!(r.trailers.len(), 1, "trailers: {:?}", r.trailers);
    assert!(r.trailers[0].0.eq_ignore_ascii_case("x-checksum"));
    assert_eq!(r.trailers[0].1, "abc");
    assert_eq!(r.text(), "hello");
}

/// Chunk lines (response): a backend chunk line with junk after the size
/// or a control character in an extension is refused: a 502, or, once the
/// head went out, a cut connection; never a complete response.
#[test]
fn response_chunk_line_junk_is_refused() {
    response_refused_or_cut(&[
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 junk\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\x00\r\nhello\r\n0\r\n\r\n",
    ]);
}

/// Trailers (response): a backend trailer that is a request line, a folded
/// line or a line with a bare LF is refused: a 502, or a cut connection;
/// never relayed.
#[test]
fn response_bad_trailer_is_refused() {
    response_refused_or_cut(&[
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nGET /SMUGGLED HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-A: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-A: a\nX-B: b\r\n\r\n",
    ]);
}

/// Chunk sizes and extensions (response): a backend's extensions are not
/// relayed and its chunk sizes are re-framed; the client decodes the same
/// body and the connection goes on.
#[test]
fn response_chunk_extensions_dropped() {
    relayed(
        &[(
            "/ext",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0005;ext=1\r\nhello\r\n6 ; q=\"a b\"\r\n world\r\n0\r\n\r\n",
        )],
        |_, _, m| {
            assert_eq!(m.status, 200, "{}", m.show());
            assert_eq!(m.text(), "hello world");
            assert!(m.chunk_exts.is_empty(), "extensions relayed: {}", m.show());
        },
    );
}

// ===========================================================================
// Bare LF, bare CR, NUL
// ===========================================================================

/// Bare LF: a head with bare LF line ends is served and rewritten, the
/// origin receives CRLF-only bytes (every header kept); the next request on
/// the connection, also bare-LF, gets its own answer.
#[test]
fn request_bare_lf_head_rewritten_to_crlf() {
    let [get, post] = forwarded(
        &[],
        [
            "GET /lf HTTP/1.1\nHost: t\nX-A: 1\nX-B: 2\n\n",
            "POST /lf-post HTTP/1.1\nHost: t\nContent-Length: 5\n\nhello",
        ],
    );
    assert_crlf_only(&get.head);
    assert_eq!(get.header_all("x-a"), ["1"]);
    assert_eq!(get.header_all("x-b"), ["2"]);
    assert_crlf_only(&post.head);
    assert_eq!(post.header_all("content-length"), ["5"]);
    assert_eq!(post.body, b"hello");
}

/// Bare LF mixed with CRLF: `X: a\nContent-Length: 5\r\n` hides a framing
/// header from a CRLF-only parser. The gateway reads the bare LF as a line
/// end; the origin sees exactly that one framing (one `Content-Length: 5`
/// or one `Transfer-Encoding: chunked`, the body) and `X` on its own line,
/// and the request pipelined behind it gets its own answer (no desync).
#[test]
fn request_bare_lf_hiding_framing_header() {
    let rig = Rig::new(&[]);
    let origin = &rig.origin;
    let mut c = rig.client();
    for (raw, post, get) in [
        (
            format!(
                "POST /cl HTTP/1.1\r\n{H}X: a\nContent-Length: 5\r\n\r\nhelloGET /after-cl HTTP/1.1\r\n{H}\r\n"
            ),
            "/cl",
            "/after-cl",
        ),
        (
            format!(
                "POST /te HTTP/1.1\r\n{H}X: b\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /after-te HTTP/1.1\r\n{H}\r\n"
            ),
            "/te",
            "/after-te",
        ),
    ] {
        c.send(raw);
        assert_own(&c.read(&format!("POST {post}")), "POST", post);
        assert_own(&c.read(&format!("GET {get}")), "GET", get);
    }
    assert_eq!(
        origin.targets(),
        ["/cl", "/after-cl", "/te", "/after-te"],
        "{:?}",
        origin.errors()
    );
    let r = origin.only("/cl");
    assert_crlf_only(&r.head);
    assert_eq!(r.header_all("x"), ["a"], "{}", r.show());
    assert_eq!(r.header_all("content-length"), ["5"], "{}", r.show());
    assert!(!r.has("transfer-encoding"));
    assert_eq!(r.body, b"hello");
    let r = origin.only("/te");
    assert_crlf_only(&r.head);
    assert_eq!(r.header_all("x"), ["b"], "{}", r.show());
    assert_eq!(
        r.header_all("transfer-encoding"),
        ["chunked"],
        "{}",
        r.show()
    );
    assert!(!r.has("content-length"));
    assert_eq!(r.body, b"hello");
    for t in ["/after-cl", "/after-te"] {
        let r = origin.only(t);
        assert!(r.body.is_empty() && !r.has("content-length") && !r.has("transfer-encoding"));
    }
    rig.client().own("/second-client");
    rig.still_serves();
}

/// Bare CR and NUL: a bare CR anywhere in a head (a value, a line end, the
/// request line) or a NUL in a value is 400.
#[test]
fn request_bare_cr_or_nul_is_400() {
    assert_refused_matrix(&[
        Case::new(
            "a bare CR in a value",
            format!("GET /a HTTP/1.1\r\n{H}X-A: a\rb\r\n\r\n"),
            &[400],
        ),
        Case::new(
            "a bare CR ending the line before Content-Length",
            format!("POST /a HTTP/1.1\r\n{H}X-A: a\rContent-Length: 5\r\n\r\nhello"),
            &[400],
        ),
        Case::new(
            "a bare CR ending the request line",
            "GET /a HTTP/1.1\rHost: t\r\n\r\n",
            &[400],
        ),
        Case::new(
            "a bare CR before a CRLF",
            format!("GET /a HTTP/1.1\r\n{H}X-A: a\r\r\n\r\n"),
            &[400],
        ),
        Case::new(
            "a NUL in a value",
            format!("GET /a HTTP/1.1\r\n{H}X-A: a\x00b\r\n\r\n"),
            &[400],
        ),
    ]);
}

/// Bare LF (response): a backend head with bare LF line ends (all of
/// them, or mixed with CRLF) reaches the client with CRLF line ends only
/// and the right framing; the connection goes on.
#[test]
fn response_bare_lf_head_rewritten_to_crlf() {
    relayed(
        &[
            (
                "/lf",
                b"HTTP/1.1 200 OK\nContent-Length: 11\nX-Lf: yes\n\ngot GET /lf",
            ),
            (
                "/mixed",
                b"HTTP/1.1 200 OK\r\nX-Lf: a\nContent-Length: 14\r\n\r\ngot GET /mixed",
            ),
        ],
        |_, path, m| {
            let (xlf, cl) = if path == "/lf" {
                ("yes", "11")
            } else {
                ("a", "14")
            };
            assert_own(m, "GET", path);
            assert_eq!(m.header_all("x-lf"), [xlf], "{}", m.show());
            assert_eq!(m.header_all("content-length"), [cl], "{}", m.show());
        },
    );
}

/// Bare CR and NUL (response): a backend head with a bare CR or a NUL is a
/// 502.
#[test]
fn response_bare_cr_or_nul_is_502() {
    response_gets_502(
        &[
            b"HTTP/1.1 200 OK\r\nX-A: a\rContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
        ],
        true,
    );
}

/// Found by fuzzing the response-head parser: an empty line before the
/// status line (httparse skips it) made the rebuilt status line slice
/// backwards, a panic that aborts the gateway; a status outside 100-599
/// was relayed as it came. Each is a 502 now, and the gateway keeps serving.
#[test]
fn response_status_line_first_and_in_range_or_502() {
    response_gets_502(
        &[
            b"\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 020 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 600 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 999 OK\r\nContent-Length: 0\r\n\r\n",
        ],
        true,
    );
}

// ===========================================================================
// Host and absolute-form targets
// ===========================================================================

/// Absolute-form: `GET http://other.test/a` with `Host: t` is routed by
/// `other.test` (a host-specific route proves it) and the origin receives
/// exactly one `Host: other.test` (it used to receive `Host: t`); the other
/// way round is routed and sent as `t`; a port in the authority is kept.
#[test]
fn absolute_form_authority_routed_and_sent_as_host() {
    let other = Origin::default_answers();
    let dflt = Origin::default_answers();
    let gw = GatewayConfig::new()
        .upstream("other", &[other.addr], &[])
        .upstream("dflt", &[dflt.addr], &[])
        .route("/{*rest}", "other", &["host = \"other.test\""])
        .route("/{*rest}", "dflt", &[])
        .start();
    let mut c = Peer::connect(&gw);
    for (origin, raw, host) in [
        (
            &other,
            "GET http://other.test/a HTTP/1.1\r\nHost: t\r\n\r\n",
            "other.test",
        ),
        (
            &other,
            "GET http://other.test:8080/b?q=1 HTTP/1.1\r\nHost: t\r\n\r\n",
            "other.test:8080",
        ),
        (
            &dflt,
            "GET http://t/c HTTP/1.1\r\nHost: other.test\r\n\r\n",
            "t",
        ),
        // Origin-form still routes by Host.
        (
            &other,
            "GET /d HTTP/1.1\r\nHost: other.test\r\n\r\n",
            "other.test",
        ),
    ] {
        let r = c.forward(origin, raw);
        assert_eq!(r.header_all("host"), [host], "{}", r.show());
    }
    assert_eq!(other.targets(), ["/a", "/b?q=1", "/d"]);
    // A second client is served.
    Peer::connect(&gw).own("/e");
    assert_eq!(dflt.only("/e").header_all("host"), ["t"]);
    other.assert_no_errors();
    dflt.assert_no_errors();
}

/// Host: more than one `Host` line (equal or not, any case), or a value
/// that is not a host name or address with an optional port, is 400.
#[test]
fn request_bad_host_is_400() {
    let hosts = |lines: &str| {
        Case::new(
            lines.replace("\r\n", ", "),
            format!("GET /a HTTP/1.1\r\n{lines}\r\n\r\n"),
            &[400],
        )
    };
    assert_refused_matrix(&[
        // More than one `Host` line, equal or not, any case.
        hosts("Host: t\r\nHost: t"),
        hosts("Host: a\r\nHost: b"),
        hosts("Host: a\r\nhost: a"),
        Case::new(
            "two Host lines beside an absolute-form target",
            b"GET http://t/a HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n",
            &[400],
        ),
        // A value that is not a host name or address with an optional port
        // (a space, `@`, a comma, a slash).
        hosts("Host: a b"),
        hosts("Host: user@t"),
        hosts("Host: a,b"),
        hosts("Host: a, b"),
        hosts("Host: t/x"),
    ]);
}

/// Host: names, IPv4 and bracketed IPv6 with ports are served and reach
/// the origin as they were.
#[test]
fn well_formed_host_reaches_the_origin_as_it_was() {
    let hosts = ["api.example.test", "127.0.0.1:8080", "[::1]:80", "t:1"];
    let raws: [String; 4] =
        std::array::from_fn(|i| format!("GET /ok{i} HTTP/1.1\r\nHost: {}\r\n\r\n", hosts[i]));
    for (r, host) in forwarded(&[], raws).iter().zip(hosts) {
        assert_eq!(r.header_all("host"), [host], "{}", r.show());
    }
}

// ===========================================================================
// Content-Length
// ===========================================================================

/// Content-Length: `5, 5`, two equal `Content-Length: 5` lines and `005`
/// all mean 5; the origin receives exactly one `Content-Length: 5` (they
/// used to be forwarded as written) and the body, and the connection goes
/// on.
#[test]
fn request_duplicate_content_length_sent_once() {
    let raws = [
        ("/cl0", "Content-Length: 5, 5"),
        ("/cl1", "Content-Length: 5\r\nContent-Length: 5"),
        ("/cl2", "Content-Length: 005"),
    ]
    .map(|(path, cl)| format!("POST {path} HTTP/1.1\r\n{H}{cl}\r\n\r\nhello"));
    for r in forwarded(&[], raws) {
        assert_eq!(r.header_all("content-length"), ["5"], "{}", r.show());
        assert!(!r.has("transfer-encoding"));
        assert_eq!(r.body, b"hello");
    }
}

/// Content-Length: differing lengths (as a list or as lines) and values
/// that are not plain digits are 400.
#[test]
fn request_differing_or_odd_content_length_is_400() {
    let cl = |cl: &str| {
        Case::new(
            cl.replace("\r\n", ", "),
            format!("POST /a HTTP/1.1\r\n{H}{cl}\r\n\r\nhello!"),
            &[400],
        )
    };
    assert_refused_matrix(&[
        // Differing lengths, as a list or as lines.
        cl("Content-Length: 5, 6"),
        cl("Content-Length: 5\r\nContent-Length: 6"),
        // Values that are not plain digits.
        cl("Content-Length: +5"),
        cl("Content-Length: -5"),
        cl("Content-Length: 5 5"),
        cl("Content-Length: 0x5"),
        cl("Content-Length: 5.0"),
    ]);
}

/// Content-Length: `Content-Length: 0` on a POST reaches the origin as
/// exactly one `Content-Length: 0` with an empty body.
#[test]
fn request_post_content_length_zero_forwarded() {
    let [r] = forwarded(
        &[],
        [format!(
            "POST /zero HTTP/1.1\r\n{H}Content-Length: 0\r\n\r\n"
        )],
    );
    assert_eq!(r.header_all("content-length"), ["0"], "{}", r.show());
    assert!(!r.has("transfer-encoding"));
    assert!(r.body.is_empty());
}

/// Content-Length (response): a backend's `Content-Length: 5, 5` or two
/// equal lines reach the client as exactly one `Content-Length: 5`.
#[test]
fn response_duplicate_content_length_sent_once() {
    relayed(
        &[
            (
                "/list",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
            ),
            (
                "/lines",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            ),
        ],
        |_, _, m| {
            assert_eq!(m.status, 200, "{}", m.show());
            assert_eq!(m.header_all("content-length"), ["5"], "{}", m.show());
            assert!(!m.has("transfer-encoding"));
            assert_eq!(m.text(), "hello");
        },
    );
}

/// Content-Length (response): differing lengths from a backend are a 502.
#[test]
fn response_differing_content_length_is_502() {
    response_gets_502(
        &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ],
        true,
    );
}

// ===========================================================================
// Pooled backend connections
// ===========================================================================

/// Runs the stray-bytes case: every origin answer is followed 150 ms later
/// by `stray` on the same connection; requests 300 ms apart, on the same
/// client connection and from another client (one worker, so one pool),
/// each get the origin's answer to themselves and reach it exactly once.
#[track_caller]
fn stray_after_every_answer(stray: &'static [u8]) {
    let rig = Rig::one_worker(Origin::start(move |r| {
        Reply::ok(r).then(Duration::from_millis(150), After::Bytes(stray.to_vec()))
    }));
    let pause = || thread::sleep(Duration::from_millis(300));
    let mut a = rig.client();
    a.own("/first");
    pause();
    a.own("/second");
    pause();
    a.forward(&rig.origin, post_hello("/third"));
    pause();
    let mut b = rig.client();
    b.own("/fourth");
    pause();
    a.own("/fifth");
    for t in ["/first", "/second", "/third", "/fourth", "/fifth"] {
        rig.origin.only(t);
    }
    rig.origin.assert_no_errors();
}

/// Pooled connection stray bytes: a full stray response (`HTTP/1.1 200 OK
/// ... SMUGGLED`) written 150 ms after a good one on an idle pooled
/// connection is never delivered; the next requests get their own answers
/// (it used to answer the next client's request).
#[test]
fn stray_response_on_idle_pooled_connection_is_never_delivered() {
    stray_after_every_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED");
}

/// Pooled connection stray bytes: garbage (not a response) on an idle
/// pooled connection retires it too; the next request is served (not a
/// 502 from reading the garbage as its answer).
#[test]
fn stray_garbage_on_idle_pooled_connection_is_never_read() {
    stray_after_every_answer(b"XYZ");
}

/// Pooled connection EOF: a backend that closes an idle pooled connection
/// 150 ms after answering; a POST (not retried) 300 ms later gets its own
/// answer on a new connection, not a 502.
#[test]
fn eof_on_idle_pooled_connection_retires_it() {
    let rig = Rig::one_worker(Origin::start(|r| {
        Reply::ok(r).then(Duration::from_millis(150), After::Close)
    }));
    let origin = &rig.origin;
    let mut a = rig.client();
    a.own("/first");
    thread::sleep(Duration::from_millis(300));
    let second = a.forward(origin, post_hello("/second"));
    assert_ne!(origin.only("/first").conn, second.conn);
    thread::sleep(Duration::from_millis(300));
    rig.client().forward(origin, post_hello("/third"));
    origin.assert_no_errors();
}

// ===========================================================================
// HTTP versions
// ===========================================================================

/// Versions: `HTTP/1.2` (and `HTTP/1.9`) are served as 1.1 (they used to
/// be refused); the origin receives `HTTP/1.1`.
#[test]
fn http_1_2_served_as_1_1() {
    let rig = Rig::new(&[]);
    let mut c = rig.client();
    for (path, v) in [("/v12", "1.2"), ("/v19", "1.9")] {
        c.send(format!("GET {path} HTTP/{v}\r\n{H}\r\n"));
        let m = c.read(path);
        assert_own(&m, "GET", path);
        assert_eq!(rig.origin.only(path).version, "HTTP/1.1");
        if m.says_close() {
            c = rig.client();
        }
    }
    c.own("/next");
    rig.still_serves();
}

/// Versions: an HTTP/2 or HTTP/3 request line on an HTTP/1 connection is
/// 505.
#[test]
fn http_2_and_3_are_505() {
    assert_refused_matrix(&[
        // An `HTTP/2.0` request line (it used to be 400).
        Case::new(
            "an HTTP/2.0 request line",
            format!("GET /a HTTP/2.0\r\n{H}\r\n"),
            &[505],
        ),
        // The HTTP/2 connection preface opens HTTP/2 (or is 505 with
        // HTTP/2 off): tests/bad_input.rs `newer_http_versions`.
        // `HTTP/3.0`.
        Case::new(
            "an HTTP/3.0 request line",
            format!("GET /a HTTP/3.0\r\n{H}\r\n"),
            &[505],
        ),
    ]);
}

// ===========================================================================
// The client's identity
// ===========================================================================

/// A request for `/id` carrying a client's own identity headers.
fn identity_request() -> String {
    format!(
        "GET /id HTTP/1.1\r\n{H}X-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4;proto=https\r\nX-Real-IP: 1.2.3.4\r\n\r\n"
    )
}

/// `Forwarded` with any number of lines, as one list.
fn forwarded_header(r: &Msg) -> String {
    r.header_all("forwarded").join(", ").to_ascii_lowercase()
}

/// Identity: without `server.trusted_proxies`, a client's
/// `X-Forwarded-For`, `Forwarded` and `X-Real-IP` are replaced with the
/// address ringgate saw (Forwarded and X-Real-IP used to reach the origin
/// as the client wrote them).
#[test]
fn identity_headers_replaced_from_untrusted_peer() {
    let [r] = forwarded(&[], [identity_request()]);
    assert_eq!(
        r.header_all("x-forwarded-for"),
        ["127.0.0.1"],
        "{}",
        r.show()
    );
    let f = forwarded_header(&r);
    assert!(
        f.contains("for=127.0.0.1") || f.contains("for=\"127.0.0.1\""),
        "Forwarded: {f:?}"
    );
    assert!(!f.contains("1.2.3.4"), "Forwarded: {f:?}");
    assert_eq!(r.header_all("x-real-ip"), ["127.0.0.1"], "{}", r.show());
}

/// Identity: from a peer in `server.trusted_proxies`, `X-Forwarded-For`
/// and `Forwarded` are extended (the client's element first) and
/// `X-Real-IP` is kept.
#[test]
fn identity_headers_extended_from_trusted_proxy() {
    let [r] = forwarded(
        &["trusted_proxies = [\"127.0.0.1/32\"]"],
        [identity_request()],
    );
    assert_eq!(
        r.header_all("x-forwarded-for"),
        ["1.2.3.4, 127.0.0.1"],
        "{}",
        r.show()
    );
    let f = forwarded_header(&r);
    let client = f.find("for=1.2.3.4");
    let ours = f
        .find("for=127.0.0.1")
        .or_else(|| f.find("for=\"127.0.0.1\""));
    assert!(
        matches!((client, ours), (Some(a), Some(b)) if a < b),
        "Forwarded: {f:?}"
    );
    assert_eq!(r.header_all("x-real-ip"), ["1.2.3.4"], "{}", r.show());
}

/// Identity: header names with `_` are dropped by default (CGI and WSGI
/// backends read `X_User_Id` as `X-User-Id`, and `X_Tenant` as
/// `X-Tenant`); other headers are untouched. (`X-User-Id` itself is
/// ringgate's auth identity header, never taken from a client.)
#[test]
fn underscore_header_names_dropped_by_default() {
    let [r] = forwarded(
        &[],
        [format!(
            "GET /u HTTP/1.1\r\n{H}X_User_Id: alice\r\nX_Tenant: evil\r\nX-Tenant: good\r\n\r\n"
        )],
    );
    assert!(
        !r.headers.iter().any(|(n, _)| n.contains('_')),
        "{}",
        r.show()
    );
    assert!(!r.has("x-user-id"), "{}", r.show());
    assert_eq!(r.header_all("x-tenant"), ["good"], "{}", r.show());
}

/// Identity: with `server.underscores_in_headers = true`, `X_User_Id`
/// reaches the origin.
#[test]
fn underscore_header_names_kept_when_enabled() {
    let [r] = forwarded(
        &["underscores_in_headers = true"],
        [format!(
            "GET /u HTTP/1.1\r\n{H}X_User_Id: alice\r\nX_Tenant: t1\r\n\r\n"
        )],
    );
    assert_eq!(r.header_all("x_user_id"), ["alice"], "{}", r.show());
    assert_eq!(r.header_all("x_tenant"), ["t1"], "{}", r.show());
}

// ===========================================================================
// Upgrades
// ===========================================================================

const H2C: &str = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";

/// Upgrade: `Upgrade: h2c` (with `HTTP2-Settings`) is dropped; the origin
/// receives neither header nor an upgrade `Connection`, the request is
/// answered as plain HTTP/1.1 and the connection goes on as HTTP/1.1.
#[test]
fn h2c_upgrade_dropped_and_served_as_http11() {
    let [r, post] = forwarded(
        &[],
        [
            format!("GET /h2c HTTP/1.1\r\n{H}{H2C}\r\n"),
            format!("POST /h2c-post HTTP/1.1\r\n{H}{H2C}Content-Length: 5\r\n\r\nhello"),
        ],
    );
    assert!(!r.has("upgrade"), "{}", r.show());
    assert!(!r.has("http2-settings"), "{}", r.show());
    assert!(
        !r.header_all("connection").iter().any(|v| {
            let v = v.to_ascii_lowercase();
            v.contains("upgrade") || v.contains("http2-settings")
        }),
        "{}",
        r.show()
    );
    assert_eq!(post.body, b"hello");
    assert!(!post.has("upgrade"));
}

/// Upgrade: an origin answering `101` to a request ringgate did not send
/// as an upgrade (an h2c request, whose upgrade was dropped, or a plain
/// GET) is a 502; nothing is tunnelled.
#[test]
fn origin_101_to_non_upgrade_request_is_502() {
    let rig = Rig::behind(Origin::start(|r| {
        if r.target.starts_with("/switch") {
            Reply::raw(
                &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"[..],
            )
            .close()
        } else {
            Reply::ok(r)
        }
    }));
    for (i, extra) in [H2C, ""].iter().enumerate() {
        let mut c = rig.client();
        let path = format!("/switch{i}");
        c.send(format!("GET {path} HTTP/1.1\r\n{H}{extra}\r\n"));
        let m = c.read(&path);
        assert_eq!(m.status, 502, "{}", m.show());
        assert_json_error(&m.to_response(), 502);
        next_gets_own(&mut c, &m, &rig.gw, &format!("/after{path}"));
    }
    rig.still_serves();
}

/// Upgrade: `Upgrade: websocket` is still tunnelled: the origin receives
/// the upgrade, the client gets the 101 and bytes flow both ways.
#[test]
fn websocket_upgrade_still_tunnels() {
    let rig = Rig::behind(Origin::start(|r| {
        if r.header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            Reply::raw(
                &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"[..],
            )
            .echo()
        } else {
            Reply::ok(r)
        }
    }));
    let mut c = rig.client();
    c.send(format!(
        "GET /ws HTTP/1.1\r\n{H}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ));
    let m = c.read("GET /ws");
    assert_eq!(m.status, 101, "{}", m.show());
    assert_eq!(m.header("upgrade"), Some("websocket"));
    let r = rig.origin.only("/ws");
    assert_eq!(r.header("upgrade"), Some("websocket"), "{}", r.show());
    assert!(
        r.header_all("connection")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{}",
        r.show()
    );
    c.send("ping-1");
    assert_eq!(c.raw_exact(6), b"ping-1");
    c.send(b"\x00\x01binary\xff");
    assert_eq!(c.raw_exact(9), b"\x00\x01binary\xff");
    rig.still_serves();
}
