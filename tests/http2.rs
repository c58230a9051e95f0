//! HTTP/2 downstream over real sockets: h2c with prior knowledge on the
//! plain listener, ALPN `h2` on TLS listeners, the `[server.http2]`
//! settings, the request phases over HTTP/2 (routing, auth, rate limits,
//! access log, request ids), streamed uploads and downloads, drain, and
//! the known HTTP/2 attacks.
//!
//! Clients: curl (`--http2-prior-knowledge`, `--http2` over TLS), h2load
//! (Debian `nghttp2-client`), and two Python scripts in tests/h2/:
//! `client.py` (httpx) and `attacks.py` (hand-made frames; it prints one
//! line of JSON per run, asserted on here). They need the Python packages
//! `h2` and `httpx` (`pip install h2 'httpx[http2]'`). A missing tool fails
//! the test with the package to install; nothing is skipped.
//!
//! Memory is measured on the `ringgate` binary run as a separate process
//! (one worker), from /proc/PID/status: VmRSS before an attack and VmHWM
//! (the peak, reset through /proc/PID/clear_refs first) during it.

mod support;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

const H2_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2");

/// Fails (never skips) when `tool` cannot be run, naming what to install.
fn need_tool(tool: &str, install: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "`{tool}` is needed by this test: install {install}");
}

/// Runs `python3 tests/h2/{script} args…` and parses the JSON line it
/// prints. A missing package makes the script exit 2 with its name.
fn py(script: &str, args: &[&str]) -> Value {
    need_tool("python3", "the Debian package python3");
    let out = Command::new("python3")
        .arg(format!("{H2_DIR}/{script}"))
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}): {stderr}\n(the scripts need `pip install h2 'httpx[http2]'`)\nstdout: {stdout}",
        out.status
    );
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{script} {args:?}: not JSON ({e}): {stdout}\nstderr: {stderr}"))
}

fn attack(cmd: &str, addr: SocketAddr, extra: &[&str]) -> Value {
    let a = addr.to_string();
    let mut args = vec![cmd, a.as_str()];
    args.extend_from_slice(extra);
    let v = py("attacks.py", &args);
    eprintln!("attacks.py {cmd}: {v}");
    v
}

/// Runs curl; returns (exit code, stdout, stderr).
fn curl(args: &[&str]) -> (i32, Vec<u8>, String) {
    need_tool("curl", "the Debian package curl (built with nghttp2)");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `curl --http2-prior-knowledge -D - url`: the response head (lines) and
/// the body.
fn curl_h2(url: &str, extra: &[&str]) -> (Vec<String>, Vec<u8>) {
    let mut args = vec!["--http2-prior-knowledge", "-D", "-"];
    args.extend_from_slice(extra);
    args.push(url);
    let (code, out, err) = curl(&args);
    assert_eq!(code, 0, "curl {args:?}: {err}");
    split_head(&out)
}

/// Splits `-D -` output (one response: no 1xx here) into header lines and
/// the body.
fn split_head(out: &[u8]) -> (Vec<String>, Vec<u8>) {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(out)));
    let head = String::from_utf8_lossy(&out[..end])
        .lines()
        .map(String::from)
        .collect();
    (head, out[end + 4..].to_vec())
}

/// The value of header `name` in `-D -` lines (names are lower case in
/// HTTP/2).
fn head_value<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

// ---------------------------------------------------------------------------
// Configs and processes
// ---------------------------------------------------------------------------

static DIRS: AtomicUsize = AtomicUsize::new(0);

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ringgate-h2-{}-{}-{name}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A config with `workers`, extra `[server]` lines, a `[server.http2]`
/// table (when `h2` is not empty), upstream `b` at `backend`, and `rest`
/// (routes and other tables; a catch-all route when empty).
fn config(workers: usize, server: &str, h2: &str, backend: SocketAddr, rest: &str) -> String {
    let h2 = if h2.is_empty() {
        String::new()
    } else {
        format!("\n[server.http2]\n{h2}\n")
    };
    let rest = if rest.is_empty() {
        "[[routes]]\nname = \"all\"\npath = \"/{*rest}\"\nupstream = \"b\"\n"
    } else {
        rest
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\npin = false\ndrain_timeout_ms = 3000\n{server}\n{h2}\n[upstreams.b]\ntargets = [\"{backend}\"]\n\n{rest}"
    )
}

/// The binary, run as its own process; killed and reaped when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
    _dir: PathBuf,
}

impl Proc {
    fn start(name: &str, toml: &str) -> Proc {
        let dir = temp_dir(name);
        let path = dir.join("ringgate.toml");
        std::fs::write(&path, toml).unwrap();
        let (child, addr, _log) = spawn_run(&path);
        Proc {
            child,
            addr,
            _dir: dir,
        }
    }

