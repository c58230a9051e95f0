//! Chunked transfer coding, scanned in place.
//!
//! [`ChunkedScanner`] walks the raw bytes of a chunked body as they stream
//! through, without copying: it finds where the body ends (so a keep-alive
//! connection knows where the next message starts), counts payload bytes
//! (for `max_body_bytes`), reports payload ranges (for clients that cannot
//! take chunked), and refuses malformed framing (bad sizes, bare CR, missing
//! CRLF after data) so nothing can be smuggled past it.

/// Longest chunk-size line (size plus extensions) accepted.
const MAX_LINE: u32 = 4096;
/// Most trailer bytes accepted.
const MAX_TRAILERS: u32 = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size { digits: u8 },
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Malformed chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

/// Incremental scanner for a chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    remaining: u64,
    line: u32,
    trailers: u32,
    /// Payload bytes seen so far.
    pub payload: u64,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        ChunkedScanner {
            state: State::Size { digits: 0 },
            size: 0,
            remaining: 0,
            line: 0,
            trailers: 0,
            payload: 0,
        }
    }

    /// True once the last chunk and trailers have been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `input`, calling `on_data(start, end)` for each payload range
    /// (offsets into `input`). Returns how many bytes belong to the body;
    /// less than `input.len()` only when the body ended inside `input`.
    pub fn scan(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(usize, usize),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size { digits } => {
                    let v = match b {
                        b'0'..=b'9' => Some(b - b'0'),
                        b'a'..=b'f' => Some(b - b'a' + 10),
                        b'A'..=b'F' => Some(b - b'A' + 10),
                        _ => None,
                    };
                    match v {
                        Some(v) => {
                            if digits >= 15 {
                                return Err(ChunkError("chunk size too large"));
                            }
                            self.size = (self.size << 4) | v as u64;
                            self.state = State::Size { digits: digits + 1 };
                        }
                        None if digits == 0 => return Err(ChunkError("invalid chunk size")),
                        None => match b {
                            b'\r' => self.state = State::SizeLf,
                            b';' | b' ' | b'\t' => {
                                self.line = 0;
                                self.state = State::Ext;
                            }
                            _ => return Err(ChunkError("invalid chunk size")),
                        },
                    }
                    i += 1;
                }
                State::Ext => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkError("chunk extension too long"));
                    }
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err(ChunkError("bare LF in chunk size line")),
                        _ => {}
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR in chunk size line"));
                    }
                    i += 1;
                    if self.size == 0 {
                        self.trailers = 0;
                        self.state = State::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.payload += self.size;
                        self.size = 0;
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let take = (input.len() - i).min(self.remaining as usize);
                    on_data(i, i + take);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("missing CRLF after chunk data"));
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("missing CRLF after chunk data"));
                    }
                    self.state = State::Size { digits: 0 };
                    i += 1;
                }
                State::TrailerStart => {
                    self.state = if b == b'\r' {
                        State::EndLf
                    } else if b == b'\n' {
                        return Err(ChunkError("bare LF in trailers"));
                    } else {
                        State::TrailerLine
                    };
                    self.trailers += 1;
                    i += 1;
                }
                State::TrailerLine => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(ChunkError("trailers too large"));
                    }
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err(ChunkError("bare LF in trailers")),
                        _ => {}
                    }
                    i += 1;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR in trailers"));
                    }
                    self.state = State::TrailerStart;
                    i += 1;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR after last chunk"));
                    }
                    self.state = State::Done;
                    i += 1;
                    return Ok(i);
                }
                State::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<(usize, Vec<u8>, bool), ChunkError> {
        let mut s = ChunkedScanner::new();
        let mut out = Vec::new();
        let n = s.scan(input, |a, b| out.extend_from_slice(&input[a..b]))?;
        Ok((n, out, s.is_done()))
    }

    #[test]
    fn whole_body() {
        let b = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (n, out, done) = all(b).unwrap();
        assert!(done);
        assert_eq!(out, b"hello world");
        assert_eq!(&b[n..], b"NEXT");
    }

    #[test]
    fn byte_by_byte() {
        let b = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut s = ChunkedScanner::new();
        let mut out = Vec::new();
        for i in 0..b.len() {
            let n = s
                .scan(&b[i..i + 1], |x, y| out.extend_from_slice(&b[i + x..i + y]))
                .unwrap();
            assert_eq!(n, 1);
        }
        assert!(s.is_done());
        assert_eq!(out, b"0123456789");
        assert_eq!(s.payload, 10);
    }

    #[test]
    fn malformed() {
        assert!(all(b"x\r\n").is_err());
        assert!(all(b"5\r\nhelloXX").is_err());
        assert!(all(b"5\rhello").is_err());
        assert!(all(b"5\nhello").is_err());
        assert!(all(b"ffffffffffffffffff\r\n").is_err());
        assert!(all(b"-1\r\n").is_err());
    }
}
