//! Fleet membership: every gateway in fleet mode sends a heartbeat to Redis each second, per
//! SDKAppID it serves, and learns how many gateways share each app's quota (`members.lua`).
//!
//! A gateway heard from within [`SUSPECT_AFTER`] is live; one heard from within
//! [`FORGET_AFTER`] but not since is a suspect (stopped, crashed, or cut off from Redis); older
//! ones are forgotten. A gateway shutting down leaves at once. More live gateways than
//! `fleet.expected_replicas` means the operator's bound is wrong: a share computed from it
//! would not be safe, and the `FleetReplicasOverExpected` alert fires.
//!
//! Metrics owned here: `fleet_members{app, state}` (`live`, `suspect`; updated each heartbeat,
//! kept as last seen while Redis cannot be reached) and `fleet_expected_replicas`.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntGauge, Registry};
use redis::aio::ConnectionManager;

use super::metrics::{Failure, FleetMetrics, Op};
use crate::metrics::{gauge, gauge_vec};

/// How often each gateway says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Not heard from for this long: a suspect.
pub const SUSPECT_AFTER: Duration = Duration::from_secs(3);
/// Not heard from for this long: forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);
/// A gateway cut off from Redis shares the quota on its own for at most this long after Redis
/// last heard from it, well before the others forget it (and stop leaving room for it).
pub const FALLBACK_MAX: Duration = Duration::from_secs(50);

/// What this gateway's heartbeats learned, for the lease-guarded share
/// ([`super::FleetThrottle`]).
///
/// The share's guard counts from the latest instant at which Redis may have recorded a
/// heartbeat of this gateway: each beat carries a fence (its send time on Redis's clock, as
/// learned from earlier replies, plus `fleet.command_timeout`) after which `members.lua` does
/// not record it, whether or not its reply ever arrives. After a beat without a reply the
/// gateway only probes (records nothing) until Redis answers again, so that the latest such
/// instant stops moving while it is cut off.
#[derive(Debug, Default)]
pub struct MemberStatus {
    state: std::sync::Mutex<StatusState>,
}

#[derive(Debug, Default)]
struct StatusState {
    /// The latest instant (here) at which Redis may have recorded a beat; `None` before the
    /// first beat that was sent.
    last_record: Option<tokio::time::Instant>,
    /// Whether a beat of this gateway was ever recorded and answered: a gateway Redis never
    /// counted is left no room by the others.
    was_member: bool,
    /// The most live gateways any app had at the last answered beat.
    live: u32,
    /// Redis's clock (ms) when it ran the last answered script, and when its reply arrived.
    clock: Option<(u64, tokio::time::Instant)>,
    /// Heartbeat rounds in a row without an answer.
    unanswered: u32,
}

impl MemberStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, StatusState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest instant at which Redis may have recorded this gateway's heartbeat, if it
    /// ever was a member.
    pub fn last_record(&self) -> Option<tokio::time::Instant> {
        let state = self.lock();
        state.was_member.then_some(state.last_record).flatten()
    }

    /// The most live gateways any app had at the last answered heartbeat.
    pub fn live(&self) -> u32 {
        self.lock().live
    }

    /// Records an answered heartbeat round that Redis recorded at a time mapped here to
    /// `recorded_by` (tests may drive it by hand).
    pub fn heard(&self, recorded_by: tokio::time::Instant, live: u32) {
        let mut state = self.lock();
        state.was_member = true;
        state.live = live;
        state.last_record = Some(
            state
                .last_record
                .map_or(recorded_by, |r| r.max(recorded_by)),
        );
    }

    /// Whether the next heartbeat should only probe, and the fence (ms on Redis's clock) for a
    /// beat sent at `now` that may wait `timeout`.
    fn next_beat(&self, now: tokio::time::Instant, timeout: Duration) -> Option<u64> {
        let state = self.lock();
        let (redis_ms, at) = state.clock?;
        if state.unanswered >= 1 {
            return None;
        }
        // Redis ran its last script before its reply arrived: this underestimates Redis's
        // now, so the fence is never later than the send time there plus the timeout.
        let since = now.saturating_duration_since(at) + timeout;
        Some(redis_ms + u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }
}

/// One app's membership key and its gauges.
struct AppMembers {
    key: String,
    live: Vec<IntGauge>,
    suspect: Vec<IntGauge>,
}

/// This gateway's heartbeats, one task for all its apps.
pub struct Membership {
    connection: ConnectionManager,
    /// This gateway's id in every app's member set.
    id: String,
    /// One per distinct SDKAppID, with the gauges of every app name that uses it.
    apps: Vec<AppMembers>,
    script: redis::Script,
    timeout: Duration,
    metrics: Arc<FleetMetrics>,
    status: Arc<MemberStatus>,
}

