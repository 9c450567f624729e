//! The client-facing handler: one request in, one answer out, as a row of named phases.
//!
//! `route` → `read_body` → `sign` + `forward` → `classify` → `respond` (PRODUCT.md, "What it
//! does for a request"). Each phase returns early with a [`GatewayError`] that becomes
//! Tencent's envelope; Tencent's own answers are relayed unchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use tokio::time::Instant;

use crate::catalogue::{Access, Catalogue};
use crate::config::Config;
use crate::error::GatewayError;
use crate::region::Origins;
use crate::route::parse_path;
use crate::signer::Signer;
use crate::upstream::{SignedCall, UpstreamClient, UpstreamError, UpstreamResponse};

/// Seconds between two loud log lines about one app's configuration problem, so a wrong key
/// under load does not flood the log.
const CONFIG_ALARM_INTERVAL_SECS: u64 = 10;

/// One configured app at run time.
#[derive(Debug)]
pub struct App {
    pub name: String,
    pub origins: Origins,
    pub signer: Signer,
    /// Unix second of the last configuration alarm logged for this app.
    last_alarm: AtomicU64,
}

/// What `route` decided.
#[derive(Debug, Clone, Copy)]
struct Route<'a> {
    app: usize,
    /// `service/command` as the client wrote it (validated alphabet).
    command: &'a str,
    access: Access,
}

/// How Tencent's ErrorCode shapes what happens next (reference §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// 70001/70052: re-mint the UserSig and retry once.
    UserSigExpired,
    /// A configuration or operations fault: log it loudly, pass it through, never retry.
    ConfigError(&'static str),
    /// Anything else: the caller's fault or Tencent's; relayed as it is.
    Other,
}

impl Outcome {
    pub fn of(error_code: i64) -> Outcome {
        match error_code {
            0 => Outcome::Success,
            70001 | 70052 => Outcome::UserSigExpired,
            70003 | 70005 | 70009 | 70013 | 70014 => Outcome::ConfigError(
                "Tencent rejected the admin UserSig: the secret key, sdkappid or identifier is wrong; \
                 the gateway will not retry (repeated failures lock the app out with 70050)",
            ),
            70016 | 70020 => Outcome::ConfigError(
                "Tencent does not know this sdkappid or key here: usually the wrong region's domain",
            ),
            10008 | 60010 | 70403 => Outcome::ConfigError(
                "the configured identifier is not an app admin (or the request is invalid for it)",
            ),
            70050 => Outcome::ConfigError(
                "Tencent locked the app out for 60 s after too many failed UserSig checks",
            ),
            60006 | 60016 | 60020 | 60021 => Outcome::ConfigError(
                "the SDKAppID is invalid, disabled, out of plan, or this caller's IP is not allowed",
            ),
            _ => Outcome::Other,
        }
    }
}

/// The gateway's request handler.
#[derive(Debug)]
pub struct Proxy {
    apps: Vec<App>,
    /// App name → index into `apps`.
    app_index: HashMap<String, usize>,
    default_app: usize,
    catalogue: Catalogue,
    upstream: UpstreamClient,
    max_body_bytes: usize,
    allow_unknown_commands: bool,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamClient")
    }
}

/// JSON-object check that allocates nothing: walks the object and discards every value.
struct JsonObject;

