//! HTTP/2 from clients: h2c with prior knowledge on plain listeners (the
//! HTTP/1 loop hands over a connection that opens with the client
//! preface) and ALPN `h2` on TLS listeners.
//!
//! ```text
//! connection (this module)       frames, settings, flow control, GOAWAY
//!   └─ stream (stream.rs)        one request through Session's phases,
//!                                its body and answer through H2Client
//! ```
//!
//! Key components: [`serve`] (one connection: the h2 crate's server,
//! every stream a future in one set polled by the connection's task, its
//! idle timeout, drain, a reload that changes `[server.http2]` and the
//! rapid-reset guard), [`fields`] (head bytes as HTTP/2 fields), [`io`] (the poll-style
//! transports), [`stream`] (a stream as a session).
//!
//! The h2 crate (0.4, well kept, used by hyper) does the framing, HPACK
//! and flow control; it refuses streams beyond the concurrency limit,
//! header lists beyond their limit, CONTINUATION floods and resets
//! before accept beyond a bound. On top: a client cancelling more than
//! `max_client_resets` accepted streams within 10 s gets GOAWAY
//! ENHANCE_YOUR_CALM (each cancellation also drops that stream's backend
//! exchange at once), and every answer's DATA waits for the client's
//! window, so memory per stream stays bounded.
//!
//! Performance notes: HTTP/2 allocates per stream (the h2 crate's frames
//! and header maps, the boxed stream future, the copy of an HTTP/1.1
//! backend's body pieces into `Bytes`); a stream's connection state is
//! reused from the worker's spares, and an HTTP/2 backend's DATA reach
//! the client without a copy. The HTTP/1 path is untouched by it except
//! for one preface check on a head that failed to parse.

pub mod fields;
pub mod io;
pub mod stream;

use crate::runtime::worker::Worker;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// The client connection preface's first line (RFC 9113 3.4).
pub const PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// How often the connection looks at its timers.
const TICK: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// GOAWAY sent at this time; streams in flight finish.
    Draining(Instant),
    /// Ended (GOAWAY with an error, or the drain's time ran out).
    Closing(Instant),
}

/// Serves one HTTP/2 connection until it closes. `pending`: bytes read
/// before the switch (the preface), replayed first.
pub async fn serve(
    w: &Worker,
    io: io::Io,
    pending: Vec<u8>,
    peer: SocketAddr,
    tls: Option<Rc<crate::tls::ConnTls>>,
) {
    let snap = w.current();
    let srv = &snap.config.server;
    let h = &srv.http2;
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(h.max_concurrent_streams)
        .initial_window_size(h.initial_window_bytes)
        .initial_connection_window_size(h.connection_window_bytes)
        .max_header_list_size(h.max_header_list_bytes)
        .max_frame_size(h.max_frame_bytes)
        .max_send_buffer_size(srv.buffer_bytes.max(16 * 1024))
        .max_concurrent_reset_streams(h.max_concurrent_streams as usize * 2)
        // Streams cancelled before they are accepted count against the
        // same limit as those cancelled after.
        .max_pending_accept_reset_streams(h.max_client_resets as usize);
    let (idle_timeout, drain_timeout, header_timeout) =
        (srv.idle_timeout, srv.drain_timeout, srv.header_timeout);
    // A reload that changes these settings ends the connection gracefully,
    // so the client reconnects to the new ones (other changes apply to the
    // next stream: each is served with the generation current then).
    let settings = h.clone();
    let resets = stream::Resets::new(h.max_client_resets);
    drop(snap);
    let handshake = b.handshake::<_, bytes::Bytes>(io::Prefixed::new(pending, io));
    let mut conn = match monoio::time::timeout(header_timeout, handshake).await {
        Ok(Ok(c)) => c,
        _ => return,
    };
    type StreamFut<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;
    let mut streams: FuturesUnordered<StreamFut<'_>> = FuturesUnordered::new();
    let mut tick = monoio::time::interval(TICK);
    let mut last_active = Instant::now();
    let mut state = State::Open;
    let mut accepting = true;
    let resets = &resets;
    let tls = &tls;
    std::future::poll_fn(|cx| {
        while tick.poll_tick(cx).is_ready() {
            match state {
                State::Open => {
                    let idle = streams.is_empty() && last_active.elapsed() >= idle_timeout;
                    let changed = w.current().config.server.http2 != settings;
                    if w.draining.get() || idle || changed {
                        conn.graceful_shutdown();
                        state = State::Draining(Instant::now());
                    }
                }
                State::Draining(t) if t.elapsed() >= drain_timeout => {
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    state = State::Closing(Instant::now());
                }
                // A peer that does not read its GOAWAY is not waited for.
                State::Closing(t) if t.elapsed() >= Duration::from_secs(1) => {
                    return Poll::Ready(());
                }
                _ => {}
            }
        }
        if resets.exceeded() && !matches!(state, State::Closing(_)) {
            tracing::debug!(client = %peer, "HTTP/2 client reset too many streams");
            conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            state = State::Closing(Instant::now());
            // Its streams are dropped with their backend exchanges.
            streams = FuturesUnordered::new();
        }
        let mut active = false;
        if accepting {
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        active = true;
                        streams.push(Box::pin(stream::serve(
                            w,
                            peer,
                            tls.clone(),
                            req,
                            respond,
                            resets,
                        )));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(client = %peer, error = %e, "HTTP/2 connection error");
                        accepting = false;
                        break;
                    }
                    Poll::Ready(None) => {
                        accepting = false;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
            active = true;
        }
        // One clock read for all the streams begun or ended in this poll.
        if active {
            last_active = Instant::now();
        }
        if !accepting {
            // Streams still answering need the connection driven.
            if conn.poll_closed(cx).is_ready() && streams.is_empty() {
                return Poll::Ready(());
            }
            if streams.is_empty() && matches!(state, State::Open) {
                state = State::Closing(Instant::now());
            }
        }
        Poll::Pending
    })
    .await;
}

/// Sends `data` on `s` as DATA frames within the peer's window (waiting
/// for credit, so what is buffered stays bounded), `eos` on the last.
pub async fn send_all(
    s: &mut h2::SendStream<bytes::Bytes>,
    mut data: bytes::Bytes,
    eos: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        if eos {
            s.send_data(data, true)?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        s.reserve_capacity(data.len());
        let cap = match std::future::poll_fn(|cx| s.poll_capacity(cx)).await {
            Some(r) => r?,
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        if cap == 0 {
            continue;
        }
        let piece = data.split_to(cap.min(data.len()));
        let last = data.is_empty();
        s.send_data(piece, eos && last)?;
    }
    Ok(())
}
