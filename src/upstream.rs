//! The pooled HTTPS client to Tencent, the signed URL, and what came back.
//!
//! One hyper-util client over hyper-rustls (ring provider) serves every app: keep-alive
//! connections are pooled per origin and closed after `pool_idle_timeout` (the pool has a
//! timer, without which idle connections are never reaped). Each call builds exactly
//! `{origin}/v4/{service}/{command}?sdkappid=..&identifier=..&usersig=..&random=<u32>&contenttype=json`
//! (reference §1); nothing the client put in its own query string is forwarded.
//! When a region's main domain cannot be connected to, the backup domain is tried: a failed
//! connect means the request never left, so this is safe for writes too.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, Registry};
use serde::Deserialize;

use crate::limiter::Permit;
use crate::metrics::{counter_vec, histogram_vec};
use crate::outcome::{code_label, ALERTED_CODES};
use crate::region::{Origin, Origins};
use crate::usersig::UserSig;

/// Largest answer body accepted from Tencent.
const MAX_UPSTREAM_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How the client talks to Tencent.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// Whole call: connect, send, and read the full answer.
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Extra CA certificates (PEM) to trust besides the bundled Mozilla roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// An HTTP proxy to reach Tencent through (a CONNECT tunnel), with its exceptions.
    pub proxy: Option<crate::config::EgressProxy>,
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("the extra CA file holds no usable certificate: {0}")]
    BadCa(String),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// A call that got no usable answer from Tencent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made; the request was not sent.
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request may have been sent, but the answer was broken or the connection dropped.
    #[error("{0}")]
    Protocol(String),
    /// A non-200 answer without a JSON body (e.g. a load balancer's 502 page).
    #[error("HTTP {0}")]
    HttpStatus(u16),
}

/// A usable answer from Tencent: relayed to the client unchanged.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub body: Bytes,
    /// The `ErrorCode` of the JSON body; 0 is success.
    pub error_code: i64,
}

/// One call to make: everything the signed URL and the body need. It can only be made from
/// a budget's [`Permit`], so no call reaches Tencent without passing its budget.
#[derive(Debug)]
pub struct SignedCall<'a> {
    permit: Permit,
    /// The app's origins when it was signed (a reload may replace the app's).
    origins: Arc<Origins>,
    /// `service/command`.
    command: &'a str,
    sdkappid: u64,
    /// The admin account its UserSig was minted for.
    identifier: Arc<str>,
    usersig: UserSig,
    /// The signer's generation of `usersig`, to name it if Tencent refuses it.
    usersig_generation: u64,
    body: Bytes,
}

impl<'a> SignedCall<'a> {
    /// Signs one call to `command` with the app's `usersig` (of signer generation
    /// `usersig_generation`), spending `permit`.
    pub fn new(
        permit: Permit,
        origins: Arc<Origins>,
        command: &'a str,
        (sdkappid, identifier): (u64, Arc<str>),
        usersig: UserSig,
        usersig_generation: u64,
        body: Bytes,
    ) -> Self {
        SignedCall {
            permit,
            origins,
            command,
            sdkappid,
            identifier,
            usersig,
            usersig_generation,
            body,
        }
    }

    /// The signer generation of the call's UserSig.
    pub fn usersig_generation(&self) -> u64 {
        self.usersig_generation
    }

    /// The permit the call was made from: its budget hears how the call went.
    pub fn permit(&self) -> &Permit {
        &self.permit
    }
}

/// The metric families of calls to Tencent: `upstream_requests_total` by outcome,
/// `upstream_request_duration_seconds`, and `tencent_errors_total` by ErrorCode.
#[derive(Debug, Clone)]
pub struct UpstreamFamilies {
    requests: IntCounterVec,
    duration: HistogramVec,
    tencent_errors: IntCounterVec,
    signals: IntCounterVec,
}

