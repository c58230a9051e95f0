//! TLS at the edge over real sockets: `[[server.tls]]` listeners with
//! certificates generated here (rcgen), rustls, curl and openssl clients,
//! mock backends on loopback.

mod support;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::*;

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A CA and the files issued under it, in a fresh directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "ringgate-tls-{}-{}-{name}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A server certificate for `names`, written to `{file}.pem` and
    /// `{file}.key`; returns its DER.
    fn server(&self, file: &str, names: &[&str]) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        self.issue(file, p)
    }

    /// A client certificate with this CN (and an email SAN).
    fn client(&self, file: &str, cn: &str) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "Example Clients");
        p.subject_alt_names = vec![SanType::Rfc822Name(
            format!("{cn}@example.com").try_into().unwrap(),
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file, p)
    }

    fn issue(&self, file: &str, p: CertificateParams) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let c = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(self.dir.join(format!("{file}.pem")), c.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        c.der().clone()
    }

    /// `{ cert = "…", key = "…" }` for `file`.
    fn pair(&self, file: &str) -> String {
        format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            self.path(&format!("{file}.pem")),
            self.path(&format!("{file}.key"))
        )
    }

    /// The chain and key of `file`, for a rustls client.
    fn identity(&self, file: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        use rustls::pki_types::pem::PemObject;
        let certs = CertificateDer::pem_file_iter(self.path(&format!("{file}.pem")))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{file}.key"))).unwrap();
        (certs, key)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Gateway with TLS listeners
// ---------------------------------------------------------------------------

/// `cfg` plus `[[server.tls]]` tables (each a list of key lines).
fn tls_toml(cfg: &GatewayConfig, listeners: &[&[String]]) -> String {
    let mut t = cfg.toml();
    for l in listeners {
        t.push_str("\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\n");
        for line in l.iter() {
            t.push_str(line);
            t.push('\n');
        }
    }
    t
}

/// A gateway in front of `up` with one TLS listener with these lines;
/// returns it and the TLS address.
fn start_tls(up: &MockUpstream, lines: &[String]) -> (Gateway, SocketAddr) {
    let gw = Gateway::start(&tls_toml(&GatewayConfig::simple(&[up.addr]), &[lines]));
    let a = gw.handle.tls_addrs()[0];
    (gw, a)
}

// ---------------------------------------------------------------------------
// rustls client
// ---------------------------------------------------------------------------

/// Accepts any server certificate (the tests look at which one was
/// served), checking only the handshake signatures.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Client settings.
struct ClientOpts {
    /// Verify against this CA (else accept any certificate).
    ca: Option<CertificateDer<'static>>,
    alpn: Vec<Vec<u8>>,
    tls12_only: bool,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl Default for ClientOpts {
    fn default() -> Self {
        ClientOpts {
            ca: None,
            alpn: vec![b"http/1.1".to_vec()],
            tls12_only: false,
            identity: None,
        }
    }
}

fn client_config(o: ClientOpts) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if o.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let b = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap();
    let b = match o.ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            b.with_root_certificates(roots)
        }
        None => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider))),
    };
    let mut c = match o.identity {
        Some((certs, key)) => b.with_client_auth_cert(certs, key).unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = o.alpn;
    Arc::new(c)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the handshake (`sni` = `None`: send no SNI).
fn connect(addr: SocketAddr, sni: Option<&str>, cfg: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(READ_TIMEOUT))?;
    let (cfg, name) = match sni {
        Some(n) => (cfg.clone(), n.to_string()),
        None => {
            let mut c = (**cfg).clone();
            c.enable_sni = false;
            (Arc::new(c), String::from("no-sni.invalid"))
        }
    };
    let conn = ClientConnection::new(cfg, ServerName::try_from(name).unwrap())
        .map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// A response read from a TLS stream.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response with a Content-Length body from `r`.
fn read_response(r: &mut impl Read) -> std::io::Result<Resp> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
            let headers = owned_headers(resp.headers);
            let status = resp.code.unwrap();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = buf[n..].to_vec();
            while body.len() < len {
                let k = r.read(&mut byte)?;
                if k == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&byte[..k]);
            }
            body.truncate(len);
            return Ok(Resp {
                status,
                headers,
                body,
            });
        }
        let k = r.read(&mut byte)?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..k]);
    }
}

/// One request on an open TLS connection.
fn request(s: &mut Tls, path: &str, extra: &str) -> std::io::Result<Resp> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: api.example.com\r\n{extra}\r\n").as_bytes())?;
    read_response(s)
}

/// One GET on a new connection; the served leaf certificate too.
fn get(
    addr: SocketAddr,
    sni: Option<&str>,
    cfg: &Arc<ClientConfig>,
    path: &str,
) -> std::io::Result<(Resp, CertificateDer<'static>)> {
    let mut s = connect(addr, sni, cfg)?;
    let leaf = s.conn.peer_certificates().unwrap()[0].clone();
    Ok((request(&mut s, path, "")?, leaf))
}

/// The value of `ringgate_tls_handshakes_total{result="…"}`.
fn handshakes(gw: &Gateway, result: &str) -> u64 {
    let m = gw.handle.metrics.render();
    let key = format!("ringgate_tls_handshakes_total{{result=\"{result}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no {key} in\n{m}"))
}

