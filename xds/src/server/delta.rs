//! Incremental xDS (`DeltaAggregatedResources`): per type, the stream
//! remembers what the client holds (name -> version) and sends only the
//! difference to what is served: upserts, then removals.
//!
//! What was sent counts as held from then on, whether the client
//! acknowledges it or not: a NACKed resource is not sent again until the
//! config changes it again (resending the same bytes would only be
//! rejected again).
//!
//! A type's upserts (and removals) are split into responses of bounded
//! size, each with its own nonce and answered on its own: a sidecar, and
//! this stream's encode buffer, never handle a whole large type at once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use gridmesh_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use gridmesh_proto::envoy::config::core::v3::Node;
use gridmesh_proto::resource::Kind;
use tonic::Status;

use super::{Answer, Answers, Context, MAX_SUBSCRIBED_NAMES, Nonce, StreamState};
use crate::clients::{Protocol, Subscribed, TypeView};
use crate::snapshot::{Entry, Resources, Snapshot, parse_version, version_text};

const WILDCARD: &str = "*";

/// A response carries at most about this many bytes of resources (or
/// removed names); a single larger resource goes alone.
pub(super) const MAX_RESPONSE_BYTES: usize = 32 * 1024;
/// ...and at most this many resources (or removed names).
pub(super) const MAX_RESPONSE_RESOURCES: usize = 500;
/// What a `Resource` adds to its name and `Any` when encoded: field tags
/// and lengths, and the 16-digit version.
const RESOURCE_OVERHEAD: usize = 48;

#[derive(Default)]
pub(super) struct State {
    types: BTreeMap<Kind, TypeState>,
}

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    /// Explicitly subscribed names (besides the wildcard).
    names: BTreeSet<Arc<str>>,
    /// What the client holds as far as this stream knows: (name, version)
    /// sorted by name, the names shared with the snapshot's. A sorted
    /// vector costs 24 bytes a resource, a third of a hash map's.
    held: Vec<(Arc<str>, u64)>,
    /// Named subscriptions already answered as "does not exist".
    told_absent: HashSet<Arc<str>>,
    answers: Answers,
    /// Resources held when the client last acknowledged the latest
    /// response (with nothing else of the type left unanswered).
    acked: usize,
    /// Every subscribed resource needs comparing with the snapshot: a new
    /// snapshot, the first request, a wildcard subscribed.
    dirty: bool,
    /// Names whose subscription changed since the last look. When nothing
    /// else changed only these are compared, so a request costs what it
    /// names, not what the stream holds.
    touched: BTreeSet<Arc<str>>,
    /// Names unsubscribed while the wildcard still covers them: the client
    /// cannot tell whether to keep them, so it is told either way — the
    /// resource again if served, its removal if not (the protocol's one
    /// exception to unsubscribing silently).
    ambiguous: HashSet<Arc<str>>,
    /// No response sent yet: the first one goes out even if empty, so the
    /// client knows the type is current.
    initial: bool,
}

/// One response to send: built from the snapshot only when its turn comes.
pub(super) struct Chunk {
    kind: Kind,
    nonce: String,
    upserts: Vec<Arc<str>>,
    removed: Vec<Arc<str>>,
}

impl StreamState for State {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    type Pending = Chunk;
    const PROTOCOL: Protocol = Protocol::Delta;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn type_url(request: &DeltaDiscoveryRequest) -> &str {
        &request.type_url
    }

