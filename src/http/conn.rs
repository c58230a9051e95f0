//! The downstream connection loop: read a head (header timeout, size
//! limits), parse, route, hand the request to the proxy, repeat while the
//! connection stays keep-alive. Pipelined requests are answered in order:
//! bytes after a request stay in the buffer for the next turn.
//!
//! Every error ringgate answers itself goes through [`write_error`]: a JSON
//! body with the status and request id, written in full before a close.

use super::parse::{self, BodyFraming, Parsed, RequestHead};
use crate::proxy::forward::{self, Conn, Outcome};
use crate::router::{Lookup, Params};
use crate::runtime::worker::Worker;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Reads more bytes into `buf` after its current contents.
pub async fn read_more<S: AsyncReadRent>(
    s: &mut S,
    buf: Vec<u8>,
) -> (std::io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    let (r, slice) = s.read(buf.slice_mut(len..)).await;
    (r, slice.into_inner())
}

/// Like [`read_more`] with a timeout; on timeout the buffer is replaced by
/// an empty one of the same capacity (the old one is still owned by the
/// cancelled read).
pub async fn read_more_within<S: AsyncReadRent>(
    s: &mut S,
    buf: Vec<u8>,
    t: Duration,
) -> (Result<std::io::Result<usize>, ()>, Vec<u8>) {
    let cap = buf.capacity();
    match monoio::time::timeout(t, read_more(s, buf)).await {
        Ok((r, b)) => (Ok(r), b),
        Err(_) => (Err(()), Vec::with_capacity(cap)),
    }
}

/// Answers a connection over the per-worker limit with 503 and closes it.
pub async fn refuse_overloaded(mut s: monoio::net::TcpStream) {
    let mut buf = Vec::with_capacity(256);
    error_response(
        &mut buf,
        503,
        "too many connections on this worker",
        b"-",
        true,
        None,
    );
    let _ = monoio::time::timeout(Duration::from_secs(1), s.write_all(buf)).await;
}

