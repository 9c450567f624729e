//! `[fleet]`: off without `redis_url`, every key checked with an exact message, and a Redis
//! password that never shows.

use std::time::Duration;

use super::*;
use crate::config::raw::{field_names, RawFleet};
use crate::config::{Fallback, FleetConfig};

mod redis_url;

/// A distinctive Redis password (not hex, so only the URL redaction can hide it).
const PASSWORD: &str = "pw-Zq8-never-printed";

/// `[fleet]` holding `lines`, plus the minimal app.
fn fleet(lines: &str) -> String {
    format!("{MINIMAL}[fleet]\n{lines}\n")
}

/// `[fleet]` with a valid URL and `lines`, plus the minimal app.
fn on(lines: &str) -> String {
    fleet(&format!(
        "redis_url = \"redis://redis.tim.svc:6379\"\n{lines}"
    ))
}

/// The exact message of `toml`'s problem under `key`, which must be its only problem.
fn only_problem(toml: &str, env: &Env, key: &str) -> String {
    let found = problems(toml, env);
    assert_eq!(found.len(), 1, "{toml}: {found:?}");
    assert_eq!(found[0].key, key, "{toml}: {found:?}");
    found[0].message.clone()
}

/// The fleet settings `toml` loads to (it must load without warnings).
fn fleet_of(toml: &str, env: &Env) -> FleetConfig {
    let Loaded { config, warnings } = load(toml, env);
    assert!(warnings.is_empty(), "{toml}: {warnings:?}");
    config.fleet.expect("fleet mode is on")
}

/// Without `redis_url` (no `[fleet]`, an empty one, or an empty URL) fleet mode is off.
#[test]
fn without_a_redis_url_fleet_mode_is_off() {
    for toml in [
        MINIMAL.to_owned(),
        fleet(""),
        fleet("redis_url = \"\""),
        fleet("redis_url = \"  \""),
    ] {
        let Loaded { config, warnings } = load(&toml, &env(&[]));
        assert_eq!(config.fleet, None, "{toml}");
        assert!(warnings.is_empty(), "{toml}: {warnings:?}");
    }
}

/// With only `redis_url`, every other key takes its documented default, and the unset
/// `expected_replicas` is warned about.
#[test]
fn fleet_keys_take_their_documented_defaults() {
    let Loaded { config, warnings } = load(&on(""), &env(&[]));
    let fleet = config.fleet.expect("fleet mode is on");
    assert_eq!(fleet.redis_url.expose(), "redis://redis.tim.svc:6379");
    assert_eq!(
        (fleet.expected_replicas, fleet.fallback, fleet.shared_cache),
        (1, Fallback::Share, true)
    );
    assert_eq!(fleet.key_prefix, "tim");
    assert_eq!(fleet.command_timeout, Duration::from_millis(50));
    assert_eq!(fleet.max_lateness, Duration::from_millis(25));
    assert_eq!(
        warnings,
        [Problem {
            key: "fleet.expected_replicas".into(),
            message: "is not set, so fleet mode assumes at most 1 gateway; what a gateway may \
                      call without Redis is divided by it, so more gateways could together \
                      exceed the quota: set the most gateways that ever share the quota, \
                      rollout surge included"
                .into(),
        }]
    );
}

