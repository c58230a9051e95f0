//! The transport-neutral request and response model that filters see.
//!
//! Key components: [`RequestHeader`] and [`ResponseHeader`] (method, path,
//! query, status, headers get/append/insert/remove), each with two
//! representations behind one API:
//! - **HTTP/1** (the fast one): spans into the connection's read buffer as
//!   the parser left them. Removing a header marks its line dropped (the
//!   forwarded head skips it); added headers are appended as lines to a
//!   buffer the connection owns and writes after the relayed lines.
//! - **Owned** ([`OwnedRequest`], [`OwnedResponse`]): names and values in
//!   their own allocations, for what is not read from an HTTP/1 buffer
//!   (an HTTP/2 stream, a stored cache entry, an answer ringgate makes).
//!
//! A filter written against these types never learns the wire format, so
//! the same filter serves every transport.
//!
//! Performance notes: the HTTP/1 representation allocates nothing; a
//! lookup is a linear scan over the header lines (a head has a few dozen
//! at most), with names compared case-insensitively against a lower-case
//! constant.

use super::name_eq;
use super::parse::{HeaderLine, HeaderRole, RequestHead, ResponseHead};

/// A request head owned field by field (an HTTP/2 stream's, or one built
/// by ringgate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedRequest {
    /// Method token.
    pub method: Vec<u8>,
    /// Path and query (origin-form).
    pub path_query: Vec<u8>,
    /// Authority (`Host` or `:authority`).
    pub host: Option<Vec<u8>>,
    /// Header fields in order, names lower-case.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A response head owned field by field (a cache entry, an answer ringgate
/// makes, an HTTP/2 response).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedResponse {
    /// Status code.
    pub status: u16,
    /// The reason phrase an HTTP/1 status line carries (empty: the
    /// standard one).
    pub reason: Vec<u8>,
    /// Header fields in order, names as they should be written (no
    /// framing fields: the transport writes its own).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl OwnedResponse {
    /// A response with `status` and no headers.
    pub fn new(status: u16) -> Self {
        OwnedResponse {
            status,
            reason: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// The head as HTTP/1.1 writes it, without the blank line that ends
    /// it: the status line, the fields, and `Content-Length: body_len`
    /// unless the status has no body (1xx, 204, 304).
    pub fn render_h1(&self, body_len: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.push(b' ');
        if self.reason.is_empty() {
            let r = super::reason(self.status);
            if r != "Unknown" {
                out.extend_from_slice(r.as_bytes());
            }
        } else {
            out.extend_from_slice(&self.reason);
        }
        out.extend_from_slice(b"\r\n");
        for (n, v) in &self.headers {
            push_line(out, n, v);
        }
        if !matches!(self.status, 100..=199 | 204 | 304) {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Appends a header field.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        self.headers.push((name.to_vec(), value.to_vec()));
    }
}

/// Header lines ringgate adds to an HTTP/1 message (`Name: value\r\n`
/// each), in a buffer the connection owns.
fn push_line(added: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    added.extend_from_slice(name);
    added.extend_from_slice(b": ");
    added.extend_from_slice(value);
    added.extend_from_slice(b"\r\n");
}

/// The `(name, value)` pairs of added header lines.
fn added_fields(added: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    added.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let i = line.iter().position(|&b| b == b':')?;
        Some((&line[..i], line[i + 1..].trim_ascii()))
    })
}

/// Removes the added lines named `lower`.
fn remove_added(added: &mut Vec<u8>, lower: &[u8]) {
    if added.is_empty() {
        return;
    }
    let mut kept = Vec::with_capacity(added.len());
    for line in added.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or(b"");
        if !name_eq(name, lower) {
            kept.extend_from_slice(line);
        }
    }
    *added = kept;
}

/// A message's fields: HTTP/1 lines over their buffer, or owned pairs.
type View<'s> = (
    Option<(&'s [u8], &'s [HeaderLine])>,
    &'s [(Vec<u8>, Vec<u8>)],
);

