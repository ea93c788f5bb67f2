//! Control-plane convergence: one `gridmesh-control` serving a large config
//! to many simulated sidecars (delta ADS streams that ACK everything), and
//! the time from a file change until every one of them has ACKed it.
//!
//! The simulated sidecars run in this process on the same two cores as the
//! control plane, so the figures include their CPU contention: a real
//! fleet's sidecars run on their own machines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gridmesh_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use gridmesh_proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use gridmesh_proto::resource::Kind;
use gridmesh_tests::process::{self, GRIDMESH_CONTROL, ManagedProcess};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{Percentiles, free_port};
use crate::procfs::ProcessTree;

pub struct Settings {
    pub clients: usize,
    pub clusters: usize,
    pub endpoints_per_cluster: usize,
    pub changes: usize,
}

impl Settings {
    /// The scale: 1,000 sidecars, 10,000 endpoints in 500 clusters.
    pub fn full() -> Settings {
        Settings {
            clients: 1000,
            clusters: 500,
            endpoints_per_cluster: 20,
            changes: 10,
        }
    }

    pub fn quick() -> Settings {
        Settings {
            clients: 100,
            clusters: 50,
            endpoints_per_cluster: 20,
            changes: 3,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Figures {
    pub clients: usize,
    pub clusters: usize,
    pub endpoints: usize,
    /// From the first stream opening to every client ACKing its initial
    /// config.
    pub initial_sync_ms: f64,
    /// From a file change to each client's ACK of it, over all changes.
    pub change_to_ack_ms: Percentiles,
    pub control_plane_rss_mib: f64,
    pub control_plane_peak_rss_mib: f64,
    /// Streams that failed and were opened again (a healthy run has none).
    pub reconnects: u64,
}

/// How long one change may take to reach every client before the run fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(settings: &Settings, work_dir: &Path) -> Result<Figures> {
    let config_dir = work_dir.join("convergence-config");
    let _ = std::fs::remove_dir_all(&config_dir);
    std::fs::create_dir_all(&config_dir)?;
    std::fs::write(config_dir.join("clusters.yaml"), clusters_yaml(settings))?;
    std::fs::write(
        config_dir.join("endpoints.yaml"),
        endpoints_yaml(settings, usize::MAX),
    )?;

    let xds_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let binary = process::binary(GRIDMESH_CONTROL)?;
    let mut control = ManagedProcess::spawn(
        "gridmesh-control",
        &binary,
        [
            "serve".to_string(),
            "--config-dir".into(),
            config_dir.display().to_string(),
            "--xds-address".into(),
            xds_addr.to_string(),
            "--admin-address".into(),
            admin_addr.to_string(),
        ],
    )?;
    control.wait_listening(xds_addr, START_TIMEOUT).await?;
    let pid = control.pid().context("the control plane has no pid")?;

    // Every client reports when it ACKs a response that carries the
    // resource the current change touched.
    let (watched_tx, watched) = watch::channel(String::new());
    let (acks_tx, mut acks) = mpsc::unbounded_channel::<Instant>();
    let (synced_tx, mut synced) = mpsc::unbounded_channel::<()>();
    let reconnects = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut clients = Vec::with_capacity(settings.clients);
    for id in 0..settings.clients {
        clients.push(tokio::spawn(simulated_sidecar(
            id,
            xds_addr,
            watched.clone(),
            acks_tx.clone(),
            synced_tx.clone(),
            reconnects.clone(),
        )));
    }
    for _ in 0..settings.clients {
        tokio::time::timeout(START_TIMEOUT, synced.recv())
            .await
            .with_context(|| {
                format!(
                    "clients did not all receive their initial config in time; control plane output:\n{}",
                    tail(&control.output())
                )
            })?
            .context("the simulated sidecars stopped")?;
    }
    let initial_sync = started.elapsed();

    let mut samples = Vec::with_capacity(settings.clients * settings.changes);
    for change in 0..settings.changes {
        let cluster = change % settings.clusters;
        watched_tx.send_replace(format!("cluster-{cluster}"));
        let text = endpoints_yaml(settings, cluster);
        // Written beside and renamed over, as a ConfigMap update lands:
        // the control plane never reads a half-written file.
        let staging = config_dir.join(".endpoints.yaml.new");
        std::fs::write(&staging, text)?;
        let changed_at = Instant::now();
        std::fs::rename(&staging, config_dir.join("endpoints.yaml"))?;
        for _ in 0..settings.clients {
            let acked_at = tokio::time::timeout(CHANGE_TIMEOUT, acks.recv())
                .await
                .with_context(|| format!("change {change} did not reach every client in time"))?
                .context("the simulated sidecars stopped")?;
            samples.push(acked_at.saturating_duration_since(changed_at));
        }
        // Let the control plane settle before the next change.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tree = ProcessTree::of(&[pid]);
    let figures = Figures {
        clients: settings.clients,
        clusters: settings.clusters,
        endpoints: settings.clusters * settings.endpoints_per_cluster,
        initial_sync_ms: initial_sync.as_secs_f64() * 1e3,
        change_to_ack_ms: Percentiles::of(&mut samples),
        control_plane_rss_mib: tree.rss_bytes() as f64 / (1 << 20) as f64,
        control_plane_peak_rss_mib: tree.peak_rss_bytes() as f64 / (1 << 20) as f64,
        reconnects: reconnects.load(Ordering::Relaxed),
    };
    for client in clients {
        client.abort();
    }
    control.terminate(Duration::from_secs(10)).await?;
    std::fs::write(work_dir.join("convergence-control.log"), control.output())?;
    Ok(figures)
}

/// One sidecar's delta stream: subscribes to everything, ACKs every
/// response, reports its initial sync and every response that carries the
/// watched resource. Like a real sidecar it reconnects when its stream
/// fails (counted in `reconnects`), keeping what it held.
async fn simulated_sidecar(
    id: usize,
    xds_addr: SocketAddr,
    watched: watch::Receiver<String>,
    acks: mpsc::UnboundedSender<Instant>,
    synced: mpsc::UnboundedSender<()>,
    reconnects: Arc<AtomicU64>,
) {
    let mut held: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut reported_sync = false;
    loop {
        let outcome = stream_once(
            id,
            xds_addr,
            &watched,
            &acks,
            &synced,
            &mut held,
            &mut reported_sync,
        )
        .await;
        if let Err(error) = outcome
            && reconnects.fetch_add(1, Ordering::Relaxed) < 3
        {
            eprintln!("simulated sidecar {id}: {error:#} (reconnecting)");
        }
        tokio::time::sleep(Duration::from_millis(50 + (id % 50) as u64)).await;
    }
}

async fn stream_once(
    id: usize,
    xds_addr: SocketAddr,
    watched: &watch::Receiver<String>,
    acks: &mpsc::UnboundedSender<Instant>,
    synced: &mpsc::UnboundedSender<()>,
    held: &mut HashMap<String, HashMap<String, String>>,
    reported_sync: &mut bool,
) -> Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds_addr}"))?
        .connect()
        .await?;
    let (requests, outbound) = mpsc::channel(8);
    for (i, kind) in Kind::PUSH_ORDER.into_iter().enumerate() {
        let initial_resource_versions = held.get(kind.type_url()).cloned().unwrap_or_default();
        requests
            .send(DeltaDiscoveryRequest {
                node: (i == 0).then(|| gridmesh_proto::envoy::config::core::v3::Node {
                    id: format!("bench-sidecar-{id}"),
                    ..Default::default()
                }),
                type_url: kind.type_url().into(),
                resource_names_subscribe: vec!["*".into()],
                initial_resource_versions,
                ..Default::default()
            })
            .await?;
    }
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .delta_aggregated_resources(ReceiverStream::new(outbound))
        .await?
        .into_inner();
    let mut kinds_seen = std::collections::HashSet::new();
    while let Some(response) = responses.message().await? {
        let carries_watched = {
            let name = watched.borrow();
            !name.is_empty()
                && response.type_url == Kind::Endpoints.type_url()
                && response.resources.iter().any(|r| r.name == *name)
        };
        let versions = held.entry(response.type_url.clone()).or_default();
        for r in &response.resources {
            versions.insert(r.name.clone(), r.version.clone());
        }
        for name in &response.removed_resources {
            versions.remove(name);
        }
        requests.send(ack(&response)).await?;
        if carries_watched && *reported_sync {
            let _ = acks.send(Instant::now());
        }
        if kinds_seen.insert(response.type_url.clone())
            && kinds_seen.len() == Kind::PUSH_ORDER.len()
            && !*reported_sync
        {
            *reported_sync = true;
            let _ = synced.send(());
        }
    }
    bail!("the control plane ended the stream")
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn ack(response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    }
}

fn clusters_yaml(settings: &Settings) -> String {
    let mut yaml = String::from("clusters:\n");
    for c in 0..settings.clusters {
        yaml.push_str(&format!(
            "  - {{ name: cluster-{c}, lbPolicy: LEAST_REQUEST, connectTimeout: 0.5s }}\n"
        ));
    }
    yaml
}

/// Every cluster's endpoints; `changed` gets one endpoint moved to a new
/// port each time it is picked, so every change is a real one.
fn endpoints_yaml(settings: &Settings, changed: usize) -> String {
    static GENERATION: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut yaml = String::from("endpoints:\n");
    for c in 0..settings.clusters {
        yaml.push_str(&format!("  - cluster: cluster-{c}\n    endpoints:\n"));
        for e in 0..settings.endpoints_per_cluster {
            let port = if c == changed && e == 0 {
                20000 + generation
            } else {
                8080
            };
            let address = format!("10.{}.{}.{}:{port}", c / 250, c % 250, e + 1);
            yaml.push_str(&format!("      - address: \"{address}\"\n"));
        }
    }
    yaml
}

/// Keeps the process's bookkeeping in one place for the report.
pub fn describe(figures: &Figures) -> String {
    let p = &figures.change_to_ack_ms;
    format!(
        "convergence: {} sidecars, {} clusters, {} endpoints\n  \
         initial sync of every sidecar: {:.0} ms\n  \
         file change -> ACKed by each sidecar: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 <= 1000 ms: {})\n  \
         control-plane RSS: {:.1} MiB now, {:.1} MiB peak (target <= 300 MiB: {})\n  \
         streams reopened after a failure: {}",
        figures.clients,
        figures.clusters,
        figures.endpoints,
        figures.initial_sync_ms,
        p.p50,
        p.p99,
        p.max,
        verdict(p.p99 <= 1000.0),
        figures.control_plane_rss_mib,
        figures.control_plane_peak_rss_mib,
        verdict(figures.control_plane_peak_rss_mib <= 300.0),
        figures.reconnects,
    )
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
