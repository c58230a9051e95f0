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

/// One direction: waits for its source to be readable, then moves what
/// is there, until either side ends. The move (a borrowed buffer, the read
/// and the write, whose futures are the largest part of a direction) lives
/// in an allocation of its own while it runs, so a direction at rest is
/// its readiness wait and its two halves.
async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(
    w: &Worker,
    r: &mut R,
    ready: Option<&TcpStream>,
    out: &mut W,
    quiet: &Quiet<'_>,
) {
    loop {
        if let Some(ready) = ready
            && ready.readable(false).await.is_err()
        {
            break;
        }
        if !Box::pin(move_once(w, r, out, quiet)).await {
            break;
        }
    }
    let _ = Box::pin(out.shutdown()).await;
}

/// Reads once from `r` into a buffer lent by the worker and writes what
/// came to `out`; false when either side ended. The buffer goes back to
/// the worker's spares after the write.
async fn move_once<R: AsyncReadRent, W: AsyncWriteRent>(
    w: &Worker,
    r: &mut R,
    out: &mut W,
    quiet: &Quiet<'_>,
) -> bool {
    let bytes = w.config.server.buffer_bytes;
    let mut buf = Vec::new();
    w.lend_ubuf(&mut buf, bytes);
    buf.clear();
    let (res, b) = r.read(buf).await;
    buf = b;
    let ok = match res {
        Ok(0) | Err(_) => false,
        Ok(_) => {
            quiet.moved();
            let (res, b) = out.write_all(buf).await;
            buf = b;
            res.is_ok()
        }
    };
    w.return_ubuf(&mut buf, bytes);
    ok
}

/// Tunnels `client` and `upstream`; `pending` holds client bytes already
/// read after the upgrade request, sent to the backend first. Once nothing
/// moved either way for `idle`, the watchdog shuts both sockets for
/// reading (its coarse clock: within two ticks), and the directions see
/// the end and finish; a drain leaves a tunnel to its end or the drain
/// timeout.
///
/// The setup runs before the returned future is made, so the future holds
/// only what the tunnel runs on (the four halves, the two readiness
/// watchers, the idle slots) once, and the directions borrow them: a
/// tunnel at rest is that future and nothing larger.
pub fn tunnel<'a, S>(
    w: &'a Worker,
    client: S,
    upstream: UpStream,
    pending: Vec<u8>,
    idle: Duration,
) -> impl std::future::Future<Output = ()> + 'a
where
    S: AsyncReadRent + AsyncWriteRent + Splitable + AsRawFd + ReadReady + 'a,
    S::OwnedRead: AsyncReadRent,
    S::OwnedWrite: AsyncWriteRent,
{
    let (cfd, ufd) = (client.as_raw_fd(), upstream.as_raw_fd());
    // Without a duplicate descriptor (none left), or over TLS (plaintext
    // rustls holds does not show on the descriptor), a direction keeps its
    // buffer under its read, as a busy one does.
    let (client_ready, upstream_ready) = (watcher(client.ready_fd()), watcher(upstream.ready_fd()));
    let idle_ms = idle.as_millis().min(u64::MAX as u128) as u64;
    let at = w.watchdog.now_ms().saturating_add(idle_ms);
    // Both slots are dropped (disarmed) with the future, after both
    // directions finished and before the sockets close.
    let quiet = Quiet {
        w,
        slots: [
            w.watchdog.arm_tunnel(cfd, at),
            w.watchdog.arm_tunnel(ufd, at),
        ],
        idle_ms,
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    async move {
        // Boxed, as the moves are: a write's future would otherwise set
        // the size of the tunnel's for its whole life.
        if !pending.is_empty() && Box::pin(uw.write_all(pending)).await.0.is_err() {
            return;
        }
        monoio::join!(
            pump(w, &mut cr, client_ready.as_ref(), &mut uw, &quiet),
            pump(w, &mut ur, upstream_ready.as_ref(), &mut cw, &quiet)
        );
    }
}
