//! Per-worker keep-alive pools, one LIFO stack of idle connections per
//! target (the most recently used socket is the warmest and the least
//! likely to have been closed by the backend).
//!
//! A connection that goes back to the pool has a readiness poll armed on
//! it ([`PoolConn`]): in the ring a `POLL_ADD` (submitted with the next
//! batch, no syscall of its own), on the epoll fallback the driver's
//! readiness. Whatever makes it readable while idle (a stray response, an
//! EOF, a reset) retires it before a request can use it, so a byte the
//! backend sent unasked can never be read as the answer to the next
//! client's request. Connections idle past the upstream's
//! `idle_timeout_ms` are closed by the worker's sweeper.
//!
//! Targets come from the upstream's shared snapshot ([`UpstreamShared`]);
//! [`UpstreamState::list`] mirrors it on this worker, keeping each target's
//! pool and counters while its address stays and closing the pools of
//! targets discovery removed.

use super::retry::RetryBudget;
use super::shared::{TargetShared, UpstreamShared};
use super::tls::{UpStream, UpstreamTls};
use crate::config::UpstreamConfig;
use crate::error::{Error, ErrorKind};
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

/// An upstream connection and the readiness watch it carries while idle
/// in a pool. One allocation per connection (at connect), none per
/// request.
///
/// The watch polls a second descriptor of the same socket (a `dup`, made
/// once at connect), so the armed wait never borrows the stream a request
/// reads and writes. It stays armed from check-in to the next check-in:
/// checked (not cancelled) at check-out, it completes when the response
/// arrives and is re-armed when the connection goes back to the pool. A
/// wait is only ever dropped while in flight when the connection itself
/// goes (a failure, a tunnel), so the plain path allocates nothing.
pub struct PoolConn(Box<dyn Watch>);

impl PoolConn {
    /// Wraps a connected stream (one `dup` for the watch; without one the
    /// connection is simply never pooled).
    pub fn new(stream: UpStream) -> Self {
        use std::os::fd::{AsRawFd, FromRawFd};
        // On the epoll fallback a peek at check-out is cheaper than a
        // readiness wait (which needs a poll(2) at every check-in to clear
        // the readiness the response left); both are one syscall there.
        let legacy = monoio::utils::is_legacy();
        // SAFETY: dup of a descriptor this stream owns; the new one is
        // owned by the std stream made from it.
        let fd = if legacy {
            -1
        } else {
            unsafe { libc::dup(stream.as_raw_fd()) }
        };
        let watcher = (fd >= 0)
            .then(|| {
                // SAFETY: `fd` is a fresh descriptor owned by nobody else.
                let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
                TcpStream::from_std(std).ok()
            })
            .flatten();
        PoolConn(Box::new(Watched {
            fut: None,
            fired: false,
            make: |s: &'static TcpStream| s.readable(false),
            peek: legacy,
            watcher,
            stream,
        }))
    }

    /// The stream, for good (a tunnel).
    pub fn into_stream(self) -> UpStream {
        self.0.into_stream()
    }

    /// Arms the watch for an idle spell; false when it cannot be watched
    /// (then it must not be pooled).
    fn arm(&mut self) -> bool {
        self.0.arm()
    }

    /// True when the connection became readable while idle: it must not
    /// carry another request. The watch stays armed otherwise.
    fn stirred(&mut self) -> bool {
        self.0.stirred()
    }
}

impl std::ops::Deref for PoolConn {
    type Target = UpStream;
    #[inline]
    fn deref(&self) -> &UpStream {
        self.0.stream()
    }
}

impl std::ops::DerefMut for PoolConn {
    #[inline]
    fn deref_mut(&mut self) -> &mut UpStream {
        self.0.stream_mut()
    }
}

/// The watch behind [`PoolConn`], object-safe so the future's type (an
/// `async fn`'s, which has no name) stays inside.
trait Watch {
    fn stream(&self) -> &UpStream;
    fn stream_mut(&mut self) -> &mut UpStream;
    fn into_stream(self: Box<Self>) -> UpStream;
    fn arm(&mut self) -> bool;
    fn stirred(&mut self) -> bool;
}

