//! Tests of the configuration loader, one file per concern: loading (file, environment, the
//! shipped examples), reporting every problem at once, each section's rules, and what
//! `check-config` prints. Helpers shared by all of them live here.

mod apps;
mod cache;
mod fleet;
mod loading;
mod output;
mod problems;
mod server;
mod throttle;
mod upstream;

use std::collections::HashMap;

use super::{Config, ConfigError, Env, Loaded, Problem, DEFAULT_SECRET_KEY_ENV};

/// A distinctive key, so a test can search any output for it.
const SECRET: &str = "s3cret-5bd2850fff3ecb11d7c805251c51ee46-never-printed";

/// One valid app, its key from the default variable.
const MINIMAL: &str = r#"
[apps.main]
sdkappid = 1400000001
region = "singapore"
"#;

/// An environment holding the default secret key variable plus `pairs`.
fn env(pairs: &[(&str, &str)]) -> Env {
    let mut map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    map.entry(DEFAULT_SECRET_KEY_ENV.to_owned())
        .or_insert_with(|| SECRET.to_owned());
    Env::from_map(map)
}

fn load(toml: &str, env: &Env) -> Loaded {
    Config::from_toml_str(toml, env).unwrap_or_else(|e| panic!("expected a valid config: {e}"))
}

fn problems(toml: &str, env: &Env) -> Vec<Problem> {
    match Config::from_toml_str(toml, env) {
        Err(ConfigError::Invalid(problems)) => problems,
        Err(other) => panic!("expected problems, got {other}"),
        Ok(loaded) => panic!("expected problems, got a valid config: {:?}", loaded.config),
    }
}

/// Asserts that `toml` is refused with a problem under `key` whose message holds `fragment`.
fn assert_problem(toml: &str, env: &Env, key: &str, fragment: &str) {
    let found = problems(toml, env);
    let problem = found
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem for {key} in {toml:?}; got {found:?}"));
    assert!(problem.message.contains(fragment), "{toml:?}: {problem}");
}

/// Asserts that `toml` loads with a warning under `key` whose message holds `fragment`.
fn assert_warning(toml: &str, key: &str, fragment: &str) {
    let Loaded { warnings, .. } = load(toml, &env(&[]));
    let warning = warnings
        .iter()
        .find(|w| w.key == key)
        .unwrap_or_else(|| panic!("no warning for {key}: {warnings:?}"));
    assert!(warning.message.contains(fragment), "{warning}");
}

/// A file in `dir` with `contents`, returned as a path string for TOML or env values.
fn write_file(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path.to_str().expect("temp paths are UTF-8").to_owned()
}

/// `[server]` holding `lines`, plus the minimal app.
fn server(lines: &str) -> String {
    format!("[server]\n{lines}\n{MINIMAL}")
}

/// `[upstream]` holding `lines`, plus the minimal app.
fn upstream(lines: &str) -> String {
    format!("[upstream]\n{lines}\n{MINIMAL}")
}

/// The minimal app with `lines` added.
fn app(lines: &str) -> String {
    format!("{MINIMAL}{lines}\n")
}

/// `[apps.main]` holding only `lines`.
fn bare_app(lines: &str) -> String {
    format!("[apps.main]\n{lines}\n")
}

/// `[cache]` holding `lines`, plus the minimal app.
fn cache(lines: &str) -> String {
    format!("{MINIMAL}[cache]\n{lines}\n")
}

/// One `[[cache.rules]]` holding `lines`, plus the minimal app.
fn rule(lines: &str) -> String {
    format!("{MINIMAL}[[cache.rules]]\n{lines}\n")
}

/// `[throttle]` holding `lines`, plus the minimal app.
fn throttle(lines: &str) -> String {
    format!("{MINIMAL}[throttle]\n{lines}\n")
}

/// One `[[throttle.quotas]]` holding `lines`, plus the minimal app.
fn quota(lines: &str) -> String {
    format!("{MINIMAL}[[throttle.quotas]]\n{lines}\n")
}
