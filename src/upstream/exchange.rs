//! One request/response exchange with an upstream, for the requests
//! ringgate makes itself (compose parts): the answer is read whole into a
//! buffer, nothing is streamed to a client.
//!
//! Key components: [`Request`] (what to send, where, until when),
//! [`exchange`] (the tries) and [`Answer`] (the response and the target
//! that gave it). The HTTP/1.1 framing is [`crate::http::client`]'s, the
//! same the control plane's health checks use.
//!
//! What an exchange does, by the rules `proxy::forward` applies to a
//! forwarded request: asks the upstream's circuit breaker (open: fails at
//! once, [`ErrorKind::CircuitOpen`], nothing sent); picks a target with the
//! upstream's balancer (a consistent-hash key when the caller has one);
//! takes a pooled connection or connects (`connect_timeout_ms`); writes
//! the head and the body; reads the response under the try's deadline
//! (`try_timeout_ms`, within `request_timeout_ms` and the caller's
//! deadline). A pooled connection found closed before any response byte is
//! replaced once by a fresh one to the same target (idempotent requests:
//! the body is always held whole here). Other failures go to
//! another target while `retries`, the worker's retry budget and the
//! deadline allow: connect failures always; for idempotent requests also
//! 502/503/504 answers, connections closed or reset before any response
//! byte, and per-try timeouts shorter than the request's. Every try reports
//! to passive outlier detection and, with `p2c_ewma`, feeds the target's
//! latency; the exchange's final result is recorded once with the breaker.
//! Connections count in the pool metrics (opened or reused) and go back to
//! the pool when the response left them clean.
//!
//! Stream type: the I/O is generic ([`send`]); connections are the pool's
//! [`PoolConn`], so a pool of TLS connections slots in behind the same
//! calls.
//!
//! `proxy::forward` streams both bodies instead of holding them, so it
//! runs its own tries, from the same parts: the balancer's pick, the pool's
//! checkout and [`pool::connect`] (and [`pool::ConnectError::error`]), the
//! one retry rule (`upstream::retry::Retries` and the retry budget), the
//! stale-connection replacement and the response-head limit. The cache's
//! background refresh runs the route's forward or compose, so that its
//! transforms and stored form stay those of an answered request.
//!
//! Performance notes: one timer per try and a few allocations per
//! exchange (the request bytes, the response buffers); the plain proxy
//! path does not come here.

use super::balance;
use super::breaker::Ticket;
use super::pool::{self, PoolConn, TargetState, UpstreamState};
use super::shared::Report;
use crate::config::{Balance, Config, UpstreamConfig};
use crate::error::{Error, ErrorKind};
use crate::http::client::{self, Progress, ReadError, Response, ResponseReader};
use crate::runtime::worker::{Generation, Worker};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A request to send to one of an upstream's targets.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    /// The method.
    pub method: &'a [u8],
    /// The request target, in origin form (path and query).
    pub target: &'a [u8],
    /// The `Host` value; `None`: the target's address.
    pub host: Option<&'a [u8]>,
    /// Further header lines, each ending in CRLF (no framing header).
    pub headers: &'a [u8],
    /// The body (sent with a `Content-Length` when not empty).
    pub body: &'a [u8],
    /// The request's consistent-hash key, for a `consistent_hash`
    /// upstream ([`crate::upstream::request_key`]).
    pub key: Option<u64>,
    /// Nothing is tried after this instant; a try still running then is
    /// a timeout.
    pub until: Instant,
    /// Largest response body accepted.
    pub max_body: usize,
}

impl<'a> Request<'a> {
    /// A `GET` of `target` on upstream `upstream`, answered by `until`,
    /// with a body of at most `max_body` bytes.
    pub fn get(upstream: usize, target: &'a [u8], until: Instant, max_body: usize) -> Self {
        Request {
            upstream,
            method: b"GET",
            target,
            host: None,
            headers: b"",
            body: b"",
            key: None,
            until,
            max_body,
        }
    }

    /// The same request may be sent twice (RFC 9110 9.2.2).
    pub fn idempotent(&self) -> bool {
        matches!(
            self.method,
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        )
    }
}

/// A response read whole, and where it came from.
#[derive(Debug)]
pub struct Answer {
    /// The response (any status: the caller judges it).
    pub response: Response,
    /// The target that answered.
    pub addr: SocketAddr,
    /// Time from the request written to the response read.
    pub latency: Duration,
}