/// Waits (at most the read timeout) until the handshake counter for
/// `result` reaches `n`: a worker counts a handshake right after it
/// closed the connection, so a client can see the close first.
fn wait_handshakes(gw: &Gateway, result: &str, n: u64) -> bool {
    let end = std::time::Instant::now() + READ_TIMEOUT;
    while std::time::Instant::now() < end {
        if handshakes(gw, result) >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Whether the server closes `s` (EOF or reset) within the read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

// ---------------------------------------------------------------------------
// Certificate choice, ALPN, versions
// ---------------------------------------------------------------------------

#[test]
fn sni_picks_the_exact_name_then_a_wildcard_then_the_default_certificate() {
    let pki = Pki::new("sni");
    let api = pki.server("api", &["api.example.com"]);
    let wild = pki.server("wild", &["*.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let (_gw, addr) = start_tls(
        &up,
        &[
            format!("certs = [{}, {}]", pki.pair("api"), pki.pair("wild")),
            format!("default_cert = \"{}\"", pki.path("api.pem")),
        ],
    );
    let any = client_config(ClientOpts::default());
    let (r, leaf) = get(addr, Some("api.example.com"), &any, "/a").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(leaf, api, "the exact name's certificate");
    let (_, leaf) = get(addr, Some("www.example.com"), &any, "/a").unwrap();
    assert_eq!(leaf, wild, "the wildcard covers www");
    let (_, leaf) = get(addr, Some("a.b.example.com"), &any, "/a").unwrap();
    assert_eq!(leaf, api, "two labels: not the wildcard, the default");
    let (_, leaf) = get(addr, Some("other.org"), &any, "/a").unwrap();
    assert_eq!(leaf, api, "unknown name: the default");
    let (_, leaf) = get(addr, None, &any, "/a").unwrap();
    assert_eq!(leaf, api, "no SNI: the default");
    // A client verifying against the CA accepts both names.
    let verified = client_config(ClientOpts {
        ca: Some(pki.ca_der()),
        ..Default::default()
    });
    assert_eq!(
        get(addr, Some("shop.example.com"), &verified, "/a")
            .unwrap()
            .0
            .status,
        200
    );
}

#[test]
fn without_a_default_certificate_unknown_names_and_no_sni_are_refused() {
    let pki = Pki::new("nodefault");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let (gw, addr) = start_tls(&up, &[format!("certs = [{}]", pki.pair("api"))]);
    let any = client_config(ClientOpts::default());
    let failed = handshakes(&gw, "failed");
    assert!(get(addr, Some("api.example.com"), &any, "/").is_ok());
    assert!(get(addr, Some("other.org"), &any, "/").is_err());
    assert!(get(addr, None, &any, "/").is_err());
    assert_eq!(up.hits(), 1, "only the known name reached the backend");
    assert!(wait_handshakes(&gw, "failed", failed + 2));
}

#[test]
fn alpn_offers_h2_then_http11_and_only_http11_with_http2_disabled() {
    let pki = Pki::new("alpn");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let (_gw, addr) = start_tls(&up, &[format!("certs = [{}]", pki.pair("api"))]);
    let both = client_config(ClientOpts {
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ..Default::default()
    });
    let s = connect(addr, Some("api.example.com"), &both).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"h2"[..]));
    let h11 = client_config(ClientOpts {
        alpn: vec![b"http/1.1".to_vec()],
        ..Default::default()
    });
    let mut s = connect(addr, Some("api.example.com"), &h11).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(request(&mut s, "/", "").unwrap().status, 200);
    let none = client_config(ClientOpts {
        alpn: Vec::new(),
        ..Default::default()
    });
    let mut s = connect(addr, Some("api.example.com"), &none).unwrap();
    assert_eq!(s.conn.alpn_protocol(), None);
    assert_eq!(request(&mut s, "/", "").unwrap().status, 200);

    // [server.http2] enabled = false: HTTP/1.1 only, h2 is not negotiated.
    let cfg = GatewayConfig::simple(&[up.addr]);
    let mut toml = tls_toml(&cfg, &[&[format!("certs = [{}]", pki.pair("api"))]]);
    toml.push_str("\n[server.http2]\nenabled = false\n");
    let gw = Gateway::start(&toml);
    let addr = gw.handle.tls_addrs()[0];
    let s = connect(addr, Some("api.example.com"), &both).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let h2_only = client_config(ClientOpts {
        alpn: vec![b"h2".to_vec()],
        ..Default::default()
    });
    assert!(
        connect(addr, Some("api.example.com"), &h2_only).is_err(),
        "h2 is off, so not negotiated"
    );
}

#[test]
fn tls12_and_13_by_default_and_13_only_by_config() {
    let pki = Pki::new("versions");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let cfg = GatewayConfig::simple(&[up.addr]);
    let gw = Gateway::start(&tls_toml(
        &cfg,
        &[
            &[format!("certs = [{}]", pki.pair("api"))],
            &[
                format!("certs = [{}]", pki.pair("api")),
                String::from("min_version = \"1.3\""),
            ],
        ],
    ));
    let (default, only13) = (gw.handle.tls_addrs()[0], gw.handle.tls_addrs()[1]);
    let v12 = client_config(ClientOpts {
        tls12_only: true,
        ..Default::default()
    });
    let any = client_config(ClientOpts::default());
    let s = connect(default, Some("api.example.com"), &v12).unwrap();
    assert_eq!(
        s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let s = connect(default, Some("api.example.com"), &any).unwrap();
    assert_eq!(
        s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert!(connect(only13, Some("api.example.com"), &v12).is_err());
    let mut s = connect(only13, Some("api.example.com"), &any).unwrap();
    assert_eq!(request(&mut s, "/", "").unwrap().status, 200);
}

// ---------------------------------------------------------------------------
// What the backend sees; keep-alive; tunnels
// ---------------------------------------------------------------------------

#[test]
fn the_backend_sees_https_and_keep_alive_connections_serve_many_requests() {
    let pki = Pki::new("proto");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "hello").start();
    let (_gw, addr) = start_tls(&up, &[format!("certs = [{}]", pki.pair("api"))]);
    let any = client_config(ClientOpts::default());
    let mut s = connect(addr, Some("api.example.com"), &any).unwrap();
    for i in 0..20 {
        let r = request(&mut s, &format!("/k/{i}"), "Forwarded: for=1.2.3.4\r\n").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello");
    }
    let req = up.last();
    assert_eq!(req.header("x-forwarded-proto"), Some("https"));
    assert!(
        req.header("forwarded")
            .is_some_and(|f| f.ends_with("proto=https")),
        "{}",
        req.head_str()
    );
    assert_eq!(up.hits(), 20);
    // A large body crosses many TLS records both ways.
    let big = "x".repeat(200_000);
    let up2 = MockUpstream::builder().respond(200, &big).start();
    let (_gw2, addr2) = start_tls(&up2, &[format!("certs = [{}]", pki.pair("api"))]);
    let mut s = connect(addr2, Some("api.example.com"), &any).unwrap();
    let r = request(&mut s, "/big", "").unwrap();
    assert_eq!(r.body.len(), big.len());
}

#[test]
fn websocket_upgrades_tunnel_through_tls() {
    let pki = Pki::new("ws");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().upgrade_echo().start();
    let (_gw, addr) = start_tls(&up, &[format!("certs = [{}]", pki.pair("api"))]);
    let any = client_config(ClientOpts::default());
    let mut s = connect(addr, Some("api.example.com"), &any).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: api.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.body.len(), 0);
    let big = vec![b'z'; 100_000];
    s.write_all(b"ping-1").unwrap();
    let mut got = [0u8; 6];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping-1");
    s.write_all(&big).unwrap();
    let mut back = vec![0u8; big.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, big);
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[test]
fn plain_http_on_the_tls_port_gets_400_like_nginx() {
    let pki = Pki::new("plain");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let (gw, addr) = start_tls(&up, &[format!("certs = [{}]", pki.pair("api"))]);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let _ = c.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(
        text.contains("plain HTTP request was sent to HTTPS port"),
        "{text}"
    );
    assert!(text.to_ascii_lowercase().contains("connection: close"));
    assert_eq!(up.hits(), 0);
    assert!(wait_handshakes(&gw, "plain_http", 1));
}

#[test]
fn stalled_garbage_and_truncated_handshakes_are_closed_within_the_timeout() {
    let pki = Pki::new("stall");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let (gw, addr) = start_tls(
        &up,
        &[
            format!("certs = [{}]", pki.pair("api")),
            String::from("handshake_timeout_ms = 300"),
        ],
    );
    let timeouts = handshakes(&gw, "timeout");
    let failed = handshakes(&gw, "failed");
    // Says nothing.
    let mut silent = TcpStream::connect(addr).unwrap();
    // The first bytes of a ClientHello record, then nothing.
    let mut truncated = TcpStream::connect(addr).unwrap();
    truncated
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // Not TLS, not HTTP.
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage
        .write_all(&[0x00, 0xff, 0x13, 0x37, 0x99, 0x01, 0x02])
        .unwrap();
    assert!(closed_by_server(&mut silent), "a silent client is closed");
    assert!(
        closed_by_server(&mut truncated),
        "a truncated hello is closed"
    );
    assert!(closed_by_server(&mut garbage), "garbage is closed");
    assert!(wait_handshakes(&gw, "timeout", timeouts + 2));
    assert!(wait_handshakes(&gw, "failed", failed + 1));
    // The listener still serves.
    let any = client_config(ClientOpts::default());
    assert_eq!(
        get(addr, Some("api.example.com"), &any, "/")
            .unwrap()
            .0
            .status,
        200
    );
    assert_eq!(up.hits(), 1);
}

// ---------------------------------------------------------------------------
// Outside clients
// ---------------------------------------------------------------------------

#[test]
fn curl_trusts_the_gateway_with_the_ca_file() {
    let pki = Pki::new("curl");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "from-backend").start();
    let (_gw, addr) = start_tls(&up, &[format!("certs = [{}]", pki.pair("api"))]);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &pki.path("ca.pem"),
            "--resolve",
            &format!("api.example.com:{}:127.0.0.1", addr.port()),
            "-w",
            "\n%{http_code} %{http_version} %{scheme}",
            &format!("https://api.example.com:{}/hello", addr.port()),
        ])
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // curl offers h2 first: the answer comes over HTTP/2.
    assert!(text.starts_with("from-backend\n200 2 "), "{text}");
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));
}

