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
        let err =
            execute(Command::CreateRobot, &object(body.clone()), &mut state).expect_err("refused");
        assert_eq!(err.code(), 10004, "{body}");
        assert!(state.robots.is_empty());
    }
    let exactly_32 = format!("@RBT#{}", "x".repeat(27));
    let mut state = AppState::default();
    execute(
        Command::CreateRobot,
        &object(json!({"UserID": exactly_32, "Nick": "n", "FaceUrl": "f", "SelfSignature": "s"})),
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
