//! The shape README's "Architecture" section promises, checked on the
//! source: the core (`http/`, `runtime/`, `router/`, `upstream/`) reaches
//! features only through the phase interface (`src/phases.rs`), never
//! `crate::filter` or a feature module by name, and the session
//! (`src/proxy/session.rs`) names no feature module, so a feature can be
//! added, changed or removed without touching the core.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The feature modules: every module under `src/filter/` but the registry.
fn feature_modules(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("src/filter"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "mod.rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_core_names_no_feature_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let features = feature_modules(root);
    for must in ["auth", "rate_limit", "cache", "compress", "cors", "ip_list"] {
        assert!(
            features.iter().any(|f| f == must),
            "{must} is not a module of src/filter/ any more: {features:?}"
        );
    }
    let mut files = Vec::new();
    for core in ["http", "runtime", "router", "upstream"] {
        sources(&root.join("src").join(core), &mut files);
    }
    assert!(files.len() > 20, "{files:?}");
    let mut found = Vec::new();
    for f in &files {
        // The core reaches no part of `filter`, registry types included.
        scan(
            f,
            &["crate::filter::", "ringgate::filter::", "crate::filter;"],
            &mut found,
        );
    }
    // The session runs the chain (`filter::{Chain, RequestCtx, ...}`) but
    // names no feature module.
    let session = root.join("src/proxy/session.rs");
    let named: Vec<String> = features
        .iter()
        .flat_map(|f| [format!("filter::{f}"), format!("crate::filter::{f}")])
        .collect();
    let named: Vec<&str> = named.iter().map(String::as_str).collect();
    scan(&session, &named, &mut found);
    assert!(
        found.is_empty(),
        "the core names features (go through the phase interface in src/phases.rs):\n{}",
        found.join("\n")
    );
}

/// Records each code line of `f` (comments left out) that names one of
/// `paths` as a whole module path (not the prefix of a longer name).
fn scan(f: &Path, paths: &[&str], found: &mut Vec<String>) {
    let text = std::fs::read_to_string(f).unwrap();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for path in paths {
            let whole = |at: usize| {
                !path.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    || !code[at + path.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            };
            let hit = code.match_indices(path).any(|(at, _)| whole(at));
            if hit {
                found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
}
