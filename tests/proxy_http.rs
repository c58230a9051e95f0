//! HTTP/1.1 proxying over real sockets: keep-alive, pipelining, framing,
//! header rewriting, interim responses, upgrades, balancing and routing.

mod support;

use std::time::Duration;
use support::*;

const H: &str = "Host: test.local\r\n";

#[test]
fn keep_alive_both_sides_reuses_upstream_connections() {
    let up = MockUpstream::builder().respond(200, "hello").start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    for r in get_many(&mut c, "/ka", 50) {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello");
        assert!(!r.says_close(), "{r:?}");
    }
    assert_eq!(up.hits(), 50);
    assert!(
        up.conns() <= 2,
        "50 requests on one client connection opened {} upstream connections",
        up.conns()
    );
    c.assert_open();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = MockUpstream::builder().echo().start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    c.send(format!(
        "GET /one HTTP/1.1\r\n{H}\r\nGET /two HTTP/1.1\r\n{H}\r\nGET /three HTTP/1.1\r\n{H}\r\n"
    ));
    for p in ["/one", "/two", "/three"] {
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert!(
            r.text().starts_with(&format!("GET {p} HTTP/1.1\r\n")),
            "expected {p} echoed, got {:?}",
            r.text()
        );
    }
    assert_eq!(up.hits(), 3);
    let targets: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/one", "/two", "/three"]);
}

#[test]
fn http10_client_is_closed_by_default() {
    let up = MockUpstream::builder().respond(200, "ten").start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    let r = c.request("GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ten");
    assert!(r.says_close(), "{r:?}");
    c.assert_closed();
    assert_eq!(up.hits(), 1);
    // The backend still gets a valid HTTP/1.1 request with a Host.
    let req = up.last();
    assert_eq!(req.minor, 1);
    assert!(req.has_header("host"), "{}", req.head_str());
}

#[test]
fn http10_client_with_keep_alive_stays_open() {
    let up = MockUpstream::builder().respond(200, "ten").start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    for _ in 0..3 {
        let r =
            c.request("GET /old HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ten");
        assert_eq!(r.header("connection"), Some("keep-alive"), "{r:?}");
    }
    assert_eq!(up.hits(), 3);
    c.assert_open();
}

#[test]
fn http10_client_gets_chunked_response_dechunked() {
    let up = MockUpstream::builder()
        .chunked(&["hello", " world"], &[])
        .start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    let r = c.request("GET /c HTTP/1.0\r\nHost: test.local\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(!r.chunked, "HTTP/1.0 cannot take chunked: {r:?}");
    assert_eq!(r.text(), "hello world");
    c.assert_closed();
}

#[test]
fn connection_close_from_client() {
    let up = MockUpstream::builder().respond(200, "bye").start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    let r = c.request(format!("GET /x HTTP/1.1\r\n{H}Connection: close\r\n\r\n"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "bye");
    assert!(r.says_close(), "{r:?}");
    c.assert_closed();
    assert_eq!(up.hits(), 1);
}

#[test]
fn connection_close_from_backend_does_not_close_client() {
    let up = MockUpstream::builder()
        .respond_and_close(200, "once")
        .start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    for _ in 0..3 {
        let r = c.get("/x");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "once");
    }
    assert_eq!(up.hits(), 3);
    // Each backend connection announced its close, so none was reused.
    assert_eq!(up.conns(), 3);
}

#[test]
fn content_length_request_body_forwarded() {
    let up = MockUpstream::builder().respond(201, "stored").start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    let r = c.request(format!(
        "POST /items HTTP/1.1\r\n{H}Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"
    ));
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "stored");
    let req = up.last();
    assert_eq!(req.method, "POST");
    assert_eq!(req.header("content-length"), Some("11"));
    assert_eq!(req.body, b"hello world");
    // The connection is still usable afterwards.
    assert_eq!(c.get("/after").status, 201);
}

