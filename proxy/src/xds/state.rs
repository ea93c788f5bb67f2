//! What the sidecar holds from the control plane, and how one delta
//! response becomes the next snapshot.
//!
//! Each response is judged resource by resource: a resource that cannot be
//! decoded, or that the whole config cannot accept (a route to a missing
//! cluster, a bad regex, a port already taken), is rejected and keeps its
//! previous value (or stays absent), and is not recorded as held, so a
//! reconnect asks for it again. Everything else in the response applies.
//! A listener whose route table has not arrived yet is held but not served
//! ("warming"): the xDS ordering sends listeners before route tables.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use gridmesh_proto::config::{self as pb, Bootstrap};
use gridmesh_proto::discovery::DeltaDiscoveryResponse;
use gridmesh_proto::resource::Kind;
use serde::Serialize;

use gridmesh_config::{self as config, ConfigError, Origin, Snapshot};

/// How many times one response is re-validated after rejecting what the
/// previous round found wrong. Each round rejects at least one resource, so
/// this only bounds pathological responses.
const MAX_ROUNDS: usize = 8;

/// The resources accepted from the control plane, on top of the static
/// bootstrap.
pub struct Held {
    /// The bootstrap file's content: settings and static resources.
    static_config: Bootstrap,
    /// Accepted dynamic resources, in the bootstrap's shape.
    dynamic: Bootstrap,
    /// Version of each accepted dynamic resource.
    versions: HashMap<Kind, BTreeMap<String, String>>,
    /// `xds:<address>`, recorded as each dynamic resource's origin.
    origin: String,
    /// Held listeners this sidecar could not bind (their port is taken),
    /// left out of what is served until the control plane changes them.
    unbound: HashSet<String>,
}

/// One response, decoded.
pub struct Update {
    pub kind: Kind,
    upserts: Vec<Upsert>,
    removals: Vec<String>,
    /// Resources refused before validation (undecodable, wrong type).
    rejected: Vec<Rejection>,
}

#[derive(Clone)]
struct Upsert {
    name: String,
    version: String,
    resource: Bootstrap,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub kind: String,
    pub name: String,
    pub reason: String,
}

/// What to serve after a response, and what to tell the control plane.
pub struct Outcome {
    /// The snapshot to apply; `None` when nothing applicable changed.
    pub snapshot: Option<Snapshot>,
    pub rejected: Vec<Rejection>,
    /// Listeners held but waiting for their route table.
    pub warming: Vec<String>,
    accepted: Accepted,
}

/// What to record as held once the snapshot is applied.
struct Accepted {
    kind: Kind,
    dynamic: Bootstrap,
    versions: BTreeMap<String, String>,
}

impl Update {
    /// Decodes a response for `kind`. Resources that do not decode, carry
    /// another type or a name other than the one they are sent under are
    /// rejected here.
    pub fn decode(kind: Kind, response: &DeltaDiscoveryResponse) -> Update {
        let mut update = Update {
            kind,
            upserts: Vec::new(),
            removals: response.removed_resources.clone(),
            rejected: Vec::new(),
        };
        let mut seen = HashSet::new();
        for r in &response.resources {
            let reject = |reason: String| Rejection {
                kind: kind.label().into(),
                name: r.name.clone(),
                reason,
            };
            if !seen.insert(r.name.as_str()) {
                update
                    .rejected
                    .push(reject("sent twice in one response".into()));
                continue;
            }
            let Some(any) = &r.resource else {
                update
                    .rejected
                    .push(reject("the resource has no body".into()));
                continue;
            };
            let mut resource = Bootstrap::default();
            match kind.unpack_into(any, &mut resource) {
                Ok(name) if name == r.name => update.upserts.push(Upsert {
                    name,
                    version: r.version.clone(),
                    resource,
                }),
                Ok(name) => update.rejected.push(reject(format!(
                    "the resource is named {name:?} inside but sent as {:?}",
                    r.name
                ))),
                Err(e) => update.rejected.push(reject(e.to_string())),
            }
        }
        update
    }

    /// Rejects the upsert of `name` (the proxy could not serve it, e.g. its
    /// port is taken). Returns whether this update carried it.
    pub fn reject(&mut self, name: &str, reason: String) -> bool {
        let Some(i) = self.upserts.iter().position(|u| u.name == name) else {
            return false;
        };
        self.upserts.remove(i);
        self.rejected.push(Rejection {
            kind: self.kind.label().into(),
            name: name.into(),
            reason,
        });
        true
    }

    /// Rejects the whole update.
    pub fn reject_all(&mut self, reason: String) {
        let names = self
            .upserts
            .drain(..)
            .map(|u| u.name)
            .chain(self.removals.drain(..));
        let kind = self.kind.label();
        self.rejected.extend(names.map(|name| Rejection {
            kind: kind.into(),
            name,
            reason: reason.clone(),
        }));
    }
}

impl Held {
    pub fn new(static_config: Bootstrap, address: &str) -> Held {
        Held {
            static_config,
            dynamic: Bootstrap::default(),
            versions: HashMap::new(),
            origin: format!("xds:{address}"),
            unbound: HashSet::new(),
        }
    }

