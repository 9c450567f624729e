//! An in-process look-alike of Tencent Cloud Chat's REST API over HTTPS, for tests and demos.
//!
//! [`Sandbox::start`] binds a listener, makes a throwaway CA and leaf certificate, and serves
//! HTTP/1.1 keep-alive over TLS, one task per connection, until [`Sandbox::shutdown`] or drop
//! (`tls`). Each request goes through Tencent's checks in Tencent's order (`checks`) and, if it
//! passes, through the command handlers (`robots`). Answers are HTTP 200 with Tencent's JSON
//! envelope, `ActionStatus`, `ErrorInfo`, `ErrorCode` first (reference §1).
//!
//! Test knobs add latency, inject error codes, drop connections, skew the clock and expire
//! UserSigs by when they were minted; counters and a bounded log of received requests let
//! tests assert on what the upstream saw. The server never panics on input and never logs
//! keys or UserSigs.
//!
//! Bounds (issue 7, F10). What a request may leave behind is decided from its path and
//! credentials before anything is kept, and all that is kept has a fixed ceiling, so no client,
//! authenticated or not, can grow memory without bound:
//! - a caller that is not authenticated (UserSig signature checked) adds to the total and, for
//!   a catalogue command, to that command's counters: a fixed set of names. Only authenticated
//!   callers get counters for other names, at most [`MAX_UNLISTED_COMMANDS`], and have their
//!   queries and bodies recorded, at most [`RECORDED_PER_COMMAND`] per command and
//!   [`MAX_RECORDED_BYTES`] in all (`stats`);
//! - every sliding window holds at most [`MAX_WINDOW_ARRIVALS`] arrivals, so quotas are at most
//!   [`MAX_QUOTA_PER_SECOND`] (`checks`);
//! - an app holds at most [`MAX_ROBOTS_PER_APP`] chatbots, [`MAX_ACCOUNTS_PER_APP`] accounts and
//!   [`MAX_LOCKOUT_AFTER_FAILURES`] failure times (`robots`);
//! - a client has [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`] to finish its TLS handshake and
//!   [`DEFAULT_HEADER_READ_TIMEOUT`] to send each request's headers, idle keep-alive time
//!   included (`tls`); request bodies are at most [`MAX_BODY_BYTES`].

mod checks;
mod robots;
mod stats;
mod tls;
mod window;

pub use robots::{MAX_ACCOUNTS_PER_APP, MAX_ACCOUNT_ID_BYTES, MAX_ROBOTS_PER_APP};
pub use stats::{Retained, MAX_RECORDED_BYTES, MAX_UNLISTED_COMMANDS, RECORDED_PER_COMMAND};
pub use window::MAX_WINDOW_ARRIVALS;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::upstream::{InProcessFuture, InProcessUpstream, UpstreamError};
use crate::usersig::SecretKey;
use checks::CheckError;
use robots::AppState;
use stats::{Stats, Tracking};
use window::SlidingWindow;

/// Largest request body the sandbox reads; Tencent's bodies are a few KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Largest `quota_per_second` [`Sandbox::start`] accepts; 50 times Tencent's 200.
pub const MAX_QUOTA_PER_SECOND: u32 = 10_000;

/// Largest `lockout_after_failures` [`Sandbox::start`] accepts: failure times are kept per app
/// until this many pile up.
pub const MAX_LOCKOUT_AFTER_FAILURES: u32 = 10_000;

/// How long a client has to finish its TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client has to send a request's headers (hyper's own default once a timer is set).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One app the sandbox serves.
#[derive(Debug, Clone)]
pub struct SandboxApp {
    pub sdkappid: u64,
    pub key: SecretKey,
    /// Identifiers accepted as app admins (reference §1); others get 60010.
    pub admins: Vec<String>,
}

