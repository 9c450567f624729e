//! The fleet's reservation script (`src/fleet/reserve.lua`) against a real `redis-server`: its
//! slots follow the local throttle's GCRA exactly, on Redis's clock, for every caller at once.

mod support;

use std::time::Duration;

use tim_gateway::fleet::{BudgetKeys, Gcra, ReserveScript};
use tim_gateway::throttle::BudgetSpec;

use support::redis::RedisServer;

/// The default budget of a 200/s command: budget 190, burst 9; with 25 ms of lateness allowed
/// the fleet's rate is floor(181 / 1.025) = 176/s, T = ceil(10^6 / 176) = 5682 µs.
fn gcra(max_wait: Duration) -> Gcra {
    let spec = BudgetSpec {
        quota: 200,
        safety_margin: 0.05,
        burst: 0.05,
        max_wait,
        max_waiters: 1024,
    };
    Gcra::for_fleet(&spec, Duration::from_millis(25), max_wait)
}

const T: u64 = 5682;

/// A private Redis, a connection to it and the script; `None` without `redis-server`.
async fn setup() -> Option<(
    RedisServer,
    redis::aio::MultiplexedConnection,
    ReserveScript,
)> {
    let redis = RedisServer::start()?;
    let connection = redis.connect().await;
    Some((redis, connection, ReserveScript::default()))
}

fn keys(command: &str) -> BudgetKeys {
    BudgetKeys::new("tim", 1_400_000_000, command)
}

fn micros(values: &[u64]) -> Vec<Duration> {
    values.iter().map(|&us| Duration::from_micros(us)).collect()
}

#[test]
fn the_fleet_rate_leaves_room_for_late_replies() {
    let g = gcra(Duration::from_secs(1));
    assert_eq!(g.interval_us, T);
    assert_eq!(g.tolerance_us, 8 * T);
    assert_eq!(g.max_wait_us, 1_000_000);
    assert_eq!(
        keys("openim_robot_http_svc/create_robot"),
        BudgetKeys {
            rate: "tim:{1400000000}:rl:openim_robot_http_svc/create_robot".into(),
            command_pause: "tim:{1400000000}:pause:openim_robot_http_svc/create_robot".into(),
            app_pause: "tim:{1400000000}:pause".into(),
            lockout: "tim:{1400000000}:lockout".into(),
            members: "tim:{1400000000}:members".into(),
            epoch: "tim:{1400000000}:epoch".into(),
            ctl: "tim:{1400000000}:ctl".into(),
        }
    );
}

/// One call grants a batch of consecutive slots: the burst at once, then one every T.
#[tokio::test]
async fn a_batch_is_the_burst_then_one_slot_per_interval() {
    let Some((_redis, mut connection, script)) = setup().await else {
        return;
    };
    let got = script
        .reserve(
            &mut connection,
            &keys("a/batch"),
            &gcra(Duration::from_secs(1)),
            16,
            1,
            0,
        )
        .await
        .unwrap();
    let mut expected = vec![0; 9];
    expected.extend((1..=7).map(|i| i * T));
    assert_eq!(got.slots, micros(&expected));
    assert_eq!(got.retry_after, Duration::ZERO);
    assert_eq!(got.blocked_for, Duration::ZERO);
}

/// Slots past `max_wait` are not granted; the reply says when the next one would be. A slow
/// budget (one slot a second, no burst), so that the second call sees the same next slot
/// however slow the machine is.
#[tokio::test]
async fn slots_past_the_wait_limit_are_refused_with_retry_after() {
    let Some((_redis, mut connection, script)) = setup().await else {
        return;
    };
    let slow = Gcra {
        interval_us: 1_000_000,
        tolerance_us: 0,
        max_wait_us: 2_000_000,
        replicas: 0,
    };
    let got = script
        .reserve(&mut connection, &keys("a/wait"), &slow, 5, 1, 0)
        .await
        .unwrap();
    assert_eq!(got.slots, micros(&[0, 1_000_000, 2_000_000]));
    assert_eq!(got.retry_after, Duration::from_secs(3));
    // A refused slot reserves nothing: asking again finds the same next slot, 3 s after the
    // first call's `now`.
    let again = script
        .reserve(&mut connection, &keys("a/wait"), &slow, 1, 1, 0)
        .await
        .unwrap();
    assert!(again.slots.is_empty());
    let moved = Duration::from_micros(again.now_us - got.now_us);
    assert_eq!(again.retry_after, Duration::from_secs(3) - moved);
}

