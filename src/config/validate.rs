//! From [`FileConfig`] to [`Config`]: every check in one pass, every error
//! collected, each naming the key, the bad value and the fix.

use super::file::{FileConfig, RouteFile};
use super::*;
use crate::router::{Method, RouteSpec};
use std::collections::HashMap;
use std::fmt;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, e.g. `routes[2].upstream`.
    pub key: String,
    /// What is wrong, quoting the bad value.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.key, self.message, self.fix)
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects config errors while compiling (used by feature modules).
#[derive(Debug, Default)]
pub struct Errors(pub Vec<ConfigError>);

impl Errors {
    /// Records an error: the key, what is wrong, how to fix it.
    pub fn push(
        &mut self,
        key: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(ConfigError {
            key: key.into(),
            message: message.into(),
            fix: fix.into(),
        });
    }
}

pub(super) fn parse(text: &str) -> Result<Config, ConfigErrors> {
    // Every problem of the file as written (syntax, types, unknown keys),
    // then every validation error in the rest of it: one run reports all.
    let read = super::read::read(text).map_err(|e| ConfigErrors(vec![e]))?;
    let Some(file) = read.file else {
        return Err(ConfigErrors(read.errors));
    };
    match compile(file) {
        Ok(c) if read.errors.is_empty() => Ok(c),
        Ok(_) => Err(ConfigErrors(read.errors)),
        Err(ConfigErrors(more)) => {
            let mut errs = read.errors;
            // A value read as empty (it had the wrong type) is not
            // reported a second time by validation.
            errs.extend(more.into_iter().filter(|e| {
                !read
                    .replaced
                    .iter()
                    .any(|p| super::read::related(p, &e.key))
            }));
            Err(ConfigErrors(errs))
        }
    }
}

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