/// How the sandbox behaves; fixed at start.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub apps: Vec<SandboxApp>,
    /// Per (sdkappid, command) calls allowed in any sliding 1 s window: this for every
    /// command, or `None` for each command's documented quota (the catalogue's, 200 where
    /// Tencent's page gives none). At most [`MAX_QUOTA_PER_SECOND`].
    pub quota_per_second: Option<u32>,
    /// Failed UserSig checks per sdkappid within 60 s after which the app is locked out for 60 s with 70050; 0 disables.
    /// At most [`MAX_LOCKOUT_AFTER_FAILURES`].
    pub lockout_after_failures: u32,
    /// A connection that has not finished its TLS handshake this long after accept is closed.
    pub tls_handshake_timeout: Duration,
    /// A connection that has not sent a whole request head this long after it began waiting
    /// for one is closed; between keep-alive requests this is the idle timeout.
    pub header_read_timeout: Duration,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            apps: Vec::new(),
            quota_per_second: None,
            lockout_after_failures: 30,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// One request as the sandbox received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Query parameters in the order received, percent-decoded.
    pub query: Vec<(String, String)>,
    pub body: bytes::Bytes,
    /// The ErrorCode the sandbox answered with (0 = success), or [`RecordedRequest::NO_ANSWER`].
    pub error_code: i64,
    /// When the request had fully arrived (tokio time).
    pub received_at: tokio::time::Instant,
}

impl RecordedRequest {
    /// `error_code` of a request closed without an answer by [`Sandbox::drop_connections`].
    pub const NO_ANSWER: i64 = -1;
}

