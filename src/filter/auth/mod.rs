//! Authentication and authorization at the gateway: JWT validation, API
//! keys, a token endpoint, and the user context sent to backends.
//!
//! Key components:
//! - [`Auth`]: the compiled `[auth]` and `[[consumers]]`, shared read-only
//!   by every worker (JWT rules, the key store, consumers, token endpoint).
//! - [`request_filter`] with a route's [`RoutePolicy`]: find credentials
//!   (`extract`), authenticate with the first of the route's `auth` methods
//!   the request carries, check `roles` and `scopes`, then add `X-User-Id`,
//!   `X-User-Roles`, `X-Consumer-Id`, `X-Consumer-Tier`, `X-Auth-Method`
//!   for the backend and set [`RequestCtx::identity`]. No or bad
//!   credentials → 401 with `WWW-Authenticate`; valid but not allowed → 403.
//!   (Client-sent copies of those headers are dropped by the parser on
//!   every route.)
//! - [`hide_credentials`]: on a route with `hide_credentials = true`, the
//!   credential that authenticated the request is removed from what the
//!   backend receives (`hide`).
//! - `jwt` (header, key choice, signature, claims), `keys` (secret, PEM,
//!   JWKS keys; the algorithm sets that prevent confusion), `jwks` (the key
//!   store and its control-plane refresher), `consumers` (SHA-256 digests,
//!   constant-time compare), `token_endpoint`, `config` (keys and errors).
//! - [`WorkerState`]: per-worker cache of validated tokens and the
//!   consumers' prepared identities.
//!
//! Performance notes: a repeated token costs a hash of its bytes, a map
//! probe, a memcmp and the copy of a prepared header block — no signature
//! check, no JSON, no allocation (see `benches/auth.rs`). Workers read keys
//! through an `ArcSwap` and never fetch; the JWKS refresher is a thread.

mod cache;
mod config;
mod consumers;
mod extract;
mod hide;
pub(crate) mod jwks;
mod jwt;
mod keys;
mod mtls;
mod token_endpoint;

pub use config::{
    ApiKeyFile, AuthFile, ConsumerFile, JwtFile, TokenEndpointFile, compile, route_policy,
};
pub use consumers::{Consumer, Consumers, sha256};
pub use hide::{CredentialSources, hide_credentials};
pub use jwks::KeyStore;
pub use jwt::{JwtError, MAX_TOKEN_BYTES, Verified};
pub use keys::KeySet;

use super::{AuthMethod, Identity, Reply, RequestCtx, Verdict};
use crate::telemetry::metrics::{AuthDecision, TokenResult};
use cache::TokenCache;
use jwt::JwtRules;
use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Seconds since the Unix epoch.
#[inline]
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where tokens are read from besides `Authorization: Bearer`.
#[derive(Debug)]
pub(crate) struct TokenSources {
    /// Lower-case header name.
    pub header: Option<Vec<u8>>,
    pub query: Option<Vec<u8>>,
    pub cookie: Option<Vec<u8>>,
}

/// `[auth.api_key]`, compiled.
#[derive(Debug)]
pub(crate) struct ApiKeyConfig {
    /// Lower-case header name.
    pub header: Vec<u8>,
    pub query: Option<Vec<u8>>,
}

/// `[auth.jwt]`, compiled.
#[derive(Debug)]
pub(crate) struct JwtAuth {
    pub rules: JwtRules,
    pub sources: TokenSources,
    pub store: Arc<KeyStore>,
    pub jwks: Option<jwks::JwksSource>,
    pub cache_entries: usize,
}

/// Compiled auth configuration, shared by every worker.
#[derive(Debug)]
pub struct Auth {
    pub(crate) jwt: Option<JwtAuth>,
    /// `[auth.jwt]` was written (even if it had errors).
    pub(crate) jwt_declared: bool,
    pub(crate) api_key: ApiKeyConfig,
    pub(crate) consumers: Consumers,
    pub(crate) endpoint: Option<token_endpoint::TokenEndpoint>,
    pub(crate) started: AtomicBool,
    /// `[auth]` and `[[consumers]]` as written, compiled into the above.
    sections: (Option<AuthFile>, Vec<ConsumerFile>),
    /// Digest of the secret and key files those sections name, as read.
    outside: [u8; 32],
}

