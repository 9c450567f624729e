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
