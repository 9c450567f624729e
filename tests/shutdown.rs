//! Draining, with the handler in process under tokio's paused time: what each request gets at
//! the instant a drain begins ([`Proxy::begin_drain`]) and when it stops upstream calls
//! ([`Proxy::stop_upstream_calls`]), and how requests whose clients hang up are accounted for.
//! The server's drain of real connections is in `tests/e2e.rs` and, for the process and its
//! signals, `tests/cli.rs`.
//!
//! [`Proxy::begin_drain`]: tim_gateway::proxy::Proxy::begin_drain
//! [`Proxy::stop_upstream_calls`]: tim_gateway::proxy::Proxy::stop_upstream_calls

mod support;

use std::time::Duration;

use http::StatusCode;
use support::inproc::{self, settle, InProc};
use support::*;
use tokio::task::JoinHandle;
use tokio::time::{advance, Instant};

/// The gateway's error code for a request refused because it is draining (503).
const DRAINING: i64 = 1_905_005;

/// A client task that also reports the instant it got its answer.
fn spawn_timed(gw: &InProc, command: &str, body: &str) -> JoinHandle<(Answer, Instant)> {
    let client = gw.spawn_post(command, body);
    tokio::spawn(async move { (client.await.unwrap(), Instant::now()) })
}

/// When a drain begins, a request waiting for a throttle permit gets a clean 503 at that
/// instant and never reaches the upstream, while a call already sent finishes with its real
/// answer when the upstream gives it.
#[tokio::test(start_paused = true)]
async fn a_drain_refuses_waiting_calls_at_once_and_lets_sent_ones_finish() {
    let gw = inproc::start(Extra {
        upstream: r#"deadline = "40s""#,
        tail: "[throttle]\nmax_wait = \"30s\"\nbackoff_base = \"20s\"\nbackoff_max = \"20s\"\n",
        ..Extra::default()
    });
    // Tencent says account_check is too frequent: the gateway pauses that command for 20 s.
    gw.sandbox.inject_error(ACCOUNT_CHECK, 60018, 1);
    assert_eq!(gw.post(ACCOUNT_CHECK, CHECK_BODY).await.error_code(), 60018);
    let latency = Duration::from_secs(2);
    gw.sandbox.set_latency(latency);
    let sent_at = Instant::now();
    let in_flight = spawn_timed(&gw, CREATE_ROBOT, r#"{"UserID":"@RBT#drain"}"#);
    let waiting = spawn_timed(&gw, ACCOUNT_CHECK, CHECK_BODY);
    settle().await;
    assert_eq!(gw.sandbox.calls(CREATE_ROBOT), 1);
    assert!(gw.metrics().contains(&format!(
        "tim_gateway_throttle_waiters{{app=\"main\",command=\"{ACCOUNT_CHECK}\"}} 1"
    )));

    let drain_at = Instant::now();
    gw.proxy.begin_drain();
    let (waited, answered_at) = waiting.await.unwrap();
    assert_eq!(
        (waited.status, waited.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, DRAINING)
    );
    assert_eq!(answered_at, drain_at);
    let (finished, finished_at) = in_flight.await.unwrap();
    assert_eq!(
        (finished.status, finished.error_code()),
        (StatusCode::OK, 0)
    );
    assert_eq!(finished_at, sent_at + latency);
    assert_eq!(gw.sandbox.robots(SDKAPPID), ["@RBT#drain"]);
    assert_eq!(gw.sandbox.calls(ACCOUNT_CHECK), 1);
}

/// A read waiting out its retry back-off when a drain begins stops waiting at that instant
/// and relays Tencent's last answer instead of retrying.
#[tokio::test(start_paused = true)]
async fn a_drain_ends_a_retry_back_off_with_the_last_answer() {
    let gw = inproc::start(Extra {
        upstream: r#"retry_base_delay = "5s""#,
        ..Extra::default()
    });
    gw.sandbox.inject_error(ACCOUNT_CHECK, 10002, 1);
    let retrying = spawn_timed(&gw, ACCOUNT_CHECK, CHECK_BODY);
    settle().await;
    assert_eq!(gw.sandbox.calls(ACCOUNT_CHECK), 1);
    let drain_at = Instant::now();
    gw.proxy.begin_drain();
    let (answer, answered_at) = retrying.await.unwrap();
    assert_eq!(answer.error_code(), 10002);
    assert_eq!(answered_at, drain_at);
    assert_eq!(gw.sandbox.calls(ACCOUNT_CHECK), 1);
}

/// A call still waiting on Tencent is not cut when the drain begins; when the drain stops
/// upstream calls (just before the grace period ends), it gets a clean 503 envelope at that
/// instant instead of a connection cut without an answer.
#[tokio::test(start_paused = true)]
async fn calls_outlasting_the_drain_get_a_clean_503_when_it_stops_them() {
    let gw = inproc::start(Extra::default());
    gw.sandbox.set_latency(Duration::from_secs(30));
    let slow = spawn_timed(&gw, CREATE_ROBOT, r#"{"UserID":"@RBT#late"}"#);
    settle().await;
    assert_eq!(gw.sandbox.calls(CREATE_ROBOT), 1);

    gw.proxy.begin_drain();
    advance(Duration::from_secs(5)).await;
    assert!(!slow.is_finished(), "a call already sent may finish");
    let stop_at = Instant::now();
    gw.proxy.stop_upstream_calls();
    let (answer, answered_at) = slow.await.unwrap();
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, DRAINING)
    );
    assert_eq!(answered_at, stop_at);
}

/// A client that hangs up before its answer is counted at that instant (status class 4xx:
/// 499) and leaves nothing in flight.
#[tokio::test(start_paused = true)]
async fn hang_ups_are_counted() {
    let gw = inproc::start(Extra::default());
    gw.sandbox.set_latency(Duration::from_secs(2));
    let hung_up = gw.spawn_post(ACCOUNT_CHECK, CHECK_BODY);
    settle().await;
    assert_eq!(gw.sandbox.calls(ACCOUNT_CHECK), 1);
    assert!(gw.metrics().contains("tim_gateway_requests_in_flight 1"));
    hung_up.abort();
    assert!(hung_up.await.unwrap_err().is_cancelled());
    let metrics = gw.metrics();
    let line = format!(
        "tim_gateway_requests_total{{app=\"main\",cache=\"BYPASS\",command=\"{ACCOUNT_CHECK}\",status_class=\"4xx\"}} 1"
    );
    assert!(
        metrics.contains(&line),
        "no 4xx (499) sample for the hung-up request"
    );
    assert!(metrics.contains("tim_gateway_requests_in_flight 0"));
}
