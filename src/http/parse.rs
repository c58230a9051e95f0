//! Request and response heads, parsed in place.
//!
//! httparse finds the request line and header lines; this module turns them
//! into [`Span`]s (offsets into the connection buffer, so the borrow of the
//! buffer ends with the parse) and decides, in one pass over the headers,
//! everything the proxy needs: body framing, keep-alive, upgrade, expect,
//! the headers to drop when forwarding, and the headers ringgate rewrites.
//! Ambiguous framing is refused here, before any byte reaches a backend.

use super::{name_eq, tokens};
use std::mem::MaybeUninit;

/// A byte range in a connection buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// Start offset.
    pub start: u32,
    /// End offset (exclusive).
    pub end: u32,
}

impl Span {
    /// The bytes of this span in `buf`.
    #[inline]
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    /// True when empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    #[inline]
    fn within(outer: &[u8], inner: &[u8]) -> Span {
        let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + inner.len()) as u32,
        }
    }
}

/// What a header is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRole {
    /// Forwarded unchanged.
    Forward,
    /// Hop-by-hop or rewritten by ringgate: not forwarded as is.
    Drop,
    /// `X-Request-Id` (forwarded; its presence is remembered).
    RequestId,
    /// Removed by a filter ([`crate::http::message`]): not forwarded, and
    /// no longer part of the message filters see.
    Removed,
}

impl HeaderRole {
    /// True when the line goes out as read.
    #[inline]
    pub fn forwarded(self) -> bool {
        matches!(self, HeaderRole::Forward | HeaderRole::RequestId)
    }
}

/// One header line: the whole line (name through CRLF) and the value.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLine {
    /// Name through the end of the line, including CRLF (or LF).
    pub line: Span,
    /// Header name.
    pub name: Span,
    /// Header value.
    pub value: Span,
    /// What the proxy does with it.
    pub role: HeaderRole,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFraming {
    /// No body.
    #[default]
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (final coding).
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// Why a request head was refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400 with this reason.
    Bad(&'static str),
    /// 431: too many headers.
    TooManyHeaders,
    /// 414.
    UriTooLong,
    /// 417: an expectation other than 100-continue.
    Expectation,
    /// 501: a transfer coding ringgate cannot frame.
    NotImplemented(&'static str),
    /// 505: an HTTP version ringgate does not serve on this connection
    /// (see [`downgrade_minor`] for 1.x above 1.1).
    Version,
}

impl HeadError {
    /// The status code sent for this error.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Bad(_) => 400,
            HeadError::TooManyHeaders => 431,
            HeadError::UriTooLong => 414,
            HeadError::Expectation => 417,
            HeadError::NotImplemented(_) => 501,
            HeadError::Version => 505,
        }
    }
    /// Text for the JSON error body.
    pub fn message(&self) -> &'static str {
        match self {
            HeadError::Bad(m) => m,
            HeadError::TooManyHeaders => "too many request headers",
            HeadError::UriTooLong => "request target too long",
            HeadError::Expectation => "only 'Expect: 100-continue' is supported",
            HeadError::NotImplemented(m) => m,
            HeadError::Version => "HTTP version not supported on this connection",
        }
    }
}

/// Most header names listed in `Connection` that are remembered for removal.
pub const MAX_CONNECTION_TOKENS: usize = 16;

/// Names listed in a `Connection` header (to be dropped when forwarding).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionTokens {
    len: u8,
    names: [Span; MAX_CONNECTION_TOKENS],
}

impl ConnectionTokens {
    fn push(&mut self, s: Span) -> bool {
        if (self.len as usize) < MAX_CONNECTION_TOKENS {
            self.names[self.len as usize] = s;
            self.len += 1;
            true
        } else {
            false
        }
    }
    /// Marks every header named in `Connection` as hop-by-hop.
    fn drop_listed(&self, buf: &[u8], lines: &mut [HeaderLine]) {
        if self.len == 0 {
            return;
        }
        for l in lines.iter_mut() {
            if self.contains(buf, l.name.of(buf)) {
                l.role = HeaderRole::Drop;
            }
        }
    }

    fn contains(&self, buf: &[u8], name: &[u8]) -> bool {
        self.names[..self.len as usize]
            .iter()
            .any(|s| s.of(buf).eq_ignore_ascii_case(name))
    }
}