/// The fields of `view` that no filter removed, then the `added` lines.
fn fields_of<'s>(view: View<'s>, added: &'s [u8]) -> impl Iterator<Item = (&'s [u8], &'s [u8])> {
    let (h1, owned) = view;
    let sent = h1.into_iter().flat_map(|(buf, lines)| {
        lines
            .iter()
            .filter(|l| l.role != HeaderRole::Removed)
            .map(move |l| (l.name.of(buf), l.value.of(buf)))
    });
    let owned = owned.iter().map(|(n, v)| (&n[..], &v[..]));
    sent.chain(owned).chain(added_fields(added))
}

/// Marks the lines named `lower` removed.
fn remove_lines(buf: &[u8], lines: &mut [HeaderLine], lower: &[u8]) {
    for l in lines.iter_mut() {
        if name_eq(l.name.of(buf), lower) {
            l.role = HeaderRole::Removed;
        }
    }
}

/// The header API both [`RequestHeader`] and [`ResponseHeader`] offer,
/// written once over their `view`, `remove_received` and `added`.
macro_rules! header_api {
    () => {
        /// Every header field received and not removed, then the added
        /// ones, as `(name, value)`.
        pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
            fields_of(self.view(), self.added)
        }

        /// First value of header `lower` (a lower-case name).
        pub fn header(&self, lower: &[u8]) -> Option<&[u8]> {
            self.fields()
                .find(|(n, _)| name_eq(n, lower))
                .map(|(_, v)| v)
        }

        /// All values of header `lower` (a lower-case name), in order.
        pub fn headers<'s>(&'s self, lower: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's {
            self.fields()
                .filter(move |(n, _)| name_eq(n, lower))
                .map(|(_, v)| v)
        }

        /// Appends a header field.
        pub fn append_header(&mut self, name: &[u8], value: &[u8]) {
            push_line(self.added, name, value);
        }

        /// Sets a header field: every earlier value is removed first.
        pub fn insert_header(&mut self, name: &[u8], value: &[u8]) {
            let lower = name.to_ascii_lowercase();
            self.remove_header(&lower);
            self.append_header(name, value);
        }

        /// Removes every value of header `lower` (a lower-case name).
        pub fn remove_header(&mut self, lower: &[u8]) {
            self.remove_received(lower);
            remove_added(self.added, lower);
        }

        /// The lines added so far (`Name: value\r\n` each).
        pub fn added(&self) -> &[u8] {
            self.added
        }
    };
}

enum ReqRepr<'a> {
    H1 {
        buf: &'a [u8],
        head: &'a RequestHead,
        lines: &'a mut [HeaderLine],
    },
    Owned(&'a mut OwnedRequest),
}

/// A request head as filters read and change it. What filters add is kept
/// apart from what the client sent (`added`), so the forwarded head is the
/// client's lines that were not removed, then the added ones.
pub struct RequestHeader<'a> {
    repr: ReqRepr<'a>,
    added: &'a mut Vec<u8>,
}

impl<'a> RequestHeader<'a> {
    /// The HTTP/1 representation: spans of `buf`; added lines go to `added`.
    pub fn h1(
        buf: &'a [u8],
        head: &'a RequestHead,
        lines: &'a mut [HeaderLine],
        added: &'a mut Vec<u8>,
    ) -> Self {
        RequestHeader {
            repr: ReqRepr::H1 { buf, head, lines },
            added,
        }
    }

    /// The owned representation; added lines go to `added` too, so both
    /// representations forward the same way.
    pub fn owned(req: &'a mut OwnedRequest, added: &'a mut Vec<u8>) -> Self {
        RequestHeader {
            repr: ReqRepr::Owned(req),
            added,
        }
    }

    /// The method token.
    pub fn method(&self) -> &[u8] {
        match &self.repr {
            ReqRepr::H1 { buf, head, .. } => head.method.of(buf),
            ReqRepr::Owned(r) => &r.method,
        }
    }

    /// Path and query as sent (origin-form).
    pub fn path_query(&self) -> &[u8] {
        match &self.repr {
            ReqRepr::H1 { buf, head, .. } => head.path_query.of(buf),
            ReqRepr::Owned(r) => &r.path_query,
        }
    }

