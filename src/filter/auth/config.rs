//! `[auth]`, `[[consumers]]` and the routes' `auth`, `roles`, `scopes`,
//! `hide_credentials` keys: the file structs and their compilation. Every
//! problem is reported with its key and a fix; keys, secrets and files are
//! all loaded here, so a config that passes `ringgate check` starts with its keys in hand
//! (a `jwks_url` is only parsed here and fetched by the control thread).

use super::consumers::{Consumer, Consumers};
use super::jwks::{JwksSource, KeyStore, parse_url};
use super::jwt::{JwtRules, header_safe};
use super::keys::{
    ALL, AlgSet, Family, SigningKey, VerifyKey, alg_name, keys_from_jwks, parse_alg,
    private_key_from_pem, public_key_from_pem,
};
use super::token_endpoint::{FailureLimit, TokenEndpoint};
use super::{ApiKeyConfig, Auth, JwtAuth, RoutePolicy, TokenSources};
use crate::config::Errors;
use crate::config::file::{FileConfig, OneOrMany, RouteFile};
use crate::filter::AuthMethod;
use crate::filter::rate_limit::Cidr;
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// `[auth.jwt]`: JWT validation.
    pub jwt: Option<JwtFile>,
    /// `[auth.token_endpoint]`: tokens issued by the gateway.
    pub token_endpoint: Option<TokenEndpointFile>,
    /// `[auth.api_key]`: where API keys are read from.
    pub api_key: Option<ApiKeyFile>,
}

/// `[auth.jwt]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    /// Accepted `alg` values, e.g. `["RS256"]`. `none` is never accepted.
    pub algorithms: Option<Vec<String>>,
    /// Environment variable holding the HMAC secret (HS256/384/512).
    pub secret_env: Option<String>,
    /// PEM public key (RSA, EC or Ed25519).
    pub public_key_file: Option<String>,
    /// A JWKS document on disk.
    pub jwks_file: Option<String>,
    /// A JWKS fetched over `http://` or `https://` by a control-plane thread.
    pub jwks_url: Option<String>,
    /// Extra CA certificates (PEM) trusted for an `https://` `jwks_url`, on
    /// top of the system's trust store.
    pub jwks_ca_file: Option<String>,
    /// Seconds between JWKS fetches (default 300).
    pub jwks_refresh_s: Option<u64>,
    /// Least seconds between fetches caused by unknown `kid`s (default 10).
    pub jwks_min_refresh_s: Option<u64>,
    /// Accepted `iss` value(s); when set, `iss` is required.
    pub issuer: Option<OneOrMany>,
    /// Accepted `aud` value(s); when set, `aud` is required.
    pub audience: Option<OneOrMany>,
    /// Clock skew allowed for `exp` and `nbf`, seconds (default 30).
    pub leeway_s: Option<u64>,
    /// Claims that must be present (`exp` always is).
    pub required_claims: Option<Vec<String>>,
    /// Claim holding roles; dots walk into objects (default `roles`).
    pub roles_claim: Option<String>,
    /// Claim holding scopes (default `scope`, then `scp`).
    pub scopes_claim: Option<String>,
    /// A header carrying the bare token (besides `Authorization: Bearer`).
    pub token_header: Option<String>,
    /// A query parameter carrying the token.
    pub token_query: Option<String>,
    /// A cookie carrying the token.
    pub token_cookie: Option<String>,
    /// Validated tokens cached per worker (default 10000; 0 = no cache).
    pub cache_entries: Option<usize>,
}

