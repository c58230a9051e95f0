//! Request/response transformation over real sockets: header ops both
//! ways, path rewrites (prefixes, templates), query ops, response JSON ops
//! (re-framed with a correct Content-Length), status mapping; and a route
//! without a transform left as it is.

mod support;

use serde_json::json;
use support::*;

fn gateway(up: &MockUpstream, routes: &str) -> Gateway {
    Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\ndrain_timeout_ms = 1000\n\n\
         [upstreams.up]\ntargets = [\"{}\"]\n\n{routes}",
        up.addr
    ))
}

#[test]
fn request_header_ops() {
    let up = MockUpstream::builder().respond(200, "ok").start();
    let gw = gateway(
        &up,
        r#"
[[routes]]
path = "/h"
upstream = "up"
transform = { request_headers = { add = { "X-Added" = "a" }, set = { "X-Mode" = "gateway", "Host" = "internal.svc" }, remove = ["X-Secret"], rename = { "X-Old" = "X-New" } } }
"#,
    );
    let mut c = gw.client();
    let r = c.request(
        "GET /h HTTP/1.1\r\nHost: api.test\r\nX-Mode: client\r\nX-Mode: again\r\nX-Secret: s\r\nX-Old: v1\r\nX-Keep: k\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let req = up.last();
    assert_eq!(req.header_all("x-mode"), ["gateway"], "{}", req.head_str());
    assert_eq!(req.header("x-added"), Some("a"));
    assert!(!req.has_header("x-secret"));
    assert!(!req.has_header("x-old"));
    assert_eq!(req.header("x-new"), Some("v1"));
    assert_eq!(req.header("x-keep"), Some("k"));
    assert_eq!(req.header_all("host"), ["internal.svc"]);
    // The next request on the connection is forwarded untouched by the
    // previous one's edits.
    let r = c.request("GET /h HTTP/1.1\r\nHost: api.test\r\nX-Old: v2\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-new"), Some("v2"));
}

#[test]
fn response_header_ops_and_status_mapping() {
    let up = MockUpstream::builder()
        .header("X-Powered-By", "php")
        .header("X-Internal", "1")
        .header("Server", "backend")
        .header("Cache-Control", "no-store")
        .respond(404, "missing")
        .start();
    let gw = gateway(
        &up,
        r#"
[[routes]]
path = "/r"
upstream = "up"
[routes.transform]
status = { "404" = 200 }
[routes.transform.response_headers]
add = { "X-Gateway" = "ringgate" }
set = { "Cache-Control" = "max-age=60" }
remove = ["X-Powered-By"]
rename = { "X-Internal" = "X-Debug" }
"#,
    );
    let r = gw.get("/r");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.reason, "OK");
    assert_eq!(r.text(), "missing", "the body is relayed");
    assert_eq!(r.header("x-gateway"), Some("ringgate"));
    assert_eq!(r.header_all("cache-control"), ["max-age=60"]);
    assert_eq!(r.header("x-powered-by"), None);
    assert_eq!(r.header("x-internal"), None);
    assert_eq!(r.header("x-debug"), Some("1"));
    assert_eq!(r.header("server"), Some("backend"));
}

#[test]
fn path_prefixes_are_stripped_and_added() {
    let up = MockUpstream::builder().respond(200, "ok").start();
    let gw = gateway(
        &up,
        r#"
[[routes]]
path = "/users/{*rest}"
upstream = "up"
transform = { strip_prefix = "/users", add_prefix = "/api/v2/people" }

[[routes]]
path = "/strip/{*rest}"
upstream = "up"
transform = { strip_prefix = "/strip" }
"#,
    );
    let mut c = gw.client();
    for (path, want) in [
        ("/users/7/orders?limit=2", "/api/v2/people/7/orders?limit=2"),
        ("/users", "/api/v2/people"),
        ("/strip/a/b", "/a/b"),
        ("/strip", "/"),
        ("/strip/?q=1", "/?q=1"),
    ] {
        assert_eq!(c.get(path).status, 200);
        assert_eq!(up.last().target, want, "for {path}");
    }
}

#[test]
fn path_template_and_query_ops() {
    let up = MockUpstream::builder().respond(200, "ok").start();
    let gw = gateway(
        &up,
        r#"
[[routes]]
path = "/shop/{shop}/item/{id}"
upstream = "up"
transform = { path = "/items/{id}/in/{shop}", query = { add = { source = "gateway", "a b" = "c&d" }, remove = ["debug", "token"] } }
"#,
    );
    let r = gw.get("/shop/s1/item/42?debug=1&x=2&token=t&source=client&y");
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().target,
        "/items/42/in/s1?x=2&y&a%20b=c%26d&source=gateway"
    );
    assert_eq!(gw.get("/shop/s2/item/7").status, 200);
    assert_eq!(
        up.last().target,
        "/items/7/in/s2?a%20b=c%26d&source=gateway"
    );
}

