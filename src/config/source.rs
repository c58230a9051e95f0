//! Where the reloadable config comes from: the file, or etcd
//! (`[config] source = "etcd"`).
//!
//! With etcd, the file keeps what cannot change while running (`[server]`,
//! `[admin]`, `[config]`, `[log]`, `[metrics]`) and every reloadable
//! section lives under `etcd_prefix`, one key per object, each value a JSON
//! object with the keys the file would have:
//!
//! | key                          | value                                   |
//! |------------------------------|-----------------------------------------|
//! | `PREFIX/routes/NAME`         | one `[[routes]]` table (`name` = NAME)  |
//! | `PREFIX/upstreams/NAME`      | one `[upstreams.NAME]` table            |
//! | `PREFIX/consumers/ID`        | one `[[consumers]]` table (`id` = ID)   |
//! | `PREFIX/rate_limits/NAME`    | one `[rate_limits.NAME]` table          |
//! | `PREFIX/settings/SECTION`    | `[auth]`, `[redis]`, `[versioning]` or `[cache]` |
//! | `PREFIX/registry/UP/ADDR`    | a registry target (written with a lease)|
//!
//! Key components: [`Fleet`] (one per running server, carried across
//! reloads: the etcd client, the latest copy of the prefix, the watch
//! status and what was refused), [`compose`] (file + objects → one TOML
//! document validated exactly like a file, errors renamed to the etcd keys
//! they came from), [`load`] (start and `check`), [`reload_load`] (what a
//! reload reads), [`Fleet::start`] (the watch thread), and [`push`] /
//! [`pull`] for `ringgate config push|pull`.
//!
//! How it fits: a change under the prefix reaches the watch thread, which
//! stores the new copy and calls the file reload's
//! [`crate::runtime::reload::Reloader::reload`]: the same validation, the
//! same carry-over and the same generation switch. The revision of the
//! copy a generation was built from is in [`FromEtcd::revision`]. Workers
//! never see any of this: they pick up the new generation as after a file
//! reload.

use super::etcd::{self, Client, EtcdError, EtcdSettings, FollowStatus, Snapshot};
use super::{Config, ConfigError, ConfigErrors, Errors};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// The sections that live under the prefix, and the etcd key kind each
/// takes (`routes/NAME`, ..., `settings/auth`).
pub const OBJECT_KINDS: [&str; 4] = ["routes", "upstreams", "consumers", "rate_limits"];

/// Single sections stored as `PREFIX/settings/NAME`.
pub const SETTINGS: [&str; 4] = ["auth", "redis", "versioning", "cache"];

/// Sections the file keeps when the source is etcd.
pub const FILE_ONLY: [&str; 5] = ["server", "admin", "config", "log", "metrics"];

/// The etcd side of one config generation.
#[derive(Debug, Clone)]
pub struct FromEtcd {
    /// The fleet state shared by every generation of a running server.
    pub fleet: Arc<Fleet>,
    /// The etcd revision the reloadable sections were read at (0: not
    /// read yet, only the file's sections are running).
    pub revision: i64,
}

/// What a running server keeps about etcd across reloads.
pub struct Fleet {
    /// `[config] etcd_*`.
    pub settings: EtcdSettings,
    client: OnceLock<Result<Arc<Client>, String>>,
    /// The config file (the static sections).
    path: Mutex<Option<PathBuf>>,
    /// The latest copy of the prefix (applied or refused).
    snapshot: Mutex<Option<Snapshot>>,
    /// etcd answered the last attempt.
    pub connected: AtomicBool,
    /// The last failure talking to etcd.
    last_error: Mutex<String>,
    /// The last revision refused, with every error.
    rejected: Mutex<Option<(i64, Vec<String>)>>,
    /// Failed attempts to reach etcd.
    pub errors_total: AtomicU64,
    /// Full resyncs after a compacted watch.
    pub resyncs_total: AtomicU64,
    started: AtomicBool,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("settings", &self.settings)
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .finish()
    }
}

