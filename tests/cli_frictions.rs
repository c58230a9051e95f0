//! What a new user meets at the command line, over real processes and
//! sockets: `--help` says what a user needs, `run` without `-c` says what
//! it looked for, log lines are plain text when stderr is not a terminal, a
//! second instance on a served port refuses to start (and `--takeover`
//! starts), and an idle gateway exits promptly on SIGTERM.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringgate-cli-frictions-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free port on loopback (bound once and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn gateway_config(port: u16, admin_port: Option<u16>) -> String {
    let admin = admin_port
        .map(|p| format!("[admin]\nlisten = \"127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 2\npin = false\n{admin}\
         [upstreams.be]\ntargets = [\"127.0.0.1:9\"]\n\
         [[routes]]\nname = \"all\"\npath = \"/{{*rest}}\"\nupstream = \"be\"\n"
    )
}

fn write(dir: &std::path::Path, text: &str) -> PathBuf {
    let p = dir.join("ringgate.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn sigterm(child: &Child) {
    // SAFETY: sending a signal to our own child process.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
}

/// Waits for the child to exit; kills it and fails after `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringgate did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn help_names_the_environment_the_signals_and_where_errors_go() {
    for args in [&["--help"][..], &["run", "--help"], &["check", "--help"]] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        for want in [
            "RINGGATE_LOG",
            "SIGHUP",
            "reload",
            "SIGUSR1",
            "reopen the access-log",
            "SIGUSR2",
            "SIGTERM",
            "drain",
            "stderr",
            "exit with status 2",
            "./ringgate.toml",
            "--takeover",
        ] {
            assert!(
                help.contains(want),
                "{args:?} --help lacks {want:?}:\n{help}"
            );
        }
    }
}

/// `ringgate run` (and `check`) without `-c` read `./ringgate.toml`; when
/// there is none they say what they looked for and how to pass a file.
#[test]
fn run_without_c_reads_ringgate_toml_or_says_what_it_looked_for() {
    let dir = temp_dir();
    for cmd in ["run", "check"] {
        let out = Command::new(BIN)
            .arg(cmd)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("./ringgate.toml"), "{cmd}: {err}");
        assert!(err.contains(&dir.display().to_string()), "{cmd}: {err}");
        assert!(
            err.contains(&format!("ringgate {cmd} -c FILE")),
            "{cmd}: {err}"
        );
    }
    // With the file there, it is the one read.
    write(&dir, &gateway_config(free_port(), None));
    let out = Command::new(BIN)
        .arg("check")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ringgate.toml: ok"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Log lines written to a file carry no ANSI colour codes (stderr is not a
/// terminal), with or without `NO_COLOR`.
#[test]
fn log_lines_to_a_file_have_no_colour_codes() {
    let dir = temp_dir();
    let cfg = write(&dir, &gateway_config(0, None));
    let log = dir.join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .env_remove("NO_COLOR")
        .env("RINGGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ringgate serving")
    {
        assert!(Instant::now() < end, "no 'ringgate serving' line");
        thread::sleep(Duration::from_millis(20));
    }
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO"), "{text}");
    assert!(text.contains("stopped"), "{text}");
    assert!(!text.contains("\x1b["), "colour codes in a file:\n{text:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A second `ringgate run` on a port a running one serves refuses to
/// start, naming the address and how to take over, and leaves the first
/// serving; started with `--takeover` it starts on the same port.
#[test]
fn a_second_instance_refuses_the_port_unless_it_takes_over() {
    let be = MockUpstream::builder().respond(200, "pong").start();
    let (port, admin_port) = (free_port(), free_port());
    let text = gateway_config(port, Some(admin_port)).replace("127.0.0.1:9", &be.addr.to_string());
    let dir = temp_dir();
    let cfg = write(&dir, &text);
    let (mut first, addr, _log) = spawn_run(&cfg);
    assert_eq!(addr.port(), port);
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/a").status, 200);

    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second instance started:\n{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("server.listen"), "{err}");
    assert!(err.contains("--takeover"), "{err}");
    assert!(!err.contains("ringgate serving"), "{err}");
    // The first one still serves, on a new connection too.
    assert_eq!(c.get("/b").status, 200);
    assert_eq!(Client::connect(addr).get("/c").status, 200);

    // Only the admin port taken: refused too, naming admin.listen.
    let other = gateway_config(free_port(), Some(admin_port));
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(write(&temp_dir(), &other))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{admin_port} (admin.listen)")),
        "{err}"
    );

    // An explicit takeover starts on the same port; the old one drains.
    let (mut second, addr2, _log2) = spawn_run_with(&cfg, &["--takeover"]);
    assert_eq!(addr2, addr);
    sigterm(&first);
    assert!(wait_exit(&mut first, Duration::from_secs(10)).success());
    assert_eq!(Client::connect(addr).get("/d").status, 200);
    sigterm(&second);
    assert!(wait_exit(&mut second, Duration::from_secs(10)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGUSR2 means nothing to ringgate: it is logged, and the gateway goes
/// on serving (its default action would end the process).
#[test]
fn sigusr2_is_ignored() {
    let up = MockUpstream::builder().respond(200, "ok").start();
    let dir = temp_dir();
    let cfg = write(
        &dir,
        &gateway_config(0, None).replace("127.0.0.1:9", &up.addr.to_string()),
    );
    let (mut child, addr, log) = spawn_run(&cfg);
    // SAFETY: sending a signal to our own child process.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR2) },
        0
    );
    thread::sleep(Duration::from_millis(100));
    assert!(child.try_wait().unwrap().is_none(), "SIGUSR2 ended it");
    assert_eq!(Client::connect(addr).get("/a").status, 200);
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    let log = log.join().unwrap();
    assert!(log.contains("SIGUSR2 means nothing to ringgate"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts a gateway, waits until it serves, sends SIGTERM after `before`
/// ran, and returns how long it took to exit.
fn time_to_exit(before: impl FnOnce(SocketAddr)) -> Duration {
    let dir = temp_dir();
    let cfg = write(&dir, &gateway_config(0, Some(0)));
    let (mut child, addr, _log) = spawn_run(&cfg);
    before(addr);
    let t = Instant::now();
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let took = t.elapsed();
    assert!(status.success(), "exit status {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
    took
}

/// An idle gateway exits promptly on SIGTERM: nothing waits for a tick,
/// a sweep or a timeout when nothing is in flight. The bound is generous
/// for a slow machine (it took 1.4-2 s before; ~20 ms here).
#[test]
fn an_idle_gateway_exits_promptly_on_sigterm() {
    let took = time_to_exit(|_| thread::sleep(Duration::from_millis(200)));
    println!("idle gateway exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// A connection that was opened but never sent a request (a preconnect)
/// does not hold the exit until `header_timeout_ms`, and neither does an
/// idle keep-alive connection.
#[test]
fn open_connections_without_a_request_do_not_hold_the_exit() {
    let mut held = Vec::new();
    let took = time_to_exit(|addr| {
        held.push(TcpStream::connect(addr).unwrap());
        let mut c = Client::connect(addr);
        c.get("/keep-alive");
        held.push(c.stream);
        thread::sleep(Duration::from_millis(200));
    });
    println!("gateway with open idle connections exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}
