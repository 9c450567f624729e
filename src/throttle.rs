//! Per-(app, command) upstream budget.
//!
//! Invariant: no sliding 1-second window holds more than `budget` upstream calls, where
//! `budget = floor(quota × (1 − safety_margin))` is strictly below Tencent's quota.
//!
//! The limiter is GCRA (the algorithm behind `governor`), with reservations: a caller is given
//! the earliest conforming instant (its *slot*) under one short mutex, and sleeps until then.
//! Slots are handed out in arrival order, so waiters form a FIFO without a queue structure,
//! and nobody polls. With emission interval `1/rate` and a burst of `burst` calls, any window
//! of one second holds at most `burst + rate` calls, so we pick `rate = budget − burst`
//! (a burst equal to the rate would let about twice the rate through in the first second).
//! Under overload the sustained rate is `rate`, at least 90% of the budget (config keeps
//! `burst ≤ 0.1`).
//!
//! A caller whose slot is further away than `max_wait` (or its deadline), or who would join a
//! queue already holding `max_waiters`, is refused at once with a `retry_after`; it reserves
//! nothing. A caller that leaves before its slot (its client hung up) gives the slot back:
//! the next caller takes it, so departures do not waste quota.
//!
//! Tencent's signals pause a budget (60007/60018/60019 and UserSig rejections, doubling while
//! they repeat) or lock it (70050, 60 s). A pause wakes everyone waiting; their slots are void
//! and they take new ones after the pause, which restarts without a burst.
//!
//! We keep our own GCRA rather than `governor` because we need reservations that are FIFO,
//! bounded by a wait limit known before waiting, given back on cancellation and voided by a
//! pause; `governor`'s `until_ready` re-polls each waiter and is not FIFO.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long Tencent blocks an app after too many failed UserSig checks (reference §6), plus
/// a second of margin for clock differences.
pub const LOCKOUT: Duration = Duration::from_secs(61);

/// Why calls are paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// Tencent answered 60007/60011/60018/60019.
    FrequencyLimit,
    /// Tencent rejected the UserSig (wrong key, sdkappid or identifier): repeated failures
    /// would lock the app out for 60 s, so calls are spaced out until it is fixed.
    UserSigRejected,
}

/// Why a caller got no permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleError {
    /// No slot within the caller's wait limit.
    #[error("the upstream budget is exhausted; retry after {retry_after:?}")]
    Saturated { retry_after: Duration },
    /// Too many callers already waiting.
    #[error("too many requests are already waiting for the upstream budget; retry after {retry_after:?}")]
    QueueFull { retry_after: Duration },
    /// Tencent signalled frequency limits; calls are paused.
    #[error(
        "calls are paused after Tencent's frequency-limit answer; retry after {retry_after:?}"
    )]
    Paused { retry_after: Duration },
    /// Tencent rejected the gateway's UserSig; calls are spaced out to avoid a lockout.
    #[error("Tencent rejected the gateway's UserSig (check the app's secret key, sdkappid and identifier); calls to this app are paused to avoid Tencent's 60 s lockout; retry after {retry_after:?}")]
    UserSigRejected { retry_after: Duration },
    /// Tencent locked the app out after failed UserSig checks (70050).
    #[error("Tencent locked this app out for 60 s (70050); retry after {retry_after:?}")]
    LockedOut { retry_after: Duration },
    /// Fleet mode: the shared budget on Redis cannot be reached, and calls fail closed rather
    /// than risk the fleet's quota.
    #[error("the fleet's shared upstream budget (Redis) cannot be reached, so no call goes out (fleet mode never fails open); retry after {retry_after:?}")]
    FleetUnavailable { retry_after: Duration },
}

impl ThrottleError {
    pub fn retry_after(&self) -> Duration {
        match *self {
            ThrottleError::Saturated { retry_after }
            | ThrottleError::QueueFull { retry_after }
            | ThrottleError::Paused { retry_after }
            | ThrottleError::UserSigRejected { retry_after }
            | ThrottleError::LockedOut { retry_after }
            | ThrottleError::FleetUnavailable { retry_after } => retry_after,
        }
    }
}

/// The numbers a budget is built from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSpec {
    /// Tencent's documented calls per second (at least 2).
    pub quota: u32,
    /// Fraction of the quota never used, 0.0..=0.5.
    pub safety_margin: f64,
    /// Fraction of the budget that may go out at once, 0.0..=0.1.
    pub burst: f64,
    pub max_wait: Duration,
    pub max_waiters: usize,
}

impl BudgetSpec {
    /// Calls allowed in any sliding second: strictly below the quota.
    pub fn budget(&self) -> u32 {
        let budget = (f64::from(self.quota) * (1.0 - self.safety_margin)).floor() as u32;
        budget.min(self.quota.saturating_sub(1)).max(1)
    }

