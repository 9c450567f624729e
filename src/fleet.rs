//! Fleet mode (issue 9, `design/fleet.md`): the gateways sharing one Redis keep one Tencent
//! quota per (SDKAppID, command), on Redis's clock.
//!
//! Built so far: the key layout and the reservation script, with its arithmetic tested against
//! a real `redis-server`. The limiter backend that batches reservations for local waiters, the
//! fallback when Redis is unreachable, fleet-wide pauses and the shared cache plug into the
//! seams of `limiter` and `cache` next.

mod script;

pub use script::{BudgetKeys, Gcra, Reservation, ReserveScript};
