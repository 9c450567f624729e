//! The last phase, `respond`, and what it needs: the per-request context that feeds the
//! access log line and the request metrics (and still records a request whose client hung
//! up), and the request id.
//!
//! Metrics owned here: `requests_total`, `request_duration_seconds`, `requests_in_flight`.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response};
use http_body_util::Full;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
use tokio::time::Instant;

use super::{CacheStatus, Proxy, Reply, Target};
use crate::access_log::{self, AccessLine};
use crate::metrics::{counter_vec, gauge, histogram_vec};
use crate::server::{Answer, RawRequest};

/// The metric families of client requests.
#[derive(Debug, Clone)]
pub struct RequestFamilies {
    /// `requests_total{app, command, cache, status_class}`.
    requests: IntCounterVec,
    /// `request_duration_seconds{app, command, cache}`.
    duration: HistogramVec,
    /// `requests_in_flight`: up when a request arrives, down when it is answered or dropped.
    pub(super) in_flight: IntGauge,
}

impl RequestFamilies {
    /// Registers the request families on `registry`.
    ///
    /// # Errors
    /// A metric could not be registered (a bug).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(RequestFamilies {
            requests: counter_vec(
                registry,
                "requests_total",
                "Client requests answered, by app, command, cache result and HTTP status class.",
                &["app", "command", "cache", "status_class"],
            )?,
            duration: histogram_vec(
                registry,
                "request_duration_seconds",
                "Time from a client request's arrival to its answer, in seconds.",
                &["app", "command", "cache"],
            )?,
            in_flight: gauge(
                registry,
                "requests_in_flight",
                "Client requests being handled right now.",
            )?,
        })
    }

    /// The handles of one (app, command) pair; series appear on first use.
    pub fn pair(&self, app: &str, command: &str) -> RequestMetrics {
        RequestMetrics {
            requests: Default::default(),
            duration: Default::default(),
            labels: [app.to_owned(), command.to_owned()],
            families: self.clone(),
        }
    }
}

/// Client requests of one (app, command) pair.
#[derive(Debug)]
pub struct RequestMetrics {
    /// By cache status, then status class (2xx, 3xx, 4xx, 5xx).
    requests: [[OnceLock<IntCounter>; 4]; 4],
    /// By cache status.
    duration: [OnceLock<Histogram>; 4],
    labels: [String; 2],
    families: RequestFamilies,
}

const STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

impl RequestMetrics {
    /// One answered request.
    pub fn record(&self, cache: CacheStatus, status: u16, elapsed: Duration) {
        let class = match status {
            0..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        let [app, command] = &self.labels;
        self.requests[cache as usize][class]
            .get_or_init(|| {
                self.families.requests.with_label_values(&[
                    app.as_str(),
                    command,
                    cache.as_str(),
                    STATUS_CLASSES[class],
                ])
            })
            .inc();
        self.duration[cache as usize]
            .get_or_init(|| {
                self.families
                    .duration
                    .with_label_values(&[app.as_str(), command, cache.as_str()])
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// What the final log line and the metrics need to know about a request. Created when the
/// request arrives (it counts the request in flight); if dropped before `respond` marked it
/// answered, the client hung up: the drop records that (status 499) so no request goes
/// unlogged or uncounted.
pub(super) struct RequestCtx<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) started: Instant,
    /// The client's `X-Request-Id` if usable, else a fresh one; echoed back.
    pub(super) request_id: HeaderValue,
    /// Set once `route` found the request's (app, command).
    pub(super) target: Option<Target<'a>>,
    pub(super) cache: CacheStatus,
    pub(super) is_answered: bool,
}

/// nginx's status for "client closed the request before the answer".
const CLIENT_CLOSED: u16 = 499;

impl<'a> RequestCtx<'a> {
    pub(super) fn enter(proxy: &'a Proxy, request_id: HeaderValue) -> Self {
        proxy.requests.in_flight.inc();
        RequestCtx {
            proxy,
            started: Instant::now(),
            request_id,
            target: None,
            cache: CacheStatus::Bypass,
            is_answered: false,
        }
    }

    fn metrics(&self) -> &'a RequestMetrics {
        self.target
            .map_or(&self.proxy.unrouted, |target| &target.lane.requests)
    }

    fn app_name(&self) -> &'a str {
        let apps: &'a [super::App] = self.proxy.apps();
        self.target
            .map_or("-", |target| apps[target.lane.app].name.as_str())
    }
}

impl Drop for RequestCtx<'_> {
    fn drop(&mut self) {
        self.proxy.requests.in_flight.dec();
        if self.is_answered {
            return;
        }
        let elapsed = self.started.elapsed();
        self.metrics().record(self.cache, CLIENT_CLOSED, elapsed);
        access_log::write(&AccessLine {
            request_id: self.request_id.to_str().unwrap_or("-"),
            method: None,
            path: None,
            app: self.app_name(),
            command: None,
            cache: None,
            status: CLIENT_CLOSED,
            error_code: None,
            latency_us: elapsed.as_micros() as u64,
            error: Some("the client closed the connection before the answer"),
        });
    }
}

