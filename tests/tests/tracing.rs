//! OpenTelemetry tracing through real sidecar processes, exported over
//! OTLP/gRPC to a receiver built from the official protobuf definitions:
//! one trace across two sidecars with the right parent links, the context
//! the block receives, malformed trace headers, and a collector that is
//! down or never answers.

use std::net::SocketAddr;
use std::time::Duration;

use gridmesh_proto::testing::StreamRequest;
use gridmesh_tests::harness::{self, recording_upstream};
use gridmesh_tests::otlp::{
    CLIENT, ChainSpans, OtlpReceiver, ReceivedSpan, SERVER, TracedChain, find, sidecar,
    sidecar_with, traced_sidecar,
};
use gridmesh_tests::ports::RefusingPort;
use gridmesh_tests::process::{ManagedProcess, ProxyProcess, venv_bin, workspace_root};
use gridmesh_tests::prometheus;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

const EXPORTED_WITHIN: Duration = Duration::from_secs(15);

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

async fn get(addr: SocketAddr, path: &str, traceparent: Option<&str>) -> u16 {
    let mut req = harness::get("block", path);
    if let Some(value) = traceparent {
        req.headers_mut()
            .insert("traceparent", value.parse().unwrap());
    }
    let mut conn = harness::http1_client().connect(addr).await;
    conn.send(req).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_sidecars_is_one_trace_with_parent_links() {
    let collector = OtlpReceiver::start().await;
    let block = recording_upstream().await;
    let chain = TracedChain::start(&collector, block.local_addr()).await;

    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    assert_eq!(
        get(chain.entry(), "/v2/models/m/infer", Some(&caller)).await,
        200
    );
    let spans = collector
        .wait_for("four spans", EXPORTED_WITHIN, |s| s.len() >= 4)
        .await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id() == TRACE_ID), "{spans:#?}");

    let ChainSpans {
        client_server,
        client_call,
        block_server,
        block_call,
    } = TracedChain::spans(&spans, CALLER_SPAN);
    // The block is handed the block sidecar's client span as its parent.
    let seen = block.last();
    assert_eq!(
        seen.headers.get("traceparent").unwrap(),
        &format!("00-{TRACE_ID}-{}-01", block_call.span_id())
    );

    for span in [client_server, block_server] {
        assert_eq!(span.span.name, "GET");
        assert_eq!(
            span.attribute("http.request.method").as_deref(),
            Some("GET")
        );
        assert_eq!(
            span.attribute("url.path").as_deref(),
            Some("/v2/models/m/infer")
        );
        assert_eq!(span.int_attribute("http.response.status_code"), Some(200));
        assert_eq!(span.attribute("gridmesh.route").as_deref(), Some("all"));
    }
    assert_eq!(
        client_server.attribute("gridmesh.listener").as_deref(),
        Some("out")
    );
    assert_eq!(
        client_call.attribute("gridmesh.cluster").as_deref(),
        Some("next")
    );
    // The server span covers the client span.
    let within = |outer: &ReceivedSpan, inner: &ReceivedSpan| {
        outer.span.start_time_unix_nano <= inner.span.start_time_unix_nano
            && inner.span.end_time_unix_nano <= outer.span.end_time_unix_nano
    };
    assert!(within(client_server, client_call), "{spans:#?}");
    assert!(within(block_server, block_call), "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http_with_protobuf_bodies_too() {
    let collector = OtlpReceiver::start().await;
    let block = recording_upstream().await;
    let proxy = sidecar(
        "http-exporter",
        "in",
        block.local_addr(),
        &format!(
            r#"{{ endpoint: "{}", protocol: HTTP_PROTOBUF, samplingRatio: 1, resourceAttributes: {{ service.name: http-exporter }} }}"#,
            collector.http_endpoint()
        ),
    )
    .await;
    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let addr = proxy.listener_address("in").unwrap();
    assert_eq!(get(addr, "/over-http", Some(&caller)).await, 200);
    let spans = collector
        .wait_for("two spans over OTLP/HTTP", EXPORTED_WITHIN, |s| {
            s.len() >= 2
        })
        .await;
    let server = find(&spans, "http-exporter", SERVER);
    assert_eq!(server.trace_id(), TRACE_ID);
    assert_eq!(server.parent_span_id(), CALLER_SPAN);
    assert_eq!(server.attribute("url.path").as_deref(), Some("/over-http"));
    // Counted once the collector's answer is in, after it kept the spans.
    until_metric(&proxy, "exported", 2.0).await;
    assert_eq!(spans_metric(&proxy, "failed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_events_of_the_client_span_which_names_the_endpoint() {
    let collector = OtlpReceiver::start().await;
    let upstream = harness::upstream("block").await;
    let tracing = format!(
        r#"{{ endpoint: "{}", samplingRatio: 1, resourceAttributes: {{ service.name: retrying }} }}"#,
        collector.endpoint()
    );
    let retry = ", retryPolicy: { maxRetries: 2, retryOn: [UNAVAILABLE_503], backoff: 0.001s }";
    let proxy = sidecar_with("retrying", "in", upstream.local_addr(), &tracing, retry).await;
    let addr = proxy.listener_address("in").unwrap();
    assert_eq!(get(addr, "/status/503", None).await, 503);
    let spans = collector
        .wait_for("both spans", EXPORTED_WITHIN, |s| s.len() >= 2)
        .await;
    let call = find(&spans, "retrying", CLIENT);
    let retries: Vec<_> = call
        .span
        .events
        .iter()
        .filter(|e| e.name == "retry")
        .collect();
    assert_eq!(retries.len(), 2, "{call:#?}");
    for (i, event) in retries.iter().enumerate() {
        let value = |key: &str| {
            event
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone()?.value)
        };
        let reason = value("gridmesh.retry.reason");
        assert!(
            matches!(&reason, Some(Value::StringValue(r)) if r == "HTTP 503"),
            "{reason:?}"
        );
        let attempt = value("gridmesh.attempt");
        assert!(
            matches!(attempt, Some(Value::IntValue(a)) if a == i as i64 + 1),
            "{attempt:?}"
        );
    }
    assert_eq!(call.int_attribute("gridmesh.attempts"), Some(3));
    let endpoint = upstream.local_addr();
    assert_eq!(
        call.attribute("server.address"),
        Some(endpoint.ip().to_string())
    );
    assert_eq!(
        call.int_attribute("server.port"),
        Some(i64::from(endpoint.port()))
    );
    // 503 is an error on both sides (OTLP status code 2: error).
    for span in [call, find(&spans, "retrying", SERVER)] {
        assert_eq!(
            span.span.status.as_ref().map(|s| s.code),
            Some(2),
            "{span:#?}"
        );
        assert_eq!(span.int_attribute("http.response.status_code"), Some(503));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_trace_context_starts_a_fresh_trace_and_never_fails_the_request() {
    let collector = OtlpReceiver::start().await;
    let block = recording_upstream().await;
    let proxy = traced_sidecar(&collector, "sidecar", "in", block.local_addr()).await;
    let addr = proxy.listener_address("in").unwrap();
    let malformed = [
        format!("00-{TRACE_ID}-{CALLER_SPAN}"),
        format!("ff-{TRACE_ID}-{CALLER_SPAN}-01"),
        format!("00-{}-{CALLER_SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE_ID}-{}-01", "0".repeat(16)),
        format!("00-{}-{CALLER_SPAN}-01", "z".repeat(32)),
        format!("00-{TRACE_ID}x-{CALLER_SPAN}-01"),
    ];
    for (i, value) in malformed.iter().enumerate() {
        assert_eq!(
            get(addr, &format!("/bad/{i}"), Some(value)).await,
            200,
            "{value}"
        );
        // What went upstream is a valid context of a new trace.
        let sent = block.last().headers.get("traceparent").cloned().unwrap();
        let sent = sent.to_str().unwrap();
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts.len(), 4, "{sent}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len()),
            ("00", 32, 16),
            "{sent}"
        );
        assert_ne!(parts[1], TRACE_ID, "{value} was not taken as a parent");
        assert_ne!(parts[1], "0".repeat(32));
    }
    let spans = collector
        .wait_for("a server span per request", EXPORTED_WITHIN, |s| {
            s.iter().filter(|s| s.span.kind == SERVER).count() >= malformed.len()
        })
        .await;
    for span in spans.iter().filter(|s| s.span.kind == SERVER) {
        assert!(
            span.span.parent_span_id.is_empty(),
            "a root span: {span:#?}"
        );
        assert_ne!(span.trace_id(), TRACE_ID);
    }
}

async fn spans_metric(proxy: &ProxyProcess, result: &str) -> f64 {
    let text = proxy.admin_get("/metrics").await.unwrap().body;
    prometheus::value(&text, "gridmesh_trace_spans_total", &[("result", result)])
        .unwrap_or_else(|| panic!("no gridmesh_trace_spans_total{{result={result}}}: {text}"))
}

async fn until_metric(proxy: &ProxyProcess, result: &str, at_least: f64) {
    let waited = harness::within_for(EXPORTED_WITHIN, result, async {
        while spans_metric(proxy, result).await < at_least {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    waited.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_or_silent_costs_spans_not_requests() {
    let block = recording_upstream().await;
    // Down: every connect is refused; the exports fail and are counted.
    let down = RefusingPort::new();
    let proxy = sidecar(
        "down",
        "in",
        block.local_addr(),
        &format!(
            r#"{{ endpoint: "http://{}", samplingRatio: 1, exportTimeout: 2s }}"#,
            down.addr()
        ),
    )
    .await;
    let addr = proxy.listener_address("in").unwrap();
    for i in 0..20 {
        assert_eq!(get(addr, &format!("/down/{i}"), None).await, 200);
    }
    until_metric(&proxy, "failed", 1.0).await;
    assert_eq!(spans_metric(&proxy, "exported").await, 0.0);

    // Silent: it accepts connections and never answers, so an export hangs
    // until its timeout; meanwhile the queue (4 spans) fills and the rest
    // are dropped, while every request is answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = sidecar(
        "silent",
        "in",
        block.local_addr(),
        &format!(
            r#"{{ endpoint: "http://{}", samplingRatio: 1, maxQueueSize: 4, exportTimeout: 60s }}"#,
            silent.local_addr().unwrap()
        ),
    )
    .await;
    let addr = proxy.listener_address("in").unwrap();
    // Requests go on until spans are dropped (the first batch waits up to a
    // second to fill, then its export hangs); every one is answered.
    let sending = harness::within_for(EXPORTED_WITHIN, "spans dropped", async {
        let mut sent = 0;
        while spans_metric(&proxy, "dropped").await < 1.0 {
            assert_eq!(get(addr, &format!("/silent/{sent}"), None).await, 200);
            sent += 1;
        }
        sent
    });
    assert!(sending.await > 0);
    assert_eq!(spans_metric(&proxy, "exported").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_through_two_sidecars_is_one_trace_spanning_the_whole_stream() {
    let collector = OtlpReceiver::start().await;
    let echo = harness::upstream("echo").await;
    let chain = TracedChain::start(&collector, echo.local_addr()).await;
    let mut client = harness::grpc_echo_client(chain.entry(), "echo").await;
    let mut request = tonic::Request::new(StreamRequest {
        count: 5,
        payload_size: 8,
        interval_ms: 40,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    let mut stream = client.server_stream(request).await.unwrap().into_inner();
    let mut messages = 0;
    while stream.message().await.unwrap().is_some() {
        messages += 1;
    }
    assert_eq!(messages, 5);

    let spans = collector
        .wait_for("four spans", EXPORTED_WITHIN, |s| s.len() >= 4)
        .await;
    assert!(spans.iter().all(|s| s.trace_id() == TRACE_ID), "{spans:#?}");
    let ChainSpans {
        client_server,
        block_server,
        ..
    } = TracedChain::spans(&spans, CALLER_SPAN);
    for span in [client_server, block_server] {
        assert_eq!(span.span.name, "gridmesh.testing.v1.Echo/ServerStream");
        assert_eq!(span.int_attribute("rpc.grpc.status_code"), Some(0));
        // Four 40 ms gaps between the messages: the spans end with the
        // stream's trailers, not with its headers.
        let took = span.span.end_time_unix_nano - span.span.start_time_unix_nano;
        assert!(took >= 150_000_000, "{took} ns: {span:#?}");
        assert!(span.int_attribute("http.response.body.size").unwrap() > 5 * 8);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_tracestate_never_fails_the_request() {
    let collector = OtlpReceiver::start().await;
    let block = recording_upstream().await;
    let proxy = traced_sidecar(&collector, "sidecar", "in", block.local_addr()).await;
    let addr = proxy.listener_address("in").unwrap();
    // W3C allows 32 list members and 512 characters; this is 100 and ~2 KB,
    // and one member is malformed.
    let members: Vec<String> = (0..100)
        .map(|i| format!("vendor{i}=value{i:010}"))
        .collect();
    let tracestate = format!("{},BAD KEY=x", members.join(","));
    let mut req = harness::get("block", "/big-tracestate");
    req.headers_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    req.headers_mut()
        .insert("tracestate", tracestate.parse().unwrap());
    let mut conn = harness::http1_client().connect(addr).await;
    let status = conn.send(req).await.unwrap().status();
    assert_eq!(status, 200);
    // The trace goes on from the caller's traceparent; what goes upstream
    // as tracestate is never more than the caller sent.
    let seen = block.last();
    let sent = seen.headers.get("traceparent").unwrap().to_str().unwrap();
    assert!(sent.starts_with(&format!("00-{TRACE_ID}-")), "{sent}");
    let forwarded = seen.headers.get("tracestate").map_or(0, |v| v.len());
    assert!(forwarded <= tracestate.len(), "{forwarded}");
    let spans = collector
        .wait_for("the server span", EXPORTED_WITHIN, |s| {
            s.iter().any(|s| s.span.kind == SERVER)
        })
        .await;
    let server = find(&spans, "sidecar", SERVER);
    assert_eq!(server.parent_span_id(), CALLER_SPAN);
}

/// An instrumented Python app (OpenTelemetry's SDK and grpcio
/// instrumentation), running `args`.
fn python_app(name: &str, args: &[&str]) -> ManagedProcess {
    let script = workspace_root().join("tests/python/otel_grpc_app.py");
    let mut all = vec![script.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    ManagedProcess::spawn(name, &venv_bin("python"), &all).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrumented_python_apps_and_the_sidecars_between_them_form_one_trace() {
    let collector = OtlpReceiver::start().await;
    let endpoint = collector.endpoint();
    let mut server = python_app("python-server", &["server", &endpoint]);
    let line = server
        .wait_for_line("listening on ", Duration::from_secs(30))
        .await
        .unwrap();
    let server_addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    let chain = TracedChain::start(&collector, server_addr).await;

    let target = chain.entry().to_string();
    let mut client = python_app("python-client", &["client", &endpoint, &target]);
    let status = client.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.as_ref().is_ok_and(|s| s.success()) && client.output().contains("call ok"),
        "{status:?}\n{}",
        client.output()
    );

    // The apps' spans at both ends, two per sidecar between them.
    let spans = collector
        .wait_for("six spans", EXPORTED_WITHIN, |s| s.len() >= 6)
        .await;
    let app_call = find(&spans, "python-client", CLIENT);
    let app_server = find(&spans, "python-server", SERVER);
    assert!(
        spans.iter().all(|s| s.trace_id() == app_call.trace_id()),
        "{spans:#?}"
    );
    let ChainSpans {
        client_server,
        block_call,
        ..
    } = TracedChain::spans(&spans, &app_call.span_id());
    assert_eq!(app_server.parent_span_id(), block_call.span_id());
    assert_eq!(
        client_server.attribute("rpc.method").as_deref(),
        Some("Unary")
    );
}
