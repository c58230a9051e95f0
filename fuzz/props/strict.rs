//! A strict, independent HTTP/1.1 reader (RFC 9112, RFC 9110): what a
//! careful origin server or client makes of the bytes ringgate sends. It
//! shares no code with ringgate's parser on purpose; the properties compare
//! the two.
//!
//! Strict where a lenient reading could frame or route a message another
//! way: CRLF line ends only (no bare LF, no bare CR), no obs-fold, no
//! control characters, token methods and header names, an origin-form
//! target, at most one framing header (`Content-Length: 1*DIGIT` or
//! `Transfer-Encoding: chunked`, never both), exactly one valid `Host`, no
//! `Connection` that names a framing header or `Host`.
//!
//! Deliberately not checked, because none of it can split or reframe a
//! message and every fuzz run would otherwise stop at the same non-framing
//! difference: bytes of the request target outside RFC 3986's set (any
//! VCHAR but `#`, and obs-text, are taken), percent-encoding, a status line
//! without the space before an empty reason phrase, whitespace between a
//! chunk size and its CRLF; the grammar of chunk extensions unless asked
//! for (see [`chunked`]).

/// How a message body is delimited, as this reader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No framing header.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// One header field: the name as sent, the value without surrounding OWS.
pub type Field = (Vec<u8>, Vec<u8>);

/// A request head that passed every check.
#[derive(Debug)]
pub struct Request {
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    pub fields: Vec<Field>,
    pub framing: Framing,
    pub host: Vec<u8>,
}

/// A response head that passed every check.
#[derive(Debug)]
pub struct Response {
    pub minor: u8,
    pub status: u16,
    pub fields: Vec<Field>,
    /// Framing header found (whether the status allows a body is the
    /// caller's business).
    pub framing: Framing,
}

/// RFC 9110 5.6.2 tchar.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_vchar_or_obs(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// Splits `b` into CRLF-terminated lines up to and including the empty
/// line; refuses bare LF and bare CR. Returns the lines (without CRLF) and
/// the length of the head.
fn lines(b: &[u8]) -> Result<(Vec<&[u8]>, usize), String> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let rest = &b[start..];
        let Some(cr) = rest.iter().position(|&x| x == b'\r' || x == b'\n') else {
            return Err(format!("head not terminated: {}", show(rest)));
        };
        if rest[cr] == b'\n' {
            return Err(format!("bare LF in line {}", show(&rest[..cr])));
        }
        if rest.get(cr + 1) != Some(&b'\n') {
            return Err(format!("bare CR in line {}", show(&rest[..cr])));
        }
        let line = &rest[..cr];
        start += cr + 2;
        if line.is_empty() {
            return Ok((out, start));
        }
        out.push(line);
    }
}

/// `field-name ":" OWS field-value OWS`, without obs-fold.
fn field_line(line: &[u8]) -> Result<Field, String> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(format!("obs-fold (continuation line) {}", show(line)));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| format!("header line without ':' {}", show(line)))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(format!("invalid field name {}", show(name)));
    }
    let value = trim_ows(&line[colon + 1..]);
    if let Some(&bad) = value
        .iter()
        .find(|&&b| !(is_vchar_or_obs(b) || b == b' ' || b == b'\t'))
    {
        return Err(format!(
            "control byte {bad:#04x} in the value of {}",
            show(name)
        ));
    }
    Ok((name.to_vec(), value.to_vec()))
}

pub fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Elements of a comma-separated list (RFC 9110 5.6.1), empty ones skipped.
pub fn list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

fn eq_ci(a: &[u8], lower: &[u8]) -> bool {
    a.eq_ignore_ascii_case(lower)
}

