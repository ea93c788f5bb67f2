//! vDAGs of blocks that speak the existing network's `InferenceProxy`
//! (docs/vdag.md, "Blocks that speak InferenceProxy"). Those blocks forward
//! their own output, by the packet's `output_ptr`, so where a KServe vDAG's
//! sidecars run their blocks and hand the outputs on, here they carry the
//! packets the blocks send — acknowledged hop by hop, deduplicated, retried,
//! and with every failure reaching the client:
//!
//! - **originate** — a client's `vDAGInferenceService.infer`, at the origin:
//!   the packet gets an `output_ptr` graph of the vDAG, with gridmesh's
//!   request context under `"gridmesh"`, and goes to the entry nodes; the
//!   client is answered with the final packet, or with an error packet
//!   (`{"success": false, "message": ...}`) on a failure or at the deadline.
//! - **take** — a packet for this sidecar's block, from another sidecar:
//!   deduplicated by (request, node, sender); its `output_ptr` edited so
//!   that the block sends its output to this sidecar (at a distinct address
//!   per next block, as the blocks' SDK keeps one channel per host); handed
//!   to the block, whose ack ("queued") answers the sender.
//! - **send on** — the block's `InferenceProxy.infer` of its output: to an
//!   instance of the next node's sidecar over mTLS (another instance when
//!   one fails), or to the origin for `final`; the block's ack waits for the
//!   next block's. A packet that cannot be handed on becomes an error packet
//!   at the origin at once, not a client waiting for its deadline.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::send::{self, Instances, carried, failure};
use super::wire::{self, Status};
use super::{HopKey, Registered, VDags, origin, packet};
use crate::body::Body;
use crate::grpc::Code;
use crate::record::RequestRecord;
use crate::runtime::Runtime;
use gridmesh_config::vdag::{FINAL, VDagSpec};
use gridmesh_proto::hop::{Delivery, delivery};
use gridmesh_proto::inference_proxy::{
    AiosPacket, FileInfo, InferenceMessage, InferenceRespose, VDagFileInfo, VDagInferencePacket,
};

/// The blocks' service: one packet for the block `x-service-name` names.
pub const INFER_PATH: &str = "/InferenceProxy/infer";
/// The clients' entry to a vDAG.
const ENTRY_PATH: &str = "/vDAGInferenceService/infer";
const SERVICE_NAME: HeaderName = HeaderName::from_static("x-service-name");
/// `output_ptr`'s key for gridmesh's request context.
const CONTEXT_KEY: &str = "gridmesh";

/// gridmesh's part of `output_ptr`: what every sidecar on the way needs,
/// carried by blocks that pass `output_ptr` on without reading it.
#[derive(Serialize, Deserialize)]
struct Context {
    vdag: String,
    version: String,
    request: String,
    /// Where the origin takes deliveries, "ip:port".
    origin: String,
    /// The SPIFFE ID the origin presents; empty: plaintext.
    #[serde(default)]
    origin_identity: String,
    /// When the request is over, in milliseconds since the Unix epoch.
    deadline_ms: u64,
    /// The node whose block holds the packet (empty at the origin): the
    /// sender, when that block sends its output on.
    #[serde(default)]
    at: String,
}

/// A packet on its way, and what its `output_ptr` says.
struct Packet {
    rpc_data: Bytes,
    output_ptr: Value,
    context: Context,
}

impl Packet {
    fn parse(rpc_data: Bytes) -> Result<Packet, Status> {
        let head = packet::head(&rpc_data)?;
        let output_ptr: Value = serde_json::from_str(&head.output_ptr).map_err(|e| {
            Status::new(
                Code::InvalidArgument,
                format!("the packet's output_ptr is not JSON: {e}"),
            )
        })?;
        let context = output_ptr.get(CONTEXT_KEY).cloned().ok_or_else(|| {
            Status::new(
                Code::FailedPrecondition,
                "the packet's output_ptr names no vDAG request of gridmesh's \
                 (packets enter a vDAG through vDAGInferenceService.infer at a sidecar)",
            )
        })?;
        let context: Context = serde_json::from_value(context).map_err(|e| {
            Status::new(
                Code::InvalidArgument,
                format!("output_ptr.{CONTEXT_KEY}: {e}"),
            )
        })?;
        Ok(Packet {
            rpc_data,
            output_ptr,
            context,
        })
    }

