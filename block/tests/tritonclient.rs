//! Existing clients work unchanged: NVIDIA's `tritonclient[grpc]` (installed in
//! the project's .venv) talks to gridmesh-block, through
//! block/tests/python/tritonclient_check.py.

mod support;

use std::time::Duration;

use gridmesh_tests::process::{ManagedProcess, workspace_root};
use support::{BlockServer, test_models};

/// The script imports numpy and grpc (a second or two) and makes ~15 calls.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(25);

#[tokio::test]
async fn tritonclient_grpc_works_unchanged() {
    let models = test_models();
    let server = BlockServer::start_ready(&models.dir).await;
    let root = workspace_root();
    let script = root.join("block/tests/python/tritonclient_check.py");
    let expected = models.dir.join("expected.json");
    let args = [
        script.display().to_string(),
        server.grpc.to_string(),
        expected.display().to_string(),
    ];
    let mut check = ManagedProcess::spawn(
        "tritonclient_check.py",
        &root.join(".venv/bin/python"),
        &args,
    )
    .unwrap();
    let status = check.wait_exit(SCRIPT_TIMEOUT).await;
    let output = check.output();
    match status {
        Ok(status) if status.success() => {}
        other => panic!(
            "tritonclient_check.py: {other:?}\n--- its output:\n{output}\n--- server output:\n{}",
            server.output()
        ),
    }
    assert!(output.contains("checks passed"), "{output}");
}