/// `[auth.token_endpoint]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEndpointFile {
    /// Path answered by the gateway (default `/auth/token`).
    pub path: Option<String>,
    /// Lifetime of issued tokens, seconds (default 3600).
    pub ttl_s: Option<u64>,
    /// PEM private key (PKCS#8, or PKCS#1 RSA) for asymmetric algorithms;
    /// without it the `[auth.jwt]` secret signs (HS*).
    pub private_key_file: Option<String>,
    /// Signing algorithm (default: the first of `[auth.jwt] algorithms`
    /// the key can do).
    pub algorithm: Option<String>,
    /// `kid` put in issued tokens' headers.
    pub key_id: Option<String>,
    /// Failed client authentications per client address within
    /// `failure_window_s` after which the endpoint answers 429 without
    /// checking credentials (default 10; 0 turns the limit off).
    pub max_failures: Option<u64>,
    /// The failure window, seconds, from an address's first failure
    /// (default 60).
    pub failure_window_s: Option<u64>,
    /// Peers whose `X-Forwarded-For` names the client for the failure
    /// count (addresses or CIDR ranges; default none).
    pub trusted_proxies: Option<Vec<String>>,
}

/// `[auth.api_key]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    /// Header carrying the key (default `X-API-Key`).
    pub header: Option<String>,
    /// Query parameter carrying the key (off unless set).
    pub query: Option<String>,
}

/// `[[consumers]]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerFile {
    /// Consumer id (sent to backends as `X-Consumer-Id`).
    pub id: Option<String>,
    /// Hex SHA-256 of the consumer's API key.
    pub api_key_sha256: Option<String>,
    /// Hex SHA-256 of the consumer's client secret (client credentials).
    pub client_secret_sha256: Option<String>,
    /// Tier (for per-tier rate limits; `X-Consumer-Tier`).
    pub tier: Option<String>,
    /// Roles.
    pub roles: Option<Vec<String>>,
    /// Scopes.
    pub scopes: Option<Vec<String>>,
}

const DIGEST_FIX: &str = "store the SHA-256 of the secret as 64 hex digits, e.g. the output of: printf %s 'THE-KEY' | sha256sum";

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn digest(key: &str, v: &Option<String>, errs: &mut Errors) -> Option<[u8; 32]> {
    let v = v.as_ref()?;
    let mut out = [0u8; 32];
    match hex::decode_to_slice(v.trim(), &mut out) {
        Ok(()) => Some(out),
        Err(_) => {
            errs.push(
                key,
                format!("{v:?} is not a SHA-256 digest (64 hex digits)"),
                DIGEST_FIX,
            );
            None
        }
    }
}

fn list_values(key: &str, v: &Option<Vec<String>>, seps: &str, errs: &mut Errors) -> Vec<String> {
    let v = v.clone().unwrap_or_default();
    for x in &v {
        if x.is_empty() || !header_safe(x) || x.contains(|c| seps.contains(c)) {
            errs.push(
                key,
                format!("{x:?} is empty or holds control characters or one of {seps:?}"),
                "use plain names like \"reader\"",
            );
        }
    }
    v
}

fn compile_consumers(file: &[ConsumerFile], errs: &mut Errors) -> Consumers {
    let mut list: Vec<Consumer> = Vec::with_capacity(file.len());
    for (i, c) in file.iter().enumerate() {
        let key = |k: &str| format!("consumers[{i}].{k}");
        let id = match &c.id {
            Some(id) if !id.is_empty() && header_safe(id) => id.clone(),
            Some(id) => {
                errs.push(
                    key("id"),
                    format!("{id:?} is empty or holds control characters"),
                    "use a plain name like \"acme\"",
                );
                continue;
            }
            None => {
                errs.push(key("id"), "missing", "add id = \"NAME\"");
                continue;
            }
        };
        if let Some(j) = list.iter().position(|x| x.id == id) {
            errs.push(
                key("id"),
                format!("{id:?} is already the id of consumers[{j}]"),
                "give each consumer its own id",
            );
        }
        let api_key_sha256 = digest(&key("api_key_sha256"), &c.api_key_sha256, errs);
        if let Some(d) = api_key_sha256
            && let Some(j) = list.iter().position(|x| x.api_key_sha256 == Some(d))
        {
            errs.push(
                key("api_key_sha256"),
                format!("the same key digest is used by consumers[{j}]"),
                "give each consumer its own API key",
            );
        }
        let client_secret_sha256 =
            digest(&key("client_secret_sha256"), &c.client_secret_sha256, errs);
        let tier = match &c.tier {
            Some(t) if t.is_empty() || !header_safe(t) => {
                errs.push(
                    key("tier"),
                    format!("{t:?} is empty or holds control characters"),
                    "use a plain name like \"premium\"",
                );
                None
            }
            t => t.clone(),
        };
        list.push(Consumer {
            id,
            tier,
            roles: list_values(&key("roles"), &c.roles, ", ", errs),
            scopes: list_values(&key("scopes"), &c.scopes, " ", errs),
            api_key_sha256,
            client_secret_sha256,
        });
    }
    Consumers::new(list)
}

