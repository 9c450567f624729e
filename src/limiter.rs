//! The upstream budget behind one small interface: may a call go out now, and what do
//! Tencent's answers mean for the calls that follow.
//!
//! - [`Limiter::acquire`] waits for a [`Permit`] (FIFO, bounded by `max_wait`, the caller's
//!   deadline and `max_waiters`) or refuses with a [`ThrottleError`] and a `retry_after`.
//!   A `Permit` is made nowhere else, and an upstream call is signed only from one
//!   (`proxy::call`): no call reaches Tencent without passing its budget.
//! - [`Limiter::observe`] is the policy for Tencent's signals (reference §6): 60007/60018/60019
//!   pause the command, 60011 and UserSig rejections pause the app (doubling while they
//!   repeat), 70050 locks the app out for 60 s, a success resets the doubling.
//! - The budgets themselves sit behind [`Backend`]: the local GCRA of [`crate::throttle`]
//!   today, a fleet-wide one on Redis next. Adding one is a variant here; the request path
//!   never asks which backend it has.
//!
//! Metrics owned here: `throttle_permits_total`, `throttle_wait_seconds`,
//! `throttle_rejections_total`, and at scrape time `throttle_waiters`, `throttle_paused`,
//! `throttle_budget_per_second`, `upstream_quota_per_second`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, Registry};
use tokio::time::Instant;

use crate::fleet::{BudgetKeys, FleetBudget, FleetMetrics, FleetThrottle, FleetTiming};
use crate::metrics::{counter_vec, histogram_vec};
use crate::outcome::Outcome;
use crate::throttle::{BudgetSpec, PauseReason, Throttle, ThrottleError, LOCKOUT};

mod collector;
use collector::BudgetCollector;

/// Budgets per app for commands outside the catalogue, each taken by the first such command
/// called (`Limiter::pass_through`); commands beyond that many share the app's last budget,
/// labelled `other`. Bounds the metrics' labels and the memory whatever clients send.
pub const PASS_THROUGH_BUDGETS: usize = 32;

/// Names one budget: an (app, command) pair. Each app's slots are its catalogue commands,
/// then [`PASS_THROUGH_BUDGETS`] for pass-through commands, then `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetKey {
    app: u32,
    slot: u32,
}

/// Proof that one call may go out now; made only by [`Limiter::acquire`]. GCRA limits the
/// rate at which permits are issued, so holding one has no further effect.
#[must_use = "a permit stands for one upstream call"]
#[derive(Debug)]
pub struct Permit {
    key: BudgetKey,
    /// How long the caller waited for it.
    pub waited: Duration,
}

impl Permit {
    /// A permit from nowhere, for unit tests of what consumes one.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Permit {
        Permit {
            key: BudgetKey { app: 0, slot: 0 },
            waited: Duration::ZERO,
        }
    }

    /// The budget this permit was taken from.
    pub fn key(&self) -> BudgetKey {
        self.key
    }
}

/// What [`Limiter::observe`] did about Tencent's answer, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// Nothing changes for the calls that follow.
    Unchanged,
    /// This command pauses for this long.
    CommandPaused(Duration),
    /// Every command of the app pauses for this long.
    AppPaused(Duration),
    /// No calls for the app until Tencent's lockout ends.
    AppLockedOut(Duration),
}

/// Where the budgets live. A fleet-wide backend is one more variant.
#[derive(Debug)]
pub enum Backend {
    /// In this process: GCRA per budget ([`crate::throttle`]).
    Local(Throttle),
    /// Shared by every gateway on one Redis ([`crate::fleet`]).
    Fleet(FleetThrottle),
}

/// How a budget stands right now, for the scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetState {
    /// `throttle_mode`: 0 local, 1 fleet (Redis); Redis unavailable: 2 guard, 3 share,
    /// 4 closed (`design/fleet.md` §4.5).
    pub mode: u8,
    pub waiters: usize,
    pub is_paused: bool,
    pub budget: u32,
    pub quota: u32,
}