    /// The path (without the query).
    pub fn path(&self) -> &[u8] {
        match &self.repr {
            ReqRepr::H1 { buf, head, .. } => head.path.of(buf),
            ReqRepr::Owned(r) => {
                let pq = &r.path_query;
                &pq[..pq.iter().position(|&b| b == b'?').unwrap_or(pq.len())]
            }
        }
    }

    /// The query string (after `?`), if any.
    pub fn query(&self) -> Option<&[u8]> {
        let pq = self.path_query();
        pq.iter().position(|&b| b == b'?').map(|i| &pq[i + 1..])
    }

    /// The value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &[u8]) -> Option<&[u8]> {
        self.query()?.split(|&b| b == b'&').find_map(|kv| {
            let (k, v) = match kv.iter().position(|&b| b == b'=') {
                Some(i) => (&kv[..i], &kv[i + 1..]),
                None => (kv, &b""[..]),
            };
            (k == name).then_some(v)
        })
    }

    /// The authority routed on (`Host`, or an absolute-form target's).
    pub fn host(&self) -> Option<&[u8]> {
        match &self.repr {
            ReqRepr::H1 { buf, head, .. } => head.host.map(|h| h.of(buf)),
            ReqRepr::Owned(r) => r.host.as_deref(),
        }
    }

    /// True for HEAD (no response body).
    pub fn is_head(&self) -> bool {
        self.method() == b"HEAD"
    }

    /// The fields as the client sent them (lines over the buffer, or
    /// owned pairs).
    fn view(&self) -> View<'_> {
        match &self.repr {
            ReqRepr::H1 { buf, lines, .. } => (Some((buf, &**lines)), &[]),
            ReqRepr::Owned(r) => (None, &r.headers),
        }
    }

    /// Removes the received fields named `lower` (not the added ones).
    fn remove_received(&mut self, lower: &[u8]) {
        match &mut self.repr {
            ReqRepr::H1 { buf, lines, .. } => remove_lines(buf, lines, lower),
            ReqRepr::Owned(r) => r.headers.retain(|(n, _)| !name_eq(n, lower)),
        }
    }

    header_api!();
}

enum RespRepr<'a> {
    H1 {
        buf: &'a [u8],
        head: &'a mut ResponseHead,
        lines: &'a mut [HeaderLine],
    },
    Owned(&'a mut OwnedResponse),
}

/// A response head as filters read and change it: status and headers,
/// whatever transport the response came over. Added lines are kept apart,
/// like [`RequestHeader`]'s.
pub struct ResponseHeader<'a> {
    repr: RespRepr<'a>,
    added: &'a mut Vec<u8>,
}

impl<'a> ResponseHeader<'a> {
    /// The HTTP/1 representation: spans of `buf`; added lines go to `added`.
    pub fn h1(
        buf: &'a [u8],
        head: &'a mut ResponseHead,
        lines: &'a mut [HeaderLine],
        added: &'a mut Vec<u8>,
    ) -> Self {
        ResponseHeader {
            repr: RespRepr::H1 { buf, head, lines },
            added,
        }
    }

    /// The owned representation.
    pub fn owned(resp: &'a mut OwnedResponse, added: &'a mut Vec<u8>) -> Self {
        ResponseHeader {
            repr: RespRepr::Owned(resp),
            added,
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        match &self.repr {
            RespRepr::H1 { head, .. } => head.status,
            RespRepr::Owned(r) => r.status,
        }
    }

    /// Changes the status code (an HTTP/1 status line is then written
    /// anew).
    pub fn set_status(&mut self, status: u16) {
        match &mut self.repr {
            RespRepr::H1 { head, .. } => {
                head.status = status;
                head.status_rewritten = true;
            }
            RespRepr::Owned(r) => r.status = status,
        }
    }

    /// The fields as the backend sent them.
    fn view(&self) -> View<'_> {
        match &self.repr {
            RespRepr::H1 { buf, lines, .. } => (Some((buf, &**lines)), &[]),
            RespRepr::Owned(r) => (None, &r.headers),
        }
    }

    /// Removes the received fields named `lower` (not the added ones).
    fn remove_received(&mut self, lower: &[u8]) {
        match &mut self.repr {
            RespRepr::H1 { buf, lines, .. } => remove_lines(buf, lines, lower),
            RespRepr::Owned(r) => r.headers.retain(|(n, _)| !name_eq(n, lower)),
        }
    }

