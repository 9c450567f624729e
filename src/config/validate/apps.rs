//! `[apps.NAME]`: names, SDKAppIDs, admin identifiers, origins, secret keys, UserSig
//! lifetimes, and which app is the default.
//!
//! Promise: a secret key is read here and never quoted; messages name the file or variable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{duration, non_empty, read_capped, Findings};
use crate::config::raw::RawApp;
use crate::config::{
    AppConfig, Env, KeySource, DEFAULT_IDENTIFIER, DEFAULT_SECRET_KEY_ENV,
    DEFAULT_USERSIG_LIFETIME, ENV_SEPARATOR,
};
use crate::region::{Origin, Origins, Region};
use crate::usersig::SecretKey;

const MIN_USERSIG_LIFETIME: Duration = Duration::from_secs(10);
/// Shortest lifetime seen in real SDKs (reference §3); below it we warn.
const ADVISED_MIN_USERSIG_LIFETIME: Duration = Duration::from_secs(300);
/// Longest lifetime seen in real SDKs: 180 days (reference §3).
const MAX_USERSIG_LIFETIME: Duration = Duration::from_secs(180 * 86_400);
const MAX_IDENTIFIER_BYTES: usize = 32;
const MAX_APP_NAME_CHARS: usize = 64;
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Checks app names, and that environment overrides can reach each app.
pub(super) fn check_app_names(apps: &BTreeMap<String, RawApp>, findings: &mut Findings) {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for name in apps.keys() {
        let key = format!("apps.{name}");
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if name.is_empty() || name.chars().count() > MAX_APP_NAME_CHARS || !valid_chars {
            findings.problem(
                key,
                "an app name must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-' \
                 (it appears in URLs and metric labels)",
            );
            continue;
        }
        if let Some(other) = seen.insert(name.to_ascii_lowercase(), name) {
            findings.problem(
                key,
                format!(
                    "differs from [apps.{other}] only in letter case; environment overrides \
                     are lowercased, so name apps in lowercase"
                ),
            );
        } else if name.chars().any(|c| c.is_ascii_uppercase()) || name.contains(ENV_SEPARATOR) {
            findings.warning(
                key,
                "environment overrides cannot reach this app (variable names are lowercased \
                 and split at `__`); prefer a lowercase name without `__`",
            );
        }
    }
}

pub(super) fn validate_app(
    name: String,
    raw: RawApp,
    env: &Env,
    findings: &mut Findings,
) -> Option<AppConfig> {
    let key = format!("apps.{name}");

    let sdkappid = match raw.sdkappid {
        Some(id) if id > 0 => Some(id),
        Some(_) => {
            findings.problem(format!("{key}.sdkappid"), "must be greater than 0");
            None
        }
        None => {
            findings.problem(
                format!("{key}.sdkappid"),
                "is required: the app's SDKAppID, e.g. 1400000000",
            );
            None
        }
    };

    let identifier = raw
        .identifier
        .unwrap_or_else(|| DEFAULT_IDENTIFIER.to_owned());
    let identifier_problem = if identifier.is_empty() {
        Some("must not be empty: it is the app admin account, e.g. \"administrator\"".to_owned())
    } else if identifier.len() > MAX_IDENTIFIER_BYTES {
        Some(format!(
            "is {} bytes; an identifier is at most {MAX_IDENTIFIER_BYTES}",
            identifier.len()
        ))
    } else if identifier.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else {
        None
    };
    if let Some(message) = identifier_problem {
        findings.problem(format!("{key}.identifier"), message);
    }

    let origins = origins(
        &key,
        non_empty(raw.region),
        non_empty(raw.endpoint),
        findings,
    );
    // A key file path of the wrong type was dropped and already reported; falling back to
    // the variable would report a second, misleading problem.
    let secret = if findings.has_problem(&format!("{key}.secret_key_file")) {
        None
    } else {
        secret_key(
            &key,
            non_empty(raw.secret_key_file),
            raw.secret_key_env,
            env,
            findings,
        )
    };

    let lifetime_key = format!("{key}.usersig_lifetime");
    let usersig_lifetime = duration(
        findings,
        &lifetime_key,
        raw.usersig_lifetime,
        DEFAULT_USERSIG_LIFETIME,
    );
    if usersig_lifetime < MIN_USERSIG_LIFETIME || usersig_lifetime > MAX_USERSIG_LIFETIME {
        findings.problem(
            &lifetime_key,
            format!(
                "{} is out of range; give 10s ..= 180days",
                humantime::format_duration(usersig_lifetime)
            ),
        );
    } else if usersig_lifetime.subsec_nanos() != 0 {
        findings.problem(
            &lifetime_key,
            "must be a whole number of seconds (a UserSig's lifetime is in seconds)",
        );
    } else if usersig_lifetime < ADVISED_MIN_USERSIG_LIFETIME {
        findings.warning(
            &lifetime_key,
            format!(
                "{} is short: Tencent advises at least 24h (reference §3), and every \
                 re-mint is a chance to race an expiry",
                humantime::format_duration(usersig_lifetime)
            ),
        );
    }

    let (secret_key, secret_key_source) = secret?;
    Some(AppConfig {
        name,
        sdkappid: sdkappid?,
        identifier,
        origins: origins?,
        secret_key,
        secret_key_source,
        usersig_lifetime,
    })
}