impl Fleet {
    fn new(settings: EtcdSettings) -> Fleet {
        Fleet {
            settings,
            client: OnceLock::new(),
            path: Mutex::new(None),
            snapshot: Mutex::new(None),
            connected: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
            rejected: Mutex::new(None),
            errors_total: AtomicU64::new(0),
            resyncs_total: AtomicU64::new(0),
            started: AtomicBool::new(false),
        }
    }

    /// The etcd client (built once).
    pub fn client(&self) -> Result<Arc<Client>, String> {
        self.client
            .get_or_init(|| Client::new(&self.settings).map(Arc::new))
            .clone()
    }

    /// The config prefix with a trailing `/`.
    pub fn prefix(&self) -> String {
        format!("{}/", self.settings.prefix)
    }

    /// The latest copy of the prefix, when one was read.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_snapshot(&self, s: Snapshot) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    }

    /// The config file's path.
    pub fn path(&self) -> Option<PathBuf> {
        self.path.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last failure talking to etcd ("" when the last attempt worked).
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last refused revision and its errors, until a later one applies.
    pub fn rejected(&self) -> Option<(i64, Vec<String>)> {
        self.rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_rejected(&self, r: Option<(i64, Vec<String>)>) {
        *self.rejected.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    /// Starts the thread that watches the prefix and reloads through
    /// `reloader` on every change (once per fleet).
    pub fn start(
        self: &Arc<Self>,
        reloader: &Arc<crate::runtime::reload::Reloader>,
        store: Arc<crate::runtime::reload::ConfigStore>,
    ) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let fleet = self.clone();
        let reloader = Arc::downgrade(reloader);
        let r = std::thread::Builder::new()
            .name(String::from("ringgate-etcd"))
            .spawn(move || fleet.watch(reloader, store));
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot start the etcd watch thread");
        }
    }

    fn watch(
        self: Arc<Self>,
        reloader: Weak<crate::runtime::reload::Reloader>,
        store: Arc<crate::runtime::reload::ConfigStore>,
    ) {
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "etcd client not available; the config is not watched");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
                return;
            }
        };
        let status = Status {
            fleet: &self,
            alive: &|| reloader.strong_count() > 0,
        };
        let prefix = self.prefix();
        etcd::follow(&client, &prefix, &status, &mut |snap| {
            let Some(r) = reloader.upgrade() else {
                return false;
            };
            let running = store.load().etcd.as_ref().map_or(0, |e| e.revision);
            let same = self
                .snapshot()
                .is_some_and(|s| s.revision == snap.revision && s.kvs == snap.kvs);
            self.set_snapshot(snap.clone());
            if same && running != 0 {
                return true;
            }
            match r.reload() {
                Ok(_) => {
                    self.set_rejected(None);
                    tracing::info!(revision = snap.revision, "etcd config applied");
                }
                Err(errors) => {
                    tracing::error!(
                        revision = snap.revision,
                        errors = errors.len(),
                        "etcd config refused; the running config keeps serving"
                    );
                    self.set_rejected(Some((snap.revision, errors)));
                }
            }
            true
        });
        tracing::info!("etcd watch ended");
    }
}

struct Status<'a> {
    fleet: &'a Fleet,
    alive: &'a dyn Fn() -> bool,
}

