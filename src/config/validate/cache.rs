//! `[cache]` and its `[[cache.rules]]`.
//!
//! Promises: a rule names a read in the catalogue, at most one rule per command, and every
//! `invalidated_by` entry names a write in the catalogue. Rules come out in file order. The
//! catalogue's default rules are not merged in here; the cache module does that.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::catalogue::{Access, Catalogue};
use crate::config::check::{Findings, Named};
use crate::config::model::{CacheConfig, CacheRule, DEFAULT_CACHE_MAX_BYTES};
use crate::config::raw::{RawCache, RawCacheRule};

/// 1 KiB ..= 16 GiB.
const CACHE_MAX_BYTES: RangeInclusive<u64> = 1024..=16 * 1024 * 1024 * 1024;
const DAY: Duration = Duration::from_secs(86_400);
const TTLS: RangeInclusive<Duration> = Duration::from_nanos(1)..=DAY;
const STALE_WHILE_REVALIDATE: RangeInclusive<Duration> = Duration::ZERO..=DAY;
const STALE_IF_ERROR: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(7 * 86_400);

pub(super) fn validate(
    raw: RawCache,
    catalogue: &Catalogue,
    allow_unknown: bool,
    findings: &mut Findings,
) -> CacheConfig {
    let max_bytes = findings
        .number(
            "cache.max_bytes",
            raw.max_bytes,
            CACHE_MAX_BYTES,
            " bytes (1 KiB ..= 16 GiB)",
        )
        .unwrap_or(DEFAULT_CACHE_MAX_BYTES);
    let rules = findings.one_per_command(
        "cache.rules",
        raw.rules,
        "rule",
        |findings, key, raw| validate_rule(key, raw, catalogue, allow_unknown, findings),
        |rule| &rule.command,
    );
    CacheConfig { max_bytes, rules }
}

/// One rule, or `None` when its command is missing or not a read (reported).
fn validate_rule(
    key: &str,
    raw: RawCacheRule,
    catalogue: &Catalogue,
    allow_unknown: bool,
    findings: &mut Findings,
) -> Option<CacheRule> {
    let command_key = format!("{key}.command");
    let access_key = format!("{key}.access");
    let access = match raw.access.as_deref() {
        None => None,
        Some("read") => Some(Access::Read),
        Some("write") => Some(Access::Write),
        Some(other) => findings.refuse(
            &access_key,
            format!("{other:?} is not an access; give \"read\" or \"write\""),
        ),
    };
    // The catalogue's invalidations of a known read, unless the rule gives its own.
    let mut documented: &[&str] = &[];
    let command = match raw.command {
        None => findings.refuse(
            &command_key,
            "is required: the read this rule caches, e.g. \"profile/portrait_get\"",
        ),
        Some(command) => match findings.named(catalogue, &command_key, &command, allow_unknown) {
            Some(Named::Known(spec)) if spec.access == Access::Write => findings.refuse(
                &command_key,
                format!("{command:?} is a write; only reads can be cached"),
            ),
            Some(Named::Known(_)) if access == Some(Access::Write) => findings.refuse(
                &access_key,
                format!("{command:?} is a read in the catalogue"),
            ),
            Some(Named::Known(spec)) => {
                documented = &spec.invalidated_by;
                Some(command)
            }
            Some(Named::Unknown) => match access {
                Some(Access::Read) => Some(command),
                Some(Access::Write) => findings.refuse(&access_key, "only reads can be cached"),
                None => findings.refuse(
                    &access_key,
                    format!(
                        "is required for {command:?}, which is not in the catalogue: \
                         access = \"read\" if it changes nothing on Tencent (it is then \
                         cached, and retried after Tencent's \"try again\" answers)"
                    ),
                ),
            },
            None => None,
        },
    };

    let enabled = raw.enabled.unwrap_or(true);
    let ttl_key = format!("{key}.ttl");
    if enabled && raw.ttl.is_none() {
        findings.problem(
            &ttl_key,
            "is required when the rule is enabled: how long an answer stays fresh, e.g. \"5s\"",
        );
    }
    let ttl = findings.duration(&ttl_key, raw.ttl, Duration::ZERO, TTLS);
    let stale_while_revalidate = findings.duration(
        &format!("{key}.stale_while_revalidate"),
        raw.stale_while_revalidate,
        Duration::ZERO,
        STALE_WHILE_REVALIDATE,
    );
    let stale_if_error = findings.duration(
        &format!("{key}.stale_if_error"),
        raw.stale_if_error,
        Duration::ZERO,
        STALE_IF_ERROR,
    );

    let invalidated_by = raw
        .invalidated_by
        .unwrap_or_else(|| documented.iter().map(|w| (*w).to_owned()).collect());
    for (j, write) in invalidated_by.iter().enumerate() {
        let write_key = format!("{key}.invalidated_by[{j}]");
        if let Some(Named::Known(spec)) =
            findings.named(catalogue, &write_key, write, allow_unknown)
        {
            if spec.access != Access::Write {
                findings.problem(
                    write_key,
                    format!("{write:?} is a read; only a write can invalidate a cached answer"),
                );
            }
        }
    }

    Some(CacheRule {
        command: command?,
        enabled,
        ttl,
        stale_while_revalidate,
        stale_if_error,
        invalidated_by,
    })
}