    fn on_request(
        &mut self,
        kind: Kind,
        request: DeltaDiscoveryRequest,
        ctx: &Context<'_>,
    ) -> Result<(), Status> {
        let state = match self.types.get_mut(&kind) {
            Some(state) => {
                // Subscription changes apply whatever the nonce: only the
                // ACK/NACK is tied to it.
                let answer = state.answers.answer(
                    kind,
                    &request.response_nonce,
                    request.error_detail.as_ref(),
                    ctx,
                );
                if answer == Some(Answer::Ack) && state.answers.settled() {
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
                check_names(kind, request.initial_resource_versions.len())?;
                let mut held: Vec<(Arc<str>, u64)> = request
                    .initial_resource_versions
                    .into_iter()
                    .map(|(name, version)| (Arc::from(name), parse_version(&version)))
                    .collect();
                held.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                state.held = held;
                state
            }
        };
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                state.dirty |= !state.wildcard;
                state.wildcard = true;
            } else {
                let name: Arc<str> = Arc::from(name);
                if state.names.insert(name.clone()) {
                    state.touched.insert(name);
                }
            }
        }
        check_names(kind, state.names.len())?;
        let mut dropped_wildcard = false;
        for name in request.resource_names_unsubscribe {
            if name == WILDCARD {
                dropped_wildcard |= state.wildcard;
                state.wildcard = false;
            } else if let Some(name) = state.names.take(name.as_str()) {
                state.told_absent.remove(&name);
                if state.wildcard {
                    // Compared again below, as if the client held nothing.
                    state.forget(&name);
                    state.ambiguous.insert(name.clone());
                    state.touched.insert(name);
                } else {
                    // The client drops it by itself.
                    state.forget(&name);
                }
            }
            // Anything else is a phantom unsubscription: nothing to do.
        }
        if dropped_wildcard {
            // The client drops what only the wildcard gave it.
            let names = &state.names;
            state.held.retain(|(n, _)| names.contains(n));
        }
        Ok(())
    }

    fn on_snapshot(&mut self) {
        for state in self.types.values_mut() {
            state.dirty = true;
        }
    }

    fn responses(
        &mut self,
        snapshot: &Snapshot,
        nonce: &mut dyn FnMut() -> Nonce,
    ) -> Vec<(Kind, Chunk)> {
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for kind in Kind::PUSH_ORDER {
            let Some(state) = self
                .types
                .get_mut(&kind)
                .filter(|s| s.dirty || !s.touched.is_empty())
            else {
                continue;
            };
            let served = snapshot.resources(kind);
            let (resources, removed) = if std::mem::take(&mut state.dirty) {
                state.diff(served)
            } else {
                state.diff_touched(served)
            };
            state.touched.clear();
            state.ambiguous.clear();
            let initial = std::mem::take(&mut state.initial);
            if !resources.is_empty() || (initial && removed.is_empty()) {
                let size = |name: &Arc<str>| {
                    served
                        .entries
                        .get(&**name)
                        .map_or(0, |e| e.any.type_url.len() + e.any.value.len())
                        + name.len()
                        + RESOURCE_OVERHEAD
                };
                for part in chunked(resources, size) {
                    upserts.push((kind, part, Vec::new()));
                }
            }
            if !removed.is_empty() {
                let parts = chunked(removed, |name| name.len() + 4);
                removals.push(parts.into_iter().map(move |part| (kind, Vec::new(), part)));
            }
        }
        // Removals after every upsert, and in reverse push order: routes
        // stop naming a cluster before the cluster goes.
        removals.reverse();
        upserts
            .into_iter()
            .chain(removals.into_iter().flatten())
            .map(|(kind, upserts, removed)| {
                let nonce = nonce();
                if let Some(state) = self.types.get_mut(&kind) {
                    state.answers.sent(&nonce, false);
                }
                let chunk = Chunk {
                    kind,
                    nonce: nonce.text,
                    upserts,
                    removed,
                };
                (kind, chunk)
            })
            .collect()
    }

    fn build(chunk: Chunk, snapshot: &Snapshot) -> DeltaDiscoveryResponse {
        let served = snapshot.resources(chunk.kind);
        DeltaDiscoveryResponse {
            system_version_info: snapshot.version.clone(),
            resources: chunk
                .upserts
                .iter()
                .filter_map(|name| {
                    let entry = served.entries.get(&**name)?;
                    Some(Resource {
                        version: version_text(entry.version),
                        resource: Some(entry.any.clone()),
                        name: name.to_string(),
                        aliases: Vec::new(),
                        ttl: None,
                    })
                })
                .collect(),
            type_url: chunk.kind.type_url().to_string(),
            nonce: chunk.nonce,
            removed_resources: chunk.removed.iter().map(|n| n.to_string()).collect(),
            control_plane: None,
        }
    }

    fn view(&self) -> Vec<TypeView> {
        self.types
            .iter()
            .map(|(kind, state)| {
                let subscribed = Subscribed::of(state.wildcard, state.names.iter().map(|n| &**n));
                TypeView {
                    held: Some(state.held.len()),
                    acked: Some(state.acked),
                    ..state.answers.view(*kind, subscribed)
                }
            })
            .collect()
    }
}

