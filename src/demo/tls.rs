//! The demo's HTTPS: a certificate authority and a certificate for
//! `localhost` and `127.0.0.1`, generated at each start (rcgen, ECDSA
//! P-256) and written to a directory of their own, so a client can trust
//! the demo with `--cacert DIR/ca.pem`.

use std::path::{Path, PathBuf};

/// The files a demo start wrote.
pub struct DemoCert {
    /// The CA certificate a client trusts.
    pub ca: PathBuf,
    /// The gateway's certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

/// Generates a CA and a `localhost` / `127.0.0.1` certificate under `dir`.
pub fn generate(dir: &Path) -> Result<DemoCert, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let err = |e: rcgen::Error| format!("cannot generate the demo certificate: {e}");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "ringgate demo CA");
    let ca = p.self_signed(&ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::new(vec![String::from("localhost"), String::from("127.0.0.1")])
        .map_err(err)?;
    p.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = p.signed_by(&key, &ca, &ca_key).map_err(err)?;
    let out = DemoCert {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    for (path, text) in [
        (&out.ca, ca.pem()),
        (&out.cert, cert.pem()),
        (&out.key, key.serialize_pem()),
    ] {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(out)
}
