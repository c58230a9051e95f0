//! Active health checks: one checker thread for every target of every
//! upstream with `[upstreams.NAME.health]` (not one per worker).
//!
//! Each target is checked every `interval_ms` with a blocking HTTP/1.1
//! `GET path` (`Connection: close`) within `timeout_ms`; a status in
//! `expected_statuses` (default any 2xx) passes. `unhealthy_threshold`
//! failures in a row mark a healthy target unhealthy, `healthy_threshold`
//! passes in a row bring it back. The verdict is one atomic flag on the
//! target ([`TargetShared::set_healthy`]) that workers read when picking.
//! Targets start healthy.

use super::now_ms;
use super::shared::{TargetShared, UpstreamShared};
use crate::config::{Config, HealthConfig};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Weak;
use std::time::Duration;

/// How often the checker looks for due targets.
const TICK: Duration = Duration::from_millis(10);

/// Starts the checker thread when any upstream has health checks.
pub fn start(config: &Config) {
    let checks: Vec<(Weak<UpstreamShared>, HealthConfig)> = config
        .upstreams
        .iter()
        .filter_map(|u| {
            u.health
                .as_ref()
                .map(|h| (std::sync::Arc::downgrade(&u.state), h.clone()))
        })
        .collect();
    if checks.is_empty() {
        return;
    }
    let r = std::thread::Builder::new()
        .name(String::from("ringgate-health"))
        .spawn(move || run(checks));
    if let Err(e) = r {
        tracing::error!(error = %e, "cannot start the health checker");
    }
}

fn run(checks: Vec<(Weak<UpstreamShared>, HealthConfig)>) {
    loop {
        let mut alive = false;
        for (weak, h) in &checks {
            let Some(up) = weak.upgrade() else { continue };
            alive = true;
            let interval = h.interval.as_millis() as u64;
            for t in up.snapshot().targets.iter() {
                let last = t.checked_at.load(std::sync::atomic::Ordering::Relaxed);
                let now = now_ms();
                if last != 0 && now < last + interval {
                    continue;
                }
                t.checked_at
                    .store(now.max(1), std::sync::atomic::Ordering::Relaxed);
                let pass = check(t, h).is_ok();
                apply(&up, t, h, pass);
            }
        }
        if !alive {
            return;
        }
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

/// One check: connect, `GET path`, read the status line.
pub fn check(t: &TargetShared, h: &HealthConfig) -> Result<u16, String> {
    let deadline = std::time::Instant::now() + h.timeout;
    let mut s = TcpStream::connect_timeout(&t.addr, h.timeout).map_err(|e| e.to_string())?;
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    s.set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    let host = h.host.clone().unwrap_or_else(|| t.addr.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringgate-health\r\nConnection: close\r\n\r\n",
        h.path
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let mut n = 0;
    while !buf[..n].contains(&b'\n') && n < buf.len() {
        s.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
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
