//! The origin of a vDAG request: the sidecar the client called. It fixes
//! the request's id and deadline, hands the client's input to the entry
//! nodes, and answers once every tail has delivered — or with the first
//! failure reported from anywhere in the graph, or at the deadline. The
//! client never waits past its deadline, whatever happens in the graph.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use tokio::time::Instant;

use super::send::{self, carried};
use super::wire::{self, Status};
use super::{Registered, VDags, inference_proxy, tensors};
use crate::body::Body;
use crate::grpc::{self, Code};
use crate::record::{Ending, RequestRecord};
use crate::runtime::Runtime;
use gridmesh_config::vdag::{BlockProtocol, VDagSpec};
use gridmesh_proto::hop::{Hop, HopFailure, delivery};
use gridmesh_proto::inference::{ModelInferRequest, ModelInferResponse};

/// The answer's header with the request id the hops carried, for finding
/// the request in logs and traces.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-gridmesh-vdag-request");
/// The part of the client's deadline the graph does not get (a tenth, at
/// most this): the time the node that was late has to say so and the origin
/// to pass it on, so that the client hears which node it was before its own
/// deadline ends the call.
const LATE_NODE_RESERVE: Duration = Duration::from_millis(100);

/// Serves a client's call of the vDAG `name`.
/// `record` ends with the answer; the hops' spans are children of its
/// client span.
pub async fn serve(
    vdags: &Arc<VDags>,
    runtime: Arc<Runtime>,
    name: &HeaderValue,
    parts: Parts,
    body: Body,
    start: Instant,
    mut record: Option<RequestRecord>,
) -> Response<Body> {
    let called = match called(&runtime, name, &parts) {
        Ok(called) => called,
        Err(status) => {
            finish(record, &Err(status.clone()));
            return wire::error(&status);
        }
    };
    let (spec, timeout) = called;
    if spec.protocol == BlockProtocol::InferenceProxy {
        let (spec, runtime) = (&spec, &runtime);
        return inference_proxy::originate(
            vdags, runtime, spec, timeout, parts, body, start, record,
        )
        .await;
    }
    let (result, request_id) = match vdags.register(&spec.name, spec.tails.len() + 1) {
        Some(registered) => {
            let request_id = registered.request_id.clone();
            let deadlines = deadlines(timeout);
            let call = Call {
                vdags,
                runtime: &runtime,
                spec: &spec,
                record: record.as_mut(),
            };
            let result = call.run(registered, &parts, body, deadlines).await;
            (result, Some(request_id))
        }
        None => (Err(shed()), None),
    };
    let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
    observe(vdags, &spec, &outcome, start);
    finish(record, &outcome);
    let mut response = match result {
        Ok(answer) => wire::unary(&answer),
        Err(mut status) => {
            status.message = format!("vDAG {}: {}", spec.name, status.message);
            wire::error(&status)
        }
    };
    if let Some(id) = request_id.and_then(|id| HeaderValue::try_from(id).ok()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    response
}

/// The vDAG the header names (at the version it names, if any) and the
/// request's time: the client's `grpc-timeout` or the vDAG's, whichever is
/// shorter.
fn called(
    runtime: &Runtime,
    name: &HeaderValue,
    parts: &Parts,
) -> Result<(Arc<VDagSpec>, Duration), Status> {
    let named = name
        .to_str()
        .map_err(|_| Status::new(Code::InvalidArgument, "x-gridmesh-vdag is not text"))?;
    let (name, version) = match named.split_once(':') {
        Some((name, version)) => (name, Some(version)),
        None => (named, None),
    };
    let spec = runtime
        .snapshot
        .vdags
        .get(name)
        .ok_or_else(|| Status::new(Code::NotFound, format!("no vDAG named {name:?}")))?;
    if let Some(version) = version
        && version != spec.version
    {
        return Err(Status::new(
            Code::NotFound,
            format!(
                "vDAG {name} is at version {:?}, not {version:?}",
                spec.version
            ),
        ));
    }
    if !grpc::is_grpc(&parts.headers) {
        return Err(Status::new(
            Code::InvalidArgument,
            "a vDAG is called over gRPC (ModelInfer, or vDAGInferenceService.infer)",
        ));
    }
    let mut timeout = spec.timeout;
    if let Some(value) = parts.headers.get(grpc::GRPC_TIMEOUT) {
        let client = grpc::parse_timeout(value)
            .ok_or_else(|| Status::new(Code::InvalidArgument, "malformed grpc-timeout"))?;
        timeout = timeout.min(client);
    }
    Ok((spec.clone(), timeout))
}

/// When the graph must be done and when the client's answer is due, for a
/// request of `timeout` from now.
pub(super) fn deadlines(timeout: Duration) -> (Instant, Instant) {
    let deadline = Instant::now() + timeout;
    (deadline - (timeout / 10).min(LATE_NODE_RESERVE), deadline)
}

/// A request refused before anything is sent: the origin is saturated.
pub(super) fn shed() -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!(
            "this origin has {} vDAG requests in flight",
            super::MAX_ORIGIN_REQUESTS
        ),
    )
}

