//! The reservation script (`reserve.lua`) and what it is called with: one atomic decision per
//! batch of slots, on Redis's clock, for every gateway sharing the budget.
//!
//! Keys are per SDKAppID, not per config name, so two deployments serving one app share its
//! quota; every key of one app carries the hash tag `{sdkappid}` so that they live in one Redis
//! Cluster slot, and every key the script touches is declared in `KEYS` (design/fleet.md §4.2).

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisResult, Value};

use crate::throttle::BudgetSpec;

/// The Redis keys of one (SDKAppID, command) budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetKeys {
    /// The GCRA's theoretical arrival time, µs on Redis's clock.
    pub rate: String,
    /// No slot before this (µs): 60007/60018/60019 paused the command.
    pub command_pause: String,
    /// No slot before this (µs): 60011 or a UserSig rejection paused the app.
    pub app_pause: String,
    /// No slot before this (µs): 70050 locked the app out.
    pub lockout: String,
    /// The gateways sharing the app's quota (`members.lua`).
    pub members: String,
    /// Set when Redis first served the app: missing means Redis lost its state.
    pub epoch: String,
    /// The app's pub/sub channel for pauses (`pause.lua` publishes, every gateway listens).
    pub ctl: String,
}

impl BudgetKeys {
    /// `{prefix}:{{sdkappid}}:rl:{command}` and its pause keys.
    pub fn new(prefix: &str, sdkappid: u64, command: &str) -> BudgetKeys {
        let app = format!("{prefix}:{{{sdkappid}}}");
        BudgetKeys {
            rate: format!("{app}:rl:{command}"),
            command_pause: format!("{app}:pause:{command}"),
            app_pause: format!("{app}:pause"),
            lockout: format!("{app}:lockout"),
            members: format!("{app}:members"),
            epoch: format!("{app}:epoch"),
            ctl: format!("{app}:ctl"),
        }
    }

    /// The keys of `command` in the same app.
    pub fn sibling(&self, command: &str) -> BudgetKeys {
        let app = self.app_pause.strip_suffix(":pause").unwrap_or_default();
        BudgetKeys {
            rate: format!("{app}:rl:{command}"),
            command_pause: format!("{app}:pause:{command}"),
            ..self.clone()
        }
    }
}

/// A budget's GCRA on the fleet's timeline, in whole microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Emission interval `T`: one slot per `T` at the sustained rate.
    pub interval_us: u64,
    /// `(burst − 1) × T`: how far ahead of its theoretical time a slot may be.
    pub tolerance_us: u64,
    /// Slots further away than this are refused (the caller gets `retry_after`).
    pub max_wait_us: u64,
    /// `fleet.expected_replicas`: while members of the fleet are suspects (cut off, perhaps
    /// calling on their own at 1/replicas of the rate), the timeline runs slower by their
    /// shares. 0 or 1: no such guard.
    pub replicas: u32,
}

impl Gcra {
    /// The fleet's GCRA for `spec`. A slot is granted on Redis's clock but used when its reply
    /// arrives, up to `max_lateness` later (later replies are thrown away), so the rate is
    /// `floor((budget − burst) / (1 + max_lateness))`: a sliding second of sends then holds at
    /// most `budget` calls (design/fleet.md §1.3).
    pub fn for_fleet(spec: &BudgetSpec, max_lateness: Duration, max_wait: Duration) -> Gcra {
        let burst = spec.burst_calls();
        let spare = f64::from(spec.budget() - burst);
        let rate = ((spare / (1.0 + max_lateness.as_secs_f64())).floor() as u64).max(1);
        // Rounded up: a slot never comes sooner than the rate allows.
        let interval_us = 1_000_000u64.div_ceil(rate);
        Gcra {
            interval_us,
            tolerance_us: interval_us * u64::from(burst - 1),
            max_wait_us: u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX),
            replicas: 0,
        }
    }
}

/// What one call of the script granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The granted slots, each as an offset after Redis's `now`, earliest first.
    pub slots: Vec<Duration>,
    /// When fewer were granted than asked for: how far away the next slot was.
    pub retry_after: Duration,
    /// How long a pause or lockout still holds every slot back.
    pub blocked_for: Duration,
    /// Redis's clock when it decided, µs since 1970 (for tests and diagnostics only: the
    /// gateway schedules by offsets, never by comparing clocks).
    pub now_us: u64,
}

