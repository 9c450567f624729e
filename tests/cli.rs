//! The binary itself: a real process, real sockets, real signals, and its log output.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::process::*;
use support::*;
use tim_gateway::usersig::{self, SecretKey};

/// At trace level, after real traffic (success, re-mint, bad input), the log holds neither the
/// secret key nor any UserSig the upstream received; SIGTERM then exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn logs_never_contain_the_key_or_a_usersig() {
    let sandbox = start_sandbox().await;
    let served = serve(&sandbox, KEY);
    assert_eq!(
        post(served.addr, CREATE_ROBOT, r#"{"UserID":"@RBT#log"}"#)
            .await
            .error_code(),
        0
    );
    sandbox.inject_error(GET_ALL_ROBOTS, 70052, 1);
    assert_eq!(
        post(served.addr, GET_ALL_ROBOTS, "{}").await.error_code(),
        0
    );
    assert_eq!(post(served.addr, CREATE_ROBOT, "nope").await.status, 400);

    let (status, log) = served.terminate();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(
        log.contains("cache=BYPASS") && log.contains("error_code=0"),
        "request lines are logged:\n{log}"
    );
    assert!(!log.contains(KEY), "the secret key leaked into the log");
    let mut usersigs: Vec<String> = Vec::new();
    for command in [CREATE_ROBOT, GET_ALL_ROBOTS] {
        for request in sandbox.requests(command) {
            usersigs.extend(
                request
                    .query
                    .iter()
                    .filter(|(k, _)| k == "usersig")
                    .map(|(_, v)| v.clone()),
            );
        }
    }
    assert_eq!(
        usersigs.len(),
        3,
        "create, rejected get, retried get, and nothing else"
    );
    for usersig in usersigs {
        assert!(!log.contains(&usersig), "a UserSig leaked into the log");
        // A fragment would be as bad as the whole: check a 24-byte window from its middle too.
        assert!(!log.contains(&usersig[40..64]));
    }
}

/// A wrong secret key is explained in an error log line naming Tencent's 70009, once.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_key_is_logged_as_a_configuration_error() {
    let sandbox = start_sandbox().await;
    let served = serve(&sandbox, "this-is-not-the-key");
    for _ in 0..3 {
        assert_eq!(
            post(served.addr, GET_ALL_ROBOTS, "{}").await.error_code(),
            70009
        );
    }
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 3);
    let (_, log) = served.terminate();
    let alarms: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("configuration error"))
        .collect();
    assert_eq!(
        alarms.len(),
        1,
        "one alarm per 10 s, not one per request:\n{log}"
    );
    assert!(
        alarms[0].contains("70009") && alarms[0].contains("secret key"),
        "{}",
        alarms[0]
    );
    assert!(!log.contains("this-is-not-the-key"));
}

