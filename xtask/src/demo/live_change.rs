//! The demo's live change: while requests flow through the client sidecar,
//! a route in the control plane's directory changes (the header the route
//! sets), and the demo waits until the client sidecar serves the new version
//! of the route table. Every request must still succeed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gridmesh_tests::process::ProxyProcess;

use super::traffic::{self, Protocol, Tally};
use super::{CLIENT_SIDECAR, CONCURRENCY};

const FILE: &str = "client.yaml";
const BEFORE: &str = r#"value: "1""#;
const AFTER: &str = r#"value: "2""#;
const REQUESTS: usize = 600;
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Change {
    pub traffic: Tally,
    applied_after: Duration,
    from_version: String,
    to_version: String,
}

impl Change {
    pub fn print(&self) {
        println!(
            "\nLive change: route table {} went from version {} to {} on the client sidecar \
             {:.0} ms after the file changed; {} HTTP/1.1 requests sent meanwhile, {} failed.",
            CLIENT_SIDECAR.listener,
            self.from_version,
            self.to_version,
            self.applied_after.as_secs_f64() * 1e3,
            self.traffic.succeeded() as u64 + self.traffic.failed(),
            self.traffic.failed(),
        );
    }
}

pub async fn run(config_dir: &Path, client: &ProxyProcess, outbound: SocketAddr) -> Result<Change> {
    let from_version = route_table_version(client).await?;
    let requests = traffic::send(Protocol::Http1, outbound, REQUESTS, CONCURRENCY);
    let (traffic, change) = tokio::join!(requests, async {
        // Let the traffic get going, so the change lands in the middle of it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let changed_at = change_route(config_dir)?;
        loop {
            let version = route_table_version(client).await?;
            if version != from_version {
                return Ok((version, changed_at.elapsed()));
            }
            if changed_at.elapsed() > CONVERGENCE_TIMEOUT {
                bail!(
                    "the client sidecar still serves version {version} {CONVERGENCE_TIMEOUT:?} after the change"
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let (to_version, applied_after) = change?;
    Ok(Change {
        traffic: traffic?,
        applied_after,
        from_version,
        to_version,
    })
}

/// Edits the route in the control plane's copy; returns when it landed.
fn change_route(config_dir: &Path) -> Result<Instant> {
    let path = config_dir.join(FILE);
    let text = std::fs::read_to_string(&path)?;
    if !text.contains(BEFORE) {
        bail!("{FILE} no longer contains {BEFORE}; update the demo's live change");
    }
    // Written beside and renamed over, so the control plane never reads a
    // half-written file.
    let staging = config_dir.join(format!(".{FILE}.new"));
    std::fs::write(&staging, text.replacen(BEFORE, AFTER, 1))?;
    let changed_at = Instant::now();
    std::fs::rename(&staging, &path)?;
    Ok(changed_at)
}

/// The version of the client's route table the client sidecar serves.
async fn route_table_version(client: &ProxyProcess) -> Result<String> {
    let dump = client.admin_get("/config_dump").await?;
    let dump: serde_json::Value = serde_json::from_str(&dump.body)?;
    dump["resources"]["routeTable"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == CLIENT_SIDECAR.listener)
        .and_then(|r| r["version"].as_str())
        .map(String::from)
        .with_context(|| {
            format!(
                "/config_dump has no route table {}",
                CLIENT_SIDECAR.listener
            )
        })
}
