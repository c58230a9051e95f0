//! `[[server.tls]]`: TLS listeners as written in the file, and their
//! compilation into [`crate::tls::TlsListener`]s (certificates and keys
//! read and checked here, so a bad one is a config error naming the key,
//! the file and the fix, at start and on reload alike).
//!
//! Defaults (also in `config/ringgate.example.toml`): `client_auth =
//! "none"`, `min_version = "1.2"`, `handshake_timeout_ms = 10000`, no
//! `default_cert` (a handshake without SNI or with an unknown name is
//! refused), no `redirect_from`, no HSTS.

use super::Errors;
use super::file::OneOrMany;
use crate::tls::{ClientAuth, TlsListener};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One `[[server.tls]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerFile {
    /// Address or list of addresses.
    pub listen: OneOrMany,
    /// Certificates (chosen by SNI).
    pub certs: Vec<CertPairFile>,
    /// Certificate served without SNI or for an unknown name; absent =
    /// refuse those handshakes.
    pub default_cert: Option<String>,
    /// `none | optional | required`
    pub client_auth: Option<String>,
    /// CA bundle that client certificates are verified against.
    pub client_ca: Option<String>,
    /// Plain listener(s) that answer 308 to the https URL.
    pub redirect_from: Option<OneOrMany>,
    /// `Strict-Transport-Security: max-age=N` on every response.
    pub hsts_max_age_s: Option<u64>,
    /// Lowest protocol version: `"1.2"` (default) or `"1.3"`.
    pub min_version: Option<String>,
    /// A handshake not complete within this is closed (default 10000).
    pub handshake_timeout_ms: Option<u64>,
}

/// `{ cert = "…", key = "…" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPairFile {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// Default `handshake_timeout_ms`.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

fn addrs(v: &OneOrMany, key: &str, errs: &mut Errors) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in v.to_vec() {
        match s.parse::<SocketAddr>() {
            Ok(a) => out.push(a),
            Err(_) => errs.push(
                key,
                format!("\"{s}\" is not an address"),
                "write IP:PORT, e.g. \"0.0.0.0:443\"",
            ),
        }
    }
    out
}

/// Compiles every `[[server.tls]]`; `plain` is `server.listen` (an address
/// may serve one thing only); `h2`: ALPN offers `h2` too.
pub fn compile(
    list: &[TlsListenerFile],
    plain: &[SocketAddr],
    h2: bool,
    errs: &mut Errors,
) -> Vec<Arc<TlsListener>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut out = Vec::new();
    let mut taken: Vec<SocketAddr> = plain.iter().copied().filter(|a| a.port() != 0).collect();
    for (i, f) in list.iter().enumerate() {
        let key = format!("server.tls[{i}]");
        let before = errs.0.len();
        let listen = addrs(&f.listen, &format!("{key}.listen"), errs);
        if listen.is_empty() && errs.0.len() == before {
            errs.push(
                format!("{key}.listen"),
                "no address",
                "give an address, e.g. listen = \"0.0.0.0:443\"",
            );
        }
        let redirect_from = f
            .redirect_from
            .as_ref()
            .map(|r| addrs(r, &format!("{key}.redirect_from"), errs))
            .unwrap_or_default();
        for (a, k) in listen
            .iter()
            .map(|a| (a, "listen"))
            .chain(redirect_from.iter().map(|a| (a, "redirect_from")))
        {
            if a.port() != 0 && taken.contains(a) {
                errs.push(
                    format!("{key}.{k}"),
                    format!("{a} is already used by server.listen or another TLS listener"),
                    "give each listener its own address",
                );
            }
            taken.push(*a);
        }
        if f.certs.is_empty() {
            errs.push(
                format!("{key}.certs"),
                "no certificate",
                "add certs = [{ cert = \"server.pem\", key = \"server.key\" }]",
            );
        }
        let mut certs = Vec::new();
        for (j, c) in f.certs.iter().enumerate() {
            if let Some(l) = crate::tls::certs::load_pair(
                &c.cert,
                &c.key,
                &format!("{key}.certs[{j}]"),
                &provider,
                errs,
            ) {
                certs.push(l);
            }
        }
        let default = match &f.default_cert {
            None => None,
            Some(d) => match f.certs.iter().position(|c| &c.cert == d) {
                Some(p) => Some(p),
                None => {
                    errs.push(
                        format!("{key}.default_cert"),
                        format!("\"{d}\" is not one of this listener's certs"),
                        "name the cert file of one of the entries in certs",
                    );
                    None
                }
            },
        };
        let client_auth = match f.client_auth.as_deref().unwrap_or("none") {
            "none" => ClientAuth::None,
            "optional" => ClientAuth::Optional,
            "required" => ClientAuth::Required,
            other => {
                errs.push(
                    format!("{key}.client_auth"),
                    format!("unknown value \"{other}\""),
                    "use none, optional or required",
                );
                ClientAuth::None
            }
        };
        let roots = match (&f.client_ca, client_auth) {
            (Some(ca), _) => crate::tls::certs::load_roots(ca, &format!("{key}.client_ca"), errs),
            (None, ClientAuth::None) => None,
            (None, _) => {
                errs.push(
                    format!("{key}.client_ca"),
                    "client_auth asks for client certificates but no client_ca is set",
                    "set client_ca to the PEM bundle of the CA that issues client certificates",
                );
                None
            }
        };
        let tls13_only = match f.min_version.as_deref().unwrap_or("1.2") {
            "1.2" => false,
            "1.3" => true,
            other => {
                errs.push(
                    format!("{key}.min_version"),
                    format!("unknown version \"{other}\""),
                    "use \"1.2\" (TLS 1.2 and 1.3) or \"1.3\" (TLS 1.3 only)",
                );
                false
            }
        };
        let handshake_timeout = f.handshake_timeout_ms.unwrap_or(HANDSHAKE_TIMEOUT_MS);
        if handshake_timeout == 0 {
            errs.push(
                format!("{key}.handshake_timeout_ms"),
                "must be above 0",
                "give milliseconds, e.g. 10000",
            );
        }
        if errs.0.len() != before {
            continue;
        }
        let resolver = crate::tls::certs::SniResolver::new(&certs, default);
        match crate::tls::server_config(
            provider.clone(),
            resolver,
            tls13_only,
            client_auth,
            roots,
            h2,
        ) {
            Ok(server) => out.push(Arc::new(TlsListener {
                listen,
                redirect_from,
                server,
                handshake_timeout: Duration::from_millis(handshake_timeout),
                hsts: f.hsts_max_age_s.map(|s| {
                    format!("Strict-Transport-Security: max-age={s}\r\n")
                        .into_bytes()
                        .into_boxed_slice()
                }),
                client_auth,
                cert_files: certs.iter().map(|c| c.path.clone()).collect(),
                files: f
                    .certs
                    .iter()
                    .flat_map(|c| [&c.cert, &c.key])
                    .chain(f.client_ca.as_ref())
                    .map(std::path::PathBuf::from)
                    .collect(),
            })),
            Err(e) => errs.push(
                key,
                format!("cannot build the TLS settings: {e}"),
                "check client_ca and min_version",
            ),
        }
    }
    out
}
