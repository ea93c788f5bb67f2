//! The accept loop and per-connection serving: protocol detection (HTTP/1.1
//! or h2c), then dispatch of each request to gRPC or plain HTTP.

use std::sync::Arc;

use gridmesh_net::{AcceptBackoff, accept};
use gridmesh_proto::testing::echo_server::EchoServer;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::Service;

use super::echo::EchoService;
use super::{UpstreamStats, http_endpoints};

/// Enough concurrent HTTP/2 streams per connection that the upstream never
/// limits a test or the benchmark (hyper's default is 200); the benchmark opens
/// 1,000 concurrent gRPC streams over one connection.
const MAX_CONCURRENT_STREAMS: u32 = 16_384;

pub(super) struct Server {
    /// `x-upstream` value, built once so that answering costs no allocation.
    name_header: HeaderValue,
    stats: Arc<UpstreamStats>,
    grpc: EchoServer<EchoService>,
    connection_builder: auto::Builder<TokioExecutor>,
}

/// Returned by the service to make hyper abort without answering: HTTP/1.1
/// closes the connection, HTTP/2 resets the stream.
#[derive(Debug)]
pub(super) struct AbortWithoutResponse;

impl std::fmt::Display for AbortWithoutResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request asked the upstream to abort without a response")
    }
}

impl std::error::Error for AbortWithoutResponse {}

impl Server {
    pub(super) fn new(name: &str, stats: Arc<UpstreamStats>) -> Self {
        let name_header = HeaderValue::from_str(name).unwrap_or_else(|_| {
            // Names come from test code and command lines; keep serving with
            // a visible placeholder rather than refusing to start.
            HeaderValue::from_static("invalid-upstream-name")
        });
        let mut connection_builder = auto::Builder::new(TokioExecutor::new());
        connection_builder
            .http2()
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        Self {
            name_header,
            stats,
            grpc: EchoServer::new(EchoService::new(name)),
            connection_builder,
        }
    }

    pub(super) async fn run(self, listener: TcpListener, shutdown: CancellationToken) {
        let server = Arc::new(self);
        let mut connections = JoinSet::new();
        let mut backoff = AcceptBackoff::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                (stream, _peer) = accept(&listener, &mut backoff, "upstream") => {
                    connections.spawn(server.clone().serve_connection(stream, shutdown.clone()));
                }
                // Reap finished connections so the set stays as small as the
                // number of open ones.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        while connections.join_next().await.is_some() {}
    }

    async fn serve_connection(self: Arc<Self>, stream: TcpStream, shutdown: CancellationToken) {
        UpstreamStats::count(&self.stats.connections);
        let server = self.clone();
        let service = service_fn(move |request| server.clone().handle(request));
        let connection = self
            .connection_builder
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            // Peers hanging up and `/reset` both end up here; neither is a
            // fault of the upstream.
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, AbortWithoutResponse> {
        if is_grpc(&request) {
            UpstreamStats::count(&self.stats.grpc_requests);
            // EchoServer is always ready and infallible; cloning it clones an Arc.
            let Ok(response) = self.grpc.clone().call(request).await;
            Ok(response)
        } else {
            UpstreamStats::count(&self.stats.http_requests);
            http_endpoints::handle(request, &self.name_header).await
        }
    }
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}
