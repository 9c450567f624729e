//! The client-facing handler: one request in, one answer out, as a row of named phases.
//!
//! [`Proxy::handle`] reads top to bottom: `route` → `read_body` → `lookup` (cacheable reads,
//! which fetch through a single flight) → the upstream phases `acquire_permit` → `sign` →
//! `send` → `classify` (in [`call`], repeated while `classify` says retry) → `respond`
//! (PRODUCT.md, "What it does for a request"). Each phase returns early with a
//! [`GatewayError`] that becomes Tencent's envelope; Tencent's own answers are relayed
//! unchanged, with `X-Cache` and `Age`.

mod call;
mod fill;
mod now;
mod read;
mod respond;
mod state;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Body;
use prometheus::Registry;
use tokio::time::Instant;

pub use call::Target;
pub use respond::{RequestFamilies, RequestMetrics, ACCESS_LOG};
pub use state::{App, DrainStage, Lane, RetrySettings, Shared, DEFAULT_CACHE_POLICY};

use fill::Fill;
use respond::{request_id, RequestCtx};

use crate::body::{self, Canonical};
use crate::cache::{CacheKey, CachePolicy, FlightResult, Join, Lookup};
use crate::catalogue::Access;
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::{UNKNOWN_APP, UNKNOWN_COMMAND};
use crate::origin::HostPolicy;
use crate::outcome::Outcome;
use crate::route::parse_path_known;
use crate::upstream::{UpstreamClient, UpstreamResponse};

/// What the cache did for a request: the `X-Cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit = 0,
    Miss = 1,
    Stale = 2,
    Bypass = 3,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

/// What goes back to the client.
enum Reply {
    Upstream(UpstreamResponse),
    Cached(Arc<crate::cache::Cached>),
    Error(GatewayError),
}

impl From<FlightResult> for Reply {
    fn from(result: FlightResult) -> Reply {
        match result {
            Ok(response) => Reply::Upstream(response),
            Err(error) => Reply::Error(error),
        }
    }
}

/// The gateway's request handler.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    /// App name → index into `shared.apps`.
    app_index: HashMap<String, usize>,
    default_app: usize,
    max_body_bytes: usize,
    allow_unknown_commands: bool,
    /// Which `Host`/`Origin` values the client listener answers (browser protection).
    hosts: HostPolicy,
    /// Every metric of this gateway, each concern's families registered by its module.
    registry: Registry,
    requests: RequestFamilies,
    /// Requests that could not be routed (app and command `unknown`).
    unrouted: RequestMetrics,
    config_metrics: crate::metrics::ConfigMetrics,
}

impl Proxy {
    /// Builds the handler from a validated config and a shared upstream client; mints every
    /// app's first UserSig and starts the cache's housekeeping (needs a tokio runtime).
    pub fn new(config: &Config, upstream: UpstreamClient) -> Self {
        const FIXED: &str = "metric names and labels are fixed and valid";
        let registry = crate::metrics::registry().expect(FIXED);
        let requests = RequestFamilies::register(&registry).expect(FIXED);
        let shared = Shared::build(config, upstream, &registry, &requests).expect(FIXED);
        let app_index = shared
            .apps
            .iter()
            .enumerate()
            .map(|(i, app)| (app.name.clone(), i))
            .collect();
        Proxy {
            shared: Arc::new(shared),
            app_index,
            default_app: config.default_app,
            max_body_bytes: config.server.max_body_bytes,
            allow_unknown_commands: config.server.allow_unknown_commands,
            // A unix socket is local: its clients are held to a loopback listener's rules.
            hosts: HostPolicy::new(
                config
                    .server
                    .listen
                    .tcp()
                    .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                &config.server.allowed_hosts,
            ),
            unrouted: requests.pair(UNKNOWN_APP, UNKNOWN_COMMAND),
            config_metrics: crate::metrics::ConfigMetrics::register(&registry).expect(FIXED),
            requests,
            registry,
        }
    }

