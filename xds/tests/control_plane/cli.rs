//! The real `gridmesh-control` binary: `status`, exit codes, logs, SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::fixtures;
use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_gridmesh-control");

#[tokio::test]
async fn status_prints_the_config_and_a_row_per_client_and_type() {
    let h = Harness::start(&fixtures::as_refs(&fixtures::base())).await;
    let mut delta = h.delta("sidecar-delta").await;
    delta.subscribe_all();
    delta.recv_acked(4).await;
    let mut sotw = h.sotw("sidecar-sotw").await;
    sotw.request(C, &[]);
    let r = sotw.recv().await;
    sotw.nack(&r, "", "cluster b: nope");
    h.write("routes.yaml", &fixtures::routes("missing"));
    let status = h
        .status_until("the NACK and the rejection", |s| {
            s.config.last_error.is_some()
                && type_view(client_view(s, "sidecar-sotw"), "cluster")
                    .last_nack
                    .is_some()
                && type_view(client_view(s, "sidecar-delta"), "routeTable")
                    .pending_nonce
                    .is_none()
        })
        .await;

    let admin = format!("http://{}", h.control.admin_addr());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["status", "--admin", &admin])
            .output()
    })
    .await
    .expect("join")
    .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("config version {}", status.config.version)),
        "{stdout}"
    );
    assert!(lines[1].starts_with("last config error"), "{stdout}");
    assert!(
        lines[2].contains("routes.yaml: routeTable \"outbound\": virtualHosts[0].routes[0].route.cluster: no cluster named \"missing\""),
        "{stdout}"
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("NODE"))
        .expect("table header");
    let rows: Vec<Vec<&str>> = lines[header + 1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 5, "{stdout}");
    assert_eq!(
        rows[0][..6],
        ["sidecar-delta", "delta", "cluster", "*", "2/2", "held"],
        "{stdout}"
    );
    assert_eq!(
        rows[3][..6],
        ["sidecar-delta", "delta", "routeTable", "*", "1/1", "held"],
        "{stdout}"
    );
    assert_eq!(
        rows[4][..5],
        ["sidecar-sotw", "sotw", "cluster", "*", "-"],
        "{stdout}"
    );
    assert!(
        lines[header + 5].ends_with(&format!("rejected {}: cluster b: nope", r.nonce)),
        "{stdout}"
    );
}

#[test]
fn an_invalid_directory_exits_64_naming_the_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "routes.yaml", &fixtures::routes("missing"));
    write(dir.path(), "bad.yaml", "listeners: {");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--xds-address",
            "127.0.0.1:0",
            "--admin-address",
            "127.0.0.1:0",
            "--config-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml: file: line 1"), "{stderr}");
    // Parse errors stop before validation: the routes file is not judged.
    std::fs::remove_file(dir.path().join("bad.yaml")).expect("rm");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--xds-address",
            "127.0.0.1:0",
            "--admin-address",
            "127.0.0.1:0",
            "--config-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "routes.yaml: routeTable \"outbound\": virtualHosts[0].routes[0].route.cluster"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_logs_rejected_changes_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in fixtures::base() {
        write(dir.path(), name, &text);
    }
    let admin = free_port();
    let xds = free_port();
    let child = Command::new(BIN)
        .args([
            "serve",
            "--xds-address",
            &xds.to_string(),
            "--admin-address",
            &admin.to_string(),
            "--config-dir",
        ])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = tokio::net::TcpStream::connect(admin).await.is_ok()
            && http_get(admin, "/ready").await.0 == 200;
        if ready {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = DeltaClient::connect(xds, "node-1").await;
    client.subscribe_all();
    client.recv_acked(4).await;
    write(
        dir.path(),
        "routes.yaml",
        &fixtures::routes("a").replace("prefix: /", "regex: \"(\""),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !http_get(admin, "/status").await.1.contains("invalid regex") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rejection never shown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("waits");
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes.yaml: routeTable \"outbound\": virtualHosts[0].routes[0].match.regex: invalid regex"),
        "{stderr}"
    );
    assert!(
        stderr.contains("still serving the previous config"),
        "{stderr}"
    );
    // The stream was ended by the server, not cut.
    let end = tokio::time::timeout(Duration::from_secs(2), client_end(&mut client)).await;
    assert!(end.is_ok(), "stream still open after exit");
}

async fn client_end(client: &mut DeltaClient) {
    client.closed().await;
}

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