    /// Leaves out of what is served a held listener that could not be
    /// bound when a later update (its route table) made it servable. It is
    /// tried again when its own resource changes.
    pub fn set_unbound(&mut self, listener: &str) {
        self.unbound.insert(listener.to_string());
    }

    /// Versions held for `kind` (sent as `initial_resource_versions` on
    /// reconnect).
    pub fn versions(&self, kind: Kind) -> BTreeMap<String, String> {
        self.versions.get(&kind).cloned().unwrap_or_default()
    }

    /// Works out what `update` changes. `served`: the snapshot built from
    /// what is held now; its clusters and route tables that the update does
    /// not carry are taken over instead of being converted again. Nothing is
    /// held until [`Held::commit`] (after the snapshot applied).
    pub fn evaluate(&self, update: &Update, served: Option<&Snapshot>) -> Outcome {
        let kind = update.kind;
        let mut rejected = update.rejected.clone();
        let mut upserts = update.upserts.clone();
        let mut removals = update.removals.clone();
        let static_names: HashSet<String> = kind
            .names(&self.static_config)
            .into_iter()
            .map(String::from)
            .collect();
        upserts.retain(|u| {
            let clash = static_names.contains(&u.name);
            if clash {
                rejected.push(Rejection {
                    kind: kind.label().into(),
                    name: u.name.clone(),
                    reason: "a static resource of the bootstrap has this name".into(),
                });
            }
            !clash
        });
        for _ in 0..MAX_ROUNDS {
            if upserts.is_empty() && removals.is_empty() {
                break;
            }
            let dynamic = self.with_changes(kind, &upserts, &removals);
            // An unbound listener the control plane changes is tried again.
            let unbound: HashSet<&str> = self
                .unbound
                .iter()
                .map(String::as_str)
                .filter(|name| kind != Kind::Listener || !upserts.iter().any(|u| u.name == *name))
                .collect();
            let (warming, any_left_out) = self.left_out(&dynamic, &unbound);
            // Warming listeners are checked too (against a stand-in for
            // their route table), so a bad one is refused now instead of
            // being held and then blocking its route table.
            let checked = self.checked(&dynamic);
            let changed: HashSet<&str> = upserts
                .iter()
                .map(|u| u.name.as_str())
                .chain(removals.iter().map(String::as_str))
                .collect();
            let build = |set: Bootstrap| match served {
                Some(previous) => {
                    let carryover = config::Carryover {
                        previous,
                        kind,
                        changed: &changed,
                    };
                    config::rebuild_snapshot(set, "xds", &carryover)
                }
                None => config::build_snapshot(set, "xds"),
            };
            // The sets are built again only on the error path (to name the
            // culprits): a large update is not copied more than it must be.
            let built = match build(checked) {
                // Nothing left out (warming or unbound): serve what was checked.
                Ok(snapshot) if !any_left_out => Ok(snapshot),
                Ok(_) => build(self.candidate(&dynamic, &unbound))
                    .map_err(|e| (e, self.candidate(&dynamic, &unbound))),
                Err(e) => Err((e, self.checked(&dynamic))),
            };
            match built {
                Ok(mut snapshot) => {
                    let versions = self.versions_after(kind, &upserts, &removals);
                    self.record_origins(&mut snapshot, &dynamic, kind, &versions);
                    return Outcome {
                        snapshot: Some(snapshot),
                        rejected,
                        warming,
                        accepted: Accepted {
                            kind,
                            dynamic,
                            versions,
                        },
                    };
                }
                Err((error, failed)) => {
                    let culprits = self.culprits(kind, &error, &failed, &upserts);
                    if culprits.is_empty() {
                        // Not one of this response's resources: what made
                        // the config invalid is a removal, or the response
                        // as a whole.
                        let reason = describe(&error.problems);
                        let blamed: Vec<String> = if removals.is_empty() {
                            upserts.drain(..).map(|u| u.name).collect()
                        } else {
                            std::mem::take(&mut removals)
                        };
                        if blamed.is_empty() {
                            break;
                        }
                        rejected.extend(blamed.into_iter().map(|name| Rejection {
                            kind: kind.label().into(),
                            name,
                            reason: reason.clone(),
                        }));
                        continue;
                    }
                    upserts.retain(|u| !culprits.contains_key(&u.name));
                    rejected.extend(culprits.into_iter().map(|(name, reason)| Rejection {
                        kind: kind.label().into(),
                        name,
                        reason,
                    }));
                }
            }
        }
        Outcome {
            snapshot: None,
            rejected,
            warming: Vec::new(),
            accepted: Accepted {
                kind,
                dynamic: self.dynamic.clone(),
                versions: self.versions(kind),
            },
        }
    }

    /// Records what `outcome` accepted as held.
    pub fn commit(&mut self, outcome: Outcome) {
        let Accepted {
            kind,
            dynamic,
            versions,
        } = outcome.accepted;
        if kind == Kind::Listener {
            let before = self.versions(kind);
            self.unbound
                .retain(|name| before.get(name) == versions.get(name));
        }
        self.dynamic = dynamic;
        self.versions.insert(kind, versions);
    }

