//! Pins "no per-request heap allocation on the plain proxy path": a counting
//! global allocator counts allocations made on gateway worker threads while
//! many keep-alive requests are proxied, after a warm-up.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

#[global_allocator]
static GLOBAL: support::alloc_count::Counting = support::alloc_count::Counting;

/// The counter is process-wide: the tests here take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A keep-alive backend answering every request with a fixed response.
fn backend() -> std::net::SocketAddr {
    support::raw::serve_connections(serve)
}

fn serve(mut s: TcpStream) {
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..p + 4);
            let resp =
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
            if s.write_all(resp).is_err() {
                return;
            }
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// One keep-alive `GET` answered `200 OK` with the 5-byte body of
/// [`backend`].
fn request(s: &mut TcpStream, buf: &mut [u8]) {
    support::raw::exchange(
        s,
        b"GET /items/42?x=1 HTTP/1.1\r\nHost: api.test\r\nUser-Agent: alloc-test\r\nAccept: */*\r\n\r\n",
        buf,
        5,
        b"HTTP/1.1 200 OK",
    );
}

/// One worker with counted allocations, in front of [`backend`]:
/// `GET /items/{id}` is proxied.
fn gateway() -> ringgate::runtime::ServerHandle {
    let b = backend();
    let cfg = ringgate::config::Config::parse(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
pin = false
[upstreams.items]
targets = ["{b}"]
[[routes]]
name = "items"
path = "/items/{{id}}"
methods = ["GET"]
upstream = "items"
"#
    ))
    .unwrap();
    ringgate::runtime::Server::start_with(cfg, support::alloc_count::hooks()).unwrap()
}

#[test]
fn plain_proxy_path_does_not_allocate_per_request() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let gw = gateway();
    let mut s = TcpStream::connect(gw.local_addrs()[0]).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 4096];
    for _ in 0..500 {
        request(&mut s, &mut buf);
    }
    support::alloc_count::counting(true);
    const N: u64 = 5000;
    for _ in 0..N {
        request(&mut s, &mut buf);
    }
    support::alloc_count::counting(false);
    let allocs = support::alloc_count::allocs();
    assert_eq!(
        allocs, 0,
        "{allocs} allocations on the worker over {N} proxied requests"
    );

    // The counter does see the worker: a new connection allocates its
    // buffers (once per connection, not per request).
    support::alloc_count::counting(true);
    let mut s2 = TcpStream::connect(gw.local_addrs()[0]).unwrap();
    request(&mut s2, &mut buf);
    support::alloc_count::counting(false);
    assert!(
        support::alloc_count::allocs() > 0,
        "allocation counter saw nothing"
    );
}

/// A new connection takes over the buffers of one that finished: with a
/// spare state on the worker, accepting and serving a connection and one
/// request costs about 8 allocations (its task, its turn's futures, its
/// socket's runtime entry and the like) where a fresh state's buffers make
/// it 17.
#[test]
fn a_new_connection_reuses_a_finished_connections_buffers() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let gw = gateway();
    let addr = gw.local_addrs()[0];
    let mut buf = vec![0u8; 4096];
    let one_connection = |buf: &mut [u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        request(&mut s, buf);
        s.shutdown(std::net::Shutdown::Both).unwrap();
        // Wait until the gateway has closed its side (the state is then
        // back with the worker).
        let _ = s.read(&mut [0u8; 1]);
    };
    // Warm-up: pooled upstream connection, runtime tables, one spare.
    for _ in 0..20 {
        one_connection(&mut buf);
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    support::alloc_count::counting(true);
    const N: u64 = 50;
    for _ in 0..N {
        one_connection(&mut buf);
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    support::alloc_count::counting(false);
    let per = support::alloc_count::allocs() as f64 / N as f64;
    eprintln!("allocations per new connection with a spare state: {per:.1}");
    assert!(per <= 9.0, "{per:.1} allocations per new connection");
}
