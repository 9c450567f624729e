//! The validated configuration's types, its defaults, and the problems a load reports: what
//! the rest of the crate reads. Nothing here parses or checks; `raw` and `validate` do.
//!
//! Promise: no `Debug` or `Display` here prints a secret (app keys, the admin token, a Redis
//! password, the environment's values); they print where a secret came from, `<redacted>`,
//! or (in a Redis URL) `***`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

mod net;
pub use net::{EgressProxy, ListenAddr, DEFAULT_LISTEN_MODE};

use crate::region::Origins;
use crate::usersig::SecretKey;

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "TIM_GATEWAY";
/// Separates the prefix, the section and the keys of an environment override.
pub const ENV_SEPARATOR: &str = "__";
/// The variable an app's secret key is read from when it sets neither `secret_key_file` nor
/// `secret_key_env`.
pub const DEFAULT_SECRET_KEY_ENV: &str = "TIM_GATEWAY_SECRET_KEY";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:18460";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:18461";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Upper bound of `server.max_body_bytes`.
pub const MAX_BODY_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// Below Kubernetes' default 30 s `terminationGracePeriodSeconds`, so the drain ends before
/// the kubelet's SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longer than Tencent's own 3 s backend timeout (reference §1), so its answer can arrive.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 32;
pub const DEFAULT_MAX_RETRIES: u32 = 2;
pub const DEFAULT_RETRY_BASE_DELAY: Duration = Duration::from_millis(100);
/// Room for one full `DEFAULT_REQUEST_TIMEOUT` after a full `DEFAULT_MAX_WAIT` in the
/// throttle queue. A longer `request_timeout` raises the default deadline to match it.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);
pub const DEFAULT_IDENTIFIER: &str = "administrator";
/// Tencent advises admin UserSigs live at least 24 h (reference §3).
pub const DEFAULT_USERSIG_LIFETIME: Duration = Duration::from_secs(86_400);
/// 64 MiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_SAFETY_MARGIN: f64 = 0.05;
pub const DEFAULT_BURST: f64 = 0.05;
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(2);
pub const DEFAULT_MAX_WAITERS: usize = 1024;
/// Calls per second for a command whose quota the catalogue does not know; the chatbot APIs'
/// documented limit (reference §4).
pub const DEFAULT_QUOTA: u32 = 200;
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// One gateway: the share a cut-off gateway keeps is the budget divided by this, so it must be
/// raised to the real count for more than one (design fleet.md §4.4).
pub const DEFAULT_EXPECTED_REPLICAS: u32 = 1;
pub const DEFAULT_FALLBACK: Fallback = Fallback::Share;
pub const DEFAULT_SHARED_CACHE: bool = true;
/// Isolates environments (staging, prod) sharing one Redis (design fleet.md §4.2).
pub const DEFAULT_KEY_PREFIX: &str = "tim";
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(50);
pub const DEFAULT_MAX_LATENESS: Duration = Duration::from_millis(25);

/// A snapshot of environment variables: the process's, or a map in tests.
///
/// Holds secret values (the app keys), so `Debug` prints only how many variables it holds.
#[derive(Clone, Default)]
pub struct Env {
    pub(super) vars: HashMap<String, String>,
    /// `check-config --no-secrets`: secret keys are not read, only where they come from is
    /// checked (an absent file or variable is not a problem).
    pub(super) skip_secrets: bool,
}

impl Env {
    /// The process environment; variables whose name or value is not UTF-8 are skipped.
    pub fn from_process() -> Env {
        let vars = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        Env {
            vars,
            skip_secrets: false,
        }
    }

    pub fn from_map(map: HashMap<String, String>) -> Env {
        Env {
            vars: map,
            skip_secrets: false,
        }
    }

    /// The same variables, but secret keys are not read (`check-config --no-secrets`).
    pub fn without_secrets(self) -> Env {
        Env {
            skip_secrets: true,
            ..self
        }
    }

    pub fn skips_secrets(&self) -> bool {
        self.skip_secrets
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
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
    pub cache: CacheConfig,
    pub throttle: ThrottleConfig,
    /// Fleet mode: `Some` when `fleet.redis_url` is set, `None` (each gateway on its own) when
    /// not.
    pub fleet: Option<FleetConfig>,
    pub log: LogConfig,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The `tracing` filter for the log (and whether the access log, at `info`, is written);
    /// `RUST_LOG`, when set, takes its place. Changed by a reload without a restart.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
        }
    }
}