    /// Calls that may go out back to back.
    pub fn burst_calls(&self) -> u32 {
        let budget = self.budget();
        ((f64::from(budget) * self.burst).floor() as u32)
            .max(1)
            .min(budget.saturating_sub(1).max(1))
    }

    /// The sustained rate in calls per second: budget minus burst (see the module docs).
    pub fn rate(&self) -> u32 {
        (self.budget() - self.burst_calls()).max(1)
    }
}

/// A budget's numbers and what follows from them; replaced whole by [`Budget::set_spec`].
#[derive(Debug, Clone, Copy)]
struct Rates {
    spec: BudgetSpec,
    /// Time between two calls at the sustained rate.
    interval: Duration,
    /// How far ahead of its theoretical time a call may go: `(burst − 1) × interval`.
    tolerance: Duration,
}

impl Rates {
    fn of(spec: BudgetSpec) -> Rates {
        let interval = Duration::from_secs(1) / spec.rate();
        Rates {
            spec,
            interval,
            tolerance: interval * (spec.burst_calls() - 1),
        }
    }
}

#[derive(Debug)]
struct State {
    rates: Rates,
    /// GCRA's theoretical arrival time of the next call.
    tat: Instant,
    /// No slot before this instant (Tencent asked us to back off).
    paused_until: Instant,
    pause_reason: PauseReason,
    /// No slot before this instant either: Tencent locked the app out (70050).
    locked_until: Instant,
    /// Increases with every pause; a waiter whose slot predates a pause takes a new one.
    epoch: u64,
    /// Consecutive pause signals, for the doubling back-off.
    strikes: u32,
    /// The latest slot granted, so a pause cannot let the next call come sooner than one
    /// interval after it.
    last_granted: Option<Instant>,
    /// Future slots given back by callers that left before their turn, earliest first.
    returned: BinaryHeap<Reverse<Instant>>,
}

impl State {
    fn blocked_until(&self) -> Instant {
        self.paused_until.max(self.locked_until)
    }
}

/// One (app, command) budget.
#[derive(Debug)]
pub struct Budget {
    state: Mutex<State>,
    /// Callers sleeping until their slot.
    waiters: AtomicUsize,
    /// Wakes every sleeping caller when a pause voids their slots.
    paused: Notify,
}

/// A slot a caller is sleeping towards. Dropped unsettled (the caller went away), it gives
/// the slot back; either way it releases the caller's place in the queue.
struct Reservation<'a> {
    budget: &'a Budget,
    slot: Instant,
    epoch: u64,
    /// `tat` before and after this reservation moved it, if it did.
    moved_tat: Option<(Instant, Instant)>,
    is_settled: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget.waiters.fetch_sub(1, Ordering::AcqRel);
        if self.is_settled {
            return;
        }
        let mut state = self.budget.lock();
        if state.epoch != self.epoch || self.slot <= Instant::now() {
            return; // voided by a pause, or already past: nothing to give back
        }
        match self.moved_tat {
            // Still the latest reservation: undo it entirely.
            Some((before, after)) if state.tat == after => state.tat = before,
            _ => state.returned.push(Reverse(self.slot)),
        }
    }
}

impl Budget {
    pub fn new(spec: BudgetSpec) -> Self {
        let now = Instant::now();
        Budget {
            state: Mutex::new(State {
                rates: Rates::of(spec),
                tat: now,
                paused_until: now,
                pause_reason: PauseReason::FrequencyLimit,
                locked_until: now,
                epoch: 0,
                strikes: 0,
                last_granted: None,
                returned: BinaryHeap::new(),
            }),
            waiters: AtomicUsize::new(0),
            paused: Notify::new(),
        }
    }

    pub fn spec(&self) -> BudgetSpec {
        self.lock().rates.spec
    }

    /// New numbers (a reloaded config): slots taken already stand, later ones follow `spec`.
    /// The next conforming instant (`tat − tolerance`) stays where it was: a larger burst is
    /// earned by idle time under the new numbers, never granted at once on top of the calls
    /// of the last second. So one sliding second around the change holds at most the larger
    /// of the two budgets.
    pub fn set_spec(&self, spec: BudgetSpec) {
        let mut state = self.lock();
        let rates = Rates::of(spec);
        state.tat = (state.tat + rates.tolerance)
            .checked_sub(state.rates.tolerance)
            .unwrap_or(state.tat);
        state.rates = rates;
    }

    /// Callers currently waiting for a slot.
    pub fn waiters(&self) -> usize {
        self.waiters.load(Ordering::Acquire)
    }