/// The framing headers of a head, each checked; both kinds, or two of one
/// kind, are refused. Also refuses a `Connection` that would make a
/// recipient remove a framing header or `Host`.
fn framing(fields: &[Field]) -> Result<Framing, String> {
    let mut cl: Option<u64> = None;
    let mut te = false;
    for (name, value) in fields {
        if eq_ci(name, b"content-length") {
            if cl.is_some() {
                return Err("more than one Content-Length".into());
            }
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(format!("Content-Length not 1*DIGIT: {}", show(value)));
            }
            cl = Some(value.iter().fold(0u64, |a, d| a * 10 + u64::from(d - b'0')));
        } else if eq_ci(name, b"transfer-encoding") {
            if te {
                return Err("more than one Transfer-Encoding".into());
            }
            if !eq_ci(value, b"chunked") {
                return Err(format!(
                    "Transfer-Encoding other than a lone chunked: {}",
                    show(value)
                ));
            }
            te = true;
        } else if eq_ci(name, b"connection") {
            for t in value.split(|&b| b == b',').map(trim_ows) {
                if !t.is_empty() && !t.iter().all(|&b| is_tchar(b)) {
                    return Err(format!("Connection element not a token: {}", show(t)));
                }
                for framing in [&b"content-length"[..], b"transfer-encoding", b"host"] {
                    if eq_ci(t, framing) {
                        return Err(format!("Connection names {}", show(t)));
                    }
                }
            }
        }
    }
    match (cl, te) {
        (Some(_), true) => Err("both Content-Length and Transfer-Encoding".into()),
        (Some(n), false) => Ok(Framing::Length(n)),
        (None, true) => Ok(Framing::Chunked),
        (None, false) => Ok(Framing::None),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986): a reg-name or IPv4 address, or a
/// bracketed IP literal; an empty host is allowed (RFC 9112 3.2).
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let lit = &rest[..close];
        if lit.is_empty()
            || !lit
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &rest[close + 1..] {
            [] => (&b""[..], None),
            [b':', p @ ..] => (&b""[..], Some(p)),
            _ => return false,
        }
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    // reg-name = *( unreserved / pct-encoded / sub-delims )
    let mut i = 0;
    while i < host.len() {
        let b = host[i];
        if b == b'%' {
            if i + 2 >= host.len() {
                return false;
            }
            if !(host[i + 1].is_ascii_hexdigit() && host[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)) {
            return false;
        }
        i += 1;
    }
    port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

/// Reads a request head that must be the whole of `b`.
pub fn request(b: &[u8]) -> Result<Request, String> {
    let (ls, len) = lines(b)?;
    if len != b.len() {
        return Err(format!("bytes after the head: {}", show(&b[len..])));
    }
    let (first, rest) = ls.split_first().ok_or("empty head")?;
    // request-line = method SP request-target SP HTTP-version
    let mut parts = first.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("request line not three parts: {}", show(first)));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(format!("method not a token: {}", show(method)));
    }
    if target.first() != Some(&b'/') {
        return Err(format!("target not origin-form: {}", show(target)));
    }
    if let Some(&bad) = target.iter().find(|&&b| !is_vchar_or_obs(b) || b == b'#') {
        return Err(format!("byte {bad:#04x} in the target {}", show(target)));
    }
    if version != b"HTTP/1.1" {
        return Err(format!("version not HTTP/1.1: {}", show(version)));
    }
    let fields = rest
        .iter()
        .map(|l| field_line(l))
        .collect::<Result<Vec<_>, _>>()?;
    let framing = framing(&fields)?;
    let hosts: Vec<&Field> = fields.iter().filter(|(n, _)| eq_ci(n, b"host")).collect();
    if hosts.len() != 1 {
        return Err(format!("{} Host lines", hosts.len()));
    }
    let host = hosts[0].1.clone();
    if !valid_host(&host) {
        return Err(format!("invalid Host {}", show(&host)));
    }
    Ok(Request {
        method: method.to_vec(),
        target: target.to_vec(),
        fields,
        framing,
        host,
    })
}

