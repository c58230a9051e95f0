//! `discovery = "static"`: the `targets` list, with optional weights,
//! published once as the upstream's first snapshot.

use crate::config::UpstreamConfig;
use std::net::SocketAddr;

/// The static targets with their weights.
pub fn targets(cfg: &UpstreamConfig) -> Vec<(SocketAddr, u32)> {
    cfg.targets
        .iter()
        .zip(cfg.weights.iter().chain(std::iter::repeat(&1)))
        .map(|(&a, &w)| (a, w))
        .collect()
}
