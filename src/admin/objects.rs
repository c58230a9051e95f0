//! The admin API when the config source is etcd: the object endpoints
//! (`GET`, `PUT`, `DELETE /config/{routes|upstreams|consumers|rate_limits}/NAME`),
//! registry targets kept in etcd, and the etcd parts of `/readyz`,
//! `/config` and `/metrics`.
//!
//! Writes are validated first (the latest copy of the prefix with the
//! change, composed with the file, must be a valid config: 400 with every
//! error otherwise), then written with a compare-and-swap: `?revision=R`
//! is the revision the writer last read (`GET /config` or the object), and
//! the write only happens when the object did not change after it
//! (`revision=0`: only when it does not exist). A conflict is a 409 naming
//! the revision it changed at. A written change reaches every instance
//! through its watch; the answer says whether this instance applied it.

use crate::config::Config;
use crate::config::etcd::{self, Kv};
use crate::config::source::{self, Fleet};
use crate::runtime::reload::ConfigStore;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a write waits for this instance to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(3);

type Answer = (u16, &'static str, String);

fn answer(status: u16, v: Value) -> Answer {
    (status, "application/json", v.to_string())
}

fn error(status: u16, msg: impl Into<String>) -> Answer {
    answer(status, json!({"error": msg.into(), "status": status}))
}

/// The etcd state of a config, for `/config` and `/readyz`.
pub fn source_json(cfg: &Config) -> Value {
    let Some(e) = &cfg.etcd else {
        return json!({"source": "file"});
    };
    let f = &e.fleet;
    json!({
        "source": "etcd",
        "revision": e.revision,
        "endpoints": f.settings.endpoints,
        "prefix": f.settings.prefix,
        "connected": f.connected.load(Ordering::Relaxed),
        "error": Some(f.last_error()).filter(|s| !s.is_empty()),
        "latest_revision": f.snapshot().map(|s| s.revision),
        "rejected": f.rejected().map(|(r, errors)| json!({"revision": r, "errors": errors})),
    })
}

/// `GET /readyz` with the source etcd: 503 until a config from etcd runs;
/// then 200 (an etcd outage keeps the last config serving), with the etcd
/// state as detail. `None` for a file.
pub fn readyz(cfg: &Config, ready: bool) -> Option<Answer> {
    let e = cfg.etcd.as_ref()?;
    let loaded = e.revision > 0;
    let ok = ready && loaded;
    let status = if ok {
        "ready"
    } else if ready {
        "waiting for the config from etcd"
    } else {
        "not ready"
    };
    Some(answer(
        if ok { 200 } else { 503 },
        json!({"status": status, "config": source_json(cfg)}),
    ))
}

/// The etcd series of `/metrics`.
pub fn metrics(cfg: &Config, out: &mut String) {
    use crate::telemetry::names::*;
    let Some(e) = &cfg.etcd else {
        return;
    };
    let f = &e.fleet;
    let rejected = f.rejected().map_or(0, |(r, _)| r);
    for (name, kind, help, v) in [
        (
            CONFIG_REVISION,
            "gauge",
            "etcd revision of the running config.",
            e.revision,
        ),
        (
            ETCD_CONNECTED,
            "gauge",
            "1 while etcd answers the config watch.",
            f.connected.load(Ordering::Relaxed) as i64,
        ),
        (
            ETCD_ERRORS,
            "counter",
            "Failed attempts to reach etcd.",
            f.errors_total.load(Ordering::Relaxed) as i64,
        ),
        (
            ETCD_RESYNCS,
            "counter",
            "Full reads after a compacted watch history.",
            f.resyncs_total.load(Ordering::Relaxed) as i64,
        ),
        (
            CONFIG_REJECTED_REVISION,
            "gauge",
            "Latest etcd revision refused as invalid (0: none).",
            rejected,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    }
}

fn query_revision(query: &str) -> Option<Result<i64, ()>> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("revision="))
        .map(|v| v.parse::<i64>().ok().filter(|r| *r >= 0).ok_or(()))
}