/// Handle to a running sandbox. Dropping it, or calling [`Sandbox::shutdown`], stops the accept
/// loop and closes every connection.
pub struct Sandbox {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    /// Dropping or firing it tells the accept loop to stop.
    stop: Option<oneshot::Sender<()>>,
    accept_loop: Option<JoinHandle<()>>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Binds `listen` (port 0 picks a free one), makes the certificates and starts serving.
    ///
    /// # Errors
    /// An `io::Error` of kind `InvalidInput` if a quota or lockout option is above its `MAX_…`,
    /// the bind error, or one of kind `Other` if the certificates cannot be made.
    pub async fn start(listen: SocketAddr, options: SandboxOptions) -> std::io::Result<Sandbox> {
        check_options(&options)?;
        let identity = tls::identity().map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(options));
        let (stop, stopped) = oneshot::channel();
        let accept_loop = tokio::spawn(tls::accept_loop(
            listener,
            TlsAcceptor::from(identity.config),
            Arc::clone(&shared),
            stopped,
        ));
        tracing::debug!(%addr, "sandbox listening");
        Ok(Sandbox {
            addr,
            ca_pem: identity.ca_pem,
            shared,
            stop: Some(stop),
            accept_loop: Some(accept_loop),
        })
    }

    /// A sandbox without a listener: requests reach it through [`Sandbox::upstream`], in this
    /// process, so tests of timing properties can run under tokio's paused time. Every check,
    /// knob and counter works as over TLS; `addr` is unspecified and `ca_pem` empty.
    ///
    /// # Errors
    /// As [`Sandbox::start`], for options out of range.
    pub fn in_process(options: SandboxOptions) -> std::io::Result<Sandbox> {
        check_options(&options)?;
        Ok(Sandbox {
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            ca_pem: String::new(),
            shared: Arc::new(Shared::new(options)),
            stop: None,
            accept_loop: None,
        })
    }

    /// This sandbox as an in-process upstream for [`UpstreamClient::in_process`]. A request
    /// dropped on purpose (`drop_connections`) ends like a closed connection.
    pub fn upstream(&self) -> Arc<dyn InProcessUpstream> {
        Arc::new(InProcess(Arc::clone(&self.shared)))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`, or `https://[::1]:PORT`; an unspecified listen address is
    /// replaced by loopback, since the certificate names only loopback.
    pub fn endpoint(&self) -> String {
        endpoint_for(self.addr)
    }

    /// PEM of the CA that signed the sandbox's certificate; clients trust this.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Waits `d` before answering every request (after it is counted, before it is checked).
    pub fn set_latency(&self, d: Duration) {
        *lock(&self.shared.knobs.latency) = d;
    }

    /// The next `times` calls of `command` ("service/command") that pass every check answer
    /// `code` with ErrorInfo "injected by the sandbox", without touching state. Replaces an
    /// earlier injection for the same command; `times` = 0 cancels it.
    pub fn inject_error(&self, command: &str, code: i64, times: u32) {
        let mut injected = lock(&self.shared.knobs.injected);
        if times == 0 {
            injected.remove(command);
        } else {
            injected.insert(command.to_owned(), (code, times));
        }
    }

    /// The next `n` requests, of any command, are read fully and then their connection is
    /// closed without a response. Replaces an earlier count.
    pub fn drop_connections(&self, n: u32) {
        self.shared.knobs.drops.store(n, Ordering::SeqCst);
    }

    /// The sandbox's clock for UserSig expiry becomes real unix time + `millis`.
    pub fn set_clock_skew(&self, millis: i64) {
        self.shared
            .knobs
            .clock_skew_ms
            .store(millis, Ordering::SeqCst);
    }

    /// UserSigs minted (their `TLS.time`) before unix second `unix_secs` answer 70001 as
    /// expired, whatever the clock says; 0 turns this off. Lets a test expire the UserSig in
    /// use and not the one that replaces it, without waiting out a lifetime.
    pub fn expire_usersigs_minted_before(&self, unix_secs: u64) {
        self.shared
            .knobs
            .expire_minted_before
            .store(unix_secs, Ordering::SeqCst);
    }

    /// Requests received for "service/command", rejected and dropped ones included. Counted
    /// for every caller if the command is in the sandbox's catalogue, else for authenticated
    /// callers only and for at most [`MAX_UNLISTED_COMMANDS`] names.
    pub fn calls(&self, command: &str) -> u64 {
        lock(&self.shared.stats).calls(command)
    }

    /// TCP connections accepted since start (not cleared by `reset_counters`).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// TCP connections open right now.
    pub fn connections_open(&self) -> u64 {
        self.shared.open_connections.load(Ordering::Relaxed)
    }

    /// Requests received, malformed paths and unauthenticated callers included.
    pub fn total_calls(&self) -> u64 {
        lock(&self.shared.stats).total()
    }

    /// The most calls of `command` received within any sliding 1 s window so far, counted as
    /// [`Sandbox::calls`] counts; saturates at [`MAX_WINDOW_ARRIVALS`].
    pub fn max_calls_in_window(&self, command: &str) -> u64 {
        lock(&self.shared.stats).max_in_window(command)
    }

    /// The last requests from authenticated callers for `command`, oldest first: at most
    /// [`RECORDED_PER_COMMAND`], fewer once all commands' records pass [`MAX_RECORDED_BYTES`].
    pub fn requests(&self, command: &str) -> Vec<RecordedRequest> {
        lock(&self.shared.stats).requests(command)
    }

    /// How much the sandbox holds about requests and their effects right now.
    pub fn retained(&self) -> Retained {
        let mut retained = Retained::default();
        lock(&self.shared.stats).retained(&mut retained);
        retained.quota_windows = lock(&self.shared.quota).len();
        for app in self.shared.apps.values() {
            let state = lock(&app.state);
            retained.robots += state.robots.len();
            retained.accounts += state.accounts.len();
        }
        retained
    }

    /// The app's chatbot UserIDs, sorted; empty for an unknown app.
    pub fn robots(&self, sdkappid: u64) -> Vec<String> {
        self.shared
            .apps
            .get(&sdkappid)
            .map_or_else(Vec::new, |app| {
                lock(&app.state).robots.iter().cloned().collect()
            })
    }

    /// Adds a chatbot behind the API's back (no validation); ignored for an unknown app.
    pub fn add_robot(&self, sdkappid: u64, user_id: &str) {
        if let Some(app) = self.shared.apps.get(&sdkappid) {
            lock(&app.state).robots.insert(user_id.to_owned());
        }
    }

    /// Forgets calls, windows and recorded requests. Tencent-side state (quota windows,
    /// lockouts, bots, accounts) is kept, as it would be upstream.
    pub fn reset_counters(&self) {
        *lock(&self.shared.stats) = Stats::default();
    }

    /// Stops accepting, closes every connection and waits until that is done. In process,
    /// every later call fails as a refused connection would ([`UpstreamError::Connect`]).
    pub async fn shutdown(mut self) {
        self.shared.is_gone.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            // An error means the loop already ended; either way it is stopping.
            let _ = stop.send(());
        }
        if let Some(accept_loop) = self.accept_loop.take() {
            if let Err(e) = accept_loop.await {
                tracing::debug!(error = %e, "sandbox accept loop ended abnormally");
            }
        }
    }
}