fn header_name(key: &str, v: &str, errs: &mut Errors) -> Vec<u8> {
    if v.is_empty() || !v.bytes().all(is_token_char) {
        errs.push(
            key,
            format!("{v:?} is not a valid header name"),
            "use letters, digits and '-', e.g. \"X-API-Key\"",
        );
    }
    v.to_ascii_lowercase().into_bytes()
}

fn param_name(key: &str, v: &str, errs: &mut Errors) -> Vec<u8> {
    if v.is_empty()
        || v.bytes()
            .any(|b| b"&=#?% ".contains(&b) || !(0x21..=0x7e).contains(&b))
    {
        errs.push(
            key,
            format!("{v:?} is not a usable name"),
            "use letters, digits, '-' and '_', e.g. \"access_token\"",
        );
    }
    v.as_bytes().to_vec()
}

fn claim_path(key: &str, v: &str, errs: &mut Errors) -> Vec<String> {
    let path: Vec<String> = v.split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        errs.push(
            key,
            format!("{v:?} is not a claim name or dotted path"),
            "write a claim name like \"roles\" or a path like \"realm_access.roles\"",
        );
    }
    path
}

fn read(key: &str, path: &str, errs: &mut Errors) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            errs.push(
                key,
                format!("cannot read {path:?}: {e}"),
                "check the path (relative paths start from ringgate's working directory) and its permissions",
            );
            None
        }
    }
}

