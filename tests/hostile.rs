//! Hostile input against the real binary (issue 7): the process survives and answers each
//! bad input with its own error in Tencent's envelope.

mod support;

use http::{Method, StatusCode};
use support::process::*;
use support::*;

/// A body nested `depth` levels deep: `{"a":[[…]]}`.
fn nested(depth: usize) -> Vec<u8> {
    let mut body = br#"{"a":"#.to_vec();
    body.extend(std::iter::repeat_n(b'[', depth - 1));
    body.extend(std::iter::repeat_n(b']', depth - 1));
    body.push(b'}');
    body
}

/// Reproduces issue 7, F1: a 7,000-deep body to a cached read aborted the whole process with
/// a stack overflow. Now it gets 400 / 1904013, deep bodies within the limit pass, and the process goes
/// on answering.
#[tokio::test]
async fn deeply_nested_body_is_refused_and_the_process_lives() {
    let sandbox = start_sandbox().await;
    let served = serve(&sandbox, KEY);
    let path = format!("/v4/{GET_ALL_ROBOTS}");
    for command in [GET_ALL_ROBOTS, CREATE_ROBOT] {
        let answer = call(
            served.addr,
            Method::POST,
            &format!("/v4/{command}"),
            nested(7_000),
        )
        .await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (StatusCode::BAD_REQUEST, 1_904_013),
            "{command}"
        );
        assert_eq!(
            answer.json["ErrorInfo"],
            "the request body is nested deeper than 128 levels"
        );
    }
    // A deep body within the limit is relayed (the exact 128/129 boundary is a unit test in
    // `body`; the sandbox parses with serde_json, whose own limit is 128 containers).
    let answer = call(served.addr, Method::POST, &path, nested(100)).await;
    assert_eq!((answer.status, answer.error_code()), (StatusCode::OK, 0));
    let answer = post(served.addr, GET_ALL_ROBOTS, "{}").await;
    assert_eq!((answer.status, answer.error_code()), (StatusCode::OK, 0));
    assert_eq!(sandbox.total_calls(), 2);
}

/// Reproduces issue 7, F8: invalid UTF-8 and a lone surrogate escape were forwarded for
/// writes and refused for cached reads. Now every command refuses them, with 400 / 1904005,
/// and nothing reaches Tencent.
#[tokio::test]
async fn one_body_gets_one_verdict_for_every_command() {
    let sandbox = start_sandbox().await;
    let served = serve(&sandbox, KEY);
    let bodies: [(&[u8], &str); 3] = [
        (b"{\"UserID\":\"@RBT#\xff\"}", "invalid UTF-8 at byte 16"),
        (
            br#"{"UserID":"@RBT#\ud800"}"#,
            "lone surrogate escape at byte 16",
        ),
        (
            br#"{"UserID":"@RBT#\udc00\ud800"}"#,
            "lone surrogate escape at byte 16",
        ),
    ];
    for command in [GET_ALL_ROBOTS, CREATE_ROBOT, ACCOUNT_CHECK] {
        for (body, reason) in bodies {
            let answer = call(served.addr, Method::POST, &format!("/v4/{command}"), body).await;
            assert_eq!(
                (answer.status, answer.error_code()),
                (StatusCode::BAD_REQUEST, 1_904_005),
                "{command} {reason}"
            );
            assert_eq!(
                answer.json["ErrorInfo"],
                format!("the request body is not valid JSON: {reason}")
            );
        }
    }
    assert_eq!(sandbox.total_calls(), 0);
}

/// Sends `request` as written on a fresh connection and returns the status code and the
/// answer's JSON body (`Value::Null` if it has none).
async fn raw(addr: std::net::SocketAddr, request: &str) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or_default())
}

