//! `gridmesh-block`: serves a Triton-style model repository of TorchScript
//! models over KServe v2 gRPC. See the crate documentation and docs/block.md.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gridmesh_block::server::{self, Options};

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
