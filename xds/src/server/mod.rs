//! The aggregated discovery service: one task per stream runs the protocol
//! ([`delta`] or [`sotw`]) against the snapshot currently served.
//!
//! Both protocols share the loop here: requests and snapshot changes mark
//! types as needing a look, then the protocol decides what to send, in the
//! order the xDS ordering rule asks for. Responses go through a small
//! bounded queue, so a slow sidecar holds at most a couple of responses in
//! memory and never the control plane's attention: its task just waits.

mod delta;
mod sotw;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use gridmesh_proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use gridmesh_proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use gridmesh_proto::envoy::config::core::v3::Node;
use gridmesh_proto::resource::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::Shared;
use crate::clients::{ClientHandle, Nack, Protocol, Subscribed, TypeView, timestamp};
use crate::snapshot::Snapshot;
use crate::tls::PeerIdentity;

/// Responses queued per stream beyond the one being written.
const OUTBOUND_QUEUE: usize = 2;
/// A new stream's first requests are gathered for this long (after each
/// one) before anything is sent, so that the initial push goes in push
/// order even when the client subscribes to the types in another order.
const INITIAL_GATHER: Duration = Duration::from_millis(10);
const INITIAL_GATHER_MAX: Duration = Duration::from_millis(50);
/// The most names (or initial resource versions) one stream may give for
/// one type. Beyond it the stream ends with RESOURCE_EXHAUSTED: one client
/// must not make the control plane hold and compare without bound. A
/// sidecar names its own clusters, far fewer.
const MAX_SUBSCRIBED_NAMES: usize = 100_000;
/// How long a failing stream waits for room to send the client its status.
const ERROR_SEND_TIMEOUT: Duration = Duration::from_secs(5);

pub fn service(shared: Arc<Shared>) -> AggregatedDiscoveryServiceServer<Ads> {
    AggregatedDiscoveryServiceServer::new(Ads { shared })
}

pub struct Ads {
    shared: Arc<Shared>,
}

type Outbound<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Outbound<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Outbound<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.admit(&request)?;
        Ok(Response::new(self.start(request, sotw::State::default())))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.admit(&request)?;
        Ok(Response::new(self.start(request, delta::State::default())))
    }
}

impl Ads {
    /// With a CA, configuration goes only to workloads that proved an
    /// identity with their certificate (it names every endpoint and policy
    /// of the mesh).
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let proved = matches!(
            request.extensions().get::<PeerIdentity>(),
            Some(PeerIdentity(Some(_), _))
        );
        if self.shared.xds_needs_identity && !proved {
            return Err(Status::unauthenticated(
                "xDS needs a workload certificate: get one from the CA on this port first",
            ));
        }
        Ok(())
    }

    fn start<S: StreamState>(
        &self,
        request: Request<Streaming<S::Request>>,
        state: S,
    ) -> Outbound<S::Response> {
        let peer = request.extensions().get::<PeerIdentity>().and_then(|p| p.1);
        let client = self.shared.clients.add(S::PROTOCOL, peer);
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let stream = Stream {
            shared: self.shared.clone(),
            inbound: request.into_inner(),
            tx,
            client,
            state,
            nonces: 0,
        };
        tokio::spawn(stream.run());
        ReceiverStream::new(rx)
    }
}

/// One protocol's per-stream state machine.
trait StreamState: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    type Pending: Send + 'static;
    const PROTOCOL: Protocol;

    fn node(request: &Self::Request) -> Option<&Node>;
    fn type_url(request: &Self::Request) -> &str;
    /// Applies a request for a known type: ACK/NACK and subscriptions. An
    /// error ends the stream with that status.
    fn on_request(
        &mut self,
        kind: Kind,
        request: Self::Request,
        ctx: &Context<'_>,
    ) -> Result<(), Status>;
    /// The served snapshot changed: every subscribed type needs a look.
    fn on_snapshot(&mut self);
    /// What to send now, in sending order, each already given its nonce
    /// (`nonce` hands them out) and counted as sent.
    fn responses(
        &mut self,
        snapshot: &Snapshot,
        nonce: &mut dyn FnMut() -> Nonce,
    ) -> Vec<(Kind, Self::Pending)>;
    /// A response planned by `responses`, built from the same snapshot
    /// only when it is its turn to be sent: a stream never holds more than
    /// the response in hand in memory.
    fn build(pending: Self::Pending, snapshot: &Snapshot) -> Self::Response;
    fn view(&self) -> Vec<TypeView>;
}