    fn deadline(&self) -> Instant {
        let left = self.context.deadline_ms.saturating_sub(unix_ms());
        Instant::now() + Duration::from_millis(left)
    }

    /// The packet as `node`'s block gets it: at that node, and its next hops
    /// (and `final`, for a tail) pointed at this sidecar's outbound listener.
    fn for_block(
        mut self,
        spec: &VDagSpec,
        node: usize,
        outbound: Option<SocketAddr>,
    ) -> Result<Bytes, Status> {
        let label = &spec.nodes[node].label;
        let block = &spec.nodes[node].model;
        self.output_ptr[CONTEXT_KEY]["at"] = json!(label);
        let own = if spec.tails.contains(&node) {
            FINAL
        } else {
            block
        };
        let outputs = self.output_ptr["graph"][own]["outputs"].as_array_mut();
        for (k, output) in outputs.into_iter().flatten().enumerate() {
            let host = next_host(outbound, k).map_err(|why| {
                Status::new(
                    Code::FailedPrecondition,
                    format!("block {block:?} cannot be told where to send its output: {why}"),
                )
            })?;
            output["host"] = json!(host);
        }
        packet::with_output_ptr(&self.rpc_data, &self.output_ptr.to_string())
    }

    /// Tells the origin how the request ended: with `rpc_data` (a final
    /// packet or an error packet).
    async fn deliver(&self, vdags: &VDags, rpc_data: Bytes, parts: &Parts) -> Result<(), Status> {
        let delivery = Delivery {
            request_id: self.context.request.clone(),
            result: Some(delivery::Result::FinalPacket(rpc_data)),
        };
        let context = &self.context;
        let (origin, identity) = (&context.origin, &context.origin_identity);
        send::deliver(vdags, origin, identity, delivery, &carried(&parts.headers)).await
    }
}

fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

/// The host a block is told for its `k`th next hop: an address of this
/// sidecar's outbound listener, distinct per next hop because the blocks'
/// SDK keeps one channel per host, with the `x-service-name` of the first
/// packet it sent on it. A wildcard listener takes all of 127.0.0.0/8.
fn next_host(outbound: Option<SocketAddr>, k: usize) -> Result<String, String> {
    let outbound = outbound.ok_or("this sidecar has no OUTBOUND listener")?;
    let ip = match outbound.ip() {
        ip if ip.is_unspecified() => {
            let last = u8::try_from(k + 1).map_err(|_| "more than 254 next blocks")?;
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
        }
        ip if k == 0 => ip,
        ip => {
            return Err(format!(
                "it has {} next blocks, and this sidecar's outbound listener has one \
                 address ({ip}); bind it to 0.0.0.0 to give each its own",
                k + 1
            ));
        }
    };
    Ok(SocketAddr::new(ip, outbound.port()).to_string())
}

/// The block a request is for, by its `x-service-name`.
fn service_name(parts: &Parts) -> Result<&str, Status> {
    let name = parts.headers.get(&SERVICE_NAME).ok_or_else(|| {
        Status::new(
            Code::InvalidArgument,
            "InferenceProxy.infer names its block in x-service-name",
        )
    })?;
    name.to_str()
        .map_err(|_| Status::new(Code::InvalidArgument, "x-service-name is not text"))
}

/// The answer to an `InferenceProxy.infer`: the ack, or why not.
fn answered(record: Option<RequestRecord>, result: Result<(), Status>) -> Response<Body> {
    origin::finish(record, &result);
    match result {
        Ok(()) => wire::unary(&InferenceRespose { message: true }),
        Err(status) => wire::error(&status),
    }
}

/// Serves a packet another sidecar (or the origin) hands this one's block.
pub async fn take(
    vdags: &Arc<VDags>,
    runtime: Arc<Runtime>,
    listener: &Arc<str>,
    parts: Parts,
    body: Body,
    record: Option<RequestRecord>,
) -> Response<Body> {
    let result = take_packet(vdags, &runtime, listener, &parts, body).await;
    answered(record, result)
}

