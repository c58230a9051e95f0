//! Per-worker metric shards, merged only when scraped.
//!
//! Each worker owns one [`WorkerMetrics`]: flat arrays of counters and
//! histograms indexed by route, method and status class, written by that
//! worker alone with relaxed loads and stores (no read-modify-write, no
//! cache line shared with another writer). [`Metrics::render`] walks every
//! shard and prints Prometheus text.
//!
//! Filters count their decisions in the same shards: rate-limit decisions
//! per limit, cache events and auth decisions per route slot, token
//! endpoint answers per result. A route without auth or cache never
//! touches those counters.

use super::histogram::{self, Histogram};
use super::names::*;
use crate::config::Config;
use crate::filter::AuthMethod;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

pub mod snapshot;

/// Method label slots: the nine known methods, then "other".
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other",
];

/// Slot of a method token.
#[inline]
pub fn method_slot(m: &[u8]) -> usize {
    match m {
        b"GET" => 0,
        b"HEAD" => 1,
        b"POST" => 2,
        b"PUT" => 3,
        b"DELETE" => 4,
        b"CONNECT" => 5,
        b"OPTIONS" => 6,
        b"TRACE" => 7,
        b"PATCH" => 8,
        _ => 9,
    }
}

/// A counter with one writer.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (owning thread only).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed) + n, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// One worker's shard.
pub struct WorkerMetrics {
    routes: usize,
    upstreams: usize,
    /// `[route + 1][method][class]` (row 0: requests with no route).
    requests: Box<[Counter]>,
    total: Box<[Histogram]>,
    upstream_time: Box<[Histogram]>,
    /// Open client connections.
    pub open_connections: AtomicI64,
    /// Client connections accepted.
    pub connections: Counter,
    /// New upstream connections, per upstream.
    pub connects: Box<[Counter]>,
    /// Reused pooled connections, per upstream.
    pub reused: Box<[Counter]>,
    /// Upstream errors, per upstream.
    pub upstream_errors: Box<[Counter]>,
    /// Idle pooled connections, per upstream (refreshed by the sweeper).
    pub pool_idle: Box<[AtomicI64]>,
    /// Rate-limit decisions: `[limit slot][admitted, delayed, limited,
    /// store_error]`; one more row for limits past [`RATE_LIMIT_SLOTS`].
    rate_limit: Box<[Counter]>,
    /// Cache hits, misses and stale answers: `[route slot][event]`.
    cache: Box<[Counter]>,
    /// Auth decisions: `[route slot][method][decision]` (see
    /// [`WorkerMetrics::auth_decision`]).
    auth: Box<[Counter]>,
    /// Token endpoint answers, by [`TokenResult`].
    token_endpoint: [Counter; TOKEN_RESULTS.len()],
    /// Bytes held by this worker's response cache.
    pub cache_bytes: AtomicI64,
    /// Entries held by this worker's response cache.
    pub cache_entries: AtomicI64,
    /// Cache entries evicted for space.
    pub cache_evictions: Counter,
}

/// Rate-limit names with their own decision counters (over the life of the
/// process: a name keeps its slot across reloads); more share an unlabelled
/// row.
pub const RATE_LIMIT_SLOTS: usize = 64;
const RL_DECISIONS: [&str; 4] = ["admitted", "delayed", "limited", "store_error"];
/// Decisions after the request waited for quota, by label.
const RL_WAITED: [&str; 2] = ["admitted", "limited"];
/// Counters per rate-limit slot: the decisions, then the waited ones.
const RL_PER_SLOT: usize = RL_DECISIONS.len() + RL_WAITED.len();

/// `method` label of auth decisions: the method that decided, or `none`
/// when the request carried no credential the route accepts.
const AUTH_METHOD_LABELS: [&str; 4] = ["jwt", "api_key", "mtls", "none"];
/// `decision` label of auth decisions, indexed by [`AuthDecision`].
const AUTH_DECISION_LABELS: [&str; 4] = ["allowed", "missing", "invalid", "forbidden"];
/// Counters per route slot for auth decisions.
const AUTH_PER_ROUTE: usize = AUTH_METHOD_LABELS.len() * AUTH_DECISION_LABELS.len();

/// What the auth filter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    /// Authenticated and authorized: the request goes on.
    Allowed = 0,
    /// No credential the route accepts (401).
    Missing = 1,
    /// A credential that did not validate (401).
    Invalid = 2,
    /// Authenticated but lacking a required role or scope (403).
    Forbidden = 3,
}

