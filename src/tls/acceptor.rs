//! Each worker's TLS accept loops: the handshake (bounded by the
//! listener's `handshake_timeout_ms`), the answer to plain HTTP sent to a
//! TLS port, and the `redirect_from` plain listeners that answer 308 to
//! https.
//!
//! Key components: [`Binder`] (binds every TLS and redirect address once
//! per worker, `SO_REUSEPORT`, port 0 resolved once), [`start`] (a
//! worker's loops), [`EdgeListener::shut`] (a drain stops accepting), and
//! the handshake counters ([`render_metrics`]).
//!
//! How it fits: a handshaken connection goes to `http::conn::serve_tls`,
//! the same loop plain connections run, with a [`ConnTls`] attached. The
//! settings come from the current config generation at accept time (found
//! by listen address), so a reload's new certificates serve the next
//! connection; connections already open keep theirs.
//!
//! Performance notes: the handshake counters are process-wide relaxed
//! atomics, touched once per handshake (never per request).

use super::stream::TlsStream;
use super::{ConnTls, TlsListener};
use crate::config::Config;
use crate::runtime::worker::Worker;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// What an edge socket serves.
#[derive(Clone)]
pub enum Role {
    /// TLS on this address (the listener as compiled at start, and its
    /// index in `[[server.tls]]`).
    Tls(Arc<TlsListener>, usize),
    /// Plain HTTP answered with a 308 to the listener's https address
    /// (its first `listen` port, resolved).
    Redirect(Arc<TlsListener>, u16),
}

/// A socket bound for one worker, with what it serves.
pub struct Bound {
    /// The address as configured.
    pub addr: SocketAddr,
    /// The bound socket.
    pub socket: std::net::TcpListener,
    /// What it serves.
    pub role: Role,
}

/// A worker's edge sockets on their way to its thread (taken once, when
/// the worker starts).
#[derive(Clone, Default)]
pub struct EdgeSockets(Arc<std::sync::Mutex<Vec<Bound>>>);

impl EdgeSockets {
    /// Takes the sockets (the worker's start).
    pub fn take(&self) -> Vec<Bound> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Binds the TLS and redirect addresses for each worker in turn; the first
/// worker's binding resolves any port 0, later ones reuse that port.
#[derive(Default)]
pub struct Binder {
    resolved: Vec<SocketAddr>,
}

impl Binder {
    /// Binds every `[[server.tls]]` `listen` and `redirect_from` address
    /// of `config` once more (for one worker).
    pub fn bind(&mut self, config: &Config, backlog: i32) -> io::Result<EdgeSockets> {
        let mut out = Vec::new();
        let mut i = 0;
        for (n, l) in config.tls.iter().enumerate() {
            // The first listen address is bound first: its resolved port
            // is known when the redirects are.
            let https_port = |resolved: &[SocketAddr], i: usize| {
                resolved.get(i).map_or(443, |a: &SocketAddr| a.port())
            };
            let first = i;
            let roles = l
                .listen
                .iter()
                .map(|a| (*a, Role::Tls(l.clone(), n), "listen"))
                .chain(
                    l.redirect_from
                        .iter()
                        .map(|a| (*a, Role::Redirect(l.clone(), 0), "redirect_from")),
                )
                .collect::<Vec<_>>();
            for (addr, mut role, key) in roles {
                if let Role::Redirect(_, port) = &mut role {
                    *port = https_port(&self.resolved, first);
                }
                let at = self.resolved.get(i).copied().unwrap_or(addr);
                let socket = crate::runtime::server::bind(at, backlog).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr} (server.tls[{n}].{key}): {e}"),
                    )
                })?;
                if self.resolved.len() == i {
                    self.resolved.push(socket.local_addr()?);
                }
                out.push(Bound { addr, socket, role });
                i += 1;
            }
        }
        Ok(EdgeSockets(Arc::new(std::sync::Mutex::new(out))))
    }

    /// The bound addresses (ports resolved), in config order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.resolved
    }
}

/// One edge socket's accept loop on a worker.
pub struct EdgeListener {
    fd: RawFd,
    _keep: std::net::TcpListener,
}

impl EdgeListener {
    /// Stops accepting (the drain): `shutdown(2)` ends the pending accept.
    pub fn shut(&self) {
        // SAFETY: `fd` is `_keep`'s descriptor, open while self lives.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RD);
        }
    }
}

