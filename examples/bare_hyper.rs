//! The benchmark's anchor: a bare hyper 1.x HTTP/1.1 server that answers every request with
//! the same bytes (the gateway's cached get_all_robots answer), using the same listener
//! setup as the gateway. `cargo run --release --example bare_hyper -- ADDR BODY_FILE`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18081".into());
    let body_file = args.next().expect("usage: bare_hyper ADDR BODY_FILE");
    let body = Bytes::from(std::fs::read(body_file)?);
    let addr = addr.parse().expect("a socket address");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tim_gateway::server::bind(addr)?;
            let body = Arc::new(body);
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let body = Arc::clone(&body);
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        let mut response = Response::new(Full::new((*body).clone()));
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
}