/// Exactly one of `region` and `endpoint` says where the app's upstream is.
fn origins(
    key: &str,
    region: Option<String>,
    endpoint: Option<String>,
    findings: &mut Findings,
) -> Option<Origins> {
    match (region, endpoint) {
        (Some(region), None) => match region.parse::<Region>() {
            Ok(region) => Some(region.origins()),
            Err(e) => {
                findings.problem(format!("{key}.region"), e.to_string());
                None
            }
        },
        (None, Some(endpoint)) => match Origin::parse(endpoint.trim()) {
            Ok(origin) => {
                if !origin.is_https() {
                    findings.warning(
                        format!("{key}.endpoint"),
                        "plain http: UserSigs travel unencrypted; use this only for local tests",
                    );
                }
                Some(Origins {
                    primary: origin,
                    backup: None,
                })
            }
            Err(message) => {
                findings.problem(format!("{key}.endpoint"), message);
                None
            }
        },
        (Some(_), Some(_)) => {
            findings.problem(
                format!("{key}.endpoint"),
                "set either region or endpoint, not both",
            );
            None
        }
        // A region or endpoint of the wrong type was dropped and already reported.
        (None, None)
            if findings.has_problem(&format!("{key}.region"))
                || findings.has_problem(&format!("{key}.endpoint")) =>
        {
            None
        }
        (None, None) => {
            findings.problem(
                key,
                "set region (e.g. \"singapore\") or endpoint (e.g. \"https://127.0.0.1:9443\")",
            );
            None
        }
    }
}

/// Reads the app's secret key from `secret_key_file`, or else from the variable named by
/// `secret_key_env`. Messages name the file or variable, never the value.
fn secret_key(
    key: &str,
    file: Option<String>,
    env_name: Option<String>,
    env: &Env,
    findings: &mut Findings,
) -> Option<(SecretKey, KeySource)> {
    if let Some(file) = file {
        let file_key = format!("{key}.secret_key_file");
        if looks_like_key(&file) {
            findings.problem(
                file_key,
                "looks like a secret key itself, not a path; put the key in a file and give \
                 that file's path",
            );
            return None;
        }
        if env_name.is_some() {
            findings.warning(
                format!("{key}.secret_key_env"),
                "ignored: secret_key_file is set and takes precedence",
            );
        }
        let path = PathBuf::from(file);
        let text = match read_capped(&path, MAX_KEY_FILE_BYTES) {
            Ok(bytes) => String::from_utf8(bytes).ok(),
            Err(e) => {
                findings.problem(file_key, format!("cannot read {}: {e}", path.display()));
                return None;
            }
        };
        return match text.map(SecretKey::new) {
            None => {
                findings.problem(file_key, format!("{} is not UTF-8 text", path.display()));
                None
            }
            Some(secret) if secret.is_empty() => {
                findings.problem(file_key, format!("{} is empty", path.display()));
                None
            }
            Some(secret) => Some((secret, KeySource::File(path))),
        };
    }

    let env_key = format!("{key}.secret_key_env");
    let name = env_name.unwrap_or_else(|| DEFAULT_SECRET_KEY_ENV.to_owned());
    if looks_like_key(&name) {
        findings.problem(
            env_key,
            "looks like a secret key itself, not a variable name; put the key in an \
             environment variable and name that variable here",
        );
        return None;
    }
    let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        findings.problem(
            env_key,
            "must name an environment variable: letters, digits and '_', not starting with a \
             digit",
        );
        return None;
    }
    match env.get(&name).map(SecretKey::new) {
        None => {
            findings.problem(
                env_key,
                format!(
                    "no secret key: environment variable {name} is not set (or set \
                     secret_key_file)"
                ),
            );
            None
        }
        Some(secret) if secret.is_empty() => {
            findings.problem(
                env_key,
                format!("no secret key: environment variable {name} is empty"),
            );
            None
        }
        Some(secret) => Some((secret, KeySource::Env(name))),
    }
}