impl Auth {
    /// Starts control-plane work (JWKS refresh); called once by the server.
    /// With a `jwks_url` this starts the refresher thread and waits (at most
    /// a few seconds) for its first fetch.
    pub fn start_control(self: &Arc<Self>) {
        if let Some(j) = &self.jwt
            && let Some(src) = &j.jwks
            && !self.started.swap(true, Ordering::AcqRel)
        {
            jwks::start(&j.store, src.clone());
        }
    }

    /// Whether `other` was compiled from the same `[auth]` and
    /// `[[consumers]]` as this, naming a secret and key files whose
    /// contents did not change either: a reload keeps the running auth
    /// (its keys, its JWKS refresher, the workers' token caches) when so.
    pub fn same_inputs(&self, other: &Auth) -> bool {
        self.sections == other.sections && self.outside == other.outside
    }

    /// The token endpoint's path, when enabled.
    pub fn token_path(&self) -> Option<&str> {
        self.endpoint.as_ref().map(|e| e.path.as_str())
    }

    /// Answers a token request (`POST` to the token endpoint) with `body`,
    /// counted in `ringgate_token_endpoint_requests_total`.
    pub fn token_endpoint(&self, ctx: &RequestCtx<'_>, body: &[u8]) -> Reply {
        match &self.endpoint {
            Some(ep) => {
                let reply = token_endpoint::answer(self, ep, ctx, body);
                if ctx.generation.config.metrics_enabled {
                    let result = TokenResult::of_status(reply.status);
                    ctx.worker.metrics.token_request(result);
                }
                reply
            }
            None => Reply::error(404, "token endpoint disabled", ctx.request_id),
        }
    }

    /// The early request phase at the token endpoint's path: `POST` with
    /// a form body gets a token or an OAuth error; any other method 405.
    pub async fn serve_token_endpoint<S>(
        &self,
        w: &crate::runtime::worker::Worker,
        snap: &crate::runtime::worker::Generation,
        client: &mut S,
        c: &mut crate::proxy::forward::Conn,
    ) -> crate::phases::Early
    where
        S: monoio::io::AsyncReadRent,
    {
        use crate::error::{Error, ErrorKind};
        use crate::phases::Early;
        let rid = c.rid;
        if c.head.method.of(&c.buf) != b"POST" {
            let reply = Reply::error(405, "use POST", rid.as_bytes()).with_header("Allow", "POST");
            return Early::Answer {
                reply,
                body_end: None,
            };
        }
        let timeout = snap.config.server.idle_timeout;
        match crate::http::conn::read_body(client, c, 64 * 1024, timeout).await {
            Ok(body) => {
                let ctx = RequestCtx::new(w, snap, usize::MAX, c, rid.as_bytes());
                let reply = self.token_endpoint(&ctx, &body);
                Early::Answer {
                    reply,
                    body_end: Some(c.body_end),
                }
            }
            Err((status, msg)) => {
                let kind = match status {
                    413 => ErrorKind::BodyTooLarge,
                    408 => ErrorKind::ClientTimeout,
                    _ => ErrorKind::BadRequest,
                };
                Early::Error(Error::new(kind, msg).closing(true))
            }
        }
    }

    /// The configured consumers.
    pub fn consumers(&self) -> &Consumers {
        &self.consumers
    }

    /// The JWT key store (None without `[auth.jwt]`).
    pub fn key_store(&self) -> Option<&Arc<KeyStore>> {
        self.jwt.as_ref().map(|j| &j.store)
    }

