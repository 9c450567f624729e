//! `[upstream]`: how we talk to Tencent.
//!
//! Promises: every timeout is positive and at most a year; the deadline leaves room for at
//! least one full call; an extra CA file holds at least one PEM certificate.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::check::{non_empty, read_capped, Findings, POSITIVE};
use crate::config::model::{
    EgressProxy, Env, UpstreamConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE,
    DEFAULT_MAX_RETRIES, DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_POOL_MAX_IDLE_PER_HOST,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_BASE_DELAY,
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

pub(super) fn validate(raw: RawUpstream, env: &Env, findings: &mut Findings) -> UpstreamConfig {
    let proxy = egress_proxy(raw.proxy, raw.no_proxy, env, findings);
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
        proxy,
    }
}

/// `upstream.proxy`, else `HTTPS_PROXY`/`https_proxy`: an `http://` URL with a host (and
/// maybe credentials and a port). `upstream.no_proxy`, else `NO_PROXY`/`no_proxy`, lists the
/// hosts called directly. An empty `upstream.proxy` turns off a proxy from the environment.
fn egress_proxy(
    configured: Option<String>,
    no_proxy: Option<String>,
    env: &Env,
    findings: &mut Findings,
) -> Option<EgressProxy> {
    const KEY: &str = "upstream.proxy";
    let from_env = || {
        ["HTTPS_PROXY", "https_proxy"]
            .into_iter()
            .find_map(|name| Some((env.get(name).filter(|v| !v.is_empty())?.to_owned(), name)))
    };
    let (url, source) = match configured {
        Some(url) if url.is_empty() => return None,
        Some(url) => (url, KEY.to_owned()),
        None => {
            let (url, name) = from_env()?;
            (url, name.to_owned())
        }
    };
    let no_proxy = no_proxy.unwrap_or_else(|| {
        ["NO_PROXY", "no_proxy"]
            .into_iter()
            .find_map(|name| env.get(name))
            .unwrap_or_default()
            .to_owned()
    });
    let proxy = EgressProxy {
        url,
        source,
        no_proxy,
    };
    let shown = proxy.shown();
    let key = if proxy.source == KEY {
        KEY.to_owned()
    } else {
        format!("{KEY} (from {})", proxy.source)
    };
    match proxy.url.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some_and(|h| !h.is_empty()) => {
            Some(proxy)
        }
        Ok(uri) if uri.scheme_str() == Some("https") => findings.refuse(
            key,
            format!("{shown}: only an http:// proxy is supported (the tunnel to Tencent is TLS already)"),
        ),
        _ => findings.refuse(
            key,
            format!("{shown} is not a proxy URL such as http://proxy.internal:3128"),
        ),
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
