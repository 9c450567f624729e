//! The upstream client on its own against the sandbox: pooling, idle reaping, failover.

mod support;

use tim_gateway::signer::unix_now;

use std::time::Duration;

use bytes::Bytes;
use prometheus::Registry;
use support::*;
use tim_gateway::limiter::{BackOff, Limiter, Permit};
use tim_gateway::region::{Origin, Origins};
use tim_gateway::throttle::BudgetSpec;
use tim_gateway::upstream::{SignedCall, UpstreamClient, UpstreamError, UpstreamSettings};
use tim_gateway::usersig::{mint, SecretKey};

fn settings(
    sandbox: &tim_gateway::sandbox::Sandbox,
    pool_idle_timeout: Duration,
) -> UpstreamSettings {
    UpstreamSettings {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        pool_idle_timeout,
        pool_max_idle_per_host: 8,
        extra_ca_pem: Some(sandbox.ca_pem().as_bytes().to_vec()),
        proxy: None,
    }
}

/// A permit from a budget of its own, large enough never to wait: a signed call needs one.
async fn permit() -> Permit {
    let spec = BudgetSpec {
        quota: 1000,
        safety_margin: 0.05,
        burst: 0.1,
        max_wait: Duration::from_secs(1),
        max_waiters: 10,
    };
    let back_off = BackOff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(1),
    };
    let limiter =
        Limiter::local(&Registry::new(), &["test".into()], &[], &[], spec, back_off).unwrap();
    limiter
        .acquire(limiter.key(0, None), tokio::time::Instant::now())
        .await
        .unwrap()
}

async fn get_all_robots(client: &UpstreamClient, origins: &Origins) -> Result<i64, UpstreamError> {
    let usersig = mint(&SecretKey::new(KEY), SDKAPPID, ADMIN, unix_now(), 3600);
    let call = SignedCall::new(
        permit().await,
        std::sync::Arc::new(origins.clone()),
        GET_ALL_ROBOTS,
        (SDKAPPID, ADMIN.into()),
        usersig,
        1,
        Bytes::from_static(b"{}"),
    );
    client.call(&call).await.map(|r| r.error_code)
}

/// Sequential calls reuse one keep-alive TLS connection.
#[tokio::test]
async fn sequential_calls_reuse_one_connection() {
    let sandbox = start_sandbox().await;
    let client = UpstreamClient::new(&settings(&sandbox, Duration::from_secs(90))).unwrap();
    let origins = Origins {
        primary: Origin::parse(&sandbox.endpoint()).unwrap(),
        backup: None,
    };
    for _ in 0..5 {
        assert_eq!(get_all_robots(&client, &origins).await, Ok(0));
    }
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 5);
    assert_eq!(sandbox.connections_accepted(), 1);
}

/// An idle pooled connection is closed by the client once `pool_idle_timeout` has passed,
/// never sooner, even when no further request comes (the pool has a timer). Real time: the
/// pool's timer and real sockets cannot run under paused time. The lower bound is exact: the
/// connection cannot have gone idle before the call began. The test polls for the close
/// and asserts no upper bound.
#[tokio::test]
async fn idle_connections_are_closed_after_the_pool_idle_timeout() {
    let sandbox = start_sandbox().await;
    let idle_timeout = Duration::from_millis(200);
    let client = UpstreamClient::new(&settings(&sandbox, idle_timeout)).unwrap();
    let origins = Origins {
        primary: Origin::parse(&sandbox.endpoint()).unwrap(),
        backup: None,
    };
    let called_at = tokio::time::Instant::now();
    assert_eq!(get_all_robots(&client, &origins).await, Ok(0));
    assert_eq!(sandbox.connections_open(), 1);
    eventually("the idle connection to close", || {
        sandbox.connections_open() == 0
    })
    .await;
    let closed_after = called_at.elapsed();
    assert!(
        closed_after >= idle_timeout,
        "closed before the idle timeout: {closed_after:?}"
    );
    // The client is still usable and opens a fresh connection.
    assert_eq!(get_all_robots(&client, &origins).await, Ok(0));
    assert_eq!(sandbox.connections_accepted(), 2);
}

/// When the main origin refuses connections, the backup origin answers the same call.
#[tokio::test]
async fn unreachable_primary_fails_over_to_the_backup() {
    let sandbox = start_sandbox().await;
    let client = UpstreamClient::new(&settings(&sandbox, Duration::from_secs(90))).unwrap();
    // Port 1 on loopback: nothing listens there, so the connect is refused at once.
    let closed = Origin::parse("https://127.0.0.1:1").unwrap();
    let origins = Origins {
        primary: closed.clone(),
        backup: Some(Origin::parse(&sandbox.endpoint()).unwrap()),
    };
    assert_eq!(get_all_robots(&client, &origins).await, Ok(0));
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 1);

    let no_backup = Origins {
        primary: closed,
        backup: None,
    };
    assert!(matches!(
        get_all_robots(&client, &no_backup).await,
        Err(UpstreamError::Connect(_))
    ));
}

/// A server whose certificate the client does not trust is refused (no silent insecure TLS).
#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let sandbox = start_sandbox().await;
    let other = start_sandbox().await;
    // Trusts `other`'s CA only.
    let client = UpstreamClient::new(&settings(&other, Duration::from_secs(90))).unwrap();
    let origins = Origins {
        primary: Origin::parse(&sandbox.endpoint()).unwrap(),
        backup: None,
    };
    assert!(matches!(
        get_all_robots(&client, &origins).await,
        Err(UpstreamError::Connect(_))
    ));
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 0);
}

/// A CONNECT proxy on loopback: records each request head, opens the tunnel, relays bytes.
async fn connect_proxy() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = std::sync::Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(head);
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, heads)
}

/// Through an egress proxy (`upstream.proxy` / `HTTPS_PROXY`): the call goes through one
/// CONNECT tunnel to Tencent's host and port, with the proxy's credentials, and TLS inside it
/// end to end (the sandbox answers); with the host in `no_proxy` it goes direct.
#[tokio::test]
async fn calls_go_through_an_egress_proxy_unless_excepted() {
    let sandbox = start_sandbox().await;
    let (proxy, heads) = connect_proxy().await;
    let origins = Origins {
        primary: Origin::parse(&sandbox.endpoint()).unwrap(),
        backup: None,
    };
    let target = sandbox.endpoint().trim_start_matches("https://").to_owned();
    let through = |no_proxy: &str| UpstreamSettings {
        proxy: Some(tim_gateway::config::EgressProxy {
            url: format!("http://gw:s3cret@{proxy}"),
            source: "upstream.proxy".into(),
            no_proxy: no_proxy.into(),
        }),
        ..settings(&sandbox, Duration::from_secs(90))
    };
    let client = UpstreamClient::new(&through("")).unwrap();
    for _ in 0..2 {
        assert_eq!(get_all_robots(&client, &origins).await, Ok(0));
    }
    let seen = heads.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one tunnel, kept alive: {seen:?}");
    assert!(
        seen[0].starts_with(&format!("CONNECT {target} HTTP/1.1\r\n")),
        "{}",
        seen[0]
    );
    // base64("gw:s3cret")
    assert!(
        seen[0].contains("Proxy-Authorization: Basic Z3c6czNjcmV0\r\n"),
        "{}",
        seen[0]
    );
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 2);

    let direct = UpstreamClient::new(&through("127.0.0.1")).unwrap();
    assert_eq!(get_all_robots(&direct, &origins).await, Ok(0));
    assert_eq!(heads.lock().unwrap().len(), 1, "no_proxy: called directly");
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 3);
}
