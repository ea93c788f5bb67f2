//! Wires the server together: the repository loads in the background while
//! the gRPC port (inference + grpc.health.v1) and the HTTP port (metrics,
//! health) already answer, so liveness is immediate and readiness follows
//! the models. SIGTERM drains: readiness drops, new requests are refused
//! with UNAVAILABLE (safe for the caller to retry elsewhere), and the process
//! exits once what was accepted has been answered.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gridmesh_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use gridmesh_telemetry::export::ExportMetrics;
use gridmesh_telemetry::{TraceSettings, Tracing};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::http;
use crate::load::Load;
use crate::observe::Metrics;
use crate::repository::Repository;
use crate::service::InferenceService;

pub struct Options {
    pub model_repository: PathBuf,
    pub grpc_address: SocketAddr,
    pub http_address: SocketAddr,
    /// Queue capacity of a model whose config sets no `max_queue_size`.
    pub default_max_queue_size: usize,
    /// Longest a drain waits for accepted requests before exiting anyway.
    pub drain_timeout: Duration,
    /// Largest gRPC message either way (image batches exceed tonic's 4 MiB).
    pub max_message_bytes: usize,
    /// Where inference requests' spans go, if anywhere.
    pub tracing: Option<TraceSettings>,
}

/// How often a drain checks whether accepted requests are all answered.
const DRAIN_POLL: Duration = Duration::from_millis(10);

pub async fn run(options: Options) -> Result<()> {
    let load = Arc::new(Load::default());
    let metrics = Arc::new(Metrics::new().context("cannot register the metrics")?);
    let tracing = match &options.tracing {
        Some(settings) => Some(start_tracing(settings, &metrics.registry)?),
        None => None,
    };
    let repository = Arc::new(Repository::scan(
        &options.model_repository,
        load.clone(),
        metrics.clone(),
        options.default_max_queue_size,
    )?);
    let grpc_listener = TcpListener::bind(options.grpc_address)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", options.grpc_address))?;
    let http_listener = TcpListener::bind(options.http_address)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", options.http_address))?;
    tracing::info!(
        grpc_addr = %grpc_listener.local_addr()?,
        http_addr = %http_listener.local_addr()?,
        "gridmesh-block listening"
    );

    let draining = Arc::new(AtomicBool::new(false));
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

    let sampled = load.clone();
    tokio::spawn(async move { sampled.sample().await });
    let ready: http::Readiness = {
        let (repository, draining) = (repository.clone(), draining.clone());
        Arc::new(move || repository.all_ready() && !draining.load(Ordering::Relaxed))
    };
    tokio::spawn(http::serve(http_listener, metrics.clone(), ready));
    {
        let (repository, health) = (repository.clone(), health.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            repository.load_all().await;
            let ready = repository.all_ready();
            tracing::info!(ready, took = ?started.elapsed(), "model repository loaded");
            if ready {
                set_health(&health, ServingStatus::Serving).await;
            }
        });
    }

    let service = InferenceService {
        repository,
        load: load.clone(),
        draining: draining.clone(),
        tracing,
    };
    let inference = GrpcInferenceServiceServer::new(service)
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
    let drain = async move {
        shutdown_signal().await;
        tracing::info!("draining: refusing new requests, answering accepted ones");
        draining.store(true, Ordering::Relaxed);
        set_health(&health, ServingStatus::NotServing).await;
        let deadline = Instant::now() + options.drain_timeout;
        while load.outstanding() > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        if load.outstanding() > 0 {
            tracing::warn!(
                outstanding = load.outstanding(),
                "drain timeout: exiting with requests unanswered"
            );
        }
    };
    // Small responses must not wait for the peer's delayed ACK (Nagle): with
    // it on, p99 latency sat at 40-50 ms whatever the load.
    let incoming = gridmesh_net::incoming(grpc_listener, "gRPC");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(inference)
        .serve_with_incoming_shutdown(incoming, drain)
        .await
        .context("the gRPC server failed")?;
    tracing::info!("drained");
    Ok(())
}

/// Exports spans from a thread of their own, so a slow collector never
/// holds up a runtime thread serving requests.
fn start_tracing(settings: &TraceSettings, registry: &prometheus::Registry) -> Result<Tracing> {
    let export = gridmesh_telemetry::export::export_thread()
        .context("cannot start the trace export thread")?;
    let metrics = ExportMetrics::register(registry, "gridmesh_block:")
        .context("cannot register the trace export metrics")?;
    Tracing::start(settings, &metrics, "gridmesh-block", &export).context("cannot start tracing")
}

/// The overall status ("") and the inference service's, which probes ask for.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status("inference.GRPCInferenceService", status)
        .await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM can be handled");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
