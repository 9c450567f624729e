//! The answer cache: moka underneath, our own freshness, single-flight fetches, invalidation.
//!
//! - Keys are (app, command, canonical JSON body): key order and whitespace do not split
//!   entries, and nothing per-call (`random`, `usersig`) is in them.
//! - Only `ErrorCode == 0` answers are stored. Memory is bounded in bytes by a weigher; expired
//!   entries are removed by a housekeeping task that runs moka's pending tasks every second.
//! - Freshness is decided here from `fetched_at` (tokio time, so tests can pause it); moka's
//!   per-entry expiry is only the hard cap `ttl + max(stale_while_revalidate, stale_if_error)`
//!   (moka's clock cannot be injected, moka-rs/moka#522).
//! - Single flight: at most one fetch per key runs at a time, as its own task, so a client that
//!   disconnects cannot cancel or repeat it; every waiter is woken by a watch channel the
//!   moment it finishes. A leader re-checks the cache after registering its flight, which
//!   closes the window where a flight finished between a miss and the registration.
//! - Invalidation is a generation counter per (app, command): bumping it makes every stored
//!   entry and every in-flight fetch of that pair unusable at once, in O(1).
//! - A repeat hit on the same worker thread is usually answered from that thread's hot slots
//!   (module `hot`) without touching moka: only an entry moka has not let go, of the current
//!   generation, fresh; one hit in 16 still goes through moka so its eviction policy sees it.
//! - An optional [`SecondTier`] sits behind moka (fleet mode shares one on Redis): a moka miss
//!   asks it, a fetched answer is offered to it, an invalidation is passed on to it. A moka
//!   hit never touches it. The request path does not know whether there is one.
//!
//! Metrics owned here: `cache_lookups_total`, `cache_coalesced_total`,
//! `cache_refreshes_total`, `cache_invalidations_total`, `cache_evictions_total`, and at
//! scrape time `cache_entries` and `cache_bytes`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::StatusCode;
use moka::future::Cache;
use prometheus::{IntCounter, Registry};
use tokio::sync::watch;
use tokio::time::Instant;

mod hot;
mod metrics;
mod policy;
mod tier;

use metrics::{LookupResult, PairMetrics, UsageCollector};
pub use policy::CachePolicy;
use policy::PolicyExpiry;
pub use tier::{Claim, FillTicket, SecondTier, Stored, TierFuture};

use crate::error::GatewayError;
use crate::metrics::counter_vec;
use crate::upstream::UpstreamResponse;

/// Per-entry bookkeeping counted by the weigher besides key and body bytes: moka's entry,
/// its key `Arc`, deque and timer-wheel nodes, our `Arc<Cached>`, the two heap blocks' malloc
/// headers. Measured, not estimated: `tests/cache_memory.rs` stores 100k entries and found
/// RSS growing ~634 B per entry beyond key and body bytes (x86_64, glibc, moka 0.12); it
/// fails if RSS outgrows the weighed size by more than its documented factor.
const ENTRY_OVERHEAD_BYTES: usize = 640;

/// How often expired entries are swept out of memory.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// An (app, command, canonical body) key. `app` and `command` are indices fixed at start.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub app: u32,
    pub command: u32,
    /// Canonical JSON: sorted keys, no insignificant whitespace.
    pub body: Bytes,
}

/// A stored answer.
#[derive(Debug)]
pub struct Cached {
    pub status: StatusCode,
    pub body: Bytes,
    pub fetched_at: Instant,
    /// The (app, command) generation it was fetched under; stale once that moves on.
    generation: u64,
    policy: CachePolicy,
    /// Set when moka lets it go (evicted, expired, invalidated or replaced).
    is_evicted: AtomicBool,
}

