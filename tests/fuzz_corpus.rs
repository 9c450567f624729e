//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) on stable, through the same
//! checks the `cargo fuzz` targets run (`fuzz/checks/<target>.rs`), so every `cargo test`
//! re-proves what fuzzing once found. A missing or empty corpus directory fails.

use std::path::{Path, PathBuf};

#[path = "../fuzz/checks/body.rs"]
mod body;
#[path = "../fuzz/checks/config.rs"]
mod config;
#[path = "../fuzz/checks/http.rs"]
mod http_framing;
#[path = "../fuzz/checks/route.rs"]
mod route;
#[path = "../fuzz/checks/usersig.rs"]
mod usersig;

/// Runs `check` on every file of `fuzz/corpus/<target>/`, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    files.sort();
    for file in files {
        let data = std::fs::read(&file).expect("a readable corpus file");
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("the corpus file {} fails its check", file.display());
        }
    }
}

/// Every body in the corpus keeps the validator's and the canonical key's invariants.
#[test]
fn body_corpus_keeps_its_invariants() {
    replay("body", body::check);
}

/// Every path and query in the corpus parses without panicking, into well-formed parts.
#[test]
fn route_corpus_keeps_its_invariants() {
    replay("route", route::check);
}

/// Every UserSig in the corpus decodes and verifies consistently, and its bytes as fields
/// mint a UserSig that verifies.
#[test]
fn usersig_corpus_keeps_its_invariants() {
    replay("usersig", usersig::check);
}

/// Every config in the corpus loads or fails without panicking, and never leaks the key.
#[test]
fn config_corpus_keeps_its_invariants() {
    replay("config", config::check);
}

/// Every request in the corpus has its body framed the same way whatever the read sizes.
#[test]
fn http_corpus_keeps_its_invariants() {
    replay("http", http_framing::check);
}
