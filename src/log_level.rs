//! The log filter, replaced at run time when a reload changes `log.level`.
//!
//! `main` builds the subscriber with a reloadable filter and installs its setter here once;
//! `RUST_LOG`, when set, pins the filter (an operator's explicit override wins over the file).
//! Promise: after [`apply`] returns `Ok`, the access log's on/off verdict matches the filter.

use std::sync::OnceLock;

/// Replaces the subscriber's filter.
pub type Setter = Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>;

struct Control {
    setter: Setter,
    /// `RUST_LOG` was set: the config's level is not applied.
    is_pinned: bool,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The filter is now the config's level.
    Set,
    /// `RUST_LOG` is set and stays in force.
    Pinned,
    /// No reloadable subscriber (tests, library use): nothing to change.
    NotInstalled,
}

/// Installs the setter of the process's subscriber; later calls are ignored.
pub fn install(setter: Setter, is_pinned: bool) {
    let _ = CONTROL.set(Control { setter, is_pinned });
}

/// Makes `level` (a `tracing` filter the config validated) the log filter.
///
/// # Errors
/// The filter does not parse, or the subscriber refused it.
pub fn apply(level: &str) -> Result<Applied, String> {
    let Some(control) = CONTROL.get() else {
        return Ok(Applied::NotInstalled);
    };
    if control.is_pinned {
        return Ok(Applied::Pinned);
    }
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map_err(|error| error.to_string())?;
    (control.setter)(filter)?;
    crate::access_log::refresh_enabled();
    Ok(Applied::Set)
}