/// A parsed request head. Spans point into the connection's read buffer.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    /// Length of the head, including the blank line.
    pub len: usize,
    /// Method token.
    pub method: Span,
    /// The target as sent.
    pub target: Span,
    /// Path and query to forward (origin-form).
    pub path_query: Span,
    /// Path only (what routing sees).
    pub path: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Host header value, or the authority of an absolute-form target.
    pub host: Option<Span>,
    /// Body framing.
    pub framing: BodyFraming,
    /// Client wants the connection kept open.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// Upgrade requested (`Upgrade` + `Connection: upgrade`).
    pub upgrade: Option<Span>,
    /// `X-Forwarded-For` value to extend.
    pub forwarded_for: Option<Span>,
    /// `Via` value to extend.
    pub via: Option<Span>,
    /// `X-Request-Id` value, when acceptable.
    pub request_id: Option<Span>,
    /// `traceparent` value (replaced with the gateway's span when forwarded).
    pub traceparent: Option<Span>,
    /// HEAD request (no response body).
    pub is_head: bool,
    /// Safe to send twice (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
    pub idempotent: bool,
    /// `host` is the authority of an absolute-form target: the client's
    /// `Host` lines are dropped and ringgate writes this one.
    pub host_from_target: bool,
    /// The client sent `Content-Length: 0` (forwarded as such, so a backend
    /// that wants a length on a POST gets one).
    pub zero_length: bool,
    /// Some line of the head ended with a bare LF: the forwarded head is
    /// rewritten with CRLF line ends instead of sent as slices.
    pub bare_lf: bool,
    /// `Forwarded` value (replaced, or extended from a trusted proxy).
    pub forwarded: Option<Span>,
    /// `X-Real-IP` value (replaced, or kept from a trusted proxy).
    pub real_ip: Option<Span>,
}

/// Request parsing choices that come from the config.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Most header lines (431 above).
    pub max_headers: usize,
    /// Longest request target (414 above).
    pub max_uri: usize,
    /// Forward header names containing `_` (`server.underscores_in_headers`);
    /// dropped when false.
    pub underscores: bool,
}

/// A parsed response head.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    /// Length of the head, including the blank line.
    pub len: usize,
    /// Status code.
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The status line, including its line end.
    pub status_line: Span,
    /// Body framing (before HEAD/1xx/204/304 are considered: see
    /// [`ResponseHead::framing_for`]).
    pub framing: BodyFraming,
    /// The backend allows reuse of the connection.
    pub keep_alive: bool,
    /// The response carries an `X-Request-Id`.
    pub has_request_id: bool,
    /// The `Content-Length` value, whatever the framing (a HEAD or 304
    /// answer states the length of the body it does not carry).
    pub content_length: Option<u64>,
    /// Some line of the head ended with a bare LF (rewritten with CRLF).
    pub bare_lf: bool,
    /// A filter changed the status ([`crate::http::message::ResponseHeader::set_status`]):
    /// the status line is written anew from `status`.
    pub status_rewritten: bool,
}

impl ResponseHead {
    /// Body framing given the request method.
    pub fn framing_for(&self, head_request: bool) -> BodyFraming {
        if head_request
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            BodyFraming::None
        } else {
            self.framing
        }
    }
}

/// Outcome of trying to parse a head from the bytes read so far.
pub enum Parsed {
    /// A complete head.
    Complete,
    /// Need more bytes.
    Partial,
}

fn line_span(buf: &[u8], name: &[u8], value: &[u8]) -> (Span, bool) {
    let start = name.as_ptr() as usize - buf.as_ptr() as usize;
    let mut end = start + name.len();
    if !value.is_empty() {
        end = value.as_ptr() as usize - buf.as_ptr() as usize + value.len();
    }
    // httparse has validated the line; skip trailing whitespace and CR to LF.
    while end < buf.len() && buf[end] != b'\n' {
        end += 1;
    }
    let bare = buf.get(end.wrapping_sub(1)) != Some(&b'\r');
    (
        Span {
            start: start as u32,
            end: (end + 1) as u32,
        },
        bare,
    )
}