    /// The dynamic resources with `upserts` and `removals` applied to `kind`.
    fn with_changes(&self, kind: Kind, upserts: &[Upsert], removals: &[String]) -> Bootstrap {
        let mut dynamic = self.dynamic.clone();
        let gone: HashSet<&str> = removals.iter().map(String::as_str).collect();
        retain(&mut dynamic, kind, |name| !gone.contains(name));
        // In place: a changed resource keeps its position, so the clusters
        // around an updated one keep theirs (routes refer to them by index).
        for u in upserts {
            upsert(&mut dynamic, kind, &u.name, &u.resource);
        }
        dynamic
    }

    fn versions_after(
        &self,
        kind: Kind,
        upserts: &[Upsert],
        removals: &[String],
    ) -> BTreeMap<String, String> {
        let mut versions = self.versions(kind);
        for name in removals {
            versions.remove(name);
        }
        for u in upserts {
            versions.insert(u.name.clone(), u.version.clone());
        }
        versions
    }

    /// Static plus dynamic resources, less the listeners [`Held::left_out`]
    /// leaves out.
    fn candidate(&self, dynamic: &Bootstrap, unbound: &HashSet<&str>) -> Bootstrap {
        let mut candidate = self.static_config.clone();
        merge(&mut candidate, dynamic);
        let tables: HashSet<String> = candidate
            .route_tables
            .iter()
            .map(|t| t.name.clone())
            .collect();
        candidate
            .listeners
            .retain(|l| !unbound.contains(l.name.as_str()) && has_table(l, &tables));
        candidate
    }

    /// The listeners not served: `unbound` ones, and those whose route
    /// table is missing (returned by name: they are warming). A listener
    /// that names no route table (a TCP listener) needs none.
    fn left_out(&self, dynamic: &Bootstrap, unbound: &HashSet<&str>) -> (Vec<String>, bool) {
        let all = || {
            self.static_config
                .listeners
                .iter()
                .chain(&dynamic.listeners)
        };
        let tables: HashSet<String> = (self.static_config.route_tables.iter())
            .chain(&dynamic.route_tables)
            .map(|t| t.name.clone())
            .collect();
        let served = |l: &&pb::Listener| !unbound.contains(l.name.as_str());
        let warming: Vec<String> = all()
            .filter(served)
            .filter(|l| !has_table(l, &tables))
            .map(|l| l.name.clone())
            .collect();
        let any = !warming.is_empty() || all().any(|l| unbound.contains(l.name.as_str()));
        (warming, any)
    }

    /// Static plus dynamic resources, with an empty stand-in for each route
    /// table a listener names that has not arrived yet: what validation
    /// sees, so that warming listeners are checked like served ones.
    fn checked(&self, dynamic: &Bootstrap) -> Bootstrap {
        let mut checked = self.static_config.clone();
        merge(&mut checked, dynamic);
        let tables: HashSet<&str> = checked
            .route_tables
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        let missing: BTreeSet<String> = checked
            .listeners
            .iter()
            .map(|l| l.route_table.clone())
            .filter(|t| !t.is_empty() && !tables.contains(t.as_str()))
            .collect();
        checked
            .route_tables
            .extend(missing.into_iter().map(|name| pb::RouteTable {
                name,
                ..Default::default()
            }));
        checked
    }

    /// This response's resources that the validator found problems in,
    /// with the problems as one message each. `failed`: the set it validated.
    fn culprits(
        &self,
        kind: Kind,
        error: &ConfigError,
        failed: &Bootstrap,
        upserts: &[Upsert],
    ) -> BTreeMap<String, String> {
        let names = kind.names(failed);
        let updated: HashSet<&str> = upserts.iter().map(|u| u.name.as_str()).collect();
        let mut culprits: BTreeMap<String, Vec<&config::Problem>> = BTreeMap::new();
        for p in &error.problems {
            let Some(at) = p.at.filter(|at| at.kind == kind) else {
                continue;
            };
            if let Some(name) = names.get(at.index).filter(|n| updated.contains(**n)) {
                culprits.entry(name.to_string()).or_default().push(p);
            }
        }
        culprits
            .into_iter()
            .map(|(name, problems)| {
                let problems: Vec<config::Problem> = problems.into_iter().cloned().collect();
                (name, describe(&problems))
            })
            .collect()
    }

    fn record_origins(
        &self,
        snapshot: &mut Snapshot,
        dynamic: &Bootstrap,
        kind: Kind,
        versions: &BTreeMap<String, String>,
    ) {
        for k in Kind::PUSH_ORDER {
            let held = if k == kind {
                versions.clone()
            } else {
                self.versions(k)
            };
            for name in k.names(dynamic) {
                let version = held.get(name).cloned().unwrap_or_default();
                snapshot.origins.insert(
                    (k, name.to_string()),
                    Origin {
                        source: self.origin.clone(),
                        version,
                    },
                );
            }
        }
    }
}