    pub fn apps(&self) -> &[App] {
        &self.shared.apps
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Purges cached answers: all, or those of one app and/or one command (admin endpoint).
    ///
    /// # Errors
    /// The app or command is unknown; the message names it.
    pub fn purge(&self, app: Option<&str>, command: Option<&str>) -> Result<(), String> {
        let app = match app {
            Some(name) => Some(
                *self
                    .app_index
                    .get(name)
                    .ok_or_else(|| format!("unknown app {name:?}"))? as u32,
            ),
            None => None,
        };
        let command = match command {
            Some(name) => Some(
                self.shared
                    .catalogue
                    .lookup(name)
                    .ok_or_else(|| format!("unknown command {name:?}"))?
                    .index() as u32,
            ),
            None => None,
        };
        // Other gateways are told in the background (fleet mode's shared cache).
        drop(self.shared.cache.invalidate_where(app, command));
        Ok(())
    }

    /// The Prometheus text exposition of every metric; scrape-time values are read now.
    pub fn render_metrics(&self) -> Vec<u8> {
        crate::metrics::render(&self.registry)
    }

    /// The configuration's load and reload metrics.
    pub fn config_metrics(&self) -> &crate::metrics::ConfigMetrics {
        &self.config_metrics
    }

    /// Applies a reloaded configuration's live settings (SIGHUP or a changed file); says
    /// what became of `log.level`.
    ///
    /// # Errors
    /// The log filter could not be replaced (logged; it stays as it was).
    pub fn apply_live(
        &self,
        started: &Config,
        new: &Config,
    ) -> Result<crate::log_level::Applied, String> {
        self.shared.apply_live(started, new);
        crate::log_level::apply(&new.log.level).inspect_err(|error| {
            tracing::warn!(%error, "cannot apply log.level; the log filter stays as it was");
        })
    }

    /// Commands `config` names that the running catalogue does not know (restart needed).
    pub fn unknown_configured_commands(&self, config: &Config) -> Vec<String> {
        self.shared.unknown_configured_commands(config)
    }

    /// Every metric family name registered (with the prefix), for tests and docs.
    pub fn metric_family_names(&self) -> Vec<String> {
        crate::metrics::family_names(&self.registry)
    }

    /// Starts draining: requests waiting for a throttle permit stop waiting and get a clean
    /// 503; calls already sent finish.
    pub fn begin_drain(&self) {
        self.shared.drain.send_replace(DrainStage::Draining);
    }

    /// Ends the drain: calls still waiting on Tencent get a clean 503 now, before the grace
    /// period runs out and their connections would be cut.
    pub fn stop_upstream_calls(&self) {
        self.shared.drain.send_replace(DrainStage::Stopping);
    }

    /// Waits until this gateway has left the fleet (fleet mode; the drain began). Bounded by
    /// `fleet.command_timeout` per app: the goodbye is one script call each.
    pub async fn left_fleet(&self) {
        let task = self
            .shared
            .membership
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Answers one client request. Never fails: every error becomes an envelope.
    pub fn handle<'a, B>(
        &'a self,
        request: Request<B>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + 'a
    where
        B: Body<Data = Bytes> + 'a,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Taken apart before the future is made: the future holds the parts once, not the
        // request as well (the connection keeps each request's future in place).
        let (parts, body) = request.into_parts();
        async move { self.handle_parts(&parts, body).await }
    }

    /// [`handle`](Self::handle) for a server that needs a future owning the proxy.
    pub fn serve<B>(
        self: Arc<Self>,
        request: Request<B>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + 'static
    where
        B: Body<Data = Bytes> + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        async move { self.handle_parts(&parts, body).await }
    }

    async fn handle_parts<B>(&self, parts: &http::request::Parts, body: B) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Counts the request in flight; if the client hangs up before the answer, its drop
        // still writes the access line and the metrics (status 499).
        let mut ctx = RequestCtx::enter(self, request_id(&parts.headers));
        let reply = self.answer(parts, body, &mut ctx).await;
        self.respond(reply, &mut ctx, parts)
    }

