//! The sandbox's per-app state (chatbots, imported accounts, the UserSig-failure lockout) and
//! the command handlers that read and change it.
//!
//! A handler runs only after every check in `checks` passed. It returns either the command's
//! extra answer fields, already serialised and in Tencent's order, or a [`CommandError`] naming
//! the bad parameter; [`envelope`] writes either into Tencent's answer body. Rules come from
//! reference §4 (chatbots) and §5 (the other commands). The lockout is fed an `Instant` rather
//! than reading a clock, so it is tested without one.
//!
//! Invariant: an app holds at most [`MAX_ROBOTS_PER_APP`] chatbots and [`MAX_ACCOUNTS_PER_APP`]
//! accounts of at most [`MAX_ACCOUNT_ID_BYTES`] each, and fewer failure times than
//! `lockout_after_failures` (itself at most `MAX_LOCKOUT_AFTER_FAILURES`), so no client can grow
//! it without bound (issue 7, F10).

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::time::Instant;

/// Every chatbot UserID starts with this (reference §4).
const ROBOT_PREFIX: &str = "@RBT#";

/// Longest chatbot UserID, in bytes (reference §4).
const MAX_ROBOT_ID_BYTES: usize = 32;

/// Most chatbots one app holds; creating another answers 10008, "bot limit reached"
/// (reference §4). Tencent does not publish its number; this one only bounds memory.
pub const MAX_ROBOTS_PER_APP: usize = 1000;

/// Most imported accounts one app holds; importing another answers 70402.
pub const MAX_ACCOUNTS_PER_APP: usize = 10_000;

/// Longest imported UserID, in bytes: Tencent's limit for account_import (its API page; not in
/// the reference).
pub const MAX_ACCOUNT_ID_BYTES: usize = 32;

/// The commands whose state the sandbox models, by "service/command" (reference §4, §5).
/// Every other command of the gateway's catalogue (Tencent's whole list) answers a plain OK
/// after the same checks; any other well-formed path answers 60009.
const MODELLED: &[(&str, Command)] = &[
    (
        "openim_robot_http_svc/get_all_robots",
        Command::GetAllRobots,
    ),
    ("openim_robot_http_svc/create_robot", Command::CreateRobot),
    ("openim_robot_http_svc/delete_robot", Command::DeleteRobot),
    ("im_open_login_svc/account_import", Command::AccountImport),
    ("im_open_login_svc/account_check", Command::AccountCheck),
];

/// A command's quota where Tencent's page gives none.
const UNDOCUMENTED_QUOTA: u32 = 200;

/// The commands the sandbox knows; any other well-formed path answers 60009.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    GetAllRobots,
    CreateRobot,
    DeleteRobot,
    AccountImport,
    AccountCheck,
    /// Known commands whose data the sandbox does not model: they answer a plain OK.
    Acknowledge,
}

impl Command {
    /// The command named by a `/v4/{service}/{command}` path, with its catalogue name and its
    /// documented quota per second, if the catalogue knows it. The name is the catalogue's
    /// own, so state keyed by it is bounded.
    pub(super) fn lookup(service: &str, command: &str) -> Option<(&'static str, Command, u32)> {
        static CATALOGUE: std::sync::LazyLock<crate::catalogue::Catalogue> =
            std::sync::LazyLock::new(crate::catalogue::Catalogue::builtin);
        let name = format!("{service}/{command}");
        let spec = CATALOGUE.spec(CATALOGUE.lookup(&name)?);
        let command = MODELLED
            .iter()
            .find(|(modelled, _)| *modelled == spec.name)
            .map_or(Command::Acknowledge, |(_, command)| *command);
        let quota = spec.quota_per_second.unwrap_or(UNDOCUMENTED_QUOTA);
        Some((spec.name, command, quota))
    }
}

/// A command's refusal of its body's contents (the body itself is already a JSON object).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommandError {
    /// A chatbot command's parameter is missing, mistyped or out of range (10004, reference §4).
    #[error("invalid parameter: {0}")]
    InvalidRobotParameter(String),
    /// An account command's parameter is missing or mistyped (70402, reference §6).
    #[error("invalid parameter: {0}")]
    InvalidAccountParameter(String),
    /// The app already holds [`MAX_ROBOTS_PER_APP`] chatbots (10008, reference §4).
    #[error("invalid request: bot limit reached (the sandbox keeps at most {0} per app)")]
    RobotLimit(usize),
    /// The app already holds [`MAX_ACCOUNTS_PER_APP`] accounts (70402, as other refused imports).
    #[error("invalid parameter: the sandbox keeps at most {0} imported accounts per app")]
    AccountLimit(usize),
}

