//! gRPC statuses through sidecars with grpc-core at both ends: a Python
//! grpcio server (tests/python/grpc_interop_server.py) that answers errors
//! the way grpc-core does — trailers-only when no message was sent — and the
//! grpcio client and grpcurl checking every code, message, trailer and
//! `grpc-status-details-bin` that arrives. tonic at both ends is lenient
//! about response shapes; these clients are not, which is how a sidecar that
//! turned trailers-only responses into HEADERS + empty DATA was found.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

use gridmesh_tests::harness::{self, chain, forward_all};
use gridmesh_tests::pki::{TestPki, WorkloadFiles, with_dns_name};
use gridmesh_tests::process::{
    self, GRIDMESH_PROXY, ManagedProcess, ProxyConfig, ProxyProcess, venv_bin, workspace_root,
};
use gridmesh_tests::prometheus;

/// The Python client makes ~60 calls; starting Python and grpcio takes a second.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

fn python_dir() -> PathBuf {
    workspace_root().join("tests/python")
}

/// The grpcio server, on the port it bound (printed on its first line).
async fn grpcio_server() -> (ManagedProcess, SocketAddr) {
    let script = python_dir().join("grpc_interop_server.py");
    let mut server =
        ManagedProcess::spawn("grpc_interop_server.py", &venv_bin("python"), [&script]).unwrap();
    let line = server
        .wait_for_line("listening on ", SCRIPT_TIMEOUT)
        .await
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    (server, addr)
}

/// Runs the grpcio client against `target`; panics with its output unless
/// every check passed.
async fn grpcio_client(target: SocketAddr, args: &[&str]) {
    let script = python_dir().join("grpc_interop_client.py");
    let mut all = vec![script.display().to_string(), target.to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let mut client =
        ManagedProcess::spawn("grpc_interop_client.py", &venv_bin("python"), &all).unwrap();
    let status = client.wait_exit(SCRIPT_TIMEOUT).await;
    let output = client.output();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()) && output.contains("checks passed"),
        "grpc_interop_client.py {target} {args:?}: {status:?}\n{output}"
    );
}

#[tokio::test]
async fn grpcio_statuses_trailers_and_details_arrive_unchanged() {
    let (_server, upstream) = grpcio_server().await;
    // The expectations hold for the server itself, so a failure below is
    // the sidecars' doing.
    grpcio_client(upstream, &[]).await;
    let one = harness::proxy(&forward_all(&[upstream])).await;
    grpcio_client(one.addr("in"), &[]).await;
    let two = chain(upstream).await;
    grpcio_client(two.entry(), &[]).await;
}

#[tokio::test]
async fn grpcio_sees_the_sidecars_own_errors_intact() {
    // A cluster without endpoints: the sidecar answers UNAVAILABLE itself.
    let proxy = harness::proxy(&forward_all(&[])).await;
    grpcio_client(proxy.addr("in"), &["--proxy-errors"]).await;
}

#[tokio::test]
async fn grpcio_with_a_client_certificate_through_a_strict_port() {
    let (_server, upstream) = grpcio_server().await;
    let pki = TestPki::new();
    let sidecar_files = pki.workload_with("block", with_dns_name("block.gridmesh.test"));
    let client = pki.workload("client");
    let yaml = format!(
        "admin: {{ address: \"127.0.0.1:0\" }}\n{}{}",
        sidecar_files.yaml(),
        forward_all(&[upstream]).replace("routeTable: rt }", "routeTable: rt, tlsMode: STRICT }")
    );
    assert!(yaml.contains("tlsMode: STRICT"), "{yaml}");
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    let sidecar = ProxyProcess::start(&binary, "strict", ProxyConfig::Yaml(yaml), SCRIPT_TIMEOUT)
        .await
        .unwrap();
    let port = sidecar.listener_address("in").unwrap();
    let tls = |files: &WorkloadFiles| {
        [
            "--tls".to_string(),
            files.certificate.display().to_string(),
            files.private_key.display().to_string(),
            files.trust_bundle.display().to_string(),
            "block.gridmesh.test".to_string(),
        ]
    };
    let args = tls(&client);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // All four call shapes, every status, over grpcio's own TLS stack.
    grpcio_client(port, &args).await;
    let metrics = sidecar.admin_get("/metrics").await.unwrap().body;
    let accepted = prometheus::value(
        &metrics,
        "gridmesh_downstream_tls_handshakes_total",
        &[("listener", "in"), ("result", "ok")],
    );
    assert!(accepted.is_some_and(|n| n >= 1.0), "{metrics}");
}

/// grpcurl, with the service's schema and google.rpc's (for ErrorInfo).
/// Async, as the sidecars run on the test's own runtime.
async fn grpcurl(target: SocketAddr, method: &str, instruction: &str) -> Output {
    let site_packages = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .await
        .expect("the .venv python runs");
    let site_packages = String::from_utf8_lossy(&site_packages.stdout)
        .trim()
        .to_string();
    let request = serde_json::json!({ "json": instruction }).to_string();
    Command::new(venv_bin("grpcurl"))
        .args(["-plaintext", "-v", "-format-error", "-max-time", "10"])
        .args(["-import-path", &python_dir().display().to_string()])
        .args(["-import-path", &site_packages])
        .args(["-proto", "interop.proto"])
        .args(["-proto", "google/rpc/error_details.proto"])
        .args(["-d", &request, &target.to_string()])
        .arg(format!("gridmesh.interop.Interop/{method}"))
        .output()
        .await
        .expect("grpcurl runs (installed into .venv by `cargo xtask test`)")
}

#[tokio::test]
async fn grpcurl_sees_upstream_statuses_through_two_sidecars() {
    let (_server, upstream) = grpcio_server().await;
    let sidecars = chain(upstream).await;
    let failing = r#"{"code": 5, "message": "no model \"résumé\" (100% %41)",
        "trailers": [["x-block", "block-1"], ["x-trace-bin", "AAEC/w=="]],
        "error_info": {"reason": "MODEL_NOT_FOUND", "domain": "gridmesh.test", "metadata": {"model": "m"}}}"#;
    let after_data = r#"{"code": 8, "message": "queue full", "replies": 2,
        "trailers": [["x-queue", "64"]]}"#;
    let failing_expects: &[&str] = &[
        "x-block: block-1",
        "x-trace-bin: AAEC/w==",
        "\"reason\":\"MODEL_NOT_FOUND\"",
        "\"message\": \"no model \\\"résumé\\\" (100% %41)\"",
    ];
    let after_data_expects: &[&str] = &["x-queue: 64", "\"message\": \"queue full\""];
    for (method, instruction, replies, expects) in [
        ("Unary", failing, 0, failing_expects),
        ("ServerStream", failing, 0, failing_expects),
        ("ServerStream", after_data, 2, after_data_expects),
    ] {
        let code = serde_json::from_str::<serde_json::Value>(instruction).unwrap()["code"]
            .as_i64()
            .unwrap() as i32;
        for (target, via) in [
            (upstream, "direct"),
            (sidecars.entry(), "through two sidecars"),
        ] {
            let output = grpcurl(target, method, instruction).await;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            let what = format!("{method} {via}: {instruction}\n--- grpcurl:\n{text}");
            // grpcurl exits with 64 + the status code.
            assert_eq!(output.status.code(), Some(64 + code), "{what}");
            assert_eq!(text.matches("\"text\": \"reply").count(), replies, "{what}");
            for expected in expects {
                assert!(text.contains(expected), "{expected:?} missing: {what}");
            }
        }
    }
}
