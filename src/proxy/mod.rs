//! Proxying: one request through the upstream phases ([`forward`]) and
//! protocol upgrades tunnelled after a 101 ([`tunnel`]).

pub mod forward;
pub mod tunnel;
