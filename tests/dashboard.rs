//! What an operator looks at: the demo's admin API, `GET /stats`, the
//! `/dashboard` page (in headless Chromium, through
//! `tests/browser/dashboard.py`), and the Grafana dashboard and Prometheus
//! config under `dashboards/` checked against a real gateway's `/metrics`.
//!
//! The browser test needs Debian's `chromium` and the Python `playwright`
//! package (`.ci/run` installs both); without them it fails, saying what
//! is missing. Its screenshot is kept in `target/tmp/dashboard.png`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The JWT secret variable of the test gateways' token endpoint.
const SECRET_ENV: &str = "RINGGATE_DASHBOARD_TEST_SECRET";

/// A fresh directory in the temp dir.
fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringgate-dashboard-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `ringgate run -c FILE` child; SIGTERM and reaped on drop.
struct Running {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
    cfg: PathBuf,
    log: Option<thread::JoinHandle<String>>,
}

impl Running {
    fn admin_get(&self, path: &str) -> (u16, String) {
        admin_request(self.admin, "GET", path, None, "")
    }

    fn stats(&self) -> serde_json::Value {
        let (status, body) = self.admin_get("/stats");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(log) = self.log.take() {
            let log = log.join().unwrap_or_default();
            if thread::panicking() {
                eprintln!("--- gateway log ---\n{log}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `ringgate run -c` on `toml`, in which `{admin}` stands for the
/// admin address; waits until the admin API answers ready.
fn start_gateway(toml: &str) -> Running {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dir = temp_dir();
    let cfg = dir.join("ringgate.toml");
    std::fs::write(&cfg, toml.replace("{admin}", &admin.to_string())).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .env("NO_COLOR", "1")
        .env("RINGGATE_LOG", "info")
        .env(SECRET_ENV, "a-test-secret-of-at-least-32-bytes-long")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringgate run");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ringgate serving") {
                let port = line.split("127.0.0.1:").nth(1).map(|s| {
                    s.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                });
                let _ = tx.send(port.and_then(|p| p.parse::<u16>().ok()));
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let port = rx.recv_timeout(Duration::from_secs(15)).ok().flatten();
    let Some(port) = port else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no 'ringgate serving' line; log:\n{}", log.join().unwrap());
    };
    let running = Running {
        child,
        addr: ([127, 0, 0, 1], port).into(),
        admin,
        dir,
        cfg,
        log: Some(log),
    };
    // Ready, or asking for the admin token.
    let end = Instant::now() + Duration::from_secs(10);
    while !matches!(running.admin_get("/readyz").0, 200 | 401) {
        assert!(Instant::now() < end, "the admin API never answered ready");
        thread::sleep(Duration::from_millis(20));
    }
    running
}

/// A gateway with something to show in every figure: a healthy upstream
/// with an ejected target, one with a target its health check finds down,
/// one whose breaker opens, a rate limit, a cached route (fresh for 1 s,
/// then stale while revalidating) and a JWT route with a token endpoint.
fn full_gateway(backend: &MockUpstream) -> Running {
    let api = backend.addr;
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 2
pin = false
drain_timeout_ms = 2000

[admin]
listen = "{{admin}}"

[upstreams.api]
targets = ["{api}", "{ejected}"]
[upstreams.api.outlier]
consecutive_failures = 1
base_ejection_ms = 600000
max_ejection_percent = 50

[upstreams.checked]
targets = ["{api}", "{down}"]
[upstreams.checked.health]
path = "/health"
interval_ms = 100
timeout_ms = 500
healthy_threshold = 1
unhealthy_threshold = 1

[upstreams.broken]
targets = ["{broken}"]
retries = 0
[upstreams.broken.breaker]
failure_threshold = 2
open_ms = 600000

[rate_limits.tight]
key = "ip"
algorithm = "fixed_window"
limit = 2
window_s = 600

[auth.jwt]
algorithms = ["HS256"]
secret_env = "{SECRET_ENV}"

[auth.token_endpoint]
path = "/auth/token"

[[consumers]]
id = "client"
client_secret_sha256 = "{secret}"
roles = ["reader"]

[[routes]]
name = "api"
path = "/api/{{*rest}}"
upstream = "api"

[[routes]]
name = "checked"
path = "/checked/{{*rest}}"
upstream = "checked"

[[routes]]
name = "broken"
path = "/broken/{{*rest}}"
upstream = "broken"

[[routes]]
name = "limited"
path = "/limited/{{*rest}}"
upstream = "api"
rate_limit = ["tight"]

[[routes]]
name = "cached"
path = "/cached/{{*rest}}"
upstream = "api"
cache = {{ ttl_s = 1, stale_while_revalidate_s = 600 }}

[[routes]]
name = "secure"
path = "/secure/{{*rest}}"
upstream = "api"
auth = ["jwt"]
"#,
        ejected = refused_addr(),
        down = refused_addr(),
        broken = refused_addr(),
        secret = sha_hex("secret"),
    );
    start_gateway(&toml)
}

/// One request on a fresh connection; the status.
fn status_of(addr: SocketAddr, raw: &str) -> u16 {
    Client::connect(addr).request(raw).status
}

fn get(addr: SocketAddr, path: &str) -> u16 {
    status_of(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n"),
    )
}

/// Drives every figure once: ejection, breaker, refusals, cache hit and
/// stale answers, auth and token endpoint answers.
fn exercise(gw: &Running) {
    for i in 0..6 {
        assert_eq!(get(gw.addr, &format!("/api/{i}")), 200);
        assert_eq!(get(gw.addr, &format!("/checked/{i}")), 200);
    }
    for _ in 0..3 {
        let s = get(gw.addr, "/broken/x");
        assert!(s == 502 || s == 503, "{s}");
    }
    let limited: Vec<u16> = (0..4).map(|_| get(gw.addr, "/limited/x")).collect();
    assert!(limited.contains(&429), "{limited:?}");
    // MISS, HIT; after the 1 s ttl a stale answer while it revalidates.
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.get("/cached/a").header("x-cache"), Some("MISS"));
    assert_eq!(c.get("/cached/a").header("x-cache"), Some("HIT"));
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(c.get("/cached/a").header("x-cache"), Some("STALE"));
    assert_eq!(get(gw.addr, "/secure/x"), 401);
    let body = "grant_type=client_credentials";
    let issued = status_of(
        gw.addr,
        &format!(
            "POST /auth/token HTTP/1.1\r\nHost: test.local\r\nAuthorization: Basic {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            base64_basic("client", "secret"),
            body.len()
        ),
    );
    assert_eq!(issued, 200);
}

fn base64_basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

/// Requests sent on a thread until dropped, round robin over `paths`.
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: SocketAddr, paths: &[&str]) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let s = stop.clone();
        let handle = thread::spawn(move || {
            // A keep-alive connection for most requests (the open
            // connections figure), a fresh one now and then.
            let mut c = Client::connect(addr);
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let path = &paths[i % paths.len()];
                if i % 10 == 9 {
                    c = Client::connect(addr);
                }
                let req = format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n");
                if c.try_send(req).is_err() || c.try_read_response().is_err() {
                    c = Client::connect(addr);
                }
                i += 1;
                thread::sleep(Duration::from_millis(15));
            }
        });
        Traffic {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The head and body of one admin `GET`.
fn admin_raw(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The README's `curl http://127.0.0.1:9901/metrics` right after the tour
/// failed with "connection refused": the demo had no admin API. It serves
/// one now (on a free port when 9901 is taken), with `/stats` and
/// `/dashboard`, and the tour says where.
#[test]
fn demo_serves_the_admin_api_and_says_where() {
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", &listen.to_string()])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ringgate demo");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(10);
            while self.0.try_wait().ok().flatten().is_none() && Instant::now() < end {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            if line.starts_with("Ctrl-C") {
                let _ = tx.send(all.clone());
            }
        }
    });
    let tour = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the demo printed no tour");
    let line = tour
        .lines()
        .find(|l| l.contains("admin API on http://"))
        .unwrap_or_else(|| panic!("the tour names no admin API:\n{tour}"));
    let admin: SocketAddr = line
        .split("admin API on http://")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert!(
        line.contains(&format!("http://{admin}/dashboard")),
        "{line}"
    );
    assert!(
        tour.contains(&format!("curl -s http://{admin}/metrics")),
        "{tour}"
    );
    if admin.port() != 9901 {
        eprintln!("(9901 was taken: the demo's admin API is on {admin})");
    }

    wait_until("the demo gateway", || {
        TcpStream::connect(listen).is_ok() && get(listen, "/products/42") == 200
    });
    assert_eq!(get(listen, "/catalog/42"), 200);
    let (status, metrics) = admin_request(admin, "GET", "/metrics", None, "");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("ringgate_requests_total{route=\"products\",method=\"GET\",status=\"2xx\",upstream=\"products\"} "),
        "{metrics}"
    );
    // Each worker's counts reach the admin API with its next tick: wait
    // (bounded) until both requests show.
    let mut stats = serde_json::Value::Null;
    wait_until("both requests in /stats", || {
        let (status, body) = admin_request(admin, "GET", "/stats", None, "");
        assert_eq!(status, 200, "{body}");
        stats = serde_json::from_str(&body).unwrap();
        stats["requests"]["total"].as_u64().unwrap() >= 2
    });
    let names: Vec<&str> = stats["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for r in ["product-page", "products", "catalog", "prices", "reviews"] {
        assert!(names.contains(&r), "{names:?}");
    }
    let (head, page) = admin_raw(admin, "/dashboard");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(page.contains("<title>ringgate</title>"));
}

