//! Tests of the sandbox's handle and request path: knobs, recording, start and shutdown.

use std::time::Duration;

use super::tls::test_support::{admin_sig, code, post, sandbox, send, signed_query, APP};
use super::*;

/// Endpoints use loopback for unspecified addresses and bracket IPv6.
#[test]
fn endpoint_names_loopback() {
    let cases = [
        ("127.0.0.1:8443", "https://127.0.0.1:8443"),
        ("0.0.0.0:1", "https://127.0.0.1:1"),
        ("[::1]:2", "https://[::1]:2"),
        ("[::]:3", "https://[::1]:3"),
    ];
    for (addr, expected) in cases {
        assert_eq!(endpoint_for(addr.parse().unwrap()), expected);
    }
}

/// Skew moves the UserSig clock in milliseconds, floored to seconds.
#[test]
fn unix_now_applies_skew() {
    let now = unix_now(0);
    assert!(unix_now(10_000) >= now + 9);
    assert_eq!(unix_now(i64::MIN), 0);
}

/// An injected error answers `times` calls with its code and leaves state alone; the call
/// after that runs normally.
#[tokio::test]
async fn injected_error_answers_then_clears() {
    let (sandbox, client) = sandbox(SandboxOptions::default()).await;
    let path = format!("/v4/openim_robot_http_svc/create_robot?{}", signed_query());
    let body = r#"{"UserID":"@RBT#1"}"#;
    sandbox.inject_error("openim_robot_http_svc/create_robot", 10002, 2);
    for _ in 0..2 {
        let reply = post(&client, &sandbox, &path, body).await.unwrap();
        assert_eq!(
            std::str::from_utf8(&reply.raw).unwrap(),
            r#"{"ActionStatus":"FAIL","ErrorInfo":"injected by the sandbox","ErrorCode":10002}"#
        );
        assert!(sandbox.robots(APP).is_empty());
    }
    assert_eq!(code(&client, &sandbox, &path, body).await, 0);
    assert_eq!(sandbox.robots(APP), ["@RBT#1"]);
}

/// A dropped request reaches the client as an error without a response, is counted and
/// recorded as unanswered, and the next request succeeds.
#[tokio::test]
async fn dropped_connection_errors_then_next_request_succeeds() {
    let (sandbox, client) = sandbox(SandboxOptions::default()).await;
    let path = format!("/v4/profile/portrait_get?{}", signed_query());
    sandbox.drop_connections(1);
    assert!(post(&client, &sandbox, &path, "{}").await.is_err());
    assert_eq!(code(&client, &sandbox, &path, "{}").await, 0);
    assert_eq!(sandbox.calls("profile/portrait_get"), 2);
    let codes: Vec<i64> = sandbox
        .requests("profile/portrait_get")
        .iter()
        .map(|r| r.error_code)
        .collect();
    assert_eq!(codes, [RecordedRequest::NO_ANSWER, 0]);
}

/// Recorded requests keep the query in order and percent-decoded, plus the body and code;
/// reset_counters forgets them.
#[tokio::test]
async fn requests_are_recorded_decoded_and_reset() {
    let (sandbox, client) = sandbox(SandboxOptions::default()).await;
    let sig = admin_sig();
    let path = format!(
        "/v4/profile/portrait_get?sdkappid={APP}&identifier=%61dministrator&usersig={sig}&random=7&contenttype=json&note=a+b%21"
    );
    assert_eq!(
        code(&client, &sandbox, &path, r#"{"To_Account":["x"]}"#).await,
        0
    );
    let recorded = sandbox.requests("profile/portrait_get");
    assert_eq!(recorded.len(), 1);
    let request = &recorded[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v4/profile/portrait_get");
    let app = APP.to_string();
    let expected = [
        ("sdkappid", app.as_str()),
        ("identifier", "administrator"),
        ("usersig", &sig),
        ("random", "7"),
        ("contenttype", "json"),
        ("note", "a b!"),
    ];
    let query: Vec<(&str, &str)> = request
        .query
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(query, expected);
    assert_eq!(request.body, r#"{"To_Account":["x"]}"#);
    assert_eq!(request.error_code, 0);

    sandbox.reset_counters();
    assert_eq!(sandbox.total_calls(), 0);
    assert_eq!(sandbox.calls("profile/portrait_get"), 0);
    assert_eq!(sandbox.max_calls_in_window("profile/portrait_get"), 0);
    assert!(sandbox.requests("profile/portrait_get").is_empty());
}

/// The latency knob delays the answer by at least the set duration.
#[tokio::test]
async fn latency_delays_every_answer() {
    let (sandbox, client) = sandbox(SandboxOptions::default()).await;
    let path = format!("/v4/profile/portrait_get?{}", signed_query());
    sandbox.set_latency(Duration::from_millis(150));
    let started = std::time::Instant::now();
    assert_eq!(code(&client, &sandbox, &path, "{}").await, 0);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

/// Quotas and lockout thresholds above their `MAX_…` are refused at start, since the
/// windows and failure lists they size must stay bounded (issue 7, F10).
#[tokio::test]
async fn start_refuses_quotas_beyond_the_bounds() {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let quota = SandboxOptions {
        quota_per_second: Some(MAX_QUOTA_PER_SECOND + 1),
        ..SandboxOptions::default()
    };
    let lockout = SandboxOptions {
        lockout_after_failures: MAX_LOCKOUT_AFTER_FAILURES + 1,
        ..SandboxOptions::default()
    };
    for options in [quota, lockout] {
        let err = Sandbox::start(loopback, options).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
    let largest = SandboxOptions {
        quota_per_second: Some(MAX_QUOTA_PER_SECOND),
        lockout_after_failures: MAX_LOCKOUT_AFTER_FAILURES,
        ..SandboxOptions::default()
    };
    Sandbox::start(loopback, largest).await.expect("the maxima");
}

/// After shutdown the listener is closed and a kept-alive client gets an error.
#[tokio::test]
async fn shutdown_closes_listener_and_connections() {
    let (sandbox, client) = sandbox(SandboxOptions::default()).await;
    let path = format!("/v4/profile/portrait_get?{}", signed_query());
    assert_eq!(code(&client, &sandbox, &path, "{}").await, 0);
    let endpoint = sandbox.endpoint();
    sandbox.shutdown().await;
    let uri = format!("{endpoint}{path}");
    let after = send(&client, hyper::Method::POST, &uri, "{}").await;
    assert!(after.is_err());
}

/// An in-process sandbox that was shut down refuses later calls as a closed port would, and
/// counts none of them.
#[tokio::test]
async fn in_process_shutdown_refuses_later_calls() {
    let sandbox = Sandbox::in_process(SandboxOptions::default()).unwrap();
    let upstream = sandbox.upstream();
    let request = || {
        Request::post(format!(
            "https://sandbox.invalid/v4/profile/portrait_get?{}",
            signed_query()
        ))
        .body(Bytes::from_static(b"{}"))
        .unwrap()
    };
    assert!(upstream.call(request()).await.is_ok());
    sandbox.shutdown().await;
    assert!(matches!(
        upstream.call(request()).await,
        Err(UpstreamError::Connect(_))
    ));
}