impl Membership {
    /// Registers the gauges for `apps` (config name, SDKAppID); [`run`](Self::run) beats.
    /// What it learns goes to `status`.
    ///
    /// # Errors
    /// A metric could not be registered (a bug).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        connection: ConnectionManager,
        key_prefix: &str,
        apps: &[(String, u64)],
        expected_replicas: u32,
        timeout: Duration,
        metrics: Arc<FleetMetrics>,
        status: Arc<MemberStatus>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let members = gauge_vec(
            registry,
            "fleet_members",
            "Gateways sharing the app's quota through Redis, by state (live: heard from within \
             3 s; suspect: within 60 s but not 3 s), as this gateway last heard (fleet mode).",
            &["app", "state"],
        )?;
        gauge(
            registry,
            "fleet_expected_replicas",
            "fleet.expected_replicas: the most gateways meant to share a quota (fleet mode).",
        )?
        .set(i64::from(expected_replicas));
        let mut by_sdkappid: Vec<(u64, AppMembers)> = Vec::new();
        for (name, sdkappid) in apps {
            let at = match by_sdkappid.iter().position(|(s, _)| s == sdkappid) {
                Some(at) => at,
                None => {
                    by_sdkappid.push((
                        *sdkappid,
                        AppMembers {
                            key: format!("{key_prefix}:{{{sdkappid}}}:members"),
                            live: Vec::new(),
                            suspect: Vec::new(),
                        },
                    ));
                    by_sdkappid.len() - 1
                }
            };
            let app = &mut by_sdkappid[at].1;
            app.live.push(members.with_label_values(&[name, "live"]));
            app.suspect
                .push(members.with_label_values(&[name, "suspect"]));
        }
        Ok(Membership {
            connection,
            id: format!("{:016x}", fastrand::u64(..)),
            apps: by_sdkappid.into_iter().map(|(_, app)| app).collect(),
            script: redis::Script::new(include_str!("members.lua")),
            timeout,
            metrics,
            status,
        })
    }

    /// Beats every [`HEARTBEAT`] until `stop` resolves, then leaves every app's member set.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => self.beat(false).await,
                () = &mut stop => break,
            }
        }
        self.beat(true).await;
    }

    async fn beat(&self, is_leaving: bool) {
        let sent = tokio::time::Instant::now();
        let fence = self.status.next_beat(sent, self.timeout);
        let mode = match (is_leaving, fence) {
            (true, _) => "leave",
            (false, Some(_)) => "beat",
            (false, None) => "probe",
        };
        if mode == "beat" {
            // From now on Redis may record this gateway until the fence.
            let mut state = self.status.lock();
            let until = sent + self.timeout;
            state.last_record = Some(state.last_record.map_or(until, |r| r.max(until)));
        }
        let mut most_live = 0;
        let mut all_answered = true;
        let mut all_recorded = true;
        for app in &self.apps {
            let reply = tokio::time::timeout(
                self.timeout,
                self.script
                    .key(&app.key)
                    .arg(&self.id)
                    .arg(millis(SUSPECT_AFTER))
                    .arg(millis(FORGET_AFTER))
                    .arg(mode)
                    .arg(fence.unwrap_or(0))
                    .invoke_async::<(i64, i64, u64, u8)>(&mut self.connection.clone()),
            )
            .await;
            match reply {
                Ok(Ok((live, suspect, redis_ms, recorded))) => {
                    let answered = tokio::time::Instant::now();
                    self.metrics.answered(Op::Heartbeat, answered - sent);
                    for gauge in &app.live {
                        gauge.set(live);
                    }
                    for gauge in &app.suspect {
                        gauge.set(suspect);
                    }
                    most_live = most_live.max(u32::try_from(live).unwrap_or(u32::MAX));
                    self.status.lock().clock = Some((redis_ms, answered));
                    all_recorded &= recorded == 1;
                }
                Ok(Err(_)) => {
                    all_answered = false;
                    self.metrics.failed(Op::Heartbeat, Failure::Error);
                }
                Err(_) => {
                    all_answered = false;
                    self.metrics.failed(Op::Heartbeat, Failure::Timeout);
                }
            }
        }
        let mut state = self.status.lock();
        if !all_answered {
            state.unanswered += 1;
            return;
        }
        state.unanswered = 0;
        if mode == "beat" && all_recorded {
            state.was_member = true;
            state.live = most_live;
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
