//! The quota throttle and Tencent's back-off signals, end to end against the sandbox.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;
use tim_gateway::sandbox::{SandboxApp, SandboxOptions};
use tim_gateway::usersig::SecretKey;
use tokio::time::Instant;

/// The quota used in the load test: low enough that a debug build on 2 cores offers 5× of it
/// comfortably, with the sandbox enforcing the same number as Tencent would.
const QUOTA: u32 = 50;

/// Uncached traffic offered at 5× the quota for 3 s: the sandbox never sees `QUOTA` calls in
/// any sliding second (and never answers 60007), its average rate is at least 90% of the
/// configured budget, and every client gets a real answer or a 429 — none hangs, none 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_stays_under_the_quota_and_uses_it() {
    let sandbox = start_sandbox_with(SandboxOptions {
        apps: vec![SandboxApp {
            sdkappid: SDKAPPID,
            key: SecretKey::new(KEY),
            admins: vec![ADMIN.to_owned()],
        }],
        quota_per_second: QUOTA,
        ..SandboxOptions::default()
    })
    .await;
    let tail =
        format!("[[throttle.quotas]]\ncommand = \"{ACCOUNT_CHECK}\"\nper_second = {QUOTA}\n");
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            tail: &tail,
            ..Extra::default()
        },
    )
    .await;
    // Budget = floor(50 × 0.95) = 47 per second; burst 2, sustained rate 45/s.
    let budget = 47.0;

    let client = client();
    let offered_rate = 5 * QUOTA; // requests per second
    let interval = Duration::from_secs(1) / offered_rate;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut next = started;
    while next < started + Duration::from_secs(3) {
        tokio::time::sleep_until(next).await;
        let (client, addr) = (client.clone(), gw.addr());
        tasks.push(tokio::spawn(async move {
            // No request may hang: the gateway's max_wait is 2 s, so 10 s is a generous cap.
            tokio::time::timeout(
                Duration::from_secs(10),
                call_with(
                    &client,
                    addr,
                    http::Method::POST,
                    &format!("/v4/{ACCOUNT_CHECK}"),
                    CHECK_BODY,
                ),
            )
            .await
            .expect("the gateway answered within 10 s")
        }));
        next += interval;
    }
    let offered = tasks.len();
    let (mut ok, mut throttled) = (0, 0);
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            StatusCode::OK => {
                assert_eq!(answer.error_code(), 0, "{}", answer.json);
                ok += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(answer.error_code(), 1_904_010);
                assert!(
                    answer.headers["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        >= 1
                );
                throttled += 1;
            }
            other => panic!("unexpected status {other}: {}", answer.json),
        }
    }
    assert!(offered >= 740, "offered {offered} requests in 3 s");
    assert_eq!(ok + throttled, offered);
    assert!(throttled > 0, "5× overload must be refused in part");

    let requests = sandbox.requests(ACCOUNT_CHECK);
    assert_eq!(requests.len(), ok);
    assert!(
        requests.iter().all(|r| r.error_code == 0),
        "the sandbox never answered 60007"
    );
    let max_window = sandbox.max_calls_in_window(ACCOUNT_CHECK);
    assert!(
        max_window < u64::from(QUOTA),
        "{max_window} calls in one sliding second"
    );
    let span = requests.last().unwrap().received_at - requests[0].received_at;
    let average = (requests.len() - 1) as f64 / span.as_secs_f64();
    eprintln!(
        "offered {offered}, answered {ok}, throttled {throttled}, max in 1 s {max_window}, average {average:.1}/s over {span:?}"
    );
    assert!(
        average >= 0.9 * budget,
        "average {average:.1}/s over {span:?} is below 90% of the budget {budget}"
    );
}

