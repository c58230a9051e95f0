//! A log-linear latency histogram in HdrHistogram form: 16 exact buckets
//! below 16 µs, then 8 sub-buckets per power of two (about 12 % relative
//! precision), up to 2^40 µs. One writer (the owning worker) updates it with
//! plain relaxed loads and stores; the scraper reads it and merges workers
//! only when `/metrics` is requested.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const SUB: u32 = 8;
const LINEAR: u64 = 16;
/// Number of buckets.
pub const BUCKETS: usize = 16 + (40 - 4) * 8;

/// Bucket index of a value in microseconds.
#[inline]
pub fn bucket(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let e = 63 - us.leading_zeros();
    let e = e.min(39);
    let sub = ((us >> (e - 3)) & (SUB as u64 - 1)) as usize;
    (LINEAR as usize + (e as usize - 4) * SUB as usize + sub).min(BUCKETS - 1)
}

/// Upper bound (exclusive) of bucket `i`, in microseconds.
pub fn upper(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64 + 1;
    }
    let k = i - LINEAR as usize;
    let e = (k / SUB as usize) as u32 + 4;
    let sub = (k % SUB as usize) as u64;
    (1u64 << e) + ((sub + 1) << (e - 3))
}

/// One histogram (single writer).
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records a value (owning thread only).
    #[inline]
    pub fn record(&self, us: u64) {
        let c = &self.counts[bucket(us)];
        c.store(c.load(Relaxed) + 1, Relaxed);
        self.sum_us.store(self.sum_us.load(Relaxed) + us, Relaxed);
    }

    /// Adds this histogram's counts into `into` (len [`BUCKETS`]); returns
    /// the sum of values in µs.
    pub fn merge_into(&self, into: &mut [u64]) -> u64 {
        for (a, c) in into.iter_mut().zip(self.counts.iter()) {
            *a += c.load(Relaxed);
        }
        self.sum_us.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover() {
        let mut last = 0;
        for us in [0u64, 1, 15, 16, 17, 100, 1000, 12345, 1 << 30, u64::MAX] {
            let b = bucket(us);
            assert!(b >= last);
            last = b;
            if us < (1 << 39) {
                assert!(upper(b) > us, "{us} -> {b} upper {}", upper(b));
                if b > 0 {
                    assert!(upper(b - 1) <= us, "{us}");
                }
            }
        }
    }
}
