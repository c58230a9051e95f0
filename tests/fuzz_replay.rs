//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same property functions the fuzz targets assert (`fuzz/props/`), on the
//! stable toolchain and without libFuzzer: a regression that breaks a
//! property on any corpus input fails here, in `cargo test`. Fails too when
//! a target's corpus directory is missing or empty, so it cannot pass by
//! testing nothing.
//!
//! `FUZZ_REPLAY=<target>` or `FUZZ_REPLAY=<file>` narrows the run (a fuzz
//! finding saved into the corpus, say) and prints what ringgate does with
//! each input (`--nocapture`).

#[path = "../fuzz/props/mod.rs"]
mod props;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus directory {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Runs every file of one target's corpus; returns the failures.
fn replay(target: &str) -> Vec<String> {
    let only = std::env::var("FUZZ_REPLAY").ok();
    let dir = corpus_dir(target);
    let all = files(&dir);
    assert!(
        !all.is_empty(),
        "{} is empty: the replay would test nothing",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in all {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let Some(o) = &only
            && o != target
            && !path.ends_with(o)
            && *o != *name
        {
            continue;
        }
        let data = std::fs::read(&path).expect("corpus file");
        let what = format!("{target}/{name}");
        if only.is_some() {
            // Narrowed to a few files: say what ringgate does with each.
            println!("{what}: {}", props::describe(target, &data));
        }
        match catch_unwind(AssertUnwindSafe(|| props::check(target, &data))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{what}: {e}")),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{what}: panicked: {msg}"));
            }
        }
    }
    failures
}

fn run(target: &str) {
    let failures = replay(target);
    assert!(
        failures.is_empty(),
        "{} of the {target} corpus fail a property:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_target_has_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for t in props::TARGETS {
        assert!(
            corpus_dir(t).is_dir(),
            "no corpus for fuzz target {t} in {}",
            root.display()
        );
    }
    for d in files_and_dirs(&root) {
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        assert!(
            props::TARGETS.contains(&name.as_str()),
            "{} is not the corpus of a fuzz target ({:?})",
            d.display(),
            props::TARGETS
        );
    }
}

fn files_and_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect()
}

#[test]
fn request_head_corpus() {
    run("request_head");
}

#[test]
fn chunked_corpus() {
    run("chunked");
}

#[test]
fn response_head_corpus() {
    run("response_head");
}

#[test]
fn config_corpus() {
    run("config");
}

/// The strict reader itself: it must refuse the classic desync shapes, or
/// the differential check above proves nothing.
#[test]
fn the_strict_reader_refuses_ambiguous_messages() {
    use props::strict;
    let ok = b"GET /a?b HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n";
    assert!(strict::request(ok).is_ok());
    for bad in [
        &b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: Content-Length\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\nX-A: 1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n b\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: u@h\r\n\r\n",
        b"GET /a HTTP/1.1\r\n\r\n",
        b"GET http://h/a HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nX",
    ] {
        assert!(
            strict::request(bad).is_err(),
            "strict reader took {}",
            props::show(bad)
        );
    }
    use strict::Chunked;
    assert!(matches!(
        strict::chunked(b"5;a=\"x y\"\r\nhello\r\n0\r\nX-T: 1\r\n\r\nNEXT", true),
        Chunked::Done { len: 31, .. }
    ));
    assert!(matches!(
        strict::chunked(b"5\r\nhel", true),
        Chunked::More { .. }
    ));
    for (bad, rfc) in [
        (&b"5;\r\nhello\r\n0\r\n\r\n"[..], true),
        (b"5;a b\r\nhello\r\n0\r\n\r\n", true),
        (b"5;a=\"x\r\nhello\r\n0\r\n\r\n", true),
    ]
    .into_iter()
    .chain(
        [
            &b"5 junk\r\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5;a=\x00\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX",
            b"0\r\nGET / HTTP/1.1\r\n\r\n",
            b"0\r\nX: 1\r\n b\r\n\r\n",
        ]
        .into_iter()
        .flat_map(|b| [(b, true), (b, false)]),
    ) {
        assert!(
            matches!(strict::chunked(bad, rfc), Chunked::Invalid { .. }),
            "strict decoder (RFC chunk extensions: {rfc}) took {}",
            props::show(bad)
        );
    }
}
