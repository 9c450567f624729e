//! Fleet-mode fixtures shared by `tests/fleet*.rs`: gateway processes on one Redis, open-loop
//! overload, and reading their `/metrics` and the sandbox's record of arrivals.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::process::{serve_with, Served};
use super::{metrics_text, post, Extra, ACCOUNT_CHECK, KEY};

/// The body of every account_check the overload sends.
pub const CHECK: &str = r#"{"CheckItem":[{"UserID":"a"}]}"#;

/// Gateway processes in fleet mode on the Redis at each URL (one per gateway), in front of
/// `sandbox`, with `expected_replicas = 3` and the given `fleet.fallback`.
pub fn fleet(
    sandbox: &tim_gateway::sandbox::Sandbox,
    urls: &[String],
    fallback: &str,
) -> Vec<Served> {
    urls.iter()
        .map(|url| {
            let tail = format!(
                "[fleet]\nredis_url = \"{url}\"\nexpected_replicas = 3\nfallback = \"{fallback}\"\n"
            );
            serve_with(
                sandbox,
                KEY,
                Extra {
                    tail: &tail,
                    ..Extra::default()
                },
            )
        })
        .collect()
}

/// Three gateways on the Redis at `url`.
pub fn fleet_of_three(
    sandbox: &tim_gateway::sandbox::Sandbox,
    url: &str,
    fallback: &str,
) -> Vec<Served> {
    fleet(
        sandbox,
        &[url.to_owned(), url.to_owned(), url.to_owned()],
        fallback,
    )
}

/// Each gateway answers one account_check through Redis (connected, scripts loaded).
pub async fn warm_up(gateways: &[Served]) {
    for gateway in gateways {
        assert_eq!(
            post(gateway.addr, ACCOUNT_CHECK, CHECK).await.error_code(),
            0
        );
    }
}

/// The value of the `/metrics` sample `series` (name and labels exactly as exposed).
pub async fn sample(admin: SocketAddr, series: &str) -> f64 {
    let text = metrics_text(admin).await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

/// Waits (polling every 20 ms, for 10 s at most) until the `/metrics` sample `series` at
/// `admin` is `want`; fails if it never is.
pub async fn until(admin: SocketAddr, series: &str, want: f64) {
    for _ in 0..500 {
        if sample(admin, series).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sample(admin, series).await, want, "{series}");
}

/// As [`until`], until the sample is at least `want`.
pub async fn until_at_least(admin: SocketAddr, series: &str, want: f64) {
    for _ in 0..500 {
        if sample(admin, series).await >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = sample(admin, series).await;
    assert!(got >= want, "{series}: {got}, want at least {want}");
}

/// The sum over `gateways` of every `/metrics` sample whose line starts with `prefix`.
pub async fn total(gateways: &[Served], prefix: &str) -> f64 {
    let mut sum = 0.0;
    for gateway in gateways {
        let text = metrics_text(gateway.admin).await;
        sum += text
            .lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    sum
}

/// Answers seen by clients: 200 with ErrorCode 0, 429, 200 with a Tencent error, other.
pub type Counts = Arc<[AtomicU64; 4]>;

/// Open-loop load until `end`: every 6 ms each gateway is sent one more account_check,
/// whatever became of the earlier ones (167/s per gateway; 500/s for three, 5.3 times the
/// budget of 95/s). Returns the answers' counts once every request has been answered.
pub async fn drive(gateways: &[Served], end: Instant) -> Counts {
    let counts: Counts = Arc::new([(); 4].map(|()| AtomicU64::new(0)));
    let mut requests = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(6));
    while Instant::now() < end {
        ticks.tick().await;
        for gateway in gateways {
            let addr = gateway.addr;
            let counts = Arc::clone(&counts);
            requests.push(tokio::spawn(async move {
                let answer = post(addr, ACCOUNT_CHECK, CHECK).await;
                let i = match (answer.status.as_u16(), answer.error_code()) {
                    (200, 0) => 0,
                    (429, _) => 1,
                    (200, _) => 2,
                    _ => 3,
                };
                counts[i].fetch_add(1, Ordering::Relaxed);
            }));
        }
    }
    for request in requests {
        request.await.unwrap();
    }
    counts
}

/// account_check calls that reached the upstream in `[from, to)`.
pub fn calls_between(sandbox: &tim_gateway::sandbox::Sandbox, from: Instant, to: Instant) -> usize {
    sandbox
        .requests(ACCOUNT_CHECK)
        .iter()
        .filter(|r| r.received_at >= from && r.received_at < to)
        .count()
}
