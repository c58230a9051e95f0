//! One worker: a thread pinned to a core, running its own monoio runtime.
//!
//! Key components: [`Worker`] (the worker-local state every connection on
//! this core shares through an `Rc`: config snapshot, upstream pools,
//! counters, request-id generator) and [`run`] (build the ring, bind the
//! listeners, accept until told to stop, then drain).
//!
//! Performance notes: nothing in `Worker` is shared with another thread
//! except the [`Shutdown`] flag, which the watchdog tick looks at.

use crate::config::{Config, IoMode, UringMode};
use crate::upstream::pool::UpstreamState;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// One config generation as a worker serves it: the config and this
/// worker's upstream state for it. A request holds the generation it
/// started with until it ends, so a reload never changes a request midway.
pub struct Generation {
    /// The config.
    pub config: Arc<Config>,
    /// Upstream pools, indexed like `config.upstreams`.
    pub upstreams: Vec<Rc<UpstreamState>>,
    /// Each feature's state on this worker for this config (see the
    /// registry, [`crate::phases::GenerationState`]).
    pub features: crate::phases::GenerationState,
    /// Generation number (see [`crate::runtime::reload::ConfigStore`]).
    pub number: u64,
}

/// How many finished connections' state a worker keeps for reuse (each
/// holds a `buffer_bytes` buffer and a few small ones).
pub const SPARE_CONNS: usize = 64;

/// How many finished HTTP/2 streams' state a worker keeps for reuse while
/// streams keep coming: a client with many streams in flight finishes and
/// begins them in waves far larger than [`SPARE_CONNS`], and each stream
/// beyond the spares would allocate its buffers anew. A second without a
/// new stream trims the spares back to [`SPARE_CONNS`].
pub const SPARE_STREAM_CONNS: usize = 1024;

/// Connections a worker must have held at once before it gives memory
/// back to the system when most of them have gone.
const RELEASE_AFTER_PEAK: usize = 256;

/// Connection states a worker must have freed (beyond its spares) since
/// it last gave memory back before it does so again: idle connections
/// give their state back, and the allocator would otherwise keep the
/// pages it was on.
const RELEASE_AFTER_FREED: usize = 64;

/// Returns the calling worker's free heap memory to the system: mimalloc
/// (the binary's global allocator) gives back the pages no block uses.
/// Without mimalloc as the allocator it finds nothing to do. Called a
/// second after a spike of connections is over, or after many connections
/// went idle and gave their state back, never on the request path.
fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any
    // thread at any time; it only acts on the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Whether the kernel may back the process's memory with transparent huge
/// pages (`server.transparent_huge_pages`), from the next page it touches.
/// mimalloc asks for them on its arenas; `PR_SET_THP_DISABLE` overrides
/// that for the whole process.
pub fn set_huge_pages(enabled: bool) {
    let disable: libc::c_ulong = if enabled { 0 } else { 1 };
    // SAFETY: prctl with integer arguments only; it changes a flag of
    // this process.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, disable, 0, 0, 0) };
    if r != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot change server.transparent_huge_pages"
        );
    }
}

/// Upstream read buffers a worker keeps between exchanges, at most.
pub const SPARE_UBUFS: usize = 256;

