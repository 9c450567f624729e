//! The request body a handler reads: the bytes themselves when they arrived with the head
//! (the usual case: no channel, no copy), or a one-chunk pipe the connection fills as the rest
//! arrives (a body larger than one read, or chunked).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// A client's request body.
pub struct ClientBody(Kind);

enum Kind {
    /// All of it (or nothing), not yet taken.
    Whole(Option<Bytes>),
    /// Filled by the connection; `length` is the declared `Content-Length`, if any.
    Piped {
        pipe: Arc<Pipe>,
        length: Option<u64>,
    },
}

impl ClientBody {
    /// No body.
    pub fn empty() -> ClientBody {
        ClientBody(Kind::Whole(None))
    }

    /// A body that is all here.
    pub fn whole(bytes: Bytes) -> ClientBody {
        ClientBody(Kind::Whole((!bytes.is_empty()).then_some(bytes)))
    }

    /// A body the connection feeds through the returned pipe.
    pub(super) fn piped(length: Option<u64>) -> (ClientBody, Arc<Pipe>) {
        let pipe = Arc::new(Pipe(Mutex::new(PipeState::default())));
        let body = ClientBody(Kind::Piped {
            pipe: Arc::clone(&pipe),
            length,
        });
        (body, pipe)
    }
}

impl From<&'static str> for ClientBody {
    fn from(text: &'static str) -> ClientBody {
        ClientBody::whole(Bytes::from_static(text.as_bytes()))
    }
}

impl From<Bytes> for ClientBody {
    fn from(bytes: Bytes) -> ClientBody {
        ClientBody::whole(bytes)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().0 {
            Kind::Whole(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Kind::Piped { pipe, .. } => pipe
                .poll_take(cx)
                .map(|item| item.map(|chunk| chunk.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.0, Kind::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Piped {
                length: Some(length),
                ..
            } => SizeHint::with_exact(*length),
            Kind::Piped { length: None, .. } => SizeHint::default(),
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Kind::Piped { pipe, .. } = &self.0 {
            let mut state = pipe.lock();
            state.is_reader_gone = true;
            if let Some(writer) = state.writer.take() {
                writer.wake();
            }
        }
    }
}

/// Holds at most one chunk between the connection (writer) and the body (reader).
pub(super) struct Pipe(Mutex<PipeState>);

#[derive(Default)]
struct PipeState {
    chunk: Option<Bytes>,
    /// Set once the body is complete (`Ok`) or broken (`Err`, why).
    end: Option<Result<(), &'static str>>,
    reader: Option<Waker>,
    writer: Option<Waker>,
    is_reader_gone: bool,
}

/// What the writer may do next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Room {
    /// The pipe is empty: push a chunk.
    Free,
    /// The body was dropped: nobody will read what is left.
    ReaderGone,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        // Plain data: a panic elsewhere cannot leave it half-updated.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let mut state = self.lock();
        if let Some(chunk) = state.chunk.take() {
            if let Some(writer) = state.writer.take() {
                writer.wake();
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        match state.end {
            Some(Ok(())) => Poll::Ready(None),
            Some(Err(reason)) => Poll::Ready(Some(Err(io::Error::other(reason)))),
            None => {
                state.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Whether a chunk may be pushed now; `Pending` until the reader takes the one held.
    pub(super) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<Room> {
        let mut state = self.lock();
        if state.is_reader_gone {
            Poll::Ready(Room::ReaderGone)
        } else if state.chunk.is_none() {
            Poll::Ready(Room::Free)
        } else {
            state.writer = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Hands the reader a chunk (after [`poll_room`](Self::poll_room) said `Free`).
    pub(super) fn push(&self, chunk: Bytes) {
        let mut state = self.lock();
        state.chunk = Some(chunk);
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }

    /// Ends the body: complete, or broken for `reason`.
    pub(super) fn finish(&self, end: Result<(), &'static str>) {
        let mut state = self.lock();
        state.end.get_or_insert(end);
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_whole_body_is_one_frame_with_its_exact_size() {
        let body = ClientBody::from("{}");
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
        let empty = ClientBody::whole(Bytes::new());
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn a_piped_body_yields_what_is_pushed_then_its_end() {
        let (body, pipe) = ClientBody::piped(Some(6));
        assert_eq!(body.size_hint().exact(), Some(6));
        let reader = tokio::spawn(async move { body.collect().await.map(|c| c.to_bytes()) });
        for chunk in ["abc", "def"] {
            std::future::poll_fn(|cx| pipe.poll_room(cx)).await;
            pipe.push(Bytes::from_static(chunk.as_bytes()));
        }
        pipe.finish(Ok(()));
        assert_eq!(reader.await.unwrap().unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn a_broken_pipe_is_an_error_and_a_dropped_body_is_seen() {
        let (mut body, pipe) = ClientBody::piped(None);
        pipe.finish(Err("cut"));
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(error.to_string(), "cut");
        drop(body);
        let room = std::future::poll_fn(|cx| pipe.poll_room(cx)).await;
        assert_eq!(room, Room::ReaderGone);
    }
}