/// Refuses options above their `MAX_…`.
fn check_options(options: &SandboxOptions) -> std::io::Result<()> {
    let too_large = |name: &str, max: u32| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the sandbox's {name} must be at most {max}"),
        )
    };
    if options.quota_per_second > Some(MAX_QUOTA_PER_SECOND) {
        return Err(too_large("quota_per_second", MAX_QUOTA_PER_SECOND));
    }
    if options.lockout_after_failures > MAX_LOCKOUT_AFTER_FAILURES {
        return Err(too_large(
            "lockout_after_failures",
            MAX_LOCKOUT_AFTER_FAILURES,
        ));
    }
    Ok(())
}

/// The sandbox as an [`InProcessUpstream`].
struct InProcess(Arc<Shared>);

impl InProcessUpstream for InProcess {
    fn call(&self, request: Request<Bytes>) -> InProcessFuture {
        let shared = Arc::clone(&self.0);
        Box::pin(async move {
            if shared.is_gone.load(Ordering::SeqCst) {
                return Err(UpstreamError::Connect(
                    "the in-process sandbox was shut down".into(),
                ));
            }
            match handle(shared, request.map(Full::new)).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    // A `Full` body is one frame, already in memory.
                    let body = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    Ok(Response::from_parts(parts, body))
                }
                Err(error) => Err(UpstreamError::Protocol(error.to_string())),
            }
        })
    }
}

fn endpoint_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    // SocketAddr's Display brackets IPv6 and drops no information we need.
    format!("https://{}", SocketAddr::new(ip, addr.port()))
}

/// Unix seconds on the sandbox's clock: real time plus `skew_ms`, floored, never before 1970.
fn unix_now(skew_ms: i64) -> u64 {
    let real_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let ms = real_ms.saturating_add(skew_ms).max(0);
    // Non-negative, so the cast is lossless.
    (ms / 1000) as u64
}