/// Whether a listener's route table (if it needs one) is among `tables`.
fn has_table(listener: &pb::Listener, tables: &HashSet<String>) -> bool {
    listener.route_table.is_empty() || tables.contains(&listener.route_table)
}

/// Keeps the resources of `kind` whose names pass `keep`.
fn retain(set: &mut Bootstrap, kind: Kind, keep: impl Fn(&str) -> bool) {
    match kind {
        Kind::Cluster => set.clusters.retain(|r| keep(&r.name)),
        Kind::Endpoints => set.endpoints.retain(|r| keep(&r.cluster)),
        Kind::AuthorizationPolicy => set.authorization_policies.retain(|r| keep(&r.name)),
        Kind::VDag => set.vdags.retain(|r| keep(&r.name)),
        Kind::Listener => set.listeners.retain(|r| keep(&r.name)),
        Kind::RouteTable => set.route_tables.retain(|r| keep(&r.name)),
    }
}

/// Puts the resource of `kind` that `from` holds in place of the one named
/// `name` in `set`, or after the others when `set` has none.
fn upsert(set: &mut Bootstrap, kind: Kind, name: &str, from: &Bootstrap) {
    fn put<T: Clone>(list: &mut Vec<T>, new: &[T], is_it: impl Fn(&T) -> bool) {
        let Some(new) = new.first() else { return };
        match list.iter_mut().find(|r| is_it(r)) {
            Some(old) => *old = new.clone(),
            None => list.push(new.clone()),
        }
    }
    match kind {
        Kind::Cluster => put(&mut set.clusters, &from.clusters, |r| r.name == name),
        Kind::Endpoints => put(&mut set.endpoints, &from.endpoints, |r| r.cluster == name),
        Kind::AuthorizationPolicy => put(
            &mut set.authorization_policies,
            &from.authorization_policies,
            |r| r.name == name,
        ),
        Kind::VDag => put(&mut set.vdags, &from.vdags, |r| r.name == name),
        Kind::Listener => put(&mut set.listeners, &from.listeners, |r| r.name == name),
        Kind::RouteTable => put(&mut set.route_tables, &from.route_tables, |r| {
            r.name == name
        }),
    }
}

/// Appends every resource of `from` to `into`.
fn merge(into: &mut Bootstrap, from: &Bootstrap) {
    let pb::Bootstrap {
        listeners,
        route_tables,
        clusters,
        endpoints,
        authorization_policies,
        vdags,
        ..
    } = from;
    into.listeners.extend(listeners.iter().cloned());
    into.route_tables.extend(route_tables.iter().cloned());
    into.clusters.extend(clusters.iter().cloned());
    into.endpoints.extend(endpoints.iter().cloned());
    into.authorization_policies
        .extend(authorization_policies.iter().cloned());
    into.vdags.extend(vdags.iter().cloned());
}

fn describe(problems: &[config::Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}: {}", p.resource, p.field, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gridmesh_proto::discovery::Resource;
    use pbjson_types::Any;

    use super::*;

    const CLUSTERS: &str = r#"
clusters: [{ name: up }, { name: spare }]
endpoints: [{ cluster: up, endpoints: [{ address: "127.0.0.1:9001" }] }]
"#;

    const TABLE: &str = r#"
routeTables:
  - name: rt
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: r, route: { cluster: up } }] }]
"#;

    const LISTENER: &str = r#"
