//! The admin listener: health, readiness, metrics, the running config,
//! reload, upstream state and registry, a JSON summary ([`stats`], at
//! `/stats`) and a live dashboard drawn from it (`/dashboard`), on its own
//! address (loopback by default) and its own thread — never on a worker.
//!
//! A bearer token is required on every endpoint but `/dashboard` (a static
//! page holding no data; it asks for the token when `/stats` wants one)
//! when `[admin] token_env` or `token_file` sets one. Requests are small;
//! each connection gets a short blocking thread with read/write timeouts,
//! and at most [`MAX_ADMIN_CONNECTIONS`] are served at once.

use crate::config::Config;
use crate::runtime::reload::ConfigStore;
use crate::telemetry::metrics::Metrics;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod objects;
pub mod stats;

/// The dashboard page: one self-contained HTML document (inline CSS, JS and
/// SVG; nothing fetched but `stats`), served at `GET /dashboard`.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// What the dashboard page may load: nothing but itself and the admin API.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Most admin connections served concurrently.
pub const MAX_ADMIN_CONNECTIONS: usize = 32;

/// A reload request's answer: Ok(summary) or every error.
pub type ReloadFn = dyn Fn() -> Result<String, Vec<String>> + Send + Sync;

/// What the admin endpoints read.
pub struct AdminState {
    /// The running config.
    pub config: Arc<ConfigStore>,
    /// Metric shards.
    pub metrics: Arc<Metrics>,
    /// Triggers a reload (None: reload not available).
    pub reload: Option<Box<ReloadFn>>,
    /// Where `POST /cache/purge` publishes (None: not available).
    pub cache_purge: Option<Arc<crate::filter::cache::PurgeLog>>,
    /// Recent metric samples behind `/stats`.
    pub stats: stats::StatsRecorder,
    active: AtomicUsize,
}

impl AdminState {
    /// Admin state over a running server.
    pub fn new(
        config: Arc<ConfigStore>,
        metrics: Arc<Metrics>,
        reload: Option<Box<ReloadFn>>,
    ) -> Self {
        AdminState {
            config,
            metrics,
            reload,
            cache_purge: None,
            stats: stats::StatsRecorder::new(),
            active: AtomicUsize::new(0),
        }
    }
}

/// The admin listener of a running server: where it listens, and the
/// state its endpoints read. A reload may move it to another address.
pub struct Admin {
    state: Arc<AdminState>,
    listener: Mutex<AdminListener>,
}

/// One bound admin address and its accept thread.
pub struct AdminListener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// A duplicate of the accept thread's socket, to shut it down.
    sock: TcpListener,
}

impl AdminListener {
    /// Stops accepting (connections being served finish).
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: `sock` is an open listener owned by self; shutdown(2)
        // wakes the accept thread blocked on the same socket.
        unsafe {
            libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&self.sock), libc::SHUT_RD);
        }
    }
}

impl Admin {
    /// Binds `addr` and serves the admin endpoints there on a thread.
    pub fn start(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<Arc<Admin>> {
        let listener = listen(addr, state.clone())?;
        start_sampler(&state)?;
        Ok(Arc::new(Admin {
            state,
            listener: Mutex::new(listener),
        }))
    }

    /// Where the admin endpoints are served (port resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.lock().unwrap_or_else(|e| e.into_inner()).addr
    }

    /// Binds `addr` and serves there too, until [`Admin::switch`] makes it
    /// the only admin address (a reload binds before it publishes).
    pub fn bind(&self, addr: SocketAddr) -> std::io::Result<AdminListener> {
        listen(addr, self.state.clone())
    }

    /// Serves on `new` only: the previous address stops accepting.
    pub fn switch(&self, new: AdminListener) {
        let old = std::mem::replace(
            &mut *self.listener.lock().unwrap_or_else(|e| e.into_inner()),
            new,
        );
        drop(old);
    }
}

impl Drop for AdminListener {
    /// A listener nobody holds stops accepting (a moved or removed admin
    /// address, or a reload that bound one and did not publish).
    fn drop(&mut self) {
        self.stop();
    }
}

