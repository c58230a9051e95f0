//! The rate limiter's decision cost per request, per algorithm, local and
//! global.
//!
//! What is compared and why: a decision on the request path is a keyed hash
//! of the key bytes, one probe of the worker's key table and a few float
//! operations — for every algorithm, and for a global limit too, because a
//! global key spends a lease of quota held on the worker (Redis is only
//! called off the request path, by the lease thread). So the four local
//! algorithms should cost about the same, and global about the same as
//! local; `*_100k_keys` shows the cost when the key table no longer fits
//! in cache (a flood of distinct clients). The lease round trip itself is
//! amortised over a lease (tens to thousands of requests) and is not on the
//! request path; it is not measured here.
//!
//! Run: `cargo bench --bench rate_limit`.

use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use ringgate::filter::rate_limit::{Limits, WorkerState};
use std::sync::Arc;

const ALGORITHMS: [&str; 4] = [
    "token_bucket",
    "fixed_window",
    "sliding_window",
    "leaky_bucket",
];

fn limits(scope: &str) -> Arc<Limits> {
    let mut t = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.b]\ntargets = [\"127.0.0.1:1\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"b\"\n",
    );
    if scope == "global" {
        // Never reached: the bench gives the keys their credit itself.
        t.push_str("[redis]\nurl = \"redis://127.0.0.1:1\"\ntimeout_ms = 10\n");
    }
    for a in ALGORITHMS {
        let extra = if a == "leaky_bucket" {
            "max_delay_ms = 0\n"
        } else {
            ""
        };
        t.push_str(&format!(
            "[rate_limits.{a}]\nkey = \"header:x-client\"\nalgorithm = \"{a}\"\n\
             limit = 1000000000\nwindow_s = 1\nscope = \"{scope}\"\n\
             max_keys_per_worker = 200000\n{extra}"
        ));
    }
    let cfg = ringgate::config::Config::parse(&t).expect("bench config");
    cfg.rate_limits.clone().expect("limits")
}

fn decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit_decision");
    for scope in ["local", "global"] {
        let l = limits(scope);
        // One worker; global limits get the lease machinery (a link to the
        // reconciler), local ones do not need it.
        l.start_control(1);
        let w = WorkerState::new(Some(&l), 0);
        for a in ALGORITHMS {
            let li = l.index_of(a).expect("limit");
            let key = b"203.0.113.7";
            if scope == "global" {
                let _ = w.check_key(li, key, None); // creates the key
                w.grant_for_bench(li, key, 1e15);
            }
            assert!(
                w.check_key(li, key, None).is_some_and(|c| c.admit),
                "{scope} {a} admits"
            );
            g.bench_function(BenchmarkId::new(scope, a), |b| {
                b.iter(|| w.check_key(black_box(li), black_box(key), None))
            });
        }
        if scope == "local" {
            let li = l.index_of("token_bucket").expect("limit");
            let keys: Vec<String> = (0..100_000).map(|i| format!("10.{i}")).collect();
            for k in &keys {
                w.check_key(li, k.as_bytes(), None);
            }
            let mut i = 0usize;
            g.bench_function(BenchmarkId::new(scope, "token_bucket_100k_keys"), |b| {
                b.iter(|| {
                    i = (i + 7919) % keys.len();
                    w.check_key(li, black_box(keys[i].as_bytes()), None)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