fn compile(file: FileConfig) -> Result<Config, ConfigErrors> {
    let mut errs = Errors(Vec::new());
    let server = compile_server(&file, &mut errs);
    let admin = file.admin.as_ref().and_then(|a| {
        let listen = a.listen.as_deref().unwrap_or("127.0.0.1:9901");
        match listen.parse::<SocketAddr>() {
            Ok(listen) => {
                let token = match (&a.token_env, &a.token_file) {
                    (Some(_), Some(_)) => {
                        errs.push(
                            "admin.token_file",
                            "both admin.token_env and admin.token_file are set",
                            "keep one of them",
                        );
                        None
                    }
                    (Some(var), None) => match std::env::var(var) {
                        Ok(t) if !t.is_empty() => Some(t),
                        _ => {
                            errs.push(
                                "admin.token_env",
                                format!("environment variable {var} is not set"),
                                format!("export {var}=<token> or remove admin.token_env"),
                            );
                            None
                        }
                    },
                    (None, Some(path)) => match std::fs::read_to_string(path) {
                        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                        Ok(_) => {
                            errs.push(
                                "admin.token_file",
                                format!("{path} is empty"),
                                "write the token into the file (one line)",
                            );
                            None
                        }
                        Err(e) => {
                            errs.push(
                                "admin.token_file",
                                format!("cannot read {path}: {e}"),
                                "create the file with the token and make it readable by ringgate, or remove admin.token_file",
                            );
                            None
                        }
                    },
                    (None, None) => None,
                };
                Some(AdminConfig {
                    listen,
                    token,
                    token_env: a.token_env.clone(),
                    token_file: a.token_file.clone(),
                })
            }
            Err(_) => {
                errs.push(
                    "admin.listen",
                    format!("{listen:?} is not an IP:port address"),
                    "write an address like \"127.0.0.1:9901\"",
                );
                None
            }
        }
    });

    let mut upstreams = Vec::with_capacity(file.upstreams.len());
    let mut upstream_ids = HashMap::new();
    for (name, up) in &file.upstreams {
        upstream_ids.insert(name.clone(), upstreams.len());
        upstreams.push(super::upstream::compile_upstream(name, up, &mut errs));
    }

    let mut routes = Vec::with_capacity(file.routes.len());
    for (i, r) in file.routes.iter().enumerate() {
        if let Some(route) = compile_route(i, r, &upstream_ids, &mut errs) {
            routes.push(route);
        }
    }
    // With the source etcd, the routes come from etcd (and may not be
    // there yet).
    let etcd = super::source::compile(&file, &mut upstreams, &mut errs);
    if file.routes.is_empty() && etcd.is_none() {
        errs.push(
            "routes",
            "no [[routes]] are defined, so every request would get 404",
            "add at least one [[routes]] table with a path and an upstream",
        );
    }

    let log = {
        let l = file.log.as_ref();
        let access = match l.and_then(|l| l.access.as_deref()).unwrap_or("off") {
            "json" => Some(crate::telemetry::access_log::LogFormat::Json),
            "combined" => Some(crate::telemetry::access_log::LogFormat::Combined),
            "off" => None,
            other => {
                errs.push(
                    "log.access",
                    format!("unknown access-log format {other:?}"),
                    "use \"json\", \"combined\" or \"off\"",
                );
                None
            }
        };
        LogConfig {
            access,
            path: l
                .and_then(|l| l.path.clone())
                .unwrap_or_else(|| String::from("-")),
            redact_query: redacted_query_params(&file, &mut errs),
        }
    };
    let watch = file.config.as_ref().and_then(|c| c.watch).unwrap_or(false);
    let route_slots: Vec<usize> = (1..=routes.len()).collect();
    let upstream_slots: Vec<usize> = (0..upstreams.len()).collect();
    let auth = crate::filter::auth::compile(&file, &mut errs);
    let rate_limits = crate::filter::rate_limit::compile(&file, &mut errs);
    let ip_lists = crate::filter::ip_list::compile_global(&file.server, &mut errs);
    let cors = crate::filter::cors::compile_global(&file, &mut errs);
    for (i, r) in file.routes.iter().enumerate() {
        let ip = crate::filter::ip_list::route_policy(&ip_lists, r, i, &mut errs);
        let co = crate::filter::cors::route_policy(cors.as_ref(), r, i, &mut errs);
        if let Some(route) = routes.iter_mut().find(|x| x.index == i) {
            let a = crate::filter::auth::route_policy(auth.as_ref(), r, i, &mut errs);
            let rl = crate::filter::rate_limit::route_policy(rate_limits.as_ref(), r, i, &mut errs);
            route.chain = std::sync::Arc::new(crate::filter::Chain::compile(
                ip,
                co,
                a,
                rl,
                route.transform.clone(),
                route.compress.clone(),
            ));
        }
    }

    // Routes sharing a path with different versions: only the first of
    // each group goes into the trie (see router::version).
    let versioning = {
        let keys: Vec<crate::filter::versioning::RouteKey<'_>> = routes
            .iter()
            .map(|r| crate::filter::versioning::RouteKey {
                host: r.host.as_deref(),
                path: &r.path,
                methods: r.methods.map(|m| m.bits()),
                version: r.version.as_deref(),
            })
            .collect();
        crate::filter::versioning::compile(file.versioning.as_ref(), &keys, &mut errs)
            .map(std::sync::Arc::new)
    };

    let table = if routes.len() == file.routes.len() {
        let specs: Vec<RouteSpec<'_>> = routes
            .iter()
            .enumerate()
            .filter(|(i, _)| versioning.as_ref().is_none_or(|v| !v.is_hidden(*i)))
            .map(|(i, r)| RouteSpec {
                host: r.host.as_deref(),
                path: &r.path,
                methods: r.methods,
                route: i as u32,
            })
            .collect();
        match RouteTable::build(&specs) {
            Ok(t) => Some(t),
            Err(route_errs) => {
                for e in route_errs {
                    errs.push(
                        "routes",
                        e.to_string(),
                        "make each path pattern valid and unique per host and method",
                    );
                }
                None
            }
        }
    } else {
        None
    };

    let cache = crate::filter::cache::compile_settings(file.cache.as_ref(), &mut errs);
    let tls = super::tls::compile(
        file.server.tls.as_deref().unwrap_or_default(),
        server.as_ref().map_or(&[][..], |s| &s.listen[..]),
        server.as_ref().is_none_or(|s| s.http2.enabled),
        &mut errs,
    );
    match (server, table) {
        (Some(server), Some(table)) if errs.0.is_empty() => Ok(Config {
            server,
            admin,
            upstreams,
            routes,
            table,
            log,
            access_log: None,
            watch,
            metrics_enabled: file
                .metrics
                .as_ref()
                .and_then(|m| m.enabled)
                .unwrap_or(true),
            route_slots,
            upstream_slots,
            rate_limit_slots: (0..rate_limits.as_ref().map_or(0, |l| l.limit_names().len()))
                .collect(),
            auth,
            rate_limits,
            versioning,
            cache,
            etcd,
            tls,
        }),
        _ => Err(ConfigErrors(errs.0)),
    }
}

