//! Discovery: where an upstream's targets come from, and the control-plane
//! threads that keep them current.
//!
//! Key components: one module per source — [`static_list`] (the `targets`
//! list, published once at compile time), [`dns`] (a name re-resolved
//! every `dns_interval_ms`, or sooner when its TTL runs out: A/AAAA or
//! SRV, through hickory's resolver),
//! [`file`] (a watched JSON file) and [`registry`] (instances registering
//! through the admin API, expiring without heartbeats), [`etcd`] (the keys
//! under an etcd prefix, written by instances with a lease) — and [`start`],
//! which spawns one thread per dynamic upstream.
//!
//! How it fits: every source ends in [`UpstreamShared::publish`], which
//! swaps in a new immutable snapshot; workers notice the version change
//! between requests (see [`crate::upstream::pool::UpstreamState::list`]).
//! A source that fails keeps the last good list and logs why. Threads hold
//! only a `Weak` to the upstream and end once the config is dropped.

pub mod dns;
pub mod etcd;
pub mod file;
pub mod registry;
pub mod static_list;

use super::shared::UpstreamShared;
use crate::config::{Discovery, UpstreamConfig};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The config name of a discovery source.
pub fn kind(d: &Discovery) -> &'static str {
    match d {
        Discovery::Static => "static",
        Discovery::Dns(_) => "dns",
        Discovery::File(_) => "file",
        Discovery::Registry { .. } => "registry",
        Discovery::Etcd(d) if d.registry_ttl.is_some() => "registry",
        Discovery::Etcd(_) => "etcd",
    }
}

/// Records (or clears) the reason the last discovery attempt failed.
pub(crate) fn set_error(shared: &UpstreamShared, err: Option<&str>) {
    if let Ok(mut e) = shared.discovery_error.lock() {
        e.clear();
        if let Some(m) = err {
            e.push_str(m);
        }
    }
}

/// Resolves the upstream once (so the first requests find targets) and
/// starts its discovery thread. Static upstreams need neither.
pub fn start(cfg: &UpstreamConfig) {
    let shared = &cfg.state;
    let weak = Arc::downgrade(shared);
    let name = format!("ringgate-disc-{}", cfg.name);
    let spawned = match &cfg.discovery {
        Discovery::Static => return,
        Discovery::Dns(d) => {
            // The first resolution happens here, on the control thread
            // that starts the config; the resolver then moves to the
            // upstream's own thread.
            let (resolver, wait) = match dns::DnsResolver::new(d) {
                Ok(r) => {
                    let wait = dns::refresh(shared, d, &r);
                    (Some(r), wait)
                }
                Err(e) => {
                    dns::failed(shared, d, &e);
                    (None, d.interval)
                }
            };
            let d = d.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || run_dns(weak, d, resolver, wait))
        }
        Discovery::File(path) => {
            let mut w = file::Watcher::new(path.clone());
            w.poll(shared);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || run(weak, file::POLL, move |s| w.poll(s)))
        }
        Discovery::Etcd(d) => {
            etcd::start(shared, d, name);
            return;
        }
        Discovery::Registry { ttl } => {
            let tick = (*ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
            std::thread::Builder::new()
                .name(name)
                .spawn(move || run(weak, tick, registry::expire))
        }
    };
    if let Err(e) = spawned {
        tracing::error!(upstream = %cfg.name, error = %e, "cannot start the discovery thread");
    }
}

/// Re-resolves `d` while the upstream lives, first after `wait`, then
/// whenever the last answer says (see [`dns::refresh`]). A resolver that
/// could not be built is built again at each turn.
fn run_dns(
    weak: Weak<UpstreamShared>,
    d: crate::config::DnsDiscovery,
    mut resolver: Option<dns::DnsResolver>,
    mut wait: Duration,
) {
    loop {
        std::thread::sleep(wait);
        let Some(s) = weak.upgrade() else { return };
        if resolver.is_none() {
            match dns::DnsResolver::new(&d) {
                Ok(r) => resolver = Some(r),
                Err(e) => dns::failed(&s, &d, &e),
            }
        }
        wait = match &resolver {
            Some(r) => dns::refresh(&s, &d, r),
            None => d.interval,
        };
    }
}

/// Calls `f` every `every` while the upstream lives.
fn run(weak: Weak<UpstreamShared>, every: Duration, mut f: impl FnMut(&UpstreamShared)) {
    loop {
        std::thread::sleep(every);
        match weak.upgrade() {
            Some(s) => f(&s),
            None => return,
        }
    }
}