/// Reads a response head that must be the whole of `b`.
pub fn response(b: &[u8]) -> Result<Response, String> {
    let (ls, len) = lines(b)?;
    if len != b.len() {
        return Err(format!("bytes after the head: {}", show(&b[len..])));
    }
    let (first, rest) = ls.split_first().ok_or("empty head")?;
    // status-line = HTTP-version SP status-code SP [ reason-phrase ]
    let minor = match first.get(..9) {
        Some(b"HTTP/1.0 ") => 0,
        Some(b"HTTP/1.1 ") => 1,
        _ => return Err(format!("status line: {}", show(first))),
    };
    let code = &first[9..first.len().min(12)];
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(format!("status code: {}", show(first)));
    }
    let status = code.iter().fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
    // RFC 9110 15: valid codes are 100 to 599; a client cannot know how
    // another code frames its body (no class, no x00 to fall back on).
    if !(100..=599).contains(&status) {
        return Err(format!("status code outside 100-599: {}", show(first)));
    }
    match &first[12..] {
        [] => {}
        [b' ', reason @ ..] => {
            if let Some(&bad) = reason
                .iter()
                .find(|&&b| !(is_vchar_or_obs(b) || b == b' ' || b == b'\t'))
            {
                return Err(format!("byte {bad:#04x} in the reason phrase"));
            }
        }
        _ => return Err(format!("status line: {}", show(first))),
    }
    let fields = rest
        .iter()
        .map(|l| field_line(l))
        .collect::<Result<Vec<_>, _>>()?;
    let framing = framing(&fields)?;
    Ok(Response {
        minor,
        status,
        fields,
        framing,
    })
}

/// What a strict chunked decoder makes of a byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunked {
    /// The body ends after `len` bytes.
    Done {
        len: usize,
        payload: Vec<u8>,
        trailers: Vec<Field>,
        /// Every size line was bare hex without leading zeros (`0` for the
        /// last chunk) and carried no extension.
        plain: bool,
    },
    /// Valid so far; the body goes on.
    More { payload: Vec<u8> },
    /// Not a valid chunked body.
    Invalid { at: usize, why: String },
}

/// One CRLF-terminated line at the start of `b`: `Ok(Some(len))` (without
/// CRLF), `Ok(None)` when the line is not complete yet, `Err` at a bare LF
/// or bare CR.
fn crlf_line(b: &[u8]) -> Result<Option<usize>, (usize, &'static str)> {
    let Some(end) = b.iter().position(|&c| c == b'\r' || c == b'\n') else {
        return Ok(None);
    };
    if b[end] == b'\n' {
        return Err((end, "bare LF"));
    }
    match b.get(end + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(end)),
        Some(_) => Err((end, "bare CR")),
    }
}

