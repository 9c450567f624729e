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
pub use budget::{FleetBudget, FleetTiming, Refusal, LOOKAHEAD, MAX_BATCH, MAX_LATE_IN_A_ROW};
pub(crate) use control::{next_message, subscribe, PING_EVERY};
pub use members::{MemberStatus, Membership, FALLBACK_MAX, FORGET_AFTER, HEARTBEAT, SUSPECT_AFTER};
pub use metrics::{Failure, FleetMetrics, Op};
pub use script::{BudgetKeys, Gcra, PauseScript, Reservation, ReserveScript};
