//! Live reload of a real `tim-gateway serve` process: SIGHUP and a changed file apply the
//! live settings, name the ones that need a restart, refuse an invalid file while the old
//! configuration keeps serving, and fail no request in flight.

mod support;

use std::time::Duration;

use support::fleet::{sample, until};
use support::process::{serve_with, serve_with_env, Served};
use support::{post, start_sandbox, Extra, ACCOUNT_CHECK, CHECK_BODY, GET_ALL_ROBOTS, KEY};
use tokio::time::Instant;

const ROBOTS_BUDGET: &str = r#"tim_gateway_throttle_budget_per_second{app="main",command="openim_robot_http_svc/get_all_robots"}"#;
const CHECK_BUDGET: &str = r#"tim_gateway_throttle_budget_per_second{app="main",command="im_open_login_svc/account_check"}"#;
const SUCCESS: &str = r#"tim_gateway_config_reloads_total{result="success"}"#;
const FAILURE: &str = r#"tim_gateway_config_reloads_total{result="failure"}"#;
const LAST_OK: &str = "tim_gateway_config_last_reload_successful";
const RESTART: &str = "tim_gateway_config_restart_required";

/// Replaces the gateway's config file as a ConfigMap update does: a new file renamed over it.
fn rewrite(served: &Served, edit: impl FnOnce(&str) -> String) {
    let text = std::fs::read_to_string(&served.config).unwrap();
    let next = served.config.with_extension("next");
    std::fs::write(&next, edit(&text)).unwrap();
    std::fs::rename(&next, &served.config).unwrap();
}

/// Waits until the gateway's log has a line containing `text` (lines reach the log through
/// the writer thread and a pipe, after the metrics that tests wait for).
async fn logged(served: &Served, text: &str) {
    support::eventually(text, || served.log_text().contains(text)).await;
}

