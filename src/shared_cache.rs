//! Fleet mode's shared cache: Redis as the second tier behind every gateway's moka
//! (`design/fleet.md` §3), through the [`SecondTier`] seam.
//!
//! - **One fetch per cold key across the fleet.** Each gateway's single flight already makes
//!   one leader per key; that leader runs `claim.lua`: a fresh entry of the current generation
//!   is served; else whoever wins the fill lock (`SET NX PX`, 5 s) fetches, and the others wait
//!   for its `fill` notice on pub/sub (woken, not polling), re-asking at 25, 50, 100, 200 ms
//!   in case a notice is lost, until the lock lapses (a leader that died) or their deadline.
//!   The lock only saves work: a waiter that gives up fetches itself, under the throttle.
//! - **No outdated answer is stored.** Every (app, command) has a generation in Redis; an
//!   entry is kept only if the generation has not moved since its fetch began (`store.lua`),
//!   and an entry of an older generation is never served.
//! - **Writes through any gateway invalidate everywhere.** A write bumps the generation and
//!   publishes the pair on `inval` (`invalidate.lua`); every gateway drops its own copies when
//!   the message arrives. The write's answer waits for Redis to accept it (at most
//!   `fleet.command_timeout`). Pub/sub delivers at most once, so a gateway whose subscription
//!   broke (or whose heartbeat on it went unanswered for a second) drops every cached answer
//!   when it subscribes again; invalidations it could not publish are kept and re-sent every
//!   second until Redis takes them.
//! - **Redis down or slow** costs a miss (`fleet.command_timeout` at most): the flight fetches
//!   as without a shared cache; nothing is stored, nothing fails.
//!
//! Keys (one hash tag per app, as the budgets'): `{prefix}:{sdkappid}:c:<cmd>:<sha256 of the
//! canonical body>` (entry), `…:lock:<cmd>:<sha256>` (fill lock), `…:gen:<cmd>`, and channels
//! `…:fill`, `…:inval`.
//!
//! Metrics owned here: `cache_shared_lookups_total{result}` (`hit`, `miss`, `error`),
//! `cache_shared_waits_total`, `cache_shared_stores_total{result}` (`kept`, `refused`,
//! `error`), `cache_invalidations_published_total`, `cache_invalidations_received_total`,
//! `cache_invalidations_pending`, `cache_shared_subscribed`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use prometheus::Registry;
use redis::aio::ConnectionManager;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;

mod entry;
mod metrics;
mod subscription;

use entry::{encode, millis, parse_claim, ClaimReply};
use metrics::SharedMetrics;
use subscription::{listen, republish};

use crate::cache::{
    CacheKey, CachePolicy, Claim, FillTicket, ResponseCache, SecondTier, Stored, TierFuture,
};
use crate::fleet::{Failure, FleetMetrics, Op};

/// How long a fill lock holds: a leader that died stops holding up others after this.
pub const LOCK_TTL: Duration = Duration::from_secs(5);
/// Larger answers are not shared (each gateway keeps its own).
pub const MAX_SHARED_BYTES: usize = 1 << 20;
/// A waiter re-asks after these delays (then every 200 ms), in case a notice was lost.
const POLL_DELAYS_MS: [u64; 4] = [25, 50, 100, 200];
/// A fetch's outcome goes to Redis in the background, where nobody's answer waits on it (only
/// other gateways' flights, which otherwise wait out the lock): a slow Redis gets longer than
/// `fleet.command_timeout` for it (on a connection of its own, whose response timeout is this).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often invalidations that could not be published are tried again.
const REPUBLISH_EVERY: Duration = Duration::from_secs(1);

/// What the shared cache needs to know of the gateway.
pub struct SharedCacheConfig {
    /// Bounded by `fleet.command_timeout`: claims and invalidations.
    pub connection: ConnectionManager,
    /// Bounded by [`STORE_TIMEOUT`]: stores and script loads, which run in the background.
    pub background: ConnectionManager,
    /// For the subscription, which needs a connection of its own.
    pub client: redis::Client,
    pub key_prefix: String,
    /// Per app index (as in [`CacheKey::app`]): its SDKAppID.
    pub sdkappids: Vec<u64>,
    /// Per command index (as in [`CacheKey::command`]): its name.
    pub commands: Vec<&'static str>,
    pub command_timeout: Duration,
    pub metrics: Arc<FleetMetrics>,
}

