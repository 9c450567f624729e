//! Configuration: a TOML file layered with `TIM_GATEWAY__SECTION__KEY` environment overrides,
//! parsed once into typed values.
//!
//! Two stages, as STYLE convention 4 asks. `raw` merges the file and the environment into one
//! tree with the `config` crate and turns it into a permissive `RawConfig` (every leaf
//! optional, durations, addresses and regions still strings), reporting unknown keys and
//! wrongly typed values. `validate` then turns it into a [`Config`], one module per section,
//! filling in defaults and collecting every problem at once rather than stopping at the first.
//! Both record into `check::Findings`; the types they produce live in `model`. Dependencies run
//! one way: `model` ← `check` ← `raw` ← `validate` ← this file.
//!
//! Promises:
//! - [`ConfigError::Invalid`] lists every problem of one run, sorted by key, at most one per key
//!   (a value of the wrong type is reported once, not again as "invalid").
//! - No message, `Debug` or `Display` ever carries a secret key: the key is read only from an
//!   environment variable or a file, and only their *names* are ever printed. A Redis URL is
//!   printed with its password as `***`.
//! - Warnings (allowed but questionable values) never fail a load; they come back in
//!   [`Loaded::warnings`], with the same shape as problems.
//!
//! Environment overrides: `TIM_GATEWAY__SERVER__LISTEN=127.0.0.1:8081` sets `server.listen`,
//! `TIM_GATEWAY__APPS__MAIN__SDKAPPID=1400000001` sets `apps.main.sdkappid` (creating the app
//! if the file has none by that name). The `config` crate lowercases the whole variable name,
//! so an override reaches only an app whose name is lowercase and has no `__`. Values stay
//! strings and are converted by the field's type (numbers, booleans `true`/`false`/`1`/`0`),
//! so `IDENTIFIER=007` stays `"007"`. An empty value clears an optional `region`, `endpoint`,
//! `ca_file`, `secret_key_file`, `default_app` or `fleet.redis_url` (turning fleet mode off)
//! from the file. Variables with a single `_` after the prefix, such as
//! `TIM_GATEWAY_SECRET_KEY`, are not configuration keys. The arrays of tables
//! `[[cache.rules]]` and `[[throttle.quotas]]` come from the file only.

mod check;
mod model;
mod raw;
mod validate;

use std::fmt;
use std::path::Path;

pub use model::*;
pub use validate::read_key_file;

/// The configuration `tim-gateway demo` runs with; the demo overrides the endpoint, the CA and
/// the secret key at runtime.
pub const DEMO_TOML: &str = include_str!("../config/demo.toml");

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
        let tree = raw::merge(toml, origin, env)?;
        let mut findings = check::Findings::default();
        let raw = raw::RawConfig::from_tree(tree, &mut findings);
        let config = validate::validate(raw, env, &mut findings);
        findings.finish(config)
    }
}

