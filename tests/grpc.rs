//! gRPC through ringgate: real gRPC clients and a real gRPC server
//! (Python grpcio, `tests/grpc/echo.py`) over h2c, the upstream declared
//! `protocol = "h2"`.
//!
//! - unary, server-streaming, client-streaming and bidirectional calls,
//!   the bidirectional one sending each message only after the echo of the
//!   one before came back (both directions stream at once);
//! - the backend's status in trailers (NOT_FOUND "nope") reaches the
//!   client; 300 concurrent calls on one channel;
//! - `grpc-timeout`: the client's deadline reaches the backend reduced,
//!   and a call past it ends DEADLINE_EXCEEDED;
//! - gRPC-Web, binary and text, from an HTTP/1.1 client: messages and
//!   the trailer frame in the body;
//! - errors ringgate makes are gRPC statuses: unauthenticated 16, rate
//!   limited 8, no upstream 14, gateway timeout 4, no route 12.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use support::*;

const ECHO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/echo.py");

/// The gRPC backend: a child process serving until dropped.
struct Backend {
    child: Child,
    addr: SocketAddr,
}

impl Backend {
    fn start() -> Backend {
        Backend::start_on(0)
    }

    /// On this port (0: any).
    fn start_on(port: u16) -> Backend {
        let mut child = Command::new("python3")
            .arg(ECHO)
            .arg("serve")
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 is installed");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
            panic!("the gRPC backend did not start (pip install grpcio): {line:?} {err}")
        });
        Backend {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client case against `addr`; its JSON line.
fn call(addr: SocketAddr, case: &str) -> Value {
    let out = Command::new("python3")
        .args([ECHO, "call", &addr.to_string(), case])
        .output()
        .expect("python3 is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{case}: {} {}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{case}: not JSON ({e}): {stdout}"))
}

/// A gateway whose every route goes to `target` over h2c, plus `rest`.
fn gateway(target: SocketAddr, upstream: &str, rest: &str) -> Gateway {
    Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\n\n\
         [upstreams.g]\ntargets = [\"{target}\"]\nprotocol = \"h2\"\n{upstream}\n{rest}\n\
         [[routes]]\nname = \"all\"\npath = \"/t.Echo/{{*m}}\"\nupstream = \"g\"\n"
    ))
}

#[test]
fn unary_and_streaming_calls_both_ways_with_trailers() {
    let be = Backend::start();
    let gw = gateway(be.addr, "", "");
    let v = call(gw.addr, "unary");
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["reply"], "olleh");
    // One request id from ringgate: the backend saw it, the client got it.
    let rid = v["initial"]["x-request-id"].as_str().unwrap_or_default();
    assert_eq!(rid.len(), 32, "{v}");
    assert_eq!(v["initial"]["x-seen-request-id"], rid);

    let v = call(gw.addr, "server-stream");
    let replies: Vec<String> = (0..50).map(|i| format!("i:{i}")).collect();
    assert_eq!(v["replies"], serde_json::json!(replies), "{v}");
    assert_eq!(v["code"], 0);

    let v = call(gw.addr, "client-stream");
    assert_eq!(v["reply"], "a+b+cccccccccccccccc", "{v}");

    let v = call(gw.addr, "bidi");
    let replies: Vec<String> = (0..20).map(|i| format!("echo:m{i}")).collect();
    assert_eq!(v["replies"], serde_json::json!(replies), "{v}");
    assert_eq!(v["sent"], 20);

    // The backend's own status, in its trailers.
    let v = call(gw.addr, "fail");
    assert_eq!(
        (v["code"].as_u64(), v["message"].as_str()),
        (Some(5), Some("nope")),
        "{v}"
    );

    let v = call(gw.addr, "many");
    assert_eq!(v["ok"], 300, "{v}");
}

