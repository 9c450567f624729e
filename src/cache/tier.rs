//! The seam for a cache tier behind moka, shared with other gateways (fleet mode's Redis):
//! what it is asked and when.
//!
//! - Only a flight's leader asks it, once per key per gateway ([`Flight::claim_shared`]):
//!   either the tier has a fresh answer (perhaps after waiting for another gateway's fetch of
//!   the same key), or this gateway fetches, holding a [`FillTicket`].
//! - The fetch's outcome goes back with the ticket ([`SecondTier::put`]): an answer to keep,
//!   or nothing (a failure, an uncacheable answer, a pair invalidated meanwhile), so that
//!   other gateways waiting for it stop waiting.
//! - Invalidations go both ways: a write here is passed on ([`SecondTier::invalidate`]); a
//!   write elsewhere reaches [`ResponseCache::invalidate_here`] through [`SecondTier::attach`].
//! - A moka hit never reaches the tier.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::time::Instant;

use super::{CacheKey, CachePolicy, Cached, Flight, ResponseCache};

/// An answer as a [`SecondTier`] keeps it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub status: StatusCode,
    pub body: Bytes,
    /// How old the answer already is.
    pub age: Duration,
    pub policy: CachePolicy,
}

/// A future a [`SecondTier`] returns.
pub type TierFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the tier says to a flight about to fetch.
#[derive(Debug)]
pub enum Claim {
    /// A fresh answer: no fetch.
    Found(Stored),
    /// Fetch it, and hand the ticket back with the outcome.
    Fetch(FillTicket),
}

/// The tier's note on a fetch it let through, handed back to [`SecondTier::put`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FillTicket {
    /// The tier's own generation of the pair when the fetch started: an answer is kept only
    /// if it has not moved (a fencing token). `None`: the tier could not tell (keep nothing).
    pub generation: Option<u64>,
    /// The fill lock this fetch holds, if it won one, to release with the outcome.
    pub lock: Option<u64>,
}

/// A cache tier behind moka, shared with other gateways (fleet mode). Its failures are its
/// own business: a `claim` that cannot answer lets the flight fetch, a `put` that cannot
/// store is dropped. It bounds its own latency; `put` and `invalidate` run in the background.
pub trait SecondTier: Send + Sync + std::fmt::Debug {
    /// Asked by a flight's leader before it fetches `key`: a fresh answer, waiting until
    /// `deadline` at most for another gateway that is fetching it, or leave to fetch.
    fn claim<'a>(
        &'a self,
        key: &'a CacheKey,
        policy: &'a CachePolicy,
        deadline: Instant,
    ) -> TierFuture<'a, Claim>;
    /// The outcome of a fetch `claim` let through: `Some` answer to keep, or `None`.
    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        stored: Option<Stored>,
        ticket: FillTicket,
    ) -> TierFuture<'a, ()>;
    /// Every answer of (app, command) is outdated. Starts at once (the future need not be
    /// polled); the future ends when the other gateways have been told, or the tier gave up.
    fn invalidate(&self, app: u32, command: u32) -> TierFuture<'static, ()>;
    /// Called once with the cache this tier backs, to pass other gateways' invalidations on
    /// to it.
    fn attach(&self, _cache: Weak<ResponseCache>) {}
}

impl Flight {
    /// Asks the second tier (if any) before fetching: an answer it has is kept in moka and
    /// returned; otherwise the flight fetches, and its outcome goes back to the tier.
    pub async fn claim_shared(
        &mut self,
        policy: &CachePolicy,
        deadline: Instant,
    ) -> Option<Arc<Cached>> {
        let second = self.cache.second.as_ref()?;
        let stored = match second.claim(&self.key, policy, deadline).await {
            Claim::Found(stored) => stored,
            Claim::Fetch(ticket) => {
                self.ticket = Some(ticket);
                return None;
            }
        };
        // A write here while the tier was asked: its answer may predate it.
        if self.generation != self.cache.generation(self.key.app, self.key.command) {
            return None;
        }
        let cached = Arc::new(Cached {
            status: stored.status,
            body: stored.body,
            fetched_at: Instant::now().checked_sub(stored.age)?,
            generation: self.generation,
            policy: stored.policy,
            is_evicted: AtomicBool::new(false),
        });
        self.cache
            .entries
            .insert(self.key.clone(), Arc::clone(&cached))
            .await;
        Some(cached)
    }

    /// A flight dropped without completing (its task died) still gives its ticket back.
    pub(super) fn give_back_ticket(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let cache = Arc::clone(&self.cache);
            runtime.spawn(cache.offer(self.key.clone(), None, ticket, self.generation));
        }
    }
}

impl ResponseCache {
    /// Hands a fetch's outcome to the second tier. A write that invalidated the pair while
    /// the put was on its way is passed on again afterwards, so the tier cannot keep an
    /// answer from before it.
    pub(super) async fn offer(
        self: Arc<Self>,
        key: CacheKey,
        stored: Option<Stored>,
        ticket: FillTicket,
        generation: u64,
    ) {
        let Some(second) = &self.second else { return };
        let had_answer = stored.is_some();
        second.put(&key, stored, ticket).await;
        if had_answer && generation != self.generation(key.app, key.command) {
            second.invalidate(key.app, key.command).await;
        }
    }
}
