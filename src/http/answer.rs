//! An answer read back as a message: the head as an [`OwnedResponse`], the
//! body's payload in pieces, the end.
//!
//! Every answer a session gives (proxied, made by a filter, a cache hit, an
//! error) reaches its client transport as ringgate's own HTTP/1.1 form.
//! Whatever needs the answer as a message rather than as those bytes (a
//! recorder such as the cache's fill) puts the bytes through an
//! [`AnswerReader`] and receives [`AnswerSink`] calls, so it knows no
//! framing: the head is parsed by the one response parser, the body's
//! `Content-Length`, chunks or close are undone by the same code the relay
//! uses ([`ChunkedScanner`]).
//!
//! The bytes may come in writes of any size, split anywhere; interim (1xx)
//! answers come before the final one, each as a head of its own.
//!
//! Performance notes: the head is collected in the reader's buffer until
//! its blank line (a head is at most [`MAX_HEAD`] bytes) and turned into
//! owned fields once; body pieces are handed on as slices of the input.

use super::chunked::ChunkedScanner;
use super::message::OwnedResponse;
use super::name_eq;
use super::parse::{self, BodyFraming, Parsed, ResponseHead};
use std::io;

/// Longest answer head read back.
pub const MAX_HEAD: usize = 64 * 1024;

/// What receives an answer read back.
pub trait AnswerSink {
    /// A head: an interim one (1xx, more heads follow) or the final one.
    /// Framing fields (`Content-Length`, `Transfer-Encoding`) are not in
    /// it.
    fn head(&mut self, head: OwnedResponse);
    /// A piece of the final answer's body (its payload, framing undone).
    fn data(&mut self, piece: &[u8]);
    /// The final answer ended (its length reached, its last chunk read, or
    /// no body). An answer delimited by the close never gets this call:
    /// see [`AnswerReader::until_close`].
    fn end(&mut self);
}

/// Where the reader is in the answer.
enum State {
    /// Collecting a head.
    Head,
    /// `Content-Length` bytes left.
    Length(u64),
    /// A chunked body.
    Chunked(ChunkedScanner),
    /// A body delimited by the close: everything that follows.
    UntilClose,
    /// The answer ended; nothing more is expected.
    Done,
}

/// Reads an answer back from the bytes written for it.
pub struct AnswerReader {
    state: State,
    head: Vec<u8>,
    head_request: bool,
}

impl AnswerReader {
    /// A reader for the answer to a request (`head_request`: a HEAD, whose
    /// answer has no body whatever its fields say).
    pub fn new(head_request: bool) -> Self {
        AnswerReader {
            state: State::Head,
            head: Vec::new(),
            head_request,
        }
    }

    /// True once the final answer ended.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// True when the final answer's body runs until the connection closes
    /// (an HTTP/1.0 client's streamed answer): it is whole when the writer
    /// finished without an error.
    pub fn until_close(&self) -> bool {
        matches!(self.state, State::UntilClose)
    }

    /// Reads `data`, the next bytes written, calling `sink` for what they
    /// complete. Bytes after the end of the answer are ignored. An error
    /// means the bytes are not an answer (an unreadable head, bad chunks).
    pub fn feed(&mut self, mut data: &[u8], sink: &mut impl AnswerSink) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                State::Head => {
                    let from = self.head.len().saturating_sub(3);
                    self.head.extend_from_slice(data);
                    let Some(end) = blank_line(&self.head, from) else {
                        if self.head.len() > MAX_HEAD {
                            return Err(io::Error::other("answer head too large"));
                        }
                        return Ok(());
                    };
                    let rest = self.head.len() - end;
                    data = &data[data.len() - rest..];
                    self.head.truncate(end);
                    self.start(sink)?;
                    self.head.clear();
                }
                State::Length(left) => {
                    let k = (*left).min(data.len() as u64) as usize;
                    *left -= k as u64;
                    sink.data(&data[..k]);
                    data = &data[k..];
                    if *left == 0 {
                        self.state = State::Done;
                        sink.end();
                    }
                }
                State::Chunked(scan) => {
                    let used = scan
                        .scan(data, |a, b| sink.data(&data[a..b]))
                        .map_err(|e| io::Error::other(e.0))?;
                    data = &data[used..];
                    if scan.is_done() {
                        self.state = State::Done;
                        sink.end();
                    }
                }
                State::UntilClose => {
                    sink.data(data);
                    data = &[];
                }
                State::Done => data = &[],
            }
        }
        Ok(())
    }

    /// Turns the collected head into a sink call and the body's state.
    fn start(&mut self, sink: &mut impl AnswerSink) -> io::Result<()> {
        let mut rhead = ResponseHead::default();
        let mut lines = Vec::new();
        match parse::parse_response(&self.head, &mut rhead, &mut lines) {
            Ok(Parsed::Complete) => {}
            _ => return Err(io::Error::other("unreadable answer head")),
        }
        let head = &self.head[..rhead.len];
        let mut resp = OwnedResponse::new(rhead.status);
        let (_, line_end) = parse::line_content(rhead.status_line, head);
        // "HTTP/1.x NNN " is 13 bytes; the reason phrase follows.
        resp.reason = head.get(13..line_end).unwrap_or_default().to_vec();
        for l in &lines {
            let name = l.name.of(head);
            if name_eq(name, b"content-length") || name_eq(name, b"transfer-encoding") {
                continue;
            }
            resp.push(name, l.value.of(head));
        }
        let interim = (100..200).contains(&rhead.status);
        sink.head(resp);
        if interim {
            return Ok(());
        }
        self.state = match rhead.framing_for(self.head_request) {
            BodyFraming::None | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(n) => State::Length(n),
            BodyFraming::Chunked => State::Chunked(ChunkedScanner::new()),
            BodyFraming::UntilClose => State::UntilClose,
        };
        if self.is_done() {
            sink.end();
        }
        Ok(())
    }
}

