//! The client-facing handler: one request in, one answer out, as a row of named phases.
//!
//! `route` → `read_body` → `lookup` (cacheable reads) → `forward` (throttle, sign, send,
//! classify, retry; in [`forward`]) → `respond` (PRODUCT.md, "What it does for a request").
//! Each phase returns early with a [`GatewayError`] that becomes Tencent's envelope; Tencent's
//! own answers are relayed unchanged, with `X-Cache` and `Age`.

mod forward;
mod respond;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use tokio::time::Instant;

pub use forward::{App, CommandRuntime, DrainStage, Outcome, RetrySettings, Shared, Target};
pub use respond::ACCESS_LOG;

use respond::{request_id, RequestCtx};

use crate::body::{self, Canonical};
use crate::cache::{
    CacheKey, CachePolicy, Cached, Flight, FlightResult, Join, Lookup, ResponseCache,
};
use crate::catalogue::{Access, Catalogue, DEFAULT_INVALIDATIONS};
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::origin::HostPolicy;
use crate::route::parse_path;
use crate::signer::Signer;
use crate::throttle::{BudgetSpec, Throttle};
use crate::upstream::{UpstreamClient, UpstreamResponse};

/// The cache policy of commands the catalogue marks cacheable, unless the config overrides it.
pub const DEFAULT_CACHE_POLICY: CachePolicy = CachePolicy {
    ttl: Duration::from_secs(5),
    stale_while_revalidate: Duration::from_secs(25),
    stale_if_error: Duration::from_secs(300),
};

/// What the cache did for a request: the `X-Cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Stale,
    Bypass,
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
    Cached(Arc<Cached>),
    Error(GatewayError),
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
}

/// Per-command runtime settings: catalogue defaults, then the config's cache rules.
fn command_runtime(catalogue: &Catalogue, config: &Config) -> Vec<CommandRuntime> {
    let mut commands: Vec<CommandRuntime> = catalogue
        .iter()
        .map(|(_, spec)| CommandRuntime {
            cache: spec.is_cacheable.then_some(DEFAULT_CACHE_POLICY),
            invalidates: Vec::new(),
        })
        .collect();
    // read index → write indices that invalidate it.
    let mut invalidated_by: HashMap<usize, Vec<usize>> = HashMap::new();
    for (read, writes) in DEFAULT_INVALIDATIONS {
        if let Some(read) = catalogue.lookup(read) {
            let writes = writes.iter().filter_map(|w| catalogue.lookup(w));
            invalidated_by.insert(read.index(), writes.map(|w| w.index()).collect());
        }
    }
    // Config rules replace the defaults of their command (validated by `config`).
    for rule in &config.cache.rules {
        let Some(read) = catalogue.lookup(&rule.command) else {
            continue;
        };
        commands[read.index()].cache = rule.enabled.then_some(CachePolicy {
            ttl: rule.ttl,
            stale_while_revalidate: rule.stale_while_revalidate,
            stale_if_error: rule.stale_if_error,
        });
        let writes = rule
            .invalidated_by
            .iter()
            .filter_map(|w| catalogue.lookup(w));
        invalidated_by.insert(read.index(), writes.map(|w| w.index()).collect());
    }
    for (read, writes) in invalidated_by {
        if commands[read].cache.is_none() {
            continue;
        }
        for write in writes {
            commands[write].invalidates.push(read);
        }
    }
    commands
}

fn budget_specs(catalogue: &Catalogue, config: &Config) -> (Vec<BudgetSpec>, BudgetSpec) {
    let t = &config.throttle;
    let spec = |quota: u32| BudgetSpec {
        quota,
        safety_margin: t.safety_margin,
        burst: t.burst,
        max_wait: t.max_wait,
        max_waiters: t.max_waiters,
    };
    let specs = catalogue
        .iter()
        .map(|(_, command)| {
            let quota = t
                .quotas
                .iter()
                .find(|q| q.command == command.name)
                .map(|q| q.per_second)
                .or(command.quota_per_second)
                .unwrap_or(t.default_quota);
            spec(quota)
        })
        .collect();
    (specs, spec(t.default_quota))
}

