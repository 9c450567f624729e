//! `throttle_mode`, `throttle_waiters`, `throttle_paused`, `throttle_budget_per_second` and
//! `upstream_quota_per_second`: read from every named budget when `/metrics` is scraped.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntGaugeVec;

use super::{Backend, BudgetKey, KeyMetrics};
use crate::metrics::scrape_gauge_vec;

/// Reads every budget's queue, pause and size when `/metrics` is scraped.
pub(super) struct BudgetCollector {
    /// The budgets, shared with the limiter.
    backend: Arc<Backend>,
    /// Every budget's labels, indexed like the backend: `app * slots + slot`. A pass-through
    /// budget not yet named is left out.
    handles: Arc<[KeyMetrics]>,
    slots: u32,
    mode: IntGaugeVec,
    waiters: IntGaugeVec,
    paused: IntGaugeVec,
    budget: IntGaugeVec,
    quota: IntGaugeVec,
}

impl BudgetCollector {
    pub(super) fn new(
        backend: Arc<Backend>,
        handles: Arc<[KeyMetrics]>,
        slots: u32,
    ) -> prometheus::Result<Self> {
        let labels = ["app", "command"];
        Ok(BudgetCollector {
            backend,
            handles,
            slots,
            mode: scrape_gauge_vec("throttle_mode", "Where the budget lives: 0 this gateway (no fleet mode), 1 Redis (fleet mode); its last reservation call failed: 2 guard (no calls until the fleet leaves room for this gateway's share), 3 share (calling alone at 1/fleet.expected_replicas of the rate), 4 closed (no calls until Redis answers).", &labels)?,
            waiters: scrape_gauge_vec("throttle_waiters", "Requests waiting for a permit right now.", &labels)?,
            paused: scrape_gauge_vec("throttle_paused", "1 while calls are paused because Tencent asked us to back off or locked the app out.", &labels)?,
            budget: scrape_gauge_vec("throttle_budget_per_second", "The gateway's budget of calls to Tencent in any sliding second.", &labels)?,
            quota: scrape_gauge_vec("upstream_quota_per_second", "Tencent's documented quota of calls per second.", &labels)?,
        })
    }
}

impl Collector for BudgetCollector {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.mode.desc(),
            self.waiters.desc(),
            self.paused.desc(),
            self.budget.desc(),
            self.quota.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for (i, handles) in self.handles.iter().enumerate() {
            if handles.command.get().is_none() {
                continue;
            }
            let i = i as u32;
            let state = self.backend.state(BudgetKey {
                app: i / self.slots,
                slot: i % self.slots,
            });
            let labels = handles.labels();
            self.mode
                .with_label_values(&labels)
                .set(i64::from(state.mode));
            self.waiters
                .with_label_values(&labels)
                .set(crate::metrics::as_gauge(state.waiters));
            self.paused
                .with_label_values(&labels)
                .set(i64::from(state.is_paused));
            self.budget
                .with_label_values(&labels)
                .set(i64::from(state.budget));
            self.quota
                .with_label_values(&labels)
                .set(i64::from(state.quota));
        }
        [
            self.mode.collect(),
            self.waiters.collect(),
            self.paused.collect(),
            self.budget.collect(),
            self.quota.collect(),
        ]
        .concat()
    }
}
