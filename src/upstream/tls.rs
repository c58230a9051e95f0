//! Upstreams over TLS: `tls = true` on `[upstreams.NAME]`, with
//! `tls_ca_file`, `tls_server_name`, `tls_client_cert`, `tls_client_key`.
//!
//! Key components:
//! - [`UpstreamTls`]: the compiled settings (a rustls `ClientConfig` with
//!   the roots, the optional client certificate, ALPN `http/1.1`, and the
//!   name to send and verify).
//! - [`UpStream`]: what a pooled upstream connection is, plain TCP or TLS
//!   ([`crate::tls::stream::TlsStream`] as a client), behind the same monoio
//!   traits the forwarding code uses; its halves for tunnels.
//! - [`handshake`]: the client handshake on a fresh connection (within the
//!   upstream's connect timeout); a failure (wrong CA, wrong name) is a
//!   connect failure: 502.
//! - [`blocking_tls`]: the same settings for the health checker's blocking
//!   sockets.
//!
//! Pool liveness: an idle TLS connection that becomes readable is not
//! retired at once (a TLS 1.3 server sends session tickets after the
//! handshake): at check-out what arrived is read through rustls
//! ([`UpStream::still_clean`]); only application data, a close_notify, an
//! EOF or an error retire it.
//!
//! Performance notes: a plain upstream pays one enum match per read or
//! write. Session resumption towards the backend comes from rustls's
//! client session cache (in the shared `ClientConfig`, touched once per new
//! connection, never per request).

use crate::config::Errors;
use crate::tls::stream::{TlsRead, TlsStream, TlsWrite};
use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// `tls = true` on an upstream, compiled.
pub struct UpstreamTls {
    /// Roots, client certificate, ALPN.
    pub client: Arc<rustls::ClientConfig>,
    /// `tls_server_name` (else each target's address).
    pub server_name: Option<ServerName<'static>>,
    /// The files, for `/config` and the reload fingerprint.
    describe: String,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl UpstreamTls {
    /// The name sent (SNI) and verified for a connection to `addr`.
    pub fn name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }
}

/// The TLS keys of an upstream as written.
pub struct UpstreamTlsFile<'a> {
    /// `tls`
    pub tls: Option<bool>,
    /// `protocol = "h2"`: ALPN offers h2 only.
    pub h2: bool,
    /// `tls_ca_file`
    pub ca_file: Option<&'a str>,
    /// `tls_server_name`
    pub server_name: Option<&'a str>,
    /// `tls_client_cert`
    pub client_cert: Option<&'a str>,
    /// `tls_client_key`
    pub client_key: Option<&'a str>,
}

/// Compiles an upstream's TLS keys (`key` is `upstreams.NAME`).
pub fn compile(f: &UpstreamTlsFile<'_>, key: &str, errs: &mut Errors) -> Option<Arc<UpstreamTls>> {
    if f.tls != Some(true) {
        for (k, set) in [
            ("tls_ca_file", f.ca_file.is_some()),
            ("tls_server_name", f.server_name.is_some()),
            ("tls_client_cert", f.client_cert.is_some()),
            ("tls_client_key", f.client_key.is_some()),
        ] {
            if set {
                errs.push(
                    format!("{key}.{k}"),
                    "is set but the upstream does not use TLS",
                    "add tls = true, or remove the key",
                );
            }
        }
        return None;
    }
    let before = errs.0.len();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match f.ca_file {
        Some(p) => crate::tls::certs::load_roots(p, &format!("{key}.tls_ca_file"), errs),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                errs.push(
                    format!("{key}.tls"),
                    "no system root certificates found to verify the upstream",
                    "install the ca-certificates package, or set tls_ca_file",
                );
                None
            } else {
                Some(roots)
            }
        }
    };
    let server_name = f.server_name.and_then(|n| match ServerName::try_from(n) {
        Ok(s) => Some(s.to_owned()),
        Err(_) => {
            errs.push(
                format!("{key}.tls_server_name"),
                format!("\"{n}\" is not a host name or IP address"),
                "give the name the upstream's certificate is issued for",
            );
            None
        }
    });
    let identity = match (f.client_cert, f.client_key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            crate::tls::certs::load_pair(c, k, &format!("{key}.tls_client"), &provider, errs)
        }
        (Some(_), None) | (None, Some(_)) => {
            errs.push(
                format!(
                    "{key}.{}",
                    if f.client_cert.is_some() {
                        "tls_client_key"
                    } else {
                        "tls_client_cert"
                    }
                ),
                "tls_client_cert and tls_client_key go together",
                "set both (the PEM certificate and its key), or neither",
            );
            None
        }
    };
    if errs.0.len() != before {
        return None;
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots?);
    let mut client = match identity {
        Some(id) => b.with_client_cert_resolver(Arc::new(ClientIdentity(id.key))),
        None => b.with_no_client_auth(),
    };
    client.alpn_protocols = if f.h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Some(Arc::new(UpstreamTls {
        client: Arc::new(client),
        server_name,
        describe: format!(
            "tls(ca={:?}, name={:?}, client_cert={:?})",
            f.ca_file, f.server_name, f.client_cert
        ),
    }))
}