/// `result` label of token endpoint answers, indexed by [`TokenResult`].
const TOKEN_RESULTS: [&str; 5] = [
    "issued",
    "invalid_request",
    "invalid_client",
    "blocked",
    "error",
];

/// How the token endpoint answered one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenResult {
    /// 200: a token was issued.
    Issued = 0,
    /// 400: a malformed request, an unsupported grant type or a scope the
    /// client lacks.
    InvalidRequest = 1,
    /// 401: the client authentication was refused.
    InvalidClient = 2,
    /// 429: the client address used up its failed attempts.
    Blocked = 3,
    /// Anything else (500: the token could not be signed).
    Error = 4,
}

impl TokenResult {
    /// The result of an answer with `status`.
    #[inline]
    pub fn of_status(status: u16) -> TokenResult {
        match status {
            200 => TokenResult::Issued,
            400 => TokenResult::InvalidRequest,
            401 => TokenResult::InvalidClient,
            429 => TokenResult::Blocked,
            _ => TokenResult::Error,
        }
    }
}

impl WorkerMetrics {
    /// Counts a rate-limit decision for the limit in metric slot `slot`
    /// (`Config::rate_limit_slots`): 0 admitted, 1 delayed (queued, then
    /// admitted), 2 limited (429), 3 store error.
    #[inline]
    pub fn rate_limit_decision(&self, slot: usize, decision: usize) {
        self.rate_limit[slot.min(RATE_LIMIT_SLOTS) * RL_PER_SLOT + decision.min(3)].add(1);
    }

    /// Counts a decision that came after the request waited for quota (a
    /// lease, or a part another worker held): admitted or limited.
    #[inline]
    pub fn rate_limit_waited(&self, slot: usize, limited: bool) {
        let i = RL_DECISIONS.len() + limited as usize;
        self.rate_limit[slot.min(RATE_LIMIT_SLOTS) * RL_PER_SLOT + i].add(1);
    }

    /// A shard with room for `routes` route slots (slot 0 is "no route")
    /// and `upstreams` upstream slots.
    pub fn new(routes: usize, upstreams: usize) -> Self {
        let n = |k: usize| {
            (0..k)
                .map(|_| Counter::default())
                .collect::<Box<[Counter]>>()
        };
        WorkerMetrics {
            routes,
            upstreams,
            requests: n(routes * 10 * 5),
            total: (0..routes).map(|_| Histogram::new()).collect(),
            upstream_time: (0..routes).map(|_| Histogram::new()).collect(),
            open_connections: AtomicI64::new(0),
            connections: Counter::default(),
            connects: n(upstreams),
            reused: n(upstreams),
            upstream_errors: n(upstreams),
            pool_idle: (0..upstreams).map(|_| AtomicI64::new(0)).collect(),
            rate_limit: n((RATE_LIMIT_SLOTS + 1) * RL_PER_SLOT),
            cache: n(routes * 3),
            auth: n(routes * AUTH_PER_ROUTE),
            token_endpoint: Default::default(),
            cache_bytes: AtomicI64::new(0),
            cache_entries: AtomicI64::new(0),
            cache_evictions: Counter::default(),
        }
    }

    /// Counts a cached route's request: a hit, a miss or a stale answer.
    #[inline]
    pub fn cache_event(&self, route_slot: usize, event: crate::filter::cache::CacheEvent) {
        if route_slot < self.routes {
            self.cache[route_slot * 3 + event as usize].add(1);
        }
    }

    /// Counts an auth decision on a route with auth: `method` is the
    /// method that decided (None when no credential was found).
    #[inline]
    pub fn auth_decision(
        &self,
        route_slot: usize,
        method: Option<AuthMethod>,
        decision: AuthDecision,
    ) {
        if route_slot < self.routes {
            let m = match method {
                Some(AuthMethod::Jwt) => 0,
                Some(AuthMethod::ApiKey) => 1,
                Some(AuthMethod::Mtls) => 2,
                None => 3,
            };
            let i = (route_slot * AUTH_METHOD_LABELS.len() + m) * AUTH_DECISION_LABELS.len();
            self.auth[i + decision as usize].add(1);
        }
    }

    /// Counts one token endpoint answer.
    #[inline]
    pub fn token_request(&self, result: TokenResult) {
        self.token_endpoint[result as usize].add(1);
    }