#[test]
fn large_content_length_body_streamed_intact() {
    let up = MockUpstream::builder().respond(200, "got it").start();
    let gw = GatewayConfig::simple(&[up.addr])
        .server("buffer_bytes = 4096")
        .start();
    let body: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    let mut c = gw.client();
    c.send(format!(
        "PUT /blob HTTP/1.1\r\n{H}Content-Length: {}\r\n\r\n",
        body.len()
    ));
    c.send(&body);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "got it");
    let req = up.last();
    assert_eq!(req.body.len(), body.len());
    assert!(req.body == body, "1 MiB body corrupted on the way");
    assert_eq!(c.get("/after").status, 200);
}

/// A chunked body reaches the backend re-framed by ringgate (its own chunk
/// sizes, no extensions) with the same payload, and the trailers listed in
/// `server.forward_trailers`.
#[test]
fn chunked_request_body_with_trailers_forwarded_intact() {
    let up = MockUpstream::builder().respond(200, "chunks ok").start();
    let gw = GatewayConfig::simple(&[up.addr])
        .server("forward_trailers = [\"X-Checksum\"]")
        .start();
    let mut c = gw.client();
    let raw_body = "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n";
    let r = c.request(format!(
        "POST /up HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n{raw_body}"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "chunks ok");
    let req = up.last();
    assert_eq!(req.header("transfer-encoding"), Some("chunked"));
    assert_eq!(req.body, b"hello world");
    assert_eq!(
        req.raw_body,
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n"
    );
    assert_eq!(
        req.trailers,
        [("X-Checksum".to_string(), "abc".to_string())]
    );
    assert_eq!(c.get("/after").status, 200);
}

#[test]
fn large_chunked_body_streamed_intact() {
    let up = MockUpstream::builder().respond(200, "ok").start();
    let gw = GatewayConfig::simple(&[up.addr])
        .server("buffer_bytes = 4096")
        .server("forward_trailers = [\"x-end\"]")
        .start();
    let payload: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 7 % 253) as u8).collect();
    let mut c = gw.client();
    c.send(format!(
        "POST /big HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n"
    ));
    for part in payload.chunks(10_000) {
        let mut w = format!("{:x}\r\n", part.len()).into_bytes();
        w.extend_from_slice(part);
        w.extend_from_slice(b"\r\n");
        c.send(&w);
    }
    c.send("0\r\nX-End: 1\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let req = up.last();
    assert_eq!(req.body.len(), payload.len());
    assert!(req.body == payload, "1 MiB chunked body corrupted");
    assert_eq!(req.trailers, [("X-End".to_string(), "1".to_string())]);
    assert_eq!(c.get("/after").status, 200);
}

#[test]
fn content_length_response_body() {
    let body = "x".repeat(100_000);
    let up = MockUpstream::builder()
        .header("X-Backend", "a")
        .respond(200, &body)
        .start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    let r = c.get("/big");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("100000"));
    assert_eq!(r.header("x-backend"), Some("a"));
    assert_eq!(r.text(), body);
    assert_eq!(c.get("/again").text(), body);
}

#[test]
fn chunked_response_with_trailers_relayed() {
    let up = MockUpstream::builder()
        .chunked(&["hello", " ", "world"], &[("X-Checksum", "42")])
        .start();
    let gw = GatewayConfig::simple(&[up.addr])
        .server("forward_trailers = [\"x-checksum\"]")
        .start();
    let mut c = gw.client();
    let r = c.get("/chunked");
    assert_eq!(r.status, 200);
    assert!(r.chunked, "{r:?}");
    assert_eq!(r.text(), "hello world");
    assert_eq!(r.trailers, [("X-Checksum".to_string(), "42".to_string())]);
    // The connection (and the pooled backend connection) stay usable.
    let r = c.get("/chunked");
    assert_eq!(r.text(), "hello world");
    assert_eq!(up.conns(), 1);
}

