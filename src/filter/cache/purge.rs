//! Purging across workers without a lock on the request path.
//!
//! The admin thread appends a [`PurgeRule`] to the server's [`PurgeLog`]:
//! an immutable list of the most recent rules, published with `ArcSwap`,
//! and a sequence number. A worker remembers the last sequence it applied;
//! before a cached route looks anything up it compares that with the
//! log's (one atomic load) and, only when they differ, reads the list and
//! removes the matching entries. A worker that fell more than
//! [`KEPT_RULES`] rules behind empties its cache instead.

use super::store::Entry;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rules kept in the log for workers that have not applied them yet.
pub const KEPT_RULES: usize = 1024;

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeTarget {
    /// `{"path": "/p"}`: entries for this path, whatever their query;
    /// `{"path": "/p?q=1"}`: entries for exactly this path and query.
    Path(String),
    /// `{"prefix": "/p/"}`: entries whose path starts with it.
    Prefix(String),
}

/// One purge: a target, and optionally a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRule {
    /// Host (lower-case, port optional); `None` = every host.
    pub host: Option<String>,
    /// What to remove.
    pub target: PurgeTarget,
}

impl PurgeRule {
    /// True when `e` is removed by this rule.
    pub fn matches(&self, e: &Entry) -> bool {
        if let Some(h) = &self.host {
            let eh = e.key.host();
            let h = h.as_bytes();
            let same = eh == h || (eh.len() > h.len() && eh.starts_with(h) && eh[h.len()] == b':');
            if !same {
                return false;
            }
        }
        let pq = e.key.path_query();
        match &self.target {
            PurgeTarget::Path(p) if p.contains('?') => pq == p.as_bytes(),
            PurgeTarget::Path(p) => {
                let path = pq.split(|&b| b == b'?').next().unwrap_or(pq);
                path == p.as_bytes()
            }
            PurgeTarget::Prefix(p) => pq.starts_with(p.as_bytes()),
        }
    }

    /// Parses the admin request body `{"path"|"prefix": "...", "host": "..."}`.
    pub fn from_json(body: &[u8]) -> Result<PurgeRule, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            path: Option<String>,
            prefix: Option<String>,
            host: Option<String>,
        }
        let b: Body =
            serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
        let check = |p: &str| {
            if p.starts_with('/') && !p.contains(['#', ' ']) {
                Ok(())
            } else {
                Err(format!("{p:?} is not a path: it must start with '/'"))
            }
        };
        let target = match (b.path, b.prefix) {
            (Some(p), None) => {
                check(&p)?;
                PurgeTarget::Path(p)
            }
            (None, Some(p)) => {
                check(&p)?;
                PurgeTarget::Prefix(p)
            }
            _ => {
                return Err(String::from(
                    "give exactly one of \"path\" (one path) or \"prefix\" (every path under it)",
                ));
            }
        };
        let host = match b.host {
            Some(h) if h.is_empty() || h.contains(['/', ' ']) => {
                return Err(format!("{h:?} is not a host"));
            }
            h => h.map(|h| h.to_ascii_lowercase()),
        };
        Ok(PurgeRule { host, target })
    }
}

/// The server's purge rules, shared by the admin thread and every worker.
pub struct PurgeLog {
    seq: AtomicU64,
    rules: ArcSwap<Vec<(u64, PurgeRule)>>,
    writer: Mutex<()>,
}

impl Default for PurgeLog {
    fn default() -> Self {
        PurgeLog {
            seq: AtomicU64::new(0),
            rules: ArcSwap::from_pointee(Vec::new()),
            writer: Mutex::new(()),
        }
    }
}

impl std::fmt::Debug for PurgeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PurgeLog")
            .field("seq", &self.sequence())
            .finish()
    }
}

impl PurgeLog {
    /// Publishes a rule; returns its sequence number. Admin thread only.
    pub fn publish(&self, rule: PurgeRule) -> u64 {
        let _one_writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.seq.load(Ordering::Relaxed) + 1;
        let old = self.rules.load_full();
        let skip = (old.len() + 1).saturating_sub(KEPT_RULES);
        let mut rules: Vec<(u64, PurgeRule)> = old[skip..].to_vec();
        rules.push((n, rule));
        self.rules.store(Arc::new(rules));
        // Published after the list: a worker that sees `n` finds rule `n`.
        self.seq.store(n, Ordering::Release);
        n
    }

    /// The last published sequence number.
    #[inline]
    pub fn sequence(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Calls `apply` with each rule after `applied`, or with `None` when
    /// some of them are no longer kept (the caller then empties its
    /// cache). Returns the sequence number now applied.
    pub fn apply_since(&self, applied: u64, mut apply: impl FnMut(Option<&PurgeRule>)) -> u64 {
        let rules = self.rules.load();
        let Some(&(last, _)) = rules.last() else {
            return applied;
        };
        if rules[0].0 > applied + 1 {
            apply(None);
        } else {
            for (_, r) in rules.iter().filter(|(n, _)| *n > applied) {
                apply(Some(r));
            }
        }
        last.max(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_from_json() {
        let r = PurgeRule::from_json(br#"{"path": "/products/1"}"#).unwrap();
        assert_eq!(r.target, PurgeTarget::Path("/products/1".into()));
        let r = PurgeRule::from_json(br#"{"prefix": "/products/", "host": "API.test"}"#).unwrap();
        assert_eq!(r.host.as_deref(), Some("api.test"));
        assert!(PurgeRule::from_json(br#"{"path": "/a", "prefix": "/b"}"#).is_err());
        assert!(PurgeRule::from_json(br#"{"path": "a"}"#).is_err());
        assert!(PurgeRule::from_json(br#"{"paths": "/a"}"#).is_err());
        assert!(PurgeRule::from_json(b"nope").is_err());
    }

    #[test]
    fn workers_catch_up_or_clear() {
        let log = PurgeLog::default();
        let rule = |p: &str| PurgeRule {
            host: None,
            target: PurgeTarget::Prefix(p.into()),
        };
        assert_eq!(log.apply_since(0, |_| panic!("nothing to apply")), 0);
        log.publish(rule("/a"));
        log.publish(rule("/b"));
        let mut seen = Vec::new();
        let applied = log.apply_since(1, |r| seen.push(r.cloned()));
        assert_eq!(applied, 2);
        assert_eq!(seen, vec![Some(rule("/b"))]);
        for _ in 0..=KEPT_RULES {
            log.publish(rule("/c"));
        }
        let mut cleared = false;
        log.apply_since(2, |r| cleared |= r.is_none());
        assert!(cleared, "a worker that missed rules empties its cache");
    }
}
