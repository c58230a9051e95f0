//! API composition over real sockets: one client request, several mock
//! services called in parallel, one merged JSON answer; partial answers,
//! required-part failures, fields, query pass-through, forwarded context;
//! a cached compose route (hits without part calls, partial answers not
//! stored, ttl, purge, coalescing, stale windows, config); parts as
//! upstream exchanges (retry on another target, consistent hashing,
//! p2c_ewma latency, pool metrics).

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// A mock answering `body` as JSON to every request.
fn json_service(body: &str) -> MockUpstream {
    MockUpstream::builder()
        .header("Content-Type", "application/json")
        .respond(200, body)
        .start()
}

fn gateway(upstreams: &[(&str, SocketAddr)], route: &str) -> Gateway {
    let with: Vec<_> = upstreams.iter().map(|&(n, a)| (n, a, "")).collect();
    gateway_with(&with, route)
}

/// `gateway`, with extra TOML after each upstream's table (its sub-tables,
/// such as `[upstreams.NAME.breaker]`).
fn gateway_with(upstreams: &[(&str, SocketAddr, &str)], route: &str) -> Gateway {
    let mut t = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\ndrain_timeout_ms = 1000\n",
    );
    for (name, addr, extra) in upstreams {
        t.push_str(&format!(
            "\n[upstreams.{name}]\ntargets = [\"{addr}\"]\nrequest_timeout_ms = 5000\n{extra}\n"
        ));
    }
    t.push('\n');
    t.push_str(route);
    Gateway::start(&t)
}

const PRODUCT: &str = r#"{"id":42,"name":"Widget 42","tags":["a","b"]}"#;
const PRICE: &str = r#"{"price":9.90,"currency":"EUR","internal_cost":4.1}"#;
const STOCK: &str = r#"{"available":7}"#;

fn product_page(pricing_extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "product-page"
path = "/product/{{id}}"
methods = ["GET", "HEAD"]

[routes.compose]
timeout_ms = 2000
merge = "keys"

[[routes.compose.parts]]
key = "details"
upstream = "products"
path = "/products/{{id}}"
required = true

[[routes.compose.parts]]
key = "pricing"
upstream = "pricing"
path = "/prices/{{id}}"
fields = ["price", "currency"]
fallback = {{ price = "unavailable" }}
{pricing_extra}

[[routes.compose.parts]]
key = "inventory"
upstream = "inventory"
path = "/stock/{{id}}"
query = true
"#
    )
}

