//! The cache end to end: coalescing, hits, stale-while-revalidate, stale-if-error,
//! invalidation and purge, against the sandbox over TLS.
//!
//! Timing: these tests use real time with short TTLs. Each wait is chosen with a margin of at
//! least 0.5 s on both sides of the boundary it tests, and the upstream latency injected to
//! keep a flight open (1–2 s) is far longer than the few milliseconds the requests need to
//! join it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use support::*;
use tokio::sync::Barrier;

/// A cache rule for get_all_robots with the given windows (seconds).
fn robots_rule(ttl: &str, swr: &str, sie: &str) -> String {
    format!(
        r#"
[[cache.rules]]
command = "{GET_ALL_ROBOTS}"
ttl = "{ttl}"
stale_while_revalidate = "{swr}"
stale_if_error = "{sie}"
invalidated_by = ["{CREATE_ROBOT}", "{DELETE_ROBOT}"]
"#
    )
}

/// A gateway whose get_all_robots rule has the given windows.
async fn start_robots_cached(
    sandbox: &tim_gateway::sandbox::Sandbox,
    ttl: &str,
    swr: &str,
    sie: &str,
) -> TestGateway {
    let tail = robots_rule(ttl, swr, sie);
    start_gateway_with(
        sandbox,
        Extra {
            tail: &tail,
            ..Extra::default()
        },
    )
    .await
}

fn x_cache(answer: &Answer) -> &str {
    answer.headers["x-cache"].to_str().unwrap()
}

/// 1,000 concurrent cold requests for one key make exactly one upstream call, and all 1,000
/// get the same successful answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_cold_requests_make_one_upstream_call() {
    let sandbox = start_sandbox().await;
    sandbox.add_robot(SDKAPPID, "@RBT#one");
    // Keeps the flight open while all 1,000 requests arrive.
    sandbox.set_latency(Duration::from_secs(1));
    let gw = start_gateway(&sandbox).await;
    let client = client();
    let barrier = Arc::new(Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (client, barrier, addr) = (client.clone(), Arc::clone(&barrier), gw.addr());
            tokio::spawn(async move {
                barrier.wait().await;
                call_with(
                    &client,
                    addr,
                    Method::POST,
                    "/v4/openim_robot_http_svc/get_all_robots",
                    "{}",
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.json["Robot_Account"],
            serde_json::json!(["@RBT#one"])
        );
    }
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 1);
}

/// Waiters are answered the moment the shared call returns, not on a polling tick (nginx's
/// cache lock polls every 500 ms). Margin: every waiter must have its answer within 250 ms of
/// the upstream's answer; the work between the two takes a few milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_answered_when_the_call_returns() {
    let sandbox = start_sandbox().await;
    let latency = Duration::from_millis(600);
    sandbox.set_latency(latency);
    let gw = start_gateway(&sandbox).await;
    let client = client();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (client, addr) = (client.clone(), gw.addr());
            tokio::spawn(async move {
                call_with(
                    &client,
                    addr,
                    Method::POST,
                    "/v4/openim_robot_http_svc/get_all_robots",
                    "{}",
                )
                .await;
                tokio::time::Instant::now()
            })
        })
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }
    let requests = sandbox.requests(GET_ALL_ROBOTS);
    assert_eq!(requests.len(), 1);
    let answered = requests[0].received_at + latency;
    let slowest = done
        .iter()
        .max()
        .unwrap()
        .saturating_duration_since(answered);
    assert!(
        slowest < Duration::from_millis(250),
        "a waiter got its answer {slowest:?} late"
    );
}

/// The first client of a flight disconnecting mid-flight neither cancels nor repeats the
/// fetch: the followers get the answer, the cache keeps it, and the upstream saw one call.
#[tokio::test]
async fn first_client_disconnecting_does_not_cancel_the_fetch() {
    let sandbox = start_sandbox().await;
    sandbox.set_latency(Duration::from_secs(2));
    let gw = start_gateway(&sandbox).await;
    let addr = gw.addr();
    let leader = tokio::spawn(async move { post(addr, GET_ALL_ROBOTS, "{}").await });
    eventually("the upstream call", || sandbox.calls(GET_ALL_ROBOTS) == 1).await;
    leader.abort(); // drops the leader's connection while the upstream call is in flight
    let followers: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { post(addr, GET_ALL_ROBOTS, "{}").await }))
        .collect();
    for follower in followers {
        let answer = follower.await.unwrap();
        assert_eq!((answer.status, answer.error_code()), (StatusCode::OK, 0));
        assert_eq!(x_cache(&answer), "MISS");
    }
    let after = post(addr, GET_ALL_ROBOTS, "{}").await;
    assert_eq!(x_cache(&after), "HIT");
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 1);
}