    /// Validates a JWT now, uncached: signature, algorithm, `exp`, `nbf`,
    /// `iss`, `aud`, required claims.
    pub fn verify_jwt(&self, token: &[u8]) -> Result<Verified, JwtError> {
        self.verify_jwt_at(token, unix_now())
    }

    /// [`Auth::verify_jwt`] at Unix time `now` (seconds).
    pub fn verify_jwt_at(&self, token: &[u8], now: u64) -> Result<Verified, JwtError> {
        let Some(j) = &self.jwt else {
            return Err(JwtError::AlgorithmNotAllowed);
        };
        let keys = j.store.load();
        let mut scratch = Vec::new();
        match jwt::check_signature(j.rules.algs, &keys, token, &mut scratch) {
            Ok(payload) => jwt::check_claims(&j.rules, &self.consumers, &payload, now),
            Err((e, unknown_kid)) => {
                if unknown_kid {
                    j.store.kick();
                }
                Err(e)
            }
        }
    }

    /// Signs a token for consumer `id` as the token endpoint would (None
    /// when the endpoint is off or the consumer unknown).
    pub fn issue_token(&self, id: &str) -> Option<String> {
        let ep = self.endpoint.as_ref()?;
        let c = self.consumers.by_id(id)?;
        token_endpoint::issue(self, ep, c, &c.scopes, unix_now()).ok()
    }
}

/// An authenticated caller, ready to forward: the identity and its header
/// block (`X-User-Id: ...\r\n...`).
#[derive(Debug)]
pub struct Authenticated {
    /// Who the caller is.
    pub identity: Rc<Identity>,
    /// Header lines for the upstream request.
    pub headers: Box<[u8]>,
}

impl Authenticated {
    /// Prepares the header block for `identity`.
    pub fn new(identity: Identity) -> Authenticated {
        let mut h = Vec::with_capacity(160);
        let mut line = |name: &str, value: &str| {
            if !value.is_empty() {
                h.extend_from_slice(name.as_bytes());
                h.extend_from_slice(b": ");
                h.extend_from_slice(value.as_bytes());
                h.extend_from_slice(b"\r\n");
            }
        };
        line("X-User-Id", &identity.subject);
        line("X-User-Roles", &identity.roles.join(","));
        line("X-Consumer-Id", identity.consumer.as_deref().unwrap_or(""));
        line("X-Consumer-Tier", identity.tier.as_deref().unwrap_or(""));
        line("X-Auth-Method", identity.method.as_str());
        Authenticated {
            identity: Rc::new(identity),
            headers: h.into_boxed_slice(),
        }
    }
}

/// Worker-local auth state: the validated-token cache and each consumer's
/// prepared API-key identity.
pub struct WorkerState {
    cache: RefCell<TokenCache>,
    cache_cap: usize,
    api_keys: Vec<Rc<Authenticated>>,
}

impl std::fmt::Debug for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerState")
            .field("cached_tokens", &self.cached_tokens())
            .field("cache_cap", &self.cache_cap)
            .finish_non_exhaustive()
    }
}

impl Default for WorkerState {
    fn default() -> Self {
        WorkerState::new(None)
    }
}

impl WorkerState {
    /// State for one worker.
    pub fn new(auth: Option<&Arc<Auth>>) -> Self {
        let cache_cap = auth
            .and_then(|a| a.jwt.as_ref())
            .map_or(0, |j| j.cache_entries);
        let api_keys = auth
            .map(|a| {
                a.consumers
                    .list
                    .iter()
                    .map(|c| {
                        Rc::new(Authenticated::new(Identity {
                            method: AuthMethod::ApiKey,
                            subject: c.id.clone(),
                            consumer: Some(c.id.clone()),
                            tier: c.tier.clone(),
                            roles: c.roles.clone(),
                            scopes: c.scopes.clone(),
                            api_key_id: c.api_key_sha256.map(hex::encode),
                        }))
                    })
                    .collect()
            })
            .unwrap_or_default();
        WorkerState {
            cache: RefCell::new(TokenCache::new(cache_cap)),
            cache_cap,
            api_keys,
        }
    }

