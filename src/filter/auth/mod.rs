//! Authentication and authorization at the gateway (JWT, API keys, token
//! endpoint, user context headers).

use super::{Reply, RequestCtx, Verdict};
use crate::config::Errors;
use crate::config::file::{FileConfig, RouteFile};
use serde::Deserialize;
use std::sync::Arc;

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {}

/// `[[consumers]]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerFile {}

/// Compiled auth configuration, shared by every worker.
#[derive(Debug)]
pub struct Auth {}

impl Auth {
    /// Starts control-plane work (JWKS refresh); called once by the server.
    pub fn start_control(self: &Arc<Self>) {}

    /// The token endpoint's path, when enabled.
    pub fn token_path(&self) -> Option<&str> {
        None
    }

    /// Answers a token request (`POST` to the token endpoint) with `body`.
    pub fn token_endpoint(&self, _ctx: &RequestCtx<'_>, _body: &[u8]) -> Reply {
        Reply::error(404, "token endpoint disabled", b"-")
    }
}

/// Compiles `[auth]` and `[[consumers]]`.
pub fn compile(_file: &FileConfig, _errs: &mut Errors) -> Option<Arc<Auth>> {
    None
}

/// Compiles a route's `auth`, `roles` and `scopes` keys.
pub fn route_policy(
    _auth: Option<&Arc<Auth>>,
    _route: &RouteFile,
    _index: usize,
    _errs: &mut Errors,
) -> Option<RoutePolicy> {
    None
}

/// Worker-local auth state (validated-token cache).
#[derive(Debug, Default)]
pub struct WorkerState {}

impl WorkerState {
    /// State for one worker.
    pub fn new(_auth: Option<&Arc<Auth>>) -> Self {
        WorkerState {}
    }
}

/// A route's auth policy.
#[derive(Debug)]
pub struct RoutePolicy {}

/// The auth request filter.
pub fn request_filter(_p: &RoutePolicy, _ctx: &mut RequestCtx<'_>) -> Verdict {
    Verdict::Continue
}
