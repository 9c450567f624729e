//! Stage 2: [`RawConfig`] → [`Config`], every value checked, defaults filled in.
//!
//! Promises: every problem of a run is recorded in [`Findings`], at most one per key (the
//! first is the root cause); a `Config` comes out only when there is none. A value that was
//! dropped in stage 1 for its type is not reported again here.

mod apps;
mod cache;
mod server;
mod throttle;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawConfig, RawUpstream};
use super::{
    redact_key_like, Config, ConfigError, Env, Loaded, Problem, UpstreamConfig,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_MAX_RETRIES, DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_POOL_MAX_IDLE_PER_HOST, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_BASE_DELAY, ENV_PREFIX,
    ENV_SEPARATOR,
};
use crate::catalogue::{Catalogue, CommandSpec};

/// Tencent's backend timeout (reference §1); a request timeout at or below it gets a warning.
const TENCENT_BACKEND_TIMEOUT: Duration = Duration::from_secs(3);
/// Past this, a drain outlives any sane Kubernetes `terminationGracePeriodSeconds`.
pub(super) const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(600);
const MAX_RETRIES_LIMIT: u32 = 5;
const RETRY_BASE_DELAYS: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(10);
/// A CA bundle larger than this is a wrong path, not a certificate.
const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;
const PEM_CERTIFICATE_MARKER: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// Problems and warnings found so far, plus which keys were set by the environment (so a
/// problem can say which variable to fix).
#[derive(Default)]
pub(super) struct Findings {
    problems: BTreeMap<String, String>,
    warnings: BTreeMap<String, String>,
    from_env: BTreeSet<String>,
}

impl Findings {
    /// Records a problem, unless `key` already has one (its first problem is the root cause).
    pub fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems
            .entry(key.into())
            .or_insert_with(|| message.into());
    }

    pub fn warning(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings
            .entry(key.into())
            .or_insert_with(|| message.into());
    }

    /// Whether `key` already has a problem (such as a value of the wrong type, dropped).
    pub fn has_problem(&self, key: &str) -> bool {
        self.problems.contains_key(key)
    }

    /// Remembers that the environment set `key`. Only environment values carry an origin:
    /// the file is read from a string, and tables the overrides create have none.
    pub fn note_origin(&mut self, key: &str, value: &::config::Value) {
        if value.origin().is_some() {
            self.from_env.insert(key.to_owned());
        }
    }

    /// The loaded configuration, or every problem found.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when any problem was recorded (or `config` is `None`).
    pub fn finish(self, config: Option<Config>) -> Result<Loaded, ConfigError> {
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

/// The variable that overrides `key`, as an operator would write it.
fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{ENV_SEPARATOR}{}",
        key.replace('.', ENV_SEPARATOR).to_ascii_uppercase()
    )
}

