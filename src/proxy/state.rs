//! What the handler and the fetch tasks it spawns share, built once from the config: the apps,
//! one [`Lane`] per (app, command), the cache, the limiter, the upstream client.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use std::time::Duration;

use prometheus::Registry;

use super::respond::{RequestFamilies, RequestMetrics};
use crate::cache::{CacheLabels, CachePolicy, ResponseCache};
use crate::catalogue::{Access, Catalogue};
use crate::config::Config;
use crate::limiter::{BackOff, BudgetKey, Limiter, PASS_THROUGH_BUDGETS};
use crate::metrics::OTHER_COMMAND;
use crate::region::Origins;
use crate::shared_cache::{RedisTier, SharedCacheConfig};
use crate::signer::{Signer, UserSigCollector};
use crate::throttle::BudgetSpec;
use crate::upstream::{UpstreamClient, UpstreamFamilies, UpstreamMetrics};

/// The cache policy of commands the catalogue marks cacheable, unless the config overrides it.
pub const DEFAULT_CACHE_POLICY: CachePolicy = CachePolicy {
    ttl: Duration::from_secs(5),
    stale_while_revalidate: Duration::from_secs(25),
    stale_if_error: Duration::from_secs(300),
};

/// One configured app at run time.
#[derive(Debug)]
pub struct App {
    pub name: String,
    /// Replaced by a reload that changes the app's region or endpoint.
    pub origins: ArcSwap<Origins>,
    pub signer: Arc<Signer>,
    /// Unix second of the last configuration alarm logged for this app.
    pub(super) last_alarm: AtomicU64,
}

/// Everything the gateway knows about one (app, command) pair, resolved at start: `route`
/// finds it, and every later phase reads from it.
#[derive(Debug)]
pub struct Lane {
    /// Index into [`Shared::apps`].
    pub app: usize,
    /// Catalogue index, `None` for the app's pass-through commands.
    pub command: Option<usize>,
    /// The catalogue name, or `other` for pass-through.
    pub label: &'static str,
    /// Commands outside the catalogue are treated as writes: never cached, never retried.
    pub access: Access,
    /// How it is cached and what it invalidates: replaced whole by a reload. `route` reads it
    /// once per request.
    pub policy: ArcSwap<LanePolicy>,
    /// Which budget its upstream calls take permits from.
    pub budget: BudgetKey,
    /// Its client requests' metrics.
    pub requests: RequestMetrics,
    /// Its upstream calls' metrics.
    pub upstream: UpstreamMetrics,
}

/// What a reload may change of a lane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LanePolicy {
    /// `Some` if answers are cached.
    pub cache: Option<CachePolicy>,
    /// Catalogue indices of the cached reads a success of this command invalidates.
    pub invalidates: Vec<u32>,
}

/// Retry and back-off settings.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    pub max_retries: u32,
    pub base_delay: Duration,
    /// The whole client request, throttle waits and retries included.
    pub deadline: Duration,
}

/// How far a shutdown has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainStage {
    Running,
    /// Shutdown began: requests waiting for a throttle permit give up with a clean 503.
    Draining,
    /// The grace period is almost over: calls still waiting on Tencent are abandoned with a
    /// clean 503 rather than cut off without an answer when the process exits.
    Stopping,
}

