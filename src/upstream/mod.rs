//! Upstreams: where targets come from, which one gets a request, and when
//! to stop sending to them.
//!
//! Key components, worker side (worker-local `Rc`/`Cell`, no lock):
//! [`pool`] (each worker's view of an upstream's targets and their
//! keep-alive pools), [`balance`] (round robin, weighted, least_conn,
//! p2c_ewma, consistent_hash), [`retry`] (the retry budget), [`exchange`]
//! (one request/response exchange, read whole, for the requests ringgate
//! makes itself: compose parts). Shared side
//! (atomics and `ArcSwap`, never a lock on the request path): [`shared`]
//! (target snapshots, health and ejection flags, registry store),
//! [`breaker`] (the circuit breaker). Control plane (own threads):
//! [`discovery`] (static, dns, file, registry) and [`health`] (one active
//! checker for all targets).
//!
//! How it fits: `config::validate` compiles each `[upstreams.NAME]` with a
//! fresh [`UpstreamShared`]; [`start_control`] (called by
//! `Server::start`) starts discovery and health threads; workers build
//! their [`pool::UpstreamState`] from the shared state and the proxy
//! (`proxy::forward`) picks, admits, reports and retries through it. The
//! admin API reaches the registry and the state through [`admin_request`].

pub mod balance;
pub mod breaker;
pub mod discovery;
pub mod exchange;
pub mod h2;
pub mod hash;
pub mod health;
pub mod pool;
pub mod retry;
pub mod shared;
pub mod tls;

pub use shared::UpstreamShared;

use crate::config::{Config, Discovery, HashKey};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Milliseconds on a process-wide monotonic clock (never 0 after start).
#[inline]
pub fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(std::time::Duration::from_secs(1))
            .unwrap_or(now)
    });
    base.elapsed().as_millis() as u64
}

/// Starts the control-plane side of every upstream: the first resolution
/// and the thread of each dynamic discovery source, and the health
/// checker. Idempotent per config.
pub fn start_control(config: &Config) {
    for u in &config.upstreams {
        if !u.state.started.swap(true, Ordering::AcqRel) {
            discovery::start(u);
        }
    }
    health::update(config);
}

/// The fixed-seed hash of the request's `key` (header, cookie or client
/// address), or `None` when the request does not carry it.
pub fn request_key(
    key: &HashKey,
    buf: &[u8],
    lines: &[crate::http::parse::HeaderLine],
    peer_ip: &[u8],
) -> Option<u64> {
    match key {
        HashKey::Ip => Some(hash::hash_bytes(peer_ip)),
        HashKey::Header(name) => lines
            .iter()
            .find(|l| crate::http::name_eq(l.name.of(buf), name.as_bytes()))
            .map(|l| hash::hash_bytes(l.value.of(buf))),
        HashKey::Cookie(name) => lines
            .iter()
            .filter(|l| crate::http::name_eq(l.name.of(buf), b"cookie"))
            .find_map(|l| cookie(l.value.of(buf), name.as_bytes()))
            .map(hash::hash_bytes),
    }
}

/// The value of cookie `name` in a `Cookie` header value.
pub fn cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|kv| {
        let kv = kv.trim_ascii();
        let eq = kv.iter().position(|&b| b == b'=')?;
        (&kv[..eq] == name).then(|| kv[eq + 1..].trim_ascii())
    })
}

