//! `[throttle]` and its `[[throttle.quotas]]`.

use std::time::Duration;

use super::*;
use crate::config::ThrottleConfig;

/// Without `[throttle]`, every key takes its documented default.
#[test]
fn throttle_keys_take_their_documented_defaults() {
    let config = load(MINIMAL, &env(&[])).config;
    let expected = ThrottleConfig {
        safety_margin: 0.05,
        burst: 0.05,
        max_wait: Duration::from_secs(2),
        max_waiters: 1024,
        default_quota: 200,
        quotas: vec![],
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(30),
    };
    assert_eq!(config.throttle, expected);
}

/// Every key of `[throttle]` and `[[throttle.quotas]]` is read, quotas come out in file order,
/// fractions accept integers, and zero turns off what may be off.
#[test]
fn quotas_are_read_in_file_order() {
    let toml = format!(
        r#"{MINIMAL}
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

/// Every problem of `[throttle]` and its quotas is reported under its key path, quotas with
/// their index.
#[test]
fn each_throttle_problem_is_reported_under_its_key() {
    let two_quotas = format!(
        "{MINIMAL}[[throttle.quotas]]\ncommand = \"openim/sendmsg\"\nper_second = 3\n\
         [[throttle.quotas]]\ncommand = \"openim/sendmsg\"\nper_second = 2\n"
    );
    let cases: Vec<(String, &str, &str)> = vec![
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
}

/// A wrongly typed quota is one problem, not also a "required" one.
#[test]
fn a_wrongly_typed_quota_is_reported_once() {
    let toml = quota("command = \"openim/sendmsg\"\nper_second = \"many\"");
    let found = problems(&toml, &env(&[]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "throttle.quotas[0].per_second");
}

/// A quota above Tencent's documented one loads, with a warning under its key.
#[test]
fn a_quota_above_tencents_warns_without_failing() {
    assert_warning(
        &quota("command = \"im_open_login_svc/account_check\"\nper_second = 101"),
        "throttle.quotas[0].per_second",
        "above Tencent's documented 100",
    );
}
