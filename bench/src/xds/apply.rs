//! Sidecar apply: a real `gridmesh-proxy` following a real `gridmesh-control`
//! takes repeated 1,000-endpoint updates while it serves a steady request
//! rate. Two figures: how long each update takes inside the proxy (its
//! `gridmesh_xds_update_duration_seconds` histogram: arrival to ACK, which
//! covers decoding, validating the whole config and applying it), and
//! whether requests served meanwhile are slower than without updates.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use gridmesh_tests::process::{
    self, GRIDMESH_CONTROL, GRIDMESH_PROXY, ManagedProcess, ProxyConfig, ProxyProcess,
};
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
    pub updates_applied: u64,
    /// Upper bounds of the histogram buckets holding the percentiles.
    pub apply_ms_p50_at_most: f64,
    pub apply_ms_p99_at_most: f64,
    pub requests_per_second: u32,
    pub latency_without_updates_ms: Percentiles,
    pub latency_during_updates_ms: Percentiles,
    pub failed_requests: u64,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);
const PAYLOAD_BYTES: usize = 128;
const CONNECTIONS: usize = 8;
const PROXY_CORE: usize = 1;
const OTHERS_CORE: usize = 0;

pub async fn run(settings: &Settings, work_dir: &Path) -> Result<Figures> {
    // Everything started from here inherits the other core.
    machine::pin_current_thread(OTHERS_CORE).context("pinning the benchmark")?;
    let upstream =
        gridmesh_tests::upstream::spawn("127.0.0.1:0".parse()?, "apply-upstream").await?;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let config_dir = work_dir.join("apply-config");
    let _ = std::fs::remove_dir_all(&config_dir);
    std::fs::create_dir_all(&config_dir)?;
    std::fs::write(
        config_dir.join("serving.yaml"),
        serving_yaml(listen, upstream.local_addr()),
    )?;
    std::fs::write(
        config_dir.join("bulk.yaml"),
        bulk_yaml(settings.endpoints, 0),
    )?;

    let xds_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let control_admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut control = ManagedProcess::spawn(
        "gridmesh-control",
        &process::binary(GRIDMESH_CONTROL)?,
        [
            "serve".to_string(),
            "--config-dir".into(),
            config_dir.display().to_string(),
            "--xds-address".into(),
            xds_addr.to_string(),
            "--admin-address".into(),
            control_admin.to_string(),
        ],
    )?;
    control.wait_listening(xds_addr, START_TIMEOUT).await?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let bootstrap = format!(
        "admin: {{ address: \"{admin}\" }}\nxds: {{ address: \"{xds_addr}\", listeners: [bench-in] }}\n"
    );
    // A sidecar as deployed: one worker on a core of its own (the control
    // thread shares it). The control plane, the load generator and the
    // upstream share the other core, so what the updates cost the proxy
    // shows in its own requests' latency.
    let mut proxy = ProxyProcess::start_with_args(
        &process::binary(GRIDMESH_PROXY)?,
        "gridmesh-proxy",
        ProxyConfig::Yaml(bootstrap),
        &["--workers", "1"],
        START_TIMEOUT,
    )
    .await?;
    let proxy_pid = proxy.pid().context("the proxy has no pid")?;
    machine::pin_process(proxy_pid, PROXY_CORE).context("pinning the proxy")?;

    let mut exchanges = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        exchanges.push(Http1Echo::connect(listen, Bytes::from(vec![b'x'; PAYLOAD_BYTES])).await?);
    }
    // Warm up connections and pools before measuring.
    let (_, exchanges) = fixed_rate::run(exchanges, settings.rate, Duration::from_secs(1)).await;
    let (quiet, exchanges) = fixed_rate::run(exchanges, settings.rate, settings.phase).await;

    let before = apply_histogram(&proxy).await?;
    let updater = {
        let config_dir = config_dir.clone();
        let endpoints = settings.endpoints;
        let interval = settings.update_interval;
        tokio::spawn(async move {
            let mut generation = 1u16;
            loop {
                tokio::time::sleep(interval).await;
                let staging = config_dir.join(".bulk.yaml.new");
                if std::fs::write(&staging, bulk_yaml(endpoints, generation)).is_err()
                    || std::fs::rename(&staging, config_dir.join("bulk.yaml")).is_err()
                {
                    return;
                }
                generation = generation.wrapping_add(1);
            }
        })
    };
    let (busy, _) = fixed_rate::run(exchanges, settings.rate, settings.phase).await;
    updater.abort();
    // The last update may still be in flight.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = apply_histogram(&proxy).await?;

    let applied = after.count.saturating_sub(before.count);
    ensure!(applied > 0, "the proxy applied no endpoint update");
    let buckets: Vec<(f64, u64)> = after
        .buckets
        .iter()
        .zip(&before.buckets)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let figures = Figures {
        endpoints: settings.endpoints,
        updates_applied: applied,
        apply_ms_p50_at_most: bucket_bound(&buckets, applied, 0.50) * 1e3,
        apply_ms_p99_at_most: bucket_bound(&buckets, applied, 0.99) * 1e3,
        requests_per_second: settings.rate,
        latency_without_updates_ms: percentiles_ms(&quiet.latency_ns),
        latency_during_updates_ms: percentiles_ms(&busy.latency_ns),
        failed_requests: quiet.errors.count + busy.errors.count,
    };
    proxy.terminate(Duration::from_secs(10)).await?;
    control.terminate(Duration::from_secs(10)).await?;
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

