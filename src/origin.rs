//! Browser protection for both listeners: a web page on the same host must not be able to
//! use the gateway's admin power (issue 7, F2).
//!
//! Three checks, cheapest first, each on headers only (no allocation):
//! - `Host` must name loopback (`localhost`, `*.localhost`, a loopback IP), the listener's own
//!   address (any IP when it listens on a wildcard), or an entry of `server.allowed_hosts`;
//!   otherwise 421. This defeats DNS rebinding, where an attacker's name resolves to 127.0.0.1
//!   and the browser sends `Host: attacker.example`.
//! - `Origin`, when present, must name an allowed host by the same rule (`Origin: null`
//!   never does); otherwise 403. Browsers send it on every cross-site POST, including the
//!   "simple" `text/plain` ones that need no preflight.
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

/// Header names are lowercase in `http`.
const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// The hosts one listener answers to.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// The listener's own address.
    listen: IpAddr,
    /// `server.allowed_hosts`, lowercase; `*.domain` entries match any subdomain.
    allowed: Vec<String>,
}

impl HostPolicy {
    pub fn new(listen: SocketAddr, allowed: &[String]) -> HostPolicy {
        HostPolicy {
            listen: listen.ip().to_canonical(),
            allowed: allowed.to_vec(),
        }
    }

    /// Applies the three checks to a request's headers.
    ///
    /// # Errors
    /// [`BrowserError::UnknownHost`] or [`BrowserError::CrossSite`], as the module says.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), BrowserError> {
        // One pass over the few headers a request has: cheaper than three hashed lookups.
        for (name, value) in headers {
            if name == header::HOST {
                let host = value.to_str().map_err(|_| BrowserError::UnknownHost)?;
                if !self.is_allowed(strip_port(host).ok_or(BrowserError::UnknownHost)?) {
                    return Err(BrowserError::UnknownHost);
                }
            } else if name == header::ORIGIN {
                let origin = value.to_str().map_err(|_| BrowserError::CrossSite)?;
                let host = origin_host(origin).ok_or(BrowserError::CrossSite)?;
                if !self.is_allowed(host) {
                    return Err(BrowserError::CrossSite);
                }
            } else if name.as_str() == SEC_FETCH_SITE {
                let site = value.as_bytes();
                if !site.eq_ignore_ascii_case(b"same-origin") && !site.eq_ignore_ascii_case(b"none")
                {
                    return Err(BrowserError::CrossSite);
                }
            }
        }
        Ok(())
    }

    /// Whether `host` (no port; an IPv6 address without brackets) is one this listener serves.
    fn is_allowed(&self, host: &str) -> bool {
        // What SDKs and curl on the same host send, answered before any parsing.
        if host == "127.0.0.1" || host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            let ip = ip.to_canonical();
            return ip.is_loopback()
                || ip == self.listen
                || self.listen.is_unspecified()
                || self.allowed.iter().any(|a| a.parse() == Ok(ip));
        }
        if host.eq_ignore_ascii_case("localhost") || ends_with_ignore_case(host, ".localhost") {
            return true;
        }
        self.allowed
            .iter()
            .any(|allowed| match allowed.strip_prefix('*') {
                // "*.example.com": a proper subdomain of example.com.
                Some(suffix) => host.len() > suffix.len() && ends_with_ignore_case(host, suffix),
                None => host.eq_ignore_ascii_case(allowed),
            })
    }
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

/// The host of a serialised origin (`scheme://host[:port]`); `None` for `null` or garbage.
fn origin_host(origin: &str) -> Option<&str> {
    let (_, authority) = origin.split_once("://")?;
    if authority.contains(['/', '@', '?', '#']) {
        return None;
    }
    strip_port(authority)
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
