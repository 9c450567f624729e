//! Tencent's whole catalogue through the gateway (issue 10), with the handler in process in
//! front of the in-process sandbox under paused time: every command reaches the upstream,
//! has its own budget at its documented quota, and is retried after Tencent's "try again"
//! (10002) exactly when it is a read.

mod support;

use http::StatusCode;
use support::inproc;
use support::*;
use tim_gateway::catalogue::{Access, Catalogue};

/// Every catalogue command: not a 404, one budget of its own in `/metrics` (the documented
/// quota less the 5% safety margin, `throttle.default_quota` where the page gives none), and
/// after one injected 10002 a read is called again while a write's 10002 reaches the client.
#[tokio::test(start_paused = true)]
async fn every_command_reaches_the_upstream_with_its_own_budget() {
    let gw = inproc::start(Extra::default());
    let catalogue = Catalogue::builtin();
    for (_, spec) in catalogue.iter() {
        gw.sandbox.inject_error(spec.name, 10002, 1);
        let answer = gw.post(spec.name, "{}").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{}: {}",
            spec.name,
            answer.json
        );
        match spec.access {
            Access::Read => {
                assert_eq!(gw.sandbox.calls(spec.name), 2, "{} retried", spec.name);
                assert_ne!(answer.error_code(), 10002, "{}", spec.name);
            }
            Access::Write => {
                assert_eq!(gw.sandbox.calls(spec.name), 1, "{} not retried", spec.name);
                assert_eq!(answer.error_code(), 10002, "{}", spec.name);
            }
        }
    }
    let metrics = gw.metrics();
    for (_, spec) in catalogue.iter() {
        let quota = spec.quota_per_second.unwrap_or(200);
        let budget = ((f64::from(quota) * 0.95).floor() as u32).max(1);
        let line = format!(
            "tim_gateway_throttle_budget_per_second{{app=\"main\",command=\"{}\"}} {budget}\n",
            spec.name
        );
        assert!(metrics.contains(&line), "no {line} in /metrics");
    }
}

/// A command outside the catalogue is refused with 404 and a message that names the switch.
#[tokio::test(start_paused = true)]
async fn an_unknown_command_is_refused_with_the_way_to_allow_it() {
    let gw = inproc::start(Extra::default());
    let answer = gw.post("openim/some_future_api", "{}").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), 1_904_003);
    let info = answer.json["ErrorInfo"].as_str().unwrap();
    assert!(
        info.contains("openim/some_future_api")
            && info.contains("server.allow_unknown_commands = true"),
        "{info}"
    );
    assert_eq!(gw.sandbox.calls("openim/some_future_api"), 0);
}
