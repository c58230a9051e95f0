//! Chunked transfer coding, scanned in place.
//!
//! [`ChunkedScanner`] walks the raw bytes of a chunked body as they stream
//! through, without copying: it finds where the body ends (so a keep-alive
//! connection knows where the next message starts), counts payload bytes
//! (for `max_body_bytes`), reports payload ranges (for clients that cannot
//! take chunked), and refuses malformed framing (bad sizes, bare CR, missing
//! CRLF after data) so nothing can be smuggled past it.

use super::head::OutHead;

/// Longest chunk-size line (size plus extensions) accepted.
const MAX_LINE: u32 = 4096;
/// Most trailer bytes accepted.
const MAX_TRAILERS: u32 = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size {
        digits: u8,
    },
    SizeWs,
    /// In an extension (RFC 9112 7.1.1), at `part`.
    Ext(Ext),
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

/// Where a chunk extension's grammar is: `*( BWS ";" BWS name [ BWS "="
/// BWS ( token / quoted-string ) ] )`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// After `;`, before the name.
    NameStart,
    Name,
    /// After the name (whitespace).
    AfterName,
    /// After `=`, before the value.
    ValueStart,
    Token,
    Quoted,
    QuotedEscape,
    /// After a value (whitespace).
    AfterValue,
}

/// Malformed chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

/// Incremental scanner for a chunked body.
///
/// Strict where a lenient reading could differ from another parser's: a
/// size line is hex digits, optional whitespace and `;` extensions without
/// control characters; every line ends in CRLF; each trailer line is a
/// valid header field line (name `:` value), never folded. Trailer lines
/// are kept (see [`ChunkedScanner::trailers`]) so a re-framed body can
/// carry the allowed ones.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    remaining: u64,
    line: u32,
    trailer_bytes: u32,
    /// The trailer line being read.
    tline: Vec<u8>,
    /// Complete, valid trailer lines, each ending in CRLF.
    tdone: Vec<u8>,
    /// Payload bytes seen so far.
    pub payload: u64,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

/// A token character (RFC 9110 5.6.2).
#[inline]
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A valid header field line without its line end: `token ":" OWS value`
/// whose value has no control character but HTAB.
pub fn valid_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && line[..colon].iter().all(|&b| is_tchar(b))
        && line[colon + 1..]
            .iter()
            .all(|&b| b == b'\t' || b >= 0x20 && b != 0x7f)
}

impl ChunkedScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        ChunkedScanner {
            state: State::Size { digits: 0 },
            size: 0,
            remaining: 0,
            line: 0,
            trailer_bytes: 0,
            tline: Vec::new(),
            tdone: Vec::new(),
            payload: 0,
        }
    }

    /// True once the last chunk and trailers have been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The trailer lines seen so far, each `Name: value\r\n` (checked).
    pub fn trailers(&self) -> &[u8] {
        &self.tdone
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
                        None => {
                            self.line = 0;
                            match b {
                                b'\r' => self.state = State::SizeLf,
                                b';' => self.state = State::Ext(Ext::NameStart),
                                b' ' | b'\t' => self.state = State::SizeWs,
                                _ => return Err(ChunkError("invalid chunk size line")),
                            }
                        }
                    }
                    i += 1;
                }
                State::SizeWs => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkError("chunk size line too long"));
                    }
                    match b {
                        b' ' | b'\t' => {}
                        b';' => self.state = State::Ext(Ext::NameStart),
                        b'\r' => self.state = State::SizeLf,
                        _ => return Err(ChunkError("invalid chunk size line")),
                    }
                    i += 1;
                }
                State::Ext(part) => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkError("chunk extension too long"));
                    }
                    let ws = b == b' ' || b == b'\t';
                    let next = match (part, b) {
                        (Ext::Quoted, b'"') => Ext::AfterValue,
                        (Ext::Quoted, b'\\') => Ext::QuotedEscape,
                        (Ext::Quoted | Ext::QuotedEscape, _)
                            if b == b'\t' || (b >= 0x20 && b != 0x7f) =>
                        {
                            Ext::Quoted
                        }
                        (Ext::Quoted | Ext::QuotedEscape, _) => {
                            return Err(ChunkError("invalid quoted chunk extension value"));
                        }
                        (Ext::NameStart | Ext::ValueStart, _) if ws => part,
                        (Ext::NameStart | Ext::Name, _) if is_tchar(b) => Ext::Name,
                        (Ext::ValueStart, b'"') => Ext::Quoted,
                        (Ext::ValueStart | Ext::Token, _) if is_tchar(b) => Ext::Token,
                        (Ext::Name | Ext::AfterName, b'=') => Ext::ValueStart,
                        (Ext::Name | Ext::AfterName | Ext::Token | Ext::AfterValue, _) if ws => {
                            if part == Ext::Name {
                                Ext::AfterName
                            } else if part == Ext::Token {
                                Ext::AfterValue
                            } else {
                                part
                            }
                        }
                        (Ext::Name | Ext::AfterName | Ext::Token | Ext::AfterValue, b';') => {
                            Ext::NameStart
                        }
                        (Ext::Name | Ext::AfterName | Ext::Token | Ext::AfterValue, b'\r') => {
                            self.state = State::SizeLf;
                            i += 1;
                            continue;
                        }
                        _ => return Err(ChunkError("invalid chunk extension")),
                    };
                    self.state = State::Ext(next);
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR in chunk size line"));
                    }
                    i += 1;
                    if self.size == 0 {
                        self.trailer_bytes = 0;
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
                    self.state = match b {
                        b'\r' => State::EndLf,
                        b'\n' => return Err(ChunkError("bare LF in trailers")),
                        b' ' | b'\t' => return Err(ChunkError("folded trailer line")),
                        _ => {
                            self.tline.clear();
                            self.tline.push(b);
                            State::TrailerLine
                        }
                    };
                    self.trailer_bytes += 1;
                    i += 1;
                }
                State::TrailerLine => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ChunkError("trailers too large"));
                    }
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err(ChunkError("bare LF in trailers")),
                        _ => self.tline.push(b),
                    }
                    i += 1;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR in trailers"));
                    }
                    if !valid_field_line(&self.tline) {
                        return Err(ChunkError("invalid trailer line"));
                    }
                    self.tdone.extend_from_slice(&self.tline);
                    self.tdone.extend_from_slice(b"\r\n");
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

    /// Scans `input` (which sits at `base` in `out.src`) and appends its
    /// re-framed form to `out`: each payload range as a chunk whose size
    /// line ringgate writes, no extensions, and once the body ends the last
    /// chunk with the trailer lines whose names are in `allow` (lower-case).
    /// Returns what [`ChunkedScanner::scan`] returns.
    pub fn reframe(
        &mut self,
        input: &[u8],
        base: usize,
        out: &mut OutHead,
        allow: &[Box<[u8]>],
    ) -> Result<usize, ChunkError> {
        let k = self.scan(input, |a, b| {
            let start = out.extra.len();
            push_hex(&mut out.extra, (b - a) as u64);
            out.extra.extend_from_slice(b"\r\n");
            out.mark_extra(start);
            out.src(base + a, base + b);
            out.stat(b"\r\n");
        })?;
        if self.is_done() {
            out.stat(b"0\r\n");
            if !allow.is_empty() {
                for line in self.tdone.split_inclusive(|&b| b == b'\n') {
                    let colon = line.iter().position(|&b| b == b':').unwrap_or(0);
                    let name = &line[..colon];
                    if allow.iter().any(|a| name.eq_ignore_ascii_case(a)) {
                        out.extra(line);
                    }
                }
            }
            out.stat(b"\r\n");
        }
        Ok(k)
    }
}

