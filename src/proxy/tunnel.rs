//! Upgraded connections (WebSocket and friends): after the backend's 101,
//! bytes are copied both ways until either side closes; a half-close is
//! passed on, and a tunnel idle in both directions for `idle_timeout_ms`
//! is closed.

use crate::upstream::tls::UpStream;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(
    mut r: R,
    mut w: W,
    mut buf: Vec<u8>,
    last: Rc<Cell<Instant>>,
    idle: Duration,
) {
    loop {
        buf.clear();
        let (res, b) = match monoio::time::timeout(idle, r.read(buf)).await {
            Ok(x) => x,
            Err(_) => {
                if last.get().elapsed() >= idle {
                    break;
                }
                buf = Vec::with_capacity(16 * 1024);
                continue;
            }
        };
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        last.set(Instant::now());
        let (res, b) = w.write_all(buf).await;
        buf = b;
        if res.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// Tunnels `client` and `upstream`; `pending` holds client bytes already
/// read after the upgrade request, sent to the backend first.
pub async fn tunnel<S>(client: S, mut upstream: UpStream, pending: Vec<u8>, idle: Duration)
where
    S: AsyncReadRent + AsyncWriteRent + Splitable,
    S::OwnedRead: AsyncReadRent,
    S::OwnedWrite: AsyncWriteRent,
{
    if !pending.is_empty() {
        let (r, _) = upstream.write_all(pending).await;
        if r.is_err() {
            return;
        }
    }
    let last = Rc::new(Cell::new(Instant::now()));
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = pump(cr, uw, Vec::with_capacity(16 * 1024), last.clone(), idle);
    let down = pump(ur, cw, Vec::with_capacity(16 * 1024), last, idle);
    monoio::join!(up, down);
}