fn alg_list() -> String {
    ALL.iter()
        .map(|&a| alg_name(a))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `[auth.jwt]` compiled to, before the token endpoint adds its key.
struct JwtParts {
    rules: JwtRules,
    sources: TokenSources,
    keys: Vec<VerifyKey>,
    secret: Option<Vec<u8>>,
    jwks: Option<JwksSource>,
    min_gap: Duration,
    cache_entries: usize,
    has_key_source: bool,
}

/// Least length of an HMAC secret, bytes (RFC 7518 §3.2 for HS256).
const MIN_SECRET: usize = 32;

fn compile_jwt(j: &JwtFile, errs: &mut Errors) -> JwtParts {
    let key = |k: &str| format!("auth.jwt.{k}");
    let mut algs = AlgSet::default();
    match &j.algorithms {
        None => errs.push(
            key("algorithms"),
            "missing",
            "list the algorithms tokens may be signed with, e.g. algorithms = [\"RS256\"]",
        ),
        Some(list) if list.is_empty() => errs.push(
            key("algorithms"),
            "the list is empty, so no token could ever pass",
            "list at least one algorithm, e.g. algorithms = [\"RS256\"]",
        ),
        Some(list) => {
            for a in list {
                match parse_alg(a) {
                    Some(x) => algs.insert(x),
                    None if a.eq_ignore_ascii_case("none") => errs.push(
                        key("algorithms"),
                        "\"none\" means unsigned tokens, which are never accepted",
                        "remove \"none\"",
                    ),
                    None => errs.push(
                        key("algorithms"),
                        format!("unknown algorithm {a:?}"),
                        format!("use one of (case matters): {}", alg_list()),
                    ),
                }
            }
        }
    }
    let hmac = algs.and(Family::Hmac.algs());
    let mut keys = Vec::new();
    let mut secret = None;
    match &j.secret_env {
        Some(var) => match std::env::var_os(var) {
            None => errs.push(
                key("secret_env"),
                format!("environment variable {var} is not set"),
                format!(
                    "export {var}=<a random secret of at least {MIN_SECRET} bytes> before starting ringgate, or remove secret_env"
                ),
            ),
            Some(v) => {
                let v = v.into_encoded_bytes();
                if v.len() < MIN_SECRET {
                    errs.push(
                        key("secret_env"),
                        format!(
                            "the secret in {var} is {} bytes; HMAC secrets this short can be guessed",
                            v.len()
                        ),
                        format!(
                            "use at least {MIN_SECRET} random bytes, e.g. export {var}=$(openssl rand -base64 48)"
                        ),
                    );
                } else if hmac.is_empty() {
                    errs.push(
                        key("secret_env"),
                        "a secret is set but algorithms lists no HS256, HS384 or HS512",
                        "add \"HS256\" to algorithms, or remove secret_env",
                    );
                } else {
                    keys.push(VerifyKey {
                        kid: None,
                        algs: hmac,
                        key: DecodingKey::from_secret(&v),
                    });
                    secret = Some(v);
                }
            }
        },
        None if !hmac.is_empty() && j.jwks_file.is_none() && j.jwks_url.is_none() => errs.push(
            key("algorithms"),
            format!(
                "lists {} but there is no secret to verify it with",
                hmac.iter().map(alg_name).collect::<Vec<_>>().join(", ")
            ),
            "set secret_env = \"VAR\" naming an environment variable that holds the secret",
        ),
        None => {}
    }
    if let Some(path) = &j.public_key_file
        && let Some(text) = read(&key("public_key_file"), path, errs)
    {
        match public_key_from_pem(&text, algs) {
            Ok(k) => keys.push(k),
            Err(e) => errs.push(
                key("public_key_file"),
                format!("{path:?}: {e}"),
                "give a PEM public key (e.g. from: openssl pkey -in private.pem -pubout) whose type matches algorithms",
            ),
        }
    }
    if j.jwks_file.is_some() && j.jwks_url.is_some() {
        errs.push(
            key("jwks_url"),
            "both jwks_file and jwks_url are set",
            "keep one of them",
        );
    }
    if let Some(path) = &j.jwks_file
        && let Some(text) = read(&key("jwks_file"), path, errs)
    {
        match keys_from_jwks(&text, algs) {
            Ok(k) => keys.extend(k),
            Err(e) => errs.push(
                key("jwks_file"),
                format!("{path:?}: {e}"),
                "give a JWKS document ({\"keys\": [...]}) with keys for the listed algorithms",
            ),
        }
    }
    let refresh = j.jwks_refresh_s.unwrap_or(300);
    if refresh == 0 {
        errs.push(
            key("jwks_refresh_s"),
            "must be greater than 0",
            "use seconds, e.g. 300",
        );
    }
    let min_gap = Duration::from_secs(j.jwks_min_refresh_s.unwrap_or(10));
    let jwks = match &j.jwks_url {
        Some(u) => match parse_url(u) {
            Ok(url) => {
                let tls = if url.tls {
                    match super::jwks::tls_config(j.jwks_ca_file.as_deref()) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            errs.push(
                                key("jwks_ca_file"),
                                e,
                                "give a readable PEM file of the CA certificates that sign the JWKS server's certificate",
                            );
                            None
                        }
                    }
                } else {
                    None
                };
                Some(JwksSource {
                    url,
                    tls,
                    refresh: Duration::from_secs(refresh.max(1)),
                    min_gap,
                    allowed: algs,
                })
            }
            Err(e) => {
                errs.push(
                    key("jwks_url"),
                    e,
                    "use an http:// or https:// URL (e.g. \"https://idp.example/.well-known/jwks.json\"), or download the JWKS and use jwks_file",
                );
                None
            }
        },
        None => None,
    };
    if j.jwks_ca_file.is_some()
        && !j
            .jwks_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    {
        errs.push(
            key("jwks_ca_file"),
            "is set without an https:// jwks_url",
            "remove jwks_ca_file, or use an https:// jwks_url",
        );
    }
    let strings = |k: &str, v: &Option<OneOrMany>, errs: &mut Errors| -> Vec<String> {
        let v = v.as_ref().map(|v| v.to_vec()).unwrap_or_default();
        if v.iter().any(String::is_empty) {
            errs.push(key(k), "holds an empty string", "remove the empty value");
        }
        v
    };
    let issuers = strings("issuer", &j.issuer, errs);
    let audiences = strings("audience", &j.audience, errs);
    let leeway = j.leeway_s.unwrap_or(30);
    if leeway > 600 {
        errs.push(
            key("leeway_s"),
            format!("{leeway} s would accept expired tokens for too long"),
            "use at most 600 (clock skew is seconds, not minutes)",
        );
    }
    let mut required = Vec::new();
    for c in j.required_claims.iter().flatten() {
        if c.is_empty() {
            errs.push(
                key("required_claims"),
                "holds an empty claim name",
                "remove the empty value",
            );
        } else if !required.contains(c) {
            required.push(c.clone());
        }
    }
    let roles_claim = claim_path(
        &key("roles_claim"),
        j.roles_claim.as_deref().unwrap_or("roles"),
        errs,
    );
    let scopes_claims = match &j.scopes_claim {
        Some(s) => vec![claim_path(&key("scopes_claim"), s, errs)],
        None => vec![vec!["scope".to_string()], vec!["scp".to_string()]],
    };
    let sources = TokenSources {
        header: j
            .token_header
            .as_deref()
            .map(|h| header_name(&key("token_header"), h, errs)),
        query: j
            .token_query
            .as_deref()
            .map(|q| param_name(&key("token_query"), q, errs)),
        cookie: j
            .token_cookie
            .as_deref()
            .map(|c| param_name(&key("token_cookie"), c, errs)),
    };
    let cache_entries = j.cache_entries.unwrap_or(10_000);
    if cache_entries > 1_000_000 {
        errs.push(
            key("cache_entries"),
            format!("{cache_entries} entries per worker is more than 1000000"),
            "use e.g. 10000 (0 turns the cache off)",
        );
    }
    let has_key_source = j.public_key_file.is_some() || j.jwks_file.is_some() || jwks.is_some();
    JwtParts {
        rules: JwtRules {
            algs,
            issuers,
            audiences,
            leeway,
            required,
            roles_claim,
            scopes_claims,
        },
        sources,
        keys,
        secret,
        jwks,
        min_gap,
        cache_entries,
        has_key_source,
    }
}

