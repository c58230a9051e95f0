//! Properties of ringgate's HTTP/1 parsing and forwarding, beyond "does not
//! crash". Shared, as plain Rust, by the fuzz targets (`fuzz/fuzz_targets/`)
//! and by the corpus replay test (`tests/fuzz_replay.rs`), both with
//! `#[path = ".../fuzz/props/mod.rs"] mod props;`.
//!
//! Each `check_*` function takes one corpus input and returns `Err` with a
//! description when a property fails. ringgate is only the system under
//! test here: what is valid HTTP is decided by [`strict`], an independent
//! reader written for these checks, never by calling into ringgate.
//!
//! - `request_head`: when `parse_request_with` accepts a head, the head
//!   `build_request_head` forwards parses under the strict reader, with the
//!   method, target, `Host` (the routed host), end-to-end headers and body
//!   framing that ringgate decided on (a differential check); ringgate adds
//!   only its own headers, once each, and the client's identity headers are
//!   replaced (or extended from a trusted proxy). A chunked body after the
//!   head goes through the `chunked` properties.
//! - `chunked`: `ChunkedScanner` fed the body in pieces (cut where the
//!   input's first bytes say, and one byte at a time) gives what it gives
//!   in one piece; whatever it accepts, the strict decoder accepts too, with
//!   the same end and payload; what it re-frames decodes strictly to the
//!   same payload, with ringgate's own size lines, no extensions, and only
//!   the allowed trailers.
//! - `response_head`: like `request_head`, for `parse_response` and
//!   `build_response_head` (answering a GET and a HEAD), with the framing
//!   ringgate chose; the status line must stay a status line with a code
//!   of 100 to 599.
//! - `config`: `Config::parse` (what `ringgate check` runs) on any UTF-8
//!   text returns a config or errors that each name a key, a message and a
//!   fix; it never panics.
#![allow(dead_code)]

pub mod strict;

use ringgate::config::Config;
use ringgate::http::chunked::ChunkedScanner;
use ringgate::http::head::OutHead;
use ringgate::http::parse::{
    BodyFraming, HeadError, HeaderRole, Parsed, RequestLimits, downgrade_minor, parse_request_with,
    parse_response,
};
use ringgate::proxy::forward::{Conn, build_request_head, build_response_head};
use std::net::SocketAddr;
use strict::{Chunked, Field, Framing, trim_ows};

/// The fuzz targets, each with a corpus directory `fuzz/corpus/<name>/`.
pub const TARGETS: [&str; 4] = ["request_head", "chunked", "response_head", "config"];

/// Runs the properties of `target` on one input.
pub fn check(target: &str, data: &[u8]) -> Result<(), String> {
    match target {
        "request_head" => check_request_head(data),
        "chunked" => check_chunked(data),
        "response_head" => check_response_head(data),
        "config" => check_config(data),
        _ => Err(format!("no fuzz target {target:?}")),
    }
}

/// The client's address in the harness (IPv4, so `Forwarded` has no quotes).
const PEER: &str = "192.0.2.10:40000";
/// The backend the request goes to.
const UPSTREAM: &str = "127.0.0.1:9001";
/// Chunk extensions must follow RFC 9112's grammar (token names, token or
/// quoted-string values), as ringgate's scanner enforces.
pub const RFC_CHUNK_EXTENSIONS: bool = true;

/// `server.forward_trailers` in the harness.
const ALLOW_TRAILERS: [&[u8]; 2] = [b"x-sum", b"grpc-status"];

/// Headers only ringgate writes into a forwarded request (once each).
const REQUEST_ADDED: [&[u8]; 12] = [
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
    b"x-real-ip",
    b"via",
    b"x-request-id",
    b"connection",
    b"upgrade",
];
/// Headers only ringgate writes into a relayed response.
const RESPONSE_ADDED: [&[u8]; 4] = [
    b"content-length",
    b"transfer-encoding",
    b"x-request-id",
    b"connection",
];
/// Set only by ringgate's auth filter (not in this harness): never from a
/// client.
const IDENTITY: [&[u8]; 5] = [
    b"x-user-id",
    b"x-user-roles",
    b"x-consumer-id",
    b"x-auth-method",
    b"x-consumer-tier",
];

