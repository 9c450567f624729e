//! The command line: `serve | demo | sandbox | usersig | check-config`.
//!
//! Each subcommand is a thin shell over the library; `anyhow` is allowed here (STYLE.md §3).
//!
//! CA files are written without following symlinks (issue 7, F12): the demo's goes into a
//! private directory made for it (0700, unpredictable name, removed when the demo stops), and
//! `sandbox --ca-out` renames a fresh file from the same directory over its path.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{
    Config, ConfigError, Env, Loaded, DEFAULT_SECRET_KEY_ENV as SECRET_KEY_ENV, DEMO_TOML,
};
use crate::gateway::Gateway;
use crate::sandbox::{Sandbox, SandboxApp, SandboxOptions};
use crate::shutdown::Signals;
use crate::usersig::{self, SecretKey};

/// A stop signal this soon after the first is the same stop sent twice, not a second one.
const SECOND_SIGNAL_MIN_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// The demo's app: a made-up SDKAppID and the public key of reference §3's known answers.
pub const DEMO_SDKAPPID: u64 = 1_400_000_000;
pub const DEMO_IDENTIFIER: &str = "administrator";
pub const DEMO_SECRET_KEY: &str =
    "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

#[derive(Debug, Parser)]
#[command(
    name = "tim-gateway",
    version,
    about = "A caching, signing reverse proxy for Tencent Cloud Chat's REST API"
)]
pub struct Cli {
    /// Log format on stderr. The filter is the config's `log.level` (default info); RUST_LOG, when set, overrides it.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "TIM_GATEWAY_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the production job).
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// How long in-flight requests may take to finish after SIGTERM (default: the config's
        /// `server.shutdown_grace`).
        #[arg(long, value_parser = humantime::parse_duration)]
        shutdown_grace: Option<Duration>,
    },
    /// Run the gateway against the embedded Tencent look-alike, with demo credentials.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9443")]
        sandbox_listen: SocketAddr,
    },
    /// Run only the Tencent look-alike (HTTPS), for your own integration tests.
    Sandbox {
        #[arg(long, default_value = "127.0.0.1:9443")]
        listen: SocketAddr,
        #[arg(long, default_value_t = DEMO_SDKAPPID)]
        sdkappid: u64,
        /// Admin account(s) the sandbox accepts as `identifier`.
        #[arg(long = "admin", default_value = DEMO_IDENTIFIER)]
        admins: Vec<String>,
        /// Secret key file; else TIM_GATEWAY_SECRET_KEY; else the demo key.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Where to write the CA certificate clients must trust.
        #[arg(long, default_value = "tim-gateway-sandbox-ca.pem")]
        ca_out: PathBuf,
        /// Calls per second per command before answering 60007 (default: each command's
        /// documented quota, 200 where its page gives none).
        #[arg(long)]
        quota: Option<u32>,
    },
    /// Mint a UserSig (secret key from TIM_GATEWAY_SECRET_KEY or --key-file).
    Usersig {
        #[arg(long)]
        sdkappid: u64,
        #[arg(long)]
        identifier: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        expire: u64,
        /// Mint time as unix seconds (default: now).
        #[arg(long)]
        time: Option<u64>,
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Print the commands the gateway knows (Tencent's whole list) as a Markdown table.
    Catalogue,
    /// Validate a configuration file and explain every problem in it.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
        /// Do not read secret keys (files or variables): check the rest, e.g. in CI where
        /// the real secret is not available.
        #[arg(long)]
        no_secrets: bool,
    },
}

/// `println!` that ends quietly when stdout is closed (`tim-gateway check-config | head`),
/// instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        match writeln!(stdout, $($arg)*).and_then(|()| stdout.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            written => written.context("cannot write to stdout")?,
        }
    }};
}

/// What the process should exit with.
pub enum Exit {
    Ok,
    /// The configuration is invalid (exit code 2).
    BadConfig,
    /// A second stop signal cut the drain short (exit code 3).
    DrainCutShort,
}

fn read_key(key_file: Option<&Path>, env: &Env) -> anyhow::Result<Option<SecretKey>> {
    if let Some(path) = key_file {
        let key = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key file {}", path.display()))?;
        let key = SecretKey::new(key);
        if key.is_empty() {
            bail!("the key file {} is empty", path.display());
        }
        return Ok(Some(key));
    }
    Ok(env
        .get(SECRET_KEY_ENV)
        .map(SecretKey::new)
        .filter(|k| !k.is_empty()))
}

/// The configuration at `path`, or `None` once every problem in it is printed to stderr.
fn load_or_explain(path: &Path, env: &Env, format: LogFormat) -> Option<Loaded> {
    Config::load(path, env)
        .map_err(|error| explain(&error, format))
        .ok()
}

