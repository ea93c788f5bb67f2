//! The block server's spans, exported over OTLP to a receiver built from
//! the official protobuf definitions: a request through two sidecar
//! processes into gridmesh-block is one trace down to the model's forward,
//! and a batch links every traced request it served.

mod support;

use std::time::Duration;

use gridmesh_proto::inference::ModelInferRequest;
use gridmesh_tests::otlp::{
    ChainSpans, INTERNAL, OtlpReceiver, ReceivedSpan, SERVER, TracedChain, find, hex,
};
use support::{BlockServer, Client, copy_models, probe_request, probe_result};

const EXPORTED_WITHIN: Duration = Duration::from_secs(15);
const INFER: &str = "inference.GRPCInferenceService/ModelInfer";

/// A block server exporting to `collector`, tracing only what its caller
/// sampled.
async fn traced_block(collector: &OtlpReceiver) -> (BlockServer, tempfile::TempDir) {
    let repo = copy_models(&["batch_probe"]);
    let endpoint = collector.endpoint();
    let args = [
        "--otlp-endpoint",
        endpoint.as_str(),
        "--trace-sampling-ratio",
        "0",
        "--service-name",
        "block",
    ];
    let server = BlockServer::start_ready_with(repo.path(), &args).await;
    (server, repo)
}

/// `request` as a sampled child of span `parent` of trace `trace`.
fn traced_request(
    request: ModelInferRequest,
    trace: &str,
    parent: &str,
) -> tonic::Request<ModelInferRequest> {
    let mut request = tonic::Request::new(request);
    let traceparent = format!("00-{trace}-{parent}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

fn named<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.span.name == name)
        .collect()
}

fn within(outer: &ReceivedSpan, inner: &ReceivedSpan) -> bool {
    outer.span.start_time_unix_nano <= inner.span.start_time_unix_nano
        && inner.span.end_time_unix_nano <= outer.span.end_time_unix_nano
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_sidecars_is_traced_down_to_the_forward() {
    let collector = OtlpReceiver::start().await;
    let (block, _repo) = traced_block(&collector).await;
    let chain = TracedChain::start(&collector, block.grpc).await;

    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller = "b7ad6b7169203331";
    let mut client = Client::connect(format!("http://{}", chain.entry()))
        .await
        .unwrap();
    let response = client
        .model_infer(traced_request(probe_request(&[1.5], 0), trace, caller))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe_result(&response), (vec![3.0], vec![1]));

    // Two sidecars (server and client spans each), and in the block the
    // request, its queue wait, its batch and the batch's forward.
    let spans = collector
        .wait_for("eight spans", EXPORTED_WITHIN, |s| s.len() >= 8)
        .await;
    assert_eq!(spans.len(), 8, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id() == trace), "{spans:#?}");
    let ChainSpans {
        client_server,
        block_server: sidecar_server,
        block_call: sidecar_call,
        ..
    } = TracedChain::spans(&spans, caller);
    let request = find(&spans, "block", SERVER);
    let [queue] = named(&spans, "block", "queue")[..] else {
        panic!("one queue span: {spans:#?}")
    };
    let [batch] = named(&spans, "block", "batch")[..] else {
        panic!("one batch span: {spans:#?}")
    };
    let [forward] = named(&spans, "block", "forward")[..] else {
        panic!("one forward span: {spans:#?}")
    };
    assert_eq!(request.parent_span_id(), sidecar_call.span_id());
    assert_eq!(queue.parent_span_id(), request.span_id());
    assert_eq!(batch.parent_span_id(), request.span_id());
    assert_eq!(forward.parent_span_id(), batch.span_id());
    for span in [queue, batch, forward] {
        assert_eq!(span.span.kind, INTERNAL, "{span:#?}");
    }

    assert_eq!(request.span.name, INFER);
    assert_eq!(request.attribute("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        request.attribute("rpc.method").as_deref(),
        Some("ModelInfer")
    );
    assert_eq!(
        request.attribute("gridmesh.model.name").as_deref(),
        Some("batch_probe")
    );
    assert_eq!(
        request.attribute("gridmesh.model.version").as_deref(),
        Some("1")
    );
    for span in [client_server, sidecar_server, request] {
        assert_eq!(
            span.int_attribute("rpc.grpc.status_code"),
            Some(0),
            "{span:#?}"
        );
    }
    assert_eq!(batch.int_attribute("gridmesh.batch.requests"), Some(1));
    assert_eq!(batch.int_attribute("gridmesh.batch.rows"), Some(1));
    assert_eq!(batch.span.links.len(), 1, "{batch:#?}");
    assert_eq!(hex(&batch.span.links[0].span_id), request.span_id());
    assert!(forward.int_attribute("gridmesh.forward.infer_us").is_some());
    assert!(
        within(request, queue) && within(request, batch) && within(batch, forward),
        "{spans:#?}"
    );
    assert!(
        queue.span.end_time_unix_nano <= batch.span.start_time_unix_nano,
        "the wait ends when the batch forms: {spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_links_every_traced_request_it_served() {
    let collector = OtlpReceiver::start().await;
    let (block, _repo) = traced_block(&collector).await;
    let client = block.client().await;

    // batch_probe waits up to 100 ms for company: four concurrent requests
    // share one forward. Three are sampled by their callers, one is not.
    let traces = [
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
        "33333333333333333333333333333333",
    ];
    let mut calls = Vec::new();
    for (index, trace) in traces.iter().enumerate() {
        let request = traced_request(probe_request(&[index as f32], 0), trace, "00000000000000aa");
        let mut client = client.clone();
        calls.push(tokio::spawn(
            async move { client.model_infer(request).await },
        ));
    }
    let mut unsampled = client.clone();
    calls.push(tokio::spawn(async move {
        unsampled.model_infer(probe_request(&[9.0], 0)).await
    }));
    for call in calls {
        let response = call.await.unwrap().unwrap().into_inner();
        assert_eq!(probe_result(&response).1, [4], "all four share one batch");
    }

    // Per traced request a server and a queue span; one batch, one forward.
    let spans = collector
        .wait_for("eight spans", EXPORTED_WITHIN, |s| s.len() >= 8)
        .await;
    let requests = named(&spans, "block", INFER);
    assert_eq!(
        requests.len(),
        3,
        "only sampled requests make spans: {spans:#?}"
    );
    assert_eq!(named(&spans, "block", "queue").len(), 3, "{spans:#?}");
    let [batch] = named(&spans, "block", "batch")[..] else {
        panic!("one batch span: {spans:#?}")
    };
    assert_eq!(named(&spans, "block", "forward").len(), 1, "{spans:#?}");
    assert_eq!(batch.int_attribute("gridmesh.batch.requests"), Some(4));
    assert_eq!(batch.int_attribute("gridmesh.batch.rows"), Some(4));
    let mut linked: Vec<(String, String)> = (batch.span.links.iter())
        .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
        .collect();
    let mut served: Vec<(String, String)> = (requests.iter())
        .map(|span| (span.trace_id(), span.span_id()))
        .collect();
    linked.sort();
    served.sort();
    assert_eq!(linked, served, "{batch:#?}");
    assert!(
        requests
            .iter()
            .any(|r| r.trace_id() == batch.trace_id() && r.span_id() == batch.parent_span_id()),
        "the batch is a child of one of its requests: {spans:#?}"
    );
}
