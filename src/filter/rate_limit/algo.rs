//! The four algorithms, as pure functions over a small state.
//!
//! One [`State`] holds what any algorithm needs: a bucket (token and leaky
//! bucket), a pair of window counters (fixed and sliding window), or a
//! credit balance (a lease of quota from Redis). Every check takes the
//! worker's *share* `s` (0 < s ≤ 1) of the limit: a shard with share `s`
//! runs the algorithm with its capacity and rate scaled by `s`, so the
//! shards of one key add up to the whole limit (see `reconcile`). With one
//! worker the share is 1 and this is the textbook algorithm.
//!
//! Times are nanoseconds on the limiter clock (UNIX-aligned, monotonic), so
//! fixed windows start on wall-clock multiples of `window_s` on every
//! instance.

/// Which algorithm a limit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Rate + burst; the default.
    TokenBucket,
    /// A counter per aligned window.
    FixedWindow,
    /// Previous window weighted by what remains of it, plus the current one.
    SlidingWindow,
    /// Admission at the leak rate; requests over it wait up to
    /// `max_delay_ms`.
    LeakyBucket,
}

impl Algorithm {
    /// Parses the config name.
    pub fn parse(s: &str) -> Option<Algorithm> {
        Some(match s {
            "token_bucket" => Algorithm::TokenBucket,
            "fixed_window" => Algorithm::FixedWindow,
            "sliding_window" => Algorithm::SlidingWindow,
            "leaky_bucket" => Algorithm::LeakyBucket,
            _ => return None,
        })
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::LeakyBucket => "leaky_bucket",
        }
    }

    fn windowed(self) -> bool {
        matches!(self, Algorithm::FixedWindow | Algorithm::SlidingWindow)
    }
}

/// The numbers of one limit (or one tier of it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Requests per window.
    pub limit: u64,
    /// Window length.
    pub window_ns: u64,
    /// Bucket size: `burst` for the token bucket, 1 for the leaky bucket,
    /// `limit` for the windows.
    pub burst: f64,
    /// `limit / window`, per nanosecond.
    pub rate: f64,
    /// Longest a leaky-bucket request may wait.
    pub max_delay_ns: u64,
}

impl Params {
    /// Builds the parameters; `burst` defaults to `limit`.
    pub fn new(
        algorithm: Algorithm,
        limit: u64,
        window_ns: u64,
        burst: Option<u64>,
        max_delay_ns: u64,
    ) -> Params {
        let burst = match algorithm {
            Algorithm::TokenBucket => burst.unwrap_or(limit) as f64,
            Algorithm::LeakyBucket => 1.0,
            _ => limit as f64,
        };
        Params {
            algorithm,
            limit,
            window_ns,
            burst,
            rate: limit as f64 / window_ns as f64,
            max_delay_ns,
        }
    }

    /// The quota a fresh key starts with.
    pub fn fresh_quota(&self) -> f64 {
        self.burst
    }

    /// How long an idle key keeps state that differs from a fresh one: a
    /// window (two for the sliding window) or the time to refill a bucket.
    pub fn memory_ns(&self) -> u64 {
        match self.algorithm {
            Algorithm::FixedWindow => self.window_ns,
            Algorithm::SlidingWindow => 2 * self.window_ns,
            Algorithm::TokenBucket | Algorithm::LeakyBucket => {
                (self.burst / self.rate) as u64 + self.max_delay_ns
            }
        }
    }

    /// The capacity a shard with share `s` enforces. Never below one
    /// request, so a small share still admits (the rounding term of the
    /// stated bound).
    #[inline]
    fn cap(&self, s: f64) -> f64 {
        if s <= 0.0 {
            return 0.0;
        }
        (self.burst * s).max(1.0_f64.min(self.burst))
    }

    /// The fresh state of a key at `now`, scaled by `s`.
    pub fn fresh(&self, s: f64, now: u64) -> State {
        match self.algorithm {
            Algorithm::TokenBucket | Algorithm::LeakyBucket => State::Bucket {
                tokens: self.cap(s),
                at: now,
            },
            _ => State::Window {
                win: now / self.window_ns,
                prev: 0.0,
                cur: 0.0,
            },
        }
    }
}

/// The state of one key (global at the reconciler, a share of it on a
/// worker).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    /// Tokens at time `at` (negative: queued leaky-bucket requests).
    Bucket {
        /// Tokens.
        tokens: f64,
        /// When `tokens` was computed.
        at: u64,
    },
    /// Counts of window `win` and the one before it.
    Window {
        /// Window index (`now / window_ns`).
        win: u64,
        /// Count of window `win - 1`.
        prev: f64,
        /// Count of window `win`.
        cur: f64,
    },
    /// Quota leased from the store and not yet spent.
    Credit {
        /// Requests left.
        balance: f64,
    },
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Check {
    /// Admitted (possibly after `delay_ns`).
    pub admit: bool,
    /// How long the request waits before it goes on (leaky bucket).
    pub delay_ns: u64,
    /// Requests left, as seen from this shard (after this one if
    /// admitted).
    pub remaining: u64,
    /// Until the quota is whole again (or the window ends).
    pub reset_ns: u64,
    /// Until a request would be admitted (when rejected).
    pub retry_ns: u64,
}

