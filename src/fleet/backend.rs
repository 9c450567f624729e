//! The limiter's fleet backend: every budget is a [`FleetBudget`] on Redis, with this
//! gateway's own [`Throttle`] beside it for the signals it saw itself.
//!
//! - A permit needs both: no pause or lockout known here (`Budget::wait_unblocked`), then a
//!   slot of the fleet's timeline.
//! - Tencent's signals pause the budget here at once and, through `pause.lua`, in Redis, where
//!   every gateway's next reservation honours them (design/fleet.md §4.3).
//! - When Redis cannot be reached (design/fleet.md §4.5): with `fleet.fallback = "closed"`,
//!   calls fail closed: [`ThrottleError::FleetUnavailable`] (429 with `Retry-After`; a
//!   cacheable read falls back to a stale answer). With `"share"`, calls still fail closed
//!   (the guard) until every other gateway must count this one a suspect and has slowed its
//!   timeline by this gateway's share: [`SUSPECT_AFTER`] after Redis last heard this
//!   gateway's heartbeat (fenced: see [`MemberStatus`]), plus the look-ahead of slots
//!   reserved before (used up to `max_lateness` late), plus a second for the sliding window. Then this gateway calls on its own at 1/`expected_replicas` of the
//!   fleet's rate (burst 1), its calls recorded for the re-charge when Redis is back, until
//!   [`FALLBACK_MAX`] after it was last heard (the others forget it at `FORGET_AFTER`), and
//!   fails closed after that; never with more live gateways than `expected_replicas`.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::time::Instant;

use super::budget::{FleetBudget, LOOKAHEAD};
use super::control::Control;
use super::members::{MemberStatus, FALLBACK_MAX, SUSPECT_AFTER};
use super::metrics::{Failure, FleetMetrics, Op};
use super::script::{BudgetKeys, PauseScript};
use super::{FleetTiming, Refusal};
use crate::throttle::{BudgetSpec, PauseReason, Throttle, ThrottleError};

/// `Retry-After` while Redis cannot be reached.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// What a budget does while its reservations fail (values of `throttle_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Closed until the others surely leave room for this gateway's share.
    Guard = 2,
    /// Calling on its own at its share.
    Share = 3,
    Closed = 4,
}

/// Every budget of the gateway, shared with the fleet.
pub struct FleetThrottle {
    local: Arc<Throttle>,
    /// The share fallback's own budgets (1/`expected_replicas` of each fleet rate), laid
    /// out like `local`; `None` where a share would be under one call a second.
    share: Vec<Option<crate::throttle::Budget>>,
    members: Arc<MemberStatus>,
    /// Indexed like `local`: `app * slots + slot`.
    budgets: Vec<Arc<FleetBudget<ConnectionManager>>>,
    slots: usize,
    connection: ConnectionManager,
    pause: PauseScript,
    /// This gateway's id in its `ctl` messages (so that it skips its own).
    id: u64,
    timing: FleetTiming,
    metrics: Arc<FleetMetrics>,
}

impl std::fmt::Debug for FleetThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetThrottle")
            .field("budgets", &self.budgets.len())
            .finish_non_exhaustive()
    }
}

impl FleetThrottle {
    /// `budgets` are laid out like `local`'s: every app's command slots in order. With a
    /// `client`, the gateway listens for the pauses of the others (see [`super::control`]).
    pub fn new(
        local: Throttle,
        client: Option<redis::Client>,
        budgets: Vec<Arc<FleetBudget<ConnectionManager>>>,
        connection: ConnectionManager,
        timing: FleetTiming,
        metrics: Arc<FleetMetrics>,
        members: Arc<MemberStatus>,
    ) -> Self {
        let slots = local.slots();
        assert_eq!(budgets.len() % slots, 0, "a fleet budget per local budget");
        let share = budgets
            .iter()
            .map(|budget| share_budget(budget, timing.expected_replicas))
            .collect();
        let local = Arc::new(local);
        let id = fastrand::u64(..);
        if let Some(client) = client {
            let control = Control {
                local: Arc::downgrade(&local),
                budgets: budgets
                    .iter()
                    .enumerate()
                    .map(|(at, budget)| {
                        let (app, slot) = (at / slots, at % slots);
                        (app as u32, slot as u32, Arc::clone(budget))
                    })
                    .collect(),
                id,
            };
            tokio::spawn(super::control::listen(client, Arc::new(control)));
        }
        FleetThrottle {
            local,
            share,
            members,
            budgets,
            slots,
            connection,
            pause: PauseScript::default(),
            id,
            timing,
            metrics,
        }
    }

