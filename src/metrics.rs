//! Every `tim_gateway_*` metric, registered once per gateway on its own registry.
//!
//! Label values come only from the config (app names) and the catalogue (commands), plus
//! small closed sets (cache result, status class, outcome, reason, a closed list of Tencent
//! codes): client input never becomes a label. Per-request metrics are resolved once per
//! label combination into a `OnceLock` cell, so the hot path is an index and an atomic add.
//! Values that live elsewhere (cache size, throttle queues, UserSig expiry) are copied in when
//! `/metrics` is scraped.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::proxy::CacheStatus;

/// Latency buckets from a microsecond cache hit to a multi-second upstream call, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Tencent ErrorCodes given their own label value (reference §6 plus the common parameter
/// errors); any other code is counted as `other`.
const KNOWN_CODES: &[(i64, &str)] = &[
    (10002, "10002"),
    (10004, "10004"),
    (10008, "10008"),
    (60002, "60002"),
    (60003, "60003"),
    (60004, "60004"),
    (60006, "60006"),
    (60007, "60007"),
    (60008, "60008"),
    (60009, "60009"),
    (60010, "60010"),
    (60011, "60011"),
    (60012, "60012"),
    (60013, "60013"),
    (60014, "60014"),
    (60015, "60015"),
    (60016, "60016"),
    (60018, "60018"),
    (60019, "60019"),
    (60020, "60020"),
    (60021, "60021"),
    (70001, "70001"),
    (70003, "70003"),
    (70005, "70005"),
    (70009, "70009"),
    (70013, "70013"),
    (70014, "70014"),
    (70016, "70016"),
    (70020, "70020"),
    (70050, "70050"),
    (70052, "70052"),
    (70169, "70169"),
    (70206, "70206"),
    (70402, "70402"),
    (70403, "70403"),
    (70500, "70500"),
    (80001, "80001"),
    (80002, "80002"),
];

const CACHE_STATUSES: [CacheStatus; 4] = [
    CacheStatus::Hit,
    CacheStatus::Miss,
    CacheStatus::Stale,
    CacheStatus::Bypass,
];
const STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// How an upstream call ended, for `tim_gateway_upstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    Ok,
    TencentError,
    Timeout,
    ConnectError,
    HttpError,
}

impl UpstreamOutcome {
    fn label(self) -> &'static str {
        match self {
            UpstreamOutcome::Ok => "ok",
            UpstreamOutcome::TencentError => "tencent_error",
            UpstreamOutcome::Timeout => "timeout",
            UpstreamOutcome::ConnectError => "connect_error",
            UpstreamOutcome::HttpError => "http_error",
        }
    }
}

/// Why a permit was refused, for `tim_gateway_throttle_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Saturated,
    QueueFull,
    Paused,
    LockedOut,
    UserSigRejected,
}

impl RejectReason {
    fn label(self) -> &'static str {
        match self {
            RejectReason::Saturated => "saturated",
            RejectReason::QueueFull => "queue_full",
            RejectReason::Paused => "paused",
            RejectReason::LockedOut => "locked_out",
            RejectReason::UserSigRejected => "usersig_rejected",
        }
    }
}

/// Why a UserSig was minted, for `tim_gateway_usersig_mints_total`.
pub const MINT_REASONS: [&str; 3] = ["startup", "schedule", "rejected"];

/// Per-label-combination handles of one metric family, created on first use.
#[derive(Debug)]
struct Cells<T> {
    cells: Box<[OnceLock<T>]>,
}

impl<T> Cells<T> {
    fn new(len: usize) -> Self {
        Cells {
            cells: (0..len).map(|_| OnceLock::new()).collect(),
        }
    }

    fn get(&self, index: usize, make: impl FnOnce() -> T) -> &T {
        self.cells[index].get_or_init(make)
    }
}

