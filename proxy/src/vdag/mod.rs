//! vDAG requests (docs/vdag.md): the pipeline's vDAG step.
//!
//! A client's call naming a vDAG (`x-gridmesh-vdag: <name>[:<version>]`)
//! makes this proxy the request's **origin** ([`origin`]): it hands the
//! client's input to the entry nodes and answers once every tail has
//! delivered, or with the first failure, or at the deadline. Every other
//! step happens at the sidecars of the blocks ([`node`]): a hop arrives on
//! the inbound listener, the local block runs it, and the same sidecar hands
//! the output on to the next nodes' sidecars ([`send`]) — never back
//! through the origin — or, at a tail, delivers it to the origin.
//!
//! Blocks of the existing network, which speak `InferenceProxy.infer` and
//! forward their output themselves, take part through
//! [`inference_proxy`]: there the sidecars carry the packets their blocks
//! send instead of running the blocks.
//!
//! Ownership: a hop's sender keeps the hop's stream open until the receiver
//! says `handed_on` (its node and everything after it is done or its
//! failure reported), so a receiver that dies — sidecar or block — is
//! noticed by the reset stream within a round trip, and the hop is retried
//! at another instance or reported to the origin naming the node.
//!
//! What this module keeps per request is bounded and ends with it: the
//! origin's delivery queue (dropped with the answer), hops taken (kept for
//! deduplication until shortly after they finish, [`taken`]), and the parts
//! of a join waiting for the rest (dropped at the request's deadline).

mod inference_proxy;
mod node;
mod origin;
mod packet;
mod send;
mod taken;
mod tensors;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Response};
use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::body::Body;
use crate::cluster::Cluster;
use crate::downstream::ListenerContext;
use crate::grpc::{self, Code};
use crate::metrics::{Metrics, counter, gauge, latency_histogram};
use crate::record::RequestRecord;
use crate::runtime::Runtime;
use gridmesh_config::ClusterSpec;
use gridmesh_config::vdag::VDagSpec;
use gridmesh_identity::{IdentityStore, SpiffeId};
use gridmesh_proto::hop::Delivery;
use gridmesh_proto::inference::ModelInferRequest;
use taken::{REMEMBER_FINISHED, Taken};
use wire::Status;

/// Names the vDAG a client calls: `<name>` or `<name>:<version>`.
pub const VDAG_HEADER: HeaderName = HeaderName::from_static("x-gridmesh-vdag");
const FORWARD_PATH: &str = "/gridmesh.vdag.v1.VDagHop/Forward";
const DELIVER_PATH: &str = "/gridmesh.vdag.v1.VDagHop/Deliver";
/// Requests one origin serves at once; more are shed (RESOURCE_EXHAUSTED)
/// before anything is sent, never midway through a graph.
const MAX_ORIGIN_REQUESTS: usize = 4096;
/// Joins one sidecar holds waiting for parts: beyond this a part is
/// refused as overload, not buffered.
const MAX_PENDING_JOINS: usize = 4096;
/// Cached connections to origins (one per origin sidecar in practice).
const MAX_ORIGIN_CLUSTERS: usize = 1024;

/// What the vDAG step does with a request, decided from its head.
pub enum Step {
    /// A client's call of a vDAG: this proxy is its origin.
    Call(HeaderValue),
    /// Another sidecar hands this one's block a node's input.
    Forward,
    /// A tail's output or a failure, for a request this proxy is origin of.
    Deliver,
    /// An `InferenceProxy.infer` packet another sidecar hands this one's
    /// block ([`inference_proxy`]).
    TakePacket,
    /// The local block's `InferenceProxy.infer` of its output, to send on.
    SendPacket,
}

/// The vDAG requests this proxy is origin of or carries a hop of.
pub struct VDags {
    metrics: Arc<Metrics>,
    identity: Option<Arc<IdentityStore>>,
    observed: VDagMetrics,
    /// Request id -> the request this proxy is origin of.
    origins: Mutex<HashMap<String, Waiting>>,
    /// Hops taken, remembered while they run and a while after: a retry
    /// that reaches this instance again runs once.
    taken: Mutex<Taken>,
    joins: Mutex<HashMap<JoinKey, JoinParts>>,
    origin_clusters: Mutex<HashMap<OriginKey, Arc<Cluster>>>,
    /// Where deliveries for requests this proxy is origin of are sent: its
    /// inbound listener, and whether that one takes mTLS.
    inbound: Mutex<Option<(SocketAddr, bool)>>,
    /// Where the local block sends its `InferenceProxy` packets on: the
    /// outbound listener.
    outbound: Mutex<Option<SocketAddr>>,
}