/// Sends `req` to a target of its upstream and reads the answer whole:
/// see the module header for the tries, retries and reports. An error is
/// the last try's failure (or why nothing was tried).
pub async fn exchange(w: &Worker, snap: &Generation, req: &Request<'_>) -> Result<Answer, Error> {
    let cfg: &Config = &snap.config;
    let up_cfg = &cfg.upstreams[req.upstream];
    let up = &*snap.upstreams[req.upstream];
    let shared = &*up.shared;
    let mut ticket = Ticket::new(shared.breaker.as_ref());
    if ticket.rejected() {
        return Err(Error::new(
            ErrorKind::CircuitOpen,
            "upstream is unavailable (circuit breaker open)",
        ));
    }
    up.budget.deposit();
    let list = up.list();
    let idempotent = req.idempotent();
    let deadline = req.until.min(Instant::now() + up_cfg.request_timeout);
    let mut tried = 0u64;
    let mut retries = super::retry::Retries::new(up_cfg.retries, list.targets.len(), deadline);
    let mut may_retry = |tried: u64| retries.allow(tried, &up.budget);
    let mut next: Option<usize> = None;
    let mut fresh_only = false;
    let mut stale_used = false;
    let mut last: Option<Error> = None;
    loop {
        let t = match next.take() {
            Some(t) => t,
            None => match balance::pick(up, &list, up_cfg.balance, req.key, tried) {
                Some(t) => t,
                None => {
                    return Err(match last {
                        Some(e) => {
                            ticket.record(false);
                            e
                        }
                        // No verdict: the ticket gives its slot back.
                        None => {
                            Error::new(ErrorKind::NoHealthyTarget, "no healthy upstream target")
                        }
                    });
                }
            },
        };
        balance::mark(&mut tried, t);
        let target = &*list.targets[t];
        let _in_flight = InFlight::begin(target);
        let now = Instant::now();
        let try_left = deadline
            .min(now + up_cfg.try_timeout)
            .saturating_duration_since(now);
        let mut st = TryState {
            reused: false,
            sent_at: None,
        };
        let r = monoio::time::timeout(
            try_left,
            attempt(w, cfg, up, up_cfg, target, req, fresh_only, &mut st),
        )
        .await;
        fresh_only = false;
        let observe = |at: Instant| {
            if up_cfg.balance == Balance::P2cEwma
                && let Some(sent) = st.sent_at
            {
                target.observe(at.saturating_duration_since(sent), at);
            }
        };
        let e = match r {
            Ok(Try::Answered(response, conn)) => {
                let now = Instant::now();
                observe(now);
                let status = response.status();
                shared.report(
                    &target.shared,
                    if status >= 500 {
                        Report::Status5xx
                    } else {
                        Report::Success
                    },
                );
                if matches!(status, 502..=504) && idempotent && may_retry(tried) {
                    // Ask another target; this answer and its connection go.
                    last = Some(Error::new(
                        ErrorKind::UpstreamStatus(status),
                        "upstream unavailable",
                    ));
                    continue;
                }
                ticket.record_status(status);
                if response.reusable() {
                    up.checkin(target, conn, w.watchdog.now_ms());
                }
                return Ok(Answer {
                    response,
                    addr: target.addr,
                    latency: now.saturating_duration_since(st.sent_at.unwrap_or(now)),
                });
            }
            Ok(Try::TooLarge(status)) => {
                // An answer, only too large for the caller: judged by its
                // status, and not tried again.
                observe(Instant::now());
                shared.report(
                    &target.shared,
                    if status >= 500 {
                        Report::Status5xx
                    } else {
                        Report::Success
                    },
                );
                ticket.record_status(status);
                return Err(Error::new(
                    ErrorKind::ResponseTooLarge,
                    "upstream response body over the limit",
                ));
            }
            Ok(Try::Stale(_)) if st.reused && idempotent && !stale_used => {
                // The pooled connection had been closed: once more on a
                // fresh one to the same target.
                stale_used = true;
                fresh_only = true;
                next = Some(t);
                continue;
            }
            Ok(Try::Connect(e)) => {
                shared.report(&target.shared, Report::Failure);
                if may_retry(tried) {
                    last = Some(e);
                    continue;
                }
                e
            }
            Ok(Try::Stale(e)) => {
                shared.report(&target.shared, Report::Failure);
                if idempotent && may_retry(tried) {
                    last = Some(e);
                    continue;
                }
                e
            }
            Ok(Try::Failed(e)) => {
                shared.report(&target.shared, Report::Failure);
                e
            }
            Err(_) => {
                observe(Instant::now());
                shared.report(&target.shared, Report::Failure);
                let e = if st.sent_at.is_some() {
                    Error::new(ErrorKind::UpstreamTimeout, "upstream timed out")
                } else {
                    Error::new(
                        ErrorKind::ConnectTimeout,
                        "timed out connecting to upstream",
                    )
                };
                // Only a per-try timeout shorter than the request's leaves
                // time for another try.
                if idempotent && up_cfg.try_timeout < up_cfg.request_timeout && may_retry(tried) {
                    last = Some(e);
                    continue;
                }
                e
            }
        };
        ticket.record(false);
        return Err(e);
    }
}