    /// Tokens in this worker's cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.borrow().len()
    }

    /// Authenticates a JWT through this worker's cache: a hit costs a hash
    /// and a compare; a miss runs [`Auth::verify_jwt`] and caches the
    /// result until the token expires.
    pub fn jwt(&self, auth: &Auth, token: &[u8]) -> Result<Rc<Authenticated>, JwtError> {
        let Some(j) = &auth.jwt else {
            return Err(JwtError::AlgorithmNotAllowed);
        };
        let now = unix_now();
        if self.cache_cap > 0 {
            let mut c = self.cache.borrow_mut();
            // Read the generation before the keys (in verify): an entry is
            // never tagged newer than the keys that validated it.
            let epoch = (auth as *const Auth as usize, j.store.generation());
            if c.epoch != epoch {
                c.clear();
                c.epoch = epoch;
            }
            if let Some(hit) = c.get(token, now) {
                return Ok(hit);
            }
        }
        let v = auth.verify_jwt_at(token, now)?;
        let a = Rc::new(Authenticated::new(v.identity));
        if self.cache_cap > 0 {
            self.cache
                .borrow_mut()
                .insert(token, a.clone(), v.expires_at, now);
        }
        Ok(a)
    }

    /// Authenticates an API key.
    pub fn api_key(&self, auth: &Auth, key: &[u8]) -> Option<Rc<Authenticated>> {
        let (i, _) = auth.consumers.by_api_key(key)?;
        self.api_keys.get(i).cloned()
    }
}

/// A route's auth policy.
#[derive(Debug)]
pub struct RoutePolicy {
    auth: Arc<Auth>,
    /// Accepted methods, in the route's order (any one suffices).
    order: Vec<AuthMethod>,
    jwt: bool,
    api_key: bool,
    roles: Vec<String>,
    scopes: Vec<String>,
    /// `hide_credentials`: the credential used is not forwarded.
    hide_credentials: bool,
}

const REALM: &str = "Bearer realm=\"ringgate\"";
const KEY_REALM: &str = "ApiKey realm=\"ringgate\"";

impl RoutePolicy {
    /// Points the policy at `auth` (a reload that kept the running auth).
    pub fn use_auth(&mut self, auth: &Arc<Auth>) {
        self.auth = auth.clone();
    }

    fn new(
        auth: Arc<Auth>,
        order: Vec<AuthMethod>,
        roles: Vec<String>,
        scopes: Vec<String>,
        hide_credentials: bool,
    ) -> Self {
        RoutePolicy {
            jwt: order.contains(&AuthMethod::Jwt),
            api_key: order.contains(&AuthMethod::ApiKey),
            auth,
            order,
            roles,
            scopes,
            hide_credentials,
        }
    }

    fn missing(&self, rid: &[u8]) -> Reply {
        let r = Reply::error(401, "authentication required", rid);
        if self.jwt {
            r.with_header("WWW-Authenticate", REALM)
        } else if self.api_key {
            r.with_header("WWW-Authenticate", KEY_REALM)
        } else {
            // mTLS only: the credential is a client certificate.
            r
        }
    }

    fn invalid(&self, method: AuthMethod, description: &str, rid: &[u8]) -> Reply {
        let r = Reply::error(401, &format!("invalid credentials: {description}"), rid);
        match method {
            AuthMethod::Jwt => r.with_header(
                "WWW-Authenticate",
                &format!(
                    "Bearer realm=\"ringgate\", error=\"invalid_token\", error_description=\"{description}\""
                ),
            ),
            AuthMethod::ApiKey => r.with_header("WWW-Authenticate", KEY_REALM),
            AuthMethod::Mtls => r,
        }
    }