/// Where a join stands after a part arrived.
enum JoinStep {
    Complete(Vec<ModelInferRequest>),
    /// `first`: the join's first part; its hop sees to its expiry.
    Waiting {
        first: bool,
    },
}

/// A request this proxy is origin of, as deliveries find it.
struct Waiting {
    vdag: Arc<str>,
    deliveries: mpsc::Sender<Delivery>,
}

/// (request id, node label) of a join.
type JoinKey = (String, String);
/// The inputs a join has so far, by predecessor node.
type JoinParts = Vec<(usize, ModelInferRequest)>;
/// An origin's delivery address and the identity it presents.
type OriginKey = (SocketAddr, Option<SpiffeId>);

#[derive(Clone, PartialEq, Eq, Hash)]
struct HopKey {
    request_id: String,
    node: String,
    from: String,
}

struct VDagMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    node_duration: HistogramVec,
    node_failures: IntCounterVec,
    hop_retries: IntCounterVec,
    duplicates: IntCounterVec,
    in_flight: IntGaugeVec,
}

impl VDagMetrics {
    fn new(metrics: &Metrics) -> Self {
        let r = &metrics.registry;
        VDagMetrics {
            requests: counter(
                r,
                "vdag_requests_total",
                "vDAG requests answered by this proxy as their origin, by gRPC status.",
                &["vdag", "grpc_status"],
            ),
            duration: latency_histogram(
                r,
                "vdag_request_duration_seconds",
                "Time from a vDAG request's arrival at its origin to its answer.",
                &["vdag"],
            ),
            node_duration: latency_histogram(
                r,
                "vdag_node_duration_seconds",
                "Time a node's block took to answer a hop, at the block's sidecar.",
                &["vdag", "node"],
            ),
            node_failures: counter(
                r,
                "vdag_node_failures_total",
                "Hops a node's block or sidecar failed, by gRPC status.",
                &["vdag", "node", "grpc_status"],
            ),
            hop_retries: counter(
                r,
                "vdag_hop_retries_total",
                "Hops sent again to another instance of the node after a failure.",
                &["vdag", "node"],
            ),
            duplicates: counter(
                r,
                "vdag_duplicate_hops_total",
                "Hops this sidecar's node had already taken (a retry, or an output sent twice): acknowledged, not run again.",
                &["vdag", "node"],
            ),
            in_flight: gauge(
                r,
                "vdag_hops_in_flight",
                "Hops this sidecar carries for its block (a join's parts waiting for the others: /vdags).",
                &["vdag", "node"],
            ),
        }
    }
}

impl VDags {
    pub fn new(metrics: Arc<Metrics>, identity: Option<Arc<IdentityStore>>) -> Self {
        VDags {
            observed: VDagMetrics::new(&metrics),
            metrics,
            identity,
            origins: Mutex::new(HashMap::new()),
            taken: Mutex::new(Taken::default()),
            joins: Mutex::new(HashMap::new()),
            origin_clusters: Mutex::new(HashMap::new()),
            inbound: Mutex::new(None),
            outbound: Mutex::new(None),
        }
    }

    /// Records the outbound listener's address, where the local block sends
    /// its `InferenceProxy` packets on.
    pub fn set_outbound(&self, addr: SocketAddr) {
        *self.outbound.lock() = Some(addr);
    }

    fn outbound(&self) -> Option<SocketAddr> {
        *self.outbound.lock()
    }

    /// Records the inbound listener's address, where this proxy takes
    /// deliveries as an origin. A wildcard address is reached at the pod's
    /// IP (`POD_IP`), or on loopback for a mesh on one machine.
    pub fn set_inbound(&self, addr: SocketAddr, mtls: bool) {
        let ip = match addr.ip() {
            ip if !ip.is_unspecified() => ip,
            _ => std::env::var("POD_IP")
                .ok()
                .and_then(|ip| ip.parse().ok())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        };
        *self.inbound.lock() = Some((SocketAddr::new(ip, addr.port()), mtls));
    }

    /// What the vDAG step does with this request, if anything.
    pub fn step(parts: &Parts, listener: &ListenerContext) -> Option<Step> {
        if let Some(name) = parts.headers.get(VDAG_HEADER) {
            return Some(Step::Call(name.clone()));
        }
        if parts.method != Method::POST || !grpc::is_grpc(&parts.headers) {
            return None;
        }
        match (parts.uri.path(), listener.inbound) {
            (FORWARD_PATH, true) => Some(Step::Forward),
            (DELIVER_PATH, true) => Some(Step::Deliver),
            (inference_proxy::INFER_PATH, true) => Some(Step::TakePacket),
            (inference_proxy::INFER_PATH, false) => Some(Step::SendPacket),
            _ => None,
        }
    }

