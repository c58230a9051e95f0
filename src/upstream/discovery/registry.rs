//! `discovery = "registry"`: instances register and renew themselves with
//! `POST /upstreams/{name}/targets` (`{"addr": "...", "weight": 1,
//! "ttl_ms": 10000}`; posting again is the heartbeat) and leave with
//! `DELETE /upstreams/{name}/targets` (`{"addr": "..."}`). An instance
//! whose TTL passes without a heartbeat is dropped by the upstream's
//! control thread ([`expire`]).

use super::super::shared::UpstreamShared;

/// Drops expired registrations (publishing when that changed the set).
pub fn expire(shared: &UpstreamShared) {
    shared.publish_registry();
}
