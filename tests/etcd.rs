//! A fleet against a real etcd: each test starts `etcd` (Debian package
//! `etcd-server`) on loopback ports with a data directory of its own, and
//! two ringgate instances with `[config] source = "etcd"` against it.
//!
//! Covered: a route written through one instance's admin API serves on
//! both; a write with a stale revision is refused (409); consumers and
//! upstreams written through the admin API; an invalid object written
//! straight into etcd is refused by both, which keep serving and report
//! it; etcd stopped and started again under keep-alive traffic fails no
//! request and both instances converge on the latest revision; a watch
//! that lost its history to a compaction resyncs; an instance started
//! without etcd waits for it; a service instance whose lease lapses stops
//! getting traffic; registry targets posted to one instance reach the
//! other; `config push` then `config pull` round-trips; auth, TLS and a
//! refusing endpoint.
//!
//! Without `etcd` on the PATH (or at /usr/bin/etcd) every test fails,
//! saying how to install it.

mod support;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Client, MockUpstream, free_port};

/// Upper bound of every wait for the fleet to converge.
const CONVERGE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------

fn etcd_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    match on_path.or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file())) {
        Some(p) => p,
        None => panic!(
            "these tests need the etcd server binary, and `etcd` is not on the PATH nor at /usr/bin/etcd \
             (fix: apt-get install -y etcd-server; .ci/run installs it)"
        ),
    }
}

/// One etcd member on loopback ports, with its own data directory.
struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    /// `https://` client port with its certificate and key files.
    tls: Option<(u16, PathBuf, PathBuf)>,
}

impl Etcd {
    fn start() -> Etcd {
        Self::start_with(None)
    }

    /// With `tls`, etcd also serves https on another port with this
    /// certificate and key (PEM).
    fn start_with(tls: Option<(String, String)>) -> Etcd {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringgate-etcd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let tls = tls.map(|(cert, key)| {
            let c = dir.with_extension("crt");
            let k = dir.with_extension("key");
            std::fs::write(&c, cert).unwrap();
            std::fs::write(&k, key).unwrap();
            (free_port(), c, k)
        });
        let mut e = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            tls,
        };
        e.run();
        e
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn run(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let mut cmd = Command::new(etcd_binary());
        let mut listen = client.clone();
        if let Some((port, cert, key)) = &self.tls {
            listen.push_str(&format!(",https://127.0.0.1:{port}"));
            cmd.arg("--cert-file").arg(cert).arg("--key-file").arg(key);
        }
        let child = cmd
            .args(["--name", "t", "--data-dir"])
            .arg(&self.dir)
            .args(["--listen-client-urls", &listen])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if self
                .try_post("/v3/kv/range", &json!({"key": "AA=="}))
                .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default();
        panic!("etcd did not answer within 15 s; its log:\n{log}");
    }

    /// Kills the member (its data stays for [`Etcd::run`]).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn try_post(&self, path: &str, body: &Value) -> Result<Value, String> {
        ureq::post(&format!("{}{path}", self.url()))
            .timeout(Duration::from_secs(2))
            .send_json(body.clone())
            .map_err(|e| e.to_string())?
            .into_json()
            .map_err(|e| e.to_string())
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.try_post(path, &body)
            .unwrap_or_else(|e| panic!("etcd {path}: {e}"))
    }

    fn put(&self, key: &str, value: &str, lease: i64) -> i64 {
        let mut body = json!({"key": b64(key), "value": b64(value)});
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        let v = self.post("/v3/kv/put", body);
        v["header"]["revision"].as_str().unwrap().parse().unwrap()
    }

    /// `etcdctl auth enable` with a `root` user of this password.
    fn enable_auth(&self, password: &str) {
        self.post("/v3/auth/role/add", json!({"name": "root"}));
        self.post(
            "/v3/auth/user/add",
            json!({"name": "root", "password": password}),
        );
        self.post(
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
        );
        self.post("/v3/auth/enable", json!({}));
    }

    fn grant(&self, ttl: i64) -> i64 {
        let v = self.post("/v3/lease/grant", json!({"TTL": ttl}));
        v["ID"].as_str().unwrap().parse().unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        for ext in ["log", "crt", "key"] {
            let _ = std::fs::remove_file(self.dir.with_extension(ext));
        }
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

// ---------------------------------------------------------------------------
// Instances
// ---------------------------------------------------------------------------

fn write(name: &str, text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "ringgate-etcd-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, text).unwrap();
    p
}

/// The file of a fleet instance: listeners, admin, etcd.
fn instance_file(etcd: &Etcd, prefix: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\ndrain_timeout_ms = 1000\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [config]\nsource = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_prefix = \"{prefix}\"\n",
        etcd.url()
    )
}

