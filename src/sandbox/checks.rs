//! Request validation, in the order Tencent applies it: path, method, the five query parameters,
//! lockout, UserSig, admin, quota, injected error, JSON body (reference §1, §6).
//!
//! Each refusal is a [`CheckError`] variant: `code()` is the ErrorCode Tencent answers with and
//! `Display` is the ErrorInfo. Nothing here logs, and no variant carries a UserSig or a key.
//! The quota window ([`super::window`]) is a plain struct fed an `Instant`.
//!
//! [`tracking`] runs the same identity checks (path, the five parameters, the UserSig's
//! signature) before the sandbox keeps anything about a request (issue 7, F10).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::Method;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::robots::{self, Command, CommandError, Fields};
use super::stats::{CommandName, Tracking};
use super::{lock, unix_now, Shared};
use crate::usersig::{self, UserSigError};

/// Why the sandbox refuses a request before (or instead of) running its command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CheckError {
    #[error("HTTP parse error: the path must be /v4/{{service}}/{{command}}")]
    MalformedPath,
    #[error("HTTP parse error: the method must be POST")]
    MethodNotPost,
    #[error("HTTP parse error: the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("SDKAppID is missing or not a number")]
    MissingSdkAppId,
    #[error("SDKAppID {0} not found")]
    UnknownSdkAppId(u64),
    #[error("request parameter error: {0} is missing or empty")]
    MissingParameter(&'static str),
    #[error("HTTP parse error: contenttype must be json")]
    BadContentType,
    #[error("HTTP parse error: random must be an unsigned 32-bit integer")]
    BadRandom,
    #[error("command word error: {0} is not a known command")]
    UnknownCommand(String),
    #[error("too many failed UserSig checks: the app is blocked for 1 minute")]
    LockedOut,
    #[error("UserSig check failed: {0}")]
    UserSig(UserSigError),
    #[error("requires app admin")]
    NotAdmin,
    #[error("REST API call frequency exceeds the limit")]
    OverQuota,
    #[error("injected by the sandbox")]
    Injected(i64),
    #[error("invalid JSON: the body must be a JSON object")]
    BadJson,
}

impl CheckError {
    /// The ErrorCode Tencent answers this refusal with (reference §6).
    pub(crate) fn code(&self) -> i64 {
        match self {
            CheckError::MalformedPath
            | CheckError::MethodNotPost
            | CheckError::BodyTooLarge(_)
            | CheckError::BadContentType
            | CheckError::BadRandom => 60002,
            CheckError::MissingSdkAppId => 60012,
            CheckError::UnknownSdkAppId(_) => 70020,
            CheckError::MissingParameter(_) => 60004,
            CheckError::UnknownCommand(_) => 60009,
            CheckError::LockedOut => 70050,
            CheckError::UserSig(e) => usersig_code(e),
            CheckError::NotAdmin => 60010,
            CheckError::OverQuota => 60007,
            CheckError::Injected(code) => *code,
            CheckError::BadJson => 60003,
        }
    }
}

/// Maps a verification failure to Tencent's code for it (reference §6).
fn usersig_code(e: &UserSigError) -> i64 {
    match e {
        // An empty UserSig is refused as a missing parameter before it is ever verified; this
        // arm only keeps the mapping total.
        UserSigError::Empty => 60004,
        UserSigError::BadEncoding => 70003,
        UserSigError::BadCompression
        | UserSigError::BadJson
        | UserSigError::MissingField(_)
        | UserSigError::UnsupportedVersion(_) => 70005,
        UserSigError::SdkAppIdMismatch { .. } => 70014,
        UserSigError::IdentifierMismatch => 70013,
        UserSigError::Expired { .. } => 70001,
        UserSigError::BadSignature => 70009,
    }
}

/// Splits `/v4/{service}/{command}` into its two segments, each non-empty `[A-Za-z0-9_]`.
pub(super) fn parse_path(path: &str) -> Option<(&str, &str)> {
    let is_segment =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let (service, command) = path.strip_prefix("/v4/")?.split_once('/')?;
    (is_segment(service) && is_segment(command)).then_some((service, command))
}

/// The common parameters of a request that passed the query checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Params {
    pub sdkappid: u64,
    pub identifier: String,
    pub usersig: String,
}