/// A response's nonce: `{stream}-{seq}`, `seq` counting the stream's
/// responses from 1.
struct Nonce {
    seq: u64,
    text: String,
}

/// The sequence number of one of this stream's nonces.
fn parse_nonce(stream: u64, text: &str) -> Option<u64> {
    let (s, seq) = text.split_once('-')?;
    if s.parse::<u64>().ok()? != stream {
        return None;
    }
    seq.parse().ok()
}

/// What a request handler may look at besides the request.
struct Context<'a> {
    node_id: &'a str,
    stream: u64,
    metrics: &'a crate::metrics::Metrics,
}

struct Stream<S: StreamState> {
    shared: Arc<Shared>,
    inbound: Streaming<S::Request>,
    tx: mpsc::Sender<Result<S::Response, Status>>,
    client: ClientHandle,
    state: S,
    nonces: u64,
}

/// Why a stream ended.
enum End {
    ClientClosed,
    Error(Status),
    Shutdown,
}

impl<S: StreamState> Stream<S> {
    async fn run(mut self) {
        let metrics = &self.shared.metrics;
        metrics.client_connected(S::PROTOCOL);
        let mut snapshots = self.shared.snapshots.subscribe();
        let shutdown = self.shared.shutdown.clone();
        let end = self.serve(&mut snapshots, &shutdown).await;
        let node_id = self.client.node_id();
        match end {
            End::ClientClosed => {
                tracing::info!(node = %node_id, stream = self.client.stream(), "xDS stream closed by the client")
            }
            End::Error(status) => {
                tracing::warn!(node = %node_id, stream = self.client.stream(), code = ?status.code(), error = %status.message(), "xDS stream failed");
                // The client learns why: ending the response stream without
                // it would read as grpc-status OK. A client that reads
                // nothing does not keep the task.
                let _ = tokio::time::timeout(ERROR_SEND_TIMEOUT, self.tx.send(Err(status))).await;
            }
            End::Shutdown => {
                tracing::debug!(node = %node_id, stream = self.client.stream(), "xDS stream ended: shutting down")
            }
        }
        self.shared.metrics.client_gone(S::PROTOCOL);
    }

