//! Response compression: gzip, brotli and zstd, negotiated from
//! `Accept-Encoding`, streamed chunk by chunk (the response body phase).
//!
//! Key components: [`Policy`] (a route's `compress`, compiled),
//! [`negotiate`] (the request phase: the best coding the client accepts,
//! q-values honoured, ties broken by the route's order), [`response_filter`]
//! (the response header phase: whether this answer is compressed, and its
//! head changed for it: `Content-Encoding`, `Vary: Accept-Encoding`, a weak
//! `ETag`, no `Content-Length`) and [`Encoder`] (the body phase: each piece
//! of the body in, compressed bytes out).
//!
//! Not compressed: HEAD, 1xx/204/206/304, a response that already has a
//! `Content-Encoding`, `Cache-Control: no-transform`, a `Content-Length`
//! under `min_bytes`, and content types outside the text-like set
//! ([`compressible`]: `text/*`, JSON, JavaScript, XML, SVG, `+json`/`+xml`
//! types; images, audio, video, archives and anything unlabelled are not).
//!
//! Performance notes: a route without `compress` never reaches this
//! module. A compressed answer holds one encoder (its window) and one
//! output buffer for as long as it streams; memory does not grow with the
//! body. A cached route stores each encoding as its own variant (the
//! answer carries `Vary: Accept-Encoding`).

use crate::config::Errors;
use crate::http::message::ResponseHeader;
use serde::Deserialize;
use std::io::Write;

/// `compress = true` or `compress = { ... }` on a route.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum CompressFile {
    /// `true`: the defaults; `false`: off.
    On(bool),
    /// The table form.
    Table(CompressTable),
}

/// `compress = { algorithms, min_bytes, ... }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompressTable {
    /// Codings offered, in the route's order of preference.
    pub algorithms: Option<Vec<String>>,
    /// Bodies known to be shorter than this are sent as they are.
    pub min_bytes: Option<u64>,
    /// gzip level, 1-9.
    pub gzip_level: Option<u32>,
    /// brotli quality, 0-11.
    pub brotli_level: Option<u32>,
    /// zstd level, 1-19.
    pub zstd_level: Option<i32>,
}

/// A content coding ringgate can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// brotli (`br`).
    Br,
    /// zstd.
    Zstd,
    /// gzip.
    Gzip,
}

impl Coding {
    /// The token in `Accept-Encoding` / `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    fn parse(s: &str) -> Option<Coding> {
        match s {
            "br" => Some(Coding::Br),
            "zstd" => Some(Coding::Zstd),
            "gzip" => Some(Coding::Gzip),
            _ => None,
        }
    }
}

/// Default `min_bytes`.
pub const DEFAULT_MIN_BYTES: u64 = 1024;

/// A route's `compress`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Codings offered, in preference order.
    pub algorithms: Vec<Coding>,
    /// Known-length bodies under this are not compressed.
    pub min_bytes: u64,
    /// gzip level.
    pub gzip_level: u32,
    /// brotli quality.
    pub brotli_level: u32,
    /// zstd level.
    pub zstd_level: i32,
}

/// Compiles `routes[i].compress`; `None` when off or invalid (errors in
/// `errs`).
pub fn compile(i: usize, f: &CompressFile, errs: &mut Errors) -> Option<Policy> {
    let key = |k: &str| format!("routes[{i}].compress{k}");
    let t = match f {
        CompressFile::On(false) => return None,
        CompressFile::On(true) => CompressTable {
            algorithms: None,
            min_bytes: None,
            gzip_level: None,
            brotli_level: None,
            zstd_level: None,
        },
        CompressFile::Table(t) => t.clone(),
    };
    let before = errs.0.len();
    let mut algorithms = Vec::new();
    for a in t
        .algorithms
        .unwrap_or_else(|| vec!["br".into(), "zstd".into(), "gzip".into()])
    {
        match Coding::parse(&a) {
            Some(c) if !algorithms.contains(&c) => algorithms.push(c),
            Some(_) => errs.push(
                key(".algorithms"),
                format!("\"{a}\" is listed twice"),
                "list each coding once",
            ),
            None => errs.push(
                key(".algorithms"),
                format!("unknown coding \"{a}\""),
                "use \"br\", \"zstd\" and/or \"gzip\"",
            ),
        }
    }
    if algorithms.is_empty() && errs.0.len() == before {
        errs.push(
            key(".algorithms"),
            "no coding listed",
            "list at least one of \"br\", \"zstd\", \"gzip\" (or set compress = false)",
        );
    }
    let mut level = |name: &str, v: Option<i64>, range: std::ops::RangeInclusive<i64>, d: i64| {
        let v = v.unwrap_or(d);
        if !range.contains(&v) {
            errs.push(
                key(&format!(".{name}")),
                format!("{v} is out of range"),
                format!("use {} to {}", range.start(), range.end()),
            );
        }
        v
    };
    let gzip_level = level("gzip_level", t.gzip_level.map(i64::from), 1..=9, 6) as u32;
    let brotli_level = level("brotli_level", t.brotli_level.map(i64::from), 0..=11, 4) as u32;
    let zstd_level = level("zstd_level", t.zstd_level.map(i64::from), 1..=19, 3) as i32;
    if errs.0.len() > before {
        return None;
    }
    Some(Policy {
        algorithms,
        min_bytes: t.min_bytes.unwrap_or(DEFAULT_MIN_BYTES),
        gzip_level,
        brotli_level,
        zstd_level,
    })
}