    /// Whether calls are paused or locked out right now by a Tencent signal.
    pub fn is_paused(&self) -> bool {
        self.lock().blocked_until() > Instant::now()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a permit until at most `deadline` (and `max_wait` from now). A deadline
    /// already past still takes a slot that is free right now.
    ///
    /// Returns how long the caller waited.
    ///
    /// # Errors
    /// A [`ThrottleError`] with a `retry_after` when no slot is available in time.
    pub async fn acquire(&self, deadline: Instant) -> Result<Duration, ThrottleError> {
        let started = Instant::now();
        let max_wait = self.lock().rates.spec.max_wait;
        let limit = deadline.max(started).min(started + max_wait);
        let mut now = started;
        loop {
            let Some(mut reservation) = self.reserve(now, limit)? else {
                return Ok(now - started);
            };
            let is_granted = loop {
                // Registered before the state is checked, so a pause after the check wakes us
                // (and a pause from before our reservation cannot).
                let paused = self.paused.notified();
                tokio::pin!(paused);
                paused.as_mut().enable();
                {
                    let mut state = self.lock();
                    if state.epoch != reservation.epoch {
                        break false;
                    }
                    if Instant::now() >= reservation.slot {
                        state.last_granted = state.last_granted.max(Some(reservation.slot));
                        break true;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep_until(reservation.slot) => {}
                    () = &mut paused => {}
                }
            };
            reservation.is_settled = true;
            if is_granted {
                return Ok(Instant::now() - started);
            }
            // A pause voided our slot: take a new one after it (the loop re-checks the limit).
            drop(reservation);
            now = Instant::now();
        }
    }

    /// Waits out a pause or lockout of this budget if it ends by `deadline` (and `max_wait`
    /// from now); refuses at once, as [`Budget::acquire`] would, if it ends later. Fleet mode
    /// calls it before asking Redis, so a signal this gateway saw holds even when Redis is
    /// slow to hear of it.
    ///
    /// # Errors
    /// [`ThrottleError::Paused`], [`ThrottleError::UserSigRejected`] or
    /// [`ThrottleError::LockedOut`] with the time left.
    pub async fn wait_unblocked(&self, deadline: Instant) -> Result<(), ThrottleError> {
        let now = Instant::now();
        let until = {
            let state = self.lock();
            let limit = deadline.max(now).min(now + state.rates.spec.max_wait);
            let until = state.blocked_until();
            if until <= now {
                return Ok(());
            }
            if until > limit {
                let retry_after = until - now;
                return Err(if state.locked_until > limit {
                    ThrottleError::LockedOut { retry_after }
                } else {
                    match state.pause_reason {
                        PauseReason::FrequencyLimit => ThrottleError::Paused { retry_after },
                        PauseReason::UserSigRejected => {
                            ThrottleError::UserSigRejected { retry_after }
                        }
                    }
                });
            }
            until
        };
        tokio::time::sleep_until(until).await;
        Ok(())
    }

    /// Takes the earliest slot no later than `limit`: `None` if it is now (granted), else a
    /// reservation to sleep on. Explains a refusal.
    fn reserve(
        &self,
        now: Instant,
        limit: Instant,
    ) -> Result<Option<Reservation<'_>>, ThrottleError> {
        let mut state = self.lock();
        let blocked_until = state.blocked_until();
        while state
            .returned
            .peek()
            .is_some_and(|Reverse(slot)| *slot <= now || *slot < blocked_until)
        {
            state.returned.pop();
        }
        let conforming = state
            .tat
            .checked_sub(state.rates.tolerance)
            .unwrap_or(state.tat);
        let fresh_slot = now.max(conforming).max(blocked_until);
        let returned = state.returned.peek().map(|Reverse(slot)| *slot);
        let slot = returned.map_or(fresh_slot, |r| r.min(fresh_slot));
        if slot > limit {
            let retry_after = slot - now;
            return Err(if state.locked_until > limit {
                ThrottleError::LockedOut { retry_after }
            } else if state.paused_until > limit {
                match state.pause_reason {
                    PauseReason::FrequencyLimit => ThrottleError::Paused { retry_after },
                    PauseReason::UserSigRejected => ThrottleError::UserSigRejected { retry_after },
                }
            } else {
                ThrottleError::Saturated { retry_after }
            });
        }
        if slot > now && self.waiters.load(Ordering::Acquire) >= state.rates.spec.max_waiters {
            return Err(ThrottleError::QueueFull {
                retry_after: slot - now,
            });
        }
        let moved_tat = if returned == Some(slot) {
            state.returned.pop();
            None
        } else {
            let before = state.tat;
            state.tat = slot.max(state.tat) + state.rates.interval;
            Some((before, state.tat))
        };
        if slot <= now {
            state.last_granted = state.last_granted.max(Some(slot));
            return Ok(None);
        }
        // Counted here, under the lock, so the queue bound is exact; the reservation gives
        // the place back when dropped.
        self.waiters.fetch_add(1, Ordering::AcqRel);
        Ok(Some(Reservation {
            budget: self,
            slot,
            epoch: state.epoch,
            moved_tat,
            is_settled: false,
        }))
    }

    /// Tencent asked us to slow down (or rejected the UserSig): pause for a back-off that
    /// doubles with each consecutive signal, from `base` up to `max`.
    pub fn back_off(&self, base: Duration, max: Duration, reason: PauseReason) -> Duration {
        let mut state = self.lock();
        let pause = base.saturating_mul(1u32 << state.strikes.min(16)).min(max);
        state.strikes = state.strikes.saturating_add(1);
        let until = Instant::now() + pause;
        if until > state.paused_until {
            state.paused_until = until;
            state.pause_reason = reason;
        }
        self.void_reservations(&mut state);
        pause
    }

    /// Another gateway of the fleet was asked to back off: pause for `pause` as it does, but
    /// without a strike here (the back-off doubles where Tencent's signals are seen).
    pub fn hold(&self, pause: Duration, reason: PauseReason) {
        let mut state = self.lock();
        let until = Instant::now() + pause;
        if until > state.paused_until {
            state.paused_until = until;
            state.pause_reason = reason;
        }
        self.void_reservations(&mut state);
    }

    /// Tencent locked the app out (70050): no calls for `lockout`.
    pub fn lock_out(&self, lockout: Duration) {
        let mut state = self.lock();
        state.locked_until = state.locked_until.max(Instant::now() + lockout);
        self.void_reservations(&mut state);
    }

    /// Voids every reservation: the next call comes when the pause ends, no sooner than one
    /// interval after the last call, and without a burst.
    fn void_reservations(&self, state: &mut State) {
        let resume = state
            .last_granted
            .map_or(state.blocked_until(), |last| last + state.rates.interval)
            .max(state.blocked_until());
        state.tat = resume + state.rates.tolerance;
        state.returned.clear();
        state.epoch += 1;
        self.paused.notify_waiters();
    }

    /// A call succeeded: the back-off starts again from `base` next time.
    pub fn record_success(&self) {
        let mut state = self.lock();
        if state.strikes != 0 {
            state.strikes = 0;
        }
    }
}

/// Every budget of the gateway: one per (app, catalogue command), plus one per app shared by
/// pass-through commands (their names come from clients, so they get no budget of their own).
#[derive(Debug)]
pub struct Throttle {
    /// Indexed `app * slots + command`, where slot `commands` is the app's pass-through budget.
    budgets: Vec<Budget>,
    slots: usize,
}

impl Throttle {
    /// `command_specs[i]` is the spec of catalogue command `i`; `other` the spec of the
    /// pass-through budget. Every app gets the same set.
    pub fn new(apps: usize, command_specs: &[BudgetSpec], other: BudgetSpec) -> Self {
        let slots = command_specs.len() + 1;
        let budgets = (0..apps)
            .flat_map(|_| {
                command_specs
                    .iter()
                    .copied()
                    .chain(std::iter::once(other))
                    .map(Budget::new)
            })
            .collect();
        Throttle { budgets, slots }
    }

