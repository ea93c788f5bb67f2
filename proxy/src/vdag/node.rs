//! A hop at the sidecar of the node's block, in phases:
//!
//! 1. **take**   — decode, check the vDAG and node against this sidecar's
//!    config, drop a duplicate (request, node, sender).
//! 2. **join**   — a join node waits for all its predecessors' parts (the
//!    hop that completes it carries the join on; the others are handed on
//!    once stored).
//! 3. **run**    — the local block's ModelInfer, through the inbound
//!    listener's route, within the node's timeout and the deadline.
//! 4. **hand on** — the output along every edge in parallel, and to the
//!    origin at a tail; `handed_on` once all of that is done or its failure
//!    reported to the origin.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::send::{self, carried, failure};
use super::wire::{self, Status};
use super::{HopKey, JoinKey, JoinStep, VDags, tensors};
use crate::body::Body;
use crate::call::Attempts;
use crate::grpc::{self, Code};
use crate::record::{Ending, RequestRecord};
use crate::runtime::Runtime;
use gridmesh_config::vdag::VDagSpec;
use gridmesh_proto::hop::{
    Delivery, HandedOn, Hop, HopFailure, HopProgress, TailOutput, delivery, hop_progress,
};
use gridmesh_proto::inference::{ModelInferRequest, ModelInferResponse};

const MODEL_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Serves one `Forward` call from another sidecar (or the origin).
pub async fn forward(
    vdags: &Arc<VDags>,
    runtime: Arc<Runtime>,
    listener: &Arc<str>,
    parts: Parts,
    body: Body,
    record: Option<RequestRecord>,
) -> Response<Body> {
    // 1. take
    let job = match wire::read_one::<Hop>(body).await {
        Ok(hop) => Job::new(vdags, runtime, listener, &parts, hop),
        Err(status) => Err(status),
    };
    let mut job = match job {
        Ok(job) => job,
        Err(status) => {
            finish(record, Err(status.code));
            return wire::error(&status);
        }
    };
    job.record = record;
    let key = HopKey {
        request_id: job.hop.request_id.clone(),
        node: job.hop.node.clone(),
        from: job.hop.from.clone(),
    };
    let step = match vdags.take(key, job.deadline) {
        Err(status) => {
            finish(job.record, Err(status.code));
            return wire::error(&status);
        }
        Ok(None) => {
            finish(job.record, Ok(()));
            // A retry of a hop this instance already has: the first copy
            // carries it on (and reports its failures to the origin); this
            // one is done.
            tracing::debug!(request = %job.hop.request_id, node = %job.hop.node, "duplicate hop dropped");
            let labels = [job.spec.name.as_str(), &job.spec.nodes[job.node].label];
            vdags.observed.duplicates.with_label_values(&labels).inc();
            hop_progress::Step::HandedOn(HandedOn {})
        }
        Ok(Some(taken)) => {
            // Carried on in its own task: a sender that goes away (its
            // stream reset) does not stop the hop, which may then run
            // twice, once here and once where the sender retried it.
            let (done, outcome) = oneshot::channel();
            tokio::spawn(async move {
                let step = match job.carry().await {
                    Ok(()) => {
                        drop(taken);
                        hop_progress::Step::HandedOn(HandedOn {})
                    }
                    Err(f) => {
                        taken.failed();
                        hop_progress::Step::Failed(f)
                    }
                };
                let _ = done.send(step);
            });
            match outcome.await {
                Ok(step) => step,
                Err(_) => return wire::error(&Status::new(Code::Internal, "the hop's task ended")),
            }
        }
    };
    // The answer's head, its one message and trailers go out together once
    // the hop is done: the stream stays open until then, so the sender sees
    // this sidecar die, and a hop costs one write each way.
    wire::unary(&HopProgress { step: Some(step) })
}

/// Ends the hop's server span, access log line and request metrics: with
/// the hop, not with its answer's head.
fn finish(record: Option<RequestRecord>, result: Result<(), u32>) {
    if let Some(record) = record {
        record.finish(Ending {
            status: StatusCode::OK,
            grpc_status: Some(result.err().unwrap_or(0)),
            error: result.is_err().then_some("vdag_hop_failed"),
            local_body: Some(0),
        });
    }
}

/// One hop this sidecar took.
struct Job {
    vdags: Arc<VDags>,
    runtime: Arc<Runtime>,
    listener: Arc<str>,
    spec: Arc<VDagSpec>,
    node: usize,
    /// The predecessor it came from; `None` from the origin.
    from: Option<usize>,
    hop: Hop,
    input: ModelInferRequest,
    deadline: Instant,
    authority: String,
    carried: HeaderMap,
    /// What watches the hop's request: its spans, log line and metrics.
    record: Option<RequestRecord>,
}

