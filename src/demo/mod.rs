//! `ringgate demo`: the tour. Built-in product, pricing, inventory and
//! reviews services on loopback and a gateway in front of them configured
//! by `config/demo.toml` (compiled in), so a first `curl` works without any
//! file: composition with a partial answer, a transform, two API versions
//! (by header and by path), a cached route, a rate-limited route and a
//! JWT-protected route with the token endpoint; and the admin API with its
//! live dashboard (`/dashboard`) on 127.0.0.1:9901.
//!
//! The services are small blocking HTTP/1.1 servers on their own threads
//! (thread per connection, keep-alive, Content-Length bodies): they are
//! demo backends, not part of the gateway's request path. Pricing is slow
//! (2 s) for product ids ending in 7; inventory answers `/v1/stock/{id}`
//! and `/v2/stock/{id}` in two shapes.

pub mod tls;

use crate::config::Config;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// The gateway config of the demo (`config/demo.toml`).
pub const DEMO_TOML: &str = include_str!("../../config/demo.toml");

/// Where the demo's admin API listens (`config/demo.toml`), unless taken.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// Environment variable holding the demo's JWT secret.
pub const SECRET_ENV: &str = "RINGGATE_DEMO_JWT_SECRET";

/// A running demo service.
pub struct DemoService {
    /// Service name.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
}

type Handler = fn(&str, &str, &[u8], SocketAddr) -> (u16, &'static str, String);

fn json(status: u16, body: String) -> (u16, &'static str, String) {
    (status, "application/json", body)
}

fn not_found() -> (u16, &'static str, String) {
    json(404, String::from("{\"error\":\"not found\"}\n"))
}

/// The numeric id after `prefix`, if the path is `prefix{id}`.
fn id_after<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let id = path.split('?').next()?.strip_prefix(prefix)?;
    (!id.is_empty() && id.len() < 10 && id.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

fn products(method: &str, path: &str, _body: &[u8], me: SocketAddr) -> (u16, &'static str, String) {
    match (method, id_after(path, "/products/")) {
        ("GET" | "HEAD", Some(id)) => json(
            200,
            format!(
                "{{\"id\":{id},\"name\":\"Widget {id}\",\"description\":\"A fine widget\",\"internal_sku\":\"WX-{id}\",\"served_by\":\"{me}\"}}\n"
            ),
        ),
        _ => not_found(),
    }
}

fn pricing(method: &str, path: &str, _body: &[u8], _me: SocketAddr) -> (u16, &'static str, String) {
    match (method, id_after(path, "/prices/")) {
        ("GET" | "HEAD", Some(id)) => {
            if id.ends_with('7') {
                std::thread::sleep(Duration::from_secs(2));
            }
            let n: u64 = id.parse().unwrap_or(0);
            json(
                200,
                format!(
                    "{{\"id\":{id},\"price\":{}.99,\"currency\":\"EUR\",\"cost\":{}.10}}\n",
                    10 + n % 90,
                    5 + n % 40
                ),
            )
        }
        _ => not_found(),
    }
}

fn inventory(
    method: &str,
    path: &str,
    _body: &[u8],
    _me: SocketAddr,
) -> (u16, &'static str, String) {
    if method != "GET" && method != "HEAD" {
        return not_found();
    }
    if let Some(id) = id_after(path, "/v1/stock/") {
        let n: u64 = id.parse().unwrap_or(0);
        return json(
            200,
            format!(
                "{{\"id\":{id},\"in_stock\":true,\"quantity\":{}}}\n",
                n % 13 + 1
            ),
        );
    }
    if let Some(id) = id_after(path, "/v2/stock/") {
        let n: u64 = id.parse().unwrap_or(0);
        let (a, b) = (n % 7 + 1, n % 6);
        return json(
            200,
            format!(
                "{{\"id\":{id},\"available\":{},\"warehouses\":[{{\"name\":\"north\",\"quantity\":{a}}},{{\"name\":\"south\",\"quantity\":{b}}}]}}\n",
                a + b
            ),
        );
    }
    not_found()
}

fn reviews(method: &str, path: &str, _body: &[u8], _me: SocketAddr) -> (u16, &'static str, String) {
    match (method, id_after(path, "/reviews/")) {
        ("GET" | "HEAD", Some(_)) => json(
            200,
            String::from(
                "[{\"stars\":5,\"text\":\"Does what it says\"},{\"stars\":4,\"text\":\"Solid\"}]\n",
            ),
        ),
        _ => not_found(),
    }
}

fn spawn_service(
    name: &'static str,
    preferred: &str,
    handler: Handler,
) -> std::io::Result<DemoService> {
    // The port config/demo.toml names, or any free one when it is taken.
    let l = TcpListener::bind(preferred).or_else(|_| TcpListener::bind("127.0.0.1:0"))?;
    let addr = l.local_addr()?;
    std::thread::Builder::new()
        .name(format!("demo-{name}"))
        .spawn(move || {
            for s in l.incoming().flatten() {
                let _ = std::thread::Builder::new()
                    .name(format!("demo-{name}-conn"))
                    .spawn(move || serve_conn(s, handler, addr));
            }
        })?;
    Ok(DemoService { name, addr })
}

fn serve_conn(mut s: TcpStream, handler: Handler, me: SocketAddr) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(8192);
    let mut tmp = [0u8; 8192];
    loop {
        // Parse one request (head + Content-Length body).
        let (method, path, head_len, body_len, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let cl = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| {
                            std::str::from_utf8(h.value)
                                .ok()?
                                .trim()
                                .parse::<usize>()
                                .ok()
                        })
                        .unwrap_or(0);
                    let close = req.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("connection")
                            && h.value.eq_ignore_ascii_case(b"close")
                    }) || req.version == Some(0);
                    break (
                        req.method.unwrap_or("").to_string(),
                        req.path.unwrap_or("").to_string(),
                        n,
                        cl,
                        close,
                    );
                }
                Ok(httparse::Status::Partial) => match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&tmp[..k]),
                },
                Err(_) => return,
            }
        };
        while buf.len() < head_len + body_len {
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&tmp[..k]),
            }
        }
        let (status, ctype, body) =
            handler(&method, &path, &buf[head_len..head_len + body_len], me);
        buf.drain(..head_len + body_len);
        let resp = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nX-Served-By: {me}\r\n{}\r\n{}",
            crate::http::reason(status),
            body.len(),
            if close { "Connection: close\r\n" } else { "" },
            if method == "HEAD" { "" } else { body.as_str() }
        );
        if s.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// The services of the demo: name, the address `config/demo.toml` gives
