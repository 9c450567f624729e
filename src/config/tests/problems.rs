//! Every problem at once: unknown keys with a "did you mean", one problem per key, all of a
//! file's problems in one sorted list.

use super::*;

/// An unknown key or section is reported with the closest known name, and a section that is
/// not a table is reported as such.
#[test]
fn unknown_keys_get_a_did_you_mean() {
    let cases = [
        (
            server("lsten = \"127.0.0.1:1\""),
            "server.lsten",
            "did you mean `listen`?",
        ),
        (
            format!("[sever]\n{MINIMAL}"),
            "sever",
            "did you mean `server`?",
        ),
        (
            app("regoin = \"x\""),
            "apps.main.regoin",
            "did you mean `region`?",
        ),
        (
            server("Listen = \"127.0.0.1:1\""),
            "server.Listen",
            "did you mean `listen`?",
        ),
        (
            server("lissten_addr = 1"),
            "server.lissten_addr",
            "unknown key (known: listen, listen_mode, tls_cert_file, tls_key_file, admin_listen,",
        ),
        (
            format!("server = 5\n{MINIMAL}"),
            "server",
            "expected a table",
        ),
    ];
    for (toml, key, fragment) in cases {
        assert_problem(&toml, &env(&[]), key, fragment);
    }
}

/// One run reports every problem of a file, sorted by key, including several type errors.
#[test]
fn several_problems_are_reported_at_once() {
    let toml = r#"
        [server]
        listen = "0.0.0.0:8080"
        max_body_bytes = "big"
        [upstream]
        connect_timeout = "5 parsecs"
        [apps.main]
        sdkappid = "abc"
        region = "mars"
    "#;
    let found = problems(toml, &Env::default());
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "apps.main.region",
            "apps.main.sdkappid",
            "apps.main.secret_key_env",
            "server.listen",
            "server.max_body_bytes",
            "upstream.connect_timeout",
        ]
    );
    let text = ConfigError::Invalid(found).to_string();
    assert!(
        text.starts_with("the configuration has 6 problems:\n  apps.main.region: "),
        "{text}"
    );
}

/// The brief's four-problem file: unknown region, missing key, public listen, bad duration.
#[test]
fn four_unrelated_problems_come_back_together() {
    let toml = r#"
        [server]
        listen = "0.0.0.0:8080"
        [upstream]
        request_timeout = "ten seconds"
        [apps.main]
        sdkappid = 1400000001
        region = "mars"
    "#;
    assert_eq!(problems(toml, &Env::default()).len(), 4);
}

/// A value of the wrong type is reported once, under its key, not again as "missing" (and a
/// bad `secret_key_file` does not fall back to the key variable).
#[test]
fn a_wrongly_typed_value_is_reported_once() {
    let cases = [
        (
            "[apps.main]\nsdkappid = 1\nregion = [\"sgp\"]\n",
            env(&[]),
            "apps.main.region",
        ),
        (
            "[apps.main]\nsdkappid = []\nregion = \"sgp\"\n",
            env(&[]),
            "apps.main.sdkappid",
        ),
        (
            "[apps.main]\nsdkappid = 1\nregion = \"sgp\"\nsecret_key_file = {a = 1}\n",
            Env::default(),
            "apps.main.secret_key_file",
        ),
    ];
    for (toml, env, key) in cases {
        let found = problems(toml, &env);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, key);
        assert!(found[0].message.starts_with("expected "), "{}", found[0]);
    }
}
