//! State of one upstream shared by every worker and the control plane:
//! the current target set (an immutable snapshot behind `ArcSwap`, with a
//! version number workers compare between requests), each target's health
//! and ejection (atomics), the breaker and, for `discovery = "registry"`,
//! the registration store.
//!
//! Key components: [`UpstreamShared`] (one per upstream, in its
//! [`crate::config::UpstreamConfig`]), [`TargetSet`] (a published
//! snapshot), [`TargetShared`] (one target: address, weight, health,
//! ejection). A target keeps its `TargetShared` across snapshots as long as
//! its address stays, so health and ejection survive discovery changes.
//!
//! Performance notes: workers read one `AtomicU64` per request to learn
//! whether the snapshot changed; availability of a target is two relaxed
//! loads. Nothing here is written on a plain successful request unless
//! passive outlier detection had counted a failure before.

use super::breaker::Breaker;
use super::now_ms;
use crate::config::{OutlierConfig, UpstreamConfig};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most times in a row an ejection time is multiplied.
const MAX_EJECTION_MULTIPLIER: u32 = 16;

/// One target, shared by all workers.
pub struct TargetShared {
    /// Its address.
    pub addr: SocketAddr,
    /// Fixed-seed hash of the address text (rendezvous hashing).
    pub addr_hash: u64,
    weight: AtomicU32,
    healthy: AtomicBool,
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Consecutive active-check passes (written by the checker only).
    pub(crate) check_passes: AtomicU32,
    /// Consecutive active-check failures (written by the checker only).
    pub(crate) check_failures: AtomicU32,
    /// When the checker last looked (ms on the process clock).
    pub(crate) checked_at: AtomicU64,
    /// A check of this target is queued or running.
    pub(crate) check_in_flight: AtomicBool,
}

impl TargetShared {
    /// A healthy, not ejected target.
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        TargetShared {
            addr,
            addr_hash: super::hash::hash_bytes(addr.to_string().as_bytes()),
            weight: AtomicU32::new(weight),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            check_passes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            checked_at: AtomicU64::new(0),
            check_in_flight: AtomicBool::new(false),
        }
    }

    /// Relative weight (0 = gets no traffic).
    #[inline]
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Times this target was ejected by outlier detection.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Passing active health checks (always true without them).
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the health flag (the checker).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Ejected by outlier detection at `now` (ms on the process clock).
    #[inline]
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// May get traffic at `now`.
    #[inline]
    pub fn is_available(&self, now: u64) -> bool {
        self.is_healthy() && !self.is_ejected(now) && self.weight() > 0
    }

    /// Milliseconds of ejection left.
    pub fn ejected_ms_left(&self, now: u64) -> u64 {
        self.ejected_until
            .load(Ordering::Relaxed)
            .saturating_sub(now)
    }
}

impl std::fmt::Debug for TargetShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// A published target set.
#[derive(Debug, Default)]
pub struct TargetSet {
    /// Increases with every publish.
    pub version: u64,
    /// The targets.
    pub targets: Vec<Arc<TargetShared>>,
}

/// One registered instance.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    /// Weight.
    pub weight: u32,
    /// Expiry on the process clock (ms).
    pub expires_at: u64,
}

/// The store behind `discovery = "registry"`.
#[derive(Debug)]
pub struct Registry {
    /// Default TTL.
    pub ttl_ms: u64,
    /// Registered instances.
    pub entries: Mutex<BTreeMap<SocketAddr, Registration>>,
}

/// Result kinds the proxy reports for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A response that is not a 5xx.
    Success,
    /// A 5xx response.
    Status5xx,
    /// Connect failure, reset or timeout.
    Failure,
}

/// Everything about one upstream that workers and the control plane share.
pub struct UpstreamShared {
    /// Upstream name.
    pub name: String,
    version: AtomicU64,
    snapshot: ArcSwap<TargetSet>,
    publish_lock: Mutex<()>,
    /// The circuit breaker, when configured.
    pub breaker: Option<Breaker>,
    outlier: Option<OutlierConfig>,
    /// Registrations, for `discovery = "registry"`.
    pub registry: Option<Registry>,
    pub(crate) started: AtomicBool,
    /// Why the last discovery attempt failed (empty when it worked).
    pub(crate) discovery_error: Mutex<String>,
    /// The health checker of this upstream's server (shared by all its
    /// upstreams, kept across reloads).
    pub(crate) health_checker: std::sync::OnceLock<Arc<super::health::Checker>>,
}