/// What a try learned before its timer.
struct TryState {
    /// The connection came from the pool.
    reused: bool,
    /// When the request was written (after the connect).
    sent_at: Option<Instant>,
}

/// How one try ended.
enum Try {
    /// A response, read whole, and the connection it came on.
    Answered(Response, PoolConn),
    /// A response whose body is over the cap (its status).
    TooLarge(u16),
    /// The connect failed.
    Connect(Error),
    /// The connection was closed or reset before any response byte: the
    /// request was not processed (a stale pooled connection, or a backend
    /// that went away).
    Stale(Error),
    /// The response was cut short or invalid.
    Failed(Error),
}

/// One try on `target`: a pooled connection (unless `fresh_only`) or a
/// new one, the request written, the response read whole.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    w: &Worker,
    cfg: &Config,
    up: &UpstreamState,
    up_cfg: &UpstreamConfig,
    target: &TargetState,
    req: &Request<'_>,
    fresh_only: bool,
    st: &mut TryState,
) -> Try {
    let pooled = if fresh_only {
        None
    } else {
        up.checkout(target, w.watchdog.now_ms())
    };
    st.reused = pooled.is_some();
    let mut conn = match pooled {
        Some(c) => c,
        None => {
            match pool::connect(target.addr, up_cfg.connect_timeout, up_cfg.tls.as_deref()).await {
                Ok(c) => c,
                Err(e) => return Try::Connect(e.error()),
            }
        }
    };
    if cfg.metrics_enabled {
        w.metrics
            .upstream_conn(cfg.upstream_slots[req.upstream], st.reused);
    }
    let mut bytes = Vec::with_capacity(req.target.len() + req.headers.len() + req.body.len() + 96);
    let mut addr = [0u8; 64];
    let host = match req.host {
        Some(h) => h,
        None => {
            let mut a = &mut addr[..];
            let _ = write!(a, "{}", target.addr);
            let n = 64 - a.len();
            &addr[..n]
        }
    };
    client::write_request_head(
        &mut bytes,
        req.method,
        req.target,
        host,
        req.headers,
        (!req.body.is_empty()).then_some(req.body.len()),
    );
    bytes.extend_from_slice(req.body);
    st.sent_at = Some(Instant::now());
    let mut reader = ResponseReader::new(req.method == b"HEAD", req.max_body);
    match send(&mut *conn, bytes, &mut reader).await {
        Ok(()) => Try::Answered(reader.finish(), conn),
        Err(Sent::NotWritten) => Try::Stale(Error::new(
            ErrorKind::UpstreamClosed,
            "upstream closed the connection",
        )),
        Err(Sent::Read(ReadError::Nothing)) => Try::Stale(Error::new(
            ErrorKind::UpstreamClosed,
            "upstream closed the connection before responding",
        )),
        Err(Sent::Read(ReadError::Truncated)) => Try::Failed(Error::new(
            ErrorKind::UpstreamClosed,
            "upstream closed the connection before the whole response",
        )),
        Err(Sent::Read(ReadError::Invalid(m))) => {
            Try::Failed(Error::new(ErrorKind::InvalidResponse, m))
        }
        Err(Sent::Read(ReadError::TooLarge(status))) => Try::TooLarge(status),
    }
}

/// Why [`send`] did not get a whole response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The request could not be written (the connection is broken).
    NotWritten,
    /// The response could not be read.
    Read(ReadError),
}

/// Writes `request` on `s` and feeds what comes back to `reader` until
/// the response is whole. A read error before any response byte counts as
/// [`ReadError::Nothing`] (a reset is a close), after it as
/// [`ReadError::Truncated`]. No deadline of its own: the caller's timer
/// bounds it.
pub async fn send<S: AsyncReadRent + AsyncWriteRent>(
    s: &mut S,
    request: Vec<u8>,
    reader: &mut ResponseReader,
) -> Result<(), Sent> {
    let (r, _) = s.write_all(request).await;
    if r.is_err() {
        return Err(Sent::NotWritten);
    }
    loop {
        let (r, buf) = crate::http::conn::read_more(s, reader.take_buf()).await;
        reader.put_buf(buf);
        let step = match r {
            Ok(n) if n > 0 => reader.advance(),
            Ok(_) => reader.eof(),
            Err(_) => match reader.eof() {
                // A reset ends a body delimited by the close no better than
                // any other: cut short.
                Ok(_) => Err(ReadError::Truncated),
                Err(e) => Err(e),
            },
        };
        match step {
            Ok(Progress::Done) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(Sent::Read(e)),
        }
    }
}

/// A request in flight to a target (its `least_conn` count) for as long
/// as this lives, however the try ends.
struct InFlight<'a>(&'a TargetState);

