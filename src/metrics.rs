//! The gateway's Prometheus registry and the helpers every concern uses to register its own
//! metric families.
//!
//! Each module that owns a behaviour registers and keeps its families (linkerd's
//! `MetricFamilies::register`): the request path in `proxy`, calls to Tencent in `upstream`,
//! the budgets in `limiter`, the answer cache in `cache`, UserSigs in `signer`, and the
//! process in [`process`]. Values that live elsewhere (cache size, queues, UserSig expiry,
//! CPU time) are read when `/metrics` is scraped, by `prometheus::core::Collector`s: nothing
//! copies them in. This module knows no concern: it imports nothing else of the crate.
//!
//! Label values come only from the config (app names) and the catalogue (commands), plus
//! small closed sets: client input never becomes a label.

pub mod process;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets from a microsecond cache hit to a multi-second upstream call, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label value of requests that named no configured app.
pub const UNKNOWN_APP: &str = "unknown";
/// The command label of pass-through commands (outside the catalogue).
pub const OTHER_COMMAND: &str = "other";
/// The command label of requests that could not be routed.
pub const UNKNOWN_COMMAND: &str = "unknown";

/// A fresh registry whose families all carry the `tim_gateway_` prefix, with
/// `tim_gateway_build_info` registered. The process's own `process_*` families keep their
/// standard names (what dashboards and kube-prometheus expect): [`render`] adds them.
///
/// # Errors
/// A metric's name or labels are invalid (a bug).
pub fn registry() -> prometheus::Result<Registry> {
    let registry = Registry::new_custom(Some("tim_gateway".into()), None)?;
    let build_info = gauge_vec(
        &registry,
        "build_info",
        "Build information; the value is always 1.",
        &["version"],
    )?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    Ok(registry)
}

/// The process's `process_*` families: one collector per process (however many gateways a
/// test builds), outside any prefixed registry.
static PROCESS: std::sync::LazyLock<process::ProcessCollector> = std::sync::LazyLock::new(|| {
    process::ProcessCollector::new().expect("the process metrics' names are valid")
});

/// Every family of `registry`, then the process's own.
fn gather(registry: &Registry) -> Vec<prometheus::proto::MetricFamily> {
    use prometheus::core::Collector as _;
    let mut families = registry.gather();
    families.extend(PROCESS.collect());
    families
}

/// The Prometheus text exposition of every family in `registry` and the process's
/// `process_*`; collectors read their values now.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    // Encoding into a Vec fails only on invalid metric families, which registration rules out.
    let _ = TextEncoder::new().encode(&gather(registry), &mut out);
    out
}

/// Every metric family name in `registry` (with the prefix) and the process's, for tests
/// and docs.
pub fn family_names(registry: &Registry) -> Vec<String> {
    gather(registry)
        .iter()
        .map(|family| family.name().to_owned())
        .collect()
}

/// Registers an integer counter family.
///
/// # Errors
/// Invalid name or labels, or the name is taken.
pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

/// Registers an integer gauge family.
///
/// # Errors
/// Invalid name or labels, or the name is taken.
pub fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

/// Registers a latency histogram family with [`LATENCY_BUCKETS`].
///
/// # Errors
/// Invalid name or labels, or the name is taken.
pub fn histogram_vec(
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

/// Registers a single integer gauge.
///
/// # Errors
/// Invalid name, or the name is taken.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let gauge = IntGauge::new(name, help)?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

/// An unregistered integer gauge family, for a collector that fills it at scrape time.
///
/// # Errors
/// Invalid name or labels.
pub fn scrape_gauge_vec(
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), labels)
}

/// Saturating `u64`/`usize` → `i64` for gauges.
pub fn as_gauge(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// The configuration's metrics: loads at start and on reload (SIGHUP or a changed file).
#[derive(Debug)]
pub struct ConfigMetrics {
    pub success: IntCounter,
    pub failure: IntCounter,
    pub last_success: IntGauge,
    pub last_successful: IntGauge,
    pub restart_required: IntGauge,
}

impl ConfigMetrics {
    /// Registers them; the start counts as a successful load.
    ///
    /// # Errors
    /// Invalid name, or a name taken.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let reloads = counter_vec(
            registry,
            "config_reloads_total",
            "Reloads of the configuration (SIGHUP or a changed file), by result.",
            &["result"],
        )?;
        let metrics = ConfigMetrics {
            // Both series exist from the start, at 0, so an alert on the first failure needs
            // no `offset` trick.
            success: reloads.with_label_values(&["success"]),
            failure: reloads.with_label_values(&["failure"]),
            last_success: gauge(
                registry,
                "config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful load of the configuration (the start counts).",
            )?,
            last_successful: gauge(
                registry,
                "config_last_reload_successful",
                "1 if the last load of the configuration succeeded, 0 if it was invalid.",
            )?,
            restart_required: gauge(
                registry,
                "config_restart_required",
                "1 if the configuration on disk changes settings that only a restart applies.",
            )?,
        };
        metrics.last_successful.set(1);
        metrics.last_success.set(unix_now());
        Ok(metrics)
    }
}

/// Seconds since the Unix epoch, for timestamp gauges (0 before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
