//! Response compression over real sockets: each coding negotiated from
//! `Accept-Encoding` (q-values honoured) decodes to the backend's bytes,
//! for bodies framed by length, by chunks and by the close; what is not
//! compressed (small bodies, images, already encoded, no-transform, HEAD,
//! 204/304, a client that accepts nothing) goes out as the backend sent
//! it; a cached compressed route keeps one variant per coding; and a
//! route without `compress` is left alone.

mod support;

use std::io::Read;
use support::*;

fn gateway(up: &MockUpstream, routes: &str) -> Gateway {
    Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\npin = false\ndrain_timeout_ms = 1000\n\n\
         [upstreams.up]\ntargets = [\"{}\"]\n\n{routes}",
        up.addr
    ))
}

/// A JSON body that compresses well and is larger than any read buffer.
fn big_json() -> String {
    let items: Vec<String> = (0..3000)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item number {i}\",\"tags\":[\"a\",\"b\"]}}"))
        .collect();
    format!("[{}]", items.join(","))
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("gzip decodes");
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("brotli decodes");
        }
        "zstd" => out = zstd::decode_all(body).expect("zstd decodes"),
        other => panic!("unexpected coding {other}"),
    }
    out
}

fn get(gw: &Gateway, path: &str, accept: &str) -> Response {
    gw.client().request(format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nAccept-Encoding: {accept}\r\n\r\n"
    ))
}

#[test]
fn each_coding_decodes_to_the_backend_bytes() {
    let body = big_json();
    let up = MockUpstream::builder()
        .header("Content-Type", "application/json")
        .header("ETag", "\"v1\"")
        .respond(200, &body)
        .start();
    let gw = gateway(
        &up,
        "[[routes]]\npath = \"/c\"\nupstream = \"up\"\ncompress = true\n",
    );
    for (accept, want) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "br"),
        ("gzip;q=1.0, br;q=0.4, zstd;q=0.5", "gzip"),
        ("br;q=0, *", "zstd"),
    ] {
        let r = get(&gw, "/c", accept);
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(r.header("content-encoding"), Some(want), "{accept}");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{accept}");
        assert_eq!(r.header("content-length"), None, "{accept}");
        assert!(
            r.header_all("vary")
                .iter()
                .any(|v| v.eq_ignore_ascii_case("accept-encoding")),
            "{accept}: {:?}",
            r.headers
        );
        // The validator of the other bytes is weak.
        assert_eq!(r.header("etag"), Some("W/\"v1\""), "{accept}");
        assert!(
            r.body.len() < body.len() / 3,
            "{accept}: {} bytes",
            r.body.len()
        );
        assert_eq!(decode(want, &r.body), body.as_bytes(), "{accept}");
    }
    // Nothing acceptable: the body as the backend sent it.
    for accept in ["identity", "deflate", "*;q=0"] {
        let r = get(&gw, "/c", accept);
        assert_eq!(r.header("content-encoding"), None, "{accept}");
        assert_eq!(r.header("etag"), Some("\"v1\""), "{accept}");
        assert_eq!(r.body, body.as_bytes(), "{accept}");
    }
    let r = gw.get("/c");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, body.as_bytes());
}

#[test]
fn chunked_and_close_delimited_bodies_are_compressed_as_they_stream() {
    let piece = "{\"line\":\"the same words again and again\"}\n".repeat(200);
    let chunks: Vec<&str> = std::iter::repeat_n(piece.as_str(), 40).collect();
    let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson+json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for c in &chunks {
        raw.extend_from_slice(format!("{:x};ext=1\r\n{c}\r\n", c.len()).as_bytes());
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let up = MockUpstream::builder().raw(&raw).start();
    let gw = gateway(
        &up,
        "[[routes]]\npath = \"/s\"\nupstream = \"up\"\ncompress = true\n",
    );
    let r = get(&gw, "/s", "gzip");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), piece.repeat(40).as_bytes());

    let body = "<p>close delimited</p>".repeat(500);
    // (The mock's close-delimited answer is text/plain.)
    let up = MockUpstream::builder().close_delimited(&body).start();
    let gw = gateway(
        &up,
        "[[routes]]\npath = \"/e\"\nupstream = \"up\"\ncompress = true\n",
    );
    let r = get(&gw, "/e", "zstd");
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    assert_eq!(decode("zstd", &r.body), body.as_bytes());

    // An HTTP/1.0 client gets the compressed body delimited by the close.
    let up = MockUpstream::builder()
        .header("Content-Type", "text/plain")
        .respond(200, &body)
        .start();
    let gw = gateway(
        &up,
        "[[routes]]\npath = \"/o\"\nupstream = \"up\"\ncompress = true\n",
    );
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    std::io::Write::write_all(&mut s, b"GET /o HTTP/1.0\r\nAccept-Encoding: br\r\n\r\n").unwrap();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(text.contains("Content-Encoding: br"), "{text}");
    assert!(
        !text[..split]
            .to_ascii_lowercase()
            .contains("transfer-encoding"),
        "{text}"
    );
    assert_eq!(decode("br", &raw[split..]), body.as_bytes());
}

