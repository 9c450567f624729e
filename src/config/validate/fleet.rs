//! `[fleet]`: fleet mode on Redis (design fleet.md §4.4), on exactly when `redis_url` is set.
//!
//! Promises: without `redis_url` there is no fleet, and any other `fleet.*` key is a problem,
//! so a half-configured fleet never silently runs each gateway on its own quota; a Redis URL
//! is quoted in messages only with its password as `***`; `max_lateness` is at most
//! `command_timeout`.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::config::check::{did_you_mean, non_empty, Findings};
use crate::config::model::{
    redact_url, Fallback, FleetConfig, RedisUrl, DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_EXPECTED_REPLICAS, DEFAULT_FALLBACK, DEFAULT_KEY_PREFIX, DEFAULT_MAX_LATENESS,
    DEFAULT_SHARED_CACHE,
};
use crate::config::raw::RawFleet;

const REDIS_URL: &str = "fleet.redis_url";
const EXPECTED_REPLICAS: &str = "fleet.expected_replicas";
const COMMAND_TIMEOUT: &str = "fleet.command_timeout";
const MAX_LATENESS: &str = "fleet.max_lateness";
/// At 1000 gateways a 190 calls/s budget already leaves a cut-off gateway a share of 0 calls/s
/// (the share is floor(rate / expected_replicas)); a larger number is a slip.
const EXPECTED_REPLICAS_RANGE: RangeInclusive<u32> = 1..=1000;
/// A healthy Redis answers in well under a millisecond; past 5 s a hung one would hold every
/// request for a third of the default 15 s deadline before it counts as failed.
const COMMAND_TIMEOUTS: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(5);
/// At 1 s the fleet rate, (budget - burst) / (1 + max_lateness in seconds), is already half
/// the budget (design fleet.md §1.3).
const MAX_LATENESSES: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(1);
const MAX_KEY_PREFIX_CHARS: usize = 32;
/// What every problem about the scheme lists.
const SCHEMES: &str = "redis://host[:port][/db], rediss://host[:port][/db] (TLS) or \
                       redis+unix:///path/to/socket[?db=N]";
const NO_PASSWORD: &str = "it has '@' but no password before it, and Redis clients send AUTH \
                           only with a password; write redis://:PASSWORD@host, or \
                           redis://USER:PASSWORD@host for an ACL user";

/// The fleet settings, or `None` when fleet mode is off or a value has a problem (recorded).
pub(super) fn validate(raw: RawFleet, findings: &mut Findings) -> Option<FleetConfig> {
    let url = non_empty(raw.redis_url);
    // A URL of the wrong type was dropped and reported: the fleet was meant, so the other
    // keys are checked as usual instead of being reported as having no effect.
    if url.is_none() && !findings.has_problem(REDIS_URL) {
        let set = [
            (EXPECTED_REPLICAS, raw.expected_replicas.is_some()),
            ("fleet.fallback", raw.fallback.is_some()),
            ("fleet.shared_cache", raw.shared_cache.is_some()),
            ("fleet.key_prefix", raw.key_prefix.is_some()),
            (COMMAND_TIMEOUT, raw.command_timeout.is_some()),
            (MAX_LATENESS, raw.max_lateness.is_some()),
        ];
        for (key, _) in set.into_iter().filter(|(_, is_set)| *is_set) {
            findings.problem(
                key,
                "has no effect without fleet.redis_url; set redis_url to turn fleet mode on, \
                 or remove this key (each gateway would keep its own quota)",
            );
        }
        return None;
    }
    let redis_url = url.and_then(|url| redis_url(url.trim(), findings));

    let expected_replicas = findings
        .number(
            EXPECTED_REPLICAS,
            raw.expected_replicas,
            EXPECTED_REPLICAS_RANGE,
            " gateways (the most that ever share the quota, rollout surge included)",
        )
        .unwrap_or(DEFAULT_EXPECTED_REPLICAS);
    if raw.expected_replicas.is_none() && !findings.has_problem(EXPECTED_REPLICAS) {
        findings.warning(
            EXPECTED_REPLICAS,
            "is not set, so fleet mode assumes at most 1 gateway; what a gateway may call \
             without Redis is divided by it, so more gateways could together exceed the quota: \
             set the most gateways that ever share the quota, rollout surge included",
        );
    }
    let fallback = fallback(raw.fallback, findings);
    let key_prefix = key_prefix(raw.key_prefix, findings);
    let command_timeout = findings.duration(
        COMMAND_TIMEOUT,
        raw.command_timeout,
        DEFAULT_COMMAND_TIMEOUT,
        COMMAND_TIMEOUTS,
    );
    let is_lateness_default = raw.max_lateness.is_none();
    let max_lateness = findings.duration(
        MAX_LATENESS,
        raw.max_lateness,
        DEFAULT_MAX_LATENESS,
        MAX_LATENESSES,
    );
    // Compared only with a timeout that was itself valid, so one slip is one problem.
    if max_lateness > command_timeout && !findings.has_problem(COMMAND_TIMEOUT) {
        let human = humantime::format_duration;
        findings.problem(
            MAX_LATENESS,
            format!(
                "{}{} is longer than fleet.command_timeout ({}): a reply that late has already \
                 failed as a timeout; give at most {}",
                human(max_lateness),
                if is_lateness_default {
                    " (the default)"
                } else {
                    ""
                },
                human(command_timeout),
                human(command_timeout)
            ),
        );
    }

    Some(FleetConfig {
        redis_url: redis_url?,
        expected_replicas,
        fallback,
        shared_cache: raw.shared_cache.unwrap_or(DEFAULT_SHARED_CACHE),
        key_prefix,
        command_timeout,
        max_lateness,
    })
}

