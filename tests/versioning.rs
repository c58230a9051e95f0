//! API versioning over real sockets: each version source (path prefix,
//! header, query, vendor media type), their order, routes sharing a path
//! with different versions and upstreams, version-less routes, deprecated
//! and unknown versions.

mod support;

use support::*;

struct Setup {
    gw: Gateway,
    v1: MockUpstream,
    v2: MockUpstream,
    any: MockUpstream,
}

fn setup(versioning: &str) -> Setup {
    let v1 = MockUpstream::builder().respond(200, "users v1").start();
    let v2 = MockUpstream::builder().respond(200, "users v2").start();
    let any = MockUpstream::builder().respond(200, "health").start();
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
pin = false
drain_timeout_ms = 1000

{versioning}

[upstreams.users_v1]
targets = ["{}"]
[upstreams.users_v2]
targets = ["{}"]
[upstreams.health]
targets = ["{}"]

[[routes]]
name = "users-v1"
path = "/users/{{id}}"
upstream = "users_v1"
version = "1"
deprecated = true
sunset = "Sat, 31 Jan 2032 23:59:59 GMT"

[[routes]]
name = "users-v2"
path = "/users/{{id}}"
upstream = "users_v2"
version = "2"

[[routes]]
name = "reports-v2"
path = "/reports"
upstream = "users_v2"
version = "2"

[[routes]]
name = "health"
path = "/health"
upstream = "health"
"#,
        v1.addr, v2.addr, any.addr
    );
    Setup {
        gw: Gateway::start(&toml),
        v1,
        v2,
        any,
    }
}

const ACME: &str = r#"
[versioning]
sources = ["path", "header", "query", "accept"]
header = "Accept-Version"
query = "version"
vendor = "acme"
default = "1"
"#;

fn get(gw: &Gateway, target: &str, headers: &str) -> Response {
    gw.client().request(format!(
        "GET {target} HTTP/1.1\r\nHost: api.test\r\n{headers}Connection: close\r\n\r\n"
    ))
}

#[test]
fn path_prefix_selects_the_version_and_is_stripped() {
    let s = setup(ACME);
    let r = get(&s.gw, "/v2/users/7?x=1", "");
    assert_eq!((r.status, r.text().as_str()), (200, "users v2"));
    assert_eq!(s.v2.last().target, "/users/7?x=1");
    let r = get(&s.gw, "/v1/users/7", "");
    assert_eq!((r.status, r.text().as_str()), (200, "users v1"));
    assert_eq!(s.v1.last().target, "/users/7");
    // Absent: the default version.
    let r = get(&s.gw, "/users/7", "");
    assert_eq!(r.text(), "users v1");
    assert_eq!(s.v1.last().target, "/users/7");
}

#[test]
fn header_query_and_vendor_media_type() {
    let s = setup(ACME);
    assert_eq!(
        get(&s.gw, "/users/7", "Accept-Version: 2\r\n").text(),
        "users v2"
    );
    assert_eq!(
        get(&s.gw, "/users/7", "accept-version: v2\r\n").text(),
        "users v2"
    );
    assert_eq!(get(&s.gw, "/users/7?version=2", "").text(), "users v2");
    assert_eq!(s.v2.last().target, "/users/7?version=2");
    assert_eq!(
        get(
            &s.gw,
            "/users/7",
            "Accept: text/html, application/vnd.acme.v2+json;q=0.9\r\n"
        )
        .text(),
        "users v2"
    );
    assert_eq!(
        get(
            &s.gw,
            "/users/7",
            "Accept: application/vnd.acme.v1+json\r\n"
        )
        .text(),
        "users v1"
    );
    // Another vendor's media type is not a version.
    assert_eq!(
        get(
            &s.gw,
            "/users/7",
            "Accept: application/vnd.other.v2+json\r\n"
        )
        .text(),
        "users v1"
    );
}

#[test]
fn sources_are_read_in_the_configured_order() {
    // Default order: path, header, query, accept.
    let s = setup(ACME);
    assert_eq!(
        get(&s.gw, "/v1/users/7?version=2", "Accept-Version: 2\r\n").text(),
        "users v1",
        "path before header and query"
    );
    assert_eq!(
        get(&s.gw, "/users/7?version=1", "Accept-Version: 2\r\n").text(),
        "users v2",
        "header before query"
    );
    drop(s);

    let s = setup(
        r#"
[versioning]
sources = ["query", "header"]
"#,
    );
    assert_eq!(
        get(&s.gw, "/users/7?version=1", "Accept-Version: 2\r\n").text(),
        "users v1",
        "query before header"
    );
    // The path source is off: /v2/... is an ordinary path.
    let r = get(&s.gw, "/v2/users/7", "");
    assert_json_error(&r, 404);
    // So is the accept source.
    assert_eq!(
        get(
            &s.gw,
            "/users/7",
            "Accept: application/vnd.acme.v2+json\r\n"
        )
        .text(),
        "users v1"
    );
}

