//! Where an inference request spent its time in the block, as OpenTelemetry
//! spans under the caller's W3C trace context (the sidecar's client span):
//!
//! - a server span per `ModelInfer`, after the RPC conventions;
//! - `queue`, its child: from the request's arrival in the queue to the
//!   batch that took it;
//! - `batch`, one per batch: its formation to the end of the forward, child
//!   of the oldest traced request in it and linked to every traced request
//!   it served (a batch answers many traces, a span has one parent);
//! - `forward`, the batch's child: the model's forward over the batch.
//!
//! Only sampled requests make spans (parent-based: the sidecar's decision is
//! followed); a batch of unsampled requests costs nothing here.

use std::time::{Instant, SystemTime};

use gridmesh_telemetry::{Tracing, is_grpc_server_error};
use opentelemetry::trace::{Link, Span as _, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span;

use crate::observe::Phases;

const SERVICE: &str = "inference.GRPCInferenceService";

/// The server span of one inference request; ends when dropped if the
/// request never finished (its caller went away).
pub struct RequestSpan {
    tracing: Tracing,
    cx: Context,
    finished: bool,
}

impl RequestSpan {
    /// The span of a request of `method` with `headers`; `None` when it is
    /// not sampled.
    pub fn start(tracing: &Tracing, headers: &http::HeaderMap, method: &str) -> Option<Self> {
        let parent = tracing.extract(headers);
        let span = tracing
            .tracer()
            .span_builder(format!("{SERVICE}/{method}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", SERVICE),
                KeyValue::new("rpc.method", method.to_string()),
            ])
            .start_with_context(tracing.tracer(), &parent);
        span.is_recording().then(|| RequestSpan {
            tracing: tracing.clone(),
            cx: parent.with_span(span),
            finished: false,
        })
    }

    pub fn model(&self, name: &str, version: u64) {
        self.cx.span().set_attributes([
            KeyValue::new("gridmesh.model.name", name.to_string()),
            KeyValue::new("gridmesh.model.version", version.to_string()),
        ]);
    }

    /// Starts the request's wait in the queue.
    pub fn queued(&self) -> QueueSpan {
        let span = self
            .tracing
            .tracer()
            .span_builder("queue")
            .start_with_context(self.tracing.tracer(), &self.cx);
        QueueSpan {
            tracing: self.tracing.clone(),
            request: self.cx.clone(),
            span,
        }
    }

    /// Ends the span with the request's gRPC status.
    pub fn finish(mut self, code: tonic::Code, message: &str) {
        self.finished = true;
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
        if is_grpc_server_error(code as u32) {
            span.set_status(Status::error(message.to_string()));
        }
        span.end();
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        if !self.finished {
            let span = self.cx.span();
            span.set_attribute(KeyValue::new(
                "rpc.grpc.status_code",
                tonic::Code::Cancelled as i64,
            ));
            span.end();
        }
    }
}

/// A traced request waiting in the queue.
pub struct QueueSpan {
    tracing: Tracing,
    /// The request's server span: the batch's parent or link.
    request: Context,
    span: Span,
}

/// The spans of one batch.
pub struct BatchSpan {
    tracing: Tracing,
    cx: Context,
}

impl BatchSpan {
    /// A batch of `requests` requests and `rows` rows was formed now: ends
    /// the waits of its traced requests and starts the batch's span; `None`
    /// when none of them is traced.
    pub fn formed<'a>(
        waits: impl Iterator<Item = &'a mut QueueSpan>,
        requests: usize,
        rows: usize,
    ) -> Option<BatchSpan> {
        let now = SystemTime::now();
        let mut first: Option<(Tracing, Context)> = None;
        let mut links = Vec::new();
        for wait in waits {
            wait.span.end_with_timestamp(now);
            links.push(Link::with_context(
                wait.request.span().span_context().clone(),
            ));
            first.get_or_insert_with(|| (wait.tracing.clone(), wait.request.clone()));
        }
        let (tracing, parent) = first?;
        let span = tracing
            .tracer()
            .span_builder("batch")
            .with_start_time(now)
            .with_links(links)
            .with_attributes([
                KeyValue::new("gridmesh.batch.requests", requests as i64),
                KeyValue::new("gridmesh.batch.rows", rows as i64),
            ])
            .start_with_context(tracing.tracer(), &parent);
        Some(BatchSpan {
            tracing,
            cx: parent.with_span(span),
        })
    }

    /// Records the forward that began at `started` (its phases, or why it
    /// failed) and ends the batch.
    pub fn finish(self, instance: &str, started: Instant, forward: Result<&Phases, &str>) {
        let now = SystemTime::now();
        let start = now - started.elapsed();
        let mut span = self
            .tracing
            .tracer()
            .span_builder("forward")
            .with_start_time(start)
            .with_attributes([KeyValue::new("gridmesh.instance", instance.to_string())])
            .start_with_context(self.tracing.tracer(), &self.cx);
        match forward {
            Ok(phases) => {
                let micros = |d: std::time::Duration| d.as_micros() as i64;
                span.set_attributes([
                    KeyValue::new("gridmesh.forward.input_us", micros(phases.input)),
                    KeyValue::new("gridmesh.forward.infer_us", micros(phases.infer)),
                    KeyValue::new("gridmesh.forward.output_us", micros(phases.output)),
                ]);
            }
            Err(error) => {
                span.set_status(Status::error(error.to_string()));
                self.cx.span().set_status(Status::error(error.to_string()));
            }
        }
        span.end_with_timestamp(now);
        self.cx.span().end_with_timestamp(now);
    }
}
