//! One (SDKAppID, command) budget shared through Redis: local callers wait FIFO for slots that
//! one reservation call per batch takes from the fleet's single timeline.
//!
//! - **Batching on demand** (design/fleet.md §1.4): one call at a time per budget and process,
//!   asking for as many slots as callers wait (at most [`MAX_BATCH`]), at most [`LOOKAHEAD`]
//!   ahead, all or nothing (so gateways competing for a full timeline take whole batches); callers that arrive during a call are served by the next one. When the fleet's
//!   timeline is full that far, callers who can wait for the next free slot queue here, and
//!   the next call is made when a whole batch has opened: Redis sees one call per batch, not
//!   per request.
//! - **Slots as offsets**: the script returns each slot as an offset after Redis's `now`; the
//!   slot is used at `reply received + offset`, never earlier than Redis granted it. A reply
//!   that took longer than `max_lateness` is thrown away (its slots count as spent), so a
//!   sliding second of sends holds at most `burst + rate × (1 + max_lateness)` ≤ `budget`.
//! - **Failures are the caller's to handle**: a Redis error, a reply slower than
//!   `command_timeout`, or [`MAX_LATE_IN_A_ROW`] late replies in a row refuse every waiting caller with [`Refusal::RedisUnavailable`]; the
//!   limiter above decides the fallback. A reservation that timed out may still run in Redis
//!   later: it is treated as spent (over-charging is the safe side).
//! - **Re-charge after a failure**: the first call after any failed Redis command of the
//!   process (on any budget) charges this budget's own slots of the last second as `debt`, so a Redis that lost its state (restart, failover) cannot
//!   re-open a burst on top of calls already made.
//! - A caller that leaves before its slot gives it to the next caller (or keeps it for the
//!   next arrival while it is in the future).
//! - After a reply that ran out of slots, callers whose wait limit is before the fleet's next
//!   free slot are refused here with `retry_after`, without a Redis call each.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionLike;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::metrics::{Failure, FleetMetrics, Op};
use super::script::{BudgetKeys, Gcra, Reservation, ReserveScript};
use super::{FleetTiming, Refusal};
use state::{State, Waiter};

mod state;
use crate::throttle::{BudgetSpec, ThrottleError};

/// Most slots asked for in one call.
pub const MAX_BATCH: usize = 16;

/// How long a fleet budget keeps the stricter of its old and new numbers after a reload: the
/// time for every gateway to pick up the same change (a ConfigMap reaches pods within about
/// two minutes; each gateway reads its file every 2 s).
pub const SETTLE: Duration = Duration::from_secs(180);

/// How far ahead of Redis's now one call reserves at most (half of `max_wait` if that is
/// shorter). Shorter than callers may wait, so that under load callers queue here and each
/// call takes a whole batch of slots that opened meanwhile, instead of one call per slot.
pub const LOOKAHEAD: Duration = Duration::from_millis(250);

/// This many late replies in a row count as Redis being unavailable.
pub const MAX_LATE_IN_A_ROW: u32 = 3;

/// A budget's numbers, and the new ones it moves to once the fleet has settled.
struct Params {
    gcra: Gcra,
    spec: BudgetSpec,
    pending: Option<(Instant, Gcra)>,
}

/// One budget of the fleet.
pub struct FleetBudget<C> {
    /// Set at creation, or for a pass-through command's budget when the command is first
    /// called ([`FleetBudget::name`]); no call is made before.
    keys: std::sync::OnceLock<BudgetKeys>,
    /// Its numbers: replaced by [`FleetBudget::set_spec`] (a reloaded config).
    params: Mutex<Params>,
    timing: FleetTiming,
    script: ReserveScript,
    connection: C,
    metrics: Arc<FleetMetrics>,
    state: Mutex<State>,
    /// Reservation calls made, for tests and metrics.
    calls: std::sync::atomic::AtomicU64,
    /// Calls charged as debt after failures, for tests and metrics.
    debt_charged: std::sync::atomic::AtomicU64,
}

