//! The client side of HTTP/1.1, free of I/O: the request head ringgate
//! writes to a backend when it makes a request of its own
//! ([`write_request_head`]), and a response reader that is fed the bytes
//! read and parses the head and the whole body ([`ResponseReader`]).
//!
//! How it fits: `upstream::exchange` (compose parts, on a worker) reads
//! with monoio, `upstream::health` (on the control plane) with blocking
//! sockets; both drive the same reader, so a backend's answer is parsed
//! and framed the same way wherever ringgate asks. The head is parsed by
//! [`super::parse::parse_response`] and a chunked body is decoded by
//! [`super::chunked::ChunkedScanner`], as for a forwarded response.
//!
//! Performance notes: made for requests ringgate issues itself, not for
//! the plain proxy path: the reader owns its buffers (one for the head and
//! a length-delimited body, one for a de-chunked body), sized by what
//! arrives and bounded by [`MAX_RESPONSE_HEAD`] and the caller's body cap.

use super::chunked::ChunkedScanner;
use super::parse::{self, BodyFraming, HeaderLine, Parsed, ResponseHead};

/// Largest response head accepted from a backend.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Smallest free space offered to a read.
const READ_CHUNK: usize = 4096;

/// Appends a request head: the request line (`HTTP/1.1`), `Host` (`host`),
/// `extra` (whole header lines, each ending in CRLF), `Content-Length`
/// when `body_len` is `Some` and the blank line. The framing header is
/// always ringgate's own: `extra` must not carry one.
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &[u8],
    target: &[u8],
    host: &[u8],
    extra: &[u8],
    body_len: Option<usize>,
) {
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra);
    if let Some(n) = body_len {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Why a response could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The connection ended before any byte of a response (on a pooled
    /// connection: the backend had closed it).
    Nothing,
    /// The connection ended inside the head or the body.
    Truncated,
    /// The head or the body framing is not valid HTTP/1.1 (the reason).
    Invalid(&'static str),
    /// A response with this status whose body is over the cap.
    TooLarge(u16),
}

/// Where the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The head is not complete yet.
    Head,
    /// The head is parsed ([`ResponseReader::head`]); the body is not
    /// complete yet.
    Body,
    /// The whole response is read.
    Done,
}

/// Reads one response: feed it what arrives ([`ResponseReader::buf`],
/// then [`ResponseReader::advance`], or [`ResponseReader::eof`] when the
/// connection ended) until it is [`Progress::Done`]. Interim (1xx)
/// responses are skipped; a `101` is invalid (ringgate never asks for an
/// upgrade here).
pub struct ResponseReader {
    buf: Vec<u8>,
    head: ResponseHead,
    lines: Vec<HeaderLine>,
    head_request: bool,
    cap: usize,
    progress: Progress,
    framing: BodyFraming,
    /// Chunked: the decoder, where its next input starts in `buf`, and
    /// the payload so far.
    scanner: ChunkedScanner,
    scanned: usize,
    dechunked: Vec<u8>,
    /// End of the body in `buf` (length-delimited and until-close bodies).
    end: usize,
    reusable: bool,
}

impl ResponseReader {
    /// A reader for the answer to a request (`head_request`: a HEAD, whose
    /// answer has no body) whose body may be at most `cap` bytes.
    pub fn new(head_request: bool, cap: usize) -> Self {
        ResponseReader {
            buf: Vec::with_capacity(READ_CHUNK),
            head: ResponseHead::default(),
            lines: Vec::new(),
            head_request,
            cap,
            progress: Progress::Head,
            framing: BodyFraming::None,
            scanner: ChunkedScanner::new(),
            scanned: 0,
            dechunked: Vec::new(),
            end: 0,
            reusable: false,
        }
    }

    /// The buffer to append what is read to (with room for at least a few
    /// KiB); call [`ResponseReader::advance`] after each read.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(self.buf.capacity().max(READ_CHUNK));
        }
        &mut self.buf
    }

    /// The buffer, taken for a read that owns it (monoio's): append to
    /// it, give it back with [`ResponseReader::put_buf`], then call
    /// [`ResponseReader::advance`].
    pub fn take_buf(&mut self) -> Vec<u8> {
        std::mem::take(self.buf())
    }

    /// Gives back the buffer [`ResponseReader::take_buf`] lent.
    pub fn put_buf(&mut self, buf: Vec<u8>) {
        self.buf = buf;
    }

    /// Where the reader is.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// The response head, once [`Progress::Body`] is reached.
    pub fn head(&self) -> Option<&ResponseHead> {
        (self.progress != Progress::Head).then_some(&self.head)
    }

    /// Takes in the bytes appended to [`ResponseReader::buf`].
    pub fn advance(&mut self) -> Result<Progress, ReadError> {
        if self.progress == Progress::Head {
            self.parse_head()?;
        }
        if self.progress == Progress::Body {
            self.read_body()?;
        }
        Ok(self.progress)
    }

    /// The connection ended: completes a body delimited by the close,
    /// else the response is cut short.
    pub fn eof(&mut self) -> Result<Progress, ReadError> {
        match self.progress {
            Progress::Done => Ok(Progress::Done),
            Progress::Head if self.buf.is_empty() => Err(ReadError::Nothing),
            Progress::Body if self.framing == BodyFraming::UntilClose => {
                self.end = self.buf.len();
                self.progress = Progress::Done;
                Ok(Progress::Done)
            }
            _ => Err(ReadError::Truncated),
        }
    }

    fn parse_head(&mut self) -> Result<(), ReadError> {
        loop {
            if self.buf.is_empty() {
                return Ok(());
            }
            match parse::parse_response(&self.buf, &mut self.head, &mut self.lines) {
                Ok(Parsed::Complete) if self.head.status == 101 => {
                    return Err(ReadError::Invalid("upstream switched protocols unasked"));
                }
                Ok(Parsed::Complete) if (100..200).contains(&self.head.status) => {
                    // Interim response: the final one follows.
                    self.buf.drain(..self.head.len);
                }
                Ok(Parsed::Complete) => break,
                Ok(Parsed::Partial) if self.buf.len() >= MAX_RESPONSE_HEAD => {
                    return Err(ReadError::Invalid("response head from upstream too large"));
                }
                Ok(Parsed::Partial) => return Ok(()),
                Err(m) => return Err(ReadError::Invalid(m)),
            }
        }
        let h = &self.head;
        self.framing = h.framing_for(self.head_request);
        self.reusable = h.keep_alive && self.framing != BodyFraming::UntilClose;
        self.scanned = h.len;
        self.end = h.len;
        if let BodyFraming::Length(n) = self.framing
            && n > self.cap as u64
        {
            return Err(ReadError::TooLarge(h.status));
        }
        self.progress = Progress::Body;
        Ok(())
    }

    fn read_body(&mut self) -> Result<(), ReadError> {
        let hlen = self.head.len;
        let got = self.buf.len() - hlen;
        match self.framing {
            BodyFraming::None => {
                self.reusable &= got == 0;
                self.progress = Progress::Done;
            }
            BodyFraming::Length(n) => {
                // `n` is within the cap, so it fits a usize.
                let n = n as usize;
                if got >= n {
                    self.reusable &= got == n;
                    self.end = hlen + n;
                    self.progress = Progress::Done;
                }
            }
            BodyFraming::Chunked => {
                let from = self.scanned;
                let (buf, out) = (&self.buf, &mut self.dechunked);
                let k = self
                    .scanner
                    .scan(&buf[from..], |a, b| {
                        out.extend_from_slice(&buf[from + a..from + b])
                    })
                    .map_err(|e| ReadError::Invalid(e.0))?;
                if self.dechunked.len() > self.cap {
                    return Err(ReadError::TooLarge(self.head.status));
                }
                if self.scanner.is_done() {
                    self.reusable &= from + k == self.buf.len();
                    self.progress = Progress::Done;
                } else {
                    // What was scanned is decoded: keep only the head.
                    self.buf.truncate(hlen);
                    self.scanned = hlen;
                }
            }
            BodyFraming::UntilClose => {
                if got > self.cap {
                    return Err(ReadError::TooLarge(self.head.status));
                }
            }
        }
        Ok(())
    }

    /// The whole response, once [`Progress::Done`].
    pub fn finish(self) -> Response {
        let chunked = self.framing == BodyFraming::Chunked;
        let hlen = self.head.len;
        let mut buf = self.buf;
        let body_end = if chunked { hlen } else { self.end };
        buf.truncate(body_end);
        Response {
            buf,
            head: self.head,
            lines: self.lines,
            dechunked: chunked.then_some(self.dechunked),
            reusable: self.reusable,
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Response {
    /// The head, then the body when it was not chunked.
    buf: Vec<u8>,
    head: ResponseHead,
    lines: Vec<HeaderLine>,
    dechunked: Option<Vec<u8>>,
    reusable: bool,
}

impl Response {
    /// The status.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// The parsed head.
    pub fn head(&self) -> &ResponseHead {
        &self.head
    }

    /// The values of every header line called `name` (any case), in
    /// order. Framing and hop-by-hop headers are among them.
    pub fn headers<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        self.lines
            .iter()
            .filter(move |l| super::name_eq(l.name.of(&self.buf), name))
            .map(|l| l.value.of(&self.buf))
    }

    /// The first value of header `name` (any case).
    pub fn header<'a>(&'a self, name: &[u8]) -> Option<&'a [u8]> {
        self.lines
            .iter()
            .find(|l| super::name_eq(l.name.of(&self.buf), name))
            .map(|l| l.value.of(&self.buf))
    }

    /// The body (its payload, for a chunked one).
    pub fn body(&self) -> &[u8] {
        match &self.dechunked {
            Some(b) => b,
            None => &self.buf[self.head.len..],
        }
    }

    /// The body, owned.
    pub fn into_body(self) -> Vec<u8> {
        match self.dechunked {
            Some(b) => b,
            None => {
                let mut b = self.buf;
                b.drain(..self.head.len);
                b
            }
        }
    }

    /// The connection it came on may carry another request: the backend
    /// allows it and sent nothing after the response.
    pub fn reusable(&self) -> bool {
        self.reusable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes, then EOF when `close`.
    fn read(input: &[u8], step: usize, cap: usize, close: bool) -> Result<Response, ReadError> {
        let mut r = ResponseReader::new(false, cap);
        for piece in input.chunks(step) {
            r.buf().extend_from_slice(piece);
            if r.advance()? == Progress::Done {
                return Ok(r.finish());
            }
        }
        if close {
            r.eof()?;
            return Ok(r.finish());
        }
        Err(ReadError::Truncated)
    }

    #[test]
    fn request_heads_are_ringgates_own() {
        let mut out = Vec::new();
        write_request_head(&mut out, b"GET", b"/a?b", b"h:1", b"X-A: 1\r\n", None);
        assert_eq!(out, b"GET /a?b HTTP/1.1\r\nHost: h:1\r\nX-A: 1\r\n\r\n");
        out.clear();
        write_request_head(&mut out, b"POST", b"/", b"h", b"", Some(3));
        assert_eq!(
            out,
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn every_framing_reads_whole_in_any_pieces() {
        let cases: [(&[u8], &[u8], bool); 4] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
                b"hello",
                true,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n",
                b"hello",
                true,
            ),
            // No body, but no length either: the parser does not let the
            // connection be reused (as for a forwarded response).
            (b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n", b"", false),
            (b"HTTP/1.0 200 OK\r\nX-A: b\r\n\r\nhello", b"hello", false),
        ];
        for (input, body, reusable) in cases {
            for step in [1, 3, 7, input.len()] {
                let r = read(input, step, 100, true).unwrap();
                assert_eq!(r.body(), body, "{step}");
                assert_eq!(r.header(b"x-a"), Some(&b"b"[..]));
                assert_eq!(r.reusable(), reusable, "{step}");
                assert_eq!(r.into_body(), body);
            }
        }
    }

    #[test]
    fn bytes_after_the_response_make_it_not_reusable() {
        let r = read(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
            1000,
            100,
            false,
        )
        .unwrap();
        assert_eq!((r.body(), r.reusable()), (&b"ok"[..], false));
    }

    #[test]
    fn bad_answers_are_errors() {
        assert_eq!(read(b"", 1, 100, true).unwrap_err(), ReadError::Nothing);
        assert_eq!(
            read(b"HTTP/1.1 200 OK\r\nContent-Le", 4, 100, true).unwrap_err(),
            ReadError::Truncated
        );
        assert_eq!(
            read(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
                4,
                100,
                true
            )
            .unwrap_err(),
            ReadError::Truncated
        );
        assert_eq!(
            read(
                b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n",
                64,
                100,
                true
            )
            .unwrap_err(),
            ReadError::TooLarge(200)
        );
        assert_eq!(
            read(
                b"HTTP/1.1 503 x\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n",
                64,
                100,
                true
            )
            .map(|_| ())
            .unwrap_err(),
            ReadError::Truncated
        );
        let mut big = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..30 {
            big.extend_from_slice(b"5\r\nhello\r\n");
        }
        assert_eq!(
            read(&big, 16, 100, true).unwrap_err(),
            ReadError::TooLarge(200)
        );
        assert!(matches!(
            read(b"HTTP/1.1 101 Switching\r\n\r\n", 64, 100, true),
            Err(ReadError::Invalid(_))
        ));
        assert!(matches!(
            read(b"HTTTP/1.1 200 OK\r\n\r\n", 64, 100, true),
            Err(ReadError::Invalid(_))
        ));
    }

    #[test]
    fn a_head_answer_has_no_body() {
        let mut r = ResponseReader::new(true, 10);
        r.buf()
            .extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n");
        assert_eq!(r.advance(), Ok(Progress::Done));
        let r = r.finish();
        assert_eq!((r.body(), r.reusable()), (&b""[..], true));
        assert_eq!(r.head().content_length, Some(500));
    }
}
