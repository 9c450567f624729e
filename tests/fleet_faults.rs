//! Fleet mode's fault matrix (design/fleet.md §5) with real processes: three `tim-gateway
//! serve` processes on one `redis-server`, in front of one sandbox that records every call's
//! arrival, under open-loop overload. Redis killed, restarted empty, paused and with its
//! script cache flushed are in `tests/fleet.rs` and `tests/fleet_budget.rs`; these are the
//! rest: Redis slow, Redis full, a 60007 seen by one gateway, one gateway cut off.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use support::fleet::{calls_between, drive, fleet, total, warm_up, CHECK};
use support::redis::RedisServer;
use support::{metrics_text, post, start_sandbox, ACCOUNT_CHECK};

/// One test at a time: each runs three gateways flat out on a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Redis slow, not dead: `DEBUG SLEEP 0.1` back to back for 1.5 s (every command waits up to
/// 100 ms, twice `fleet.command_timeout`). The gateways count timeouts, throw late replies
/// away and fail closed: clients get only 200 and 429, no second at the upstream reaches the
/// quota, and once Redis is fast again the calls resume by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_fails_closed_then_recovers() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let gateways = support::fleet::fleet_of_three(&sandbox, &redis.url(), "share");
    warm_up(&gateways).await;
    let start = Instant::now();
    let (slow_from, slow_to) = (
        start + Duration::from_millis(1000),
        start + Duration::from_millis(2500),
    );
    let mut connection = redis.connect().await;
    let sleeper = tokio::spawn(async move {
        tokio::time::sleep_until(slow_from).await;
        while Instant::now() < slow_to {
            let _: () = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg("0.1")
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    });
    let counts = drive(&gateways, start + Duration::from_secs(5)).await;
    sleeper.await.unwrap();
    let buckets: Vec<usize> = (0..20)
        .map(|i| {
            let from = start + Duration::from_millis(250 * i);
            calls_between(&sandbox, from, from + Duration::from_millis(250))
        })
        .collect();
    eprintln!("calls per 250 ms: {buckets:?}");
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let busiest = sandbox.max_calls_in_window(ACCOUNT_CHECK);
    let after = calls_between(
        &sandbox,
        start + Duration::from_secs(4),
        start + Duration::from_secs(5),
    );
    // A reply later than fleet.command_timeout: redis-rs's own response timeout (the same
    // value) may answer first, as an error; a reply within it but after max_lateness is late.
    let timeouts = total(&gateways, "tim_gateway_redis_errors_total{").await;
    for gateway in &gateways {
        let text = metrics_text(gateway.admin).await;
        for line in text
            .lines()
            .filter(|l| l.starts_with("tim_gateway_redis_errors_total{"))
        {
            if !line.ends_with(" 0") {
                eprintln!("{line}");
            }
        }
    }
    eprintln!(
        "{ok} ok, {throttled} throttled, {tencent_error} Tencent errors, {other} other; \
         busiest second {busiest}; {after} calls in the last second; {timeouts} timeouts"
    );
    assert_eq!((tencent_error, other), (0, 0), "only 200 and 429");
    assert!(busiest < 100, "{busiest} calls in one second");
    assert!(timeouts > 0.0, "the slow replies were counted");
    // The fleet rate is 88/s: most of the last second's slots were used again.
    assert!(
        after >= 44,
        "{after} calls in the second after Redis recovered"
    );
}