/// Longest client `X-Request-Id` echoed back; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The client's `X-Request-Id` when it is short visible ASCII, else 16 random hex digits.
pub(super) fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&REQUEST_ID) {
        if is_usable_id(id.as_bytes()) {
            return id.clone();
        }
    }
    HeaderValue::from_bytes(&random_id()).expect("hex digits are a valid header value")
}

/// Whether a client's `X-Request-Id` is echoed back as it is.
fn is_usable_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(u8::is_ascii_graphic)
}

/// 16 random lowercase hex digits.
fn random_id() -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // An identifier, not a secret: fastrand's per-thread wyrand is a few multiplications,
    // where `rand`'s ChaCha costs about 150 instructions of a cache hit.
    let random = fastrand::u64(..);
    let mut id = [0u8; 16];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[((random >> (60 - 4 * i)) & 0xf) as usize];
    }
    id
}

/// Ages below this many seconds have their `Age` value made once, so a hit clones a static
/// value instead of formatting and allocating one (about 130 instructions of a cache hit).
const PREMADE_AGES: usize = 1024;

/// The `Age` header's value for `seconds`.
fn age_value(seconds: u64) -> HeaderValue {
    static PREMADE: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let Some(index) = usize::try_from(seconds).ok().filter(|&s| s < PREMADE_AGES) else {
        return HeaderValue::from(seconds);
    };
    let premade = PREMADE.get_or_init(|| {
        // One static text holding every number, each value a slice of it: cloning a value
        // made from static bytes touches no reference count.
        let mut text = String::new();
        let ends: Vec<usize> = (0..PREMADE_AGES)
            .map(|age| {
                text.push_str(itoa::Buffer::new().format(age));
                text.len()
            })
            .collect();
        let text: &'static str = Box::leak(text.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let value = HeaderValue::from_maybe_shared(Bytes::from_static(
                    &text.as_bytes()[start..end],
                ))
                .expect("digits are a valid header value");
                start = end;
                value
            })
            .collect()
    });
    premade[index].clone()
}

/// The log target of the one line per request: `RUST_LOG=info,tim_gateway::access=warn` turns
/// the access log off and keeps everything else.
pub const ACCESS_LOG: &str = access_log::TARGET;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