impl fmt::Display for Config {
    /// The effective configuration, one `key = value` per line, for `check-config`. Secret
    /// keys appear only as where they were read from, a Redis password only as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let human = |d| humantime::format_duration(d).to_string();
        let list = |items: &[String]| format!("[{}]", items.join(", "));
        let mut line = |key: &str, value: &dyn fmt::Display| writeln!(f, "{key} = {value}");
        let s = &self.server;
        line("server.listen", &s.listen)?;
        line("server.listen_mode", &format!("{:04o}", s.listen_mode))?;
        match &s.tls {
            Some((cert, key)) => {
                line("server.tls_cert_file", &cert.display())?;
                line("server.tls_key_file", &key.display())?;
            }
            None => {
                line("server.tls_cert_file", &"(none: plain HTTP)")?;
                line("server.tls_key_file", &"(none: plain HTTP)")?;
            }
        }
        line("server.admin_listen", &s.admin_listen)?;
        line("server.allow_non_loopback", &s.allow_non_loopback)?;
        line("server.max_body_bytes", &s.max_body_bytes)?;
        line("server.allow_unknown_commands", &s.allow_unknown_commands)?;
        line("server.shutdown_grace", &human(s.shutdown_grace))?;
        line("server.allowed_hosts", &list(&s.allowed_hosts))?;
        match s.max_connections {
            Some(n) => line("server.max_connections", &n)?,
            None => line(
                "server.max_connections",
                &"(derived from the open-files limit)",
            )?,
        }
        match s.worker_threads {
            Some(n) => line("server.worker_threads", &n)?,
            None => {
                let cpus = available_cpus();
                line(
                    "server.worker_threads",
                    &format!("{cpus} (default: {cpus} CPUs available)"),
                )?;
            }
        }
        match &s.admin_token_file {
            Some(path) => line(
                "server.admin_token_file",
                &format!("{} (token not shown)", path.display()),
            )?,
            None => line(
                "server.admin_token_file",
                &"(none: purge needs no token on loopback)",
            )?,
        }
        let default_app = self.apps.get(self.default_app).map_or("?", |a| &a.name);
        line("server.default_app", &default_app)?;
        let u = &self.upstream;
        line("upstream.connect_timeout", &human(u.connect_timeout))?;
        line("upstream.request_timeout", &human(u.request_timeout))?;
        line("upstream.pool_idle_timeout", &human(u.pool_idle_timeout))?;
        line("upstream.pool_max_idle_per_host", &u.pool_max_idle_per_host)?;
        match &u.ca_file {
            Some(path) => line("upstream.ca_file", &path.display())?,
            None => line("upstream.ca_file", &"(none: bundled roots only)")?,
        }
        line("upstream.max_retries", &u.max_retries)?;
        line("upstream.retry_base_delay", &human(u.retry_base_delay))?;
        line("upstream.deadline", &human(u.deadline))?;
        match &u.proxy {
            Some(proxy) => {
                line(
                    "upstream.proxy",
                    &format!("{} (from {})", proxy.shown(), proxy.source),
                )?;
                line("upstream.no_proxy", &format!("{:?}", proxy.no_proxy))?;
            }
            None => {
                line("upstream.proxy", &"(none: Tencent is called directly)")?;
                line("upstream.no_proxy", &"(no proxy)")?;
            }
        }
        let c = &self.cache;
        line("cache.max_bytes", &c.max_bytes)?;
        if c.rules.is_empty() {
            line("cache.rules", &"(none: the catalogue's defaults only)")?;
        }
        for (i, rule) in c.rules.iter().enumerate() {
            let key = |field: &str| format!("cache.rules[{i}].{field}");
            line(&key("command"), &rule.command)?;
            line(&key("enabled"), &rule.enabled)?;
            line(&key("ttl"), &human(rule.ttl))?;
            line(
                &key("stale_while_revalidate"),
                &human(rule.stale_while_revalidate),
            )?;
            line(&key("stale_if_error"), &human(rule.stale_if_error))?;
            line(&key("invalidated_by"), &list(&rule.invalidated_by))?;
        }
        let t = &self.throttle;
        line("throttle.safety_margin", &t.safety_margin)?;
        line("throttle.burst", &t.burst)?;
        line("throttle.max_wait", &human(t.max_wait))?;
        line("throttle.max_waiters", &t.max_waiters)?;
        line("throttle.default_quota", &t.default_quota)?;
        if t.quotas.is_empty() {
            line("throttle.quotas", &"(none: the catalogue's quotas only)")?;
        }
        for (i, quota) in t.quotas.iter().enumerate() {
            line(&format!("throttle.quotas[{i}].command"), &quota.command)?;
            line(
                &format!("throttle.quotas[{i}].per_second"),
                &quota.per_second,
            )?;
        }
        line("throttle.backoff_base", &human(t.backoff_base))?;
        line("throttle.backoff_max", &human(t.backoff_max))?;
        match &self.fleet {
            None => line(
                "fleet.redis_url",
                &"(none: fleet mode off, each gateway keeps its own quota and cache)",
            )?,
            Some(fleet) => {
                // The URL's Display hides its password.
                line("fleet.redis_url", &fleet.redis_url)?;
                line("fleet.expected_replicas", &fleet.expected_replicas)?;
                line("fleet.fallback", &fleet.fallback)?;
                line("fleet.shared_cache", &fleet.shared_cache)?;
                line("fleet.key_prefix", &fleet.key_prefix)?;
                line("fleet.command_timeout", &human(fleet.command_timeout))?;
                line("fleet.max_lateness", &human(fleet.max_lateness))?;
            }
        }
        line("log.level", &self.log.level)?;
        for app in &self.apps {
            let key = |field: &str| format!("apps.{}.{field}", app.name);
            line(&key("sdkappid"), &app.sdkappid)?;
            line(&key("identifier"), &app.identifier)?;
            match &app.origins.backup {
                Some(backup) => line(
                    &key("origin"),
                    &format!("{} (backup {backup})", app.origins.primary),
                )?,
                None => line(&key("origin"), &app.origins.primary)?,
            }
            line(
                &key("secret_key"),
                &format!("<redacted, from {}>", app.secret_key_source),
            )?;
            line(&key("usersig_lifetime"), &human(app.usersig_lifetime))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
