//! etcd: the `[config] etcd_*` settings, a small blocking client for etcd
//! v3's JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`,
//! `/v3/lease/grant`, over HTTP/1.1 with `ureq`), and [`follow`], which
//! keeps a local copy of every key under a prefix current: one range, then
//! a watch from the next revision, resumed from the last revision seen
//! after any break (a watch whose history was compacted away starts over
//! with a full range).
//!
//! How it fits: the config source ([`super::source`]) follows the config
//! prefix on one control-plane thread and reloads through the generation
//! switch; `discovery = "etcd"` upstreams follow their service prefix on
//! a thread each (`upstream::discovery::etcd`); the admin API writes with
//! compare-and-swap transactions. Nothing here runs on a worker: every
//! call blocks its thread for at most `etcd_timeout_ms` (a watch read
//! for [`WATCH_IDLE`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A watch that delivered nothing for this long is re-established from
/// the last revision seen (which also notices an etcd that went away
/// without closing the connection).
pub const WATCH_IDLE: Duration = Duration::from_secs(15);

/// Longest wait between two attempts while etcd is unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// First wait after a failed attempt (doubled up to [`MAX_BACKOFF`]).
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// `[config] etcd_*`, validated: how to reach the fleet's etcd.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `etcd_endpoints`: base URLs (`http://` or `https://`), tried in turn.
    pub endpoints: Vec<String>,
    /// `etcd_prefix`: where the reloadable sections live (no trailing `/`).
    pub prefix: String,
    /// `etcd_username`, with the password from `etcd_password_env` or
    /// `etcd_password_file`.
    pub auth: Option<(String, String)>,
    /// `etcd_ca_file`: PEM roots for `https://` endpoints (default: the
    /// system's).
    pub ca_file: Option<String>,
    /// `etcd_timeout_ms`: deadline of one request.
    pub timeout: Duration,
}