impl UpstreamFamilies {
    /// # Errors
    /// A metric could not be registered (a bug).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(UpstreamFamilies {
            requests: counter_vec(
                registry,
                "upstream_requests_total",
                "Calls made to Tencent, by app, command and outcome.",
                &["app", "command", "outcome"],
            )?,
            duration: histogram_vec(
                registry,
                "upstream_request_duration_seconds",
                "Duration of calls to Tencent, in seconds.",
                &["app", "command"],
            )?,
            tencent_errors: counter_vec(
                registry,
                "tencent_errors_total",
                "Non-zero ErrorCodes in Tencent's answers, by app, command and code.",
                &["app", "command", "code"],
            )?,
            signals: counter_vec(
                registry,
                "tencent_signals_total",
                "Tencent's ErrorCodes that alerts watch, by app and code; each exists at 0 from the start.",
                &["app", "code"],
            )?,
        })
    }

    /// Creates `app`'s `tencent_signals_total` series at 0, one per alerted code.
    pub fn precreate_signals(&self, app: &str) {
        for code in ALERTED_CODES {
            self.signals.with_label_values(&[app, code]);
        }
    }

    /// The handles of one (app, command) pair.
    pub fn pair(&self, app: &str, command: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            outcomes: Default::default(),
            duration: OnceLock::new(),
            labels: [app.to_owned(), command.to_owned()],
            families: self.clone(),
        }
    }
}

/// Calls to Tencent of one (app, command) pair.
#[derive(Debug)]
pub struct UpstreamMetrics {
    /// ok, tencent_error, timeout, connect_error, http_error; created on first use.
    outcomes: [OnceLock<IntCounter>; 5],
    /// Created on the first call, like every series here.
    duration: OnceLock<Histogram>,
    labels: [String; 2],
    families: UpstreamFamilies,
}

impl UpstreamMetrics {
    /// Counts one call and how it ended; a non-zero ErrorCode also by code.
    pub fn record(&self, result: &Result<UpstreamResponse, UpstreamError>, elapsed: Duration) {
        let (i, outcome) = match result {
            Ok(response) if response.error_code == 0 => (0, "ok"),
            Ok(_) => (1, "tencent_error"),
            Err(UpstreamError::Timeout(_)) => (2, "timeout"),
            Err(UpstreamError::Connect(_)) => (3, "connect_error"),
            Err(UpstreamError::Protocol(_) | UpstreamError::HttpStatus(_)) => (4, "http_error"),
        };
        let [app, command] = &self.labels;
        self.outcomes[i]
            .get_or_init(|| {
                self.families
                    .requests
                    .with_label_values(&[app.as_str(), command, outcome])
            })
            .inc();
        self.duration
            .get_or_init(|| {
                self.families
                    .duration
                    .with_label_values(&[app.as_str(), command])
            })
            .observe(elapsed.as_secs_f64());
        if let Ok(response) = result {
            if response.error_code != 0 {
                let code = code_label(response.error_code);
                self.families
                    .tencent_errors
                    .with_label_values(&[app.as_str(), command, code])
                    .inc();
                if ALERTED_CODES.contains(&code) {
                    self.families
                        .signals
                        .with_label_values(&[app.as_str(), code])
                        .inc();
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "ErrorCode")]
    error_code: Option<i64>,
}

/// The shared upstream client; cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    transport: Transport,
    request_timeout: Duration,
}

/// TCP to the upstream, directly or through an HTTP proxy's CONNECT tunnel (the TLS to
/// Tencent runs inside it, end to end): the proxy sees only the host and port.
#[derive(Clone)]
pub struct ProxyConnector {
    http: HttpConnector,
    /// `None`: no proxy. Otherwise which destinations go through which proxy (`no_proxy`).
    matcher: Option<Arc<hyper_util::client::proxy::matcher::Matcher>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for ProxyConnector {
    type Response = <HttpConnector as tower_service::Service<http::Uri>>::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let proxy = self.matcher.as_ref().and_then(|m| m.intercept(&dst));
        let mut http = self.http.clone();
        Box::pin(async move {
            let Some(proxy) = proxy else {
                return http.call(dst).await.map_err(Into::into);
            };
            let mut tunnel =
                hyper_util::client::legacy::connect::proxy::Tunnel::new(proxy.uri().clone(), http);
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            std::future::poll_fn(|cx| tunnel.poll_ready(cx)).await?;
            tunnel.call(dst).await.map_err(Into::into)
        })
    }
}

/// How requests reach the upstream.
#[derive(Clone)]
enum Transport {
    /// Pooled HTTPS: Tencent, or the sandbox on a socket.
    /// Boxed: the client is ten times the size of the other variant.
    Https(Box<Client<HttpsConnector<ProxyConnector>, Full<Bytes>>>),
    /// Handed to a service in this process: the test seam for timing properties under
    /// tokio's paused time, where sockets and TLS would only add real-time noise.
    InProcess(Arc<dyn InProcessUpstream>),
}

/// An upstream that answers in this process (the sandbox, in tests). It sees the request
/// exactly as Tencent would: method, signed URL, headers and body.
pub trait InProcessUpstream: Send + Sync + 'static {
    /// Answers one request.
    ///
    /// # Errors
    /// [`UpstreamError`] when the upstream ends the exchange without an answer.
    fn call(&self, request: Request<Bytes>) -> InProcessFuture;
}

