//! The cache alone: freshness windows, single flight, invalidation, memory bound and the
//! second tier, under paused time.

use super::*;

fn policy() -> CachePolicy {
    CachePolicy {
        ttl: Duration::from_secs(5),
        stale_while_revalidate: Duration::from_secs(10),
        stale_if_error: Duration::from_secs(60),
    }
}

/// A cache for `apps` × `commands` pairs, every command cached, on a registry of its own.
fn new_cache(
    max_bytes: u64,
    apps: usize,
    commands: usize,
    second: Option<Box<dyn SecondTier>>,
) -> Arc<ResponseCache> {
    let labels = CacheLabels {
        apps: (0..apps).map(|a| format!("app{a}")).collect(),
        commands: ["a/x", "b/y"][..commands]
            .iter()
            .map(|c| Some(*c))
            .collect(),
    };
    ResponseCache::new(max_bytes, &labels, &Registry::new(), second).unwrap()
}

fn key(body: &'static str) -> CacheKey {
    CacheKey {
        app: 0,
        command: 1,
        body: Bytes::from_static(body.as_bytes()),
    }
}

fn ok(body: &'static str) -> FlightResult {
    Ok(UpstreamResponse {
        status: StatusCode::OK,
        body: Bytes::from_static(body.as_bytes()),
        error_code: 0,
    })
}

async fn fill(cache: &Arc<ResponseCache>, key: &CacheKey, result: FlightResult) {
    let Join::Leader(flight) = cache.join(key) else {
        panic!("no flight should be running")
    };
    flight.complete(result, policy()).await;
}

