use super::raw::{
    field_names, RawApp, RawCache, RawCacheRule, RawQuota, RawServer, RawThrottle, RawUpstream,
};
use super::*;
use crate::region::Region;

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

/// A file in `dir` with `contents`, returned as a path string for TOML or env values.
fn write_file(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path.to_str().expect("temp paths are UTF-8").to_owned()
}

/// Absent keys take the documented defaults.
#[test]
fn defaults_fill_every_absent_key() {
    let Loaded { config, warnings } = load(MINIMAL, &env(&[]));
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = &config.server;
    assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(s.admin_listen, "127.0.0.1:9090".parse().unwrap());
    assert!(!s.allow_non_loopback);
    assert_eq!(s.max_body_bytes, 1_048_576);
    assert!(!s.allow_unknown_commands);
    let u = &config.upstream;
    assert_eq!(u.connect_timeout, Duration::from_secs(5));
    assert_eq!(u.request_timeout, Duration::from_secs(10));
    assert_eq!(u.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(u.pool_max_idle_per_host, 32);
    assert_eq!((u.ca_file.clone(), u.extra_ca_pem.clone()), (None, None));
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

/// The keys of `[server]`, `[upstream]`, `[cache]` and `[throttle]` added for shutdown,
/// retries, the cache and the throttle take their documented defaults.
#[test]
fn new_keys_take_their_documented_defaults() {
    let Loaded { config, warnings } = load(MINIMAL, &env(&[]));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(25));
    let u = &config.upstream;
    assert_eq!(u.max_retries, 2);
    assert_eq!(u.retry_base_delay, Duration::from_millis(100));
    assert_eq!(u.deadline, Duration::from_secs(15));
    assert_eq!(
        config.cache,
        CacheConfig {
            max_bytes: 67_108_864,
            rules: vec![],
        }
    );
    assert_eq!(
        config.throttle,
        ThrottleConfig {
            safety_margin: 0.05,
            burst: 0.05,
            max_wait: Duration::from_secs(2),
            max_waiters: 1024,
            default_quota: 200,
            quotas: vec![],
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    );
}

/// A rule's optional keys take their defaults: enabled, no stale serving, no invalidation;
/// a disabled rule needs no ttl.
#[test]
fn cache_rule_keys_take_their_defaults() {
    let toml = format!(
        "{MINIMAL}[[cache.rules]]\ncommand = \"profile/portrait_get\"\nttl = \"2s\"\n\
         [[cache.rules]]\ncommand = \"openim_robot_http_svc/get_all_robots\"\nenabled = false\n"
    );
    let rules = load(&toml, &env(&[])).config.cache.rules;
    assert_eq!(
        rules,
        [
            CacheRule {
                command: "profile/portrait_get".into(),
                enabled: true,
                ttl: Duration::from_secs(2),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                invalidated_by: vec![],
            },
            CacheRule {
                command: "openim_robot_http_svc/get_all_robots".into(),
                enabled: false,
                ttl: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                invalidated_by: vec![],
            },
        ]
    );
}

/// Every key of `[[cache.rules]]` and `[[throttle.quotas]]` is read, tables come out in file
/// order, fractions accept integers, and zero turns off what may be off.
#[test]
fn rules_and_quotas_are_read_in_file_order() {
    let toml = format!(
        r#"{MINIMAL}
[cache]
max_bytes = 1024
[[cache.rules]]
command = "profile/portrait_get"
enabled = true
ttl = "1day"
stale_while_revalidate = "0s"
stale_if_error = "7days"
invalidated_by = ["profile/portrait_set", "openim/sendmsg"]
[[cache.rules]]
command = "group_open_http_svc/get_group_info"
ttl = "1s"
stale_while_revalidate = "1day"
[throttle]
safety_margin = 0
burst = 0.1
max_wait = "0s"
max_waiters = 0
default_quota = 100000
backoff_base = "30s"
backoff_max = "30s"
[[throttle.quotas]]
command = "openim/sendmsg"
per_second = 2
[[throttle.quotas]]
command = "im_open_login_svc/account_check"
per_second = 100
"#
    );
    let Loaded { config, warnings } = load(&toml, &env(&[]));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.cache.max_bytes, 1024);
    let rules = &config.cache.rules;
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].command, "profile/portrait_get");
    assert_eq!(rules[0].ttl, Duration::from_secs(86_400));
    assert_eq!(rules[0].stale_while_revalidate, Duration::ZERO);
    assert_eq!(rules[0].stale_if_error, Duration::from_secs(7 * 86_400));
    assert_eq!(
        rules[0].invalidated_by,
        ["profile/portrait_set", "openim/sendmsg"]
    );
    assert_eq!(rules[1].command, "group_open_http_svc/get_group_info");
    assert_eq!(rules[1].stale_while_revalidate, Duration::from_secs(86_400));
    let t = &config.throttle;
    assert_eq!((t.safety_margin, t.burst), (0.0, 0.1));
    assert_eq!((t.max_wait, t.max_waiters), (Duration::ZERO, 0));
    assert_eq!(t.default_quota, 100_000);
    assert_eq!(t.backoff_base, t.backoff_max);
    let quotas: Vec<(&str, u32)> = t
        .quotas
        .iter()
        .map(|q| (q.command.as_str(), q.per_second))
        .collect();
    assert_eq!(
        quotas,
        [
            ("openim/sendmsg", 2),
            ("im_open_login_svc/account_check", 100)
        ]
    );
}