/// The end of a head (just past its blank line), searching from `from`.
pub fn blank_line(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen {
        heads: Vec<OwnedResponse>,
        body: Vec<u8>,
        ends: usize,
    }

    impl AnswerSink for Seen {
        fn head(&mut self, head: OwnedResponse) {
            self.heads.push(head);
        }
        fn data(&mut self, piece: &[u8]) {
            self.body.extend_from_slice(piece);
        }
        fn end(&mut self) {
            self.ends += 1;
        }
    }

    /// Feeds `bytes` split at every position in turn, and whole.
    fn read_split(bytes: &[u8], head_request: bool) -> Vec<(Seen, bool)> {
        let mut out = Vec::new();
        for at in 0..=bytes.len() {
            let mut r = AnswerReader::new(head_request);
            let mut s = Seen::default();
            r.feed(&bytes[..at], &mut s).unwrap();
            r.feed(&bytes[at..], &mut s).unwrap();
            let done = r.is_done();
            out.push((s, done));
        }
        out
    }

    #[test]
    fn length_body_in_any_split() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhelloEXTRA";
        for (s, done) in read_split(a, false) {
            assert!(done);
            assert_eq!(s.heads.len(), 1);
            assert_eq!(s.heads[0].status, 200);
            assert_eq!(s.heads[0].reason, b"OK");
            assert_eq!(s.heads[0].headers, vec![(b"X-A".to_vec(), b"1".to_vec())]);
            assert_eq!(s.body, b"hello");
            assert_eq!(s.ends, 1);
        }
    }

    #[test]
    fn chunked_body_with_interim_head_and_trailers() {
        let a = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                  HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
        for (s, done) in read_split(a, false) {
            assert!(done);
            let statuses: Vec<u16> = s.heads.iter().map(|h| h.status).collect();
            assert_eq!(statuses, [103, 201]);
            assert!(s.heads[1].headers.is_empty(), "{:?}", s.heads[1]);
            assert_eq!(s.body, b"abcde");
            assert_eq!(s.ends, 1);
        }
    }

    #[test]
    fn no_body_for_head_204_and_304() {
        for (a, head_request) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"[..], true),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false),
            (b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", false),
        ] {
            let mut r = AnswerReader::new(head_request);
            let mut s = Seen::default();
            r.feed(a, &mut s).unwrap();
            assert!(r.is_done());
            assert_eq!((s.heads.len(), s.body.len(), s.ends), (1, 0, 1));
        }
    }

    #[test]
    fn close_delimited_body_never_ends() {
        let mut r = AnswerReader::new(false);
        let mut s = Seen::default();
        r.feed(b"HTTP/1.0 200 OK\r\n\r\nab", &mut s).unwrap();
        r.feed(b"cd", &mut s).unwrap();
        assert!(r.until_close() && !r.is_done());
        assert_eq!((s.body.as_slice(), s.ends), (&b"abcd"[..], 0));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut s = Seen::default();
        assert!(
            AnswerReader::new(false)
                .feed(b"nonsense\r\n\r\n", &mut s)
                .is_err()
        );
        let bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(AnswerReader::new(false).feed(bad_chunk, &mut s).is_err());
        let mut r = AnswerReader::new(false);
        let big = vec![b'a'; MAX_HEAD + 10];
        assert!(r.feed(b"HTTP/1.1 200 OK\r\nX: ", &mut s).is_ok());
        assert!(r.feed(&big, &mut s).is_err());
    }
}