    fn status_kib(&self, field: &str) -> u64 {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("ringgate is still running");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Resets the peak (VmHWM) to the current RSS (Linux 4.0+), so that
    /// the peak read later is the attack's.
    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    fn peak_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// A warm worker (a few requests over both protocols), then its RSS in
/// KiB with the peak reset.
fn baseline(p: &Proc) -> u64 {
    for _ in 0..3 {
        assert_eq!(h1_status(p.addr, "/warm"), 200);
    }
    let v = attack("get", p.addr, &["--n", "5", "--path", "/warm"]);
    assert!(
        v["responses"]
            .as_array()
            .is_some_and(|r| r.len() == 5 && r.iter().all(|x| x["status"] == 200)),
        "warm-up over HTTP/2: {v}"
    );
    thread::sleep(Duration::from_millis(300));
    p.reset_peak();
    p.rss_kib()
}

/// Asserts the peak RSS grew by less than `mib` MiB over `before` KiB.
fn assert_peak_below(p: &Proc, before: u64, mib: u64, what: &str) {
    let peak = p.peak_kib();
    let grew = peak.saturating_sub(before);
    eprintln!("{what}: RSS {before} KiB before, peak {peak} KiB (+{grew} KiB)");
    assert!(
        grew < mib * 1024,
        "{what}: the worker's memory grew by {grew} KiB (peak {peak} KiB, {before} KiB before), bound {mib} MiB"
    );
}

/// One HTTP/1.1 GET on a new connection; its status.
fn h1_status(addr: SocketAddr, path: &str) -> u16 {
    let mut c = Client::connect(addr);
    c.request(format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ))
    .status
}

/// One HTTP/2 GET on a new connection: the worker is alive and speaks
/// HTTP/2 after an attack.
fn assert_h2_alive(addr: SocketAddr) {
    let v = attack("get", addr, &["--path", "/after"]);
    assert_eq!(
        v["responses"][0]["status"], 200,
        "a fresh HTTP/2 connection after the attack: {v}"
    );
    assert_eq!(h1_status(addr, "/after"), 200, "HTTP/1.1 after the attack");
}

fn goaway_or_closed(v: &Value) -> bool {
    !v["goaway"].is_null() || v["closed"] == true
}

// ---------------------------------------------------------------------------
// A backend for large responses (the mock would copy the body per request)
// ---------------------------------------------------------------------------

/// HTTP/1.1 backend answering requests for `/big…` with `size` bytes (a
/// repeating pattern, Content-Length) and any other with 5 bytes, one
/// thread per connection; counts requests and bytes written.
struct BigBackend {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    written: Arc<AtomicU64>,
}

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

impl BigBackend {
    fn start(size: usize) -> BigBackend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (rq, wr) = (requests.clone(), written.clone());
        thread::spawn(move || {
            let chunk: Arc<Vec<u8>> = Arc::new((0..251 * 256).map(pattern).collect());
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let (rq, wr, chunk) = (rq.clone(), wr.clone(), chunk.clone());
                thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut t = [0u8; 8192];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut t) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&t[..n]),
                            }
                        }
                        let p = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                        let big = buf
                            .split(|&b| b == b' ')
                            .nth(1)
                            .is_some_and(|t| t.starts_with(b"/big"));
                        buf.drain(..p + 4);
                        rq.fetch_add(1, Ordering::SeqCst);
                        let size = if big { size } else { 5 };
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
                        );
                        if s.write_all(head.as_bytes()).is_err() {
                            return;
                        }
                        let mut left = size;
                        while left > 0 {
                            let n = left.min(chunk.len());
                            if s.write_all(&chunk[..n]).is_err() {
                                return;
                            }
                            wr.fetch_add(n as u64, Ordering::Relaxed);
                            left -= n;
                        }
                    }
                });
            }
        });
        BigBackend {
            addr,
            requests,
            written,
        }
    }
}

fn expected_pattern(size: usize) -> Vec<u8> {
    // The backend writes its 251*256-byte chunk over and over.
    let chunk: Vec<u8> = (0..251 * 256).map(pattern).collect();
    (0..size).map(|i| chunk[i % chunk.len()]).collect()
}

// ---------------------------------------------------------------------------
// Certificates (as tests/tls.rs makes them)
// ---------------------------------------------------------------------------

struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA and a server certificate for `localhost` / 127.0.0.1 signed
    /// by it: ca.pem, server.pem, server.key.
    fn new() -> Pki {
        let dir = temp_dir("pki");
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "h2 test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "localhost");
        let c = p.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join("server.pem"), c.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).to_string_lossy().into_owned()
    }

    /// A `[[server.tls]]` table on an ephemeral port.
    /// The certificate is also the default one, for clients that send no
    /// SNI (h2load to 127.0.0.1).
    fn listener(&self) -> String {
        format!(
            "\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"{0}\", key = \"{1}\" }}]\ndefault_cert = \"{0}\"\n",
            self.path("server.pem"),
            self.path("server.key")
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Functional: h2c with prior knowledge
// ---------------------------------------------------------------------------

/// A GET over h2c reaches the backend as an ordinary HTTP/1.1 request
/// (Host from :authority, path and query as sent, client headers kept, a
/// traceparent and the request id added); the answer comes back as
/// HTTP/2 with the request id and without hop-by-hop headers.
#[test]
fn prior_knowledge_get_reaches_the_backend_as_http11() {
    let up = MockUpstream::builder()
        .header("X-Custom", "yes")
        .header("Connection", "keep-alive")
        .header("Keep-Alive", "timeout=5")
        .respond(200, "hello over h2")
        .start();
    let gw = Gateway::start(&config(2, "", "", up.addr, ""));
    let url = format!("http://{}/p/a?x=1&y=two", gw.addr);
    let (head, body) = curl_h2(&url, &["-H", "X-Client: c1"]);
    assert!(head[0].starts_with("HTTP/2 200"), "{head:?}");
    assert_eq!(body, b"hello over h2");
    assert_eq!(head_value(&head, "x-custom"), Some("yes"), "{head:?}");
    let rid = head_value(&head, "x-request-id").expect("x-request-id on the HTTP/2 response");
    assert!(!rid.is_empty());
    for hop in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
        assert!(
            head_value(&head, hop).is_none(),
            "{hop} forwarded: {head:?}"
        );
    }

    assert_eq!(up.hits(), 1);
    let seen = up.last();
    assert_eq!(
        seen.minor,
        1,
        "backend saw HTTP/1.{}: {}",
        seen.minor,
        seen.head_str()
    );
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/p/a?x=1&y=two");
    assert_eq!(
        seen.header_all("host"),
        [gw.addr.to_string()],
        "{}",
        seen.head_str()
    );
    assert_eq!(seen.header("x-client"), Some("c1"));
    assert_eq!(seen.header_all("x-request-id"), [rid]);
    assert!(seen.has_header("traceparent"), "{}", seen.head_str());
    assert!(
        !seen.head_str().contains("\n:"),
        "pseudo-headers leaked upstream: {}",
        seen.head_str()
    );
    // The same gateway still speaks HTTP/1.1 on the same listener.
    assert_eq!(h1_status(gw.addr, "/h1"), 200);
}

/// A cached route serves HTTP/2 clients: the miss is stored from the
/// answer as the stream carried it, and hits (and HTTP/1.1 clients) get
/// the same fields and body.
#[test]
fn cached_route_answers_http2_from_the_cache() {
    let up = MockUpstream::builder()
        .header("Cache-Control", "max-age=60")
        .header("Content-Type", "text/plain")
        .respond(200, "cached over h2")
        .start();
    let route = "[[routes]]\nname = \"all\"\npath = \"/{*rest}\"\nupstream = \"b\"\ncache = { ttl_s = 30 }\n";
    let gw = Gateway::start(&config(1, "", "", up.addr, route));
    let url = format!("http://{}/c", gw.addr);
    let (head, body) = curl_h2(&url, &[]);
    assert!(head[0].starts_with("HTTP/2 200"), "{head:?}");
    assert_eq!(head_value(&head, "x-cache"), Some("MISS"), "{head:?}");
    assert_eq!(body, b"cached over h2");
    let (head, body) = curl_h2(&url, &[]);
    assert!(head[0].starts_with("HTTP/2 200"), "{head:?}");
    assert_eq!(head_value(&head, "x-cache"), Some("HIT"), "{head:?}");
    assert_eq!(head_value(&head, "content-type"), Some("text/plain"));
    assert_eq!(body, b"cached over h2");
    // The key is the host and target, whatever the protocol.
    let mut c = gw.client();
    let r = c.request(format!("GET /c HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr));
    assert_eq!(
        (r.text().as_str(), r.header("x-cache")),
        ("cached over h2", Some("HIT"))
    );
    assert_eq!(up.hits(), 1);
}

/// A chunked backend response goes back as HTTP/2 DATA, intact, without
/// Transfer-Encoding.
#[test]
fn chunked_backend_response_goes_back_without_transfer_encoding() {
    let up = MockUpstream::builder()
        .chunked(&["first,", "second,", "third"], &[])
        .start();
    let gw = Gateway::start(&config(1, "", "", up.addr, ""));
    let (head, body) = curl_h2(&format!("http://{}/chunks", gw.addr), &[]);
    assert!(head[0].starts_with("HTTP/2 200"), "{head:?}");
    assert_eq!(body, b"first,second,third");
    assert!(head_value(&head, "transfer-encoding").is_none(), "{head:?}");
}

/// A chunked backend answer's trailer fields named in
/// `server.forward_trailers` reach an HTTP/2 client as a trailing HEADERS
/// block after the DATA; the others are dropped.
#[test]
fn chunked_backend_trailers_go_back_as_a_trailer_block() {
    let up = MockUpstream::builder()
        .chunked(
            &["first,", "second"],
            &[("x-checksum", "abc123"), ("x-secret", "no")],
        )
        .start();
    let gw = Gateway::start(&config(
        1,
        "forward_trailers = [\"x-checksum\"]",
        "",
        up.addr,
        "",
    ));
    let v = attack("get", gw.addr, &["--path", "/trailers"]);
    let r = &v["responses"][0];
    assert_eq!(r["status"], 200, "{v}");
    assert_eq!(r["body"], "first,second", "{v}");
    let fields: Vec<(String, String)> = r["headers"]
        .as_array()
        .expect("header list")
        .iter()
        .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
        .collect();
    assert!(
        fields.contains(&("x-checksum".into(), "abc123".into())),
        "the allowed trailer is missing: {fields:?}"
    );
    assert!(
        !fields.iter().any(|(n, _)| n == "x-secret"),
        "a trailer not named in forward_trailers went through: {fields:?}"
    );
    assert!(
        !fields.iter().any(|(n, _)| n == "transfer-encoding"),
        "{fields:?}"
    );
}

/// The server's SETTINGS and connection window follow `[server.http2]`:
/// the defaults first, then every key set.
#[test]
fn settings_follow_the_config() {
    let up = MockUpstream::builder().start();
    let gw = Gateway::start(&config(1, "", "", up.addr, ""));
    let v = attack("settings", gw.addr, &[]);
    assert_eq!(v["handshake"], true, "{v}");
    assert_eq!(v["max_concurrent_streams"], 128, "{v}");
    assert_eq!(v["initial_window_size"], 65535, "{v}");
    assert_eq!(v["max_frame_size"], 16384, "{v}");
    assert!(
        v["max_header_list_size"].is_null() || v["max_header_list_size"] == 65536,
        "{v}"
    );
    assert_eq!(v["connection_window"], 1_048_576, "{v}");

    let gw = Gateway::start(&config(
        1,
        "",
        "max_concurrent_streams = 7\ninitial_window_bytes = 131072\nconnection_window_bytes = 4194304\nmax_header_list_bytes = 8192\nmax_frame_bytes = 32768",
        up.addr,
        "",
    ));
    let v = attack("settings", gw.addr, &[]);
    assert_eq!(v["max_concurrent_streams"], 7, "{v}");
    assert_eq!(v["initial_window_size"], 131072, "{v}");
    assert_eq!(v["max_frame_size"], 32768, "{v}");
    assert!(
        v["max_header_list_size"].is_null() || v["max_header_list_size"] == 8192,
        "{v}"
    );
    assert_eq!(v["connection_window"], 4_194_304, "{v}");
}

/// `enabled = false`: the preface gets no HTTP/2 SETTINGS on the plain
/// listener and TLS offers only http/1.1; HTTP/1.1 is served as before.
#[test]
fn disabled_http2_is_not_spoken() {
    let up = MockUpstream::builder().respond(200, "h1 only").start();
    let pki = Pki::new();
    let gw = Gateway::start(&(config(1, "", "enabled = false", up.addr, "") + &pki.listener()));
    let v = attack("probe", gw.addr, &[]);
    assert_eq!(v["http2"], false, "{v}");
    assert_eq!(h1_status(gw.addr, "/x"), 200);

    let tls = gw.handle.tls_addrs()[0];
    let url = format!("https://localhost:{}/x", tls.port());
    let resolve = format!("localhost:{}:127.0.0.1", tls.port());
    let ca = pki.path("ca.pem");
    let (code, out, err) = curl(&[
        "-v",
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-D",
        "-",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    let (head, body) = split_head(&out);
    assert!(head[0].starts_with("HTTP/1.1 200"), "{head:?}\n{err}");
    assert_eq!(body, b"h1 only");
    assert!(!err.contains("accepted h2"), "{err}");
    assert_eq!(up.hits(), 2);
}

/// The default: the preface on the plain listener is answered with an
/// HTTP/2 SETTINGS frame.
#[test]
fn preface_is_answered_with_settings() {
    let up = MockUpstream::builder().start();
    let gw = Gateway::start(&config(1, "", "", up.addr, ""));
    let v = attack("probe", gw.addr, &[]);
    assert_eq!(v["http2"], true, "{v}");
}

/// TLS: ALPN offers h2 and http/1.1; curl --http2 gets h2 (and h2load
/// over TLS runs every request on it), curl --http1.1 gets http/1.1; the
/// backend sees HTTP/1.1 either way with the :authority as Host.
#[test]
fn tls_alpn_negotiates_h2_and_http11() {
    let up = MockUpstream::builder().respond(200, "over tls").start();
    let pki = Pki::new();
    let gw = Gateway::start(&(config(2, "", "", up.addr, "") + &pki.listener()));
    let tls = gw.handle.tls_addrs()[0];
    let url = format!("https://localhost:{}/secure?q=1", tls.port());
    let resolve = format!("localhost:{}:127.0.0.1", tls.port());
    let ca = pki.path("ca.pem");

    let (code, out, err) = curl(&[
        "-v",
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-D",
        "-",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("ALPN: server accepted h2") || err.contains("ALPN, server accepted to use h2"),
        "curl -v: {err}"
    );
    let (head, body) = split_head(&out);
    assert!(head[0].starts_with("HTTP/2 200"), "{head:?}");
    assert!(head_value(&head, "x-request-id").is_some(), "{head:?}");
    assert_eq!(body, b"over tls");
    let seen = up.last();
    assert_eq!(seen.minor, 1);
    assert_eq!(seen.target, "/secure?q=1");
    assert_eq!(
        seen.header_all("host"),
        [format!("localhost:{}", tls.port())]
    );

    let (code, out, err) = curl(&[
        "-v",
        "--http1.1",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-D",
        "-",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("ALPN: server accepted http/1.1")
            || err.contains("ALPN, server accepted to use http/1.1"),
        "curl -v: {err}"
    );
    let (head, _) = split_head(&out);
    assert!(head[0].starts_with("HTTP/1.1 200"), "{head:?}");

    need_tool("h2load", "the Debian package nghttp2-client");
    let before = up.hits();
    let out = Command::new("h2load")
        .args(["-n", "400", "-c", "2", "-m", "10"])
        .arg(format!("https://127.0.0.1:{}/load", tls.port()))
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert_h2load_all_ok(&text, 400);
    assert_eq!(up.hits() - before, 400);
}

/// h2load's summary says all `n` requests succeeded.
fn assert_h2load_all_ok(text: &str, n: usize) {
    let line = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no requests: line in h2load output:\n{text}"));
    let want = format!(
        "requests: {n} total, {n} started, {n} done, {n} succeeded, 0 failed, 0 errored, 0 timeout"
    );
    assert_eq!(line.trim(), want, "h2load:\n{text}");
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or("");
    assert!(
        codes.starts_with(&format!("status codes: {n} 2xx")),
        "h2load:\n{text}"
    );
}

/// h2load over h2c: 2,000 requests, 4 connections, 10 streams each in
/// flight; all succeed and the backend answers each exactly once.
#[test]
fn h2load_h2c_all_succeed() {
    need_tool("h2load", "the Debian package nghttp2-client");
    let up = MockUpstream::builder().respond(200, "loaded").start();
    let gw = Gateway::start(&config(2, "", "", up.addr, ""));
    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "10"])
        .arg(format!("http://{}/load", gw.addr))
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Application protocol: h2c"), "{text}");
    assert_h2load_all_ok(&text, 2000);
    assert_eq!(up.hits(), 2000);
    assert!(
        up.requests()
            .iter()
            .all(|r| r.minor == 1 && r.target == "/load")
    );
}

/// 200 GETs at once on one connection (httpx, multiplexed; more than
/// max_concurrent_streams, so the client queues some): each answered
/// with its own request's echo and its own request id.
#[test]
fn many_concurrent_streams_on_one_connection() {
    let up = MockUpstream::builder().echo().start();
    let gw = Gateway::start(&config(2, "", "", up.addr, ""));
    let v = py(
        "client.py",
        &["concurrent", &gw.addr.to_string(), "--n", "200"],
    );
    assert_eq!(v["ok"], 200, "{v}");
    assert_eq!(v["versions"], serde_json::json!(["HTTP/2"]), "{v}");
    assert_eq!(v["distinct_request_ids"], 200, "{v}");
    assert_eq!(up.hits(), 200);
}

/// A body of 6 MiB uploaded over h2c reaches the backend intact, streamed
/// with its Content-Length when the client gave one, chunked when not.
#[test]
fn upload_streams_the_body_with_and_without_content_length() {
    const N: usize = 6 * 1024 * 1024;
    let up = MockUpstream::builder().respond(200, "stored").start();
    let gw = Gateway::start(&config(2, "", "", up.addr, ""));
    let dir = temp_dir("upload");
    let file = dir.join("body.bin");
    let data: Vec<u8> = (0..N).map(|i| ((i * 7) ^ (i >> 11)) as u8).collect();
    std::fs::write(&file, &data).unwrap();

    // With Content-Length.
    let at = format!("@{}", file.display());
    let (head, body) = curl_h2(
        &format!("http://{}/up/cl", gw.addr),
        &[
            "--data-binary",
            &at,
            "-H",
            "Content-Type: application/octet-stream",
        ],
    );
    assert!(head[0].starts_with("HTTP/2 200"), "{head:?}");
    assert_eq!(body, b"stored");
    let seen = up.last();
    assert_eq!((seen.method.as_str(), seen.minor), ("POST", 1));
    assert_eq!(seen.target, "/up/cl");
    assert_eq!(seen.header("content-length"), Some(N.to_string().as_str()));
    assert!(
        seen.body == data,
        "body differs ({} bytes received)",
        seen.body.len()
    );

    // Without: curl -T - sends no content-length over HTTP/2.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            "Expect:",
            "-T",
            "-",
            "-D",
            "-",
        ])
        .arg(format!("http://{}/up/stream", gw.addr))
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = split_head(&out.stdout);
    assert!(head[0].starts_with("HTTP/2 200"), "{head:?}");
    assert_eq!(body, b"stored");
    let seen = up.last();
    assert_eq!(seen.target, "/up/stream");
    assert!(!seen.has_header("content-length"), "{}", seen.head_str());
    assert_eq!(
        seen.header("transfer-encoding")
            .map(str::to_ascii_lowercase),
        Some("chunked".to_string()),
        "{}",
        seen.head_str()
    );
    assert!(
        seen.body == data,
        "body differs ({} bytes received)",
        seen.body.len()
    );
    assert_eq!(up.requests().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An 8 MiB download, with Content-Length and chunked, arrives intact.
#[test]
fn large_download_arrives_intact() {
    const N: usize = 8 * 1024 * 1024;
    let big = BigBackend::start(N);
    let gw = Gateway::start(&config(2, "", "", big.addr, ""));
    let want = expected_pattern(N);
    let (head, body) = curl_h2(&format!("http://{}/big", gw.addr), &[]);
    assert!(head[0].starts_with("HTTP/2 200"), "{head:?}");
    assert_eq!(
        head_value(&head, "content-length"),
        Some(N.to_string().as_str())
    );
    assert_eq!(body.len(), N);
    assert!(body == want, "the body differs from what the backend sent");

    let chunked: Vec<u8> = {
        let mut d = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for c in want.chunks(100_000) {
            d.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            d.extend_from_slice(c);
            d.extend_from_slice(b"\r\n");
        }
        d.extend_from_slice(b"0\r\n\r\n");
        d
    };
    let up = MockUpstream::builder()
        .handler(move |_| Reply::Bytes {
            data: chunked.clone(),
            close: false,
        })
        .start();
    let gw = Gateway::start(&config(2, "", "", up.addr, ""));
    let (head, body) = curl_h2(&format!("http://{}/chunked", gw.addr), &[]);
    assert!(head[0].starts_with("HTTP/2 200"), "{head:?}");
    assert_eq!(body.len(), N);
    assert!(
        body == want,
        "the chunked body differs from what the backend sent"
    );
}

// ---------------------------------------------------------------------------
// The request phases over HTTP/2
// ---------------------------------------------------------------------------

/// Parses one response of client.py `get`.
fn json_error(r: &Value, status: u64) {
    assert_eq!(r["status"], status, "{r}");
    assert_eq!(r["http_version"], "HTTP/2", "{r}");
    assert_eq!(r["headers"]["content-type"][0], "application/json", "{r}");
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {r}"));
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    let rid = body["request_id"].as_str().unwrap_or("");
    assert!(!rid.is_empty(), "{body}");
    assert_eq!(r["headers"]["x-request-id"][0], rid, "{r}");
}

/// 404 (no route), 401 (route with api_key auth, no key) and 429 (a
/// limit of 2 per hour) are the gateway's JSON errors over HTTP/2; the
/// admitted requests reach the backend and nothing else does.
#[test]
fn errors_are_json_over_http2() {
    let up = MockUpstream::builder().respond(200, "admitted").start();
    let rest = format!(
        r#"
[auth.api_key]
header = "X-API-Key"

[[consumers]]
id = "h2-client"
api_key_sha256 = "{}"

[rate_limits.hourly]
algorithm = "token_bucket"
limit = 1
window_s = 3600
burst = 2

[[routes]]
name = "key"
path = "/key"
upstream = "b"
auth = ["api_key"]

[[routes]]
name = "limited"
path = "/limited"
upstream = "b"
rate_limit = ["hourly"]
"#,
        sha_hex("h2-secret-key")
    );
    let gw = Gateway::start(&config(1, "", "", up.addr, &rest));
    let a = gw.addr.to_string();

    let v = py("client.py", &["get", &a, "/nothing/here"]);
    json_error(&v["responses"][0], 404);

    let v = py("client.py", &["get", &a, "/key"]);
    json_error(&v["responses"][0], 401);
    let v = py(
        "client.py",
        &["get", &a, "/key", "--header", "X-API-Key: h2-secret-key"],
    );
    assert_eq!(v["responses"][0]["status"], 200, "{v}");
    assert_eq!(v["responses"][0]["body"], "admitted");
    assert_eq!(up.last().header("x-consumer-id"), Some("h2-client"));

    let v = py("client.py", &["get", &a, "/limited", "--n", "3"]);
    let r = v["responses"].as_array().unwrap();
    assert_eq!(
        (r[0]["status"].as_u64(), r[1]["status"].as_u64()),
        (Some(200), Some(200)),
        "{v}"
    );
    json_error(&r[2], 429);
    assert!(r[2]["headers"]["retry-after"][0].as_str().is_some(), "{v}");
    assert_eq!(up.hits(), 3);
}

/// The access log names the protocol: `HTTP/2.0` in the request line of
/// the combined format for an h2c request, `HTTP/1.1` for an HTTP/1.1 one.
#[test]
fn access_log_names_http2() {
    let dir = temp_dir("log");
    let path = dir.join("access.log");
    let up = MockUpstream::builder().respond(200, "logged").start();
    let mut gw = Gateway::start(&config(
        1,
        &format!(
            "\n[log]\naccess = \"combined\"\npath = \"{}\"\n",
            path.display()
        ),
        "",
        up.addr,
        "",
    ));
    let (head, _) = curl_h2(&format!("http://{}/items/7?x=1", gw.addr), &[]);
    assert!(head[0].starts_with("HTTP/2 200"), "{head:?}");
    assert_eq!(h1_status(gw.addr, "/items/8"), 200);
    gw.shutdown();
    let lines = file_lines(&path, 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let h2 = lines
        .iter()
        .find(|l| l.contains("/items/7"))
        .expect("the h2 line");
    assert!(h2.contains("\"GET /items/7?x=1 HTTP/2.0\" 200 "), "{h2}");
    let h1 = lines
        .iter()
        .find(|l| l.contains("/items/8"))
        .expect("the h1 line");
    assert!(h1.contains("\"GET /items/8 HTTP/1.1\" 200 "), "{h1}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The access log's byte count of an answer to an HTTP/2 stream is that of
/// its HTTP/1.1 form, as for an HTTP/1.1 client: the stream takes the head
/// as fields, not as text, and the count must not change with that
/// (plain and chunked bodies).
#[test]
fn access_log_counts_http2_answers_as_their_http11_form() {
    let dir = temp_dir("log-bytes");
    let path = dir.join("access.log");
    let up = MockUpstream::builder()
        .header("X-Custom", "yes")
        .respond(200, "counted body")
        .start();
    let chunked = MockUpstream::builder()
        .chunked(&["first,", "second"], &[])
        .start();
    let mut gw = Gateway::start(&config(
        1,
        &format!(
            "\n[log]\naccess = \"combined\"\npath = \"{}\"\n",
            path.display()
        ),
        "",
        up.addr,
        &format!(
            "[upstreams.chunks]\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"chunks\"\npath = \"/chunks/{{*r}}\"\nupstream = \"chunks\"\n\n[[routes]]\nname = \"all\"\npath = \"/{{*rest}}\"\nupstream = \"b\"\n",
            chunked.addr
        ),
    ));
    for p in ["/plain/h2", "/chunks/h2"] {
        let (head, _) = curl_h2(&format!("http://{}{p}", gw.addr), &[]);
        assert!(head[0].starts_with("HTTP/2 200"), "{head:?}");
    }
    for p in ["/plain/h1", "/chunks/h1"] {
        let (code, _, err) = curl(&["-s", "--http1.1", &format!("http://{}{p}", gw.addr)]);
        assert_eq!(code, 0, "{err}");
    }
    gw.shutdown();
    let lines = file_lines(&path, 4);
    let bytes = |p: &str| -> u64 {
        let l = lines
            .iter()
            .find(|l| l.contains(p))
            .unwrap_or_else(|| panic!("no line for {p}: {lines:?}"));
        // ... "GET /p HTTP/x" 200 BYTES "referer" ...
        let after = &l[l.find("\" 200 ").expect("status 200") + 6..];
        after.split(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(bytes("/plain/h2"), bytes("/plain/h1"), "{lines:?}");
    assert_eq!(bytes("/chunks/h2"), bytes("/chunks/h1"), "{lines:?}");
    assert!(bytes("/plain/h2") > "counted body".len() as u64);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------

/// Shutdown while a slow stream is in flight: a GOAWAY (NO_ERROR) comes
/// before the stream ends, the stream completes with its whole body, a
/// stream opened after the final GOAWAY is not served, and the
/// connection then closes.
#[test]
fn shutdown_sends_goaway_and_the_in_flight_stream_completes() {
    let up = MockUpstream::builder()
        .latency(Duration::from_millis(1000))
        .respond(200, "slow but complete")
        .start();
    let mut gw = Gateway::start(&config(1, "", "", up.addr, ""));
    let addr = gw.addr;
    let script = thread::spawn(move || attack("drain", addr, &["--after", "--path", "/slow"]));
    assert!(
        up.wait_hits(1),
        "the slow request never reached the backend"
    );
    gw.shutdown();
    let v = script.join().unwrap();
    assert_eq!(v["goaways"][0][1], "NO_ERROR", "{v}");
    assert_eq!(v["goaway_before_end"], true, "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"], "slow but complete", "{v}");
    assert_eq!(v["closed"], true, "{v}");
    assert!(v["after_stream_status"].is_null(), "{v}");
    assert_eq!(
        up.hits(),
        1,
        "a stream opened after GOAWAY reached the backend"
    );
}

/// A reload that changes `[server.http2]` ends open HTTP/2 connections
/// with a graceful GOAWAY (the stream in flight completes), so clients
/// reconnect to the new settings; a reload that leaves them alone does not.
#[test]
fn a_reload_changing_http2_settings_sends_goaway() {
    let up = MockUpstream::builder()
        .latency(Duration::from_millis(1000))
        .respond(200, "slow but complete")
        .start();
    let dir = temp_dir("reload");
    let path = dir.join("ringgate.toml");
    let text = config(1, "", "max_concurrent_streams = 100", up.addr, "");
    std::fs::write(&path, &text).unwrap();
    let cfg = ringgate::config::Config::load(&path).expect("config");
    let handle = ringgate::runtime::Server::start_file(cfg, path.clone(), Default::default())
        .expect("start");
    let addr = handle.local_addrs()[0];

    // A route-only change: the connection stays (no GOAWAY).
    let script = thread::spawn(move || attack("drain", addr, &["--path", "/slow", "--wait", "3"]));
    assert!(up.wait_hits(1));
    std::fs::write(
        &path,
        text.clone() + "\n[[routes]]\npath = \"/added\"\nupstream = \"b\"\n",
    )
    .unwrap();
    handle.reload().expect("reload");
    let v = script.join().unwrap();
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["goaways"].as_array().is_none_or(|g| g.is_empty()), "{v}");

    // New settings: GOAWAY NO_ERROR before the stream in flight ends.
    let script = thread::spawn(move || attack("drain", addr, &["--path", "/slow"]));
    assert!(up.wait_hits(2));
    std::fs::write(
        &path,
        text.replace(
            "max_concurrent_streams = 100",
            "max_concurrent_streams = 50",
        ),
    )
    .unwrap();
    handle.reload().expect("reload");
    let v = script.join().unwrap();
    assert_eq!(v["goaways"][0][1], "NO_ERROR", "{v}");
    assert_eq!(v["goaway_before_end"], true, "{v}");
    assert_eq!(
        (v["status"].as_u64(), v["body"].as_str()),
        (Some(200), Some("slow but complete")),
        "{v}"
    );
    let s = attack("settings", addr, &[]);
    assert_eq!(s["max_concurrent_streams"], 50, "{s}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same over the binary: SIGTERM drains an HTTP/2 connection with a
/// stream in flight; the process exits 0.
#[test]
fn sigterm_drains_http2_connections() {
    let up = MockUpstream::builder()
        .latency(Duration::from_millis(1000))
        .respond(200, "slow but complete")
        .start();
    let mut p = Proc::start("sigterm", &config(1, "", "", up.addr, ""));
    let addr = p.addr;
    let script = thread::spawn(move || attack("drain", addr, &["--path", "/slow"]));
    assert!(
        up.wait_hits(1),
        "the slow request never reached the backend"
    );
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) }, 0);
    let v = script.join().unwrap();
    assert_eq!(v["goaways"][0][1], "NO_ERROR", "{v}");
    assert_eq!(v["goaway_before_end"], true, "{v}");
    assert_eq!(
        (v["status"].as_u64(), v["body"].as_str()),
        (Some(200), Some("slow but complete")),
        "{v}"
    );
    let end = Instant::now() + Duration::from_secs(10);
    while p.alive() && Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
    }
    let st = p
        .child
        .try_wait()
        .unwrap()
        .expect("ringgate exits after SIGTERM");
    assert!(st.success(), "{st:?}");
}

/// An idle HTTP/2 connection is closed after `server.idle_timeout_ms`.
#[test]
fn idle_http2_connection_is_closed() {
    let up = MockUpstream::builder().start();
    let gw = Gateway::start(&config(1, "idle_timeout_ms = 300", "", up.addr, ""));
    let v = attack("idle", gw.addr, &["--wait", "10"]);
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["closed"], true, "{v}");
    if let Some(g) = v["goaway"].as_str() {
        assert_eq!(g, "NO_ERROR", "{v}");
    }
}

// ---------------------------------------------------------------------------
// Attacks
// ---------------------------------------------------------------------------

/// Rapid reset (CVE-2023-44487): HEADERS + RST_STREAM in a loop. The
/// connection gets GOAWAY ENHANCE_YOUR_CALM once the client cancelled more
/// than `max_client_resets` streams, and closes; the backend saw at most
/// the cancelled streams plus one window of concurrent ones, far fewer
/// than 20,000; the worker serves fresh connections. With the default
/// (200) and with a configured 20.
#[test]
fn rapid_reset_gets_goaway_and_bounded_backend_work() {
    for (h2, resets) in [("", 200u64), ("max_client_resets = 20", 20)] {
        let up = MockUpstream::builder().start();
        let gw = Gateway::start(&config(1, "", h2, up.addr, ""));
        let v = attack("rapid-reset", gw.addr, &["--streams", "20000"]);
        assert_eq!(v["goaway"], "ENHANCE_YOUR_CALM", "{v}");
        assert_eq!(v["closed"], true, "{v}");
        let sent = v["streams_sent"].as_u64().unwrap();
        assert!(sent < 20000, "all 20,000 streams were accepted: {v}");
        assert!(
            v["goaway_last_stream_id"].as_u64().unwrap() < 2 * (resets + 128) + 1,
            "GOAWAY's last stream id is past the resets allowed: {v}"
        );
        thread::sleep(Duration::from_millis(200));
        let hits = up.hits() as u64;
        assert!(
            hits <= resets + 128,
            "the backend saw {hits} requests for {sent} rapid-reset streams (max_client_resets {resets})"
        );
        assert_h2_alive(gw.addr);
    }
}

/// A backend whose answer to anything but `/after` is a head and part of
/// the body, the rest never coming: the stream stays in flight until the
/// client cancels it.
fn half_answering_backend() -> MockUpstream {
    MockUpstream::builder()
        .handler(|r| {
            let data = if r.target == "/after" {
                response_bytes(200, &[], b"after", false)
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial".to_vec()
            };
            Reply::Bytes { data, close: false }
        })
        .start()
}

/// `max_client_resets` counts streams the gateway accepted and the client
/// then cancelled (each cancelled once its response HEADERS came): with
/// the limit at 20, the 21st cancel gets GOAWAY ENHANCE_YOUR_CALM; with
/// the default (200), 150 such cancels leave the connection serving.
#[test]
fn max_client_resets_counts_cancelled_streams() {
    let up = half_answering_backend();
    let gw = Gateway::start(&config(1, "", "max_client_resets = 20", up.addr, ""));
    let v = attack(
        "cancel-after-headers",
        gw.addr,
        &["--streams", "100", "--path", "/held"],
    );
    assert_eq!(v["goaway"], "ENHANCE_YOUR_CALM", "{v}");
    let n = v["cancelled"].as_u64().unwrap();
    assert!(
        n > 20 && n <= 25,
        "GOAWAY after {n} cancels with max_client_resets = 20: {v}"
    );
    assert_h2_alive(gw.addr);

    let gw = Gateway::start(&config(1, "", "", up.addr, ""));
    let v = attack(
        "cancel-after-headers",
        gw.addr,
        &["--streams", "150", "--path", "/held", "--then-get"],
    );
    assert_eq!(v["cancelled"], 150, "{v}");
    assert!(
        v["goaway"].is_null(),
        "150 cancels under the default limit of 200: {v}"
    );
    assert_eq!(v["after_status"], 200, "{v}");
}

/// Cancels below `max_client_resets` are allowed however fast they come:
/// 150 streams each opened and cancelled at once (HEADERS and RST_STREAM
/// back to back), under the default limit of 200, leave the connection
/// open and serving.
#[test]
fn immediate_cancels_below_the_limit_keep_the_connection() {
    let up = MockUpstream::builder().start();
    let gw = Gateway::start(&config(1, "", "", up.addr, ""));
    let v = attack(
        "rapid-reset",
        gw.addr,
        &[
            "--streams",
            "150",
            "--batch",
            "10",
            "--then-get",
            "--after-path",
            "/after",
        ],
    );
    assert!(
        v["goaway"].is_null(),
        "GOAWAY after {} immediate cancels, under max_client_resets = 200: {v}",
        v["streams_sent"]
    );
    assert_eq!(v["after_status"], 200, "{v}");
}

/// CONTINUATION flood: a header block that never ends, in 16 KiB
/// CONTINUATION frames full of fields (the header list passes
/// max_header_list_bytes within a few frames), and in empty CONTINUATION
/// frames (CVE-2024-27316 / CVE-2024-30255): GOAWAY or close long before
/// 64 MiB, no request reaches the backend, the worker's memory stays
/// bounded and it serves fresh connections.
#[test]
fn continuation_flood_is_cut_short() {
    let up = MockUpstream::builder().start();
    let p = Proc::start("continuation", &config(1, "", "", up.addr, ""));
    let before = baseline(&p);
    let hits = up.hits();
    let v = attack("continuation-flood", p.addr, &[]);
    assert!(goaway_or_closed(&v), "{v}");
    assert_eq!(v["completed"], false, "all 64 MiB were taken: {v}");
    assert!(
        v["bytes_sent"].as_u64().unwrap() < 16 << 20,
        "{} bytes of one header block taken before the connection ended: {v}",
        v["bytes_sent"]
    );
    assert!(v["status"].is_null(), "{v}");
    let v = attack("continuation-flood", p.addr, &["--empty"]);
    assert!(goaway_or_closed(&v), "{v}");
    assert_eq!(
        v["completed"], false,
        "64 MiB of empty CONTINUATION frames taken: {v}"
    );
    assert_eq!(up.hits(), hits, "a request reached the backend");
    assert_peak_below(&p, before, 32, "CONTINUATION flood");
    assert_h2_alive(p.addr);
}

/// HPACK bomb: a 4.5 KB header block that decodes to 2 MB (a 4,000-byte
/// literal entered in the dynamic table, then referenced 500 times). The
/// stream gets 431, RST_STREAM or GOAWAY, never a 200; the backend sees
/// nothing; the worker serves fresh connections.
#[test]
fn hpack_bomb_is_refused() {
    let up = MockUpstream::builder().start();
    let gw = Gateway::start(&config(1, "", "", up.addr, ""));
    let gw2 = Gateway::start(&config(1, "", "max_header_list_bytes = 16384", up.addr, ""));
    // The default limit, then a smaller bomb under a smaller limit.
    let runs = [
        attack("hpack-bomb", gw.addr, &["--path", "/bomb"]),
        attack(
            "hpack-bomb",
            gw2.addr,
            &["--path", "/bomb", "--refs", "10", "--value-bytes", "2000"],
        ),
    ];
    for v in &runs {
        let refused = v["status"] == 431 || !v["rst"].is_null() || !v["goaway"].is_null();
        assert!(refused, "{v}");
        assert!(v["status"] != 200, "{v}");
        // When the connection survived, a small request on it is served.
        assert!(
            v["after_status"].is_null() || v["after_status"] == 200,
            "{v}"
        );
    }
    let after = runs.iter().filter(|v| v["after_status"] == 200).count();
    assert_eq!(
        up.hits(),
        after,
        "the bomb reached the backend: {:?}",
        up.requests()
    );
    assert!(up.requests().iter().all(|r| r.target == "/after-bomb"));
    assert_h2_alive(gw.addr);
}

/// SETTINGS and PING floods: 100,000 frames each without reading the
/// ACKs. The worker's memory stays bounded, and the connection either
/// went away (GOAWAY or close) or still answers a request; the worker
/// serves fresh connections.
#[test]
fn settings_and_ping_floods_keep_memory_bounded() {
    let up = MockUpstream::builder().start();
    let p = Proc::start("floods", &config(1, "", "", up.addr, ""));
    let before = baseline(&p);
    for cmd in ["settings-flood", "ping-flood"] {
        let v = attack(cmd, p.addr, &["--frames", "100000", "--hold", "1"]);
        assert!(
            goaway_or_closed(&v) || v["usable"] == true,
            "{cmd}: neither went away nor usable: {v}"
        );
        if let Some(g) = v["goaway"].as_str() {
            assert_ne!(g, "INTERNAL_ERROR", "{cmd}: {v}");
        }
        assert_peak_below(&p, before, 32, cmd);
        assert_h2_alive(p.addr);
    }
}

/// A window that never opens: SETTINGS_INITIAL_WINDOW_SIZE = 0 and no
/// WINDOW_UPDATE, 100 streams each asking for 20 MiB. No DATA is sent past
/// the window (none at all), the worker buffers a bounded amount (not the
/// 2 GiB the backends offer), and serves fresh connections. Then with the
/// default window and no WINDOW_UPDATE: at most the 65,535-byte connection
/// window arrives.
/// A stream whose client never opens its window is given up after
/// `idle_timeout_ms` (RST_STREAM), so it does not hold its backend
/// exchange for as long as the connection lives.
#[test]
fn a_stream_stalled_on_its_window_is_reset_after_the_idle_timeout() {
    let big = BigBackend::start(4 << 20);
    let gw = Gateway::start(&config(1, "idle_timeout_ms = 500", "", big.addr, ""));
    let v = attack(
        "window-stall",
        gw.addr,
        &["--streams", "5", "--window", "0", "--hold", "3"],
    );
    assert_eq!(v["data_bytes"], 0, "{v}");
    assert_eq!(v["rst_received"], 5, "every stalled stream is reset: {v}");
    assert_h2_alive(gw.addr);
}

#[test]
fn stalled_window_keeps_memory_bounded() {
    let big = BigBackend::start(20 << 20);
    let p = Proc::start("window", &config(1, "", "", big.addr, ""));
    let before = baseline(&p);
    let v = attack(
        "window-stall",
        p.addr,
        &["--streams", "100", "--window", "0", "--hold", "3"],
    );
    assert_eq!(v["data_bytes"], 0, "DATA sent into a zero window: {v}");
    assert!(
        v["goaway"].is_null() || v["goaway"] != "FLOW_CONTROL_ERROR",
        "{v}"
    );
    assert!(
        big.requests.load(Ordering::SeqCst) > 10,
        "the streams never reached the backend"
    );
    assert_peak_below(&p, before, 64, "100 stalled 20 MiB streams");
    eprintln!(
        "backends wrote {} MiB in all",
        big.written.load(Ordering::Relaxed) >> 20
    );

    let v = attack(
        "window-stall",
        p.addr,
        &["--streams", "20", "--window", "65535", "--hold", "2"],
    );
    let got = v["data_bytes"].as_u64().unwrap();
    assert!(
        got <= 65535,
        "{got} bytes of DATA past the connection window: {v}"
    );
    assert_peak_below(
        &p,
        before,
        64,
        "20 streams stalled on the connection window",
    );
    assert_h2_alive(p.addr);
}

/// Streams beyond the limit: with max_concurrent_streams = 8, ten more
/// streams opened while eight are unfinished are refused (RST_STREAM
/// REFUSED_STREAM or PROTOCOL_ERROR, or left out by a GOAWAY), none is
/// answered; the eight are answered once their bodies are sent, and only
/// they reach the backend.
#[test]
fn streams_beyond_the_limit_are_refused() {
    let up = MockUpstream::builder().respond(200, "ok").start();
    let gw = Gateway::start(&config(1, "", "max_concurrent_streams = 8", up.addr, ""));
    let v = attack("beyond-limit", gw.addr, &["--extra", "10", "--path", "/up"]);
    assert_eq!(v["limit"], 8, "{v}");
    let last_ok = v["goaway_last_stream_id"].as_u64();
    for (sid, code) in v["refused"].as_object().unwrap() {
        let sid: u64 = sid.parse().unwrap();
        let refused = matches!(code.as_str(), Some("REFUSED_STREAM" | "PROTOCOL_ERROR"));
        let left_out = last_ok.is_some_and(|l| l < sid);
        assert!(
            refused || left_out,
            "stream {sid} beyond the limit: {code}; {v}"
        );
    }
    assert_eq!(v["extra_answered"], 0, "{v}");
    assert_eq!(v["first_answered"], 8, "{v}");
    assert_eq!(up.requests().len(), 8, "requests at the backend");
    assert!(up.requests().iter().all(|r| r.body == b"x"));
}

/// Malformed frames and headers: each gets an RST_STREAM or GOAWAY with
/// the code RFC 9113 requires (PROTOCOL_ERROR; FRAME_SIZE_ERROR for an
/// oversized frame; for a SETTINGS frame of a bad length and a broken
/// header block, the RFC's FRAME_SIZE_ERROR and COMPRESSION_ERROR or the
/// PROTOCOL_ERROR of ringgate's contract), no malformed
/// request reaches the backend, and the worker serves fresh connections.
#[test]
fn malformed_input_gets_protocol_errors() {
    let up = MockUpstream::builder().start();
    let gw = Gateway::start(&config(1, "", "", up.addr, ""));
    let v = attack("malformed", gw.addr, &[]);
    let cases = v["cases"].as_object().unwrap();
    let bad: Vec<String> = cases
        .iter()
        .filter(|(_, r)| r["ok"] != true)
        .map(|(n, r)| format!("{n}: {r}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{} cases not refused as required:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(cases.len() >= 15, "{v}");
    assert_eq!(
        up.requests().len(),
        0,
        "a malformed request reached the backend: {:?}",
        up.requests()
    );
    assert_h2_alive(gw.addr);
}