#[test]
fn close_delimited_response_relayed_and_closed() {
    let up = MockUpstream::builder()
        .close_delimited("until the end")
        .start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    c.send(format!("GET /stream HTTP/1.1\r\n{H}\r\n"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "until the end");
    if !r.close_delimited {
        // Re-framed by the gateway: then the connection must say so.
        assert!(r.says_close() || r.chunked, "{r:?}");
    } else {
        assert!(r.says_close(), "{r:?}");
    }
}

#[test]
fn head_response_has_no_body_and_connection_stays_usable() {
    let up = MockUpstream::builder().respond(200, "body!").start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    c.send(format!("HEAD /h HTTP/1.1\r\n{H}\r\n"));
    let r = c.read_head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("5"));
    let r = c.get("/h");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body!");
    assert_eq!(up.hits(), 2);
    assert_eq!(up.requests()[0].method, "HEAD");
}

#[test]
fn no_content_204_has_no_body_and_connection_stays_usable() {
    let up = MockUpstream::builder().respond(204, "").start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    for _ in 0..3 {
        let r = c.get("/nc");
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
    }
    assert_eq!(up.hits(), 3);
    c.assert_open();
}

#[test]
fn not_modified_304_has_no_body_and_connection_stays_usable() {
    let up = MockUpstream::builder()
        .header("ETag", "\"v1\"")
        .header("Content-Length", "5")
        .respond(304, "")
        .start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    for _ in 0..3 {
        let r = c.request(format!(
            "GET /nm HTTP/1.1\r\n{H}If-None-Match: \"v1\"\r\n\r\n"
        ));
        assert_eq!(r.status, 304);
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert!(r.body.is_empty());
    }
    assert_eq!(up.hits(), 3);
    c.assert_open();
}

