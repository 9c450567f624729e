//! Fleet mode's shared cache end to end: three `tim-gateway serve` processes sharing one
//! `redis-server` in front of one sandbox, which counts every call.

mod support;

use std::time::Duration;

use support::fleet::{sample, until};
use support::process::Served;
use support::redis::RedisServer;
use support::{metrics_text, post, start_sandbox, CREATE_ROBOT, GET_ALL_ROBOTS};

/// One test at a time: each starts three gateways on a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three gateways in fleet mode on `redis` (shared cache on by default).
fn fleet_of_three(sandbox: &tim_gateway::sandbox::Sandbox, redis: &RedisServer) -> Vec<Served> {
    support::fleet::fleet_of_three(sandbox, &redis.url(), "share")
}

/// Waits until every gateway hears the fleet's invalidations (its subscription is up).
async fn until_subscribed(gateways: &[Served]) {
    for gateway in gateways {
        until(gateway.admin, "tim_gateway_cache_shared_subscribed", 1.0).await;
    }
}

/// 3 gateways × 300 concurrent cold requests for one key (the upstream takes 200 ms to
/// answer, so they all overlap): one upstream call in all, and all 900 answers identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fetch_per_cold_key_across_the_fleet() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let gateways = fleet_of_three(&sandbox, &redis);
    until_subscribed(&gateways).await;
    sandbox.set_latency(Duration::from_millis(200));
    let mut requests = Vec::new();
    for _ in 0..300 {
        for gateway in &gateways {
            let addr = gateway.addr;
            requests.push(tokio::spawn(async move {
                post(addr, GET_ALL_ROBOTS, "{}").await
            }));
        }
    }
    let mut bodies = std::collections::BTreeSet::new();
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!((answer.status.as_u16(), answer.error_code()), (200, 0));
        bodies.insert(answer.json.to_string());
    }
    assert_eq!(bodies.len(), 1, "all 900 answers identical: {bodies:?}");
    // Shown when the test fails: how each gateway's flight went.
    for gateway in &gateways {
        let text = metrics_text(gateway.admin).await;
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tim_gateway_cache_shared"))
            .collect();
        eprintln!("{lines:#?}");
    }
    let mut hits = 0.0;
    for gateway in &gateways {
        hits += sample(
            gateway.admin,
            r#"tim_gateway_cache_shared_lookups_total{result="hit"}"#,
        )
        .await;
    }
    // One call is the aim; a gateway whose claim took longer than fleet.command_timeout
    // (50 ms, on this loaded 2-core machine) fetches for itself. Every gateway's flight was
    // either served from Redis or fetched.
    let calls = sandbox.calls(GET_ALL_ROBOTS);
    eprintln!("{calls} upstream call(s), {hits} flights served from Redis");
    assert!(calls <= 3, "{calls} upstream calls");
    assert_eq!(calls as f64 + hits, 3.0);
}

/// A `create_robot` through gateway A shows up in gateway B's and C's next `get_all_robots`
/// once A's broadcast has reached them, although both had the old list cached; the list each
/// then caches is the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_gateway_is_seen_through_every_other() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let gateways = fleet_of_three(&sandbox, &redis);
    until_subscribed(&gateways).await;
    for gateway in &gateways {
        let before = post(gateway.addr, GET_ALL_ROBOTS, "{}").await;
        assert_eq!(before.json["Robot_Account"], serde_json::json!([]));
        let again = post(gateway.addr, GET_ALL_ROBOTS, "{}").await;
        assert_eq!(again.x_cache(), "HIT");
    }
    let created = post(gateways[0].addr, CREATE_ROBOT, r#"{"UserID":"@RBT#fleet"}"#).await;
    assert_eq!(created.error_code(), 0);
    // A's answer waited for Redis to take the broadcast; B and C drop their copies when it
    // reaches them, a moment later.
    for gateway in &gateways[1..] {
        until(
            gateway.admin,
            "tim_gateway_cache_invalidations_received_total",
            1.0,
        )
        .await;
    }
    for gateway in &gateways[1..] {
        let after = post(gateway.addr, GET_ALL_ROBOTS, "{}").await;
        assert_eq!(
            after.json["Robot_Account"],
            serde_json::json!(["@RBT#fleet"])
        );
        let again = post(gateway.addr, GET_ALL_ROBOTS, "{}").await;
        assert_eq!(again.x_cache(), "HIT");
        assert_eq!(
            again.json["Robot_Account"],
            serde_json::json!(["@RBT#fleet"])
        );
    }
    let received = sample(
        gateways[1].admin,
        "tim_gateway_cache_invalidations_received_total",
    )
    .await;
    assert_eq!(received, 1.0);
    let published = sample(
        gateways[0].admin,
        "tim_gateway_cache_invalidations_published_total",
    )
    .await;
    assert_eq!(published, 1.0);
}

