//! `cargo xtask demo`: a local mesh on loopback, made of the release binaries
//! and the files in `examples/`. The sidecars' bootstraps only name the
//! control plane; their listeners, routes, clusters and endpoints come over
//! xDS from `gridmesh-control` serving a copy of `examples/mesh/`:
//!
//! ```text
//!                  gridmesh-control 127.0.0.1:15012 (xDS + CA, TLS) <-- examples/mesh/*.yaml
//!                     |  (certificates, then delta ADS, to every sidecar)
//! demo clients --> client sidecar 127.0.0.1:15001 (outbound; routes by authority)
//!                    |--> block-a sidecar 127.0.0.1:15006 --> sample block "block-a" 127.0.0.1:18080
//!                    |--> block-b sidecar 127.0.0.1:15106 --> sample block "block-b" 127.0.0.1:18081
//!                    '--> classifier sidecar 127.0.0.1:15206 --> gridmesh-block 127.0.0.1:18001
//!                           | vDAG hops: classifier sidecar -> classifier sidecar (one node per model)
//!                           '--> tail's output --> client sidecar inbound 127.0.0.1:15306 (the origin)
//! every sidecar and gridmesh-block --> OTLP receiver 127.0.0.1:14317 (in the demo process)
//! ```
//!
//! Every sidecar gets its certificate from the control plane's CA (a
//! bootstrap token the demo writes under /tmp/gridmesh-demo) and the hops
//! between sidecars are mutual TLS (the blocks' listeners are STRICT).
//! It sends HTTP/1.1, h2c, gRPC unary and gRPC server-streaming requests
//! through the client sidecar to the echo blocks, KServe v2 inference calls
//! to the model server (the test models, built by
//! `block/models/make_test_models.py`, outputs checked against PyTorch's),
//! a vDAG (a diamond of four models, hop by hop through the sidecars, its
//! output checked against PyTorch's) and a vDAG whose node fails (a prompt
//! error naming the node), one call the echo blocks' AuthorizationPolicy denies, one traced
//! inference call whose spans it collects and prints as a tree, then changes a
//! route in the control plane's
//! directory while requests flow and waits for the client sidecar to serve
//! it, prints what happened, stops every process with SIGTERM, and succeeds
//! only if every request did and every process stopped cleanly. Whatever it
//! started is killed if it fails or is interrupted midway.

mod inference;
mod live_change;
mod security;
mod summary;
mod trace_tree;
mod traffic;
mod vdag;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gridmesh_proto::config::Bootstrap;
use gridmesh_tests::process::{
    self, CargoOutput, GRIDMESH_BLOCK, GRIDMESH_CONTROL, GRIDMESH_PROXY, ManagedProcess, Profile,
    ProxyConfig, ProxyProcess, SAMPLE_BLOCK,
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

/// The control plane: what it serves and where.
const MESH_CONFIG: &str = "examples/mesh";
const CONTROL_XDS: &str = "127.0.0.1:15012";
const CONTROL_ADMIN: &str = "127.0.0.1:15014";

struct SampleBlock {
    name: &'static str,
    address: &'static str,
}

/// The block instances the block sidecars forward to.
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

/// The model server (gridmesh-block) and where its sidecar forwards to.
const MODEL_SERVER_GRPC: &str = "127.0.0.1:18001";
const MODEL_SERVER_HTTP: &str = "127.0.0.1:18002";
/// KServe v2 calls the demo sends through the client sidecar.
const INFERENCE_REQUESTS: usize = 300;
/// Calls of the `features` vDAG the demo sends through the client sidecar.
const VDAG_REQUESTS: usize = 100;
/// Where the model server exports spans (the demo's receiver).
const OTLP_ENDPOINT: &str = "http://127.0.0.1:14317";
/// How long the model server may take to load its models.
const MODELS_LOAD_TIMEOUT: Duration = Duration::from_secs(60);

struct Sidecar {
    name: &'static str,
    /// Bootstrap file, relative to the workspace root.
    config: &'static str,
    /// The listener it asks the control plane for.
    listener: &'static str,
    /// The inbound listener it also asks for, where the tails of the vDAG
    /// requests it is origin of deliver (the client's sidecar; the others'
    /// `listener` is inbound already).
    deliveries: Option<&'static str>,
    /// Where its listener forwards to: the block in its pod (none for the
    /// client's sidecar, which routes to other sidecars).
    block: Option<&'static str>,
}

/// Started in this order: the client sidecar last, once its endpoints serve.
const SIDECARS: [Sidecar; 4] = [
    Sidecar {
        name: "block-a-sidecar",
        config: "examples/block-a-sidecar.yaml",
        listener: "block-a-inbound",
        deliveries: None,
        block: Some(SAMPLE_BLOCKS[0].address),
    },
    Sidecar {
        name: "block-b-sidecar",
        config: "examples/block-b-sidecar.yaml",
        listener: "block-b-inbound",
        deliveries: None,
        block: Some(SAMPLE_BLOCKS[1].address),
    },
    Sidecar {
        name: "classifier-sidecar",
        config: "examples/classifier-sidecar.yaml",
        listener: "classifier-inbound",
        deliveries: None,
        block: Some(MODEL_SERVER_GRPC),
    },
    CLIENT_SIDECAR,
];

/// The sidecar the traffic enters through.
const CLIENT_SIDECAR: Sidecar = Sidecar {
    name: "client-sidecar",
    config: "examples/client-sidecar.yaml",
    listener: "client-outbound",
    deliveries: Some("client-inbound"),
    block: None,
};

pub fn run() -> Result<()> {
    let bootstraps = SIDECARS
        .iter()
        .map(|sidecar| read_bootstrap(&workspace_root().join(sidecar.config)))
        .collect::<Result<Vec<_>>>()?;
    let mesh = read_mesh(&workspace_root().join(MESH_CONFIG))?;
    check_ports_free(&bootstraps, &mesh)?;

    println!("==> building the release binaries (the first build takes a few minutes)");
    let binaries = process::build_all(Profile::Release, CargoOutput::Progress)?;
    let programs = Programs {
        proxy: &binaries[&GRIDMESH_PROXY],
        control: &binaries[&GRIDMESH_CONTROL],
        sample_block: &binaries[&SAMPLE_BLOCK],
        model_server: &binaries[&GRIDMESH_BLOCK],
    };

    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        tokio::select! {
            outcome = run_mesh(&programs, &mesh, &bootstraps) => outcome,
            signal = interrupted() => {
                signal?;
                bail!("interrupted; every process the demo started was killed")
            }
        }
    })
}