/// State of one worker, shared by its connections.
pub struct Worker {
    /// Worker index.
    pub id: usize,
    /// The config this worker started with (server-level settings, which a
    /// reload does not change).
    pub config: Arc<Config>,
    active: std::cell::RefCell<Rc<Generation>>,
    store: Arc<crate::runtime::reload::ConfigStore>,
    /// Requests being processed.
    pub in_flight: Cell<usize>,
    /// Open client connections.
    pub connections: Cell<usize>,
    /// The most connections open at once since memory was last given back
    /// to the system.
    pub peak_connections: Cell<usize>,
    /// Set once shutdown began: responses close their connection.
    pub draining: Cell<bool>,
    /// Connection states freed (not kept as spares) since memory was last
    /// given back to the system.
    pub freed_conns: Cell<usize>,
    /// HTTP/2 streams begun since the last sweep (while any are, up to
    /// [`SPARE_STREAM_CONNS`] spares are kept).
    pub streams_begun: Cell<u64>,
    /// Deadlines of the reads in progress, the coarse clock, and the
    /// keep-alive waits a drain ends.
    pub watchdog: crate::runtime::watchdog::Watchdog,
    /// Finished connections' state, kept for new connections (at most
    /// [`SPARE_CONNS`]): a new connection reuses its buffers instead of
    /// allocating them.
    pub spare_conns: std::cell::RefCell<Vec<Box<crate::proxy::forward::Conn>>>,
    /// Upstream read buffers between exchanges (at most [`SPARE_UBUFS`]): a
    /// connection holds one only while a request of its own is upstream,
    /// so an idle keep-alive connection costs a buffer less.
    spare_ubufs: std::cell::RefCell<Vec<Vec<u8>>>,
    /// Each feature's state on this worker across generations (the
    /// response cache).
    pub features: crate::phases::WorkerFeatures,
    /// This worker's metric shard (read by the admin thread on scrape).
    pub metrics: Arc<crate::telemetry::metrics::WorkerMetrics>,
    /// This worker's access-log buffer, when logging is on.
    pub log: std::cell::RefCell<Option<crate::telemetry::access_log::WorkerLog>>,
    ids: RequestIds,
}

impl Worker {
    /// Gives `ubuf` a buffer of at least `bytes` for an exchange, from the
    /// spares when there is one.
    #[inline]
    pub fn lend_ubuf(&self, ubuf: &mut Vec<u8>, bytes: usize) {
        if ubuf.capacity() == 0 {
            *ubuf = self
                .spare_ubufs
                .borrow_mut()
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(bytes));
        }
    }

    /// Takes back the buffer an exchange is done with; one that grew past
    /// twice `bytes` (a large response head), or one too many, is freed.
    #[inline]
    pub fn return_ubuf(&self, ubuf: &mut Vec<u8>, bytes: usize) {
        let mut b = std::mem::take(ubuf);
        let cap = b.capacity();
        if cap >= bytes && cap <= 2 * bytes {
            let mut spares = self.spare_ubufs.borrow_mut();
            if spares.len() < SPARE_UBUFS {
                b.clear();
                spares.push(b);
            }
        }
    }

    /// Worker-local state for `config`.
    pub fn new(id: usize, config: Arc<Config>, shared: &WorkerShared) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Rc::new(UpstreamState::new(u, id)))
            .collect();
        // A reload published before this worker got here must not be
        // missed: only when `config` is the published one does the worker
        // take its number; otherwise it takes a number no generation has,
        // so its first request switches to the published config.
        let (number, published) = shared.store.load_with_generation();
        let number = if Arc::ptr_eq(&published, &config) {
            number
        } else {
            u64::MAX
        };
        let snap = Rc::new(Generation {
            config: config.clone(),
            upstreams,
            features: crate::phases::GenerationState::new(&config, id),
            number,
        });
        let log = config
            .access_log
            .as_ref()
            .map(|l| crate::telemetry::access_log::WorkerLog::new(l.clone()));
        Worker {
            id,
            config,
            active: std::cell::RefCell::new(snap),
            store: shared.store.clone(),
            in_flight: Cell::new(0),
            connections: Cell::new(0),
            peak_connections: Cell::new(0),
            draining: Cell::new(false),
            freed_conns: Cell::new(0),
            streams_begun: Cell::new(0),
            watchdog: crate::runtime::watchdog::Watchdog::new(),
            spare_conns: std::cell::RefCell::new(Vec::new()),
            spare_ubufs: std::cell::RefCell::new(Vec::with_capacity(SPARE_UBUFS)),
            features: crate::phases::WorkerFeatures::new(&shared.features, shared.metrics.clone()),
            metrics: shared.metrics.clone(),
            log: std::cell::RefCell::new(log),
            ids: RequestIds::new(id),
        }
    }

    /// The generation to serve the next request with: the current one, or
    /// a freshly built one when a reload was published since.
    #[inline]
    pub fn current(&self) -> Rc<Generation> {
        let g = self.active.borrow();
        if self.store.generation() == g.number {
            return g.clone();
        }
        drop(g);
        self.switch()
    }

    /// The generation in use, without looking for a newer one.
    pub fn generation(&self) -> Rc<Generation> {
        self.active.borrow().clone()
    }

    #[cold]
    fn switch(&self) -> Rc<Generation> {
        let (number, config) = self.store.load_with_generation();
        let old = self.active.borrow().clone();
        // Upstreams whose shared state was carried over keep this worker's
        // pools and balancer state; the others start fresh.
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                old.config
                    .upstreams
                    .iter()
                    .position(|o| Arc::ptr_eq(&o.state, &u.state))
                    .map(|i| old.upstreams[i].clone())
                    .unwrap_or_else(|| Rc::new(UpstreamState::new(u, self.id)))
            })
            .collect();
        let features =
            crate::phases::GenerationState::after(&old.features, &old.config, &config, self.id);
        let snap = Rc::new(Generation {
            config,
            upstreams,
            features,
            number,
        });
        *self.active.borrow_mut() = snap.clone();
        self.follow_access_log(&snap.config);
        tracing::debug!(
            worker = self.id,
            generation = number,
            "switched to a new config"
        );
        snap
    }

    /// Moves this worker's access-log buffer to `config`'s writer when a
    /// reload changed it (the old buffer goes to the old writer first).
    fn follow_access_log(&self, config: &Config) {
        let mut log = self.log.borrow_mut();
        let same = match (&*log, &config.access_log) {
            (Some(w), Some(l)) => w.writes_to(l),
            (None, None) => true,
            _ => false,
        };
        if !same {
            let old = std::mem::replace(
                &mut *log,
                config
                    .access_log
                    .as_ref()
                    .map(|l| crate::telemetry::access_log::WorkerLog::new(l.clone())),
            );
            if let Some(old) = old {
                old.flush();
            }
        }
    }

    /// Writes a fresh 32-hex-digit request id into `out`.
    #[inline]
    pub fn next_request_id(&self, out: &mut [u8; 32]) {
        self.ids.next(out)
    }
}