    /// The phases up to `respond`, in order; each early return is the reply.
    async fn answer<'a, B>(
        &'a self,
        parts: &'a http::request::Parts,
        body: B,
        ctx: &mut RequestCtx<'a>,
    ) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Browser protection comes before anything else: a refused request learns nothing
        // about routes or apps.
        if let Err(refused) = self.hosts.check(&parts.headers) {
            return Reply::Error(refused.into());
        }
        let target = match self.route(&parts.method, parts.uri.path()) {
            Ok(target) => target,
            Err(error) => return Reply::Error(error),
        };
        ctx.target = Some(target);
        // A client trickling its body is bounded by the same deadline as the request. Most
        // bodies arrive with the headers: then the first poll finishes and no timer is armed.
        let deadline = ctx.started + self.shared.retry.deadline;
        let mut read = std::pin::pin!(self.read_body(&target, body));
        let read = match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
            Poll::Ready(read) => read,
            Poll::Pending => match tokio::time::timeout_at(deadline, read).await {
                Err(_) => return Reply::Error(GatewayError::ClientTimeout),
                Ok(read) => read,
            },
        };
        let body = match read {
            Err(error) => return Reply::Error(error),
            Ok(body) => body,
        };
        match (target.cache, body.canonical) {
            (Some(policy), Some(Canonical::Key(canonical))) => {
                let key = CacheKey {
                    app: target.lane.app as u32,
                    command: target
                        .lane
                        .command
                        .expect("only catalogue commands are cached")
                        as u32,
                    body: canonical,
                };
                // A repeat hit is answered without awaiting anything (most never get here:
                // `answer_now` answers them from the read buffer). Every other path is boxed:
                // it waits on moka, Redis or Tencent anyway, and inline its state would make
                // each request's future (kept per connection) several KiB, not a few hundred
                // bytes.
                if let Some(cached) = self.shared.cache.lookup_hot(&key, &policy, Instant::now()) {
                    ctx.cache = CacheStatus::Hit;
                    return Reply::Cached(cached);
                }
                let lookup = self.lookup(&target, key, body.raw, policy, deadline);
                let (reply, status) = Box::pin(lookup).await;
                ctx.cache = status;
                reply
            }
            // A cacheable read that is not cacheable as written (a repeated key): straight to
            // Tencent, uncached.
            (Some(_), Some(Canonical::RepeatedKey)) => {
                let call = self.shared.call(&target, body.raw, deadline, true);
                Reply::from(Box::pin(call).await)
            }
            _ => Box::pin(self.write(&target, body.raw, deadline)).await,
        }
    }

    /// An uncached command goes straight upstream; a write's success invalidates the reads
    /// it affects.
    async fn write(&self, target: &Target<'_>, body: Bytes, deadline: Instant) -> Reply {
        // Armed before the call: if this task is cancelled (the client hung up) after the
        // write may have reached Tencent, the reads it affects are still dropped.
        let mut invalidation = InvalidateOnDrop {
            shared: &self.shared,
            target,
            is_armed: true,
        };
        let result = self.shared.call(target, body, deadline, true).await;
        let is_changed = match &result {
            // Tencent's answer says whether the write happened.
            Ok(response) => response.error_code == 0,
            // Never sent: nothing changed upstream.
            Err(
                GatewayError::Throttled(_)
                | GatewayError::Draining
                | GatewayError::UpstreamConnect(_),
            ) => false,
            // Sent, outcome unknown (timeout, dropped connection): assume it happened.
            Err(_) => true,
        };
        invalidation.is_armed = false;
        if is_changed {
            // This gateway's entries go at once (before the first poll); the answer waits
            // until the other gateways sharing the cache have been told, so a read through
            // any of them after this answer sees the write (bounded by the tier's timeout).
            self.shared.invalidate_after_write(target).await;
        }
        Reply::from(result)
    }

    /// In this phase the path names an app and a command. An early return means no such route,
    /// app or command (404), or a method the command does not take (405).
    fn route<'a>(&'a self, method: &Method, path: &'a str) -> Result<Target<'a>, GatewayError> {
        let catalogue = &self.shared.catalogue;
        let (parsed, known) = parse_path_known(path, |command| catalogue.lookup(command))
            .ok_or(GatewayError::NoRoute)?;
        let app = match parsed.app {
            Some(name) => *self.app_index.get(name).ok_or(GatewayError::UnknownApp)?,
            None => self.default_app,
        };
        let lane = match known {
            Some(id) => self.shared.lane(app, Some(id.index())),
            None if self.allow_unknown_commands => {
                self.shared.pass_through_lane(app, parsed.command)
            }
            None => return Err(GatewayError::UnknownCommand(parsed.command.to_owned())),
        };
        // A plain GET is accepted for cacheable reads, so `curl URL` works (PRODUCT.md).
        let cache = lane.policy.load().cache;
        let is_cacheable = cache.is_some();
        let is_plain_read = *method == Method::GET || *method == Method::HEAD;
        if *method != Method::POST && !(is_cacheable && is_plain_read) {
            return Err(GatewayError::MethodNotAllowed {
                allows_get: is_cacheable,
            });
        }
        Ok(Target {
            lane,
            command: parsed.command,
            cache,
        })
    }

    /// In this phase the body is read, bounded, and checked to be one JSON object, in one
    /// linear pass that also builds the cache key's canonical form for cacheable reads. The
    /// same rules hold for every command (issue 7, F8). An early return means it was too
    /// large (413), unreadable, not JSON, not an object or nested too deep (400).
    async fn read_body<B>(&self, target: &Target<'_>, body: B) -> Result<ValidBody, GatewayError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = self.max_body_bytes;
        // Refuse a declared oversized body before reading a byte of it: the client's body
        // knows its `Content-Length` (its size hint's lower bound), without a header lookup.
        if body.size_hint().lower() > limit as u64 {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        let bytes = match read::read_limited(body, limit).await {
            Ok(bytes) => bytes,
            Err(read::ReadError::TooLarge) => return Err(GatewayError::BodyTooLarge { limit }),
            Err(read::ReadError::Broken) => return Err(GatewayError::ClientBody),
        };
        let raw = if body::is_blank(&bytes) {
            // Tencent never takes an empty body (reference §1); for a read it means `{}`.
            match target.lane.access {
                Access::Read => Bytes::from_static(b"{}"),
                Access::Write => return Err(GatewayError::EmptyBody),
            }
        } else {
            bytes
        };
        let canonical = if target.cache.is_some() {
            Some(body::canonical(&raw)?)
        } else {
            body::validate(&raw)?;
            None
        };
        Ok(ValidBody { raw, canonical })
    }

    /// In this phase a cacheable read is answered from the cache when it can be: fresh → HIT;
    /// stale within `stale_while_revalidate` → STALE plus one background refresh; otherwise the
    /// caller joins the key's single flight, and a failure falls back to an entry still within
    /// `stale_if_error`.
    async fn lookup(
        &self,
        target: &Target<'_>,
        key: CacheKey,
        body: Bytes,
        policy: CachePolicy,
        deadline: Instant,
    ) -> (Reply, CacheStatus) {
        let fallback = match self
            .shared
            .cache
            .lookup(&key, &policy, Instant::now())
            .await
        {
            Lookup::Fresh(cached) => return (Reply::Cached(cached), CacheStatus::Hit),
            Lookup::Stale(cached) => {
                // No client waits on the refresh: it gets a deadline of its own.
                let own_deadline = Instant::now() + self.shared.retry.deadline;
                self.refresh(self.fill(target, key, body, policy, own_deadline, true));
                return (Reply::Cached(cached), CacheStatus::Stale);
            }
            Lookup::Miss { fallback } => fallback,
        };
        let may_wait = fallback.is_none();
        let fill = self.fill(target, key, body, policy, deadline, may_wait);
        let result = self.fetch(fill).await;
        let is_failure = match &result {
            Ok(response) => {
                response.status.is_server_error()
                    || Outcome::of(response.error_code).is_upstream_failure()
            }
            Err(_) => true,
        };
        match fallback {
            Some(stale) if is_failure => (Reply::Cached(stale), CacheStatus::Stale),
            _ => (Reply::from(result), CacheStatus::Miss),
        }
    }

    fn fill(
        &self,
        target: &Target<'_>,
        key: CacheKey,
        body: Bytes,
        policy: CachePolicy,
        deadline: Instant,
        may_wait: bool,
    ) -> Fill {
        Fill {
            key,
            lane: Arc::clone(target.lane),
            body,
            policy,
            deadline,
            may_wait,
        }
    }

    /// Joins (or leads) the single flight for the fill's key and waits for its result. The
    /// fetch runs as its own task, started at once: this caller going away neither cancels
    /// nor repeats it. If a leader's task dies without an answer, the waiters join again.
    async fn fetch(&self, fill: Fill) -> FlightResult {
        for _ in 0..MAX_FLIGHT_JOINS {
            let waiter = match self.shared.cache.join(&fill.key) {
                Join::Follower(waiter) => waiter,
                Join::Leader(flight) => {
                    let waiter = flight.waiter();
                    tokio::spawn(Arc::clone(&self.shared).run_fill(flight, fill.clone()));
                    waiter
                }
            };
            if let Some(result) = waiter.wait().await {
                return result;
            }
        }
        Err(GatewayError::UpstreamProtocol(
            "the shared fetch ended without an answer".into(),
        ))
    }

    /// Starts a background refresh of a stale entry unless one is already running.
    fn refresh(&self, fill: Fill) {
        if let Some(flight) = self.shared.cache.join_refresh(&fill.key) {
            tokio::spawn(Arc::clone(&self.shared).run_fill(flight, fill));
        }
    }
}

/// A body that passed `read_body`: as the client sent it (forwarded upstream unchanged) and,
/// for cacheable reads, its canonical form.
struct ValidBody {
    raw: Bytes,
    canonical: Option<Canonical>,
}

/// How often a waiter joins a flight whose leader died without an answer before giving up.
const MAX_FLIGHT_JOINS: usize = 3;

/// Invalidates the reads a write affects when dropped armed.
struct InvalidateOnDrop<'a> {
    shared: &'a Shared,
    target: &'a Target<'a>,
    is_armed: bool,
}

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        if self.is_armed {
            // Other gateways are told in the background.
            drop(self.shared.invalidate_after_write(self.target));
        }
    }
}
