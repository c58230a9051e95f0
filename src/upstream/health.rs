//! Active health checks: one scheduler thread and a small pool of check
//! threads for every target of every upstream with `[upstreams.NAME.health]`
//! (not one per worker).
//!
//! Each target is checked every `interval_ms` with a blocking HTTP/1.1
//! `GET path` (`Connection: close`) within `timeout_ms`, its head written
//! and the answer's head parsed by [`crate::http::client`] (what the
//! workers' upstream exchanges use; the exchange itself needs a worker's
//! runtime and pools, so checks share its I/O-free parts); a status in
//! `expected_statuses` (default any 2xx) passes. `unhealthy_threshold`
//! failures in a row mark a healthy target unhealthy, `healthy_threshold`
//! passes in a row bring it back. The verdict is one atomic flag on the
//! target ([`TargetShared::set_healthy`]) that workers read when picking.
//! Targets start healthy.
//!
//! An HTTP/2 upstream (`protocol = "h2"`) is checked over HTTP/2 (h2c, or
//! TLS with ALPN h2): `GET path`, or with `grpc_service` gRPC's health
//! check (`grpc.health.v1.Health/Check`), which passes when the answer is
//! grpc-status 0 and SERVING. The check thread drives the h2 crate on a
//! small tokio runtime of its own ([`check_h2`]).
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
use crate::http::client::{self, Progress, ReadError, ResponseReader};
use arc_swap::ArcSwap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering::{AcqRel, Relaxed, Release};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

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

/// One check: connect (over TLS when the upstream is), `GET path`, read
/// the response head. The request head is written and the response head
/// parsed by the same code as the workers' upstream exchanges
/// ([`crate::http::client`]); the I/O here is blocking, on a check thread,
/// bounded by `timeout_ms` for the whole check. The body is not read
/// (`Connection: close`).
pub fn check(t: &TargetShared, h: &HealthConfig) -> Result<u16, String> {
    if h.h2 {
        return check_h2(t, h);
    }
    let deadline = Instant::now() + h.timeout;
    let s = TcpStream::connect_timeout(&t.addr, h.timeout).map_err(|e| e.to_string())?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
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
    let mut req = Vec::with_capacity(128);
    client::write_request_head(
        &mut req,
        b"GET",
        h.path.as_bytes(),
        host.as_bytes(),
        b"User-Agent: ringgate-health\r\nConnection: close\r\n",
        None,
    );
    s.write_all(&req).map_err(|e| e.to_string())?;
    // Only the head is wanted: no cap on a body that is never read.
    let mut reader = ResponseReader::new(false, usize::MAX);
    let mut chunk = [0u8; 1024];
    while reader.progress() == Progress::Head {
        if Instant::now() >= deadline {
            return Err(String::from("timed out"));
        }
        let step = match s.read(&mut chunk) {
            Ok(0) => reader.eof(),
            Ok(n) => {
                reader.buf().extend_from_slice(&chunk[..n]);
                reader.advance()
            }
            Err(e) => return Err(e.to_string()),
        };
        step.map_err(|e| match e {
            ReadError::Nothing => String::from("closed before a status line"),
            ReadError::Truncated => String::from("closed inside the response head"),
            ReadError::Invalid(m) => m.to_string(),
            ReadError::TooLarge(s) => format!("status {s} with a body over the limit"),
        })?;
    }
    verdict(h, reader.head().map_or(0, |h| h.status))
}