pub(super) fn no_inbound() -> Status {
    Status::new(
        Code::Unavailable,
        "this sidecar has no inbound listener for the tails to deliver to",
    )
}

/// Counts a request this proxy answered as its origin.
pub(super) fn observe(
    vdags: &VDags,
    spec: &VDagSpec,
    outcome: &Result<(), Status>,
    start: Instant,
) {
    let observed = &vdags.observed;
    let code = outcome.as_ref().map_or_else(|s| s.code, |()| 0);
    observed
        .requests
        .with_label_values(&[&spec.name, &code.to_string()])
        .inc();
    observed
        .duration
        .with_label_values(&[&spec.name])
        .observe(start.elapsed().as_secs_f64());
}

/// Ends the request's server span, access log line and metrics.
pub(super) fn finish(record: Option<RequestRecord>, result: &Result<(), Status>) {
    if let Some(record) = record {
        record.finish(Ending {
            status: StatusCode::OK,
            grpc_status: Some(result.as_ref().map_or_else(|s| s.code, |()| 0)),
            error: result.is_err().then_some("vdag_failed"),
            local_body: None,
        });
    }
}

/// What one request is served with.
struct Call<'a> {
    vdags: &'a Arc<VDags>,
    runtime: &'a Arc<Runtime>,
    spec: &'a Arc<VDagSpec>,
    record: Option<&'a mut RequestRecord>,
}