impl FollowStatus for Status<'_> {
    fn connected(&self) {
        if !self.fleet.connected.swap(true, Ordering::AcqRel) {
            tracing::info!(endpoints = ?self.fleet.settings.endpoints, "etcd connected");
        }
        self.fleet
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn failed(&self, error: &EtcdError) {
        self.fleet.errors_total.fetch_add(1, Ordering::Relaxed);
        let msg = error.to_string();
        let was = self.fleet.connected.swap(false, Ordering::AcqRel);
        let mut last = self
            .fleet
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if was || *last != msg {
            tracing::warn!(error = %msg, "etcd: keeping the running config, retrying with backoff");
        }
        *last = msg;
    }

    fn resync(&self) {
        self.fleet.resyncs_total.fetch_add(1, Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        (self.alive)()
    }
}

/// Compiles `[config]`'s etcd keys: attaches the client settings to every
/// `discovery = "etcd"` upstream (and, when the source is etcd, turns
/// registry upstreams into etcd-backed ones) and returns the etcd side of
/// the config when the source is etcd.
pub(super) fn compile(
    file: &super::file::FileConfig,
    upstreams: &mut [super::UpstreamConfig],
    errs: &mut Errors,
) -> Option<FromEtcd> {
    let settings = etcd::compile(file, errs);
    let source_etcd = file.config.as_ref().and_then(|c| c.source.as_deref()) == Some("etcd")
        && settings.is_some();
    for u in upstreams.iter_mut() {
        match &mut u.discovery {
            super::Discovery::Etcd(d) => match &settings {
                Some(s) => d.etcd = Some(s.clone()),
                None => errs.push(
                    format!("upstreams.{}.discovery", u.name),
                    "discovery = \"etcd\" needs etcd, and [config] names none",
                    "add etcd_endpoints = [\"http://127.0.0.1:2379\"] under [config]",
                ),
            },
            super::Discovery::Registry { ttl } if source_etcd => {
                let s = settings.clone().expect("source_etcd");
                u.discovery = super::Discovery::Etcd(super::EtcdDiscovery {
                    prefix: format!("{}/registry/{}", s.prefix, u.name),
                    etcd: Some(s),
                    registry_ttl: Some(*ttl),
                });
            }
            _ => {}
        }
    }
    if !source_etcd {
        return None;
    }
    Some(FromEtcd {
        fleet: Arc::new(Fleet::new(settings.expect("source_etcd"))),
        revision: 0,
    })
}

fn err(key: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
        fix: fix.into(),
    }
}

fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![err(
            "(file)",
            format!("cannot read {}: {e}", path.display()),
            "check the path given with -c and its permissions",
        )])
    })
}

/// With the source etcd, the file must not hold a reloadable section.
fn file_only_sections(text: &str, prefix: &str) -> Result<(), ConfigErrors> {
    let Ok(t) = toml::from_str::<toml::Table>(text) else {
        return Ok(());
    };
    let errs: Vec<ConfigError> = t
        .keys()
        .filter(|k| !FILE_ONLY.contains(&k.as_str()))
        .map(|k| {
            err(
                k.as_str(),
                format!("with [config] source = \"etcd\", {k} lives in etcd under {prefix}/, not in the file"),
                format!(
                    "move it there with `ringgate config push -c FILE --etcd URL --prefix {prefix}`, then remove it from the file (the file keeps {})",
                    FILE_ONLY.map(|s| format!("[{s}]")).join(", ")
                ),
            )
        })
        .collect();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errs))
    }
}

