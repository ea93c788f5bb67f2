//! The listeners being served, and how they follow config changes.
//!
//! A change is applied in two steps. [`Listeners::prepare`] does everything
//! that can fail (binding new addresses) and changes nothing, so a port in
//! use rejects the update as a whole. [`Listeners::commit`] cannot fail: a
//! removed listener stops accepting and drains its connections; a changed
//! one keeps its socket (no window where the port refuses connections),
//! starts accepting with the new settings, and drains the connections
//! accepted under the old ones. A listener whose settings did not change is
//! left alone: its route table comes from the runtime, so a route change
//! never touches connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::access_log::{AccessLog, AccessLogs};
use crate::drain::Drain;
use crate::istio::IstioMetrics;
use arc_swap::{ArcSwap, ArcSwapOption};

use crate::downstream::ListenerContext;
use crate::filter::Filters;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::server;
use crate::transport::Terminator;
use crate::vdag::VDags;
use gridmesh_config::{ListenerSpec, LogDestination};
use gridmesh_identity::IdentityStore;
use gridmesh_proto::config::listener::{Direction, TlsMode};
use gridmesh_telemetry::{Tracing, TracingError};

use crate::trace::Tracers;

/// Pending connections the kernel queues per listener.
const BACKLOG: u32 = 1024;

/// A listener that cannot be served as its config says.
#[derive(Debug, thiserror::Error)]
#[error("listener {name:?}: {problem}")]
pub struct ListenerError {
    pub name: String,
    pub problem: ListenerProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerProblem {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open its access log {destination}: {source}")]
    AccessLog {
        destination: LogDestination,
        source: std::io::Error,
    },
    #[error("cannot start its tracing: {0}")]
    Tracing(TracingError),
}

pub struct Listeners {
    /// The data plane's runtime: sockets register with its reactor and
    /// accept loops run on its workers, wherever the apply runs.
    data_plane: Handle,
    /// The filters of every listener's requests.
    filters: Filters,
    active: Mutex<Vec<Active>>,
    /// Every downstream connection, so a proxy drain can wait for them.
    pub connections: TaskTracker,
    /// What listeners with a TLS mode present and verify peers with.
    identity: Option<Arc<IdentityStore>>,
    /// How each listener's requests are traced, if at all.
    tracers: Tracers,
    access_logs: AccessLogs,
    istio: IstioMetrics,
    vdags: Arc<VDags>,
}

struct Active {
    spec: ListenerSpec,
    socket: Arc<TcpListener>,
    local_addr: SocketAddr,
    context: Arc<ListenerContext>,
}

/// What [`Listeners::commit`] will do, with the sockets already bound.
pub struct Plan {
    listeners: Vec<Planned>,
}

struct Planned {
    spec: ListenerSpec,
    socket: Arc<TcpListener>,
    local_addr: SocketAddr,
    access_log: Option<Arc<AccessLog>>,
    tracing: Option<Arc<Tracing>>,
    /// Unchanged: keep serving as is.
    keep: bool,
}

impl Listeners {
    /// The vDAG requests the listeners' traffic carries (admin `/vdags`).
    pub fn vdags(&self) -> &Arc<VDags> {
        &self.vdags
    }

    pub fn new(
        data_plane: Handle,
        filters: Filters,
        identity: Option<Arc<IdentityStore>>,
        tracers: Tracers,
        access_logs: AccessLogs,
        istio: IstioMetrics,
        vdags: Arc<VDags>,
    ) -> Listeners {
        Listeners {
            data_plane,
            filters,
            active: Mutex::new(Vec::new()),
            connections: TaskTracker::new(),
            identity,
            tracers,
            access_logs,
            istio,
            vdags,
        }
    }

    pub fn data_plane(&self) -> &Handle {
        &self.data_plane
    }

    /// Binds what `specs` need that is not bound yet and opens their access
    /// logs. Changes nothing.
    pub fn prepare(&self, specs: &[ListenerSpec]) -> Result<Plan, ListenerError> {
        let active = self.active.lock();
        let mut listeners = Vec::with_capacity(specs.len());
        for spec in specs {
            let access_log = match &spec.access_log {
                Some(log) => Some(Arc::new(self.access_logs.open(log).map_err(|source| {
                    ListenerError {
                        name: spec.name.clone(),
                        problem: ListenerProblem::AccessLog {
                            destination: log.destination.clone(),
                            source,
                        },
                    }
                })?)),
                None => None,
            };
            let tracing =
                (self.tracers.for_listener(spec.tracing.as_ref())).map_err(|e| ListenerError {
                    name: spec.name.clone(),
                    problem: ListenerProblem::Tracing(e),
                })?;
            if let Some(same) = active.iter().find(|a| serves_same(&a.spec, spec)) {
                listeners.push(Planned {
                    spec: spec.clone(),
                    socket: same.socket.clone(),
                    local_addr: same.local_addr,
                    access_log,
                    tracing,
                    keep: true,
                });
                continue;
            }
            // A socket already bound to the address (this listener's, or
            // one being renamed) is taken over rather than bound again.
            // With port 0 only this listener's own: its port was picked
            // once and stays.
            let bound = active
                .iter()
                .find(|a| {
                    a.spec.addr == spec.addr && (spec.addr.port() != 0 || a.spec.name == spec.name)
                })
                .map(|a| (a.socket.clone(), a.local_addr));
            let (socket, local_addr) = match bound {
                Some(bound) => bound,
                None => self.bind(spec)?,
            };
            listeners.push(Planned {
                spec: spec.clone(),
                socket,
                local_addr,
                access_log,
                tracing,
                keep: false,
            });
        }
        Ok(Plan { listeners })
    }

