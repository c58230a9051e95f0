//! TLS at the edge: listeners that terminate TLS with rustls in front of
//! the same connection loop plain listeners use.
//!
//! Key components:
//! - [`TlsListener`]: one `[[server.tls]]`, compiled (certificates read and
//!   checked, the rustls `ServerConfig` built) with the config, so a
//!   reload that changes a certificate file serves the new one to new
//!   connections and a bad one is a reload error.
//! - [`certs`]: PEM loading, checks, the SNI resolver.
//! - [`stream`]: [`stream::TlsStream`], the monoio adapter over a rustls
//!   connection (what `http::conn::serve` gets instead of a `TcpStream`).
//! - [`acceptor`]: each worker's accept loops for TLS listeners and their
//!   `redirect_from` plain listeners; the handshake with its timeout; plain
//!   HTTP sent to the TLS port.
//! - [`ConnTls`]: what the rest of the request path knows about a TLS
//!   connection (HSTS line, `X-Forwarded-Proto: https`, the verified client
//!   certificate's headers and consumer name).
//!
//! Session resumption: one rotating ticket key set for the process (rustls
//! `Ticketer`, shared across reloads and workers, so a ticket issued by one
//! worker resumes on any other) and a session-id cache per worker (each
//! worker serves its own copy of a listener's `ServerConfig` whose cache
//! only that worker touches: its mutex is never contended).
//!
//! Performance notes: the handshake is the only costly part, and it runs
//! once per connection; the request path pays one branch on `Conn::tls`.

pub mod acceptor;
pub mod certs;
pub mod stream;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// `client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate asked for.
    None,
    /// Asked for; verified when sent; a client without one is served.
    Optional,
    /// A verified client certificate is needed to complete the handshake.
    Required,
}

/// One compiled `[[server.tls]]`.
#[derive(Debug)]
pub struct TlsListener {
    /// Addresses served over TLS.
    pub listen: Vec<SocketAddr>,
    /// Plain addresses that answer 308 to https.
    pub redirect_from: Vec<SocketAddr>,
    /// The rustls settings shared by all workers (each serves a copy with
    /// its own session cache: [`worker_config`]).
    pub server: Arc<rustls::ServerConfig>,
    /// A handshake not complete within this is closed.
    pub handshake_timeout: Duration,
    /// `Strict-Transport-Security: …\r\n`, when configured.
    pub hsts: Option<Box<[u8]>>,
    /// `client_auth`.
    pub client_auth: ClientAuth,
    /// The certificate files, for `/config`.
    pub cert_files: Vec<String>,
    /// Every file the listener was compiled from (certificates, keys,
    /// `client_ca`): `[config] watch` reloads when one changes.
    pub files: Vec<std::path::PathBuf>,
}

/// The TLS files of `config`'s listeners, for `[config] watch`.
pub fn watched_files(config: &crate::config::Config) -> Vec<std::path::PathBuf> {
    config
        .tls
        .iter()
        .flat_map(|l| l.files.iter().cloned())
        .collect()
}

/// Builds a listener's rustls settings: TLS 1.3 and 1.2 (or 1.3 only),
/// rustls's default (safe) cipher suites, ALPN `http/1.1` (what is
/// served; `h2` first when `h2`), client certificates as `client_auth` says, tickets from the
/// process's rotating ticketer.
pub fn server_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    resolver: certs::SniResolver,
    tls13_only: bool,
    client_auth: ClientAuth,
    roots: Option<rustls::RootCertStore>,
    h2: bool,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let b = match (client_auth, roots) {
        (ClientAuth::None, _) | (_, None) => b.with_no_client_auth(),
        (mode, Some(roots)) => {
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if mode == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            b.with_client_cert_verifier(
                v.build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?,
            )
        }
    };
    let mut c = b.with_cert_resolver(Arc::new(resolver));
    c.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    c.ticketer = ticketer()?;
    c.max_early_data_size = 0;
    Ok(Arc::new(c))
}

/// The process's ticket keys: rotated every 6 hours by rustls (a ticket
/// stays valid for the key's lifetime plus one rotation); one set for every
/// listener, worker and config generation.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    static T: OnceLock<Arc<dyn rustls::server::ProducesTickets>> = OnceLock::new();
    if let Some(t) = T.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::ring::Ticketer::new()?;
    Ok(T.get_or_init(|| t).clone())
}

/// Sessions a worker's cache holds per listener (TLS 1.2 session ids and
/// TLS 1.3 stateful resumption when tickets are off).
const SESSION_CACHE: usize = 4096;

