//! What bad input gets: a raw TCP client matrix. Each case asserts the exact
//! status, the JSON error body, that the connection is closed afterwards and
//! that the backend never saw the request.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

fn setup(server: &[&str]) -> (MockUpstream, Gateway) {
    let up = MockUpstream::builder().respond(200, "ok").start();
    let mut cfg = GatewayConfig::simple(&[up.addr]);
    for s in server {
        cfg = cfg.server(s);
    }
    let gw = cfg.start();
    (up, gw)
}

/// The request for assertion messages (long ones cut).
fn show(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    if s.chars().count() > 160 {
        let cut: String = s.chars().take(160).collect();
        format!("{cut:?}... ({} bytes)", raw.len())
    } else {
        format!("{s:?}")
    }
}

/// Sends `raw` on a fresh connection; asserts the JSON error `status`, that
/// the connection closes and that the backend was not reached.
#[track_caller]
fn refused(up: &MockUpstream, gw: &Gateway, raw: &[u8], status: u16) -> Response {
    let mut c = gw.client();
    c.send(raw);
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("no response to {}: {e}", show(raw)));
    assert_eq!(r.status, status, "for {}: {r:?}", show(raw));
    assert_json_error(&r, status);
    // A real request id, the same in the header and the body (a refused
    // head used to answer with `-`).
    let rid = r.json()["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        rid.len() == 32 && rid.bytes().all(|b| b.is_ascii_hexdigit()),
        "request id {rid:?}"
    );
    assert_eq!(r.header("x-request-id"), Some(rid.as_str()));
    assert!(r.says_close(), "error response should close: {r:?}");
    c.assert_closed();
    assert_eq!(up.hits(), 0, "the backend saw {}", show(raw));
    r
}

/// The gateway still serves a good request.
#[track_caller]
fn still_serves(gw: &Gateway) {
    let r = gw.get("/fine");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "ok");
}

#[test]
fn content_length_and_transfer_encoding() {
    let (up, gw) = setup(&[]);
    refused(
        &up,
        &gw,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
    refused(
        &up,
        &gw,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    );
    still_serves(&gw);
}

#[test]
fn differing_content_lengths() {
    let (up, gw) = setup(&[]);
    refused(
        &up,
        &gw,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    );
    refused(
        &up,
        &gw,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd",
        400,
    );
    still_serves(&gw);
}

#[test]
fn invalid_content_length() {
    let (up, gw) = setup(&[]);
    for v in ["-1", "abc", "1 2", "+3", "0x10", ""] {
        refused(
            &up,
            &gw,
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\nabc").as_bytes(),
            400,
        );
    }
    still_serves(&gw);
}

#[test]
fn unsupported_transfer_codings() {
    let (up, gw) = setup(&[]);
    for te in [
        "gzip",
        "chunked, gzip",
        "chunked, chunked",
        "identity, gzip",
    ] {
        refused(
            &up,
            &gw,
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n")
                .as_bytes(),
            400,
        );
    }
    still_serves(&gw);
}

#[test]
fn invalid_chunk_size() {
    let (up, gw) = setup(&[]);
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "-1\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
    ] {
        let mut c = gw.client();
        c.send(format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        ));
        let r = c.read_response();
        assert_json_error(&r, 400);
        c.assert_closed();
    }
    // The head may be forwarded before the body is seen; a complete
    // request never is.
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    // Sent in one write with the head, the body is checked before anything
    // reaches the backend.
    assert_eq!(up.hits(), 0);
    still_serves(&gw);
}

