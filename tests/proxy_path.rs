//! The request path, with the handler in process in front of the in-process sandbox
//! (`tests/support/inproc.rs`): signing, relaying, refusals, UserSig renewal, timeouts.
//! Timeouts are asserted at their exact instant under tokio's paused time. What only real
//! sockets show (the signed query over TLS, dropped connections) is in `tests/e2e.rs`.

mod support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use support::inproc::{self, request};
use support::*;
use tim_gateway::signer::unix_now;
use tim_gateway::usersig;
use tokio::time::Instant;

/// `random` is fresh for every call (20 draws from 2^32 collide with probability < 1e-7).
#[tokio::test(start_paused = true)]
async fn random_differs_per_call() {
    let gw = inproc::start(Extra::default());
    for _ in 0..20 {
        assert_eq!(gw.post(ACCOUNT_CHECK, CHECK_BODY).await.error_code(), 0);
    }
    let randoms: HashSet<String> = gw
        .sandbox
        .requests(ACCOUNT_CHECK)
        .iter()
        .map(|r| {
            let (_, random) = r.query.iter().find(|(k, _)| k == "random").unwrap();
            random.clone()
        })
        .collect();
    assert_eq!(randoms.len(), 20);
}

/// A robot created through the gateway shows up in get_all_robots through the gateway (by
/// the default app and by name, POST or plain GET), and Tencent's answer reaches the client
/// unchanged.
#[tokio::test(start_paused = true)]
async fn created_robot_shows_up_in_get_all_robots() {
    let gw = inproc::start(Extra::default());
    let created = gw
        .post(CREATE_ROBOT, r#"{"UserID":"@RBT#001","Nick":"first"}"#)
        .await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(
        created.json,
        serde_json::json!({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})
    );
    let listed = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!(
        listed.json["Robot_Account"],
        serde_json::json!(["@RBT#001"])
    );
    assert_eq!(gw.sandbox.robots(SDKAPPID), ["@RBT#001"]);

    let named_app = gw
        .call(Method::POST, &format!("/apps/main/v4/{GET_ALL_ROBOTS}"), "")
        .await;
    assert_eq!(
        named_app.json["Robot_Account"],
        serde_json::json!(["@RBT#001"])
    );
    // A plain GET with no body is the same read (PRODUCT.md), sent upstream as `{}`.
    gw.proxy.purge(None, None).unwrap();
    let get = gw
        .call(Method::GET, &format!("/v4/{GET_ALL_ROBOTS}"), "")
        .await;
    assert_eq!(get.json["Robot_Account"], serde_json::json!(["@RBT#001"]));
    let last = gw.sandbox.requests(GET_ALL_ROBOTS).pop().unwrap();
    assert_eq!(last.body.as_ref(), b"{}");
}

/// Tencent's own errors (here a bad robot id, 10004) are relayed as they are.
#[tokio::test(start_paused = true)]
async fn tencent_errors_are_relayed_unchanged() {
    let gw = inproc::start(Extra::default());
    let answer = gw.post(CREATE_ROBOT, r#"{"UserID":"no-prefix"}"#).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["ActionStatus"], "FAIL");
    assert_eq!(answer.error_code(), 10004);
    assert_eq!(gw.sandbox.calls(CREATE_ROBOT), 1);
}

/// Each malformed request gets its HTTP status and gateway code in Tencent's envelope, and
/// none reaches the upstream.
#[tokio::test(start_paused = true)]
async fn bad_requests_are_refused_in_the_tencent_envelope() {
    let gw = inproc::start(Extra {
        server: "max_body_bytes = 1024",
        ..Extra::default()
    });
    let big = format!(r#"{{"UserID":"@RBT#x","Nick":"{}"}}"#, "n".repeat(2000));
    let robots = "/v4/openim_robot_http_svc";
    let cases: &[(Method, &str, &str, StatusCode, i64)] = &[
        (
            Method::POST,
            "/v4/openim_robot_http_svc/no_such_command",
            "{}",
            StatusCode::NOT_FOUND,
            1_904_003,
        ),
        (Method::POST, robots, "{}", StatusCode::NOT_FOUND, 1_904_001),
        (Method::POST, "/", "{}", StatusCode::NOT_FOUND, 1_904_001),
        (
            Method::POST,
            "/apps/nope/v4/openim_robot_http_svc/get_all_robots",
            "{}",
            StatusCode::NOT_FOUND,
            1_904_002,
        ),
        (
            Method::PUT,
            "/v4/openim_robot_http_svc/get_all_robots",
            "{}",
            StatusCode::METHOD_NOT_ALLOWED,
            1_904_004,
        ),
        (
            Method::GET,
            "/v4/openim_robot_http_svc/create_robot",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            1_904_004,
        ),
        (
            Method::POST,
            "/v4/openim_robot_http_svc/create_robot",
            "{not json",
            StatusCode::BAD_REQUEST,
            1_904_005,
        ),
        (
            Method::POST,
            "/v4/openim_robot_http_svc/create_robot",
            "[1,2]",
            StatusCode::BAD_REQUEST,
            1_904_006,
        ),
        (
            Method::POST,
            "/v4/openim_robot_http_svc/create_robot",
            "",
            StatusCode::BAD_REQUEST,
            1_904_007,
        ),
        (
            Method::POST,
            "/v4/openim_robot_http_svc/create_robot",
            &big,
            StatusCode::PAYLOAD_TOO_LARGE,
            1_904_008,
        ),
    ];
    for (method, path, body, status, code) in cases {
        let answer = gw.call(method.clone(), path, body).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (*status, *code),
            "{method} {path}"
        );
        assert_eq!(answer.json["ActionStatus"], "FAIL");
        assert!(answer.json["ErrorInfo"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        assert_eq!(answer.headers["content-type"], "application/json");
    }
    let not_allowed = gw
        .call(Method::DELETE, &format!("/v4/{GET_ALL_ROBOTS}"), "")
        .await;
    assert_eq!(not_allowed.headers["allow"], "POST, GET, HEAD");
    assert_eq!(gw.sandbox.total_calls(), 0);
}

/// A UserSig the upstream considers expired is re-minted and the call retried once,
/// transparently. The sandbox expires every UserSig minted before the second after the
/// first one's; real time, because a UserSig counts whole wall-clock seconds and a
/// replacement minted in the same second would be the same string: the test polls for the
/// next second and asserts no timing bound.
#[tokio::test]
async fn expired_usersig_is_reminted_transparently() {
    let gw = inproc::start(Extra {
        app: r#"usersig_lifetime = "1h""#,
        ..Extra::default()
    });
    assert_eq!(gw.post(ACCOUNT_CHECK, CHECK_BODY).await.error_code(), 0);
    let first = &gw.sandbox.requests(ACCOUNT_CHECK)[0];
    let (_, sent) = first.query.iter().find(|(k, _)| k == "usersig").unwrap();
    let minted = usersig::decode(sent).unwrap().time;
    eventually("the wall clock's next second", || unix_now() > minted).await;
    gw.sandbox.expire_usersigs_minted_before(minted + 1);

    let answer = gw.post(ACCOUNT_CHECK, CHECK_BODY).await;
    assert_eq!(answer.error_code(), 0, "{}", answer.json);
    let codes: Vec<i64> = gw
        .sandbox
        .requests(ACCOUNT_CHECK)
        .iter()
        .map(|r| r.error_code)
        .collect();
    assert_eq!(codes, [0, 70001, 0]);
    assert_eq!(gw.proxy.apps()[0].signer.mints(), 2);
}

/// A revoked UserSig (70052) is re-minted and the call retried exactly once; a second
/// rejection in a row is passed to the client instead of looping.
#[tokio::test(start_paused = true)]
async fn revoked_usersig_is_retried_once_not_in_a_loop() {
    let gw = inproc::start(Extra::default());
    gw.sandbox.inject_error(CREATE_ROBOT, 70052, 1);
    let answer = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#retry"}"#).await;
    assert_eq!(answer.error_code(), 0);
    assert_eq!(gw.sandbox.calls(CREATE_ROBOT), 2);

    gw.sandbox.inject_error(CREATE_ROBOT, 70001, 5);
    let answer = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#retry"}"#).await;
    assert_eq!(answer.error_code(), 70001);
    assert_eq!(gw.sandbox.calls(CREATE_ROBOT), 4);
    assert_eq!(gw.proxy.apps()[0].signer.mints(), 3);
}

/// With a wrong secret key, Tencent's 70009 reaches the client after exactly one upstream
/// call: no retry loop that would lock the app out (70050).
#[tokio::test(start_paused = true)]
async fn wrong_secret_key_passes_70009_through_without_retry() {
    let gw = inproc::start(Extra {
        key: "not-the-right-key",
        ..Extra::default()
    });
    // The alerts' series exists from the start at 0, so the first 70009 is an increase.
    let signal = r#"tim_gateway_tencent_signals_total{app="main",code="70009"}"#;
    let value = |text: String| {
        text.lines().find_map(|line| {
            line.strip_prefix(signal)?
                .strip_prefix(' ')?
                .parse::<u64>()
                .ok()
        })
    };
    assert_eq!(value(gw.metrics()), Some(0));
    let answer = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.error_code(), 70009);
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 1);
    assert_eq!(value(gw.metrics()), Some(1));
}

/// Commands outside the catalogue reach Tencent only when the config allows pass-through.
#[tokio::test(start_paused = true)]
async fn unknown_commands_pass_through_when_allowed() {
    let gw = inproc::start(Extra {
        server: "allow_unknown_commands = true",
        ..Extra::default()
    });
    let answer = gw.post("openim/some_future_api", "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.error_code(),
        60009,
        "the sandbox's answer for a command it lacks"
    );
    assert_eq!(gw.sandbox.calls("openim/some_future_api"), 1);
}

/// A slow upstream is cut off at exactly `request_timeout` with a 504 envelope, and a
/// timed-out read is not retried (that would multiply the wait).
#[tokio::test(start_paused = true)]
async fn slow_upstream_times_out_with_504_at_the_request_timeout() {
    let gw = inproc::start(Extra {
        upstream: r#"request_timeout = "300ms""#,
        ..Extra::default()
    });
    gw.sandbox.set_latency(Duration::from_secs(3));
    let started = Instant::now();
    let answer = gw.post(ACCOUNT_CHECK, CHECK_BODY).await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::GATEWAY_TIMEOUT, 1_905_002)
    );
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(gw.sandbox.calls(ACCOUNT_CHECK), 1);
}

/// A body that sends its first bytes and then nothing more, ever.
struct Trickle(Option<Bytes>);

impl Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
            None => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(100)
    }
}

/// A client that never finishes sending its body gets 408 in the envelope at exactly the
/// request deadline, instead of holding a task forever.
#[tokio::test(start_paused = true)]
async fn trickling_body_times_out_with_408_at_the_deadline() {
    let gw = inproc::start(Extra {
        upstream: "request_timeout = \"1s\"\ndeadline = \"1s\"",
        ..Extra::default()
    });
    let trickle = request(Method::POST, &format!("/v4/{CREATE_ROBOT}"))
        .header(http::header::CONTENT_LENGTH, 100)
        .body(Trickle(Some(Bytes::from_static(b"{\"UserID\":"))))
        .unwrap();
    let started = Instant::now();
    let answer = gw.send(trickle).await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::REQUEST_TIMEOUT, 1_904_012)
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(gw.sandbox.total_calls(), 0);
}