/// What [`InProcessUpstream::call`] returns.
pub type InProcessFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Bytes>, UpstreamError>> + Send>,
>;

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// # Errors
    /// The extra CA PEM holds no certificate rustls accepts.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, UpstreamBuildError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(pem) = &settings.extra_ca_pem {
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| UpstreamBuildError::BadCa(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| UpstreamBuildError::BadCa(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(UpstreamBuildError::BadCa("no PEM certificate found".into()));
            }
        }
        // The crypto provider is chosen here, explicitly: ring, the only one compiled in.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let matcher = settings.proxy.as_ref().map(|proxy| {
            Arc::new(
                hyper_util::client::proxy::matcher::Matcher::builder()
                    .https(proxy.url.clone())
                    .http(proxy.url.clone())
                    .no(proxy.no_proxy.clone())
                    .build(),
            )
        });
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(ProxyConnector { http, matcher });
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .build(https);
        Ok(UpstreamClient {
            transport: Transport::Https(Box::new(client)),
            request_timeout: settings.request_timeout,
        })
    }

    /// A client whose calls go to `upstream` in this process (tests): the same signed URL,
    /// method, `Content-Type`, timeout and answer parsing as over HTTPS. Not applied: the
    /// TLS and connection layers (no `Host` header is added), the answer size limit and the
    /// redaction of transport error texts, which only those layers produce.
    pub fn in_process(upstream: Arc<dyn InProcessUpstream>, request_timeout: Duration) -> Self {
        UpstreamClient {
            transport: Transport::InProcess(upstream),
            request_timeout,
        }
    }

    /// Sends one signed call, falling back to the backup origin when the main one refuses
    /// connections.
    ///
    /// # Errors
    /// [`UpstreamError`] when no usable answer arrived; Tencent's own error codes are not
    /// errors here, they are in [`UpstreamResponse::error_code`].
    pub async fn call(&self, call: &SignedCall<'_>) -> Result<UpstreamResponse, UpstreamError> {
        self.call_within(call, self.request_timeout).await
    }

    /// [`call`](Self::call) with a shorter timeout, e.g. what is left of a client's deadline.
    ///
    /// # Errors
    /// As for `call`.
    pub async fn call_within(
        &self,
        call: &SignedCall<'_>,
        timeout: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let timeout = timeout.min(self.request_timeout);
        let started = tokio::time::Instant::now();
        match self.call_origin(&call.origins.primary, call, timeout).await {
            Err(UpstreamError::Connect(reason)) => match &call.origins.backup {
                // The backup gets what is left of the one timeout, not a second one.
                Some(backup) => match timeout.checked_sub(started.elapsed()) {
                    Some(left) if !left.is_zero() => {
                        tracing::warn!(%reason, backup = %backup, "main Tencent domain unreachable; trying the backup domain");
                        self.call_origin(backup, call, left).await
                    }
                    _ => Err(UpstreamError::Timeout(timeout)),
                },
                None => Err(UpstreamError::Connect(reason)),
            },
            other => other,
        }
    }

    async fn call_origin(
        &self,
        origin: &Origin,
        call: &SignedCall<'_>,
        timeout: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri = signed_uri(origin, call, rand::random::<u32>());
        let mut request = Request::new(call.body.clone());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri
            .parse()
            .map_err(|_| UpstreamError::Protocol("could not build the upstream URL".into()))?;
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let exchange = async {
            let client = match &self.transport {
                Transport::Https(client) => client,
                Transport::InProcess(upstream) => {
                    let (parts, body) = upstream.call(request).await?.into_parts();
                    return Ok((parts.status, body));
                }
            };
            let response = client
                .request(request.map(Full::new))
                .await
                .map_err(|e| classify_client_error(&e, &call.usersig))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_UPSTREAM_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    UpstreamError::Protocol(redact(
                        format!("reading Tencent's answer failed: {e}"),
                        &call.usersig,
                    ))
                })?
                .to_bytes();
            Ok::<_, UpstreamError>((parts.status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))??;
        match serde_json::from_slice::<Envelope>(&body) {
            Ok(Envelope {
                error_code: Some(error_code),
            }) => Ok(UpstreamResponse {
                status,
                body,
                error_code,
            }),
            _ if status != StatusCode::OK => Err(UpstreamError::HttpStatus(status.as_u16())),
            _ => Err(UpstreamError::Protocol(
                "Tencent's answer is not a JSON object with an ErrorCode".into(),
            )),
        }
    }
}

