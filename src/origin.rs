//! Browser protection for both listeners: a web page on the same host must not be able to
//! use the gateway's admin power (issue 7, F2).
//!
//! Three checks, cheapest first, each on headers only (no allocation):
//! - `Host` must name loopback (`localhost`, `*.localhost`, a loopback IP), the listener's own
//!   address (any IP when it listens on a wildcard), or an entry of `server.allowed_hosts`;
//!   otherwise 421. This defeats DNS rebinding, where an attacker's name resolves to 127.0.0.1
//!   and the browser sends `Host: attacker.example`.
//! - `Origin`, when present, must be the request's own origin (same host and port as `Host`),
//!   a page served from loopback, or a host in `server.allowed_hosts` (`Origin: null` never
//!   is); otherwise 403. Browsers send it on every cross-site POST, including the "simple"
//!   `text/plain` ones that need no preflight, and it is the only signal towards plain-HTTP
//!   non-loopback listeners, where browsers omit `Sec-Fetch-Site`.
//! - `Sec-Fetch-Site`, when present, must be `same-origin` or `none`; otherwise 403.
//!
//! SDKs and curl send neither `Origin` nor `Sec-Fetch-Site`, and send the `Host` they were
//! given, so they are unaffected. A request without `Host` (HTTP/1.0) is not a browser's.

use std::net::{IpAddr, SocketAddr};

use http::{header, HeaderMap};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BrowserError {
    /// `Origin` names another site, or `Sec-Fetch-Site` says cross-site (403).
    #[error("cross-site requests are refused: the gateway signs every call as the app admin")]
    CrossSite,
    /// `Host` is not one this listener answers to (421).
    #[error("this Host is not served here; add it to server.allowed_hosts if it should be")]
    UnknownHost,
}

const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// A header value as text when it is visible ASCII (and tabs), as `HeaderValue::to_str` has it.
fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// The hosts one listener answers to.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// The listener's own address.
    listen: IpAddr,
    /// The IP addresses of `server.allowed_hosts`, canonical (IPv4-mapped IPv6 as IPv4).
    allowed_ips: Vec<IpAddr>,
    /// The names of `server.allowed_hosts`, lowercase; `*.domain` entries match any subdomain.
    allowed_names: Vec<String>,
    /// `Host` values accepted by a byte comparison, before any parsing: the listener's own
    /// `ip:port` and `localhost:port`, as SDKs and curl send them (a fast path; every other
    /// value takes the full check).
    usual_hosts: [Box<str>; 2],
}

