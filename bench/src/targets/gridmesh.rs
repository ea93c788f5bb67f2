//! gridmesh as a hop: `gridmesh-proxy --config <bootstrap>` with one worker,
//! one AUTO listener (HTTP/1.1 and h2c alike) routing everything to one
//! cluster whose upstream protocol follows the downstream one. With an
//! identity, the inbound hop's listener is STRICT and the outbound hop's
//! cluster expects the inbound hop's SPIFFE ID: mTLS between them.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use gridmesh_proto::config::{
    AccessLog, Admin, Bootstrap, Cluster, Endpoint, Endpoints, Identity, IdentityFiles, Listener,
    Route, RouteAction, RouteTable, Tracing, VirtualHost, identity, listener, route_action,
};

use super::HopPlan;

const ROUTE_TABLE: &str = "bench";
const CLUSTER: &str = "next-hop";

pub fn command(binary: &Path, hop: &HopPlan) -> Result<Command> {
    let config_path = hop.dir.join(format!("{}.yaml", hop.name));
    // JSON is YAML, and serde follows the proto3 JSON mapping.
    std::fs::write(&config_path, serde_json::to_string_pretty(&bootstrap(hop))?)?;
    let mut command = Command::new(binary);
    command
        .arg("--config")
        .arg(&config_path)
        .args(["--workers", "1", "--log", "warn"]);
    Ok(command)
}

fn bootstrap(hop: &HopPlan) -> Bootstrap {
    let direction = if hop.forwards_to_upstream {
        listener::Direction::Inbound
    } else {
        listener::Direction::Outbound
    };
    let identity = hop.identity.as_ref();
    let tls_mode = match identity {
        Some(hop) if hop.strict => listener::TlsMode::Strict,
        _ => listener::TlsMode::Disable,
    };
    Bootstrap {
        admin: Some(Admin {
            address: hop.admin.to_string(),
        }),
        listeners: vec![Listener {
            name: "bench".into(),
            address: hop.listen.http1.to_string(),
            direction: direction.into(),
            route_table: ROUTE_TABLE.into(),
            tls_mode: tls_mode.into(),
            access_log: hop.access_log.as_ref().map(|path| AccessLog {
                path: path.display().to_string(),
                sampling_ratio: None,
            }),
            ..Default::default()
        }],
        route_tables: vec![RouteTable {
            name: ROUTE_TABLE.into(),
            virtual_hosts: vec![VirtualHost {
                name: "any".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    name: "all".into(),
                    route: Some(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            CLUSTER.into(),
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
            }],
        }],
        clusters: vec![Cluster {
            name: CLUSTER.into(),
            identity: identity
                .and_then(|hop| hop.upstream.as_ref())
                .map(ToString::to_string)
                .unwrap_or_default(),
            ..Default::default()
        }],
        endpoints: vec![Endpoints {
            cluster: CLUSTER.into(),
            endpoints: vec![Endpoint {
                address: hop.forward_to.http1.to_string(),
                weight: 1,
                ..Default::default()
            }],
        }],
        drain_timeout: Some(pbjson_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        xds: None,
        identity: identity.map(|hop| Identity {
            source: Some(identity::Source::Files(IdentityFiles {
                certificate: hop.files.certificate.display().to_string(),
                private_key: hop.files.private_key.display().to_string(),
                trust_bundle: hop.files.trust_bundle.display().to_string(),
            })),
        }),
        authorization_policies: Vec::new(),
        vdags: Vec::new(),
        tracing: hop.tracing.as_ref().map(|(endpoint, ratio)| Tracing {
            endpoint: endpoint.clone(),
            sampling_ratio: Some(*ratio),
            resource_attributes: [("service.name".to_string(), hop.name.clone())].into(),
            ..Default::default()
        }),
    }
}