/// Redis as the cache tier shared by the fleet.
#[derive(Debug)]
pub struct RedisTier {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    background: ConnectionManager,
    client: redis::Client,
    prefix: String,
    sdkappids: Vec<u64>,
    commands: Vec<&'static str>,
    timeout: Duration,
    /// Tells this gateway's own invalidation messages from others'.
    id: u64,
    /// Waiting flights by `notice` key (`sdkappid cmd:digest`), woken by `fill` messages.
    waiting: Mutex<HashMap<String, Arc<FillWait>>>,
    /// (app, command) pairs whose invalidation Redis has not taken yet, each with the count
    /// of failed attempts (so a re-send only clears the attempts it covered).
    pending: Mutex<BTreeMap<(u32, u32), u64>>,
    is_republishing: AtomicBool,
    cache: OnceLock<Weak<ResponseCache>>,
    scripts: Scripts,
    fleet: Arc<FleetMetrics>,
    metrics: SharedMetrics,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("prefix", &self.prefix)
            .field("sdkappids", &self.sdkappids)
            .finish_non_exhaustive()
    }
}

struct Scripts {
    claim: redis::Script,
    store: redis::Script,
    invalidate: redis::Script,
}

/// One entry's Redis names.
struct EntryKeys {
    entry: String,
    generation: String,
    lock: String,
    fill_channel: String,
    /// The `fill` message for this entry, and the key of its waiters.
    notice: String,
}

impl RedisTier {
    /// The tier, its metrics registered on `registry`. Its subscription starts when the cache
    /// attaches it.
    ///
    /// # Errors
    /// A metric could not be registered (a bug).
    pub fn new(config: SharedCacheConfig, registry: &Registry) -> prometheus::Result<Self> {
        Ok(RedisTier {
            inner: Arc::new(Inner {
                connection: config.connection,
                background: config.background,
                client: config.client,
                prefix: config.key_prefix,
                sdkappids: config.sdkappids,
                commands: config.commands,
                timeout: config.command_timeout,
                id: fastrand::u64(..),
                waiting: Mutex::new(HashMap::new()),
                pending: Mutex::new(BTreeMap::new()),
                is_republishing: AtomicBool::new(false),
                cache: OnceLock::new(),
                scripts: Scripts {
                    claim: redis::Script::new(include_str!("shared_cache/claim.lua")),
                    store: redis::Script::new(include_str!("shared_cache/store.lua")),
                    invalidate: redis::Script::new(include_str!("shared_cache/invalidate.lua")),
                },
                fleet: config.metrics,
                metrics: SharedMetrics::register(registry)?,
            }),
        })
    }
}

impl SecondTier for RedisTier {
    fn claim<'a>(
        &'a self,
        key: &'a CacheKey,
        policy: &'a CachePolicy,
        deadline: Instant,
    ) -> TierFuture<'a, Claim> {
        Box::pin(self.inner.claim(key, policy, deadline))
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        stored: Option<Stored>,
        ticket: FillTicket,
    ) -> TierFuture<'a, ()> {
        Box::pin(self.inner.put(key, stored, ticket))
    }

    fn invalidate(&self, app: u32, command: u32) -> TierFuture<'static, ()> {
        let inner = Arc::clone(&self.inner);
        let (done, told) = tokio::sync::oneshot::channel();
        // Spawned, not awaited: it happens even if the caller goes away.
        tokio::spawn(async move {
            if !inner.publish_invalidation(app, command).await {
                inner.keep_pending(app, command);
            }
            let _ = done.send(());
        });
        Box::pin(async move {
            let _ = told.await;
        })
    }

    fn attach(&self, cache: Weak<ResponseCache>) {
        if self.inner.cache.set(cache).is_ok() {
            tokio::spawn(listen(Arc::downgrade(&self.inner)));
        }
    }
}

impl Inner {
    fn keys(&self, key: &CacheKey) -> Option<EntryKeys> {
        let sdkappid = *self.sdkappids.get(key.app as usize)?;
        let command = *self.commands.get(key.command as usize)?;
        let app = format!("{}:{{{sdkappid}}}", self.prefix);
        let mut digest = String::with_capacity(64);
        for byte in Sha256::digest(&key.body) {
            let _ = write!(digest, "{byte:02x}");
        }
        Some(EntryKeys {
            entry: format!("{app}:c:{command}:{digest}"),
            generation: format!("{app}:gen:{command}"),
            lock: format!("{app}:lock:{command}:{digest}"),
            fill_channel: format!("{app}:fill"),
            notice: format!("{sdkappid} {command}:{digest}"),
        })
    }

    /// Loads the scripts, so that the first request after a (re)connect does not pay for a
    /// NOSCRIPT round trip (redis-rs would load them then anyway).
    async fn load_scripts(&self) {
        let mut connection = self.background.clone();
        for script in [
            &self.scripts.claim,
            &self.scripts.store,
            &self.scripts.invalidate,
        ] {
            let load =
                tokio::time::timeout(Duration::from_secs(1), script.load_async(&mut connection));
            if !matches!(load.await, Ok(Ok(_))) {
                return;
            }
        }
    }

