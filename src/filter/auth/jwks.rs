//! The key store workers read, and the control-plane thread that keeps a
//! JWKS fetched from `jwks_url` current.
//!
//! Workers only ever load the current [`KeySet`] from an `ArcSwap` (no
//! lock) and read a generation counter; they never fetch. On a token whose
//! `kid` is unknown a worker *kicks* the refresher: it sets a flag and
//! unparks the thread, at most once per `jwks_min_refresh_s` across all
//! workers (a compare-and-swap on the time of the last kick), and the
//! thread itself refetches at most that often. The thread also refetches
//! every `jwks_refresh_s`, backs off on failures while keeping the last good
//! keys, and exits once the [`KeyStore`] is dropped (config replaced).
//!
//! The fetch is a blocking HTTP/1.1 GET over `std::net::TcpStream`, off
//! every worker; `https://` URLs go through rustls, verifying the server
//! against the system's trust store plus `jwks_ca_file` when given. A
//! chunked answer is decoded by the shared [`ChunkedScanner`], with the
//! same strict framing rules as every chunked body ringgate reads.

use super::keys::{AlgSet, KeySet, VerifyKey, keys_from_jwks};
use crate::http::chunked::ChunkedScanner;
use arc_swap::ArcSwap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest JWKS response accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Connect, read and write timeout of one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `start` waits for the first fetch before workers start.
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(6);