    /// Records one answered request: `route_slot` from
    /// `Config::route_slots` (0 for answers given before routing), the
    /// method's [`method_slot`].
    #[inline]
    pub fn request_slot(
        &self,
        route_slot: usize,
        method_slot: usize,
        status: u16,
        total_us: u64,
        upstream_us: Option<u64>,
    ) {
        let r = if route_slot < self.routes {
            route_slot
        } else {
            0
        };
        let class = ((status / 100) as usize).clamp(1, 5) - 1;
        self.requests[(r * 10 + method_slot.min(9)) * 5 + class].add(1);
        self.total[r].record(total_us);
        if let Some(u) = upstream_us {
            self.upstream_time[r].record(u);
        }
    }

    /// Notes a new (`reused = false`) or pooled upstream connection.
    #[inline]
    pub fn upstream_conn(&self, upstream: usize, reused: bool) {
        if upstream < self.upstreams {
            if reused {
                self.reused[upstream].add(1)
            } else {
                self.connects[upstream].add(1)
            }
        }
    }

    /// Notes an upstream failure.
    #[inline]
    pub fn upstream_error(&self, upstream: usize) {
        if upstream < self.upstreams {
            self.upstream_errors[upstream].add(1);
        }
    }
}

/// Label values of the metric slots.
#[derive(Default)]
struct Labels {
    /// Per route slot: (route name, upstream name).
    routes: Vec<(String, String)>,
    /// Per upstream slot: upstream name.
    upstreams: Vec<String>,
    /// Per rate-limit slot: limit name.
    limits: Vec<String>,
}

/// All shards of a running server, and process-wide counters.
pub struct Metrics {
    labels: std::sync::Mutex<Labels>,
    route_cap: usize,
    upstream_cap: usize,
    /// One shard per worker.
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// Successful reloads.
    pub reloads_ok: AtomicU64,
    /// Rejected reloads.
    pub reloads_err: AtomicU64,
    /// Last reload duration in µs.
    pub reload_us: AtomicU64,
    /// 1 when ready.
    pub ready: AtomicU64,
    /// The last reload's outcome ([`Metrics::note_reload`]).
    last_reload: std::sync::Mutex<Option<snapshot::ReloadOutcome>>,
}