/// Checks the five common parameters (reference §1) in Tencent's order: sdkappid (60012, then
/// 70020 when `is_known_app` says no), identifier and usersig (60004), contenttype and random
/// (60002). Names are case sensitive; the first occurrence of a repeated name wins.
pub(super) fn check_params(
    query: &[(String, String)],
    is_known_app: impl Fn(u64) -> bool,
) -> Result<Params, CheckError> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let sdkappid = get("sdkappid")
        .and_then(parse_digits::<u64>)
        .ok_or(CheckError::MissingSdkAppId)?;
    if !is_known_app(sdkappid) {
        return Err(CheckError::UnknownSdkAppId(sdkappid));
    }
    let identifier = get("identifier")
        .filter(|v| !v.is_empty())
        .ok_or(CheckError::MissingParameter("identifier"))?;
    let usersig = get("usersig")
        .filter(|v| !v.is_empty())
        .ok_or(CheckError::MissingParameter("usersig"))?;
    if get("contenttype") != Some("json") {
        return Err(CheckError::BadContentType);
    }
    get("random")
        .and_then(parse_digits::<u32>)
        .ok_or(CheckError::BadRandom)?;
    Ok(Params {
        sdkappid,
        identifier: identifier.to_owned(),
        usersig: usersig.to_owned(),
    })
}

/// Parses plain ASCII digits only: `str::parse` alone would also take a leading `+`.
fn parse_digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The body must be a JSON object, even when the command needs no data (reference §1: `{}`).
pub(super) fn check_body(body: &[u8]) -> Result<Map<String, Value>, CheckError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(CheckError::BadJson),
    }
}

/// Decides what the sandbox may keep about a request (issue 7, F10), before it keeps anything.
///
/// A caller is authenticated when the five common parameters pass for a configured app and
/// the UserSig's signature verifies under that app's key for that sdkappid and identifier.
/// Expiry is not looked at: an expired UserSig still proves that its sender held the key. The
/// lockout is not fed: only [`evaluate`] counts failures, once per request.
pub(super) fn tracking(shared: &Shared, path: &str, query: &[(String, String)]) -> Tracking {
    let Some((service, command)) = parse_path(path) else {
        return Tracking::Untracked;
    };
    let listed = Command::lookup(service, command).map(|(name, _, _)| name);
    let is_authenticated = check_params(query, |id| shared.apps.contains_key(&id))
        .ok()
        .and_then(|params| {
            let app = shared.apps.get(&params.sdkappid)?;
            // Now = 0 is before every expiry, so only the signature and its claims are checked.
            usersig::verify(
                &app.key,
                &params.usersig,
                params.sdkappid,
                &params.identifier,
                0,
            )
            .ok()
        })
        .is_some();
    match (listed, is_authenticated) {
        (Some(name), true) => Tracking::Recorded(CommandName::Listed(name)),
        (Some(name), false) => Tracking::Counted(name),
        (None, true) => Tracking::Recorded(CommandName::Unlisted(format!("{service}/{command}"))),
        (None, false) => Tracking::Untracked,
    }
}

/// Runs every check and then the command, in Tencent's order; each step's comment says why it
/// sits where it does.
///
/// # Errors
/// The first check that fails, or the command's refusal of the body's contents.
pub(super) fn evaluate(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    body: Result<&Bytes, CheckError>,
) -> Result<Fields, AnswerError> {
    // 1–2. Routing and HTTP framing come first: nothing else can be read without them.
    let (service, command_name) = parse_path(path).ok_or(CheckError::MalformedPath)?;
    if method != Method::POST {
        return Err(CheckError::MethodNotPost.into());
    }
    let body = body?;
    // 3. The common parameters identify the app everything after this is keyed by.
    let params = check_params(query, |id| shared.apps.contains_key(&id))?;
    let app = shared
        .apps
        .get(&params.sdkappid)
        .ok_or(CheckError::UnknownSdkAppId(params.sdkappid))?;
    let (name, command, quota) = Command::lookup(service, command_name)
        .ok_or_else(|| CheckError::UnknownCommand(format!("{service}/{command_name}")))?;
    let now = Instant::now();
    // 4. A locked app is refused before its UserSig is even looked at (reference §6, 70050).
    if lock(&app.state).lockout.is_locked(now) {
        return Err(CheckError::LockedOut.into());
    }
    // 5. Authentication; each failure counts toward the lockout.
    let clock = unix_now(shared.knobs.clock_skew_ms.load(Ordering::SeqCst));
    let minted_before = shared.knobs.expire_minted_before.load(Ordering::SeqCst);
    let verified = usersig::verify(
        &app.key,
        &params.usersig,
        params.sdkappid,
        &params.identifier,
        clock,
    )
    .and_then(|decoded| {
        // The test knob: expired as if the clock had passed it, whatever the clock says.
        if decoded.time < minted_before {
            Err(UserSigError::Expired {
                expired_at: decoded.expires_at(),
            })
        } else {
            Ok(decoded)
        }
    });
    if let Err(e) = verified {
        lock(&app.state)
            .lockout
            .record_failure(now, shared.lockout_after_failures);
        return Err(CheckError::UserSig(e).into());
    }
    // 6. Authorisation, once the identity is proven.
    if !app.admins.contains(&params.identifier) {
        return Err(CheckError::NotAdmin.into());
    }
    // 7. Only authenticated admin calls reach the frequency limit, and every one that does
    // counts, refused or not, so the window is exactly what the gateway sent.
    // Keyed by a configured app and a catalogue name: a fixed set, whatever clients send.
    let in_window = lock(&shared.quota)
        .entry((params.sdkappid, name))
        .or_default()
        .arrive(now);
    if in_window > shared.quota_per_second.unwrap_or(quota) as usize {
        return Err(CheckError::OverQuota.into());
    }
    // 8. Injected errors stand in for Tencent-side failures of a request that was valid.
    if let Some(code) = shared.knobs.take_injection(name) {
        return Err(CheckError::Injected(code).into());
    }
    // 9. Only now is the body's content looked at, then the command runs.
    let body = check_body(body)?;
    Ok(robots::execute(command, &body, &mut lock(&app.state))?)
}

