//! `[server]`: the listeners, what they accept, how many connections they hold, and how many
//! threads serve them.
//!
//! Promises: listen addresses are loopback unless `allow_non_loopback`; a non-loopback admin
//! listener has a bearer token for its purge endpoint; `allowed_hosts` are plain host names,
//! `*.domain` patterns or IP addresses; the admin token is never printed.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::check::{non_empty, read_capped, Findings};
use crate::config::model::{
    AdminToken, ListenAddr, ServerConfig, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN,
    DEFAULT_LISTEN_MODE, DEFAULT_MAX_BODY_BYTES, DEFAULT_SHUTDOWN_GRACE, MAX_BODY_BYTES_LIMIT,
};
use crate::config::raw::{RawServer, StringList};

/// Positive; past 10 min, a drain outlives any sane Kubernetes `terminationGracePeriodSeconds`.
const SHUTDOWN_GRACES: RangeInclusive<Duration> =
    Duration::from_nanos(1)..=Duration::from_secs(600);
/// `server.max_connections` when set explicitly.
const MAX_CONNECTIONS_RANGE: RangeInclusive<usize> = 1..=1_000_000;
/// `server.worker_threads` when set explicitly. The gateway mostly waits on sockets, so
/// workers beyond the CPUs only add context switches; 1024 is above the CPU count of any
/// machine it runs on, so more is a slip (a stray zero), and stays far below tokio's own
/// ceiling (its idle-worker state counts workers in 16 bits).
const WORKER_THREADS_RANGE: RangeInclusive<usize> = 1..=1024;
/// A token file larger than this is a wrong path.
const MAX_ADMIN_TOKEN_FILE_BYTES: u64 = 4096;
/// Shorter tokens are guessable.
const MIN_ADMIN_TOKEN_LEN: usize = 16;

pub(super) fn validate(raw: RawServer, findings: &mut Findings) -> ServerConfig {
    let allow_non_loopback = raw.allow_non_loopback.unwrap_or(false);
    let listen = match raw
        .listen
        .as_deref()
        .map(str::trim)
        .and_then(|l| l.strip_prefix("unix:"))
    {
        Some(path) => unix_listen(findings, path),
        None => ListenAddr::Tcp(listen_addr(
            findings,
            "server.listen",
            raw.listen,
            DEFAULT_LISTEN,
            allow_non_loopback,
            "it hands out admin power: every request through it is signed as the app admin",
        )),
    };
    let tls = match (
        non_empty(raw.tls_cert_file).map(PathBuf::from),
        non_empty(raw.tls_key_file).map(PathBuf::from),
    ) {
        (None, None) => None,
        (Some(cert), Some(key)) => match crate::server::tls::load(&cert, &key) {
            Ok(_) if matches!(listen, ListenAddr::Unix(_)) => findings.refuse(
                "server.tls_cert_file",
                "TLS is for a TCP listen address; a unix socket is served as plain HTTP",
            ),
            Ok(_) => Some((cert, key)),
            Err(problem) => findings.refuse("server.tls_cert_file", problem),
        },
        (Some(_), None) => findings.refuse(
            "server.tls_key_file",
            "is required with server.tls_cert_file: the certificate's private key (PEM)",
        ),
        (None, Some(_)) => findings.refuse(
            "server.tls_cert_file",
            "is required with server.tls_key_file: the certificate chain (PEM)",
        ),
    };
    let listen_mode = match raw.listen_mode.as_deref() {
        None => DEFAULT_LISTEN_MODE,
        Some(text) => match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o777 => mode,
            _ => {
                findings.problem(
                    "server.listen_mode",
                    format!("{text:?} is not a file mode in octal such as \"0660\""),
                );
                DEFAULT_LISTEN_MODE
            }
        },
    };
    let admin_listen = listen_addr(
        findings,
        "server.admin_listen",
        raw.admin_listen,
        DEFAULT_ADMIN_LISTEN,
        allow_non_loopback,
        "it hands out admin power: it can purge the cache and drain the gateway",
    );
    if listen == ListenAddr::Tcp(admin_listen) && admin_listen.port() != 0 {
        findings.problem(
            "server.admin_listen",
            format!("{admin_listen} is also server.listen; give the admin port its own address"),
        );
    }
    let max_body_bytes = findings
        .number(
            "server.max_body_bytes",
            raw.max_body_bytes,
            1..=MAX_BODY_BYTES_LIMIT,
            " (64 MiB)",
        )
        .unwrap_or(DEFAULT_MAX_BODY_BYTES);
    let shutdown_grace = findings.duration(
        "server.shutdown_grace",
        raw.shutdown_grace,
        DEFAULT_SHUTDOWN_GRACE,
        SHUTDOWN_GRACES,
    );
    let allowed_hosts = allowed_hosts(raw.allowed_hosts, findings);
    let max_connections = findings.number(
        "server.max_connections",
        raw.max_connections,
        MAX_CONNECTIONS_RANGE,
        ", or leave it unset to derive it from the open-files limit",
    );
    let worker_threads = findings.number(
        "server.worker_threads",
        raw.worker_threads,
        WORKER_THREADS_RANGE,
        ", or leave it unset for one per CPU the process may use",
    );
    let admin_token_file = non_empty(raw.admin_token_file).map(PathBuf::from);
    let admin_token = admin_token_file
        .as_deref()
        .and_then(|path| admin_token(path, findings));
    if admin_token_file.is_none() && !admin_listen.ip().to_canonical().is_loopback() {
        findings.problem(
            "server.admin_token_file",
            format!(
                "server.admin_listen ({admin_listen}) is not on loopback, so POST /cache/purge \
                 needs a bearer token: put one in a file (e.g. a mounted Secret) and give its \
                 path here"
            ),
        );
    }
    ServerConfig {
        listen,
        listen_mode,
        tls,
        admin_listen,
        allow_non_loopback,
        max_body_bytes,
        allow_unknown_commands: raw.allow_unknown_commands.unwrap_or(false),
        shutdown_grace,
        allowed_hosts,
        max_connections,
        worker_threads,
        admin_token_file,
        admin_token,
    }
}

