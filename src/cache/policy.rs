//! How long answers are kept: the freshness policy per command, and moka's hard cap.

use std::sync::Arc;
use std::time::Duration;

use super::{CacheKey, Cached};

/// How long a command's answers may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Served as fresh (HIT) for this long.
    pub ttl: Duration,
    /// After `ttl`, served as STALE for this long while one background refresh runs.
    pub stale_while_revalidate: Duration,
    /// After `ttl`, served as STALE for this long when fetching a fresh answer fails.
    pub stale_if_error: Duration,
}

impl CachePolicy {
    /// How long moka keeps the entry at most.
    pub fn hard_ttl(&self) -> Duration {
        self.ttl + self.stale_while_revalidate.max(self.stale_if_error)
    }
}

/// Tells moka to drop an entry at its policy's hard cap (freshness is decided by the cache).
pub(super) struct PolicyExpiry;

impl moka::Expiry<CacheKey, Arc<Cached>> for PolicyExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Cached>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.policy.hard_ttl())
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Cached>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.policy.hard_ttl())
    }
}