/// Checks every value, recording each problem; the `Config` is only meaningful (and only
/// returned by `Findings::finish`) when no problem was found.
pub(super) fn validate(raw: RawConfig, env: &Env, findings: &mut Findings) -> Option<Config> {
    let RawConfig {
        server: mut raw_server,
        upstream: raw_upstream,
        apps: raw_apps,
        cache: raw_cache,
        throttle: raw_throttle,
    } = raw;
    // Resolved last, once we know which apps are valid.
    let default_app = raw_server.default_app.take();
    let server = server::validate_server(raw_server, findings);
    let upstream = validate_upstream(raw_upstream, findings);
    if upstream.deadline > server.shutdown_grace {
        findings.warning(
            "upstream.deadline",
            format!(
                "{} is longer than server.shutdown_grace ({}): a request still running when a \
                 shutdown's grace period ends gets a 503 (1905005) instead of Tencent's answer",
                humantime::format_duration(upstream.deadline),
                humantime::format_duration(server.shutdown_grace)
            ),
        );
    }
    // Cache rules and quota overrides name commands; only the built-in catalogue's count.
    let catalogue = Catalogue::builtin();
    let cache = cache::validate_cache(raw_cache, &catalogue, findings);
    let throttle = throttle::validate_throttle(raw_throttle, &catalogue, findings);
    apps::check_app_names(&raw_apps, findings);
    let app_names: Vec<String> = raw_apps.keys().cloned().collect();
    let mut valid_apps = Vec::with_capacity(raw_apps.len());
    let mut all_apps_valid = true;
    for (name, raw) in raw_apps {
        match apps::validate_app(name, raw, env, findings) {
            Some(app) => valid_apps.push(app),
            None => all_apps_valid = false,
        }
    }
    apps::check_unique_sdkappids(&valid_apps, findings);
    apps::warn_shared_key_sources(&valid_apps, findings);
    let default_app = apps::choose_default_app(default_app, &app_names, &valid_apps, findings)?;
    all_apps_valid.then_some(Config {
        server,
        upstream,
        apps: valid_apps,
        default_app,
        cache,
        throttle,
    })
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
    let max_retries = number_in(
        findings,
        "upstream.max_retries",
        raw.max_retries,
        DEFAULT_MAX_RETRIES,
        0..=MAX_RETRIES_LIMIT,
        "",
    );
    let retry_base_delay = bounded_duration(
        findings,
        "upstream.retry_base_delay",
        raw.retry_base_delay,
        DEFAULT_RETRY_BASE_DELAY,
        RETRY_BASE_DELAYS,
    );
    // Unset, the deadline grows with a long request timeout, so a file that only raises
    // request_timeout (valid before the deadline existed) stays valid.
    let deadline = duration(
        findings,
        "upstream.deadline",
        raw.deadline,
        DEFAULT_DEADLINE.max(request_timeout),
    );
    // Compared only with a request timeout that was itself valid, so one slip is one problem.
    if deadline < request_timeout && !findings.has_problem("upstream.request_timeout") {
        findings.problem(
            "upstream.deadline",
            format!(
                "{} is shorter than upstream.request_timeout ({}): the deadline covers the \
                 whole client request, so it must leave room for at least one full call",
                humantime::format_duration(deadline),
                humantime::format_duration(request_timeout)
            ),
        );
    }
    UpstreamConfig {
        connect_timeout,
        request_timeout,
        pool_idle_timeout,
        pool_max_idle_per_host,
        ca_file,
        extra_ca_pem,
        max_retries,
        retry_base_delay,
        deadline,
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

/// Longest duration any key accepts unless it says otherwise: far beyond any sensible
/// setting, and far from where adding it to an instant could overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A humantime duration such as `5s`, `250ms` or `24h`; zero and more than a year are refused.
fn duration(
    findings: &mut Findings,
    key: &str,
    raw: Option<String>,
    default: Duration,
) -> Duration {
    bounded_duration(
        findings,
        key,
        raw,
        default,
        Duration::from_nanos(1)..=MAX_DURATION,
    )
}

/// A humantime duration within `range`; `default` when absent or refused. Zero is written
/// `0s` (or `0`).
fn bounded_duration(
    findings: &mut Findings,
    key: &str,
    raw: Option<String>,
    default: Duration,
    range: RangeInclusive<Duration>,
) -> Duration {
    let Some(text) = raw else {
        return default;
    };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if range.contains(&d) => d,
        Ok(d) if d.is_zero() => {
            findings.problem(key, format!("{text:?} is zero; give a positive duration"));
            default
        }
        Ok(_) => {
            let human = humantime::format_duration;
            let (start, end) = (*range.start(), *range.end());
            // Zero has its own message above, so a range of positive durations needs no start.
            let limits = if start == Duration::from_nanos(1) {
                format!("at most {}", human(end))
            } else {
                format!("{} ..= {}", human(start), human(end))
            };
            findings.problem(key, format!("{text:?} is out of range; give {limits}"));
            default
        }
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

/// A whole number within `range`; `default` when absent or refused. `unit` follows the range
/// in the message (e.g. `" calls/s"`).
fn number_in<T>(
    findings: &mut Findings,
    key: &str,
    raw: Option<u64>,
    default: T,
    range: RangeInclusive<T>,
    unit: &str,
) -> T
where
    T: TryFrom<u64> + PartialOrd + Copy + fmt::Display,
{
    let Some(n) = raw else {
        return default;
    };
    match T::try_from(n) {
        Ok(value) if range.contains(&value) => value,
        _ => {
            findings.problem(
                key,
                format!(
                    "{n} is out of range; give {} ..= {}{unit}",
                    range.start(),
                    range.end()
                ),
            );
            default
        }
    }
}

/// A fraction within `0.0 ..= max`; `default` when absent or refused (NaN included).
fn fraction(findings: &mut Findings, key: &str, raw: Option<f64>, default: f64, max: f64) -> f64 {
    match raw {
        None => default,
        Some(x) if (0.0..=max).contains(&x) => x,
        Some(x) => {
            findings.problem(key, format!("{x} is out of range; give 0.0 ..= {max:.1}"));
            default
        }
    }
}

/// A `service/command` from the file, looked up in the catalogue: the spec, or a problem under
/// `key` (with a "did you mean" when a known command is close).
fn catalogued<'c>(
    catalogue: &'c Catalogue,
    findings: &mut Findings,
    key: &str,
    command: &str,
) -> Option<&'c CommandSpec> {
    if let Some(id) = catalogue.lookup(command) {
        return Some(catalogue.spec(id));
    }
    let names: Vec<&str> = catalogue.iter().map(|(_, spec)| spec.name).collect();
    let mut message = format!("{command:?} is not in the catalogue");
    if let Some(near) = super::raw::nearest(command, &names) {
        message.push_str(&format!("; did you mean {near:?}?"));
    }
    findings.problem(key, message);
    None
}

/// An empty string counts as unset, so an environment override can clear a file's value.
pub(super) fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// Reads at most `limit` bytes, failing beyond that (a wrong path such as `/dev/zero` must not
/// hang startup).
pub(super) fn read_capped(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
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
