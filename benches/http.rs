//! Request-head work per proxied request, without sockets: parsing a
//! typical browser/API request head in place, building the forwarded head
//! (slices + added headers) from it, and parsing a backend's response head.
//! These are the user-space costs ringgate adds on the plain proxy path;
//! compare them with the ~10-20 µs the kernel spends per loopback request.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use ringgate::http::parse::{RequestHead, ResponseHead, parse_request, parse_response};
use ringgate::proxy::forward::{Conn, build_request_head, build_response_head};

const REQ: &[u8] = b"GET /api/v1/products/12345?fields=name,price HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Connection: keep-alive\r\n\
Cookie: session=abcdef0123456789; theme=dark\r\n\
X-Forwarded-For: 203.0.113.7\r\n\r\n";

const RESP: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
Content-Length: 512\r\n\
Cache-Control: max-age=60\r\n\
Date: Sat, 28 Nov 2026 12:00:00 GMT\r\n\
Server: backend\r\n\r\n";

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("http");
    let mut head = RequestHead::default();
    let mut lines = Vec::with_capacity(100);
    g.bench_function("parse_request_head_9_headers", |b| {
        b.iter(|| {
            parse_request(black_box(REQ), 100, 8192, &mut head, &mut lines).unwrap();
        })
    });
    let mut rhead = ResponseHead::default();
    let mut rlines = Vec::with_capacity(64);
    g.bench_function("parse_response_head_5_headers", |b| {
        b.iter(|| {
            parse_response(black_box(RESP), &mut rhead, &mut rlines).unwrap();
        })
    });
    let peer = "192.0.2.10:40000".parse().unwrap();
    let target = "127.0.0.1:9001".parse().unwrap();
    let mut conn = Conn::new(16384, peer, 100);
    conn.buf.extend_from_slice(REQ);
    conn.ubuf.extend_from_slice(RESP);
    g.bench_function("parse_and_build_forwarded_head", |b| {
        b.iter(|| {
            parse_request(
                black_box(&conn.buf),
                100,
                8192,
                &mut conn.head,
                &mut conn.lines,
            )
            .unwrap();
            build_request_head(&mut conn, target);
            black_box(conn.out.len())
        })
    });
    g.bench_function("parse_and_build_response_head", |b| {
        b.iter(|| {
            parse_response(black_box(&conn.ubuf), &mut conn.rhead, &mut conn.rlines).unwrap();
            build_response_head(&mut conn, false, false);
            black_box(conn.out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
