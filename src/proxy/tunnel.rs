//! Upgraded connections (WebSocket and friends): after the backend's 101,
//! bytes are copied both ways until either side closes; a half-close is
//! passed on, and a tunnel idle in both directions for `idle_timeout_ms`
//! is closed.
//!
//! A tunnel at rest holds no buffer and no timer: each direction waits for
//! its source to become readable (a poll on a duplicate of the socket's
//! descriptor, which no read uses, so the wait borrows nothing from the
//! stream the reads go through), then borrows a buffer from the worker
//! ([`Worker::lend_ubuf`]) for the read and the write and gives it back;
//! the idle timeout is two slots of the worker's watchdog, put off as
//! bytes move (a store, not a timer).

use crate::http::conn::ReadReady;
use crate::runtime::watchdog::Armed;
use crate::runtime::worker::Worker;
use crate::upstream::tls::UpStream;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

/// A stream on a duplicate of `fd` (a stream's [`ReadReady::ready_fd`]),
/// only ever waited on for readability.
fn watcher(fd: Option<RawFd>) -> Option<TcpStream> {
    let fd = fd?;
    // SAFETY: `fd` is an open socket for the duration of the call; the
    // duplicate is a new descriptor that the std stream then owns.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return None;
    }
    // SAFETY: `dup` is a fresh descriptor owned by nothing else.
    let s = unsafe { std::net::TcpStream::from_raw_fd(dup) };
    TcpStream::from_std(s).ok()
}

/// The tunnel's idle deadline: one watchdog slot per socket, both at the
/// same time, put off whenever bytes move either way. When it passes, the
/// watchdog shuts both sockets for reading, and each direction sees the
/// end and finishes.
struct Quiet<'a> {
    w: &'a Worker,
    slots: [Armed<'a>; 2],
    idle_ms: u64,
}

impl Quiet<'_> {
    /// Bytes moved: the deadline is `idle` from now.
    fn moved(&self) {
        let at = self.w.watchdog.now_ms().saturating_add(self.idle_ms);
        for s in &self.slots {
            s.put_off(at);
        }
    }
}

async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(
    w: &Worker,
    mut r: R,
    ready: Option<TcpStream>,
    mut out: W,
    quiet: &Quiet<'_>,
) {
    let bytes = w.config.server.buffer_bytes;
    let mut buf = Vec::new();
    loop {
        if let Some(ready) = &ready
            && ready.readable(false).await.is_err()
        {
            break;
        }
        w.lend_ubuf(&mut buf, bytes);
        buf.clear();
        let (res, b) = r.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        quiet.moved();
        let (res, b) = out.write_all(buf).await;
        buf = b;
        if ready.is_some() {
            w.return_ubuf(&mut buf, bytes);
        }
        if res.is_err() {
            break;
        }
    }
    w.return_ubuf(&mut buf, bytes);
    let _ = out.shutdown().await;
}

/// Tunnels `client` and `upstream`; `pending` holds client bytes already
/// read after the upgrade request, sent to the backend first. Once nothing
/// moved either way for `idle`, the watchdog shuts both sockets for
/// reading (its coarse clock: within two ticks), and the directions see
/// the end and finish; a drain leaves a tunnel to its end or the drain
/// timeout.
pub async fn tunnel<S>(
    w: &Worker,
    client: S,
    mut upstream: UpStream,
    pending: Vec<u8>,
    idle: Duration,
) where
    S: AsyncReadRent + AsyncWriteRent + Splitable + AsRawFd + ReadReady,
    S::OwnedRead: AsyncReadRent,
    S::OwnedWrite: AsyncWriteRent,
{
    if !pending.is_empty() {
        let (r, _) = upstream.write_all(pending).await;
        if r.is_err() {
            return;
        }
    }
    let (cfd, ufd) = (client.as_raw_fd(), upstream.as_raw_fd());
    // Without a duplicate descriptor (none left), or over TLS (plaintext
    // rustls holds does not show on the descriptor), a direction keeps its
    // buffer under its read, as a busy one does.
    let (client_ready, upstream_ready) = (watcher(client.ready_fd()), watcher(upstream.ready_fd()));
    let idle_ms = idle.as_millis().min(u64::MAX as u128) as u64;
    let at = w.watchdog.now_ms().saturating_add(idle_ms);
    // Both slots are dropped (disarmed) with this future, after both
    // directions finished and before the sockets close.
    let quiet = Quiet {
        w,
        slots: [
            w.watchdog.arm_tunnel(cfd, at),
            w.watchdog.arm_tunnel(ufd, at),
        ],
        idle_ms,
    };
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    monoio::join!(
        pump(w, cr, client_ready, uw, &quiet),
        pump(w, ur, upstream_ready, cw, &quiet)
    );
}