/// Every key of `[fleet]` is read, at both ends of its range; `fallback` ignores letter case.
#[test]
fn every_fleet_key_is_read() {
    let toml = fleet(&format!(
        "redis_url = \"rediss://:{PASSWORD}@redis.tim.svc:6380/2\"\nexpected_replicas = 1000\n\
         fallback = \"Closed\"\nshared_cache = false\nkey_prefix = \"{}\"\n\
         command_timeout = \"5s\"\nmax_lateness = \"1s\"\n",
        "A".repeat(32)
    ));
    let fleet = fleet_of(&toml, &env(&[]));
    assert_eq!(
        fleet.redis_url.expose(),
        format!("rediss://:{PASSWORD}@redis.tim.svc:6380/2")
    );
    assert_eq!(
        fleet.redis_url.to_string(),
        "rediss://:***@redis.tim.svc:6380/2"
    );
    assert_eq!(
        (fleet.expected_replicas, fleet.fallback, fleet.shared_cache),
        (1000, Fallback::Closed, false)
    );
    assert_eq!(fleet.key_prefix, "A".repeat(32));
    assert_eq!(fleet.command_timeout, Duration::from_secs(5));
    assert_eq!(fleet.max_lateness, Duration::from_secs(1));

    let low = on(
        "expected_replicas = 1\nkey_prefix = \"a\"\ncommand_timeout = \"1ms\"\n\
                  max_lateness = \"1ms\"\nfallback = \"share\"",
    );
    let fleet = fleet_of(&low, &env(&[]));
    assert_eq!(
        (fleet.expected_replicas, fleet.fallback),
        (1, Fallback::Share)
    );
    assert_eq!(fleet.key_prefix, "a");
    assert_eq!(fleet.command_timeout, Duration::from_millis(1));
    assert_eq!(fleet.max_lateness, Duration::from_millis(1));
}

/// Any `fleet.*` key but `redis_url` is a problem without it, all reported at once, so a
/// half-configured fleet never runs each gateway alone; an empty override of the file's URL
/// counts as no URL.
#[test]
fn fleet_keys_need_a_redis_url() {
    const NO_EFFECT: &str = "has no effect without fleet.redis_url; set redis_url to turn \
                             fleet mode on, or remove this key (each gateway would keep its own \
                             quota)";
    let toml = fleet(
        "expected_replicas = 3\nfallback = \"closed\"\nshared_cache = true\n\
         key_prefix = \"tim\"\ncommand_timeout = \"50ms\"\nmax_lateness = \"25ms\"",
    );
    let found = problems(&toml, &env(&[]));
    let expected: Vec<Problem> = [
        "command_timeout",
        "expected_replicas",
        "fallback",
        "key_prefix",
        "max_lateness",
        "shared_cache",
    ]
    .iter()
    .map(|key| Problem {
        key: format!("fleet.{key}"),
        message: NO_EFFECT.into(),
    })
    .collect();
    assert_eq!(found, expected);

    // Out-of-range values are not judged when they have no effect anyway.
    let message = only_problem(
        &fleet("expected_replicas = 0"),
        &env(&[]),
        "fleet.expected_replicas",
    );
    assert_eq!(message, NO_EFFECT);

    let overridden = env(&[("TIM_GATEWAY__FLEET__REDIS_URL", "")]);
    let message = only_problem(
        &on("expected_replicas = 3"),
        &overridden,
        "fleet.expected_replicas",
    );
    assert_eq!(message, NO_EFFECT);

    let by_env = env(&[("TIM_GATEWAY__FLEET__SHARED_CACHE", "false")]);
    let message = only_problem(MINIMAL, &by_env, "fleet.shared_cache");
    assert_eq!(
        message,
        format!("{NO_EFFECT} (set by TIM_GATEWAY__FLEET__SHARED_CACHE)")
    );
}

