//! The configuration file as written: serde structs that mirror the TOML
//! keys one to one. Every table denies unknown keys, so a typo is an error
//! that names the key. Nothing here is checked beyond types; `validate`
//! turns a [`FileConfig`] into the runtime [`super::Config`].

use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]`
    #[serde(default)]
    pub server: ServerFile,
    /// `[admin]`
    pub admin: Option<AdminFile>,
    /// `[upstreams.NAME]`
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    /// `[[routes]]`
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// `[auth]` (`[auth.jwt]`, `[auth.token_endpoint]`, `[auth.api_key]`)
    pub auth: Option<crate::filter::auth::AuthFile>,
    /// `[[consumers]]`
    #[serde(default)]
    pub consumers: Vec<crate::filter::auth::ConsumerFile>,
    /// `[rate_limits.NAME]`
    #[serde(default)]
    pub rate_limits: BTreeMap<String, crate::filter::rate_limit::LimitFile>,
    /// `[redis]`
    pub redis: Option<crate::filter::rate_limit::RedisFile>,
}

/// One address or a list of addresses.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `listen = "127.0.0.1:8080"`
    One(String),
    /// `listen = ["127.0.0.1:8080", "[::1]:8080"]`
    Many(Vec<String>),
}

impl OneOrMany {
    /// The addresses as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Listen address(es).
    pub listen: Option<OneOrMany>,
    /// Worker threads; 0 = one per available core.
    pub workers: Option<usize>,
    /// Pin worker i to core i.
    pub pin: Option<bool>,
    /// `auto | io_uring | epoll`
    pub io: Option<String>,
    /// io_uring submission queue entries.
    pub io_uring_entries: Option<u32>,
    /// `coop_taskrun | defer_taskrun | none`
    pub io_uring_mode: Option<String>,
    /// Grace period for in-flight requests on shutdown.
    pub drain_timeout_ms: Option<u64>,
    /// Largest request head accepted (431 above).
    pub max_header_bytes: Option<usize>,
    /// Most request headers accepted (431 above).
    pub max_headers: Option<usize>,
    /// Longest request target accepted (414 above).
    pub max_uri_bytes: Option<usize>,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: Option<u64>,
    /// Time allowed for a complete request head (408 after).
    pub header_timeout_ms: Option<u64>,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout_ms: Option<u64>,
    /// Most open client connections per worker.
    pub max_connections: Option<usize>,
    /// Size of each per-connection I/O buffer.
    pub buffer_bytes: Option<usize>,
    /// listen(2) backlog.
    pub backlog: Option<i32>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Admin listen address.
    pub listen: Option<String>,
}

/// `[upstreams.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `host:port` targets.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Balancing algorithm.
    pub balance: Option<String>,
    /// Connect timeout.
    pub connect_timeout_ms: Option<u64>,
    /// Time allowed for the response head, and between body reads.
    pub request_timeout_ms: Option<u64>,
    /// Idle pooled connections kept per target per worker.
    pub max_idle_per_target: Option<usize>,
    /// Idle pooled connections are closed after this.
    pub idle_timeout_ms: Option<u64>,
}

/// `[[routes]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Route name (used in logs and metrics).
    pub name: Option<String>,
    /// Path pattern.
    pub path: Option<String>,
    /// Allowed methods; absent = any.
    pub methods: Option<Vec<String>>,
    /// Host (exact or `*.suffix`).
    pub host: Option<String>,
    /// Upstream name.
    pub upstream: Option<String>,
    /// Auth methods accepted (any one suffices); absent = public route.
    pub auth: Option<Vec<String>>,
    /// Roles required (all of them).
    pub roles: Option<Vec<String>>,
    /// Scopes required (all of them).
    pub scopes: Option<Vec<String>>,
    /// Names of `[rate_limits.NAME]` applied to this route.
    pub rate_limit: Option<Vec<String>>,
}