fn compile_endpoint(
    t: &TokenEndpointFile,
    jwt: Option<&mut JwtParts>,
    consumers: &Consumers,
    errs: &mut Errors,
) -> Option<TokenEndpoint> {
    let key = |k: &str| format!("auth.token_endpoint.{k}");
    let path = t.path.clone().unwrap_or_else(|| "/auth/token".into());
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == b'?' || b == b'#') {
        errs.push(
            key("path"),
            format!("{path:?} is not a plain absolute path"),
            "use a path like \"/auth/token\"",
        );
    }
    let ttl = t.ttl_s.unwrap_or(3600);
    if ttl == 0 || ttl > 30 * 86400 {
        errs.push(
            key("ttl_s"),
            format!("{ttl} is outside 1..=2592000"),
            "use seconds, e.g. 3600",
        );
    }
    let failures = compile_failure_limit(t, errs);
    if !consumers.has_client_secrets() && !consumers.has_api_keys() {
        errs.push(
            "auth.token_endpoint",
            "no [[consumers]] entry has a client_secret_sha256 or api_key_sha256, so no one could get a token",
            "add [[consumers]] with client_secret_sha256 (client credentials) or api_key_sha256",
        );
    }
    let Some(jwt) = jwt else {
        errs.push(
            "auth.token_endpoint",
            "the endpoint signs tokens that [auth.jwt] then checks, but there is no [auth.jwt]",
            "add [auth.jwt] with algorithms and secret_env (or give private_key_file here and a matching algorithm)",
        );
        return None;
    };
    let algs = jwt.rules.algs;
    let wanted = match &t.algorithm {
        Some(a) => {
            match parse_alg(a) {
                Some(x) if algs.contains(x) => Some(x),
                Some(_) => {
                    errs.push(
                    key("algorithm"),
                    format!("{a:?} is not in [auth.jwt] algorithms, so issued tokens would be refused"),
                    "add it to [auth.jwt] algorithms or pick one listed there",
                );
                    return None;
                }
                None => {
                    errs.push(
                        key("algorithm"),
                        format!("unknown algorithm {a:?}"),
                        format!("use one of (case matters): {}", alg_list()),
                    );
                    return None;
                }
            }
        }
        None => None,
    };
    let key_id = t.key_id.clone();
    if let Some(k) = &key_id
        && k.is_empty()
    {
        errs.push(key("key_id"), "is empty", "remove it or give a key id");
    }
    let signing = match &t.private_key_file {
        Some(path) => {
            let text = read(&key("private_key_file"), path, errs)?;
            let (family, possible, enc, dec) = match private_key_from_pem(&text) {
                Ok(x) => x,
                Err(e) => {
                    errs.push(
                        key("private_key_file"),
                        format!("{path:?}: {e}"),
                        "give a PKCS#8 PEM private key (openssl genpkey ...; convert with: openssl pkcs8 -topk8 -nocrypt -in old.pem)",
                    );
                    return None;
                }
            };
            let usable = algs.and(possible);
            let alg = match wanted {
                Some(a) if usable.contains(a) => a,
                Some(a) => {
                    errs.push(
                        key("algorithm"),
                        format!(
                            "{} cannot sign with the {} in private_key_file",
                            alg_name(a),
                            family.name()
                        ),
                        "pick an algorithm that matches the key",
                    );
                    return None;
                }
                None => match usable.iter().next() {
                    Some(a) => a,
                    None => {
                        errs.push(
                            key("private_key_file"),
                            format!(
                                "the file holds an {} but [auth.jwt] algorithms lists no algorithm for it",
                                family.name()
                            ),
                            "add a matching algorithm (e.g. RS256 for RSA, ES256 for P-256, EdDSA for Ed25519) to [auth.jwt] algorithms",
                        );
                        return None;
                    }
                },
            };
            // The gateway accepts what it issues: its public key joins the
            // verification keys, limited to the one algorithm it signs with.
            jwt.keys.push(VerifyKey {
                kid: key_id.clone().map(String::into_boxed_str),
                algs: AlgSet::one(alg),
                key: dec,
            });
            SigningKey {
                alg,
                key: enc,
                kid: key_id,
            }
        }
        None => {
            let hmac = algs.and(Family::Hmac.algs());
            let alg = match wanted {
                Some(a) if hmac.contains(a) => a,
                Some(a) => {
                    errs.push(
                        key("algorithm"),
                        format!("{} needs a private key", alg_name(a)),
                        "set private_key_file to a PEM private key",
                    );
                    return None;
                }
                None => match hmac.iter().next() {
                    Some(a) => a,
                    None => {
                        errs.push(
                            "auth.token_endpoint",
                            "no signing key: [auth.jwt] lists no HS algorithm and private_key_file is not set",
                            "set private_key_file to a PEM private key for one of [auth.jwt] algorithms, or use HS256 with secret_env",
                        );
                        return None;
                    }
                },
            };
            let secret = jwt.secret.as_ref()?;
            SigningKey {
                alg,
                key: EncodingKey::from_secret(secret),
                kid: key_id,
            }
        }
    };
    Some(TokenEndpoint {
        path,
        ttl,
        key: signing,
        failures,
    })
}