pub fn show(b: &[u8]) -> String {
    const MAX: usize = 600;
    if b.len() > MAX {
        format!(
            "{:?}... ({} bytes)",
            String::from_utf8_lossy(&b[..MAX]),
            b.len()
        )
    } else {
        format!("{:?}", String::from_utf8_lossy(b))
    }
}

fn lower(b: &[u8]) -> Vec<u8> {
    b.to_ascii_lowercase()
}

fn field_named<'a>(fields: &'a [Field], name: &[u8]) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// `sent` minus the multiset `kept` (names compared case-insensitively,
/// values exactly): what ringgate added. Errs when a kept line is missing.
fn added_fields(sent: &[Field], kept: &[Field]) -> Result<Vec<Field>, String> {
    let mut rest: Vec<Option<&Field>> = sent.iter().map(Some).collect();
    for (name, value) in kept {
        let hit = rest
            .iter_mut()
            .find(|f| f.is_some_and(|(n, v)| n.eq_ignore_ascii_case(name) && v == value));
        match hit {
            Some(slot) => *slot = None,
            None => {
                return Err(format!(
                    "ringgate decided to forward {}: {} but it is not in what it sends",
                    show(name),
                    show(value)
                ));
            }
        }
    }
    Ok(rest.into_iter().flatten().cloned().collect())
}

/// The added lines may only be ringgate's own, each at most once.
fn check_added(added: &[Field], allowed: &[&[u8]]) -> Result<(), String> {
    for (i, (name, value)) in added.iter().enumerate() {
        let l = lower(name);
        if !allowed.contains(&l.as_slice()) {
            return Err(format!(
                "{}: {} is sent though ringgate did not decide to forward it",
                show(name),
                show(value)
            ));
        }
        if added[..i].iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(format!("ringgate adds {} twice", show(name)));
        }
    }
    Ok(())
}

fn framing_of(f: BodyFraming) -> Option<Framing> {
    match f {
        BodyFraming::None => Some(Framing::None),
        BodyFraming::Length(n) => Some(Framing::Length(n)),
        BodyFraming::Chunked => Some(Framing::Chunked),
        BodyFraming::UntilClose => None,
    }
}

// ---------------------------------------------------------------- requests

/// `request_head`: the input is a request head, possibly with body bytes.
pub fn check_request_head(data: &[u8]) -> Result<(), String> {
    for trusted in [false, true] {
        for underscores in [false, true] {
            request_once(data, trusted, underscores).map_err(|e| {
                format!(
                    "request {} (peer trusted: {trusted}, underscores_in_headers: \
                     {underscores}): {e}",
                    show(data)
                )
            })?;
        }
    }
    Ok(())
}

/// What ringgate does with a request head: refuses it (`Err`, the
/// status), or accepts it (`Ok`, with the connection state holding its
/// decisions and the built head in `c.out`, `c.out.src` set).
fn ringgate_request(data: &[u8], trusted: bool, underscores: bool) -> Result<Conn, String> {
    let peer: SocketAddr = PEER.parse().expect("address");
    let upstream: SocketAddr = UPSTREAM.parse().expect("address");
    let mut c = Conn::new(16384, peer, 100);
    c.buf.extend_from_slice(data);
    let limits = RequestLimits {
        max_headers: 100,
        max_uri: 8192,
        underscores,
    };
    // As the connection loop does: HTTP/1.2 and later 1.x go on as 1.1.
    let mut res = parse_request_with(&c.buf, &limits, &mut c.head, &mut c.lines);
    if matches!(res, Err(HeadError::Version)) && downgrade_minor(&mut c.buf).is_ok() {
        res = parse_request_with(&c.buf, &limits, &mut c.head, &mut c.lines);
    }
    match res {
        Ok(Parsed::Complete) => {}
        Ok(Parsed::Partial) => return Err("incomplete".into()),
        Err(e) => return Err(format!("{} {}", e.status(), e.message())),
    }
    c.trusted_peer = trusted;
    // What `set_request_id` leaves (it needs a worker): only whether the
    // client's id is used; ringgate's own id is then empty here.
    c.rid.from_client = c.head.request_id.is_some();
    build_request_head(&mut c, upstream);
    c.out.src = c.buf.clone();
    Ok(c)
}

