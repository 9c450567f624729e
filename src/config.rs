//! Configuration: a TOML file layered with `TIM_GATEWAY__SECTION__KEY` environment overrides,
//! parsed once into typed values.
//!
//! Two stages, as STYLE convention 4 asks. The `config` crate merges the file and the
//! environment into one tree, which becomes a permissive `RawConfig` (every leaf optional,
//! durations, addresses and regions still strings). Validation then turns it into a
//! [`Config`], collecting every problem at once rather than stopping at the first.
//!
//! Promises:
//! - [`ConfigError::Invalid`] lists every problem of one run, sorted by key, at most one per key
//!   (a value of the wrong type is reported once, not again as "invalid").
//! - No message, `Debug` or `Display` ever carries a secret key: the key is read only from an
//!   environment variable or a file, and only their *names* are ever printed.
//! - Warnings (allowed but questionable values) never fail a load; they come back in
//!   [`Loaded::warnings`], with the same shape as problems.
//!
//! Environment overrides: `TIM_GATEWAY__SERVER__LISTEN=127.0.0.1:8081` sets `server.listen`,
//! `TIM_GATEWAY__APPS__MAIN__SDKAPPID=1400000001` sets `apps.main.sdkappid` (creating the app
//! if the file has none by that name). The `config` crate lowercases the whole variable name,
//! so an override reaches only an app whose name is lowercase and has no `__`. Values stay
//! strings and are converted by the field's type (numbers, booleans `true`/`false`/`1`/`0`),
//! so `IDENTIFIER=007` stays `"007"`. An empty value clears an optional `region`, `endpoint`,
//! `ca_file`, `secret_key_file` or `default_app` from the file. Variables with a single `_`
//! after the prefix, such as `TIM_GATEWAY_SECRET_KEY`, are not configuration keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserialize;

use crate::region::{Origin, Origins, Region};
use crate::usersig::SecretKey;

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "TIM_GATEWAY";
/// Separates the prefix, the section and the keys of an environment override.
pub const ENV_SEPARATOR: &str = "__";
/// The variable an app's secret key is read from when it sets neither `secret_key_file` nor
/// `secret_key_env`.
pub const DEFAULT_SECRET_KEY_ENV: &str = "TIM_GATEWAY_SECRET_KEY";
/// The configuration `tim-gateway demo` runs with; the demo overrides the endpoint, the CA and
/// the secret key at runtime.
pub const DEMO_TOML: &str = include_str!("../config/demo.toml");

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Upper bound of `server.max_body_bytes`.
pub const MAX_BODY_BYTES_LIMIT: usize = 64 * 1024 * 1024;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longer than Tencent's own 3 s backend timeout (reference §1), so its answer can arrive.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 32;
pub const DEFAULT_IDENTIFIER: &str = "administrator";
/// Tencent advises admin UserSigs live at least 24 h (reference §3).
pub const DEFAULT_USERSIG_LIFETIME: Duration = Duration::from_secs(86_400);