/// The gateway's metrics. App index `apps` (one past the last app) is `unknown`; command slot
/// `commands` is `other` (pass-through) and `commands + 1` is `unknown` (unroutable).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    app_names: Vec<String>,
    command_names: Vec<&'static str>,
    apps: usize,
    slots: usize,

    requests: IntCounterVec,
    request_cells: Cells<IntCounter>,
    request_duration: HistogramVec,
    request_duration_cells: Cells<Histogram>,
    pub in_flight: IntGauge,

    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    tencent_errors: IntCounterVec,

    cache_lookups: IntCounterVec,
    cache_lookup_cells: Cells<IntCounter>,
    cache_coalesced: IntCounterVec,
    cache_refreshes: IntCounterVec,
    cache_invalidations: IntCounterVec,
    cache_evictions: IntCounterVec,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,

    throttle_permits: IntCounterVec,
    throttle_wait: HistogramVec,
    throttle_rejections: IntCounterVec,
    throttle_waiters: IntGaugeVec,
    throttle_paused: IntGaugeVec,
    throttle_budget: IntGaugeVec,
    upstream_quota: IntGaugeVec,

    usersig_mints: IntCounterVec,
    usersig_expiry: IntGaugeVec,

    process: ProcessMetrics,
    /// One scrape at a time: scrape-time counters catch up by difference, which two
    /// concurrent scrapes would both add.
    scrape: Mutex<()>,
}

/// The process's own resource use, read from `/proc/self` at each scrape. Our own rather than
/// the prometheus crate's collector, whose CPU counter has whole-second steps: useless for a
/// sidecar that uses a few milliseconds of CPU per second.
#[derive(Debug)]
struct ProcessMetrics {
    cpu_seconds: Counter,
    resident_memory: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
}