/// Most failures per window `max_failures` may allow.
const MAX_FAILURES: u64 = 1000;
/// Longest `failure_window_s`, seconds (one day).
const MAX_FAILURE_WINDOW: u64 = 86_400;

/// `max_failures`, `failure_window_s` and `trusted_proxies`: the
/// failed-attempt limit (None when `max_failures = 0`).
fn compile_failure_limit(t: &TokenEndpointFile, errs: &mut Errors) -> Option<FailureLimit> {
    let key = |k: &str| format!("auth.token_endpoint.{k}");
    let max = t.max_failures.unwrap_or(10);
    if max > MAX_FAILURES {
        errs.push(
            key("max_failures"),
            format!("{max} failed attempts per window is more than {MAX_FAILURES}, too many to stop guessing"),
            "use a small number, e.g. 10 (0 turns the limit off)",
        );
    }
    let window = t.failure_window_s.unwrap_or(60);
    if window == 0 || window > MAX_FAILURE_WINDOW {
        errs.push(
            key("failure_window_s"),
            format!("{window} is outside 1..={MAX_FAILURE_WINDOW}"),
            "use seconds, e.g. 60",
        );
    }
    let trusted = Cidr::parse_list(t.trusted_proxies.iter().flatten(), |msg, fix| {
        errs.push(key("trusted_proxies"), msg, fix)
    });
    if max == 0 || max > MAX_FAILURES || window == 0 || window > MAX_FAILURE_WINDOW {
        return None;
    }
    Some(FailureLimit::new(max as u16, window, trusted))
}