struct RequestIds {
    seed: u64,
    counter: Cell<u64>,
}

impl RequestIds {
    fn new(worker: usize) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed =
            splitmix(t ^ ((std::process::id() as u64) << 32) ^ (worker as u64).rotate_left(17));
        RequestIds {
            seed,
            counter: Cell::new(0),
        }
    }

    #[inline]
    fn next(&self, out: &mut [u8; 32]) {
        let c = self.counter.get().wrapping_add(1);
        self.counter.set(c);
        let hi = splitmix(self.seed ^ c);
        let lo = self.seed.rotate_left(29) ^ c;
        hex16(hi, &mut out[..16]);
        hex16(lo, &mut out[16..]);
    }
}

/// Two hex digits per byte, from a 256-entry table.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

#[inline]
fn hex16(v: u64, out: &mut [u8]) {
    for (i, b) in v.to_be_bytes().iter().enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&HEX_PAIRS[*b as usize]);
    }
}

#[inline]
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// A stop signal one thread raises and one worker looks at on each
/// watchdog tick (no waker crosses threads, so the runtime needs no
/// cross-thread wake-up machinery on its park path).
#[derive(Default)]
pub struct Shutdown {
    flag: AtomicBool,
}

impl Shutdown {
    /// Raises the signal; the worker notices it within one tick.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// True once raised.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// Hooks for embedding and tests.
#[derive(Clone, Copy, Default)]
pub struct Hooks {
    /// Called on each worker thread after it is pinned, before serving.
    pub on_worker_start: Option<fn(usize)>,
}

/// What the server hands each worker besides its config.
#[derive(Clone)]
pub struct WorkerShared {
    /// The published config.
    pub store: Arc<crate::runtime::reload::ConfigStore>,
    /// The worker's metric shard.
    pub metrics: Arc<crate::telemetry::metrics::WorkerMetrics>,
    /// Feature state every worker shares (cache purges).
    pub features: crate::phases::SharedFeatures,
    /// The cores the process may run on (`server.pin` pins worker i to
    /// core i modulo their number).
    pub cores: Arc<Vec<core_affinity::CoreId>>,
    /// This worker's `[[server.tls]]` sockets (TLS and redirect).
    pub edge: crate::tls::acceptor::EdgeSockets,
}

/// Pins the calling worker thread to its core, or lets it run on every
/// core the process may use.
fn pin_current(id: usize, pin: bool, cores: &[core_affinity::CoreId]) {
    if cores.is_empty() {
        return;
    }
    if pin {
        core_affinity::set_for_current(cores[id % cores.len()]);
        return;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET only writes
    // inside it for ids below CPU_SETSIZE, and sched_setaffinity(0, ...)
    // reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cores {
            if c.id < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(c.id, &mut set);
            }
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// What a worker reports once it is listening.
pub type Ready = std::sync::mpsc::Sender<Result<String, String>>;

/// Runs worker `id` on the current thread until `shutdown` is raised and
/// the drain finished.
pub fn run(
    id: usize,
    config: Arc<Config>,
    listeners: Vec<std::net::TcpListener>,
    shutdown: Arc<Shutdown>,
    hooks: Hooks,
    ready: Ready,
    shared: WorkerShared,
) {
    if let Some(f) = hooks.on_worker_start {
        f(id);
    }
    let s = &config.server;
    let use_uring = match s.io {
        IoMode::Epoll => false,
        IoMode::IoUring => true,
        IoMode::Auto => monoio::utils::detect_uring(),
    };
    let entries = s.io_uring_entries;
    let fut = serve(id, config.clone(), listeners, shutdown, shared);
    if use_uring {
        let mut urb = io_uring::IoUring::builder();
        match s.io_uring_mode {
            UringMode::CoopTaskrun => {
                urb.setup_coop_taskrun();
            }
            UringMode::DeferTaskrun => {
                urb.setup_single_issuer().setup_defer_taskrun();
            }
            UringMode::Default => {}
        }
        let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(urb)
            .enable_timer()
            .build();
        match rt {
            Ok(mut rt) => {
                let _ = ready.send(Ok(format!("io_uring ({:?})", s.io_uring_mode)));
                rt.block_on(fut);
                return;
            }
            Err(e) if s.io == IoMode::IoUring => {
                let _ = ready.send(Err(format!(
                    "worker {id}: io_uring unavailable ({e}); set server.io = \"epoll\" or \"auto\""
                )));
                return;
            }
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "io_uring unavailable, falling back to epoll");
            }
        }
    } else if s.io == IoMode::Auto {
        tracing::warn!(worker = id, "io_uring not available, using epoll");
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            let _ = ready.send(Ok(String::from("epoll")));
            rt.block_on(fut);
        }
        Err(e) => {
            let _ = ready.send(Err(format!("worker {id}: cannot build runtime: {e}")));
        }
    }
}

