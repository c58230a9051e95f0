//! The merge step of API composition: four parts of ~1 KiB JSON each into
//! one document.
//!
//! Compared: ringgate's merge (serde_json validates each part and the raw
//! slices are spliced into the output: `merge = "keys"`; with a `fields`
//! filter and `merge = "root"` the parts are split one level deep) against
//! the obvious alternative, parsing every part into a `serde_json::Value`
//! tree and serialising the merged tree. The I/O of the parts is not
//! measured here (see loadtest/ for end-to-end figures).
//!
//! Run: `cargo bench --bench compose`

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use ringgate::filter::compose::{Compose, Merge, Part, PartError, PathTemplate, merge};
use std::time::Duration;

/// A ~1 KiB JSON object with nested values, numbers and escapes.
fn part_body(seed: usize) -> Vec<u8> {
    let mut s = format!(
        r#"{{"id":{seed},"name":"Part \"{seed}\" of the page","price":{}.99,"currency":"EUR","tags":["a","b","c"],"dimensions":{{"w":10.5,"h":3.25,"d":0.75}},"items":["#,
        seed * 7
    );
    let mut i = 0;
    while s.len() < 960 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"sku":"SKU-{seed}-{i}","qty":{i},"ok":true,"note":"line\nbreak"}}"#
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn compose(merge: Merge, fields: bool) -> Compose {
    let parts = ["details", "pricing", "inventory", "reviews"]
        .iter()
        .enumerate()
        .map(|(i, k)| Part {
            key: k.to_string(),
            upstream: 0,
            path: PathTemplate::compile("/x", "/x").unwrap(),
            required: i == 0,
            timeout: Duration::from_millis(100),
            fallback: String::from("null"),
            fields: (fields && i == 1).then(|| vec!["price".to_string(), "currency".to_string()]),
            query: false,
        })
        .collect();
    Compose {
        timeout: Duration::from_millis(300),
        merge,
        max_part_bytes: 1 << 20,
        parts,
    }
}

/// The alternative: full `Value` trees.
fn merge_with_values(keys: &[&str], bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut map = serde_json::Map::with_capacity(keys.len());
    for (k, b) in keys.iter().zip(bodies) {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        map.insert(k.to_string(), v);
    }
    serde_json::to_vec(&serde_json::Value::Object(map)).unwrap()
}

fn bench(c: &mut Criterion) {
    let bodies: Vec<Vec<u8>> = (1..=4).map(part_body).collect();
    let total: usize = bodies.iter().map(Vec::len).sum();
    let results: Vec<Result<Vec<u8>, PartError>> = bodies.iter().cloned().map(Ok).collect();
    let mut partial = results.clone();
    partial[3] = Err(PartError::TimedOut);

    let mut g = c.benchmark_group("compose_merge_4x1KiB");
    g.throughput(Throughput::Bytes(total as u64));
    let keys = compose(Merge::Keys, false);
    g.bench_function("keys_raw_splice", |b| {
        b.iter(|| merge(black_box(&keys), black_box(&results)).unwrap())
    });
    g.bench_function("keys_raw_splice_partial", |b| {
        b.iter(|| merge(black_box(&keys), black_box(&partial)).unwrap())
    });
    let filtered = compose(Merge::Keys, true);
    g.bench_function("keys_with_fields", |b| {
        b.iter(|| merge(black_box(&filtered), black_box(&results)).unwrap())
    });
    let root = compose(Merge::Root, false);
    g.bench_function("root_split_one_level", |b| {
        b.iter(|| merge(black_box(&root), black_box(&results)).unwrap())
    });
    let names = ["details", "pricing", "inventory", "reviews"];
    g.bench_function("keys_serde_value_trees", |b| {
        b.iter(|| merge_with_values(black_box(&names), black_box(&bodies)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
