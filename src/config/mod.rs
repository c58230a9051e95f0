//! Configuration: the TOML file ([`file`]) and the validated runtime
//! [`Config`] built from it ([`validate`]).
//!
//! Loading is two-stage. Serde reads the file into structs that deny unknown
//! keys; validation then checks every value, collects *every* error (each
//! naming the key, the bad value and how to fix it) and compiles what the
//! workers need: resolved addresses, durations and the route table. Workers
//! only ever see a complete, valid `Config` behind an `Arc`.

pub mod file;
mod validate;

use crate::router::{MethodSet, RouteTable};
use std::net::SocketAddr;
use std::time::Duration;

pub use validate::{ConfigError, ConfigErrors, Errors};

/// Which io driver the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring, falling back to epoll with a warning.
    Auto,
    /// io_uring or fail.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// How each worker's io_uring is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringMode {
    /// `IORING_SETUP_COOP_TASKRUN`: no interrupting IPIs for task work.
    CoopTaskrun,
    /// `IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SINGLE_ISSUER`.
    DeferTaskrun,
    /// The kernel's default ring.
    Default,
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses every worker listens on (SO_REUSEPORT).
    pub listen: Vec<SocketAddr>,
    /// Number of worker threads (resolved; never 0).
    pub workers: usize,
    /// Pin worker i to core i.
    pub pin: bool,
    /// Driver choice.
    pub io: IoMode,
    /// io_uring entries.
    pub io_uring_entries: u32,
    /// io_uring setup flags.
    pub io_uring_mode: UringMode,
    /// Grace period for in-flight requests on shutdown.
    pub drain_timeout: Duration,
    /// Largest request head (431 above).
    pub max_header_bytes: usize,
    /// Most request headers (431 above).
    pub max_headers: usize,
    /// Longest request target (414 above).
    pub max_uri_bytes: usize,
    /// Largest request body (413 above).
    pub max_body_bytes: u64,
    /// Deadline for a complete request head (408).
    pub header_timeout: Duration,
    /// Idle keep-alive timeout.
    pub idle_timeout: Duration,
    /// Most client connections per worker.
    pub max_connections: usize,
    /// Per-connection buffer size.
    pub buffer_bytes: usize,
    /// listen(2) backlog.
    pub backlog: i32,
}

/// Balancing algorithm of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each worker cycles through the targets.
    RoundRobin,
    /// The target with the fewest of this worker's in-flight requests.
    LeastConn,
}

/// `[upstreams.NAME]`, validated.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Name from the config.
    pub name: String,
    /// Resolved targets.
    pub targets: Vec<SocketAddr>,
    /// Balancing algorithm.
    pub balance: Balance,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Response head deadline, and the longest gap between body reads.
    pub request_timeout: Duration,
    /// Idle pooled connections kept per target per worker.
    pub max_idle_per_target: usize,
    /// Pooled connections idle longer than this are closed.
    pub idle_timeout: Duration,
}

/// `[[routes]]`, validated.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Route name.
    pub name: String,
    /// Path pattern as written.
    pub path: String,
    /// Methods, `None` = any.
    pub methods: Option<MethodSet>,
    /// Host pattern.
    pub host: Option<String>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Position in the file's `[[routes]]` list.
    pub index: usize,
    /// The route's filters, in order.
    pub chain: std::sync::Arc<crate::filter::Chain>,
}

/// `[admin]`, validated.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin listen address.
    pub listen: SocketAddr,
}

/// A complete, valid configuration.
#[derive(Debug)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[admin]`
    pub admin: Option<AdminConfig>,
    /// Upstreams, indexed by id.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes, indexed by the ids the route table returns.
    pub routes: Vec<RouteConfig>,
    /// The compiled route trie.
    pub table: RouteTable,
    /// `[auth]` and `[[consumers]]`, compiled; shared by all workers.
    pub auth: Option<std::sync::Arc<crate::filter::auth::Auth>>,
    /// `[rate_limits.*]` and `[redis]`, compiled; shared by all workers.
    pub rate_limits: Option<std::sync::Arc<crate::filter::rate_limit::Limits>>,
}

impl Config {
    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        validate::parse(text)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: String::from("(file)"),
                message: format!("cannot read {}: {e}", path.display()),
                fix: String::from("check the path given with -c and its permissions"),
            }])
        })?;
        Self::parse(&text)
    }
}