/// `GET /stats` over a live gateway: counts by route and status class,
/// rates, last-minute quantiles, upstream health, ejection and breaker
/// state, refusals, the cache hit ratio, workers, and the config generation
/// and last reload (a good one, then a rejected one).
#[test]
fn stats_reports_every_figure_of_a_live_gateway() {
    let backend = MockUpstream::builder().respond(200, "{}").start();
    let gw = full_gateway(&backend);
    let s = gw.stats();
    assert_eq!(s["workers"], 2);
    assert_eq!(s["ready"], true);
    assert_eq!(s["config"]["generation"], 0);
    assert!(s["config"]["last_reload"].is_null(), "{s}");

    exercise(&gw);
    wait_until("the down target found unhealthy", || {
        let s = gw.stats();
        let ups = s["upstreams"].as_array().unwrap().clone();
        let checked = ups.iter().find(|u| u["name"] == "checked").unwrap();
        checked["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["healthy"] == false)
    });
    // Two more samples so that rates cover the traffic above.
    thread::sleep(Duration::from_millis(1100));
    let s = gw.stats();
    let route = |name: &str| {
        s["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no route {name} in {s}"))
            .clone()
    };
    assert_eq!(route("api")["by_class"]["2xx"], 6);
    assert_eq!(route("checked")["by_class"]["2xx"], 6);
    let limited = route("limited");
    assert_eq!(
        limited["by_class"]["2xx"].as_u64().unwrap() + limited["by_class"]["4xx"].as_u64().unwrap(),
        4,
        "{limited}"
    );
    assert!(route("broken")["by_class"]["5xx"].as_u64().unwrap() == 3);
    assert_eq!(route("secure")["by_class"]["4xx"], 1);
    let api = route("api");
    let (p50, p99) = (
        api["latency_ms"]["p50"].as_f64().unwrap(),
        api["latency_ms"]["p99"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{api}");
    assert_eq!(api["latency_ms"]["count"], 6);
    // Every request above: the 23 routed ones and the token endpoint's,
    // which goes out the same way as any other answer (under no route).
    assert_eq!(s["requests"]["total"], 24, "{s}");
    assert_eq!(route("(none)")["requests"], 1, "{s}");
    assert!(s["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{s}");
    let limits = s["rate_limits"]["limits"].as_array().unwrap();
    assert_eq!(limits[0]["name"], "tight");
    let refused = limits[0]["limited"].as_u64().unwrap();
    assert!(refused >= 1, "{limits:?}");
    assert_eq!(s["rate_limits"]["limited"].as_u64().unwrap(), refused);
    assert_eq!(limited["by_class"]["4xx"].as_u64().unwrap(), refused);
    assert!(s["cache"]["hits"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["cache"]["stale"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["cache"]["misses"].as_u64().unwrap() >= 1);
    let ratio = s["cache"]["hit_ratio"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio < 1.0, "{ratio}");
    let up = |name: &str| {
        s["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()
            .clone()
    };
    let states = |u: &serde_json::Value| -> Vec<(bool, bool)> {
        u["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["healthy"].as_bool().unwrap(),
                    t["ejected"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    assert!(states(&up("api")).contains(&(true, true)), "{}", up("api"));
    assert!(
        states(&up("checked")).contains(&(false, false)),
        "{}",
        up("checked")
    );
    assert_eq!(up("broken")["breaker"]["state"], "open");
    assert!(up("broken")["errors"].as_u64().unwrap() >= 2);

    // Rates: traffic on, two reads a sample apart; the second sees it.
    let before = gw.stats()["requests"]["total"].as_u64().unwrap();
    let traffic = Traffic::start(gw.addr, &["/api/t", "/cached/a"]);
    wait_until("a request rate", || {
        let s = gw.stats();
        s["requests"]["per_s"].as_f64().unwrap_or(0.0) > 0.0
            && s["requests"]["total"].as_u64().unwrap() > before
    });
    drop(traffic);
    let (_, hist) = gw.admin_get("/stats?history=1");
    let hist: serde_json::Value = serde_json::from_str(&hist).unwrap();
    let h = &hist["history"];
    let n = h["at_ms"].as_array().unwrap().len();
    assert!(n >= 2, "{h}");
    for series in [
        "requests_per_s",
        "p50_ms",
        "p99_ms",
        "rate_limited_per_s",
        "cache_hit_ratio",
        "open_connections",
    ] {
        assert_eq!(h[series].as_array().unwrap().len(), n, "{series}");
    }
    assert_eq!(h["by_class_per_s"]["2xx"].as_array().unwrap().len(), n);
    assert_eq!(h["routes_per_s"]["api"].as_array().unwrap().len(), n);
    assert!(
        h["requests_per_s"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_f64().unwrap() > 0.0)
    );

    // A reload: generation 1, last reload ok with its summary.
    let (status, body) = admin_request(gw.admin, "POST", "/reload", None, "");
    assert_eq!(status, 200, "{body}");
    let s = gw.stats();
    assert_eq!(s["config"]["generation"], 1, "{s}");
    assert_eq!(s["config"]["reloads"]["ok"], 1);
    let last = &s["config"]["last_reload"];
    assert_eq!(last["result"], "ok", "{last}");
    assert!(last["summary"].is_string() && last["at_ms"].as_u64().unwrap() > 0);
    // A rejected one: the generation stays, the errors are shown.
    let good = std::fs::read_to_string(&gw.cfg).unwrap();
    std::fs::write(&gw.cfg, good.replace("limit = 2", "limit = \"two\"")).unwrap();
    let (status, _) = admin_request(gw.admin, "POST", "/reload", None, "");
    assert_eq!(status, 400);
    let s = gw.stats();
    assert_eq!(s["config"]["generation"], 1);
    assert_eq!(s["config"]["reloads"]["error"], 1);
    let last = &s["config"]["last_reload"];
    assert_eq!(last["result"], "error", "{last}");
    let errors = last["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e.as_str().unwrap().contains("limit")),
        "{errors:?}"
    );
}

/// The dashboard page is one self-contained document: no external script,
/// style sheet, font or image (nothing that would fail on an air-gapped
/// box), and a Content-Security-Policy that lets it fetch only from its
/// own origin.
#[test]
fn dashboard_page_is_self_contained() {
    let backend = MockUpstream::builder().respond(200, "{}").start();
    let gw = start_gateway(&format!(
        "{}\n[admin]\nlisten = \"{{admin}}\"\n",
        GatewayConfig::simple(&[backend.addr]).toml()
    ));
    let (head, page) = admin_raw(gw.admin, "/dashboard");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head_l = head.to_ascii_lowercase();
    assert!(
        head_l.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head_l.contains("content-security-policy: default-src 'none';")
            && head_l.contains("connect-src 'self'"),
        "{head}"
    );
    assert!(page.starts_with("<!doctype html>"));
    let lower = page.to_ascii_lowercase();
    for bad in [
        "<link",
        " src=",
        "@import",
        "url(",
        "@font-face",
        "//cdn",
        "<iframe",
    ] {
        assert!(!lower.contains(bad), "the page holds {bad:?}");
    }
    // The only absolute URL is the SVG namespace (a name, never fetched).
    for (i, _) in lower.match_indices("http") {
        let rest = &lower[i..];
        assert!(
            rest.starts_with("http://www.w3.org/2000/svg")
                || !rest.starts_with("http:") && !rest.starts_with("https:"),
            "an absolute URL in the page: {}",
            &page[i..(i + 60).min(page.len())]
        );
    }
    assert!(
        page.contains("fetch(\"stats?history=1\""),
        "the page reads /stats"
    );
}

/// With an admin token the page itself is served (it holds no data) and
/// asks for the token; `/stats` wants it like every other endpoint.
#[test]
fn stats_needs_the_admin_token_the_page_does_not() {
    let backend = MockUpstream::builder().respond(200, "{}").start();
    let dir = temp_dir();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-admin-token").unwrap();
    let gw = start_gateway(&format!(
        "{}\n[admin]\nlisten = \"{{admin}}\"\ntoken_file = \"{}\"\n",
        GatewayConfig::simple(&[backend.addr]).toml(),
        token_file.display()
    ));
    assert_eq!(admin_request(gw.admin, "GET", "/stats", None, "").0, 401);
    let (status, body) = admin_request(gw.admin, "GET", "/stats", Some("s3cret-admin-token"), "");
    assert_eq!(status, 200, "{body}");
    let (head, page) = admin_raw(gw.admin, "/dashboard");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(page.contains("admin token"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The dashboard in headless Chromium against a gateway under traffic:
/// every figure appears, the request count and rate move between two
/// reads, charts draw lines, upstream states, the open breaker, refusals
/// and the cache ratio show, nothing is loaded from elsewhere; the
/// screenshot is kept in target/tmp/dashboard.png.
#[test]
fn dashboard_in_chromium() {
    let backend = MockUpstream::builder()
        .latency(Duration::from_millis(2))
        .respond(200, "{}")
        .start();
    let gw = full_gateway(&backend);
    exercise(&gw);
    let (status, body) = admin_request(gw.admin, "POST", "/reload", None, "");
    assert_eq!(status, 200, "{body}");
    let _traffic = Traffic::start(
        gw.addr,
        &[
            "/api/a",
            "/api/b",
            "/cached/a",
            "/checked/c",
            "/limited/x",
            "/broken/x",
            "/nowhere",
        ],
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| String::from("python3"));
    let out = Command::new(&python)
        .arg(Path::new(ROOT).join("tests/browser/dashboard.py"))
        .args(["--url", &format!("http://{}/dashboard", gw.admin)])
        .arg("--screenshot")
        .arg(&shot)
        .args(["--workers", "2", "--generation", "1", "--reload", "ok", "--cache"])
        .args(["--route", "api", "--route", "cached", "--route", "limited", "--route", "broken"])
        .args(["--upstream", "api", "--upstream", "checked", "--upstream", "broken"])
        .args(["--target-state", "healthy", "--target-state", "ejected", "--target-state", "unhealthy"])
        .args(["--breaker", "broken=open", "--breaker", "api=none", "--limit", "tight"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python}: {e} (the dashboard test needs python3 with playwright and Debian's chromium; .ci/run installs them)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the dashboard check failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let read: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let first = read["first"]["requests_total"].as_f64().unwrap();
    let later = read["later"]["requests_total"].as_f64().unwrap();
    assert!(later > first, "{read}");
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("dashboard screenshot: {}", shot.display());
}

/// Every metric the Grafana dashboard (dashboards/grafana-ringgate.json)
/// queries, and every label value it matches on, exists in a real
/// gateway's /metrics after some traffic.
#[test]
fn grafana_dashboard_queries_series_that_exist() {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("dashboards/grafana-ringgate.json")).unwrap();
    let dash: serde_json::Value =
        serde_json::from_str(&text).expect("the Grafana dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 20, "{} queries", exprs.len());

    let backend = MockUpstream::builder().respond(200, "{}").start();
    let gw = full_gateway(&backend);
    exercise(&gw);
    let (status, metrics) = gw.admin_get("/metrics");
    assert_eq!(status, 200);
    // name -> the label sets of its samples.
    let mut series: std::collections::HashMap<String, Vec<Vec<(String, String)>>> =
        Default::default();
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.rsplit_once('}').unwrap().0)),
            None => (line.split_whitespace().next().unwrap(), Vec::new()),
        };
        series.entry(name.to_string()).or_default().push(labels);
    }
    let mut checked = std::collections::BTreeSet::new();
    for expr in &exprs {
        for (name, matchers) in selectors(expr) {
            let Some(samples) = series.get(&name) else {
                panic!("{name} (queried by {expr}) is not in /metrics:\n{metrics}");
            };
            for (k, v) in matchers {
                // Prometheus adds instance and job; regexes are Grafana's.
                if k == "instance" || k == "job" || v.contains('$') {
                    continue;
                }
                assert!(
                    samples
                        .iter()
                        .any(|ls| ls.contains(&(k.clone(), v.clone()))),
                    "no {name} sample with {k}=\"{v}\" (queried by {expr})"
                );
            }
            checked.insert(name);
        }
        for label in by_labels(expr) {
            let known = series
                .values()
                .flatten()
                .any(|ls| ls.iter().any(|(k, _)| *k == label));
            assert!(
                known || label == "le",
                "no series has the label {label} (in {expr})"
            );
        }
    }
    // Families ringgate exports that the dashboard does not show yet (a
    // note, not a failure: a new metric need not wait for a panel).
    for family in metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split_whitespace().next().unwrap();
        let on = checked.iter().any(|c| {
            c == name
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| c.strip_suffix(s) == Some(name))
        });
        if !on {
            eprintln!("note: {name} is exported but not on the Grafana dashboard");
        }
    }
}

/// The example Prometheus config scrapes the admin listener's /metrics at
/// the address the demo uses.
#[test]
fn prometheus_example_scrapes_the_admin_metrics() {
    let yml = std::fs::read_to_string(Path::new(ROOT).join("dashboards/prometheus.yml")).unwrap();
    assert!(yml.contains("metrics_path: /metrics"), "{yml}");
    let admin = ringgate::demo::ADMIN_LISTEN;
    assert!(yml.contains(&format!("targets: [\"{admin}\"]")), "{yml}");
    assert!(
        ringgate::demo::DEMO_TOML.contains(&format!("listen = \"{admin}\"")),
        "config/demo.toml's admin listen is not {admin}"
    );
}

/// Every query in a Grafana dashboard: panels' `"expr"`, variables'
/// `"definition"`.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// `a="x",b="y"` as pairs.
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((k, r)) = rest.split_once("=\"") {
        let k = k.trim_start_matches(',').trim();
        let end = r.find('"').unwrap_or(r.len());
        out.push((k.to_string(), r[..end].to_string()));
        rest = &r[(end + 1).min(r.len())..];
    }
    out
}

/// The metric selectors of a PromQL expression: each `ringgate_*` name
/// with its `label="value"` matchers (`=~` and `!=` matchers are skipped).
fn selectors(expr: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("ringgate_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let name = expr[start..end].to_string();
        let mut matchers = Vec::new();
        if b.get(end) == Some(&b'{') {
            let close = expr[end..].find('}').map(|c| end + c).unwrap();
            for m in expr[end + 1..close].split(',') {
                if let Some((k, v)) = m.split_once('=')
                    && !k.ends_with('!')
                    && !v.starts_with('~')
                {
                    matchers.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
                }
            }
            end = close;
        }
        out.push((name, matchers));
        i = end;
    }
    out
}

/// The labels of every `by (...)` clause.
fn by_labels(expr: &str) -> Vec<String> {
    expr.match_indices("by (")
        .flat_map(|(i, _)| {
            let rest = &expr[i + 4..];
            let close = rest.find(')').unwrap();
            rest[..close]
                .split(',')
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}