/// Says why the configuration cannot be used: the list of problems for a person, or with
/// `--log-format json` one JSON log line per problem (key and message as fields).
fn explain(error: &ConfigError, format: LogFormat) {
    match (format, error) {
        (LogFormat::Human, _) => eprintln!("{error}"),
        (LogFormat::Json, ConfigError::Invalid(problems)) => {
            for problem in problems {
                tracing::error!(key = %problem.key, problem = %problem.message, "invalid configuration");
            }
        }
        (LogFormat::Json, other) => tracing::error!(error = %other, "invalid configuration"),
    }
}

/// A subcommand ready for its runtime. `serve` reads its configuration before the runtime
/// exists, because `server.worker_threads` decides how many worker threads the runtime starts.
pub enum Task {
    /// `serve`, with a valid configuration.
    Serve {
        loaded: Box<Loaded>,
        /// Read again on SIGHUP or when it changes.
        config: PathBuf,
        /// Its contents, read just before `loaded` was loaded from it.
        read_at_start: Option<Vec<u8>>,
        shutdown_grace: Option<Duration>,
    },
    /// Nothing left to run: the configuration was invalid, and every problem is printed.
    Done(Exit),
    /// Any other subcommand; each reads what it needs once running.
    Other(Command, LogFormat),
}

impl Task {
    /// Loads `serve`'s configuration; other subcommands pass through.
    pub fn prepare(command: Command, format: LogFormat) -> Task {
        match command {
            Command::Serve {
                config,
                shutdown_grace,
            } => {
                let read_at_start = std::fs::read(&config).ok();
                match load_or_explain(&config, &Env::from_process(), format) {
                    Some(loaded) => Task::Serve {
                        loaded: Box::new(loaded),
                        config,
                        read_at_start,
                        shutdown_grace,
                    },
                    None => Task::Done(Exit::BadConfig),
                }
            }
            command => Task::Other(command, format),
        }
    }

