//! Backends that refuse, stall, close early, answer garbage or drop pooled
//! connections: the client gets a typed JSON error (or a retried success)
//! and the gateway keeps serving.

mod support;

use socket2::{Domain, Socket, Type};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;
use support::*;

const H: &str = "Host: test.local\r\n";

#[test]
fn refused_connection_gets_502() {
    let gw = GatewayConfig::simple(&[refused_addr()]).start();
    let r = gw.get("/x");
    assert_json_error(&r, 502);
    assert_eq!(r.json()["request_id"].as_str(), r.header("x-request-id"));
}

/// After an upstream error on a keep-alive client connection, the next
/// request on that connection is answered for itself: the failed request
/// is neither replayed upstream nor answered a second time.
#[test]
fn upstream_error_does_not_replay_the_failed_request() {
    let good = MockUpstream::builder().respond(200, "good").start();
    let closer = MockUpstream::builder().close_after_head().start();
    let garbage = MockUpstream::builder().raw(b"nonsense\r\n\r\n").start();
    let gw = GatewayConfig::new()
        .upstream("good", &[good.addr], &[])
        .upstream("refused", &[refused_addr()], &[])
        .upstream("closer", &[closer.addr], &[])
        .upstream("garbage", &[garbage.addr], &[])
        .route("/good", "good", &[])
        .route("/refused", "refused", &[])
        .route("/closer", "closer", &[])
        .route("/garbage", "garbage", &[])
        .start();
    let mut wrong = Vec::new();
    for path in ["/refused", "/closer", "/garbage"] {
        let mut c = gw.client();
        let r = c.get(path);
        assert_json_error(&r, 502);
        if r.says_close() {
            c.assert_closed();
            continue;
        }
        let r = c.get("/good");
        if (r.status, r.text().as_str()) != (200, "good") {
            wrong.push(format!("after {path}: {} {}", r.status, r.text()));
        }
    }
    assert!(
        wrong.is_empty(),
        "the next request on the connection got the failed one's answer: {wrong:#?}"
    );
    assert_eq!(closer.hits(), 1, "the failed request was replayed upstream");
    assert_eq!(
        garbage.hits(),
        1,
        "the failed request was replayed upstream"
    );
}

#[test]
fn backend_that_never_answers_gets_504() {
    let up = MockUpstream::builder().stall().start();
    let gw = GatewayConfig::new()
        .upstream("up", &[up.addr], &["request_timeout_ms = 300"])
        .route("/{*rest}", "up", &[])
        .start();
    let r = gw.get_close("/stall");
    assert_json_error(&r, 504);
    assert_eq!(up.hits(), 1, "a timed-out request must not be retried");
}

/// A try timeout shorter than the watchdog works with still ends the wait
/// for a slow answer: 40 ms against a backend that takes 400 ms gives 504,
/// while a 2 s try timeout on the same backend gets its answer.
#[test]
fn a_short_try_timeout_ends_a_slow_answer() {
    let up = MockUpstream::builder()
        .respond(200, "late")
        .latency(Duration::from_millis(400))
        .start();
    let gw = GatewayConfig::new()
        .upstream(
            "short",
            &[up.addr],
            &["try_timeout_ms = 40", "request_timeout_ms = 5000"],
        )
        .upstream(
            "long",
            &[up.addr],
            &["try_timeout_ms = 2000", "request_timeout_ms = 5000"],
        )
        .route("/short/{*rest}", "short", &[])
        .route("/long/{*rest}", "long", &[])
        .start();
    assert_json_error(&gw.get_close("/short/x"), 504);
    let r = gw.get_close("/long/x");
    assert_eq!((r.status, r.text().as_str()), (200, "late"));
}

/// A listener whose accept queue is full, so further SYNs are dropped and
/// connects hang. `None` if the kernel would not let it fill up.
fn saturated_listener() -> Option<(Socket, Vec<TcpStream>, SocketAddr)> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .ok()?;
    s.listen(1).ok()?;
    let addr = s.local_addr().ok()?.as_socket()?;
    let mut held = Vec::new();
    for _ in 0..64 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => held.push(c),
            Err(_) => return Some((s, held, addr)),
        }
    }
    None
}

#[test]
fn connect_timeout_gets_504() {
    // Linux drops SYNs to a listener whose accept queue is full; if it
    // would not fill, the test cannot make a connect hang, and fails.
    let (_listener, _held, addr) =
        saturated_listener().expect("could not fill a loopback accept queue");
    let gw = GatewayConfig::new()
        .upstream("up", &[addr], &["connect_timeout_ms = 300"])
        .route("/{*rest}", "up", &[])
        .start();
    let r = gw.get("/connect");
    assert_json_error(&r, 504);
}

