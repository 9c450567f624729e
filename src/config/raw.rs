//! Stage 1: the TOML file and the `TIM_GATEWAY__…` environment → a permissive [`RawConfig`].
//!
//! Promises: every key the `Raw*` structs do not declare is reported, with a "did you mean"
//! when one is close; a value of the wrong type is reported once, under its own key, and
//! dropped so the rest of its table still parses. Nothing is interpreted here: durations,
//! addresses, regions and commands stay strings for `validate`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserialize;

use super::validate::Findings;
use super::{redact_key_like, ConfigError, Env, ENV_PREFIX, ENV_SEPARATOR};

/// The configuration as written: everything optional, nothing interpreted yet. The buffer
/// between the file format users write and the types the gateway uses.
#[derive(Debug, Default)]
pub(super) struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    /// Keyed by app name; a `BTreeMap` so apps come out sorted whatever order the file used.
    pub apps: BTreeMap<String, RawApp>,
    pub cache: RawCache,
    pub throttle: RawThrottle,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub allow_non_loopback: Option<bool>,
    pub max_body_bytes: Option<u64>,
    pub allow_unknown_commands: Option<bool>,
    pub default_app: Option<String>,
    pub shutdown_grace: Option<String>,
    pub allowed_hosts: Option<StringList>,
    pub max_connections: Option<u64>,
    pub admin_token_file: Option<String>,
}

/// A list of strings as TOML writes it (`["a", "b"]`) or as one environment variable can
/// (`a,b`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum StringList {
    List(Vec<String>),
    Csv(String),
}

impl StringList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StringList::List(items) => items,
            StringList::Csv(text) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<u64>,
    pub ca_file: Option<String>,
    pub max_retries: Option<u64>,
    pub retry_base_delay: Option<String>,
    pub deadline: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub sdkappid: Option<u64>,
    pub identifier: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub secret_key_file: Option<String>,
    pub secret_key_env: Option<String>,
    pub usersig_lifetime: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub max_bytes: Option<u64>,
    /// Read element by element by [`array_of_tables`], never by serde: declared here so it is
    /// a known key.
    #[serde(default)]
    pub rules: Vec<RawCacheRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCacheRule {
    pub command: Option<String>,
    pub enabled: Option<bool>,
    pub ttl: Option<String>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub invalidated_by: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawThrottle {
    pub safety_margin: Option<f64>,
    pub burst: Option<f64>,
    pub max_wait: Option<String>,
    pub max_waiters: Option<u64>,
    pub default_quota: Option<u64>,
    /// Read element by element by [`array_of_tables`], never by serde: declared here so it is
    /// a known key.
    #[serde(default)]
    pub quotas: Vec<RawQuota>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuota {
    pub command: Option<String>,
    pub per_second: Option<u64>,
}

const SECTIONS: &[&str] = &["server", "upstream", "apps", "cache", "throttle"];

/// Merges the file and the environment overrides into one tree.
///
/// # Errors
/// [`ConfigError::Parse`] if `toml` is not TOML; the reason quotes no line of the file.
pub(super) fn merge(
    toml: &str,
    origin: &Path,
    env: &Env,
) -> Result<::config::Map<String, ::config::Value>, ConfigError> {
    let merged = ::config::Config::builder()
        .add_source(::config::File::from_str(toml, ::config::FileFormat::Toml))
        .add_source(overrides(env))
        .build()
        .map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            reason: redact_key_like(&redact_snippet(&e.to_string())),
        })?;
    ::config::Source::collect(&merged).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        reason: e.to_string(),
    })
}

