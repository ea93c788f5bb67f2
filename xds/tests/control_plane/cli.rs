//! The real `gridmesh-control` binary: `status`, exit codes, logs, SIGTERM.

use std::process::Command;
use std::time::Duration;

use gridmesh_tests::ports::RefusingPort;
use gridmesh_tests::process::{ManagedProcess, log_field};

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

/// `serve` on `dir` with held ports: the control plane must refuse the
/// directory before binding, or it fails to bind and exits otherwise.
fn serve_invalid(dir: &std::path::Path) -> std::process::Output {
    let (xds, admin) = (RefusingPort::new(), RefusingPort::new());
    let out = Command::new(BIN)
        .args(["serve", "--xds-address", &xds.addr().to_string()])
        .args(["--admin-address", &admin.addr().to_string(), "--config-dir"])
        .arg(dir)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        !stderr.contains("in use"),
        "bound before validating: {stderr}"
    );
    out
}

#[test]
fn an_invalid_directory_exits_64_naming_the_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "routes.yaml", &fixtures::routes("missing"));
    write(dir.path(), "bad.yaml", "listeners: {");
    let out = serve_invalid(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml: file: line 1"), "{stderr}");
    // Parse errors stop before validation: the routes file is not judged.
    std::fs::remove_file(dir.path().join("bad.yaml")).expect("rm");
    let out = serve_invalid(dir.path());
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
    let args = ["serve", "--xds-address", "127.0.0.1:0"]
        .into_iter()
        .chain(["--admin-address", "127.0.0.1:0", "--config-dir"])
        .map(std::ffi::OsStr::new)
        .chain([dir.path().as_os_str()]);
    let mut control =
        ManagedProcess::spawn("gridmesh-control", BIN.as_ref(), args).expect("spawns");
    let line = control
        .wait_for_line("control plane listening", Duration::from_secs(10))
        .await
        .expect("listening");
    let field = |name| -> std::net::SocketAddr {
        log_field(&line, name)
            .and_then(|a| a.parse().ok())
            .expect("an address")
    };
    let (xds, admin) = (field("xds_addr"), field("admin_addr"));
    assert_eq!(http_get(admin, "/ready").await.0, 200);
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
    let status = control
        .terminate(Duration::from_secs(10))
        .await
        .expect("exits");
    assert_eq!(status.code(), Some(0));
    let output = control.output();
    assert!(
        output.contains("routes.yaml: routeTable \"outbound\": virtualHosts[0].routes[0].match.regex: invalid regex"),
        "{output}"
    );
    assert!(
        output.contains("still serving the previous config"),
        "{output}"
    );
    // The stream was ended by the server, not cut.
    let end = tokio::time::timeout(Duration::from_secs(2), client.closed()).await;
    assert!(end.is_ok(), "stream still open after exit");
}

#[test]
fn token_prints_a_token_the_ca_accepts_and_refuses_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let token = |namespace: &str| {
        Command::new(BIN)
            .arg("token")
            .arg("--ca-dir")
            .arg(&ca_dir)
            .args(["--namespace", namespace, "--service-account", "classifier"])
            .output()
            .expect("runs")
    };
    let out = token("blocks");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.starts_with("gm1.blocks.classifier."), "{printed}");
    // The CA the directory now holds (made by the first call) accepts it.
    let options = gridmesh_xds::ca::CaOptions {
        dir: ca_dir.clone(),
        trust_domain: "gridmesh.local".into(),
        default_lifetime: Duration::from_secs(60),
        max_lifetime: Duration::from_secs(60),
    };
    let ca = gridmesh_xds::ca::Ca::open(options).unwrap();
    let grant = ca
        .tokens
        .verify(&printed, std::time::SystemTime::now())
        .unwrap();
    assert_eq!(grant.service_account, "classifier");

    let out = token("Not.A.Namespace");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a namespace or service-account name")
    );
}
