//! End to end with the real binaries: `gridmesh-control` serving a temporary
//! directory, a client sidecar and a block sidecar that get all their
//! listeners, routes, clusters and endpoints over xDS, and sample upstreams.
//!
//! ```text
//! load --> client sidecar (listener "client-out") --> block sidecar (listener "block-in") --> upstream
//! ```
//!
//! Config changes land while requests flow, and the control plane is killed
//! and restarted under load: no request may fail.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gridmesh_tests::harness::{self, http1_client, render};
use gridmesh_tests::load::Load;
use gridmesh_tests::otlp::OtlpReceiver;
use gridmesh_tests::ports::ReservedPort;
use gridmesh_tests::process::{
    self, GRIDMESH_CONTROL, GRIDMESH_PROXY, ManagedProcess, ProxyConfig, ProxyProcess,
};
use gridmesh_tests::upstream::UpstreamHandle;

const READY_WITHIN: Duration = Duration::from_secs(30);
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);

/// The block sidecar forwards to `${upstream}`; the client sidecar to the
/// block sidecar.
const MESH: &str = r#"
listeners:
  - { name: client-out, address: "${client_out}", direction: OUTBOUND, routeTable: client-out }
  - { name: block-in, address: "${block_in}", direction: INBOUND, routeTable: block-in }
routeTables:
  - name: client-out
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - name: all
            match: { regex: "${path_regex}" }
            route: { cluster: block }
  - name: block-in
    virtualHosts:
      - { name: all, domains: ["*"], routes: [{ name: all, route: { cluster: local } }] }
clusters:
  - { name: block, connectTimeout: 1s }
  - { name: local, connectTimeout: 1s }
endpoints:
  - { cluster: block, endpoints: [{ address: "${block_in}" }] }
  - { cluster: local, endpoints: [{ address: "${upstream}" }] }
"#;

/// The sidecars' listeners are named in the control plane's config before
/// the sidecars start, and a restarted control plane comes back on its
/// ports: those ports are reserved for the mesh's life.
struct Mesh {
    dir: tempfile::TempDir,
    client_out: SocketAddr,
    block_in: SocketAddr,
    xds: SocketAddr,
    control_admin: SocketAddr,
    _ports: [ReservedPort; 4],
    control: ManagedProcess,
    client: ProxyProcess,
    block: ProxyProcess,
}

impl Mesh {
    async fn start(upstream: &UpstreamHandle) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let ports = [(); 4].map(|()| ReservedPort::new());
        let (client_out, block_in) = (ports[0].addr(), ports[1].addr());
        write_mesh(
            dir.path(),
            client_out,
            block_in,
            upstream.local_addr(),
            "/.*",
        );
        let (control, xds, control_admin) =
            process::start_control_plane(dir.path(), ports[2].addr(), ports[3].addr()).await;
        let client = start_sidecar("client-sidecar", xds, "client-out").await;
        let block = start_sidecar("block-sidecar", xds, "block-in").await;
        Mesh {
            dir,
            client_out,
            block_in,
            xds,
            control_admin,
            _ports: ports,
            control,
            client,
            block,
        }
    }

    fn rewrite(&self, upstream: SocketAddr, path_regex: &str) {
        write_mesh(
            self.dir.path(),
            self.client_out,
            self.block_in,
            upstream,
            path_regex,
        );
    }

    async fn control_status(&self) -> serde_json::Value {
        admin_json(self.control_admin, "/status").await
    }
}

fn write_mesh(
    dir: &Path,
    client_out: SocketAddr,
    block_in: SocketAddr,
    upstream: SocketAddr,
    path_regex: &str,
) {
    let yaml = render(
        MESH,
        &[
            ("client_out", &client_out),
            ("block_in", &block_in),
            ("upstream", &upstream),
            ("path_regex", &path_regex),
        ],
    );
    write_atomically(&dir.join("mesh.yaml"), &yaml);
}

