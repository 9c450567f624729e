//! Fleet mode end to end: three `tim-gateway serve` processes sharing one `redis-server` in
//! front of one sandbox, which counts every call's arrival.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use support::process::{serve_with, Served};
use support::redis::RedisServer;
use support::{post, start_sandbox, Extra, ACCOUNT_CHECK, KEY};

/// One test at a time: each runs three gateways flat out, and a 2-core machine running two
/// such tests at once could not offer either its load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three gateway processes in fleet mode on `redis`, in front of `sandbox`.
fn fleet_of_three(sandbox: &tim_gateway::sandbox::Sandbox, redis: &RedisServer) -> Vec<Served> {
    let tail = format!(
        "[throttle]\nmax_wait = \"100ms\"\n\n[fleet]\nredis_url = \"{}\"\nexpected_replicas = 3\n",
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

/// 12 clients per gateway post account_check until `end`, retrying 20 ms after a 429.
fn drive(gateways: &[Served], end: Instant) -> (Counts, Vec<tokio::task::JoinHandle<()>>) {
    let counts: Counts = Arc::new([(); 4].map(|()| AtomicU64::new(0)));
    let mut clients = Vec::new();
    for gateway in gateways {
        for _ in 0..12 {
            let addr = gateway.addr;
            let counts = Arc::clone(&counts);
            clients.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let answer =
                        post(addr, ACCOUNT_CHECK, r#"{"CheckItem":[{"UserID":"a"}]}"#).await;
                    let i = match (answer.status.as_u16(), answer.error_code()) {
                        (200, 0) => 0,
                        (429, _) => 1,
                        (200, _) => 2,
                        _ => 3,
                    };
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    if i == 1 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
    }
    (counts, clients)
}

/// Three gateways, together offered more than five times the budget for 4 s (account_check:
/// an uncached read whose quota is 100/s; clients retry 20 ms after a 429): the sandbox never
/// sees more than the budget (95 of Tencent's 100) in any sliding second, is kept busy at no
/// less than 85% of the fleet's rate (floor((95 − 4) / 1.025) = 88/s), and never answers
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
    let (counts, clients) = drive(&gateways, end);
    for client in clients {
        client.await.unwrap();
    }
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let busiest = sandbox.max_calls_in_window(ACCOUNT_CHECK);
    let calls = sandbox.calls(ACCOUNT_CHECK);
    eprintln!(
        "{ok} ok, {throttled} throttled, {tencent_error} Tencent errors, {other} other; \
         {calls} calls upstream, busiest second {busiest}"
    );
    assert_eq!((tencent_error, other), (0, 0), "only 200 and 429");
    assert!(
        ok + throttled >= 5 * 95 * 4,
        "offered only {} requests",
        ok + throttled
    );
    assert!(busiest <= 95, "{busiest} calls in one second");
    assert!(calls as f64 >= 0.85 * 88.0 * 4.0, "{calls} calls in 4 s");
    assert_eq!(calls, ok, "every call upstream answered one client");
}

/// Redis killed in the middle of the load: the gateways fail closed. Clients still get only
/// 200 and 429 (never a 5xx), no sliding second goes over the budget, and once the slots
/// reserved before the kill are used (the look-ahead is 100 ms; a second is allowed for calls
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
    let (counts, clients) = drive(&gateways, end);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    drop(redis);
    for client in clients {
        client.await.unwrap();
    }
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
}
