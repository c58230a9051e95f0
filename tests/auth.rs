//! Authentication and authorization over real sockets (issue 4): JWTs of
//! every algorithm family, forged and out-of-date tokens, duplicate tokens,
//! API keys, the token endpoint round trip and its failed-attempt limit
//! (per client address: clients bind to other 127.0.0.0/8 addresses),
//! roles and scopes, stripped identity headers, `hide_credentials`, a JWKS
//! rotated under a running gateway, and config errors that name the key and
//! the fix.
//!
//! Each test starts its own gateway (2 workers, port 0) in front of a mock
//! backend that counts the requests it receives and echoes their headers,
//! so every rejection is also checked to have never reached the backend.
//! The `hide_credentials` tests use `support::MockUpstream`, which records
//! each request's target as well as its headers.

mod support;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{self, KeyPair};
use ringgate::config::Config;
use ringgate::runtime::{Server, ServerHandle};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};
use support::raw::{Resp, serve_connections};
use support::{owned_headers, sha_hex, unix_now as now};

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
const OTHER_SECRET: &str = "another-secret-0123456789abcdef0123456789";
const ISS: &str = "ringgate-test";
const AUD: &str = "api";

/// One environment variable per test that uses `secret_env`, all set once
/// before any gateway starts (every test calls `env()` first).
const ENV_VARS: &[&str] = &[
    "RG_AUTH_T_HS_FAMILY",
    "RG_AUTH_T_CLAIMS",
    "RG_AUTH_T_FORGED",
    "RG_AUTH_T_CONFUSION",
    "RG_AUTH_T_DUP",
    "RG_AUTH_T_SOURCES",
    "RG_AUTH_T_ENDPOINT",
    "RG_AUTH_T_ROLES",
    "RG_AUTH_T_SPOOF",
    "RG_AUTH_T_COUNTER",
    "RG_AUTH_T_CONFIG",
    "RG_AUTH_T_HIDE",
    "RG_AUTH_T_FAILURES",
];

fn env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for v in ENV_VARS {
            // SAFETY: runs once, before any test thread reads the
            // environment (every test calls env() before anything else).
            unsafe { std::env::set_var(v, SECRET) };
        }
        // SAFETY: as above.
        unsafe { std::env::set_var("RG_AUTH_T_SHORT", "too-short") };
    });
}

