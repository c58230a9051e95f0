//! `ringgate check` on files a user gets wrong: every problem in one run,
//! each with its full key path and line, types in TOML's words, the
//! nearest known key for a misspelt one, and syntax errors in plain words.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::BIN;

fn config_file(text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringgate-config-errors-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("ringgate.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `ringgate check -c` on `text`; asserts it fails and returns the
/// error lines (without the "N error(s)" head line).
fn check_errors(text: &str) -> Vec<String> {
    let p = config_file(text);
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&p)
        .output()
        .expect("run ringgate check");
    let _ = std::fs::remove_dir_all(p.parent().unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let mut lines = stderr.lines();
    let head = lines.next().unwrap_or_default();
    let errors: Vec<String> = lines.map(|l| l.trim().to_string()).collect();
    assert!(
        head.ends_with(&format!(": {} error(s)", errors.len())),
        "{stderr}"
    );
    for e in &errors {
        assert!(e.contains("(fix: "), "no fix: {e}");
        for rust in [
            "usize",
            "u16",
            "u32",
            "u64",
            "i32",
            "i64",
            "f64",
            "invalid type",
        ] {
            assert!(!e.contains(rust), "a Rust type name in {e:?}");
        }
    }
    errors
}

/// Three wrong types were reported one at a time (only the first per
/// run), as `invalid type: string "1", expected u32`. All three now come
/// in one run, each with its key path and line, in TOML's words.
#[test]
fn every_type_error_in_one_run() {
    let errors = check_errors(
        r#"[server]
listen = "127.0.0.1:8080"

[upstreams.api]
targets = ["127.0.0.1:9001"]
retries = "1"
connect_timeout_ms = -5

[[routes]]
path = "/products/{id}"
methods = "GET"
upstream = "api"
"#,
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "upstreams.api.retries (line 6): expected a whole number, found the string \"1\""
        ),
        "{errors:#?}"
    );
    assert!(errors[0].contains("retries = 1"), "{errors:#?}");
    assert!(
        errors[1].starts_with(
            "upstreams.api.connect_timeout_ms (line 7): expected a whole number of 0 or more, found -5"
        ),
        "{errors:#?}"
    );
    assert!(
        errors[2].starts_with(
            "routes[0].methods (line 11): expected a list of strings, found the string \"GET\""
        ),
        "{errors:#?}"
    );
    assert!(errors[2].contains("methods = [\"GET\"]"), "{errors:#?}");
}

/// The other TOML words: true or false, a string, a table, a number.
#[test]
fn types_are_named_in_toml_words() {
    let errors = check_errors(
        r#"[server]
pin = "yes"
listen = "127.0.0.1:8080"
backlog = 1.5

[log]
access = 1

[upstreams.api]
targets = ["127.0.0.1:9001"]
health = "on"

[rate_limits.a]
limit = 10
window_s = "one"

[[routes]]
path = "/"
upstream = "api"
"#,
    );
    let want = [
        "server.pin (line 2): expected a boolean (true or false), found the string \"yes\"",
        "server.backlog (line 4): expected a whole number, found 1.5",
        "log.access (line 7): expected a string, found 1",
        "upstreams.api.health (line 11): expected a table, found the string \"on\"",
        "rate_limits.a.window_s (line 15): expected a number, found the string \"one\"",
    ];
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
    for (e, w) in errors.iter().zip(want) {
        assert!(e.starts_with(w), "{e:?} is not {w:?}");
    }
}

/// A misspelt key is named with the nearest known one; one with no near
/// neighbour lists what the table takes. Validation errors elsewhere in
/// the file come in the same run.
#[test]
fn unknown_keys_suggest_the_nearest_known_one() {
    let errors = check_errors(
        r#"[server]
listen = "127.0.0.1:8080"
max_body_byte = 1000

[upstreams.api]
targets = ["127.0.0.1:9001"]
conect_timeout_ms = 100

[upstreams.api.breaker]
threshold = 5

[[routes]]
path = "/"
upstream = "nope"
colour = "red"
"#,
    );
    let want = [
        "server.max_body_byte (line 3): unknown key `max_body_byte`; did you mean `max_body_bytes`?",
        "upstreams.api.conect_timeout_ms (line 7): unknown key `conect_timeout_ms`; did you mean `connect_timeout_ms`?",
        "upstreams.api.breaker.threshold (line 10): unknown key `threshold`; did you mean `failure_threshold`?",
        "routes[0].colour (line 15): unknown key `colour`: [routes[0]] has no key `colour`",
        "routes[0].upstream: upstream \"nope\" is not defined",
    ];
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
    for (e, w) in errors.iter().zip(want) {
        assert!(e.starts_with(w), "{e:?} is not {w:?}");
    }
    assert!(
        errors[3].contains("takes: name, path, methods"),
        "{errors:#?}"
    );
}

/// A table ringgate does not know was reported as `server.l (line 6):
/// duplicate key 'listen' in table 'server'`: a cut key path and the wrong
/// problem. It is an unknown table, named in full.
#[test]
fn an_unknown_table_is_named_in_full() {
    let errors = check_errors(
        r#"[server]
listen = "127.0.0.1:8080"
workers = 2

[[server.quic]]
listen = "127.0.0.1:8443"
cert = "a.pem"

[upstreams.api]
targets = ["127.0.0.1:9001"]

[[routes]]
path = "/"
upstream = "api"
"#,
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "server.quic (line 5): unknown table `[[server.quic]]`: [server] has no table `quic`"
        ),
        "{errors:#?}"
    );
    assert!(!errors[0].contains("duplicate"), "{errors:#?}");
}

/// Syntax errors say what is wrong in plain words, with line and column.
#[test]
fn syntax_errors_in_plain_words() {
    let errors = check_errors("[server]\nlisten = \"127.0.0.1:8080\nworkers = 2\n");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "server.listen (line 2, column 25): unterminated string: the closing \" is missing"
        ),
        "{errors:#?}"
    );
    let errors = check_errors("[log]\naccess = json\n");
    assert!(
        errors[0].starts_with("log.access (line 2, column 10): `json` is not a TOML value"),
        "{errors:#?}"
    );
    assert!(errors[0].contains("\"json\""), "{errors:#?}");
    let errors = check_errors("[server]\nworkers = 2\nworkers = 3\n");
    assert!(
        errors[0].starts_with("server.workers (line 3, column 1): duplicate key `workers`"),
        "{errors:#?}"
    );
}

/// A required key missing and a value that fits none of a key's forms
/// are reported beside the type errors, not instead of them.
#[test]
fn missing_keys_and_wrong_forms_come_with_the_rest() {
    let errors = check_errors(
        r#"[server]
listen = 8080
workers = "2"

[upstreams.api]
targets = [9001]

[[routes]]
path = "/"
upstreams = [{ weight = 1 }]
"#,
    );
    let want = [
        "server.listen (line 2): expected an address string like \"127.0.0.1:8080\" or a list of them, found 8080",
        "server.workers (line 3): expected a whole number, found the string \"2\"",
        "upstreams.api.targets[0] (line 6): expected an address string",
        "routes[0].upstreams[0] (line 10): missing key `name`",
    ];
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
    for (e, w) in errors.iter().zip(want) {
        assert!(e.starts_with(w), "{e:?} is not {w:?}");
    }
}
