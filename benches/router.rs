// Route lookup cost versus route-table size.
//
// Compares `RouteTable::lookup` on tables of 1, 100 and 10,000 routes for
// three request kinds: a static hit, a `{param}` hit and a miss that walks
// deep into the trie and then backtracks. The route table sits on the
// per-request hot path of every worker, and its design promises that the
// common path does not get slower as routes are added (hashed static children,
// O(1) method check, no allocation), so the 10,000-route numbers should stay
// within noise of the 1-route numbers. A regression there means a scan that
// grows with the route count has crept in.
//
// Each table is a realistic mix: per service a static collection route
// `/api/v1/svc{i}/items`, an item route `/api/v1/svc{i}/items/{id}` and a file
// catch-all `/api/v1/svc{i}/files/{*path}`, some restricted to GET. The route
// under test (`/api/v1/target/...`) is always present, so the 1-route table is
// just that route. `Params` is created inside the timed loop because a real
// request creates one too.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringgate::router::{Lookup, Method, MethodSet, Params, RouteSpec, RouteTable};

const SIZES: [usize; 3] = [1, 100, 10_000];

const STATIC_TARGET: &str = "/api/v1/target/items";
const PARAM_TARGET: &str = "/api/v1/target/items/{id}";

/// `target` plus `n - 1` filler patterns from the mix.
fn patterns(n: usize, target: &str) -> Vec<String> {
    std::iter::once(target.to_owned())
        .chain((1..n).map(|i| {
            let svc = i / 3;
            match i % 3 {
                0 => format!("/api/v1/svc{svc}/items"),
                1 => format!("/api/v1/svc{svc}/items/{{id}}"),
                _ => format!("/api/v1/svc{svc}/files/{{*path}}"),
            }
        }))
        .collect()
}

fn build(n: usize, target: &str) -> RouteTable {
    let paths = patterns(n, target);
    let get_head = MethodSet::empty().with(Method::Get).with(Method::Head);
    let specs: Vec<RouteSpec<'_>> = paths
        .iter()
        .enumerate()
        .map(|(i, path)| RouteSpec {
            host: None,
            path,
            methods: if i % 2 == 0 { None } else { Some(get_head) },
            route: i as u32,
        })
        .collect();
    let table = RouteTable::build(&specs).expect("bench routes are valid");
    assert_eq!(table.len(), n);
    table
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_lookup");
    for n in SIZES {
        let static_table = build(n, STATIC_TARGET);
        let param_table = build(n, PARAM_TARGET);

        let cases: [(&str, &RouteTable, &[u8], bool); 3] = [
            ("static_hit", &static_table, b"/api/v1/target/items", true),
            (
                "param_hit",
                &param_table,
                b"/api/v1/target/items/12345",
                true,
            ),
            (
                "miss",
                &param_table,
                b"/api/v1/target/items/12345/extra",
                false,
            ),
        ];
        for (name, table, path, hit) in cases {
            // Sanity-check the scenario before timing it.
            let mut params = Params::new();
            let found = matches!(
                table.lookup(b"api.example.com:8080", b"GET", path, &mut params),
                Lookup::Found { route: 0 }
            );
            assert_eq!(found, hit, "{name} with {n} routes");

            group.bench_with_input(BenchmarkId::new(name, n), &path, |b, &path| {
                b.iter(|| {
                    let mut params = Params::new();
                    let res = table.lookup(
                        black_box(b"api.example.com:8080"),
                        black_box(b"GET"),
                        black_box(path),
                        &mut params,
                    );
                    black_box((res, params.len()));
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