struct Instance {
    _handle: ringgate::runtime::ServerHandle,
    addr: SocketAddr,
    admin: SocketAddr,
    _file: TempFile,
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Instance {
    fn start(etcd: &Etcd, prefix: &str) -> Instance {
        let path = write("instance.toml", &instance_file(etcd, prefix));
        let cfg = ringgate::config::source::load(&path)
            .unwrap_or_else(|e| panic!("instance config rejected:\n{e}"));
        let handle = ringgate::runtime::Server::start_file(cfg, path.clone(), Default::default())
            .expect("start");
        let addr = handle.local_addrs()[0];
        let admin = handle.admin_addr().expect("admin");
        Instance {
            _handle: handle,
            addr,
            admin,
            _file: TempFile(path),
        }
    }

    fn admin(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        admin_request(self.admin, method, path, body)
    }

    /// The revision of the running config (`GET /config`).
    fn revision(&self) -> i64 {
        let (s, v) = self.admin("GET", "/config", "");
        assert_eq!(s, 200, "{v}");
        v["source"]["revision"].as_i64().expect("source.revision")
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        one_request(self.addr, path)
    }
}

fn admin_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    (status, v)
}

fn one_request(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let mut c = Client::from_stream(s);
    c.try_send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .map_err(|e| format!("write: {e}"))?;
    let r = c.try_read_response().map_err(|e| format!("read: {e}"))?;
    Ok((r.status, r.text()))
}

/// Polls `f` until it holds, at most [`CONVERGE`].
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + CONVERGE;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(f(), "not within {CONVERGE:?}: {what}");
}

fn backend(body: &'static str) -> MockUpstream {
    MockUpstream::builder().respond(200, body).start()
}

/// Writes `text` as the fleet's config with `ringgate config push`.
fn push(etcd: &Etcd, prefix: &str, text: &str) {
    let f = TempFile(write("push.toml", text));
    let out = Command::new(support::BIN)
        .args(["config", "push", "-c"])
        .arg(&f.0)
        .args(["--etcd", &etcd.url(), "--prefix", prefix])
        .output()
        .expect("run ringgate config push");
    assert!(
        out.status.success(),
        "config push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn base_config(a: &MockUpstream) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstreams.a]\ntargets = [\"{}\"]\n\n\
         [[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"a\"\n",
        a.target()
    )
}

fn ready(i: &Instance) -> bool {
    i.admin("GET", "/readyz", "").0 == 200
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// A route created through one instance's admin API serves on both, and a
/// write that names a revision older than the object's last change is
/// refused with 409 (the object keeps the first writer's value).
#[test]
fn admin_write_reaches_both_instances_and_a_stale_write_conflicts() {
    let etcd = Etcd::start();
    let a = backend("from-a");
    push(&etcd, "/fleet", &base_config(&a));
    let one = Instance::start(&etcd, "/fleet");
    let two = Instance::start(&etcd, "/fleet");
    eventually("both instances ready", || ready(&one) && ready(&two));
    assert_eq!(one.get("/b").unwrap().0, 404);

    let seen = one.revision();
    let (s, v) = one.admin(
        "PUT",
        &format!("/config/routes/b?revision={seen}"),
        r#"{"path": "/b", "upstream": "a"}"#,
    );
    assert_eq!(s, 200, "{v}");
    let written = v["revision"].as_i64().unwrap();
    assert!(written > seen);
    eventually("the route serves on both instances", || {
        [&one, &two]
            .iter()
            .all(|i| i.get("/b").is_ok_and(|(s, b)| s == 200 && b == "from-a"))
    });
    assert_eq!(two.revision(), written);

    // A second operator who read before the first one wrote.
    let (s, v) = two.admin(
        "PUT",
        &format!("/config/routes/b?revision={seen}"),
        r#"{"path": "/other", "upstream": "a"}"#,
    );
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("conflict"), "{v}");
    assert_eq!(v["mod_revision"], written, "{v}");
    // Creating what exists (revision=0) conflicts too.
    let (s, _) = two.admin(
        "PUT",
        "/config/routes/b?revision=0",
        r#"{"path": "/other", "upstream": "a"}"#,
    );
    assert_eq!(s, 409);
    // A write without a revision is refused before anything is written.
    let (s, _) = two.admin("DELETE", "/config/routes/b", "");
    assert_eq!(s, 428);
    let (s, v) = two.admin("GET", "/config/routes/b", "");
    assert_eq!(s, 200);
    assert_eq!(v["value"]["path"], "/b", "{v}");
    assert_eq!(v["mod_revision"], written);

    // A write that would make the config invalid is refused (400), naming
    // the key, and nothing is written.
    let (s, v) = one.admin(
        "PUT",
        &format!("/config/routes/c?revision={written}"),
        r#"{"path": "/c", "upstream": "missing"}"#,
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().contains("/fleet/routes/c"),
        "{v}"
    );
    assert_eq!(one.revision(), written);

    // Delete with the current revision: gone on both.
    let (s, v) = two.admin(
        "DELETE",
        &format!("/config/routes/b?revision={written}"),
        "",
    );
    assert_eq!(s, 200, "{v}");
    eventually("the route is gone on both", || {
        [&one, &two]
            .iter()
            .all(|i| i.get("/b").is_ok_and(|(s, _)| s == 404))
    });
}

