//! HTTP/2 to upstreams (`protocol = "h2"`): h2c with prior knowledge, or
//! TLS with ALPN h2 (`tls = true`).
//!
//! Key components: [`H2Conn`] (one multiplexed connection per target per
//! worker, kept in [`TargetState::h2`]: every request of the worker to that
//! target is a stream on it) and [`sender`] (the connection's request
//! handle, connecting first when there is none or it ended).
//!
//! How it works: the h2 crate's client runs over the socket's poll-style
//! form; its connection future is a task of the worker, and marks the
//! connection dead when it ends (the backend closed it, a GOAWAY, an
//! error), so the next request connects anew. Flow control, stream limits
//! and GOAWAY handling are the crate's.

use super::pool::{ConnectError, TargetState};
use super::tls::{UpStream, UpstreamTls};
use crate::http::h2::io::Io;
use bytes::Bytes;
use h2::client::SendRequest;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// One HTTP/2 connection to a target.
pub struct H2Conn {
    send: SendRequest<Bytes>,
    alive: Rc<Cell<bool>>,
}

/// A request handle on the target's connection (made within `timeout`
/// when there is none, or the last one ended).
pub async fn sender(
    target: &TargetState,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> Result<SendRequest<Bytes>, ConnectError> {
    if let Some(c) = target.h2.borrow().as_ref()
        && c.alive.get()
    {
        return Ok(c.send.clone());
    }
    let addr = target.addr;
    let connecting = async {
        let tcp = monoio::net::TcpStream::connect_addr(addr)
            .await
            .map_err(ConnectError::Failed)?;
        let _ = tcp.set_nodelay(true);
        let io = match tls {
            None => Io::plain(tcp).map_err(ConnectError::Failed)?,
            Some(t) => match super::tls::handshake(tcp, t, addr).await {
                Ok(UpStream::Tls(s)) => Io::tls(*s).map_err(ConnectError::Tls)?,
                Ok(UpStream::Plain(_)) => unreachable!("a TLS handshake gives a TLS stream"),
                Err(e) => return Err(ConnectError::Tls(e)),
            },
        };
        h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| ConnectError::Failed(std::io::Error::other(e)))
    };
    let (send, conn) = match monoio::time::timeout(timeout, connecting).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(ConnectError::TimedOut),
    };
    let alive = Rc::new(Cell::new(true));
    let flag = alive.clone();
    monoio::spawn(async move {
        let _ = conn.await;
        flag.set(false);
    });
    target.h2.replace(Some(H2Conn {
        send: send.clone(),
        alive,
    }));
    Ok(send)
}
