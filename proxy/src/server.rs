//! Downstream side: accepting connections on a listener, detecting HTTP/1.1
//! or HTTP/2 (prior knowledge), and serving requests until drained.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use gridmesh_net::AcceptBackoff;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::downstream::{Activity, ListenerContext};
use crate::pipeline;
use crate::runtime::Runtime;
use crate::transport::{self, Accepted};
use gridmesh_config::{ListenerSpec, Protocol};

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
    runtime: Arc<ArcSwap<Runtime>>,
    connections: TaskTracker,
) {
    let builder = Arc::new(connection_builder(&spec));
    let spec_idle = spec.idle_timeout;
    let mut backoff = AcceptBackoff::default();
    loop {
        let Accepted {
            stream,
            context: connection,
        } = tokio::select! {
            biased;
            () = context.drain.started() => return,
            accepted = transport::accept(&listener, &mut backoff, &context.name) => accepted,
        };
        let peer = connection.peer;
        context.metrics.connections.inc();
        context.metrics.connections_active.inc();
        let activity = Arc::new(Activity::default());
        let service = {
            let runtime = runtime.clone();
            let context = context.clone();
            let activity = activity.clone();
            service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let runtime = runtime.clone();
                let context = context.clone();
                let connection = connection.clone();
                if req.version() == http::Version::HTTP_2 {
                    activity.http2.store(true, Ordering::Relaxed);
                }
                let request = activity.request();
                async move {
                    let response =
                        pipeline::serve(&runtime, &context, connection, req, request).await;
                    Ok::<_, Infallible>(response)
                }
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