/// Why a request got a FAIL answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum AnswerError {
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error(transparent)]
    Command(#[from] CommandError),
}

impl AnswerError {
    pub(super) fn code(&self) -> i64 {
        match self {
            AnswerError::Check(e) => e.code(),
            AnswerError::Command(e) => e.code(),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::super::tls::test_support::{
        admin_sig, app, code, query_for, query_for_app, sandbox, send, sig_for, signed_query, APP,
        KEY, OTHER_APP,
    };
    use super::super::{SandboxApp, SandboxOptions};
    use super::*;
    use crate::usersig::SecretKey;

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Only `/v4/` plus two non-empty `[A-Za-z0-9_]` segments is a well-formed path.
    #[test]
    fn parse_path_accepts_only_two_word_segments() {
        let cases = [
            ("/v4/openim_robot_http_svc/get_all_robots", true),
            ("/v4/ConfigSvc/GetIPList", true),
            ("/v4/a/b/c", false),
            ("/v4/a/", false),
            ("/v4//b", false),
            ("/v4/a-b/c", false),
            ("/v3/a/b", false),
            ("/v4/a", false),
            ("/", false),
            ("", false),
        ];
        for (path, is_ok) in cases {
            assert_eq!(parse_path(path).is_some(), is_ok, "{path}");
        }
    }

    /// Every malformed common parameter maps to its own Tencent code, in Tencent's order.
    #[test]
    fn check_params_maps_each_fault_to_its_code() {
        let known = |id: u64| id == 1_400_000_000;
        let good = [
            ("sdkappid", "1400000000"),
            ("identifier", "administrator"),
            ("usersig", "sig"),
            ("random", "4294967295"),
            ("contenttype", "json"),
        ];
        let with = |name: &str, value: Option<&str>| {
            let mut q: Vec<(&str, &str)> =
                good.iter().copied().filter(|(n, _)| *n != name).collect();
            if let Some(v) = value {
                q.push((name, v));
            }
            owned(&q)
        };
        #[rustfmt::skip]
        let cases = [
            ("ok", owned(&good), None),
            ("no sdkappid", with("sdkappid", None), Some(60012)),
            ("sdkappid text", with("sdkappid", Some("abc")), Some(60012)),
            ("sdkappid plus", with("sdkappid", Some("+1400000000")), Some(60012)),
            ("sdkappid overflow", with("sdkappid", Some("99999999999999999999")), Some(60012)),
            ("unknown app", with("sdkappid", Some("1400000001")), Some(70020)),
            ("no identifier", with("identifier", None), Some(60004)),
            ("empty identifier", with("identifier", Some("")), Some(60004)),
            ("no usersig", with("usersig", None), Some(60004)),
            ("empty usersig", with("usersig", Some("")), Some(60004)),
            ("no contenttype", with("contenttype", None), Some(60002)),
            ("JSON uppercase", with("contenttype", Some("JSON")), Some(60002)),
            ("no random", with("random", None), Some(60002)),
            ("random too big", with("random", Some("4294967296")), Some(60002)),
            ("random negative", with("random", Some("-1")), Some(60002)),
            ("random zero", with("random", Some("0")), None),
        ];
        for (name, query, expected) in cases {
            assert_eq!(
                check_params(&query, known).err().map(|e| e.code()),
                expected,
                "{name}"
            );
        }
        let renamed = owned(&[("SdkAppId", "1400000000"), ("identifier", "administrator")]);
        assert_eq!(
            check_params(&renamed, known),
            Err(CheckError::MissingSdkAppId)
        );
    }

    /// Each UserSig fault has the code of reference §6.
    #[test]
    fn usersig_errors_map_to_tencent_codes() {
        let cases = [
            (UserSigError::Empty, 60004),
            (UserSigError::BadEncoding, 70003),
            (UserSigError::BadCompression, 70005),
            (UserSigError::BadJson, 70005),
            (UserSigError::MissingField("TLS.sig"), 70005),
            (UserSigError::UnsupportedVersion("1.0".into()), 70005),
            (
                UserSigError::SdkAppIdMismatch {
                    expected: 1,
                    found: 2,
                },
                70014,
            ),
            (UserSigError::IdentifierMismatch, 70013),
            (UserSigError::Expired { expired_at: 1 }, 70001),
            (UserSigError::BadSignature, 70009),
        ];
        for (e, code) in cases {
            assert_eq!(CheckError::UserSig(e.clone()).code(), code, "{e:?}");
        }
    }

    /// Over real TLS, each check answers its exact ErrorCode with HTTP 200 and FAIL, in
    /// Tencent's order; every well-formed path is counted, the unknown command included.
    #[tokio::test]
    async fn each_check_answers_its_code_over_tls() {
        let options = SandboxOptions {
            lockout_after_failures: 0,
            ..SandboxOptions::default()
        };
        let (sandbox, client) = sandbox(options).await;
        let sig = admin_sig();
        let rest = format!("usersig={sig}&random=1&contenttype=json");
        let other_key = usersig::mint(&SecretKey::new("k"), APP, "administrator", unix_now(0), 60);
        let robots = "/v4/openim_robot_http_svc/get_all_robots";
        let post = Method::POST;
        #[rustfmt::skip]
        let cases = [
            (post.clone(), "/v4/bad-service/x".to_owned(), signed_query(), "{}", 60002),
            (post.clone(), "/v3/profile/portrait_get".into(), signed_query(), "{}", 60002),
            (Method::GET, robots.into(), signed_query(), "{}", 60002),
            (post.clone(), robots.into(), format!("identifier=administrator&{rest}"), "{}", 60012),
            (post.clone(), robots.into(), format!("sdkappid=14x&identifier=administrator&{rest}"), "{}", 60012),
            (post.clone(), robots.into(), format!("sdkappid=1400000001&identifier=administrator&{rest}"), "{}", 70020),
            (post.clone(), robots.into(), format!("sdkappid={APP}&{rest}"), "{}", 60004),
            (post.clone(), robots.into(), query_for("administrator", ""), "{}", 60004),
            (post.clone(), robots.into(), signed_query().replace("=json", "=text"), "{}", 60002),
            (post.clone(), robots.into(), format!("sdkappid={APP}&identifier=administrator&usersig={sig}&random=-1&contenttype=json"), "{}", 60002),
            (post.clone(), "/v4/profile/no_such_cmd".into(), signed_query(), "{}", 60009),
            (post.clone(), robots.into(), query_for("administrator", "not+base64!"), "{}", 70003),
            (post.clone(), robots.into(), query_for("administrator", "aGVsbG8gd29ybGQ_"), "{}", 70005),
            (post.clone(), robots.into(), query_for("administrator", &sig_for(APP + 1, "administrator")), "{}", 70014),
            (post.clone(), robots.into(), query_for("administrator", &sig_for(APP, "admin")), "{}", 70013),
            (post.clone(), robots.into(), query_for("administrator", other_key.expose()), "{}", 70009),
            (post.clone(), robots.into(), query_for("xiaojun", &sig_for(APP, "xiaojun")), "{}", 60010),
            (post.clone(), robots.into(), signed_query(), "not json", 60003),
            (post.clone(), robots.into(), signed_query(), "[]", 60003),
            (post.clone(), robots.into(), signed_query(), "", 60003),
        ];
        for (method, path, query, body, code) in cases {
            let uri = format!("{}{path}?{query}", sandbox.endpoint());
            let reply = send(&client, method.clone(), &uri, body)
                .await
                .expect("the sandbox answers");
            assert_eq!(reply.status, 200);
            assert_eq!(
                reply.json["ActionStatus"], "FAIL",
                "{method} {path}?{query} {body}"
            );
            assert_eq!(reply.code(), code, "{method} {path}?{query} {body}");
        }
        assert_eq!(sandbox.calls("openim_robot_http_svc/get_all_robots"), 17);
        assert_eq!(sandbox.calls("profile/no_such_cmd"), 1);
        assert_eq!(sandbox.total_calls(), 20);
    }

    /// A UserSig past its expiry on the sandbox's skewed clock answers 70001, and valid again
    /// once the skew is removed.
    #[tokio::test]
    async fn expired_usersig_answers_70001_via_clock_skew() {
        let (sandbox, client) = sandbox(SandboxOptions::default()).await;
        let short_lived =
            usersig::mint(&SecretKey::new(KEY), APP, "administrator", unix_now(0), 60);
        let path = format!(
            "/v4/openim_robot_http_svc/get_all_robots?{}",
            query_for("administrator", short_lived.expose())
        );
        sandbox.set_clock_skew(120_000);
        assert_eq!(code(&client, &sandbox, &path, "{}").await, 70001);
        sandbox.set_clock_skew(0);
        assert_eq!(code(&client, &sandbox, &path, "{}").await, 0);
    }

    /// A UserSig minted before the knob's second answers 70001 although its lifetime has not
    /// run out; one minted in that second or later passes.
    #[tokio::test]
    async fn usersigs_minted_before_the_knob_answer_70001() {
        let (sandbox, client) = sandbox(SandboxOptions::default()).await;
        let minted = unix_now(0);
        let usersig = usersig::mint(&SecretKey::new(KEY), APP, "administrator", minted, 60);
        let path = format!(
            "/v4/openim_robot_http_svc/get_all_robots?{}",
            query_for("administrator", usersig.expose())
        );
        sandbox.expire_usersigs_minted_before(minted + 1);
        assert_eq!(code(&client, &sandbox, &path, "{}").await, 70001);
        sandbox.expire_usersigs_minted_before(minted);
        assert_eq!(code(&client, &sandbox, &path, "{}").await, 0);
    }

    /// After three failed UserSig checks the app answers 70050 even to a valid UserSig, while
    /// another app on the same sandbox is unaffected.
    #[tokio::test]
    async fn repeated_usersig_failures_lock_the_app_out() {
        let options = SandboxOptions {
            apps: vec![
                app(),
                SandboxApp {
                    sdkappid: OTHER_APP,
                    key: SecretKey::new(KEY),
                    admins: vec!["admin".into()],
                },
            ],
            lockout_after_failures: 3,
            ..SandboxOptions::default()
        };
        let (sandbox, client) = sandbox(options).await;
        let path = |sig: &str| {
            format!(
                "/v4/profile/portrait_get?{}",
                query_for("administrator", sig)
            )
        };
        let good = path(&admin_sig());
        let wrong_key = usersig::mint(
            &SecretKey::new("wrong"),
            APP,
            "administrator",
            unix_now(0),
            60,
        );
        let bad = path(wrong_key.expose());
        let mut seen = Vec::new();
        for path in [&bad, &bad, &good, &bad, &good, &bad] {
            seen.push(code(&client, &sandbox, path, "{}").await);
        }
        assert_eq!(seen, [70009, 70009, 0, 70009, 70050, 70050]);

        let other = query_for_app(OTHER_APP, "admin", &sig_for(OTHER_APP, "admin"));
        let other = format!("/v4/profile/portrait_get?{other}");
        assert_eq!(code(&client, &sandbox, &other, "{}").await, 0);
    }

    /// With a quota of 5, the 6th call within one second answers 60007 and the window reports 6;
    /// another command keeps its own budget. Six sequential loopback calls take a few
    /// milliseconds (the TLS handshake included), far inside the 1 s window.
    #[tokio::test]
    async fn sixth_call_within_a_second_answers_60007() {
        let options = SandboxOptions {
            quota_per_second: Some(5),
            ..SandboxOptions::default()
        };
        let (sandbox, client) = sandbox(options).await;
        let query = signed_query();
        let path = format!("/v4/profile/portrait_get?{query}");
        let mut codes = Vec::new();
        for _ in 0..6 {
            codes.push(code(&client, &sandbox, &path, "{}").await);
        }
        assert_eq!(codes, [0, 0, 0, 0, 0, 60007]);
        assert_eq!(sandbox.max_calls_in_window("profile/portrait_get"), 6);
        let other = format!("/v4/openim/sendmsg?{query}");
        assert_eq!(code(&client, &sandbox, &other, "{}").await, 0);
    }
}
