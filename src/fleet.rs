//! Fleet mode (issue 9, `design/fleet.md`): the gateways sharing one Redis keep one Tencent
//! quota per (SDKAppID, command), on Redis's clock.
//!
//! Built: the key layout and the reservation script ([`ReserveScript`]); one budget shared
//! through Redis ([`FleetBudget`]: FIFO waiters, batched reservations, late replies thrown
//! away, re-charge after a failure); the limiter backend with fleet-wide pauses
//! ([`FleetThrottle`], told to every gateway on pub/sub; failing closed while Redis cannot be
//! reached, or sharing under a lease); fleet membership ([`Membership`]: heartbeats, live and
//! suspect gateways per app). The shared cache on the same Redis is module `shared_cache`.

mod backend;
mod budget;
mod control;
mod members;
mod metrics;
mod script;

pub use backend::{Fallback, FleetThrottle, UNAVAILABLE_RETRY};
pub use budget::{FleetBudget, LOOKAHEAD, MAX_BATCH, MAX_LATE_IN_A_ROW, SETTLE};
pub(crate) use control::{next_message, subscribe, PING_EVERY};
pub use members::{MemberStatus, Membership, FALLBACK_MAX, FORGET_AFTER, HEARTBEAT, SUSPECT_AFTER};
pub use metrics::{Failure, FleetMetrics, Op};
pub use script::{BudgetKeys, Gcra, PauseScript, Reservation, ReserveScript};

/// Why a caller got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The fleet's budget refused (saturated, queue full, paused).
    Throttled(crate::throttle::ThrottleError),
    /// Redis did not answer in time or failed: the limiter falls back.
    RedisUnavailable,
}

/// How a fleet budget talks to Redis.
#[derive(Debug, Clone, Copy)]
pub struct FleetTiming {
    /// A reservation slower than this is a failure.
    pub command_timeout: std::time::Duration,
    /// A reply later than this is thrown away (its slots count as spent).
    pub max_lateness: std::time::Duration,
    /// `fleet.expected_replicas`: the lease guard's shares (see `reserve.lua`).
    pub expected_replicas: u32,
    /// `fleet.fallback = "share"`: cut off from Redis, call at 1/`expected_replicas` of the
    /// rate once the guard has passed; else fail closed.
    pub is_sharing: bool,
}
