//! The upstream half of a request, as phases read top to bottom in [`Shared::call`]:
//! `acquire_permit` → `sign` → `send` → `classify`, repeated while `classify` says
//! [`Next::Retry`].
//!
//! Everything here runs either in the client's task (uncached commands) or in a flight's own
//! task (cache fills and refreshes), so it owns what it needs through [`Shared`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::state::{App, DrainStage, Lane, Shared};
use crate::cache::FlightResult;
use crate::catalogue::Access;
use crate::error::GatewayError;
use crate::limiter::{Permit, Reaction};
use crate::outcome::Outcome;
use crate::signer::unix_now;
use crate::upstream::{SignedCall, UpstreamError, UpstreamResponse};

/// Seconds between two loud log lines about one app's configuration problem, so a wrong key
/// under load does not flood the log.
const CONFIG_ALARM_INTERVAL_SECS: u64 = 10;

/// Which upstream call to make.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub lane: &'a Arc<Lane>,
    /// `service/command` as the client named it (a pass-through command is not in the lane).
    pub command: &'a str,
    /// How its answers are cached (`None`: not cached), as the lane said when the request
    /// was routed: one request sees one policy, whatever a reload does meanwhile.
    pub cache: Option<crate::cache::CachePolicy>,
}

/// One client call's upstream attempts so far: what the retry decision needs.
#[derive(Debug)]
struct Attempts<'a> {
    target: &'a Target<'a>,
    deadline: Instant,
    /// A caller with a stale answer to fall back on does not queue for a permit.
    may_wait: bool,
    retries: u32,
    has_reminted: bool,
}

/// What `classify` decided after one attempt.
#[derive(Debug)]
enum Next {
    /// Relay this answer or error.
    Done(FlightResult),
    /// Try again after `after` with a new permit; if that cannot happen (a drain began),
    /// relay `otherwise`.
    Retry {
        after: Duration,
        otherwise: FlightResult,
    },
}

/// Full-jitter exponential back-off: uniform in `[d/2, d]` with `d = base × 2^attempt`.
fn retry_delay(base: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.min(16));
    let floor = ceiling / 2;
    floor + (ceiling - floor).mul_f64(rand::random::<f64>())
}

impl Shared {
    /// Sends one client call upstream and relays what came back. Writes are retried only
    /// when they cannot have reached Tencent (connect failures, or an expired UserSig, which
    /// Tencent refuses before acting).
    ///
    /// `may_wait` is false when the caller has a stale answer to fall back on: then a busy or
    /// paused budget fails at once instead of queueing, and the stale answer goes out now.
    ///
    /// # Errors
    /// A [`GatewayError`] when there is no answer to relay: throttled, draining, or the
    /// upstream failed.
    pub(super) async fn call(
        &self,
        target: &Target<'_>,
        body: Bytes,
        deadline: Instant,
        may_wait: bool,
    ) -> FlightResult {
        let mut drain = self.drain.subscribe();
        let mut attempts = Attempts {
            target,
            deadline,
            may_wait,
            retries: 0,
            has_reminted: false,
        };
        loop {
            // Every attempt, retries included, takes a permit: retries stay inside the quota.
            let permit = self.acquire_permit(&attempts, &mut drain).await?;
            // Signed after the wait for a permit, so a long wait cannot hand out a UserSig
            // that expired meanwhile.
            let call = self.sign(permit, target, &body);
            let sent = self.send(&call, target, deadline, &mut drain).await?;
            match self.classify(&call, sent, &mut attempts) {
                Next::Done(result) => return result,
                // A re-mint goes again at once, like a first attempt (a free permit still
                // wins over a drain that began meanwhile).
                Next::Retry { after, .. } if after.is_zero() => {}
                Next::Retry { after, otherwise } => {
                    tracing::debug!(app = %self.apps[target.lane.app].name, command = target.command, retries = attempts.retries, ?after, "retrying");
                    tokio::select! {
                        () = tokio::time::sleep(after) => {}
                        _ = drain.wait_for(|stage| *stage >= DrainStage::Draining) => return otherwise,
                    }
                }
            }
        }
    }

    /// In this phase the call waits its turn in its budget. An early return means the budget
    /// refused (429 with `Retry-After`, or 503 for a lockout), a drain began (503), or the
    /// client's deadline passed while waiting (504).
    async fn acquire_permit(
        &self,
        attempts: &Attempts<'_>,
        drain: &mut watch::Receiver<DrainStage>,
    ) -> Result<Permit, GatewayError> {
        let wait_until = if attempts.may_wait {
            attempts.deadline
        } else {
            Instant::now()
        };
        let acquire = self
            .limiter
            .acquire(attempts.target.lane.budget, wait_until);
        let permit = tokio::select! {
            // A permit that is free now wins over a shutdown that began meanwhile.
            biased;
            acquired = acquire => acquired?,
            _ = drain.wait_for(|stage| *stage >= DrainStage::Draining) => {
                return Err(GatewayError::Draining);
            }
        };
        if Instant::now() >= attempts.deadline {
            return Err(GatewayError::UpstreamTimeout(self.retry.deadline));
        }
        Ok(permit)
    }

    /// In this phase the permit becomes a signed call with the app's current UserSig.
    fn sign<'a>(&'a self, permit: Permit, target: &Target<'a>, body: &Bytes) -> SignedCall<'a> {
        let app = &self.apps[target.lane.app];
        let minted = app.signer.current();
        SignedCall::new(
            permit,
            app.origins.load_full(),
            target.command,
            (app.signer.sdkappid(), Arc::clone(&minted.identifier)),
            minted.usersig.clone(),
            minted.generation,
            body.clone(),
        )
    }