fn data(name: &str) -> String {
    format!("{}/tests/data/auth/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn tmp_file(name: &str, contents: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("ringgate-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.to_string_lossy().into_owned()
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

fn pem_der(text: &[u8]) -> Vec<u8> {
    let s = std::str::from_utf8(text).unwrap();
    let body: String = s
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// A signing key with what the gateway needs to verify it.
struct TestKey {
    enc: EncodingKey,
    /// SPKI PEM of the public key.
    public_pem: Vec<u8>,
    /// PKCS#8 PEM of the private key.
    private_pem: Vec<u8>,
    /// The public key as a JWK (without kid).
    jwk: Value,
}

fn rsa_key(name: &str) -> TestKey {
    let private_pem = std::fs::read(data(&format!("{name}.pem"))).unwrap();
    let public_pem = std::fs::read(data(&format!("{name}.pub.pem"))).unwrap();
    let kp = signature::RsaKeyPair::from_pkcs8(&pem_der(&private_pem)).unwrap();
    let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public());
    TestKey {
        enc: EncodingKey::from_rsa_pem(&private_pem).unwrap(),
        jwk: json!({"kty": "RSA", "n": b64url(&c.n), "e": b64url(&c.e)}),
        public_pem,
        private_pem,
    }
}

fn ec_key(p384: bool) -> TestKey {
    let rng = ring::rand::SystemRandom::new();
    let (alg, spki_prefix, crv, n) = if p384 {
        (
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            "3076301006072a8648ce3d020106052b81040022036200",
            "P-384",
            48,
        )
    } else {
        (
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            "3059301306072a8648ce3d020106082a8648ce3d030107034200",
            "P-256",
            32,
        )
    };
    let doc = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let kp = signature::EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap();
    let point = kp.public_key().as_ref().to_vec();
    let mut spki = hex::decode(spki_prefix).unwrap();
    spki.extend_from_slice(&point);
    TestKey {
        enc: EncodingKey::from_ec_der(doc.as_ref()),
        public_pem: pem("PUBLIC KEY", &spki),
        private_pem: pem("PRIVATE KEY", doc.as_ref()),
        jwk: json!({"kty": "EC", "crv": crv, "x": b64url(&point[1..1 + n]), "y": b64url(&point[1 + n..])}),
    }
}

fn ed_key() -> TestKey {
    let rng = ring::rand::SystemRandom::new();
    let doc = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let kp = signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let public = kp.public_key().as_ref().to_vec();
    let mut spki = hex::decode("302a300506032b6570032100").unwrap();
    spki.extend_from_slice(&public);
    TestKey {
        enc: EncodingKey::from_ed_der(doc.as_ref()),
        public_pem: pem("PUBLIC KEY", &spki),
        private_pem: pem("PRIVATE KEY", doc.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(&public)}),
    }
}

fn jwks(keys: &[(&TestKey, &str)]) -> String {
    let list: Vec<Value> = keys
        .iter()
        .map(|(k, kid)| {
            let mut j = k.jwk.clone();
            j["kid"] = Value::String(kid.to_string());
            j
        })
        .collect();
    json!({ "keys": list }).to_string()
}

/// Claims that pass the standard test config.
fn claims(sub: &str) -> Value {
    json!({
        "sub": sub,
        "iss": ISS,
        "aud": AUD,
        "exp": now() + 600,
        "iat": now(),
        "roles": ["reader"],
        "scope": "orders:read profile",
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value, kid: Option<&str>) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
        None,
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

// ---------------------------------------------------------------------------
// Mock backend: counts hits, echoes request headers
// ---------------------------------------------------------------------------

type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Seen,
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

impl Backend {
    fn start() -> Backend {
        let hits = Arc::new(AtomicUsize::new(0));
        let seen: Seen = Arc::default();
        let (h, s) = (hits.clone(), seen.clone());
        let addr = serve_connections(move |c| backend_conn(c, h.clone(), s.clone()));
        Backend { addr, hits, seen }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Headers of the last request received.
    fn last(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    fn last_header(&self, name: &str) -> Option<String> {
        self.last()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn last_count(&self, name: &str) -> usize {
        self.last()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

fn backend_conn(mut c: TcpStream, hits: Arc<AtomicUsize>, seen: Seen) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match c.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        if req.parse(&buf[..end]).is_err() {
            return;
        }
        let headers = owned_headers(req.headers);
        let cl: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < end + cl {
            match c.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        buf.drain(..end + cl);
        let body: String = headers.iter().map(|(n, v)| format!("{n}: {v}\n")).collect();
        seen.lock().unwrap().push(headers);
        hits.fetch_add(1, Ordering::SeqCst);
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if c.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Gateway and client
// ---------------------------------------------------------------------------

struct Gateway {
    _handle: ServerHandle,
    addr: SocketAddr,
}

fn gateway(toml: &str) -> Gateway {
    env();
    let cfg = Config::parse(toml).unwrap_or_else(|e| panic!("config refused:\n{e}\n---\n{toml}"));
    let handle = Server::start(cfg).expect("gateway start");
    let addr = handle.local_addrs()[0];
    Gateway {
        _handle: handle,
        addr,
    }
}

/// `[server]`, one upstream and the standard routes; auth tables follow.
fn base(b: &Backend) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 2
pin = false

[upstreams.app]
targets = ["{}"]

[[routes]]
path = "/public"
upstream = "app"

[[routes]]
path = "/jwt"
upstream = "app"
auth = ["jwt"]
"#,
        b.addr
    )
}

const KEY_ROUTES: &str = r#"
[[routes]]
path = "/key"
upstream = "app"
auth = ["api_key"]

[[routes]]
path = "/any"
upstream = "app"
auth = ["jwt", "api_key"]

[[routes]]
path = "/admin"
upstream = "app"
auth = ["jwt", "api_key"]
roles = ["admin"]

[[routes]]
path = "/orders"
upstream = "app"
auth = ["jwt"]
roles = ["reader"]
scopes = ["orders:read"]

[[routes]]
path = "/orders/write"
upstream = "app"
auth = ["jwt"]
scopes = ["orders:write"]
"#;

fn hs_jwt(var: &str) -> String {
    format!(
        r#"
[auth.jwt]
algorithms = ["HS256"]
secret_env = "{var}"
issuer = "{ISS}"
audience = ["{AUD}"]
leeway_s = 5
"#
    )
}

fn consumers() -> String {
    format!(
        r#"
[[consumers]]
id = "acme"
api_key_sha256 = "{}"
client_secret_sha256 = "{}"
tier = "premium"
roles = ["reader", "admin"]
scopes = ["orders:read"]

[[consumers]]
id = "basic-co"
api_key_sha256 = "{}"
tier = "free"
roles = ["reader"]
"#,
        sha_hex("acme-key-1"),
        sha_hex("acme-secret"),
        sha_hex("basic-key-2"),
    )
}

fn send(addr: SocketAddr, raw: &[u8]) -> Resp {
    send_on(TcpStream::connect(addr).unwrap(), raw)
}

/// Sends from source address `src` (any of 127.0.0.0/8 on loopback).
fn send_from(src: IpAddr, addr: SocketAddr, raw: &[u8]) -> Resp {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(src, 0).into()).unwrap();
    s.connect(&addr.into()).unwrap();
    send_on(s.into(), raw)
}

fn send_on(mut s: TcpStream, raw: &[u8]) -> Resp {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            r.parse(&buf[..end + 4]).unwrap();
            let headers = owned_headers(r.headers);
            let cl: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + cl {
                return Resp {
                    status: r.code.unwrap(),
                    headers,
                    body: String::from_utf8_lossy(&buf[end + 4..end + 4 + cl]).into_owned(),
                };
            }
        }
        assert!(Instant::now() < deadline, "response not complete in time");
        let n = s.read(&mut tmp).expect("read response");
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    send(addr, raw_request(method, path, headers, body).as_bytes())
}

fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(addr, "GET", path, headers, "")
}

fn get_bearer(addr: SocketAddr, path: &str, token: &str) -> Resp {
    get(addr, path, &[("Authorization", &bearer(token))])
}

/// Asserts a 401 with a Bearer invalid_token challenge and a JSON body.
fn assert_invalid_token(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    let w = r.header("WWW-Authenticate").unwrap_or_default();
    assert!(
        w.starts_with("Bearer ")
            && w.contains("error=\"invalid_token\"")
            && w.contains("error_description=\""),
        "{what}: challenge {w:?}"
    );
    let j = r.json();
    assert_eq!(j["status"], 401, "{what}");
    assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}");
    assert!(j["request_id"].as_str().is_some(), "{what}");
}

fn description(r: &Resp) -> String {
    let w = r.header("WWW-Authenticate").unwrap_or_default();
    w.split("error_description=\"")
        .nth(1)
        .and_then(|d| d.split('"').next())
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------
// Algorithm families
// ---------------------------------------------------------------------------

#[test]
fn hmac_family_hs256_hs384_hs512() {
    env();
    let b = Backend::start();
    let cfg = base(&b)
        + &format!(
            r#"
[auth.jwt]
algorithms = ["HS256", "HS384", "HS512"]
secret_env = "RG_AUTH_T_HS_FAMILY"
issuer = "{ISS}"
audience = ["{AUD}"]
"#
        );
    let g = gateway(&cfg);
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let t = sign(alg, &key, &claims("alice"), None);
        let r = get_bearer(g.addr, "/jwt", &t);
        assert_eq!(r.status, 200, "{alg:?}: {r:?}");
        assert_eq!(r.echoed("X-User-Id").as_deref(), Some("alice"));
        assert_eq!(r.echoed("X-User-Roles").as_deref(), Some("reader"));
        assert_eq!(r.echoed("X-Auth-Method").as_deref(), Some("jwt"));
        // Cached: the same token again.
        assert_eq!(get_bearer(g.addr, "/jwt", &t).status, 200);
    }
    assert_eq!(b.hits(), 6);
    // No token at all: 401 with a realm challenge, no error code.
    let r = get(g.addr, "/jwt", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Bearer realm=\"ringgate\"")
    );
    assert_eq!(r.json()["status"], 401);
    assert_eq!(b.hits(), 6);
}

#[test]
fn rsa_family_rs_and_ps() {
    env();
    let b = Backend::start();
    let cfg = base(&b)
        + &format!(
            r#"
[auth.jwt]
algorithms = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
public_key_file = "{}"
issuer = "{ISS}"
audience = "{AUD}"
"#,
            data("rsa_a.pub.pem")
        );
    let g = gateway(&cfg);
    let k = rsa_key("rsa_a");
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        let t = sign(alg, &k.enc, &claims("bob"), None);
        let r = get_bearer(g.addr, "/jwt", &t);
        assert_eq!(r.status, 200, "{alg:?}: {r:?}");
        assert_eq!(r.echoed("X-User-Id").as_deref(), Some("bob"));
    }
    // Signed by another RSA key: wrong key.
    let other = rsa_key("rsa_b");
    let r = get_bearer(
        g.addr,
        "/jwt",
        &sign(Algorithm::RS256, &other.enc, &claims("bob"), None),
    );
    assert_invalid_token(&r, "wrong RSA key");
    assert_eq!(description(&r), "the signature does not verify");
    assert_eq!(b.hits(), 6);
}

#[test]
fn ec_and_eddsa_from_pem_files() {
    env();
    for (alg, key, name) in [
        (Algorithm::ES256, ec_key(false), "ES256"),
        (Algorithm::ES384, ec_key(true), "ES384"),
        (Algorithm::EdDSA, ed_key(), "EdDSA"),
    ] {
        let b = Backend::start();
        let file = tmp_file(&format!("{name}.pub.pem"), &key.public_pem);
        let cfg = base(&b)
            + &format!(
                r#"
[auth.jwt]
algorithms = ["{name}"]
public_key_file = "{file}"
issuer = "{ISS}"
audience = ["{AUD}"]
"#
            );
        let g = gateway(&cfg);
        let r = get_bearer(g.addr, "/jwt", &sign(alg, &key.enc, &claims("carol"), None));
        assert_eq!(r.status, 200, "{name}: {r:?}");
        assert_eq!(r.echoed("X-User-Id").as_deref(), Some("carol"));
        // A fresh key of the same kind is the wrong key.
        let wrong = if name == "EdDSA" {
            ed_key()
        } else {
            ec_key(name == "ES384")
        };
        let r = get_bearer(
            g.addr,
            "/jwt",
            &sign(alg, &wrong.enc, &claims("carol"), None),
        );
        assert_invalid_token(&r, name);
        assert_eq!(b.hits(), 1, "{name}");
    }
}

#[test]
fn jwks_file_with_every_asymmetric_family() {
    env();
    let b = Backend::start();
    let rsa = rsa_key("rsa_a");
    let p256 = ec_key(false);
    let p384 = ec_key(true);
    let ed = ed_key();
    let doc = jwks(&[(&rsa, "rsa"), (&p256, "p256"), (&p384, "p384"), (&ed, "ed")]);
    let file = tmp_file("every.jwks.json", doc.as_bytes());
    let cfg = base(&b)
        + &format!(
            r#"
[auth.jwt]
algorithms = ["RS256", "PS512", "ES256", "ES384", "EdDSA"]
jwks_file = "{file}"
issuer = "{ISS}"
audience = ["{AUD}"]
"#
        );
    let g = gateway(&cfg);
    let cases = [
        (Algorithm::RS256, &rsa, "rsa"),
        (Algorithm::PS512, &rsa, "rsa"),
        (Algorithm::ES256, &p256, "p256"),
        (Algorithm::ES384, &p384, "p384"),
        (Algorithm::EdDSA, &ed, "ed"),
    ];
    for (alg, k, kid) in cases {
        let r = get_bearer(
            g.addr,
            "/jwt",
            &sign(alg, &k.enc, &claims("dan"), Some(kid)),
        );
        assert_eq!(r.status, 200, "{alg:?}: {r:?}");
        // Without a kid the key is found by trying the keys that can do alg.
        let r = get_bearer(g.addr, "/jwt", &sign(alg, &k.enc, &claims("dan2"), None));
        assert_eq!(r.status, 200, "{alg:?} without kid: {r:?}");
    }
    // The right key under another key's kid does not verify.
    let r = get_bearer(
        g.addr,
        "/jwt",
        &sign(Algorithm::ES256, &p256.enc, &claims("x"), Some("p384")),
    );
    assert_invalid_token(&r, "kid of another key");
    // RS384 is not in algorithms even though the RSA key could do it.
    let r = get_bearer(
        g.addr,
        "/jwt",
        &sign(Algorithm::RS384, &rsa.enc, &claims("x"), Some("rsa")),
    );
    assert_invalid_token(&r, "algorithm not listed");
    assert_eq!(description(&r), "the token's algorithm is not accepted");
    assert_eq!(b.hits(), 10);
}

// ---------------------------------------------------------------------------
// Claims and forgeries
// ---------------------------------------------------------------------------

#[test]
fn expired_not_yet_valid_wrong_issuer_audience_missing_claims() {
    env();
    let b = Backend::start();
    let cfg = base(&b)
        + &format!(
            r#"
[auth.jwt]
algorithms = ["HS256"]
secret_env = "RG_AUTH_T_CLAIMS"
issuer = ["{ISS}", "other-issuer"]
audience = ["{AUD}", "api2"]
leeway_s = 5
required_claims = ["sub", "jti"]
"#
        );
    let g = gateway(&cfg);
    let ok = || {
        let mut c = claims("erin");
        c["jti"] = json!("id-1");
        c
    };
    assert_eq!(get_bearer(g.addr, "/jwt", &hs(&ok())).status, 200);
    // Within the leeway on both sides: accepted.
    let mut c = ok();
    c["exp"] = json!(now() - 2);
    c["nbf"] = json!(now() + 2);
    assert_eq!(
        get_bearer(g.addr, "/jwt", &hs(&c)).status,
        200,
        "within leeway"
    );
    // An audience list with one accepted value, and the second issuer.
    let mut c = ok();
    c["aud"] = json!(["nope", "api2"]);
    c["iss"] = json!("other-issuer");
    assert_eq!(get_bearer(g.addr, "/jwt", &hs(&c)).status, 200, "aud list");
    let hits = b.hits();

    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "expired",
            Box::new(|c| c["exp"] = json!(now() - 60)),
            "the token has expired",
        ),
        (
            "not yet valid",
            Box::new(|c| c["nbf"] = json!(now() + 60)),
            "the token is not valid yet",
        ),
        (
            "wrong issuer",
            Box::new(|c| c["iss"] = json!("evil")),
            "the token's issuer is not accepted",
        ),
        (
            "no issuer",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            "the token's issuer is not accepted",
        ),
        (
            "wrong audience",
            Box::new(|c| c["aud"] = json!(["web"])),
            "the token's audience is not accepted",
        ),
        (
            "no audience",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            "the token's audience is not accepted",
        ),
        (
            "no exp",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "the token lacks the exp claim",
        ),
        (
            "exp not a number",
            Box::new(|c| c["exp"] = json!("tomorrow")),
            "exp is not a number",
        ),
        (
            "required claim",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            "the token lacks the jti claim",
        ),
        (
            "control chars in sub",
            Box::new(|c| c["sub"] = json!("a\r\nX-Evil: 1")),
            "a claim forwarded to the backend holds control characters",
        ),
    ];
    for (what, f, desc) in cases {
        let mut c = ok();
        f(&mut c);
        let r = get_bearer(g.addr, "/jwt", &hs(&c));
        assert_invalid_token(&r, what);
        assert_eq!(description(&r), desc, "{what}");
    }
    assert_eq!(b.hits(), hits, "no rejected request reached the backend");
}

#[test]
fn forged_tokens_wrong_key_alg_none_tampered_malformed() {
    env();
    let b = Backend::start();
    let cfg = base(&b) + &hs_jwt("RG_AUTH_T_FORGED");
    let g = gateway(&cfg);
    let good = hs(&claims("frank"));
    assert_eq!(get_bearer(g.addr, "/jwt", &good).status, 200);

    // Signed with another secret.
    let wrong = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(OTHER_SECRET.as_bytes()),
        &claims("frank"),
        None,
    );
    assert_invalid_token(&get_bearer(g.addr, "/jwt", &wrong), "wrong secret");

    // alg: none, with and without a signature part.
    let none_head = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(claims("frank").to_string().as_bytes());
    for t in [
        format!("{none_head}.{payload}."),
        format!("{none_head}.{payload}.{}", good.rsplit('.').next().unwrap()),
    ] {
        let r = get_bearer(g.addr, "/jwt", &t);
        assert_invalid_token(&r, "alg none");
        assert_eq!(description(&r), "the token's algorithm is not accepted");
    }
    // "None" / "NONE" spelled differently are just as unknown.
    let t = format!("{}.{payload}.", b64url(br#"{"alg":"NONE"}"#));
    assert_invalid_token(&get_bearer(g.addr, "/jwt", &t), "alg NONE");

    // Tampered payload: roles raised to admin, signature kept.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut c = claims("frank");
    c["roles"] = json!(["admin"]);
    parts[1] = b64url(c.to_string().as_bytes());
    let r = get_bearer(g.addr, "/jwt", &parts.join("."));
    assert_invalid_token(&r, "tampered payload");
    assert_eq!(description(&r), "the signature does not verify");
    // Tampered header: alg switched to HS512 with the HS256 signature.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[0] = b64url(br#"{"alg":"HS512","typ":"JWT"}"#);
    assert_invalid_token(
        &get_bearer(g.addr, "/jwt", &parts.join(".")),
        "tampered header",
    );

    // Malformed tokens.
    for (t, what) in [
        ("abc", "one part"),
        ("a.b", "two parts"),
        ("a.b.c.d.e", "JWE shape"),
        ("!!!.???.***", "not base64url"),
        ("eyJhbGciOiJIUzI1NiJ9..sig", "empty payload"),
    ] {
        assert_invalid_token(&get_bearer(g.addr, "/jwt", t), what);
    }
    // Empty Bearer.
    assert_invalid_token(
        &get(g.addr, "/jwt", &[("Authorization", "Bearer ")]),
        "empty bearer",
    );
    // Another scheme is no token at all.
    let r = get(g.addr, "/jwt", &[("Authorization", "Basic Zm9vOmJhcg==")]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Bearer realm=\"ringgate\"")
    );
    assert_eq!(b.hits(), 1, "only the genuine token reached the backend");
}

