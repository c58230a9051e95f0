//! The cache's I/O: [`Fill`] (the client side of a forward whose answer
//! is read back as a message, its head and body kept for storing while it
//! passes through, and, when a stale copy may stand in for a failing
//! backend, held back until its status is known), [`Sink`] (the "client"
//! of a background refresh) and [`write_stored`] (a hit: the stored head as
//! HTTP/1 renders it, the per-request lines and the stored body in one
//! `writev`, straight from the shared stored entry).
//!
//! The fill knows no framing: [`AnswerReader`] turns what the forward
//! writes into the head ([`OwnedResponse`]), body pieces and the end, the
//! same way for a forwarded, composed or transcoded answer.

use super::store::Stored;
use crate::http::answer::{AnswerReader, AnswerSink};
use crate::http::message::OwnedResponse;
use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use std::io;
use std::rc::Rc;

/// What a [`Fill`] does with an answer whose status says the backend
/// failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Pass everything.
    Off,
    /// Waiting for the final answer's head: bytes are held back.
    Deciding,
    /// The backend failed (status kept): swallow the answer.
    Swallow(u16),
    /// The answer goes to the client.
    Pass,
}

/// The answer as read back, up to a bound.
struct Kept {
    limit: usize,
    head: Option<OwnedResponse>,
    body: Vec<u8>,
    overflow: bool,
    ended: bool,
    hold: Hold,
}

impl AnswerSink for Kept {
    fn head(&mut self, head: OwnedResponse) {
        if (100..200).contains(&head.status) {
            // Interim: relayed, not stored; the decision waits for the
            // final head.
            return;
        }
        if self.hold == Hold::Deciding {
            self.hold = match head.status {
                s @ (500 | 502 | 503 | 504) => Hold::Swallow(s),
                _ => Hold::Pass,
            };
        }
        self.head = Some(head);
    }

    fn data(&mut self, piece: &[u8]) {
        if self.overflow {
            return;
        }
        if self.body.len() + piece.len() > self.limit {
            self.overflow = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(piece);
    }

    fn end(&mut self) {
        self.ended = true;
    }
}

/// An answer read back whole: its head and body.
pub struct Filled {
    /// Status, reason and fields (no framing fields).
    pub head: OwnedResponse,
    /// The body's payload.
    pub body: Vec<u8>,
}

/// The client side of a forward whose answer is kept (up to a bound) as
/// it passes through. With `hold_errors`, nothing reaches the client until
/// the final answer's head is known, and an answer with status 500, 502,
/// 503 or 504 is swallowed (the caller answers with a stale copy).
pub struct Fill<'a, S> {
    inner: &'a mut S,
    reader: AnswerReader,
    kept: Kept,
    /// The bytes were not an answer: nothing is stored.
    unreadable: bool,
    /// Bytes held back while the hold is deciding.
    held: Vec<u8>,
}

impl<'a, S> Fill<'a, S> {
    /// Keeps up to `limit` bytes of the body of the answer written to
    /// `inner` (for a request that is a HEAD when `head_request`).
    pub fn new(inner: &'a mut S, limit: usize, hold_errors: bool, head_request: bool) -> Self {
        Fill {
            inner,
            reader: AnswerReader::new(head_request),
            kept: Kept {
                limit,
                head: None,
                body: Vec::new(),
                overflow: false,
                ended: false,
                hold: if hold_errors {
                    Hold::Deciding
                } else {
                    Hold::Off
                },
            },
            unreadable: false,
            held: Vec::new(),
        }
    }

    /// The answer (`None` when its body passed the bound or it did not
    /// end; `written_whole`: the writer finished it, which ends an answer
    /// delimited by the close), and the status of a swallowed one.
    pub fn finish(self, written_whole: bool) -> (Option<Filled>, Option<u16>) {
        let swallowed = match self.kept.hold {
            Hold::Swallow(s) => Some(s),
            _ => None,
        };
        let whole = self.kept.ended || (written_whole && self.reader.until_close());
        let filled = match self.kept.head {
            Some(head) if whole && !self.kept.overflow && !self.unreadable => Some(Filled {
                head,
                body: self.kept.body,
            }),
            _ => None,
        };
        (filled, swallowed)
    }

