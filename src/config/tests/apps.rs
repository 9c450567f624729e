//! `[apps.NAME]`: names, SDKAppIDs, identifiers, origins, secret keys, UserSig lifetimes, and
//! which app is the default.

use std::time::Duration;

use super::*;
use crate::config::KeySource;
use crate::region::Region;

/// An app's absent keys take the documented defaults, and it is the default app.
#[test]
fn app_keys_take_their_documented_defaults() {
    let config = load(MINIMAL, &env(&[])).config;
    assert_eq!(config.apps.len(), 1);
    let app = &config.apps[0];
    assert_eq!(app.name, "main");
    assert_eq!(app.sdkappid, 1_400_000_001);
    assert_eq!(app.identifier, "administrator");
    assert_eq!(app.origins, Region::Singapore.origins());
    assert_eq!(app.secret_key.expose(), SECRET);
    assert_eq!(
        app.secret_key_source,
        KeySource::Env("TIM_GATEWAY_SECRET_KEY".into())
    );
    assert_eq!(app.usersig_lifetime, Duration::from_secs(86_400));
    assert_eq!(config.default_app, 0);
    assert_eq!(config.app_index("main"), Some(0));
    assert_eq!(config.app_index("Main"), None);
}

/// Every kind of app problem is reported under its own key with a message that says what is
/// wrong.
#[test]
fn each_app_problem_is_reported_under_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let blank = write_file(&dir, "blank.key", b" \n\t\n");
    let binary = write_file(&dir, "binary.key", &[0xff, 0xfe, 0x00]);
    let missing = dir.path().join("missing").to_str().unwrap().to_owned();
    let long_identifier = format!("identifier = \"{}\"", "a".repeat(33));
    let two_apps = "[apps.a]\nsdkappid = 1\nregion = \"sgp\"\n\
                    [apps.b]\nsdkappid = 2\nregion = \"sgp\"\nsecret_key_env = \"B_KEY\"\n";
    let case_twins = "[apps.main]\nsdkappid = 1\nregion = \"sgp\"\n\
                      [apps.Main]\nsdkappid = 2\nregion = \"sgp\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (String::new(), "apps", "no apps are configured"),
        ("[apps]\nmain = 3\n".into(), "apps.main", "expected a table"),
        (
            "[apps.\"bad name!\"]\nsdkappid = 1\nregion = \"sgp\"\n".into(),
            "apps.bad name!",
            "app name must be",
        ),
        (case_twins.into(), "apps.main", "only in letter case"),
        (
            server("default_app = \"nope\""),
            "server.default_app",
            "\"nope\" is not one of the apps",
        ),
        (
            two_apps.into(),
            "server.default_app",
            "several apps (a, b) and no default_app",
        ),
        (
            bare_app("region = \"sgp\""),
            "apps.main.sdkappid",
            "is required",
        ),
        (
            bare_app("sdkappid = 0\nregion = \"sgp\""),
            "apps.main.sdkappid",
            "greater than 0",
        ),
        (
            bare_app("sdkappid = \"abc\"\nregion = \"sgp\""),
            "apps.main.sdkappid",
            "expected",
        ),
        (
            app("identifier = \"\""),
            "apps.main.identifier",
            "must not be empty",
        ),
        (app(&long_identifier), "apps.main.identifier", "at most 32"),
        (
            app("identifier = \"ad\\nmin\""),
            "apps.main.identifier",
            "control characters",
        ),
        (bare_app("sdkappid = 1"), "apps.main", "set region"),
        (
            app("endpoint = \"https://127.0.0.1:9443\""),
            "apps.main.endpoint",
            "not both",
        ),
        (
            bare_app("sdkappid = 1\nregion = \"mars\""),
            "apps.main.region",
            "unknown region",
        ),
        (
            bare_app("sdkappid = 1\nendpoint = \"ftp://x\""),
            "apps.main.endpoint",
            "not supported",
        ),
        (
            app("secret_key = \"k\""),
            "apps.main.secret_key",
            "put the key in an env var",
        ),
        (
            app("secret_key_env = \"MY_KEY\""),
            "apps.main.secret_key_env",
            "MY_KEY is not set",
        ),
        (
            app("secret_key_env = \"\""),
            "apps.main.secret_key_env",
            "must name",
        ),
        (
            app("secret_key_env = \"MY KEY\""),
            "apps.main.secret_key_env",
            "must name",
        ),
        (
            app(&format!("secret_key_file = {missing:?}")),
            "apps.main.secret_key_file",
            "cannot read",
        ),
        (
            app(&format!("secret_key_file = {blank:?}")),
            "apps.main.secret_key_file",
            "is empty",
        ),
        (
            app(&format!("secret_key_file = {binary:?}")),
            "apps.main.secret_key_file",
            "not UTF-8",
        ),
        (
            app("usersig_lifetime = \"5s\""),
            "apps.main.usersig_lifetime",
            "out of range",
        ),
        (
            app("usersig_lifetime = \"181days\""),
            "apps.main.usersig_lifetime",
            "out of range",
        ),
        (
            app("usersig_lifetime = \"60s 500ms\""),
            "apps.main.usersig_lifetime",
            "whole number",
        ),
    ];
    let with_key = env(&[("B_KEY", "k")]);
    for (toml, key, fragment) in cases {
        assert_problem(&toml, &with_key, key, fragment);
    }
}

