//! `auth = ["mtls"]`: the caller is the verified TLS client certificate of
//! the connection.
//!
//! The certificate was verified against the listener's `client_ca` during
//! the handshake (`client_auth = "optional"` or `"required"`); here its
//! subject CN names the caller. A `[[consumers]]` entry whose `id` is that
//! CN gives the consumer, tier, roles and scopes (so rate limits by
//! consumer and `roles` work as for API keys); any other CN is a caller
//! with no roles. A connection without a client certificate has no mTLS
//! credential (the next method of the route is tried, else 401).
//!
//! Performance notes: one identity block is built per request on such
//! routes (a small allocation, on TLS connections only).

use super::{Attempt, Auth, Authenticated};
use crate::filter::{AuthMethod, Identity};
use crate::tls::ConnTls;
use std::borrow::Cow;
use std::rc::Rc;

/// Whether the connection carries an mTLS credential.
pub(super) fn present(tls: Option<&ConnTls>) -> Option<&ConnTls> {
    tls.filter(|t| t.client_verified)
}

/// The caller of a connection with a verified client certificate.
pub(super) fn authenticate(auth: &Auth, tls: &ConnTls) -> Attempt {
    let Some(cn) = tls.client_cn.as_deref().filter(|c| !c.is_empty()) else {
        return Err(Cow::Borrowed(
            "the client certificate has no subject common name",
        ));
    };
    let identity = match auth.consumers.by_id(cn) {
        Some(c) => Identity {
            method: AuthMethod::Mtls,
            subject: c.id.clone(),
            consumer: Some(c.id.clone()),
            tier: c.tier.clone(),
            roles: c.roles.clone(),
            scopes: c.scopes.clone(),
            api_key_id: None,
        },
        None => Identity {
            method: AuthMethod::Mtls,
            subject: cn.to_string(),
            consumer: None,
            tier: None,
            roles: Vec::new(),
            scopes: Vec::new(),
            api_key_id: None,
        },
    };
    Ok(Rc::new(Authenticated::new(identity)))
}
