//! A TLS stream over a monoio `TcpStream`, driven by a rustls
//! [`Connection`] (server or client side).
//!
//! Key components: [`TlsStream`] (implements monoio's `AsyncReadRent`,
//! `AsyncWriteRent`, `Splitable` and `AsRawFd`, so the connection loop and
//! the WebSocket tunnel take it where they take a `TcpStream`), and its two
//! halves [`TlsRead`] and [`TlsWrite`].
//!
//! How it works: the TCP socket is split into monoio's owned halves at
//! once, and the rustls state sits in an `Rc<RefCell<_>>` that both halves
//! share. No borrow of it is ever held across an `.await`: the read half
//! reads ciphertext into its own buffer, then borrows the state to feed and
//! decrypt; the write half borrows it to encrypt into its own buffer, then
//! writes that buffer. So the halves can run concurrently (a tunnel's two
//! directions) on one thread without a lock. Only the write half writes to
//! the socket after the handshake: what the read half makes rustls queue
//! (a TLS 1.3 KeyUpdate answer, an alert) goes out with the next write.
//!
//! Why not monoio-rustls: it exposes no socket fd (the worker's watchdog
//! needs it for deadlines and drains), sends only the first iovec of a
//! `writev` (ringgate writes a head as a few slices), and gives no hook to
//! see the ClientHello. Here a `writev` encrypts every slice into one
//! buffer and makes one write.
//!
//! Performance notes: per connection two buffers (ciphertext in: 16 KiB +
//! one record header, ciphertext out: grown to the largest flush, kept),
//! plus what rustls holds. Plaintext is copied once out of rustls into the
//! caller's buffer (rustls decrypts in its own buffer).

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use rustls::Connection;
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

/// Ciphertext read buffer: one full TLS record (16 KiB payload plus
/// header and AEAD overhead).
const RAW_READ: usize = 16 * 1024 + 512;

/// Encrypt at most this much before writing it out.
const FLUSH_AT: usize = 64 * 1024;

/// A TLS connection over a TCP socket.
pub struct TlsStream {
    r: TlsRead,
    w: TlsWrite,
    fd: RawFd,
}

/// The read half: ciphertext in, plaintext out.
pub struct TlsRead {
    rd: OwnedReadHalf<TcpStream>,
    tls: Rc<RefCell<Connection>>,
    raw: Vec<u8>,
    eof: bool,
}

/// The write half: plaintext in, ciphertext out.
pub struct TlsWrite {
    wr: OwnedWriteHalf<TcpStream>,
    tls: Rc<RefCell<Connection>>,
    out: Vec<u8>,
    fd: RawFd,
    /// `shutdown` sent the close_notify already.
    closed: bool,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// Wraps `tcp`; the handshake is still to be done ([`Self::handshake`]).
    pub fn new(tcp: TcpStream, tls: Connection) -> Self {
        let fd = tcp.as_raw_fd();
        let (rd, wr) = tcp.into_split();
        let tls = Rc::new(RefCell::new(tls));
        TlsStream {
            r: TlsRead {
                rd,
                tls: tls.clone(),
                raw: Vec::with_capacity(RAW_READ),
                eof: false,
            },
            w: TlsWrite {
                wr,
                tls,
                out: Vec::new(),
                fd,
                closed: false,
            },
            fd,
        }
    }

    /// The rustls state (negotiated version, suite, ALPN, peer
    /// certificates). Do not hold the borrow across an `.await`.
    pub fn tls(&self) -> std::cell::Ref<'_, Connection> {
        self.r.tls.borrow()
    }

    /// Reads the first ciphertext bytes without handing them to rustls,
    /// so the caller can look at them ([`Self::first_bytes`]) before
    /// [`Self::handshake`] feeds them. `Ok(0)` is an EOF.
    pub async fn read_first(&mut self) -> io::Result<usize> {
        self.r.read_raw().await
    }

    /// What [`Self::read_first`] read.
    pub fn first_bytes(&self) -> &[u8] {
        &self.r.raw
    }

    /// Writes `bytes` on the socket as they are, unencrypted (the answer
    /// to plain HTTP on a TLS port).
    pub async fn write_plain(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        self.w.wr.write_all(bytes).await.0.map(|_| ())
    }

    /// Completes the handshake (feeding what [`Self::read_first`] read
    /// first). On a TLS error the alert rustls queued is sent before the
    /// error is returned.
    pub async fn handshake(&mut self) -> io::Result<()> {
        if !self.r.raw.is_empty() {
            if let Err(e) = self.r.feed() {
                let _ = self.w.flush_tls().await;
                return Err(e);
            }
        }
        loop {
            self.w.flush_tls().await?;
            if !self.r.tls.borrow().is_handshaking() {
                return Ok(());
            }
            match self.r.read_raw().await {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.r.feed() {
                let _ = self.w.flush_tls().await;
                return Err(e);
            }
        }
    }
}

