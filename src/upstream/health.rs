//! Active health checks: one scheduler thread and a small pool of check
//! threads for every target of every upstream with `[upstreams.NAME.health]`
//! (not one per worker).
//!
//! Each target is checked every `interval_ms` with a blocking HTTP/1.1
//! `GET path` (`Connection: close`) within `timeout_ms`; a status in
//! `expected_statuses` (default any 2xx) passes. `unhealthy_threshold`
//! failures in a row mark a healthy target unhealthy, `healthy_threshold`
//! passes in a row bring it back. The verdict is one atomic flag on the
//! target ([`TargetShared::set_healthy`]) that workers read when picking.
//! Targets start healthy.
//!
//! The scheduler hands due targets to [`CHECKERS`] threads, so a target
//! that hangs until its timeout delays only its own check, never the
//! checks of other targets; a target is never checked twice at once. A
//! server has one [`Checker`], found through its upstreams' shared state,
//! whose list of what to check is replaced on every config (start and
//! reload, see [`update`]): upstreams a reload removes stop being checked,
//! kept ones keep their counters, and a reload never starts a second
//! checker. The threads end when the server's upstreams are gone.

use super::now_ms;
use super::shared::{TargetShared, UpstreamShared};
use crate::config::{Config, HealthConfig};
use arc_swap::ArcSwap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering::{AcqRel, Relaxed, Release};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the scheduler looks for due targets.
const TICK: Duration = Duration::from_millis(10);

/// Check threads per server: this many targets can be mid-check at once.
pub const CHECKERS: usize = 8;

type Checks = Vec<(Weak<UpstreamShared>, Arc<HealthConfig>)>;

/// One server's health checker: what to check, read by its scheduler.
#[derive(Default)]
pub struct Checker {
    checks: ArcSwap<Checks>,
}

struct Job {
    up: Arc<UpstreamShared>,
    target: Arc<TargetShared>,
    health: Arc<HealthConfig>,
}

/// Makes `config`'s upstreams the ones checked (call on start and after
/// every reload, with the new config); starts the checker of this server
/// the first time any of its upstreams has checks.
pub fn update(config: &Config) {
    let checks: Checks = config
        .upstreams
        .iter()
        .filter_map(|u| {
            u.health
                .as_ref()
                .map(|h| (Arc::downgrade(&u.state), Arc::new(h.clone())))
        })
        .collect();
    let existing = config
        .upstreams
        .iter()
        .find_map(|u| u.state.health_checker.get().cloned());
    let checker = match existing {
        Some(c) => c,
        None if checks.is_empty() => return,
        None => {
            let c = Arc::new(Checker::default());
            if let Err(e) = start_threads(&c) {
                tracing::error!(error = %e, "cannot start the health checker");
                return;
            }
            c
        }
    };
    for u in &config.upstreams {
        let _ = u.state.health_checker.set(checker.clone());
    }
    checker.checks.store(Arc::new(checks));
}

fn start_threads(checker: &Arc<Checker>) -> std::io::Result<()> {
    // Bounded by the number of targets that can be due at once; a full
    // queue only means a target waits for a free check thread.
    let (tx, rx) = crossbeam_channel::bounded::<Job>(1024);
    for i in 0..CHECKERS {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("ringgate-health-{i}"))
            .spawn(move || {
                for job in rx {
                    let pass = check(&job.target, &job.health).is_ok();
                    apply(&job.up, &job.target, &job.health, pass);
                    job.target.check_in_flight.store(false, Release);
                }
            })?;
    }
    let weak = Arc::downgrade(checker);
    std::thread::Builder::new()
        .name(String::from("ringgate-health"))
        .spawn(move || schedule(weak, tx))?;
    Ok(())
}

fn schedule(checker: Weak<Checker>, tx: crossbeam_channel::Sender<Job>) {
    loop {
        let Some(list) = checker.upgrade().map(|c| c.checks.load_full()) else {
            return; // the server is gone; dropping `tx` ends the check threads
        };
        for (weak, h) in list.iter() {
            let Some(up) = weak.upgrade() else { continue };
            let interval = h.interval.as_millis() as u64;
            for t in up.snapshot().targets.iter() {
                let last = t.checked_at.load(Relaxed);
                let now = now_ms();
                if last != 0 && now < last + interval {
                    continue;
                }
                if t.check_in_flight.swap(true, AcqRel) {
                    continue; // still being checked (a slow target)
                }
                t.checked_at.store(now.max(1), Relaxed);
                let job = Job {
                    up: up.clone(),
                    target: t.clone(),
                    health: h.clone(),
                };
                if tx.send(job).is_err() {
                    return;
                }
            }
        }
        drop(list);
        std::thread::sleep(TICK);
    }
}

/// Counts one result and flips the target's flag at a threshold.
pub fn apply(up: &UpstreamShared, t: &TargetShared, h: &HealthConfig, pass: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    if pass {
        t.check_failures.store(0, Relaxed);
        let n = t.check_passes.fetch_add(1, Relaxed) + 1;
        if !t.is_healthy() && n >= h.healthy_threshold {
            t.set_healthy(true);
            tracing::info!(upstream = %up.name, target = %t.addr, "target healthy");
        }
    } else {
        t.check_passes.store(0, Relaxed);
        let n = t.check_failures.fetch_add(1, Relaxed) + 1;
        if t.is_healthy() && n >= h.unhealthy_threshold {
            t.set_healthy(false);
            tracing::warn!(upstream = %up.name, target = %t.addr, "target unhealthy");
        }
    }
}

/// A health check's socket: plain TCP or rustls over it.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One check: connect, `GET path`, read the status line.
pub fn check(t: &TargetShared, h: &HealthConfig) -> Result<u16, String> {
    let deadline = std::time::Instant::now() + h.timeout;
    let s = TcpStream::connect_timeout(&t.addr, h.timeout).map_err(|e| e.to_string())?;
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    s.set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    // Over TLS when the upstream is: the handshake counts in the timeout.
    let mut s: Box<dyn ReadWrite> = match &h.tls {
        None => Box::new(s),
        Some(tls) => {
            Box::new(crate::upstream::tls::blocking_tls(s, tls, t.addr).map_err(|e| e.to_string())?)
        }
    };
    let host = h.host.clone().unwrap_or_else(|| t.addr.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringgate-health\r\nConnection: close\r\n\r\n",
        h.path
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let mut n = 0;
    while !buf[..n].contains(&b'\n') && n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) => return Err(String::from("closed before a status line")),
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = std::str::from_utf8(&buf[..n]).map_err(|_| String::from("not text"))?;
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", line.lines().next().unwrap_or("")))?;
    let ok = if h.expected_statuses.is_empty() {
        (200..300).contains(&status)
    } else {
        h.expected_statuses.contains(&status)
    };
    if ok {
        Ok(status)
    } else {
        Err(format!("status {status}"))
    }
}
