//! The access log: one line per request under the target `tim_gateway::access`, written
//! without tracing's general-purpose formatter.
//!
//! Promises:
//! - [`write`] writes a line exactly when tracing enables an `info` event under [`TARGET`]
//!   (`RUST_LOG=info,tim_gateway::access=warn` turns it off; asked once, at [`install`]), in
//!   the layout the rest of the log uses ([`Format`]), with the fields of [`AccessLine`] that
//!   are present.
//! - Lines go to the same writer thread (and the same channel) as every other log line, whole
//!   lines only, so nothing interleaves mid-line.
//! - Without [`install`] (library use, in-process tests) a line is a plain `tracing::info!`.
//!
//! Each thread formats into its own buffer and hands it to the writer thread as one message
//! when it passes [`BATCH_BYTES`], when its first line is [`MAX_BATCH_AGE`] old (checked when
//! a line is added), when the thread ends, and when the [`FlushGuard`] drops at exit: after
//! that every line is handed over at once. A sweeper thread started by [`install`] hands over
//! every thread's lines each [`MAX_BATCH_AGE`], so the lines of a thread that went quiet wait
//! about that long at most. (Handing over each time a worker idled, as before, cost a writer
//! wake-up every few requests under load; README, "Performance", gives the A/B.) None is left behind at a normal exit. Lines are in order per thread; lines
//! of different threads can reach stderr out of timestamp order by that much.

mod backlog;
mod encode;
#[cfg(test)]
mod tests;

use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, SystemTime};

pub use backlog::{Backlog, Output, Sender, MAX_BACKLOG_BYTES};
pub use encode::{Encoder, Format};

/// The log target of the one line per request.
pub const TARGET: &str = "tim_gateway::access";

/// A thread hands its lines over once they hold this many bytes (about 60 cache-hit lines):
/// one channel message and one wake-up of the writer thread per batch instead of per line.
pub const BATCH_BYTES: usize = 16 * 1024;

/// A thread that keeps serving without going idle hands its lines over once the first of them
/// is this old, so the log never lags traffic by more.
pub const MAX_BATCH_AGE: Duration = Duration::from_millis(100);

/// One request's line. Fields that are `None` are not written.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    /// Only for requests the gateway refused or failed.
    pub method: Option<&'a str>,
    /// Only for requests the gateway refused or failed.
    pub path: Option<&'a str>,
    /// `-` when the request named no known app. App, command and cache are written as they
    /// are, unescaped: they must be tokens (`[A-Za-z0-9_/-]`), as validated names are.
    pub app: &'a str,
    pub command: Option<&'a str>,
    /// `HIT`, `MISS`, `STALE` or `BYPASS`.
    pub cache: Option<&'a str>,
    pub status: u16,
    pub error_code: Option<i64>,
    pub latency_us: u64,
    pub error: Option<&'a str>,
}

/// The installed sink; unset in library use.
static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    /// This thread's batch, created with its first line.
    static LOCAL: OnceCell<Local> = const { OnceCell::new() };
}

/// [`install`] was called before.
#[derive(Debug, thiserror::Error)]
#[error("the access log is already installed")]
pub struct AlreadyInstalled;

/// Sends access lines to `sender`'s writer thread in `format` from now on, for the rest of
/// the process. Call it after the global tracing subscriber is set: whether the access log is
/// on is asked of that subscriber here, once (see [`write`]).
///
/// # Errors
///
/// [`AlreadyInstalled`] if a sink is installed already; the first one stays.
pub fn install(sender: Sender, format: Format) -> Result<FlushGuard, AlreadyInstalled> {
    let is_enabled = tracing::enabled!(target: TARGET, tracing::Level::INFO);
    SINK.set(Sink::new(sender, format, is_enabled))
        .map_err(|_| AlreadyInstalled)?;
    let sink = SINK.get().expect("set just above");
    let sweeper = std::thread::Builder::new()
        .name("access-log-sweep".into())
        .spawn(move || {
            while !sink.is_closing.load(Ordering::Relaxed) {
                std::thread::sleep(MAX_BATCH_AGE);
                sink.sweep();
            }
        });
    if let Err(error) = sweeper {
        // Lines still go out when batches fill or age, and at exit.
        tracing::warn!(%error, "cannot start the access log's sweeper thread");
    }
    Ok(FlushGuard { sink })
}

