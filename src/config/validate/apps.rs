//! `[apps.NAME]`: names, SDKAppIDs, admin identifiers, origins, secret keys, UserSig
//! lifetimes, and which app is the default.
//!
//! Promise: a secret key is read here and never quoted; messages name the file or variable.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::check::{non_empty, read_capped, Findings};
use crate::config::model::{
    AppConfig, Env, KeySource, DEFAULT_IDENTIFIER, DEFAULT_SECRET_KEY_ENV,
    DEFAULT_USERSIG_LIFETIME, ENV_SEPARATOR,
};
use crate::config::raw::RawApp;
use crate::region::{Origin, Origins, Region};
use crate::usersig::SecretKey;

/// From the shortest to the longest lifetime seen in real SDKs: 10 s to 180 days
/// (reference §3).
const USERSIG_LIFETIMES: RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(180 * 86_400);
/// Shortest lifetime seen in real SDKs (reference §3); below it we warn.
const ADVISED_MIN_USERSIG_LIFETIME: Duration = Duration::from_secs(300);
const MAX_IDENTIFIER_BYTES: usize = 32;
const MAX_APP_NAME_CHARS: usize = 64;
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Every app, sorted by name, and the index of the default one; `None` when any app or the
/// choice of default has a problem.
pub(super) fn validate(
    raw_apps: BTreeMap<String, RawApp>,
    default_app: Option<String>,
    env: &Env,
    findings: &mut Findings,
) -> Option<(Vec<AppConfig>, usize)> {
    check_app_names(&raw_apps, findings);
    let names: Vec<String> = raw_apps.keys().cloned().collect();
    let mut apps = Vec::with_capacity(raw_apps.len());
    let mut are_all_valid = true;
    for (name, raw) in raw_apps {
        match validate_app(name, raw, env, findings) {
            Some(app) => apps.push(app),
            None => are_all_valid = false,
        }
    }
    check_pairs(&apps, findings);
    // Chosen even when an app is invalid, so a bad default_app is reported in the same run.
    let default_app = choose_default_app(default_app, &names, &apps, findings)?;
    are_all_valid.then_some((apps, default_app))
}

