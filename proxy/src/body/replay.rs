//! A request body that can be sent again, for retries.
//!
//! Frames are forwarded as they arrive (a streaming request is never held
//! back) and a copy is kept, up to a cap. A retry gets a new reader that
//! replays the copy and then continues reading the original. Once the body
//! outgrows the cap it is no longer replayable and the copy is freed.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::{Body, BoxError};

pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// How many data chunks this reader has produced.
    position: usize,
    trailers_sent: bool,
}

struct Shared {
    original: Body,
    chunks: Vec<Bytes>,
    /// Data chunks read from the original so far (kept or not).
    received: usize,
    buffered: usize,
    cap: usize,
    overflowed: bool,
    ended: bool,
    trailers: Option<HeaderMap>,
}

impl ReplayBody {
    pub fn new(original: Body, cap: usize) -> Self {
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                original,
                chunks: Vec::new(),
                received: 0,
                buffered: 0,
                cap,
                overflowed: false,
                ended: false,
                trailers: None,
            })),
            position: 0,
            trailers_sent: false,
        }
    }

    /// A reader that starts from the beginning again, or `None` once the
    /// body has outgrown the replay cap.
    pub fn replay(&self) -> Option<ReplayBody> {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        (!shared.overflowed).then(|| ReplayBody {
            shared: self.shared.clone(),
            position: 0,
            trailers_sent: false,
        })
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = this.shared.lock().unwrap_or_else(|p| p.into_inner());
        if this.position < shared.received {
            if shared.overflowed {
                return Poll::Ready(Some(Err("request body outgrew the replay buffer".into())));
            }
            let chunk = shared.chunks[this.position].clone();
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if shared.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut shared.original).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                this.trailers_sent = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                shared.received += 1;
                this.position = shared.received;
                if !shared.overflowed {
                    shared.buffered += data.len();
                    if shared.buffered > shared.cap {
                        shared.overflowed = true;
                        shared.chunks = Vec::new();
                    } else {
                        shared.chunks.push(data.clone());
                    }
                }
                Frame::data(data)
            }
            Err(frame) => {
                if let Some(t) = frame.trailers_ref() {
                    shared.trailers = Some(t.clone());
                    shared.ended = true;
                    this.trailers_sent = true;
                }
                frame
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let caught_up = self.position >= shared.received;
        caught_up
            && ((shared.ended && (self.trailers_sent || shared.trailers.is_none()))
                || (!shared.ended && shared.original.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if shared.received == 0 && !shared.ended {
            return shared.original.size_hint();
        }
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    async fn collect(body: ReplayBody) -> Result<Bytes, BoxError> {
        Ok(body.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn replays_a_fully_read_body() {
        let first = ReplayBody::new(chunks(&["ab", "cd", "ef"]), 1024);
        let second = first.replay().unwrap();
        assert_eq!(collect(first).await.unwrap(), "abcdef");
        assert_eq!(collect(second).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn replays_a_partly_read_body_then_continues_the_original() {
        let mut first = ReplayBody::new(chunks(&["ab", "cd", "ef"]), 1024);
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        let second = first.replay().unwrap();
        drop(first);
        assert_eq!(collect(second).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_not_replayable() {
        let first = ReplayBody::new(chunks(&["abc", "def"]), 4);
        assert_eq!(collect(first.replay().unwrap()).await.unwrap(), "abcdef");
        assert!(first.replay().is_none());
        assert!(
            collect(first).await.is_err(),
            "a stale reader must not see a gap"
        );
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut t = HeaderMap::new();
        t.insert("x-t", "1".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(t)),
        ];
        let first = ReplayBody::new(
            StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync(),
            64,
        );
        let second = first.replay().unwrap();
        let got = first.collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["x-t"], "1");
        let got = second.collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["x-t"], "1");
        assert!(ReplayBody::new(full(Bytes::new()), 1).is_end_stream());
    }
}
