//! The access log's layouts (against tracing-subscriber's own output), its timestamps, and
//! when batches are handed over.

use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;

use super::encode::civil_from_days;
use super::*;

/// 2026-11-30T18:35:38.123456Z.
const NOW_TEXT: &str = "2026-11-30T18:35:38.123456Z";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(1_796_063_738_123_456)
}

const HIT: AccessLine<'static> = AccessLine {
    request_id: "ab12",
    method: None,
    path: None,
    app: "main",
    command: Some("openim_robot_http_svc/get_all_robots"),
    cache: Some("HIT"),
    status: 200,
    error_code: Some(0),
    latency_us: 12,
    error: None,
};

const REFUSED: AccessLine<'static> = AccessLine {
    request_id: "my\"id",
    method: Some("POST"),
    path: Some("/v4/openim_robot_http_svc/nope"),
    app: "-",
    command: Some("-"),
    cache: Some("BYPASS"),
    status: 404,
    error_code: Some(1_904_003),
    latency_us: 15,
    error: Some("command openim_robot_http_svc/nope is not in the gateway's catalogue"),
};

/// The 499 line: no command, cache or error code.
const HUNG_UP: AccessLine<'static> = AccessLine {
    request_id: "c0ffee",
    method: None,
    path: None,
    app: "main",
    command: None,
    cache: None,
    status: 499,
    error_code: None,
    latency_us: 7,
    error: Some("the client closed the connection before the answer"),
};

fn encode(format: Format, line: &AccessLine<'_>) -> String {
    let mut out = Vec::new();
    Encoder::new(format).encode(line, now(), &mut out);
    String::from_utf8(out).unwrap()
}

const HUMAN: Format = Format::Human { is_ansi: false };