impl Backend {
    async fn acquire(
        &self,
        key: BudgetKey,
        wait_until: Instant,
    ) -> Result<Duration, ThrottleError> {
        match self {
            Backend::Local(throttle) => throttle.at(key.app, key.slot).acquire(wait_until).await,
            Backend::Fleet(fleet) => fleet.acquire(key.app, key.slot, wait_until).await,
        }
    }

    fn back_off(
        &self,
        key: BudgetKey,
        base: Duration,
        max: Duration,
        why: PauseReason,
    ) -> Duration {
        match self {
            Backend::Local(throttle) => throttle.at(key.app, key.slot).back_off(base, max, why),
            Backend::Fleet(fleet) => fleet.back_off(key.app, key.slot, base, max, why),
        }
    }

    fn back_off_app(
        &self,
        key: BudgetKey,
        base: Duration,
        max: Duration,
        why: PauseReason,
    ) -> Duration {
        match self {
            Backend::Local(throttle) => throttle.back_off_app(key.app, base, max, why),
            Backend::Fleet(fleet) => fleet.back_off_app(key.app, base, max, why),
        }
    }

    fn lock_out_app(&self, key: BudgetKey, lockout: Duration) {
        match self {
            Backend::Local(throttle) => throttle.lock_out_app(key.app, lockout),
            Backend::Fleet(fleet) => fleet.lock_out_app(key.app, lockout),
        }
    }

    fn record_success(&self, key: BudgetKey) {
        match self {
            Backend::Local(throttle) => throttle.at(key.app, key.slot).record_success(),
            Backend::Fleet(fleet) => fleet.local().at(key.app, key.slot).record_success(),
        }
    }

    fn state(&self, key: BudgetKey) -> BudgetState {
        match self {
            Backend::Local(throttle) => {
                let budget = throttle.at(key.app, key.slot);
                BudgetState {
                    mode: 0,
                    waiters: budget.waiters(),
                    is_paused: budget.is_paused(),
                    budget: budget.spec().budget(),
                    quota: budget.spec().quota,
                }
            }
            Backend::Fleet(fleet) => {
                let budget = fleet.local().at(key.app, key.slot);
                let shared = fleet.budget(key.app, key.slot);
                BudgetState {
                    mode: if shared.is_unavailable() {
                        fleet.fallback_mode(key.app, key.slot, Instant::now()) as u8
                    } else {
                        1
                    },
                    waiters: budget.waiters() + shared.waiters(),
                    is_paused: budget.is_paused(),
                    budget: budget.spec().budget(),
                    quota: budget.spec().quota,
                }
            }
        }
    }
}

/// What a fleet limiter needs of Redis.
#[derive(Clone)]
pub struct FleetRedis {
    pub connection: redis::aio::ConnectionManager,
    /// For connections of their own (pub/sub).
    pub client: redis::Client,
    /// Registered once per gateway, shared with the shared cache.
    pub metrics: Arc<FleetMetrics>,
    pub key_prefix: String,
    pub timing: FleetTiming,
    /// What this gateway's heartbeats learned (the share fallback's guard).
    pub members: Arc<crate::fleet::MemberStatus>,
}

/// The back-off Tencent's frequency signals and UserSig rejections start from and cap at.
#[derive(Debug, Clone, Copy)]
pub struct BackOff {
    pub base: Duration,
    pub max: Duration,
}

/// Every budget of the gateway, its policy and its metrics.
#[derive(Debug)]
pub struct Limiter {
    /// Where the budgets live; shared with the scrape-time collector.
    backend: Arc<Backend>,
    /// Where Tencent's pause signals start and stop doubling.
    back_off: BackOff,
    /// Command slots per app: the catalogue's commands, the pass-through ones, `other`.
    slots: u32,
    /// The catalogue's commands per app (the first pass-through slot).
    commands: u32,
    /// Per budget, indexed like the backend: `app * slots + slot`; shared with the
    /// scrape-time collector, which reads the names pass-through budgets are given.
    handles: Arc<[KeyMetrics]>,
    /// Serialises the naming of pass-through budgets.
    naming: std::sync::Mutex<()>,
}