impl TlsStream {
    /// The TCP socket and the rustls state, for a protocol that drives
    /// them itself (HTTP/2). Call after the handshake, with no read or
    /// write in flight; what rustls already decrypted stays in it.
    pub fn into_parts(self) -> io::Result<(TcpStream, Connection)> {
        let TlsStream { r, w, .. } = self;
        let w = std::mem::ManuallyDrop::new(w);
        // SAFETY: `w` is never used or dropped again (ManuallyDrop): its
        // fields are moved out once each here, and its `out` buffer (empty
        // after the handshake's flush) is the only other owned field.
        let (wr, tls_w, out) = unsafe {
            (
                std::ptr::read(&w.wr),
                std::ptr::read(&w.tls),
                std::ptr::read(&w.out),
            )
        };
        drop(out);
        drop(tls_w);
        let TlsRead { rd, tls, .. } = r;
        let tcp = rd
            .reunite(wr)
            .map_err(|_| io::Error::other("TLS stream halves do not match"))?;
        let tls = Rc::try_unwrap(tls)
            .map_err(|_| io::Error::other("TLS state still shared"))?
            .into_inner();
        Ok((tcp, tls))
    }

    /// For an idle connection whose socket became readable (a pooled
    /// upstream connection): reads what is there without blocking and
    /// feeds it to rustls. True when it was only TLS housekeeping (session
    /// tickets, a key update) and the connection is still clean; false on
    /// application data, a close_notify, an EOF or an error.
    pub fn absorb_idle(&mut self) -> bool {
        loop {
            self.r.raw.clear();
            let cap = self.r.raw.capacity();
            // SAFETY: recv writes at most `cap` bytes into the vector's
            // spare capacity; nothing else uses the socket now (the
            // connection is idle, no read is in flight).
            let n = unsafe {
                libc::recv(
                    self.fd,
                    self.r.raw.as_mut_ptr() as *mut libc::c_void,
                    cap,
                    libc::MSG_DONTWAIT,
                )
            };
            if n == 0 {
                return false;
            }
            if n < 0 {
                return io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock;
            }
            // SAFETY: recv initialised the first `n` bytes.
            unsafe { self.r.raw.set_len(n as usize) };
            if self.r.feed().is_err() {
                return false;
            }
            let mut probe = [0u8; 1];
            match self.r.tls.borrow_mut().reader().read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => return false,
            }
        }
    }
}

impl TlsRead {
    /// Reads ciphertext into `raw` (replacing what it held); `cancel`: the
    /// receive may be cancelled through it (bytes that came first are
    /// still returned).
    async fn read_raw_with(&mut self, cancel: Option<CancelHandle>) -> io::Result<usize> {
        let mut raw = std::mem::take(&mut self.raw);
        raw.clear();
        if raw.capacity() < RAW_READ {
            // Given back while the connection waited idle.
            raw.reserve_exact(RAW_READ);
        }
        let (r, raw) = match cancel {
            None => self.rd.read(raw).await,
            Some(c) => self.rd.cancelable_read(raw, c).await,
        };
        self.raw = raw;
        let n = r?;
        if n == 0 {
            self.eof = true;
            // Tells rustls the peer closed (a later read without a
            // close_notify is then an unexpected EOF).
            let _ = self.tls.borrow_mut().read_tls(&mut &[][..]);
        }
        Ok(n)
    }

    /// Reads ciphertext into `raw` (replacing what it held).
    async fn read_raw(&mut self) -> io::Result<usize> {
        self.read_raw_with(None).await
    }

