//! End to end through real sockets: client → gateway → sandbox over TLS.

mod support;

use tim_gateway::signer::unix_now;

use std::collections::HashSet;
use std::time::Duration;

use http::{Method, StatusCode};
use support::*;
use tim_gateway::usersig::{self, SecretKey};

/// The upstream sees exactly the five parameters with the gateway's values, whatever the
/// client put in its own query string, and the UserSig it receives verifies.
#[tokio::test]
async fn upstream_query_has_exactly_the_five_signed_parameters() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    let answer = call(
        gw.addr(),
        Method::POST,
        "/v4/openim_robot_http_svc/get_all_robots?sdkappid=1&identifier=mallory&usersig=forged&random=7&contenttype=xml&extra=1",
        "{}",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.error_code(), 0);

    let requests = sandbox.requests(GET_ALL_ROBOTS);
    assert_eq!(requests.len(), 1);
    let query = &requests[0].query;
    let names: Vec<&str> = query.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["sdkappid", "identifier", "usersig", "random", "contenttype"]
    );
    let value = |name: &str| &query.iter().find(|(k, _)| k == name).unwrap().1;
    assert_eq!(value("sdkappid"), &SDKAPPID.to_string());
    assert_eq!(value("identifier"), ADMIN);
    assert_eq!(value("contenttype"), "json");
    assert!(value("random").parse::<u32>().is_ok());
    let decoded = usersig::verify(
        &SecretKey::new(KEY),
        value("usersig"),
        SDKAPPID,
        ADMIN,
        unix_now(),
    )
    .expect("the UserSig the upstream received verifies");
    assert_eq!(decoded.expire, 86_400, "default lifetime is 24 h");
    assert_eq!(requests[0].body.as_ref(), b"{}");
}

/// `random` is fresh for every call (20 draws from 2^32 collide with probability < 1e-7).
#[tokio::test]
async fn random_differs_per_call() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    for _ in 0..20 {
        assert_eq!(
            post(gw.addr(), ACCOUNT_CHECK, CHECK_BODY)
                .await
                .error_code(),
            0
        );
    }
    let randoms: HashSet<String> = sandbox
        .requests(ACCOUNT_CHECK)
        .iter()
        .map(|r| {
            r.query
                .iter()
                .find(|(k, _)| k == "random")
                .unwrap()
                .1
                .clone()
        })
        .collect();
    assert_eq!(randoms.len(), 20);
}

/// A robot created through the gateway shows up in get_all_robots through the gateway, and
/// Tencent's answer reaches the client unchanged.
#[tokio::test]
async fn created_robot_shows_up_in_get_all_robots() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    let created = post(
        gw.addr(),
        CREATE_ROBOT,
        r#"{"UserID":"@RBT#001","Nick":"first"}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(
        created.json,
        serde_json::json!({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})
    );
    let listed = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(
        listed.json["Robot_Account"],
        serde_json::json!(["@RBT#001"])
    );
    assert_eq!(sandbox.robots(SDKAPPID), ["@RBT#001"]);

    let named_app = call(
        gw.addr(),
        Method::POST,
        "/apps/main/v4/openim_robot_http_svc/get_all_robots",
        "",
    )
    .await;
    assert_eq!(
        named_app.json["Robot_Account"],
        serde_json::json!(["@RBT#001"])
    );
    // A plain GET with no body is the same read (PRODUCT.md).
    let get = call(
        gw.addr(),
        Method::GET,
        "/v4/openim_robot_http_svc/get_all_robots",
        "",
    )
    .await;
    assert_eq!(get.json["Robot_Account"], serde_json::json!(["@RBT#001"]));
    assert_eq!(
        sandbox
            .requests(GET_ALL_ROBOTS)
            .last()
            .unwrap()
            .body
            .as_ref(),
        b"{}"
    );
}

/// Tencent's own errors (here a bad robot id, 10004) are relayed as they are.
#[tokio::test]
async fn tencent_errors_are_relayed_unchanged() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    let answer = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"no-prefix"}"#).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["ActionStatus"], "FAIL");
    assert_eq!(answer.error_code(), 10004);
    assert_eq!(sandbox.calls(CREATE_ROBOT), 1);
}

