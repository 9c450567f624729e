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
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::super::tls::test_support::{post, sandbox, signed_query};
    use super::super::SandboxOptions;
    use super::*;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    /// Chatbot bodies that break reference §4's rules answer 10004 and leave no bot behind.
    #[test]
    fn create_robot_rejects_bad_user_ids() {
        let long = format!("@RBT#{}", "x".repeat(28));
        let cases = [
            json!({}),
            json!({"UserID": 7}),
            json!({"UserID": "bot1"}),
            json!({"UserID": long}),
            json!({"UserID": "@RBT#1", "Nick": 3}),
            json!({"UserID": "@RBT#1", "FaceUrl": null}),
            json!({"UserID": "@RBT#1", "SelfSignature": ["x"]}),
        ];
        for body in cases {
            let mut state = AppState::default();
            let err = execute(Command::CreateRobot, &object(body.clone()), &mut state)
                .expect_err("refused");
            assert_eq!(err.code(), 10004, "{body}");
            assert!(state.robots.is_empty());
        }
        let exactly_32 = format!("@RBT#{}", "x".repeat(27));
        let mut state = AppState::default();
        execute(
            Command::CreateRobot,
            &object(
                json!({"UserID": exactly_32, "Nick": "n", "FaceUrl": "f", "SelfSignature": "s"}),
            ),
            &mut state,
        )
        .expect("32 bytes is allowed");
    }

    /// Creating the same bot twice yields one bot; deleting an unknown one is 10004.
    #[test]
    fn robots_are_a_set() {
        let mut state = AppState::default();
        let bot = object(json!({"UserID": "@RBT#a"}));
        execute(Command::CreateRobot, &bot, &mut state).unwrap();
        execute(Command::CreateRobot, &bot, &mut state).unwrap();
        assert_eq!(
            execute(Command::GetAllRobots, &Map::new(), &mut state).unwrap(),
            vec![("Robot_Account", r#"["@RBT#a"]"#.to_owned())]
        );
        let delete = object(json!({"Robot_Account": "@RBT#a"}));
        execute(Command::DeleteRobot, &delete, &mut state).unwrap();
        let err = execute(Command::DeleteRobot, &delete, &mut state).unwrap_err();
        assert_eq!(
            err,
            CommandError::InvalidRobotParameter("robot does not exist".into())
        );
        for body in [json!({}), json!({"Robot_Account": 1})] {
            assert_eq!(
                execute(Command::DeleteRobot, &object(body), &mut state)
                    .unwrap_err()
                    .code(),
                10004
            );
        }
    }

    /// Every catalogue command is known, with its documented quota (200 where the page gives
    /// none); the others fall through to 60009.
    #[test]
    fn lookup_knows_the_catalogue() {
        assert_eq!(
            Command::lookup("ConfigSvc", "GetIPList"),
            Some(("ConfigSvc/GetIPList", Command::Acknowledge, 200))
        );
        assert_eq!(
            Command::lookup("im_open_login_svc", "account_check"),
            Some((
                "im_open_login_svc/account_check",
                Command::AccountCheck,
                100
            ))
        );
        assert_eq!(
            Command::lookup("sns", "friend_add"),
            Some(("sns/friend_add", Command::Acknowledge, 200))
        );
        assert_eq!(
            Command::lookup("open_msg_svc", "get_history"),
            Some(("open_msg_svc/get_history", Command::Acknowledge, 10))
        );
        assert_eq!(
            Command::lookup("openim", "c2c_msg_read_receipt"),
            Some(("openim/c2c_msg_read_receipt", Command::Acknowledge, 200))
        );
        assert_eq!(Command::lookup("configsvc", "GetIPList"), None);
        assert_eq!(Command::lookup("openim_robot_http_svc", "get_robot"), None);
    }

    /// Regression test for issue 7, F10: an app keeps at most `MAX_ROBOTS_PER_APP` chatbots;
    /// one more answers 10008 while re-creating an existing one still succeeds.
    #[test]
    fn robots_per_app_are_capped() {
        let mut state = AppState::default();
        for i in 0..MAX_ROBOTS_PER_APP {
            let bot = object(json!({ "UserID": format!("@RBT#{i}") }));
            execute(Command::CreateRobot, &bot, &mut state).unwrap();
        }
        let extra = object(json!({"UserID": "@RBT#extra"}));
        let err = execute(Command::CreateRobot, &extra, &mut state).unwrap_err();
        assert_eq!(err.code(), 10008);
        let again = object(json!({"UserID": "@RBT#0"}));
        execute(Command::CreateRobot, &again, &mut state).expect("an existing bot");
        assert_eq!(state.robots.len(), MAX_ROBOTS_PER_APP);
    }

    /// Regression test for issue 7, F10: imported UserIDs are at most `MAX_ACCOUNT_ID_BYTES`
    /// and an app keeps at most `MAX_ACCOUNTS_PER_APP`; both refusals answer 70402.
    #[test]
    fn accounts_per_app_are_capped() {
        let mut state = AppState::default();
        let long = object(json!({ "UserID": "a".repeat(MAX_ACCOUNT_ID_BYTES + 1) }));
        let err = execute(Command::AccountImport, &long, &mut state).unwrap_err();
        assert_eq!(err.code(), 70402);
        let exact = object(json!({ "UserID": "a".repeat(MAX_ACCOUNT_ID_BYTES) }));
        execute(Command::AccountImport, &exact, &mut state).expect("32 bytes is allowed");
        state.accounts = (0..MAX_ACCOUNTS_PER_APP).map(|i| i.to_string()).collect();
        let extra = object(json!({"UserID": "extra"}));
        let err = execute(Command::AccountImport, &extra, &mut state).unwrap_err();
        assert_eq!(err, CommandError::AccountLimit(MAX_ACCOUNTS_PER_APP));
        assert_eq!(err.code(), 70402);
        let again = object(json!({"UserID": "0"}));
        execute(Command::AccountImport, &again, &mut state).expect("an existing account");
        assert_eq!(state.accounts.len(), MAX_ACCOUNTS_PER_APP);
    }

    /// Failures lock the app only when enough of them fall within 60 s, and the lock lasts 60 s.
    #[test]
    fn lockout_needs_threshold_failures_within_a_minute() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut lockout = Lockout::default();
        lockout.record_failure(at(0), 3);
        lockout.record_failure(at(30), 3);
        lockout.record_failure(at(61), 3); // the first has aged out
        assert!(!lockout.is_locked(at(61)));
        lockout.record_failure(at(62), 3);
        assert!(lockout.is_locked(at(62)));
        assert!(lockout.is_locked(at(121)));
        assert!(!lockout.is_locked(at(122)));

        let mut disabled = Lockout::default();
        for s in 0..100 {
            disabled.record_failure(at(s), 0);
        }
        assert!(!disabled.is_locked(at(100)));
    }

    /// The envelope writes Tencent's three fields first, then the command's, escaping ErrorInfo.
    #[test]
    fn envelope_keeps_tencent_field_order() {
        assert_eq!(
            envelope(0, "", &vec![("Robot_Account", "[]".into())]),
            r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"Robot_Account":[]}"#
        );
        assert_eq!(
            envelope(60002, "a \"b\"", &Vec::new()),
            r#"{"ActionStatus":"FAIL","ErrorInfo":"a \"b\"","ErrorCode":60002}"#
        );
    }

    /// Over TLS: create, list, delete and list again, with the envelope's field order intact.
    #[tokio::test]
    async fn robot_round_trip_creates_lists_and_deletes() {
        let (sandbox, client) = sandbox(SandboxOptions::default()).await;
        let query = signed_query();
        let path = |command: &str| format!("/v4/openim_robot_http_svc/{command}?{query}");
        let created = post(
            &client,
            &sandbox,
            &path("create_robot"),
            r#"{"UserID":"@RBT#002","Nick":"Echo","FaceUrl":"https://x/y.png","SelfSignature":"hi"}"#,
        )
        .await
        .unwrap();
        assert_eq!(created.code(), 0);
        sandbox.add_robot(super::super::tls::test_support::APP, "@RBT#001");

        let listed = post(&client, &sandbox, &path("get_all_robots"), "{}")
            .await
            .unwrap();
        assert_eq!(listed.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            std::str::from_utf8(&listed.raw).unwrap(),
            r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"Robot_Account":["@RBT#001","@RBT#002"]}"#
        );

        let deleted = post(
            &client,
            &sandbox,
            &path("delete_robot"),
            r#"{"Robot_Account":"@RBT#002"}"#,
        )
        .await
        .unwrap();
        assert_eq!(deleted.code(), 0);
        let again = post(
            &client,
            &sandbox,
            &path("delete_robot"),
            r#"{"Robot_Account":"@RBT#002"}"#,
        )
        .await
        .unwrap();
        assert_eq!(again.code(), 10004);
        assert_eq!(
            again.json["ErrorInfo"],
            "invalid parameter: robot does not exist"
        );
        assert_eq!(
            sandbox.robots(super::super::tls::test_support::APP),
            ["@RBT#001"]
        );

        let bad = post(
            &client,
            &sandbox,
            &path("create_robot"),
            r#"{"UserID":"bot"}"#,
        )
        .await
        .unwrap();
        assert_eq!(bad.code(), 10004);
        assert_eq!(bad.json["ActionStatus"], "FAIL");
    }

    /// An imported account is reported `Imported` by account_check, an unknown one `NotImported`.
    #[tokio::test]
    async fn account_check_sees_account_import() {
        let (sandbox, client) = sandbox(SandboxOptions::default()).await;
        let query = signed_query();
        let path = |command: &str| format!("/v4/im_open_login_svc/{command}?{query}");
        let imported = post(
            &client,
            &sandbox,
            &path("account_import"),
            r#"{"UserID":"alice"}"#,
        )
        .await
        .unwrap();
        assert_eq!(imported.code(), 0);
        let checked = post(
            &client,
            &sandbox,
            &path("account_check"),
            r#"{"CheckItem":[{"UserID":"alice"},{"UserID":"bob"}]}"#,
        )
        .await
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&checked.raw).unwrap(),
            concat!(
                r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"ResultItem":["#,
                r#"{"UserID":"alice","ResultCode":0,"ResultInfo":"","AccountStatus":"Imported"},"#,
                r#"{"UserID":"bob","ResultCode":0,"ResultInfo":"","AccountStatus":"NotImported"}]}"#
            )
        );
        let bad = post(
            &client,
            &sandbox,
            &path("account_check"),
            r#"{"CheckItem":"alice"}"#,
        )
        .await
        .unwrap();
        assert_eq!(bad.code(), 70402);
    }
}
