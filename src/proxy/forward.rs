//! The upstream half of a request: throttle, sign, send, classify, retry.
//!
//! Everything here runs either in the client's task (uncached commands) or in a flight's own
//! task (cache fills and refreshes), so it owns what it needs through [`Shared`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::cache::{CachePolicy, FlightResult, ResponseCache};
use crate::catalogue::{Access, Catalogue};
use crate::error::GatewayError;
use crate::metrics::{Metrics, RejectReason, UpstreamOutcome};
use crate::region::Origins;
use crate::signer::{unix_now, Signer};
use crate::throttle::ThrottleError;
use crate::throttle::{PauseReason, Throttle, LOCKOUT};
use crate::upstream::{SignedCall, UpstreamClient, UpstreamError, UpstreamResponse};

/// Seconds between two loud log lines about one app's configuration problem, so a wrong key
/// under load does not flood the log.
const CONFIG_ALARM_INTERVAL_SECS: u64 = 10;

/// One configured app at run time.
#[derive(Debug)]
pub struct App {
    pub name: String,
    pub origins: Origins,
    pub signer: Signer,
    /// Unix second of the last configuration alarm logged for this app.
    pub(super) last_alarm: AtomicU64,
}

/// What the gateway does for one catalogue command beyond forwarding it.
#[derive(Debug, Clone, Default)]
pub struct CommandRuntime {
    /// `Some` if answers are cached.
    pub cache: Option<CachePolicy>,
    /// Catalogue indices of the cached reads a success of this command invalidates.
    pub invalidates: Vec<usize>,
}

/// Retry and back-off settings.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    pub max_retries: u32,
    pub base_delay: Duration,
    /// The whole client request, throttle waits and retries included.
    pub deadline: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// State shared by the handler and the fetch tasks it spawns.
#[derive(Debug)]
pub struct Shared {
    pub apps: Vec<App>,
    pub catalogue: Catalogue,
    /// Indexed by catalogue command.
    pub commands: Vec<CommandRuntime>,
    pub cache: std::sync::Arc<ResponseCache>,
    pub throttle: Throttle,
    pub upstream: UpstreamClient,
    pub retry: RetrySettings,
    pub metrics: std::sync::Arc<Metrics>,
    /// `true` once shutdown began: throttle waiters give up with a clean 503.
    pub drain: tokio::sync::watch::Sender<DrainStage>,
}

/// How far a shutdown has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainStage {
    Running,
    /// Shutdown began: requests waiting for a throttle permit give up with a clean 503.
    Draining,
    /// The grace period is almost over: calls still waiting on Tencent are abandoned with a
    /// clean 503 rather than cut off without an answer when the process exits.
    Stopping,
}

/// Which upstream call to make.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub app: usize,
    /// `service/command`.
    pub command: &'a str,
    /// Catalogue index, `None` for a pass-through command.
    pub id: Option<usize>,
    pub access: Access,
}

/// How Tencent's ErrorCode shapes what happens next (reference §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// 70001/70052: re-mint the UserSig and retry once.
    UserSigExpired,
    /// Internal error or timeout on Tencent's side: bounded retries for reads.
    Retryable,
    /// 60007/60018/60019: this command backs off.
    FrequencyLimited,
    /// 60011: the whole app backs off.
    AppFrequencyLimited,
    /// 70050: no calls for this app for 60 s.
    LockedOut,
    /// 70003/70005/70009/70013/70014: the UserSig was refused (wrong key, sdkappid or
    /// identifier). Logged loudly, passed through, and the app's calls are spaced out so the
    /// failures do not add up to Tencent's 60 s lockout (70050).
    UserSigRejected,
    /// A configuration or operations fault: log it loudly, pass it through, never retry.
    ConfigError(&'static str),
    /// Anything else (the caller's fault, or command-specific): relayed as it is.
    Other,
}

impl Outcome {
    pub fn of(error_code: i64) -> Outcome {
        match error_code {
            0 => Outcome::Success,
            70001 | 70052 => Outcome::UserSigExpired,
            10002 | 70169 | 70500 | 60008 | 60013 | 60014 => Outcome::Retryable,
            60007 | 60018 | 60019 => Outcome::FrequencyLimited,
            60011 => Outcome::AppFrequencyLimited,
            70050 => Outcome::LockedOut,
            70003 | 70005 | 70009 | 70013 | 70014 => Outcome::UserSigRejected,
            70016 | 70020 => Outcome::ConfigError(
                "Tencent does not know this sdkappid or key here: usually the wrong region's domain",
            ),
            10008 | 60010 | 70403 => Outcome::ConfigError(
                "the configured identifier is not an app admin (or the request is invalid for it)",
            ),
            60006 | 60016 | 60020 | 60021 => Outcome::ConfigError(
                "the SDKAppID is invalid, disabled, out of plan, or this caller's IP is not allowed",
            ),
            _ => Outcome::Other,
        }
    }

    /// A failure for which a stale cached answer beats passing the error on.
    pub fn is_upstream_failure(self) -> bool {
        matches!(
            self,
            Outcome::Retryable
                | Outcome::FrequencyLimited
                | Outcome::AppFrequencyLimited
                | Outcome::LockedOut
                | Outcome::UserSigRejected
        )
    }
}