#[test]
fn what_is_not_compressed_goes_out_as_sent() {
    let long = "x".repeat(5000);
    let up = MockUpstream::builder()
        .handler(move |req| {
            let text = || ("Content-Type", "text/plain");
            let (status, headers, body): (u16, Vec<(&str, &str)>, &str) = match req.target.as_str()
            {
                "/small" => (200, vec![text()], "short"),
                "/png" => (200, vec![("Content-Type", "image/png")], &long),
                "/encoded" => (200, vec![text(), ("Content-Encoding", "gzip")], &long),
                "/nt" => (
                    200,
                    vec![text(), ("Cache-Control", "public, no-transform")],
                    &long,
                ),
                "/untyped" => (200, vec![], &long),
                "/nocontent" => (204, vec![], ""),
                "/notmod" => (304, vec![text()], ""),
                _ => (200, vec![text()], &long),
            };
            let headers: Vec<(String, String)> = headers
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            Reply::Bytes {
                data: response_bytes(status, &headers, body.as_bytes(), req.method == "HEAD"),
                close: false,
            }
        })
        .start();
    let gw = gateway(
        &up,
        "[[routes]]\npath = \"/{*any}\"\nupstream = \"up\"\ncompress = { algorithms = [\"gzip\"], min_bytes = 100 }\n",
    );
    for path in ["/small", "/png", "/encoded", "/nt", "/untyped"] {
        let r = get(&gw, path, "gzip");
        assert_eq!(r.status, 200, "{path}");
        let ce = r.header("content-encoding");
        if path == "/encoded" {
            assert_eq!(ce, Some("gzip"), "the backend's own coding is kept");
        } else {
            assert_eq!(ce, None, "{path}");
        }
        assert!(
            r.header("content-length").is_some(),
            "{path}: {:?}",
            r.headers
        );
    }
    for (path, status) in [("/nocontent", 204), ("/notmod", 304)] {
        let r = get(&gw, path, "gzip");
        assert_eq!(
            (r.status, r.header("content-encoding")),
            (status, None),
            "{path}"
        );
    }
    let mut c = gw.client();
    c.send("HEAD /text HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n");
    let r = c.read_head_response();
    assert_eq!((r.status, r.header("content-encoding")), (200, None));
    assert_eq!(r.header("content-length"), Some("5000"));
    // The route offers gzip only.
    let r = get(&gw, "/text", "br");
    assert_eq!(r.header("content-encoding"), None);
    let r = get(&gw, "/text", "gzip");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), "x".repeat(5000).as_bytes());
}

#[test]
fn keep_alive_survives_compressed_answers() {
    let body = big_json();
    let up = MockUpstream::builder()
        .header("Content-Type", "application/json")
        .respond(200, &body)
        .start();
    let gw = gateway(
        &up,
        "[[routes]]\npath = \"/k\"\nupstream = \"up\"\ncompress = true\n",
    );
    let mut c = gw.client();
    for accept in ["gzip", "br", "zstd", "identity", "gzip"] {
        let r = c.request(format!(
            "GET /k HTTP/1.1\r\nHost: t\r\nAccept-Encoding: {accept}\r\n\r\n"
        ));
        let want = r
            .header("content-encoding")
            .unwrap_or("identity")
            .to_string();
        let got = if want == "identity" {
            r.body.clone()
        } else {
            decode(&want, &r.body)
        };
        assert_eq!(got, body.as_bytes(), "{accept}");
        assert!(!r.says_close());
    }
    assert_eq!(up.conns(), 1, "the upstream connection is reused");
}

#[test]
fn a_cached_route_keeps_one_variant_per_coding() {
    let body = "cacheable text ".repeat(400);
    let up = MockUpstream::builder()
        .header("Content-Type", "text/plain")
        .header("Cache-Control", "max-age=60")
        .respond(200, &body)
        .start();
    let gw = gateway(
        &up,
        "[[routes]]\npath = \"/v\"\nupstream = \"up\"\ncompress = true\ncache = { ttl_s = 60 }\n",
    );
    let gz1 = get(&gw, "/v", "gzip");
    let gz2 = get(&gw, "/v", "gzip");
    assert_eq!(gz2.header("x-cache"), Some("HIT"), "{:?}", gz2.headers);
    assert_eq!(gz2.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &gz1.body), body.as_bytes());
    assert_eq!(decode("gzip", &gz2.body), body.as_bytes());
    // Another coding is another variant, never the gzip bytes.
    let br = get(&gw, "/v", "br");
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_eq!(decode("br", &br.body), body.as_bytes());
    let plain = get(&gw, "/v", "identity");
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.body, body.as_bytes());
    let plain2 = get(&gw, "/v", "identity");
    assert_eq!(plain2.header("content-encoding"), None);
    assert_eq!(plain2.body, body.as_bytes());
}

#[test]
fn a_route_without_compress_is_left_alone() {
    let body = big_json();
    let up = MockUpstream::builder()
        .header("Content-Type", "application/json")
        .respond(200, &body)
        .start();
    let gw = gateway(&up, "[[routes]]\npath = \"/p\"\nupstream = \"up\"\n");
    let r = get(&gw, "/p", "gzip, br, zstd");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(
        r.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(r.body, body.as_bytes());
}

#[test]
fn bad_compress_settings_name_the_key() {
    let dir = std::env::temp_dir().join(format!("ringgate-compress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.up]\ntargets = [\"127.0.0.1:1\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"up\"\ncompress = { algorithms = [\"deflate\"], zstd_level = 40 }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("routes[0].compress.algorithms"), "{text}");
    assert!(text.contains("routes[0].compress.zstd_level"), "{text}");
}
