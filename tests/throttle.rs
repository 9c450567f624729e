//! The quota throttle and Tencent's back-off signals, with the handler in process in front of
//! the in-process sandbox, under tokio's paused time (`tests/support/inproc.rs`). Time moves
//! only when every task waits, so each assertion names the exact instant, with no margin.
//!
//! tokio's timer wakes a sleeper at the next whole millisecond, so a call whose exact instant
//! falls between two milliseconds leaves at the later one; the tests say so where it matters.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::inproc::{self, advance_to, settle, InProc, MS};
use support::*;
use tim_gateway::sandbox::SandboxOptions;
use tim_gateway::throttle::{BudgetSpec, LOCKOUT};
use tokio::time::{advance, Instant};

/// The gateway's error code for a throttled request (429).
const THROTTLED: i64 = 1_904_010;

/// A handler with extra TOML tables at the end of its config.
fn start_with_tail(tail: &str) -> InProc {
    inproc::start(Extra {
        tail,
        ..Extra::default()
    })
}

/// The budget the gateway builds for a command whose quota is `quota`.
fn spec(gw: &InProc, quota: u32) -> BudgetSpec {
    let t = &gw.config.throttle;
    BudgetSpec {
        quota,
        safety_margin: t.safety_margin,
        burst: t.burst,
        max_wait: t.max_wait,
        max_waiters: t.max_waiters,
    }
}

/// The instants, after `started`, at which the sandbox received `command`.
fn arrivals(gw: &InProc, command: &str, started: Instant) -> Vec<Duration> {
    gw.sandbox
        .requests(command)
        .iter()
        .map(|r| r.received_at - started)
        .collect()
}

/// GCRA's slot for the `k`-th call (from 0): `burst` calls at once, then one `interval`
/// apart; as a sleeper wakes, at the next whole millisecond.
fn slot(k: usize, spec: &BudgetSpec) -> Duration {
    let interval = Duration::from_secs(1) / spec.rate();
    let exact = interval * (k + 1).saturating_sub(spec.burst_calls() as usize) as u32;
    Duration::from_millis(exact.as_nanos().div_ceil(1_000_000) as u64)
}

