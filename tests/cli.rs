//! The binary itself: a real process, real sockets, real signals, and its log output.

mod support;

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tim_gateway::usersig::{self, SecretKey};

const BIN: &str = env!("CARGO_BIN_EXE_tim-gateway");

/// A `tim-gateway serve` child process whose stderr is collected line by line.
struct Served {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Served {
    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit status.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Give the reader thread a moment to drain the pipe after exit.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tim-gateway serve` in front of `sandbox` with RUST_LOG=trace and a key file.
fn serve(sandbox: &tim_gateway::sandbox::Sandbox, key: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sandbox.ca_pem()).unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let config = dir.path().join("gateway.toml");
    let mut toml = gateway_toml(
        &sandbox.endpoint(),
        &ca.display().to_string(),
        &Extra::default(),
    );
    toml.push_str(&format!("secret_key_file = \"{}\"\n", key_file.display()));
    std::fs::File::create(&config)
        .unwrap()
        .write_all(toml.as_bytes())
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .env_remove("TIM_GATEWAY_SECRET_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("client listener bound") {
                if let Some(addr) = line.split("addr=").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or_default();
                    let _ = addr_tx.send(addr.parse::<SocketAddr>());
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no listen line; log: {}", log.lock().unwrap().join("\n")))
        .expect("a socket address in the listen line");
    Served {
        child,
        log,
        addr,
        _dir: dir,
    }
}

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
