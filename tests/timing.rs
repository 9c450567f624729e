//! Timing properties, exactly: the handler in process in front of the in-process sandbox,
//! under tokio's paused time (`tests/support/inproc.rs`). Time moves only when every task
//! waits, so each assertion names the exact instant, with no margin.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::inproc::{self, InProc};
use support::*;
use tim_gateway::throttle::BudgetSpec;
use tokio::time::{advance, Instant};

const MS: Duration = Duration::from_millis(1);

/// Lets every task that can run, run; time moves by exactly 1 ms only if none can.
async fn settle() {
    tokio::time::sleep(MS).await;
}

/// Moves paused time forward to `at`.
async fn advance_to(at: Instant) {
    advance(at.saturating_duration_since(Instant::now())).await;
}

/// A handler whose get_all_robots answers are fresh for 5 s, then stale for 10 s while
/// refreshed, and served for 60 s when a refresh fails.
fn robots_cached() -> InProc {
    let tail = format!(
        r#"
[[cache.rules]]
command = "{GET_ALL_ROBOTS}"
ttl = "5s"
stale_while_revalidate = "10s"
stale_if_error = "60s"
invalidated_by = ["{CREATE_ROBOT}"]
"#
    );
    inproc::start(Extra {
        tail: &tail,
        ..Extra::default()
    })
}

fn age(answer: &Answer) -> u64 {
    answer.headers["age"].to_str().unwrap().parse().unwrap()
}

fn cache_header(answer: &Answer) -> &str {
    answer.headers["x-cache"].to_str().unwrap()
}

/// An answer is a HIT until exactly `ttl`, then STALE with exactly one background refresh,
/// after which it is a HIT again, aged from the refresh.
#[tokio::test(start_paused = true)]
async fn freshness_ends_exactly_at_ttl_and_one_refresh_follows() {
    let gw = robots_cached();
    assert_eq!(cache_header(&gw.post(GET_ALL_ROBOTS, "{}").await), "MISS");
    advance(Duration::from_secs(5) - MS).await;
    let hit = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!((cache_header(&hit), age(&hit)), ("HIT", 4));
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 1);

    advance(MS).await; // exactly ttl
    let stale = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!(cache_header(&stale), "STALE");
    assert_eq!(cache_header(&gw.post(GET_ALL_ROBOTS, "{}").await), "STALE");
    settle().await;
    assert_eq!(
        gw.sandbox.calls(GET_ALL_ROBOTS),
        2,
        "one refresh for two stale answers"
    );
    let refreshed = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!((cache_header(&refreshed), age(&refreshed)), ("HIT", 0));
}

/// A failing refresh serves the stale answer until exactly `ttl + stale_if_error`, then the
/// error goes through.
#[tokio::test(start_paused = true)]
async fn stale_if_error_ends_exactly_at_its_window() {
    let gw = robots_cached();
    let fetched = Instant::now();
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.error_code(), 0);
    advance(Duration::from_secs(15)).await; // past ttl + stale_while_revalidate
    gw.sandbox.inject_error(GET_ALL_ROBOTS, 10002, 100);
    let stale = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!(
        (cache_header(&stale), stale.error_code()),
        ("STALE", 0),
        "{:?}",
        stale.json
    );

    // Each failed refresh took its retries' back-off; the window counts from the fetch.
    advance_to(fetched + Duration::from_secs(65) - MS).await;
    let last = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!(cache_header(&last), "STALE");
    let retry_budget = gw.sandbox.calls(GET_ALL_ROBOTS);
    advance_to(fetched + Duration::from_secs(65)).await;
    let failed = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_eq!(
        (cache_header(&failed), failed.error_code()),
        ("MISS", 10002)
    );
    assert!(gw.sandbox.calls(GET_ALL_ROBOTS) > retry_budget);
}

/// 1,000 concurrent cold reads make one upstream call, and every one of them is answered at
/// the instant that call returns.
#[tokio::test(start_paused = true)]
async fn a_thousand_cold_reads_make_one_call_and_finish_together() {
    let gw = robots_cached();
    gw.sandbox.set_latency(Duration::from_millis(100));
    let started = Instant::now();
    let clients: Vec<_> = (0..1000)
        .map(|_| gw.spawn_post(GET_ALL_ROBOTS, "{}"))
        .collect();
    for client in clients {
        let answer = client.await.unwrap();
        assert_eq!((answer.status, answer.error_code()), (StatusCode::OK, 0));
    }
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 1);
}