/// Tencent's quotas are per SDKAppID (reference §4): two apps with one SDKAppID would each
/// get a full budget and together call Tencent up to twice the quota.
pub(super) fn check_unique_sdkappids(apps: &[AppConfig], findings: &mut Findings) {
    for (i, app) in apps.iter().enumerate() {
        if let Some(first) = apps[..i]
            .iter()
            .find(|other| other.sdkappid == app.sdkappid)
        {
            findings.problem(
                format!("apps.{}.sdkappid", app.name),
                format!(
                    "{} is also apps.{}'s SDKAppID; Tencent's quotas are per SDKAppID, so two \
                     apps would together exceed them; configure each SDKAppID once",
                    app.sdkappid, first.name
                ),
            );
        }
    }
}

/// Each SDKAppID has its own secret key, so two apps reading one source is likely a slip.
pub(super) fn warn_shared_key_sources(apps: &[AppConfig], findings: &mut Findings) {
    for (i, app) in apps.iter().enumerate() {
        if let Some(first) = apps[..i].iter().find(|other| {
            other.secret_key_source == app.secret_key_source && other.sdkappid != app.sdkappid
        }) {
            let field = match app.secret_key_source {
                KeySource::File(_) => "secret_key_file",
                KeySource::Env(_) => "secret_key_env",
            };
            findings.warning(
                format!("apps.{}.{field}", app.name),
                format!(
                    "reads the same secret key ({}) as apps.{} although their SDKAppIDs \
                     differ; each SDKAppID has its own key",
                    app.secret_key_source, first.name
                ),
            );
        }
    }
}

/// Resolves `server.default_app`: the named app; else the only app; else the app called
/// `default`. `None` when that fails (a problem is recorded) or when an app is invalid (it has
/// its own problem). `names` lists every app written, valid or not.
pub(super) fn choose_default_app(
    named: Option<String>,
    names: &[String],
    apps: &[AppConfig],
    findings: &mut Findings,
) -> Option<usize> {
    const KEY: &str = "server.default_app";
    if names.is_empty() {
        findings.problem(
            "apps",
            "no apps are configured; add an [apps.NAME] table with sdkappid and region",
        );
        return None;
    }
    let chosen = match non_empty(named) {
        Some(name) if !names.contains(&name) => {
            findings.problem(
                KEY,
                format!("{name:?} is not one of the apps ({})", names.join(", ")),
            );
            return None;
        }
        Some(name) => name,
        None if names.len() == 1 => names[0].clone(),
        None if names.iter().any(|name| name == "default") => "default".to_owned(),
        None => {
            findings.problem(
                KEY,
                format!(
                    "several apps ({}) and no default_app; set server.default_app or name \
                     one app \"default\"",
                    names.join(", ")
                ),
            );
            return None;
        }
    };
    apps.iter().position(|app| app.name == chosen)
}

/// Whether `text` is shaped like a Tencent secret key (64 hex characters, reference §3) rather
/// than a path or a variable name: 32 or more hex digits and nothing else.
fn looks_like_key(text: &str) -> bool {
    let text = text.trim();
    text.len() >= 32 && text.chars().all(|c| c.is_ascii_hexdigit())
}
