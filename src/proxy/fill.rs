//! The fetch behind a cache miss or a stale answer's refresh, run as its own task so that no
//! caller going away cancels or repeats it.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Lane, Shared, Target};
use crate::cache::{CacheKey, CachePolicy, Lookup};

/// One fetch that fills a cache entry: everything its task needs, owned.
#[derive(Clone)]
pub(super) struct Fill {
    pub(super) key: CacheKey,
    pub(super) lane: Arc<Lane>,
    pub(super) body: Bytes,
    pub(super) policy: CachePolicy,
    pub(super) deadline: Instant,
    /// False when a stale fallback exists: do not queue for a permit (see `Shared::call`).
    pub(super) may_wait: bool,
}

impl Shared {
    /// Fetches for `fill` and completes its flight: stores a success, wakes every waiter.
    pub(super) async fn run_fill(self: Arc<Self>, mut flight: crate::cache::Flight, fill: Fill) {
        // Another flight may have stored a fresh answer between our lookup and our
        // registration (or just before a stale-while-revalidate refresh): use it.
        if let Lookup::Fresh(cached) = self
            .cache
            .peek(&fill.key, &fill.policy, Instant::now())
            .await
        {
            flight.complete_from_cache(&cached);
            return;
        }
        // Fleet mode: another gateway may have it, or be fetching it.
        // A caller with a stale answer to fall back on does not wait on another gateway.
        let wait_until = if fill.may_wait {
            fill.deadline
        } else {
            Instant::now()
        };
        if let Some(cached) = flight.claim_shared(&fill.policy, wait_until).await {
            flight.complete_from_cache(&cached);
            return;
        }
        let target = Target {
            lane: &fill.lane,
            command: fill.lane.label,
            cache: Some(fill.policy),
        };
        let result = self
            .call(&target, fill.body, fill.deadline, fill.may_wait)
            .await;
        flight.complete(result, fill.policy).await;
    }
}