#[test]
fn routes_without_a_version_serve_every_version() {
    let s = setup(ACME);
    for (target, headers) in [
        ("/health", ""),
        ("/v2/health", ""),
        ("/health", "Accept-Version: 2\r\n"),
        ("/health?version=1", ""),
    ] {
        let r = get(&s.gw, target, headers);
        assert_eq!((r.status, r.text().as_str()), (200, "health"), "{target}");
        assert_eq!(s.any.last().target.split('?').next(), Some("/health"));
    }
}

#[test]
fn unknown_versions_are_400_naming_the_versions() {
    let s = setup(ACME);
    for (target, headers) in [
        ("/v9/users/7", ""),
        ("/users/7", "Accept-Version: 9\r\n"),
        ("/users/7?version=abc", ""),
        ("/users/7", "Accept: application/vnd.acme.v3+json\r\n"),
    ] {
        let r = get(&s.gw, target, headers);
        assert_json_error(&r, 400);
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains("versions 1, 2"), "{target}: {msg}");
    }
    // A version that exists, on a path that does not have it.
    let r = get(&s.gw, "/reports", "Accept-Version: 1\r\n");
    assert_json_error(&r, 400);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("version 2"), "{msg}");
    assert_eq!(get(&s.gw, "/v2/reports", "").status, 200);
    assert_eq!(s.v1.hits(), 0);
}

#[test]
fn deprecated_versions_carry_deprecation_and_sunset() {
    let s = setup(ACME);
    let r = get(&s.gw, "/v1/users/7", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("deprecation"), Some("true"));
    assert_eq!(r.header("sunset"), Some("Sat, 31 Jan 2032 23:59:59 GMT"));
    let r = get(&s.gw, "/v2/users/7", "");
    assert_eq!(r.header("deprecation"), None);
    assert_eq!(r.header("sunset"), None);
}

#[test]
fn bare_version_prefix_forwards_root() {
    let up = MockUpstream::builder().respond(200, "root").start();
    let gw = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\n\
         [versioning]\n[upstreams.u]\ntargets = [\"{}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"u\"\nversion = \"2\"\n",
        up.addr
    ));
    let r = get(&gw, "/v2?q=1", "");
    assert_eq!((r.status, r.text().as_str()), (200, "root"));
    assert_eq!(up.last().target, "/?q=1");
}

#[test]
fn version_config_errors() {
    let bad = r#"
[versioning]
sources = ["path", "cookie", "accept"]

[upstreams.a]
targets = ["127.0.0.1:9"]

[[routes]]
path = "/u"
upstream = "a"
version = "2"
sunset = "tomorrow"
"#;
    let e = ringgate::config::Config::parse(bad)
        .unwrap_err()
        .to_string();
    for want in [
        "versioning.sources",
        "cookie",
        "versioning.vendor",
        "routes[0].sunset",
    ] {
        assert!(e.contains(want), "missing {want} in:\n{e}");
    }
    let dup = r#"
[upstreams.a]
targets = ["127.0.0.1:9"]

[[routes]]
path = "/u"
upstream = "a"
version = "2"

[[routes]]
path = "/u"
upstream = "a"
version = "v2"
"#;
    let e = ringgate::config::Config::parse(dup)
        .unwrap_err()
        .to_string();
    for want in ["routes[1].version", "both serve version 2"] {
        assert!(e.contains(want), "missing {want} in:\n{e}");
    }
    // A route whose path starts with a version segment could never match
    // while the path source strips it.
    let shadowed = r#"
[versioning]
[upstreams.a]
targets = ["127.0.0.1:9"]
[[routes]]
path = "/v2/products/{id}"
upstream = "a"
"#;
    let e = ringgate::config::Config::parse(shadowed)
        .unwrap_err()
        .to_string();
    assert!(e.contains("routes[0].path"), "{e}");
    assert!(e.contains("version = \"2\""), "{e}");
    let fine = shadowed.replace("[versioning]", "[versioning]\nsources = [\"header\"]");
    assert!(ringgate::config::Config::parse(&fine).is_ok());
}