#[test]
fn invalid_chunk_size_after_head_was_forwarded() {
    let (up, gw) = setup(&[]);
    let mut c = gw.client();
    c.send("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    // Let the head go upstream first.
    assert!(up.wait_hits(1));
    c.send("5\r\nhello\r\nnot-hex\r\n");
    let r = c.read_response();
    assert_json_error(&r, 400);
    c.assert_closed();
    assert!(up.requests().is_empty());
    still_serves(&gw);
}

#[test]
fn obsolete_line_folding() {
    let (up, gw) = setup(&[]);
    refused(
        &up,
        &gw,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n",
        400,
    );
    refused(
        &up,
        &gw,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n\tb\r\n\r\n",
        400,
    );
    still_serves(&gw);
}

#[test]
fn bare_cr_in_header() {
    let (up, gw) = setup(&[]);
    refused(
        &up,
        &gw,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        400,
    );
    refused(
        &up,
        &gw,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rX-B: b\r\n\r\n",
        400,
    );
    still_serves(&gw);
}

#[test]
fn malformed_request_lines() {
    let (up, gw) = setup(&[]);
    let cases: [&[u8]; 6] = [
        b"GET/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / FTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xab\xcd\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x00\x00\x00\r\n\r\n",
        b"GET  / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    ];
    for raw in cases {
        refused(&up, &gw, raw, 400);
    }
    still_serves(&gw);
}

/// HTTP/2.0 and later on an HTTP/1 connection get 505, not 400; 1.x
/// above 1.1 is served as 1.1. The HTTP/2 connection preface opens an
/// HTTP/2 connection (prior knowledge), or gets 505 with HTTP/2 off.
#[test]
fn newer_http_versions() {
    let (up, gw) = setup(&[]);
    for raw in [
        &b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/3.0\r\nHost: x\r\n\r\n",
    ] {
        refused(&up, &gw, raw, 505);
    }
    let mut c = gw.client();
    let r = c.request("GET /v12 HTTP/1.2\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.hits(), 1);
    still_serves(&gw);

    // The preface: the server's SETTINGS frame answers it (a frame header
    // of type 4 on stream 0), and nothing reaches the backend.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let mut frame = [0u8; 9];
    s.read_exact(&mut frame).unwrap();
    assert_eq!(frame[3], 4, "a SETTINGS frame: {frame:?}");
    assert_eq!(&frame[5..9], &[0, 0, 0, 0], "on stream 0: {frame:?}");
    assert_eq!(up.hits(), 2, "the preface reached no backend");

    let (up, gw) = setup(&["http2 = { enabled = false }"]);
    refused(&up, &gw, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505);
    still_serves(&gw);
}

#[test]
fn http11_without_host() {
    let (up, gw) = setup(&[]);
    refused(&up, &gw, b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400);
    refused(
        &up,
        &gw,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        400,
    );
    still_serves(&gw);
}

#[test]
fn dot_segments() {
    let (up, gw) = setup(&[]);
    for p in ["/a/../b", "/a/./b", "/..", "/a/%2e%2e/b", "/a/%2E/b"] {
        refused(
            &up,
            &gw,
            format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            400,
        );
    }
    still_serves(&gw);
}

#[test]
fn complete_head_larger_than_max_header_bytes() {
    let (up, gw) = setup(&["max_header_bytes = 1024"]);
    let big = "v".repeat(3000);
    refused(
        &up,
        &gw,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        431,
    );
    still_serves(&gw);
}

#[test]
fn streamed_head_larger_than_max_header_bytes() {
    let (up, gw) = setup(&["max_header_bytes = 1024"]);
    let mut c = gw.client();
    c.send("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        // The gateway may answer and close before every line is sent.
        if c.try_send(format!("X-Fill-{i}: {}\r\n", "f".repeat(100)))
            .is_err()
        {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    let r = c.read_response();
    assert_json_error(&r, 431);
    c.assert_closed();
    assert_eq!(up.hits(), 0);
    still_serves(&gw);
}

#[test]
fn too_many_headers() {
    let (up, gw) = setup(&["max_headers = 10"]);
    let mut raw = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..20 {
        raw.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    raw.push_str("\r\n");
    refused(&up, &gw, raw.as_bytes(), 431);
    // Exactly at the limit is fine.
    let mut raw = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..9 {
        raw.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    raw.push_str("\r\n");
    let r = gw.client().request(raw);
    assert_eq!(r.status, 200);
}

#[test]
fn uri_too_long() {
    let (up, gw) = setup(&["max_uri_bytes = 100"]);
    let long = format!("/{}", "a".repeat(200));
    refused(
        &up,
        &gw,
        format!("GET {long} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        414,
    );
    let ok = format!("/{}", "a".repeat(99));
    assert_eq!(gw.get(&ok).status, 200);
}

#[test]
fn content_length_above_max_body_bytes() {
    let (up, gw) = setup(&["max_body_bytes = 1000"]);
    refused(
        &up,
        &gw,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n",
        413,
    );
    // At the limit is fine.
    let body = "b".repeat(1000);
    let r = gw.client().request(format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{body}"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body.len(), 1000);
}

#[test]
fn chunked_body_above_max_body_bytes() {
    let (up, gw) = setup(&["max_body_bytes = 1000"]);
    let chunk = "c".repeat(600);
    // Sent with the head: refused before the backend is involved.
    refused(
        &up,
        &gw,
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
        )
        .as_bytes(),
        413,
    );
    still_serves(&gw);
}

#[test]
fn chunked_body_above_max_body_bytes_streamed() {
    let (up, gw) = setup(&["max_body_bytes = 1000"]);
    let chunk = "c".repeat(600);
    let mut c = gw.client();
    c.send("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(up.wait_hits(1));
    c.send(format!("258\r\n{chunk}\r\n"));
    let _ = c.try_send(format!("258\r\n{chunk}\r\n"));
    let r = c.read_response();
    assert_json_error(&r, 413);
    c.assert_closed();
    assert!(up.requests().is_empty(), "the backend got a whole request");
    still_serves(&gw);
}

#[test]
fn incomplete_head_times_out_with_408() {
    let (up, gw) = setup(&["header_timeout_ms = 300"]);
    let mut c = gw.client();
    c.send("GET / HTTP/1.1\r\nHost: x\r\n");
    let r = c.read_response();
    assert_json_error(&r, 408);
    c.assert_closed();
    assert_eq!(up.hits(), 0);
    still_serves(&gw);
}

#[test]
fn silent_connection_times_out_with_408() {
    let (up, gw) = setup(&["header_timeout_ms = 300"]);
    let mut c = gw.client();
    let r = c.read_response();
    assert_json_error(&r, 408);
    c.assert_closed();
    assert_eq!(up.hits(), 0);
}

#[test]
fn idle_keep_alive_connection_closed() {
    let (up, gw) = setup(&["idle_timeout_ms = 300"]);
    let mut c = gw.client();
    assert_eq!(c.get("/one").status, 200);
    assert_eq!(c.get("/two").status, 200);
    c.assert_closed();
    assert_eq!(up.hits(), 2);
    still_serves(&gw);
}

#[test]
fn connections_above_max_connections_get_503() {
    const MAX: usize = 4;
    const WORKERS: usize = 2;
    const FLOOD: usize = 200;
    let (up, gw) = setup(&["max_connections = 4"]);
    let mut socks: Vec<TcpStream> = (0..FLOOD)
        .map(|_| TcpStream::connect(gw.addr).expect("connect"))
        .collect();
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    // Collect what each connection receives until the refused ones are done.
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); FLOOD];
    let mut eof = [false; FLOOD];
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && eof.iter().filter(|e| **e).count() < FLOOD - MAX * WORKERS {
        for (i, s) in socks.iter_mut().enumerate() {
            if eof[i] {
                continue;
            }
            let mut b = [0u8; 1024];
            match s.read(&mut b) {
                Ok(0) => eof[i] = true,
                Ok(n) => got[i].extend_from_slice(&b[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => eof[i] = true,
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    let refused: Vec<usize> = (0..FLOOD).filter(|&i| eof[i]).collect();
    let accepted: Vec<usize> = (0..FLOOD).filter(|&i| !eof[i]).collect();
    assert_eq!(
        refused.len(),
        FLOOD - MAX * WORKERS,
        "expected {} refused connections",
        FLOOD - MAX * WORKERS
    );
    for &i in &refused {
        let text = String::from_utf8_lossy(&got[i]).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
        assert!(
            head.starts_with("HTTP/1.1 503 "),
            "refused connection got {text:?}"
        );
        assert!(head.contains("Content-Type: application/json"), "{head}");
        let j: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(j["status"], 503);
        let rid = j["request_id"].as_str().unwrap_or_default();
        assert!(
            rid.len() == 32 && head.contains(&format!("X-Request-Id: {rid}\r\n")),
            "{text}"
        );
    }
    assert_eq!(up.hits(), 0);
    // The accepted connections are served while the flood is held open.
    for &i in &accepted {
        assert!(got[i].is_empty());
        let mut c = Client::from_stream(socks[i].try_clone().unwrap());
        let r = c.get("/held");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(up.hits(), accepted.len());
    // Once the flood is gone, new connections are served again.
    socks.clear();
    let end = Instant::now() + Duration::from_secs(5);
    let mut ok = 0;
    while Instant::now() < end && ok < 10 {
        match Client::connect(gw.addr).try_read_after_get("/after") {
            Some(200) => ok += 1,
            _ => thread::sleep(Duration::from_millis(20)),
        }
    }
    assert_eq!(ok, 10, "new connections were not served after the flood");
}

trait TryGet {
    fn try_read_after_get(self, path: &str) -> Option<u16>;
}

impl TryGet for Client {
    fn try_read_after_get(mut self, path: &str) -> Option<u16> {
        self.try_send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
            .ok()?;
        self.try_read_response().ok().map(|r| r.status)
    }
}

#[test]
fn unsupported_expectation_gets_417() {
    let (up, gw) = setup(&[]);
    refused(
        &up,
        &gw,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: something-else\r\n\r\nhello",
        417,
    );
    still_serves(&gw);
}

#[test]
fn smuggled_request_in_body_never_reaches_backend() {
    let (up, gw) = setup(&[]);
    refused(
        &up,
        &gw,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
    );
    still_serves(&gw);
    assert!(
        up.requests().iter().all(|r| r.target != "/hidden"),
        "the hidden request reached the backend"
    );
    assert_eq!(up.hits(), 1);
}

#[test]
fn smuggled_request_after_lf_only_chunk_terminator() {
    let (up, gw) = setup(&[]);
    let mut c = gw.client();
    c.send(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let r = c.read_response();
    assert_json_error(&r, 400);
    c.assert_closed();
    assert!(up.requests().iter().all(|r| r.target != "/hidden"));
}

#[test]
fn error_body_is_json_with_request_id() {
    let (up, gw) = setup(&[]);
    let r = refused(&up, &gw, b"GET /a/../b HTTP/1.1\r\nHost: x\r\n\r\n", 400);
    let j = r.json();
    assert!(j["error"].is_string(), "{j}");
    assert_eq!(j["status"], 400);
    assert!(j["request_id"].is_string(), "{j}");
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
}

/// A client still sending a body the gateway refused on its head (413:
/// `Content-Length` above `max_body_bytes`) reads the whole answer and a
/// clean end of the connection: the gateway half-closes and drops what
/// the client still sends, instead of closing with the body unread, which
/// made the kernel answer with a reset.
#[test]
fn refused_body_still_being_sent_gets_the_answer_then_a_clean_close() {
    use std::io::{Read, Write};
    let (up, gw) = setup(&["max_body_bytes = 1000"]);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n")
        .unwrap();
    // The body goes on from another thread while this one reads.
    let writer = write_behind(s.try_clone().unwrap(), vec![b'b'; 1 << 20]);
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(
        end.is_ok(),
        "the connection ended with {end:?} (a reset), after {text:?}"
    );
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text:?}"
    );
    let sent = writer.join().unwrap();
    assert_eq!(
        sent,
        1 << 20,
        "the gateway stopped taking the client's bytes before it closed"
    );
    assert_eq!(up.hits(), 0);
    still_serves(&gw);
}

/// The same with curl, uploading 8 MiB without `Expect: 100-continue`:
/// every try ends with the 413, none with curl's "send failure" (exit 55)
/// or "recv failure" (exit 56).
#[test]
fn curl_uploading_a_refused_body_gets_the_413() {
    let ok = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`curl` is needed by this test: install the Debian package curl"
    );
    let (up, gw) = setup(&["max_body_bytes = 1000"]);
    let dir = std::env::temp_dir().join(format!("ringgate-linger-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("body.bin");
    std::fs::write(&file, vec![b'u'; 8 << 20]).unwrap();
    for i in 0..10 {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Expect:",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("http://{}/up{i}", gw.addr))
            .output()
            .unwrap();
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string()
            ),
            (Some(0), "413".to_string()),
            "try {i}: curl {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(up.hits(), 0);
}
