//! `fleet.redis_url`: the accepted shapes, the exact problem for each refused one, and a
//! password that never shows, in a valid URL or not.

use super::*;
use crate::config::model::redact_url;

/// Each accepted URL shape, with what `Display` (check-config, logs) shows of it.
#[test]
fn redis_urls_are_accepted_in_three_schemes() {
    let cases = [
        ("redis://localhost", "redis://localhost"),
        ("redis://redis.tim.svc:6379", "redis://redis.tim.svc:6379"),
        (
            "redis://redis_1.tim.svc:6379/15",
            "redis://redis_1.tim.svc:6379/15",
        ),
        ("redis://10.0.0.7/", "redis://10.0.0.7/"),
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
        ("  redis://localhost:6379  ", "redis://localhost:6379"),
        ("rediss://redis.tim.svc", "rediss://redis.tim.svc"),
        ("redis://:pw-Zq8-never-printed@h:1", "redis://:***@h:1"),
        (
            "rediss://gw:pw-Zq8-never-printed@h/3",
            "rediss://gw:***@h/3",
        ),
        ("redis://:a%2Fb%40c@h", "redis://:***@h"),
        ("redis://:p@ss:w@rd@h", "redis://:***@h"),
        (
            "redis+unix:///var/run/redis/redis.sock",
            "redis+unix:///var/run/redis/redis.sock",
        ),
        (
            "redis+unix:///tmp/a@b.sock?db=3",
            "redis+unix:///tmp/a@b.sock?db=3",
        ),
        (
            "redis+unix:///r.sock?db=1&user=gw&pass=pw-Zq8-never-printed",
            "redis+unix:///r.sock?db=1&user=gw&pass=***",
        ),
    ];
    for (url, shown) in cases {
        let toml = fleet(&format!("redis_url = {url:?}\nexpected_replicas = 3"));
        let fleet = fleet_of(&toml, &env(&[]));
        assert_eq!(fleet.redis_url.expose(), url.trim(), "{url}");
        assert_eq!(fleet.redis_url.to_string(), shown, "{url}");
        assert_eq!(
            format!("{:?}", fleet.redis_url),
            format!("RedisUrl({shown:?})")
        );
    }
}

/// Each refused URL gets one exact problem that quotes it with its password as `***`.
#[test]
fn bad_redis_urls_are_refused_with_exact_messages() {
    let invalid =
        |shown: &str, reason: &str| format!("{shown:?} is not a valid Redis URL: {reason}");
    let no_password = "it has '@' but no password before it, and Redis clients send AUTH only \
                       with a password; write redis://:PASSWORD@host, or \
                       redis://USER:PASSWORD@host for an ACL user";
    let query = "redis:// and rediss:// take no query (?…) or fragment (#…); the database goes \
                 in the path, e.g. redis://redis.tim.svc:6379/0";
    let bad_host = "its host is not a host name or IP address (an IPv6 address goes in \
                    brackets: redis://[::1]:6379)";
    let port = "its port is not a number 1 ..= 65535";
    let unix_path = "give the socket's absolute path after redis+unix:// (three slashes), e.g. \
                     redis+unix:///var/run/redis/redis.sock";
    let schemes = "is not a Redis URL; give redis://host[:port][/db], \
                   rediss://host[:port][/db] (TLS) or redis+unix:///path/to/socket[?db=N]";
    let cases: Vec<(&str, String)> = vec![
        (
            "redis.tim.svc:6379",
            format!("\"redis.tim.svc:6379\" {schemes}"),
        ),
        (
            "http://redis:6379",
            format!("\"http://redis:6379\" {schemes}"),
        ),
        (
            "REDIS://redis:6379",
            format!("\"REDIS://redis:6379\" {schemes}"),
        ),
        ("unix:///r.sock", format!("\"unix:///r.sock\" {schemes}")),
        (
            "https://:pw-Zq8-never-printed@redis",
            format!("\"https://:***@redis\" {schemes}"),
        ),
        (
            "redis://",
            invalid(
                "redis://",
                "it has no host; write e.g. redis://redis.tim.svc:6379",
            ),
        ),
        (
            "redis://:pw-Zq8-never-printed@/0",
            invalid(
                "redis://:***@/0",
                "it has no host; write e.g. redis://redis.tim.svc:6379",
            ),
        ),
        ("redis://redis:0", invalid("redis://redis:0", port)),
        ("redis://redis:65536", invalid("redis://redis:65536", port)),
        ("redis://redis:", invalid("redis://redis:", port)),
        ("redis://redis:+1", invalid("redis://redis:+1", port)),
        (
            "redis://:pw-Zq8-never-printed@redis:63 79",
            invalid("redis://:***@redis:63 79", port),
        ),
        ("redis://red is", invalid("redis://red is", bad_host)),
        ("redis://::1", invalid("redis://::1", bad_host)),
        (
            "redis://[::1",
            invalid(
                "redis://[::1",
                "its host in brackets is not an IPv6 address",
            ),
        ),
        (
            "redis://[::1]6379",
            invalid("redis://[::1]6379", "its port must follow ']:'"),
        ),
        (
            "redis://[redis]:6379",
            invalid(
                "redis://[redis]:6379",
                "its host in brackets is not an IPv6 address",
            ),
        ),
        (
            "redis://pw-Zq8-never-printed@redis",
            invalid("redis://***@redis", no_password),
        ),
        (
            "redis://gw:@redis",
            invalid("redis://gw:***@redis", no_password),
        ),
        ("redis://@redis", invalid("redis://***@redis", no_password)),
        (
            "redis://:pw-Zq8/never-printed@redis",
            invalid(
                "redis://:***@redis",
                "a '/', '?' or '#' in the user name or password must be percent-encoded \
                 (%2F, %3F, %23)",
            ),
        ),
        (
            "redis://:pw-Zq8#never-printed@redis",
            invalid(
                "redis://:***@redis",
                "a '/', '?' or '#' in the user name or password must be percent-encoded \
                 (%2F, %3F, %23)",
            ),
        ),
        (
            "redis://redis/db0",
            invalid(
                "redis://redis/db0",
                "the database after the host must be a number, e.g. \
                 redis://redis.tim.svc:6379/0",
            ),
        ),
        (
            "redis://redis/0?protocol=resp3",
            invalid("redis://redis/0?protocol=***", query),
        ),
        (
            "rediss://redis#insecure",
            invalid("rediss://redis#insecure", query),
        ),
        (
            "redis://redis?password=pw-Zq8-never-printed",
            invalid("redis://redis?password=***", query),
        ),
        (
            "redis+unix://r.sock",
            invalid("redis+unix://r.sock", unix_path),
        ),
        ("redis+unix:///", invalid("redis+unix:///", unix_path)),
        (
            "redis+unix://:pw-Zq8-never-printed@/r.sock",
            invalid("redis+unix://:***@/r.sock", unix_path),
        ),
        (
            "redis+unix:///r.sock?db=x",
            invalid(
                "redis+unix:///r.sock?db=x",
                "db must be a number, e.g. ?db=0",
            ),
        ),
        (
            "redis+unix:///r.sock?password=pw-Zq8-never-printed",
            invalid(
                "redis+unix:///r.sock?password=***",
                "unknown parameter \"password\"; redis+unix:// takes db, user and pass",
            ),
        ),
        (
            "redis+unix:///r.sock?pw-Zq8-never-printed",
            invalid(
                "redis+unix:///r.sock?***",
                "its query must be name=value pairs, e.g. ?db=0",
            ),
        ),
        (
            "redis+unix:///r.sock?user=gw",
            invalid(
                "redis+unix:///r.sock?user=gw",
                "it has user= but no pass=, and Redis clients send AUTH only with a password; \
                 add &pass=PASSWORD",
            ),
        ),
        (
            "redis+unix:///r.sock?pass=",
            invalid("redis+unix:///r.sock?pass=***", "pass= is empty"),
        ),
    ];
    for (url, message) in cases {
        let toml = fleet(&format!("redis_url = {url:?}\nexpected_replicas = 3"));
        let found = only_problem(&toml, &env(&[]), "fleet.redis_url");
        assert_eq!(found, message, "{url}");
        assert!(!found.contains("never-printed"), "{url}: {found}");
    }
}