    /// The runtime to run this task on: `serve` gets the configured worker threads (by
    /// default one per CPU the process may use), the rest tokio's default. One worker is
    /// tokio's single-threaded scheduler: no work-stealing bookkeeping for a thread that has
    /// no one to steal from (README: about 5% more cache hits per second on one core).
    pub fn runtime(&self) -> tokio::runtime::Builder {
        let mut builder = match self {
            Task::Serve { loaded, .. } => match loaded.config.server.effective_worker_threads() {
                1 => tokio::runtime::Builder::new_current_thread(),
                workers => {
                    let mut builder = tokio::runtime::Builder::new_multi_thread();
                    builder.worker_threads(workers);
                    builder
                }
            },
            _ => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all();
        builder
    }

    /// Runs the task to completion.
    ///
    /// # Errors
    /// Anything that stops the subcommand, explained for a human.
    pub async fn run(self) -> anyhow::Result<Exit> {
        match self {
            Task::Serve {
                loaded,
                config,
                read_at_start,
                shutdown_grace,
            } => serve(&loaded, (config, read_at_start), shutdown_grace).await,
            Task::Done(exit) => Ok(exit),
            Task::Other(command, format) => run(command, format).await,
        }
    }
}

/// Runs `serve` until a stop signal and the drain that follows it.
async fn serve(
    loaded: &Loaded,
    (config, read_at_start): (PathBuf, Option<Vec<u8>>),
    shutdown_grace: Option<Duration>,
) -> anyhow::Result<Exit> {
    if let Err(error) = crate::log_level::apply(&loaded.config.log.level) {
        tracing::warn!(%error, "cannot set log.level; the log filter stays `info`");
    }
    for warning in &loaded.warnings {
        tracing::warn!(key = %warning.key, "{}", warning.message);
    }
    let shutdown_grace = shutdown_grace.unwrap_or(loaded.config.server.shutdown_grace);
    // Installed before the listeners exist, so an early SIGTERM drains, not kills.
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let hangup = crate::reload::Hangup::install().context("cannot install the SIGHUP handler")?;
    let gateway = Gateway::start(&loaded.config, shutdown_grace).await?;
    // SIGHUP or a changed file reloads the configuration (`crate::reload`).
    let _reloader = crate::reload::Reloader::new(
        config,
        &loaded.config,
        read_at_start,
        std::sync::Arc::clone(gateway.proxy()),
    )
    .run(hangup);
    signals.recv().await;
    let first_signal = tokio::time::Instant::now();
    tracing::info!(grace = ?shutdown_grace, "draining");
    // A second SIGTERM/SIGINT during the drain is an operator who wants out now; one
    // within a second of the first is the same stop sent twice (a wrapper forwarding
    // SIGTERM while Ctrl-C reaches the whole process group) and is ignored.
    let drain = gateway.shutdown();
    tokio::pin!(drain);
    loop {
        tokio::select! {
            is_complete = &mut drain => {
                if !is_complete {
                    tracing::warn!("some requests did not finish within the grace period");
                }
                break;
            }
            () = signals.recv() => {
                if first_signal.elapsed() < SECOND_SIGNAL_MIN_GAP {
                    tracing::info!("stop signal repeated within a second: still draining");
                    continue;
                }
                tracing::warn!("second stop signal: exiting without finishing the drain");
                return Ok(Exit::DrainCutShort);
            }
        }
    }
    tracing::info!("stopped");
    Ok(Exit::Ok)
}

/// Runs one subcommand to completion. `serve` normally arrives as [`Task::Serve`], its
/// configuration loaded before the runtime existed; here it is loaded in the runtime.
///
/// # Errors
/// Anything that stops the subcommand, explained for a human.
async fn run(command: Command, format: LogFormat) -> anyhow::Result<Exit> {
    let env = Env::from_process();
    match command {
        Command::Serve {
            config,
            shutdown_grace,
        } => {
            let read_at_start = std::fs::read(&config).ok();
            match load_or_explain(&config, &env, format) {
                Some(loaded) => serve(&loaded, (config, read_at_start), shutdown_grace).await,
                None => Ok(Exit::BadConfig),
            }
        }
        Command::Demo {
            listen,
            admin_listen,
            sandbox_listen,
        } => demo(listen, admin_listen, sandbox_listen)
            .await
            .map(|()| Exit::Ok),
        Command::Sandbox {
            listen,
            sdkappid,
            admins,
            key_file,
            ca_out,
            quota,
        } => {
            let key = read_key(key_file.as_deref(), &env)?
                .unwrap_or_else(|| SecretKey::new(DEMO_SECRET_KEY));
            let sandbox = Sandbox::start(
                listen,
                SandboxOptions {
                    apps: vec![SandboxApp {
                        sdkappid,
                        key,
                        admins,
                    }],
                    quota_per_second: quota,
                    ..SandboxOptions::default()
                },
            )
            .await
            .with_context(|| format!("cannot start the sandbox on {listen}"))?;
            let mut signals = Signals::install().context("cannot install signal handlers")?;
            replace_file(&ca_out, sandbox.ca_pem())
                .with_context(|| format!("cannot write {}", ca_out.display()))?;
            out!("sandbox listening on {}", sandbox.endpoint());
            out!("CA certificate written to {}", ca_out.display());
            signals.recv().await;
            sandbox.shutdown().await;
            Ok(Exit::Ok)
        }
        Command::Usersig {
            sdkappid,
            identifier,
            expire,
            time,
            key_file,
        } => {
            let Some(key) = read_key(key_file.as_deref(), &env)? else {
                bail!("no secret key: set {SECRET_KEY_ENV} or pass --key-file");
            };
            let time = time.unwrap_or_else(crate::signer::unix_now);
            out!(
                "{}",
                usersig::mint(&key, sdkappid, &identifier, time, expire).expose()
            );
            Ok(Exit::Ok)
        }
        Command::Catalogue => {
            out!(
                "{}",
                crate::catalogue::Catalogue::builtin().markdown().trim_end()
            );
            Ok(Exit::Ok)
        }
        Command::CheckConfig { config, no_secrets } => {
            let env = if no_secrets {
                env.without_secrets()
            } else {
                env
            };
            check_config(&config, &env, format)
        }
    }
}

/// `check-config`: every problem, or the warnings and every effective setting.
fn check_config(config: &Path, env: &Env, format: LogFormat) -> anyhow::Result<Exit> {
    match load_or_explain(config, env, format) {
        Some(loaded) => {
            for warning in &loaded.warnings {
                out!("warning: {}: {}", warning.key, warning.message);
            }
            let c = &loaded.config;
            out!(
                "{}: valid; {} app(s), default app {:?}; client listener {}, admin listener {}",
                config.display(),
                c.apps.len(),
                c.apps[c.default_app].name,
                c.server.listen,
                c.server.admin_listen
            );
            // Every effective setting, defaults included (secrets shown only by source).
            out!("{c}");
            if env.skips_secrets() {
                out!("secret keys were not read (--no-secrets): only where they come from was checked");
            }
            Ok(Exit::Ok)
        }
        None => Ok(Exit::BadConfig),
    }
}

/// Robots the demo's sandbox starts with, so the first get_all_robots shows something.
const DEMO_ROBOTS: [&str; 2] = ["@RBT#welcome", "@RBT#helpdesk"];

/// Writes `contents` to `path` by renaming a fresh file from the same directory over it, so a
/// symlink at `path` is replaced rather than followed, and a reader sees the old file or the
/// new one, never half of one (issue 7, F12).
///
/// # Errors
/// The directory cannot take a new file, or the rename fails (e.g. `path` is a directory).
fn replace_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tim-gateway-ca-");
    // A CA certificate is public: keep the mode `std::fs::write` gave it, not tempfile's 0600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut file = builder.tempfile_in(dir)?;
    file.write_all(contents.as_bytes())?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The demo's CA certificate in a directory made for it alone; both are removed on drop.
struct DemoCa {
    /// Private (0700) with an unpredictable name; deleting it deletes `path`.
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl DemoCa {
    /// Makes the directory under the system temp dir and writes `ca_pem` into it. Before
    /// issue 7, F12 the file had a predictable name in /tmp and was written through any
    /// symlink planted there.
    ///
    /// # Errors
    /// The directory or the file cannot be created.
    fn write(ca_pem: &str) -> anyhow::Result<DemoCa> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("tim-gateway-demo-");
        // tempfile's directories default to 0777 before umask; only the owner may enter this one.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let dir = builder
            .tempdir()
            .context("cannot create a private directory for the demo's CA")?;
        let path = dir.path().join("ca.pem");
        // The directory is new and only ours, so the file cannot exist yet; create_new makes
        // sure of it.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut file| file.write_all(ca_pem.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(DemoCa { dir, path })
    }
}

async fn demo(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    sandbox_listen: SocketAddr,
) -> anyhow::Result<()> {
    let sandbox = Sandbox::start(
        sandbox_listen,
        SandboxOptions {
            apps: vec![SandboxApp {
                sdkappid: DEMO_SDKAPPID,
                key: SecretKey::new(DEMO_SECRET_KEY),
                admins: vec![DEMO_IDENTIFIER.to_owned()],
            }],
            ..SandboxOptions::default()
        },
    )
    .await
    .with_context(|| format!("cannot start the sandbox on {sandbox_listen}"))?;
    for robot in DEMO_ROBOTS {
        sandbox.add_robot(DEMO_SDKAPPID, robot);
    }
    tracing::info!(endpoint = %sandbox.endpoint(), "sandbox (Tencent look-alike) started");

    // Dropped when the demo returns, stopped or failed: that removes the directory.
    let ca = DemoCa::write(sandbox.ca_pem())?;
    let env = Env::from_map(HashMap::from([
        (SECRET_KEY_ENV.to_owned(), DEMO_SECRET_KEY.to_owned()),
        (
            "TIM_GATEWAY__APPS__DEMO__ENDPOINT".to_owned(),
            sandbox.endpoint(),
        ),
        (
            "TIM_GATEWAY__UPSTREAM__CA_FILE".to_owned(),
            ca.path.display().to_string(),
        ),
        ("TIM_GATEWAY__SERVER__LISTEN".to_owned(), listen.to_string()),
        (
            "TIM_GATEWAY__SERVER__ADMIN_LISTEN".to_owned(),
            admin_listen.to_string(),
        ),
    ]));
    let loaded = Config::from_toml_str(DEMO_TOML, &env)
        .map_err(|e| anyhow::anyhow!("the built-in demo config is invalid: {e}"))?;
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let gateway = Gateway::start(&loaded.config, loaded.config.server.shutdown_grace).await?;
    let base = format!("http://{}", gateway.client_addr());
    out!(
        "\ntim-gateway demo: gateway on {base}, admin on http://{admin}, Tencent look-alike on {sandbox}\n\
         Try (Ctrl-C stops the demo):\n\n\
         curl -s {base}/v4/openim_robot_http_svc/get_all_robots -d '{{}}'\n\
         curl -s {base}/v4/openim_robot_http_svc/create_robot -d '{{\"UserID\":\"@RBT#demo_bot\",\"Nick\":\"Demo bot\"}}'\n\
         curl -s {base}/v4/openim_robot_http_svc/get_all_robots\n\
         curl -s {base}/v4/openim_robot_http_svc/delete_robot -d '{{\"Robot_Account\":\"@RBT#demo_bot\"}}'\n\
         curl -s -i {base}/v4/openim_robot_http_svc/create_robot -d 'not json'\n\
         curl -s http://{admin}/readyz\n",
        admin = gateway.admin_addr(),
        sandbox = sandbox.endpoint(),
    );
    signals.recv().await;
    gateway.shutdown().await;
    sandbox.shutdown().await;
    if let Err(e) = ca.dir.close() {
        tracing::warn!(error = %e, "cannot remove the demo's CA directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