impl<'de> serde::Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = JsonObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonObject)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Proxy {
    /// Builds the handler from a validated config and a shared upstream client; mints every
    /// app's first UserSig.
    pub fn new(config: &Config, upstream: UpstreamClient) -> Self {
        let apps: Vec<App> = config
            .apps
            .iter()
            .map(|app| App {
                name: app.name.clone(),
                origins: app.origins.clone(),
                signer: Signer::new(
                    app.sdkappid,
                    app.identifier.clone(),
                    app.secret_key.clone(),
                    app.usersig_lifetime,
                ),
                last_alarm: AtomicU64::new(0),
            })
            .collect();
        let app_index = apps
            .iter()
            .enumerate()
            .map(|(i, app)| (app.name.clone(), i))
            .collect();
        Proxy {
            apps,
            app_index,
            default_app: config.default_app,
            catalogue: Catalogue::builtin(),
            upstream,
            max_body_bytes: config.server.max_body_bytes,
            allow_unknown_commands: config.server.allow_unknown_commands,
        }
    }

    pub fn apps(&self) -> &[App] {
        &self.apps
    }

    /// Answers one client request. Never fails: every error becomes an envelope.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let route = match self.route(&parts.method, parts.uri.path()) {
            Ok(route) => route,
            Err(error) => return self.reject(error, &parts, started),
        };
        let body = match self.read_body(&route, &parts.headers, body).await {
            Ok(body) => body,
            Err(error) => return self.reject(error, &parts, started),
        };
        let answer = self.forward(&route, body).await;
        let app = &self.apps[route.app];
        match answer {
            Ok(upstream) => {
                tracing::info!(
                    app = %app.name,
                    command = route.command,
                    status = upstream.status.as_u16(),
                    error_code = upstream.error_code,
                    latency_us = started.elapsed().as_micros() as u64,
                    "relayed"
                );
                respond(upstream.status, upstream.body)
            }
            Err(error) => {
                tracing::warn!(
                    app = %app.name,
                    command = route.command,
                    status = error.status().as_u16(),
                    error_code = error.code(),
                    latency_us = started.elapsed().as_micros() as u64,
                    error = %error,
                    "upstream failed"
                );
                error.into_response()
            }
        }
    }

    fn reject(
        &self,
        error: GatewayError,
        parts: &http::request::Parts,
        started: Instant,
    ) -> Response<Full<Bytes>> {
        tracing::info!(
            method = %parts.method,
            status = error.status().as_u16(),
            error_code = error.code(),
            latency_us = started.elapsed().as_micros() as u64,
            error = %error,
            "rejected"
        );
        error.into_response()
    }

    /// In this phase the path names an app and a command. An early return means no such route,
    /// app or command (404), or a method the command does not take (405).
    fn route<'a>(&self, method: &Method, path: &'a str) -> Result<Route<'a>, GatewayError> {
        let parsed = parse_path(path).ok_or(GatewayError::NoRoute)?;
        let app = match parsed.app {
            Some(name) => *self.app_index.get(name).ok_or(GatewayError::UnknownApp)?,
            None => self.default_app,
        };
        // Commands outside the catalogue are treated as writes: never cached, never retried.
        let (access, is_cacheable) = match self.catalogue.lookup(parsed.command) {
            Some(id) => {
                let spec = self.catalogue.spec(id);
                (spec.access, spec.is_cacheable)
            }
            None if self.allow_unknown_commands => (Access::Write, false),
            None => return Err(GatewayError::UnknownCommand(parsed.command.to_owned())),
        };
        // A plain GET is accepted for cacheable reads, so `curl URL` works (PRODUCT.md).
        let allows_get = is_cacheable;
        if *method != Method::POST && !(allows_get && *method == Method::GET) {
            return Err(GatewayError::MethodNotAllowed { allows_get });
        }
        Ok(Route {
            app,
            command: parsed.command,
            access,
        })
    }

    /// In this phase the body is read, bounded, and checked to be one JSON object. An early
    /// return means it was too large (413), unreadable, not JSON, or not an object (400).
    async fn read_body<B>(
        &self,
        route: &Route<'_>,
        headers: &http::HeaderMap,
        body: B,
    ) -> Result<Bytes, GatewayError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = self.max_body_bytes;
        // Refuse a declared oversized body before reading a byte of it.
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(GatewayError::BodyTooLarge { limit })
            }
            Err(_) => return Err(GatewayError::ClientBody),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // Tencent never takes an empty body (reference §1); for a read it means `{}`.
            return match route.access {
                Access::Read => Ok(Bytes::from_static(b"{}")),
                Access::Write => Err(GatewayError::EmptyBody),
            };
        }
        match serde_json::from_slice::<JsonObject>(&bytes) {
            Ok(JsonObject) => Ok(bytes),
            Err(error) => match serde_json::from_slice::<IgnoredAny>(&bytes) {
                Ok(_) => Err(GatewayError::NotAnObject),
                Err(_) => Err(GatewayError::InvalidJson(error.to_string())),
            },
        }
    }

    /// In this phase the call is signed with the app's current UserSig and sent. If Tencent
    /// says the UserSig expired or was revoked (70001/70052), it is re-minted and the call
    /// sent once more: such a call was refused before Tencent acted on it, so this holds for
    /// writes too. An early return is an upstream failure (502/504).
    async fn forward(
        &self,
        route: &Route<'_>,
        body: Bytes,
    ) -> Result<UpstreamResponse, GatewayError> {
        let app = &self.apps[route.app];
        let mut minted = app.signer.current();
        let mut is_retry = false;
        loop {
            let call = SignedCall {
                origins: &app.origins,
                command: route.command,
                sdkappid: app.signer.sdkappid(),
                identifier: app.signer.identifier(),
                usersig: &minted.usersig,
                body: body.clone(),
            };
            let response = self
                .upstream
                .call(&call)
                .await
                .map_err(|e: UpstreamError| GatewayError::from(e))?;
            match self.classify(app, route, &response) {
                Outcome::UserSigExpired if !is_retry => {
                    tracing::info!(
                        app = %app.name,
                        error_code = response.error_code,
                        "Tencent refused the UserSig as expired; re-minting and retrying once"
                    );
                    minted = app.signer.remint_after_rejection(minted.generation);
                    is_retry = true;
                }
                _ => return Ok(response),
            }
        }
    }

    /// In this phase Tencent's ErrorCode is read for what it means to the gateway. Config
    /// errors are logged loudly (at most once per app every few seconds) and passed through.
    fn classify(&self, app: &App, route: &Route<'_>, response: &UpstreamResponse) -> Outcome {
        let outcome = Outcome::of(response.error_code);
        if let Outcome::ConfigError(explanation) = outcome {
            let now = unix_now();
            let last = app.last_alarm.load(Ordering::Relaxed);
            if now >= last + CONFIG_ALARM_INTERVAL_SECS
                && app
                    .last_alarm
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::error!(
                    app = %app.name,
                    sdkappid = app.signer.sdkappid(),
                    command = route.command,
                    error_code = response.error_code,
                    "configuration error: {explanation}"
                );
            }
        }
        outcome
    }
}

/// In this phase Tencent's answer goes back unchanged: its status and its JSON body.
fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-cache", HeaderValue::from_static("BYPASS"));
    response
}