listeners: [{ name: l, address: "127.0.0.1:0", routeTable: rt }]
"#;

    fn set(yaml: &str) -> Bootstrap {
        config::parse_bootstrap(yaml, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    fn resources(kind: Kind, yaml: &str, version: &str) -> Vec<Resource> {
        kind.pack(&set(yaml))
            .into_iter()
            .map(|(name, any)| Resource {
                name,
                version: version.into(),
                resource: Some(any),
                ..Default::default()
            })
            .collect()
    }

    fn response(kind: Kind, resources: Vec<Resource>, removed: &[&str]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: kind.type_url().into(),
            nonce: "n".into(),
            resources,
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn held() -> Held {
        Held::new(Bootstrap::default(), "cp:15012")
    }

    /// Decodes, evaluates and commits one response, as the client does
    /// after a successful apply.
    fn step(held: &mut Held, kind: Kind, response: &DeltaDiscoveryResponse) -> Stepped {
        let update = Update::decode(kind, response);
        let mut outcome = held.evaluate(&update, None);
        let stepped = Stepped {
            snapshot: outcome.snapshot.take(),
            rejected: outcome.rejected.clone(),
            warming: outcome.warming.clone(),
        };
        held.commit(outcome);
        stepped
    }

    struct Stepped {
        snapshot: Option<Snapshot>,
        rejected: Vec<Rejection>,
        warming: Vec<String>,
    }

    impl Stepped {
        fn rejected_names(&self) -> Vec<&str> {
            let mut names: Vec<&str> = self.rejected.iter().map(|r| r.name.as_str()).collect();
            names.sort();
            names
        }

        fn reason(&self, name: &str) -> &str {
            &self
                .rejected
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("{name} not rejected: {:?}", self.rejected))
                .reason
        }

        fn snapshot(&self) -> &Snapshot {
            self.snapshot.as_ref().expect("a snapshot to apply")
        }
    }

    fn versions(held: &Held, kind: Kind) -> Vec<(String, String)> {
        held.versions(kind).into_iter().collect()
    }

    fn pair(name: &str, version: &str) -> (String, String) {
        (name.into(), version.into())
    }

    /// A held config with the clusters and endpoints of [`CLUSTERS`].
    fn with_clusters() -> Held {
        let mut held = held();
        for kind in [Kind::Cluster, Kind::Endpoints] {
            let stepped = step(
                &mut held,
                kind,
                &response(kind, resources(kind, CLUSTERS, "1"), &[]),
            );
            assert!(stepped.rejected.is_empty(), "{:?}", stepped.rejected);
        }
        held
    }

    /// Clusters and endpoints, then the route table: a held config with a
    /// table routing to `up`.
    fn with_clusters_and_table() -> Held {
        let mut held = with_clusters();
        let kind = Kind::RouteTable;
        let stepped = step(
            &mut held,
            kind,
            &response(kind, resources(kind, TABLE, "1"), &[]),
        );
        assert!(stepped.rejected.is_empty(), "{:?}", stepped.rejected);
        held
    }

    #[test]
    fn undecodable_resources_are_rejected_while_the_rest_applies() {
        let kind = Kind::Cluster;
        let mut sent = resources(
            kind,
            "clusters: [{ name: good }, { name: twice, connectTimeout: 3s }]",
            "7",
        );
        // The same name again in one response.
        sent.extend(resources(
            kind,
            "clusters: [{ name: twice, connectTimeout: 2s }]",
            "7",
        ));
        sent.push(Resource {
            name: "garbage".into(),
            version: "7".into(),
            resource: Some(Any {
                type_url: kind.type_url().into(),
                value: vec![0xff, 0xff, 0xff].into(),
            }),
            ..Default::default()
        });
        let mut wrong_type = resources(Kind::Listener, LISTENER, "7").remove(0);
        wrong_type.name = "wrong-type".into();
        sent.push(wrong_type);
        sent.push(Resource {
            name: "no-body".into(),
            version: "7".into(),
            ..Default::default()
        });
        let mut renamed = resources(kind, "clusters: [{ name: inside }]", "7").remove(0);
        renamed.name = "outside".into();
        sent.push(renamed);

        let mut held = held();
        let stepped = step(&mut held, kind, &response(kind, sent, &[]));

        assert_eq!(
            stepped.rejected_names(),
            ["garbage", "no-body", "outside", "twice", "wrong-type"]
        );
        assert!(stepped.reason("garbage").contains("malformed protobuf"));
        assert!(
            stepped
                .reason("wrong-type")
                .contains("gridmesh.v1.Listener")
        );
        assert!(stepped.reason("no-body").contains("no body"));
        assert!(stepped.reason("outside").contains("\"inside\""));
        assert!(stepped.reason("twice").contains("twice"));
        assert!(stepped.rejected.iter().all(|r| r.kind == "cluster"));
        let served: Vec<&str> = stepped
            .snapshot()
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        // The first copy of a duplicate applies; the second is refused.
        assert_eq!(served, ["good", "twice"]);
        assert_eq!(
            stepped.snapshot().clusters[1].connect_timeout,
            Duration::from_secs(3),
            "the first copy of `twice` is served"
        );
        assert_eq!(
            versions(&held, kind),
            [pair("good", "7"), pair("twice", "7")]
        );
    }

    #[test]
    fn a_route_to_a_missing_cluster_is_rejected_and_the_previous_table_kept() {
        let mut held = with_clusters_and_table();
        let kind = Kind::RouteTable;
        let mut sent = resources(
            kind,
            r#"
routeTables:
  - name: rt
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: r, route: { cluster: nope } }] }]
"#,
            "2",
        );
        let other = r#"
