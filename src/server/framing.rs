//! Where a request body ends (RFC 9112 §6–7): what the framing headers say ([`inspect`]), then
//! `Content-Length` bytes, or `Transfer-Encoding: chunked` decoded as it arrives. Every byte is looked at once; chunk extensions are
//! skipped and trailers read and dropped (at most [`MAX_TRAILER_BYTES`]).

use bytes::{Buf, Bytes, BytesMut};
use http::Version;

/// Largest trailer section accepted after a chunked body.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
}

/// What the framing headers of a request say.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub version: Version,
}

/// What the framing headers say (RFC 9112 §6.3: `Transfer-Encoding` must end in `chunked`
/// and not come with `Content-Length`, nor in HTTP/1.0; repeated lengths must agree).
pub fn inspect(headers: &[httparse::Header<'_>], version: Version) -> Result<Meta, &'static str> {
    let mut length: Option<u64> = None;
    let mut is_chunked = None;
    let mut close = false;
    let mut keep_alive = false;
    let mut expect_continue = false;
    for header in headers {
        let name = header.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let value = parse_length(header.value).ok_or("Content-Length is not a number")?;
                if length.is_some_and(|seen| seen != value) {
                    return Err("the Content-Length headers disagree");
                }
                length = Some(value);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                for coding in tokens(header.value) {
                    if !coding.eq_ignore_ascii_case(b"chunked") || is_chunked == Some(true) {
                        return Err("only Transfer-Encoding: chunked is supported");
                    }
                    is_chunked = Some(true);
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for option in tokens(header.value) {
                    close |= option.eq_ignore_ascii_case(b"close");
                    keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                expect_continue = header.value.eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
    }
    let framing = match (is_chunked, length) {
        (Some(_), Some(_)) => return Err("both Transfer-Encoding and Content-Length are set"),
        (Some(_), None) if version == Version::HTTP_10 => {
            return Err("HTTP/1.0 has no Transfer-Encoding")
        }
        (Some(_), None) => Framing::Chunked,
        (None, Some(0) | None) => Framing::None,
        (None, Some(length)) => Framing::Length(length),
    };
    Ok(Meta {
        framing,
        keep_alive: !close && (version == Version::HTTP_11 || keep_alive),
        expect_continue: expect_continue && version == Version::HTTP_11,
        version,
    })
}

/// A `Content-Length` value: 1 to 18 digits.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The comma-separated, trimmed, non-empty elements of a header value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// A body being taken off the connection's read buffer.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Trailer bytes seen so far.
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `Content-Length`: bytes still to come.
    Length(u64),
    /// Chunked: reading a chunk size (`digits` seen so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// Skipping a chunk extension (or whitespace before it) up to CR.
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes (a slice of the read buffer, not a copy).
    Data(Bytes),
    /// The buffer holds no more of the body: read more.
    NeedMore,
    /// The body is complete.
    Done,
}

impl Decoder {
    /// A decoder for a body framed as `framing` (not [`Framing::None`]).
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::Size { size: 0, digits: 0 },
        };
        Decoder {
            state,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the next piece of the body off the front of `buf`.
    ///
    /// # Errors
    /// The chunked framing is malformed (the connection cannot be read further).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        let mut used = 0;
        let result = loop {
            if let State::Length(left) | State::Data(left) = self.state {
                buf.advance(used);
                used = 0;
                if buf.is_empty() {
                    break Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(take).freeze();
                let left = left - take as u64;
                self.state = match (self.state, left) {
                    (State::Length(_), 0) => State::Done,
                    (State::Length(_), _) => State::Length(left),
                    (_, 0) => State::DataCr,
                    _ => State::Data(left),
                };
                break Ok(Decoded::Data(data));
            }
            if self.state == State::Done {
                break Ok(Decoded::Done);
            }
            let Some(&byte) = buf.get(used) else {
                break Ok(Decoded::NeedMore);
            };
            used += 1;
            self.state = match (self.state, byte) {
                (State::Size { size, digits }, _) if byte.is_ascii_hexdigit() => {
                    if digits == 15 {
                        break Err("a chunk size is too large");
                    }
                    let digit = (byte as char).to_digit(16).unwrap_or(0);
                    State::Size {
                        size: size * 16 + u64::from(digit),
                        digits: digits + 1,
                    }
                }
                (State::Size { digits: 0, .. }, _) => break Err("a chunk size is missing"),
                (State::Size { size, .. }, b'\r') => State::SizeLf { size },
                (State::Size { size, .. }, b';' | b' ' | b'\t') => State::Extension { size },
                (State::Size { .. }, _) => break Err("a chunk size is not hexadecimal"),
                (State::Extension { size }, b'\r') => State::SizeLf { size },
                (State::Extension { .. }, b'\n') => break Err("a bare LF in a chunk extension"),
                (State::Extension { size }, _) => State::Extension { size },
                (State::SizeLf { size: 0 }, b'\n') => State::TrailerStart,
                (State::SizeLf { size }, b'\n') => State::Data(size),
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::Size { size: 0, digits: 0 },
                (State::TrailerStart, b'\r') => State::FinalLf,
                (State::TrailerStart | State::TrailerLine, b'\n') => {
                    break Err("a bare LF in the trailers")
                }
                (State::TrailerStart | State::TrailerLine, _) => State::TrailerLine,
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::FinalLf, b'\n') => State::Done,
                _ => break Err("the chunked framing is malformed"),
            };
            if self.state == State::TrailerLine {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_TRAILER_BYTES {
                    break Err("the trailers are too large");
                }
                if byte == b'\r' {
                    self.state = State::TrailerLf;
                }
            }
        };
        if result == Ok(Decoded::NeedMore) || result == Ok(Decoded::Done) {
            buf.advance(used);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at every `step` bytes; returns the body or the error.
    fn decode_all(
        framing: Framing,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, usize), &'static str> {
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Done => return Ok((body, buf.len() + input.len() - fed)),
                Decoded::NeedMore if fed == input.len() => return Err("ran out"),
                Decoded::NeedMore => {
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let input = b"4;name=value\r\nWiki\r\n5 \r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (body, left) = decode_all(Framing::Chunked, input, step).unwrap();
            assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.", "step {step}");
            assert_eq!(left, 4, "the next request's bytes stay: step {step}");
        }
    }

    #[test]
    fn a_length_takes_exactly_its_bytes() {
        for step in [1, 3, 100] {
            let (body, left) = decode_all(Framing::Length(5), b"hello, next", step).unwrap();
            assert_eq!((body.as_slice(), left), (&b"hello"[..], 6));
        }
    }

    #[test]
    fn malformed_chunking_is_an_error() {
        for (input, reason) in [
            (&b"x\r\n"[..], "a chunk size is missing"),
            (b"4\r\nWikiXX", "the chunked framing is malformed"),
            (b"1ffffffffffffffff\r\n", "a chunk size is too large"),
            (b"4\n", "a chunk size is not hexadecimal"),
            (b"0\r\nX\nY", "a bare LF in the trailers"),
        ] {
            assert_eq!(
                decode_all(Framing::Chunked, input, 100),
                Err(reason),
                "{input:?}"
            );
        }
        let long_trailer = [b"0\r\n".as_slice(), &vec![b'a'; MAX_TRAILER_BYTES + 1]].concat();
        assert_eq!(
            decode_all(Framing::Chunked, &long_trailer, MAX_TRAILER_BYTES * 2),
            Err("the trailers are too large")
        );
    }
}
