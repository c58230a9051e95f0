//! The circuit breaker of one upstream, shared by every worker through
//! atomics (no lock): one worker's failures open it for all.
//!
//! Closed → open after `failure_threshold` consecutive failures, or when the
//! failure fraction over a rolling window of `window_ms` exceeds
//! `failure_rate` with at least `min_requests` in it. Open for `open_ms`,
//! then half-open: `half_open_probes` requests are admitted; when all of
//! them succeed it closes, the first failure re-opens it.
//!
//! Callers hold a [`Ticket`] per request: it asks [`Breaker::admit`],
//! records the verdict once, and gives a half-open probe slot back when
//! dropped without one. Plain forwarding (`proxy::forward`) and each part
//! of a composed route (`proxy::compose`) use it the same way.
//!
//! Performance notes: [`Breaker::admit`] in the closed state is one relaxed
//! load. Recording a success is a load (plus a store only after a failure);
//! the rolling window, when `failure_rate` is set, costs two `fetch_add`s on
//! a shared bucket per request.

use super::now_ms;
use crate::config::BreakerConfig;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
const BUCKETS: usize = 10;

/// What the breaker says to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go ahead.
    Closed,
    /// Half-open: go ahead as a probe; its result must be recorded (or the
    /// probe released).
    Probe,
    /// Open: do not send.
    Rejected,
}

/// Breaker state, as reported by the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests flow.
    Closed,
    /// Requests get the fallback.
    Open,
    /// Probes are admitted.
    HalfOpen,
}

impl State {
    /// `closed | open | half_open`
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

#[derive(Default)]
struct Bucket {
    epoch: AtomicU64,
    total: AtomicU32,
    failures: AtomicU32,
}

/// One upstream's breaker.
pub struct Breaker {
    failure_threshold: u32,
    failure_rate: Option<f64>,
    min_requests: u32,
    open_ms: u64,
    half_open_probes: u32,
    bucket_ms: u64,
    failure_statuses: [u64; 10],
    state: AtomicU8,
    opened_at: AtomicU64,
    half_open_at: AtomicU64,
    consecutive: AtomicU32,
    probes_admitted: AtomicU32,
    probe_successes: AtomicU32,
    opens: AtomicU64,
    buckets: [Bucket; BUCKETS],
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("consecutive", &self.consecutive.load(Ordering::Relaxed))
            .finish()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: &BreakerConfig) -> Self {
        let mut failure_statuses = [0u64; 10];
        for &s in &cfg.failure_statuses {
            if (s as usize) < 640 {
                failure_statuses[s as usize / 64] |= 1 << (s % 64);
            }
        }
        Breaker {
            failure_threshold: cfg.failure_threshold,
            failure_rate: cfg.failure_rate,
            min_requests: cfg.min_requests.max(1),
            open_ms: cfg.open.as_millis() as u64,
            half_open_probes: cfg.half_open_probes.max(1),
            bucket_ms: (cfg.window.as_millis() as u64 / BUCKETS as u64).max(1),
            failure_statuses,
            state: AtomicU8::new(CLOSED),
            opened_at: AtomicU64::new(0),
            half_open_at: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            probes_admitted: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
            opens: AtomicU64::new(0),
            buckets: Default::default(),
        }
    }

    /// True when a response with this status counts as a failure.
    #[inline]
    pub fn is_failure_status(&self, status: u16) -> bool {
        let s = status as usize;
        s < 640 && self.failure_statuses[s / 64] & (1 << (s % 64)) != 0
    }