/// Asks the subscriber again whether the access log is on: call it after the log filter
/// changed. Lines already batched are written either way.
pub fn refresh_enabled() {
    if let Some(sink) = SINK.get() {
        let is_enabled = tracing::enabled!(target: TARGET, tracing::Level::INFO);
        sink.is_enabled.store(is_enabled, Ordering::Relaxed);
    }
}

/// Writes one request's line if tracing enables `info` for [`TARGET`].
///
/// With a sink installed, the subscriber's verdict was taken at [`install`] and is taken
/// again by [`refresh_enabled`] after the filter changes (a reload of `log.level`): `enabled!`
/// asks the dispatcher and the filter on every call (its callsite cache only short-cuts
/// "never"), about 90 instructions, while the verdict changes only with the filter (the line
/// is never inside a span that a span directive could match).
pub fn write(line: &AccessLine<'_>) {
    match SINK.get() {
        Some(sink) if sink.is_enabled.load(Ordering::Relaxed) => {
            sink.write_at(line, SystemTime::now());
        }
        Some(_) => {}
        None => tracing_event(line),
    }
}

/// The line as one `tracing` event with the same fields: the fallback without a sink, and
/// the baseline `benches/access_log.rs` compares with.
pub fn tracing_event(line: &AccessLine<'_>) {
    tracing::info!(
        target: TARGET,
        request_id = line.request_id,
        method = line.method,
        path = line.path,
        app = line.app,
        command = line.command,
        cache = line.cache.map(tracing::field::display),
        status = line.status,
        error_code = line.error_code,
        latency_us = line.latency_us,
        error = line.error,
        "request"
    );
}

/// Keep until exit. Dropping it hands over the lines every thread still holds and makes every
/// later line go out at once; drop it before the writer thread's guard, so that the writer
/// thread writes them before it stops.
#[must_use = "dropping the guard ends batching"]
#[derive(Debug)]
pub struct FlushGuard {
    sink: &'static Sink,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.sink.close();
    }
}

/// Where lines go and the batches of the threads that wrote some.
#[derive(Debug)]
struct Sink {
    /// Whether tracing enables `info` for [`TARGET`]: asked at install and after each change
    /// of the filter.
    is_enabled: AtomicBool,
    /// The layout of every line.
    format: Format,
    /// Cloned into each thread's batch.
    sender: Sender,
    /// Every live thread's batch, for [`Sink::close`]; a thread's entry dies with it.
    threads: Mutex<Vec<Weak<Mutex<Batch<Sender>>>>>,
    /// Set by [`Sink::close`]: batching is over and each line is handed over when written.
    /// Read under the batch's lock (see `close`).
    is_closing: AtomicBool,
}

impl Sink {
    fn new(sender: Sender, format: Format, is_enabled: bool) -> Self {
        Sink {
            is_enabled: AtomicBool::new(is_enabled),
            format,
            sender,
            threads: Mutex::new(Vec::new()),
            is_closing: AtomicBool::new(false),
        }
    }

    /// Adds `line`, stamped `now`, to this thread's batch.
    fn write_at(&'static self, line: &AccessLine<'_>, now: SystemTime) {
        let is_batched = LOCAL.try_with(|local| {
            let local = local.get_or_init(|| self.register());
            if !std::ptr::eq(local.sink, self) {
                // This thread's batch belongs to another sink (only tests make several).
                return false;
            }
            let mut batch = lock(&local.batch);
            let is_closing = self.is_closing.load(Ordering::Relaxed);
            batch.push(line, now, is_closing);
            true
        });
        if is_batched != Ok(true) {
            // The thread is exiting and its batch is gone: this line goes out on its own.
            Batch::new(self.format, self.sender.clone()).push(line, now, true);
        }
    }

