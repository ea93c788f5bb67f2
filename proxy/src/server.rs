//! Downstream side: accepting connections on a listener, detecting HTTP/1.1
//! or HTTP/2 (prior knowledge), and serving requests until drained.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use gridmesh_net::{AcceptBackoff, accept};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::drain::Drain;
use crate::forward;
use crate::metrics::ListenerMetrics;
use gridmesh_config::{ListenerSpec, Protocol};

pub use crate::shared::Shared;

pub struct ListenerContext {
    pub name: String,
    pub metrics: ListenerMetrics,
    /// Started when this listener is removed or replaced, or the proxy
    /// drains: stop accepting, close connections gracefully.
    pub drain: Drain,
    /// Set before `drain` starts when a config change, not a shutdown,
    /// drains this listener: its clients keep talking to this proxy, so
    /// HTTP/1.1 connections get a hand-off grace (see [`HANDOFF_GRACE`]).
    pub replaced: AtomicBool,
}

impl ListenerContext {
    /// Whether responses on this listener should close HTTP/1.1 connections.
    pub fn closing(&self) -> bool {
        self.drain.is_draining()
    }
}

/// How long an idle connection gets to close gracefully (HTTP/2 GOAWAY). It
/// has no request in flight, so this only covers the GOAWAY round trip; a
/// half-sent request head would otherwise hold graceful shutdown open.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long an HTTP/1.1 connection of a listener replaced by a config
/// change keeps serving before it is closed. HTTP/1.1 has no GOAWAY:
/// closing an idle keep-alive connection at once races with a request the
/// client may be writing at that moment, which then fails. During the grace
/// every response says `Connection: close`, so busy clients move to the new
/// listener cleanly; only connections idle for the whole grace are closed.
const HANDOFF_GRACE: Duration = Duration::from_secs(2);
/// HTTP/2 streams per connection; more are refused with REFUSED_STREAM.
const MAX_CONCURRENT_STREAMS: u32 = 1024;

fn connection_builder(spec: &ListenerSpec) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Replaced by the connection watchdog (`Activity::idle`).
        .header_read_timeout(None::<Duration>)
        .max_buf_size(spec.max_request_headers_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(spec.max_request_headers_bytes as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    match spec.protocol {
        Protocol::Auto => builder,
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    }
}

/// Accepts connections until the listener drains, then stops accepting (the
/// socket closes once no newer accept loop shares it). Each connection then
/// shuts down gracefully: HTTP/2 sends GOAWAY, HTTP/1.1 answers in-flight
/// requests with `Connection: close`.
pub async fn accept_loop(
    listener: Arc<TcpListener>,
    spec: ListenerSpec,
    context: Arc<ListenerContext>,
    shared: Arc<Shared>,
    connections: TaskTracker,
) {
    let builder = Arc::new(connection_builder(&spec));
    let spec_idle = spec.idle_timeout;
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = context.drain.started() => return,
            accepted = accept(&listener, &mut backoff, &context.name) => accepted,
        };
        context.metrics.connections.inc();
        context.metrics.connections_active.inc();
        let activity = Arc::new(Activity::default());
        let service = {
            let shared = shared.clone();
            let context = context.clone();
            let activity = activity.clone();
            service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                let context = context.clone();
                if req.version() == http::Version::HTTP_2 {
                    activity.http2.store(true, Ordering::Relaxed);
                }
                let request = activity.request();
                async move { Ok::<_, Infallible>(forward::serve(shared, context, req, request).await) }
            })
        };
        let io = Watched {
            io: stream,
            activity: activity.clone(),
        };
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let context = context.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = activity.idle(spec_idle) => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(IDLE_CLOSE_GRACE.min(spec_idle), conn.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
                () = context.drain.started() => 'drained: {
                    if context.replaced.load(Ordering::Relaxed) && !activity.http2.load(Ordering::Relaxed) {
                        let handoff = tokio::time::sleep(HANDOFF_GRACE);
                        tokio::select! {
                            result = conn.as_mut() => break 'drained result,
                            () = handoff => {}
                            () = context.drain.expired() => {}
                        }
                    }
                    conn.as_mut().graceful_shutdown();
                    // What is still open after the deadline (and the grace
                    // gRPC streams get for their closing trailers) is closed
                    // with the connection: a stopped proxy serves nothing.
                    tokio::select! {
                        result = conn.as_mut() => result,
                        () = async {
                            context.drain.expired().await;
                            tokio::time::sleep(crate::DRAIN_GRACE).await;
                        } => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(listener = %context.name, %peer, error = %e, "connection ended with an error");
            }
            context.metrics.connections_active.dec();
        });
    }
}

/// What a connection's watchdog needs to tell idle from busy.
#[derive(Default)]
struct Activity {
    reads: AtomicU64,
    requests: AtomicUsize,
    /// The connection speaks HTTP/2 (it can be told to go away).
    http2: AtomicBool,
}

impl Activity {
    /// Counts a request until the returned guard is dropped, which the
    /// request path does when the response stream ends.
    fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// Resolves once a whole `period` passed with no request in flight and
    /// nothing read. A connection that stalls mid-request-head (slowloris)
    /// or sits idle in keep-alive is closed this way. One timer per
    /// connection per period, instead of hyper's per-request header timer,
    /// which cost an extra runtime wake-up on every request.
    async fn idle(&self, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.tick().await;
        let mut reads = self.reads.load(Ordering::Relaxed);
        loop {
            ticks.tick().await;
            let now = self.reads.load(Ordering::Relaxed);
            if now == reads && self.requests.load(Ordering::Relaxed) == 0 {
                return;
            }
            reads = now;
        }
    }
}

/// Held by the request path while a request (and its response stream) is open.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// A downstream socket that counts reads for the idle watchdog.
    struct Watched<T> {
        #[pin]
        io: T,
        activity: Arc<Activity>,
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
