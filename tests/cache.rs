//! The per-route response cache over real sockets: hits and misses counted
//! at a mock backend, the key (query, host, `Vary`), what is never stored
//! (`no-store`, `private`, `Set-Cookie`, `Authorization`), freshness (the
//! route's `ttl_s`, the backend's `max-age`), stale-while-revalidate (one
//! background refresh), stale-if-error (5xx and refused connections),
//! coalesced misses, purges through the admin API, the byte bound, the
//! metrics, and a hit that allocates nothing.
//!
//! Gateways run with `workers = 1` wherever a test depends on every
//! request reaching the same worker's cache.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;
use support::*;

// ---------------------------------------------------------------------------
// Allocation counting (for `hit_allocates_nothing`): only on threads marked
// by the gateway's worker hook, only while switched on.
// ---------------------------------------------------------------------------

#[global_allocator]
static GLOBAL: support::alloc_count::Counting = support::alloc_count::Counting;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A gateway with one worker, an admin listener, one upstream `up` and
/// the given routes (`{up}` is not needed: routes name `up`).
fn gateway(top: &str, up: &MockUpstream, routes: &str) -> Gateway {
    Gateway::start(&config(top, up.addr, routes))
}

fn config(top: &str, up: SocketAddr, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\ndrain_timeout_ms = 1000\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{top}\n\
         [upstreams.up]\ntargets = [\"{up}\"]\nconnect_timeout_ms = 500\nrequest_timeout_ms = 3000\n\n{routes}"
    )
}

/// A cached catch-all route with these `cache` keys.
fn route(cache: &str) -> String {
    format!(
        "[[routes]]\nname = \"cached\"\npath = \"/{{*rest}}\"\nupstream = \"up\"\ncache = {{ {cache} }}\n"
    )
}

/// A backend answering 200 with `headers` and a body naming the request
/// target and a per-backend sequence number (`/p#3`).
fn numbered(headers: &[(&str, &str)]) -> MockUpstream {
    let n = Arc::new(AtomicUsize::new(0));
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    MockUpstream::builder()
        .handler(move |r| {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            let body = format!("{}#{i}", r.target);
            Reply::Bytes {
                data: response_bytes(200, &headers, body.as_bytes(), r.method == "HEAD"),
                close: false,
            }
        })
        .start()
}

fn get(c: &mut Client, path: &str, extra: &str) -> Response {
    c.request(format!(
        "GET {path} HTTP/1.1\r\nHost: api.test\r\n{extra}\r\n"
    ))
}

fn age(r: &Response) -> u64 {
    r.header("age")
        .and_then(|a| a.parse().ok())
        .expect("an Age header")
}

fn x_cache(r: &Response) -> &str {
    r.header("x-cache").unwrap_or("(none)")
}

/// One request to the admin listener; returns (status, body).
fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    admin_request(addr, method, path, None, body)
}

fn purge(gw: &Gateway, body: &str) -> (u16, String) {
    admin(
        gw.handle.admin_addr().unwrap(),
        "POST",
        "/cache/purge",
        body,
    )
}

