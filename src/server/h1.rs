//! HTTP/1.1 on one connection, served by the gateway itself (RFC 9112): keep-alive,
//! pipelining, `Content-Length` and chunked request bodies, `Expect: 100-continue`, HTTP/1.0
//! clients. hyper's server spent about 9,400 of a cache hit's 15,700 instructions (callgrind)
//! on what a cache hit does not need: a body channel, a fresh read buffer per request, header
//! maps in and out.
//!
//! A request is parsed in place with `httparse` (hyper's own parser). When its head and body
//! are all in the read buffer, [`Handler::answer_now`] may answer it at once, straight into the
//! output buffer, before anything is allocated for it (the cache hit). Otherwise it becomes an
//! `http::Request` whose header values and body are slices of the read buffer, and the handler's
//! future runs while the connection feeds it the rest of the body, and watches for the client
//! hanging up (the handler is dropped then, as hyper did).
//!
//! Answers queue in one output buffer and go out in one write when no further request is
//! already buffered (pipelined requests share a write). Malformed requests get Tencent's
//! envelope (400 / 1904017; a head over [`MAX_BUF_BYTES`] or [`MAX_HEADERS`] headers: 431 /
//! 1904018) and the connection closes.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::{ClientBody, Pipe, Room};
use super::encode::{self, Answer};
use super::framing::{inspect, Decoded, Decoder, Framing, Meta};
use super::watch::{InHandler, Watch};
use super::{Handler, MAX_BUF_BYTES};

/// Most headers a request may have (hyper's default); more is a 431.
pub const MAX_HEADERS: usize = 100;

/// Room made in the read buffer before each read.
const READ_SIZE: usize = 8 * 1024;

/// Queued answers are written once they reach this size, even if more requests are buffered.
const FLUSH_AT: usize = 64 * 1024;

/// How long a closing connection drops what the client still sends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// How much a closing connection drops at most.
const LINGER_BYTES: usize = 1024 * 1024;

/// A request whose head and body are all in the read buffer, as [`Handler::answer_now`] sees
/// it: slices of the buffer, nothing allocated.
pub struct RawRequest<'a> {
    pub method: &'a str,
    /// The request target in origin form (`/path?query`).
    pub target: &'a str,
    pub headers: &'a [httparse::Header<'a>],
    pub body: &'a [u8],
}

impl<'a> RawRequest<'a> {
    /// The path of the target (before any `?`).
    pub fn path(&self) -> &'a str {
        match self.target.bytes().position(|b| b == b'?') {
            Some(end) => &self.target[..end],
            None => self.target,
        }
    }

    /// The value of the first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    }
}

/// Why a request was refused before it reached the handler (the connection closes after the
/// answer, [`Handler::refuse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not HTTP/1.x as RFC 9112 has it: why.
    Malformed(&'static str),
    /// The head is over `limit` bytes, or has more than [`MAX_HEADERS`] headers.
    HeadTooLarge { limit: usize },
}

/// A body still (partly) on the wire, and where it goes.
struct Feed {
    decoder: Decoder,
    pipe: Arc<Pipe>,
    /// The handler dropped the body, or the body broke: the rest is never read.
    is_abandoned: bool,
}

/// What the front of the read buffer holds. Returned once per request and matched at once,
/// never stored: the size of `Request` costs one move.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// Not a whole head yet.
    NeedMore,
    /// Answered at once by [`Handler::answer_now`].
    Answered { keep_alive: bool },
    /// A request for the handler.
    Request {
        request: Request<ClientBody>,
        meta: Meta,
        feed: Option<Feed>,
    },
    /// Malformed: answer this and close.
    Refuse(Refusal),
}

/// Serves HTTP/1.1 on `io` until the client closes, an answer says `connection: close`, the
/// watch orders a stop, or I/O fails.
pub async fn serve<S, H>(io: S, handler: Arc<H>, watch: Arc<Watch>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        out: Vec::new(),
        tail: None,
        has_unread: false,
        watch,
    };
    conn.run(&handler).await
}