/// The client-facing and admin listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: ListenAddr,
    /// Permissions of a unix-socket `listen` (e.g. 0o660); unused for TCP.
    pub listen_mode: u32,
    /// `server.tls_cert_file` and `server.tls_key_file` (PEM): the client listener speaks
    /// HTTPS with them (checked to load; read again when they change).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub admin_listen: SocketAddr,
    /// Without it, a non-loopback `listen` or `admin_listen` is a problem: the client port signs
    /// every request as the app admin, so whoever reaches it holds admin power.
    pub allow_non_loopback: bool,
    /// Largest client request body; 1 B ..= 64 MiB.
    pub max_body_bytes: usize,
    /// When false, commands outside the catalogue get 404 instead of being forwarded.
    pub allow_unknown_commands: bool,
    /// How long in-flight requests may run after SIGTERM before they are cut; 0 < x ≤ 10 min.
    pub shutdown_grace: Duration,
    /// Host names (`*.domain` patterns, IP addresses) accepted in `Host` and `Origin` besides
    /// loopback names and the listener's own address; lowercase (DNS-rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// Client connections held open at once; `None`: derived from the open-files limit.
    pub max_connections: Option<usize>,
    /// Worker threads of `serve`'s runtime; 1 ..= 1024. `None`: one per CPU the process may
    /// use ([`available_cpus`]); read [`ServerConfig::effective_worker_threads`].
    pub worker_threads: Option<usize>,
    /// Where the admin bearer token was read from.
    pub admin_token_file: Option<PathBuf>,
    /// Required by `POST /cache/purge` when set (always set off loopback).
    pub admin_token: Option<AdminToken>,
}

impl ServerConfig {
    /// The worker threads `serve`'s runtime gets: `worker_threads`, else [`available_cpus`].
    pub fn effective_worker_threads(&self) -> usize {
        self.worker_threads.unwrap_or_else(available_cpus)
    }
}

/// The CPUs this process may use, at least 1: `std::thread::available_parallelism`. Its
/// documentation (section "Limitations", Linux) says it counts the calling thread's affinity
/// mask (`sched_getaffinity`: `taskset`, cpusets) capped by the cgroup v1 or v2 CPU quota (a
/// Kubernetes CPU limit), and overcounts only where those cannot be read (a sandbox hiding
/// the cgroup filesystem). std recomputes it on every call: call it at startup, not per
/// request. tokio's default worker count is this same number (unless `TOKIO_WORKER_THREADS`).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// The admin listener's bearer token. Printed only as `<redacted>`; compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken(token.to_owned())
    }

    /// Whether `presented` is this token; the time taken does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        let (a, b) = (Sha256::digest(self.0.as_bytes()), Sha256::digest(presented));
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// How we talk to Tencent.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// One upstream call; should exceed Tencent's 3 s backend timeout (reference §1).
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// 0 disables connection reuse.
    pub pool_max_idle_per_host: usize,
    /// An extra CA (PEM) to trust besides the bundled roots.
    pub ca_file: Option<PathBuf>,
    /// The contents of `ca_file`, checked to hold at least one certificate.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Retries of a read after Tencent's internal errors (10002, 70169, 70500, 60008, 60013,
    /// 60014; reference §6), on top of the first call; 0 ..= 5.
    pub max_retries: u32,
    /// Pause before the first retry, doubled for each further one (with jitter); 1 ms ..= 10 s.
    pub retry_base_delay: Duration,
    /// The whole client request: throttle waits, every call and every retry. At least
    /// `request_timeout`; when unset, 15 s or `request_timeout` if that is longer.
    pub deadline: Duration,
    /// An HTTP proxy that calls to Tencent go through (a CONNECT tunnel): `upstream.proxy`,
    /// else `HTTPS_PROXY` / `https_proxy` from the environment.
    pub proxy: Option<EgressProxy>,
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
            .field("max_retries", &self.max_retries)
            .field("retry_base_delay", &self.retry_base_delay)
            .field("deadline", &self.deadline)
            .field("proxy", &self.proxy)
            .finish()
    }
}

/// The response cache, as the file configures it. The catalogue's built-in rules (such as the
/// one for `get_all_robots`) are not here: the cache module merges these rules over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Upper bound of the cache's size in bytes; 1 KiB ..= 16 GiB.
    pub max_bytes: u64,
    /// From `[[cache.rules]]`, in file order; at most one per command.
    pub rules: Vec<CacheRule>,
}

/// How one read command is cached; replaces the catalogue's default for that command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    /// `service/command`, a read in the catalogue.
    pub command: String,
    /// False turns caching off for a command the catalogue caches by default.
    pub enabled: bool,
    /// How long an answer is fresh; 0 < x ≤ 1 day when enabled. Zero when the rule is
    /// disabled and sets none.
    pub ttl: Duration,
    /// After `ttl`, how long a stale answer is still served while one background call
    /// refreshes it; ≤ 1 day, 0 = off.
    pub stale_while_revalidate: Duration,
    /// After `ttl`, how long a stale answer is served when the upstream fails or limits us;
    /// ≤ 7 days, 0 = off.
    pub stale_if_error: Duration,
    /// Writes (`service/command`, in the catalogue) whose success drops this command's cached
    /// answers for the same app.
    /// Default: the catalogue's list for the command (README, "Tencent's commands").
    pub invalidated_by: Vec<String>,
}