impl std::fmt::Debug for EtcdSettings {
    /// The password never reaches a log line or `GET /config`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("username", &self.auth.as_ref().map(|(u, _)| u))
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Compiles the etcd keys of `[config]`; `None` when none of them is set
/// and the source is the file.
pub(super) fn compile(
    file: &super::file::FileConfig,
    errs: &mut super::Errors,
) -> Option<EtcdSettings> {
    let c = file.config.as_ref()?;
    let source = c.source.as_deref().unwrap_or("file");
    if source != "file" && source != "etcd" {
        errs.push(
            "config.source",
            format!("unknown config source {source:?}"),
            "use \"file\" (the default) or \"etcd\"",
        );
    }
    let any = source == "etcd"
        || c.etcd_endpoints.is_some()
        || c.etcd_prefix.is_some()
        || c.etcd_username.is_some();
    if !any {
        return None;
    }
    let endpoints = c
        .etcd_endpoints
        .clone()
        .unwrap_or_else(|| vec![String::from("http://127.0.0.1:2379")]);
    if endpoints.is_empty() {
        errs.push(
            "config.etcd_endpoints",
            "is empty",
            "list at least one etcd client URL, e.g. [\"http://127.0.0.1:2379\"]",
        );
    }
    for e in &endpoints {
        let ok = (e.starts_with("http://") || e.starts_with("https://"))
            && e.split("://").nth(1).is_some_and(|h| !h.is_empty());
        if !ok {
            errs.push(
                "config.etcd_endpoints",
                format!("{e:?} is not an http:// or https:// URL"),
                "write each endpoint as \"http://HOST:2379\" (or https:// with etcd_ca_file)",
            );
        }
    }
    let prefix = c
        .etcd_prefix
        .clone()
        .unwrap_or_else(|| String::from("/ringgate"));
    if let Err(m) = check_prefix(&prefix) {
        errs.push(
            "config.etcd_prefix",
            m,
            "write a key prefix such as \"/ringgate\"",
        );
    }
    let password = match (&c.etcd_password_env, &c.etcd_password_file) {
        (Some(_), Some(_)) => {
            errs.push(
                "config.etcd_password_file",
                "both etcd_password_env and etcd_password_file are set",
                "keep one of them",
            );
            None
        }
        (Some(var), None) => match std::env::var(var) {
            Ok(p) if !p.is_empty() => Some(p),
            _ => {
                errs.push(
                    "config.etcd_password_env",
                    format!("environment variable {var} is not set"),
                    format!("export {var}=<password> or remove config.etcd_password_env"),
                );
                None
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(p) if !p.trim().is_empty() => Some(p.trim().to_string()),
            Ok(_) => {
                errs.push(
                    "config.etcd_password_file",
                    format!("{path} is empty"),
                    "write the etcd password into the file (one line)",
                );
                None
            }
            Err(e) => {
                errs.push(
                    "config.etcd_password_file",
                    format!("cannot read {path}: {e}"),
                    "create the file with the password, readable by ringgate",
                );
                None
            }
        },
        (None, None) => None,
    };
    let auth = match (&c.etcd_username, password) {
        (Some(u), Some(p)) => Some((u.clone(), p)),
        (Some(_), None) => {
            if c.etcd_password_env.is_none() && c.etcd_password_file.is_none() {
                errs.push(
                    "config.etcd_username",
                    "is set without a password",
                    "add etcd_password_env = \"VAR\" or etcd_password_file = \"PATH\"",
                );
            }
            None
        }
        (None, Some(_)) => {
            errs.push(
                "config.etcd_username",
                "missing: a password is set without a user name",
                "add etcd_username = \"NAME\"",
            );
            None
        }
        (None, None) => None,
    };
    let timeout = c.etcd_timeout_ms.unwrap_or(2000);
    if timeout == 0 {
        errs.push(
            "config.etcd_timeout_ms",
            "must be greater than 0",
            "use milliseconds, e.g. 2000",
        );
    }
    Some(EtcdSettings {
        endpoints,
        prefix: prefix.trim_end_matches('/').to_string(),
        auth,
        ca_file: c.etcd_ca_file.clone(),
        timeout: Duration::from_millis(timeout.max(1)),
    })
}

/// A key prefix must start with `/` and be more than `/`.
pub fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p.trim_end_matches('/').is_empty() {
        return Err(format!("{p:?} is not a key prefix starting with '/'"));
    }
    Ok(())
}

/// One key-value pair as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The value bytes.
    pub value: Vec<u8>,
    /// Revision of its last change.
    pub mod_revision: i64,
    /// Lease attached (0 = none).
    pub lease: i64,
}

/// Every key under a prefix at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Key → value.
    pub kvs: BTreeMap<String, Kv>,
    /// The etcd revision this copy is current at.
    pub revision: i64,
}

/// A failure talking to etcd.
#[derive(Debug, Clone)]
pub enum EtcdError {
    /// No endpoint answered (connection refused, timeout, TLS).
    Unreachable(String),
    /// etcd answered with an error.
    Refused(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unreachable(m) => write!(f, "etcd unreachable: {m}"),
            EtcdError::Refused(m) => write!(f, "etcd refused the request: {m}"),
        }
    }
}

/// A blocking etcd v3 client over the JSON gateway.
pub struct Client {
    settings: EtcdSettings,
    agent: ureq::Agent,
    watch_agent: ureq::Agent,
    /// Index of the endpoint that answered last.
    current: AtomicUsize,
    /// Auth token (`/v3/auth/authenticate`), when `etcd_username` is set.
    token: Mutex<Option<String>>,
}

/// `prefix` + 1 in the last byte: the end of a prefix range.
pub fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default()
}

/// etcd's JSON writes 64-bit integers as strings.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_of(v: &Value) -> (String, Kv) {
    (
        String::from_utf8_lossy(&unb64(&v["key"])).into_owned(),
        Kv {
            value: unb64(&v["value"]),
            mod_revision: int(&v["mod_revision"]),
            lease: int(&v["lease"]),
        },
    )
}

/// What [`Client::watch`] ended with.
pub enum WatchEnd {
    /// The watch went idle for [`WATCH_IDLE`] or was closed; resume.
    Resume,
    /// etcd no longer has the history from the requested revision.
    Compacted(i64),
    /// The callback asked to stop.
    Stopped,
}