#[test]
fn grpc_timeout_reaches_the_backend_reduced_and_ends_calls_past_it() {
    let be = Backend::start();
    let gw = gateway(be.addr, "", "");
    let v = call(gw.addr, "unary-deadline");
    assert_eq!(v["reply"], "cba", "{v}");
    let left: f64 = v["initial"]["x-seen-remaining"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the backend saw no deadline: {v}"));
    assert!(left > 0.0 && left <= 5.0, "{v}");
    // Without a deadline of its own, the call gets none from ringgate
    // either (the route's timeout still bounds it).
    let v = call(gw.addr, "unary");
    assert_eq!(v["initial"]["x-seen-remaining"], "-", "{v}");
    // 0.5 s against a backend that takes 3 s.
    let v = call(gw.addr, "slow");
    assert_eq!(v["code"], 4, "{v}");
}

#[test]
fn errors_ringgate_makes_are_grpc_statuses() {
    let be = Backend::start();
    let rest = format!(
        "[auth.api_key]\nheader = \"X-API-Key\"\n\n\
         [[consumers]]\nid = \"grpc-client\"\napi_key_sha256 = \"{}\"\n\n\
         [rate_limits.tiny]\nalgorithm = \"token_bucket\"\nlimit = 1\nwindow_s = 3600\nburst = 1\n\n\
         [upstreams.down]\ntargets = [\"{}\"]\nprotocol = \"h2\"\n\n\
         [upstreams.slow]\ntargets = [\"{}\"]\nprotocol = \"h2\"\nrequest_timeout_ms = 300\n\n\
         [[routes]]\nname = \"keyed\"\npath = \"/t.Echo/Unary\"\nupstream = \"g\"\nauth = [\"api_key\"]\nrate_limit = [\"tiny\"]\n\n\
         [[routes]]\nname = \"down\"\npath = \"/t.Echo/Fail\"\nupstream = \"down\"\n\n\
         [[routes]]\nname = \"slow\"\npath = \"/t.Echo/Slow\"\nupstream = \"slow\"\n",
        sha_hex("grpc-secret"),
        refused_addr(),
        be.addr,
    );
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\n\n\
         [upstreams.g]\ntargets = [\"{}\"]\nprotocol = \"h2\"\n\n{rest}",
        be.addr
    ));
    // The key is right once: the second call is over the limit.
    let v = call(gw.addr, "unary");
    assert_eq!(v["code"], 0, "{v}");
    assert_eq!(v["initial"]["x-seen-consumer"], "grpc-client", "{v}");
    let v = call(gw.addr, "unary");
    assert_eq!(v["code"], 8, "rate limited: RESOURCE_EXHAUSTED {v}");
    // Without the key.
    let v = call(gw.addr, "unary-deadline");
    assert_eq!(v["code"], 16, "UNAUTHENTICATED {v}");
    // No upstream answers.
    let v = call(gw.addr, "fail");
    assert_eq!(v["code"], 14, "UNAVAILABLE {v}");
    assert_eq!(v["message"], "upstream refused the connection", "{v}");
    // The route's upstream takes longer than its request timeout (the
    // client has no deadline of its own).
    let v = call(gw.addr, "slow-free");
    assert_eq!(v["code"], 4, "DEADLINE_EXCEEDED {v}");
    assert_eq!(
        v["message"], "upstream timed out",
        "ringgate's, not the client's {v}"
    );
    // No route.
    let v = call(gw.addr, "server-stream");
    assert_eq!(v["code"], 12, "UNIMPLEMENTED {v}");
}

/// gRPC-Web (what browser libraries send, here over HTTP/1.1): binary and
/// base64 text bodies become gRPC calls; the answer's messages and its
/// status (a trailer frame, flag 0x80) come back in the body.
#[test]
fn grpc_web_binary_and_text_become_grpc_calls() {
    let be = Backend::start();
    let gw = gateway(be.addr, "", "");
    for (case, ct) in [
        ("web", "application/grpc-web+proto"),
        ("web-text", "application/grpc-web-text+proto"),
    ] {
        let v = call(gw.addr, case);
        assert_eq!(v["status"], 200, "{v}");
        assert_eq!(v["content_type"], ct, "{v}");
        assert_eq!(v["messages"], serde_json::json!(["olleh"]), "{v}");
        assert_eq!(v["trailers"]["grpc-status"], "0", "{v}");
        assert_eq!(v["left"], 0, "{v}");
    }
    let v = call(gw.addr, "web-stream");
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(50), "{v}");
    assert_eq!(v["trailers"]["grpc-status"], "0", "{v}");
    // The backend's error: a Trailers-Only answer, its status in the body.
    let v = call(gw.addr, "web-fail");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["messages"], serde_json::json!([]), "{v}");
    assert_eq!(v["trailers"]["grpc-status"], "5", "{v}");
    assert_eq!(v["trailers"]["grpc-message"], "nope", "{v}");
}