/// Over TLS too, a client still sending a body refused on its head (413:
/// `Content-Length` over `max_body_bytes`) reads the answer and a
/// close_notify, and the gateway keeps taking (and dropping) what it sends
/// until it closes, instead of closing with it unread (a reset that cut the
/// client's upload off).
#[test]
fn a_refused_upload_over_tls_gets_the_413_and_the_rest_is_taken() {
    let pki = Pki::new("linger");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let cfg = GatewayConfig::simple(&[up.addr]).server("max_body_bytes = 1000");
    let gw = Gateway::start(&tls_toml(
        &cfg,
        &[&[format!("certs = [{}]", pki.pair("api"))]],
    ));
    let addr = gw.handle.tls_addrs()[0];
    let mut s = connect(
        addr,
        Some("api.example.com"),
        &client_config(ClientOpts::default()),
    )
    .unwrap();
    // The head and 1 MiB of an 8 MiB body, encrypted up front, so another
    // thread can write the records while this one reads.
    s.conn.set_buffer_limit(None);
    let mut plain =
        b"POST /up HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 8388608\r\n\r\n".to_vec();
    plain.extend(std::iter::repeat_n(b'u', 1 << 20));
    s.conn.writer().write_all(&plain).unwrap();
    let mut wire = Vec::new();
    while s.conn.wants_write() {
        s.conn.write_tls(&mut wire).unwrap();
    }
    let total = wire.len();
    let writer = write_behind(s.sock.try_clone().unwrap(), wire);
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(end.is_ok(), "{end:?} after {text:?}");
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    assert_eq!(
        writer.join().unwrap(),
        total,
        "the gateway stopped taking the client's bytes before it closed"
    );
    assert_eq!(up.hits(), 0);
}

