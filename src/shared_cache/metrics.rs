//! The shared cache's metric families (listed in the module's documentation).

use prometheus::{IntCounter, IntGauge, Registry};

use crate::metrics::{counter_vec, gauge};

/// The shared cache's own metric handles.
pub(super) struct SharedMetrics {
    /// `hit`, `miss`, `error`.
    pub(super) lookups: [IntCounter; 3],
    pub(super) waits: IntCounter,
    /// `kept`, `refused`, `error`.
    pub(super) stores: [IntCounter; 3],
    pub(super) published: IntCounter,
    pub(super) received: IntCounter,
    pub(super) pending: IntGauge,
    pub(super) subscribed: IntGauge,
}

impl SharedMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let lookups = counter_vec(
            registry,
            "cache_shared_lookups_total",
            "Flights that asked the fleet's shared cache before fetching, by result (hit: \
             served from Redis, miss: fetched, error: Redis failed, fetched).",
            &["result"],
        )?;
        let stores = counter_vec(
            registry,
            "cache_shared_stores_total",
            "Fetched answers offered to the shared cache, by result (kept; refused: outdated \
             by a write, too large or a failure; error: Redis failed).",
            &["result"],
        )?;
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        Ok(SharedMetrics {
            lookups: ["hit", "miss", "error"].map(|r| lookups.with_label_values(&[r])),
            waits: counter(
                "cache_shared_waits_total",
                "Flights that waited for another gateway's fetch of the same key.",
            )?,
            stores: ["kept", "refused", "error"].map(|r| stores.with_label_values(&[r])),
            published: counter(
                "cache_invalidations_published_total",
                "Writes' invalidations this gateway passed on to the fleet through Redis.",
            )?,
            received: counter(
                "cache_invalidations_received_total",
                "Invalidations heard from other gateways' writes.",
            )?,
            pending: gauge(
                registry,
                "cache_invalidations_pending",
                "Invalidations Redis has not taken yet (re-sent every second).",
            )?,
            subscribed: gauge(
                registry,
                "cache_shared_subscribed",
                "1 while this gateway hears the fleet's invalidations (its Redis subscription \
                 is up), else 0.",
            )?,
        })
    }
}