/// `TIM_GATEWAY__SECTION__KEY` overrides numbers, booleans, strings and nested app keys, and
/// string fields are not reinterpreted as numbers.
#[test]
fn env_overrides_reach_every_kind_of_key() {
    type Check = fn(&Config) -> bool;
    let cases: &[(&str, &str, Check)] = &[
        ("TIM_GATEWAY__SERVER__LISTEN", "127.0.0.1:8081", |c| {
            c.server.listen.port() == 8081
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

/// Without `upstream.deadline`, a request timeout above 15 s raises the deadline to match
/// instead of failing a file that was valid before the key existed.
#[test]
fn unset_deadline_follows_a_long_request_timeout() {
    let cases = [("5s", 15), ("15s", 15), ("30s", 30)];
    for (request_timeout, deadline) in cases {
        let toml = upstream(&format!("request_timeout = {request_timeout:?}"));
        let config = load(&toml, &env(&[])).config;
        assert_eq!(
            config.upstream.deadline,
            Duration::from_secs(deadline),
            "{request_timeout}"
        );
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
        "127.0.0.1:8080".parse().unwrap()
    );
    assert!(loaded.warnings.is_empty());
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

/// Every kind of problem is reported under its own key with a message that says what is wrong.
#[test]
fn each_problem_is_reported_under_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let blank = write_file(&dir, "blank.key", b" \n\t\n");
    let binary = write_file(&dir, "binary.key", &[0xff, 0xfe, 0x00]);
    let not_pem = write_file(&dir, "not.pem", b"hello");
    let missing = dir.path().join("missing").to_str().unwrap().to_owned();
    let long_identifier = format!("identifier = \"{}\"", "a".repeat(33));
    let two_apps = "[apps.a]\nsdkappid = 1\nregion = \"sgp\"\n\
                    [apps.b]\nsdkappid = 2\nregion = \"sgp\"\nsecret_key_env = \"B_KEY\"\n";
    let case_twins = "[apps.main]\nsdkappid = 1\nregion = \"sgp\"\n\
                      [apps.Main]\nsdkappid = 2\nregion = \"sgp\"\n";

    // (toml, key, message fragment), all with the default key variable set.
    let cases: Vec<(String, &str, &str)> = vec![
        // Unknown keys and wrong shapes.
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
            format!("server = 5\n{MINIMAL}"),
            "server",
            "expected a table",
        ),
        ("[apps]\nmain = 3\n".into(), "apps.main", "expected a table"),
        // [server]
        (
            server("listen = \"localhost:80\""),
            "server.listen",
            "not an IP address and port",
        ),
        (
            server("listen = \"0.0.0.0:8080\""),
            "server.listen",
            "hands out admin power",
        ),
        (
            server("admin_listen = \"[::]:9090\""),
            "server.admin_listen",
            "not a loopback",
        ),
        (
            server("listen = \"127.0.0.1:7000\"\nadmin_listen = \"127.0.0.1:7000\""),
            "server.admin_listen",
            "its own address",
        ),
        (
            server("max_body_bytes = 0"),
            "server.max_body_bytes",
            "out of range",
        ),
        (
            server("max_body_bytes = 67108865"),
            "server.max_body_bytes",
            "out of range",
        ),
        (
            server("max_body_bytes = -1"),
            "server.max_body_bytes",
            "expected",
        ),
        (
            server("allowed_hosts = [\"http://evil.example\"]"),
            "server.allowed_hosts[0]",
            "not a host name",
        ),
        (
            server("allowed_hosts = [\"ok.example\", \"a host\"]"),
            "server.allowed_hosts[1]",
            "not a host name",
        ),
        (
            server("max_connections = 0"),
            "server.max_connections",
            "out of range",
        ),
        (
            server("allow_non_loopback = true\nadmin_listen = \"0.0.0.0:9090\""),
            "server.admin_token_file",
            "needs a bearer token",
        ),
        (
            server(&format!("admin_token_file = \"{blank}\"")),
            "server.admin_token_file",
            "at least 16 printable",
        ),
        (
            server(&format!("admin_token_file = \"{missing}\"")),
            "server.admin_token_file",
            "cannot read",
        ),
        (
            server("allow_unknown_commands = \"maybe\""),
            "server.allow_unknown_commands",
            "expected",
        ),
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
        // [upstream]
        (
            upstream("connect_timeout = 5"),
            "upstream.connect_timeout",
            "\"5\" is not a duration",
        ),
        (
            upstream("request_timeout = \"0s\""),
            "upstream.request_timeout",
            "is zero",
        ),
        (
            upstream("pool_idle_timeout = \"soon\""),
            "upstream.pool_idle_timeout",
            "not a duration",
        ),
        (
            upstream(&format!("ca_file = {missing:?}")),
            "upstream.ca_file",
            "cannot read",
        ),
        (
            upstream(&format!("ca_file = {not_pem:?}")),
            "upstream.ca_file",
            "no PEM certificate",
        ),
        // [apps.NAME]
        (String::new(), "apps", "no apps are configured"),
        (
            "[apps.\"bad name!\"]\nsdkappid = 1\nregion = \"sgp\"\n".into(),
            "apps.bad name!",
            "app name must be",
        ),
        (case_twins.into(), "apps.main", "only in letter case"),
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

    // Problems that depend on the environment.
    let no_key = Env::from_map(HashMap::new());
    let blank_key = env(&[("TIM_GATEWAY_SECRET_KEY", "  ")]);
    let bad_listen = env(&[("TIM_GATEWAY__SERVER__LISTEN", "nope")]);
    let env_cases = [
        (
            &no_key,
            "apps.main.secret_key_env",
            "TIM_GATEWAY_SECRET_KEY is not set",
        ),
        (
            &blank_key,
            "apps.main.secret_key_env",
            "TIM_GATEWAY_SECRET_KEY is empty",
        ),
        (
            &bad_listen,
            "server.listen",
            "(set by TIM_GATEWAY__SERVER__LISTEN)",
        ),
    ];
    for (env, key, fragment) in env_cases {
        assert_problem(MINIMAL, env, key, fragment);
    }
}

fn assert_problem(toml: &str, env: &Env, key: &str, fragment: &str) {
    let found = problems(toml, env);
    let problem = found
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem for {key} in {toml:?}; got {found:?}"));
    assert!(problem.message.contains(fragment), "{toml:?}: {problem}");
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

/// Every problem of the shutdown, retry, deadline, cache and throttle keys is reported under
/// its key path, rules and quotas with their index.
#[test]
fn each_new_problem_is_reported_under_its_key() {
    const ROBOTS: &str = "command = \"openim_robot_http_svc/get_all_robots\"";
    let two_rules = format!(
        "{MINIMAL}[[cache.rules]]\n{ROBOTS}\nttl = \"5s\"\n[[cache.rules]]\n{ROBOTS}\nttl = \"9s\"\n"
    );
    let two_quotas = format!(
        "{MINIMAL}[[throttle.quotas]]\ncommand = \"openim/sendmsg\"\nper_second = 3\n\
         [[throttle.quotas]]\ncommand = \"openim/sendmsg\"\nper_second = 2\n"
    );
    let second_rule_bad = format!(
        "{MINIMAL}[[cache.rules]]\n{ROBOTS}\nttl = \"5s\"\n[[cache.rules]]\n{ROBOTS}\nttl = \"2days\"\n"
    );
    let cases: Vec<(String, &str, &str)> = vec![
        // [server]
        (
            server("shutdown_grace = \"0s\""),
            "server.shutdown_grace",
            "is zero",
        ),
        (
            server("shutdown_grace = \"11m\""),
            "server.shutdown_grace",
            "give at most 10m",
        ),
        (
            server("shutdown_grace = \"soon\""),
            "server.shutdown_grace",
            "not a duration",
        ),
        // [upstream]
        (
            upstream("max_retries = 6"),
            "upstream.max_retries",
            "6 is out of range; give 0 ..= 5",
        ),
        (
            upstream("max_retries = -1"),
            "upstream.max_retries",
            "expected",
        ),
        (
            upstream("retry_base_delay = \"500us\""),
            "upstream.retry_base_delay",
            "give 1ms ..= 10s",
        ),
        (
            upstream("retry_base_delay = \"11s\""),
            "upstream.retry_base_delay",
            "out of range",
        ),
        (
            upstream("retry_base_delay = \"0s\""),
            "upstream.retry_base_delay",
            "is zero",
        ),
        (
            upstream("deadline = \"9s\""),
            "upstream.deadline",
            "shorter than upstream.request_timeout (10s)",
        ),
        (
            upstream("request_timeout = \"20s\"\ndeadline = \"15s\""),
            "upstream.deadline",
            "shorter than upstream.request_timeout (20s)",
        ),
        (
            upstream("deadline = \"0s\""),
            "upstream.deadline",
            "is zero",
        ),
        // [cache]
        (format!("cache = 1\n{MINIMAL}"), "cache", "expected a table"),
        (
            cache("max_bytes = 1023"),
            "cache.max_bytes",
            "1 KiB ..= 16 GiB",
        ),
        (
            cache("max_bytes = 17179869185"),
            "cache.max_bytes",
            "out of range",
        ),
        (
            cache("max_byte = 1024"),
            "cache.max_byte",
            "did you mean `max_bytes`?",
        ),
        (
            cache("rules = 5"),
            "cache.rules",
            "expected an array of tables",
        ),
        (cache("rules = [1]"), "cache.rules[0]", "expected a table"),
        // [[cache.rules]]
        (
            rule("ttl = \"5s\""),
            "cache.rules[0].command",
            "is required",
        ),
        (
            rule("command = \"profile/portrait_gets\"\nttl = \"5s\""),
            "cache.rules[0].command",
            "not in the catalogue; did you mean \"profile/portrait_get\"?",
        ),
        (
            rule("command = \"openim/sendmsg\"\nttl = \"5s\""),
            "cache.rules[0].command",
            "only reads can be cached",
        ),
        (
            rule(ROBOTS),
            "cache.rules[0].ttl",
            "is required when the rule is enabled",
        ),
        (
            rule(&format!("{ROBOTS}\nenabled = true")),
            "cache.rules[0].ttl",
            "is required",
        ),
        (
            rule(&format!("{ROBOTS}\nttl = \"0s\"")),
            "cache.rules[0].ttl",
            "is zero",
        ),
        (
            rule(&format!("{ROBOTS}\nttl = \"25h\"")),
            "cache.rules[0].ttl",
            "\"25h\" is out of range; give at most 1day",
        ),
        (
            rule(&format!("{ROBOTS}\nenabled = false\nttl = \"2days\"")),
            "cache.rules[0].ttl",
            "out of range",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\nstale_while_revalidate = \"25h\""
            )),
            "cache.rules[0].stale_while_revalidate",
            "give 0s ..= 1day",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\nstale_if_error = \"8days\""
            )),
            "cache.rules[0].stale_if_error",
            "give 0s ..= 7days",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\nstale_if_error = \"forever\""
            )),
            "cache.rules[0].stale_if_error",
            "not a duration",
        ),
        (
            rule(&format!("{ROBOTS}\nttl = \"5s\"\nenabled = \"sometimes\"")),
            "cache.rules[0].enabled",
            "expected",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\ninvalidated_by = \"openim/sendmsg\""
            )),
            "cache.rules[0].invalidated_by",
            "expected",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\ninvalidated_by = [\"openim/sendmsg\", \"nope/nope\"]"
            )),
            "cache.rules[0].invalidated_by[1]",
            "\"nope/nope\" is not in the catalogue",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\ninvalidated_by = [\"profile/portrait_get\"]"
            )),
            "cache.rules[0].invalidated_by[0]",
            "is a read; only a write can invalidate",
        ),
        (
            rule(&format!("{ROBOTS}\nttl = \"5s\"\ntll = \"5s\"")),
            "cache.rules[0].tll",
            "did you mean `ttl`?",
        ),
        (
            two_rules,
            "cache.rules[1].command",
            "already has a rule (cache.rules[0])",
        ),
        (second_rule_bad, "cache.rules[1].ttl", "out of range"),
        // [throttle]
        (
            throttle("safety_margin = 0.6"),
            "throttle.safety_margin",
            "0.6 is out of range; give 0.0 ..= 0.5",
        ),
        (
            throttle("safety_margin = -0.1"),
            "throttle.safety_margin",
            "out of range",
        ),
        (
            throttle("safety_margin = \"nan\""),
            "throttle.safety_margin",
            "out of range",
        ),
        (
            throttle("safety_margin = \"lots\""),
            "throttle.safety_margin",
            "expected",
        ),
        (throttle("burst = 1"), "throttle.burst", "out of range"),
        (
            throttle("burst = 0.2"),
            "throttle.burst",
            "0.2 is out of range; give 0.0 ..= 0.1",
        ),
        (
            throttle("default_quota = 1"),
            "throttle.default_quota",
            "out of range",
        ),
        (
            throttle("max_wait = \"61s\""),
            "throttle.max_wait",
            "give 0s ..= 1m",
        ),
        (
            throttle("max_waiters = 1000001"),
            "throttle.max_waiters",
            "give 0 ..= 1000000",
        ),
        (
            throttle("default_quota = 0"),
            "throttle.default_quota",
            "give 2 ..= 100000 calls/s",
        ),
        (
            throttle("default_quota = 100001"),
            "throttle.default_quota",
            "out of range",
        ),
        (
            throttle("backoff_base = \"0s\""),
            "throttle.backoff_base",
            "is zero",
        ),
        (
            throttle("backoff_base = \"1m\""),
            "throttle.backoff_max",
            "shorter than throttle.backoff_base (1m)",
        ),
        (
            throttle("backoff_base = \"2s\"\nbackoff_max = \"1s\""),
            "throttle.backoff_max",
            "shorter than throttle.backoff_base (2s)",
        ),
        (
            throttle("quotas = {}"),
            "throttle.quotas",
            "expected an array of tables",
        ),
        // [[throttle.quotas]]
        (
            quota("per_second = 1"),
            "throttle.quotas[0].command",
            "is required",
        ),
        (
            quota("command = \"openim/sendmsg\""),
            "throttle.quotas[0].per_second",
            "is required",
        ),
        (
            quota("command = \"openim/sendmsgs\"\nper_second = 1"),
            "throttle.quotas[0].command",
            "not in the catalogue",
        ),
        (
            quota("command = \"openim/sendmsg\"\nper_second = 0"),
            "throttle.quotas[0].per_second",
            "give 2 ..= 100000 calls/s",
        ),
        (
            quota("command = \"openim/sendmsg\"\nper_second = 100001"),
            "throttle.quotas[0].per_second",
            "out of range",
        ),
        (
            quota("command = \"openim/sendmsg\"\nper_second = 5\nper_secnod = 5"),
            "throttle.quotas[0].per_secnod",
            "did you mean `per_second`?",
        ),
        (
            two_quotas,
            "throttle.quotas[1].command",
            "already has a quota (throttle.quotas[0])",
        ),
    ];
    for (toml, key, fragment) in cases {
        assert_problem(&toml, &env(&[]), key, fragment);
    }

    // A bad override names its variable; arrays of tables cannot be overridden.
    let robots_rule = rule(&format!("{ROBOTS}\nttl = \"5s\""));
    let env_cases = [
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
    for (toml, pair, key, fragment) in env_cases {
        assert_problem(toml, &env(&[pair]), key, fragment);
    }
}

