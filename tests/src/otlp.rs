//! An OTLP trace receiver, built from the official OpenTelemetry protobuf
//! definitions (opentelemetry-proto's messages and generated tonic server),
//! on two ports: OTLP/gRPC and OTLP/HTTP with protobuf bodies. What
//! sidecars and blocks export is kept for assertions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::process::{self, GRIDMESH_PROXY, ProxyConfig, ProxyProcess};

/// OTLP span kinds.
pub const INTERNAL: i32 = 1;
pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;

/// A received span and the `service.name` of the resource that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub span: Span,
}

impl ReceivedSpan {
    /// A string attribute's value.
    pub fn attribute(&self, key: &str) -> Option<String> {
        string_attribute(&self.span.attributes, key)
    }

    /// An integer attribute's value.
    pub fn int_attribute(&self, key: &str) -> Option<i64> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::IntValue(i) => Some(*i),
                _ => None,
            })
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
struct Collected {
    spans: Arc<watch::Sender<Vec<ReceivedSpan>>>,
    /// Only count (a benchmark's receiver would otherwise hold millions).
    count_only: bool,
    counted: Arc<AtomicU64>,
}

impl Collected {
    fn record(&self, request: ExportTraceServiceRequest) {
        if self.count_only {
            let spans = (request.resource_spans.iter())
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len() as u64)
                .sum();
            self.counted.fetch_add(spans, Ordering::Relaxed);
            return;
        }
        let mut received = Vec::new();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| string_attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                received.extend(scope.spans.into_iter().map(|span| ReceivedSpan {
                    service: service.clone(),
                    span,
                }));
            }
        }
        self.spans.send_modify(|spans| spans.extend(received));
    }

    /// OTLP/HTTP: `POST /v1/traces` with a protobuf body.
    async fn http(
        self,
        request: http::Request<hyper::body::Incoming>,
    ) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, hyper::Error> {
        use http_body_util::BodyExt;
        let reply = |status: u16, body: Vec<u8>| {
            http::Response::builder()
                .status(status)
                .header("content-type", "application/x-protobuf")
                .body(http_body_util::Full::new(body.into()))
                .expect("a valid response")
        };
        if request.method() != http::Method::POST || request.uri().path() != "/v1/traces" {
            return Ok(reply(404, Vec::new()));
        }
        let body = request.into_body().collect().await?.to_bytes();
        match ExportTraceServiceRequest::decode(body) {
            Ok(export) => {
                self.record(export);
                Ok(reply(
                    200,
                    ExportTraceServiceResponse::default().encode_to_vec(),
                ))
            }
            Err(_) => Ok(reply(400, Vec::new())),
        }
    }
}

#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.record(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A receiver on loopback ports of its own, serving until dropped.
pub struct OtlpReceiver {
    grpc: SocketAddr,
    http: SocketAddr,
    collected: Collected,
    servers: [tokio::task::JoinHandle<()>; 2],
}

impl OtlpReceiver {
    /// A receiver on loopback ports the system picks.
    pub async fn start() -> OtlpReceiver {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        OtlpReceiver::bind(any, any)
            .await
            .expect("bind loopback ports")
    }

