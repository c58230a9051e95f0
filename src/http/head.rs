//! Writing heads as slices: [`OutHead`] collects the pieces of an outgoing
//! head (ranges of the bytes read, bytes ringgate adds, constants) and
//! writes them with one vectored write, resuming after partial writes.
//!
//! Performance notes: the piece list, the iovec array and the buffer of
//! added bytes are owned by the connection and reused; adjacent ranges of
//! the source buffer are merged, so a typical forwarded head is three or
//! four iovecs however many headers it has.

use monoio::buf::IoVecBuf;
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
}

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
        for p in &self.pieces {
            match *p {
                Piece::Src(s, e) => v.extend_from_slice(&self.src[s as usize..e as usize]),
                Piece::Extra(s, e) => v.extend_from_slice(&self.extra[s as usize..e as usize]),
                Piece::Static(b) => v.extend_from_slice(b),
            }
        }
        v
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