/// Samples the metrics for `/stats` every [`stats::INTERVAL`] on a thread
/// of its own, until the admin state is dropped (the listener stopped).
fn start_sampler(state: &Arc<AdminState>) -> std::io::Result<()> {
    state.stats.sample(&state.metrics, Duration::ZERO);
    let owner = Arc::downgrade(state);
    std::thread::Builder::new()
        .name(String::from("ringgate-stats"))
        .spawn(move || {
            loop {
                std::thread::sleep(stats::INTERVAL);
                let Some(st) = owner.upgrade() else { break };
                st.stats.sample(&st.metrics, stats::INTERVAL / 2);
            }
        })?;
    Ok(())
}

/// Binds the admin address and serves it on a thread.
fn listen(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<AdminListener> {
    // SO_REUSEPORT, like the traffic listeners: during a zero-downtime
    // restart the old and the new process both hold the admin port.
    let bind = || -> std::io::Result<TcpListener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        sock.bind(&addr.into())?;
        sock.listen(128)?;
        Ok(sock.into())
    };
    let l = bind()?;
    let local = l.local_addr()?;
    let sock = l.try_clone()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name(String::from("ringgate-admin"))
        .spawn(move || {
            for s in l.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                if state.active.load(Ordering::Relaxed) >= MAX_ADMIN_CONNECTIONS {
                    continue;
                }
                state.active.fetch_add(1, Ordering::Relaxed);
                let st = state.clone();
                let r = std::thread::Builder::new()
                    .name(String::from("ringgate-admin-conn"))
                    .spawn(move || {
                        serve(s, &st);
                        st.active.fetch_sub(1, Ordering::Relaxed);
                    });
                if r.is_err() {
                    state.active.fetch_sub(1, Ordering::Relaxed);
                }
            }
        })?;
    Ok(AdminListener {
        addr: local,
        stop,
        sock,
    })
}

/// A parsed admin request.
pub struct AdminRequest {
    /// Method.
    pub method: String,
    /// Path (without query).
    pub path: String,
    /// Query string.
    pub query: String,
    /// Bearer token presented.
    pub bearer: Option<String>,
    /// Body.
    pub body: Vec<u8>,
    keep_alive: bool,
}

fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<AdminRequest> {
    let mut tmp = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut cl = 0usize;
                let mut bearer = None;
                let mut close = req.version == Some(0);
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        cl = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
                    } else if h.name.eq_ignore_ascii_case("authorization") {
                        let v = std::str::from_utf8(h.value).ok()?;
                        if let Some(t) = v.strip_prefix("Bearer ") {
                            bearer = Some(t.trim().to_string());
                        }
                    } else if h.name.eq_ignore_ascii_case("connection")
                        && h.value.eq_ignore_ascii_case(b"close")
                    {
                        close = true;
                    }
                }
                if cl > 1 << 20 {
                    return None;
                }
                let target = req.path.unwrap_or("/");
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p.to_string(), q.to_string()),
                    None => (target.to_string(), String::new()),
                };
                let method = req.method.unwrap_or("").to_string();
                while buf.len() < n + cl {
                    let k = s.read(&mut tmp).ok()?;
                    if k == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&tmp[..k]);
                }
                let body = buf[n..n + cl].to_vec();
                buf.drain(..n + cl);
                return Some(AdminRequest {
                    method,
                    path,
                    query,
                    bearer,
                    body,
                    keep_alive: !close,
                });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > 64 * 1024 {
                    return None;
                }
                let k = s.read(&mut tmp).ok()?;
                if k == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..k]);
            }
            Err(_) => return None,
        }
    }
}

