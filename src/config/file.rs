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
    /// `[log]`
    pub log: Option<LogFile>,
    /// `[config]`
    pub config: Option<ConfigFileSection>,
    /// `[metrics]`
    pub metrics: Option<MetricsFile>,
    /// `[versioning]`
    pub versioning: Option<crate::filter::versioning::VersioningFile>,
    /// `[cache]`
    pub cache: Option<crate::filter::cache::CacheFile>,
    /// `[cors]`: the CORS default for every route.
    pub cors: Option<crate::filter::cors::CorsFile>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `json | combined | off`
    pub access: Option<String>,
    /// `-` (stdout) or a file path.
    pub path: Option<String>,
    /// Query parameters whose values the access log replaces with
    /// `REDACTED` (besides the ones `[auth]` reads credentials from).
    pub redact_query: Option<Vec<String>>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Record per-request metrics (default true).
    pub enabled: Option<bool>,
}

/// `[config]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFileSection {
    /// Reload when the config file changes.
    pub watch: Option<bool>,
    /// `file | etcd`: where the reloadable sections come from.
    pub source: Option<String>,
    /// etcd client URLs.
    pub etcd_endpoints: Option<Vec<String>>,
    /// Key prefix of the reloadable sections in etcd.
    pub etcd_prefix: Option<String>,
    /// etcd user (auth enabled on etcd).
    pub etcd_username: Option<String>,
    /// Environment variable holding the etcd password.
    pub etcd_password_env: Option<String>,
    /// File holding the etcd password.
    pub etcd_password_file: Option<String>,
    /// PEM CA certificates for `https://` endpoints.
    pub etcd_ca_file: Option<String>,
    /// Deadline of one etcd request.
    pub etcd_timeout_ms: Option<u64>,
}

/// One address or a list of addresses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Let the kernel back the heap with transparent huge pages.
    pub transparent_huge_pages: Option<bool>,
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
    /// Peers whose `X-Forwarded-For`, `Forwarded` and `X-Real-IP` are
    /// extended rather than replaced.
    pub trusted_proxies: Option<Vec<String>>,
    /// Forward header names that contain `_` (dropped by default).
    pub underscores_in_headers: Option<bool>,
    /// Trailer fields of chunked bodies forwarded (others are dropped).
    pub forward_trailers: Option<Vec<String>>,
    /// Client ranges let in on every route (absent = everyone).
    pub ip_allow: Option<Vec<String>>,
    /// Client ranges refused on every route.
    pub ip_deny: Option<Vec<String>>,
    /// `[[server.tls]]`: TLS listeners.
    pub tls: Option<Vec<super::tls::TlsListenerFile>>,
    /// `[server.http2]`: HTTP/2 settings.
    pub http2: Option<super::http2::Http2File>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Admin listen address.
    pub listen: Option<String>,
    /// Environment variable holding the admin bearer token.
    pub token_env: Option<String>,
    /// File holding the admin bearer token (read at start and on every
    /// reload, so the token can be rotated without a restart).
    pub token_file: Option<String>,
}

/// `[upstreams.NAME]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `static | dns | file | registry` (default `static`).
    pub discovery: Option<String>,
    /// `host:port` targets (`discovery = "static"`), each a string or
    /// `{ addr = "host:port", weight = N }`.
    #[serde(default)]
    pub targets: Vec<TargetFile>,
    /// JSON instance list watched for changes (`discovery = "file"`).
    pub file: Option<String>,
    /// `host:port` (A/AAAA) or `_service._proto.name` (SRV) (`discovery = "dns"`).
    pub dns_name: Option<String>,
    /// How often the DNS name is re-resolved.
    pub dns_interval_ms: Option<u64>,
    /// Nameserver `IP[:port]`, or a list of them, for DNS discovery
    /// (default: the system's).
    pub dns_server: Option<OneOrMany>,
    /// Registry instances expire this long after their last heartbeat.
    pub registry_ttl_ms: Option<u64>,
    /// etcd key prefix of the instances (`discovery = "etcd"`).
    pub etcd_prefix: Option<String>,
    /// Balancing algorithm.
    pub balance: Option<String>,
    /// `header:NAME | cookie:NAME | ip` (`balance = "consistent_hash"`).
    pub hash_key: Option<String>,
    /// Retries on another target (0 = none).
    pub retries: Option<u32>,
    /// Retries allowed as a percentage of requests.
    pub retry_budget_percent: Option<u32>,
    /// Deadline for one try's response head (default: `request_timeout_ms`).
    pub try_timeout_ms: Option<u64>,
    /// `[upstreams.NAME.health]`: active health checks.
    pub health: Option<HealthFile>,
    /// `[upstreams.NAME.outlier]`: passive outlier ejection.
    pub outlier: Option<OutlierFile>,
    /// `[upstreams.NAME.breaker]`: circuit breaker.
    pub breaker: Option<BreakerFile>,
    /// `[upstreams.NAME.fallback]`: answer while the breaker is open.
    pub fallback: Option<FallbackFile>,
    /// Connect timeout (default 3000: survives one SYN retransmission).
    pub connect_timeout_ms: Option<u64>,
    /// Time allowed for the response head, and between body reads.
    pub request_timeout_ms: Option<u64>,
    /// Idle pooled connections kept per target per worker.
    pub max_idle_per_target: Option<usize>,
    /// `http1` (default) or `h2`: what the targets speak.
    pub protocol: Option<String>,
    /// Connect to the targets over TLS.
    pub tls: Option<bool>,
    /// CA bundle (PEM) the targets' certificates are verified against
    /// (default: the system roots).
    pub tls_ca_file: Option<String>,
    /// Name sent (SNI) and verified (default: the target's address).
    pub tls_server_name: Option<String>,
    /// Client certificate (PEM) offered to the targets.
    pub tls_client_cert: Option<String>,
    /// Its key (PEM).
    pub tls_client_key: Option<String>,
    /// Idle pooled connections are closed after this.
    pub idle_timeout_ms: Option<u64>,
}