async fn take_packet(
    vdags: &Arc<VDags>,
    runtime: &Runtime,
    listener: &str,
    parts: &Parts,
    body: Body,
) -> Result<(), Status> {
    let message: InferenceMessage = wire::read_one(body).await?;
    let block = service_name(parts)?;
    let packet = Packet::parse(message.rpc_data)?;
    let context = &packet.context;
    let spec = super::held(runtime, &context.vdag, &context.version)?;
    let node = spec.node_of_block(block).ok_or_else(|| {
        Status::new(
            Code::FailedPrecondition,
            format!("vDAG {} has no block {block:?}", spec.name),
        )
    })?;
    let label = spec.nodes[node].label.clone();
    let led_here = match context.at.as_str() {
        "" => spec.entry.contains(&node),
        from => (spec.node(from)).is_some_and(|f| spec.nodes[node].previous.contains(&f)),
    };
    if !led_here {
        return Err(Status::new(
            Code::FailedPrecondition,
            format!(
                "in vDAG {}, {:?} does not lead to block {block:?}",
                spec.name, context.at
            ),
        ));
    }
    let deadline = packet.deadline();
    let key = HopKey {
        request_id: context.request.clone(),
        node: label.clone(),
        from: context.at.clone(),
    };
    let Some(taken) = vdags.take(key, deadline)? else {
        // Already queued at this block: a retry, or the same output sent
        // twice. The ack it had stands.
        let labels = [spec.name.as_str(), label.as_str()];
        vdags.observed.duplicates.with_label_values(&labels).inc();
        return Ok(());
    };
    let rpc_data = packet.for_block(&spec, node, vdags.outbound());
    let queued = match rpc_data {
        Ok(rpc_data) => queue(runtime, listener, parts, block, rpc_data, deadline).await,
        Err(status) => Err(status),
    };
    match queued {
        Ok(()) => drop(taken),
        Err(ref status) => {
            // Forgotten: the sender's retry, wherever it goes, runs it.
            taken.failed();
            let code = status.code.to_string();
            let labels = [spec.name.as_str(), label.as_str(), &code];
            vdags
                .observed
                .node_failures
                .with_label_values(&labels)
                .inc();
        }
    }
    queued
}

/// Hands `rpc_data` to the local block: done once the block says queued.
async fn queue(
    runtime: &Runtime,
    listener: &str,
    parts: &Parts,
    block: &str,
    rpc_data: Bytes,
    deadline: Instant,
) -> Result<(), Status> {
    let authority = parts.uri.authority().map_or("block", |a| a.as_str());
    let mut head = send::grpc_head(authority, INFER_PATH, deadline, &carried(&parts.headers));
    let name = HeaderValue::from_str(block)
        .map_err(|_| Status::new(Code::InvalidArgument, "x-service-name is not a header"))?;
    head.headers.insert(SERVICE_NAME, name);
    let cluster = send::block_cluster(runtime, listener, &head)?;
    let request = wire::frame(&InferenceMessage { rpc_data });
    let ack: InferenceRespose = send::unary(cluster, head, request, deadline, None)
        .await
        .map_err(|s| Status {
            code: s.code,
            message: format!("its block: {}", s.message),
        })?;
    acked(ack)
}

fn acked(ack: InferenceRespose) -> Result<(), Status> {
    match ack.message {
        true => Ok(()),
        false => Err(Status::new(
            Code::Unavailable,
            "its block did not take the packet (message: false)",
        )),
    }
}

/// Serves a block's `InferenceProxy.infer` of its output.
pub async fn send_on(
    vdags: &Arc<VDags>,
    runtime: Arc<Runtime>,
    parts: Parts,
    body: Body,
    record: Option<RequestRecord>,
) -> Response<Body> {
    let result = send_packet(vdags, &runtime, &parts, body).await;
    answered(record, result)
}

async fn send_packet(
    vdags: &Arc<VDags>,
    runtime: &Runtime,
    parts: &Parts,
    body: Body,
) -> Result<(), Status> {
    let message: InferenceMessage = wire::read_one(body).await?;
    let to = service_name(parts)?;
    let packet = Packet::parse(message.rpc_data)?;
    let context = &packet.context;
    let spec = super::held(runtime, &context.vdag, &context.version)?;
    let from = spec.node(&context.at).ok_or_else(|| {
        Status::new(
            Code::FailedPrecondition,
            format!(
                "output_ptr says the packet is at {:?}, a node vDAG {} does not have",
                context.at, spec.name
            ),
        )
    })?;
    if to == FINAL {
        if !spec.tails.contains(&from) {
            return Err(Status::new(
                Code::FailedPrecondition,
                format!(
                    "in vDAG {}, node {} is not the tail, yet sends to {FINAL}",
                    spec.name, context.at
                ),
            ));
        }
        return packet.deliver(vdags, packet.rpc_data.clone(), parts).await;
    }
    let next = spec
        .node_of_block(to)
        .filter(|n| spec.nodes[from].next.iter().any(|e| e.to == *n))
        .ok_or_else(|| {
            Status::new(
                Code::FailedPrecondition,
                format!(
                    "in vDAG {}, node {} does not lead to block {to:?}",
                    spec.name, context.at
                ),
            )
        })?;
    let (deadline, carried) = (packet.deadline(), carried(&parts.headers));
    let sent = hand_on(
        vdags,
        runtime,
        &spec,
        next,
        &packet.rpc_data,
        deadline,
        &carried,
    )
    .await;
    if let Err(status) = &sent {
        // The packet goes no further: the client hears it now, not at the
        // deadline.
        let error = error_packet(
            &packet.rpc_data,
            &format!("vDAG {}: {}", spec.name, status.message),
        );
        // Logged there; the block hears of the failure either way.
        let _ = packet.deliver(vdags, error, parts).await;
    }
    sent
}