/// Compiles `[auth]` and `[[consumers]]`. Returns an [`Auth`] whenever
/// either is present, even when errors were recorded (the config as a whole
/// is then refused), so route checks do not repeat them.
pub fn compile(file: &FileConfig, errs: &mut Errors) -> Option<Arc<Auth>> {
    let af = file.auth.as_ref();
    // A route with auth = ["mtls"] needs no [auth] table: it gets an
    // empty one (no JWT, no keys) for its policy.
    let mtls = file.routes.iter().any(|r| {
        r.auth
            .as_ref()
            .is_some_and(|a| a.iter().any(|m| m == "mtls"))
    });
    if af.is_none() && file.consumers.is_empty() && !mtls {
        return None;
    }
    let consumers = compile_consumers(&file.consumers, errs);
    let ak = af.and_then(|a| a.api_key.as_ref());
    let api_key = ApiKeyConfig {
        header: header_name(
            "auth.api_key.header",
            ak.and_then(|a| a.header.as_deref()).unwrap_or("X-API-Key"),
            errs,
        ),
        query: ak
            .and_then(|a| a.query.as_deref())
            .map(|q| param_name("auth.api_key.query", q, errs)),
    };
    let jwt_declared = af.is_some_and(|a| a.jwt.is_some());
    let mut jwt = af
        .and_then(|a| a.jwt.as_ref())
        .map(|j| compile_jwt(j, errs));
    let endpoint = af
        .and_then(|a| a.token_endpoint.as_ref())
        .and_then(|t| compile_endpoint(t, jwt.as_mut(), &consumers, errs));
    if let Some(j) = &jwt {
        let asym: Vec<&str> = j
            .rules
            .algs
            .iter()
            .filter(|&a| Family::of(a) != Family::Hmac)
            .map(alg_name)
            .collect();
        let own_key = endpoint
            .as_ref()
            .is_some_and(|e| Family::of(e.key.alg) != Family::Hmac);
        if !asym.is_empty() && !j.has_key_source && !own_key {
            errs.push(
                "auth.jwt.algorithms",
                format!("lists {} but no public key is configured", asym.join(", ")),
                "set public_key_file, jwks_file or jwks_url (or remove those algorithms)",
            );
        }
    }
    let jwt = jwt.map(|p| JwtAuth {
        rules: p.rules,
        sources: p.sources,
        store: Arc::new(KeyStore::new(p.keys, p.min_gap)),
        jwks: p.jwks,
        cache_entries: p.cache_entries,
    });
    Some(Arc::new(Auth {
        jwt,
        jwt_declared,
        api_key,
        consumers,
        endpoint,
        started: Default::default(),
        sections: (file.auth.clone(), file.consumers.clone()),
        outside: outside_inputs(af),
    }))
}

