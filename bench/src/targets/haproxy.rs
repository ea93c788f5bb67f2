//! HAProxy as a hop: one thread, HTTP mode, no logging, an HTTP/1.1
//! frontend and an h2c (`proto h2`) frontend for gRPC whose backend speaks
//! HTTP/2 to the next hop.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use super::HopPlan;

pub fn command(binary: &Path, hop: &HopPlan) -> Result<Command> {
    let config_path = hop.dir.join(format!("{}.cfg", hop.name));
    std::fs::write(&config_path, config(hop))?;
    let mut command = Command::new(binary);
    // -db: stay in the foreground, no daemon, no master process.
    command.arg("-db").arg("-f").arg(&config_path);
    Ok(command)
}

fn config(hop: &HopPlan) -> String {
    let HopPlan {
        listen, forward_to, ..
    } = hop;
    format!(
        r#"global
    nbthread 1
    # Room for 1,000 open streams; HAProxy reserves two descriptors per
    # connection and must stay under the hard open-file limit.
    maxconn 8000

defaults
    mode http
    timeout connect 1s
    # Long enough for the held-open streams of the memory measurement.
    timeout client 10m
    timeout server 10m

frontend http1
    bind {listen_http1}
    default_backend http1

frontend grpc
    bind {listen_grpc} proto h2
    default_backend grpc

backend http1
    server next {next_http1}

backend grpc
    server next {next_grpc} proto h2
"#,
        listen_http1 = listen.http1,
        listen_grpc = listen.grpc,
        next_http1 = forward_to.http1,
        next_grpc = forward_to.grpc,
    )
}
