//! The per-route response cache: per worker, bounded by bytes, least
//! recently used out first.
//!
//! Key components: [`RouteCacheFile`]/[`CacheFile`] (the route's
//! `cache = {...}` and the `[cache]` table), [`RouteCache`] and
//! [`CacheSettings`] (compiled), [`WorkerCache`] (one worker's entries,
//! in-flight fetches, refresh queue and purge position), [`serve`] (what a
//! cached route does instead of a plain forward), [`PurgeLog`] (purges from
//! the admin API to every worker).
//!
//! How it fits: the registry's exchange calls [`serve`] in place of
//! `proxy::forward` (or `compose::serve`) for a route with
//! `cache`, after the route's filters (auth, rate limits) and request
//! transform ran — so a hit is still authenticated and counted, and the
//! transform's response edits are stored with the response. A lookup key is the route's name, the host,
//! and the path and query as the client sent them, plus the request's
//! values of the headers the stored response names in `Vary` (as
//! forwarded: the client's lines the gateway does not drop, and the lines
//! it adds, so identity headers set by auth count, and client copies of
//! them do not).
//!
//! - Hit (fresh): the stored head, `X-Request-Id`, `X-Cache: HIT`, `Age`,
//!   the filters' response lines, then the stored body, in one `writev`
//!   from the shared stored entry ([`wire::write_stored`]). An entry is
//!   stored structured (status, header fields, body: `store::Stored`),
//!   with its HTTP/1 head rendered once when stored.
//! - Stale within `stale_while_revalidate`: answered like a hit with
//!   `X-Cache: STALE`, and a refresh is queued: a worker task sends a copy
//!   of the request upstream and stores the answer. One fetch per key at a
//!   time (a refresh counts as the key's fetch).
//! - Miss: `X-Cache: MISS`; the forward runs with the client side wrapped
//!   in a [`wire::Fill`], which reads the answer back as a message (head
//!   and body, through `http::answer`) as it passes through; a cacheable
//!   answer is stored. Concurrent misses for one key on a
//!   worker wait for the first one's fetch and then look up again; if it
//!   stored nothing they go to the backend themselves.
//! - Stale within `stale_if_error`: fetched as a miss, but a 500/502/503/
//!   504 answer (or a connect error or timeout) is held back and the stale
//!   copy is sent instead, with `X-Cache: STALE`.
//!
//! Not stored: anything but GET; requests with a body, an upgrade,
//! `Cache-Control: no-store`, or `Authorization` (unless
//! `allow_authorization`); responses with `no-store`, `private`,
//! `no-cache`, `Vary: *`, `Set-Cookie` (unless `allow_set_cookie`), a
//! status outside `statuses`, no freshness lifetime, or larger than
//! `[cache] max_object_bytes`. HEAD is answered from a stored GET; a HEAD
//! miss goes upstream and is not stored. A request's `no-cache` (or
//! `max-age=0`, or `Pragma: no-cache`) skips the lookup and stores the
//! fresh answer; `max-age=N` accepts only entries at most N seconds old;
//! `only-if-cached` answers 504 on a miss. `If-None-Match` matching a
//! stored `ETag` is answered 304.
//!
//! Compose routes: the merged answer is what is fetched, read back and stored
//! (the parts themselves are not cached), under the same key, with the
//! same hits, `X-Cache`, `Age`, coalescing, stale-while-revalidate (the
//! refresh runs the parts) and stale-if-error (a failed required part's
//! 502/503/504 is held back for the stale copy). Only a complete 200 is
//! stored: not an answer with `X-Gateway-Partial` (a failed optional part
//! would otherwise be served for the whole ttl; it is sent as it is, not
//! replaced by a stale copy), not an error, and not when a part answered
//! `no-store`, `private` or `no-cache`. The merged answer has no
//! `Cache-Control`, `Vary` or `ETag` of its own: it is fresh for the
//! route's `ttl_s` (required on a compose route), varies on nothing but
//! the key, and `If-None-Match` never matches it.
//!
//! Performance notes: a route without `cache` pays one `Option` check. A
//! hit allocates nothing: the key is hashed where it lies in the request
//! buffer, the entry's bytes are an `Rc` the write holds, and the
//! per-request lines go into the connection's scratch buffer. Misses copy
//! the request head (for the key and `Vary`) and the response (up to
//! `max_object_bytes`). Purges cost an atomic load per cached request.

