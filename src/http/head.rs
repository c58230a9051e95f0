//! Writing heads as slices: [`OutHead`] collects the pieces of an outgoing
//! head (ranges of the bytes read, bytes ringgate adds, constants) and
//! writes them with one vectored write, resuming after partial writes.
//!
//! Performance notes: the piece list, the iovec array and the buffer of
//! added bytes are owned by the connection and reused; adjacent ranges of
//! the source buffer are merged, so a typical forwarded head is three or
//! four iovecs however many headers it has. A head (with the body bytes
//! behind it) of at most [`FLAT_MAX`] bytes is copied into one reused
//! buffer and sent with a plain `send` instead: on a socket the kernel's
//! vectored-write path (iovec import, file-write bookkeeping) costs more
//! than copying a few hundred bytes.

use monoio::buf::{IoBuf, IoVecBuf};
use monoio::io::AsyncWriteRent;
use std::io;

#[derive(Debug, Clone, Copy)]
enum Piece {
    Src(u32, u32),
    Extra(u32, u32),
    Static(&'static [u8]),
}

/// An outgoing head (and any body bytes that follow it in the source
/// buffer), written with `writev`.
pub struct OutHead {
    /// The source buffer the `Src` pieces point into. Moved in before a
    /// write and taken back after it.
    pub src: Vec<u8>,
    /// Bytes ringgate adds.
    pub extra: Vec<u8>,
    pieces: Vec<Piece>,
    iov: Vec<libc::iovec>,
    pos: usize,
    /// The pieces copied into one buffer, for heads sent with `send`.
    flat: Vec<u8>,
}

/// Heads (with the body bytes behind them) up to this size are copied into
/// one buffer and sent with `send`; larger ones go out with `writev`.
pub const FLAT_MAX: usize = 4096;

impl std::fmt::Debug for OutHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutHead")
            .field("pieces", &self.pieces)
            .field("extra", &self.extra.len())
            .finish()
    }
}

impl OutHead {
    /// An empty head with room for typical requests.
    pub fn new() -> Self {
        OutHead {
            src: Vec::new(),
            extra: Vec::with_capacity(1024),
            pieces: Vec::with_capacity(64),
            iov: Vec::with_capacity(64),
            pos: 0,
            flat: Vec::new(),
        }
    }

    /// Forgets all pieces (keeps capacity).
    pub fn clear(&mut self) {
        self.pieces.clear();
        self.extra.clear();
        self.iov.clear();
        self.pos = 0;
    }

    /// Appends a range of the source buffer.
    #[inline]
    pub fn src(&mut self, start: usize, end: usize) {
        if start == end {
            return;
        }
        if let Some(Piece::Src(_, e)) = self.pieces.last_mut()
            && *e as usize == start
        {
            *e = end as u32;
            return;
        }
        self.pieces.push(Piece::Src(start as u32, end as u32));
    }

    /// Appends bytes of ringgate's own.
    #[inline]
    pub fn extra(&mut self, bytes: &[u8]) {
        let start = self.extra.len();
        self.extra.extend_from_slice(bytes);
        self.mark_extra(start);
    }

    /// Records `extra[start..]` (written directly by the caller) as the next
    /// piece.
    #[inline]
    pub fn mark_extra(&mut self, start: usize) {
        let end = self.extra.len();
        if start == end {
            return;
        }
        if let Some(Piece::Extra(_, e)) = self.pieces.last_mut()
            && *e as usize == start
        {
            *e = end as u32;
            return;
        }
        self.pieces.push(Piece::Extra(start as u32, end as u32));
    }

    /// Appends a constant.
    #[inline]
    pub fn stat(&mut self, bytes: &'static [u8]) {
        self.pieces.push(Piece::Static(bytes));
    }

    /// Total bytes in the pieces.
    pub fn len(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match *p {
                Piece::Src(s, e) | Piece::Extra(s, e) => (e - s) as usize,
                Piece::Static(b) => b.len(),
            })
            .sum()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the pieces into one contiguous buffer (tests and caches).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        self.copy_into(&mut v);
        v
    }

    fn copy_into(&self, v: &mut Vec<u8>) {
        for p in &self.pieces {
            match *p {
                Piece::Src(s, e) => v.extend_from_slice(&self.src[s as usize..e as usize]),
                Piece::Extra(s, e) => v.extend_from_slice(&self.extra[s as usize..e as usize]),
                Piece::Static(b) => v.extend_from_slice(b),
            }
        }
    }

    /// Takes the reused flat buffer with the pieces copied into it; call
    /// once `src` is in place, and put the buffer back after the write.
    fn flatten(&mut self) -> Vec<u8> {
        let mut flat = std::mem::take(&mut self.flat);
        flat.clear();
        self.copy_into(&mut flat);
        flat
    }

    /// Builds the iovec array from the pieces; call once `src` is in place.
    fn prepare(&mut self) {
        self.iov.clear();
        self.pos = 0;
        for p in &self.pieces {
            let (ptr, len) = match *p {
                Piece::Src(s, e) => (self.src[s as usize..e as usize].as_ptr(), (e - s) as usize),
                Piece::Extra(s, e) => (
                    self.extra[s as usize..e as usize].as_ptr(),
                    (e - s) as usize,
                ),
                Piece::Static(b) => (b.as_ptr(), b.len()),
            };
            if len > 0 {
                self.iov.push(libc::iovec {
                    iov_base: ptr as *mut libc::c_void,
                    iov_len: len,
                });
            }
        }
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.pos < self.iov.len() {
            let v = &mut self.iov[self.pos];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.pos += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the
                // same buffer the iovec described.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.iov.len()
    }
}

