//! The sidecar's xDS client: one delta ADS stream to the control plane.
//!
//! It subscribes to every resource kind (listeners by name when the
//! bootstrap lists them), turns each response into a snapshot off the data
//! plane (see [`state`]), applies it, and answers with an ACK, or a NACK
//! whose `error_detail` names each rejected resource and why. When the
//! stream breaks, the proxy keeps serving what it has and reconnects with
//! jittered exponential backoff, telling the control plane the versions it
//! holds (`initial_resource_versions`) so only changes are sent again.

pub mod node;
mod state;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use gridmesh_proto::config::{self as pb, Bootstrap};
use gridmesh_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use gridmesh_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use gridmesh_proto::google::rpc;
use gridmesh_proto::resource::Kind;
use rand::RngExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::control_plane::{self, ControlPlaneTls};
use crate::shared::{ApplyError, Shared};
use state::{Held, Rejection, Update};

/// First reconnect delay; doubles per failed attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// Requests queued toward the control plane: the subscriptions and one
/// ACK/NACK per response, which is sent before the next is read.
const OUTBOUND_QUEUE: usize = 8;
/// gRPC status INVALID_ARGUMENT, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

pub struct Client {
    source: pb::Xds,
    /// TLS to the control plane, when the bootstrap names its identity.
    tls: Option<ControlPlaneTls>,
    held: Held,
    /// Kinds whose first response has been handled.
    received: BTreeSet<Kind>,
    status: Arc<Mutex<Status>>,
}

/// What `/config_dump` shows about the xDS client.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub address: String,
    pub node_id: String,
    pub connected: bool,
    pub last_error: Option<String>,
    pub reconnects: u64,
    /// Listeners held but not served until their route table arrives.
    pub warming: Vec<String>,
    /// The latest NACK per kind: which resources were refused and why.
    pub rejected: BTreeMap<String, Vec<Rejection>>,
    /// Kinds the first response has arrived for.
    pub received: Vec<String>,
}

impl Client {
    pub fn new(source: pb::Xds, static_config: Bootstrap, tls: Option<ControlPlaneTls>) -> Client {
        let held = Held::new(static_config, &source.address);
        let status = Status {
            address: source.address.clone(),
            ..Default::default()
        };
        Client {
            source,
            tls,
            held,
            received: BTreeSet::new(),
            status: Arc::new(Mutex::new(status)),
        }
    }

    pub fn status(&self) -> Arc<Mutex<Status>> {
        self.status.clone()
    }

