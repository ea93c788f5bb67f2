//! The spans of one request through this sidecar, after the OpenTelemetry
//! semantic conventions for HTTP and RPC: a server span from the request's
//! arrival to the end of its response stream, child of the caller's W3C
//! trace context, and a client span for the upstream call, whose context
//! goes upstream as the next hop's parent. A listener with no `tracing`
//! (its own or the bootstrap's) runs none of this, and the caller's
//! `traceparent` passes through untouched.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use gridmesh_telemetry::export::ExportMetrics;
use gridmesh_telemetry::{TraceSettings, Tracing, TracingError, is_grpc_server_error};
use http::StatusCode;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::transport::ConnectionContext;

/// The name of spans that are not recorded (never exported).
const UNSAMPLED_NAME: &str = "unsampled";

pub struct RequestTrace {
    tracing: Tracing,
    /// The server span's name, which the client span takes too (empty when
    /// the request is not sampled).
    name: String,
    server: Context,
    client: Option<Context>,
}

/// How a request ended, for its spans.
pub struct Outcome<'a> {
    pub status: StatusCode,
    pub grpc_status: Option<u32>,
    /// The `x-gridmesh-error` reason of a reply the sidecar made or cut.
    pub error: Option<&'a str>,
    /// The upstream call's last attempt (its number from 0, its endpoint).
    pub last_attempt: Option<(u32, SocketAddr)>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// The sidecar's tracers: the bootstrap's, and one per distinct `tracing`
/// section listeners carry (over xDS), started when a listener first needs
/// it, shared by every listener with equal settings, and ended (its
/// exporter drained) when the last of them is gone. All export from the
/// control thread's runtime and count into one metric.
pub struct Tracers {
    control: Handle,
    metrics: ExportMetrics,
    bootstrap: Option<Arc<Tracing>>,
    started: Mutex<Vec<(TraceSettings, Weak<Tracing>)>>,
}

impl Tracers {
    pub fn new(
        bootstrap: Option<&TraceSettings>,
        registry: &prometheus::Registry,
        control: Handle,
    ) -> Result<Tracers, TracingError> {
        // The sidecar's registry prefixes every name with `gridmesh_`.
        let metrics = ExportMetrics::register(registry, "")?;
        let bootstrap = match bootstrap {
            Some(settings) => Some(Arc::new(start(settings, &metrics, &control)?)),
            None => None,
        };
        Ok(Tracers {
            control,
            metrics,
            bootstrap,
            started: Mutex::new(Vec::new()),
        })
    }

    /// How a listener's requests are traced: as its own `settings` say,
    /// else as the bootstrap's do; `None`: not at all.
    pub fn for_listener(
        &self,
        settings: Option<&TraceSettings>,
    ) -> Result<Option<Arc<Tracing>>, TracingError> {
        let Some(settings) = settings else {
            return Ok(self.bootstrap.clone());
        };
        let mut started = self.started.lock();
        started.retain(|(_, tracing)| tracing.strong_count() > 0);
        if let Some(tracing) = (started.iter())
            .find(|(known, _)| known == settings)
            .and_then(|(_, tracing)| tracing.upgrade())
        {
            return Ok(Some(tracing));
        }
        let tracing = Arc::new(start(settings, &self.metrics, &self.control)?);
        started.push((settings.clone(), Arc::downgrade(&tracing)));
        Ok(Some(tracing))
    }
}

/// Starts tracing as `settings` say, the resource attributes they leave
/// out filled in from the node (see `xds::node`).
fn start(
    settings: &TraceSettings,
    metrics: &ExportMetrics,
    control: &Handle,
) -> Result<Tracing, TracingError> {
    let node = crate::xds::node::from_env(|var| std::env::var(var).ok());
    let mut settings = settings.clone();
    let metadata = |key: &str| crate::xds::node::metadata(&node, key);
    let service = Some(node.cluster.clone())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "gridmesh-proxy".into());
    for (key, value) in [
        ("service.name", Some(service)),
        ("service.instance.id", Some(node.id.clone())),
        ("k8s.pod.name", metadata("pod")),
        ("k8s.namespace.name", metadata("namespace")),
    ] {
        if let Some(value) = value {
            settings.resource.entry(key.into()).or_insert(value);
        }
    }
    Tracing::start(&settings, metrics, "gridmesh-proxy", control)
}