/// Hands `rpc_data` to an instance of node `next`: done once that
/// instance's block queued it.
async fn hand_on(
    vdags: &VDags,
    runtime: &Runtime,
    spec: &VDagSpec,
    next: usize,
    rpc_data: &Bytes,
    deadline: Instant,
    carried: &HeaderMap,
) -> Result<(), Status> {
    let node = &spec.nodes[next];
    let cluster = &runtime.clusters[node.cluster];
    let name = HeaderValue::from_str(&node.model)
        .map_err(|_| Status::new(Code::InvalidArgument, "a block id is not a header"))?;
    let request = wire::frame(&InferenceMessage {
        rpc_data: rpc_data.clone(),
    });
    let mut instances = Instances::new(vdags, spec, next, deadline, None);
    let sent = loop {
        let mut head = send::grpc_head(&cluster.name(), INFER_PATH, deadline, carried);
        head.headers.insert(SERVICE_NAME, name.clone());
        let ack = send::unary_with(cluster, head, request.clone(), &instances.policy()).await;
        let sent = ack.and_then(acked).map_err(|s| failure(&node.label, s));
        if !instances.try_again(&sent) {
            break sent;
        }
    };
    sent.map_err(|f| Status {
        code: f.code,
        message: f.message,
    })
}

/// `rpc_data` turned into the error packet the network's clients know: its
/// `data` `{"success": false, "message": ...}`, with no further hops.
fn error_packet(rpc_data: &[u8], message: &str) -> Bytes {
    let mut packet = AiosPacket::decode(rpc_data).unwrap_or_default();
    packet.data = json!({ "success": false, "message": message }).to_string();
    packet.output_ptr.clear();
    packet.encode_to_vec().into()
}

/// Serves a client's `vDAGInferenceService.infer` of `spec` (this proxy is
/// the origin), within `timeout`.
#[allow(clippy::too_many_arguments)] // the origin's state, passed on
pub async fn originate(
    vdags: &Arc<VDags>,
    runtime: &Runtime,
    spec: &VDagSpec,
    timeout: Duration,
    parts: Parts,
    body: Body,
    start: Instant,
    record: Option<RequestRecord>,
) -> Response<Body> {
    // No node reports being late here: the graph's deadline is the answer's.
    let (deadline, _) = origin::deadlines(timeout);
    let client = match parts.uri.path() {
        ENTRY_PATH => wire::read_one::<VDagInferencePacket>(body).await,
        path => Err(Status::new(
            Code::Unimplemented,
            format!(
                "vDAG {} takes vDAGInferenceService.infer, not {path}",
                spec.name
            ),
        )),
    };
    let client = match client {
        Ok(client) => client,
        Err(status) => {
            let outcome = Err(status.clone());
            origin::observe(vdags, spec, &outcome, start);
            origin::finish(record, &outcome);
            return wire::error(&status);
        }
    };
    let result = match vdags.register(&spec.name, 1) {
        Some(registered) => run(vdags, runtime, spec, registered, &client, &parts, deadline).await,
        None => Err(origin::shed()),
    };
    // A final packet may itself be an error packet from a sidecar.
    let outcome = match &result {
        Ok(answer) if failed_packet(&answer.data) => {
            Err(Status::new(Code::Unavailable, &answer.data))
        }
        Ok(_) => Ok(()),
        Err(status) => Err(status.clone()),
    };
    origin::observe(vdags, spec, &outcome, start);
    origin::finish(record, &outcome);
    let answer = result.unwrap_or_else(|status| {
        let message = format!("vDAG {}: {}", spec.name, status.message);
        VDagInferencePacket {
            data: json!({ "success": false, "message": message }).to_string(),
            ..client
        }
    });
    wire::unary(&answer)
}

