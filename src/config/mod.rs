//! Configuration: the TOML file ([`file`]) and the validated runtime
//! [`Config`] built from it ([`validate`]).
//!
//! Loading is two-stage. The file is read into serde structs that deny
//! unknown keys (`read`: every syntax, type and unknown-key problem is
//! collected, each with its key path and line); validation then checks
//! every value, collects *every* error (each naming the key, the bad value
//! and how to fix it) and compiles what the workers need: resolved
//! addresses, durations and the route table. Workers only ever see a
//! complete, valid `Config` behind an `Arc`.

pub mod etcd;
pub mod file;
pub mod http2;
mod read;
pub mod source;
pub mod tls;
mod upstream;
mod validate;

use crate::router::{MethodSet, RouteTable};
use std::net::SocketAddr;
use std::time::Duration;

pub use validate::{ConfigError, ConfigErrors, Errors};

/// Gives a config enum `as_str`, and `Debug` and `Display` that print it
/// as the file spells it: `GET /config` and the logs show `"auto"`, what
/// the file says, not the Rust name `Auto`.
macro_rules! spelled_as_in_the_file {
    ($ty:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// The value as the config file spells it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name),*
                }
            }
        }
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Which io driver the workers use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring, falling back to epoll with a warning.
    Auto,
    /// io_uring or fail.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

spelled_as_in_the_file!(IoMode {
    Auto => "auto",
    IoUring => "io_uring",
    Epoll => "epoll",
});

/// How each worker's io_uring is set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum UringMode {
    /// `IORING_SETUP_COOP_TASKRUN`: no interrupting IPIs for task work.
    CoopTaskrun,
    /// `IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SINGLE_ISSUER`.
    DeferTaskrun,
    /// The kernel's default ring.
    Default,
}

spelled_as_in_the_file!(UringMode {
    CoopTaskrun => "coop_taskrun",
    DeferTaskrun => "defer_taskrun",
    Default => "default",
});

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses every worker listens on (SO_REUSEPORT).
    pub listen: Vec<SocketAddr>,
    /// Number of worker threads (resolved; never 0).
    pub workers: usize,
    /// Pin worker i to core i.
    pub pin: bool,
    /// Let the kernel back the heap with transparent huge pages (the
    /// allocator asks for them); off, each connection's memory counts by
    /// the 4 KiB page it touches, not by the 2 MiB page around it.
    pub transparent_huge_pages: bool,
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
    /// Peers whose `X-Forwarded-For`, `Forwarded` and `X-Real-IP` name
    /// the client: extended (`X-Real-IP` kept) from these, replaced with
    /// the peer's address from any other.
    pub trusted_proxies: Vec<crate::filter::rate_limit::Cidr>,
    /// Forward header names that contain `_` (`underscores_in_headers`).
    pub underscores_in_headers: bool,
    /// Trailer names (lower-case) forwarded on chunked bodies.
    pub forward_trailers: Vec<Box<[u8]>>,
    /// `[server.http2]`.
    pub http2: http2::Http2Config,
}

impl ServerConfig {
    /// True when `ip` is one of `trusted_proxies`.
    #[inline]
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

/// Balancing algorithm of an upstream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each worker cycles through the targets.
    RoundRobin,
    /// Smooth weighted round robin over the targets' weights.
    Weighted,
    /// The target with the fewest of this worker's in-flight requests.
    LeastConn,
    /// Power of two choices over peak-EWMA latency times in-flight requests.
    P2cEwma,
    /// Weighted rendezvous hashing of `hash_key` with a fixed seed.
    ConsistentHash,
}

spelled_as_in_the_file!(Balance {
    RoundRobin => "round_robin",
    Weighted => "weighted",
    LeastConn => "least_conn",
    P2cEwma => "p2c_ewma",
    ConsistentHash => "consistent_hash",
});

/// What a request is hashed on (`hash_key`, a route's `sticky`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `header:NAME` (name stored lower-case).
    Header(String),
    /// `cookie:NAME`.
    Cookie(String),
    /// `ip`: the client address.
    Ip,
}

/// Where an upstream's targets come from (`discovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// The `targets` list.
    Static,
    /// A DNS name re-resolved on a control-plane thread.
    Dns(DnsDiscovery),
    /// A watched JSON file of instances.
    File(std::path::PathBuf),
    /// Instances register through the admin API with a TTL.
    Registry {
        /// Expiry after the last heartbeat.
        ttl: Duration,
    },
    /// The keys under an etcd prefix, written by service instances with
    /// a lease (see [`source`] for registry upstreams kept in etcd).
    Etcd(EtcdDiscovery),
}