/// The request phase: the coding to use for this request's answer, from
/// its `Accept-Encoding` values: the highest q-value among the route's
/// codings (`*` stands for any not named; `q=0` refuses), ties going to the
/// route's order. `None`: send the body as it is.
pub fn negotiate<'v>(p: &Policy, accept: impl Iterator<Item = &'v [u8]>) -> Option<Coding> {
    // q-values in thousandths, per offered coding; u16::MAX = not named.
    let mut q = [u16::MAX; 3];
    let mut star = None;
    let mut any = false;
    for value in accept {
        for item in crate::http::tokens(value) {
            any = true;
            let mut parts = item.split(|&b| b == b';');
            let name = parts.next().unwrap_or(b"").trim_ascii();
            let mut weight = 1000u16;
            for param in parts {
                let param = param.trim_ascii();
                if param.len() > 2 && param[..2].eq_ignore_ascii_case(b"q=") {
                    weight = parse_q(&param[2..]).unwrap_or(0);
                }
            }
            if name == b"*" {
                star = Some(weight);
                continue;
            }
            for (i, c) in [Coding::Br, Coding::Zstd, Coding::Gzip].iter().enumerate() {
                if name.eq_ignore_ascii_case(c.token().as_bytes()) {
                    q[i] = weight;
                }
            }
        }
    }
    if !any {
        return None;
    }
    let mut best: Option<(Coding, u16)> = None;
    for &c in &p.algorithms {
        let i = c as usize;
        let w = if q[i] == u16::MAX {
            star.unwrap_or(0)
        } else {
            q[i]
        };
        if w > 0 && best.is_none_or(|(_, bw)| w > bw) {
            best = Some((c, w));
        }
    }
    best.map(|(c, _)| c)
}

/// A q-value (`0`, `0.5`, `1.000`) in thousandths.
fn parse_q(v: &[u8]) -> Option<u16> {
    let v = v.trim_ascii();
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut t = match int[0] {
        b'0' => 0u16,
        b'1' => 1000,
        _ => return None,
    };
    let mut scale = 100;
    for &d in frac {
        t += (d - b'0') as u16 * scale;
        scale /= 10;
    }
    (t <= 1000).then_some(t)
}

/// Whether a body of this `Content-Type` is worth compressing.
pub fn compressible(content_type: &[u8]) -> bool {
    let ct = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii()
        .to_ascii_lowercase();
    if ct.starts_with(b"text/") {
        return true;
    }
    if ct.ends_with(b"+json") || ct.ends_with(b"+xml") {
        return true;
    }
    matches!(
        &ct[..],
        b"application/json"
            | b"application/javascript"
            | b"application/x-javascript"
            | b"application/ecmascript"
            | b"application/xml"
            | b"application/xhtml+xml"
            | b"application/x-www-form-urlencoded"
            | b"application/graphql"
            | b"application/wasm"
            | b"image/svg+xml"
            | b"image/x-icon"
            | b"image/bmp"
            | b"font/ttf"
            | b"font/otf"
    )
}

/// The response header phase: whether the answer in `resp` is compressed
/// with `coding`; when it is, its head is changed for it (the framing is
/// ringgate's own: chunked, or the close for an HTTP/1.0 client).
pub fn response_filter(
    p: &Policy,
    coding: Coding,
    head_request: bool,
    resp: &mut ResponseHeader<'_>,
) -> bool {
    let status = resp.status();
    if head_request || !(200..300).contains(&status) || status == 204 || status == 206 {
        return false;
    }
    if resp
        .header(b"content-encoding")
        .is_some_and(|v| !v.trim_ascii().eq_ignore_ascii_case(b"identity"))
    {
        return false;
    }
    if resp
        .headers(b"cache-control")
        .any(|v| crate::http::tokens(v).any(|t| t.eq_ignore_ascii_case(b"no-transform")))
    {
        return false;
    }
    if !resp.header(b"content-type").is_some_and(compressible) {
        return false;
    }
    if let Some(n) = resp
        .header(b"content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok())
        && n < p.min_bytes
    {
        return false;
    }
    // A strong validator names the bytes as sent: the compressed body is
    // other bytes.
    if let Some(etag) = resp.header(b"etag")
        && !etag.starts_with(b"W/")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag);
        resp.insert_header(b"ETag", &weak);
    }
    resp.remove_header(b"content-encoding");
    resp.append_header(b"Content-Encoding", coding.token().as_bytes());
    resp.append_header(b"Vary", b"Accept-Encoding");
    true
}

