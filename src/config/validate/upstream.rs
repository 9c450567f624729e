//! `[upstream]`: how we talk to Tencent.
//!
//! Promises: every timeout is positive and at most a year; the deadline leaves room for at
//! least one full call; an extra CA file holds at least one PEM certificate.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::check::{non_empty, read_capped, Findings, POSITIVE};
use crate::config::model::{
    UpstreamConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_MAX_RETRIES,
    DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_POOL_MAX_IDLE_PER_HOST, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRY_BASE_DELAY,
};
use crate::config::raw::RawUpstream;

/// Tencent's backend timeout (reference §1); a request timeout at or below it gets a warning.
const TENCENT_BACKEND_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_RETRIES: RangeInclusive<u32> = 0..=5;
const RETRY_BASE_DELAYS: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(10);
/// A CA bundle larger than this is a wrong path, not a certificate.
const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;
const PEM_CERTIFICATE_MARKER: &[u8] = b"-----BEGIN CERTIFICATE-----";

pub(super) fn validate(raw: RawUpstream, findings: &mut Findings) -> UpstreamConfig {
    let connect_timeout = findings.duration(
        "upstream.connect_timeout",
        raw.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
        POSITIVE,
    );
    let request_timeout = findings.duration(
        "upstream.request_timeout",
        raw.request_timeout,
        DEFAULT_REQUEST_TIMEOUT,
        POSITIVE,
    );
    if request_timeout <= TENCENT_BACKEND_TIMEOUT {
        findings.warning(
            "upstream.request_timeout",
            format!(
                "{} is not longer than Tencent's own 3 s backend timeout (reference §1), so \
                 answers Tencent would still give are cut off; 10s is the default",
                humantime::format_duration(request_timeout)
            ),
        );
    }
    let pool_idle_timeout = findings.duration(
        "upstream.pool_idle_timeout",
        raw.pool_idle_timeout,
        DEFAULT_POOL_IDLE_TIMEOUT,
        POSITIVE,
    );
    let pool_max_idle_per_host = findings
        .number(
            "upstream.pool_max_idle_per_host",
            raw.pool_max_idle_per_host,
            0..=usize::MAX,
            "",
        )
        .unwrap_or(DEFAULT_POOL_MAX_IDLE_PER_HOST);
    if pool_max_idle_per_host == 0 {
        findings.warning(
            "upstream.pool_max_idle_per_host",
            "0 disables keep-alive reuse: every upstream call pays a TCP and TLS handshake \
             (Tencent recommends a pool, reference §1)",
        );
    }
    let ca_file = non_empty(raw.ca_file).map(PathBuf::from);
    let extra_ca_pem = ca_file.as_deref().and_then(|path| read_ca(path, findings));
    let max_retries = findings
        .number("upstream.max_retries", raw.max_retries, MAX_RETRIES, "")
        .unwrap_or(DEFAULT_MAX_RETRIES);
    let retry_base_delay = findings.duration(
        "upstream.retry_base_delay",
        raw.retry_base_delay,
        DEFAULT_RETRY_BASE_DELAY,
        RETRY_BASE_DELAYS,
    );
    // Unset, the deadline grows with a long request timeout, so a file that only raises
    // request_timeout (valid before the deadline existed) stays valid.
    let deadline = findings.duration(
        "upstream.deadline",
        raw.deadline,
        DEFAULT_DEADLINE.max(request_timeout),
        POSITIVE,
    );
    // Compared only with a request timeout that was itself valid, so one slip is one problem.
    if deadline < request_timeout && !findings.has_problem("upstream.request_timeout") {
        findings.problem(
            "upstream.deadline",
            format!(
                "{} is shorter than upstream.request_timeout ({}): the deadline covers the \
                 whole client request, so it must leave room for at least one full call",
                humantime::format_duration(deadline),
                humantime::format_duration(request_timeout)
            ),
        );
    }
    UpstreamConfig {
        connect_timeout,
        request_timeout,
        pool_idle_timeout,
        pool_max_idle_per_host,
        ca_file,
        extra_ca_pem,
        max_retries,
        retry_base_delay,
        deadline,
    }
}

/// The CA file's contents, when it can be read and holds a PEM certificate.
fn read_ca(path: &Path, findings: &mut Findings) -> Option<Vec<u8>> {
    const KEY: &str = "upstream.ca_file";
    let message = match read_capped(path, MAX_CA_FILE_BYTES) {
        Err(e) => format!("cannot read {}: {e}", path.display()),
        Ok(pem)
            if pem
                .windows(PEM_CERTIFICATE_MARKER.len())
                .any(|w| w == PEM_CERTIFICATE_MARKER) =>
        {
            return Some(pem)
        }
        Ok(_) => format!(
            "{} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line)",
            path.display()
        ),
    };
    findings.problem(KEY, message);
    None
}