/// Pushes a header line; returns true when it ended with a bare LF.
fn push_line(
    lines: &mut Vec<HeaderLine>,
    buf: &[u8],
    name: &[u8],
    value: &[u8],
    role: HeaderRole,
) -> bool {
    let (line, bare) = line_span(buf, name, value);
    lines.push(HeaderLine {
        line,
        name: Span::within(buf, name),
        value: Span::within(buf, value),
        role,
    });
    bare
}

/// The bytes of a header line without its line end (CRLF or bare LF): what
/// a head rewritten with CRLF line ends carries of it.
#[inline]
pub fn line_content(line: Span, buf: &[u8]) -> (usize, usize) {
    let start = line.start as usize;
    let mut end = line.end as usize - 1;
    if end > start && buf[end - 1] == b'\r' {
        end -= 1;
    }
    (start, end)
}

/// True when `v` is a `Host` value ringgate forwards: a host name, an IPv4
/// address or a bracketed IPv6 literal, with an optional port; empty is
/// allowed (a request whose target has no authority). No user info, no
/// spaces, no list.
pub fn valid_host(v: &[u8]) -> bool {
    if v.first() == Some(&b'[') {
        return valid_ip_literal(v);
    }
    // One pass: host bytes, at most one `:`, and only digits after it.
    let mut colon = usize::MAX;
    for (i, &b) in v.iter().enumerate() {
        if !HOST_CHARS[b as usize] {
            if b != b':' || colon != usize::MAX {
                return false;
            }
            colon = i;
        }
    }
    colon == usize::MAX || {
        let port = &v[colon + 1..];
        port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
    }
}

#[cold]
fn valid_ip_literal(v: &[u8]) -> bool {
    let Some(close) = v.iter().position(|&b| b == b']') else {
        return false;
    };
    let lit = &v[1..close];
    if lit.is_empty()
        || !lit
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    {
        return false;
    }
    match &v[close + 1..] {
        [] => true,
        [b':', p @ ..] => p.len() <= 5 && p.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// The bytes of a host name or IPv4 address (letters, digits, `-._~`;
/// no percent-encoding, no sub-delimiters such as `,`).
static HOST_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    t
};

/// For a request line httparse refused for its version: when it is HTTP/1.x
/// with x above 1, rewrites the version digit in place to `1` (served as
/// 1.1) and returns `Ok`; `Err(Version)` for 2.0 and above (and 0.9), so the
/// caller answers 505; `Err(Bad)` when the line is not a request line at all.
pub fn downgrade_minor(buf: &mut [u8]) -> Result<(), HeadError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return Err(HeadError::Bad("malformed request line"));
    };
    let end = if lf > 0 && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    let line = &buf[..end];
    if line.len() < 8 + 4 {
        return Err(HeadError::Bad("malformed request line"));
    }
    let v = &line[line.len() - 8..];
    if !v.starts_with(b"HTTP/")
        || line[line.len() - 9] != b' '
        || !v[5].is_ascii_digit()
        || v[6] != b'.'
        || !v[7].is_ascii_digit()
    {
        return Err(HeadError::Bad("malformed request line"));
    }
    match (v[5], v[7]) {
        (b'1', m) if m > b'1' => {
            let at = line.len() - 1;
            buf[at] = b'1';
            Ok(())
        }
        _ => Err(HeadError::Version),
    }
}

fn parse_content_length(v: &[u8]) -> Option<u64> {
    let mut out: Option<u64> = None;
    for t in tokens(v) {
        if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = t.iter().fold(0u64, |a, d| a * 10 + (d - b'0') as u64);
        match out {
            Some(prev) if prev != n => return None,
            _ => out = Some(n),
        }
    }
    out
}

fn bad_dot_segment(seg: &[u8]) -> bool {
    seg == b"."
        || seg == b".."
        || seg.eq_ignore_ascii_case(b"%2e")
        || seg.eq_ignore_ascii_case(b"%2e%2e")
        || seg.eq_ignore_ascii_case(b".%2e")
        || seg.eq_ignore_ascii_case(b"%2e.")
}

