//! The admin listener: `/healthz` (process alive) and `/readyz` (UserSigs minted, not draining).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::proxy::Proxy;
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

impl Handler for Admin {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                // Every app's first UserSig is minted when the proxy is built, so a proxy
                // that exists is ready until draining begins.
                if self.is_draining.load(Ordering::Acquire) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self.proxy.apps().iter().all(|app| app.signer.mints() > 0) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no UserSig yet\n")
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz or /readyz\n",
            ),
        }
    }
}