/// All or nothing: with 3 slots within the wait limit, a call that needs at least 4 takes
/// none and says where the first free slot is; one that needs 3 takes them.
#[tokio::test]
async fn a_batch_smaller_than_needed_takes_nothing() {
    let Some((_redis, mut connection, script)) = setup().await else {
        return;
    };
    let slow = Gcra {
        interval_us: 1_000_000,
        tolerance_us: 0,
        max_wait_us: 2_000_000,
        replicas: 0,
    };
    let budget = keys("a/least");
    let none = script
        .reserve(&mut connection, &budget, &slow, 4, 4, 0)
        .await
        .unwrap();
    assert!(none.slots.is_empty());
    assert_eq!(
        none.retry_after,
        Duration::ZERO,
        "the first free slot is now"
    );
    let three = script
        .reserve(&mut connection, &budget, &slow, 4, 3, 0)
        .await
        .unwrap();
    assert_eq!(
        three.slots,
        micros(&[0, 1_000_000, 2_000_000]),
        "nothing was reserved by the call that took nothing"
    );
}

/// Calls made without Redis's accounting (after a reconnect) are charged before any grant.
#[tokio::test]
async fn debt_is_charged_before_the_next_slot() {
    let Some((_redis, mut connection, script)) = setup().await else {
        return;
    };
    let got = script
        .reserve(
            &mut connection,
            &keys("a/debt"),
            &gcra(Duration::from_secs(1)),
            1,
            1,
            20,
        )
        .await
        .unwrap();
    // tat = now + 20 T; the first slot is tat − tolerance = now + 12 T.
    assert_eq!(got.slots, micros(&[12 * T]));
}

/// Debt charged again and again (each reply lost after the script ran, as with a slow Redis)
/// pushes the timeline no further than a second plus the burst ahead: the first slot after
/// ten charges of 100 calls is then (1 s + tolerance) − tolerance = 1 s away.
#[tokio::test]
async fn repeated_debt_is_capped_at_a_second_ahead() {
    let Some((_redis, mut connection, script)) = setup().await else {
        return;
    };
    for _ in 0..10 {
        script
            .reserve(
                &mut connection,
                &keys("a/debt"),
                &gcra(Duration::from_secs(1)),
                0,
                1,
                100,
            )
            .await
            .unwrap();
    }
    let got = script
        .reserve(
            &mut connection,
            &keys("a/debt"),
            &gcra(Duration::from_secs(2)),
            1,
            1,
            0,
        )
        .await
        .unwrap();
    let first = got.slots[0];
    // Measured from Redis's now at this call, a few hundred µs after the charges.
    assert!(
        first <= Duration::from_secs(1) && first >= Duration::from_millis(990),
        "{first:?}"
    );
}