fn metric(gw: &Gateway, name_and_labels: &str) -> f64 {
    let (st, body) = admin(gw.handle.admin_addr().unwrap(), "GET", "/metrics", "");
    assert_eq!(st, 200);
    body.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn miss_then_hit_with_age_and_the_current_request_id() {
    let up = numbered(&[
        ("Cache-Control", "max-age=60"),
        ("Content-Type", "text/plain"),
    ]);
    let gw = gateway("", &up, &route("ttl_s = 30"));
    let mut c = gw.client();
    let r1 = get(&mut c, "/items/1", "");
    assert_eq!(r1.status, 200);
    assert_eq!(r1.text(), "/items/1#1");
    assert_eq!(x_cache(&r1), "MISS");
    let r2 = get(&mut c, "/items/1", "X-Request-Id: mine-42\r\n");
    assert_eq!(r2.status, 200);
    assert_eq!(r2.text(), "/items/1#1", "served from the cache");
    assert_eq!(x_cache(&r2), "HIT");
    assert_eq!(r2.header("age"), Some("0"));
    assert_eq!(r2.header_all("x-request-id"), ["mine-42"]);
    assert_eq!(r2.header("content-type"), Some("text/plain"));
    assert_eq!(r2.header("content-length"), Some("10"));
    let r3 = get(&mut c, "/items/1", "");
    assert_eq!(x_cache(&r3), "HIT");
    let (id1, id3) = (r1.header("x-request-id"), r3.header("x-request-id"));
    assert!(
        id3.is_some_and(|i| i.len() == 32) && id1 != id3,
        "{id1:?} {id3:?}"
    );
    // HEAD is answered from the stored GET, without a body.
    c.send("HEAD /items/1 HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let h = c.read_head_response();
    assert_eq!(x_cache(&h), "HIT");
    assert_eq!(h.header("content-length"), Some("10"));
    assert!(h.body.is_empty());
    // Keep-alive still works after the HEAD.
    assert_eq!(get(&mut c, "/items/1", "").text(), "/items/1#1");
    assert_eq!(up.hits(), 1, "one backend request in all");
}

#[test]
fn query_and_host_are_part_of_the_key() {
    let up = numbered(&[]);
    let gw = gateway("", &up, &route("ttl_s = 30"));
    let mut c = gw.client();
    assert_eq!(get(&mut c, "/q?a=1", "").text(), "/q?a=1#1");
    assert_eq!(get(&mut c, "/q?a=2", "").text(), "/q?a=2#2");
    assert_eq!(get(&mut c, "/q?a=1", "").text(), "/q?a=1#1");
    let other = c.request("GET /q?a=1 HTTP/1.1\r\nHost: other.test\r\n\r\n");
    assert_eq!(x_cache(&other), "MISS");
    let upper = c.request("GET /q?a=1 HTTP/1.1\r\nHost: API.TEST\r\n\r\n");
    assert_eq!(x_cache(&upper), "HIT", "hosts compare without case");
    assert_eq!(up.hits(), 3);
}

#[test]
fn vary_keeps_one_variant_per_header_value() {
    let n = Arc::new(AtomicUsize::new(0));
    let up = MockUpstream::builder()
        .handler(move |r| {
            n.fetch_add(1, Ordering::SeqCst);
            let lang = r.header("accept-language").unwrap_or("none").to_string();
            Reply::Bytes {
                data: response_bytes(
                    200,
                    &[
                        ("Vary".into(), "Accept-Language".into()),
                        ("Cache-Control".into(), "max-age=60".into()),
                    ],
                    lang.as_bytes(),
                    false,
                ),
                close: false,
            }
        })
        .start();
    let gw = gateway("", &up, &route(""));
    let mut c = gw.client();
    let en = get(&mut c, "/v", "Accept-Language: en\r\n");
    let de = get(&mut c, "/v", "Accept-Language: de\r\n");
    let none = get(&mut c, "/v", "");
    assert_eq!((en.text().as_str(), x_cache(&en)), ("en", "MISS"));
    assert_eq!((de.text().as_str(), x_cache(&de)), ("de", "MISS"));
    assert_eq!((none.text().as_str(), x_cache(&none)), ("none", "MISS"));
    let en2 = get(&mut c, "/v", "Accept-Language: en\r\n");
    let de2 = get(&mut c, "/v", "Accept-Language: de\r\n");
    let none2 = get(&mut c, "/v", "");
    assert_eq!((en2.text().as_str(), x_cache(&en2)), ("en", "HIT"));
    assert_eq!((de2.text().as_str(), x_cache(&de2)), ("de", "HIT"));
    assert_eq!((none2.text().as_str(), x_cache(&none2)), ("none", "HIT"));
    assert_eq!(up.hits(), 3);
    assert_eq!(en2.header("vary"), Some("Accept-Language"));
}

#[test]
fn vary_star_no_store_private_and_set_cookie_are_not_stored() {
    for (name, value) in [
        ("Cache-Control", "no-store"),
        ("Cache-Control", "private, max-age=60"),
        ("Cache-Control", "no-cache"),
        ("Set-Cookie", "session=abc"),
        ("Vary", "*"),
    ] {
        let up = numbered(&[(name, value)]);
        let gw = gateway("", &up, &route("ttl_s = 30"));
        let mut c = gw.client();
        for i in 1..=2 {
            let r = get(&mut c, "/n", "");
            assert_eq!(r.text(), format!("/n#{i}"), "{name}: {value}");
            assert_eq!(x_cache(&r), "MISS", "{name}: {value}");
        }
        assert_eq!(up.hits(), 2, "{name}: {value}");
    }
    // Set-Cookie is stored when the route allows it.
    let up = numbered(&[("Set-Cookie", "theme=dark")]);
    let gw = gateway("", &up, &route("ttl_s = 30, allow_set_cookie = true"));
    let mut c = gw.client();
    get(&mut c, "/n", "");
    let r = get(&mut c, "/n", "");
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.header("set-cookie"), Some("theme=dark"));
}

#[test]
fn statuses_outside_the_list_are_not_stored() {
    let up = MockUpstream::builder().respond(500, "boom").start();
    let gw = gateway("", &up, &route("ttl_s = 30"));
    let mut c = gw.client();
    assert_eq!(get(&mut c, "/e", "").status, 500);
    assert_eq!(get(&mut c, "/e", "").status, 500);
    assert_eq!(up.hits(), 2);
    let up = MockUpstream::builder().respond(404, "none").start();
    let gw = gateway("", &up, &route("ttl_s = 30"));
    let mut c = gw.client();
    get(&mut c, "/e", "");
    let r = get(&mut c, "/e", "");
    assert_eq!(
        (r.status, x_cache(&r)),
        (404, "HIT"),
        "404 is stored by default"
    );
    let gw = gateway("", &up, &route("ttl_s = 30, statuses = [200]"));
    let mut c = gw.client();
    get(&mut c, "/e", "");
    assert_eq!(x_cache(&get(&mut c, "/e", "")), "MISS");
}

#[test]
fn authorization_bypasses_unless_the_route_allows_it() {
    let up = numbered(&[]);
    let gw = gateway("", &up, &route("ttl_s = 30"));
    let mut c = gw.client();
    assert_eq!(get(&mut c, "/a", "").text(), "/a#1");
    assert_eq!(x_cache(&get(&mut c, "/a", "")), "HIT");
    // With Authorization: neither answered from the cache nor stored.
    for i in 2..=3 {
        let r = get(&mut c, "/a", "Authorization: Bearer t\r\n");
        assert_eq!((r.text(), x_cache(&r)), (format!("/a#{i}"), "MISS"));
    }
    assert_eq!(get(&mut c, "/a", "").text(), "/a#1");

    let up = numbered(&[]);
    let gw = gateway("", &up, &route("ttl_s = 30, allow_authorization = true"));
    let mut c = gw.client();
    get(&mut c, "/a", "Authorization: Bearer t\r\n");
    let r = get(&mut c, "/a", "Authorization: Bearer t\r\n");
    assert_eq!((r.text().as_str(), x_cache(&r)), ("/a#1", "HIT"));
    assert_eq!(up.hits(), 1);
}

#[test]
fn request_cache_control() {
    let up = numbered(&[]);
    let gw = gateway("", &up, &route("ttl_s = 30"));
    let mut c = gw.client();
    get(&mut c, "/r", "");
    // no-store: not looked up, not stored.
    let r = get(&mut c, "/r", "Cache-Control: no-store\r\n");
    assert_eq!((r.text().as_str(), x_cache(&r)), ("/r#2", "MISS"));
    assert_eq!(get(&mut c, "/r", "").text(), "/r#1");
    // no-cache: fetched, and the fresh answer replaces the stored one.
    let r = get(&mut c, "/r", "Cache-Control: no-cache\r\n");
    assert_eq!((r.text().as_str(), x_cache(&r)), ("/r#3", "MISS"));
    let r = get(&mut c, "/r", "");
    assert_eq!((r.text().as_str(), x_cache(&r)), ("/r#3", "HIT"));
    let r = get(&mut c, "/r", "Pragma: no-cache\r\n");
    assert_eq!(r.text(), "/r#4");
    // only-if-cached on a miss: 504.
    let r = get(&mut c, "/never", "Cache-Control: only-if-cached\r\n");
    assert_json_error(&r, 504);
    let r = get(&mut c, "/r", "Cache-Control: only-if-cached\r\n");
    assert_eq!((r.status, x_cache(&r)), (200, "HIT"));
    // A HEAD miss goes upstream and is not stored.
    c.send("HEAD /h HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(x_cache(&c.read_head_response()), "MISS");
    c.send("HEAD /h HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(x_cache(&c.read_head_response()), "MISS");
    assert_eq!(up.hits(), 6);
}

#[test]
fn if_none_match_on_a_hit_is_answered_304() {
    let up = numbered(&[("ETag", "\"v1\""), ("Cache-Control", "max-age=60")]);
    let gw = gateway("", &up, &route(""));
    let mut c = gw.client();
    get(&mut c, "/e", "");
    c.send("GET /e HTTP/1.1\r\nHost: api.test\r\nIf-None-Match: \"v0\", W/\"v1\"\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!((r.status, x_cache(&r)), (304, "HIT"));
    assert_eq!(r.header("etag"), Some("\"v1\""));
    let r = get(&mut c, "/e", "If-None-Match: \"other\"\r\n");
    assert_eq!((r.status, r.text().as_str()), (200, "/e#1"));
    assert_eq!(up.hits(), 1);
}

#[test]
fn chunked_responses_are_stored_with_a_length() {
    let up = MockUpstream::builder().chunked(&["hel", "lo"], &[]).start();
    let gw = gateway("", &up, &route("ttl_s = 60"));
    let mut c = gw.client();
    let r = get(&mut c, "/c", "");
    assert!(r.chunked);
    let r = get(&mut c, "/c", "");
    assert_eq!((r.text().as_str(), x_cache(&r)), ("hello", "HIT"));
    assert!(!r.chunked);
    assert_eq!(r.header("content-length"), Some("5"));
    assert_eq!(up.hits(), 1);
}

#[test]
fn entries_expire_after_the_route_ttl() {
    let up = numbered(&[]);
    let gw = gateway("", &up, &route("ttl_s = 1"));
    let mut c = gw.client();
    assert_eq!(get(&mut c, "/t", "").text(), "/t#1");
    assert_eq!(x_cache(&get(&mut c, "/t", "")), "HIT");
    thread::sleep(Duration::from_millis(1100));
    let r = get(&mut c, "/t", "");
    assert_eq!((r.text().as_str(), x_cache(&r)), ("/t#2", "MISS"));
    // Without a ttl and without freshness from the backend, nothing is stored.
    let gw = gateway("", &up, &route(""));
    let mut c = gw.client();
    get(&mut c, "/t", "");
    assert_eq!(x_cache(&get(&mut c, "/t", "")), "MISS");
}

#[test]
fn backend_max_age_overrides_the_route_ttl() {
    // A shorter max-age than the ttl: expires with max-age.
    let up = numbered(&[("Cache-Control", "public, max-age=1")]);
    let gw = gateway("", &up, &route("ttl_s = 60"));
    let mut c = gw.client();
    get(&mut c, "/m", "");
    assert_eq!(x_cache(&get(&mut c, "/m", "")), "HIT");
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(x_cache(&get(&mut c, "/m", "")), "MISS");
    // A longer s-maxage than the ttl: still fresh after the ttl.
    let up = numbered(&[("Cache-Control", "max-age=0, s-maxage=60")]);
    let gw = gateway("", &up, &route("ttl_s = 1"));
    let mut c = gw.client();
    get(&mut c, "/m", "");
    thread::sleep(Duration::from_millis(1100));
    let r = get(&mut c, "/m", "");
    assert_eq!((r.text().as_str(), x_cache(&r)), ("/m#1", "HIT"));
    assert!(age(&r) >= 1, "{r:?}");
    // The backend's Age counts against the lifetime.
    let up = numbered(&[("Cache-Control", "max-age=10"), ("Age", "10")]);
    let gw = gateway("", &up, &route("ttl_s = 60"));
    let mut c = gw.client();
    get(&mut c, "/m", "");
    assert_eq!(x_cache(&get(&mut c, "/m", "")), "MISS");
}

/// The backend's `Expires` gives the lifetime when the route has no
/// `ttl_s`, in each form of HTTP-date a recipient must accept: IMF-fixdate
/// and the obsolete RFC 850 and asctime forms (which were once read as
/// invalid, so the answer counted as already expired and was not stored).
#[test]
fn expires_in_every_http_date_form_gives_the_lifetime() {
    for (date, expires) in [
        (
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:50:37 GMT",
        ),
        (
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:50:37 GMT",
        ),
        ("Sun Nov  6 08:49:37 1994", "Sun Nov  6 08:50:37 1994"),
    ] {
        let up = numbered(&[("Date", date), ("Expires", expires)]);
        let gw = gateway("", &up, &route(""));
        let mut c = gw.client();
        assert_eq!(x_cache(&get(&mut c, "/e", "")), "MISS", "{expires}");
        let r = get(&mut c, "/e", "");
        assert_eq!(
            (r.text().as_str(), x_cache(&r)),
            ("/e#1", "HIT"),
            "{expires}"
        );
        assert_eq!(up.hits(), 1, "{expires}");
    }
    // An Expires that is not a date means already expired: not stored.
    let up = numbered(&[("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), ("Expires", "0")]);
    let gw = gateway("", &up, &route(""));
    let mut c = gw.client();
    get(&mut c, "/e", "");
    assert_eq!(x_cache(&get(&mut c, "/e", "")), "MISS");
    assert_eq!(up.hits(), 2);
}

#[test]
fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let n = Arc::new(AtomicUsize::new(0));
    let up = MockUpstream::builder()
        .latency(Duration::from_millis(300))
        .handler(move |r| {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            // A conditional request would get a 304 (which refreshes nothing).
            let status = if r.has_header("if-none-match") {
                304
            } else {
                200
            };
            Reply::Bytes {
                data: response_bytes(
                    status,
                    &[("Cache-Control".into(), "max-age=1".into())],
                    format!("v{i}").as_bytes(),
                    r.method == "HEAD",
                ),
                close: false,
            }
        })
        .start();
    let gw = gateway("", &up, &route("stale_while_revalidate_s = 30"));
    let mut c = gw.client();
    assert_eq!(get(&mut c, "/s", "").text(), "v1");
    thread::sleep(Duration::from_millis(1100));
    // Expired: every request is answered at once with the stale copy
    // while one refresh runs (it takes 300 ms at the backend). The one that
    // starts it is conditional: the refresh asks for the whole answer.
    for i in 0..5 {
        let cond = if i == 0 {
            "If-None-Match: \"old\"\r\n"
        } else {
            ""
        };
        let r = get(&mut c, "/s", cond);
        assert_eq!((r.text().as_str(), x_cache(&r)), ("v1", "STALE"));
        assert!(age(&r) >= 1, "{r:?}");
    }
    assert!(up.wait_hits(2), "a background refresh reached the backend");
    // Then the refreshed answer is served fresh.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let r = loop {
        let r = get(&mut c, "/s", "");
        if x_cache(&r) == "HIT" || std::time::Instant::now() > deadline {
            break r;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((r.text().as_str(), x_cache(&r)), ("v2", "HIT"));
    assert_eq!(up.hits(), 2, "exactly one background refresh");
}

#[test]
fn stale_if_error_answers_for_a_failing_backend() {
    let n = Arc::new(AtomicUsize::new(0));
    let up = MockUpstream::builder()
        .handler(move |r| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            let data = if i == 0 {
                response_bytes(
                    200,
                    &[("Cache-Control".into(), "max-age=1".into())],
                    b"good",
                    r.method == "HEAD",
                )
            } else {
                response_bytes(503, &[], b"down", false)
            };
            Reply::Bytes { data, close: false }
        })
        .start();
    let gw = gateway("", &up, &route("stale_if_error_s = 60"));
    let mut c = gw.client();
    assert_eq!(get(&mut c, "/f", "").text(), "good");
    thread::sleep(Duration::from_millis(1100));
    // The backend answers 503: the client gets the stale copy.
    let r = get(&mut c, "/f", "");
    assert_eq!(
        (r.status, r.text().as_str(), x_cache(&r)),
        (200, "good", "STALE")
    );
    assert_eq!(up.hits(), 2, "the backend was asked");
    // The connection stays usable.
    let r = get(&mut c, "/f", "");
    assert_eq!((r.status, x_cache(&r)), (200, "STALE"));

    // A backend that refuses connections: the stale copy too.
    let up = numbered(&[("Cache-Control", "max-age=1")]);
    let addr = up.addr;
    let gw = Gateway::start(&config("", addr, &route("stale_if_error_s = 60")));
    let mut c = gw.client();
    assert_eq!(get(&mut c, "/f", "").text(), "/f#1");
    drop(up);
    thread::sleep(Duration::from_millis(1100));
    let r = get(&mut c, "/f", "");
    assert_eq!(
        (r.status, r.text().as_str(), x_cache(&r)),
        (200, "/f#1", "STALE")
    );
    // Without a stale-if-error window the error goes through.
    let gw = Gateway::start(&config("", addr, &route("ttl_s = 30")));
    assert_json_error(&get(&mut gw.client(), "/f", ""), 502);
}

/// The fill reads the answer back whatever its shape: interim answers
/// before it (relayed, not stored; held back with a failed answer that a
/// stale copy replaces) and a body delimited by the close.
#[test]
fn interim_answers_and_close_delimited_bodies_are_stored_as_messages() {
    let n = Arc::new(AtomicUsize::new(0));
    let up = MockUpstream::builder()
        .early_hints("</a.css>; rel=preload")
        .handler(move |r| {
            let data = if n.fetch_add(1, Ordering::SeqCst) == 0 {
                response_bytes(
                    200,
                    &[("Cache-Control".into(), "max-age=1".into())],
                    b"good",
                    r.method == "HEAD",
                )
            } else {
                response_bytes(503, &[], b"down", false)
            };
            Reply::Bytes { data, close: false }
        })
        .start();
    let gw = gateway("", &up, &route("stale_if_error_s = 60"));
    let mut c = gw.client();
    c.send("GET /h HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let hints = c.read_response();
    assert_eq!(hints.status, 103);
    assert_eq!(hints.header("link"), Some("</a.css>; rel=preload"));
    let r = c.read_response();
    assert_eq!(
        (r.status, r.text().as_str(), x_cache(&r)),
        (200, "good", "MISS")
    );
    // Stored without the interim answer: a hit is one response.
    let r = get(&mut c, "/h", "");
    assert_eq!(
        (r.status, r.text().as_str(), x_cache(&r)),
        (200, "good", "HIT")
    );
    assert_eq!(r.header("link"), None);
    thread::sleep(Duration::from_millis(1100));
    // 103 then 503: both held back, the stale copy answers alone.
    let r = get(&mut c, "/h", "");
    assert_eq!(
        (r.status, r.text().as_str(), x_cache(&r)),
        (200, "good", "STALE")
    );
    assert_eq!(r.header("link"), None);
    assert_eq!(up.hits(), 2);
    assert_eq!(get(&mut c, "/h", "").status, 200, "the connection goes on");

    // A body that ends with the backend's close is whole once relayed.
    let up = MockUpstream::builder()
        .handler(|_| {
            Reply::BytesThenClose(
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nX-Shape: close\r\n\r\nuntil the close"
                    .to_vec(),
            )
        })
        .start();
    let gw = gateway("", &up, &route("ttl_s = 30"));
    let r = get(&mut gw.client(), "/c", "");
    assert_eq!(
        (r.text().as_str(), x_cache(&r)),
        ("until the close", "MISS")
    );
    let r = get(&mut gw.client(), "/c", "");
    assert_eq!(
        (r.text().as_str(), x_cache(&r), r.header("x-shape")),
        ("until the close", "HIT", Some("close"))
    );
    assert_eq!(r.header("content-length"), Some("15"));
    assert_eq!(up.hits(), 1);
}

#[test]
fn concurrent_misses_coalesce_into_one_backend_request() {
    let up = MockUpstream::builder()
        .latency(Duration::from_millis(400))
        .header("Cache-Control", "max-age=60")
        .respond(200, "slow answer")
        .start();
    let gw = gateway("", &up, &route(""));
    const N: usize = 8;
    let barrier = Arc::new(Barrier::new(N));
    let addr = gw.addr;
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let b = barrier.clone();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                b.wait();
                let r = get(&mut c, "/slow", "");
                (r.status, r.text(), x_cache(&r).to_string())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (status, body, _) in &results {
        assert_eq!((*status, body.as_str()), (200, "slow answer"));
    }
    let misses = results.iter().filter(|r| r.2 == "MISS").count();
    assert_eq!(misses, 1, "{results:?}");
    assert_eq!(
        up.hits(),
        1,
        "one backend request for {N} concurrent misses"
    );
}

#[test]
fn uncacheable_answers_release_coalesced_waiters() {
    let up = MockUpstream::builder()
        .latency(Duration::from_millis(300))
        .header("Cache-Control", "no-store")
        .respond(200, "private answer")
        .start();
    let gw = gateway("", &up, &route("ttl_s = 30"));
    const N: usize = 4;
    let barrier = Arc::new(Barrier::new(N));
    let addr = gw.addr;
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let b = barrier.clone();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                b.wait();
                get(&mut c, "/u", "").status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(up.hits(), N, "each waiter went to the backend itself");
}

#[test]
fn purge_by_path_and_by_prefix() {
    let up = numbered(&[]);
    let gw = gateway("", &up, &route("ttl_s = 300"));
    let mut c = gw.client();
    for p in [
        "/products/1",
        "/products/1?lang=de",
        "/products/2",
        "/other/1",
    ] {
        get(&mut c, p, "");
        assert_eq!(x_cache(&get(&mut c, p, "")), "HIT", "{p}");
    }
    // One path (every query of it).
    let (st, body) = purge(&gw, r#"{"path": "/products/1"}"#);
    assert_eq!(st, 200, "{body}");
    assert_eq!(x_cache(&get(&mut c, "/products/1", "")), "MISS");
    assert_eq!(x_cache(&get(&mut c, "/products/1?lang=de", "")), "MISS");
    assert_eq!(x_cache(&get(&mut c, "/products/2", "")), "HIT");
    // A host that has nothing stored purges nothing.
    purge(&gw, r#"{"prefix": "/", "host": "elsewhere.test"}"#);
    assert_eq!(x_cache(&get(&mut c, "/products/2", "")), "HIT");
    // A prefix.
    purge(&gw, r#"{"prefix": "/products/", "host": "api.test"}"#);
    assert_eq!(x_cache(&get(&mut c, "/products/2", "")), "MISS");
    assert_eq!(x_cache(&get(&mut c, "/products/1", "")), "MISS");
    assert_eq!(x_cache(&get(&mut c, "/other/1", "")), "HIT");
    // Bad requests.
    assert_eq!(purge(&gw, r#"{"path": "no-slash"}"#).0, 400);
    assert_eq!(purge(&gw, r#"{"path": "/a", "prefix": "/b"}"#).0, 400);
    assert_eq!(purge(&gw, "{").0, 400);
    assert_eq!(
        admin(gw.handle.admin_addr().unwrap(), "GET", "/cache/purge", "").0,
        405
    );
}

#[test]
fn purge_reaches_every_worker() {
    let up = numbered(&[]);
    let gw = Gateway::start(
        &config("", up.addr, &route("ttl_s = 300")).replace("workers = 1", "workers = 3"),
    );
    // Fill whichever workers the connections land on.
    let mut clients: Vec<Client> = (0..12).map(|_| gw.client()).collect();
    for c in &mut clients {
        get(c, "/w", "");
    }
    let before = up.hits();
    assert!(before <= 3, "at most one miss per worker: {before}");
    for c in &mut clients {
        assert_eq!(x_cache(&get(c, "/w", "")), "HIT");
    }
    purge(&gw, r#"{"path": "/w"}"#);
    for c in &mut clients {
        get(c, "/w", "");
    }
    assert_eq!(
        up.hits(),
        before * 2,
        "every worker that had the entry fetched it again, once"
    );
}

#[test]
fn stored_bytes_stay_within_the_bound() {
    let body = "x".repeat(2000);
    let up = MockUpstream::builder().respond(200, &body).start();
    let gw = gateway(
        "[cache]\nmax_bytes_per_worker = 20000\nmax_object_bytes = 5000",
        &up,
        &route("ttl_s = 300"),
    );
    let mut c = gw.client();
    for i in 0..40 {
        let r = get(&mut c, &format!("/b/{i}"), "");
        assert_eq!(r.body.len(), 2000);
        let bytes = metric(&gw, "ringgate_cache_bytes{worker=\"0\"}");
        assert!(bytes <= 20000.0, "{bytes} bytes held");
    }
    // (An answer is stored just after it is sent: the last one may lag.)
    assert_eq!(x_cache(&get(&mut c, "/b/39", "")), "HIT");
    let bytes = metric(&gw, "ringgate_cache_bytes{worker=\"0\"}");
    assert!(bytes > 10000.0 && bytes <= 20000.0, "{bytes} bytes held");
    assert!(metric(&gw, "ringgate_cache_evictions_total{worker=\"0\"}") > 0.0);
    let entries = metric(&gw, "ringgate_cache_entries{worker=\"0\"}");
    assert!((5.0..=9.0).contains(&entries), "{entries} entries");
    // Least recently used out first: the newest are there, the oldest not.
    assert_eq!(x_cache(&get(&mut c, "/b/38", "")), "HIT");
    assert_eq!(x_cache(&get(&mut c, "/b/0", "")), "MISS");

    // Larger than max_object_bytes: passed through, not stored.
    let big = "y".repeat(6000);
    let up = MockUpstream::builder().respond(200, &big).start();
    let gw = gateway(
        "[cache]\nmax_bytes_per_worker = 20000\nmax_object_bytes = 5000",
        &up,
        &route("ttl_s = 300"),
    );
    let mut c = gw.client();
    assert_eq!(get(&mut c, "/big", "").body.len(), 6000);
    assert_eq!(get(&mut c, "/big", "").body.len(), 6000);
    assert_eq!(up.hits(), 2);
}

#[test]
fn metrics_count_hits_misses_and_stale() {
    let up = numbered(&[("Cache-Control", "max-age=1")]);
    let gw = gateway("", &up, &route("stale_while_revalidate_s = 30"));
    let mut c = gw.client();
    get(&mut c, "/x", "");
    get(&mut c, "/x", "");
    get(&mut c, "/x", "");
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(x_cache(&get(&mut c, "/x", "")), "STALE");
    assert_eq!(
        metric(&gw, "ringgate_cache_hits_total{route=\"cached\"}"),
        2.0
    );
    assert_eq!(
        metric(&gw, "ringgate_cache_misses_total{route=\"cached\"}"),
        1.0
    );
    assert_eq!(
        metric(&gw, "ringgate_cache_stale_total{route=\"cached\"}"),
        1.0
    );
}

#[test]
fn routes_without_cache_are_untouched() {
    let up = numbered(&[("Cache-Control", "max-age=60")]);
    let gw = gateway(
        "",
        &up,
        "[[routes]]\nname = \"plain\"\npath = \"/{*rest}\"\nupstream = \"up\"\n",
    );
    let mut c = gw.client();
    for i in 1..=2 {
        let r = get(&mut c, "/p", "");
        assert_eq!(r.text(), format!("/p#{i}"));
        assert_eq!(r.header("x-cache"), None);
    }
}

#[test]
fn config_errors_name_the_key() {
    let err = |routes: &str, top: &str| {
        let text = config(top, "127.0.0.1:1".parse().unwrap(), routes);
        ringgate::config::Config::parse(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = err(&route("ttl_s = 1, statuses = [206]"), "");
    assert!(e.contains("routes[0].cache.statuses"), "{e}");
    let e = err(&route("ttl = 1"), "");
    assert!(
        e.contains("unknown key `ttl`; did you mean `ttl_s`?"),
        "{e}"
    );
    let e = err(
        &route("ttl_s = 1"),
        "[cache]\nmax_bytes_per_worker = 1000\nmax_object_bytes = 2000",
    );
    assert!(e.contains("cache.max_object_bytes"), "{e}");
    let e = err(
        "[[routes]]\npath = \"/p\"\nmethods = [\"POST\"]\nupstream = \"up\"\ncache = { ttl_s = 1 }\n",
        "",
    );
    assert!(e.contains("routes[0].cache"), "{e}");
    assert_eq!(
        err(&route("ttl_s = 1"), "[cache]\nmax_bytes_per_worker = 1000"),
        ""
    );
}

/// A hit writes the stored bytes with the per-request lines, without a
/// heap allocation on the worker.
#[test]
fn hit_allocates_nothing() {
    let up = MockUpstream::builder()
        .header("Cache-Control", "max-age=600")
        .respond(200, "hello")
        .start();
    let cfg = ringgate::config::Config::parse(&config("", up.addr, &route(""))).unwrap();
    let gw = ringgate::runtime::Server::start_with(cfg, support::alloc_count::hooks()).unwrap();
    let mut s = TcpStream::connect(gw.local_addrs()[0]).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut request = |s: &mut TcpStream| {
        let got = support::raw::exchange(
            s,
            b"GET /items/42?x=1 HTTP/1.1\r\nHost: api.test\r\nAccept: */*\r\n\r\n",
            &mut buf,
            5,
            b"HTTP/1.1 200",
        );
        String::from_utf8_lossy(got).to_string()
    };
    for _ in 0..200 {
        request(&mut s);
    }
    assert!(request(&mut s).contains("X-Cache: HIT"));
    support::alloc_count::counting(true);
    const N: u64 = 2000;
    for _ in 0..N {
        request(&mut s);
    }
    support::alloc_count::counting(false);
    let allocs = support::alloc_count::allocs();
    assert_eq!(
        allocs, 0,
        "{allocs} allocations on the worker over {N} hits"
    );
    assert_eq!(up.hits(), 1);
}
