//! The `ringgate` binary: `check` exit codes and messages, and `run` draining
//! an in-flight request on SIGTERM.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Writes `text` to a fresh file in the temp dir.
fn config_file(text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringgate-cli-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("ringgate.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn check(text: &str) -> Output {
    let p = config_file(text);
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&p)
        .env("NO_COLOR", "1")
        .output()
        .expect("run ringgate check");
    let _ = std::fs::remove_dir_all(p.parent().unwrap());
    out
}

const VALID: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 2
pin = false

[upstreams.api]
targets = ["127.0.0.1:9001", "127.0.0.1:9002"]
balance = "round_robin"
connect_timeout_ms = 1000
request_timeout_ms = 15000

[[routes]]
name = "products"
path = "/products/{id}"
methods = ["GET"]
host = "api.example.com"
upstream = "api"
"#;

#[test]
fn check_valid_file_exits_0() {
    let out = check(VALID);
    assert!(
        out.status.success(),
        "status {:?}, stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[track_caller]
fn assert_check_fails(text: &str, needles: &[&str]) -> String {
    let out = check(text);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "check accepted an invalid file; stderr:\n{stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr does not name {n:?}:\n{stderr}");
    }
    assert!(
        stderr.to_lowercase().contains("fix"),
        "stderr gives no fix:\n{stderr}"
    );
    stderr
}

#[test]
fn check_unknown_key() {
    let text = VALID.replace("pin = false", "pin = false\nlistn = \"127.0.0.1:1\"");
    assert_check_fails(&text, &["listn"]);
}

#[test]
fn check_route_naming_missing_upstream() {
    let text = VALID.replace("upstream = \"api\"", "upstream = \"nope\"");
    assert_check_fails(&text, &["routes[0].upstream", "nope"]);
}

#[test]
fn check_bad_listen_address() {
    let text = VALID.replace("listen = \"127.0.0.1:0\"", "listen = \"not-an-address\"");
    assert_check_fails(&text, &["server.listen", "not-an-address"]);
}

#[test]
fn check_reports_every_error_in_one_run() {
    let text = VALID
        .replace("pin = false", "pin = false\nlistn = \"127.0.0.1:1\"")
        .replace("upstream = \"api\"", "upstream = \"nope\"")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"not-an-address\"");
    assert_check_fails(&text, &["listn", "routes[0].upstream", "server.listen"]);
}

#[test]
fn check_redact_query_names() {
    let text = format!("{VALID}\n[log]\nredact_query = [\"token\", \"a=b\"]\n");
    assert_check_fails(&text, &["log.redact_query[1]", "\"a=b\""]);
}

/// `[admin] token_file` must name a readable, non-empty file, and not
/// come with `token_env`.
#[test]
fn check_admin_token_file() {
    let base = "[upstreams.u]\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n[admin]\n";
    let out = check(&format!(
        "{base}token_file = \"/nonexistent/ringgate-token\"\n"
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.token_file"), "{err}");
    assert!(err.contains("/nonexistent/ringgate-token"), "{err}");
    let out = check(&format!(
        "{base}token_file = \"/nonexistent/ringgate-token\"\ntoken_env = \"HOME\"\n"
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("both admin.token_env and admin.token_file"),
        "{err}"
    );
}

#[test]
fn check_missing_file() {
    let out = Command::new(BIN)
        .args(["check", "-c", "/nonexistent/ringgate-test.toml"])
        .output()
        .expect("run ringgate check");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ringgate-test.toml"));
}

/// `kill -USR1` makes a running gateway reopen its access log: after log
/// rotation moved the file away, later lines go to a fresh file at the
/// configured path and the moved file keeps the earlier ones.
#[test]
fn sigusr1_reopens_the_access_log_after_rotation() {
    let up = MockUpstream::builder().respond(200, "ok").start();
    let cfg = config_file("");
    let dir = cfg.parent().unwrap().to_path_buf();
    let path = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let toml = format!(
        "{}\n[log]\naccess = \"json\"\npath = \"{}\"\n",
        GatewayConfig::simple(&[up.addr]).toml(),
        path.display()
    );
    std::fs::write(&cfg, toml).unwrap();
    let (mut child, addr, log) = spawn_run(&cfg);
    let get = |p: &str| {
        let mut c = Client::connect(addr);
        assert_eq!(c.get(p).status, 200);
    };
    get("/before-1");
    get("/before-2");
    assert_eq!(file_lines(&path, 2).len(), 2, "the first two lines");
    std::fs::rename(&path, &rotated).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR1) },
        0
    );
    // The file is back before any new line is written.
    let end = Instant::now() + Duration::from_secs(10);
    while !path.exists() && Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(path.exists(), "no fresh file after SIGUSR1");
    get("/after-1");
    get("/after-2");
    get("/after-3");
    let fresh = file_lines(&path, 3);
    assert_eq!(fresh.len(), 3, "new lines: {fresh:?}");
    assert!(fresh.iter().all(|l| l.contains("/after-")), "{fresh:?}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.lines().count(), 2, "the moved file: {old}");
    assert!(old.lines().all(|l| l.contains("/before-")), "{old}");
    // The gateway is still serving, and stops cleanly.
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(log.contains("access log reopened"), "log:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_drains_in_flight_request_on_sigterm() {
    let up = MockUpstream::builder()
        .latency(Duration::from_millis(500))
        .respond(200, "slow but complete")
        .start();
    let cfg = config_file(&GatewayConfig::simple(&[up.addr]).toml());
    let (mut child, addr, log) = spawn_run(&cfg);

    let req = thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.get("/slow")
    });
    assert!(up.wait_hits(1), "the request never reached the backend");
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);

    let r = req.join().expect("client thread");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow but complete");

    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringgate did not exit after SIGTERM");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let log = log.join().unwrap();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert_eq!(up.hits(), 1);
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
}
