//! Port-free test harness: mock upstreams on std threads, an in-process
//! gateway starter, the `ringgate` binary as a child process and a raw
//! HTTP/1.1 client (`raw` has the pieces for tests that bring their own).
//!
//! Everything binds `127.0.0.1:0`; nothing here needs a fixed port.

#![allow(dead_code)]

pub mod alloc_count;
pub mod raw;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any client or mock read may block before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Requests as the mock upstream saw them
// ---------------------------------------------------------------------------

/// One request received by a mock upstream.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Method token.
    pub method: String,
    /// Request target as received.
    pub target: String,
    /// HTTP minor version.
    pub minor: u8,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// The raw head bytes (request line through the blank line).
    pub head: Vec<u8>,
    /// Body after de-chunking.
    pub body: Vec<u8>,
    /// Body bytes exactly as received on the wire (chunk framing included).
    pub raw_body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// Sequence number of the connection it arrived on (0-based).
    pub conn: usize,
    /// Index of this request on its connection (0-based).
    pub index_on_conn: usize,
}

impl Request {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    /// Every value of this header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// True when a header of that name is present.
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    /// The head as text.
    pub fn head_str(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

/// Parsed headers as owned `(name, value)` pairs in order (values decoded
/// lossily as UTF-8).
pub fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What a mock does with a request.
pub enum Reply {
    /// Write these bytes; close afterwards when `close` is set.
    Bytes { data: Vec<u8>, close: bool },
    /// Write these bytes, then close (a close-delimited body or garbage).
    BytesThenClose(Vec<u8>),
    /// Never answer; hold the connection until the peer closes it.
    Stall,
    /// Close the connection without answering.
    Close,
    /// Write this head, then echo every byte received (a tunnel).
    Upgrade(Vec<u8>),
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Reason phrase used by the mocks.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}

/// A response with a Content-Length (omitted for 1xx/204/304), and no body
/// for HEAD requests.
pub fn response_bytes(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    head_request: bool,
) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    let bodiless_status = (100..200).contains(&status) || status == 204 || status == 304;
    let has_cl = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    if !bodiless_status && !has_cl {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !head_request && !bodiless_status {
        out.extend_from_slice(body);
    }
    out
}

// ---------------------------------------------------------------------------
// Mock upstream
// ---------------------------------------------------------------------------

/// Builder for a [`MockUpstream`].
pub struct MockBuilder {
    handler: Handler,
    headers: Vec<(String, String)>,
    interim: Option<Vec<u8>>,
    latency: Duration,
    close_after: Option<usize>,
    drop_after: Option<usize>,
}

impl MockBuilder {
    fn set(mut self, h: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        self.handler = Arc::new(h);
        self
    }

    /// Extra header on `respond`/`echo` responses (set before them).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// A fixed response with Content-Length (no body for HEAD, 1xx, 204, 304).
    pub fn respond(self, status: u16, body: &str) -> Self {
        let headers = self.headers.clone();
        let body = body.as_bytes().to_vec();
        self.set(move |r| Reply::Bytes {
            data: response_bytes(status, &headers, &body, r.method == "HEAD"),
            close: false,
        })
    }

    /// 200 whose body is the raw request head followed by the de-chunked
    /// request body.
    pub fn echo(self) -> Self {
        let headers = self.headers.clone();
        self.set(move |r| {
            let mut body = r.head.clone();
            body.extend_from_slice(&r.body);
            Reply::Bytes {
                data: response_bytes(200, &headers, &body, r.method == "HEAD"),
                close: false,
            }
        })
    }

    /// A chunked 200 with these chunks and trailers.
    pub fn chunked(self, chunks: &[&str], trailers: &[(&str, &str)]) -> Self {
        let mut data = Vec::new();
        data.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n");
        if !trailers.is_empty() {
            let names: Vec<&str> = trailers.iter().map(|(n, _)| *n).collect();
            data.extend_from_slice(format!("Trailer: {}\r\n", names.join(", ")).as_bytes());
        }
        data.extend_from_slice(b"\r\n");
        for c in chunks {
            data.extend_from_slice(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes());
        }
        data.extend_from_slice(b"0\r\n");
        for (n, v) in trailers {
            data.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        data.extend_from_slice(b"\r\n");
        self.set(move |_| Reply::Bytes {
            data: data.clone(),
            close: false,
        })
    }

    /// A 200 without Content-Length or Transfer-Encoding; the body ends when
    /// the mock closes the connection.
    pub fn close_delimited(self, body: &str) -> Self {
        let mut data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        data.extend_from_slice(body.as_bytes());
        self.set(move |_| Reply::BytesThenClose(data.clone()))
    }

    /// A fixed response followed by `Connection: close` and a close.
    pub fn respond_and_close(self, status: u16, body: &str) -> Self {
        let mut headers = self.headers.clone();
        headers.push(("Connection".into(), "close".into()));
        let body = body.as_bytes().to_vec();
        self.set(move |r| Reply::Bytes {
            data: response_bytes(status, &headers, &body, r.method == "HEAD"),
            close: true,
        })
    }

    /// Never answers.
    pub fn stall(self) -> Self {
        self.set(|_| Reply::Stall)
    }

    /// Closes right after reading a request head, without a response.
    pub fn close_after_head(self) -> Self {
        self.set(|_| Reply::Close)
    }

    /// Writes these raw bytes and closes (e.g. an invalid response).
    pub fn raw(self, bytes: &[u8]) -> Self {
        let b = bytes.to_vec();
        self.set(move |_| Reply::BytesThenClose(b.clone()))
    }

    /// `101 Switching Protocols`, then echoes raw bytes both ways.
    pub fn upgrade_echo(self) -> Self {
        self.set(|r| {
            let proto = r.header("upgrade").unwrap_or("websocket").to_string();
            Reply::Upgrade(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {proto}\r\nConnection: Upgrade\r\n\r\n"
                )
                .into_bytes(),
            )
        })
    }

    /// Sends `103 Early Hints` with a Link header before each final response.
    pub fn early_hints(mut self, link: &str) -> Self {
        self.interim =
            Some(format!("HTTP/1.1 103 Early Hints\r\nLink: {link}\r\n\r\n").into_bytes());
        self
    }

    /// Any behaviour.
    pub fn handler(self, h: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        self.set(h)
    }

    /// Waits this long before answering each request.
    pub fn latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    /// Closes each connection after `n` responses, without announcing it
    /// (`Connection: close` is not sent).
    pub fn close_after(mut self, n: usize) -> Self {
        self.close_after = Some(n);
        self
    }

    /// After `n` responses on a connection, the next request's head is read
    /// and the connection closed without an answer (a keep-alive connection
    /// the backend dropped just as the gateway reused it).
    pub fn drop_after(mut self, n: usize) -> Self {
        self.drop_after = Some(n);
        self
    }

    /// Binds 127.0.0.1:0 and starts serving.
    pub fn start(self) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            hits: Arc::new(AtomicUsize::new(0)),
            conns: Arc::new(AtomicUsize::new(0)),
            requests: Mutex::new(Vec::new()),
            streams: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let cfg = Arc::new(MockCfg {
            handler: self.handler,
            interim: self.interim,
            latency: self.latency,
            close_after: self.close_after,
            drop_after: self.drop_after,
        });
        let sh = shared.clone();
        let accept = thread::spawn(move || {
            for s in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                let id = sh.conns.fetch_add(1, Ordering::SeqCst);
                if let Ok(c) = s.try_clone() {
                    sh.streams.lock().unwrap().push(c);
                }
                let sh2 = sh.clone();
                let cfg2 = cfg.clone();
                thread::spawn(move || serve_mock_conn(s, id, &sh2, &cfg2));
            }
        });
        MockUpstream {
            addr,
            shared,
            accept: Some(accept),
        }
    }
}

