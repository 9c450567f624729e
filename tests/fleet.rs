//! Fleet mode end to end: three `tim-gateway serve` processes sharing one `redis-server` in
//! front of one sandbox, which counts every call's arrival.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use support::fleet::{drive, fleet_of_three, sample, total, until, warm_up};
use support::process::{serve_with, Served};
use support::redis::RedisServer;
use support::{start_sandbox, Extra, ACCOUNT_CHECK, KEY};

/// One test at a time: each runs three gateways flat out, and a 2-core machine running two
/// such tests at once could not offer either its load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three gateways, together offered more than five times the budget for 4 s (account_check:
/// an uncached read whose quota is 100/s; see `drive`): the sandbox never
/// sees Tencent's quota (100) in any sliding second, is kept busy at no
/// less than 85% of the fleet's rate (floor((95 − 4) / 1.025) = 88/s) while the overload lasts,
/// Redis sees fewer than a quarter as many reservation calls as the upstream sees calls, and
/// the upstream never answers
/// 60007; clients see only 200 and 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_keep_one_quota() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let gateways = fleet_of_three(&sandbox, &redis.url(), "share");
    // Each gateway connected to Redis and loaded its script before the overload starts (a
    // sidecar's first seconds are not what the bound is about).
    warm_up(&gateways).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the warm-up's slots are out of the window
    let warmed = sandbox.calls(ACCOUNT_CHECK);
    let start = Instant::now();
    let end = start + Duration::from_secs(4);
    let counts = drive(&gateways, end).await;
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let busiest = sandbox.max_calls_in_window(ACCOUNT_CHECK);
    let calls = sandbox.calls(ACCOUNT_CHECK) - warmed;
    // The rate while the overload lasted: calls that arrived in its 4 s.
    let during = sandbox
        .requests(ACCOUNT_CHECK)
        .iter()
        .filter(|r| r.received_at >= start && r.received_at <= end)
        .count();
    eprintln!(
        "{ok} ok, {throttled} throttled, {tencent_error} Tencent errors, {other} other; \
         {calls} calls upstream ({during} during the 4 s of overload), busiest second {busiest}"
    );
    let reservations = total(&gateways, "tim_gateway_throttle_batch_size_count").await;
    let empty = total(
        &gateways,
        r#"tim_gateway_throttle_batch_size_bucket{le="0"}"#,
    )
    .await;
    let late = total(
        &gateways,
        r#"tim_gateway_redis_errors_total{kind="late",op="reserve"}"#,
    )
    .await;
    let failed = total(
        &gateways,
        r#"tim_gateway_redis_errors_total{kind="error",op="reserve"}"#,
    )
    .await;
    eprintln!(
        "{reservations} reservation calls, {empty} granted nothing, {late} late, {failed} failed"
    );
    assert_eq!((tencent_error, other), (0, 0), "only 200 and 429");
    assert!(
        ok + throttled >= 5 * 95 * 4,
        "offered only {} requests",
        ok + throttled
    );
    // The reservations hold at most burst + rate × (1 + max_lateness) = 4 + 88 × 1.025 = 94
    // slots in any second; arrivals at the upstream add the send path's jitter on this loaded
    // 2-core machine (a send woken late lands in the next second): seen up to 99. The promise
    // to Tencent is its quota, 100.
    assert!(busiest < 100, "{busiest} calls in one second");
    assert!(during as f64 >= 0.85 * 88.0 * 4.0, "{during} calls in 4 s");
    assert_eq!(calls, ok, "every call upstream answered one client");
    assert_eq!(failed, 0.0);
    let mode = r#"tim_gateway_throttle_mode{app="main",command="im_open_login_svc/account_check"}"#;
    for gateway in &gateways {
        assert_eq!(
            sample(gateway.admin, mode).await,
            1.0,
            "the budget lives in Redis"
        );
    }
    // Batching: Redis saw fewer than a quarter as many reservation calls as the upstream saw
    // calls.
    assert!(
        reservations > 0.0 && reservations * 4.0 < calls as f64,
        "{reservations} reservations for {calls} calls"
    );
}

