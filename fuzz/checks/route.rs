//! Checks of `tim_gateway::route` on one arbitrary input, shared by the `route` fuzz target and
//! the corpus replay in `tests/fuzz_corpus.rs`.
//!
//! Invariants: neither parser panics; an accepted path is exactly one of the two documented
//! shapes with segments from Tencent's alphabet (src/route.rs); the query parser yields one
//! pair per non-empty `&`-separated piece.

use tim_gateway::route::{parse_path, parse_query};

/// Panics if `data` (read as UTF-8, lossily) breaks one of the invariants above.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);

    if let Some(parsed) = parse_path(&text) {
        let prefix = match parsed.app {
            Some(app) => format!("/apps/{app}/v4/"),
            None => "/v4/".to_owned(),
        };
        assert_eq!(
            format!("{prefix}{}", parsed.command),
            text,
            "the parts do not rebuild the path"
        );
        let (service, name) = parsed
            .command
            .split_once('/')
            .expect("a command is service/command");
        let is_name = |s: &str, extra: u8| {
            (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == extra)
        };
        assert!(
            is_name(service, b'_'),
            "service {service:?} outside the alphabet"
        );
        assert!(is_name(name, b'_'), "command {name:?} outside the alphabet");
        if let Some(app) = parsed.app {
            assert!(is_name(app, b'-'), "app {app:?} outside the alphabet");
        }
    }

    let pairs = parse_query(&text);
    let pieces = text.split('&').filter(|piece| !piece.is_empty()).count();
    assert_eq!(pairs.len(), pieces, "one pair per non-empty piece");
}