/// State shared by the handler and the fetch tasks it spawns.
#[derive(Debug)]
pub struct Shared {
    /// The configured apps, in config order (a lane's `app` indexes it).
    pub apps: Vec<App>,
    /// The known commands (a lane's `command` indexes it).
    pub catalogue: Catalogue,
    /// Per app: one lane per catalogue command, then the `other` lane (pass-through commands
    /// once the app's own pass-through budgets are all taken).
    lanes: Box<[Arc<Lane>]>,
    /// Per app, [`PASS_THROUGH_BUDGETS`] lanes for commands outside the catalogue, each made
    /// on its command's first call (`pass_through_lane`).
    pass_through: Box<[OnceLock<Arc<Lane>>]>,
    /// For the lanes made later.
    requests: RequestFamilies,
    upstream_families: UpstreamFamilies,
    /// Answers of cacheable reads, and their single flights.
    pub cache: Arc<ResponseCache>,
    /// Every upstream budget, and the policy for Tencent's signals.
    pub limiter: Limiter,
    /// The pooled client to Tencent (or, in tests, to the in-process sandbox).
    pub upstream: UpstreamClient,
    /// Retries and the whole request's deadline.
    pub retry: RetrySettings,
    /// How far shutdown has come: throttle waiters and calls give up with a clean 503.
    pub drain: tokio::sync::watch::Sender<DrainStage>,
    /// Fleet mode: the heartbeat task, which leaves the fleet once the drain begins; the
    /// shutdown waits for it so the process does not exit before Redis has heard the goodbye.
    pub membership: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    /// Builds the shared state and registers every concern's metrics on `registry`; mints
    /// every app's first UserSig and starts the cache's housekeeping (needs a tokio runtime).
    ///
    /// # Errors
    /// A metric could not be registered (a bug).
    pub fn build(
        config: &Config,
        upstream: UpstreamClient,
        registry: &Registry,
        requests: &RequestFamilies,
    ) -> prometheus::Result<Shared> {
        let catalogue = Catalogue::with_configured(configured_commands(config));
        let apps: Vec<App> = config
            .apps
            .iter()
            .map(|app| App {
                name: app.name.clone(),
                origins: ArcSwap::from_pointee(app.origins.clone()),
                signer: Arc::new(Signer::new(
                    app.sdkappid,
                    app.identifier.clone(),
                    app.secret_key.clone(),
                    app.usersig_lifetime,
                )),
                last_alarm: AtomicU64::new(0),
            })
            .collect();
        let app_names: Vec<String> = apps.iter().map(|app| app.name.clone()).collect();
        let command_names: Vec<&'static str> = catalogue.iter().map(|(_, s)| s.name).collect();
        let (command_specs, other_spec) = budget_specs(&catalogue, config);
        let t = &config.throttle;
        let back_off = BackOff {
            base: t.backoff_base,
            max: t.backoff_max,
        };
        let fleet_redis = match &config.fleet {
            Some(fleet) => Some(fleet_redis(fleet, registry)?),
            None => None,
        };
        let limiter = match &fleet_redis {
            None => Limiter::local(
                registry,
                &app_names,
                &command_names,
                &command_specs,
                other_spec,
                back_off,
            )?,
            Some((redis, _)) => {
                let sdkappids: Vec<u64> = config.apps.iter().map(|app| app.sdkappid).collect();
                Limiter::fleet(
                    registry,
                    &app_names,
                    &sdkappids,
                    &command_names,
                    &command_specs,
                    other_spec,
                    back_off,
                    redis.clone(),
                )?
            }
        };
        let runtime = command_runtime(&catalogue, config);
        let cache = ResponseCache::new(
            config.cache.max_bytes,
            &CacheLabels {
                apps: app_names.clone(),
                // Every read, not only those cached now: a reload may cache any of them.
                commands: catalogue
                    .iter()
                    .map(|(_, spec)| (spec.access == Access::Read).then_some(spec.name))
                    .collect(),
            },
            registry,
            match (&fleet_redis, &config.fleet) {
                (Some((redis, client)), Some(fleet)) if fleet.shared_cache => {
                    Some(Box::new(RedisTier::new(
                        SharedCacheConfig {
                            connection: redis.connection.clone(),
                            background: background_connection(client),
                            client: client.clone(),
                            key_prefix: redis.key_prefix.clone(),
                            sdkappids: config.apps.iter().map(|app| app.sdkappid).collect(),
                            commands: command_names.clone(),
                            command_timeout: fleet.command_timeout,
                            metrics: Arc::clone(&redis.metrics),
                        },
                        registry,
                    )?) as Box<dyn crate::cache::SecondTier>)
                }
                _ => None,
            },
        )?;
        // The SDKAppID behind each app name, to join on: Tencent's quota is the SDKAppID's,
        // whatever each deployment names the app (one per configured app: bounded).
        let app_info = crate::metrics::gauge_vec(
            registry,
            "app_info",
            "A configured app: its name and the SDKAppID whose quota it spends; always 1.",
            &["app", "sdkappid"],
        )?;
        for app in &config.apps {
            app_info
                .with_label_values(&[app.name.as_str(), &app.sdkappid.to_string()])
                .set(1);
        }
        registry.register(Box::new(UserSigCollector::new(
            apps.iter()
                .map(|app| (app.name.clone(), Arc::clone(&app.signer)))
                .collect(),
        )?))?;
        let upstream_families = UpstreamFamilies::register(registry)?;
        for app in &apps {
            upstream_families.precreate_signals(&app.name);
        }
        let mut lanes = Vec::new();
        for (a, app) in apps.iter().enumerate() {
            for c in 0..=catalogue.len() {
                let command = (c < catalogue.len()).then_some(c);
                let (label, access, rt) = match command {
                    Some(c) => {
                        let spec = catalogue.spec_at(c);
                        (spec.name, spec.access, runtime[c].clone())
                    }
                    None => (OTHER_COMMAND, Access::Write, LanePolicy::default()),
                };
                lanes.push(Arc::new(Lane {
                    app: a,
                    command,
                    label,
                    access,
                    policy: ArcSwap::from_pointee(rt),
                    budget: limiter.key(a, command),
                    requests: requests.pair(&app.name, label),
                    upstream: upstream_families.pair(&app.name, label),
                }));
            }
        }
        let drain = tokio::sync::watch::Sender::new(DrainStage::Running);
        let mut leaving = None;
        if let (Some((redis, _)), Some(fleet)) = (&fleet_redis, &config.fleet) {
            let membership = crate::fleet::Membership::new(
                redis.connection.clone(),
                &redis.key_prefix,
                &config
                    .apps
                    .iter()
                    .map(|app| (app.name.clone(), app.sdkappid))
                    .collect::<Vec<_>>(),
                fleet.expected_replicas,
                fleet.command_timeout,
                Arc::clone(&redis.metrics),
                Arc::clone(&redis.members),
                registry,
            )?;
            // A draining gateway leaves the fleet at once rather than turning suspect.
            let mut stage = drain.subscribe();
            leaving = Some(tokio::spawn(membership.run(async move {
                let _ = stage.wait_for(|s| *s != DrainStage::Running).await;
            })));
        }
        Ok(Shared {
            pass_through: (0..apps.len() * PASS_THROUGH_BUDGETS)
                .map(|_| OnceLock::new())
                .collect(),
            requests: requests.clone(),
            upstream_families,
            apps,
            catalogue,
            lanes: lanes.into_boxed_slice(),
            cache,
            limiter,
            upstream,
            retry: RetrySettings {
                max_retries: config.upstream.max_retries,
                base_delay: config.upstream.retry_base_delay,
                deadline: config.upstream.deadline,
            },
            drain,
            membership: std::sync::Mutex::new(leaving),
        })
    }