async fn serve(
    id: usize,
    config: Arc<Config>,
    listeners: Vec<std::net::TcpListener>,
    shutdown: Arc<Shutdown>,
    shared: WorkerShared,
) {
    let worker = Rc::new(Worker::new(id, config.clone(), &shared));
    let edge = crate::tls::acceptor::start(&worker, shared.edge.take());
    let listening: Rc<RefCell<Vec<Listening>>> = Rc::new(RefCell::new(Vec::new()));
    for (&addr, l) in config.server.listen.iter().zip(listeners) {
        if let Some(l) = Listening::start(&worker, addr, l) {
            listening.borrow_mut().push(l);
        }
    }
    // The listeners and the pinning this worker has follow `config`, the
    // start config, whatever the store holds by now (a reload may have been
    // published before this task ran): the first tick brings both in line.
    let listen_generation = Cell::new(u64::MAX);
    let pinned = Cell::new(config.server.pin);
    let backlog = Cell::new(config.server.backlog);
    let huge_pages = Cell::new(config.server.transparent_huge_pages);
    let cores = shared.cores.clone();
    crate::phases::spawn_worker_tasks(&worker);
    // The watchdog: read deadlines, the coarse clock, and the shutdown
    // signal.
    let stopping = LocalStop::new();
    {
        let w = worker.clone();
        let stopping = stopping.clone();
        let shutdown = shutdown.clone();
        let listening = listening.clone();
        monoio::spawn(async move {
            let mut n = 0u32;
            loop {
                monoio::time::sleep(crate::runtime::watchdog::TICK).await;
                w.watchdog.tick();
                if shutdown.is_set() {
                    stopping.stop();
                } else if w.store.generation() != listen_generation.get() {
                    // A reload: listen on what it added, stop on what it
                    // removed (even when no request came to switch).
                    let g = w.current();
                    listen_generation.set(g.number);
                    Listening::follow(&w, &mut listening.borrow_mut(), &g.config.server.listen);
                    if g.config.server.pin != pinned.get() {
                        pinned.set(g.config.server.pin);
                        pin_current(w.id, g.config.server.pin, &cores);
                    }
                    let thp = g.config.server.transparent_huge_pages;
                    if w.id == 0 && thp != huge_pages.get() {
                        huge_pages.set(thp);
                        set_huge_pages(thp);
                    }
                    if g.config.server.backlog != backlog.get() {
                        backlog.set(g.config.server.backlog);
                        for l in listening.borrow().iter() {
                            l.set_backlog(w.id, g.config.server.backlog);
                        }
                    }
                }
                // Access-log lines reach the writer within ~200 ms.
                n = n.wrapping_add(1);
                if n % 20 == 0
                    && let Some(l) = w.log.borrow().as_ref()
                {
                    l.flush_if_older(Duration::from_millis(200));
                }
            }
        });
    }
    // Sweep idle pooled connections once a second; after a spike of
    // connections has gone, give the memory it took back to the system.
    {
        let w = worker.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(Duration::from_secs(1)).await;
                let open = w.connections.get();
                let peak = w.peak_connections.get();
                // A second without a new HTTP/2 stream: the spares kept
                // for streams' waves go (counted as freed).
                if w.streams_begun.replace(0) == 0 {
                    let mut spares = w.spare_conns.borrow_mut();
                    if spares.len() > SPARE_CONNS {
                        let extra = spares.len() - SPARE_CONNS;
                        spares.truncate(SPARE_CONNS);
                        w.freed_conns.set(w.freed_conns.get() + extra);
                    }
                }
                let freed = w.freed_conns.get();
                if (peak >= RELEASE_AFTER_PEAK && open <= peak / 4) || freed >= RELEASE_AFTER_FREED
                {
                    // The spares go too: kept, each would hold on to the
                    // allocator page it happens to sit on, among the freed
                    // ones. The next turns take new ones.
                    w.spare_conns.borrow_mut().clear();
                    release_free_memory();
                    w.peak_connections.set(open);
                    w.freed_conns.set(0);
                }
                let now = w.watchdog.now_ms();
                let snap = w.generation();
                for (i, u) in snap.upstreams.iter().enumerate() {
                    u.sweep(now);
                    if let Some(g) = w.metrics.pool_idle.get(snap.config.upstream_slots[i]) {
                        g.store(u.idle_count() as i64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        });
    }
    stopping.wait().await;
    let drain_start = Instant::now();
    worker.draining.set(true);
    // Stop accepting without losing a connection: shutdown(2) on a listener
    // hands the connections still in its queue to the other listeners of
    // the SO_REUSEPORT group (with net.ipv4.tcp_migrate_req = 1) and ends
    // the pending accept with an error, so no accepted socket is dropped by
    // cancelling an accept that had already completed. Cancelling is only
    // the fallback.
    let ending: Vec<Listening> = listening.borrow_mut().drain(..).collect();
    for l in &ending {
        l.shut();
    }
    for e in &edge {
        e.shut();
    }
    let stops: Vec<LocalStop> = ending.iter().map(|l| l.stop.clone()).collect();
    let all = async {
        for l in ending {
            l.task.await;
        }
    };
    if monoio::time::timeout(Duration::from_millis(200), all)
        .await
        .is_err()
    {
        for s in stops {
            s.stop();
        }
    }
    // Idle keep-alive connections end now; busy ones finish their request
    // (answered with `Connection: close`) within the drain timeout. A
    // connection accepted before the listeners closed gets
    // `FIRST_REQUEST_GRACE` for its first request to arrive; after that,
    // with no request in flight, nothing is left to wait for: a client that
    // connected and sent nothing (a preconnect) is not held on to until
    // `header_timeout_ms`.
    worker.watchdog.wake_idle();
    let deadline = drain_start + config.server.drain_timeout;
    while (worker.in_flight.get() > 0 || worker.connections.get() > 0) && Instant::now() < deadline
    {
        if worker.in_flight.get() == 0 && drain_start.elapsed() >= FIRST_REQUEST_GRACE {
            worker.watchdog.end_all();
        }
        monoio::time::sleep(Duration::from_millis(5)).await;
        worker.watchdog.wake_idle();
    }
    if let Some(l) = worker.log.borrow().as_ref() {
        l.flush();
    }
    tracing::debug!(
        worker = id,
        in_flight = worker.in_flight.get(),
        "worker stopped"
    );
}

/// How long a drain waits for the first request of a connection accepted
/// before the listeners closed: a client sends it right after connecting,
/// so it is in the socket within a round trip.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(50);

/// One listen address's accept loop on this worker.
struct Listening {
    /// The address as configured (port 0 stays 0).
    addr: SocketAddr,
    fd: std::os::fd::RawFd,
    stop: LocalStop,
    task: monoio::task::JoinHandle<()>,
    /// Owns the socket the accept loop uses, by duplicate; see `start`.
    _keep: std::net::TcpListener,
}

impl Listening {
    /// Starts accepting on `l`.
    fn start(w: &Rc<Worker>, addr: SocketAddr, l: std::net::TcpListener) -> Option<Listening> {
        nodelay_for_accepted(&l);
        let keep = match l.try_clone() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(worker = w.id, %addr, error = %e, "cannot register listener");
                return None;
            }
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&keep);
        let l = match monoio::net::TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(worker = w.id, %addr, error = %e, "cannot register listener");
                return None;
            }
        };
        let stop = LocalStop::new();
        let task = monoio::spawn(accept_loop(w.clone(), l, stop.clone()));
        Some(Listening {
            addr,
            fd,
            stop,
            task,
            _keep: keep,
        })
    }

    /// Stops accepting without losing a connection: shutdown(2) on a
    /// listener hands the connections still in its queue to the other
    /// listeners of the SO_REUSEPORT group (when `net.ipv4.tcp_migrate_req`
    /// is on) and ends the pending accept with an error, so no accepted
    /// socket is dropped by cancelling an accept that had already completed.
    /// Sets the socket's accept queue length: `listen(2)` again on a
    /// listening socket changes only its backlog.
    fn set_backlog(&self, worker: usize, backlog: i32) {
        // SAFETY: `fd` is `_keep`'s descriptor, open while self lives.
        if unsafe { libc::listen(self.fd, backlog) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::error!(worker, addr = %self.addr, error = %e, "cannot set the listen backlog");
        }
    }

    fn shut(&self) {
        // SAFETY: `fd` is `_keep`'s descriptor, open while self lives.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RD);
        }
    }

    /// Brings `now` in line with `listen` after a reload: starts the
    /// sockets the reload bound for this worker, and stops accepting on
    /// addresses it removed (their connections carry on).
    fn follow(w: &Rc<Worker>, now: &mut Vec<Listening>, listen: &[SocketAddr]) {
        for l in now.iter().filter(|l| !listen.contains(&l.addr)) {
            l.shut();
            l.stop.stop();
            tracing::info!(worker = w.id, addr = %l.addr, "stopped listening");
        }
        now.retain(|l| listen.contains(&l.addr));
        for (addr, l) in w.store.take_listeners(w.id) {
            // A later reload may already have removed it again, or kept a
            // listener this worker still has.
            if listen.contains(&addr) && !now.iter().any(|n| n.addr == addr) {
                let bound = l.local_addr().ok();
                if let Some(l) = Listening::start(w, addr, l) {
                    tracing::info!(worker = w.id, addr = ?bound, "listening");
                    now.push(l);
                }
            }
        }
    }
}

