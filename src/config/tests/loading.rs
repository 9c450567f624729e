//! Loading: the file, the `TIM_GATEWAY__…` environment overrides, and the configurations
//! that ship with the gateway.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::raw::{
    field_names, RawApp, RawCache, RawCacheRule, RawQuota, RawServer, RawThrottle, RawUpstream,
};
use crate::config::{CacheRule, QuotaOverride, DEMO_TOML};
use crate::region::Region;

/// `TIM_GATEWAY__SECTION__KEY` overrides numbers, booleans, strings and nested app keys, and
/// string fields are not reinterpreted as numbers.
#[test]
fn env_overrides_reach_every_kind_of_key() {
    type Check = fn(&Config) -> bool;
    let cases: &[(&str, &str, Check)] = &[
        ("TIM_GATEWAY__SERVER__LISTEN", "127.0.0.1:8081", |c| {
            c.server.listen.tcp().map(|a| a.port()) == Some(8081)
        }),
        ("tim_gateway__server__admin_listen", "127.0.0.1:9091", |c| {
            c.server.admin_listen.port() == 9091
        }),
        ("TIM_GATEWAY__SERVER__MAX_BODY_BYTES", "2048", |c| {
            c.server.max_body_bytes == 2048
        }),
        ("TIM_GATEWAY__SERVER__ALLOW_UNKNOWN_COMMANDS", "true", |c| {
            c.server.allow_unknown_commands
        }),
        ("TIM_GATEWAY__SERVER__ALLOW_NON_LOOPBACK", "1", |c| {
            c.server.allow_non_loopback
        }),
        ("TIM_GATEWAY__SERVER__MAX_CONNECTIONS", "64", |c| {
            c.server.max_connections == Some(64)
        }),
        ("TIM_GATEWAY__SERVER__WORKER_THREADS", "3", |c| {
            c.server.worker_threads == Some(3)
        }),
        ("TIM_GATEWAY__UPSTREAM__REQUEST_TIMEOUT", "30s", |c| {
            c.upstream.request_timeout == Duration::from_secs(30)
        }),
        ("TIM_GATEWAY__UPSTREAM__POOL_MAX_IDLE_PER_HOST", "4", |c| {
            c.upstream.pool_max_idle_per_host == 4
        }),
        ("TIM_GATEWAY__APPS__MAIN__SDKAPPID", "1400000009", |c| {
            c.apps[0].sdkappid == 1_400_000_009
        }),
        ("TIM_GATEWAY__APPS__MAIN__IDENTIFIER", "007", |c| {
            c.apps[0].identifier == "007"
        }),
        ("TIM_GATEWAY__APPS__MAIN__REGION", "frankfurt", |c| {
            c.apps[0].origins == Region::Frankfurt.origins()
        }),
        ("TIM_GATEWAY__APPS__MAIN__USERSIG_LIFETIME", "2h", |c| {
            c.apps[0].usersig_lifetime == Duration::from_secs(7200)
        }),
        ("TIM_GATEWAY__SERVER__SHUTDOWN_GRACE", "5s", |c| {
            c.server.shutdown_grace == Duration::from_secs(5)
        }),
        ("TIM_GATEWAY__UPSTREAM__MAX_RETRIES", "0", |c| {
            c.upstream.max_retries == 0
        }),
        ("TIM_GATEWAY__UPSTREAM__RETRY_BASE_DELAY", "1ms", |c| {
            c.upstream.retry_base_delay == Duration::from_millis(1)
        }),
        ("TIM_GATEWAY__UPSTREAM__DEADLINE", "1m", |c| {
            c.upstream.deadline == Duration::from_secs(60)
        }),
        ("TIM_GATEWAY__CACHE__MAX_BYTES", "1048576", |c| {
            c.cache.max_bytes == 1_048_576
        }),
        ("TIM_GATEWAY__THROTTLE__SAFETY_MARGIN", "0.2", |c| {
            c.throttle.safety_margin == 0.2
        }),
        ("TIM_GATEWAY__THROTTLE__BURST", "0", |c| {
            c.throttle.burst == 0.0
        }),
        ("TIM_GATEWAY__THROTTLE__MAX_WAIT", "500ms", |c| {
            c.throttle.max_wait == Duration::from_millis(500)
        }),
        ("TIM_GATEWAY__THROTTLE__MAX_WAITERS", "10", |c| {
            c.throttle.max_waiters == 10
        }),
        ("TIM_GATEWAY__THROTTLE__DEFAULT_QUOTA", "50", |c| {
            c.throttle.default_quota == 50
        }),
        ("TIM_GATEWAY__THROTTLE__BACKOFF_BASE", "2s", |c| {
            c.throttle.backoff_base == Duration::from_secs(2)
        }),
        ("TIM_GATEWAY__THROTTLE__BACKOFF_MAX", "1m", |c| {
            c.throttle.backoff_max == Duration::from_secs(60)
        }),
    ];
    for (name, value, check) in cases {
        let loaded = load(MINIMAL, &env(&[(name, value)]));
        assert!(check(&loaded.config), "{name}={value}: {:?}", loaded.config);
    }
}

