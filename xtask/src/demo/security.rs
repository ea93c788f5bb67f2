//! The demo's identity and policy part: the CA directory and bootstrap
//! tokens the example sidecars name (under [`SECRETS`]), one call the echo
//! blocks' AuthorizationPolicy denies, and what the sidecars say about
//! their certificates and mTLS handshakes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gridmesh_identity::SpiffeId;
use gridmesh_proto::config::Bootstrap;
use gridmesh_proto::config::identity::Source;
use gridmesh_tests::harness;
use gridmesh_tests::process::{self, ProxyProcess};
use gridmesh_tests::prometheus;

/// Where the example bootstraps expect the CA's root and their tokens.
pub const SECRETS: &str = "/tmp/gridmesh-demo";
/// The control plane's CA directory (`--ca-dir`).
pub const CA_DIR: &str = "/tmp/gridmesh-demo/ca";
pub const TRUST_DOMAIN: &str = "gridmesh.local";
/// What the demo asks for that the echo blocks' policy refuses.
const DENIED_PATH: &str = "/admin/reset";

/// Writes each sidecar's bootstrap token where its bootstrap names it, for
/// the identity it asks for (`gridmesh-control token`).
pub fn write_tokens(control: &Path, bootstraps: &[Bootstrap]) -> Result<()> {
    for bootstrap in bootstraps {
        let Some(Source::ControlPlane(cp)) =
            bootstrap.identity.as_ref().and_then(|i| i.source.as_ref())
        else {
            bail!("an example sidecar has no control-plane identity");
        };
        let id = SpiffeId::parse(&cp.spiffe_id)?;
        let token = process::bootstrap_token(control, Path::new(CA_DIR), &id)?;
        let path = PathBuf::from(&cp.token_file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, token).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Sends one request the echo blocks' DENY policy matches; it must come
/// back 403 `access_denied` from a block's sidecar.
pub async fn denied_call(outbound: SocketAddr) -> Result<String> {
    let reply = harness::http1_client()
        .get(outbound, "echo", DENIED_PATH)
        .await;
    if reply.status != 403 || reply.error() != Some("access_denied") {
        bail!(
            "GET {DENIED_PATH} was not denied: {} {:?} {}",
            reply.status,
            reply.error(),
            reply.text()
        );
    }
    Ok(format!(
        "GET {DENIED_PATH} through the client sidecar: {} ({}), refused by the echo block's sidecar (policy no-admin-through-the-mesh), never reaching the block",
        reply.status,
        reply.error().unwrap_or_default()
    ))
}

/// Per sidecar: its SPIFFE ID and certificate expiry, and the mTLS
/// handshakes its listener accepted and refused.
pub async fn report(sidecars: &[ProxyProcess]) -> Vec<String> {
    let mut lines = Vec::new();
    for sidecar in sidecars {
        let (Ok(dump), Ok(metrics)) = (
            sidecar.admin_get("/config_dump").await,
            sidecar.admin_get("/metrics").await,
        ) else {
            lines.push(format!("{}: admin server unreachable", sidecar.name()));
            continue;
        };
        let dump: serde_json::Value = serde_json::from_str(&dump.body).unwrap_or_default();
        let identity = &dump["identity"];
        let handshakes = |result: &str| {
            prometheus::sum(
                &metrics.body,
                "gridmesh_downstream_tls_handshakes_total",
                &[("result", result)],
            )
            .unwrap_or(0.0)
        };
        let accepted = handshakes("ok");
        let all = prometheus::sum(
            &metrics.body,
            "gridmesh_downstream_tls_handshakes_total",
            &[],
        )
        .unwrap_or(0.0);
        let denied = prometheus::sum(&metrics.body, "gridmesh_authorization_denied_total", &[])
            .unwrap_or(0.0);
        lines.push(format!(
            "{}: {} (certificate until {}); mTLS handshakes accepted {accepted}, refused {}; requests denied by policy {denied}",
            sidecar.name(),
            identity["spiffeId"].as_str().unwrap_or("no certificate"),
            identity["notAfter"].as_str().unwrap_or("-"),
            all - accepted,
        ));
    }
    lines
}
