//! The response body on its way back downstream. It passes frames through
//! untouched and enforces the stream's limits: the request deadline
//! (max-duration or `grpc-timeout`), the idle timeout, and the drain deadline.
//! A gRPC stream cut short ends with proper trailers, so clients see
//! DEADLINE_EXCEEDED or UNAVAILABLE rather than a reset.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::BoxError;
use crate::error::{ERROR_HEADER, ProxyError};
use crate::grpc;

/// What a response stream is told to respect.
#[derive(Default)]
pub struct StreamLimits {
    pub deadline: Option<Instant>,
    pub idle: Option<Duration>,
    /// Only gRPC streams watch the drain deadline: they are the ones that
    /// need a clean ending; anything else is closed with its connection.
    pub drain_expired: Option<CancellationToken>,
}

/// How a response stream ended, for metrics and load accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream finished it; trailers' `grpc-status`, if any.
    Complete { grpc_status: Option<u32> },
    /// The proxy ended it (timeout, drain) with this error.
    Local(ProxyError),
    /// The upstream failed mid-stream.
    UpstreamError,
}

/// Told once how the stream ended. Implementors record "cancelled" in their
/// own `Drop` when dropped without being told (the client went away).
pub trait Completion: Send + 'static {
    /// `len` bytes of the body passed.
    fn data(&mut self, _len: usize) {}

    /// The upstream's trailers, as they pass (before [`Completion::finish`]).
    fn trailers(&mut self, _trailers: &HeaderMap) {}

    fn finish(self, end: StreamEnd);
}

pin_project! {
    pub struct ResponseBody<C> {
        #[pin]
        inner: Incoming,
        grpc: bool,
        #[pin]
        deadline: Option<Sleep>,
        idle: Option<Duration>,
        #[pin]
        idle_timer: Option<Sleep>,
        #[pin]
        drain: Option<WaitForCancellationFutureOwned>,
        finished: bool,
        completion: Option<C>,
    }
}

impl<C: Completion> ResponseBody<C> {
    pub fn new(inner: Incoming, grpc: bool, limits: StreamLimits, completion: C) -> Self {
        ResponseBody {
            inner,
            grpc,
            deadline: limits.deadline.map(tokio::time::sleep_until),
            idle: limits.idle,
            idle_timer: limits.idle.map(tokio::time::sleep),
            drain: limits
                .drain_expired
                .filter(|_| grpc)
                .map(|t| t.cancelled_owned()),
            finished: false,
            completion: Some(completion),
        }
    }
}

type PollFrame = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

impl<C: Completion> HttpBody for ResponseBody<C> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> PollFrame {
        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(idle), Some(timer)) =
                    (*this.idle, this.idle_timer.as_mut().as_pin_mut())
                {
                    timer.reset(Instant::now() + idle);
                }
                if let (Some(data), Some(c)) = (frame.data_ref(), this.completion.as_mut()) {
                    c.data(data.len());
                }
                if let Some(trailers) = frame.trailers_ref() {
                    let grpc_status = grpc::status(trailers);
                    *this.finished = true;
                    if let Some(mut c) = this.completion.take() {
                        c.trailers(trailers);
                        c.finish(StreamEnd::Complete { grpc_status });
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                *this.finished = true;
                if let Some(c) = this.completion.take() {
                    c.finish(StreamEnd::UpstreamError);
                }
                if *this.grpc {
                    return Poll::Ready(Some(Ok(grpc_end(ProxyError::UpstreamReset))));
                }
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => {
                *this.finished = true;
                if let Some(c) = this.completion.take() {
                    c.finish(StreamEnd::Complete { grpc_status: None });
                }
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let cut = if this
            .deadline
            .as_mut()
            .as_pin_mut()
            .is_some_and(|d| d.poll(cx).is_ready())
        {
            Some(ProxyError::DeadlineExceeded)
        } else if this
            .idle_timer
            .as_mut()
            .as_pin_mut()
            .is_some_and(|t| t.poll(cx).is_ready())
        {
            Some(ProxyError::IdleTimeout)
        } else if this
            .drain
            .as_mut()
            .as_pin_mut()
            .is_some_and(|d| d.poll(cx).is_ready())
        {
            Some(ProxyError::Draining)
        } else {
            None
        };
        let Some(error) = cut else {
            return Poll::Pending;
        };
        *this.finished = true;
        if let Some(c) = this.completion.take() {
            c.finish(StreamEnd::Local(error));
        }
        if *this.grpc {
            Poll::Ready(Some(Ok(grpc_end(error))))
        } else {
            Poll::Ready(Some(Err(error.to_string().into())))
        }
    }

    /// Reports the upstream's end as it is, for gRPC too: a trailers-only
    /// response (one HEADERS frame with END_STREAM, how grpc-core servers
    /// send errors) must leave the proxy as one; answering "not yet" makes
    /// hyper send the headers, then an empty DATA frame with END_STREAM,
    /// and grpc-core clients read that as a stream without status.
    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Trailers that end a gRPC stream the proxy has to cut short.
fn grpc_end(error: ProxyError) -> Frame<Bytes> {
    let mut trailers = HeaderMap::with_capacity(3);
    let reason = HeaderValue::from_static(error.reason());
    trailers.insert(grpc::GRPC_STATUS, error.grpc_code().header_value());
    trailers.insert(grpc::GRPC_MESSAGE, reason.clone());
    trailers.insert(ERROR_HEADER, reason);
    Frame::trailers(trailers)
}
