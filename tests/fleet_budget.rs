//! One budget shared by two "gateways" (two `FleetBudget`s with their own Redis connections)
//! through a real `redis-server`: FIFO callers, batched reservations, failures refused as
//! `RedisUnavailable`, and the re-charge after a failure.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tim_gateway::fleet::{BudgetKeys, FleetBudget, FleetMetrics, FleetTiming, Refusal};
use tim_gateway::throttle::BudgetSpec;
use tokio::time::Instant;

use support::redis::RedisServer;

const T: u64 = 5682;

fn spec() -> BudgetSpec {
    BudgetSpec {
        quota: 200,
        safety_margin: 0.05,
        burst: 0.05,
        max_wait: Duration::from_secs(1),
        max_waiters: 1024,
    }
}

fn timing() -> FleetTiming {
    FleetTiming {
        command_timeout: Duration::from_millis(50),
        max_lateness: Duration::from_millis(25),
        expected_replicas: 0,
        is_sharing: false,
    }
}

fn keys() -> BudgetKeys {
    BudgetKeys::new("tim", 1_400_000_000, "openim_robot_http_svc/create_robot")
}

async fn budget(redis: &RedisServer) -> Arc<FleetBudget<ConnectionManager>> {
    let client = redis::Client::open(redis.url()).unwrap();
    let connection = ConnectionManager::new(client).await.unwrap();
    Arc::new(FleetBudget::new(
        keys(),
        spec(),
        timing(),
        connection,
        Arc::new(FleetMetrics::unregistered()),
    ))
}

/// A slot of `gateway` for a caller that may wait up to a second.
async fn within_a_second(
    gateway: &Arc<FleetBudget<ConnectionManager>>,
) -> Result<Duration, Refusal> {
    gateway
        .acquire(Instant::now() + Duration::from_secs(1))
        .await
}

/// A slot, once Redis answers again (the connection manager reconnects in the background;
/// until then calls fail): at most 100 attempts, 20 ms apart.
async fn once_redis_answers(gateway: &Arc<FleetBudget<ConnectionManager>>) -> Duration {
    for _ in 0..100 {
        match within_a_second(gateway).await {
            Ok(waited) => return waited,
            Err(Refusal::RedisUnavailable) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(other) => panic!("{other:?}"),
        }
    }
    panic!("Redis did not answer again within 100 attempts");
}

/// Most instants in any window [t, t + 1 s), by two pointers over sorted instants.
fn busiest_second(mut at: Vec<Instant>) -> usize {
    at.sort_unstable();
    let (mut busiest, mut first) = (0, 0);
    for last in 0..at.len() {
        while at[last] - at[first] >= Duration::from_secs(1) {
            first += 1;
        }
        busiest = busiest.max(last - first + 1);
    }
    busiest
}

/// 2 × 100 callers, five times what the budget allows, for 2 s: the grants of both gateways
/// together never hold more than the budget (190, below Tencent's 200) in a sliding second,
/// come at no less than 85% of the fleet rate (176/s), and Redis sees at most one call per
/// four grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_keep_one_budget() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let gateways = [budget(&redis).await, budget(&redis).await];
    let granted = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let end = started + Duration::from_secs(2);
    let mut callers = Vec::new();
    for gateway in &gateways {
        for _ in 0..100 {
            let gateway = Arc::clone(gateway);
            let granted = Arc::clone(&granted);
            callers.push(tokio::spawn(async move {
                let mut refused = 0u32;
                while Instant::now() < end {
                    match gateway.acquire(end).await {
                        Ok(_) if Instant::now() < end => {
                            granted.lock().unwrap().push(Instant::now())
                        }
                        Ok(_) => {}
                        Err(Refusal::Throttled(error)) => {
                            refused += 1;
                            tokio::time::sleep(error.retry_after().min(Duration::from_millis(100)))
                                .await;
                        }
                        Err(Refusal::RedisUnavailable) => panic!("Redis is up"),
                    }
                }
                refused
            }));
        }
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let granted = granted.lock().unwrap().clone();
    let busiest = busiest_second(granted.clone());
    assert!(busiest <= 190, "{busiest} grants in one second");
    let rate = granted.len() as f64 / 2.0;
    assert!(rate >= 0.85 * 176.0, "{rate}/s");
    let calls: u64 = gateways.iter().map(|g| g.calls()).sum();
    eprintln!(
        "busiest second {busiest}, {rate}/s, {calls} Redis calls for {} grants",
        granted.len()
    );
    assert!(
        calls * 4 <= granted.len() as u64,
        "{calls} Redis calls for {} grants",
        granted.len()
    );
}