/// Redis full (`maxmemory` below what it uses, `noeviction`): the scripts' writes fail with
/// OOM, the gateways count errors and fail closed; once memory is raised, calls resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_fails_closed_then_recovers() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let gateways = support::fleet::fleet_of_three(&sandbox, &redis.url(), "share");
    warm_up(&gateways).await;
    let start = Instant::now();
    let (full_from, full_to) = (
        start + Duration::from_millis(1000),
        start + Duration::from_millis(2500),
    );
    let mut connection = redis.connect().await;
    let filler = tokio::spawn(async move {
        tokio::time::sleep_until(full_from).await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("1")
            .query_async(&mut connection)
            .await
            .unwrap();
        tokio::time::sleep_until(full_to).await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("0")
            .query_async(&mut connection)
            .await
            .unwrap();
    });
    let counts = drive(&gateways, start + Duration::from_secs(4)).await;
    filler.await.unwrap();
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let busiest = sandbox.max_calls_in_window(ACCOUNT_CHECK);
    // Slots reserved before Redis filled (at most 250 ms ahead) may still be used, sent late on
    // a loaded machine: the last half second of it.
    let while_full = calls_between(&sandbox, full_from + Duration::from_millis(1000), full_to);
    let after = calls_between(
        &sandbox,
        full_to + Duration::from_millis(500),
        start + Duration::from_secs(4),
    );
    let errors = total(
        &gateways,
        r#"tim_gateway_redis_errors_total{kind="error",op="reserve"}"#,
    )
    .await;
    eprintln!(
        "{ok} ok, {throttled} throttled, {tencent_error} Tencent errors, {other} other; \
         busiest second {busiest}; {while_full} calls while full, {after} after; {errors} errors"
    );
    assert_eq!((tencent_error, other), (0, 0), "only 200 and 429");
    assert!(busiest < 100, "{busiest} calls in one second");
    assert_eq!(while_full, 0, "no call while Redis refused every write");
    assert!(errors > 0.0, "the refused scripts were counted");
    assert!(
        after >= 44,
        "{after} calls in the second after Redis had room again"
    );
}

/// One 60007 answered to whichever gateway calls next: every gateway pauses the command
/// (through Redis, and at once through its `ctl` message, which voids the slots the others
/// hold), so from 100 ms after that call (the message's way through Redis on a loaded
/// machine) no call reaches the upstream until the 1 s back-off ends; then the calls resume,
/// and the busiest second stays under the quota (no burst after the pause).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frequency_limit_seen_by_one_gateway_pauses_them_all() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = Arc::new(start_sandbox().await);
    let gateways = support::fleet::fleet_of_three(&sandbox, &redis.url(), "share");
    warm_up(&gateways).await;
    let start = Instant::now();
    let injector = {
        let sandbox = Arc::clone(&sandbox);
        tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_millis(1000)).await;
            sandbox.inject_error(ACCOUNT_CHECK, 60007, 1);
        })
    };
    let counts = drive(&gateways, start + Duration::from_secs(4)).await;
    injector.await.unwrap();
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    // The call that was answered 60007: the first after the injection.
    let requests = sandbox.requests(ACCOUNT_CHECK);
    let limited = requests
        .iter()
        .map(|r| r.received_at)
        .find(|at| *at >= start + Duration::from_millis(1000))
        .expect("a call after the injection");
    let paused = calls_between(
        &sandbox,
        limited + Duration::from_millis(100),
        limited + Duration::from_millis(1000),
    );
    let busiest = sandbox.max_calls_in_window(ACCOUNT_CHECK);
    let after = calls_between(
        &sandbox,
        limited + Duration::from_millis(1500),
        start + Duration::from_secs(4),
    );
    eprintln!(
        "{ok} ok, {throttled} throttled, {tencent_error} Tencent errors, {other} other; \
         {paused} calls during the pause, {after} after; busiest second {busiest}"
    );
    assert_eq!(tencent_error, 1, "the one 60007 reached its client");
    assert_eq!(other, 0);
    assert_eq!(paused, 0, "a gateway called during the fleet's pause");
    assert!(busiest < 100, "{busiest} calls in one second");
    assert!(after >= 44, "{after} calls once the pause was over");
}