    fn register(&'static self) -> Local {
        let batch = Arc::new(Mutex::new(Batch::new(self.format, self.sender.clone())));
        let mut threads = lock(&self.threads);
        threads.retain(|thread| thread.strong_count() > 0);
        threads.push(Arc::downgrade(&batch));
        Local { sink: self, batch }
    }

    /// Hands over every thread's lines (the sweeper, each [`MAX_BATCH_AGE`]).
    fn sweep(&self) {
        let threads: Vec<_> = lock(&self.threads)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for batch in threads {
            lock(&batch).hand_over();
        }
    }

    /// Hands over every thread's lines and ends batching.
    ///
    /// The flag is set before the batches are visited, and a writer reads it under its
    /// batch's lock: a line added before the visit is handed over by it, a line added after
    /// sees the flag and goes out at once. A thread that registers after the visit has
    /// taken the registry lock after `close` did, so it sees the flag too.
    fn close(&self) {
        self.is_closing.store(true, Ordering::Relaxed);
        self.sweep();
    }
}

/// Where a batch goes when it is handed over.
trait HandOver {
    fn hand_over(&mut self, lines: &[u8]);
}

impl HandOver for Sender {
    fn hand_over(&mut self, lines: &[u8]) {
        self.send_batch(lines);
    }
}

/// One thread's lines not yet handed over, and what formats the next one.
#[derive(Debug)]
struct Batch<O> {
    lines: Vec<u8>,
    /// When the first line in `lines` was written, in µs since 1970; meaningless while
    /// `lines` is empty.
    oldest: u64,
    encoder: Encoder,
    out: O,
}

/// A batch that grew this large for one huge line gives the memory back when handed over.
const MAX_KEPT_CAPACITY: usize = 4 * BATCH_BYTES;

impl<O: HandOver> Batch<O> {
    fn new(format: Format, out: O) -> Self {
        Batch {
            lines: Vec::new(),
            oldest: 0,
            encoder: Encoder::new(format),
            out,
        }
    }

    /// Adds `line`; hands the batch over when it is full, its first line is too old, or
    /// `is_immediate`.
    fn push(&mut self, line: &AccessLine<'_>, now: SystemTime, is_immediate: bool) {
        let now = encode::unix_micros(now);
        if self.lines.is_empty() {
            self.oldest = now;
            self.lines.reserve(BATCH_BYTES + 1024);
        }
        self.encoder.encode_at(line, now, &mut self.lines);
        // A clock stepped backwards: hand over rather than wait for it to catch up.
        let is_stale = now < self.oldest || now - self.oldest >= MAX_BATCH_AGE.as_micros() as u64;
        if is_immediate || is_stale || self.lines.len() >= BATCH_BYTES {
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        if self.lines.is_empty() {
            return;
        }
        self.out.hand_over(&self.lines);
        self.lines.clear();
        if self.lines.capacity() > MAX_KEPT_CAPACITY {
            self.lines.shrink_to(BATCH_BYTES + 1024);
        }
    }
}

/// A thread's handle on its batch: the batch is shared with the sink's registry so that
/// [`FlushGuard`] can reach it; dropping the handle (thread exit) hands the batch over.
struct Local {
    /// The sink the batch was made for (tests make several).
    sink: &'static Sink,
    /// Shared with `sink`'s registry; locked by this thread for each line and by
    /// [`Sink::close`] once.
    batch: Arc<Mutex<Batch<Sender>>>,
}

impl Drop for Local {
    fn drop(&mut self) {
        lock(&self.batch).hand_over();
    }
}

/// Locks `mutex`, ignoring poison: nothing that runs under these locks panics short of an
/// allocation failure, and the worst it could leave is half a line.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
