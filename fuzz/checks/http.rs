//! Checks of the gateway's HTTP/1.1 request framing (`tim_gateway::server::framing`) on one
//! arbitrary input, shared by the `http` fuzz target and the corpus replay in
//! `tests/fuzz_corpus.rs`.
//!
//! The input is a request head followed by whatever comes after it. Invariants: reading the
//! framing headers and decoding the body never panic; the decoder's verdict (the body, how many
//! bytes it took, or why it failed) is the same whatever sizes the bytes arrive in, from one
//! byte at a time to all at once; a body never holds more bytes than arrived, and a
//! `Content-Length` body is exactly that many bytes.

use bytes::BytesMut;
use tim_gateway::server::framing::{inspect, Decoded, Decoder, Framing};

/// What decoding all of an input gives.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The body and the bytes it took (chunk framing included).
    Complete(Vec<u8>, usize),
    /// The input ended first; the body so far.
    Incomplete(Vec<u8>),
    Malformed(&'static str),
}

/// Panics if `data` breaks one of the invariants above.
pub fn check(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; tim_gateway::server::MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = request.parse(data) else {
        return;
    };
    let version = match request.version {
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let Ok(meta) = inspect(request.headers, version) else {
        return;
    };
    if meta.framing == Framing::None {
        return;
    }
    let rest = &data[head..];
    let whole = decode(meta.framing, rest, rest.len().max(1));
    for step in [1, 2, 3, 7, 64] {
        assert_eq!(
            decode(meta.framing, rest, step),
            whole,
            "read {step} bytes at a time"
        );
    }
    match (&whole, meta.framing) {
        (Verdict::Complete(body, taken), Framing::Length(length)) => {
            assert_eq!((body.len() as u64, *taken as u64), (length, length));
        }
        (Verdict::Complete(body, taken), _) => {
            assert!(body.len() <= *taken && *taken <= rest.len());
        }
        (Verdict::Incomplete(body), _) => assert!(body.len() <= rest.len()),
        (Verdict::Malformed(_), framing) => {
            assert_eq!(
                framing,
                Framing::Chunked,
                "only chunked framing can be malformed"
            );
        }
    }
}

/// Feeds `input` to a decoder `step` bytes at a time, as reads would.
fn decode(framing: Framing, input: &[u8], step: usize) -> Verdict {
    let mut decoder = Decoder::new(framing);
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf) {
            Err(reason) => return Verdict::Malformed(reason),
            Ok(Decoded::Data(data)) => body.extend_from_slice(&data),
            Ok(Decoded::Done) => return Verdict::Complete(body, fed - buf.len()),
            Ok(Decoded::NeedMore) if fed == input.len() => return Verdict::Incomplete(body),
            Ok(Decoded::NeedMore) => {
                let end = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
    }
}