struct Watched<F, M> {
    /// The armed readiness wait; borrows `watcher`. Declared first so it
    /// is dropped before it.
    fut: Option<F>,
    /// The wait completed since it was armed.
    fired: bool,
    make: M,
    /// Epoll fallback: no armed wait; a non-blocking peek at check-out.
    peek: bool,
    /// A second descriptor of the socket, only ever polled.
    watcher: Option<TcpStream>,
    stream: UpStream,
}

impl<F, M> Watched<F, M>
where
    F: Future<Output = io::Result<()>>,
{
    /// Polls the armed wait once, with a waker that does nothing: the
    /// first poll submits it, a later one reads whether it completed.
    fn poll_once(&mut self) {
        let Some(f) = self.fut.as_mut() else {
            return;
        };
        // SAFETY: `fut` lives inside the boxed `Watched`, which is never
        // moved out of while `fut` is `Some`; it is only ever dropped in
        // place (by assigning `None`), so it stays pinned.
        let f = unsafe { Pin::new_unchecked(f) };
        if f.poll(&mut Context::from_waker(Waker::noop())).is_ready() {
            self.fired = true;
            self.fut = None;
        }
    }
}

impl<F, M> Watch for Watched<F, M>
where
    F: Future<Output = io::Result<()>>,
    M: Fn(&'static TcpStream) -> F,
{
    fn stream(&self) -> &UpStream {
        &self.stream
    }

    fn stream_mut(&mut self) -> &mut UpStream {
        &mut self.stream
    }

    fn into_stream(mut self: Box<Self>) -> UpStream {
        self.fut = None;
        let Watched { stream, .. } = *self;
        stream
    }

    fn arm(&mut self) -> bool {
        if self.peek {
            return true;
        }
        if self.watcher.is_none() {
            return false;
        }
        // Still pending since the last check-in: nothing was readable in
        // between (the response completed the last one), so it still
        // watches.
        self.poll_once();
        if self.fut.is_some() {
            return true;
        }
        self.fired = false;
        // SAFETY: `watcher` lives in the same heap allocation as the
        // future that borrows it, is never lent mutably or moved while the
        // box lives, and is dropped after the future (field order;
        // `into_stream` drops the future first), so the borrow never
        // dangles.
        let w: &'static TcpStream = match self.watcher.as_ref() {
            Some(w) => unsafe { &*(w as *const TcpStream) },
            None => return false,
        };
        self.fut = Some((self.make)(w));
        self.poll_once();
        !self.fired
    }

    fn stirred(&mut self) -> bool {
        let readable = if self.peek {
            !quiet(&self.stream)
        } else {
            self.poll_once();
            self.fired
        };
        // A TLS connection may have received session tickets or a key
        // update while idle: read through rustls before retiring it.
        readable && !self.stream.still_clean()
    }
}

/// An idle upstream connection.
pub struct Pooled {
    /// The connection, its readiness watch armed.
    pub stream: PoolConn,
    /// When it went idle.
    /// When it was returned, on the worker's coarse clock (ms).
    pub since: u64,
}

/// One target of an upstream, on one worker. Kept (same `Rc`) across
/// discovery snapshots while its address stays.
pub struct TargetState {
    /// State shared with the other workers (health, ejection, weight).
    pub shared: Arc<TargetShared>,
    /// Its address.
    pub addr: SocketAddr,
    /// Idle connections, most recent last.
    pub idle: RefCell<Vec<Pooled>>,
    /// Requests this worker has in flight to it.
    pub in_flight: Cell<u32>,
    /// Peak-EWMA of response-head latency, in ns (`p2c_ewma`).
    pub ewma_ns: Cell<f64>,
    /// When `ewma_ns` was last updated.
    pub ewma_at: Cell<Instant>,
    /// Smooth weighted round robin's current weight (`weighted`).
    pub current: Cell<i64>,
    /// Set when discovery removed it: its connections are not pooled.
    pub removed: Cell<bool>,
    /// The worker's HTTP/2 connection to it (`protocol = "h2"`).
    pub h2: RefCell<Option<super::h2::H2Conn>>,
}

impl TargetState {
    fn new(shared: Arc<TargetShared>, max_idle: usize) -> Self {
        TargetState {
            addr: shared.addr,
            shared,
            idle: RefCell::new(Vec::with_capacity(max_idle.min(64))),
            in_flight: Cell::new(0),
            ewma_ns: Cell::new(0.0),
            ewma_at: Cell::new(Instant::now()),
            current: Cell::new(0),
            removed: Cell::new(false),
            h2: RefCell::new(None),
        }
    }

