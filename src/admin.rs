//! The admin listener: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz`
//! (UserSigs minted, not draining) and `POST /cache/purge[?app=NAME][&command=SERVICE/COMMAND]`.
//! It stays up while the client listener drains, so probes see the not-ready state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::error::{envelope, GatewayError};
use crate::proxy::Proxy;
use crate::route::parse_query;
use crate::server::Handler;

/// Admin endpoints of one gateway.
#[derive(Debug)]
pub struct Admin {
    pub proxy: Arc<Proxy>,
    /// Set when shutdown starts: `/readyz` answers 503 from then on.
    pub is_draining: Arc<AtomicBool>,
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
    fn purge(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let mut app = None;
        let mut command = None;
        for (name, value) in parse_query(query.unwrap_or("")) {
            match name.as_str() {
                "app" => app = Some(value),
                "command" => command = Some(value),
                _ => {
                    return GatewayError::BadAdminRequest(format!(
                        "unknown parameter {name:?}; use app and/or command"
                    ))
                    .into_response()
                }
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
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method();
        match request.uri().path() {
            "/cache/purge" if method == Method::POST => self.purge(request.uri().query()),
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
                // Every app's first UserSig is minted when the proxy is built. `current()`
                // re-mints one past 80% of its lifetime, so probes keep an idle gateway's
                // UserSigs fresh; the check still guards against a clock jump.
                let now = crate::signer::unix_now();
                if self.is_draining.load(Ordering::Acquire) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self
                    .proxy
                    .apps()
                    .iter()
                    .all(|app| app.signer.current().expires_at_unix > now)
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
}