thread_local! {
    /// This worker's copies of the listeners' settings, each with its own
    /// session cache, keyed by the listener they copy (dropped listeners,
    /// from older config generations, are pruned on the next miss).
    static WORKER_CONFIGS: RefCell<Vec<(Weak<TlsListener>, Arc<rustls::ServerConfig>)>> =
        const { RefCell::new(Vec::new()) };
}

/// `l`'s settings for the calling worker (its own session cache). The
/// cache carries over a reload: a listener whose certificates changed
/// still resumes sessions of the old ones, as the tickets do.
pub fn worker_config(l: &Arc<TlsListener>) -> Arc<rustls::ServerConfig> {
    WORKER_CONFIGS.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((_, cfg)) = c
            .iter()
            .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(l)))
        {
            return cfg.clone();
        }
        // A new generation: reuse the cache of the listener on the same
        // addresses, if this worker had one.
        let cache = c
            .iter()
            .find(|(w, _)| w.upgrade().is_some_and(|o| o.listen == l.listen))
            .map(|(_, cfg)| cfg.session_storage.clone())
            .unwrap_or_else(|| rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE));
        c.retain(|(w, _)| w.strong_count() > 0);
        let mut cfg = (*l.server).clone();
        cfg.session_storage = cache;
        let cfg = Arc::new(cfg);
        c.push((Arc::downgrade(l), cfg.clone()));
        cfg
    })
}

/// What the request path knows about a TLS connection.
pub struct ConnTls {
    /// The listener's settings when the connection was accepted.
    pub listener: Arc<TlsListener>,
    /// `X-Client-Cert-Subject` and `X-Client-Cert-San` lines for the
    /// backend (empty without a verified client certificate).
    pub upstream_lines: Vec<u8>,
    /// The verified client certificate's subject CN: the consumer
    /// `auth = ["mtls"]` identifies.
    pub client_cn: Option<String>,
    /// The client sent a certificate that verified against `client_ca`.
    pub client_verified: bool,
    /// Negotiated protocol version, e.g. `TLSv1.3`.
    pub version: &'static str,
    /// Negotiated cipher suite, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: &'static str,
    /// Negotiated ALPN protocol.
    pub alpn: Option<&'static str>,
    /// SNI sent by the client.
    pub sni: Option<String>,
    /// The verified client certificate's subject (for the access log).
    pub client_subject: Option<String>,
}

impl ConnTls {
    /// Reads the facts of a finished handshake.
    pub fn new(listener: Arc<TlsListener>, conn: &rustls::Connection) -> Self {
        let mut upstream_lines = Vec::new();
        let mut client_cn = None;
        let mut client_subject = None;
        let client_verified = conn.peer_certificates().is_some_and(|c| !c.is_empty());
        if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
            if let Some((subject, san)) = certs::describe_client(leaf) {
                upstream_lines.extend_from_slice(b"X-Client-Cert-Subject: ");
                upstream_lines.extend_from_slice(subject.as_bytes());
                client_subject = Some(subject.clone());
                upstream_lines.extend_from_slice(b"\r\n");
                if !san.is_empty() {
                    upstream_lines.extend_from_slice(b"X-Client-Cert-San: ");
                    upstream_lines.extend_from_slice(san.as_bytes());
                    upstream_lines.extend_from_slice(b"\r\n");
                }
            }
            client_cn = certs::client_common_name(leaf);
        }
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("-");
        let alpn = match conn.alpn_protocol() {
            Some(b"http/1.1") => Some("http/1.1"),
            Some(b"h2") => Some("h2"),
            Some(_) => Some("other"),
            None => None,
        };
        let sni = match conn {
            rustls::Connection::Server(s) => s.server_name().map(str::to_string),
            rustls::Connection::Client(_) => None,
        };
        ConnTls {
            listener,
            upstream_lines,
            client_cn,
            client_verified,
            version,
            cipher,
            alpn,
            sni,
            client_subject,
        }
    }
}

/// True when `a` and `b` have the same `[[server.tls]]` addresses (a
/// reload may change everything else about them).
pub fn same_addresses(a: &crate::config::Config, b: &crate::config::Config) -> bool {
    let addrs = |c: &crate::config::Config| -> Vec<(Vec<SocketAddr>, Vec<SocketAddr>)> {
        c.tls
            .iter()
            .map(|l| (l.listen.clone(), l.redirect_from.clone()))
            .collect()
    };
    addrs(a) == addrs(b)
}
