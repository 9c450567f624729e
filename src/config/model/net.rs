//! Network addresses of the configuration: where the client listener listens, and the
//! egress proxy to Tencent.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the client listener listens: a TCP address, or a unix socket (`unix:/path`), e.g.
/// in an `emptyDir` shared by the containers of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// The TCP address, if it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(addr) => Some(*addr),
            ListenAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr::Tcp(addr)
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = std::net::AddrParseError;

    /// `unix:/path` or an IP address and port.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.strip_prefix("unix:") {
            Some(path) => Ok(ListenAddr::Unix(PathBuf::from(path))),
            None => text.parse().map(ListenAddr::Tcp),
        }
    }
}

/// Permissions of a unix-socket client listener unless `server.listen_mode` says otherwise:
/// the owner and its group (containers of a pod sharing an `fsGroup`).
pub const DEFAULT_LISTEN_MODE: u32 = 0o660;

/// The egress proxy: its URL (possibly with credentials, never printed) and which hosts
/// bypass it.
#[derive(Clone, PartialEq, Eq)]
pub struct EgressProxy {
    /// `http://[user:password@]host:port`.
    pub url: String,
    /// Where it came from: `upstream.proxy` or the variable's name.
    pub source: String,
    /// `upstream.no_proxy`, else `NO_PROXY` / `no_proxy`: comma-separated hosts, domains
    /// (`.example.com`), IPs or CIDR ranges that are called directly.
    pub no_proxy: String,
}

impl EgressProxy {
    /// The URL with any credentials replaced by `***`.
    pub fn shown(&self) -> String {
        // Also without a scheme (`user:pw@proxy:3128`, refused as a URL, but the refusal
        // quotes it): whatever precedes the last `@` is credentials.
        let (scheme, rest) = match self.url.split_once("://") {
            Some((scheme, rest)) => (format!("{scheme}://"), rest),
            None => (String::new(), self.url.as_str()),
        };
        match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}***@{host}"),
            None => self.url.clone(),
        }
    }
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressProxy")
            .field("url", &self.shown())
            .field("source", &self.source)
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}