    /// Serves a request the vDAG step took. Never fails: errors are gRPC
    /// answers naming what failed.
    /// `record` is taken by a call (it ends with the vDAG's answer) and a
    /// hop (with the hop), and left to end with the answer otherwise.
    /// Boxed: rare next to routed requests, and large, it would otherwise
    /// grow every request's future.
    #[allow(clippy::too_many_arguments)] // the pipeline's state, passed on
    pub fn serve<'a>(
        self: &'a Arc<Self>,
        step: Step,
        runtime: Arc<Runtime>,
        listener: &'a ListenerContext,
        parts: Parts,
        body: Body,
        start: Instant,
        record: &'a mut Option<RequestRecord>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>> {
        Box::pin(async move {
            match step {
                Step::Call(name) => {
                    let record = record.take();
                    origin::serve(self, runtime, &name, parts, body, start, record).await
                }
                Step::Forward => {
                    let record = record.take();
                    node::forward(self, runtime, &listener.name, parts, body, record).await
                }
                Step::TakePacket => {
                    let record = record.take();
                    inference_proxy::take(self, runtime, &listener.name, parts, body, record).await
                }
                Step::SendPacket => {
                    let record = record.take();
                    inference_proxy::send_on(self, runtime, parts, body, record).await
                }
                Step::Deliver => match wire::read_one::<Delivery>(body).await {
                    Ok(delivery) => {
                        self.delivered(delivery);
                        wire::unary(&gridmesh_proto::hop::Delivered {})
                    }
                    Err(status) => wire::error(&status),
                },
            }
        })
    }

    /// Hands a delivery to the origin request waiting for it; one for a
    /// request that already ended is dropped (nothing outlives a request).
    fn delivered(&self, delivery: Delivery) {
        let origins = self.origins.lock();
        match origins.get(&delivery.request_id) {
            // Full: the request already has a failure or all its tails.
            Some(waiting) => drop(waiting.deliveries.try_send(delivery)),
            None => tracing::debug!(
                request = %delivery.request_id,
                "delivery for a vDAG request that is no longer waiting"
            ),
        }
    }

    /// Registers a request this proxy is origin of; `None` when too many
    /// are in flight.
    fn register(self: &Arc<Self>, vdag: &str, capacity: usize) -> Option<Registered> {
        let mut origins = self.origins.lock();
        if origins.len() >= MAX_ORIGIN_REQUESTS {
            return None;
        }
        let request_id = format!("{:032x}", rand::random::<u128>());
        let (queue, deliveries) = mpsc::channel(capacity);
        let waiting = Waiting {
            vdag: vdag.into(),
            deliveries: queue,
        };
        origins.insert(request_id.clone(), waiting);
        Some(Registered {
            vdags: self.clone(),
            request_id,
            deliveries,
        })
    }

    /// Takes a hop unless this instance already took it (`None`). The
    /// guard remembers it until a while after it is dropped, which the hop
    /// is when it finishes.
    fn take(self: &Arc<Self>, key: HopKey, deadline: Instant) -> Result<Option<TakenHop>, Status> {
        if !self.taken.lock().take(key.clone(), Instant::now())? {
            return Ok(None);
        }
        Ok(Some(TakenHop {
            vdags: self.clone(),
            key: Some(key),
            deadline,
        }))
    }

    /// Adds one predecessor's part to a join: all of them once all of
    /// `expected` have arrived, in that order.
    fn join_part(
        &self,
        key: JoinKey,
        from: usize,
        part: ModelInferRequest,
        expected: &[usize],
    ) -> Result<JoinStep, Status> {
        let mut joins = self.joins.lock();
        let first = !joins.contains_key(&key);
        if first && joins.len() >= MAX_PENDING_JOINS {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!("this sidecar holds {MAX_PENDING_JOINS} joins waiting for inputs"),
            ));
        }
        let parts = joins.entry(key.clone()).or_default();
        parts.push((from, part));
        if expected.iter().all(|p| parts.iter().any(|(f, _)| f == p)) {
            let mut parts = joins.remove(&key).expect("just filled");
            parts.sort_by_key(|(f, _)| expected.iter().position(|p| p == f));
            return Ok(JoinStep::Complete(
                parts.into_iter().map(|(_, p)| p).collect(),
            ));
        }
        Ok(JoinStep::Waiting { first })
    }

    /// Drops a join that is still waiting; returns the predecessors whose
    /// parts had arrived, or `None` when it completed.
    fn expire_join(&self, key: &JoinKey) -> Option<Vec<usize>> {
        let parts = self.joins.lock().remove(key)?;
        Some(parts.into_iter().map(|(from, _)| from).collect())
    }

    /// A connection to an origin, kept for its later deliveries.
    fn origin_cluster(
        &self,
        addr: SocketAddr,
        identity: Option<SpiffeId>,
    ) -> Result<Arc<Cluster>, Status> {
        let key = (addr, identity);
        if let Some(cluster) = self.origin_clusters.lock().get(&key) {
            return Ok(cluster.clone());
        }
        let spec = ClusterSpec::single_endpoint("vdag-origins", addr, key.1.clone());
        let cluster = Cluster::new(Arc::new(spec), &self.metrics, None, self.identity.as_ref())
            .map_err(|e| Status::new(Code::Internal, e.to_string()))?;
        let mut clusters = self.origin_clusters.lock();
        if clusters.len() >= MAX_ORIGIN_CLUSTERS {
            clusters.clear();
        }
        Ok(clusters.entry(key).or_insert(cluster).clone())
    }

    /// What `/vdags` on the admin server shows: requests this proxy is
    /// origin of, per vDAG, and the hops it holds, per vDAG and node.
    pub fn status(&self) -> serde_json::Value {
        let mut origin: BTreeMap<&str, u64> = BTreeMap::new();
        let origins = self.origins.lock();
        for waiting in origins.values() {
            *origin.entry(&waiting.vdag).or_default() += 1;
        }
        let mut held: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for family in self.observed.in_flight.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                let hops = metric.get_gauge().get_value() as i64;
                if hops > 0 {
                    held.entry(label("vdag"))
                        .or_default()
                        .insert(label("node"), hops);
                }
            }
        }
        serde_json::json!({
            "originRequests": origin,
            "heldHops": held,
            "takenHops": self.taken.lock().len(),
            "waitingJoins": self.joins.lock().len(),
        })
    }

    /// This proxy as an origin: its delivery address and SPIFFE ID (empty:
    /// plaintext).
    fn origin_address(&self) -> Option<(SocketAddr, String)> {
        let (addr, mtls) = (*self.inbound.lock())?;
        let identity = match (mtls, &self.identity) {
            (true, Some(store)) => store
                .credentials()
                .map(|c| c.svid.id.to_string())
                .unwrap_or_default(),
            _ => String::new(),
        };
        Some((addr, identity))
    }
}

