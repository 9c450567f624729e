//! The soak test's traffic driver (`benches/soak.sh` runs it): mixed traffic against a running
//! tim-gateway for a fixed time, then it stops by itself.
//!
//! `cargo run --example soak -- GATEWAY_ADDR SECONDS` (soak.sh starts the gateway and the sandbox).
//!
//! Every 10 s it prints one JSON line of cumulative counts per class of traffic and outcome
//! (`sent`, `2xx`, `4xx` without 429, `429`, `5xx_gateway` = 5xx whose ErrorCode is in the
//! gateway's 19xxxxx range, `5xx_other`, `transport` = no HTTP answer, `unexpected` = an answer
//! the class does not expect, e.g. a 429 without `Retry-After`), and a last line with
//! `"final":true` once the traffic has stopped and every request in flight has ended.
//!
//! The classes, with their rates per second (see the constants below):
//! - `hit`: `{}` to get_all_robots, 400/s: answered from the cache, refreshed every 30 s.
//! - `miss`: `{"k":N}` to get_all_robots, 150/s, N drawn from a window of 1000 keys that slides
//!   by 100 keys/s: old keys go cold, new ones are fetched, the cache fills to its cap.
//! - `write`: create_robot / delete_robot of `@RBT#soakN`, 4/s, to a second app, `writer`
//!   (its own SDKAppID and sandbox), whose cached answers nobody reads: a successful write drops
//!   every cached get_all_robots answer of its app, which would keep the cache nearly empty.
//!   One write a minute (at 40 s, 100 s, ...) goes to the default app and empties its full cache.
//! - `bad_body`: invalid JSON, 7000-deep nesting, invalid UTF-8 and a non-object, 20/s: 400.
//! - `slow`: a raw client, 1/s, of three kinds in turn: it trickles its body within the deadline
//!   (200), or past it (408), or pipelines 16 requests through a 4 KiB receive buffer and reads
//!   the answers 512 bytes per 40 ms (16 × 200).
//! - `vanish`: a raw client, 10/s, that drops its connection after part of the headers, after
//!   part of the body, after a full cache-miss request, or resets it after a full write.
//! - `throttle`: a burst of 50 account_check calls each second against a quota of 20/s: the
//!   calls past the budget get 429 with `Retry-After`.
//!
//! Before the clock starts it creates 100 chatbots with 32-byte UserIDs, so that each cached
//! get_all_robots answer is about 4 KiB and a few MiB of cache hold about a thousand of them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout, timeout_at, Instant, MissedTickBehavior};

const GET_ALL_ROBOTS: &str = "/v4/openim_robot_http_svc/get_all_robots";
const CREATE_ROBOT: &str = "/v4/openim_robot_http_svc/create_robot";
const DELETE_ROBOT: &str = "/v4/openim_robot_http_svc/delete_robot";
/// The app most writes go to (soak.sh configures it), so that they leave the default app's
/// cache alone.
const WRITER_APP: &str = "/apps/writer";
const ACCOUNT_CHECK: &str = "/v4/im_open_login_svc/account_check";

/// Requests per second of each steady class. soak.sh's gateway has a budget of 190 upstream
/// calls/s for get_all_robots: the misses (and the vanish class's) must stay below it.
const HIT_PER_SECOND: f64 = 400.0;
const MISS_PER_SECOND: f64 = 150.0;
const WRITE_PER_SECOND: f64 = 4.0;
const BAD_BODY_PER_SECOND: f64 = 20.0;
const SLOW_PER_SECOND: f64 = 1.0;
const VANISH_PER_SECOND: f64 = 10.0;
/// account_check calls sent at once, once a second; soak.sh sets its quota to 20/s.
const THROTTLE_BURST: usize = 50;

/// Keys of the `miss` class: `{"k":N}` with N in `[base, base + MISS_WINDOW)`, where `base`
/// grows by `MISS_KEYS_PER_SECOND`; a key stays in the window for 10 s.
const MISS_WINDOW: u64 = 1000;
const MISS_KEYS_PER_SECOND: u64 = 100;

/// Chatbots created before the run, each with a 32-byte UserID (Tencent's maximum).
const PADDING_ROBOTS: usize = 100;
/// Chatbot UserIDs the `write` class cycles through (about half exist at any time).
const WRITE_ROBOTS: u64 = 64;
/// One write in this many goes to the default app (once a minute at 4/s), at tick 160 + k × 240.
const DEFAULT_APP_WRITE_EVERY: u64 = 240;
const DEFAULT_APP_WRITE_AT: u64 = 160;