#[test]
fn response_json_ops_rewrite_and_reframe_the_body() {
    let up = MockUpstream::builder()
        .header("Content-Type", "application/json; charset=utf-8")
        .respond(
            200,
            r#"{"id":7,"name":"Ann","password_hash":"x","email":"a@b.c","score":1.50}"#,
        )
        .start();
    let gw = gateway(
        &up,
        r#"
[[routes]]
path = "/users/{id}"
upstream = "up"
transform = { response_json = { remove = ["password_hash"], rename = { name = "display_name" } } }

[[routes]]
path = "/only/{id}"
upstream = "up"
transform = { response_json = { only = ["id", "email"] } }
"#,
    );
    let mut c = gw.client();
    let r = c.get("/users/7");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        r#"{"id":7,"display_name":"Ann","email":"a@b.c","score":1.50}"#
    );
    assert_eq!(
        r.header("content-length").unwrap(),
        r.body.len().to_string()
    );
    let r = c.get("/only/7");
    assert_eq!(r.json(), json!({"id": 7, "email": "a@b.c"}));
    assert_eq!(
        r.header("content-length").unwrap(),
        r.body.len().to_string()
    );
    // HEAD: no body, nothing rewritten.
    c.send("HEAD /only/7 HTTP/1.1\r\nHost: x\r\n\r\n");
    let h = c.read_head_response();
    assert_eq!(h.status, 200);
    c.assert_open();
}

#[test]
fn chunked_json_is_rewritten_and_non_json_passes_unchanged() {
    let chunked = MockUpstream::builder()
        .handler(|_| Reply::Bytes {
            data: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
                    9\r\n[{\"a\":1,\"\r\nb\r\nb\":2},{\"b\":\r\n4\r\n3}]\n\r\n0\r\n\r\n"
                .to_vec(),
            close: false,
        })
        .start();
    let gw = gateway(
        &chunked,
        r#"
[[routes]]
path = "/list"
upstream = "up"
transform = { response_json = { remove = ["b"] } }
"#,
    );
    let r = gw.get("/list");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.chunked);
    assert_eq!(r.text(), r#"[{"a":1},{}]"#);

    let text = MockUpstream::builder()
        .header("Content-Type", "text/plain")
        .respond(200, "{\"b\":1} is not JSON to us")
        .start();
    let gw = gateway(
        &text,
        r#"
[[routes]]
path = "/t"
upstream = "up"
transform = { response_json = { remove = ["b"] } }
"#,
    );
    let r = gw.get("/t");
    assert_eq!(r.text(), "{\"b\":1} is not JSON to us");
}

#[test]
fn bodies_over_the_limit_pass_unchanged() {
    let big = format!("{{\"b\":1,\"pad\":\"{}\"}}", "x".repeat(200 * 1024));
    let up = MockUpstream::builder()
        .header("Content-Type", "application/json")
        .respond(200, &big)
        .start();
    let gw = gateway(
        &up,
        r#"
[[routes]]
path = "/big"
upstream = "up"
transform = { response_json = { remove = ["b"], max_body_bytes = 1024 } }
"#,
    );
    let mut c = gw.client();
    for _ in 0..2 {
        let r = c.get("/big");
        assert_eq!(r.status, 200);
        assert!(
            r.text() == big,
            "relayed unchanged ({} bytes)",
            r.body.len()
        );
    }
}

#[test]
fn route_without_transform_is_untouched() {
    let up = MockUpstream::builder()
        .header("Content-Type", "application/json")
        .header("X-Powered-By", "php")
        .respond(404, r#"{"b":1}"#)
        .start();
    let gw = gateway(
        &up,
        r#"
[[routes]]
path = "/t/{*rest}"
upstream = "up"
transform = { strip_prefix = "/t", status = { "404" = 200 }, response_json = { remove = ["b"] }, response_headers = { remove = ["X-Powered-By"] } }

[[routes]]
path = "/{*rest}"
upstream = "up"
"#,
    );
    let mut c = gw.client();
    let r = c.get("/t/x");
    assert_eq!((r.status, r.text().as_str()), (200, "{}"));
    assert_eq!(r.header("x-powered-by"), None);
    assert_eq!(up.last().target, "/x");
    let r = c.request("GET /plain?q=1 HTTP/1.1\r\nHost: h\r\nX-Old: 1\r\n\r\n");
    assert_eq!((r.status, r.text().as_str()), (404, r#"{"b":1}"#));
    assert_eq!(r.header("x-powered-by"), Some("php"));
    let req = up.last();
    assert_eq!(req.target, "/plain?q=1");
    assert_eq!(req.header("x-old"), Some("1"));
}

#[test]
fn config_errors_name_the_transform_keys() {
    let bad = r#"
[upstreams.a]
targets = ["127.0.0.1:9"]

[[routes]]
path = "/p/{id}"
upstream = "a"
transform = { request_headers = { remove = ["Content-Length", "Host"] }, path = "/x/{sku}", status = { "200" = 204 }, response_json = { colour = 1 } }
"#;
    let e = ringgate::config::Config::parse(bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("colour"), "missing colour in:\n{e}");
    let bad = r#"
[upstreams.a]
targets = ["127.0.0.1:9"]

[[routes]]
path = "/p/{id}"
upstream = "a"
transform = { request_headers = { remove = ["Content-Length", "Host"] }, path = "/x/{sku}", status = { "200" = 204 }, strip_prefix = "/p" }
"#;
    let e = ringgate::config::Config::parse(bad)
        .unwrap_err()
        .to_string();
    for want in [
        "routes[0].transform.request_headers.remove",
        "Content-Length",
        "Host",
        "routes[0].transform.path",
        "routes[0].transform.status",
    ] {
        assert!(e.contains(want), "missing {want} in:\n{e}");
    }
}
