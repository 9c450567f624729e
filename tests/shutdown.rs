//! Draining in-process: what clients get when the grace period runs out, and how requests
//! whose clients hang up are still accounted for.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;
use tim_gateway::config::{Config, Env};
use tim_gateway::gateway::Gateway;

/// A call still waiting on Tencent when the grace period ends gets a clean 503 envelope just
/// before it, instead of a connection cut without an answer. Margins: grace 2 s (the 503 comes
/// at 1.8 s), upstream latency 30 s.
#[tokio::test]
async fn calls_outlasting_the_grace_get_a_clean_503() {
    let sandbox = start_sandbox().await;
    let ca = write_ca(&sandbox);
    let toml = gateway_toml(
        &sandbox.endpoint(),
        &ca.path().display().to_string(),
        &Extra::default(),
    );
    let env = Env::from_map(std::collections::HashMap::from([(
        "TIM_GATEWAY_SECRET_KEY".to_owned(),
        KEY.to_owned(),
    )]));
    let config = Config::from_toml_str(&toml, &env).unwrap().config;
    let gateway = Gateway::start(&config, Duration::from_secs(2))
        .await
        .unwrap();
    let addr = gateway.client_addr();
    sandbox.set_latency(Duration::from_secs(30));
    let slow =
        tokio::spawn(async move { post(addr, CREATE_ROBOT, r#"{"UserID":"@RBT#late"}"#).await });
    eventually("the call upstream", || sandbox.calls(CREATE_ROBOT) == 1).await;

    let started = tokio::time::Instant::now();
    let drained = tokio::spawn(gateway.shutdown());
    let answer = slow.await.unwrap();
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, 1_905_005)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered before the grace ran out"
    );
    assert!(
        drained.await.unwrap(),
        "every connection finished within the grace period"
    );
}

/// A client that hangs up before its answer is still counted (status class 4xx: 499) and the
/// call it started is not cut short for the others.
#[tokio::test]
async fn hang_ups_are_counted() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    sandbox.set_latency(Duration::from_secs(2));
    let addr = gw.addr();
    let hung_up = tokio::spawn(async move { post(addr, ACCOUNT_CHECK, CHECK_BODY).await });
    eventually("the call upstream", || sandbox.calls(ACCOUNT_CHECK) == 1).await;
    hung_up.abort();
    let metrics = gw.gateway.proxy().render_metrics();
    let text = String::from_utf8(metrics).unwrap();
    let line = format!(
        "tim_gateway_requests_total{{app=\"main\",cache=\"BYPASS\",command=\"{ACCOUNT_CHECK}\",status_class=\"4xx\"}} 1"
    );
    let mut seen = text.contains(&line);
    for _ in 0..100 {
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = String::from_utf8(gw.gateway.proxy().render_metrics())
            .unwrap()
            .contains(&line);
    }
    assert!(seen, "no 4xx (499) sample for the hung-up request");
    assert!(String::from_utf8(gw.gateway.proxy().render_metrics())
        .unwrap()
        .contains("tim_gateway_requests_in_flight 0"));
}