/// One gateway cut off from Redis by a partition (no reset, no close: its commands just get
/// no answer) while the other two are not: in `closed` mode the cut-off gateway makes no call
/// from shortly after the cut (the slots it reserved before, at most 250 ms ahead, may still
/// be used), its clients get 429, the other two keep the fleet's rate between them, and the
/// busiest second stays under the quota; once the network is back it calls again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cut_off_from_redis_fails_closed_alone() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let relay = support::partition::Relay::start(&redis.socket());
    let sandbox = start_sandbox().await;
    let gateways = fleet(&sandbox, &[relay.url(), redis.url(), redis.url()], "closed");
    warm_up(&gateways).await;
    let cut_off = gateways[0].addr;
    let start = Instant::now();
    let (cut_from, cut_to) = (
        start + Duration::from_millis(1000),
        start + Duration::from_millis(3000),
    );
    let cutter = {
        let relay = Arc::new(relay);
        let for_task = Arc::clone(&relay);
        (
            tokio::spawn(async move {
                tokio::time::sleep_until(cut_from).await;
                for_task.set_cut(true);
                tokio::time::sleep_until(cut_to).await;
                for_task.set_cut(false);
            }),
            relay,
        )
    };
    // Count the cut-off gateway's answers apart: its clients only.
    let alone = tokio::spawn(async move {
        let mut answers = Vec::new();
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        while Instant::now() < start + Duration::from_secs(5) {
            ticks.tick().await;
            let sent = Instant::now();
            answers.push((sent, tokio::spawn(post(cut_off, ACCOUNT_CHECK, CHECK))));
        }
        let mut seen = Vec::new();
        for (sent, answer) in answers {
            seen.push((sent, answer.await.unwrap().status.as_u16()));
        }
        seen
    });
    let counts = drive(&gateways[1..], start + Duration::from_secs(5)).await;
    cutter.0.await.unwrap();
    let alone = alone.await.unwrap();
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let busiest = sandbox.max_calls_in_window(ACCOUNT_CHECK);
    // The cut-off gateway's clients, sent well inside the cut: refused.
    let inside: Vec<u16> = alone
        .iter()
        .filter(|(sent, _)| {
            *sent >= cut_from + Duration::from_millis(500)
                && *sent < cut_to - Duration::from_millis(100)
        })
        .map(|(_, status)| *status)
        .collect();
    let during = calls_between(&sandbox, cut_from + Duration::from_millis(500), cut_to);
    let after_ok = alone
        .iter()
        .filter(|(sent, status)| *sent >= cut_to + Duration::from_millis(1000) && *status == 200)
        .count();
    eprintln!(
        "others: {ok} ok, {throttled} throttled, {tencent_error} Tencent errors, {other} other; \
         cut-off gateway: {} answers inside the cut, all 429: {}, {after_ok} ok after it; \
         {during} calls during the cut; busiest second {busiest}",
        inside.len(),
        inside.iter().all(|s| *s == 429)
    );
    assert_eq!((tencent_error, other), (0, 0), "only 200 and 429");
    assert!(alone.iter().all(|(_, status)| [200, 429].contains(status)));
    assert!(
        !inside.is_empty() && inside.iter().all(|s| *s == 429),
        "{inside:?}"
    );
    assert!(busiest < 100, "{busiest} calls in one second");
    // The other two keep the fleet's rate (88/s) during the cut: at least 85% of 1.5 s of it.
    assert!(
        during as f64 >= 0.85 * 88.0 * 1.5,
        "{during} calls during the cut"
    );
    assert!(
        after_ok > 0,
        "the cut-off gateway did not call again after the cut"
    );
}

