//! Live reload: on SIGHUP, and when the config file's contents change (read every
//! [`CONFIG_POLL`]), the file is loaded and validated in full, as at startup.
//!
//! - Invalid: every problem is logged, the running configuration stays, and
//!   `config_last_reload_successful` drops to 0 until a valid one is loaded.
//! - Valid: the settings that can change live are applied at once, without dropping or failing
//!   a request in flight (each request keeps the cache policy it was routed with; a budget's
//!   slots already taken stand): quotas and the other `throttle.*` numbers except the back-off,
//!   `[[cache.rules]]`, `log.level`; for each app that keeps its name and SDKAppID, its
//!   identifier, region or endpoint and UserSig lifetime (a UserSig is minted at once), and its
//!   secret key when it is read from the same place. Every other changed setting (an app
//!   added or removed among them) is named in the log as needing a restart, and
//!   `config_restart_required` is 1 until the process restarts with it (or the file goes back).
//!
//! What changed is found by comparing the effective settings (`check-config`'s lines), so a
//! change that does not change a setting (a comment, a default written out) is no change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError, Env};
use crate::proxy::Proxy;

/// How often the config file is read again to see whether it changed.
pub const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Effective settings that a reload applies; any other changed setting needs a restart.
const LIVE: &[&str] = &[
    "throttle.safety_margin",
    "throttle.burst",
    "throttle.max_wait",
    "throttle.max_waiters",
    "throttle.default_quota",
    "throttle.quotas",
    "cache.rules",
    "log.level",
];

/// Settings of each app (`apps.NAME.…`) that a reload applies, while the app keeps its name
/// and SDKAppID.
const LIVE_APP: &[&str] = &["identifier", "origin", "usersig_lifetime"];

/// What a new configuration changes, by effective setting (`check-config`'s keys).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Applied by a reload.
    pub live: Vec<String>,
    /// Kept at their running values until a restart.
    pub restart: Vec<String>,
}

impl Changes {
    /// Compares the effective settings of `running` and `new`. A list (`cache.rules[2].ttl`)
    /// is named by its key without the index.
    pub fn between(running: &Config, new: &Config) -> Changes {
        Changes::plan(running, running, new)
    }

    /// What a reload to `new` applies (live settings that differ from `applied`, the last
    /// configuration applied) and what waits for a restart (other settings that differ from
    /// `started`, what the process started with). An app's settings are live only while it
    /// keeps the SDKAppID it started with, as `Proxy::apply_live` does.
    pub fn plan(started: &Config, applied: &Config, new: &Config) -> Changes {
        let (started, applied, new) = (settings(started), settings(applied), settings(new));
        Changes {
            live: changed(&applied, &new)
                .into_iter()
                .filter(|name| is_live(name, &started, &new))
                .collect(),
            restart: changed(&started, &new)
                .into_iter()
                .filter(|name| !is_live(name, &started, &new))
                .collect(),
        }
    }
}

/// The settings whose values differ, by name (a list's entries under the list's name).
fn changed(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let mut names: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|key| old.get(*key) != new.get(*key))
        .map(|key| key.split('[').next().unwrap_or(key).to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether a reload from a process started with `started` to `new` applies setting `name`.
fn is_live(name: &str, started: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> bool {
    let is_live_app = name
        .strip_prefix("apps.")
        .and_then(|rest| rest.rsplit_once('.'))
        .is_some_and(|(app, field)| {
            let sdkappid = format!("apps.{app}.sdkappid");
            LIVE_APP.contains(&field)
                && started.get(&sdkappid).is_some()
                && started.get(&sdkappid) == new.get(&sdkappid)
        });
    LIVE.contains(&name) || is_live_app
}

/// `key → value` of every effective setting.
fn settings(config: &Config) -> BTreeMap<String, String> {
    config
        .to_string()
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// Why a reload was attempted.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Signal,
    FileChanged,
    /// The last reload failed: tried again at each poll.
    Retry,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChanged => "file changed",
            Trigger::Retry => "retry after a failure",
        }
    }
}