/// SIGTERM drains gracefully: readiness flips to 503 at once, new connections are refused,
/// a call already sent upstream finishes with its real answer, a request waiting for a
/// throttle permit gets a clean 503 envelope, and the process exits 0. Margins: the waiting
/// request waits on a 20 s pause (it cannot slip through before the signal), the upstream
/// answers after 2 s, and the grace period is 10 s. The gateway runs one worker (tokio's
/// single-threaded runtime); the other process tests run the default, one worker per CPU
/// (the multi-thread runtime on a machine with more than one).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_zero() {
    let sandbox = start_sandbox().await;
    let served = serve_with(
        &sandbox,
        KEY,
        Extra {
            // One worker: the single-threaded runtime drains as the multi-thread one does.
            server: "shutdown_grace = \"10s\"\nworker_threads = 1",
            upstream: r#"deadline = "40s""#,
            tail: "[throttle]\nmax_wait = \"30s\"\nbackoff_base = \"20s\"\nbackoff_max = \"20s\"\n",
            ..Extra::default()
        },
    );
    let (addr, admin) = (served.addr, served.admin);
    assert_eq!(call_raw(admin, "/readyz").await, Some(200));

    // Tencent says account_check is too frequent: the gateway pauses that command for 20 s.
    sandbox.inject_error(ACCOUNT_CHECK, 60018, 1);
    assert_eq!(
        post(addr, ACCOUNT_CHECK, CHECK_BODY).await.error_code(),
        60018
    );
    sandbox.set_latency(Duration::from_secs(2));
    let in_flight =
        tokio::spawn(async move { post(addr, CREATE_ROBOT, r#"{"UserID":"@RBT#drain"}"#).await });
    eventually("the write upstream", || sandbox.calls(CREATE_ROBOT) == 1).await;
    let waiting = tokio::spawn(async move { post(addr, ACCOUNT_CHECK, CHECK_BODY).await });
    let waiting_since = Instant::now();
    while !metric_line(admin, "tim_gateway_throttle_waiters{")
        .await
        .ends_with(" 1")
    {
        assert!(
            waiting_since.elapsed() < Duration::from_secs(10),
            "no waiter showed up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    served.send_sigterm();
    let signalled = Instant::now();
    let mut readiness = call_raw(admin, "/readyz").await;
    while readiness == Some(200) {
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "readiness never flipped"
        );
        readiness = call_raw(admin, "/readyz").await;
    }
    assert_eq!(readiness, Some(503), "not ready while draining");
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        refused,
        "new client connections are refused during the drain"
    );

    let waited = waiting.await.unwrap();
    assert_eq!(
        (waited.status, waited.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, 1_905_005)
    );
    let finished = in_flight.await.unwrap();
    assert_eq!(
        (finished.status, finished.error_code()),
        (StatusCode::OK, 0)
    );
    let (status, log) = served.wait_exit();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        sandbox.calls(ACCOUNT_CHECK),
        1,
        "the waiter never reached Tencent"
    );
    // Both requests answered during the drain have their access lines.
    for answered in [
        format!("command={CREATE_ROBOT} cache=BYPASS status=200 error_code=0 "),
        format!("command={ACCOUNT_CHECK} cache=BYPASS status=503 error_code=1905005 "),
    ] {
        assert!(log.contains(&answered), "{answered}:\n{log}");
    }
}

/// The access log writes one line per request in either log format, with the fields in
/// tracing's order, and a request answered just before SIGTERM still has its line when the
/// process has exited (the batched lines are handed over at exit).
#[tokio::test(flavor = "multi_thread")]
async fn access_lines_are_written_in_both_formats_up_to_exit() {
    let sandbox = start_sandbox().await;
    for format in ["human", "json"] {
        let served = serve_with_env(
            &sandbox,
            KEY,
            &[("RUST_LOG", "info"), ("TIM_GATEWAY_LOG_FORMAT", format)],
        );
        for _ in 0..2 {
            assert_eq!(
                post(served.addr, GET_ALL_ROBOTS, "{}").await.error_code(),
                0
            );
        }
        assert_eq!(post(served.addr, CREATE_ROBOT, "nope").await.status, 400);
        let (status, log) = served.terminate();
        assert!(
            status.success(),
            "{format}: exit status {status:?}; log:\n{log}"
        );
        let access: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("tim_gateway::access"))
            .collect();
        assert_eq!(access.len(), 3, "{format}: one line per request:\n{log}");
        // Lines come in batches per thread, so requests served by different workers may be
        // logged out of order: find each by its content.
        let find = |needle: &str| {
            *access
                .iter()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{format}: no line with {needle}:\n{log}"))
        };
        if format == "human" {
            let hit = find("cache=HIT");
            assert!(
                hit.contains(&format!(
                    "  INFO tim_gateway::access: request request_id={} app=main command={GET_ALL_ROBOTS} cache=HIT status=200 error_code=0 latency_us=",
                    hit.split("request_id=").nth(1).unwrap().split(' ').next().unwrap()
                )),
                "{hit}"
            );
            let refused = find("status=400");
            assert!(
                refused.contains(&format!(
                    "method=POST path=/v4/{CREATE_ROBOT} app=main command={CREATE_ROBOT} cache=BYPASS status=400 error_code=1904005"
                )),
                "{refused}"
            );
        } else {
            // The keys, in the order the line has them (serde_json's map would sort them).
            let keys = |l: &str| -> Vec<String> {
                let value: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(l).expect("a JSON object per line");
                let mut keys: Vec<String> = value.keys().cloned().collect();
                keys.sort_by_key(|k| l.find(&format!("\"{k}\":")));
                keys
            };
            let hit = find(r#""cache":"HIT","status":200,"error_code":0,"#);
            let hit_keys = [
                "timestamp",
                "level",
                "message",
                "request_id",
                "app",
                "command",
                "cache",
                "status",
                "error_code",
                "latency_us",
                "target",
            ];
            assert_eq!(keys(hit), hit_keys, "{hit}");
            let refused = find(r#""status":400"#);
            let refused_keys = [
                "timestamp",
                "level",
                "message",
                "request_id",
                "method",
                "path",
                "app",
                "command",
                "cache",
                "status",
                "error_code",
                "latency_us",
                "error",
                "target",
            ];
            assert_eq!(keys(refused), refused_keys, "{refused}");
        }
    }
}

/// `RUST_LOG=info,tim_gateway::access=warn` turns the access log off and keeps the rest.
#[tokio::test(flavor = "multi_thread")]
async fn rust_log_turns_the_access_log_off() {
    let sandbox = start_sandbox().await;
    let served = serve_with_env(
        &sandbox,
        KEY,
        &[("RUST_LOG", "info,tim_gateway::access=warn")],
    );
    assert_eq!(
        post(served.addr, GET_ALL_ROBOTS, "{}").await.error_code(),
        0
    );
    let (status, log) = served.terminate();
    assert!(status.success());
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(!log.contains("tim_gateway::access"), "{log}");
}

/// The first line of `/metrics` that starts with `prefix`, or "" if none does.
async fn metric_line(admin: SocketAddr, prefix: &str) -> String {
    support::metrics_text(admin)
        .await
        .lines()
        .find(|l| l.starts_with(prefix) && l.contains(ACCOUNT_CHECK))
        .unwrap_or_default()
        .to_owned()
}

/// The status of `GET path`, or `None` if the connection failed.
async fn call_raw(addr: SocketAddr, path: &str) -> Option<u16> {
    client()
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// `tim-gateway usersig` prints a UserSig that verifies, and with --time reproduces the
/// reference's TLS.sig.
#[test]
fn usersig_subcommand_mints_a_verifiable_usersig() {
    let output = Command::new(BIN)
        .args([
            "usersig",
            "--sdkappid",
            "1400000000",
            "--identifier",
            "administrator",
            "--expire",
            "86400",
            "--time",
            "1700000000",
        ])
        .env("TIM_GATEWAY_SECRET_KEY", KEY)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    let decoded = usersig::verify(
        &SecretKey::new(KEY),
        printed.trim(),
        SDKAPPID,
        ADMIN,
        1_700_000_001,
    )
    .unwrap();
    assert_eq!(decoded.sig, "yLAe+w7WUeUuqbV9h/TX78u21oTGi+i9Zp1u3PpnY60=");

    let no_key = Command::new(BIN)
        .args(["usersig", "--sdkappid", "1", "--identifier", "a"])
        .env_remove("TIM_GATEWAY_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(no_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("TIM_GATEWAY_SECRET_KEY"));
}

/// `check-config` explains every problem of a bad file in one run and exits 2; the shipped
/// example passes.
#[test]
fn check_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[server]
listen = "0.0.0.0:8080"

[upstream]
request_timeout = "soon"

[apps.main]
sdkappid = 1400000000
region = "mars"
"#,
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .env_remove("TIM_GATEWAY_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    for expected in [
        "server.listen",
        "upstream.request_timeout",
        "apps.main.region",
        "TIM_GATEWAY_SECRET_KEY",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}

/// `check-config` prints the effective worker threads: one per CPU the process may use by
/// default, or what `TIM_GATEWAY__SERVER__WORKER_THREADS` sets.
#[test]
fn check_config_prints_the_worker_threads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.toml");
    std::fs::write(
        &file,
        "[apps.main]\nsdkappid = 1400000000\nregion = \"singapore\"\n",
    )
    .unwrap();
    let check = |threads: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["check-config", "--config"])
            .arg(&file)
            .env("TIM_GATEWAY_SECRET_KEY", "k")
            .env_remove("TIM_GATEWAY__SERVER__WORKER_THREADS");
        if let Some(threads) = threads {
            command.env("TIM_GATEWAY__SERVER__WORKER_THREADS", threads);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(output.status.code(), Some(0), "{stdout}");
        stdout
    };
    let cpus = std::thread::available_parallelism().unwrap().get();
    let default = format!("server.worker_threads = {cpus} (default: {cpus} CPUs available)\n");
    let text = check(None);
    assert!(text.contains(&default), "{text}");
    let text = check(Some("5"));
    assert!(text.contains("server.worker_threads = 5\n"), "{text}");
}

/// A config whose only gap is the secret key (a file that is not there, as in CI).
fn config_without_its_key(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("ci.toml");
    std::fs::write(
        &path,
        "[apps.main]\nsdkappid = 1400000000\nregion = \"singapore\"\n\
         secret_key_file = \"/run/secrets/not-here\"\n",
    )
    .unwrap();
    path
}

/// `check-config --no-secrets` checks everything but the secret keys themselves, so CI can
/// run it without the real secret: valid (exit 0, saying so); without the flag the missing
/// key file is a problem (exit 2).
#[test]
fn check_config_without_secrets_runs_in_ci() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_without_its_key(dir.path());
    let checked = Command::new(BIN)
        .args(["check-config", "--no-secrets", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("valid; 1 app(s)"), "{stdout}");
    assert!(
        stdout.contains("secret keys were not read (--no-secrets)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/run/secrets/not-here"),
        "its source is shown: {stdout}"
    );
    let strict = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&strict.stderr)
        .contains("apps.main.secret_key_file: cannot read /run/secrets/not-here"));
}

