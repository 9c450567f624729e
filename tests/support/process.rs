//! A real `tim-gateway serve` process in front of a sandbox, with its stderr collected.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::{gateway_toml, Extra};

pub const BIN: &str = env!("CARGO_BIN_EXE_tim-gateway");

/// A `tim-gateway serve` child process whose stderr is collected line by line.
pub struct Served {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The secret key file the gateway reads (and follows: tests may replace it).
    pub key_file: std::path::PathBuf,
    /// The config file it was started with (tests may rewrite it and reload).
    pub config: std::path::PathBuf,
    /// Disconnects when the reader has seen the end of stderr: the process has exited and
    /// every line it wrote is in `log`.
    log_closed: mpsc::Receiver<()>,
    _dir: tempfile::TempDir,
}

impl Served {
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit status.
    pub fn terminate(self) -> (std::process::ExitStatus, String) {
        self.send_sigterm();
        self.wait_exit()
    }

    /// Sends SIGHUP: reload the configuration.
    pub fn send_sighup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits (at most 20 s) for the process to exit; returns its status and whole log.
    pub fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        // stderr reaches its end when the process exits (nothing else holds the pipe), so
        // once the reader is done the log is complete and `wait` returns at once.
        match self.log_closed.recv_timeout(Duration::from_secs(20)) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
            _ => panic!("gateway did not exit; log: {}", self.log_text()),
        }
        let status = self.child.wait().expect("the exit status");
        (status, self.log_text())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tim-gateway serve` in front of `sandbox` with RUST_LOG=trace and a key file.
pub fn serve(sandbox: &tim_gateway::sandbox::Sandbox, key: &str) -> Served {
    serve_with(sandbox, key, Extra::default())
}

/// As [`serve`], with extra configuration (`extra.key` is ignored: the key goes in a file).
pub fn serve_with(sandbox: &tim_gateway::sandbox::Sandbox, key: &str, extra: Extra<'_>) -> Served {
    serve_limited(sandbox, key, extra, None)
}

/// As [`serve_with`]; with `nofile`, the process starts with that open-files limit (soft
/// and hard, set by the shell's `ulimit -n` before it execs the gateway).
pub fn serve_limited(
    sandbox: &tim_gateway::sandbox::Sandbox,
    key: &str,
    extra: Extra<'_>,
    nofile: Option<u32>,
) -> Served {
    spawn(sandbox, key, extra, nofile, &[])
}

/// As [`serve`], with these environment variables set too (`RUST_LOG`,
/// `TIM_GATEWAY_LOG_FORMAT`, …).
pub fn serve_with_env(
    sandbox: &tim_gateway::sandbox::Sandbox,
    key: &str,
    env: &[(&str, &str)],
) -> Served {
    spawn(sandbox, key, Extra::default(), None, env)
}

fn spawn(
    sandbox: &tim_gateway::sandbox::Sandbox,
    key: &str,
    extra: Extra<'_>,
    nofile: Option<u32>,
    env: &[(&str, &str)],
) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sandbox.ca_pem()).unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let config = dir.path().join("gateway.toml");
    let app = format!(
        "{}\nsecret_key_file = \"{}\"\n",
        extra.app,
        key_file.display()
    );
    let toml = gateway_toml(
        &sandbox.endpoint(),
        &ca.display().to_string(),
        &Extra { app: &app, ..extra },
    );
    std::fs::File::create(&config)
        .unwrap()
        .write_all(toml.as_bytes())
        .unwrap();
    let mut command = match nofile {
        None => Command::new(BIN),
        Some(limit) => {
            let mut shell = Command::new("sh");
            shell
                .arg("-c")
                .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                .arg(BIN);
            shell
        }
    };
    let mut child = command
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .env_remove("TIM_GATEWAY_SECRET_KEY")
        // The sandbox is on loopback: a proxy of the machine running the tests must not be
        // used for it (tests of the egress proxy set `upstream.proxy` themselves).
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = mpsc::channel();
    let (log_open, log_closed) = mpsc::channel::<()>();
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        let _log_open = log_open; // dropped when stderr ends
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            for (which, marker) in [(0, "client listener bound"), (1, "admin listener bound")] {
                if line.contains(marker) {
                    // Human (`addr=…`) or JSON (`"addr":"…"`) log format.
                    let addr = line
                        .split("addr=")
                        .nth(1)
                        .and_then(|a| a.split_whitespace().next())
                        .or_else(|| line.split(r#""addr":""#).nth(1)?.split('"').next());
                    if let Some(addr) = addr {
                        // A unix-socket client listener has no address: 0.0.0.0:0 stands in.
                        let addr = if addr.starts_with("unix:") {
                            "0.0.0.0:0"
                        } else {
                            addr
                        };
                        let _ = addr_tx.send((which, addr.parse::<SocketAddr>()));
                    }
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    let mut addrs = [None, None];
    while addrs.iter().any(Option::is_none) {
        let (which, addr) = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no listen line; log: {}", log.lock().unwrap().join("\n")));
        addrs[which] = Some(addr.expect("a socket address in the listen line"));
    }
    Served {
        child,
        log,
        addr: addrs[0].unwrap(),
        admin: addrs[1].unwrap(),
        key_file,
        config,
        log_closed,
        _dir: dir,
    }
}