/// it, handler.
const SERVICES: [(&str, &str, Handler); 5] = [
    ("products-a", "127.0.0.1:18081", products),
    ("products-b", "127.0.0.1:18082", products),
    ("pricing", "127.0.0.1:18083", pricing),
    ("inventory", "127.0.0.1:18084", inventory),
    ("reviews", "127.0.0.1:18085", reviews),
];

/// Starts the demo services and returns the gateway config for them
/// (`config/demo.toml`, with the addresses of services that could not have
/// their usual port, the gateway on `listen`, and HTTPS on `tls_listen`, or
/// a free port when that one is taken, with a certificate generated now:
/// [`https_ca`] says where its CA is).
pub fn start(listen: &str, tls_listen: &str) -> Result<(Config, Vec<DemoService>), String> {
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| format!("--listen {listen:?} is not an IP:port address"))?;
    let mut tls_listen: SocketAddr = tls_listen
        .parse()
        .map_err(|_| format!("--tls-listen {tls_listen:?} is not an IP:port address"))?;
    if TcpListener::bind(tls_listen).is_err() {
        tls_listen = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?;
    }
    let cert = tls::generate(&https_dir(tls_listen))?;
    if std::env::var_os(SECRET_ENV).is_none() {
        let mut secret = [0u8; 32];
        let mut f = std::fs::File::open("/dev/urandom").map_err(|e| e.to_string())?;
        f.read_exact(&mut secret).map_err(|e| e.to_string())?;
        // SAFETY: called from `main` before the demo or the gateway start
        // any thread, so nothing reads the environment concurrently.
        unsafe { std::env::set_var(SECRET_ENV, hex::encode(secret)) };
    }
    let mut text = DEMO_TOML.to_string();
    let mut services = Vec::new();
    for (name, preferred, handler) in SERVICES {
        let s = spawn_service(name, preferred, handler).map_err(|e| e.to_string())?;
        if s.addr.to_string() != preferred {
            text = text.replace(&format!("\"{preferred}\""), &format!("\"{}\"", s.addr));
        }
        services.push(s);
    }
    // The admin port config/demo.toml names, or a free one when it is taken
    // (by another process, or a running demo: a plain bind fails even where
    // that one used SO_REUSEPORT).
    if TcpListener::bind(ADMIN_LISTEN).is_err() {
        let free = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?;
        text = text.replace(&format!("\"{ADMIN_LISTEN}\""), &format!("\"{free}\""));
    }
    text.push_str(&format!(
        "\n[[server.tls]]\nlisten = \"{tls_listen}\"\ncerts = [{{ cert = \"{}\", key = \"{}\" }}]\ndefault_cert = \"{}\"\n",
        cert.cert.display(),
        cert.key.display(),
        cert.cert.display()
    ));
    let mut cfg = Config::parse(&text).map_err(|e| e.to_string())?;
    cfg.server.listen = vec![listen];
    Ok((cfg, services))
}