/// Starts a worker's edge accept loops.
pub fn start(w: &Rc<Worker>, bound: Vec<Bound>) -> Vec<EdgeListener> {
    let mut out = Vec::new();
    for b in bound {
        let keep = match b.socket.try_clone() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(worker = w.id, addr = %b.addr, error = %e, "cannot register TLS listener");
                continue;
            }
        };
        let fd = keep.as_raw_fd();
        crate::runtime::worker::nodelay_for_accepted(&b.socket);
        match monoio::net::TcpListener::from_std(b.socket) {
            Ok(l) => {
                monoio::spawn(accept_loop(w.clone(), l, b.role));
                out.push(EdgeListener { fd, _keep: keep });
            }
            Err(e) => {
                tracing::error!(worker = w.id, addr = %b.addr, error = %e, "cannot register TLS listener")
            }
        }
    }
    out
}

/// The listener's settings in the current generation (a reload's new
/// certificates), else the ones this socket was started with. A reload
/// keeps every listener's addresses (it is refused otherwise), so the
/// index finds the same listener.
fn current(w: &Worker, index: usize, started: &Arc<TlsListener>) -> Arc<TlsListener> {
    let g = w.current();
    match g.config.tls.get(index) {
        Some(l) if l.listen == started.listen => l.clone(),
        _ => started.clone(),
    }
}