pub mod policy;
mod purge;
pub mod store;
pub mod wire;

pub use policy::{CacheControl, NotStored, parse_http_date};
pub use purge::{PurgeLog, PurgeRule, PurgeTarget};
pub use store::Stored;

use crate::config::Errors;
use crate::config::file::RouteFile;
use crate::http::parse::HeaderLine;
use crate::proxy::forward::{Conn, Outcome};
use crate::runtime::worker::{Generation, Worker};
use crate::telemetry::metrics::WorkerMetrics;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use policy::RequestMode;
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use store::{Entry, Forwarded, KeyRef, OwnedKey, Store};

/// Default `[cache] max_bytes_per_worker`: 64 MiB.
pub const DEFAULT_MAX_BYTES_PER_WORKER: u64 = 64 << 20;
/// Default `[cache] max_object_bytes` (or `max_bytes_per_worker`, if smaller).
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 1 << 20;
/// Default `statuses`.
pub const DEFAULT_STATUSES: [u16; 6] = [200, 203, 204, 301, 404, 410];
/// Most background refreshes in flight on one worker; past it, stale
/// answers are served without queuing another (a later request will).
pub const MAX_REFRESHES: usize = 64;

/// `[cache]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    /// Bytes of responses each worker keeps (default 64 MiB).
    pub max_bytes_per_worker: Option<u64>,
    /// Largest response stored, head and body (default 1 MiB).
    pub max_object_bytes: Option<u64>,
}

/// A route's `cache = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheFile {
    /// Freshness when the response gives none (default 0: only responses
    /// with `max-age`, `s-maxage` or `Expires` are stored). On a compose
    /// route, the merged answer's freshness (required there).
    pub ttl_s: Option<u64>,
    /// Serve stale this long after expiry while one refresh runs.
    pub stale_while_revalidate_s: Option<u64>,
    /// Serve stale this long after expiry when the backend fails.
    pub stale_if_error_s: Option<u64>,
    /// Store responses to requests with `Authorization` (default false).
    pub allow_authorization: Option<bool>,
    /// Store responses with `Set-Cookie` (default false).
    pub allow_set_cookie: Option<bool>,
    /// Statuses stored (default 200, 203, 204, 301, 404, 410; not on a
    /// compose route, which stores only complete 200s).
    pub statuses: Option<Vec<u16>>,
}

/// `[cache]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Bytes of responses each worker keeps.
    pub max_bytes_per_worker: usize,
    /// Largest response stored (head and body).
    pub max_object_bytes: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes_per_worker: DEFAULT_MAX_BYTES_PER_WORKER as usize,
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES as usize,
        }
    }
}

/// A route's `cache`, compiled.
#[derive(Debug)]
pub struct RouteCache {
    /// Freshness when the response gives none.
    pub ttl: Duration,
    /// Stale-while-revalidate window (a response's own directive wins).
    pub stale_while_revalidate: Duration,
    /// Stale-if-error window (a response's own directive wins).
    pub stale_if_error: Duration,
    /// Store responses to requests with `Authorization`.
    pub allow_authorization: bool,
    /// Store responses with `Set-Cookie`.
    pub allow_set_cookie: bool,
    /// Statuses stored.
    pub statuses: Box<[u16]>,
    /// The route's name (first part of every key).
    pub route_name: Box<[u8]>,
}

/// Compiles `[cache]`.
pub fn compile_settings(f: Option<&CacheFile>, errs: &mut Errors) -> CacheSettings {
    let Some(f) = f else {
        return CacheSettings::default();
    };
    let max = f
        .max_bytes_per_worker
        .unwrap_or(DEFAULT_MAX_BYTES_PER_WORKER);
    if max == 0 {
        errs.push(
            "cache.max_bytes_per_worker",
            "must be greater than 0",
            "use a size in bytes, e.g. 67108864; remove `cache` from the routes to not cache",
        );
    }
    let object = match f.max_object_bytes {
        Some(0) => {
            errs.push(
                "cache.max_object_bytes",
                "must be greater than 0",
                "use a size in bytes, e.g. 1048576",
            );
            0
        }
        Some(o) if o > max => {
            errs.push(
                "cache.max_object_bytes",
                format!("{o} is more than cache.max_bytes_per_worker ({max})"),
                "make it at most max_bytes_per_worker",
            );
            o
        }
        Some(o) => o,
        None => DEFAULT_MAX_OBJECT_BYTES.min(max),
    };
    CacheSettings {
        max_bytes_per_worker: max as usize,
        max_object_bytes: object as usize,
    }
}