/// Both layouts, byte for byte, for a hit, a refused request and a hang-up.
#[test]
fn lines_are_laid_out_as_tracing_lays_them_out() {
    let cases: [(Format, &AccessLine<'_>, &str); 6] = [
        (
            HUMAN,
            &HIT,
            "2026-11-30T18:35:38.123456Z  INFO tim_gateway::access: request request_id=ab12 app=main command=openim_robot_http_svc/get_all_robots cache=HIT status=200 error_code=0 latency_us=12\n",
        ),
        (
            HUMAN,
            &REFUSED,
            "2026-11-30T18:35:38.123456Z  INFO tim_gateway::access: request request_id=\"my\\\"id\" method=POST path=/v4/openim_robot_http_svc/nope app=- command=- cache=BYPASS status=404 error_code=1904003 latency_us=15 error=\"command openim_robot_http_svc/nope is not in the gateway's catalogue\"\n",
        ),
        (
            HUMAN,
            &HUNG_UP,
            "2026-11-30T18:35:38.123456Z  INFO tim_gateway::access: request request_id=c0ffee app=main status=499 latency_us=7 error=\"the client closed the connection before the answer\"\n",
        ),
        (
            Format::Json,
            &HIT,
            r#"{"timestamp":"2026-11-30T18:35:38.123456Z","level":"INFO","message":"request","request_id":"ab12","app":"main","command":"openim_robot_http_svc/get_all_robots","cache":"HIT","status":200,"error_code":0,"latency_us":12,"target":"tim_gateway::access"}"#,
        ),
        (
            Format::Json,
            &REFUSED,
            r#"{"timestamp":"2026-11-30T18:35:38.123456Z","level":"INFO","message":"request","request_id":"my\"id","method":"POST","path":"/v4/openim_robot_http_svc/nope","app":"-","command":"-","cache":"BYPASS","status":404,"error_code":1904003,"latency_us":15,"error":"command openim_robot_http_svc/nope is not in the gateway's catalogue","target":"tim_gateway::access"}"#,
        ),
        (
            Format::Json,
            &HUNG_UP,
            r#"{"timestamp":"2026-11-30T18:35:38.123456Z","level":"INFO","message":"request","request_id":"c0ffee","app":"main","status":499,"latency_us":7,"error":"the client closed the connection before the answer","target":"tim_gateway::access"}"#,
        ),
    ];
    for (format, line, expected) in cases {
        let expected = if format == Format::Json {
            format!("{expected}\n")
        } else {
            expected.to_owned()
        };
        assert_eq!(encode(format, line), expected, "{format:?} {line:?}");
    }
}

/// A logfmt value is bare only when nothing in it could end a field or a line; quoted ones
/// escape `"`, `\` and every control character, C1 and DEL included.
#[test]
fn logfmt_values_are_quoted_and_escaped_when_needed() {
    let cases = [
        ("main", "main"),
        (
            "openim_robot_http_svc/get_all_robots",
            "openim_robot_http_svc/get_all_robots",
        ),
        ("", r#""""#),
        ("a b", r#""a b""#),
        ("a=b", r#""a=b""#),
        (r#"a"b"#, r#""a\"b""#),
        (r"a\b", r#""a\\b""#),
        ("a\nb\r\tc", r#""a\nb\r\tc""#),
        ("\x1b[31mred", r#""\u001b[31mred""#),
        ("\x00\x08\x0c\x1f\x7f", r#""\u0000\b\f\u001f\u007f""#),
        ("caf\u{e9}", "\"caf\u{e9}\""),
        ("\u{85}\u{9b}\u{a0}", "\"\\u0085\\u009b\u{a0}\""),
    ];
    for (value, expected) in cases {
        let line = AccessLine {
            error: Some(value),
            ..HUNG_UP
        };
        let text = encode(HUMAN, &line);
        let written = text
            .strip_suffix('\n')
            .and_then(|t| t.split_once(" error="))
            .map(|(_, v)| v);
        assert_eq!(written, Some(expected), "{value:?}");
        assert_eq!(text.matches('\n').count(), 1, "one line for {value:?}");
    }
}

/// JSON strings are escaped exactly as serde_json (tracing's JSON writer) escapes them.
#[test]
fn json_strings_are_escaped_as_serde_json_escapes_them() {
    let mut values: Vec<String> = (0u8..0x80).map(|b| format!("x{}y", b as char)).collect();
    values.extend(
        ["", "caf\u{e9}", "\u{85}\u{2028}", "\u{1f600}", r#"\"\\"#]
            .iter()
            .map(|s| s.to_string()),
    );
    for value in values {
        let line = AccessLine {
            error: Some(&value),
            ..HUNG_UP
        };
        let text = encode(Format::Json, &line);
        let expected = format!(r#""error":{},"#, serde_json::to_string(&value).unwrap());
        assert!(text.contains(&expected), "{value:?}: {text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["error"], value.as_str());
    }
}

/// Our JSON line is the one tracing's `.json().flatten_event(true)` writes for the same
/// event, and the fallback (no sink installed) writes through tracing.
#[test]
fn json_line_equals_tracing_json_line() {
    let odd = AccessLine {
        error: Some("quote \" backslash \\ newline \n escape \x1b caf\u{e9}"),
        ..REFUSED
    };
    for line in [HIT, REFUSED, HUNG_UP, odd] {
        assert_eq!(
            through_tracing(Format::Json, &line),
            encode(Format::Json, &line),
            "{line:?}"
        );
    }
}

/// The human line starts as tracing's does, with and without colours, and has the same
/// keys in the same order (tracing quotes every string; logfmt only those that need it).
#[test]
fn human_line_matches_tracing_human_line() {
    for is_ansi in [false, true] {
        let format = Format::Human { is_ansi };
        for line in [HIT, REFUSED, HUNG_UP] {
            let ours = encode(format, &line);
            let theirs = through_tracing(format, &line);
            let head = |text: &str| text.split_once(" request ").unwrap().0.to_owned();
            assert_eq!(head(&ours), head(&theirs), "{format:?}");
            let keys = |text: &str| -> Vec<String> {
                let reset = if is_ansi { "\x1b[0m" } else { "=" };
                text.split_once(" request ")
                    .unwrap()
                    .1
                    .split(' ')
                    .filter_map(|field| {
                        let field = field.strip_prefix("\x1b[3m").unwrap_or(field);
                        field.split_once(reset).map(|(k, _)| k.to_owned())
                    })
                    .filter(|k| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
                    .collect()
            };
            assert_eq!(keys(&ours), keys(&theirs), "{format:?} {line:?}");
            if is_ansi {
                let status = format!("\x1b[3mstatus\x1b[0m\x1b[2m=\x1b[0m{}", line.status);
                assert!(ours.contains(&status) && theirs.contains(&status));
            }
        }
    }
}

/// What tracing-subscriber writes for `line` through [`write`]'s fallback, at [`NOW_TEXT`].
fn through_tracing(format: Format, line: &AccessLine<'_>) -> String {
    struct FixedTime;
    impl FormatTime for FixedTime {
        fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
            w.write_str(NOW_TEXT)
        }
    }
    let captured = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_timer(FixedTime)
        .with_max_level(tracing::Level::INFO);
    match format {
        Format::Human { is_ansi } => {
            let subscriber = builder.with_ansi(is_ansi).finish();
            tracing::subscriber::with_default(subscriber, || write(line));
        }
        Format::Json => {
            let subscriber = builder.json().flatten_event(true).finish();
            tracing::subscriber::with_default(subscriber, || write(line));
        }
    }
    assert!(
        SINK.get().is_none(),
        "unit tests never install the global sink"
    );
    captured.messages().concat()
}

/// Timestamps match humantime's RFC 3339 (the layout tracing's default timer writes) across
/// leap days, century years and second boundaries, reusing the cached second correctly.
#[test]
fn timestamps_match_rfc3339_across_the_calendar() {
    let mut encoder = Encoder::new(Format::Json);
    let known: [(u64, &str); 6] = [
        (0, "1970-01-01T00:00:00"),
        (94_608_000, "1972-12-31T00:00:00"),
        (951_782_400, "2000-02-29T00:00:00"),
        (1_709_164_799, "2024-02-28T23:59:59"),
        (4_107_542_400, "2100-03-01T00:00:00"),
        (253_402_300_799, "9999-12-31T23:59:59"),
    ];
    for (second, date) in known {
        let at = UNIX_EPOCH + Duration::from_secs(second);
        assert_eq!(stamp(&mut encoder, at), format!("{date}.000000Z"));
    }
    // Every ten days or so (at a different time of day each) over 400 years from 1970, each
    // at two instants of one second and one of the next: the cached second is reused within
    // a second and replaced across one.
    for second in (0..400 * 366 * 86_400).step_by(863_999) {
        for micros in [0, 999_999, 1_000_000] {
            let at = UNIX_EPOCH + Duration::from_secs(second) + Duration::from_micros(micros);
            let expected = humantime::format_rfc3339_micros(at).to_string();
            assert_eq!(stamp(&mut encoder, at), expected, "{second}");
        }
    }
    // A clock before 1970 or past 9999 stamps the nearest representable instant.
    assert!(stamp(&mut encoder, UNIX_EPOCH - Duration::from_secs(5)).starts_with("1970-01-01"));
    let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
    assert!(stamp(&mut encoder, far).starts_with("9999-12-31T23:59:59."));
}

fn stamp(encoder: &mut Encoder, at: SystemTime) -> String {
    let mut out = Vec::new();
    encoder.encode(&HUNG_UP, at, &mut out);
    let text = String::from_utf8(out).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["timestamp"].as_str().unwrap().to_owned()
}

/// The civil date of every day from 1970 to 2400 agrees with humantime's.
#[test]
fn civil_dates_agree_with_humantime() {
    for day in 0..(2400 - 1970) * 366 {
        let (year, month, date) = civil_from_days(day);
        let expected =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(day * 86_400))
                .to_string();
        assert_eq!(
            format!("{year:04}-{month:02}-{date:02}"),
            expected[..10],
            "day {day}"
        );
    }
}

/// Each hand-over as one entry, as the writer thread's channel would get it.
#[derive(Debug, Clone, Default)]
struct Captured(Arc<Mutex<Vec<Vec<u8>>>>);

impl Captured {
    fn messages(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|m| String::from_utf8(m.clone()).unwrap())
            .collect()
    }

    /// Waits (at most 5 s) until `n` messages have arrived.
    fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.0.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "{:?}", self.messages());
            std::thread::sleep(Duration::from_millis(5));
        }
        self.messages()
    }
}

impl HandOver for Captured {
    fn hand_over(&mut self, lines: &[u8]) {
        self.0.lock().unwrap().push(lines.to_vec());
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn line_with_id(id: &str) -> AccessLine<'_> {
    AccessLine {
        request_id: id,
        ..HIT
    }
}

/// Lines wait in the batch until it holds `BATCH_BYTES`, then go as one message.
#[test]
fn a_full_batch_is_handed_over_as_one_message() {
    let out = Captured::default();
    let mut batch = Batch::new(HUMAN, out.clone());
    let line_len = encode(HUMAN, &HIT).len();
    let lines = BATCH_BYTES.div_ceil(line_len);
    for _ in 0..lines - 1 {
        batch.push(&HIT, now(), false);
    }
    assert!(out.messages().is_empty(), "held below BATCH_BYTES");
    batch.push(&HIT, now(), false);
    let messages = out.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].lines().count(), lines);
    assert!(batch.lines.is_empty());
    batch.hand_over();
    assert_eq!(out.messages().len(), 1, "an empty batch sends nothing");
}

/// A line added when the batch's first line is `MAX_BATCH_AGE` old hands the batch over;
/// so does a clock that stepped backwards, and `is_immediate`.
#[test]
fn an_old_batch_is_handed_over_when_a_line_is_added() {
    let out = Captured::default();
    let mut batch = Batch::new(HUMAN, out.clone());
    let start = now();
    batch.push(&line_with_id("one"), start, false);
    batch.push(
        &line_with_id("two"),
        start + MAX_BATCH_AGE - Duration::from_micros(1),
        false,
    );
    assert!(out.messages().is_empty());
    batch.push(&line_with_id("three"), start + MAX_BATCH_AGE, false);
    let messages = out.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].lines().count(), 3);

    batch.push(&line_with_id("four"), start, false);
    batch.push(&line_with_id("five"), start - Duration::from_secs(1), false);
    assert_eq!(out.messages().len(), 2, "a clock stepped back hands over");

    batch.push(&line_with_id("six"), start, true);
    assert_eq!(out.messages().len(), 3, "is_immediate hands over");
    assert!(out.messages()[2].contains("request_id=six"));
}

/// A sink of our own (the global one is never installed in unit tests), writing to a
/// captured writer thread.
fn test_sink() -> (&'static Sink, Captured, WorkerGuard) {
    let captured = Captured::default();
    let (writer, guard) = NonBlocking::new(captured.clone());
    let sender = Backlog::new().sender(writer);
    let sink: &'static Sink = Box::leak(Box::new(Sink::new(sender, HUMAN, true)));
    (sink, captured, guard)
}

/// A sweep hands over the lines of a thread that went quiet; a thread's lines are also
/// handed over when it exits.
#[test]
fn a_sweep_and_thread_exit_hand_lines_over() {
    let (sink, captured, _guard) = test_sink();
    let (parked_tx, parked_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let quiet = std::thread::spawn(move || {
        sink.write_at(&line_with_id("quiet"), now());
        parked_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        assert_eq!(held_bytes(sink), 0, "the sweep emptied this thread's batch");
        sink.write_at(&line_with_id("exiting-1"), now());
        sink.write_at(&line_with_id("exiting-2"), now());
    });
    parked_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        captured.messages().is_empty(),
        "the quiet thread still holds its line"
    );
    sink.sweep();
    let messages = captured.wait_for(1);
    assert!(messages[0].contains("request_id=quiet"), "{messages:?}");
    go_tx.send(()).unwrap();
    quiet.join().unwrap();
    let messages = captured.wait_for(2);
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].lines().count(), 2, "both lines in one message");
}

/// Bytes this thread's batch holds for `sink`.
fn held_bytes(sink: &'static Sink) -> usize {
    LOCAL.with(|local| {
        let local = local.get().expect("this thread wrote a line");
        assert!(std::ptr::eq(local.sink, sink));
        lock(&local.batch).lines.len()
    })
}

/// Dropping the `FlushGuard` hands over what live threads hold, and every later line goes
/// out at once.
#[test]
fn flush_guard_hands_over_live_threads_and_ends_batching() {
    let (sink, captured, _guard) = test_sink();
    let (wrote_tx, wrote_rx) = mpsc::channel();
    let (next_tx, next_rx) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        sink.write_at(&line_with_id("before-close"), now());
        wrote_tx.send(()).unwrap();
        next_rx.recv().unwrap();
        sink.write_at(&line_with_id("after-close"), now());
        wrote_tx.send(()).unwrap();
        next_rx.recv().unwrap();
    });
    wrote_rx.recv().unwrap();
    drop(FlushGuard { sink });
    let messages = captured.wait_for(1);
    assert!(messages[0].contains("request_id=before-close"));
    next_tx.send(()).unwrap();
    wrote_rx.recv().unwrap();
    let messages = captured.wait_for(2);
    assert!(
        messages[1].contains("request_id=after-close"),
        "not batched after close"
    );
    next_tx.send(()).unwrap();
    thread.join().unwrap();
}