/// One upstream target: `"host:port"` or `{ addr = "host:port", weight = N }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TargetFile {
    /// `"127.0.0.1:9001"`
    Addr(String),
    /// `{ addr = "127.0.0.1:9001", weight = 3 }`
    Weighted(WeightedTargetFile),
}

/// `{ addr = "host:port", weight = N }`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTargetFile {
    /// `host:port`
    pub addr: String,
    /// Relative weight (default 1).
    pub weight: Option<u32>,
}

/// `[upstreams.NAME.health]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// `protocol = "h2"` upstreams: check with gRPC's health service
    /// (`grpc.health.v1.Health/Check`) for this service name ("" = the
    /// server as a whole) instead of `GET path`.
    pub grpc_service: Option<String>,
    /// Path requested with GET (default `/health`).
    pub path: Option<String>,
    /// Time between checks of one target.
    pub interval_ms: Option<u64>,
    /// Deadline for one check.
    pub timeout_ms: Option<u64>,
    /// Statuses that count as healthy (default: any 2xx).
    pub expected_statuses: Option<Vec<u16>>,
    /// Consecutive passes that make an unhealthy target healthy.
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures that make a healthy target unhealthy.
    pub unhealthy_threshold: Option<u32>,
    /// `Host` header sent with checks (default: the target address).
    pub host: Option<String>,
}

/// `[upstreams.NAME.outlier]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    /// Consecutive 5xx responses that eject a target (0 = never).
    pub consecutive_5xx: Option<u32>,
    /// Consecutive connect failures, resets or timeouts that eject a target (0 = never).
    pub consecutive_failures: Option<u32>,
    /// First ejection time; the nth ejection in a row lasts n times this.
    pub base_ejection_ms: Option<u64>,
    /// Most of the upstream's targets ejected at once, in percent.
    pub max_ejection_percent: Option<u32>,
}

/// `[upstreams.NAME.breaker]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    /// Consecutive failures that open the breaker (0 = not on count).
    pub failure_threshold: Option<u32>,
    /// Failure fraction over the window that opens it (0.0-1.0; absent = not on rate).
    pub failure_rate: Option<f64>,
    /// Requests in the window before `failure_rate` applies.
    pub min_requests: Option<u32>,
    /// Rolling window for `failure_rate`.
    pub window_ms: Option<u64>,
    /// Time open before half-open.
    pub open_ms: Option<u64>,
    /// Requests admitted while half-open; all must succeed to close.
    pub half_open_probes: Option<u32>,
    /// Response statuses counted as failures (default 500, 502, 503, 504).
    pub failure_statuses: Option<Vec<u16>>,
}

/// `[upstreams.NAME.fallback]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackFile {
    /// Status (default 200).
    pub status: Option<u16>,
    /// Content type (default `application/json`).
    pub content_type: Option<String>,
    /// Body.
    pub body: Option<String>,
}

/// One entry of a route's `upstreams = [{ name, weight }]` split.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteUpstreamFile {
    /// Upstream name.
    pub name: String,
    /// Relative share of traffic.
    pub weight: Option<u32>,
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
    /// Weighted split over several upstreams (canary, blue-green); instead of `upstream`.
    pub upstreams: Option<Vec<RouteUpstreamFile>>,
    /// Keeps a client on one side of the split: `header:NAME | cookie:NAME | ip`.
    pub sticky: Option<String>,
    /// Auth methods accepted (any one suffices); absent = public route.
    pub auth: Option<Vec<String>>,
    /// Roles required (all of them).
    pub roles: Option<Vec<String>>,
    /// Scopes required (all of them).
    pub scopes: Option<Vec<String>>,
    /// Do not forward the credential the request authenticated with
    /// (default false).
    pub hide_credentials: Option<bool>,
    /// Names of `[rate_limits.NAME]` applied to this route.
    pub rate_limit: Option<Vec<String>>,
    /// `[routes.compose]`: answered by several upstreams merged (instead of `upstream`).
    pub compose: Option<crate::filter::compose::ComposeFile>,
    /// `transform = { ... }`: request and response rewriting.
    pub transform: Option<crate::filter::transform::TransformFile>,
    /// The API version this route serves; absent = every version.
    pub version: Option<String>,
    /// Responses carry `Deprecation: true`.
    pub deprecated: Option<bool>,
    /// Responses carry `Sunset: <HTTP-date>`.
    pub sunset: Option<String>,
    /// `cache = { ttl_s, stale_while_revalidate_s, stale_if_error_s, ... }`.
    pub cache: Option<crate::filter::cache::RouteCacheFile>,
    /// `compress = true` or `{ algorithms, min_bytes, ... }`: responses
    /// compressed for clients that accept it.
    pub compress: Option<crate::filter::compress::CompressFile>,
    /// Client ranges let in on this route (absent = everyone).
    pub ip_allow: Option<Vec<String>>,
    /// Client ranges refused on this route.
    pub ip_deny: Option<Vec<String>>,
    /// `cors = { ... }` replaces `[cors]` on this route; `false` turns it off.
    pub cors: Option<crate::filter::cors::RouteCorsFile>,
    /// Protocols an `Upgrade` request may switch to on this route
    /// (default `["websocket"]`; `h2c` never).
    pub upgrades: Option<Vec<String>>,
    /// `grpc_json = { descriptor_set, services }`: JSON requests become
    /// calls of the gRPC methods their `google.api.http` rules name.
    pub grpc_json: Option<crate::filter::grpc_json::GrpcJsonFile>,
}
