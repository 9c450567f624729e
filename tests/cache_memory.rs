//! Memory that `cache.max_bytes` really bounds (issue 7, F13): a cached answer owns exactly
//! its bytes, and the weigher counts what an entry really costs. Its own test binary, with
//! one test, so no other test's allocations move the process's RSS meanwhile.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tim_gateway::cache::{CacheKey, CacheLabels, CachePolicy, Join, ResponseCache};
use tim_gateway::upstream::UpstreamResponse;

/// Entries stored by the test: enough that per-entry costs dominate allocator noise.
const ENTRIES: usize = 100_000;

/// What each answer is sliced from: a connection's read buffer, as hyper hands it out.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The documented bound (README, "Memory sizing"): RSS grows by at most this factor of what
/// the cache weighs.
const MAX_RSS_PER_WEIGHED: f64 = 1.25;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Reproduces issue 7, F13: 100k distinct cached answers, each a 250-byte slice of its own
/// 8 KiB read buffer. Each entry must keep only its own bytes alive, and RSS growth must stay
/// within `MAX_RSS_PER_WEIGHED` of the weighed size (it was ~19×).
#[tokio::test(flavor = "current_thread")]
async fn rss_follows_the_weighed_size() {
    let policy = CachePolicy {
        ttl: Duration::from_secs(3600),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
    };
    let labels = CacheLabels {
        apps: vec!["main".into()],
        commands: vec![Some("openim_robot_http_svc/get_all_robots")],
    };
    let cache = ResponseCache::new(1 << 40, &labels, &prometheus::Registry::new(), None).unwrap();
    let answer = format!(
        r#"{{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"Robot_Account":[{}]}}"#,
        (0..16)
            .map(|i| format!("\"@RBT#{i:08}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let before = rss_bytes();
    for n in 0..ENTRIES {
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        buffer[..answer.len()].copy_from_slice(answer.as_bytes());
        let body = Bytes::from(buffer).slice(..answer.len());
        let key = CacheKey {
            app: 0,
            command: 0,
            body: Bytes::from(format!(r#"{{"k":{n}}}"#).into_bytes()),
        };
        let Join::Leader(flight) = cache.join(&key) else {
            panic!("nobody else fetches")
        };
        let response = UpstreamResponse {
            status: StatusCode::OK,
            body,
            error_code: 0,
        };
        flight.complete(Ok(response), policy).await;
    }
    cache.run_pending_tasks().await;
    let grown = rss_bytes().saturating_sub(before) as f64;
    let (entries, weighed) = cache.usage();
    assert_eq!(entries, ENTRIES as u64);
    let ratio = grown / weighed as f64;
    println!(
        "{ENTRIES} entries: weighed {weighed} B ({} B each), RSS +{grown} B ({} B each), ratio {ratio:.2}",
        weighed / ENTRIES as u64,
        grown as u64 / ENTRIES as u64,
    );
    assert!(
        ratio <= MAX_RSS_PER_WEIGHED,
        "RSS grew {ratio:.2}× the weighed size"
    );
}
