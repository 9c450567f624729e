//! `tim-gateway`: parse the command line, set up logging, run the subcommand, pick the exit code.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use tim_gateway::cli::{self, Cli, Exit, LogFormat};
use tracing_subscriber::EnvFilter;

/// Lines buffered between request threads and the thread that writes them to stderr. When
/// stderr cannot keep up (a stalled log pipe), further lines are dropped rather than blocking
/// requests; the writer reports how many it dropped.
const LOG_BUFFER_LINES: usize = 64 * 1024;

/// Sets up logging to stderr through a background writer thread, so a request's log line
/// costs its formatting, not a write system call. Keep the guard until exit: dropping it
/// flushes what is buffered.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .thread_name("tim-gateway-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colour only for a person at a terminal: Kubernetes and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_writer = init_tracing(cli.log_format);
    // `serve` reads its configuration before the runtime exists: it sets the worker threads.
    let task = cli::Task::prepare(cli.command);
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
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