    /// Streams config until the proxy drains.
    pub async fn run(mut self, shared: Arc<Shared>) {
        let node = node::from_env(|var| std::env::var(var).ok());
        self.update_status(|s| s.node_id = node.id.clone());
        let mut failures = 0u32;
        loop {
            let result = tokio::select! {
                result = self.stream(&shared, &node) => result,
                () = shared.drain.started() => return,
            };
            let delay = match result {
                // The stream worked before it ended: reconnect promptly.
                Ok(()) => {
                    failures = 0;
                    MIN_BACKOFF
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, address = %self.source.address, "xDS stream failed");
                    self.update_status(|s| s.last_error = Some(error.clone()));
                    backoff(failures)
                }
            };
            self.update_status(|s| {
                s.connected = false;
                s.reconnects += 1;
            });
            shared.metrics.xds.connected.set(0);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.drain.started() => return,
            }
        }
    }

    /// One stream, from connecting to its end. `Ok` when it ended after
    /// at least one response was handled.
    async fn stream(
        &mut self,
        shared: &Arc<Shared>,
        node: &gridmesh_proto::envoy::config::core::v3::Node,
    ) -> Result<(), String> {
        if let Some(tls) = &self.tls {
            // A control plane with a CA serves xDS to certified workloads only.
            let mut changes = tls.store.watch();
            while !tls.store.is_ready() {
                tracing::info!("xDS waits for the workload certificate");
                if changes.changed().await.is_err() {
                    return Err("the identity store is gone".into());
                }
            }
        }
        let channel = control_plane::connect(&self.source.address, self.tls.as_ref()).await?;
        let (requests, outbound) = mpsc::channel(OUTBOUND_QUEUE);
        for (i, kind) in Kind::PUSH_ORDER.into_iter().enumerate() {
            let subscribe = match kind {
                Kind::Listener if !self.source.listeners.is_empty() => {
                    self.source.listeners.clone()
                }
                _ => vec!["*".to_string()],
            };
            let request = DeltaDiscoveryRequest {
                // The node goes with the first request of a stream only.
                node: (i == 0).then(|| node.clone()),
                type_url: kind.type_url().into(),
                resource_names_subscribe: subscribe,
                initial_resource_versions: self.held.versions(kind).into_iter().collect(),
                ..Default::default()
            };
            requests
                .try_send(request)
                .map_err(|e| format!("cannot queue subscriptions: {e}"))?;
        }
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(ReceiverStream::new(outbound))
            .await
            .map_err(|e| format!("stream refused: {e}"))?
            .into_inner();
        self.update_status(|s| {
            s.connected = true;
            s.last_error = None;
        });
        shared.metrics.xds.connected.set(1);
        let mut handled_any = false;
        loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) if handled_any => return Ok(()),
                Ok(None) => return Err("the control plane closed the stream".into()),
                Err(status) if handled_any => {
                    tracing::info!(%status, "xDS stream ended");
                    return Ok(());
                }
                Err(status) => return Err(format!("stream ended: {status}")),
            };
            let reply = self.handle(shared, &response);
            handled_any = true;
            requests
                .send(reply)
                .await
                .map_err(|_| "the stream closed before the ACK went out".to_string())?;
        }
    }

    /// Applies one response; returns the ACK or NACK to send.
    fn handle(
        &mut self,
        shared: &Arc<Shared>,
        response: &DeltaDiscoveryResponse,
    ) -> DeltaDiscoveryRequest {
        let arrived = std::time::Instant::now();
        let reply = self.apply_response(shared, response);
        let kind = Kind::from_type_url(&response.type_url).map_or("unknown", Kind::label);
        let result = if reply.error_detail.is_some() {
            "nack"
        } else {
            "ack"
        };
        let metrics = &shared.metrics.xds;
        metrics.updates.with_label_values(&[kind, result]).inc();
        metrics
            .update_duration
            .with_label_values(&[kind])
            .observe(arrived.elapsed().as_secs_f64());
        reply
    }

    fn apply_response(
        &mut self,
        shared: &Arc<Shared>,
        response: &DeltaDiscoveryResponse,
    ) -> DeltaDiscoveryRequest {
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            return nack(
                response,
                format!("unknown resource type {:?}", response.type_url),
            );
        };
        let mut update = Update::decode(kind, response);
        // Held listeners that became servable with this update (their route
        // table arrived) but cannot bind: reported with this response.
        let mut unbound = Vec::new();
        let outcome = loop {
            let served = shared.runtime.load_full();
            let mut outcome = self.held.evaluate(&update, Some(&served.snapshot));
            let Some(snapshot) = outcome.snapshot.take() else {
                break outcome;
            };
            match shared.apply(snapshot) {
                Ok(()) => break outcome,
                // The port is taken (or its log cannot be opened): refuse
                // that listener, keep the rest.
                Err(ApplyError::Listener(e)) if update.reject(&e.name, e.to_string()) => {}
                Err(ApplyError::Listener(e))
                    if !unbound.iter().any(|r: &Rejection| r.name == e.name) =>
                {
                    self.held.set_unbound(&e.name);
                    unbound.push(Rejection {
                        kind: Kind::Listener.label().into(),
                        name: e.name.clone(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => update.reject_all(e.to_string()),
            }
        };
        let mut rejected = outcome.rejected.clone();
        rejected.extend(unbound);
        let warming = outcome.warming.clone();
        self.held.commit(outcome);
        self.received.insert(kind);
        // Ready once every kind has arrived: the first complete config.
        if self.received.len() == Kind::PUSH_ORDER.len() {
            shared.set_ready();
        }
        self.update_status(|s| {
            s.warming = warming;
            s.received = self
                .received
                .iter()
                .map(|k| k.label().to_string())
                .collect();
            s.rejected.insert(kind.label().into(), rejected.clone());
        });
        if rejected.is_empty() {
            tracing::debug!(%kind, nonce = %response.nonce, "ACK");
            DeltaDiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            }
        } else {
            let message = rejected
                .iter()
                .map(|r| format!("{} {:?}: {}", r.kind, r.name, r.reason))
                .collect::<Vec<_>>()
                .join("\n");
            tracing::warn!(%kind, nonce = %response.nonce, %message, "NACK");
            nack(response, message)
        }
    }

    fn update_status(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.status.lock());
    }
}

fn nack(response: &DeltaDiscoveryResponse, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        error_detail: Some(rpc::Status {
            code: INVALID_ARGUMENT,
            message,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Jittered exponential backoff ("equal jitter"): a random delay between
/// half and all of `MIN_BACKOFF * 2^(failures-1)`, capped at `MAX_BACKOFF`,
/// so a fleet of sidecars that lost the same control plane does not
/// reconnect in step, and none retries at once.
fn backoff(failures: u32) -> Duration {
    let ceiling = MIN_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
}