/// The classic confusion: an HS256 token whose HMAC key is the RSA public
/// key PEM. It must fail whether or not HS256 is also accepted.
#[test]
fn hs_rs_algorithm_confusion_rejected() {
    env();
    let pub_pem = std::fs::read(data("rsa_a.pub.pem")).unwrap();
    let spki = pem_der(&pub_pem);
    // Every byte form of the public key an attacker might use as the HMAC
    // secret: the PEM text (with and without its final newline), the SPKI
    // DER, and the PKCS#1 RSAPublicKey inside it (after the 24-byte SPKI
    // prefix of a 2048-bit key) — the form the verifier holds internally.
    let secrets: Vec<Vec<u8>> = vec![
        pub_pem.clone(),
        pub_pem.trim_ascii_end().to_vec(),
        spki.clone(),
        spki[24..].to_vec(),
    ];
    let forged: Vec<String> = secrets
        .iter()
        .map(|k| {
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(k),
                &claims("mallory"),
                None,
            )
        })
        .collect();
    let rsa = rsa_key("rsa_a");
    // RS256 only.
    let b = Backend::start();
    let g = gateway(
        &(base(&b)
            + &format!(
                "[auth.jwt]\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\n",
                data("rsa_a.pub.pem")
            )),
    );
    assert_eq!(
        get_bearer(
            g.addr,
            "/jwt",
            &sign(Algorithm::RS256, &rsa.enc, &claims("ok"), None)
        )
        .status,
        200
    );
    for t in &forged {
        let r = get_bearer(g.addr, "/jwt", t);
        assert_invalid_token(&r, "confusion, RS256 only");
        assert_eq!(description(&r), "the token's algorithm is not accepted");
    }
    assert_eq!(b.hits(), 1);
    // RS256 and HS256 both accepted: the HS key is the secret, never the PEM.
    let b = Backend::start();
    let g = gateway(
        &(base(&b)
            + &format!(
                "[auth.jwt]\nalgorithms = [\"RS256\", \"HS256\"]\nsecret_env = \"RG_AUTH_T_CONFUSION\"\npublic_key_file = \"{}\"\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\n",
                data("rsa_a.pub.pem")
            )),
    );
    assert_eq!(get_bearer(g.addr, "/jwt", &hs(&claims("ok"))).status, 200);
    assert_eq!(
        get_bearer(
            g.addr,
            "/jwt",
            &sign(Algorithm::RS256, &rsa.enc, &claims("ok"), None)
        )
        .status,
        200
    );
    for t in &forged {
        let r = get_bearer(g.addr, "/jwt", t);
        assert_invalid_token(&r, "confusion, RS256 + HS256");
        assert_eq!(description(&r), "the signature does not verify");
    }
    assert_eq!(b.hits(), 2);
}

// ---------------------------------------------------------------------------
// Where tokens come from; duplicates
// ---------------------------------------------------------------------------

fn sources_config(b: &Backend, var: &str) -> String {
    base(b)
        + &hs_jwt(var)
        + "token_header = \"X-Access-Token\"\ntoken_query = \"access_token\"\ntoken_cookie = \"session\"\n"
}

#[test]
fn token_from_header_query_and_cookie() {
    env();
    let b = Backend::start();
    let g = gateway(&sources_config(&b, "RG_AUTH_T_SOURCES"));
    let t = hs(&claims("gina"));
    let cookie = format!("theme=dark; session={t}; x=y");
    let query = format!("/jwt?a=1&access_token={t}");
    for (what, r) in [
        ("bearer", get_bearer(g.addr, "/jwt", &t)),
        ("header", get(g.addr, "/jwt", &[("X-Access-Token", &t)])),
        (
            "header with Bearer",
            get(g.addr, "/jwt", &[("X-Access-Token", &bearer(&t))]),
        ),
        ("query", get(g.addr, &query, &[])),
        ("cookie", get(g.addr, "/jwt", &[("Cookie", &cookie)])),
    ] {
        assert_eq!(r.status, 200, "{what}: {r:?}");
        assert_eq!(r.echoed("X-User-Id").as_deref(), Some("gina"), "{what}");
    }
    assert_eq!(b.hits(), 5);
}

#[test]
fn two_different_tokens_are_rejected() {
    env();
    let b = Backend::start();
    let g = gateway(&sources_config(&b, "RG_AUTH_T_DUP"));
    let t1 = hs(&claims("hank"));
    let t2 = hs(&claims("ivan"));
    // The same token twice is fine.
    let r = get(
        g.addr,
        "/jwt",
        &[
            ("Authorization", &bearer(&t1)),
            ("Cookie", &format!("session={t1}")),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(b.hits(), 1);
    let q2 = format!("/jwt?access_token={t2}");
    let cases: Vec<(&str, Resp)> = vec![
        (
            "authorization vs cookie",
            get(
                g.addr,
                "/jwt",
                &[
                    ("Authorization", &bearer(&t1)),
                    ("Cookie", &format!("session={t2}")),
                ],
            ),
        ),
        (
            "two authorization headers",
            get(
                g.addr,
                "/jwt",
                &[
                    ("Authorization", &bearer(&t1)),
                    ("Authorization", &bearer(&t2)),
                ],
            ),
        ),
        (
            "header vs query",
            get(g.addr, &q2, &[("X-Access-Token", &t1)]),
        ),
        (
            "two cookies",
            get(
                g.addr,
                "/jwt",
                &[("Cookie", &format!("session={t1}; session={t2}"))],
            ),
        ),
        (
            "valid and garbage",
            get(
                g.addr,
                "/jwt",
                &[
                    ("Authorization", &bearer(&t1)),
                    ("X-Access-Token", "garbage"),
                ],
            ),
        ),
    ];
    for (what, r) in cases {
        assert_invalid_token(&r, what);
        assert_eq!(
            description(&r),
            "the request carries more than one different token",
            "{what}"
        );
    }
    assert_eq!(b.hits(), 1);
}

// ---------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------

#[test]
fn api_keys_right_wrong_missing() {
    env();
    let b = Backend::start();
    let cfg = base(&b)
        + KEY_ROUTES
        + &consumers()
        + "\n[auth.api_key]\nheader = \"X-API-Key\"\nquery = \"api_key\"\n"
        + &hs_jwt("RG_AUTH_T_ROLES");
    let g = gateway(&cfg);
    let r = get(g.addr, "/key", &[("X-API-Key", "acme-key-1")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed("X-Consumer-Id").as_deref(), Some("acme"));
    assert_eq!(r.echoed("X-Consumer-Tier").as_deref(), Some("premium"));
    assert_eq!(r.echoed("X-User-Id").as_deref(), Some("acme"));
    assert_eq!(r.echoed("X-User-Roles").as_deref(), Some("reader,admin"));
    assert_eq!(r.echoed("X-Auth-Method").as_deref(), Some("api_key"));
    // Header names are case-insensitive; the query parameter works too.
    let r = get(g.addr, "/key", &[("x-api-key", "basic-key-2")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("X-Consumer-Tier").as_deref(), Some("free"));
    assert_eq!(get(g.addr, "/key?api_key=acme-key-1", &[]).status, 200);
    // Percent-encoded in the query.
    assert_eq!(get(g.addr, "/key?api_key=acme%2Dkey%2D1", &[]).status, 200);
    assert_eq!(b.hits(), 4);

    // Wrong, missing, two different keys.
    let r = get(g.addr, "/key", &[("X-API-Key", "acme-key-2")]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("WWW-Authenticate").unwrap().starts_with("ApiKey"));
    assert_eq!(r.json()["status"], 401);
    let r = get(g.addr, "/key", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("ApiKey realm=\"ringgate\"")
    );
    let r = get(g.addr, "/key", &[("X-API-Key", "")]);
    assert_eq!(r.status, 401);
    let r = get(
        g.addr,
        "/key?api_key=basic-key-2",
        &[("X-API-Key", "acme-key-1")],
    );
    assert_eq!(r.status, 401);
    // A bearer token on a key-only route is not a credential for it.
    let r = get_bearer(g.addr, "/key", &hs(&claims("x")));
    assert_eq!(r.status, 401);
    assert_eq!(b.hits(), 4);

    // A route taking either: the key or the token.
    assert_eq!(
        get(g.addr, "/any", &[("X-API-Key", "acme-key-1")]).status,
        200
    );
    let r = get_bearer(g.addr, "/any", &hs(&claims("jill")));
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("X-Auth-Method").as_deref(), Some("jwt"));
    // An invalid token is refused even with a valid key beside it (jwt is
    // the route's first method and its credentials were presented).
    let r = get(
        g.addr,
        "/any",
        &[
            ("Authorization", "Bearer not.a.token"),
            ("X-API-Key", "acme-key-1"),
        ],
    );
    assert_invalid_token(&r, "bad token beside a good key");
    assert_eq!(b.hits(), 6);
}

// ---------------------------------------------------------------------------
// Roles and scopes
// ---------------------------------------------------------------------------

#[test]
fn roles_and_scopes_give_403() {
    env();
    let b = Backend::start();
    let cfg = base(&b) + KEY_ROUTES + &consumers() + &hs_jwt("RG_AUTH_T_ROLES");
    let g = gateway(&cfg);
    let reader = hs(&claims("kate"));
    let mut c = claims("leo");
    c["roles"] = json!(["reader", "admin"]);
    let admin = hs(&c);
    let r = get_bearer(g.addr, "/admin", &reader);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["status"], 403);
    assert_eq!(get_bearer(g.addr, "/admin", &admin).status, 200);
    // API keys: acme has admin, basic-co does not.
    assert_eq!(
        get(g.addr, "/admin", &[("X-API-Key", "acme-key-1")]).status,
        200
    );
    assert_eq!(
        get(g.addr, "/admin", &[("X-API-Key", "basic-key-2")]).status,
        403
    );
    // Roles from a space- or comma-separated string.
    let mut c = claims("mia");
    c["roles"] = json!("reader admin");
    assert_eq!(get_bearer(g.addr, "/admin", &hs(&c)).status, 200);
    // Scopes: `scope` (space-separated) or `scp` (array).
    assert_eq!(get_bearer(g.addr, "/orders", &reader).status, 200);
    let r = get_bearer(g.addr, "/orders/write", &reader);
    assert_eq!(r.status, 403);
    assert!(
        r.header("WWW-Authenticate")
            .unwrap()
            .contains("insufficient_scope")
    );
    let mut c = claims("ned");
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["orders:write"]);
    assert_eq!(get_bearer(g.addr, "/orders/write", &hs(&c)).status, 200);
    // No roles claim at all: 403 on a route that needs one.
    let mut c = claims("ola");
    c.as_object_mut().unwrap().remove("roles");
    assert_eq!(get_bearer(g.addr, "/orders", &hs(&c)).status, 403);
    assert_eq!(b.hits(), 5);
}

// ---------------------------------------------------------------------------
// Identity headers
// ---------------------------------------------------------------------------

#[test]
fn spoofed_identity_headers_are_stripped() {
    env();
    let b = Backend::start();
    let cfg = base(&b) + KEY_ROUTES + &consumers() + &hs_jwt("RG_AUTH_T_SPOOF");
    let g = gateway(&cfg);
    let spoof: &[(&str, &str)] = &[
        ("X-User-Id", "root"),
        ("X-User-Roles", "admin"),
        ("X-Consumer-Id", "bigcorp"),
        ("X-Consumer-Tier", "unlimited"),
        ("X-Auth-Method", "jwt"),
        ("x-user-id", "root2"),
    ];
    // Public route: none of them arrive.
    let r = get(g.addr, "/public", spoof);
    assert_eq!(r.status, 200);
    for h in [
        "X-User-Id",
        "X-User-Roles",
        "X-Consumer-Id",
        "X-Consumer-Tier",
        "X-Auth-Method",
    ] {
        assert_eq!(
            b.last_count(h),
            0,
            "{h} reached the backend on a public route"
        );
    }
    // Authenticated route: only the gateway's values, once each.
    let t = hs(&claims("pia"));
    let mut hs_list = spoof.to_vec();
    let auth = bearer(&t);
    hs_list.push(("Authorization", &auth));
    let r = get(g.addr, "/jwt", &hs_list);
    assert_eq!(r.status, 200);
    assert_eq!(b.last_header("X-User-Id").as_deref(), Some("pia"));
    assert_eq!(b.last_count("X-User-Id"), 1);
    assert_eq!(b.last_header("X-User-Roles").as_deref(), Some("reader"));
    assert_eq!(b.last_header("X-Auth-Method").as_deref(), Some("jwt"));
    assert_eq!(
        b.last_count("X-Consumer-Id"),
        0,
        "a plain JWT has no consumer"
    );
    assert_eq!(b.last_count("X-Consumer-Tier"), 0);
    // API key route: the consumer's values.
    let mut k = spoof.to_vec();
    k.push(("X-API-Key", "basic-key-2"));
    assert_eq!(get(g.addr, "/key", &k).status, 200);
    assert_eq!(b.last_header("X-Consumer-Id").as_deref(), Some("basic-co"));
    assert_eq!(b.last_count("X-Consumer-Id"), 1);
    assert_eq!(b.last_header("X-Consumer-Tier").as_deref(), Some("free"));
    assert_eq!(b.last_header("X-Auth-Method").as_deref(), Some("api_key"));
    assert_eq!(b.last_count("X-User-Roles"), 1);
}

/// Every kind of rejection at once, then accepted requests: the backend's
/// counter moves only for the accepted ones.
#[test]
fn rejected_requests_never_reach_the_backend() {
    env();
    let b = Backend::start();
    let cfg = base(&b) + KEY_ROUTES + &consumers() + &hs_jwt("RG_AUTH_T_COUNTER");
    let g = gateway(&cfg);
    let mut expired = claims("q");
    expired["exp"] = json!(now() - 3600);
    let expired = hs(&expired);
    let reader = hs(&claims("q"));
    let mut rejected = 0;
    for _ in 0..3 {
        for r in [
            get(g.addr, "/jwt", &[]),
            get_bearer(g.addr, "/jwt", &expired),
            get_bearer(g.addr, "/jwt", "x.y.z"),
            get(g.addr, "/key", &[("X-API-Key", "nope")]),
            get(g.addr, "/key", &[]),
            get_bearer(g.addr, "/admin", &reader),
            request(
                g.addr,
                "POST",
                "/jwt",
                &[("Content-Type", "text/plain")],
                "body that must not be forwarded",
            ),
        ] {
            assert!(r.status == 401 || r.status == 403, "{r:?}");
            rejected += 1;
        }
    }
    assert_eq!(rejected, 21);
    assert_eq!(b.hits(), 0, "a rejected request reached the backend");
    for _ in 0..5 {
        assert_eq!(get_bearer(g.addr, "/jwt", &reader).status, 200);
    }
    assert_eq!(get(g.addr, "/public", &[]).status, 200);
    assert_eq!(b.hits(), 6);
}

// ---------------------------------------------------------------------------
// Token endpoint
// ---------------------------------------------------------------------------

fn endpoint_config(b: &Backend) -> String {
    base(b)
        + KEY_ROUTES
        + &consumers()
        + &hs_jwt("RG_AUTH_T_ENDPOINT")
        + "\n[auth.token_endpoint]\npath = \"/auth/token\"\nttl_s = 600\n"
}

fn form_post(addr: SocketAddr, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    request(addr, "POST", "/auth/token", &h, body)
}

fn check_issued(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let j = r.json();
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["expires_in"], 600);
    j["access_token"].as_str().unwrap().to_string()
}