/// Every other `[fleet]` problem, with its exact message, one per key.
#[test]
fn each_fleet_problem_has_an_exact_message() {
    let replicas = " gateways (the most that ever share the quota, rollout surge included)";
    let prefix = "is not a key prefix: give 1 to 32 characters of A-Z, a-z, 0-9, '_' and '-' \
                  (it starts every Redis key, before ':')";
    let cases: Vec<(String, &str, String)> =
        vec![
        (
            on("expected_replicas = 0"),
            "fleet.expected_replicas",
            format!("0 is out of range; give 1 ..= 1000{replicas}"),
        ),
        (
            on("expected_replicas = 1001"),
            "fleet.expected_replicas",
            format!("1001 is out of range; give 1 ..= 1000{replicas}"),
        ),
        (
            on("expected_replicas = 4294967297"),
            "fleet.expected_replicas",
            format!("4294967297 is out of range; give 1 ..= 1000{replicas}"),
        ),
        (
            on("expected_replicas = -1"),
            "fleet.expected_replicas",
            "expected an unsigned 64 bit or less integer, found 64-bit integer `-1`".into(),
        ),
        (
            on("expected_replicas = \"three\""),
            "fleet.expected_replicas",
            "expected an integer, found string \"three\"".into(),
        ),
        (
            on("expected_replicas = 3\nfallback = \"shared\""),
            "fleet.fallback",
            "unknown fallback \"shared\"; did you mean \"share\"? (expected \"share\" or \
             \"closed\")"
                .into(),
        ),
        (
            on("expected_replicas = 3\nfallback = \"CLOSE\""),
            "fleet.fallback",
            "unknown fallback \"CLOSE\"; did you mean \"closed\"? (expected \"share\" or \
             \"closed\")"
                .into(),
        ),
        (
            on("expected_replicas = 3\nfallback = \"local\""),
            "fleet.fallback",
            "unknown fallback \"local\" (expected \"share\" or \"closed\")".into(),
        ),
        (
            on("expected_replicas = 3\nfallback = \"open\""),
            "fleet.fallback",
            "\"open\" is not offered: fleet mode never fails open (gateways cut off from Redis \
             would each call at the full rate); give \"share\" or \"closed\""
                .into(),
        ),
        (
            on("expected_replicas = 3\nshared_cache = \"sometimes\""),
            "fleet.shared_cache",
            "expected a boolean, found string \"sometimes\"".into(),
        ),
        (
            on("expected_replicas = 3\nkey_prefix = \"\""),
            "fleet.key_prefix",
            format!("\"\" {prefix}"),
        ),
        (
            on("expected_replicas = 3\nkey_prefix = \"tim:prod\""),
            "fleet.key_prefix",
            format!("\"tim:prod\" {prefix}"),
        ),
        (
            on(&format!("expected_replicas = 3\nkey_prefix = \"{}\"", "x".repeat(33))),
            "fleet.key_prefix",
            format!("\"{}\" {prefix}", "x".repeat(33)),
        ),
        (
            on("expected_replicas = 3\ncommand_timeout = \"0s\""),
            "fleet.command_timeout",
            "\"0s\" is zero; give a positive duration".into(),
        ),
        (
            on("expected_replicas = 3\ncommand_timeout = \"500us\"\nmax_lateness = \"1ms\""),
            "fleet.command_timeout",
            "\"500us\" is out of range; give 1ms ..= 5s".into(),
        ),
        (
            on("expected_replicas = 3\ncommand_timeout = \"6s\""),
            "fleet.command_timeout",
            "\"6s\" is out of range; give 1ms ..= 5s".into(),
        ),
        (
            on("expected_replicas = 3\ncommand_timeout = \"fast\""),
            "fleet.command_timeout",
            "\"fast\" is not a duration (expected number at 0); write e.g. \"5s\", \"250ms\" or \
             \"24h\""
                .into(),
        ),
        (
            on("expected_replicas = 3\ncommand_timeout = \"5s\"\nmax_lateness = \"2s\""),
            "fleet.max_lateness",
            "\"2s\" is out of range; give 1ms ..= 1s".into(),
        ),
        (
            on("expected_replicas = 3\ncommand_timeout = \"20ms\"\nmax_lateness = \"21ms\""),
            "fleet.max_lateness",
            "21ms is longer than fleet.command_timeout (20ms): a reply that late has already \
             failed as a timeout; give at most 20ms"
                .into(),
        ),
        (
            on("expected_replicas = 3\ncommand_timeout = \"10ms\""),
            "fleet.max_lateness",
            "25ms (the default) is longer than fleet.command_timeout (10ms): a reply that late \
             has already failed as a timeout; give at most 10ms"
                .into(),
        ),
        (
            on("expected_replicas = 3\nexpected_replica = 3"),
            "fleet.expected_replica",
            "unknown key; did you mean `expected_replicas`? (known: redis_url, \
             expected_replicas, fallback, shared_cache, key_prefix, command_timeout, \
             max_lateness)"
                .into(),
        ),
        (
            fleet("redis = \"redis://redis:6379\""),
            "fleet.redis",
            "unknown key (known: redis_url, expected_replicas, fallback, shared_cache, \
             key_prefix, command_timeout, max_lateness)"
                .into(),
        ),
        (
            format!("{MINIMAL}[flet]\nredis_url = \"redis://redis:6379\"\n"),
            "flet",
            "unknown key; did you mean `fleet`? (known: server, upstream, apps, cache, \
             throttle, fleet, log)"
                .into(),
        ),
        (
            format!("fleet = \"redis://redis:6379\"\n{MINIMAL}"),
            "fleet",
            "expected a table".into(),
        ),
    ];
    for (toml, key, message) in cases {
        assert_eq!(only_problem(&toml, &env(&[]), key), message, "{toml}");
    }
}