/// Worker-local stop flag with a waker, for the accept loops.
#[derive(Clone)]
struct LocalStop(Rc<(Cell<bool>, std::cell::RefCell<Vec<std::task::Waker>>)>);

impl LocalStop {
    fn new() -> Self {
        LocalStop(Rc::new((
            Cell::new(false),
            std::cell::RefCell::new(Vec::new()),
        )))
    }
    fn stop(&self) {
        self.0.0.set(true);
        for w in self.0.1.borrow_mut().drain(..) {
            w.wake();
        }
    }
    fn wait(&self) -> LocalStopWait {
        LocalStopWait(self.clone())
    }
}

struct LocalStopWait(LocalStop);

impl Future for LocalStopWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.0.0.get() {
            Poll::Ready(())
        } else {
            let mut ws = self.0.0.1.borrow_mut();
            if !ws.iter().any(|w| w.will_wake(cx.waker())) {
                ws.push(cx.waker().clone());
            }
            Poll::Pending
        }
    }
}

/// Sets TCP_NODELAY on a listening socket: Linux copies it to every
/// socket the listener accepts, which saves a `setsockopt` per connection
/// (a listener handed over by an older process gets it here too).
pub(crate) fn nodelay_for_accepted(l: &std::net::TcpListener) {
    if let Err(e) = socket2::SockRef::from(l).set_nodelay(true) {
        tracing::warn!(error = %e, "TCP_NODELAY on a listener failed");
    }
}