    fn bind(&self, spec: &ListenerSpec) -> Result<(Arc<TcpListener>, SocketAddr), ListenerError> {
        let error = |source| ListenerError {
            name: spec.name.clone(),
            problem: ListenerProblem::Bind {
                addr: spec.addr,
                source,
            },
        };
        let _data_plane = self.data_plane.enter();
        let socket = if spec.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(error)?;
        // Rebinding a port this proxy just released must not wait out
        // TIME_WAIT.
        socket.set_reuseaddr(true).map_err(error)?;
        socket.bind(spec.addr).map_err(error)?;
        let listener = socket.listen(BACKLOG).map_err(error)?;
        let local_addr = listener.local_addr().map_err(error)?;
        Ok((Arc::new(listener), local_addr))
    }

    /// Serves `plan`: starts new and changed listeners (their requests are
    /// served from `runtime`), drains removed and replaced ones (their
    /// connections get `drain_timeout`).
    pub fn commit(
        &self,
        plan: Plan,
        runtime: &Arc<ArcSwap<Runtime>>,
        metrics: &Metrics,
        drain_timeout: Duration,
    ) {
        let mut active = self.active.lock();
        let mut previous = std::mem::take(&mut *active);
        for planned in plan.listeners {
            if planned.keep
                && let Some(i) = previous
                    .iter()
                    .position(|a| serves_same(&a.spec, &planned.spec))
            {
                let mut kept = previous.swap_remove(i);
                kept.spec = planned.spec;
                kept.context.access_log.store(planned.access_log);
                kept.context.tracing.store(planned.tracing);
                active.push(kept);
                continue;
            }
            let context = Arc::new(ListenerContext {
                name: planned.spec.name.as_str().into(),
                metrics: metrics.listener(&planned.spec.name),
                drain: Drain::default(),
                replaced: AtomicBool::new(false),
                filters: self.filters.clone(),
                tracing: ArcSwapOption::new(planned.tracing),
                access_log: ArcSwapOption::new(planned.access_log),
                istio: Arc::new(
                    (self.istio).listener(planned.spec.direction == Direction::Inbound),
                ),
                inbound: planned.spec.direction == Direction::Inbound,
                vdags: self.vdags.clone(),
            });
            match planned.spec.direction {
                Direction::Inbound => {
                    let mtls = planned.spec.tls_mode != TlsMode::Disable;
                    self.vdags.set_inbound(planned.local_addr, mtls);
                }
                Direction::Outbound => self.vdags.set_outbound(planned.local_addr),
                _ => {}
            }
            self.data_plane.spawn(server::accept_loop(
                planned.socket.clone(),
                planned.spec.clone(),
                context.clone(),
                runtime.clone(),
                self.connections.clone(),
                Arc::new(Terminator::new(
                    planned.spec.tls_mode,
                    planned.spec.protocol,
                    planned.spec.protocol_detection_timeout,
                    self.identity.as_ref(),
                )),
            ));
            tracing::info!(listener = %planned.spec.name, addr = %planned.local_addr, "listener serving");
            active.push(Active {
                spec: planned.spec,
                socket: planned.socket,
                local_addr: planned.local_addr,
                context,
            });
        }
        let _data_plane = self.data_plane.enter();
        for gone in previous {
            tracing::info!(listener = %gone.spec.name, "listener draining");
            gone.context.replaced.store(true, Ordering::Relaxed);
            gone.context.drain.start(drain_timeout);
        }
    }

    /// Starts draining every listener (the proxy is shutting down). Their
    /// sockets close as their accept loops end.
    pub fn drain_all(&self, drain_timeout: Duration) {
        let _data_plane = self.data_plane.enter();
        let all = std::mem::take(&mut *self.active.lock());
        for a in all {
            a.context.drain.start(drain_timeout);
        }
    }

    /// Name and bound address of every listener being served.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.active
            .lock()
            .iter()
            .map(|a| (a.spec.name.clone(), a.local_addr))
            .collect()
    }
}

/// Whether a listener serving `a` can go on as is to serve `b`. Requests
/// look their route table up by listener name in the current runtime, so
/// the table's index in the snapshot (which moves whenever a table before
/// it is added, removed or, over xDS, updated) is no reason to restart.
/// Whether `b` can be served by the listener serving `a`: route tables,
/// access logs and tracing may change under a running listener.
fn serves_same(a: &ListenerSpec, b: &ListenerSpec) -> bool {
    ListenerSpec {
        route_table: b.route_table,
        access_log: b.access_log.clone(),
        tracing: b.tracing.clone(),
        ..a.clone()
    } == *b
}