/// An override of a `[cache]` or `[throttle]` scalar keeps the file's `[[cache.rules]]` and
/// `[[throttle.quotas]]`.
#[test]
fn env_override_keeps_the_files_arrays_of_tables() {
    let toml = format!(
        "{MINIMAL}[[cache.rules]]\ncommand = \"profile/portrait_get\"\nttl = \"2s\"\n\
         [[throttle.quotas]]\ncommand = \"openim/sendmsg\"\nper_second = 10\n"
    );
    let config = load(
        &toml,
        &env(&[
            ("TIM_GATEWAY__CACHE__MAX_BYTES", "2048"),
            ("TIM_GATEWAY__THROTTLE__MAX_WAIT", "0s"),
        ]),
    )
    .config;
    assert_eq!(config.cache.max_bytes, 2048);
    assert_eq!(config.cache.rules.len(), 1);
    assert_eq!(config.throttle.max_wait, Duration::ZERO);
    assert_eq!(config.throttle.quotas.len(), 1);
}

/// A bad override names its variable; arrays of tables cannot be overridden.
#[test]
fn a_bad_override_names_its_variable() {
    let robots_rule = rule("command = \"openim_robot_http_svc/get_all_robots\"\nttl = \"5s\"");
    let cases = [
        (
            MINIMAL,
            ("TIM_GATEWAY__SERVER__LISTEN", "nope"),
            "server.listen",
            "(set by TIM_GATEWAY__SERVER__LISTEN)",
        ),
        (
            MINIMAL,
            ("TIM_GATEWAY__THROTTLE__MAX_WAIT", "2m"),
            "throttle.max_wait",
            "(set by TIM_GATEWAY__THROTTLE__MAX_WAIT)",
        ),
        (
            &robots_rule,
            ("TIM_GATEWAY__CACHE__RULES__0__TTL", "9s"),
            "cache.rules",
            "cannot be set from the environment; unset the TIM_GATEWAY__CACHE__RULES… variables",
        ),
        (
            MINIMAL,
            ("TIM_GATEWAY__THROTTLE__QUOTAS", "x"),
            "throttle.quotas",
            "cannot be set from the environment",
        ),
    ];
    for (toml, pair, key, fragment) in cases {
        assert_problem(toml, &env(&[pair]), key, fragment);
    }
}

/// An override may name an app the file lacks, creating it, and an empty value clears a
/// file's `region` so the override's `endpoint` can take its place.
#[test]
fn env_can_add_an_app_and_clear_a_key() {
    let loaded = load(
        MINIMAL,
        &env(&[
            ("TIM_GATEWAY__APPS__EXTRA__SDKAPPID", "1400000002"),
            ("TIM_GATEWAY__APPS__EXTRA__REGION", "tokyo"),
            ("TIM_GATEWAY__SERVER__DEFAULT_APP", "extra"),
            ("TIM_GATEWAY__APPS__MAIN__REGION", ""),
            (
                "TIM_GATEWAY__APPS__MAIN__ENDPOINT",
                "https://127.0.0.1:9443",
            ),
        ]),
    );
    let config = loaded.config;
    let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["extra", "main"]);
    assert_eq!(config.default_app, 0);
    assert_eq!(
        config.apps[1].origins.primary.as_str(),
        "https://127.0.0.1:9443"
    );
    assert_eq!(config.apps[1].origins.backup, None);
}

/// `TIM_GATEWAY_SECRET_KEY` and other single-underscore variables are not configuration keys.
#[test]
fn single_underscore_variables_are_not_config_keys() {
    let loaded = load(
        MINIMAL,
        &env(&[
            ("TIM_GATEWAY_SERVER__LISTEN", "0.0.0.0:1"),
            ("TIM_GATEWAY_SECRET_KEY_FILE", "/nonexistent"),
            ("TIM_GATEWAYX__SERVER__LISTEN", "0.0.0.0:1"),
        ]),
    );
    assert_eq!(
        loaded.config.server.listen,
        "127.0.0.1:18460".parse().unwrap()
    );
    assert!(loaded.warnings.is_empty());
}