impl State {
    /// Brings the state to `now`: refills a bucket, rolls windows.
    #[inline]
    pub fn advance(&mut self, p: &Params, s: f64, now: u64) {
        match self {
            State::Bucket { tokens, at } => {
                if now > *at {
                    let cap = p.cap(s);
                    if *tokens < cap {
                        *tokens = (*tokens + (now - *at) as f64 * p.rate * s).min(cap);
                    }
                    *at = now;
                }
            }
            State::Window { win, prev, cur } => {
                let w = now / p.window_ns;
                if w > *win {
                    *prev = if w == *win + 1 { *cur } else { 0.0 };
                    *cur = 0.0;
                    *win = w;
                }
            }
            State::Credit { .. } => {}
        }
    }

    /// Records `n` requests admitted in window `win` (ignored by buckets
    /// and credit, which take the count as is).
    pub fn spend(&mut self, p: &Params, n: f64, at_win: u64) {
        match self {
            State::Bucket { tokens, .. } => *tokens -= n,
            State::Credit { balance } => *balance -= n,
            State::Window { win, prev, cur } => {
                if at_win == *win {
                    *cur += n;
                } else if at_win + 1 == *win {
                    *prev += n;
                } else if at_win > *win {
                    // Spends from a window this state has not reached yet.
                    self.advance(p, 1.0, at_win * p.window_ns);
                    self.spend(p, n, at_win);
                }
            }
        }
    }

    /// This state scaled to share `s` (a worker's view of a global state).
    pub fn scaled(&self, s: f64) -> State {
        match *self {
            State::Bucket { tokens, at } => State::Bucket {
                tokens: tokens * s,
                at,
            },
            State::Window { win, prev, cur } => State::Window {
                win,
                prev: prev * s,
                cur: cur * s,
            },
            State::Credit { balance } => State::Credit {
                balance: balance * s,
            },
        }
    }

    /// Quota left at this state's time, in whole-key terms for share `s`
    /// (the capacity minus the use).
    pub fn available(&self, p: &Params, s: f64, now: u64) -> f64 {
        match *self {
            State::Bucket { tokens, .. } => tokens,
            State::Credit { balance } => balance,
            State::Window { win, prev, cur } => {
                let cap = p.cap(s);
                match p.algorithm {
                    Algorithm::SlidingWindow => {
                        let f = frac(now, win, p.window_ns);
                        cap - prev * (1.0 - f) - cur
                    }
                    _ => cap - cur,
                }
            }
        }
    }

    /// Decides one request at `now` with share `s`; spends it when
    /// admitted and `commit` is set. The state must be advanced to `now`.
    #[inline]
    pub fn check(&mut self, p: &Params, s: f64, now: u64, commit: bool) -> Check {
        let window_end = ((now / p.window_ns) + 1) * p.window_ns - now;
        if s <= 0.0 {
            // No share of this key on this shard until the next sync.
            return Check {
                admit: false,
                delay_ns: 0,
                remaining: 0,
                reset_ns: window_end.min(p.memory_ns().max(1)),
                retry_ns: 1_000_000_000,
            };
        }
        match self {
            State::Bucket { tokens, .. } => {
                let rate = p.rate * s;
                let cap = p.cap(s);
                let (admit, delay) = if *tokens >= 1.0 {
                    (true, 0)
                } else {
                    let d = ((1.0 - *tokens) / rate) as u64;
                    (
                        p.algorithm == Algorithm::LeakyBucket && d <= p.max_delay_ns,
                        d,
                    )
                };
                let after = if admit { *tokens - 1.0 } else { *tokens };
                if admit && commit {
                    *tokens = after;
                }
                let retry = if admit {
                    0
                } else {
                    delay.saturating_sub(p.max_delay_ns).max(1)
                };
                Check {
                    admit,
                    delay_ns: if admit { delay } else { 0 },
                    remaining: (after.max(0.0) / s).floor().min(p.burst) as u64,
                    reset_ns: ((cap - after).max(0.0) / rate) as u64,
                    retry_ns: retry,
                }
            }
            State::Credit { balance } => {
                let admit = *balance >= 1.0;
                let after = if admit { *balance - 1.0 } else { *balance };
                if admit && commit {
                    *balance = after;
                }
                let reset = if p.algorithm.windowed() {
                    window_end
                } else {
                    let rem = (after.max(0.0) / s).min(p.burst);
                    ((p.burst - rem) / p.rate) as u64
                };
                Check {
                    admit,
                    delay_ns: 0,
                    remaining: (after.max(0.0) / s).floor().min(p.burst) as u64,
                    reset_ns: reset,
                    retry_ns: if admit {
                        0
                    } else if p.algorithm.windowed() {
                        window_end
                    } else {
                        (1.0 / p.rate) as u64
                    },
                }
            }
            State::Window { win, prev, cur } => {
                let cap = p.cap(s);
                let sliding = p.algorithm == Algorithm::SlidingWindow;
                let f = frac(now, *win, p.window_ns);
                let weighted = if sliding { *prev * (1.0 - f) } else { 0.0 };
                let used = weighted + *cur;
                let admit = used + 1.0 <= cap + 1e-9;
                let after = if admit { *cur + 1.0 } else { *cur };
                if admit && commit {
                    *cur = after;
                }
                let left = cap - weighted - after;
                let retry = if admit {
                    0
                } else if !sliding {
                    window_end
                } else {
                    sliding_retry(*prev, *cur, cap, f, p.window_ns)
                };
                Check {
                    admit,
                    delay_ns: 0,
                    remaining: (left.max(0.0) / s).floor().min(p.limit as f64) as u64,
                    reset_ns: window_end,
                    retry_ns: retry.max(1),
                }
            }
        }
    }
}