    /// 403 when the identity lacks a required role or scope.
    fn forbidden(&self, id: &Identity, rid: &[u8]) -> Option<Reply> {
        if self.roles.iter().any(|r| !id.roles.contains(r)) {
            return Some(Reply::error(
                403,
                "the caller lacks a role this route requires",
                rid,
            ));
        }
        if self.scopes.iter().any(|s| !id.scopes.contains(s)) {
            let r = Reply::error(403, "the caller lacks a scope this route requires", rid);
            return Some(if id.method == AuthMethod::Jwt {
                r.with_header(
                    "WWW-Authenticate",
                    &format!(
                        "Bearer realm=\"ringgate\", error=\"insufficient_scope\", scope=\"{}\"",
                        self.scopes.join(" ")
                    ),
                )
            } else {
                r
            });
        }
        None
    }
}

/// The result of checking one credential: the caller, or why not.
type Attempt = Result<Rc<Authenticated>, Cow<'static, str>>;

/// Counts the filter's decision in the worker's metric shard
/// (`ringgate_auth_decisions_total`), under the route's metric slot of the
/// request's config generation.
fn count(ctx: &RequestCtx<'_>, method: Option<AuthMethod>, decision: AuthDecision) {
    let cfg = &ctx.generation.config;
    if cfg.metrics_enabled
        && let Some(&slot) = cfg.route_slots.get(ctx.route)
    {
        ctx.worker.metrics.auth_decision(slot, method, decision);
    }
}

/// The auth request filter: authenticate, authorize, and pass the caller's
/// identity on (see the module docs).
pub fn request_filter(p: &RoutePolicy, ctx: &mut RequestCtx<'_>) -> Verdict {
    let auth = &*p.auth;
    let rid = ctx.request_id;
    let found = match extract::credentials(auth, ctx, p.jwt, p.api_key) {
        Ok(f) => f,
        Err(msg) => {
            let m = if msg == extract::TWO_KEYS {
                AuthMethod::ApiKey
            } else {
                AuthMethod::Jwt
            };
            count(ctx, Some(m), AuthDecision::Invalid);
            return Verdict::Reply(p.invalid(m, msg, rid));
        }
    };
    let ws = &*ctx.generation.features.auth;
    let mut outcome: Option<(AuthMethod, Attempt)> = None;
    for &m in &p.order {
        match m {
            AuthMethod::Jwt => {
                if let Some(t) = &found.token {
                    outcome = Some((m, ws.jwt(auth, t).map_err(|e| e.description())));
                    break;
                }
            }
            AuthMethod::ApiKey => {
                if let Some(k) = &found.api_key {
                    outcome = Some((
                        m,
                        ws.api_key(auth, k)
                            .ok_or(Cow::Borrowed("the API key is not valid")),
                    ));
                    break;
                }
            }
            AuthMethod::Mtls => {
                if let Some(t) = mtls::present(ctx.tls) {
                    outcome = Some((m, mtls::authenticate(auth, t)));
                    break;
                }
            }
        }
    }
    let (used, a) = match outcome {
        None => {
            count(ctx, None, AuthDecision::Missing);
            return Verdict::Reply(p.missing(rid));
        }
        Some((m, Err(d))) => {
            count(ctx, Some(m), AuthDecision::Invalid);
            return Verdict::Reply(p.invalid(m, &d, rid));
        }
        Some((m, Ok(a))) => (m, a),
    };
    if let Some(r) = p.forbidden(&a.identity, rid) {
        count(ctx, Some(used), AuthDecision::Forbidden);
        return Verdict::Reply(r);
    }
    count(ctx, Some(used), AuthDecision::Allowed);
    if p.hide_credentials {
        ctx.hide_credentials = match used {
            AuthMethod::Jwt => found.token_from,
            AuthMethod::ApiKey => found.key_from,
            // Nothing in the request to hide.
            AuthMethod::Mtls => Default::default(),
        };
    }
    ctx.upstream_headers.extend_from_slice(&a.headers);
    ctx.identity = Some(a.identity.clone());
    Verdict::Continue
}