/// One batch of watch events: `(key, Some(kv))` for a put, `None` for a
/// delete, and the revision of the batch.
pub type Events = Vec<(String, Option<Kv>)>;

impl Client {
    /// A client for these settings (TLS roots read here).
    pub fn new(settings: &EtcdSettings) -> Result<Client, String> {
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(settings.timeout)
            .timeout(settings.timeout);
        let mut w = ureq::AgentBuilder::new()
            .timeout_connect(settings.timeout)
            .timeout_read(WATCH_IDLE);
        if settings.endpoints.iter().any(|e| e.starts_with("https://")) {
            let tls = crate::filter::auth::jwks::tls_config(settings.ca_file.as_deref())
                .map_err(|e| format!("config.etcd_ca_file: {e}"))?;
            b = b.tls_config(tls.clone());
            w = w.tls_config(tls);
        }
        Ok(Client {
            settings: settings.clone(),
            agent: b.build(),
            watch_agent: w.build(),
            current: AtomicUsize::new(0),
            token: Mutex::new(None),
        })
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &EtcdSettings {
        &self.settings
    }

    fn authenticate(&self, base: &str) -> Result<Option<String>, EtcdError> {
        let Some((user, pass)) = &self.settings.auth else {
            return Ok(None);
        };
        if let Some(t) = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(Some(t));
        }
        let r = self
            .agent
            .post(&format!("{base}/v3/auth/authenticate"))
            .send_json(json!({"name": user, "password": pass}));
        let v = answer(r)?;
        let t = v["token"]
            .as_str()
            .ok_or_else(|| EtcdError::Refused(String::from("no token in the authenticate answer")))?
            .to_string();
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
        Ok(Some(t))
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let n = self.settings.endpoints.len().max(1);
        let start = self.current.load(Ordering::Relaxed);
        let mut last = EtcdError::Unreachable(String::from("no endpoint"));
        for i in 0..n {
            let at = (start + i) % n;
            let base = self.settings.endpoints[at].trim_end_matches('/');
            let token = match self.authenticate(base) {
                Ok(t) => t,
                Err(e @ EtcdError::Unreachable(_)) => {
                    last = e;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut req = self.agent.post(&format!("{base}{path}"));
            if let Some(t) = &token {
                req = req.set("Authorization", t);
            }
            match answer(req.send_json(body.clone())) {
                Ok(v) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(EtcdError::Refused(m)) => {
                    if m.contains("token") {
                        // An expired auth token: authenticate again next time.
                        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                    return Err(EtcdError::Refused(m));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Every key under `prefix`, with the store's revision.
    pub fn range(&self, prefix: &str) -> Result<Snapshot, EtcdError> {
        let v = self.call(
            "/v3/kv/range",
            &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&range_end(prefix))}),
        )?;
        let kvs = v["kvs"]
            .as_array()
            .map(|a| a.iter().map(kv_of).collect())
            .unwrap_or_default();
        Ok(Snapshot {
            kvs,
            revision: int(&v["header"]["revision"]),
        })
    }

    /// A transaction: when every `compare` holds, `success` runs, else
    /// `failure`. Returns whether it succeeded and the store's revision.
    pub fn txn(
        &self,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> Result<(bool, i64, Value), EtcdError> {
        let v = self.call(
            "/v3/kv/txn",
            &json!({"compare": compare, "success": success, "failure": failure}),
        )?;
        Ok((
            v["succeeded"].as_bool().unwrap_or(false),
            int(&v["header"]["revision"]),
            v,
        ))
    }

    /// A lease of `ttl_s` seconds; returns its id.
    pub fn grant(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl_s}))?;
        Ok(int(&v["ID"]))
    }

    /// Watches `prefix` from revision `from`, calling `on` with each batch
    /// of events and its revision; `on` returns false to stop.
    pub fn watch(
        &self,
        prefix: &str,
        from: i64,
        on_created: &mut dyn FnMut(),
        on: &mut dyn FnMut(Events, i64) -> bool,
    ) -> Result<WatchEnd, EtcdError> {
        use std::io::BufRead;
        let n = self.settings.endpoints.len().max(1);
        let at = self.current.load(Ordering::Relaxed) % n;
        let base = self.settings.endpoints[at].trim_end_matches('/');
        let token = self.authenticate(base)?;
        let mut req = self.watch_agent.post(&format!("{base}/v3/watch"));
        if let Some(t) = &token {
            req = req.set("Authorization", t);
        }
        let resp = req.send_json(json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&range_end(prefix)),
            "start_revision": from.to_string(),
        }}));
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                // The next attempt tries the next endpoint.
                self.current.store((at + 1) % n, Ordering::Relaxed);
                return Err(to_error(e));
            }
        };
        let mut lines = std::io::BufReader::new(resp.into_reader()).lines();
        loop {
            let line = match lines.next() {
                None => return Ok(WatchEnd::Resume),
                Some(Ok(l)) => l,
                Some(Err(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    ) =>
                {
                    return Ok(WatchEnd::Resume);
                }
                Some(Err(e)) => {
                    self.current.store((at + 1) % n, Ordering::Relaxed);
                    return Err(EtcdError::Unreachable(e.to_string()));
                }
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(e) = v.get("error") {
                let msg = e["message"].as_str().unwrap_or("watch error").to_string();
                if msg.contains("token") {
                    *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                return Err(EtcdError::Refused(msg));
            }
            let r = &v["result"];
            let compact = int(&r["compact_revision"]);
            if compact > 0 {
                return Ok(WatchEnd::Compacted(compact));
            }
            if r["canceled"].as_bool() == Some(true) {
                if r["cancel_reason"]
                    .as_str()
                    .is_some_and(|m| m.contains("token"))
                {
                    *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                return Err(EtcdError::Refused(
                    r["cancel_reason"]
                        .as_str()
                        .unwrap_or("watch canceled")
                        .to_string(),
                ));
            }
            if r["created"].as_bool() == Some(true) {
                on_created();
            }
            let Some(evs) = r["events"].as_array() else {
                continue;
            };
            let mut rev = 0;
            let batch: Events = evs
                .iter()
                .map(|e| {
                    let (k, kv) = kv_of(&e["kv"]);
                    rev = rev.max(kv.mod_revision);
                    if e["type"].as_str() == Some("DELETE") {
                        (k, None)
                    } else {
                        (k, Some(kv))
                    }
                })
                .collect();
            if !on(batch, rev) {
                return Ok(WatchEnd::Stopped);
            }
        }
    }
}

fn to_error(e: ureq::Error) -> EtcdError {
    match e {
        ureq::Error::Status(code, r) => {
            let body = String::from_utf8_lossy(&body_of(r)).into_owned();
            let msg = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v["message"]
                        .as_str()
                        .or(v["error"].as_str())
                        .map(String::from)
                })
                .unwrap_or(body);
            if code >= 500 && (msg.contains("no leader") || msg.contains("unavailable")) {
                EtcdError::Unreachable(format!("{code}: {msg}"))
            } else {
                EtcdError::Refused(format!("{code}: {msg}"))
            }
        }
        ureq::Error::Transport(t) => EtcdError::Unreachable(t.to_string()),
    }
}