/// One budget's metric handles, each created on first use: a command never called shows
/// no series (with the whole catalogue, eager histograms would be thousands of zeros).
#[derive(Debug)]
struct KeyMetrics {
    permits: OnceLock<IntCounter>,
    wait: OnceLock<Histogram>,
    permits_vec: IntCounterVec,
    wait_vec: HistogramVec,
    /// By [`ThrottleError`] variant, created on first use.
    rejections: [OnceLock<IntCounter>; 6],
    app: String,
    /// The command label: set at start, or for a pass-through budget when it is named.
    command: OnceLock<String>,
    rejections_vec: IntCounterVec,
}

impl KeyMetrics {
    fn labels(&self) -> [&str; 2] {
        let command = self
            .command
            .get()
            .map_or(crate::metrics::OTHER_COMMAND, String::as_str);
        [self.app.as_str(), command]
    }
}

impl Limiter {
    /// A local limiter: for every app, one budget per catalogue command (`command_specs`,
    /// labelled `command_names`) and one shared by its pass-through commands (`other`).
    ///
    /// # Errors
    /// A metric could not be registered (a bug).
    pub fn local(
        registry: &Registry,
        app_names: &[String],
        command_names: &[&str],
        command_specs: &[BudgetSpec],
        other: BudgetSpec,
        back_off: BackOff,
    ) -> prometheus::Result<Self> {
        let throttle = Throttle::new(
            app_names.len(),
            &with_pass_through(command_specs, other),
            other,
        );
        Limiter::with_backend(
            registry,
            Backend::Local(throttle),
            app_names,
            command_names,
            back_off,
        )
    }

    /// New numbers for every budget (a reloaded config), laid out as at creation:
    /// `command_specs` per catalogue command, `other` for pass-through commands.
    pub fn set_specs(&self, command_specs: &[BudgetSpec], other: BudgetSpec) {
        let specs: Vec<BudgetSpec> = with_pass_through(command_specs, other)
            .into_iter()
            .chain([other])
            .collect();
        let apps = self.handles.len() / specs.len().max(1);
        for app in 0..apps as u32 {
            for (slot, spec) in specs.iter().enumerate() {
                match &*self.backend {
                    Backend::Local(throttle) => throttle.set_spec(app, slot as u32, *spec),
                    Backend::Fleet(fleet) => fleet.set_spec(app, slot as u32, *spec),
                }
            }
        }
    }

    /// A fleet limiter: the same budgets as [`Limiter::local`], each shared through Redis
    /// under the app's SDKAppID (`sdkappids`, one per app) and the command's name.
    ///
    /// # Errors
    /// A metric could not be registered (a bug).
    #[allow(clippy::too_many_arguments)]
    pub fn fleet(
        registry: &Registry,
        app_names: &[String],
        sdkappids: &[u64],
        command_names: &[&str],
        command_specs: &[BudgetSpec],
        other: BudgetSpec,
        back_off: BackOff,
        redis: FleetRedis,
    ) -> prometheus::Result<Self> {
        let local = Throttle::new(
            app_names.len(),
            &with_pass_through(command_specs, other),
            other,
        );
        let metrics = Arc::clone(&redis.metrics);
        let budgets = sdkappids
            .iter()
            .flat_map(|&sdkappid| {
                let (redis, metrics) = (&redis, &metrics);
                command_names
                    .iter()
                    .copied()
                    .map(Some)
                    .chain(std::iter::repeat_n(None, PASS_THROUGH_BUDGETS))
                    .chain([Some(crate::metrics::OTHER_COMMAND)])
                    .zip(
                        with_pass_through(command_specs, other)
                            .into_iter()
                            .chain([other]),
                    )
                    .map(move |(command, spec)| {
                        Arc::new(FleetBudget::new(
                            command.map(|c| BudgetKeys::new(&redis.key_prefix, sdkappid, c)),
                            spec,
                            redis.timing,
                            redis.connection.clone(),
                            Arc::clone(metrics),
                        ))
                    })
            })
            .collect();
        let fleet = FleetThrottle::new(
            local,
            Some(redis.client),
            budgets,
            redis.connection,
            redis.timing,
            metrics,
            redis.members,
        );
        Limiter::with_backend(
            registry,
            Backend::Fleet(fleet),
            app_names,
            command_names,
            back_off,
        )
    }