/// A URL of the wrong type is one problem, and the other keys are then checked as in fleet
/// mode rather than reported as having no effect.
#[test]
fn a_wrongly_typed_url_still_checks_the_other_keys() {
    let toml = fleet("redis_url = [\"redis://redis:6379\"]\nexpected_replicas = 0");
    let found = problems(&toml, &env(&[]));
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["fleet.expected_replicas", "fleet.redis_url"]);
    assert_eq!(found[1].message, "expected a string, found sequence");
    assert!(
        found[0].message.starts_with("0 is out of range"),
        "{found:?}"
    );
}

/// `TIM_GATEWAY__FLEET__…` sets every key, numbers and booleans converted as for the other
/// sections, and a bad value names its variable.
#[test]
fn env_overrides_reach_every_fleet_key() {
    let url = format!("redis://:{PASSWORD}@redis.tim.svc:6379/1");
    let overrides = env(&[
        ("TIM_GATEWAY__FLEET__REDIS_URL", &url),
        ("TIM_GATEWAY__FLEET__EXPECTED_REPLICAS", "3"),
        ("TIM_GATEWAY__FLEET__FALLBACK", "closed"),
        ("TIM_GATEWAY__FLEET__SHARED_CACHE", "0"),
        ("TIM_GATEWAY__FLEET__KEY_PREFIX", "007"),
        ("TIM_GATEWAY__FLEET__COMMAND_TIMEOUT", "100ms"),
        ("TIM_GATEWAY__FLEET__MAX_LATENESS", "100ms"),
    ]);
    let expected = FleetConfig {
        redis_url: fleet_of(
            &fleet(&format!("redis_url = {url:?}\nexpected_replicas = 3")),
            &env(&[]),
        )
        .redis_url,
        expected_replicas: 3,
        fallback: Fallback::Closed,
        shared_cache: false,
        key_prefix: "007".into(),
        command_timeout: Duration::from_millis(100),
        max_lateness: Duration::from_millis(100),
    };
    assert_eq!(fleet_of(MINIMAL, &overrides), expected);
    assert_eq!(expected.redis_url.expose(), url);

    // The environment overrides the file, key by key.
    let file = on("expected_replicas = 20\nshared_cache = true");
    let overrides = env(&[("TIM_GATEWAY__FLEET__SHARED_CACHE", "false")]);
    let fleet = fleet_of(&file, &overrides);
    assert_eq!((fleet.expected_replicas, fleet.shared_cache), (20, false));

    let cases = [
        (
            ("TIM_GATEWAY__FLEET__EXPECTED_REPLICAS", "three"),
            "fleet.expected_replicas",
            "expected an integer, found string \"three\" \
             (set by TIM_GATEWAY__FLEET__EXPECTED_REPLICAS)",
        ),
        (
            ("TIM_GATEWAY__FLEET__SHARED_CACHE", "sometimes"),
            "fleet.shared_cache",
            "expected a boolean, found string \"sometimes\" \
             (set by TIM_GATEWAY__FLEET__SHARED_CACHE)",
        ),
        (
            ("TIM_GATEWAY__FLEET__REDIS_URL", "redis://redis:0"),
            "fleet.redis_url",
            "\"redis://redis:0\" is not a valid Redis URL: its port is not a number 1 ..= 65535 \
             (set by TIM_GATEWAY__FLEET__REDIS_URL)",
        ),
        (
            ("TIM_GATEWAY__FLEET__MAX_LATENESS", "60ms"),
            "fleet.max_lateness",
            "60ms is longer than fleet.command_timeout (50ms): a reply that late has already \
             failed as a timeout; give at most 50ms (set by TIM_GATEWAY__FLEET__MAX_LATENESS)",
        ),
    ];
    for (pair, key, message) in cases {
        let toml = on("expected_replicas = 3");
        assert_eq!(only_problem(&toml, &env(&[pair]), key), message);
    }
}

