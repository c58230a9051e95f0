// Response-cache costs on a worker: the lookup a hit pays, and the work a
// miss adds to turn the captured response into a stored entry.
//
// `lookup/*` compares `Store::lookup` (hash the key where it lies in the
// request buffer, walk the chain, compare bytes and `Vary` values, move to
// the front of the LRU list) in stores of 1, 10,000 and 100,000 entries,
// for a hit without `Vary`, a hit on one of four `Accept-Language`
// variants, and a miss. The store is a hash map plus an intrusive list, so
// the 100,000-entry figures should stay within noise of the 1-entry ones;
// a regression there means a scan that grows with the entry count.
//
// `store/*` measures `policy::storable` (parse the captured head, read the
// caching headers, copy the kept lines and the body) plus `Entry::new` and
// `Store::insert` for a 1 KiB JSON response, Content-Length and chunked:
// the per-miss cost on top of the plain proxy path.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringgate::filter::cache::RouteCache;
use ringgate::filter::cache::policy::storable;
use ringgate::filter::cache::store::{Entry, Forwarded, KeyRef, Store};
use ringgate::filter::cache::wire::read_back;
use ringgate::http::parse::{HeaderLine, RequestHead, parse_request};

const SIZES: [usize; 3] = [1, 10_000, 100_000];

fn policy() -> RouteCache {
    RouteCache {
        ttl: Duration::from_secs(60),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        allow_authorization: false,
        allow_set_cookie: false,
        statuses: vec![200, 404].into(),
        route_name: b"products".as_slice().into(),
    }
}

fn parse(req: &str) -> (Vec<u8>, RequestHead, Vec<HeaderLine>) {
    let buf = req.as_bytes().to_vec();
    let mut head = RequestHead::default();
    let mut lines = Vec::new();
    parse_request(&buf, 100, 8192, &mut head, &mut lines).expect("valid request");
    (buf, head, lines)
}

fn response(vary: bool, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: max-age=60\r\n{}Content-Length: {}\r\n\r\n{body}",
        if vary { "Vary: Accept-Language\r\n" } else { "" },
        body.len()
    )
    .into_bytes()
}

fn key(path: &str) -> KeyRef<'_> {
    KeyRef {
        route: b"products",
        host: b"api.example.com",
        path_query: path.as_bytes(),
    }
}

/// A store with `n` entries under `/products/{i}`, plus four
/// `Accept-Language` variants of `/products/varied`.
fn filled(n: usize, p: &RouteCache) -> Store {
    let mut s = Store::default();
    let now = Instant::now();
    let (buf, _, lines) = parse("GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    let plain = Forwarded {
        buf: &buf,
        lines: &lines,
        extra: b"",
    };
    let resp = response(false, "{\"id\":1}");
    for i in 0..n {
        let path = format!("/products/{i}");
        let st = storable(read_back(&resp).expect("whole"), p, &[], 0).expect("storable");
        s.insert(Entry::new(key(&path).to_key(), st, plain, now), usize::MAX);
    }
    let varied = response(true, "{\"id\":1}");
    for lang in ["en", "de", "fr", "it"] {
        let (buf, _, lines) = parse(&format!(
            "GET / HTTP/1.1\r\nHost: api.example.com\r\nAccept-Language: {lang}\r\n\r\n"
        ));
        let fwd = Forwarded {
            buf: &buf,
            lines: &lines,
            extra: b"",
        };
        let st = storable(read_back(&varied).expect("whole"), p, &[], 0).expect("storable");
        s.insert(
            Entry::new(key("/products/varied").to_key(), st, fwd, now),
            usize::MAX,
        );
    }
    s
}

fn lookup(c: &mut Criterion) {
    let p = policy();
    let mut g = c.benchmark_group("lookup");
    for n in SIZES {
        let mut store = filled(n, &p);
        let (buf, _, lines) = parse(
            "GET /products/0 HTTP/1.1\r\nHost: api.example.com\r\nAccept: */*\r\nAccept-Language: fr\r\nUser-Agent: bench\r\n\r\n",
        );
        let fwd = Forwarded {
            buf: &buf,
            lines: &lines,
            extra: b"X-User-Id: 7\r\n",
        };
        for (name, path) in [
            ("hit", "/products/0"),
            ("hit-vary", "/products/varied"),
            ("miss", "/products/none"),
        ] {
            g.bench_with_input(BenchmarkId::new(name, n), &path, |b, path| {
                b.iter(|| {
                    let k = key(black_box(path));
                    black_box(store.lookup(k.hash(), &k, fwd))
                })
            });
        }
    }
    g.finish();
}

fn store(c: &mut Criterion) {
    let p = policy();
    let body = format!(
        "{{\"items\":[{}]}}",
        vec!["{\"id\":12345,\"name\":\"widget\"}"; 34].join(",")
    );
    let plain = response(false, &body);
    let mut chunked = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in body.as_bytes().chunks(256) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (buf, _, lines) = parse("GET /products/1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    let fwd = Forwarded {
        buf: &buf,
        lines: &lines,
        extra: b"",
    };
    let mut g = c.benchmark_group("store");
    for (name, resp) in [("length-1k", &plain), ("chunked-1k", &chunked)] {
        let mut s = Store::default();
        g.bench_function(name, |b| {
            b.iter(|| {
                let st = storable(
                    read_back(black_box(resp)).expect("whole"),
                    &p,
                    &[b"X-Cache"],
                    0,
                )
                .expect("storable");
                let e = Entry::new(key("/products/1").to_key(), st, fwd, Instant::now());
                black_box(s.insert(e, 1 << 20))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, lookup, store);
criterion_main!(benches);
