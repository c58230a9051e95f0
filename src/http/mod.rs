//! HTTP/1.1 in place: request and response heads parsed with httparse into
//! byte spans of the connection's own buffer ([`parse`]), chunked framing
//! scanned without copying ([`chunked`]), HTTP-dates ([`date`]), forwarded
//! heads written as slices of the bytes read plus the few headers ringgate
//! adds ([`head`]), and the downstream connection loop that ties them to
//! the phases ([`conn`]); the client side for requests ringgate makes
//! itself, free of I/O ([`client`]).
//!
//! Performance notes: nothing on the proxy path allocates per request. Every buffer
//! (read buffers, header spans, the list of slices to write, the iovec
//! array) belongs to the connection and is reused for each request on it.

pub mod answer;
pub mod chunked;
pub mod client;
pub mod conn;
pub mod date;
pub mod h2;
pub mod head;
pub mod message;
pub mod parse;

/// Hard upper bound for `server.max_headers` (the parser's stack array).
pub const MAX_HEADERS_LIMIT: usize = 256;

/// Reason phrase for the statuses ringgate itself produces.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Case-insensitive ASCII comparison of a header name with a lower-case
/// constant.
#[inline]
pub fn name_eq(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len()
        && name
            .iter()
            .zip(lower)
            .all(|(a, b)| a.to_ascii_lowercase() == *b)
}

/// Splits a comma-separated header value into trimmed, non-empty tokens.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').filter_map(|t| {
        let t = t.trim_ascii();
        (!t.is_empty()).then_some(t)
    })
}

/// The session's client transport: an HTTP/1 connection (plain or TLS) or
/// an HTTP/2 stream. Phases read the request body from it and write the
/// answer to it; an exchange that can use the stream's own halves at once
/// (an HTTP/2 upstream, full duplex) asks for them.
pub trait ClientIo: monoio::io::AsyncReadRent + monoio::io::AsyncWriteRent {
    /// The HTTP/2 stream behind the transport, when it is one.
    fn h2_stream(&mut self) -> Option<&mut h2::stream::H2Client> {
        None
    }
}

impl ClientIo for monoio::net::TcpStream {}

impl ClientIo for crate::tls::stream::TlsStream {}

impl ClientIo for h2::stream::H2Client {
    fn h2_stream(&mut self) -> Option<&mut h2::stream::H2Client> {
        Some(self)
    }
}
