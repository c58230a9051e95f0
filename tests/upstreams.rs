//! Upstreams that fail, hang, slow down, recover, come and go: balancing,
//! retries, outlier ejection, health checks, the circuit breaker and its
//! fallback, canary splits, and discovery (file, registry, DNS).
//!
//! Every test asserts on behaviour, counts and shares — never on timings;
//! waits are bounded polls.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const H: &str = "Host: test.local\r\n";

/// A backend answering 200 with its name as the body.
fn named(name: &'static str) -> MockUpstream {
    MockUpstream::builder().respond(200, name).start()
}

/// A backend answering 200 with its name, or `fail_status` while the flag
/// is set. `/health` answers 200, or 503 while `sick` is set.
struct Switchable {
    mock: MockUpstream,
    fail: Arc<AtomicBool>,
    sick: Arc<AtomicBool>,
}

fn switchable(name: &'static str, fail_status: u16) -> Switchable {
    let fail = Arc::new(AtomicBool::new(false));
    let sick = Arc::new(AtomicBool::new(false));
    let (f, s) = (fail.clone(), sick.clone());
    let mock = MockUpstream::builder()
        .handler(move |r| {
            let (status, body) = if r.target == "/health" {
                if s.load(SeqCst) {
                    (503, "sick")
                } else {
                    (200, "healthy")
                }
            } else if f.load(SeqCst) {
                (fail_status, "failing")
            } else {
                (200, name)
            };
            Reply::Bytes {
                data: response_bytes(status, &[], body.as_bytes(), r.method == "HEAD"),
                close: false,
            }
        })
        .start();
    Switchable { mock, fail, sick }
}

/// Requests a backend saw, health checks excluded.
fn traffic(m: &MockUpstream) -> usize {
    m.requests()
        .iter()
        .filter(|r| r.target != "/health")
        .count()
}

/// Polls `f` every 10 ms for up to 5 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for: {what}");
}

/// GET on a fresh connection (so requests spread over the workers).
fn get_fresh(gw: &Gateway, path: &str, headers: &str) -> Response {
    gw.client().request(format!(
        "GET {path} HTTP/1.1\r\n{H}{headers}Connection: close\r\n\r\n"
    ))
}

/// Which backend (by body) served each of `n` requests on one connection.
fn tally(gw: &Gateway, path: &str, n: usize) -> HashMap<String, usize> {
    let mut c = gw.client();
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = c.get(path);
        *out.entry(format!("{} {}", r.status, r.text())).or_insert(0) += 1;
    }
    out
}

fn admin(gw: &Gateway, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let cfg = gw.handle.store.load();
    let (status, body) =
        ringgate::upstream::admin_request(&cfg, method, path, body.as_bytes()).expect("handled");
    (status, serde_json::from_str(&body).unwrap())
}

// ---------------------------------------------------------------------------
// Killed backend, retries
// ---------------------------------------------------------------------------

