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
    assert_eq!(
        u.proxy, None,
        "no proxy without upstream.proxy or HTTPS_PROXY"
    );
}

/// The egress proxy: `upstream.proxy`, else `HTTPS_PROXY`/`https_proxy` with `NO_PROXY`; an
/// empty `upstream.proxy` turns the environment's off; only `http://` URLs; credentials are
/// never shown.
#[test]
fn the_egress_proxy_comes_from_the_file_or_the_environment() {
    let from_env = load(
        MINIMAL,
        &env(&[
            ("HTTPS_PROXY", "http://gw:s3cret@proxy.internal:3128"),
            ("NO_PROXY", ".svc,10.0.0.0/8"),
        ]),
    )
    .config;
    let proxy = from_env.upstream.proxy.clone().expect("from HTTPS_PROXY");
    assert_eq!(proxy.url, "http://gw:s3cret@proxy.internal:3128");
    assert_eq!(
        (proxy.source.as_str(), proxy.no_proxy.as_str()),
        ("HTTPS_PROXY", ".svc,10.0.0.0/8")
    );
    assert_eq!(proxy.shown(), "http://***@proxy.internal:3128");
    let printed = format!("{from_env}");
    assert!(
        printed.contains("upstream.proxy = http://***@proxy.internal:3128 (from HTTPS_PROXY)"),
        "{printed}"
    );
    assert!(!printed.contains("s3cret") && !format!("{from_env:?}").contains("s3cret"));

    let configured =
        format!("{MINIMAL}[upstream]\nproxy = \"http://egress:8080\"\nno_proxy = \"localhost\"\n");
    let proxy = load(&configured, &env(&[("https_proxy", "http://other:1")]))
        .config
        .upstream
        .proxy
        .unwrap();
    assert_eq!(
        (
            proxy.url.as_str(),
            proxy.source.as_str(),
            proxy.no_proxy.as_str()
        ),
        ("http://egress:8080", "upstream.proxy", "localhost")
    );

    let off = format!("{MINIMAL}[upstream]\nproxy = \"\"\n");
    assert_eq!(
        load(&off, &env(&[("HTTPS_PROXY", "http://p:1")]))
            .config
            .upstream
            .proxy,
        None
    );

    assert_problem(
        &format!("{MINIMAL}[upstream]\nproxy = \"https://u:pw@p:443\"\n"),
        &env(&[]),
        "upstream.proxy",
        "https://***@p:443: only an http:// proxy is supported",
    );
    assert_problem(
        MINIMAL,
        &env(&[("HTTPS_PROXY", "proxy.internal:3128")]),
        "upstream.proxy (from HTTPS_PROXY)",
        "is not a proxy URL",
    );
    // A URL without a scheme is refused without quoting its credentials.
    let found = problems(
        MINIMAL,
        &env(&[("HTTPS_PROXY", "gw:s3cret@proxy.internal:3128")]),
    );
    let problem = found
        .iter()
        .find(|p| p.key == "upstream.proxy (from HTTPS_PROXY)")
        .expect("refused");
    assert_eq!(
        problem.message,
        "***@proxy.internal:3128 is not a proxy URL such as http://proxy.internal:3128"
    );
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