/// Reads the config at `path` for `run` and `check`: the file, and with
/// `[config] source = "etcd"` the reloadable sections from etcd. When etcd
/// cannot be reached, the file's sections alone are returned (revision 0:
/// `/readyz` answers 503 until the watch applies etcd's config), and so
/// when the config in etcd is invalid (its errors in
/// [`Fleet::rejected`]: `check` reports them). Credentials etcd refuses
/// are an error, like an invalid file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read_file(path)?;
    let base = Config::parse(&text)?;
    let Some(from) = base.etcd.clone() else {
        return Ok(base);
    };
    let fleet = from.fleet;
    file_only_sections(&text, &fleet.settings.prefix)?;
    *fleet.path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.to_path_buf());
    let client = fleet.client().map_err(|e| {
        ConfigErrors(vec![err(
            "config.etcd_ca_file",
            e,
            "name a readable PEM file of CA certificates",
        )])
    })?;
    match client.range(&fleet.prefix()) {
        Ok(snap) => {
            fleet.connected.store(true, Ordering::Relaxed);
            let composed = compose(&text, &fleet, &snap);
            let rev = snap.revision;
            fleet.set_snapshot(snap);
            match composed {
                Ok(cfg) => Ok(cfg),
                // Refused like a change the watch brings: the instance
                // waits (503) with the errors shown, and applies the
                // prefix once it is fixed.
                Err(errs) => {
                    for e in &errs.0 {
                        tracing::error!(revision = rev, error = %e, "etcd config refused");
                    }
                    fleet.set_rejected(Some((rev, errs.0.iter().map(|e| e.to_string()).collect())));
                    Ok(base)
                }
            }
        }
        // Credentials etcd refuses do not get better by waiting (they
        // cannot change while running): like an invalid file.
        Err(EtcdError::Refused(m))
            if ["authentication", "user name", "permission denied"]
                .iter()
                .any(|w| m.contains(w)) =>
        {
            Err(ConfigErrors(vec![err(
                "config.etcd_username",
                format!("etcd refused the credentials: {m}"),
                "check etcd_username and the password (etcd_password_env or etcd_password_file) against the users etcd knows",
            )]))
        }
        Err(e) => {
            fleet.errors_total.fetch_add(1, Ordering::Relaxed);
            *fleet.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e.to_string();
            tracing::warn!(error = %e, "etcd not reachable at start: serving the file's sections until it is");
            Ok(base)
        }
    }
}

/// What `ringgate check` adds for a config [`load`] returned: with the
/// source etcd, the revision it read (or that etcd was not reachable), or
/// every error of the config in etcd.
pub fn check_note(c: &Config) -> Result<String, String> {
    let Some(e) = &c.etcd else {
        return Ok(String::new());
    };
    if let Some((rev, errs)) = e.fleet.rejected() {
        let mut m = format!(
            "the config in etcd at revision {rev}: {} error(s)",
            errs.len()
        );
        for x in &errs {
            m.push_str("\n  ");
            m.push_str(x);
        }
        return Err(m);
    }
    Ok(if e.revision > 0 {
        format!(
            "; with etcd {}/ at revision {}",
            e.fleet.settings.prefix, e.revision
        )
    } else {
        String::from("; etcd not reachable: only the file was checked")
    })
}

/// What a reload reads: the file, and with etcd the latest copy of the
/// prefix. The source and the etcd settings cannot change while running.
pub fn reload_load(path: &Path, old: &Config) -> Result<Config, ConfigErrors> {
    let text = read_file(path)?;
    let base = Config::parse(&text)?;
    match (&old.etcd, &base.etcd) {
        (None, None) => Ok(base),
        (Some(o), Some(n)) => {
            if o.fleet.settings != n.fleet.settings {
                return Err(ConfigErrors(vec![err(
                    "config.etcd_endpoints",
                    "the etcd settings (etcd_endpoints, etcd_prefix, etcd_username, etcd_password_*, etcd_ca_file, etcd_timeout_ms) cannot change while running",
                    "restore the running values, or restart the binary (`ringgate run --takeover`)",
                )]));
            }
            file_only_sections(&text, &o.fleet.settings.prefix)?;
            match o.fleet.snapshot() {
                Some(snap) => compose(&text, &o.fleet, &snap),
                None => {
                    let mut c = base;
                    c.etcd = Some(o.clone());
                    Ok(c)
                }
            }
        }
        _ => Err(ConfigErrors(vec![err(
            "config.source",
            "cannot change while running",
            "restore the running value, or restart the binary (`ringgate run --takeover`)",
        )])),
    }
}

