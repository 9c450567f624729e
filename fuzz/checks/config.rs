//! Checks of the configuration loader on one arbitrary input, shared by the `config` fuzz
//! target and the corpus replay in `tests/fuzz_corpus.rs`.
//!
//! The input (UTF-8, lossily) is a TOML file, optionally followed by a NUL byte and
//! environment variables, one `NAME=VALUE` a line, so the fuzzer reaches the
//! `TIM_GATEWAY__…` overrides too. The default key variable always holds [`SECRET`].
//!
//! Invariants (src/config.rs promises): loading never panics; problems come sorted by key, at
//! most one per key, and warnings sorted; no message, `Debug` or `Display` carries the secret
//! key (checked when the input does not itself contain it).

use std::collections::HashMap;

use tim_gateway::config::{Config, ConfigError, Env, DEFAULT_SECRET_KEY_ENV};

/// A distinctive secret key, so any output can be searched for it.
pub const SECRET: &str = "fuzz-s3cret-5bd2850fff3ecb11d7c805251c51ee46";

/// Panics if `data` breaks one of the invariants above.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (toml, vars) = text.split_once('\0').unwrap_or((&text, ""));
    let mut map: HashMap<String, String> = vars
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    map.entry(DEFAULT_SECRET_KEY_ENV.to_owned())
        .or_insert_with(|| SECRET.to_owned());
    let env = Env::from_map(map);

    let outputs = match Config::from_toml_str(toml, &env) {
        Ok(loaded) => {
            // Redacted keys can move in the order; see the problems below.
            let shown: Vec<_> = loaded
                .warnings
                .iter()
                .filter(|w| !w.key.contains("<redacted>"))
                .collect();
            assert!(
                shown.is_sorted_by(|a, b| a.key <= b.key),
                "warnings are not sorted by key: {:?}",
                loaded.warnings
            );
            vec![
                loaded.config.to_string(),
                format!("{:?}", loaded.config),
                format!("{:?}", loaded.warnings),
            ]
        }
        Err(error) => {
            if let ConfigError::Invalid(problems) = &error {
                assert!(!problems.is_empty(), "Invalid with no problem");
                // Sorted and unique by the key as written. A key holding something that looks
                // like a secret is shown redacted, which can change its place in the order
                // (and make two shown keys equal), so only fully shown keys are compared.
                let shown: Vec<_> = problems
                    .iter()
                    .filter(|p| !p.key.contains("<redacted>"))
                    .collect();
                assert!(
                    shown.is_sorted_by(|a, b| a.key < b.key),
                    "problems are not sorted by key, one per key: {problems:?}"
                );
            }
            vec![error.to_string(), format!("{error:?}")]
        }
    };
    if !text.contains(SECRET) {
        for output in outputs {
            assert!(!output.contains(SECRET), "the secret key leaked: {output}");
        }
    }
}
