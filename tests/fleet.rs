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

/// Three gateways, together offered more than five times the budget for 4 s (account_check:
/// an uncached read whose quota is 100/s; clients retry 20 ms after a 429): the sandbox never
/// sees more than the budget (95 of Tencent's 100) in any sliding second, is kept busy at no
/// less than 85% of the fleet's rate (floor((95 − 4) / 1.025) = 88/s), and never answers
/// 60007; clients see only 200 and 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_keep_one_quota() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let tail = format!(
        "[throttle]\nmax_wait = \"100ms\"\n\n[fleet]\nredis_url = \"{}\"\nexpected_replicas = 3\n",
        redis.url()
    );
    let gateways: Vec<Served> = (0..3)
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
    let counts = Arc::new([(); 4].map(|()| AtomicU64::new(0)));
    let started = Instant::now();
    let end = started + Duration::from_secs(4);
    let mut clients = Vec::new();
    for gateway in &gateways {
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