/// Formats a JSON error response into `buf`.
pub fn error_response(
    buf: &mut Vec<u8>,
    status: u16,
    message: &str,
    request_id: &[u8],
    close: bool,
    allow: Option<&str>,
) {
    buf.clear();
    let rid = std::str::from_utf8(request_id).unwrap_or("-");
    let mut body = [0u8; 512];
    let body_len = {
        let mut w = &mut body[..];
        let _ = write!(
            w,
            "{{\"error\":\"{}\",\"status\":{},\"request_id\":\"{}\"}}",
            JsonStr(message),
            status,
            JsonStr(rid)
        );
        512 - w.len()
    };
    let _ = write!(
        buf,
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Request-Id: {}\r\n",
        status,
        super::reason(status),
        body_len,
        rid
    );
    if let Some(a) = allow {
        let _ = write!(buf, "Allow: {a}\r\n");
    }
    if close {
        buf.extend_from_slice(b"Connection: close\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(&body[..body_len]);
}

struct JsonStr<'a>(&'a str);

impl std::fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => std::fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

/// Writes an error response; returns false when the client is gone.
pub async fn write_error<S: AsyncWriteRent>(
    s: &mut S,
    scratch: &mut Vec<u8>,
    status: u16,
    message: &str,
    request_id: &[u8],
    close: bool,
    allow: Option<&str>,
) -> bool {
    let mut buf = std::mem::take(scratch);
    error_response(&mut buf, status, message, request_id, close, allow);
    let (r, b) = match monoio::time::timeout(Duration::from_secs(10), s.write_all(buf)).await {
        Ok(x) => x,
        Err(_) => return false,
    };
    *scratch = b;
    r.is_ok()
}

/// Serves one client connection until it closes.
pub async fn serve<S>(w: &Worker, mut stream: S, peer: SocketAddr)
where
    S: AsyncReadRent + AsyncWriteRent + Splitable + 'static,
    S::OwnedRead: AsyncReadRent,
    S::OwnedWrite: AsyncWriteRent,
{
    let cfg = w.config.clone();
    let srv = &cfg.server;
    let mut c = Conn::new(srv.buffer_bytes, peer, srv.max_headers);
    let mut first = true;
    loop {
        // Phase 1: read and parse a head.
        if c.buf.is_empty() {
            let t = if first {
                srv.header_timeout
            } else {
                srv.idle_timeout
            };
            let (r, b) = read_more_within(&mut stream, std::mem::take(&mut c.buf), t).await;
            c.buf = b;
            match r {
                Ok(Ok(n)) if n > 0 => {}
                Err(()) if first => {
                    let _ = write_error(
                        &mut stream,
                        &mut c.scratch,
                        408,
                        "no request received in time",
                        b"-",
                        true,
                        None,
                    )
                    .await;
                    return;
                }
                _ => return,
            }
        }
        let deadline = Instant::now() + srv.header_timeout;
        loop {
            match parse::parse_request(
                &c.buf,
                srv.max_headers,
                srv.max_uri_bytes,
                &mut c.head,
                &mut c.lines,
            ) {
                Ok(Parsed::Complete) => break,
                Ok(Parsed::Partial) => {
                    if c.buf.len() >= srv.max_header_bytes {
                        let line_done = c.buf.contains(&b'\n');
                        let (status, msg) = if !line_done && c.buf.len() > srv.max_uri_bytes {
                            (414, "request target too long")
                        } else {
                            (431, "request head too large")
                        };
                        let _ =
                            write_error(&mut stream, &mut c.scratch, status, msg, b"-", true, None)
                                .await;
                        return;
                    }
                    if c.buf.len() == c.buf.capacity() {
                        let want = (c.buf.capacity() * 2).min(srv.max_header_bytes);
                        c.buf.reserve_exact(want - c.buf.len());
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    let (r, b) =
                        read_more_within(&mut stream, std::mem::take(&mut c.buf), left).await;
                    c.buf = b;
                    match r {
                        Ok(Ok(n)) if n > 0 => {}
                        Err(()) => {
                            let _ = write_error(
                                &mut stream,
                                &mut c.scratch,
                                408,
                                "request head not received in time",
                                b"-",
                                true,
                                None,
                            )
                            .await;
                            return;
                        }
                        _ => return,
                    }
                }
                Err(e) => {
                    let _ = write_error(
                        &mut stream,
                        &mut c.scratch,
                        e.status(),
                        e.message(),
                        b"-",
                        true,
                        None,
                    )
                    .await;
                    return;
                }
            }
        }
        first = false;
        c.set_request_id(w);

        // Phase 2: route.
        let lookup = {
            let host = c.head.host.map_or(&b""[..], |h| h.of(&c.buf));
            let mut params = Params::new();
            match cfg.table.lookup(
                host,
                c.head.method.of(&c.buf),
                c.head.path.of(&c.buf),
                &mut params,
            ) {
                Lookup::Found { route } => Ok(route),
                Lookup::MethodNotAllowed { allow } => Err((405, "method not allowed", Some(allow))),
                Lookup::NotFound => Err((404, "no route matches this request", None)),
            }
        };
        let route = match lookup {
            Ok(r) => r,
            Err((status, msg, allow)) => {
                // A body we will not read would be taken for the next request.
                let close =
                    c.head.framing != BodyFraming::None || !c.head.keep_alive || w.draining.get();
                let rid = c.rid;
                let ok = write_error(
                    &mut stream,
                    &mut c.scratch,
                    status,
                    msg,
                    rid.as_bytes(),
                    close,
                    allow,
                )
                .await;
                if close || !ok {
                    return;
                }
                c.consume_head_only();
                continue;
            }
        };
        if let BodyFraming::Length(n) = c.head.framing
            && n > srv.max_body_bytes
        {
            let rid = c.rid;
            let _ = write_error(
                &mut stream,
                &mut c.scratch,
                413,
                "request body too large",
                rid.as_bytes(),
                true,
                None,
            )
            .await;
            return;
        }

        // Phases 3-5: the request goes upstream.
        w.in_flight.set(w.in_flight.get() + 1);
        let outcome = forward::forward(w, &cfg, route as usize, &mut stream, &mut c).await;
        w.in_flight.set(w.in_flight.get() - 1);
        match outcome {
            Outcome::Done { keep_alive } => {
                if !keep_alive {
                    return;
                }
            }
            Outcome::Error {
                status,
                message,
                close,
            } => {
                let close = close || !c.head.keep_alive || w.draining.get();
                let rid = c.rid;
                let ok = write_error(
                    &mut stream,
                    &mut c.scratch,
                    status,
                    message,
                    rid.as_bytes(),
                    close,
                    None,
                )
                .await;
                if close || !ok {
                    return;
                }
            }
            Outcome::Upgrade(upstream) => {
                crate::proxy::tunnel::tunnel(
                    stream,
                    upstream,
                    std::mem::take(&mut c.buf),
                    srv.idle_timeout,
                )
                .await;
                return;
            }
            Outcome::Abort => return,
        }
    }
}

impl RequestHead {
    /// True when the request carries a body.
    pub fn has_body(&self) -> bool {
        self.framing != BodyFraming::None
    }
}