/// Checks app names, and that environment overrides can reach each app.
fn check_app_names(apps: &BTreeMap<String, RawApp>, findings: &mut Findings) {
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

fn validate_app(
    name: String,
    raw: RawApp,
    env: &Env,
    findings: &mut Findings,
) -> Option<AppConfig> {
    let key = format!("apps.{name}");
    let sdkappid_key = format!("{key}.sdkappid");
    let sdkappid = match raw.sdkappid {
        None => findings.refuse(
            sdkappid_key,
            "is required: the app's SDKAppID, e.g. 1400000000",
        ),
        Some(0) => findings.refuse(sdkappid_key, "must be greater than 0"),
        id => id,
    };

    let identifier = raw
        .identifier
        .unwrap_or_else(|| DEFAULT_IDENTIFIER.to_owned());
    let identifier_problem = if identifier.is_empty() {
        Some("must not be empty: it is the app admin account, e.g. \"administrator\"".to_owned())
    } else if identifier.len() > MAX_IDENTIFIER_BYTES {
        let len = identifier.len();
        Some(format!(
            "is {len} bytes; an identifier is at most {MAX_IDENTIFIER_BYTES}"
        ))
    } else if identifier.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else {
        None
    };
    if let Some(message) = identifier_problem {
        findings.problem(format!("{key}.identifier"), message);
    }

    let origins = origins(&key, raw.region, raw.endpoint, findings);
    // A key file path of the wrong type was dropped and already reported; falling back to
    // the variable would report a second, misleading problem.
    let secret = if findings.has_problem(&format!("{key}.secret_key_file")) {
        None
    } else {
        secret_key(&key, raw.secret_key_file, raw.secret_key_env, env, findings)
    };

    let lifetime_key = format!("{key}.usersig_lifetime");
    let usersig_lifetime = findings.duration(
        &lifetime_key,
        raw.usersig_lifetime,
        DEFAULT_USERSIG_LIFETIME,
        USERSIG_LIFETIMES,
    );
    if usersig_lifetime.subsec_nanos() != 0 {
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

/// Exactly one of `region` and `endpoint` says where the app's upstream is; an empty one
/// counts as unset.
fn origins(
    key: &str,
    region: Option<String>,
    endpoint: Option<String>,
    findings: &mut Findings,
) -> Option<Origins> {
    let (region_key, endpoint_key) = (format!("{key}.region"), format!("{key}.endpoint"));
    match (non_empty(region), non_empty(endpoint)) {
        (Some(region), None) => match region.parse::<Region>() {
            Ok(region) => Some(region.origins()),
            Err(e) => findings.refuse(region_key, e.to_string()),
        },
        (None, Some(endpoint)) => match Origin::parse(endpoint.trim()) {
            Err(message) => findings.refuse(endpoint_key, message),
            Ok(origin) => {
                if !origin.is_https() {
                    findings.warning(
                        endpoint_key,
                        "plain http: UserSigs travel unencrypted; use this only for local tests",
                    );
                }
                Some(Origins {
                    primary: origin,
                    backup: None,
                })
            }
        },
        (Some(_), Some(_)) => {
            findings.refuse(endpoint_key, "set either region or endpoint, not both")
        }
        // A region or endpoint of the wrong type was dropped and already reported.
        (None, None)
            if findings.has_problem(&region_key) || findings.has_problem(&endpoint_key) =>
        {
            None
        }
        (None, None) => findings.refuse(
            key,
            "set region (e.g. \"singapore\") or endpoint (e.g. \"https://127.0.0.1:9443\")",
        ),
    }
}

/// Reads a secret key file: its text, trimmed, at most 64 KiB. The error says what is wrong
/// with the file (naming it), never quoting its contents. Also read again when the file
/// changes (`key_file`: a rotated Secret).
///
/// # Errors
/// The file cannot be read, is too large, is not UTF-8 or is empty.
pub fn read_key_file(path: &std::path::Path) -> Result<SecretKey, String> {
    let shown = path.display();
    match read_capped(path, MAX_KEY_FILE_BYTES).map(String::from_utf8) {
        Err(e) => Err(format!("cannot read {shown}: {e}")),
        Ok(Err(_)) => Err(format!("{shown} is not UTF-8 text")),
        Ok(Ok(text)) => match SecretKey::new(text) {
            secret if secret.is_empty() => Err(format!("{shown} is empty")),
            secret => Ok(secret),
        },
    }
}

/// Stands in for a key `check-config --no-secrets` did not read; never used to sign.
const UNREAD_SECRET: &str = "not-read-by-check-config";

/// Reads the app's secret key from `secret_key_file`, or else from the variable named by
/// `secret_key_env`. Messages name the file or variable, never the value.
fn secret_key(
    key: &str,
    file: Option<String>,
    env_name: Option<String>,
    env: &Env,
    findings: &mut Findings,
) -> Option<(SecretKey, KeySource)> {
    let env_key = format!("{key}.secret_key_env");
    if let Some(file) = non_empty(file) {
        let file_key = format!("{key}.secret_key_file");
        if looks_like_key(&file) {
            return findings.refuse(
                file_key,
                "looks like a secret key itself, not a path; put the key in a file and give \
                 that file's path",
            );
        }
        if env_name.is_some() {
            findings.warning(
                env_key,
                "ignored: secret_key_file is set and takes precedence",
            );
        }
        let path = PathBuf::from(file);
        if env.skips_secrets() {
            return Some((SecretKey::new(UNREAD_SECRET), KeySource::File(path)));
        }
        return match read_key_file(&path) {
            Err(problem) => findings.refuse(file_key, problem),
            Ok(secret) => Some((secret, KeySource::File(path.clone()))),
        };
    }

    let name = env_name.unwrap_or_else(|| DEFAULT_SECRET_KEY_ENV.to_owned());
    if looks_like_key(&name) {
        return findings.refuse(
            env_key,
            "looks like a secret key itself, not a variable name; put the key in an \
             environment variable and name that variable here",
        );
    }
    let is_valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !is_valid_name {
        return findings.refuse(
            env_key,
            "must name an environment variable: letters, digits and '_', not starting with a \
             digit",
        );
    }
    if env.skips_secrets() {
        return Some((SecretKey::new(UNREAD_SECRET), KeySource::Env(name)));
    }
    match env.get(&name).map(SecretKey::new) {
        None => findings.refuse(
            env_key,
            format!(
                "no secret key: environment variable {name} is not set (or set secret_key_file)"
            ),
        ),
        Some(secret) if secret.is_empty() => findings.refuse(
            env_key,
            format!("no secret key: environment variable {name} is empty"),
        ),
        Some(secret) => Some((secret, KeySource::Env(name))),
    }
}

/// Tencent's quotas are per SDKAppID (reference §4): two apps with one SDKAppID would each
/// get a full budget and together call Tencent up to twice the quota. And each SDKAppID has
/// its own secret key, so two apps reading one key source is likely a slip (a warning).
fn check_pairs(apps: &[AppConfig], findings: &mut Findings) {
    for (i, app) in apps.iter().enumerate() {
        let earlier = &apps[..i];
        if let Some(first) = earlier.iter().find(|a| a.sdkappid == app.sdkappid) {
            findings.problem(
                format!("apps.{}.sdkappid", app.name),
                format!(
                    "{} is also apps.{}'s SDKAppID; Tencent's quotas are per SDKAppID, so two \
                     apps would together exceed them; configure each SDKAppID once",
                    app.sdkappid, first.name
                ),
            );
        }
        let source = &app.secret_key_source;
        if let Some(first) = earlier
            .iter()
            .find(|a| a.secret_key_source == *source && a.sdkappid != app.sdkappid)
        {
            let field = match source {
                KeySource::File(_) => "secret_key_file",
                KeySource::Env(_) => "secret_key_env",
            };
            findings.warning(
                format!("apps.{}.{field}", app.name),
                format!(
                    "reads the same secret key ({source}) as apps.{} although their SDKAppIDs \
                     differ; each SDKAppID has its own key",
                    first.name
                ),
            );
        }
    }
}

/// Resolves `server.default_app`: the named app; else the only app; else the app called
/// `default`. `None` when that fails (a problem is recorded) or when an app is invalid (it has
/// its own problem). `names` lists every app written, valid or not.
fn choose_default_app(
    named: Option<String>,
    names: &[String],
    apps: &[AppConfig],
    findings: &mut Findings,
) -> Option<usize> {
    const KEY: &str = "server.default_app";
    if names.is_empty() {
        return findings.refuse(
            "apps",
            "no apps are configured; add an [apps.NAME] table with sdkappid and region",
        );
    }
    let all = names.join(", ");
    let chosen = match non_empty(named) {
        Some(name) if !names.contains(&name) => {
            return findings.refuse(KEY, format!("{name:?} is not one of the apps ({all})"));
        }
        Some(name) => name,
        None if names.len() == 1 => names[0].clone(),
        None if names.iter().any(|name| name == "default") => "default".to_owned(),
        None => {
            return findings.refuse(
                KEY,
                format!(
                    "several apps ({all}) and no default_app; set server.default_app or name \
                     one app \"default\""
                ),
            );
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
