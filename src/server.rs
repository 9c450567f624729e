//! Accepts client connections and serves HTTP/1.1 on them until told to stop, then drains.
//!
//! `run(listener, handler, shutdown, limits)` is the mini-redis shape: shutdown is an argument.
//! Promises (issue 7, F3, F5, F6):
//! - At most `limits.max_connections` connections are open at once; past that, new ones wait
//!   in the kernel's backlog instead of taking file descriptors. Each listener has its own
//!   cap, so the admin listener keeps its reserve however many clients flood the other.
//! - A connection's read buffer is capped at [`MAX_BUF_BYTES`] (Tencent's requests are small;
//!   a 390 KB half-sent header is refused with 431 instead of being buffered).
//! - Headers must arrive within `limits.header_read_timeout` (also the idle keep-alive
//!   timeout); a write that makes no progress for `limits.write_timeout` (a client that
//!   stopped reading) closes the connection. There is no overall deadline per answer: a
//!   client that keeps reading, however slowly, keeps its connection.
//! - Failed accepts (out of file descriptors) are logged at most once per
//!   [`ACCEPT_ERROR_LOG_INTERVAL`], with how many were not logged.
//! - On shutdown the listener closes first; connections with no request in flight close at
//!   once (idle keep-alive, half-sent headers); the others finish their request, and after
//!   `limits.grace` whatever is left is dropped (its handler cancelled).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{Instant, Sleep};

/// Listen backlog. tokio's default of 128 caused 1-second connect stalls under bursts of new
/// connections (PRODUCT.md, "Performance notes").
const LISTEN_BACKLOG: i32 = 4096;

/// How long a client may take to send its request headers (client listener).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The same on the admin listener: probes and scrapes send theirs at once, and a short
/// timeout keeps idle connections from holding its reserve.
pub const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write may make no progress before the connection is closed.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest read buffer per connection (hyper's minimum is 8 KiB). Tencent's requests carry a
/// few small headers; bodies stream through it and are bounded by `max_body_bytes` elsewhere.
pub const MAX_BUF_BYTES: usize = 16 * 1024;

/// Failed accepts are logged at most this often.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Pause after a failed accept, so a listener out of file descriptors does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Something that answers requests; implemented by the proxy and the admin endpoints.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// How much one listener holds and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// A stalled write closes the connection after this long.
    pub write_timeout: Duration,
    /// How long requests in flight may finish after shutdown begins.
    pub grace: Duration,
    /// How long a client may take to send its request headers; also the idle keep-alive
    /// timeout (hyper starts it when it waits for the next request).
    pub header_read_timeout: Duration,
}

/// Binds `addr` with SO_REUSEADDR and a large backlog.
///
/// # Errors
/// The address is taken, not local, or the process may not bind it.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Serves `handler` on `listener` until `shutdown` resolves, then drains for at most
/// `limits.grace`. Returns `true` if every connection finished within the grace period.
pub async fn run<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) -> bool {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF_BYTES)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection task holds a clone; `recv` returns `None` once all are gone.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Set when the grace period is over: connections still running are dropped.
    let (kill_tx, kill_rx) = watch::channel(false);
    let mut accept_errors = AcceptErrorLog::default();
    tokio::pin!(shutdown);
    loop {
        // The slot is taken before accepting: at the cap, connections wait in the backlog
        // and cost no file descriptor.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_errors.record(&error);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let service = {
            let handler = Arc::clone(&handler);
            let in_flight = Arc::clone(&in_flight);
            service_fn(move |request| {
                let handler = Arc::clone(&handler);
                let guard = InFlight::enter(&in_flight);
                async move {
                    let response = handler.handle(request).await;
                    drop(guard);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let io = TimedWrites::new(stream, limits.write_timeout);
        let writing = io.is_writing();
        let connection = http.serve_connection(TokioIo::new(io), service);
        let mut stop = stop_rx.clone();
        let mut kill = kill_rx.clone();
        let open = open_tx.clone();
        tokio::spawn(async move {
            let _open = open;
            let _slot = slot;
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => return log_end(result),
                _ = stop.wait_for(|stopping| *stopping) => {}
            }
            // Shutdown: a connection waiting for (the rest of) a request closes now; one
            // with a request in the handler or an answer being written finishes it first.
            if in_flight.load(Ordering::Acquire) == 0 && !writing.is_set() {
                return;
            }
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection => log_end(result),
                // Past the grace period: dropping the connection cancels its handler.
                _ = kill.wait_for(|killed| *killed) => {}
            }
        });
    }
    // Closing the listener first: from here on, new connections are refused.
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_tx);
    let is_drained = tokio::time::timeout(limits.grace, open_rx.recv())
        .await
        .is_ok();
    let _ = kill_tx.send(true);
    is_drained
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(%error, "client connection ended with an error");
    }
}

/// Counts a request in the handler for as long as it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs failed accepts at most once per interval, with the count of those not logged.
#[derive(Default)]
struct AcceptErrorLog {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrorLog {
    fn record(&mut self, error: &io::Error) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < ACCEPT_ERROR_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            %error,
            not_logged_since_last = self.suppressed,
            "accept failed (out of file descriptors? see server.max_connections)"
        );
        self.last_logged = Some(now);
        self.suppressed = 0;
    }
}

/// Whether a connection's last write is still waiting for the client (shared flag).
#[derive(Debug, Clone, Default)]
pub struct WritePending(Arc<std::sync::atomic::AtomicBool>);

impl WritePending {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, value: bool) {
        self.0.store(value, Ordering::Release);
    }
}

/// An I/O stream whose writes fail with `TimedOut` when they make no progress for
/// `timeout` (a client that stopped reading its answer). The timer exists only while a
/// write is stalled: a write that completes at once costs nothing extra.
pub struct TimedWrites<S> {
    inner: S,
    timeout: Duration,
    /// Armed when a write first returns `Pending`; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    pending: WritePending,
}

impl<S> TimedWrites<S> {
    pub fn new(inner: S, timeout: Duration) -> TimedWrites<S> {
        TimedWrites {
            inner,
            timeout,
            stalled: None,
            pending: WritePending::default(),
        }
    }

    /// A handle that tells whether a write is waiting for the client.
    pub fn is_writing(&self) -> WritePending {
        self.pending.clone()
    }

    /// Called when the inner write is `Pending`: arms the timer, fails once it fires.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.pending.set(true);
        let timeout = self.timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read its answer within the write timeout",
        ))
    }

    /// Passes a write-side result through: progress disarms the timer, `Pending` arms it.
    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.stalled = None;
                self.pending.set(false);
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_stall(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.track(cx, polled)
    }
}

#[cfg(test)]
mod tests;