#[test]
fn openssl_s_client_sees_the_certificate_alpn_and_resumes() {
    let pki = Pki::new("openssl");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let (_gw, addr) = start_tls(&up, &[format!("certs = [{}]", pki.pair("api"))]);
    let sess = pki.path("session.pem");
    let run = |extra: &[&str]| {
        let mut child = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "api.example.com",
                "-alpn",
                "http/1.1",
                "-CAfile",
                &pki.path("ca.pem"),
                "-verify_return_error",
            ])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl is installed");
        // The request, then keep stdin open until the answer (and the
        // session tickets that come with it) arrived.
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"GET / HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run(&["-sess_out", &sess]);
    assert!(
        first.contains("CN = api.example.com") || first.contains("CN=api.example.com"),
        "{first}"
    );
    assert!(first.contains("ALPN protocol: http/1.1"), "{first}");
    assert!(first.contains("Verify return code: 0 (ok)"), "{first}");
    assert!(first.contains("HTTP/1.1 200"), "{first}");
    let second = run(&["-sess_in", &sess]);
    assert!(second.contains("Reused, TLSv1.3"), "{second}");
    assert!(second.contains("HTTP/1.1 200"), "{second}");
}

/// `openssl s_time -reuse` resumed nothing: on a connection the gateway
/// closed (an HTTP/1.0 request), the close came without a close_notify,
/// and OpenSSL does not resume a session whose connection ended
/// truncated.
#[test]
fn openssl_resumes_sessions_of_connections_the_gateway_closed() {
    let pki = Pki::new("s_time");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    // s_time sends no SNI: the default certificate serves it.
    let (gw, addr) = start_tls(
        &up,
        &[
            format!("certs = [{}]", pki.pair("api")),
            format!("default_cert = \"{}\"", pki.path("api.pem")),
        ],
    );
    for version in ["-tls1_2", "-tls1_3"] {
        let resumed = handshakes(&gw, "resumed");
        let out = std::process::Command::new("openssl")
            .args(["s_time", "-connect", &addr.to_string(), "-reuse", version])
            .args(["-time", "1", "-www", "/"])
            .output()
            .expect("openssl is installed");
        let text = String::from_utf8_lossy(&out.stdout);
        let n: u64 = text
            .lines()
            .find(|l| l.contains("connections in") && l.contains("real seconds"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!("no count in {text}{}", String::from_utf8_lossy(&out.stderr))
            });
        assert!(n >= 10, "{version}: only {n} connections: {text}");
        // Every connection after the first resumed (other tests add to the
        // process-wide counter, never take from it).
        assert!(
            handshakes(&gw, "resumed") >= resumed + n - 1,
            "{version}: {n} connections, resumed {} -> {}",
            resumed,
            handshakes(&gw, "resumed")
        );
    }
}

#[test]
fn rustls_clients_resume_over_tls13_tickets_and_tls12() {
    let pki = Pki::new("resume");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let (gw, addr) = start_tls(&up, &[format!("certs = [{}]", pki.pair("api"))]);
    let resumed = handshakes(&gw, "resumed");
    for tls12_only in [false, true] {
        let cfg = client_config(ClientOpts {
            ca: Some(pki.ca_der()),
            tls12_only,
            ..Default::default()
        });
        let mut kinds = Vec::new();
        for _ in 0..4 {
            let mut s = connect(addr, Some("api.example.com"), &cfg).unwrap();
            // Reading the answer takes in the TLS 1.3 tickets too.
            assert_eq!(request(&mut s, "/", "").unwrap().status, 200);
            kinds.push(s.conn.handshake_kind());
        }
        assert_eq!(kinds[0], Some(rustls::HandshakeKind::Full));
        for k in &kinds[1..] {
            assert_eq!(
                *k,
                Some(rustls::HandshakeKind::Resumed),
                "tls12_only={tls12_only}: {kinds:?}"
            );
        }
    }
    assert!(handshakes(&gw, "resumed") >= resumed + 6);
}

// ---------------------------------------------------------------------------
// Config errors
// ---------------------------------------------------------------------------

