//! The token endpoint: `POST` to `[auth.token_endpoint] path` with the
//! OAuth2 client-credentials grant (client id and secret in the form body
//! or HTTP Basic), or an API key, returns a JWT signed with the gateway's
//! key: `{"access_token", "token_type": "Bearer", "expires_in"}`.
//!
//! The token carries `iss` and `aud` from `[auth.jwt]`, `sub` and
//! `client_id` = the consumer id, the consumer's tier and roles (under
//! `roles_claim`) and scopes (under the first scope claim), `iat`, `nbf`,
//! `exp` = now + `ttl_s` and a random `jti`; it then passes the gateway's
//! own JWT check. Errors follow RFC 6749 §5.2 (`invalid_client`,
//! `invalid_request`, `unsupported_grant_type`, `invalid_scope`) inside the
//! gateway's JSON error shape.

use super::consumers::Consumer;
use super::extract::{self, pct_decode, strip_scheme, trim};
use super::keys::SigningKey;
use super::{Auth, unix_now};
use crate::filter::{Reply, RequestCtx};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::borrow::Cow;

/// `[auth.token_endpoint]`, compiled.
#[derive(Debug)]
pub(crate) struct TokenEndpoint {
    pub path: String,
    pub ttl: u64,
    pub key: SigningKey,
}

fn oauth_error(status: u16, code: &str, description: &str, rid: &[u8]) -> Reply {
    let body = json!({
        "error": code,
        "error_description": description,
        "status": status,
        "request_id": String::from_utf8_lossy(rid),
    });
    let r = Reply {
        status,
        headers: Vec::new(),
        content_type: "application/json",
        body: body.to_string().into_bytes(),
    }
    .with_header("Cache-Control", "no-store");
    if status == 401 {
        r.with_header("WWW-Authenticate", "Basic realm=\"ringgate\"")
    } else {
        r
    }
}

/// One decoded form field: name and value.
type Field<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Form fields; a repeated field is an error (RFC 6749 §3.2).
fn parse_form(body: &[u8]) -> Result<Vec<Field<'_>>, &'static str> {
    let mut out: Vec<Field<'_>> = Vec::new();
    for kv in body.split(|&b| b == b'&').filter(|kv| !kv.is_empty()) {
        let (k, v) = match kv.iter().position(|&b| b == b'=') {
            Some(i) => (&kv[..i], &kv[i + 1..]),
            None => (kv, &b""[..]),
        };
        let k = pct_decode(k, true);
        if out.iter().any(|(x, _)| *x == k) {
            return Err("a form field is repeated");
        }
        out.push((k, pct_decode(v, true)));
    }
    Ok(out)
}

