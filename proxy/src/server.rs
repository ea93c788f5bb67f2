//! Downstream side: accepting connections on a listener, detecting HTTP/1.1
//! or HTTP/2 (prior knowledge), and serving requests until drained.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::config::{ListenerSpec, Protocol, Snapshot};
use crate::drain::Drain;
use crate::forward;
use crate::metrics::{ListenerMetrics, Metrics};

/// State every request and the admin server can see.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    pub drain: Drain,
}

/// The config being served: a snapshot and the clusters built for it, in
/// the snapshot's cluster order (routes refer to clusters by index).
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    pub clusters: Vec<Arc<Cluster>>,
}

pub struct ListenerContext {
    pub name: String,
    pub route_table: usize,
    pub metrics: ListenerMetrics,
}

/// Slow clients get this long to send a complete request head (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 streams per connection; more are refused with REFUSED_STREAM.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Backoff after accept() fails (e.g. out of file descriptors), so the
/// loop neither spins nor gives up.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

fn connection_builder(spec: &ListenerSpec) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
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

/// Accepts connections until draining starts, then stops accepting (the
/// socket closes). Each connection then shuts down gracefully: HTTP/2 sends
/// GOAWAY, HTTP/1.1 answers in-flight requests with `Connection: close`.
pub async fn accept_loop(
    listener: TcpListener,
    spec: ListenerSpec,
    context: Arc<ListenerContext>,
    shared: Arc<Shared>,
    connections: TaskTracker,
) {
    let builder = Arc::new(connection_builder(&spec));
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shared.drain.started() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(listener = %context.name, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        context.metrics.connections.inc();
        context.metrics.connections_active.inc();
        let service = {
            let shared = shared.clone();
            let context = context.clone();
            service_fn(move |req| {
                let shared = shared.clone();
                let context = context.clone();
                async move { Ok::<_, Infallible>(forward::serve(shared, context, req).await) }
            })
        };
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let context = context.clone();
        let shared = shared.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = shared.drain.started() => {
                    conn.as_mut().graceful_shutdown();
                    // What is still open after the deadline (and the grace
                    // gRPC streams get for their closing trailers) is closed
                    // with the connection: a stopped proxy serves nothing.
                    tokio::select! {
                        result = conn.as_mut() => result,
                        () = async {
                            shared.drain.expired().await;
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