/// Redis gone: a caller is refused with `RedisUnavailable` (the limiter falls back), not left
/// waiting. Back on the same socket with its state lost, the first reservation charges this
/// gateway's grants of the last second as debt, so the lost state cannot re-open a burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_is_refused_then_recharged() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let gateway = budget(&redis).await;
    for _ in 0..20 {
        within_a_second(&gateway).await.unwrap();
    }
    let socket = redis.socket();
    drop(redis);
    let refused = within_a_second(&gateway).await;
    assert_eq!(refused, Err(Refusal::RedisUnavailable));

    let restarted = RedisServer::start_at(&socket);
    // The connection manager reconnects in the background; until then calls still fail.
    let waited = once_redis_answers(&gateway).await;
    assert_eq!(gateway.debt_charged(), 20);
    // Without the debt the empty Redis would grant at once; with it the slot is 20 − 8 (the
    // burst tolerance) = 12 intervals after Redis's now, and the caller waited at least that.
    assert!(
        waited >= Duration::from_micros(12 * T),
        "waited only {waited:?}"
    );
    drop(restarted);
}

/// A limiter in fleet mode on `redis`: one app, one command (and the pass-through slot).
fn fleet_limiter(redis: &RedisServer, back_off: Duration) -> tim_gateway::limiter::Limiter {
    let client = redis::Client::open(redis.url()).unwrap();
    let connection =
        ConnectionManager::new_lazy_with_config(client, redis::aio::ConnectionManagerConfig::new())
            .unwrap();
    tim_gateway::limiter::Limiter::fleet(
        &prometheus::Registry::new(),
        &["main".to_owned()],
        &[1_400_000_000],
        &["openim_robot_http_svc/create_robot"],
        &[spec()],
        spec(),
        tim_gateway::limiter::BackOff {
            base: back_off,
            max: back_off * 8,
        },
        tim_gateway::limiter::FleetRedis {
            connection,
            client: redis::Client::open(redis.url()).unwrap(),
            metrics: std::sync::Arc::new(tim_gateway::fleet::FleetMetrics::unregistered()),
            key_prefix: "tim".into(),
            timing: timing(),
            members: Default::default(),
        },
    )
    .unwrap()
}

/// Tencent's 60007 seen by gateway A pauses the command on gateway B too: B's next caller is
/// refused as paused (not saturated) for what is left of A's back-off, and B's first call
/// after the pause comes no sooner than its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frequency_limit_seen_by_one_gateway_pauses_the_fleet() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let back_off = Duration::from_millis(600);
    let (a, b) = (
        fleet_limiter(&redis, back_off),
        fleet_limiter(&redis, back_off),
    );
    let key = a.key(0, Some(0));
    let paused_at = Instant::now();
    assert_eq!(
        a.observe(key, tim_gateway::outcome::Outcome::FrequencyLimited),
        tim_gateway::limiter::Reaction::CommandPaused(back_off)
    );
    // The pause reaches Redis in the background; B learns of it from there alone.
    let mut connection = redis.connect().await;
    let pause_key = keys().command_pause;
    for attempt in 0.. {
        assert!(attempt < 200, "the pause never reached Redis");
        let exists: bool = redis::cmd("EXISTS")
            .arg(&pause_key)
            .query_async(&mut connection)
            .await
            .unwrap();
        if exists {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    match b
        .acquire(key, Instant::now() + Duration::from_millis(50))
        .await
    {
        Err(tim_gateway::throttle::ThrottleError::Paused { retry_after }) => {
            assert!(
                retry_after > Duration::ZERO && retry_after <= back_off,
                "{retry_after:?}"
            );
        }
        other => panic!("expected a pause, got {other:?}"),
    }
    let permit = b
        .acquire(key, Instant::now() + Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        paused_at.elapsed() >= back_off,
        "a call {:?} into a {back_off:?} pause",
        paused_at.elapsed()
    );
    drop(permit);
}

/// The slots gateway B reserved before A's 60007 are void once the pause reaches B on the
/// app's `ctl` channel: B's callers already sleeping towards them (up to 250 ms ahead) wait
/// the pause out instead of calling after Tencent said stop. Only what B granted before the
/// message came (within 50 ms of the signal) precedes the pause's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_voids_the_slots_other_gateways_hold() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let back_off = Duration::from_millis(600);
    let a = fleet_limiter(&redis, back_off);
    let b = Arc::new(fleet_limiter(&redis, back_off));
    let mut connection = redis.connect().await;
    let channel = keys().ctl;
    for attempt in 0.. {
        assert!(attempt < 2000, "nobody ever listened on {channel}");
        let (_, listeners): (String, u32) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut connection)
            .await
            .unwrap();
        if listeners == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let key = a.key(0, Some(0));
    let granted = Arc::new(Mutex::new(Vec::new()));
    let callers: Vec<_> = (0..40)
        .map(|_| {
            let (b, granted) = (Arc::clone(&b), Arc::clone(&granted));
            tokio::spawn(async move {
                let permit = b
                    .acquire(key, Instant::now() + Duration::from_secs(2))
                    .await;
                granted.lock().unwrap().push(Instant::now());
                permit.map(drop)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let paused_at = Instant::now();
    assert_eq!(
        a.observe(key, tim_gateway::outcome::Outcome::FrequencyLimited),
        tim_gateway::limiter::Reaction::CommandPaused(back_off)
    );
    for caller in callers {
        caller.await.unwrap().unwrap();
    }
    let granted = granted.lock().unwrap().clone();
    let during: Vec<Duration> = granted
        .iter()
        .filter(|at| **at > paused_at + Duration::from_millis(50) && **at < paused_at + back_off)
        .map(|at| *at - paused_at)
        .collect();
    assert_eq!(during, Vec::<Duration>::new(), "B called during A's pause");
    let before = granted.iter().filter(|at| **at <= paused_at).count();
    assert!(
        before < 40,
        "every caller was served before the pause ({before})"
    );
}

/// `SCRIPT FLUSH` (as after a Redis restart or failover): the next reservation loads the
/// script again by itself; no caller notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_is_reloaded() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let gateway = budget(&redis).await;
    within_a_second(&gateway).await.unwrap();
    let mut connection = redis.connect().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut connection)
        .await
        .unwrap();
    within_a_second(&gateway).await.unwrap();
    assert_eq!(gateway.calls(), 2);
}

/// A Redis that stops answering (`CLIENT PAUSE`, like a stopped process): reservations time
/// out after `command_timeout` and callers are refused as `RedisUnavailable`, not held; when
/// it answers again, reservations work again and re-charge what this gateway sent meanwhile
/// (nothing: it failed closed) plus its grants of the last second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_is_a_timeout_then_recovers() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let gateway = budget(&redis).await;
    within_a_second(&gateway).await.unwrap();
    let mut admin = redis.connect().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let asked = Instant::now();
    let refused = within_a_second(&gateway).await;
    assert_eq!(refused, Err(Refusal::RedisUnavailable));
    assert!(
        asked.elapsed() < Duration::from_millis(300),
        "held for {:?}",
        asked.elapsed()
    );
    // After the pause the same connection answers again.
    once_redis_answers(&gateway).await;
    assert_eq!(
        gateway.debt_charged(),
        1,
        "the one grant of the last second"
    );
}

/// A caller that may not wait (`deadline` now, as a refresh with a stale answer in hand
/// asks) still takes a slot that is due at once: on an idle budget it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_may_not_wait_takes_a_slot_due_now() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let gateway = budget(&redis).await;
    assert_eq!(gateway.acquire(Instant::now()).await.map(|_| ()), Ok(()));
}