/// A missing or empty default key variable is a problem of the app that reads it.
#[test]
fn a_missing_key_variable_is_reported_by_name() {
    let no_key = Env::from_map(HashMap::new());
    let blank_key = env(&[("TIM_GATEWAY_SECRET_KEY", "  ")]);
    let cases = [
        (&no_key, "TIM_GATEWAY_SECRET_KEY is not set"),
        (&blank_key, "TIM_GATEWAY_SECRET_KEY is empty"),
    ];
    for (env, fragment) in cases {
        assert_problem(MINIMAL, env, "apps.main.secret_key_env", fragment);
    }
}

/// Allowed but questionable app settings load, with a warning under their key.
#[test]
fn questionable_app_settings_warn_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_file(&dir, "k", b"key");
    let key_file_and_env = format!("secret_key_file = {key_file:?}\nsecret_key_env = \"X\"");
    let upper_case = "[apps.Main]\nsdkappid = 1\nregion = \"sgp\"\n";
    let shared_key = "[apps.a]\nsdkappid = 1\nregion = \"sgp\"\n\
                      [apps.default]\nsdkappid = 2\nregion = \"sgp\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            bare_app("sdkappid = 1\nendpoint = \"http://[::1]:80\""),
            "apps.main.endpoint",
            "plain http",
        ),
        (
            app("usersig_lifetime = \"60s\""),
            "apps.main.usersig_lifetime",
            "at least 24h",
        ),
        (
            app(&key_file_and_env),
            "apps.main.secret_key_env",
            "secret_key_file is set",
        ),
        (upper_case.into(), "apps.Main", "cannot reach this app"),
        (
            shared_key.into(),
            "apps.default.secret_key_env",
            "same secret key",
        ),
    ];
    for (toml, key, fragment) in cases {
        assert_warning(&toml, key, fragment);
    }
}

/// The default app is the named one, else the only one, else the one called "default".
#[test]
fn default_app_is_resolved_in_order() {
    let two = "[apps.a]\nsdkappid = 1\nregion = \"sgp\"\n\
               [apps.b]\nsdkappid = 2\nregion = \"sgp\"\n";
    let with_default = "[apps.a]\nsdkappid = 1\nregion = \"sgp\"\n\
                        [apps.default]\nsdkappid = 2\nregion = \"sgp\"\n";
    let cases = [
        (format!("[server]\ndefault_app = \"b\"\n{two}"), "b"),
        (MINIMAL.to_owned(), "main"),
        (with_default.to_owned(), "default"),
        (
            format!("[server]\ndefault_app = \"a\"\n{with_default}"),
            "a",
        ),
    ];
    for (toml, expected) in cases {
        let config = load(&toml, &env(&[])).config;
        assert_eq!(config.apps[config.default_app].name, expected, "{toml}");
    }
}

/// Two apps with one SDKAppID would each get Tencent's full quota: a problem.
#[test]
fn one_sdkappid_is_configured_once() {
    let toml = "[server]\ndefault_app = \"a\"\n[apps.a]\nsdkappid = 7\nregion = \"sgp\"\n[apps.b]\nsdkappid = 7\nregion = \"sgp\"\n";
    let problems = problems(toml, &env(&[]));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "apps.b.sdkappid");
    assert!(
        problems[0].message.contains("apps.a"),
        "{}",
        problems[0].message
    );
}

/// A key file's surrounding whitespace (a trailing newline, CRLF, indentation) is trimmed.
#[test]
fn key_file_contents_are_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    for contents in ["abc\n", "  abc\r\n", "\tabc \n\n", "abc"] {
        let path = write_file(&dir, "k", contents.as_bytes());
        let loaded = load(
            &format!("{MINIMAL}secret_key_file = {path:?}\n"),
            &Env::default(),
        );
        let app = &loaded.config.apps[0];
        assert_eq!(app.secret_key.expose(), "abc", "{contents:?}");
        assert_eq!(app.secret_key_source, KeySource::File(path.into()));
    }
}