impl CommandError {
    /// The ErrorCode Tencent answers this refusal with.
    pub(crate) fn code(&self) -> i64 {
        match self {
            CommandError::InvalidRobotParameter(_) => 10004,
            CommandError::InvalidAccountParameter(_) | CommandError::AccountLimit(_) => 70402,
            CommandError::RobotLimit(_) => 10008,
        }
    }
}

/// A command's extra answer fields: name and JSON text, in the order they are written after
/// `ErrorCode`. Pre-serialised because serde_json's `Map` would sort the keys.
pub(super) type Fields = Vec<(&'static str, String)>;

/// What one app holds on the sandbox's side. Lives behind the app's mutex.
#[derive(Debug, Default)]
pub(super) struct AppState {
    /// Chatbot UserIDs; a set, because creating the same one twice yields one bot.
    pub robots: BTreeSet<String>,
    /// UserIDs imported with `account_import`, which `account_check` reports as `Imported`.
    pub accounts: BTreeSet<String>,
    /// Failed UserSig checks and the 70050 lock they cause.
    pub lockout: Lockout,
}

/// How long a locked-out app answers 70050 to everything (reference §6: "blocked for 1 minute").
const LOCKOUT_DURATION: Duration = Duration::from_secs(60);

/// How far back failed UserSig checks count toward a lockout.
const LOCKOUT_WINDOW: Duration = Duration::from_secs(60);

/// One app's failed UserSig checks and, once they pile up, its 70050 lockout.
#[derive(Debug, Default)]
pub(super) struct Lockout {
    /// Failures within the last [`LOCKOUT_WINDOW`], oldest first.
    failures: VecDeque<Instant>,
    /// While `Some(t)` and `now < t`, every request for the app answers 70050.
    locked_until: Option<Instant>,
}

impl Lockout {
    /// Whether the app is locked out at `now`; an expired lock is cleared.
    pub(super) fn is_locked(&mut self, now: Instant) -> bool {
        match self.locked_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.locked_until = None;
                false
            }
            None => false,
        }
    }

    /// Counts a failed UserSig check at `now`; reaching `threshold` failures within
    /// [`LOCKOUT_WINDOW`] locks the app for [`LOCKOUT_DURATION`]. A threshold of 0 disables it.
    pub(super) fn record_failure(&mut self, now: Instant, threshold: u32) {
        if threshold == 0 {
            return;
        }
        while self
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= LOCKOUT_WINDOW)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        if self.failures.len() >= threshold as usize {
            self.failures.clear();
            // An Instant this far in the future cannot overflow in practice; if it ever did,
            // a lock that ends now is the harmless fallback.
            self.locked_until = Some(now.checked_add(LOCKOUT_DURATION).unwrap_or(now));
        }
    }
}

/// Runs `command` against `state` with the request's JSON object `body`.
///
/// # Errors
/// [`CommandError`] when the body's fields are missing, mistyped or out of range; `state` is then
/// unchanged.
pub(super) fn execute(
    command: Command,
    body: &Map<String, Value>,
    state: &mut AppState,
) -> Result<Fields, CommandError> {
    match command {
        Command::GetAllRobots => Ok(vec![("Robot_Account", json_strings(&state.robots))]),
        Command::CreateRobot => create_robot(body, state),
        Command::DeleteRobot => delete_robot(body, state),
        Command::AccountImport => account_import(body, state),
        Command::AccountCheck => account_check(body, state),
        Command::Acknowledge => Ok(Vec::new()),
    }
}

