//! A sample upstream: one real TCP port that speaks HTTP/1.1 and HTTP/2 prior
//! knowledge (h2c), serving plain HTTP test endpoints and the gRPC `Echo`
//! service side by side. The end-to-end tests, the benchmark and the demo put
//! it behind the sidecars.
//!
//! Requests whose content-type starts with `application/grpc` go to [`Echo`]
//! (see `echo.proto`); everything else goes to the HTTP endpoints described in
//! [`http_endpoints`]. Every HTTP response carries `x-upstream: <name>`, and every gRPC
//! reply names the upstream in `EchoReply.server`, so tests can tell instances
//! apart.
//!
//! [`Echo`]: gridmesh_proto::testing::echo_server::Echo

mod echo;
mod http_endpoints;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Binds `addr` (use port 0 for a free port) and serves until the handle is
/// shut down or dropped. Must be called inside a tokio runtime.
pub async fn spawn(addr: SocketAddr, name: &str) -> std::io::Result<UpstreamHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let stats = Arc::new(UpstreamStats::default());
    let shutdown = CancellationToken::new();
    let server = server::Server::new(name, stats.clone());
    let task = tokio::spawn(server.run(listener, shutdown.clone()));
    Ok(UpstreamHandle {
        local_addr,
        name: name.to_owned(),
        stats,
        shutdown,
        task: Some(task),
    })
}

/// A running upstream. Dropping it stops the server at once: the listener
/// closes and open connections are cut, like a crashed process (what failover
/// tests want). [`UpstreamHandle::shutdown`] stops it gracefully instead.
#[derive(Debug)]
pub struct UpstreamHandle {
    local_addr: SocketAddr,
    name: String,
    stats: Arc<UpstreamStats>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl UpstreamHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &UpstreamStats {
        &self.stats
    }

    /// Stops accepting, lets in-flight requests and streams finish (HTTP/2
    /// connections get GOAWAY, idle HTTP/1.1 ones are closed), then returns.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            // A panic in the server task has already been reported by tokio;
            // there is nothing left to stop.
            let _ = task.await;
        }
    }
}

impl Drop for UpstreamHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its set of connection tasks,
            // which aborts every open connection with it.
            task.abort();
        }
    }
}

/// What an upstream has served so far. Tests use it to count attempts (e.g.
/// retries) and connections (pooling).
#[derive(Debug, Default)]
pub struct UpstreamStats {
    connections: AtomicU64,
    http_requests: AtomicU64,
    grpc_requests: AtomicU64,
}

impl UpstreamStats {
    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Plain HTTP requests received, including `/reset` ones that got no answer.
    pub fn http_requests(&self) -> u64 {
        self.http_requests.load(Ordering::Relaxed)
    }

    /// gRPC calls received, of any shape.
    pub fn grpc_requests(&self) -> u64 {
        self.grpc_requests.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.http_requests() + self.grpc_requests()
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
