//! Answers as HTTP/1.1 bytes, written into the connection's output buffer: the status line,
//! the handler's headers, then `content-length`, `date` and, when the connection closes,
//! `connection: close`.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, StatusCode, Version};

/// Bodies up to this size are copied behind their head (one `write`); larger ones go out
/// as a second buffer of the same `writev`, uncopied.
pub const COPY_BODY_MAX: usize = 4 * 1024;

/// An answer written straight into the connection's output: the status line and headers go in
/// as they are given; the connection adds the framing headers and the body.
pub struct Answer<'a> {
    out: &'a mut Vec<u8>,
    status: StatusCode,
    body: Bytes,
}

impl<'a> Answer<'a> {
    pub(super) fn new(out: &'a mut Vec<u8>) -> Answer<'a> {
        Answer {
            out,
            status: StatusCode::OK,
            body: Bytes::new(),
        }
    }

    /// The status line; first.
    pub fn status(&mut self, status: StatusCode) {
        self.status = status;
        status_line(self.out, status);
    }

    /// One header; `name` in lower case, `value` a valid header value.
    pub fn header(&mut self, name: &str, value: &[u8]) {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
    }

    /// The body (the connection writes its length).
    pub fn body(&mut self, body: Bytes) {
        self.body = body;
    }

    pub(super) fn into_parts(self) -> (StatusCode, Bytes) {
        (self.status, self.body)
    }
}

/// `HTTP/1.1 200 OK\r\n`.
pub fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A handler's headers, minus those the connection writes itself.
pub fn headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || name == header::DATE
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// How the connection goes on after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub status: StatusCode,
    /// `HEAD`: the length is written, the body is not.
    pub is_head: bool,
    pub keep_alive: bool,
    pub version: Version,
}

/// Ends the head (`content-length`, `date`, `connection`) and returns the body still to
/// write, if it is not copied in.
pub fn finish(out: &mut Vec<u8>, framing: Framing, body: Bytes) -> Option<Bytes> {
    let status = framing.status;
    let has_body = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    if has_body {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    date(out);
    if !framing.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if framing.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !has_body || framing.is_head || body.is_empty() {
        return None;
    }
    if body.len() <= COPY_BODY_MAX {
        out.extend_from_slice(&body);
        return None;
    }
    Some(body)
}

/// `date: <IMF-fixdate>\r\n`, formatted once per second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(status: StatusCode, keep_alive: bool, version: Version) -> Framing {
        Framing {
            status,
            is_head: false,
            keep_alive,
            version,
        }
    }

    /// The head without its `date` line (which changes every second).
    fn without_date(out: &[u8]) -> String {
        String::from_utf8_lossy(out)
            .split_inclusive("\r\n")
            .filter(|line| !line.starts_with("date: "))
            .collect()
    }

    #[test]
    fn an_answer_is_status_headers_framing_and_body() {
        let mut out = Vec::new();
        let mut answer = Answer::new(&mut out);
        answer.status(StatusCode::OK);
        answer.header("content-type", b"application/json");
        answer.body(Bytes::from_static(b"{}"));
        let (status, body) = answer.into_parts();
        assert_eq!(status, StatusCode::OK);
        let rest = finish(
            &mut out,
            framing(StatusCode::OK, true, Version::HTTP_11),
            body,
        );
        assert!(rest.is_none());
        assert_eq!(
            without_date(&out),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        let date = String::from_utf8_lossy(&out);
        let date = date.lines().find(|l| l.starts_with("date: ")).unwrap();
        assert!(
            httpdate::parse_http_date(&date["date: ".len()..]).is_ok(),
            "{date}"
        );
    }

    #[test]
    fn closing_http_1_0_head_and_large_bodies_are_framed() {
        let mut out = Vec::new();
        status_line(&mut out, StatusCode::OK);
        let large = Bytes::from(vec![b'x'; COPY_BODY_MAX + 1]);
        let rest = finish(
            &mut out,
            framing(StatusCode::OK, false, Version::HTTP_11),
            large.clone(),
        );
        assert_eq!(rest, Some(large));
        assert_eq!(
            without_date(&out),
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                COPY_BODY_MAX + 1
            )
        );

        let mut out = Vec::new();
        status_line(&mut out, StatusCode::OK);
        finish(
            &mut out,
            framing(StatusCode::OK, true, Version::HTTP_10),
            Bytes::from_static(b"ok"),
        );
        assert!(without_date(&out).ends_with("connection: keep-alive\r\n\r\nok"));

        let mut out = Vec::new();
        status_line(&mut out, StatusCode::OK);
        let head = Framing {
            is_head: true,
            ..framing(StatusCode::OK, true, Version::HTTP_11)
        };
        assert!(finish(&mut out, head, Bytes::from_static(b"ok")).is_none());
        assert!(without_date(&out).ends_with("content-length: 2\r\n\r\n"));

        let mut out = Vec::new();
        status_line(&mut out, StatusCode::NO_CONTENT);
        finish(
            &mut out,
            framing(StatusCode::NO_CONTENT, true, Version::HTTP_11),
            Bytes::new(),
        );
        assert_eq!(without_date(&out), "HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn framing_headers_of_the_handler_are_not_repeated() {
        let mut map = HeaderMap::new();
        map.insert(header::CONTENT_LENGTH, "99".parse().unwrap());
        map.insert(header::CONNECTION, "close".parse().unwrap());
        map.insert("x-cache", "HIT".parse().unwrap());
        let mut out = Vec::new();
        headers(&mut out, &map);
        assert_eq!(String::from_utf8(out).unwrap(), "x-cache: HIT\r\n");
    }
}
