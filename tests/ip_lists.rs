//! IP allow and deny lists over real sockets: clients bound to other
//! 127.0.0.0/8 addresses and to `::1` (the gateway listens on both),
//! route and `[server]` lists combined (deny wins, every allow list set
//! must hold the client), `X-Forwarded-For` honoured only from a trusted
//! proxy, the 403 JSON body, the order against CORS and auth, and config
//! errors that name the key and the fix.
//!
//! Every refusal is also checked to have never reached the backend (the
//! mock counts the requests it receives).

mod support;

use std::net::{IpAddr, SocketAddr, TcpStream};
use support::{BIN, Client, Gateway, MockUpstream, Response, assert_json_error, sha_hex};

fn gateway(backend: &MockUpstream, server: &str, rest: &str) -> Gateway {
    Gateway::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\", \"[::1]:0\"]\nworkers = 2\npin = false\n\
         drain_timeout_ms = 2000\n{server}\n\n[upstreams.b]\ntargets = [\"{}\"]\n{rest}",
        backend.addr
    ))
}

/// The gateway's address in `ip`'s family.
fn addr_for(gw: &Gateway, ip: IpAddr) -> SocketAddr {
    *gw.handle
        .local_addrs()
        .iter()
        .find(|a| a.is_ipv4() == ip.is_ipv4())
        .expect("a listener of that family")
}

/// One request from source address `src` (127.0.0.0/8 or ::1).
fn from(gw: &Gateway, src: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let src: IpAddr = src.parse().unwrap();
    let dst = addr_for(gw, src);
    let domain = if src.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(src, 0).into()).unwrap();
    s.connect(&dst.into()).unwrap();
    let stream: TcpStream = s.into();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    Client::from_stream(stream).request(req)
}

fn route(path: &str, extra: &str) -> String {
    format!("\n[[routes]]\npath = \"{path}\"\nupstream = \"b\"\n{extra}\n")
}

/// A route's allow list lets its ranges in and refuses everyone else with
/// the gateway's 403 JSON error; its deny list refuses its ranges.
#[test]
fn route_allow_and_deny_v4() {
    let b = MockUpstream::builder().start();
    let gw = gateway(
        &b,
        "",
        &(route("/allow", "ip_allow = [\"127.0.0.2/32\", \"127.0.1.0/24\"]")
            + &route("/deny", "ip_deny = [\"127.0.0.3\"]")
            + &route("/open", "")),
    );
    assert_eq!(from(&gw, "127.0.0.2", "/allow", &[]).status, 200);
    assert_eq!(from(&gw, "127.0.1.77", "/allow", &[]).status, 200);
    let r = from(&gw, "127.0.0.1", "/allow", &[]);
    assert_json_error(&r, 403);
    assert_eq!(
        r.json()["error"].as_str(),
        Some("the client address is not allowed on this route")
    );
    assert_eq!(
        r.json()["request_id"].as_str(),
        r.header("x-request-id"),
        "{r:?}"
    );
    assert_eq!(b.hits(), 2);
    assert_json_error(&from(&gw, "127.0.0.3", "/deny", &[]), 403);
    assert_eq!(from(&gw, "127.0.0.4", "/deny", &[]).status, 200);
    assert_eq!(from(&gw, "127.0.0.3", "/open", &[]).status, 200);
    assert_eq!(b.hits(), 4);
}

/// IPv6 clients are matched against IPv6 ranges (and not against IPv4
/// ones); both families in one list.
#[test]
fn route_allow_and_deny_v6() {
    let b = MockUpstream::builder().start();
    let gw = gateway(
        &b,
        "",
        &(route("/v6", "ip_allow = [\"::1/128\"]")
            + &route(
                "/both",
                "ip_allow = [\"2001:db8::/32\", \"127.0.0.0/8\", \"::1\"]",
            )
            + &route("/deny6", "ip_deny = [\"::/0\"]")),
    );
    assert_eq!(from(&gw, "::1", "/v6", &[]).status, 200);
    assert_json_error(&from(&gw, "127.0.0.1", "/v6", &[]), 403);
    assert_eq!(from(&gw, "::1", "/both", &[]).status, 200);
    assert_eq!(from(&gw, "127.0.0.9", "/both", &[]).status, 200);
    assert_json_error(&from(&gw, "::1", "/deny6", &[]), 403);
    assert_eq!(
        from(&gw, "127.0.0.1", "/deny6", &[]).status,
        200,
        "::/0 holds no IPv4 client"
    );
    assert_eq!(b.hits(), 4);
}

/// `[server]` lists apply to every route: a global deny wins over a
/// route's allow, and a route's allow narrows the global allow.
#[test]
fn global_and_route_lists_combine() {
    let b = MockUpstream::builder().start();
    let gw = gateway(
        &b,
        "ip_allow = [\"127.0.0.0/24\", \"::1\"]\nip_deny = [\"127.0.0.4\"]",
        &(route("/narrow", "ip_allow = [\"127.0.0.2/31\", \"127.0.5.0/24\"]")
            + &route("/wide", "ip_allow = [\"127.0.0.0/8\"]")
            + &route("/plain", "")),
    );
    assert_eq!(from(&gw, "127.0.0.2", "/narrow", &[]).status, 200);
    assert_json_error(&from(&gw, "127.0.0.1", "/narrow", &[]), 403);
    // In the route's list but not in the global one.
    assert_json_error(&from(&gw, "127.0.5.1", "/narrow", &[]), 403);
    assert_json_error(&from(&gw, "127.0.5.1", "/wide", &[]), 403);
    // The global deny wins over the route's allow.
    assert_json_error(&from(&gw, "127.0.0.4", "/wide", &[]), 403);
    assert_json_error(&from(&gw, "127.0.0.4", "/plain", &[]), 403);
    assert_eq!(from(&gw, "127.0.0.1", "/plain", &[]).status, 200);
    assert_eq!(from(&gw, "::1", "/plain", &[]).status, 200);
    assert_eq!(b.hits(), 3);
}