    header_api!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{self, Parsed};

    fn parse_req(raw: &[u8]) -> (RequestHead, Vec<HeaderLine>) {
        let mut head = RequestHead::default();
        let mut lines = Vec::new();
        let limits = parse::RequestLimits {
            max_headers: 64,
            max_uri: 8192,
            underscores: false,
        };
        assert!(matches!(
            parse::parse_request_with(raw, &limits, &mut head, &mut lines),
            Ok(Parsed::Complete)
        ));
        (head, lines)
    }

    #[test]
    fn both_representations_answer_alike() {
        let raw = b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: api.test\r\nAccept: a\r\nX-Tag: one\r\nX-Tag: two\r\n\r\n";
        let (head, mut lines) = parse_req(raw);
        let mut added = Vec::new();
        let mut h1 = RequestHeader::h1(raw, &head, &mut lines, &mut added);
        let mut owned = OwnedRequest {
            method: b"GET".to_vec(),
            path_query: b"/a/b?x=1&y=2".to_vec(),
            host: Some(b"api.test".to_vec()),
            headers: vec![
                (b"accept".to_vec(), b"a".to_vec()),
                (b"x-tag".to_vec(), b"one".to_vec()),
                (b"x-tag".to_vec(), b"two".to_vec()),
            ],
        };
        let mut added2 = Vec::new();
        let mut o = RequestHeader::owned(&mut owned, &mut added2);
        for r in [&mut h1, &mut o] {
            assert_eq!(r.method(), b"GET");
            assert_eq!(r.path(), b"/a/b");
            assert_eq!(r.query(), Some(&b"x=1&y=2"[..]));
            assert_eq!(r.query_param(b"y"), Some(&b"2"[..]));
            assert_eq!(r.host(), Some(&b"api.test"[..]));
            assert_eq!(r.headers(b"x-tag").collect::<Vec<_>>(), [b"one", b"two"]);
            r.remove_header(b"x-tag");
            assert_eq!(r.header(b"x-tag"), None);
            r.append_header(b"X-User", b"alice");
            assert_eq!(r.header(b"x-user"), Some(&b"alice"[..]));
            r.insert_header(b"X-User", b"bob");
            assert_eq!(r.headers(b"x-user").collect::<Vec<_>>(), [b"bob"]);
            assert_eq!(r.header(b"accept"), Some(&b"a"[..]));
        }
        assert_eq!(added, b"X-User: bob\r\n");
        // Removed lines are skipped by the forwarded head.
        let kept: Vec<_> = lines
            .iter()
            .filter(|l| l.role.forwarded())
            .map(|l| l.name.of(raw))
            .collect();
        assert!(!kept.iter().any(|n| n.eq_ignore_ascii_case(b"x-tag")));
    }

    #[test]
    fn a_response_status_and_headers_change_through_one_api() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\n\r\n";
        let mut head = ResponseHead::default();
        let mut lines = Vec::new();
        assert!(matches!(
            parse::parse_response(raw, &mut head, &mut lines),
            Ok(Parsed::Complete)
        ));
        let mut added = Vec::new();
        let mut r = ResponseHeader::h1(raw, &mut head, &mut lines, &mut added);
        assert_eq!(r.status(), 200);
        r.set_status(201);
        assert_eq!(r.status(), 201);
        assert_eq!(r.header(b"content-type"), Some(&b"text/plain"[..]));
        r.remove_header(b"x-a");
        r.append_header(b"Vary", b"Origin");
        assert_eq!(r.header(b"x-a"), None);
        assert_eq!(r.header(b"vary"), Some(&b"Origin"[..]));
        assert!(head.status_rewritten && head.status == 201);

        let mut o = OwnedResponse::new(200);
        o.push(b"Content-Type", b"application/json");
        let mut added2 = Vec::new();
        let mut r = ResponseHeader::owned(&mut o, &mut added2);
        r.set_status(404);
        r.insert_header(b"Content-Type", b"text/plain");
        assert_eq!(r.status(), 404);
        assert_eq!(
            r.headers(b"content-type").collect::<Vec<_>>(),
            [b"text/plain"]
        );
    }
}