/// A wrongly typed value inside a rule or quota, or an element that is not a table, is one
/// problem, not also a "required" one.
#[test]
fn a_wrongly_typed_value_in_a_rule_is_reported_once() {
    let cases = [
        (
            rule("command = \"profile/portrait_get\"\nttl = []"),
            "cache.rules[0].ttl",
        ),
        (rule("command = 5\nttl = \"5s\""), "cache.rules[0].command"),
        (cache("rules = [[]]"), "cache.rules[0]"),
        (
            quota("command = \"openim/sendmsg\"\nper_second = \"many\""),
            "throttle.quotas[0].per_second",
        ),
    ];
    for (toml, key) in cases {
        let found = problems(&toml, &env(&[]));
        assert_eq!(found.len(), 1, "{toml}: {found:?}");
        assert_eq!(found[0].key, key, "{toml}");
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

/// Allowed but questionable settings load, with a warning under their key.
#[test]
fn questionable_settings_warn_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_file(&dir, "k", b"key");
    let key_file_and_env = format!("secret_key_file = {key_file:?}\nsecret_key_env = \"X\"");
    let upper_case = "[apps.Main]\nsdkappid = 1\nregion = \"sgp\"\n";
    let shared_key = "[apps.a]\nsdkappid = 1\nregion = \"sgp\"\n\
                      [apps.default]\nsdkappid = 2\nregion = \"sgp\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            upstream("request_timeout = \"3s\""),
            "upstream.request_timeout",
            "3 s backend",
        ),
        (
            upstream("pool_max_idle_per_host = 0"),
            "upstream.pool_max_idle_per_host",
            "keep-alive",
        ),
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
        (
            quota("command = \"im_open_login_svc/account_check\"\nper_second = 101"),
            "throttle.quotas[0].per_second",
            "above Tencent's documented 100",
        ),
    ];
    for (toml, key, fragment) in cases {
        let Loaded { warnings, .. } = load(&toml, &env(&[]));
        let warning = warnings
            .iter()
            .find(|w| w.key == key)
            .unwrap_or_else(|| panic!("no warning for {key}: {warnings:?}"));
        assert!(warning.message.contains(fragment), "{warning}");
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

/// The secret key never shows in `Debug` or `Display` of a config, of the loaded result or of
/// any error, even when it was pasted into the TOML (also on a line with a syntax error).
#[test]
fn secret_never_appears_in_output() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_file(&dir, "main.key", format!("{SECRET}\n").as_bytes());
    let file_toml = format!("{MINIMAL}secret_key_file = {key_file:?}\n");
    let loaded = load(&file_toml, &Env::default());
    let from_env = load(MINIMAL, &env(&[]));
    assert_eq!(loaded.config.apps[0].secret_key.expose(), SECRET);
    let mut outputs = vec![
        format!("{loaded:?}"),
        format!("{}", loaded.config),
        format!("{from_env:?}"),
        format!("{}", from_env.config),
        format!("{:?}", env(&[])),
    ];
    for bad in [
        format!("{MINIMAL}secret_key = \"{SECRET}\"\n"),
        format!("[server]\nsecret_key = \"{SECRET}\"\n{MINIMAL}"),
        format!("{MINIMAL}secret_key = \"{SECRET}\n"),
        format!("{MINIMAL}secret_key = {SECRET}\n"),
    ] {
        let error = Config::from_toml_str(&bad, &env(&[])).expect_err("must be refused");
        outputs.push(format!("{error}"));
        outputs.push(format!("{error:?}"));
    }
    // A real-shaped (hex) key pasted into fields that quote their value in messages.
    let hex = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
    for field in [
        "secret_key_env",
        "secret_key_file",
        "region",
        "identifier",
        "usersig_lifetime",
    ] {
        let toml = format!("[apps.main]\nsdkappid = 1\n{field} = \"{hex}\"\n");
        let error = Config::from_toml_str(&toml, &env(&[])).expect_err("must be refused");
        assert!(!error.to_string().contains(hex), "{field}: {error}");
        assert!(
            error.to_string().contains(&format!("apps.main.{field}")),
            "{error}"
        );
    }
    let overridden = env(&[("TIM_GATEWAY__APPS__MAIN__SECRET_KEY", SECRET)]);
    let error = Config::from_toml_str(MINIMAL, &overridden).expect_err("must be refused");
    outputs.push(format!("{error}"));
    for output in outputs {
        assert!(!output.contains(SECRET), "secret leaked: {output}");
        assert!(!output.contains("s3cret"), "secret prefix leaked: {output}");
    }
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

/// An extra CA file with a certificate is read; the bytes are kept for the TLS client.
#[test]
fn ca_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let path = write_file(&dir, "ca.pem", pem);
    let loaded = load(MINIMAL, &env(&[("TIM_GATEWAY__UPSTREAM__CA_FILE", &path)]));
    assert_eq!(loaded.config.upstream.ca_file, Some(PathBuf::from(&path)));
    assert_eq!(
        loaded.config.upstream.extra_ca_pem.as_deref(),
        Some(&pem[..])
    );
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
    let text = include_str!("../../config/example.toml");
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

/// `check-config`'s listing (the `Display` of a config) has a line for every key, with each
/// rule and quota under its index.
#[test]
fn display_lists_every_key() {
    let toml = format!(
        "{MINIMAL}[[cache.rules]]\ncommand = \"profile/portrait_get\"\nttl = \"2s\"\n\
         invalidated_by = [\"profile/portrait_set\"]\n\
         [[throttle.quotas]]\ncommand = \"openim/sendmsg\"\nper_second = 10\n"
    );
    let text = load(&toml, &env(&[])).config.to_string();
    for line in [
        "server.shutdown_grace = 25s",
        "upstream.max_retries = 2",
        "upstream.retry_base_delay = 100ms",
        "upstream.deadline = 15s",
        "cache.max_bytes = 67108864",
        "cache.rules[0].command = profile/portrait_get",
        "cache.rules[0].enabled = true",
        "cache.rules[0].ttl = 2s",
        "cache.rules[0].stale_while_revalidate = 0s",
        "cache.rules[0].stale_if_error = 0s",
        "cache.rules[0].invalidated_by = [profile/portrait_set]",
        "throttle.safety_margin = 0.05",
        "throttle.burst = 0.05",
        "throttle.max_wait = 2s",
        "throttle.max_waiters = 1024",
        "throttle.default_quota = 200",
        "throttle.quotas[0].command = openim/sendmsg",
        "throttle.quotas[0].per_second = 10",
        "throttle.backoff_base = 1s",
        "throttle.backoff_max = 30s",
    ] {
        assert!(
            text.contains(&format!("{line}\n")),
            "{line} missing from:\n{text}"
        );
    }
    // Every key of the plain sections has its line.
    for (section, fields) in [
        ("server", field_names::<RawServer>()),
        ("upstream", field_names::<RawUpstream>()),
        ("cache", field_names::<RawCache>()),
        ("throttle", field_names::<RawThrottle>()),
    ] {
        for key in fields {
            let has_line = text.contains(&format!("{section}.{key} = "))
                || text.contains(&format!("{section}.{key}[0]"));
            assert!(has_line, "{section}.{key} missing from:\n{text}");
        }
    }
    let empty = load(MINIMAL, &env(&[])).config.to_string();
    assert!(empty.contains("cache.rules = (none"), "{empty}");
    assert!(empty.contains("throttle.quotas = (none"), "{empty}");
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

/// The known keys come from the `Raw*` structs themselves, arrays of tables included.
#[test]
fn field_names_are_read_from_serde() {
    assert!(field_names::<RawServer>().contains(&"default_app"));
    assert!(field_names::<RawApp>().contains(&"secret_key_env"));
    assert!(!field_names::<RawApp>().contains(&"secret_key"));
    assert!(field_names::<RawCache>().contains(&"rules"));
    assert!(field_names::<RawThrottle>().contains(&"quotas"));
}

/// Two apps with one SDKAppID would each get Tencent's full quota: a problem.
#[test]
fn one_sdkappid_is_configured_once() {
    let toml = "[server]\ndefault_app = \"a\"\n[apps.a]\nsdkappid = 7\nregion = \"sgp\"\n[apps.b]\nsdkappid = 7\nregion = \"sgp\"\n";
    let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(toml, &env(&[])) else {
        panic!("a shared SDKAppID must be refused");
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "apps.b.sdkappid");
    assert!(
        problems[0].message.contains("apps.a"),
        "{}",
        problems[0].message
    );
}

/// The browser-protection and connection keys: defaults, file values, the comma-separated
/// environment form, and a token that is read but never printed.
#[test]
fn server_protection_keys() {
    let dir = tempfile::tempdir().unwrap();
    let token = write_file(&dir, "token", b"0123456789abcdef-token\n");
    let defaults = load(MINIMAL, &env(&[])).config.server;
    assert_eq!(defaults.allowed_hosts, Vec::<String>::new());
    assert_eq!(defaults.max_connections, None);
    assert_eq!(defaults.admin_token, None);
    let toml = server(&format!(
        "allowed_hosts = [\"Tim.Chat.svc\", \"*.example.com\", \"10.0.0.1\"]\n\
         max_connections = 100\nadmin_token_file = \"{token}\""
    ));
    let loaded = load(&toml, &env(&[]));
    let s = &loaded.config.server;
    assert_eq!(
        s.allowed_hosts,
        ["tim.chat.svc", "*.example.com", "10.0.0.1"]
    );
    assert_eq!(s.max_connections, Some(100));
    let admin_token = s.admin_token.as_ref().expect("token read");
    assert!(admin_token.matches(b"0123456789abcdef-token"));
    assert!(!admin_token.matches(b"0123456789abcdef-tokem"));
    let listing = loaded.config.to_string();
    assert!(!listing.contains("0123456789abcdef"), "{listing}");
    assert!(!format!("{:?}", loaded.config).contains("0123456789abcdef"));
    let from_env = load(
        MINIMAL,
        &env(&[("TIM_GATEWAY__SERVER__ALLOWED_HOSTS", "a.svc, b.svc")]),
    );
    assert_eq!(from_env.config.server.allowed_hosts, ["a.svc", "b.svc"]);
}