/// Full-jitter exponential back-off: uniform in `[d/2, d]` with `d = base × 2^attempt`.
fn retry_delay(base: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.min(16));
    let floor = ceiling / 2;
    floor + (ceiling - floor).mul_f64(rand::random::<f64>())
}

impl Shared {
    /// Sends one client call upstream: waits for a permit, signs, sends, and reacts to the
    /// answer. Writes are retried only when they cannot have reached Tencent (connect
    /// failures, or a UserSig rejection, which Tencent answers before acting).
    ///
    /// # Errors
    /// A [`GatewayError`] when there is no answer to relay: throttled, or the upstream failed.
    ///
    /// `may_wait` is false when the caller has a stale answer to fall back on: then a busy or
    /// paused budget fails at once instead of queueing, and the stale answer goes out now.
    pub async fn forward(
        &self,
        target: &Target<'_>,
        body: Bytes,
        deadline: Instant,
        may_wait: bool,
    ) -> FlightResult {
        let app = &self.apps[target.app];
        let budget = self.throttle.budget(target.app, target.id);
        let mut has_reminted = false;
        let mut retries = 0;
        loop {
            // Every attempt, retries included, takes a permit: retries stay inside the quota.
            let wait_until = if may_wait { deadline } else { Instant::now() };
            let slot = target.id.unwrap_or(self.metrics.other_command());
            let mut drain = self.drain.subscribe();
            let acquired = tokio::select! {
                // A permit that is free now wins over a shutdown that began meanwhile.
                biased;
                acquired = budget.acquire(wait_until) => acquired,
                _ = drain.wait_for(|stage| *stage >= DrainStage::Draining) => {
                    return Err(GatewayError::Draining);
                }
            };
            match acquired {
                Ok(permit) => self
                    .metrics
                    .throttle_permit(target.app, slot, permit.waited),
                Err(refused) => {
                    let reason = match refused {
                        ThrottleError::Saturated { .. } => RejectReason::Saturated,
                        ThrottleError::QueueFull { .. } => RejectReason::QueueFull,
                        ThrottleError::Paused { .. } => RejectReason::Paused,
                        ThrottleError::LockedOut { .. } => RejectReason::LockedOut,
                        ThrottleError::UserSigRejected { .. } => RejectReason::UserSigRejected,
                    };
                    self.metrics.throttle_rejection(target.app, slot, reason);
                    return Err(GatewayError::from(refused));
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(GatewayError::UpstreamTimeout(self.retry.deadline));
            }
            // Taken after the wait for a permit, so a long wait cannot hand out a UserSig
            // that expired meanwhile.
            let minted = app.signer.current();
            let call = SignedCall {
                origins: &app.origins,
                command: target.command,
                sdkappid: app.signer.sdkappid(),
                identifier: app.signer.identifier(),
                usersig: &minted.usersig,
                body: body.clone(),
            };
            let sent = Instant::now();
            let result = tokio::select! {
                result = self.upstream.call_within(&call, remaining) => result,
                _ = drain.wait_for(|stage| *stage == DrainStage::Stopping) => {
                    return Err(GatewayError::Draining);
                }
            };
            let (outcome, error_code) = match &result {
                Ok(response) if response.error_code == 0 => (UpstreamOutcome::Ok, Some(0)),
                Ok(response) => (UpstreamOutcome::TencentError, Some(response.error_code)),
                Err(UpstreamError::Timeout(_)) => (UpstreamOutcome::Timeout, None),
                Err(UpstreamError::Connect(_)) => (UpstreamOutcome::ConnectError, None),
                Err(UpstreamError::Protocol(_) | UpstreamError::HttpStatus(_)) => {
                    (UpstreamOutcome::HttpError, None)
                }
            };
            self.metrics
                .upstream_call(target.app, slot, outcome, error_code, sent.elapsed());
            let is_retryable = match &result {
                // Nothing was sent: safe to retry, even a write.
                Err(UpstreamError::Connect(_)) => true,
                // A timeout already cost `request_timeout`; another try would multiply it.
                Err(UpstreamError::Timeout(_)) => false,
                // A dropped connection or a broken answer: reads may try again.
                Err(_) => target.access == Access::Read,
                Ok(response) => match self.classify(app, target, response) {
                    Outcome::Success => {
                        budget.record_success();
                        return result.map_err(GatewayError::from);
                    }
                    Outcome::UserSigExpired if !has_reminted => {
                        tracing::info!(
                            app = %app.name,
                            error_code = response.error_code,
                            "Tencent refused the UserSig as expired; re-minting and retrying once"
                        );
                        app.signer.remint_after_rejection(minted.generation);
                        has_reminted = true;
                        continue;
                    }
                    Outcome::Retryable => target.access == Access::Read,
                    _ => false,
                },
            };
            if !is_retryable || retries >= self.retry.max_retries {
                return result.map_err(GatewayError::from);
            }
            let delay = retry_delay(self.retry.base_delay, retries);
            if Instant::now() + delay >= deadline {
                return result.map_err(GatewayError::from);
            }
            retries += 1;
            tracing::debug!(app = %app.name, command = target.command, retries, ?delay, "retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = drain.wait_for(|stage| *stage >= DrainStage::Draining) => {
                    return result.map_err(GatewayError::from);
                }
            }
        }
    }