/// Fresh within ttl, stale within swr, fallback within stale_if_error, then gone.
#[tokio::test(start_paused = true)]
async fn freshness_follows_the_policy() {
    let cache = new_cache(1 << 20, 1, 2, None);
    let k = key("{}");
    fill(&cache, &k, ok(r#"{"ErrorCode":0}"#)).await;
    let p = policy();
    let classify = |lookup: Lookup| match lookup {
        Lookup::Fresh(_) => "fresh",
        Lookup::Stale(_) => "stale",
        Lookup::Miss { fallback: Some(_) } => "fallback",
        Lookup::Miss { fallback: None } => "miss",
    };
    let start = Instant::now();
    let at = |secs: u64| start + Duration::from_secs(secs);
    assert_eq!(classify(cache.lookup(&k, &p, at(0)).await), "fresh");
    assert_eq!(classify(cache.lookup(&k, &p, at(4)).await), "fresh");
    assert_eq!(classify(cache.lookup(&k, &p, at(5)).await), "stale");
    assert_eq!(classify(cache.lookup(&k, &p, at(14)).await), "stale");
    assert_eq!(classify(cache.lookup(&k, &p, at(15)).await), "fallback");
    assert_eq!(classify(cache.lookup(&k, &p, at(65)).await), "miss");
}

/// Only ErrorCode 0 answers are stored; an error is shared with the flight's waiters.
#[tokio::test]
async fn errors_are_shared_not_stored() {
    let cache = new_cache(1 << 20, 1, 2, None);
    let k = key("{}");
    let Join::Leader(flight) = cache.join(&k) else {
        panic!()
    };
    let Join::Follower(waiter) = cache.join(&k) else {
        panic!("second caller follows")
    };
    let failing = Ok(UpstreamResponse {
        status: StatusCode::OK,
        body: Bytes::from_static(br#"{"ErrorCode":10002}"#),
        error_code: 10002,
    });
    flight.complete(failing, policy()).await;
    assert_eq!(waiter.wait().await.unwrap().unwrap().error_code, 10002);
    assert!(matches!(
        cache.lookup(&k, &policy(), Instant::now()).await,
        Lookup::Miss { fallback: None }
    ));
    assert!(
        matches!(cache.join(&k), Join::Leader(_)),
        "the flight is gone"
    );
}

/// A leader that dies without completing wakes its waiters with an error and frees the key.
#[tokio::test]
async fn dropped_leader_wakes_waiters() {
    let cache = new_cache(1 << 20, 1, 2, None);
    let k = key("{}");
    let Join::Leader(flight) = cache.join(&k) else {
        panic!()
    };
    let waiter = flight.waiter();
    drop(flight);
    assert!(waiter.wait().await.is_none());
    assert!(matches!(cache.join(&k), Join::Leader(_)));
}

/// Invalidation hides stored entries at once and keeps an in-flight result out of the cache.
#[tokio::test]
async fn invalidation_covers_entries_and_flights() {
    let cache = new_cache(1 << 20, 2, 2, None);
    let k = key("{}");
    fill(&cache, &k, ok("{}")).await;
    let other_app = CacheKey {
        app: 1,
        ..k.clone()
    };
    fill(&cache, &other_app, ok("{}")).await;
    let Join::Leader(in_flight) = cache.join(&key(r#"{"a":1}"#)) else {
        panic!()
    };
    drop(cache.invalidate(0, 1));
    assert!(matches!(
        cache.lookup(&k, &policy(), Instant::now()).await,
        Lookup::Miss { fallback: None }
    ));
    assert!(matches!(
        cache.lookup(&other_app, &policy(), Instant::now()).await,
        Lookup::Fresh(_)
    ));
    in_flight.complete(ok("{}"), policy()).await;
    assert!(matches!(
        cache
            .lookup(&key(r#"{"a":1}"#), &policy(), Instant::now())
            .await,
        Lookup::Miss { fallback: None }
    ));
    drop(cache.invalidate_where(None, None));
    assert!(matches!(
        cache.lookup(&other_app, &policy(), Instant::now()).await,
        Lookup::Miss { .. }
    ));
}

/// After an invalidation, newcomers start a new flight instead of joining one that began
/// before it; the old flight still answers its own waiters and cannot remove the new one.
#[tokio::test]
async fn newcomers_do_not_join_flights_older_than_an_invalidation() {
    let cache = new_cache(1 << 20, 1, 2, None);
    let k = key("{}");
    let Join::Leader(old) = cache.join(&k) else {
        panic!()
    };
    let old_waiter = old.waiter();
    drop(cache.invalidate(0, 1));
    let Join::Leader(new) = cache.join(&k) else {
        panic!("a new flight after the write")
    };
    let Join::Follower(new_waiter) = cache.join(&k) else {
        panic!("joins the new flight")
    };
    old.complete(ok("old"), policy()).await;
    assert_eq!(old_waiter.wait().await.unwrap().unwrap().body, "old");
    assert!(
        matches!(cache.join(&k), Join::Follower(_)),
        "the new flight is still there"
    );
    new.complete(ok("new"), policy()).await;
    assert_eq!(new_waiter.wait().await.unwrap().unwrap().body, "new");
    let Lookup::Fresh(stored) = cache.lookup(&k, &policy(), Instant::now()).await else {
        panic!("the new answer is stored")
    };
    assert_eq!(stored.body, "new");
}

/// The cache is bounded by bytes: entries beyond `max_bytes` are evicted.
#[tokio::test]
async fn bounded_by_bytes() {
    let cache = new_cache(64 * 1024, 1, 1, None);
    let big = Bytes::from(vec![b'x'; 4 * 1024]);
    for i in 0..100u32 {
        let k = CacheKey {
            app: 0,
            command: 0,
            body: Bytes::from(format!("{{\"i\":{i}}}")),
        };
        let Join::Leader(flight) = cache.join(&k) else {
            panic!()
        };
        let response = UpstreamResponse {
            status: StatusCode::OK,
            body: big.clone(),
            error_code: 0,
        };
        flight.complete(Ok(response), policy()).await;
    }
    cache.run_pending_tasks().await;
    let (entries, bytes) = cache.usage();
    assert!(bytes <= 64 * 1024, "{bytes} bytes in {entries} entries");
    assert!(
        (10..=16).contains(&entries),
        "{entries} entries of ~4.2 KiB in 64 KiB"
    );
}

/// A second tier behind moka, in memory: what a fleet-mode tier would see. With `gate` set,
/// each `put` waits for it to be opened (a slow tier).
#[derive(Debug, Default)]
struct MemoryTier {
    stored: Mutex<HashMap<CacheKey, Stored>>,
    invalidated: Mutex<Vec<(u32, u32)>>,
    gate: Option<tokio::sync::Notify>,
}

impl SecondTier for Arc<MemoryTier> {
    fn claim<'a>(
        &'a self,
        key: &'a CacheKey,
        policy: &'a CachePolicy,
        _deadline: Instant,
    ) -> TierFuture<'a, Claim> {
        Box::pin(async move {
            match self.stored.lock().unwrap().get(key) {
                Some(stored) if stored.age < policy.ttl => Claim::Found(stored.clone()),
                _ => Claim::Fetch(FillTicket::default()),
            }
        })
    }
    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        stored: Option<Stored>,
        _ticket: FillTicket,
    ) -> TierFuture<'a, ()> {
        Box::pin(async move {
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            if let Some(stored) = stored {
                self.stored.lock().unwrap().insert(key.clone(), stored);
            }
        })
    }
    fn invalidate(&self, app: u32, command: u32) -> TierFuture<'static, ()> {
        self.invalidated.lock().unwrap().push((app, command));
        self.stored
            .lock()
            .unwrap()
            .retain(|k, _| (k.app, k.command) != (app, command));
        Box::pin(std::future::ready(()))
    }
}

/// A flight's leader as the proxy runs it: the tier first, then the fetch if it must.
async fn lead(cache: &Arc<ResponseCache>, key: &CacheKey, result: FlightResult) -> bool {
    let Join::Leader(mut flight) = cache.join(key) else {
        panic!("no flight should be running")
    };
    if let Some(cached) = flight.claim_shared(&policy(), Instant::now()).await {
        flight.complete_from_cache(&cached);
        return false;
    }
    flight.complete(result, policy()).await;
    true
}

/// The second tier is filled by a fetch, answers another gateway's flight (not its lookups)
/// with the age it had, and hears invalidations; a fresh answer found there is kept in moka
/// and served as fresh.
#[tokio::test(start_paused = true)]
async fn a_second_tier_backs_moka() {
    let tier = Arc::new(MemoryTier::default());
    let first = new_cache(1 << 20, 1, 2, Some(Box::new(Arc::clone(&tier))));
    let k = key("{}");
    assert!(lead(&first, &k, ok(r#"{"ErrorCode":0}"#)).await, "fetched");
    tokio::time::sleep(Duration::from_millis(1)).await; // the background put runs
    assert_eq!(
        tier.stored.lock().unwrap().len(),
        1,
        "the fetch reached the tier"
    );

    // Another gateway (its own moka, the same tier): a lookup is a miss (moka only), its
    // flight finds the answer without a fetch.
    tokio::time::advance(Duration::from_secs(2) - Duration::from_millis(1)).await;
    let other = new_cache(1 << 20, 1, 2, Some(Box::new(Arc::clone(&tier))));
    tier.stored.lock().unwrap().get_mut(&k).unwrap().age = Duration::from_secs(2);
    assert!(matches!(
        other.lookup(&k, &policy(), Instant::now()).await,
        Lookup::Miss { fallback: None }
    ));
    assert!(
        !lead(&other, &k, ok(r#"{"ErrorCode":1}"#)).await,
        "not fetched"
    );
    let Lookup::Fresh(found) = other.lookup(&k, &policy(), Instant::now()).await else {
        panic!("a tier hit within ttl is kept in moka as fresh");
    };
    assert_eq!(found.age(Instant::now()), Duration::from_secs(2));
    assert_eq!(&found.body[..], br#"{"ErrorCode":0}"#);

    drop(other.invalidate(0, 1));
    assert_eq!(*tier.invalidated.lock().unwrap(), vec![(0, 1)]);
    assert!(matches!(
        other.lookup(&k, &policy(), Instant::now()).await,
        Lookup::Miss { fallback: None }
    ));
}

/// A write that invalidates the pair while a fetched answer is still on its way to the second
/// tier is passed on again once it lands: the tier does not keep the answer from before it.
#[tokio::test(start_paused = true)]
async fn an_invalidation_during_a_slow_put_reaches_the_tier_after_it() {
    let tier = Arc::new(MemoryTier {
        gate: Some(tokio::sync::Notify::new()),
        ..MemoryTier::default()
    });
    let cache = new_cache(1 << 20, 1, 2, Some(Box::new(Arc::clone(&tier))));
    let k = key("{}");
    assert!(lead(&cache, &k, ok(r#"{"ErrorCode":0}"#)).await);
    assert!(matches!(
        cache.lookup(&k, &policy(), Instant::now()).await,
        Lookup::Fresh(_)
    ));
    drop(cache.invalidate(0, 1)); // the write, while the put waits at the gate
    tier.gate.as_ref().unwrap().notify_one();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(
        tier.stored.lock().unwrap().is_empty(),
        "the old answer left the tier"
    );
    assert_eq!(*tier.invalidated.lock().unwrap(), vec![(0, 1), (0, 1)]);
}

/// The per-thread hot slots (module `hot`) serve nothing moka would not: an entry leaves its
/// slot when its pair is invalidated and when moka no longer holds it, and large answers are
/// never kept there. Seen through the entry's reference count: moka holds one, the hot slot
/// one, each caller one.
#[tokio::test(start_paused = true)]
async fn hot_slots_serve_only_what_moka_would() {
    let cache = new_cache(1 << 20, 1, 2, None);
    let p = policy();
    let now = Instant::now();
    let fresh = |lookup: Lookup| match lookup {
        Lookup::Fresh(entry) => entry,
        other => panic!("not fresh: {other:?}"),
    };
    let k = key("{}");
    fill(&cache, &k, ok(r#"{"ErrorCode":0}"#)).await;
    let first = fresh(cache.lookup(&k, &p, now).await);
    assert_eq!(
        Arc::strong_count(&first),
        3,
        "moka, the hot slot, this caller"
    );
    let second = fresh(cache.lookup(&k, &p, now).await);
    assert!(Arc::ptr_eq(&first, &second));
    drop(second);

    // moka drops the entry without an invalidation (as it does under size pressure).
    cache.entries.invalidate(&k).await;
    cache.entries.run_pending_tasks().await;
    assert_eq!(Arc::strong_count(&first), 2, "the hot slot, this caller");
    drop(first);
    assert!(matches!(
        cache.lookup(&k, &p, now).await,
        Lookup::Miss { fallback: None }
    ));

    // An invalidation: the slot's entry belongs to an older generation.
    fill(&cache, &k, ok(r#"{"ErrorCode":0}"#)).await;
    let kept = fresh(cache.lookup(&k, &p, now).await);
    assert_eq!(Arc::strong_count(&kept), 3);
    drop(cache.invalidate(k.app, k.command));
    assert!(matches!(
        cache.lookup(&k, &p, now).await,
        Lookup::Miss { fallback: None }
    ));
    assert_eq!(
        Arc::strong_count(&kept),
        2,
        "moka (until it sweeps), this caller"
    );

    // An answer over hot::MAX_BODY_BYTES stays with moka alone.
    let large = key(r#"{"large":true}"#);
    let body = format!(
        r#"{{"ErrorCode":0,"Pad":"{}"}}"#,
        "x".repeat(hot::MAX_BODY_BYTES)
    );
    let response = UpstreamResponse {
        status: StatusCode::OK,
        body: Bytes::from(body),
        error_code: 0,
    };
    fill(&cache, &large, Ok(response)).await;
    let entry = fresh(cache.lookup(&large, &p, now).await);
    assert_eq!(Arc::strong_count(&entry), 2, "moka, this caller");

    // Every hit of a hot slot is answered from it at once, the sampled ones (every
    // SAMPLE-th, also read from moka for its eviction policy) included.
    let repeated = key(r#"{"b":1}"#);
    fill(&cache, &repeated, ok(r#"{"ErrorCode":0}"#)).await;
    let stored = fresh(cache.lookup(&repeated, &p, now).await);
    for hit in 0..3 * hot::SAMPLE {
        let served = cache.lookup_hot(&repeated, &p, now);
        assert!(
            served.is_some_and(|s| Arc::ptr_eq(&s, &stored)),
            "hit {hit}"
        );
    }
}