fn serve(mut s: TcpStream, st: &AdminState) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::with_capacity(4096);
    while let Some(req) = read_request(&mut s, &mut buf) {
        let (status, ctype, body) = handle(st, &req);
        let resp = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}{}{}\r\n",
            crate::http::reason(status),
            body.len(),
            if ctype.starts_with("text/html") {
                format!(
                    "Content-Security-Policy: {DASHBOARD_CSP}\r\nX-Content-Type-Options: nosniff\r\n"
                )
            } else {
                String::new()
            },
            if status == 401 {
                "WWW-Authenticate: Bearer realm=\"ringgate-admin\"\r\n"
            } else {
                ""
            },
            if req.keep_alive {
                ""
            } else {
                "Connection: close\r\n"
            },
        );
        if s.write_all(resp.as_bytes()).is_err()
            || s.write_all(body.as_bytes()).is_err()
            || !req.keep_alive
        {
            return;
        }
    }
}

fn json_err(status: u16, msg: &str) -> (u16, &'static str, String) {
    (
        status,
        "application/json",
        serde_json::json!({"error": msg, "status": status}).to_string(),
    )
}

/// Answers one admin request.
pub fn handle(st: &AdminState, req: &AdminRequest) -> (u16, &'static str, String) {
    if req.method == "GET" && req.path == "/dashboard" {
        // The page holds no data: it reads /stats, which checks the token.
        return (200, "text/html; charset=utf-8", DASHBOARD_HTML.to_string());
    }
    let (generation, cfg) = st.config.load_with_generation();
    if let Some(admin) = &cfg.admin
        && let Some(token) = &admin.token
    {
        let ok = req
            .bearer
            .as_deref()
            .is_some_and(|b| constant_time_eq(b.as_bytes(), token.as_bytes()));
        if !ok {
            return json_err(401, "admin token required");
        }
    }
    // Objects and registry targets kept in etcd.
    if let Some(a) = objects::handle(
        &cfg,
        &st.config,
        &req.method,
        &req.path,
        &req.query,
        &req.body,
    ) {
        return a;
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/healthz") => (200, "application/json", String::from("{\"status\":\"ok\"}")),
        ("GET", "/readyz") => {
            let ready = st.metrics.ready.load(Ordering::Relaxed) == 1;
            if let Some(a) = objects::readyz(&cfg, ready) {
                a
            } else if ready {
                (200, "application/json", String::from("{\"status\":\"ready\"}"))
            } else {
                (503, "application/json", String::from("{\"status\":\"not ready\"}"))
            }
        }
        ("GET", "/metrics") => {
            let mut m = st.metrics.render_with(&cfg);
            objects::metrics(&cfg, &mut m);
            (200, "text/plain; version=0.0.4", m)
        }
        ("GET", "/config") => (200, "application/json", config_json(&cfg).to_string()),
        ("GET", "/stats") => {
            let history = req
                .query
                .split('&')
                .any(|kv| kv == "history" || kv.strip_prefix("history=").is_some_and(|v| v != "0"));
            let doc = st.stats.json(&st.metrics, &cfg, generation, history);
            (200, "application/json", doc.to_string())
        }
        ("POST", "/reload") => match &st.reload {
            Some(f) => match f() {
                Ok(summary) => (
                    200,
                    "application/json",
                    serde_json::json!({"status": "reloaded", "summary": summary}).to_string(),
                ),
                Err(errors) => (
                    400,
                    "application/json",
                    serde_json::json!({"status": "rejected", "errors": errors, "error": "invalid config; the running config is unchanged"}).to_string(),
                ),
            },
            None => json_err(501, "reload needs a config file (ringgate run -c FILE)"),
        },
        ("POST", "/cache/purge") => match &st.cache_purge {
            Some(log) => {
                let (status, body) = crate::filter::cache::admin_purge(log, &req.body);
                (status, "application/json", body)
            }
            None => json_err(501, "cache purge is not available"),
        },
        (_, "/cache/purge") => json_err(405, "method not allowed (use POST)"),
        (_, p) if p == "/upstreams" || p.starts_with("/upstreams/") => {
            match crate::upstream::admin_request(&cfg, &req.method, p, &req.body) {
                Some((status, body)) => (status, "application/json", body),
                None => json_err(404, "no such admin endpoint"),
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/config" | "/reload" | "/stats" | "/dashboard") => {
            json_err(405, "method not allowed")
        }
        _ => json_err(404, "no such admin endpoint"),
    }
}

