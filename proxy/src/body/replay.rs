//! A request body that can be sent again, for retries.
//!
//! Frames are forwarded as they arrive (a streaming request is never held
//! back) and a copy is kept, up to a cap. Each attempt gets its own reader
//! ([`Replay::attempt`]): it replays the copy, then continues reading the
//! original. Once the body outgrows the cap it is no longer replayable and
//! the copy is freed.
//!
//! One reader owns the body at a time: the newest attempt's. An earlier
//! attempt's reader can still be polled after its response came back (its
//! connection may still be sending the request); if it kept reading the
//! original too, the two readers would steal each other's wake-ups from it
//! and the retry could stall until its deadline. So a superseded reader
//! ends with an error and never touches the original again.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use parking_lot::Mutex;

use super::{Body, BoxError};

/// The retry loop's handle on a request body: hands out one reader per
/// attempt. Never read itself.
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

/// One attempt's view of the body.
pub struct ReplayReader {
    shared: Arc<Mutex<Shared>>,
    /// Which attempt this reader belongs to (see [`Shared::owner`]).
    attempt: u32,
    /// How many data chunks this reader has produced.
    position: usize,
    trailers_sent: bool,
}

struct Shared {
    original: Body,
    /// The attempt whose reader may read: the latest one handed out.
    owner: u32,
    chunks: Vec<Bytes>,
    /// Data chunks read from the original so far (kept or not).
    received: usize,
    buffered: usize,
    cap: usize,
    overflowed: bool,
    ended: bool,
    trailers: Option<HeaderMap>,
}

impl Replay {
    pub fn new(original: Body, cap: usize) -> Self {
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                original,
                owner: 0,
                chunks: Vec::new(),
                received: 0,
                buffered: 0,
                cap,
                overflowed: false,
                ended: false,
                trailers: None,
            })),
        }
    }

    /// The reader for the next attempt, starting from the first byte; every
    /// earlier reader is cut off. `None` once the body has outgrown the
    /// replay cap.
    pub fn attempt(&self) -> Option<ReplayReader> {
        let mut shared = self.shared.lock();
        if shared.overflowed {
            return None;
        }
        shared.owner += 1;
        Some(ReplayReader {
            shared: self.shared.clone(),
            attempt: shared.owner,
            position: 0,
            trailers_sent: false,
        })
    }

    /// Whether another attempt could still be sent the whole body.
    pub fn is_replayable(&self) -> bool {
        !self.shared.lock().overflowed
    }
}

impl HttpBody for ReplayReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = this.shared.lock();
        if shared.owner != this.attempt {
            return Poll::Ready(Some(Err("request body superseded by a retry".into())));
        }
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
        let shared = self.shared.lock();
        if shared.owner != self.attempt {
            // Superseded: its next poll ends it with an error, not silently.
            return false;
        }
        let caught_up = self.position >= shared.received;
        caught_up
            && ((shared.ended && (self.trailers_sent || shared.trailers.is_none()))
                || (!shared.ended && shared.original.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.shared.lock();
        if shared.received == 0 && !shared.ended {
            return shared.original.size_hint();
        }
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

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

    async fn collect(body: ReplayReader) -> Result<Bytes, BoxError> {
        Ok(body.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn an_attempt_after_a_finished_one_reads_everything_again() {
        let replay = Replay::new(chunks(&["ab", "cd", "ef"]), 1024);
        assert_eq!(collect(replay.attempt().unwrap()).await.unwrap(), "abcdef");
        assert_eq!(collect(replay.attempt().unwrap()).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn an_attempt_after_a_partial_one_replays_then_continues_the_original() {
        let replay = Replay::new(chunks(&["ab", "cd", "ef"]), 1024);
        let mut first = replay.attempt().unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        let second = replay.attempt().unwrap();
        assert_eq!(collect(second).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_not_replayable() {
        let replay = Replay::new(chunks(&["abc", "def"]), 4);
        let first = replay.attempt().unwrap();
        assert!(replay.is_replayable());
        assert_eq!(collect(first).await.unwrap(), "abcdef");
        assert!(!replay.is_replayable());
        assert!(replay.attempt().is_none());
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut t = HeaderMap::new();
        t.insert("x-t", "1".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(t)),
        ];
        let replay = Replay::new(
            StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync(),
            64,
        );
        let got = replay.attempt().unwrap().collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["x-t"], "1");
        let got = replay.attempt().unwrap().collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["x-t"], "1");
        let empty = Replay::new(full(Bytes::new()), 1);
        assert!(empty.attempt().unwrap().is_end_stream());
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Both attempts' readers stay alive and polled, as when the first
    /// attempt's connection is still sending the request while the retry
    /// goes out: the retry's reader alone is woken by the original, and the
    /// superseded one ends with an error instead of reading on.
    #[tokio::test]
    async fn only_the_latest_attempt_reads_the_original() {
        let (mut sender, original) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        let replay = Replay::new(original.boxed_unsync(), 1024);
        let mut first = replay.attempt().unwrap();
        let mut second = replay.attempt().unwrap();
        let (first_waker, second_waker) = (
            Arc::new(CountingWaker::default()),
            Arc::new(CountingWaker::default()),
        );
        let first_cx_waker = std::task::Waker::from(first_waker.clone());
        let second_cx_waker = std::task::Waker::from(second_waker.clone());
        let mut first_cx = Context::from_waker(&first_cx_waker);
        let mut second_cx = Context::from_waker(&second_cx_waker);

        // The retry waits for data; then the old reader is polled again.
        assert!(
            Pin::new(&mut second)
                .poll_frame(&mut second_cx)
                .is_pending()
        );
        match Pin::new(&mut first).poll_frame(&mut first_cx) {
            Poll::Ready(Some(Err(e))) => assert!(e.to_string().contains("superseded"), "{e}"),
            other => panic!("the superseded reader must end with an error: {other:?}"),
        }
        sender.send_data(Bytes::from_static(b"late")).await.unwrap();
        assert!(
            second_waker.0.load(Ordering::SeqCst) > 0,
            "the retry is woken"
        );
        assert_eq!(first_waker.0.load(Ordering::SeqCst), 0);
        match Pin::new(&mut second).poll_frame(&mut second_cx) {
            Poll::Ready(Some(Ok(frame))) => assert_eq!(frame.into_data().unwrap(), "late"),
            other => panic!("the retry reads what arrived: {other:?}"),
        }
    }
}