#[test]
fn expect_100_continue() {
    let up = MockUpstream::builder().respond(200, "continued").start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    c.send(format!(
        "POST /e HTTP/1.1\r\n{H}Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    ));
    let interim = c.read_response();
    assert_eq!(interim.status, 100);
    assert_eq!(interim.minor, 1);
    c.send("hello");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "continued");
    assert_eq!(up.last().body, b"hello");
}

#[test]
fn upgrade_tunnels_bytes_both_ways() {
    let up = MockUpstream::builder().upgrade_echo().start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    c.send(format!(
        "GET /ws HTTP/1.1\r\n{H}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ));
    let r = c.read_head_response();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert!(
        r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{r:?}"
    );
    let req = up.last();
    assert_eq!(req.header("upgrade"), Some("websocket"));
    assert!(
        req.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{}",
        req.head_str()
    );
    c.send("ping-1");
    assert_eq!(c.read_exact_raw(6), b"ping-1");
    let big = vec![b'z'; 100_000];
    c.send(&big);
    assert_eq!(c.read_exact_raw(big.len()), big);
    c.send(b"\x00\x01binary\xff");
    assert_eq!(c.read_exact_raw(9), b"\x00\x01binary\xff");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    c.assert_closed();
}

/// A tunnel with traffic stays open past `idle_timeout_ms`; one quiet in
/// both directions for that long is closed (both sides see the end).
#[test]
fn tunnels_close_after_the_idle_timeout_and_not_while_busy() {
    let up = MockUpstream::builder().upgrade_echo().start();
    let gw = GatewayConfig::simple(&[up.addr])
        .server("idle_timeout_ms = 400")
        .start();
    let open = || {
        let mut c = gw.client();
        c.send(format!(
            "GET /ws HTTP/1.1\r\n{H}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ));
        assert_eq!(c.read_head_response().status, 101);
        c
    };
    // Busy: a message every 100 ms for 1.2 s, three idle timeouts.
    let mut busy = open();
    for i in 0..12 {
        let m = format!("tick-{i:02}");
        busy.send(&m);
        assert_eq!(busy.read_exact_raw(m.len()), m.as_bytes(), "tick {i}");
        std::thread::sleep(Duration::from_millis(100));
    }
    busy.send("last");
    assert_eq!(busy.read_exact_raw(4), b"last");
    // Quiet: closed within the timeout and the watchdog's ticks.
    let started = std::time::Instant::now();
    match busy.wait_close(Duration::from_secs(5)) {
        CloseState::Closed => {}
        other => panic!("a quiet tunnel stayed open: {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "closed before the idle timeout: {waited:?}"
    );
}

/// Only the protocols a route allows by name are tunnelled (`upgrades`,
/// WebSocket by default): any other `Upgrade` is dropped and the request
/// served as plain HTTP/1.1; `h2c` can never be allowed.
#[test]
fn upgrades_other_than_websocket_only_where_the_route_allows_them() {
    let echo = MockUpstream::builder().echo().start();
    let gw = GatewayConfig::simple(&[echo.addr]).start();
    let mut c = gw.client();
    let r = c.request(format!(
        "GET /custom HTTP/1.1\r\n{H}Connection: Upgrade\r\nUpgrade: my-proto/1\r\n\r\n"
    ));
    assert_eq!(r.status, 200, "{r:?}");
    let req = echo.last();
    assert!(!req.has_header("upgrade"), "{}", req.head_str());
    // The connection stays an HTTP/1.1 one.
    assert_eq!(
        c.request(format!("GET /next HTTP/1.1\r\n{H}\r\n")).status,
        200
    );

    let up = MockUpstream::builder().upgrade_echo().start();
    let gw = GatewayConfig::new()
        .upstream("u", &[up.addr], &[])
        .route(
            "/custom",
            "u",
            &["upgrades = [\"My-Proto/1\", \"websocket\"]"],
        )
        .route("/{*rest}", "u", &[])
        .start();
    let mut c = gw.client();
    c.send(format!(
        "GET /custom HTTP/1.1\r\n{H}Connection: Upgrade\r\nUpgrade: my-proto/1\r\n\r\n"
    ));
    let r = c.read_head_response();
    assert_eq!(r.status, 101, "{r:?}");
    c.send("ping-2");
    assert_eq!(c.read_exact_raw(6), b"ping-2");
    // The other route allows WebSocket only: the backend's unasked 101 is
    // refused, nothing is tunnelled.
    let mut c = gw.client();
    c.send(format!(
        "GET /other HTTP/1.1\r\n{H}Connection: Upgrade\r\nUpgrade: my-proto/1\r\n\r\n"
    ));
    let r = c.read_response();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(!up.last().has_header("upgrade"), "{}", up.last().head_str());

    for (list, what) in [
        ("[\"h2c\"]", "never tunnelled"),
        ("[\"bad proto\"]", "not a protocol name"),
    ] {
        let err = match ringgate::config::Config::parse(&format!(
            "[upstreams.u]\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\npath = \"/\"\nupstream = \"u\"\nupgrades = {list}\n"
        )) {
            Ok(_) => panic!("upgrades = {list} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("routes[0].upgrades") && err.contains(what),
            "{err}"
        );
    }
}

#[test]
fn hop_by_hop_headers_removed() {
    let up = MockUpstream::builder().echo().start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    let r = c.request(format!(
        "GET /hop HTTP/1.1\r\n{H}Connection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Secret: hidden\r\nX-Keep: visible\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    let req = up.last();
    for h in [
        "connection",
        "keep-alive",
        "te",
        "proxy-connection",
        "x-secret",
    ] {
        assert!(
            !req.has_header(h),
            "{h} reached the backend:\n{}",
            req.head_str()
        );
    }
    assert_eq!(req.header("x-keep"), Some("visible"));
    assert_eq!(req.header("host"), Some("test.local"));
}

/// A client's `X-Forwarded-For` is extended when the peer is a trusted
/// proxy, and replaced with the peer's address otherwise (a client cannot
/// name itself someone else).
#[test]
fn forwarding_headers_added() {
    let up = MockUpstream::builder().echo().start();
    let raw = "GET /fwd HTTP/1.1\r\nHost: api.example.test\r\nX-Forwarded-For: 10.0.0.1\r\nVia: 1.1 edge\r\n\r\n";
    let untrusted = GatewayConfig::simple(&[up.addr]).start();
    assert_eq!(untrusted.client().request(raw).status, 200);
    assert_eq!(up.last().header_all("x-forwarded-for"), ["127.0.0.1"]);
    let gw = GatewayConfig::simple(&[up.addr])
        .server("trusted_proxies = [\"127.0.0.0/8\"]")
        .start();
    let mut c = gw.client();
    let r = c.request(raw);
    assert_eq!(r.status, 200);
    let req = up.last();
    assert_eq!(req.header_all("x-forwarded-for"), ["10.0.0.1, 127.0.0.1"]);
    assert_eq!(req.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(req.header_all("x-forwarded-host"), ["api.example.test"]);
    let via = req.header_all("via");
    assert_eq!(via.len(), 1, "{}", req.head_str());
    assert!(via[0].starts_with("1.1 edge, "), "{via:?}");
    assert!(via[0].contains("ringgate"), "{via:?}");
}

#[test]
fn forwarding_headers_without_client_values() {
    let up = MockUpstream::builder().echo().start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    let r = c.get("/fwd");
    assert_eq!(r.status, 200);
    let req = up.last();
    assert_eq!(req.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(req.header("x-forwarded-proto"), Some("http"));
    assert_eq!(req.header("x-forwarded-host"), Some("test.local"));
    assert!(
        req.header("via").is_some_and(|v| v.contains("ringgate")),
        "{}",
        req.head_str()
    );
}

#[test]
fn request_id_generated_when_absent() {
    let up = MockUpstream::builder().echo().start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    let r = c.get("/rid");
    assert_eq!(r.status, 200);
    let sent = up.last();
    let at_backend = sent.header_all("x-request-id");
    assert_eq!(at_backend.len(), 1, "{}", sent.head_str());
    assert!(!at_backend[0].is_empty());
    assert_eq!(r.header_all("x-request-id"), at_backend);
    // A second request gets a different id.
    let r2 = c.get("/rid");
    assert_ne!(r2.header("x-request-id"), r.header("x-request-id"));
}

#[test]
fn request_id_passed_through() {
    let up = MockUpstream::builder().echo().start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    let r = c.request(format!(
        "GET /rid HTTP/1.1\r\n{H}X-Request-Id: abc-123\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("x-request-id"), ["abc-123"]);
    assert_eq!(r.header_all("x-request-id"), ["abc-123"]);
}

#[test]
fn early_hints_103_relayed() {
    let up = MockUpstream::builder()
        .early_hints("</style.css>; rel=preload")
        .respond(200, "final")
        .start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    c.send(format!("GET /hints HTTP/1.1\r\n{H}\r\n"));
    let hints = c.read_response();
    assert_eq!(hints.status, 103);
    assert_eq!(hints.header("link"), Some("</style.css>; rel=preload"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "final");
    // The next request on the connection gets its hints and answer too.
    assert_eq!(c.get("/next").status, 103);
    assert_eq!(c.read_response().text(), "final");
}

#[test]
fn round_robin_spreads_over_two_backends() {
    let a = MockUpstream::builder().respond(200, "a").start();
    let b = MockUpstream::builder().respond(200, "b").start();
    let gw = GatewayConfig::simple(&[a.addr, b.addr]).start();
    let mut c = gw.client();
    let bodies: Vec<String> = get_many(&mut c, "/rr", 10)
        .into_iter()
        .map(|r| {
            assert_eq!(r.status, 200);
            r.text()
        })
        .collect();
    assert_eq!(a.hits() + b.hits(), 10);
    assert_eq!(a.hits(), 5, "bodies: {bodies:?}");
    assert_eq!(b.hits(), 5, "bodies: {bodies:?}");
    // Strict alternation on one worker.
    for w in bodies.windows(2) {
        assert_ne!(w[0], w[1], "{bodies:?}");
    }
}

fn routed_gateway(a: &MockUpstream, b: &MockUpstream, c: &MockUpstream) -> Gateway {
    GatewayConfig::new()
        .upstream("a", &[a.addr], &[])
        .upstream("b", &[b.addr], &[])
        .upstream("c", &[c.addr], &[])
        .route("/users/{id}", "a", &["methods = [\"GET\", \"HEAD\"]"])
        .route("/users/me", "b", &[])
        .route("/files/{*rest}", "c", &[])
        .route("/hosted", "b", &["host = \"api.example.test\""])
        .route("/hosted", "c", &[])
        .start()
}

#[test]
fn unknown_route_gets_404_json() {
    let (a, b, c) = (
        MockUpstream::builder().start(),
        MockUpstream::builder().start(),
        MockUpstream::builder().start(),
    );
    let gw = routed_gateway(&a, &b, &c);
    let mut cl = gw.client();
    let r = cl.get("/nowhere");
    assert_json_error(&r, 404);
    let j = r.json();
    assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
    assert_eq!(cl.get("/users/42/extra").status, 404);
    // The connection survives a 404.
    assert_eq!(cl.get("/users/42").status, 200);
    assert_eq!(a.hits() + b.hits() + c.hits(), 1);
}

#[test]
fn wrong_method_gets_405_with_allow() {
    let (a, b, c) = (
        MockUpstream::builder().start(),
        MockUpstream::builder().start(),
        MockUpstream::builder().start(),
    );
    let gw = routed_gateway(&a, &b, &c);
    let mut cl = gw.client();
    let r = cl.request(format!("DELETE /users/42 HTTP/1.1\r\n{H}\r\n"));
    assert_json_error(&r, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(a.hits(), 0);
    assert_eq!(cl.get("/users/42").status, 200);
    assert_eq!(a.hits(), 1);
}

#[test]
fn params_static_and_catch_all_routing() {
    let a = MockUpstream::builder().respond(200, "a").start();
    let b = MockUpstream::builder().respond(200, "b").start();
    let c = MockUpstream::builder().echo().start();
    let gw = routed_gateway(&a, &b, &c);
    let mut cl = gw.client();
    assert_eq!(cl.get("/users/42").text(), "a");
    assert_eq!(cl.get("/users/me").text(), "b");
    let r = cl.get("/files/a/b/c.txt?download=1");
    assert_eq!(r.status, 200);
    assert_eq!(c.last().target, "/files/a/b/c.txt?download=1");
    assert_eq!((a.hits(), b.hits(), c.hits()), (1, 1, 1));
}

#[test]
fn host_routing() {
    let a = MockUpstream::builder().respond(200, "a").start();
    let b = MockUpstream::builder().respond(200, "b").start();
    let c = MockUpstream::builder().respond(200, "c").start();
    let gw = routed_gateway(&a, &b, &c);
    let mut cl = gw.client();
    let r = cl.request("GET /hosted HTTP/1.1\r\nHost: api.example.test\r\n\r\n");
    assert_eq!(r.text(), "b");
    let r = cl.request("GET /hosted HTTP/1.1\r\nHost: API.Example.Test:8080\r\n\r\n");
    assert_eq!(r.text(), "b");
    let r = cl.request("GET /hosted HTTP/1.1\r\nHost: other.test\r\n\r\n");
    assert_eq!(r.text(), "c");
    assert_eq!((a.hits(), b.hits(), c.hits()), (0, 2, 1));
}

#[test]
fn slow_backend_response_still_relayed() {
    let up = MockUpstream::builder()
        .latency(Duration::from_millis(100))
        .respond(200, "late")
        .start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    assert_eq!(gw.get("/slow").text(), "late");
}
