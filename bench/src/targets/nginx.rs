//! nginx as a hop: master plus one worker, no access log, HTTP/1.1 proxying
//! with upstream keep-alive on one port and `grpc_pass` on an h2c port
//! (nginx cannot serve HTTP/1.1 and h2c prior knowledge on one plain port).

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use super::HopPlan;

pub fn command(binary: &Path, hop: &HopPlan) -> Result<Command> {
    let config_path = hop.dir.join(format!("{}.conf", hop.name));
    std::fs::write(&config_path, config(hop))?;
    // nginx creates the temp directories but not their parent.
    std::fs::create_dir_all(hop.dir.join(format!("{}-temp", hop.name)))?;
    let mut command = Command::new(binary);
    command
        // The prefix holds the temp directories; -e sends errors met before
        // the configuration is read to our log instead of /var/log/nginx.
        .arg("-p")
        .arg(&hop.dir)
        .arg("-e")
        .arg("stderr")
        .arg("-c")
        .arg(&config_path);
    Ok(command)
}

fn config(hop: &HopPlan) -> String {
    let HopPlan {
        name,
        listen,
        forward_to,
        ..
    } = hop;
    let dir = hop.dir.display();
    format!(
        r#"daemon off;
worker_processes 1;
# 1,000 open streams through one hop hold more than 1,024 descriptors.
worker_rlimit_nofile 65536;
pid {dir}/{name}.pid;
error_log stderr warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    # nginx ends a connection after 1,000 requests by default (GOAWAY on
    # HTTP/2), which would show up as failed in-flight calls, not as cost.
    keepalive_requests 10000000;
    client_body_temp_path {dir}/{name}-temp/client_body;
    proxy_temp_path {dir}/{name}-temp/proxy;
    fastcgi_temp_path {dir}/{name}-temp/fastcgi;
    uwsgi_temp_path {dir}/{name}-temp/uwsgi;
    scgi_temp_path {dir}/{name}-temp/scgi;
    upstream next_hop_http1 {{ server {next_http1}; keepalive 128; keepalive_requests 10000000; }}
    upstream next_hop_grpc {{ server {next_grpc}; keepalive 128; keepalive_requests 10000000; }}
    server {{
        listen {listen_http1};
        location / {{
            proxy_pass http://next_hop_http1;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen {listen_grpc} http2;
        location / {{
            grpc_pass grpc://next_hop_grpc;
            grpc_read_timeout 10m;
        }}
    }}
}}
"#,
        next_http1 = forward_to.http1,
        next_grpc = forward_to.grpc,
        listen_http1 = listen.http1,
        listen_grpc = listen.grpc,
    )
}
