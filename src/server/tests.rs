use super::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Answers `/slow` after `slow` (paused time), `/big` with [`BIG`] bytes (more than the
/// sockets' buffers hold), everything else at once with `ok`.
struct TestHandler {
    slow: Duration,
    /// Told each time a `/slow` request reaches the handler.
    entered: Arc<Notify>,
}

impl Handler for TestHandler {
    async fn handle(self: Arc<Self>, request: Request<ClientBody>) -> Response<Full<Bytes>> {
        if request.uri().path() == "/slow" {
            self.entered.notify_one();
            tokio::time::sleep(self.slow).await;
        }
        if request.uri().path() == "/big" {
            self.entered.notify_one();
            return Response::new(Full::new(Bytes::from(vec![b'x'; BIG])));
        }
        Response::new(Full::new(Bytes::from_static(b"ok")))
    }
}

/// `/big`'s length: above what loopback's send and receive buffers hold together (a few MiB
/// each), so its write waits for the client.
const BIG: usize = 32 << 20;

/// A server on 127.0.0.1:0 with `limits`, and the switch that stops it.
struct Running {
    addr: SocketAddr,
    stop: Arc<Notify>,
    entered: Arc<Notify>,
    task: tokio::task::JoinHandle<bool>,
}

fn start(limits: Limits, slow: Duration) -> Running {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(Notify::new());
    let shutdown = {
        let stop = Arc::clone(&stop);
        async move { stop.notified().await }
    };
    let entered = Arc::new(Notify::new());
    let task = tokio::spawn(run(
        listener,
        Arc::new(TestHandler {
            slow,
            entered: Arc::clone(&entered),
        }),
        shutdown,
        limits,
    ));
    Running {
        addr,
        stop,
        entered,
        task,
    }
}

fn limits(max_connections: usize) -> Limits {
    Limits {
        max_connections,
        write_timeout: DEFAULT_WRITE_TIMEOUT,
        grace: Duration::from_secs(60),
        header_read_timeout: HEADER_READ_TIMEOUT,
    }
}

/// Sends `GET /slow` and returns once the handler has it. Waiting on the handler, not on
/// time: under paused time a sleep can end before the socket has carried the request.
async fn slow_request_in_handler(server: &Running) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    server.entered.notified().await;
    stream
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n";

/// Sends one keep-alive request and reads its whole answer (a 2-byte body).
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    read_answer(stream).await
}

/// Reads one whole answer (its body is `ok`).
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(answer).unwrap()
}

/// Reproduces issue 7, F5: a client that stops reading its answer. The write fails with
/// `TimedOut` exactly `timeout` after it first stalled, not earlier and not never.
#[tokio::test(start_paused = true)]
async fn stalled_write_times_out_exactly() {
    let (near, _far) = tokio::io::duplex(64 * 1024);
    let watch = Connections::default().watch();
    let mut io = TimedWrites::new(near, Duration::from_secs(30), Arc::clone(&watch));
    let started = Instant::now();
    let answer = vec![b'x'; 5 * 1024 * 1024];
    let error = io.write_all(&answer).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert!(watch.is_writing());
}

/// Progress resets the timer: a slow reader that keeps taking data is never cut off.
#[tokio::test(start_paused = true)]
async fn progress_resets_the_write_timer() {
    let (near, mut far) = tokio::io::duplex(1024);
    let watch = Connections::default().watch();
    let mut io = TimedWrites::new(near, Duration::from_secs(30), Arc::clone(&watch));
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        let mut total = 0;
        // 20 s between reads: each below the timeout, their sum far above it.
        while total < 8 * 1024 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            total += far.read(&mut buf).await.unwrap();
        }
        total
    });
    io.write_all(&[b'y'; 8 * 1024]).await.unwrap();
    assert!(!watch.is_writing());
    assert_eq!(reader.await.unwrap(), 8 * 1024);
}

/// Reproduces issue 7, F6: at shutdown, an idle keep-alive connection and one with
/// half-sent headers close at once; the drain does not wait for them (no time passes).
#[tokio::test(start_paused = true)]
async fn drain_does_not_wait_for_connections_without_a_request() {
    let server = start(limits(16), Duration::ZERO);
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    exchange(&mut idle, GET).await;
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"POST /v4/a/b HTTP/1.1\r\nhost: 127.")
        .await
        .unwrap();
    let mut second_half = TcpStream::connect(server.addr).await.unwrap();
    exchange(&mut second_half, GET).await;
    second_half
        .write_all(b"POST /v4/a/b HTTP/1.1\r\nhost: 127.")
        .await
        .unwrap();
    // Let the server read those bytes (no timer is due before the header timeout).
    tokio::time::sleep(Duration::from_millis(1)).await;
    let started = Instant::now();
    server.stop.notify_one();
    assert!(server.task.await.unwrap(), "every connection finished");
    assert_eq!(started.elapsed(), Duration::ZERO);
    let mut buf = [0u8; 16];
    assert_eq!(
        half.read(&mut buf).await.unwrap(),
        0,
        "closed without an answer"
    );
    assert_eq!(second_half.read(&mut buf).await.unwrap(), 0);
    assert_eq!(idle.read(&mut buf).await.unwrap(), 0);
}

