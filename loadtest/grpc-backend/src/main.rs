//! A unary gRPC server for loadtest/compare (grpc-unary): h2c with prior
//! knowledge, one thread (like the HTTP/1 backend's one nginx worker).
//!
//! `grpc-backend 127.0.0.1:PORT`
//!
//! - `POST /pkg.Svc/Method`, `content-type: application/grpc...`: reads the
//!   whole request, which must be exactly one uncompressed gRPC message
//!   (5-byte header: flag 0, big-endian length; then the payload), and
//!   answers 200 `application/grpc` with one message, the protobuf
//!   `{ 1: "hello, world" }` (14 bytes; 19 with the header), then the
//!   trailers `grpc-status: 0`.
//! - a malformed message: grpc-status 13 (INTERNAL); another path: 12
//!   (UNIMPLEMENTED); not application/grpc: HTTP 415. Like a real gRPC
//!   server, every gRPC status goes in trailers after HTTP 200.
//! - `GET /stats` (plain HTTP/2): `calls=N failed=M`, the calls answered
//!   with status 0 and with any other status since start, so the harness
//!   can check that what the proxies counted as 2xx really were replies.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use std::cell::Cell;
use std::rc::Rc;

const REPLY: &[u8] = b"\x00\x00\x00\x00\x0e\x0a\x0chello, world";

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:50051".into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        eprintln!("grpc-backend listening on {addr}");
        let stats = Rc::new((Cell::new(0u64), Cell::new(0u64)));
        loop {
            let Ok((sock, _)) = listener.accept().await else { continue };
            let _ = sock.set_nodelay(true);
            let stats = stats.clone();
            tokio::task::spawn_local(async move {
                let mut conn = match h2::server::Builder::new()
                    .max_concurrent_streams(1000)
                    .initial_window_size(1 << 20)
                    .initial_connection_window_size(1 << 24)
                    .handshake::<_, Bytes>(sock)
                    .await
                {
                    Ok(c) => c,
                    Err(_) => return,
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let stats = stats.clone();
                    tokio::task::spawn_local(async move {
                        let _ = serve(req, respond, &stats).await;
                    });
                }
            });
        }
    });
}

async fn serve(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    stats: &(Cell<u64>, Cell<u64>),
) -> Result<(), h2::Error> {
    let (parts, mut body) = req.into_parts();
    if parts.uri.path() == "/stats" {
        let text = format!("calls={} failed={}\n", stats.0.get(), stats.1.get());
        let mut send = respond.send_response(Response::new(()), false)?;
        send.send_data(Bytes::from(text), true)?;
        return Ok(());
    }
    let mut msg = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        msg.extend_from_slice(&chunk);
    }
    let is_grpc = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        respond.send_response(r, true)?;
        return Ok(());
    }
    let well_formed = msg.len() >= 5
        && msg[0] == 0
        && u32::from_be_bytes([msg[1], msg[2], msg[3], msg[4]]) as usize == msg.len() - 5;
    let status = if parts.uri.path() != "/pkg.Svc/Method" {
        "12"
    } else if !well_formed {
        "13"
    } else {
        "0"
    };
    let mut r = Response::new(());
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    if status == "0" {
        let mut send = respond.send_response(r, false)?;
        send.send_data(Bytes::from_static(REPLY), false)?;
        send.send_trailers(trailers)?;
        stats.0.set(stats.0.get() + 1);
    } else {
        // trailers-only, as gRPC servers answer an error
        r.headers_mut().insert("grpc-status", HeaderValue::from_static(status));
        respond.send_response(r, true)?;
        stats.1.set(stats.1.get() + 1);
    }
    Ok(())
}
