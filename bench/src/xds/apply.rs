//! Sidecar apply: a real `gridmesh-proxy` takes repeated 1,000-endpoint
//! updates from a scripted control plane in this process while it serves a
//! steady request rate. Three figures: how long each update takes, from the
//! response leaving the control plane to its ACK arriving (decoding,
//! validating and converting what the update carries, applying it, and a
//! loopback round trip — through this process's one thread, which also
//! runs the load and the upstream); the same from the sidecar's own
//! histogram (response arrival to ACK, bucket resolution); and whether
//! requests served meanwhile are slower than without updates.
//!
//! The scripted control plane sends pre-encoded responses, so the updates
//! cost the benchmark's core almost nothing; the proxy runs one worker on a
//! core of its own, where its control thread (which applies updates) shares
//! the core with the worker, as in a one-core sidecar.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use gridmesh_proto::resource::Kind;
use gridmesh_tests::process::{self, GRIDMESH_PROXY, ProxyConfig, ProxyProcess};
use gridmesh_tests::prometheus;
use gridmesh_tests::xds_script::{self, ScriptServer};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::{Percentiles, free_port};
use crate::load::clients::Http1Echo;
use crate::load::fixed_rate;
use crate::machine;

pub struct Settings {
    pub endpoints: usize,
    pub phase: Duration,
    pub rate: u32,
    pub update_interval: Duration,
}

impl Settings {
    pub fn full() -> Settings {
        Settings {
            endpoints: 1000,
            phase: Duration::from_secs(10),
            rate: 500,
            update_interval: Duration::from_millis(200),
        }
    }