impl Cached {
    /// Whole seconds since it was fetched, for the `Age` header.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched_at)
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// Within `ttl`: answer from the cache.
    Fresh(Arc<Cached>),
    /// Past `ttl`, within `stale_while_revalidate`: answer from the cache and refresh.
    Stale(Arc<Cached>),
    /// Nothing servable now. `fallback` is an entry still within `stale_if_error`, to serve
    /// if the fetch fails.
    Miss { fallback: Option<Arc<Cached>> },
}

/// The outcome of one fetch, shared with every waiter of its flight.
pub type FlightResult = Result<UpstreamResponse, GatewayError>;

type FlightSender = watch::Sender<Option<FlightResult>>;

/// How a caller takes part in the flight for a key.
pub enum Join {
    /// Nobody was fetching: the caller must start the fetch and complete the flight.
    Leader(Flight),
    /// A fetch is running; wait on this.
    Follower(FlightWaiter),
}

/// The leader's handle. Completing it (or dropping it, if the fetch task dies) wakes every
/// waiter and removes the flight.
pub struct Flight {
    key: CacheKey,
    cache: Arc<ResponseCache>,
    sender: Arc<FlightSender>,
    /// The generation when the flight started: a result from before an invalidation is
    /// shared with its waiters but not stored.
    generation: u64,
    /// What the second tier said when it let this flight fetch (`claim_shared`).
    ticket: Option<FillTicket>,
    is_completed: bool,
}

/// Waits for a flight's result.
pub struct FlightWaiter(watch::Receiver<Option<FlightResult>>);

impl FlightWaiter {
    /// The flight's result, or `None` if its leader went away without one (the caller may
    /// join again).
    pub async fn wait(mut self) -> Option<FlightResult> {
        match self.0.wait_for(Option::is_some).await {
            Ok(result) => result.clone(),
            Err(_) => None,
        }
    }
}

impl Flight {
    pub fn waiter(&self) -> FlightWaiter {
        FlightWaiter(self.sender.subscribe())
    }

    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Stores a successful answer (if still current), removes the flight, then wakes the
    /// waiters, in that order so that no newcomer finds neither the entry nor the flight.
    pub async fn complete(mut self, result: FlightResult, policy: CachePolicy) {
        let mut stored = None;
        if let Ok(response) = &result {
            if response.error_code == 0 && response.status == StatusCode::OK {
                stored = self
                    .cache
                    .store(self.key.clone(), response, self.generation, policy)
                    .await;
            }
        }
        if let Some(ticket) = self.ticket.take() {
            // Offered in the background: the flight's waiters do not wait on the tier.
            let cache = Arc::clone(&self.cache);
            tokio::spawn(cache.offer(self.key.clone(), stored, ticket, self.generation));
        }
        self.finish(Some(result));
    }

    /// Completes the flight with an answer that is already in the cache (the leader's
    /// re-check found one); nothing is stored.
    pub fn complete_from_cache(mut self, cached: &Cached) {
        let response = UpstreamResponse {
            status: cached.status,
            body: cached.body.clone(),
            error_code: 0,
        };
        self.finish(Some(Ok(response)));
    }

    fn finish(&mut self, result: Option<FlightResult>) {
        if self.is_completed {
            return;
        }
        self.is_completed = true;
        {
            let mut flights = self.cache.lock_flights();
            if flights
                .get(&self.key)
                .is_some_and(|(s, _)| Arc::ptr_eq(s, &self.sender))
            {
                flights.remove(&self.key);
            }
        }
        if let Some(result) = result {
            self.sender.send_replace(Some(result));
        }
        // Without a result the sender drops with the last `Arc`, and waiters see an error.
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.give_back_ticket();
        self.finish(None);
    }
}

/// What the cache serves: which apps and commands, for its metrics' labels.
#[derive(Debug, Clone)]
pub struct CacheLabels {
    pub apps: Vec<String>,
    /// Per catalogue command: its name if its answers are cached, else `None` (no metrics).
    pub commands: Vec<Option<&'static str>>,
}