/// The `TIM_GATEWAY__…` overrides as a `config` source. Filtering here (the crate filters
/// too) keeps single-underscore variables such as `TIM_GATEWAY_SECRET_KEY` out entirely.
fn overrides(env: &Env) -> ::config::Environment {
    let pattern = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    let vars: ::config::Map<String, String> = env
        .vars
        .iter()
        .filter(|(name, _)| {
            name.get(..pattern.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(&pattern))
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    // No `try_parsing`: it would turn `007` into 7 and `1e3` into 1000 in string fields;
    // the field's type converts numbers and booleans instead.
    ::config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .source(Some(vars))
}

/// Keeps the first line and the explanation of a TOML error, dropping the quoted source line
/// (` 3 | secret_key = "…`) and its caret line.
fn redact_snippet(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| {
            let after_number = line
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            !line.is_empty() && !after_number.starts_with('|')
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl RawConfig {
    pub fn from_tree(
        tree: ::config::Map<String, ::config::Value>,
        findings: &mut Findings,
    ) -> Self {
        let mut raw = RawConfig::default();
        for (key, value) in tree {
            match key.as_str() {
                "server" => raw.server = section(findings, "server", value),
                "upstream" => raw.upstream = section(findings, "upstream", value),
                "apps" => raw.apps = apps(findings, value),
                "cache" => {
                    if let Some(mut table) = table(findings, "cache", value) {
                        let rules = table.remove("rules");
                        raw.cache = fields(findings, "cache", table);
                        raw.cache.rules = array_of_tables(findings, "cache.rules", rules);
                    }
                }
                "throttle" => {
                    if let Some(mut table) = table(findings, "throttle", value) {
                        let quotas = table.remove("quotas");
                        raw.throttle = fields(findings, "throttle", table);
                        raw.throttle.quotas = array_of_tables(findings, "throttle.quotas", quotas);
                    }
                }
                _ => unknown_key(findings, "", &key, SECTIONS),
            }
        }
        raw
    }
}

fn unknown_key(findings: &mut Findings, section: &str, key: &str, known: &[&str]) {
    let full = join(section, key);
    if key == "secret_key" {
        findings.problem(
            full,
            "a secret key is not accepted in the configuration; put the key in an env var \
             (secret_key_env) or a file (secret_key_file)",
        );
        return;
    }
    let mut message = "unknown key".to_owned();
    if let Some(near) = nearest(key, known) {
        message.push_str(&format!("; did you mean `{near}`?"));
    }
    if !known.is_empty() {
        message.push_str(&format!(" (known: {})", known.join(", ")));
    }
    findings.problem(full, message);
}

/// The candidate `word` is most likely a slip for: at most 2 edits away, or equal but for
/// letter case.
pub(super) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let near = candidates
        .iter()
        .min_by_key(|candidate| edit_distance(candidate, word))?;
    (edit_distance(near, word) <= 2 || near.eq_ignore_ascii_case(word)).then_some(*near)
}

/// Deserializes one table into `T`, reporting unknown keys and each wrongly typed value
/// under its own key.
fn section<T: DeserializeOwned + Default>(
    findings: &mut Findings,
    key: &str,
    value: ::config::Value,
) -> T {
    match table(findings, key, value) {
        Some(table) => fields(findings, key, table),
        None => T::default(),
    }
}

/// The table `value` holds; `None` (reported) when it is something else.
fn table(
    findings: &mut Findings,
    key: &str,
    value: ::config::Value,
) -> Option<::config::Map<String, ::config::Value>> {
    findings.note_origin(key, &value);
    match value.into_table() {
        Ok(table) => Some(table),
        Err(_) => {
            findings.problem(key, "expected a table");
            None
        }
    }
}

/// Deserializes `table` into `T`; a bad value is dropped (left to its default) and the rest
/// retried, so one type error does not hide the others.
fn fields<T: DeserializeOwned + Default>(
    findings: &mut Findings,
    key: &str,
    table: ::config::Map<String, ::config::Value>,
) -> T {
    let known = field_names::<T>();
    let mut kept = ::config::Map::new();
    for (name, value) in table {
        findings.note_origin(&join(key, &name), &value);
        if known.contains(&name.as_str()) {
            kept.insert(name, value);
        } else {
            unknown_key(findings, key, &name, known);
        }
    }
    loop {
        let attempt = ::config::Value::from(kept.clone()).try_deserialize::<T>();
        match attempt {
            Ok(parsed) => return parsed,
            Err(error) => {
                let (field, message) = describe(error);
                match field {
                    Some(field) if kept.remove(&field).is_some() => {
                        findings.problem(join(key, &field), message)
                    }
                    _ => {
                        findings.problem(key, message);
                        return T::default();
                    }
                }
            }
        }
    }
}

/// Reads `[[key]]`: each element as a table of its own, keyed `key[i]`, in file order. An
/// element that is not a table is reported and left at `T::default()`, so indices still
/// match the file; `validate` skips elements whose `key[i]` has a problem.
fn array_of_tables<T: DeserializeOwned + Default>(
    findings: &mut Findings,
    key: &str,
    value: Option<::config::Value>,
) -> Vec<T> {
    let Some(value) = value else {
        return Vec::new();
    };
    let is_from_env = holds_env_value(&value);
    match value.into_array() {
        Ok(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| section(findings, &format!("{key}[{i}]"), item))
            .collect(),
        // `TIM_GATEWAY__CACHE__RULES__0__TTL` makes a table that replaces the file's array.
        Err(_) if is_from_env => {
            let variable = format!(
                "{ENV_PREFIX}{ENV_SEPARATOR}{}",
                key.replace('.', ENV_SEPARATOR).to_ascii_uppercase()
            );
            findings.problem(
                key,
                format!(
                    "cannot be set from the environment; unset the {variable}… variables and \
                     write [[{key}]] tables in the file"
                ),
            );
            Vec::new()
        }
        Err(_) => {
            findings.problem(
                key,
                format!("expected an array of tables, written [[{key}]] once per entry"),
            );
            Vec::new()
        }
    }
}

/// Whether the environment set `value` or anything inside it (tables the overrides create
/// carry no origin themselves, only their leaves do).
fn holds_env_value(value: &::config::Value) -> bool {
    if value.origin().is_some() {
        return true;
    }
    match &value.kind {
        ::config::ValueKind::Table(table) => table.values().any(holds_env_value),
        ::config::ValueKind::Array(items) => items.iter().any(holds_env_value),
        _ => false,
    }
}

fn apps(findings: &mut Findings, value: ::config::Value) -> BTreeMap<String, RawApp> {
    findings.note_origin("apps", &value);
    let table = match value.into_table() {
        Ok(table) => table,
        Err(_) => {
            findings.problem("apps", "expected a table of [apps.NAME] tables");
            return BTreeMap::new();
        }
    };
    table
        .into_iter()
        .map(|(name, value)| {
            let raw = section(findings, &format!("apps.{name}"), value);
            (name, raw)
        })
        .collect()
}

fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

/// The field (relative to the table being deserialized) a `config` error is about, and a
/// message without the crate's `for key … in …` suffix.
fn describe(error: ::config::ConfigError) -> (Option<String>, String) {
    match error {
        ::config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => (key, format!("expected {expected}, found {unexpected}")),
        ::config::ConfigError::At { error, key, .. } => (key, describe(*error).1),
        other => (None, other.to_string()),
    }
}

/// The field names serde's derived `Deserialize` expects for `T`: the single source of truth
/// for "known keys", so a new `Raw*` field can never be reported as unknown.
pub(super) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("field names probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _probed = T::deserialize(Probe(&mut fields));
    fields
}

/// Levenshtein distance, for "did you mean" on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}