    /// Hands `raw` to rustls and processes it.
    fn feed(&mut self) -> io::Result<()> {
        let mut tls = self.tls.borrow_mut();
        let mut rd = &self.raw[..];
        while !rd.is_empty() {
            tls.read_tls(&mut rd)?;
            tls.process_new_packets().map_err(tls_err)?;
        }
        self.raw.clear();
        Ok(())
    }

    /// Reads plaintext into `dst`; 0 is the end of the stream (a
    /// close_notify, or a TCP EOF: both end an HTTP connection the same
    /// way).
    async fn read_into(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        self.read_into_with(dst, None).await
    }

    /// [`Self::read_into`], the socket receive cancellable through
    /// `cancel`.
    async fn read_into_with(
        &mut self,
        dst: &mut [u8],
        cancel: Option<CancelHandle>,
    ) -> io::Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        loop {
            match self.tls.borrow_mut().reader().read(dst) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            if self.read_raw_with(cancel.clone()).await? == 0 {
                return Ok(0);
            }
            self.feed()?;
        }
    }
}

impl TlsWrite {
    /// Writes out everything rustls has queued.
    async fn flush_tls(&mut self) -> io::Result<()> {
        loop {
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            {
                let mut tls = self.tls.borrow_mut();
                while tls.wants_write() && out.len() < FLUSH_AT {
                    tls.write_tls(&mut out)?;
                }
            }
            if out.is_empty() {
                self.out = out;
                return Ok(());
            }
            let (r, out) = self.wr.write_all(out).await;
            self.out = out;
            r?;
        }
    }

    /// Encrypts `slices` (as much as rustls buffers) and writes it out;
    /// returns the plaintext bytes taken.
    async fn write_slices(&mut self, slices: &[&[u8]]) -> io::Result<usize> {
        let mut n = 0;
        {
            let mut tls = self.tls.borrow_mut();
            for s in slices {
                let k = tls.writer().write(s)?;
                n += k;
                if k < s.len() {
                    break;
                }
            }
        }
        self.flush_tls().await?;
        Ok(n)
    }

    async fn close(&mut self) -> io::Result<()> {
        self.closed = true;
        self.tls.borrow_mut().send_close_notify();
        self.flush_tls().await?;
        self.wr.shutdown().await
    }
}

/// A connection dropped without `shutdown` (the connection loop ends by
/// dropping its stream) still ends with a close_notify, sent without
/// waiting: an OpenSSL client treats a TLS connection that ends without
/// one as truncated and will not resume its session. Skipped before the
/// handshake completed (a failed handshake already sent its alert).
impl Drop for TlsWrite {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let mut tls = self.tls.borrow_mut();
        if tls.is_handshaking() {
            return;
        }
        tls.send_close_notify();
        let mut alert = [0u8; 64];
        let mut n = 0;
        while tls.wants_write() && n < alert.len() {
            match tls.write_tls(&mut &mut alert[n..]) {
                Ok(k) if k > 0 => n += k,
                _ => break,
            }
        }
        // Only a whole record: nothing if more was queued than fits.
        if n > 0 && !tls.wants_write() {
            // SAFETY: send from a stack buffer on the socket this half
            // writes to, still open (the socket half drops after this).
            unsafe {
                libc::send(
                    self.fd,
                    alert.as_ptr() as *const libc::c_void,
                    n,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                );
            }
        }
    }
}

/// The initialised bytes of an owned buffer.
fn bytes_of<T: IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: `IoBuf` guarantees `read_ptr` is valid for `bytes_init`
    // bytes while the buffer lives and is not moved; it is borrowed here.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

/// The iovecs of an owned vectored buffer, as slices.
fn iovecs_of<T: IoVecBuf>(buf: &T) -> &[libc::iovec] {
    // SAFETY: `IoVecBuf` guarantees the iovec array is valid for
    // `read_iovec_len` entries while the buffer lives; it is borrowed here.
    unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) }
}