#[test]
fn token_endpoint_round_trip() {
    env();
    let b = Backend::start();
    let g = gateway(&endpoint_config(&b));
    // Client credentials in the form body.
    let t = check_issued(&form_post(
        g.addr,
        &[],
        "grant_type=client_credentials&client_id=acme&client_secret=acme-secret",
    ));
    // The token's claims, checked with the same secret outside the gateway.
    let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
    v.set_issuer(&[ISS]);
    v.set_audience(&[AUD]);
    let data = jsonwebtoken::decode::<Value>(
        &t,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &v,
    )
    .unwrap();
    let c = data.claims;
    assert_eq!(c["sub"], "acme");
    assert_eq!(c["client_id"], "acme");
    assert_eq!(c["tier"], "premium");
    assert_eq!(c["roles"], json!(["reader", "admin"]));
    assert_eq!(c["scope"], "orders:read");
    let exp = c["exp"].as_u64().unwrap();
    assert!(exp > now() + 590 && exp <= now() + 601);
    // It passes the gateway's own check, with the consumer's context.
    let r = get_bearer(g.addr, "/admin", &t);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed("X-User-Id").as_deref(), Some("acme"));
    assert_eq!(r.echoed("X-Consumer-Id").as_deref(), Some("acme"));
    assert_eq!(r.echoed("X-Consumer-Tier").as_deref(), Some("premium"));
    assert_eq!(r.echoed("X-User-Roles").as_deref(), Some("reader,admin"));
    assert_eq!(r.echoed("X-Auth-Method").as_deref(), Some("jwt"));
    assert_eq!(get_bearer(g.addr, "/orders", &t).status, 200);

    // HTTP Basic (the form then carries only the grant type).
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("acme:acme-secret")
    );
    let t2 = check_issued(&form_post(
        g.addr,
        &[("Authorization", &basic)],
        "grant_type=client_credentials",
    ));
    assert_eq!(get_bearer(g.addr, "/jwt", &t2).status, 200);
    // An API key, no body needed.
    let r = request(
        g.addr,
        "POST",
        "/auth/token",
        &[("X-API-Key", "basic-key-2")],
        "",
    );
    let t3 = check_issued(&r);
    let r = get_bearer(g.addr, "/jwt", &t3);
    assert_eq!(r.echoed("X-Consumer-Id").as_deref(), Some("basic-co"));
    assert_eq!(r.echoed("X-Consumer-Tier").as_deref(), Some("free"));
    // Requesting a subset of scopes, percent-encoded.
    let r = form_post(
        g.addr,
        &[],
        "grant_type=client_credentials&client_id=acme&client_secret=acme-secret&scope=orders%3Aread",
    );
    assert_eq!(r.json()["scope"], "orders:read");
    assert_eq!(b.hits(), 4);

    // Failures, each in the OAuth error shape.
    let cases: Vec<(u16, &str, Resp)> = vec![
        (
            401,
            "invalid_client",
            form_post(
                g.addr,
                &[],
                "grant_type=client_credentials&client_id=acme&client_secret=wrong",
            ),
        ),
        (
            401,
            "invalid_client",
            form_post(
                g.addr,
                &[],
                "grant_type=client_credentials&client_id=nobody&client_secret=acme-secret",
            ),
        ),
        (
            401,
            "invalid_client",
            // basic-co has no client secret.
            form_post(
                g.addr,
                &[],
                "grant_type=client_credentials&client_id=basic-co&client_secret=x",
            ),
        ),
        (
            401,
            "invalid_client",
            form_post(g.addr, &[], "grant_type=client_credentials"),
        ),
        (
            401,
            "invalid_client",
            request(
                g.addr,
                "POST",
                "/auth/token",
                &[("X-API-Key", "wrong-key")],
                "",
            ),
        ),
        (
            400,
            "unsupported_grant_type",
            form_post(
                g.addr,
                &[],
                "grant_type=password&client_id=acme&client_secret=acme-secret",
            ),
        ),
        (
            400,
            "invalid_request",
            form_post(g.addr, &[], "client_id=acme&client_secret=acme-secret"),
        ),
        (
            400,
            "invalid_request",
            form_post(
                g.addr,
                &[],
                "grant_type=client_credentials&client_id=acme&client_id=x&client_secret=acme-secret",
            ),
        ),
        (
            400,
            "invalid_scope",
            form_post(
                g.addr,
                &[],
                "grant_type=client_credentials&client_id=acme&client_secret=acme-secret&scope=orders:write",
            ),
        ),
        (
            400,
            "invalid_request",
            request(
                g.addr,
                "POST",
                "/auth/token",
                &[("Content-Type", "application/json")],
                r#"{"grant_type":"client_credentials"}"#,
            ),
        ),
    ];
    for (status, code, r) in cases {
        assert_eq!(r.status, status, "{code}: {r:?}");
        let j = r.json();
        assert_eq!(j["error"], code, "{r:?}");
        assert_eq!(j["status"], status);
        assert!(j["error_description"].as_str().is_some());
        if status == 401 {
            assert!(r.header("WWW-Authenticate").unwrap().starts_with("Basic"));
        }
    }
    // GET is not allowed.
    let r = get(g.addr, "/auth/token", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("POST"));
    assert_eq!(b.hits(), 4);
}