/// `check-config` lists every fleet key with its effective value, the URL without its
/// password; with fleet mode off it says so in one line.
#[test]
fn check_config_lists_every_fleet_key() {
    let off = load(MINIMAL, &env(&[])).config.to_string();
    assert!(
        off.contains(
            "\nfleet.redis_url = (none: fleet mode off, each gateway keeps its own quota and \
             cache)\n"
        ),
        "{off}"
    );
    assert!(!off.contains("fleet.expected_replicas"), "{off}");

    let toml = fleet(&format!(
        "redis_url = \"redis://gw:{PASSWORD}@redis.tim.svc:6379/0\"\nexpected_replicas = 20"
    ));
    let text = load(&toml, &env(&[])).config.to_string();
    let expected = "fleet.redis_url = redis://gw:***@redis.tim.svc:6379/0\n\
                    fleet.expected_replicas = 20\n\
                    fleet.fallback = share\n\
                    fleet.shared_cache = true\n\
                    fleet.key_prefix = tim\n\
                    fleet.command_timeout = 50ms\n\
                    fleet.max_lateness = 25ms\n";
    assert!(text.contains(expected), "{text}");
    for key in field_names::<RawFleet>() {
        assert!(
            text.contains(&format!("\nfleet.{key} = ")),
            "fleet.{key}: {text}"
        );
    }
}

/// config/example.toml documents every fleet key in a commented-out `[fleet]` block that,
/// uncommented, turns fleet mode on with the values it states.
#[test]
fn example_config_documents_fleet_mode() {
    let text = include_str!("../../../config/example.toml");
    let block: Vec<&str> = text
        .lines()
        .skip_while(|line| *line != "# [fleet]")
        .take_while(|line| line.starts_with('#') || line.is_empty())
        .collect();
    assert!(!block.is_empty(), "example.toml has no \"# [fleet]\" block");
    let settings: String = block
        .iter()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| *line == "[fleet]" || line.contains(" = "))
        .map(|line| format!("{line}\n"))
        .collect();
    for key in field_names::<RawFleet>() {
        assert!(
            settings.contains(&format!("\n{key} = ")),
            "example.toml lacks fleet.{key}:\n{settings}"
        );
    }
    let fleet = fleet_of(&format!("{MINIMAL}{settings}"), &env(&[]));
    assert_eq!(fleet.redis_url.expose(), "redis://redis.tim.svc:6379");
    assert_eq!(fleet.expected_replicas, 20);
    assert_eq!(fleet.fallback, Fallback::Share);
    assert!(fleet.shared_cache);
    assert_eq!(fleet.key_prefix, "tim");
    assert_eq!(fleet.command_timeout, Duration::from_millis(50));
    assert_eq!(fleet.max_lateness, Duration::from_millis(25));
}