/// The body phase's state for one compressed answer.
pub enum Encoder {
    /// gzip.
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    /// brotli.
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Gzip(_) => "Encoder::Gzip",
            Encoder::Br(_) => "Encoder::Br",
            Encoder::Zstd(_) => "Encoder::Zstd",
        })
    }
}

impl Encoder {
    /// An encoder for `coding` at the policy's level.
    pub fn new(p: &Policy, coding: Coding) -> std::io::Result<Encoder> {
        let out = Vec::with_capacity(8192);
        Ok(match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(p.gzip_level),
            )),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                out,
                4096,
                p.brotli_level,
                22,
            ))),
            Coding::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(out, p.zstd_level)?),
        })
    }

    /// Compresses `data`; what is ready is appended to `out`.
    pub fn write(&mut self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        let inner = match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.get_mut()
            }
            Encoder::Br(e) => {
                e.write_all(data)?;
                e.get_mut()
            }
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                e.get_mut()
            }
        };
        out.append(inner);
        Ok(())
    }

    /// Ends the stream; the rest is appended to `out`.
    pub fn finish(self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let mut rest = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Br(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        };
        out.append(&mut rest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn policy() -> Policy {
        let mut errs = Errors::default();
        compile(0, &CompressFile::On(true), &mut errs).unwrap()
    }

    #[test]
    fn negotiation_honours_q_values_and_the_route_order() {
        let p = policy();
        let n = |v: &str| negotiate(&p, std::iter::once(v.as_bytes()));
        assert_eq!(n("gzip, deflate, br, zstd"), Some(Coding::Br));
        assert_eq!(n("gzip;q=1.0, br;q=0.5"), Some(Coding::Gzip));
        assert_eq!(n("br;q=0, gzip"), Some(Coding::Gzip));
        assert_eq!(n("identity"), None);
        assert_eq!(n("*"), Some(Coding::Br));
        assert_eq!(n("*;q=0"), None);
        assert_eq!(n("gzip;q=0.001, *;q=0"), Some(Coding::Gzip));
        assert_eq!(n("GZIP"), Some(Coding::Gzip));
        assert_eq!(n("gzip;q=2"), None);
        assert_eq!(negotiate(&p, std::iter::empty()), None);
        let mut errs = Errors::default();
        let only_gzip = compile(
            0,
            &CompressFile::Table(CompressTable {
                algorithms: Some(vec!["gzip".into()]),
                min_bytes: None,
                gzip_level: Some(1),
                brotli_level: None,
                zstd_level: None,
            }),
            &mut errs,
        )
        .unwrap();
        assert_eq!(
            negotiate(&only_gzip, std::iter::once(&b"br"[..])),
            None,
            "a coding the route does not offer"
        );
    }

    #[test]
    fn bad_settings_name_the_key() {
        let mut errs = Errors::default();
        let f = CompressFile::Table(CompressTable {
            algorithms: Some(vec!["deflate".into()]),
            min_bytes: None,
            gzip_level: Some(12),
            brotli_level: None,
            zstd_level: None,
        });
        assert!(compile(3, &f, &mut errs).is_none());
        let text = format!("{errs:?}");
        assert!(text.contains("routes[3].compress.algorithms"), "{text}");
        assert!(text.contains("routes[3].compress.gzip_level"), "{text}");
    }

    #[test]
    fn every_coding_round_trips_in_pieces() {
        let body: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for coding in [Coding::Gzip, Coding::Br, Coding::Zstd] {
            let mut e = Encoder::new(&policy(), coding).unwrap();
            let mut out = Vec::new();
            for piece in body.chunks(7_000) {
                e.write(piece, &mut out).unwrap();
            }
            e.finish(&mut out).unwrap();
            let mut back = Vec::new();
            match coding {
                Coding::Gzip => {
                    flate2::read::GzDecoder::new(&out[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Coding::Br => {
                    brotli::Decompressor::new(&out[..], 4096)
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Coding::Zstd => back = zstd::decode_all(&out[..]).unwrap(),
            }
            assert_eq!(back, body, "{coding:?}");
            assert!(out.len() < body.len(), "{coding:?}");
        }
    }

    #[test]
    fn content_types() {
        for t in [
            "text/html; charset=utf-8",
            "application/json",
            "application/problem+json",
            "image/svg+xml",
        ] {
            assert!(compressible(t.as_bytes()), "{t}");
        }
        for t in [
            "image/png",
            "application/zip",
            "application/gzip",
            "video/mp4",
            "application/octet-stream",
            "",
        ] {
            assert!(!compressible(t.as_bytes()), "{t}");
        }
    }
}