    /// One more request in flight.
    #[inline]
    pub fn begin(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    /// One request less in flight.
    #[inline]
    pub fn end(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
    }

    /// Feeds a response-head latency into the peak EWMA: a slower sample
    /// replaces it at once, faster ones pull it down with time decay.
    #[inline]
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let cur = self.decayed(now);
        self.ewma_ns.set(if rtt > cur {
            rtt
        } else {
            let w = (-(now.saturating_duration_since(self.ewma_at.get()).as_nanos() as f64)
                / EWMA_DECAY_NS)
                .exp();
            cur * w + rtt * (1.0 - w).max(EWMA_MIN_WEIGHT)
        });
        self.ewma_at.set(now);
    }

    /// The EWMA decayed towards zero for the time since the last sample, so
    /// a target left alone is tried again.
    #[inline]
    pub fn decayed(&self, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.ewma_at.get()).as_nanos() as f64;
        self.ewma_ns.get() * (-age / EWMA_DECAY_NS).exp()
    }
}

/// Time constant of the latency EWMA.
const EWMA_DECAY_NS: f64 = 10e9;
/// Least weight a new sample gets (requests arriving close together).
const EWMA_MIN_WEIGHT: f64 = 0.1;

/// The targets of an upstream as one worker sees them: a snapshot version
/// and the worker-local state of each target. A request holds the `Rc` of
/// the list it picked from for its whole life, so indices stay valid when
/// discovery publishes a new one meanwhile.
pub struct TargetList {
    /// The shared snapshot version this list mirrors.
    pub version: u64,
    /// Targets, in snapshot order.
    pub targets: Vec<Rc<TargetState>>,
    /// Every target has the same weight (hashing skips the weighting).
    pub uniform_weights: bool,
}

fn uniform(set: &super::shared::TargetSet) -> bool {
    set.targets
        .windows(2)
        .all(|w| w[0].weight() == w[1].weight())
}

/// One upstream on one worker.
pub struct UpstreamState {
    /// State shared with the other workers and the control plane.
    pub shared: Arc<UpstreamShared>,
    list: RefCell<Rc<TargetList>>,
    /// Round-robin cursor.
    pub cursor: Cell<usize>,
    /// xorshift state (`p2c_ewma`, splits).
    pub rng: Cell<u64>,
    /// This worker's retry budget.
    pub budget: RetryBudget,
    /// Most idle connections kept per target.
    pub max_idle: usize,
    /// Idle timeout.
    pub idle_timeout: Duration,
}

impl UpstreamState {
    /// Worker-local state for an upstream.
    pub fn new(cfg: &UpstreamConfig, worker: usize) -> Self {
        let shared = cfg.state.clone();
        let set = shared.snapshot();
        let list = TargetList {
            version: set.version,
            uniform_weights: uniform(&set),
            targets: set
                .targets
                .iter()
                .map(|t| Rc::new(TargetState::new(t.clone(), cfg.max_idle_per_target)))
                .collect(),
        };
        UpstreamState {
            shared,
            list: RefCell::new(Rc::new(list)),
            // Workers start at different targets so they spread load.
            cursor: Cell::new(worker),
            rng: Cell::new(super::hash::mix(worker as u64 ^ 0x5eed) | 1),
            budget: RetryBudget::new(cfg.retry_budget_percent),
            max_idle: cfg.max_idle_per_target,
            idle_timeout: cfg.idle_timeout,
        }
    }

    /// The current target list, refreshed first when discovery published a
    /// new snapshot (one atomic load when it did not). Targets that left
    /// are marked removed and their idle connections closed.
    #[inline]
    pub fn list(&self) -> Rc<TargetList> {
        let v = self.shared.version();
        {
            let l = self.list.borrow();
            if l.version == v {
                return l.clone();
            }
        }
        self.refresh()
    }