/// Steady load on three backends; one is killed mid-run. Requests in
/// flight to it are retried (GET, nothing received yet), it is ejected on
/// its first connect failure, and no client sees more failures than there
/// were requests in flight (the number of clients).
#[test]
fn killed_backend_under_load_costs_at_most_the_requests_in_flight() {
    let a = MockUpstream::builder()
        .respond(200, "a")
        .latency(Duration::from_millis(2))
        .start();
    let b = MockUpstream::builder()
        .respond(200, "b")
        .latency(Duration::from_millis(2))
        .start();
    let c = MockUpstream::builder()
        .respond(200, "c")
        .latency(Duration::from_millis(2))
        .start();
    let gw = GatewayConfig::new()
        .upstream(
            "up",
            &[a.addr, b.addr, c.addr],
            &[
                "retries = 2",
                "[upstreams.up.outlier]",
                "consecutive_failures = 1",
                "base_ejection_ms = 30000",
                "max_ejection_percent = 50",
            ],
        )
        .route("/{*rest}", "up", &[])
        .start();
    const CLIENTS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let addr = gw.addr;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut n = 0;
                while !stop.load(SeqCst) && n < 5000 {
                    n += 1;
                    c.send(format!("GET /load HTTP/1.1\r\n{H}\r\n"));
                    match c.try_read_response() {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, SeqCst);
                        }
                        Ok(r) => {
                            failed
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", r.status, r.text()));
                            c = Client::connect(addr);
                        }
                        Err(e) => {
                            failed.lock().unwrap().push(e.to_string());
                            c = Client::connect(addr);
                        }
                    }
                }
            })
        })
        .collect();
    eventually("load on every backend", || {
        a.hits() > 20 && b.hits() > 20 && c.hits() > 20
    });
    drop(b);
    let at_kill = ok.load(SeqCst);
    eventually("more load after the kill", || {
        ok.load(SeqCst) > at_kill + 400
    });
    stop.store(true, SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    assert!(
        failed.len() <= CLIENTS,
        "{} failures (at most {CLIENTS} requests were in flight): {failed:?}",
        failed.len()
    );
    let st = upstream_state(&gw, "up");
    let ejected: Vec<&serde_json::Value> = st["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["ejected"] == true)
        .collect();
    assert_eq!(ejected.len(), 1, "the killed target is ejected: {st}");
}

/// 502/503/504 and resets before any response byte are retried on another
/// target for idempotent methods; a POST gets the backend's answer.
#[test]
fn idempotent_requests_are_retried_on_another_target() {
    let bad = switchable("bad", 503);
    bad.fail.store(true, SeqCst);
    let good = named("good");
    let gw = GatewayConfig::new()
        .upstream("up", &[bad.mock.addr, good.addr], &["retries = 1"])
        .route("/{*rest}", "up", &[])
        .start();
    for i in 0..10 {
        let r = gw.get(&format!("/g/{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "good"), "GET {i}");
    }
    assert!(traffic(&bad.mock) > 0, "round robin tried the bad target");
    let mut statuses = HashSet::new();
    for _ in 0..6 {
        let r = gw.client().request(format!(
            "POST /p HTTP/1.1\r\n{H}Content-Length: 2\r\nConnection: close\r\n\r\nhi"
        ));
        statuses.insert(r.status);
    }
    assert!(
        statuses.contains(&503),
        "a POST that got 503 is not retried: {statuses:?}"
    );

    // A backend that closes without answering: retried for GET.
    let closer = MockUpstream::builder().close_after_head().start();
    let gw = GatewayConfig::new()
        .upstream("up", &[closer.addr, good.addr], &[])
        .route("/{*rest}", "up", &[])
        .start();
    for i in 0..6 {
        let r = gw.get(&format!("/c/{i}"));
        assert_eq!(r.status, 200, "GET {i}: {r:?}");
    }
    assert!(closer.hits() > 0);
}

/// A per-try timeout shorter than the request timeout moves a GET from a
/// hanging backend to another one.
#[test]
fn per_try_timeout_retries_a_hanging_backend() {
    let hang = MockUpstream::builder().stall().start();
    let good = named("good");
    let gw = GatewayConfig::new()
        .upstream(
            "up",
            &[hang.addr, good.addr],
            &["try_timeout_ms = 150", "request_timeout_ms = 3000"],
        )
        .route("/{*rest}", "up", &[])
        .start();
    for i in 0..4 {
        let r = gw.get_close(&format!("/t/{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "good"), "GET {i}");
    }
    assert!(hang.hits() > 0, "the hanging backend was tried");
}

/// Once the response head went to the client, nothing is retried: a body
/// cut short closes the client connection and no other target is asked.
#[test]
fn no_retry_after_the_response_began_streaming() {
    let cut = MockUpstream::builder()
        .raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
        .start();
    let good = named("good");
    let gw = GatewayConfig::new()
        .upstream("up", &[cut.addr, good.addr], &["retries = 2"])
        .route("/{*rest}", "up", &[])
        .start();
    let mut cut_seen = 0;
    for _ in 0..4 {
        let mut c = gw.client();
        c.send(format!("GET /s HTTP/1.1\r\n{H}Connection: close\r\n\r\n"));
        match c.try_read_response() {
            Ok(r) => assert_eq!(r.text(), "good"),
            Err(_) => cut_seen += 1,
        }
    }
    assert!(cut_seen > 0, "round robin reached the cutting backend");
    assert_eq!(good.hits() + cut_seen, 4, "a cut response was retried");
}

/// The retry budget caps retries at a share of requests: with every
/// target resetting, requests are not each retried `retries` times.
#[test]
fn retry_budget_caps_retries() {
    let dead: Vec<MockUpstream> = (0..4)
        .map(|_| MockUpstream::builder().close_after_head().start())
        .collect();
    let addrs: Vec<SocketAddr> = dead.iter().map(|m| m.addr).collect();
    let gw = GatewayConfig::new()
        .upstream("up", &addrs, &["retries = 3", "retry_budget_percent = 10"])
        .route("/{*rest}", "up", &[])
        .start();
    // One keep-alive connection: one worker, one budget.
    let mut c = gw.client();
    const N: usize = 200;
    for _ in 0..N {
        let r = c.get("/b");
        assert_json_error(&r, 502);
        if r.says_close() {
            c = gw.client();
        }
    }
    let tries: usize = dead.iter().map(|m| m.hits()).sum();
    // N first tries, plus the reserve (10) and 10% of N; without a budget
    // it would be 4 * N.
    let retries = tries - N;
    assert!(
        (20..=35).contains(&retries),
        "{retries} retries for {N} requests"
    );
}

// ---------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------

fn breaker_gateway(up: &Switchable, fallback: bool) -> Gateway {
    let mut extra = vec![
        "retries = 0",
        "[upstreams.up.breaker]",
        "failure_threshold = 3",
        "open_ms = 300",
        "half_open_probes = 1",
    ];
    if fallback {
        extra.extend([
            "[upstreams.up.fallback]",
            "status = 200",
            "content_type = \"application/json\"",
            "body = '{\"orders\": [], \"degraded\": true}'",
        ]);
    }
    GatewayConfig::new()
        .upstream("up", &[up.mock.addr], &extra)
        .route("/{*rest}", "up", &[])
        .start()
}

/// The breaker opens after `failure_threshold` failures, for every
/// worker; serves the fallback without touching the backend; half-opens
/// after `open_ms` (a failed probe re-opens it) and closes on a success.
#[test]
fn breaker_opens_serves_fallback_half_opens_and_closes() {
    let up = switchable("up", 503);
    let gw = breaker_gateway(&up, true);
    up.fail.store(true, SeqCst);
    for i in 0..3 {
        let r = get_fresh(&gw, "/o", "");
        assert_eq!(r.status, 503, "failure {i} is the backend's own answer");
    }
    assert_eq!(traffic(&up.mock), 3);
    assert_eq!(upstream_state(&gw, "up")["breaker"]["state"], "open");
    // Open on every worker: fresh connections spread over both workers.
    for _ in 0..20 {
        let r = get_fresh(&gw, "/o", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json()["degraded"], true);
        assert!(r.header("x-request-id").is_some());
    }
    assert_eq!(traffic(&up.mock), 3, "an open breaker sent traffic");

    // Half-open while still failing: one probe reaches the backend and
    // re-opens it.
    eventually("half-open", || {
        upstream_state(&gw, "up")["breaker"]["state"] == "half_open"
    });
    let r = get_fresh(&gw, "/o", "");
    assert_eq!(r.status, 503, "the probe's answer is relayed");
    assert_eq!(traffic(&up.mock), 4);
    let r = get_fresh(&gw, "/o", "");
    assert_eq!(r.json()["degraded"], true, "re-opened");
    assert_eq!(traffic(&up.mock), 4);

    // Recovered: the next probe closes it.
    up.fail.store(false, SeqCst);
    eventually("half-open again", || {
        upstream_state(&gw, "up")["breaker"]["state"] == "half_open"
    });
    for _ in 0..10 {
        let r = get_fresh(&gw, "/o", "");
        assert_eq!((r.status, r.text().as_str()), (200, "up"));
    }
    assert_eq!(traffic(&up.mock), 14);
    assert_eq!(upstream_state(&gw, "up")["breaker"]["state"], "closed");
}

/// Without a fallback an open breaker answers 503 with `Retry-After`, and
/// connect failures count as failures.
#[test]
fn open_breaker_without_fallback_answers_503_with_retry_after() {
    let gw = GatewayConfig::new()
        .upstream(
            "up",
            &[refused_addr()],
            &[
                "[upstreams.up.breaker]",
                "failure_threshold = 2",
                "open_ms = 5000",
            ],
        )
        .route("/{*rest}", "up", &[])
        .start();
    assert_json_error(&get_fresh(&gw, "/x", ""), 502);
    assert_json_error(&get_fresh(&gw, "/x", ""), 502);
    let r = get_fresh(&gw, "/x", "");
    assert_json_error(&r, 503);
    // Keys in the one order every error body has.
    let t = r.text();
    let at = |k: &str| {
        t.find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} in {t}"))
    };
    assert!(
        at("error") < at("status") && at("status") < at("request_id"),
        "{t}"
    );
    let secs = r.retry_after();
    assert!((1..=5).contains(&secs), "Retry-After {secs}");
    // Keep-alive survives a breaker answer.
    let mut c = gw.client();
    assert_eq!(c.get("/x").status, 503);
    assert_eq!(c.get("/x").status, 503);
}

/// The failure rate over the window opens the breaker even when failures
/// are never consecutive enough for the threshold.
#[test]
fn breaker_opens_on_failure_rate() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let up = MockUpstream::builder()
        .handler(move |_| {
            // Every other request fails.
            let status = if n2.fetch_add(1, SeqCst) % 2 == 0 {
                500
            } else {
                200
            };
            Reply::Bytes {
                data: response_bytes(status, &[], b"x", false),
                close: false,
            }
        })
        .start();
    let gw = GatewayConfig::new()
        .upstream(
            "up",
            &[up.addr],
            &[
                "retries = 0",
                "[upstreams.up.breaker]",
                "failure_threshold = 100",
                "failure_rate = 0.4",
                "min_requests = 10",
                "window_ms = 10000",
                "open_ms = 10000",
            ],
        )
        .route("/{*rest}", "up", &[])
        .start();
    let mut c = gw.client();
    let mut open_after = None;
    for i in 0..40 {
        let r = c.get("/r");
        if r.status == 503 && r.header("retry-after").is_some() {
            open_after = Some(i);
            break;
        }
    }
    let i = open_after.expect("the breaker never opened");
    assert!((10..=12).contains(&i), "opened after {i} requests");
}

// ---------------------------------------------------------------------------
// Outlier ejection and health checks
// ---------------------------------------------------------------------------

/// Consecutive 5xx eject a target; it gets no traffic while ejected and
/// returns once the ejection time passed (and it recovered).
#[test]
fn ejected_target_returns_after_recovery() {
    let good = named("good");
    let flaky = switchable("flaky", 500);
    flaky.fail.store(true, SeqCst);
    let gw = GatewayConfig::new()
        .upstream(
            "up",
            &[good.addr, flaky.mock.addr],
            &[
                "[upstreams.up.outlier]",
                "consecutive_5xx = 3",
                "base_ejection_ms = 400",
                "max_ejection_percent = 50",
            ],
        )
        .route("/{*rest}", "up", &[])
        .start();
    let mut c = gw.client();
    for _ in 0..20 {
        c.get("/e");
    }
    assert_eq!(traffic(&flaky.mock), 3, "ejected after 3 consecutive 5xx");
    let st = upstream_state(&gw, "up");
    assert_eq!(st["targets"][1]["ejected"], true, "{st}");
    flaky.fail.store(false, SeqCst);
    let seen = tally(&gw, "/e", 20);
    assert_eq!(
        seen.get("200 good"),
        Some(&20),
        "traffic while ejected: {seen:?}"
    );
    eventually("the ejection ends", || {
        upstream_state(&gw, "up")["targets"][1]["ejected"] == false
    });
    let seen = tally(&gw, "/e", 20);
    assert!(
        seen.get("200 flaky").is_some_and(|&n| n >= 8),
        "the recovered target is back: {seen:?}"
    );
}

/// `max_ejection_percent` keeps part of the upstream in service even when
/// every target fails.
#[test]
fn max_ejection_percent_is_respected() {
    let a = switchable("a", 500);
    let b = switchable("b", 500);
    a.fail.store(true, SeqCst);
    b.fail.store(true, SeqCst);
    let gw = GatewayConfig::new()
        .upstream(
            "up",
            &[a.mock.addr, b.mock.addr],
            &[
                "[upstreams.up.outlier]",
                "consecutive_5xx = 2",
                "base_ejection_ms = 30000",
                "max_ejection_percent = 50",
            ],
        )
        .route("/{*rest}", "up", &[])
        .start();
    let seen = tally(&gw, "/m", 30);
    assert_eq!(seen.get("500 failing"), Some(&30), "{seen:?}");
    let st = upstream_state(&gw, "up");
    let ejected = st["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["ejected"] == true)
        .count();
    assert_eq!(ejected, 1, "{st}");
}

/// Active checks (one checker, not one per worker) take an unhealthy
/// target out of rotation and bring it back; when every target is out,
/// requests get 503.
#[test]
fn health_checks_remove_and_restore_targets() {
    let a = switchable("a", 500);
    let b = switchable("b", 500);
    let gw = GatewayConfig::new()
        .upstream(
            "up",
            &[a.mock.addr, b.mock.addr],
            &[
                "[upstreams.up.health]",
                "path = \"/health\"",
                "interval_ms = 30",
                "timeout_ms = 500",
                "expected_statuses = [200]",
                "healthy_threshold = 2",
                "unhealthy_threshold = 2",
            ],
        )
        .route("/{*rest}", "up", &[])
        .start();
    let healthy = |i: usize| upstream_state(&gw, "up")["targets"][i]["healthy"] == true;
    b.sick.store(true, SeqCst);
    eventually("b unhealthy", || !healthy(1));
    let seen = tally(&gw, "/h", 20);
    assert_eq!(seen.get("200 a"), Some(&20), "{seen:?}");

    a.sick.store(true, SeqCst);
    eventually("a unhealthy", || !healthy(0));
    let r = gw.get("/h");
    assert_json_error(&r, 503);

    b.sick.store(false, SeqCst);
    a.sick.store(false, SeqCst);
    eventually("both healthy", || healthy(0) && healthy(1));
    let seen = tally(&gw, "/h", 20);
    assert_eq!(seen.get("200 a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("200 b"), Some(&10), "{seen:?}");

    // One checker: with two workers, checks arrive once per interval, not
    // once per worker per interval.
    let checks_on_a = || a.mock.requests().len() - traffic(&a.mock);
    let (before, t0) = (checks_on_a(), Instant::now());
    thread::sleep(Duration::from_millis(300));
    let checks = checks_on_a() - before;
    let intervals = t0.elapsed().as_millis() as usize / 30;
    assert!(
        checks <= intervals + 2,
        "{checks} checks of one target in {intervals} intervals"
    );
}

/// A target that accepts connections and never answers holds one check
/// thread until its timeout; the other targets' checks go on meanwhile, so
/// a sick neighbour is taken out of rotation in its usual few intervals.
#[test]
fn a_hanging_target_does_not_delay_the_checks_of_others() {
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    thread::spawn(move || {
        for s in hang.incoming().flatten() {
            h.lock().unwrap().push(s); // accepted, never answered
        }
    });
    let sick = switchable("sick", 500);
    sick.sick.store(true, SeqCst);
    let gw = GatewayConfig::new()
        .upstream(
            "up",
            &[hang_addr, sick.mock.addr],
            &[
                "[upstreams.up.health]",
                "path = \"/health\"",
                "interval_ms = 50",
                "timeout_ms = 10000",
                "unhealthy_threshold = 2",
            ],
        )
        .route("/{*rest}", "up", &[])
        .start();
    let healthy = |i: usize| upstream_state(&gw, "up")["targets"][i]["healthy"] == true;
    // One check at a time would wait 10 s for the hanging target first.
    eventually("sick target unhealthy", || !healthy(1));
    assert!(healthy(0), "the hanging target is still within its timeout");
    let checks = || sick.mock.requests().len() - traffic(&sick.mock);
    let before = checks();
    thread::sleep(Duration::from_millis(500));
    let n = checks() - before;
    assert!(
        n >= 4,
        "the sick target is checked every interval ({n} in 500 ms)"
    );
    assert!(
        held.lock().unwrap().len() <= 1,
        "the hanging target is not checked again while a check of it is running"
    );
}

// ---------------------------------------------------------------------------
// Balancers
// ---------------------------------------------------------------------------

/// Share of `n` concurrent requests (4 clients) that reached `slow`.
fn slow_share(balance: &str) -> f64 {
    let fast = named("fast");
    let slow = MockUpstream::builder()
        .respond(200, "slow")
        .latency(Duration::from_millis(20))
        .start();
    let gw = GatewayConfig::new()
        .upstream(
            "up",
            &[fast.addr, slow.addr],
            &[&format!("balance = \"{balance}\"")],
        )
        .route("/{*rest}", "up", &[])
        .start();
    let addr = gw.addr;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..50 {
                    assert_eq!(c.get("/p").status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    slow.hits() as f64 / (slow.hits() + fast.hits()) as f64
}

/// p2c_ewma sends measurably less to a backend with added latency than
/// round_robin does.
#[test]
fn p2c_ewma_avoids_a_slow_backend() {
    let rr = slow_share("round_robin");
    let p2c = slow_share("p2c_ewma");
    assert!(rr > 0.4, "round robin share of the slow backend: {rr}");
    assert!(
        p2c < 0.2,
        "p2c_ewma share of the slow backend: {p2c} (round robin {rr})"
    );
}

/// least_conn also steers away from a backend holding requests.
#[test]
fn least_conn_prefers_the_idle_backend() {
    let share = slow_share("least_conn");
    assert!(
        share < 0.45,
        "least_conn share of the slow backend: {share}"
    );
}

/// Smooth weighted round robin follows the weights exactly per worker.
#[test]
fn weighted_balancing_follows_weights() {
    let a = named("a");
    let b = named("b");
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
pin = false
[upstreams.up]
balance = "weighted"
targets = [{{ addr = "{}", weight = 3 }}, "{}"]
[[routes]]
path = "/{{*rest}}"
upstream = "up"
"#,
        a.addr, b.addr
    );
    let gw = Gateway::start(&toml);
    let seen = tally(&gw, "/w", 40);
    assert_eq!(seen.get("200 a"), Some(&30), "{seen:?}");
    assert_eq!(seen.get("200 b"), Some(&10), "{seen:?}");
}

fn file_gateway(path: &std::path::Path, extra: &[&str]) -> Gateway {
    let mut lines = vec![
        "discovery = \"file\"".to_string(),
        format!("file = \"{}\"", path.display()),
    ];
    lines.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
    GatewayConfig::new()
        .upstream("up", &[], &refs)
        .route("/{*rest}", "up", &[])
        .start()
}

fn write_instances(path: &std::path::Path, addrs: &[SocketAddr]) {
    let list: Vec<serde_json::Value> = addrs
        .iter()
        .map(|a| serde_json::json!({ "addr": a.to_string(), "weight": 1 }))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&list).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn temp_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringgate-upstreams-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// consistent_hash maps each key to one target on every worker, and
/// removing a target moves only the keys that were on it.
#[test]
fn consistent_hash_keeps_keys_when_another_target_is_removed() {
    let backends = [named("a"), named("b"), named("c")];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let path = temp_file("hash.json");
    write_instances(&path, &addrs);
    let gw = file_gateway(
        &path,
        &[
            "balance = \"consistent_hash\"",
            "hash_key = \"header:X-User\"",
        ],
    );
    let route = |gw: &Gateway, user: usize| {
        let r = get_fresh(gw, "/k", &format!("X-User: user-{user}\r\n"));
        assert_eq!(r.status, 200);
        r.text()
    };
    let mut before = HashMap::new();
    for u in 0..60 {
        let t = route(&gw, u);
        // The same key lands on the same target whichever worker serves it.
        for _ in 0..3 {
            assert_eq!(route(&gw, u), t, "user-{u} moved between requests");
        }
        before.insert(u, t);
    }
    for name in ["a", "b", "c"] {
        let n = before.values().filter(|t| *t == name).count();
        assert!(n >= 5, "{name} got {n} of 60 keys: {before:?}");
    }
    let v = upstream_state(&gw, "up")["version"].as_u64().unwrap();
    write_instances(&path, &addrs[..2]);
    eventually("c removed", || {
        upstream_state(&gw, "up")["version"].as_u64().unwrap() > v
    });
    for u in 0..60 {
        let t = route(&gw, u);
        if before[&u] != "c" {
            assert_eq!(t, before[&u], "user-{u} moved although its target stayed");
        } else {
            assert_ne!(t, "c");
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// A watched file changes and traffic follows; an invalid file keeps the
/// last good list; pooled connections to removed targets are closed.
#[test]
fn file_discovery_follows_changes() {
    let (a, a_open) = counted_backend("a");
    let b = named("b");
    let path = temp_file("follow.json");
    write_instances(&path, &[a]);
    let gw = file_gateway(&path, &[]);
    let seen = tally(&gw, "/f", 10);
    assert_eq!(seen.get("200 a"), Some(&10), "{seen:?}");

    write_instances(&path, &[b.addr]);
    eventually("traffic moves to b", || {
        get_fresh(&gw, "/f", "").text() == "b"
    });
    let seen = tally(&gw, "/f", 10);
    assert_eq!(seen.get("200 b"), Some(&10), "{seen:?}");
    // The idle keep-alive connections to `a` were closed by the gateway.
    eventually("a's pooled connections closed", || a_open.load(SeqCst) == 0);

    std::fs::write(&path, b"[{\"addr\": ").unwrap();
    thread::sleep(Duration::from_millis(500));
    let st = upstream_state(&gw, "up");
    assert!(
        st["discovery_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{st}"
    );
    let seen = tally(&gw, "/f", 10);
    assert_eq!(
        seen.get("200 b"),
        Some(&10),
        "last good list kept: {seen:?}"
    );
    write_instances(&path, &[a, b.addr]);
    eventually("both serve", || {
        let s = tally(&gw, "/f", 10);
        s.contains_key("200 a") && s.contains_key("200 b")
    });
    let _ = std::fs::remove_file(&path);
}

// ---------------------------------------------------------------------------
// Canary
// ---------------------------------------------------------------------------

fn canary_gateway(v1: &MockUpstream, v2: &MockUpstream, sticky: Option<&str>) -> Gateway {
    let sticky = sticky.map_or(String::new(), |s| format!("sticky = \"{s}\"\n"));
    Gateway::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 2
pin = false
[upstreams.v1]
targets = ["{}"]
[upstreams.v2]
targets = ["{}"]
[[routes]]
path = "/{{*rest}}"
upstreams = [{{ name = "v1", weight = 90 }}, {{ name = "v2", weight = 10 }}]
{sticky}
"#,
        v1.addr, v2.addr
    ))
}

/// A 90/10 split holds within a tolerance over many requests.
#[test]
fn canary_weights_hold() {
    let v1 = named("v1");
    let v2 = named("v2");
    let gw = canary_gateway(&v1, &v2, None);
    let mut n2 = 0;
    for _ in 0..4 {
        let seen = tally(&gw, "/c", 500);
        n2 += seen.get("200 v2").copied().unwrap_or(0);
    }
    let share = n2 as f64 / 2000.0;
    assert!((0.07..=0.13).contains(&share), "v2 share {share}");
}

/// Sticky by header: a user stays on one side; users spread over both.
#[test]
fn sticky_canary_keeps_a_user_on_one_side() {
    let v1 = named("v1");
    let v2 = named("v2");
    let gw = canary_gateway(&v1, &v2, Some("header:X-User"));
    let mut sides = HashMap::new();
    for u in 0..200 {
        let side = get_fresh(&gw, "/s", &format!("X-User: u{u}\r\n")).text();
        for _ in 0..2 {
            assert_eq!(
                get_fresh(&gw, "/s", &format!("X-User: u{u}\r\n")).text(),
                side,
                "user u{u} switched sides"
            );
        }
        *sides.entry(side).or_insert(0) += 1;
    }
    let v2n = sides.get("v2").copied().unwrap_or(0);
    assert!((5..=40).contains(&v2n), "{sides:?}");
}

// ---------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------

/// Instances register through the admin API, get traffic while they
/// heartbeat, and expire when they stop; DELETE removes at once.
#[test]
fn registry_instances_expire_without_heartbeats() {
    let a = named("a");
    let b = named("b");
    let gw = GatewayConfig::new()
        .upstream(
            "up",
            &[],
            &["discovery = \"registry\"", "registry_ttl_ms = 300"],
        )
        .route("/{*rest}", "up", &[])
        .start();
    assert_json_error(&gw.get("/r"), 503);

    let reg = |addr: SocketAddr| {
        admin(
            &gw,
            "POST",
            "/upstreams/up/targets",
            &format!("{{\"addr\": \"{addr}\", \"weight\": 1}}"),
        )
    };
    let (st, body) = reg(a.addr);
    assert_eq!(st, 200, "{body}");
    assert_eq!(get_fresh(&gw, "/r", "").text(), "a");
    // Heartbeats keep it for well past the TTL.
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        assert_eq!(reg(a.addr).0, 200);
        assert_eq!(get_fresh(&gw, "/r", "").text(), "a");
        thread::sleep(Duration::from_millis(60));
    }
    // b registers with its own TTL; a stops heartbeating and expires.
    let (st, _) = admin(
        &gw,
        "POST",
        "/upstreams/up/targets",
        &format!("{{\"addr\": \"{}\", \"ttl_ms\": 60000}}", b.addr),
    );
    assert_eq!(st, 200);
    eventually("a expired", || {
        upstream_state(&gw, "up")["targets"]
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    let seen = tally(&gw, "/r", 10);
    assert_eq!(seen.get("200 b"), Some(&10), "{seen:?}");

    let (st, _) = admin(
        &gw,
        "DELETE",
        "/upstreams/up/targets",
        &format!("{{\"addr\": \"{}\"}}", b.addr),
    );
    assert_eq!(st, 200);
    assert_json_error(&gw.get("/r"), 503);
    let (st, _) = admin(
        &gw,
        "DELETE",
        "/upstreams/up/targets",
        &format!("{{\"addr\": \"{}\"}}", b.addr),
    );
    assert_eq!(st, 404);
}

/// Bad registry calls get clear errors.
#[test]
fn registry_rejects_bad_requests() {
    let a = named("a");
    let gw = GatewayConfig::new()
        .upstream("st", &[a.addr], &[])
        .upstream("reg", &[], &["discovery = \"registry\""])
        .route("/{*rest}", "st", &[])
        .start();
    let (st, body) = admin(
        &gw,
        "POST",
        "/upstreams/st/targets",
        r#"{"addr": "127.0.0.1:1"}"#,
    );
    assert_eq!(st, 409, "{body}");
    let (st, _) = admin(
        &gw,
        "POST",
        "/upstreams/nope/targets",
        r#"{"addr": "127.0.0.1:1"}"#,
    );
    assert_eq!(st, 404);
    let (st, body) = admin(&gw, "POST", "/upstreams/reg/targets", r#"{"addr": "nope"}"#);
    assert_eq!(st, 400, "{body}");
    let (st, _) = admin(&gw, "POST", "/upstreams/reg/targets", "not json");
    assert_eq!(st, 400);
    let (st, _) = admin(&gw, "PUT", "/upstreams/reg/targets", "{}");
    assert_eq!(st, 405);
    let (st, all) = admin(&gw, "GET", "/upstreams", "");
    assert_eq!(st, 200);
    let names: Vec<&str> = all["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["reg", "st"]);
    let cfg = gw.handle.store.load();
    assert!(ringgate::upstream::admin_request(&cfg, "GET", "/metrics", b"").is_none());
}

/// The same registry over HTTP, through the admin listener.
#[test]
fn registry_over_the_admin_listener() {
    let a = named("a");
    let gw = Gateway::start(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 2
pin = false
[admin]
listen = "127.0.0.1:0"
[upstreams.up]
discovery = "registry"
registry_ttl_ms = 60000
[[routes]]
path = "/{*rest}"
upstream = "up"
"#,
    );
    let admin_addr = gw.handle.admin_addr().expect("admin listener bound");
    let call = |method: &str, path: &str, body: &str| {
        let mut c = Client::connect(admin_addr);
        c.request(format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
    };
    let r = call(
        "POST",
        "/upstreams/up/targets",
        &format!("{{\"addr\": \"{}\", \"weight\": 2}}", a.addr),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_fresh(&gw, "/x", "").text(), "a");
    let r = call("GET", "/upstreams", "");
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["upstreams"][0]["targets"][0]["addr"], a.addr.to_string());
    assert_eq!(j["upstreams"][0]["targets"][0]["weight"], 2);
    assert_eq!(j["upstreams"][0]["discovery"], "registry");
    let r = call(
        "DELETE",
        "/upstreams/up/targets",
        &format!("{{\"addr\": \"{}\"}}", a.addr),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_json_error(&gw.get("/x"), 503);
}

// ---------------------------------------------------------------------------
// DNS
// ---------------------------------------------------------------------------

/// What the test DNS server answers.
#[derive(Clone, Default)]
struct Zone {
    /// name → IPv4 addresses.
    a: HashMap<String, Vec<[u8; 4]>>,
    /// name → (priority, weight, port, target).
    srv: HashMap<String, Vec<(u16, u16, u16, String)>>,
    /// Over UDP, answer with the first record only and the TC flag when
    /// there are more (as a server does when an answer does not fit).
    truncate_udp: bool,
    /// TTL of every record, seconds (default 5).
    ttl: Option<u32>,
}

/// A small authoritative DNS server on 127.0.0.1:ephemeral, UDP and TCP
/// on the same port, answering A and SRV from a zone the test changes.
struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TestDns {
    fn start() -> TestDns {
        let (sock, tcp) = loop {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            if let Ok(tcp) = TcpListener::bind(sock.local_addr().unwrap()) {
                break (sock, tcp);
            }
        };
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (z, q, s) = (zone.clone(), queries.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                q.fetch_add(1, SeqCst);
                let zone = z.lock().unwrap().clone();
                let limit = zone.truncate_udp.then_some(1);
                if let Some(resp) = answer(&buf[..n], &zone, limit) {
                    let _ = sock.send_to(&resp, from);
                }
            }
        });
        let (z, q, s) = (zone.clone(), tcp_queries.clone(), stop.clone());
        thread::spawn(move || {
            use std::io::{Read, Write};
            while !s.load(SeqCst) {
                let Ok((mut c, _)) = tcp.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut len = [0u8; 2];
                if c.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                if c.read_exact(&mut msg).is_err() {
                    continue;
                }
                q.fetch_add(1, SeqCst);
                let zone = z.lock().unwrap().clone();
                if let Some(resp) = answer(&msg, &zone, None) {
                    let mut out = (resp.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&resp);
                    let _ = c.write_all(&out);
                }
            }
        });
        TestDns {
            addr,
            zone,
            queries,
            tcp_queries,
            stop,
        }
    }

    fn set(&self, f: impl FnOnce(&mut Zone)) {
        f(&mut self.zone.lock().unwrap());
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    for l in name.split('.') {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
}

/// Builds the response to one query (NXDOMAIN for unknown names); with
/// `limit`, at most that many answers and the TC flag when some were cut.
fn answer(q: &[u8], zone: &Zone, limit: Option<usize>) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos..pos + len)?).to_lowercase());
        pos += len;
    }
    let name = labels.join(".");
    let qtype = u16::from_be_bytes([*q.get(pos)?, *q.get(pos + 1)?]);
    let question = &q[12..pos + 4];
    let mut answers: Vec<Vec<u8>> = Vec::new();
    let mut additional: Vec<Vec<u8>> = Vec::new();
    let rr = |owner: Option<&str>, rtype: u16, rdata: &[u8]| {
        let mut r = Vec::new();
        match owner {
            None => r.extend_from_slice(&[0xc0, 12]),
            Some(n) => put_name(&mut r, n),
        }
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&[0, 1]);
        r.extend_from_slice(&zone.ttl.unwrap_or(5).to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
        r
    };
    let known = zone.a.contains_key(&name) || zone.srv.contains_key(&name);
    match qtype {
        1 => {
            for ip in zone.a.get(&name).into_iter().flatten() {
                answers.push(rr(None, 1, ip));
            }
        }
        33 => {
            for (prio, weight, port, target) in zone.srv.get(&name).into_iter().flatten() {
                let mut rd = Vec::new();
                rd.extend_from_slice(&prio.to_be_bytes());
                rd.extend_from_slice(&weight.to_be_bytes());
                rd.extend_from_slice(&port.to_be_bytes());
                put_name(&mut rd, target);
                answers.push(rr(None, 33, &rd));
                for ip in zone.a.get(target).into_iter().flatten() {
                    additional.push(rr(Some(target), 1, ip));
                }
            }
        }
        _ => {}
    }
    let mut flags = 0x85;
    if let Some(k) = limit
        && answers.len() > k
    {
        answers.truncate(k);
        additional.clear();
        flags |= 0x02; // TC
    }
    let mut out = Vec::new();
    out.extend_from_slice(&q[..2]);
    out.extend_from_slice(&[flags, if known { 0x80 } else { 0x83 }, 0, 1]);
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(additional.len() as u16).to_be_bytes());
    out.extend_from_slice(question);
    for r in answers.iter().chain(&additional) {
        out.extend_from_slice(r);
    }
    Some(out)
}

fn dns_gateway(dns: &TestDns, name: &str) -> Gateway {
    dns_gateway_with(name, &format!("\"{}\"", dns.addr), 50)
}

/// A gateway whose upstream `up` is `name` from `servers` (the
/// `dns_server` value as written), re-resolved every `interval_ms`.
fn dns_gateway_with(name: &str, servers: &str, interval_ms: u64) -> Gateway {
    GatewayConfig::new()
        .upstream(
            "up",
            &[],
            &[
                "discovery = \"dns\"",
                &format!("dns_name = \"{name}\""),
                &format!("dns_server = {servers}"),
                &format!("dns_interval_ms = {interval_ms}"),
            ],
        )
        .route("/{*rest}", "up", &[])
        .start()
}

/// Records whose TTL runs out before `dns_interval_ms` are resolved again
/// when it does: a one-second TTL under a one-minute interval moves
/// traffic within seconds. (The resolver once ignored TTLs, so a changed
/// answer waited for the interval.)
#[test]
fn dns_ttl_shorter_than_the_interval_resolves_again_sooner() {
    let a = named("a");
    let b = named("b");
    let dns = TestDns::start();
    let srv = |port: u16, target: &str| vec![(10, 1, port, String::from(target))];
    dns.set(|z| {
        z.a.insert("a.ttl.test".into(), vec![[127, 0, 0, 1]]);
        z.a.insert("b.ttl.test".into(), vec![[127, 0, 0, 1]]);
        z.srv.insert(
            "_http._tcp.ttl.test".into(),
            srv(a.addr.port(), "a.ttl.test"),
        );
        z.ttl = Some(1);
    });
    let gw = dns_gateway_with("_http._tcp.ttl.test", &format!("\"{}\"", dns.addr), 60_000);
    assert_eq!(tally(&gw, "/t", 4).get("200 a"), Some(&4));
    dns.set(|z| {
        z.srv.insert(
            "_http._tcp.ttl.test".into(),
            srv(b.addr.port(), "b.ttl.test"),
        );
    });
    eventually("traffic moves to b after the TTL", || {
        tally(&gw, "/t", 4).get("200 b") == Some(&4)
    });
}

/// `dns_server` may list several nameservers; one that never answers does
/// not stop discovery while another does. (Only one server used to be
/// asked.)
#[test]
fn dns_server_list_asks_the_next_server_when_one_is_silent() {
    let a = named("a");
    let dns = TestDns::start();
    dns.set(|z| {
        z.a.insert("a.multi.test".into(), vec![[127, 0, 0, 1]]);
        z.srv.insert(
            "_http._tcp.multi.test".into(),
            vec![(10, 1, a.addr.port(), "a.multi.test".into())],
        );
    });
    // Bound, never read: queries sent there go unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let servers = format!("[\"{}\", \"{}\"]", silent.local_addr().unwrap(), dns.addr);
    let gw = dns_gateway_with("_http._tcp.multi.test", &servers, 200);
    eventually("a is discovered", || {
        upstream_state(&gw, "up")["targets"]
            .as_array()
            .is_some_and(|t| t.len() == 1)
    });
    assert_eq!(tally(&gw, "/m", 4).get("200 a"), Some(&4));
    drop(silent);
}

/// An SRV answer too large for the server's UDP reply comes back with the
/// TC flag; the gateway asks again over TCP and gets every target.
#[test]
fn dns_truncated_answer_is_asked_again_over_tcp() {
    let names = ["t0", "t1", "t2", "t3", "t4"];
    let backends: Vec<MockUpstream> = names.iter().map(|n| named(n)).collect();
    let dns = TestDns::start();
    dns.set(|z| {
        let records = backends
            .iter()
            .map(|b| (10, 1, b.addr.port(), String::from("node.big.test")))
            .collect();
        z.srv.insert(String::from("_http._tcp.big.test"), records);
        z.a.insert(String::from("node.big.test"), vec![[127, 0, 0, 1]]);
        z.truncate_udp = true;
    });
    let gw = dns_gateway(&dns, "_http._tcp.big.test");
    let count = || {
        upstream_state(&gw, "up")["targets"]
            .as_array()
            .map_or(0, |t| t.len())
    };
    eventually("all five SRV targets", || count() == 5);
    assert!(
        dns.tcp_queries.load(SeqCst) > 0,
        "the full answer came over TCP"
    );
    let seen = tally(&gw, "/x", 50);
    for n in names {
        assert_eq!(seen.get(&format!("200 {n}")), Some(&10), "{seen:?}");
    }
}

/// SRV records give ports and weights; when the answer changes, traffic
/// follows.
#[test]
fn dns_srv_answer_changes_and_traffic_follows() {
    let a = named("a");
    let b = named("b");
    let dns = TestDns::start();
    dns.set(|z| {
        z.a.insert("a.svc.test".into(), vec![[127, 0, 0, 1]]);
        z.a.insert("b.svc.test".into(), vec![[127, 0, 0, 1]]);
        z.srv.insert(
            "_http._tcp.svc.test".into(),
            vec![(10, 1, a.addr.port(), "a.svc.test".into())],
        );
    });
    let gw = dns_gateway(&dns, "_http._tcp.svc.test");
    let seen = tally(&gw, "/d", 10);
    assert_eq!(seen.get("200 a"), Some(&10), "{seen:?}");

    dns.set(|z| {
        z.srv.insert(
            "_http._tcp.svc.test".into(),
            vec![
                (10, 3, b.addr.port(), "b.svc.test".into()),
                (10, 1, a.addr.port(), "a.svc.test".into()),
                // A lower-priority (higher number) record is a backup only.
                (20, 1, 1, "a.svc.test".into()),
            ],
        );
    });
    eventually("b appears", || {
        upstream_state(&gw, "up")["targets"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    let st = upstream_state(&gw, "up");
    let weights: HashMap<String, u64> = st["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["addr"].as_str().unwrap().to_string(),
                t["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(weights.get(&b.addr.to_string()), Some(&3), "{st}");

    dns.set(|z| {
        z.srv.insert(
            "_http._tcp.svc.test".into(),
            vec![(10, 1, b.addr.port(), "b.svc.test".into())],
        );
    });
    eventually("traffic moves to b", || {
        tally(&gw, "/d", 6).get("200 b") == Some(&6)
    });

    // The name disappears: the last good list stays.
    dns.set(|z| {
        z.srv.clear();
        z.a.clear();
    });
    let q = dns.queries.load(SeqCst);
    eventually("re-resolved", || dns.queries.load(SeqCst) > q + 2);
    let seen = tally(&gw, "/d", 6);
    assert_eq!(seen.get("200 b"), Some(&6), "{seen:?}");
}

/// Binds a backend on 127.0.0.2 and 127.0.0.3 with the same port (A
/// records carry no port). `None` when that port is taken on one of them.
fn same_port_pair() -> Option<(TcpListener, TcpListener)> {
    for _ in 0..20 {
        let l2 = TcpListener::bind("127.0.0.2:0").ok()?;
        let port = l2.local_addr().ok()?.port();
        if let Ok(l3) = TcpListener::bind(("127.0.0.3", port)) {
            return Some((l2, l3));
        }
    }
    None
}

/// A backend answering its name that counts its open connections.
fn counted_backend(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    serve_name_counted(l, name, open.clone());
    (addr, open)
}

fn serve_name(l: TcpListener, name: &'static str) {
    serve_name_counted(l, name, Arc::new(AtomicUsize::new(0)));
}

fn serve_name_counted(l: TcpListener, name: &'static str, open: Arc<AtomicUsize>) {
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            open.fetch_add(1, SeqCst);
            let open = open.clone();
            thread::spawn(move || {
                struct Closed(Arc<AtomicUsize>);
                impl Drop for Closed {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, SeqCst);
                    }
                }
                let _closed = Closed(open);
                use std::io::{Read, Write};
                let mut s = s;
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..p + 4);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                            name.len()
                        );
                        if s.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut tmp) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
            });
        }
    });
}

/// A records with the configured port: the answer changes, traffic follows.
#[test]
fn dns_a_answer_changes_and_traffic_follows() {
    // All of 127.0.0.0/8 is loopback on Linux: a pair that cannot be bound
    // is a broken test machine, not a reason to pass.
    let (l2, l3) =
        same_port_pair().expect("could not bind one port on both 127.0.0.2 and 127.0.0.3");
    let port = l2.local_addr().unwrap().port();
    serve_name(l2, "two");
    serve_name(l3, "three");
    let dns = TestDns::start();
    dns.set(|z| {
        z.a.insert("api.svc.test".into(), vec![[127, 0, 0, 2]]);
    });
    let gw = dns_gateway(&dns, &format!("api.svc.test:{port}"));
    let seen = tally(&gw, "/a", 6);
    assert_eq!(seen.get("200 two"), Some(&6), "{seen:?}");
    dns.set(|z| {
        z.a.insert("api.svc.test".into(), vec![[127, 0, 0, 3]]);
    });
    eventually("traffic moves to 127.0.0.3", || {
        tally(&gw, "/a", 4).get("200 three") == Some(&4)
    });
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// Upstream keys are checked, each error naming its key and a fix.
#[test]
fn bad_upstream_config_names_every_key() {
    let toml = r#"
[upstreams.a]
discovery = "dns"
balance = "consistent_hash"
retries = 50
retry_budget_percent = 101
[upstreams.a.breaker]
failure_rate = 2.0
half_open_probes = 0
[upstreams.b]
targets = ["127.0.0.1:1"]
balance = "random"
hash_key = "header:X"
file = "x.json"
[upstreams.b.fallback]
body = "x"
[upstreams.c]
discovery = "registry"
targets = ["127.0.0.1:2"]
[upstreams.c.health]
path = "health"
unhealthy_threshold = 0
[[routes]]
path = "/x"
upstreams = [{ name = "a", weight = 1 }, { name = "nope" }]
sticky = "session"
[[routes]]
path = "/y"
upstream = "a"
upstreams = [{ name = "b" }]
"#;
    let errs = ringgate::config::Config::parse(toml).unwrap_err();
    let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "upstreams.a.dns_name",
        "upstreams.a.hash_key",
        "upstreams.a.retries",
        "upstreams.a.retry_budget_percent",
        "upstreams.a.breaker.failure_rate",
        "upstreams.a.breaker.half_open_probes",
        "upstreams.b.balance",
        "upstreams.b.hash_key",
        "upstreams.b.file",
        "upstreams.b.fallback",
        "upstreams.c.targets",
        "upstreams.c.health.path",
        "upstreams.c.health.unhealthy_threshold",
        "routes[0].upstreams",
        "routes[0].sticky",
        "routes[1].upstreams",
    ] {
        assert!(keys.contains(&k), "no error for {k}: {errs}");
    }
    assert!(errs.0.iter().all(|e| !e.fix.is_empty()));

    let unknown = ringgate::config::Config::parse(
        "[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n[upstreams.a.breaker]\nthreshold = 1\n[[routes]]\npath = \"/\"\nupstream = \"a\"\n",
    )
    .unwrap_err();
    assert!(
        unknown.to_string().contains("threshold"),
        "unknown key named: {unknown}"
    );
}