/// An unreadable file is a `Read` error naming the path; bad TOML is a `Parse` error with the
/// line number.
#[test]
fn unreadable_or_malformed_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    match Config::load(&missing, &env(&[])) {
        Err(ConfigError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Read, got {other:?}"),
    }
    match Config::from_toml_str("[server\nlisten = 1", &env(&[])) {
        Err(ConfigError::Parse { reason, .. }) => assert!(reason.contains("line 1"), "{reason}"),
        other => panic!("expected Parse, got {other:?}"),
    }
}

/// config/example.toml validates once its key file and key variable exist, so it cannot rot.
#[test]
fn example_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_file(&dir, "main.key", b"main-key\n");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let env = Env::from_map(HashMap::from([
        (
            "TIM_GATEWAY__APPS__MAIN__SECRET_KEY_FILE".to_owned(),
            key_file,
        ),
        ("TIM_GATEWAY_SECRET_KEY_EU".to_owned(), "eu-key".to_owned()),
    ]));
    let Loaded { config, warnings } =
        Config::load(&path, &env).unwrap_or_else(|e| panic!("example.toml: {e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["eu", "main"]);
    assert_eq!(config.apps[config.default_app].name, "main");
    assert_eq!(config.apps[0].origins, Region::Frankfurt.origins());
    assert_eq!(config.apps[0].secret_key.expose(), "eu-key");
    assert_eq!(config.apps[1].origins, Region::Singapore.origins());
    assert_eq!(config.apps[1].secret_key.expose(), "main-key");
    // The example's rule spells out the built-in default for get_all_robots.
    assert_eq!(
        config.cache.rules,
        [CacheRule {
            command: "openim_robot_http_svc/get_all_robots".into(),
            enabled: true,
            ttl: Duration::from_secs(5),
            stale_while_revalidate: Duration::from_secs(25),
            stale_if_error: Duration::from_secs(300),
            invalidated_by: vec![
                "openim_robot_http_svc/create_robot".into(),
                "openim_robot_http_svc/delete_robot".into(),
            ],
        }]
    );
    assert_eq!(
        config.throttle.quotas,
        [QuotaOverride {
            command: "im_open_login_svc/account_check".into(),
            per_second: 100,
        }]
    );
}

/// config/example.toml documents every key the gateway reads (possibly commented out), arrays
/// of tables as `[[section.key]]`.
#[test]
fn example_config_mentions_every_key() {
    let text = include_str!("../../../config/example.toml");
    let keys = [
        ("server", field_names::<RawServer>()),
        ("upstream", field_names::<RawUpstream>()),
        ("apps.NAME", field_names::<RawApp>()),
        ("cache", field_names::<RawCache>()),
        ("cache.rules", field_names::<RawCacheRule>()),
        ("throttle", field_names::<RawThrottle>()),
        ("throttle.quotas", field_names::<RawQuota>()),
    ];
    for (section, fields) in keys {
        assert!(!fields.is_empty(), "{section}");
        for key in fields {
            let is_mentioned = text.contains(&format!("{key} = "))
                || text.contains(&format!("[[{section}.{key}]]"));
            assert!(is_mentioned, "example.toml lacks {section}.{key}");
        }
    }
    // The built-in get_all_robots rule that a [[cache.rules]] table replaces.
    for fact in [
        "openim_robot_http_svc/get_all_robots",
        "\"5s\"",
        "\"25s\"",
        "\"5m\"",
        "openim_robot_http_svc/create_robot",
        "openim_robot_http_svc/delete_robot",
        "replaces its default rule",
        "# command = \"profile/portrait_get\"",
    ] {
        assert!(text.contains(fact), "example.toml lacks {fact}");
    }
}

/// The built-in demo config validates with what the demo fills in at runtime.
#[test]
fn demo_config_validates() {
    let env = env(&[(
        "TIM_GATEWAY__APPS__DEMO__ENDPOINT",
        "https://127.0.0.1:40001",
    )]);
    let Loaded { config, warnings } = load(DEMO_TOML, &env);
    assert!(warnings.is_empty(), "{warnings:?}");
    let app = &config.apps[config.default_app];
    assert_eq!((app.name.as_str(), app.sdkappid), ("demo", 1_400_000_000));
    assert_eq!(app.identifier, "administrator");
    assert_eq!(app.origins.primary.as_str(), "https://127.0.0.1:40001");
}

/// The known keys come from the `Raw*` structs themselves, arrays of tables included.
#[test]
fn field_names_are_read_from_serde() {
    assert!(field_names::<RawServer>().contains(&"default_app"));
    assert!(field_names::<RawServer>().contains(&"worker_threads"));
    assert!(field_names::<RawApp>().contains(&"secret_key_env"));
    assert!(!field_names::<RawApp>().contains(&"secret_key"));
    assert!(field_names::<RawCache>().contains(&"rules"));
    assert!(field_names::<RawThrottle>().contains(&"quotas"));
}