/// Parses a request head from `buf` into `head` and `lines`, with header
/// names containing `_` dropped (see [`parse_request_with`]).
///
/// `lines` is the connection's reusable header list (cleared here).
/// Returns `Partial` when the head is not complete yet.
pub fn parse_request(
    buf: &[u8],
    max_headers: usize,
    max_uri: usize,
    head: &mut RequestHead,
    lines: &mut Vec<HeaderLine>,
) -> Result<Parsed, HeadError> {
    let limits = RequestLimits {
        max_headers,
        max_uri,
        underscores: false,
    };
    parse_request_with(buf, &limits, head, lines)
}

/// Parses a request head and decides what of it may be forwarded (see
/// README, "What ringgate forwards"): framing headers are never forwarded
/// as read (ringgate writes its own from `head.framing`), `Connection` may
/// not name them, `Transfer-Encoding` is a lone `chunked` or the request is
/// refused, `Host` is checked (and replaced by an absolute-form authority),
/// the client's identity headers are remembered to be replaced.
pub fn parse_request_with(
    buf: &[u8],
    limits: &RequestLimits,
    head: &mut RequestHead,
    lines: &mut Vec<HeaderLine>,
) -> Result<Parsed, HeadError> {
    let mut raw: [MaybeUninit<httparse::Header<'_>>; super::MAX_HEADERS_LIMIT] =
        [const { MaybeUninit::uninit() }; super::MAX_HEADERS_LIMIT];
    let mut req = httparse::Request::new(&mut []);
    let n = match req.parse_with_uninit_headers(buf, &mut raw[..limits.max_headers]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(httparse::Error::Token) => return Err(HeadError::Bad("malformed request line")),
        Err(httparse::Error::HeaderName) => return Err(HeadError::Bad("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(HeadError::Bad("invalid header value")),
        Err(httparse::Error::NewLine) => return Err(HeadError::Bad("invalid line ending")),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    if target.len() > limits.max_uri {
        return Err(HeadError::UriTooLong);
    }
    *head = RequestHead {
        len: n,
        method: Span::within(buf, method.as_bytes()),
        target: Span::within(buf, target.as_bytes()),
        minor: req.version.unwrap_or(1),
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        ..RequestHead::default()
    };
    // Line ends: the blank line's here, each header line's as it is
    // pushed, the request line's once the first header line is known.
    let mut bare_lf = n < 2 || buf[n - 2] != b'\r';
    // Target: origin-form, or absolute-form whose authority becomes the host.
    let tb = target.as_bytes();
    let (authority, path_query): (Option<&[u8]>, &[u8]) = if tb.first() == Some(&b'/') {
        (None, tb)
    } else if let Some(rest) = strip_scheme(tb) {
        let slash = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        if slash == rest.len() {
            return Err(HeadError::Bad("absolute-form target without a path"));
        }
        (Some(&rest[..slash]), &rest[slash..])
    } else {
        return Err(HeadError::Bad(
            "request target must be origin-form or absolute-form",
        ));
    };
    if path_query.contains(&b'#') {
        return Err(HeadError::Bad("fragment in request target"));
    }
    let path = match path_query.iter().position(|&b| b == b'?') {
        Some(q) => &path_query[..q],
        None => path_query,
    };
    if path.split(|&b| b == b'/').any(bad_dot_segment) {
        return Err(HeadError::Bad("dot segments in request path"));
    }
    head.path_query = Span::within(buf, path_query);
    head.path = Span::within(buf, path);
    if let Some(a) = authority {
        if a.is_empty() || !valid_host(a) {
            return Err(HeadError::Bad("invalid authority in request target"));
        }
        head.host = Some(Span::within(buf, a));
        head.host_from_target = true;
    }

    lines.clear();
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut te_lines = 0u8;
    let mut te_other = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut conn_upgrade = false;
    let mut upgrade: Option<Span> = None;
    let mut host_seen = false;
    let mut conn_tokens = ConnectionTokens::default();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let mut role = HeaderRole::Forward;
        match name.len() {
            4 if name_eq(name, b"host") => {
                if host_seen {
                    return Err(HeadError::Bad("more than one Host header"));
                }
                host_seen = true;
                if !valid_host(value) {
                    return Err(HeadError::Bad("invalid Host header"));
                }
                if head.host_from_target {
                    // RFC 9112 3.2.2: the target's authority wins.
                    role = HeaderRole::Drop;
                } else {
                    head.host = Some(Span::within(buf, value));
                }
            }
            14 if name_eq(name, b"content-length") => {
                role = HeaderRole::Drop;
                let n =
                    parse_content_length(value).ok_or(HeadError::Bad("invalid Content-Length"))?;
                if matches!(content_length, Some(prev) if prev != n) {
                    return Err(HeadError::Bad("differing Content-Length headers"));
                }
                content_length = Some(n);
            }
            17 if name_eq(name, b"transfer-encoding") => {
                role = HeaderRole::Drop;
                te_lines += 1;
                if te_lines > 1 {
                    return Err(HeadError::Bad("more than one Transfer-Encoding header"));
                }
                // Exactly one coding, `chunked`: anything else (another
                // coding, a list, an empty element) is refused.
                if value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().is_empty())
                {
                    return Err(HeadError::Bad("malformed Transfer-Encoding"));
                }
                let mut codings = tokens(value);
                match (codings.next(), codings.next()) {
                    (Some(t), None) if t.eq_ignore_ascii_case(b"chunked") => chunked = true,
                    (Some(t), Some(_)) if t.eq_ignore_ascii_case(b"chunked") => {
                        return Err(HeadError::Bad("chunked must be the final transfer coding"));
                    }
                    _ => te_other = true,
                }
            }
            10 if name_eq(name, b"connection") => {
                role = HeaderRole::Drop;
                for t in tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        conn_close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        conn_keep_alive = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        conn_upgrade = true;
                    } else if frames_message(t) {
                        return Err(HeadError::Bad(
                            "Connection may not name Content-Length, Transfer-Encoding or Host",
                        ));
                    } else if !conn_tokens.push(Span::within(buf, t)) {
                        return Err(HeadError::Bad("too many names in Connection"));
                    }
                }
            }
            7 if name_eq(name, b"upgrade") => {
                role = HeaderRole::Drop;
                upgrade = Some(Span::within(buf, value));
            }
            6 if name_eq(name, b"expect") => {
                role = HeaderRole::Drop;
                if value.eq_ignore_ascii_case(b"100-continue") {
                    head.expect_continue = true;
                } else {
                    return Err(HeadError::Expectation);
                }
            }
            10 if name_eq(name, b"keep-alive") => role = HeaderRole::Drop,
            2 if name_eq(name, b"te") => role = HeaderRole::Drop,
            14 if name_eq(name, b"http2-settings") => role = HeaderRole::Drop,
            16 if name_eq(name, b"proxy-connection") => role = HeaderRole::Drop,
            19 if name_eq(name, b"proxy-authorization") => role = HeaderRole::Drop,
            15 if name_eq(name, b"x-forwarded-for") => {
                role = HeaderRole::Drop;
                if head.forwarded_for.is_some() {
                    return Err(HeadError::Bad("more than one X-Forwarded-For header"));
                }
                head.forwarded_for = Some(Span::within(buf, value));
            }
            9 if name_eq(name, b"forwarded") => {
                role = HeaderRole::Drop;
                if head.forwarded.is_some() {
                    return Err(HeadError::Bad("more than one Forwarded header"));
                }
                head.forwarded = Some(Span::within(buf, value));
            }
            9 if name_eq(name, b"x-real-ip") => {
                role = HeaderRole::Drop;
                if head.real_ip.is_some() {
                    return Err(HeadError::Bad("more than one X-Real-IP header"));
                }
                head.real_ip = Some(Span::within(buf, value));
            }
            17 if name_eq(name, b"x-forwarded-proto") => role = HeaderRole::Drop,
            16 if name_eq(name, b"x-forwarded-host") => role = HeaderRole::Drop,
            3 if name_eq(name, b"via") => {
                role = HeaderRole::Drop;
                if head.via.is_some() {
                    return Err(HeadError::Bad("more than one Via header"));
                }
                head.via = Some(Span::within(buf, value));
            }
            11 if name_eq(name, b"traceparent") => {
                role = HeaderRole::Drop;
                head.traceparent = Some(Span::within(buf, value));
            }
            12 if name_eq(name, b"x-request-id") => {
                if valid_request_id(value) && head.request_id.is_none() {
                    role = HeaderRole::RequestId;
                    head.request_id = Some(Span::within(buf, value));
                } else {
                    role = HeaderRole::Drop;
                }
            }
            // Identity headers are set only by ringgate's auth filter.
            9 | 12 | 13 | 15 | 17 | 21 if IDENTITY_HEADERS.iter().any(|h| name_eq(name, h)) => {
                role = HeaderRole::Drop
            }
            // Every name above is free of `_`: only the others are looked at.
            _ if !limits.underscores && name.contains(&b'_') => role = HeaderRole::Drop,
            _ => {}
        }
        bare_lf |= push_line(lines, buf, name, value, role);
    }
    conn_tokens.drop_listed(buf, lines);
    // The request line ends right before the first header line (or the
    // blank line): its line end is the one or two bytes before that.
    let blank = if n >= 2 && buf[n - 2] == b'\r' {
        n - 2
    } else {
        n - 1
    };
    let first = lines.first().map_or(blank, |l| l.line.start as usize);
    bare_lf |= first < 2 || buf[first - 2] != b'\r';
    head.bare_lf = bare_lf;
    if head.minor == 1 && !host_seen {
        return Err(HeadError::Bad("HTTP/1.1 request without Host"));
    }
    if te_lines > 0 {
        if content_length.is_some() {
            return Err(HeadError::Bad("both Content-Length and Transfer-Encoding"));
        }
        if te_other || !chunked {
            return Err(HeadError::Bad("transfer coding other than a lone chunked"));
        }
        if head.minor == 0 {
            return Err(HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        head.framing = BodyFraming::Chunked;
    } else {
        head.framing = match content_length {
            Some(0) => {
                head.zero_length = true;
                BodyFraming::None
            }
            None => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        };
    }
    head.keep_alive = if head.minor == 1 {
        !conn_close
    } else {
        conn_keep_alive && !conn_close
    };
    // An upgrade to one protocol is kept for the route to allow (its
    // `upgrades`, WebSocket by default); `h2c` never (it would turn the
    // connection into a tunnel past every filter): it is dropped and the
    // request goes on as plain HTTP/1.1.
    if conn_upgrade
        && head.minor == 1
        && let Some(u) = upgrade
    {
        let p = u.of(buf).trim_ascii();
        let name = p.split(|&b| b == b'/').next().unwrap_or(p);
        if !p.is_empty() && !p.contains(&b',') && !name.eq_ignore_ascii_case(b"h2c") {
            head.upgrade = Some(u);
        }
    }
    if head.framing == BodyFraming::None {
        head.expect_continue = false;
    }
    Ok(Parsed::Complete)
}

/// The identity headers only ringgate's auth filter sets: stripped from
/// every client request.
pub const IDENTITY_HEADERS: [&[u8]; 7] = [
    b"x-user-id",
    b"x-user-roles",
    b"x-consumer-id",
    b"x-auth-method",
    b"x-consumer-tier",
    // Set from a verified client certificate on TLS listeners.
    b"x-client-cert-subject",
    b"x-client-cert-san",
];

/// True for the header names that frame a message (which `Connection` may
/// not remove).
fn frames_message(name: &[u8]) -> bool {
    name_eq(name, b"content-length")
        || name_eq(name, b"transfer-encoding")
        || name_eq(name, b"host")
}

fn strip_scheme(t: &[u8]) -> Option<&[u8]> {
    if t.len() > 7 && t[..7].eq_ignore_ascii_case(b"http://") {
        Some(&t[7..])
    } else if t.len() > 8 && t[..8].eq_ignore_ascii_case(b"https://") {
        Some(&t[8..])
    } else {
        None
    }
}

/// A client-supplied request id is kept when it is short and printable.
fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|&b| b.is_ascii_graphic())
}

