//! The cache's own metrics: per (app, command) handles resolved once, and the collector that
//! reads the cache's size at scrape time.

use std::sync::{Arc, OnceLock, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use super::{CacheLabels, ResponseCache};
use crate::metrics::{as_gauge, counter_vec};

/// One cached (app, command) pair's handles, each created on first use (a series appears
/// with its first increment).
pub(super) struct PairMetrics {
    /// hit, miss, stale.
    pub(super) lookups: [OnceLock<IntCounter>; 3],
    pub(super) coalesced: OnceLock<IntCounter>,
    pub(super) refreshes: OnceLock<IntCounter>,
    pub(super) invalidations: OnceLock<IntCounter>,
    pub(super) labels: [String; 2],
    pub(super) families: Arc<Families>,
}

/// The families whose series are created on first use.
pub(super) struct Families {
    pub(super) lookups: IntCounterVec,
    pub(super) coalesced: IntCounterVec,
    pub(super) refreshes: IntCounterVec,
    pub(super) invalidations: IntCounterVec,
}

impl PairMetrics {
    /// Registers the per-pair families; one entry per (app, command) of `labels`, app-major,
    /// `None` where the command is not cached.
    pub(super) fn register(
        registry: &Registry,
        labels: &CacheLabels,
    ) -> prometheus::Result<Vec<Option<PairMetrics>>> {
        let families = Arc::new(Families {
            lookups: counter_vec(
                registry,
                "cache_lookups_total",
                "Cache lookups of cacheable commands, by result.",
                &["app", "command", "result"],
            )?,
            coalesced: counter_vec(
                registry,
                "cache_coalesced_total",
                "Requests that joined a fetch already in flight instead of calling Tencent.",
                &["app", "command"],
            )?,
            refreshes: counter_vec(
                registry,
                "cache_refreshes_total",
                "Background refreshes of stale cache entries started.",
                &["app", "command"],
            )?,
            invalidations: counter_vec(
                registry,
                "cache_invalidations_total",
                "Invalidations of cached reads, by successful writes or purges.",
                &["app", "command"],
            )?,
        });
        let mut pairs = Vec::new();
        for app in &labels.apps {
            for command in &labels.commands {
                let metrics = command.map(|command| PairMetrics {
                    lookups: Default::default(),
                    coalesced: OnceLock::new(),
                    refreshes: OnceLock::new(),
                    invalidations: OnceLock::new(),
                    labels: [app.clone(), command.to_owned()],
                    families: Arc::clone(&families),
                });
                pairs.push(metrics);
            }
        }
        Ok(pairs)
    }

    /// Counts one lookup.
    pub(super) fn lookup(&self, result: LookupResult) {
        let i = result as usize;
        self.lookups[i]
            .get_or_init(|| {
                let [app, command] = &self.labels;
                let result = ["hit", "miss", "stale"][i];
                self.families
                    .lookups
                    .with_label_values(&[app.as_str(), command.as_str(), result])
            })
            .inc();
    }

    /// Counts one event in `cell`, creating its series in `family` the first time.
    pub(super) fn inc(
        &self,
        cell: &OnceLock<IntCounter>,
        family: impl Fn(&Families) -> &IntCounterVec,
    ) {
        cell.get_or_init(|| {
            let [app, command] = &self.labels;
            family(&self.families).with_label_values(&[app.as_str(), command.as_str()])
        })
        .inc();
    }
}

/// What a lookup found, for `cache_lookups_total`.
#[derive(Debug, Clone, Copy)]
pub(super) enum LookupResult {
    Hit = 0,
    Miss = 1,
    Stale = 2,
}

/// Reads the cache's size when `/metrics` is scraped.
pub(super) struct UsageCollector {
    cache: Weak<ResponseCache>,
    entries: IntGauge,
    bytes: IntGauge,
}

impl UsageCollector {
    pub(super) fn new(cache: Weak<ResponseCache>) -> prometheus::Result<Self> {
        Ok(UsageCollector {
            cache,
            entries: IntGauge::new("cache_entries", "Entries in the answer cache.")?,
            bytes: IntGauge::new("cache_bytes", "Weighted size of the answer cache in bytes.")?,
        })
    }
}

impl Collector for UsageCollector {
    fn desc(&self) -> Vec<&Desc> {
        [self.entries.desc(), self.bytes.desc()].concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(cache) = self.cache.upgrade() {
            let (entries, bytes) = cache.usage();
            self.entries.set(as_gauge(entries));
            self.bytes.set(as_gauge(bytes));
        }
        [self.entries.collect(), self.bytes.collect()].concat()
    }
}