/// Fresh hits cost no upstream call and carry `X-Cache: HIT` and an `Age`.
#[tokio::test]
async fn fresh_hits_cost_no_calls() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    let first = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(
        (x_cache(&first), first.headers["age"].to_str().unwrap()),
        ("MISS", "0")
    );
    for _ in 0..100 {
        let hit = post(gw.addr(), GET_ALL_ROBOTS, " { } ").await;
        assert_eq!(x_cache(&hit), "HIT");
        assert!(hit.headers["age"].to_str().unwrap().parse::<u64>().is_ok());
        assert_eq!(hit.json, first.json);
    }
    let get = call(
        gw.addr(),
        Method::GET,
        "/v4/openim_robot_http_svc/get_all_robots",
        "",
    )
    .await;
    assert_eq!(
        x_cache(&get),
        "HIT",
        "GET with no body is the same key as POST {{}}"
    );
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 1);
}

/// Key order and whitespace of the body do not split cache entries (account_check made
/// cacheable by a rule).
#[tokio::test]
async fn body_key_order_does_not_split_entries() {
    let sandbox = start_sandbox().await;
    let rule = format!("[[cache.rules]]\ncommand = \"{ACCOUNT_CHECK}\"\nttl = \"60s\"\n");
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            tail: &rule,
            ..Extra::default()
        },
    )
    .await;
    let a = post(
        gw.addr(),
        ACCOUNT_CHECK,
        r#"{"CheckItem":[{"UserID":"alice"}],"Extra":1}"#,
    )
    .await;
    let b = post(
        gw.addr(),
        ACCOUNT_CHECK,
        "{ \"Extra\" : 1,\n \"CheckItem\": [ {\"UserID\": \"alice\"} ] }",
    )
    .await;
    let c = post(
        gw.addr(),
        ACCOUNT_CHECK,
        r#"{"CheckItem":[{"UserID":"bob"}],"Extra":1}"#,
    )
    .await;
    assert_eq!(
        (x_cache(&a), x_cache(&b), x_cache(&c)),
        ("MISS", "HIT", "MISS")
    );
    assert_eq!(sandbox.calls(ACCOUNT_CHECK), 2);
}

/// After `ttl`, with stale-while-revalidate, concurrent clients get the stale answer at once
/// and the upstream sees exactly one refresh; then answers are fresh again.
#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let sandbox = start_sandbox().await;
    let gw = start_robots_cached(&sandbox, "1s", "30s", "0s").await;
    assert_eq!(
        x_cache(&post(gw.addr(), GET_ALL_ROBOTS, "{}").await),
        "MISS"
    );
    sandbox.add_robot(SDKAPPID, "@RBT#later"); // changes upstream state behind the cache
    sandbox.set_latency(Duration::from_millis(500)); // keeps the refresh open while we call
    tokio::time::sleep(Duration::from_millis(1500)).await; // past ttl (1 s), well inside swr

    let stale: Vec<_> = (0..20)
        .map(|_| {
            let addr = gw.addr();
            tokio::spawn(async move { post(addr, GET_ALL_ROBOTS, "{}").await })
        })
        .collect();
    for answer in stale {
        let answer = answer.await.unwrap();
        assert_eq!(x_cache(&answer), "STALE");
        assert_eq!(answer.json["Robot_Account"], serde_json::json!([]));
    }
    eventually("the refresh call", || sandbox.calls(GET_ALL_ROBOTS) == 2).await;
    // The refresh answered after 500 ms of latency; wait for it to be stored.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fresh = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(x_cache(&fresh), "HIT");
    assert_eq!(
        fresh.json["Robot_Account"],
        serde_json::json!(["@RBT#later"])
    );
    assert_eq!(
        sandbox.calls(GET_ALL_ROBOTS),
        2,
        "one initial fetch, one refresh"
    );
}

/// With the upstream failing (Tencent's internal error 10002), the last good answer is served
/// as STALE within `stale_if_error`, and the error is passed on after it.
#[tokio::test]
async fn stale_if_error_then_errors() {
    let sandbox = start_sandbox().await;
    let gw = start_robots_cached(&sandbox, "1s", "0s", "2s").await;
    sandbox.add_robot(SDKAPPID, "@RBT#kept");
    let good = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(x_cache(&good), "MISS");
    sandbox.inject_error(GET_ALL_ROBOTS, 10002, 1000);

    tokio::time::sleep(Duration::from_millis(1500)).await; // past ttl, inside stale_if_error
    let stale = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(x_cache(&stale), "STALE");
    assert_eq!(stale.json, good.json);

    tokio::time::sleep(Duration::from_millis(2000)).await; // past ttl + stale_if_error (3 s)
    let failed = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(
        (failed.status, failed.error_code()),
        (StatusCode::OK, 10002)
    );
    assert_eq!(x_cache(&failed), "MISS");
}

