//! The byte streams HTTP/2 runs over: the h2 crate drives poll-style
//! (tokio) I/O, so a connection served as HTTP/2 leaves monoio's
//! completion-style I/O for its poll-style form (`TcpStreamPoll`), and a TLS
//! one keeps its rustls state in [`PollTls`].
//!
//! Key components: [`Io`] (plain or TLS), [`PollTls`] (rustls over a polled
//! socket), [`Prefixed`] (bytes read before the switch, replayed first).

use monoio::net::TcpStream;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Ciphertext read at once: one full TLS record.
const RAW_READ: usize = 16 * 1024 + 512;

/// A client connection HTTP/2 is served over.
pub enum Io {
    /// Plain TCP (h2c).
    Plain(TcpStreamPoll),
    /// TLS (ALPN `h2`).
    Tls(Box<PollTls>),
}

impl Io {
    /// The plain socket in poll-style form.
    pub fn plain(tcp: TcpStream) -> io::Result<Io> {
        tcp.try_into_poll_io().map(Io::Plain).map_err(|(e, _)| e)
    }

    /// A handshaken TLS connection in poll-style form.
    pub fn tls(tls: crate::tls::stream::TlsStream) -> io::Result<Io> {
        let (tcp, conn) = tls.into_parts()?;
        let tcp = tcp.try_into_poll_io().map_err(|(e, _)| e)?;
        Ok(Io::Tls(Box::new(PollTls {
            tcp,
            tls: conn,
            out: Vec::new(),
            out_at: 0,
            eof: false,
            // Unknown until rustls is next asked: what the handshake's
            // reads left is read as usual.
            plain: usize::MAX,
        })))
    }
}

/// rustls over a polled socket.
pub struct PollTls {
    tcp: TcpStreamPoll,
    tls: rustls::Connection,
    /// Ciphertext not yet written (from `out_at`).
    out: Vec<u8>,
    out_at: usize,
    eof: bool,
    /// Plaintext rustls holds, as its last `process_new_packets` said,
    /// less what was read since: a read zeroes only that much of the
    /// caller's buffer (the h2 crate hands a fresh, uninitialised one of
    /// several KiB to every read, which zeroing whole cost more than the
    /// decryption).
    plain: usize,
}

impl PollTls {
    /// Moves what rustls has to send into `out`.
    fn encrypt(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.out)?;
        }
        Ok(())
    }

    /// Writes `out` to the socket.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        // Written whole: a large buffer is not kept for an idle connection.
        if self.out.capacity() > 64 * 1024 {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for PollTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // With nothing known to be there, one byte's room still shows
            // a clean close (0) apart from no data yet (WouldBlock).
            let want = buf.remaining().min(this.plain.max(1));
            match this.tls.reader().read(buf.initialize_unfilled_to(want)) {
                Ok(n) => {
                    this.plain = this.plain.saturating_sub(n);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.plain = 0,
                // A TCP close without close_notify ends HTTP/2 the same way.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // What reading made rustls queue (a key update's answer) goes
            // out when it can; the read does not wait for it.
            this.encrypt()?;
            if let Poll::Ready(Err(e)) = this.poll_out(cx) {
                return Poll::Ready(Err(e));
            }
            // The ciphertext is read into the stack (a poll-style read
            // completes within the call, or not at all), so an idle
            // connection holds no read buffer.
            let mut raw = [std::mem::MaybeUninit::<u8>::uninit(); RAW_READ];
            let mut rb = ReadBuf::uninit(&mut raw);
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                this.eof = true;
                let _ = this.tls.read_tls(&mut &[][..]);
                continue;
            }
            let mut rd = rb.filled();
            while !rd.is_empty() {
                this.tls.read_tls(&mut rd)?;
                match this.tls.process_new_packets() {
                    Ok(state) => this.plain = state.plaintext_bytes_to_read(),
                    Err(e) => {
                        // The alert rustls queued, if the socket takes it now.
                        let _ = this.encrypt();
                        let _ = this.poll_out(cx);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
            }
        }
    }
}

impl AsyncWrite for PollTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Ciphertext of the last write first: what is buffered stays
        // bounded by one write.
        ready!(this.poll_out(cx))?;
        let n = this.tls.writer().write(data)?;
        this.encrypt()?;
        if let Poll::Ready(Err(e)) = this.poll_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.encrypt()?;
        this.poll_out(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tls.send_close_notify();
        this.encrypt()?;
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        matches!(self, Io::Plain(_))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// A stream whose first bytes were read already (the client preface the
/// HTTP/1 loop looked at): they are read again first.
pub struct Prefixed<T> {
    pre: Vec<u8>,
    at: usize,
    io: T,
}

impl<T> Prefixed<T> {
    /// `pre` first, then `io`.
    pub fn new(pre: Vec<u8>, io: T) -> Self {
        Prefixed { pre, at: 0, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.pre.len() {
            let n = (this.pre.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.pre[this.at..this.at + n]);
            this.at += n;
            if this.at == this.pre.len() {
                this.pre = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
