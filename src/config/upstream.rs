//! Compiling `[upstreams.NAME]` (discovery, balancing, retries, health,
//! outlier ejection, breaker, fallback) and a route's choice of upstream
//! (`upstream`, or a weighted `upstreams` split with `sticky`). Every
//! problem is pushed to [`Errors`] with the key and the fix.

use super::file::{RouteFile, TargetFile, UpstreamFile};
use super::validate::Errors;
use super::*;
use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::Arc;

/// Default `connect_timeout_ms`: long enough for one SYN retransmission
/// (Linux sends the first after 1 s, the second 2 s later), so one SYN a
/// busy backend dropped is not a 504; short enough that a target that
/// swallows SYNs costs 3 s before the retry on another target.
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3000;

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

/// `header:NAME | cookie:NAME | ip`.
pub(super) fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    if s == "ip" {
        return Ok(HashKey::Ip);
    }
    let valid = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match s.split_once(':') {
        Some(("header", n)) if valid(n) => Ok(HashKey::Header(n.to_ascii_lowercase())),
        Some(("cookie", n)) if valid(n) => Ok(HashKey::Cookie(n.to_string())),
        _ => Err(format!("{s:?} is not a hash key")),
    }
}

const HASH_KEY_FIX: &str = "use \"header:X-User-Id\", \"cookie:session\" or \"ip\"";

fn resolve_target(t: &str) -> Result<SocketAddr, String> {
    match t.parse::<SocketAddr>() {
        Ok(a) => Ok(a),
        Err(_) => match t.to_socket_addrs() {
            Ok(mut addrs) => addrs
                .next()
                .ok_or_else(|| format!("{t:?} resolves to no address")),
            Err(e) => Err(format!("{t:?} is not a valid host:port ({e})")),
        },
    }
}