/// With the upstream gone entirely (connections refused), stale answers are served within
/// `stale_if_error` instead of a 502.
#[tokio::test]
async fn stale_if_error_covers_an_unreachable_upstream() {
    let sandbox = start_sandbox().await;
    let gw = start_robots_cached(&sandbox, "1s", "0s", "30s").await;
    let good = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    sandbox.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stale = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!((stale.status, x_cache(&stale)), (StatusCode::OK, "STALE"));
    assert_eq!(stale.json, good.json);
}

/// An upstream error is shared with the waiters of its flight and is not cached.
#[tokio::test]
async fn errors_are_shared_by_the_flight_and_not_cached() {
    let sandbox = start_sandbox().await;
    sandbox.set_latency(Duration::from_secs(1));
    sandbox.inject_error(GET_ALL_ROBOTS, 10002, 1);
    // No retries, so one failed flight is one upstream call.
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            upstream: "max_retries = 0",
            ..Extra::default()
        },
    )
    .await;
    let addr = gw.addr();
    let waiters: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { post(addr, GET_ALL_ROBOTS, "{}").await }))
        .collect();
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().error_code(), 10002);
    }
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 1);
    let next = post(addr, GET_ALL_ROBOTS, "{}").await;
    assert_eq!((next.error_code(), x_cache(&next)), (0, "MISS"));
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 2);
}

/// A successful create_robot through the gateway makes the next get_all_robots a MISS that
/// shows the new bot; a failed write invalidates nothing.
#[tokio::test]
async fn writes_invalidate_the_reads_they_affect() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    assert_eq!(
        x_cache(&post(gw.addr(), GET_ALL_ROBOTS, "{}").await),
        "MISS"
    );
    assert_eq!(x_cache(&post(gw.addr(), GET_ALL_ROBOTS, "{}").await), "HIT");

    let refused = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"bad"}"#).await;
    assert_eq!(refused.error_code(), 10004);
    assert_eq!(x_cache(&post(gw.addr(), GET_ALL_ROBOTS, "{}").await), "HIT");

    let created = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#new"}"#).await;
    assert_eq!((created.error_code(), x_cache(&created)), (0, "BYPASS"));
    let after = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(x_cache(&after), "MISS");
    assert_eq!(after.json["Robot_Account"], serde_json::json!(["@RBT#new"]));

    assert_eq!(
        post(gw.addr(), DELETE_ROBOT, r#"{"Robot_Account":"@RBT#new"}"#)
            .await
            .error_code(),
        0
    );
    let deleted = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(x_cache(&deleted), "MISS");
    assert_eq!(deleted.json["Robot_Account"], serde_json::json!([]));
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 3);
}

/// The admin purge endpoint drops cached answers: all of them, or one app's command.
#[tokio::test]
async fn admin_purge_drops_cached_answers() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    let admin = gw.admin_addr();
    post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(x_cache(&post(gw.addr(), GET_ALL_ROBOTS, "{}").await), "HIT");

    let purged = call(
        admin,
        Method::POST,
        &format!("/cache/purge?app=main&command={GET_ALL_ROBOTS}"),
        "",
    )
    .await;
    assert_eq!(
        (purged.status, purged.json["ActionStatus"].as_str()),
        (StatusCode::OK, Some("OK"))
    );
    assert_eq!(
        x_cache(&post(gw.addr(), GET_ALL_ROBOTS, "{}").await),
        "MISS"
    );

    let all = call(admin, Method::POST, "/cache/purge", "").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(
        x_cache(&post(gw.addr(), GET_ALL_ROBOTS, "{}").await),
        "MISS"
    );

    let unknown = call(admin, Method::POST, "/cache/purge?app=nope", "").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 3);
}

/// Expired entries leave memory without any further request (housekeeping runs every
/// second; the entry's hard lifetime here is 1 s, checked after 3.5 s).
#[tokio::test]
async fn expired_entries_leave_memory() {
    let sandbox = start_sandbox().await;
    let gw = start_robots_cached(&sandbox, "1s", "0s", "0s").await;
    post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    let cache = &gw.gateway.proxy().shared().cache;
    cache.run_pending_tasks().await;
    assert_eq!(cache.usage().0, 1);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(cache.usage(), (0, 0));
}