    fn read_back(&mut self, data: &[u8]) {
        if !self.unreadable && self.reader.feed(data, &mut self.kept).is_err() {
            self.unreadable = true;
            // An answer that cannot be read back cannot be judged: it
            // goes to the client.
            if self.kept.hold == Hold::Deciding {
                self.kept.hold = Hold::Pass;
            }
        }
    }
}

/// `bytes`, an answer written whole, read back as a [`Fill`] reads it
/// (for tests and the store's benchmark).
pub fn read_back(bytes: &[u8]) -> Option<Filled> {
    let mut sink = Sink;
    let mut f = Fill::new(&mut sink, usize::MAX, false, false);
    f.read_back(bytes);
    f.finish(true).0
}

impl<S: AsyncWriteRent> Fill<'_, S> {
    /// While deciding: reads `data` back and holds it; once decided,
    /// sends what was held (unless swallowed). Returns whether the bytes
    /// were taken here (the caller reports them written).
    async fn hold_back(&mut self, data: &[u8]) -> io::Result<bool> {
        if self.kept.hold != Hold::Deciding {
            return Ok(matches!(self.kept.hold, Hold::Swallow(_)));
        }
        self.read_back(data);
        match self.kept.hold {
            Hold::Deciding => self.held.extend_from_slice(data),
            Hold::Pass => {
                self.held.extend_from_slice(data);
                let held = std::mem::take(&mut self.held);
                let (r, _) = self.inner.write_all(held).await;
                r?;
            }
            _ => self.held = Vec::new(),
        }
        Ok(true)
    }
}

impl<S: AsyncReadRent> AsyncReadRent for Fill<'_, S> {
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

impl<S: AsyncWriteRent> AsyncWriteRent for Fill<'_, S> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: an IoBuf's first `bytes_init()` bytes at `read_ptr()` are
        // initialised and stay valid while we hold the buffer.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        match self.hold_back(data).await {
            Ok(true) => return (Ok(data.len()), buf),
            Ok(false) => {}
            Err(e) => return (Err(e), buf),
        }
        let (r, buf) = self.inner.write(buf).await;
        if let Ok(n) = r {
            // SAFETY: as above; the write handed the buffer back unchanged.
            let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), n) };
            self.read_back(data);
        }
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.kept.hold != Hold::Off && self.kept.hold != Hold::Pass {
            // Held back or swallowed: taken whole, piece by piece.
            // SAFETY: an IoVecBuf describes `read_iovec_len()` valid
            // iovecs, each pointing at `iov_len` initialised bytes, valid
            // while we hold it.
            let iovs =
                unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
            let mut total = 0;
            for v in iovs {
                // SAFETY: see above.
                let s = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                total += s.len();
                if let Err(e) = self.hold_back(s).await {
                    return (Err(e), buf);
                }
            }
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
                self.read_back(s);
                n -= k;
            }
        }
        (r, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self.kept.hold {
            Hold::Swallow(_) | Hold::Deciding => Ok(()),
            _ => self.inner.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self.kept.hold {
            Hold::Swallow(_) => Ok(()),
            Hold::Deciding => {
                // The answer ended before its head did: what was held goes
                // out as it is (the client sees what the forward wrote).
                let held = std::mem::take(&mut self.held);
                let (r, _) = self.inner.write_all(held).await;
                r?;
                self.inner.shutdown().await
            }
            _ => self.inner.shutdown().await,
        }
    }
}

/// The "client" of a background refresh: nothing to read (the request is
/// bodiless), every write accepted and dropped (a [`Fill`] keeps them).
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

impl<S: AsyncReadRent + AsyncWriteRent> crate::http::ClientIo for Fill<'_, S> {}

impl crate::http::ClientIo for Sink {}