/// A cluster no route uses, whose endpoints all move each generation: every
/// update is a full 1,000-endpoint change for the proxy to validate and apply.
fn bulk_yaml(endpoints: usize, generation: u16) -> String {
    let mut yaml = String::from(
        "clusters:\n  - { name: bulk, lbPolicy: LEAST_REQUEST }\nendpoints:\n  - cluster: bulk\n    endpoints:\n",
    );
    for e in 0..endpoints {
        let port = 10000 + generation % 1000;
        yaml.push_str(&format!(
            "      - address: \"10.1.{}.{}:{port}\"\n",
            e / 250,
            e % 250 + 1
        ));
    }
    yaml
}

struct ApplyHistogram {
    count: u64,
    /// (upper bound in seconds, cumulative count)
    buckets: Vec<(f64, u64)>,
}

/// The proxy's histogram of endpoint-update durations, from `/metrics`.
async fn apply_histogram(proxy: &ProxyProcess) -> Result<ApplyHistogram> {
    let metrics = proxy.admin_get("/metrics").await?.body;
    let mut histogram = ApplyHistogram {
        count: 0,
        buckets: Vec::new(),
    };
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("gridmesh_xds_update_duration_seconds_") else {
            continue;
        };
        if !rest.contains("type=\"endpoints\"") || rest.starts_with("sum") {
            continue;
        }
        let value: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unreadable metric line {line:?}"))?;
        if rest.starts_with("count") {
            histogram.count = value;
        } else if rest.starts_with("bucket")
            && let Some(le) = rest.split("le=\"").nth(1).and_then(|s| s.split('"').next())
        {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            histogram.buckets.push((bound, value));
        }
    }
    Ok(histogram)
}

/// Upper bound of the bucket holding quantile `q` of `count` observations.
fn bucket_bound(cumulative: &[(f64, u64)], count: u64, q: f64) -> f64 {
    let rank = (count as f64 * q).ceil() as u64;
    cumulative
        .iter()
        .find(|(_, c)| *c >= rank)
        .map_or(f64::INFINITY, |(le, _)| *le)
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
    format!(
        "sidecar apply: {} updates of a {}-endpoint cluster while serving {} req/s\n  \
         update (arrival -> ACK, in the proxy): p50 <= {:.2} ms, p99 <= {:.2} ms (target p99 <= 10 ms: {})\n  \
         request latency without updates: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n  \
         request latency during updates:  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 <= 2x quiet p99: {})\n  \
         failed requests: {}",
        f.updates_applied,
        f.endpoints,
        f.requests_per_second,
        f.apply_ms_p50_at_most,
        f.apply_ms_p99_at_most,
        verdict(f.apply_ms_p99_at_most <= 10.0),
        quiet.p50,
        quiet.p99,
        quiet.max,
        busy.p50,
        busy.p99,
        busy.max,
        verdict(busy.p99 <= 2.0 * quiet.p99),
        f.failed_requests,
    )
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
