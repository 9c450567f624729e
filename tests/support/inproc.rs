//! The in-process test seam: the gateway's handler ([`Proxy::handle`]) called directly, in
//! front of the sandbox called directly through [`UpstreamClient::in_process`]: no sockets,
//! no TLS, no threads. Under `#[tokio::test(start_paused = true)]` time only moves when every
//! task waits, so timing properties (freshness, stale windows, coalescing, throttle spacing,
//! back-off, drain) are asserted exactly, with no margins.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use tim_gateway::config::{Config, Env};
use tim_gateway::proxy::Proxy;
use tim_gateway::sandbox::{Sandbox, SandboxApp, SandboxOptions};
use tim_gateway::upstream::UpstreamClient;
use tim_gateway::usersig::SecretKey;

use tokio::time::Instant;

use super::{Answer, Extra, ADMIN, KEY, SDKAPPID};

/// One millisecond: tokio's timer resolution, and the step [`settle`] takes.
pub const MS: Duration = Duration::from_millis(1);

/// Lets every task that can run, run; time moves by exactly 1 ms only if none can.
pub async fn settle() {
    tokio::time::sleep(MS).await;
}

/// Moves paused time forward to `at` (not at all if it has passed).
pub async fn advance_to(at: Instant) {
    tokio::time::advance(at.saturating_duration_since(Instant::now())).await;
}

/// A request to the handler with the `Host` header a loopback listener accepts.
pub fn request(method: Method, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "127.0.0.1")
}

/// A handler and its in-process upstream.
pub struct InProc {
    pub proxy: Arc<Proxy>,
    pub sandbox: Sandbox,
    pub config: Config,
}

/// The sandbox app every in-process test uses (reference §3's key).
pub fn sandbox_options() -> SandboxOptions {
    SandboxOptions {
        apps: vec![SandboxApp {
            sdkappid: SDKAPPID,
            key: SecretKey::new(KEY),
            admins: vec![ADMIN.to_owned()],
        }],
        ..SandboxOptions::default()
    }
}

/// A handler in front of an in-process sandbox, with extra configuration.
pub fn start(extra: Extra<'_>) -> InProc {
    start_with(sandbox_options(), extra)
}

/// As [`start`], with the sandbox's own options.
pub fn start_with(options: SandboxOptions, extra: Extra<'_>) -> InProc {
    let sandbox = Sandbox::in_process(options).expect("sandbox options are valid");
    let toml = super::toml_with_ca("https://sandbox.invalid", "", &extra);
    let env = Env::from_map(HashMap::from([(
        "TIM_GATEWAY_SECRET_KEY".to_owned(),
        extra.key.to_owned(),
    )]));
    let config = Config::from_toml_str(&toml, &env)
        .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{toml}"))
        .config;
    let upstream = UpstreamClient::in_process(sandbox.upstream(), config.upstream.request_timeout);
    InProc {
        proxy: Arc::new(Proxy::new(&config, upstream)),
        sandbox,
        config,
    }
}

impl InProc {
    /// Hands one request to the handler and parses its JSON answer.
    pub async fn call(&self, method: Method, path: &str, body: impl AsRef<[u8]>) -> Answer {
        call(&self.proxy, method, path, body).await
    }

    /// POSTs `body` to `/v4/{command}` on the default app.
    pub async fn post(&self, command: &str, body: &str) -> Answer {
        self.call(Method::POST, &format!("/v4/{command}"), body)
            .await
    }

    /// As [`post`](Self::post), as a task of its own (for concurrent clients).
    pub fn spawn_post(&self, command: &str, body: &str) -> tokio::task::JoinHandle<Answer> {
        let proxy = Arc::clone(&self.proxy);
        let path = format!("/v4/{command}");
        let body = body.to_owned();
        tokio::spawn(async move { call(&proxy, Method::POST, &path, body).await })
    }

    /// Hands a request built by the test (headers, a body of any kind) to the handler.
    pub async fn send<B>(&self, request: Request<B>) -> Answer
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        send(&self.proxy, request).await
    }

    /// The Prometheus text `/metrics` would serve now.
    pub fn metrics(&self) -> String {
        String::from_utf8(self.proxy.render_metrics()).expect("the exposition is UTF-8")
    }
}

/// Hands one request to `proxy` and parses its JSON answer.
pub async fn call(proxy: &Proxy, method: Method, path: &str, body: impl AsRef<[u8]>) -> Answer {
    let request = request(method, path)
        .body(Full::new(Bytes::copy_from_slice(body.as_ref())))
        .expect("a valid request");
    send(proxy, request).await
}

/// Hands `request` to `proxy` and parses its JSON answer.
pub async fn send<B>(proxy: &Proxy, request: Request<B>) -> Answer
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = proxy.handle(request).await.into_parts();
    let bytes = body.collect().await.expect("a Full body").to_bytes();
    Answer::parse(parts, &bytes)
}
