//! `[upstream]`: timeouts, the connection pool, the extra CA, retries and the deadline.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

/// Absent `[upstream]` keys take the documented defaults.
#[test]
fn upstream_keys_take_their_documented_defaults() {
    let u = load(MINIMAL, &env(&[])).config.upstream;
    assert_eq!(u.connect_timeout, Duration::from_secs(5));
    assert_eq!(u.request_timeout, Duration::from_secs(10));
    assert_eq!(u.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(u.pool_max_idle_per_host, 32);
    assert_eq!((u.ca_file, u.extra_ca_pem), (None, None));
    assert_eq!(u.max_retries, 2);
    assert_eq!(u.retry_base_delay, Duration::from_millis(100));
    assert_eq!(u.deadline, Duration::from_secs(15));
}

/// Every kind of `[upstream]` problem is reported under its own key with a message that says
/// what is wrong.
#[test]
fn each_upstream_problem_is_reported_under_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = write_file(&dir, "not.pem", b"hello");
    let missing = dir.path().join("missing").to_str().unwrap().to_owned();
    let cases: Vec<(String, &str, &str)> = vec![
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
    ];
    for (toml, key, fragment) in cases {
        assert_problem(&toml, &env(&[]), key, fragment);
    }
}

/// A request timeout Tencent's 3 s backend timeout would cut, and a pool that keeps nothing,
/// load with a warning under their key.
#[test]
fn questionable_upstream_settings_warn_without_failing() {
    let cases = [
        (
            "request_timeout = \"3s\"",
            "upstream.request_timeout",
            "3 s backend",
        ),
        (
            "pool_max_idle_per_host = 0",
            "upstream.pool_max_idle_per_host",
            "keep-alive",
        ),
    ];
    for (lines, key, fragment) in cases {
        assert_warning(&upstream(lines), key, fragment);
    }
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