struct Conn<S> {
    io: S,
    buf: BytesMut,
    /// Answers not yet written.
    out: Vec<u8>,
    /// A large body to write after `out`, uncopied.
    tail: Option<Bytes>,
    /// The client may have sent more than was read (a refused request, a body the handler
    /// did not read): the close lingers.
    has_unread: bool,
    watch: Arc<Watch>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn run<H: Handler>(&mut self, handler: &Arc<H>) -> io::Result<()> {
        loop {
            let keep_alive = match self.next(handler.as_ref()) {
                Next::NeedMore => {
                    self.flush().await?;
                    if self.watch.is_stopping() {
                        // Draining and waiting for (the rest of) a request: close now, as the
                        // listener closes idle connections (this one was busy writing when the
                        // order came).
                        return Ok(());
                    }
                    if self.buf.len() >= MAX_BUF_BYTES {
                        self.refuse(
                            handler.as_ref(),
                            Refusal::HeadTooLarge {
                                limit: MAX_BUF_BYTES,
                            },
                        );
                        false
                    } else if self.read().await? == 0 {
                        // The client closed (between requests, or mid-head).
                        return Ok(());
                    } else {
                        continue;
                    }
                }
                Next::Answered { keep_alive } => keep_alive,
                Next::Request {
                    request,
                    meta,
                    feed,
                } => {
                    self.flush().await?;
                    match self.dispatch(handler, request, meta, feed).await? {
                        Some(keep_alive) => keep_alive,
                        // The client hung up while the handler ran.
                        None => return Ok(()),
                    }
                }
                Next::Refuse(refusal) => {
                    self.refuse(handler.as_ref(), refusal);
                    false
                }
            };
            if !keep_alive {
                self.flush().await?;
                self.io.shutdown().await?;
                if self.has_unread {
                    self.linger().await;
                }
                return Ok(());
            }
            if self.buf.is_empty() || self.out.len() >= FLUSH_AT || self.tail.is_some() {
                self.flush().await?;
            }
        }
    }