async fn accept_loop(w: Rc<Worker>, listener: monoio::net::TcpListener, stop: LocalStop) {
    let stopped = stop.wait();
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let accepted = monoio::select! {
            _ = &mut stopped => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(_) if w.draining.get() => return,
            Err(e) => {
                tracing::warn!(worker = w.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // TCP_NODELAY comes from the listener (`nodelay_for_accepted`).
        if w.connections.get() >= w.config.server.max_connections {
            let mut rid = [0u8; 32];
            w.next_request_id(&mut rid);
            monoio::spawn(crate::http::conn::refuse_overloaded(stream, rid));
            continue;
        }
        w.connections.set(w.connections.get() + 1);
        w.peak_connections
            .set(w.peak_connections.get().max(w.connections.get()));
        w.metrics.connections.add(1);
        w.metrics.open_connections.store(
            w.connections.get() as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let w2 = w.clone();
        monoio::spawn(async move {
            crate::http::conn::serve(&w2, stream, peer).await;
            w2.connections.set(w2.connections.get() - 1);
            w2.metrics.open_connections.store(
                w2.connections.get() as i64,
                std::sync::atomic::Ordering::Relaxed,
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let l = crate::runtime::server::bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        nodelay_for_accepted(&l);
        l.set_nonblocking(false).unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(a.nodelay().unwrap(), "accepted without TCP_NODELAY");
    }

    fn config(route: &str) -> Arc<Config> {
        Arc::new(
            Config::parse(&format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n\
                 [upstreams.up]\ntargets = [\"127.0.0.1:9\"]\n\n\
                 [[routes]]\nname = \"r\"\npath = \"{route}\"\nupstream = \"up\"\n"
            ))
            .expect("valid config"),
        )
    }

    #[test]
    fn a_worker_started_after_a_reload_serves_the_reloaded_config() {
        let started = config("/old");
        let store = Arc::new(crate::runtime::reload::ConfigStore::new(started.clone()));
        let reloaded = config("/new");
        store.publish(reloaded.clone());
        let shared = WorkerShared {
            store: store.clone(),
            metrics: Arc::new(crate::telemetry::metrics::WorkerMetrics::new(1, 1)),
            features: Default::default(),
            cores: Default::default(),
            edge: Default::default(),
        };
        let w = Worker::new(0, started.clone(), &shared);
        assert!(Arc::ptr_eq(&w.current().config, &reloaded));
        assert_eq!(w.current().number, store.generation());
        // Without a reload in between, the worker starts on its config.
        let store = Arc::new(crate::runtime::reload::ConfigStore::new(started.clone()));
        let shared = WorkerShared {
            store,
            edge: Default::default(),
            ..shared
        };
        let w = Worker::new(0, started.clone(), &shared);
        assert!(Arc::ptr_eq(&w.current().config, &started));
        assert_eq!(w.current().number, 0);
    }
}