/// `discovery = "etcd"`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdDiscovery {
    /// `etcd_prefix`: the instances' keys are below `PREFIX/`.
    pub prefix: String,
    /// The etcd of `[config]` (set once the whole file is read).
    pub etcd: Option<etcd::EtcdSettings>,
    /// A `discovery = "registry"` upstream whose registrations live in
    /// etcd (source etcd): their TTL.
    pub registry_ttl: Option<Duration>,
}

/// `discovery = "dns"`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// The name as written.
    pub name: String,
    /// Host to query (without port or `_service._proto.` for A/AAAA).
    pub host: String,
    /// Port for A/AAAA answers; `None` for SRV.
    pub port: Option<u16>,
    /// Re-resolve interval.
    pub interval: Duration,
    /// Nameservers (`dns_server`), asked in turn; empty = the system's
    /// (every `nameserver` of `/etc/resolv.conf`, after `/etc/hosts`).
    pub servers: Vec<SocketAddr>,
}

/// `[upstreams.NAME.health]`, validated.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// The targets speak HTTP/2 (`protocol = "h2"`): checks go over it.
    pub h2: bool,
    /// `grpc_service`: a gRPC health check of this service.
    pub grpc_service: Option<String>,
    /// Path requested.
    pub path: String,
    /// `Host` header.
    pub host: Option<String>,
    /// Interval between checks of one target.
    pub interval: Duration,
    /// Deadline of one check.
    pub timeout: Duration,
    /// Healthy statuses; empty = any 2xx.
    pub expected_statuses: Vec<u16>,
    /// Passes to become healthy.
    pub healthy_threshold: u32,
    /// Failures to become unhealthy.
    pub unhealthy_threshold: u32,
    /// The upstream's TLS settings (checks go over TLS too).
    pub tls: Option<std::sync::Arc<crate::upstream::tls::UpstreamTls>>,
}

/// `[upstreams.NAME.outlier]`, validated.
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// Consecutive 5xx that eject (0 = never).
    pub consecutive_5xx: u32,
    /// Consecutive connect failures / resets / timeouts that eject (0 = never).
    pub consecutive_failures: u32,
    /// Base ejection time.
    pub base_ejection: Duration,
    /// Most targets ejected at once, in percent.
    pub max_ejection_percent: u32,
}

/// `[upstreams.NAME.breaker]`, validated.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failures that open it (0 = off).
    pub failure_threshold: u32,
    /// Failure fraction over the window that opens it (`None` = off).
    pub failure_rate: Option<f64>,
    /// Requests in the window before the rate applies.
    pub min_requests: u32,
    /// Rolling window.
    pub window: Duration,
    /// Open time before half-open.
    pub open: Duration,
    /// Probes admitted while half-open.
    pub half_open_probes: u32,
    /// Statuses counted as failures.
    pub failure_statuses: Vec<u16>,
}

/// `[upstreams.NAME.fallback]`, validated.
#[derive(Debug, Clone)]
pub struct FallbackConfig {
    /// Status.
    pub status: u16,
    /// Content type.
    pub content_type: String,
    /// Body.
    pub body: String,
}

/// `[upstreams.NAME]`, validated.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Name from the config.
    pub name: String,
    /// Where the targets come from.
    pub discovery: Discovery,
    /// Resolved static targets (`discovery = "static"`).
    pub targets: Vec<SocketAddr>,
    /// Weight of each static target, like `targets`.
    pub weights: Vec<u32>,
    /// Balancing algorithm.
    pub balance: Balance,
    /// Key for `consistent_hash`.
    pub hash_key: Option<HashKey>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Overall deadline of a request's upstream exchange (all tries), and
    /// the longest gap between response body reads.
    pub request_timeout: Duration,
    /// Deadline for one try's response head.
    pub try_timeout: Duration,
    /// Retries on another target.
    pub retries: u32,
    /// Retries allowed as a percentage of requests.
    pub retry_budget_percent: u32,
    /// Idle pooled connections kept per target per worker.
    pub max_idle_per_target: usize,
    /// Pooled connections idle longer than this are closed.
    pub idle_timeout: Duration,
    /// Active health checks.
    pub health: Option<HealthConfig>,
    /// Passive outlier ejection.
    pub outlier: Option<OutlierConfig>,
    /// Circuit breaker.
    pub breaker: Option<BreakerConfig>,
    /// Answer while the breaker is open.
    pub fallback: Option<FallbackConfig>,
    /// The `[upstreams.NAME]` table as written: a reload that leaves it
    /// (and the addresses its targets resolve to) unchanged keeps
    /// [`Self::state`] and the workers' pools.
    pub section: std::sync::Arc<file::UpstreamFile>,
    /// State shared by all workers and the control plane: target
    /// snapshots, health, ejections, breaker.
    pub state: std::sync::Arc<crate::upstream::UpstreamShared>,
    /// `tls = true` and its keys, compiled (`None`: plain TCP).
    pub tls: Option<std::sync::Arc<crate::upstream::tls::UpstreamTls>>,
    /// `protocol`: what the targets speak.
    pub protocol: Protocol,
}

