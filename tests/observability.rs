//! Metrics, access log, trace context and the admin API, observed from
//! outside: a real gateway, a mock backend, a raw client, and the admin
//! listener over HTTP.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::*;

/// One request to the admin listener; returns (status, body).
fn admin(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Scrapes until `check` holds (the worker records a request right after
/// writing its response, so a scrape can race the last one) or 3 s pass.
fn scrape_until(addr: SocketAddr, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (st, body) = admin(addr, "GET", "/metrics", None);
        assert_eq!(st, 200);
        if check(&body) || std::time::Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn gateway(extra_top: &str, backend: &MockUpstream) -> Gateway {
    Gateway::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 2
pin = false
{extra_top}

[upstreams.items]
targets = ["{}"]

[[routes]]
name = "items"
path = "/items/{{id}}"
methods = ["GET", "POST"]
upstream = "items"
"#,
        backend.target()
    ))
}

#[test]
fn metrics_count_requests_by_route_method_and_status_class() {
    let be = MockUpstream::builder().respond(200, "ok").start();
    let gw = gateway("[admin]\nlisten = \"127.0.0.1:0\"", &be);
    let admin_addr = gw.handle.admin_addr.expect("admin listener");
    let mut c = gw.client();
    for _ in 0..7 {
        assert_eq!(c.get("/items/1").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(c.get("/nowhere").status, 404);
    }
    let r = c.request("DELETE /items/1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 405);
    let body = scrape_until(admin_addr, |b| {
        metric(
            b,
            r#"ringgate_requests_total{route="(none)",method="DELETE",status="4xx",upstream="(none)"}"#,
        ) == Some(1.0)
    });
    assert_eq!(
        metric(
            &body,
            r#"ringgate_requests_total{route="items",method="GET",status="2xx",upstream="items"}"#
        ),
        Some(7.0),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            r#"ringgate_requests_total{route="(none)",method="GET",status="4xx",upstream="(none)"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"ringgate_requests_total{route="(none)",method="DELETE",status="4xx",upstream="(none)"}"#
        ),
        Some(1.0)
    );
    // Histograms: every answered request is counted once, +Inf equals count.
    assert_eq!(
        metric(
            &body,
            r#"ringgate_request_duration_seconds_count{route="items"}"#
        ),
        Some(7.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"ringgate_request_duration_seconds_bucket{route="items",le="+Inf"}"#
        ),
        Some(7.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"ringgate_upstream_duration_seconds_count{route="items"}"#
        ),
        Some(7.0)
    );
    // One keep-alive client connection: one upstream connection opened, the
    // rest reused from the pool.
    let opened = metric(
        &body,
        r#"ringgate_upstream_connections_opened_total{upstream="items"}"#,
    )
    .unwrap();
    let reused = metric(
        &body,
        r#"ringgate_upstream_connections_reused_total{upstream="items"}"#,
    )
    .unwrap();
    assert_eq!(opened + reused, 7.0);
    assert!(opened <= 2.0, "opened {opened}");
    assert_eq!(metric(&body, "ringgate_ready"), Some(1.0));
}

#[test]
fn upstream_errors_are_counted() {
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.dead]\ntargets = [\"{}\"]\n[[routes]]\nname = \"dead\"\npath = \"/{{*rest}}\"\nupstream = \"dead\"\n",
        refused_addr()
    ));
    for _ in 0..4 {
        assert_eq!(gw.get("/x").status, 502);
    }
    let body = scrape_until(gw.handle.admin_addr.unwrap(), |b| {
        metric(
            b,
            r#"ringgate_requests_total{route="dead",method="GET",status="5xx",upstream="dead"}"#,
        ) == Some(4.0)
    });
    assert_eq!(
        metric(&body, r#"ringgate_upstream_errors_total{upstream="dead"}"#),
        Some(4.0),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            r#"ringgate_requests_total{route="dead",method="GET",status="5xx",upstream="dead"}"#
        ),
        Some(4.0)
    );
}