    fn app_tag(&self, sdkappid: u64) -> String {
        format!("{}:{{{sdkappid}}}", self.prefix)
    }

    async fn claim(&self, key: &CacheKey, policy: &CachePolicy, deadline: Instant) -> Claim {
        let Some(keys) = self.keys(key) else {
            return Claim::Fetch(FillTicket::default());
        };
        if lock(&self.pending).contains_key(&(key.app, key.command)) {
            // A write here that Redis has not heard of: what it holds predates it.
            self.metrics.lookups[1].inc();
            return Claim::Fetch(FillTicket::default());
        }
        let wait = Arc::new(FillWait::default());
        let _waiting = Waiting::register(self, &keys.notice, &wait);
        let mut polls = POLL_DELAYS_MS.iter().copied().chain(std::iter::repeat(200));
        let mut has_waited = false;
        loop {
            let notified = wait.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let token = fastrand::u64(1..);
            let sent = Instant::now();
            let reply = tokio::time::timeout(
                self.timeout,
                self.scripts
                    .claim
                    .key(&keys.entry)
                    .key(&keys.generation)
                    .key(&keys.lock)
                    .arg(millis(policy.ttl))
                    .arg(token)
                    .arg(millis(LOCK_TTL))
                    .invoke_async::<redis::Value>(&mut self.connection.clone()),
            )
            .await;
            let reply = match reply {
                Ok(Ok(reply)) => {
                    self.fleet.answered(Op::CacheClaim, sent.elapsed());
                    reply
                }
                failed => {
                    self.fleet.failed(Op::CacheClaim, failure_of(&failed));
                    self.metrics.lookups[2].inc();
                    // The script may have run and taken the lock: give it back with the outcome.
                    return Claim::Fetch(FillTicket {
                        generation: None,
                        lock: Some(token),
                    });
                }
            };
            match parse_claim(reply, policy) {
                Some(ClaimReply::Found(stored)) => {
                    self.metrics.lookups[0].inc();
                    return Claim::Found(stored);
                }
                Some(ClaimReply::Won(generation)) => {
                    self.metrics.lookups[1].inc();
                    return Claim::Fetch(FillTicket {
                        generation: Some(generation),
                        lock: Some(token),
                    });
                }
                Some(ClaimReply::Busy(generation, lock_left)) => {
                    let now = Instant::now();
                    // Waited long enough: fetch (the throttle still bounds it).
                    if now >= deadline {
                        self.metrics.lookups[1].inc();
                        return Claim::Fetch(FillTicket {
                            generation: Some(generation),
                            lock: None,
                        });
                    }
                    if !has_waited {
                        has_waited = true;
                        self.metrics.waits.inc();
                    }
                    let poll = Duration::from_millis(polls.next().unwrap_or(200));
                    // A lock without a time to live (PTTL -1, not ours) is waited on as usual.
                    let until_lapse = if lock_left.is_zero() {
                        poll
                    } else {
                        lock_left + Duration::from_millis(1)
                    };
                    let wake = (now + poll.min(until_lapse)).min(deadline);
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(wake) => {}
                    }
                    // The fetch it waited for failed: its waiters all fetch at once rather than
                    // one after another behind the lock (the throttle still bounds them).
                    if wait.has_failed.load(Ordering::Acquire) {
                        self.metrics.lookups[1].inc();
                        return Claim::Fetch(FillTicket {
                            generation: Some(generation),
                            lock: None,
                        });
                    }
                }
                None => {
                    self.fleet.failed(Op::CacheClaim, Failure::Error);
                    self.metrics.lookups[2].inc();
                    return Claim::Fetch(FillTicket::default());
                }
            }
        }
    }

    async fn put(&self, key: &CacheKey, stored: Option<Stored>, ticket: FillTicket) {
        let Some(keys) = self.keys(key) else { return };
        let value = stored.as_ref().and_then(|stored| {
            let generation = ticket.generation?;
            (stored.body.len() <= MAX_SHARED_BYTES).then(|| encode(stored, generation))
        });
        let hard_ttl = stored.as_ref().map_or(0, |s| millis(s.policy.hard_ttl()));
        // Waiters on other gateways fetch at once after a failure rather than one by one.
        let notice = format!(
            "{} {}",
            keys.notice,
            if stored.is_some() { "ok" } else { "failed" }
        );
        let sent = Instant::now();
        let reply = tokio::time::timeout(
            STORE_TIMEOUT,
            self.scripts
                .store
                .key(&keys.entry)
                .key(&keys.generation)
                .key(&keys.lock)
                .arg(ticket.generation.map_or(String::new(), |g| g.to_string()))
                .arg(value.unwrap_or_default())
                .arg(hard_ttl.max(1))
                .arg(ticket.lock.map_or(String::new(), |t| t.to_string()))
                .arg(&keys.fill_channel)
                .arg(&notice)
                .invoke_async::<u32>(&mut self.background.clone()),
        )
        .await;
        match reply {
            Ok(Ok(kept)) => {
                self.fleet.answered(Op::CacheStore, sent.elapsed());
                self.metrics.stores[usize::from(kept != 1)].inc();
            }
            failed => {
                self.fleet.failed(Op::CacheStore, failure_of(&failed));
                self.metrics.stores[2].inc();
            }
        }
    }

    /// `INCR` + `PUBLISH` for (app, command); false if Redis did not take it.
    async fn publish_invalidation(&self, app: u32, command: u32) -> bool {
        let (Some(&sdkappid), Some(&name)) = (
            self.sdkappids.get(app as usize),
            self.commands.get(command as usize),
        ) else {
            return true;
        };
        let tag = self.app_tag(sdkappid);
        let sent = Instant::now();
        let reply = tokio::time::timeout(
            self.timeout,
            self.scripts
                .invalidate
                .key(format!("{tag}:gen:{name}"))
                .arg(format!("{tag}:inval"))
                .arg(format!("{name} {}", self.id))
                .invoke_async::<u64>(&mut self.connection.clone()),
        )
        .await;
        match reply {
            Ok(Ok(_)) => {
                self.fleet.answered(Op::Invalidate, sent.elapsed());
                self.metrics.published.inc();
                true
            }
            failed => {
                self.fleet.failed(Op::Invalidate, failure_of(&failed));
                false
            }
        }
    }

    /// Keeps an invalidation Redis did not take, and makes sure someone re-sends it.
    fn keep_pending(self: &Arc<Self>, app: u32, command: u32) {
        let (pending, was_empty) = {
            let mut pending = lock(&self.pending);
            let was_empty = pending.is_empty();
            *pending.entry((app, command)).or_default() += 1;
            (pending.len(), was_empty)
        };
        self.metrics.pending.set(pending as i64);
        if was_empty {
            tracing::warn!(
                "could not tell the fleet of a write through Redis: other gateways may serve \
                 the old answer until its ttl; trying again every second \
                 (tim_gateway_cache_invalidations_pending)"
            );
        }
        if !self.is_republishing.swap(true, Ordering::AcqRel) {
            tokio::spawn(republish(Arc::downgrade(self)));
        }
    }

    /// Sends what is pending; true when nothing is left.
    async fn republish_pending(&self) -> bool {
        let pairs: Vec<((u32, u32), u64)> =
            lock(&self.pending).iter().map(|(k, v)| (*k, *v)).collect();
        for ((app, command), attempts) in pairs {
            if !self.publish_invalidation(app, command).await {
                return false;
            }
            let left = {
                let mut pending = lock(&self.pending);
                // A write that failed to publish meanwhile stays pending.
                if pending.get(&(app, command)) == Some(&attempts) {
                    pending.remove(&(app, command));
                }
                pending.len()
            };
            self.metrics.pending.set(left as i64);
        }
        true
    }
}