async fn accept_loop(w: Rc<Worker>, l: monoio::net::TcpListener, role: Role) {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(_) if w.draining.get() => return,
            Err(e) => {
                tracing::warn!(worker = w.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if w.draining.get() {
            return;
        }
        // TCP_NODELAY comes from the listener.
        if w.connections.get() >= w.config.server.max_connections {
            // Refused before the handshake: the client sees the close.
            drop(stream);
            continue;
        }
        w.connections.set(w.connections.get() + 1);
        w.metrics.connections.add(1);
        w.metrics
            .open_connections
            .store(w.connections.get() as i64, Relaxed);
        let w2 = w.clone();
        let role = role.clone();
        monoio::spawn(async move {
            match role {
                Role::Tls(started, index) => {
                    let l = current(&w2, index, &started);
                    serve_one(&w2, stream, peer, l).await
                }
                Role::Redirect(_, port) => redirect(&w2, stream, port).await,
            }
            w2.connections.set(w2.connections.get() - 1);
            w2.metrics
                .open_connections
                .store(w2.connections.get() as i64, Relaxed);
        });
    }
}

/// Handshake outcomes, process-wide: full, resumed, timed out, failed
/// (bad ClientHello, no certificate for the name, a client certificate
/// refused, a reset), plain HTTP answered with 400.
static HANDSHAKES: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
const H_FULL: usize = 0;
const H_RESUMED: usize = 1;
const H_TIMEOUT: usize = 2;
const H_FAILED: usize = 3;
const H_PLAIN: usize = 4;
const H_LABELS: [&str; 5] = ["full", "resumed", "timeout", "failed", "plain_http"];

/// Appends the handshake counters in Prometheus text format.
pub fn render_metrics(o: &mut String) {
    use crate::telemetry::names::TLS_HANDSHAKES;
    use std::fmt::Write;
    let _ = writeln!(
        o,
        "# HELP {TLS_HANDSHAKES} TLS handshakes on client connections, by result.\n# TYPE {TLS_HANDSHAKES} counter"
    );
    for (i, l) in H_LABELS.iter().enumerate() {
        let _ = writeln!(
            o,
            "{TLS_HANDSHAKES}{{result=\"{l}\"}} {}",
            HANDSHAKES[i].load(Relaxed)
        );
    }
}

enum Handshake {
    Done(TlsStream),
    /// Plain HTTP: answered, nothing more to do.
    Plain,
    Failed,
}

/// The handshake, then the connection loop.
async fn serve_one(w: &Worker, tcp: monoio::net::TcpStream, peer: SocketAddr, l: Arc<TlsListener>) {
    let timeout = l.handshake_timeout;
    let r = monoio::time::timeout(timeout, handshake(w, tcp, &l)).await;
    let stream = match r {
        Err(_) => {
            HANDSHAKES[H_TIMEOUT].fetch_add(1, Relaxed);
            return;
        }
        // Counted when seen (the answer lingers for the client's close).
        Ok(Handshake::Plain) => return,
        Ok(Handshake::Failed) => {
            HANDSHAKES[H_FAILED].fetch_add(1, Relaxed);
            return;
        }
        Ok(Handshake::Done(s)) => s,
    };
    let facts = {
        let tls = stream.tls();
        let resumed = tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        HANDSHAKES[if resumed { H_RESUMED } else { H_FULL }].fetch_add(1, Relaxed);
        ConnTls::new(l, &tls)
    };
    if facts.alpn == Some("h2") {
        if let Ok(io) = crate::http::h2::io::Io::tls(stream) {
            crate::http::h2::serve(w, io, Vec::new(), peer, Some(Rc::new(facts))).await;
        }
        return;
    }
    crate::http::conn::serve_tls(w, stream, peer, Rc::new(facts)).await;
}

async fn handshake(w: &Worker, tcp: monoio::net::TcpStream, l: &Arc<TlsListener>) -> Handshake {
    let conn = match rustls::ServerConnection::new(super::worker_config(l)) {
        Ok(c) => c,
        Err(_) => return Handshake::Failed,
    };
    let mut s = TlsStream::new(tcp, rustls::Connection::Server(conn));
    match s.read_first().await {
        Ok(n) if n > 0 => {}
        _ => return Handshake::Failed,
    }
    // A TLS record starts with its content type (22, handshake); an HTTP
    // request with a method name.
    if s.first_bytes()[0].is_ascii_uppercase() {
        HANDSHAKES[H_PLAIN].fetch_add(1, Relaxed);
        plain_http(w, &mut s).await;
        return Handshake::Plain;
    }
    match s.handshake().await {
        Ok(()) => Handshake::Done(s),
        Err(_) => Handshake::Failed,
    }
}

/// Answers plain HTTP on a TLS port like nginx does (400, "plain HTTP
/// request was sent to HTTPS port") and closes, after reading what the
/// client still sends for a moment (so the close does not reset the
/// connection before the client read the answer).
async fn plain_http(w: &Worker, s: &mut TlsStream) {
    let mut rid = [0u8; 32];
    w.next_request_id(&mut rid);
    let mut buf = Vec::with_capacity(256);
    crate::http::conn::error_response(
        &mut buf,
        400,
        "plain HTTP request was sent to HTTPS port",
        &rid,
        true,
        None,
        &[],
    );
    if s.write_plain(buf).await.is_err() {
        return;
    }
    linger(s).await;
}

/// Half-closes and reads until the peer closes (at most 1 s).
async fn linger(s: &mut TlsStream) {
    // SAFETY: the fd is the stream's own socket, open while `s` lives.
    unsafe {
        libc::shutdown(s.as_raw_fd(), libc::SHUT_WR);
    }
    let _ = monoio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = s.read_first().await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Largest request head a redirect listener reads.
const REDIRECT_HEAD: usize = 8 * 1024;

/// A `redirect_from` connection: reads one request head and answers 308
/// to the same host and path over https, then closes.
async fn redirect(w: &Worker, mut tcp: monoio::net::TcpStream, https_port: u16) {
    let timeout = w.config.server.header_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let head = monoio::time::timeout(timeout, async {
        loop {
            if buf.len() == buf.capacity() {
                if buf.len() >= REDIRECT_HEAD {
                    return None;
                }
                buf.reserve(buf.len());
            }
            let len = buf.len();
            let (r, b) = tcp.read(buf.slice_mut(len..)).await;
            buf = b.into_inner();
            match r {
                Ok(n) if n > 0 => {}
                _ => return None,
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(_)) => {
                    let host = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("host"))
                        .map(|h| h.value.to_vec());
                    return Some((host, req.path.unwrap_or("/").as_bytes().to_vec()));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Some((None, Vec::new())),
            }
        }
    })
    .await;
    let Ok(Some((host, path))) = head else {
        return;
    };
    let mut rid = [0u8; 32];
    w.next_request_id(&mut rid);
    let mut out = Vec::with_capacity(512);
    match host.as_deref().and_then(|h| location(h, &path, https_port)) {
        Some(loc) => {
            out.extend_from_slice(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: ");
            out.extend_from_slice(&loc);
            out.extend_from_slice(b"\r\nContent-Length: 0\r\nConnection: close\r\nX-Request-Id: ");
            out.extend_from_slice(&rid);
            out.extend_from_slice(b"\r\n\r\n");
        }
        None => crate::http::conn::error_response(
            &mut out,
            400,
            "a valid Host header is needed for the redirect to https",
            &rid,
            true,
            None,
            &[],
        ),
    }
    let _ = monoio::time::timeout(Duration::from_secs(1), tcp.write_all(out)).await;
}

/// `https://HOST[:PORT]PATH` for a redirect: the host without the plain
/// port, the TLS listener's port unless 443; `None` for a host or path
/// that could split the header.
fn location(host: &[u8], path: &[u8], port: u16) -> Option<Vec<u8>> {
    let ok = |b: &[u8]| b.iter().all(|&c| c.is_ascii_graphic());
    if host.is_empty() || !ok(host) || !ok(path) || !path.starts_with(b"/") {
        return None;
    }
    // Strip a port (not inside an IPv6 literal).
    let name = match host.iter().rposition(|&c| c == b':') {
        Some(i) if !host[i..].contains(&b']') => &host[..i],
        _ => host,
    };
    let mut loc = b"https://".to_vec();
    loc.extend_from_slice(name);
    if port != 443 {
        loc.push(b':');
        loc.extend_from_slice(itoa::Buffer::new().format(port).as_bytes());
    }
    loc.extend_from_slice(path);
    Some(loc)
}
