//! Rate limiting over real sockets: every algorithm, keys, tiers, trusted
//! proxies, queueing, headers, eviction under a flood of keys, the
//! instance-wide limit with traffic pinned to one worker or spread over
//! both (against the two naive designs), two instances sharing a limit
//! through a real `redis-server`, including Redis going away and coming
//! back, and reloads that change, add and remove limits and `[redis]`.
//!
//! Tests assert counts and bounds, not timings. Windows are wall-clock
//! aligned, so window tests count the windows a run touched.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::raw::{Resp, serve_connections};
use support::{free_port, sha_hex, unix_now};

// ---------------------------------------------------------------------------
// Harness: a mock backend, the gateway, a blocking client
// ---------------------------------------------------------------------------

/// A backend that answers every request `200 ok` and counts them.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Backend {
    fn start() -> Backend {
        let hits = Arc::new(AtomicUsize::new(0));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (h, a) = (hits.clone(), arrivals.clone());
        let addr = serve_connections(move |s| serve_backend(s, h.clone(), a.clone()));
        Backend {
            addr,
            hits,
            arrivals,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve_backend(s: TcpStream, hits: Arc<AtomicUsize>, arrivals: Arc<Mutex<Vec<Instant>>>) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        // Read one head (GET requests, no bodies).
        let mut line = String::new();
        let mut got = false;
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                if got {
                    break;
                }
                continue;
            }
            got = true;
        }
        hits.fetch_add(1, Ordering::SeqCst);
        arrivals.lock().unwrap().push(Instant::now());
        if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

struct Gateway {
    handle: ringgate::runtime::ServerHandle,
    addr: SocketAddr,
    limits: Arc<ringgate::filter::rate_limit::Limits>,
}

impl Gateway {
    /// `workers`, one upstream `b` at `backend`, then `rest` (limits and
    /// routes).
    fn start(workers: usize, backend: SocketAddr, rest: &str) -> Gateway {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\npin = false\n\
             drain_timeout_ms = 500\n\n[upstreams.b]\ntargets = [\"{backend}\"]\n\n{rest}"
        );
        let cfg = match ringgate::config::Config::parse(&toml) {
            Ok(c) => c,
            Err(e) => panic!("config rejected:\n{e}\n{toml}"),
        };
        let limits = cfg.rate_limits.clone().expect("limits compiled");
        let handle = ringgate::runtime::Server::start(cfg).expect("gateway starts");
        let addr = handle.local_addrs()[0];
        Gateway {
            handle,
            addr,
            limits,
        }
    }