/// Parses a response head. Returns `Ok(Partial)` when incomplete and
/// `Err(reason)` when the backend's answer is not valid HTTP/1.x or is one
/// ringgate will not relay: a `Connection` naming a framing header, a
/// transfer coding other than a lone `chunked`. Framing headers are never
/// relayed as read: ringgate writes its own from `head.framing` (a message
/// with both `Transfer-Encoding: chunked` and `Content-Length` is framed by
/// the chunked coding, and its connection is not reused).
pub fn parse_response(
    buf: &[u8],
    head: &mut ResponseHead,
    lines: &mut Vec<HeaderLine>,
) -> Result<Parsed, &'static str> {
    let mut raw: [MaybeUninit<httparse::Header<'_>>; super::MAX_HEADERS_LIMIT] =
        [const { MaybeUninit::uninit() }; super::MAX_HEADERS_LIMIT];
    let mut res = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut raw)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err("invalid response head from upstream"),
    };
    // httparse skips empty lines before the status line; ringgate does not
    // relay such a response (the status line must be the first line), nor
    // a status outside 100-599 (RFC 9110 15).
    if !buf.starts_with(b"HTTP/1.") {
        return Err("invalid response head from upstream");
    }
    let minor = res.version.unwrap_or(1);
    let status = res.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Err("invalid status code from upstream");
    }
    let status_end = buf.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1);
    let mut bare_lf =
        status_end < 2 || buf[status_end - 2] != b'\r' || n < 2 || buf[n - 2] != b'\r';
    *head = ResponseHead {
        len: n,
        status,
        minor,
        status_line: Span {
            start: 0,
            end: status_end as u32,
        },
        framing: BodyFraming::UntilClose,
        keep_alive: minor == 1,
        has_request_id: false,
        content_length: None,
        bare_lf: false,
        status_rewritten: false,
    };
    lines.clear();
    let mut content_length: Option<u64> = None;
    let mut te_lines = 0u8;
    let mut chunked = false;
    let mut te_other = false;
    let mut conn_tokens = ConnectionTokens::default();
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let mut role = HeaderRole::Forward;
        match name.len() {
            14 if name_eq(name, b"content-length") => {
                role = HeaderRole::Drop;
                let n =
                    parse_content_length(value).ok_or("invalid Content-Length from upstream")?;
                if matches!(content_length, Some(prev) if prev != n) {
                    return Err("differing Content-Length from upstream");
                }
                content_length = Some(n);
            }
            17 if name_eq(name, b"transfer-encoding") => {
                role = HeaderRole::Drop;
                te_lines += 1;
                if value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().is_empty())
                {
                    return Err("malformed Transfer-Encoding from upstream");
                }
                let mut codings = tokens(value);
                match (codings.next(), codings.next()) {
                    (Some(t), None) if t.eq_ignore_ascii_case(b"chunked") => chunked = true,
                    _ => te_other = true,
                }
            }
            10 if name_eq(name, b"connection") => {
                role = HeaderRole::Drop;
                for t in tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        head.keep_alive = false;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        if minor == 0 {
                            head.keep_alive = true;
                        }
                    } else if frames_message(t) {
                        return Err("upstream's Connection names a framing header");
                    } else if !t.eq_ignore_ascii_case(b"upgrade") {
                        let _ = conn_tokens.push(Span::within(buf, t));
                    }
                }
            }
            10 if name_eq(name, b"keep-alive") => role = HeaderRole::Drop,
            16 if name_eq(name, b"proxy-connection") => role = HeaderRole::Drop,
            7 if status != 101 && name_eq(name, b"upgrade") => role = HeaderRole::Drop,
            12 if name_eq(name, b"x-request-id") => head.has_request_id = true,
            _ => {}
        }
        bare_lf |= push_line(lines, buf, name, value, role);
    }
    conn_tokens.drop_listed(buf, lines);
    head.bare_lf = bare_lf;
    head.content_length = content_length;
    head.framing = if te_lines > 0 {
        if te_lines > 1 || te_other || !chunked {
            return Err("transfer coding from upstream other than a lone chunked");
        }
        if content_length.is_some() {
            // RFC 9112 6.3: chunked wins; a backend that sends both may be
            // out of step with what it sends, so its connection goes.
            head.keep_alive = false;
            head.content_length = None;
        }
        BodyFraming::Chunked
    } else if let Some(n) = content_length {
        BodyFraming::Length(n)
    } else {
        head.keep_alive = false;
        BodyFraming::UntilClose
    };
    Ok(Parsed::Complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<(RequestHead, Vec<HeaderLine>), HeadError> {
        let mut h = RequestHead::default();
        let mut l = Vec::new();
        match parse_request(s.as_bytes(), 100, 8192, &mut h, &mut l)? {
            Parsed::Complete => Ok((h, l)),
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn simple_get() {
        let s = "GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n";
        let (h, l) = req(s).unwrap();
        assert_eq!(h.path.of(s.as_bytes()), b"/a/b");
        assert_eq!(h.path_query.of(s.as_bytes()), b"/a/b?x=1");
        assert_eq!(h.host.unwrap().of(s.as_bytes()), b"h");
        assert!(h.keep_alive);
        assert_eq!(h.framing, BodyFraming::None);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].line.of(s.as_bytes()), b"X-A: 1\r\n");
    }

    #[test]
    fn smuggling_refused() {
        assert!(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(
            req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n")
                .is_err()
        );
        assert!(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n").is_err());
        assert!(
            req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").is_err()
        );
        assert!(req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(req("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n").is_err());
        assert!(req("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n").is_err());
        assert!(req("GET /../etc HTTP/1.1\r\nHost: h\r\n\r\n").is_err());
        assert!(req("GET / HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn bare_lf_anywhere_in_the_head_is_noticed() {
        for (s, bare) in [
            ("GET / HTTP/1.1\r\nHost: h\r\n\r\n", false),
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\n\n", true),
            ("GET / HTTP/1.0\n\r\n", true),
            ("GET / HTTP/1.0\r\n\n", true),
            ("GET / HTTP/1.1\nHost: h\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n", true),
            ("GET / HTTP/1.1\r\nHost: h\r\n\n", true),
        ] {
            assert_eq!(req(s).unwrap().0.bare_lf, bare, "{s:?}");
        }
    }

    #[test]
    fn framing_and_identity_lines_are_never_forwarded_as_read() {
        let s = "POST http://api.test/a HTTP/1.1\r\nHost: other\r\nContent-Length: 3, 3\r\nX-Real-IP: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\nX_User: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\nabc";
        let (h, l) = req(s).unwrap();
        let kept: Vec<_> = l
            .iter()
            .filter(|x| x.role != HeaderRole::Drop)
            .map(|x| x.name.of(s.as_bytes()))
            .collect();
        assert!(kept.is_empty(), "{kept:?}");
        assert_eq!(h.framing, BodyFraming::Length(3));
        assert!(h.host_from_target);
        assert_eq!(h.host.unwrap().of(s.as_bytes()), b"api.test");
        assert!(h.upgrade.is_none());
        for bad in [
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: content-length\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: close, Transfer-Encoding\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
            "GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            assert!(req(bad).is_err(), "{bad:?}");
        }
    }

    /// Found by fuzzing: an empty line before a backend's status line made
    /// the status line span `\n` alone and the rebuilt head slice backwards
    /// (a panic, which aborts the process); a status outside 100-599 was
    /// relayed.
    #[test]
    fn response_heads_start_with_their_status_line_and_a_real_status() {
        let mut h = ResponseHead::default();
        let mut l = Vec::new();
        for bad in [
            &b"\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
            b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 020 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 600 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 999 OK\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert!(parse_response(bad, &mut h, &mut l).is_err(), "{bad:?}");
        }
        let ok = b"HTTP/1.1 599 Odd\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            parse_response(ok, &mut h, &mut l),
            Ok(Parsed::Complete)
        ));
    }

    #[test]
    fn newer_minor_versions_are_served_as_1_1() {
        let mut b = b"GET / HTTP/1.2\r\nHost: h\r\n\r\n".to_vec();
        assert!(matches!(
            req(std::str::from_utf8(&b).unwrap()),
            Err(HeadError::Version)
        ));
        downgrade_minor(&mut b).unwrap();
        assert_eq!(&b[..16], b"GET / HTTP/1.1\r\n");
        for v in ["2.0", "3.0", "0.9"] {
            let mut b = format!("GET / HTTP/{v}\r\nHost: h\r\n\r\n").into_bytes();
            assert_eq!(downgrade_minor(&mut b), Err(HeadError::Version), "{v}");
        }
    }

    #[test]
    fn connection_tokens_dropped() {
        let s = "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Ok: 2\r\n\r\n";
        let (_, l) = req(s).unwrap();
        let kept: Vec<_> = l
            .iter()
            .filter(|x| x.role != HeaderRole::Drop)
            .map(|x| x.name.of(s.as_bytes()))
            .collect();
        assert_eq!(kept, vec![&b"Host"[..], &b"X-Ok"[..]]);
    }
}
