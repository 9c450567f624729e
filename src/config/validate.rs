//! Stage 2: [`RawConfig`] → [`Config`], every value checked, defaults filled in, one module
//! per section.
//!
//! Promises: every problem of a run is recorded in [`Findings`], at most one per key; a
//! `Config` comes out only when there is none. A value that was dropped in stage 1 for its
//! type is not reported again here.

mod apps;
pub use apps::read_key_file;
mod cache;
mod fleet;
mod server;
mod throttle;
mod upstream;

use super::check::Findings;
use super::model::{Config, Env};
use super::raw::RawConfig;
use crate::catalogue::Catalogue;

/// Checks every value, recording each problem; the `Config` is only meaningful (and only
/// returned by `Findings::finish`) when no problem was found.
pub(super) fn validate(raw: RawConfig, env: &Env, findings: &mut Findings) -> Option<Config> {
    let RawConfig {
        server: mut raw_server,
        upstream,
        apps,
        cache,
        throttle,
        fleet,
        log,
    } = raw;
    // Resolved with the apps, once we know which are valid.
    let default_app = raw_server.default_app.take();
    let server = server::validate(raw_server, findings);
    let upstream = upstream::validate(upstream, env, findings);
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
    // Cache rules and quota overrides name commands of the built-in catalogue, or others when
    // pass-through is allowed (they then join the gateway's catalogue: `Catalogue::for_config`).
    let catalogue = Catalogue::builtin();
    let unknown = server.allow_unknown_commands;
    let cache = cache::validate(cache, &catalogue, unknown, findings);
    let throttle = throttle::validate(throttle, &catalogue, unknown, findings);
    let fleet = fleet::validate(fleet, findings);
    let log = validate_log(log, findings);
    let (apps, default_app) = apps::validate(apps, default_app, env, findings)?;
    Some(Config {
        server,
        upstream,
        apps,
        default_app,
        cache,
        throttle,
        fleet,
        log,
    })
}

/// `[log]`: `level` is a `tracing` filter (`info`, `warn,tim_gateway=debug`); default `info`.
fn validate_log(raw: super::raw::RawLog, findings: &mut Findings) -> super::model::LogConfig {
    let level = raw.level.map(|level| level.trim().to_owned());
    match level {
        None => super::model::LogConfig::default(),
        Some(level) => match tracing_subscriber::EnvFilter::builder().parse(&level) {
            Ok(_) if !level.is_empty() => super::model::LogConfig { level },
            Ok(_) => {
                findings.problem("log.level", "empty; use a level such as `info` or `warn`");
                super::model::LogConfig::default()
            }
            Err(error) => {
                findings.problem(
                    "log.level",
                    format!(
                        "not a log filter ({error}); use a level (error, warn, info, debug, \
                         trace) or directives such as `warn,tim_gateway=debug`"
                    ),
                );
                super::model::LogConfig::default()
            }
        },
    }
}
