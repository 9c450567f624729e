//! Stage 1: the TOML file and the `TIM_GATEWAY__…` environment → a permissive [`RawConfig`].
//!
//! Promises: every key the `Raw*` structs do not declare is reported, with a "did you mean"
//! when one is close; a value of the wrong type is reported once, under its own key, and
//! dropped so the rest of its table still parses. Nothing is interpreted here: durations,
//! addresses, regions and commands stay strings for `validate`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserialize;

use super::check::{did_you_mean, env_var_name, redact_key_like, Findings};
use super::model::{redact_url, ConfigError, Env, ENV_PREFIX, ENV_SEPARATOR};

/// A table of the merged file and environment, as the `config` crate holds it.
pub(super) type Table = ::config::Map<String, ::config::Value>;

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
    pub fleet: RawFleet,
    pub log: RawLog,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawLog {
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawServer {
    pub listen: Option<String>,
    pub listen_mode: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub admin_listen: Option<String>,
    pub allow_non_loopback: Option<bool>,
    pub max_body_bytes: Option<u64>,
    pub allow_unknown_commands: Option<bool>,
    pub default_app: Option<String>,
    pub shutdown_grace: Option<String>,
    pub allowed_hosts: Option<StringList>,
    pub max_connections: Option<u64>,
    pub worker_threads: Option<u64>,
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
pub(super) struct RawUpstream {
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<u64>,
    pub ca_file: Option<String>,
    pub max_retries: Option<u64>,
    pub retry_base_delay: Option<String>,
    pub deadline: Option<String>,
    pub proxy: Option<String>,
    pub no_proxy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
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
pub(super) struct RawCache {
    pub max_bytes: Option<u64>,
    /// Read element by element by [`array_of_tables`], never by serde: declared here so it is
    /// a known key.
    #[serde(default)]
    pub rules: Vec<RawCacheRule>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawCacheRule {
    pub command: Option<String>,
    pub enabled: Option<bool>,
    pub ttl: Option<String>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub invalidated_by: Option<Vec<String>>,
    /// "read" or "write": required for a command outside the catalogue.
    pub access: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
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
pub(super) struct RawQuota {
    pub command: Option<String>,
    pub per_second: Option<u64>,
}

/// `[fleet]`: without `redis_url`, fleet mode is off. `Debug` hides the URL's password.
#[derive(Default, Deserialize)]
pub(super) struct RawFleet {
    pub redis_url: Option<String>,
    pub expected_replicas: Option<u64>,
    pub fallback: Option<String>,
    pub shared_cache: Option<bool>,
    pub key_prefix: Option<String>,
    pub command_timeout: Option<String>,
    pub max_lateness: Option<String>,
}

impl fmt::Debug for RawFleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFleet")
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("expected_replicas", &self.expected_replicas)
            .field("fallback", &self.fallback)
            .field("shared_cache", &self.shared_cache)
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("max_lateness", &self.max_lateness)
            .finish()
    }
}

const SECTIONS: &[&str] = &[
    "server", "upstream", "apps", "cache", "throttle", "fleet", "log",
];

/// Merges the file and the environment overrides into one tree.
///
/// # Errors
/// [`ConfigError::Parse`] if `toml` is not TOML; the reason quotes no line of the file.
pub(super) fn merge(toml: &str, origin: &Path, env: &Env) -> Result<Table, ConfigError> {
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
    pub fn from_tree(tree: Table, findings: &mut Findings) -> Self {
        let mut raw = RawConfig::default();
        for (key, value) in tree {
            match key.as_str() {
                "server" => raw.server = section(findings, "server", value),
                "upstream" => raw.upstream = section(findings, "upstream", value),
                "apps" => {
                    let apps = table(findings, "apps", value, "a table of [apps.NAME] tables");
                    for (name, value) in apps.unwrap_or_default() {
                        let app = section(findings, &format!("apps.{name}"), value);
                        raw.apps.insert(name, app);
                    }
                }
                "cache" => {
                    let (cache, rules) = with_array(findings, "cache", "rules", value);
                    raw.cache = RawCache { rules, ..cache };
                }
                "throttle" => {
                    let (throttle, quotas) = with_array(findings, "throttle", "quotas", value);
                    raw.throttle = RawThrottle { quotas, ..throttle };
                }
                "fleet" => raw.fleet = section(findings, "fleet", value),
                "log" => raw.log = section(findings, "log", value),
                _ => unknown_key(findings, &key, &key, SECTIONS),
            }
        }
        raw
    }
}

/// Reports `full`, whose last part `key` is none of the `known` keys of its table.
fn unknown_key(findings: &mut Findings, full: &str, key: &str, known: &[&str]) {
    if key == "secret_key" {
        findings.problem(
            full,
            "a secret key is not accepted in the configuration; put the key in an env var \
             (secret_key_env) or a file (secret_key_file)",
        );
        return;
    }
    let mut message = "unknown key".to_owned();
    if let Some(near) = did_you_mean(key, known) {
        message.push_str(&format!("; did you mean `{near}`?"));
    }
    if !known.is_empty() {
        message.push_str(&format!(" (known: {})", known.join(", ")));
    }
    findings.problem(full, message);
}

/// Deserializes one table into `T`, reporting unknown keys and each wrongly typed value
/// under its own key.
fn section<T: DeserializeOwned + Default>(
    findings: &mut Findings,
    key: &str,
    value: ::config::Value,
) -> T {
    let table = table(findings, key, value, "a table");
    table.map_or_else(T::default, |table| fields(findings, key, table))
}

/// The table `value` holds; `None` (reported as not the `expected` shape) when it is
/// something else.
fn table(
    findings: &mut Findings,
    key: &str,
    value: ::config::Value,
    expected: &str,
) -> Option<Table> {
    findings.note_origin(key, &value);
    let table = value.into_table().ok();
    if table.is_none() {
        findings.problem(key, format!("expected {expected}"));
    }
    table
}

/// Deserializes `table` into `T`; a bad value is dropped (left to its default) and the rest
/// retried, so one type error does not hide the others.
fn fields<T: DeserializeOwned + Default>(findings: &mut Findings, key: &str, table: Table) -> T {
    let known = field_names::<T>();
    let mut kept = Table::new();
    for (name, value) in table {
        let full = format!("{key}.{name}");
        findings.note_origin(&full, &value);
        if known.contains(&name.as_str()) {
            kept.insert(name, value);
        } else {
            unknown_key(findings, &full, &name, known);
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
                        findings.problem(format!("{key}.{field}"), message)
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

/// A table holding the array of tables `array` (`[[key.array]]`): its other fields as `T`,
/// and the array's elements as `E`s.
fn with_array<T, E>(
    findings: &mut Findings,
    key: &str,
    array: &str,
    value: ::config::Value,
) -> (T, Vec<E>)
where
    T: DeserializeOwned + Default,
    E: DeserializeOwned + Default,
{
    let Some(mut table) = table(findings, key, value, "a table") else {
        return (T::default(), Vec::new());
    };
    let elements = table.remove(array);
    let fields = fields(findings, key, table);
    (
        fields,
        array_of_tables(findings, &format!("{key}.{array}"), elements),
    )
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
            let variable = env_var_name(key);
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