fn failed_packet(data: &str) -> bool {
    let data: Option<Value> = serde_json::from_str(data).ok();
    data.is_some_and(|d| d.get("success") == Some(&Value::Bool(false)))
}

/// Sends the client's packet to the entry nodes and waits for the final
/// one.
async fn run(
    vdags: &Arc<VDags>,
    runtime: &Runtime,
    spec: &VDagSpec,
    mut registered: Registered,
    client: &VDagInferencePacket,
    parts: &Parts,
    deadline: Instant,
) -> Result<VDagInferencePacket, Status> {
    let (origin, origin_identity) = vdags.origin_address().ok_or_else(origin::no_inbound)?;
    let left = deadline.saturating_duration_since(Instant::now());
    let context = Context {
        vdag: spec.name.clone(),
        version: spec.version.clone(),
        request: registered.request_id.clone(),
        origin: origin.to_string(),
        origin_identity,
        deadline_ms: unix_ms() + left.as_millis() as u64,
        at: String::new(),
    };
    let output_ptr = output_ptr(spec, context)?;
    let packet = AiosPacket {
        // How the network names a vDAG's sessions.
        session_id: format!("vdag::{}::{}", spec.name, client.session_id),
        seq_no: client.seq_no,
        frame_ptr: client.frame_ptr.clone(),
        data: client.data.clone(),
        ts: client.ts,
        output_ptr: output_ptr.to_string(),
        files: (client.files.iter())
            .map(|f| FileInfo {
                metadata: f.metadata.clone(),
                file_data: f.file_data.clone(),
            })
            .collect(),
    };
    let rpc_data: Bytes = packet.encode_to_vec().into();
    let carried = carried(&parts.headers);
    let mut entries: FuturesUnordered<_> = (spec.entry.iter())
        .map(|&entry| hand_on(vdags, runtime, spec, entry, &rpc_data, deadline, &carried))
        .collect();
    loop {
        tokio::select! {
            Some(sent) = entries.next() => sent?,
            Some(delivery) = registered.deliveries.recv() => {
                if let Some(delivery::Result::FinalPacket(rpc_data)) = delivery.result {
                    return answer(client, &rpc_data);
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err(Status::new(
                    Code::DeadlineExceeded,
                    format!(
                        "no final packet within {left:?}: a block took the packet and sent no output on"
                    ),
                ));
            }
        }
    }
}

/// The client's answer: the final packet, under the client's session id.
fn answer(client: &VDagInferencePacket, rpc_data: &[u8]) -> Result<VDagInferencePacket, Status> {
    let last = AiosPacket::decode(rpc_data).map_err(|e| {
        Status::new(
            Code::Internal,
            format!("the final packet is not an AIOSPacket: {e}"),
        )
    })?;
    Ok(VDagInferencePacket {
        session_id: client.session_id.clone(),
        seq_no: last.seq_no,
        frame_ptr: last.frame_ptr,
        data: last.data,
        ts: last.ts,
        files: (last.files.into_iter())
            .map(|f| VDagFileInfo {
                metadata: f.metadata,
                file_data: f.file_data,
            })
            .collect(),
    })
}

/// The `output_ptr` the blocks forward by: each block's next blocks, and
/// `final` (the tail's sidecar tells its block its own address for it), with
/// the request's context.
fn output_ptr(spec: &VDagSpec, context: Context) -> Result<Value, Status> {
    let hop = |block: &str| json!({ "host": block, "port": 0, "block_id": block });
    let mut graph = serde_json::Map::new();
    for node in &spec.nodes {
        let outputs: Vec<Value> = (node.next.iter())
            .map(|e| hop(&spec.nodes[e.to].model))
            .collect();
        graph.insert(node.model.clone(), json!({ "outputs": outputs }));
    }
    graph.insert(FINAL.into(), json!({ "outputs": [hop(FINAL)] }));
    let context =
        serde_json::to_value(context).map_err(|e| Status::new(Code::Internal, e.to_string()))?;
    Ok(json!({ "is_graph": true, "graph": graph, CONTEXT_KEY: context }))
}