    async fn serve(
        &mut self,
        snapshots: &mut tokio::sync::watch::Receiver<Arc<Snapshot>>,
        shutdown: &CancellationToken,
    ) -> End {
        let mut snapshot = snapshots.borrow_and_update().clone();
        let mut node_id: Option<String> = None;
        let mut first = true;
        loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => return End::Shutdown,
                message = self.inbound.message() => match message {
                    Ok(Some(request)) => {
                        let mut batch = vec![request];
                        if first {
                            first = false;
                            if let Err(status) = self.gather(&mut batch).await {
                                return End::Error(status);
                            }
                        }
                        // Whatever else already arrived is handled together.
                        loop {
                            match self.inbound.message().now_or_never() {
                                Some(Ok(Some(r))) => batch.push(r),
                                // A decode error leaves the stream unreadable:
                                // it ends here, not after another read.
                                Some(Err(status)) => return End::Error(request_error(status)),
                                Some(Ok(None)) | None => break,
                            }
                        }
                        batch
                    }
                    Ok(None) => return End::ClientClosed,
                    Err(status) => return End::Error(request_error(status)),
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return End::Shutdown;
                    }
                    snapshot = snapshots.borrow_and_update().clone();
                    self.state.on_snapshot();
                    Vec::new()
                }
            };
            for request in batch {
                if node_id.is_none()
                    && let Some(node) = S::node(&request)
                {
                    self.client.set_node(node);
                    tracing::info!(node = %node.id, cluster = %node.cluster, stream = self.client.stream(), protocol = S::PROTOCOL.label(), "xDS client connected");
                    node_id = Some(node.id.clone());
                }
                let type_url = S::type_url(&request);
                let Some(kind) = Kind::from_type_url(type_url) else {
                    if self.client.unknown_type(type_url) {
                        tracing::warn!(
                            node = node_id.as_deref().unwrap_or(""),
                            type_url,
                            "subscription to a type this control plane does not serve; ignored"
                        );
                    }
                    continue;
                };
                let ctx = Context {
                    node_id: node_id.as_deref().unwrap_or(""),
                    stream: self.client.stream(),
                    metrics: &self.shared.metrics,
                };
                if let Err(status) = self.state.on_request(kind, request, &ctx) {
                    return End::Error(status);
                }
                // A large request is CPU: let the other streams, the admin
                // server and new connections in between requests.
                tokio::task::consume_budget().await;
            }
            let stream = self.client.stream();
            let nonces = &mut self.nonces;
            let responses = self.state.responses(&snapshot, &mut || {
                *nonces += 1;
                Nonce {
                    seq: *nonces,
                    text: format!("{stream}-{nonces}"),
                }
            });
            let view = self.state.view();
            self.client.update(|v| v.types = view);
            for (kind, pending) in responses {
                // Built once there is room in the queue, not before.
                let permit = tokio::select! {
                    () = shutdown.cancelled() => return End::Shutdown,
                    permit = self.tx.reserve() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return End::ClientClosed,
                    },
                };
                permit.send(Ok(S::build(pending, &snapshot)));
                self.shared.metrics.response(kind);
            }
        }
    }

    /// Collects the requests a new stream sends right after its first.
    async fn gather(&mut self, batch: &mut Vec<S::Request>) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + INITIAL_GATHER_MAX;
        loop {
            let wait = (tokio::time::Instant::now() + INITIAL_GATHER).min(deadline);
            match tokio::time::timeout_at(wait, self.inbound.message()).await {
                Ok(Ok(Some(request))) => batch.push(request),
                Ok(Err(status)) => return Err(request_error(status)),
                // The stream's end shows on the next read.
                Ok(Ok(None)) | Err(_) => return Ok(()),
            }
        }
    }
}

/// What a client is told when its request cannot be read. tonic reports a
/// message over the decode limit as OUT_OF_RANGE; gRPC's convention (and
/// grpc-core's, grpc-go's) for it is RESOURCE_EXHAUSTED. Undecodable bytes
/// stay INTERNAL, as grpc-go answers them.
fn request_error(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        Status::resource_exhausted(status.message().to_string())
    } else {
        status
    }
}

/// Responses of one type sent and not yet answered are remembered up to
/// this many (a client that answers nothing for this long sees its oldest
/// answers treated as stale).
const MAX_OUTSTANDING: usize = 4096;

/// Where the responses of one type stand: sent, answered, rejected.
#[derive(Default)]
struct Answers {
    /// The latest response's nonce.
    latest_nonce: Option<String>,
    latest_seq: u64,
    /// Responses sent and not answered yet, oldest first (nonce sequence
    /// numbers, so increasing).
    outstanding: VecDeque<u64>,
    last_nack: Option<Nack>,
    /// A response was NACKed and no response sent after that NACK arrived
    /// has been ACKed since: the client runs on older config for the type.
    rejected: bool,
    /// While `rejected`: the latest response sent when the NACK arrived.
    rejected_through: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Ack,
    Nack,
}

impl Answers {
    /// A response went out. With `supersedes` (SotW, where each response
    /// carries the whole set) the earlier ones no longer expect an answer;
    /// otherwise (delta) each does.
    fn sent(&mut self, nonce: &Nonce, supersedes: bool) {
        if supersedes {
            self.outstanding.clear();
        }
        if self.outstanding.len() == MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(nonce.seq);
        self.latest_seq = nonce.seq;
        self.latest_nonce = Some(nonce.text.clone());
    }