/// The cache shared by every request.
pub struct ResponseCache {
    /// Tells this cache's entries from other caches' in the per-thread [`hot`] slots.
    id: u64,
    entries: Cache<CacheKey, Arc<Cached>>,
    /// Keys with a fetch in progress, with the generation each fetch started under.
    flights: Mutex<HashMap<CacheKey, (Arc<FlightSender>, u64)>>,
    /// Per (app, command), indexed `app * commands + command`: generation and metrics.
    pairs: Box<[Pair]>,
    commands: u32,
    /// The tier behind moka, if any (fleet mode): asked on a moka miss, offered every fetch,
    /// told of every invalidation.
    second: Option<Box<dyn SecondTier>>,
}

/// One (app, command) pair's invalidation generation and metric handles.
struct Pair {
    generation: AtomicU64,
    /// `None` for commands whose answers are not cached.
    metrics: Option<PairMetrics>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// A cache of at most `max_bytes` for the (app, command) pairs of `labels`, with its
    /// housekeeping task (which ends when the cache is dropped) and an optional `second` tier.
    /// Its metrics are registered on `registry`; evictions are counted by cause: `size`,
    /// `expired`, `explicit` (invalidated) or `replaced`.
    ///
    /// # Errors
    /// A metric could not be registered (a bug).
    pub fn new(
        max_bytes: u64,
        labels: &CacheLabels,
        registry: &Registry,
        second: Option<Box<dyn SecondTier>>,
    ) -> prometheus::Result<Arc<Self>> {
        let evictions = counter_vec(
            registry,
            "cache_evictions_total",
            "Cache entries removed, by cause.",
            &["cause"],
        )?;
        // Each cause's series appears with its first eviction.
        let by_cause: [OnceLock<IntCounter>; 4] = Default::default();
        let entries = Cache::builder()
            .eviction_listener(move |_key, value: Arc<Cached>, cause| {
                // The hot slots may hold it still: they must not serve it any more.
                value.is_evicted.store(true, Ordering::Release);
                let (i, label) = match cause {
                    moka::notification::RemovalCause::Size => (0, "size"),
                    moka::notification::RemovalCause::Expired => (1, "expired"),
                    moka::notification::RemovalCause::Explicit => (2, "explicit"),
                    moka::notification::RemovalCause::Replaced => (3, "replaced"),
                };
                by_cause[i]
                    .get_or_init(|| evictions.with_label_values(&[label]))
                    .inc();
            })
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, value: &Arc<Cached>| {
                let bytes = key.body.len() + value.body.len() + ENTRY_OVERHEAD_BYTES;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(PolicyExpiry)
            .support_invalidation_closures()
            .build();
        let pairs = PairMetrics::register(registry, labels)?
            .into_iter()
            .map(|metrics| Pair {
                generation: AtomicU64::new(0),
                metrics,
            })
            .collect();
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let cache = Arc::new(ResponseCache {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            entries,
            flights: Mutex::new(HashMap::new()),
            pairs,
            commands: labels.commands.len() as u32,
            second,
        });
        registry.register(Box::new(UsageCollector::new(Arc::downgrade(&cache))?))?;
        if let Some(second) = &cache.second {
            second.attach(Arc::downgrade(&cache));
        }
        tokio::spawn(housekeeping(Arc::downgrade(&cache)));
        Ok(cache)
    }

    fn pair(&self, app: u32, command: u32) -> &Pair {
        &self.pairs[(app * self.commands + command) as usize]
    }

    fn count_lookup(&self, key: &CacheKey, result: LookupResult) {
        if let Some(metrics) = &self.pair(key.app, key.command).metrics {
            metrics.lookup(result);
        }
    }

    fn lock_flights(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<CacheKey, (Arc<FlightSender>, u64)>> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn generation(&self, app: u32, command: u32) -> u64 {
        self.pair(app, command).generation.load(Ordering::Acquire)
    }

    /// The synchronous start of [`lookup`](Self::lookup): a fresh answer from this thread's
    /// hot slots, counted as a hit. `None` says nothing (the answer may still be in moka):
    /// ask [`lookup`](Self::lookup).
    pub fn lookup_hot(
        &self,
        key: &CacheKey,
        policy: &CachePolicy,
        now: Instant,
    ) -> Option<Arc<Cached>> {
        let found = hot::get(
            self.id,
            key,
            self.generation(key.app, key.command),
            policy.ttl,
            now,
        )?;
        let cached = match found {
            hot::Found::Served(cached) => cached,
            hot::Found::Sampled(cached) => {
                // Moka records the read for its eviction policy. Its `get` finishes at once
                // unless its housekeeping is busy; then this sample is skipped.
                let _ = self.entries.get(key).now_or_never();
                cached
            }
        };
        self.count_lookup(key, LookupResult::Hit);
        Some(cached)
    }

    /// Looks `key` up (moka, then the second tier if any), classifies the entry by `policy`
    /// at `now`, and counts the lookup.
    pub async fn lookup(&self, key: &CacheKey, policy: &CachePolicy, now: Instant) -> Lookup {
        let lookup = self.peek(key, policy, now).await;
        let result = match &lookup {
            Lookup::Fresh(_) => LookupResult::Hit,
            Lookup::Stale(_) => LookupResult::Stale,
            Lookup::Miss { .. } => LookupResult::Miss,
        };
        self.count_lookup(key, result);
        lookup
    }

    /// [`lookup`](Self::lookup) without counting: a flight's re-check before it fetches.
    pub async fn peek(&self, key: &CacheKey, policy: &CachePolicy, now: Instant) -> Lookup {
        let generation = self.generation(key.app, key.command);
        if let Some(hot::Found::Served(cached)) =
            hot::get(self.id, key, generation, policy.ttl, now)
        {
            return Lookup::Fresh(cached);
        }
        let Some(cached) = self.entries.get(key).await else {
            return Lookup::Miss { fallback: None };
        };
        if cached.generation != generation {
            // Invalidated: not even a fallback (it predates a write the client may have made).
            return Lookup::Miss { fallback: None };
        }
        let age = cached.age(now);
        if age < policy.ttl {
            hot::put(self.id, key, &cached);
            Lookup::Fresh(cached)
        } else if age < policy.ttl + policy.stale_while_revalidate {
            Lookup::Stale(cached)
        } else if age < policy.ttl + policy.stale_if_error {
            Lookup::Miss {
                fallback: Some(cached),
            }
        } else {
            Lookup::Miss { fallback: None }
        }
    }

    /// Joins the flight for `key`, or registers a new one and makes the caller its leader.
    /// A flight that started before an invalidation of its (app, command) is not joined: its
    /// answer may predate a write the caller made. A follower is counted as coalesced.
    pub fn join(self: &Arc<Self>, key: &CacheKey) -> Join {
        self.join_counted(key, true)
    }

    fn join_counted(self: &Arc<Self>, key: &CacheKey, is_counted: bool) -> Join {
        let generation = self.generation(key.app, key.command);
        let mut flights = self.lock_flights();
        if let Some((sender, started_under)) = flights.get(key) {
            if *started_under == generation {
                let waiter = FlightWaiter(sender.subscribe());
                drop(flights);
                if let (true, Some(metrics)) =
                    (is_counted, &self.pair(key.app, key.command).metrics)
                {
                    metrics.inc(&metrics.coalesced, |f| &f.coalesced);
                }
                return Join::Follower(waiter);
            }
        }
        let sender = Arc::new(watch::Sender::new(None));
        // Replaces an outdated flight, which still completes for its own waiters.
        flights.insert(key.clone(), (Arc::clone(&sender), generation));
        drop(flights);
        Join::Leader(Flight {
            key: key.clone(),
            cache: Arc::clone(self),
            sender,
            generation,
            ticket: None,
            is_completed: false,
        })
    }

    /// Starts the flight of a background refresh of `key`, unless one is already running
    /// (then `None`); counted as a refresh.
    pub fn join_refresh(self: &Arc<Self>, key: &CacheKey) -> Option<Flight> {
        let Join::Leader(flight) = self.join_counted(key, false) else {
            return None;
        };
        if let Some(metrics) = &self.pair(key.app, key.command).metrics {
            metrics.inc(&metrics.refreshes, |f| &f.refreshes);
        }
        Some(flight)
    }

    /// Keeps a fetched answer in moka if its pair was not invalidated meanwhile, and returns
    /// it as the second tier would keep it.
    async fn store(
        self: &Arc<Self>,
        key: CacheKey,
        response: &UpstreamResponse,
        generation: u64,
        policy: CachePolicy,
    ) -> Option<Stored> {
        if generation != self.generation(key.app, key.command) {
            return None;
        }
        // Copied, not sliced: the answer may be a slice of the connection's whole read
        // buffer, which would stay alive with the entry (issue 7, F13).
        let cached = Arc::new(Cached {
            status: response.status,
            body: Bytes::copy_from_slice(&response.body),
            fetched_at: Instant::now(),
            generation,
            policy,
            is_evicted: AtomicBool::new(false),
        });
        let stored = self.second.is_some().then(|| Stored {
            status: cached.status,
            body: cached.body.clone(),
            age: Duration::ZERO,
            policy,
        });
        self.entries.insert(key, cached).await;
        stored
    }

    /// Makes every entry and in-flight fetch of (app, command) unusable at once, here and (in
    /// the background) in the second tier; the memory is reclaimed in the background. The
    /// returned future ends when the second tier has passed the invalidation on to the other
    /// gateways (or given up); dropping it changes nothing.
    pub fn invalidate(&self, app: u32, command: u32) -> TierFuture<'static, ()> {
        self.invalidate_where(Some(app), Some(command))
    }

    /// Invalidates every entry of `app` (all commands), or of every app, as
    /// [`invalidate`](Self::invalidate) does. Counted per cached (app, command) pair it reaches.
    pub fn invalidate_where(
        &self,
        app: Option<u32>,
        command: Option<u32>,
    ) -> TierFuture<'static, ()> {
        let mut passed_on = Vec::new();
        self.invalidate_here(app, command, |a, c| {
            if let Some(second) = &self.second {
                passed_on.push(second.invalidate(a, c));
            }
        });
        Box::pin(async move {
            for done in passed_on {
                done.await;
            }
        })
    }