/// Redis gone: a gateway keeps serving what it has cached (a moka hit never touches Redis)
/// and fails closed for the rest (429 with Retry-After, never a 5xx). When Redis is back,
/// empty, every gateway subscribes again and drops what it cached meanwhile (an invalidation
/// published while it was not subscribed is lost), so its next read is fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_drops_what_was_cached() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let gateways = fleet_of_three(&sandbox, &redis);
    until_subscribed(&gateways).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    assert_eq!(post(b.addr, GET_ALL_ROBOTS, "{}").await.x_cache(), "MISS");
    assert_eq!(post(b.addr, GET_ALL_ROBOTS, "{}").await.x_cache(), "HIT");
    let socket = redis.socket();
    drop(redis);
    assert_eq!(post(b.addr, GET_ALL_ROBOTS, "{}").await.x_cache(), "HIT");
    let cold = post(a.addr, GET_ALL_ROBOTS, r#"{"other":1}"#).await;
    assert_eq!(cold.status.as_u16(), 429, "no upstream call without Redis");
    assert!(cold.headers.contains_key("retry-after"));
    let _restarted = RedisServer::start_at(&socket);
    until_subscribed(&gateways).await;
    // The throttle is back once a cold read at C reaches the upstream.
    let c = &gateways[2];
    let mut probes = 0;
    while post(c.addr, GET_ALL_ROBOTS, &format!(r#"{{"probe":{probes}}}"#))
        .await
        .status
        != 200
    {
        probes += 1;
        assert!(probes < 50, "the fleet did not recover within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = post(b.addr, GET_ALL_ROBOTS, "{}").await;
    assert_eq!(
        after.x_cache(),
        "MISS",
        "B dropped its copy on subscribing again"
    );
    assert_eq!(after.status.as_u16(), 200);
}

/// Cached answers may fill at most half of Redis's `maxmemory` (the budgets share it, and a
/// full `noeviction` Redis would fail the fleet closed): past that, an answer is not kept in
/// Redis (counted `refused`), the next gateway fetches for itself, and the budgets still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_leave_room_for_the_budgets() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sandbox = start_sandbox().await;
    let gateways = fleet_of_three(&sandbox, &redis);
    until_subscribed(&gateways).await;
    let mut connection = redis.connect().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut connection)
        .await
        .unwrap();
    let used: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Half of it is below what Redis already uses: no room for any answer.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 512 * 1024)
        .query_async(&mut connection)
        .await
        .unwrap();
    let (a, b) = (&gateways[0], &gateways[1]);
    assert_eq!(post(a.addr, GET_ALL_ROBOTS, "{}").await.x_cache(), "MISS");
    let refused = r#"tim_gateway_cache_shared_stores_total{result="refused"}"#;
    until(a.admin, refused, 1.0).await;
    let at_b = post(b.addr, GET_ALL_ROBOTS, "{}").await;
    assert_eq!((at_b.x_cache(), at_b.error_code()), ("MISS", 0));
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 2, "B fetched for itself");
}
