//! Starting and stopping the workers.
//!
//! [`Server::start`] binds every `server.listen` address once per worker
//! with `SO_REUSEPORT` (so the kernel spreads connections over the workers'
//! own accept queues; a port of 0 is resolved once and then shared), starts
//! one pinned thread per worker and waits until each reports its io driver.
//! [`ServerHandle::shutdown`] raises every worker's stop signal; each stops
//! accepting, lets in-flight requests finish within `drain_timeout_ms`, and
//! exits.

use super::worker::{self, Hooks, Shutdown};
use crate::config::Config;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Entry point for serving a config.
pub struct Server;

/// A running gateway.
pub struct ServerHandle {
    /// The published config (a reload replaces it).
    pub store: Arc<super::reload::ConfigStore>,
    /// Reloads the config file, when the server was started from one.
    pub reloader: Option<Arc<super::reload::Reloader>>,
    /// The admin listener, when `[admin]` is configured.
    admin: super::reload::AdminSlot,
    /// Metric shards of every worker.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    signals: Vec<Arc<Shutdown>>,
    threads: Vec<JoinHandle<()>>,
    drivers: Vec<String>,
    /// `[[server.tls]]` addresses as bound (ports resolved).
    tls_addrs: Vec<SocketAddr>,
}

pub(crate) fn bind(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    Ok(sock.into())
}

/// Refuses a start on an address another process already listens on: a
/// second instance would silently join the running one's `SO_REUSEPORT`
/// group and take part of its traffic. Each `server.listen` and
/// `admin.listen` address with a fixed port is bound once without
/// `SO_REUSEPORT` (and closed at once), which fails while any socket
/// listens there. `ringgate run --takeover` skips this, for a
/// zero-downtime restart.
pub fn refuse_if_served(config: &Config, path: &std::path::Path) -> Result<(), String> {
    let mut addrs: Vec<(SocketAddr, &str)> = config
        .server
        .listen
        .iter()
        .map(|&a| (a, "server.listen"))
        .collect();
    if let Some(a) = &config.admin {
        addrs.push((a.listen, "admin.listen"));
    }
    for (a, key) in addrs {
        if a.port() == 0 {
            continue;
        }
        if let Err(e) = bind_alone(a)
            && e.kind() == io::ErrorKind::AddrInUse
        {
            return Err(format!(
                "{a} ({key}) is already served by another process (a running ringgate?), \
                 so this one does not start: it would silently share the port and take part \
                 of the traffic\n  fix: stop the other process or change {key}; to replace a \
                 running ringgate without downtime, start this one with \
                 `ringgate run --takeover -c {}`, wait until its /readyz answers 200, then \
                 send SIGTERM to the old one",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Binds `addr` without `SO_REUSEPORT` and closes it again.
fn bind_alone(addr: SocketAddr) -> io::Result<()> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // TIME_WAIT connections of an earlier process do not count.
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())
}

impl Server {
    /// Binds, starts the workers and returns once all of them serve.
    pub fn start(config: Config) -> io::Result<ServerHandle> {
        Self::start_with(config, Hooks::default())
    }

    /// As [`Server::start`], with hooks.
    pub fn start_with(config: Config, hooks: Hooks) -> io::Result<ServerHandle> {
        Self::start_inner(config, hooks, None)
    }

    /// Serves the config file at `path`, with hot reload (SIGHUP through
    /// [`ServerHandle::reload`], `POST /reload`, and `[config] watch`).
    pub fn start_file(
        config: Config,
        path: std::path::PathBuf,
        hooks: Hooks,
    ) -> io::Result<ServerHandle> {
        Self::start_inner(config, hooks, Some(path))
    }

    fn start_inner(
        config: Config,
        hooks: Hooks,
        path: Option<std::path::PathBuf>,
    ) -> io::Result<ServerHandle> {
        let mut config = config;
        config.access_log =
            crate::telemetry::access_log::open(&config.log).map_err(io::Error::other)?;
        let config = Arc::new(config);
        let s = &config.server;
        super::worker::set_huge_pages(s.transparent_huge_pages);
        // Resolve port 0 once so every worker shares the same port.
        let mut first: Vec<std::net::TcpListener> = Vec::new();
        let mut addrs = Vec::new();
        for &a in &s.listen {
            let l = bind(a, s.backlog).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {a} (server.listen): {e}"),
                )
            })?;
            addrs.push(l.local_addr()?);
            first.push(l);
        }
        if let Some(a) = &config.auth {
            a.start_control();
        }
        if let Some(r) = &config.rate_limits {
            r.start_control(s.workers);
        }
        // Discovery (first resolution, then its threads) and health checks.
        crate::upstream::start_control(&config);
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new(&config, s.workers));
        let store = Arc::new(super::reload::ConfigStore::new(config.clone()));
        store.set_bound(
            s.listen
                .iter()
                .copied()
                .zip(addrs.iter().copied())
                .collect(),
        );
        let features = crate::phases::SharedFeatures::default();
        let cores = Arc::new(core_affinity::get_core_ids().unwrap_or_default());
        let mut signals = Vec::new();
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut first = Some(first);
        let mut edge = crate::tls::acceptor::Binder::default();
        for id in 0..s.workers {
            let listeners = match first.take() {
                Some(l) => l,
                None => addrs
                    .iter()
                    .map(|&a| bind(a, s.backlog))
                    .collect::<io::Result<Vec<_>>>()?,
            };
            let shutdown = Arc::new(Shutdown::default());
            signals.push(shutdown.clone());
            let cfg = config.clone();
            let core = (s.pin && !cores.is_empty()).then(|| cores[id % cores.len()]);
            let ready = ready_tx.clone();
            let shared = worker::WorkerShared {
                store: store.clone(),
                features: features.clone(),
                metrics: metrics.clone().workers[id].clone(),
                cores: cores.clone(),
                edge: edge.bind(&config, s.backlog)?,
            };
            let t = std::thread::Builder::new()
                .name(format!("ringgate-w{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    worker::run(id, cfg, listeners, shutdown, hooks, ready, shared);
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        let mut drivers = Vec::new();
        let mut handle = ServerHandle {
            store: store.clone(),
            reloader: None,
            admin: Default::default(),
            metrics: metrics.clone(),
            signals,
            threads,
            drivers: Vec::new(),
            tls_addrs: edge.addrs().to_vec(),
        };
        for _ in 0..s.workers {
            match ready_rx.recv() {
                Ok(Ok(d)) => drivers.push(d),
                Ok(Err(e)) => {
                    handle.shutdown();
                    return Err(io::Error::other(e));
                }
                Err(_) => {
                    handle.shutdown();
                    return Err(io::Error::other("a worker exited during start"));
                }
            }
        }
        handle.drivers = drivers;
        if let Some(p) = path {
            let r = Arc::new(super::reload::Reloader::new(
                p,
                store.clone(),
                metrics.clone(),
                s.workers,
                handle.admin.clone(),
            ));
            r.set_admin_context(features.cache_purge.clone());
            if config.watch {
                r.clone().watch();
            }
            // `[config] source = "etcd"`: watch the prefix, reload on change.
            if let Some(e) = &config.etcd {
                e.fleet.start(&r, store.clone());
            }
            handle.reloader = Some(r);
        }
        if let Some(a) = &config.admin {
            // Weak: the reloader holds the admin listener (a reload may move
            // it), which holds this.
            let reload = handle
                .reloader
                .as_ref()
                .map(|r| super::reload::reload_fn(Arc::downgrade(r)));
            let mut state = crate::admin::AdminState::new(store.clone(), metrics.clone(), reload);
            state.cache_purge = Some(features.cache_purge.clone());
            let started = crate::admin::Admin::start(a.listen, Arc::new(state)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {} (admin.listen): {e}", a.listen),
                )
            });
            match started {
                Ok(admin) => handle.admin.set(Some(admin)),
                Err(e) => {
                    handle.shutdown();
                    return Err(e);
                }
            }
        }
        metrics.ready.store(1, std::sync::atomic::Ordering::Relaxed);
        Ok(handle)
    }
}

