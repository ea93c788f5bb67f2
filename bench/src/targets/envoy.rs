//! Envoy as a hop: one worker (`--concurrency 1`), an HTTP connection manager
//! with codec AUTO (HTTP/1.1 and h2c on one port), no access log, one route
//! without timeout to a cluster that speaks the downstream's protocol
//! upstream (HTTP/2 for gRPC). Configured as minimally as the other proxies:
//! no request-id generation, no x-envoy-* response headers, the server
//! header passed through. It still sets x-forwarded-proto (no switch for
//! that); its stats stay on, as gridmesh's metrics do.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use super::HopPlan;

pub fn command(binary: &Path, hop: &HopPlan) -> Result<Command> {
    let config_path = hop.dir.join(format!("{}.yaml", hop.name));
    std::fs::write(&config_path, config(hop))?;
    let mut command = Command::new(binary);
    command
        .arg("--config-path")
        .arg(&config_path)
        .args(["--concurrency", "1", "--log-level", "warn"])
        // Several Envoys run side by side (two hops); hot restart would make
        // them contend for one shared-memory region.
        .arg("--disable-hot-restart");
    Ok(command)
}

fn config(hop: &HopPlan) -> String {
    let (admin_ip, admin_port) = (hop.admin.ip(), hop.admin.port());
    let (listen_ip, listen_port) = (hop.listen.http1.ip(), hop.listen.http1.port());
    let (next_ip, next_port) = (hop.forward_to.http1.ip(), hop.forward_to.http1.port());
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: {admin_ip}, port_value: {admin_port} }} }}
static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: {listen_ip}, port_value: {listen_port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          # Nothing the other proxies do not do: no x-request-id per request,
          # the upstream's server header passed through.
          generate_request_id: false
          server_header_transformation: PASS_THROUGH
          route_config:
            virtual_hosts:
            - name: any
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: next_hop, timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              # No x-envoy-upstream-service-time and other x-envoy-* headers.
              suppress_envoy_headers: true
  clusters:
  - name: next_hop
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config:
          http_protocol_options: {{}}
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: next_hop
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: {next_ip}, port_value: {next_port} }} }}
"#
    )
}