    /// Asks to send a request now.
    #[inline]
    pub fn admit(&self) -> Admit {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admit::Closed,
            _ => self.admit_slow(now_ms()),
        }
    }

    fn admit_slow(&self, now: u64) -> Admit {
        loop {
            match self.state.load(Ordering::Acquire) {
                CLOSED => return Admit::Closed,
                OPEN => {
                    let at = self.opened_at.load(Ordering::Acquire);
                    if now < at.saturating_add(self.open_ms) {
                        return Admit::Rejected;
                    }
                    // Probe counters were reset when it opened.
                    self.half_open_at.store(now, Ordering::Release);
                    let _ = self.state.compare_exchange(
                        OPEN,
                        HALF_OPEN,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                _ => {
                    if self.probes_admitted.fetch_add(1, Ordering::AcqRel) < self.half_open_probes {
                        return Admit::Probe;
                    }
                    // Probes that never report (should not happen) must not
                    // wedge it: after another open period, open afresh.
                    let since = self.half_open_at.load(Ordering::Acquire);
                    if now > since.saturating_add(self.open_ms.max(1000) * 2) {
                        self.trip(HALF_OPEN, now.saturating_sub(self.open_ms));
                        continue;
                    }
                    return Admit::Rejected;
                }
            }
        }
    }

    /// Records the result of a request admitted with `admit`.
    #[inline]
    pub fn record(&self, admit: Admit, ok: bool) {
        match admit {
            Admit::Closed => {
                if self.failure_rate.is_some() {
                    self.record_window(now_ms(), ok);
                }
                if ok {
                    if self.consecutive.load(Ordering::Relaxed) != 0 {
                        self.consecutive.store(0, Ordering::Relaxed);
                    }
                } else {
                    self.record_failure();
                }
            }
            Admit::Probe => {
                if ok {
                    let n = self.probe_successes.fetch_add(1, Ordering::AcqRel) + 1;
                    if n >= self.half_open_probes {
                        self.close();
                    }
                } else {
                    self.trip(HALF_OPEN, now_ms());
                }
            }
            Admit::Rejected => {}
        }
    }

    /// Gives back a probe slot whose request ended without a verdict
    /// (the client went away).
    pub fn release(&self, admit: Admit) {
        if admit == Admit::Probe && self.state.load(Ordering::Acquire) == HALF_OPEN {
            let _ = self
                .probes_admitted
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(1))
                });
        }
    }

    #[cold]
    fn record_failure(&self) {
        if self.state.load(Ordering::Acquire) != CLOSED {
            return;
        }
        let now = now_ms();
        let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if self.failure_threshold > 0 && n >= self.failure_threshold {
            self.trip(CLOSED, now);
            return;
        }
        if let Some(rate) = self.failure_rate {
            let (total, failures) = self.window_sum(now);
            if total >= self.min_requests && failures as f64 > rate * total as f64 {
                self.trip(CLOSED, now);
            }
        }
    }

    fn record_window(&self, now: u64, ok: bool) {
        let epoch = now / self.bucket_ms;
        let b = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let old = b.epoch.load(Ordering::Acquire);
        if old != epoch
            && b.epoch
                .compare_exchange(old, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.total.store(0, Ordering::Release);
            b.failures.store(0, Ordering::Release);
        }
        b.total.fetch_add(1, Ordering::AcqRel);
        if !ok {
            b.failures.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn window_sum(&self, now: u64) -> (u32, u32) {
        let epoch = now / self.bucket_ms;
        let mut total = 0;
        let mut failures = 0;
        for b in &self.buckets {
            let e = b.epoch.load(Ordering::Acquire);
            if e + (BUCKETS as u64) > epoch && e <= epoch {
                total += b.total.load(Ordering::Acquire);
                failures += b.failures.load(Ordering::Acquire);
            }
        }
        (total, failures)
    }

    fn trip(&self, from: u8, now: u64) {
        self.opened_at.store(now, Ordering::Release);
        self.probes_admitted.store(0, Ordering::Release);
        self.probe_successes.store(0, Ordering::Release);
        if self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.consecutive.store(0, Ordering::Release);
            self.opens.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("circuit breaker opened");
        }
    }

    fn close(&self) {
        if self
            .state
            .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.consecutive.store(0, Ordering::Release);
            for b in &self.buckets {
                b.total.store(0, Ordering::Release);
                b.failures.store(0, Ordering::Release);
            }
            tracing::info!("circuit breaker closed");
        }
    }

    /// The current state (an open breaker past `open_ms` reports
    /// half-open: the next request will probe).
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            CLOSED => State::Closed,
            OPEN => {
                let at = self.opened_at.load(Ordering::Acquire);
                if now_ms() >= at.saturating_add(self.open_ms) {
                    State::HalfOpen
                } else {
                    State::Open
                }
            }
            _ => State::HalfOpen,
        }
    }

    /// Milliseconds until an open breaker admits a probe (0 if not open).
    pub fn retry_after_ms(&self) -> u64 {
        if self.state.load(Ordering::Acquire) != OPEN {
            return 0;
        }
        let at = self.opened_at.load(Ordering::Acquire);
        at.saturating_add(self.open_ms).saturating_sub(now_ms())
    }

    /// `retry_after_ms` in whole seconds for a `Retry-After` header:
    /// rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms().div_ceil(1000).max(1)
    }

    /// Consecutive failures counted while closed.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    /// Times it opened.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }
}

