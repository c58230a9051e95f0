//! `GET /stats`: the gateway at a glance, as JSON — what `/dashboard`
//! draws, and useful on its own (`curl -s :9901/stats | jq`).
//!
//! Key components: [`StatsRecorder`] keeps a short ring of merged metric
//! snapshots ([`Metrics::snapshot`]), one per [`INTERVAL`], taken by a
//! sampler thread the admin listener starts. Rates come from the last two
//! samples; latency quantiles from the histogram buckets that grew over the
//! last [`WINDOW`] intervals (full histogram resolution, about 12 %), so a
//! p99 is the last minute's, not the process lifetime's. `?history=1` adds
//! the ring as per-interval series for charts.
//!
//! How it fits: the sampler runs on its own thread and reads the shards
//! like a scrape does; workers never see it. A ring holds [`WINDOW`] + 1
//! samples; each keeps its counters and the sparse histogram growth of its
//! interval, so memory is bounded by routes × buckets that saw traffic.

use crate::config::Config;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::metrics::snapshot::{LATENCY_BUCKETS, Snapshot, bucket_upper_us};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Intervals in the latency window and in the history (60 s).
pub const WINDOW: usize = 60;

/// Status class labels, indexed like [`crate::telemetry::metrics::snapshot::RouteCounts::by_class`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One merged snapshot and what its interval added to the histograms.
struct Sample {
    /// When it was taken (ms since the Unix epoch).
    at_ms: u64,
    at: Instant,
    /// Counters (latency vectors moved out into `grown`).
    snap: Snapshot,
    /// Per route slot: (bucket, count) of the buckets that grew since the
    /// previous sample (empty for the first sample: its counts are the
    /// baseline, not an interval's).
    grown: Vec<Vec<(u16, u64)>>,
    /// All routes' p50 and p99 (µs) over the window ending here.
    p50_us: Option<f64>,
    p99_us: Option<f64>,
}

#[derive(Default)]
struct Ring {
    samples: VecDeque<Sample>,
    /// Per route slot: cumulative histogram counts at the last sample.
    last_latency: Vec<Vec<u64>>,
}

/// The ring of recent samples behind `/stats`.
#[derive(Default)]
pub struct StatsRecorder {
    ring: Mutex<Ring>,
}

/// The value at quantile `q` of histogram `counts`, interpolated within
/// its bucket (µs); None when empty.
pub fn quantile_us(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let target = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut below = 0;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if below + c >= target {
            let lo = if i == 0 { 0 } else { bucket_upper_us(i - 1) } as f64;
            let hi = bucket_upper_us(i) as f64;
            return Some(lo + (hi - lo) * (target - below) as f64 / c as f64);
        }
        below += c;
    }
    None
}

/// Milliseconds from µs, rounded to µs.
fn ms(us: Option<f64>) -> Value {
    us.map_or(Value::Null, |u| json!((u.round()) / 1000.0))
}

/// A rate rounded to 3 decimals.
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Ring {
    /// Adds the route slots' histogram growth in the last `n` samples into
    /// `into` (all slots when `slot` is None).
    fn window_latency(&self, n: usize, slot: Option<usize>, into: &mut [u64]) {
        for s in self.samples.iter().rev().take(n) {
            for (r, grown) in s.grown.iter().enumerate() {
                if slot.is_some_and(|x| x != r) {
                    continue;
                }
                for &(b, c) in grown {
                    into[b as usize] += c;
                }
            }
        }
    }
}

impl Ring {
    /// Adds what the histograms of `fresh` grew since the last sample into
    /// `into` (one route slot, or all).
    fn grown_since_last(&self, fresh: &Snapshot, slot: Option<usize>, into: &mut [u64]) {
        for (r, route) in fresh.routes.iter().enumerate() {
            if slot.is_some_and(|x| x != r) {
                continue;
            }
            let before = self.last_latency.get(r);
            for (b, &now) in route.latency.iter().enumerate() {
                let then = before.map_or(0, |h| h[b]);
                into[b] += now.saturating_sub(then);
            }
        }
    }
}