/// Admin endpoints under `/upstreams`, for the admin listener:
///
/// - `GET /upstreams`: every upstream's targets, health, ejection and
///   breaker state as JSON; `GET /upstreams/{name}`: one of them;
/// - `POST /upstreams/{name}/targets` with `{"addr": "IP:port",
///   "weight": 1, "ttl_ms": 10000}` (weight and ttl optional): registers an
///   instance of a `discovery = "registry"` upstream, or renews it (the
///   heartbeat);
/// - `DELETE /upstreams/{name}/targets` with `{"addr": "IP:port"}`:
///   deregisters it.
///
/// Returns the status and a JSON body, or `None` when the path is not one
/// of these.
pub fn admin_request(
    config: &Config,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    let path = path.split('?').next().unwrap_or(path);
    let rest = path.strip_prefix("/upstreams")?;
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let find = |name: &str| config.upstreams.iter().find(|u| u.name == name);
    let json = |status: u16, v: serde_json::Value| Some((status, v.to_string()));
    let error = |status: u16, msg: String| {
        json(
            status,
            serde_json::json!({ "error": msg, "status": status }),
        )
    };
    match parts.as_slice() {
        [] => {
            if method != "GET" {
                return error(405, format!("{method} is not allowed here; use GET"));
            }
            let ups: Vec<serde_json::Value> = config
                .upstreams
                .iter()
                .map(|u| u.state.state_json(u))
                .collect();
            json(200, serde_json::json!({ "upstreams": ups }))
        }
        [name] => {
            if method != "GET" {
                return error(405, format!("{method} is not allowed here; use GET"));
            }
            match find(name) {
                Some(u) => json(200, u.state.state_json(u)),
                None => error(404, format!("no upstream named {name:?}")),
            }
        }
        [name, "targets"] => {
            let Some(u) = find(name) else {
                return error(404, format!("no upstream named {name:?}"));
            };
            if method == "GET" {
                return json(200, u.state.state_json(u)["targets"].clone());
            }
            if method != "POST" && method != "DELETE" {
                return error(
                    405,
                    format!("{method} is not allowed here; use GET, POST or DELETE"),
                );
            }
            if !matches!(u.discovery, Discovery::Registry { .. }) {
                return error(
                    409,
                    format!(
                        "upstream {name:?} uses discovery = \"{}\"; only \"registry\" upstreams accept registrations",
                        discovery::kind(&u.discovery)
                    ),
                );
            }
            let reg = match Registration::parse(body) {
                Ok(r) => r,
                Err(e) => return error(400, e),
            };
            let addr = reg.addr;
            if method == "POST" {
                u.state.register(addr, reg.weight, reg.ttl_ms);
                let ttl = reg
                    .ttl_ms
                    .or(u.state.registry.as_ref().map(|r| r.ttl_ms))
                    .unwrap_or(0);
                json(
                    200,
                    serde_json::json!({ "registered": addr.to_string(), "ttl_ms": ttl }),
                )
            } else if u.state.deregister(addr) {
                json(200, serde_json::json!({ "deregistered": addr.to_string() }))
            } else {
                error(404, format!("{addr} is not registered with {name:?}"))
            }
        }
        _ => error(404, format!("no admin endpoint {path}")),
    }
}

/// A registry target's registration, as the admin API takes it (`POST` /
/// `DELETE /upstreams/NAME/targets`), whether the registry lives in the
/// process or in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The target.
    pub addr: SocketAddr,
    /// Its weight (default 1).
    pub weight: u32,
    /// Its time to live (absent: the upstream's default).
    pub ttl_ms: Option<u64>,
}

impl Registration {
    /// Reads `{"addr": "IP:port", "weight": 1, "ttl_ms": 10000}`; `Err`
    /// is the 400 message.
    pub fn parse(body: &[u8]) -> Result<Registration, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Reg {
            addr: String,
            weight: Option<u32>,
            ttl_ms: Option<u64>,
        }
        let reg: Reg = serde_json::from_slice(body).map_err(|e| {
            format!("body must be {{\"addr\": \"IP:port\", \"weight\": 1, \"ttl_ms\": 10000}}: {e}")
        })?;
        let addr = reg
            .addr
            .parse::<SocketAddr>()
            .map_err(|_| format!("addr {:?} is not an IP:port address", reg.addr))?;
        if reg.ttl_ms == Some(0) {
            return Err(String::from("ttl_ms must be greater than 0"));
        }
        Ok(Registration {
            addr,
            weight: reg.weight.unwrap_or(1),
            ttl_ms: reg.ttl_ms,
        })
    }
}