impl FromRedisValue for Reservation {
    fn from_redis_value(value: Value) -> Result<Self, redis::ParsingError> {
        let fields: Vec<Value> = FromRedisValue::from_redis_value(value)?;
        let number = |i: usize| -> Result<u64, redis::ParsingError> {
            let value = fields.get(i).cloned().ok_or_else(|| {
                redis::ParsingError::from("reservation reply too short".to_owned())
            })?;
            FromRedisValue::from_redis_value(value)
        };
        let granted = number(0)? as usize;
        if fields.len() != 4 + granted {
            return Err("reservation reply of the wrong length".to_owned().into());
        }
        Ok(Reservation {
            slots: (0..granted)
                .map(|i| number(4 + i).map(Duration::from_micros))
                .collect::<Result<_, _>>()?,
            retry_after: Duration::from_micros(number(1)?),
            blocked_for: Duration::from_micros(number(2)?),
            now_us: number(3)?,
        })
    }
}

/// `reserve.lua`, loaded once per connection and re-loaded by redis-rs on NOSCRIPT (after a
/// Redis restart or failover).
#[derive(Debug, Clone)]
pub struct ReserveScript(redis::Script);

impl Default for ReserveScript {
    fn default() -> Self {
        ReserveScript(redis::Script::new(include_str!("reserve.lua")))
    }
}

impl ReserveScript {
    /// Reserves up to `want` slots, but none unless at least `least` are within the wait
    /// limit, after charging `debt` calls made without Redis's accounting (after a reconnect:
    /// Redis may have lost the budget's state).
    ///
    /// # Errors
    /// Redis could not be reached or refused the script (the caller falls back).
    pub async fn reserve<C: ConnectionLike>(
        &self,
        connection: &mut C,
        keys: &BudgetKeys,
        gcra: &Gcra,
        want: u32,
        least: u32,
        debt: u32,
    ) -> RedisResult<Reservation> {
        self.0
            .key(&keys.rate)
            .key(&keys.command_pause)
            .key(&keys.app_pause)
            .key(&keys.lockout)
            .key(&keys.members)
            .key(&keys.epoch)
            .arg(gcra.interval_us)
            .arg(gcra.tolerance_us)
            .arg(gcra.max_wait_us)
            .arg(want)
            .arg(debt)
            .arg(least.clamp(1, want.max(1)))
            .arg(gcra.replicas)
            .arg(super::members::SUSPECT_AFTER.as_millis() as u64)
            .arg(super::members::FORGET_AFTER.as_millis() as u64)
            .invoke_async(connection)
            .await
    }
}

/// `pause.lua`: a pause or lockout for the whole fleet, pushing the affected budgets' TATs past
/// it so that no burst follows.
#[derive(Debug, Clone)]
pub struct PauseScript(redis::Script);

impl Default for PauseScript {
    fn default() -> Self {
        PauseScript(redis::Script::new(include_str!("pause.lua")))
    }
}

impl PauseScript {
    /// Sets `pause_key` to Redis's now + `pause` (unless a later pause holds), moves each
    /// `(rate key, tolerance µs)` past it and publishes `<pause key> <µs left> <tag>` on
    /// `channel`. Returns the blocked-until in force, µs.
    ///
    /// # Errors
    /// Redis could not be reached or refused the script.
    pub async fn pause<C: ConnectionLike>(
        &self,
        connection: &mut C,
        pause_key: &str,
        rates: &[(String, u64)],
        pause: Duration,
        (channel, tag): (&str, &str),
    ) -> RedisResult<u64> {
        let mut invocation = self.0.key(pause_key);
        invocation
            .arg(u64::try_from(pause.as_micros()).unwrap_or(u64::MAX))
            .arg(channel)
            .arg(tag);
        for (rate, tolerance_us) in rates {
            invocation.key(rate).arg(*tolerance_us);
        }
        invocation.invoke_async(connection).await
    }
}