impl RequestTrace {
    /// The server span of a request that just arrived on `listener`.
    pub fn start(
        tracing: &Tracing,
        listener: &str,
        req: &http::Request<hyper::body::Incoming>,
        connection: &ConnectionContext,
        grpc: bool,
    ) -> RequestTrace {
        let parent = tracing.extract(req.headers());
        // Sampling is decided first (the sampler looks at no attributes):
        // an unsampled request, most of them at a low ratio, pays for no
        // name or attribute it would never export.
        let mut span = tracing
            .tracer()
            .span_builder(UNSAMPLED_NAME)
            .with_kind(SpanKind::Server)
            .start_with_context(tracing.tracer(), &parent);
        let mut name = String::new();
        if span.is_recording() {
            let path = req.uri().path();
            let rpc = grpc.then(|| crate::grpc::service_method(path)).flatten();
            name = match rpc {
                Some((service, method)) => format!("{service}/{method}"),
                None => req.method().as_str().to_string(),
            };
            span.update_name(name.clone());
            let mut attributes = vec![
                KeyValue::new("http.request.method", req.method().as_str().to_string()),
                KeyValue::new("url.path", path.to_string()),
                KeyValue::new("network.protocol.version", protocol_version(req.version())),
                KeyValue::new("client.address", connection.peer.ip().to_string()),
                KeyValue::new("gridmesh.listener", listener.to_string()),
            ];
            if let Some(authority) = req.uri().authority().map(|a| a.host()).or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            }) {
                attributes.push(KeyValue::new("server.address", authority.to_string()));
            }
            if let Some(peer) = &connection.peer_identity {
                attributes.push(KeyValue::new("gridmesh.peer.identity", peer.to_string()));
            }
            if let Some((service, method)) = rpc {
                attributes.extend([
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", service.to_string()),
                    KeyValue::new("rpc.method", method.to_string()),
                ]);
            }
            span.set_attributes(attributes);
        }
        RequestTrace {
            tracing: tracing.clone(),
            name,
            server: parent.with_span(span),
            client: None,
        }
    }

    /// Starts the client span of the upstream call and makes it the parent
    /// the request carries upstream.
    pub fn call(&mut self, headers: &mut http::HeaderMap, route: &str, cluster: &str) {
        let server = self.server.span();
        if !server.is_recording() {
            // Nothing of this trace is recorded here: the next hop only
            // needs the trace id and the sampling decision.
            self.tracing.inject(&self.server, headers);
            return;
        }
        server.set_attribute(KeyValue::new("gridmesh.route", route.to_string()));
        let span = (self.tracing.tracer())
            .span_builder(self.name.clone())
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("gridmesh.route", route.to_string()),
                KeyValue::new("gridmesh.cluster", cluster.to_string()),
            ])
            .start_with_context(self.tracing.tracer(), &self.server);
        let client = self.server.with_span(span);
        self.tracing.inject(&client, headers);
        self.client = Some(client);
    }

    /// Whether this request's spans are recorded (sampled).
    pub fn is_recording(&self) -> bool {
        self.server.span().is_recording()
    }

    /// The trace this request belongs to (whether sampled or not).
    pub fn trace_id(&self) -> Option<String> {
        let context = self.server.span().span_context().clone();
        context.is_valid().then(|| context.trace_id().to_string())
    }

    /// Ends the spans with the response the caller got (or the local reply
    /// the sidecar made, named by `error`).
    pub fn finish(self, outcome: Outcome<'_>) {
        let Outcome {
            status,
            grpc_status,
            error,
            last_attempt,
            bytes_received,
            bytes_sent,
        } = outcome;
        let now = SystemTime::now();
        let server = self.server.span();
        if server.is_recording() {
            let mut attributes = vec![KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            )];
            if let Some(code) = grpc_status {
                attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
            }
            if let Some(reason) = error {
                attributes.push(KeyValue::new("gridmesh.error", reason.to_string()));
            }
            let failed = status.is_server_error()
                || grpc_status.is_some_and(is_grpc_server_error)
                || error.is_some();
            if let Some(client) = &self.client {
                let client = client.span();
                client.set_attributes(attributes.iter().cloned());
                if let Some((attempt, endpoint)) = last_attempt {
                    client.set_attributes([
                        KeyValue::new("server.address", endpoint.ip().to_string()),
                        KeyValue::new("server.port", i64::from(endpoint.port())),
                        KeyValue::new("gridmesh.attempts", i64::from(attempt) + 1),
                    ]);
                }
                if status.as_u16() >= 400 || grpc_status.is_some_and(|c| c != 0) || error.is_some()
                {
                    client.set_status(Status::error(error.unwrap_or("").to_string()));
                }
            }
            server.set_attributes(attributes);
            server.set_attributes([
                KeyValue::new("http.request.body.size", bytes_received as i64),
                KeyValue::new("http.response.body.size", bytes_sent as i64),
            ]);
            if failed {
                server.set_status(Status::error(error.unwrap_or("").to_string()));
            }
        }
        if let Some(client) = &self.client {
            client.span().end_with_timestamp(now);
        }
        server.end_with_timestamp(now);
    }

    /// An event on the client span: attempt `attempt` is retried.
    pub fn retrying(&self, attempt: u32, reason: &str) {
        let Some(client) = &self.client else { return };
        client.span().add_event(
            "retry",
            vec![
                KeyValue::new("gridmesh.attempt", i64::from(attempt) + 1),
                KeyValue::new("gridmesh.retry.reason", reason.to_string()),
            ],
        );
    }
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_11 => "1.1",
        http::Version::HTTP_2 => "2",
        _ => "other",
    }
}