    /// The lane of pass-through command `name` (outside the catalogue) in `app`: its own,
    /// with its own budget and metrics, while the app has pass-through budgets left; else the
    /// app's `other` lane. A lane once made is found again by a scan of at most
    /// [`PASS_THROUGH_BUDGETS`] names.
    pub fn pass_through_lane(&self, app: usize, name: &str) -> &Arc<Lane> {
        let lanes =
            &self.pass_through[app * PASS_THROUGH_BUDGETS..(app + 1) * PASS_THROUGH_BUDGETS];
        if let Some(lane) = lanes
            .iter()
            .filter_map(OnceLock::get)
            .find(|lane| lane.label == name)
        {
            return lane;
        }
        let budget = self.limiter.pass_through(app, name);
        let Some(i) = self.limiter.pass_through_index(budget) else {
            return self.lane(app, None);
        };
        lanes[i].get_or_init(|| {
            // At most PASS_THROUGH_BUDGETS names per app, kept for the process's life.
            let label: &'static str = Box::leak(name.to_owned().into_boxed_str());
            let app_name = &self.apps[app].name;
            Arc::new(Lane {
                app,
                command: None,
                label,
                access: Access::Write,
                policy: ArcSwap::from_pointee(LanePolicy::default()),
                budget,
                requests: self.requests.pair(app_name, label),
                upstream: self.upstream_families.pair(app_name, label),
            })
        })
    }

