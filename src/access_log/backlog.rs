//! The bound, in bytes, on log output waiting for the writer thread.
//!
//! tracing-appender bounds its channel in messages (`LOG_BUFFER_LINES` in main.rs), which was
//! a bound in bytes while every message was one line. An access-log batch is one message of up
//! to ~16 KiB, so the same 64k messages could hold 1 GiB while stderr stalls. [`Backlog`]
//! counts the bytes between the two ends of the channel: every sender ([`Sender`], for tracing
//! and for the access log) adds what it sends, the writer thread's [`Output`] subtracts what it
//! writes. An access-log batch that would take the backlog past [`MAX_BACKLOG_BYTES`] is
//! dropped and counted (then reported in one `warn` line); other log lines are never held
//! back here, and still meet tracing-appender's own lossy bound.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tracing_appender::non_blocking::NonBlocking;
use tracing_subscriber::fmt::MakeWriter;

/// Most bytes the writer thread's channel may hold before access-log batches are dropped:
/// about what its 64k one-line messages held before lines were batched (64k × 256 bytes).
pub const MAX_BACKLOG_BYTES: usize = 16 << 20;

/// The shared count behind a [`Sender`] and an [`Output`]; create one per writer thread.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    /// Shared with the senders and the output made from it.
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Bytes sent to the channel and not yet written by the writer thread (an estimate: see
    /// [`Output::flush`]).
    bytes: AtomicUsize,
    /// Access lines dropped since the last `warn` line that reported drops.
    dropped_lines: AtomicU64,
}

impl Backlog {
    pub fn new() -> Self {
        Backlog::default()
    }

    /// The writer thread's destination (stderr), counting what leaves the backlog.
    pub fn output<W: io::Write>(&self, inner: W) -> Output<W> {
        Output {
            inner,
            counts: Arc::clone(&self.counts),
        }
    }

    /// The sending end, counting what joins the backlog; give it to tracing as its writer and
    /// to [`install`](super::install).
    pub fn sender(&self, writer: NonBlocking) -> Sender {
        Sender {
            writer,
            counts: Arc::clone(&self.counts),
        }
    }

    /// Bytes currently counted as waiting.
    pub fn bytes(&self) -> usize {
        self.counts.bytes.load(Ordering::Relaxed)
    }
}

/// A [`NonBlocking`] that counts the bytes it sends. As a tracing writer (`io::Write`,
/// `MakeWriter`) it always sends; access-log batches go through [`Sender::send_batch`].
#[derive(Debug, Clone)]
pub struct Sender {
    writer: NonBlocking,
    /// Shared with every other sender and the writer thread's [`Output`].
    counts: Arc<Counts>,
}

impl Sender {
    /// Sends `lines` (whole lines) as one message, or drops and counts them when the backlog
    /// would pass [`MAX_BACKLOG_BYTES`].
    pub(super) fn send_batch(&mut self, lines: &[u8]) {
        let waiting = self.counts.bytes.load(Ordering::Relaxed);
        if waiting.saturating_add(lines.len()) > MAX_BACKLOG_BYTES {
            let dropped = lines.iter().filter(|&&b| b == b'\n').count() as u64;
            self.counts
                .dropped_lines
                .fetch_add(dropped, Ordering::Relaxed);
            return;
        }
        self.counts.bytes.fetch_add(lines.len(), Ordering::Relaxed);
        // The writer is lossy: a full channel drops the message and counts it itself, and
        // this never fails.
        let _ = io::Write::write_all(&mut self.writer, lines);
        if self.counts.dropped_lines.load(Ordering::Relaxed) > 0 {
            let dropped_lines = self.counts.dropped_lines.swap(0, Ordering::Relaxed);
            if dropped_lines > 0 {
                tracing::warn!(
                    dropped_lines,
                    "access log lines dropped: stderr did not keep up"
                );
            }
        }
    }
}

impl io::Write for Sender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.counts.bytes.fetch_add(buf.len(), Ordering::Relaxed);
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl<'a> MakeWriter<'a> for Sender {
    type Writer = Sender;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The writer thread's destination, counting what it writes out of the backlog.
#[derive(Debug)]
pub struct Output<W> {
    inner: W,
    /// Shared with every [`Sender`].
    counts: Arc<Counts>,
}

impl<W: io::Write> io::Write for Output<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        // Saturating: a message counted by its sender just after the last resync below may be
        // written before it was counted.
        let _ = self
            .counts
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bytes| {
                Some(bytes.saturating_sub(written))
            });
        Ok(written)
    }

    /// tracing-appender's writer thread flushes when it has found its channel empty (and when
    /// it stops), so the backlog is zero: resetting the count here forgets the bytes of
    /// messages the channel dropped when it was full (counted, never written), which would
    /// otherwise hold the count up for good.
    fn flush(&mut self) -> io::Result<()> {
        self.counts.bytes.store(0, Ordering::Relaxed);
        self.inner.flush()
    }
}