    /// Nothing sent is waiting for an answer.
    fn settled(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// Records the client's answer when `response_nonce` names a response
    /// of this type that is still unanswered. Anything else (an empty nonce,
    /// one never sent, an answered one) answers nothing. Clients answer in
    /// the order responses were sent, so an answer also closes any earlier
    /// response still waiting.
    fn answer(
        &mut self,
        kind: Kind,
        response_nonce: &str,
        error: Option<&gridmesh_proto::google::rpc::Status>,
        ctx: &Context<'_>,
    ) -> Option<Answer> {
        if response_nonce.is_empty() {
            return None;
        }
        let waiting = parse_nonce(ctx.stream, response_nonce)
            .and_then(|seq| self.outstanding.iter().position(|s| *s == seq));
        let Some(position) = waiting else {
            tracing::debug!(node = ctx.node_id, %kind, nonce = response_nonce, "stale nonce: neither ACK nor NACK");
            return None;
        };
        let seq = self.outstanding[position];
        self.outstanding.drain(..=position);
        match error {
            None => {
                if seq > self.rejected_through {
                    self.rejected = false;
                }
                ctx.metrics.ack(kind);
                Some(Answer::Ack)
            }
            Some(status) => {
                tracing::warn!(node = ctx.node_id, %kind, nonce = response_nonce, code = status.code, message = %status.message, "client rejected a response (NACK)");
                self.rejected = true;
                self.rejected_through = self.latest_seq;
                self.last_nack = Some(Nack {
                    nonce: response_nonce.to_string(),
                    code: status.code,
                    message: status.message.clone(),
                    at: timestamp(SystemTime::now()),
                });
                ctx.metrics.nack(kind);
                Some(Answer::Nack)
            }
        }
    }

    /// Fills the answer-related fields of a type's status view.
    fn view(&self, kind: Kind, subscribed: Subscribed) -> TypeView {
        TypeView {
            kind: kind.label().to_string(),
            subscribed,
            last_nonce_sent: self.latest_nonce.clone(),
            // The latest response is answered last.
            pending_nonce: self.latest_nonce.clone().filter(|_| !self.settled()),
            last_nack: self.last_nack.clone(),
            rejected: self.rejected,
            ..TypeView::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce(seq: u64) -> Nonce {
        Nonce {
            seq,
            text: format!("7-{seq}"),
        }
    }

    fn error(message: &str) -> gridmesh_proto::google::rpc::Status {
        gridmesh_proto::google::rpc::Status {
            code: 3,
            message: message.into(),
            details: Vec::new(),
        }
    }

    #[test]
    fn nonces_parse_for_their_stream_only() {
        assert_eq!(parse_nonce(7, "7-12"), Some(12));
        assert_eq!(parse_nonce(7, "8-12"), None);
        assert_eq!(parse_nonce(7, "7-x"), None);
        assert_eq!(parse_nonce(7, "712"), None);
    }

    #[test]
    fn every_outstanding_response_can_be_answered_once() {
        let metrics = crate::metrics::Metrics::default();
        let ctx = Context {
            node_id: "n",
            stream: 7,
            metrics: &metrics,
        };
        let mut a = Answers::default();
        for seq in 1..=3 {
            a.sent(&nonce(seq), false);
        }
        let nack = Some(error("bad"));
        assert_eq!(
            a.answer(Kind::Cluster, "7-1", None, &ctx),
            Some(Answer::Ack)
        );
        assert_eq!(
            a.answer(Kind::Cluster, "7-2", nack.as_ref(), &ctx),
            Some(Answer::Nack)
        );
        assert!(a.rejected && !a.settled());
        // Answered already, never sent, another stream's.
        for stale in ["7-2", "7-1", "7-9", "8-3", ""] {
            assert_eq!(a.answer(Kind::Cluster, stale, None, &ctx), None, "{stale}");
        }
        // Sent before the NACK arrived: its ACK does not clear the rejection.
        assert_eq!(
            a.answer(Kind::Cluster, "7-3", None, &ctx),
            Some(Answer::Ack)
        );
        assert!(a.rejected && a.settled());
        a.sent(&nonce(4), false);
        a.sent(&nonce(5), false);
        // An answer to a later response closes the earlier ones.
        assert_eq!(
            a.answer(Kind::Cluster, "7-5", None, &ctx),
            Some(Answer::Ack)
        );
        assert!(!a.rejected && a.settled());
        assert_eq!(a.answer(Kind::Cluster, "7-4", None, &ctx), None);
        // SotW: a new response supersedes the one before.
        a.sent(&nonce(6), true);
        a.sent(&nonce(7), true);
        assert_eq!(a.answer(Kind::Cluster, "7-6", None, &ctx), None);
        assert_eq!(a.last_nack.as_ref().map(|n| n.nonce.as_str()), Some("7-2"));
    }
}
