//! What fleet mode reports: how Redis answers (latency, failures by kind), how large the
//! reservation batches are, and how many calls were re-charged after failures.
//!
//! Metrics owned here: `redis_command_duration_seconds{op}`, `redis_errors_total{op, kind}`,
//! `throttle_batch_size`, `throttle_debt_charged_total`. `op` is `reserve`, `pause`, or the shared
//! cache's `cache_claim`, `cache_store`, `invalidate`, or `heartbeat`; `kind`
//! is `timeout`, `error` or `late` (a reservation reply after `fleet.max_lateness`, thrown
//! away). Every series is created at start, so alerts need no `offset` tricks.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

use crate::metrics::{counter_vec, histogram_vec};

/// Which Redis command a measurement is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Reserve = 0,
    Pause = 1,
    /// The shared cache's `claim.lua`.
    CacheClaim = 2,
    /// The shared cache's `store.lua`.
    CacheStore = 3,
    /// The shared cache's `invalidate.lua`.
    Invalidate = 4,
    /// A membership heartbeat (`members.lua`).
    Heartbeat = 5,
}

/// How a Redis command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No reply within `fleet.command_timeout`.
    Timeout = 0,
    /// Redis refused or the connection failed.
    Error = 1,
    /// A reservation reply after `fleet.max_lateness` (its slots are spent).
    Late = 2,
}

const OPS: [&str; 6] = [
    "reserve",
    "pause",
    "cache_claim",
    "cache_store",
    "invalidate",
    "heartbeat",
];
const FAILURES: [&str; 3] = ["timeout", "error", "late"];

/// The fleet's metric handles, shared by every fleet budget of the gateway.
///
/// It also counts every failed Redis command of the process: a Redis that restarted or failed
/// over lost every budget's state, not only the state of the budget whose call failed, so
/// every budget re-charges after any failure.
#[derive(Debug)]
pub struct FleetMetrics {
    duration: [Histogram; 6],
    errors: [[IntCounter; 3]; 6],
    batch: Histogram,
    debt: IntCounter,
    failures: std::sync::atomic::AtomicU64,
}

impl FleetMetrics {
    /// Registers the fleet's families on `registry`, every series at zero.
    ///
    /// # Errors
    /// A metric could not be registered (a bug).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let duration = histogram_vec(
            registry,
            "redis_command_duration_seconds",
            "Time for fleet mode's Redis commands to answer, in seconds, by command.",
            &["op"],
        )?;
        let errors = counter_vec(
            registry,
            "redis_errors_total",
            "Fleet mode's Redis commands that failed, by command and kind (timeout, error, late).",
            &["op", "kind"],
        )?;
        let batch = Histogram::with_opts(
            HistogramOpts::new(
                "throttle_batch_size",
                "Slots granted per reservation call to Redis (fleet mode).",
            )
            .buckets(vec![0.0, 1.0, 2.0, 4.0, 8.0, 16.0]),
        )?;
        registry.register(Box::new(batch.clone()))?;
        let debt = IntCounter::new(
            "throttle_debt_charged_total",
            "Calls re-charged to the fleet's budgets after Redis failures (fleet mode).",
        )?;
        registry.register(Box::new(debt.clone()))?;
        Ok(FleetMetrics {
            duration: OPS.map(|op| duration.with_label_values(&[op])),
            errors: OPS.map(|op| FAILURES.map(|kind| errors.with_label_values(&[op, kind]))),
            batch,
            debt,
            failures: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// On a registry of its own, for tests and tools.
    pub fn unregistered() -> Self {
        FleetMetrics::register(&Registry::new()).expect("fixed, valid metric names")
    }

    pub fn answered(&self, op: Op, took: Duration) {
        self.duration[op as usize].observe(took.as_secs_f64());
    }

    pub fn failed(&self, op: Op, failure: Failure) {
        self.errors[op as usize][failure as usize].inc();
        // What may mean Redis lost its state (a restart or failover breaks the connection,
        // whichever command meets it first): every failure of the budgets' own commands and
        // the heartbeat, and the errors (not the timeouts) of the shared cache's, which a
        // loaded gateway's 50 ms claims can meet without anything wrong with Redis.
        let may_mean_lost_state = match op {
            Op::Reserve | Op::Pause | Op::Heartbeat => failure != Failure::Late,
            Op::CacheClaim | Op::CacheStore | Op::Invalidate => failure == Failure::Error,
        };
        if may_mean_lost_state {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Failed Redis commands that may mean Redis lost its state, of the whole process so far:
    /// after one, every budget re-charges its last second of calls.
    pub(super) fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn granted(&self, slots: usize) {
        self.batch.observe(slots as f64);
    }

    pub(super) fn charged(&self, debt: u32) {
        self.debt.inc_by(u64::from(debt));
    }
}