/// Compiles one `[upstreams.NAME]` table, with fresh shared state.
pub(super) fn compile_upstream(name: &str, up: &UpstreamFile, errs: &mut Errors) -> UpstreamConfig {
    let key = |k: &str| format!("upstreams.{name}.{k}");
    let protocol = match up.protocol.as_deref() {
        None | Some("http1") => super::Protocol::Http1,
        Some("h2") => super::Protocol::H2,
        Some(other) => {
            errs.push(
                key("protocol"),
                format!("{other:?} is not a protocol ringgate speaks to upstreams"),
                "use \"http1\" (the default) or \"h2\" (HTTP/2: h2c, or ALPN h2 with tls = true)",
            );
            super::Protocol::Http1
        }
    };
    let tls = crate::upstream::tls::compile(
        &crate::upstream::tls::UpstreamTlsFile {
            tls: up.tls,
            h2: protocol == super::Protocol::H2,
            ca_file: up.tls_ca_file.as_deref(),
            server_name: up.tls_server_name.as_deref(),
            client_cert: up.tls_client_cert.as_deref(),
            client_key: up.tls_client_key.as_deref(),
        },
        &format!("upstreams.{name}"),
        errs,
    );
    let kind = up.discovery.as_deref().unwrap_or("static");
    // Keys that belong to one discovery source only.
    for (k, set, owner) in [
        ("file", up.file.is_some(), "file"),
        ("dns_name", up.dns_name.is_some(), "dns"),
        ("dns_interval_ms", up.dns_interval_ms.is_some(), "dns"),
        ("dns_server", up.dns_server.is_some(), "dns"),
        ("registry_ttl_ms", up.registry_ttl_ms.is_some(), "registry"),
        ("etcd_prefix", up.etcd_prefix.is_some(), "etcd"),
    ] {
        if set && kind != owner {
            errs.push(
                key(k),
                format!("{k} applies to discovery = \"{owner}\", but discovery is \"{kind}\""),
                format!("remove {k} or set discovery = \"{owner}\""),
            );
        }
    }
    if kind != "static" && !up.targets.is_empty() {
        errs.push(
            key("targets"),
            format!("targets are listed, but discovery = \"{kind}\" finds them itself"),
            "remove targets, or set discovery = \"static\"",
        );
    }

    let mut targets = Vec::new();
    let mut weights = Vec::new();
    let discovery = match kind {
        "static" => {
            if up.targets.is_empty() {
                errs.push(
                    key("targets"),
                    "no targets",
                    "list at least one \"host:port\", e.g. targets = [\"127.0.0.1:9001\"]",
                );
            }
            for t in &up.targets {
                let (addr, weight) = match t {
                    TargetFile::Addr(a) => (a, 1),
                    TargetFile::Weighted(w) => (&w.addr, w.weight.unwrap_or(1)),
                };
                match resolve_target(addr) {
                    Ok(a) if targets.contains(&a) => errs.push(
                        key("targets"),
                        format!("{addr:?} is listed twice"),
                        "list each target once (use a weight to give it more traffic)",
                    ),
                    Ok(a) => {
                        targets.push(a);
                        weights.push(weight);
                    }
                    Err(m) => errs.push(
                        key("targets"),
                        m,
                        "write targets as \"127.0.0.1:9001\", \"host.internal:9001\" or { addr = \"127.0.0.1:9001\", weight = 2 }",
                    ),
                }
            }
            if !weights.is_empty() && weights.iter().all(|&w| w == 0) {
                errs.push(
                    key("targets"),
                    "every target has weight 0, so none would get traffic",
                    "give at least one target a weight above 0",
                );
            }
            Discovery::Static
        }
        "dns" => {
            let interval = up.dns_interval_ms.unwrap_or(5000);
            if interval == 0 {
                errs.push(
                    key("dns_interval_ms"),
                    "must be greater than 0",
                    "use milliseconds, e.g. 5000",
                );
            }
            let written = up.dns_server.as_ref().map_or_else(Vec::new, |s| s.to_vec());
            if up.dns_server.is_some() && written.is_empty() {
                errs.push(
                    key("dns_server"),
                    "an empty list",
                    "list at least one nameserver, e.g. [\"127.0.0.1:53\"], or remove dns_server to use the system's",
                );
            }
            let servers: Vec<SocketAddr> = written
                .iter()
                .filter_map(|s| {
                    let parsed = s
                        .parse::<SocketAddr>()
                        .ok()
                        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(|ip| (ip, 53).into()));
                    if parsed.is_none() {
                        errs.push(
                            key("dns_server"),
                            format!("{s:?} is not an IP or IP:port address"),
                            "write the nameserver as \"127.0.0.1:53\"",
                        );
                    }
                    parsed
                })
                .collect();
            let name_s = up.dns_name.clone().unwrap_or_default();
            let (host, port) = if name_s.is_empty() {
                errs.push(
                    key("dns_name"),
                    "missing",
                    "add dns_name = \"host:port\" (A/AAAA) or \"_http._tcp.name\" (SRV)",
                );
                (String::new(), Some(0))
            } else if name_s.starts_with('_') {
                (name_s.clone(), None)
            } else {
                match name_s.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
                    Some((h, Ok(p))) if !h.is_empty() && p > 0 => (
                        h.trim_start_matches('[').trim_end_matches(']').to_string(),
                        Some(p),
                    ),
                    _ => {
                        errs.push(
                            key("dns_name"),
                            format!("{name_s:?} has no port, and is not an SRV name"),
                            "write \"orders.internal:8080\" (A/AAAA) or \"_http._tcp.orders.internal\" (SRV)",
                        );
                        (String::new(), Some(0))
                    }
                }
            };
            Discovery::Dns(DnsDiscovery {
                name: name_s,
                host,
                port,
                interval: Duration::from_millis(interval.max(1)),
                servers,
            })
        }
        "file" => match &up.file {
            Some(f) if !f.is_empty() => Discovery::File(std::path::PathBuf::from(f)),
            _ => {
                errs.push(
                    key("file"),
                    "missing",
                    "add file = \"instances.json\" (a JSON list of {\"addr\": \"IP:port\", \"weight\": 1})",
                );
                Discovery::File(std::path::PathBuf::new())
            }
        },
        "registry" => {
            let ttl = up.registry_ttl_ms.unwrap_or(10_000);
            if ttl == 0 {
                errs.push(
                    key("registry_ttl_ms"),
                    "must be greater than 0",
                    "use milliseconds, e.g. 10000",
                );
            }
            Discovery::Registry {
                ttl: Duration::from_millis(ttl.max(1)),
            }
        }
        "etcd" => {
            let prefix = up.etcd_prefix.clone().unwrap_or_default();
            if let Err(m) = super::etcd::check_prefix(&prefix) {
                errs.push(
                    key("etcd_prefix"),
                    if prefix.is_empty() { String::from("missing") } else { m },
                    "add etcd_prefix = \"/services/NAME\" (each key below it: {\"addr\": \"IP:port\", \"weight\": 1})",
                );
            }
            Discovery::Etcd(super::EtcdDiscovery {
                prefix: prefix.trim_end_matches('/').to_string(),
                etcd: None,
                registry_ttl: None,
            })
        }
        other => {
            errs.push(
                key("discovery"),
                format!("unknown discovery {other:?}"),
                "use \"static\", \"dns\", \"file\", \"registry\" or \"etcd\"",
            );
            Discovery::Static
        }
    };

    let balance = match up.balance.as_deref().unwrap_or("round_robin") {
        "round_robin" => Balance::RoundRobin,
        "weighted" => Balance::Weighted,
        "least_conn" => Balance::LeastConn,
        "p2c_ewma" => Balance::P2cEwma,
        "consistent_hash" => Balance::ConsistentHash,
        other => {
            errs.push(
                key("balance"),
                format!("unknown balancing algorithm {other:?}"),
                "use \"round_robin\", \"weighted\", \"least_conn\", \"p2c_ewma\" or \"consistent_hash\"",
            );
            Balance::RoundRobin
        }
    };
    let hash_key = match (&up.hash_key, balance) {
        (Some(k), Balance::ConsistentHash) => match parse_hash_key(k) {
            Ok(k) => Some(k),
            Err(m) => {
                errs.push(key("hash_key"), m, HASH_KEY_FIX);
                None
            }
        },
        (Some(_), _) => {
            errs.push(
                key("hash_key"),
                "hash_key applies only to balance = \"consistent_hash\"",
                "remove hash_key or set balance = \"consistent_hash\"",
            );
            None
        }
        (None, Balance::ConsistentHash) => {
            errs.push(
                key("hash_key"),
                "balance = \"consistent_hash\" needs a key to hash",
                HASH_KEY_FIX,
            );
            None
        }
        (None, _) => None,
    };

    for (k, v) in [
        ("connect_timeout_ms", up.connect_timeout_ms),
        ("request_timeout_ms", up.request_timeout_ms),
        ("try_timeout_ms", up.try_timeout_ms),
        ("idle_timeout_ms", up.idle_timeout_ms),
    ] {
        if v == Some(0) {
            errs.push(
                key(k),
                "must be greater than 0",
                "use milliseconds, e.g. 1000",
            );
        }
    }
    let retries = up.retries.unwrap_or(1);
    if retries > 10 {
        errs.push(
            key("retries"),
            format!("{retries} retries is more than 10"),
            "use 0 to 10 (each retry goes to another target)",
        );
    }
    let retry_budget_percent = up.retry_budget_percent.unwrap_or(20);
    if retry_budget_percent > 100 {
        errs.push(
            key("retry_budget_percent"),
            format!("{retry_budget_percent} is more than 100"),
            "use a percentage of requests, e.g. 20",
        );
    }
    let request_timeout = ms(up.request_timeout_ms, 15_000);
    let try_timeout = up
        .try_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(request_timeout);

    let status_ok = |s: u16| (100..=599).contains(&s);
    let health = up.health.as_ref().map(|h| {
        let k = |x: &str| format!("upstreams.{name}.health.{x}");
        let path = h.path.clone().unwrap_or_else(|| String::from("/health"));
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            errs.push(
                k("path"),
                format!("{path:?} is not an absolute path without spaces"),
                "write a path like \"/health\"",
            );
        }
        if let Some(host) = &h.host
            && host.bytes().any(|b| b < b' ' || b == 0x7f)
        {
            errs.push(
                k("host"),
                "contains control characters",
                "write a host name",
            );
        }
        let expected = h.expected_statuses.clone().unwrap_or_default();
        if expected.iter().any(|&s| !status_ok(s)) {
            errs.push(
                k("expected_statuses"),
                format!("{expected:?} has a status outside 100-599"),
                "list statuses like [200, 204]",
            );
        }
        for (x, v) in [("interval_ms", h.interval_ms), ("timeout_ms", h.timeout_ms)] {
            if v == Some(0) {
                errs.push(
                    k(x),
                    "must be greater than 0",
                    "use milliseconds, e.g. 1000",
                );
            }
        }
        for (x, v) in [
            ("healthy_threshold", h.healthy_threshold),
            ("unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if v == Some(0) {
                errs.push(k(x), "must be at least 1", "use a count, e.g. 2");
            }
        }
        if h.grpc_service.is_some() && protocol != super::Protocol::H2 {
            errs.push(
                k("grpc_service"),
                "gRPC health checks need an HTTP/2 upstream",
                "add protocol = \"h2\" to the upstream, or remove grpc_service",
            );
        }
        HealthConfig {
            h2: protocol == super::Protocol::H2,
            grpc_service: h.grpc_service.clone(),
            path,
            host: h.host.clone(),
            interval: ms(h.interval_ms, 5000),
            timeout: ms(h.timeout_ms, 1000),
            expected_statuses: expected,
            healthy_threshold: h.healthy_threshold.unwrap_or(2).max(1),
            unhealthy_threshold: h.unhealthy_threshold.unwrap_or(2).max(1),
            tls: tls.clone(),
        }
    });
    let outlier = up.outlier.as_ref().map(|o| {
        let k = |x: &str| format!("upstreams.{name}.outlier.{x}");
        let max = o.max_ejection_percent.unwrap_or(50);
        if !(1..=100).contains(&max) {
            errs.push(
                k("max_ejection_percent"),
                format!("{max} is outside 1-100"),
                "use a percentage of the targets, e.g. 50",
            );
        }
        if o.base_ejection_ms == Some(0) {
            errs.push(
                k("base_ejection_ms"),
                "must be greater than 0",
                "use milliseconds, e.g. 30000",
            );
        }
        let c5 = o.consecutive_5xx.unwrap_or(5);
        let cf = o.consecutive_failures.unwrap_or(5);
        if c5 == 0 && cf == 0 {
            errs.push(
                k("consecutive_5xx"),
                "consecutive_5xx and consecutive_failures are both 0, so nothing is ever ejected",
                "set one of them above 0, or remove the [outlier] table",
            );
        }
        OutlierConfig {
            consecutive_5xx: c5,
            consecutive_failures: cf,
            base_ejection: ms(o.base_ejection_ms, 30_000),
            max_ejection_percent: max,
        }
    });
    let breaker = up.breaker.as_ref().map(|b| {
        let k = |x: &str| format!("upstreams.{name}.breaker.{x}");
        if let Some(r) = b.failure_rate
            && !(r > 0.0 && r <= 1.0)
        {
            errs.push(
                k("failure_rate"),
                format!("{r} is not a fraction in (0, 1]"),
                "write 0.5 for 50%",
            );
        }
        let threshold = b.failure_threshold.unwrap_or(5);
        if threshold == 0 && b.failure_rate.is_none() {
            errs.push(
                k("failure_threshold"),
                "0 with no failure_rate: the breaker could never open",
                "set failure_threshold above 0 or add failure_rate",
            );
        }
        for (x, v) in [("window_ms", b.window_ms), ("open_ms", b.open_ms)] {
            if v == Some(0) {
                errs.push(
                    k(x),
                    "must be greater than 0",
                    "use milliseconds, e.g. 5000",
                );
            }
        }
        if b.half_open_probes == Some(0) {
            errs.push(
                k("half_open_probes"),
                "must be at least 1",
                "use a count, e.g. 1",
            );
        }
        let statuses = b
            .failure_statuses
            .clone()
            .unwrap_or_else(|| vec![500, 502, 503, 504]);
        if statuses.iter().any(|&s| !status_ok(s)) {
            errs.push(
                k("failure_statuses"),
                format!("{statuses:?} has a status outside 100-599"),
                "list statuses like [500, 502, 503, 504]",
            );
        }
        BreakerConfig {
            failure_threshold: threshold,
            failure_rate: b.failure_rate,
            min_requests: b.min_requests.unwrap_or(20),
            window: ms(b.window_ms, 10_000),
            open: ms(b.open_ms, 5000),
            half_open_probes: b.half_open_probes.unwrap_or(1).max(1),
            failure_statuses: statuses,
        }
    });
    let fallback = up.fallback.as_ref().map(|f| {
        let k = |x: &str| format!("upstreams.{name}.fallback.{x}");
        let status = f.status.unwrap_or(200);
        if !(200..=599).contains(&status) || status == 204 || status == 304 {
            errs.push(
                k("status"),
                format!("{status} cannot carry a fallback body"),
                "use a status in 200-599 other than 204 and 304",
            );
        }
        let content_type = f
            .content_type
            .clone()
            .unwrap_or_else(|| String::from("application/json"));
        if content_type.is_empty() || content_type.bytes().any(|b| b < b' ' || b == 0x7f) {
            errs.push(
                k("content_type"),
                format!("{content_type:?} is not a valid header value"),
                "write a media type like \"application/json\"",
            );
        }
        FallbackConfig {
            status,
            content_type,
            body: f.body.clone().unwrap_or_default(),
        }
    });
    if fallback.is_some() && breaker.is_none() {
        errs.push(
            format!("upstreams.{name}.fallback"),
            "the fallback is served while the breaker is open, but there is no breaker",
            format!("add [upstreams.{name}.breaker] or remove the fallback"),
        );
    }

    let static_list: Vec<(SocketAddr, u32)> = targets
        .iter()
        .copied()
        .zip(weights.iter().copied())
        .collect();
    let state = Arc::new(crate::upstream::UpstreamShared::new(
        name,
        &static_list,
        breaker.as_ref(),
        outlier.as_ref(),
        match &discovery {
            Discovery::Registry { ttl } => Some(ttl.as_millis() as u64),
            _ => None,
        },
    ));
    UpstreamConfig {
        name: name.to_string(),
        discovery,
        targets,
        weights,
        balance,
        hash_key,
        // Survives one dropped SYN: Linux retransmits it after 1 s (then
        // after 2 s more); a backend whose accept queue is full drops SYNs.
        connect_timeout: ms(up.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS),
        request_timeout,
        try_timeout,
        retries: retries.min(10),
        retry_budget_percent: retry_budget_percent.min(100),
        max_idle_per_target: up.max_idle_per_target.unwrap_or(64),
        idle_timeout: ms(up.idle_timeout_ms, 30_000),
        health,
        outlier,
        breaker,
        fallback,
        section: Arc::new(up.clone()),
        state,
        tls,
        protocol,
    }
}

