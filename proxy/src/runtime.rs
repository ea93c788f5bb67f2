//! The config being served, and how a new snapshot becomes it.
//!
//! A request loads the [`Runtime`] once and is served by it to the end, so a
//! swap never changes a request midway. Building the next runtime reuses
//! what survives the change: a cluster whose settings are unchanged keeps
//! its pools, breakers, load history and retry budget, and only takes the
//! new endpoint list.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cluster::{Cluster, NoResolver};
use crate::metrics::Metrics;
use gridmesh_config::route::RouteTable;
use gridmesh_config::{EndpointAddress, Snapshot};

pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    /// In the snapshot's cluster order (routes refer to clusters by index).
    pub clusters: Vec<Arc<Cluster>>,
    /// Listener name -> index of its route table in the snapshot.
    tables_by_listener: HashMap<String, usize>,
}

impl Runtime {
    /// Builds the runtime for `snapshot`. Clusters of `previous` that can
    /// take their new spec are updated in place (their endpoint changes are
    /// visible right away, even to requests on the previous runtime: an
    /// endpoint that went away should not get new requests either).
    /// `resolver` is needed when the snapshot has hostname endpoints.
    pub fn build(
        snapshot: Snapshot,
        previous: Option<&Runtime>,
        metrics: &Metrics,
        resolver: Option<&hickory_resolver::TokioResolver>,
    ) -> Result<Runtime, NoResolver> {
        let reusable: HashMap<String, &Arc<Cluster>> = previous
            .map(|p| p.clusters.iter().map(|c| (c.name(), c)).collect())
            .unwrap_or_default();
        let clusters = snapshot
            .clusters
            .iter()
            .map(|spec| match reusable.get(&spec.name) {
                Some(cluster) if cluster.can_update_to(spec) => {
                    cluster.update(spec.clone())?;
                    Ok(Arc::clone(cluster))
                }
                _ => Cluster::new(spec.clone(), metrics, resolver),
            })
            .collect::<Result<_, _>>()?;
        let tables_by_listener = snapshot
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.route_table))
            .collect();
        Ok(Runtime {
            snapshot: Arc::new(snapshot),
            clusters,
            tables_by_listener,
        })
    }

    /// The route table of a listener; `None` once the listener was removed
    /// (its connections are draining).
    pub fn route_table(&self, listener: &str) -> Option<&RouteTable> {
        let index = *self.tables_by_listener.get(listener)?;
        self.snapshot.route_tables.get(index).map(|t| &**t)
    }
}

/// Whether a snapshot has endpoints given by hostname (it then needs DNS).
pub fn needs_dns(snapshot: &Snapshot) -> bool {
    snapshot.clusters.iter().any(|c| {
        c.endpoints
            .iter()
            .any(|e| matches!(e.address, EndpointAddress::Dns { .. }))
    })
}