/// The verification keys in force, shared by all workers.
pub struct KeyStore {
    current: ArcSwap<KeySet>,
    generation: AtomicU64,
    refresh_wanted: AtomicBool,
    last_kick_ms: AtomicU64,
    min_gap_ms: u64,
    control: OnceLock<std::thread::Thread>,
    /// Keys from the config itself (secret, PEM, JWKS file, the token
    /// endpoint's public key), kept across JWKS refreshes.
    static_keys: Vec<VerifyKey>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.current.load().len())
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl KeyStore {
    pub(crate) fn new(static_keys: Vec<VerifyKey>, min_gap: Duration) -> KeyStore {
        KeyStore {
            current: ArcSwap::from_pointee(KeySet::new(static_keys.clone())),
            generation: AtomicU64::new(0),
            refresh_wanted: AtomicBool::new(false),
            // No kick counts as "long ago".
            last_kick_ms: AtomicU64::new(0),
            min_gap_ms: min_gap.as_millis() as u64,
            control: OnceLock::new(),
            static_keys,
        }
    }

    /// The keys in force (lock-free).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    /// Bumped each time the key set changes; caches keyed on it drop
    /// tokens validated against an older set.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Asks the refresher for a fetch (unknown `kid`), at most once per
    /// `jwks_min_refresh_s`. Cheap and lock-free; does nothing without a
    /// `jwks_url`.
    pub(crate) fn kick(&self) {
        let Some(t) = self.control.get() else {
            return;
        };
        let now = now_ms();
        let last = self.last_kick_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.min_gap_ms {
            return;
        }
        if self
            .last_kick_ms
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.refresh_wanted.store(true, Ordering::Release);
        t.unpark();
    }

    fn publish(&self, fetched: Vec<VerifyKey>) {
        let mut keys = self.static_keys.clone();
        keys.extend(fetched);
        self.current.store(Arc::new(KeySet::new(keys)));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Where and how often to fetch a JWKS.
#[derive(Debug, Clone)]
pub(crate) struct JwksSource {
    pub url: HttpUrl,
    /// TLS settings for an `https://` URL.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub refresh: Duration,
    pub min_gap: Duration,
    pub allowed: AlgSet,
}

/// Starts the refresher for `store` and waits (bounded) for its first
/// fetch, so workers start with the keys when the JWKS server is up.
pub(crate) fn start(store: &Arc<KeyStore>, src: JwksSource) {
    let weak = Arc::downgrade(store);
    let (tx, rx) = std::sync::mpsc::channel();
    let url = src.url.text.clone();
    match std::thread::Builder::new()
        .name("ringgate-jwks".into())
        .spawn(move || run(weak, src, tx))
    {
        Ok(h) => {
            let _ = store.control.set(h.thread().clone());
            if rx.recv_timeout(FIRST_FETCH_WAIT).is_err() {
                tracing::warn!(url = %url, "JWKS not fetched yet; tokens signed with its keys get 401 until it is");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot start the JWKS refresher"),
    }
}

fn run(weak: Weak<KeyStore>, src: JwksSource, first: std::sync::mpsc::Sender<()>) {
    let mut first = Some(first);
    let mut last_fetch: Option<Instant> = None;
    let mut next_due = Instant::now();
    let mut last_body: Option<[u8; 32]> = None;
    let mut failures: u32 = 0;
    loop {
        let Some(store) = weak.upgrade() else {
            return;
        };
        let now = Instant::now();
        let wanted = store.refresh_wanted.load(Ordering::Acquire);
        let gap_ok = last_fetch.is_none_or(|t| now.duration_since(t) >= src.min_gap);
        if now >= next_due || (wanted && gap_ok) {
            store.refresh_wanted.store(false, Ordering::Release);
            last_fetch = Some(now);
            match fetch(&src.url, src.tls.as_ref()).and_then(|body| {
                let digest = super::consumers::sha256(&body);
                if last_body == Some(digest) {
                    return Ok(None);
                }
                keys_from_jwks(&body, src.allowed).map(|k| Some((digest, k)))
            }) {
                Ok(Some((digest, keys))) => {
                    tracing::info!(url = %src.url.text, keys = keys.len(), "JWKS loaded");
                    last_body = Some(digest);
                    store.publish(keys);
                    failures = 0;
                    next_due = now + src.refresh;
                }
                Ok(None) => {
                    failures = 0;
                    next_due = now + src.refresh;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_secs(1u64 << failures.min(6)).min(src.refresh);
                    tracing::warn!(url = %src.url.text, error = %e, retry_in_s = backoff.as_secs(), "JWKS fetch failed; keeping the last keys");
                    next_due = now + backoff;
                }
            }
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            continue;
        }
        let mut wake = next_due;
        if wanted && let Some(t) = last_fetch {
            wake = wake.min(t + src.min_gap);
        }
        drop(store);
        // Wake at least once a second to notice a dropped store.
        std::thread::park_timeout(
            wake.saturating_duration_since(now)
                .min(Duration::from_secs(1)),
        );
    }
}

/// An `http://` or `https://host[:port]/path` URL.
#[derive(Debug, Clone)]
pub(crate) struct HttpUrl {
    pub text: String,
    /// `https://`.
    pub tls: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

/// Parses an `http://` or `https://` URL.
pub(crate) fn parse_url(s: &str) -> Result<HttpUrl, String> {
    let (rest, tls) = if let Some(r) = s.strip_prefix("http://") {
        (r, false)
    } else if let Some(r) = s.strip_prefix("https://") {
        (r, true)
    } else {
        return Err(format!("{s:?} is not an http:// or https:// URL"));
    };
    let default_port = if tls { 443 } else { 80 };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{s:?} has no usable host"));
    }
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let end = h
            .find(']')
            .ok_or_else(|| format!("{s:?} has an unclosed [IPv6] host"))?;
        let port = match &h[end + 1..] {
            "" => default_port,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("{s:?} has a bad port"))?,
        };
        (h[..end].to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("{s:?} has a bad port"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{s:?} has spaces or control characters in its path"
        ));
    }
    Ok(HttpUrl {
        text: s.to_string(),
        tls,
        host,
        port,
        authority: authority.to_string(),
        path: path.to_string(),
    })
}

/// The TLS client settings for `https://` JWKS URLs: the system's trust
/// store (`/etc/ssl/certs` and friends, or `SSL_CERT_FILE`) plus the
/// certificates of `ca_file` (PEM), if given.
pub(crate) fn tls_config(ca_file: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {path:?}: {e}"))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{path:?} is not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{path:?} holds no certificate"));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("{path:?}: a certificate is not usable: {e}"))?;
        }
    }
    if roots.is_empty() {
        return Err(String::from(
            "no trusted certificate: the system trust store is empty and no CA file is given",
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// GETs the URL; the body of a 200 response.
pub(crate) fn fetch(
    u: &HttpUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Vec<u8>, String> {
    let addrs: Vec<_> = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", u.host))?
        .collect();
    let mut last_err = format!("{} resolves to no address", u.host);
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, FETCH_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = format!("cannot connect to {a}: {e}"),
        }
    }
    let s = stream.ok_or(last_err)?;
    s.set_read_timeout(Some(FETCH_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(FETCH_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    if !u.tls {
        return exchange(s, u);
    }
    let config = tls.ok_or("an https:// URL without TLS settings")?;
    let name = rustls_pki_types::ServerName::try_from(u.host.clone())
        .map_err(|e| format!("{:?} is not a valid TLS server name: {e}", u.host))?;
    let conn = rustls::ClientConnection::new(config.clone(), name)
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    exchange(rustls::StreamOwned::new(conn, s), u)
}

/// Sends the GET on `s` and reads the response body.
fn exchange<S: Read + Write>(mut s: S, u: &HttpUrl) -> Result<Vec<u8>, String> {
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: ringgate\r\nConnection: close\r\n\r\n",
        u.path, u.authority
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut data = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + FETCH_TIMEOUT * 2;
    loop {
        if Instant::now() > deadline {
            return Err("the response took too long".into());
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                data.extend_from_slice(&chunk[..n]);
                if data.len() > MAX_JWKS_BYTES + 64 * 1024 {
                    return Err("the response is larger than 1 MiB".into());
                }
                if let Some(body) = complete_body(&data)? {
                    return Ok(body);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A TLS peer that closes without close_notify: the framing
            // check below decides whether the body is whole.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("cannot read the response: {e}")),
        }
    }
    match complete_body(&data)? {
        Some(b) => Ok(b),
        None => match parse_head(&data)? {
            Some((_, Framing::Close, start)) => Ok(data[start..].to_vec()),
            _ => Err("the response ended early".into()),
        },
    }
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

fn parse_head(data: &[u8]) -> Result<Option<(u16, Framing, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    let mut framing = Framing::Close;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            && h.value.to_ascii_lowercase().ends_with(b"chunked")
        {
            framing = Framing::Chunked;
        } else if h.name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked)
        {
            let len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("bad Content-Length")?;
            framing = Framing::Length(len);
        }
    }
    Ok(Some((code, framing, n)))
}

/// The body once the whole response is in `data`.
fn complete_body(data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let Some((code, framing, start)) = parse_head(data)? else {
        return Ok(None);
    };
    if code != 200 {
        return Err(format!("the server answered {code}"));
    }
    match framing {
        Framing::Length(n) => {
            if n > MAX_JWKS_BYTES {
                return Err("the response is larger than 1 MiB".into());
            }
            Ok((data.len() >= start + n).then(|| data[start..start + n].to_vec()))
        }
        Framing::Chunked => dechunk(&data[start..]),
        Framing::Close => Ok(None),
    }
}

/// Decodes a chunked body with the shared scanner (the same strict
/// framing rules as every other chunked body ringgate reads); `None` while
/// incomplete (the last chunk and the trailer section's end not seen yet).
fn dechunk(d: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut scanner = ChunkedScanner::new();
    let mut out = Vec::new();
    scanner
        .scan(d, |start, end| {
            if out.len() + (end - start) <= MAX_JWKS_BYTES {
                out.extend_from_slice(&d[start..end]);
            }
        })
        .map_err(|e| format!("malformed chunked body: {}", e.0))?;
    if scanner.payload > MAX_JWKS_BYTES as u64 {
        return Err("the response is larger than 1 MiB".into());
    }
    Ok(scanner.is_done().then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://127.0.0.1:8080/jwks.json").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/jwks.json")
        );
        let u = parse_url("http://idp.internal").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        let u = parse_url("http://[::1]:9/k").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        let u = parse_url("https://idp.example/.well-known/jwks.json").unwrap();
        assert_eq!((u.tls, u.port, u.host.as_str()), (true, 443, "idp.example"));
        assert!(!parse_url("http://x/").unwrap().tls);
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://x:notaport/").is_err());
    }

    #[test]
    fn bodies() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(complete_body(r).unwrap().unwrap(), b"{}");
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1;x=y\r\n}\r\n0\r\n\r\n";
        assert_eq!(complete_body(r).unwrap().unwrap(), b"{}");
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n";
        assert!(complete_body(r).unwrap().is_none());
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert!(complete_body(r).is_err());
    }

    #[test]
    fn chunked_bodies() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let body = |chunks: &[u8]| complete_body(&[&head[..], chunks].concat());
        // Trailers are read past; the body is whole after their end.
        assert_eq!(
            body(b"2\r\n{}\r\n0\r\nX-Sum: 1\r\n\r\n").unwrap().unwrap(),
            b"{}"
        );
        assert!(body(b"2\r\n{}\r\n0\r\n").unwrap().is_none());
        // Malformed framing is an error, not a guess.
        assert!(body(b"2\n{}\r\n0\r\n\r\n").is_err(), "bare LF");
        assert!(body(b"2\r\n{}XX0\r\n\r\n").is_err(), "no CRLF after data");
        assert!(body(b"zz\r\n").is_err(), "bad size");
        // More than 1 MiB of payload.
        let big = MAX_JWKS_BYTES + 1;
        let mut chunks = format!("{big:x}\r\n").into_bytes();
        chunks.resize(chunks.len() + big, b' ');
        chunks.extend_from_slice(b"\r\n0\r\n\r\n");
        assert!(body(&chunks).is_err());
    }
}