struct Programs<'a> {
    proxy: &'a Path,
    control: &'a Path,
    sample_block: &'a Path,
    model_server: &'a Path,
}

fn read_bootstrap(path: &Path) -> Result<Bootstrap> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    process::parse_bootstrap(&text).with_context(|| format!("in {}", path.display()))
}

/// Every resource the control plane will serve, merged from its directory.
fn read_mesh(dir: &Path) -> Result<Bootstrap> {
    let mut mesh = Bootstrap::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|entry| Ok(entry?.path()))
        .collect::<Result<_>>()?;
    files.sort();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
    {
        let part = read_bootstrap(file)?;
        mesh.listeners.extend(part.listeners);
        mesh.route_tables.extend(part.route_tables);
        mesh.clusters.extend(part.clusters);
        mesh.endpoints.extend(part.endpoints);
    }
    Ok(mesh)
}

/// Every address the demo binds, checked up front so that a busy port gets a
/// clear message instead of a process failing to start.
fn check_ports_free(bootstraps: &[Bootstrap], mesh: &Bootstrap) -> Result<()> {
    let mut wanted = vec![
        ("control plane xDS".to_string(), CONTROL_XDS.to_string()),
        ("control plane admin".to_string(), CONTROL_ADMIN.to_string()),
    ];
    for block in &SAMPLE_BLOCKS {
        wanted.push((block.name.to_string(), block.address.to_string()));
    }
    wanted.push(("gridmesh-block gRPC".into(), MODEL_SERVER_GRPC.into()));
    wanted.push(("gridmesh-block HTTP".into(), MODEL_SERVER_HTTP.into()));
    for (sidecar, bootstrap) in SIDECARS.iter().zip(bootstraps) {
        let admin = process::admin_address(bootstrap)?;
        wanted.push((format!("{} admin", sidecar.name), admin.to_string()));
    }
    for listener in &mesh.listeners {
        wanted.push((
            format!("listener {}", listener.name),
            listener.address.clone(),
        ));
    }
    for (index, (who, address)) in wanted.iter().enumerate() {
        if let Some((other, _)) = wanted[..index].iter().find(|(_, a)| a == address) {
            bail!("{other} and {who} are both configured on {address}");
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
    control: Option<ManagedProcess>,
    sidecars: Vec<ProxyProcess>,
}

impl Mesh {
    /// Stops the sidecars from the client inward, then the control plane,
    /// then the blocks, so that no process loses its upstream while it still
    /// has traffic.
    async fn stop(mut self) -> Vec<(String, Result<ExitStatus>)> {
        let mut stopped = Vec::new();
        while let Some(mut sidecar) = self.sidecars.pop() {
            let name = sidecar.name().to_string();
            stopped.push((name, sidecar.terminate(STOP_GRACE).await));
        }
        if let Some(mut control) = self.control.take() {
            let name = control.name().to_string();
            stopped.push((name, control.terminate(STOP_GRACE).await));
        }
        while let Some(mut block) = self.blocks.pop() {
            let name = block.name().to_string();
            stopped.push((name, block.terminate(STOP_GRACE).await));
        }
        stopped
    }
}

async fn run_mesh(
    programs: &Programs<'_>,
    resources: &Bootstrap,
    bootstraps: &[Bootstrap],
) -> Result<()> {
    let mut mesh = Mesh::default();
    println!(
        "==> starting an OTLP trace receiver on {} (gRPC) and {} (HTTP)",
        trace_tree::OTLP_GRPC,
        trace_tree::OTLP_HTTP
    );
    let receiver = trace_tree::start_receiver().await?;
    for block in &SAMPLE_BLOCKS {
        println!(
            "==> starting sample block {} on {}",
            block.name, block.address
        );
        let args = ["--listen", block.address, "--name", block.name];
        let mut process = ManagedProcess::spawn(block.name, programs.sample_block, args)?;
        let address = block
            .address
            .parse()
            .expect("sample block addresses are ip:port");
        process.wait_listening(address, START_TIMEOUT).await?;
        mesh.blocks.push(process);
    }
    let models_dir =
        Scratch(std::env::temp_dir().join(format!("gridmesh-demo-models-{}", std::process::id())));
    let model_server = start_model_server(programs.model_server, &models_dir.0).await;
    mesh.blocks.push(model_server?);
    // The control plane serves a copy, which the live change edits.
    let config_dir =
        Scratch(std::env::temp_dir().join(format!("gridmesh-demo-{}", std::process::id())));
    copy_yaml_files(&workspace_root().join(MESH_CONFIG), &config_dir.0)?;
    println!(
        "==> starting gridmesh-control on {CONTROL_XDS}, serving {MESH_CONFIG} (copied to {}), its CA in {}",
        config_dir.0.display(),
        security::CA_DIR
    );
    // A new CA each run: the tokens and root below are this run's.
    let _ = std::fs::remove_dir_all(security::SECRETS);
    let config_dir_arg = config_dir.0.display().to_string();
    let args = [
        "serve",
        "--config-dir",
        &config_dir_arg,
        "--xds-address",
        CONTROL_XDS,
        "--admin-address",
        CONTROL_ADMIN,
        "--ca-dir",
        security::CA_DIR,
        "--trust-domain",
        security::TRUST_DOMAIN,
    ];
    let mut control = ManagedProcess::spawn("gridmesh-control", programs.control, args)?;
    control
        .wait_listening(CONTROL_XDS.parse().expect("ip:port"), START_TIMEOUT)
        .await?;
    mesh.control = Some(control);
    println!(
        "==> writing each sidecar's bootstrap token under {}",
        security::SECRETS
    );
    security::write_tokens(programs.control, bootstraps)?;
    for sidecar in &SIDECARS {
        println!(
            "==> starting {} with {} (listener {} over xDS{}{})",
            sidecar.name,
            sidecar.config,
            sidecar.listener,
            sidecar
                .deliveries
                .map(|inbound| format!(", and {inbound} for vDAG deliveries"))
                .unwrap_or_default(),
            sidecar
                .block
                .map(|block| format!(", in front of {block}"))
                .unwrap_or_default()
        );
        let config = ProxyConfig::File(workspace_root().join(sidecar.config));
        // Ready means its first complete config came from the control plane.
        let proxy =
            ProxyProcess::start(programs.proxy, sidecar.name, config, START_TIMEOUT).await?;
        mesh.sidecars.push(proxy);
    }
    let outbound = listener_address(resources, CLIENT_SIDECAR.listener)?;

    let tallies = match send_traffic(outbound).await {
        Ok(tallies) => tallies,
        Err(error) => {
            summary::print_recent_output(&mesh.sidecars);
            return Err(error);
        }
    };
    println!(
        "==> sending {INFERENCE_REQUESTS} KServe v2 inference calls (mlp, cnn) for \"classifier\" through {outbound}"
    );
    let expected = models_dir.0.join("expected.json");
    let inference = inference::send(outbound, &expected, INFERENCE_REQUESTS, CONCURRENCY).await;
    let inference = match inference {
        Ok(inference) => inference,
        Err(error) => {
            summary::print_recent_output(&mesh.sidecars);
            return Err(error);
        }
    };
    println!(
        "==> calling vDAG \"features\" {VDAG_REQUESTS} times and \"broken\" once through {outbound} (the origin)"
    );
    let vdag_expected = models_dir.0.join("vdag_expected.json");
    let vdags = vdag::send(outbound, &vdag_expected, VDAG_REQUESTS, CONCURRENCY).await;
    let vdags = match vdags {
        Ok(vdags) => vdags,
        Err(error) => {
            summary::print_recent_output(&mesh.sidecars);
            return Err(error);
        }
    };
    println!("==> sending one inference call with a sampled traceparent, collecting its spans");
    let (traceparent, trace_id) = trace_tree::new_traceparent();
    if let Err(error) = inference::traced_call(outbound, &expected, &traceparent).await {
        summary::print_recent_output(&mesh.sidecars);
        return Err(error);
    }
    let trace = trace_tree::collect(&receiver, &trace_id).await;
    println!("==> sending a call the echo blocks' authorization policy denies");
    let denied = match security::denied_call(outbound).await {
        Ok(denied) => denied,
        Err(error) => {
            summary::print_recent_output(&mesh.sidecars);
            return Err(error);
        }
    };
    println!("==> changing the client route in the control plane's directory under load");
    let client_sidecar = mesh
        .sidecars
        .last()
        .expect("the client sidecar starts last");
    let change = live_change::run(&config_dir.0, client_sidecar, outbound).await;
    let change = match change {
        Ok(change) => change,
        Err(error) => {
            summary::print_recent_output(&mesh.sidecars);
            return Err(error);
        }
    };
    let admin_views = summary::AdminViews::fetch(&mesh.sidecars).await;
    let identities = security::report(&mesh.sidecars).await;
    let failed_requests: u64 = tallies.iter().map(|(_, tally)| tally.failed()).sum::<u64>()
        + inference.tally.failed()
        + vdags.tally.failed()
        + change.traffic.failed();
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
        inference: &inference,
        admin_views: &admin_views,
        stopped: &stopped,
    });
    change.print();
    println!("\nIdentity and policy: every sidecar-to-sidecar hop was mutual TLS.");
    for line in &identities {
        println!("  {line}");
    }
    println!("  {denied}");
    println!(
        "\nvDAGs (examples/mesh/vdags.yaml), called through the client sidecar, which is each request's origin;\n\
         hops go sidecar to sidecar over mTLS, the tail delivers back to the origin:"
    );
    let p50 = vdags.tally.latency_quantile(0.5).unwrap_or_default();
    println!(
        "  features (pre -> left, right -> join): {}/{VDAG_REQUESTS} answered, p50 {:.1} ms, y equal to PyTorch's",
        vdags.tally.succeeded(),
        p50.as_secs_f64() * 1e3
    );
    for (reason, count) in &vdags.tally.failures {
        println!("    {count} failed: {reason}");
    }
    println!(
        "  broken (its node \"missing\" names no model the block has): failed after {:.1} ms with {}",
        vdags.failure_after.as_secs_f64() * 1e3,
        vdags.failure
    );
    println!(
        "\nOne inference call's trace ({trace_id}), as exported to the OTLP receiver: start after the trace began, duration."
    );
    for line in trace_tree::render(&trace) {
        println!("  {line}");
    }
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

/// Builds the test models into `models_dir` and starts gridmesh-block on
/// them; returns once every model has loaded.
async fn start_model_server(program: &Path, models_dir: &Path) -> Result<ManagedProcess> {
    println!("==> building the test models into {}", models_dir.display());
    let _ = std::fs::remove_dir_all(models_dir);
    gridmesh_tests::test_models::build(models_dir)?;
    println!(
        "==> starting gridmesh-block on {MODEL_SERVER_GRPC} (gRPC) and {MODEL_SERVER_HTTP} (HTTP)"
    );
    let repository = models_dir.display().to_string();
    let args = [
        "--model-repository",
        &repository,
        "--grpc-address",
        MODEL_SERVER_GRPC,
        "--http-address",
        MODEL_SERVER_HTTP,
        "--drain-timeout",
        "5s",
        "--otlp-endpoint",
        OTLP_ENDPOINT,
        "--trace-sampling-ratio",
        "0.01",
        "--service-name",
        "classifier",
    ];
    let mut server = ManagedProcess::spawn("gridmesh-block", program, args)?;
    let http: SocketAddr = MODEL_SERVER_HTTP.parse().expect("ip:port");
    server.wait_listening(http, START_TIMEOUT).await?;
    let deadline = tokio::time::Instant::now() + MODELS_LOAD_TIMEOUT;
    while !model_server_ready(http).await {
        if let Some(status) = server.exit_status()? {
            bail!("gridmesh-block exited ({status}):\n{}", server.output());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "gridmesh-block did not load its models in {MODELS_LOAD_TIMEOUT:?}:\n{}",
                server.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(server)
}

/// Whether `GET /v2/health/ready` answers 200.
async fn model_server_ready(http: SocketAddr) -> bool {
    process::admin_get(http, "/v2/health/ready")
        .await
        .is_ok_and(|response| response.status == 200)
}

/// A directory the demo made, removed when the demo is done with it,
/// however it ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The address of a listener the control plane serves.
fn listener_address(resources: &Bootstrap, name: &str) -> Result<SocketAddr> {
    let listener = resources
        .listeners
        .iter()
        .find(|listener| listener.name == name)
        .with_context(|| format!("{MESH_CONFIG} has no listener {name:?}"))?;
    listener.address.parse().with_context(|| {
        format!(
            "listener {} address {:?} is not ip:port",
            listener.name, listener.address
        )
    })
}

/// Copies the YAML files of `from` into a fresh `to`.
fn copy_yaml_files(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().expect("a file has a name");
            std::fs::copy(&path, to.join(name))
                .with_context(|| format!("cannot copy {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples and the demo's own constants describe one topology: each
    /// sidecar names the control plane and a listener it serves, each block
    /// sidecar's listener forwards to its sample block, and the client
    /// sidecar balances over the block sidecars' listeners.
    #[test]
    fn the_examples_wire_the_demo_topology() {
        let mesh = read_mesh(&workspace_root().join(MESH_CONFIG)).unwrap();
        gridmesh_proxy_validates(&mesh);
        // The endpoints a listener's route table sends to (the first route
        // of the virtual host named `host`, or of the first one).
        let endpoints_of = |listener: &str, host: Option<&str>| -> Vec<String> {
            let listener = mesh.listeners.iter().find(|l| l.name == listener).unwrap();
            let table = mesh
                .route_tables
                .iter()
                .find(|t| t.name == listener.route_table)
                .unwrap();
            let virtual_host = table
                .virtual_hosts
                .iter()
                .find(|v| host.is_none_or(|host| v.name == host))
                .unwrap();
            let cluster = match &virtual_host.routes[0]
                .route
                .as_ref()
                .unwrap()
                .cluster_specifier
            {
                Some(gridmesh_proto::config::route_action::ClusterSpecifier::Cluster(c)) => {
                    c.clone()
                }
                other => panic!("{other:?}"),
            };
            let endpoints = mesh
                .endpoints
                .iter()
                .find(|e| e.cluster == cluster)
                .unwrap();
            endpoints
                .endpoints
                .iter()
                .map(|e| e.address.clone())
                .collect()
        };
        for sidecar in &SIDECARS {
            let bootstrap = read_bootstrap(&workspace_root().join(sidecar.config)).unwrap();
            let xds = bootstrap
                .xds
                .as_ref()
                .expect("sidecars follow the control plane");
            assert_eq!(xds.address, CONTROL_XDS, "{}", sidecar.config);
            let wanted: Vec<&str> = std::iter::once(sidecar.listener)
                .chain(sidecar.deliveries)
                .collect();
            assert_eq!(xds.listeners, wanted, "{}", sidecar.config);
            assert!(
                bootstrap.listeners.is_empty(),
                "{}: listeners come over xDS",
                sidecar.config
            );
            if let Some(block) = sidecar.block {
                assert_eq!(endpoints_of(sidecar.listener, None), [block]);
            }
        }
        let inbound_of = |name: &str| {
            let sidecar = SIDECARS.iter().find(|s| s.name == name).unwrap();
            listener_address(&mesh, sidecar.listener)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            endpoints_of(CLIENT_SIDECAR.listener, Some("echo")),
            [inbound_of("block-a-sidecar"), inbound_of("block-b-sidecar")]
        );
        assert_eq!(
            endpoints_of(CLIENT_SIDECAR.listener, Some("classifier")),
            [inbound_of("classifier-sidecar")]
        );
        assert_eq!(
            listener_address(&mesh, CLIENT_SIDECAR.listener).unwrap(),
            "127.0.0.1:15001".parse().unwrap()
        );
    }

    /// What the control plane serves must pass the validator it uses.
    fn gridmesh_proxy_validates(mesh: &Bootstrap) {
        if let Err(e) = gridmesh_config::validate_served(mesh.clone(), MESH_CONFIG) {
            panic!("{e}");
        }
    }
}
