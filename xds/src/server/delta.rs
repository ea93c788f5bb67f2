//! Incremental xDS (`DeltaAggregatedResources`): per type, the stream
//! remembers what the client holds (name -> version) and sends only the
//! difference to what is served: upserts, then removals.
//!
//! What was sent counts as held from then on, whether the client
//! acknowledges it or not: a NACKed resource is not sent again until the
//! config changes it again (resending the same bytes would only be
//! rejected again).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use gridmesh_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use gridmesh_proto::envoy::config::core::v3::Node;
use gridmesh_proto::resource::Kind;

use super::{Answer, Answers, Context, StreamState};
use crate::clients::{Protocol, Subscribed, TypeView};
use crate::snapshot::{Resources, Snapshot};

const WILDCARD: &str = "*";

#[derive(Default)]
pub(super) struct State {
    types: BTreeMap<Kind, TypeState>,
}

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    /// Explicitly subscribed names (besides the wildcard).
    names: BTreeSet<Arc<str>>,
    /// What the client holds, as far as this stream knows.
    held: HashMap<Arc<str>, Arc<str>>,
    /// Named subscriptions already answered as "does not exist".
    told_absent: HashSet<Arc<str>>,
    answers: Answers,
    /// Resources held when the latest response was acknowledged.
    acked: usize,
    /// Needs comparing with the snapshot.
    dirty: bool,
    /// No response sent yet: the first one goes out even if empty, so the
    /// client knows the type is current.
    initial: bool,
}

impl StreamState for State {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const PROTOCOL: Protocol = Protocol::Delta;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn type_url(request: &DeltaDiscoveryRequest) -> &str {
        &request.type_url
    }

    fn on_request(&mut self, kind: Kind, request: DeltaDiscoveryRequest, ctx: &Context<'_>) {
        let state = match self.types.get_mut(&kind) {
            Some(state) => {
                let answer = state.answers.answer(
                    kind,
                    &request.response_nonce,
                    request.error_detail.as_ref(),
                    ctx,
                );
                if answer == Some(Answer::Ack) {
                    state.acked = state.held.len();
                }
                state
            }
            None => {
                // The first request for a type: subscribing to nothing
                // means everything (the wildcard); it also says what the
                // client already holds, e.g. after a reconnect.
                let state = self.types.entry(kind).or_default();
                state.wildcard = request.resource_names_subscribe.is_empty();
                state.initial = true;
                state.dirty = true;
                state.held = request
                    .initial_resource_versions
                    .into_iter()
                    .map(|(name, version)| (Arc::from(name), Arc::from(version)))
                    .collect();
                state
            }
        };
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                state.dirty |= !state.wildcard;
                state.wildcard = true;
            } else {
                state.dirty |= state.names.insert(Arc::from(name));
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == WILDCARD {
                state.wildcard = false;
            } else {
                state.names.remove(name.as_str());
            }
        }
        // The client drops what it unsubscribed from by itself.
        if !state.wildcard {
            let names = &state.names;
            state.held.retain(|n, _| names.contains(n));
            state.told_absent.retain(|n| names.contains(n));
        }
    }

    fn on_snapshot(&mut self) {
        for state in self.types.values_mut() {
            state.dirty = true;
        }
    }

    fn responses(
        &mut self,
        snapshot: &Snapshot,
        nonce: &mut dyn FnMut() -> String,
    ) -> Vec<(Kind, DeltaDiscoveryResponse)> {
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for kind in Kind::PUSH_ORDER {
            let Some(state) = self.types.get_mut(&kind).filter(|s| s.dirty) else {
                continue;
            };
            state.dirty = false;
            let (resources, removed) = state.diff(snapshot.resources(kind));
            let initial = std::mem::take(&mut state.initial);
            if !resources.is_empty() || (initial && removed.is_empty()) {
                upserts.push((kind, resources, Vec::new()));
            }
            if !removed.is_empty() {
                removals.push((kind, Vec::new(), removed));
            }
        }
        // Removals after every upsert, and in reverse push order: routes
        // stop naming a cluster before the cluster goes.
        removals.reverse();
        upserts
            .into_iter()
            .chain(removals)
            .map(|(kind, resources, removed_resources)| {
                let nonce = nonce();
                if let Some(state) = self.types.get_mut(&kind) {
                    state.answers.sent(nonce.clone());
                }
                let response = DeltaDiscoveryResponse {
                    system_version_info: snapshot.version.clone(),
                    resources,
                    type_url: kind.type_url().to_string(),
                    nonce,
                    removed_resources,
                    control_plane: None,
                };
                (kind, response)
            })
            .collect()
    }

    fn view(&self) -> Vec<TypeView> {
        self.types
            .iter()
            .map(|(kind, state)| {
                let subscribed = Subscribed {
                    wildcard: state.wildcard,
                    names: state.names.iter().map(|n| n.to_string()).collect(),
                };
                TypeView {
                    held: Some(state.held.len()),
                    acked: Some(state.acked),
                    ..state.answers.view(*kind, subscribed)
                }
            })
            .collect()
    }
}

impl TypeState {
    /// What to send for this type: resources whose served version differs
    /// from the held one, and names the client holds (or asked for) that are
    /// not served. Updates `held` as if the client applied them.
    fn diff(&mut self, served: &Resources) -> (Vec<Resource>, Vec<String>) {
        let mut upserts = Vec::new();
        let mut upsert = |held: &mut HashMap<Arc<str>, Arc<str>>, name: &Arc<str>| {
            let Some(entry) = served.entries.get(name) else {
                return;
            };
            if held.get(name) != Some(&entry.version) {
                held.insert(name.clone(), entry.version.clone());
                upserts.push(Resource {
                    version: entry.version.to_string(),
                    resource: Some(entry.any.clone()),
                    name: name.to_string(),
                    aliases: Vec::new(),
                    ttl: None,
                });
            }
        };
        if self.wildcard {
            for name in served.entries.keys() {
                upsert(&mut self.held, name);
            }
        } else {
            for name in &self.names {
                upsert(&mut self.held, name);
            }
        }
        let mut removed: Vec<String> = Vec::new();
        self.held.retain(|name, _| {
            let keep = served.entries.contains_key(name);
            if !keep {
                removed.push(name.to_string());
            }
            keep
        });
        self.told_absent
            .retain(|name| !served.entries.contains_key(name));
        for name in &self.names {
            if !served.entries.contains_key(name)
                && self.told_absent.insert(name.clone())
                && !removed.iter().any(|r| **r == **name)
            {
                removed.push(name.to_string());
            }
        }
        removed.sort();
        (upserts, removed)
    }
}
