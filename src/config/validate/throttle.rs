//! `[throttle]` and its `[[throttle.quotas]]`.
//!
//! Promises: every fraction, wait and quota is in its documented range; a quota override
//! names a catalogued command, at most once; `backoff_max` is at least `backoff_base`.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::catalogue::Catalogue;
use crate::config::check::{Findings, Named, POSITIVE};
use crate::config::model::{
    QuotaOverride, ThrottleConfig, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_BURST,
    DEFAULT_MAX_WAIT, DEFAULT_MAX_WAITERS, DEFAULT_QUOTA, DEFAULT_SAFETY_MARGIN,
};
use crate::config::raw::{RawQuota, RawThrottle};

/// Upper bound of `safety_margin`: past half, the budget is mostly unused.
const MAX_FRACTION: f64 = 0.5;
/// Upper bound of `burst`: the sustained rate is the budget minus the burst, and must stay at
/// least 90% of the budget.
const MAX_BURST: f64 = 0.1;
const MAX_WAITS: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(60);
const MAX_WAITERS: RangeInclusive<usize> = 0..=1_000_000;
/// At least 2 calls/s: a budget must be strictly below the quota and hold at least one call.
const QUOTAS: RangeInclusive<u32> = 2..=100_000;

pub(super) fn validate(
    raw: RawThrottle,
    catalogue: &Catalogue,
    allow_unknown: bool,
    findings: &mut Findings,
) -> ThrottleConfig {
    let safety_margin = findings.fraction(
        "throttle.safety_margin",
        raw.safety_margin,
        DEFAULT_SAFETY_MARGIN,
        MAX_FRACTION,
    );
    let burst = findings.fraction("throttle.burst", raw.burst, DEFAULT_BURST, MAX_BURST);
    let max_wait = findings.duration(
        "throttle.max_wait",
        raw.max_wait,
        DEFAULT_MAX_WAIT,
        MAX_WAITS,
    );
    let max_waiters = findings
        .number("throttle.max_waiters", raw.max_waiters, MAX_WAITERS, "")
        .unwrap_or(DEFAULT_MAX_WAITERS);
    let default_quota = findings
        .number(
            "throttle.default_quota",
            raw.default_quota,
            QUOTAS,
            " calls/s",
        )
        .unwrap_or(DEFAULT_QUOTA);
    let quotas = findings.one_per_command(
        "throttle.quotas",
        raw.quotas,
        "quota",
        |findings, key, raw| validate_quota(key, raw, catalogue, allow_unknown, findings),
        |quota| &quota.command,
    );
    let backoff_base = findings.duration(
        "throttle.backoff_base",
        raw.backoff_base,
        DEFAULT_BACKOFF_BASE,
        POSITIVE,
    );
    let backoff_max = findings.duration(
        "throttle.backoff_max",
        raw.backoff_max,
        DEFAULT_BACKOFF_MAX,
        POSITIVE,
    );
    // Compared only with a base that was itself valid, so one slip is one problem.
    if backoff_max < backoff_base && !findings.has_problem("throttle.backoff_base") {
        findings.problem(
            "throttle.backoff_max",
            format!(
                "{} is shorter than throttle.backoff_base ({}); the pause doubles from the \
                 base up to this cap",
                humantime::format_duration(backoff_max),
                humantime::format_duration(backoff_base)
            ),
        );
    }

    ThrottleConfig {
        safety_margin,
        burst,
        max_wait,
        max_waiters,
        default_quota,
        quotas,
        backoff_base,
        backoff_max,
    }
}

/// One override, or `None` when its command or quota is missing or refused (reported).
fn validate_quota(
    key: &str,
    raw: RawQuota,
    catalogue: &Catalogue,
    allow_unknown: bool,
    findings: &mut Findings,
) -> Option<QuotaOverride> {
    let command_key = format!("{key}.command");
    let spec = match &raw.command {
        Some(command) => findings.named(catalogue, &command_key, command, allow_unknown),
        None => findings.refuse(
            &command_key,
            "is required: the command whose quota this sets, e.g. \
             \"im_open_login_svc/account_check\"",
        ),
    };
    let per_second_key = format!("{key}.per_second");
    // A value of the wrong type was dropped and reported under this key, which keeps that
    // first problem.
    if raw.per_second.is_none() {
        findings.problem(&per_second_key, "is required: calls per second, e.g. 100");
    }
    let per_second = findings.number(&per_second_key, raw.per_second, QUOTAS, " calls/s");
    let (spec, per_second) = (spec?, per_second?);
    let documented = match spec {
        Named::Known(spec) => spec.quota_per_second.map(|q| (q, spec.name)),
        Named::Unknown => None,
    };
    if let Some((documented, name)) = documented.filter(|&(q, _)| per_second > q) {
        findings.warning(
            &per_second_key,
            format!(
                "{per_second} calls/s is above Tencent's documented {documented} for {name} \
                 (its page: see the README's catalogue); past it Tencent answers 60007, so \
                 raise it only if your plan's limit is higher"
            ),
        );
    }
    Some(QuotaOverride {
        command: raw.command?,
        per_second,
    })
}
