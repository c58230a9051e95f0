//! Upstreams on one worker: target selection ([`balance`]) and keep-alive
//! connection pools ([`pool`]). Everything here is worker-local (`Rc`,
//! `Cell`, `RefCell`): no lock and no atomic shared with another core.

pub mod balance;
pub mod pool;
