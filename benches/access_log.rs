//! One access-log line: formatted by `access_log` (encoding alone, and the whole `write` with
//! batching and the hand-over to a tracing-appender writer thread) against the tracing event
//! it replaced, formatted by tracing-subscriber into the same kind of writer thread.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

use tim_gateway::access_log::{self, AccessLine, Backlog, Encoder, Format};

/// A cache hit's line, as `respond` writes it.
const HIT: AccessLine<'static> = AccessLine {
    request_id: "9340cb4fc3dd7271",
    method: None,
    path: None,
    app: "main",
    command: Some("openim_robot_http_svc/get_all_robots"),
    cache: Some("HIT"),
    status: 200,
    error_code: Some(0),
    latency_us: 40,
    error: None,
};

/// A writer thread like main.rs's, writing to nowhere.
fn writer() -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .buffered_lines_limit(64 * 1024)
        .lossy(true)
        .finish(std::io::sink())
}

fn encode(c: &mut Criterion) {
    let now = std::time::SystemTime::now();
    for (name, format) in [
        ("human", Format::Human { is_ansi: false }),
        ("json", Format::Json),
    ] {
        let mut encoder = Encoder::new(format);
        let mut out = Vec::with_capacity(1024);
        c.bench_function(&format!("access_line_encode_{name}"), |b| {
            b.iter(|| {
                out.clear();
                encoder.encode(black_box(&HIT), now, &mut out);
                out.len()
            })
        });
    }
}

fn tracing_path(c: &mut Criterion) {
    for name in ["human", "json"] {
        let (writer, _guard) = writer();
        let builder = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false);
        let dispatch = if name == "json" {
            tracing::Dispatch::new(builder.json().flatten_event(true).finish())
        } else {
            tracing::Dispatch::new(builder.finish())
        };
        tracing::dispatcher::with_default(&dispatch, || {
            c.bench_function(&format!("access_line_tracing_{name}"), |b| {
                b.iter(|| access_log::tracing_event(black_box(&HIT)))
            });
        });
    }
}

fn access_log_path(c: &mut Criterion) {
    let (writer, _guard) = writer();
    // A subscriber that enables the target, as main.rs's does; `install` asks it once.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let sender = Backlog::new().sender(writer);
        let _flush = access_log::install(sender, Format::Human { is_ansi: false })
            .expect("the only install in this process");
        c.bench_function("access_line_write_human", |b| {
            b.iter(|| access_log::write(black_box(&HIT)))
        });
    });
}

criterion_group!(benches, encode, tracing_path, access_log_path);
criterion_main!(benches);
