//! State-of-the-world xDS (`StreamAggregatedResources`): every response
//! carries the whole subscribed set of its type, with a `version_info`
//! that is a hash over the set, so an unchanged set is never sent twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gridmesh_proto::discovery::{DiscoveryRequest, DiscoveryResponse};
use gridmesh_proto::envoy::config::core::v3::Node;
use gridmesh_proto::resource::Kind;
use tonic::Status;

use super::{Answer, Answers, Context, MAX_SUBSCRIBED_NAMES, Nonce, StreamState};
use crate::clients::{Protocol, Subscribed, TypeView};
use crate::snapshot::{Snapshot, version_of};

const WILDCARD: &str = "*";

#[derive(Default)]
pub(super) struct State {
    types: BTreeMap<Kind, TypeState>,
}

#[derive(Default)]
struct TypeState {
    subscription: Subscription,
    /// Until the client names a resource (or `*`), an empty list of names
    /// means everything: the legacy wildcard, which Envoy's first LDS and
    /// CDS requests rely on. Once it has named one, an empty list means
    /// nothing.
    named_once: bool,
    sent_version: Option<Arc<str>>,
    acked_version: Option<String>,
    answers: Answers,
    dirty: bool,
    /// Send even if the set's version is unchanged: the first request for
    /// the type, or a changed subscription, expects an answer.
    force: bool,
}

#[derive(Default, PartialEq, Eq)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
}

impl Subscription {
    /// What a request's `resource_names` ask for; `named_once` says whether
    /// the stream has named resources for the type before (see
    /// [`TypeState::named_once`]).
    fn of(names: Vec<String>, named_once: bool) -> Subscription {
        if names.is_empty() {
            return Subscription {
                wildcard: !named_once,
                names: BTreeSet::new(),
            };
        }
        let wildcard = names.iter().any(|n| n == WILDCARD);
        Subscription {
            wildcard,
            names: names.into_iter().filter(|n| n != WILDCARD).collect(),
        }
    }
}

impl StreamState for State {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    type Pending = DiscoveryResponse;
    const PROTOCOL: Protocol = Protocol::Sotw;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn type_url(request: &DiscoveryRequest) -> &str {
        &request.type_url
    }

    fn on_request(
        &mut self,
        kind: Kind,
        request: DiscoveryRequest,
        ctx: &Context<'_>,
    ) -> Result<(), Status> {
        let state = self.types.entry(kind).or_default();
        // Once a response of the type went out, only a request answering the
        // latest one counts: an older nonce (or none) means the client sent
        // it before seeing the latest response, which supersedes it,
        // subscription changes included (the protocol's rule, as
        // go-control-plane applies it).
        if let Some(latest) = &state.answers.latest_nonce
            && request.response_nonce != *latest
        {
            tracing::debug!(node = ctx.node_id, %kind, nonce = request.response_nonce, "stale nonce: request ignored");
            return Ok(());
        }
        if request.resource_names.len() > MAX_SUBSCRIBED_NAMES {
            return Err(Status::resource_exhausted(format!(
                "the request names {} {} resources; at most {MAX_SUBSCRIBED_NAMES} are served per type",
                request.resource_names.len(),
                kind.label()
            )));
        }
        let answer = state.answers.answer(
            kind,
            &request.response_nonce,
            request.error_detail.as_ref(),
            ctx,
        );
        if answer == Some(Answer::Ack) {
            state.acked_version = Some(request.version_info);
        }
        let first = state.answers.latest_nonce.is_none();
        let names_given = !request.resource_names.is_empty();
        let subscription = Subscription::of(request.resource_names, state.named_once);
        state.named_once |= names_given;
        if first || subscription != state.subscription {
            state.subscription = subscription;
            state.force = true;
            state.dirty = true;
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
    ) -> Vec<(Kind, DiscoveryResponse)> {
        let mut out = Vec::new();
        for kind in Kind::PUSH_ORDER {
            let Some(state) = self.types.get_mut(&kind).filter(|s| s.dirty) else {
                continue;
            };
            state.dirty = false;
            let served = snapshot.resources(kind);
            let (version, entries) = if state.subscription.wildcard {
                (
                    served.version_info.clone(),
                    served.entries.values().collect::<Vec<_>>(),
                )
            } else {
                let chosen: Vec<_> = state
                    .subscription
                    .names
                    .iter()
                    .filter_map(|n| served.entries.get_key_value(n.as_str()))
                    .collect();
                (
                    version_of(chosen.iter().map(|(n, e)| (&***n, e.version))),
                    chosen.into_iter().map(|(_, e)| e).collect(),
                )
            };
            if !std::mem::take(&mut state.force) && state.sent_version.as_ref() == Some(&version) {
                continue;
            }
            let nonce = nonce();
            state.answers.sent(&nonce, true);
            state.sent_version = Some(version.clone());
            out.push((
                kind,
                DiscoveryResponse {
                    version_info: version.to_string(),
                    resources: entries.into_iter().map(|e| e.any.clone()).collect(),
                    type_url: kind.type_url().to_string(),
                    nonce: nonce.text,
                    control_plane: None,
                },
            ));
        }
        out
    }

    fn build(response: DiscoveryResponse, _: &Snapshot) -> DiscoveryResponse {
        response
    }

    fn view(&self) -> Vec<TypeView> {
        self.types
            .iter()
            .map(|(kind, state)| {
                let subscribed = Subscribed::of(
                    state.subscription.wildcard,
                    state.subscription.names.iter().map(String::as_str),
                );
                TypeView {
                    acked_version: state.acked_version.clone(),
                    ..state.answers.view(*kind, subscribed)
                }
            })
            .collect()
    }
}