/// The SIGHUP handler. Installed before the listeners exist: from then on a SIGHUP is a reload
/// request (remembered until the reloader runs), not the default action (exit).
#[derive(Debug)]
pub struct Hangup {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangup {
    /// Installs the handler now (needs a tokio runtime).
    ///
    /// # Errors
    /// The operating system refused to install it.
    pub fn install() -> std::io::Result<Hangup> {
        Ok(Hangup {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        let _ = self.signal.recv().await;
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    }
}

/// Reloads the configuration of a running gateway.
pub struct Reloader {
    path: PathBuf,
    proxy: Arc<Proxy>,
    /// What the process started with: settings that need a restart are compared with it.
    started: Config,
    /// The configuration last applied.
    applied: Config,
    /// The file's contents when last read, to notice a change.
    last_read: Option<Vec<u8>>,
    /// Why the last reload failed: it is tried again at every poll (a key or certificate
    /// file caught mid-swap, a file back as it was), and logged again only if the reason
    /// changes.
    failed: Option<String>,
}

impl Reloader {
    /// For the gateway serving `proxy`, started with `config`, read from `path` whose
    /// contents were `read_at_start` (read before the load: a change during startup is a
    /// change, and reloads).
    pub fn new(
        path: PathBuf,
        config: &Config,
        read_at_start: Option<Vec<u8>>,
        proxy: Arc<Proxy>,
    ) -> Self {
        Reloader {
            path,
            proxy,
            started: config.clone(),
            applied: config.clone(),
            last_read: read_at_start,
            failed: None,
        }
    }

    /// Reloads on every SIGHUP and whenever the file changes, until the process ends.
    pub fn run(mut self, mut hangup: Hangup) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(CONFIG_POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            loop {
                let trigger = tokio::select! {
                    () = hangup.recv() => Some(Trigger::Signal),
                    _ = poll.tick() => {
                        if self.has_changed() {
                            Some(Trigger::FileChanged)
                        } else {
                            self.failed.is_some().then_some(Trigger::Retry)
                        }
                    }
                };
                if let Some(trigger) = trigger {
                    self.reload(trigger);
                }
            }
        })
    }

    /// Whether the file's contents differ from the last read (a blocking read of a small
    /// file, once per [`CONFIG_POLL`]). A file that cannot be read is no change here (a
    /// failed reload is tried again anyway).
    fn has_changed(&mut self) -> bool {
        match std::fs::read(&self.path) {
            Ok(contents) if self.last_read.as_ref() != Some(&contents) => {
                self.last_read = Some(contents);
                true
            }
            _ => false,
        }
    }

