// Target selection and breaker admission cost, per request.
//
// `pick`: each balancer choosing among 3, 10 and 100 available targets on
// one worker (the per-request hot path: no allocation, one pass at most).
// round_robin, weighted and least_conn should cost a few ns and grow at
// most linearly when the cursor has to skip; p2c_ewma pays two random
// draws and two cost computations (`exp` for the decay); consistent_hash
// scores every target (rendezvous hashing), so it is the one expected to
// grow with the target count — that is the price of remapping only a
// removed target's keys without a ring to rebuild; with unequal weights
// each score also takes a logarithm (`consistent_hash_weighted`).
//
// `list`: the per-request check whether discovery published a new
// snapshot (one atomic load, one `Rc` clone when it did not).
//
// `breaker`: `admit` + `record` in the closed state, with and without the
// rolling failure-rate window (which costs shared `fetch_add`s), and
// `admit` on an open breaker (the fallback path).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringgate::config::{BreakerConfig, Config};
use ringgate::upstream::balance;
use ringgate::upstream::breaker::{Admit, Breaker};
use ringgate::upstream::pool::UpstreamState;
use std::time::Duration;

const SIZES: [usize; 3] = [3, 10, 100];
/// (label, balance, targets carry different weights)
const BALANCERS: [(&str, &str, bool); 6] = [
    ("round_robin", "round_robin", false),
    ("weighted", "weighted", true),
    ("least_conn", "least_conn", false),
    ("p2c_ewma", "p2c_ewma", false),
    ("consistent_hash", "consistent_hash", false),
    ("consistent_hash_weighted", "consistent_hash", true),
];

fn config(balance: &str, n: usize, weighted: bool) -> Config {
    let targets: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{ addr = \"127.0.{}.{}:8080\", weight = {} }}",
                i / 250,
                i % 250 + 1,
                if weighted { i % 3 + 1 } else { 1 }
            )
        })
        .collect();
    let hash = if balance == "consistent_hash" {
        "hash_key = \"header:x-user\"\n"
    } else {
        ""
    };
    Config::parse(&format!(
        "[upstreams.up]\ntargets = [{}]\nbalance = \"{balance}\"\n{hash}[[routes]]\npath = \"/\"\nupstream = \"up\"\n",
        targets.join(", ")
    ))
    .expect("bench config")
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for (label, b, weighted) in BALANCERS {
        for n in SIZES {
            let cfg = config(b, n, weighted);
            let up_cfg = &cfg.upstreams[0];
            let up = UpstreamState::new(up_cfg, 0);
            let mut key = 0u64;
            g.bench_with_input(BenchmarkId::new(label, n), &n, |bench, _| {
                bench.iter(|| {
                    let list = up.list();
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let k = (up_cfg.balance == ringgate::config::Balance::ConsistentHash)
                        .then_some(key);
                    black_box(balance::pick(&up, &list, up_cfg.balance, k, 0))
                })
            });
        }
    }
    g.finish();
}

fn list(c: &mut Criterion) {
    let cfg = config("round_robin", 10, false);
    let up = UpstreamState::new(&cfg.upstreams[0], 0);
    c.bench_function("list/unchanged", |b| b.iter(|| black_box(up.list())));
}

fn breaker_cfg(rate: Option<f64>) -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 5,
        failure_rate: rate,
        min_requests: 20,
        window: Duration::from_secs(10),
        open: Duration::from_secs(3600),
        half_open_probes: 1,
        failure_statuses: vec![500, 502, 503, 504],
    }
}

fn breaker(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    let b = Breaker::new(&breaker_cfg(None));
    g.bench_function("closed/admit+record", |bench| {
        bench.iter(|| {
            let a = b.admit();
            b.record(a, black_box(true));
            a
        })
    });
    let w = Breaker::new(&breaker_cfg(Some(0.5)));
    g.bench_function("closed_with_rate_window/admit+record", |bench| {
        bench.iter(|| {
            let a = w.admit();
            w.record(a, black_box(true));
            a
        })
    });
    let o = Breaker::new(&breaker_cfg(None));
    for _ in 0..5 {
        o.record(Admit::Closed, false);
    }
    assert_eq!(o.admit(), Admit::Rejected);
    g.bench_function("open/admit", |bench| bench.iter(|| black_box(o.admit())));
    g.finish();
}

criterion_group!(benches, pick, list, breaker);
criterion_main!(benches);