/// One object under the prefix: its section and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// `routes/NAME`, `upstreams/NAME`, `consumers/ID`, `rate_limits/NAME`.
    Named(&'static str, String),
    /// `settings/SECTION`.
    Setting(&'static str),
    /// `registry/...`: discovery data, not config.
    Registry,
}

/// Which object a key (below the prefix's `/`) names.
pub fn object_of(rel: &str) -> Result<Object, String> {
    let (kind, name) = rel.split_once('/').unwrap_or((rel, ""));
    if kind == "registry" {
        return Ok(Object::Registry);
    }
    if kind == "settings" {
        return SETTINGS
            .iter()
            .find(|s| **s == name)
            .map(|s| Object::Setting(s))
            .ok_or_else(|| format!("unknown settings section {name:?}"));
    }
    let Some(k) = OBJECT_KINDS.iter().find(|k| **k == kind) else {
        return Err(format!("unknown object kind {kind:?}"));
    };
    check_name(name)?;
    Ok(Object::Named(k, name.to_string()))
}

/// An object name: not empty, no `/`, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{name:?} is not an object name (non-empty, without '/')"
        ));
    }
    Ok(())
}

const KEY_FIX: &str = "use PREFIX/routes/NAME, PREFIX/upstreams/NAME, PREFIX/consumers/ID, PREFIX/rate_limits/NAME or PREFIX/settings/{auth,redis,versioning,cache}";

/// A JSON value as TOML (`null` members are left out).
pub fn json_to_toml(v: &Json) -> Option<toml::Value> {
    Some(match v {
        Json::Null => return None,
        Json::Bool(b) => toml::Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Json::String(s) => toml::Value::String(s.clone()),
        Json::Array(a) => toml::Value::Array(a.iter().filter_map(json_to_toml).collect()),
        Json::Object(o) => toml::Value::Table(
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), json_to_toml(v)?)))
                .collect(),
        ),
    })
}