impl<'a> InFlight<'a> {
    fn begin(t: &'a TargetState) -> Self {
        t.begin();
        InFlight(t)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::worker::WorkerShared;
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A backend on its own thread: each connection is served by
    /// `answer(connection index, request index)`, which returns the bytes
    /// to write and whether to close afterwards. Counts connections.
    fn backend(
        answer: impl Fn(usize, usize) -> (&'static [u8], bool) + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let seen = conns.clone();
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            for (i, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { return };
                seen.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut n = 0;
                    loop {
                        let mut b = [0u8; 1024];
                        match s.read(&mut b) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => buf.extend_from_slice(&b[..k]),
                        }
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let (bytes, close) = answer(i, n);
                            n += 1;
                            let _ = s.write_all(bytes);
                            if close {
                                break;
                            }
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    fn worker(targets: &[SocketAddr], extra: &str) -> Worker {
        let list: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
        let config = Arc::new(
            Config::parse(&format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n\
                 [upstreams.up]\ntargets = [{}]\n{extra}\n\n\
                 [[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"up\"\n",
                list.join(", ")
            ))
            .expect("valid config"),
        );
        let shared = WorkerShared {
            store: Arc::new(crate::runtime::reload::ConfigStore::new(config.clone())),
            metrics: Arc::new(crate::telemetry::metrics::WorkerMetrics::new(2, 1)),
            features: Default::default(),
            cores: Default::default(),
            edge: Default::default(),
        };
        Worker::new(0, config, &shared)
    }

    /// Runs `f` on a worker-like runtime (io_uring when the kernel allows
    /// it, else epoll).
    fn block_on<F: std::future::Future>(f: impl FnOnce() -> F) -> F::Output {
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => rt.block_on(f()),
            Err(_) => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap()
                .block_on(f()),
        }
    }

    async fn get(w: &Worker) -> Result<Answer, Error> {
        let snap = w.generation();
        let until = Instant::now() + Duration::from_secs(5);
        exchange(w, &snap, &Request::get(0, b"/x", until, 1024)).await
    }

    /// A pooled connection the backend closed while it was idle is
    /// replaced by a fresh one (or retired at check-out), and the request
    /// is answered.
    #[test]
    fn a_closed_pooled_connection_is_replaced_by_a_fresh_one() {
        let (addr, conns) = backend(|conn, _| match conn {
            // Keep-alive announced, then closed.
            0 => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst", true),
            _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond", false),
        });
        let w = worker(&[addr], "");
        let (a, b) = block_on(|| async {
            let a = get(&w).await.map(|a| a.response.into_body());
            // Let the backend's close arrive, without a turn of the ring.
            std::thread::sleep(Duration::from_millis(50));
            let b = get(&w).await.map(|a| a.response.into_body());
            (a, b)
        });
        assert_eq!(a.unwrap(), b"first");
        assert_eq!(b.unwrap(), b"second");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        // Two connections opened. On io_uring the idle watch's completion
        // was not reaped yet, so the closed connection was checked out,
        // failed before any response byte and was replaced (one reuse
        // counted); on epoll the check-out peek retired it.
        assert_eq!(w.metrics.connects[0].get(), 2);
        assert!(w.metrics.reused[0].get() <= 1);
    }

    /// Connect failures go to another target for any method; a 503 is
    /// retried only for an idempotent request.
    #[test]
    fn retries_follow_the_forwarding_rules() {
        let refused = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (live, _) = backend(|_, _| (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false));
        let w = worker(&[refused, live], "retries = 1");
        block_on(|| async {
            let snap = w.generation();
            let until = Instant::now() + Duration::from_secs(5);
            for _ in 0..4 {
                let post = Request {
                    method: b"POST",
                    body: b"{}",
                    ..Request::get(0, b"/x", until, 1024)
                };
                let a = exchange(&w, &snap, &post).await.unwrap();
                assert_eq!((a.response.status(), a.addr), (200, live));
            }
        });

        let (busy, _) = backend(|_, _| (b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", false));
        let w = worker(&[busy, live], "retries = 1");
        block_on(|| async {
            let snap = w.generation();
            let until = Instant::now() + Duration::from_secs(5);
            let mut post_503 = 0;
            for _ in 0..4 {
                let a = get(&w).await.unwrap();
                assert_eq!(a.response.status(), 200, "a GET's 503 is retried");
                let post = Request {
                    method: b"POST",
                    ..Request::get(0, b"/x", until, 1024)
                };
                let a = exchange(&w, &snap, &post).await.unwrap();
                post_503 += (a.response.status() == 503) as usize;
            }
            assert!(post_503 > 0, "a POST's 503 is the answer");
        });
    }

    /// An answer over the caller's limit is an error of its own kind.
    #[test]
    fn a_body_over_the_limit_is_response_too_large() {
        let (addr, _) = backend(|_, _| (b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n", true));
        let w = worker(&[addr], "");
        let e = block_on(|| get(&w)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ResponseTooLarge);
    }
}