    /// Parses the front of the buffer; answers it at once if the handler can.
    fn next<H: Handler>(&mut self, handler: &H) -> Next {
        if self.buf.is_empty() {
            return Next::NeedMore;
        }
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut []);
        let head_len = match parsed.parse_with_uninit_headers(&self.buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Next::NeedMore,
            Err(httparse::Error::TooManyHeaders) => {
                return Next::Refuse(Refusal::HeadTooLarge {
                    limit: MAX_BUF_BYTES,
                })
            }
            Err(error) => return Next::Refuse(Refusal::Malformed(parse_error(error))),
        };
        let (Some(method), Some(target), Some(minor)) =
            (parsed.method, parsed.path, parsed.version)
        else {
            return Next::Refuse(Refusal::Malformed("the request line is incomplete"));
        };
        let version = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let meta = match inspect(parsed.headers, version) {
            Ok(meta) => meta,
            Err(reason) => return Next::Refuse(Refusal::Malformed(reason)),
        };
        let buffered = (self.buf.len() - head_len) as u64;
        let body_len = match meta.framing {
            Framing::None => Some(0),
            Framing::Length(length) if length <= buffered => Some(length as usize),
            _ => None,
        };
        if let (Some(body_len), true) = (body_len, target.starts_with('/')) {
            let raw = RawRequest {
                method,
                target,
                headers: parsed.headers,
                body: &self.buf[head_len..head_len + body_len],
            };
            let mark = self.out.len();
            let mut answer = Answer::new(&mut self.out);
            if handler.answer_now(&raw, &mut answer) {
                let (status, body) = answer.into_parts();
                let keep_alive = meta.keep_alive && !self.watch.is_stopping();
                let framing = encode::Framing {
                    status,
                    is_head: method == "HEAD",
                    keep_alive,
                    version,
                };
                self.tail = encode::finish(&mut self.out, framing, body);
                self.buf.advance(head_len + body_len);
                return Next::Answered { keep_alive };
            }
            self.out.truncate(mark);
        }
        // The general path: an `http::Request` over slices of the buffer.
        let method = match Method::from_bytes(method.as_bytes()) {
            Ok(method) => method,
            Err(_) => return Next::Refuse(Refusal::Malformed("the method is invalid")),
        };
        let base = self.buf.as_ptr() as usize;
        let offset = |s: &[u8]| s.as_ptr() as usize - base;
        let target_range = offset(target.as_bytes())..offset(target.as_bytes()) + target.len();
        let mut names = Vec::with_capacity(parsed.headers.len());
        for header in parsed.headers.iter() {
            let Ok(name) = HeaderName::from_bytes(header.name.as_bytes()) else {
                return Next::Refuse(Refusal::Malformed("a header name is invalid"));
            };
            let start = offset(header.value);
            names.push((name, start..start + header.value.len()));
        }
        let head = self.buf.split_to(head_len).freeze();
        let Ok(uri) = Uri::from_maybe_shared(head.slice(target_range)) else {
            return Next::Refuse(Refusal::Malformed("the request target is invalid"));
        };
        let mut headers = HeaderMap::with_capacity(names.len());
        for (name, range) in names {
            let Ok(value) = HeaderValue::from_maybe_shared(head.slice(range)) else {
                return Next::Refuse(Refusal::Malformed("a header value is invalid"));
            };
            headers.append(name, value);
        }
        let (body, feed) = match (meta.framing, body_len) {
            (Framing::None, _) => (ClientBody::empty(), None),
            (_, Some(len)) => (ClientBody::whole(self.buf.split_to(len).freeze()), None),
            (framing, None) => {
                let length = match framing {
                    Framing::Length(length) => Some(length),
                    _ => None,
                };
                let (body, pipe) = ClientBody::piped(length);
                let feed = Feed {
                    decoder: Decoder::new(framing),
                    pipe,
                    is_abandoned: false,
                };
                (body, Some(feed))
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        Next::Request {
            request,
            meta,
            feed,
        }
    }

    /// Runs the handler on `request`, feeding it the rest of its body; `None` if the client
    /// hung up first (the handler is dropped), else whether the connection stays open.
    async fn dispatch<H: Handler>(
        &mut self,
        handler: &Arc<H>,
        request: Request<ClientBody>,
        meta: Meta,
        mut feed: Option<Feed>,
    ) -> io::Result<Option<bool>> {
        if meta.expect_continue && feed.is_some() {
            self.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let is_head = request.method() == Method::HEAD;
        let guard = InHandler::enter(&self.watch);
        let response = {
            let mut future = pin!(Arc::clone(handler).handle(request));
            poll_fn(|cx| {
                if let Poll::Ready(response) = future.as_mut().poll(cx) {
                    return Poll::Ready(Ok(Some(response)));
                }
                self.poll_while_handling(cx, &mut feed)
                    .map(|ended| ended.map(|()| None))
            })
            .await?
        };
        drop(guard);
        let Some(response) = response else {
            return Ok(None);
        };
        let is_body_read = feed
            .as_ref()
            .is_none_or(|feed| feed.decoder.is_done() && !feed.is_abandoned);
        self.has_unread = !is_body_read;
        let keep_alive = meta.keep_alive && is_body_read && !self.watch.is_stopping();
        self.encode(response, is_head, keep_alive, meta.version);
        Ok(Some(keep_alive))
    }

    /// While the handler runs: feeds it its body, then reads ahead (pipelined requests) to
    /// notice a client that hangs up. `Ready(Ok)` means it hung up.
    fn poll_while_handling(
        &mut self,
        cx: &mut Context<'_>,
        feed: &mut Option<Feed>,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(feed) = feed
                .as_mut()
                .filter(|f| !f.decoder.is_done() && !f.is_abandoned)
            {
                match feed.pipe.poll_room(cx) {
                    // The handler takes the chunk held, then wakes this task.
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Room::ReaderGone) => {
                        feed.is_abandoned = true;
                        return Poll::Pending;
                    }
                    Poll::Ready(Room::Free) => {}
                }
                match feed.decoder.decode(&mut self.buf) {
                    Ok(Decoded::Data(data)) => feed.pipe.push(data),
                    Ok(Decoded::Done) => {}
                    Err(reason) => {
                        feed.pipe.finish(Err(reason));
                        feed.is_abandoned = true;
                    }
                    Ok(Decoded::NeedMore) => match self.poll_read(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            feed.pipe
                                .finish(Err("the client closed the connection mid-body"));
                            feed.is_abandoned = true;
                        }
                        Poll::Ready(Ok(_)) => {}
                    },
                }
                if feed.decoder.is_done() && !feed.is_abandoned {
                    feed.pipe.finish(Ok(()));
                }
                continue;
            }
            if feed.as_ref().is_some_and(|f| f.is_abandoned) || self.buf.len() >= MAX_BUF_BYTES {
                // Nothing more can be read now: the handler's wake-up is enough.
                return Poll::Pending;
            }
            return match self.poll_read(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(0)) => Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            };
        }
    }

    /// Reads into the buffer (at least [`READ_SIZE`] of room); `Ok(0)` at end of stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
            self.buf.reserve(READ_SIZE);
        }
        pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }

    async fn read(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx)).await
    }

    /// Queues the handler's answer.
    fn encode(
        &mut self,
        response: Response<Full<Bytes>>,
        is_head: bool,
        keep_alive: bool,
        version: Version,
    ) {
        let (parts, mut body) = response.into_parts();
        // A `Full` body is one frame, ready at once.
        let body = body
            .frame()
            .now_or_never()
            .flatten()
            .and_then(|frame| frame.ok()?.into_data().ok())
            .unwrap_or_default();
        encode::status_line(&mut self.out, parts.status);
        encode::headers(&mut self.out, &parts.headers);
        let framing = encode::Framing {
            status: parts.status,
            is_head,
            keep_alive,
            version,
        };
        self.tail = encode::finish(&mut self.out, framing, body);
    }

    /// Queues the envelope of a malformed request; the connection closes after it.
    fn refuse<H: Handler>(&mut self, handler: &H, refusal: Refusal) {
        tracing::debug!(?refusal, "refused a malformed request");
        self.has_unread = true;
        let response = handler.refuse(refusal);
        self.encode(response, false, false, Version::HTTP_11);
    }

    /// After the last answer: reads and drops what the client still sends (the rest of a
    /// body, a pipelined request), for at most [`LINGER`] or [`LINGER_BYTES`], so that closing
    /// with unread data does not reset the connection before the client has read the answer.
    async fn linger(&mut self) {
        let drain = async {
            let mut dropped = 0;
            while dropped < LINGER_BYTES {
                self.buf.clear();
                match self.read().await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => dropped += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Writes every queued answer.
    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() && self.tail.is_none() {
            // Every earlier write was flushed when it was made.
            return Ok(());
        }
        if let Some(tail) = self.tail.take() {
            let mut head = 0;
            let mut body = 0;
            while head < self.out.len() || body < tail.len() {
                let slices = [
                    io::IoSlice::new(&self.out[head..]),
                    io::IoSlice::new(&tail[body..]),
                ];
                let mut written = self.io.write_vectored(&slices).await?;
                if written == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                let from_head = written.min(self.out.len() - head);
                head += from_head;
                written -= from_head;
                body += written;
            }
        } else if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
        }
        self.out.clear();
        self.io.flush().await
    }
}

fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "a header name is invalid",
        httparse::Error::HeaderValue => "a header value is invalid",
        httparse::Error::NewLine | httparse::Error::Status => "the request is malformed",
        httparse::Error::Token => "the method or request target is invalid",
        httparse::Error::Version => "the HTTP version is not 1.0 or 1.1",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

#[cfg(test)]
mod tests;
