//! Hot reload: a new config is read and validated off the workers, then
//! published as one immutable snapshot that every worker switches to at its
//! next request boundary.
//!
//! How it fits: [`ConfigStore`] holds the published config and a generation
//! number. A worker compares that number (one relaxed atomic load) before
//! each request; when it changed, the worker builds its local state for the
//! new generation — keeping the pools of upstreams whose settings did not
//! change — and serves every new request with it, while requests already in
//! flight finish on the config they started with. An invalid file changes
//! nothing: the old config keeps serving and every error is reported (log,
//! `ringgate_config_reloads_total{result="error"}`, the reload response).
//!
//! What carries over: upstreams whose settings did not change keep their
//! shared state (and, on every worker, their pools); rate limits whose
//! definition did not change keep their counts (the workers' key tables
//! and the reconciler's state, see [`crate::phases::hand_over`]),
//! while changed and new limits start fresh and removed ones are dropped.
//! Listen addresses: the reload binds every added address once per worker
//! (`SO_REUSEPORT`, a port of 0 resolved once) before publishing, so an
//! address that cannot be bound rejects the reload naming `server.listen`;
//! each worker picks up its new listeners on its next watchdog tick and
//! stops accepting on removed addresses, while connections already
//! accepted there carry on. A new `admin.listen` (or a new `[admin]`
//! section) is bound before publishing too; the old admin address (or a
//! removed section's) stops accepting after it.
//! `server.pin` and `server.backlog` (`listen(2)` again on each socket)
//! apply on each worker's next tick too. Worker count and io settings
//! cannot change while running: such a reload is rejected naming the key.
//!
//! Triggers: SIGHUP, `POST /reload` on the admin listener, and, with
//! `[config] watch = true`, a change of the file's modification time.

use crate::config::Config;
use crate::telemetry::metrics::Metrics;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The published config and its generation number.
pub struct ConfigStore {
    current: ArcSwap<Config>,
    generation: AtomicU64,
    /// Listeners a reload bound for each worker (configured address and
    /// socket), taken by the worker when it sees the new generation.
    listen_mail: Mutex<Vec<Vec<(SocketAddr, std::net::TcpListener)>>>,
    /// The listen addresses as configured and as bound (ports resolved).
    bound: Mutex<Vec<(SocketAddr, SocketAddr)>>,
}

impl ConfigStore {
    /// A store publishing `config` as generation 0.
    pub fn new(config: Arc<Config>) -> Self {
        let workers = config.server.workers.max(1);
        ConfigStore {
            current: ArcSwap::new(config),
            generation: AtomicU64::new(0),
            listen_mail: Mutex::new((0..workers).map(|_| Vec::new()).collect()),
            bound: Mutex::new(Vec::new()),
        }
    }

