//! Runs the sample upstream (HTTP + gRPC `Echo` on one port) until SIGTERM or
//! ctrl-c. The demo and `examples/*.yaml` expect block instances on ports
//! 18080 and 18081:
//!
//! ```text
//! sample-block --listen 127.0.0.1:18080 --name block-a
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use gridmesh_tests::upstream;
use tokio::signal::unix::{SignalKind, signal};

/// How long open requests and streams may run after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    about = "Sample block: HTTP/1.1 + h2c test endpoints and the gRPC Echo service on one port"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
    /// Instance name, sent back in `x-upstream` and `EchoReply.server`.
    #[arg(long, default_value = "block")]
    name: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut terminate = signal(SignalKind::terminate())?;
    let upstream = upstream::spawn(args.listen, &args.name).await?;
    tracing::info!(name = upstream.name(), address = %upstream.local_addr(), "sample block listening");
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    tracing::info!("stopping: draining open requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, upstream.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "requests still open after the drain timeout were cut");
    }
    Ok(())
}
