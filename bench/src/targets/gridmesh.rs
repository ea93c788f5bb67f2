//! gridmesh as a hop: `gridmesh-proxy --config <bootstrap>` with one worker,
//! one AUTO listener (HTTP/1.1 and h2c alike) routing everything to one
//! cluster whose upstream protocol follows the downstream one.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use gridmesh_proto::config::{
    Admin, Bootstrap, Cluster, Endpoint, Endpoints, Listener, Route, RouteAction, RouteTable,
    VirtualHost, listener, route_action,
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
    Bootstrap {
        admin: Some(Admin {
            address: hop.admin.to_string(),
        }),
        listeners: vec![Listener {
            name: "bench".into(),
            address: hop.listen.http1.to_string(),
            direction: direction.into(),
            route_table: ROUTE_TABLE.into(),
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
        identity: None,
        authorization_policies: Vec::new(),
    }
}