/// A budget so slow that few slots fit in the look-ahead (quota 10: budget 9, burst 1, fleet
/// rate 7/s, one slot per 143 ms) still serves a crowd of callers, one slot per interval,
/// instead of waiting for a batch that can never fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_budget_serves_a_crowd() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let client = redis::Client::open(redis.url()).unwrap();
    let connection = ConnectionManager::new(client).await.unwrap();
    let slow = BudgetSpec {
        quota: 10,
        ..spec()
    };
    let gateway = Arc::new(FleetBudget::new(
        keys(),
        slow,
        timing(),
        connection,
        Arc::new(FleetMetrics::unregistered()),
    ));
    let deadline = Instant::now() + Duration::from_secs(1);
    let callers: Vec<_> = (0..12)
        .map(|_| {
            let gateway = Arc::clone(&gateway);
            tokio::spawn(async move { gateway.acquire(deadline).await.is_ok() })
        })
        .collect();
    let mut served = 0;
    for caller in callers {
        served += usize::from(caller.await.unwrap());
    }
    // A second of slots at 7/s, the first at once: 7 or 8 (the 8th lands on the deadline).
    assert!((7..=8).contains(&served), "{served} served");
}

/// A pass-through command's budget is named after the command on its first call and kept in
/// Redis under that name, as a catalogue command's is: every gateway sharing the Redis
/// shares it, whichever of its own slots each gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_budget_is_shared_by_its_name() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = (
        fleet_limiter(&redis, Duration::from_secs(1)),
        fleet_limiter(&redis, Duration::from_secs(1)),
    );
    // A names its first pass-through slot after one command, B after another first.
    let a_key = a.pass_through(0, "newsvc/shared");
    let b_other = b.pass_through(0, "newsvc/other");
    let b_key = b.pass_through(0, "newsvc/shared");
    assert_eq!(a.pass_through_index(a_key), Some(0));
    assert_eq!(b.pass_through_index(b_other), Some(0));
    assert_eq!(b.pass_through_index(b_key), Some(1));
    assert_eq!(b.pass_through(0, "newsvc/shared"), b_key, "found again");
    let deadline = Instant::now() + Duration::from_secs(1);
    drop(a.acquire(a_key, deadline).await.unwrap());
    drop(b.acquire(b_key, deadline).await.unwrap());
    let mut connection = redis.connect().await;
    let rate: Option<u64> = redis::cmd("GET")
        .arg(keys().sibling("newsvc/shared").rate)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        rate.is_some(),
        "the budget is in Redis under the command's name"
    );
    assert_eq!(
        keys().sibling("newsvc/shared"),
        BudgetKeys::new("tim", 1_400_000_000, "newsvc/shared")
    );
}