/// A POST as written by a client, with `headers` (each ending in `\r\n`) and a JSON body.
fn post_raw(path: &str, host: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Reproduces issue 7, F2: a web page on the same host posted a `text/plain` JSON body
/// cross-site (creating a robot), and with DNS rebinding read answers too. Now both get
/// Tencent's envelope with 403 / 421, on both listeners, while the Python SDK's request
/// (no `Content-Type`) and curl's (`-d`: form-urlencoded) keep working.
#[tokio::test]
async fn browser_pages_cannot_use_the_gateway() {
    let sandbox = start_sandbox().await;
    let served = serve(&sandbox, KEY);
    let create = format!("/v4/{CREATE_ROBOT}");
    let host = served.addr.to_string();
    let robot = r#"{"UserID":"@RBT#page"}"#;
    let cross_site =
        "content-type: text/plain\r\norigin: http://evil.example\r\nsec-fetch-site: cross-site\r\n";
    let cases = [
        (post_raw(&create, &host, cross_site, robot), 403, 1_904_014),
        (
            post_raw(&create, &host, "origin: null\r\n", robot),
            403,
            1_904_014,
        ),
        (
            post_raw(&create, &host, "sec-fetch-site: same-site\r\n", robot),
            403,
            1_904_014,
        ),
        (
            post_raw(&create, "rebind.evil.example:15080", "", robot),
            421,
            1_904_015,
        ),
    ];
    for (request, status, code) in &cases {
        let (got, body) = raw(served.addr, request).await;
        assert_eq!(
            (got, body["ErrorCode"].as_i64()),
            (*status, Some(*code)),
            "{request}"
        );
        assert_eq!(body["ActionStatus"], "FAIL");
    }
    assert_eq!(
        sandbox.total_calls(),
        0,
        "no refused request reached Tencent"
    );
    // The clients we serve: no Origin, no Content-Type (Python SDK), or curl -d.
    for headers in ["", "content-type: application/x-www-form-urlencoded\r\n"] {
        let (got, body) = raw(served.addr, &post_raw(&create, &host, headers, robot)).await;
        assert_eq!(
            (got, body["ErrorCode"].as_i64()),
            (200, Some(0)),
            "{headers:?}"
        );
    }
    let local = post_raw(
        &create,
        "localhost",
        "origin: http://localhost:3000\r\n",
        robot,
    );
    assert_eq!(raw(served.addr, &local).await.0, 200);
    // The admin listener: a cross-site purge and a rebound scrape are refused too.
    let admin = served.admin.to_string();
    let purge = post_raw("/cache/purge", &admin, cross_site, "");
    assert_eq!(raw(served.admin, &purge).await.1["ErrorCode"], 1_904_014);
    let scrape = "GET /metrics HTTP/1.1\r\nhost: rebind.evil.example\r\nconnection: close\r\n\r\n";
    assert_eq!(raw(served.admin, scrape).await.0, 421);
}

/// Reproduces issue 7, F9: a purge with a repeated parameter silently kept the last value;
/// with `server.admin_token_file`, a purge needs the bearer token (probes never do).
#[tokio::test]
async fn purge_refuses_repeats_and_needs_the_token() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "s3cret-admin-token-0123456789\n").unwrap();
    let server = format!("admin_token_file = \"{}\"", token_file.display());
    let served = serve_with(
        &sandbox,
        KEY,
        Extra {
            server: &server,
            ..Extra::default()
        },
    );
    let admin = served.admin.to_string();
    let bearer = "authorization: Bearer s3cret-admin-token-0123456789\r\n";
    let cases = [
        ("/cache/purge", "", 401, Some(1_904_016)),
        (
            "/cache/purge",
            "authorization: Bearer wrong-token-0123456789\r\n",
            401,
            Some(1_904_016),
        ),
        (
            "/cache/purge?app=main&app=other",
            bearer,
            400,
            Some(1_904_011),
        ),
        ("/cache/purge?app=main", bearer, 200, Some(0)),
        ("/cache/purge", bearer, 200, Some(0)),
        (
            "/cache/purge",
            "authorization: bearer s3cret-admin-token-0123456789\r\n",
            200,
            Some(0),
        ),
    ];
    for (path, headers, status, code) in cases {
        let (got, body) = raw(served.admin, &post_raw(path, &admin, headers, "")).await;
        assert_eq!(
            (got, body["ErrorCode"].as_i64()),
            (status, code),
            "{path} {headers:?}"
        );
    }
    let probe = format!("GET /readyz HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n");
    assert_eq!(raw(served.admin, &probe).await.0, 200);
    assert!(!served.log_text().contains("s3cret-admin-token"));
}

/// Reads a process's resident set size from /proc, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Reproduces issue 7, F3: with `nofile` 256, 400 idle client connections and 100 more each
/// sending a huge half header made `/healthz` and `/readyz` time out, logged 900 WARN lines
/// and grew RSS by 79 MB. Now the probes answer at once, nothing is logged about accepts,
/// and RSS grows by less than 16 MiB.
#[tokio::test]
async fn probes_answer_while_clients_flood() {
    use tokio::io::AsyncWriteExt;
    let sandbox = start_sandbox().await;
    let served = serve_limited(&sandbox, KEY, Extra::default(), Some(256));
    let pid = served.child.id();
    let before = rss_of(pid);
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(tokio::net::TcpStream::connect(served.addr).await.unwrap());
    }
    let big_header = format!(
        "POST /v4/{GET_ALL_ROBOTS} HTTP/1.1\r\nhost: localhost\r\nx-pad: {}",
        "a".repeat(390 * 1024)
    );
    for _ in 0..100 {
        let mut stream = tokio::net::TcpStream::connect(served.addr).await.unwrap();
        // Refused with 431 (and closed) once past the buffer cap, or left in the backlog.
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            stream.write_all(big_header.as_bytes()),
        )
        .await;
        flood.push(stream);
    }
    let admin = served.admin.to_string();
    for probe in ["/healthz", "/readyz"] {
        let request = format!("GET {probe} HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n");
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            raw(served.admin, &request),
        )
        .await
        .unwrap_or_else(|_| panic!("{probe} did not answer within 5 s"));
        assert_eq!(answer.0, 200, "{probe}");
    }
    let grown = rss_of(pid).saturating_sub(before);
    assert!(grown < 16 << 20, "RSS grew by {grown} bytes");
    let log = served.log_text();
    assert_eq!(log.matches("accept failed").count(), 0, "{log}");
    assert!(
        log.contains("max_connections=128"),
        "cap derived from nofile 256"
    );
    drop(flood);
}

