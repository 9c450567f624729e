use super::*;

#[test]
fn framing_headers_are_read_strictly() {
    let header = |name: &'static str, value: &'static str| httparse::Header {
        name,
        value: value.as_bytes(),
    };
    let meta = inspect(&[header("Content-Length", "12")], Version::HTTP_11).unwrap();
    assert_eq!(meta.framing, Framing::Length(12));
    assert!(meta.keep_alive);
    let meta = inspect(
        &[
            header("transfer-encoding", "Chunked"),
            header("Expect", "100-Continue"),
        ],
        Version::HTTP_11,
    )
    .unwrap();
    assert_eq!(meta.framing, Framing::Chunked);
    assert!(meta.expect_continue);
    let meta = inspect(&[header("Connection", "keep-alive")], Version::HTTP_10).unwrap();
    assert!(meta.keep_alive);
    assert!(!inspect(&[], Version::HTTP_10).unwrap().keep_alive);
    assert!(
        !inspect(&[header("connection", "Upgrade, close")], Version::HTTP_11)
            .unwrap()
            .keep_alive
    );
    for (headers, reason) in [
        (
            vec![header("Content-Length", "1"), header("content-length", "2")],
            "the Content-Length headers disagree",
        ),
        (
            vec![header("Content-Length", "-1")],
            "Content-Length is not a number",
        ),
        (
            vec![header("Content-Length", "1, 1")],
            "Content-Length is not a number",
        ),
        (
            vec![header("Transfer-Encoding", "gzip, chunked")],
            "only Transfer-Encoding: chunked is supported",
        ),
        (
            vec![
                header("Transfer-Encoding", "chunked"),
                header("Transfer-Encoding", "chunked"),
            ],
            "only Transfer-Encoding: chunked is supported",
        ),
        (
            vec![
                header("Transfer-Encoding", "chunked"),
                header("Content-Length", "3"),
            ],
            "both Transfer-Encoding and Content-Length are set",
        ),
    ] {
        assert_eq!(inspect(&headers, Version::HTTP_11).unwrap_err(), reason);
    }
    assert_eq!(
        inspect(&[header("Transfer-Encoding", "chunked")], Version::HTTP_10).unwrap_err(),
        "HTTP/1.0 has no Transfer-Encoding"
    );
}

mod wire {
    //! The driver over real sockets on 127.0.0.1, with a handler that echoes what it got.

    use std::net::SocketAddr;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::super::*;
    use crate::server::{bind, run, Limits, DEFAULT_WRITE_TIMEOUT, HEADER_READ_TIMEOUT};

    /// `/now` is answered by `answer_now`; anything else by `handle`, which answers
    /// `METHOD PATH BODY` (`/big`: 100,000 bytes of `x`).
    struct Echo;

    impl Handler for Echo {
        async fn handle(self: Arc<Self>, request: Request<ClientBody>) -> Response<Full<Bytes>> {
            let (parts, body) = request.into_parts();
            if parts.uri.path() == "/big" {
                return Response::new(Full::new(Bytes::from(vec![b'x'; 100_000])));
            }
            let body = match body.collect().await {
                Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                Err(error) => format!("broken: {error}"),
            };
            let text = format!("{} {} {body}", parts.method, parts.uri.path());
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response
                .headers_mut()
                .insert("x-handler", HeaderValue::from_static("handle"));
            response
        }

        fn answer_now(&self, request: &RawRequest<'_>, answer: &mut Answer<'_>) -> bool {
            if request.path() != "/now" {
                return false;
            }
            answer.status(http::StatusCode::OK);
            answer.header("x-handler", b"now");
            answer.body(Bytes::copy_from_slice(request.body));
            true
        }
    }