/// With `--log-format json`, an invalid configuration is one JSON log line per problem
/// (key and problem as fields), like every other line a gateway writes; a config file that
/// cannot be read is one line too.
#[test]
fn fatal_config_errors_follow_the_log_format() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"nope\"\n[apps.main]\nsdkappid = 1400000000\nregion = \"mars\"\n",
    )
    .unwrap();
    for (args, problems) in [
        (vec!["--log-format", "json", "check-config", "--config"], 2),
        (vec!["--log-format", "json", "serve", "--config"], 2),
    ] {
        let output = Command::new(BIN)
            .args(&args)
            .arg(&bad)
            .env("TIM_GATEWAY_SECRET_KEY", KEY)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<serde_json::Value> = stderr
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert_eq!(lines.len(), problems, "{stderr}");
        let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["apps.main.region", "server.listen"], "{stderr}");
        assert!(lines
            .iter()
            .all(|l| l["level"] == "ERROR" && l["message"] == "invalid configuration"));
    }
    let missing = Command::new(BIN)
        .args(["--log-format", "json", "serve", "--config"])
        .arg(dir.path().join("absent.toml"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&missing.stderr).trim()).unwrap();
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("cannot read config file"),
        "{line}"
    );
}

/// Output piped into a reader that has gone (`check-config | head -0`) ends the command
/// quietly with exit 0, not a panic on the broken pipe.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_without_its_key(dir.path());
    for args in [
        vec![
            "check-config",
            "--no-secrets",
            "--config",
            config.to_str().unwrap(),
        ],
        vec!["catalogue"],
    ] {
        // A pipe whose reading end is closed before the command writes anything.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(BIN)
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A rotated secret key file is in use within seconds, without a restart: a gateway started
/// with a wrong key gets Tencent's 70009; once the file holds the right key (replaced by a
/// rename, as the kubelet swaps a Secret), calls succeed within 5 s, a UserSig is minted with
/// the new key (`reason="key_rotated"`), and the log says so without quoting either key.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_file_is_used_without_a_restart() {
    let sandbox = start_sandbox().await;
    let served = serve(&sandbox, "the-old-wrong-key");
    assert_eq!(
        post(served.addr, GET_ALL_ROBOTS, "{}").await.error_code(),
        70009
    );
    let fresh = served.key_file.with_extension("new");
    std::fs::write(&fresh, format!("{KEY}\n")).unwrap();
    std::fs::rename(&fresh, &served.key_file).unwrap();
    let rotated = Instant::now();
    loop {
        let code = post(served.addr, GET_ALL_ROBOTS, "{}").await.error_code();
        if code == 0 {
            break;
        }
        assert_eq!(code, 70009);
        assert!(
            rotated.elapsed() < Duration::from_secs(5),
            "still the old key 5 s after the rotation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = support::metrics_text(served.admin).await;
    assert!(
        metrics
            .contains("tim_gateway_usersig_mints_total{app=\"main\",reason=\"key_rotated\"} 1\n"),
        "{metrics}"
    );
    let (_, log) = served.terminate();
    assert!(
        log.contains("the secret key file changed: signing with the new key"),
        "{log}"
    );
    assert!(!log.contains(KEY) && !log.contains("the-old-wrong-key"));
}

/// `server.listen = "unix:/path"`: the client listener is a unix socket (an `emptyDir` shared
/// by a pod's containers), with permissions `server.listen_mode`; a client on it is served
/// as on TCP (curl --unix-socket sends `Host: localhost`), and a stale socket file left by a
/// gateway that is gone is replaced at start.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_listener_can_be_a_unix_socket() {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gateway.sock");
    // A stale socket: bound once, its listener gone.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let listen = format!("unix:{}", socket.display());
    let served = serve_with_env(
        &sandbox,
        KEY,
        &[
            ("TIM_GATEWAY__SERVER__LISTEN", listen.as_str()),
            ("TIM_GATEWAY__SERVER__LISTEN_MODE", "0600"),
        ],
    );
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    for code in post_robots_over(stream, 2).await {
        assert_eq!(code, 0);
    }
    assert_eq!(
        sandbox.calls(GET_ALL_ROBOTS),
        1,
        "the second was a cache hit"
    );
    let (status, log) = served.terminate();
    assert!(status.success(), "{log}");
    assert!(
        log.contains(&format!("addr=unix:{}", socket.display())),
        "{log}"
    );
}

/// `times` POSTs of `{}` to get_all_robots over one HTTP/1.1 connection on `io` (a unix
/// socket, TLS): each answer must be 200; their ErrorCodes.
async fn post_robots_over<I>(io: I, times: usize) -> Vec<i64>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut codes = Vec::new();
    for _ in 0..times {
        let request = http::Request::post(format!("/v4/{GET_ALL_ROBOTS}"))
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        codes.push(json["ErrorCode"].as_i64().unwrap());
    }
    codes
}

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM, DER).
fn self_signed() -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// One HTTPS request to `addr` trusting `roots`: the answer's ErrorCode and the certificate
/// the server presented.
async fn https_post(addr: SocketAddr, roots: &[Vec<u8>]) -> (i64, Vec<u8>) {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (post_robots_over(tls, 1).await[0], presented)
}