#[test]
fn composed_response_equals_the_merge_of_the_parts() {
    let products = json_service(PRODUCT);
    let pricing = json_service(PRICE);
    let inventory = json_service(STOCK);
    let gw = gateway(
        &[
            ("products", products.addr),
            ("pricing", pricing.addr),
            ("inventory", inventory.addr),
        ],
        &product_page(""),
    );
    let mut c = gw.client();
    let r = c.request(
        "GET /product/42?region=eu HTTP/1.1\r\nHost: shop.test\r\nX-Request-Id: req-compose-1\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("x-gateway-partial"),
        None,
        "complete answer: {r:?}"
    );
    assert_eq!(r.header("x-request-id"), Some("req-compose-1"));
    let product: Value = serde_json::from_str(PRODUCT).unwrap();
    let stock: Value = serde_json::from_str(STOCK).unwrap();
    assert_eq!(
        r.json(),
        json!({
            "details": product,
            "pricing": {"price": 9.90, "currency": "EUR"},
            "inventory": stock,
        })
    );
    // Numbers are relayed byte for byte (no float reformatting).
    assert!(r.text().contains(r#""price":9.90"#), "{}", r.text());

    // Each part got its path, the request id, the forwarded context; only
    // the part with query = true got the query string.
    let (p, q, i) = (products.last(), pricing.last(), inventory.last());
    assert_eq!(p.target, "/products/42");
    assert_eq!(q.target, "/prices/42");
    assert_eq!(i.target, "/stock/42?region=eu");
    for req in [&p, &q, &i] {
        assert_eq!(req.method, "GET");
        assert_eq!(req.header("x-request-id"), Some("req-compose-1"));
        assert_eq!(req.header("x-forwarded-host"), Some("shop.test"));
        assert!(req.has_header("traceparent"), "{}", req.head_str());
    }

    // Keep-alive: the next request on the connection works and reuses the
    // parts' pooled connections.
    let r2 = c.get("/product/42");
    assert_eq!(r2.status, 200);
    assert_eq!(products.conns(), 1, "the products connection was pooled");
    c.assert_open();
}

#[test]
fn generated_request_id_reaches_every_part() {
    let products = json_service(PRODUCT);
    let pricing = json_service(PRICE);
    let inventory = json_service(STOCK);
    let gw = gateway(
        &[
            ("products", products.addr),
            ("pricing", pricing.addr),
            ("inventory", inventory.addr),
        ],
        &product_page(""),
    );
    let r = gw.get("/product/1");
    assert_eq!(r.status, 200);
    let rid = r.header("x-request-id").expect("a request id").to_string();
    for up in [&products, &pricing, &inventory] {
        assert_eq!(up.last().header("x-request-id"), Some(rid.as_str()));
    }
}

#[test]
fn slow_optional_part_yields_its_fallback_within_its_timeout() {
    let products = json_service(PRODUCT);
    let pricing = MockUpstream::builder()
        .header("Content-Type", "application/json")
        .respond(200, PRICE)
        .latency(Duration::from_secs(3))
        .start();
    let inventory = json_service(STOCK);
    let gw = gateway(
        &[
            ("products", products.addr),
            ("pricing", pricing.addr),
            ("inventory", inventory.addr),
        ],
        &product_page("timeout_ms = 100"),
    );
    let started = Instant::now();
    let r = gw.get("/product/42");
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-gateway-partial"), Some("pricing"));
    let j = r.json();
    assert_eq!(j["pricing"], json!({"price": "unavailable"}));
    assert_eq!(j["details"]["id"], 42);
    assert_eq!(j["inventory"]["available"], 7);
    // The answer came before the slow part would have (3 s).
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn failing_optional_parts_give_fallback_or_null() {
    let products = json_service(PRODUCT);
    let pricing = MockUpstream::builder().respond(500, "boom").start();
    let inventory = MockUpstream::builder()
        .header("Content-Type", "application/json")
        .respond(200, "{not json")
        .start();
    let gw = gateway(
        &[
            ("products", products.addr),
            ("pricing", pricing.addr),
            ("inventory", inventory.addr),
        ],
        &product_page(""),
    );
    let r = gw.get("/product/42");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-gateway-partial"), Some("pricing, inventory"));
    let j = r.json();
    assert_eq!(j["pricing"], json!({"price": "unavailable"}));
    assert_eq!(j["inventory"], Value::Null);
    assert_eq!(j["details"]["name"], "Widget 42");
}

#[test]
fn failing_required_part_answers_502_naming_it() {
    let pricing = json_service(PRICE);
    let inventory = json_service(STOCK);
    for products in [
        MockUpstream::builder().respond(503, "down").start(),
        MockUpstream::builder().close_after_head().start(),
    ] {
        let gw = gateway(
            &[
                ("products", products.addr),
                ("pricing", pricing.addr),
                ("inventory", inventory.addr),
            ],
            &product_page(""),
        );
        let r = gw.get("/product/42");
        assert_json_error(&r, 502);
        let j = r.json();
        assert_eq!(j["part"], "details");
        assert!(
            j["error"].as_str().unwrap().contains("details"),
            "names the part: {j}"
        );
    }
    // A refused connection.
    let gw = gateway(
        &[
            ("products", refused_addr()),
            ("pricing", pricing.addr),
            ("inventory", inventory.addr),
        ],
        &product_page(""),
    );
    let r = gw.get("/product/42");
    assert_json_error(&r, 502);
    assert_eq!(r.json()["part"], "details");
}

#[test]
fn timed_out_required_part_answers_504() {
    let products = MockUpstream::builder().stall().start();
    let pricing = json_service(PRICE);
    let inventory = json_service(STOCK);
    let route = product_page("").replace("timeout_ms = 2000", "timeout_ms = 200");
    let gw = gateway(
        &[
            ("products", products.addr),
            ("pricing", pricing.addr),
            ("inventory", inventory.addr),
        ],
        &route,
    );
    let started = Instant::now();
    let r = gw.get("/product/42");
    assert_json_error(&r, 504);
    assert_eq!(r.json()["part"], "details");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Parts are issued together: each service waits until all three requests
/// have arrived before answering, so the request only succeeds (within the
/// 2 s deadline) when the gateway sent them concurrently.
#[test]
fn parts_run_in_parallel() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let saw_all = Arc::new(AtomicUsize::new(0));
    let service = |body: &'static str| {
        let arrived = arrived.clone();
        let saw_all = saw_all.clone();
        MockUpstream::builder()
            .handler(move |r| {
                arrived.fetch_add(1, Ordering::SeqCst);
                let end = Instant::now() + Duration::from_secs(3);
                while arrived.load(Ordering::SeqCst) < 3 && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if arrived.load(Ordering::SeqCst) >= 3 {
                    saw_all.fetch_add(1, Ordering::SeqCst);
                }
                Reply::Bytes {
                    data: response_bytes(
                        200,
                        &[("Content-Type".into(), "application/json".into())],
                        body.as_bytes(),
                        r.method == "HEAD",
                    ),
                    close: false,
                }
            })
            .start()
    };
    let products = service(PRODUCT);
    let pricing = service(PRICE);
    let inventory = service(STOCK);
    let gw = gateway(
        &[
            ("products", products.addr),
            ("pricing", pricing.addr),
            ("inventory", inventory.addr),
        ],
        &product_page("required = true").replace("fallback = { price = \"unavailable\" }\n", ""),
    );
    let r = gw.get("/product/42");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-gateway-partial"), None);
    assert_eq!(
        saw_all.load(Ordering::SeqCst),
        3,
        "every service saw all three parts in flight at once"
    );
}

#[test]
fn root_merge_puts_members_at_the_top() {
    let products = json_service(r#"{"id":42,"name":"Widget","price":0}"#);
    let pricing = json_service(PRICE);
    let reviews = json_service(r#"[{"stars":5},{"stars":3}]"#);
    let route = r#"
[[routes]]
path = "/p/{id}"

[routes.compose]
merge = "root"

[[routes.compose.parts]]
key = "details"
upstream = "products"
path = "/products/{id}"
required = true

[[routes.compose.parts]]
key = "pricing"
upstream = "pricing"
path = "/prices/{id}"
fields = ["price", "currency"]

[[routes.compose.parts]]
key = "reviews"
upstream = "reviews"
path = "/reviews/{id}"
"#;
    let gw = gateway(
        &[
            ("products", products.addr),
            ("pricing", pricing.addr),
            ("reviews", reviews.addr),
        ],
        route,
    );
    let r = gw.get("/p/42");
    assert_eq!(r.status, 200, "{r:?}");
    // Later parts win on equal keys; a non-object part goes under its key.
    assert_eq!(
        r.json(),
        json!({
            "id": 42,
            "name": "Widget",
            "price": 9.90,
            "currency": "EUR",
            "reviews": [{"stars": 5}, {"stars": 3}],
        })
    );
    let keys: Vec<String> = r.json().as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 5);
}

#[test]
fn chunked_part_bodies_and_head_requests() {
    let products = MockUpstream::builder()
        .chunked(&[r#"{"id":42,"#, r#""name":"Widget"}"#], &[])
        .start();
    let route = r#"
[[routes]]
path = "/p/{id}"
[routes.compose]
[[routes.compose.parts]]
key = "details"
upstream = "products"
path = "/products/{id}"
required = true
"#;
    let gw = gateway(&[("products", products.addr)], route);
    let mut c = gw.client();
    let r = c.get("/p/42");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"details": {"id": 42, "name": "Widget"}}));
    c.send("HEAD /p/42 HTTP/1.1\r\nHost: x\r\n\r\n");
    let h = c.read_head_response();
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(c.get("/p/42").status, 200);
}

// ---------------------------------------------------------------------------
// Parts behind their upstream's circuit breaker
// ---------------------------------------------------------------------------

/// The breaker state of `name`, as the admin API reports it.
fn breaker_state(gw: &Gateway, name: &str) -> String {
    upstream_state(gw, name)["breaker"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Regression: a compose part used to call its upstream without its
/// circuit breaker, so a dead backend behind a composed route was hit by
/// every request and never tripped the breaker ordinary routes rely on.
/// Now the part's failures open it; once open, the part contributes its
/// fallback without a connection being made.
#[test]
fn dead_optional_part_trips_its_breaker_and_is_no_longer_called() {
    let products = json_service(PRODUCT);
    // Accepts, reads the request, closes without answering.
    let pricing = MockUpstream::builder().handler(|_| Reply::Close).start();
    let inventory = json_service(STOCK);
    let gw = gateway_with(
        &[
            ("products", products.addr, ""),
            (
                "pricing",
                pricing.addr,
                "[upstreams.pricing.breaker]\nfailure_threshold = 3\nopen_ms = 60000\n",
            ),
            ("inventory", inventory.addr, ""),
        ],
        &product_page(""),
    );
    let mut c = gw.client();
    for i in 0..3 {
        let r = c.get("/product/42");
        assert_eq!(r.status, 200, "failure {i}: {r:?}");
        assert_eq!(r.header("x-gateway-partial"), Some("pricing"));
    }
    assert_eq!(pricing.conns(), 3, "each failure was a connection");
    assert_eq!(breaker_state(&gw, "pricing"), "open");
    let products_before = products.hits();
    for i in 0..10 {
        let r = c.get("/product/42");
        assert_eq!(r.status, 200, "request {i} with the breaker open: {r:?}");
        assert_eq!(r.header("x-gateway-partial"), Some("pricing"));
        let j = r.json();
        assert_eq!(j["pricing"], json!({"price": "unavailable"}));
        assert_eq!(j["details"]["id"], 42);
        assert_eq!(j["inventory"]["available"], 7);
    }
    assert_eq!(
        pricing.conns(),
        3,
        "an open breaker let a connection through"
    );
    assert_eq!(pricing.hits(), 3);
    assert_eq!(
        products.hits(),
        products_before + 10,
        "other parts still run"
    );
    c.assert_open();
}

/// A required part behind an open breaker answers 503 with `Retry-After`
/// and a JSON error naming the part, without contacting the backend.
#[test]
fn required_part_behind_open_breaker_answers_503_with_retry_after() {
    let pricing = json_service(PRICE);
    let inventory = json_service(STOCK);
    let gw = gateway_with(
        &[
            (
                "products",
                refused_addr(),
                "[upstreams.products.breaker]\nfailure_threshold = 2\nopen_ms = 5000\n",
            ),
            ("pricing", pricing.addr, ""),
            ("inventory", inventory.addr, ""),
        ],
        &product_page(""),
    );
    let mut c = gw.client();
    for _ in 0..2 {
        let r = c.get("/product/42");
        assert_json_error(&r, 502);
        assert_eq!(r.json()["part"], "details");
    }
    assert_eq!(breaker_state(&gw, "products"), "open");
    let r = c.get("/product/42");
    assert_json_error(&r, 503);
    // Keys in the one order every error body has, the part after the error.
    let t = r.text();
    let at = |k: &str| {
        t.find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} in {t}"))
    };
    assert!(
        at("error") < at("part") && at("part") < at("status") && at("status") < at("request_id"),
        "{t}"
    );
    let j = r.json();
    assert_eq!(j["part"], "details");
    let msg = j["error"].as_str().unwrap();
    assert!(
        msg.contains("details") && msg.contains("circuit breaker open"),
        "names the part and the open circuit: {msg}"
    );
    let secs = r.retry_after();
    assert!((1..=5).contains(&secs), "Retry-After {secs}");
    // The connection stays usable.
    assert_eq!(c.get("/product/42").status, 503);
}

/// After `open_ms` the breaker half-opens: the next request's part is the
/// probe, reaches the recovered backend, closes the breaker, and the route
/// answers in full again.
#[test]
fn half_open_probe_reaches_the_recovered_part_and_closes_the_breaker() {
    const OPEN_MS: u64 = 300;
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = failing.clone();
    let pricing = MockUpstream::builder()
        .handler(move |r| {
            let (status, body) = if f.load(Ordering::SeqCst) {
                (503, "down")
            } else {
                (200, PRICE)
            };
            Reply::Bytes {
                data: response_bytes(
                    status,
                    &[("Content-Type".into(), "application/json".into())],
                    body.as_bytes(),
                    r.method == "HEAD",
                ),
                close: false,
            }
        })
        .start();
    let products = json_service(PRODUCT);
    let inventory = json_service(STOCK);
    let gw = gateway_with(
        &[
            ("products", products.addr, ""),
            (
                "pricing",
                pricing.addr,
                &format!(
                    "[upstreams.pricing.breaker]\nfailure_threshold = 2\nopen_ms = {OPEN_MS}\nhalf_open_probes = 1\n"
                ),
            ),
            ("inventory", inventory.addr, ""),
        ],
        &product_page(""),
    );
    let mut c = gw.client();
    for _ in 0..2 {
        let r = c.get("/product/42");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-gateway-partial"), Some("pricing"));
    }
    assert_eq!(pricing.hits(), 2);
    // Recovered, but the breaker is open: still the fallback, no traffic.
    failing.store(false, Ordering::SeqCst);
    let r = c.get("/product/42");
    assert_eq!(r.header("x-gateway-partial"), Some("pricing"));
    assert_eq!(pricing.hits(), 2, "an open breaker sent traffic");

    std::thread::sleep(Duration::from_millis(OPEN_MS * 2));
    assert_eq!(breaker_state(&gw, "pricing"), "half_open");
    let r = c.get("/product/42");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-gateway-partial"), None, "the probe succeeded");
    assert_eq!(
        r.json()["pricing"],
        json!({"price": 9.90, "currency": "EUR"})
    );
    assert_eq!(pricing.hits(), 3, "one probe");
    assert_eq!(breaker_state(&gw, "pricing"), "closed");
    for _ in 0..3 {
        let r = c.get("/product/42");
        assert_eq!(r.header("x-gateway-partial"), None);
    }
    assert_eq!(pricing.hits(), 6);
}

#[test]
fn config_errors_name_the_compose_keys() {
    let bad = r#"
[upstreams.a]
targets = ["127.0.0.1:9"]

[[routes]]
path = "/p/{id}"
upstream = "a"

[routes.compose]
merge = "deep"

[[routes.compose.parts]]
key = "x"
upstream = "nope"
path = "/x/{sku}"
required = true
fallback = 1
colour = "red"
"#;
    let e = ringgate::config::Config::parse(bad)
        .unwrap_err()
        .to_string();
    for want in [
        "colour",
        "routes[0].upstream",
        "routes[0].compose.merge",
        "routes[0].compose.parts[0].upstream",
        "routes[0].compose.parts[0].path",
        "routes[0].compose.parts[0].fallback",
    ] {
        assert!(e.contains(want), "missing {want} in:\n{e}");
    }
}

/// `config/demo.toml` (the config `ringgate demo` runs) stays valid.
#[test]
fn demo_config_checks() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["check", "-c", "config/demo.toml"])
        .env(
            "RINGGATE_DEMO_JWT_SECRET",
            "a-test-secret-that-is-long-enough-for-hs256-0123456789",
        )
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run ringgate check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// A cached compose route
// ---------------------------------------------------------------------------

/// `gateway`, with an admin listener (for purges).
fn cached_gateway(upstreams: &[(&str, SocketAddr)], route: &str) -> Gateway {
    let mut t = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\ndrain_timeout_ms = 1000\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    for (name, addr) in upstreams {
        t.push_str(&format!(
            "\n[upstreams.{name}]\ntargets = [\"{addr}\"]\nrequest_timeout_ms = 5000\n"
        ));
    }
    t.push('\n');
    t.push_str(route);
    Gateway::start(&t)
}

/// The product page with `cache = { CACHE }` on the route.
fn cached_product_page(cache: &str) -> String {
    product_page("").replacen(
        "methods = [\"GET\", \"HEAD\"]\n",
        &format!("methods = [\"GET\", \"HEAD\"]\ncache = {{ {cache} }}\n"),
        1,
    )
}

/// A JSON service whose answer is `body` while `up` is set and a 500
/// otherwise.
fn switchable_service(body: &'static str, up: Arc<std::sync::atomic::AtomicBool>) -> MockUpstream {
    MockUpstream::builder()
        .handler(move |r| {
            let (status, body) = if up.load(Ordering::SeqCst) {
                (200, body)
            } else {
                (500, "down")
            };
            Reply::Bytes {
                data: response_bytes(
                    status,
                    &[("Content-Type".into(), "application/json".into())],
                    body.as_bytes(),
                    r.method == "HEAD",
                ),
                close: false,
            }
        })
        .start()
}

struct Services {
    products: MockUpstream,
    pricing: MockUpstream,
    inventory: MockUpstream,
}

impl Services {
    fn new() -> Services {
        Services {
            products: json_service(PRODUCT),
            pricing: json_service(PRICE),
            inventory: json_service(STOCK),
        }
    }

    fn gateway(&self, cache: &str) -> Gateway {
        cached_gateway(
            &[
                ("products", self.products.addr),
                ("pricing", self.pricing.addr),
                ("inventory", self.inventory.addr),
            ],
            &cached_product_page(cache),
        )
    }

    /// Requests each part's backend has seen: products, pricing, inventory.
    fn hits(&self) -> [usize; 3] {
        [
            self.products.hits(),
            self.pricing.hits(),
            self.inventory.hits(),
        ]
    }
}

fn x_cache(r: &Response) -> &str {
    r.header("x-cache").unwrap_or("(none)")
}

/// `POST /cache/purge` on the admin listener; returns the status.
fn purge(gw: &Gateway, body: &str) -> u16 {
    let at = gw.handle.admin_addr().unwrap();
    admin_request(at, "POST", "/cache/purge", None, body).0
}

#[test]
fn cached_compose_route_answers_the_second_request_without_calling_parts() {
    let s = Services::new();
    let gw = s.gateway("ttl_s = 30");
    let mut c = gw.client();
    let r1 = c.request("GET /product/42?region=eu HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    assert_eq!((r1.status, x_cache(&r1)), (200, "MISS"), "{r1:?}");
    assert_eq!(r1.header("x-gateway-partial"), None);
    assert_eq!(s.hits(), [1, 1, 1]);
    let r2 = c.request(
        "GET /product/42?region=eu HTTP/1.1\r\nHost: shop.test\r\nX-Request-Id: second\r\n\r\n",
    );
    assert_eq!((r2.status, x_cache(&r2)), (200, "HIT"), "{r2:?}");
    assert_eq!(r2.body, r1.body, "the stored merged answer");
    assert_eq!(r2.header("content-type"), Some("application/json"));
    assert_eq!(
        r2.header("content-length"),
        Some(r1.body.len().to_string().as_str())
    );
    assert_eq!(r2.header("age"), Some("0"));
    assert_eq!(r2.header_all("x-request-id"), ["second"]);
    assert_eq!(r2.header("x-gateway-partial"), None);
    // HEAD is answered from the stored GET.
    c.send("HEAD /product/42?region=eu HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    let h = c.read_head_response();
    assert_eq!((h.status, x_cache(&h)), (200, "HIT"));
    assert!(h.body.is_empty());
    assert_eq!(s.hits(), [1, 1, 1], "every part was called exactly once");
    // Another query (the inventory part passes it on) is another key.
    let r3 = c.request("GET /product/42?region=us HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    assert_eq!(x_cache(&r3), "MISS");
    assert_eq!(s.inventory.last().target, "/stock/42?region=us");
    assert_eq!(s.hits(), [2, 2, 2]);
    c.assert_open();
}

/// A partial aggregate (an optional part failed) must not be served for
/// the whole ttl: it goes to the client marked `X-Gateway-Partial` and is
/// not stored, so the next request calls the parts again.
#[test]
fn partial_compose_answer_is_not_stored() {
    let pricing_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = Services {
        products: json_service(PRODUCT),
        pricing: switchable_service(PRICE, pricing_up.clone()),
        inventory: json_service(STOCK),
    };
    let gw = s.gateway("ttl_s = 30");
    let mut c = gw.client();
    for i in 1..=2 {
        let r = c.get("/product/42");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-gateway-partial"), Some("pricing"));
        assert_eq!(x_cache(&r), "MISS", "request {i}");
        assert_eq!(s.hits(), [i, i, i], "request {i} called every part");
    }
    // Once every part answers, the complete answer is stored.
    pricing_up.store(true, Ordering::SeqCst);
    let r = c.get("/product/42");
    assert_eq!((x_cache(&r), r.header("x-gateway-partial")), ("MISS", None));
    let r = c.get("/product/42");
    assert_eq!((x_cache(&r), r.header("x-gateway-partial")), ("HIT", None));
    assert_eq!(
        r.json()["pricing"],
        json!({"price": 9.90, "currency": "EUR"})
    );
    assert_eq!(s.hits(), [3, 3, 3]);
}

#[test]
fn failed_required_part_is_not_stored() {
    let products_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = Services {
        products: switchable_service(PRODUCT, products_up.clone()),
        pricing: json_service(PRICE),
        inventory: json_service(STOCK),
    };
    let gw = s.gateway("ttl_s = 30");
    let mut c = gw.client();
    for _ in 0..2 {
        let r = c.get("/product/42");
        assert_json_error(&r, 502);
        assert_eq!(x_cache(&r), "MISS");
    }
    assert_eq!(s.products.hits(), 2);
}

/// A part that says its answer must not be stored keeps the merged
/// answer out of the cache.
#[test]
fn part_with_no_store_keeps_the_compose_answer_out() {
    let s = Services {
        products: json_service(PRODUCT),
        pricing: MockUpstream::builder()
            .header("Content-Type", "application/json")
            .header("Cache-Control", "private, max-age=60")
            .respond(200, PRICE)
            .start(),
        inventory: json_service(STOCK),
    };
    let gw = s.gateway("ttl_s = 30");
    let mut c = gw.client();
    for _ in 0..2 {
        let r = c.get("/product/42");
        assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
        assert_eq!(r.header("x-gateway-partial"), None);
    }
    assert_eq!(s.hits(), [2, 2, 2]);
}

#[test]
fn cached_compose_answer_expires_after_the_route_ttl() {
    let s = Services::new();
    let gw = s.gateway("ttl_s = 1");
    let mut c = gw.client();
    assert_eq!(x_cache(&c.get("/product/42")), "MISS");
    assert_eq!(x_cache(&c.get("/product/42")), "HIT");
    assert_eq!(s.hits(), [1, 1, 1]);
    std::thread::sleep(Duration::from_millis(1100));
    let r = c.get("/product/42");
    assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
    assert_eq!(s.hits(), [2, 2, 2], "the parts were called again");
    assert_eq!(x_cache(&c.get("/product/42")), "HIT");
}

#[test]
fn purge_removes_a_cached_compose_answer() {
    let s = Services::new();
    let gw = s.gateway("ttl_s = 300");
    let mut c = gw.client();
    for p in ["/product/42", "/product/43"] {
        c.get(p);
        assert_eq!(x_cache(&c.get(p)), "HIT", "{p}");
    }
    assert_eq!(s.hits(), [2, 2, 2]);
    assert_eq!(purge(&gw, r#"{"path": "/product/42"}"#), 200);
    let r = c.get("/product/42");
    assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
    assert_eq!(x_cache(&c.get("/product/43")), "HIT");
    assert_eq!(s.hits(), [3, 3, 3]);
    assert_eq!(purge(&gw, r#"{"prefix": "/product/"}"#), 200);
    assert_eq!(x_cache(&c.get("/product/43")), "MISS");
    assert_eq!(s.hits(), [4, 4, 4]);
}

/// Concurrent misses for one key wait for the first one's parts.
#[test]
fn concurrent_compose_misses_call_the_parts_once() {
    let s = Services {
        products: MockUpstream::builder()
            .header("Content-Type", "application/json")
            .latency(Duration::from_millis(300))
            .respond(200, PRODUCT)
            .start(),
        pricing: json_service(PRICE),
        inventory: json_service(STOCK),
    };
    let gw = s.gateway("ttl_s = 30");
    const N: usize = 6;
    let barrier = Arc::new(std::sync::Barrier::new(N));
    let addr = gw.addr;
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                b.wait();
                let r = c.get("/product/42");
                (r.status, x_cache(&r).to_string(), r.json())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (status, _, body) in &results {
        assert_eq!(*status, 200);
        assert_eq!(body["details"]["id"], 42);
    }
    let misses = results.iter().filter(|r| r.1 == "MISS").count();
    assert_eq!(misses, 1, "{results:?}");
    assert_eq!(s.hits(), [1, 1, 1]);
}

/// After expiry, within `stale_if_error_s`, a failing required part is
/// answered with the stale merged answer.
#[test]
fn stale_if_error_covers_a_failed_required_part() {
    let products_up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let s = Services {
        products: switchable_service(PRODUCT, products_up.clone()),
        pricing: json_service(PRICE),
        inventory: json_service(STOCK),
    };
    let gw = s.gateway("ttl_s = 1, stale_if_error_s = 60");
    let mut c = gw.client();
    let first = c.get("/product/42");
    assert_eq!((first.status, x_cache(&first)), (200, "MISS"));
    products_up.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1100));
    let r = c.get("/product/42");
    assert_eq!((r.status, x_cache(&r)), (200, "STALE"), "{r:?}");
    assert_eq!(r.body, first.body);
    assert_eq!(s.products.hits(), 2, "the parts were asked");
    c.assert_open();
}

/// After expiry, within `stale_while_revalidate_s`, the stale merged
/// answer is served at once while one background refresh calls the parts.
#[test]
fn stale_while_revalidate_refreshes_the_parts_once() {
    let s = Services::new();
    let gw = s.gateway("ttl_s = 1, stale_while_revalidate_s = 30");
    let mut c = gw.client();
    assert_eq!(x_cache(&c.get("/product/42")), "MISS");
    std::thread::sleep(Duration::from_millis(1100));
    let r = c.get("/product/42");
    assert_eq!((r.status, x_cache(&r)), (200, "STALE"), "{r:?}");
    assert!(
        s.products.wait_hits(2),
        "a background refresh called the parts"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let r = loop {
        let r = c.get("/product/42");
        if x_cache(&r) == "HIT" || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((r.status, x_cache(&r)), (200, "HIT"));
    assert_eq!(r.header("age"), Some("0"), "the refreshed answer");
    assert_eq!(s.hits(), [2, 2, 2], "exactly one refresh");
}

#[test]
fn compose_cache_config_is_accepted_and_checked() {
    let parse = |cache: &str| {
        let text = format!(
            "[upstreams.products]\ntargets = [\"127.0.0.1:9\"]\n\
             [upstreams.pricing]\ntargets = [\"127.0.0.1:9\"]\n\
             [upstreams.inventory]\ntargets = [\"127.0.0.1:9\"]\n{}",
            cached_product_page(cache)
        );
        ringgate::config::Config::parse(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    // Refused before ("a compose route cannot be cached yet").
    assert_eq!(parse("ttl_s = 30"), "");
    assert_eq!(
        parse("ttl_s = 30, stale_while_revalidate_s = 5, stale_if_error_s = 60"),
        ""
    );
    // A merged answer has no freshness of its own: ttl_s is required.
    let e = parse("stale_if_error_s = 60");
    assert!(
        e.contains("routes[0].cache.ttl_s") && e.contains("set ttl_s"),
        "{e}"
    );
    // Only complete 200s are stored: statuses has no meaning here.
    let e = parse("ttl_s = 30, statuses = [200, 404]");
    assert!(
        e.contains("routes[0].cache.statuses") && e.contains("remove statuses"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Parts as upstream exchanges: retries, hashing, latency, pool metrics
// ---------------------------------------------------------------------------

/// A gateway (with an admin listener) whose route `/item/{id}` composes
/// one required part `item` from upstream `items` (`targets`, plus the
/// `extra` keys of `[upstreams.items]`).
fn one_part_gateway(targets: &[SocketAddr], extra: &str) -> Gateway {
    let list: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    Gateway::start(&format!(
        r#"[server]
listen = "127.0.0.1:0"
workers = 1
pin = false
drain_timeout_ms = 1000

[admin]
listen = "127.0.0.1:0"

[upstreams.items]
targets = [{}]
request_timeout_ms = 5000
{extra}

[[routes]]
name = "item-page"
path = "/item/{{id}}"

[routes.compose]
timeout_ms = 3000

[[routes.compose.parts]]
key = "item"
upstream = "items"
path = "/items/{{id}}"
required = true
"#,
        list.join(", ")
    ))
}

/// The value of a metric line (`name{labels}`) on the admin listener.
fn metric(gw: &Gateway, name_and_labels: &str) -> f64 {
    let at = gw.handle.admin_addr().unwrap();
    let (status, body) = admin_request(at, "GET", "/metrics", None, "");
    assert_eq!(status, 200);
    body.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Regression: a part used to get one try on one target, so a part whose
/// upstream had a refusing target failed whenever the balancer picked it,
/// although another target was up. A refused connect now goes to the next
/// target, as a forwarded request's does.
#[test]
fn a_part_whose_first_target_refuses_is_answered_by_the_next() {
    let live = json_service(STOCK);
    let gw = one_part_gateway(&[refused_addr(), live.addr], "retries = 1");
    let mut c = gw.client();
    // Round robin starts at either target: over four requests the refusing
    // one is picked first at least once, and every answer is whole.
    for _ in 0..4 {
        let r = c.get("/item/7");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-gateway-partial"), None);
        assert_eq!(r.json(), json!({ "item": { "available": 7 } }));
    }
    assert_eq!(live.hits(), 4);
    assert_eq!(live.last().target, "/items/7");
}

/// A 503 from one target of an idempotent part is retried on another.
#[test]
fn a_part_answered_503_by_one_target_is_retried_on_another() {
    let sick = MockUpstream::builder().respond(503, "busy").start();
    let live = json_service(STOCK);
    let gw = one_part_gateway(&[sick.addr, live.addr], "retries = 1");
    let mut c = gw.client();
    for _ in 0..4 {
        let r = c.get("/item/7");
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(live.hits(), 4);
    assert!(
        sick.hits() >= 1,
        "the 503 target was asked first at least once"
    );
}

/// With `balance = "consistent_hash"` a part goes to the target its
/// upstream's `hash_key` (taken from the client request) maps to: every
/// request of one user reaches the same target.
#[test]
fn parts_honour_consistent_hashing() {
    let a = json_service(STOCK);
    let b = json_service(STOCK);
    let gw = one_part_gateway(
        &[a.addr, b.addr],
        "balance = \"consistent_hash\"\nhash_key = \"header:X-User\"",
    );
    // An odd number of users, so a round robin would move each user to
    // the other target from one round to the next; enough of them that
    // the ring (built on the targets' ephemeral ports) is very unlikely to
    // put them all on one target (with five users it did about once in 16
    // runs).
    let users: Vec<String> = (0..17).map(|i| format!("user-{i}")).collect();
    let mut owner = std::collections::HashMap::new();
    for round in 0..3 {
        for u in &users {
            let before = (a.hits(), b.hits());
            let mut c = gw.client();
            let r = c.request(format!(
                "GET /item/1 HTTP/1.1\r\nHost: shop.test\r\nX-User: {u}\r\n\r\n"
            ));
            assert_eq!(r.status, 200, "{r:?}");
            let went_to_a = a.hits() > before.0;
            assert!(
                went_to_a != (b.hits() > before.1),
                "exactly one target asked"
            );
            let first = *owner.entry(u).or_insert(went_to_a);
            assert_eq!(went_to_a, first, "{u} moved target in round {round}");
        }
    }
    // The keys spread over both targets.
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "a {} b {}",
        a.hits(),
        b.hits()
    );
}

/// With `balance = "p2c_ewma"` the parts' response times feed the
/// balancer: a target with added latency gets few of the parts. One client
/// in sequence, so no part is in flight at a pick and only the latency
/// tells the targets apart (without samples every pick is a coin toss).
#[test]
fn parts_feed_p2c_ewma_latency() {
    let fast = json_service(STOCK);
    let slow = MockUpstream::builder()
        .header("Content-Type", "application/json")
        .respond(200, STOCK)
        .latency(Duration::from_millis(20))
        .start();
    let gw = one_part_gateway(&[fast.addr, slow.addr], "balance = \"p2c_ewma\"");
    let mut c = gw.client();
    for _ in 0..40 {
        assert_eq!(c.get("/item/1").status, 200);
    }
    let share = slow.hits() as f64 / (slow.hits() + fast.hits()) as f64;
    assert!(share < 0.2, "share of the slow target: {share}");
}

/// Part connections count in the upstream connection metrics: one opened,
/// the rest reused from the pool.
#[test]
fn part_connections_count_in_the_pool_metrics() {
    let items = json_service(STOCK);
    let gw = one_part_gateway(&[items.addr], "");
    let mut c = gw.client();
    for _ in 0..5 {
        assert_eq!(c.get("/item/3").status, 200);
    }
    let opened = metric(
        &gw,
        r#"ringgate_upstream_connections_opened_total{upstream="items"}"#,
    );
    let reused = metric(
        &gw,
        r#"ringgate_upstream_connections_reused_total{upstream="items"}"#,
    );
    assert_eq!(opened + reused, 5.0, "opened {opened} reused {reused}");
    assert_eq!(opened, 1.0);
    assert_eq!(items.conns(), 1);
}

/// A try that outlives the upstream's `try_timeout_ms` (shorter than its
/// `request_timeout_ms`) goes to another target within the part's
/// deadline.
#[test]
fn a_part_whose_first_target_stalls_past_the_try_timeout_is_answered_by_the_next() {
    let stalled = MockUpstream::builder().stall().start();
    let live = json_service(STOCK);
    let gw = one_part_gateway(
        &[stalled.addr, live.addr],
        "retries = 1\ntry_timeout_ms = 200",
    );
    let mut c = gw.client();
    for _ in 0..3 {
        let r = c.get("/item/7");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json(), json!({ "item": { "available": 7 } }));
    }
    assert_eq!(live.hits(), 3);
    assert!(
        stalled.hits() >= 1,
        "the stalled target was asked first at least once"
    );
}
