//! Shared fixtures: a sandbox upstream over TLS and a gateway in front of it, both on
//! 127.0.0.1:0, plus a small HTTP client. Everything stops when its handle is dropped.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod fleet;
pub mod inproc;
pub mod partition;
pub mod process;
pub mod redis;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tim_gateway::config::{Config, Env};
use tim_gateway::gateway::Gateway;
use tim_gateway::sandbox::{Sandbox, SandboxApp, SandboxOptions};
use tim_gateway::usersig::SecretKey;

/// The key of reference §3's known answers; the sandbox's app uses it.
pub const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
pub const SDKAPPID: u64 = 1_400_000_000;
pub const ADMIN: &str = "administrator";
pub const GET_ALL_ROBOTS: &str = "openim_robot_http_svc/get_all_robots";
pub const CREATE_ROBOT: &str = "openim_robot_http_svc/create_robot";
pub const DELETE_ROBOT: &str = "openim_robot_http_svc/delete_robot";
/// A read the gateway does not cache: every call reaches the upstream.
pub const ACCOUNT_CHECK: &str = "im_open_login_svc/account_check";
pub const CHECK_BODY: &str = r#"{"CheckItem":[{"UserID":"alice"}]}"#;

pub async fn start_sandbox() -> Sandbox {
    start_sandbox_with(SandboxOptions {
        apps: vec![SandboxApp {
            sdkappid: SDKAPPID,
            key: SecretKey::new(KEY),
            admins: vec![ADMIN.to_owned()],
        }],
        ..SandboxOptions::default()
    })
    .await
}

pub async fn start_sandbox_with(options: SandboxOptions) -> Sandbox {
    Sandbox::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .expect("sandbox starts on loopback")
}

/// A gateway and the temporary CA file it trusts.
pub struct TestGateway {
    pub gateway: Gateway,
    _ca_file: tempfile::NamedTempFile,
}

impl TestGateway {
    pub fn addr(&self) -> SocketAddr {
        self.gateway
            .client_addr()
            .tcp()
            .expect("a TCP client listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.gateway.admin_addr()
    }
}

/// Extra configuration for a test gateway: lines for each table, and tables at the end.
#[derive(Debug, Clone, Copy)]
pub struct Extra<'a> {
    pub server: &'a str,
    pub upstream: &'a str,
    pub app: &'a str,
    /// More tables, e.g. `[[cache.rules]]`, appended at the end.
    pub tail: &'a str,
    /// The secret key the gateway signs with.
    pub key: &'a str,
}

impl Default for Extra<'_> {
    fn default() -> Self {
        Extra {
            server: "",
            upstream: "",
            app: "",
            tail: "",
            key: KEY,
        }
    }
}

/// The TOML of a one-app gateway in front of `endpoint`, trusting the CA at `ca_path`.
pub fn gateway_toml(endpoint: &str, ca_path: &str, extra: &Extra<'_>) -> String {
    toml_with_ca(endpoint, &format!("ca_file = \"{ca_path}\""), extra)
}

/// As [`gateway_toml`], with the `[upstream]` CA line given whole (empty: no extra CA).
pub fn toml_with_ca(endpoint: &str, ca_line: &str, extra: &Extra<'_>) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{server}

[upstream]
{ca_line}
{upstream}

[apps.main]
sdkappid = {SDKAPPID}
identifier = "{ADMIN}"
endpoint = "{endpoint}"
{app}

{tail}
"#,
        server = extra.server,
        upstream = extra.upstream,
        app = extra.app,
        tail = extra.tail,
    )
}

pub fn write_ca(sandbox: &Sandbox) -> tempfile::NamedTempFile {
    let mut ca = tempfile::NamedTempFile::new().expect("temp file");
    ca.write_all(sandbox.ca_pem().as_bytes()).expect("write CA");
    ca
}

pub async fn start_gateway(sandbox: &Sandbox) -> TestGateway {
    start_gateway_with(sandbox, Extra::default()).await
}

/// Starts a gateway for `sandbox` with extra configuration.
pub async fn start_gateway_with(sandbox: &Sandbox, extra: Extra<'_>) -> TestGateway {
    start_gateway_with_grace(sandbox, extra, std::time::Duration::from_secs(5)).await
}

/// As [`start_gateway_with`], with the shutdown grace period `grace`.
pub async fn start_gateway_with_grace(
    sandbox: &Sandbox,
    extra: Extra<'_>,
    grace: std::time::Duration,
) -> TestGateway {
    let ca = write_ca(sandbox);
    let toml = gateway_toml(
        &sandbox.endpoint(),
        &ca.path().display().to_string(),
        &extra,
    );
    let env = Env::from_map(HashMap::from([(
        "TIM_GATEWAY_SECRET_KEY".to_owned(),
        extra.key.to_owned(),
    )]));
    let loaded = Config::from_toml_str(&toml, &env)
        .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{toml}"));
    let gateway = Gateway::start(&loaded.config, grace)
        .await
        .expect("gateway starts on loopback");
    TestGateway {
        gateway,
        _ca_file: ca,
    }
}

/// A gateway's answer: status, headers and the JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: serde_json::Value,
}

impl Answer {
    /// An answer's head and its body, which must be JSON.
    pub fn parse(parts: http::response::Parts, bytes: &[u8]) -> Answer {
        let json = serde_json::from_slice(bytes).unwrap_or_else(|e| {
            panic!(
                "answer is not JSON ({e}): {}",
                String::from_utf8_lossy(bytes)
            )
        });
        Answer {
            status: parts.status,
            headers: parts.headers,
            json,
        }
    }

    pub fn error_code(&self) -> i64 {
        self.json["ErrorCode"]
            .as_i64()
            .unwrap_or_else(|| panic!("no ErrorCode in {}", self.json))
    }

    /// The `X-Cache` header: HIT, MISS, STALE or BYPASS.
    pub fn x_cache(&self) -> &str {
        self.headers["x-cache"].to_str().expect("an ASCII X-Cache")
    }

    /// The `Age` header, in whole seconds.
    pub fn age(&self) -> u64 {
        self.headers["age"]
            .to_str()
            .ok()
            .and_then(|age| age.parse().ok())
            .expect("an Age in whole seconds")
    }

    /// The `Retry-After` header, in whole seconds.
    pub fn retry_after(&self) -> u64 {
        self.headers["retry-after"]
            .to_str()
            .ok()
            .and_then(|secs| secs.parse().ok())
            .expect("a Retry-After in whole seconds")
    }
}

pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request to the gateway and parses its JSON answer.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    body: impl AsRef<[u8]>,
) -> Answer {
    call_with(&client(), addr, method, path_and_query, body).await
}

pub async fn call_with(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    body: impl AsRef<[u8]>,
) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path_and_query}"))
        .body(Full::new(Bytes::copy_from_slice(body.as_ref())))
        .unwrap();
    let response = client.request(request).await.expect("gateway answers");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    Answer::parse(parts, &bytes)
}

/// POSTs `body` to `/v4/{command}` on the default app.
pub async fn post(addr: SocketAddr, command: &str, body: &str) -> Answer {
    call(addr, Method::POST, &format!("/v4/{command}"), body).await
}

/// The text of `GET /metrics` on an admin listener.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let response = client()
        .get(format!("http://{admin}/metrics").parse().unwrap())
        .await
        .expect("metrics answer");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Polls `condition` every 10 ms until it holds; fails the test after 10 s (a condition that
/// never comes true is a failure, not a hang).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
