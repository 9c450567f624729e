//! What `check-config` prints (the effective settings), and that no output carries a secret.

use super::*;
use crate::config::raw::{field_names, RawCache, RawServer, RawThrottle, RawUpstream};

/// `check-config`'s listing (the `Display` of a config) has a line for every key, with each
/// rule and quota under its index.
#[test]
fn display_lists_every_key() {
    let toml = format!(
        "{MINIMAL}[[cache.rules]]\ncommand = \"profile/portrait_get\"\nttl = \"2s\"\n\
         invalidated_by = [\"profile/portrait_set\"]\n\
         [[throttle.quotas]]\ncommand = \"openim/sendmsg\"\nper_second = 10\n"
    );
    let text = load(&toml, &env(&[])).config.to_string();
    for line in [
        "server.shutdown_grace = 25s",
        "upstream.max_retries = 2",
        "upstream.retry_base_delay = 100ms",
        "upstream.deadline = 15s",
        "cache.max_bytes = 67108864",
        "cache.rules[0].command = profile/portrait_get",
        "cache.rules[0].enabled = true",
        "cache.rules[0].ttl = 2s",
        "cache.rules[0].stale_while_revalidate = 0s",
        "cache.rules[0].stale_if_error = 0s",
        "cache.rules[0].invalidated_by = [profile/portrait_set]",
        "throttle.safety_margin = 0.05",
        "throttle.burst = 0.05",
        "throttle.max_wait = 2s",
        "throttle.max_waiters = 1024",
        "throttle.default_quota = 200",
        "throttle.quotas[0].command = openim/sendmsg",
        "throttle.quotas[0].per_second = 10",
        "throttle.backoff_base = 1s",
        "throttle.backoff_max = 30s",
    ] {
        assert!(
            text.contains(&format!("{line}\n")),
            "{line} missing from:\n{text}"
        );
    }
    // Every key of the plain sections has its line.
    for (section, fields) in [
        ("server", field_names::<RawServer>()),
        ("upstream", field_names::<RawUpstream>()),
        ("cache", field_names::<RawCache>()),
        ("throttle", field_names::<RawThrottle>()),
    ] {
        for key in fields {
            let has_line = text.contains(&format!("{section}.{key} = "))
                || text.contains(&format!("{section}.{key}[0]"));
            assert!(has_line, "{section}.{key} missing from:\n{text}");
        }
    }
    let empty = load(MINIMAL, &env(&[])).config.to_string();
    assert!(empty.contains("cache.rules = (none"), "{empty}");
    assert!(empty.contains("throttle.quotas = (none"), "{empty}");
}

/// The secret key never shows in `Debug` or `Display` of a config, of the loaded result or of
/// any error, even when it was pasted into the TOML (also on a line with a syntax error).
#[test]
fn secret_never_appears_in_output() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_file(&dir, "main.key", format!("{SECRET}\n").as_bytes());
    let file_toml = format!("{MINIMAL}secret_key_file = {key_file:?}\n");
    let loaded = load(&file_toml, &Env::default());
    let from_env = load(MINIMAL, &env(&[]));
    assert_eq!(loaded.config.apps[0].secret_key.expose(), SECRET);
    let mut outputs = vec![
        format!("{loaded:?}"),
        format!("{}", loaded.config),
        format!("{from_env:?}"),
        format!("{}", from_env.config),
        format!("{:?}", env(&[])),
    ];
    for bad in [
        format!("{MINIMAL}secret_key = \"{SECRET}\"\n"),
        format!("[server]\nsecret_key = \"{SECRET}\"\n{MINIMAL}"),
        format!("{MINIMAL}secret_key = \"{SECRET}\n"),
        format!("{MINIMAL}secret_key = {SECRET}\n"),
    ] {
        let error = Config::from_toml_str(&bad, &env(&[])).expect_err("must be refused");
        outputs.push(format!("{error}"));
        outputs.push(format!("{error:?}"));
    }
    // A real-shaped (hex) key pasted into fields that quote their value in messages.
    let hex = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
    for field in [
        "secret_key_env",
        "secret_key_file",
        "region",
        "identifier",
        "usersig_lifetime",
    ] {
        let toml = format!("[apps.main]\nsdkappid = 1\n{field} = \"{hex}\"\n");
        let error = Config::from_toml_str(&toml, &env(&[])).expect_err("must be refused");
        assert!(!error.to_string().contains(hex), "{field}: {error}");
        assert!(
            error.to_string().contains(&format!("apps.main.{field}")),
            "{field}: {error}"
        );
    }
    let overridden = env(&[("TIM_GATEWAY__APPS__MAIN__SECRET_KEY", SECRET)]);
    let error = Config::from_toml_str(MINIMAL, &overridden).expect_err("must be refused");
    outputs.push(format!("{error}"));
    for output in outputs {
        assert!(!output.contains(SECRET), "secret leaked: {output}");
        assert!(!output.contains("s3cret"), "secret prefix leaked: {output}");
    }
}
