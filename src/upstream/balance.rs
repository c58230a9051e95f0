//! Target selection on one worker.
//!
//! [`pick`] chooses among the targets of a [`TargetList`] that are
//! available (healthy, not ejected, weight > 0) and not yet tried by this
//! request (`tried`, a bitmask of indices), with the upstream's algorithm:
//!
//! - `round_robin`: the worker's cursor walks the list;
//! - `weighted`: smooth weighted round robin (nginx's), evenly interleaved;
//! - `least_conn`: fewest of this worker's in-flight requests per weight,
//!   ties broken round robin;
//! - `p2c_ewma`: two random candidates, the one with the lower peak-EWMA
//!   latency × (in-flight + 1) / weight wins;
//! - `consistent_hash`: weighted rendezvous hashing of the request key with
//!   a fixed seed: every worker and instance agrees, and removing a target
//!   moves only the keys it won. Without a key it falls back to round robin.
//!
//! Performance notes: no allocation; one pass over the targets at most
//! (two for `p2c_ewma`). Availability is two relaxed atomic loads.

use super::hash::{rendezvous_hash, rendezvous_score};
use super::now_ms;
use super::pool::{TargetList, TargetState, UpstreamState};
use crate::config::Balance;
use std::time::Instant;

/// The config name of an algorithm.
pub fn name(b: Balance) -> &'static str {
    match b {
        Balance::RoundRobin => "round_robin",
        Balance::Weighted => "weighted",
        Balance::LeastConn => "least_conn",
        Balance::P2cEwma => "p2c_ewma",
        Balance::ConsistentHash => "consistent_hash",
    }
}

#[inline]
fn tried_has(tried: u64, i: usize) -> bool {
    i < 64 && tried & (1 << i) != 0
}

/// Marks index `i` as tried.
#[inline]
pub fn mark(tried: &mut u64, i: usize) {
    if i < 64 {
        *tried |= 1 << i;
    }
}

/// Picks a target index for the next try, or `None` when no target is
/// available that this request has not tried.
#[inline]
pub fn pick(
    up: &UpstreamState,
    list: &TargetList,
    balance: Balance,
    key: Option<u64>,
    tried: u64,
) -> Option<usize> {
    let ts = &list.targets;
    let n = ts.len();
    // Ejection times are only compared when outlier detection can eject.
    let now = if up.shared.has_outlier() { now_ms() } else { 0 };
    let ok = |i: usize| !tried_has(tried, i) && ts[i].shared.is_available(now);
    if n <= 1 {
        return (n == 1 && ok(0)).then_some(0);
    }
    match balance {
        Balance::RoundRobin => round_robin(up, n, ok),
        Balance::Weighted => {
            let mut total: i64 = 0;
            let mut best: Option<&TargetState> = None;
            let mut best_i = 0;
            for (i, t) in ts.iter().enumerate() {
                if !ok(i) {
                    continue;
                }
                let w = t.shared.weight() as i64;
                let c = t.current.get() + w;
                t.current.set(c);
                total += w;
                if best.is_none_or(|b| c > b.current.get()) {
                    best = Some(t);
                    best_i = i;
                }
            }
            let b = best?;
            b.current.set(b.current.get() - total);
            Some(best_i)
        }
        Balance::LeastConn => {
            let start = up.cursor.get() % n;
            up.cursor.set(start + 1);
            let mut best: Option<(usize, u64, u64)> = None;
            let mut i = start;
            for _ in 0..n {
                if ok(i) {
                    let load = ts[i].in_flight.get() as u64 + 1;
                    let w = ts[i].shared.weight() as u64;
                    // load / w < best_load / best_w
                    if best.is_none_or(|(_, bl, bw)| load * bw < bl * w) {
                        best = Some((i, load, w));
                    }
                }
                i += 1;
                if i == n {
                    i = 0;
                }
            }
            best.map(|b| b.0)
        }
        Balance::P2cEwma => {
            let r = up.next_random();
            // Two distinct random candidates; when either is out, draw
            // among the available ones only.
            let a = (r % n as u64) as usize;
            let mut b = ((r >> 32) % (n as u64 - 1)) as usize;
            if b >= a {
                b += 1;
            }
            let (ia, ib) = if ok(a) && ok(b) {
                (a, b)
            } else {
                let avail = (0..n).filter(|&i| ok(i)).count();
                match avail {
                    0 => return None,
                    1 => return (0..n).find(|&i| ok(i)),
                    _ => {
                        let a = ((r >> 16) % avail as u64) as usize;
                        let mut b = ((r >> 40) % (avail as u64 - 1)) as usize;
                        if b >= a {
                            b += 1;
                        }
                        let nth = |k: usize| (0..n).filter(|&i| ok(i)).nth(k).unwrap_or(0);
                        (nth(a), nth(b))
                    }
                }
            };
            let now = Instant::now();
            if cost(&ts[ib], now) < cost(&ts[ia], now) {
                Some(ib)
            } else {
                Some(ia)
            }
        }
        Balance::ConsistentHash => {
            let Some(key) = key else {
                return round_robin(up, n, ok);
            };
            if list.uniform_weights {
                // Equal weights: the largest pair hash wins (the same
                // order as the weighted score, without a logarithm).
                let mut best: Option<(usize, u64)> = None;
                for (i, t) in ts.iter().enumerate() {
                    if !ok(i) {
                        continue;
                    }
                    let s = rendezvous_hash(key, t.shared.addr_hash);
                    if best.is_none_or(|(_, bs)| s > bs) {
                        best = Some((i, s));
                    }
                }
                return best.map(|b| b.0);
            }
            let mut best: Option<(usize, f64)> = None;
            for (i, t) in ts.iter().enumerate() {
                if !ok(i) {
                    continue;
                }
                let s = rendezvous_score(key, t.shared.addr_hash, t.shared.weight());
                if best.is_none_or(|(_, bs)| s > bs) {
                    best = Some((i, s));
                }
            }
            best.map(|b| b.0)
        }
    }
}

#[inline]
fn round_robin(up: &UpstreamState, n: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    let mut i = up.cursor.get() % n;
    for _ in 0..n {
        if ok(i) {
            up.cursor.set(i + 1);
            return Some(i);
        }
        i += 1;
        if i == n {
            i = 0;
        }
    }
    None
}

/// `p2c_ewma`'s cost of sending one more request to `t`.
#[inline]
fn cost(t: &TargetState, now: Instant) -> f64 {
    // 1 µs floor so in-flight counts still separate targets with no samples.
    let lat = t.decayed(now).max(1000.0);
    lat * (t.in_flight.get() as f64 + 1.0) / t.shared.weight().max(1) as f64
}