/// Access batches stop at `MAX_BACKLOG_BYTES` waiting and are counted; the writer thread's
/// flush (its channel is empty) clears the count, and the next batch reports the drops.
#[test]
fn backlog_bound_drops_access_batches_and_reports_them() {
    let backlog = Backlog::new();
    let captured = Captured::default();
    // This writer thread writes straight to `captured`, not through `backlog.output`, so
    // nothing leaves the backlog until the test says so.
    let (writer, _guard) = NonBlocking::new(captured.clone());
    let mut sender = backlog.sender(writer);
    let batch = vec![b'x'; 1 << 20];
    let mut batch_of_lines = batch.clone();
    batch_of_lines[..4].copy_from_slice(b"a\nb\n");
    for _ in 0..MAX_BACKLOG_BYTES >> 20 {
        sender.send_batch(&batch);
    }
    assert_eq!(backlog.bytes(), MAX_BACKLOG_BYTES);
    sender.send_batch(&batch_of_lines);
    assert_eq!(backlog.bytes(), MAX_BACKLOG_BYTES, "dropped, not sent");
    captured.wait_for(16);

    let mut output = backlog.output(io::sink());
    io::Write::write_all(&mut output, &batch).unwrap();
    assert_eq!(backlog.bytes(), MAX_BACKLOG_BYTES - (1 << 20));
    io::Write::flush(&mut output).unwrap();
    assert_eq!(backlog.bytes(), 0);
    io::Write::write_all(&mut output, b"more than is counted").unwrap();
    assert_eq!(backlog.bytes(), 0, "saturates at zero");

    let warned = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(warned.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || sender.send_batch(b"fits\n"));
    assert_eq!(backlog.bytes(), 5);
    let warning = warned.messages().concat();
    assert!(
        warning.contains("WARN") && warning.contains("dropped_lines=2"),
        "{warning}"
    );
    // tracing's own lines are counted, never held back.
    io::Write::write_all(&mut sender, &batch).unwrap();
    assert_eq!(backlog.bytes(), 5 + (1 << 20));
}
