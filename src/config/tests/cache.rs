//! `[cache]` and its `[[cache.rules]]`.

use std::time::Duration;

use super::*;
use crate::config::{CacheConfig, CacheRule};

/// The `get_all_robots` read (it has a built-in rule)'s command, for rules that need a valid read.
const ROBOTS: &str = "command = \"openim_robot_http_svc/get_all_robots\"";

/// Without `[cache]`, the size bound is 64 MiB and there are no rules beyond the catalogue's.
#[test]
fn cache_keys_take_their_documented_defaults() {
    let config = load(MINIMAL, &env(&[])).config;
    let expected = CacheConfig {
        max_bytes: 67_108_864,
        rules: vec![],
    };
    assert_eq!(config.cache, expected);
}

/// A rule's optional keys take their defaults: enabled, no stale serving, no invalidation;
/// a disabled rule needs no ttl.
#[test]
fn cache_rule_keys_take_their_defaults() {
    let toml = format!(
        "{MINIMAL}[[cache.rules]]\ncommand = \"profile/portrait_get\"\nttl = \"2s\"\n\
         [[cache.rules]]\ncommand = \"openim_robot_http_svc/get_all_robots\"\nenabled = false\n"
    );
    let rules = load(&toml, &env(&[])).config.cache.rules;
    assert_eq!(
        rules,
        [
            CacheRule {
                command: "profile/portrait_get".into(),
                enabled: true,
                ttl: Duration::from_secs(2),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                // The catalogue's list when the rule gives none.
                invalidated_by: vec![
                    "profile/portrait_set".into(),
                    "im_open_login_svc/account_import".into(),
                    "im_open_login_svc/multiaccount_import".into(),
                    "im_open_login_svc/account_delete".into(),
                ],
            },
            CacheRule {
                command: "openim_robot_http_svc/get_all_robots".into(),
                enabled: false,
                ttl: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                invalidated_by: vec![
                    "openim_robot_http_svc/create_robot".into(),
                    "openim_robot_http_svc/delete_robot".into(),
                ],
            },
        ]
    );
}

/// Every key of `[[cache.rules]]` is read, rules come out in file order, and zero turns off
/// what may be off.
#[test]
fn rules_are_read_in_file_order() {
    let toml = format!(
        r#"{MINIMAL}
[cache]
max_bytes = 1024
[[cache.rules]]
command = "profile/portrait_get"
enabled = true
ttl = "1day"
stale_while_revalidate = "0s"
stale_if_error = "7days"
invalidated_by = ["profile/portrait_set", "openim/sendmsg"]
[[cache.rules]]
command = "group_open_http_svc/get_group_info"
ttl = "1s"
stale_while_revalidate = "1day"
"#
    );
    let Loaded { config, warnings } = load(&toml, &env(&[]));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.cache.max_bytes, 1024);
    let rules = &config.cache.rules;
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].command, "profile/portrait_get");
    assert_eq!(rules[0].ttl, Duration::from_secs(86_400));
    assert_eq!(rules[0].stale_while_revalidate, Duration::ZERO);
    assert_eq!(rules[0].stale_if_error, Duration::from_secs(7 * 86_400));
    assert_eq!(
        rules[0].invalidated_by,
        ["profile/portrait_set", "openim/sendmsg"]
    );
    assert_eq!(rules[1].command, "group_open_http_svc/get_group_info");
    assert_eq!(rules[1].stale_while_revalidate, Duration::from_secs(86_400));
}

/// Every problem of `[cache]` and its rules is reported under its key path, rules with their
/// index.
#[test]
fn each_cache_problem_is_reported_under_its_key() {
    let two_rules = format!(
        "{MINIMAL}[[cache.rules]]\n{ROBOTS}\nttl = \"5s\"\n[[cache.rules]]\n{ROBOTS}\nttl = \"9s\"\n"
    );
    let second_rule_bad = format!(
        "{MINIMAL}[[cache.rules]]\n{ROBOTS}\nttl = \"5s\"\n[[cache.rules]]\n{ROBOTS}\nttl = \"2days\"\n"
    );
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("cache = 1\n{MINIMAL}"), "cache", "expected a table"),
        (
            cache("max_bytes = 1023"),
            "cache.max_bytes",
            "1 KiB ..= 16 GiB",
        ),
        (
            cache("max_bytes = 17179869185"),
            "cache.max_bytes",
            "out of range",
        ),
        (
            cache("max_byte = 1024"),
            "cache.max_byte",
            "did you mean `max_bytes`?",
        ),
        (
            cache("rules = 5"),
            "cache.rules",
            "expected an array of tables",
        ),
        (cache("rules = [1]"), "cache.rules[0]", "expected a table"),
        (
            rule("ttl = \"5s\""),
            "cache.rules[0].command",
            "is required",
        ),
        (
            rule("command = \"profile/portrait_gets\"\nttl = \"5s\""),
            "cache.rules[0].command",
            "not in the catalogue; did you mean \"profile/portrait_get\"?",
        ),
        (
            rule("command = \"openim/sendmsg\"\nttl = \"5s\""),
            "cache.rules[0].command",
            "only reads can be cached",
        ),
        (
            rule(ROBOTS),
            "cache.rules[0].ttl",
            "is required when the rule is enabled",
        ),
        (
            rule(&format!("{ROBOTS}\nenabled = true")),
            "cache.rules[0].ttl",
            "is required",
        ),
        (
            rule(&format!("{ROBOTS}\nttl = \"0s\"")),
            "cache.rules[0].ttl",
            "is zero",
        ),
        (
            rule(&format!("{ROBOTS}\nttl = \"25h\"")),
            "cache.rules[0].ttl",
            "\"25h\" is out of range; give at most 1day",
        ),
        (
            rule(&format!("{ROBOTS}\nenabled = false\nttl = \"2days\"")),
            "cache.rules[0].ttl",
            "out of range",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\nstale_while_revalidate = \"25h\""
            )),
            "cache.rules[0].stale_while_revalidate",
            "give 0s ..= 1day",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\nstale_if_error = \"8days\""
            )),
            "cache.rules[0].stale_if_error",
            "give 0s ..= 7days",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\nstale_if_error = \"forever\""
            )),
            "cache.rules[0].stale_if_error",
            "not a duration",
        ),
        (
            rule(&format!("{ROBOTS}\nttl = \"5s\"\nenabled = \"sometimes\"")),
            "cache.rules[0].enabled",
            "expected",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\ninvalidated_by = \"openim/sendmsg\""
            )),
            "cache.rules[0].invalidated_by",
            "expected",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\ninvalidated_by = [\"openim/sendmsg\", \"nope/nope\"]"
            )),
            "cache.rules[0].invalidated_by[1]",
            "\"nope/nope\" is not in the catalogue",
        ),
        (
            rule(&format!(
                "{ROBOTS}\nttl = \"5s\"\ninvalidated_by = [\"profile/portrait_get\"]"
            )),
            "cache.rules[0].invalidated_by[0]",
            "is a read; only a write can invalidate",
        ),
        (
            rule(&format!("{ROBOTS}\nttl = \"5s\"\ntll = \"5s\"")),
            "cache.rules[0].tll",
            "did you mean `ttl`?",
        ),
        (
            two_rules,
            "cache.rules[1].command",
            "already has a rule (cache.rules[0])",
        ),
        (second_rule_bad, "cache.rules[1].ttl", "out of range"),
    ];
    for (toml, key, fragment) in cases {
        assert_problem(&toml, &env(&[]), key, fragment);
    }
}