/// A TOML value as JSON (dates as their text).
pub fn toml_to_json(v: &toml::Value) -> Json {
    match v {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(a) => Json::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Json::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// The objects of a copy of the prefix as the sections of one TOML table,
/// with where each came from (`routes[2]` → its etcd key). Every object
/// that is not a JSON object, or sits under an unknown key, is an error
/// naming its key.
pub fn objects_table(
    prefix: &str,
    snap: &Snapshot,
) -> (toml::Table, Vec<(String, String)>, Vec<ConfigError>) {
    let mut t = toml::Table::new();
    let mut origin = Vec::new();
    let mut errs = Vec::new();
    for (key, kv) in &snap.kvs {
        let Some(rel) = key.strip_prefix(prefix) else {
            continue;
        };
        let obj = match object_of(rel) {
            Ok(Object::Registry) => continue,
            Ok(o) => o,
            Err(m) => {
                errs.push(err(key.as_str(), m, KEY_FIX));
                continue;
            }
        };
        let value = match serde_json::from_slice::<Json>(&kv.value) {
            Ok(v @ Json::Object(_)) => v,
            Ok(_) => {
                errs.push(err(
                    key.as_str(),
                    "the value is not a JSON object",
                    "write the object's keys as in the file, as JSON: {\"path\": \"/a\", \"upstream\": \"a\"}",
                ));
                continue;
            }
            Err(e) => {
                errs.push(err(
                    key.as_str(),
                    format!("the value is not JSON: {e}"),
                    "write the object's keys as in the file, as one JSON object",
                ));
                continue;
            }
        };
        let Some(toml::Value::Table(mut table)) = json_to_toml(&value) else {
            continue;
        };
        match obj {
            Object::Named(kind, name) => {
                let id_key = match kind {
                    "routes" => Some("name"),
                    "consumers" => Some("id"),
                    _ => None,
                };
                if let Some(id_key) = id_key {
                    match table.get(id_key) {
                        Some(toml::Value::String(s)) if *s != name => {
                            errs.push(err(
                                format!("{key}: {id_key}"),
                                format!("{s:?} differs from the name in the key, {name:?}"),
                                format!("leave {id_key} out (the key names the object) or make them equal"),
                            ));
                            continue;
                        }
                        _ => {
                            table.insert(id_key.to_string(), toml::Value::String(name.clone()));
                        }
                    }
                    let list = t
                        .entry(kind)
                        .or_insert_with(|| toml::Value::Array(Vec::new()));
                    if let toml::Value::Array(a) = list {
                        origin.push((format!("{kind}[{}]", a.len()), key.clone()));
                        a.push(toml::Value::Table(table));
                    }
                } else {
                    let map = t
                        .entry(kind)
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let toml::Value::Table(m) = map {
                        origin.push((format!("{kind}.{name}"), key.clone()));
                        m.insert(name, toml::Value::Table(table));
                    }
                }
            }
            Object::Setting(s) => {
                origin.push((s.to_string(), key.clone()));
                t.insert(s.to_string(), toml::Value::Table(table));
            }
            Object::Registry => {}
        }
    }
    (t, origin, errs)
}

/// Renames an error's key to the etcd key its object came from.
fn rename(e: &mut ConfigError, origin: &[(String, String)]) {
    // A line number of the composed document means nothing to whoever
    // wrote the key.
    for text in [&mut e.key, &mut e.message] {
        if let Some(i) = text.find(" (line ")
            && let Some(j) = text[i..].find(')')
        {
            text.replace_range(i..i + j + 1, "");
        }
    }
    for (path, key) in origin {
        if let Some(rest) = e.key.strip_prefix(path.as_str())
            && (rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
        {
            e.key = format!("{key} ({})", e.key);
            return;
        }
    }
}

/// The file's sections with the objects of `snap`, validated like a file:
/// the config of one generation, tied to `snap.revision`.
pub fn compose(text: &str, fleet: &Arc<Fleet>, snap: &Snapshot) -> Result<Config, ConfigErrors> {
    let mut doc: toml::Table = toml::from_str(text)
        .map_err(|e| ConfigErrors(vec![err("(file)", e.to_string(), "fix the TOML syntax")]))?;
    let (objects, origin, mut errs) = objects_table(&fleet.prefix(), snap);
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    doc.extend(objects);
    let composed = toml::to_string(&doc).map_err(|e| {
        ConfigErrors(vec![err(
            "(etcd)",
            format!("cannot compose the config: {e}"),
            "check the objects' values",
        )])
    })?;
    match Config::parse(&composed) {
        Ok(mut c) => {
            c.etcd = Some(FromEtcd {
                fleet: fleet.clone(),
                revision: snap.revision,
            });
            Ok(c)
        }
        Err(ConfigErrors(mut e)) => {
            for x in &mut e {
                rename(x, &origin);
            }
            errs.extend(e);
            Err(ConfigErrors(errs))
        }
    }
}

/// The etcd objects of a file's reloadable sections: `(key below the
/// prefix, JSON value)`.
pub fn file_objects(text: &str) -> Result<Vec<(String, Json)>, Vec<String>> {
    let t: toml::Table = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (section, v) in &t {
        if FILE_ONLY.contains(&section.as_str()) {
            continue;
        }
        if SETTINGS.contains(&section.as_str()) {
            out.push((format!("settings/{section}"), toml_to_json(v)));
            continue;
        }
        match (section.as_str(), v) {
            ("routes" | "consumers", toml::Value::Array(a)) => {
                let id = if section == "routes" { "name" } else { "id" };
                for (i, item) in a.iter().enumerate() {
                    match item.get(id).and_then(|n| n.as_str()) {
                        Some(n) if check_name(n).is_ok() => {
                            out.push((format!("{section}/{n}"), toml_to_json(item)))
                        }
                        _ => errs.push(format!(
                            "{section}[{i}].{id}: needed to push (it becomes the etcd key {section}/NAME) (fix: give every entry a {id} without '/')"
                        )),
                    }
                }
            }
            ("upstreams" | "rate_limits", toml::Value::Table(m)) => {
                for (name, item) in m {
                    out.push((format!("{section}/{name}"), toml_to_json(item)));
                }
            }
            _ => errs.push(format!("{section}: not a section ringgate knows")),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (k, _) in &out {
        if !seen.insert(k.clone()) {
            errs.push(format!(
                "{k}: two objects with this name (fix: give each a distinct name)"
            ));
        }
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

fn cli_client(url: &str, prefix: &str) -> Result<(Client, String), String> {
    etcd::check_prefix(prefix).map_err(|e| format!("--prefix: {e}"))?;
    let mut auth = None;
    if let Ok(up) = std::env::var("ETCDCTL_USER") {
        let (u, p) = up.split_once(':').unwrap_or((&up, ""));
        auth = Some((u.to_string(), p.to_string()));
    }
    let settings = EtcdSettings {
        endpoints: url.split(',').map(|s| s.trim().to_string()).collect(),
        prefix: prefix.trim_end_matches('/').to_string(),
        auth,
        ca_file: std::env::var("ETCDCTL_CACERT").ok(),
        timeout: Duration::from_secs(5),
    };
    Ok((Client::new(&settings)?, format!("{}/", settings.prefix)))
}

/// `text` with `[config] etcd_endpoints` set to `url` when it has none
/// (lines keep their numbers, but for those after a `[config]` header).
fn with_endpoints(text: &str, url: &str) -> String {
    let has = toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("config").cloned());
    let line = format!(
        "etcd_endpoints = [{}]",
        url.split(',')
            .map(|u| format!("{:?}", u.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match has {
        None => format!("{text}\n[config]\n{line}\n"),
        Some(c) if c.get("etcd_endpoints").is_some() => text.to_string(),
        Some(_) => {
            let mut out = String::new();
            for l in text.lines() {
                out.push_str(l);
                out.push('\n');
                if l.trim() == "[config]" {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            out
        }
    }
}

/// `ringgate config push`: validates the file, then replaces every
/// reloadable object under the prefix with the file's, in one transaction
/// (one revision: every instance applies it as one reload). Registry
/// targets are left alone.
pub fn push(path: &Path, url: &str, prefix: &str) -> Result<String, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    // `discovery = "etcd"` upstreams take the instances' etcd; a file
    // without one is checked against the etcd it is pushed to.
    let checked = with_endpoints(&text, url);
    Config::parse(&checked).map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let objects = file_objects(&text)?;
    let (client, p) = cli_client(url, prefix).map_err(|e| vec![e])?;
    let current = client.range(&p).map_err(|e| vec![e.to_string()])?;
    // etcd refuses a transaction that names one key twice, so the objects
    // the file no longer has are deleted one by one, and only if nothing
    // changed them since they were read.
    let new: std::collections::HashSet<String> =
        objects.iter().map(|(k, _)| format!("{p}{k}")).collect();
    let mut compare = Vec::new();
    let mut ops = Vec::new();
    for (k, kv) in &current.kvs {
        let Some(rel) = k.strip_prefix(&p) else {
            continue;
        };
        if object_of(rel) == Ok(Object::Registry) || new.contains(k) {
            continue;
        }
        compare.push(etcd::cmp_unchanged_since(k, kv.mod_revision));
        ops.push(etcd::op_delete(k));
    }
    for (k, v) in &objects {
        ops.push(etcd::op_put(
            &format!("{p}{k}"),
            v.to_string().as_bytes(),
            0,
        ));
    }
    let (ok, rev, _) = client
        .txn(compare, ops, Vec::new())
        .map_err(|e| vec![e.to_string()])?;
    if !ok {
        return Err(vec![format!(
            "{p}: changed while pushing; nothing was written (fix: run the push again)"
        )]);
    }
    Ok(format!(
        "{}: {} objects written under {p} at revision {rev}",
        path.display(),
        objects.len()
    ))
}

/// `ringgate config pull`: the reloadable sections under the prefix, as
/// TOML.
pub fn pull(url: &str, prefix: &str) -> Result<String, Vec<String>> {
    let (client, p) = cli_client(url, prefix).map_err(|e| vec![e])?;
    let snap = client.range(&p).map_err(|e| vec![e.to_string()])?;
    let (t, _, errs) = objects_table(&p, &snap);
    if !errs.is_empty() {
        return Err(errs.iter().map(|e| e.to_string()).collect());
    }
    let body = toml::to_string(&t).map_err(|e| vec![e.to_string()])?;
    Ok(format!(
        "# ringgate config pull: {p} at revision {}\n{body}",
        snap.revision
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_objects() {
        assert_eq!(
            object_of("routes/orders").unwrap(),
            Object::Named("routes", "orders".into())
        );
        assert_eq!(object_of("settings/auth").unwrap(), Object::Setting("auth"));
        assert_eq!(object_of("registry/a/1.2.3.4:5").unwrap(), Object::Registry);
        assert!(object_of("routez/x").is_err());
        assert!(object_of("routes/").is_err());
        assert!(object_of("settings/server").is_err());
    }

    #[test]
    fn json_and_toml_convert_both_ways() {
        let j = serde_json::json!({"a": 1, "b": [1.5, "x"], "c": {"d": true}, "e": null});
        let t = json_to_toml(&j).unwrap();
        let back = toml_to_json(&t);
        assert_eq!(
            back,
            serde_json::json!({"a": 1, "b": [1.5, "x"], "c": {"d": true}})
        );
    }

    fn fleet() -> Arc<Fleet> {
        Arc::new(Fleet::new(EtcdSettings {
            endpoints: vec![String::from("http://127.0.0.1:1")],
            prefix: String::from("/rg"),
            auth: None,
            ca_file: None,
            timeout: Duration::from_millis(100),
        }))
    }

    fn snap(kvs: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            kvs: kvs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        etcd::Kv {
                            value: v.as_bytes().to_vec(),
                            mod_revision: 7,
                            lease: 0,
                        },
                    )
                })
                .collect(),
            revision: 7,
        }
    }

    const FILE: &str = "[server]\nlisten = \"127.0.0.1:0\"\n";

    #[test]
    fn objects_compose_into_one_config_tied_to_the_revision() {
        let s = snap(&[
            ("/rg/upstreams/a", r#"{"targets": ["127.0.0.1:9"]}"#),
            ("/rg/routes/r", r#"{"path": "/r", "upstream": "a"}"#),
            ("/rg/registry/a/127.0.0.1:9", r#"{"addr": "127.0.0.1:9"}"#),
        ]);
        let c = compose(FILE, &fleet(), &s).unwrap();
        assert_eq!(c.routes[0].name, "r");
        assert_eq!(c.etcd.as_ref().unwrap().revision, 7);
    }

    #[test]
    fn errors_name_the_etcd_key_they_come_from() {
        let s = snap(&[
            ("/rg/upstreams/a", r#"{"targets": ["127.0.0.1:9"]}"#),
            ("/rg/routes/ok", r#"{"path": "/ok", "upstream": "a"}"#),
            ("/rg/routes/bad", r#"{"path": "/bad", "upstream": "zz"}"#),
        ]);
        let e = compose(FILE, &fleet(), &s).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "/rg/routes/bad (routes[0].upstream)");
        let e = compose(
            FILE,
            &fleet(),
            &snap(&[
                ("/rg/routes/x", "not json"),
                ("/rg/route/y", "{}"),
                ("/rg/routes/z", r#"{"name": "other", "path": "/"}"#),
                ("/rg/settings/server", "{}"),
            ]),
        )
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "/rg/route/y",
                "/rg/routes/x",
                "/rg/routes/z: name",
                "/rg/settings/server"
            ],
            "{e}"
        );
    }

    #[test]
    fn a_file_splits_into_objects() {
        let objs = file_objects(
            "[server]\nworkers = 1\n[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"a\"\n[redis]\nurl = \"redis://x\"\n",
        )
        .unwrap();
        let keys: Vec<&str> = objs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["settings/redis", "routes/r", "upstreams/a"]);
        assert!(file_objects("[[routes]]\npath = \"/\"\n").is_err());
    }
}