/// A std mutex that shrugs off poisoning: every critical section here is a few field updates
/// that leave the state consistent, and the server must not panic because a test thread did.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the handle, the accept loop and every connection.
pub(super) struct Shared {
    /// Apps by sdkappid; the set is fixed at start, their state is not.
    apps: HashMap<u64, App>,
    quota_per_second: Option<u32>,
    lockout_after_failures: u32,
    /// See [`SandboxOptions::tls_handshake_timeout`].
    pub(super) tls_handshake_timeout: Duration,
    /// See [`SandboxOptions::header_read_timeout`].
    pub(super) header_read_timeout: Duration,
    knobs: Knobs,
    /// What was received, per "service/command"; cleared by `reset_counters`.
    stats: Mutex<Stats>,
    /// Tencent's per-(sdkappid, "service/command") frequency windows (reference §4), keyed by
    /// configured apps and catalogue names only.
    quota: Mutex<HashMap<(u64, &'static str), SlidingWindow>>,
    /// TCP connections accepted since start: shows whether clients reuse keep-alive connections.
    pub(super) connections: AtomicU64,
    /// TCP connections currently open: shows whether a client's pool closes idle ones.
    pub(super) open_connections: AtomicU64,
    /// Set by [`Sandbox::shutdown`]: in-process calls are refused from then on.
    is_gone: AtomicBool,
}

struct App {
    key: SecretKey,
    admins: Vec<String>,
    /// Chatbots, accounts and the lockout; changed by the checks and the command handlers.
    state: Mutex<AppState>,
}

/// The test knobs; each is read once per request.
#[derive(Default)]
struct Knobs {
    /// Added before answering every request.
    latency: Mutex<Duration>,
    /// "service/command" → (ErrorCode, calls left to answer with it).
    injected: Mutex<HashMap<String, (i64, u32)>>,
    /// Requests left to drop without an answer.
    drops: AtomicU32,
    /// Milliseconds added to real time for UserSig expiry.
    clock_skew_ms: AtomicI64,
    /// UserSigs minted before this unix second are expired; 0 is off.
    expire_minted_before: AtomicU64,
}

impl Knobs {
    /// Consumes one pending drop, if any.
    fn take_drop(&self) -> bool {
        self.drops
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Consumes one injected answer for `command`, if any.
    fn take_injection(&self, command: &str) -> Option<i64> {
        let mut injected = lock(&self.injected);
        let (code, left) = injected.get_mut(command)?;
        let code = *code;
        *left = left.saturating_sub(1);
        if *left == 0 {
            injected.remove(command);
        }
        Some(code)
    }
}

/// Why a connection ends without an answer to its request.
#[derive(Debug, thiserror::Error)]
pub(super) enum ServeError {
    #[error("connection dropped on purpose by the sandbox's drop_connections knob")]
    Dropped,
    #[error("reading the request body failed: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

impl Shared {
    fn new(options: SandboxOptions) -> Shared {
        let apps = options
            .apps
            .into_iter()
            .map(|app| {
                let entry = App {
                    key: app.key,
                    admins: app.admins,
                    state: Mutex::default(),
                };
                (app.sdkappid, entry)
            })
            .collect();
        Shared {
            apps,
            quota_per_second: options.quota_per_second,
            lockout_after_failures: options.lockout_after_failures,
            tls_handshake_timeout: options.tls_handshake_timeout,
            header_read_timeout: options.header_read_timeout,
            knobs: Knobs::default(),
            stats: Mutex::default(),
            quota: Mutex::default(),
            connections: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            is_gone: AtomicBool::new(false),
        }
    }
}

/// Answers one request, or ends the connection without an answer.
pub(super) async fn handle<B>(
    shared: Arc<Shared>,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, ServeError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = crate::route::parse_query(parts.uri.query().unwrap_or(""));
    // The whole body is read before anything else, so a dropped request was fully sent.
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(CheckError::BodyTooLarge(MAX_BODY_BYTES)),
        Err(e) => return Err(ServeError::Body(e)),
    };
    let received_at = Instant::now();
    // Who is calling decides what may be kept, so it is settled before anything is (issue 7,
    // F10); it is pure, so latency and drops do not change it.
    let tracking = checks::tracking(&shared, &path, &query);
    lock(&shared.stats).arrive(&tracking, received_at);
    let record = |error_code| {
        if let Tracking::Recorded(name) = &tracking {
            let request = RecordedRequest {
                received_at,
                method: parts.method.to_string(),
                path: path.clone(),
                query: query.clone(),
                body: body.clone().unwrap_or_default(),
                error_code,
            };
            lock(&shared.stats).record(name, request);
        }
    };

    if shared.knobs.take_drop() {
        record(RecordedRequest::NO_ANSWER);
        return Err(ServeError::Dropped);
    }
    let latency = *lock(&shared.knobs.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let (code, info, fields) = match checks::evaluate(
        &shared,
        &parts.method,
        &path,
        &query,
        body.as_ref().map_err(Clone::clone),
    ) {
        Ok(fields) => (0, String::new(), fields),
        Err(e) => (e.code(), e.to_string(), Vec::new()),
    };
    tracing::debug!(path = %path, code, "sandbox answered");
    record(code);
    let response = Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(robots::envelope(code, &info, &fields)));
    // Building from a static header and a Full body cannot fail; the fallback keeps the
    // no-panic promise without an `expect`.
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

#[cfg(test)]
mod tests;
