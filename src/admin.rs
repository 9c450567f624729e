//! The admin listener: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz`
//! (UserSigs minted, not draining) and `POST /cache/purge[?app=NAME][&command=SERVICE/COMMAND]`.
//! It stays up while the client listener drains, so probes see the not-ready state.
//!
//! Every endpoint applies the same browser protection as the client listener (`origin`), so a
//! web page cannot purge the cache. A purge with a repeated parameter is refused rather than
//! guessed at, and when `server.admin_token_file` is set (required off loopback) a purge
//! needs `Authorization: Bearer <token>`. Probes and scrapes need no token: the kubelet and
//! Prometheus reach them by the pod IP, and they change nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::config::AdminToken;
use crate::error::{envelope, GatewayError};
use crate::origin::HostPolicy;
use crate::proxy::Proxy;
use crate::route::parse_query;
use crate::server::{ClientBody, Handler, Refusal};

/// Admin endpoints of one gateway.
#[derive(Debug)]
pub struct Admin {
    pub proxy: Arc<Proxy>,
    /// Set when shutdown starts: `/readyz` answers 503 from then on.
    pub is_draining: Arc<AtomicBool>,
    /// Which `Host`/`Origin` values the admin listener answers.
    pub hosts: HostPolicy,
    /// Required by the purge endpoint when set.
    pub token: Option<AdminToken>,
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

impl Admin {
    fn purge(&self, headers: &HeaderMap, query: Option<&str>) -> Response<Full<Bytes>> {
        if let Some(token) = &self.token {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let presented = headers.get(header::AUTHORIZATION).and_then(|v| {
                let value = v.as_bytes();
                let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ')?);
                scheme
                    .eq_ignore_ascii_case(b"Bearer")
                    .then(|| token.trim_ascii_start())
            });
            if !presented.is_some_and(|p| token.matches(p)) {
                return GatewayError::AdminUnauthorized.into_response();
            }
        }
        let mut app = None;
        let mut command = None;
        for (name, value) in parse_query(query.unwrap_or("")) {
            let slot = match name.as_str() {
                "app" => &mut app,
                "command" => &mut command,
                _ => {
                    return GatewayError::BadAdminRequest(format!(
                        "unknown parameter {name:?}; use app and/or command"
                    ))
                    .into_response()
                }
            };
            if slot.replace(value).is_some() {
                return GatewayError::BadAdminRequest(format!(
                    "the parameter {name:?} is repeated; give it once"
                ))
                .into_response();
            }
        }
        match self.proxy.purge(app.as_deref(), command.as_deref()) {
            Ok(()) => {
                tracing::info!(app = ?app, command = ?command, "cache purged");
                json(StatusCode::OK, envelope("OK", "purged", 0))
            }
            Err(reason) => GatewayError::BadAdminRequest(reason).into_response(),
        }
    }
}

impl Handler for Admin {
    async fn handle(self: Arc<Self>, request: Request<ClientBody>) -> Response<Full<Bytes>> {
        if let Err(refused) = self.hosts.check(request.headers()) {
            return GatewayError::from(refused).into_response();
        }
        let method = request.method();
        match request.uri().path() {
            "/cache/purge" if method == Method::POST => {
                self.purge(request.headers(), request.uri().query())
            }
            "/cache/purge" => not_allowed("POST"),
            "/metrics" | "/healthz" | "/readyz"
                if method != Method::GET && method != Method::HEAD =>
            {
                not_allowed("GET, HEAD")
            }
            "/metrics" => {
                let mut response =
                    Response::new(Full::new(Bytes::from(self.proxy.render_metrics())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                // Every app's first UserSig is minted when the proxy is built. The check
                // re-mints one past 80% of its lifetime by either clock, so probes keep an
                // idle gateway's UserSigs fresh and a wall-clock step heals at once.
                if self.is_draining.load(Ordering::Acquire) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self
                    .proxy
                    .apps()
                    .iter()
                    .all(|app| app.signer.is_valid_now())
                {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "an app's UserSig has expired\n",
                    )
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz, /readyz or POST /cache/purge\n",
            ),
        }
    }

    fn refuse(&self, refusal: Refusal) -> Response<Full<Bytes>> {
        GatewayError::from(refusal).into_response()
    }
}