    /// Applies what a reload may change: every budget's numbers, every
    /// lane's cache policy, and each app's secret key where `started` read it from the same
    /// place as `new` does. Commands `new` names outside the running catalogue wait for a
    /// restart.
    pub fn apply_live(&self, started: &Config, new: &Config) {
        let (command_specs, other_spec) = budget_specs(&self.catalogue, new);
        self.limiter.set_specs(&command_specs, other_spec);
        let runtime = command_runtime(&self.catalogue, new);
        // Uncached lanes first (writes get their new invalidation lists, reads stop being
        // cached), then the cached reads: a read starts being cached only once every write
        // that must invalidate it does. A read whose caching changed drops what it had (kept
        // under other rules; while uncached, no write invalidated it), after its new policy
        // is in place.
        for is_cached in [false, true] {
            for app in 0..self.apps.len() {
                for (c, policy) in runtime.iter().enumerate() {
                    if policy.cache.is_some() != is_cached {
                        continue;
                    }
                    let lane = self.lane(app, Some(c));
                    let previous = lane.policy.load_full();
                    if *previous == *policy {
                        continue;
                    }
                    lane.policy.store(Arc::new(policy.clone()));
                    if previous.cache != policy.cache {
                        drop(self.cache.invalidate(app as u32, c as u32));
                    }
                }
            }
        }
        // Keys are left to `key_file`'s watcher (a key from the environment cannot change):
        // a reload reading a key file just before the watcher saw it rotate would put the
        // old key back.
        for app in &self.apps {
            let was = started.apps.iter().find(|a| a.name == app.name);
            let now = new.apps.iter().find(|a| a.name == app.name);
            let (Some(was), Some(now)) = (was, now) else {
                continue; // an app added or removed: a restart
            };
            if was.sdkappid != now.sdkappid {
                continue; // another app under the same name: a restart
            }
            if app.signer.update(&now.identifier, now.usersig_lifetime) {
                tracing::info!(app = %app.name, identifier = %now.identifier, "UserSig re-minted for the reloaded identifier or lifetime");
            }
            if **app.origins.load() != now.origins {
                app.origins.store(Arc::new(now.origins.clone()));
                tracing::info!(app = %app.name, upstream = %now.origins.primary, "upstream changed");
            }
        }
    }

    /// The commands `config` names (in quotas and cache rules) that the running catalogue
    /// does not know, or knows as a write where a cache rule now makes it a read (or the
    /// reverse): they need a restart.
    pub fn unknown_configured_commands(&self, config: &Config) -> Vec<String> {
        let builtin = Catalogue::builtin();
        let configured = configured_commands(config);
        let mut unknown: Vec<String> = configured
            .iter()
            .filter(|(name, _)| match self.catalogue.lookup(name) {
                None => true,
                Some(id) if builtin.lookup(name).is_none() => {
                    // Read if any cache rule names it (as `with_configured` decides).
                    let is_read = configured
                        .iter()
                        .any(|(other, access)| other == name && *access == Access::Read);
                    let access = if is_read { Access::Read } else { Access::Write };
                    self.catalogue.spec_at(id.index()).access != access
                }
                Some(_) => false,
            })
            .map(|(name, _)| (*name).to_owned())
            .collect();
        unknown.sort();
        unknown.dedup();
        unknown
    }