    /// Reads Tencent's ErrorCode for what it means to the gateway and acts on the throttle:
    /// frequency limits back off, a lockout stops the app for 60 s, configuration faults are
    /// logged loudly (at most once per app every few seconds).
    fn classify(&self, app: &App, target: &Target<'_>, response: &UpstreamResponse) -> Outcome {
        let outcome = Outcome::of(response.error_code);
        match outcome {
            Outcome::FrequencyLimited => {
                let pause = self.throttle.budget(target.app, target.id).back_off(
                    self.retry.backoff_base,
                    self.retry.backoff_max,
                    PauseReason::FrequencyLimit,
                );
                tracing::warn!(app = %app.name, command = target.command, error_code = response.error_code, ?pause, "Tencent says this command is over its frequency limit; backing off");
            }
            Outcome::AppFrequencyLimited => {
                let pause = self.throttle.back_off_app(
                    target.app,
                    self.retry.backoff_base,
                    self.retry.backoff_max,
                    PauseReason::FrequencyLimit,
                );
                tracing::warn!(app = %app.name, error_code = response.error_code, ?pause, "Tencent says the app is over its frequency limit; the whole app backs off");
            }
            Outcome::LockedOut => {
                self.throttle.lock_out_app(target.app, LOCKOUT);
                self.alarm(
                    app,
                    target,
                    response,
                    "Tencent locked the app out for 60 s after too many failed UserSig checks; \
                     no calls for this app until then",
                );
            }
            Outcome::UserSigRejected => {
                let pause = self.throttle.back_off_app(
                    target.app,
                    self.retry.backoff_base,
                    self.retry.backoff_max,
                    PauseReason::UserSigRejected,
                );
                self.alarm(
                    app,
                    target,
                    response,
                    &format!(
                        "Tencent rejected the admin UserSig: the secret key, sdkappid or identifier \
                         is wrong; not retried, and calls to this app pause for {pause:?} (doubling \
                         while it repeats) so the failures do not lock the app out for 60 s (70050)"
                    ),
                );
            }
            Outcome::ConfigError(explanation) => self.alarm(app, target, response, explanation),
            _ => {}
        }
        outcome
    }

    fn alarm(
        &self,
        app: &App,
        target: &Target<'_>,
        response: &UpstreamResponse,
        explanation: &str,
    ) {
        let now = unix_now();
        let last = app.last_alarm.load(Ordering::Relaxed);
        if now >= last + CONFIG_ALARM_INTERVAL_SECS
            && app
                .last_alarm
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!(
                app = %app.name,
                sdkappid = app.signer.sdkappid(),
                command = target.command,
                error_code = response.error_code,
                "configuration error: {explanation}"
            );
        }
    }

    /// After a successful write, drops the cached reads it affects.
    pub fn invalidate_after_write(&self, target: &Target<'_>) {
        let Some(id) = target.id else { return };
        for &read in &self.commands[id].invalidates {
            self.cache.invalidate(target.app as u32, read as u32);
            self.metrics.cache_invalidation(target.app, read);
            tracing::debug!(
                app = %self.apps[target.app].name,
                write = target.command,
                read = self.catalogue.spec_at(read).name,
                "invalidated cached reads"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code of reference §6 maps to the action the reference prescribes.
    #[test]
    fn outcomes_follow_the_reference_table() {
        let table: &[(&[i64], Outcome)] = &[
            (&[0], Outcome::Success),
            (&[70001, 70052], Outcome::UserSigExpired),
            (
                &[10002, 70169, 70500, 60008, 60013, 60014],
                Outcome::Retryable,
            ),
            (&[60007, 60018, 60019], Outcome::FrequencyLimited),
            (&[60011], Outcome::AppFrequencyLimited),
            (&[70050], Outcome::LockedOut),
            (
                &[10004, 60003, 60015, 70402, 70206, 80001, 80002],
                Outcome::Other,
            ),
        ];
        for (codes, expected) in table {
            for &code in *codes {
                assert_eq!(Outcome::of(code), *expected, "{code}");
            }
        }
        for code in [70003, 70005, 70009, 70013, 70014] {
            assert_eq!(Outcome::of(code), Outcome::UserSigRejected, "{code}");
        }
        for code in [
            70016, 70020, 10008, 60010, 70403, 60006, 60016, 60020, 60021,
        ] {
            assert!(
                matches!(Outcome::of(code), Outcome::ConfigError(_)),
                "{code}"
            );
        }
    }

    /// Retry delays grow exponentially and stay within [d/2, d].
    #[test]
    fn retry_delays_are_jittered_within_bounds() {
        let base = Duration::from_millis(100);
        for attempt in 0..5 {
            let ceiling = base * (1 << attempt);
            for _ in 0..50 {
                let delay = retry_delay(base, attempt);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{attempt}: {delay:?}"
                );
            }
        }
    }
}
