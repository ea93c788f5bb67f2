//! The calls a sidecar makes for a vDAG: a hop to an instance of the next
//! node (held until handed on, retried at another instance when the one
//! holding it fails), a delivery to the origin, and the local block's
//! ModelInfer. All are gRPC over the clusters' own connections (mTLS where
//! the cluster says so), bounded by the request's deadline, which travels
//! on as `grpc-timeout` with the trace context.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, TE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Version};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use prost::Message;
use tokio::time::Instant;

use super::wire::{self, Frames, Status};
use super::{DELIVER_PATH, FORWARD_PATH, VDags};
use crate::body::full;
use crate::call::{self, Answer, Attempts, CallPolicy};
use crate::cluster::{Cluster, Endpoint};
use crate::grpc::{self, Code};
use crate::runtime::Runtime;
use gridmesh_config::vdag::VDagSpec;
use gridmesh_identity::SpiffeId;
use gridmesh_proto::hop::{Delivered, Delivery, Hop, HopFailure, HopProgress, hop_progress};

/// Headers that travel with every call a request makes: its trace context.
const CARRIED: [&str; 2] = ["traceparent", "tracestate"];
/// Tries to reach the origin with a delivery. Losing one is not silent:
/// the origin still answers its client at the deadline.
const DELIVERY_ATTEMPTS: u32 = 3;
/// How long a delivery may take, whatever is left of the request's time: a
/// late node reports after the graph's deadline, while the origin still
/// waits for its report (an origin that stopped waiting drops it).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(1);

/// The headers of `headers` that every call of the request carries on.
pub fn carried(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in CARRIED {
        if let Some(value) = headers.get(name) {
            kept.insert(name, value.clone());
        }
    }
    kept
}

/// Whether another instance may succeed where this failure happened: the
/// instance, its sidecar or its block was unreachable, gone or overloaded.
pub fn retryable(code: u32) -> bool {
    code == Code::Unavailable as u32 || code == Code::ResourceExhausted as u32
}

/// A failure of `node`, with the message naming it.
pub fn failure(node: &str, status: Status) -> HopFailure {
    HopFailure {
        node: node.to_string(),
        retryable: retryable(status.code),
        code: status.code,
        message: format!("node {node}: {}", status.message),
    }
}

/// A gRPC request head for `path` at `authority`, with what is left of the
/// deadline and the request's carried headers.
pub fn grpc_head(authority: &str, path: &str, deadline: Instant, carried: &HeaderMap) -> Parts {
    let uri = format!("http://{authority}{path}");
    let (mut parts, ()) = Request::post(uri)
        .version(Version::HTTP_2)
        .body(())
        .unwrap_or_default()
        .into_parts();
    let headers = &mut parts.headers;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    let left = deadline.saturating_duration_since(Instant::now());
    headers.insert(grpc::GRPC_TIMEOUT, grpc::format_timeout(left));
    for (name, value) in carried {
        headers.insert(name, value.clone());
    }
    parts
}

/// A unary gRPC call to `cluster`, its answer decoded.
pub async fn unary<M: Message + Default>(
    cluster: &Arc<Cluster>,
    head: Parts,
    request: Bytes,
    deadline: Instant,
    attempts: Option<&dyn Attempts>,
) -> Result<M, Status> {
    let policy = CallPolicy {
        deadline: Some(deadline),
        attempts,
        ..CallPolicy::default()
    };
    unary_with(cluster, head, request, &policy).await
}

/// [`unary`] under `policy` (which must set the deadline).
pub async fn unary_with<M: Message + Default>(
    cluster: &Arc<Cluster>,
    head: Parts,
    request: Bytes,
    policy: &CallPolicy<'_>,
) -> Result<M, Status> {
    let deadline = policy.deadline.unwrap_or_else(Instant::now);
    let Answer {
        response,
        in_flight: _in_flight,
        admission: _admission,
        lease: _lease,
    } = call::call(cluster, head, full(request), policy)
        .await
        .map_err(|e| Status::new(e.grpc_code(), e.to_string()))?;
    let (head, body) = response.into_parts();
    wire::check_head(head.status, &head.headers)?;
    tokio::time::timeout_at(deadline, wire::read_answer(body))
        .await
        .map_err(|_| Status::new(Code::DeadlineExceeded, "no answer within the deadline"))?
}