/// The lease-guarded share (`fleet.fallback = "share"`, design/fleet.md §4.5): one gateway of
/// three cut off from Redis fails closed until the others must count it a suspect and have
/// slowed their timeline by its share (3 s after Redis may last have recorded its heartbeat,
/// plus the 250 ms look-ahead and 25 ms of lateness, plus a second), then calls on its own at
/// a third of the fleet's rate
/// (floor(88 / 3) = 29 calls in any second); the others keep two thirds between them; when the
/// network heals it is back on Redis; the busiest second at the upstream stays under the
/// quota throughout, the heal included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cut_off_from_redis_shares_after_the_guard() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let relay = Arc::new(support::partition::Relay::start(&redis.socket()));
    let sandbox = start_sandbox().await;
    let gateways = fleet(&sandbox, &[relay.url(), redis.url(), redis.url()], "share");
    warm_up(&gateways).await;
    // Every gateway has sent heartbeats (one a second) before the cut.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut_off = gateways[0].addr;
    let start = Instant::now();
    let end = start + Duration::from_secs(13);
    let cut_from = start + Duration::from_millis(500);
    let healed = cut_from + Duration::from_millis(9500);
    let mode = r#"tim_gateway_throttle_mode{app="main",command="im_open_login_svc/account_check"}"#;
    let cutter = {
        let relay = Arc::clone(&relay);
        let admin = gateways[0].admin;
        tokio::spawn(async move {
            tokio::time::sleep_until(cut_from).await;
            relay.set_cut(true);
            // Its mode while it shares.
            tokio::time::sleep_until(cut_from + Duration::from_secs(8)).await;
            let sharing = metrics_text(admin).await;
            tokio::time::sleep_until(healed).await;
            relay.set_cut(false);
            sharing
        })
    };
    let alone = tokio::spawn(async move {
        let mut answers = Vec::new();
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        while Instant::now() < end {
            ticks.tick().await;
            answers.push((
                Instant::now(),
                tokio::spawn(async move {
                    let answer = post(cut_off, ACCOUNT_CHECK, CHECK).await;
                    (Instant::now(), answer.status.as_u16())
                }),
            ));
        }
        let mut seen = Vec::new();
        for (sent, answer) in answers {
            let (answered, status) = answer.await.unwrap();
            seen.push((sent, answered, status));
        }
        seen
    });
    let counts = drive(&gateways[1..], end).await;
    let sharing = cutter.await.unwrap();
    let alone = alone.await.unwrap();
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let busiest = sandbox.max_calls_in_window(ACCOUNT_CHECK);
    let ok_between = |from: Duration, to: Duration| {
        alone
            .iter()
            .filter(|(_, answered, status)| {
                *status == 200 && *answered >= cut_from + from && *answered < cut_from + to
            })
            .count()
    };
    // Answered OK (called upstream) in the guard: from the cut's first reservations to 3 s
    // after (its last heartbeat was at most a second before the cut, so the guard ends
    // Answered OK (called upstream) in the guard: from the cut's first reservations to
    // 3.25 s after. Redis may have recorded this gateway's heartbeat until the fence of its
    // last beat (sent less than a second before the cut, or the one after it, which goes
    // unanswered: then it only probes), plus 50 ms; the guard is 4.28 s more.
    let guarded = ok_between(Duration::from_millis(500), Duration::from_millis(3250));
    // The share: from 6.5 s after the cut (the guard is over by 1 + 0.05 + 4.28 = 5.33 s),
    // 3 s of it.
    let shared = ok_between(Duration::from_millis(6500), Duration::from_millis(9500));
    let mode_in = |text: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(mode)?.strip_prefix(' '))
            .unwrap()
            .parse()
            .unwrap()
    };
    let cut_off_mode = mode_in(&sharing);
    // Healed: back on Redis within the 3 s the load goes on after it.
    let back = mode_in(&metrics_text(gateways[0].admin).await);
    let after_heal = ok_between(Duration::from_millis(9_500), Duration::from_millis(12_500));
    eprintln!(
        "others: {ok} ok, {throttled} throttled, {tencent_error} Tencent errors, {other} other; \
         cut-off gateway: {guarded} ok in the guard, {shared} ok in 3 s of share (mode \
         {cut_off_mode}), mode {back} and {after_heal} ok in the 3 s after the heal; busiest \
         second {busiest}"
    );
    assert_eq!((tencent_error, other), (0, 0), "only 200 and 429");
    assert!(alone
        .iter()
        .all(|(_, _, status)| [200, 429].contains(status)));
    assert_eq!(guarded, 0, "a call during the guard");
    assert!(shared > 0, "the cut-off gateway never shared");
    assert!(
        shared <= 3 * 29 + 1,
        "{shared} calls in 3 s at a share of 29/s"
    );
    assert_eq!(cut_off_mode, 3.0, "share");
    assert_eq!(back, 1.0, "back on Redis after the heal");
    assert!(after_heal > 0);
    assert!(busiest < 100, "{busiest} calls in one second");
}