/// How far into window `win` the time `now` is, 0..1.
#[inline]
fn frac(now: u64, win: u64, window_ns: u64) -> f64 {
    let start = win * window_ns;
    (now.saturating_sub(start) as f64 / window_ns as f64).min(1.0)
}

/// Time until a sliding-window estimate leaves room for one request.
fn sliding_retry(prev: f64, cur: f64, cap: f64, f: f64, window_ns: u64) -> u64 {
    let w = window_ns as f64;
    if cur + 1.0 <= cap && prev > 0.0 {
        // prev * (1 - f') + cur + 1 <= cap
        let f2 = 1.0 - (cap - 1.0 - cur) / prev;
        ((f2 - f).max(0.0) * w) as u64
    } else {
        // Next window: cur * (1 - f'') + 1 <= cap.
        let f2 = if cur > 0.0 {
            (1.0 - (cap - 1.0) / cur).max(0.0)
        } else {
            0.0
        };
        ((1.0 - f) * w + f2 * w) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn run(p: &Params, s: f64, times: impl Iterator<Item = u64>) -> usize {
        let mut st = p.fresh(s, 0);
        let mut n = 0;
        for t in times {
            st.advance(p, s, t);
            if st.check(p, s, t, true).admit {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn token_bucket_burst_then_rate() {
        let p = Params::new(Algorithm::TokenBucket, 10, S, Some(5), 0);
        // 100 requests in the first millisecond: the burst.
        assert_eq!(run(&p, 1.0, (0..100).map(|i| i * 10_000)), 5);
        // One request every 10 ms for 2 s: 5 + 10/s * 2 s.
        let n = run(&p, 1.0, (0..200).map(|i| i * 10_000_000));
        assert!((24..=26).contains(&n), "{n}");
    }

    #[test]
    fn fixed_window_counts_per_window() {
        let p = Params::new(Algorithm::FixedWindow, 10, S, None, 0);
        // 3 windows, 50 requests each.
        let n = run(&p, 1.0, (0..150).map(|i| i * 20_000_000));
        assert_eq!(n, 30);
    }

    #[test]
    fn sliding_window_weighs_previous() {
        let p = Params::new(Algorithm::SlidingWindow, 10, S, None, 0);
        let mut st = p.fresh(1.0, 0);
        for _ in 0..10 {
            assert!(st.check(&p, 1.0, 0, true).admit);
        }
        assert!(!st.check(&p, 1.0, 1, true).admit);
        // Halfway through the next window, half the previous count weighs.
        let t = S + S / 2;
        st.advance(&p, 1.0, t);
        let mut n = 0;
        while st.check(&p, 1.0, t, true).admit {
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn leaky_bucket_queues_up_to_max_delay() {
        // 10/s, wait up to 500 ms: 1 now + 5 queued.
        let p = Params::new(Algorithm::LeakyBucket, 10, S, None, 500_000_000);
        let mut st = p.fresh(1.0, 0);
        let mut delays = Vec::new();
        for _ in 0..10 {
            let c = st.check(&p, 1.0, 0, true);
            if c.admit {
                delays.push(c.delay_ns / 1_000_000);
            }
        }
        assert_eq!(delays.len(), 6, "{delays:?}");
        assert_eq!(&delays[..5], &[0, 100, 200, 300, 400]);
        assert!((499..=500).contains(&delays[5]), "{delays:?}");
    }

    #[test]
    fn shares_add_up_to_the_limit() {
        for alg in [
            Algorithm::TokenBucket,
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
        ] {
            let p = Params::new(alg, 100, S, None, 0);
            let a = run(&p, 0.25, (0..1000).map(|i| i * 1000));
            let b = run(&p, 0.75, (0..1000).map(|i| i * 1000));
            assert_eq!(a + b, 100, "{alg:?}");
        }
    }

    #[test]
    fn retry_and_reset_are_sane() {
        let p = Params::new(Algorithm::FixedWindow, 2, S, None, 0);
        let mut st = p.fresh(1.0, 0);
        let t = S / 4;
        st.advance(&p, 1.0, t);
        let c = st.check(&p, 1.0, t, true);
        assert_eq!((c.remaining, c.reset_ns), (1, 3 * S / 4));
        st.check(&p, 1.0, t, true);
        let c = st.check(&p, 1.0, t, true);
        assert!(!c.admit);
        assert_eq!(c.retry_ns, 3 * S / 4);
    }
}