    /// Names the pass-through budget in `slot` of `app` after its command (once).
    pub fn name(&self, app: u32, slot: u32, command: &str) {
        let keys = self.budget(app, 0).keys().sibling(command);
        self.budget(app, slot).name(keys);
    }

    pub fn local(&self) -> &Throttle {
        &self.local
    }

    /// New numbers for the budget in `slot` of `app` (a reloaded config): its local
    /// bookkeeping, its fleet reservations and its share. A share too small to exist (under
    /// 2 calls a second) neither appears nor goes away before a restart.
    pub fn set_spec(&self, app: u32, slot: u32, spec: BudgetSpec) {
        self.local.at(app, slot).set_spec(spec);
        let budget = self.budget(app, slot);
        budget.set_spec(spec);
        let at = app as usize * self.slots + slot as usize;
        if let (Some(share), Some(spec)) = (
            &self.share[at],
            share_spec(budget, self.timing.expected_replicas),
        ) {
            share.set_spec(spec);
        }
    }

    pub fn budget(&self, app: u32, slot: u32) -> &Arc<FleetBudget<ConnectionManager>> {
        &self.budgets[app as usize * self.slots + slot as usize]
    }

    fn app_budgets(&self, app: u32) -> &[Arc<FleetBudget<ConnectionManager>>] {
        let app = app as usize;
        &self.budgets[app * self.slots..(app + 1) * self.slots]
    }

    /// A pause this gateway knows of, then a slot of the fleet's timeline.
    ///
    /// # Errors
    /// The local pause, the fleet's refusal, or [`ThrottleError::FleetUnavailable`].
    pub async fn acquire(
        &self,
        app: u32,
        slot: u32,
        wait_until: Instant,
    ) -> Result<Duration, ThrottleError> {
        let started = Instant::now();
        let local = self.local.at(app, slot);
        local.wait_unblocked(wait_until).await?;
        let mut got = self.budget(app, slot).acquire(wait_until).await;
        // A pause this gateway heard of while the caller slept towards its slot voids the slot:
        // the caller waits the pause out and takes a new one, spaced by the fleet's timeline
        // after the pause. (Holding the old slots until the pause ends would send them all at
        // once: seen, 104 calls in a second against a quota of 100.)
        while got.is_ok() && local.is_paused() {
            local.wait_unblocked(wait_until).await?;
            got = self.budget(app, slot).acquire(wait_until).await;
        }
        match got {
            Ok(_) => Ok(Instant::now() - started),
            Err(Refusal::Throttled(refused)) => Err(refused),
            Err(Refusal::RedisUnavailable) => {
                let at = app as usize * self.slots + slot as usize;
                let unavailable = ThrottleError::FleetUnavailable {
                    retry_after: UNAVAILABLE_RETRY,
                };
                let (Fallback::Share, Some(share), Some(ends)) = (
                    self.fallback(Instant::now()),
                    &self.share[at],
                    self.share_ends(),
                ) else {
                    return Err(unavailable);
                };
                // A share permit is never far ahead (a queue of them would outlive the
                // fallback), and is used only if the budget is still on it when it comes.
                let limit = wait_until.min(Instant::now() + LOOKAHEAD).min(ends);
                share.acquire(limit).await?;
                if self.fallback(Instant::now()) != Fallback::Share
                    || !self.budgets[at].is_unavailable()
                {
                    return Err(unavailable);
                }
                self.budgets[at].record_local_call(Instant::now());
                Ok(Instant::now() - started)
            }
        }
    }