/// A request in the handler when shutdown starts is finished and answered, then its
/// connection closes; the drain takes exactly as long as that request.
#[tokio::test(start_paused = true)]
async fn drain_finishes_requests_in_flight() {
    let server = start(limits(16), Duration::from_secs(5));
    let mut busy = slow_request_in_handler(&server).await;
    let started = Instant::now();
    server.stop.notify_one();
    let mut answer = Vec::new();
    busy.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    assert!(server.task.await.unwrap());
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

/// A connection still writing its answer when shutdown starts (its client reads slowly) is
/// not cut off: the answer goes out whole, then the connection closes at once, without
/// waiting for another request until the grace period ends; the drain takes no time beyond
/// the client's reading.
#[tokio::test(start_paused = true)]
async fn drain_closes_a_connection_once_its_answer_is_written() {
    let server = start(limits(16), Duration::ZERO);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // The answer is on its way; 32 MiB cannot all fit in the sockets' buffers, so its write
    // waits for the client, which reads only after the stop order.
    server.entered.notified().await;
    let started = Instant::now();
    server.stop.notify_one();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&answer[..head_end]);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("content-length: {BIG}\r\n")),
        "{head}"
    );
    assert_eq!(answer.len() - head_end, BIG);
    assert!(answer[head_end..].iter().all(|&b| b == b'x'));
    assert!(server.task.await.unwrap(), "the drain completed");
    assert_eq!(started.elapsed(), Duration::ZERO);
}

/// At the cap, a further connection is not accepted (its request waits in the backlog, with
/// no answer however long) until a slot frees up; then it is served.
#[tokio::test(start_paused = true)]
async fn connections_past_the_cap_wait_for_a_slot() {
    let server = start(limits(2), Duration::ZERO);
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    exchange(&mut first, GET).await;
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    exchange(&mut second, GET).await;
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(GET).await.unwrap();
    let mut buf = [0u8; 64];
    let waited = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf)).await;
    assert!(waited.is_err(), "no answer while both slots are held");
    drop(first);
    assert!(read_answer(&mut third)
        .await
        .starts_with("HTTP/1.1 200 OK\r\n"));
}

/// Reproduces issue 7, F3 (memory): a header larger than the read buffer cap is refused with
/// 431 instead of being buffered (hyper's server, used before, buffered ~400 KB by default).
#[tokio::test]
async fn oversized_headers_are_refused() {
    let server = start(limits(16), Duration::ZERO);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: {}\r\n\r\n",
        "a".repeat(2 * MAX_BUF_BYTES)
    );
    // The server may answer and close before every byte is written.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
}

/// Failed accepts are logged once per interval; the rest are counted.
#[tokio::test(start_paused = true)]
async fn accept_errors_are_rate_limited() {
    let mut log = AcceptErrorLog::default();
    let error = io::Error::other("too many open files");
    log.record(&error);
    assert_eq!((log.suppressed, log.last_logged.is_some()), (0, true));
    for _ in 0..50 {
        log.record(&error);
    }
    assert_eq!(log.suppressed, 50);
    tokio::time::advance(ACCEPT_ERROR_LOG_INTERVAL).await;
    log.record(&error);
    assert_eq!(log.suppressed, 0);
}

/// A request still in the handler when the grace period ends is cancelled and its connection
/// dropped then, not left running: the drain reports `false` at exactly the grace period.
#[tokio::test(start_paused = true)]
async fn drain_cancels_requests_past_the_grace() {
    let server = start(
        Limits {
            grace: Duration::from_secs(2),
            ..limits(16)
        },
        Duration::from_secs(3600),
    );
    let mut busy = slow_request_in_handler(&server).await;
    let started = Instant::now();
    server.stop.notify_one();
    assert!(!server.task.await.unwrap(), "the drain did not complete");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    let mut buf = [0u8; 16];
    assert_eq!(
        busy.read(&mut buf).await.unwrap(),
        0,
        "dropped without an answer"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

/// A connection that sends nothing is closed at the listener's header timeout (the admin
/// listener's 5 s: silent peers cannot hold its reserve for long). The sweeper looks every
/// `TICK`: a connection accepted at the start of tick 0 is idle more than 5 whole ticks at the
/// sweep of tick 6, so it closes at exactly 6 s (between the timeout and one tick later).
#[tokio::test(start_paused = true)]
async fn silent_connections_close_at_the_header_timeout() {
    let server = start(
        Limits {
            header_read_timeout: ADMIN_HEADER_READ_TIMEOUT,
            ..limits(16)
        },
        Duration::ZERO,
    );
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    assert_eq!(
        silent.read(&mut buf).await.unwrap(),
        0,
        "closed without an answer"
    );
    assert_eq!(started.elapsed(), ADMIN_HEADER_READ_TIMEOUT + TICK);
}

/// The idle time of a keep-alive connection starts at its last answer: answered at 2.5 s
/// (tick 2), it closes at the sweep of tick 8, 5.5 s later.
#[tokio::test(start_paused = true)]
async fn idle_keep_alive_closes_after_the_timeout_from_its_last_answer() {
    let server = start(
        Limits {
            header_read_timeout: ADMIN_HEADER_READ_TIMEOUT,
            ..limits(16)
        },
        Duration::ZERO,
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(exchange(&mut stream, GET).await.starts_with("HTTP/1.1 200"));
    let mut buf = [0u8; 256];
    assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    assert_eq!(started.elapsed(), Duration::from_secs(8));
}

/// A request in the handler for longer than the header timeout keeps its connection: the
/// answer arrives at 60.5 s (tick 60), and the idle time starts then: closed at the sweep of
/// tick 66.
#[tokio::test(start_paused = true)]
async fn a_long_request_is_not_an_idle_connection() {
    let server = start(
        Limits {
            header_read_timeout: ADMIN_HEADER_READ_TIMEOUT,
            ..limits(16)
        },
        Duration::from_millis(60_500),
    );
    let started = Instant::now();
    let mut stream = slow_request_in_handler(&server).await;
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(started.elapsed(), Duration::from_millis(60_500));
    let mut buf = [0u8; 256];
    assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    assert_eq!(started.elapsed(), Duration::from_secs(66));
}