const LE: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Shards for `workers` workers, with room for the routes and upstreams
    /// of `cfg` plus those later reloads add.
    pub fn new(cfg: &Config, workers: usize) -> Self {
        let route_cap = cfg.routes.len() + 1 + 256;
        let upstream_cap = cfg.upstreams.len() + 64;
        let mut labels = Labels::default();
        labels
            .routes
            .push((String::from("(none)"), String::from("(none)")));
        for r in &cfg.routes {
            labels
                .routes
                .push((r.name.clone(), cfg.upstreams[r.upstream].name.clone()));
        }
        labels.upstreams = cfg.upstreams.iter().map(|u| u.name.clone()).collect();
        if let Some(l) = &cfg.rate_limits {
            // Slots in index order, as `Config::rate_limit_slots` starts.
            labels.limits = l
                .limit_names()
                .into_iter()
                .take(RATE_LIMIT_SLOTS)
                .map(String::from)
                .collect();
        }
        Metrics {
            labels: std::sync::Mutex::new(labels),
            route_cap,
            upstream_cap,
            workers: (0..workers)
                .map(|_| Arc::new(WorkerMetrics::new(route_cap, upstream_cap)))
                .collect(),
            reloads_ok: AtomicU64::new(0),
            reloads_err: AtomicU64::new(0),
            reload_us: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            last_reload: std::sync::Mutex::new(None),
        }
    }

    /// Gives the routes, upstreams and rate limits of a reloaded `cfg` the
    /// metric slots their names had (new names get new slots), so counters
    /// continue across reloads.
    pub fn assign_slots(&self, cfg: &mut Config) {
        let mut l = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        let mut up_slots = Vec::with_capacity(cfg.upstreams.len());
        for u in &cfg.upstreams {
            let slot = match l.upstreams.iter().position(|n| *n == u.name) {
                Some(s) => s,
                None if l.upstreams.len() < self.upstream_cap => {
                    l.upstreams.push(u.name.clone());
                    l.upstreams.len() - 1
                }
                None => usize::MAX,
            };
            up_slots.push(slot);
        }
        let mut route_slots = Vec::with_capacity(cfg.routes.len());
        for r in &cfg.routes {
            let up = cfg.upstreams[r.upstream].name.clone();
            let slot = match l.routes.iter().position(|(n, _)| *n == r.name) {
                Some(s) => {
                    l.routes[s].1 = up;
                    s
                }
                None if l.routes.len() < self.route_cap => {
                    l.routes.push((r.name.clone(), up));
                    l.routes.len() - 1
                }
                None => 0,
            };
            route_slots.push(slot);
        }
        let mut limit_slots = Vec::new();
        if let Some(rl) = &cfg.rate_limits {
            for name in rl.limit_names() {
                let slot = match l.limits.iter().position(|n| n == name) {
                    Some(s) => s,
                    None if l.limits.len() < RATE_LIMIT_SLOTS => {
                        l.limits.push(name.to_string());
                        l.limits.len() - 1
                    }
                    None => RATE_LIMIT_SLOTS,
                };
                limit_slots.push(slot);
            }
        }
        cfg.route_slots = route_slots;
        cfg.upstream_slots = up_slots;
        cfg.rate_limit_slots = limit_slots;
    }

    /// [`Metrics::render`] plus what is read from the running config's
    /// shared state at scrape time: rate-limit decisions (labelled with the
    /// limits' names), token endpoint answers (when the endpoint is on and
    /// metrics are enabled), breaker state and opens, target health and
    /// ejections.
    pub fn render_with(&self, cfg: &Config) -> String {
        let mut o = self.render();
        // Every limit of the running config, and those a reload removed
        // that counted something (a name keeps its slot, so its series
        // goes on if it comes back).
        let limits = self
            .labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .limits
            .clone();
        let series = [
            (
                RATE_LIMIT_DECISIONS,
                "Rate-limit decisions.",
                &RL_DECISIONS[..],
                0,
            ),
            (
                RATE_LIMIT_WAITED,
                "Rate-limit decisions made after the request waited for quota.",
                &RL_WAITED[..],
                RL_DECISIONS.len(),
            ),
        ];
        for (metric, help, labels, offset) in series {
            let mut header = false;
            for (slot, name) in limits.iter().enumerate() {
                let running = cfg.rate_limits.is_some() && cfg.rate_limit_slots.contains(&slot);
                let v: Vec<u64> = (0..labels.len())
                    .map(|d| {
                        self.workers
                            .iter()
                            .map(|w| w.rate_limit[slot * RL_PER_SLOT + offset + d].get())
                            .sum()
                    })
                    .collect();
                if !running && v.iter().all(|&n| n == 0) {
                    continue;
                }
                if !header {
                    header = true;
                    let _ = writeln!(o, "# HELP {metric} {help}\n# TYPE {metric} counter");
                }
                for (dn, v) in labels.iter().zip(v) {
                    let _ = writeln!(
                        o,
                        "{metric}{{limit=\"{}\",decision=\"{dn}\"}} {v}",
                        esc(name)
                    );
                }
            }
        }
        if cfg.metrics_enabled
            && let Some(a) = &cfg.auth
            && a.token_path().is_some()
        {
            let _ = writeln!(
                o,
                "# HELP {TOKEN_ENDPOINT_REQUESTS} Token endpoint answers.\n# TYPE {TOKEN_ENDPOINT_REQUESTS} counter"
            );
            for (k, result) in TOKEN_RESULTS.iter().enumerate() {
                let v: u64 = self.workers.iter().map(|w| w.token_endpoint[k].get()).sum();
                let _ = writeln!(o, "{TOKEN_ENDPOINT_REQUESTS}{{result=\"{result}\"}} {v}");
            }
        }
        let _ = writeln!(
            o,
            "# HELP {BREAKER_STATE} Breaker state: 0 closed, 1 open, 2 half-open.\n# TYPE {BREAKER_STATE} gauge"
        );
        let mut opens = String::new();
        let mut targets = String::new();
        let mut ejections = String::new();
        let now = crate::upstream::now_ms();
        for u in &cfg.upstreams {
            let name = esc(&u.name);
            if let Some(b) = &u.state.breaker {
                let st = match b.state() {
                    crate::upstream::breaker::State::Closed => 0,
                    crate::upstream::breaker::State::Open => 1,
                    crate::upstream::breaker::State::HalfOpen => 2,
                };
                let _ = writeln!(o, "{BREAKER_STATE}{{upstream=\"{name}\"}} {st}");
                let _ = writeln!(
                    opens,
                    "{BREAKER_OPENS}{{upstream=\"{name}\"}} {}",
                    b.opens()
                );
            }
            let snap = u.state.snapshot();
            let (mut healthy, mut unhealthy, mut ejected, mut ej_total) = (0, 0, 0, 0u64);
            for t in &snap.targets {
                if t.is_ejected(now) {
                    ejected += 1;
                } else if t.is_healthy() {
                    healthy += 1;
                } else {
                    unhealthy += 1;
                }
                ej_total += t.ejections() as u64;
            }
            for (state, v) in [
                ("healthy", healthy),
                ("unhealthy", unhealthy),
                ("ejected", ejected),
            ] {
                let _ = writeln!(
                    targets,
                    "{UPSTREAM_TARGETS}{{upstream=\"{name}\",state=\"{state}\"}} {v}"
                );
            }
            let _ = writeln!(
                ejections,
                "{UPSTREAM_EJECTIONS}{{upstream=\"{name}\"}} {ej_total}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP {BREAKER_OPENS} Times a breaker opened.\n# TYPE {BREAKER_OPENS} counter"
        );
        o.push_str(&opens);
        let _ = writeln!(
            o,
            "# HELP {UPSTREAM_TARGETS} Targets by state.\n# TYPE {UPSTREAM_TARGETS} gauge"
        );
        o.push_str(&targets);
        let _ = writeln!(
            o,
            "# HELP {UPSTREAM_EJECTIONS} Outlier ejections of the current targets.\n# TYPE {UPSTREAM_EJECTIONS} counter"
        );
        o.push_str(&ejections);
        o
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let labels = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        let mut o = String::with_capacity(16 * 1024);
        let route_name = |r: usize| -> (String, String) {
            let (a, b) = &labels.routes[r];
            (esc(a), esc(b))
        };
        let routes = labels.routes.len().saturating_sub(1);
        let _ = writeln!(
            o,
            "# HELP {REQUESTS_TOTAL} Requests answered.\n# TYPE {REQUESTS_TOTAL} counter"
        );
        for r in 0..=routes {
            let (rn, un) = route_name(r);
            for (m, mname) in METHODS.iter().enumerate() {
                for class in 0..5 {
                    let i = (r * 10 + m) * 5 + class;
                    let v: u64 = self.workers.iter().map(|w| w.requests[i].get()).sum();
                    if v > 0 {
                        let _ = writeln!(
                            o,
                            "{REQUESTS_TOTAL}{{route=\"{rn}\",method=\"{mname}\",status=\"{}xx\",upstream=\"{un}\"}} {v}",
                            class + 1
                        );
                    }
                }
            }
        }
        for (name, help, pick) in [
            (
                REQUEST_DURATION,
                "Time from request head to response end.",
                0,
            ),
            (
                UPSTREAM_DURATION,
                "Time from request sent to response head.",
                1,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
            for r in 0..=routes {
                let mut counts = vec![0u64; histogram::BUCKETS];
                let mut sum = 0;
                for w in &self.workers {
                    let h = if pick == 0 {
                        &w.total[r]
                    } else {
                        &w.upstream_time[r]
                    };
                    sum += h.merge_into(&mut counts);
                }
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    continue;
                }
                let (rn, _) = route_name(r);
                let mut cum = 0;
                let mut b = 0;
                for le in LE {
                    let le_us = (le * 1e6) as u64;
                    while b < histogram::BUCKETS && histogram::upper(b) <= le_us {
                        cum += counts[b];
                        b += 1;
                    }
                    let _ = writeln!(o, "{name}_bucket{{route=\"{rn}\",le=\"{le}\"}} {cum}");
                }
                let _ = writeln!(o, "{name}_bucket{{route=\"{rn}\",le=\"+Inf\"}} {total}");
                let _ = writeln!(o, "{name}_sum{{route=\"{rn}\"}} {}", sum as f64 / 1e6);
                let _ = writeln!(o, "{name}_count{{route=\"{rn}\"}} {total}");
            }
        }
        let _ = writeln!(
            o,
            "# HELP {OPEN_CONNECTIONS} Open client connections.\n# TYPE {OPEN_CONNECTIONS} gauge"
        );
        for (i, w) in self.workers.iter().enumerate() {
            let _ = writeln!(
                o,
                "{OPEN_CONNECTIONS}{{worker=\"{i}\"}} {}",
                w.open_connections.load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP {CONNECTIONS_TOTAL} Client connections accepted.\n# TYPE {CONNECTIONS_TOTAL} counter"
        );
        for (i, w) in self.workers.iter().enumerate() {
            let _ = writeln!(
                o,
                "{CONNECTIONS_TOTAL}{{worker=\"{i}\"}} {}",
                w.connections.get()
            );
        }
        crate::tls::acceptor::render_metrics(&mut o);
        let ups = labels.upstreams.len();
        for (name, help, kind) in [
            (UPSTREAM_CONNECTS, "New upstream connections.", 0),
            (UPSTREAM_REUSED, "Requests on reused pooled connections.", 1),
            (UPSTREAM_ERRORS, "Upstream failures.", 2),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for u in 0..ups {
                let v: u64 = self
                    .workers
                    .iter()
                    .map(|w| match kind {
                        0 => w.connects[u].get(),
                        1 => w.reused[u].get(),
                        _ => w.upstream_errors[u].get(),
                    })
                    .sum();
                let _ = writeln!(
                    o,
                    "{name}{{upstream=\"{}\"}} {v}",
                    esc(&labels.upstreams[u])
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP {POOL_IDLE} Idle pooled upstream connections.\n# TYPE {POOL_IDLE} gauge"
        );
        for u in 0..ups {
            let v: i64 = self
                .workers
                .iter()
                .map(|w| w.pool_idle[u].load(Relaxed))
                .sum();
            let _ = writeln!(
                o,
                "{POOL_IDLE}{{upstream=\"{}\"}} {v}",
                esc(&labels.upstreams[u])
            );
        }
        for (k, (name, help)) in [
            (CACHE_HITS, "Requests answered fresh from the cache."),
            (
                CACHE_MISSES,
                "Requests on cached routes that went to the backend.",
            ),
            (CACHE_STALE, "Requests answered with a stale cached copy."),
        ]
        .into_iter()
        .enumerate()
        {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for r in 1..=routes {
                let v: u64 = self.workers.iter().map(|w| w.cache[r * 3 + k].get()).sum();
                if v > 0 {
                    let _ = writeln!(o, "{name}{{route=\"{}\"}} {v}", route_name(r).0);
                }
            }
        }
        let _ = writeln!(
            o,
            "# HELP {AUTH_DECISIONS} Authentication and authorization decisions.\n# TYPE {AUTH_DECISIONS} counter"
        );
        for r in 0..=routes {
            for (m, mname) in AUTH_METHOD_LABELS.iter().enumerate() {
                for (d, dname) in AUTH_DECISION_LABELS.iter().enumerate() {
                    let i = (r * AUTH_METHOD_LABELS.len() + m) * AUTH_DECISION_LABELS.len() + d;
                    let v: u64 = self.workers.iter().map(|w| w.auth[i].get()).sum();
                    if v > 0 {
                        let _ = writeln!(
                            o,
                            "{AUTH_DECISIONS}{{route=\"{}\",method=\"{mname}\",decision=\"{dname}\"}} {v}",
                            route_name(r).0
                        );
                    }
                }
            }
        }
        for (name, help, kind) in [
            (CACHE_BYTES, "Bytes held by the response cache.", 0),
            (CACHE_ENTRIES, "Responses held by the cache.", 1),
            (CACHE_EVICTIONS, "Cache entries evicted for space.", 2),
        ] {
            let ty = if kind == 2 { "counter" } else { "gauge" };
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {ty}");
            for (i, w) in self.workers.iter().enumerate() {
                let v = match kind {
                    0 => w.cache_bytes.load(Relaxed),
                    1 => w.cache_entries.load(Relaxed),
                    _ => w.cache_evictions.get() as i64,
                };
                let _ = writeln!(o, "{name}{{worker=\"{i}\"}} {v}");
            }
        }
        let _ = writeln!(
            o,
            "# HELP {RELOADS_TOTAL} Config reloads.\n# TYPE {RELOADS_TOTAL} counter\n{RELOADS_TOTAL}{{result=\"ok\"}} {}\n{RELOADS_TOTAL}{{result=\"error\"}} {}",
            self.reloads_ok.load(Relaxed),
            self.reloads_err.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP {RELOAD_DURATION} Duration of the last successful reload.\n# TYPE {RELOAD_DURATION} gauge\n{RELOAD_DURATION} {}",
            self.reload_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "# HELP {READY} 1 when serving.\n# TYPE {READY} gauge\n{READY} {}",
            self.ready.load(Relaxed)
        );
        o
    }
}