    /// Invalidates in this gateway only: what another gateway's write, heard through the
    /// second tier, does here. `each` is called for every pair reached.
    pub fn invalidate_here(
        &self,
        app: Option<u32>,
        command: Option<u32>,
        mut each: impl FnMut(u32, u32),
    ) {
        let apps = self.pairs.len() as u32 / self.commands.max(1);
        for a in 0..apps {
            for c in 0..self.commands {
                if app.is_none_or(|x| x == a) && command.is_none_or(|x| x == c) {
                    let pair = self.pair(a, c);
                    pair.generation.fetch_add(1, Ordering::AcqRel);
                    if let Some(metrics) = &pair.metrics {
                        metrics.inc(&metrics.invalidations, |f| &f.invalidations);
                    }
                    each(a, c);
                }
            }
        }
        if app.is_none() && command.is_none() {
            self.entries.invalidate_all();
        } else {
            let _ = self.entries.invalidate_entries_if(move |key, _| {
                app.is_none_or(|x| x == key.app) && command.is_none_or(|x| x == key.command)
            });
        }
    }

    /// Entries and weighted bytes (approximate until pending tasks run).
    pub fn usage(&self) -> (u64, u64) {
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    /// Applies pending evictions and expirations now (tests; housekeeping does it every second).
    pub async fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks().await;
    }
}

async fn housekeeping(cache: Weak<ResponseCache>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cache) = cache.upgrade() else { return };
        cache.entries.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests;