impl std::fmt::Debug for UpstreamShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamShared")
            .field("name", &self.name)
            .field("version", &self.version())
            .field("targets", &self.snapshot.load().targets)
            .finish()
    }
}

impl UpstreamShared {
    /// Shared state for a compiled upstream, with its static targets (if
    /// any) published as version 1.
    pub fn new(
        name: &str,
        targets: &[(SocketAddr, u32)],
        breaker: Option<&crate::config::BreakerConfig>,
        outlier: Option<&OutlierConfig>,
        registry_ttl_ms: Option<u64>,
    ) -> Self {
        let set = TargetSet {
            version: 1,
            targets: targets
                .iter()
                .map(|&(a, w)| Arc::new(TargetShared::new(a, w)))
                .collect(),
        };
        UpstreamShared {
            name: name.to_string(),
            version: AtomicU64::new(1),
            snapshot: ArcSwap::from_pointee(set),
            publish_lock: Mutex::new(()),
            breaker: breaker.map(Breaker::new),
            outlier: outlier.cloned(),
            registry: registry_ttl_ms.map(|ttl_ms| Registry {
                ttl_ms,
                entries: Mutex::new(BTreeMap::new()),
            }),
            started: AtomicBool::new(false),
            discovery_error: Mutex::new(String::new()),
            health_checker: std::sync::OnceLock::new(),
        }
    }

    /// The version of the current snapshot (one atomic load).
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<TargetSet> {
        self.snapshot.load_full()
    }

    /// Publishes a new target list (control plane). Targets whose address
    /// stays keep their state; returns false when nothing changed.
    pub fn publish(&self, list: &[(SocketAddr, u32)]) -> bool {
        let _g = self.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snapshot.load_full();
        let same = cur.targets.len() == list.len()
            && cur
                .targets
                .iter()
                .zip(list)
                .all(|(t, &(a, w))| t.addr == a && t.weight() == w);
        if same {
            return false;
        }
        let targets: Vec<Arc<TargetShared>> = list
            .iter()
            .map(|&(a, w)| match cur.targets.iter().find(|t| t.addr == a) {
                Some(t) => {
                    t.weight.store(w, Ordering::Relaxed);
                    t.clone()
                }
                None => Arc::new(TargetShared::new(a, w)),
            })
            .collect();
        let version = cur.version + 1;
        tracing::info!(
            upstream = %self.name,
            version,
            targets = ?list.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            "upstream targets changed"
        );
        self.snapshot
            .store(Arc::new(TargetSet { version, targets }));
        self.version.store(version, Ordering::Release);
        true
    }

    /// True when passive outlier detection is on.
    #[inline]
    pub fn has_outlier(&self) -> bool {
        self.outlier.is_some()
    }

