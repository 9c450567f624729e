//! `tim-gateway`: parse the command line, set up logging, run the subcommand, pick the exit code.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use tim_gateway::cli::{self, Cli, Exit, LogFormat};
use tim_gateway::{access_log, log_level};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: a request allocates a few small blocks (its header map,
/// body, access line), and glibc's malloc and free cost about 1,500 instructions of a cache hit.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages (a log line, or a batch of access lines) buffered between request threads and the
/// thread that writes them to stderr. When stderr cannot keep up (a stalled log pipe), further
/// messages are dropped rather than blocking requests; access lines stop earlier, at
/// `access_log::MAX_BACKLOG_BYTES` waiting, and a `warn` line says how many were dropped.
const LOG_BUFFER_LINES: usize = 64 * 1024;

/// Sets up logging to stderr through a background writer thread, so a request's log line
/// costs its formatting, not a write system call. The access log formats its own lines and
/// hands them to the same writer thread in batches (`access_log`); both count what they send
/// against one byte bound. Keep the guard until exit: dropping it flushes what is buffered.
fn init_tracing(format: LogFormat) -> LogGuard {
    // `RUST_LOG` pins the filter; otherwise `log.level` sets it once the config is read, and
    // again on every reload.
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty());
    let pinned = rust_log
        .as_ref()
        .and_then(|_| EnvFilter::try_from_default_env().ok());
    let is_rust_log_invalid = rust_log.is_some() && pinned.is_none();
    let is_pinned = pinned.is_some();
    let filter = pinned.unwrap_or_else(|| EnvFilter::new("info"));
    let backlog = access_log::Backlog::new();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .thread_name("tim-gateway-log")
        .finish(backlog.output(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        )));
    let writer = backlog.sender(writer);
    // Colour only for a person at a terminal: Kubernetes and log files get plain text.
    let is_ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let access_format = match format {
        LogFormat::Human => access_log::Format::Human { is_ansi },
        LogFormat::Json => access_log::Format::Json,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .with_ansi(is_ansi);
    // Reloading wraps the subscriber built so far: it is the last step of each builder.
    match format {
        LogFormat::Human => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            log_level::install(
                Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string())),
                is_pinned,
            );
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            log_level::install(
                Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string())),
                is_pinned,
            );
        }
    }
    if is_rust_log_invalid {
        tracing::warn!("RUST_LOG is not a valid log filter: it is ignored and log.level applies");
    }
    // After `init`: the access log asks the subscriber now whether it is on.
    let access = access_log::install(writer, access_format).expect("logging is set up once, here");
    LogGuard {
        _access: access,
        _writer: guard,
    }
}

/// Held by `main` until exit. Fields drop in order: first the access log hands over the lines
/// its threads still hold (request lines of the drain), then the writer thread writes out
/// everything it was given and stops.
struct LogGuard {
    _access: access_log::FlushGuard,
    _writer: tracing_appender::non_blocking::WorkerGuard,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    let _log_writer = init_tracing(format);
    // `serve` reads its configuration before the runtime exists: it sets the worker threads.
    let task = cli::Task::prepare(cli.command, format);
    let runtime = match task.runtime().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(task.run());
    // Whatever still runs (connections being drained, a DNS lookup on a blocking thread) is
    // abandoned, not waited for: after a second stop signal the exit must be immediate.
    runtime.shutdown_background();
    match result {
        Ok(Exit::Ok) => ExitCode::SUCCESS,
        Ok(Exit::BadConfig) => ExitCode::from(2),
        Ok(Exit::DrainCutShort) => ExitCode::from(3),
        Err(error) => {
            match format {
                LogFormat::Human => eprintln!("error: {error:#}"),
                // One JSON line, as every other line on stderr is.
                LogFormat::Json => tracing::error!(error = format!("{error:#}"), "fatal error"),
            }
            ExitCode::FAILURE
        }
    }
}