impl Default for OutHead {
    /// An empty head that owns no memory (for `std::mem::take`).
    fn default() -> Self {
        OutHead {
            src: Vec::new(),
            extra: Vec::new(),
            pieces: Vec::new(),
            iov: Vec::new(),
            pos: 0,
            flat: Vec::new(),
        }
    }
}

// SAFETY: the iovecs point into `src`, `extra` (heap buffers owned by this
// struct, not resized between `prepare` and the end of the write) and
// `'static` constants, so they stay valid wherever the struct moves while
// the kernel reads them.
unsafe impl IoVecBuf for OutHead {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.pos..].as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.iov.len() - self.pos
    }
}

/// Writes every piece of `out` to `stream`, resuming after partial writes.
pub async fn write_head<S: AsyncWriteRent>(
    stream: &mut S,
    mut out: OutHead,
) -> (io::Result<()>, OutHead) {
    if out.len() <= FLAT_MAX {
        // Only the flat buffer moves into the write, not the whole head.
        let mut flat = out.flatten();
        let mut pos = 0;
        while pos < flat.len() {
            let (res, back) = stream.write(flat.slice(pos..)).await;
            flat = back.into_inner();
            match res {
                Ok(0) => {
                    out.flat = flat;
                    return (Err(io::ErrorKind::WriteZero.into()), out);
                }
                Ok(n) => pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out.flat = flat;
                    return (Err(e), out);
                }
            }
        }
        out.flat = flat;
        return (Ok(()), out);
    }
    out.prepare();
    while !out.done() {
        let (res, o) = stream.writev(out).await;
        out = o;
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), out),
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), out),
        }
    }
    (Ok(()), out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::BufResult;
    use monoio::buf::IoBuf;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    /// Takes at most `max` bytes per write, and counts the calls.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        sends: usize,
        writevs: usize,
    }

    impl AsyncWriteRent for Trickle {
        async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
            self.sends += 1;
            // SAFETY: an IoBuf's first `bytes_init()` bytes are initialised.
            let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
            let n = data.len().min(self.max);
            self.got.extend_from_slice(&data[..n]);
            (Ok(n), buf)
        }

        async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
            self.writevs += 1;
            // SAFETY: an IoVecBuf describes valid iovecs over initialised bytes.
            let iovs =
                unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
            let mut left = self.max;
            for v in iovs {
                // SAFETY: as above.
                let d = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                let n = d.len().min(left);
                self.got.extend_from_slice(&d[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            (Ok(self.max - left), buf)
        }

        async fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }

        async fn shutdown(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn now<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the test writer never waits"),
        }
    }

    fn head(body: usize) -> (OutHead, Vec<u8>) {
        let mut out = OutHead::new();
        let mut src = b"HTTP/1.1 200 OK\r\nConnection: close\r\nA: b\r\n\r\n".to_vec();
        src.extend(std::iter::repeat_n(b'x', body));
        out.src(0, 17);
        out.extra(b"Via: 1.1 ringgate\r\n");
        out.stat(b"X-Static: 1\r\n");
        out.src(36, src.len());
        let mut want =
            b"HTTP/1.1 200 OK\r\nVia: 1.1 ringgate\r\nX-Static: 1\r\nA: b\r\n\r\n".to_vec();
        want.extend(std::iter::repeat_n(b'x', body));
        out.src = src;
        (out, want)
    }

    #[test]
    fn small_heads_are_sent_whole_and_large_ones_vectored_across_partial_writes() {
        for (body, max, flat) in [
            (13, 1 << 20, true),
            (13, 7, true),
            (FLAT_MAX - 100, 1000, true),
            (FLAT_MAX, 1 << 20, false),
            (16384, 1000, false),
        ] {
            let (out, want) = head(body);
            assert_eq!(out.to_vec(), want);
            let mut w = Trickle {
                got: Vec::new(),
                max,
                sends: 0,
                writevs: 0,
            };
            let (r, out) = now(write_head(&mut w, out));
            r.unwrap();
            assert_eq!(w.got, want, "body {body}, {max} bytes per write");
            let calls = want.len().div_ceil(max);
            if flat {
                assert_eq!((w.sends, w.writevs), (calls, 0), "body {body}");
            } else {
                assert_eq!((w.sends, w.writevs), (0, calls), "body {body}");
            }
            // The connection gets its buffers back for the next head.
            assert_eq!(out.src.len(), 44 + body);
        }
    }
}