fn config_errors(lines: &[String]) -> String {
    let cfg = GatewayConfig::simple(&["127.0.0.1:9".parse().unwrap()]);
    match ringgate::config::Config::parse(&tls_toml(&cfg, &[lines])) {
        Ok(_) => panic!("accepted: {lines:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_certificates_and_settings_are_config_errors_naming_key_file_and_fix() {
    let pki = Pki::new("errors");
    pki.server("api", &["api.example.com"]);
    pki.server("other", &["other.example.com"]);
    // Unreadable file.
    let e = config_errors(&[format!(
        "certs = [{{ cert = \"{}\", key = \"{}\" }}]",
        pki.path("missing.pem"),
        pki.path("api.key")
    )]);
    assert!(e.contains("server.tls[0].certs[0].cert"), "{e}");
    assert!(e.contains("missing.pem"), "{e}");
    assert!(e.contains("fix:"), "{e}");
    // A key that is not the certificate's.
    let e = config_errors(&[format!(
        "certs = [{{ cert = \"{}\", key = \"{}\" }}]",
        pki.path("api.pem"),
        pki.path("other.key")
    )]);
    assert!(e.contains("server.tls[0].certs[0].key"), "{e}");
    assert!(e.contains("does not match"), "{e}");
    assert!(e.contains("other.key") && e.contains("api.pem"), "{e}");
    // A key file given as the certificate, and a certificate as the key.
    let e = config_errors(&[format!(
        "certs = [{{ cert = \"{}\", key = \"{}\" }}]",
        pki.path("api.key"),
        pki.path("api.pem")
    )]);
    assert!(e.contains("holds no PEM certificate"), "{e}");
    // An expired certificate.
    let mut p = CertificateParams::new(vec![String::from("old.example.com")]).unwrap();
    p.not_before = rcgen::date_time_ymd(2019, 1, 1);
    p.not_after = rcgen::date_time_ymd(2020, 1, 1);
    pki.issue("old", p);
    let e = config_errors(&[format!("certs = [{}]", pki.pair("old"))]);
    assert!(e.contains("expired"), "{e}");
    assert!(e.contains("old.pem"), "{e}");
    // default_cert not among the certificates; unknown values.
    let e = config_errors(&[
        format!("certs = [{}]", pki.pair("api")),
        format!("default_cert = \"{}\"", pki.path("other.pem")),
        String::from("client_auth = \"sometimes\""),
        String::from("min_version = \"1.1\""),
    ]);
    assert!(e.contains("server.tls[0].default_cert"), "{e}");
    assert!(e.contains("server.tls[0].client_auth"), "{e}");
    assert!(e.contains("server.tls[0].min_version"), "{e}");
    // Client certificates without a CA to verify them.
    let e = config_errors(&[
        format!("certs = [{}]", pki.pair("api")),
        String::from("client_auth = \"required\""),
    ]);
    assert!(e.contains("server.tls[0].client_ca"), "{e}");
    // An unknown key is named.
    let e = config_errors(&[
        format!("certs = [{}]", pki.pair("api")),
        String::from("ciphers = \"ALL\""),
    ]);
    assert!(e.contains("ciphers"), "{e}");
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

/// Starts a gateway from a config file (so it can reload).
fn start_file(path: &Path) -> ringgate::runtime::ServerHandle {
    let cfg = ringgate::config::Config::load(path).unwrap();
    ringgate::runtime::Server::start_file(cfg, path.to_path_buf(), Default::default()).unwrap()
}

#[test]
fn a_reloaded_certificate_serves_new_connections_without_failing_a_request() {
    let pki = Pki::new("reload");
    let first = pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let text = tls_toml(
        &GatewayConfig::simple(&[up.addr]),
        &[&[format!("certs = [{}]", pki.pair("api"))]],
    );
    let file = pki.path("gw.toml");
    std::fs::write(&file, &text).unwrap();
    let mut h = start_file(Path::new(&file));
    let addr = h.tls_addrs()[0];
    let verified = client_config(ClientOpts {
        ca: Some(pki.ca_der()),
        ..Default::default()
    });
    // Load: keep-alive connections and new connections, all along.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for t in 0..4 {
        let (stop, ok, cfg) = (stop.clone(), ok.clone(), verified.clone());
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let mut s = connect(addr, Some("api.example.com"), &cfg).map_err(|e| e.to_string())?;
            while !stop.load(Ordering::Relaxed) {
                if t % 2 == 1 {
                    s = connect(addr, Some("api.example.com"), &cfg).map_err(|e| e.to_string())?;
                }
                let r = request(&mut s, "/load", "").map_err(|e| e.to_string())?;
                if r.status != 200 {
                    return Err(format!("status {}", r.status));
                }
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    while ok.load(Ordering::Relaxed) < 50 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // A new certificate (new key) in the same files.
    let second = pki.server("api", &["api.example.com"]);
    assert_ne!(first, second);
    h.reload().expect("reload with a new certificate");
    let before = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < before + 50 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // A fresh client (a resumed session would show the certificate of
    // the session's full handshake).
    let fresh = || {
        client_config(ClientOpts {
            ca: Some(pki.ca_der()),
            ..Default::default()
        })
    };
    let (_, leaf) = get(addr, Some("api.example.com"), &fresh(), "/").unwrap();
    assert_eq!(leaf, second, "new connections get the new certificate");
    // A bad certificate: the reload is refused, naming the file; the
    // second certificate keeps serving.
    std::fs::write(pki.path("api.pem"), "not a certificate").unwrap();
    let e = h
        .reload()
        .expect_err("a bad certificate is refused")
        .join("\n");
    assert!(e.contains("api.pem"), "{e}");
    assert!(e.contains("server.tls[0].certs[0].cert"), "{e}");
    let (_, leaf) = get(addr, Some("api.example.com"), &fresh(), "/").unwrap();
    assert_eq!(leaf, second, "the running certificate keeps serving");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .unwrap()
            .expect("no request failed during the reloads");
    }
    h.shutdown();
}

// ---------------------------------------------------------------------------
// Redirect and HSTS
// ---------------------------------------------------------------------------

#[test]
fn redirect_from_answers_308_to_https_and_hsts_is_sent_when_set() {
    let pki = Pki::new("redirect");
    pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let (gw, addr) = start_tls(
        &up,
        &[
            format!("certs = [{}]", pki.pair("api")),
            String::from("redirect_from = \"127.0.0.1:0\""),
            String::from("hsts_max_age_s = 31536000"),
        ],
    );
    let plain = gw.handle.tls_addrs()[1];
    let mut c = TcpStream::connect(plain).unwrap();
    c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    c.write_all(b"GET /a/b?x=1 HTTP/1.1\r\nHost: api.example.com:8080\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c).unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://api.example.com:{}/a/b?x=1", addr.port()).as_str())
    );
    // No Host: 400.
    let mut c = TcpStream::connect(plain).unwrap();
    c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c).unwrap().status, 400);
    assert_eq!(up.hits(), 0, "redirects never reach the backend");
    let any = client_config(ClientOpts::default());
    let (r, _) = get(addr, Some("api.example.com"), &any, "/").unwrap();
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    // Without hsts_max_age_s, no header.
    let (_gw2, addr2) = start_tls(&up, &[format!("certs = [{}]", pki.pair("api"))]);
    let (r, _) = get(addr2, Some("api.example.com"), &any, "/").unwrap();
    assert_eq!(r.header("strict-transport-security"), None);
}

// ---------------------------------------------------------------------------
// mTLS
// ---------------------------------------------------------------------------

