//! ringgate: a thread-per-core, io_uring API gateway.
//!
//! Each worker thread is pinned to a core and runs its own monoio event
//! loop with its own `SO_REUSEPORT` listener and upstream pools; a request
//! never leaves the core that accepted it. Request heads are parsed in place
//! and forwarded as slices of the bytes read; routes come from an immutable
//! trie shared read-only by all workers.
//!
//! Module map, in request order: [`runtime`] (workers, start, drain) →
//! [`http`] (parse, framing, head writing, the connection loop) →
//! [`router`] (host + path trie, methods) → [`proxy`] (upstream exchange,
//! tunnels) → [`upstream`] (pools, balancing). [`config`] turns TOML into
//! the validated [`config::Config`] every worker reads; [`tls`] terminates
//! TLS in front of [`http`] (and [`upstream::tls`] speaks it to backends);
//! [`demo`] is the built-in tour behind `ringgate demo`.

#![deny(missing_docs)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod error;
pub mod filter;
pub mod http;
pub mod phases;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod telemetry;
pub mod tls;
pub mod upstream;