/// Requests of the hit, miss, write and bad-body classes in flight at once.
const CONCURRENCY: usize = 32;
/// Raw slow clients connected at once.
const SLOW_CONCURRENCY: usize = 16;
/// Raw vanishing clients connected at once.
const VANISH_CONCURRENCY: usize = 16;
/// Bursts of the throttle class in flight at once (a burst lasts up to `max_wait`).
const THROTTLE_CONCURRENCY: usize = 4;

/// Requests pipelined on one connection by the slow reader.
const PIPELINED: usize = 16;
/// Pause between two bytes of a trickled body.
const TRICKLE_PAUSE: Duration = Duration::from_millis(200);

/// Longest wait for one answer before it counts as a transport error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a line of counts is printed.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long the requests still in flight at the end may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(40);

/// Kinds of traffic, each with its own counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Hit,
    Miss,
    Write,
    BadBody,
    Slow,
    Vanish,
    Throttle,
}

impl Class {
    const ALL: [Class; 7] = [
        Class::Hit,
        Class::Miss,
        Class::Write,
        Class::BadBody,
        Class::Slow,
        Class::Vanish,
        Class::Throttle,
    ];

    fn name(self) -> &'static str {
        match self {
            Class::Hit => "hit",
            Class::Miss => "miss",
            Class::Write => "write",
            Class::BadBody => "bad_body",
            Class::Slow => "slow",
            Class::Vanish => "vanish",
            Class::Throttle => "throttle",
        }
    }

    /// Whether `answer` is what a request of this class should get.
    fn expects(self, answer: &Answer) -> bool {
        match self {
            // A write may answer Tencent's 10004 (deleting a chatbot that is already gone).
            Class::Hit | Class::Miss | Class::Write => answer.status == 200,
            Class::BadBody => answer.status == 400,
            Class::Slow => matches!(answer.status, 200 | 408),
            // Nothing is read from a vanishing client's connection.
            Class::Vanish => false,
            Class::Throttle => {
                answer.status == 200 || (answer.status == 429 && answer.has_retry_after)
            }
        }
    }
}

/// The outcome columns, in the order they are printed.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    ClientError,
    Throttled,
    GatewayError,
    OtherServerError,
    Transport,
}

impl Outcome {
    const NAMES: [&'static str; 6] = ["2xx", "4xx", "429", "5xx_gateway", "5xx_other", "transport"];

    /// The column of an HTTP answer; `None` for 1xx and 3xx, which no class expects.
    fn of(answer: &Answer) -> Option<Outcome> {
        Some(match answer.status {
            200..=299 => Outcome::Success,
            429 => Outcome::Throttled,
            400..=499 => Outcome::ClientError,
            500..=599 if answer.is_gateway_code() => Outcome::GatewayError,
            500..=599 => Outcome::OtherServerError,
            _ => return None,
        })
    }
}

/// What the driver keeps of one answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The ErrorCode of the JSON envelope, if the body is one.
    error_code: Option<i64>,
    has_retry_after: bool,
}

impl Answer {
    /// Gateway-made errors use 7-digit codes 19xxxxx; Tencent's have at most 6 digits.
    fn is_gateway_code(&self) -> bool {
        self.error_code
            .is_some_and(|code| (1_900_000..2_000_000).contains(&code))
    }

    fn new(status: u16, body: &[u8], has_retry_after: bool) -> Answer {
        let error_code = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|json| json["ErrorCode"].as_i64());
        Answer {
            status,
            error_code,
            has_retry_after,
        }
    }
}

/// Why a request got no HTTP answer.
type TransportError = String;

/// Cumulative counts of one class; shared by every task of the class and the reporter.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    /// Indexed by `Outcome as usize`.
    outcomes: [AtomicU64; 6],
    unexpected: AtomicU64,
}

/// Counts of every class, indexed by `Class as usize`.
#[derive(Default)]
struct Counts {
    classes: [Tally; 7],
}

