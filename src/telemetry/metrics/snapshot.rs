//! An owned copy of every shard, merged, for the admin API's `/stats` (the
//! data behind `/dashboard`): requests by route and status class, each
//! route's latency histogram at full resolution, rate-limit decisions by
//! limit, cache events, connections, upstream errors and the last reload's
//! outcome.
//!
//! Taken off the workers like a scrape (relaxed loads of single-writer
//! counters); what turns successive snapshots into rates and windowed
//! quantiles lives with its reader, in `admin::stats`.

use super::{Metrics, RL_PER_SLOT, histogram};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Counters of one route slot, summed over workers and methods.
#[derive(Debug, Clone, Default)]
pub struct RouteCounts {
    /// Route name (`(none)` for slot 0: answers given before routing).
    pub name: String,
    /// The upstream the route last had.
    pub upstream: String,
    /// Requests answered, by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub by_class: [u64; 5],
    /// Total-time histogram counts, indexed like [`histogram::bucket`].
    pub latency: Vec<u64>,
    /// Cache events: hits, misses, stale answers.
    pub cache: [u64; 3],
}

/// Decisions of one rate limit, summed over workers.
#[derive(Debug, Clone, Default)]
pub struct LimitCounts {
    /// Limit name.
    pub name: String,
    /// Admitted, delayed (queued, then admitted), limited (429), store error.
    pub decisions: [u64; 4],
}

/// Counters of one upstream slot, summed over workers.
#[derive(Debug, Clone, Default)]
pub struct UpstreamCounts {
    /// Upstream name.
    pub name: String,
    /// Upstream failures (connect, timeout, reset, invalid answer).
    pub errors: u64,
    /// New connections opened.
    pub connects: u64,
    /// Requests sent on a reused pooled connection.
    pub reused: u64,
}

/// How the last reload ended.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    /// When it ended (ms since the Unix epoch).
    pub at_unix_ms: u64,
    /// How long it took.
    pub took: Duration,
    /// Its summary, or every error.
    pub result: Result<String, Vec<String>>,
}

/// Every shard merged, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per route slot (slot 0: requests with no route).
    pub routes: Vec<RouteCounts>,
    /// Per rate-limit slot.
    pub limits: Vec<LimitCounts>,
    /// Per upstream slot.
    pub upstreams: Vec<UpstreamCounts>,
    /// Open client connections, per worker.
    pub open_connections: Vec<i64>,
    /// Client connections accepted, all workers.
    pub connections: u64,
    /// Bytes held by the response caches, all workers.
    pub cache_bytes: i64,
    /// Responses held by the caches, all workers.
    pub cache_entries: i64,
    /// Successful reloads.
    pub reloads_ok: u64,
    /// Rejected reloads.
    pub reloads_err: u64,
    /// The last reload's outcome, if any.
    pub last_reload: Option<ReloadOutcome>,
    /// Every worker serves and the config is loaded.
    pub ready: bool,
}

/// Upper bound (exclusive, µs) of latency bucket `i`.
pub fn bucket_upper_us(i: usize) -> u64 {
    histogram::upper(i)
}

/// Number of latency buckets in [`RouteCounts::latency`].
pub const LATENCY_BUCKETS: usize = histogram::BUCKETS;

impl Metrics {
    /// Every shard merged into one owned [`Snapshot`].
    pub fn snapshot(&self) -> Snapshot {
        let labels = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        let routes = labels
            .routes
            .iter()
            .enumerate()
            .map(|(r, (name, upstream))| {
                let mut by_class = [0u64; 5];
                let mut latency = vec![0u64; histogram::BUCKETS];
                let mut cache = [0u64; 3];
                for w in &self.workers {
                    if r >= w.routes {
                        continue;
                    }
                    for m in 0..10 {
                        for (class, n) in by_class.iter_mut().enumerate() {
                            *n += w.requests[(r * 10 + m) * 5 + class].get();
                        }
                    }
                    w.total[r].merge_into(&mut latency);
                    for (k, n) in cache.iter_mut().enumerate() {
                        *n += w.cache[r * 3 + k].get();
                    }
                }
                RouteCounts {
                    name: name.clone(),
                    upstream: upstream.clone(),
                    by_class,
                    latency,
                    cache,
                }
            })
            .collect();
        let limits = labels
            .limits
            .iter()
            .enumerate()
            .map(|(slot, name)| {
                let mut decisions = [0u64; 4];
                for w in &self.workers {
                    for (d, n) in decisions.iter_mut().enumerate() {
                        *n += w.rate_limit[slot * RL_PER_SLOT + d].get();
                    }
                }
                LimitCounts {
                    name: name.clone(),
                    decisions,
                }
            })
            .collect();
        let upstreams = labels
            .upstreams
            .iter()
            .enumerate()
            .map(|(u, name)| {
                let sum = |f: &dyn Fn(&super::WorkerMetrics) -> u64| {
                    self.workers.iter().map(|w| f(w)).sum::<u64>()
                };
                UpstreamCounts {
                    name: name.clone(),
                    errors: sum(&|w| w.upstream_errors[u].get()),
                    connects: sum(&|w| w.connects[u].get()),
                    reused: sum(&|w| w.reused[u].get()),
                }
            })
            .collect();
        drop(labels);
        Snapshot {
            routes,
            limits,
            upstreams,
            open_connections: self
                .workers
                .iter()
                .map(|w| w.open_connections.load(Relaxed))
                .collect(),
            connections: self.workers.iter().map(|w| w.connections.get()).sum(),
            cache_bytes: self
                .workers
                .iter()
                .map(|w| w.cache_bytes.load(Relaxed))
                .sum(),
            cache_entries: self
                .workers
                .iter()
                .map(|w| w.cache_entries.load(Relaxed))
                .sum(),
            reloads_ok: self.reloads_ok.load(Relaxed),
            reloads_err: self.reloads_err.load(Relaxed),
            last_reload: self
                .last_reload
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            ready: self.ready.load(Relaxed) == 1,
        }
    }

    /// Notes how a reload ended (its summary, or every error) for
    /// [`Snapshot::last_reload`].
    pub fn note_reload(&self, result: Result<&str, &[String]>, took: Duration) {
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let outcome = ReloadOutcome {
            at_unix_ms,
            took,
            result: result.map(str::to_string).map_err(<[String]>::to_vec),
        };
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn snapshot_merges_workers_and_methods() {
        let cfg = Config::parse(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n",
        )
        .unwrap();
        let m = Metrics::new(&cfg, 2);
        m.workers[0].request_slot(1, 0, 200, 100, None);
        m.workers[1].request_slot(1, 2, 503, 2000, Some(1500));
        m.workers[1].request_slot(0, 0, 404, 5, None);
        m.workers[0].upstream_error(0);
        let s = m.snapshot();
        assert_eq!(s.routes.len(), 2);
        assert_eq!(s.routes[1].name, "r");
        assert_eq!(s.routes[1].upstream, "u");
        assert_eq!(s.routes[1].by_class, [0, 1, 0, 0, 1]);
        assert_eq!(s.routes[1].latency.iter().sum::<u64>(), 2);
        assert_eq!(s.routes[0].by_class, [0, 0, 0, 1, 0]);
        assert_eq!(s.upstreams[0].errors, 1);
        assert_eq!(s.open_connections, vec![0, 0]);
        assert!(s.last_reload.is_none());
        m.note_reload(Err(&[String::from("bad")]), Duration::from_millis(3));
        let r = m.snapshot().last_reload.unwrap();
        assert_eq!(r.result, Err(vec![String::from("bad")]));
    }
}
