//! The tracer a process makes its spans with, and the W3C trace context on
//! requests.

use std::str::FromStr;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

use crate::export::{BoundedExport, ExportMetrics};
use crate::settings::{OtlpProtocol, TraceSettings};

#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("trace export metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("header {0:?} cannot be sent as gRPC metadata")]
    Header(String),
}

/// Whether a gRPC status makes a server span an error (OpenTelemetry's RPC
/// conventions: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS; a client's mistake is not the server's error).
pub fn is_grpc_server_error(code: u32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Spans of one process. Cloning is cheap; the export stops when the last
/// clone is dropped and the queue has drained.
#[derive(Clone, Debug)]
pub struct Tracing {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    _provider: SdkTracerProvider,
}

impl Tracing {
    /// Starts exporting on `runtime` (never the one serving requests: the
    /// sidecar's control thread's, or [`crate::export::export_thread`]),
    /// counting spans in `metrics` (which tracers of one process share);
    /// `scope` names the spans' instrumentation scope.
    pub fn start(
        settings: &TraceSettings,
        metrics: &ExportMetrics,
        scope: &'static str,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Tracing, TracingError> {
        let metrics = metrics.clone();
        // The gRPC exporter's channel spawns its worker where it is built.
        let _runtime = runtime.enter();
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match settings.protocol {
            OtlpProtocol::Grpc => {
                let mut metadata = MetadataMap::new();
                for (name, value) in &settings.headers {
                    let key = MetadataKey::from_str(name)
                        .map_err(|_| TracingError::Header(name.clone()))?;
                    let value = MetadataValue::from_str(value)
                        .map_err(|_| TracingError::Header(name.clone()))?;
                    metadata.insert(key, value);
                }
                builder
                    .with_tonic()
                    .with_endpoint(&settings.endpoint)
                    .with_timeout(settings.export_timeout)
                    .with_metadata(metadata)
                    .build()?
            }
            OtlpProtocol::HttpProtobuf => builder
                .with_http()
                .with_endpoint(&settings.endpoint)
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(settings.export_timeout)
                .with_headers(settings.headers.clone().into_iter().collect())
                .build()?,
        };
        let resource = Resource::builder_empty()
            .with_attributes(
                (settings.resource.iter()).map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        let processor = BoundedExport::start(
            runtime,
            exporter,
            &resource,
            settings.max_queue,
            settings.export_timeout,
            metrics,
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sampling_ratio,
            ))))
            .with_resource(resource)
            .build();
        Ok(Tracing {
            tracer: provider.tracer(scope),
            propagator: TraceContextPropagator::new(),
            _provider: provider,
        })
    }

    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// The caller's trace context (`traceparent`, `tracestate`); an empty
    /// context when it sent none or a malformed one.
    pub fn extract(&self, headers: &http::HeaderMap) -> Context {
        self.propagator.extract(&HeaderExtractor(headers))
    }

    /// Writes `cx`'s span as the parent of the next hop, replacing any
    /// `traceparent`/`tracestate` the request carried.
    pub fn inject(&self, cx: &Context, headers: &mut http::HeaderMap) {
        self.propagator
            .inject_context(cx, &mut HeaderInjector(headers));
    }
}