/// A request's standing with its upstream's breaker: what it admitted,
/// and whether the verdict was recorded. A ticket dropped without a
/// verdict (the client went away, its request was bad, or the attempt was
/// abandoned) gives a half-open probe slot back. Without a breaker it
/// admits everything and records nothing.
pub struct Ticket<'a> {
    breaker: Option<&'a Breaker>,
    admit: Admit,
    done: bool,
}

impl<'a> Ticket<'a> {
    /// Asks `breaker` (if any) to admit a request now.
    #[inline]
    pub fn new(breaker: Option<&'a Breaker>) -> Self {
        let admit = breaker.map_or(Admit::Closed, |b| b.admit());
        Ticket {
            breaker,
            admit,
            // Nothing to record or release without a breaker, or when it
            // refused.
            done: breaker.is_none() || admit == Admit::Rejected,
        }
    }

    /// True when the breaker is open: do not send.
    #[inline]
    pub fn rejected(&self) -> bool {
        self.admit == Admit::Rejected
    }

    /// Records the verdict (once; later calls do nothing).
    #[inline]
    pub fn record(&mut self, ok: bool) {
        if !self.done {
            self.done = true;
            if let Some(b) = self.breaker {
                b.record(self.admit, ok);
            }
        }
    }

    /// Records a response's status: a failure when the breaker counts it
    /// as one ([`Breaker::is_failure_status`]).
    #[inline]
    pub fn record_status(&mut self, status: u16) {
        let ok = self.breaker.is_none_or(|b| !b.is_failure_status(status));
        self.record(ok);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done
            && let Some(b) = self.breaker
        {
            b.release(self.admit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(threshold: u32, rate: Option<f64>) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: threshold,
            failure_rate: rate,
            min_requests: 10,
            window: Duration::from_secs(10),
            open: Duration::from_millis(50),
            half_open_probes: 2,
            failure_statuses: vec![500, 502, 503, 504],
        }
    }

    #[test]
    fn opens_after_threshold_half_opens_and_closes() {
        let b = Breaker::new(&cfg(3, None));
        for _ in 0..2 {
            assert_eq!(b.admit(), Admit::Closed);
            b.record(Admit::Closed, false);
        }
        b.record(Admit::Closed, true);
        for _ in 0..3 {
            assert_eq!(b.admit(), Admit::Closed);
            b.record(Admit::Closed, false);
        }
        assert_eq!(b.admit(), Admit::Rejected);
        assert_eq!(b.state(), State::Open);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::Rejected);
        b.record(Admit::Probe, true);
        assert_eq!(b.state(), State::HalfOpen);
        b.record(Admit::Probe, true);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(), Admit::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let b = Breaker::new(&cfg(1, None));
        b.record(Admit::Closed, false);
        assert_eq!(b.admit(), Admit::Rejected);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admit::Probe);
        b.record(Admit::Probe, false);
        assert_eq!(b.admit(), Admit::Rejected);
        assert_eq!(b.opens(), 2);
    }

    #[test]
    fn opens_on_failure_rate() {
        let b = Breaker::new(&cfg(0, Some(0.5)));
        for i in 0..20 {
            assert_eq!(b.admit(), Admit::Closed, "request {i}");
            b.record(Admit::Closed, i % 3 != 0);
        }
        assert_eq!(b.state(), State::Closed, "a third failing is under 50%");
        for _ in 0..20 {
            if b.admit() == Admit::Rejected {
                break;
            }
            b.record(Admit::Closed, false);
        }
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn ticket_dropped_without_verdict_gives_the_probe_back() {
        let b = Breaker::new(&cfg(1, None));
        b.record(Admit::Closed, false);
        assert!(Ticket::new(Some(&b)).rejected());
        std::thread::sleep(Duration::from_millis(60));
        for _ in 0..3 {
            // Abandoned probes: each one's slot comes back.
            let t = Ticket::new(Some(&b));
            assert_eq!(t.admit, Admit::Probe);
            drop(t);
        }
        let mut t = Ticket::new(Some(&b));
        t.record_status(503);
        assert!(Ticket::new(Some(&b)).rejected(), "a failed probe re-opens");
        assert_eq!(b.opens(), 2);
        assert!(!Ticket::new(None).rejected());
    }

    #[test]
    fn failure_statuses() {
        let b = Breaker::new(&cfg(1, None));
        assert!(b.is_failure_status(503));
        assert!(!b.is_failure_status(501));
        assert!(!b.is_failure_status(200));
    }
}