#[test]
fn token_endpoint_signs_with_a_private_key() {
    env();
    let rsa = rsa_key("rsa_a");
    for (alg, key, kid) in [
        ("EdDSA", ed_key(), "gw-ed"),
        ("ES256", ec_key(false), "gw-ec"),
        ("RS256", rsa_key("rsa_a"), "gw-rsa"),
    ] {
        let b = Backend::start();
        let file = tmp_file(&format!("signing-{alg}.pem"), &key.private_pem);
        // The verification side lists an unrelated RSA public key too; the
        // gateway's own public key is added from the private key.
        let cfg = base(&b)
            + &consumers()
            + &format!(
                r#"
[auth.jwt]
algorithms = ["{alg}", "PS256"]
public_key_file = "{}"
issuer = "{ISS}"
audience = ["{AUD}"]

[auth.token_endpoint]
private_key_file = "{file}"
key_id = "{kid}"
"#,
                data("rsa_b.pub.pem")
            );
        let g = gateway(&cfg);
        let r = request(
            g.addr,
            "POST",
            "/auth/token",
            &[("X-API-Key", "acme-key-1")],
            "",
        );
        let t = check_issued_default_ttl(&r);
        let head = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(format!("{:?}", head.alg), alg);
        assert_eq!(head.kid.as_deref(), Some(kid));
        let r = get_bearer(g.addr, "/jwt", &t);
        assert_eq!(r.status, 200, "{alg}: {r:?}");
        assert_eq!(r.echoed("X-Consumer-Id").as_deref(), Some("acme"));
        // A token for the same kid signed elsewhere does not pass.
        let forged = sign(Algorithm::PS256, &rsa.enc, &claims("acme"), Some(kid));
        assert_invalid_token(
            &get_bearer(g.addr, "/jwt", &forged),
            "forged under the gateway's kid",
        );
        assert_eq!(b.hits(), 1);
    }
}