    /// What a budget whose reservations fail does at `now` (design/fleet.md §4.5).
    pub fn fallback(&self, now: Instant) -> Fallback {
        let Some(recorded) = self.members.last_record() else {
            // Never a member: nobody leaves room for this gateway.
            return Fallback::Closed;
        };
        if !self.timing.is_sharing || self.members.live() > self.timing.expected_replicas {
            return Fallback::Closed;
        }
        let since = now.saturating_duration_since(recorded);
        if since < self.guard() {
            Fallback::Guard
        } else if since < FALLBACK_MAX {
            Fallback::Share
        } else {
            Fallback::Closed
        }
    }

    /// How long after Redis may last have recorded this gateway every other gateway surely
    /// leaves room for its share: until it is a suspect there (Redis's clock is read in
    /// whole ms), plus the slots they reserved before (up to the look-ahead, used up to
    /// `max_lateness` late), plus a second for the sliding window.
    fn guard(&self) -> Duration {
        SUSPECT_AFTER
            + Duration::from_millis(1)
            + LOOKAHEAD
            + self.timing.max_lateness
            + Duration::from_secs(1)
    }

    /// When the share ends, if this gateway ever was a member.
    fn share_ends(&self) -> Option<Instant> {
        Some(self.members.last_record()? + FALLBACK_MAX)
    }

    /// `throttle_mode` of the budget at (app, slot) whose reservations fail.
    pub fn fallback_mode(&self, app: u32, slot: u32, now: Instant) -> Fallback {
        match self.fallback(now) {
            Fallback::Share if self.share[app as usize * self.slots + slot as usize].is_none() => {
                Fallback::Closed
            }
            mode => mode,
        }
    }

    /// 60007/60018/60019: this command pauses here now and, through Redis, fleet-wide.
    pub fn back_off(
        &self,
        app: u32,
        slot: u32,
        base: Duration,
        max: Duration,
        why: PauseReason,
    ) -> Duration {
        let pause = self.local.at(app, slot).back_off(base, max, why);
        let budget = self.budget(app, slot);
        let keys = budget.keys();
        self.tell_fleet(
            keys,
            &keys.command_pause,
            vec![(keys.rate.clone(), budget.gcra().tolerance_us)],
            (pause, why),
        );
        pause
    }

    /// 60011 or a UserSig rejection: every command of the app pauses, here and fleet-wide.
    pub fn back_off_app(
        &self,
        app: u32,
        base: Duration,
        max: Duration,
        why: PauseReason,
    ) -> Duration {
        let pause = self.local.back_off_app(app, base, max, why);
        let budgets = self.app_budgets(app);
        let keys = budgets[0].keys();
        self.tell_fleet(keys, &keys.app_pause, rates(budgets), (pause, why));
        pause
    }

    /// 70050: no calls for the app, here and fleet-wide.
    pub fn lock_out_app(&self, app: u32, lockout: Duration) {
        self.local.lock_out_app(app, lockout);
        let budgets = self.app_budgets(app);
        let keys = budgets[0].keys();
        let why = PauseReason::FrequencyLimit; // not read: a lockout is a lockout
        self.tell_fleet(keys, &keys.lockout, rates(budgets), (lockout, why));
    }

