//! The existing network's blocks in gridmesh vDAGs, unchanged: blocks that
//! speak `InferenceProxy.infer` the way that network's SDK does (a Python
//! grpcio block written from the wire facts, tests/python/
//! inference_proxy_block.py, forwarding by `output_ptr` itself) behind
//! sidecars (in-process proxies on real sockets, every hop over mutual
//! TLS), called by a tonic client through `vDAGInferenceService.infer` at an
//! origin sidecar.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use gridmesh_proto::inference_proxy::inference_proxy_client::InferenceProxyClient;
use gridmesh_proto::inference_proxy::v_dag_inference_service_client::VDagInferenceServiceClient;
use gridmesh_proto::inference_proxy::{
    AiosPacket, InferenceMessage, VDagFileInfo, VDagInferencePacket,
};
use gridmesh_tests::harness::{self, TestProxy};
use gridmesh_tests::pki::{TestPki, WorkloadFiles};
use gridmesh_tests::process::{venv_bin, workspace_root};
use prost::Message;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The vDAGs every test's sidecars hold; node `<x>` runs on cluster
/// `node-<x>`, the inbound listener of block `<x>`'s sidecar.
const VDAGS: &str = r#"
vdags:
  - name: chain
    version: "1"
    protocol: INFERENCE_PROXY
    timeout: 10s
    entry: [a]
    tails: [c]
    nodes:
      - { label: a, cluster: node-a, model: block-a }
      - { label: b, cluster: node-b, model: block-b }
      - { label: c, cluster: node-c, model: block-c }
    edges: [{ from: a, to: b }, { from: b, to: c }]
  - name: diamond
    version: "1"
    protocol: INFERENCE_PROXY
    timeout: 10s
    entry: [a]
    tails: [d]
    nodes:
      - { label: a, cluster: node-a, model: block-a }
      - { label: b, cluster: node-b, model: block-b }
      - { label: c, cluster: node-c, model: block-c }
      - { label: d, cluster: node-d, model: block-d }
    edges: [{ from: a, to: b }, { from: a, to: c }, { from: b, to: d }, { from: c, to: d }]
  - name: lossy
    version: "1"
    protocol: INFERENCE_PROXY
    timeout: 1s
    entry: [a]
    tails: [c]
    nodes:
      - { label: a, cluster: node-a, model: block-a }
      - { label: x, cluster: node-x, model: block-x }
      - { label: c, cluster: node-c, model: block-c }
    edges: [{ from: a, to: x }, { from: x, to: c }]
  - name: broken
    version: "1"
    protocol: INFERENCE_PROXY
    timeout: 10s
    entry: [a]
    tails: [c]
    nodes:
      - { label: a, cluster: node-a, model: block-a }
      - { label: y, cluster: node-y, model: block-y }
      - { label: c, cluster: node-c, model: block-c }
    edges: [{ from: a, to: y }, { from: y, to: c }]
  - name: doubled
    version: "1"
    protocol: INFERENCE_PROXY
    timeout: 10s
    entry: [t]
    tails: [c]
    nodes:
      - { label: t, cluster: node-t, model: block-t }
      - { label: b, cluster: node-b, model: block-b }
      - { label: c, cluster: node-c, model: block-c }
    edges: [{ from: t, to: b }, { from: b, to: c }]
"#;

const NODES: [&str; 7] = ["a", "b", "c", "d", "x", "y", "t"];

/// What a test block does with the packets it takes.
#[derive(Clone, Copy)]
enum Mode {
    Forward,
    /// Acks, never sends on: a packet lost inside a block.
    Drop,
    /// Sends every output twice.
    Twice,
}

/// A Python block of the existing network.
struct Block {
    addr: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl Block {
    async fn start(id: &str, add: i64, mode: Mode, logs: &Path) -> Block {
        let script = workspace_root().join("tests/python/inference_proxy_block.py");
        let log = logs.join(format!("{id}.log"));
        let mode = match mode {
            Mode::Forward => "forward",
            Mode::Drop => "drop",
            Mode::Twice => "twice",
        };
        let mut child = Command::new(venv_bin("python"))
            .arg(&script)
            .args(["--block-id", &format!("block-{id}"), "--mode", mode])
            .args(["--add", &add.to_string(), "--log"])
            .arg(&log)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = harness::within_for(
            Duration::from_secs(30),
            "the block to listen",
            lines.next_line(),
        )
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("block {id} exited before listening"));
        let port: u16 = line
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("block {id} said {line:?}"));
        Block {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            child,
        }
    }

    /// The packets it took off its queue: "<session_id> <seq_no>" lines.
    fn taken(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().map(String::from).collect()
    }
}