/// Splits `items` into runs of at most [`MAX_RESPONSE_RESOURCES`] and
/// about [`MAX_RESPONSE_BYTES`] (by `size`), in order; an item larger than
/// that goes alone. Nothing gives one empty run.
fn chunked<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        if !chunk.is_empty()
            && (bytes + n > MAX_RESPONSE_BYTES || chunk.len() == MAX_RESPONSE_RESOURCES)
        {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += n;
        chunk.push(item);
    }
    if !chunk.is_empty() || out.is_empty() {
        out.push(chunk);
    }
    out
}

impl TypeState {
    /// What to send for this type: names of resources whose served version
    /// differs from the held one, and names the client holds (or asked for)
    /// that are not served, both in name order. Updates `held` as if the
    /// client applied them.
    fn diff(&mut self, served: &Resources) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        // Served and subscribed, in name order (the snapshot's names).
        let wanted: Box<dyn Iterator<Item = (&Arc<str>, &Entry)>> = if self.wildcard {
            Box::new(served.entries.iter())
        } else {
            Box::new(
                self.names
                    .iter()
                    .filter_map(|n| served.entries.get_key_value(&**n)),
            )
        };
        let capacity = if self.wildcard {
            served.entries.len()
        } else {
            self.names.len()
        };
        let mut held = Vec::with_capacity(capacity);
        let mut upserts = Vec::new();
        let mut removed = Vec::new();
        let mut old = std::mem::take(&mut self.held).into_iter().peekable();
        for (name, entry) in wanted {
            // Held names before this one are no longer served.
            while let Some((h, _)) = old.next_if(|(h, _)| **h < **name) {
                removed.push(h);
            }
            match old.next_if(|(h, _)| **h == **name) {
                Some((h, version)) if version == entry.version => {
                    // Share the snapshot's string, e.g. instead of one a
                    // reconnecting client reported.
                    let h = if Arc::ptr_eq(&h, name) {
                        h
                    } else {
                        name.clone()
                    };
                    held.push((h, version));
                }
                _ => {
                    held.push((name.clone(), entry.version));
                    upserts.push(name.clone());
                }
            }
        }
        removed.extend(old.map(|(h, _)| h));
        self.held = held;
        // Named subscriptions to resources that do not exist are told once
        // (again once a resource comes and goes); ambiguous ones always.
        self.told_absent
            .retain(|name| !served.entries.contains_key(name));
        for name in &self.names {
            if !served.entries.contains_key(name) && self.told_absent.insert(name.clone()) {
                removed.push(name.clone());
            }
        }
        removed.extend(
            self.ambiguous
                .iter()
                .filter(|name| !served.entries.contains_key(*name))
                .cloned(),
        );
        // A held name no longer served may also be a named subscription.
        removed.sort_unstable();
        removed.dedup();
        (upserts, removed)
    }

    /// [`Self::diff`] for the touched names alone: what a request changed
    /// when the snapshot did not. Both lists come out in name order.
    fn diff_touched(&mut self, served: &Resources) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let mut upserts = Vec::new();
        let mut removed = Vec::new();
        for name in &self.touched {
            let subscribed = self.wildcard || self.names.contains(name);
            let entry = served.entries.get_key_value(&**name).filter(|_| subscribed);
            let position = self.held.binary_search_by(|(h, _)| (**h).cmp(&**name));
            match (entry, position) {
                (Some((_, entry)), Ok(i)) if self.held[i].1 == entry.version => {}
                (Some((_, entry)), Ok(i)) => {
                    self.held[i].1 = entry.version;
                    upserts.push(name.clone());
                }
                (Some((shared, entry)), Err(i)) => {
                    self.held.insert(i, (shared.clone(), entry.version));
                    upserts.push(name.clone());
                }
                (None, Ok(i)) => {
                    self.held.remove(i);
                    removed.push(name.clone());
                }
                (None, Err(_)) => {
                    let absent_named = self.names.contains(name)
                        && !served.entries.contains_key(&**name)
                        && self.told_absent.insert(name.clone());
                    if absent_named || self.ambiguous.contains(name) {
                        removed.push(name.clone());
                    }
                }
            }
        }
        (upserts, removed)
    }

    /// Drops `name` from what the client holds.
    fn forget(&mut self, name: &str) {
        if let Ok(i) = self.held.binary_search_by(|(h, _)| (**h).cmp(name)) {
            self.held.remove(i);
        }
    }
}