/// The redaction hides anything that may be a password, in a valid URL or not.
#[test]
fn redaction_hides_every_place_a_password_can_be() {
    let cases = [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://:secret@h", "redis://:***@h"),
        ("redis://user:secret@h", "redis://user:***@h"),
        ("redis://secret@h", "redis://***@h"),
        ("redis://:se@cr:et@h", "redis://:***@h"),
        ("redis://:se/cr?et@h/0", "redis://:***@h/0"),
        (":secret@h", ":***@h"),
        ("h?pass=secret&db=1&user=u&x", "h?pass=***&db=1&user=u&***"),
        (
            "redis+unix:///a@b.sock?pass=secret",
            "redis+unix:///a@b.sock?pass=***",
        ),
        (
            "redis+unix://u:secret@/a.sock",
            "redis+unix://u:***@/a.sock",
        ),
        ("", ""),
    ];
    for (text, shown) in cases {
        assert_eq!(redact_url(text), shown, "{text}");
    }
}

/// The Redis password never shows: not in `check-config`'s listing, not in `Debug` of the
/// loaded configuration or of the file as read, and not in any problem, even one about the
/// URL itself.
#[test]
fn redis_password_never_appears_in_output() {
    let url = format!("rediss://gw:{PASSWORD}@redis.tim.svc:6380/0");
    let toml = fleet(&format!("redis_url = {url:?}\nexpected_replicas = 3"));
    let loaded = load(&toml, &env(&[]));
    let by_env = load(MINIMAL, &env(&[("TIM_GATEWAY__FLEET__REDIS_URL", &url)]));
    let mut outputs = vec![
        loaded.config.to_string(),
        format!("{loaded:?}"),
        format!("{:?}", loaded.config.fleet),
        by_env.config.to_string(),
        format!("{by_env:?}"),
        format!(
            "{:?}",
            RawFleet {
                redis_url: Some(url.clone()),
                ..RawFleet::default()
            }
        ),
    ];
    for bad in [
        format!("redis://:{PASSWORD}@redis:99999"),
        format!("http://:{PASSWORD}@redis"),
        format!("redis://{PASSWORD}@redis"),
        format!("redis://:{PASSWORD}/x@redis"),
        format!("redis+unix:///r.sock?pass={PASSWORD}&dbb=1"),
        format!("redis+unix://:{PASSWORD}@/r.sock"),
        format!(":{PASSWORD}@redis"),
    ] {
        for (toml, vars) in [
            (fleet(&format!("redis_url = {bad:?}")), env(&[])),
            (
                MINIMAL.to_owned(),
                env(&[("TIM_GATEWAY__FLEET__REDIS_URL", &bad)]),
            ),
        ] {
            let error = Config::from_toml_str(&toml, &vars).expect_err("must be refused");
            assert!(error.to_string().contains("fleet.redis_url: "), "{error}");
            outputs.push(error.to_string());
            outputs.push(format!("{error:?}"));
        }
    }
    for output in outputs {
        assert!(!output.contains(PASSWORD), "password leaked: {output}");
        assert!(
            !output.contains("never-printed"),
            "password part leaked: {output}"
        );
    }
}