/// As a ConfigMap update lands: written beside, renamed over.
fn write_atomically(path: &Path, text: &str) {
    let staging = path.with_file_name(".staging");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

async fn start_sidecar(name: &str, xds: SocketAddr, listener: &str) -> ProxyProcess {
    // Admin on port 0: the harness reads the address from the log.
    let yaml = format!(
        "admin: {{ address: \"127.0.0.1:0\" }}\ndrainTimeout: 2s\nxds: {{ address: \"{xds}\", listeners: [{listener}] }}\n",
    );
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    ProxyProcess::start(&binary, name, ProxyConfig::Yaml(yaml), READY_WITHIN)
        .await
        .unwrap()
}

async fn admin_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let reply = http1_client().get(addr, "admin", path).await;
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("GET {path}: {e}: {:?}", reply.body))
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < CONVERGE_WITHIN,
            "not within {CONVERGE_WITHIN:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_changes_under_load_converge_with_no_failed_request() {
    let (first, second) = (
        harness::upstream("first").await,
        harness::upstream("second").await,
    );
    let mesh = Mesh::start(&first).await;
    let load = Load::start(mesh.client_out);
    until("traffic reaches the first upstream", async || {
        load.last_upstream() == "first"
    })
    .await;

    // The block sidecar's endpoints move to the second upstream, then back,
    // then a route changes on the client sidecar: all under load.
    mesh.rewrite(second.local_addr(), "/.*");
    until("the block sidecar serves the new endpoints", async || {
        load.last_upstream() == "second"
    })
    .await;
    mesh.rewrite(first.local_addr(), "/.*");
    until("and back", async || load.last_upstream() == "first").await;
    mesh.rewrite(first.local_addr(), "/(echo|other)");
    let client_admin = mesh.client.admin_address().unwrap();
    until(
        "the client sidecar serves the new route table",
        async || {
            let dump = admin_json(client_admin, "/config_dump").await;
            serde_json::to_string(&dump["bootstrap"]["routeTables"])
                .unwrap()
                .contains("other")
        },
    )
    .await;

    load.finish_without_failures(50).await;

    // Both sidecars show on the control plane with everything ACKed.
    let status = mesh.control_status().await;
    let clients = status["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2, "{status:#}");
    for client in clients {
        for t in client["types"].as_array().unwrap() {
            assert!(t["last_nack"].is_null(), "{t:#}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_reported_and_the_last_good_config_keeps_serving() {
    let upstream = harness::upstream("only").await;
    let mesh = Mesh::start(&upstream).await;
    let load = Load::start(mesh.client_out);

    // Invalid as a whole: the control plane refuses it and names the file.
    mesh.rewrite(upstream.local_addr(), "/(unclosed");
    until("the control plane reports the bad file", async || {
        let status = mesh.control_status().await;
        let problems = serde_json::to_string(&status["config"]["last_error"]).unwrap();
        problems.contains("mesh.yaml") && problems.contains("invalid regex")
    })
    .await;
    let status = std::process::Command::new(process::binary(GRIDMESH_CONTROL).unwrap())
        .args([
            "status",
            "--admin",
            &format!("http://{}", mesh.control_admin),
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(
        printed.contains("mesh.yaml") && printed.contains("regex"),
        "{printed}"
    );

    // Valid for the control plane, but this sidecar cannot bind the port:
    // the block sidecar NACKs that listener and keeps serving the old one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = std::fs::read_to_string(mesh.dir.path().join("mesh.yaml")).unwrap();
    let good = render(
        MESH,
        &[
            ("client_out", &mesh.client_out),
            ("block_in", &mesh.block_in),
            ("upstream", &upstream.local_addr()),
            ("path_regex", &"/.*"),
        ],
    );
    assert_ne!(yaml, good);
    let moved = good.replace(
        &format!("address: \"{}\", direction: INBOUND", mesh.block_in),
        &format!(
            "address: \"{}\", direction: INBOUND",
            taken.local_addr().unwrap()
        ),
    );
    assert_ne!(moved, good);
    write_atomically(&mesh.dir.path().join("mesh.yaml"), &moved);
    until(
        "the control plane shows the block sidecar's NACK",
        async || {
            let status = mesh.control_status().await;
            serde_json::to_string(&status["clients"])
                .unwrap()
                .to_lowercase()
                .contains("address already in use")
        },
    )
    .await;
    let dump = admin_json(mesh.block.admin_address().unwrap(), "/config_dump").await;
    let rejected = serde_json::to_string(&dump["xds"]["rejected"]).unwrap();
    assert!(rejected.contains("block-in"), "{dump:#}");

    load.finish_without_failures(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_and_access_logs_are_turned_on_over_xds_under_load() {
    let upstream = harness::upstream("only").await;
    let mesh = Mesh::start(&upstream).await;
    let collector = OtlpReceiver::start().await;
    let load = Load::start(mesh.client_out);

    // The block sidecar's listener gets its own tracing and an access log;
    // nothing else changes, so the listener keeps serving as it is.
    let log = mesh.dir.path().join("block-in.access.log");
    let observed = render(
        MESH,
        &[
            ("client_out", &mesh.client_out),
            ("block_in", &mesh.block_in),
            ("upstream", &upstream.local_addr()),
            ("path_regex", &"/.*"),
        ],
    )
    .replace(
        "routeTable: block-in }",
        &format!(
            r#"routeTable: block-in, tracing: {{ endpoint: "{}", samplingRatio: 1, resourceAttributes: {{ service.name: block-in }} }}, accessLog: {{ path: "{}" }} }}"#,
            collector.endpoint(),
            log.display()
        ),
    );
    assert!(observed.contains("accessLog"), "{observed}");
    write_atomically(&mesh.dir.path().join("mesh.yaml"), &observed);

    let spans = collector
        .wait_for("the block sidecar's spans", CONVERGE_WITHIN, |spans| {
            spans.iter().any(|s| s.service == "block-in")
        })
        .await;
    assert!(
        spans.iter().all(|s| s.service == "block-in"),
        "the client sidecar does not trace: {spans:#?}"
    );
    until("access log lines", async || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.lines().count() >= 5)
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["listener"], "block-in");
    assert_eq!(line["cluster"], "local");
    // The client sidecar sent no traceparent; the block sidecar started the
    // trace, and its log line names it.
    let trace_id = line["trace_id"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32, "{line}");

    load.finish_without_failures(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_outlive_a_control_plane_restart_under_load() {
    let (first, second) = (
        harness::upstream("first").await,
        harness::upstream("second").await,
    );
    let mut mesh = Mesh::start(&first).await;
    let load = Load::start(mesh.client_out);
    until("traffic flows", async || load.last_upstream() == "first").await;

    mesh.control.kill().await;
    // Serving goes on from the last config while the control plane is gone.
    for sidecar in [&mesh.client, &mesh.block] {
        let admin = sidecar.admin_address().unwrap();
        until(
            "the sidecars notice the control plane is gone",
            async || admin_json(admin, "/config_dump").await["xds"]["connected"] == false,
        )
        .await;
        assert_eq!(sidecar.admin_get("/ready").await.unwrap().status, 200);
    }
    let served = load.ok.load(Ordering::Relaxed);
    until("requests keep succeeding meanwhile", async || {
        load.ok.load(Ordering::Relaxed) >= served + 20
    })
    .await;

    // Back on the same port with a changed config: both sidecars reconnect
    // and converge on it.
    mesh.rewrite(second.local_addr(), "/.*");
    mesh.control = process::start_control_plane(mesh.dir.path(), mesh.xds, mesh.control_admin)
        .await
        .0;
    until(
        "the block sidecar follows the restarted control plane",
        async || load.last_upstream() == "second",
    )
    .await;
    until("both sidecars reconnected", async || {
        mesh.control_status().await["clients"]
            .as_array()
            .map_or(0, Vec::len)
            == 2
    })
    .await;

    load.finish_without_failures(0).await;
}

/// A two-node chain over the mesh's clusters, at `version`; `closing`
/// adds an edge back from the tail (a cycle).
fn chain_vdag(version: u32, closing: bool) -> String {
    let back = if closing {
        "\n      - { from: second, to: first }"
    } else {
        ""
    };
    format!(
        r#"
vdags:
  - name: chain
    version: "{version}"
    entry: [first]
    tails: [second]
    nodes:
      - {{ label: first, cluster: block }}
      - {{ label: second, cluster: local }}
    edges:
      - {{ from: first, to: second }}{back}
"#
    )
}

/// vDAGs travel over xDS like any resource: the sidecars hold what the
/// control plane serves (and show it), and a graph the control plane
/// refuses — here a cycle, named — never replaces the last good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vdags_reach_the_sidecars_and_a_cyclic_one_is_refused() {
    let upstream = harness::upstream("only").await;
    let mesh = Mesh::start(&upstream).await;
    let vdag_file = mesh.dir.path().join("vdag.yaml");
    let admin = mesh.block.admin_address().unwrap();
    let served_version = async || {
        let dump = admin_json(admin, "/config_dump").await;
        let vdags = dump["bootstrap"]["vdags"].as_array().cloned();
        let listed = dump["resources"]["vdag"].as_array().map_or(0, Vec::len);
        vdags
            .filter(|v| v.len() == 1 && listed == 1)
            .map(|v| v[0]["version"].as_str().unwrap_or_default().to_string())
    };

    write_atomically(&vdag_file, &chain_vdag(1, false));
    until("the block sidecar holds the vDAG", async || {
        served_version().await.as_deref() == Some("1")
    })
    .await;
    let dump = admin_json(admin, "/config_dump").await;
    let nodes = &dump["bootstrap"]["vdags"][0]["nodes"];
    assert_eq!(nodes[1]["cluster"], "local", "{dump:#}");

    write_atomically(&vdag_file, &chain_vdag(2, true));
    until("the control plane refuses the cycle", async || {
        let status = mesh.control_status().await;
        let problems = serde_json::to_string(&status["config"]["last_error"]).unwrap();
        problems.contains("vdag.yaml") && problems.contains("cycle: first -> second -> first")
    })
    .await;
    assert_eq!(served_version().await.as_deref(), Some("1"));

    // And a good change after it lands.
    write_atomically(&vdag_file, &chain_vdag(3, false));
    until("the fixed vDAG lands", async || {
        served_version().await.as_deref() == Some("3")
    })
    .await;
}