/// The URL, or `None` with a problem that quotes it with its password hidden.
fn redis_url(url: &str, findings: &mut Findings) -> Option<RedisUrl> {
    let shown = redact_url(url);
    let checked = if let Some(rest) = url.strip_prefix("redis+unix://") {
        check_unix(rest)
    } else if let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    {
        check_tcp(rest)
    } else {
        return findings.refuse(
            REDIS_URL,
            format!("{shown:?} is not a Redis URL; give {SCHEMES}"),
        );
    };
    // The client's own parser has the last word: what it refuses would fail at start. Its
    // message is not quoted (it could hold the password).
    let checked = checked.and_then(|()| {
        redis::Client::open(url)
            .map(drop)
            .map_err(|_| "the Redis client cannot read it".to_owned())
    });
    match checked {
        Ok(()) => Some(RedisUrl::new(url.to_owned())),
        Err(reason) => findings.refuse(
            REDIS_URL,
            format!("{shown:?} is not a valid Redis URL: {reason}"),
        ),
    }
}

/// `[user:password@]host[:port][/db]`, read as the `url` crate (and so redis-rs) splits it:
/// the authority ends at the first `/`, `?` or `#`. The reason never quotes a part of `rest`.
fn check_tcp(rest: &str) -> Result<(), String> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host_port = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => {
            match userinfo.split_once(':') {
                Some((_, password)) if !password.is_empty() => {}
                _ => return Err(NO_PASSWORD.to_owned()),
            }
            host_port
        }
        None if tail.contains('@') => {
            return Err("a '/', '?' or '#' in the user name or password must be \
                        percent-encoded (%2F, %3F, %23)"
                .to_owned())
        }
        None => authority,
    };
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (ip, after) = bracketed.split_once(']').unwrap_or(("", ""));
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return Err("its host in brackets is not an IPv6 address".to_owned());
            }
            match after {
                "" => (ip, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (ip, Some(port)),
                    None => return Err("its port must follow ']:'".to_owned()),
                },
            }
        }
        // Two colons: an IPv6 address without its brackets, reported as a bad host.
        None if host_port.matches(':').count() > 1 => (host_port, None),
        None => match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err("it has no host; write e.g. redis://redis.tim.svc:6379".to_owned());
    }
    let is_host_name = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !host_port.starts_with('[') && !is_host_name {
        return Err(
            "its host is not a host name or IP address (an IPv6 address goes in \
                    brackets: redis://[::1]:6379)"
                .to_owned(),
        );
    }
    let is_port = |port: &str| {
        port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0)
    };
    if port.is_some_and(|port| !is_port(port)) {
        return Err("its port is not a number 1 ..= 65535".to_owned());
    }
    let (path, extra) = tail.split_at(tail.find(['?', '#']).unwrap_or(tail.len()));
    if !extra.is_empty() {
        return Err(
            "redis:// and rediss:// take no query (?…) or fragment (#…); the \
                    database goes in the path, e.g. redis://redis.tim.svc:6379/0"
                .to_owned(),
        );
    }
    match path.strip_prefix('/') {
        None | Some("") => Ok(()),
        Some(db) if is_database(db) => Ok(()),
        Some(_) => Err("the database after the host must be a number, e.g. \
                        redis://redis.tim.svc:6379/0"
            .to_owned()),
    }
}