/// A chunk size line (RFC 9112 7.1), without its CRLF:
/// `1*HEXDIG [ws] *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`.
/// With `rfc_extensions` false, what follows the first `;` is only checked
/// for control characters (README's policy: extensions are dropped when
/// the body is re-framed, so their grammar cannot reach a backend).
/// Returns the size and whether the line is "plain": bare lower-case hex
/// without leading zeros and without extensions, as ringgate writes it.
fn size_line(l: &[u8], rfc_extensions: bool) -> Result<(u64, bool), String> {
    let digits = l.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(format!("chunk size missing in {}", show(l)));
    }
    let mut size: u64 = 0;
    for &c in &l[..digits] {
        let d = (c as char).to_digit(16).unwrap_or(0);
        size = size
            .checked_mul(16)
            .ok_or_else(|| format!("chunk size overflows 64 bits: {}", show(l)))?
            + u64::from(d);
    }
    let hex = &l[..digits];
    let mut plain = digits == l.len()
        && !hex.iter().any(u8::is_ascii_uppercase)
        && (digits == 1 || hex[0] != b'0');
    let mut i = digits;
    let ws = |i: &mut usize| {
        while matches!(l.get(*i), Some(b' ' | b'\t')) {
            *i += 1;
        }
    };
    ws(&mut i);
    if !rfc_extensions && i < l.len() {
        if l[i] != b';' {
            return Err(format!("junk after the chunk size: {}", show(l)));
        }
        if let Some(&bad) = l[i..]
            .iter()
            .find(|&&c| c != b'\t' && (c < 0x20 || c == 0x7f))
        {
            return Err(format!(
                "control byte {bad:#04x} in a chunk extension: {}",
                show(l)
            ));
        }
        return Ok((size, false));
    }
    while i < l.len() {
        plain = false;
        if l[i] != b';' {
            return Err(format!("junk in the chunk size line: {}", show(l)));
        }
        i += 1;
        ws(&mut i);
        let n0 = i;
        while l.get(i).is_some_and(|&c| is_tchar(c)) {
            i += 1;
        }
        if i == n0 {
            return Err(format!("chunk extension without a name: {}", show(l)));
        }
        ws(&mut i);
        if l.get(i) == Some(&b'=') {
            i += 1;
            ws(&mut i);
            if l.get(i) == Some(&b'"') {
                i += 1;
                loop {
                    match l.get(i) {
                        None => return Err(format!("unterminated quoted string: {}", show(l))),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match l.get(i + 1) {
                            Some(&c) if c == b'\t' || c == b' ' || is_vchar_or_obs(c) => i += 2,
                            _ => return Err(format!("bad quoted-pair: {}", show(l))),
                        },
                        Some(&c) if c == b'\t' || c == b' ' || is_vchar_or_obs(c) => i += 1,
                        Some(_) => {
                            return Err(format!("control byte in a chunk extension: {}", show(l)));
                        }
                    }
                }
            } else {
                let v0 = i;
                while l.get(i).is_some_and(|&c| is_tchar(c)) {
                    i += 1;
                }
                if i == v0 {
                    return Err(format!("chunk extension value missing: {}", show(l)));
                }
            }
            ws(&mut i);
        }
    }
    Ok((size, plain))
}

/// Decodes a chunked body (RFC 9112 7.1) strictly, from the start of `b`.
/// Each line is judged once complete (`More` while it is not); `More` when
/// `b` ends inside the body. Chunk extensions: see [`size_line`].
pub fn chunked(b: &[u8], rfc_extensions: bool) -> Chunked {
    let mut payload = Vec::new();
    let mut trailers = Vec::new();
    let mut plain = true;
    let mut i = 0;
    // The next complete line, or return More / Invalid.
    macro_rules! line {
        () => {
            match crlf_line(&b[i..]) {
                Ok(Some(end)) => {
                    let l = &b[i..i + end];
                    (l, i + end + 2)
                }
                Ok(None) => return Chunked::More { payload },
                Err((at, why)) => {
                    return Chunked::Invalid {
                        at: i + at,
                        why: why.to_string(),
                    };
                }
            }
        };
    }
    loop {
        let (l, next) = line!();
        let (size, p) = match size_line(l, rfc_extensions) {
            Ok(s) => s,
            Err(why) => return Chunked::Invalid { at: i, why },
        };
        plain &= p;
        i = next;
        if size == 0 {
            break;
        }
        let left = (b.len() - i) as u64;
        if left < size {
            payload.extend_from_slice(&b[i..]);
            return Chunked::More { payload };
        }
        let size = size as usize;
        payload.extend_from_slice(&b[i..i + size]);
        i += size;
        match (b.get(i), b.get(i + 1)) {
            (None, _) | (Some(b'\r'), None) => return Chunked::More { payload },
            (Some(b'\r'), Some(b'\n')) => i += 2,
            _ => {
                return Chunked::Invalid {
                    at: i,
                    why: "no CRLF after chunk data".into(),
                };
            }
        }
    }
    // trailer-section = *( field-line CRLF ), then CRLF
    loop {
        let (l, next) = line!();
        if l.is_empty() {
            return Chunked::Done {
                len: next,
                payload,
                trailers,
                plain,
            };
        }
        match field_line(l) {
            Ok(f) => trailers.push(f),
            Err(e) => {
                return Chunked::Invalid {
                    at: i,
                    why: format!("trailer: {e}"),
                };
            }
        }
        i = next;
    }
}