/// What an upstream's targets speak (`protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (`http1`, the default).
    Http1,
    /// HTTP/2 (`h2`): h2c with prior knowledge, or ALPN h2 over TLS; one
    /// multiplexed connection per target per worker.
    H2,
}

/// A route's weighted split over several upstreams.
#[derive(Debug, Clone)]
pub struct Split {
    /// `(index into Config::upstreams, weight)`, weights > 0.
    pub upstreams: Vec<(usize, u32)>,
    /// Sum of the weights.
    pub total: u32,
    /// Keeps a client on one side.
    pub sticky: Option<HashKey>,
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
    /// Index into [`Config::upstreams`] (the first of a split).
    pub upstream: usize,
    /// `upstreams = [{ name, weight }]`: a weighted split.
    pub split: Option<std::sync::Arc<Split>>,
    /// Position in the file's `[[routes]]` list.
    pub index: usize,
    /// The route's filters, in order.
    pub chain: std::sync::Arc<crate::filter::Chain>,
    /// `upgrades`: the protocols (lower-case) an `Upgrade` request may
    /// switch to; any other upgrade is dropped and the request served as
    /// plain HTTP/1.1.
    pub upgrades: Vec<Box<[u8]>>,
    /// `grpc_json`, compiled: the route answers by gRPC-JSON transcoding.
    pub grpc_json: Option<std::sync::Arc<crate::filter::grpc_json::GrpcJson>>,
    /// `[routes.compose]`, compiled: the route is answered by its parts.
    pub compose: Option<std::sync::Arc<crate::filter::compose::Compose>>,
    /// `transform`, compiled.
    pub transform: Option<std::sync::Arc<crate::filter::transform::Transform>>,
    /// The API version it serves (normalised); `None` = every version.
    pub version: Option<Box<str>>,
    /// `Deprecation`/`Sunset` response header lines, when set.
    pub deprecation: Option<Box<[u8]>>,
    /// `cache`, compiled: responses are stored and served per worker.
    pub cache: Option<std::sync::Arc<crate::filter::cache::RouteCache>>,
    /// `compress`, compiled.
    pub compress: Option<std::sync::Arc<crate::filter::compress::Policy>>,
}

/// `[admin]`, validated.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin listen address.
    pub listen: SocketAddr,
    /// Bearer token required on every admin request, when set.
    pub token: Option<String>,
    /// Name of the variable the token came from (for `GET /config`).
    pub token_env: Option<String>,
    /// The file the token came from (for `GET /config`).
    pub token_file: Option<String>,
}

/// `[log]`, validated.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Access-log format, `None` = off.
    pub access: Option<crate::telemetry::access_log::LogFormat>,
    /// `-` or a file path.
    pub path: String,
    /// Query parameters whose values are written as `REDACTED`:
    /// `log.redact_query`, plus `auth.api_key.query` and
    /// `auth.jwt.token_query` when set.
    pub redact_query: Vec<Box<[u8]>>,
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
    /// `[log]`
    pub log: LogConfig,
    /// The access-log writer for `log`, once the server runs this config
    /// (set at start, carried or replaced by a reload; `None` when off).
    pub access_log: Option<std::sync::Arc<crate::telemetry::access_log::AccessLog>>,
    /// `[config] watch`: reload when the file changes.
    pub watch: bool,
    /// `[metrics] enabled`: record per-request metrics.
    pub metrics_enabled: bool,
    /// Metric slot of each route (row in the per-worker metric arrays);
    /// kept stable across reloads by route name.
    pub route_slots: Vec<usize>,
    /// Metric slot of each upstream, kept stable by name.
    pub upstream_slots: Vec<usize>,
    /// Metric slot of each rate limit (by index in `rate_limits`), kept
    /// stable by name.
    pub rate_limit_slots: Vec<usize>,
    /// `[auth]` and `[[consumers]]`, compiled; shared by all workers.
    pub auth: Option<std::sync::Arc<crate::filter::auth::Auth>>,
    /// `[rate_limits.*]` and `[redis]`, compiled; shared by all workers.
    pub rate_limits: Option<std::sync::Arc<crate::filter::rate_limit::Limits>>,
    /// `[versioning]` and the routes' versions; `None` when unused.
    pub versioning: Option<std::sync::Arc<crate::filter::versioning::Versioning>>,
    /// `[cache]` (defaults when absent).
    pub cache: crate::filter::cache::CacheSettings,
    /// `[config] source = "etcd"`: the fleet's etcd state and the revision
    /// this generation was read at; `None` for a file.
    pub etcd: Option<source::FromEtcd>,
    /// `[[server.tls]]`, compiled (certificates loaded).
    pub tls: Vec<std::sync::Arc<crate::tls::TlsListener>>,
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