impl Counts {
    fn sent(&self, class: Class) {
        self.classes[class as usize]
            .sent
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the result of one request already counted as sent.
    fn record(&self, class: Class, result: Result<Answer, TransportError>) {
        let tally = &self.classes[class as usize];
        let (outcome, is_expected) = match &result {
            Ok(answer) => (Outcome::of(answer), class.expects(answer)),
            Err(_) => (Some(Outcome::Transport), false),
        };
        if let Some(outcome) = outcome {
            tally.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
        }
        if !is_expected && !matches!(outcome, Some(Outcome::Transport)) {
            tally.unexpected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One JSON line: per class, and the sum of all classes as `total`.
    fn line(&self, elapsed: Duration, is_final: bool) -> String {
        let mut classes = serde_json::Map::new();
        let mut total = [0u64; 8];
        for class in Class::ALL {
            let tally = &self.classes[class as usize];
            let mut values = vec![tally.sent.load(Ordering::Relaxed)];
            values.extend(tally.outcomes.iter().map(|c| c.load(Ordering::Relaxed)));
            values.push(tally.unexpected.load(Ordering::Relaxed));
            for (sum, value) in total.iter_mut().zip(&values) {
                *sum += value;
            }
            classes.insert(class.name().to_owned(), tally_json(&values));
        }
        serde_json::json!({
            "elapsed_s": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "final": is_final,
            "classes": classes,
            "total": tally_json(&total),
        })
        .to_string()
    }
}

/// `{"sent":..,"2xx":..,..,"unexpected":..}` from sent, the outcomes and unexpected, in order.
fn tally_json(values: &[u64]) -> serde_json::Value {
    let names = std::iter::once("sent")
        .chain(Outcome::NAMES)
        .chain(std::iter::once("unexpected"));
    serde_json::Value::Object(
        names
            .zip(values)
            .map(|(name, value)| (name.to_owned(), (*value).into()))
            .collect(),
    )
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Shared by every task.
struct Driver {
    addr: SocketAddr,
    client: HttpClient,
    counts: Counts,
    started: Instant,
}

impl Driver {
    /// POSTs `body` to `path` through the pooled client.
    async fn post(&self, path: &str, body: Bytes) -> Result<Answer, TransportError> {
        let request = Request::post(format!("http://{}{path}", self.addr))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("a static path and a byte body make a valid request");
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Answer::new(
                parts.status.as_u16(),
                &bytes,
                parts.headers.contains_key(header::RETRY_AFTER),
            ))
        };
        timeout(ANSWER_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err("no answer within 30 s".to_owned()))
    }

    /// Sends one request of `class` through the pooled client and counts its answer.
    async fn send(&self, class: Class, path: &str, body: Bytes) {
        self.counts.sent(class);
        let result = self.post(path, body).await;
        self.counts.record(class, result);
    }

    /// `{"k":N}` from the window of keys live at this moment.
    fn miss_body(&self) -> Bytes {
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        let base = elapsed_ms * MISS_KEYS_PER_SECOND / 1000;
        let key = base + rand::random_range(0..MISS_WINDOW);
        Bytes::from(format!(r#"{{"k":{key}}}"#))
    }

    /// Even ticks create `@RBT#soak{i}`, odd ticks delete the one created 32 ticks earlier
    /// (modulo 64), so about half of the 64 exist at any time. All through the writer app but
    /// one a minute.
    async fn write(&self, tick: u64) {
        let half = tick / 2;
        let app = if tick % DEFAULT_APP_WRITE_EVERY == DEFAULT_APP_WRITE_AT {
            ""
        } else {
            WRITER_APP
        };
        if tick.is_multiple_of(2) {
            let body = format!(r#"{{"UserID":"@RBT#soak{}"}}"#, half % WRITE_ROBOTS);
            self.send(Class::Write, &format!("{app}{CREATE_ROBOT}"), body.into())
                .await;
        } else {
            let body = format!(
                r#"{{"Robot_Account":"@RBT#soak{}"}}"#,
                (half + WRITE_ROBOTS / 2) % WRITE_ROBOTS
            );
            self.send(Class::Write, &format!("{app}{DELETE_ROBOT}"), body.into())
                .await;
        }
    }

    /// Four kinds of bodies the gateway refuses with 400, to a read and to a write in turn.
    async fn bad_body(&self, tick: u64) {
        let body: Bytes = match tick % 4 {
            0 => Bytes::from_static(br#"{"k":"#),
            1 => {
                let depth = 7000;
                let mut deep = Vec::with_capacity(2 * depth + 6);
                deep.extend_from_slice(br#"{"a":"#);
                deep.resize(deep.len() + depth, b'[');
                deep.resize(deep.len() + depth, b']');
                deep.push(b'}');
                deep.into()
            }
            2 => Bytes::from_static(b"{\"k\":\"\xff\xfe\"}"),
            _ => Bytes::from_static(b"[1,2,3]"),
        };
        let path = if (tick / 4).is_multiple_of(2) {
            GET_ALL_ROBOTS
        } else {
            CREATE_ROBOT
        };
        self.send(Class::BadBody, path, body).await;
    }

    /// One slow client: a body trickled within the deadline, one trickled past it, or a
    /// pipelined batch read slowly.
    async fn slow(&self, tick: u64) {
        match tick % 3 {
            0 => {
                self.counts.sent(Class::Slow);
                // 13-14 bytes at 200 ms each: about 3 s, within the 6 s deadline.
                let body = format!(r#"{{"trickle":{}}}"#, tick % 10);
                let result = trickle(self.addr, GET_ALL_ROBOTS, body.as_bytes()).await;
                self.counts.record(Class::Slow, result);
            }
            1 => {
                self.counts.sent(Class::Slow);
                // 64 bytes at 200 ms each would take 13 s: the gateway answers 408 at 6 s.
                let body = format!(r#"{{"trickle":"{}"}}"#, "x".repeat(50));
                let result = trickle(self.addr, GET_ALL_ROBOTS, body.as_bytes()).await;
                self.counts.record(Class::Slow, result);
            }
            _ => {
                for _ in 0..PIPELINED {
                    self.counts.sent(Class::Slow);
                }
                let (answers, error) = slow_reader(self.addr).await;
                let missing = PIPELINED - answers.len();
                for answer in answers {
                    self.counts.record(Class::Slow, Ok(answer));
                }
                for _ in 0..missing {
                    self.counts.record(
                        Class::Slow,
                        Err(error.clone().unwrap_or_else(|| "no answer".to_owned())),
                    );
                }
            }
        }
    }

    /// One client that goes away before reading its answer. Connection failures count as
    /// transport errors; nothing else is counted but `sent`.
    async fn vanish(&self, tick: u64) {
        self.counts.sent(Class::Vanish);
        if let Err(error) = vanish(self.addr, tick).await {
            self.counts.record(Class::Vanish, Err(error));
        }
    }

    /// A burst of account_check calls far above its quota.
    async fn throttle_burst(self: Arc<Self>) {
        let calls: Vec<_> = (0..THROTTLE_BURST)
            .map(|_| {
                let driver = Arc::clone(&self);
                tokio::spawn(async move {
                    let body = Bytes::from_static(br#"{"CheckItem":[{"UserID":"soak"}]}"#);
                    driver.send(Class::Throttle, ACCOUNT_CHECK, body).await;
                })
            })
            .collect();
        for call in calls {
            // A call task only counts; it cannot panic short of a bug in the driver.
            let _ = call.await;
        }
    }
}

/// The head of a raw POST with a `Content-Length` of `length`.
fn head(path: &str, length: usize, is_last: bool) -> String {
    let connection = if is_last { "close" } else { "keep-alive" };
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nConnection: {connection}\r\n\r\n"
    )
}

/// Parses the complete HTTP/1.1 answers at the front of `buf` (the gateway always sends a
/// `Content-Length`); returns them and how many bytes they took.
fn parse_answers(buf: &[u8]) -> Result<(Vec<Answer>, usize), TransportError> {
    let mut answers = Vec::new();
    let mut at = 0;
    while let Some(end) = find(&buf[at..], b"\r\n\r\n") {
        let head = std::str::from_utf8(&buf[at..at + end]).map_err(|e| e.to_string())?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let mut length = 0;
        let mut has_retry_after = false;
        for line in lines {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| "bad Content-Length")?;
            } else if name.eq_ignore_ascii_case("retry-after") {
                has_retry_after = true;
            }
        }
        let body_at = at + end + 4;
        if buf.len() < body_at + length {
            break;
        }
        answers.push(Answer::new(
            status,
            &buf[body_at..body_at + length],
            has_retry_after,
        ));
        at = body_at + length;
    }
    Ok((answers, at))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends the head at once and the body one byte per [`TRICKLE_PAUSE`], while reading; returns
/// the first answer, which may come before the body is complete (408).
async fn trickle(addr: SocketAddr, path: &str, body: &[u8]) -> Result<Answer, TransportError> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut reader, mut writer) = stream.into_split();
        let read = async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = reader.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed without an answer".to_owned());
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(answer) = parse_answers(&buf)?.0.into_iter().next() {
                    return Ok(answer);
                }
            }
        };
        let write = async move {
            writer
                .write_all(head(path, body.len(), true).as_bytes())
                .await?;
            for byte in body {
                sleep(TRICKLE_PAUSE).await;
                writer.write_all(std::slice::from_ref(byte)).await?;
            }
            // Keep the write half open: closing it could look like a client that vanished.
            std::future::pending::<std::io::Result<()>>().await
        };
        tokio::pin!(read);
        tokio::select! {
            answer = &mut read => answer,
            // A write fails once the gateway has answered and closed; the answer is still
            // there to read.
            _ = write => read.await,
        }
    };
    timeout(ANSWER_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 30 s".to_owned()))
}

/// Pipelines [`PIPELINED`] cache-hit requests through a 4 KiB receive buffer and reads the
/// answers 512 bytes per 40 ms, so the gateway's writes stall; returns the answers read and
/// the error that ended the reading early, if any.
async fn slow_reader(addr: SocketAddr) -> (Vec<Answer>, Option<TransportError>) {
    let mut answers = Vec::new();
    let exchange = async {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .set_recv_buffer_size(4096)
            .map_err(|e| e.to_string())?;
        let mut stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
        let mut requests = String::new();
        for i in 0..PIPELINED {
            requests.push_str(&head(GET_ALL_ROBOTS, 2, i + 1 == PIPELINED));
            requests.push_str("{}");
        }
        stream
            .write_all(requests.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        while answers.len() < PIPELINED {
            sleep(Duration::from_millis(40)).await;
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before every pipelined answer".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
            let (parsed, used) = parse_answers(&buf)?;
            answers.extend(parsed);
            buf.drain(..used);
        }
        Ok(())
    };
    let error = match timeout(Duration::from_secs(60), exchange).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(_) => Some("pipelined answers not read within 60 s".to_owned()),
    };
    (answers, error)
}

/// One vanishing client, of four kinds in turn.
async fn vanish(addr: SocketAddr, tick: u64) -> Result<(), TransportError> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let bytes = match tick % 4 {
        // Part of the head.
        0 => head(GET_ALL_ROBOTS, 2, true)[..40].to_owned(),
        // The head and part of the body.
        1 => head(GET_ALL_ROBOTS, 100, true) + r#"{"k":"#,
        // A full cache miss: the fetch runs on while nobody waits for it.
        2 => {
            let body = format!(r#"{{"vanish":{tick}}}"#);
            head(GET_ALL_ROBOTS, body.len(), true) + &body
        }
        // A full write (to the writer app, like the write class), then a reset: the write
        // may or may not reach Tencent.
        _ => {
            let body = format!(r#"{{"UserID":"@RBT#soakgone{}"}}"#, tick % 16);
            head(&format!("{WRITER_APP}{CREATE_ROBOT}"), body.len(), true) + &body
        }
    };
    // A write error means the gateway already closed: the client vanished either way.
    let _ = stream.write_all(bytes.as_bytes()).await;
    sleep(Duration::from_millis(rand::random_range(0..50))).await;
    if tick % 4 == 3 {
        // SO_LINGER 0: close() sends a RST instead of a FIN.
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
    drop(stream);
    Ok(())
}

/// Runs `job(tick)` `per_second` times a second until `stop`, each under a permit of `gate`;
/// when the gate is full, ticks are skipped rather than queued.
async fn ticker<F, Fut>(per_second: f64, stop: Instant, gate: Arc<Semaphore>, mut job: F)
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut tick = 0;
    loop {
        interval.tick().await;
        let permit = match timeout_at(stop, Arc::clone(&gate).acquire_owned()).await {
            Ok(Ok(permit)) if Instant::now() < stop => permit,
            _ => return,
        };
        let work = job(tick);
        tick += 1;
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

/// Creates the padding chatbots that make each get_all_robots answer about 4 KiB.
async fn create_padding(driver: &Driver) -> Result<(), String> {
    for i in 0..PADDING_ROBOTS {
        let body = format!(r#"{{"UserID":"@RBT#soakpad{i:020}"}}"#);
        let answer = driver.post(CREATE_ROBOT, body.into()).await?;
        if answer.status != 200 || answer.error_code != Some(0) {
            return Err(format!("creating a padding chatbot answered {answer:?}"));
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(Ok(addr)), Some(Ok(seconds))) = (
        args.next().map(|a| a.parse::<SocketAddr>()),
        args.next().map(|s| s.parse::<u64>()),
    ) else {
        eprintln!("usage: soak GATEWAY_ADDR SECONDS");
        return std::process::ExitCode::from(2);
    };
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(THROTTLE_BURST * THROTTLE_CONCURRENCY + CONCURRENCY)
        .build_http();
    let mut driver = Driver {
        addr,
        client,
        counts: Counts::default(),
        started: Instant::now(),
    };
    if let Err(error) = create_padding(&driver).await {
        eprintln!("soak: setup failed: {error}");
        return std::process::ExitCode::FAILURE;
    }
    driver.started = Instant::now();
    let driver = Arc::new(driver);
    let stop = driver.started + Duration::from_secs(seconds);

    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let slow_gate = Arc::new(Semaphore::new(SLOW_CONCURRENCY));
    let vanish_gate = Arc::new(Semaphore::new(VANISH_CONCURRENCY));
    let throttle_gate = Arc::new(Semaphore::new(THROTTLE_CONCURRENCY));
    let d = &driver;
    let tickers = vec![
        tokio::spawn(ticker(HIT_PER_SECOND, stop, Arc::clone(&gate), {
            let d = Arc::clone(d);
            move |_| {
                let d = Arc::clone(&d);
                async move {
                    d.send(Class::Hit, GET_ALL_ROBOTS, Bytes::from_static(b"{}"))
                        .await
                }
            }
        })),
        tokio::spawn(ticker(MISS_PER_SECOND, stop, Arc::clone(&gate), {
            let d = Arc::clone(d);
            move |_| {
                let d = Arc::clone(&d);
                async move { d.send(Class::Miss, GET_ALL_ROBOTS, d.miss_body()).await }
            }
        })),
        tokio::spawn(ticker(WRITE_PER_SECOND, stop, Arc::clone(&gate), {
            let d = Arc::clone(d);
            move |tick| {
                let d = Arc::clone(&d);
                async move { d.write(tick).await }
            }
        })),
        tokio::spawn(ticker(BAD_BODY_PER_SECOND, stop, Arc::clone(&gate), {
            let d = Arc::clone(d);
            move |tick| {
                let d = Arc::clone(&d);
                async move { d.bad_body(tick).await }
            }
        })),
        tokio::spawn(ticker(SLOW_PER_SECOND, stop, Arc::clone(&slow_gate), {
            let d = Arc::clone(d);
            move |tick| {
                let d = Arc::clone(&d);
                async move { d.slow(tick).await }
            }
        })),
        tokio::spawn(ticker(VANISH_PER_SECOND, stop, Arc::clone(&vanish_gate), {
            let d = Arc::clone(d);
            move |tick| {
                let d = Arc::clone(&d);
                async move { d.vanish(tick).await }
            }
        })),
        tokio::spawn(ticker(1.0, stop, Arc::clone(&throttle_gate), {
            let d = Arc::clone(d);
            move |_| Arc::clone(&d).throttle_burst()
        })),
    ];

    // The report: one line every REPORT_EVERY until the traffic stops.
    let mut next_report = driver.started + REPORT_EVERY;
    while next_report < stop {
        tokio::time::sleep_until(next_report).await;
        println!("{}", driver.counts.line(driver.started.elapsed(), false));
        next_report += REPORT_EVERY;
    }
    for ticker in tickers {
        // A ticker only spawns work; it cannot panic short of a bug in the driver.
        let _ = ticker.await;
    }
    // Every permit back means every request of that class has ended.
    let drained = timeout(DRAIN_TIMEOUT, async {
        let _all = gate.acquire_many(CONCURRENCY as u32).await;
        let _all = slow_gate.acquire_many(SLOW_CONCURRENCY as u32).await;
        let _all = vanish_gate.acquire_many(VANISH_CONCURRENCY as u32).await;
        let _all = throttle_gate
            .acquire_many(THROTTLE_CONCURRENCY as u32)
            .await;
    })
    .await;
    if drained.is_err() {
        eprintln!("soak: some requests were still in flight after {DRAIN_TIMEOUT:?}");
    }
    println!("{}", driver.counts.line(driver.started.elapsed(), true));
    std::process::ExitCode::SUCCESS
}
