//! Request filters: stages a request passes through on its way to a cluster,
//! in order, and its response on the way back, in reverse order (as in
//! Envoy's and proxy-wasm's chains). A filter can read and change heads,
//! answer locally, pause while it waits for something, and see every body
//! chunk as it streams by — never an accumulated body. The policy engine
//! (the proxy-wasm host) and authorization plug in here.
//!
//! A listener with no filters pays nothing: no allocation, no lock, no body
//! wrapper.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, request, response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use parking_lot::Mutex;
use pin_project_lite::pin_project;

use crate::body::{Body, BoxError};
use crate::transport::ConnectionContext;

/// Makes a filter's per-request instances. Registered with the proxy
/// (see [`crate::ProxyBuilder::filter`]); each request gets its own
/// instance, which holds whatever state the filter keeps for it.
pub trait FilterFactory: Send + Sync + 'static {
    /// A name for logs.
    fn name(&self) -> &str;
    /// The filter instance for one request on `connection`.
    fn for_request(&self, connection: &Arc<ConnectionContext>) -> Box<dyn HttpFilter>;
}

/// One request's instance of a filter. Every callback has a default that
/// lets everything through.
pub trait HttpFilter: Send + 'static {
    /// The request head, before routing: change it, or answer locally.
    fn on_request_headers(&mut self, _request: &mut request::Parts) -> Decision {
        Decision::Continue
    }

    /// A chunk of the request body as it is forwarded; `end_of_stream` is
    /// set on the last one (or with trailers to come, on none).
    fn on_request_body(&mut self, _chunk: &mut Bytes, _end_of_stream: bool) {}

    /// The response head, on its way back: change it, or replace the whole
    /// response with a local one.
    fn on_response_headers(&mut self, _response: &mut response::Parts) -> Decision {
        Decision::Continue
    }

    /// A chunk of the response body as it is forwarded.
    fn on_response_body(&mut self, _chunk: &mut Bytes, _end_of_stream: bool) {}
}

/// What a head callback decides.
pub enum Decision {
    /// On to the next filter (or to the cluster).
    Continue,
    /// Answer the client with this response; later filters and the cluster
    /// never see the request.
    Reply(Response<Body>),
    /// Wait for this future, then take what it decides (a rate limiter's
    /// token, an authorization call). It cannot borrow the filter: what it
    /// needs it owns.
    Pause(Pin<Box<dyn Future<Output = Decision> + Send>>),
}

/// The filters of a listener, in order.
#[derive(Clone, Default)]
pub struct Filters(Arc<[Arc<dyn FilterFactory>]>);

impl Filters {
    pub fn new(factories: Vec<Arc<dyn FilterFactory>>) -> Self {
        Filters(factories.into())
    }

    /// One request's instances, or `None` when there are no filters (the
    /// request path then skips every filter step).
    pub fn for_request(&self, connection: &Arc<ConnectionContext>) -> Option<FilterStack> {
        if self.0.is_empty() {
            return None;
        }
        let filters = self.0.iter().map(|f| f.for_request(connection)).collect();
        Some(FilterStack(Arc::new(Mutex::new(filters))))
    }
}

/// One request's filter instances, shared by its head callbacks and the
/// body wrappers on either side (which run on different tasks, rarely at
/// the same moment: the lock is uncontended).
#[derive(Clone)]
pub struct FilterStack(Arc<Mutex<Vec<Box<dyn HttpFilter>>>>);

impl FilterStack {
    /// Runs the request-head callbacks in order; `Some` is a local reply.
    pub async fn on_request_headers(&self, request: &mut request::Parts) -> Option<Response<Body>> {
        let count = self.0.lock().len();
        for index in 0..count {
            let decision = self.0.lock()[index].on_request_headers(request);
            if let Some(reply) = settle(decision).await {
                return Some(reply);
            }
        }
        None
    }

    /// Runs the response-head callbacks in reverse order; `Some` replaces
    /// the response.
    pub async fn on_response_headers(
        &self,
        response: &mut response::Parts,
    ) -> Option<Response<Body>> {
        let count = self.0.lock().len();
        for index in (0..count).rev() {
            let decision = self.0.lock()[index].on_response_headers(response);
            if let Some(reply) = settle(decision).await {
                return Some(reply);
            }
        }
        None
    }

    /// `body` with every data chunk shown to the filters on its way
    /// upstream (`Direction::Request`) or downstream.
    pub fn watch(&self, body: Body, direction: Direction) -> Body {
        use http_body_util::BodyExt as _;
        FilteredBody {
            inner: body,
            stack: self.clone(),
            direction,
        }
        .boxed_unsync()
    }
}

/// Waits out pauses; `Some` is a local reply.
async fn settle(mut decision: Decision) -> Option<Response<Body>> {
    loop {
        match decision {
            Decision::Continue => return None,
            Decision::Reply(reply) => return Some(reply),
            Decision::Pause(waiting) => decision = waiting.await,
        }
    }
}

/// Which way a body flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

pin_project! {
    struct FilteredBody {
        #[pin]
        inner: Body,
        stack: FilterStack,
        direction: Direction,
    }
}

impl HttpBody for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let frame = match frame.into_data() {
            Ok(mut chunk) => {
                let end = this.inner.is_end_stream();
                let mut filters = this.stack.0.lock();
                // Requests run through the filters in order, responses in
                // reverse, as their heads do.
                match this.direction {
                    Direction::Request => filters
                        .iter_mut()
                        .for_each(|f| f.on_request_body(&mut chunk, end)),
                    Direction::Response => filters
                        .iter_mut()
                        .rev()
                        .for_each(|f| f.on_response_body(&mut chunk, end)),
                }
                Frame::data(chunk)
            }
            Err(frame) => frame,
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // A filter may change a chunk's size: nothing is known.
        SizeHint::default()
    }
}