/// A sidecar: an inbound listener (STRICT mTLS) for hops and deliveries to
/// `block`, an outbound one on the wildcard address where its block sends
/// packets on and clients call the vDAGs (authority `<vdag>.vdag`).
fn sidecar_yaml(
    files: &WorkloadFiles,
    block: Option<SocketAddr>,
    nodes: &HashMap<&str, SocketAddr>,
) -> String {
    let id = TestPki::id("block");
    let clusters: String = NODES
        .iter()
        .map(|n| format!("  - {{ name: node-{n}, connectTimeout: 1s, identity: \"{id}\" }}\n"))
        .collect();
    let endpoints: String = nodes
        .iter()
        .map(|(n, addr)| {
            format!("  - {{ cluster: node-{n}, endpoints: [{{ address: \"{addr}\" }}] }}\n")
        })
        .collect();
    let vdag_hosts: String = ["chain", "diamond", "lossy", "broken", "doubled"]
        .iter()
        .map(|v| format!("      - {{ name: {v}, domains: [{v}.vdag], routes: [{{ name: {v}, route: {{ vdag: {v} }} }}] }}\n"))
        .collect();
    let local = block.map_or(String::new(), |b| {
        format!("  - {{ cluster: local, endpoints: [{{ address: \"{b}\" }}] }}\n")
    });
    // The vDAGs (and the routes to them) once the nodes' addresses are known.
    let (vdags, vdag_hosts) = match nodes.is_empty() {
        true => ("", String::new()),
        false => (VDAGS, vdag_hosts),
    };
    format!(
        r#"{identity}
listeners:
  - {{ name: in, address: "127.0.0.1:0", direction: INBOUND, routeTable: local, tlsMode: STRICT }}
  - {{ name: out, address: "0.0.0.0:0", direction: OUTBOUND, routeTable: local }}
routeTables:
  - name: local
    virtualHosts:
{vdag_hosts}      - {{ name: all, domains: ["*"], routes: [{{ name: all, route: {{ cluster: local }} }}] }}
clusters:
  - {{ name: local }}
{clusters}
endpoints:
{local}{endpoints}
{vdags}
"#,
        identity = files.yaml(),
    )
}

/// Blocks, a sidecar in front of each, and an origin sidecar for clients.
struct Mesh {
    blocks: HashMap<&'static str, Block>,
    sidecars: HashMap<&'static str, TestProxy>,
    origin: TestProxy,
    _pki: TestPki,
    _logs: tempfile::TempDir,
}