#[test]
fn access_log_writes_one_json_line_per_request() {
    let dir = std::env::temp_dir().join(format!("ringgate-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let _ = std::fs::remove_file(&path);
    let be = MockUpstream::builder().respond(200, "hello").start();
    let mut gw = gateway(
        &format!("[log]\naccess = \"json\"\npath = \"{}\"", path.display()),
        &be,
    );
    let mut c = gw.client();
    let r1 = c.request("GET /items/7?x=1 HTTP/1.1\r\nHost: t\r\nUser-Agent: probe/1\r\nX-Request-Id: req-one\r\n\r\n");
    assert_eq!(r1.status, 200);
    assert_eq!(c.get("/missing").status, 404);
    gw.shutdown(); // flushes the workers' buffers
    std::thread::sleep(Duration::from_millis(200));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let a = &lines[0];
    assert_eq!(a["request_id"], "req-one");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/items/7?x=1");
    assert_eq!(a["route"], "items");
    assert_eq!(a["status"], 200);
    assert_eq!(a["upstream"], be.target());
    assert_eq!(a["client"], "127.0.0.1");
    assert!(a["bytes_out"].as_u64().unwrap() > 5);
    assert!(a["total_us"].as_u64().is_some());
    assert!(a["upstream_us"].as_u64().is_some());
    assert_eq!(a["trace_id"].as_str().unwrap().len(), 32);
    assert!(a["time"].as_str().unwrap().ends_with('Z'));
    let b = &lines[1];
    assert_eq!(b["status"], 404);
    assert_eq!(b["route"], "-");
    assert!(b["upstream"].is_null());
}

#[test]
fn traceparent_is_continued_with_a_new_span_or_started() {
    let be = MockUpstream::builder().echo().start();
    let gw = gateway("", &be);
    let mut c = gw.client();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c.request(format!(
        "GET /items/1 HTTP/1.1\r\nHost: t\r\ntraceparent: {incoming}\r\ntracestate: vendor=abc\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    let seen = be.last();
    let tps = seen.header_all("traceparent");
    assert_eq!(tps.len(), 1, "exactly one traceparent upstream");
    let tp = tps[0];
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(tp.ends_with("-01"));
    let span = &tp[36..52];
    assert_ne!(
        span, "00f067aa0ba902b7",
        "the gateway's hop has its own span id"
    );
    assert_eq!(seen.header("tracestate"), Some("vendor=abc"));

    // Without one, a new trace is started.
    assert_eq!(c.get("/items/2").status, 200);
    let tp = be.last().header("traceparent").unwrap().to_string();
    assert_eq!(tp.len(), 55);
    assert!(tp.starts_with("00-"));
    assert_ne!(&tp[3..35], "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[test]
fn admin_endpoints_and_token() {
    // SAFETY-free: a unique variable name for this test.
    let var = format!("RINGGATE_TEST_ADMIN_TOKEN_{}", std::process::id());
    // Tests in this binary run in parallel but none reads this variable.
    unsafe { std::env::set_var(&var, "s3cret") };
    let be = MockUpstream::builder().respond(200, "ok").start();
    let gw = gateway(
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"{var}\""),
        &be,
    );
    let a = gw.handle.admin_addr.unwrap();
    assert_eq!(admin(a, "GET", "/healthz", None).0, 401);
    assert_eq!(admin(a, "GET", "/metrics", Some("wrong")).0, 401);
    let (st, body) = admin(a, "GET", "/healthz", Some("s3cret"));
    assert_eq!((st, body.as_str()), (200, "{\"status\":\"ok\"}"));
    assert_eq!(admin(a, "GET", "/readyz", Some("s3cret")).0, 200);
    let (st, body) = admin(a, "GET", "/config", Some("s3cret"));
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["routes"][0]["name"], "items");
    assert_eq!(v["admin"]["token"], "<redacted>");
    assert!(!body.contains("s3cret"), "the token must never be shown");
    assert_eq!(admin(a, "GET", "/nope", Some("s3cret")).0, 404);
    assert_eq!(admin(a, "DELETE", "/metrics", Some("s3cret")).0, 405);
}

#[test]
fn metrics_can_be_turned_off() {
    let be = MockUpstream::builder().respond(200, "ok").start();
    let gw = gateway(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[metrics]\nenabled = false",
        &be,
    );
    let mut c = gw.client();
    for _ in 0..5 {
        assert_eq!(c.get("/items/1").status, 200);
    }
    let (st, body) = admin(gw.handle.admin_addr.unwrap(), "GET", "/metrics", None);
    assert_eq!(st, 200);
    assert!(!body.contains("ringgate_requests_total{"), "{body}");
    assert_eq!(metric(&body, "ringgate_ready"), Some(1.0));
}

#[test]
fn rate_limit_breaker_and_target_metrics() {
    let be = MockUpstream::builder().respond(200, "ok").start();
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
pin = false
[admin]
listen = "127.0.0.1:0"
[rate_limits.tiny]
key = "ip"
limit = 2
window_s = 60
[upstreams.items]
targets = ["{}"]
[upstreams.dead]
targets = ["{}"]
[upstreams.dead.breaker]
failure_threshold = 2
open_ms = 60000
[[routes]]
name = "items"
path = "/items/{{id}}"
upstream = "items"
rate_limit = ["tiny"]
[[routes]]
name = "dead"
path = "/dead"
upstream = "dead"
"#,
        be.target(),
        refused_addr()
    ));
    let statuses: Vec<u16> = (0..4).map(|_| gw.get("/items/1").status).collect();
    assert_eq!(statuses, vec![200, 200, 429, 429]);
    let dead: Vec<u16> = (0..3).map(|_| gw.get("/dead").status).collect();
    assert_eq!(&dead[..2], &[502, 502], "{dead:?}");
    assert_eq!(
        dead[2], 503,
        "the breaker is open after two failures: {dead:?}"
    );
    let body = scrape_until(gw.handle.admin_addr.unwrap(), |b| {
        metric(
            b,
            r#"ringgate_rate_limit_decisions_total{limit="tiny",decision="limited"}"#,
        ) == Some(2.0)
    });
    assert_eq!(
        metric(
            &body,
            r#"ringgate_rate_limit_decisions_total{limit="tiny",decision="admitted"}"#
        ),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, r#"ringgate_breaker_state{upstream="dead"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&body, r#"ringgate_breaker_opens_total{upstream="dead"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"ringgate_upstream_targets{upstream="items",state="healthy"}"#
        ),
        Some(1.0)
    );
}