/// Redis restarted empty on the same socket in the middle of the load (a restart without
/// persistence, or a failover that lost writes): the gateways reconnect, reload their scripts,
/// re-charge their last second of calls, and count the members they have not heard from yet
/// as suspects; clients get only 200 and 429, and the busiest second stays under the quota
/// across the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_opens_no_burst() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let gateways = support::fleet::fleet_of_three(&sandbox, &redis.url(), "share");
    warm_up(&gateways).await;
    let start = Instant::now();
    let restart_at = start + Duration::from_millis(1500);
    let socket = redis.socket();
    let restarter = tokio::spawn(async move {
        tokio::time::sleep_until(restart_at).await;
        drop(redis);
        RedisServer::start_at(&socket)
    });
    let counts = drive(&gateways, start + Duration::from_secs(5)).await;
    let _restarted = restarter.await.unwrap();
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let busiest = sandbox.max_calls_in_window(ACCOUNT_CHECK);
    let last = calls_between(
        &sandbox,
        start + Duration::from_secs(4),
        start + Duration::from_secs(5),
    );
    let charged = total(&gateways, "tim_gateway_throttle_debt_charged_total").await;
    eprintln!(
        "{ok} ok, {throttled} throttled, {tencent_error} Tencent errors, {other} other; \
         busiest second {busiest}; {last} calls in the last second; {charged} calls re-charged"
    );
    assert_eq!((tencent_error, other), (0, 0), "only 200 and 429");
    assert!(busiest < 100, "{busiest} calls in one second");
    assert!(
        charged > 0.0,
        "the calls before the restart were re-charged"
    );
    assert!(last >= 44, "{last} calls in the last second");
}

/// `CLIENT PAUSE 1500 ALL`: every command waits, as in a failover or a long fork. The
/// reservations time out at 50 ms (their late replies are thrown away when Redis runs them),
/// clients get only 200 and 429, the busiest second stays under the quota, and calls resume
/// by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_fails_closed_then_recovers() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let gateways = support::fleet::fleet_of_three(&sandbox, &redis.url(), "share");
    warm_up(&gateways).await;
    let start = Instant::now();
    let mut connection = redis.connect().await;
    let pauser = tokio::spawn(async move {
        tokio::time::sleep_until(start + Duration::from_millis(1000)).await;
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1500)
            .arg("ALL")
            .query_async(&mut connection)
            .await
            .unwrap();
    });
    let counts = drive(&gateways, start + Duration::from_secs(5)).await;
    pauser.await.unwrap();
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let busiest = sandbox.max_calls_in_window(ACCOUNT_CHECK);
    let paused = calls_between(
        &sandbox,
        start + Duration::from_millis(1500),
        start + Duration::from_millis(2500),
    );
    let last = calls_between(
        &sandbox,
        start + Duration::from_secs(4),
        start + Duration::from_secs(5),
    );
    eprintln!(
        "{ok} ok, {throttled} throttled, {tencent_error} Tencent errors, {other} other; \
         busiest second {busiest}; {paused} calls while paused; {last} in the last second"
    );
    assert_eq!((tencent_error, other), (0, 0), "only 200 and 429");
    assert!(busiest < 100, "{busiest} calls in one second");
    assert_eq!(paused, 0, "a call went out while Redis was paused");
    assert!(last >= 44, "{last} calls in the last second");
}

/// `SCRIPT FLUSH` mid-load (as after a failover to a replica without the scripts): redis-rs
/// reloads a script on NOSCRIPT by itself, so clients see nothing, at most one command per
/// flush fails, and the fleet keeps its rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_changes_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let gateways = support::fleet::fleet_of_three(&sandbox, &redis.url(), "share");
    warm_up(&gateways).await;
    let start = Instant::now();
    let mut connection = redis.connect().await;
    let flusher = tokio::spawn(async move {
        for at in [1000, 1500, 2000] {
            tokio::time::sleep_until(start + Duration::from_millis(at)).await;
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    });
    let counts = drive(&gateways, start + Duration::from_secs(3)).await;
    flusher.await.unwrap();
    let [ok, throttled, tencent_error, other] =
        counts.each_ref().map(|c| c.load(Ordering::Relaxed));
    let during = calls_between(
        &sandbox,
        start + Duration::from_millis(1000),
        start + Duration::from_millis(2500),
    );
    let errors = total(&gateways, r#"tim_gateway_redis_errors_total{kind="error""#).await;
    eprintln!(
        "{ok} ok, {throttled} throttled, {tencent_error} Tencent errors, {other} other; \
         {during} calls in the 1.5 s of flushes; {errors} Redis errors"
    );
    assert_eq!((tencent_error, other), (0, 0), "only 200 and 429");
    // redis-rs reloads a script on NOSCRIPT and retries once; a flush that lands between the
    // two fails that one command (seen: one in a run), which costs its batch, not the fleet.
    assert!(errors <= 3.0, "{errors} Redis errors for three flushes");
    assert!(
        during as f64 >= 0.85 * 88.0 * 1.5,
        "{during} calls in 1.5 s"
    );
}