/// The cluster of the local block: where the route of `listener` (the
/// inbound listener a hop arrived on) sends `head`.
pub fn block_cluster<'r>(
    runtime: &'r Runtime,
    listener: &str,
    head: &Parts,
) -> Result<&'r Arc<Cluster>, Status> {
    let route = runtime.route_table(listener).and_then(|t| t.route(head));
    match route.and_then(|r| r.action.target.pick()) {
        Some(cluster) => Ok(&runtime.clusters[cluster]),
        None => Err(Status::new(
            Code::Unimplemented,
            format!("listener {listener} has no route to a cluster for the block"),
        )),
    }
}

/// Hands `hop` to an instance of node `node` and holds it until that
/// instance says it is handed on.
pub async fn hand_on(
    vdags: &VDags,
    runtime: &Runtime,
    spec: &VDagSpec,
    node: usize,
    hop: &Hop,
    deadline: Instant,
    carried: &HeaderMap,
) -> Result<(), HopFailure> {
    let label = &spec.nodes[node].label;
    let cluster = &runtime.clusters[spec.nodes[node].cluster];
    let request = wire::frame(hop);
    // A join's parts must meet at one instance: every predecessor's sidecar
    // picks the one the request id hashes to.
    let affinity = (spec.nodes[node].previous.len() > 1).then_some(hop.request_id.as_bytes());
    let mut instances = Instances::new(vdags, spec, node, deadline, affinity);
    loop {
        let head = grpc_head(&cluster.name(), FORWARD_PATH, deadline, carried);
        let result = forward_once(cluster, head, request.clone(), &instances.policy(), label).await;
        if !instances.try_again(&result) {
            return result;
        }
    }
}

/// The attempts at one node's instances: what an instance failed at (its
/// sidecar died, its block failed or is unreachable) is tried again at an
/// instance not tried yet, up to the node's retries and within the
/// deadline.
pub struct Instances<'a> {
    vdags: &'a VDags,
    spec: &'a VDagSpec,
    node: usize,
    deadline: Instant,
    affinity: Option<&'a [u8]>,
    tried: Vec<SocketAddr>,
    sent_to: SentTo,
    retries: u32,
}

impl<'a> Instances<'a> {
    pub fn new(
        vdags: &'a VDags,
        spec: &'a VDagSpec,
        node: usize,
        deadline: Instant,
        affinity: Option<&'a [u8]>,
    ) -> Self {
        Instances {
            vdags,
            spec,
            node,
            deadline,
            affinity,
            tried: Vec::new(),
            sent_to: SentTo::default(),
            retries: 0,
        }
    }

    /// The next attempt's call policy.
    pub fn policy(&self) -> CallPolicy<'_> {
        CallPolicy {
            deadline: Some(self.deadline),
            affinity: self.affinity,
            avoid: &self.tried,
            attempts: Some(&self.sent_to),
            ..CallPolicy::default()
        }
    }

    /// Whether to try again after an attempt ended with `result`.
    pub fn try_again(&mut self, result: &Result<(), HopFailure>) -> bool {
        self.tried.extend(self.sent_to.0.lock().take());
        let node = &self.spec.nodes[self.node];
        let again = matches!(result, Err(f) if f.retryable)
            && self.retries < node.max_retries
            && Instant::now() < self.deadline;
        if let (true, Err(f)) = (again, result) {
            tracing::debug!(vdag = %self.spec.name, node = %node.label, error = %f.message, "retrying a hop at another instance");
            self.vdags
                .observed
                .hop_retries
                .with_label_values(&[&self.spec.name, &node.label])
                .inc();
            self.retries += 1;
        }
        again
    }
}

/// Where a hop's attempt went.
#[derive(Default)]
struct SentTo(Mutex<Option<SocketAddr>>);

impl Attempts for SentTo {
    fn sending(&self, _attempt: u32, endpoint: &Endpoint) {
        *self.0.lock() = Some(endpoint.addr);
    }

