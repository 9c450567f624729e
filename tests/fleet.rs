//! Fleet mode end to end: three `tim-gateway serve` processes sharing one `redis-server` in
//! front of one sandbox, which counts every call's arrival.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use support::process::{serve_with, Served};
use support::redis::RedisServer;
use support::{metrics_text, post, start_sandbox, Extra, ACCOUNT_CHECK, KEY};

/// The sum over `gateways` of the `/metrics` sample `series`.
async fn total(gateways: &[Served], series: &str) -> f64 {
    let mut sum = 0.0;
    for gateway in gateways {
        sum += sample(gateway.admin, series).await;
    }
    sum
}

/// The value of the `/metrics` sample `series` (name and labels exactly as exposed).
async fn sample(admin: std::net::SocketAddr, series: &str) -> f64 {
    let text = metrics_text(admin).await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

/// One test at a time: each runs three gateways flat out, and a 2-core machine running two
/// such tests at once could not offer either its load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three gateway processes in fleet mode on `redis`, in front of `sandbox`, default config.
fn fleet_of_three(sandbox: &tim_gateway::sandbox::Sandbox, redis: &RedisServer) -> Vec<Served> {
    let tail = format!(
        "[fleet]\nredis_url = \"{}\"\nexpected_replicas = 3\n",
        redis.url()
    );
    (0..3)
        .map(|_| {
            serve_with(
                sandbox,
                KEY,
                Extra {
                    tail: &tail,
                    ..Extra::default()
                },
            )
        })
        .collect()
}

/// Answers seen by clients: 200 with ErrorCode 0, 429, 200 with a Tencent error, other.
type Counts = Arc<[AtomicU64; 4]>;

/// Open-loop load until `end`: every 6 ms each gateway is sent one more account_check,
/// whatever became of the earlier ones (167/s per gateway, 500/s in all: 5.3 times the
/// budget of 95/s). Returns the answers' counts once every request has been answered.
async fn drive(gateways: &[Served], end: Instant) -> Counts {
    let counts: Counts = Arc::new([(); 4].map(|()| AtomicU64::new(0)));
    let mut requests = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(6));
    while Instant::now() < end {
        ticks.tick().await;
        for gateway in gateways {
            let addr = gateway.addr;
            let counts = Arc::clone(&counts);
            requests.push(tokio::spawn(async move {
                let answer = post(addr, ACCOUNT_CHECK, r#"{"CheckItem":[{"UserID":"a"}]}"#).await;
                let i = match (answer.status.as_u16(), answer.error_code()) {
                    (200, 0) => 0,
                    (429, _) => 1,
                    (200, _) => 2,
                    _ => 3,
                };
                counts[i].fetch_add(1, Ordering::Relaxed);
            }));
        }
    }
    for request in requests {
        request.await.unwrap();
    }
    counts
}

/// Three gateways, together offered more than five times the budget for 4 s (account_check:
/// an uncached read whose quota is 100/s; see `drive`): the sandbox never
/// sees more than the budget (95 of Tencent's 100) in any sliding second, is kept busy at no
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
    let gateways = fleet_of_three(&sandbox, &redis);
    let end = Instant::now() + Duration::from_secs(4);
    let counts = drive(&gateways, end).await;
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let busiest = sandbox.max_calls_in_window(ACCOUNT_CHECK);
    let calls = sandbox.calls(ACCOUNT_CHECK);
    // The rate while the overload lasted: calls that arrived in its 4 s.
    let during = sandbox
        .requests(ACCOUNT_CHECK)
        .iter()
        .filter(|r| r.received_at <= end)
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
    assert!(busiest <= 95, "{busiest} calls in one second");
    assert!(during as f64 >= 0.85 * 88.0 * 4.0, "{during} calls in 4 s");
    assert_eq!(calls, ok, "every call upstream answered one client");
    assert_eq!(failed, 0.0);
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
    let gateways = fleet_of_three(&sandbox, &redis);
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
    assert!(sandbox.max_calls_in_window(ACCOUNT_CHECK) <= 95);
    assert_eq!(late, 0, "calls went out long after Redis was gone");
    assert!(ok > 0 && throttled > 0);
    // Each gateway counted its failed reservations.
    for gateway in &gateways {
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