routeTables:
  - name: other
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: r, route: { cluster: spare } }] }]
"#;
        sent.extend(resources(kind, other, "2"));
        let stepped = step(&mut held, kind, &response(kind, sent, &[]));

        assert_eq!(stepped.rejected_names(), ["rt"]);
        let reason = stepped.reason("rt");
        assert!(reason.contains("routeTable \"rt\""), "{reason}");
        assert!(reason.contains("routes[0].route.cluster"), "{reason}");
        assert!(reason.contains("nope"), "{reason}");
        assert_eq!(stepped.rejected[0].kind, "routeTable");
        // The good table of the same response applies; rt keeps version 1
        // and its previous content.
        let snapshot = stepped.snapshot();
        let tables: Vec<&str> = snapshot
            .bootstrap
            .route_tables
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(tables, ["rt", "other"]);
        let rt = &snapshot.bootstrap.route_tables[0];
        let cluster = rt.virtual_hosts[0].routes[0]
            .route
            .as_ref()
            .unwrap()
            .cluster_specifier
            .clone();
        assert_eq!(
            cluster,
            Some(pb::route_action::ClusterSpecifier::Cluster("up".into()))
        );
        assert_eq!(versions(&held, kind), [pair("other", "2"), pair("rt", "1")]);
        // What the snapshot says it serves matches.
        assert_eq!(snapshot.origins[&(kind, "rt".into())].version, "1");
        assert_eq!(snapshot.origins[&(kind, "other".into())].version, "2");
        assert_eq!(
            snapshot.origins[&(kind, "rt".into())].source,
            "xds:cp:15012"
        );

        // Alone, the bad table changes nothing at all.
        let bad = resources(
            kind,
            "routeTables: [{ name: rt, virtualHosts: [{ name: v, domains: [\"*\"], routes: [{ match: { regex: \"(\" }, route: { cluster: up } }] }] }]",
            "3",
        );
        let stepped = step(&mut held, kind, &response(kind, bad, &[]));
        assert!(stepped.snapshot.is_none());
        assert!(
            stepped.reason("rt").contains("regex"),
            "{}",
            stepped.reason("rt")
        );
        assert_eq!(versions(&held, kind), [pair("other", "2"), pair("rt", "1")]);
    }

    #[test]
    fn a_listener_warms_until_its_route_table_arrives() {
        let mut held = with_clusters();
        let kind = Kind::Listener;
        let stepped = step(
            &mut held,
            kind,
            &response(kind, resources(kind, LISTENER, "1"), &[]),
        );
        assert!(stepped.rejected.is_empty(), "{:?}", stepped.rejected);
        assert_eq!(stepped.warming, ["l"]);
        assert!(
            stepped.snapshot().listeners.is_empty(),
            "a warming listener is not served"
        );
        // Held (acknowledged) all the same.
        assert_eq!(versions(&held, kind), [pair("l", "1")]);

        let kind = Kind::RouteTable;
        let stepped = step(
            &mut held,
            kind,
            &response(kind, resources(kind, TABLE, "1"), &[]),
        );
        assert!(stepped.rejected.is_empty(), "{:?}", stepped.rejected);
        assert!(stepped.warming.is_empty());
        let listeners: Vec<&str> = stepped
            .snapshot()
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(listeners, ["l"]);
    }

    #[test]
    fn removing_a_cluster_a_held_route_uses_is_rejected() {
        let mut held = with_clusters_and_table();
        let kind = Kind::Endpoints;
        let stepped = step(&mut held, kind, &response(kind, Vec::new(), &["up"]));
        assert!(
            stepped.rejected.is_empty(),
            "endpoints may go: {:?}",
            stepped.rejected
        );
        assert!(versions(&held, kind).is_empty());

        let kind = Kind::Cluster;
        let stepped = step(&mut held, kind, &response(kind, Vec::new(), &["up"]));
        assert_eq!(stepped.rejected_names(), ["up"]);
        assert!(
            stepped.reason("up").contains("routeTable \"rt\""),
            "{}",
            stepped.reason("up")
        );
        assert!(stepped.snapshot.is_none());
        assert_eq!(versions(&held, kind), [pair("spare", "1"), pair("up", "1")]);
        assert_eq!(kind.names(&held.dynamic), ["up", "spare"]);

        // A cluster nothing uses can go.
        let stepped = step(&mut held, kind, &response(kind, Vec::new(), &["spare"]));
        assert!(stepped.rejected.is_empty(), "{:?}", stepped.rejected);
        let served: Vec<&str> = stepped
            .snapshot()
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(served, ["up"]);
        assert_eq!(versions(&held, kind), [pair("up", "1")]);
    }

    #[test]
    fn a_dynamic_resource_with_a_static_name_is_rejected() {
        let mut held = Held::new(
            set("clusters: [{ name: up, connectTimeout: 1s }]"),
            "cp:15012",
        );
        let kind = Kind::Cluster;
        let sent = resources(
            kind,
            "clusters: [{ name: up, connectTimeout: 9s }, { name: other, connectTimeout: 3s }]",
            "1",
        );
        let stepped = step(&mut held, kind, &response(kind, sent, &[]));
        assert_eq!(stepped.rejected_names(), ["up"]);
        assert!(stepped.reason("up").contains("static"));
        let snapshot = stepped.snapshot();
        let served: Vec<(&str, Duration)> = snapshot
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.connect_timeout))
            .collect();
        assert_eq!(
            served,
            [
                ("up", Duration::from_secs(1)),
                ("other", Duration::from_secs(3))
            ]
        );
        assert!(
            !snapshot.origins.contains_key(&(kind, "up".into())),
            "up stays static"
        );
        assert_eq!(versions(&held, kind), [pair("other", "1")]);
    }

    #[test]
    fn a_rejected_upsert_is_not_recorded_and_commit_records_the_rest() {
        let mut held = with_clusters_and_table();
        let kind = Kind::Listener;
        let two = r#"
listeners:
  - { name: a, address: "127.0.0.1:0", routeTable: rt }
  - { name: b, address: "127.0.0.1:0", routeTable: rt }
"#;
        let mut update = Update::decode(kind, &response(kind, resources(kind, two, "1"), &[]));
        assert!(update.reject("a", "port taken".into()));
        assert!(!update.reject("a", "again".into()), "already rejected");
        assert!(!update.reject("zz", "not in this update".into()));
        let mut outcome = held.evaluate(&update, None);
        let snapshot = outcome.snapshot.take().expect("b applies");
        let served: Vec<&str> = snapshot.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(served, ["b"]);
        assert_eq!(
            outcome.rejected,
            [Rejection {
                kind: "listener".into(),
                name: "a".into(),
                reason: "port taken".into(),
            }]
        );
        assert!(
            versions(&held, kind).is_empty(),
            "nothing held before commit"
        );
        held.commit(outcome);
        assert_eq!(versions(&held, kind), [pair("b", "1")]);

        // reject_all: every upsert and removal refused, nothing changes.
        let sent = resources(
            kind,
            "listeners: [{ name: c, address: \"127.0.0.1:0\", routeTable: rt }]",
            "2",
        );
        let mut update = Update::decode(kind, &response(kind, sent, &["b"]));
        update.reject_all("draining".into());
        let outcome = held.evaluate(&update, None);
        assert!(outcome.snapshot.is_none());
        let mut names: Vec<&str> = outcome.rejected.iter().map(|r| r.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["b", "c"]);
        assert!(outcome.rejected.iter().all(|r| r.reason == "draining"));
        held.commit(outcome);
        assert_eq!(versions(&held, kind), [pair("b", "1")]);

        // A removal forgets the version.
        let stepped = step(&mut held, kind, &response(kind, Vec::new(), &["b"]));
        assert!(stepped.rejected.is_empty());
        assert!(stepped.snapshot().listeners.is_empty());
        assert!(versions(&held, kind).is_empty());
    }

    #[test]
    fn a_warming_listener_is_validated_before_it_is_held() {
        let mut held = with_clusters();
        let kind = Kind::Listener;
        let sent = resources(
            kind,
            r#"
listeners:
  - { name: bad, address: "nonsense", routeTable: rt }
  - { name: good, address: "127.0.0.1:0", routeTable: rt }
"#,
            "1",
        );
        let stepped = step(&mut held, kind, &response(kind, sent, &[]));
        assert_eq!(stepped.rejected_names(), ["bad"]);
        assert!(
            stepped.reason("bad").contains("address"),
            "{}",
            stepped.reason("bad")
        );
        assert_eq!(stepped.warming, ["good"]);
        assert_eq!(versions(&held, kind), [pair("good", "1")]);

        // The route table then applies, not blocked by the bad listener.
        let kind = Kind::RouteTable;
        let stepped = step(
            &mut held,
            kind,
            &response(kind, resources(kind, TABLE, "1"), &[]),
        );
        assert!(stepped.rejected.is_empty(), "{:?}", stepped.rejected);
        let served: Vec<&str> = stepped
            .snapshot()
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(served, ["good"]);
    }

    /// Random responses — valid resources, resources whose encoding was
    /// damaged or that are sent under another name, removals of held and
    /// unknown names, for every kind in any order — never panic the client
    /// state, every rejection names something the response carried and
    /// says why, and what is held always stays consistent: versions only
    /// for held resources, and the held config (warming listeners given
    /// their tables) validates.
    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        const POOL: &str = r#"