    fn conn(&self) -> Conn {
        Conn::open(self.addr)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// A keep-alive client connection.
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
    addr: SocketAddr,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            addr,
        }
    }

    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        if self.w.write_all(req.as_bytes()).is_err() {
            // The gateway closed the connection after a reply: reconnect.
            *self = Conn::open(self.addr);
            self.w.write_all(req.as_bytes()).unwrap();
        }
        match self.read() {
            Some(r) => r,
            None => {
                *self = Conn::open(self.addr);
                self.w.write_all(req.as_bytes()).unwrap();
                self.read().expect("response")
            }
        }
    }

    fn read(&mut self) -> Option<Resp> {
        let mut line = String::new();
        if self.r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).ok()?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':')?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).ok()?;
        let close = headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v == "close");
        if close {
            *self = Conn::open(self.addr);
        }
        Some(Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Sends `n` requests on one connection; returns how many got 200.
fn admitted(gw: &Gateway, n: usize, path: &str, headers: &[(&str, &str)]) -> usize {
    let mut c = gw.conn();
    (0..n)
        .filter(|_| {
            let r = c.get(path, headers);
            assert!(r.status == 200 || r.status == 429, "{r:?}");
            r.status == 200
        })
        .count()
}

fn window_index(window_s: u64) -> u64 {
    unix_now() / window_s
}

/// Until a new wall-clock window begins (so a burst stays in one window).
fn wait_for_window_start(window_s: u64) {
    let w = window_index(window_s);
    while window_index(window_s) == w {
        thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------
// Algorithms
// ---------------------------------------------------------------------------

/// Token bucket: a burst of `burst` at once, then the refill rate.
#[test]
fn token_bucket_admits_the_burst_then_the_rate() {
    let b = Backend::start();
    let gw = Gateway::start(
        1,
        b.addr,
        r#"
[rate_limits.tb]
algorithm = "token_bucket"
limit = 20
window_s = 1
burst = 5

[[routes]]
path = "/{*rest}"
upstream = "b"
rate_limit = ["tb"]
"#,
    );
    // 30 back to back: the burst (plus what refills while they run).
    let start = Instant::now();
    let n = admitted(&gw, 30, "/x", &[]);
    let refill = (start.elapsed().as_secs_f64() * 20.0).ceil() as usize;
    assert!(n >= 5 && n <= 5 + refill, "admitted {n}, refill {refill}");
    // Paced for a while: the rate, within one token either way.
    thread::sleep(Duration::from_millis(300)); // refills the burst
    let start = Instant::now();
    let mut c = gw.conn();
    let mut ok = 0;
    while start.elapsed() < Duration::from_millis(600) {
        if c.get("/x", &[]).status == 200 {
            ok += 1;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let el = start.elapsed().as_secs_f64();
    let max = 5.0 + el * 20.0 + 1.0;
    assert!(ok as f64 <= max, "admitted {ok} > {max}");
    assert!(ok >= 12, "admitted only {ok}");
    assert_eq!(b.hits(), n + ok);
}

/// Fixed window: at most `limit` per wall-clock window.
#[test]
fn fixed_window_admits_limit_per_window() {
    let b = Backend::start();
    let gw = Gateway::start(
        1,
        b.addr,
        r#"
[rate_limits.fw]
algorithm = "fixed_window"
limit = 7
window_s = 1

[[routes]]
path = "/{*rest}"
upstream = "b"
rate_limit = ["fw"]
"#,
    );
    let w0 = window_index(1);
    let mut c = gw.conn();
    let mut ok = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        if c.get("/", &[]).status == 200 {
            ok += 1;
        }
        thread::sleep(Duration::from_millis(3));
    }
    let windows = (window_index(1) - w0 + 1) as usize;
    assert!(ok <= 7 * windows, "{ok} admitted over {windows} windows");
    assert!(
        ok >= 7 * (windows - 1),
        "{ok} admitted over {windows} windows"
    );
    assert_eq!(b.hits(), ok);
}

/// Sliding window: a burst gets `limit`; half a window later, half the
/// previous window's count still weighs.
#[test]
fn sliding_window_weighs_the_previous_window() {
    let b = Backend::start();
    let gw = Gateway::start(
        1,
        b.addr,
        r#"
[rate_limits.sw]
algorithm = "sliding_window"
limit = 10
window_s = 2

[[routes]]
path = "/{*rest}"
upstream = "b"
rate_limit = ["sw"]
"#,
    );
    wait_for_window_start(2);
    assert_eq!(admitted(&gw, 25, "/", &[]), 10);
    // Into the next window, about halfway: prev weighs ~(1 - f) of 10.
    let w = window_index(2);
    while window_index(2) == w {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(1000));
    let n = admitted(&gw, 25, "/", &[]);
    // f is about 0.5 (at least 0.5, a little more for the time taken).
    assert!((5..=7).contains(&n), "admitted {n} halfway through");
    assert_eq!(b.hits(), 10 + n);
}

/// Leaky bucket: requests over the rate wait (up to `max_delay_ms`) and are
/// admitted at the leak rate, not rejected.
#[test]
fn leaky_bucket_queues_instead_of_rejecting() {
    let b = Backend::start();
    let gw = Gateway::start(
        1,
        b.addr,
        r#"
[rate_limits.lb]
algorithm = "leaky_bucket"
limit = 20
window_s = 1
max_delay_ms = 2000

[[routes]]
path = "/{*rest}"
upstream = "b"
rate_limit = ["lb"]
"#,
    );
    // 16 at once, on 16 connections: all admitted, the last ~750 ms late.
    let addr = gw.addr;
    let ts: Vec<_> = (0..16)
        .map(|_| thread::spawn(move || Conn::open(addr).get("/", &[]).status))
        .collect();
    let statuses: Vec<u16> = ts.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(b.hits(), 16);
    // The backend saw them paced at the leak rate (50 ms apart): a lower
    // bound, which a slow machine cannot break.
    let a = b.arrivals.lock().unwrap();
    let spread = *a.iter().max().unwrap() - *a.iter().min().unwrap();
    assert!(spread >= Duration::from_millis(600), "spread {spread:?}");
}

/// Leaky bucket: beyond `max_delay_ms` of queue, requests are refused.
#[test]
fn leaky_bucket_refuses_past_max_delay() {
    let b = Backend::start();
    let gw = Gateway::start(
        1,
        b.addr,
        r#"
[rate_limits.lb]
algorithm = "leaky_bucket"
limit = 10
window_s = 1
max_delay_ms = 300

[[routes]]
path = "/{*rest}"
upstream = "b"
rate_limit = ["lb"]
"#,
    );
    let addr = gw.addr;
    let start = Instant::now();
    let ts: Vec<_> = (0..20)
        .map(|_| thread::spawn(move || Conn::open(addr).get("/", &[]).status))
        .collect();
    let statuses: Vec<u16> = ts.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(ok + refused, 20);
    // One now, three queued (100, 200, 300 ms), plus what leaks while the
    // 20 connections open.
    let leak = (start.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(ok >= 4 && ok <= 4 + leak, "admitted {ok}, leak {leak}");
    assert_eq!(b.hits(), ok);
}

// ---------------------------------------------------------------------------
// Keys, several limits, headers
// ---------------------------------------------------------------------------

/// A header key, the route key and a combination each count separately.
#[test]
fn keys_by_header_route_and_list() {
    let b = Backend::start();
    let gw = Gateway::start(
        1,
        b.addr,
        r#"
[rate_limits.tenant]
key = "header:X-Tenant"
algorithm = "fixed_window"
limit = 3
window_s = 3600

[rate_limits.per_route]
key = "route"
algorithm = "fixed_window"
limit = 4
window_s = 3600

[rate_limits.tenant_route]
key = ["header:X-Tenant", "route"]
algorithm = "fixed_window"
limit = 2
window_s = 3600

[[routes]]
name = "h"
path = "/h"
upstream = "b"
rate_limit = ["tenant"]

[[routes]]
name = "r1"
path = "/r1"
upstream = "b"
rate_limit = ["per_route"]

[[routes]]
name = "r2"
path = "/r2"
upstream = "b"
rate_limit = ["per_route"]

[[routes]]
name = "l1"
path = "/l1"
upstream = "b"
rate_limit = ["tenant_route"]

[[routes]]
name = "l2"
path = "/l2"
upstream = "b"
rate_limit = ["tenant_route"]
"#,
    );
    assert_eq!(admitted(&gw, 10, "/h", &[("X-Tenant", "a")]), 3);
    assert_eq!(admitted(&gw, 10, "/h", &[("X-Tenant", "b")]), 3);
    assert_eq!(admitted(&gw, 10, "/r1", &[]), 4);
    assert_eq!(admitted(&gw, 10, "/r2", &[]), 4);
    assert_eq!(admitted(&gw, 10, "/l1", &[("X-Tenant", "a")]), 2);
    assert_eq!(admitted(&gw, 10, "/l1", &[("X-Tenant", "b")]), 2);
    assert_eq!(admitted(&gw, 10, "/l2", &[("X-Tenant", "a")]), 2);
    // No header: the client address is the key (one bucket here).
    assert_eq!(admitted(&gw, 10, "/h", &[]), 3);
    assert_eq!(b.hits(), 3 + 3 + 4 + 4 + 2 + 2 + 2 + 3);
}

/// `X-Forwarded-For` names the client only when the peer is trusted.
#[test]
fn ip_key_and_trusted_proxies() {
    let b = Backend::start();
    let gw = Gateway::start(
        1,
        b.addr,
        r#"
[rate_limits.trusting]
key = "ip"
algorithm = "fixed_window"
limit = 2
window_s = 3600
trusted_proxies = ["127.0.0.0/8"]

[rate_limits.untrusting]
key = "ip"
algorithm = "fixed_window"
limit = 2
window_s = 3600
trusted_proxies = ["10.0.0.0/8"]

[[routes]]
path = "/t"
upstream = "b"
rate_limit = ["trusting"]

[[routes]]
path = "/u"
upstream = "b"
rate_limit = ["untrusting"]
"#,
    );
    let xff = |v: &'static str| [("X-Forwarded-For", v)];
    // Trusted peer: each forwarded client has its own count; the
    // rightmost untrusted hop is the client (spoofed left parts ignored).
    assert_eq!(admitted(&gw, 5, "/t", &xff("203.0.113.1")), 2);
    assert_eq!(admitted(&gw, 5, "/t", &xff("203.0.113.2")), 2);
    assert_eq!(admitted(&gw, 5, "/t", &xff("9.9.9.9, 203.0.113.2")), 0);
    assert_eq!(admitted(&gw, 5, "/t", &xff("203.0.113.3, 127.0.0.5")), 2);
    // Untrusted peer: the header is ignored, 127.0.0.1 is the key.
    assert_eq!(admitted(&gw, 5, "/u", &xff("203.0.113.1")), 2);
    assert_eq!(admitted(&gw, 5, "/u", &xff("203.0.113.9")), 0);
}

/// Several limits on a route: the strictest decides, and a refusal by one
/// limit spends nothing of the others.
#[test]
fn the_strictest_limit_decides() {
    let b = Backend::start();
    let gw = Gateway::start(
        1,
        b.addr,
        r#"
[rate_limits.per_second]
limit = 100
window_s = 1

[rate_limits.per_hour]
algorithm = "fixed_window"
limit = 3
window_s = 3600

[rate_limits.other_hour]
algorithm = "fixed_window"
limit = 5
window_s = 3600

[[routes]]
path = "/both"
upstream = "b"
rate_limit = ["per_second", "per_hour"]

[[routes]]
path = "/other"
upstream = "b"
rate_limit = ["other_hour", "per_hour"]
"#,
    );
    let mut c = gw.conn();
    let r = c.get("/both", &[]);
    assert_eq!(r.status, 200);
    // The hourly limit is the tighter one: its numbers are shown.
    assert_eq!(r.num("X-RateLimit-Limit"), 3);
    assert_eq!(r.num("X-RateLimit-Remaining"), 2);
    assert_eq!(
        r.header("RateLimit-Policy"),
        Some("\"per_second\";q=100;w=1, \"per_hour\";q=3;w=3600")
    );
    assert_eq!(admitted(&gw, 10, "/both", &[]), 2);
    // per_hour (shared key: the client IP) is used up; other_hour is not
    // spent by the refused requests.
    assert_eq!(admitted(&gw, 4, "/other", &[]), 0);
    let r = c.get("/other", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.num("X-RateLimit-Limit"), 3);
    assert_eq!(b.hits(), 3);
}

/// Header values on admitted and refused responses; the JSON 429 body;
/// `headers = false` keeps admitted responses clean.
#[test]
fn headers_carry_the_numbers() {
    let b = Backend::start();
    let gw = Gateway::start(
        1,
        b.addr,
        r#"
[rate_limits.api]
algorithm = "fixed_window"
limit = 5
window_s = 60

[rate_limits.quiet]
algorithm = "fixed_window"
limit = 1
window_s = 60
headers = false

[rate_limits.bucket]
algorithm = "token_bucket"
limit = 10
window_s = 10
burst = 4

[[routes]]
path = "/api"
upstream = "b"
rate_limit = ["api"]

[[routes]]
path = "/quiet"
upstream = "b"
rate_limit = ["quiet"]

[[routes]]
path = "/bucket"
upstream = "b"
rate_limit = ["bucket"]
"#,
    );
    let mut c = gw.conn();
    for i in 0..5u64 {
        let r = c.get("/api", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "ok");
        assert_eq!(r.header("RateLimit-Policy"), Some("\"api\";q=5;w=60"));
        assert_eq!(r.num("X-RateLimit-Limit"), 5);
        assert_eq!(r.num("X-RateLimit-Remaining"), 4 - i);
        let reset = r.num("X-RateLimit-Reset");
        assert!((1..=60).contains(&reset), "reset {reset}");
        assert_eq!(
            r.header("RateLimit"),
            Some(format!("\"api\";r={};t={reset}", 4 - i).as_str())
        );
        assert!(r.header("Retry-After").is_none());
    }
    let r = c.get("/api", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.num("X-RateLimit-Remaining"), 0);
    let retry = r.num("Retry-After");
    assert!((1..=60).contains(&retry), "retry {retry}");
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["error"], "rate limit exceeded");
    assert_eq!(body["request_id"].as_str(), r.header("X-Request-Id"));

    let r = c.get("/quiet", &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("RateLimit").is_none() && r.header("X-RateLimit-Limit").is_none());
    let r = c.get("/quiet", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.num("X-RateLimit-Limit"), 1);
    assert!(r.header("Retry-After").is_some());

    // Token bucket: remaining counts tokens; reset is the refill time.
    let r = c.get("/bucket", &[]);
    assert_eq!(r.num("X-RateLimit-Remaining"), 3);
    assert_eq!(r.num("X-RateLimit-Reset"), 1); // one token at 1/s
    for _ in 0..3 {
        c.get("/bucket", &[]);
    }
    let r = c.get("/bucket", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.num("Retry-After"), 1);
    assert_eq!(r.num("X-RateLimit-Reset"), 4);
}

// ---------------------------------------------------------------------------
// Bounded memory
// ---------------------------------------------------------------------------

/// A flood of distinct keys cannot grow a worker's table past
/// `max_keys_per_worker`, and a key in steady use keeps its count.
#[test]
fn a_flood_of_keys_stays_bounded() {
    let b = Backend::start();
    let gw = Gateway::start(
        2,
        b.addr,
        r#"
[rate_limits.per_client]
key = "header:X-Client"
algorithm = "fixed_window"
limit = 3
window_s = 3600
max_keys_per_worker = 64

[[routes]]
path = "/{*rest}"
upstream = "b"
rate_limit = ["per_client"]
"#,
    );
    let mut c = gw.conn();
    let mut hot = 0;
    for i in 0..3000 {
        let v = format!("flood-{i}");
        assert_eq!(c.get("/", &[("X-Client", &v)]).status, 200);
        if i % 10 == 0 && c.get("/", &[("X-Client", "hot")]).status == 200 {
            hot += 1;
        }
    }
    thread::sleep(Duration::from_millis(200)); // a tick publishes the counts
    let counts = gw.limits.keys_per_worker();
    assert_eq!(counts.len(), 2);
    for n in &counts {
        assert!(*n <= 64, "a worker holds {n} keys: {counts:?}");
    }
    // The hot key survived the flood: still 3, not 3 per eviction.
    assert_eq!(hot, 3);
}

// ---------------------------------------------------------------------------
// One instance, two workers: the instance-wide limit
// ---------------------------------------------------------------------------

/// Sends `total` requests for one key: on one keep-alive connection
/// (pinned to one worker) or on `total` fresh connections (spread over the
/// workers by SO_REUSEPORT), paced so the reconciler sees the traffic.
fn run_key(addr: SocketAddr, total: usize, spread: bool) -> usize {
    let mut ok = 0;
    let mut pinned = Conn::open(addr);
    for _ in 0..total {
        let r = if spread {
            let mut c = Conn::open(addr);
            c.get("/k", &[])
        } else {
            pinned.get("/k", &[])
        };
        if r.status == 200 {
            ok += 1;
        }
        thread::sleep(Duration::from_millis(3));
    }
    ok
}

fn sharded(mode: &str) -> String {
    format!(
        r#"
[rate_limits.key]
algorithm = "token_bucket"
limit = 60
window_s = 3600
shard_mode = "{mode}"

[[routes]]
path = "/k"
upstream = "b"
rate_limit = ["key"]
"#
    )
}

/// The stated bound: for a key over a window, with N workers,
///
///   limit − N ≤ admitted ≤ limit + (N − 1)·[share·burst < 1] + refill,
///
/// where `refill` is what a bucket refills while workers switch shares (a
/// quarter sync interval; nothing at this limit's rate). Here (limit 60,
/// N = 2, share·burst ≥ 1) that is 58..=60; the assertion leaves one
/// request of slack above. Runs measure 60 pinned and 60 spread. The
/// naive designs each miss one case: `split` (limit/N per worker) admits
/// half the limit when pinned; `full` (the whole limit on every worker)
/// admits N times the limit when spread.
#[test]
fn instance_limit_holds_pinned_and_spread() {
    let b = Backend::start();
    let mut report = Vec::new();
    for (mode, spread) in [
        ("reconciled", false),
        ("reconciled", true),
        ("split", false),
        ("full", true),
    ] {
        let gw = Gateway::start(2, b.addr, &sharded(mode));
        let n = run_key(gw.addr, 200, spread);
        report.push((mode, spread, n));
        drop(gw);
    }
    eprintln!("admitted of 200 (limit 60, 2 workers): {report:?}");
    let get = |m: &str, s: bool| report.iter().find(|r| r.0 == m && r.1 == s).unwrap().2;
    let pinned = get("reconciled", false);
    let spread = get("reconciled", true);
    assert!((58..=61).contains(&pinned), "reconciled, pinned: {pinned}");
    assert!((58..=61).contains(&spread), "reconciled, spread: {spread}");
    // The naive designs, for comparison.
    assert_eq!(get("split", false), 30, "split, pinned");
    let full = get("full", true);
    assert!(
        full > 90,
        "full, spread: {full} (both workers admit the limit)"
    );
}

/// Two workers and a route `/k` limited to 3 requests an hour by
/// `algorithm`, plus `extra` keys for the limit.
fn small_limit(b: &Backend, algorithm: &str, extra: &str) -> Gateway {
    Gateway::start(
        2,
        b.addr,
        &format!(
            "[rate_limits.small]\nalgorithm = \"{algorithm}\"\nlimit = 3\nwindow_s = 3600\n{extra}\n\
             [[routes]]\npath = \"/k\"\nupstream = \"b\"\nrate_limit = [\"small\"]\n"
        ),
    )
}

/// A small limit is used in full under lasting demand spread over the
/// workers: a fixed window of 3 over two workers gives each a share worth
/// 1.5 requests, which rounding alone would leave at 2 admitted for the
/// whole window; the reconciler hands what is left out in whole requests.
/// Every algorithm, one new connection per request (spread by the kernel
/// over both workers) every 20 ms for about a second.
#[test]
fn a_small_limit_is_used_in_full_across_workers() {
    let b = Backend::start();
    for algorithm in ["fixed_window", "sliding_window", "token_bucket"] {
        let gw = small_limit(&b, algorithm, "");
        let mut ok = 0;
        for _ in 0..50 {
            if Conn::open(gw.addr).get("/k", &[]).status == 200 {
                ok += 1;
            }
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(ok, 3, "{algorithm}: admitted {ok} of a limit of 3");
    }
}

/// The statuses of `n` requests in a row for key `key` (`X-Key`): on one
/// keep-alive connection (one worker), or on a new connection each
/// (`spread`, over the workers).
fn burst(addr: SocketAddr, path: &str, key: &str, n: usize, spread: bool) -> Vec<u16> {
    let mut one = (!spread).then(|| Conn::open(addr));
    (0..n)
        .map(|_| match &mut one {
            Some(c) => c.get(path, &[("X-Key", key)]).status,
            None => Conn::open(addr).get(path, &[("X-Key", key)]).status,
        })
        .collect()
}

/// A quick burst gets the whole limit, not only the part of it the worker
/// it lands on holds first (half, with two workers): a refusal while the
/// other worker holds part of the key waits for the reconciler to move
/// that part over. Requests follow each other at once: on one keep-alive
/// connection (one worker), and on a new connection each (spread over
/// both workers); every algorithm, and a fresh key for each round. The
/// wait is bounded by `rebalance_wait_ms`, here long enough that a loaded
/// machine cannot make the exchange miss it.
#[test]
fn a_quick_burst_gets_the_whole_limit() {
    let b = Backend::start();
    for algorithm in ["fixed_window", "sliding_window", "token_bucket"] {
        let gw = small_limit(
            &b,
            algorithm,
            "key = \"header:X-Key\"\nrebalance_wait_ms = 5000\n",
        );
        for round in 0..6 {
            let codes = burst(gw.addr, "/k", &format!("one-{round}"), 5, false);
            assert_eq!(
                codes,
                [200, 200, 200, 429, 429],
                "{algorithm}, one connection, round {round}"
            );
            let codes = burst(gw.addr, "/k", &format!("spread-{round}"), 5, true);
            assert_eq!(
                codes.iter().filter(|&&s| s == 200).count(),
                3,
                "{algorithm}, a connection each, round {round}: {codes:?}"
            );
            assert!(codes.iter().all(|&s| s == 200 || s == 429), "{codes:?}");
        }
        // The second request on the one connection always waited.
        let waited = series(&gw.handle, "waited", "small", "admitted").unwrap();
        assert!(waited >= 6, "{algorithm}: {waited} admitted after a wait");
    }
}

/// A flood is refused without waiting: once the instance has spent a key's
/// limit, refusals are answered at once, so a flood costs no more than
/// before. One connection (one worker) sends 1,500 requests at a limit of
/// 1,000: 1,000 admitted, 500 limited, and only the few (if any) that met
/// the other worker's first part, or a part not yet released, waited.
#[test]
fn a_flood_is_refused_without_waiting() {
    let b = Backend::start();
    let gw = Gateway::start(
        2,
        b.addr,
        "[rate_limits.flood]\nalgorithm = \"fixed_window\"\nlimit = 1000\nwindow_s = 3600\n\n\
         [[routes]]\npath = \"/k\"\nupstream = \"b\"\nrate_limit = [\"flood\"]\n",
    );
    assert_eq!(admitted(&gw, 1500, "/k", &[]), 1000);
    let count = |what: &str, decision: &str| series(&gw.handle, what, "flood", decision).unwrap();
    assert_eq!(count("decisions", "limited"), 500);
    let waited = count("waited", "admitted") + count("waited", "limited");
    assert!(waited <= 10, "{waited} of 1500 requests waited");
}

// ---------------------------------------------------------------------------
// Two instances and a real Redis
// ---------------------------------------------------------------------------

struct Redis {
    child: std::process::Child,
}

impl Redis {
    fn start(port: u16) -> Option<Redis> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let r = Redis { child };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    return Some(r);
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn global_config(port: u16) -> String {
    format!(
        r#"
[redis]
url = "redis://127.0.0.1:{port}"
timeout_ms = 200

[rate_limits.shared]
key = "header:X-Key"
algorithm = "token_bucket"
limit = 300
window_s = 3600
scope = "global"
on_store_error = "allow"

[rate_limits.closed]
key = "header:X-Key"
algorithm = "fixed_window"
limit = 100000
window_s = 3600
scope = "global"
on_store_error = "deny"

[[routes]]
path = "/shared"
upstream = "b"
rate_limit = ["shared"]

[[routes]]
path = "/closed"
upstream = "b"
rate_limit = ["closed"]
"#
    )
}

/// Hammers `path` with key `key` on every gateway from several threads
/// until `until`; returns the 200s.
fn hammer(gws: &[&Gateway], path: &'static str, key: &'static str, until: Duration) -> usize {
    let total = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut ts = Vec::new();
    for gw in gws {
        for _ in 0..3 {
            let addr = gw.addr;
            let total = total.clone();
            ts.push(thread::spawn(move || {
                let mut c = Conn::open(addr);
                while start.elapsed() < until {
                    if c.get(path, &[("X-Key", key)]).status == 200 {
                        total.fetch_add(1, Ordering::SeqCst);
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            }));
        }
    }
    for t in ts {
        t.join().unwrap();
    }
    total.load(Ordering::SeqCst)
}

/// Two instances share one limit through Redis: combined admissions stay
/// within 5 % of the limit. With Redis stopped, the fail-open limit goes
/// on locally and the fail-closed one refuses; when Redis is back, both
/// recover.
#[test]
fn two_instances_share_a_global_limit_through_redis() {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("redis-server is not installed (.ci/run installs it)");
    }
    let port = free_port();
    let redis = Redis::start(port).expect("redis-server starts");
    let b = Backend::start();
    let g1 = Gateway::start(2, b.addr, &global_config(port));
    let g2 = Gateway::start(2, b.addr, &global_config(port));

    let n = hammer(&[&g1, &g2], "/shared", "k1", Duration::from_millis(2500));
    eprintln!("global: {n} admitted by two instances, limit 300");
    assert!((285..=315).contains(&n), "combined {n}, limit 300");

    // Warm up the fail-closed limit, then stop Redis.
    assert!(hammer(&[&g1], "/closed", "k2", Duration::from_millis(300)) > 0);
    redis.stop();

    // Fail closed: refused (503) once the instance notices.
    let mut c = g1.conn();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = false;
    while Instant::now() < deadline {
        let r = c.get("/closed", &[("X-Key", "k2")]);
        if r.status == 503 {
            refused = true;
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(refused, "fail-closed limit never refused with Redis down");
    // And it keeps refusing while Redis is down.
    for _ in 0..5 {
        assert_eq!(c.get("/closed", &[("X-Key", "k2")]).status, 503);
    }
    // Fail open: a fresh key is admitted on the local limit (300 here).
    let open = admitted(&g2, 20, "/shared", &[("X-Key", "k3")]);
    assert_eq!(open, 20, "fail-open limit refused with Redis down");

    // Redis back on the same port: both instances recover.
    let _redis = Redis::start(port).expect("redis-server restarts");
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut back = false;
    let mut c2 = g2.conn();
    while Instant::now() < deadline {
        if c.get("/closed", &[("X-Key", "k2")]).status == 200
            && c2.get("/closed", &[("X-Key", "k5")]).status == 200
        {
            back = true;
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(back, "fail-closed limit did not recover with Redis back");
    // Global again: a new key is counted in Redis across both instances.
    let n = hammer(&[&g1, &g2], "/shared", "k4", Duration::from_millis(2000));
    assert!(
        (285..=315).contains(&n),
        "after recovery: combined {n}, limit 300"
    );
}

/// A Redis for one test; the test fails when `redis-server` is missing
/// (`.ci/run` installs it).
fn redis() -> (Redis, u16) {
    let port = free_port();
    let r = Redis::start(port).expect("redis-server starts (.ci/run installs it)");
    (r, port)
}

/// A global limit `g` of `limit` per hour with `algorithm` on route `/g`,
/// keyed by `X-Key`, over two workers.
fn global_limit(b: &Backend, port: u16, algorithm: &str, limit: u32) -> Gateway {
    Gateway::start(
        2,
        b.addr,
        &format!(
            "[redis]\nurl = \"redis://127.0.0.1:{port}\"\ntimeout_ms = 500\n\n\
             [rate_limits.g]\nkey = \"header:X-Key\"\nalgorithm = \"{algorithm}\"\n\
             limit = {limit}\nwindow_s = 3600\nscope = \"global\"\nrebalance_wait_ms = 5000\n\n\
             [[routes]]\npath = \"/g\"\nupstream = \"b\"\nrate_limit = [\"g\"]\n"
        ),
    )
}

/// A quick burst gets the whole of a global limit: a worker out of credit
/// lets the request wait while the store may lease more or another worker
/// holds some, asks for a lease at once, and takes the answer at once. A
/// limit of 5 leases one request at a time (a tenth of the limit, at least
/// one), so each request after the first waits for its own lease. Every
/// algorithm, fresh keys, on one keep-alive connection (one worker) and on
/// a new connection each (both workers): exactly five 200s, then 429s, in
/// that order. Before, the second request on one connection was refused
/// (`[200, 429, 429, …]`).
#[test]
fn a_quick_burst_gets_the_whole_global_limit() {
    let (_redis, port) = redis();
    let b = Backend::start();
    let want = [200, 200, 200, 200, 200, 429, 429];
    for algorithm in ["fixed_window", "sliding_window", "token_bucket"] {
        let gw = global_limit(&b, port, algorithm, 5);
        for round in 0..4 {
            let key = format!("{algorithm}-one-{round}");
            let codes = burst(gw.addr, "/g", &key, 7, false);
            assert_eq!(codes, want, "{algorithm}, one connection, round {round}");
            let key = format!("{algorithm}-spread-{round}");
            let codes = burst(gw.addr, "/g", &key, 7, true);
            assert_eq!(codes, want, "{algorithm}, a connection each, round {round}");
        }
        let waited = series(&gw.handle, "waited", "g", "admitted").unwrap();
        assert!(waited >= 8, "{algorithm}: {waited} admitted after a wait");
    }
}

/// A flood of a global key is refused without waiting: once the store
/// says the key's quota is used up, refusals are answered at once (until
/// the store may have more again, at most a second later). One connection
/// sends 1,500 requests at a limit of 1,000: 1,000 admitted, 500 limited,
/// and only the few that met a lease on its way (or the store's answer
/// on its way to the workers) waited.
#[test]
fn a_global_flood_is_refused_without_waiting() {
    let (_redis, port) = redis();
    let b = Backend::start();
    let gw = global_limit(&b, port, "fixed_window", 1000);
    assert_eq!(admitted(&gw, 1500, "/g", &[("X-Key", "flood")]), 1000);
    let count = |what: &str, decision: &str| series(&gw.handle, what, "g", decision).unwrap();
    assert_eq!(count("decisions", "limited"), 500);
    let waited_out = count("waited", "limited");
    eprintln!(
        "global flood: {} admitted after a wait, {waited_out} refused after one",
        count("waited", "admitted")
    );
    assert!(waited_out <= 10, "{waited_out} of 500 refusals waited");
}

// ---------------------------------------------------------------------------
// Config errors
// ---------------------------------------------------------------------------

/// Bad limits are reported with the key and a fix; good ones pass.
#[test]
fn config_errors_name_the_key() {
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.b]\ntargets = [\"127.0.0.1:1\"]\n";
    let errs = |rest: &str| -> String {
        match ringgate::config::Config::parse(&format!("{base}{rest}")) {
            Ok(_) => String::from("ok"),
            Err(e) => e.to_string(),
        }
    };
    let e = errs(
        "[rate_limits.a]\nlimit = 10\nalgorithm = \"bogus\"\n[[routes]]\npath = \"/\"\nupstream = \"b\"\n",
    );
    assert!(e.contains("rate_limits.a.algorithm"), "{e}");
    let e = errs(
        "[rate_limits.a]\nlimit = 10\nscope = \"global\"\n[[routes]]\npath = \"/\"\nupstream = \"b\"\n",
    );
    assert!(
        e.contains("rate_limits.a.scope") && e.contains("[redis]"),
        "{e}"
    );
    let e = errs(
        "[rate_limits.a]\nlimit = 10\n[[routes]]\npath = \"/\"\nupstream = \"b\"\nrate_limit = [\"nope\"]\n",
    );
    assert!(
        e.contains("routes[0].rate_limit") && e.contains("\"nope\""),
        "{e}"
    );
    let e = errs(
        "[rate_limits.a]\nlimit = 10\nkey = \"cookie\"\nburst = 3\nalgorithm = \"fixed_window\"\n[[routes]]\npath = \"/\"\nupstream = \"b\"\n",
    );
    assert!(
        e.contains("rate_limits.a.key") && e.contains("rate_limits.a.burst"),
        "{e}"
    );
    let e = errs(
        "[rate_limits.a]\nlimit = 10\ntrusted_proxies = [\"10.0.0.0/99\"]\n[[routes]]\npath = \"/\"\nupstream = \"b\"\n",
    );
    assert!(e.contains("rate_limits.a.trusted_proxies"), "{e}");
    let e = errs(
        "[rate_limits.a]\nlimit = 10\nrebalance_wait_ms = 60000\n[[routes]]\npath = \"/\"\nupstream = \"b\"\n",
    );
    assert!(e.contains("rate_limits.a.rebalance_wait_ms"), "{e}");
    let ok = errs(
        "[rate_limits.a]\nkey = [\"consumer\", \"route\"]\nlimit = 10\nwindow_s = 0.5\n\
         tiers = { premium = 100, gold = { limit = 50, algorithm = \"leaky_bucket\", max_delay_ms = 500 } }\n\
         rebalance_wait_ms = 0\n[[routes]]\npath = \"/\"\nupstream = \"b\"\nrate_limit = [\"a\"]\n",
    );
    assert_eq!(ok, "ok");
}

// ---------------------------------------------------------------------------
// Tiers and consumer keys (identity from the auth filter)
// ---------------------------------------------------------------------------

/// Consumers authenticated by API key are limited per consumer, with their
/// tier's numbers: premium gets its override, free the default; premium
/// callers of a queueing tier wait where free callers get 429.
#[test]
fn tiers_follow_the_consumer() {
    let b = Backend::start();
    let gw = Gateway::start(
        1,
        b.addr,
        &format!(
            r#"
[auth.api_key]
header = "X-API-Key"

[[consumers]]
id = "prem"
api_key_sha256 = "{}"
tier = "premium"

[[consumers]]
id = "free"
api_key_sha256 = "{}"
tier = "free"

[rate_limits.per_consumer]
key = "consumer"
algorithm = "fixed_window"
limit = 2
window_s = 3600
tiers = {{ premium = 5 }}

[rate_limits.queue]
key = "api_key"
algorithm = "leaky_bucket"
limit = 10
window_s = 1
tiers = {{ premium = {{ max_delay_ms = 1500 }} }}

[[routes]]
path = "/count"
upstream = "b"
auth = ["api_key"]
rate_limit = ["per_consumer"]

[[routes]]
path = "/queue"
upstream = "b"
auth = ["api_key"]
rate_limit = ["queue"]
"#,
            sha_hex("prem-key"),
            sha_hex("free-key")
        ),
    );
    assert_eq!(admitted(&gw, 10, "/count", &[("X-API-Key", "free-key")]), 2);
    assert_eq!(admitted(&gw, 10, "/count", &[("X-API-Key", "prem-key")]), 5);
    let r = gw.conn().get("/count", &[("X-API-Key", "prem-key")]);
    assert_eq!(r.num("X-RateLimit-Limit"), 5);
    // Leaky bucket at 10/s: 8 at once. Premium queues them all (up to
    // 1.5 s); free has no queue: one passes, the rest get 429.
    let burst = |key: &'static str| -> usize {
        let addr = gw.addr;
        let ts: Vec<_> = (0..8)
            .map(|_| {
                thread::spawn(move || Conn::open(addr).get("/queue", &[("X-API-Key", key)]).status)
            })
            .collect();
        ts.into_iter()
            .filter(|_| true)
            .map(|t| t.join().unwrap())
            .filter(|&s| s == 200)
            .count()
    };
    assert_eq!(burst("prem-key"), 8);
    let start = Instant::now();
    let free = burst("free-key");
    let leak = (start.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        free >= 1 && free <= 1 + leak,
        "free admitted {free} (leak {leak})"
    );
}

// ---------------------------------------------------------------------------
// Reloads
// ---------------------------------------------------------------------------

/// A gateway serving a config file, so it can be reloaded.
struct Reloadable {
    handle: ringgate::runtime::ServerHandle,
    addr: SocketAddr,
    path: std::path::PathBuf,
    head: String,
}

impl Reloadable {
    /// `workers`, one upstream `b` at `backend`, then `rest` (limits and
    /// routes), in a file of its own.
    fn start(name: &str, workers: usize, backend: SocketAddr, rest: &str) -> Reloadable {
        let head = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\npin = false\n\
             drain_timeout_ms = 500\n\n[upstreams.b]\ntargets = [\"{backend}\"]\n\n"
        );
        let dir = std::env::temp_dir().join(format!("ringgate-rl-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ringgate.toml");
        std::fs::write(&path, format!("{head}{rest}")).unwrap();
        let cfg = match ringgate::config::Config::load(&path) {
            Ok(c) => c,
            Err(e) => panic!("config rejected:\n{e}\n{rest}"),
        };
        let handle = ringgate::runtime::Server::start_file(cfg, path.clone(), Default::default())
            .expect("gateway starts");
        let addr = handle.local_addrs()[0];
        Reloadable {
            handle,
            addr,
            path,
            head,
        }
    }

    /// Rewrites the file with `rest` and reloads it (SIGHUP's path);
    /// returns the reload's summary.
    fn reload(&self, rest: &str) -> String {
        std::fs::write(&self.path, format!("{}{rest}", self.head)).unwrap();
        match self.handle.reload() {
            Ok(s) => s,
            Err(e) => panic!("reload rejected: {e:?}\n{rest}"),
        }
    }

    fn conn(&self) -> Conn {
        Conn::open(self.addr)
    }

    /// `ringgate_rate_limit_decisions_total{limit,decision}` as
    /// `GET /metrics` shows it.
    fn decisions(&self, limit: &str, decision: &str) -> Option<u64> {
        series(&self.handle, "decisions", limit, decision)
    }
}

/// `ringgate_rate_limit_{what}_total{limit,decision}` as `GET /metrics`
/// shows it.
fn series(
    h: &ringgate::runtime::ServerHandle,
    what: &str,
    limit: &str,
    decision: &str,
) -> Option<u64> {
    let text = h.metrics.render_with(&h.store.load());
    let key =
        format!("ringgate_rate_limit_{what}_total{{limit=\"{limit}\",decision=\"{decision}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.parse().unwrap())
}

impl Drop for Reloadable {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `[rate_limits.NAME]`: a token bucket of `limit` per hour by client
/// address (no window boundary to cross during a test).
fn bucket(name: &str, limit: u64) -> String {
    format!(
        "[rate_limits.{name}]\nkey = \"ip\"\nalgorithm = \"token_bucket\"\nlimit = {limit}\n\
         window_s = 3600\n\n"
    )
}

/// A route to `b` with these limits (none: no rate limit).
fn route(path: &str, limits: &[&str]) -> String {
    let names: Vec<String> = limits.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[[routes]]\npath = \"{path}\"\nupstream = \"b\"\nrate_limit = [{}]\n\n",
        names.join(", ")
    )
}

/// Sends `n` requests on `c`; returns how many got 200.
fn admitted_on(c: &mut Conn, n: usize, path: &str) -> usize {
    (0..n)
        .filter(|_| {
            let r = c.get(path, &[]);
            assert!(r.status == 200 || r.status == 429, "{r:?}");
            r.status == 200
        })
        .count()
}

/// A reload that lowers a limit (100 → 2 per window) applies to the next
/// request, on a keep-alive connection opened before the reload as on a
/// new one: the third request is refused, and every answer carries the new
/// policy's headers. (Before reloads applied rate limits, this reload was
/// rejected with "cannot change while running".)
#[test]
fn a_reload_lowering_a_limit_applies_to_open_and_new_connections() {
    let b = Backend::start();
    let gw = Reloadable::start(
        "lower",
        1,
        b.addr,
        &(bucket("api", 100) + &route("/api", &["api"])),
    );
    let mut kept = gw.conn();
    let port = kept.w.local_addr().unwrap().port();
    for _ in 0..3 {
        let r = kept.get("/api", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.num("X-RateLimit-Limit"), 100);
    }
    gw.reload(&(bucket("api", 2) + &route("/api", &["api"])));
    let policy = "\"api\";q=2;w=3600";
    for remaining in [1, 0] {
        let r = kept.get("/api", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("RateLimit-Policy"), Some(policy), "{r:?}");
        assert_eq!(r.num("X-RateLimit-Limit"), 2);
        assert_eq!(r.num("X-RateLimit-Remaining"), remaining);
    }
    let mut fresh = gw.conn();
    for c in [&mut kept, &mut fresh] {
        let r = c.get("/api", &[]);
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(r.header("RateLimit-Policy"), Some(policy), "{r:?}");
        assert!(
            r.header("RateLimit")
                .is_some_and(|v| v.starts_with("\"api\";r=0;t=")),
            "{r:?}"
        );
        assert_eq!(r.num("X-RateLimit-Limit"), 2);
        assert_eq!(r.num("X-RateLimit-Remaining"), 0);
        assert!(r.num("Retry-After") >= 1, "{r:?}");
    }
    // Every request went over the connection opened before the reload.
    assert_eq!(kept.w.local_addr().unwrap().port(), port);
}

/// A reload that leaves a limit's definition alone keeps its count: a
/// client that used up its allowance is still refused after a reload that
/// only adds a route (the running limits are kept) and after one that
/// changes another limit (the new limits carry this one's count), while
/// the changed limit starts fresh with its new number.
#[test]
fn a_reload_that_keeps_a_limit_keeps_its_count() {
    let b = Backend::start();
    let rest = |extra: bool, other: u64| {
        let mut t = bucket("api", 3)
            + &bucket("other", other)
            + &route("/api", &["api"])
            + &route("/other", &["other"]);
        if extra {
            t += &route("/extra", &[]);
        }
        t
    };
    let gw = Reloadable::start("keep", 1, b.addr, &rest(false, 2));
    let mut c = gw.conn();
    assert_eq!(admitted_on(&mut c, 5, "/api"), 3);
    assert_eq!(admitted_on(&mut c, 5, "/other"), 2);

    let summary = gw.reload(&rest(true, 2));
    assert!(
        summary.contains("2 rate limits (2 kept with their counts)"),
        "{summary}"
    );
    assert_eq!(c.get("/extra", &[]).status, 200, "the new route serves");
    let mut fresh = gw.conn();
    for c in [&mut c, &mut fresh] {
        assert_eq!(c.get("/api", &[]).status, 429, "api kept its count");
        assert_eq!(c.get("/other", &[]).status, 429, "other kept its count");
    }

    let summary = gw.reload(&rest(true, 4));
    assert!(
        summary.contains("2 rate limits (1 kept with their counts)"),
        "{summary}"
    );
    assert_eq!(admitted_on(&mut c, 5, "/api"), 0, "api carried its count");
    assert_eq!(
        admitted_on(&mut fresh, 6, "/other"),
        4,
        "other starts fresh"
    );
}

/// A reload adds a limit to a route that had none, another removes it
/// (the route answers without rate-limit headers again) and drops a limit
/// altogether. Decision counters follow the limits' names: `beta`, whose
/// index moves when `alpha` goes, keeps counting under its own name, and
/// nothing is counted for `alpha` after it is gone. Once every connection
/// of the old generation is closed, its limits are freed.
#[test]
fn a_reload_adds_and_removes_limits_and_metrics_follow_names() {
    let b = Backend::start();
    let first = bucket("alpha", 1000)
        + &bucket("beta", 2)
        + &route("/a", &["alpha"])
        + &route("/b", &["beta"])
        + &route("/c", &[]);
    let gw = Reloadable::start("add-remove", 1, b.addr, &first);
    let mut c = gw.conn();
    for _ in 0..5 {
        let r = c.get("/c", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("RateLimit-Policy"), None, "{r:?}");
    }
    assert_eq!(c.get("/a", &[]).status, 200);
    assert_eq!(admitted_on(&mut c, 3, "/b"), 2);
    assert_eq!(gw.decisions("alpha", "admitted"), Some(1));
    assert_eq!(gw.decisions("beta", "admitted"), Some(2));
    assert_eq!(gw.decisions("beta", "limited"), Some(1));

    // gamma added on /c; alpha removed (and taken off /a); beta unchanged.
    let second = bucket("beta", 2)
        + &bucket("gamma", 2)
        + &route("/a", &[])
        + &route("/b", &["beta"])
        + &route("/c", &["gamma"]);
    let summary = gw.reload(&second);
    assert!(
        summary.contains("2 rate limits (1 kept with their counts)"),
        "{summary}"
    );
    let statuses: Vec<u16> = (0..3).map(|_| c.get("/c", &[]).status).collect();
    assert_eq!(statuses, [200, 200, 429], "gamma applies to /c");
    let r = c.get("/c", &[]);
    assert_eq!(r.header("RateLimit-Policy"), Some("\"gamma\";q=2;w=3600"));
    assert_eq!(c.get("/b", &[]).status, 429, "beta kept its count");
    for _ in 0..5 {
        let r = c.get("/a", &[]);
        assert_eq!(r.status, 200, "alpha is gone: {r:?}");
        assert_eq!(r.header("RateLimit-Policy"), None, "{r:?}");
    }
    assert_eq!(gw.decisions("beta", "admitted"), Some(2));
    assert_eq!(gw.decisions("beta", "limited"), Some(2));
    assert_eq!(gw.decisions("gamma", "admitted"), Some(2));
    assert_eq!(gw.decisions("gamma", "limited"), Some(2));
    assert_eq!(gw.decisions("alpha", "admitted"), Some(1));
    assert_eq!(gw.decisions("alpha", "limited"), Some(0));

    // gamma removed: /c is unlimited again; the old generation goes away.
    let running = gw.handle.store.load().rate_limits.clone().expect("limits");
    let old = Arc::downgrade(&running);
    drop(running);
    drop(c);
    gw.reload(
        &(bucket("beta", 2) + &route("/a", &[]) + &route("/b", &["beta"]) + &route("/c", &[])),
    );
    let mut c = gw.conn();
    for _ in 0..5 {
        let r = c.get("/c", &[]);
        assert_eq!(r.status, 200, "gamma is gone: {r:?}");
        assert_eq!(r.header("RateLimit-Policy"), None, "{r:?}");
    }
    assert_eq!(c.get("/b", &[]).status, 429, "beta kept its count");
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while old.upgrade().is_some() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        old.upgrade().is_none(),
        "the replaced limits are still held after their connections closed"
    );
}

/// With two workers, the reconciled limit keeps the bound stated at
/// `instance_limit_holds_pinned_and_spread` across reloads: a reload that
/// changes another limit carries this one's count on both workers (the
/// reconciler's state is handed to the new one), so the 200 requests
/// before and after it admit 58..=60 of the limit of 60; a reload that
/// raises the limit to 90 starts it fresh on both workers, and the next
/// 200 requests admit 88..=90. The assertions leave one request of slack
/// above, as there.
#[test]
fn the_instance_limit_holds_across_reloads() {
    let b = Backend::start();
    let rest = |key: u64, other: u64| {
        format!(
            "[rate_limits.key]\nalgorithm = \"token_bucket\"\nlimit = {key}\nwindow_s = 3600\n\n\
             [rate_limits.other]\nlimit = {other}\nwindow_s = 3600\n\n"
        ) + &route("/k", &["key"])
            + &route("/o", &["other"])
    };
    let gw = Reloadable::start("bound", 2, b.addr, &rest(60, 5));
    let before = run_key(gw.addr, 40, true);
    let summary = gw.reload(&rest(60, 6));
    assert!(
        summary.contains("2 rate limits (1 kept with their counts)"),
        "{summary}"
    );
    let after = run_key(gw.addr, 160, true);
    eprintln!("carried: {before} + {after} admitted of 200 (limit 60, 2 workers)");
    assert!(
        (58..=61).contains(&(before + after)),
        "carried across the reload: {before} + {after}"
    );
    gw.reload(&rest(90, 6));
    let fresh = run_key(gw.addr, 200, true);
    eprintln!("changed to 90: {fresh} admitted of 200");
    assert!((88..=91).contains(&fresh), "raised to 90: {fresh}");
}

/// Number of keys in the Redis at `port` that match `pattern`.
fn redis_keys(port: u16, pattern: &str) -> usize {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "*2\r\n$4\r\nKEYS\r\n${}\r\n{pattern}\r\n", pattern.len()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim_end()
        .strip_prefix('*')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("KEYS answered {line:?}"))
}

/// Requests on `path` over fresh connections for `for_`; returns the
/// 200s and the 429s.
fn answers(addr: SocketAddr, path: &str, for_: Duration) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < for_ {
        let r = Conn::open(addr).get(path, &[]);
        match r.status {
            200 => ok += 1,
            429 => limited += 1,
            // A lease that did not come in time (fail closed).
            503 => {}
            _ => panic!("{r:?}"),
        }
        thread::sleep(Duration::from_millis(5));
    }
    (ok, limited)
}

/// `[redis]` reloads too: a reload that adds it with a global limit
/// counts that limit in Redis (at most the limit is admitted, the rest is
/// refused), one that changes it (another key prefix) counts afresh under
/// the new prefix, and one that removes it leaves the route unlimited.
#[test]
fn a_reload_adds_changes_and_removes_redis() {
    let port = free_port();
    let _redis = Redis::start(port).expect("redis-server starts");
    let b = Backend::start();
    let global = |prefix: &str| {
        format!(
            "[redis]\nurl = \"redis://127.0.0.1:{port}\"\nkey_prefix = \"{prefix}\"\n\
             timeout_ms = 200\n\n[rate_limits.g]\nkey = \"ip\"\nalgorithm = \"token_bucket\"\n\
             limit = 5\nwindow_s = 3600\nscope = \"global\"\non_store_error = \"deny\"\n\n"
        ) + &route("/g", &["g"])
    };
    let gw = Reloadable::start(
        "redis",
        1,
        b.addr,
        &(bucket("l", 1000) + &route("/g", &["l"])),
    );
    assert_eq!(gw.conn().get("/g", &[]).status, 200);

    gw.reload(&global("rl-a"));
    let (ok, limited) = answers(gw.addr, "/g", Duration::from_millis(1500));
    assert!(
        (1..=5).contains(&ok) && limited > 0,
        "{ok} admitted, {limited} refused"
    );
    assert!(redis_keys(port, "rl-a:g:*") > 0, "counted in Redis");

    gw.reload(&global("rl-b"));
    let (ok, limited) = answers(gw.addr, "/g", Duration::from_millis(1500));
    assert!(
        (1..=5).contains(&ok) && limited > 0,
        "{ok} admitted, {limited} refused"
    );
    assert!(
        redis_keys(port, "rl-b:g:*") > 0,
        "counted under the new prefix"
    );

    gw.reload(&route("/g", &[]));
    let mut c = gw.conn();
    for _ in 0..10 {
        let r = c.get("/g", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("RateLimit-Policy"), None, "{r:?}");
    }
}

/// Set in the child process `reloads_do_not_leak_threads` runs itself in.
const ALONE: &str = "RINGGATE_TEST_ALONE";

/// Threads of this process: all of them, those whose name starts with
/// `ringgate`, and the rate-limit control threads (reconciler and lease
/// thread; names are cut to 15 bytes).
fn threads() -> (usize, usize, usize) {
    let (mut all, mut ours, mut rl) = (0, 0, 0);
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        all += 1;
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if name.starts_with("ringgate") {
            ours += 1;
        }
        if name.starts_with("ringgate-rl-") {
            rl += 1;
        }
    }
    (all, ours, rl)
}

/// Repeated reloads do not leak threads: each of 20 reloads changes a
/// global limit and a local one on two workers, so it starts a reconciler
/// and a lease thread, and the replaced ones end once the workers have
/// switched (idle workers too). Afterwards the process runs as many
/// threads as before, two of them for rate limiting. A limit left
/// unchanged all along (handed from reconciler to reconciler 20 times)
/// keeps its bound over all of it. Runs alone in a child process, so the
/// threads of other tests do not count.
#[test]
fn reloads_do_not_leak_threads() {
    if std::env::var_os(ALONE).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "reloads_do_not_leak_threads",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ALONE, "1")
            .output()
            .expect("the test binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    let port = free_port();
    let _redis = Redis::start(port).expect("redis-server starts");
    let b = Backend::start();
    let rest = |i: u64| {
        format!(
            "[redis]\nurl = \"redis://127.0.0.1:{port}\"\ntimeout_ms = 200\n\n\
             [rate_limits.g]\nkey = \"ip\"\nlimit = {}\nwindow_s = 3600\nscope = \"global\"\n\n",
            1000 + i
        ) + &bucket("changing", 1000 + i)
            + &bucket("steady", 4)
            + &route("/g", &["g"])
            + &route("/c", &["changing"])
            + &route("/k", &["steady"])
    };
    let gw = Reloadable::start("threads", 2, b.addr, &rest(0));
    // Fresh connections, so both workers serve.
    let steady = |n: usize| {
        (0..n)
            .filter(|_| Conn::open(gw.addr).get("/k", &[]).status == 200)
            .count()
    };
    // Requests on the changing limits, so the lease thread and the
    // reconciler have work. (A worker may refuse a global key while its
    // share of the leased credit is empty, as without reloads.)
    let traffic = || {
        for path in ["/g", "/c", "/g", "/c"] {
            let r = Conn::open(gw.addr).get(path, &[]);
            assert!(r.status == 200 || r.status == 429, "{path}: {r:?}");
        }
    };
    // Until the replaced generations' threads are gone.
    let settle = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = threads();
            if t.2 <= 2 || Instant::now() > deadline {
                return t;
            }
            thread::sleep(Duration::from_millis(20));
        }
    };
    let mut admitted = steady(10);
    traffic();
    // An idle keep-alive connection holds its worker's first generation
    // until its next request: the replaced reconcilers must end without
    // waiting for their generation to be dropped.
    let mut idle = gw.conn();
    assert_eq!(idle.get("/c", &[]).status, 200);
    let (all_before, ours_before, rl) = settle();
    assert_eq!(rl, 2, "a reconciler and a lease thread");
    for i in 1..=20 {
        gw.reload(&rest(i));
        traffic();
        admitted += steady(1);
    }
    admitted += steady(10);
    let (all, ours, rl) = settle();
    assert_eq!(idle.get("/c", &[]).status, 200);
    eprintln!(
        "threads: {all_before} before 20 reloads ({ours_before} ringgate), {all} after ({ours}, {rl} rate-limit)"
    );
    assert_eq!(rl, 2, "rate-limit threads after 20 reloads");
    assert_eq!(ours, ours_before, "ringgate threads after 20 reloads");
    // Backend threads come and go with upstream connections; 40 would be
    // two per reload.
    assert!(
        all <= all_before + 2,
        "{all_before} threads before, {all} after"
    );
    assert!(
        (2..=5).contains(&admitted),
        "steady (limit 4) admitted {admitted} of 41 across 20 reloads"
    );
}