impl Proxy {
    /// In this phase the answer goes back: Tencent's status and JSON body unchanged (from the
    /// upstream or the cache), or a gateway error envelope; plus `X-Cache`, `Age` and
    /// `X-Request-Id`. The request's metrics and its one log line are written here.
    pub(super) fn respond(
        &self,
        reply: Reply,
        ctx: &mut RequestCtx<'_>,
        parts: &http::request::Parts,
    ) -> Response<Full<Bytes>> {
        // One clock read for the `Age` header and the latency.
        let now = Instant::now();
        let (mut response, error_code, age, error) = match reply {
            Reply::Upstream(upstream) => {
                let mut response = Response::new(Full::new(upstream.body));
                *response.status_mut() = upstream.status;
                (response, upstream.error_code, Some(0), None)
            }
            Reply::Cached(cached) => {
                let mut response = Response::new(Full::new(cached.body.clone()));
                *response.status_mut() = cached.status;
                (response, 0, Some(cached.age(now).as_secs()), None)
            }
            Reply::Error(error) => {
                let code = error.code();
                let text = error.to_string();
                (error.into_response(), code, None, Some(text))
            }
        };
        let status = response.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if ctx.target.is_some() {
            headers.insert(X_CACHE, HeaderValue::from_static(ctx.cache.as_str()));
        }
        if let (Some(age), true) = (age, ctx.cache != CacheStatus::Bypass) {
            headers.insert(header::AGE, age_value(age));
        }
        headers.insert(REQUEST_ID, ctx.request_id.clone());

        let elapsed = now.saturating_duration_since(ctx.started);
        ctx.is_answered = true;
        ctx.metrics().record(ctx.cache, status.as_u16(), elapsed);
        let app = ctx.app_name();
        let command = ctx.target.map_or("-", |t| t.command);
        let request_id = ctx.request_id.to_str().unwrap_or("-");
        // Method and path only for requests the gateway refused or failed (absent fields are
        // not written), so a successful request's line stays short.
        let is_error = error.is_some();
        access_log::write(&AccessLine {
            request_id,
            method: is_error.then(|| parts.method.as_str()),
            path: is_error.then(|| parts.uri.path()),
            app,
            command: Some(command),
            cache: Some(ctx.cache.as_str()),
            status: status.as_u16(),
            error_code: Some(error_code),
            latency_us: elapsed.as_micros() as u64,
            error: error.as_deref(),
        });
        response
    }
}

impl Proxy {
    /// `respond` for a cache hit answered at once ([`Proxy::answer_now`]): the same status,
    /// headers (in the same order) and body, the same metrics and access line, written
    /// straight into the connection's output.
    pub(super) fn respond_now(
        &self,
        target: &Target<'_>,
        cached: &crate::cache::Cached,
        request: &RawRequest<'_>,
        started: Instant,
        answer: &mut Answer<'_>,
    ) {
        let now = Instant::now();
        let generated;
        let request_id = match request.header(REQUEST_ID.as_str()) {
            Some(id) if is_usable_id(id) => id,
            _ => {
                generated = random_id();
                &generated
            }
        };
        answer.status(cached.status);
        answer.header(header::CONTENT_TYPE.as_str(), b"application/json");
        answer.header(X_CACHE.as_str(), CacheStatus::Hit.as_str().as_bytes());
        let age = cached.age(now).as_secs();
        answer.header(
            header::AGE.as_str(),
            itoa::Buffer::new().format(age).as_bytes(),
        );
        answer.header(REQUEST_ID.as_str(), request_id);
        answer.body(cached.body.clone());

        let elapsed = now.saturating_duration_since(started);
        let status = cached.status.as_u16();
        target
            .lane
            .requests
            .record(CacheStatus::Hit, status, elapsed);
        access_log::write(&AccessLine {
            // A usable id is visible ASCII; a generated one hex digits.
            request_id: std::str::from_utf8(request_id).unwrap_or("-"),
            method: None,
            path: None,
            app: self.apps()[target.lane.app].name.as_str(),
            command: Some(target.command),
            cache: Some(CacheStatus::Hit.as_str()),
            status,
            error_code: Some(0),
            latency_us: elapsed.as_micros() as u64,
            error: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Premade ages and formatted ones spell the same numbers, on both sides of the table's end.
    #[test]
    fn age_values_are_the_seconds_in_digits() {
        for seconds in [0, 7, 59, 999, 1_000, 1_023, 1_024, 86_400, u64::MAX] {
            assert_eq!(age_value(seconds).to_str().unwrap(), seconds.to_string());
        }
    }

    /// A generated id is 16 hex digits and two are not the same; a client's usable id is kept.
    #[test]
    fn request_ids_are_generated_or_echoed() {
        let none = http::HeaderMap::new();
        let (a, b) = (request_id(&none), request_id(&none));
        for id in [&a, &b] {
            let id = id.to_str().unwrap();
            assert_eq!(id.len(), 16, "{id}");
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_ne!(a, b);
        let mut given = http::HeaderMap::new();
        given.insert(REQUEST_ID, HeaderValue::from_static("trace-42"));
        assert_eq!(request_id(&given), "trace-42");
        given.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&given).len(), 16);
    }
}
