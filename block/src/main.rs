//! `gridmesh-block`: serves a Triton-style model repository of TorchScript
//! models over KServe v2 gRPC. See the crate documentation and docs/block.md.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gridmesh_block::server::{self, Options};
use gridmesh_telemetry::settings::{
    DEFAULT_EXPORT_TIMEOUT, DEFAULT_MAX_QUEUE, DEFAULT_SAMPLING_RATIO, check_endpoint,
    check_sampling_ratio,
};
use gridmesh_telemetry::{OtlpProtocol, TraceSettings};

#[derive(Parser)]
#[command(
    version,
    about = "gridmesh's block server: TorchScript models over KServe v2 gRPC, dynamically batched"
)]
struct Cli {
    /// Triton-style model repository: <dir>/<model>/config.pbtxt and
    /// <dir>/<model>/<version>/model.pt.
    #[arg(long)]
    model_repository: PathBuf,
    /// KServe v2 gRPC and grpc.health.v1 (Triton's port).
    #[arg(long, default_value = "0.0.0.0:8001")]
    grpc_address: SocketAddr,
    /// /metrics, /v2/health/live and /v2/health/ready.
    #[arg(long, default_value = "0.0.0.0:8002")]
    http_address: SocketAddr,
    /// Queue capacity per model version when its config.pbtxt sets no
    /// dynamic_batching.default_queue_policy.max_queue_size; more waiting
    /// requests are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 1024)]
    default_max_queue_size: usize,
    /// libtorch's intra-op threads (default: libtorch's choice, one per core).
    #[arg(long)]
    torch_threads: Option<i32>,
    /// On SIGTERM, how long to wait for accepted requests before exiting.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, default_value_t = 256 << 20)]
    max_message_bytes: usize,
    /// OTLP collector that spans of sampled inference requests go to:
    /// `http://host:4317` for gRPC, `http://host:4318/v1/traces` for
    /// HTTP/protobuf. Without it nothing is traced.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_parser = endpoint)]
    otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    #[arg(long, default_value = "grpc", env = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", value_parser = protocol)]
    otlp_protocol: OtlpProtocol,
    /// Share of requests without a sampled caller that start a trace (a
    /// caller's sampling decision is always followed).
    #[arg(long, default_value_t = DEFAULT_SAMPLING_RATIO, env = "OTEL_TRACES_SAMPLER_ARG", value_parser = ratio)]
    trace_sampling_ratio: f64,
    /// The spans' `service.name`.
    #[arg(long, default_value = "gridmesh-block", env = "OTEL_SERVICE_NAME")]
    service_name: String,
    /// More resource attributes, `key=value,key=value` (OpenTelemetry's
    /// OTEL_RESOURCE_ATTRIBUTES format).
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES", value_parser = attributes)]
    resource_attributes: Option<BTreeMap<String, String>>,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, default_value = "info", env = "GRIDMESH_LOG")]
    log: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .init();
    if let Some(threads) = cli.torch_threads {
        tch::set_num_threads(threads);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gridmesh-block: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        model_repository: cli.model_repository,
        grpc_address: cli.grpc_address,
        http_address: cli.http_address,
        default_max_queue_size: cli.default_max_queue_size,
        drain_timeout: cli.drain_timeout,
        max_message_bytes: cli.max_message_bytes,
        tracing: cli.otlp_endpoint.map(|endpoint| {
            let mut resource = cli.resource_attributes.unwrap_or_default();
            resource.insert("service.name".into(), cli.service_name);
            TraceSettings {
                endpoint,
                protocol: cli.otlp_protocol,
                headers: BTreeMap::new(),
                sampling_ratio: cli.trace_sampling_ratio,
                resource,
                max_queue: DEFAULT_MAX_QUEUE,
                export_timeout: DEFAULT_EXPORT_TIMEOUT,
            }
        }),
    };
    match runtime.block_on(server::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            // 64 (EX_USAGE): the repository or an address is unusable.
            ExitCode::from(64)
        }
    }
}

fn endpoint(value: &str) -> Result<String, String> {
    check_endpoint(value).map(|()| value.to_string())
}

fn protocol(value: &str) -> Result<OtlpProtocol, String> {
    match value {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        other => Err(format!("{other:?} is not grpc or http/protobuf")),
    }
}

fn ratio(value: &str) -> Result<f64, String> {
    let ratio = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    check_sampling_ratio(ratio).map(|()| ratio)
}

fn attributes(value: &str) -> Result<BTreeMap<String, String>, String> {
    value
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), value.trim().to_string()))
            }
            _ => Err(format!("{pair:?} is not key=value")),
        })
        .collect()
}