/// Compiles route `i`'s `cache`.
pub fn compile_route(
    i: usize,
    f: &RouteCacheFile,
    r: &RouteFile,
    name: &str,
    errs: &mut Errors,
) -> Option<RouteCache> {
    let key = |k: &str| format!("routes[{i}].cache.{k}");
    let before = errs.0.len();
    if r.compose.is_some() {
        // A merged answer has no Cache-Control of its own: the route's ttl
        // is its whole lifetime, and only complete 200s are stored.
        if f.ttl_s.unwrap_or(0) == 0 {
            errs.push(
                key("ttl_s"),
                "a compose answer has no Cache-Control of its own, so its freshness is ttl_s, and without it nothing would be stored",
                "set ttl_s = SECONDS (e.g. ttl_s = 30), or remove cache from the compose route",
            );
        }
        if f.statuses.is_some() {
            errs.push(
                key("statuses"),
                "a compose route stores only complete 200 answers (never a partial one or an error)",
                "remove statuses from the compose route's cache",
            );
        }
    }
    if let Some(ms) = &r.methods
        && !ms.iter().any(|m| m == "GET" || m == "HEAD")
    {
        errs.push(
            format!("routes[{i}].cache"),
            "only GET (and HEAD) responses are cached, and the route allows neither",
            "add \"GET\" to methods or remove cache",
        );
    }
    let statuses: Box<[u16]> = match &f.statuses {
        Some(s) => {
            if s.is_empty() {
                errs.push(
                    key("statuses"),
                    "the list is empty, so nothing would be stored",
                    "list statuses, e.g. [200, 404], or remove the key for the default",
                );
            }
            for &st in s {
                if !(200..=599).contains(&st) || st == 206 || st == 304 {
                    errs.push(
                        key("statuses"),
                        format!("{st} cannot be stored"),
                        "use final statuses 200-599 other than 206 and 304",
                    );
                }
            }
            s.clone().into()
        }
        None => DEFAULT_STATUSES.into(),
    };
    if errs.0.len() > before {
        return None;
    }
    Some(RouteCache {
        ttl: Duration::from_secs(f.ttl_s.unwrap_or(0)),
        stale_while_revalidate: Duration::from_secs(f.stale_while_revalidate_s.unwrap_or(0)),
        stale_if_error: Duration::from_secs(f.stale_if_error_s.unwrap_or(0)),
        allow_authorization: f.allow_authorization.unwrap_or(false),
        allow_set_cookie: f.allow_set_cookie.unwrap_or(false),
        statuses,
        route_name: name.as_bytes().into(),
    })
}

/// How a fetch for a key ended, for those waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    InFlight,
    Stored,
    NotStored,
    /// The backend failed (5xx, connect error, timeout).
    Failed,
}

/// A fetch in flight for one key on this worker.
struct Pending {
    key: OwnedKey,
    result: Cell<Fetched>,
    waiters: RefCell<Vec<Waker>>,
}

type PendingMap = Rc<RefCell<HashMap<u64, Rc<Pending>>>>;

/// The one fetch of a key: ends the waiters' wait when it finishes or is
/// dropped.
struct Leader {
    map: PendingMap,
    pending: Rc<Pending>,
    done: bool,
}

impl Leader {
    fn finish(mut self, r: Fetched) {
        self.complete(r);
    }

    fn complete(&mut self, r: Fetched) {
        self.done = true;
        let hash = self.pending.key.hash;
        {
            let mut map = self.map.borrow_mut();
            if map.get(&hash).is_some_and(|p| Rc::ptr_eq(p, &self.pending)) {
                map.remove(&hash);
            }
        }
        self.pending.result.set(r);
        for w in self.pending.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.done {
            self.complete(Fetched::NotStored);
        }
    }
}

/// Resolves when a [`Pending`] fetch finished.
struct FetchDone(Rc<Pending>);