fn compile_server(file: &FileConfig, errs: &mut Errors) -> Option<ServerConfig> {
    let s = &file.server;
    let before = errs.0.len();
    let listen_strs = s
        .listen
        .as_ref()
        .map(|l| l.to_vec())
        .unwrap_or_else(|| vec![String::from("127.0.0.1:8080")]);
    let mut listen = Vec::new();
    if listen_strs.is_empty() {
        errs.push(
            "server.listen",
            "the list of addresses is empty",
            "give at least one address, e.g. \"127.0.0.1:8080\"",
        );
    }
    for l in &listen_strs {
        match l.parse::<SocketAddr>() {
            Ok(a) => listen.push(a),
            Err(_) => errs.push(
                "server.listen",
                format!("{l:?} is not an IP:port address"),
                "write an address like \"127.0.0.1:8080\" or \"[::]:8080\"",
            ),
        }
    }
    let workers = match s.workers.unwrap_or(0) {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n if n > 1024 => {
            errs.push(
                "server.workers",
                format!("{n} workers is more than 1024"),
                "use 0 (one per core) or the number of cores to use",
            );
            1
        }
        n => n,
    };
    let io = match s.io.as_deref().unwrap_or("auto") {
        "auto" => IoMode::Auto,
        "io_uring" => IoMode::IoUring,
        "epoll" => IoMode::Epoll,
        other => {
            errs.push(
                "server.io",
                format!("unknown io driver {other:?}"),
                "use \"auto\", \"io_uring\" or \"epoll\"",
            );
            IoMode::Auto
        }
    };
    let io_uring_mode = match s.io_uring_mode.as_deref().unwrap_or("coop_taskrun") {
        "coop_taskrun" => UringMode::CoopTaskrun,
        "defer_taskrun" => UringMode::DeferTaskrun,
        "default" => UringMode::Default,
        other => {
            errs.push(
                "server.io_uring_mode",
                format!("unknown io_uring mode {other:?}"),
                "use \"coop_taskrun\", \"defer_taskrun\" or \"default\"",
            );
            UringMode::CoopTaskrun
        }
    };
    let io_uring_entries = s.io_uring_entries.unwrap_or(1024);
    if !(256..=32768).contains(&io_uring_entries) || !io_uring_entries.is_power_of_two() {
        errs.push(
            "server.io_uring_entries",
            format!("{io_uring_entries} is not a power of two between 256 and 32768"),
            "use e.g. 1024 or 4096",
        );
    }
    let positive = |errs: &mut Errors, key: &str, v: Option<u64>, default: u64, fix: &str| {
        let v = v.unwrap_or(default);
        if v == 0 {
            errs.push(key, "must be greater than 0", fix);
        }
        v
    };
    let max_header_bytes = positive(
        errs,
        "server.max_header_bytes",
        s.max_header_bytes.map(|v| v as u64),
        65536,
        "use a size in bytes, e.g. 65536",
    ) as usize;
    if max_header_bytes > 1 << 20 {
        errs.push(
            "server.max_header_bytes",
            format!("{max_header_bytes} is more than 1 MiB"),
            "use at most 1048576",
        );
    }
    let max_headers = positive(
        errs,
        "server.max_headers",
        s.max_headers.map(|v| v as u64),
        100,
        "use a count, e.g. 100",
    ) as usize;
    if max_headers > crate::http::MAX_HEADERS_LIMIT {
        errs.push(
            "server.max_headers",
            format!(
                "{max_headers} is more than {}",
                crate::http::MAX_HEADERS_LIMIT
            ),
            format!("use at most {}", crate::http::MAX_HEADERS_LIMIT),
        );
    }
    let max_uri_bytes = positive(
        errs,
        "server.max_uri_bytes",
        s.max_uri_bytes.map(|v| v as u64),
        8192,
        "use a size in bytes, e.g. 8192",
    ) as usize;
    let max_body_bytes = s.max_body_bytes.unwrap_or(10 * 1024 * 1024);
    let header_timeout_ms = positive(
        errs,
        "server.header_timeout_ms",
        s.header_timeout_ms,
        10_000,
        "use milliseconds, e.g. 10000",
    );
    let idle_timeout_ms = positive(
        errs,
        "server.idle_timeout_ms",
        s.idle_timeout_ms,
        60_000,
        "use milliseconds, e.g. 60000",
    );
    let max_connections = positive(
        errs,
        "server.max_connections",
        s.max_connections.map(|v| v as u64),
        10_000,
        "use a count, e.g. 10000",
    ) as usize;
    let buffer_bytes = s.buffer_bytes.unwrap_or(16 * 1024);
    if !(1024..=1 << 20).contains(&buffer_bytes) {
        errs.push(
            "server.buffer_bytes",
            format!("{buffer_bytes} is outside 1024..=1048576"),
            "use e.g. 16384",
        );
    }
    let trusted_proxies = crate::filter::rate_limit::Cidr::parse_list(
        s.trusted_proxies.iter().flatten(),
        |msg, fix| errs.push("server.trusted_proxies", msg, fix),
    );
    let mut forward_trailers: Vec<Box<[u8]>> = Vec::new();
    for t in s.forward_trailers.iter().flatten() {
        let lower = t.to_ascii_lowercase();
        if t.is_empty() || !t.bytes().all(crate::http::chunked::is_tchar) {
            errs.push(
                "server.forward_trailers",
                format!("{t:?} is not a header name"),
                "list header names, e.g. [\"x-checksum\"]",
            );
        } else if NOT_TRAILERS.contains(&lower.as_str()) {
            errs.push(
                "server.forward_trailers",
                format!("{t:?} frames or routes the message and is never taken from a trailer"),
                "remove it from the list",
            );
        } else {
            forward_trailers.push(lower.into_bytes().into());
        }
    }
    if errs.0.len() > before {
        return None;
    }
    Some(ServerConfig {
        listen,
        workers,
        pin: s.pin.unwrap_or(true),
        transparent_huge_pages: s.transparent_huge_pages.unwrap_or(false),
        io,
        io_uring_entries,
        io_uring_mode,
        drain_timeout: ms(s.drain_timeout_ms, 10_000),
        max_header_bytes,
        max_headers,
        max_uri_bytes,
        max_body_bytes,
        header_timeout: Duration::from_millis(header_timeout_ms),
        idle_timeout: Duration::from_millis(idle_timeout_ms),
        max_connections,
        buffer_bytes,
        backlog: s.backlog.unwrap_or(4096),
        trusted_proxies,
        underscores_in_headers: s.underscores_in_headers.unwrap_or(false),
        forward_trailers,
        http2: super::http2::compile(s.http2.as_ref(), errs),
    })
}

