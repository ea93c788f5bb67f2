//! The config being served, and how a new snapshot becomes it.
//!
//! A request loads the [`Runtime`] once and is served by it to the end, so a
//! swap never changes a request midway. Building the next runtime reuses
//! what survives the change: a cluster whose settings are unchanged keeps
//! its pools, breakers, load history and retry budget, and only takes the
//! new endpoint list — when the runtime is committed, not before, so a
//! staged change that is then abandoned has changed nothing served.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cluster::{Cluster, NoResolver};
use crate::metrics::Metrics;
use gridmesh_config::route::RouteTable;
use gridmesh_config::{ClusterSpec, EndpointAddress, Snapshot};
use gridmesh_identity::IdentityStore;

pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    /// In the snapshot's cluster order (routes refer to clusters by index).
    pub clusters: Vec<Arc<Cluster>>,
    /// Listener name -> index of its route table in the snapshot.
    tables_by_listener: HashMap<String, usize>,
    /// Listener name -> index of the cluster its opaque TCP goes to.
    tcp_clusters_by_listener: HashMap<String, usize>,
}

impl Runtime {
    /// Builds the runtime for `snapshot`, served once
    /// [`StagedRuntime::commit`] returns it. Clusters of `previous` that can
    /// take their new spec carry over; new ones are built here but serve
    /// nothing until then. `resolver` is needed when the snapshot has
    /// hostname endpoints.
    pub fn build(
        snapshot: Snapshot,
        previous: Option<&Runtime>,
        metrics: &Metrics,
        resolver: Option<&hickory_resolver::TokioResolver>,
        identity: Option<&Arc<IdentityStore>>,
    ) -> Result<StagedRuntime, NoResolver> {
        let reusable: HashMap<String, &Arc<Cluster>> = previous
            .map(|p| p.clusters.iter().map(|c| (c.name(), c)).collect())
            .unwrap_or_default();
        let mut updates = Vec::new();
        let clusters = snapshot
            .clusters
            .iter()
            .map(|spec| match reusable.get(&spec.name) {
                Some(cluster) if cluster.serves(spec) => Ok(Arc::clone(cluster)),
                Some(cluster) if cluster.can_update_to(spec) => {
                    if cluster.differs_from(spec) {
                        updates.push((Arc::clone(cluster), spec.clone()));
                    }
                    Ok(Arc::clone(cluster))
                }
                _ => Cluster::new(spec.clone(), metrics, resolver, identity),
            })
            .collect::<Result<_, _>>()?;
        let tables_by_listener = snapshot
            .listeners
            .iter()
            .filter_map(|l| Some((l.name.clone(), l.route_table?)))
            .collect();
        let tcp_clusters_by_listener = snapshot
            .listeners
            .iter()
            .filter_map(|l| Some((l.name.clone(), l.tcp_cluster?)))
            .collect();
        Ok(StagedRuntime {
            runtime: Runtime {
                snapshot: Arc::new(snapshot),
                clusters,
                tables_by_listener,
                tcp_clusters_by_listener,
            },
            updates,
        })
    }

    /// Where a listener's connections that are not HTTP go, if anywhere.
    pub fn tcp_cluster(&self, listener: &str) -> Option<&Arc<Cluster>> {
        let index = *self.tcp_clusters_by_listener.get(listener)?;
        self.clusters.get(index)
    }

    /// The route table of a listener; `None` once the listener was removed
    /// (its connections are draining).
    pub fn route_table(&self, listener: &str) -> Option<&RouteTable> {
        let index = *self.tables_by_listener.get(listener)?;
        self.snapshot.route_tables.get(index).map(|t| &**t)
    }
}

/// A runtime ready to serve, and the new endpoint lists of the clusters it
/// carries over from the one being served.
pub struct StagedRuntime {
    runtime: Runtime,
    updates: Vec<(Arc<Cluster>, Arc<ClusterSpec>)>,
}

impl StagedRuntime {
    /// Gives the carried-over clusters their new endpoints (also seen by
    /// requests still on the previous runtime: an endpoint that went away
    /// should not get new requests from anyone) and returns the runtime to
    /// swap in. Cannot fail.
    pub fn commit(self) -> Runtime {
        for (cluster, spec) in self.updates {
            cluster.update(spec);
        }
        self.runtime
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(endpoints: &str) -> Snapshot {
        let yaml = format!(
            "clusters: [{{ name: up }}]\nendpoints: [{{ cluster: up, endpoints: {endpoints} }}]\n"
        );
        gridmesh_config::load_str(&yaml, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    fn served(runtime: &Runtime) -> Vec<(String, u32)> {
        let status = serde_json::to_value(runtime.clusters[0].status()).unwrap();
        status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let address = e["address"].as_str().unwrap().to_string();
                (address, e["weight"].as_u64().unwrap() as u32)
            })
            .collect()
    }

    /// Staging is the phase that may still be abandoned (a port in use
    /// later in the same apply): until commit, the cluster serves its old
    /// endpoints, to requests on either runtime.
    #[tokio::test]
    async fn a_staged_change_serves_nothing_until_committed() {
        let metrics = Metrics::default();
        let first = Runtime::build(
            snapshot(r#"[{ address: "127.0.0.1:1001" }]"#),
            None,
            &metrics,
            None,
            None,
        )
        .unwrap()
        .commit();
        let before = vec![("127.0.0.1:1001".to_string(), 1)];
        assert_eq!(served(&first), before);
        let staged = Runtime::build(
            snapshot(
                r#"[{ address: "127.0.0.1:1001", weight: 3 }, { address: "127.0.0.1:1002" }]"#,
            ),
            Some(&first),
            &metrics,
            None,
            None,
        )
        .unwrap();
        assert_eq!(served(&first), before, "staging changed a served cluster");
        let second = staged.commit();
        let after = vec![
            ("127.0.0.1:1001".to_string(), 3),
            ("127.0.0.1:1002".to_string(), 1),
        ];
        assert_eq!(served(&second), after);
        assert!(
            Arc::ptr_eq(&first.clusters[0], &second.clusters[0]),
            "the cluster carried over"
        );
        // An abandoned stage leaves it as it is.
        drop(Runtime::build(snapshot("[]"), Some(&second), &metrics, None, None).unwrap());
        assert_eq!(served(&second), after);
    }
}