impl ServerHandle {
    /// Reloads the config file (SIGHUP). `Err` lists every problem; the
    /// running config is then unchanged.
    pub fn reload(&self) -> Result<String, Vec<String>> {
        match &self.reloader {
            Some(r) => r.reload(),
            None => Err(vec![String::from(
                "reload needs a config file (ringgate run -c FILE)",
            )]),
        }
    }

    /// Reopens the access-log file at its path (SIGUSR1), after log
    /// rotation moved it away. A no-op when the log is off or on stdout.
    pub fn reopen_logs(&self) {
        if let Some(l) = &self.store.load().access_log {
            l.reopen();
        }
    }

    /// The bound listen addresses (ports resolved), as of the last
    /// reload.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.store.bound().into_iter().map(|(_, b)| b).collect()
    }

    /// Where the admin listener is bound (port resolved), as of the last
    /// reload, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.get().map(|a| a.local_addr())
    }

    /// The `[[server.tls]]` `listen` and `redirect_from` addresses as
    /// bound (ports resolved), in config order.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The io driver each worker runs.
    pub fn drivers(&self) -> &[String] {
        &self.drivers
    }

    /// Stops accepting, drains in-flight requests and joins the workers.
    pub fn shutdown(&mut self) {
        self.metrics
            .ready
            .store(0, std::sync::atomic::Ordering::Relaxed);
        for s in &self.signals {
            s.trigger();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Blocks SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 on the calling
/// thread (and every thread it starts afterwards), so they can be taken
/// with [`wait_signal`]. SIGUSR2 means nothing to ringgate; blocked, a
/// stray one is logged instead of ending the process (its default action).
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask calls on a zeroed, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGTERM, SIGINT, SIGHUP, SIGUSR1 or SIGUSR2 and returns its
/// name.
pub fn wait_signal(set: &libc::sigset_t) -> &'static str {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` was built by `block_signals`; sigwait writes `sig`.
        let r = unsafe { libc::sigwait(set, &mut sig) };
        if r != 0 {
            continue;
        }
        match sig {
            libc::SIGTERM => return "SIGTERM",
            libc::SIGINT => return "SIGINT",
            libc::SIGUSR1 => return "SIGUSR1",
            libc::SIGUSR2 => return "SIGUSR2",
            _ => return "SIGHUP",
        }
    }
}