clusters: [{ name: up }, { name: spare, connectTimeout: 2s }, { name: bad, connectTimeout: -1s }]
endpoints:
  - { cluster: up, endpoints: [{ address: "127.0.0.1:9001" }] }
  - { cluster: spare, endpoints: [{ address: "not an address" }] }
  - { cluster: gone, endpoints: [] }
routeTables:
  - { name: rt, virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: r, route: { cluster: up } }] }] }
  - { name: rt2, virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: r, route: { cluster: spare } }] }] }
  - { name: rt3, virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: r, route: { weightedClusters: { clusters: [{ name: spare, weight: 1 }, { name: up, weight: 2 }] } } }] }] }
  - { name: broken, virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: r, match: { regex: "(" }, route: { cluster: up } }] }] }
listeners:
  - { name: l, address: "127.0.0.1:0", routeTable: rt }
  - { name: m, address: "127.0.0.1:0", routeTable: rt2 }
  - { name: n, address: "127.0.0.1:0", routeTable: missing }
authorizationPolicies:
  - { name: deny-admin, listeners: [l], action: DENY, rules: [{ requests: [{ prefix: /admin }] }] }
  - { name: allow-mesh, rules: [{ peers: [{ trustDomain: gridmesh.test }] }] }
  - { name: bad-peer, rules: [{ peers: [{ exact: "not a spiffe id" }] }] }