#[test]
fn client_certificates_required_optional_absent_and_from_another_ca() {
    let pki = Pki::new("mtls");
    pki.server("api", &["api.example.com"]);
    pki.client("alice", "alice");
    let other = Pki::new("mtls-other");
    other.client("mallory", "mallory");
    let up = MockUpstream::builder().respond(200, "ok").start();
    let cfg = GatewayConfig::simple(&[up.addr]);
    let gw = Gateway::start(&tls_toml(
        &cfg,
        &[
            &[
                format!("certs = [{}]", pki.pair("api")),
                String::from("client_auth = \"required\""),
                format!("client_ca = \"{}\"", pki.path("ca.pem")),
            ],
            &[
                format!("certs = [{}]", pki.pair("api")),
                String::from("client_auth = \"optional\""),
                format!("client_ca = \"{}\"", pki.path("ca.pem")),
            ],
        ],
    ));
    let (required, optional) = (gw.handle.tls_addrs()[0], gw.handle.tls_addrs()[1]);
    let with = |p: &Pki, who: &str| {
        client_config(ClientOpts {
            ca: Some(pki.ca_der()),
            identity: Some(p.identity(who)),
            ..Default::default()
        })
    };
    let alice = with(&pki, "alice");
    let mallory = with(&other, "mallory");
    let nobody = client_config(ClientOpts {
        ca: Some(pki.ca_der()),
        ..Default::default()
    });
    // Required: alice gets through with her identity; a client-sent
    // subject header is replaced.
    let mut s = connect(required, Some("api.example.com"), &alice).unwrap();
    let r = request(
        &mut s,
        "/",
        "X-Client-Cert-Subject: CN=admin\r\nX-Client-Cert-San: DNS:evil\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let req = up.last();
    assert_eq!(
        req.header_all("x-client-cert-subject").len(),
        1,
        "{}",
        req.head_str()
    );
    let subject = req.header("x-client-cert-subject").unwrap();
    assert!(subject.contains("CN=alice"), "{subject}");
    assert!(subject.contains("O=Example Clients"), "{subject}");
    assert_eq!(
        req.header("x-client-cert-san"),
        Some("email:alice@example.com")
    );
    let hits = up.hits();
    // Required: no certificate, or one from another CA, fails the
    // handshake (TLS 1.3 reports it on the first read).
    for cfg in [&nobody, &mallory] {
        let r = connect(required, Some("api.example.com"), cfg)
            .and_then(|mut s| request(&mut s, "/", ""));
        assert!(r.is_err(), "{r:?}");
    }
    assert_eq!(up.hits(), hits, "refused clients never reach the backend");
    // Optional: no certificate is served without the headers; a client-sent
    // one is stripped; a certificate from another CA is refused.
    let mut s = connect(optional, Some("api.example.com"), &nobody).unwrap();
    let r = request(&mut s, "/", "X-Client-Cert-Subject: CN=admin\r\n").unwrap();
    assert_eq!(r.status, 200);
    let req = up.last();
    assert_eq!(
        req.header("x-client-cert-subject"),
        None,
        "{}",
        req.head_str()
    );
    let mut s = connect(optional, Some("api.example.com"), &alice).unwrap();
    assert_eq!(request(&mut s, "/", "").unwrap().status, 200);
    assert!(
        up.last()
            .header("x-client-cert-subject")
            .unwrap()
            .contains("CN=alice")
    );
    let r = connect(optional, Some("api.example.com"), &mallory)
        .and_then(|mut s| request(&mut s, "/", ""));
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn auth_mtls_identifies_the_caller_by_certificate_and_consumers() {
    let pki = Pki::new("mtls-auth");
    pki.server("api", &["api.example.com"]);
    pki.client("alice", "alice");
    pki.client("bob", "bob");
    let up = MockUpstream::builder().respond(200, "ok").start();
    let cfg = GatewayConfig::new()
        .upstream("up", &[up.addr], &[])
        .route(
            "/admin/{*rest}",
            "up",
            &["auth = [\"mtls\"]", "roles = [\"admin\"]"],
        )
        .route("/{*rest}", "up", &["auth = [\"mtls\"]"]);
    let mut text = tls_toml(
        &cfg,
        &[&[
            format!("certs = [{}]", pki.pair("api")),
            String::from("client_auth = \"optional\""),
            format!("client_ca = \"{}\"", pki.path("ca.pem")),
        ]],
    );
    text.push_str("\n[[consumers]]\nid = \"alice\"\nroles = [\"admin\"]\ntier = \"gold\"\n");
    let gw = Gateway::start(&text);
    let addr = gw.handle.tls_addrs()[0];
    let with = |who: &str| {
        client_config(ClientOpts {
            ca: Some(pki.ca_der()),
            identity: Some(pki.identity(who)),
            ..Default::default()
        })
    };
    let nobody = client_config(ClientOpts {
        ca: Some(pki.ca_der()),
        ..Default::default()
    });
    // alice is a consumer with the admin role.
    let mut s = connect(addr, Some("api.example.com"), &with("alice")).unwrap();
    let r = request(&mut s, "/admin/x", "X-User-Id: mallory\r\n").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let req = up.last();
    assert_eq!(
        req.header_all("x-user-id"),
        vec!["alice"],
        "{}",
        req.head_str()
    );
    assert_eq!(req.header("x-auth-method"), Some("mtls"));
    assert_eq!(req.header("x-consumer-id"), Some("alice"));
    assert_eq!(req.header("x-consumer-tier"), Some("gold"));
    // bob is identified but has no role: 200 on the open route, 403 on
    // the admin one.
    let mut s = connect(addr, Some("api.example.com"), &with("bob")).unwrap();
    assert_eq!(request(&mut s, "/x", "").unwrap().status, 200);
    assert_eq!(up.last().header("x-user-id"), Some("bob"));
    assert_eq!(request(&mut s, "/admin/x", "").unwrap().status, 403);
    // No certificate, or plain HTTP: 401.
    let hits = up.hits();
    let mut s = connect(addr, Some("api.example.com"), &nobody).unwrap();
    assert_eq!(request(&mut s, "/x", "").unwrap().status, 401);
    assert_eq!(gw.get("/x").status, 401);
    assert_eq!(up.hits(), hits);
    let m = gw.handle.metrics.render();
    assert!(
        m.lines()
            .any(|l| l.starts_with("ringgate_auth_decisions_total")
                && l.contains("method=\"mtls\"")
                && l.contains("decision=\"allowed\"")),
        "{m}"
    );
}

// ---------------------------------------------------------------------------
// Upstreams over TLS
// ---------------------------------------------------------------------------

/// A TLS backend on std threads: answers every request 200 "ok" with
/// keep-alive; after each answer it updates its traffic keys (a TLS 1.3
/// KeyUpdate arrives on the idle pooled connection, as session tickets
/// do).
struct TlsBackend {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    /// CN of the client certificate of the last connection that sent one.
    client_cn: Arc<std::sync::Mutex<Option<String>>>,
}

fn tls_backend(pki: &Pki, file: &str, client_ca: Option<&Pki>) -> TlsBackend {
    let (certs, key) = pki.identity(file);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.ca_der()).unwrap();
            b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
        None => b.with_no_client_auth(),
    };
    let cfg = Arc::new(b.with_single_cert(certs, key).unwrap());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client_cn = Arc::new(std::sync::Mutex::new(None));
    let (c2, r2, cn2) = (conns.clone(), requests.clone(), client_cn.clone());
    std::thread::spawn(move || {
        for sock in l.incoming() {
            let Ok(sock) = sock else { return };
            let (cfg, conns, requests, client_cn) =
                (cfg.clone(), c2.clone(), r2.clone(), cn2.clone());
            std::thread::spawn(move || {
                conns.fetch_add(1, Ordering::SeqCst);
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut s = StreamOwned::new(conn, sock);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                        buf.drain(..end + 4);
                        if let Some(c) = s.conn.peer_certificates().and_then(|c| c.first()) {
                            let (_, x) = x509_parser::parse_x509_certificate(c).unwrap();
                            *client_cn.lock().unwrap() = x
                                .subject()
                                .iter_common_name()
                                .next()
                                .and_then(|n| n.as_str().ok())
                                .map(str::to_string);
                        }
                        requests.lock().unwrap().push(head);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                        let _ = s.flush();
                        let _ = s.conn.refresh_traffic_keys();
                        let _ = s.conn.complete_io(&mut s.sock);
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    TlsBackend {
        addr,
        conns,
        requests,
        client_cn,
    }
}

#[test]
fn upstream_tls_with_the_right_ca_is_pooled_and_the_wrong_ca_or_name_gets_502() {
    let pki = Pki::new("up-tls");
    pki.server("orders", &["orders.internal"]);
    let other = Pki::new("up-tls-other");
    let backend = tls_backend(&pki, "orders", None);
    let cfg = GatewayConfig::new()
        .upstream(
            "good",
            &[backend.addr],
            &[
                "tls = true",
                &format!("tls_ca_file = \"{}\"", pki.path("ca.pem")),
                "tls_server_name = \"orders.internal\"",
            ],
        )
        .upstream(
            "wrong_ca",
            &[backend.addr],
            &[
                "tls = true",
                &format!("tls_ca_file = \"{}\"", other.path("ca.pem")),
                "tls_server_name = \"orders.internal\"",
            ],
        )
        .upstream(
            "wrong_name",
            &[backend.addr],
            &[
                "tls = true",
                &format!("tls_ca_file = \"{}\"", pki.path("ca.pem")),
                "tls_server_name = \"billing.internal\"",
            ],
        )
        .route("/good/{*rest}", "good", &[])
        .route("/ca/{*rest}", "wrong_ca", &[])
        .route("/name/{*rest}", "wrong_name", &[])
        .server("workers = 1");
    let gw = Gateway::start(&cfg.toml().replace("workers = 2\n", ""));
    let mut c = gw.client();
    for i in 0..5 {
        let r = c.get(&format!("/good/{i}"));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.text(), "ok");
        // The backend's KeyUpdate reaches the idle pooled connection.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        backend.conns.load(Ordering::SeqCst),
        1,
        "one pooled TLS connection carried every request"
    );
    assert_eq!(backend.requests.lock().unwrap().len(), 5);
    for path in ["/ca/x", "/name/x"] {
        let r = gw.get(path);
        assert_eq!(r.status, 502, "{path}: {r:?}");
        assert!(
            r.text().contains("TLS handshake with upstream failed"),
            "{}",
            r.text()
        );
    }
    assert_eq!(
        backend.requests.lock().unwrap().len(),
        5,
        "no request went to an unverified backend"
    );
}

#[test]
fn upstream_tls_offers_the_client_certificate_and_health_checks_go_over_tls() {
    let pki = Pki::new("up-mtls");
    pki.server("orders", &["orders.internal"]);
    pki.client("gw", "ringgate-gw");
    let backend = tls_backend(&pki, "orders", Some(&pki));
    let with_cert = [
        String::from("tls = true"),
        format!("tls_ca_file = \"{}\"", pki.path("ca.pem")),
        String::from("tls_server_name = \"orders.internal\""),
        format!("tls_client_cert = \"{}\"", pki.path("gw.pem")),
        format!("tls_client_key = \"{}\"", pki.path("gw.key")),
    ];
    let refs: Vec<&str> = with_cert.iter().map(String::as_str).collect();
    let mut text = GatewayConfig::new()
        .upstream("secure", &[backend.addr], &refs)
        .upstream(
            "nocert",
            &[backend.addr],
            &[
                "tls = true",
                &format!("tls_ca_file = \"{}\"", pki.path("ca.pem")),
                "tls_server_name = \"orders.internal\"",
            ],
        )
        .route("/nocert/{*rest}", "nocert", &[])
        .route("/{*rest}", "secure", &[])
        .toml();
    text.push_str(
        "\n[upstreams.secure.health]\npath = \"/healthz\"\ninterval_ms = 50\ntimeout_ms = 2000\n",
    );
    let gw = Gateway::start(&text);
    let r = gw.get("/orders/1");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        backend.client_cn.lock().unwrap().as_deref(),
        Some("ringgate-gw")
    );
    assert_eq!(
        gw.get("/nocert/x").status,
        502,
        "the backend requires a certificate"
    );
    // Health checks reach the TLS-only backend.
    let mut checked = false;
    for _ in 0..100 {
        if backend
            .requests
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.starts_with("GET /healthz "))
        {
            checked = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(checked, "no health check arrived over TLS");
}

#[test]
fn upstream_tls_keys_are_validated() {
    let pki = Pki::new("up-errors");
    let text = GatewayConfig::new()
        .upstream(
            "a",
            &["127.0.0.1:9".parse().unwrap()],
            &["tls_ca_file = \"/nonexistent/ca.pem\""],
        )
        .upstream(
            "b",
            &["127.0.0.1:9".parse().unwrap()],
            &[
                "tls = true",
                "tls_ca_file = \"/nonexistent/ca.pem\"",
                &format!("tls_client_cert = \"{}\"", pki.path("ca.pem")),
            ],
        )
        .route("/{*rest}", "a", &[])
        .toml();
    let e = match ringgate::config::Config::parse(&text) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("upstreams.a.tls_ca_file") && e.contains("tls = true"),
        "{e}"
    );
    assert!(
        e.contains("upstreams.b.tls_ca_file") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    assert!(e.contains("upstreams.b.tls_client_key"), "{e}");
}

// ---------------------------------------------------------------------------
// The demo
// ---------------------------------------------------------------------------

#[test]
fn the_demo_serves_https_with_a_certificate_it_generates() {
    use std::io::BufRead;
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let tls: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut child = std::process::Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &listen.to_string(),
            "--tls-listen",
            &tls.to_string(),
        ])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ringgate demo");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _child = Kill(child);
    let mut tour = String::new();
    for line in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        tour.push_str(&line);
        tour.push('\n');
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    // The tour gives the curl line that trusts the generated certificate.
    let curl_line = tour
        .lines()
        .find(|l| l.contains("--cacert"))
        .unwrap_or_else(|| panic!("no HTTPS line in the tour:\n{tour}"));
    let args: Vec<&str> = curl_line
        .split('#')
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .collect();
    assert!(
        curl_line.contains(&format!("https://localhost:{}/", tls.port())),
        "{curl_line}"
    );
    let mut last = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(args.iter().filter(|a| **a != "-i"))
            .output()
            .expect("curl is installed");
        last = format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if last.starts_with("200") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("curl over HTTPS against the demo: {last}\n{tour}");
}

#[test]
fn the_access_log_records_the_tls_facts() {
    let pki = Pki::new("log");
    pki.server("api", &["api.example.com"]);
    pki.client("alice", "alice");
    let up = MockUpstream::builder().respond(200, "ok").start();
    let log = pki.path("access.log");
    let mut text = tls_toml(
        &GatewayConfig::simple(&[up.addr]),
        &[&[
            format!("certs = [{}]", pki.pair("api")),
            String::from("client_auth = \"optional\""),
            format!("client_ca = \"{}\"", pki.path("ca.pem")),
        ]],
    );
    text.push_str(&format!("\n[log]\naccess = \"json\"\npath = \"{log}\"\n"));
    let gw = Gateway::start(&text);
    let addr = gw.handle.tls_addrs()[0];
    let alice = client_config(ClientOpts {
        ca: Some(pki.ca_der()),
        identity: Some(pki.identity("alice")),
        ..Default::default()
    });
    let mut s = connect(addr, Some("api.example.com"), &alice).unwrap();
    assert_eq!(request(&mut s, "/over-tls", "").unwrap().status, 200);
    assert_eq!(gw.get("/plain").status, 200);
    let mut lines = Vec::new();
    for _ in 0..250 {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        lines = t.lines().map(str::to_string).collect();
        if lines.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let find = |path: &str| -> serde_json::Value {
        let l = lines
            .iter()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("no line for {path} in {lines:#?}"));
        serde_json::from_str(l).unwrap()
    };
    let tls = &find("/over-tls")["tls"];
    assert_eq!(tls["version"], "TLSv1.3", "{tls}");
    assert!(
        tls["cipher"].as_str().unwrap().starts_with("TLS13_"),
        "{tls}"
    );
    assert_eq!(tls["sni"], "api.example.com");
    assert_eq!(tls["alpn"], "http/1.1");
    assert!(
        tls["client_subject"].as_str().unwrap().contains("CN=alice"),
        "{tls}"
    );
    assert!(
        find("/plain").get("tls").is_none(),
        "plain lines have no tls field"
    );
}

#[test]
fn with_config_watch_a_changed_certificate_file_is_served_without_a_reload_command() {
    let pki = Pki::new("watch");
    let first = pki.server("api", &["api.example.com"]);
    let up = MockUpstream::builder().respond(200, "ok").start();
    let mut text = tls_toml(
        &GatewayConfig::simple(&[up.addr]),
        &[&[format!("certs = [{}]", pki.pair("api"))]],
    );
    text.push_str("\n[config]\nwatch = true\n");
    let file = pki.path("gw.toml");
    std::fs::write(&file, &text).unwrap();
    let mut h = start_file(Path::new(&file));
    let addr = h.tls_addrs()[0];
    let fresh = || {
        client_config(ClientOpts {
            ca: Some(pki.ca_der()),
            ..Default::default()
        })
    };
    let served = || get(addr, Some("api.example.com"), &fresh(), "/").unwrap().1;
    assert_eq!(served(), first);
    // mtimes can be coarse: make sure the new files get a later one.
    std::thread::sleep(Duration::from_millis(1100));
    let second = pki.server("api", &["api.example.com"]);
    let end = std::time::Instant::now() + READ_TIMEOUT;
    while served() != second && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(served(), second, "the watcher reloaded the new certificate");
    h.shutdown();
}
