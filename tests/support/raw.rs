//! Pieces for tests that run their own socket-level backends and clients
//! instead of `MockUpstream` and `Client`: a thread-per-connection server,
//! a minimal response type, and an allocation-free request/response
//! exchange for the allocation-counting tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

/// Binds `127.0.0.1:0` and hands every accepted connection to `serve` on a
/// thread of its own; the accept loop ends at the first accept error.
/// Returns the bound address.
pub fn serve_connections(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let serve = Arc::new(serve);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let serve = serve.clone();
            thread::spawn(move || serve(s));
        }
    });
    addr
}

/// A response as a hand-rolled client read it: status, headers in order
/// and the body as text.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A header that must be present and hold a whole number.
    pub fn num(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} in {self:?}"))
            .parse()
            .unwrap()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The backend's echo of a header it received (a body of
    /// `Name: value` lines).
    pub fn echoed(&self, name: &str) -> Option<String> {
        self.body.lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then(|| v.to_string())
        })
    }
}

/// Writes `request` on `s`, then reads into `buf` until a response head and
/// `body_len` bytes after it have arrived; asserts the response starts with
/// `status_line` and returns the bytes read. Allocates nothing unless the
/// assertion fails.
pub fn exchange<'a>(
    s: &mut TcpStream,
    request: &[u8],
    buf: &'a mut [u8],
    body_len: usize,
    status_line: &[u8],
) -> &'a [u8] {
    s.write_all(request).unwrap();
    let mut got = 0;
    loop {
        let n = s.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "gateway closed the connection");
        got += n;
        if let Some(p) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n")
            && got >= p + 4 + body_len
        {
            assert!(
                buf[..got].starts_with(status_line),
                "{}",
                String::from_utf8_lossy(&buf[..got])
            );
            return &buf[..got];
        }
    }
}