    /// The lane of `command` (a catalogue index, `None` for pass-through) in `app`.
    pub fn lane(&self, app: usize, command: Option<usize>) -> &Arc<Lane> {
        let slots = self.catalogue.len() + 1;
        &self.lanes[app * slots + command.unwrap_or(slots - 1)]
    }
}

/// The commands outside Tencent's list that the config names (validated: only with
/// pass-through allowed): cached ones are reads, the others writes.
fn configured_commands(config: &Config) -> Vec<(&str, Access)> {
    let rules = &config.cache.rules;
    let reads = rules
        .iter()
        .map(|rule| (rule.command.as_str(), Access::Read));
    let writes = rules
        .iter()
        .flat_map(|rule| rule.invalidated_by.iter().map(String::as_str))
        .chain(config.throttle.quotas.iter().map(|q| q.command.as_str()))
        .map(|name| (name, Access::Write));
    reads.chain(writes).collect()
}

/// Per-command runtime settings: catalogue defaults, then the config's cache rules.
fn command_runtime(catalogue: &Catalogue, config: &Config) -> Vec<LanePolicy> {
    let mut commands: Vec<LanePolicy> = catalogue
        .iter()
        .map(|(_, spec)| LanePolicy {
            cache: spec.is_cacheable.then_some(DEFAULT_CACHE_POLICY),
            invalidates: Vec::new(),
        })
        .collect();
    // read index → write indices that invalidate it.
    let mut invalidated_by: HashMap<usize, Vec<usize>> = HashMap::new();
    for (read, spec) in catalogue.iter() {
        let writes = spec
            .invalidated_by
            .iter()
            .filter_map(|w| catalogue.lookup(w));
        invalidated_by.insert(read.index(), writes.map(|w| w.index()).collect());
    }
    // Config rules replace the defaults of their command (validated by `config`). A command
    // the running catalogue holds as a write stays uncached until a restart (a reload whose
    // rule makes a pass-through command a read).
    for rule in &config.cache.rules {
        let Some(read) = catalogue.lookup(&rule.command) else {
            continue;
        };
        if catalogue.spec_at(read.index()).access != Access::Read {
            continue;
        }
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
            commands[write].invalidates.push(read as u32);
        }
    }
    commands
}

/// The budget of every catalogue command (a configured quota, else the catalogue's, else
/// the default) and of pass-through commands.
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

/// The shared cache's connection for work nobody's answer waits on (stores, script loads):
/// its response timeout is the shared cache's store timeout, not `fleet.command_timeout`.
fn background_connection(client: &redis::Client) -> redis::aio::ConnectionManager {
    let settings = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(crate::shared_cache::STORE_TIMEOUT))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_max_delay(Duration::from_secs(1));
    redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), settings)
        .expect("the config validated the Redis URL")
}

/// The fleet's Redis connection: made lazily (a gateway starts, and fails closed, while Redis
/// is down) and reconnected in the background; commands are bounded by `command_timeout`.
/// With it, the client (the shared cache's subscription needs a connection of its own).
fn fleet_redis(
    fleet: &crate::config::FleetConfig,
    registry: &Registry,
) -> prometheus::Result<(crate::limiter::FleetRedis, redis::Client)> {
    const VALIDATED: &str = "the config validated the Redis URL";
    let client = redis::Client::open(fleet.redis_url.expose()).expect(VALIDATED);
    let settings = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(fleet.command_timeout))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_max_delay(Duration::from_secs(1));
    let connection = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), settings)
        .expect(VALIDATED);
    let redis = crate::limiter::FleetRedis {
        connection,
        client: client.clone(),
        metrics: Arc::new(crate::fleet::FleetMetrics::register(registry)?),
        key_prefix: fleet.key_prefix.clone(),
        timing: crate::fleet::FleetTiming {
            command_timeout: fleet.command_timeout,
            max_lateness: fleet.max_lateness,
            expected_replicas: fleet.expected_replicas,
            is_sharing: fleet.fallback == crate::config::Fallback::Share,
        },
        members: Arc::new(crate::fleet::MemberStatus::default()),
    };
    Ok((redis, client))
}