/// An object written straight into etcd that does not validate is refused
/// by both instances: they keep serving the running config, and say why in
/// `/readyz`, `GET /config` and the metrics; an instance started meanwhile
/// waits (503) and `check` fails naming the key; fixing the key applies
/// it everywhere.
#[test]
fn invalid_object_in_etcd_is_refused_by_both_and_both_keep_serving() {
    let etcd = Etcd::start();
    let a = backend("from-a");
    push(&etcd, "/inv", &base_config(&a));
    let one = Instance::start(&etcd, "/inv");
    let two = Instance::start(&etcd, "/inv");
    eventually("both instances ready", || ready(&one) && ready(&two));
    let before = one.revision();

    let bad = etcd.put(
        "/inv/routes/bad",
        r#"{"path": "/bad", "upstream": "missing", "colour": "red"}"#,
        0,
    );
    for i in [&one, &two] {
        eventually("the refusal is reported", || {
            let (_, v) = i.admin("GET", "/readyz", "");
            v["config"]["rejected"]["revision"] == bad
        });
        let (s, v) = i.admin("GET", "/readyz", "");
        assert_eq!(s, 200, "the running config still serves: {v}");
        let errors = v["config"]["rejected"]["errors"].to_string();
        assert!(errors.contains("/inv/routes/bad"), "{errors}");
        assert!(errors.contains("colour"), "{errors}");
        assert!(
            errors.contains("\\\"missing\\\" is not defined"),
            "{errors}"
        );
        assert_eq!(i.revision(), before);
        assert_eq!(i.get("/a").unwrap(), (200, String::from("from-a")));
        assert_eq!(i.get("/bad").unwrap().0, 404);
        let (_, m) = i.admin("GET", "/metrics", "");
        let m = m.as_str().unwrap().to_string();
        assert!(
            m.contains(&format!("ringgate_config_rejected_revision {bad}")),
            "{m}"
        );
        assert!(
            m.contains(&format!("ringgate_config_revision {before}")),
            "{m}"
        );
    }

    // An instance started now waits (503, the errors shown) instead of
    // serving a config without the sections in etcd; `check` fails.
    let three = Instance::start(&etcd, "/inv");
    let (s, v) = three.admin("GET", "/readyz", "");
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["config"]["rejected"]["revision"], bad, "{v}");
    let out = Command::new(support::BIN)
        .args(["check", "-c"])
        .arg(&three._file.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/inv/routes/bad (routes[1].upstream)"),
        "{err}"
    );

    let fixed = etcd.put("/inv/routes/bad", r#"{"path": "/bad", "upstream": "a"}"#, 0);
    for i in [&one, &two, &three] {
        eventually("the fixed object applies", || i.revision() == fixed);
        assert_eq!(i.get("/bad").unwrap(), (200, String::from("from-a")));
        let (_, v) = i.admin("GET", "/readyz", "");
        assert!(v["config"]["rejected"].is_null(), "{v}");
    }
}