/// Tencent's backend timeout (reference §1); a request timeout at or below it gets a warning.
const TENCENT_BACKEND_TIMEOUT: Duration = Duration::from_secs(3);
const MIN_USERSIG_LIFETIME: Duration = Duration::from_secs(10);
/// Shortest lifetime seen in real SDKs (reference §3); below it we warn.
const ADVISED_MIN_USERSIG_LIFETIME: Duration = Duration::from_secs(300);
/// Longest lifetime seen in real SDKs: 180 days (reference §3).
const MAX_USERSIG_LIFETIME: Duration = Duration::from_secs(180 * 86_400);
const MAX_IDENTIFIER_BYTES: usize = 32;
const MAX_APP_NAME_CHARS: usize = 64;
/// A CA bundle or key file larger than this is a wrong path, not a certificate or a key.
const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
const PEM_CERTIFICATE_MARKER: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// A snapshot of environment variables: the process's, or a map in tests.
///
/// Holds secret values (the app keys), so `Debug` prints only how many variables it holds.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The process environment; variables whose name or value is not UTF-8 are skipped.
    pub fn from_process() -> Env {
        let vars = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        Env { vars }
    }

    pub fn from_map(map: HashMap<String, String>) -> Env {
        Env { vars: map }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The `TIM_GATEWAY__…` overrides as a `config` source. Filtering here (the crate filters
    /// too) keeps single-underscore variables such as `TIM_GATEWAY_SECRET_KEY` out entirely.
    fn overrides(&self) -> ::config::Environment {
        let pattern = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
        let vars: ::config::Map<String, String> = self
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
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Env(<{} variables>)", self.vars.len())
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    /// Sorted by name.
    pub apps: Vec<AppConfig>,
    /// Index into `apps` of the app that `/v4/…` (without `/apps/{app}`) goes to.
    pub default_app: usize,
}

/// The client-facing and admin listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Without it, a non-loopback `listen` or `admin_listen` is a problem: the client port signs
    /// every request as the app admin, so whoever reaches it holds admin power.
    pub allow_non_loopback: bool,
    /// Largest client request body; 1 B ..= 64 MiB.
    pub max_body_bytes: usize,
    /// When false, commands outside the catalogue get 404 instead of being forwarded.
    pub allow_unknown_commands: bool,
}

/// How we talk to Tencent.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// Whole-request timeout; should exceed Tencent's 3 s backend timeout (reference §1).
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// 0 disables connection reuse.
    pub pool_max_idle_per_host: usize,
    /// An extra CA (PEM) to trust besides the bundled roots.
    pub ca_file: Option<PathBuf>,
    /// The contents of `ca_file`, checked to hold at least one certificate.
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("ca_file", &self.ca_file)
            .field(
                "extra_ca_pem",
                &self
                    .extra_ca_pem
                    .as_ref()
                    .map(|pem| format!("<{} bytes>", pem.len())),
            )
            .finish()
    }
}

/// One Tencent Cloud Chat application (one SDKAppID) the gateway signs for.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The `NAME` of `[apps.NAME]`; `[A-Za-z0-9_-]{1,64}`; used in `/apps/{app}/…` and as a
    /// metric label.
    pub name: String,
    pub sdkappid: u64,
    /// The app admin account requests are signed as (reference §1).
    pub identifier: String,
    pub origins: Origins,
    pub secret_key: SecretKey,
    /// Where `secret_key` came from, for logs and `check-config`.
    pub secret_key_source: KeySource,
    /// Lifetime of the admin UserSigs we mint; whole seconds, 10 s ..= 180 days.
    pub usersig_lifetime: Duration,
}

/// Where an app's secret key was read from. Printing it names the file or variable only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "file {}", path.display()),
            KeySource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// A configuration problem or warning: which key, and what is wrong with it. Warnings reuse
/// this type (they are returned apart, in [`Loaded::warnings`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Dotted path such as `apps.main.region`; a section or `apps.NAME` for problems of a whole
    /// table.
    pub key: String,
    /// Never contains a secret value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// The file is not TOML. The reason names line and column, without echoing the line (it
    /// could hold a secret someone pasted in).
    #[error("config file {path} is not valid TOML: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{}", list_problems(.0))]
    Invalid(Vec<Problem>),
}

fn list_problems(problems: &[Problem]) -> String {
    let mut text = match problems.len() {
        1 => "the configuration has 1 problem:".to_owned(),
        n => format!("the configuration has {n} problems:"),
    };
    for problem in problems {
        text.push_str("\n  ");
        text.push_str(&problem.to_string());
    }
    text
}

/// A valid configuration and the warnings it raised.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Allowed but questionable settings, sorted by key; log them at startup.
    pub warnings: Vec<Problem>,
}

impl Config {
    /// Load file + env and validate, collecting every problem at once.
    ///
    /// Relative `ca_file` and `secret_key_file` paths are relative to the working directory,
    /// not to the config file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Parse`] if it is not
    /// TOML, [`ConfigError::Invalid`] with every problem otherwise.
    pub fn load(path: &Path, env: &Env) -> Result<Loaded, ConfigError> {
        let toml = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::build(&toml, path, env)
    }

    /// Same from a TOML string (tests, demo).
    ///
    /// # Errors
    /// As [`Config::load`], naming the file `<string>`.
    pub fn from_toml_str(toml: &str, env: &Env) -> Result<Loaded, ConfigError> {
        Self::build(toml, Path::new("<string>"), env)
    }