impl Call<'_> {
    async fn run(
        self,
        mut registered: Registered,
        parts: &Parts,
        body: Body,
        (graph_deadline, deadline): (Instant, Instant),
    ) -> Result<ModelInferResponse, Status> {
        let Call {
            vdags,
            runtime,
            spec,
            record,
        } = self;
        let (origin, origin_identity) = vdags.origin_address().ok_or_else(no_inbound)?;
        let input: ModelInferRequest = wire::read_one(body).await?;
        let client_id = input.id.clone();
        let mut carried = carried(&parts.headers);
        // The hops' spans hang off this call's client span.
        if let Some(record) = record {
            let entry = &runtime.clusters[spec.nodes[spec.entry[0]].cluster];
            record.routed(&mut carried, &spec.name, entry);
        }
        // Each entry hop runs as a task of its own, to its end: the answer
        // may come before the entry node's `handed_on` is back, and dropping
        // the hop then would reset its stream — a frame per request, and h2
        // closes a connection after 1,024 resets (the benchmark's errors
        // and 5 ms p99 before this).
        let mut entries: FuturesUnordered<_> = spec
            .entry
            .iter()
            .map(|&entry| {
                let hop = Hop {
                    request_id: registered.request_id.clone(),
                    vdag: spec.name.clone(),
                    version: spec.version.clone(),
                    node: spec.nodes[entry].label.clone(),
                    from: String::new(),
                    origin: origin.to_string(),
                    origin_identity: origin_identity.clone(),
                    request: Some(input.clone()),
                };
                let (vdags, runtime, spec) = (vdags.clone(), runtime.clone(), spec.clone());
                let carried = carried.clone();
                tokio::spawn(async move {
                    send::hand_on(
                        &vdags,
                        &runtime,
                        &spec,
                        entry,
                        &hop,
                        graph_deadline,
                        &carried,
                    )
                    .await
                })
            })
            .collect();
        let mut answers: Vec<Option<ModelInferResponse>> = vec![None; spec.tails.len()];
        let deliveries = &mut registered.deliveries;
        loop {
            tokio::select! {
                Some(sent) = entries.next() => {
                    let sent = sent.map_err(|e| {
                        Status::new(Code::Internal, format!("the entry hop's task ended: {e}"))
                    })?;
                    // Late: the deadline branch answers, naming the late node.
                    if let Err(f) = sent && f.code != Code::DeadlineExceeded as u32 {
                        return Err(failed(f));
                    }
                }
                Some(delivery) = deliveries.recv() => match delivery.result {
                    Some(delivery::Result::Tail(output)) => {
                        let tail = spec.tails.iter().position(|&t| spec.nodes[t].label == output.node);
                        if let Some(slot) = tail.and_then(|t| answers.get_mut(t))
                            && slot.is_none()
                        {
                            *slot = Some(output.response.unwrap_or_default());
                        }
                        if answers.iter().all(Option::is_some) {
                            break;
                        }
                    }
                    Some(delivery::Result::Failure(f)) => return Err(failed(f)),
                    // Only InferenceProxy vDAGs end in packets.
                    Some(delivery::Result::FinalPacket(_)) | None => {}
                },
                () = tokio::time::sleep_until(graph_deadline) => {
                    // Half the reserve for the late node's report, half for
                    // the answer to reach the client.
                    let report_by = graph_deadline + (deadline - graph_deadline) / 2;
                    return Err(late(spec, &answers, deliveries, report_by).await);
                }
            }
        }
        let tails = spec
            .tails
            .iter()
            .zip(answers)
            .map(|(&t, answer)| (spec.nodes[t].label.as_str(), answer.unwrap_or_default()))
            .collect();
        let mut answer = tensors::answer(tails).map_err(|m| Status::new(Code::Internal, m))?;
        answer.model_name.clone_from(&spec.name);
        answer.model_version.clone_from(&spec.version);
        answer.id = client_id;
        Ok(answer)
    }
}

fn failed(f: HopFailure) -> Status {
    Status {
        code: f.code,
        message: f.message,
    }
}

/// The graph's deadline passed: the late node's own report if it comes by
/// `report_by`, else which tails never answered.
async fn late(
    spec: &VDagSpec,
    answers: &[Option<ModelInferResponse>],
    deliveries: &mut tokio::sync::mpsc::Receiver<gridmesh_proto::hop::Delivery>,
    report_by: Instant,
) -> Status {
    let reported = tokio::time::timeout_at(report_by, async {
        while let Some(delivery) = deliveries.recv().await {
            if let Some(delivery::Result::Failure(f)) = delivery.result {
                return failed(f);
            }
        }
        std::future::pending().await
    });
    if let Ok(status) = reported.await {
        return status;
    }
    let missing: Vec<&str> = spec
        .tails
        .iter()
        .zip(answers)
        .filter(|(_, a)| a.is_none())
        .map(|(&t, _)| spec.nodes[t].label.as_str())
        .collect();
    Status::new(
        Code::DeadlineExceeded,
        format!(
            "the deadline passed before tail(s) {} answered",
            missing.join(", ")
        ),
    )
}