impl StatsRecorder {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a sample unless the last one is younger than `min_age`.
    pub fn sample(&self, metrics: &Metrics, min_age: Duration) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring
            .samples
            .back()
            .is_some_and(|s| s.at.elapsed() < min_age)
        {
            return;
        }
        let mut snap = metrics.snapshot();
        let first = ring.samples.is_empty();
        let mut grown = Vec::with_capacity(snap.routes.len());
        for (r, route) in snap.routes.iter_mut().enumerate() {
            let now = std::mem::take(&mut route.latency);
            if ring.last_latency.len() <= r {
                ring.last_latency.push(vec![0; LATENCY_BUCKETS]);
            }
            let prev = &mut ring.last_latency[r];
            grown.push(if first {
                Vec::new()
            } else {
                now.iter()
                    .zip(prev.iter())
                    .enumerate()
                    .filter(|(_, (n, p))| n > p)
                    .map(|(b, (n, p))| (b as u16, n - p))
                    .collect()
            });
            *prev = now;
        }
        ring.samples.push_back(Sample {
            at_ms: unix_ms(),
            at: Instant::now(),
            snap,
            grown,
            p50_us: None,
            p99_us: None,
        });
        while ring.samples.len() > WINDOW + 1 {
            ring.samples.pop_front();
        }
        let mut all = vec![0u64; LATENCY_BUCKETS];
        ring.window_latency(WINDOW, None, &mut all);
        let (p50, p99) = (quantile_us(&all, 0.5), quantile_us(&all, 0.99));
        if let Some(last) = ring.samples.back_mut() {
            last.p50_us = p50;
            last.p99_us = p99;
        }
    }

    /// The `/stats` document for the running `cfg` (its `generation`);
    /// with `history`, the ring as per-interval series.
    pub fn json(&self, metrics: &Metrics, cfg: &Config, generation: u64, history: bool) -> Value {
        // Without a sampler (or with a stalled one) the ring gets a sample
        // now.
        self.sample(metrics, INTERVAL * 2);
        // Counts and gauges as of now; rates from the ring's last two
        // samples; windows from the ring plus what grew since its last
        // sample.
        let fresh = metrics.snapshot();
        let now = Instant::now();
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let Some(last) = ring.samples.back() else {
            return json!({});
        };
        let n = ring.samples.len();
        let prev = (n >= 2).then(|| &ring.samples[n - 2]);
        // Where the window starts: WINDOW - 1 sampled intervals back.
        let oldest = &ring.samples[n.saturating_sub(WINDOW)];
        let dt = |a: &Sample, b: &Sample| b.at.duration_since(a.at).as_secs_f64().max(1e-3);
        // Per second between the previous sample and the last one.
        let rate = |f: &dyn Fn(&Snapshot) -> u64| -> Value {
            prev.map_or(Value::Null, |p| {
                json!(r3(
                    f(&last.snap).saturating_sub(f(&p.snap)) as f64 / dt(p, last)
                ))
            })
        };
        let s = &fresh;
        let class_sum =
            |s: &Snapshot, c: usize| s.routes.iter().map(|r| r.by_class[c]).sum::<u64>();
        let total = |s: &Snapshot| (0..5).map(|c| class_sum(s, c)).sum::<u64>();
        let by_class: serde_json::Map<String, Value> = CLASSES
            .iter()
            .enumerate()
            .map(|(c, name)| (name.to_string(), json!(class_sum(s, c))))
            .collect();
        let by_class_rate: serde_json::Map<String, Value> = CLASSES
            .iter()
            .enumerate()
            .map(|(c, name)| (name.to_string(), rate(&|s| class_sum(s, c))))
            .collect();
        let window_s = r3(now.duration_since(oldest.at).as_secs_f64());
        let window = |slot: Option<usize>| {
            let mut h = vec![0u64; LATENCY_BUCKETS];
            ring.window_latency(WINDOW - 1, slot, &mut h);
            ring.grown_since_last(&fresh, slot, &mut h);
            h
        };
        let all = window(None);
        let routes: Vec<Value> = s
            .routes
            .iter()
            .enumerate()
            .filter(|(slot, r)| {
                let configured = cfg.route_slots.contains(slot);
                configured || r.by_class.iter().any(|&c| c > 0)
            })
            .map(|(slot, r)| {
                // A compose route is answered by its parts' upstreams.
                let compose = cfg
                    .route_slots
                    .iter()
                    .position(|&x| x == slot)
                    .and_then(|i| cfg.routes[i].compose.as_ref());
                let upstream = match compose {
                    Some(c) => {
                        let mut names: Vec<&str> = Vec::new();
                        for p in &c.parts {
                            let n = cfg.upstreams[p.upstream].name.as_str();
                            if !names.contains(&n) {
                                names.push(n);
                            }
                        }
                        format!("compose: {}", names.join(", "))
                    }
                    None => r.upstream.clone(),
                };
                let h = window(Some(slot));
                let route_total = |s: &Snapshot| s.routes.get(slot).map_or(0, |r| r.by_class.iter().sum());
                json!({
                    "name": r.name,
                    "upstream": upstream,
                    "configured": cfg.route_slots.contains(&slot),
                    "requests": r.by_class.iter().sum::<u64>(),
                    "by_class": CLASSES.iter().zip(r.by_class).map(|(c, v)| (c.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "requests_per_s": rate(&route_total),
                    "latency_ms": {
                        "count": h.iter().sum::<u64>(),
                        "p50": ms(quantile_us(&h, 0.5)),
                        "p99": ms(quantile_us(&h, 0.99)),
                    },
                })
            })
            .collect();

        let limited = |s: &Snapshot| s.limits.iter().map(|l| l.decisions[2]).sum::<u64>();
        let running_limits: Vec<&str> = cfg
            .rate_limits
            .as_ref()
            .map(|l| l.limit_names())
            .unwrap_or_default();
        let limits: Vec<Value> = s
            .limits
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                running_limits.contains(&l.name.as_str()) || l.decisions.iter().any(|&d| d > 0)
            })
            .map(|(slot, l)| {
                json!({
                    "name": l.name,
                    "admitted": l.decisions[0],
                    "delayed": l.decisions[1],
                    "limited": l.decisions[2],
                    "store_error": l.decisions[3],
                    "limited_per_s": rate(&|s| s.limits.get(slot).map_or(0, |l| l.decisions[2])),
                })
            })
            .collect();

        let cache_sum = |s: &Snapshot, k: usize| s.routes.iter().map(|r| r.cache[k]).sum::<u64>();
        // Share of cached routes' requests answered from the cache (fresh
        // or stale) between two samples; None without such requests.
        let hit_ratio = |a: &Snapshot, b: &Snapshot| -> Option<f64> {
            let d = |k| cache_sum(b, k).saturating_sub(cache_sum(a, k));
            let (hits, misses, stale) = (d(0), d(1), d(2));
            let all = hits + misses + stale;
            (all > 0).then(|| r3((hits + stale) as f64 / all as f64))
        };

        let upstreams: Vec<Value> = cfg
            .upstreams
            .iter()
            .map(|u| {
                let mut v = u.state.state_json(u);
                let slot = s.upstreams.iter().position(|c| c.name == u.name);
                let counts = slot.map(|i| &s.upstreams[i]);
                v["errors"] = json!(counts.map_or(0, |c| c.errors));
                v["errors_per_s"] = match slot {
                    Some(i) => rate(&|s| s.upstreams.get(i).map_or(0, |c| c.errors)),
                    None => Value::Null,
                };
                v["connections_opened"] = json!(counts.map_or(0, |c| c.connects));
                v["connections_reused"] = json!(counts.map_or(0, |c| c.reused));
                v
            })
            .collect();

        let last_reload = s.last_reload.as_ref().map(|r| match &r.result {
            Ok(summary) => json!({
                "result": "ok",
                "at_ms": r.at_unix_ms,
                "took_ms": r3(r.took.as_secs_f64() * 1000.0),
                "summary": summary,
            }),
            Err(errors) => json!({
                "result": "error",
                "at_ms": r.at_unix_ms,
                "took_ms": r3(r.took.as_secs_f64() * 1000.0),
                "errors": errors,
            }),
        });

        let mut doc = json!({
            "at_ms": unix_ms(),
            "interval_ms": INTERVAL.as_millis() as u64,
            "ready": s.ready,
            "workers": s.open_connections.len(),
            "config": {
                "generation": generation,
                "reloads": {"ok": s.reloads_ok, "error": s.reloads_err},
                "last_reload": last_reload,
            },
            "connections": {
                "open": s.open_connections.iter().sum::<i64>(),
                "open_by_worker": s.open_connections,
                "accepted": s.connections,
                "accepted_per_s": rate(&|s| s.connections),
            },
            "requests": {
                "total": total(s),
                "by_class": by_class,
                "per_s": rate(&total),
                "by_class_per_s": by_class_rate,
            },
            "latency_ms": {
                "window_s": window_s,
                "count": all.iter().sum::<u64>(),
                "p50": ms(quantile_us(&all, 0.5)),
                "p99": ms(quantile_us(&all, 0.99)),
            },
            "routes": routes,
            "rate_limits": {
                "limited": limited(s),
                "limited_per_s": rate(&limited),
                "limits": limits,
            },
            "cache": {
                "hits": cache_sum(s, 0),
                "misses": cache_sum(s, 1),
                "stale": cache_sum(s, 2),
                "hit_ratio": hit_ratio(&oldest.snap, s),
                "bytes": s.cache_bytes,
                "entries": s.cache_entries,
            },
            "upstreams": upstreams,
        });
        if history {
            doc["history"] = history_json(&ring);
        }
        doc
    }
}