/// `{origin}/v4/{command}?sdkappid=..&identifier=..&usersig=..&random=..&contenttype=json`.
fn signed_uri(origin: &Origin, call: &SignedCall<'_>, random: u32) -> String {
    use std::fmt::Write as _;
    let usersig = call.usersig.expose();
    let mut uri = String::with_capacity(
        origin.as_str().len() + call.command.len() + usersig.len() + call.identifier.len() + 96,
    );
    let _ = write!(
        uri,
        "{}/v4/{}?sdkappid={}&identifier=",
        origin.as_str(),
        call.command,
        call.sdkappid
    );
    percent_encode_into(&mut uri, &call.identifier);
    // The UserSig's alphabet (`A-Za-z0-9*-_`) is URL safe: it goes in raw (reference §1).
    let _ = write!(uri, "&usersig={usersig}&random={random}&contenttype=json");
    uri
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0x0f)] as char);
        }
    }
}

fn classify_client_error(
    error: &hyper_util::client::legacy::Error,
    usersig: &UserSig,
) -> UpstreamError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    let message = redact(message, usersig);
    if error.is_connect() {
        UpstreamError::Connect(message)
    } else {
        UpstreamError::Protocol(message)
    }
}

/// Error texts from the HTTP and TLS stacks should never contain the URL, but if one ever
/// does, the UserSig in it must not reach a log line or a client.
fn redact(message: String, usersig: &UserSig) -> String {
    if message.contains(usersig.expose()) {
        message.replace(usersig.expose(), "<redacted>")
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usersig::{mint, SecretKey};

    /// The signed URL carries exactly the five parameters, in the reference's order.
    #[test]
    fn signed_uri_has_exactly_the_five_parameters() {
        let usersig = mint(&SecretKey::new("k"), 1_400_000_000, "admin", 1, 2);
        let origins = Arc::new(crate::region::Region::Singapore.origins());
        let call = SignedCall::new(
            Permit::for_tests(),
            Arc::clone(&origins),
            "openim_robot_http_svc/get_all_robots",
            (1_400_000_000, "admin@x y".into()),
            usersig.clone(),
            1,
            Bytes::new(),
        );
        let uri = signed_uri(&origins.primary, &call, 42);
        assert_eq!(
            uri,
            format!(
                "https://adminapisgp.im.qcloud.com/v4/openim_robot_http_svc/get_all_robots?sdkappid=1400000000&identifier=admin%40x%20y&usersig={}&random=42&contenttype=json",
                usersig.expose()
            )
        );
        assert!(uri.parse::<http::Uri>().is_ok());
    }
}