impl Proxy {
    /// Builds the handler from a validated config and a shared upstream client; mints every
    /// app's first UserSig and starts the cache's housekeeping (needs a tokio runtime).
    pub fn new(config: &Config, upstream: UpstreamClient) -> Self {
        let catalogue = Catalogue::builtin();
        let apps: Vec<App> = config
            .apps
            .iter()
            .map(|app| App {
                name: app.name.clone(),
                origins: app.origins.clone(),
                signer: Signer::new(
                    app.sdkappid,
                    app.identifier.clone(),
                    app.secret_key.clone(),
                    app.usersig_lifetime,
                ),
                last_alarm: AtomicU64::new(0),
            })
            .collect();
        let app_index = apps
            .iter()
            .enumerate()
            .map(|(i, app)| (app.name.clone(), i))
            .collect();
        let (command_specs, other_spec) = budget_specs(&catalogue, config);
        let app_names: Vec<String> = apps.iter().map(|app| app.name.clone()).collect();
        let command_names: Vec<&'static str> = catalogue.iter().map(|(_, s)| s.name).collect();
        let metrics = Arc::new(
            Metrics::register(&app_names, &command_names)
                .expect("metric names and labels are fixed and valid"),
        );
        let on_evict = {
            let metrics = Arc::clone(&metrics);
            move |cause| metrics.cache_eviction(cause)
        };
        let shared = Shared {
            throttle: Throttle::new(apps.len(), &command_specs, other_spec),
            cache: ResponseCache::new(
                config.cache.max_bytes,
                apps.len() as u32,
                catalogue.len() as u32,
                on_evict,
            ),
            metrics,
            drain: tokio::sync::watch::Sender::new(DrainStage::Running),
            commands: command_runtime(&catalogue, config),
            apps,
            catalogue,
            upstream,
            retry: RetrySettings {
                max_retries: config.upstream.max_retries,
                base_delay: config.upstream.retry_base_delay,
                deadline: config.upstream.deadline,
                backoff_base: config.throttle.backoff_base,
                backoff_max: config.throttle.backoff_max,
            },
        };
        Proxy {
            shared: Arc::new(shared),
            app_index,
            default_app: config.default_app,
            max_body_bytes: config.server.max_body_bytes,
            allow_unknown_commands: config.server.allow_unknown_commands,
            hosts: HostPolicy::new(config.server.listen, &config.server.allowed_hosts),
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
        self.shared.cache.invalidate_where(app, command);
        for (a, c) in self.cacheable_pairs() {
            if app.is_none_or(|x| x as usize == a) && command.is_none_or(|x| x as usize == c) {
                self.shared.metrics.cache_invalidation(a, c);
            }
        }
        Ok(())
    }

    /// Every (app, catalogue command) pair whose answers are cached.
    fn cacheable_pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let commands = &self.shared.commands;
        (0..self.shared.apps.len()).flat_map(move |a| {
            (0..commands.len())
                .filter(|&c| commands[c].cache.is_some())
                .map(move |c| (a, c))
        })
    }

    /// Copies scrape-time state (cache size, throttle queues and pauses, UserSig mints and
    /// expiry) into the metrics and renders them.
    pub fn render_metrics(&self) -> Vec<u8> {
        let shared = &self.shared;
        shared.metrics.scrape(|metrics| {
            let (entries, bytes) = shared.cache.usage();
            metrics.set_cache_usage(entries, bytes);
            for (a, app) in shared.apps.iter().enumerate() {
                // `current()`, not a peek: a scrape re-mints a UserSig past 80% of its
                // lifetime, so an idle gateway's expiry metric (and its alert) stays truthful.
                let minted = app.signer.current();
                metrics.set_usersig(a, app.signer.mints_by_reason(), minted.expires_at_unix);
                for c in 0..=shared.catalogue.len() {
                    let command = (c < shared.catalogue.len()).then_some(c);
                    let budget = shared.throttle.budget(a, command);
                    let spec = budget.spec();
                    let slot = command.unwrap_or(metrics.other_command());
                    metrics.set_budget(
                        a,
                        slot,
                        budget.waiters(),
                        budget.is_paused(),
                        spec.budget(),
                        spec.quota,
                    );
                }
            }
        })
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

    /// Answers one client request. Never fails: every error becomes an envelope.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let metrics = &self.shared.metrics;
        let (parts, body) = request.into_parts();
        // Counts the request in flight; if the client hangs up before the answer, its drop
        // still writes the access line and the metrics (status 499).
        let mut ctx = RequestCtx::enter(&self.shared, request_id(&parts.headers));
        // Browser protection comes before anything else: a refused request learns nothing
        // about routes or apps.
        let routed = match self.hosts.check(&parts.headers) {
            Ok(()) => self.route(&parts.method, parts.uri.path()),
            Err(refused) => Err(refused.into()),
        };
        let (reply, target) = match routed {
            Err(error) => (Reply::Error(error), None),
            Ok(target) => {
                ctx.app = target.app;
                ctx.command = target.id.unwrap_or(metrics.other_command());
                // A client trickling its body is bounded by the same deadline as the request.
                let deadline = ctx.started + self.shared.retry.deadline;
                let read = self.read_body(&target, &parts.headers, body);
                let reply = match tokio::time::timeout_at(deadline, read).await {
                    Err(_) => Reply::Error(GatewayError::ClientTimeout),
                    Ok(Err(error)) => Reply::Error(error),
                    Ok(Ok(body)) => self.answer(&target, body, &mut ctx).await,
                };
                (reply, Some(target))
            }
        };
        self.respond(reply, &mut ctx, target.as_ref(), &parts)
    }