    fn with_backend(
        registry: &Registry,
        backend: Backend,
        app_names: &[String],
        command_names: &[&str],
        back_off: BackOff,
    ) -> prometheus::Result<Self> {
        let labels = ["app", "command"];
        let permits = counter_vec(
            registry,
            "throttle_permits_total",
            "Permits granted for calls to Tencent.",
            &labels,
        )?;
        let wait = histogram_vec(
            registry,
            "throttle_wait_seconds",
            "Time spent waiting for a permit, in seconds.",
            &labels,
        )?;
        let rejections = counter_vec(
            registry,
            "throttle_rejections_total",
            "Requests refused a permit, by reason.",
            &["app", "command", "reason"],
        )?;
        // Catalogue commands, then the pass-through slots (named on first use), then `other`.
        let commands: Vec<Option<&str>> = command_names
            .iter()
            .copied()
            .map(Some)
            .chain(std::iter::repeat_n(None, PASS_THROUGH_BUDGETS))
            .chain([Some(crate::metrics::OTHER_COMMAND)])
            .collect();
        let mut handles = Vec::new();
        for app in app_names {
            for command in &commands {
                handles.push(KeyMetrics {
                    permits: OnceLock::new(),
                    wait: OnceLock::new(),
                    permits_vec: permits.clone(),
                    wait_vec: wait.clone(),
                    rejections: Default::default(),
                    app: app.clone(),
                    command: command.map_or_else(OnceLock::new, |c| OnceLock::from(c.to_owned())),
                    rejections_vec: rejections.clone(),
                });
            }
        }
        let backend = Arc::new(backend);
        let handles: Arc<[KeyMetrics]> = handles.into();
        let slots = commands.len() as u32;
        registry.register(Box::new(BudgetCollector::new(
            Arc::clone(&backend),
            Arc::clone(&handles),
            slots,
        )?))?;
        Ok(Limiter {
            backend,
            back_off,
            slots,
            commands: command_names.len() as u32,
            handles,
            naming: std::sync::Mutex::new(()),
        })
    }

    /// The budget of pass-through command `name` in `app`: its own (named after it on its
    /// first call) while one of the app's [`PASS_THROUGH_BUDGETS`] is free, else the app's
    /// shared `other` budget. Scans the app's pass-through slots: call it once per command
    /// and keep the key.
    pub fn pass_through(&self, app: usize, name: &str) -> BudgetKey {
        let _naming = self
            .naming
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for i in 0..PASS_THROUGH_BUDGETS as u32 {
            let key = BudgetKey {
                app: app as u32,
                slot: self.commands + i,
            };
            let command = &self.handles(key).command;
            match command.get() {
                Some(named) if named == name => return key,
                Some(_) => continue,
                None => {
                    let _ = command.set(name.to_owned());
                    if let Backend::Fleet(fleet) = &*self.backend {
                        fleet.name(key.app, key.slot, name);
                    }
                    return key;
                }
            }
        }
        self.key(app, None)
    }

    /// Where `key` is among the app's pass-through budgets, if it is one of them.
    pub fn pass_through_index(&self, key: BudgetKey) -> Option<usize> {
        let i = key.slot.checked_sub(self.commands)? as usize;
        (i < PASS_THROUGH_BUDGETS).then_some(i)
    }

