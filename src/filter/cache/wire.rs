//! The cache's I/O: [`Tee`] (the client side of a forward whose response
//! is recorded for storing while it passes through, and, when a stale copy
//! may stand in for a failing backend, held back until its status is
//! known), [`Sink`] (the "client" of a background refresh) and
//! [`write_stored`] (a hit: the stored head as HTTP/1 renders it, the
//! per-request lines and the stored body in one `writev`, straight from
//! the shared stored entry).

use super::store::Stored;
use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use std::io;
use std::rc::Rc;

/// What a [`Tee`] does with a final response whose status says the
/// backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Pass everything.
    Off,
    /// Waiting for the final response's status line.
    Deciding,
    /// The backend failed (status kept): swallow the response.
    Swallow(u16),
    /// The response goes to the client.
    Pass,
}

/// The client side of a forward whose response is recorded (up to a
/// bound) as it passes through. With `hold_errors`, a final response with
/// status 500, 502, 503 or 504 is swallowed instead (the caller answers
/// with a stale copy).
pub struct Tee<'a, S> {
    inner: &'a mut S,
    buf: Vec<u8>,
    limit: usize,
    overflow: bool,
    hold: Hold,
}

impl<'a, S> Tee<'a, S> {
    /// Records up to `limit` bytes of what is written to `inner`.
    pub fn new(inner: &'a mut S, limit: usize, hold_errors: bool) -> Self {
        Tee {
            inner,
            buf: Vec::new(),
            limit,
            overflow: false,
            hold: if hold_errors {
                Hold::Deciding
            } else {
                Hold::Off
            },
        }
    }

    /// What was recorded (`None` when it passed the bound), and the status
    /// of a swallowed response.
    pub fn finish(self) -> (Option<Vec<u8>>, Option<u16>) {
        let swallowed = match self.hold {
            Hold::Swallow(s) => Some(s),
            _ => None,
        };
        ((!self.overflow).then_some(self.buf), swallowed)
    }

    fn record(&mut self, data: &[u8]) {
        if self.overflow {
            return;
        }
        if self.buf.len() + data.len() > self.limit {
            self.overflow = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(data);
    }

    /// Decides on hold from the first bytes of a write (a response head
    /// always starts a write: see `proxy::forward`).
    fn decide(&mut self, first: &[u8]) {
        if self.hold != Hold::Deciding {
            return;
        }
        let status = first
            .get(9..12)
            .filter(|_| first.starts_with(b"HTTP/1."))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse::<u16>().ok());
        self.hold = match status {
            Some(s) if (100..200).contains(&s) => Hold::Deciding,
            Some(s @ (500 | 502 | 503 | 504)) => Hold::Swallow(s),
            _ => Hold::Pass,
        };
    }
}

impl<S: AsyncReadRent> AsyncReadRent for Tee<'_, S> {
    fn read<T: IoBufMut>(
        &mut self,
        buf: T,
    ) -> impl std::future::Future<Output = BufResult<usize, T>> {
        self.inner.read(buf)
    }

    fn readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
    ) -> impl std::future::Future<Output = BufResult<usize, T>> {
        self.inner.readv(buf)
    }
}

impl<S: AsyncWriteRent> AsyncWriteRent for Tee<'_, S> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: an IoBuf's first `bytes_init()` bytes at `read_ptr()` are
        // initialised and stay valid while we hold the buffer.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        self.decide(data);
        if let Hold::Swallow(_) = self.hold {
            let n = data.len();
            return (Ok(n), buf);
        }
        let (r, buf) = self.inner.write(buf).await;
        if let Ok(n) = r {
            // SAFETY: as above; the write handed the buffer back unchanged.
            let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), n) };
            self.record(data);
        }
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: an IoVecBuf describes `read_iovec_len()` valid iovecs,
        // each pointing at `iov_len` initialised bytes, valid while we hold it.
        let iovs =
            unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
        if let Some(v) = iovs.iter().find(|v| v.iov_len > 0) {
            // SAFETY: see above.
            let first = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            self.decide(first);
        }
        if let Hold::Swallow(_) = self.hold {
            let total = iovs.iter().map(|v| v.iov_len).sum();
            return (Ok(total), buf);
        }
        let (r, buf) = self.inner.writev(buf).await;
        if let Ok(mut n) = r {
            // SAFETY: the write handed the buffer back unchanged (callers
            // advance their iovecs only after it returns).
            let iovs =
                unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
            for v in iovs {
                if n == 0 {
                    break;
                }
                let k = v.iov_len.min(n);
                // SAFETY: see above.
                let s = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, k) };
                self.record(s);
                n -= k;
            }
        }
        (r, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self.hold {
            Hold::Swallow(_) => Ok(()),
            _ => self.inner.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self.hold {
            Hold::Swallow(_) => Ok(()),
            _ => self.inner.shutdown().await,
        }
    }
}