    /// Answers a routed request with a valid body: from the cache for cacheable reads,
    /// otherwise straight upstream.
    async fn answer(
        &self,
        target: &Target<'_>,
        body: ValidBody,
        ctx: &mut RequestCtx<'_>,
    ) -> Reply {
        let deadline = ctx.started + self.shared.retry.deadline;
        match (self.cache_policy(target), body.canonical) {
            (Some(policy), Some(canonical)) => {
                let (reply, status) = self
                    .lookup(target, body.raw, canonical, policy, deadline)
                    .await;
                ctx.cache = status;
                reply
            }
            _ => {
                let body = body.raw;
                // Armed before the call: if this task is cancelled (the client hung up) after
                // the write may have reached Tencent, the reads it affects are still dropped.
                let mut invalidation = InvalidateOnDrop {
                    shared: &self.shared,
                    target,
                    is_armed: true,
                };
                let result = self.shared.forward(target, body, deadline, true).await;
                invalidation.is_armed = match &result {
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
                drop(invalidation);
                into_reply(result)
            }
        }
    }

    /// In this phase the path names an app and a command. An early return means no such route,
    /// app or command (404), or a method the command does not take (405).
    fn route<'a>(&self, method: &Method, path: &'a str) -> Result<Target<'a>, GatewayError> {
        let parsed = parse_path(path).ok_or(GatewayError::NoRoute)?;
        let app = match parsed.app {
            Some(name) => *self.app_index.get(name).ok_or(GatewayError::UnknownApp)?,
            None => self.default_app,
        };
        // Commands outside the catalogue are treated as writes: never cached, never retried.
        let (id, access, is_cacheable) = match self.shared.catalogue.lookup(parsed.command) {
            Some(id) => (
                Some(id.index()),
                self.shared.catalogue.spec(id).access,
                self.shared.commands[id.index()].cache.is_some(),
            ),
            None if self.allow_unknown_commands => (None, Access::Write, false),
            None => return Err(GatewayError::UnknownCommand(parsed.command.to_owned())),
        };
        // A plain GET is accepted for cacheable reads, so `curl URL` works (PRODUCT.md).
        let is_plain_read = *method == Method::GET || *method == Method::HEAD;
        if *method != Method::POST && !(is_cacheable && is_plain_read) {
            return Err(GatewayError::MethodNotAllowed {
                allows_get: is_cacheable,
            });
        }
        Ok(Target {
            app,
            command: parsed.command,
            id,
            access,
        })
    }

    /// The cache policy of a routed command, if its answers are cached.
    fn cache_policy(&self, target: &Target<'_>) -> Option<CachePolicy> {
        target.id.and_then(|id| self.shared.commands[id].cache)
    }

    /// In this phase the body is read, bounded, and checked to be one JSON object, in one
    /// linear pass that also builds the cache key's canonical form for cacheable reads. The
    /// same rules hold for every command (issue 7, F8). An early return means it was too
    /// large (413), unreadable, not JSON, not an object or nested too deep (400).
    async fn read_body<B>(
        &self,
        target: &Target<'_>,
        headers: &http::HeaderMap,
        body: B,
    ) -> Result<ValidBody, GatewayError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = self.max_body_bytes;
        // Refuse a declared oversized body before reading a byte of it.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(GatewayError::BodyTooLarge { limit })
            }
            Err(_) => return Err(GatewayError::ClientBody),
        };
        let raw = if body::is_blank(&bytes) {
            // Tencent never takes an empty body (reference §1); for a read it means `{}`.
            match target.access {
                Access::Read => Bytes::from_static(b"{}"),
                Access::Write => return Err(GatewayError::EmptyBody),
            }
        } else {
            bytes
        };
        let canonical = if self.cache_policy(target).is_some() {
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
        body: Bytes,
        canonical: Canonical,
        policy: CachePolicy,
        deadline: Instant,
    ) -> (Reply, CacheStatus) {
        let id = target.id.expect("only catalogue commands are cacheable");
        let key = match canonical {
            Canonical::Key(canonical) => CacheKey {
                app: target.app as u32,
                command: id as u32,
                body: canonical,
            },
            // Not cacheable as written (a repeated key): straight to Tencent, uncached.
            Canonical::RepeatedKey => {
                let result = self.shared.forward(target, body, deadline, true).await;
                return (into_reply(result), CacheStatus::Bypass);
            }
        };
        let fill = |key: CacheKey, body: Bytes, deadline: Instant, may_wait: bool| Fill {
            key,
            app: target.app,
            id,
            body,
            policy,
            deadline,
            may_wait,
        };
        let fallback = match self
            .shared
            .cache
            .lookup(&key, &policy, Instant::now())
            .await
        {
            Lookup::Fresh(cached) => {
                self.shared
                    .metrics
                    .cache_lookup(target.app, id, CacheStatus::Hit);
                return (Reply::Cached(cached), CacheStatus::Hit);
            }
            Lookup::Stale(cached) => {
                self.shared
                    .metrics
                    .cache_lookup(target.app, id, CacheStatus::Stale);
                // No client waits on the refresh: it gets a deadline of its own.
                let own_deadline = Instant::now() + self.shared.retry.deadline;
                self.refresh(fill(key, body, own_deadline, true));
                return (Reply::Cached(cached), CacheStatus::Stale);
            }
            Lookup::Miss { fallback } => {
                self.shared
                    .metrics
                    .cache_lookup(target.app, id, CacheStatus::Miss);
                fallback
            }
        };
        let may_wait = fallback.is_none();
        let result = self.fetch(fill(key, body, deadline, may_wait)).await;
        let is_failure = match &result {
            Ok(response) => {
                response.status.is_server_error()
                    || Outcome::of(response.error_code).is_upstream_failure()
            }
            Err(_) => true,
        };
        match fallback {
            Some(stale) if is_failure => (Reply::Cached(stale), CacheStatus::Stale),
            _ => (into_reply(result), CacheStatus::Miss),
        }
    }

    /// Joins (or leads) the single flight for the fill's key and waits for its result. The
    /// fetch runs as its own task, started at once: this caller going away neither cancels
    /// nor repeats it. If a leader's task dies without an answer, the waiters join again.
    async fn fetch(&self, fill: Fill) -> FlightResult {
        for _ in 0..MAX_FLIGHT_JOINS {
            let waiter = match self.shared.cache.join(&fill.key) {
                Join::Follower(waiter) => {
                    self.shared.metrics.cache_coalesced(fill.app, fill.id);
                    waiter
                }
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
        if let Join::Leader(flight) = self.shared.cache.join(&fill.key) {
            self.shared.metrics.cache_refresh(fill.app, fill.id);
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
            self.shared.invalidate_after_write(self.target);
        }
    }
}

/// One fetch that fills a cache entry: everything its task needs, owned.
#[derive(Clone)]
struct Fill {
    key: CacheKey,
    app: usize,
    /// Catalogue index of the (cacheable) command.
    id: usize,
    body: Bytes,
    policy: CachePolicy,
    deadline: Instant,
    /// False when a stale fallback exists: do not queue for a permit (see `Shared::forward`).
    may_wait: bool,
}

impl Shared {
    /// Fetches for `fill` and completes its flight: stores a success, wakes every waiter.
    async fn run_fill(self: Arc<Self>, flight: Flight, fill: Fill) {
        // Another flight may have stored a fresh answer between our lookup and our
        // registration (or just before a stale-while-revalidate refresh): use it.
        if let Lookup::Fresh(cached) = self
            .cache
            .lookup(&fill.key, &fill.policy, Instant::now())
            .await
        {
            flight.complete_from_cache(&cached);
            return;
        }
        let spec = self.catalogue.spec_at(fill.id);
        let target = Target {
            app: fill.app,
            command: spec.name,
            id: Some(fill.id),
            access: spec.access,
        };
        let result = self
            .forward(&target, fill.body, fill.deadline, fill.may_wait)
            .await;
        flight.complete(result, fill.policy).await;
    }
}

fn into_reply(result: FlightResult) -> Reply {
    match result {
        Ok(response) => Reply::Upstream(response),
        Err(error) => Reply::Error(error),
    }
}
