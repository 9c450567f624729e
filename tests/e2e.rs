//! End to end through real sockets, in real time: client → gateway (`Gateway::start` on
//! 127.0.0.1:0) → sandbox over TLS. Only what sockets alone can show: the signed query on the
//! wire, the admin listener, answers on a client's own connection (a trickled body), broken
//! upstream connections and the server's drain of real connections. No assertion here
//! measures how long anything takes; the timing properties are asserted exactly, in process,
//! in the other files.
//! (The real process and its signals: `tests/cli.rs` and `tests/hostile.rs`.)

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::*;
use tim_gateway::signer::unix_now;
use tim_gateway::usersig::{self, SecretKey};

/// The upstream sees exactly the five parameters with the gateway's values, whatever the
/// client put in its own query string, and the UserSig it receives over TLS verifies.
#[tokio::test]
async fn upstream_query_has_exactly_the_five_signed_parameters() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    let answer = call(
        gw.addr(),
        Method::POST,
        "/v4/openim_robot_http_svc/get_all_robots?sdkappid=1&identifier=mallory&usersig=forged&random=7&contenttype=xml&extra=1",
        "{}",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.error_code(), 0);

    let requests = sandbox.requests(GET_ALL_ROBOTS);
    assert_eq!(requests.len(), 1);
    let query = &requests[0].query;
    let names: Vec<&str> = query.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["sdkappid", "identifier", "usersig", "random", "contenttype"]
    );
    let value = |name: &str| &query.iter().find(|(k, _)| k == name).unwrap().1;
    assert_eq!(value("sdkappid"), &SDKAPPID.to_string());
    assert_eq!(value("identifier"), ADMIN);
    assert_eq!(value("contenttype"), "json");
    assert!(value("random").parse::<u32>().is_ok());
    let decoded = usersig::verify(
        &SecretKey::new(KEY),
        value("usersig"),
        SDKAPPID,
        ADMIN,
        unix_now(),
    )
    .expect("the UserSig the upstream received verifies");
    assert_eq!(decoded.expire, 86_400, "default lifetime is 24 h");
    assert_eq!(requests[0].body.as_ref(), b"{}");
}

/// `/metrics` of the admin listener, with its content type checked, as text.
async fn scrape(admin: SocketAddr) -> String {
    let response = client()
        .get(format!("http://{admin}/metrics").parse().unwrap())
        .await
        .expect("the admin listener answers");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Through the client listener a second read is a HIT; the admin listener's purge endpoint
/// drops one app's command or everything (and refuses an unknown app with 400), and its
/// scrape counts what happened.
#[tokio::test]
async fn cache_hits_purges_and_scrapes_through_real_sockets() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    let admin = gw.admin_addr();
    let first = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!((first.x_cache(), first.age()), ("MISS", 0));
    assert_eq!(post(gw.addr(), GET_ALL_ROBOTS, "{}").await.x_cache(), "HIT");

    let purged = call(
        admin,
        Method::POST,
        &format!("/cache/purge?app=main&command={GET_ALL_ROBOTS}"),
        "",
    )
    .await;
    assert_eq!(
        (purged.status, purged.json["ActionStatus"].as_str()),
        (StatusCode::OK, Some("OK"))
    );
    assert_eq!(
        post(gw.addr(), GET_ALL_ROBOTS, "{}").await.x_cache(),
        "MISS"
    );

    let all = call(admin, Method::POST, "/cache/purge", "").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(
        post(gw.addr(), GET_ALL_ROBOTS, "{}").await.x_cache(),
        "MISS"
    );

    let unknown = call(admin, Method::POST, "/cache/purge?app=nope", "").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), 3);

    let text = scrape(admin).await;
    let hits = format!(
        "tim_gateway_requests_total{{app=\"main\",cache=\"HIT\",command=\"{GET_ALL_ROBOTS}\",status_class=\"2xx\"}} 1"
    );
    assert!(text.contains(&hits), "{text}");
}

/// A command Tencent paused (60007) is refused through the client listener with 429, the
/// gateway's code and a `Retry-After` within the back-off, without reaching the upstream.
#[tokio::test]
async fn a_paused_command_is_refused_with_retry_after_through_real_sockets() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            tail: "[throttle]\nmax_wait = \"0s\"\nbackoff_base = \"30s\"\nbackoff_max = \"30s\"\n",
            ..Extra::default()
        },
    )
    .await;
    sandbox.inject_error(CREATE_ROBOT, 60007, 1);
    let limited = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#a"}"#).await;
    assert_eq!(limited.error_code(), 60007);
    let paused = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#a"}"#).await;
    assert_eq!(
        (paused.status, paused.error_code()),
        (StatusCode::TOO_MANY_REQUESTS, 1_904_010)
    );
    assert!((1..=30).contains(&paused.retry_after()));
    assert_eq!(sandbox.calls(CREATE_ROBOT), 1);
}

/// Upstream failures become gateway envelopes: a TLS connection dropped mid-request 502 (and
/// a write that may have arrived is not retried), an upstream that is gone 502.
#[tokio::test]
async fn upstream_failures_become_gateway_errors() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;

    sandbox.drop_connections(1);
    let dropped = post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#d"}"#).await;
    assert_eq!(
        (dropped.status, dropped.error_code()),
        (StatusCode::BAD_GATEWAY, 1_905_003)
    );
    assert_eq!(
        sandbox.calls(CREATE_ROBOT),
        1,
        "a write that may have arrived is not retried"
    );

    sandbox.shutdown().await;
    let gone = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(
        (gone.status, gone.error_code()),
        (StatusCode::BAD_GATEWAY, 1_905_001)
    );
}

/// A call still waiting on Tencent when the server's grace period ends gets a clean 503
/// envelope on its real connection before the connection is closed, and the drain reports
/// that every connection finished within the grace period.
#[tokio::test]
async fn shutdown_answers_calls_outlasting_the_grace_with_a_clean_503() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway_with_grace(&sandbox, Extra::default(), Duration::from_secs(1)).await;
    let addr = gw.addr();
    sandbox.set_latency(Duration::from_secs(30));
    let slow =
        tokio::spawn(async move { post(addr, CREATE_ROBOT, r#"{"UserID":"@RBT#late"}"#).await });
    eventually("the call upstream", || sandbox.calls(CREATE_ROBOT) == 1).await;

    let drained = tokio::spawn(gw.gateway.shutdown());
    let answer = slow.await.unwrap();
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, 1_905_005)
    );
    assert!(
        drained.await.unwrap(),
        "every connection finished within the grace period"
    );
}

/// A client that never finishes sending its body gets 408 in the envelope on its own
/// connection once the request deadline passes (the exact instant: `tests/proxy_path.rs`).
/// The 10 s cap only turns a hang into a failure; it bounds nothing asserted.
#[tokio::test]
async fn trickling_body_is_answered_408_on_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sandbox = start_sandbox().await;
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            upstream: "request_timeout = \"200ms\"\ndeadline = \"200ms\"",
            ..Extra::default()
        },
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    stream
        .write_all(b"POST /v4/openim_robot_http_svc/create_robot HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n{\"UserID\":")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") || !answer.ends_with(b"}") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "connection closed without an answer");
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await
    .expect("an answer, not a hang");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"ErrorCode\":1904012"), "{text}");
    assert_eq!(sandbox.total_calls(), 0);
}