/// The lease guard: with three expected replicas, one suspect member (heard from 10 s ago,
/// not within 3 s) slows the timeline to two thirds of the rate (T × 3/2), two suspects to a
/// third; the first use after Redis lost its state (no epoch) counts the members it does not
/// know of as suspects.
#[tokio::test]
async fn suspect_members_slow_the_timeline_by_their_shares() {
    let Some((_redis, mut connection, script)) = setup().await else {
        return;
    };
    let budget = keys("a/lease");
    let now_ms: u64 = {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut connection)
            .await
            .unwrap();
        secs * 1000 + micros / 1000
    };
    let guarded = Gcra {
        replicas: 3,
        ..gcra(Duration::from_secs(1))
    };
    // A fleet that has been up for a minute: its epoch is old.
    let _: () = redis::cmd("SET")
        .arg(&budget.epoch)
        .arg(now_ms - 120_000)
        .query_async(&mut connection)
        .await
        .unwrap();
    let members = |entries: &[(u64, &str)]| {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&budget.members);
        for (at, id) in entries {
            cmd.arg(*at).arg(*id);
        }
        cmd
    };
    let _: () = members(&[(now_ms, "a"), (now_ms, "b"), (now_ms - 10_000, "c")])
        .query_async(&mut connection)
        .await
        .unwrap();
    // The burst goes out at once, then one slot per (stretched) interval: slots 9 and 10 are
    // past the burst.
    let got = script
        .reserve(&mut connection, &budget, &guarded, 10, 1, 0)
        .await
        .unwrap();
    let stretched = (T * 3).div_ceil(2); // ceil(T × 3 / 2)
    assert_eq!(
        got.slots[9] - got.slots[8],
        Duration::from_micros(stretched)
    );

    // A fresh Redis (no epoch) knows only "a": two of three are counted suspects.
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: () = members(&[(now_ms, "a")])
        .query_async(&mut connection)
        .await
        .unwrap();
    let got = script
        .reserve(&mut connection, &budget, &guarded, 10, 1, 0)
        .await
        .unwrap();
    assert_eq!(got.slots[9] - got.slots[8], Duration::from_micros(T * 3));
}

/// A pause of the command, a pause of the app and a lockout each hold every slot back until
/// they end, and the reply says for how long.
#[tokio::test]
async fn pauses_and_lockouts_hold_slots_back() {
    let Some((_redis, mut connection, script)) = setup().await else {
        return;
    };
    let budget = keys("a/pause");
    for (i, key) in [&budget.command_pause, &budget.app_pause, &budget.lockout]
        .into_iter()
        .enumerate()
    {
        let (secs, micros_part): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut connection)
            .await
            .unwrap();
        let until = secs * 1_000_000 + micros_part + 500_000 + i as u64;
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(until)
            .query_async(&mut connection)
            .await
            .unwrap();
        let got = script
            .reserve(
                &mut connection,
                &budget,
                &gcra(Duration::from_secs(1)),
                1,
                1,
                0,
            )
            .await
            .unwrap();
        let held = Duration::from_micros(until - got.now_us);
        assert_eq!(got.slots, vec![held], "{key}");
        assert_eq!(got.blocked_for, held, "{key}");
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&budget.rate)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}

/// Three callers on three connections reserve as fast as they can for 1.2 s of Redis's time:
/// the slots form one timeline, and the busiest sliding second holds exactly the burst plus
/// every T inside it, 9 + 175 = 184 slots (the budget is 190, Tencent's quota 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_on_many_connections_share_one_timeline() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let budget = keys("a/fleet");
    let g = gcra(Duration::from_secs(1));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut connection = redis.connect().await;
        let budget = budget.clone();
        tasks.push(tokio::spawn(async move {
            let script = ReserveScript::default();
            let mut slots = Vec::new();
            let mut started = None;
            loop {
                let got = script
                    .reserve(&mut connection, &budget, &g, 16, 1, 0)
                    .await
                    .unwrap();
                let start = *started.get_or_insert(got.now_us);
                if got.now_us > start + 1_200_000 {
                    return slots;
                }
                if got.slots.is_empty() {
                    // Reserved a second ahead already: wait for Redis's clock to move on.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                slots.extend(
                    got.slots
                        .iter()
                        .map(|offset| got.now_us + offset.as_micros() as u64),
                );
            }
        }));
    }
    let mut slots = Vec::new();
    for task in tasks {
        slots.extend(task.await.unwrap());
    }
    slots.sort_unstable();
    // The most slots in any window [t, t + 1 s), by two pointers.
    let mut busiest = 0;
    let mut first = 0;
    for last in 0..slots.len() {
        while slots[last] - slots[first] >= 1_000_000 {
            first += 1;
        }
        busiest = busiest.max(last - first + 1);
    }
    assert_eq!(busiest, 184);
    // Consecutive slots past the burst are exactly T apart: no slot was handed out twice.
    assert!(slots[9..].windows(2).all(|w| w[1] - w[0] == T), "{slots:?}");
}