/// Fields that may not be forwarded as trailers (RFC 9110 6.5.1): framing,
/// routing, connection management and authentication.
const NOT_TRAILERS: [&str; 10] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "authorization",
    "content-type",
];

fn compile_route(
    i: usize,
    r: &RouteFile,
    upstream_ids: &HashMap<String, usize>,
    errs: &mut Errors,
) -> Option<RouteConfig> {
    let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
    let key = |k: &str| format!("routes[{i}].{k}");
    let before = errs.0.len();
    let path = match &r.path {
        Some(p) if p.starts_with('/') => p.clone(),
        Some(p) => {
            errs.push(
                key("path"),
                format!("{p:?} does not start with '/'"),
                "write the path as \"/products/{id}\"",
            );
            String::new()
        }
        None => {
            errs.push(key("path"), "missing", "add path = \"/...\"");
            String::new()
        }
    };
    let methods = r.methods.as_ref().map(|ms| {
        let mut set = MethodSet::empty();
        for m in ms {
            match Method::from_bytes(m.as_bytes()) {
                Some(m) => set.insert(m),
                None => errs.push(
                    key("methods"),
                    format!("unknown method {m:?}"),
                    "use upper-case methods: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT",
                ),
            }
        }
        if ms.is_empty() {
            errs.push(
                key("methods"),
                "the list is empty, so the route would match nothing",
                "list methods or remove the key to allow any",
            );
        }
        set
    });
    // A compose route is answered by its parts instead of an upstream.
    let compose = r.compose.as_ref().and_then(|f| {
        let has_upstream = r.upstream.is_some() || r.upstreams.is_some();
        crate::filter::compose::compile(i, f, &path, has_upstream, upstream_ids, errs)
    });
    let (upstream, split) = match (&r.compose, &compose) {
        (Some(_), Some(c)) => (c.parts[0].upstream, None),
        (Some(_), None) => (0, None),
        (None, _) => {
            super::upstream::compile_route_upstream(i, r, upstream_ids, errs).unwrap_or((0, None))
        }
    };
    if r.compose.is_some() && r.transform.is_some() {
        errs.push(
            key("transform"),
            "a compose route builds its own answer, so transform would not apply",
            "remove transform from the compose route (use fields on its parts)",
        );
    }
    let transform = r
        .transform
        .as_ref()
        .and_then(|f| crate::filter::transform::compile(i, f, &path, errs))
        .map(std::sync::Arc::new);
    let compress = r
        .compress
        .as_ref()
        .and_then(|f| crate::filter::compress::compile(i, f, errs))
        .map(std::sync::Arc::new);
    let (version, deprecation) = crate::filter::versioning::route_fields(i, r, errs);
    let upgrades = compile_upgrades(r.upgrades.as_deref(), &key("upgrades"), errs);
    let grpc_json = r
        .grpc_json
        .as_ref()
        .and_then(|f| crate::filter::grpc_json::compile(f, &key("grpc_json"), errs));
    if grpc_json.is_some() && (r.compose.is_some() || r.upstreams.is_some()) {
        errs.push(
            key("grpc_json"),
            "cannot be combined with compose or a split (upstreams)",
            "give the route one upstream = \"NAME\" with protocol = \"h2\"",
        );
    }
    let cache = r
        .cache
        .as_ref()
        .and_then(|f| crate::filter::cache::compile_route(i, f, r, &name, errs));
    if errs.0.len() > before {
        return None;
    }
    Some(RouteConfig {
        name,
        path,
        methods,
        host: r.host.clone(),
        upstream,
        split,
        index: i,
        chain: std::sync::Arc::new(crate::filter::Chain::compile(
            None,
            None,
            None,
            None,
            transform.clone(),
            compress.clone(),
        )),
        upgrades,
        grpc_json,
        compress,
        compose: compose.map(std::sync::Arc::new),
        transform,
        version,
        deprecation,
        cache: cache.map(std::sync::Arc::new),
    })
}