struct MockCfg {
    handler: Handler,
    interim: Option<Vec<u8>>,
    latency: Duration,
    close_after: Option<usize>,
    drop_after: Option<usize>,
}

struct Shared {
    hits: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
    requests: Mutex<Vec<Request>>,
    streams: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// A mock HTTP/1.1 upstream on its own threads.
pub struct MockUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl MockUpstream {
    /// A builder answering 200 "ok" by default.
    pub fn builder() -> MockBuilder {
        let b = MockBuilder {
            handler: Arc::new(|_| Reply::Close),
            headers: Vec::new(),
            interim: None,
            latency: Duration::ZERO,
            close_after: None,
            drop_after: None,
        };
        b.respond(200, "ok")
    }

    /// Request heads received (counted as soon as a head is parsed).
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// The hit counter itself.
    pub fn hit_counter(&self) -> Arc<AtomicUsize> {
        self.shared.hits.clone()
    }

    /// Connections accepted.
    pub fn conns(&self) -> usize {
        self.shared.conns.load(Ordering::SeqCst)
    }

    /// Requests received in full (head and body), in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The last complete request.
    pub fn last(&self) -> Request {
        self.requests().pop().expect("the mock received no request")
    }

    /// Waits until `hits() >= n` (up to 5 s); returns whether it happened.
    pub fn wait_hits(&self, n: usize) -> bool {
        let end = Instant::now() + READ_TIMEOUT;
        while Instant::now() < end {
            if self.hits() >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Target string for a config.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for s in self.shared.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request from `stream` (buffer `buf` keeps extra bytes).
/// Calls `on_head` once the head is parsed. `None` on EOF before a head.
fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    on_head: impl FnOnce(),
) -> Option<Request> {
    let mut tmp = [0u8; 64 * 1024];
    let (mut req, head_len) = loop {
        if !buf.is_empty() {
            let mut hs = [httparse::EMPTY_HEADER; 256];
            let mut r = httparse::Request::new(&mut hs);
            match r.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let req = Request {
                        method: r.method.unwrap_or("").to_string(),
                        target: r.path.unwrap_or("").to_string(),
                        minor: r.version.unwrap_or(1),
                        headers: owned_headers(r.headers),
                        head: buf[..n].to_vec(),
                        ..Request::default()
                    };
                    break (req, n);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return None,
            }
        }
        match stream.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    buf.drain(..head_len);
    on_head();
    let te_chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let cl = req
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok());
    let upgrade = req.method == "GET" && req.header("upgrade").is_some();
    if te_chunked {
        // Decode chunks, recording the raw bytes.
        let mut pos = 0usize;
        let mut need = |buf: &mut Vec<u8>, stream: &mut TcpStream, upto: usize| -> bool {
            while buf.len() < upto {
                match stream.read(&mut tmp) {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            true
        };
        let find_line = |buf: &mut Vec<u8>, stream: &mut TcpStream, from: usize| -> Option<usize> {
            loop {
                if let Some(p) = buf[from..].windows(2).position(|w| w == b"\r\n") {
                    return Some(from + p);
                }
                let mut t = [0u8; 16 * 1024];
                match stream.read(&mut t) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&t[..n]),
                }
            }
        };
        loop {
            let eol = find_line(buf, stream, pos)?;
            let line = String::from_utf8_lossy(&buf[pos..eol]).into_owned();
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16).ok()?;
            pos = eol + 2;
            if size == 0 {
                // trailers
                loop {
                    let eol = find_line(buf, stream, pos)?;
                    if eol == pos {
                        pos += 2;
                        break;
                    }
                    let line = String::from_utf8_lossy(&buf[pos..eol]).into_owned();
                    if let Some((n, v)) = line.split_once(':') {
                        req.trailers
                            .push((n.trim().to_string(), v.trim().to_string()));
                    }
                    pos = eol + 2;
                }
                break;
            }
            if !need(buf, stream, pos + size + 2) {
                return None;
            }
            req.body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
        req.raw_body = buf[..pos].to_vec();
        buf.drain(..pos);
    } else if let Some(n) = cl {
        while buf.len() < n {
            match stream.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(k) => buf.extend_from_slice(&tmp[..k]),
            }
        }
        req.body = buf[..n].to_vec();
        req.raw_body = req.body.clone();
        buf.drain(..n);
    } else if upgrade {
        // Bytes after an upgrade request belong to the tunnel.
    }
    Some(req)
}

fn serve_mock_conn(mut s: TcpStream, conn_id: usize, sh: &Shared, cfg: &MockCfg) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.set_nodelay(true);
    mock_conn_loop(&mut s, conn_id, sh, cfg);
    // A clone is kept for Drop, so dropping `s` alone would not close it.
    let _ = s.shutdown(Shutdown::Both);
}

