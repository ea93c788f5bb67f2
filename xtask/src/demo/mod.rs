//! `cargo xtask demo`: a local mesh on loopback, made of the release binaries
//! and the bootstrap files in `examples/`:
//!
//! ```text
//! demo clients --> client sidecar 127.0.0.1:15001 (outbound; balances over both)
//!                    |--> block-a sidecar 127.0.0.1:15006 --> sample block "block-a" 127.0.0.1:18080
//!                    '--> block-b sidecar 127.0.0.1:15106 --> sample block "block-b" 127.0.0.1:18081
//! ```
//!
//! It sends HTTP/1.1, h2c, gRPC unary and gRPC server-streaming requests
//! through the client sidecar, prints what happened, stops every process with
//! SIGTERM, and succeeds only if every request did and every process stopped
//! cleanly. Whatever it started is killed if it fails or is interrupted midway.

mod summary;
mod traffic;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gridmesh_proto::config::Bootstrap;
use gridmesh_proto::config::listener::Direction;
use gridmesh_tests::process::{
    self, CargoOutput, GRIDMESH_PROXY, ManagedProcess, Profile, ProxyConfig, ProxyProcess,
    SAMPLE_BLOCK,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::workspace_root;
use traffic::{Protocol, Tally};

const REQUESTS_PER_PROTOCOL: usize = 300;
/// Requests in flight at once for each protocol.
const CONCURRENCY: usize = 8;
/// How long a process may take to start serving; generous for a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM: the examples' drain
/// timeout (5s) plus a margin.
const STOP_GRACE: Duration = Duration::from_secs(15);

struct SampleBlock {
    name: &'static str,
    address: &'static str,
}

/// The block instances the examples' block sidecars forward to.
const SAMPLE_BLOCKS: [SampleBlock; 2] = [
    SampleBlock {
        name: "block-a",
        address: "127.0.0.1:18080",
    },
    SampleBlock {
        name: "block-b",
        address: "127.0.0.1:18081",
    },
];

struct Sidecar {
    name: &'static str,
    /// Bootstrap file, relative to the workspace root.
    config: &'static str,
}

/// Started in this order: the client sidecar last, once its endpoints serve.
const SIDECARS: [Sidecar; 3] = [
    Sidecar {
        name: "block-a-sidecar",
        config: "examples/block-a-sidecar.yaml",
    },
    Sidecar {
        name: "block-b-sidecar",
        config: "examples/block-b-sidecar.yaml",
    },
    CLIENT_SIDECAR,
];

/// The sidecar the traffic enters through.
const CLIENT_SIDECAR: Sidecar = Sidecar {
    name: "client-sidecar",
    config: "examples/client-sidecar.yaml",
};

pub fn run() -> Result<()> {
    let bootstraps = SIDECARS
        .iter()
        .map(|sidecar| {
            let path = workspace_root().join(sidecar.config);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            process::parse_bootstrap(&text).with_context(|| format!("in {}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    check_ports_free(&bootstraps)?;

    println!("==> building the release binaries (the first build takes a few minutes)");
    let binaries = process::build_all(Profile::Release, CargoOutput::Progress)?;
    let proxy_binary = &binaries[&GRIDMESH_PROXY];
    let sample_block_binary = &binaries[&SAMPLE_BLOCK];

    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        tokio::select! {
            outcome = run_mesh(proxy_binary, sample_block_binary) => outcome,
            signal = interrupted() => {
                signal?;
                bail!("interrupted; every process the demo started was killed")
            }
        }
    })
}

/// Every address the demo binds, checked up front so that a busy port gets a
/// clear message instead of a sidecar failing to start.
fn check_ports_free(bootstraps: &[Bootstrap]) -> Result<()> {
    let mut wanted = Vec::new();
    for block in &SAMPLE_BLOCKS {
        wanted.push((block.name.to_string(), block.address.to_string()));
    }
    for (sidecar, bootstrap) in SIDECARS.iter().zip(bootstraps) {
        let admin = process::admin_address(bootstrap)?;
        wanted.push((format!("{} admin", sidecar.name), admin.to_string()));
        for listener in &bootstrap.listeners {
            let who = format!("{} listener {}", sidecar.name, listener.name);
            wanted.push((who, listener.address.clone()));
        }
    }
    let mut busy = Vec::new();
    for (who, address) in wanted {
        if let Err(error) = std::net::TcpListener::bind(&address) {
            busy.push(format!("{address} ({who}): {error}"));
        }
    }
    if !busy.is_empty() {
        bail!(
            "the demo needs these ports, which cannot be bound:\n  {}\n\
             Stop whatever listens there (`ss -ltnp` names it; often an earlier demo) and retry.",
            busy.join("\n  ")
        );
    }
    Ok(())
}

async fn interrupted() -> Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        signal = tokio::signal::ctrl_c() => signal?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// The processes of the mesh. Dropping it kills any that still run.
#[derive(Default)]
struct Mesh {
    blocks: Vec<ManagedProcess>,
    sidecars: Vec<ProxyProcess>,
}

impl Mesh {
    /// Stops the sidecars from the client inward, then the blocks, so that no
    /// process loses its upstream while it still has traffic.
    async fn stop(mut self) -> Vec<(String, Result<ExitStatus>)> {
        let mut stopped = Vec::new();
        while let Some(mut sidecar) = self.sidecars.pop() {
            let name = sidecar.name().to_string();
            stopped.push((name, sidecar.terminate(STOP_GRACE).await));
        }
        while let Some(mut block) = self.blocks.pop() {
            let name = block.name().to_string();
            stopped.push((name, block.terminate(STOP_GRACE).await));
        }
        stopped
    }
}

async fn run_mesh(proxy_binary: &Path, sample_block_binary: &Path) -> Result<()> {
    let mut mesh = Mesh::default();
    for block in &SAMPLE_BLOCKS {
        println!(
            "==> starting sample block {} on {}",
            block.name, block.address
        );
        let args = ["--listen", block.address, "--name", block.name];
        let mut process = ManagedProcess::spawn(block.name, sample_block_binary, args)?;
        let address = block
            .address
            .parse()
            .expect("sample block addresses are ip:port");
        process.wait_listening(address, START_TIMEOUT).await?;
        mesh.blocks.push(process);
    }
    for sidecar in &SIDECARS {
        println!("==> starting {} with {}", sidecar.name, sidecar.config);
        let config = ProxyConfig::File(workspace_root().join(sidecar.config));
        let proxy = ProxyProcess::start(proxy_binary, sidecar.name, config, START_TIMEOUT).await?;
        mesh.sidecars.push(proxy);
    }
    let client_sidecar = mesh
        .sidecars
        .last()
        .expect("the client sidecar starts last");
    let outbound = outbound_address(&client_sidecar.bootstrap()?)?;

    let tallies = match send_traffic(outbound).await {
        Ok(tallies) => tallies,
        Err(error) => {
            summary::print_recent_output(&mesh.sidecars);
            return Err(error);
        }
    };
    let admin_views = summary::AdminViews::fetch(&mesh.sidecars).await;
    let failed_requests: u64 = tallies.iter().map(|(_, tally)| tally.failed()).sum();
    if failed_requests > 0 {
        summary::print_recent_output(&mesh.sidecars);
    }

    println!("==> stopping the mesh (SIGTERM)");
    let stopped = mesh.stop().await;
    let all_stopped_cleanly = stopped
        .iter()
        .all(|(_, result)| result.as_ref().is_ok_and(ExitStatus::success));

    summary::print(&summary::Report {
        outbound,
        requests_per_protocol: REQUESTS_PER_PROTOCOL,
        concurrency: CONCURRENCY,
        tallies: &tallies,
        admin_views: &admin_views,
        stopped: &stopped,
    });
    if failed_requests > 0 {
        bail!("{failed_requests} requests failed");
    }
    if !all_stopped_cleanly {
        bail!("not every process stopped cleanly on SIGTERM");
    }
    Ok(())
}

async fn send_traffic(outbound: SocketAddr) -> Result<Vec<(Protocol, Tally)>> {
    let mut tallies = Vec::new();
    for protocol in Protocol::ALL {
        println!(
            "==> sending {REQUESTS_PER_PROTOCOL} {} requests through {outbound}",
            protocol.label()
        );
        let tally = traffic::send(protocol, outbound, REQUESTS_PER_PROTOCOL, CONCURRENCY).await?;
        tallies.push((protocol, tally));
    }
    Ok(tallies)
}

fn outbound_address(client_bootstrap: &Bootstrap) -> Result<SocketAddr> {
    let listener = client_bootstrap
        .listeners
        .iter()
        .find(|listener| listener.direction() == Direction::Outbound)
        .with_context(|| format!("{} has no OUTBOUND listener", CLIENT_SIDECAR.config))?;
    listener.address.parse().with_context(|| {
        format!(
            "listener {} address {:?} is not ip:port",
            listener.name, listener.address
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap(sidecar: &Sidecar) -> Bootstrap {
        let text = std::fs::read_to_string(workspace_root().join(sidecar.config)).unwrap();
        process::parse_bootstrap(&text).unwrap()
    }

    fn endpoint_addresses(bootstrap: &Bootstrap) -> Vec<String> {
        bootstrap
            .endpoints
            .iter()
            .flat_map(|endpoints| &endpoints.endpoints)
            .map(|endpoint| endpoint.address.clone())
            .collect()
    }

    /// The examples and the demo's own constants describe one topology: each
    /// block sidecar forwards to its sample block, and the client sidecar to
    /// the block sidecars' inbound listeners.
    #[test]
    fn the_examples_wire_the_demo_topology() {
        let block_sidecars = &SIDECARS[..SAMPLE_BLOCKS.len()];
        let mut inbound_listeners = Vec::new();
        for (sidecar, block) in block_sidecars.iter().zip(&SAMPLE_BLOCKS) {
            let bootstrap = bootstrap(sidecar);
            assert_eq!(
                endpoint_addresses(&bootstrap),
                [block.address],
                "{}",
                sidecar.config
            );
            let inbound = bootstrap
                .listeners
                .iter()
                .find(|listener| listener.direction() == Direction::Inbound)
                .unwrap_or_else(|| panic!("{} has no INBOUND listener", sidecar.config));
            inbound_listeners.push(inbound.address.clone());
        }
        let client = bootstrap(&CLIENT_SIDECAR);
        assert_eq!(endpoint_addresses(&client), inbound_listeners);
        assert_eq!(
            outbound_address(&client).unwrap(),
            "127.0.0.1:15001".parse().unwrap()
        );
    }
}