/// SHA-256 over what `[auth]` names outside the config file, as it is
/// now: the value of `secret_env` and the contents of `public_key_file`,
/// `jwks_file`, `jwks_ca_file` and `private_key_file` (each tagged, and
/// marked absent when unset or unreadable). With the sections, it decides
/// whether a reload may keep the running auth: rotating a key file or the
/// secret and reloading applies the new key even though the config text
/// is the same.
fn outside_inputs(af: Option<&AuthFile>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut part = |tag: &str, v: Option<Vec<u8>>| {
        h.update(tag.as_bytes());
        match v {
            Some(b) => {
                h.update([1]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(&b);
            }
            None => h.update([0]),
        }
    };
    let j = af.and_then(|a| a.jwt.as_ref());
    let t = af.and_then(|a| a.token_endpoint.as_ref());
    part(
        "secret_env",
        j.and_then(|j| j.secret_env.as_ref())
            .and_then(std::env::var_os)
            .map(|v| v.into_encoded_bytes()),
    );
    for (tag, path) in [
        (
            "public_key_file",
            j.and_then(|j| j.public_key_file.as_ref()),
        ),
        ("jwks_file", j.and_then(|j| j.jwks_file.as_ref())),
        ("jwks_ca_file", j.and_then(|j| j.jwks_ca_file.as_ref())),
        (
            "private_key_file",
            t.and_then(|t| t.private_key_file.as_ref()),
        ),
    ] {
        part(tag, path.and_then(|p| std::fs::read(p).ok()));
    }
    h.finalize().into()
}

/// Compiles a route's `auth`, `roles`, `scopes` and `hide_credentials` keys.
pub fn route_policy(
    auth: Option<&Arc<Auth>>,
    route: &RouteFile,
    index: usize,
    errs: &mut Errors,
) -> Option<RoutePolicy> {
    let key = |k: &str| format!("routes[{index}].{k}");
    let before = errs.0.len();
    let roles = list_values(&key("roles"), &route.roles, ",", errs);
    let scopes = list_values(&key("scopes"), &route.scopes, " ", errs);
    let hide_credentials = route.hide_credentials.unwrap_or(false);
    let Some(methods) = &route.auth else {
        if hide_credentials {
            errs.push(
                key("hide_credentials"),
                "is true but the route has no auth key, so no credential is ever checked to hide",
                "add auth = [\"jwt\"] (or [\"api_key\"], or both) to the route, or remove hide_credentials",
            );
        }
        if route.roles.is_some() || route.scopes.is_some() {
            let k = if route.roles.is_some() {
                "roles"
            } else {
                "scopes"
            };
            errs.push(
                key(k),
                format!("{k} are required but the route has no auth key, so no caller is ever authenticated to hold them"),
                "add auth = [\"jwt\"] (or [\"api_key\"], or both) to the route, or remove the key",
            );
        }
        return None;
    };
    if methods.is_empty() {
        errs.push(
            key("auth"),
            "the list is empty",
            "list \"jwt\" and/or \"api_key\", or remove the key to make the route public",
        );
    }
    let mut order = Vec::new();
    for m in methods {
        let method = match m.as_str() {
            "jwt" => {
                if !auth.is_some_and(|a| a.jwt_declared) {
                    errs.push(
                        key("auth"),
                        "lists \"jwt\" but there is no [auth.jwt]",
                        "add an [auth.jwt] table (algorithms and a key source), or remove \"jwt\"",
                    );
                }
                AuthMethod::Jwt
            }
            "api_key" => {
                if !auth.is_some_and(|a| a.consumers.has_api_keys()) {
                    errs.push(
                        key("auth"),
                        "lists \"api_key\" but no [[consumers]] entry has an api_key_sha256",
                        "add a [[consumers]] table with id and api_key_sha256, or remove \"api_key\"",
                    );
                }
                AuthMethod::ApiKey
            }
            // Checked against the connection's client certificate: a
            // plain or certificate-less connection gets 401.
            "mtls" => AuthMethod::Mtls,
            other => {
                errs.push(
                    key("auth"),
                    format!("unknown auth method {other:?}"),
                    "use \"jwt\", \"api_key\" and/or \"mtls\"",
                );
                continue;
            }
        };
        if !order.contains(&method) {
            order.push(method);
        }
    }
    if errs.0.len() > before {
        return None;
    }
    let auth = auth?.clone();
    Some(RoutePolicy::new(
        auth,
        order,
        roles,
        scopes,
        hide_credentials,
    ))
}
