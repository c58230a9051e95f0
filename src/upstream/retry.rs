//! The retry budget of one upstream on one worker: retries may be at most
//! `retry_budget_percent` of requests, so retries cannot multiply an
//! outage.
//!
//! A token bucket in hundredths of a retry: every request deposits
//! `percent`, every retry withdraws 100. The bucket starts full and holds
//! at most [`RESERVE`] retries, so a quiet upstream can still retry its
//! first failures, and a sustained outage settles at `percent` retries per
//! hundred requests. Worker-local (`Cell`), no atomics.

use std::cell::Cell;

/// Retries a budget holds at most (and starts with).
pub const RESERVE: u32 = 10;

/// One worker's retry budget for one upstream.
pub struct RetryBudget {
    percent: u32,
    balance: Cell<u32>,
}

impl RetryBudget {
    /// A full budget allowing `percent` retries per 100 requests.
    pub fn new(percent: u32) -> Self {
        RetryBudget {
            percent,
            balance: Cell::new(RESERVE * 100),
        }
    }

    /// Counts a request.
    #[inline]
    pub fn deposit(&self) {
        let b = self.balance.get();
        if b < RESERVE * 100 {
            self.balance.set((b + self.percent).min(RESERVE * 100));
        }
    }

    /// Takes one retry; false when the budget is spent.
    #[inline]
    pub fn withdraw(&self) -> bool {
        let b = self.balance.get();
        if b >= 100 {
            self.balance.set(b - 100);
            true
        } else {
            false
        }
    }

    /// Retries available now.
    pub fn available(&self) -> u32 {
        self.balance.get() / 100
    }
}

/// The retry rule every forward shares (HTTP/1.1, HTTP/2, compose parts):
/// one more try while `retries` allows, a target is left untried (`tried`,
/// a bit per target), the deadline has not passed and the worker's retry
/// budget gives a token. Counts the retries it allows.
pub struct Retries {
    made: u32,
    max: u32,
    targets: usize,
    deadline: std::time::Instant,
}

impl Retries {
    /// For one request: `max` retries over `targets` targets until
    /// `deadline`.
    #[inline]
    pub fn new(max: u32, targets: usize, deadline: std::time::Instant) -> Self {
        Retries {
            made: 0,
            max,
            targets,
            deadline,
        }
    }

    /// Whether another try may be made (taking a budget token if so).
    #[inline]
    pub fn allow(&mut self, tried: u64, budget: &RetryBudget) -> bool {
        let ok = self.may(tried) && budget.withdraw();
        self.made += ok as u32;
        ok
    }

    /// Whether another try could be made, taking nothing.
    #[inline]
    pub fn may(&self, tried: u64) -> bool {
        self.made < self.max
            && (tried.count_ones() as usize) < self.targets
            && std::time::Instant::now() < self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_limits_retries_to_a_share_of_requests() {
        let b = RetryBudget::new(20);
        // The reserve first.
        for _ in 0..RESERVE {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw());
        // Then 20 retries per 100 requests.
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw() {
                retries += 1;
            }
        }
        assert_eq!(retries, 200);
    }

    #[test]
    fn zero_percent_allows_only_the_reserve() {
        let b = RetryBudget::new(0);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.available(), RESERVE);
    }
}