/// What ringgate does with an input of `target` (for a person reading a
/// finding): refused, or what it would send.
pub fn describe(target: &str, data: &[u8]) -> String {
    match target {
        "request_head" => match ringgate_request(data, false, false) {
            Ok(c) => format!("forwarded as {}", show(&c.out.to_vec())),
            Err(e) => format!("refused: {e}"),
        },
        "response_head" => match ringgate_response(data, false) {
            Ok(Some(c)) => format!("relayed as {}", show(&c.out.to_vec())),
            Ok(None) => "a 101: tunnel".into(),
            Err(e) => format!("refused: {e}"),
        },
        "chunked" => match check_chunked(data) {
            Ok(()) => "properties hold".into(),
            Err(e) => e,
        },
        _ => String::new(),
    }
}

fn request_once(data: &[u8], trusted: bool, underscores: bool) -> Result<(), String> {
    let peer: SocketAddr = PEER.parse().expect("address");
    let upstream: SocketAddr = UPSTREAM.parse().expect("address");
    let Ok(c) = ringgate_request(data, trusted, underscores) else {
        return Ok(());
    };
    // What ringgate decided.
    let buf = c.buf.clone();
    let h = c.head.clone();
    let method = h.method.of(&buf).to_vec();
    let target = h.path_query.of(&buf).to_vec();
    let host = match h.host {
        Some(s) => s.of(&buf).to_vec(),
        None => upstream.to_string().into_bytes(),
    };
    let kept: Vec<Field> = c
        .lines
        .iter()
        .filter(|l| l.role != HeaderRole::Drop)
        .map(|l| {
            (
                l.name.of(&buf).to_vec(),
                trim_ows(l.value.of(&buf)).to_vec(),
            )
        })
        .collect();
    let framing = framing_of(h.framing).ok_or("a request framed by the close")?;

    let out = c.out.to_vec();
    let sent = strict::request(&out).map_err(|e| {
        format!(
            "the forwarded head {} is refused by a strict parser: {e}",
            show(&out)
        )
    })?;
    let ctx = |what: String| format!("{what}; forwarded head {}", show(&out));

    if sent.method != method {
        return Err(ctx(format!(
            "method {} sent, {} decided",
            show(&sent.method),
            show(&method)
        )));
    }
    if sent.target != target {
        return Err(ctx(format!(
            "target {} sent, {} decided",
            show(&sent.target),
            show(&target)
        )));
    }
    if sent.host != host {
        return Err(ctx(format!(
            "Host {} sent, {} routed",
            show(&sent.host),
            show(&host)
        )));
    }
    let same_framing =
        sent.framing == framing || (framing == Framing::None && sent.framing == Framing::Length(0));
    if !same_framing {
        return Err(ctx(format!(
            "body framed as {:?}, ringgate reads it as {framing:?}",
            sent.framing
        )));
    }
    let added = added_fields(&sent.fields, &kept).map_err(ctx)?;
    check_added(&added, &REQUEST_ADDED).map_err(ctx)?;

    // The client's identity is ringgate's to state.
    let ip = peer.ip().to_string().into_bytes();
    let xff = field_named(&sent.fields, b"x-forwarded-for");
    let client_xff = h.forwarded_for.map(|s| s.of(&buf));
    match xff.as_slice() {
        [v] if !trusted || client_xff.is_none() => {
            if *v != ip.as_slice() {
                return Err(ctx(format!(
                    "X-Forwarded-For {} from an untrusted peer",
                    show(v)
                )));
            }
        }
        [v] => {
            if strict::list(v).last() != Some(ip.as_slice()) {
                return Err(ctx(format!(
                    "X-Forwarded-For {} does not end with the peer",
                    show(v)
                )));
            }
        }
        _ => return Err(ctx(format!("{} X-Forwarded-For lines", xff.len()))),
    }
    let real_ip = field_named(&sent.fields, b"x-real-ip");
    match real_ip.as_slice() {
        [] => {}
        [v] if !trusted => {
            if *v != ip.as_slice() {
                return Err(ctx(format!("X-Real-IP {} from an untrusted peer", show(v))));
            }
        }
        [_] => {}
        _ => return Err(ctx("more than one X-Real-IP".into())),
    }
    let fwd = field_named(&sent.fields, b"forwarded");
    match fwd.as_slice() {
        [] => {}
        [v] => {
            let elems: Vec<&[u8]> = strict::list(v).collect();
            let last = elems.last().copied().unwrap_or_default();
            let want_for = [&b"for="[..], &ip].concat();
            if !last
                .split(|&b| b == b';')
                .any(|p| trim_ows(p).eq_ignore_ascii_case(&want_for))
            {
                return Err(ctx(format!(
                    "Forwarded {} does not end with the peer",
                    show(v)
                )));
            }
            if !trusted && elems.len() != 1 {
                return Err(ctx(format!("Forwarded {} from an untrusted peer", show(v))));
            }
        }
        _ => return Err(ctx("more than one Forwarded".into())),
    }
    for (name, _) in &sent.fields {
        let l = lower(name);
        if IDENTITY.contains(&l.as_slice()) {
            return Err(ctx(format!(
                "the client's {} reaches the backend",
                show(name)
            )));
        }
        if !underscores && name.contains(&b'_') {
            return Err(ctx(format!(
                "header name {} with '_' forwarded",
                show(name)
            )));
        }
        if l == b"http2-settings" {
            return Err(ctx("HTTP2-Settings forwarded".into()));
        }
    }
    let upgrade = field_named(&sent.fields, b"upgrade");
    match (upgrade.as_slice(), h.upgrade.is_some()) {
        ([], false) => {}
        ([u], true) if u.eq_ignore_ascii_case(b"websocket") => {
            let conn = field_named(&sent.fields, b"connection");
            if !conn
                .iter()
                .any(|v| strict::list(v).any(|t| t.eq_ignore_ascii_case(b"upgrade")))
            {
                return Err(ctx("Upgrade without Connection: upgrade".into()));
            }
        }
        (u, decided) => {
            return Err(ctx(format!(
                "Upgrade lines {:?} sent; ringgate tunnels: {decided}",
                u.iter().map(|v| show(v)).collect::<Vec<_>>()
            )));
        }
    }

    // A chunked body after the head.
    if h.framing == BodyFraming::Chunked && h.len < data.len() {
        chunked_props(&c.buf[h.len..], &[], RFC_CHUNK_EXTENSIONS)
            .map_err(|e| format!("chunked request body: {e}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- responses

/// `response_head`: the input is a backend's response head, possibly with
/// body bytes.
pub fn check_response_head(data: &[u8]) -> Result<(), String> {
    for head_request in [false, true] {
        response_once(data, head_request).map_err(|e| {
            format!(
                "response {} (to a {} request): {e}",
                show(data),
                if head_request { "HEAD" } else { "GET" }
            )
        })?;
    }
    Ok(())
}

/// What ringgate does with a response head: refuses it (`Err`), tunnels
/// it (a 101, `None`) or relays it (the built head in `c.out`, `c.out.src`
/// set), answering a keep-alive HTTP/1.1 GET (or HEAD) as forward.rs does.
fn ringgate_response(data: &[u8], head_request: bool) -> Result<Option<Conn>, String> {
    let peer: SocketAddr = PEER.parse().expect("address");
    let mut c = Conn::new(16384, peer, 100);
    c.ubuf.extend_from_slice(data);
    match parse_response(&c.ubuf, &mut c.rhead, &mut c.rlines) {
        Ok(Parsed::Complete) => {}
        Ok(Parsed::Partial) => return Err("incomplete".into()),
        Err(e) => return Err(e.to_string()),
    }
    if c.rhead.status == 101 {
        return Ok(None);
    }
    c.head.minor = 1;
    c.head.keep_alive = true;
    c.head.is_head = head_request;
    let framing = c.rhead.framing_for(head_request);
    let close = framing == BodyFraming::UntilClose;
    build_response_head(&mut c, close, false);
    c.out.src = c.ubuf.clone();
    Ok(Some(c))
}

fn response_once(data: &[u8], head_request: bool) -> Result<(), String> {
    // 101 is relayed only to an upgrade request, then the bytes are a
    // tunnel; not an HTTP message to check.
    let Ok(Some(c)) = ringgate_response(data, head_request) else {
        return Ok(());
    };
    let framing = c.rhead.framing_for(head_request);
    let close = framing == BodyFraming::UntilClose;
    let ubuf = c.ubuf.clone();
    let status = c.rhead.status;
    let kept: Vec<Field> = c
        .rlines
        .iter()
        .filter(|l| l.role != HeaderRole::Drop)
        .map(|l| {
            (
                l.name.of(&ubuf).to_vec(),
                trim_ows(l.value.of(&ubuf)).to_vec(),
            )
        })
        .collect();
    let rlen = c.rhead.len;
    let out = c.out.to_vec();
    let sent = strict::response(&out).map_err(|e| {
        format!(
            "the relayed head {} is refused by a strict parser: {e}",
            show(&out)
        )
    })?;
    let ctx = |what: String| format!("{what}; relayed head {}", show(&out));
    if sent.status != status {
        return Err(ctx(format!("status {} sent, {status} read", sent.status)));
    }
    match framing {
        BodyFraming::Length(n) if sent.framing != Framing::Length(n) => {
            return Err(ctx(format!(
                "body framed as {:?}, ringgate relays Content-Length {n}",
                sent.framing
            )));
        }
        BodyFraming::Chunked if sent.framing != Framing::Chunked => {
            return Err(ctx(format!(
                "body framed as {:?}, ringgate relays it chunked",
                sent.framing
            )));
        }
        BodyFraming::UntilClose if sent.framing != Framing::None => {
            return Err(ctx(format!(
                "body framed as {:?}, ringgate relays it until the close",
                sent.framing
            )));
        }
        _ => {}
    }
    if close
        && !field_named(&sent.fields, b"connection")
            .iter()
            .any(|v| strict::list(v).any(|t| t.eq_ignore_ascii_case(b"close")))
    {
        return Err(ctx(
            "a body delimited by the close without Connection: close".into(),
        ));
    }
    let added = added_fields(&sent.fields, &kept).map_err(ctx)?;
    check_added(&added, &RESPONSE_ADDED).map_err(ctx)?;

    if framing == BodyFraming::Chunked && rlen < data.len() {
        chunked_props(&ubuf[rlen..], &[], RFC_CHUNK_EXTENSIONS)
            .map_err(|e| format!("chunked response body: {e}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- chunked

/// `chunked`: the first byte says how many cut bytes follow (an ASCII digit
/// `0`-`9` is that many, any other byte `b` is `b % 8`); each cut byte `d`
/// moves the next cut `d + 1` bytes on. The rest is the chunked body.
pub fn check_chunked(data: &[u8]) -> Result<(), String> {
    check_chunked_with(data, RFC_CHUNK_EXTENSIONS)
}

/// [`check_chunked`], choosing whether chunk extensions must follow the
/// RFC's grammar.
pub fn check_chunked_with(data: &[u8], rfc_extensions: bool) -> Result<(), String> {
    let Some((&first, rest)) = data.split_first() else {
        return Ok(());
    };
    let n = if first.is_ascii_digit() {
        usize::from(first - b'0')
    } else {
        usize::from(first % 8)
    };
    let n = n.min(rest.len());
    let (cut_bytes, body) = rest.split_at(n);
    let mut cuts = Vec::new();
    let mut at = 0;
    for &d in cut_bytes {
        at += usize::from(d) + 1;
        if at >= body.len() {
            break;
        }
        cuts.push(at);
    }
    chunked_props(body, &cuts, rfc_extensions)
        .map_err(|e| format!("chunked body {}: {e}", show(body)))
}

/// What one run of the scanner over a body (in pieces) gave.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    /// Bytes that belong to the body, or the error.
    result: Result<usize, String>,
    done: bool,
    /// `ChunkedScanner::payload`.
    counted: u64,
    /// The payload ranges, concatenated.
    payload: Vec<u8>,
    trailers: Vec<u8>,
}

/// Piece boundaries: `cuts` plus the ends.
fn pieces(len: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut a = 0;
    for &c in cuts.iter().chain(std::iter::once(&len)) {
        if c > a && c <= len {
            v.push((a, c));
            a = c;
        }
    }
    if v.is_empty() {
        v.push((0, len));
    }
    v
}

fn scan_run(body: &[u8], cuts: &[usize]) -> Result<Run, String> {
    let mut s = ChunkedScanner::new();
    let mut payload = Vec::new();
    let mut total = 0;
    let mut failed = None;
    for (a, b) in pieces(body.len(), cuts) {
        let piece = &body[a..b];
        let mut ranges_ok = true;
        let r = s.scan(piece, |x, y| {
            ranges_ok &= x <= y && y <= piece.len();
            if ranges_ok {
                payload.extend_from_slice(&piece[x..y]);
            }
        });
        if !ranges_ok {
            return Err(format!("a payload range outside the piece {a}..{b}"));
        }
        match r {
            Ok(k) => {
                if k > piece.len() {
                    return Err(format!(
                        "scan says {k} bytes of a {}-byte piece",
                        piece.len()
                    ));
                }
                if k < piece.len() && !s.is_done() {
                    return Err(format!(
                        "scan stopped after {k} bytes of a {}-byte piece, not done",
                        piece.len()
                    ));
                }
                total += k;
                if s.is_done() {
                    break;
                }
            }
            Err(e) => {
                failed = Some(e.0.to_string());
                break;
            }
        }
    }
    Ok(Run {
        result: failed.map_or(Ok(total), Err),
        done: s.is_done(),
        counted: s.payload,
        payload,
        trailers: s.trailers().to_vec(),
    })
}

/// Re-frames the body in pieces; returns the result and the bytes sent.
fn reframe_run(body: &[u8], cuts: &[usize]) -> (Result<usize, String>, bool, Vec<u8>) {
    let allow: Vec<Box<[u8]>> = ALLOW_TRAILERS.iter().map(|a| a.to_vec().into()).collect();
    let mut s = ChunkedScanner::new();
    let mut out = OutHead::new();
    let mut total = 0;
    let mut result = Ok(0);
    for (a, b) in pieces(body.len(), cuts) {
        match s.reframe(&body[a..b], a, &mut out, &allow) {
            Ok(k) => {
                total += k;
                result = Ok(total);
                if s.is_done() {
                    break;
                }
            }
            Err(e) => {
                result = Err(e.0.to_string());
                break;
            }
        }
    }
    out.src = body.to_vec();
    (result, s.is_done(), out.to_vec())
}

/// The trailer lines ringgate kept, read back as fields.
fn kept_trailers(lines: &[u8]) -> Result<Vec<Field>, String> {
    let mut v = Vec::new();
    let mut rest = lines;
    while !rest.is_empty() {
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Err(format!("kept trailers not CRLF lines: {}", show(lines)));
        };
        let line = &rest[..end];
        let colon = line.iter().position(|&b| b == b':').unwrap_or(0);
        v.push((
            line[..colon].to_vec(),
            trim_ows(&line[colon + 1..]).to_vec(),
        ));
        rest = &rest[end + 2..];
    }
    Ok(v)
}

/// The chunked properties for one body and one set of cuts.
pub fn chunked_props(body: &[u8], cuts: &[usize], rfc_extensions: bool) -> Result<(), String> {
    let whole = scan_run(body, &[])?;
    // In pieces: the cuts asked for, and one byte at a time.
    let bytewise: Vec<usize> = (1..body.len()).collect();
    for (what, cs) in [("cut", cuts), ("one byte at a time", &bytewise[..])] {
        if cs.is_empty() {
            continue;
        }
        let split = scan_run(body, cs)?;
        if split != whole {
            return Err(format!(
                "scanned {what} at {:?}: {split:?}; in one piece: {whole:?}",
                &cs[..cs.len().min(16)]
            ));
        }
    }

    // Against the strict decoder.
    let strict = strict::chunked(body, rfc_extensions);
    match (&whole.result, whole.done, &strict) {
        (Err(_), _, _) => {}
        (
            Ok(k),
            true,
            Chunked::Done {
                len,
                payload,
                trailers,
                ..
            },
        ) => {
            if k != len {
                return Err(format!(
                    "ringgate ends the body after {k} bytes, a strict decoder after {len}"
                ));
            }
            if *payload != whole.payload {
                return Err(format!(
                    "payload {} from ringgate, {} from a strict decoder",
                    show(&whole.payload),
                    show(payload)
                ));
            }
            let kept = kept_trailers(&whole.trailers)?;
            if kept != *trailers {
                return Err(format!(
                    "trailers {kept:?} kept by ringgate, {trailers:?} read by a strict decoder"
                ));
            }
        }
        (Ok(_), false, Chunked::More { payload }) => {
            if *payload != whole.payload {
                return Err(format!(
                    "payload so far {} from ringgate, {} from a strict decoder",
                    show(&whole.payload),
                    show(payload)
                ));
            }
        }
        (Ok(k), done, s) => {
            return Err(format!(
                "ringgate accepts {k} bytes (done: {done}), a strict decoder says {s:?}"
            ));
        }
    }

    // What ringgate sends on: re-framed, in one piece and in pieces.
    for (what, cs) in [
        ("whole", &[][..]),
        ("cut", cuts),
        ("one byte at a time", &bytewise[..]),
    ] {
        if what != "whole" && cs.is_empty() {
            continue;
        }
        let (res, done, sent) = reframe_run(body, cs);
        if res != whole.result || done != whole.done {
            return Err(format!(
                "re-framing {what}: {res:?} (done: {done}); scanning: {:?} (done: {})",
                whole.result, whole.done
            ));
        }
        if res.is_err() {
            continue;
        }
        let ctx = |e: String| format!("re-framed {what} as {}: {e}", show(&sent));
        match strict::chunked(&sent, true) {
            Chunked::Done {
                len,
                payload,
                trailers,
                plain,
            } if done => {
                if len != sent.len() {
                    return Err(ctx(format!("ends after {len} bytes")));
                }
                if payload != whole.payload {
                    return Err(ctx(format!("payload {}", show(&payload))));
                }
                if !plain {
                    return Err(ctx("a size line that is not ringgate's own".into()));
                }
                let want: Vec<Field> = kept_trailers(&whole.trailers)?
                    .into_iter()
                    .filter(|(n, _)| ALLOW_TRAILERS.contains(&lower(n).as_slice()))
                    .collect();
                if trailers != want {
                    return Err(ctx(format!("trailers {trailers:?}, allowed ones {want:?}")));
                }
            }
            Chunked::More { payload } if !done => {
                if payload != whole.payload {
                    return Err(ctx(format!("payload so far {}", show(&payload))));
                }
            }
            other => {
                return Err(ctx(format!(
                    "a strict decoder says {other:?} (done: {done})"
                )));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- config

/// `config`: any UTF-8 text through `Config::parse`, as `ringgate check`
/// reads a file. Texts naming a device or proc file are skipped (a
/// `token_file` there would block the run; the config is the operator's).
pub fn check_config(data: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    if text.contains("/dev") || text.contains("/proc") {
        return Ok(());
    }
    match Config::parse(text) {
        Ok(_) => Ok(()),
        Err(errs) if errs.0.is_empty() => {
            Err(format!("config {}: no errors, no config", show(data)))
        }
        Err(errs) => {
            for e in &errs.0 {
                if e.key.is_empty() || e.message.is_empty() || e.fix.is_empty() {
                    return Err(format!(
                        "config {}: an error without key, message or fix: {e:?}",
                        show(data)
                    ));
                }
            }
            Ok(())
        }
    }
}
