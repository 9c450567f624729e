//! The cache: coalescing, hits, stale-while-revalidate, stale-if-error, invalidation and
//! purge, with the handler in process in front of the in-process sandbox
//! (`tests/support/inproc.rs`).
//!
//! Timing: every test but the last runs under tokio's paused time, where time moves only when
//! every task waits, so each assertion names the exact instant. The last waits for moka's own
//! clock, which cannot be paused (see its doc).

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use support::inproc::{self, advance_to, settle, InProc, MS};
use support::*;
use tokio::sync::Barrier;
use tokio::time::{advance, Instant};

/// A handler whose get_all_robots rule has the given windows.
fn robots_cached(ttl: &str, swr: &str, sie: &str) -> InProc {
    let tail = format!(
        r#"
[[cache.rules]]
command = "{GET_ALL_ROBOTS}"
ttl = "{ttl}"
stale_while_revalidate = "{swr}"
stale_if_error = "{sie}"
invalidated_by = ["{CREATE_ROBOT}", "{DELETE_ROBOT}"]
"#
    );
    inproc::start(Extra {
        tail: &tail,
        ..Extra::default()
    })
}

fn robots(answer: &Answer) -> &serde_json::Value {
    &answer.json["Robot_Account"]
}

/// 1,000 concurrent cold reads of one key make exactly one upstream call, and every one of
/// them gets its answer at the instant that call returns, not on a polling tick (nginx's
/// cache lock polls every 500 ms).
#[tokio::test(start_paused = true)]
async fn a_thousand_cold_reads_make_one_call_and_are_answered_when_it_returns() {
    let gw = inproc::start(Extra::default());
    gw.sandbox.add_robot(SDKAPPID, "@RBT#one");
    let latency = Duration::from_millis(100);
    gw.sandbox.set_latency(latency);
    let barrier = Arc::new(Barrier::new(1000));
    let started = Instant::now();
    let clients: Vec<_> = (0..1000)
        .map(|_| {
            let (proxy, barrier) = (Arc::clone(&gw.proxy), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let answer =
                    inproc::call(&proxy, Method::POST, &format!("/v4/{GET_ALL_ROBOTS}"), "{}")
                        .await;
                (answer, Instant::now())
            })
        })
        .collect();
    for client in clients {
        let (answer, answered_at) = client.await.unwrap();
        assert_eq!((answer.status, answer.error_code()), (StatusCode::OK, 0));
        assert_eq!(robots(&answer), &serde_json::json!(["@RBT#one"]));
        assert_eq!(answered_at, started + latency);
    }
    let requests = gw.sandbox.requests(GET_ALL_ROBOTS);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].received_at, started);
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 1);
}

/// The first client of a flight hanging up mid-flight neither cancels nor repeats the fetch:
/// the followers get its answer the instant it returns, the cache keeps it, and the upstream
/// saw one call.
#[tokio::test(start_paused = true)]
async fn first_client_hanging_up_neither_cancels_nor_repeats_the_fetch() {
    let gw = inproc::start(Extra::default());
    let latency = Duration::from_secs(2);
    gw.sandbox.set_latency(latency);
    let started = Instant::now();
    let leader = gw.spawn_post(GET_ALL_ROBOTS, "{}");
    settle().await;
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 1);
    leader.abort(); // the leader's client goes away while the upstream call is in flight
    let followers: Vec<_> = (0..10)
        .map(|_| gw.spawn_post(GET_ALL_ROBOTS, "{}"))
        .collect();
    for follower in followers {
        let answer = follower.await.unwrap();
        assert_eq!((answer.status, answer.error_code()), (StatusCode::OK, 0));
        assert_eq!(answer.x_cache(), "MISS");
    }
    assert_eq!(Instant::now(), started + latency);
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "HIT");
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 1);
}

/// Fresh hits cost no upstream call and carry `X-Cache: HIT` and the whole seconds since the
/// fetch as `Age`; a GET with no body is the same key as POST `{}`.
#[tokio::test(start_paused = true)]
async fn fresh_hits_cost_no_calls_and_carry_their_age() {
    let gw = inproc::start(Extra::default());
    let first = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!((first.x_cache(), first.age()), ("MISS", 0));
    for _ in 0..100 {
        let hit = gw.post(GET_ALL_ROBOTS, " { } ").await;
        assert_eq!((hit.x_cache(), hit.age()), ("HIT", 0));
        assert_eq!(hit.json, first.json);
    }
    advance(Duration::from_millis(2999)).await;
    let later = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!((later.x_cache(), later.age()), ("HIT", 2));
    let get = gw
        .call(Method::GET, &format!("/v4/{GET_ALL_ROBOTS}"), "")
        .await;
    assert_eq!(
        get.x_cache(),
        "HIT",
        "GET with no body is the same key as POST {{}}"
    );
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 1);
}