/// The per-(app, command) upstream budget.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleConfig {
    /// Fraction of Tencent's quota never used, so clock skew and other callers do not push us
    /// over it; 0.0 ..= 0.5.
    pub safety_margin: f64,
    /// Fraction of the per-second budget that may go out at once; 0.0 ..= 0.5.
    pub burst: f64,
    /// Longest a request waits in the FIFO for a permit before 429; 0 ..= 60 s, 0 = never wait.
    pub max_wait: Duration,
    /// Longest FIFO per (app, command); past it requests get 429 at once; 0 ..= 1,000,000.
    pub max_waiters: usize,
    /// Calls per second for commands whose quota the catalogue does not know; 1 ..= 100,000.
    pub default_quota: u32,
    /// From `[[throttle.quotas]]`, in file order; at most one per command.
    pub quotas: Vec<QuotaOverride>,
    /// Pause of a command after Tencent's 60007, 60018 or 60019 (reference §6), doubled per
    /// repeat.
    pub backoff_base: Duration,
    /// Upper bound of that pause; at least `backoff_base`.
    pub backoff_max: Duration,
}

/// A per-second quota that replaces the catalogue's (or the default) for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaOverride {
    /// `service/command`, in the catalogue.
    pub command: String,
    /// Calls per second; 1 ..= 100,000.
    pub per_second: u32,
}

/// Fleet mode: every gateway sharing one Redis keeps one quota per (SDKAppID, command) and
/// one cache (design fleet.md §4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// Where the shared state lives; printed with its password as `***`.
    pub redis_url: RedisUrl,
    /// Upper bound of the gateways sharing the quota, rollout surge included; 1 ..= 1000. A
    /// gateway cut off from Redis keeps `budget / expected_replicas`.
    pub expected_replicas: u32,
    /// What a gateway does while Redis cannot be reached.
    pub fallback: Fallback,
    /// Redis as the second cache tier behind the in-process cache.
    pub shared_cache: bool,
    /// Starts every Redis key and channel; `[A-Za-z0-9_-]{1,32}`.
    pub key_prefix: String,
    /// Reservations and shared-cache reads slower than this count as failures; 1 ms ..= 5 s.
    pub command_timeout: Duration,
    /// A reservation whose reply took longer is thrown away; it also scales the fleet rate.
    /// 1 ms ..= 1 s, at most `command_timeout`.
    pub max_lateness: Duration,
}

/// What a gateway does while it cannot reach Redis (design fleet.md §4.5). Failing open is
/// not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// After a short fail-closed guard, a local budget of `budget / expected_replicas`.
    Share,
    /// No upstream calls without Redis: stale answers where allowed, 429 otherwise.
    Closed,
}

impl Fallback {
    /// The configuration names, in the order they are listed to users.
    pub const NAMES: [&'static str; 2] = ["share", "closed"];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Share => "share",
            Fallback::Closed => "closed",
        }
    }
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked Redis URL (`redis://`, `rediss://` or `redis+unix://`). `Debug` and `Display`
/// print it with any password as `***`; only [`RedisUrl::expose`] gives the URL itself, for
/// the Redis client.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Wraps a URL that `validate` has checked.
    pub(super) fn new(url: String) -> RedisUrl {
        RedisUrl(url)
    }

    /// The URL with its password, for the Redis client only: never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", redact_url(&self.0))
    }
}

/// `text` with everything that may be a password replaced by `***`, valid URL or not: the part
/// of the user info after its first `:` (all of it when it has no `:`, a password written
/// without one), and every query value but `db` and `user` (`redis+unix://` takes `pass=`).
/// The user info runs to the last `@`, so a password holding an unencoded `/`, `?` or `#` is
/// hidden too; in `redis+unix:///path` the `@` belongs to the path.
pub(super) fn redact_url(text: &str) -> String {
    let (scheme, rest) = text
        .find("://")
        .map_or(("", text), |at| text.split_at(at + 3));
    let is_unix_path = scheme == "redis+unix://" && rest.starts_with('/');
    let mut out = scheme.to_owned();
    let rest = match rest.rfind('@') {
        Some(at) if !is_unix_path => {
            match rest[..at].split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***")),
                None => out.push_str("***"),
            }
            &rest[at..]
        }
        _ => rest,
    };
    let Some((path, query)) = rest.split_once('?') else {
        out.push_str(rest);
        return out;
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("db" | "user", _)) => pair.to_owned(),
            Some((name, _)) => format!("{name}=***"),
            None => "***".to_owned(),
        })
        .collect();
    out.push_str(&format!("{path}?{}", pairs.join("&")));
    out
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
    /// Dotted path such as `apps.main.region` or `cache.rules[0].ttl`; a section or
    /// `apps.NAME` for problems of a whole table.
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