/// Tencent's 60007 pauses that command: with `max_wait = 0`, the next call is refused at once
/// with 429 and `Retry-After` and never reaches the upstream; after the pause it goes through.
#[tokio::test]
async fn frequency_limit_answer_pauses_the_command() {
    let sandbox = start_sandbox().await;
    let tail = "[throttle]\nmax_wait = \"0s\"\nbackoff_base = \"500ms\"\n";
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            tail,
            ..Extra::default()
        },
    )
    .await;
    sandbox.inject_error(CREATE_ROBOT, 60007, 1);
    let limited = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#a"}"#).await;
    assert_eq!(limited.error_code(), 60007, "Tencent's answer is relayed");

    let paused = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#a"}"#).await;
    assert_eq!(
        (paused.status, paused.error_code()),
        (StatusCode::TOO_MANY_REQUESTS, 1_904_010)
    );
    assert_eq!(paused.headers["retry-after"], "1");
    // Other commands are not paused by a command-level signal.
    assert_eq!(
        post(gw.addr(), ACCOUNT_CHECK, CHECK_BODY)
            .await
            .error_code(),
        0
    );
    assert_eq!(sandbox.calls(CREATE_ROBOT), 1);

    tokio::time::sleep(Duration::from_millis(700)).await; // the 500 ms pause is over
    assert_eq!(
        post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#a"}"#)
            .await
            .error_code(),
        0
    );
}

/// Tencent's 70050 stops every call of that app for 60 s: other commands get 503 with
/// `Retry-After` and the upstream sees nothing more.
#[tokio::test]
async fn lockout_stops_the_whole_app() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            tail: "[throttle]\nmax_wait = \"0s\"\n",
            ..Extra::default()
        },
    )
    .await;
    sandbox.inject_error(ACCOUNT_CHECK, 70050, 1);
    assert_eq!(
        post(gw.addr(), ACCOUNT_CHECK, CHECK_BODY)
            .await
            .error_code(),
        70050
    );
    let locked = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#b"}"#).await;
    assert_eq!(
        (locked.status, locked.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, 1_905_006)
    );
    let retry_after: u64 = locked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=61).contains(&retry_after), "{retry_after}");
    assert_eq!(sandbox.total_calls(), 1);
}

/// Tencent's 60011 (the app's overall frequency limit) pauses every command of the app.
#[tokio::test]
async fn app_frequency_limit_pauses_every_command() {
    let sandbox = start_sandbox().await;
    let tail = "[throttle]\nmax_wait = \"0s\"\nbackoff_base = \"5s\"\n";
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            tail,
            ..Extra::default()
        },
    )
    .await;
    sandbox.inject_error(ACCOUNT_CHECK, 60011, 1);
    assert_eq!(
        post(gw.addr(), ACCOUNT_CHECK, CHECK_BODY)
            .await
            .error_code(),
        60011
    );
    let paused = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#c"}"#).await;
    assert_eq!(paused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sandbox.total_calls(), 1);
}

/// Reads are retried on Tencent's internal errors (each retry inside the quota); writes that
/// reached Tencent are not.
#[tokio::test]
async fn internal_errors_retry_reads_but_not_writes() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    sandbox.inject_error(ACCOUNT_CHECK, 10002, 2);
    let read = post(gw.addr(), ACCOUNT_CHECK, CHECK_BODY).await;
    assert_eq!(read.error_code(), 0);
    assert_eq!(
        sandbox.calls(ACCOUNT_CHECK),
        3,
        "two retries (max_retries = 2)"
    );

    sandbox.inject_error(ACCOUNT_CHECK, 70500, 5);
    let exhausted = post(gw.addr(), ACCOUNT_CHECK, CHECK_BODY).await;
    assert_eq!(exhausted.error_code(), 70500);
    assert_eq!(
        sandbox.calls(ACCOUNT_CHECK),
        6,
        "one try and two retries, then Tencent's answer"
    );

    sandbox.inject_error(CREATE_ROBOT, 10002, 1);
    let write = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#d"}"#).await;
    assert_eq!(write.error_code(), 10002);
    assert_eq!(sandbox.calls(CREATE_ROBOT), 1);
}

/// A cached read keeps being served (STALE) while Tencent answers frequency limits.
#[tokio::test]
async fn frequency_limited_reads_serve_stale() {
    let sandbox = start_sandbox().await;
    let tail = format!(
        "[[cache.rules]]\ncommand = \"{GET_ALL_ROBOTS}\"\nttl = \"1s\"\nstale_if_error = \"60s\"\n"
    );
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            tail: &tail,
            ..Extra::default()
        },
    )
    .await;
    let good = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    sandbox.inject_error(GET_ALL_ROBOTS, 60007, 100);
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the 1 s ttl
    for _ in 0..3 {
        let stale = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
        assert_eq!(stale.headers["x-cache"], "STALE");
        assert_eq!(stale.json, good.json);
    }
    // One 60007, then the command is paused: the next stale answers cost no upstream call.
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 2);
}
