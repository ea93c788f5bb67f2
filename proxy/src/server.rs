//! Downstream side: accepting connections on a listener, telling HTTP from
//! anything else (AUTO listeners, `detect`), then serving HTTP/1.1 or
//! HTTP/2 (prior knowledge) requests until drained, or forwarding the
//! connection as bytes (`tcp`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use gridmesh_net::AcceptBackoff;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::detect::{self, Detected};
use crate::downstream::{Activity, ListenerContext, watched};
use crate::pipeline;
use crate::runtime::Runtime;
use crate::tcp;
use crate::transport::{self, Accepted, ConnectionContext, Io, Terminated, Terminator};
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
        // A TCP listener's connections never reach the HTTP server.
        Protocol::Auto | Protocol::Tcp => builder,
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    }
}

/// Upper bounds on the futures made per connection and per request (every
/// one is allocated, and held for the connection's or the response's whole
/// life), checked in debug builds — where every test's connections and
/// requests pass here — as ztunnel does. Measured in debug builds
/// (2026-12): 2,280 and 5,976 bytes; release builds are smaller.
const MAX_CONNECTION_FUTURE: usize = 4 * 1024;
const MAX_REQUEST_FUTURE: usize = 8 * 1024;

/// Fails a debug build's test that made a future bigger than `max`: a
/// field added to a future's state is paid for by every connection or
/// request.
fn debug_assert_small<F>(future: &F, max: usize, what: &str) {
    debug_assert!(
        std::mem::size_of_val(future) <= max,
        "the {what} future grew to {} bytes (bound {max}): box what is large or rarely used",
        std::mem::size_of_val(future)
    );
}

/// What serving one connection needs to know about its listener.
#[derive(Clone, Copy)]
struct ConnectionSettings {
    protocol: Protocol,
    /// Whether the listener forwards what is not HTTP (it has a
    /// `tcpCluster`); an AUTO listener without one serves everything as
    /// HTTP, answering garbage with 400.
    forwards_tcp: bool,
    idle: Duration,
    detection: Duration,
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
    terminator: Arc<Terminator>,
) {
    let builder = Arc::new(connection_builder(&spec));
    let settings = ConnectionSettings {
        protocol: spec.protocol,
        forwards_tcp: spec.tcp_cluster.is_some(),
        idle: spec.idle_timeout,
        detection: spec.protocol_detection_timeout,
    };
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
        context.metrics.connections.inc();
        context.metrics.connections_active.inc();
        let (builder, context, runtime) = (builder.clone(), context.clone(), runtime.clone());
        let terminator = terminator.clone();
        connections.spawn(async move {
            let serving = serve_connection(
                stream,
                connection,
                settings,
                &terminator,
                &builder,
                &context,
                &runtime,
            );
            debug_assert_small(&serving, MAX_CONNECTION_FUTURE, "per-connection");
            serving.await;
            context.metrics.connections_active.dec();
        });
    }
}

/// Serves one connection, after the listener's TLS step: as HTTP, or
/// forwarded as bytes, by the listener's protocol or, for AUTO, by what its
/// first bytes say (plaintext) or its ALPN (TLS).
async fn serve_connection(
    stream: TcpStream,
    connection: Arc<ConnectionContext>,
    settings: ConnectionSettings,
    terminator: &Terminator,
    builder: &auto::Builder<TokioExecutor>,
    context: &Arc<ListenerContext>,
    runtime: &Arc<ArcSwap<Runtime>>,
) {
    let stream = if terminator.is_enabled() {
        // Boxed: a handshake's state is large, and plaintext listeners'
        // connections should not carry room for it.
        match Box::pin(terminator.terminate(stream)).await {
            Ok(Terminated {
                io: Io::Plain(stream),
                ..
            }) => stream,
            Ok(Terminated {
                io,
                peer_identity,
                alpn,
            }) => {
                context.metrics.tls_handshake("ok");
                // TLS clients that speak HTTP say so by ALPN (sidecars,
                // gRPC, curl all do); without it, an AUTO listener with a
                // tcpCluster takes the bytes as opaque.
                let http = match settings.protocol {
                    Protocol::Tcp => false,
                    Protocol::Auto => alpn.is_some() || !settings.forwards_tcp,
                    Protocol::Http1 | Protocol::Http2 => true,
                };
                let connection = Arc::new(ConnectionContext {
                    peer_identity,
                    alpn: alpn.map(Arc::from),
                    ..(*connection).clone()
                });
                return serve_stream(io, http, connection, settings, builder, context, runtime)
                    .await;
            }
            Err(error) => {
                context.metrics.tls_handshake(error.reason);
                tracing::warn!(
                    listener = %context.name,
                    peer = %connection.peer,
                    reason = %error.reason,
                    error = %error.detail,
                    "TLS handshake failed: connection closed"
                );
                return;
            }
        }
    } else {
        stream
    };
    let http = match settings.protocol {
        Protocol::Http1 | Protocol::Http2 => true,
        Protocol::Tcp => false,
        Protocol::Auto if !settings.forwards_tcp => true,
        Protocol::Auto => match detect::detect(&stream, settings.detection).await {
            Detected::Http => true,
            Detected::Other => false,
            Detected::TimedOut => {
                context.metrics.detection_timeouts.inc();
                false
            }
            Detected::Closed => return,
        },
    };
    serve_stream(
        Io::Plain(stream),
        http,
        connection,
        settings,
        builder,
        context,
        runtime,
    )
    .await
}

/// Serves HTTP on a connection whose protocol is known, or forwards it.
async fn serve_stream(
    stream: Io,
    http: bool,
    connection: Arc<ConnectionContext>,
    settings: ConnectionSettings,
    builder: &auto::Builder<TokioExecutor>,
    context: &Arc<ListenerContext>,
    runtime: &Arc<ArcSwap<Runtime>>,
) {
    if http {
        return serve_http(stream, connection, settings.idle, builder, context, runtime).await;
    }
    let cluster = runtime.load().tcp_cluster(&context.name).cloned();
    match cluster {
        Some(cluster) => tcp::forward(stream, &cluster, context, settings.idle).await,
        // The listener changed under a connection that was being detected.
        None => tracing::debug!(
            listener = %context.name,
            peer = %connection.peer,
            "not HTTP, and the listener has no tcpCluster now: closed"
        ),
    }
}

/// Serves HTTP on one connection until it closes, idles out or drains.
async fn serve_http(
    stream: Io,
    connection: Arc<ConnectionContext>,
    idle: Duration,
    builder: &auto::Builder<TokioExecutor>,
    context: &Arc<ListenerContext>,
    runtime: &Arc<ArcSwap<Runtime>>,
) {
    let peer = connection.peer;
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
                let serving = pipeline::serve(&runtime, &context, connection, req, request);
                debug_assert_small(&serving, MAX_REQUEST_FUTURE, "per-request");
                Ok::<_, Infallible>(serving.await)
            }
        })
    };
    let io = watched(stream, activity.clone());
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = activity.idle(idle) => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(IDLE_CLOSE_GRACE.min(idle), conn.as_mut())
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
            // What is still open after the deadline (and the grace gRPC
            // streams get for their closing trailers) is closed with the
            // connection: a stopped proxy serves nothing.
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
}
