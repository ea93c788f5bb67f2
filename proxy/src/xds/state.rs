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

use std::collections::{BTreeMap, HashMap, HashSet};

use gridmesh_proto::config::{self as pb, Bootstrap};
use gridmesh_proto::discovery::DeltaDiscoveryResponse;
use gridmesh_proto::resource::Kind;
use serde::Serialize;

use crate::config::{self, ConfigError, Origin, Snapshot};

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
        }
    }

    /// Versions held for `kind` (sent as `initial_resource_versions` on
    /// reconnect).
    pub fn versions(&self, kind: Kind) -> BTreeMap<String, String> {
        self.versions.get(&kind).cloned().unwrap_or_default()
    }

    /// Works out what `update` changes. Nothing is held until
    /// [`Held::commit`] (after the snapshot applied).
    pub fn evaluate(&self, update: &Update) -> Outcome {
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
            let (candidate, warming) = self.candidate(&dynamic);
            match config::build_snapshot(candidate, "xds") {
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
                Err(error) => {
                    let culprits = self.culprits(kind, &error, &dynamic, &upserts);
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
        self.dynamic = dynamic;
        self.versions.insert(kind, versions);
    }

    /// The dynamic resources with `upserts` and `removals` applied to `kind`.
    fn with_changes(&self, kind: Kind, upserts: &[Upsert], removals: &[String]) -> Bootstrap {
        let mut dynamic = self.dynamic.clone();
        let gone: HashSet<&str> = removals
            .iter()
            .map(String::as_str)
            .chain(upserts.iter().map(|u| u.name.as_str()))
            .collect();
        retain(&mut dynamic, kind, |name| !gone.contains(name));
        for u in upserts {
            merge(&mut dynamic, &u.resource);
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

    /// Static plus dynamic resources, less listeners whose route table is
    /// missing (returned by name: they are warming).
    fn candidate(&self, dynamic: &Bootstrap) -> (Bootstrap, Vec<String>) {
        let mut candidate = self.static_config.clone();
        merge(&mut candidate, dynamic);
        let tables: HashSet<String> = candidate
            .route_tables
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let mut warming = Vec::new();
        candidate.listeners.retain(|l| {
            let ready = tables.contains(&l.route_table);
            if !ready {
                warming.push(l.name.clone());
            }
            ready
        });
        (candidate, warming)
    }

    /// This response's resources that the validator found problems in,
    /// with the problems as one message each.
    fn culprits(
        &self,
        kind: Kind,
        error: &ConfigError,
        dynamic: &Bootstrap,
        upserts: &[Upsert],
    ) -> BTreeMap<String, String> {
        let (candidate, _) = self.candidate(dynamic);
        let names = kind.names(&candidate);
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

/// Keeps the resources of `kind` whose names pass `keep`.
fn retain(set: &mut Bootstrap, kind: Kind, keep: impl Fn(&str) -> bool) {
    match kind {
        Kind::Cluster => set.clusters.retain(|r| keep(&r.name)),
        Kind::Endpoints => set.endpoints.retain(|r| keep(&r.cluster)),
        Kind::Listener => set.listeners.retain(|r| keep(&r.name)),
        Kind::RouteTable => set.route_tables.retain(|r| keep(&r.name)),
    }
}

/// Appends every resource of `from` to `into`.
fn merge(into: &mut Bootstrap, from: &Bootstrap) {
    let pb::Bootstrap {
        listeners,
        route_tables,
        clusters,
        endpoints,
        ..
    } = from;
    into.listeners.extend(listeners.iter().cloned());
    into.route_tables.extend(route_tables.iter().cloned());
    into.clusters.extend(clusters.iter().cloned());
    into.endpoints.extend(endpoints.iter().cloned());
}

fn describe(problems: &[config::Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}: {}", p.resource, p.field, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}
