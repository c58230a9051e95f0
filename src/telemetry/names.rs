//! Every metric name ringgate exports, grouped by family. Labels come only
//! from config (route and upstream names) and fixed sets (method, status
//! class), so cardinality is bounded by the config.

/// Requests answered, by route, method, status class and upstream.
pub const REQUESTS_TOTAL: &str = "ringgate_requests_total";
/// Total time from complete request head to response end, by route.
pub const REQUEST_DURATION: &str = "ringgate_request_duration_seconds";
/// Time from request sent to response head received, by route.
pub const UPSTREAM_DURATION: &str = "ringgate_upstream_duration_seconds";

/// Open client connections, by worker.
pub const OPEN_CONNECTIONS: &str = "ringgate_open_connections";
/// Client connections accepted, by worker.
pub const CONNECTIONS_TOTAL: &str = "ringgate_connections_total";
/// TLS handshakes on client connections, by result (`full`, `resumed`,
/// `timeout`, `failed`, `plain_http`).
pub const TLS_HANDSHAKES: &str = "ringgate_tls_handshakes_total";

/// New upstream connections opened, by upstream.
pub const UPSTREAM_CONNECTS: &str = "ringgate_upstream_connections_opened_total";
/// Requests sent on a reused pooled connection, by upstream.
pub const UPSTREAM_REUSED: &str = "ringgate_upstream_connections_reused_total";
/// Idle pooled connections, by upstream.
pub const POOL_IDLE: &str = "ringgate_upstream_pool_idle";
/// Upstream failures (connect, timeout, reset, invalid), by upstream.
pub const UPSTREAM_ERRORS: &str = "ringgate_upstream_errors_total";

/// Requests answered fresh from the response cache, by route.
pub const CACHE_HITS: &str = "ringgate_cache_hits_total";
/// Requests on cached routes that went to the backend, by route.
pub const CACHE_MISSES: &str = "ringgate_cache_misses_total";
/// Requests answered with a stale cached copy (stale-while-revalidate or
/// stale-if-error), by route.
pub const CACHE_STALE: &str = "ringgate_cache_stale_total";
/// Bytes held by the response cache, by worker.
pub const CACHE_BYTES: &str = "ringgate_cache_bytes";
/// Responses held by the cache, by worker.
pub const CACHE_ENTRIES: &str = "ringgate_cache_entries";
/// Cache entries evicted for space, by worker.
pub const CACHE_EVICTIONS: &str = "ringgate_cache_evictions_total";

/// Config reloads, by result (ok, error).
pub const RELOADS_TOTAL: &str = "ringgate_config_reloads_total";
/// Duration of the last successful reload.
pub const RELOAD_DURATION: &str = "ringgate_config_reload_duration_seconds";
/// 1 once the config is loaded and every worker serves.
pub const READY: &str = "ringgate_ready";

/// Rate-limit decisions, by limit and decision (admitted, delayed, limited,
/// store_error).
pub const RATE_LIMIT_DECISIONS: &str = "ringgate_rate_limit_decisions_total";
/// Rate-limit decisions made after the request waited for quota (a lease
/// from Redis, or a part another worker held), by limit and decision
/// (admitted, limited).
pub const RATE_LIMIT_WAITED: &str = "ringgate_rate_limit_waited_total";

/// Authentication and authorization decisions on routes with `auth`, by
/// route, method that decided (jwt, api_key, none) and decision (allowed,
/// missing, invalid, forbidden).
pub const AUTH_DECISIONS: &str = "ringgate_auth_decisions_total";
/// Token endpoint answers, by result (issued, invalid_request,
/// invalid_client, blocked, error).
pub const TOKEN_ENDPOINT_REQUESTS: &str = "ringgate_token_endpoint_requests_total";

/// Breaker state by upstream: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "ringgate_breaker_state";
/// Times a breaker opened, by upstream.
pub const BREAKER_OPENS: &str = "ringgate_breaker_opens_total";
/// Targets by upstream and state (healthy, unhealthy, ejected).
pub const UPSTREAM_TARGETS: &str = "ringgate_upstream_targets";
/// Outlier ejections of the current targets, by upstream.
pub const UPSTREAM_EJECTIONS: &str = "ringgate_upstream_ejections_total";

/// etcd revision the running config was read at (`[config] source = "etcd"`).
pub const CONFIG_REVISION: &str = "ringgate_config_revision";
/// 1 while etcd answers the config watch, 0 while it does not.
pub const ETCD_CONNECTED: &str = "ringgate_etcd_connected";
/// Failed attempts to reach etcd (each followed by a backoff).
pub const ETCD_ERRORS: &str = "ringgate_etcd_errors_total";
/// Full reads of the prefix after etcd compacted the watch's history.
pub const ETCD_RESYNCS: &str = "ringgate_etcd_resyncs_total";
/// The latest etcd revision refused as invalid (0: none since the last
/// applied one).
pub const CONFIG_REJECTED_REVISION: &str = "ringgate_config_rejected_revision";