/// Waits (bounded) until the running config is at `rev` or later.
fn wait_applied(store: &ConfigStore, rev: i64) -> bool {
    let until = Instant::now() + APPLY_WAIT;
    loop {
        let at = store.load().etcd.as_ref().map_or(0, |e| e.revision);
        if at >= rev {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `/config/...` and, with the source etcd, registry writes. `None`: not
/// an endpoint of this module.
pub fn handle(
    cfg: &Config,
    store: &ConfigStore,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Option<Answer> {
    if let Some(rest) = path.strip_prefix("/upstreams/") {
        let (name, tail) = rest.split_once('/')?;
        let u = cfg.upstreams.iter().find(|u| u.name == name)?;
        let crate::config::Discovery::Etcd(d) = &u.discovery else {
            return None;
        };
        let ttl = d.registry_ttl?;
        if tail != "targets" || (method != "POST" && method != "DELETE") {
            return None;
        }
        let fleet = &cfg.etcd.as_ref()?.fleet;
        return Some(registry(fleet, &d.prefix, ttl, method, body));
    }
    let rest = path.strip_prefix("/config/")?;
    let Some(e) = &cfg.etcd else {
        return Some(error(
            501,
            "the config source is the file: edit it and reload (objects are written through the admin API with [config] source = \"etcd\")",
        ));
    };
    let fleet = &e.fleet;
    if rest == "objects" {
        if method != "GET" {
            return Some(error(405, "method not allowed (use GET)"));
        }
        let Some(snap) = fleet.snapshot() else {
            return Some(error(503, "the config has not been read from etcd yet"));
        };
        let p = fleet.prefix();
        let list: Vec<Value> = snap
            .kvs
            .iter()
            .filter_map(|(k, kv)| {
                let rel = k.strip_prefix(&p)?;
                Some(json!({"key": k, "object": rel, "mod_revision": kv.mod_revision}))
            })
            .collect();
        return Some(answer(
            200,
            json!({"revision": snap.revision, "objects": list}),
        ));
    }
    let (kind, name) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(kind) = source::OBJECT_KINDS.iter().find(|k| **k == kind) else {
        return Some(error(
            404,
            format!(
                "no admin endpoint {path} (objects: /config/{{routes,upstreams,consumers,rate_limits}}/NAME)"
            ),
        ));
    };
    if let Err(m) = source::check_name(name) {
        return Some(error(400, m));
    }
    let key = format!("{}{kind}/{name}", fleet.prefix());
    Some(match method {
        "GET" => match fleet.snapshot() {
            None => error(503, "the config has not been read from etcd yet"),
            Some(s) => match s.kvs.get(&key) {
                None => error(404, format!("no object {key}")),
                Some(kv) => answer(
                    200,
                    json!({
                        "key": key,
                        "mod_revision": kv.mod_revision,
                        "revision": s.revision,
                        "value": serde_json::from_slice::<Value>(&kv.value)
                            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&kv.value).into_owned())),
                    }),
                ),
            },
        },
        "PUT" | "DELETE" => write(fleet, store, method, &key, query, body),
        _ => error(405, "method not allowed (use GET, PUT or DELETE)"),
    })
}

fn write(
    fleet: &Arc<Fleet>,
    store: &ConfigStore,
    method: &str,
    key: &str,
    query: &str,
    body: &[u8],
) -> Answer {
    let rev = match query_revision(query) {
        Some(Ok(r)) => r,
        Some(Err(())) => return error(400, "revision must be a non-negative integer"),
        None => {
            return error(
                428,
                "a write needs ?revision=R: the revision you last read (GET /config or GET of the object; revision=0 creates an object that must not exist yet)",
            );
        }
    };
    let value = if method == "PUT" {
        match serde_json::from_slice::<Value>(body) {
            Ok(v @ Value::Object(_)) => Some(v.to_string().into_bytes()),
            Ok(_) => {
                return error(
                    400,
                    "the body must be one JSON object: the object's keys as in the file",
                );
            }
            Err(e) => return error(400, format!("the body is not JSON: {e}")),
        }
    } else {
        None
    };
    // Validate the latest copy with the change, as a reload would.
    let Some(mut snap) = fleet.snapshot() else {
        return error(
            503,
            "the config has not been read from etcd yet; retry when /readyz answers 200",
        );
    };
    let Some(path) = fleet.path() else {
        return error(500, "no config file");
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return error(500, format!("cannot read {}: {e}", path.display())),
    };
    match &value {
        Some(v) => {
            snap.kvs.insert(
                key.to_string(),
                Kv {
                    value: v.clone(),
                    mod_revision: snap.revision + 1,
                    lease: 0,
                },
            );
        }
        None => {
            if snap.kvs.remove(key).is_none() {
                return error(404, format!("no object {key}"));
            }
        }
    }
    if let Err(errs) = source::compose(&text, fleet, &snap) {
        return answer(
            400,
            json!({
                "status": 400,
                "error": "the change would make the config invalid; nothing was written",
                "errors": errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }),
        );
    }
    let client = match fleet.client() {
        Ok(c) => c,
        Err(e) => return error(500, e),
    };
    let op = match &value {
        Some(v) => etcd::op_put(key, v, 0),
        None => etcd::op_delete(key),
    };
    match client.txn(
        vec![etcd::cmp_unchanged_since(key, rev)],
        vec![op],
        vec![etcd::op_get(key)],
    ) {
        Ok((true, new_rev, _)) => {
            let applied = wait_applied(store, new_rev);
            answer(
                200,
                json!({
                    "status": if value.is_some() { "written" } else { "deleted" },
                    "key": key,
                    "revision": new_rev,
                    "applied": applied,
                }),
            )
        }
        Ok((false, now, v)) => {
            let changed = etcd::txn_range_kv(&v).map(|(_, kv)| kv.mod_revision);
            let msg = match changed {
                Some(m) => format!(
                    "conflict: {key} changed at revision {m}, after revision {rev}; nothing was written (fix: read it again and retry with revision={now})"
                ),
                None => format!(
                    "conflict: {key} was deleted after revision {rev}; nothing was written (fix: read it again and retry with revision={now})"
                ),
            };
            answer(
                409,
                json!({"status": 409, "error": msg, "mod_revision": changed, "revision": now}),
            )
        }
        Err(e) => error(503, format!("{e}; nothing was written, retry later")),
    }
}

/// `POST` / `DELETE /upstreams/NAME/targets` for a registry upstream whose
/// registrations live in etcd: a registration is a key under
/// `PREFIX/registry/NAME/` with a lease of its TTL (posting again is the
/// heartbeat: a new lease), seen by every instance through its watch.
fn registry(
    fleet: &Arc<Fleet>,
    prefix: &str,
    default_ttl: Duration,
    method: &str,
    body: &[u8],
) -> Answer {
    let reg = match crate::upstream::Registration::parse(body) {
        Ok(r) => r,
        Err(e) => return error(400, e),
    };
    let addr = reg.addr;
    let client = match fleet.client() {
        Ok(c) => c,
        Err(e) => return error(500, e),
    };
    let key = format!("{prefix}/{addr}");
    if method == "DELETE" {
        return match client.txn(vec![], vec![etcd::op_delete(&key)], vec![]) {
            Ok((_, _, v)) => {
                let deleted = v["responses"][0]["response_delete_range"]["deleted"]
                    .as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                if deleted > 0 {
                    answer(200, json!({"deregistered": addr.to_string()}))
                } else {
                    error(404, format!("{addr} is not registered"))
                }
            }
            Err(e) => error(503, e.to_string()),
        };
    }
    let ttl_ms = reg.ttl_ms.unwrap_or(default_ttl.as_millis() as u64);
    let lease = match client.grant(ttl_ms.div_ceil(1000).max(1) as i64) {
        Ok(l) => l,
        Err(e) => return error(503, e.to_string()),
    };
    let value = json!({"addr": addr.to_string(), "weight": reg.weight}).to_string();
    match client.txn(
        vec![],
        vec![etcd::op_put(&key, value.as_bytes(), lease)],
        vec![],
    ) {
        Ok((_, rev, _)) => answer(
            200,
            json!({"registered": addr.to_string(), "ttl_ms": ttl_ms, "revision": rev}),
        ),
        Err(e) => error(503, e.to_string()),
    }
}