/// etcd goes away and comes back while keep-alive clients send requests
/// to both instances: no request fails, both report the outage (readyz
/// detail and metrics) and then converge on the latest revision, written
/// once etcd is back.
#[test]
fn etcd_restart_under_keep_alive_load_fails_no_request() {
    let mut etcd = Etcd::start();
    let a = backend("from-a");
    push(&etcd, "/ha", &base_config(&a));
    let one = Instance::start(&etcd, "/ha");
    let two = Instance::start(&etcd, "/ha");
    eventually("both instances ready", || ready(&one) && ready(&two));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let loops: Vec<_> = [one.addr, two.addr]
        .into_iter()
        .map(|addr| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .try_send(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
                        .and_then(|_| c.try_read_response());
                    match r {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{addr}: {}", r.status)),
                        Err(e) => {
                            failures.lock().unwrap().push(format!("{addr}: {e}"));
                            c = Client::connect(addr);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();

    eventually("traffic flows", || ok.load(Ordering::Relaxed) > 20);
    etcd.stop();
    for i in [&one, &two] {
        eventually("the outage is reported", || {
            let (s, v) = i.admin("GET", "/readyz", "");
            s == 200 && v["config"]["connected"] == false && v["config"]["error"].is_string()
        });
        let (_, m) = i.admin("GET", "/metrics", "");
        assert!(m.as_str().unwrap().contains("ringgate_etcd_connected 0"));
    }
    let during = ok.load(Ordering::Relaxed);
    eventually("traffic flows while etcd is away", || {
        ok.load(Ordering::Relaxed) > during + 20
    });

    etcd.run();
    for i in [&one, &two] {
        eventually("etcd is back", || {
            let (_, v) = i.admin("GET", "/readyz", "");
            v["config"]["connected"] == true
        });
    }
    let seen = one.revision();
    let (s, v) = two.admin(
        "PUT",
        &format!("/config/routes/after?revision={seen}"),
        r#"{"path": "/after", "upstream": "a"}"#,
    );
    assert_eq!(s, 200, "{v}");
    let latest = v["revision"].as_i64().unwrap();
    for i in [&one, &two] {
        eventually("both converge on the latest revision", || {
            i.revision() == latest
        });
        assert_eq!(i.get("/after").unwrap().0, 200);
    }
    let after = ok.load(Ordering::Relaxed);
    eventually("traffic flows after", || {
        ok.load(Ordering::Relaxed) > after + 20
    });
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests of {}: {:?}",
        failures.len(),
        ok.load(Ordering::Relaxed) + failures.len(),
        &failures[..failures.len().min(10)]
    );
}

/// `discovery = "etcd"`: two service instances register with leases; the
/// one that stops renewing its lease drops out when etcd expires it, and
/// gets no more traffic.
#[test]
fn service_instance_whose_lease_lapses_stops_receiving_traffic() {
    let etcd = Etcd::start();
    let a = backend("from-a");
    let live = backend("live");
    let dying = backend("dying");
    let cfg = format!(
        "{}\n[upstreams.orders]\ndiscovery = \"etcd\"\netcd_prefix = \"/services/orders\"\n\n\
         [[routes]]\nname = \"orders\"\npath = \"/orders\"\nupstream = \"orders\"\n",
        base_config(&a)
    );
    push(&etcd, "/disc", &cfg);
    let one = Instance::start(&etcd, "/disc");
    eventually("instance ready", || ready(&one));

    let lease_live = etcd.grant(2);
    let lease_dying = etcd.grant(2);
    etcd.put(
        "/services/orders/live",
        &json!({"addr": live.target(), "weight": 1}).to_string(),
        lease_live,
    );
    etcd.put(
        "/services/orders/dying",
        &json!({"addr": dying.target(), "weight": 1}).to_string(),
        lease_dying,
    );
    // Both services renew their leases until "dying" dies.
    let renew_dying = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let renewer = {
        let (renew_dying, stop) = (renew_dying.clone(), stop.clone());
        let url = etcd.url();
        std::thread::spawn(move || {
            let keep = |id: i64| {
                let _ = ureq::post(&format!("{url}/v3/lease/keepalive"))
                    .timeout(Duration::from_secs(1))
                    .send_json(json!({"ID": id.to_string()}));
            };
            while !stop.load(Ordering::Relaxed) {
                keep(lease_live);
                if renew_dying.load(Ordering::Relaxed) {
                    keep(lease_dying);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    eventually("both service instances get traffic", || {
        let _ = one.get("/orders");
        live.hits() > 0 && dying.hits() > 0
    });
    renew_dying.store(false, Ordering::Relaxed);
    eventually("the lapsed instance leaves the target list", || {
        let (_, v) = one.admin("GET", "/upstreams/orders", "");
        v["targets"]
            .as_array()
            .is_some_and(|t| t.len() == 1 && t[0].to_string().contains(&live.target()))
    });
    let dying_hits = dying.hits();
    for _ in 0..20 {
        assert_eq!(one.get("/orders").unwrap(), (200, String::from("live")));
    }
    assert_eq!(dying.hits(), dying_hits, "the lapsed instance got traffic");
    stop.store(true, Ordering::Relaxed);
    renewer.join().unwrap();
}

/// With the source etcd, a registry upstream's registrations are etcd keys
/// with a lease: posted to one instance, the target serves on both.
#[test]
fn registry_targets_posted_to_one_instance_serve_on_both() {
    let etcd = Etcd::start();
    let a = backend("from-a");
    let svc = backend("registered");
    let cfg = format!(
        "{}\n[upstreams.reg]\ndiscovery = \"registry\"\nregistry_ttl_ms = 5000\n\n\
         [[routes]]\nname = \"reg\"\npath = \"/reg\"\nupstream = \"reg\"\n",
        base_config(&a)
    );
    push(&etcd, "/regf", &cfg);
    let one = Instance::start(&etcd, "/regf");
    let two = Instance::start(&etcd, "/regf");
    eventually("both instances ready", || ready(&one) && ready(&two));
    let body = json!({"addr": svc.target(), "weight": 1}).to_string();
    let (s, v) = one.admin("POST", "/upstreams/reg/targets", &body);
    assert_eq!(s, 200, "{v}");
    for i in [&one, &two] {
        eventually("the registered target serves", || {
            i.get("/reg")
                .is_ok_and(|(s, b)| s == 200 && b == "registered")
        });
    }
    let (s, v) = two.admin("DELETE", "/upstreams/reg/targets", &body);
    assert_eq!(s, 200, "{v}");
    for i in [&one, &two] {
        eventually("the deregistered target is gone", || {
            i.get("/reg").is_ok_and(|(s, _)| s == 503)
        });
    }
}

/// `ringgate config push` writes a file's reloadable sections (validated
/// first: an invalid file writes nothing), `ringgate config pull` prints
/// them back as the same TOML tables.
#[test]
fn config_push_then_pull_round_trips() {
    let etcd = Etcd::start();
    let text = r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[upstreams.api]
targets = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3 }]
balance = "weighted"
connect_timeout_ms = 500

[upstreams.api.health]
path = "/health"
interval_ms = 1000

[upstreams.orders]
discovery = "etcd"
etcd_prefix = "/services/orders"

[[routes]]
name = "api"
path = "/api/{*rest}"
methods = ["GET", "POST"]
upstream = "api"
rate_limit = ["per_ip"]

[[routes]]
name = "orders"
path = "/orders/{id}"
upstream = "orders"

[rate_limits.per_ip]
limit = 100
window_s = 1.5
key = "ip"

[config]
etcd_endpoints = ["http://127.0.0.1:2379"]
"#;
    push(&etcd, "/rt", text);
    let pull = || {
        let out = Command::new(support::BIN)
            .args(["config", "pull", "--etcd", &etcd.url(), "--prefix", "/rt"])
            .output()
            .expect("run ringgate config pull");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let pulled = pull();
    let got: toml::Table = toml::from_str(&pulled).unwrap();
    let mut want: toml::Table = toml::from_str(text).unwrap();
    for k in ["server", "admin", "config"] {
        want.remove(k);
    }
    assert_eq!(got, want, "pulled:\n{pulled}");

    // An invalid file is refused before anything is written.
    let bad = TempFile(write(
        "bad.toml",
        "[upstreams.x]\ntargets = []\n[[routes]]\nname = \"x\"\npath = \"/\"\nupstream = \"y\"\n",
    ));
    let out = Command::new(support::BIN)
        .args(["config", "push", "-c"])
        .arg(&bad.0)
        .args(["--etcd", &etcd.url(), "--prefix", "/rt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes[0].upstream"), "{err}");
    assert_eq!(pull(), pulled);
}

/// `check` and `run` refuse a file that keeps a reloadable section while
/// the source is etcd, naming the section and the command that moves it.
#[test]
fn a_reloadable_section_in_the_file_is_refused_with_the_source_etcd() {
    let etcd = Etcd::start();
    let f = TempFile(write(
        "mixed.toml",
        &format!(
            "{}\n[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n",
            instance_file(&etcd, "/mixed")
        ),
    ));
    let e = ringgate::config::source::load(Path::new(&f.0)).unwrap_err();
    let e = e.to_string();
    assert!(e.starts_with("upstreams:"), "{e}");
    assert!(e.contains("ringgate config push"), "{e}");
}

/// A TCP relay to etcd that can cut every connection and refuse new ones,
/// as a network partition would, while etcd itself stays up.
struct Partition {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Partition {
    fn to(target: SocketAddr) -> Partition {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let (o, c) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(up) = TcpStream::connect(target) else {
                    continue;
                };
                c.lock()
                    .unwrap()
                    .extend([s.try_clone().unwrap(), up.try_clone().unwrap()]);
                for (mut from, mut to) in
                    [(s.try_clone().unwrap(), up.try_clone().unwrap()), (up, s)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Partition { addr, open, conns }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// An instance cut off from etcd while the config changes and etcd
/// compacts the history its watch would resume from: it keeps serving,
/// reports the outage, and once it reaches etcd again reads the whole
/// prefix (a resync) and runs the latest revision.
#[test]
fn a_watch_that_lost_its_history_resyncs() {
    let etcd = Etcd::start();
    let a = backend("from-a");
    push(&etcd, "/cmp", &base_config(&a));
    let relay = Partition::to(([127, 0, 0, 1], etcd.client_port).into());
    let file = instance_file(&etcd, "/cmp").replace(&etcd.url(), &format!("http://{}", relay.addr));
    let path = TempFile(write("partitioned.toml", &file));
    let cfg = ringgate::config::source::load(&path.0).expect("config");
    let handle = ringgate::runtime::Server::start_file(cfg, path.0.clone(), Default::default())
        .expect("start");
    let i = Instance {
        addr: handle.local_addrs()[0],
        admin: handle.admin_addr().unwrap(),
        _handle: handle,
        _file: TempFile(PathBuf::new()),
    };
    eventually("instance ready", || ready(&i));
    // The watch runs once a change arrives through it.
    let pre = etcd.put("/cmp/routes/pre", r#"{"path": "/pre", "upstream": "a"}"#, 0);
    eventually("the watch delivers", || i.revision() == pre);

    relay.cut();
    eventually("the partition is reported", || {
        let (_, v) = i.admin("GET", "/readyz", "");
        v["config"]["connected"] == false
    });
    // Changes the instance cannot see, then a compaction past them.
    etcd.put("/cmp/routes/b", r#"{"path": "/b", "upstream": "a"}"#, 0);
    etcd.put("/cmp/routes/c", r#"{"path": "/c", "upstream": "a"}"#, 0);
    let latest = etcd.put("/cmp/routes/b", r#"{"path": "/bb", "upstream": "a"}"#, 0);
    etcd.post(
        "/v3/kv/compaction",
        json!({"revision": latest.to_string(), "physical": true}),
    );
    assert_eq!(i.get("/a").unwrap(), (200, String::from("from-a")));
    assert_eq!(i.get("/c").unwrap().0, 404);

    relay.heal();
    eventually("the instance runs the latest revision", || {
        i.revision() == latest
    });
    assert_eq!(i.get("/bb").unwrap().0, 200);
    assert_eq!(i.get("/c").unwrap().0, 200);
    assert_eq!(i.get("/b").unwrap().0, 404);
    let (_, m) = i.admin("GET", "/metrics", "");
    let m = m.as_str().unwrap().to_string();
    assert!(m.contains("ringgate_etcd_resyncs_total 1"), "{m}");
    assert!(m.contains("ringgate_etcd_connected 1"), "{m}");
}

/// An instance started while etcd is away serves the file's sections only
/// and answers `/readyz` with 503 (so a balancer leaves it out) until etcd
/// answers; then it applies the config from etcd and is ready.
#[test]
fn an_instance_started_without_etcd_waits_for_it() {
    let mut etcd = Etcd::start();
    let a = backend("from-a");
    push(&etcd, "/late", &base_config(&a));
    etcd.stop();
    let i = Instance::start(&etcd, "/late");
    let (s, v) = i.admin("GET", "/readyz", "");
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["status"], "waiting for the config from etcd", "{v}");
    assert!(v["config"]["error"].is_string(), "{v}");
    assert_eq!(i.get("/a").unwrap().0, 404);
    etcd.run();
    eventually("ready once etcd answers", || ready(&i));
    assert_eq!(i.get("/a").unwrap(), (200, String::from("from-a")));
}

/// With auth enabled on etcd, an instance with `etcd_username` and the
/// password from `etcd_password_file` reads, watches and writes; a wrong
/// password is a config error naming `config.etcd_username`.
#[test]
fn etcd_with_auth_enabled() {
    let etcd = Etcd::start();
    let a = backend("from-a");
    push(&etcd, "/auth", &base_config(&a));
    etcd.enable_auth("s3cret");
    let write_instance = |password: &str| {
        let pw = TempFile(write("etcd-password", password));
        let file = format!(
            "{}etcd_username = \"root\"\netcd_password_file = \"{}\"\n",
            instance_file(&etcd, "/auth"),
            pw.0.display()
        );
        (TempFile(write("auth.toml", &file)), pw)
    };
    let start = |path: &Path| {
        let cfg = ringgate::config::source::load(path).expect("config");
        let handle =
            ringgate::runtime::Server::start_file(cfg, path.to_path_buf(), Default::default())
                .expect("start");
        Instance {
            addr: handle.local_addrs()[0],
            admin: handle.admin_addr().unwrap(),
            _handle: handle,
            _file: TempFile(PathBuf::new()),
        }
    };
    let (good, _pw) = write_instance("s3cret");
    let i = start(&good.0);
    eventually("ready", || ready(&i));
    assert_eq!(i.get("/a").unwrap(), (200, String::from("from-a")));
    let seen = i.revision();
    let (s, v) = i.admin(
        "PUT",
        &format!("/config/routes/b?revision={seen}"),
        r#"{"path": "/b", "upstream": "a"}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["applied"], true, "the watch delivers with the token: {v}");
    assert_eq!(i.get("/b").unwrap().0, 200);

    // Refused credentials do not start, like an invalid file.
    let (bad, _pw2) = write_instance("wrong");
    let e = ringgate::config::source::load(&bad.0)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("config.etcd_username:"), "{e}");
    assert!(e.contains("authentication failed"), "{e}");
}

/// `https://` endpoints with `etcd_ca_file`: the instance verifies etcd's
/// certificate against the private CA and reads its config over TLS.
#[test]
fn etcd_over_tls_with_a_private_ca() {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "ringgate etcd test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec![String::from("localhost")]).unwrap();
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let etcd = Etcd::start_with(Some((cert.pem(), key.serialize_pem())));
    let a = backend("from-a");
    push(&etcd, "/tls", &base_config(&a));
    let https = format!("https://127.0.0.1:{}", etcd.tls.as_ref().unwrap().0);
    let ca_file = TempFile(write("etcd-ca.pem", &ca_cert.pem()));
    let file = format!(
        "{}etcd_ca_file = \"{}\"\n",
        instance_file(&etcd, "/tls").replace(&etcd.url(), &https),
        ca_file.0.display()
    );
    let path = TempFile(write("tls.toml", &file));
    let cfg = ringgate::config::source::load(&path.0).expect("config");
    let handle = ringgate::runtime::Server::start_file(cfg, path.0.clone(), Default::default())
        .expect("start");
    let i = Instance {
        addr: handle.local_addrs()[0],
        admin: handle.admin_addr().unwrap(),
        _handle: handle,
        _file: TempFile(PathBuf::new()),
    };
    let (s, v) = i.admin("GET", "/readyz", "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(i.get("/a").unwrap(), (200, String::from("from-a")));
    let seen = i.revision();
    let (s, v) = i.admin(
        "PUT",
        &format!("/config/routes/b?revision={seen}"),
        r#"{"path": "/b", "upstream": "a"}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["applied"], true, "{v}");
}

/// `etcd_endpoints` are tried in turn: with the first one refusing
/// connections, the instance reads, watches and writes through the second.
#[test]
fn an_endpoint_that_refuses_is_skipped() {
    let etcd = Etcd::start();
    let a = backend("from-a");
    push(&etcd, "/multi", &base_config(&a));
    let dead = format!("http://{}", support::refused_addr());
    let file = instance_file(&etcd, "/multi").replace(
        &format!("[\"{}\"]", etcd.url()),
        &format!("[\"{dead}\", \"{}\"]", etcd.url()),
    );
    assert!(file.contains(&dead));
    let path = TempFile(write("multi.toml", &file));
    let cfg = ringgate::config::source::load(&path.0).expect("config");
    let handle = ringgate::runtime::Server::start_file(cfg, path.0.clone(), Default::default())
        .expect("start");
    let i = Instance {
        addr: handle.local_addrs()[0],
        admin: handle.admin_addr().unwrap(),
        _handle: handle,
        _file: TempFile(PathBuf::new()),
    };
    eventually("ready", || ready(&i));
    let written = etcd.put("/multi/routes/b", r#"{"path": "/b", "upstream": "a"}"#, 0);
    eventually("the watch delivers", || i.revision() == written);
    let (s, v) = i.admin(
        "PUT",
        &format!("/config/routes/c?revision={written}"),
        r#"{"path": "/c", "upstream": "a"}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(i.get("/c").unwrap().0, 200);
}

fn get_with_key(addr: SocketAddr, path: &str, key: &str) -> u16 {
    let mut c = Client::connect(addr);
    c.send(format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n\r\n"
    ));
    c.try_read_response().map_or(0, |r| r.status)
}

/// Consumers and upstreams written through the admin API: a consumer
/// added on one instance authenticates on both and one deleted is refused
/// on both; an upstream replaced on one instance sends both instances'
/// traffic to its new target.
#[test]
fn consumers_and_upstreams_written_through_the_admin_api() {
    let etcd = Etcd::start();
    let a = backend("from-a");
    let b = backend("from-b");
    let cfg = format!(
        "{}\n[auth.api_key]\nheader = \"X-API-Key\"\n\n[[consumers]]\nid = \"first\"\napi_key_sha256 = \"{}\"\n\n\
         [[routes]]\nname = \"private\"\npath = \"/private\"\nupstream = \"a\"\nauth = [\"api_key\"]\n",
        base_config(&a),
        support::sha_hex("key-1")
    );
    push(&etcd, "/cons", &cfg);
    let one = Instance::start(&etcd, "/cons");
    let two = Instance::start(&etcd, "/cons");
    eventually("both instances ready", || ready(&one) && ready(&two));
    for i in [&one, &two] {
        assert_eq!(get_with_key(i.addr, "/private", "key-1"), 200);
        assert_eq!(get_with_key(i.addr, "/private", "key-2"), 401);
    }

    let rev = one.revision();
    let body = json!({"api_key_sha256": support::sha_hex("key-2")}).to_string();
    let (s, v) = one.admin("PUT", "/config/consumers/second?revision=0", &body);
    assert_eq!(s, 200, "{v}");
    // An instance validates a change against the objects it runs: the
    // second may delete the first consumer once it runs the new one (before,
    // deleting it would leave no consumer with a key: a 400).
    let put = v["revision"].as_i64().unwrap();
    eventually("the second instance runs the new consumer", || {
        two.revision() >= put
    });
    let (s, v) = two.admin(
        "DELETE",
        &format!("/config/consumers/first?revision={rev}"),
        "",
    );
    assert_eq!(s, 200, "{v}");
    let latest = v["revision"].as_i64().unwrap();
    for i in [&one, &two] {
        eventually("both run the latest revision", || i.revision() == latest);
        assert_eq!(get_with_key(i.addr, "/private", "key-2"), 200);
        assert_eq!(get_with_key(i.addr, "/private", "key-1"), 401);
    }

    let body = json!({"targets": [b.target()]}).to_string();
    let (s, v) = two.admin(
        "PUT",
        &format!("/config/upstreams/a?revision={latest}"),
        &body,
    );
    assert_eq!(s, 200, "{v}");
    for i in [&one, &two] {
        eventually("traffic moves to the new target", || {
            i.get("/a").is_ok_and(|(_, body)| body == "from-b")
        });
    }
}