fn mock_conn_loop(s: &mut TcpStream, conn_id: usize, sh: &Shared, cfg: &MockCfg) {
    let mut buf = Vec::new();
    let mut served = 0usize;
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let dropping = cfg.drop_after.is_some_and(|n| served >= n);
        let Some(mut req) = read_request(s, &mut buf, || {
            sh.hits.fetch_add(1, Ordering::SeqCst);
        }) else {
            return;
        };
        if dropping {
            return;
        }
        req.conn = conn_id;
        req.index_on_conn = served;
        sh.requests.lock().unwrap().push(req.clone());
        if !cfg.latency.is_zero() {
            thread::sleep(cfg.latency);
        }
        let client_close = req
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
            || (req.minor == 0
                && !req
                    .header("connection")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("keep-alive")));
        let reply = (cfg.handler)(&req);
        if let Some(i) = &cfg.interim
            && !matches!(reply, Reply::Close | Reply::Stall)
            && s.write_all(i).is_err()
        {
            return;
        }
        served += 1;
        match reply {
            Reply::Bytes { data, close } => {
                if s.write_all(&data).is_err() {
                    return;
                }
                if close || client_close || cfg.close_after.is_some_and(|n| served >= n) {
                    let _ = s.shutdown(Shutdown::Both);
                    return;
                }
            }
            Reply::BytesThenClose(data) => {
                let _ = s.write_all(&data);
                let _ = s.shutdown(Shutdown::Both);
                return;
            }
            Reply::Stall => {
                let _ = s.set_read_timeout(None);
                let mut t = [0u8; 4096];
                while !sh.stop.load(Ordering::SeqCst) {
                    match s.read(&mut t) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                return;
            }
            Reply::Close => {
                let _ = s.shutdown(Shutdown::Both);
                return;
            }
            Reply::Upgrade(head) => {
                if s.write_all(&head).is_err() {
                    return;
                }
                if !buf.is_empty() && s.write_all(&buf).is_err() {
                    return;
                }
                let mut t = [0u8; 16 * 1024];
                loop {
                    match s.read(&mut t) {
                        Ok(0) | Err(_) => {
                            let _ = s.shutdown(Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&t[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A port that refuses connections: bound, then released.
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A loopback port that was free a moment ago (bound, then released), for
/// a server that must be told its port before it starts.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------
// Small values
// ---------------------------------------------------------------------------

/// Lower-case hex SHA-256 of `s`, as `api_key_sha256` and
/// `client_secret_sha256` take it (computed independently of the gateway).
pub fn sha_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------

/// Builds a gateway config as TOML.
pub struct GatewayConfig {
    server: Vec<String>,
    upstreams: Vec<(String, Vec<String>, Vec<String>)>,
    routes: Vec<String>,
}

impl GatewayConfig {
    /// listen = 127.0.0.1:0, workers = 2, pin = false; nothing else.
    pub fn new() -> Self {
        GatewayConfig {
            server: Vec::new(),
            upstreams: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// One upstream `up` with `targets` and a catch-all route to it.
    pub fn simple(targets: &[SocketAddr]) -> Self {
        Self::new()
            .upstream("up", targets, &[])
            .route("/{*rest}", "up", &[])
    }

    /// A `[server]` key line, e.g. `"max_body_bytes = 100"`.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.to_string());
        self
    }

    /// An upstream with extra key lines.
    pub fn upstream(mut self, name: &str, targets: &[SocketAddr], extra: &[&str]) -> Self {
        self.upstreams.push((
            name.to_string(),
            targets.iter().map(|a| a.to_string()).collect(),
            extra.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// A key line on the most recently added upstream.
    pub fn upstream_key(mut self, line: &str) -> Self {
        self.upstreams
            .last_mut()
            .expect("add an upstream first")
            .2
            .push(line.to_string());
        self
    }

    /// A route with extra key lines (`methods = [...]`, `host = "..."`).
    pub fn route(mut self, path: &str, upstream: &str, extra: &[&str]) -> Self {
        let mut r = format!(
            "[[routes]]\nname = \"r{}\"\npath = \"{path}\"\nupstream = \"{upstream}\"\n",
            self.routes.len()
        );
        for e in extra {
            r.push_str(e);
            r.push('\n');
        }
        self.routes.push(r);
        self
    }

    /// The TOML text.
    pub fn toml(&self) -> String {
        let mut t = String::from(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\ndrain_timeout_ms = 2000\n",
        );
        for l in &self.server {
            t.push_str(l);
            t.push('\n');
        }
        for (name, targets, extra) in &self.upstreams {
            let ts: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
            t.push_str(&format!(
                "\n[upstreams.{name}]\ntargets = [{}]\n",
                ts.join(", ")
            ));
            for e in extra {
                t.push_str(e);
                t.push('\n');
            }
        }
        for r in &self.routes {
            t.push('\n');
            t.push_str(r);
        }
        t
    }

    /// Parses and starts the gateway.
    pub fn start(&self) -> Gateway {
        Gateway::start(&self.toml())
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// `GET /upstreams/{name}` of the admin API, answered from `gw`'s live
/// config; asserts a 200 and returns the JSON body.
pub fn upstream_state(gw: &Gateway, name: &str) -> serde_json::Value {
    let cfg = gw.handle.store.load();
    let (status, body) =
        ringgate::upstream::admin_request(&cfg, "GET", &format!("/upstreams/{name}"), b"")
            .expect("an /upstreams path");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// An in-process gateway.
pub struct Gateway {
    /// The running server.
    pub handle: ringgate::runtime::ServerHandle,
    /// Its (first) listen address.
    pub addr: SocketAddr,
}

impl Gateway {
    /// Starts a gateway from TOML text.
    pub fn start(toml: &str) -> Gateway {
        let cfg = match ringgate::config::Config::parse(toml) {
            Ok(c) => c,
            Err(e) => panic!("config rejected:\n{e}\n--- config ---\n{toml}"),
        };
        let handle = ringgate::runtime::Server::start(cfg).expect("gateway start");
        let addr = handle.local_addrs()[0];
        Gateway { handle, addr }
    }

    /// A new raw client connection.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// One GET on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        self.client().get(path)
    }

    /// One `GET` with `Connection: close` on a fresh connection (nothing
    /// else can follow it on that connection).
    pub fn get_close(&self, path: &str) -> Response {
        self.client().request(format!(
            "GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n"
        ))
    }

    /// Stops the gateway (drain and join).
    pub fn shutdown(&mut self) {
        self.handle.shutdown();
    }
}

// ---------------------------------------------------------------------------
// The ringgate binary
// ---------------------------------------------------------------------------

/// The package's `ringgate` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_ringgate");

/// The port from the "ringgate serving" log line.
fn serving_port(line: &str) -> Option<u16> {
    if !line.contains("ringgate serving") {
        return None;
    }
    let i = line.find("127.0.0.1:")? + "127.0.0.1:".len();
    line[i..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Starts `ringgate run -c cfg`; returns the child, its listen address
/// (from the "ringgate serving" log line) and a thread collecting its log
/// (stderr) until it exits. Without that line within 10 s the child is
/// killed and the test fails with the log.
pub fn spawn_run(
    cfg: &std::path::Path,
) -> (std::process::Child, SocketAddr, thread::JoinHandle<String>) {
    spawn_run_with(cfg, &[])
}

/// As [`spawn_run`], with more arguments after `run` (e.g. `--takeover`).
pub fn spawn_run_with(
    cfg: &std::path::Path,
    args: &[&str],
) -> (std::process::Child, SocketAddr, thread::JoinHandle<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(BIN)
        .arg("run")
        .args(args)
        .arg("-c")
        .arg(cfg)
        .env("NO_COLOR", "1")
        .env("RINGGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringgate run");
    let stderr = child.stderr.take().unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let log = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(p) = serving_port(&line) {
                let _ = port_tx.send(p);
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let Ok(port) = port_rx.recv_timeout(Duration::from_secs(10)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no 'ringgate serving' line; log:\n{}", log.join().unwrap());
    };
    (child, ([127, 0, 0, 1], port).into(), log)
}

// ---------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------

/// A parsed response.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// HTTP minor version.
    pub minor: u8,
    /// Reason phrase.
    pub reason: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
    /// Chunked trailers.
    pub trailers: Vec<(String, String)>,
    /// The body was chunked.
    pub chunked: bool,
    /// The body was delimited by the connection closing.
    pub close_delimited: bool,
    /// The raw head.
    pub head: String,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    /// Every value of this header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
    /// The `Retry-After` header in seconds (panics when it is missing or
    /// not a number).
    pub fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap()
    }
    /// True when the response says `Connection: close`.
    pub fn says_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

/// Asserts an error response made by the gateway: the status, a JSON body
/// `{"error": "...", "status": N, "request_id": "..."}` and
/// `Content-Type: application/json`.
pub fn assert_json_error(r: &Response, status: u16) {
    assert_eq!(r.status, status, "status; response: {r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "content-type; response: {r:?}"
    );
    let j = r.json();
    assert_eq!(j["status"].as_u64(), Some(status as u64), "body: {j}");
    assert!(
        j["error"].as_str().is_some_and(|s| !s.is_empty()),
        "body error: {j}"
    );
    assert!(
        j["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "body request_id: {j}"
    );
}

/// A raw HTTP/1.1 client over one TCP connection.
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// How a connection ended when the client waited for it to close.
#[derive(Debug, PartialEq, Eq)]
pub enum CloseState {
    /// EOF or reset with no further bytes.
    Closed,
    /// Still open when the timeout passed.
    Open,
    /// Bytes arrived.
    Data(Vec<u8>),
}

impl Client {
    /// Connects with a 5 s read timeout.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to gateway");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Wraps a connected socket (5 s read timeout, blocking).
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes all bytes (panics on error).
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("client write");
    }

    /// Writes all bytes, returning the error.
    pub fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        self.stream.write_all(bytes.as_ref())
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut t = [0u8; 64 * 1024];
        let n = self.stream.read(&mut t)?;
        self.buf.extend_from_slice(&t[..n]);
        Ok(n)
    }

    fn need(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF with {} of {n} bytes", self.buf.len()),
                ));
            }
        }
        Ok(())
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = self.buf[..p].to_vec();
                self.buf.drain(..p + 2);
                return Ok(l);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF in a line",
                ));
            }
        }
    }

    /// Reads one response; `head_request` means no body.
    pub fn try_read_response_for(&mut self, head_request: bool) -> io::Result<Response> {
        let (mut resp, n) = loop {
            if !self.buf.is_empty() {
                let mut hs = [httparse::EMPTY_HEADER; 128];
                let mut r = httparse::Response::new(&mut hs);
                match r.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let resp = Response {
                            status: r.code.unwrap_or(0),
                            minor: r.version.unwrap_or(1),
                            reason: r.reason.unwrap_or("").to_string(),
                            headers: owned_headers(r.headers),
                            head: String::from_utf8_lossy(&self.buf[..n]).into_owned(),
                            ..Response::default()
                        };
                        break (resp, n);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "bad response head ({e}): {:?}",
                                String::from_utf8_lossy(&self.buf)
                            ),
                        ));
                    }
                }
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "EOF before a response head (had {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        self.buf.drain(..n);
        let st = resp.status;
        if head_request || (100..200).contains(&st) || st == 204 || st == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            resp.chunked = true;
            loop {
                let l = String::from_utf8_lossy(&self.line()?).into_owned();
                let size = usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {l:?}"))
                    })?;
                if size == 0 {
                    loop {
                        let l = String::from_utf8_lossy(&self.line()?).into_owned();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((n, v)) = l.split_once(':') {
                            resp.trailers
                                .push((n.trim().to_string(), v.trim().to_string()));
                        }
                    }
                    break;
                }
                self.need(size + 2)?;
                resp.body.extend_from_slice(&self.buf[..size]);
                if &self.buf[size..size + 2] != b"\r\n" {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "missing CRLF after chunk",
                    ));
                }
                self.buf.drain(..size + 2);
            }
        } else if let Some(cl) = resp.header("content-length") {
            let cl: usize = cl.trim().parse().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length in response")
            })?;
            self.need(cl)?;
            resp.body = self.buf.drain(..cl).collect();
        } else {
            resp.close_delimited = true;
            loop {
                match self.fill() {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                    Err(e) => return Err(e),
                }
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    /// Reads one response to a non-HEAD request (panics on failure).
    pub fn read_response(&mut self) -> Response {
        self.try_read_response_for(false)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// Reads one response to a HEAD request.
    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response_for(true)
            .unwrap_or_else(|e| panic!("reading a HEAD response: {e}"))
    }

    /// Reads one response, returning errors.
    pub fn try_read_response(&mut self) -> io::Result<Response> {
        self.try_read_response_for(false)
    }

    /// Sends raw bytes and reads one response.
    pub fn request(&mut self, raw: impl AsRef<[u8]>) -> Response {
        self.send(raw);
        self.read_response()
    }

    /// `GET path` with `Host: test.local`.
    pub fn get(&mut self, path: &str) -> Response {
        self.request(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n"))
    }

    /// Reads exactly `n` raw bytes (for tunnels).
    pub fn read_exact_raw(&mut self, n: usize) -> Vec<u8> {
        self.need(n)
            .unwrap_or_else(|e| panic!("reading {n} raw bytes: {e}"));
        self.buf.drain(..n).collect()
    }

    /// Waits up to `timeout` for the peer to close.
    pub fn wait_close(&mut self, timeout: Duration) -> CloseState {
        if !self.buf.is_empty() {
            return CloseState::Data(std::mem::take(&mut self.buf));
        }
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut t = [0u8; 4096];
        let r = match self.stream.read(&mut t) {
            Ok(0) => CloseState::Closed,
            Ok(n) => CloseState::Data(t[..n].to_vec()),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                CloseState::Open
            }
            Err(_) => CloseState::Closed,
        };
        self.stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        r
    }

    /// Asserts the gateway closes this connection (within 5 s) without
    /// sending anything more.
    pub fn assert_closed(&mut self) {
        match self.wait_close(READ_TIMEOUT) {
            CloseState::Closed => {}
            other => panic!("expected the connection to be closed, got {other:?}"),
        }
    }

    /// Asserts the connection is still open (nothing arrives within 100 ms).
    pub fn assert_open(&mut self) {
        match self.wait_close(Duration::from_millis(100)) {
            CloseState::Open => {}
            other => panic!("expected the connection to stay open, got {other:?}"),
        }
    }
}

/// `n` GETs on one keep-alive connection; returns the responses.
pub fn get_many(c: &mut Client, path: &str, n: usize) -> Vec<Response> {
    (0..n).map(|_| c.get(path)).collect()
}

/// The lines of the file at `path` once it holds at least `n` (or after
/// 10 s, whatever it holds); `n = 0` reads it now.
pub fn file_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines: Vec<String> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        if lines.len() >= n || std::time::Instant::now() > end {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// One request to an admin listener (`Connection: close`, with `token` as
/// bearer when given); returns the status and the body.
pub fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Writes `data` to `sock` in 64 KiB pieces from another thread (a client
/// still sending while the test reads); the thread ends with how many bytes
/// went out before a write failed.
pub fn write_behind(mut sock: TcpStream, data: Vec<u8>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut sent = 0;
        for piece in data.chunks(64 * 1024) {
            if sock.write_all(piece).is_err() {
                break;
            }
            sent += piece.len();
        }
        sent
    })
}