/// Ends the stream when a type's subscriptions outgrow what one stream may
/// hold.
fn check_names(kind: Kind, count: usize) -> Result<(), Status> {
    if count > MAX_SUBSCRIBED_NAMES {
        return Err(Status::resource_exhausted(format!(
            "the stream subscribes to {count} {} names; at most {MAX_SUBSCRIBED_NAMES} are served per type",
            kind.label()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bounded_by_bytes_and_count() {
        assert_eq!(
            chunked(Vec::<usize>::new(), |n| *n),
            vec![Vec::<usize>::new()]
        );
        let half = MAX_RESPONSE_BYTES / 2;
        // Two halves fit, a third starts a new chunk; a too large item
        // goes alone.
        let items = vec![half, half, half, MAX_RESPONSE_BYTES * 3, 1];
        assert_eq!(
            chunked(items, |n| *n),
            vec![
                vec![half, half],
                vec![half],
                vec![MAX_RESPONSE_BYTES * 3],
                vec![1]
            ]
        );
        let many = chunked(vec![1; MAX_RESPONSE_RESOURCES * 2 + 1], |n| *n);
        let lens: Vec<usize> = many.iter().map(Vec::len).collect();
        assert_eq!(lens, [MAX_RESPONSE_RESOURCES, MAX_RESPONSE_RESOURCES, 1]);
    }

    /// The delta protocol against a model of a conforming client, over
    /// random request sequences and config changes: after every exchange
    /// the client holds exactly the served resources it is subscribed to
    /// (by name or wildcard), at their served versions — whatever it held
    /// at the start (`initial_resource_versions`, right or wrong), however
    /// it subscribed and unsubscribed, and whatever the config did.
    mod model {
        use std::collections::{BTreeMap, BTreeSet};

        use gridmesh_proto::config::{Bootstrap, Cluster};
        use proptest::prelude::*;

        use super::*;
        use crate::server::Context;
        use crate::snapshot::{Snapshot, version_text};

        const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

        #[derive(Debug, Clone)]
        enum Op {
            Subscribe(Vec<&'static str>),
            Unsubscribe(Vec<&'static str>),
            /// A new config: these clusters, each with a timeout that sets
            /// its version.
            Serve(BTreeMap<&'static str, u8>),
        }

        fn name() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec!["*", "a", "b", "c", "d", "e", "z"])
        }

        fn config() -> impl Strategy<Value = BTreeMap<&'static str, u8>> {
            prop::collection::btree_map(prop::sample::select(NAMES.to_vec()), 1u8..4, 0..5)
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                prop::collection::vec(name(), 0..4).prop_map(Op::Subscribe),
                prop::collection::vec(name(), 1..4).prop_map(Op::Unsubscribe),
                config().prop_map(Op::Serve),
            ]
        }

        fn snapshot(clusters: &BTreeMap<&'static str, u8>) -> Snapshot {
            let set = Bootstrap {
                clusters: clusters
                    .iter()
                    .map(|(name, timeout)| Cluster {
                        name: name.to_string(),
                        connect_timeout: Some(pbjson_types::Duration {
                            seconds: i64::from(*timeout),
                            nanos: 0,
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            Snapshot::new(&set, Vec::new())
        }

        /// What a conforming client does and holds.
        #[derive(Default)]
        struct Client {
            wildcard: bool,
            names: BTreeSet<&'static str>,
            holds: BTreeMap<String, String>,
        }

        impl Client {
            fn unsubscribe(&mut self, names: &[&'static str]) {
                for name in names {
                    if *name == WILDCARD {
                        self.wildcard = false;
                        let explicit = &self.names;
                        self.holds
                            .retain(|held, _| explicit.contains(held.as_str()));
                    } else if self.names.remove(name) && !self.wildcard {
                        // Covered by the wildcard, it is kept: the server
                        // says whether it stays.
                        self.holds.remove(*name);
                    }
                }
            }

            fn apply(&mut self, response: &DeltaDiscoveryResponse) {
                for resource in &response.resources {
                    self.holds
                        .insert(resource.name.clone(), resource.version.clone());
                }
                for name in &response.removed_resources {
                    self.holds.remove(name);
                }
            }

            fn expected(&self, served: &Snapshot) -> BTreeMap<String, String> {
                served
                    .resources(Kind::Cluster)
                    .entries
                    .iter()
                    .filter(|(name, _)| self.wildcard || self.names.contains(&***name))
                    .map(|(name, entry)| (name.to_string(), version_text(entry.version)))
                    .collect()
            }
        }

        proptest! {
            #![proptest_config(gridmesh_tests::fuzz::cases(512))]

            #[test]
            fn fuzz_a_conforming_client_always_holds_what_it_subscribed_to(
                first in prop::collection::vec(name(), 0..4),
                initially_held in prop::collection::btree_map(
                    prop::sample::select(NAMES.to_vec()), any::<bool>(), 0..4),
                start in config(),
                ops in prop::collection::vec(op(), 0..16),
            ) {
                let metrics = crate::metrics::Metrics::default();
                let ctx = Context { node_id: "n", stream: 1, metrics: &metrics };
                let mut served = snapshot(&start);
                let mut state = State::default();
                let mut client = Client::default();
                let mut nonce = 0;
                // The first request: what it subscribes to and what the
                // client says it holds, at the served version or a stale one.
                client.wildcard = first.is_empty() || first.contains(&WILDCARD);
                client.names = first.iter().copied().filter(|n| *n != WILDCARD).collect();
                for (name, right) in &initially_held {
                    let served_version = served
                        .resources(Kind::Cluster)
                        .entries
                        .get(*name)
                        .map(|e| version_text(e.version));
                    let version = match served_version {
                        Some(v) if *right => v,
                        _ => "0123456789abcdef".to_string(),
                    };
                    client.holds.insert(name.to_string(), version);
                }
                let request = DeltaDiscoveryRequest {
                    type_url: Kind::Cluster.type_url().into(),
                    resource_names_subscribe: first.iter().map(|n| n.to_string()).collect(),
                    initial_resource_versions: client.holds.clone().into_iter().collect(),
                    ..Default::default()
                };
                let requests = std::iter::once(Ok(request)).chain(ops.into_iter().map(Err));
                for step in requests {
                    match step {
                        Ok(request) => state.on_request(Kind::Cluster, request, &ctx).unwrap(),
                        Err(Op::Serve(clusters)) => {
                            served = snapshot(&clusters);
                            state.on_snapshot();
                        }
                        Err(Op::Subscribe(names)) => {
                            for name in &names {
                                if *name == WILDCARD {
                                    client.wildcard = true;
                                } else {
                                    client.names.insert(name);
                                }
                            }
                            let request = DeltaDiscoveryRequest {
                                type_url: Kind::Cluster.type_url().into(),
                                resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
                                ..Default::default()
                            };
                            state.on_request(Kind::Cluster, request, &ctx).unwrap();
                        }
                        Err(Op::Unsubscribe(names)) => {
                            client.unsubscribe(&names);
                            let request = DeltaDiscoveryRequest {
                                type_url: Kind::Cluster.type_url().into(),
                                resource_names_unsubscribe: names.iter().map(|n| n.to_string()).collect(),
                                ..Default::default()
                            };
                            state.on_request(Kind::Cluster, request, &ctx).unwrap();
                        }
                    }
                    let planned = state.responses(&served, &mut || {
                        nonce += 1;
                        Nonce { seq: nonce, text: format!("1-{nonce}") }
                    });
                    for (_, chunk) in planned {
                        client.apply(&State::build(chunk, &served));
                    }
                    prop_assert_eq!(&client.holds, &client.expected(&served));
                    let held = &state.types[&Kind::Cluster].held;
                    prop_assert!(held.windows(2).all(|w| w[0].0 < w[1].0), "held sorted and unique");
                    let _ = state.view();
                }
            }
        }
    }
}
