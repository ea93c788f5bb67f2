//! `gridmesh-proxy --config <bootstrap.yaml>`: the sidecar.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gridmesh_config as config;
use gridmesh_proxy::Proxy;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(version, about = "gridmesh sidecar proxy")]
struct Args {
    /// Bootstrap file (YAML, proto3 JSON mapping of gridmesh.v1.Bootstrap).
    #[arg(long)]
    config: PathBuf,
    /// Data-plane worker threads; default: the CPUs this process may use.
    #[arg(long, env = "GRIDMESH_WORKERS")]
    workers: Option<usize>,
    /// Log filter, e.g. `info` or `gridmesh_proxy=debug`.
    #[arg(long, env = "GRIDMESH_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    let snapshot = match config::load_file(&args.config) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(config::EXIT_INVALID_CONFIG as u8);
        }
    };
    let workers = args
        .workers
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    // One worker: a current-thread runtime skips work-stealing overhead,
    // which is what a sidecar pinned to one core wants.
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(snapshot))
}

async fn run(snapshot: config::Snapshot) -> ExitCode {
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let proxy = match Proxy::start(snapshot).await {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(admin = %proxy.admin_addr(), "gridmesh-proxy serving");
    tokio::select! {
        _ = sigterm.recv() => proxy.drain(),
        _ = sigint.recv() => proxy.drain(),
        () = proxy.draining() => {}
    }
    tracing::info!("draining");
    proxy.stopped().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
