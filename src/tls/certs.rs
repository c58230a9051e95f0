//! Certificates and keys from PEM files, checked the way a config is, and
//! the SNI choice among them.
//!
//! Key components: [`load_pair`] (a certificate chain and its key, with
//! every problem an error that names the key in the config, the file and
//! the fix), [`load_roots`] (a CA bundle), [`SniResolver`] (exact names and
//! `*.` wildcards from each certificate's subjectAltName, then the default
//! certificate, else no certificate: rustls then refuses the handshake),
//! and [`describe_client`] (subject and SAN of a client certificate, for
//! the headers the backend gets).
//!
//! Everything here runs when a config is compiled (start or reload, off the
//! workers), except the resolver, which runs once per full handshake: two
//! hash lookups.

use crate::config::Errors;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// A certificate chain with its key, ready to serve.
pub struct LoadedCert {
    /// The certificate file as configured.
    pub path: String,
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// DNS names from subjectAltName (or the CN when there is none),
    /// lower case; `*.example.com` for wildcards.
    pub names: Vec<String>,
}

const PATH_FIX: &str =
    "check the path (relative paths start from ringgate's working directory) and its permissions";

/// Loads `cert_path` (PEM, leaf first) and `key_path` (PEM PKCS#8, PKCS#1
/// or SEC1); `key` is the config key of the pair (`server.tls[0].certs[1]`).
pub fn load_pair(
    cert_path: &str,
    key_path: &str,
    key: &str,
    provider: &CryptoProvider,
    errs: &mut Errors,
) -> Option<LoadedCert> {
    let chain = load_chain(cert_path, &format!("{key}.cert"), errs)?;
    let k = match std::fs::read(key_path) {
        Err(e) => {
            errs.push(
                format!("{key}.key"),
                format!("cannot read {key_path}: {e}"),
                PATH_FIX,
            );
            return None;
        }
        Ok(bytes) => match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(k) => k,
            Err(_) => {
                errs.push(
                    format!("{key}.key"),
                    format!("{key_path} holds no PEM private key"),
                    "give the certificate's private key in PEM (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY), unencrypted",
                );
                return None;
            }
        },
    };
    let signer = match provider.key_provider.load_private_key(k) {
        Ok(s) => s,
        Err(e) => {
            errs.push(
                format!("{key}.key"),
                format!("{key_path}: unsupported private key ({e})"),
                "use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key",
            );
            return None;
        }
    };
    let ck = CertifiedKey::new(chain, signer);
    if ck.keys_match().is_err() {
        errs.push(
            format!("{key}.key"),
            format!("the key in {key_path} does not match the certificate in {cert_path}"),
            "give the key the certificate was issued for (or the certificate issued for this key)",
        );
        return None;
    }
    let names = leaf_names(&ck.cert[0]);
    if names.is_empty() {
        errs.push(
            format!("{key}.cert"),
            format!("the certificate in {cert_path} names no DNS host (no subjectAltName DNS entry, no CN)"),
            "issue it with the host names it serves in subjectAltName",
        );
        return None;
    }
    Some(LoadedCert {
        path: cert_path.to_string(),
        key: Arc::new(ck),
        names,
    })
}

/// Reads a PEM certificate chain; its first certificate must be valid now.
fn load_chain(path: &str, key: &str, errs: &mut Errors) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            errs.push(key, format!("cannot read {path}: {e}"), PATH_FIX);
            return None;
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        errs.push(
            key,
            format!("{path} holds no PEM certificate"),
            "give the certificate chain in PEM (-----BEGIN CERTIFICATE-----), leaf first",
        );
        return None;
    }
    match x509_parser::parse_x509_certificate(&chain[0]) {
        Err(e) => {
            errs.push(
                key,
                format!("{path}: the first certificate cannot be parsed ({e})"),
                "give a valid X.509 certificate in PEM, leaf first",
            );
            None
        }
        Ok((_, c)) => {
            let now = now_s();
            let v = c.validity();
            if v.not_after.timestamp() < now {
                errs.push(
                    key,
                    format!("the certificate in {path} expired on {}", v.not_after),
                    "renew it and reload",
                );
                return None;
            }
            if v.not_before.timestamp() > now {
                errs.push(
                    key,
                    format!(
                        "the certificate in {path} is not valid before {}",
                        v.not_before
                    ),
                    "check the system clock, or use a certificate valid now",
                );
                return None;
            }
            Some(chain)
        }
    }
}