    /// A receiver that accepts every export and keeps only the number of
    /// spans (see [`OtlpReceiver::counted`]): a collector for benchmarks.
    pub async fn counting() -> std::io::Result<OtlpReceiver> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        OtlpReceiver::serve(any, any, true).await
    }

    /// A receiver taking OTLP/gRPC on `grpc` and OTLP/HTTP on `http`.
    pub async fn bind(grpc: SocketAddr, http: SocketAddr) -> std::io::Result<OtlpReceiver> {
        OtlpReceiver::serve(grpc, http, false).await
    }

    async fn serve(
        grpc: SocketAddr,
        http: SocketAddr,
        count_only: bool,
    ) -> std::io::Result<OtlpReceiver> {
        let grpc = TcpListener::bind(grpc).await?;
        let http = TcpListener::bind(http).await?;
        let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
        let collected = Collected {
            count_only,
            ..Collected::default()
        };
        let service = TraceServiceServer::new(collected.clone());
        let grpc_server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(grpc))
                .await;
        });
        let http_server = tokio::spawn({
            let collected = collected.clone();
            async move {
                while let Ok((stream, _)) = http.accept().await {
                    let collected = collected.clone();
                    let service =
                        hyper::service::service_fn(move |request| collected.clone().http(request));
                    tokio::spawn(async move {
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                    });
                }
            }
        });
        Ok(OtlpReceiver {
            grpc: grpc_addr,
            http: http_addr,
            collected,
            servers: [grpc_server, http_server],
        })
    }

    /// The OTLP/gRPC endpoint a bootstrap's `tracing.endpoint` names.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The OTLP/HTTP endpoint (`protocol: HTTP_PROTOBUF`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.http)
    }

    /// Spans received so far by a [`OtlpReceiver::counting`] receiver.
    pub fn counted(&self) -> u64 {
        self.collected.counted.load(Ordering::Relaxed)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collected.spans.borrow().clone()
    }

    /// Waits until `done` holds for the spans received (panics after `limit`).
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let mut changes = self.collected.spans.subscribe();
        let waited = tokio::time::timeout(limit, async {
            loop {
                {
                    let spans = changes.borrow_and_update();
                    if done(&spans) {
                        return spans.clone();
                    }
                }
                if changes.changed().await.is_err() {
                    return Vec::new();
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| panic!("not within {limit:?}: {what}; got {:#?}", self.spans()))
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// Traced sidecars

/// Bound on a sidecar process starting.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A sidecar named `name` with one listener `listener` forwarding to
/// `upstream`, tracing as `tracing` says.
pub async fn sidecar(
    name: &str,
    listener: &str,
    upstream: SocketAddr,
    tracing: &str,
) -> ProxyProcess {
    sidecar_with(name, listener, upstream, tracing, "").await
}

/// [`sidecar`] with `action` added to the route's action.
pub async fn sidecar_with(
    name: &str,
    listener: &str,
    upstream: SocketAddr,
    tracing: &str,
    action: &str,
) -> ProxyProcess {
    let yaml = format!(
        r#"admin: {{ address: "127.0.0.1:0" }}
tracing: {tracing}
listeners: [{{ name: {listener}, address: "127.0.0.1:0", routeTable: rt }}]
routeTables:
  - name: rt
    virtualHosts: [{{ name: all, domains: ["*"], routes: [{{ name: all, route: {{ cluster: next{action} }} }}] }}]
clusters: [{{ name: next }}]
endpoints: [{{ cluster: next, endpoints: [{{ address: "{upstream}" }}] }}]
"#
    );
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    ProxyProcess::start(&binary, name, ProxyConfig::Yaml(yaml), START_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// [`sidecar`] tracing every request to `collector` as service `name`.
pub async fn traced_sidecar(
    collector: &OtlpReceiver,
    name: &str,
    listener: &str,
    upstream: SocketAddr,
) -> ProxyProcess {
    let tracing = format!(
        r#"{{ endpoint: "{}", samplingRatio: 1, resourceAttributes: {{ service.name: {name} }} }}"#,
        collector.endpoint()
    );
    sidecar(name, listener, upstream, &tracing).await
}

/// The first span of `service` of `kind`.
pub fn find<'a>(spans: &'a [ReceivedSpan], service: &str, kind: i32) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.service == service && s.span.kind == kind)
        .unwrap_or_else(|| panic!("no {service} span of kind {kind} in {spans:#?}"))
}

/// Two traced sidecars in a row, as between two blocks: `client-sidecar`
/// (listener `out`) forwards to `block-sidecar` (listener `in`), which
/// forwards to the upstream.
pub struct TracedChain {
    pub client: ProxyProcess,
    pub block: ProxyProcess,
}

/// The spans of one request through a [`TracedChain`].
pub struct ChainSpans<'a> {
    pub client_server: &'a ReceivedSpan,
    pub client_call: &'a ReceivedSpan,
    pub block_server: &'a ReceivedSpan,
    pub block_call: &'a ReceivedSpan,
}

impl TracedChain {
    pub async fn start(collector: &OtlpReceiver, upstream: SocketAddr) -> TracedChain {
        let block = traced_sidecar(collector, "block-sidecar", "in", upstream).await;
        let next = block.listener_address("in").unwrap();
        let client = traced_sidecar(collector, "client-sidecar", "out", next).await;
        TracedChain { client, block }
    }

    /// Where the client application sends its requests.
    pub fn entry(&self) -> SocketAddr {
        self.client.listener_address("out").unwrap()
    }

    /// The sidecars' spans in `spans`, checked to link up: the client
    /// sidecar's server span under `parent` (the caller's span id), each
    /// client span under its server span, the block sidecar's server span
    /// under the client sidecar's client span.
    pub fn spans<'a>(spans: &'a [ReceivedSpan], parent: &str) -> ChainSpans<'a> {
        let chain = ChainSpans {
            client_server: find(spans, "client-sidecar", SERVER),
            client_call: find(spans, "client-sidecar", CLIENT),
            block_server: find(spans, "block-sidecar", SERVER),
            block_call: find(spans, "block-sidecar", CLIENT),
        };
        assert_eq!(chain.client_server.parent_span_id(), parent, "{spans:#?}");
        let links = [
            (chain.client_call, chain.client_server),
            (chain.block_server, chain.client_call),
            (chain.block_call, chain.block_server),
        ];
        for (child, parent) in links {
            assert_eq!(child.parent_span_id(), parent.span_id(), "{spans:#?}");
        }
        chain
    }
}