/// Host names (or `*.suffix` patterns, or IP addresses) the client and admin listeners accept
/// in `Host` and `Origin` besides loopback and their own address; lowercased.
fn allowed_hosts(raw: Option<StringList>, findings: &mut Findings) -> Vec<String> {
    let mut hosts = Vec::new();
    for (i, host) in raw
        .map(StringList::into_vec)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let host = host.trim().to_ascii_lowercase();
        let name = host.strip_prefix("*.").unwrap_or(&host);
        let is_ip = host.parse::<IpAddr>().is_ok();
        let is_name = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if is_ip || is_name {
            hosts.push(host);
        } else {
            findings.problem(
                format!("server.allowed_hosts[{i}]"),
                format!(
                    "{host:?} is not a host name, `*.domain` pattern or IP address (give no \
                     scheme, port or path, e.g. \"tim-gateway.chat.svc\")"
                ),
            );
        }
    }
    hosts
}

/// Reads the admin bearer token: one line of printable ASCII, at least 16 characters.
/// Messages name the file, never its contents.
fn admin_token(path: &Path, findings: &mut Findings) -> Option<AdminToken> {
    const KEY: &str = "server.admin_token_file";
    let bytes = match read_capped(path, MAX_ADMIN_TOKEN_FILE_BYTES) {
        Ok(bytes) => bytes,
        Err(e) => return findings.refuse(KEY, format!("cannot read {}: {e}", path.display())),
    };
    let token = String::from_utf8(bytes).unwrap_or_default();
    let token = token.trim();
    if token.len() < MIN_ADMIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return findings.refuse(
            KEY,
            format!(
                "{} must hold one token of at least {MIN_ADMIN_TOKEN_LEN} printable ASCII \
                 characters without spaces",
                path.display()
            ),
        );
    }
    Some(AdminToken::new(token))
}

/// `server.listen = "unix:/path"`: an absolute path that fits a socket address (108 bytes).
fn unix_listen(findings: &mut Findings, path: &str) -> ListenAddr {
    const MAX_PATH_BYTES: usize = 107;
    let problem = if !path.starts_with('/') {
        Some(format!(
            "unix:{path} is not an absolute path, such as unix:/run/tim-gateway/gateway.sock"
        ))
    } else if path.len() > MAX_PATH_BYTES {
        Some(format!(
            "unix:{path} is longer than a socket path may be ({MAX_PATH_BYTES} bytes)"
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        findings.problem("server.listen", problem);
    }
    ListenAddr::Unix(PathBuf::from(path))
}

fn listen_addr(
    findings: &mut Findings,
    key: &str,
    raw: Option<String>,
    default: &str,
    allow_non_loopback: bool,
    why_loopback: &str,
) -> SocketAddr {
    let fallback: SocketAddr = default.parse().expect("default addresses are valid");
    let Some(text) = raw else {
        return fallback;
    };
    let addr: SocketAddr = match text.trim().parse() {
        Ok(addr) => addr,
        Err(_) => {
            findings.problem(
                key,
                format!(
                    "{text:?} is not an IP address and port such as {default} \
                     (host names are not resolved)"
                ),
            );
            return fallback;
        }
    };
    if !allow_non_loopback && !addr.ip().to_canonical().is_loopback() {
        findings.problem(
            key,
            format!(
                "{addr} is not a loopback address, and {why_loopback}; keep 127.0.0.1, or set \
                 server.allow_non_loopback = true if the network in front restricts who can \
                 reach it"
            ),
        );
    }
    addr
}