impl<C> std::fmt::Debug for FleetBudget<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBudget")
            .field("keys", &self.keys.get())
            .field("gcra", &self.params.lock().map(|p| p.gcra).ok())
            .finish_non_exhaustive()
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> FleetBudget<C> {
    /// A budget under `keys`; `None` for a pass-through budget named later.
    pub fn new(
        keys: impl Into<Option<BudgetKeys>>,
        spec: BudgetSpec,
        timing: FleetTiming,
        connection: C,
        metrics: Arc<FleetMetrics>,
    ) -> Self {
        FleetBudget {
            params: Mutex::new(Params {
                gcra: Self::gcra_of(&spec, &timing),
                spec,
                pending: None,
            }),
            keys: keys
                .into()
                .map_or_else(std::sync::OnceLock::new, std::sync::OnceLock::from),
            timing,
            script: ReserveScript::default(),
            connection,
            metrics,
            state: Mutex::new(State::default()),
            calls: std::sync::atomic::AtomicU64::new(0),
            debt_charged: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// # Panics
    /// If the budget was never named (a pass-through budget before its command's first call).
    pub fn keys(&self) -> &BudgetKeys {
        self.keys
            .get()
            .expect("a budget is named before its first call")
    }

    /// Its keys, if it has been named.
    pub fn keys_if_named(&self) -> Option<&BudgetKeys> {
        self.keys.get()
    }

    /// Names a pass-through budget once: later calls leave it as it is.
    pub fn name(&self, keys: BudgetKeys) {
        let _ = self.keys.set(keys);
    }

    fn gcra_of(spec: &BudgetSpec, timing: &FleetTiming) -> Gcra {
        Gcra {
            replicas: timing.expected_replicas,
            ..Gcra::for_fleet(
                spec,
                timing.max_lateness,
                (spec.max_wait / 2).min(LOOKAHEAD),
            )
        }
    }

    fn params(&self) -> std::sync::MutexGuard<'_, Params> {
        self.params.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The GCRA its reservations use now.
    pub fn gcra(&self) -> Gcra {
        let mut params = self.params();
        if let Some((at, gcra)) = params.pending {
            if Instant::now() >= at {
                params.gcra = gcra;
                params.pending = None;
            }
        }
        params.gcra
    }

    pub fn spec(&self) -> BudgetSpec {
        self.params().spec
    }

    /// New numbers (a reloaded config) for the reservations asked for from now on; slots
    /// already granted stand. The gateways of a fleet pick up a config change one by one,
    /// each sending its own numbers with its reservations on the shared timeline, and a
    /// mix of one gateway's larger burst with another's higher rate could exceed both
    /// budgets. So for [`SETTLE`] the budget reserves with the stricter of old and new (the
    /// longer interval, the smaller tolerance), then with the new numbers.
    pub fn set_spec(&self, spec: BudgetSpec) {
        let new = Self::gcra_of(&spec, &self.timing);
        let old = self.gcra();
        let mut params = self.params();
        params.spec = spec;
        if new == old {
            params.pending = None;
            return;
        }
        params.gcra = Gcra {
            interval_us: old.interval_us.max(new.interval_us),
            tolerance_us: old.tolerance_us.min(new.tolerance_us),
            ..new
        };
        params.pending = Some((Instant::now() + SETTLE, new));
    }

    /// Whether this budget is failing closed: its last reservation call failed (or its
    /// replies kept coming late) and none has succeeded since.
    pub fn is_unavailable(&self) -> bool {
        self.lock().is_unavailable
    }

    /// A call made without Redis (the share fallback), to be charged when Redis is back.
    pub fn record_local_call(&self, at: Instant) {
        let mut state = self.lock();
        state.recent.push_back(at);
        state.needs_recharge = true;
    }

    /// Callers waiting for a reservation call.
    pub fn waiters(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Reservation calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Calls charged as debt (re-charges after failures) so far, in calls Redis accepted.
    pub fn debt_charged(&self) -> u64 {
        self.debt_charged.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot no later than `deadline` (and `max_wait` from now). Returns how long
    /// the caller waited.
    ///
    /// # Errors
    /// [`Refusal`]: the fleet's budget refused, or Redis is unavailable.
    pub async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Duration, Refusal> {
        let started = Instant::now();
        let limit = deadline.max(started).min(started + self.spec().max_wait);
        let (answer, slot) = oneshot::channel();
        let (spare, may_wait) = {
            let mut state = self.lock();
            while state.spare.front().is_some_and(|spare| *spare <= started) {
                state.spare.pop_front();
            }
            match state.spare.front().copied().filter(|spare| *spare <= limit) {
                Some(spare) => {
                    state.spare.pop_front();
                    (Some(spare), false)
                }
                None if state.next_free.is_some_and(|(next, _)| next > limit) => {
                    let (next, refusal) = state.next_free.expect("checked");
                    let retry_after = next - started;
                    return Err(Refusal::Throttled(match refusal {
                        ThrottleError::Paused { .. } => ThrottleError::Paused { retry_after },
                        _ => ThrottleError::Saturated { retry_after },
                    }));
                }
                None => {
                    // As in the local throttle, a caller that may not wait, or would join a
                    // full queue, still takes a slot that is due at once, and only that.
                    let may_wait = limit > started && state.waiting.len() < self.spec().max_waiters;
                    state.waiting.push_back(Waiter {
                        limit: may_wait.then_some(limit),
                        answer,
                    });
                    if !state.is_calling {
                        state.is_calling = true;
                        tokio::spawn(Arc::clone(self).pump());
                    }
                    (None, may_wait)
                }
            }
        };
        if let Some(spare) = spare {
            return self.wait_for(spare, started).await;
        }
        // Answered by the pump, or refused at the caller's own limit if the pump has not
        // answered by then (the pump then finds the caller gone and keeps its slot).
        let answer = if may_wait {
            tokio::select! {
                answer = slot => answer,
                () = tokio::time::sleep_until(limit) => {
                    let next = self.lock().next_free.map_or(limit, |(next, _)| next);
                    let retry_after = next.saturating_duration_since(limit);
                    Ok(Err(Refusal::Throttled(ThrottleError::Saturated { retry_after })))
                }
            }
        } else {
            slot.await
        };
        // The pump always answers every waiter it takes; a dropped sender means it panicked.
        let slot = answer.unwrap_or(Err(Refusal::RedisUnavailable))?;
        self.wait_for(slot, started).await
    }

    /// Sleeps until `slot`; a caller that goes away first leaves the slot to the next one.
    async fn wait_for(&self, slot: Instant, started: Instant) -> Result<Duration, Refusal> {
        let mut guard = GiveBack {
            budget: self,
            slot: Some(slot),
        };
        tokio::time::sleep_until(slot).await;
        guard.slot = None;
        Ok(Instant::now() - started)
    }

    /// Reserves for the callers waiting, one call at a time, until none waits.
    async fn pump(self: Arc<Self>) {
        loop {
            let (want, debt, reach, failures) = {
                let mut state = self.lock();
                let now = Instant::now();
                // Callers whose limit passed while the call ran or the pump paced are refused.
                while state
                    .waiting
                    .front()
                    .is_some_and(|w| w.limit.is_some_and(|limit| limit < now))
                {
                    let waiter = state.waiting.pop_front().expect("checked");
                    let retry_after = state.next_free.map_or(Duration::ZERO, |(n, _)| n - now);
                    let _ = waiter
                        .answer
                        .send(Err(Refusal::Throttled(ThrottleError::Saturated {
                            retry_after,
                        })));
                }
                if state.waiting.is_empty() {
                    state.is_calling = false;
                    return;
                }
                // Only slots some caller waiting can still use (the latest limit among them;
                // slots go FIFO to the first caller that can take each): a slot reserved in
                // Redis but given to nobody is capacity lost to the fleet. Under overload the
                // first callers are about to give up, so their limits alone would allow only
                // fragments (seen: 8 slots of a 250 ms look-ahead).
                let latest = state.waiting.iter().filter_map(|w| w.limit).max();
                let reach =
                    latest.map_or(Duration::ZERO, |limit| limit.saturating_duration_since(now));
                let reach = reach.min(Duration::from_micros(self.gcra().max_wait_us));
                let failures = self.metrics.failures();
                if failures != state.seen_failures {
                    state.needs_recharge = true;
                }
                let debt = if state.needs_recharge {
                    let second_ago = Instant::now() - Duration::from_secs(1);
                    state.recent.retain(|slot| *slot > second_ago);
                    state.recent.len() as u32
                } else {
                    0
                };
                (
                    state.waiting.len().min(MAX_BATCH) as u32,
                    debt,
                    reach,
                    failures,
                )
            };
            let outcome = self.call(want, debt, reach).await;
            let pause = {
                let mut state = self.lock();
                match outcome {
                    Ok((reservation, received)) => {
                        state.is_unavailable = false;
                        state.needs_recharge = false;
                        state.seen_failures = failures;
                        state.late_in_a_row = 0;
                        self.debt_charged
                            .fetch_add(u64::from(debt), std::sync::atomic::Ordering::Relaxed);
                        self.metrics.charged(debt);
                        self.metrics.granted(reservation.slots.len());
                        self.hand_out(&mut state, &reservation, want as usize, reach, received)
                    }
                    // A late reply's slots are spent; ask again, unless Redis keeps being slow.
                    Err(Late) if state.late_in_a_row + 1 < MAX_LATE_IN_A_ROW => {
                        state.late_in_a_row += 1;
                        None
                    }
                    Err(Late | Failed) => {
                        state.is_unavailable = true;
                        state.late_in_a_row = 0;
                        state.needs_recharge = true;
                        for waiter in state.waiting.drain(..) {
                            let _ = waiter.answer.send(Err(Refusal::RedisUnavailable));
                        }
                        None
                    }
                }
            };
            if let Some(until) = pause {
                tokio::time::sleep_until(until).await;
            }
        }
    }

    /// The fewest slots a call for `want` takes (it takes none rather than fewer): a quarter
    /// of the batch, so that gateways competing for a full timeline take batches rather than
    /// fragments; one for a budget so slow that fewer than 4 slots fit in the look-ahead.
    fn least(&self, want: u32) -> u32 {
        if self.is_slow() {
            1
        } else {
            want.div_ceil(4)
        }
    }

    /// Fewer than 4 slots fit in the look-ahead: batches cannot form, calls go slot by slot.
    fn is_slow(&self) -> bool {
        let gcra = self.gcra();
        gcra.max_wait_us / gcra.interval_us.max(1) + 1 < 4
    }

    /// One reservation call, bounded by `command_timeout`; late replies are thrown away.
    async fn call(
        &self,
        want: u32,
        debt: u32,
        reach: Duration,
    ) -> Result<(Reservation, Instant), CallError> {
        let mut connection = self.connection.clone();
        let gcra = Gcra {
            max_wait_us: u64::try_from(reach.as_micros()).unwrap_or(u64::MAX),
            ..self.gcra()
        };
        let sent = Instant::now();
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reply = tokio::time::timeout(
            self.timing.command_timeout,
            self.script.reserve(
                &mut connection,
                self.keys(),
                &gcra,
                want,
                self.least(want),
                debt,
            ),
        )
        .await;
        let received = Instant::now();
        match reply {
            Ok(Ok(reservation)) => {
                self.metrics.answered(Op::Reserve, received - sent);
                if received - sent <= self.timing.max_lateness {
                    Ok((reservation, received))
                } else {
                    self.metrics.failed(Op::Reserve, Failure::Late);
                    Err(Late)
                }
            }
            Ok(Err(_)) => {
                self.metrics.failed(Op::Reserve, Failure::Error);
                Err(Failed)
            }
            Err(_) => {
                self.metrics.failed(Op::Reserve, Failure::Timeout);
                Err(Failed)
            }
        }
    }

    /// Gives the granted slots to the waiters, first come first served. When the budget
    /// granted fewer than asked, the fleet's next free slot is further than the look-ahead:
    /// waiters whose limit is before it are refused now, the others wait for the next call,
    /// which is made when a whole batch will have opened (the returned instant).
    fn hand_out(
        &self,
        state: &mut State,
        reservation: &Reservation,
        wanted: usize,
        reach: Duration,
        received: Instant,
    ) -> Option<Instant> {
        let second_ago = received
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(received);
        while state.recent.front().is_some_and(|slot| *slot <= second_ago) {
            state.recent.pop_front();
        }
        for &offset in &reservation.slots {
            let slot = received + offset;
            state.recent.push_back(slot);
            // The first caller that can take it: one that cannot (its limit is before it)
            // cannot take any later slot either, and is refused.
            let mut is_taken = false;
            while let Some(waiter) = state.waiting.pop_front() {
                if !waiter.takes(offset, slot) {
                    let refused = Refusal::Throttled(ThrottleError::Saturated {
                        retry_after: offset,
                    });
                    let _ = waiter.answer.send(Err(refused));
                    continue;
                }
                // Its caller may have left while the call ran: then the next one takes it.
                if waiter.answer.send(Ok(slot)).is_ok() {
                    is_taken = true;
                    break;
                }
            }
            if !is_taken {
                state.keep_spare(slot);
            }
        }
        state.next_free = None;
        if reservation.slots.len() >= wanted {
            // All it asked for. Callers who came meanwhile wait for the next batch to open
            // after the last slot granted (asking at once would find the timeline taken).
            let batch = state.waiting.len().min(MAX_BATCH) as u32;
            let last = reservation.slots.last().copied().unwrap_or_default();
            let interval = Duration::from_micros(self.gcra().interval_us);
            // A caller that may not wait (no limit, no timer of its own) is asked for at once.
            let is_urgent = state.waiting.iter().any(|w| w.limit.is_none());
            if batch == 0 || self.is_slow() || is_urgent {
                return None;
            }
            let opens = (received + last + interval * batch).checked_sub(reach);
            return opens.map(|opens| opens.max(received));
        }
        let retry_after = reservation.retry_after.max(reservation.blocked_for);
        let refusal = if reservation.blocked_for > Duration::ZERO {
            ThrottleError::Paused { retry_after }
        } else {
            ThrottleError::Saturated { retry_after }
        };
        let next_free = received + retry_after;
        state.next_free = Some((next_free, refusal));
        let mut kept = VecDeque::with_capacity(state.waiting.len());
        for waiter in state.waiting.drain(..) {
            if waiter.gives_up_before(next_free) {
                let _ = waiter.answer.send(Err(Refusal::Throttled(refusal)));
            } else {
                kept.push_back(waiter);
            }
        }
        state.waiting = kept;
        // The next call can take a whole batch once `batch` more slots are within the reach
        // this call had.
        let batch = if self.is_slow() {
            1
        } else {
            state.waiting.len().min(MAX_BATCH) as u32
        };
        let interval = Duration::from_micros(self.gcra().interval_us);
        let mut batch_opens = (next_free + interval * batch.saturating_sub(1))
            .checked_sub(reach)
            .unwrap_or(received);
        if reservation.blocked_for.is_zero() {
            // Other gateways took part of the batch this call was paced for. Every gateway
            // computes the same opening from the same timeline: each wakes at a random point
            // of the next two batches' span instead, so that an opening goes to one of them
            // whole rather than to all of them in fragments.
            batch_opens += interval.mul_f64(fastrand::f64() * f64::from(batch) * 2.0);
            // But before the fleet's next free slot can lapse unreserved (a slot is granted up
            // to the burst tolerance after its time), at a random point of that tolerance:
            // without this bound, all of them asleep cost the fleet 10% of its rate.
            let tolerance = Duration::from_micros(self.gcra().tolerance_us);
            batch_opens = batch_opens.min(next_free + tolerance.mul_f64(fastrand::f64()));
        }
        Some(batch_opens.max(received))
    }
}

/// Why a reservation call gave no slots.
enum CallError {
    /// The reply came after `max_lateness`: its slots are spent, the waiters ask again.
    Late,
    /// Redis failed or did not answer within `command_timeout`.
    Failed,
}
use CallError::{Failed, Late};

/// A slot a caller sleeps towards; dropped before it (the caller left), it goes back.
struct GiveBack<'a, C> {
    budget: &'a FleetBudget<C>,
    slot: Option<Instant>,
}

impl<C> Drop for GiveBack<'_, C> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if slot > Instant::now() {
                let mut state = self.budget.state.lock().unwrap_or_else(|p| p.into_inner());
                state.keep_spare(slot);
            }
        }
    }
}