/// The "client" of a background refresh: nothing to read (the request is
/// bodiless), every write accepted and dropped (a [`Tee`] records them).
pub struct Sink;

impl AsyncReadRent for Sink {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        (Ok(0), buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        (Ok(0), buf)
    }
}

impl AsyncWriteRent for Sink {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let n = buf.bytes_init();
        (Ok(n), buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: see `Tee::writev`.
        let iovs =
            unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
        let n = iovs.iter().map(|v| v.iov_len).sum();
        (Ok(n), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A stored response on its way out: the head, the per-request lines in
/// `extra`, and the body. The iovec array is reused (see [`IovPool`]).
struct HitBuf {
    stored: Rc<Stored>,
    extra: Vec<u8>,
    iov: Vec<libc::iovec>,
    pos: usize,
}

// SAFETY: the iovecs point into `stored`'s head and body (heap buffers kept alive by
// the `Rc` this struct owns, never mutated) and `extra` (owned, not resized
// while a write is in flight); the iovec array itself is a heap buffer, so
// its address does not change when the struct moves.
unsafe impl IoVecBuf for HitBuf {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.pos..].as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.iov.len() - self.pos
    }
}

impl HitBuf {
    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.pos < self.iov.len() {
            let v = &mut self.iov[self.pos];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.pos += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the
                // buffer the iovec described.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
    }
}

/// Reusable iovec arrays for hits (so a hit allocates nothing).
#[derive(Default)]
pub struct IovPool(std::cell::RefCell<Vec<Vec<libc::iovec>>>);

/// Writes `stored` with `extra` (the per-request lines and the blank line)
/// after its head; the body is left out with `head_only`. `extra` is
/// handed back for reuse. Returns the bytes written.
pub async fn write_stored<S: AsyncWriteRent>(
    s: &mut S,
    stored: Rc<Stored>,
    extra: &mut Vec<u8>,
    head_only: bool,
    pool: &IovPool,
) -> io::Result<usize> {
    let iov = pool
        .0
        .borrow_mut()
        .pop()
        .unwrap_or_else(|| Vec::with_capacity(3));
    let mut hb = HitBuf {
        stored,
        extra: std::mem::take(extra),
        iov,
        pos: 0,
    };
    hb.iov.clear();
    let parts: [&[u8]; 3] = [
        hb.stored.h1_head(),
        &hb.extra,
        if head_only { &[] } else { &hb.stored.body },
    ];
    let mut total = 0;
    for p in parts {
        if !p.is_empty() {
            total += p.len();
            hb.iov.push(libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            });
        }
    }
    let mut result = Ok(total);
    while hb.pos < hb.iov.len() {
        let (r, back) = s.writev(hb).await;
        hb = back;
        match r {
            Ok(0) => {
                result = Err(io::ErrorKind::WriteZero.into());
                break;
            }
            Ok(n) => hb.advance(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    *extra = hb.extra;
    hb.iov.clear();
    pool.0.borrow_mut().push(hb.iov);
    result
}

impl<S: AsyncReadRent + AsyncWriteRent> crate::http::ClientIo for Tee<'_, S> {}

impl crate::http::ClientIo for Sink {}
