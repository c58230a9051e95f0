//! Proxying: one request through the upstream phases ([`forward`]), one
//! request answered by several upstreams merged ([`compose`], with the JSON
//! splicing of [`json`]) and protocol upgrades tunnelled after a 101
//! ([`tunnel`]).

pub mod forward;
pub mod forward_h2;
pub mod json;
pub mod session;
pub mod tunnel;