    pub fn quick() -> Settings {
        Settings {
            phase: Duration::from_secs(3),
            ..Settings::full()
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Figures {
    pub endpoints: usize,
    /// From a response leaving the control plane to its ACK arriving.
    pub update_to_ack_ms: Percentiles,
    /// From the sidecar's `gridmesh_xds_update_duration_seconds`.
    pub sidecar_apply: SidecarApply,
    pub requests_per_second: u32,
    pub latency_without_updates_ms: Percentiles,
    pub latency_during_updates_ms: Percentiles,
    pub failed_requests: u64,
}

/// Apply time as the sidecar measures it, over the updates of the busy
/// phase: the mean, and the histogram bucket the 99th percentile is in.
#[derive(Debug, Serialize)]
pub struct SidecarApply {
    pub updates: u64,
    pub mean_ms: f64,
    pub p99_at_most_ms: f64,
}

const APPLY_HISTOGRAM: &str = "gridmesh_xds_update_duration_seconds";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PAYLOAD_BYTES: usize = 128;
const CONNECTIONS: usize = 8;
const PROXY_CORE: usize = 1;
const OTHERS_CORE: usize = 0;

pub async fn run(settings: &Settings) -> Result<Figures> {
    // Everything started from here inherits the other core.
    machine::pin_current_thread(OTHERS_CORE).context("pinning the benchmark")?;
    let upstream =
        gridmesh_tests::upstream::spawn("127.0.0.1:0".parse()?, "apply-upstream").await?;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut control = ScriptServer::start().await;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let bootstrap = format!(
        "admin: {{ address: \"{admin}\" }}\nxds: {{ address: \"{}\", listeners: [bench-in] }}\n",
        control.addr()
    );
    let binary = process::binary(GRIDMESH_PROXY)?;
    let proxy = ProxyProcess::spawn_with_args(
        &binary,
        "gridmesh-proxy",
        ProxyConfig::Yaml(bootstrap),
        &["--workers", "1"],
    )?;
    let mut stream = control.next_stream().await;
    stream.subscriptions().await;
    let serving = xds_script::parse(&serving_yaml(listen, upstream.local_addr()));
    stream.serve(&serving, "serving").await;
    let mut proxy = proxy;
    proxy.wait_ready(START_TIMEOUT).await?;
    // A sidecar as deployed: one worker on a core of its own.
    let proxy_pid = proxy.pid().context("the proxy has no pid")?;
    machine::pin_process(proxy_pid, PROXY_CORE).context("pinning the proxy")?;

    // Two versions of the cluster's endpoints, encoded once: every update
    // moves all of them.
    let generations = [0u16, 1].map(|generation| {
        xds_script::resources_yaml(
            Kind::Endpoints,
            &bulk_endpoints_yaml(settings.endpoints, generation),
            &format!("bulk-{generation}"),
        )
    });
    let bulk_cluster = xds_script::resources_yaml(
        Kind::Cluster,
        "clusters: [{ name: bulk, lbPolicy: LEAST_REQUEST }]",
        "bulk",
    );
    let nonce = stream.push(Kind::Cluster, bulk_cluster, &[]);
    stream.ack(&nonce).await;

    let mut exchanges = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        exchanges.push(Http1Echo::connect(listen, Bytes::from(vec![b'x'; PAYLOAD_BYTES])).await?);
    }
    // Warm up connections and pools before measuring.
    let (_, exchanges) = fixed_rate::run(exchanges, settings.rate, Duration::from_secs(1)).await;
    let (quiet, exchanges) = fixed_rate::run(exchanges, settings.rate, settings.phase).await;

    let metrics_before = proxy.admin_get("/metrics").await?.body;
    let stop = AtomicBool::new(false);
    let updates = async {
        let mut samples = Vec::new();
        let mut ticks = tokio::time::interval(settings.update_interval);
        ticks.tick().await;
        while !stop.load(Ordering::Relaxed) {
            ticks.tick().await;
            let resources = generations[samples.len() % 2].clone();
            let sent = Instant::now();
            let nonce = stream.push(Kind::Endpoints, resources, &[]);
            stream.ack(&nonce).await;
            samples.push(sent.elapsed());
        }
        samples
    };
    let load = async {
        let outcome = fixed_rate::run(exchanges, settings.rate, settings.phase).await;
        stop.store(true, Ordering::Relaxed);
        outcome
    };
    let (mut samples, (busy, _)) = tokio::join!(updates, load);
    ensure!(!samples.is_empty(), "no endpoint update was applied");
    let metrics_after = proxy.admin_get("/metrics").await?.body;
    let sidecar_apply = sidecar_apply(&metrics_before, &metrics_after)?;

    let figures = Figures {
        endpoints: settings.endpoints,
        update_to_ack_ms: Percentiles::of(&mut samples),
        sidecar_apply,
        requests_per_second: settings.rate,
        latency_without_updates_ms: percentiles_ms(&quiet.latency_ns),
        latency_during_updates_ms: percentiles_ms(&busy.latency_ns),
        failed_requests: quiet.errors.count + busy.errors.count,
    };
    proxy.terminate(Duration::from_secs(10)).await?;
    Ok(figures)
}

fn serving_yaml(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"listeners:
  - {{ name: bench-in, address: "{listen}", routeTable: bench }}
routeTables:
  - name: bench
    virtualHosts:
      - {{ name: all, domains: ["*"], routes: [{{ name: all, route: {{ cluster: upstream }} }}] }}
clusters:
  - {{ name: upstream, connectTimeout: 1s }}
endpoints:
  - {{ cluster: upstream, endpoints: [{{ address: "{upstream}" }}] }}
"#
    )
}

/// Endpoints of a cluster no route uses; all of them move with each
/// generation, so every update is a full 1,000-endpoint change for the
/// proxy to validate and apply.
fn bulk_endpoints_yaml(endpoints: usize, generation: u16) -> String {
    let mut yaml = String::from("endpoints:\n  - cluster: bulk\n    endpoints:\n");
    for e in 0..endpoints {
        let port = 10000 + generation;
        yaml.push_str(&format!(
            "      - address: \"10.1.{}.{}:{port}\"\n",
            e / 250,
            e % 250 + 1
        ));
    }
    yaml
}

/// The endpoint updates' apply times between two scrapes of the sidecar's
/// metrics.
fn sidecar_apply(before: &str, after: &str) -> Result<SidecarApply> {
    let endpoints = [("type", "endpoints")];
    let delta = |name: &str, labels: &[(&str, &str)]| -> Result<f64> {
        let read = |text: &str| {
            prometheus::value(text, name, labels)
                .with_context(|| format!("the sidecar's metrics have no {name} {labels:?}"))
        };
        Ok(read(after)? - read(before)?)
    };
    let count = delta(&format!("{APPLY_HISTOGRAM}_count"), &endpoints)?;
    let sum = delta(&format!("{APPLY_HISTOGRAM}_sum"), &endpoints)?;
    ensure!(count > 0.0, "the sidecar counted no endpoint update");
    let bucket = format!("{APPLY_HISTOGRAM}_bucket");
    let mut bounds: Vec<(f64, String)> = prometheus::parse(after)?
        .into_iter()
        .filter(|s| s.name == bucket && s.has(&endpoints))
        .filter_map(|s| {
            let le = s.label("le")?.to_string();
            Some((le.parse::<f64>().ok()?, le))
        })
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut p99_at_most = f64::INFINITY;
    for (bound, le) in bounds {
        if delta(&bucket, &[("type", "endpoints"), ("le", le.as_str())])? >= 0.99 * count {
            p99_at_most = bound;
            break;
        }
    }
    Ok(SidecarApply {
        updates: count as u64,
        mean_ms: sum / count * 1e3,
        p99_at_most_ms: p99_at_most * 1e3,
    })
}

fn percentiles_ms(latency_ns: &Histogram<u64>) -> Percentiles {
    let ms = |q: f64| latency_ns.value_at_quantile(q) as f64 / 1e6;
    Percentiles {
        p50: ms(0.50),
        p99: ms(0.99),
        max: latency_ns.max() as f64 / 1e6,
        samples: latency_ns.len() as usize,
    }
}

pub fn describe(f: &Figures) -> String {
    let quiet = &f.latency_without_updates_ms;
    let busy = &f.latency_during_updates_ms;
    let sidecar = &f.sidecar_apply;
    format!(
        "sidecar apply: {} updates of a {}-endpoint cluster while serving {} req/s\n  \
         update sent -> ACK received: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 2 ms: {})\n  \
         in the sidecar (its histogram, {} updates): mean {:.2} ms, p99 <= {} ms\n  \
         request latency without updates: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n  \
         request latency during updates:  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 1.2x quiet p99: {})\n  \
         failed requests: {}",
        f.update_to_ack_ms.samples,
        f.endpoints,
        f.requests_per_second,
        f.update_to_ack_ms.p50,
        f.update_to_ack_ms.p99,
        f.update_to_ack_ms.max,
        verdict(f.update_to_ack_ms.p99 <= 2.0),
        sidecar.updates,
        sidecar.mean_ms,
        sidecar.p99_at_most_ms,
        quiet.p50,
        quiet.p99,
        quiet.max,
        busy.p50,
        busy.p99,
        busy.max,
        verdict(busy.p99 <= 1.2 * quiet.p99),
        f.failed_requests,
    )
}

/// One run: no rounds to show a spread, so a verdict here is indicative;
/// docs/benchmark.md records several runs.
fn verdict(met: bool) -> &'static str {
    if met {
        "met in this run"
    } else {
        "MISSED in this run"
    }
}