impl HostPolicy {
    pub fn new(listen: SocketAddr, allowed: &[String]) -> HostPolicy {
        let (ips, names): (Vec<_>, Vec<_>) = allowed
            .iter()
            .partition(|entry| entry.parse::<IpAddr>().is_ok());
        HostPolicy {
            listen: listen.ip().to_canonical(),
            allowed_ips: ips
                .iter()
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| ip.to_canonical())
                .collect(),
            allowed_names: names.into_iter().map(|n| n.to_ascii_lowercase()).collect(),
            usual_hosts: [
                listen.to_string().into_boxed_str(),
                format!("localhost:{}", listen.port()).into_boxed_str(),
            ],
        }
    }

    /// Applies the three checks to a request's headers.
    ///
    /// # Errors
    /// [`BrowserError::UnknownHost`] or [`BrowserError::CrossSite`], as the module says.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), BrowserError> {
        self.check_pairs(
            headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes())),
        )
    }

    /// [`check`](Self::check) on headers as parsed off the wire (names in any case).
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn check_raw(&self, headers: &[httparse::Header<'_>]) -> Result<(), BrowserError> {
        self.check_pairs(headers.iter().map(|header| (header.name, header.value)))
    }

    fn check_pairs<'h>(
        &self,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    ) -> Result<(), BrowserError> {
        let mut host = None;
        let mut origin = None;
        // One pass over the few headers a request has: cheaper than three hashed lookups.
        for (name, value) in headers {
            if name.eq_ignore_ascii_case(header::HOST.as_str()) {
                if let Some(usual) = self
                    .usual_hosts
                    .iter()
                    .find(|usual| usual.as_bytes() == value)
                {
                    host = Some(&**usual);
                    continue;
                }
                let authority = visible_ascii(value).ok_or(BrowserError::UnknownHost)?;
                if !self.is_allowed_host(strip_port(authority).ok_or(BrowserError::UnknownHost)?) {
                    return Err(BrowserError::UnknownHost);
                }
                host = Some(authority);
            } else if name.eq_ignore_ascii_case(header::ORIGIN.as_str()) {
                if origin.is_some() {
                    return Err(BrowserError::CrossSite);
                }
                origin = Some(visible_ascii(value).ok_or(BrowserError::CrossSite)?);
            } else if name.eq_ignore_ascii_case(SEC_FETCH_SITE)
                && !value.eq_ignore_ascii_case(b"same-origin")
                && !value.eq_ignore_ascii_case(b"none")
            {
                return Err(BrowserError::CrossSite);
            }
        }
        match origin {
            Some(origin) if !self.is_allowed_origin(origin, host) => Err(BrowserError::CrossSite),
            _ => Ok(()),
        }
    }

    /// Whether a `Host` (no port; an IPv6 address without brackets) is one this listener
    /// serves: loopback, its own address (any IP on a wildcard listener: rebinding needs a
    /// name), or `server.allowed_hosts`.
    fn is_allowed_host(&self, host: &str) -> bool {
        if let Some(ip) = parse_ip(host) {
            return ip.is_loopback()
                || ip == self.listen
                || self.listen.is_unspecified()
                || self.allowed_ips.contains(&ip);
        }
        is_loopback_name(host) || self.is_allowed_name(host)
    }

    /// Whether an `Origin` may call: the same origin as the request's `Host` (same host and
    /// port), a page served from loopback, or a host listed in `server.allowed_hosts`. Unlike
    /// `Host`, a wildcard listener does not make every IP an allowed origin: browsers omit
    /// `Sec-Fetch-Site` towards plain-HTTP non-loopback targets, so this check stands alone.
    fn is_allowed_origin(&self, origin: &str, host: Option<&str>) -> bool {
        let Some(authority) = origin_authority(origin) else {
            return false;
        };
        if host.is_some_and(|host| host.eq_ignore_ascii_case(authority)) {
            return true;
        }
        let Some(origin_host) = strip_port(authority) else {
            return false;
        };
        match parse_ip(origin_host) {
            Some(ip) => ip.is_loopback() || self.allowed_ips.contains(&ip),
            None => is_loopback_name(origin_host) || self.is_allowed_name(origin_host),
        }
    }

    fn is_allowed_name(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        self.allowed_names
            .iter()
            .any(|allowed| match allowed.strip_prefix('*') {
                // "*.example.com": a proper subdomain of example.com.
                Some(suffix) => host.len() > suffix.len() && ends_with_ignore_case(host, suffix),
                None => host.eq_ignore_ascii_case(allowed),
            })
    }
}

