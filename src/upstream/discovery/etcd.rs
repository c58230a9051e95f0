//! `discovery = "etcd"`: the targets are the keys under `etcd_prefix`,
//! each value `{"addr": "IP:port", "weight": 1}` (weight optional, default
//! 1), written by the service instances themselves, usually with a lease:
//! an instance that dies stops renewing it, etcd deletes its key when the
//! lease expires, and the watch here takes the target out.
//!
//! One thread per upstream follows the prefix ([`crate::config::etcd::follow`]:
//! a range, then a watch resumed from the last revision) and publishes the
//! list on every change. While etcd is away the last list keeps serving;
//! a value that is not a valid instance is skipped and named in the
//! upstream's discovery error.

use super::super::shared::UpstreamShared;
use crate::config::EtcdDiscovery;
use crate::config::etcd::{self, Client, EtcdError, FollowStatus, Snapshot};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Weak;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Instance {
    addr: String,
    weight: Option<u32>,
}

/// The targets of a copy of the prefix, and the problems of the keys that
/// are not instances.
pub fn targets(snap: &Snapshot) -> (Vec<(SocketAddr, u32)>, Vec<String>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (k, kv) in &snap.kvs {
        match serde_json::from_slice::<Instance>(&kv.value) {
            Ok(i) => match i.addr.parse::<SocketAddr>() {
                Ok(a) => out.push((a, i.weight.unwrap_or(1))),
                Err(_) => bad.push(format!("{k}: addr {:?} is not an IP:port address", i.addr)),
            },
            Err(e) => bad.push(format!(
                "{k}: not {{\"addr\": \"IP:port\", \"weight\": 1}}: {e}"
            )),
        }
    }
    out.sort();
    out.dedup_by_key(|(a, _)| *a);
    (out, bad)
}

struct Status {
    shared: Weak<UpstreamShared>,
}

impl FollowStatus for Status {
    fn connected(&self) {
        // An outage reported by `failed` is over; a bad instance's error
        // stays until the next list replaces it.
        if let Some(s) = self.shared.upgrade() {
            let outage = s
                .discovery_error
                .lock()
                .is_ok_and(|e| e.starts_with("etcd "));
            if outage {
                super::set_error(&s, None);
            }
        }
    }

    fn failed(&self, error: &EtcdError) {
        if let Some(s) = self.shared.upgrade() {
            let msg = format!("{error}; keeping the last list");
            let mut same = false;
            if let Ok(e) = s.discovery_error.lock() {
                same = *e == msg;
            }
            if !same {
                tracing::warn!(upstream = %s.name, "{msg}");
                super::set_error(&s, Some(&msg));
            }
        }
    }

    fn alive(&self) -> bool {
        self.shared.strong_count() > 0
    }
}

fn publish(shared: &UpstreamShared, snap: &Snapshot) {
    let (list, bad) = targets(snap);
    if bad.is_empty() {
        super::set_error(shared, None);
    } else {
        let msg = bad.join("; ");
        tracing::warn!(upstream = %shared.name, "{msg}");
        super::set_error(shared, Some(&msg));
    }
    shared.publish(&list);
}

/// Reads the prefix once (so the first requests find targets), then
/// follows it on a thread of its own while the upstream lives.
pub fn start(shared: &std::sync::Arc<UpstreamShared>, d: &EtcdDiscovery, thread: String) {
    let Some(settings) = d.etcd.clone() else {
        return;
    };
    let client = match Client::new(&settings) {
        Ok(c) => c,
        Err(e) => {
            super::set_error(shared, Some(&e));
            return;
        }
    };
    let prefix = format!("{}/", d.prefix);
    match client.range(&prefix) {
        Ok(s) => publish(shared, &s),
        Err(e) => super::set_error(shared, Some(&format!("{e}; no targets yet"))),
    }
    let weak = std::sync::Arc::downgrade(shared);
    let r = std::thread::Builder::new().name(thread).spawn(move || {
        let status = Status {
            shared: weak.clone(),
        };
        etcd::follow(
            &client,
            &prefix,
            &status,
            &mut |snap| match weak.upgrade() {
                Some(s) => {
                    publish(&s, snap);
                    true
                }
                None => false,
            },
        );
    });
    if let Err(e) = r {
        tracing::error!(upstream = %shared.name, error = %e, "cannot start the discovery thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_with_optional_weights() {
        let mut s = Snapshot::default();
        let kv = |v: &str| etcd::Kv {
            value: v.as_bytes().to_vec(),
            mod_revision: 1,
            lease: 0,
        };
        s.kvs
            .insert("/s/b".into(), kv(r#"{"addr": "127.0.0.1:2", "weight": 3}"#));
        s.kvs
            .insert("/s/a".into(), kv(r#"{"addr": "127.0.0.1:1"}"#));
        s.kvs.insert("/s/c".into(), kv(r#"{"addr": "nope"}"#));
        let (list, bad) = targets(&s);
        assert_eq!(
            list,
            vec![
                ("127.0.0.1:1".parse().unwrap(), 1),
                ("127.0.0.1:2".parse().unwrap(), 3)
            ]
        );
        assert_eq!(bad.len(), 1);
        assert!(bad[0].starts_with("/s/c"), "{bad:?}");
    }
}