    /// Writes a pause to Redis in the background, bounded by `command_timeout`, and tells
    /// the other gateways on the app's `ctl` channel. If Redis cannot hear of it, this
    /// gateway still holds it; the others learn from Tencent.
    fn tell_fleet(
        &self,
        keys: &BudgetKeys,
        pause_key: &str,
        rates: Vec<(String, u64)>,
        (pause, why): (Duration, PauseReason),
    ) {
        let mut connection = self.connection.clone();
        let script = self.pause.clone();
        let (pause_key, channel) = (pause_key.to_owned(), keys.ctl.clone());
        let tag = super::control::tag(why, self.id);
        let timeout = self.timing.command_timeout;
        let metrics = Arc::clone(&self.metrics);
        tokio::spawn(async move {
            let sent = Instant::now();
            let told = tokio::time::timeout(
                timeout,
                script.pause(&mut connection, &pause_key, &rates, pause, (&channel, &tag)),
            )
            .await;
            match &told {
                Ok(Ok(_)) => metrics.answered(Op::Pause, sent.elapsed()),
                Ok(Err(_)) => metrics.failed(Op::Pause, Failure::Error),
                Err(_) => metrics.failed(Op::Pause, Failure::Timeout),
            }
            if !matches!(told, Ok(Ok(_))) {
                tracing::warn!(
                    key = %pause_key,
                    "could not tell the fleet of a pause through Redis; this gateway holds it"
                );
            }
        });
    }
}

fn rates(budgets: &[Arc<FleetBudget<ConnectionManager>>]) -> Vec<(String, u64)> {
    budgets
        .iter()
        .filter_map(|budget| {
            Some((
                budget.keys_if_named()?.rate.clone(),
                budget.gcra().tolerance_us,
            ))
        })
        .collect()
}

/// The share fallback's budget beside `budget`: at most floor(fleet rate / replicas) calls in
/// any sliding second (burst 1), so the shares of every suspect gateway fit in the room the
/// others leave them.
fn share_budget(
    budget: &FleetBudget<ConnectionManager>,
    replicas: u32,
) -> Option<crate::throttle::Budget> {
    share_spec(budget, replicas).map(crate::throttle::Budget::new)
}

