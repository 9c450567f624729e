//! Metrics after traffic, the dashboard's and alert rules' metric names against the
//! exposition, and request ids, with the handler in process in front of the in-process
//! sandbox under tokio's paused time (`tests/support/inproc.rs`). The admin listener that
//! serves the same text: `tests/e2e.rs`.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use support::inproc::{self, request, InProc};
use support::*;
use tim_gateway::signer::unix_now;

/// Sample lines as `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// Family names declared by `# TYPE` lines.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series}"))
}

const ROBOTS: &str = "openim_robot_http_svc/get_all_robots";

/// Traffic that exercises every family: misses, hits, coalescing, a write that invalidates,
/// a Tencent error, a rejected request, a throttle refusal, a purge (eviction).
async fn mixed_traffic(gw: &InProc) {
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.error_code(), 0); // miss
    for _ in 0..3 {
        gw.post(GET_ALL_ROBOTS, "{}").await; // hits
    }
    let created = gw.post(CREATE_ROBOT, r#"{"UserID":"@RBT#m"}"#).await;
    assert_eq!(created.error_code(), 0);
    let refused = gw.post(CREATE_ROBOT, r#"{"UserID":"bad"}"#).await;
    assert_eq!(refused.error_code(), 10004);
    assert_eq!(gw.call(Method::POST, "/nowhere", "{}").await.status, 404);
    // Two concurrent cold requests for another key: the first leads, the second joins its
    // flight, which the upstream's latency keeps open.
    gw.sandbox.set_latency(Duration::from_secs(1));
    let (a, b) = tokio::join!(
        gw.post(GET_ALL_ROBOTS, "{}"),
        gw.post(GET_ALL_ROBOTS, " {} ")
    );
    assert_eq!((a.error_code(), b.error_code()), (0, 0));
    gw.sandbox.set_latency(Duration::ZERO);
    gw.proxy.purge(None, None).unwrap();
    gw.proxy.shared().cache.run_pending_tasks().await;
}

/// After traffic, the exposition shows exactly what happened.
#[tokio::test(start_paused = true)]
async fn metrics_count_real_traffic() {
    let before = unix_now();
    let gw = inproc::start(Extra::default());
    let after = unix_now();
    mixed_traffic(&gw).await;
    let text = gw.metrics();
    let s = samples(&text);
    // The SDKAppID behind the app's name, to sum quotas by.
    assert_eq!(
        value(
            &s,
            &format!("tim_gateway_app_info{{app=\"main\",sdkappid=\"{SDKAPPID}\"}}")
        ),
        1.0
    );
    let robots = |rest: &str| format!("{{app=\"main\",{rest}command=\"{ROBOTS}\"");
    assert_eq!(
        value(
            &s,
            &format!(
                "tim_gateway_requests_total{},status_class=\"2xx\"}}",
                robots("cache=\"HIT\",")
            )
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            &format!(
                "tim_gateway_requests_total{},status_class=\"2xx\"}}",
                robots("cache=\"MISS\",")
            )
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            r#"tim_gateway_requests_total{app="unknown",cache="BYPASS",command="unknown",status_class="4xx"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!(
                "tim_gateway_cache_lookups_total{},result=\"hit\"}}",
                robots("")
            )
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            &format!(
                "tim_gateway_cache_lookups_total{},result=\"miss\"}}",
                robots("")
            )
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            &format!("tim_gateway_cache_coalesced_total{}}}", robots(""))
        ),
        1.0
    );
    // One invalidation by create_robot, one by the purge.
    assert_eq!(
        value(
            &s,
            &format!("tim_gateway_cache_invalidations_total{}}}", robots(""))
        ),
        2.0
    );
    assert!(value(&s, r#"tim_gateway_cache_evictions_total{cause="explicit"}"#) >= 1.0);
    assert_eq!(value(&s, "tim_gateway_cache_entries"), 0.0);
    assert_eq!(
        value(
            &s,
            &format!(
                "tim_gateway_upstream_requests_total{},outcome=\"ok\"}}",
                robots("")
            )
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            r#"tim_gateway_tencent_errors_total{app="main",code="10004",command="openim_robot_http_svc/create_robot"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!("tim_gateway_throttle_permits_total{}}}", robots(""))
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            &format!("tim_gateway_throttle_budget_per_second{}}}", robots(""))
        ),
        190.0
    );
    assert_eq!(
        value(
            &s,
            &format!("tim_gateway_upstream_quota_per_second{}}}", robots(""))
        ),
        200.0
    );
    assert_eq!(
        value(
            &s,
            r#"tim_gateway_usersig_mints_total{app="main",reason="startup"}"#
        ),
        1.0
    );
    // Minted at start, so it expires 24 h after a second between `before` and `after`.
    let expiry = value(
        &s,
        r#"tim_gateway_usersig_expiry_timestamp_seconds{app="main"}"#,
    );
    assert!(
        ((before + 86_400) as f64..=(after + 86_400) as f64).contains(&expiry),
        "expires in 24 h: {expiry}, minted between {before} and {after}"
    );
    assert_eq!(value(&s, "tim_gateway_requests_in_flight"), 0.0);
    assert!(value(&s, "process_resident_memory_bytes") > 0.0);
    assert!(text.contains("tim_gateway_build_info{version=\""));
    // No label value comes from client input: the unroutable path is not a label.
    assert!(!text.contains("nowhere"));
}

/// The metric names in every dashboard query and alert rule, from `deploy/`.
fn referenced_names(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("tim_gateway_") {
        let start = i + found;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
        names.insert(text[start..end].to_owned());
        i = end;
    }
    names
}

/// Strips a histogram's series suffix to get its family name.
fn family_of(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Every metric the Grafana dashboard and the alert rules query exists in the exposition
/// after traffic: no panel or alert points at nothing.
#[tokio::test(start_paused = true)]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    // max_wait 0 so that a burst is refused: the rejection family then has a sample.
    let gw = inproc::start(Extra {
        tail: "[throttle]\nmax_wait = \"0s\"\n[[throttle.quotas]]\ncommand = \"im_open_login_svc/account_check\"\nper_second = 2\n\
               [[cache.rules]]\ncommand = \"openim_robot_http_svc/get_all_robots\"\nttl = \"1s\"\nstale_while_revalidate = \"60s\"\n\
               invalidated_by = [\"openim_robot_http_svc/create_robot\"]\n",
        ..Extra::default()
    });
    mixed_traffic(&gw).await;
    // A budget of one call a second: the second of two at once is refused.
    let (a, b) = tokio::join!(
        gw.post(ACCOUNT_CHECK, CHECK_BODY),
        gw.post(ACCOUNT_CHECK, CHECK_BODY)
    );
    assert_eq!(
        (a.status, b.status),
        (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS)
    );
    // A fresh entry (the purge above emptied the cache), then at exactly its 1 s ttl: a
    // stale answer and one background refresh.
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "MISS");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(gw.post(GET_ALL_ROBOTS, "{}").await.x_cache(), "STALE");
    inproc::settle().await;
    let exported = families(&gw.metrics());

    for path in [
        "deploy/grafana/tim-gateway.json",
        "deploy/prometheus/tim-gateway-rules.yaml",
    ] {
        let names = referenced_names(path);
        assert!(names.len() >= 5, "{path} references only {names:?}");
        // Fleet mode's families exist only with `[fleet]`; tests/fleet.rs reads them from
        // gateways in fleet mode.
        const FLEET_ONLY: [&str; 13] = [
            "tim_gateway_fleet_members",
            "tim_gateway_fleet_expected_replicas",
            "tim_gateway_redis_command_duration_seconds",
            "tim_gateway_redis_errors_total",
            "tim_gateway_throttle_batch_size",
            "tim_gateway_throttle_debt_charged_total",
            "tim_gateway_cache_shared_lookups_total",
            "tim_gateway_cache_shared_waits_total",
            "tim_gateway_cache_shared_stores_total",
            "tim_gateway_cache_invalidations_published_total",
            "tim_gateway_cache_invalidations_received_total",
            "tim_gateway_cache_invalidations_pending",
            "tim_gateway_cache_shared_subscribed",
        ];
        let missing: Vec<&String> = names
            .iter()
            .filter(|name| {
                !exported.contains(family_of(name)) && !FLEET_ONLY.contains(&family_of(name))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "{path} queries metrics that are not exported: {missing:?}"
        );
    }
}

/// A client's X-Request-Id is echoed back; without one (or with an unusable one) the gateway
/// makes one up, different per request.
#[tokio::test(start_paused = true)]
async fn request_ids_are_echoed_or_generated() {
    let gw = inproc::start(Extra::default());
    let with_id = |id: &'static str| {
        request(Method::POST, &format!("/v4/{GET_ALL_ROBOTS}"))
            .header("x-request-id", id)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let echoed = gw.send(with_id("trace-42/abc")).await;
    assert_eq!(echoed.headers["x-request-id"], "trace-42/abc");
    let replaced = gw.send(with_id("has space")).await;
    let generated = replaced.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 16);
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
    let other = gw.post(GET_ALL_ROBOTS, "{}").await;
    assert_ne!(other.headers["x-request-id"].to_str().unwrap(), generated);
    let rejected = gw.call(Method::POST, "/nowhere", "").await;
    assert_eq!(rejected.headers["x-request-id"].len(), 16);
}