impl Mesh {
    /// Starts `blocks` (node, value it adds, mode), then gives every
    /// sidecar the whole mesh.
    async fn start(blocks: &[(&'static str, i64, Mode)]) -> Mesh {
        let logs = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let files = pki.workload("block");
        let mut started = HashMap::new();
        let mut sidecars = HashMap::new();
        let none = HashMap::new();
        for &(node, add, mode) in blocks {
            let block = Block::start(node, add, mode, logs.path()).await;
            let yaml = sidecar_yaml(&files, Some(block.addr), &none);
            sidecars.insert(node, harness::proxy(&yaml).await);
            started.insert(node, block);
        }
        let origin = harness::proxy(&sidecar_yaml(&files, None, &none)).await;
        let nodes: HashMap<&str, SocketAddr> = sidecars
            .iter()
            .map(|(node, sidecar)| (*node, sidecar.addr("in")))
            .collect();
        for (node, sidecar) in &sidecars {
            let yaml = sidecar_yaml(&files, Some(started[node].addr), &nodes);
            sidecar.apply(harness::snapshot(&yaml)).unwrap();
        }
        origin
            .apply(harness::snapshot(&sidecar_yaml(&files, None, &nodes)))
            .unwrap();
        Mesh {
            blocks: started,
            sidecars,
            origin,
            _pki: pki,
            _logs: logs,
        }
    }

    /// Calls `vdag` through the origin with `vDAGInferenceService.infer`.
    async fn call(&self, vdag: &str, packet: VDagInferencePacket) -> VDagInferencePacket {
        let channel = harness::grpc_channel(self.origin.addr("out"), &format!("{vdag}.vdag")).await;
        let mut client = VDagInferenceServiceClient::new(channel);
        let answer = harness::within_for(
            Duration::from_secs(20),
            "the vDAG's answer",
            client.infer(packet),
        )
        .await;
        answer
            .unwrap_or_else(|s| panic!("{vdag}: {s:?}"))
            .into_inner()
    }
}

/// A client's packet: value 0, nothing visited yet.
fn packet(session: &str, seq_no: u64) -> VDagInferencePacket {
    VDagInferencePacket {
        session_id: session.into(),
        seq_no,
        frame_ptr: br#"{"framedb_id": "f1", "key": "k1"}"#.to_vec().into(),
        data: json!({ "value": 0, "trail": [] }).to_string(),
        ts: 1_733_000_000.25,
        files: vec![VDagFileInfo {
            metadata: r#"{"filename": "frame.jpg"}"#.into(),
            file_data: vec![0xff, 0xd8, 0x00, 0x01].into(),
        }],
    }
}

fn data(answer: &VDagInferencePacket) -> Value {
    serde_json::from_str(&answer.data).unwrap_or_else(|e| panic!("{:?}: {e}", answer.data))
}

/// The answer is the error packet the network's clients know, its message
/// containing each of `saying`.
#[track_caller]
fn assert_error_packet(answer: &VDagInferencePacket, saying: &[&str]) {
    let data = data(answer);
    assert_eq!(data["success"], json!(false), "{data}");
    let message = data["message"].as_str().unwrap_or_default();
    for part in saying {
        assert!(message.contains(part), "{message:?} does not say {part:?}");
    }
}

/// Waits until `check` holds, for at most 10 s.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "still not {what} after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A chain of three blocks, each forwarding the packet itself by
/// `output_ptr`: the client gets the last block's data, with its own
/// session id, and every field the blocks pass on (seq_no, ts, frame_ptr,
/// files) as it sent them. Each block saw the vDAG session name the network
/// uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_blocks_answers_through_the_sidecars() {
    let mesh = Mesh::start(&[
        ("a", 1, Mode::Forward),
        ("b", 10, Mode::Forward),
        ("c", 100, Mode::Forward),
    ])
    .await;
    let sent = packet("session-1", 7);
    let answer = mesh.call("chain", sent.clone()).await;
    let data = data(&answer);
    assert_eq!(data["value"], json!(111), "{data}");
    assert_eq!(data["trail"], json!(["block-a", "block-b", "block-c"]));
    assert_eq!(answer.session_id, "session-1");
    assert_eq!(
        (answer.seq_no, answer.ts, &answer.frame_ptr, &answer.files),
        (sent.seq_no, sent.ts, &sent.frame_ptr, &sent.files)
    );
    for node in ["a", "b", "c"] {
        assert_eq!(
            mesh.blocks[node].taken(),
            ["vdag::chain::session-1 7"],
            "block {node}"
        );
    }
}

/// Block a has two next blocks: each gets its own host in `output_ptr`
/// (the SDK keeps one channel per host, with the first service name sent on
/// it), so both run. Fan-in is not joined, as in the network: d runs once
/// per predecessor, and the client gets the first final packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_every_next_block_and_fan_in_runs_per_predecessor() {
    let mesh = Mesh::start(&[
        ("a", 1, Mode::Forward),
        ("b", 10, Mode::Forward),
        ("c", 100, Mode::Forward),
        ("d", 1000, Mode::Forward),
    ])
    .await;
    let answer = mesh.call("diamond", packet("session-2", 1)).await;
    let data = data(&answer);
    let trail = data["trail"].clone();
    let via_b = json!(["block-a", "block-b", "block-d"]);
    let via_c = json!(["block-a", "block-c", "block-d"]);
    let value = if trail == via_b { 1011 } else { 1101 };
    assert!(trail == via_b || trail == via_c, "{data}");
    assert_eq!(data["value"], json!(value), "{data}");
    until("block d taken both packets", async || {
        mesh.blocks["d"].taken().len() == 2
    })
    .await;
    for node in ["a", "b", "c"] {
        assert_eq!(mesh.blocks[node].taken().len(), 1, "block {node}");
    }
}

