//! Process lifecycle over real sockets: a zero-downtime restart of the
//! binary (a new process binds the same port with SO_REUSEPORT, the old one
//! drains and exits, and no request fails), and hot reload of the config.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_ringgate");

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringgate-lifecycle-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("ringgate.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Starts `ringgate run -c path`; returns the child and its listen port
/// (read from the "ringgate serving" log line).
fn spawn(path: &PathBuf) -> (Child, u16) {
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(path)
        .env("NO_COLOR", "1")
        .env("RINGGATE_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn ringgate");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("ringgate serving") {
                let port = line
                    .split("127.0.0.1:")
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|p| p.parse::<u16>().ok());
                if let Some(p) = port {
                    let _ = tx.send(p);
                    sent = true;
                }
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(10)).expect("gateway did not start");
    (child, port)
}

fn sigterm(child: &Child) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
}

fn one_request(addr: SocketAddr) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    if out.len() < 12 {
        return Err(format!("short response {:?}", String::from_utf8_lossy(&out)));
    }
    std::str::from_utf8(&out[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| String::from("bad status line"))
}

/// A new process takes over the port, the old one drains and exits 0, and
/// a client sending requests all along sees no failure.
#[test]
fn zero_downtime_binary_restart() {
    // Let the kernel hand connections still queued on the old listener to
    // the new one when the old one closes (Linux >= 5.14); without it a
    // connection can be reset in the instant the old listener closes.
    let _ = std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1");
    let be = MockUpstream::builder().respond(200, "pong").start();
    let cfg = |port: u16| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 2\npin = false\ndrain_timeout_ms = 5000\n[upstreams.be]\ntargets = [\"{}\"]\n[[routes]]\nname = \"all\"\npath = \"/{{*rest}}\"\nupstream = \"be\"\n",
            be.target()
        )
    };
    let (mut old, port) = spawn(&write_config("old", &cfg(0)));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(one_request(addr), Ok(200));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match one_request(addr) {
                    Ok(200) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (mut new, new_port) = spawn(&write_config("new", &cfg(port)));
    assert_eq!(new_port, port);
    std::thread::sleep(Duration::from_millis(300));
    let before = ok.load(Ordering::SeqCst);
    sigterm(&old);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = old.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "old process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "old process exit: {status:?}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let after = ok.load(Ordering::SeqCst);
    sigterm(&new);
    let _ = new.wait();
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(before > 10, "client made progress before the restart ({before})");
    assert!(after > before + 10, "the new process served requests ({before} -> {after})");
}