/// Key order and whitespace of the body do not split cache entries (account_check made
/// cacheable by a rule); a different value does.
#[tokio::test(start_paused = true)]
async fn body_key_order_does_not_split_entries() {
    let rule = format!("[[cache.rules]]\ncommand = \"{ACCOUNT_CHECK}\"\nttl = \"60s\"\n");
    let gw = inproc::start(Extra {
        tail: &rule,
        ..Extra::default()
    });
    let a = gw
        .post(
            ACCOUNT_CHECK,
            r#"{"CheckItem":[{"UserID":"alice"}],"Extra":1}"#,
        )
        .await;
    let b = gw
        .post(
            ACCOUNT_CHECK,
            "{ \"Extra\" : 1,\n \"CheckItem\": [ {\"UserID\": \"alice\"} ] }",
        )
        .await;
    let c = gw
        .post(
            ACCOUNT_CHECK,
            r#"{"CheckItem":[{"UserID":"bob"}],"Extra":1}"#,
        )
        .await;
    assert_eq!(
        (a.x_cache(), b.x_cache(), c.x_cache()),
        ("MISS", "HIT", "MISS")
    );
    assert_eq!(gw.sandbox.calls(ACCOUNT_CHECK), 2);
}

/// An answer is a HIT until exactly `ttl`; from then, within stale-while-revalidate,
/// concurrent clients get the stale answer at once while exactly one refresh runs, and from
/// the instant it returns answers are fresh again, aged from the refresh.
#[tokio::test(start_paused = true)]
async fn freshness_ends_exactly_at_ttl_then_one_refresh_serves_stale_meanwhile() {
    let gw = robots_cached("5s", "10s", "60s");
    let ttl = Duration::from_secs(5);
    let fetched = Instant::now();
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "MISS");
    gw.sandbox.add_robot(SDKAPPID, "@RBT#later"); // changes upstream state behind the cache
    let latency = Duration::from_millis(500); // keeps the refresh open while we call
    gw.sandbox.set_latency(latency);

    advance_to(fetched + ttl - MS).await;
    let hit = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!((hit.x_cache(), hit.age()), ("HIT", 4));
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 1);

    advance(MS).await; // exactly ttl
    let stale: Vec<_> = (0..20)
        .map(|_| gw.spawn_post(GET_ALL_ROBOTS, "{}"))
        .collect();
    for answer in stale {
        let answer = answer.await.unwrap();
        assert_eq!(answer.x_cache(), "STALE");
        assert_eq!(robots(&answer), &serde_json::json!([]));
    }
    assert_eq!(
        Instant::now(),
        fetched + ttl,
        "stale answers wait for nothing"
    );
    settle().await;
    assert_eq!(
        gw.sandbox.calls(GET_ALL_ROBOTS),
        2,
        "one refresh for twenty stale answers"
    );

    advance_to(fetched + ttl + latency - MS).await;
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "STALE");
    advance_to(fetched + ttl + latency).await;
    settle().await; // the refresh's answer is stored
    let fresh = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!((fresh.x_cache(), fresh.age()), ("HIT", 0));
    assert_eq!(robots(&fresh), &serde_json::json!(["@RBT#later"]));
    let fetches: Vec<Instant> = gw
        .sandbox
        .requests(GET_ALL_ROBOTS)
        .iter()
        .map(|r| r.received_at)
        .collect();
    assert_eq!(
        fetches,
        [fetched, fetched + ttl],
        "one initial fetch, one refresh"
    );
}

/// With the upstream failing (Tencent's internal error 10002), the last good answer is served
/// as STALE until exactly `ttl + stale_if_error`, counted from the fetch; from that instant
/// the error is passed on.
#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_last_answer_until_exactly_its_window_ends() {
    let gw = robots_cached("5s", "10s", "60s");
    gw.sandbox.add_robot(SDKAPPID, "@RBT#kept");
    let fetched = Instant::now();
    let good = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!((good.x_cache(), good.error_code()), ("MISS", 0));
    advance(Duration::from_secs(15)).await; // past ttl + stale_while_revalidate
    gw.sandbox.inject_error(GET_ALL_ROBOTS, 10002, 100);
    let stale = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!((stale.x_cache(), stale.error_code()), ("STALE", 0));
    assert_eq!(stale.json, good.json);

    // Each failed refresh took its retries' back-off; the window counts from the fetch.
    advance_to(fetched + Duration::from_secs(65) - MS).await;
    let last = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!((last.x_cache(), &last.json), ("STALE", &good.json));
    let calls_before = gw.sandbox.calls(GET_ALL_ROBOTS);
    advance_to(fetched + Duration::from_secs(65)).await;
    let failed = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!(
        (failed.status, failed.x_cache(), failed.error_code()),
        (StatusCode::OK, "MISS", 10002)
    );
    assert!(gw.sandbox.calls(GET_ALL_ROBOTS) > calls_before);
}