fn push_hex(v: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    v.extend_from_slice(&digits[i..]);
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
        // Junk after the size, control characters in an extension.
        assert!(all(b"5 junk\r\nhello\r\n0\r\n\r\n").is_err());
        assert!(all(b"5;a=\x00\r\nhello\r\n0\r\n\r\n").is_err());
        assert!(all(b"5;a=\"x\nb\"\r\nhello\r\n0\r\n\r\n").is_err());
        // Trailers: a request line, a folded line, a bare LF.
        assert!(all(b"0\r\nGET /x HTTP/1.1\r\n\r\n").is_err());
        assert!(all(b"0\r\nA: 1\r\n b\r\n\r\n").is_err());
        assert!(all(b"0\r\nA: 1\n\r\n").is_err());
        // Extensions follow the RFC grammar: a token name, an optional
        // token or quoted value.
        for bad in [
            &b"5;\r\n"[..],
            b"5;a b\r\n",
            b"5;naoher: 1\r\n",
            b"5;a=\"x\r\n",
            b"5;=v\r\n",
            b"5;a=\r\n",
            b"5;a=b c\r\n",
        ] {
            let mut v = bad.to_vec();
            v.extend_from_slice(b"hello\r\n0\r\n\r\n");
            assert!(all(&v).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        for good in [
            &b"5 ;a=b"[..],
            b"5;a",
            b"5; a = b ; c",
            b"5;a=\"x y\\\"z\"",
            b"5;a=\"\";b=c",
        ] {
            let mut v = good.to_vec();
            v.extend_from_slice(b"\r\nhello\r\n0\r\nX-T: 1\r\n\r\n");
            assert!(all(&v).unwrap().2, "{:?}", String::from_utf8_lossy(good));
        }
    }

    #[test]
    fn reframed_with_own_sizes_and_allowed_trailers() {
        let b = b"5;ext=1\r\nhello\r\n06\r\n world\r\n0\r\nX-Sum: 9\r\nX-Other: 1\r\n\r\nNEXT";
        let mut s = ChunkedScanner::new();
        let mut out = OutHead::new();
        let allow: Vec<Box<[u8]>> = vec![b"x-sum".to_vec().into()];
        let n = s.reframe(b, 0, &mut out, &allow).unwrap();
        out.src = b.to_vec();
        assert_eq!(&b[n..], b"NEXT");
        assert_eq!(
            out.to_vec(),
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 9\r\n\r\n".to_vec()
        );
    }
}
