//! gridmesh's sidecar proxy.
//!
//! A request travels: accept (`transport`, `server`) -> filters (`filter`)
//! -> route (gridmesh-config's route tables) -> call the cluster (`call`:
//! pick, connect, retries; `cluster`, `balance`) -> upstream, and back,
//! with `pipeline` naming each phase and `body` watching the streams go by.
//! Config comes in as immutable snapshots (gridmesh-config), served through
//! `runtime`; `shared` applies them; `admin` and `metrics` observe from the
//! side.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

mod access_log;
mod admin;
mod balance;
mod body;
mod call;
mod cluster;
mod control;
mod control_plane;
mod detect;
mod discovery;
mod downstream;
mod drain;
mod error;
mod filter;
mod grpc;
mod headers;
mod identity;
mod istio;
mod listeners;
mod metrics;
mod pipeline;
mod record;
mod runtime;
mod server;
mod shared;
mod tcp;
mod trace;
mod transport;
mod vdag;
mod xds;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

pub use body::{Body, BoxError};
pub use error::ERROR_HEADER;
pub use filter::{Decision, FilterFactory, HttpFilter};
pub use shared::ApplyError;
pub use transport::ConnectionContext;

use crate::access_log::AccessLogs;
use crate::filter::Filters;
use crate::istio::{IstioMetrics, Workload};
use crate::listeners::Listeners;
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::trace::Tracers;
use crate::vdag::VDags;
use gridmesh_config::Snapshot;

/// Property and fuzz tests run `cases` cases, or `GRIDMESH_FUZZ_CASES` when
/// set (as the workspace's other fuzz tests do, see gridmesh_tests::fuzz).
/// No regression files: a failure prints its minimal input, which belongs
/// in a named test.
#[cfg(test)]
fn fuzz_config(cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("GRIDMESH_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..Default::default()
    }
}

/// After the drain deadline, how long gRPC streams get to send their
/// closing trailers before the proxy stops regardless.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("cannot start the admin server on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot follow the identity files: {0}")]
    Identity(#[from] gridmesh_identity::files::FilesError),
    #[error("cannot start the control thread: {0}")]
    Control(std::io::Error),
    #[error("cannot register Istio's metrics: {0}")]
    Metrics(prometheus::Error),
    #[error("cannot start tracing: {0}")]
    Tracing(#[from] gridmesh_telemetry::TracingError),
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    admin_addr: SocketAddr,
    stopped: JoinHandle<()>,
}

/// A proxy to start, with what its bootstrap cannot say: filters given in
/// code (the policy issue will deliver them over xDS as well).
pub struct ProxyBuilder {
    snapshot: Snapshot,
    filters: Vec<Arc<dyn FilterFactory>>,
}

impl ProxyBuilder {
    /// Adds a filter every request of every listener passes through, after
    /// the filters added before it.
    pub fn filter(mut self, filter: Arc<dyn FilterFactory>) -> Self {
        self.filters.push(filter);
        self
    }

    /// Binds every listener and the admin server, then serves. Binding
    /// happens first, so a port in use fails the start before anything
    /// serves. With an `xds` section, the proxy then follows the control
    /// plane, and is ready once its first complete config is applied.
    pub async fn start(self) -> Result<Proxy, StartError> {
        let ProxyBuilder { snapshot, filters } = self;
        let metrics = Arc::new(Metrics::default());
        let control = control::start().map_err(StartError::Control)?;
        let tracers = Tracers::new(
            snapshot.tracing.as_ref(),
            &metrics.registry,
            control.handle().clone(),
        )?;
        let identity = match snapshot.identity.clone() {
            Some(source) => Some(identity::start(
                source,
                metrics.identity(),
                snapshot.bootstrap.xds.as_ref(),
            )?),
            None => None,
        };
        let workload = Workload::from_env(identity.as_ref().map(|i| i.store.clone()));
        let istio =
            IstioMetrics::register(&metrics.unprefixed, workload).map_err(StartError::Metrics)?;
        let listeners = Listeners::new(
            Handle::current(),
            Filters::new(filters),
            identity.as_ref().map(|i| i.store.clone()),
            tracers,
            AccessLogs::new(metrics.access_logs()),
            istio,
            Arc::new(VDags::new(
                metrics.clone(),
                identity.as_ref().map(|i| i.store.clone()),
            )),
        );
        let resolver = Mutex::new(None);
        let admin_error = |source| StartError::Admin {
            addr: snapshot.admin_addr,
            source,
        };
        let admin = std::net::TcpListener::bind(snapshot.admin_addr).map_err(admin_error)?;
        let admin_addr = admin.local_addr().map_err(admin_error)?;
        let drain_timeout = snapshot.drain_timeout;
        let xds = snapshot.bootstrap.xds.clone().map(|source| {
            let tls = identity.as_ref().and_then(|identity| {
                let expected = gridmesh_identity::SpiffeId::parse(&source.identity).ok()?;
                Some(control_plane::ControlPlaneTls {
                    store: identity.store.clone(),
                    expected,
                })
            });
            xds::Client::new(source, snapshot.bootstrap.clone(), tls)
        });
        let staged = Shared::stage(
            &listeners,
            &metrics,
            &resolver,
            snapshot,
            None,
            identity.as_ref(),
        )?;
        // Without a control plane, the bootstrap is the complete config.
        let ready = xds.is_none();
        let (shared, plan) = Shared::new(staged, listeners, metrics, resolver, ready, identity);
        control
            .serve(admin, shared.clone(), xds)
            .map_err(|source| StartError::Admin {
                addr: admin_addr,
                source,
            })?;
        shared.start_listeners(plan, drain_timeout);

        let stopped = tokio::spawn({
            let shared = shared.clone();
            async move {
                shared.drain.started().await;
                // Connections shut down gracefully on their own; wait for
                // their in-flight requests, but not past the deadline (plus
                // time for gRPC streams' closing trailers).
                let connections = &shared.listeners.connections;
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
            admin_addr,
            stopped,
        })
    }
}

impl Proxy {
    /// Starts a proxy serving `snapshot` (see [`ProxyBuilder::start`]).
    pub async fn start(snapshot: Snapshot) -> Result<Proxy, StartError> {
        Proxy::builder(snapshot).start().await
    }

    /// A proxy to start with more than its bootstrap says.
    pub fn builder(snapshot: Snapshot) -> ProxyBuilder {
        ProxyBuilder {
            snapshot,
            filters: Vec::new(),
        }
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared
            .listeners
            .addrs()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves `snapshot` from now on (what the xDS client does with each
    /// accepted update): in-flight requests finish on the config they
    /// started with; listeners, clusters, pools that did not change stay.
    pub fn apply(&self, snapshot: Snapshot) -> Result<(), ApplyError> {
        self.shared.apply(snapshot)
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