/// `tail` appended to the config the gateway started with.
fn with_tail(original: &str, tail: &str) -> String {
    format!("{original}\n{tail}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_applies_quotas_and_cache_rules_and_names_what_needs_a_restart() {
    let sandbox = start_sandbox().await;
    let gateway = serve_with(&sandbox, KEY, Extra::default());
    let admin = gateway.admin;
    // The catalogue's 200/s with the default 5% margin; the reload metrics exist at start.
    assert_eq!(sample(admin, ROBOTS_BUDGET).await, 190.0);
    assert_eq!(sample(admin, SUCCESS).await, 0.0);
    assert_eq!(sample(admin, FAILURE).await, 0.0);
    assert_eq!(sample(admin, LAST_OK).await, 1.0);
    assert_eq!(sample(admin, RESTART).await, 0.0);
    assert_eq!(
        post(gateway.addr, GET_ALL_ROBOTS, "{}").await.x_cache(),
        "MISS"
    );
    assert_eq!(
        post(gateway.addr, GET_ALL_ROBOTS, "{}").await.x_cache(),
        "HIT"
    );

    let original = std::fs::read_to_string(&gateway.config).unwrap();
    rewrite(&gateway, |text| {
        with_tail(
            &text.replace("[server]\n", "[server]\nmax_body_bytes = 1000\n"),
            &format!(
                "[[throttle.quotas]]\ncommand = \"{GET_ALL_ROBOTS}\"\nper_second = 50\n\n\
                 [[cache.rules]]\ncommand = \"{GET_ALL_ROBOTS}\"\nenabled = false\n"
            ),
        )
    });
    // No signal: the file's change is noticed within its 2 s poll.
    until(admin, ROBOTS_BUDGET, 47.0).await;
    assert_eq!(sample(admin, SUCCESS).await, 1.0);
    assert_eq!(sample(admin, RESTART).await, 1.0);
    let before = sandbox.calls(GET_ALL_ROBOTS);
    for _ in 0..2 {
        let answer = post(gateway.addr, GET_ALL_ROBOTS, "{}").await;
        assert_eq!((answer.status.as_u16(), answer.x_cache()), (200, "BYPASS"));
    }
    assert_eq!(sandbox.calls(GET_ALL_ROBOTS), before + 2);
    // max_body_bytes needs a restart: a 2,000-byte body is still taken.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
    assert_eq!(post(gateway.addr, ACCOUNT_CHECK, &big).await.status, 200);
    let log = gateway.log_text();
    assert!(
        log.contains(
            "configuration reloaded trigger=\"file changed\" applied=cache.rules, throttle.quotas"
        ),
        "{log}"
    );
    assert!(log.contains("settings=server.max_body_bytes"), "{log}");

    // Back to the file it started with: nothing needs a restart any more, caching is back,
    // without the answer kept from before caching was off (writes meanwhile did not drop it).
    rewrite(&gateway, |_| original.clone());
    until(admin, ROBOTS_BUDGET, 190.0).await;
    assert_eq!(sample(admin, RESTART).await, 0.0);
    assert_eq!(
        post(gateway.addr, GET_ALL_ROBOTS, "{}").await.x_cache(),
        "MISS"
    );
    assert_eq!(
        post(gateway.addr, GET_ALL_ROBOTS, "{}").await.x_cache(),
        "HIT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_s_identifier_changes_without_a_restart() {
    let sandbox = start_sandbox().await;
    let gateway = serve_with(&sandbox, KEY, Extra::default());
    let identifiers = || {
        sandbox
            .requests(ACCOUNT_CHECK)
            .iter()
            .map(|r| {
                r.query
                    .iter()
                    .find(|(name, _)| name == "identifier")
                    .map(|(_, v)| v.clone())
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        post(gateway.addr, ACCOUNT_CHECK, CHECK_BODY)
            .await
            .error_code(),
        0
    );
    rewrite(&gateway, |text| {
        text.replace(
            "identifier = \"administrator\"",
            "identifier = \"ops_admin\"",
        )
    });
    until(
        gateway.admin,
        r#"tim_gateway_usersig_mints_total{app="main",reason="reloaded"}"#,
        1.0,
    )
    .await;
    // The sandbox knows only `administrator` as an admin: it refuses the new identifier,
    // which shows the call was signed as it.
    let answer = post(gateway.addr, ACCOUNT_CHECK, CHECK_BODY).await;
    assert_ne!(answer.error_code(), 0);
    assert_eq!(identifiers(), ["administrator", "ops_admin"]);
    assert_eq!(sample(gateway.admin, RESTART).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_running_configuration() {
    let sandbox = start_sandbox().await;
    let gateway = serve_with(&sandbox, KEY, Extra::default());
    let admin = gateway.admin;
    // SIGHUP with the file unchanged: a reload that changes nothing (no poll would see it).
    gateway.send_sighup();
    until(admin, SUCCESS, 1.0).await;
    logged(
        &gateway,
        "configuration reloaded trigger=\"SIGHUP\" applied=(none)",
    )
    .await;

    let original = std::fs::read_to_string(&gateway.config).unwrap();
    rewrite(&gateway, |text| {
        with_tail(
            text,
            &format!("[[throttle.quotas]]\ncommand = \"{ACCOUNT_CHECK}\"\nper_second = 0\n"),
        )
    });
    until(admin, FAILURE, 1.0).await;
    assert_eq!(sample(admin, LAST_OK).await, 0.0);
    assert_eq!(sample(admin, SUCCESS).await, 1.0);
    assert_eq!(sample(admin, CHECK_BUDGET).await, 95.0);
    logged(&gateway, "key=throttle.quotas[0].per_second").await;
    logged(
        &gateway,
        "configuration reload failed: the running configuration stays in force",
    )
    .await;
    let answer = post(gateway.addr, ACCOUNT_CHECK, CHECK_BODY).await;
    assert_eq!((answer.status.as_u16(), answer.error_code()), (200, 0));

    rewrite(&gateway, |_| {
        with_tail(
            &original,
            &format!("[[throttle.quotas]]\ncommand = \"{ACCOUNT_CHECK}\"\nper_second = 60\n"),
        )
    });
    until(admin, CHECK_BUDGET, 57.0).await;
    assert_eq!(sample(admin, LAST_OK).await, 1.0);
    assert_eq!(sample(admin, SUCCESS).await, 2.0);
    assert_eq!(sample(admin, FAILURE).await, 1.0);

    // The file gone (caught mid-swap): a SIGHUP fails; the same bytes back are loaded again
    // at the next poll, though they are what was read last.
    let contents = std::fs::read(&gateway.config).unwrap();
    std::fs::remove_file(&gateway.config).unwrap();
    gateway.send_sighup();
    until(admin, FAILURE, 2.0).await;
    assert_eq!(sample(admin, LAST_OK).await, 0.0);
    std::fs::write(&gateway.config, &contents).unwrap();
    until(admin, LAST_OK, 1.0).await;
    assert_eq!(sample(admin, SUCCESS).await, 3.0);
    logged(&gateway, "trigger=\"retry after a failure\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let sandbox = start_sandbox().await;
    let gateway = serve_with(&sandbox, KEY, Extra::default());
    let (addr, admin) = (gateway.addr, gateway.admin);
    let original = std::fs::read_to_string(&gateway.config).unwrap();
    let stop = Instant::now() + Duration::from_secs(60);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four clients: cached reads, and uncached reads paced under every quota used below.
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let done = std::sync::Arc::clone(&done);
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < stop {
                    let answer = if i % 2 == 0 {
                        post(addr, GET_ALL_ROBOTS, "{}").await
                    } else {
                        let answer = post(addr, ACCOUNT_CHECK, CHECK_BODY).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        answer
                    };
                    answers.push((answer.status.as_u16(), answer.error_code()));
                }
                answers
            })
        })
        .collect();
    // Each variant and the budget of account_check it gives (quota less the 5% margin).
    let variants = [
        (
            format!(
                "[[throttle.quotas]]\ncommand = \"{ACCOUNT_CHECK}\"\nper_second = 60\n\n\
                 [[cache.rules]]\ncommand = \"{GET_ALL_ROBOTS}\"\nenabled = false\n"
            ),
            57.0,
        ),
        (
            format!(
                "[[throttle.quotas]]\ncommand = \"{ACCOUNT_CHECK}\"\nper_second = 200\n\n\
                 [[cache.rules]]\ncommand = \"{GET_ALL_ROBOTS}\"\nttl = \"1s\"\n\n\
                 [log]\nlevel = \"warn\"\n"
            ),
            190.0,
        ),
        (String::new(), 95.0),
    ];
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reloads = sample(admin, SUCCESS).await;
        let (tail, budget) = &variants[round % 3];
        rewrite(&gateway, |_| with_tail(&original, tail));
        // The signal, or the file's poll if it comes first (then both count).
        gateway.send_sighup();
        support::fleet::until_at_least(admin, SUCCESS, reloads + 1.0).await;
        assert_eq!(sample(admin, CHECK_BUDGET).await, *budget, "round {round}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let answers = client.await.unwrap();
        total += answers.len();
        assert!(
            answers.iter().all(|&answer| answer == (200, 0)),
            "{:?}",
            answers
                .iter()
                .filter(|&&a| a != (200, 0))
                .collect::<Vec<_>>()
        );
    }
    assert!(total > 100, "only {total} requests");
    assert_eq!(sample(admin, FAILURE).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_follows_the_file_unless_rust_log_pins_it() {
    let sandbox = start_sandbox().await;
    let access_lines = |served: &Served| {
        served
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains("tim_gateway::access"))
            .count()
    };
    // Without RUST_LOG, `log.level` decides: the access log (info) is on at start.
    let gateway = serve_with_env(&sandbox, KEY, &[("RUST_LOG", "")]);
    post(gateway.addr, GET_ALL_ROBOTS, "{}").await;
    support::eventually("an access line", || access_lines(&gateway) == 1).await;
    rewrite(&gateway, |text| {
        with_tail(text, "[log]\nlevel = \"warn\"\n")
    });
    until(gateway.admin, SUCCESS, 1.0).await;
    let before = access_lines(&gateway);
    for _ in 0..3 {
        post(gateway.addr, GET_ALL_ROBOTS, "{}").await;
    }
    // Back to info: the next request's line is the only one since `warn` (the three above,
    // answered before it, wrote none).
    rewrite(&gateway, |text| {
        text.replace("level = \"warn\"", "level = \"info\"")
    });
    until(gateway.admin, SUCCESS, 2.0).await;
    post(gateway.addr, GET_ALL_ROBOTS, "{}").await;
    support::eventually("the access line after `info`", || {
        access_lines(&gateway) > before
    })
    .await;
    assert_eq!(access_lines(&gateway), before + 1);

    // With RUST_LOG set (trace, by the test fixture), the file's level is not applied.
    let pinned = serve_with(&sandbox, KEY, Extra::default());
    rewrite(&pinned, |text| with_tail(text, "[log]\nlevel = \"warn\"\n"));
    until(pinned.admin, SUCCESS, 1.0).await;
    logged(&pinned, "applied=log.level (not applied: RUST_LOG is set)").await;
    let before = access_lines(&pinned);
    post(pinned.addr, GET_ALL_ROBOTS, "{}").await;
    support::eventually("an access line after the reload", || {
        access_lines(&pinned) == before + 1
    })
    .await;
}
