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

/// What this gateway's heartbeats last learned, for the lease-guarded share
/// ([`super::FleetThrottle`]): when Redis last heard from it, and the most live gateways of any
/// of its apps.
#[derive(Debug, Default)]
pub struct MemberStatus {
    last_heard: std::sync::Mutex<Option<tokio::time::Instant>>,
    live: std::sync::atomic::AtomicU32,
}

impl MemberStatus {
    /// When a heartbeat of every app last reached Redis (its reply's arrival), if ever.
    pub fn last_heard(&self) -> Option<tokio::time::Instant> {
        *self.last_heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most live gateways any app had at the last heartbeat.
    pub fn live(&self) -> u32 {
        self.live.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records a heartbeat round (tests and tools may drive it by hand).
    pub fn heard(&self, at: tokio::time::Instant, live: u32) {
        *self.last_heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
        self.live.store(live, std::sync::atomic::Ordering::Release);
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
        let mut most_live = 0;
        let mut all_heard = true;
        for app in &self.apps {
            let sent = tokio::time::Instant::now();
            let reply = tokio::time::timeout(
                self.timeout,
                self.script
                    .key(&app.key)
                    .arg(&self.id)
                    .arg(millis(SUSPECT_AFTER))
                    .arg(millis(FORGET_AFTER))
                    .arg(u8::from(is_leaving))
                    .invoke_async::<(i64, i64)>(&mut self.connection.clone()),
            )
            .await;
            match reply {
                Ok(Ok((live, suspect))) => {
                    self.metrics.answered(Op::Heartbeat, sent.elapsed());
                    for gauge in &app.live {
                        gauge.set(live);
                    }
                    for gauge in &app.suspect {
                        gauge.set(suspect);
                    }
                    most_live = most_live.max(u32::try_from(live).unwrap_or(u32::MAX));
                }
                Ok(Err(_)) => {
                    all_heard = false;
                    self.metrics.failed(Op::Heartbeat, Failure::Error);
                }
                Err(_) => {
                    all_heard = false;
                    self.metrics.failed(Op::Heartbeat, Failure::Timeout);
                }
            }
        }
        if all_heard && !is_leaving {
            // The replies' arrival: Redis recorded each beat no later than this.
            self.status.heard(tokio::time::Instant::now(), most_live);
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
