//! Fleet mode's shared cache tier alone (`RedisTier`), against a real `redis-server`: what
//! its scripts keep and refuse.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use prometheus::Registry;
use tim_gateway::cache::{CacheKey, CachePolicy, Claim, SecondTier, Stored};
use tim_gateway::fleet::FleetMetrics;
use tim_gateway::shared_cache::{RedisTier, SharedCacheConfig};
use tokio::time::Instant;

use support::redis::RedisServer;

fn policy() -> CachePolicy {
    CachePolicy {
        ttl: Duration::from_secs(5),
        stale_while_revalidate: Duration::from_secs(10),
        stale_if_error: Duration::from_secs(60),
    }
}

fn key() -> CacheKey {
    CacheKey {
        app: 0,
        command: 0,
        body: Bytes::from_static(b"{}"),
    }
}

fn stored(body: &'static str) -> Stored {
    Stored {
        status: StatusCode::OK,
        body: Bytes::from_static(body.as_bytes()),
        age: Duration::ZERO,
        policy: policy(),
    }
}

async fn tier(redis: &RedisServer, registry: &Registry) -> RedisTier {
    drop(redis.connect().await); // the server listens
    let client = redis::Client::open(redis.url()).unwrap();
    let manager = |timeout: Duration| {
        let client = client.clone();
        async move {
            redis::aio::ConnectionManager::new_with_config(
                client,
                redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_max_delay(Duration::from_millis(100)),
            )
            .await
            .unwrap()
        }
    };
    RedisTier::new(
        SharedCacheConfig {
            connection: manager(Duration::from_millis(50)).await,
            background: manager(Duration::from_secs(1)).await,
            client: client.clone(),
            key_prefix: "tim".into(),
            sdkappids: vec![1_400_000_000],
            commands: vec!["openim_robot_http_svc/get_all_robots"],
            command_timeout: Duration::from_millis(50),
            metrics: Arc::new(FleetMetrics::unregistered()),
        },
        registry,
    )
    .unwrap()
}

/// The generation is the fencing token: an answer fetched before a write (anywhere) is not
/// kept, and its lock is released; an answer fetched under the current generation is kept
/// and found, with the status and body it had.
#[tokio::test]
async fn an_answer_from_before_a_write_is_not_kept() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let tier = tier(&redis, &Registry::new()).await;
    let Claim::Fetch(before) = tier.claim(&key(), &policy(), Instant::now()).await else {
        panic!("nothing is stored yet");
    };
    assert_eq!(before.generation, Some(0));
    assert!(before.lock.is_some(), "the first claim takes the fill lock");
    tier.invalidate(0, 0).await; // a write while the fetch ran
    tier.put(&key(), Some(stored(r#"{"old":1}"#)), before).await;

    let Claim::Fetch(after) = tier.claim(&key(), &policy(), Instant::now()).await else {
        panic!("the outdated answer was kept");
    };
    assert_eq!(after.generation, Some(1));
    assert!(after.lock.is_some(), "the refused store released the lock");
    tier.put(&key(), Some(stored(r#"{"new":1}"#)), after).await;
    let Claim::Found(found) = tier.claim(&key(), &policy(), Instant::now()).await else {
        panic!("an answer of the current generation is kept");
    };
    assert_eq!(
        (found.status, &found.body[..]),
        (StatusCode::OK, &br#"{"new":1}"#[..])
    );
    assert!(found.age < Duration::from_secs(1), "{:?}", found.age);
}

/// A write's invalidation that Redis could not take stays pending: meanwhile this gateway
/// does not take answers from Redis for that pair (they predate its write), and once Redis is
/// back the invalidation is sent by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_redis_missed_is_sent_again() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let registry = Registry::new();
    let tier = tier(&redis, &registry).await;
    let socket = redis.socket();
    drop(redis);
    tier.invalidate(0, 0).await;
    let pending = || {
        registry
            .gather()
            .iter()
            .find(|family| family.name() == "cache_invalidations_pending")
            .map(|family| family.get_metric()[0].get_gauge().get_value())
    };
    assert_eq!(pending(), Some(1.0));
    let Claim::Fetch(ticket) = tier.claim(&key(), &policy(), Instant::now()).await else {
        panic!("nothing can be found");
    };
    assert_eq!(
        (ticket.generation, ticket.lock),
        (None, None),
        "not even asked: Redis has not heard of this gateway's write"
    );

    let restarted = RedisServer::start_at(&socket);
    let mut connection = restarted.connect().await;
    let generation_key = "tim:{1400000000}:gen:openim_robot_http_svc/get_all_robots";
    for attempt in 0.. {
        assert!(
            attempt < 50,
            "the invalidation was not sent again within 5 s"
        );
        let generation: Option<u64> = redis::cmd("GET")
            .arg(generation_key)
            .query_async(&mut connection)
            .await
            .unwrap();
        if generation == Some(1) && pending() == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
