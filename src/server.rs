//! Accepts client connections and serves HTTP/1.1 on them until told to stop, then drains.
//! HTTP/1.1 itself is module `h1` (the gateway's own, not hyper's server: a cache hit is
//! answered from the read buffer by [`Handler::answer_now`]).
//!
//! `run(listener, handler, shutdown, limits)` is the mini-redis shape: shutdown is an argument.
//! Promises (issue 7, F3, F5, F6):
//! - At most `limits.max_connections` connections are open at once; past that, new ones wait
//!   in the kernel's backlog instead of taking file descriptors. Each listener has its own
//!   cap, so the admin listener keeps its reserve however many clients flood the other.
//! - A request head is capped at [`MAX_BUF_BYTES`] and [`MAX_HEADERS`] headers (Tencent's
//!   requests are small; a 390 KB half-sent header is refused with 431 instead of being
//!   buffered).
//! - Headers must arrive within `limits.header_read_timeout` (also the idle keep-alive
//!   timeout), checked every [`TICK`] without a timer per request (module `watch`): a silent
//!   connection closes between the timeout and one tick later, never earlier; a write that
//!   makes no progress for `limits.write_timeout` (a client that stopped reading) closes the
//!   connection. There is no overall deadline per answer: a
//!   client that keeps reading, however slowly, keeps its connection.
//! - Failed accepts (out of file descriptors) are logged at most once per
//!   [`ACCEPT_ERROR_LOG_INTERVAL`], with how many were not logged.
//! - On shutdown the listener closes first; connections with no request in flight close at
//!   once (idle keep-alive, half-sent headers); the others finish their request, and after
//!   `limits.grace` whatever is left is dropped (its handler cancelled).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{Instant, Sleep};

mod body;
mod encode;
pub mod framing;
mod h1;
pub mod tls;
mod watch;

pub use body::ClientBody;
pub use encode::Answer;
pub use h1::{RawRequest, Refusal, MAX_HEADERS};
pub use watch::TICK;
use watch::{Connections, Supervised, Watch};

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

/// Largest request head (and read-ahead) per connection. Tencent's requests carry a few small
/// headers; bodies stream through the buffer and are bounded by `max_body_bytes` elsewhere.
pub const MAX_BUF_BYTES: usize = 16 * 1024;

