//! `[cache]` and its `[[cache.rules]]`.
//!
//! Promises: a rule names a read in the catalogue, at most one rule per command, and every
//! `invalidated_by` entry names a write in the catalogue. Rules come out in file order. The
//! catalogue's default rules are not merged in here; the cache module does that.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use super::{bounded_duration, catalogued, number_in, Findings};
use crate::catalogue::{Access, Catalogue};
use crate::config::raw::{RawCache, RawCacheRule};
use crate::config::{CacheConfig, CacheRule, DEFAULT_CACHE_MAX_BYTES};

/// 1 KiB ..= 16 GiB.
const CACHE_MAX_BYTES: RangeInclusive<u64> = 1024..=16 * 1024 * 1024 * 1024;
const DAY: Duration = Duration::from_secs(86_400);
const TTLS: RangeInclusive<Duration> = Duration::from_nanos(1)..=DAY;
const STALE_WHILE_REVALIDATE: RangeInclusive<Duration> = Duration::ZERO..=DAY;
const STALE_IF_ERROR: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(7 * 86_400);

pub(super) fn validate_cache(
    raw: RawCache,
    catalogue: &Catalogue,
    findings: &mut Findings,
) -> CacheConfig {
    let max_bytes = number_in(
        findings,
        "cache.max_bytes",
        raw.max_bytes,
        DEFAULT_CACHE_MAX_BYTES,
        CACHE_MAX_BYTES,
        " bytes (1 KiB ..= 16 GiB)",
    );
    // Command → the key of the first rule for it, to name it when a second one turns up.
    let mut first_rule: HashMap<String, String> = HashMap::new();
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, raw_rule) in raw.rules.into_iter().enumerate() {
        let key = format!("cache.rules[{i}]");
        // Not a table: reported in stage 1, and its (empty) fields would only add noise.
        if findings.has_problem(&key) {
            continue;
        }
        let Some(rule) = validate_rule(&key, raw_rule, catalogue, findings) else {
            continue;
        };
        if let Some(first) = first_rule.get(&rule.command) {
            findings.problem(
                format!("{key}.command"),
                format!(
                    "{} already has a rule ({first}); give each command one rule",
                    rule.command
                ),
            );
            continue;
        }
        first_rule.insert(rule.command.clone(), key);
        rules.push(rule);
    }
    CacheConfig { max_bytes, rules }
}

/// One rule, or `None` when its command is missing or not a catalogued read (reported).
fn validate_rule(
    key: &str,
    raw: RawCacheRule,
    catalogue: &Catalogue,
    findings: &mut Findings,
) -> Option<CacheRule> {
    let command_key = format!("{key}.command");
    let command = match raw.command {
        Some(command) => {
            let spec = catalogued(catalogue, findings, &command_key, &command);
            match spec.map(|spec| spec.access) {
                Some(Access::Read) => Some(command),
                Some(Access::Write) => {
                    findings.problem(
                        &command_key,
                        format!("{command:?} is a write; only reads can be cached"),
                    );
                    None
                }
                None => None,
            }
        }
        None => {
            findings.problem(
                &command_key,
                "is required: the read this rule caches, e.g. \"profile/portrait_get\"",
            );
            None
        }
    };

    let enabled = raw.enabled.unwrap_or(true);
    let ttl_key = format!("{key}.ttl");
    if enabled && raw.ttl.is_none() {
        findings.problem(
            &ttl_key,
            "is required when the rule is enabled: how long an answer stays fresh, e.g. \"5s\"",
        );
    }
    let ttl = bounded_duration(findings, &ttl_key, raw.ttl, Duration::ZERO, TTLS);
    let stale_while_revalidate = bounded_duration(
        findings,
        &format!("{key}.stale_while_revalidate"),
        raw.stale_while_revalidate,
        Duration::ZERO,
        STALE_WHILE_REVALIDATE,
    );
    let stale_if_error = bounded_duration(
        findings,
        &format!("{key}.stale_if_error"),
        raw.stale_if_error,
        Duration::ZERO,
        STALE_IF_ERROR,
    );

    let invalidated_by = raw.invalidated_by.unwrap_or_default();
    for (j, write) in invalidated_by.iter().enumerate() {
        let write_key = format!("{key}.invalidated_by[{j}]");
        if let Some(spec) = catalogued(catalogue, findings, &write_key, write) {
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