    fn retrying(&self, _attempt: u32, _reason: &str) {}
}

/// One attempt at a hop: the stream is read until `handed_on`, `failed`,
/// or its end — which, before `handed_on`, means the receiver died.
async fn forward_once(
    cluster: &Arc<Cluster>,
    head: Parts,
    request: Bytes,
    policy: &CallPolicy<'_>,
    label: &str,
) -> Result<(), HopFailure> {
    let deadline = policy.deadline.unwrap_or_else(Instant::now);
    let Answer {
        response,
        in_flight: _in_flight,
        admission: _admission,
        lease: _lease,
    } = call::call(cluster, head, full(request), policy)
        .await
        .map_err(|e| failure(label, Status::new(e.grpc_code(), e.to_string())))?;
    let (head, mut body) = response.into_parts();
    wire::check_head(head.status, &head.headers).map_err(|s| failure(label, s))?;
    let mut frames = Frames::default();
    loop {
        let next = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| {
                failure(
                    label,
                    Status::new(Code::DeadlineExceeded, "not done within the deadline"),
                )
            })?;
        let frame = match next {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let gone = format!("its sidecar went away mid-hop ({e})");
                return Err(failure(label, Status::new(Code::Unavailable, gone)));
            }
            None => {
                let gone = "its sidecar ended the hop before handing it on";
                return Err(failure(label, Status::new(Code::Unavailable, gone)));
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                let status = frame.trailers_ref().and_then(wire::status_of);
                let status = status.filter(|s| s.code != 0).unwrap_or_else(|| {
                    Status::new(
                        Code::Unavailable,
                        "its sidecar ended the hop before handing it on",
                    )
                });
                return Err(failure(label, status));
            }
        };
        frames.push(data);
        while let Some(progress) = frames
            .next::<HopProgress>()
            .map_err(|s| failure(label, s))?
        {
            match progress.step {
                Some(hop_progress::Step::HandedOn(_)) => return Ok(()),
                Some(hop_progress::Step::Failed(f)) => return Err(f),
                None => {}
            }
        }
    }
}

/// Delivers a tail's output or a failure to the request's origin (`origin`
/// "ip:port", reached with mTLS when `origin_identity` is set). A failure is
/// logged here; callers need not act on it (the origin answers its client
/// at the deadline regardless) but may pass it on.
pub async fn deliver(
    vdags: &VDags,
    origin: &str,
    origin_identity: &str,
    delivery: Delivery,
    carried: &HeaderMap,
) -> Result<(), Status> {
    let request_id = delivery.request_id.clone();
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    let delivered = try_deliver(vdags, origin, origin_identity, delivery, deadline, carried).await;
    if let Err(error) = &delivered {
        tracing::warn!(request = %request_id, %origin, error = %error.message, "vDAG delivery to the origin failed");
    }
    delivered
}

async fn try_deliver(
    vdags: &VDags,
    origin: &str,
    origin_identity: &str,
    delivery: Delivery,
    deadline: Instant,
    carried: &HeaderMap,
) -> Result<(), Status> {
    let addr: SocketAddr = origin.parse().map_err(|_| {
        Status::new(
            Code::InvalidArgument,
            format!("origin {origin:?} is not ip:port"),
        )
    })?;
    if vdags.origin_address().is_some_and(|(own, _)| own == addr) {
        vdags.delivered(delivery);
        return Ok(());
    }
    let identity = match origin_identity {
        "" => None,
        id => Some(SpiffeId::parse(id).map_err(|e| {
            Status::new(
                Code::InvalidArgument,
                format!("origin identity {id:?}: {e}"),
            )
        })?),
    };
    let cluster = vdags.origin_cluster(addr, identity)?;
    let request = wire::frame(&delivery);
    let mut attempt = 1;
    loop {
        let head = grpc_head(origin, DELIVER_PATH, deadline, carried);
        let answer = unary::<Delivered>(&cluster, head, request.clone(), deadline, None);
        match answer.await {
            Ok(_) => return Ok(()),
            Err(status) if retryable(status.code) && attempt < DELIVERY_ATTEMPTS => attempt += 1,
            Err(status) => return Err(status),
        }
    }
}