impl AsyncReadRent for TlsRead {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let cap = buf.bytes_total();
        // SAFETY: `IoBufMut` guarantees `write_ptr` is valid for writes of
        // `bytes_total` bytes; rustls only writes into it (never reads
        // uninitialised bytes), and `set_init` covers only what it wrote.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), cap) };
        match self.read_into(dst).await {
            Ok(n) => {
                // SAFETY: `n` bytes were just written at `write_ptr`.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Fills the first iovec with room (ringgate does not read vectored
        // from clients; this keeps the trait complete).
        let n = buf.write_iovec_len();
        let ptr = buf.write_iovec_ptr();
        for i in 0..n {
            // SAFETY: `IoVecBufMut` guarantees `n` valid iovecs at `ptr`,
            // each valid for writes of `iov_len` bytes.
            let v = unsafe { *ptr.add(i) };
            if v.iov_len == 0 {
                continue;
            }
            // SAFETY: as above, for this iovec.
            let dst = unsafe { std::slice::from_raw_parts_mut(v.iov_base as *mut u8, v.iov_len) };
            return match self.read_into(dst).await {
                Ok(k) => {
                    // SAFETY: the iovecs before this one are empty, so the
                    // `k` bytes written here are the initialised total.
                    unsafe { buf.set_init(k) };
                    (Ok(k), buf)
                }
                Err(e) => (Err(e), buf),
            };
        }
        (Ok(0), buf)
    }
}

impl AsyncWriteRent for TlsWrite {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let r = self.write_slices(&[bytes_of(&buf)]).await;
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let mut slices: [&[u8]; 16] = [&[]; 16];
        let mut total = 0;
        let mut result = Ok(0);
        // Up to 16 slices per round, each round one write to the socket.
        for chunk in iovecs_of(&buf).chunks(16) {
            let mut k = 0;
            let mut want = 0;
            for v in chunk {
                // SAFETY: each iovec of an `IoVecBuf` is valid for reads
                // of `iov_len` bytes while the buffer lives.
                slices[k] =
                    unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                want += v.iov_len;
                k += 1;
            }
            match self.write_slices(&slices[..k]).await {
                Ok(n) => {
                    total += n;
                    result = Ok(total);
                    if n < want {
                        break;
                    }
                }
                Err(e) => {
                    result = if total > 0 { Ok(total) } else { Err(e) };
                    break;
                }
            }
        }
        (result, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_tls().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.close().await
    }
}

impl AsyncReadRent for TlsStream {
    fn read<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.r.read(buf)
    }

    fn readv<T: IoVecBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.r.readv(buf)
    }
}

impl CancelableAsyncReadRent for TlsStream {
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        mut buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        let cap = buf.bytes_total();
        // SAFETY: as in `TlsRead::read`: `write_ptr` is valid for writes
        // of `bytes_total` bytes, and `set_init` covers only what rustls
        // wrote.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), cap) };
        match self.r.read_into_with(dst, Some(c)).await {
            Ok(n) => {
                // SAFETY: `n` bytes were just written at `write_ptr`.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        buf: T,
        _c: CancelHandle,
    ) -> BufResult<usize, T> {
        self.r.readv(buf).await
    }
}

impl crate::http::conn::ReadReady for TlsStream {
    /// Ready at once when rustls holds plaintext (or the peer's close)
    /// not yet read; otherwise the socket's buffers are given back and the
    /// wait is on the socket's readability (which may turn out to be TLS
    /// housekeeping only: the read that follows then waits on).
    async fn read_ready(&mut self) -> io::Result<()> {
        if self.r.eof {
            return Ok(());
        }
        {
            let mut tls = self.r.tls.borrow_mut();
            match tls.process_new_packets() {
                Ok(st) if st.plaintext_bytes_to_read() > 0 || st.peer_has_closed() => {
                    return Ok(());
                }
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
        if self.r.raw.is_empty() {
            self.r.raw = Vec::new();
        }
        if self.w.out.is_empty() {
            self.w.out = Vec::new();
        }
        // SAFETY: the read half's stream is only read through `rd`, and
        // no read is in flight while the connection waits for readiness.
        let tcp = unsafe { &*self.r.rd.0.get() };
        tcp.readable(false).await
    }

    fn ready_fd(&self) -> Option<RawFd> {
        // Plaintext rustls holds is not visible on the descriptor.
        None
    }
}

impl AsyncWriteRent for TlsStream {
    fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.w.write(buf)
    }

    fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.w.writev(buf)
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        self.w.flush_tls()
    }

    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> {
        self.w.close()
    }
}

impl Splitable for TlsStream {
    type OwnedRead = TlsRead;
    type OwnedWrite = TlsWrite;

    fn into_split(self) -> (TlsRead, TlsWrite) {
        (self.r, self.w)
    }
}

impl AsRawFd for TlsStream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}