    /// In this phase the call goes to Tencent, within what is left of the deadline. An early
    /// return means the grace period of a shutdown ran out first (503).
    async fn send(
        &self,
        call: &SignedCall<'_>,
        target: &Target<'_>,
        deadline: Instant,
        drain: &mut watch::Receiver<DrainStage>,
    ) -> Result<Result<UpstreamResponse, UpstreamError>, GatewayError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let sent = Instant::now();
        let result = tokio::select! {
            result = self.upstream.call_within(call, remaining) => result,
            _ = drain.wait_for(|stage| *stage == DrainStage::Stopping) => {
                return Err(GatewayError::Draining);
            }
        };
        target.lane.upstream.record(&result, sent.elapsed());
        Ok(result)
    }

    /// In this phase Tencent's answer is read for what it means: the budget hears it
    /// (`observe`), configuration faults are logged loudly, and the retry decision is made.
    fn classify(
        &self,
        call: &SignedCall<'_>,
        sent: Result<UpstreamResponse, UpstreamError>,
        attempts: &mut Attempts<'_>,
    ) -> Next {
        let target = attempts.target;
        let is_read = target.lane.access == Access::Read;
        let is_retryable = match &sent {
            // Nothing was sent: safe to retry, even a write.
            Err(UpstreamError::Connect(_)) => true,
            // A timeout already cost `request_timeout`; another try would multiply it.
            Err(UpstreamError::Timeout(_)) => false,
            // A dropped connection or a broken answer: reads may try again.
            Err(_) => is_read,
            Ok(response) => {
                let outcome = Outcome::of(response.error_code);
                let reaction = self.limiter.observe(call.permit().key(), outcome);
                self.explain(target, response, outcome, reaction);
                match outcome {
                    Outcome::Success => return Next::Done(Ok(sent.expect("matched Ok"))),
                    Outcome::UserSigExpired if !attempts.has_reminted => {
                        let app = &self.apps[target.lane.app];
                        tracing::info!(app = %app.name, error_code = response.error_code, "Tencent refused the UserSig as expired; re-minting and retrying once");
                        app.signer.remint_after_rejection(call.usersig_generation());
                        attempts.has_reminted = true;
                        return Next::Retry {
                            after: Duration::ZERO,
                            otherwise: sent.map_err(GatewayError::from),
                        };
                    }
                    Outcome::Retryable => is_read,
                    _ => false,
                }
            }
        };
        let result = sent.map_err(GatewayError::from);
        if !is_retryable || attempts.retries >= self.retry.max_retries {
            return Next::Done(result);
        }
        let after = retry_delay(self.retry.base_delay, attempts.retries);
        if Instant::now() + after >= attempts.deadline {
            return Next::Done(result);
        }
        attempts.retries += 1;
        Next::Retry {
            after,
            otherwise: result,
        }
    }

    /// Logs what Tencent's answer changed: pauses at `warn`, lockouts, rejections and
    /// configuration faults at `error` (at most once per app every few seconds).
    fn explain(
        &self,
        target: &Target<'_>,
        response: &UpstreamResponse,
        outcome: Outcome,
        reaction: Reaction,
    ) {
        let app = &self.apps[target.lane.app];
        let code = response.error_code;
        match (outcome, reaction) {
            (Outcome::FrequencyLimited, Reaction::CommandPaused(pause)) => {
                tracing::warn!(app = %app.name, command = target.command, error_code = code, ?pause, "Tencent says this command is over its frequency limit; backing off");
            }
            (Outcome::AppFrequencyLimited, Reaction::AppPaused(pause)) => {
                tracing::warn!(app = %app.name, error_code = code, ?pause, "Tencent says the app is over its frequency limit; the whole app backs off");
            }
            (Outcome::LockedOut, _) => self.alarm(
                app,
                target,
                code,
                "Tencent locked the app out for 60 s after too many failed UserSig checks; \
                 no calls for this app until then",
            ),
            (Outcome::UserSigRejected, Reaction::AppPaused(pause)) => self.alarm(
                app,
                target,
                code,
                &format!(
                    "Tencent rejected the admin UserSig: the secret key, sdkappid or identifier \
                     is wrong; not retried, and calls to this app pause for {pause:?} (doubling \
                     while it repeats) so the failures do not lock the app out for 60 s (70050)"
                ),
            ),
            (Outcome::ConfigError(explanation), _) => self.alarm(app, target, code, explanation),
            _ => {}
        }
    }

    fn alarm(&self, app: &App, target: &Target<'_>, error_code: i64, explanation: &str) {
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
                error_code,
                "configuration error: {explanation}"
            );
        }
    }

    /// After a successful write, drops the cached reads it affects.
    pub(super) fn invalidate_after_write(
        &self,
        target: &Target<'_>,
    ) -> crate::cache::TierFuture<'static, ()> {
        let lane = target.lane;
        let policy = lane.policy.load();
        let mut passed_on = Vec::with_capacity(policy.invalidates.len());
        for &read in &policy.invalidates {
            passed_on.push(self.cache.invalidate(lane.app as u32, read));
            tracing::debug!(
                app = %self.apps[lane.app].name,
                write = target.command,
                read = self.catalogue.spec_at(read as usize).name,
                "invalidated cached reads"
            );
        }
        Box::pin(async move {
            for done in passed_on {
                done.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