/// Redis killed in the middle of the load: the gateways fail closed. Clients still get only
/// 200 and 429 (never a 5xx), no sliding second goes over the budget, and once the slots
/// reserved before the kill are used (the look-ahead is 250 ms; a second is allowed for calls
/// already on their way) no call reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_fails_closed() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let gateways = fleet_of_three(&sandbox, &redis.url(), "closed");
    let end = Instant::now() + Duration::from_secs(4);
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed = Instant::now();
        drop(redis);
        killed
    });
    let counts = drive(&gateways, end).await;
    let killed = killer.await.unwrap();
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let requests = sandbox.requests(ACCOUNT_CHECK);
    let late = requests
        .iter()
        .filter(|r| r.received_at > killed + Duration::from_secs(1))
        .count();
    let after_kill = requests.iter().filter(|r| r.received_at > killed).count();
    eprintln!(
        "{ok} ok, {throttled} throttled, {tencent_error} Tencent errors, {other} other; \
         {} calls upstream, {after_kill} after the kill, busiest second {}",
        requests.len(),
        sandbox.max_calls_in_window(ACCOUNT_CHECK)
    );
    assert_eq!((tencent_error, other), (0, 0), "only 200 and 429");
    assert!(sandbox.max_calls_in_window(ACCOUNT_CHECK) < 100);
    assert_eq!(late, 0, "calls went out long after Redis was gone");
    assert!(ok > 0 && throttled > 0);
    // Each gateway counted its failed reservations, and shows the budget failing closed.
    let mode = r#"tim_gateway_throttle_mode{app="main",command="im_open_login_svc/account_check"}"#;
    for gateway in &gateways {
        assert_eq!(sample(gateway.admin, mode).await, 4.0, "closed");
        let failed = sample(
            gateway.admin,
            r#"tim_gateway_redis_errors_total{kind="error",op="reserve"}"#,
        )
        .await
            + sample(
                gateway.admin,
                r#"tim_gateway_redis_errors_total{kind="timeout",op="reserve"}"#,
            )
            .await;
        assert!(failed > 0.0, "no failed reservation counted");
    }
}

/// Fleet membership: four gateways with `expected_replicas = 3` each see four live members
/// (what `FleetReplicasOverExpected` alerts on); one shutting down leaves at once; one killed
/// turns suspect once it has not been heard from for 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_counted_live_then_suspect() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let tail = format!(
        "[fleet]\nredis_url = \"{}\"\nexpected_replicas = 3\n",
        redis.url()
    );
    let mut gateways: Vec<Served> = (0..4)
        .map(|_| {
            serve_with(
                &sandbox,
                KEY,
                Extra {
                    tail: &tail,
                    ..Extra::default()
                },
            )
        })
        .collect();
    let live = r#"tim_gateway_fleet_members{app="main",state="live"}"#;
    let suspect = r#"tim_gateway_fleet_members{app="main",state="suspect"}"#;
    // Each heartbeat (every second) reports what Redis knows then.
    for gateway in &gateways {
        until(gateway.admin, live, 4.0).await;
        assert_eq!(
            sample(gateway.admin, "tim_gateway_fleet_expected_replicas").await,
            3.0
        );
    }
    let leaving = gateways.pop().unwrap();
    let (status, _) = leaving.terminate();
    assert!(status.success());
    until(gateways[0].admin, live, 3.0).await;
    assert_eq!(sample(gateways[0].admin, suspect).await, 0.0, "it left");
    drop(gateways.pop()); // SIGKILL: it cannot say goodbye
    let killed = Instant::now();
    until(gateways[0].admin, suspect, 1.0).await;
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "suspect only after 3 s without a heartbeat (the last one may be up to 1 s old)"
    );
    assert_eq!(sample(gateways[0].admin, live).await, 2.0);
}