    /// The listen addresses as configured and as bound.
    pub fn bound(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_bound(&self, bound: Vec<(SocketAddr, SocketAddr)>) {
        *self.bound.lock().unwrap_or_else(|e| e.into_inner()) = bound;
    }

    /// The listeners reloads bound for worker `id` since it last looked.
    pub(crate) fn take_listeners(&self, id: usize) -> Vec<(SocketAddr, std::net::TcpListener)> {
        let mut mail = self.listen_mail.lock().unwrap_or_else(|e| e.into_inner());
        mail.get_mut(id).map(std::mem::take).unwrap_or_default()
    }

    /// The current generation number (cheap: one relaxed load).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current config.
    pub fn load(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// The current config with its generation number.
    pub fn load_with_generation(&self) -> (u64, Arc<Config>) {
        loop {
            let g = self.generation();
            let c = self.current.load_full();
            if self.generation() == g {
                return (g, c);
            }
        }
    }

    pub(crate) fn publish(&self, config: Arc<Config>) {
        self.current.store(config);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The admin listener of a running server, shared by its handle and its
/// reloader (which may start, move or stop it).
#[derive(Clone, Default)]
pub struct AdminSlot(Arc<Mutex<Option<Arc<crate::admin::Admin>>>>);

impl AdminSlot {
    /// The running admin listener, if any.
    pub fn get(&self) -> Option<Arc<crate::admin::Admin>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, a: Option<Arc<crate::admin::Admin>>) {
        let old = std::mem::replace(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()), a);
        drop(old);
    }
}

/// What a reload does to the admin listener.
enum AdminChange {
    None,
    Move(crate::admin::AdminListener),
    Start(Arc<crate::admin::Admin>),
    Stop,
}

/// `POST /reload` for a reloader the admin listener must not keep alive.
pub(crate) fn reload_fn(r: std::sync::Weak<Reloader>) -> Box<crate::admin::ReloadFn> {
    Box::new(move || match r.upgrade() {
        Some(r) => r.reload(),
        None => Err(vec![String::from("the server is shutting down")]),
    })
}

/// Reloads the config file into a [`ConfigStore`].
pub struct Reloader {
    path: PathBuf,
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    /// Worker threads running (`server.workers` as resolved at start).
    workers: usize,
    lock: Mutex<()>,
    /// The admin listener, which a reload may start, move or stop.
    admin: AdminSlot,
    /// What a newly started admin listener needs besides the store and the
    /// metrics: this reloader (weakly) and the cache-purge log.
    admin_ctx: std::sync::OnceLock<(std::sync::Weak<Reloader>, Arc<crate::phases::PurgeLog>)>,
}

/// A validated reload, ready to publish.
struct Prepared {
    config: Config,
    /// The config it replaces.
    old: Arc<Config>,
    summary: String,
    /// Sockets bound for added listen addresses, one list per worker.
    listeners: Vec<Vec<(SocketAddr, std::net::TcpListener)>>,
    /// The listen addresses as configured and as bound, after the reload.
    bound: Vec<(SocketAddr, SocketAddr)>,
}

/// Whether a reload may carry `prev`'s shared state (discovered targets,
/// health, breaker) and pools over to `next`: the same name, the same
/// `[upstreams.NAME]` table as written, and its static targets resolved to
/// the same addresses (a host name may resolve differently now).
fn same_upstream(
    prev: &crate::config::UpstreamConfig,
    next: &crate::config::UpstreamConfig,
) -> bool {
    prev.name == next.name && prev.section == next.section && prev.targets == next.targets
}

impl Reloader {
    /// A reloader for the file at `path`, for a server running `workers`
    /// worker threads whose admin listener (if any) is in `admin`.
    pub fn new(
        path: PathBuf,
        store: Arc<ConfigStore>,
        metrics: Arc<Metrics>,
        workers: usize,
        admin: AdminSlot,
    ) -> Self {
        Reloader {
            path,
            store,
            metrics,
            workers,
            lock: Mutex::new(()),
            admin,
            admin_ctx: std::sync::OnceLock::new(),
        }
    }

    /// What a reload needs to start an admin listener: this reloader
    /// (held weakly by the listener's `POST /reload`) and the purge log.
    pub(crate) fn set_admin_context(self: &Arc<Self>, cache_purge: Arc<crate::phases::PurgeLog>) {
        let _ = self.admin_ctx.set((Arc::downgrade(self), cache_purge));
    }

    /// The admin endpoints' state for a listener started by a reload.
    fn admin_state(&self) -> crate::admin::AdminState {
        let (me, purge) = self
            .admin_ctx
            .get()
            .cloned()
            .map_or((None, None), |(me, p)| (Some(me), Some(p)));
        let mut st = crate::admin::AdminState::new(
            self.store.clone(),
            self.metrics.clone(),
            me.map(reload_fn),
        );
        st.cache_purge = purge;
        st
    }

    /// Binds what the reload changes in `[admin]`: a new address, or a
    /// listener for a section that was not there.
    fn bind_admin(&self, p: &Prepared) -> Result<AdminChange, Vec<String>> {
        let fail = |e: std::io::Error| {
            let at = p.config.admin.as_ref().map(|a| a.listen.to_string());
            vec![format!(
                "admin.listen: cannot listen on {}: {e} (fix: free the address or choose another)",
                at.unwrap_or_default()
            )]
        };
        let current = self.admin.get();
        Ok(match (&p.old.admin, &p.config.admin) {
            (Some(o), Some(n)) if o.listen != n.listen => match current {
                Some(a) => AdminChange::Move(a.bind(n.listen).map_err(fail)?),
                None => AdminChange::None,
            },
            (None, Some(n)) => AdminChange::Start(
                crate::admin::Admin::start(n.listen, Arc::new(self.admin_state())).map_err(fail)?,
            ),
            (Some(_), None) => AdminChange::Stop,
            _ => AdminChange::None,
        })
    }

    /// Reads, validates and publishes the file. On error nothing changes and
    /// every problem is returned (and logged and counted).
    pub fn reload(&self) -> Result<String, Vec<String>> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let t = Instant::now();
        let r = self.prepare().and_then(|p| {
            let admin = self.bind_admin(&p)?;
            Ok((p, admin))
        });
        match r {
            Ok((
                Prepared {
                    config,
                    old,
                    mut summary,
                    listeners,
                    bound,
                },
                admin,
            )) => {
                crate::upstream::start_control(&config);
                if let Some(a) = &config.auth {
                    a.start_control();
                }
                // The new limits' reconciler and links exist before any
                // worker can switch to them.
                crate::phases::hand_over(&old, &config, self.workers);
                // Workers find their new listeners when they see the new
                // generation, so the sockets are in place first.
                {
                    let mut mail = self
                        .store
                        .listen_mail
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    for (id, ls) in listeners.into_iter().enumerate() {
                        if let Some(m) = mail.get_mut(id) {
                            m.extend(ls);
                        }
                    }
                }
                self.store.set_bound(bound);
                self.store.publish(Arc::new(config));
                match admin {
                    AdminChange::None => {}
                    AdminChange::Move(l) => {
                        if let Some(a) = self.admin.get() {
                            a.switch(l);
                            summary.push_str(&format!(", admin on {}", a.local_addr()));
                        }
                    }
                    AdminChange::Start(a) => {
                        summary.push_str(&format!(", admin on {}", a.local_addr()));
                        self.admin.set(Some(a));
                    }
                    AdminChange::Stop => {
                        // The last reference: dropping it stops the listener.
                        self.admin.set(None);
                        summary.push_str(", admin off");
                    }
                }
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .reload_us
                    .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                tracing::info!(%summary, elapsed_us = t.elapsed().as_micros() as u64, "config reloaded");
                self.metrics.note_reload(Ok(&summary), t.elapsed());
                Ok(summary)
            }
            Err(errors) => {
                self.metrics.reloads_err.fetch_add(1, Ordering::Relaxed);
                for e in &errors {
                    tracing::error!(error = %e, "reload rejected; the running config is unchanged");
                }
                self.metrics.note_reload(Err(&errors), t.elapsed());
                Err(errors)
            }
        }
    }

    fn prepare(&self) -> Result<Prepared, Vec<String>> {
        let old = self.store.load();
        // The file, and with `[config] source = "etcd"` the latest copy of
        // the etcd prefix (config::source).
        let mut new = crate::config::source::reload_load(&self.path, &old)
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        let mut errors = Vec::new();
        let (o, n) = (&old.server, &new.server);
        for (key, same) in [
            ("server.workers", o.workers == n.workers),
            ("server.io", o.io == n.io),
            (
                "server.io_uring_entries",
                o.io_uring_entries == n.io_uring_entries,
            ),
            ("server.io_uring_mode", o.io_uring_mode == n.io_uring_mode),
            // TLS certificates, keys and settings reload; the addresses
            // of `[[server.tls]]` need a restart.
            (
                "server.tls (listen, redirect_from)",
                crate::tls::same_addresses(&old, &new),
            ),
            // `[admin]` may come, go or move (bound before publishing);
            // its token (from token_env or token_file, read again by the
            // reload) applies at once: every admin request reads it from
            // the current config.
        ] {
            if !same {
                errors.push(format!(
                    "{key}: cannot change while running (fix: restore the running value, or restart the binary: a new process binds the same ports with SO_REUSEPORT and the old one drains)"
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let (listeners, bound) = self.bind_added(&old, &new)?;
        // Upstreams whose settings did not change keep their shared state
        // (discovered targets, health, breaker) and, on every worker, their
        // pools.
        let mut kept = 0;
        for u in &mut new.upstreams {
            if let Some(prev) = old.upstreams.iter().find(|p| same_upstream(p, u)) {
                u.state = prev.state.clone();
                kept += 1;
            }
        }
        // Auth: unchanged `[auth]` and `[[consumers]]`, naming an unchanged
        // secret and key files, keep the running `Auth` (its keys, its JWKS
        // refresher) and so, on every worker, the validated-token cache: a
        // route change neither refetches JWKS nor turns valid tokens into
        // 401s while an identity provider is down.
        let mut auth_kept = false;
        if let (Some(o), Some(n)) = (&old.auth, &new.auth)
            && o.same_inputs(n)
            && new
                .routes
                .iter_mut()
                .all(|r| Arc::get_mut(&mut r.chain).is_some())
        {
            for r in &mut new.routes {
                if let Some(chain) = Arc::get_mut(&mut r.chain) {
                    chain.use_auth(o);
                }
            }
            new.auth = Some(o.clone());
            auth_kept = true;
        }
        // Rate limits: unchanged sections keep the running limits (every
        // count, the reconciler and lease threads); otherwise the new
        // limits take over the hasher, the clock and the state of each
        // limit whose definition did not change.
        let mut limits_kept = 0;
        if let (Some(o), Some(n)) = (&old.rate_limits, &mut new.rate_limits) {
            if o.same_sections(n) {
                *n = o.clone();
                limits_kept = o.limit_names().len();
            } else if let Some(n) = Arc::get_mut(n) {
                limits_kept = n.take_over_from(o);
            } else {
                tracing::warn!("rate limits shared before publishing; every limit starts fresh");
            }
        }
        // The access log: unchanged settings keep the running writer; new
        // ones start a writer (the file is opened here, so a path ringgate
        // cannot write rejects the reload) that workers switch to with the
        // rest of the config; the old writer ends once they have.
        let log_changed = old.log.access != new.log.access || old.log.path != new.log.path;
        new.access_log = if log_changed {
            crate::telemetry::access_log::open(&new.log).map_err(|e| vec![e])?
        } else {
            old.access_log.clone()
        };
        // Metric labels follow names across reloads.
        self.metrics.assign_slots(&mut new);
        let limits = new
            .rate_limits
            .as_ref()
            .map_or(0, |l| l.limit_names().len());
        let mut summary = format!(
            "{} routes, {} upstreams ({} kept with their pools), {} rate limits ({} kept with their counts)",
            new.routes.len(),
            new.upstreams.len(),
            kept,
            limits,
            limits_kept
        );
        if auth_kept {
            summary.push_str(", auth kept with its keys and token caches");
        } else if new.auth.is_some() {
            summary.push_str(", auth started afresh");
        }
        if log_changed {
            match new.log.access {
                Some(f) => summary.push_str(&format!(
                    ", access log {} to {}",
                    format!("{f:?}").to_lowercase(),
                    new.log.path
                )),
                None => summary.push_str(", access log off"),
            }
        }
        if new.server.listen != old.server.listen {
            summary.push_str(&format!(
                ", listening on {}",
                bound
                    .iter()
                    .map(|(_, b)| b.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(Prepared {
            config: new,
            old,
            summary,
            listeners,
            bound,
        })
    }

    /// Binds every listen address `new` adds to `old`, once per worker, and
    /// returns the sockets (one list per worker) with the listen addresses
    /// as configured and bound after the reload.
    #[allow(clippy::type_complexity)]
    fn bind_added(
        &self,
        old: &Config,
        new: &Config,
    ) -> Result<
        (
            Vec<Vec<(SocketAddr, std::net::TcpListener)>>,
            Vec<(SocketAddr, SocketAddr)>,
        ),
        Vec<String>,
    > {
        let running = self.store.bound();
        let mut per_worker: Vec<Vec<(SocketAddr, std::net::TcpListener)>> =
            (0..self.workers).map(|_| Vec::new()).collect();
        let mut bound = Vec::new();
        for &a in &new.server.listen {
            if let Some(&(_, b)) = running.iter().find(|(c, _)| *c == a)
                && old.server.listen.contains(&a)
            {
                bound.push((a, b));
                continue;
            }
            let named = |e: std::io::Error| {
                vec![format!(
                    "server.listen: cannot listen on {a}: {e} (fix: free the address or choose another)"
                )]
            };
            // A port of 0 is resolved by the first bind and shared by the
            // other workers' sockets.
            let mut at = a;
            for ls in per_worker.iter_mut() {
                let l = super::server::bind(at, new.server.backlog).map_err(named)?;
                at = l.local_addr().map_err(named)?;
                ls.push((a, l));
            }
            bound.push((a, at));
        }
        Ok((per_worker, bound))
    }

    /// Watches the file's modification time and reloads on change.
    pub fn watch(self: Arc<Self>) {
        let _ = std::thread::Builder::new()
            .name(String::from("ringgate-watch"))
            .spawn(move || {
                let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
                let mut last = mtime(&self.path);
                // TLS certificate, key and CA files are watched too.
                let files = |s: &Self| crate::tls::watched_files(&s.store.load());
                let stamps = |f: &[PathBuf]| f.iter().map(mtime).collect::<Vec<_>>();
                let mut last_tls = stamps(&files(&self));
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    let now = mtime(&self.path);
                    let now_tls = stamps(&files(&self));
                    if (now.is_some() && now != last) || now_tls != last_tls {
                        last = now;
                        // Let an editor finish writing.
                        std::thread::sleep(Duration::from_millis(100));
                        let _ = self.reload();
                        last_tls = stamps(&files(&self));
                    }
                }
            });
    }
}