    fn reload(&mut self, trigger: Trigger) {
        if let Ok(contents) = std::fs::read(&self.path) {
            self.last_read = Some(contents);
        }
        let metrics = self.proxy.config_metrics();
        let loaded = match Config::load(&self.path, &Env::from_process()) {
            Ok(loaded) => loaded,
            Err(error) => {
                let reason = error.to_string();
                let is_new = self.failed.as_ref() != Some(&reason);
                if is_new || !matches!(trigger, Trigger::Retry) {
                    log_invalid(&error, trigger);
                    metrics.last_successful.set(0);
                    metrics.failure.inc();
                }
                self.failed = Some(reason);
                return;
            }
        };
        self.failed = None;
        for warning in &loaded.warnings {
            tracing::warn!(key = %warning.key, "{}", warning.message);
        }
        let new = loaded.config;
        let Changes { mut live, restart } = Changes::plan(&self.started, &self.applied, &new);
        let new_commands = self.proxy.unknown_configured_commands(&new);
        let log_level = self.proxy.apply_live(&self.started, &new);
        if log_level == Ok(crate::log_level::Applied::Pinned) {
            for name in &mut live {
                if name == "log.level" {
                    name.push_str(" (not applied: RUST_LOG is set)");
                }
            }
        }
        let needs_restart = !restart.is_empty() || !new_commands.is_empty();
        tracing::info!(
            trigger = trigger.as_str(),
            applied = %list(&live),
            "configuration reloaded"
        );
        if needs_restart {
            tracing::warn!(
                settings = %list(&restart),
                new_commands = %list(&new_commands),
                "these changed settings need a restart; their running values stay until then"
            );
        }
        // The counter last: whoever waits for it sees every other effect.
        metrics.restart_required.set(i64::from(needs_restart));
        metrics.last_successful.set(1);
        metrics.last_success.set(crate::metrics::unix_now());
        metrics.success.inc();
        self.applied = new;
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

/// Logs why a reload was refused: one line per problem, then what happens.
fn log_invalid(error: &ConfigError, trigger: Trigger) {
    match error {
        ConfigError::Invalid(problems) => {
            for problem in problems {
                tracing::error!(key = %problem.key, problem = %problem.message, "invalid configuration");
            }
        }
        other => tracing::error!(error = %other, "invalid configuration"),
    }
    tracing::error!(
        trigger = trigger.as_str(),
        "configuration reload failed: the running configuration stays in force"
    );
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::DEFAULT_SECRET_KEY_ENV;

    const BASE: &str = r#"
[apps.main]
sdkappid = 1400000001
region = "singapore"
"#;

    fn config(toml: &str) -> Config {
        let env = Env::from_map(HashMap::from([(
            DEFAULT_SECRET_KEY_ENV.to_owned(),
            "a-key".to_owned(),
        )]));
        Config::from_toml_str(toml, &env).expect("valid").config
    }

    #[test]
    fn changes_are_sorted_into_live_and_restart_by_setting() {
        let base = config(BASE);
        assert_eq!(Changes::between(&base, &base), Changes::default());
        // A default written out, and a comment, change no setting.
        let same = config(&format!(
            "# a comment\n[throttle]\ndefault_quota = 200\n{BASE}"
        ));
        assert_eq!(Changes::between(&base, &same), Changes::default());
        let changed = config(&format!(
            "[server]\nmax_body_bytes = 1000\n[log]\nlevel = \"warn\"\n\
             [throttle]\nburst = 0.02\nbackoff_base = \"2s\"\n{BASE}\
             identifier = \"other_admin\"\n\
             [[throttle.quotas]]\ncommand = \"im_open_login_svc/account_check\"\nper_second = 10\n\
             [[cache.rules]]\ncommand = \"im_open_login_svc/account_check\"\nttl = \"1s\"\n"
        ));
        assert_eq!(
            Changes::between(&base, &changed),
            Changes {
                live: [
                    "apps.main.identifier",
                    "cache.rules",
                    "log.level",
                    "throttle.burst",
                    "throttle.quotas"
                ]
                .map(String::from)
                .to_vec(),
                restart: ["server.max_body_bytes", "throttle.backoff_base"]
                    .map(String::from)
                    .to_vec(),
            }
        );
        // Another SDKAppID under the same name is another app: all of it needs a restart.
        let other = config(
            &BASE
                .replace("1400000001", "1400000002")
                .replace("region = \"singapore\"", "region = \"frankfurt\""),
        );
        assert_eq!(
            Changes::between(&base, &other),
            Changes {
                live: vec![],
                restart: vec!["apps.main.origin".into(), "apps.main.sdkappid".into()],
            }
        );
    }

    /// After several reloads, what is applied and what waits for a restart follow the same
    /// rule as `apply_live`: an app's settings are live only under the SDKAppID it started
    /// with.
    #[test]
    fn several_reloads_report_what_was_really_applied() {
        let started = config(BASE);
        let other_id = config(&BASE.replace("1400000001", "1400000002"));
        let other_id_and_admin = config(&format!(
            "{}identifier = \"ops\"\n",
            BASE.replace("1400000001", "1400000002")
        ));
        // Another SDKAppID: a restart; then an identifier under it: not applied either.
        assert_eq!(
            Changes::plan(&started, &other_id, &other_id_and_admin),
            Changes {
                live: vec![],
                restart: vec!["apps.main.identifier".into(), "apps.main.sdkappid".into()],
            }
        );
        // Back to the SDKAppID it started with, with the new identifier: applied, no restart.
        let admin = config(&format!("{BASE}identifier = \"ops\"\n"));
        assert_eq!(
            Changes::plan(&started, &other_id, &admin),
            Changes {
                live: vec!["apps.main.identifier".into()],
                restart: vec![],
            }
        );
        // A restart-only change reverted: nothing left to restart for.
        let bigger = config(&format!("[server]\nmax_body_bytes = 1000\n{BASE}"));
        assert_eq!(
            Changes::plan(&started, &bigger, &started),
            Changes::default()
        );
    }
}
