//! Metrics after real traffic, the dashboard's and alert rules' metric names against a real
//! scrape, and request ids.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::*;

/// `/metrics` of the admin listener, as text.
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
async fn mixed_traffic(gw: &TestGateway, sandbox: &tim_gateway::sandbox::Sandbox) {
    assert_eq!(post(gw.addr(), GET_ALL_ROBOTS, "{}").await.error_code(), 0); // miss
    for _ in 0..3 {
        post(gw.addr(), GET_ALL_ROBOTS, "{}").await; // hits
    }
    assert_eq!(
        post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"@RBT#m"}"#)
            .await
            .error_code(),
        0
    );
    assert_eq!(
        post(gw.addr(), CREATE_ROBOT, r#"{"UserID":"bad"}"#)
            .await
            .error_code(),
        10004
    );
    assert_eq!(
        call(gw.addr(), Method::POST, "/nowhere", "{}").await.status,
        404
    );
    // Two concurrent cold requests for another key: one leads, one is coalesced.
    // 1 s of upstream latency keeps the flight open while the second request (sent at the
    // same moment) arrives: a generous margin for a few milliseconds of work.
    sandbox.set_latency(std::time::Duration::from_secs(1));
    let (a, b) = tokio::join!(
        post(gw.addr(), GET_ALL_ROBOTS, "{}"),
        post(gw.addr(), GET_ALL_ROBOTS, " {} ")
    );
    assert_eq!((a.error_code(), b.error_code()), (0, 0));
    sandbox.set_latency(std::time::Duration::ZERO);
    let purge = call(gw.admin_addr(), Method::POST, "/cache/purge", "").await;
    assert_eq!(purge.status, StatusCode::OK);
    gw.gateway.proxy().shared().cache.run_pending_tasks().await;
}

/// After real traffic, `/metrics` shows exactly what happened.
#[tokio::test]
async fn metrics_count_real_traffic() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    mixed_traffic(&gw, &sandbox).await;
    let text = scrape(gw.admin_addr()).await;
    let s = samples(&text);
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
    let expiry = value(
        &s,
        r#"tim_gateway_usersig_expiry_timestamp_seconds{app="main"}"#,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (expiry - now - 86_400.0).abs() < 60.0,
        "expires in 24 h: {expiry} vs {now}"
    );
    assert_eq!(value(&s, "tim_gateway_requests_in_flight"), 0.0);
    assert!(value(&s, "tim_gateway_process_resident_memory_bytes") > 0.0);
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

/// Every metric the Grafana dashboard and the alert rules query exists in a real scrape after
/// traffic: no panel or alert points at nothing.
#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let sandbox = start_sandbox().await;
    // max_wait 0 so that a burst is refused: the rejection family then has a sample.
    let gw = start_gateway_with(
        &sandbox,
        Extra {
            tail: "[throttle]\nmax_wait = \"0s\"\n[[throttle.quotas]]\ncommand = \"im_open_login_svc/account_check\"\nper_second = 2\n\
                   [[cache.rules]]\ncommand = \"openim_robot_http_svc/get_all_robots\"\nttl = \"1s\"\nstale_while_revalidate = \"60s\"\n\
                   invalidated_by = [\"openim_robot_http_svc/create_robot\"]\n",
            ..Extra::default()
        },
    )
    .await;
    mixed_traffic(&gw, &sandbox).await;
    let (a, b) = tokio::join!(
        post(gw.addr(), ACCOUNT_CHECK, CHECK_BODY),
        post(gw.addr(), ACCOUNT_CHECK, CHECK_BODY)
    );
    assert!(a.status == StatusCode::TOO_MANY_REQUESTS || b.status == StatusCode::TOO_MANY_REQUESTS);
    // A fresh entry (the purge above emptied the cache), then past its 1 s ttl: a stale
    // answer and one background refresh.
    assert_eq!(
        post(gw.addr(), GET_ALL_ROBOTS, "{}").await.headers["x-cache"],
        "MISS"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let stale = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_eq!(stale.headers["x-cache"], "STALE");
    let exported = families(&scrape(gw.admin_addr()).await);

    for path in [
        "deploy/grafana/tim-gateway.json",
        "deploy/prometheus/tim-gateway-rules.yaml",
    ] {
        let names = referenced_names(path);
        assert!(names.len() >= 5, "{path} references only {names:?}");
        let missing: Vec<&String> = names
            .iter()
            .filter(|name| !exported.contains(family_of(name)))
            .collect();
        assert!(
            missing.is_empty(),
            "{path} queries metrics that are not exported: {missing:?}"
        );
    }
}

/// A client's X-Request-Id is echoed back; without one (or with an unusable one) the gateway
/// makes one up, different per request.
#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let sandbox = start_sandbox().await;
    let gw = start_gateway(&sandbox).await;
    let with_id = |id: &'static str| {
        let request = http::Request::post(format!("http://{}/v4/{GET_ALL_ROBOTS}", gw.addr()))
            .header("x-request-id", id)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        client().request(request)
    };
    let echoed = with_id("trace-42/abc").await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-42/abc");
    let replaced = with_id("has space").await.unwrap();
    let generated = replaced.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 16);
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
    let other = post(gw.addr(), GET_ALL_ROBOTS, "{}").await;
    assert_ne!(other.headers["x-request-id"].to_str().unwrap(), generated);
    let rejected = call(gw.addr(), Method::POST, "/nowhere", "").await;
    assert_eq!(rejected.headers["x-request-id"].len(), 16);
}
