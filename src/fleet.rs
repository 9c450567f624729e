//! Fleet mode (issue 9, `design/fleet.md`): the gateways sharing one Redis keep one Tencent
//! quota per (SDKAppID, command), on Redis's clock.
//!
//! Built so far: the key layout and the reservation script ([`ReserveScript`]), and one budget
//! shared through Redis ([`FleetBudget`]: FIFO waiters, batched reservations, late replies
//! thrown away, re-charge after a failure), tested against a real `redis-server`. Next: the
//! limiter backend that uses it with the lease-guarded fallback, fleet-wide pauses, the shared
//! cache, metrics, and the gateway's wiring from `[fleet]`.

mod backend;
mod budget;
mod metrics;
mod script;

pub use backend::{FleetThrottle, UNAVAILABLE_RETRY};
pub use budget::{FleetBudget, FleetTiming, Refusal, LOOKAHEAD, MAX_BATCH, MAX_LATE_IN_A_ROW};
pub use metrics::FleetMetrics;
pub use script::{BudgetKeys, Gcra, PauseScript, Reservation, ReserveScript};