/// Where the demo writes its certificate for an HTTPS listener on `addr`.
fn https_dir(addr: SocketAddr) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ringgate-demo-{}", addr.port()))
}

/// The demo's HTTPS address and the CA file that makes clients trust it.
pub fn https_ca(cfg: &Config) -> Option<(SocketAddr, std::path::PathBuf)> {
    let a = *cfg.tls.first()?.listen.first()?;
    Some((a, https_dir(a).join("ca.pem")))
}

/// Prints what is running and the commands to try.
pub fn print_tour(cfg: &Config, services: &[DemoService]) {
    let gw = cfg.server.listen[0];
    println!("ringgate demo: gateway on http://{gw} (config: config/demo.toml)");
    if let Some((a, ca)) = https_ca(cfg) {
        println!(
            "  and on https://localhost:{} (certificate generated now; its CA: {})",
            a.port(),
            ca.display()
        );
    }
    if let Some(a) = &cfg.admin {
        println!(
            "  admin API on http://{}, live dashboard: http://{}/dashboard",
            a.listen, a.listen
        );
    }
    for s in services {
        println!("  demo service {:<11} on {}", s.name, s.addr);
    }
    println!("\nTry (README.md walks through each):");
    println!("  curl -i http://{gw}/product-page/42     # four services, one JSON document");
    println!(
        "  curl -i http://{gw}/product-page/7      # pricing is slow for ids ending in 7: partial"
    );
    println!("  curl -i http://{gw}/catalog/42          # transformed: renamed and hidden fields");
    println!("  curl -i http://{gw}/inventory/42        # version 1 (default), deprecated");
    println!("  curl -i -H 'Accept-Version: 2' http://{gw}/inventory/42");
    println!("  curl -i http://{gw}/v2/inventory/42");
    println!("  curl -i http://{gw}/v3/inventory/42     # unknown version: 400");
    println!("  curl -si http://{gw}/prices/42 http://{gw}/prices/42   # cached: MISS, then HIT");
    println!("  curl -i http://{gw}/reviews/42          # 3 per 10 s, then 429");
    println!("  curl -i http://{gw}/admin/stock/42      # 401 without a token");
    println!(
        "  TOKEN=$(curl -s -u demo-client:demo-secret -d grant_type=client_credentials http://{gw}/auth/token | jq -r .access_token)"
    );
    println!("  curl -i -H \"Authorization: Bearer $TOKEN\" http://{gw}/admin/stock/42");
    if let Some((a, ca)) = https_ca(cfg) {
        println!(
            "  curl -i --cacert {} https://localhost:{}/products/42   # HTTPS, X-Forwarded-Proto: https",
            ca.display(),
            a.port()
        );
    }
    if let Some(a) = &cfg.admin {
        let a = a.listen;
        println!("\nThe admin API and its live dashboard:");
        println!("  curl -s http://{a}/metrics | grep ringgate_requests_total");
        println!("  curl -s http://{a}/stats | jq .requests   # the dashboard's JSON");
        println!("  curl -s http://{a}/upstreams | jq .");
        println!(
            "  open http://{a}/dashboard in a browser: requests, latency, upstreams, limits, cache, live"
        );
    }
    println!("\nCtrl-C drains in-flight requests and stops.");
}