impl ProcessMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        let cpu_seconds = Counter::new(
            "process_cpu_seconds_total",
            "User and system CPU time spent by the process, in seconds.",
        )?;
        r.register(Box::new(cpu_seconds.clone()))?;
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Unix time at which the process started, in seconds.",
        )?;
        r.register(Box::new(start_time.clone()))?;
        Ok(ProcessMetrics {
            cpu_seconds,
            resident_memory: gauge(
                r,
                "process_resident_memory_bytes",
                "Resident memory of the process in bytes.",
            )?,
            virtual_memory: gauge(
                r,
                "process_virtual_memory_bytes",
                "Virtual memory of the process in bytes.",
            )?,
            open_fds: gauge(
                r,
                "process_open_fds",
                "File descriptors the process has open.",
            )?,
            max_fds: gauge(
                r,
                "process_max_fds",
                "The process's limit of open file descriptors.",
            )?,
            threads: gauge(r, "process_threads", "Threads of the process.")?,
            start_time,
        })
    }

    /// Reads `/proc/self`; leaves the previous values where a file cannot be read.
    #[cfg(target_os = "linux")]
    fn refresh(&self) {
        let Ok(me) = procfs::process::Process::myself() else {
            return;
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            self.cpu_seconds
                .inc_by((cpu - self.cpu_seconds.get()).max(0.0));
            let rss = stat.rss.saturating_mul(procfs::page_size());
            self.resident_memory
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
            self.virtual_memory
                .set(i64::try_from(stat.vsize).unwrap_or(i64::MAX));
            self.threads.set(stat.num_threads);
            if let Ok(boot) = procfs::boot_time_secs() {
                self.start_time
                    .set(boot as f64 + stat.starttime as f64 / ticks);
            }
        }
        if let Ok(count) = me.fd_count() {
            self.open_fds.set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                self.max_fds.set(i64::try_from(max).unwrap_or(i64::MAX));
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn refresh(&self) {}
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let vec = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let gauge = IntGauge::new(name, help)?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

fn status_class(status: u16) -> usize {
    match status {
        0..=299 => 0,
        300..=399 => 1,
        400..=499 => 2,
        _ => 3,
    }
}

fn cache_index(status: CacheStatus) -> usize {
    match status {
        CacheStatus::Hit => 0,
        CacheStatus::Miss => 1,
        CacheStatus::Stale => 2,
        CacheStatus::Bypass => 3,
    }
}

impl Metrics {
    /// Registers every metric on a fresh registry with the `tim_gateway` prefix.
    ///
    /// # Errors
    /// A metric's name or labels are invalid (a bug) or the process collector fails.
    pub fn register(
        app_names: &[String],
        command_names: &[&'static str],
    ) -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("tim_gateway".into()), None)?;
        let r = &registry;
        let mut apps: Vec<String> = app_names.to_vec();
        apps.push("unknown".into());
        let mut commands: Vec<&'static str> = command_names.to_vec();
        commands.push("other");
        commands.push("unknown");
        let (app_count, slots) = (app_names.len(), commands.len());
        let cells = (app_count + 1) * slots;

        let build_info = gauge_vec(
            r,
            "build_info",
            "Build information; the value is always 1.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let process = ProcessMetrics::register(r)?;

        let metrics = Metrics {
            requests: counter_vec(r, "requests_total", "Client requests answered, by app, command, cache result and HTTP status class.", &["app", "command", "cache", "status_class"])?,
            request_cells: Cells::new(cells * CACHE_STATUSES.len() * STATUS_CLASSES.len()),
            request_duration: histogram_vec(r, "request_duration_seconds", "Time from a client request's arrival to its answer, in seconds.", &["app", "command", "cache"])?,
            request_duration_cells: Cells::new(cells * CACHE_STATUSES.len()),
            in_flight: gauge(r, "requests_in_flight", "Client requests being handled right now.")?,
            upstream_requests: counter_vec(r, "upstream_requests_total", "Calls made to Tencent, by app, command and outcome.", &["app", "command", "outcome"])?,
            upstream_duration: histogram_vec(r, "upstream_request_duration_seconds", "Duration of calls to Tencent, in seconds.", &["app", "command"])?,
            tencent_errors: counter_vec(r, "tencent_errors_total", "Non-zero ErrorCodes in Tencent's answers, by app, command and code.", &["app", "command", "code"])?,
            cache_lookups: counter_vec(r, "cache_lookups_total", "Cache lookups of cacheable commands, by result.", &["app", "command", "result"])?,
            cache_lookup_cells: Cells::new(cells * 3),
            cache_coalesced: counter_vec(r, "cache_coalesced_total", "Requests that joined a fetch already in flight instead of calling Tencent.", &["app", "command"])?,
            cache_refreshes: counter_vec(r, "cache_refreshes_total", "Background refreshes of stale cache entries started.", &["app", "command"])?,
            cache_invalidations: counter_vec(r, "cache_invalidations_total", "Invalidations of cached reads, by successful writes or purges.", &["app", "command"])?,
            cache_evictions: counter_vec(r, "cache_evictions_total", "Cache entries removed, by cause.", &["cause"])?,
            cache_entries: gauge(r, "cache_entries", "Entries in the answer cache.")?,
            cache_bytes: gauge(r, "cache_bytes", "Weighted size of the answer cache in bytes.")?,
            throttle_permits: counter_vec(r, "throttle_permits_total", "Permits granted for calls to Tencent.", &["app", "command"])?,
            throttle_wait: histogram_vec(r, "throttle_wait_seconds", "Time spent waiting for a permit, in seconds.", &["app", "command"])?,
            throttle_rejections: counter_vec(r, "throttle_rejections_total", "Requests refused a permit, by reason.", &["app", "command", "reason"])?,
            throttle_waiters: gauge_vec(r, "throttle_waiters", "Requests waiting for a permit right now.", &["app", "command"])?,
            throttle_paused: gauge_vec(r, "throttle_paused", "1 while calls are paused because Tencent asked us to back off or locked the app out.", &["app", "command"])?,
            throttle_budget: gauge_vec(r, "throttle_budget_per_second", "The gateway's budget of calls to Tencent in any sliding second.", &["app", "command"])?,
            upstream_quota: gauge_vec(r, "upstream_quota_per_second", "Tencent's documented quota of calls per second.", &["app", "command"])?,
            usersig_mints: counter_vec(r, "usersig_mints_total", "Admin UserSigs minted, by reason.", &["app", "reason"])?,
            usersig_expiry: gauge_vec(r, "usersig_expiry_timestamp_seconds", "Unix time at which the current admin UserSig expires.", &["app"])?,
            process,
            scrape: Mutex::new(()),
            registry,
            app_names: apps,
            command_names: commands,
            apps: app_count,
            slots,
        };
        Ok(metrics)
    }

    /// The app index used for requests that named no known app.
    pub fn unknown_app(&self) -> usize {
        self.apps
    }

    /// The command slot of pass-through commands.
    pub fn other_command(&self) -> usize {
        self.slots - 2
    }

    /// The command slot of requests that could not be routed.
    pub fn unknown_command(&self) -> usize {
        self.slots - 1
    }

    fn labels(&self, app: usize, command: usize) -> [&str; 2] {
        [&self.app_names[app], self.command_names[command]]
    }

    /// One answered client request.
    pub fn request(
        &self,
        app: usize,
        command: usize,
        cache: CacheStatus,
        status: u16,
        elapsed: Duration,
    ) {
        let pair = app * self.slots + command;
        let cache_i = cache_index(cache);
        let class = status_class(status);
        let index = (pair * CACHE_STATUSES.len() + cache_i) * STATUS_CLASSES.len() + class;
        self.request_cells
            .get(index, || {
                let [a, c] = self.labels(app, command);
                self.requests
                    .with_label_values(&[a, c, cache.as_str(), STATUS_CLASSES[class]])
            })
            .inc();
        self.request_duration_cells
            .get(pair * CACHE_STATUSES.len() + cache_i, || {
                let [a, c] = self.labels(app, command);
                self.request_duration
                    .with_label_values(&[a, c, cache.as_str()])
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One cache lookup: `hit`, `miss` or `stale`.
    pub fn cache_lookup(&self, app: usize, command: usize, status: CacheStatus) {
        let result = match status {
            CacheStatus::Hit => 0,
            CacheStatus::Stale => 2,
            CacheStatus::Miss | CacheStatus::Bypass => 1,
        };
        let index = (app * self.slots + command) * 3 + result;
        self.cache_lookup_cells
            .get(index, || {
                let [a, c] = self.labels(app, command);
                self.cache_lookups
                    .with_label_values(&[a, c, ["hit", "miss", "stale"][result]])
            })
            .inc();
    }

    pub fn cache_coalesced(&self, app: usize, command: usize) {
        self.cache_coalesced
            .with_label_values(&self.labels(app, command))
            .inc();
    }

    pub fn cache_refresh(&self, app: usize, command: usize) {
        self.cache_refreshes
            .with_label_values(&self.labels(app, command))
            .inc();
    }

    pub fn cache_invalidation(&self, app: usize, command: usize) {
        self.cache_invalidations
            .with_label_values(&self.labels(app, command))
            .inc();
    }

    /// A cache entry left memory; `cause` is one of size, expired, explicit, replaced.
    pub fn cache_eviction(&self, cause: &'static str) {
        self.cache_evictions.with_label_values(&[cause]).inc();
    }

    /// One call to Tencent and how it ended; a non-zero ErrorCode is also counted by code.
    pub fn upstream_call(
        &self,
        app: usize,
        command: usize,
        outcome: UpstreamOutcome,
        error_code: Option<i64>,
        elapsed: Duration,
    ) {
        let labels = self.labels(app, command);
        self.upstream_requests
            .with_label_values(&[labels[0], labels[1], outcome.label()])
            .inc();
        self.upstream_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(code) = error_code.filter(|&c| c != 0) {
            let code = KNOWN_CODES
                .iter()
                .find(|(known, _)| *known == code)
                .map_or("other", |(_, label)| label);
            self.tencent_errors
                .with_label_values(&[labels[0], labels[1], code])
                .inc();
        }
    }

    pub fn throttle_permit(&self, app: usize, command: usize, waited: Duration) {
        let labels = self.labels(app, command);
        self.throttle_permits.with_label_values(&labels).inc();
        self.throttle_wait
            .with_label_values(&labels)
            .observe(waited.as_secs_f64());
    }

    pub fn throttle_rejection(&self, app: usize, command: usize, reason: RejectReason) {
        let [a, c] = self.labels(app, command);
        self.throttle_rejections
            .with_label_values(&[a, c, reason.label()])
            .inc();
    }

    /// Scrape-time state of one (app, command) budget.
    pub fn set_budget(
        &self,
        app: usize,
        command: usize,
        waiters: usize,
        is_paused: bool,
        budget: u32,
        quota: u32,
    ) {
        let labels = self.labels(app, command);
        self.throttle_waiters
            .with_label_values(&labels)
            .set(waiters as i64);
        self.throttle_paused
            .with_label_values(&labels)
            .set(i64::from(is_paused));
        self.throttle_budget
            .with_label_values(&labels)
            .set(i64::from(budget));
        self.upstream_quota
            .with_label_values(&labels)
            .set(i64::from(quota));
    }

    /// Scrape-time UserSig state of one app: mints so far per reason, and the expiry.
    pub fn set_usersig(&self, app: usize, mints: [u64; 3], expires_at_unix: u64) {
        let name = self.app_names[app].as_str();
        for (reason, total) in MINT_REASONS.iter().zip(mints) {
            let counter = self.usersig_mints.with_label_values(&[name, reason]);
            // The signer counts; the counter catches up to it (it only ever grows).
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.usersig_expiry
            .with_label_values(&[name])
            .set(i64::try_from(expires_at_unix).unwrap_or(i64::MAX));
    }

    pub fn set_cache_usage(&self, entries: u64, bytes: u64) {
        self.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Runs `update` (which copies scrape-time state in) and renders, one scrape at a time.
    pub fn scrape(&self, update: impl FnOnce(&Metrics)) -> Vec<u8> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.process.refresh();
        update(self);
        self.render()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec fails only on invalid metric families, which `register` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Every metric family name registered (with the prefix), for tests and docs.
    pub fn family_names(&self) -> Vec<String> {
        self.registry
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::register(&["main".into()], &["openim_robot_http_svc/get_all_robots"]).unwrap()
    }

    /// Recorded values show up in the text exposition with the prefix and the right labels.
    #[test]
    fn recorded_values_are_exposed() {
        let m = metrics();
        m.request(0, 0, CacheStatus::Hit, 200, Duration::from_micros(20));
        m.request(0, 0, CacheStatus::Hit, 200, Duration::from_micros(20));
        m.request(
            m.unknown_app(),
            m.unknown_command(),
            CacheStatus::Bypass,
            404,
            Duration::from_micros(5),
        );
        m.upstream_call(
            0,
            0,
            UpstreamOutcome::TencentError,
            Some(70009),
            Duration::from_millis(3),
        );
        m.upstream_call(
            0,
            0,
            UpstreamOutcome::TencentError,
            Some(12345),
            Duration::from_millis(3),
        );
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            r#"tim_gateway_requests_total{app="main",cache="HIT",command="openim_robot_http_svc/get_all_robots",status_class="2xx"} 2"#,
            r#"tim_gateway_requests_total{app="unknown",cache="BYPASS",command="unknown",status_class="4xx"} 1"#,
            r#"tim_gateway_tencent_errors_total{app="main",code="70009",command="openim_robot_http_svc/get_all_robots"} 1"#,
            r#"tim_gateway_tencent_errors_total{app="main",code="other",command="openim_robot_http_svc/get_all_robots"} 1"#,
            r#"tim_gateway_build_info{version=""#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
    }

    /// Mint counters catch up with the signer's totals and never go backwards.
    #[test]
    fn usersig_counters_follow_the_signer() {
        let m = metrics();
        m.set_usersig(0, [1, 2, 0], 1_700_000_000);
        m.set_usersig(0, [1, 3, 1], 1_700_000_100);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(r#"tim_gateway_usersig_mints_total{app="main",reason="schedule"} 3"#));
        assert!(
            text.contains(r#"tim_gateway_usersig_expiry_timestamp_seconds{app="main"} 1700000100"#)
        );
    }
}