/// The ring as series, one point per interval (rates need two samples,
/// so a ring of n samples gives n - 1 points).
fn history_json(ring: &Ring) -> Value {
    let pairs: Vec<(&Sample, &Sample)> = ring
        .samples
        .iter()
        .zip(ring.samples.iter().skip(1))
        .collect();
    let per_s = |f: &dyn Fn(&Snapshot) -> u64| -> Vec<f64> {
        pairs
            .iter()
            .map(|(a, b)| {
                let dt = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
                r3(f(&b.snap).saturating_sub(f(&a.snap)) as f64 / dt)
            })
            .collect()
    };
    let class_sum = |s: &Snapshot, c: usize| s.routes.iter().map(|r| r.by_class[c]).sum::<u64>();
    let by_class: serde_json::Map<String, Value> = CLASSES
        .iter()
        .enumerate()
        .map(|(c, name)| (name.to_string(), json!(per_s(&|s| class_sum(s, c)))))
        .collect();
    let mut routes = serde_json::Map::new();
    if let Some((_, last)) = pairs.last() {
        for (slot, r) in last.snap.routes.iter().enumerate() {
            if r.by_class.iter().all(|&c| c == 0) {
                continue;
            }
            let v = per_s(&|s| s.routes.get(slot).map_or(0, |r| r.by_class.iter().sum()));
            routes.insert(r.name.clone(), json!(v));
        }
    }
    let cache_sum = |s: &Snapshot, k: usize| s.routes.iter().map(|r| r.cache[k]).sum::<u64>();
    let hit_ratio: Vec<Value> = pairs
        .iter()
        .map(|(a, b)| {
            let d = |k| cache_sum(&b.snap, k).saturating_sub(cache_sum(&a.snap, k));
            let all = d(0) + d(1) + d(2);
            if all == 0 {
                Value::Null
            } else {
                json!(r3((d(0) + d(2)) as f64 / all as f64))
            }
        })
        .collect();
    json!({
        "at_ms": pairs.iter().map(|(_, b)| b.at_ms).collect::<Vec<_>>(),
        "requests_per_s": per_s(&|s| (0..5).map(|c| class_sum(s, c)).sum()),
        "by_class_per_s": by_class,
        "routes_per_s": routes,
        "p50_ms": pairs.iter().map(|(_, b)| ms(b.p50_us)).collect::<Vec<_>>(),
        "p99_ms": pairs.iter().map(|(_, b)| ms(b.p99_us)).collect::<Vec<_>>(),
        "rate_limited_per_s": per_s(&|s| s.limits.iter().map(|l| l.decisions[2]).sum()),
        "cache_hit_ratio": hit_ratio,
        "open_connections": pairs.iter().map(|(_, b)| b.snap.open_connections.iter().sum::<i64>()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.u]\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"u\"\n",
        )
        .unwrap()
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut h = vec![0u64; LATENCY_BUCKETS];
        assert_eq!(quantile_us(&h, 0.5), None);
        // 100 values of 5 µs (an exact bucket) and one of ~1 ms.
        h[5] = 99;
        h[crate::telemetry::histogram::bucket(1000)] = 1;
        let p50 = quantile_us(&h, 0.5).unwrap();
        assert!((5.0..=6.0).contains(&p50), "{p50}");
        let p99 = quantile_us(&h, 0.99).unwrap();
        assert!((5.0..=6.0).contains(&p99), "{p99}");
        let p100 = quantile_us(&h, 1.0).unwrap();
        assert!((900.0..=1100.0).contains(&p100), "{p100}");
    }

    /// The window counts what the ring saw after its first sample, not
    /// what came before it; rates come from the last two samples.
    #[test]
    fn window_and_rates_come_from_the_ring() {
        let cfg = cfg();
        let m = Metrics::new(&cfg, 2);
        // Before the first sample: the baseline, outside every window.
        for _ in 0..10 {
            m.workers[0].request_slot(1, 0, 200, 50_000, None);
        }
        let rec = StatsRecorder::new();
        rec.sample(&m, Duration::ZERO);
        for _ in 0..4 {
            m.workers[1].request_slot(1, 0, 200, 100, None);
        }
        m.workers[0].request_slot(1, 0, 503, 100, None);
        rec.sample(&m, Duration::ZERO);
        let v = rec.json(&m, &cfg, 7, true);
        assert_eq!(v["requests"]["total"], 15);
        assert_eq!(v["requests"]["by_class"]["2xx"], 14);
        assert_eq!(v["requests"]["by_class"]["5xx"], 1);
        assert!(v["requests"]["per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert_eq!(v["latency_ms"]["count"], 5);
        let p99 = v["latency_ms"]["p99"].as_f64().unwrap();
        assert!(p99 < 1.0, "the 50 ms baseline is outside the window: {p99}");
        assert_eq!(v["config"]["generation"], 7);
        assert_eq!(v["workers"], 2);
        assert_eq!(v["routes"][0]["name"], "r");
        assert_eq!(v["routes"][0]["requests"], 15);
        assert_eq!(v["upstreams"][0]["name"], "u");
        assert_eq!(v["history"]["requests_per_s"].as_array().unwrap().len(), 1);
        assert_eq!(
            v["history"]["routes_per_s"]["r"].as_array().unwrap().len(),
            1
        );
        assert!(v["cache"]["hit_ratio"].is_null());
    }

    #[test]
    fn the_ring_keeps_one_window() {
        let cfg = cfg();
        let m = Metrics::new(&cfg, 1);
        let rec = StatsRecorder::new();
        for _ in 0..WINDOW + 10 {
            m.workers[0].request_slot(1, 0, 200, 100, None);
            rec.sample(&m, Duration::ZERO);
        }
        let ring = rec.ring.lock().unwrap();
        assert_eq!(ring.samples.len(), WINDOW + 1);
        let mut h = vec![0u64; LATENCY_BUCKETS];
        ring.window_latency(WINDOW, None, &mut h);
        assert_eq!(h.iter().sum::<u64>(), WINDOW as u64);
    }
}