impl Future for FetchDone {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.result.get() != Fetched::InFlight {
            return Poll::Ready(());
        }
        let mut ws = self.0.waiters.borrow_mut();
        if !ws.iter().any(|w| w.will_wake(cx.waker())) {
            ws.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A background refresh: a copy of the request, and the key's fetch.
struct RefreshJob {
    snap: Rc<Generation>,
    route: usize,
    conn: Box<Conn>,
    leader: Leader,
    _slot: RefreshSlot,
}

/// One worker's cache.
pub struct WorkerCache {
    store: RefCell<Store>,
    pending: PendingMap,
    jobs: RefCell<VecDeque<RefreshJob>>,
    jobs_waker: Cell<Option<Waker>>,
    /// Refreshes queued or running.
    refreshing: Rc<Cell<usize>>,
    purge: Arc<PurgeLog>,
    applied: Cell<u64>,
    iov: wire::IovPool,
    metrics: Arc<WorkerMetrics>,
}

impl WorkerCache {
    /// An empty cache reading purges from `purge`.
    pub fn new(purge: Arc<PurgeLog>, metrics: Arc<WorkerMetrics>) -> Self {
        WorkerCache {
            store: RefCell::new(Store::default()),
            pending: Rc::new(RefCell::new(HashMap::new())),
            jobs: RefCell::new(VecDeque::new()),
            jobs_waker: Cell::new(None),
            refreshing: Rc::new(Cell::new(0)),
            applied: Cell::new(purge.sequence()),
            purge,
            iov: wire::IovPool::default(),
            metrics,
        }
    }

    /// Bytes held (as counted against `max_bytes_per_worker`).
    pub fn bytes(&self) -> usize {
        self.store.borrow().bytes()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.store.borrow().len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.store.borrow().is_empty()
    }

    /// Applies purges published since the last call (one atomic load when
    /// there are none).
    #[inline]
    pub fn apply_purges(&self) {
        if self.purge.sequence() != self.applied.get() {
            self.apply_purges_now();
        }
    }

    #[cold]
    fn apply_purges_now(&self) {
        let mut store = self.store.borrow_mut();
        let applied = self.purge.apply_since(self.applied.get(), |r| {
            match r {
                Some(rule) => store.remove_where(|e| rule.matches(e)),
                None => store.remove_where(|_| true),
            };
        });
        self.applied.set(applied);
        self.publish_size(&store);
    }

    fn publish_size(&self, store: &Store) {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics
            .cache_bytes
            .store(store.bytes() as i64, Relaxed);
        self.metrics
            .cache_entries
            .store(store.len() as i64, Relaxed);
    }

    fn pending_for(&self, key: &KeyRef<'_>, hash: u64) -> Option<Rc<Pending>> {
        self.pending
            .borrow()
            .get(&hash)
            .filter(|p| p.key.is(key))
            .cloned()
    }

    /// Registers the fetch of `key`, unless one is in flight.
    fn lead(&self, key: OwnedKey) -> Option<Leader> {
        let mut map = self.pending.borrow_mut();
        if map.contains_key(&key.hash) {
            return None;
        }
        let pending = Rc::new(Pending {
            key,
            result: Cell::new(Fetched::InFlight),
            waiters: RefCell::new(Vec::new()),
        });
        map.insert(pending.key.hash, pending.clone());
        Some(Leader {
            map: self.pending.clone(),
            pending,
            done: false,
        })
    }

    /// Stores an answer read back by the fill for the request in `req`;
    /// true when it was stored. A response that forbids storing removes
    /// what is stored under its key.
    fn store_response(
        &self,
        settings: &CacheSettings,
        policy: &RouteCache,
        req: RequestCopy,
        answer: wire::Filled,
        drop_names: &[&[u8]],
    ) -> bool {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut store = self.store.borrow_mut();
        let stored = match policy::storable(answer, policy, drop_names, now_unix) {
            Ok(s) if s.size() <= settings.max_object_bytes => {
                let fwd = Forwarded {
                    buf: &req.head,
                    lines: &req.lines,
                    extra: &req.extra,
                };
                let entry = Entry::new(req.key.clone(), s, fwd, Instant::now());
                let evicted = store.insert(entry, settings.max_bytes_per_worker);
                self.metrics.cache_evictions.add(evicted as u64);
                true
            }
            Ok(_) => false,
            Err(why) => {
                if why == NotStored::Directive {
                    store.remove_key(&req.key);
                }
                tracing::trace!(?why, "response not stored");
                false
            }
        };
        self.publish_size(&store);
        stored
    }
}

/// Starts the worker's refresh task (it sleeps until a refresh is queued).
pub fn spawn_worker_tasks(w: &Rc<Worker>) {
    let w = w.clone();
    monoio::spawn(async move {
        loop {
            JobsQueued(&w.features.cache).await;
            if w.draining.get() {
                return;
            }
            loop {
                let job = w.features.cache.jobs.borrow_mut().pop_front();
                let Some(job) = job else { break };
                monoio::spawn(refresh(w.clone(), job));
            }
        }
    });
}

struct JobsQueued<'a>(&'a WorkerCache);

impl Future for JobsQueued<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.0.jobs.borrow().is_empty() {
            return Poll::Ready(());
        }
        self.0.jobs_waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

async fn refresh(w: Rc<Worker>, job: RefreshJob) {
    let RefreshJob {
        snap,
        route,
        mut conn,
        leader,
        _slot,
    } = job;
    let Some(policy) = snap.config.routes[route].cache.clone() else {
        return;
    };
    let mut sink = wire::Sink;
    let r = fetch_and_store(&w, &snap, route, &policy, &mut sink, &mut conn, false, 0).await;
    leader.finish(r.fetched);
}

/// Counts a refresh from queued to finished (or dropped).
struct RefreshSlot(Rc<Cell<usize>>);

impl Drop for RefreshSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// What is kept of a request to store its response under: the key, and
/// the head and added lines (for `Vary`), copied before the forward
/// consumes them.
struct RequestCopy {
    key: OwnedKey,
    head: Vec<u8>,
    lines: Vec<HeaderLine>,
    extra: Vec<u8>,
}

impl RequestCopy {
    fn of(c: &Conn, policy: &RouteCache) -> RequestCopy {
        RequestCopy {
            key: key_of(c, policy).to_key(),
            head: c.buf[..c.head.len].to_vec(),
            lines: c.lines.clone(),
            extra: c.up_extra.clone(),
        }
    }
}

/// The request target as the client sent it, in origin form.
fn client_target(c: &Conn) -> &[u8] {
    let t = c.head.target.of(&c.buf);
    if t.first() == Some(&b'/') {
        return t;
    }
    let after = t.windows(3).position(|w| w == b"://").map_or(0, |p| p + 3);
    let rest = &t[after..];
    rest.iter()
        .position(|&b| b == b'/')
        .map_or(&b"/"[..], |p| &rest[p..])
}

fn key_of<'a>(c: &'a Conn, policy: &'a RouteCache) -> KeyRef<'a> {
    KeyRef {
        route: &policy.route_name,
        host: c.head.host.map_or(&b""[..], |h| h.of(&c.buf)),
        path_query: client_target(c),
    }
}

/// Request headers a refresh does not forward: it wants the whole
/// current answer, not this client's 304 or range.
const NOT_REFRESHED: &[&[u8]] = &[
    b"if-none-match",
    b"if-modified-since",
    b"if-match",
    b"if-unmodified-since",
    b"if-range",
    b"range",
];

/// A copy of the request in `c` for a background refresh.
fn refresh_conn(w: &Worker, c: &Conn) -> Box<Conn> {
    let srv = &w.config.server;
    let mut r = Box::new(Conn::new(srv.buffer_bytes, c.peer, srv.max_headers));
    r.buf.extend_from_slice(&c.buf[..c.head.len]);
    r.head = c.head.clone();
    r.lines.extend_from_slice(&c.lines);
    for l in r.lines.iter_mut() {
        let name = l.name.of(&r.buf);
        if NOT_REFRESHED.iter().any(|n| crate::http::name_eq(name, n)) {
            l.role = crate::http::parse::HeaderRole::Drop;
        }
    }
    r.up_extra.extend_from_slice(&c.up_extra);
    r.rid = c.rid;
    r.rewrite.target.extend_from_slice(&c.rewrite.target);
    r
}

/// The route's forward (with its response JSON transform, if any), or
/// its compose parts. Also returns whether the answer may be stored, as
/// far as the fetch knows: a proxied answer came from a target (not an
/// open breaker's fallback); a compose answer is complete
/// ([`compose::Answered::cacheable`]).
async fn fetch<S>(
    w: &Worker,
    snap: &Generation,
    route: usize,
    client: &mut S,
    c: &mut Conn,
) -> (Outcome, bool)
where
    S: crate::http::ClientIo,
{
    match crate::phases::exchange_uncached(w, snap, route, client, c).await {
        Outcome::Composed { status, keep_alive } => {
            // As after a forward, the request leaves the buffer.
            c.rhead.status = status;
            c.consume_head_only();
            (Outcome::Done { keep_alive }, c.compose_cacheable)
        }
        outcome => (outcome, c.upstream_addr.is_some()),
    }
}

/// How long a miss waits for another request's fetch of its key: the
/// route's upstream response timeout, or a compose route's deadline for
/// its parts (plus a second for the merge and the write).
fn fetch_wait(snap: &Generation, route: usize) -> Duration {
    let cfg = &snap.config;
    match cfg.routes[route].compose.as_deref() {
        Some(comp) => comp.timeout + Duration::from_secs(1),
        None => cfg.upstreams[cfg.routes[route].upstream].request_timeout,
    }
}

struct FetchResult {
    outcome: Outcome,
    /// How the fetch ended for waiters.
    fetched: Fetched,
    /// A failing answer was held back (the client got nothing).
    swallowed: bool,
}

/// Forwards with the client side recorded and stores a cacheable answer.
/// `added` is how much of `c.resp_extra` the gateway added for this
/// request only (not stored; added again on hits).
#[allow(clippy::too_many_arguments)]
async fn fetch_and_store<S>(
    w: &Worker,
    snap: &Generation,
    route: usize,
    policy: &RouteCache,
    client: &mut S,
    c: &mut Conn,
    hold_errors: bool,
    added: usize,
) -> FetchResult
where
    S: crate::http::ClientIo,
{
    let settings = &snap.config.cache;
    let req = RequestCopy::of(c, policy);
    let mut fill = wire::Fill::new(
        client,
        settings.max_object_bytes,
        hold_errors,
        c.head.is_head,
    );
    let (outcome, may_store) = fetch(w, snap, route, &mut fill, c).await;
    let (filled, swallowed) = fill.finish(matches!(outcome, Outcome::Done { .. }));
    let failed = swallowed.is_some() || matches!(&outcome, Outcome::Error(e) if e.status() >= 500);
    let stored = match (&outcome, filled) {
        // No target answered (an open breaker's fallback), or a partial
        // compose answer: not stored.
        (Outcome::Done { .. }, Some(answer)) if swallowed.is_none() && may_store => {
            let drop = policy::line_names(&c.resp_extra[..added.min(c.resp_extra.len())]);
            w.features
                .cache
                .store_response(settings, policy, req, answer, &drop)
        }
        _ => false,
    };
    FetchResult {
        outcome,
        fetched: if stored {
            Fetched::Stored
        } else if failed {
            Fetched::Failed
        } else {
            Fetched::NotStored
        },
        swallowed: swallowed.is_some(),
    }
}

/// Answers from a stored response. `consume` drops the request from the
/// connection buffer (false when the forward already did).
async fn answer<S: AsyncWriteRent>(
    w: &Worker,
    client: &mut S,
    c: &mut Conn,
    resp: Rc<Stored>,
    label: &[u8],
    age: u64,
    consume: bool,
) -> Outcome {
    let keep_alive = c.head.keep_alive && !w.draining.get();
    let mut extra = std::mem::take(&mut c.scratch);
    extra.clear();
    let not_modified = resp.etag.as_deref().is_some_and(|e| if_none_match(c, e));
    if not_modified {
        extra.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\nETag: ");
        extra.extend_from_slice(resp.etag.as_deref().unwrap_or_default());
        extra.extend_from_slice(b"\r\n");
    }
    extra.extend_from_slice(b"X-Request-Id: ");
    extra.extend_from_slice(c.rid.as_bytes());
    extra.extend_from_slice(b"\r\nX-Cache: ");
    extra.extend_from_slice(label);
    extra.extend_from_slice(b"\r\nAge: ");
    extra.extend_from_slice(itoa::Buffer::new().format(age).as_bytes());
    extra.extend_from_slice(b"\r\n");
    extra.extend_from_slice(&c.resp_extra);
    if !keep_alive {
        extra.extend_from_slice(b"Connection: close\r\n");
    } else if c.head.minor == 0 {
        extra.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    extra.extend_from_slice(b"\r\n");
    c.rhead.status = if not_modified { 304 } else { resp.status() };
    let r = if not_modified {
        let (r, b) = client.write_all(extra).await;
        extra = b;
        r
    } else {
        wire::write_stored(
            client,
            resp,
            &mut extra,
            c.head.is_head,
            &w.features.cache.iov,
        )
        .await
    };
    c.scratch = extra;
    match r {
        Ok(n) => {
            c.bytes_out = n as u64;
            if consume {
                c.consume_head_only();
            }
            Outcome::Done { keep_alive }
        }
        Err(_) => Outcome::Abort,
    }
}

/// True when the request's `If-None-Match` lists `etag` (weak comparison)
/// or is `*`.
fn if_none_match(c: &Conn, etag: &[u8]) -> bool {
    fn weak(t: &[u8]) -> &[u8] {
        t.strip_prefix(b"W/").unwrap_or(t)
    }
    c.lines
        .iter()
        .filter(|l| crate::http::name_eq(l.name.of(&c.buf), b"if-none-match"))
        .flat_map(|l| crate::http::tokens(l.value.of(&c.buf)))
        .any(|t| t == b"*" || weak(t) == weak(etag))
}

/// Serves the request in `c` on a cached route: from the cache, or
/// through the route's forward (storing what may be stored). Called by
/// the connection loop instead of `proxy::forward::forward`; the result
/// means the same (on `Done` the request has left `c.buf`).
pub async fn serve<S>(
    w: &Worker,
    snap: &Rc<Generation>,
    route: usize,
    policy: &RouteCache,
    client: &mut S,
    c: &mut Conn,
) -> Outcome
where
    S: crate::http::ClientIo,
{
    let cache = &w.features.cache;
    let cfg = &snap.config;
    let slot = cfg.route_slots[route];
    cache.apply_purges();
    let (revalidate, max_age, only_if_cached, no_stale) =
        match policy::request_mode(&c.buf, &c.head, &c.lines, policy) {
            RequestMode::Use {
                revalidate,
                max_age,
                only_if_cached,
                no_stale,
            } => (revalidate, max_age, only_if_cached, no_stale),
            RequestMode::Bypass => {
                w.metrics.cache_event(slot, CacheEvent::Miss);
                c.resp_extra.extend_from_slice(b"X-Cache: MISS\r\n");
                return fetch(w, snap, route, client, c).await.0;
            }
        };
    let head_only = c.head.is_head;
    let hash = key_of(c, policy).hash();
    let mut fallback: Option<(Rc<Stored>, u64)> = None;
    let mut waited = false;
    let leader = loop {
        if !revalidate {
            let now = Instant::now();
            let found = {
                let key = key_of(c, policy);
                let fwd = Forwarded {
                    buf: &c.buf,
                    lines: &c.lines,
                    extra: &c.up_extra,
                };
                let mut store = cache.store.borrow_mut();
                store.lookup(hash, &key, fwd).map(|s| {
                    let e = store.get(s);
                    (e.resp.clone(), e.standing(now))
                })
            };
            if let Some((resp, st)) = found {
                if st.fresh && max_age.is_none_or(|m| st.age <= m) {
                    w.metrics.cache_event(slot, CacheEvent::Hit);
                    return answer(w, client, c, resp, b"HIT", st.age, true).await;
                }
                if st.revalidate && !no_stale {
                    // One fetch per key: a miss or refresh in flight will
                    // store the new answer.
                    // (A HEAD cannot refresh a GET's entry: no body.)
                    let room = cache.refreshing.get() < MAX_REFRESHES && !head_only;
                    if room && let Some(leader) = cache.lead(key_of(c, policy).to_key()) {
                        cache.refreshing.set(cache.refreshing.get() + 1);
                        cache.jobs.borrow_mut().push_back(RefreshJob {
                            snap: snap.clone(),
                            route,
                            conn: refresh_conn(w, c),
                            leader,
                            _slot: RefreshSlot(cache.refreshing.clone()),
                        });
                        if let Some(waker) = cache.jobs_waker.take() {
                            waker.wake();
                        }
                    }
                    w.metrics.cache_event(slot, CacheEvent::Stale);
                    return answer(w, client, c, resp, b"STALE", st.age, true).await;
                }
                if st.if_error && !no_stale {
                    fallback = Some((resp, st.age));
                }
            }
        }
        if only_if_cached {
            return Outcome::Error(crate::error::Error::new(
                crate::error::ErrorKind::NotInCache,
                "not in the cache (only-if-cached)",
            ));
        }
        if head_only {
            break None;
        }
        let pending = cache.pending_for(&key_of(c, policy), hash);
        match pending {
            Some(p) if !waited && !revalidate => {
                // Another request on this worker is fetching this key:
                // wait for it, then look again.
                waited = true;
                let t = fetch_wait(snap, route);
                let _ = monoio::time::timeout(t, FetchDone(p.clone())).await;
                let result = p.result.get();
                if result == Fetched::Stored {
                    continue;
                }
                if result == Fetched::Failed
                    && let Some((resp, age)) = fallback.take()
                {
                    w.metrics.cache_event(slot, CacheEvent::Stale);
                    return answer(w, client, c, resp, b"STALE", age, true).await;
                }
                break None;
            }
            Some(_) => break None,
            None => break cache.lead(key_of(c, policy).to_key()),
        }
    };

    // Miss: forward, recording the answer.
    w.metrics.cache_event(slot, CacheEvent::Miss);
    let before = c.resp_extra.len();
    c.resp_extra.extend_from_slice(b"X-Cache: MISS\r\n");
    if head_only {
        return fetch(w, snap, route, client, c).await.0;
    }
    let added = c.resp_extra.len();
    let r = fetch_and_store(
        w,
        snap,
        route,
        policy,
        &mut *client,
        c,
        fallback.is_some(),
        added,
    )
    .await;
    if let Some(l) = leader {
        l.finish(r.fetched);
    }
    if r.fetched == Fetched::Failed
        && let Some((resp, age)) = fallback
    {
        // The backend failed and nothing reached the client: the stale
        // copy answers instead.
        c.resp_extra.truncate(before);
        let consume = match r.outcome {
            Outcome::Error(e) => {
                if e.is_upstream() {
                    w.metrics
                        .upstream_error(cfg.upstream_slots[cfg.routes[route].upstream]);
                }
                true
            }
            // A swallowed answer: the forward consumed the request.
            _ => false,
        };
        if consume || r.swallowed {
            w.metrics.cache_event(slot, CacheEvent::Stale);
            return answer(w, client, c, resp, b"STALE", age, consume).await;
        }
    }
    r.outcome
}

/// What a cached route's request was, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    /// Answered fresh from the cache.
    Hit,
    /// Went to the backend.
    Miss,
    /// Answered with a stale copy.
    Stale,
}

/// `POST /cache/purge`: publishes the rule in `body` to every worker.
/// Returns the status and JSON body.
pub fn admin_purge(log: &PurgeLog, body: &[u8]) -> (u16, String) {
    match PurgeRule::from_json(body) {
        Ok(rule) => {
            let (kind, value) = match &rule.target {
                PurgeTarget::Path(p) => ("path", p.clone()),
                PurgeTarget::Prefix(p) => ("prefix", p.clone()),
            };
            let host = rule.host.clone();
            let seq = log.publish(rule);
            (
                200,
                serde_json::json!({
                    "status": "purged",
                    kind: value,
                    "host": host,
                    "sequence": seq,
                    "note": "each worker drops the matching entries before it serves its next cached request",
                })
                .to_string(),
            )
        }
        Err(e) => (
            400,
            serde_json::json!({"error": e, "status": 400}).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings() {
        let mut errs = Errors(Vec::new());
        let s = compile_settings(
            Some(&CacheFile {
                max_bytes_per_worker: Some(1000),
                max_object_bytes: None,
            }),
            &mut errs,
        );
        assert_eq!(s.max_object_bytes, 1000);
        assert!(errs.0.is_empty());
        compile_settings(
            Some(&CacheFile {
                max_bytes_per_worker: Some(1000),
                max_object_bytes: Some(2000),
            }),
            &mut errs,
        );
        assert_eq!(errs.0[0].key, "cache.max_object_bytes");
    }
}