    #[cold]
    fn refresh(&self) -> Rc<TargetList> {
        let set = self.shared.snapshot();
        let old = self.list.borrow().clone();
        let targets: Vec<Rc<TargetState>> = set
            .targets
            .iter()
            .map(
                |t| match old.targets.iter().find(|o| Arc::ptr_eq(&o.shared, t)) {
                    Some(o) => o.clone(),
                    None => Rc::new(TargetState::new(t.clone(), self.max_idle)),
                },
            )
            .collect();
        for o in &old.targets {
            if !targets.iter().any(|n| Rc::ptr_eq(n, o)) {
                o.removed.set(true);
                o.idle.borrow_mut().clear();
            }
        }
        let list = Rc::new(TargetList {
            version: set.version,
            uniform_weights: uniform(&set),
            targets,
        });
        *self.list.borrow_mut() = list.clone();
        list
    }

    /// Takes a live idle connection to `t`, if any: one the backend sent
    /// nothing on (not even an EOF) since it went idle.
    /// `now`: the worker's coarse clock (ms).
    pub fn checkout(&self, t: &TargetState, now: u64) -> Option<PoolConn> {
        let mut idle = t.idle.borrow_mut();
        while let Some(mut p) = idle.pop() {
            let age = now.saturating_sub(p.since);
            if age >= self.idle_timeout.as_millis() as u64 || p.stream.stirred() {
                continue;
            }
            return Some(p.stream);
        }
        None
    }

    /// Returns a connection to the pool (dropped when the pool is full or
    /// the target was removed), its readiness watch armed.
    pub fn checkin(&self, t: &TargetState, mut stream: PoolConn, now: u64) {
        if t.removed.get() {
            return;
        }
        let mut idle = t.idle.borrow_mut();
        if idle.len() < self.max_idle && stream.arm() {
            idle.push(Pooled { stream, since: now });
        }
    }

    /// Closes idle connections older than the idle timeout (and picks up a
    /// new snapshot, closing connections to removed targets).
    pub fn sweep(&self, now: u64) {
        let list = self.list();
        let max = self.idle_timeout.as_millis() as u64;
        for t in &list.targets {
            t.idle
                .borrow_mut()
                .retain(|p| now.saturating_sub(p.since) < max);
        }
    }

    /// Idle connections across targets.
    pub fn idle_count(&self) -> usize {
        self.list
            .borrow()
            .targets
            .iter()
            .map(|t| t.idle.borrow().len())
            .sum()
    }

    /// Next pseudo-random number (xorshift64*).
    #[inline]
    pub fn next_random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// True when a non-blocking peek finds nothing to read: no byte, no EOF,
/// no error (the epoll fallback's check-out test).
fn quiet(stream: &UpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: recv on a valid fd into a 1-byte stack buffer.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr() as *mut libc::c_void,
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// Connects to `addr` within `timeout`, with `TCP_NODELAY`, and for a
/// TLS upstream (`tls`) completes the handshake within the same timeout.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<PoolConn, ConnectError> {
    let connecting = async {
        let s = TcpStream::connect_addr(addr)
            .await
            .map_err(ConnectError::Failed)?;
        let _ = s.set_nodelay(true);
        match tls {
            None => Ok(UpStream::Plain(s)),
            Some(t) => super::tls::handshake(s, t, addr)
                .await
                .map_err(ConnectError::Tls),
        }
    };
    match monoio::time::timeout(timeout, connecting).await {
        Ok(Ok(s)) => Ok(PoolConn::new(s)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectError::TimedOut),
    }
}

/// Why a connect failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Refused, unreachable, reset.
    Failed(io::Error),
    /// `connect_timeout_ms` passed.
    TimedOut,
    /// The TLS handshake failed (certificate not trusted, wrong name, no
    /// common protocol).
    Tls(io::Error),
}

impl ConnectError {
    /// The request's error: [`ErrorKind::ConnectTimeout`] (504) or
    /// [`ErrorKind::ConnectFailed`] (502), the same for every caller.
    pub fn error(&self) -> Error {
        match self {
            ConnectError::TimedOut => Error::new(
                ErrorKind::ConnectTimeout,
                "timed out connecting to upstream",
            ),
            ConnectError::Failed(_) => {
                Error::new(ErrorKind::ConnectFailed, "upstream refused the connection")
            }
            ConnectError::Tls(_) => Error::new(
                ErrorKind::ConnectFailed,
                "TLS handshake with upstream failed",
            ),
        }
    }
}