/// A route's upstream: `upstream = "NAME"`, or `upstreams = [{ name,
/// weight }]` with an optional `sticky` key. Returns the first upstream's
/// index and the split, if any; `None` after pushing errors.
pub(super) fn compile_route_upstream(
    i: usize,
    r: &RouteFile,
    upstream_ids: &HashMap<String, usize>,
    errs: &mut Errors,
) -> Option<(usize, Option<Arc<Split>>)> {
    let key = |k: &str| format!("routes[{i}].{k}");
    let unknown = |errs: &mut Errors, k: &str, u: &str| {
        let mut known: Vec<&str> = upstream_ids.keys().map(|s| s.as_str()).collect();
        known.sort_unstable();
        errs.push(
            key(k),
            format!("upstream {u:?} is not defined"),
            if known.is_empty() {
                String::from("add an [upstreams.NAME] table")
            } else {
                format!("use one of: {}", known.join(", "))
            },
        );
    };
    let before = errs.0.len();
    let sticky = r.sticky.as_deref().and_then(|s| match parse_hash_key(s) {
        Ok(k) => Some(k),
        Err(m) => {
            errs.push(key("sticky"), m, HASH_KEY_FIX);
            None
        }
    });
    match (&r.upstream, &r.upstreams) {
        (Some(_), Some(_)) => {
            errs.push(
                key("upstreams"),
                "both upstream and upstreams are set",
                "use upstream = \"NAME\" for one upstream, or upstreams = [{ name = \"v1\", weight = 95 }, ...] for a split",
            );
            None
        }
        (None, None) => {
            errs.push(
                key("upstream"),
                "missing",
                "add upstream = \"NAME\" naming an [upstreams.NAME] table",
            );
            None
        }
        (Some(u), None) => {
            if r.sticky.is_some() {
                errs.push(
                    key("sticky"),
                    "sticky applies to a split over upstreams = [...], but the route has one upstream",
                    "remove sticky, or split the route with upstreams = [{ name, weight }, ...]",
                );
            }
            match upstream_ids.get(u) {
                Some(&id) if errs.0.len() == before => Some((id, None)),
                Some(_) => None,
                None => {
                    unknown(errs, "upstream", u);
                    None
                }
            }
        }
        (None, Some(list)) => {
            if list.is_empty() {
                errs.push(
                    key("upstreams"),
                    "the list is empty",
                    "list at least one { name = \"NAME\", weight = N }",
                );
            }
            let mut split = Vec::with_capacity(list.len());
            for e in list {
                match upstream_ids.get(&e.name) {
                    Some(&id) if split.iter().any(|&(x, _)| x == id) => errs.push(
                        key("upstreams"),
                        format!("{:?} is listed twice", e.name),
                        "list each upstream once",
                    ),
                    Some(&id) => split.push((id, e.weight.unwrap_or(1))),
                    None => unknown(errs, "upstreams", &e.name),
                }
            }
            let total: u64 = split.iter().map(|&(_, w)| w as u64).sum();
            if !split.is_empty() && total == 0 {
                errs.push(
                    key("upstreams"),
                    "every weight is 0",
                    "give at least one upstream a weight above 0",
                );
            }
            if total > u32::MAX as u64 {
                errs.push(
                    key("upstreams"),
                    "the weights add up to more than 4294967295",
                    "use smaller weights, e.g. percentages",
                );
            }
            if errs.0.len() > before {
                return None;
            }
            split.retain(|&(_, w)| w > 0);
            let first = split[0].0;
            Some((
                first,
                Some(Arc::new(Split {
                    upstreams: split,
                    total: total as u32,
                    sticky,
                })),
            ))
        }
    }
}