/// The body, as far as it could be read: etcd's gateway ends chunked
/// answers with a trailer line ureq does not read, after the JSON.
fn body_of(r: ureq::Response) -> Vec<u8> {
    use std::io::Read;
    let mut buf = Vec::new();
    let _ = r.into_reader().take(16 << 20).read_to_end(&mut buf);
    buf
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Result<Value, EtcdError> {
    let body = body_of(r.map_err(to_error)?);
    serde_json::from_slice::<Value>(&body)
        .map_err(|e| EtcdError::Unreachable(format!("unreadable answer: {e}")))
}

/// A put request inside a transaction.
pub fn op_put(key: &str, value: &[u8], lease: i64) -> Value {
    let mut p = json!({"key": b64(key.as_bytes()), "value": b64(value)});
    if lease != 0 {
        p["lease"] = json!(lease.to_string());
    }
    json!({"request_put": p})
}

/// A delete of one key inside a transaction.
pub fn op_delete(key: &str) -> Value {
    json!({"request_delete_range": {"key": b64(key.as_bytes())}})
}

/// A delete of every key under a prefix inside a transaction.
pub fn op_delete_prefix(prefix: &str) -> Value {
    json!({"request_delete_range": {"key": b64(prefix.as_bytes()), "range_end": b64(&range_end(prefix))}})
}

/// A range of one key inside a transaction (to report the current value
/// on a failed compare).
pub fn op_get(key: &str) -> Value {
    json!({"request_range": {"key": b64(key.as_bytes())}})
}

/// Compares a key's last-change revision: it must be below `rev + 1`,
/// i.e. the key did not change after revision `rev` (a key that does not
/// exist has revision 0).
pub fn cmp_unchanged_since(key: &str, rev: i64) -> Value {
    json!({"key": b64(key.as_bytes()), "target": "MOD", "result": "LESS", "mod_revision": (rev + 1).to_string()})
}

/// The current value of a key from a failed transaction's `op_get`.
pub fn txn_range_kv(v: &Value) -> Option<(String, Kv)> {
    v["responses"]
        .as_array()?
        .iter()
        .find_map(|r| r["response_range"]["kvs"].as_array()?.first().map(kv_of))
}

/// How a follower is doing, for logs, `/readyz` and metrics.
pub trait FollowStatus {
    /// etcd answered (a range, or a watch was created).
    fn connected(&self);
    /// An attempt failed; the next one comes after a backoff.
    fn failed(&self, error: &EtcdError);
    /// A watch lost its history; a full range follows.
    fn resync(&self) {}
    /// False once nobody needs the copy any more: the follower ends.
    fn alive(&self) -> bool {
        true
    }
}

/// Keeps a copy of every key under `prefix` current until `on_change`
/// returns false: a range, then a watch from the next revision; on a
/// break, the watch resumes from the last revision seen (with a backoff
/// while etcd is away); when that history was compacted, a full range
/// replaces the copy. `on_change` sees the copy after every change (the
/// first time after the first range).
pub fn follow(
    client: &Client,
    prefix: &str,
    status: &dyn FollowStatus,
    on_change: &mut dyn FnMut(&Snapshot) -> bool,
) {
    let mut snap: Option<Snapshot> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        if !status.alive() {
            return;
        }
        let s = match &mut snap {
            Some(s) => s,
            None => match client.range(prefix) {
                Ok(s) => {
                    status.connected();
                    backoff = MIN_BACKOFF;
                    if !on_change(&s) {
                        return;
                    }
                    snap.insert(s)
                }
                Err(e) => {
                    status.failed(&e);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        let mut stop = false;
        let r = client.watch(
            prefix,
            s.revision + 1,
            &mut || status.connected(),
            &mut |events, rev| {
                for (k, kv) in events {
                    match kv {
                        Some(kv) => s.kvs.insert(k, kv),
                        None => s.kvs.remove(&k),
                    };
                }
                s.revision = s.revision.max(rev);
                stop = !on_change(s);
                !stop
            },
        );
        match r {
            Ok(WatchEnd::Stopped) => return,
            _ if stop => return,
            Ok(WatchEnd::Resume) => {
                // Idle, or closed by etcd or a proxy: resume from the last
                // revision, never in a tight loop.
                backoff = MIN_BACKOFF;
                std::thread::sleep(MIN_BACKOFF);
            }
            Ok(WatchEnd::Compacted(at)) => {
                tracing::warn!(
                    prefix,
                    from = s.revision + 1,
                    compacted = at,
                    "etcd compacted the history this watch needed; reading everything again"
                );
                status.resync();
                snap = None;
            }
            Err(e) => {
                status.failed(&e);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A shared handle on a client, built once per settings.
pub type SharedClient = Arc<Client>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_is_the_prefix_plus_one() {
        assert_eq!(range_end("/a/"), b"/a0".to_vec());
        assert_eq!(range_end("/ringgate"), b"/ringgatf".to_vec());
    }

    #[test]
    fn prefixes_start_with_a_slash() {
        assert!(check_prefix("/ringgate").is_ok());
        assert!(check_prefix("ringgate").is_err());
        assert!(check_prefix("/").is_err());
    }
}