/// gRPC health checks for HTTP/2 upstreams (`grpc_service`): a service
/// the backend serves keeps its target healthy, an unknown one marks it
/// unhealthy and calls get UNAVAILABLE; without `grpc_service`, an
/// HTTP/2 `GET path` check (a gRPC server answers it with a non-2xx).
#[test]
fn grpc_health_checks_mark_targets() {
    let be = Backend::start();
    let health = |service: &str| {
        format!(
            "[upstreams.g.health]\n{service}interval_ms = 100\ntimeout_ms = 1000\n\
             healthy_threshold = 1\nunhealthy_threshold = 1\n"
        )
    };
    let healthy = |gw: &Gateway| upstream_state(gw, "g")["targets"][0]["healthy"] == true;
    let wait = |gw: &Gateway, want: bool| {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while healthy(gw) != want {
            assert!(
                std::time::Instant::now() < end,
                "{}",
                upstream_state(gw, "g")
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };

    let gw = gateway(be.addr, &health("grpc_service = \"t.Echo\"\n"), "");
    std::thread::sleep(std::time::Duration::from_millis(500));
    wait(&gw, true);
    assert_eq!(call(gw.addr, "unary")["code"], 0);

    let gw = gateway(be.addr, &health("grpc_service = \"missing.Service\"\n"), "");
    wait(&gw, false);
    let v = call(gw.addr, "unary");
    assert_eq!(v["code"], 14, "{v}");

    // An HTTP/2 GET / to a gRPC server: not a 2xx.
    let gw = gateway(be.addr, &health(""), "");
    wait(&gw, false);

    // grpc_service on an HTTP/1 upstream is a config error naming it.
    let err = match ringgate::config::Config::parse(
        "[upstreams.u]\ntargets = [\"127.0.0.1:9\"]\n[upstreams.u.health]\ngrpc_service = \"x\"\n\
         [[routes]]\npath = \"/\"\nupstream = \"u\"\n",
    ) {
        Ok(_) => panic!("grpc_service without protocol = \"h2\" was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("upstreams.u.health.grpc_service"), "{err}");
}

/// gRPC-JSON transcoding: a descriptor set made by protoc from
/// `tests/grpc/greeter.proto` (with its `google.api.http` rules) turns
/// JSON requests into gRPC calls: a POST body, path variables (and an
/// additional binding), query parameters; gRPC errors become HTTP
/// statuses; bad JSON is a 400; bad config names the key.
#[test]
fn grpc_json_transcoding_from_a_descriptor_set() {
    let dir = std::env::temp_dir().join(format!("ringgate-grpc-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pb = dir.join("greeter.pb");
    let protoc = Command::new("protoc")
        .args(["--include_imports", "--descriptor_set_out"])
        .arg(&pb)
        .arg("-I")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc"))
        .arg("greeter.proto")
        .status();
    assert!(
        protoc.is_ok_and(|s| s.success()),
        "protoc is needed (Debian package protobuf-compiler)"
    );
    let be = Backend::start();
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\n\n\
         [upstreams.g]\ntargets = [\"{}\"]\nprotocol = \"h2\"\n\n\
         [[routes]]\nname = \"rest\"\npath = \"/v1/{{*rest}}\"\nupstream = \"g\"\n\
         grpc_json = {{ descriptor_set = \"{}\", services = [\"helloworld.Greeter\"] }}\n",
        be.addr,
        pb.display()
    ));
    let mut c = gw.client();
    let body = r#"{"name": "Ada", "times": 2}"#;
    let r = c.request(format!(
        "POST /v1/greeter/hello HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        serde_json::json!({"message": "Hello Ada", "tags": ["x", "x"], "count": "2"})
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Path variables, an additional binding, a query parameter; the same
    // connection (keep-alive after a transcoded answer).
    let r = c.request("GET /v1/users/u%2042?verbose=true HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(
        r.json(),
        serde_json::json!({"message": "user u 42", "tags": ["verbose"]}),
        "{r:?}"
    );
    let r = c.request("GET /v1/people/7 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.json()["message"], "user 7", "{r:?}");
    // The backend's NOT_FOUND is a 404 with the message.
    let r = c.request("GET /v1/missing/9 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.json()["error"], "no such user", "{r:?}");
    assert_eq!(r.json()["grpc_code"], "5", "{r:?}");
    // Bad JSON, a wrong type, a path no rule binds.
    for (req, status) in [
        ("POST /v1/greeter/hello HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n{nope".to_string(), 400),
        (
            "POST /v1/greeter/hello HTTP/1.1\r\nHost: t\r\nContent-Length: 14\r\n\r\n{\"times\": \"x\"}".to_string(),
            400,
        ),
        ("GET /v1/users/1?verbose=maybe HTTP/1.1\r\nHost: t\r\n\r\n".to_string(), 400),
        ("GET /v1/unbound HTTP/1.1\r\nHost: t\r\n\r\n".to_string(), 404),
    ] {
        let r = c.request(&req);
        assert_eq!(r.status, status, "{req}: {r:?}");
    }
    // Still serving on the same connection.
    let r = c.request("GET /v1/people/8 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");

    // A server-streaming method: a JSON array, chunked, its status in the
    // trailer fields.
    let raw = |req: &str| {
        let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let (head, body) = chunked_answer(&raw(
        "GET /v1/greetings/Ada?times=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    let (json, trailers) = body;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        serde_json::json!([
            {"message": "Hello Ada #0"},
            {"message": "Hello Ada #1", "count": "1"},
            {"message": "Hello Ada #2", "count": "2"}
        ])
    );
    assert!(trailers.contains("grpc-status: 0"), "{trailers}");
    // None: an empty array; an error before any reply: its HTTP status;
    // after replies: the array ends, the status is in the trailers.
    let r = c.request("GET /v1/greetings/Nobody HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((r.status, r.json()), (200, serde_json::json!([])), "{r:?}");
    let r = c.request("GET /v1/greetings/refuse?times=2 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["error"], "not for you", "{r:?}");
    let (head, (json, trailers)) = chunked_answer(&raw(
        "GET /v1/greetings/fail?times=2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json)
            .unwrap()
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert!(trailers.contains("grpc-status: 14"), "{trailers}");
    assert!(trailers.contains("grpc-message: went away"), "{trailers}");
    // An HTTP/1.0 client: the array, ended by the close.
    let text = raw("GET /v1/greetings/Old?times=2 HTTP/1.0\r\nHost: t\r\n\r\n");
    let (head, json) = text.split_once("\r\n\r\n").unwrap();
    assert!(!head.contains("chunked"), "{head}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(json).unwrap()[1]["message"],
        "Hello Old #1"
    );
    // Keep-alive goes on after a streamed answer.
    let r = c.request("GET /v1/greetings/Ada?times=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(
        r.json(),
        serde_json::json!([{"message": "Hello Ada #0"}]),
        "{r:?}"
    );
    let r = c.request("GET /v1/people/9 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");

    // Config errors name the key.
    for (table, what) in [
        (
            "{ descriptor_set = \"/nonexistent.pb\", services = [\"helloworld.Greeter\"] }"
                .to_string(),
            "routes[0].grpc_json.descriptor_set",
        ),
        (
            format!(
                "{{ descriptor_set = \"{}\", services = [\"no.Such\"] }}",
                pb.display()
            ),
            "routes[0].grpc_json.services",
        ),
    ] {
        let err = match ringgate::config::Config::parse(&format!(
            "[upstreams.g]\ntargets = [\"127.0.0.1:9\"]\nprotocol = \"h2\"\n\
             [[routes]]\npath = \"/v1/{{*r}}\"\nupstream = \"g\"\ngrpc_json = {table}\n"
        )) {
            Ok(_) => panic!("{table} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(what), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The backend restarts: the worker's connection to it ended, and the next
/// call goes over a new one (no failed call).
#[test]
fn a_restarted_backend_gets_a_new_connection() {
    let be = Backend::start();
    let addr = be.addr;
    let gw = gateway(addr, "", "");
    assert_eq!(call(gw.addr, "unary")["code"], 0);
    drop(be);
    let be = Backend::start_on(addr.port());
    for _ in 0..3 {
        let v = call(gw.addr, "unary");
        assert_eq!(v["code"], 0, "{v}");
    }
    drop(be);
}

/// An h2c backend answering every request with one status.
fn status_backend(status: u16) -> Backend {
    status_backend_with(status, &[])
}

/// The same, with `tests/h2/server.py`'s other arguments (`early`).
fn status_backend_with(status: u16, args: &[&str]) -> Backend {
    let mut child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2/server.py"))
        .arg(status.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is installed");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the h2 backend did not start (pip install h2): {line:?}"));
    Backend {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// HTTP/2 upstreams retry as HTTP/1.1 ones do: a 503 to a request that can
/// be sent again (GET, no body) goes to the other target while `retries`
/// allow; with `retries = 0` the 503 reaches the client.
#[test]
fn h2_upstream_5xx_goes_to_another_target_within_retries() {
    let bad = status_backend(503);
    let good = status_backend(200);
    let start = |retries: u32| {
        Gateway::start(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\n\n\
             [upstreams.u]\ntargets = [\"{}\", \"{}\"]\nprotocol = \"h2\"\nretries = {retries}\n\n\
             [[routes]]\npath = \"/{{*r}}\"\nupstream = \"u\"\n",
            bad.addr, good.addr
        ))
    };
    let gw = start(1);
    for i in 0..6 {
        let r = gw.get(&format!("/r{i}"));
        assert_eq!((r.status, r.text()), (200, "from-200".to_string()), "{r:?}");
    }
    // A request with a body is not sent twice.
    let mut c = gw.client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            c.request("POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
                .status,
        );
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    let gw = start(0);
    let got: Vec<u16> = (0..4).map(|i| gw.get(&format!("/n{i}")).status).collect();
    assert_eq!(got, [503, 200, 503, 200], "round robin, no retry");
    // Each request reached one backend once (an HTTP/1.1 request was once
    // left in the buffer after its answer and served again).
    let mut c = gw.client();
    for i in 0..4 {
        let r = c.request(format!("GET /k{i} HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert_eq!(r.status, if i % 2 == 0 { 503 } else { 200 }, "{r:?}");
    }
}

/// An HTTP/2 upstream that answers before reading the request body (413
/// as soon as the head arrives, then RST_STREAM NO_ERROR, the body never
/// read): an HTTP/1.1 client whose body is still on its way gets that
/// answer, and its connection closes after it, since the rest of the body
/// was never read. Before, the reset ended the exchange and the client's
/// connection closed without an answer.
#[test]
fn h2_upstream_early_answer_reaches_an_http1_client_mid_body() {
    use std::io::{Read, Write};
    let be = status_backend_with(413, &["early"]);
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\n\n\
         [upstreams.u]\ntargets = [\"{}\"]\nprotocol = \"h2\"\n\n\
         [[routes]]\npath = \"/{{*r}}\"\nupstream = \"u\"\n",
        be.addr
    ));
    for framing in ["Content-Length: 1048576", "Transfer-Encoding: chunked"] {
        let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        write!(s, "POST /upload HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n").unwrap();
        // More than the stream's initial window (64 KiB), so the upstream's
        // reset comes while ringgate still has body to send; the client
        // sends no more and reads.
        let piece = vec![b'x'; 8 * 1024];
        for _ in 0..32 {
            if framing.starts_with("Transfer") {
                write!(s, "{:x}\r\n", piece.len()).unwrap();
                s.write_all(&piece).unwrap();
                s.write_all(b"\r\n").unwrap();
            } else {
                s.write_all(&piece).unwrap();
            }
        }
        // Read to the end: a close with body bytes still unread may reach
        // the client as a reset, after the answer.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !got.is_empty() => {
                    break;
                }
                Err(e) => panic!("{framing}: {e} after {:?}", String::from_utf8_lossy(&got)),
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "{framing}: the upstream's early answer did not reach the client: {text:?}"
        );
        assert!(text.contains("from-413"), "{framing}: {text:?}");
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{framing}: the client is not told the connection closes: {text:?}"
        );
        assert_eq!(
            text.matches("HTTP/1.1").count(),
            1,
            "{framing}: one answer, then the end: {text:?}"
        );
    }
    // The worker still serves.
    let r = gw.get("/after");
    assert_eq!(r.status, 413, "{r:?}");
}

/// An HTTP/1.1 client that stops sending its body to an HTTP/2 upstream is
/// not waited for past the exchange's deadline (`request_timeout_ms`): it
/// gets a 504 and its connection closes, instead of holding the stream
/// and the connection for as long as it likes.
#[test]
fn a_stalled_http1_body_to_an_h2_upstream_ends_at_the_deadline() {
    use std::io::{Read, Write};
    // It answers once a request has ended.
    let be = status_backend_with(200, &["whole"]);
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\n\n\
         [upstreams.u]\ntargets = [\"{}\"]\nprotocol = \"h2\"\nrequest_timeout_ms = 500\n\n\
         [[routes]]\npath = \"/{{*r}}\"\nupstream = \"u\"\n",
        be.addr
    ));
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    s.write_all(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nfirst ten.")
        .unwrap();
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(end.is_ok(), "{end:?} after {text:?}");
    assert!(text.starts_with("HTTP/1.1 504"), "{text:?}");
    // The worker still serves.
    let r = gw.get("/after");
    assert_eq!(r.status, 200, "{r:?}");
}

/// A chunked answer split into its head, its decoded body and its trailer
/// lines.
fn chunked_answer(text: &str) -> (String, (String, String)) {
    let (head, mut rest) = text.split_once("\r\n\r\n").expect("a head");
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let n = usize::from_str_radix(size.trim(), 16).expect("hex size");
        if n == 0 {
            return (head.to_string(), (body, after.to_string()));
        }
        body.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}