/// A route's `upgrades`: protocol tokens (RFC 9110 7.8, `name` or
/// `name/version`), `websocket` when absent, never `h2c` (an h2c tunnel
/// would carry every later request past routing and filters).
fn compile_upgrades(list: Option<&[String]>, key: &str, errs: &mut Errors) -> Vec<Box<[u8]>> {
    let Some(list) = list else {
        return vec![Box::from(&b"websocket"[..])];
    };
    let mut out = Vec::new();
    for p in list {
        let lower = p.to_ascii_lowercase();
        let name = lower.split('/').next().unwrap_or("");
        let token = |t: &str| !t.is_empty() && t.bytes().all(crate::http::chunked::is_tchar);
        if name == "h2c" || name == "h2" {
            errs.push(
                key,
                format!("{p:?} is never tunnelled: HTTP/2 is served by ringgate itself"),
                "remove it; clients reach HTTP/2 with prior knowledge or ALPN h2",
            );
        } else if !lower.split('/').all(token) || lower.split('/').count() > 2 {
            errs.push(
                key,
                format!("{p:?} is not a protocol name"),
                "write a name such as \"websocket\" or \"name/1.0\"",
            );
        } else {
            out.push(lower.into_bytes().into_boxed_slice());
        }
    }
    out
}

/// `log.redact_query`, checked, plus the query parameters `[auth]` reads
/// credentials from: an access log never holds a key or token sent in the
/// query, whether or not the request authenticated.
fn redacted_query_params(file: &FileConfig, errs: &mut Errors) -> Vec<Box<[u8]>> {
    let mut names: Vec<Box<[u8]>> = Vec::new();
    let listed = file.log.as_ref().and_then(|l| l.redact_query.as_ref());
    for (i, n) in listed.into_iter().flatten().enumerate() {
        let bad = n.is_empty()
            || n.bytes()
                .any(|b| matches!(b, b'&' | b'=' | b'?' | b'#') || b <= b' ' || b == 0x7f);
        if bad {
            errs.push(
                format!("log.redact_query[{i}]"),
                format!("{n:?} is not a query parameter name"),
                "list bare parameter names, e.g. redact_query = [\"token\", \"signature\"]",
            );
        } else {
            names.push(n.as_bytes().into());
        }
    }
    let auth = file.auth.as_ref();
    let from_auth = [
        auth.and_then(|a| a.api_key.as_ref())
            .and_then(|k| k.query.as_deref()),
        auth.and_then(|a| a.jwt.as_ref())
            .and_then(|j| j.token_query.as_deref()),
    ];
    for n in from_auth.into_iter().flatten() {
        if !n.is_empty() {
            names.push(n.as_bytes().into());
        }
    }
    names.sort();
    names.dedup();
    names
}