    /// The index in `apps` of the app called `name` (exact match).
    pub fn app_index(&self, name: &str) -> Option<usize> {
        self.apps.iter().position(|app| app.name == name)
    }

    fn build(toml: &str, origin: &Path, env: &Env) -> Result<Loaded, ConfigError> {
        let merged = ::config::Config::builder()
            .add_source(::config::File::from_str(toml, ::config::FileFormat::Toml))
            .add_source(env.overrides())
            .build()
            .map_err(|e| ConfigError::Parse {
                path: origin.to_owned(),
                reason: redact_key_like(&redact_snippet(&e.to_string())),
            })?;
        let tree = ::config::Source::collect(&merged).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            reason: e.to_string(),
        })?;

        let mut findings = Findings::default();
        let raw = RawConfig::from_tree(tree, &mut findings);
        let config = raw.validate(env, &mut findings);
        findings.finish(config)
    }
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

impl fmt::Display for Config {
    /// The effective configuration, one `key = value` per line, for `check-config`. Secret
    /// keys appear only as where they were read from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.server;
        writeln!(f, "server.listen = {}", s.listen)?;
        writeln!(f, "server.admin_listen = {}", s.admin_listen)?;
        writeln!(f, "server.allow_non_loopback = {}", s.allow_non_loopback)?;
        writeln!(f, "server.max_body_bytes = {}", s.max_body_bytes)?;
        writeln!(
            f,
            "server.allow_unknown_commands = {}",
            s.allow_unknown_commands
        )?;
        let default_app = self.apps.get(self.default_app).map_or("?", |a| &a.name);
        writeln!(f, "server.default_app = {default_app}")?;
        let u = &self.upstream;
        let human = humantime::format_duration;
        writeln!(f, "upstream.connect_timeout = {}", human(u.connect_timeout))?;
        writeln!(f, "upstream.request_timeout = {}", human(u.request_timeout))?;
        writeln!(
            f,
            "upstream.pool_idle_timeout = {}",
            human(u.pool_idle_timeout)
        )?;
        writeln!(
            f,
            "upstream.pool_max_idle_per_host = {}",
            u.pool_max_idle_per_host
        )?;
        match &u.ca_file {
            Some(path) => writeln!(f, "upstream.ca_file = {}", path.display())?,
            None => writeln!(f, "upstream.ca_file = (none: bundled roots only)")?,
        }
        for app in &self.apps {
            let key = format!("apps.{}", app.name);
            writeln!(f, "{key}.sdkappid = {}", app.sdkappid)?;
            writeln!(f, "{key}.identifier = {}", app.identifier)?;
            match &app.origins.backup {
                Some(backup) => writeln!(
                    f,
                    "{key}.origin = {} (backup {backup})",
                    app.origins.primary
                )?,
                None => writeln!(f, "{key}.origin = {}", app.origins.primary)?,
            }
            writeln!(
                f,
                "{key}.secret_key = <redacted, from {}>",
                app.secret_key_source
            )?;
            writeln!(
                f,
                "{key}.usersig_lifetime = {}",
                human(app.usersig_lifetime)
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1: the merged tree → RawConfig, reporting unknown keys and wrongly typed values.
// ---------------------------------------------------------------------------------------------

/// The configuration as written: everything optional, nothing interpreted yet. The buffer
/// between the file format users write and the types the gateway uses.
#[derive(Debug, Default)]
struct RawConfig {
    server: RawServer,
    upstream: RawUpstream,
    /// Keyed by app name; a `BTreeMap` so apps come out sorted whatever order the file used.
    apps: BTreeMap<String, RawApp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    allow_non_loopback: Option<bool>,
    max_body_bytes: Option<u64>,
    allow_unknown_commands: Option<bool>,
    default_app: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    pool_idle_timeout: Option<String>,
    pool_max_idle_per_host: Option<u64>,
    ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    sdkappid: Option<u64>,
    identifier: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    secret_key_file: Option<String>,
    secret_key_env: Option<String>,
    usersig_lifetime: Option<String>,
}

const SECTIONS: &[&str] = &["server", "upstream", "apps"];

impl RawConfig {
    fn from_tree(tree: ::config::Map<String, ::config::Value>, findings: &mut Findings) -> Self {
        let mut raw = RawConfig::default();
        for (key, value) in tree {
            match key.as_str() {
                "server" => raw.server = findings.section("server", value),
                "upstream" => raw.upstream = findings.section("upstream", value),
                "apps" => raw.apps = findings.apps(value),
                _ => findings.unknown_key("", &key, SECTIONS),
            }
        }
        raw
    }
}

/// Problems and warnings found so far, plus which keys were set by the environment (so a
/// problem can say which variable to fix).
#[derive(Default)]
struct Findings {
    problems: BTreeMap<String, String>,
    warnings: BTreeMap<String, String>,
    from_env: BTreeSet<String>,
}

impl Findings {
    /// Records a problem, unless `key` already has one (its first problem is the root cause).
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems
            .entry(key.into())
            .or_insert_with(|| message.into());
    }

    fn warning(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings
            .entry(key.into())
            .or_insert_with(|| message.into());
    }

    /// Whether `key` already has a problem (such as a value of the wrong type, dropped).
    fn has_problem(&self, key: &str) -> bool {
        self.problems.contains_key(key)
    }

    /// Remembers that the environment set `key`. Only environment values carry an origin:
    /// the file is read from a string, and tables the overrides create have none.
    fn note_origin(&mut self, key: &str, value: &::config::Value) {
        if value.origin().is_some() {
            self.from_env.insert(key.to_owned());
        }
    }

    fn unknown_key(&mut self, section: &str, key: &str, known: &[&str]) {
        let full = join(section, key);
        if key == "secret_key" {
            self.problem(
                full,
                "a secret key is not accepted in the configuration; put the key in an env var \
                 (secret_key_env) or a file (secret_key_file)",
            );
            return;
        }
        let mut message = "unknown key".to_owned();
        if let Some(near) = known.iter().min_by_key(|k| edit_distance(k, key)) {
            if edit_distance(near, key) <= 2 || near.eq_ignore_ascii_case(key) {
                message.push_str(&format!("; did you mean `{near}`?"));
            }
        }
        if !known.is_empty() {
            message.push_str(&format!(" (known: {})", known.join(", ")));
        }
        self.problem(full, message);
    }

    /// Deserializes one table into `T`, reporting unknown keys and each wrongly typed value
    /// under its own key; a bad value is dropped (left to its default) and the rest retried,
    /// so one type error does not hide the others.
    fn section<T: DeserializeOwned + Default>(&mut self, key: &str, value: ::config::Value) -> T {
        self.note_origin(key, &value);
        let table = match value.into_table() {
            Ok(table) => table,
            Err(_) => {
                self.problem(key, "expected a table");
                return T::default();
            }
        };
        let fields = field_names::<T>();
        let mut kept = ::config::Map::new();
        for (name, value) in table {
            self.note_origin(&join(key, &name), &value);
            if fields.contains(&name.as_str()) {
                kept.insert(name, value);
            } else {
                self.unknown_key(key, &name, fields);
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
                            self.problem(join(key, &field), message)
                        }
                        _ => {
                            self.problem(key, message);
                            return T::default();
                        }
                    }
                }
            }
        }
    }

    fn apps(&mut self, value: ::config::Value) -> BTreeMap<String, RawApp> {
        self.note_origin("apps", &value);
        let table = match value.into_table() {
            Ok(table) => table,
            Err(_) => {
                self.problem("apps", "expected a table of [apps.NAME] tables");
                return BTreeMap::new();
            }
        };
        table
            .into_iter()
            .map(|(name, value)| {
                let raw = self.section(&format!("apps.{name}"), value);
                (name, raw)
            })
            .collect()
    }

    fn finish(self, config: Option<Config>) -> Result<Loaded, ConfigError> {
        let to_problems = |map: BTreeMap<String, String>, from_env: &BTreeSet<String>| {
            map.into_iter()
                .map(|(key, mut message)| {
                    if from_env.contains(&key) {
                        message.push_str(&format!(" (set by {})", env_var_name(&key)));
                    }
                    Problem {
                        key: redact_key_like(&key),
                        message: redact_key_like(&message),
                    }
                })
                .collect::<Vec<_>>()
        };
        let problems = to_problems(self.problems, &self.from_env);
        match config {
            Some(config) if problems.is_empty() => Ok(Loaded {
                config,
                warnings: to_problems(self.warnings, &self.from_env),
            }),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

/// The variable that overrides `key`, as an operator would write it.
fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{ENV_SEPARATOR}{}",
        key.replace('.', ENV_SEPARATOR).to_ascii_uppercase()
    )
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
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
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

// ---------------------------------------------------------------------------------------------
// Stage 2: RawConfig → Config, every value checked, defaults filled in.
// ---------------------------------------------------------------------------------------------

impl RawConfig {
    /// Checks every value, recording each problem; the `Config` is only meaningful (and only
    /// returned by `Findings::finish`) when no problem was found.
    fn validate(self, env: &Env, findings: &mut Findings) -> Option<Config> {
        let RawConfig {
            server: mut raw_server,
            upstream: raw_upstream,
            apps: raw_apps,
        } = self;
        // Resolved last, once we know which apps are valid.
        let default_app = raw_server.default_app.take();
        let server = validate_server(raw_server, findings);
        let upstream = validate_upstream(raw_upstream, findings);
        check_app_names(&raw_apps, findings);
        let app_names: Vec<String> = raw_apps.keys().cloned().collect();
        let mut apps = Vec::with_capacity(raw_apps.len());
        let mut all_apps_valid = true;
        for (name, raw) in raw_apps {
            match validate_app(name, raw, env, findings) {
                Some(app) => apps.push(app),
                None => all_apps_valid = false,
            }
        }
        warn_shared_key_sources(&apps, findings);
        let default_app = choose_default_app(default_app, &app_names, &apps, findings)?;
        all_apps_valid.then_some(Config {
            server,
            upstream,
            apps,
            default_app,
        })
    }
}

fn validate_server(raw: RawServer, findings: &mut Findings) -> ServerConfig {
    let allow_non_loopback = raw.allow_non_loopback.unwrap_or(false);
    let listen = listen_addr(
        findings,
        "server.listen",
        raw.listen,
        DEFAULT_LISTEN,
        allow_non_loopback,
        "it hands out admin power: every request through it is signed as the app admin",
    );
    let admin_listen = listen_addr(
        findings,
        "server.admin_listen",
        raw.admin_listen,
        DEFAULT_ADMIN_LISTEN,
        allow_non_loopback,
        "it hands out admin power: it can purge the cache and drain the gateway",
    );
    if listen == admin_listen && listen.port() != 0 {
        findings.problem(
            "server.admin_listen",
            format!("{admin_listen} is also server.listen; give the admin port its own address"),
        );
    }
    let max_body_bytes = match raw.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(bytes) => match usize::try_from(bytes) {
            Ok(bytes) if (1..=MAX_BODY_BYTES_LIMIT).contains(&bytes) => bytes,
            _ => {
                findings.problem(
                    "server.max_body_bytes",
                    format!("{bytes} is out of range; give 1 ..= {MAX_BODY_BYTES_LIMIT} (64 MiB)"),
                );
                DEFAULT_MAX_BODY_BYTES
            }
        },
    };
    ServerConfig {
        listen,
        admin_listen,
        allow_non_loopback,
        max_body_bytes,
        allow_unknown_commands: raw.allow_unknown_commands.unwrap_or(false),
    }
}