    /// New numbers for the budget in `slot` of `app` (see [`Budget::set_spec`]).
    pub fn set_spec(&self, app: u32, slot: u32, spec: BudgetSpec) {
        self.at(app, slot).set_spec(spec);
    }

    /// Budgets per app: its catalogue commands, then its pass-through slot.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The budget in command slot `slot` of `app` (the last slot is pass-through).
    pub fn at(&self, app: u32, slot: u32) -> &Budget {
        &self.budgets[app as usize * self.slots + slot as usize]
    }

    fn app_budgets(&self, app: u32) -> &[Budget] {
        let app = app as usize;
        &self.budgets[app * self.slots..(app + 1) * self.slots]
    }

    /// Backs off every budget of `app` (Tencent's 60011, or a UserSig rejection).
    pub fn back_off_app(
        &self,
        app: u32,
        base: Duration,
        max: Duration,
        reason: PauseReason,
    ) -> Duration {
        self.app_budgets(app)
            .iter()
            .map(|budget| budget.back_off(base, max, reason))
            .max()
            .unwrap_or_default()
    }

    /// Stops every call of `app` for `lockout` (Tencent's 70050).
    pub fn lock_out_app(&self, app: u32, lockout: Duration) {
        for budget in self.app_budgets(app) {
            budget.lock_out(lockout);
        }
    }
}

#[cfg(test)]
mod tests;