/// One waiting flight: woken by its entry's `fill` notice, told whether that fetch failed.
#[derive(Default)]
struct FillWait {
    notify: Notify,
    has_failed: AtomicBool,
}

/// A waiting flight's registration for `fill` notices; removed when the claim ends.
struct Waiting<'a> {
    inner: &'a Inner,
    notice: &'a str,
    wait: Arc<FillWait>,
}

impl<'a> Waiting<'a> {
    fn register(inner: &'a Inner, notice: &'a str, wait: &Arc<FillWait>) -> Self {
        lock(&inner.waiting).insert(notice.to_owned(), Arc::clone(wait));
        Waiting {
            inner,
            notice,
            wait: Arc::clone(wait),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Only its own: a newer flight for the key (after an invalidation) may have replaced it.
        let mut waiting = lock(&self.inner.waiting);
        if waiting
            .get(self.notice)
            .is_some_and(|w| Arc::ptr_eq(w, &self.wait))
        {
            waiting.remove(self.notice);
        }
    }
}

/// A timeout (ours, or redis-rs's own response timeout) or an error.
fn failure_of<T>(reply: &Result<redis::RedisResult<T>, tokio::time::error::Elapsed>) -> Failure {
    match reply {
        Err(_) => Failure::Timeout,
        Ok(Err(error)) if error.is_timeout() => Failure::Timeout,
        _ => Failure::Error,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
