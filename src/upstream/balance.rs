//! Target selection on one worker.

use super::pool::UpstreamState;
use crate::config::Balance;

/// Picks a target index for the next request; `skip` is a target to avoid
/// (the one a retry just failed on) when there is another.
#[inline]
pub fn pick(up: &UpstreamState, balance: Balance, skip: Option<usize>) -> usize {
    let n = up.targets.len();
    if n == 1 {
        return 0;
    }
    match balance {
        Balance::RoundRobin => {
            let mut i = up.cursor.get() % n;
            if Some(i) == skip {
                i = (i + 1) % n;
            }
            up.cursor.set(i + 1);
            i
        }
        Balance::LeastConn => {
            // Ties broken round robin so equal targets share load.
            let start = up.cursor.get();
            up.cursor.set(start.wrapping_add(1));
            let mut best = usize::MAX;
            let mut best_load = u32::MAX;
            for k in 0..n {
                let i = (start + k) % n;
                if Some(i) == skip {
                    continue;
                }
                let load = up.targets[i].in_flight.get();
                if load < best_load {
                    best = i;
                    best_load = load;
                }
            }
            if best == usize::MAX { 0 } else { best }
        }
    }
}