fn create_robot(body: &Map<String, Value>, state: &mut AppState) -> Result<Fields, CommandError> {
    let invalid = |why: &str| CommandError::InvalidRobotParameter(why.to_owned());
    let user_id = match body.get("UserID") {
        Some(Value::String(id)) => id,
        Some(_) => return Err(invalid("UserID must be a string")),
        None => return Err(invalid("UserID is required")),
    };
    if !user_id.starts_with(ROBOT_PREFIX) {
        return Err(invalid("UserID must start with @RBT#"));
    }
    if user_id.len() > MAX_ROBOT_ID_BYTES {
        return Err(invalid("UserID must be at most 32 bytes"));
    }
    for optional in ["Nick", "FaceUrl", "SelfSignature"] {
        if body.get(optional).is_some_and(|v| !v.is_string()) {
            return Err(CommandError::InvalidRobotParameter(format!(
                "{optional} must be a string"
            )));
        }
    }
    if state.robots.len() >= MAX_ROBOTS_PER_APP && !state.robots.contains(user_id) {
        return Err(CommandError::RobotLimit(MAX_ROBOTS_PER_APP));
    }
    state.robots.insert(user_id.clone());
    Ok(Vec::new())
}

fn delete_robot(body: &Map<String, Value>, state: &mut AppState) -> Result<Fields, CommandError> {
    let invalid = |why: &str| CommandError::InvalidRobotParameter(why.to_owned());
    let user_id = match body.get("Robot_Account") {
        Some(Value::String(id)) => id,
        Some(_) => return Err(invalid("Robot_Account must be a string")),
        None => return Err(invalid("Robot_Account is required")),
    };
    if !state.robots.remove(user_id) {
        return Err(invalid("robot does not exist"));
    }
    Ok(Vec::new())
}

/// Takes `UserID`, or `Identifier` as older clients send it.
fn account_import(body: &Map<String, Value>, state: &mut AppState) -> Result<Fields, CommandError> {
    let user_id = ["UserID", "Identifier"]
        .iter()
        .find_map(|name| body.get(*name))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            CommandError::InvalidAccountParameter("UserID must be a non-empty string".to_owned())
        })?;
    if user_id.len() > MAX_ACCOUNT_ID_BYTES {
        return Err(CommandError::InvalidAccountParameter(format!(
            "UserID must be at most {MAX_ACCOUNT_ID_BYTES} bytes"
        )));
    }
    if state.accounts.len() >= MAX_ACCOUNTS_PER_APP && !state.accounts.contains(user_id) {
        return Err(CommandError::AccountLimit(MAX_ACCOUNTS_PER_APP));
    }
    state.accounts.insert(user_id.to_owned());
    Ok(Vec::new())
}

/// Answers one `ResultItem` per `CheckItem`, in the order asked.
fn account_check(body: &Map<String, Value>, state: &AppState) -> Result<Fields, CommandError> {
    let invalid = || {
        CommandError::InvalidAccountParameter(
            "CheckItem must be an array of {\"UserID\": string}".to_owned(),
        )
    };
    let items = body
        .get("CheckItem")
        .and_then(Value::as_array)
        .ok_or_else(invalid)?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let user_id = item
            .get("UserID")
            .and_then(Value::as_str)
            .ok_or_else(invalid)?;
        let status = if state.accounts.contains(user_id) {
            "Imported"
        } else {
            "NotImported"
        };
        results.push(format!(
            r#"{{"UserID":{},"ResultCode":0,"ResultInfo":"","AccountStatus":"{status}"}}"#,
            json_string(user_id)
        ));
    }
    Ok(vec![("ResultItem", format!("[{}]", results.join(",")))])
}

/// Tencent's answer body: `ActionStatus`, `ErrorInfo`, `ErrorCode`, then the command's fields.
pub(super) fn envelope(code: i64, info: &str, fields: &Fields) -> Bytes {
    let status = if code == 0 { "OK" } else { "FAIL" };
    let mut out = format!(
        r#"{{"ActionStatus":"{status}","ErrorInfo":{},"ErrorCode":{code}"#,
        json_string(info)
    );
    for (name, value) in fields {
        // Writing to a String cannot fail.
        let _ = write!(out, r#","{name}":{value}"#);
    }
    out.push('}');
    Bytes::from(out)
}

/// A JSON string literal; `Value`'s `Display` cannot fail, unlike `serde_json::to_string`.
pub(super) fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A JSON array of strings, in the set's (sorted) order.
fn json_strings(set: &BTreeSet<String>) -> String {
    Value::Array(set.iter().cloned().map(Value::String).collect()).to_string()
}

#[cfg(test)]
mod tests;