/// Under overload, calls leave the budget in a burst and then exactly one emission interval
/// apart (GCRA), so no sliding second holds more than the budget.
#[tokio::test(start_paused = true)]
async fn throttle_spaces_calls_exactly_one_interval_apart() {
    let gw = start_with_tail(&format!(
        "[[throttle.quotas]]\ncommand = \"{ACCOUNT_CHECK}\"\nper_second = 40\n"
    ));
    let spec = spec(&gw, 40);
    let started = Instant::now();
    let clients: Vec<_> = (0..(spec.rate() + spec.burst_calls()))
        .map(|_| gw.spawn_post(ACCOUNT_CHECK, CHECK_BODY))
        .collect();
    for client in clients {
        assert_eq!(client.await.unwrap().error_code(), 0);
    }
    let arrivals = arrivals(&gw, ACCOUNT_CHECK, started);
    let expected: Vec<Duration> = (0..arrivals.len()).map(|k| slot(k, &spec)).collect();
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

/// Uncached traffic offered at 5× the quota for 3 s: every call that goes out leaves at its
/// exact GCRA slot, for as long as `max_wait` lets callers queue, so the sandbox (enforcing
/// the same quota as Tencent) never sees the budget exceeded and never answers 60007; every
/// other client is refused at the instant it asked, with 429 and `Retry-After`; none hangs.
#[tokio::test(start_paused = true)]
async fn overload_is_refused_at_once_and_the_budget_is_used_to_its_end() {
    const QUOTA: u32 = 50;
    let gw = inproc::start_with(
        SandboxOptions {
            quota_per_second: Some(QUOTA),
            ..inproc::sandbox_options()
        },
        Extra {
            tail: &format!(
                "[[throttle.quotas]]\ncommand = \"{ACCOUNT_CHECK}\"\nper_second = {QUOTA}\n"
            ),
            ..Extra::default()
        },
    );
    let spec = spec(&gw, QUOTA);
    let offer_interval = Duration::from_secs(1) / (5 * QUOTA);
    let started = Instant::now();
    let mut clients = Vec::new();
    let mut offered_at = started;
    while offered_at < started + Duration::from_secs(3) {
        tokio::time::sleep_until(offered_at).await;
        let proxy = std::sync::Arc::clone(&gw.proxy);
        clients.push(tokio::spawn(async move {
            let path = format!("/v4/{ACCOUNT_CHECK}");
            let answer = inproc::call(&proxy, http::Method::POST, &path, CHECK_BODY).await;
            (offered_at, answer, Instant::now())
        }));
        offered_at += offer_interval;
    }
    let offered = clients.len();
    let last_offer = offered_at - offer_interval;
    let (mut ok, mut throttled) = (0, 0);
    for client in clients {
        let (offered_at, answer, answered_at) = client.await.unwrap();
        match answer.status {
            StatusCode::OK => {
                assert_eq!(answer.error_code(), 0, "{}", answer.json);
                assert!(answered_at <= offered_at + spec.max_wait);
                ok += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(answer.error_code(), THROTTLED);
                assert_eq!(answered_at, offered_at, "refused at once");
                // The next free slot lies within one interval past the wait limit.
                assert_eq!(answer.retry_after(), spec.max_wait.as_secs() + 1);
                throttled += 1;
            }
            other => panic!("unexpected status {other}: {}", answer.json),
        }
    }
    assert_eq!(offered, 750);
    assert!(throttled > 0, "5× overload must be refused in part");

    let requests = gw.sandbox.requests(ACCOUNT_CHECK);
    assert!(
        requests.iter().all(|r| r.error_code == 0),
        "the sandbox never answered 60007"
    );
    // Every slot up to the last offer's wait limit was taken, and none after it.
    let horizon = last_offer + spec.max_wait - started;
    let interval = Duration::from_secs(1) / spec.rate();
    let slots = (0..)
        .take_while(|&k: &u32| interval * (k + 1).saturating_sub(spec.burst_calls()) <= horizon)
        .count();
    // The k-th call is the k-th offered (nobody is refused before the queue is full) and
    // leaves at its slot or, in the burst, when it was offered.
    let expected: Vec<Duration> = (0..slots)
        .map(|k| slot(k, &spec).max(offer_interval * k as u32))
        .collect();
    assert_eq!(arrivals(&gw, ACCOUNT_CHECK, started), expected);
    let span = expected[slots - 1] - expected[0];
    let average = (slots - 1) as f64 / span.as_secs_f64();
    assert!(
        average >= 0.9 * f64::from(spec.budget()),
        "average {average:.1}/s is below 90% of the budget {}",
        spec.budget()
    );
    assert_eq!(ok, slots);
    assert_eq!(ok + throttled, offered);
    assert!(gw.sandbox.max_calls_in_window(ACCOUNT_CHECK) <= u64::from(spec.budget()));
}

/// Tencent's 60007 pauses the command for exactly `backoff_base`: a caller that may wait
/// leaves the moment the pause ends, and the 60007 itself is relayed, not retried.
#[tokio::test(start_paused = true)]
async fn frequency_limit_pauses_the_command_for_exactly_the_back_off() {
    let gw = inproc::start(Extra::default());
    let base = gw.config.throttle.backoff_base;
    gw.sandbox.inject_error(ACCOUNT_CHECK, 60007, 1);
    let started = Instant::now();
    assert_eq!(gw.post(ACCOUNT_CHECK, CHECK_BODY).await.error_code(), 60007);
    assert_eq!(gw.post(ACCOUNT_CHECK, CHECK_BODY).await.error_code(), 0);
    assert_eq!(
        arrivals(&gw, ACCOUNT_CHECK, started),
        [Duration::ZERO, base]
    );
}

/// With `max_wait = 0`, a command paused by Tencent's 60007 refuses every call at once with
/// 429 and `Retry-After`, without reaching the upstream, until exactly `backoff_base` has
/// passed; other commands are not paused by a command-level signal.
#[tokio::test(start_paused = true)]
async fn a_paused_command_is_refused_at_once_until_the_back_off_ends() {
    let gw = start_with_tail("[throttle]\nmax_wait = \"0s\"\nbackoff_base = \"500ms\"\n");
    gw.sandbox.inject_error(CREATE_ROBOT, 60007, 1);
    let limited_at = Instant::now();
    let limited = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#a"}"#).await;
    assert_eq!(limited.error_code(), 60007, "Tencent's answer is relayed");

    let paused = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#a"}"#).await;
    assert_eq!(
        (paused.status, paused.error_code(), paused.retry_after()),
        (StatusCode::TOO_MANY_REQUESTS, THROTTLED, 1)
    );
    assert_eq!(gw.post(ACCOUNT_CHECK, CHECK_BODY).await.error_code(), 0);

    advance_to(limited_at + Duration::from_millis(500) - MS).await;
    let still = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#a"}"#).await;
    assert_eq!(still.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(gw.sandbox.calls(CREATE_ROBOT), 1);
    advance(MS).await; // exactly the back-off
    let resumed = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#a"}"#).await;
    assert_eq!(resumed.error_code(), 0);
}

/// Tencent's 70050 stops every call of that app for exactly `LOCKOUT` (Tencent's 60 s plus
/// a second): other commands get 503 with that `Retry-After` and the upstream sees nothing
/// more until the lockout ends.
#[tokio::test(start_paused = true)]
async fn lockout_stops_the_whole_app_until_it_ends() {
    let gw = start_with_tail("[throttle]\nmax_wait = \"0s\"\n");
    gw.sandbox.inject_error(ACCOUNT_CHECK, 70050, 1);
    let locked_at = Instant::now();
    assert_eq!(gw.post(ACCOUNT_CHECK, CHECK_BODY).await.error_code(), 70050);
    let locked = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#b"}"#).await;
    assert_eq!(
        (locked.status, locked.error_code(), locked.retry_after()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            1_905_006,
            LOCKOUT.as_secs()
        )
    );
    advance_to(locked_at + LOCKOUT - MS).await;
    let still = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#b"}"#).await;
    assert_eq!(
        (still.status, still.retry_after()),
        (StatusCode::SERVICE_UNAVAILABLE, 1)
    );
    assert_eq!(gw.sandbox.total_calls(), 1);
    advance(MS).await;
    let after = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#b"}"#).await;
    assert_eq!(after.error_code(), 0);
}

/// Tencent's 60011 (the app's overall frequency limit) pauses every command of the app for
/// exactly `backoff_base`.
#[tokio::test(start_paused = true)]
async fn app_frequency_limit_pauses_every_command() {
    let gw = start_with_tail("[throttle]\nmax_wait = \"0s\"\nbackoff_base = \"5s\"\n");
    gw.sandbox.inject_error(ACCOUNT_CHECK, 60011, 1);
    let limited_at = Instant::now();
    assert_eq!(gw.post(ACCOUNT_CHECK, CHECK_BODY).await.error_code(), 60011);
    let paused = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#c"}"#).await;
    assert_eq!(
        (paused.status, paused.retry_after()),
        (StatusCode::TOO_MANY_REQUESTS, 5)
    );
    advance_to(limited_at + Duration::from_secs(5) - MS).await;
    let still = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#c"}"#).await;
    assert_eq!(still.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(gw.sandbox.total_calls(), 1);
    advance(MS).await;
    let after = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#c"}"#).await;
    assert_eq!(after.error_code(), 0);
}

/// Reads are retried on Tencent's internal errors, each after a jittered delay within
/// `[d/2, d]`, `d = retry_base_delay × 2^retry`, and at most `max_retries` times; writes
/// that reached Tencent are relayed at once.
#[tokio::test(start_paused = true)]
async fn internal_errors_retry_reads_within_the_jitter_bounds_but_not_writes() {
    let gw = inproc::start(Extra::default());
    let base = gw.config.upstream.retry_base_delay;
    gw.sandbox.inject_error(ACCOUNT_CHECK, 10002, 2);
    let started = Instant::now();
    let read = gw.post(ACCOUNT_CHECK, CHECK_BODY).await;
    assert_eq!(read.error_code(), 0);
    let arrivals = arrivals(&gw, ACCOUNT_CHECK, started);
    assert_eq!(arrivals.len(), 3, "two retries (max_retries = 2)");
    // Both bounds are whole milliseconds, so rounding a wake-up up keeps it inside them.
    for (retry, pair) in arrivals.windows(2).enumerate() {
        let ceiling = base * (1 << retry);
        let delay = pair[1] - pair[0];
        assert!(
            delay >= ceiling / 2 && delay <= ceiling,
            "retry {retry}: {arrivals:?}"
        );
    }

    gw.sandbox.inject_error(ACCOUNT_CHECK, 70500, 5);
    let exhausted = gw.post(ACCOUNT_CHECK, CHECK_BODY).await;
    assert_eq!(exhausted.error_code(), 70500);
    assert_eq!(
        gw.sandbox.calls(ACCOUNT_CHECK),
        6,
        "one try and two retries, then Tencent's answer"
    );

    gw.sandbox.inject_error(CREATE_ROBOT, 10002, 1);
    let write_at = Instant::now();
    let write = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#d"}"#).await;
    assert_eq!(write.error_code(), 10002);
    assert_eq!(Instant::now(), write_at);
    assert_eq!(gw.sandbox.calls(CREATE_ROBOT), 1);
}

/// A cached read keeps being served (STALE) while Tencent answers frequency limits: one
/// 60007, then the command is paused and the next stale answers cost no upstream call.
#[tokio::test(start_paused = true)]
async fn frequency_limited_reads_serve_stale() {
    let gw = start_with_tail(&format!(
        "[[cache.rules]]\ncommand = \"{GET_ALL_ROBOTS}\"\nttl = \"1s\"\nstale_if_error = \"60s\"\n"
    ));
    let good = gw.post(GET_ALL_ROBOTS, "{}").await;
    gw.sandbox.inject_error(GET_ALL_ROBOTS, 60007, 100);
    advance(Duration::from_secs(1)).await; // exactly ttl
    for _ in 0..3 {
        let stale = gw.post(GET_ALL_ROBOTS, "{}").await;
        assert_eq!(stale.x_cache(), "STALE");
        assert_eq!(stale.json, good.json);
        settle().await;
    }
    assert_eq!(gw.sandbox.calls(GET_ALL_ROBOTS), 2);
}