    /// The budget of `command` (a catalogue index, or `None` for pass-through) in `app`.
    pub fn key(&self, app: usize, command: Option<usize>) -> BudgetKey {
        let slot = command.map_or(self.slots - 1, |c| c as u32);
        debug_assert!(slot < self.slots);
        BudgetKey {
            app: app as u32,
            slot,
        }
    }

    fn handles(&self, key: BudgetKey) -> &KeyMetrics {
        &self.handles[(key.app * self.slots + key.slot) as usize]
    }

    /// Waits for a permit of `key` until `wait_until` at most (and `max_wait` from now); an
    /// instant already past still takes a slot that is free right now.
    ///
    /// # Errors
    /// A [`ThrottleError`] with a `retry_after` when no slot is free in time.
    pub async fn acquire(
        &self,
        key: BudgetKey,
        wait_until: Instant,
    ) -> Result<Permit, ThrottleError> {
        let handles = self.handles(key);
        match self.backend.acquire(key, wait_until).await {
            Ok(waited) => {
                let labels = handles.labels();
                handles
                    .permits
                    .get_or_init(|| handles.permits_vec.with_label_values(&labels))
                    .inc();
                handles
                    .wait
                    .get_or_init(|| handles.wait_vec.with_label_values(&labels))
                    .observe(waited.as_secs_f64());
                Ok(Permit { key, waited })
            }
            Err(refused) => {
                let (i, reason) = match refused {
                    ThrottleError::Saturated { .. } => (0, "saturated"),
                    ThrottleError::QueueFull { .. } => (1, "queue_full"),
                    ThrottleError::Paused { .. } => (2, "paused"),
                    ThrottleError::LockedOut { .. } => (3, "locked_out"),
                    ThrottleError::UserSigRejected { .. } => (4, "usersig_rejected"),
                    ThrottleError::FleetUnavailable { .. } => (5, "fleet_unavailable"),
                };
                handles.rejections[i]
                    .get_or_init(|| {
                        let [app, command] = handles.labels();
                        handles
                            .rejections_vec
                            .with_label_values(&[app, command, reason])
                    })
                    .inc();
                Err(refused)
            }
        }
    }

    /// Applies what Tencent's answer to a call from `key` means for the calls that follow
    /// (reference §6) and says what it did.
    pub fn observe(&self, key: BudgetKey, outcome: Outcome) -> Reaction {
        let BackOff { base, max } = self.back_off;
        match outcome {
            Outcome::Success => {
                self.backend.record_success(key);
                Reaction::Unchanged
            }
            Outcome::FrequencyLimited => Reaction::CommandPaused(self.backend.back_off(
                key,
                base,
                max,
                PauseReason::FrequencyLimit,
            )),
            Outcome::AppFrequencyLimited => Reaction::AppPaused(self.backend.back_off_app(
                key,
                base,
                max,
                PauseReason::FrequencyLimit,
            )),
            Outcome::UserSigRejected => Reaction::AppPaused(self.backend.back_off_app(
                key,
                base,
                max,
                PauseReason::UserSigRejected,
            )),
            Outcome::LockedOut => {
                self.backend.lock_out_app(key, LOCKOUT);
                Reaction::AppLockedOut(LOCKOUT)
            }
            Outcome::UserSigExpired
            | Outcome::Retryable
            | Outcome::ConfigError(_)
            | Outcome::Other => Reaction::Unchanged,
        }
    }
}

/// The catalogue's budget specs followed by the pass-through slots' (each `other`'s spec).
fn with_pass_through(command_specs: &[BudgetSpec], other: BudgetSpec) -> Vec<BudgetSpec> {
    command_specs
        .iter()
        .copied()
        .chain(std::iter::repeat_n(other, PASS_THROUGH_BUDGETS))
        .collect()
}