impl Job {
    fn new(
        vdags: &Arc<VDags>,
        runtime: Arc<Runtime>,
        listener: &Arc<str>,
        parts: &Parts,
        mut hop: Hop,
    ) -> Result<Job, Status> {
        let spec = super::held(&runtime, &hop.vdag, &hop.version)?;
        let node = spec.node(&hop.node).ok_or_else(|| {
            Status::new(
                Code::FailedPrecondition,
                format!("vDAG {} has no node {:?}", spec.name, hop.node),
            )
        })?;
        let from = match hop.from.as_str() {
            "" => None,
            label => Some(
                spec.node(label)
                    .filter(|f| spec.nodes[node].previous.contains(f))
                    .ok_or_else(|| {
                        Status::new(
                            Code::FailedPrecondition,
                            format!(
                                "in vDAG {}, {label:?} does not lead to {}",
                                spec.name, hop.node
                            ),
                        )
                    })?,
            ),
        };
        let deadline = match parts.headers.get(grpc::GRPC_TIMEOUT) {
            Some(value) => {
                let left = grpc::parse_timeout(value)
                    .ok_or_else(|| Status::new(Code::InvalidArgument, "malformed grpc-timeout"))?;
                Instant::now() + left
            }
            None => Instant::now() + spec.timeout,
        };
        let input = hop
            .request
            .take()
            .ok_or_else(|| Status::new(Code::InvalidArgument, "the hop carries no request"))?;
        Ok(Job {
            vdags: vdags.clone(),
            runtime,
            listener: listener.clone(),
            spec,
            node,
            from,
            hop,
            input,
            deadline,
            authority: parts
                .uri
                .authority()
                .map_or_else(|| "block".to_string(), |a| a.to_string()),
            carried: carried(&parts.headers),
            record: None,
        })
    }

    fn label(&self) -> &str {
        &self.spec.nodes[self.node].label
    }

    /// Phases 2-4. An error is this node's own failure, for the sender to
    /// retry elsewhere or report; what fails after the block answered is
    /// reported to the origin here.
    async fn carry(mut self) -> Result<(), HopFailure> {
        let labels = [self.spec.name.as_str(), self.label()];
        let in_flight = self.vdags.observed.in_flight.with_label_values(&labels);
        in_flight.inc();
        let mut record = self.record.take();
        let result = self.join_run_hand_on(&mut record).await;
        finish(record, result.as_ref().map(|_| ()).map_err(|f| f.code));
        in_flight.dec();
        result
    }

    async fn join_run_hand_on(
        mut self,
        record: &mut Option<RequestRecord>,
    ) -> Result<(), HopFailure> {
        // 2. join
        let node = &self.spec.nodes[self.node];
        let input = std::mem::take(&mut self.input);
        let input = match (node.previous.len() > 1, self.from) {
            (true, Some(from)) => {
                let key = (self.hop.request_id.clone(), node.label.clone());
                let step = self
                    .vdags
                    .join_part(key.clone(), from, input, &node.previous)
                    .map_err(|s| failure(&node.label, s))?;
                match step {
                    // Stored: the last part's hop carries the join on.
                    JoinStep::Waiting { first } => {
                        if first {
                            tokio::spawn(self.expire_join(key));
                        }
                        return Ok(());
                    }
                    JoinStep::Complete(parts) => tensors::join(parts)
                        .map_err(|m| failure(&node.label, Status::new(Code::InvalidArgument, m)))?,
                }
            }
            _ => input,
        };

        // 3. run
        let answer = self.run(input, record).await?;

        // 4. hand on
        let mut next_hops = Vec::with_capacity(node.next.len());
        for edge in &node.next {
            let request = tensors::along_edge(&answer, edge)
                .map_err(|m| failure(&node.label, Status::new(Code::FailedPrecondition, m)))?;
            next_hops.push((
                edge.to,
                Hop {
                    node: self.spec.nodes[edge.to].label.clone(),
                    from: node.label.clone(),
                    request: Some(request),
                    ..self.hop.clone()
                },
            ));
        }
        let mut sends = FuturesUnordered::new();
        for (to, hop) in &next_hops {
            sends.push(send::hand_on(
                &self.vdags,
                &self.runtime,
                &self.spec,
                *to,
                hop,
                self.deadline,
                &self.carried,
            ));
        }
        let tail = self.spec.tails.contains(&self.node).then(|| {
            let output = TailOutput {
                node: node.label.clone(),
                response: Some(answer),
            };
            self.deliver(delivery::Result::Tail(output))
        });
        let handed_on = async {
            while let Some(sent) = sends.next().await {
                if let Err(f) = sent {
                    // Past the deadline the origin has answered already,
                    // and the node that was late reported itself.
                    if Instant::now() < self.deadline {
                        self.deliver(delivery::Result::Failure(f)).await;
                    }
                }
            }
        };
        match tail {
            Some(tail) => drop(tokio::join!(tail, handed_on)),
            None => handed_on.await,
        }
        Ok(())
    }

