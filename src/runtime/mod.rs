//! The runtime: one pinned thread per worker, each with its own monoio
//! event loop, `SO_REUSEPORT` listeners, upstream pools and state
//! ([`worker`]); the server that starts them and stops them with a drain
//! ([`server`]).

pub mod reload;
pub mod server;
pub mod watchdog;
pub mod worker;

pub use server::{Server, ServerHandle};