fn check_issued_default_ttl(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["expires_in"], 3600);
    r.json()["access_token"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------
// Token endpoint: failed-attempt limit
// ---------------------------------------------------------------------------

/// A gateway (2 workers: the count is shared, so which worker takes each
/// connection does not matter) whose token endpoint has `limit` keys.
fn limit_config(b: &Backend, limit: &str) -> String {
    base(b)
        + &consumers()
        + &hs_jwt("RG_AUTH_T_FAILURES")
        + "\n[auth.token_endpoint]\npath = \"/auth/token\"\n"
        + limit
}

const RIGHT: &str = "grant_type=client_credentials&client_id=acme&client_secret=acme-secret";
const WRONG: &str = "grant_type=client_credentials&client_id=acme&client_secret=guess";

/// A token request from `src`, each on its own connection.
fn token_from(src: &str, addr: SocketAddr, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    let raw = raw_request("POST", "/auth/token", &h, body);
    send_from(src.parse().unwrap(), addr, raw.as_bytes())
}

/// Asserts a 429 from the failed-attempt limit: `Retry-After` within
/// `1..=window_s`, the JSON error shape, and no token. Returns Retry-After.
fn assert_blocked(r: &Resp, window_s: u64, what: &str) -> u64 {
    assert_eq!(r.status, 429, "{what}: {r:?}");
    let retry: u64 = r
        .header("Retry-After")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no Retry-After: {r:?}"));
    assert!(
        (1..=window_s).contains(&retry),
        "{what}: Retry-After {retry}"
    );
    assert_eq!(r.header("Cache-Control"), Some("no-store"), "{what}");
    assert_eq!(r.header("WWW-Authenticate"), None, "{what}");
    let j = r.json();
    assert_eq!(j["error"], "too_many_attempts", "{what}");
    assert_eq!(j["status"], 429, "{what}");
    assert!(
        j["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{what}"
    );
    assert!(j["error_description"].as_str().is_some(), "{what}");
    assert!(j.get("access_token").is_none(), "{what}");
    retry
}

/// Credential guessing is cut off per client address: after
/// `max_failures` refused client authentications the next attempt, with
/// the right secret or a valid API key, gets 429 and no token, while
/// another address is unaffected. 400s do not count and a success does
/// not reset the count.
#[test]
fn token_endpoint_blocks_an_address_after_failed_attempts() {
    env();
    let b = Backend::start();
    let g = gateway(&limit_config(
        &b,
        "max_failures = 3\nfailure_window_s = 60\n",
    ));
    let a = "127.0.0.1";
    check_issued_default_ttl(&token_from(a, g.addr, &[], RIGHT));
    // Malformed requests test no secret: not counted, however many.
    for _ in 0..5 {
        let r = token_from(a, g.addr, &[], "grant_type=password&client_id=acme");
        assert_eq!(r.status, 400, "{r:?}");
    }
    // Failure 1: a wrong secret; 2: an unknown client.
    assert_eq!(token_from(a, g.addr, &[], WRONG).status, 401);
    let unknown = "grant_type=client_credentials&client_id=nobody&client_secret=x";
    assert_eq!(token_from(a, g.addr, &[], unknown).status, 401);
    // Under the limit the right secret still works, and does not reset it.
    check_issued_default_ttl(&token_from(a, g.addr, &[], RIGHT));
    // Failure 3: a bad API key.
    let r = token_from(a, g.addr, &[("X-API-Key", "guessed-key")], "");
    assert_eq!(r.status, 401, "{r:?}");

    // Blocked: the right secret, Basic, a valid API key all get 429.
    assert_blocked(&token_from(a, g.addr, &[], RIGHT), 60, "right secret");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("acme:acme-secret")
    );
    assert_blocked(
        &token_from(
            a,
            g.addr,
            &[("Authorization", &basic)],
            "grant_type=client_credentials",
        ),
        60,
        "Basic",
    );
    assert_blocked(
        &token_from(a, g.addr, &[("X-API-Key", "acme-key-1")], ""),
        60,
        "API key",
    );
    // X-Forwarded-For from a peer that is not a trusted proxy changes nothing.
    assert_blocked(
        &token_from(a, g.addr, &[("X-Forwarded-For", "198.51.100.1")], RIGHT),
        60,
        "spoofed X-Forwarded-For",
    );
    // Blocked attempts are not counted further, and the rest of the
    // gateway still serves the address.
    assert_eq!(get(g.addr, "/public", &[]).status, 200);

    // Another address: unaffected, and counted on its own.
    let other = "127.0.0.2";
    check_issued_default_ttl(&token_from(other, g.addr, &[], RIGHT));
    for _ in 0..2 {
        assert_eq!(token_from(other, g.addr, &[], WRONG).status, 401);
    }
    check_issued_default_ttl(&token_from(other, g.addr, &[], RIGHT));
    assert_eq!(token_from(other, g.addr, &[], WRONG).status, 401);
    assert_blocked(&token_from(other, g.addr, &[], RIGHT), 60, "second address");
    assert_blocked(
        &token_from(a, g.addr, &[], RIGHT),
        60,
        "first address, still",
    );
    // Only the /public request reached the backend.
    assert_eq!(b.hits(), 1);
}

/// The block ends with the window: a small window, slept past, lets the
/// right secret through again; `max_failures = 0` turns the limit off.
#[test]
fn token_endpoint_failure_window_passes() {
    env();
    let b = Backend::start();
    let g = gateway(&limit_config(
        &b,
        "max_failures = 2\nfailure_window_s = 1\n",
    ));
    let a = "127.0.0.3";
    let before = Instant::now();
    assert_eq!(token_from(a, g.addr, &[], WRONG).status, 401);
    let first_answered = Instant::now();
    assert_eq!(token_from(a, g.addr, &[], WRONG).status, 401);
    let r = token_from(a, g.addr, &[], RIGHT);
    // The window runs from the first failure (counted in tenths of a
    // second): it certainly still ran if this answer came within 0.9 s.
    if before.elapsed() < Duration::from_millis(900) {
        assert_eq!(assert_blocked(&r, 1, "inside the window"), 1);
    }
    // It certainly ended 1 s after the first failure was answered.
    let end = first_answered + Duration::from_millis(1200);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    check_issued_default_ttl(&token_from(a, g.addr, &[], RIGHT));
    // A fresh window: one failure does not block.
    assert_eq!(token_from(a, g.addr, &[], WRONG).status, 401);
    check_issued_default_ttl(&token_from(a, g.addr, &[], RIGHT));

    // Off.
    let g = gateway(&limit_config(&b, "max_failures = 0\n"));
    for _ in 0..15 {
        assert_eq!(token_from(a, g.addr, &[], WRONG).status, 401);
    }
    check_issued_default_ttl(&token_from(a, g.addr, &[], RIGHT));

    // The default (10 per 60 s) is on.
    let g = gateway(&limit_config(&b, ""));
    for _ in 0..10 {
        assert_eq!(token_from(a, g.addr, &[], WRONG).status, 401);
    }
    assert_blocked(&token_from(a, g.addr, &[], RIGHT), 60, "default limit");
    assert_eq!(b.hits(), 0);
}

/// Behind a trusted proxy the failures are counted for the forwarded
/// client (the rightmost `X-Forwarded-For` entry that is not a trusted
/// proxy); the same header from any other peer is ignored.
#[test]
fn token_endpoint_failures_behind_a_trusted_proxy() {
    env();
    let b = Backend::start();
    let g = gateway(&limit_config(
        &b,
        "max_failures = 2\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
    ));
    let proxy = "127.0.0.1";
    let xff = |v: &'static str| [("X-Forwarded-For", v)];
    for v in ["203.0.113.5", "198.51.100.9, 203.0.113.5, 10.1.2.3"] {
        assert_eq!(token_from(proxy, g.addr, &xff(v), WRONG).status, 401);
    }
    assert_blocked(
        &token_from(proxy, g.addr, &xff("203.0.113.5"), RIGHT),
        60,
        "forwarded client",
    );
    // Another forwarded client, and the proxy's own requests, pass.
    check_issued_default_ttl(&token_from(proxy, g.addr, &xff("203.0.113.6"), RIGHT));
    check_issued_default_ttl(&token_from(proxy, g.addr, &[], RIGHT));
    // An untrusted peer cannot borrow or shed a forwarded identity.
    let direct = "127.0.0.4";
    check_issued_default_ttl(&token_from(direct, g.addr, &xff("203.0.113.5"), RIGHT));
    for v in ["192.0.2.1", "192.0.2.2"] {
        assert_eq!(token_from(direct, g.addr, &xff(v), WRONG).status, 401);
    }
    assert_blocked(
        &token_from(direct, g.addr, &xff("192.0.2.3"), RIGHT),
        60,
        "untrusted peer",
    );
    assert_eq!(b.hits(), 0);
}

#[test]
fn token_endpoint_failure_limit_config_errors() {
    let b = Backend::start();
    let errs = config_errors(&limit_config(
        &b,
        "max_failures = 5000\nfailure_window_s = 0\ntrusted_proxies = [\"10.0.0.0/33\", \"proxy\"]\n",
    ));
    assert_error(&errs, "auth.token_endpoint.max_failures", "5000");
    assert_error(
        &errs,
        "auth.token_endpoint.failure_window_s",
        "outside 1..=86400",
    );
    assert_error(
        &errs,
        "auth.token_endpoint.trusted_proxies",
        "\"10.0.0.0/33\"",
    );
    assert_error(&errs, "auth.token_endpoint.trusted_proxies", "\"proxy\"");
    let errs = config_errors(&limit_config(&b, "failure_window_s = 90000\n"));
    assert_error(&errs, "auth.token_endpoint.failure_window_s", "90000");
    // Types are checked by the TOML layer, which names the key.
    let errs = config_errors(&limit_config(&b, "max_failures = -1\n"));
    assert!(
        errs[0].key.starts_with("auth.token_endpoint.max_failures"),
        "{errs:#?}"
    );
    let errs = config_errors(&limit_config(&b, "failure_window = 60\n"));
    assert!(errs[0].message.contains("failure_window"), "{errs:#?}");
    // And good ones pass, including off.
    for ok in [
        "max_failures = 0\n",
        "max_failures = 1000\nfailure_window_s = 86400\n",
    ] {
        Config::parse(&limit_config(&b, ok)).unwrap();
    }
}

// ---------------------------------------------------------------------------
// JWKS over HTTP, rotated under a running gateway
// ---------------------------------------------------------------------------

struct JwksServer {
    addr: SocketAddr,
    doc: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(doc: String) -> JwksServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(doc));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (d, f) = (doc.clone(), fetches.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let _ = c.set_read_timeout(Some(IO_TIMEOUT));
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while find(&buf, b"\r\n\r\n").is_none() {
                    match c.read(&mut tmp) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                if !buf.starts_with(b"GET /keys.json ") {
                    let _ = c.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                f.fetch_add(1, Ordering::SeqCst);
                let body = d.lock().unwrap().clone();
                // Chunked, to exercise the fetcher's decoder.
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes());
            }
        });
        JwksServer { addr, doc, fetches }
    }

    fn set(&self, doc: String) {
        *self.doc.lock().unwrap() = doc;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn jwks_config(b: &Backend, s: &JwksServer, min_refresh: u64) -> String {
    base(b)
        + &format!(
            r#"
[auth.jwt]
algorithms = ["ES256", "RS256"]
jwks_url = "http://{}/keys.json"
jwks_refresh_s = 3600
jwks_min_refresh_s = {min_refresh}
issuer = "{ISS}"
audience = ["{AUD}"]
"#,
            s.addr
        )
}

#[test]
fn jwks_url_rotated_during_the_test() {
    env();
    let k1 = ec_key(false);
    let k2 = rsa_key("rsa_b");
    let s = JwksServer::start(jwks(&[(&k1, "key-1")]));
    let b = Backend::start();
    let g = gateway(&jwks_config(&b, &s, 0));
    assert_eq!(s.fetches(), 1, "fetched once at start");
    let t1 = sign(Algorithm::ES256, &k1.enc, &claims("rosa"), Some("key-1"));
    let r = get_bearer(g.addr, "/jwt", &t1);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(get_bearer(g.addr, "/jwt", &t1).status, 200, "cached");

    // Rotate: key-1 is withdrawn, key-2 (RSA) published.
    s.set(jwks(&[(&k2, "key-2")]));
    let t2 = sign(Algorithm::RS256, &k2.enc, &claims("sam"), Some("key-2"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first = None;
    let r = loop {
        let r = get_bearer(g.addr, "/jwt", &t2);
        first.get_or_insert(r.status);
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(r.status, 200, "the new kid was never accepted: {r:?}");
    assert_eq!(r.echoed("X-User-Id").as_deref(), Some("sam"));
    assert!(s.fetches() >= 2, "the unknown kid caused a refetch");
    // The withdrawn key no longer verifies, cached or not.
    let r = get_bearer(g.addr, "/jwt", &t1);
    assert_invalid_token(&r, "withdrawn key");
    assert_eq!(description(&r), "the token's key id is unknown");
    let hits = b.hits();
    assert_eq!(hits, 3);
}

/// A reload that changes only a route keeps auth as it runs: no JWKS
/// refetch, and a token validated before the reload is still accepted even
/// though the identity provider now serves garbage. (Every reload used to
/// rebuild auth, refetch the keys and drop each worker's token cache, so an
/// unrelated route change during an IdP outage turned valid tokens into
/// 401s.) Which reloads keep auth is decided by comparing the parsed
/// `[auth]` and `[[consumers]]` sections.
#[test]
fn a_route_only_reload_keeps_auth_state() {
    env();
    let k1 = ec_key(false);
    let s = JwksServer::start(jwks(&[(&k1, "key-1")]));
    let b = Backend::start();
    let text = jwks_config(&b, &s, 0);
    let path = std::env::temp_dir().join(format!("ringgate-auth-keep-{}.toml", std::process::id()));
    std::fs::write(&path, &text).unwrap();
    let cfg = Config::load(&path).expect("config");
    let handle = Server::start_file(cfg, path.clone(), Default::default()).expect("start");
    let addr = handle.local_addrs()[0];
    assert_eq!(s.fetches(), 1, "fetched once at start");
    let t1 = sign(Algorithm::ES256, &k1.enc, &claims("rosa"), Some("key-1"));
    assert_eq!(get_bearer(addr, "/jwt", &t1).status, 200);

    // The identity provider breaks; only a route changes.
    s.set(String::from("<html>maintenance</html>"));
    std::fs::write(
        &path,
        text.clone() + "\n[[routes]]\npath = \"/added\"\nupstream = \"app\"\nauth = [\"jwt\"]\n",
    )
    .unwrap();
    let summary = handle.reload().expect("reload");
    assert!(
        summary.contains("auth kept with its keys and token caches"),
        "{summary}"
    );
    assert_eq!(
        get(addr, "/added", &[]).status,
        401,
        "the new route is served"
    );
    assert_eq!(s.fetches(), 1, "a route-only reload refetched the JWKS");
    for path in ["/jwt", "/added"] {
        let r = get_bearer(addr, path, &t1);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.echoed("X-User-Id").as_deref(), Some("rosa"));
    }

    // A reload that does change auth still takes effect.
    std::fs::write(
        &path,
        text.replace("jwks_refresh_s = 3600", "jwks_refresh_s = 3599"),
    )
    .unwrap();
    let summary = handle.reload().expect("reload");
    assert!(summary.contains("auth started afresh"), "{summary}");
    assert_eq!(s.fetches(), 2, "changed auth starts afresh");
    let _ = std::fs::remove_file(&path);
}

/// A reload keeps auth only when nothing it was built from changed: the
/// `[auth]` text is the same here, but the key file it names now holds
/// another key, and the reload applies it (tokens of the old key are
/// refused, those of the new one accepted). Unchanged sections alone once
/// decided, so rotating a key file by reloading was silently ignored.
#[test]
fn a_reload_applies_a_rotated_key_file_under_unchanged_auth() {
    env();
    let (k1, k2) = (ec_key(false), ec_key(false));
    let file = tmp_file("rotated.pub.pem", &k1.public_pem);
    let b = Backend::start();
    let text = base(&b)
        + &format!(
            r#"
[auth.jwt]
algorithms = ["ES256"]
public_key_file = "{file}"
issuer = "{ISS}"
audience = ["{AUD}"]
"#
        );
    let path =
        std::env::temp_dir().join(format!("ringgate-auth-rotate-{}.toml", std::process::id()));
    std::fs::write(&path, &text).unwrap();
    let cfg = Config::load(&path).expect("config");
    let handle = Server::start_file(cfg, path.clone(), Default::default()).expect("start");
    let addr = handle.local_addrs()[0];
    let t1 = sign(Algorithm::ES256, &k1.enc, &claims("rosa"), None);
    let t2 = sign(Algorithm::ES256, &k2.enc, &claims("sam"), None);
    assert_eq!(get_bearer(addr, "/jwt", &t1).status, 200);
    assert_invalid_token(&get_bearer(addr, "/jwt", &t2), "not yet the key");

    std::fs::write(&file, &k2.public_pem).unwrap();
    let summary = handle.reload().expect("reload");
    assert!(summary.contains("auth started afresh"), "{summary}");
    assert_invalid_token(&get_bearer(addr, "/jwt", &t1), "the rotated-out key");
    let r = get_bearer(addr, "/jwt", &t2);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed("X-User-Id").as_deref(), Some("sam"));

    // Reloading again with nothing changed keeps it.
    let summary = handle.reload().expect("reload");
    assert!(
        summary.contains("auth kept with its keys and token caches"),
        "{summary}"
    );
    assert_eq!(get_bearer(addr, "/jwt", &t2).status, 200);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn jwks_unknown_kid_refetch_is_rate_limited() {
    env();
    let k1 = ec_key(false);
    let s = JwksServer::start(jwks(&[(&k1, "key-1")]));
    let b = Backend::start();
    let g = gateway(&jwks_config(&b, &s, 3600));
    assert_eq!(s.fetches(), 1);
    let stranger = ec_key(false);
    for i in 0..20 {
        let t = sign(
            Algorithm::ES256,
            &stranger.enc,
            &claims("t"),
            Some(&format!("unknown-{i}")),
        );
        assert_invalid_token(&get_bearer(g.addr, "/jwt", &t), "unknown kid");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.fetches(),
        1,
        "unknown kids within jwks_min_refresh_s cause no fetch"
    );
    assert_eq!(b.hits(), 0);
}

#[test]
fn jwks_url_down_at_start_keeps_serving_other_keys() {
    env();
    // A port with nothing listening.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let b = Backend::start();
    let cfg = base(&b)
        + &format!(
            r#"
[auth.jwt]
algorithms = ["RS256"]
public_key_file = "{}"
jwks_url = "http://{dead}/keys.json"
issuer = "{ISS}"
audience = ["{AUD}"]
"#,
            data("rsa_a.pub.pem")
        );
    let g = gateway(&cfg);
    let rsa = rsa_key("rsa_a");
    let r = get_bearer(
        g.addr,
        "/jwt",
        &sign(Algorithm::RS256, &rsa.enc, &claims("uma"), None),
    );
    assert_eq!(r.status, 200, "{r:?}");
}

// ---------------------------------------------------------------------------
// hide_credentials: the credential used is not forwarded
// ---------------------------------------------------------------------------

/// Every token source and both API key sources; per method a route that
/// hides the credential, one with `hide_credentials = false` and one
/// without the key; `/hide/any` takes either method, `/hide/tx` also has a
/// request transform that rewrites the target.
fn hide_config(up: &support::MockUpstream) -> String {
    let mut t = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n\n[upstreams.app]\ntargets = [\"{}\"]\n",
        up.addr
    );
    for (path, auth, extra) in [
        ("/hide/jwt", "\"jwt\"", "hide_credentials = true"),
        ("/keep/jwt", "\"jwt\"", "hide_credentials = false"),
        ("/default/jwt", "\"jwt\"", ""),
        ("/hide/key", "\"api_key\"", "hide_credentials = true"),
        ("/keep/key", "\"api_key\"", "hide_credentials = false"),
        ("/default/key", "\"api_key\"", ""),
        (
            "/hide/any",
            "\"jwt\", \"api_key\"",
            "hide_credentials = true",
        ),
        (
            "/hide/tx",
            "\"api_key\"",
            "hide_credentials = true\ntransform = { add_prefix = \"/api\", query = { add = { source = \"gw\" } } }",
        ),
    ] {
        t += &format!(
            "\n[[routes]]\npath = \"{path}\"\nupstream = \"app\"\nauth = [{auth}]\n{extra}\n"
        );
    }
    t + &hs_jwt("RG_AUTH_T_HIDE")
        + "token_header = \"X-Access-Token\"\ntoken_query = \"access_token\"\ntoken_cookie = \"session\"\n"
        + "\n[auth.api_key]\nquery = \"api_key\"\n"
        + &consumers()
}

/// Sends a GET through the gateway and returns the request the backend
/// received (after checking the caller was authenticated).
fn received(
    g: &Gateway,
    up: &support::MockUpstream,
    path: &str,
    headers: &[(&str, &str)],
) -> support::Request {
    let before = up.hits();
    let r = get(g.addr, path, headers);
    assert_eq!(r.status, 200, "{path}: {r:?}");
    assert_eq!(up.hits(), before + 1, "{path}");
    let req = up.last();
    assert!(req.header("X-User-Id").is_some(), "{path}: {req:?}");
    req
}

/// The headers and cookies every hide test sends besides the credential.
const OTHER: (&str, &str) = ("X-Other", "kept");

#[test]
fn hide_credentials_bearer_header() {
    env();
    let up = support::MockUpstream::builder().start();
    let g = gateway(&hide_config(&up));
    let t = hs(&claims("hana"));
    let auth = bearer(&t);
    let headers = [
        ("Authorization", auth.as_str()),
        OTHER,
        ("Cookie", "theme=dark"),
    ];

    let r = received(&g, &up, "/hide/jwt?a=1&b=2", &headers);
    assert!(!r.has_header("Authorization"), "{}", r.head_str());
    assert!(!r.head_str().contains(&t), "{}", r.head_str());
    assert_eq!(r.target, "/hide/jwt?a=1&b=2");
    assert_eq!(r.header("X-Other"), Some("kept"));
    assert_eq!(r.header("Cookie"), Some("theme=dark"));
    assert_eq!(r.header("X-User-Id"), Some("hana"));
    assert_eq!(r.header("X-Auth-Method"), Some("jwt"));

    for path in ["/keep/jwt?a=1&b=2", "/default/jwt?a=1&b=2"] {
        let r = received(&g, &up, path, &headers);
        assert_eq!(r.header("Authorization"), Some(auth.as_str()), "{path}");
        assert_eq!(r.target, path);
        assert_eq!(r.header("X-Other"), Some("kept"), "{path}");
        assert_eq!(r.header("Cookie"), Some("theme=dark"), "{path}");
    }

    // The token in its own header is hidden the same way.
    let r = received(&g, &up, "/hide/jwt", &[("X-Access-Token", &t), OTHER]);
    assert!(!r.has_header("X-Access-Token"), "{}", r.head_str());
    assert_eq!(r.header("X-Other"), Some("kept"));
    let r = received(&g, &up, "/keep/jwt", &[("X-Access-Token", &t), OTHER]);
    assert_eq!(r.header("X-Access-Token"), Some(t.as_str()));
}

#[test]
fn hide_credentials_api_key_header() {
    env();
    let up = support::MockUpstream::builder().start();
    let g = gateway(&hide_config(&up));
    let headers = [("X-API-Key", "acme-key-1"), OTHER, ("Cookie", "theme=dark")];

    let r = received(&g, &up, "/hide/key?a=1", &headers);
    assert!(!r.has_header("X-API-Key"), "{}", r.head_str());
    assert!(!r.head_str().contains("acme-key-1"), "{}", r.head_str());
    assert_eq!(r.target, "/hide/key?a=1");
    assert_eq!(r.header("X-Other"), Some("kept"));
    assert_eq!(r.header("Cookie"), Some("theme=dark"));
    assert_eq!(r.header("X-Consumer-Id"), Some("acme"));

    for path in ["/keep/key?a=1", "/default/key?a=1"] {
        let r = received(&g, &up, path, &headers);
        assert_eq!(r.header("X-API-Key"), Some("acme-key-1"), "{path}");
        assert_eq!(r.target, path);
        assert_eq!(r.header("X-Other"), Some("kept"), "{path}");
    }

    // Only the credential that authenticated the request is hidden: on a
    // route taking either method the JWT is checked first, so the API key
    // sent alongside it reaches the backend.
    let t = hs(&claims("hana"));
    let both = [
        ("Authorization", &bearer(&t)[..]),
        ("X-API-Key", "acme-key-1"),
    ];
    let r = received(&g, &up, "/hide/any", &both);
    assert_eq!(r.header("X-Auth-Method"), Some("jwt"));
    assert!(!r.has_header("Authorization"), "{}", r.head_str());
    assert_eq!(r.header("X-API-Key"), Some("acme-key-1"));
    let r = received(
        &g,
        &up,
        "/hide/any",
        &[both[1], ("Authorization", "Basic eDp5")],
    );
    assert_eq!(r.header("X-Auth-Method"), Some("api_key"));
    assert!(!r.has_header("X-API-Key"), "{}", r.head_str());
    assert_eq!(r.header("Authorization"), Some("Basic eDp5"));
}

#[test]
fn hide_credentials_query_parameter() {
    env();
    let up = support::MockUpstream::builder().start();
    let g = gateway(&hide_config(&up));
    // API key in the query: the parameter goes, the others stay in order.
    for (sent, forwarded) in [
        ("/hide/key?a=1&api_key=acme-key-1&b=2", "/hide/key?a=1&b=2"),
        ("/hide/key?api_key=acme-key-1&a=1&b=2", "/hide/key?a=1&b=2"),
        ("/hide/key?b=2&a=1&api_key=acme-key-1", "/hide/key?b=2&a=1"),
        ("/hide/key?api_key=acme-key-1", "/hide/key"),
        (
            "/hide/key?api_key=acme-key-1&x=api_key&api_key=acme-key-1",
            "/hide/key?x=api_key",
        ),
        // After a request transform that rewrites the target.
        (
            "/hide/tx?a=1&api_key=acme-key-1",
            "/api/hide/tx?a=1&source=gw",
        ),
    ] {
        let r = received(&g, &up, sent, &[OTHER]);
        assert_eq!(r.target, forwarded, "{sent}");
        assert_eq!(r.header("X-Other"), Some("kept"), "{sent}");
        assert_eq!(r.header("X-Consumer-Id"), Some("acme"), "{sent}");
    }
    for sent in [
        "/keep/key?a=1&api_key=acme-key-1&b=2",
        "/default/key?a=1&api_key=acme-key-1&b=2",
    ] {
        let r = received(&g, &up, sent, &[OTHER]);
        assert_eq!(r.target, sent);
    }

    // A JWT in the query.
    let t = hs(&claims("hana"));
    let r = received(
        &g,
        &up,
        &format!("/hide/jwt?a=1&access_token={t}&b=2"),
        &[OTHER],
    );
    assert_eq!(r.target, "/hide/jwt?a=1&b=2");
    assert_eq!(r.header("X-User-Id"), Some("hana"));
    let sent = format!("/keep/jwt?a=1&access_token={t}&b=2");
    assert_eq!(received(&g, &up, &sent, &[OTHER]).target, sent);

    // An absolute-form target and pipelined keep-alive requests: the cut
    // is made in the client's buffer, and the request behind it is intact.
    let mut c = support::Client::connect(g.addr);
    c.send(
        "GET http://test/hide/key?api_key=acme-key-1&a=1 HTTP/1.1\r\nHost: test\r\nX-Other: kept\r\n\r\n\
         GET /keep/key?api_key=basic-key-2&b=2 HTTP/1.1\r\nHost: test\r\nCookie: session=x\r\n\r\n\
         GET /hide/key?z=9&api_key=basic-key-2 HTTP/1.1\r\nHost: test\r\n\r\n",
    );
    for _ in 0..3 {
        assert_eq!(c.read_response().status, 200);
    }
    let reqs = up.requests();
    let last3: Vec<_> = reqs[reqs.len() - 3..].iter().collect();
    assert_eq!(last3[0].target, "/hide/key?a=1");
    assert_eq!(last3[0].header("X-Forwarded-Host"), Some("test"));
    assert_eq!(last3[0].header("X-Other"), Some("kept"));
    assert_eq!(last3[1].target, "/keep/key?api_key=basic-key-2&b=2");
    assert_eq!(last3[1].header("Cookie"), Some("session=x"));
    assert_eq!(last3[1].header("X-Consumer-Id"), Some("basic-co"));
    assert_eq!(last3[2].target, "/hide/key?z=9");
}

#[test]
fn hide_credentials_cookie() {
    env();
    let up = support::MockUpstream::builder().start();
    let g = gateway(&hide_config(&up));
    let t = hs(&claims("hana"));
    for (sent, forwarded) in [
        (
            format!("theme=dark; session={t}; lang=en"),
            Some("theme=dark; lang=en"),
        ),
        (format!("session={t}; lang=en"), Some("lang=en")),
        (format!("theme=dark;session=\"{t}\""), Some("theme=dark")),
        (format!("session={t}"), None),
    ] {
        let r = received(&g, &up, "/hide/jwt?a=1", &[("Cookie", &sent), OTHER]);
        assert_eq!(r.header("Cookie"), forwarded, "{sent}");
        assert!(!r.head_str().contains(&t), "{}", r.head_str());
        assert_eq!(r.target, "/hide/jwt?a=1");
        assert_eq!(r.header("X-Other"), Some("kept"), "{sent}");
        assert_eq!(r.header("X-User-Id"), Some("hana"), "{sent}");
    }
    // Other Cookie lines are left alone.
    let r = received(
        &g,
        &up,
        "/hide/jwt",
        &[
            ("Cookie", "theme=dark"),
            ("Cookie", &format!("session={t}; lang=en")),
        ],
    );
    assert_eq!(r.header_all("Cookie"), ["theme=dark", "lang=en"]);

    let sent = format!("theme=dark; session={t}; lang=en");
    for path in ["/keep/jwt", "/default/jwt"] {
        let r = received(&g, &up, path, &[("Cookie", &sent), OTHER]);
        assert_eq!(r.header("Cookie"), Some(sent.as_str()), "{path}");
        assert_eq!(r.header("X-Other"), Some("kept"), "{path}");
    }
}

#[test]
fn hide_credentials_config_errors() {
    let route = "[[routes]]\npath = \"/a\"\nupstream = \"app\"\nauth = [\"jwt\"]\n";
    let jwt = "[auth.jwt]\nalgorithms = [\"HS256\"]\nsecret_env = \"RG_AUTH_T_CONFIG\"\n";
    // A wrong type is named by the TOML layer, key and line.
    let errs = config_errors(&format!("{MIN}{route}hide_credentials = \"yes\"\n{jwt}"));
    let e = errs
        .iter()
        .find(|e| e.key.starts_with("routes[0].hide_credentials"))
        .unwrap_or_else(|| panic!("no error names hide_credentials: {errs:#?}"));
    assert!(e.message.contains("expected a boolean"), "{e:#?}");
    assert!(e.key.contains("(line 9)"), "{e:#?}");
    assert!(!e.fix.is_empty());

    // Nothing to hide on a public route.
    let errs = config_errors(&format!(
        "{MIN}[[routes]]\npath = \"/a\"\nupstream = \"app\"\nhide_credentials = true\n"
    ));
    assert_error(&errs, "routes[0].hide_credentials", "no auth key");

    env();
    for v in ["true", "false"] {
        Config::parse(&format!("{MIN}{route}hide_credentials = {v}\n{jwt}")).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Config errors name the key and the fix
// ---------------------------------------------------------------------------

fn config_errors(toml: &str) -> Vec<ringgate::config::ConfigError> {
    env();
    match Config::parse(toml) {
        Ok(_) => panic!("config accepted:\n{toml}"),
        Err(e) => e.0,
    }
}

fn assert_error(errs: &[ringgate::config::ConfigError], key: &str, needle: &str) {
    let e = errs
        .iter()
        .find(|e| e.key == key && e.message.contains(needle))
        .unwrap_or_else(|| panic!("no error for {key} saying {needle:?}; got {errs:#?}"));
    assert!(!e.fix.is_empty(), "{key}: no fix");
}

const MIN: &str =
    "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\ntargets = [\"127.0.0.1:9\"]\n";

#[test]
fn config_errors_name_the_key_and_fix() {
    let errs = config_errors(&format!(
        "{MIN}[[routes]]\npath = \"/a\"\nupstream = \"app\"\n[[routes]]\npath = \"/b\"\nupstream = \"app\"\n[[routes]]\npath = \"/c\"\nupstream = \"app\"\nauth = [\"jwt\"]\n"
    ));
    assert_error(&errs, "routes[2].auth", "no [auth.jwt]");

    let errs = config_errors(&format!(
        "{MIN}[[routes]]\npath = \"/a\"\nupstream = \"app\"\nauth = [\"api_key\", \"magic\"]\n"
    ));
    assert_error(&errs, "routes[0].auth", "api_key_sha256");
    assert!(errs.iter().any(|e| e.message.contains("\"magic\"")));

    let errs = config_errors(&format!(
        "{MIN}[[routes]]\npath = \"/a\"\nupstream = \"app\"\nroles = [\"admin\"]\n"
    ));
    assert_error(&errs, "routes[0].roles", "no auth");

    let route = "[[routes]]\npath = \"/a\"\nupstream = \"app\"\nauth = [\"jwt\"]\n";
    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"HS256\", \"none\", \"hs512\"]\nsecret_env = \"RG_AUTH_T_CONFIG\"\n"
    ));
    assert_error(&errs, "auth.jwt.algorithms", "\"none\"");
    assert_error(&errs, "auth.jwt.algorithms", "unknown algorithm \"hs512\"");

    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"HS256\"]\nsecret_env = \"RG_AUTH_T_DEFINITELY_UNSET\"\n"
    ));
    assert_error(
        &errs,
        "auth.jwt.secret_env",
        "RG_AUTH_T_DEFINITELY_UNSET is not set",
    );
    // The route does not pile on a second error: [auth.jwt] exists.
    assert!(!errs.iter().any(|e| e.key == "routes[0].auth"), "{errs:#?}");

    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"HS256\"]\nsecret_env = \"RG_AUTH_T_SHORT\"\n"
    ));
    assert_error(&errs, "auth.jwt.secret_env", "9 bytes");

    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"RS256\"]\n"
    ));
    assert_error(&errs, "auth.jwt.algorithms", "no public key");

    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"ES256\"]\npublic_key_file = \"{}\"\n",
        data("rsa_a.pub.pem")
    ));
    assert_error(&errs, "auth.jwt.public_key_file", "RSA key");

    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n",
        data("rsa_a.pem")
    ));
    assert_error(&errs, "auth.jwt.public_key_file", "private key");

    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"RS256\"]\npublic_key_file = \"/nonexistent/key.pem\"\n"
    ));
    assert_error(&errs, "auth.jwt.public_key_file", "cannot read");

    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"RS256\"]\njwks_url = \"ftp://idp.example/jwks\"\n"
    ));
    assert_error(&errs, "auth.jwt.jwks_url", "https://");

    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"RS256\"]\njwks_url = \"https://idp.example/jwks\"\njwks_ca_file = \"/nonexistent/ca.pem\"\n"
    ));
    assert_error(&errs, "auth.jwt.jwks_ca_file", "cannot read");

    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"RS256\"]\njwks_url = \"http://idp.example/jwks\"\njwks_ca_file = \"/etc/hostname\"\n"
    ));
    assert_error(&errs, "auth.jwt.jwks_ca_file", "https");

    let errs = config_errors(&format!(
        "{MIN}[[routes]]\npath = \"/a\"\nupstream = \"app\"\nauth = [\"api_key\"]\n[[consumers]]\nid = \"acme\"\napi_key_sha256 = \"xyz\"\n[[consumers]]\nid = \"acme\"\napi_key_sha256 = \"{}\"\ntier = \"a\\nb\"\n",
        sha_hex("k")
    ));
    assert_error(&errs, "consumers[0].api_key_sha256", "64 hex digits");
    assert_error(&errs, "consumers[1].id", "already");
    assert_error(&errs, "consumers[1].tier", "control characters");

    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n[auth.token_endpoint]\npath = \"/t\"\n[[consumers]]\nid = \"acme\"\napi_key_sha256 = \"{}\"\n",
        data("rsa_a.pub.pem"),
        sha_hex("k")
    ));
    assert_error(&errs, "auth.token_endpoint", "no signing key");

    let errs = config_errors(&format!(
        "{MIN}[[routes]]\npath = \"/a\"\nupstream = \"app\"\n[auth.token_endpoint]\n[[consumers]]\nid = \"acme\"\napi_key_sha256 = \"{}\"\n",
        sha_hex("k")
    ));
    assert_error(&errs, "auth.token_endpoint", "no [auth.jwt]");

    // Unknown keys are named by the TOML layer.
    let errs = config_errors(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"HS256\"]\nsecret_env = \"RG_AUTH_T_CONFIG\"\nleeway = 5\n"
    ));
    assert!(errs[0].message.contains("leeway"), "{errs:#?}");

    // And a good one passes.
    env();
    Config::parse(&format!(
        "{MIN}{route}[auth.jwt]\nalgorithms = [\"HS256\"]\nsecret_env = \"RG_AUTH_T_CONFIG\"\n"
    ))
    .unwrap();
}

