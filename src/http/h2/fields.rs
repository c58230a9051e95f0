//! HTTP/2 fields from the bytes of a head: the names ringgate writes
//! itself without an allocation each, values that share one buffer, and
//! the fields whose value is new on every message sent without entering
//! the HPACK table.
//!
//! Performance notes: `HeaderName::from_bytes` copies every name that is
//! not one of `http`'s standard ones (`x-request-id`, `x-forwarded-for`,
//! `grpc-status`) into an allocation of its own, and `HeaderValue::
//! from_bytes` every value; [`name`] answers the usual ones with a static
//! name and [`value`] slices one shared `Bytes`. A value that differs on
//! every message (`x-request-id`, `traceparent`, `grpc-timeout`) would
//! enter the connection's dynamic table each time and push out the fields
//! that repeat (`x-forwarded-for`, `via`, `content-type`), so that every
//! field was sent as a literal and indexed anew: [`unique`] marks them
//! never-indexed, and the rest stay one-byte references.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The field name of `bytes` (any case), `None` when it is not a token.
/// The names ringgate adds, those gRPC answers carry and the most common
/// ones are found without `HeaderName::from_bytes` (and without an
/// allocation for the non-standard ones).
pub fn name(bytes: &[u8]) -> Option<HeaderName> {
    use http::header;
    let mut lower = [0u8; 20];
    if bytes.len() <= lower.len() {
        let l = &mut lower[..bytes.len()];
        l.copy_from_slice(bytes);
        l.make_ascii_lowercase();
        let known = match &*l {
            b"date" => header::DATE,
            b"server" => header::SERVER,
            b"via" => header::VIA,
            b"etag" => header::ETAG,
            b"accept" => header::ACCEPT,
            b"content-type" => header::CONTENT_TYPE,
            b"content-length" => header::CONTENT_LENGTH,
            b"user-agent" => header::USER_AGENT,
            b"last-modified" => header::LAST_MODIFIED,
            b"accept-ranges" => header::ACCEPT_RANGES,
            b"accept-encoding" => header::ACCEPT_ENCODING,
            b"cache-control" => header::CACHE_CONTROL,
            b"x-request-id" => HeaderName::from_static("x-request-id"),
            b"x-forwarded-for" => HeaderName::from_static("x-forwarded-for"),
            b"x-forwarded-proto" => HeaderName::from_static("x-forwarded-proto"),
            b"x-forwarded-host" => HeaderName::from_static("x-forwarded-host"),
            b"traceparent" => HeaderName::from_static("traceparent"),
            b"grpc-status" => HeaderName::from_static("grpc-status"),
            b"grpc-message" => HeaderName::from_static("grpc-message"),
            b"grpc-timeout" => HeaderName::from_static("grpc-timeout"),
            b"grpc-encoding" => HeaderName::from_static("grpc-encoding"),
            b"grpc-accept-encoding" => HeaderName::from_static("grpc-accept-encoding"),
            _ => return HeaderName::from_bytes(bytes).ok(),
        };
        return Some(known);
    }
    HeaderName::from_bytes(bytes).ok()
}

/// The value at `bytes[a..b]`, sharing `bytes`; `None` when it is not a
/// valid field value.
pub fn value(bytes: &Bytes, a: usize, b: usize) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes.slice(a..b)).ok()
}

/// Fields of an HTTP/1.1 answer that its HTTP/2 form does not carry: the
/// connection-specific ones (RFC 9113 8.2.2) and `trailer` (HTTP/2
/// trailers need no announcement).
pub fn not_in_h2_answer(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

/// Fields whose value is new on every message: sent as never-indexed
/// literals, so they do not churn the HPACK dynamic table.
pub fn unique(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "x-request-id" | "traceparent" | "tracestate" | "grpc-timeout"
    )
}

/// Appends `name: value`, never-indexed when [`unique`].
pub fn append(map: &mut HeaderMap, name: HeaderName, mut value: HeaderValue) {
    if unique(&name) {
        value.set_sensitive(true);
    }
    map.append(name, value);
}

/// The `name: value` lines of `block` (each ended by CRLF or LF), as
/// offsets plus `base`: `(name_start, name_end, value_start, value_end)`,
/// the value without surrounding whitespace; `None` on a line with no
/// colon or one that continues the last (obsolete folding), or as soon
/// as `f` says `None`.
pub fn lines(
    block: &[u8],
    base: usize,
    mut f: impl FnMut(usize, usize, usize, usize) -> Option<()>,
) -> Option<()> {
    let mut at = 0;
    while at < block.len() {
        let end = memchr::memchr(b'\n', &block[at..]).map_or(block.len(), |p| at + p);
        let mut line_end = end;
        if line_end > at && block[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        if line_end > at {
            let line = &block[at..line_end];
            if matches!(line[0], b' ' | b'\t') {
                return None;
            }
            let colon = memchr::memchr(b':', line)?;
            let v = &line[colon + 1..];
            let lead = v.len() - v.trim_ascii_start().len();
            let v = v.trim_ascii();
            let vs = at + colon + 1 + lead;
            f(base + at, base + at + colon, base + vs, base + vs + v.len())?;
        }
        at = end + 1;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_are_static_and_any_case() {
        assert_eq!(name(b"X-Request-Id").unwrap(), "x-request-id");
        assert_eq!(
            name(b"GRPC-Accept-Encoding").unwrap(),
            "grpc-accept-encoding"
        );
        assert_eq!(name(b"Content-Type").unwrap(), http::header::CONTENT_TYPE);
        assert_eq!(name(b"DATE").unwrap(), http::header::DATE);
        assert_eq!(
            name(b"Access-Control-Allow-Origin").unwrap(),
            http::header::ACCESS_CONTROL_ALLOW_ORIGIN
        );
        assert_eq!(name(b"x-custom").unwrap(), "x-custom");
        assert!(name(b"bad name").is_none());
    }

    #[test]
    fn lines_split_and_trim() {
        let block = b"A: 1\r\nB:two  \r\nC:\r\n";
        let mut got = Vec::new();
        lines(block, 10, |a, b, c, d| {
            got.push((
                block[a - 10..b - 10].to_vec(),
                block[c - 10..d - 10].to_vec(),
            ));
            Some(())
        })
        .unwrap();
        assert_eq!(
            got,
            vec![
                (b"A".to_vec(), b"1".to_vec()),
                (b"B".to_vec(), b"two".to_vec()),
                (b"C".to_vec(), b"".to_vec()),
            ]
        );
        assert!(lines(b"no colon\r\n", 0, |_, _, _, _| Some(())).is_none());
        assert!(lines(b"A: 1\r\n folded\r\n", 0, |_, _, _, _| Some(())).is_none());
    }

    #[test]
    fn unique_values_are_never_indexed() {
        let mut m = HeaderMap::new();
        append(
            &mut m,
            name(b"x-request-id").unwrap(),
            HeaderValue::from_static("a"),
        );
        append(
            &mut m,
            name(b"via").unwrap(),
            HeaderValue::from_static("1.1 ringgate"),
        );
        assert!(m["x-request-id"].is_sensitive());
        assert!(!m["via"].is_sensitive());
    }
}