/// The numbers of [`share_budget`]; `None` where a share would be under 2 calls a second.
fn share_spec(budget: &FleetBudget<ConnectionManager>, replicas: u32) -> Option<BudgetSpec> {
    let fleet_rate = 1_000_000 / budget.gcra().interval_us.max(1);
    let per_second = u32::try_from(fleet_rate / u64::from(replicas.max(1))).ok()?;
    (per_second >= 2).then(|| BudgetSpec {
        quota: per_second + 1,
        safety_margin: 0.0,
        burst: 0.0,
        ..budget.spec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{BudgetKeys, Gcra};

    fn spec() -> BudgetSpec {
        BudgetSpec {
            quota: 100,
            safety_margin: 0.05,
            burst: 0.05,
            max_wait: Duration::from_secs(2),
            max_waiters: 1024,
        }
    }

    /// A fleet throttle of one budget, N = 3, whose Redis is never reached (a lazy connection
    /// to nowhere): only its fallback decisions are looked at.
    fn throttle(is_sharing: bool, members: Arc<MemberStatus>) -> FleetThrottle {
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let connection = ConnectionManager::new_lazy_with_config(
            client,
            redis::aio::ConnectionManagerConfig::new(),
        )
        .unwrap();
        let timing = FleetTiming {
            command_timeout: Duration::from_millis(50),
            max_lateness: Duration::from_millis(25),
            expected_replicas: 3,
            is_sharing,
        };
        let metrics = Arc::new(FleetMetrics::unregistered());
        let budget = Arc::new(FleetBudget::new(
            BudgetKeys::new("tim", 1_400_000_000, "a/x"),
            spec(),
            timing,
            connection.clone(),
            Arc::clone(&metrics),
        ));
        FleetThrottle::new(
            Throttle::new(1, &[], spec()),
            None,
            vec![budget],
            connection,
            timing,
            metrics,
            members,
        )
    }

    /// Never a member: closed. A member: guard until 3 s + 1 ms + 250 ms + 25 ms + 1 s after
    /// Redis may last have recorded it, share until 50 s after, closed then; closed too with
    /// more live gateways than expected, or with fallback = closed. The share's budget is
    /// floor(88 / 3) = 29 calls in any second.
    #[tokio::test(start_paused = true)]
    async fn the_fallback_follows_the_lease() {
        let members = Arc::new(MemberStatus::default());
        let sharing = throttle(true, Arc::clone(&members));
        let now = Instant::now();
        assert_eq!(sharing.fallback(now), Fallback::Closed, "never a member");
        members.heard(now, 3);
        let guard = Duration::from_millis(3000 + 1 + 250 + 25 + 1000);
        for (after, expected) in [
            (Duration::ZERO, Fallback::Guard),
            (guard - Duration::from_millis(1), Fallback::Guard),
            (guard, Fallback::Share),
            (FALLBACK_MAX - Duration::from_millis(1), Fallback::Share),
            (FALLBACK_MAX, Fallback::Closed),
        ] {
            assert_eq!(sharing.fallback(now + after), expected, "{after:?}");
        }
        assert_eq!(sharing.share[0].as_ref().unwrap().spec().budget(), 29);
        members.heard(now, 4);
        assert_eq!(
            sharing.fallback(now + guard),
            Fallback::Closed,
            "4 live, 3 expected"
        );
        let closed = throttle(false, Arc::new(MemberStatus::default()));
        closed.members.heard(now, 3);
        assert_eq!(closed.fallback(now + guard), Fallback::Closed);
    }

    /// A reload's new numbers reach the local budget, the fleet's GCRA and the share: quota
    /// 100 → 50 with a 5% margin, a burst of 2 and 25 ms lateness: fleet rate
    /// floor((47 − 2) / 1.025) = 43/s (interval 23,256 µs), a share of floor(42 / 3) = 14.
    #[tokio::test(start_paused = true)]
    async fn a_new_spec_reaches_every_part_of_a_budget() {
        let sharing = throttle(true, Arc::new(MemberStatus::default()));
        let halved = BudgetSpec {
            quota: 50,
            ..spec()
        };
        sharing.set_spec(0, 0, halved);
        assert_eq!(sharing.local().at(0, 0).spec(), halved);
        assert_eq!(sharing.budget(0, 0).spec(), halved);
        assert_eq!(
            sharing.budget(0, 0).gcra().interval_us,
            1_000_000u64.div_ceil(43)
        );
        assert_eq!(sharing.share[0].as_ref().unwrap().spec().budget(), 14);
    }

    /// Until the fleet has settled, a budget reserves with the stricter of its old and new
    /// numbers: a larger burst waits, a higher rate waits; then both apply.
    #[tokio::test(start_paused = true)]
    async fn a_fleet_budget_takes_the_stricter_numbers_until_the_fleet_settles() {
        let sharing = throttle(true, Arc::new(MemberStatus::default()));
        let budget = sharing.budget(0, 0);
        let old = budget.gcra();
        // A larger burst (lower rate): the old tolerance until SETTLE, the new rate at once.
        let bursty = BudgetSpec {
            burst: 0.1,
            ..spec()
        };
        let new = Gcra {
            replicas: 3,
            ..Gcra::for_fleet(&bursty, Duration::from_millis(25), crate::fleet::LOOKAHEAD)
        };
        assert!(new.tolerance_us > old.tolerance_us && new.interval_us > old.interval_us);
        sharing.set_spec(0, 0, bursty);
        let during = budget.gcra();
        assert_eq!(during.tolerance_us, old.tolerance_us);
        assert_eq!(during.interval_us, new.interval_us);
        tokio::time::advance(crate::fleet::SETTLE - Duration::from_millis(1)).await;
        assert_eq!(budget.gcra(), during);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(budget.gcra(), new);
        // Back to the smaller burst (higher rate): the new tolerance at once, the rate later.
        sharing.set_spec(0, 0, spec());
        assert_eq!(budget.gcra().tolerance_us, old.tolerance_us);
        assert_eq!(budget.gcra().interval_us, new.interval_us);
        tokio::time::advance(crate::fleet::SETTLE).await;
        assert_eq!(budget.gcra(), old);
    }
}
