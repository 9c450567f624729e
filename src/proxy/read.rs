//! Reading a client's body, bounded. Most bodies arrive as one frame with the headers: that
//! frame's bytes are the body, with no buffer list and no copy (`http_body_util`'s `Collect`
//! keeps a list and copies it out again: about 700 instructions of a cache hit).

use std::pin::pin;

use bytes::{Bytes, BytesMut};
use hyper::body::Body;

/// Why a body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReadError {
    /// More than the limit.
    TooLarge,
    /// The client's stream failed (reset, malformed chunking).
    Broken,
}

/// Reads all of `body`, failing as soon as it exceeds `limit` bytes. Trailers are ignored.
pub(super) async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
{
    let mut body = pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    // A body whose declared length has been read ends without another poll.
    while !body.is_end_stream() {
        let frame = match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => break,
            Some(Err(_)) => return Err(ReadError::Broken),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(ReadError::TooLarge);
        }
        match (&mut joined, first.take()) {
            (Some(joined), _) => joined.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(earlier)) => {
                let mut buffer = BytesMut::with_capacity(earlier.len() + data.len());
                buffer.extend_from_slice(&earlier);
                buffer.extend_from_slice(&data);
                joined = Some(buffer);
            }
        }
    }
    Ok(match (joined, first) {
        (Some(joined), _) => joined.freeze(),
        (None, Some(first)) => first,
        (None, None) => Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body_util::Full;
    use hyper::body::Frame;

    use super::*;

    /// A body that yields the given frames, then ends (no declared length).
    struct Frames(VecDeque<Result<&'static [u8], &'static str>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|frame| {
                frame
                    .map(|data| Frame::data(Bytes::from_static(data)))
                    .map_err(std::io::Error::other)
            }))
        }
    }

    fn frames(parts: &[&'static [u8]]) -> Frames {
        Frames(parts.iter().map(|part| Ok(*part)).collect())
    }

    #[tokio::test]
    async fn one_frame_is_the_body_itself() {
        let body = Bytes::from_static(b"{\"a\":1}");
        let read = read_limited(Full::new(body.clone()), 64).await.unwrap();
        assert_eq!(read, body);
        // The same bytes, not a copy.
        assert_eq!(read.as_ptr(), body.as_ptr());
    }

    #[tokio::test]
    async fn frames_are_joined_in_order() {
        let read = read_limited(frames(&[b"{\"a\"", b":", b"1}"]), 64).await;
        assert_eq!(read.unwrap(), Bytes::from_static(b"{\"a\":1}"));
    }

    #[tokio::test]
    async fn no_frame_is_an_empty_body() {
        assert_eq!(read_limited(frames(&[]), 64).await.unwrap(), Bytes::new());
    }

    #[tokio::test]
    async fn the_limit_is_inclusive_and_checked_as_frames_arrive() {
        assert_eq!(
            read_limited(frames(&[b"1234", b"5678"]), 8).await.unwrap(),
            Bytes::from_static(b"12345678")
        );
        assert_eq!(
            read_limited(frames(&[b"1234", b"5678", b"9"]), 8).await,
            Err(ReadError::TooLarge)
        );
    }

    #[tokio::test]
    async fn a_failing_stream_is_broken() {
        let failing = Frames(VecDeque::from([Ok(&b"{"[..]), Err("reset")]));
        assert_eq!(read_limited(failing, 64).await, Err(ReadError::Broken));
    }
}