/// The vDAG `name` as this sidecar holds it, which must be at `version`:
/// every sidecar on a request's path runs the same graph.
fn held(runtime: &Runtime, name: &str, version: &str) -> Result<Arc<VDagSpec>, Status> {
    let spec = runtime.snapshot.vdags.get(name).ok_or_else(|| {
        Status::new(
            Code::FailedPrecondition,
            format!("this sidecar has no vDAG {name:?}"),
        )
    })?;
    if spec.version != version {
        return Err(Status::new(
            Code::FailedPrecondition,
            format!(
                "this sidecar holds vDAG {name} version {:?}, the hop is for version {version:?}",
                spec.version
            ),
        ));
    }
    Ok(spec.clone())
}

/// A hop this sidecar carries; remembered for [`REMEMBER_FINISHED`] (or
/// until its deadline, if sooner) once dropped.
struct TakenHop {
    vdags: Arc<VDags>,
    key: Option<HopKey>,
    deadline: Instant,
}

impl TakenHop {
    /// The hop failed: forgotten at once, so that the sender's retry — which
    /// may come back to this instance — runs it again.
    fn failed(mut self) {
        if let Some(key) = self.key.take() {
            self.vdags.taken.lock().failed(&key);
        }
    }
}

impl Drop for TakenHop {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let forget_at = (Instant::now() + REMEMBER_FINISHED).min(self.deadline);
            self.vdags.taken.lock().finished(key, forget_at);
        }
    }
}

/// A request this proxy is origin of; unregistered when dropped, so no
/// path out of the request leaves its entry behind.
struct Registered {
    vdags: Arc<VDags>,
    request_id: String,
    deliveries: mpsc::Receiver<Delivery>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.vdags.origins.lock().remove(&self.request_id);
    }
}
