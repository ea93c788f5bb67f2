//! The proxy's state as the admin server and the xDS client see it, and the
//! one way config changes: [`Shared::apply`]. Requests see only the runtime
//! (`Shared::runtime`, handed to the listeners).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;

use crate::cluster::NoResolver;
use crate::discovery;
use crate::drain::Drain;
use crate::listeners::{ListenerError, Listeners, Plan};
use crate::metrics::Metrics;
use crate::runtime::{self, Runtime, StagedRuntime};
use gridmesh_config::{IdentitySource, Snapshot};
use gridmesh_identity::IdentityStore;

pub struct Shared {
    /// What requests are served with, swapped whole by [`Shared::apply`].
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    pub listeners: Listeners,
    /// Whether the first complete config is being served (`/ready`).
    ready: AtomicBool,
    /// Created when the first hostname endpoint appears; shared by every
    /// DNS watch so they share its cache.
    resolver: Mutex<Option<TokioResolver>>,
    /// Applies run one at a time (the xDS client and a drain may race).
    applying: Mutex<()>,
    /// The workload's identity (see [`Identity`]).
    pub identity: Option<Identity>,
}

/// The workload's identity: where it comes from (fixed by the bootstrap for
/// the proxy's life) and what is held now.
pub struct Identity {
    pub source: IdentitySource,
    pub store: Arc<IdentityStore>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("cannot set up DNS resolution from the system configuration: {0}")]
    Dns(String),
    #[error(transparent)]
    NoResolver(#[from] NoResolver),
    #[error("the proxy is draining")]
    Draining,
    #[error(
        "the identity source cannot change while the proxy runs (it is the bootstrap's; restart to change it)"
    )]
    IdentityChanged,
}

/// A snapshot made ready to serve: sockets bound, runtime built. Nothing is
/// visible to requests yet.
pub struct Staged {
    plan: Plan,
    runtime: StagedRuntime,
}

impl Shared {
    /// Everything that can fail about serving `snapshot`, done without
    /// changing what is served.
    pub fn stage(
        listeners: &Listeners,
        metrics: &Metrics,
        resolver: &Mutex<Option<TokioResolver>>,
        snapshot: Snapshot,
        previous: Option<&Runtime>,
        identity: Option<&Identity>,
    ) -> Result<Staged, ApplyError> {
        if snapshot.identity.as_ref() != identity.map(|i| &i.source) {
            return Err(ApplyError::IdentityChanged);
        }
        let resolver = if runtime::needs_dns(&snapshot) {
            let mut slot = resolver.lock();
            if slot.is_none() {
                *slot = Some(
                    discovery::dns::system_resolver()
                        .map_err(|e| ApplyError::Dns(e.to_string()))?,
                );
            }
            slot.clone()
        } else {
            None
        };
        let plan = listeners.prepare(&snapshot.listeners)?;
        let store = identity.map(|i| &i.store);
        let runtime = Runtime::build(snapshot, previous, metrics, resolver.as_ref(), store)?;
        Ok(Staged { plan, runtime })
    }

    /// The proxy serving `staged` once its listeners are committed (the
    /// returned plan). `ready` says whether this config is complete (no
    /// control plane to wait for).
    pub fn new(
        staged: Staged,
        listeners: Listeners,
        metrics: Arc<Metrics>,
        resolver: Mutex<Option<TokioResolver>>,
        ready: bool,
        identity: Option<Identity>,
    ) -> (Arc<Shared>, Plan) {
        let shared = Arc::new(Shared {
            runtime: Arc::new(ArcSwap::from_pointee(staged.runtime.commit())),
            metrics,
            drain: Drain::default(),
            listeners,
            ready: AtomicBool::new(ready),
            resolver,
            applying: Mutex::new(()),
            identity,
        });
        (shared, staged.plan)
    }

    /// Serves the listeners of a new proxy's first config.
    pub fn start_listeners(&self, plan: Plan, drain_timeout: std::time::Duration) {
        self.listeners
            .commit(plan, &self.runtime, &self.metrics, drain_timeout);
    }

    /// Serves `snapshot` from now on: new requests use it, requests in
    /// flight finish on the config they started with, connections and pools
    /// that are still valid stay. Either all of it applies or nothing does.
    pub fn apply(self: &Arc<Self>, snapshot: Snapshot) -> Result<(), ApplyError> {
        let _one_at_a_time = self.applying.lock();
        if self.drain.is_draining() {
            return Err(ApplyError::Draining);
        }
        let drain_timeout = snapshot.drain_timeout;
        let current = self.runtime.load_full();
        let staged = {
            // Clusters spawn their DNS watches onto the data plane.
            let _data_plane = self.listeners.data_plane().enter();
            Shared::stage(
                &self.listeners,
                &self.metrics,
                &self.resolver,
                snapshot,
                Some(&current),
                self.identity.as_ref(),
            )?
        };
        let runtime = staged.runtime.commit();
        let gone = Departed::between(&current.snapshot, &runtime.snapshot);
        self.runtime.store(Arc::new(runtime));
        self.listeners
            .commit(staged.plan, &self.runtime, &self.metrics, drain_timeout);
        gone.remove_metrics(&self.metrics);
        Ok(())
    }

    /// Ready once the first complete config is served and, with an
    /// identity, a certificate is held (without one, meshed peers would
    /// fail every handshake).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.drain.is_draining()
            && self.identity.as_ref().is_none_or(|i| i.store.is_ready())
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub(crate) fn start_drain(&self) {
        let _no_apply_meanwhile = self.applying.lock();
        let timeout = self.runtime.load().snapshot.drain_timeout;
        self.drain.start(timeout);
        self.listeners.drain_all(timeout);
    }
}

/// Clusters and listeners a config change removed: their metric series go
/// with them.
struct Departed {
    clusters: Vec<String>,
    listeners: Vec<String>,
}

impl Departed {
    fn between(before: &Snapshot, after: &Snapshot) -> Departed {
        let clusters: HashSet<&str> = after.clusters.iter().map(|c| c.name.as_str()).collect();
        let listeners: HashSet<&str> = after.listeners.iter().map(|l| l.name.as_str()).collect();
        Departed {
            clusters: before
                .clusters
                .iter()
                .filter(|c| !clusters.contains(c.name.as_str()))
                .map(|c| c.name.clone())
                .collect(),
            listeners: before
                .listeners
                .iter()
                .filter(|l| !listeners.contains(l.name.as_str()))
                .map(|l| l.name.clone())
                .collect(),
        }
    }

    fn remove_metrics(&self, metrics: &Metrics) {
        for cluster in &self.clusters {
            metrics.remove_cluster(cluster);
        }
        for listener in &self.listeners {
            metrics.remove_listener(listener);
        }
    }
}
