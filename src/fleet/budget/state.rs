//! A fleet budget's waiting callers and bookkeeping, under its lock.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::super::Refusal;
use crate::throttle::ThrottleError;

/// What a waiting caller is sent.
pub(super) type Answer = Result<Instant, Refusal>;

pub(super) struct Waiter {
    /// The latest slot this caller takes; `None`: only a slot due at once (it may not wait,
    /// or the queue was full), judged on Redis's clock (offset 0).
    pub(super) limit: Option<Instant>,
    pub(super) answer: oneshot::Sender<Answer>,
}

impl Waiter {
    /// Whether it takes a slot `offset` after Redis's now, mapped to `slot` here.
    pub(super) fn takes(&self, offset: Duration, slot: Instant) -> bool {
        match self.limit {
            None => offset.is_zero(),
            Some(limit) => slot <= limit,
        }
    }

    /// Whether its limit is before `at` (one that may not wait always is).
    pub(super) fn gives_up_before(&self, at: Instant) -> bool {
        self.limit.is_none_or(|limit| limit < at)
    }
}

impl State {
    /// Keeps a slot nobody took, in order: the earliest is handed out first.
    pub(super) fn keep_spare(&mut self, slot: Instant) {
        let at = self.spare.partition_point(|spare| *spare <= slot);
        self.spare.insert(at, slot);
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) waiting: VecDeque<Waiter>,
    /// Granted slots no caller took (their caller left), earliest first.
    pub(super) spare: VecDeque<Instant>,
    /// Whether a reservation call is running (at most one per budget and process).
    pub(super) is_calling: bool,
    /// This process's slots of the last second, for the re-charge after a failure.
    pub(super) recent: VecDeque<Instant>,
    pub(super) needs_recharge: bool,
    /// The process's failed Redis commands when this budget last charged its debt: any
    /// failure since (on any budget) means Redis may have lost this budget's state too.
    pub(super) seen_failures: u64,
    /// Replies in a row that came after `max_lateness`.
    pub(super) late_in_a_row: u32,
    /// The fleet's next free slot as of the last reply that ran out, and why: a caller whose
    /// limit is before it is refused here, without asking Redis (the fleet's timeline only
    /// moves forward, so this is never too strict for long).
    pub(super) next_free: Option<(Instant, ThrottleError)>,
    /// The last reservation call failed (or its replies kept coming late): callers are being
    /// refused until one succeeds.
    pub(super) is_unavailable: bool,
}