/// Reproduces issue 7, F7: a second SIGTERM during the drain was ignored. Now one more than
/// a second after the first ends the process at once with exit code 3, although a request is
/// still in flight; one sooner is taken as the same stop sent twice.
#[tokio::test]
async fn second_stop_signal_exits_at_once() {
    use tokio::io::AsyncWriteExt;
    let sandbox = start_sandbox().await;
    let served = serve(&sandbox, KEY);
    // A request whose body never completes keeps the drain waiting (up to the 25 s grace).
    let mut stuck = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    stuck
        .write_all(
            format!("POST /v4/{CREATE_ROBOT} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n{{")
                .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    served.send_sigterm();
    let drained = wait_for_log(&served, "draining").await;
    assert!(drained, "the first signal starts the drain");
    // A repeat within a second is the same stop (ignored); past it, a second one. (Sent only
    // once the first was taken: two signals pending at once would merge into one.)
    served.send_sigterm();
    assert!(wait_for_log(&served, "stop signal repeated within a second").await);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let started = std::time::Instant::now();
    served.send_sigterm();
    let (status, log) = served.wait_exit();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(log.contains("second stop signal"));
    drop(stuck);
}

/// Polls the log for `marker` for at most 10 s.
async fn wait_for_log(served: &Served, marker: &str) -> bool {
    for _ in 0..1000 {
        if served.log_text().contains(marker) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Sends `request` on a fresh connection and returns everything until the gateway closes it,
/// without the `date` and `age` lines (they move with the clock).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .split_inclusive("\r\n")
        .filter(|line| !line.starts_with("date: ") && !line.starts_with("age: "))
        .collect()
}

/// Requests that are not HTTP/1.1 as RFC 9112 has it get Tencent's envelope (400 / 1904017;
/// an oversized head 431 / 1904018) and the connection closes; nothing reaches Tencent.
#[tokio::test]
async fn malformed_http_gets_the_envelope() {
    let sandbox = start_sandbox().await;
    let served = serve(&sandbox, KEY);
    let path = format!("/v4/{GET_ALL_ROBOTS}");
    let smuggled = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
        served.addr
    );
    let envelope = r#"{"ActionStatus":"FAIL","ErrorInfo":"the request is not valid HTTP/1.1: both Transfer-Encoding and Content-Length are set","ErrorCode":1904017}"#;
    assert_eq!(
        raw_exchange(served.addr, smuggled.as_bytes()).await,
        format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{envelope}",
            envelope.len()
        )
    );
    let oversized = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\nx-big: {}\r\n\r\n",
        served.addr,
        "a".repeat(20_000)
    );
    let envelope = r#"{"ActionStatus":"FAIL","ErrorInfo":"the request head is larger than 16384 bytes or has more than 100 headers","ErrorCode":1904018}"#;
    assert_eq!(
        raw_exchange(served.addr, oversized.as_bytes()).await,
        format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{envelope}",
            envelope.len()
        )
    );
    assert_eq!(
        sandbox.total_calls(),
        0,
        "no refused request reached Tencent"
    );
}

/// A cache hit answered at once from the read buffer (`Proxy::answer_now`) and the same hit
/// through the full path (a chunked body is not all buffered, so it takes `handle`) are the
/// same bytes, apart from `date` and `age`; both are logged and counted as hits.
#[tokio::test]
async fn a_hit_answered_at_once_is_the_full_path_s_answer() {
    let sandbox = start_sandbox().await;
    let served = serve_with_env(&sandbox, KEY, &[("RUST_LOG", "info")]);
    let path = format!("/v4/{GET_ALL_ROBOTS}");
    let primed = call(served.addr, Method::POST, &path, b"{}".to_vec()).await;
    assert_eq!(primed.x_cache(), "MISS");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\nx-request-id: same-id\r\nconnection: close\r\n",
        served.addr
    );
    let at_once = raw_exchange(
        served.addr,
        format!("{head}content-length: 2\r\n\r\n{{}}").as_bytes(),
    )
    .await;
    let full_path = raw_exchange(
        served.addr,
        format!("{head}transfer-encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        at_once.starts_with("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-cache: HIT\r\nx-request-id: same-id\r\ncontent-length: "),
        "{at_once}"
    );
    assert_eq!(at_once, full_path);
    assert_eq!(sandbox.total_calls(), 1, "both were hits");
    let metrics = metrics_text(served.admin).await;
    let counted = format!(
        "tim_gateway_requests_total{{app=\"main\",cache=\"HIT\",command=\"{GET_ALL_ROBOTS}\",status_class=\"2xx\"}} 2"
    );
    assert!(metrics.contains(&counted), "{metrics}");
    let (_, log) = served.terminate();
    let hits = log
        .lines()
        .filter(|l| l.contains("request_id=same-id") && l.contains("cache=HIT status=200"))
        .count();
    assert_eq!(hits, 2, "one access line each:\n{log}");
}
