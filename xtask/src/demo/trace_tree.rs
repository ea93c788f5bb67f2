//! The demo's tracing: an OTLP receiver every sidecar and the model server
//! export to, one KServe v2 call sent with a sampled W3C `traceparent` (as
//! an instrumented application would), and that call's trace printed as a
//! tree: which process, which span, when it started after the trace did,
//! and how long it took.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use gridmesh_tests::otlp::{OtlpReceiver, ReceivedSpan};

/// Where the demo's receiver listens (OTLP's usual ports, shifted by
/// 10000 so that a collector already running on the machine is left alone).
pub const OTLP_GRPC: &str = "127.0.0.1:14317";
pub const OTLP_HTTP: &str = "127.0.0.1:14318";
/// Spans of the traced call: a server and a client span in each of the two
/// sidecars, and in the model server the request, its queue wait, its
/// batch and the batch's forward.
const SPANS_PER_CALL: usize = 8;
const EXPORTED_WITHIN: Duration = Duration::from_secs(15);

pub async fn start_receiver() -> Result<OtlpReceiver> {
    let grpc: SocketAddr = OTLP_GRPC.parse().expect("ip:port");
    let http: SocketAddr = OTLP_HTTP.parse().expect("ip:port");
    OtlpReceiver::bind(grpc, http)
        .await
        .with_context(|| format!("cannot start the OTLP receiver on {OTLP_GRPC} and {OTLP_HTTP}"))
}

/// A fresh sampled `traceparent` and its trace id.
pub fn new_traceparent() -> (String, String) {
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let parent = format!("{:016x}", rand::random::<u64>() | 1);
    (format!("00-{trace_id}-{parent}-01"), trace_id)
}

/// The spans of `trace_id` once all of them have arrived.
pub async fn collect(receiver: &OtlpReceiver, trace_id: &str) -> Vec<ReceivedSpan> {
    let of_trace = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        (spans.iter())
            .filter(|s| s.trace_id() == trace_id)
            .cloned()
            .collect()
    };
    let all = receiver
        .wait_for("the traced call's spans", EXPORTED_WITHIN, |spans| {
            of_trace(spans).len() >= SPANS_PER_CALL
        })
        .await;
    of_trace(&all)
}

/// The spans as an indented tree, children in start order; spans whose
/// parent is not among them (the caller's) are roots. Each line ends with
/// the span's start after the trace's first, and its duration.
pub fn render(spans: &[ReceivedSpan]) -> Vec<String> {
    let start = spans
        .iter()
        .map(|s| s.span.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let ids: Vec<String> = spans.iter().map(ReceivedSpan::span_id).collect();
    let mut roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent_span_id()))
        .collect();
    roots.sort_by_key(|s| s.span.start_time_unix_nano);
    let mut rows = Vec::new();
    for root in roots {
        render_span(root, spans, start, "", "", &mut rows);
    }
    let width = (rows.iter())
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0);
    rows.into_iter()
        .map(|(label, timing)| {
            let pad = width - label.chars().count();
            format!("{label}{:pad$}  {timing}", "")
        })
        .collect()
}

fn render_span(
    span: &ReceivedSpan,
    spans: &[ReceivedSpan],
    start: u64,
    lead: &str,
    branch: &str,
    rows: &mut Vec<(String, String)>,
) {
    let millis = |nanos: u64| nanos as f64 / 1e6;
    let at = millis(span.span.start_time_unix_nano.saturating_sub(start));
    let took =
        millis((span.span.end_time_unix_nano).saturating_sub(span.span.start_time_unix_nano));
    let label = format!("{lead}{branch}{} {}", span.service, describe(span));
    rows.push((label, format!("+{at:>7.3} ms {took:>8.3} ms")));
    let mut children: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.parent_span_id() == span.span_id())
        .collect();
    children.sort_by_key(|s| s.span.start_time_unix_nano);
    let lead = format!(
        "{lead}{}",
        match branch {
            "" => "",
            "└─ " => "   ",
            _ => "│  ",
        }
    );
    let last = children.len().saturating_sub(1);
    for (index, child) in children.into_iter().enumerate() {
        let branch = if index == last { "└─ " } else { "├─ " };
        render_span(child, spans, start, &lead, branch, rows);
    }
}

/// A span's name (a gRPC method without its service) and kind, and what
/// says most about it.
fn describe(span: &ReceivedSpan) -> String {
    let kind = match span.span.kind {
        2 => "server",
        3 => "client",
        _ => "",
    };
    let name = span.span.name.rsplit('/').next().unwrap_or_default();
    let detail = match name {
        "batch" => span
            .int_attribute("gridmesh.batch.requests")
            .map(|n| format!("of {n} request{}", if n == 1 { "" } else { "s" })),
        _ => span
            .attribute("server.address")
            .filter(|_| kind == "client")
            .map(|host| match span.int_attribute("server.port") {
                Some(port) => format!("-> {host}:{port}"),
                None => format!("-> {host}"),
            }),
    };
    [name, kind, detail.as_deref().unwrap_or("")]
        .iter()
        .filter(|part| !part.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn span(service: &str, name: &str, id: u8, parent: u8, start: u64, end: u64) -> ReceivedSpan {
        ReceivedSpan {
            service: service.into(),
            span: Span {
                name: name.into(),
                span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
                parent_span_id: if parent == 0 {
                    Vec::new()
                } else {
                    vec![0, 0, 0, 0, 0, 0, 0, parent]
                },
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                ..Default::default()
            },
        }
    }

    #[test]
    fn spans_nest_under_their_parents_in_start_order() {
        let spans = [
            span("block", "forward", 4, 3, 3_000_000, 4_000_000),
            span(
                "sidecar",
                "inference.GRPCInferenceService/ModelInfer",
                1,
                0,
                0,
                5_000_000,
            ),
            span("block", "batch", 3, 2, 2_500_000, 4_000_000),
            span("block", "queue", 5, 2, 1_000_000, 2_500_000),
            span("block", "ModelInfer", 2, 1, 500_000, 4_500_000),
        ];
        let lines = render(&spans);
        let names: Vec<&str> = lines
            .iter()
            .map(|line| line.split(" +").next().unwrap().trim_end())
            .collect();
        assert_eq!(
            names,
            [
                "sidecar ModelInfer",
                "└─ block ModelInfer",
                "   ├─ block queue",
                "   └─ block batch",
                "      └─ block forward",
            ]
        );
        assert!(lines[3].ends_with("+  2.500 ms    1.500 ms"), "{lines:#?}");
        // The timings line up.
        let column = |line: &String| line.chars().position(|c| c == '+');
        assert!(
            lines.iter().all(|l| column(l) == column(&lines[0])),
            "{lines:#?}"
        );
    }
}