/// A wrongly typed value inside a rule, or an element that is not a table, is one problem,
/// not also a "required" one.
#[test]
fn a_wrongly_typed_value_in_a_rule_is_reported_once() {
    let cases = [
        (
            rule("command = \"profile/portrait_get\"\nttl = []"),
            "cache.rules[0].ttl",
        ),
        (rule("command = 5\nttl = \"5s\""), "cache.rules[0].command"),
        (cache("rules = [[]]"), "cache.rules[0]"),
    ];
    for (toml, key) in cases {
        let found = problems(&toml, &env(&[]));
        assert_eq!(found.len(), 1, "{toml}: {found:?}");
        assert_eq!(found[0].key, key, "{toml}");
    }
}

/// A command outside the catalogue may be named by a rule or a quota only with
/// `server.allow_unknown_commands = true`; a rule for one must say `access = "read"`; a
/// near miss of a known command is warned about.
#[test]
fn unknown_commands_need_pass_through_and_an_access() {
    let allowed = "[server]\nallow_unknown_commands = true\n";
    let read_rule =
        "[[cache.rules]]\ncommand = \"newsvc/get_thing\"\naccess = \"read\"\nttl = \"5s\"\n";
    assert_problem(
        &format!("{MINIMAL}{read_rule}"),
        &env(&[]),
        "cache.rules[0].command",
        "needs server.allow_unknown_commands = true",
    );
    assert_problem(
        &format!("{MINIMAL}[[throttle.quotas]]\ncommand = \"sns/frend_add\"\nper_second = 50\n"),
        &env(&[]),
        "throttle.quotas[0].command",
        "did you mean \"sns/friend_add\"?",
    );
    let loaded = load(&format!("{allowed}{MINIMAL}{read_rule}"), &env(&[]));
    assert_eq!(loaded.config.cache.rules[0].command, "newsvc/get_thing");
    assert_problem(
        &format!(
            "{allowed}{MINIMAL}[[cache.rules]]\ncommand = \"newsvc/get_thing\"\nttl = \"5s\"\n"
        ),
        &env(&[]),
        "cache.rules[0].access",
        "is required for \"newsvc/get_thing\"",
    );
    assert_problem(
        &format!("{allowed}{MINIMAL}[[cache.rules]]\ncommand = \"newsvc/get_thing\"\naccess = \"write\"\nttl = \"5s\"\n"),
        &env(&[]),
        "cache.rules[0].access",
        "only reads can be cached",
    );
    assert_problem(
        &format!("{allowed}{MINIMAL}[[cache.rules]]\ncommand = \"profile/portrait_get\"\naccess = \"write\"\nttl = \"5s\"\n"),
        &env(&[]),
        "cache.rules[0].access",
        "is a read in the catalogue",
    );
    assert_problem(
        &format!("{allowed}{MINIMAL}[[cache.rules]]\ncommand = \"no slash\"\naccess = \"read\"\nttl = \"5s\"\n"),
        &env(&[]),
        "cache.rules[0].command",
        "is not a command",
    );
    let near = load(
        &format!(
            "{allowed}{MINIMAL}[[throttle.quotas]]\ncommand = \"sns/frend_add\"\nper_second = 50\n"
        ),
        &env(&[]),
    );
    assert!(
        near.warnings
            .iter()
            .any(|w| w.key == "throttle.quotas[0].command"
                && w.message.contains("did you mean \"sns/friend_add\"?")),
        "{:?}",
        near.warnings
    );
}