#[test]
fn backend_closing_after_head_gets_502() {
    let up = MockUpstream::builder().close_after_head().start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let r = gw.get_close("/gone");
    assert_json_error(&r, 502);
    // A fresh connection that failed is not a stale pooled one: no retry.
    assert_eq!(up.hits(), 1);
}

#[test]
fn stale_pooled_connections_are_retried_for_idempotent_requests() {
    // The backend closes every connection after one response, without
    // announcing it.
    let up = MockUpstream::builder()
        .respond(200, "fresh")
        .close_after(1)
        .start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    let mut failures = Vec::new();
    for i in 0..50 {
        let r = c.get(&format!("/n/{i}"));
        if r.status != 200 || r.text() != "fresh" {
            failures.push((i, r.status, r.text()));
        }
        thread::sleep(Duration::from_millis(3));
    }
    assert!(failures.is_empty(), "client-visible failures: {failures:?}");
    assert_eq!(up.requests().len(), 50);
}

#[test]
fn dropped_pooled_connection_is_retried_for_get() {
    // Each connection answers one request; on the next one it reads the
    // head and closes: the gateway's pooled connection looked alive.
    let up = MockUpstream::builder()
        .respond(200, "fresh")
        .drop_after(1)
        .start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    for i in 0..20 {
        let r = c.get(&format!("/d/{i}"));
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.text(), "fresh");
    }
    // Every request was answered exactly once, each on a fresh connection.
    assert_eq!(up.requests().len(), 20);
    assert!(up.requests().iter().all(|r| r.index_on_conn == 0));
}

#[test]
fn post_on_dropped_pooled_connection_is_not_retried() {
    let up = MockUpstream::builder()
        .respond(200, "fresh")
        .drop_after(1)
        .start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    assert_eq!(c.get("/warm").status, 200);
    assert_eq!(up.hits(), 1);
    // `Connection: close`: nothing else may happen on this connection, so
    // any second delivery could only come from a retry.
    let r = c.request(format!(
        "POST /order HTTP/1.1\r\n{H}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    ));
    assert_json_error(&r, 502);
    c.assert_closed();
    let posts_seen = up.hits() - 1;
    assert!(
        posts_seen <= 1,
        "the POST reached the backend {posts_seen} times"
    );
    assert!(
        up.requests().iter().all(|r| r.method != "POST"),
        "the POST was sent again on a new connection"
    );
}

#[test]
fn invalid_response_gets_502() {
    for raw in [
        &b"garbage\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
    ] {
        let up = MockUpstream::builder().raw(raw).start();
        let gw = GatewayConfig::simple(&[up.addr]).start();
        let r = gw.get_close("/bad");
        assert_eq!(
            r.status,
            502,
            "for {:?}: {r:?}",
            String::from_utf8_lossy(raw)
        );
        assert_json_error(&r, 502);
        assert_eq!(up.hits(), 1);
    }
}

#[test]
fn truncated_response_body_closes_client_connection() {
    let up = MockUpstream::builder()
        .raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
        .start();
    let gw = GatewayConfig::simple(&[up.addr]).start();
    let mut c = gw.client();
    c.send(format!("GET /t HTTP/1.1\r\n{H}\r\n"));
    // The head was relayed before the body fell short: the only honest
    // signal left is closing the connection.
    match c.try_read_response() {
        Ok(r) => panic!("a truncated body was passed off as complete: {r:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
    }
}

#[test]
fn gateway_keeps_serving_after_upstream_errors() {
    let good = MockUpstream::builder().respond(200, "good").start();
    let stall = MockUpstream::builder().stall().start();
    let closer = MockUpstream::builder().close_after_head().start();
    let garbage = MockUpstream::builder().raw(b"nonsense\r\n\r\n").start();
    let gw = GatewayConfig::new()
        .upstream("good", &[good.addr], &[])
        .upstream("refused", &[refused_addr()], &[])
        .upstream("stall", &[stall.addr], &["request_timeout_ms = 300"])
        .upstream("closer", &[closer.addr], &[])
        .upstream("garbage", &[garbage.addr], &[])
        .route("/good", "good", &[])
        .route("/refused", "refused", &[])
        .route("/stall", "stall", &[])
        .route("/closer", "closer", &[])
        .route("/garbage", "garbage", &[])
        .start();
    for _ in 0..2 {
        assert_json_error(&gw.get("/refused"), 502);
        assert_json_error(&gw.get("/stall"), 504);
        assert_json_error(&gw.get("/closer"), 502);
        assert_json_error(&gw.get("/garbage"), 502);
    }
    let mut c = gw.client();
    for r in get_many(&mut c, "/good", 10) {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "good");
    }
    assert_eq!(good.hits(), 10);
}