/// With `server.tls_cert_file` and `server.tls_key_file` the client listener speaks HTTPS
/// (for SDKs that only do `https://`); a renewed certificate on disk is presented to new
/// connections within 12 s (read every 5 s), without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_listener_speaks_https_and_follows_a_renewed_certificate() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (cert, key, first) = self_signed();
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let served = serve_with_env(
        &sandbox,
        KEY,
        &[
            (
                "TIM_GATEWAY__SERVER__TLS_CERT_FILE",
                cert_file.to_str().unwrap(),
            ),
            (
                "TIM_GATEWAY__SERVER__TLS_KEY_FILE",
                key_file.to_str().unwrap(),
            ),
        ],
    );
    let (code, presented) = https_post(served.addr, std::slice::from_ref(&first)).await;
    assert_eq!((code, presented == first), (0, true));

    let (cert, key, second) = self_signed();
    for (path, text) in [(&key_file, key), (&cert_file, cert)] {
        let fresh = path.with_extension("new");
        std::fs::write(&fresh, text).unwrap();
        std::fs::rename(&fresh, path).unwrap();
    }
    let renewed = Instant::now();
    loop {
        let (code, presented) = https_post(served.addr, &[first.clone(), second.clone()]).await;
        assert_eq!(code, 0);
        if presented == second {
            break;
        }
        assert!(
            renewed.elapsed() < Duration::from_secs(12),
            "still the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, log) = served.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("the TLS certificate changed"), "{log}");
}