/// `/absolute/path[?db=N&user=U&pass=P]`: redis-rs reads the database and the credentials of
/// a unix socket from these query parameters. The reason never quotes a value.
fn check_unix(rest: &str) -> Result<(), String> {
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if !path.starts_with('/') || path.len() < 2 || path.contains('#') {
        return Err(
            "give the socket's absolute path after redis+unix:// (three slashes), \
                    e.g. redis+unix:///var/run/redis/redis.sock"
                .to_owned(),
        );
    }
    let (mut user, mut pass) = (None, None);
    for pair in query.into_iter().flat_map(|query| query.split('&')) {
        match pair.split_once('=') {
            Some(("db", db)) if is_database(db) => {}
            Some(("db", _)) => return Err("db must be a number, e.g. ?db=0".to_owned()),
            Some(("user", value)) => user = Some(value),
            Some(("pass", value)) => pass = Some(value),
            Some((name, _)) => {
                return Err(format!(
                    "unknown parameter {name:?}; redis+unix:// takes db, user and pass"
                ))
            }
            None => return Err("its query must be name=value pairs, e.g. ?db=0".to_owned()),
        }
    }
    match (user, pass) {
        (_, Some("")) => Err("pass= is empty".to_owned()),
        (Some(_), None) => Err(
            "it has user= but no pass=, and Redis clients send AUTH only \
                                with a password; add &pass=PASSWORD"
                .to_owned(),
        ),
        _ => Ok(()),
    }
}

/// A Redis database number, as the path or `db=` gives it.
fn is_database(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u32>().is_ok()
}

/// `"share"` or `"closed"`, in any letter case; a slip gets a "did you mean".
fn fallback(raw: Option<String>, findings: &mut Findings) -> Fallback {
    let Some(text) = raw else {
        return DEFAULT_FALLBACK;
    };
    let name = text.trim().to_ascii_lowercase();
    let message = match name.as_str() {
        "share" => return Fallback::Share,
        "closed" => return Fallback::Closed,
        "open" => "\"open\" is not offered: fleet mode never fails open (gateways cut off from \
                   Redis would each call at the full rate); give \"share\" or \"closed\""
            .to_owned(),
        _ => match did_you_mean(&name, &Fallback::NAMES) {
            Some(near) => format!(
                "unknown fallback {text:?}; did you mean {near:?}? (expected \"share\" or \
                 \"closed\")"
            ),
            None => format!("unknown fallback {text:?} (expected \"share\" or \"closed\")"),
        },
    };
    findings.problem("fleet.fallback", message);
    DEFAULT_FALLBACK
}

/// 1 to 32 characters that cannot break the key layout (`tim:{1400000001}:rl:…`).
fn key_prefix(raw: Option<String>, findings: &mut Findings) -> String {
    let Some(prefix) = raw else {
        return DEFAULT_KEY_PREFIX.to_owned();
    };
    let length = prefix.chars().count();
    let is_valid = (1..=MAX_KEY_PREFIX_CHARS).contains(&length)
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if is_valid {
        return prefix;
    }
    findings.problem(
        "fleet.key_prefix",
        format!(
            "{prefix:?} is not a key prefix: give 1 to {MAX_KEY_PREFIX_CHARS} characters of \
             A-Z, a-z, 0-9, '_' and '-' (it starts every Redis key, before ':')"
        ),
    );
    DEFAULT_KEY_PREFIX.to_owned()
}
