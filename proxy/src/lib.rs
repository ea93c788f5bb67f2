//! gridmesh's sidecar proxy.
//!
//! A request travels: accept (`server`) -> route (`route`) -> pick and
//! connect (`cluster`) -> upstream, with `forward` tying the steps together
//! and `body` watching the streams go by. Config comes in as an immutable
//! snapshot (`config`); `admin` and `metrics` observe from the side.
#![forbid(unsafe_code)]

mod admin;
mod balance;
mod body;
mod cluster;
pub mod config;
mod discovery;
mod drain;
mod error;
mod forward;
mod grpc;
mod headers;
mod metrics;
mod route;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

pub use error::ERROR_HEADER;

use crate::cluster::Cluster;
use crate::config::Snapshot;
use crate::metrics::Metrics;
use crate::server::{ListenerContext, Runtime, Shared};

/// After the drain deadline, how long gRPC streams get to send their
/// closing trailers before the proxy stops regardless.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind listener {name:?} on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up DNS resolution from the system configuration: {0}")]
    Dns(String),
    #[error("cannot start the admin server on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listeners: Vec<(String, SocketAddr)>,
    admin_addr: SocketAddr,
    stopped: JoinHandle<()>,
}

impl Proxy {
    /// Binds every listener and the admin server, then serves. Binding
    /// happens first, so a port in use fails the start before anything serves.
    pub async fn start(snapshot: Snapshot) -> Result<Proxy, StartError> {
        let metrics = Metrics::default();
        let needs_dns = snapshot.clusters.iter().any(|c| {
            c.endpoints
                .iter()
                .any(|e| matches!(e.address, config::EndpointAddress::Dns { .. }))
        });
        // One resolver for every DNS watch, so they share its cache.
        let resolver = needs_dns
            .then(discovery::dns::system_resolver)
            .transpose()
            .map_err(|e| StartError::Dns(e.to_string()))?;
        let clusters = snapshot
            .clusters
            .iter()
            .map(|spec| Cluster::new(spec.clone(), &metrics, resolver.as_ref()))
            .collect();
        let mut bound = Vec::with_capacity(snapshot.listeners.len());
        for spec in &snapshot.listeners {
            let listener =
                TcpListener::bind(spec.addr)
                    .await
                    .map_err(|source| StartError::Bind {
                        name: spec.name.clone(),
                        addr: spec.addr,
                        source,
                    })?;
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                name: spec.name.clone(),
                addr: spec.addr,
                source,
            })?;
            bound.push((spec.clone(), listener, addr));
        }
        let admin_error = |source| StartError::Admin {
            addr: snapshot.admin_addr,
            source,
        };
        let admin = std::net::TcpListener::bind(snapshot.admin_addr).map_err(admin_error)?;
        let admin_addr = admin.local_addr().map_err(admin_error)?;

        let shared = Arc::new(Shared {
            metrics,
            drain: Default::default(),
            runtime: ArcSwap::from_pointee(Runtime {
                snapshot: Arc::new(snapshot),
                clusters,
            }),
        });
        admin::spawn(admin, shared.clone()).map_err(|source| StartError::Admin {
            addr: admin_addr,
            source,
        })?;

        let connections = TaskTracker::new();
        let mut listeners = Vec::with_capacity(bound.len());
        for (spec, listener, addr) in bound {
            listeners.push((spec.name.clone(), addr));
            let context = Arc::new(ListenerContext {
                name: spec.name.clone(),
                route_table: spec.route_table,
                metrics: shared.metrics.listener(&spec.name),
            });
            tokio::spawn(server::accept_loop(
                listener,
                spec,
                context,
                shared.clone(),
                connections.clone(),
            ));
        }
        let stopped = tokio::spawn({
            let shared = shared.clone();
            async move {
                shared.drain.started().await;
                // Connections shut down gracefully on their own; wait for
                // their in-flight requests, but not past the deadline (plus
                // time for gRPC streams' closing trailers).
                connections.close();
                tokio::select! {
                    () = connections.wait() => {}
                    () = async {
                        shared.drain.expired().await;
                        tokio::time::sleep(DRAIN_GRACE).await;
                    } => {}
                }
            }
        });
        Ok(Proxy {
            shared,
            listeners,
            admin_addr,
            stopped,
        })
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Starts draining (as SIGTERM or `POST /drain` do).
    pub fn drain(&self) {
        self.shared.start_drain();
    }

    /// Resolves once draining has started (by any trigger).
    pub async fn draining(&self) {
        self.shared.drain.started().await
    }

    /// Waits until the proxy has drained and stopped.
    pub async fn stopped(self) {
        let _ = self.stopped.await;
    }
}

impl Shared {
    pub(crate) fn start_drain(&self) {
        let timeout = self.runtime.load().snapshot.drain_timeout;
        self.drain.start(timeout);
    }
}