    /// Reports a result on `t` to outlier detection (no-op when off).
    #[inline]
    pub fn report(&self, t: &TargetShared, r: Report) {
        let Some(o) = &self.outlier else { return };
        match r {
            Report::Success => {
                if t.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                    t.consecutive_5xx.store(0, Ordering::Relaxed);
                }
                if t.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    t.consecutive_failures.store(0, Ordering::Relaxed);
                }
                if t.ejections.load(Ordering::Relaxed) != 0 {
                    // Healthy for a base ejection time since it came back:
                    // the next ejection starts from the base time again.
                    let until = t.ejected_until.load(Ordering::Relaxed);
                    if now_ms() > until + o.base_ejection.as_millis() as u64 {
                        t.ejections.store(0, Ordering::Relaxed);
                    }
                }
            }
            Report::Status5xx => {
                let n = t.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1;
                if o.consecutive_5xx > 0 && n >= o.consecutive_5xx {
                    self.eject(t, o);
                }
            }
            Report::Failure => {
                let n = t.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if o.consecutive_failures > 0 && n >= o.consecutive_failures {
                    self.eject(t, o);
                }
            }
        }
    }

    #[cold]
    fn eject(&self, t: &TargetShared, o: &OutlierConfig) {
        let now = now_ms();
        if t.is_ejected(now) {
            return;
        }
        let set = self.snapshot.load();
        let n = set.targets.len().max(1);
        let ejected = set.targets.iter().filter(|x| x.is_ejected(now)).count();
        if (ejected + 1) * 100 > o.max_ejection_percent as usize * n {
            return;
        }
        let k = (t.ejections.fetch_add(1, Ordering::AcqRel) + 1).min(MAX_EJECTION_MULTIPLIER);
        let ms = o.base_ejection.as_millis() as u64 * k as u64;
        t.ejected_until.store(now + ms, Ordering::Release);
        t.consecutive_5xx.store(0, Ordering::Relaxed);
        t.consecutive_failures.store(0, Ordering::Relaxed);
        tracing::warn!(upstream = %self.name, target = %t.addr, ms, "target ejected");
    }

    /// Registers (or renews) an instance; `ttl_ms` overrides the default.
    /// Returns false when this upstream is not a registry.
    pub fn register(&self, addr: SocketAddr, weight: u32, ttl_ms: Option<u64>) -> bool {
        let Some(r) = &self.registry else {
            return false;
        };
        let expires_at = now_ms() + ttl_ms.unwrap_or(r.ttl_ms);
        r.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, Registration { weight, expires_at });
        self.publish_registry();
        true
    }

    /// Removes an instance; returns whether it was registered.
    pub fn deregister(&self, addr: SocketAddr) -> bool {
        let Some(r) = &self.registry else {
            return false;
        };
        let had = r
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr)
            .is_some();
        self.publish_registry();
        had
    }

    /// Drops expired registrations and publishes the rest (the registry's
    /// control thread, and every registry change).
    pub fn publish_registry(&self) {
        let Some(r) = &self.registry else { return };
        let now = now_ms();
        let list: Vec<(SocketAddr, u32)> = {
            let mut e = r.entries.lock().unwrap_or_else(|e| e.into_inner());
            e.retain(|addr, reg| {
                let keep = reg.expires_at > now;
                if !keep {
                    tracing::info!(upstream = %self.name, target = %addr, "registration expired");
                }
                keep
            });
            e.iter().map(|(&a, reg)| (a, reg.weight)).collect()
        };
        self.publish(&list);
    }

    /// The state as JSON for `GET /upstreams`.
    pub fn state_json(&self, cfg: &UpstreamConfig) -> serde_json::Value {
        let now = now_ms();
        let set = self.snapshot();
        let regs = self
            .registry
            .as_ref()
            .map(|r| r.entries.lock().unwrap_or_else(|e| e.into_inner()).clone());
        let targets: Vec<serde_json::Value> = set
            .targets
            .iter()
            .map(|t| {
                let mut v = serde_json::json!({
                    "addr": t.addr.to_string(),
                    "weight": t.weight(),
                    "healthy": t.is_healthy(),
                    "ejected": t.is_ejected(now),
                    "available": t.is_available(now),
                });
                if t.is_ejected(now) {
                    v["ejected_ms_left"] = t.ejected_ms_left(now).into();
                }
                if let Some(r) = regs.as_ref().and_then(|r| r.get(&t.addr)) {
                    v["expires_in_ms"] = r.expires_at.saturating_sub(now).into();
                }
                v
            })
            .collect();
        let breaker = self.breaker.as_ref().map(|b| {
            serde_json::json!({
                "state": b.state().as_str(),
                "consecutive_failures": b.consecutive_failures(),
                "opens": b.opens(),
            })
        });
        let err = self
            .discovery_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        serde_json::json!({
            "name": self.name,
            "discovery": super::discovery::kind(&cfg.discovery),
            "balance": super::balance::name(cfg.balance),
            "version": set.version,
            "targets": targets,
            "breaker": breaker,
            "discovery_error": if err.is_empty() { serde_json::Value::Null } else { err.into() },
        })
    }
}
