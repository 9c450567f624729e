//! Hostile input against the real binary (issue 7): the process survives and answers each
//! bad input with its own error in Tencent's envelope.

mod support;

use http::{Method, StatusCode};
use support::process::*;
use support::*;

/// A body nested `depth` levels deep: `{"a":[[…]]}`.
fn nested(depth: usize) -> Vec<u8> {
    let mut body = br#"{"a":"#.to_vec();
    body.extend(std::iter::repeat_n(b'[', depth - 1));
    body.extend(std::iter::repeat_n(b']', depth - 1));
    body.push(b'}');
    body
}

/// Reproduces issue 7, F1: a 7,000-deep body to a cached read aborted the whole process with
/// a stack overflow. Now it gets 400 / 1904013, deep bodies within the limit pass, and the process goes
/// on answering.
#[tokio::test]
async fn deeply_nested_body_is_refused_and_the_process_lives() {
    let sandbox = start_sandbox().await;
    let served = serve(&sandbox, KEY);
    let path = format!("/v4/{GET_ALL_ROBOTS}");
    for command in [GET_ALL_ROBOTS, CREATE_ROBOT] {
        let answer = call(
            served.addr,
            Method::POST,
            &format!("/v4/{command}"),
            nested(7_000),
        )
        .await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (StatusCode::BAD_REQUEST, 1_904_013),
            "{command}"
        );
        assert_eq!(
            answer.json["ErrorInfo"],
            "the request body is nested deeper than 128 levels"
        );
    }
    // A deep body within the limit is relayed (the exact 128/129 boundary is a unit test in
    // `body`; the sandbox parses with serde_json, whose own limit is 128 containers).
    let answer = call(served.addr, Method::POST, &path, nested(100)).await;
    assert_eq!((answer.status, answer.error_code()), (StatusCode::OK, 0));
    let answer = post(served.addr, GET_ALL_ROBOTS, "{}").await;
    assert_eq!((answer.status, answer.error_code()), (StatusCode::OK, 0));
    assert_eq!(sandbox.total_calls(), 2);
}

/// Reproduces issue 7, F8: invalid UTF-8 and a lone surrogate escape were forwarded for
/// writes and refused for cached reads. Now every command refuses them, with 400 / 1904005,
/// and nothing reaches Tencent.
#[tokio::test]
async fn one_body_gets_one_verdict_for_every_command() {
    let sandbox = start_sandbox().await;
    let served = serve(&sandbox, KEY);
    let bodies: [(&[u8], &str); 3] = [
        (b"{\"UserID\":\"@RBT#\xff\"}", "invalid UTF-8 at byte 16"),
        (
            br#"{"UserID":"@RBT#\ud800"}"#,
            "lone surrogate escape at byte 16",
        ),
        (
            br#"{"UserID":"@RBT#\udc00\ud800"}"#,
            "lone surrogate escape at byte 16",
        ),
    ];
    for command in [GET_ALL_ROBOTS, CREATE_ROBOT, ACCOUNT_CHECK] {
        for (body, reason) in bodies {
            let answer = call(served.addr, Method::POST, &format!("/v4/{command}"), body).await;
            assert_eq!(
                (answer.status, answer.error_code()),
                (StatusCode::BAD_REQUEST, 1_904_005),
                "{command} {reason}"
            );
            assert_eq!(
                answer.json["ErrorInfo"],
                format!("the request body is not valid JSON: {reason}")
            );
        }
    }
    assert_eq!(sandbox.total_calls(), 0);
}