    /// The local block's answer for `input`; the block call is `record`'s
    /// client span.
    async fn run(
        &self,
        mut input: ModelInferRequest,
        record: &mut Option<RequestRecord>,
    ) -> Result<ModelInferResponse, HopFailure> {
        let node = &self.spec.nodes[self.node];
        input.model_name.clone_from(&node.model);
        input.model_version.clone_from(&node.model_version);
        input.id.clone_from(&self.hop.request_id);
        let node_deadline = node.timeout.map(|t| Instant::now() + t);
        let deadline = node_deadline.map_or(self.deadline, |n| n.min(self.deadline));
        let mut head = send::grpc_head(&self.authority, MODEL_INFER_PATH, deadline, &self.carried);
        let started = Instant::now();
        let result = match send::block_cluster(&self.runtime, &self.listener, &head) {
            Ok(cluster) => {
                if let Some(record) = record.as_mut() {
                    record.routed(&mut head.headers, &node.label, cluster);
                }
                let attempts = record.as_ref().map(|r| r as &dyn Attempts);
                let request = wire::frame(&input);
                send::unary::<ModelInferResponse>(cluster, head, request, deadline, attempts).await
            }
            Err(status) => Err(status),
        };
        let labels = [self.spec.name.as_str(), node.label.as_str()];
        let observed = &self.vdags.observed;
        let mut status = match result {
            Ok(answer) => {
                observed
                    .node_duration
                    .with_label_values(&labels)
                    .observe(started.elapsed().as_secs_f64());
                return Ok(answer);
            }
            Err(status) => status,
        };
        let code = status.code.to_string();
        observed
            .node_failures
            .with_label_values(&[labels[0], labels[1], &code])
            .inc();
        let late = Instant::now() >= deadline;
        if late && deadline == self.deadline {
            status = Status::new(
                Code::DeadlineExceeded,
                "its block did not answer before the request's deadline",
            );
            let f = failure(&node.label, status);
            // The node that was late says so itself: every sidecar before
            // it only sees the deadline pass.
            self.deliver(delivery::Result::Failure(f.clone())).await;
            return Err(f);
        }
        if late {
            let timeout = node.timeout.unwrap_or_default();
            status.message =
                format!("its block did not answer within the node's timeout of {timeout:?}");
            let mut f = failure(&node.label, status);
            // Another instance may be faster.
            f.retryable = true;
            return Err(f);
        }
        status.message = format!(
            "its block (model {:?}) failed: {}",
            node.model, status.message
        );
        Err(failure(&node.label, status))
    }

    /// At the deadline, drops the join if parts are still missing and tells
    /// the origin which (a part sent to another instance, or never sent).
    async fn expire_join(self, key: JoinKey) {
        tokio::time::sleep_until(self.deadline).await;
        let Some(arrived) = self.vdags.expire_join(&key) else {
            return;
        };
        let node = &self.spec.nodes[self.node];
        let missing: Vec<&str> = node
            .previous
            .iter()
            .filter(|p| !arrived.contains(p))
            .map(|&p| self.spec.nodes[p].label.as_str())
            .collect();
        let status = Status::new(
            Code::DeadlineExceeded,
            format!(
                "the join's input from {} did not arrive before the deadline",
                missing.join(", ")
            ),
        );
        let f = failure(&node.label, status);
        self.deliver(delivery::Result::Failure(f)).await;
    }

    async fn deliver(&self, result: delivery::Result) {
        let delivery = Delivery {
            request_id: self.hop.request_id.clone(),
            result: Some(result),
        };
        // Logged there; the origin answers at the deadline regardless.
        let _ = send::deliver(
            &self.vdags,
            &self.hop.origin,
            &self.hop.origin_identity,
            delivery,
            &self.carried,
        )
        .await;
    }
}
