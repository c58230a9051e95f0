//! The phase interface: how the core reaches the features without
//! naming any of them. The session ([`crate::proxy::session`]) calls the
//! early request phase ([`early_request`]) and the exchange
//! ([`exchange`]); the workers and the reloader hold each feature's state
//! through [`GenerationState`], [`WorkerFeatures`] and [`SharedFeatures`],
//! start its tasks with [`spawn_worker_tasks`] and pass shared state on
//! with [`hand_over`]. The route's own chain (request filters, response
//! header and body phases) is [`crate::filter::Chain`].
//!
//! Adding a feature: its module under `src/filter/`, its state here (one
//! field and the lines that build and carry it over), its chain entry in
//! [`crate::filter::Chain::compile`]. Nothing under `http/`, `runtime/`,
//! `router/` or `upstream/` changes.

use crate::error::Error;
use crate::filter::{Reply, auth, cache, compose, cors, grpc_json, rate_limit};
use crate::proxy::forward::{Conn, Outcome};
use crate::runtime::worker::{Generation, Worker};
use std::rc::Rc;
use std::sync::Arc;

pub use crate::filter::PurgeLog;

/// The registry of features: each feature's state per worker and per
/// config generation, its worker tasks and its reload hand-over, so the
/// core (`runtime/`) holds them without knowing any feature.
///
/// Each feature's per-worker state for one config generation: rebuilt
/// when a reload changed the feature's section, carried over otherwise.
pub struct GenerationState {
    /// auth: validated-token cache, prepared consumer identities.
    pub auth: Rc<auth::WorkerState>,
    /// Rate limits: this worker's shard.
    pub rate: Rc<rate_limit::WorkerState>,
}

impl GenerationState {
    /// The state of a worker's first generation.
    pub fn new(config: &crate::config::Config, worker: usize) -> GenerationState {
        GenerationState {
            auth: Rc::new(auth::WorkerState::new(config.auth.as_ref())),
            rate: Rc::new(rate_limit::WorkerState::new(
                config.rate_limits.as_ref(),
                worker,
            )),
        }
    }

    /// The state for `config`, after `old` served `old_config`: each
    /// feature whose compiled section is the same object keeps its state.
    pub fn after(
        old: &GenerationState,
        old_config: &crate::config::Config,
        config: &crate::config::Config,
        worker: usize,
    ) -> GenerationState {
        fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        let auth = if same(&old_config.auth, &config.auth) {
            old.auth.clone()
        } else {
            Rc::new(auth::WorkerState::new(config.auth.as_ref()))
        };
        let rate = if same(&old_config.rate_limits, &config.rate_limits) {
            old.rate.clone()
        } else {
            Rc::new(rate_limit::WorkerState::after(
                &old.rate,
                config.rate_limits.as_ref(),
                worker,
            ))
        };
        GenerationState { auth, rate }
    }
}

/// Each feature's per-worker state that outlives config generations.
pub struct WorkerFeatures {
    /// This worker's response cache.
    pub cache: cache::WorkerCache,
}

impl WorkerFeatures {
    /// A worker's feature state.
    pub fn new(
        shared: &SharedFeatures,
        metrics: Arc<crate::telemetry::metrics::WorkerMetrics>,
    ) -> WorkerFeatures {
        WorkerFeatures {
            cache: cache::WorkerCache::new(shared.cache_purge.clone(), metrics),
        }
    }
}

/// Feature state shared by every worker and the admin API.
#[derive(Default, Clone)]
pub struct SharedFeatures {
    /// Cache purges from the admin API.
    pub cache_purge: Arc<cache::PurgeLog>,
}

/// Starts each feature's tasks on a worker (rate-limit shard sync, cache
/// revalidation jobs).
pub fn spawn_worker_tasks(w: &Rc<Worker>) {
    rate_limit::spawn_worker_tasks(w);
    cache::spawn_worker_tasks(w);
}

/// A reload's hand-over, before any worker switches: features whose state
/// is shared between workers (the rate limits' reconciler) pass it on.
pub fn hand_over(old: &crate::config::Config, new: &crate::config::Config, workers: usize) {
    rate_limit::hand_over(old.rate_limits.as_ref(), new.rate_limits.as_ref(), workers);
}

/// What the early request phase decided.
pub enum Early {
    /// Go on to routing.
    Continue,
    /// A feature answered before routing.
    Answer {
        /// The answer.
        reply: Reply,
        /// Where the request ends in the buffer when its body was read.
        body_end: Option<usize>,
    },
    /// The request failed before routing.
    Error(Error),
}

/// Whether the early request phase may have anything to do for the
/// request in `c` (checked before its future is made: most requests have
/// none).
#[inline]
pub fn wants_early(cfg: &crate::config::Config, c: &Conn) -> bool {
    c.head.method.of(&c.buf) == b"OPTIONS"
        || cfg.auth.as_ref().and_then(|a| a.token_path()).is_some()
}

/// The early request phase: features that answer before routing (a CORS
/// preflight, for the route it asks about; the token endpoint, at its
/// path, whatever the routes).
pub async fn early_request<S>(w: &Worker, snap: &Generation, client: &mut S, c: &mut Conn) -> Early
where
    S: crate::http::ClientIo,
{
    if c.head.method.of(&c.buf) == b"OPTIONS"
        && let Some(e) = cors::early_preflight(w, snap, c)
    {
        return e;
    }
    let cfg = &snap.config;
    let Some(a) = &cfg.auth else {
        return Early::Continue;
    };
    match a.token_path() {
        Some(tp) if c.head.path.of(&c.buf) == tp.as_bytes() => {
            a.serve_token_endpoint(w, snap, client, c).await
        }
        _ => Early::Continue,
    }
}

/// The exchange: a cached route's cache, or the route's upstream call
/// (compose, a JSON-transformed forward, or a plain forward). This is the
/// one dispatch; the cache calls [`exchange_uncached`] on a miss.
pub async fn exchange<S>(
    w: &Worker,
    snap: &Rc<Generation>,
    route: usize,
    client: &mut S,
    c: &mut Conn,
) -> Outcome
where
    S: crate::http::ClientIo,
{
    match snap.config.routes[route].cache.as_deref() {
        Some(policy) => cache::serve(w, snap, route, policy, client, c).await,
        None => exchange_uncached(w, snap, route, client, c).await,
    }
}

/// The route's upstream call without its cache. A compose answer leaves
/// the request head in the buffer ([`Outcome::Composed`]).
pub async fn exchange_uncached<S>(
    w: &Worker,
    snap: &Generation,
    route: usize,
    client: &mut S,
    c: &mut Conn,
) -> Outcome
where
    S: crate::http::ClientIo,
{
    let rc = &snap.config.routes[route];
    if let Some(t) = rc.grpc_json.as_deref() {
        return grpc_json::serve(w, snap, route, t, client, c).await;
    }
    if let Some(comp) = rc.compose.as_deref() {
        let a = compose::serve(w, snap, route, comp, client, c).await;
        c.rhead.status = a.status;
        c.compose_cacheable = a.cacheable;
        return Outcome::Composed {
            status: a.status,
            keep_alive: a.keep_alive,
        };
    }
    // A JSON rewrite and compression run inside the forward, in its
    // response phases.
    crate::proxy::forward::forward(w, snap, route, client, c).await
}