/// A block that acks a packet and never sends it on (the network's clients
/// wait forever then) turns into an error packet at the vDAG's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_lost_in_a_block_is_an_error_at_the_deadline_not_a_hang() {
    let mesh = Mesh::start(&[
        ("a", 1, Mode::Forward),
        ("x", 0, Mode::Drop),
        ("c", 100, Mode::Forward),
    ])
    .await;
    let started = Instant::now();
    let answer = mesh.call("lossy", packet("session-3", 1)).await;
    let took = started.elapsed();
    assert_error_packet(&answer, &["vDAG lossy", "no final packet"]);
    assert_eq!(answer.session_id, "session-3");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "answered after {took:?}; the vDAG's timeout is 1 s"
    );
    assert_eq!(mesh.blocks["x"].taken().len(), 1, "block x took the packet");
}

/// A block that is gone: its sidecar cannot hand it the packet, and the
/// sidecar that tried reports it to the origin at once — an error naming
/// the node long before the 10 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_block_is_an_error_naming_its_node_at_once() {
    let mut mesh = Mesh::start(&[
        ("a", 1, Mode::Forward),
        ("y", 0, Mode::Forward),
        ("c", 100, Mode::Forward),
    ])
    .await;
    let y = mesh.blocks.get_mut("y").unwrap();
    y.child.kill().await.unwrap();
    let started = Instant::now();
    let answer = mesh.call("broken", packet("session-4", 1)).await;
    let took = started.elapsed();
    assert_error_packet(&answer, &["vDAG broken", "node y", "its block"]);
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    let failures = mesh.sidecars["y"]
        .metric(
            "gridmesh_vdag_node_failures_total",
            &[("vdag", "broken"), ("node", "y"), ("grpc_status", "14")],
        )
        .await;
    assert_eq!(failures, Some(1.0));
}

/// A block that sends its output twice: the next block's sidecar takes the
/// second copy as a duplicate of the same (request, node, sender) — acked,
/// not queued again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_sent_twice_is_queued_once() {
    let mesh = Mesh::start(&[
        ("t", 1, Mode::Twice),
        ("b", 10, Mode::Forward),
        ("c", 100, Mode::Forward),
    ])
    .await;
    let answer = mesh.call("doubled", packet("session-5", 1)).await;
    assert_eq!(data(&answer)["value"], json!(111));
    let labels = [("vdag", "doubled"), ("node", "b")];
    until("the second copy counted as a duplicate", async || {
        let seen = mesh.sidecars["b"].metric("gridmesh_vdag_duplicate_hops_total", &labels);
        seen.await == Some(1.0)
    })
    .await;
    assert_eq!(mesh.blocks["b"].taken(), ["vdag::doubled::session-5 1"]);
}

/// A packet that did not come through a vDAG call (no gridmesh context in
/// its `output_ptr`) is refused with the reason, not forwarded blindly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_from_outside_a_vdag_call_is_refused_with_the_reason() {
    let mesh = Mesh::start(&[("a", 1, Mode::Forward)]).await;
    let packet = AiosPacket {
        session_id: "s".into(),
        output_ptr: json!({ "is_graph": true, "graph": {} }).to_string(),
        ..Default::default()
    };
    let channel = harness::grpc_channel(mesh.sidecars["a"].addr("out"), "block-b").await;
    let mut request = tonic::Request::new(InferenceMessage {
        rpc_data: packet.encode_to_vec().into(),
    });
    request
        .metadata_mut()
        .insert("x-service-name", "block-b".parse().unwrap());
    let answer = InferenceProxyClient::new(channel).infer(request).await;
    let status = answer.expect_err("the packet is refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("names no vDAG request"),
        "{status:?}"
    );
}