// ---------------------------------------------------------------------------
// JWKS over https
// ---------------------------------------------------------------------------

/// A private CA and a `localhost` server certificate it signed: the CA's
/// PEM and the server's TLS settings.
fn private_ca_server() -> (String, Arc<rustls::ServerConfig>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "ringgate test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = rcgen::CertificateParams::new(vec![String::from("localhost")]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

/// Serves `doc` at `GET /keys.json` over TLS; counts the requests that got
/// through the handshake.
fn https_jwks_server(tls: Arc<rustls::ServerConfig>, doc: String) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(tcp) = c else { return };
            let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
            let conn = rustls::ServerConnection::new(tls.clone()).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            while find(&buf, b"\r\n\r\n").is_none() {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            if !buf.starts_with(b"GET /keys.json ") {
                continue; // the handshake failed, or another path
            }
            f.fetch_add(1, Ordering::SeqCst);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{doc}",
                doc.len()
            );
            let _ = s.write_all(resp.as_bytes());
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    });
    (port, fetches)
}

fn https_jwks_config(b: &Backend, port: u16, ca_file: Option<&std::path::Path>) -> String {
    let ca = ca_file.map_or(String::new(), |p| {
        format!("jwks_ca_file = \"{}\"\n", p.display())
    });
    base(b)
        + &format!(
            r#"
[auth.jwt]
algorithms = ["ES256"]
jwks_url = "https://localhost:{port}/keys.json"
{ca}issuer = "{ISS}"
audience = ["{AUD}"]
"#
        )
}

