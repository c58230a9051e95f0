//! Metrics, access log, trace context and the admin API, observed from
//! outside: a real gateway, a mock backend, a raw client, and the admin
//! listener over HTTP.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::*;

/// One request to the admin listener; returns (status, body).
fn admin(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    admin_request(addr, method, path, token, "")
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
    let admin_addr = gw.handle.admin_addr().expect("admin listener");
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
    let body = scrape_until(gw.handle.admin_addr().unwrap(), |b| {
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
    assert!(b["bytes_out"].as_u64().unwrap() > 50, "{b}");
}

/// Credentials sent in the query never reach the access log: the API-key
/// parameter `[auth]` reads and the ones `log.redact_query` lists are
/// written as `REDACTED`, in the path and in the referer, whether the
/// request was admitted, refused, or on a route without auth.
#[test]
fn access_log_redacts_query_credentials() {
    let dir = std::env::temp_dir().join(format!("ringgate-redact-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let _ = std::fs::remove_file(&path);
    let be = MockUpstream::builder().respond(200, "ok").start();
    let top = format!(
        "[log]\naccess = \"combined\"\npath = \"{}\"\nredact_query = [\"sig\"]\n\n[auth.api_key]\nquery = \"api_key\"\n",
        path.display()
    );
    let mut gw = Gateway::start(&auth_gateway_toml(&be, &top, ""));
    let mut c = gw.client();
    assert_eq!(
        get_with(&mut c, "/orders/1?x=1&api_key=shop-key&y=2", ""),
        200
    );
    assert_eq!(get_with(&mut c, "/orders/2?api_key=guessed-key", ""), 401);
    assert_eq!(
        get_with(
            &mut c,
            "/items/3?sig=s3cret&api_key=shop-key&sig&api_key_hint=ok",
            "Referer: https://app.example/page?api_key=shop-key&tab=2",
        ),
        200
    );
    // The backend still gets the query as sent (no hide_credentials here).
    assert_eq!(
        be.last().target,
        "/items/3?sig=s3cret&api_key=shop-key&sig&api_key_hint=ok"
    );
    gw.shutdown();
    std::thread::sleep(Duration::from_millis(200));
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in ["shop-key", "guessed-key", "s3cret"] {
        assert!(!text.contains(secret), "{secret:?} was logged:\n{text}");
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let want = [
        "\"GET /orders/1?x=1&api_key=REDACTED&y=2 HTTP/1.1\" 200 ",
        "\"GET /orders/2?api_key=REDACTED HTTP/1.1\" 401 ",
        "\"GET /items/3?sig=REDACTED&api_key=REDACTED&sig&api_key_hint=ok HTTP/1.1\" 200 ",
    ];
    for (line, want) in lines.iter().zip(want) {
        assert!(line.contains(want), "{line:?} lacks {want:?}");
    }
    // A refusal's bytes are counted like a proxied response's.
    let bytes_of = |l: &str| -> u64 {
        let after = l.split("\" 401 ").nth(1).expect("status 401");
        after.split(' ').next().unwrap().parse().unwrap()
    };
    assert!(bytes_of(lines[1]) > 100, "{:?}", lines[1]);
    assert!(
        lines[2].contains("\"https://app.example/page?api_key=REDACTED&tab=2\""),
        "{:?}",
        lines[2]
    );
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
    let a = gw.handle.admin_addr().unwrap();
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
    let (st, body) = admin(gw.handle.admin_addr().unwrap(), "GET", "/metrics", None);
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
    let body = scrape_until(gw.handle.admin_addr().unwrap(), |b| {
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

/// The secret of the auth tests' `[auth.jwt]`, in an environment variable
/// named for this process (set once; nothing else in this binary reads it).
fn auth_secret_env() -> String {
    let var = format!("RINGGATE_TEST_AUTH_METRICS_{}", std::process::id());
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once; no test in this binary reads this variable
        // except through the gateways started after this call.
        unsafe { std::env::set_var(&var, "metrics-test-secret-0123456789abcdef0123") };
    });
    var
}

/// A gateway with a route without auth (`items`), a route wanting a JWT or
/// an API key and the `orders` role (`orders`), the token endpoint (two
/// failed client authentications block an address), and two consumers:
/// `shop` has the role, `guest` has not. `extra_top` goes after
/// `[server]`; `extra_routes` before the other routes.
fn auth_gateway_toml(backend: &MockUpstream, extra_top: &str, extra_routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 2
pin = false
{extra_top}

[admin]
listen = "127.0.0.1:0"

[upstreams.items]
targets = ["{target}"]
{extra_routes}
[[routes]]
name = "items"
path = "/items/{{id}}"
upstream = "items"

[[routes]]
name = "orders"
path = "/orders/{{id}}"
upstream = "items"
auth = ["jwt", "api_key"]
roles = ["orders"]

[auth.jwt]
algorithms = ["HS256"]
secret_env = "{var}"
issuer = "ringgate-test"

[auth.token_endpoint]
path = "/auth/token"
ttl_s = 600
max_failures = 2
failure_window_s = 600

[[consumers]]
id = "shop"
client_secret_sha256 = "{shop_secret}"
api_key_sha256 = "{shop_key}"
roles = ["orders"]

[[consumers]]
id = "guest"
client_secret_sha256 = "{guest_secret}"
api_key_sha256 = "{guest_key}"
roles = ["reader"]
"#,
        target = backend.target(),
        var = auth_secret_env(),
        shop_secret = sha_hex("shop-secret"),
        shop_key = sha_hex("shop-key"),
        guest_secret = sha_hex("guest-secret"),
        guest_key = sha_hex("guest-key"),
    )
}

/// A GET of `path` with one extra header line (or none); the status.
fn get_with(c: &mut Client, path: &str, header: &str) -> u16 {
    c.request(format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\n{header}{}\r\n",
        if header.is_empty() { "" } else { "\r\n" }
    ))
    .status
}

/// A token request with a form `body`; the response.
fn token_request(c: &mut Client, body: &str) -> Response {
    c.request(format!(
        "POST /auth/token HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// An access token for consumer `id` from the token endpoint.
fn token_for(c: &mut Client, id: &str) -> String {
    let r = token_request(
        c,
        &format!("grant_type=client_credentials&client_id={id}&client_secret={id}-secret"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// Every `name{...} value` series of `body` whose value is not zero, sorted.
fn series(body: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}{{");
    let mut out: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with(&prefix) && !l.ends_with(" 0"))
        .map(str::to_string)
        .collect();
    out.sort();
    out
}

/// Auth decisions are counted once per request on the route with auth, by
/// the method that decided (`none` when no credential was found) and the
/// decision; token endpoint answers by result; the route without auth has
/// no auth series.
#[test]
fn auth_decisions_and_token_endpoint_answers_are_counted() {
    let be = MockUpstream::builder().respond(200, "ok").start();
    let gw = Gateway::start(&auth_gateway_toml(&be, "", ""));
    let admin_addr = gw.handle.admin_addr().expect("admin listener");
    let mut c = gw.client();

    // Token endpoint: 2 issued, 1 invalid_request (unsupported grant),
    // 2 invalid_client (wrong secret), then 1 blocked (the address used up
    // its 2 failures, so even the right secret is refused).
    let shop = token_for(&mut c, "shop");
    let guest = token_for(&mut c, "guest");
    let r = token_request(
        &mut c,
        "grant_type=password&client_id=shop&client_secret=shop-secret",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    for _ in 0..2 {
        let r = token_request(
            &mut c,
            "grant_type=client_credentials&client_id=shop&client_secret=guess",
        );
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let r = token_request(
        &mut c,
        "grant_type=client_credentials&client_id=shop&client_secret=shop-secret",
    );
    assert_eq!(r.status, 429, "{}", r.text());

    // The route with auth, through every outcome.
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    for _ in 0..3 {
        assert_eq!(get_with(&mut c, "/orders/1", &bearer(&shop)), 200);
    }
    assert_eq!(get_with(&mut c, "/orders/1", "X-API-Key: shop-key"), 200);
    for _ in 0..2 {
        assert_eq!(get_with(&mut c, "/orders/1", ""), 401);
    }
    assert_eq!(get_with(&mut c, "/orders/1", &bearer("not.a.token")), 401);
    assert_eq!(get_with(&mut c, "/orders/1", "X-API-Key: wrong-key"), 401);
    assert_eq!(get_with(&mut c, "/orders/1", &bearer(&guest)), 403);
    for _ in 0..2 {
        assert_eq!(get_with(&mut c, "/orders/1", "X-API-Key: guest-key"), 403);
    }
    // The route without auth, with and without a credential.
    assert_eq!(get_with(&mut c, "/items/1", ""), 200);
    assert_eq!(get_with(&mut c, "/items/1", &bearer(&shop)), 200);

    let body = scrape_until(admin_addr, |b| {
        metric(
            b,
            r#"ringgate_requests_total{route="items",method="GET",status="2xx",upstream="items"}"#,
        ) == Some(2.0)
    });
    assert!(
        body.contains("# TYPE ringgate_auth_decisions_total counter"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE ringgate_token_endpoint_requests_total counter"),
        "{body}"
    );
    assert_eq!(
        series(&body, "ringgate_auth_decisions_total"),
        vec![
            r#"ringgate_auth_decisions_total{route="orders",method="api_key",decision="allowed"} 1"#,
            r#"ringgate_auth_decisions_total{route="orders",method="api_key",decision="forbidden"} 2"#,
            r#"ringgate_auth_decisions_total{route="orders",method="api_key",decision="invalid"} 1"#,
            r#"ringgate_auth_decisions_total{route="orders",method="jwt",decision="allowed"} 3"#,
            r#"ringgate_auth_decisions_total{route="orders",method="jwt",decision="forbidden"} 1"#,
            r#"ringgate_auth_decisions_total{route="orders",method="jwt",decision="invalid"} 1"#,
            r#"ringgate_auth_decisions_total{route="orders",method="none",decision="missing"} 2"#,
        ],
        "{body}"
    );
    assert!(
        !body.contains(r#"ringgate_auth_decisions_total{route="items""#),
        "{body}"
    );
    for (result, n) in [
        ("issued", 2.0),
        ("invalid_request", 1.0),
        ("invalid_client", 2.0),
        ("blocked", 1.0),
        ("error", 0.0),
    ] {
        assert_eq!(
            metric(
                &body,
                &format!(r#"ringgate_token_endpoint_requests_total{{result="{result}"}}"#)
            ),
            Some(n),
            "{result}: {body}"
        );
    }
}

/// With `[metrics] enabled = false` nothing is counted: no auth decision
/// and no token endpoint series.
#[test]
fn auth_metrics_are_off_when_metrics_are() {
    let be = MockUpstream::builder().respond(200, "ok").start();
    let gw = Gateway::start(&auth_gateway_toml(&be, "[metrics]\nenabled = false", ""));
    let mut c = gw.client();
    let shop = token_for(&mut c, "shop");
    assert_eq!(
        get_with(
            &mut c,
            "/orders/1",
            &format!("Authorization: Bearer {shop}")
        ),
        200
    );
    assert_eq!(get_with(&mut c, "/orders/1", ""), 401);
    let (st, body) = admin(gw.handle.admin_addr().unwrap(), "GET", "/metrics", None);
    assert_eq!(st, 200);
    assert!(!body.contains("ringgate_auth_decisions_total{"), "{body}");
    assert!(
        !body.contains("ringgate_token_endpoint_requests_total{"),
        "{body}"
    );
    assert_eq!(metric(&body, "ringgate_ready"), Some(1.0));
}

/// A reload that adds a route with auth before `orders` keeps `orders`'s
/// auth counts (its label slot follows its name) and gives the new route
/// its own series.
#[test]
fn auth_decision_counts_follow_routes_by_name_across_reloads() {
    let be = MockUpstream::builder().respond(200, "ok").start();
    let dir = std::env::temp_dir().join(format!("ringgate-authm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("reload.toml");
    std::fs::write(&path, auth_gateway_toml(&be, "", "")).unwrap();
    let cfg = ringgate::config::Config::load(&path).expect("config");
    let h = ringgate::runtime::Server::start_file(cfg, path.clone(), Default::default())
        .expect("start");
    let addr = h.local_addrs()[0];
    let admin_addr = h.admin_addr().expect("admin listener");
    let mut c = Client::connect(addr);
    assert_eq!(get_with(&mut c, "/orders/1", "X-API-Key: shop-key"), 200);
    assert_eq!(get_with(&mut c, "/orders/1", ""), 401);

    let first = r#"
[[routes]]
name = "first"
path = "/first"
upstream = "items"
auth = ["api_key"]
"#;
    std::fs::write(&path, auth_gateway_toml(&be, "", first)).unwrap();
    h.reload().expect("valid reload");
    let mut c = Client::connect(addr);
    assert_eq!(get_with(&mut c, "/orders/1", "X-API-Key: shop-key"), 200);
    assert_eq!(get_with(&mut c, "/first", "X-API-Key: guest-key"), 200);

    let body = scrape_until(admin_addr, |b| {
        metric(
            b,
            r#"ringgate_auth_decisions_total{route="first",method="api_key",decision="allowed"}"#,
        ) == Some(1.0)
    });
    assert_eq!(
        series(&body, "ringgate_auth_decisions_total"),
        vec![
            r#"ringgate_auth_decisions_total{route="first",method="api_key",decision="allowed"} 1"#,
            r#"ringgate_auth_decisions_total{route="orders",method="api_key",decision="allowed"} 2"#,
            r#"ringgate_auth_decisions_total{route="orders",method="none",decision="missing"} 1"#,
        ],
        "{body}"
    );
}