/// Reads a CA bundle (PEM) into a root store; `key` names it in errors.
pub fn load_roots(path: &str, key: &str, errs: &mut Errors) -> Option<rustls::RootCertStore> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            errs.push(key, format!("cannot read {path}: {e}"), PATH_FIX);
            return None;
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&bytes).filter_map(Result::ok) {
        if let Err(e) = roots.add(c) {
            errs.push(
                key,
                format!("{path}: a CA certificate cannot be used ({e})"),
                "give CA certificates in PEM",
            );
            return None;
        }
    }
    if roots.is_empty() {
        errs.push(
            key,
            format!("{path} holds no PEM certificate"),
            "give the CA certificates in PEM (-----BEGIN CERTIFICATE-----)",
        );
        return None;
    }
    Some(roots)
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// DNS names of a leaf certificate: subjectAltName DNS entries, or its CN
/// when it has none.
fn leaf_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, c)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in c.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    names
}

/// Chooses a listener's certificate by SNI: an exact name first, then a
/// wildcard covering one label (`*.example.com` serves `a.example.com`,
/// not `example.com` nor `a.b.example.com`), then the default certificate.
/// The first certificate in the config listing a name wins it.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
    keys: Vec<Arc<CertifiedKey>>,
    default: Option<usize>,
}

impl SniResolver {
    /// Indexes `certs`; `default` is the index of the default certificate.
    pub fn new(certs: &[LoadedCert], default: Option<usize>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        SniResolver {
            exact,
            wildcard,
            keys: certs.iter().map(|c| c.key.clone()).collect(),
            default,
        }
    }

    /// The certificate index for `sni` (`None`: no SNI sent).
    pub fn choose(&self, sni: Option<&str>) -> Option<usize> {
        let Some(name) = sni else {
            return self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return Some(i);
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(&i) = self.wildcard.get(parent)
        {
            return Some(i);
        }
        self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
            .map(|i| self.keys[i].clone())
    }
}

/// A verified client certificate as the backend sees it: the subject
/// (RFC 4514 style, `CN=alice, O=Example`) and the subjectAltName entries
/// (`DNS:a.example.com, URI:spiffe://…, email:…`), both cleaned of bytes a
/// header value cannot carry.
pub fn describe_client(der: &CertificateDer<'_>) -> Option<(String, String)> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = clean(&c.subject().to_string());
    let mut san = String::new();
    if let Ok(Some(ext)) = c.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        for n in &ext.value.general_names {
            let item = match n {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::RFC822Name(e) => format!("email:{e}"),
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    format!("IP:{}", std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                }
                GeneralName::IPAddress(b) if b.len() == 16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(b);
                    format!("IP:{}", std::net::Ipv6Addr::from(a))
                }
                _ => continue,
            };
            if !san.is_empty() {
                san.push_str(", ");
            }
            san.push_str(&clean(&item));
        }
    }
    Some((subject, san))
}

/// The common name of a client certificate's subject (the consumer name
/// `auth = ["mtls"]` identifies), when it has one.
pub fn client_common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = c.subject().iter_common_name().next()?;
    cn.as_str().ok().map(clean)
}

/// Keeps visible ASCII and spaces: nothing that could end a header line.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(names: &[&str]) -> LoadedCert {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let key = PrivateKeyDer::from_pem_slice(ck.key_pair.serialize_pem().as_bytes()).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let signer = provider.key_provider.load_private_key(key).unwrap();
        let der = ck.cert.der().clone();
        LoadedCert {
            path: String::new(),
            names: leaf_names(&der),
            key: Arc::new(CertifiedKey::new(vec![der], signer)),
        }
    }

    #[test]
    fn exact_names_win_over_wildcards_and_wildcards_cover_one_label() {
        let certs = [cert_for(&["api.example.com"]), cert_for(&["*.example.com"])];
        let r = SniResolver::new(&certs, None);
        assert_eq!(r.choose(Some("api.example.com")), Some(0));
        assert_eq!(r.choose(Some("API.Example.com.")), Some(0));
        assert_eq!(r.choose(Some("www.example.com")), Some(1));
        assert_eq!(r.choose(Some("a.b.example.com")), None);
        assert_eq!(r.choose(Some("example.com")), None);
        assert_eq!(r.choose(None), None);
        let r = SniResolver::new(&certs, Some(1));
        assert_eq!(r.choose(Some("other.org")), Some(1));
        assert_eq!(r.choose(None), Some(1));
    }
}