/// `X-Forwarded-For` names the client only when the peer is one of
/// `server.trusted_proxies`; from anyone else it is ignored (the peer is
/// the client), so it cannot be used to get past a list.
#[test]
fn forwarded_for_only_from_trusted_proxies() {
    let b = MockUpstream::builder().start();
    let gw = gateway(
        &b,
        "trusted_proxies = [\"127.0.0.1\"]",
        &(route("/deny", "ip_deny = [\"203.0.113.0/24\"]")
            + &route("/allow", "ip_allow = [\"198.51.100.0/24\"]")),
    );
    let xff = |v| [("X-Forwarded-For", v)];
    // From the trusted proxy: the forwarded client decides.
    assert_json_error(&from(&gw, "127.0.0.1", "/deny", &xff("203.0.113.7")), 403);
    assert_eq!(
        from(&gw, "127.0.0.1", "/deny", &xff("192.0.2.1")).status,
        200
    );
    assert_eq!(
        from(&gw, "127.0.0.1", "/allow", &xff("198.51.100.9")).status,
        200
    );
    assert_json_error(&from(&gw, "127.0.0.1", "/allow", &xff("192.0.2.1")), 403);
    // The rightmost untrusted hop is the client.
    assert_json_error(
        &from(&gw, "127.0.0.1", "/allow", &xff("198.51.100.9, 192.0.2.1")),
        403,
    );
    // A forwarded entry that is not an address fails closed.
    assert_json_error(&from(&gw, "127.0.0.1", "/deny", &xff("unknown")), 403);
    // From an untrusted peer the header is ignored.
    assert_eq!(
        from(&gw, "127.0.0.2", "/deny", &xff("203.0.113.7")).status,
        200
    );
    assert_json_error(&from(&gw, "127.0.0.2", "/allow", &xff("198.51.100.9")), 403);
    assert_eq!(b.hits(), 3);
}

/// IP lists run first: a refused client gets 403 before auth would say
/// 401 and before CORS answers a preflight (and without CORS headers).
#[test]
fn lists_run_before_cors_and_auth() {
    let b = MockUpstream::builder().start();
    let gw = gateway(
        &b,
        "",
        &format!(
            "[cors]\norigins = [\"https://app.example.com\"]\n\n\
             [auth.api_key]\nheader = \"X-API-Key\"\n\n\
             [[consumers]]\nid = \"acme\"\napi_key_sha256 = \"{}\"\n{}",
            sha_hex("key-1"),
            route(
                "/private",
                "auth = [\"api_key\"]\nmethods = [\"GET\"]\nip_deny = [\"127.0.0.3\"]"
            )
        ),
    );
    let origin = ("Origin", "https://app.example.com");
    let refused = from(&gw, "127.0.0.3", "/private", &[origin]);
    assert_json_error(&refused, 403);
    assert!(refused.header("access-control-allow-origin").is_none());
    assert_json_error(&from(&gw, "127.0.0.1", "/private", &[origin]), 401);
    assert_eq!(
        from(
            &gw,
            "127.0.0.1",
            "/private",
            &[origin, ("X-API-Key", "key-1")]
        )
        .status,
        200
    );
    assert_json_error(
        &from(
            &gw,
            "127.0.0.3",
            "/private",
            &[origin, ("X-API-Key", "key-1")],
        ),
        403,
    );
    // A preflight from a refused client is refused by the list too.
    let s = "127.0.0.3".parse::<IpAddr>().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(s, 0).into()).unwrap();
    sock.connect(&addr_for(&gw, s).into()).unwrap();
    let p = Client::from_stream(sock.into()).request(
        "OPTIONS /private HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example.com\r\n\
         Access-Control-Request-Method: GET\r\n\r\n",
    );
    assert_json_error(&p, 403);
    assert!(p.header("access-control-allow-origin").is_none(), "{p:?}");
    let ok = from(&gw, "127.0.0.1", "/private", &[origin]);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(b.hits(), 1);
}

/// Invalid ranges and empty lists are config errors naming the key, the
/// bad value and the fix.
#[test]
fn config_errors() {
    let dir = std::env::temp_dir().join(format!("ringgate-ip-lists-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("bad.toml");
    std::fs::write(
        &p,
        "[server]\nip_allow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\nip_deny = [\"fe80::/129\"]\n\n\
         [upstreams.b]\ntargets = [\"127.0.0.1:9\"]\n\n\
         [[routes]]\npath = \"/\"\nupstream = \"b\"\nip_allow = []\nip_deny = [\"localhost\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    for want in [
        "server.ip_allow: \"10.0.0.0/33\" is not an address or CIDR range (fix: write an address or a CIDR range",
        "server.ip_deny: \"fe80::/129\" is not an address or CIDR range",
        "routes[0].ip_allow: the list is empty, so no client could pass (fix: ",
        "routes[0].ip_deny: \"localhost\" is not an address or CIDR range",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    assert!(
        e.starts_with(&format!("{}: 4 error(s)", p.display())),
        "{e}"
    );
}