fn field<'f>(form: &'f [Field<'_>], name: &[u8]) -> Option<&'f [u8]> {
    form.iter().find(|(k, _)| &**k == name).map(|(_, v)| &**v)
}

/// Answers one token request.
pub(crate) fn answer(auth: &Auth, ep: &TokenEndpoint, ctx: &RequestCtx<'_>, body: &[u8]) -> Reply {
    let rid = ctx.request_id;
    let bad = |code: &str, d: &str| oauth_error(400, code, d, rid);
    let unauthorized = |d: &str| oauth_error(401, "invalid_client", d, rid);

    if !body.is_empty() {
        let ct = ctx.header(b"content-type").unwrap_or(b"");
        let media = ct.split(|&b| b == b';').next().unwrap_or(b"");
        if !trim(media).eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
            return bad(
                "invalid_request",
                "send the form as Content-Type: application/x-www-form-urlencoded",
            );
        }
    }
    let form = match parse_form(body) {
        Ok(f) => f,
        Err(e) => return bad("invalid_request", e),
    };
    let grant = field(&form, b"grant_type");
    if let Some(g) = grant
        && g != b"client_credentials"
    {
        return bad(
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        );
    }

    // Client authentication: HTTP Basic, form fields, or an API key.
    let mut basic: Option<(Vec<u8>, Vec<u8>)> = None;
    for v in ctx.headers(b"authorization") {
        if let Some(b64) = strip_scheme(v, b"basic") {
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
                return unauthorized("the Basic credentials are not base64");
            };
            let Some(colon) = raw.iter().position(|&b| b == b':') else {
                return unauthorized("the Basic credentials have no ':'");
            };
            let id = pct_decode(&raw[..colon], true).into_owned();
            let secret = pct_decode(&raw[colon + 1..], true).into_owned();
            if basic.is_some() {
                return bad("invalid_request", "more than one Authorization header");
            }
            basic = Some((id, secret));
        }
    }
    let form_id = field(&form, b"client_id");
    let form_secret = field(&form, b"client_secret");
    let creds: Option<(&[u8], &[u8])> = match (&basic, form_id, form_secret) {
        (Some(_), _, Some(_)) => {
            return bad(
                "invalid_request",
                "use one client authentication method, not Basic and client_secret",
            );
        }
        (Some((id, s)), fid, None) => {
            if fid.is_some_and(|f| f != &id[..]) {
                return bad("invalid_request", "client_id differs from the Basic user");
            }
            Some((id, s))
        }
        (None, Some(id), Some(s)) => Some((id, s)),
        (None, Some(_), None) => return unauthorized("client_secret is missing"),
        (None, None, Some(_)) => return bad("invalid_request", "client_id is missing"),
        (None, None, None) => None,
    };

    let consumer: &Consumer = match creds {
        Some((id, secret)) => {
            if grant.is_none() {
                return bad(
                    "invalid_request",
                    "grant_type=client_credentials is required",
                );
            }
            let found = std::str::from_utf8(id)
                .ok()
                .and_then(|id| auth.consumers.by_client_secret(id, secret));
            match found {
                Some(c) => c,
                None => return unauthorized("unknown client or wrong secret"),
            }
        }
        None => {
            let key = match extract::credentials(auth, ctx, false, true) {
                Ok(f) => f.api_key,
                Err(e) => return unauthorized(e),
            };
            match key.and_then(|k| auth.consumers.by_api_key(&k)) {
                Some((i, _)) => &auth.consumers.list[i],
                None => {
                    return unauthorized(
                        "send client credentials (Basic or form) or a valid API key",
                    );
                }
            }
        }
    };

    // Scopes: a requested subset of the consumer's, or all of them.
    let scopes: Vec<String> = match field(&form, b"scope") {
        Some(s) => {
            let want: Vec<String> = String::from_utf8_lossy(s)
                .split(' ')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect();
            if want.iter().any(|w| !consumer.scopes.contains(w)) {
                return bad(
                    "invalid_scope",
                    "a requested scope is not granted to this client",
                );
            }
            want
        }
        None => consumer.scopes.clone(),
    };

    match issue(auth, ep, consumer, &scopes, unix_now()) {
        Ok(token) => {
            let mut body = json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": ep.ttl,
            });
            if !scopes.is_empty() {
                body["scope"] = Value::String(scopes.join(" "));
            }
            Reply {
                status: 200,
                headers: Vec::new(),
                content_type: "application/json",
                body: body.to_string().into_bytes(),
            }
            .with_header("Cache-Control", "no-store")
            .with_header("Pragma", "no-cache")
        }
        Err(e) => {
            tracing::error!(error = %e, "token endpoint cannot sign");
            Reply::error(500, "the token could not be signed", rid)
        }
    }
}

/// Puts `value` at a dotted claim path, creating objects on the way.
fn put_at(claims: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut m = claims;
    for p in parents {
        let e = m
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !e.is_object() {
            *e = Value::Object(Map::new());
        }
        let Value::Object(next) = e else {
            return;
        };
        m = next;
    }
    m.insert(last.clone(), value);
}

/// Signs a token for `consumer`.
pub(crate) fn issue(
    auth: &Auth,
    ep: &TokenEndpoint,
    consumer: &Consumer,
    scopes: &[String],
    now: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut claims = Map::new();
    if let Some(j) = &auth.jwt {
        let r = &j.rules;
        if let Some(iss) = r.issuers.first() {
            claims.insert("iss".into(), Value::String(iss.clone()));
        }
        match r.audiences.len() {
            0 => {}
            1 => {
                claims.insert("aud".into(), Value::String(r.audiences[0].clone()));
            }
            _ => {
                claims.insert("aud".into(), json!(r.audiences));
            }
        }
        if !consumer.roles.is_empty() {
            put_at(&mut claims, &r.roles_claim, json!(consumer.roles));
        }
        if !scopes.is_empty()
            && let Some(path) = r.scopes_claims.first()
        {
            put_at(&mut claims, path, Value::String(scopes.join(" ")));
        }
    }
    claims.insert("sub".into(), Value::String(consumer.id.clone()));
    claims.insert("client_id".into(), Value::String(consumer.id.clone()));
    if let Some(t) = &consumer.tier {
        claims.insert("tier".into(), Value::String(t.clone()));
    }
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(now + ep.ttl));
    let mut jti = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti);
    claims.insert("jti".into(), Value::String(hex::encode(jti)));
    let mut header = jsonwebtoken::Header::new(ep.key.alg);
    header.kid = ep.key.kid.clone();
    jsonwebtoken::encode(&header, &claims, &ep.key.key)
}