vdags:
  - { name: chain, entry: [a], tails: [b], nodes: [{ label: a, cluster: up }, { label: b, cluster: spare }], edges: [{ from: a, to: b }] }
  - { name: loop, entry: [a], tails: [c], nodes: [{ label: a, cluster: up }, { label: b, cluster: up }, { label: c, cluster: up }], edges: [{ from: a, to: b }, { from: b, to: a }, { from: b, to: c }] }
  - { name: elsewhere, entry: [a], tails: [a], nodes: [{ label: a, cluster: gone }] }
"#;

        #[derive(Debug, Clone)]
        enum Damage {
            None,
            Bytes(Vec<(usize, u8)>),
            Renamed(String),
        }

        fn damage() -> impl Strategy<Value = Damage> {
            prop_oneof![
                4 => Just(Damage::None),
                1 => prop::collection::vec((any::<usize>(), any::<u8>()), 1..4).prop_map(Damage::Bytes),
                1 => "[a-z]{1,3}".prop_map(Damage::Renamed),
            ]
        }

        fn step() -> impl Strategy<Value = (Kind, Vec<(usize, Damage)>, Vec<String>)> {
            (
                prop::sample::select(Kind::PUSH_ORDER.to_vec()),
                prop::collection::vec((any::<usize>(), damage()), 0..4),
                prop::collection::vec(
                    prop::sample::select(vec![
                        "up",
                        "spare",
                        "bad",
                        "gone",
                        "rt",
                        "rt2",
                        "rt3",
                        "l",
                        "m",
                        "x",
                        "deny-admin",
                        "bad-peer",
                        "chain",
                        "elsewhere",
                    ])
                    .prop_map(str::to_string),
                    0..3,
                ),
            )
        }

        fn sent(kind: Kind, picks: &[(usize, Damage)]) -> Vec<Resource> {
            let pool = resources(kind, POOL, "v");
            picks
                .iter()
                .map(|(i, damage)| {
                    let mut r = pool[i % pool.len()].clone();
                    r.version = format!("v{i}");
                    match damage {
                        Damage::None => {}
                        Damage::Bytes(edits) => {
                            let any = r.resource.as_mut().expect("a body");
                            let mut bytes = any.value.to_vec();
                            for (at, byte) in edits {
                                if !bytes.is_empty() {
                                    let at = at % bytes.len();
                                    bytes[at] ^= byte | 1;
                                }
                            }
                            any.value = bytes.into();
                        }
                        Damage::Renamed(name) => r.name = name.clone(),
                    }
                    r
                })
                .collect()
        }

        /// A snapshot's converted resources, comparable.
        fn converted(snapshot: &Snapshot) -> String {
            let tables: Vec<_> = snapshot
                .route_tables
                .iter()
                .map(|t| (&t.name, &t.virtual_hosts))
                .collect();
            let authorization: BTreeMap<_, _> = snapshot.authorization.iter().collect();
            let vdags: BTreeMap<_, _> = snapshot.vdags.iter().collect();
            format!(
                "{:?}\n{tables:?}\n{:?}\n{authorization:?}\n{vdags:?}",
                snapshot.clusters, snapshot.listeners
            )
        }

        proptest! {
            #![proptest_config(crate::fuzz_config(256))]

            #[test]
            fn fuzz_responses_keep_the_held_state_consistent(steps in prop::collection::vec(step(), 1..12)) {
                let mut held = held();
                let mut served = None;
                for (kind, picks, removed) in steps {
                    let removed: Vec<&str> = removed.iter().map(String::as_str).collect();
                    let response = response(kind, sent(kind, &picks), &removed);
                    let carried: HashSet<&str> = response
                        .resources
                        .iter()
                        .map(|r| r.name.as_str())
                        .chain(removed.iter().copied())
                        .collect();
                    let update = Update::decode(kind, &response);
                    let mut outcome = held.evaluate(&update, served.as_ref());
                    // Taking over what the response does not carry builds
                    // what converting everything again builds.
                    let mut full = held.evaluate(&update, None);
                    prop_assert_eq!(&outcome.rejected, &full.rejected);
                    match (outcome.snapshot.take(), full.snapshot.take()) {
                        (Some(carried), Some(full)) => {
                            prop_assert_eq!(converted(&carried), converted(&full));
                            served = Some(carried);
                        }
                        (None, None) => {}
                        (carried, full) => prop_assert!(false, "{carried:?} but in full {full:?}"),
                    }
                    for r in &outcome.rejected {
                        prop_assert!(carried.contains(r.name.as_str()), "{r:?} was not in the response");
                        prop_assert!(!r.reason.trim().is_empty(), "{r:?}");
                    }
                    held.commit(outcome);
                    for kind in Kind::PUSH_ORDER {
                        let names: HashSet<&str> = kind.names(&held.dynamic).into_iter().collect();
                        for name in held.versions(kind).keys() {
                            prop_assert!(names.contains(name.as_str()), "{kind} {name} has a version but is not held");
                        }
                    }
                    let checked = held.checked(&held.dynamic);
                    if let Err(e) = config::build_snapshot(checked, "held") {
                        prop_assert!(false, "the held config does not validate: {e}");
                    }
                }
            }
        }
    }
}