/// An IP literal, canonical (IPv4-mapped IPv6 as IPv4); `127.0.0.1`, what SDKs and curl on the
/// same host send, without the general parser.
fn parse_ip(host: &str) -> Option<IpAddr> {
    if host == "127.0.0.1" {
        return Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    }
    host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// `localhost` and its subdomains (RFC 6761), with or without a trailing dot.
fn is_loopback_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost") || ends_with_ignore_case(host, ".localhost")
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && text.as_bytes()[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// `name`, `name:port`, `1.2.3.4:port`, `[::1]:port` → the host part; `None` if malformed.
fn strip_port(authority: &str) -> Option<&str> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return (after.is_empty() || is_port(after.strip_prefix(':')?)).then_some(ip);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if is_port(port) && !host.contains(':') => Some(host),
        Some(_) => None,
        None => (!authority.is_empty()).then_some(authority),
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// The `host[:port]` of a serialised origin (`scheme://host[:port]`); `None` for `null` or
/// garbage.
fn origin_authority(origin: &str) -> Option<&str> {
    let (_, authority) = origin.split_once("://")?;
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
        return None;
    }
    Some(authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    /// The table of what a loopback listener with one allowed name accepts and refuses.
    #[test]
    fn loopback_listener_accepts_clients_and_refuses_browsers() {
        let policy = HostPolicy::new(
            "127.0.0.1:15080".parse().unwrap(),
            &[
                "tim.chat.svc".into(),
                "*.example.com".into(),
                "10.1.2.3".into(),
            ],
        );
        type Case<'a> = (&'a [(&'static str, &'static str)], Result<(), BrowserError>);
        let cases: &[Case] = &[
            // SDKs and curl: a Host, nothing else (and HTTP/1.0: no Host at all).
            (&[], Ok(())),
            (&[("host", "127.0.0.1:15080")], Ok(())),
            (&[("host", "localhost:15080")], Ok(())),
            (&[("host", "LOCALHOST")], Ok(())),
            (&[("host", "api.localhost:1")], Ok(())),
            (&[("host", "[::1]:15080")], Ok(())),
            (&[("host", "127.0.0.2")], Ok(())),
            (&[("host", "tim.chat.svc:15080")], Ok(())),
            (&[("host", "tim.chat.svc.")], Ok(())),
            (&[("host", "a.example.com")], Ok(())),
            (&[("host", "10.1.2.3:80")], Ok(())),
            // DNS rebinding and other names.
            (
                &[("host", "rebind.evil.example")],
                Err(BrowserError::UnknownHost),
            ),
            (&[("host", "example.com")], Err(BrowserError::UnknownHost)),
            (
                &[("host", "evilexample.com")],
                Err(BrowserError::UnknownHost),
            ),
            (&[("host", "10.0.0.1")], Err(BrowserError::UnknownHost)),
            (
                &[("host", "localhost.evil")],
                Err(BrowserError::UnknownHost),
            ),
            (&[("host", "a:b:c")], Err(BrowserError::UnknownHost)),
            (&[("host", "[::1")], Err(BrowserError::UnknownHost)),
            (&[("host", "")], Err(BrowserError::UnknownHost)),
            // Browsers: Origin and Sec-Fetch-Site.
            (&[("origin", "http://localhost:3000")], Ok(())),
            (&[("origin", "https://tim.chat.svc")], Ok(())),
            (&[("origin", "http://10.1.2.3:8080")], Ok(())),
            (&[("origin", "http://[::ffff:10.1.2.3]")], Ok(())),
            (
                &[("origin", "http://10.0.0.1")],
                Err(BrowserError::CrossSite),
            ),
            (
                &[
                    ("origin", "http://127.0.0.1:15080"),
                    ("origin", "http://evil.example"),
                ],
                Err(BrowserError::CrossSite),
            ),
            (
                &[("origin", "https://evil.example")],
                Err(BrowserError::CrossSite),
            ),
            (&[("origin", "null")], Err(BrowserError::CrossSite)),
            (
                &[("origin", "http://127.0.0.1@evil.example")],
                Err(BrowserError::CrossSite),
            ),
            (&[("sec-fetch-site", "none")], Ok(())),
            (&[("sec-fetch-site", "same-origin")], Ok(())),
            (
                &[("sec-fetch-site", "same-site")],
                Err(BrowserError::CrossSite),
            ),
            (
                &[("sec-fetch-site", "cross-site")],
                Err(BrowserError::CrossSite),
            ),
            (
                &[
                    ("host", "127.0.0.1:15080"),
                    ("origin", "http://evil.example"),
                    ("sec-fetch-site", "cross-site"),
                ],
                Err(BrowserError::CrossSite),
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(policy.check(&headers(pairs)), *expected, "{pairs:?}");
        }
    }

    /// A listener on a wildcard address answers to any IP literal (kubelet probes and
    /// Prometheus use the pod IP) but still refuses unknown names.
    #[test]
    fn wildcard_listener_accepts_ip_hosts_only() {
        let policy = HostPolicy::new("0.0.0.0:15090".parse().unwrap(), &[]);
        assert_eq!(
            policy.check(&headers(&[("host", "10.244.1.7:15090")])),
            Ok(())
        );
        assert_eq!(
            policy.check(&headers(&[("host", "evil.example:15090")])),
            Err(BrowserError::UnknownHost)
        );
        let pod = HostPolicy::new("10.244.1.7:15090".parse().unwrap(), &[]);
        assert_eq!(pod.check(&headers(&[("host", "10.244.1.7:15090")])), Ok(()));
        assert_eq!(
            pod.check(&headers(&[("host", "10.244.1.8:15090")])),
            Err(BrowserError::UnknownHost)
        );
    }
}