/// Compares a presented secret with the expected one in constant time
/// (`subtle`): the SHA-256 digests of both are compared, so neither the
/// position of the first differing byte nor the expected length shows in
/// the timing. (A hand-written XOR fold could be turned back into an early
/// exit by the optimiser, and its length check answered at once.)
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let p: [u8; 32] = Sha256::digest(presented).into();
    let e: [u8; 32] = Sha256::digest(expected).into();
    bool::from(p.ct_eq(&e))
}

/// The running config as JSON, secrets redacted.
pub fn config_json(cfg: &Config) -> serde_json::Value {
    use serde_json::json;
    let s = &cfg.server;
    json!({
        "server": {
            "listen": s.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "workers": s.workers,
            "pin": s.pin,
            "transparent_huge_pages": s.transparent_huge_pages,
            "io": format!("{:?}", s.io),
            "io_uring_entries": s.io_uring_entries,
            "io_uring_mode": format!("{:?}", s.io_uring_mode),
            "drain_timeout_ms": s.drain_timeout.as_millis() as u64,
            "max_header_bytes": s.max_header_bytes,
            "max_headers": s.max_headers,
            "max_uri_bytes": s.max_uri_bytes,
            "max_body_bytes": s.max_body_bytes,
            "header_timeout_ms": s.header_timeout.as_millis() as u64,
            "idle_timeout_ms": s.idle_timeout.as_millis() as u64,
            "max_connections": s.max_connections,
            "buffer_bytes": s.buffer_bytes,
        },
        "admin": cfg.admin.as_ref().map(|a| json!({
            "listen": a.listen.to_string(),
            "token_env": a.token_env,
            "token_file": a.token_file,
            "token": a.token.as_ref().map(|_| "<redacted>"),
        })),
        "upstreams": cfg.upstreams.iter().map(|u| json!({
            "name": u.name,
            "balance": format!("{:?}", u.balance),
            "connect_timeout_ms": u.connect_timeout.as_millis() as u64,
            "request_timeout_ms": u.request_timeout.as_millis() as u64,
        })).collect::<Vec<_>>(),
        "routes": cfg.routes.iter().map(|r| json!({
            "name": r.name,
            "path": r.path,
            "host": r.host,
            "methods": r.methods.map(|m| m.to_string()),
            "upstream": cfg.upstreams[r.upstream].name,
            "filters": r.chain.filters.len(),
            "cache": r.cache.as_ref().map(|c| json!({
                "ttl_s": c.ttl.as_secs(),
                "stale_while_revalidate_s": c.stale_while_revalidate.as_secs(),
                "stale_if_error_s": c.stale_if_error.as_secs(),
                "allow_authorization": c.allow_authorization,
                "allow_set_cookie": c.allow_set_cookie,
                "statuses": c.statuses,
            })),
        })).collect::<Vec<_>>(),
        "log": {
            "access": cfg.log.access.map(|f| format!("{f:?}")),
            "path": cfg.log.path,
            "redact_query": cfg.log.redact_query.iter().map(|n| String::from_utf8_lossy(n)).collect::<Vec<_>>(),
        },
        "auth": cfg.auth.as_ref().map(|_| "<configured; secrets redacted>"),
        "rate_limits": cfg.rate_limits.as_ref().map(|_| "<configured>"),
        "source": objects::source_json(cfg),
        "cache": {
            "max_bytes_per_worker": cfg.cache.max_bytes_per_worker,
            "max_object_bytes": cfg.cache.max_object_bytes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"s3cret-token", b"s3cret-token"));
        assert!(!constant_time_eq(b"s3cret-tokeN", b"s3cret-token"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret-token"));
        assert!(!constant_time_eq(b"s3cret-token-and-more", b"s3cret-token"));
        assert!(!constant_time_eq(b"", b"s3cret-token"));
        assert!(constant_time_eq(b"", b""));
    }
}
