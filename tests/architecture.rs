//! The shape README's "Architecture" section promises, checked on the
//! source: the core (`http/`, `runtime/`, `router/`, `upstream/`) reaches
//! features only through the registry (`src/filter/mod.rs`), never a
//! feature module by name, so a feature can be added, changed or removed
//! without touching the core.

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
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for feature in &features {
                for path in [
                    format!("crate::filter::{feature}"),
                    format!("filter::{feature}::"),
                    format!("ringgate::filter::{feature}"),
                ] {
                    let hit = code.match_indices(&path).any(|(at, _)| {
                        // A whole module name, not the prefix of another.
                        !code[at + path.len()..]
                            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    });
                    if hit {
                        found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the core names feature modules (go through the registry in src/filter/mod.rs):\n{}",
        found.join("\n")
    );
}