/// Each malformed request gets its HTTP status and gateway code in Tencent's envelope, and
/// none reaches the upstream.
#[tokio::test]
async fn bad_requests_are_refused_in_the_tencent_envelope() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            server: "max_body_bytes = 1024",
            ..Extra::default()
        },
    )
    .await;
    let big = format!(r#"{{"UserID":"@RBT#x","Nick":"{}"}}"#, "n".repeat(2000));
    let cases: &[(Method, &str, &str, StatusCode, i64)] = &[
        (
            Method::POST,
            "/v4/openim_robot_http_svc/no_such_command",
            "{}",
            StatusCode::NOT_FOUND,
            1_904_003,
        ),
        (
            Method::POST,
            "/v4/openim_robot_http_svc",
            "{}",
            StatusCode::NOT_FOUND,
            1_904_001,
        ),
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
        let answer = call(gw.addr(), method.clone(), path, body).await;
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
    let not_allowed = call(
        gw.addr(),
        Method::DELETE,
        "/v4/openim_robot_http_svc/get_all_robots",
        "",
    )
    .await;
    assert_eq!(not_allowed.headers["allow"], "POST, GET, HEAD");
    assert_eq!(sandbox.total_calls(), 0);
}

/// A UserSig the upstream considers expired is re-minted and the call retried once,
/// transparently. The sandbox's clock runs `lifetime - 0.9 s` ahead: a UserSig minted in an
/// earlier second counts as expired, one minted in the current second does not (margin:
/// the retry must reach the sandbox within 0.9 s of the re-mint; it takes milliseconds).
#[tokio::test]
async fn expired_usersig_is_reminted_transparently() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            app: r#"usersig_lifetime = "1h""#,
            ..Extra::default()
        },
    )
    .await;
    assert_eq!(
        post(gw.addr(), ACCOUNT_CHECK, CHECK_BODY)
            .await
            .error_code(),
        0
    );
    // Let the startup UserSig's second pass (plus the 0.9 s of skew below, with margin).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    sandbox.set_clock_skew(3_600_000 - 900);

    let answer = post(gw.addr(), ACCOUNT_CHECK, CHECK_BODY).await;
    assert_eq!(answer.error_code(), 0, "{}", answer.json);
    let codes: Vec<i64> = sandbox
        .requests(ACCOUNT_CHECK)
        .iter()
        .map(|r| r.error_code)
        .collect();
    assert_eq!(codes, [0, 70001, 0]);
    assert_eq!(gw.gateway.proxy().apps()[0].signer.mints(), 2);
}

/// A revoked UserSig (70052) is re-minted and the call retried exactly once; a second
/// rejection in a row is passed to the client instead of looping.
#[tokio::test]
async fn revoked_usersig_is_retried_once_not_in_a_loop() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    sandbox.inject_error(CREATE_ROBOT, 70052, 1);
    let answer = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#retry"}"#).await;
    assert_eq!(answer.error_code(), 0);
    assert_eq!(sandbox.calls(CREATE_ROBOT), 2);

    sandbox.inject_error(CREATE_ROBOT, 70001, 5);
    let answer = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#retry"}"#).await;
    assert_eq!(answer.error_code(), 70001);
    assert_eq!(sandbox.calls(CREATE_ROBOT), 4);
    assert_eq!(gw.gateway.proxy().apps()[0].signer.mints(), 3);
}

/// With a wrong secret key, Tencent's 70009 reaches the client after exactly one upstream
/// call: no retry loop that would lock the app out (70050).
#[tokio::test]
async fn wrong_secret_key_passes_70009_through_without_retry() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            key: "not-the-right-key",
            ..Extra::default()
        },
    )
    .await;
    let answer = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.error_code(), 70009);
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 1);
}

/// Commands outside the catalogue reach Tencent only when the config allows pass-through.
#[tokio::test]
async fn unknown_commands_pass_through_when_allowed() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            server: "allow_unknown_commands = true",
            ..Extra::default()
        },
    )
    .await;
    let answer = post(gw.addr(), "openim/admin_getroammsg", "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.error_code(),
        60009,
        "the sandbox's answer for a command it lacks"
    );
    assert_eq!(sandbox.calls("openim/admin_getroammsg"), 1);
}

/// Upstream failures become gateway envelopes: a dropped connection 502, a slow upstream 504,
/// an upstream that is gone 502 — each promptly, none hanging.
#[tokio::test]
async fn upstream_failures_become_gateway_errors() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;

    sandbox.drop_connections(1);
    let dropped = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#d"}"#).await;
    assert_eq!(
        (dropped.status, dropped.error_code()),
        (StatusCode::BAD_GATEWAY, 1_905_003)
    );
    assert_eq!(
        sandbox.calls(CREATE_ROBOT),
        1,
        "a write that may have arrived is not retried"
    );

    sandbox.shutdown().await;
    let gone = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(
        (gone.status, gone.error_code()),
        (StatusCode::BAD_GATEWAY, 1_905_001)
    );
}

/// A slow upstream is cut off at `request_timeout` with a 504 envelope, and a timed-out
/// read is not retried (that would multiply the wait).
#[tokio::test]
async fn slow_upstream_times_out_with_504() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            upstream: r#"request_timeout = "300ms""#,
            ..Extra::default()
        },
    )
    .await;
    sandbox.set_latency(Duration::from_secs(3));
    let answer = post(gw.addr(), ACCOUNT_CHECK, CHECK_BODY).await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::GATEWAY_TIMEOUT, 1_905_002)
    );
    assert_eq!(sandbox.calls(ACCOUNT_CHECK), 1);
}

/// A client that never finishes sending its body gets 408 in the envelope when the request
/// deadline passes, instead of holding a task forever (deadline 1 s, read after at most 10 s).
#[tokio::test]
async fn trickling_body_times_out_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sandbox = start_sandbox().await;
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            upstream: "request_timeout = \"1s\"\ndeadline = \"1s\"",
            ..Extra::default()
        },
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    stream
        .write_all(b"POST /v4/openim_robot_http_svc/create_robot HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n{\"UserID\":")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") || !answer.ends_with(b"}") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "connection closed without an answer");
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await
    .expect("an answer within 10 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"ErrorCode\":1904012"), "{text}");
    assert_eq!(sandbox.total_calls(), 0);
}
