//! `process_*` (the standard names, without the `tim_gateway_` prefix): the process's own
//! resource use, read from `/proc/self` when
//! `/metrics` is scraped.
//!
//! Our own rather than the prometheus crate's collector, whose CPU counter has whole-second
//! steps: useless for a sidecar that uses a few milliseconds of CPU per second.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge};

use super::as_gauge;

/// Reads `/proc/self` at each scrape.
#[derive(Debug)]
pub struct ProcessCollector {
    cpu_seconds: Counter,
    resident_memory: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
    /// One scrape at a time: the CPU counter catches up by difference, which two concurrent
    /// scrapes would both add.
    scrape: Mutex<()>,
}

impl ProcessCollector {
    /// # Errors
    /// A metric name is invalid (a bug).
    pub fn new() -> prometheus::Result<Self> {
        Ok(ProcessCollector {
            cpu_seconds: Counter::new(
                "process_cpu_seconds_total",
                "User and system CPU time spent by the process, in seconds.",
            )?,
            resident_memory: IntGauge::new(
                "process_resident_memory_bytes",
                "Resident memory of the process in bytes.",
            )?,
            virtual_memory: IntGauge::new(
                "process_virtual_memory_bytes",
                "Virtual memory of the process in bytes.",
            )?,
            open_fds: IntGauge::new("process_open_fds", "File descriptors the process has open.")?,
            max_fds: IntGauge::new(
                "process_max_fds",
                "The process's limit of open file descriptors.",
            )?,
            threads: IntGauge::new("process_threads", "Threads of the process.")?,
            start_time: Gauge::new(
                "process_start_time_seconds",
                "Unix time at which the process started, in seconds.",
            )?,
            scrape: Mutex::new(()),
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
            self.resident_memory.set(as_gauge(rss));
            self.virtual_memory.set(as_gauge(stat.vsize));
            self.threads.set(stat.num_threads);
            if let Ok(boot) = procfs::boot_time_secs() {
                self.start_time
                    .set(boot as f64 + stat.starttime as f64 / ticks);
            }
        }
        if let Ok(count) = me.fd_count() {
            self.open_fds.set(as_gauge(count));
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                self.max_fds.set(as_gauge(max));
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn refresh(&self) {}
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.cpu_seconds.desc(),
            self.resident_memory.desc(),
            self.virtual_memory.desc(),
            self.open_fds.desc(),
            self.max_fds.desc(),
            self.threads.desc(),
            self.start_time.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh();
        [
            self.cpu_seconds.collect(),
            self.resident_memory.collect(),
            self.virtual_memory.collect(),
            self.open_fds.collect(),
            self.max_fds.collect(),
            self.threads.collect(),
            self.start_time.collect(),
        ]
        .concat()
    }
}