/// Failed accepts are logged at most this often.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Pause after a failed accept, so a listener out of file descriptors does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Something that answers requests; implemented by the proxy and the admin endpoints.
pub trait Handler: Send + Sync + 'static {
    /// The future owns what it needs (`'static`): the server stores it as it is, without an
    /// async wrapper that would hold a second copy of the request.
    fn handle(
        self: Arc<Self>,
        request: Request<ClientBody>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send + 'static;

    /// Answers `request` at once if it can (a cache hit), writing the answer into `answer`
    /// and returning `true`; `false` leaves nothing behind, and the request goes to
    /// [`handle`](Self::handle). Offered only requests whose head and body are all buffered.
    fn answer_now(&self, request: &RawRequest<'_>, answer: &mut Answer<'_>) -> bool {
        let _ = (request, answer);
        false
    }

    /// The answer to a request refused before it reached the handler (by default its status
    /// and reason as text).
    fn refuse(&self, refusal: Refusal) -> Response<Full<Bytes>> {
        let (status, text) = match refusal {
            Refusal::Malformed(reason) => (http::StatusCode::BAD_REQUEST, reason),
            Refusal::HeadTooLarge { .. } => (
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request head is too large",
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
    }
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
    /// timeout (it starts when the connection waits for its next request). Checked every
    /// [`TICK`].
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

/// A listener [`run`] accepts connections from: TCP, a unix socket (the client listener at
/// `unix:/path`), or TLS over TCP ([`tls`]). Generic, not an enum: each stream's reads and
/// writes stay direct.
pub trait Accept: Send + 'static {
    /// What the accept loop gets.
    type Raw: Send + 'static;
    /// What HTTP is served on.
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;

    /// The next connection.
    fn accept_raw(&self) -> impl Future<Output = io::Result<Self::Raw>> + Send;

    /// Turns a connection into its stream (the TLS handshake), in the connection's own task:
    /// a slow client holds up no other.
    fn upgrade(
        &self,
        raw: Self::Raw,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send + 'static;
}

impl Accept for TcpListener {
    type Raw = tokio::net::TcpStream;
    type Stream = tokio::net::TcpStream;

    async fn accept_raw(&self) -> io::Result<Self::Raw> {
        let (stream, _) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn upgrade(
        &self,
        raw: Self::Raw,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send + 'static {
        std::future::ready(Ok(raw))
    }
}

impl Accept for tokio::net::UnixListener {
    type Raw = tokio::net::UnixStream;
    type Stream = tokio::net::UnixStream;

    async fn accept_raw(&self) -> io::Result<Self::Raw> {
        Ok(self.accept().await?.0)
    }

    fn upgrade(
        &self,
        raw: Self::Raw,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send + 'static {
        std::future::ready(Ok(raw))
    }
}

/// Binds a unix socket at `path` with permissions `mode`: a socket file left by a process
/// that is gone is replaced (any other file at the path is an error, not removed).
///
/// # Errors
/// The directory is missing or not writable, the path holds another kind of file, or a
/// live process listens there.
pub fn bind_unix(path: &std::path::Path, mode: u32) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path holds a file that is not a socket",
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process listens on this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Serves `handler` on `listener` until `shutdown` resolves, then drains for at most
/// `limits.grace`. Returns `true` if every connection finished within the grace period.
pub async fn run<H: Handler, L: Accept>(
    listener: L,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) -> bool {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection task holds a clone; `recv` returns `None` once all are gone.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let connections = Arc::new(Connections::default());
    let sweeper = AbortOnDrop(tokio::spawn(sweep(
        Arc::clone(&connections),
        limits.header_read_timeout,
    )));
    let mut accept_errors = AcceptErrorLog::default();
    tokio::pin!(shutdown);
    loop {
        // The slot is taken before accepting: at the cap, connections wait in the backlog
        // and cost no file descriptor.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let raw = tokio::select! {
            accepted = listener.accept_raw() => match accepted {
                Ok(raw) => raw,
                Err(error) => {
                    accept_errors.record(&error);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let watch = connections.watch();
        let handler = Arc::clone(&handler);
        let upgrade = listener.upgrade(raw);
        let open = open_tx.clone();
        tokio::spawn(async move {
            let _open = open;
            let _slot = slot;
            let stream = match upgrade.await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, "client connection failed before HTTP");
                    return;
                }
            };
            let io = TimedWrites::new(stream, limits.write_timeout, Arc::clone(&watch));
            let connection = Supervised::new(h1::serve(io, handler, Arc::clone(&watch)), watch);
            log_end(connection.await);
        });
    }
    // Closing the listener first: from here on, new connections are refused. Connections
    // waiting for (the rest of) a request close now; the others finish their request.
    drop(listener);
    connections.order_all(false);
    drop(open_tx);
    let is_drained = tokio::time::timeout(limits.grace, open_rx.recv())
        .await
        .is_ok();
    // Past the grace period: dropping the connections cancels their handlers.
    connections.order_all(true);
    drop(sweeper);
    is_drained
}

/// Advances the listener's clock and closes connections idle past `timeout`, every tick.
async fn sweep(connections: Arc<Connections>, timeout: Duration) {
    let mut ticks = tokio::time::interval_at(Instant::now() + watch::TICK, watch::TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        connections.sweep(timeout);
    }
}

/// Stops a background task when its owner returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn log_end(result: io::Result<()>) {
    if let Err(error) = result {
        tracing::debug!(%error, "client connection ended with an error");
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

/// An I/O stream whose writes fail with `TimedOut` when they make no progress for
/// `timeout` (a client that stopped reading its answer). The timer exists only while a
/// write is stalled: a write that completes at once costs nothing extra.
pub struct TimedWrites<S> {
    inner: S,
    timeout: Duration,
    /// Armed when a write first returns `Pending`; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// The connection's watch: told when a write waits for the client, and of every write
    /// that makes progress (activity: the idle time starts over).
    watch: Arc<Watch>,
}

impl<S> TimedWrites<S> {
    pub fn new(inner: S, timeout: Duration, watch: Arc<Watch>) -> TimedWrites<S> {
        TimedWrites {
            inner,
            timeout,
            stalled: None,
            watch,
        }
    }

    /// Called when the inner write is `Pending`: arms the timer, fails once it fires.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.watch.set_writing(true);
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
                if self.stalled.take().is_some() {
                    self.watch.set_writing(false);
                }
                self.watch.touch();
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
