//! `ringgate demo`: built-in demo services on loopback and a gateway config
//! in front of them, so a first `curl` works without any file.
//!
//! The services are small blocking HTTP/1.1 servers on their own threads
//! (thread per connection, keep-alive, Content-Length bodies): they are
//! demo backends, not part of the gateway's request path.

use crate::config::Config;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// A running demo service.
pub struct DemoService {
    /// Service name.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
}

type Handler = fn(&str, &str, &[u8], SocketAddr) -> (u16, &'static str, String);

fn products(method: &str, path: &str, _body: &[u8], me: SocketAddr) -> (u16, &'static str, String) {
    match (method, path.strip_prefix("/products/")) {
        ("GET", Some(id)) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => (
            200,
            "application/json",
            format!(
                "{{\"id\":{id},\"name\":\"Widget {id}\",\"description\":\"A fine widget\",\"served_by\":\"{me}\"}}\n"
            ),
        ),
        ("GET", Some(_)) => (
            404,
            "application/json",
            String::from("{\"error\":\"no such product\"}\n"),
        ),
        _ => (
            404,
            "application/json",
            String::from("{\"error\":\"not found\"}\n"),
        ),
    }
}

fn echo(method: &str, path: &str, body: &[u8], _me: SocketAddr) -> (u16, &'static str, String) {
    (
        200,
        "application/json",
        format!(
            "{{\"method\":\"{method}\",\"path\":\"{}\",\"body_bytes\":{}}}\n",
            path.replace('"', "%22"),
            body.len()
        ),
    )
}

fn hello(_m: &str, _p: &str, _b: &[u8], _me: SocketAddr) -> (u16, &'static str, String) {
    (
        200,
        "text/plain",
        String::from("hello from ringgate demo\n"),
    )
}

fn spawn_service(name: &'static str, handler: Handler) -> std::io::Result<DemoService> {
    let l = TcpListener::bind("127.0.0.1:0")?;
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
            "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{}\r\n{}",
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

/// Starts the demo services and returns the gateway config for them.
pub fn start(listen: &str) -> Result<(Config, Vec<DemoService>), String> {
    let services = vec![
        spawn_service("products-a", products).map_err(|e| e.to_string())?,
        spawn_service("products-b", products).map_err(|e| e.to_string())?,
        spawn_service("echo", echo).map_err(|e| e.to_string())?,
        spawn_service("hello", hello).map_err(|e| e.to_string())?,
    ];
    let toml = format!(
        r#"
[server]
listen = "{listen}"
workers = 0

[upstreams.products]
targets = ["{}", "{}"]
balance = "round_robin"

[upstreams.echo]
targets = ["{}"]

[upstreams.hello]
targets = ["{}"]

[[routes]]
name = "products"
path = "/products/{{id}}"
methods = ["GET", "HEAD"]
upstream = "products"

[[routes]]
name = "echo"
path = "/echo/{{*rest}}"
upstream = "echo"

[[routes]]
name = "hello"
path = "/"
methods = ["GET", "HEAD"]
upstream = "hello"
"#,
        services[0].addr, services[1].addr, services[2].addr, services[3].addr
    );
    let cfg = Config::parse(&toml).map_err(|e| e.to_string())?;
    Ok((cfg, services))
}

/// Prints what is running and the commands to try.
pub fn print_tour(cfg: &Config, services: &[DemoService]) {
    let gw = cfg.server.listen[0];
    println!("ringgate demo: gateway on http://{gw}");
    for s in services {
        println!("  demo service {:<11} on {}", s.name, s.addr);
    }
    println!("\nTry:");
    println!("  curl -i http://{gw}/");
    println!("  curl -i http://{gw}/products/42        # round robin over two instances");
    println!("  curl -i -X POST -d 'hi' http://{gw}/echo/anything");
    println!("  curl -i -X DELETE http://{gw}/products/42   # 405 with Allow");
    println!("  curl -i http://{gw}/nowhere            # 404, JSON error body");
    println!("\nCtrl-C drains in-flight requests and stops.");
}