    fn start() -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 16,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            grace: std::time::Duration::from_secs(5),
            header_read_timeout: HEADER_READ_TIMEOUT,
        };
        tokio::spawn(run(
            listener,
            Arc::new(Echo),
            std::future::pending(),
            limits,
        ));
        addr
    }

    /// Everything the server sends until it closes, with the `date` lines taken out.
    async fn until_closed(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        without_dates(&answer)
    }

    fn without_dates(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes)
            .split_inclusive("\r\n")
            .filter(|line| !line.starts_with("date: "))
            .collect()
    }

    /// Pipelined requests, one of each path, in one write: answered in order, the last one
    /// (`connection: close`) closing the connection.
    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let addr = start();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                b"POST /now HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}\
                  POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc\
                  GET /now HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        assert_eq!(
            until_closed(&mut stream).await,
            "HTTP/1.1 200 OK\r\nx-handler: now\r\ncontent-length: 2\r\n\r\n{}\
             HTTP/1.1 200 OK\r\nx-handler: handle\r\ncontent-length: 14\r\n\r\nPOST /echo abc\
             HTTP/1.1 200 OK\r\nx-handler: now\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    /// A chunked body, sent a few bytes at a time, with an extension and a trailer; then the
    /// connection serves the next request.
    #[tokio::test]
    async fn chunked_bodies_reach_the_handler_whole() {
        let addr = start();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request: &[u8] =
            b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
            5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n\
            GET /now HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
        for piece in request.chunks(7) {
            stream.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(
            until_closed(&mut stream).await,
            "HTTP/1.1 200 OK\r\nx-handler: handle\r\ncontent-length: 22\r\n\r\nPOST /echo hello world\
             HTTP/1.1 200 OK\r\nx-handler: now\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    /// A body larger than the read buffer streams through; `Expect: 100-continue` gets its
    /// interim answer first.
    #[tokio::test]
    async fn large_bodies_stream_and_expect_continue_is_answered() {
        let addr = start();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let body = "b".repeat(100_000);
        stream
            .write_all(
                format!(
                    "PUT /echo HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut interim = [0u8; 25];
        stream.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.write_all(body.as_bytes()).await.unwrap();
        assert_eq!(
            until_closed(&mut stream).await,
            format!(
                "HTTP/1.1 200 OK\r\nx-handler: handle\r\ncontent-length: {}\r\nconnection: close\r\n\r\nPUT /echo {body}",
                body.len() + 10
            )
        );
    }

    /// Large answers go out whole (head and body in one vectored write); HTTP/1.0 closes
    /// unless it asks for keep-alive, and HEAD gets the length without the body.
    #[tokio::test]
    async fn large_answers_http_1_0_and_head() {
        let addr = start();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /big HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut stream).await;
        assert_eq!(
            answer,
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\nconnection: close\r\n\r\n{}",
                "x".repeat(100_000)
            )
        );
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                b"HEAD /big HTTP/1.0\r\nconnection: keep-alive\r\n\r\n\
                  GET /now HTTP/1.1\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        assert_eq!(
            until_closed(&mut stream).await,
            "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\nconnection: keep-alive\r\n\r\n\
             HTTP/1.1 200 OK\r\nx-handler: now\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    /// Malformed requests are answered (the handler's `refuse`) and the connection closes.
    #[tokio::test]
    async fn malformed_requests_are_refused_and_closed() {
        let addr = start();
        for (request, answer) in [
            (
                &b"POST /echo HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"[..],
                "HTTP/1.1 400 Bad Request\r\ncontent-length: 49\r\nconnection: close\r\n\r\nboth Transfer-Encoding and Content-Length are set",
            ),
            (
                b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "HTTP/1.1 200 OK\r\nx-handler: handle\r\ncontent-length: 42\r\nconnection: close\r\n\r\nPOST /echo broken: a chunk size is missing",
            ),
            (
                b"GET / HTTP/2.0\r\n\r\n",
                "HTTP/1.1 400 Bad Request\r\ncontent-length: 34\r\nconnection: close\r\n\r\nthe HTTP version is not 1.0 or 1.1",
            ),
            (
                b"GET /\x01 HTTP/1.1\r\n\r\n",
                "HTTP/1.1 400 Bad Request\r\ncontent-length: 39\r\nconnection: close\r\n\r\nthe method or request target is invalid",
            ),
        ] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request).await.unwrap();
            assert_eq!(until_closed(&mut stream).await, answer, "{:?}", String::from_utf8_lossy(request));
        }
    }

    /// A client that closes mid-body: the handler sees a broken body, not a short one.
    #[tokio::test]
    async fn a_body_cut_short_is_broken() {
        let addr = start();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(
            until_closed(&mut stream).await,
            "HTTP/1.1 200 OK\r\nx-handler: handle\r\ncontent-length: 60\r\nconnection: close\r\n\r\nPOST /echo broken: the client closed the connection mid-body"
        );
    }

    /// Bytes go out without the `date` line only in these tests: every answer has one.
    #[tokio::test]
    async fn every_answer_has_a_date() {
        let addr = start();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /now HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let date = answer
            .lines()
            .find_map(|l| l.strip_prefix("date: "))
            .unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{answer}");
    }
}