/// A check's answer by its status: one in `expected_statuses` (default
/// any 2xx) passes.
fn verdict(h: &HealthConfig, status: u16) -> Result<u16, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that answers one connection with `answer` and returns
    /// the request head it read.
    fn backend(answer: &'static [u8]) -> (std::net::SocketAddr, std::thread::JoinHandle<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 512];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&b[..n]),
                }
            }
            let _ = s.write_all(answer);
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, h)
    }

    fn config(expected: &[u16]) -> HealthConfig {
        HealthConfig {
            h2: false,
            grpc_service: None,
            path: String::from("/health?deep=1"),
            host: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            expected_statuses: expected.to_vec(),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            tls: None,
        }
    }

    fn run(answer: &'static [u8], expected: &[u16]) -> (Result<u16, String>, String) {
        let (addr, h) = backend(answer);
        let r = check(&TargetShared::new(addr, 1), &config(expected));
        (r, h.join().unwrap())
    }

    #[test]
    fn checks_parse_the_answer_like_an_exchange() {
        let (r, head) = run(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", &[]);
        assert_eq!(r, Ok(200));
        assert!(
            head.starts_with("GET /health?deep=1 HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{head}"
        );
        assert!(head.contains("\r\nUser-Agent: ringgate-health\r\nConnection: close\r\n\r\n"));
        // Interim responses are skipped; the final status counts.
        let (r, _) = run(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            &[],
        );
        assert_eq!(r, Ok(204));
        let (r, _) = run(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", &[]);
        assert_eq!(r, Err(String::from("status 503")));
        let (r, _) = run(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", &[503]);
        assert_eq!(r, Ok(503));
        let (r, _) = run(b"", &[]);
        assert_eq!(r, Err(String::from("closed before a status line")));
        let (r, _) = run(b"HTTP/1.1 200 OK\r\nContent-Le", &[]);
        assert_eq!(r, Err(String::from("closed inside the response head")));
        let (r, _) = run(b"SSH-2.0-OpenSSH\r\n\r\n", &[]);
        assert!(r.is_err(), "{r:?}");
    }
}

thread_local! {
    /// A check thread's runtime for HTTP/2 checks (made on first use).
    static RUNTIME: std::cell::OnceCell<Option<tokio::runtime::Runtime>> =
        const { std::cell::OnceCell::new() };
}

/// An HTTP/2 check: `GET path` expecting `expected_statuses`, or with
/// `grpc_service` a gRPC health check expecting SERVING; within
/// `timeout_ms` for the whole check.
pub fn check_h2(t: &TargetShared, h: &HealthConfig) -> Result<u16, String> {
    RUNTIME.with(|rt| {
        let rt = rt
            .get_or_init(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()
            })
            .as_ref()
            .ok_or("no runtime for HTTP/2 checks")?;
        rt.block_on(async {
            match tokio::time::timeout(h.timeout, check_h2_async(t, h)).await {
                Ok(r) => r,
                Err(_) => Err(String::from("timed out")),
            }
        })
    })
}

async fn check_h2_async(t: &TargetShared, h: &HealthConfig) -> Result<u16, String> {
    use bytes::Bytes;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let tcp = tokio::net::TcpStream::connect(t.addr)
        .await
        .map_err(|x| e(&x))?;
    let _ = tcp.set_nodelay(true);
    let host = h.host.clone().unwrap_or_else(|| t.addr.to_string());
    let (send, driver) = match &h.tls {
        None => {
            let (s, c) = h2::client::handshake(tcp).await.map_err(|x| e(&x))?;
            (s, tokio::spawn(async move { c.await.map(|_| ()) }))
        }
        Some(tls) => {
            let tls_conn = tokio_rustls::TlsConnector::from(tls.client.clone())
                .connect(tls.name_for(t.addr), tcp)
                .await
                .map_err(|x| e(&x))?;
            let (s, c) = h2::client::handshake(tls_conn).await.map_err(|x| e(&x))?;
            (s, tokio::spawn(async move { c.await.map(|_| ()) }))
        }
    };
    let scheme = if h.tls.is_some() { "https" } else { "http" };
    let grpc = h.grpc_service.as_deref();
    let (uri, method) = match grpc {
        Some(_) => (
            format!("{scheme}://{host}/grpc.health.v1.Health/Check"),
            http::Method::POST,
        ),
        None => (format!("{scheme}://{host}{}", h.path), http::Method::GET),
    };
    let mut b = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("user-agent", "ringgate-health");
    if grpc.is_some() {
        b = b
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    let req = b.body(()).map_err(|x| e(&x))?;
    let mut send = send.ready().await.map_err(|x| e(&x))?;
    let (resp, mut body) = send.send_request(req, grpc.is_none()).map_err(|x| e(&x))?;
    if let Some(service) = grpc {
        // HealthCheckRequest { service = 1 }, in one gRPC message.
        let mut msg = Vec::with_capacity(8 + service.len());
        if !service.is_empty() {
            msg.push(0x0a);
            let mut n = service.len();
            while n >= 0x80 {
                msg.push((n as u8) | 0x80);
                n >>= 7;
            }
            msg.push(n as u8);
            msg.extend_from_slice(service.as_bytes());
        }
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        body.send_data(Bytes::from(frame), true)
            .map_err(|x| e(&x))?;
    }
    let resp = resp.await.map_err(|x| e(&x))?;
    let status = resp.status().as_u16();
    let result = match grpc {
        None => verdict(h, status),
        Some(_) => {
            let head_status = resp.headers().get("grpc-status").cloned();
            let mut rb = resp.into_body();
            let mut data = Vec::new();
            while let Some(d) = rb.data().await {
                let d = d.map_err(|x| e(&x))?;
                let _ = rb.flow_control().release_capacity(d.len());
                if data.len() < 1024 {
                    data.extend_from_slice(&d);
                }
            }
            let trailers = rb.trailers().await.map_err(|x| e(&x))?;
            let code = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status").cloned())
                .or(head_status);
            match code.as_ref().map(|c| c.as_bytes()) {
                Some(b"0") if serving(&data) => Ok(status),
                Some(b"0") => Err(String::from("not SERVING")),
                Some(c) => Err(format!("grpc-status {}", String::from_utf8_lossy(c))),
                None => Err(format!("status {status} without grpc-status")),
            }
        }
    };
    driver.abort();
    result
}

/// A HealthCheckResponse message (after its 5-byte gRPC header) says
/// SERVING (field 1 = 1).
fn serving(frame: &[u8]) -> bool {
    frame.len() >= 7 && frame[0] == 0 && frame[5..7] == [0x08, 0x01]
}