/// With the upstream gone entirely (connections refused), stale answers are served within
/// `stale_if_error` instead of a 502.
#[tokio::test(start_paused = true)]
async fn stale_if_error_covers_an_unreachable_upstream() {
    let gw = robots_cached("5s", "0s", "30s");
    let good = gw.post(GET_ALL_ROBOTS, "{}").await;
    gw.sandbox.shutdown().await;
    advance(Duration::from_secs(5)).await; // exactly ttl
    let path = format!("/v4/{GET_ALL_ROBOTS}");
    let stale = inproc::call(&gw.proxy, Method::POST, &path, "{}").await;
    assert_eq!((stale.status, stale.x_cache()), (StatusCode::OK, "STALE"));
    assert_eq!(stale.json, good.json);
}

/// An upstream error is shared with every waiter of its flight, at the instant it arrives,
/// and is not cached: the next read fetches again.
#[tokio::test(start_paused = true)]
async fn errors_are_shared_by_the_flight_and_not_cached() {
    // No retries, so one failed flight is one upstream call.
    let gw = inproc::start(Extra {
        upstream: "max_retries = 0",
        ..Extra::default()
    });
    let latency = Duration::from_secs(1);
    gw.sandbox.set_latency(latency);
    gw.sandbox.inject_error(GET_ALL_ROBOTS, 10002, 1);
    let started = Instant::now();
    let waiters: Vec<_> = (0..20)
        .map(|_| gw.spawn_post(GET_ALL_ROBOTS, "{}"))
        .collect();
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().error_code(), 10002);
    }
    assert_eq!(Instant::now(), started + latency);
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 1);
    let next = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!((next.error_code(), next.x_cache()), (0, "MISS"));
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 2);
}

/// A successful create_robot or delete_robot makes the next get_all_robots a MISS that shows
/// the change; a failed write invalidates nothing.
#[tokio::test(start_paused = true)]
async fn writes_invalidate_the_reads_they_affect() {
    let gw = inproc::start(Extra::default());
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "MISS");
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "HIT");

    let refused = gw.post(CREATE_ROBOT, r#"{"UserID":"bad"}"#).await;
    assert_eq!(refused.error_code(), 10004);
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "HIT");

    let created = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#new"}"#).await;
    assert_eq!((created.error_code(), created.x_cache()), (0, "BYPASS"));
    let after = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!(after.x_cache(), "MISS");
    assert_eq!(robots(&after), &serde_json::json!(["@RBT#new"]));

    let deleted = gw
        .post(DELETE_ROBOT, r#"{"Robot_Account":"@RBT#new"}"#)
        .await;
    assert_eq!(deleted.error_code(), 0);
    let after = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!(after.x_cache(), "MISS");
    assert_eq!(robots(&after), &serde_json::json!([]));
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 3);
}

/// A purge drops cached answers: one app's command, or all of them; an unknown app or
/// command is refused and drops nothing. (The admin endpoint in front of it: `tests/e2e.rs`.)
#[tokio::test(start_paused = true)]
async fn purge_drops_cached_answers() {
    let gw = inproc::start(Extra::default());
    gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "HIT");

    assert_eq!(gw.proxy.purge(Some("main"), Some(GET_ALL_ROBOTS)), Ok(()));
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "MISS");

    assert!(gw.proxy.purge(Some("nope"), None).is_err());
    assert!(gw.proxy.purge(None, Some("nope/nothing")).is_err());
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "HIT");

    assert_eq!(gw.proxy.purge(None, None), Ok(()));
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "MISS");
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 3);
}

/// Expired entries leave memory without any further request. Real time: moka expires entries
/// by its own clock, which cannot be paused (moka-rs/moka#522); the test polls for the state
/// change (housekeeping runs every second) and asserts no timing bound.
#[tokio::test]
async fn expired_entries_leave_memory() {
    let gw = robots_cached("50ms", "0s", "0s");
    gw.post(GET_ALL_ROBOTS, "{}").await;
    let cache = &gw.proxy.shared().cache;
    cache.run_pending_tasks().await;
    assert_eq!(cache.usage().0, 1);
    eventually("the expired entry to leave memory", || {
        cache.usage() == (0, 0)
    })
    .await;
}