/// Under overload, calls leave the budget in a burst and then exactly one emission interval
/// apart (GCRA), so no sliding second holds more than the budget.
#[tokio::test(start_paused = true)]
async fn throttle_spaces_calls_exactly_one_interval_apart() {
    let tail = format!("[[throttle.quotas]]\ncommand = \"{ACCOUNT_CHECK}\"\nper_second = 40\n");
    let gw = inproc::start(Extra {
        tail: &tail,
        ..Extra::default()
    });
    let t = &gw.config.throttle;
    let spec = BudgetSpec {
        quota: 40,
        safety_margin: t.safety_margin,
        burst: t.burst,
        max_wait: t.max_wait,
        max_waiters: t.max_waiters,
    };
    let (burst, rate) = (spec.burst_calls() as usize, spec.rate());
    let interval = Duration::from_secs(1) / rate;
    let started = Instant::now();
    let clients: Vec<_> = (0..rate as usize + burst)
        .map(|_| gw.spawn_post(ACCOUNT_CHECK, CHECK_BODY))
        .collect();
    for client in clients {
        assert_eq!(client.await.unwrap().error_code(), 0);
    }
    let arrivals: Vec<Duration> = gw
        .sandbox
        .requests(ACCOUNT_CHECK)
        .iter()
        .map(|r| r.received_at - started)
        .collect();
    // Each slot is GCRA's exact instant; tokio's timer wakes a sleeper at the next whole
    // millisecond, so a call leaves at most 1 ms after its slot, never before.
    let expected: Vec<Duration> = (0..arrivals.len())
        .map(|k| {
            let slot = interval * (k + 1).saturating_sub(burst) as u32;
            Duration::from_millis(slot.as_nanos().div_ceil(1_000_000) as u64)
        })
        .collect();
    assert_eq!(arrivals, expected);
    let budget = spec.budget() as usize;
    for (i, first) in arrivals.iter().enumerate() {
        let in_window = arrivals[i..]
            .iter()
            .take_while(|t| **t < *first + Duration::from_secs(1))
            .count();
        assert!(
            in_window <= budget,
            "{in_window} calls in the second from {first:?}"
        );
    }
}

/// Tencent's 60007 pauses the command for exactly `backoff_base`: the next call leaves the
/// moment the pause ends, and the 60007 itself is relayed, not retried.
#[tokio::test(start_paused = true)]
async fn frequency_limit_pauses_the_command_for_exactly_the_back_off() {
    let gw = inproc::start(Extra::default());
    let base = gw.config.throttle.backoff_base;
    gw.sandbox.inject_error(ACCOUNT_CHECK, 60007, 1);
    let started = Instant::now();
    assert_eq!(gw.post(ACCOUNT_CHECK, CHECK_BODY).await.error_code(), 60007);
    assert_eq!(gw.post(ACCOUNT_CHECK, CHECK_BODY).await.error_code(), 0);
    let arrivals: Vec<Duration> = gw
        .sandbox
        .requests(ACCOUNT_CHECK)
        .iter()
        .map(|r| r.received_at - started)
        .collect();
    assert_eq!(arrivals, [Duration::ZERO, base]);
}

/// A read that meets Tencent's 10002 is retried after a jittered delay within
/// `[base/2, base]`; a write that meets it is relayed at once.
#[tokio::test(start_paused = true)]
async fn reads_retry_within_the_jitter_bounds_and_writes_do_not() {
    let gw = inproc::start(Extra::default());
    let base = gw.config.upstream.retry_base_delay;
    gw.sandbox.inject_error(ACCOUNT_CHECK, 10002, 1);
    let started = Instant::now();
    assert_eq!(gw.post(ACCOUNT_CHECK, CHECK_BODY).await.error_code(), 0);
    let arrivals: Vec<Duration> = gw
        .sandbox
        .requests(ACCOUNT_CHECK)
        .iter()
        .map(|r| r.received_at - started)
        .collect();
    assert_eq!(arrivals.len(), 2);
    assert!(
        arrivals[1] >= base / 2 && arrivals[1] <= base,
        "{arrivals:?}"
    );

    gw.sandbox.inject_error(CREATE_ROBOT, 10002, 1);
    let write = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#retry"}"#).await;
    assert_eq!(write.error_code(), 10002);
    assert_eq!(gw.sandbox.calls(CREATE_ROBOT), 1);
}