fn listen_addr(
    findings: &mut Findings,
    key: &str,
    raw: Option<String>,
    default: &str,
    allow_non_loopback: bool,
    why_loopback: &str,
) -> SocketAddr {
    let fallback: SocketAddr = default.parse().expect("default addresses are valid");
    let Some(text) = raw else {
        return fallback;
    };
    let addr: SocketAddr = match text.trim().parse() {
        Ok(addr) => addr,
        Err(_) => {
            findings.problem(
                key,
                format!(
                    "{text:?} is not an IP address and port such as {default} \
                     (host names are not resolved)"
                ),
            );
            return fallback;
        }
    };
    if !allow_non_loopback && !addr.ip().to_canonical().is_loopback() {
        findings.problem(
            key,
            format!(
                "{addr} is not a loopback address, and {why_loopback}; keep 127.0.0.1, or set \
                 server.allow_non_loopback = true if the network in front restricts who can \
                 reach it"
            ),
        );
    }
    addr
}

fn validate_upstream(raw: RawUpstream, findings: &mut Findings) -> UpstreamConfig {
    let connect_timeout = duration(
        findings,
        "upstream.connect_timeout",
        raw.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    let request_timeout = duration(
        findings,
        "upstream.request_timeout",
        raw.request_timeout,
        DEFAULT_REQUEST_TIMEOUT,
    );
    if request_timeout <= TENCENT_BACKEND_TIMEOUT {
        findings.warning(
            "upstream.request_timeout",
            format!(
                "{} is not longer than Tencent's own 3 s backend timeout (reference §1), so \
                 answers Tencent would still give are cut off; 10s is the default",
                humantime::format_duration(request_timeout)
            ),
        );
    }
    let pool_idle_timeout = duration(
        findings,
        "upstream.pool_idle_timeout",
        raw.pool_idle_timeout,
        DEFAULT_POOL_IDLE_TIMEOUT,
    );
    let pool_max_idle_per_host = match raw.pool_max_idle_per_host {
        None => DEFAULT_POOL_MAX_IDLE_PER_HOST,
        Some(n) => usize::try_from(n).unwrap_or_else(|_| {
            findings.problem(
                "upstream.pool_max_idle_per_host",
                format!("{n} is too large"),
            );
            DEFAULT_POOL_MAX_IDLE_PER_HOST
        }),
    };
    if pool_max_idle_per_host == 0 {
        findings.warning(
            "upstream.pool_max_idle_per_host",
            "0 disables keep-alive reuse: every upstream call pays a TCP and TLS handshake \
             (Tencent recommends a pool, reference §1)",
        );
    }
    let ca_file = non_empty(raw.ca_file).map(PathBuf::from);
    let extra_ca_pem = ca_file.as_deref().and_then(|path| read_ca(path, findings));
    UpstreamConfig {
        connect_timeout,
        request_timeout,
        pool_idle_timeout,
        pool_max_idle_per_host,
        ca_file,
        extra_ca_pem,
    }
}

fn read_ca(path: &Path, findings: &mut Findings) -> Option<Vec<u8>> {
    const KEY: &str = "upstream.ca_file";
    match read_capped(path, MAX_CA_FILE_BYTES) {
        Err(e) => {
            findings.problem(KEY, format!("cannot read {}: {e}", path.display()));
            None
        }
        Ok(pem) if !contains(&pem, PEM_CERTIFICATE_MARKER) => {
            findings.problem(
                KEY,
                format!(
                    "{} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line)",
                    path.display()
                ),
            );
            None
        }
        Ok(pem) => Some(pem),
    }
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

/// Each SDKAppID has its own secret key, so two apps reading one source is likely a slip.
fn warn_shared_key_sources(apps: &[AppConfig], findings: &mut Findings) {
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
fn choose_default_app(
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

/// A humantime duration such as `5s`, `250ms` or `24h`; zero is refused.
fn duration(
    findings: &mut Findings,
    key: &str,
    raw: Option<String>,
    default: Duration,
) -> Duration {
    let Some(text) = raw else {
        return default;
    };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => {
            findings.problem(key, format!("{text:?} is zero; give a positive duration"));
            default
        }
        Ok(d) => d,
        Err(e) => {
            findings.problem(
                key,
                format!(
                    "{text:?} is not a duration ({e}); write e.g. \"5s\", \"250ms\" or \"24h\""
                ),
            );
            default
        }
    }
}

/// Whether `text` is shaped like a Tencent secret key (64 hex characters, reference §3) rather
/// than a path or a variable name: 32 or more hex digits and nothing else.
fn looks_like_key(text: &str) -> bool {
    let text = text.trim();
    text.len() >= 32 && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// Replaces every run of 32 or more hex digits with `<redacted>`, so a key pasted into the
/// wrong field is not echoed by a message that quotes the field's value.
fn redact_key_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 32 {
            out.push_str("<redacted>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// An empty string counts as unset, so an environment override can clear a file's value.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// Reads at most `limit` bytes, failing beyond that (a wrong path such as `/dev/zero` must not
/// hang startup).
fn read_capped(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests;