/// A JWKS on an https server whose certificate a private CA signed: with
/// that CA in `jwks_ca_file` the keys are fetched and tokens verify;
/// without it the certificate is not trusted, nothing is fetched, and the
/// same token gets 401.
#[test]
fn jwks_url_over_https_with_a_private_ca() {
    env();
    let k = ec_key(false);
    let (ca_pem, tls) = private_ca_server();
    let (port, fetches) = https_jwks_server(tls, jwks(&[(&k, "key-1")]));
    let dir = std::env::temp_dir().join(format!("ringgate-auth-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let b = Backend::start();
    let t = sign(Algorithm::ES256, &k.enc, &claims("rosa"), Some("key-1"));

    let g = gateway(&https_jwks_config(&b, port, Some(&ca_file)));
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "fetched once at start, over TLS"
    );
    let r = get_bearer(g.addr, "/jwt", &t);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed("X-User-Id").as_deref(), Some("rosa"));

    let untrusted = gateway(&https_jwks_config(&b, port, None));
    let r = get_bearer(untrusted.addr, "/jwt", &t);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "no request is sent to a server whose certificate is not trusted"
    );
    assert_eq!(b.hits(), 1);
}

/// With `hide_credentials`, a credential sent in the query string is not
/// written to the access log either (the target is logged as forwarded);
/// routes without it log the target as received, with the key's value
/// redacted.
#[test]
fn hide_credentials_keeps_a_query_key_out_of_the_access_log() {
    env();
    let up = support::MockUpstream::builder().start();
    let dir = std::env::temp_dir().join(format!("ringgate-auth-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let _ = std::fs::remove_file(&log);
    let toml =
        hide_config(&up) + &format!("\n[log]\naccess = \"json\"\npath = \"{}\"\n", log.display());
    let cfg = Config::parse(&toml).unwrap_or_else(|e| panic!("config refused:\n{e}"));
    let mut handle = Server::start(cfg).expect("gateway start");
    let addr = handle.local_addrs()[0];
    for path in [
        "/hide/key?a=1&api_key=acme-key-1",
        "/keep/key?a=1&api_key=acme-key-1",
    ] {
        let mut c = support::Client::connect(addr);
        assert_eq!(c.get(path).status, 200, "{path}");
    }
    handle.shutdown(); // flushes the workers' log buffers
    std::thread::sleep(Duration::from_millis(200));
    let text = std::fs::read_to_string(&log).unwrap();
    let paths: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(paths.contains(&String::from("/hide/key?a=1")), "{text}");
    assert!(
        paths.contains(&String::from("/keep/key?a=1&api_key=REDACTED")),
        "{text}"
    );
    assert!(!text.contains("/hide/key?a=1&api_key"), "{text}");
    assert!(!text.contains("acme-key-1"), "{text}");
}