/// The gateway's client certificate, offered to every upstream that asks.
#[derive(Debug)]
struct ClientIdentity(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A connection to an upstream target.
pub enum UpStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (handshake done). Boxed: an `UpStream` (and the `Outcome`
    /// that carries one) stays the size of a `TcpStream` on the plain path.
    Tls(Box<TlsStream>),
}

/// Runs the client handshake on a fresh connection to `addr`.
pub async fn handshake(
    tcp: TcpStream,
    tls: &UpstreamTls,
    addr: SocketAddr,
) -> io::Result<UpStream> {
    let conn = rustls::ClientConnection::new(tls.client.clone(), tls.name_for(addr))
        .map_err(io::Error::other)?;
    let mut s = TlsStream::new(tcp, rustls::Connection::Client(conn));
    s.handshake().await?;
    Ok(UpStream::Tls(Box::new(s)))
}

impl UpStream {
    /// For an idle pooled connection whose socket became readable: false
    /// when it must be retired. Plain: always false (nothing may arrive
    /// unasked). TLS: what arrived is read through rustls without
    /// blocking; only TLS housekeeping (session tickets, a key update)
    /// keeps it.
    pub fn still_clean(&mut self) -> bool {
        match self {
            UpStream::Plain(_) => false,
            UpStream::Tls(t) => t.absorb_idle(),
        }
    }
}

impl crate::http::conn::ReadReady for UpStream {
    async fn read_ready(&mut self) -> io::Result<()> {
        match self {
            UpStream::Plain(s) => s.read_ready().await,
            UpStream::Tls(s) => s.read_ready().await,
        }
    }

    fn ready_fd(&self) -> Option<RawFd> {
        match self {
            UpStream::Plain(s) => s.ready_fd(),
            UpStream::Tls(s) => s.ready_fd(),
        }
    }
}

impl AsRawFd for UpStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            UpStream::Plain(s) => s.as_raw_fd(),
            UpStream::Tls(s) => s.as_raw_fd(),
        }
    }
}

// The plain path pays one match per call: each method returns the inner
// future wrapped in `Either` (no async state machine of its own, nothing
// moved but the inner future). The TLS futures are boxed (one small
// allocation per upstream read or write on TLS connections) so that the
// plain path's futures stay the size of a `TcpStream`'s: they are moved
// and initialised per request, and a TLS read future is several times
// larger.
impl AsyncReadRent for UpStream {
    #[inline]
    fn read<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        match self {
            UpStream::Plain(s) => Either::Left(s.read(buf)),
            UpStream::Tls(s) => Either::Right(Box::pin(s.read(buf))),
        }
    }

    #[inline]
    fn readv<T: IoVecBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        match self {
            UpStream::Plain(s) => Either::Left(s.readv(buf)),
            UpStream::Tls(s) => Either::Right(Box::pin(s.readv(buf))),
        }
    }
}

impl AsyncWriteRent for UpStream {
    #[inline]
    fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        match self {
            UpStream::Plain(s) => Either::Left(s.write(buf)),
            UpStream::Tls(s) => Either::Right(Box::pin(s.write(buf))),
        }
    }

    #[inline]
    fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        match self {
            UpStream::Plain(s) => Either::Left(s.writev(buf)),
            UpStream::Tls(s) => Either::Right(Box::pin(s.writev(buf))),
        }
    }

    #[inline]
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        match self {
            UpStream::Plain(s) => Either::Left(s.flush()),
            UpStream::Tls(s) => Either::Right(Box::pin(s.flush())),
        }
    }

    #[inline]
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> {
        match self {
            UpStream::Plain(s) => Either::Left(s.shutdown()),
            UpStream::Tls(s) => Either::Right(Box::pin(s.shutdown())),
        }
    }
}

/// One of two futures with the same output.
enum Either<A, B> {
    Left(A),
    Right(B),
}

impl<A, B, O> Future for Either<A, B>
where
    A: Future<Output = O>,
    B: Future<Output = O>,
{
    type Output = O;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        // SAFETY: structural pinning: the inner future is never moved out
        // of a pinned `Either` (no method takes it out; `Either` has no
        // `Drop` and is not `Unpin`-dependent), so pinning the variant's
        // field is sound.
        unsafe {
            match self.get_unchecked_mut() {
                Either::Left(a) => Pin::new_unchecked(a).poll(cx),
                Either::Right(b) => Pin::new_unchecked(b).poll(cx),
            }
        }
    }
}

/// The read half of an [`UpStream`] (a tunnel).
pub enum UpRead {
    /// Plain TCP.
    Plain(OwnedReadHalf<TcpStream>),
    /// TLS.
    Tls(TlsRead),
}

/// The write half of an [`UpStream`] (a tunnel).
pub enum UpWrite {
    /// Plain TCP.
    Plain(OwnedWriteHalf<TcpStream>),
    /// TLS.
    Tls(TlsWrite),
}

impl Splitable for UpStream {
    type OwnedRead = UpRead;
    type OwnedWrite = UpWrite;

    fn into_split(self) -> (UpRead, UpWrite) {
        match self {
            UpStream::Plain(s) => {
                let (r, w) = s.into_split();
                (UpRead::Plain(r), UpWrite::Plain(w))
            }
            UpStream::Tls(s) => {
                let (r, w) = (*s).into_split();
                (UpRead::Tls(r), UpWrite::Tls(w))
            }
        }
    }
}

impl AsyncReadRent for UpRead {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpRead::Plain(s) => s.read(buf).await,
            UpRead::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpRead::Plain(s) => s.readv(buf).await,
            UpRead::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpWrite {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpWrite::Plain(s) => s.write(buf).await,
            UpWrite::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpWrite::Plain(s) => s.writev(buf).await,
            UpWrite::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            UpWrite::Plain(s) => s.flush().await,
            UpWrite::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            UpWrite::Plain(s) => s.shutdown().await,
            UpWrite::Tls(s) => s.shutdown().await,
        }
    }
}

/// A blocking TLS client stream over `sock` (the health checker's).
pub fn blocking_tls(
    sock: std::net::TcpStream,
    tls: &UpstreamTls,
    addr: SocketAddr,
) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    let conn = rustls::ClientConnection::new(tls.client.clone(), tls.name_for(addr))
        .map_err(io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}
