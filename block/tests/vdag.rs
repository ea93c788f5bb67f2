//! vDAGs end to end: sidecars (in-process proxies on real sockets) in front
//! of real gridmesh-block servers serving the `vdag_*` models. Composed
//! results are checked against the same saved models run in PyTorch
//! (`vdag_expected.json`, written by make_test_models.py); failures,
//! deadlines, a block killed mid-request, duplicate hops and load are
//! checked through the client's answers and the sidecars' metrics.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use gridmesh_proto::hop::v_dag_hop_client::VDagHopClient;
use gridmesh_proto::hop::{Hop, hop_progress};
use gridmesh_proto::inference::{ModelInferRequest, ModelInferResponse};
use gridmesh_tests::harness::{self, TestProxy};
use gridmesh_tests::otlp::{self, OtlpReceiver};
use gridmesh_tests::pki::{TestPki, WorkloadFiles};
use gridmesh_tests::process::{self, GRIDMESH_PROXY, ProxyConfig, ProxyProcess};
use gridmesh_tests::prometheus;
use serde_json::Value;
use support::*;
use tokio::time::Instant;
use tonic::{Code, Status};

/// The vDAGs every test's sidecars hold. Node clusters `node-<x>` are the
/// inbound listeners of sidecar `<x>`.
const VDAGS: &str = r#"
vdags:
  - name: chain
    version: "1"
    entry: [a]
    tails: [c]
    nodes:
      - { label: a, cluster: node-a, model: vdag_pre, inputs: [x] }
      - { label: b, cluster: node-b, model: vdag_left }
      - { label: c, cluster: node-c, model: vdag_right, inputs: [features] }
    edges:
      - { from: a, to: b }
      - { from: b, to: c, tensors: [{ output: left, input: features }] }
  - name: diamond
    version: "1"
    entry: [pre]
    tails: [join]
    nodes:
      - { label: pre, cluster: node-a, model: vdag_pre }
      - { label: left, cluster: node-b, model: vdag_left }
      - { label: right, cluster: node-c, model: vdag_right }
      - { label: join, cluster: node-d, model: vdag_join }
    edges:
      - { from: pre, to: left }
      - { from: pre, to: right }
      - { from: left, to: join }
      - { from: right, to: join }
  - name: two-tails
    version: "1"
    entry: [pre]
    tails: [left, right]
    nodes:
      - { label: pre, cluster: node-a, model: vdag_pre }
      - { label: left, cluster: node-b, model: vdag_left }
      - { label: right, cluster: node-c, model: vdag_right }
    edges:
      - { from: pre, to: left }
      - { from: pre, to: right }
  - name: broken
    version: "1"
    entry: [pre]
    tails: [missing]
    nodes:
      - { label: pre, cluster: node-a, model: vdag_pre }
      - { label: missing, cluster: node-b, model: no_such_model }
    edges:
      - { from: pre, to: missing }
  - name: slow
    version: "1"
    entry: [probe]
    tails: [probe]
    nodes:
      - { label: probe, cluster: node-a, model: batch_probe }
  - name: retried
    version: "1"
    entry: [pre]
    tails: [pre]
    nodes:
      - { label: pre, cluster: node-ab, model: vdag_pre, maxRetries: 1 }
  - name: retried-alone
    version: "1"
    entry: [pre]
    tails: [pre]
    nodes:
      - { label: pre, cluster: node-a, model: vdag_pre, maxRetries: 1 }
  - name: slow-b
    version: "1"
    entry: [probe]
    tails: [probe]
    nodes:
      - { label: probe, cluster: node-b, model: batch_probe }
"#;

/// Sidecars in front of blocks, and an origin sidecar for the client.
struct Mesh {
    sidecars: HashMap<&'static str, TestProxy>,
    origin: TestProxy,
}

/// How sidecars reach each other's inbound listeners.
#[derive(Clone, Copy)]
enum Hops<'a> {
    Plaintext,
    /// Every sidecar presents `files` (SPIFFE ID `id`); inbound listeners
    /// are STRICT, node clusters expect `id`.
    Mtls {
        files: &'a WorkloadFiles,
        id: &'a str,
    },
}

/// A sidecar's config: its inbound listener (hops, deliveries, the block)
/// and an outbound one (the client's calls), both to its block; with
/// `nodes`, the clusters of every node sidecar and the vDAGs.
fn sidecar_yaml(
    block: SocketAddr,
    nodes: &[(&str, Vec<SocketAddr>)],
    vdags: &str,
    hops: Hops,
) -> String {
    let (identity, tls_mode, expect) = match hops {
        Hops::Plaintext => (String::new(), "DISABLE", String::new()),
        Hops::Mtls { files, id } => (files.yaml(), "STRICT", format!(", identity: \"{id}\"")),
    };
    let clusters: String = nodes
        .iter()
        // RANDOM: a retry reaches another instance because it avoids the
        // one that failed, not by the balancer's turn.
        .map(|(name, _)| {
            format!("  - {{ name: node-{name}, connectTimeout: 1s, lbPolicy: RANDOM{expect} }}\n")
        })
        .collect();
    let endpoints: String = nodes
        .iter()
        .map(|(name, addrs)| {
            format!(
                "  - {{ cluster: node-{name}, endpoints: {} }}\n",
                harness::endpoints(addrs)
            )
        })
        .collect();
    // With the vDAGs, the authority diamond.vdag routes to one.
    let vdag_host = if vdags.is_empty() {
        ""
    } else {
        "\n      - { name: vdag, domains: [diamond.vdag], routes: [{ name: diamond, route: { vdag: diamond } }] }"
    };
    format!(
        r#"{identity}
listeners:
  - {{ name: in, address: "127.0.0.1:0", direction: INBOUND, routeTable: local, tlsMode: {tls_mode} }}
  - {{ name: out, address: "127.0.0.1:0", direction: OUTBOUND, routeTable: local }}
routeTables:
  - name: local
    virtualHosts:{vdag_host}
      - {{ name: all, domains: ["*"], routes: [{{ name: all, route: {{ cluster: local }} }}] }}
clusters:
  - {{ name: local }}
{clusters}
endpoints:
  - {{ cluster: local, endpoints: [{{ address: "{block}" }}] }}
{endpoints}
{vdags}
"#
    )
}

impl Mesh {
    /// Sidecars a-e, a in front of `a_block` and the others of `block`,
    /// then every sidecar given the whole mesh: listeners keep the ports
    /// they bound. Node cluster node-d has two instances, sidecars d and e.
    async fn start(a_block: SocketAddr, block: SocketAddr) -> Mesh {
        Mesh::start_traced(a_block, block, None).await
    }

    /// [`Mesh::start`], every sidecar tracing every request to `collector`
    /// as service `sidecar-<name>` (`sidecar-origin` for the origin).
    async fn start_traced(
        a_block: SocketAddr,
        block: SocketAddr,
        collector: Option<&OtlpReceiver>,
    ) -> Mesh {
        let blocks = [
            ("a", a_block),
            ("b", block),
            ("c", block),
            ("d", block),
            ("e", block),
            ("origin", a_block),
        ];
        let tracing = |name: &str| match collector {
            Some(c) => format!(
                "tracing: {{ endpoint: \"{}\", samplingRatio: 1, resourceAttributes: {{ service.name: sidecar-{name} }} }}\n",
                c.endpoint()
            ),
            None => String::new(),
        };
        let yaml = |name: &str, block, nodes: &[(&str, Vec<SocketAddr>)], vdags| {
            tracing(name) + &sidecar_yaml(block, nodes, vdags, Hops::Plaintext)
        };
        let mut sidecars = HashMap::new();
        for (name, block) in blocks {
            sidecars.insert(name, harness::proxy(&yaml(name, block, &[], "")).await);
        }
        let addr = |name: &str| sidecars[name].addr("in");
        let nodes = [
            ("a", vec![addr("a")]),
            ("b", vec![addr("b")]),
            ("c", vec![addr("c")]),
            ("d", vec![addr("d"), addr("e")]),
            ("ab", vec![addr("a"), addr("b")]),
        ];
        for (name, block) in blocks {
            let snapshot = harness::snapshot(&yaml(name, block, &nodes, VDAGS));
            sidecars[name].apply(snapshot).unwrap();
        }
        let origin = sidecars.remove("origin").expect("started");
        Mesh { sidecars, origin }
    }

    async fn call(
        &self,
        vdag: &str,
        input: ModelInferRequest,
        timeout: Duration,
    ) -> Result<ModelInferResponse, Status> {
        let mut client = Client::connect(format!("http://{}", self.origin.addr("out")))
            .await
            .unwrap();
        let mut request = tonic::Request::new(input);
        request
            .metadata_mut()
            .insert("x-gridmesh-vdag", vdag.parse().unwrap());
        request.set_timeout(timeout);
        client.model_infer(request).await.map(|r| r.into_inner())
    }
}

/// A block server with the vdag_* models and batch_probe.
async fn vdag_block() -> (BlockServer, tempfile::TempDir) {
    let models = copy_models(&[
        "vdag_pre",
        "vdag_left",
        "vdag_right",
        "vdag_join",
        "batch_probe",
    ]);
    (BlockServer::start_ready(models.path()).await, models)
}

/// The input x and each graph's outputs, as PyTorch computed them.
fn expected() -> Value {
    let path = test_models().dir.join("vdag_expected.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| f64::from(v.as_f64().unwrap() as f32))
        .collect()
}

fn input_x(expected: &Value) -> ModelInferRequest {
    let shape: Vec<i64> = expected["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_i64().unwrap())
        .collect();
    let x = TensorData::new("x", "FP32", &shape, &floats(&expected["x"]));
    infer_request("ignored: the vDAG names the models", "", &[x], Form::Raw)
}

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until `block`'s batch_probe runs one request (a hop's).
async fn probe_running(block: &BlockServer) {
    block
        .poll("a hop running batch_probe", async || {
            let metrics = block.metrics().await;
            let labels = model_labels("batch_probe", "1");
            let running = prometheus::sum(&metrics, "gridmesh_block:num_requests_running", &labels);
            (running == Some(1.0)).then_some(())
        })
        .await;
}

/// A request to `vdag` whose node `probe` lost its block or sidecar at
/// `killed_at` failed UNAVAILABLE, naming the node, within 1.5 s.
#[track_caller]
fn assert_failed_after_kill(
    answer: Result<ModelInferResponse, Status>,
    killed_at: Instant,
    vdag: &str,
    case: &str,
) {
    let took = killed_at.elapsed();
    let named = format!("vDAG {vdag}:");
    assert_status(answer, Code::Unavailable, &[&named, "node probe"], case);
    assert!(
        took < Duration::from_millis(1500),
        "{case}: the error came {took:?} after the kill"
    );
}

/// Checks a vDAG's answer against PyTorch's outputs under `expected[outputs]`.
#[track_caller]
fn assert_composed(
    expected: &Value,
    vdag: &str,
    answer: Result<ModelInferResponse, Status>,
    outputs: &str,
) {
    let answer = answer.unwrap_or_else(|s| panic!("{vdag}: {s:?}"));
    assert_eq!(answer.model_name, vdag);
    let outputs = expected[outputs].as_object().unwrap();
    let mut names: Vec<&str> = output_names(&answer);
    names.sort_unstable();
    let mut wanted: Vec<&str> = outputs.keys().map(String::as_str).collect();
    wanted.sort_unstable();
    assert_eq!(names, wanted, "{vdag}: outputs");
    for (name, data) in outputs {
        let tensor = TensorData::new(name, "FP32", &[2, 4], &floats(data));
        assert_output(&answer, &tensor, Tolerance::Fp32);
    }
}

/// A chain (with an edge renaming a tensor), a diamond (fan-out and a join)
/// and a graph with two tails give what the same models give in PyTorch.
/// The join node has two instances: each request's two parts meet at one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_diamonds_and_two_tails_compose_as_in_pytorch() {
    let (block, _models) = vdag_block().await;
    let mesh = Mesh::start(block.grpc, block.grpc).await;
    let expected = expected();
    let check = |vdag, answer, outputs| assert_composed(&expected, vdag, answer, outputs);
    for (vdag, outputs) in [("chain", "chain"), ("two-tails", "two_tails")] {
        let answer = mesh.call(vdag, input_x(&expected), CALL_TIMEOUT).await;
        check(vdag, answer, outputs);
    }
    // A route may call a vDAG too: no header, the authority picks it.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.origin.addr("out")))
            .unwrap()
            .origin("http://diamond.vdag".parse().unwrap())
            .connect()
            .await
            .unwrap();
    let answer = Client::new(channel).model_infer(input_x(&expected)).await;
    check("diamond", answer.map(|r| r.into_inner()), "diamond");
    const DIAMONDS: usize = 20;
    let diamonds = (0..DIAMONDS).map(|_| mesh.call("diamond", input_x(&expected), CALL_TIMEOUT));
    for answer in futures_util::future::join_all(diamonds).await {
        check("diamond", answer, "diamond");
    }
    let mut joins = Vec::new();
    for instance in ["d", "e"] {
        let ran = mesh.sidecars[instance]
            .metric(
                "gridmesh_vdag_node_duration_seconds_count",
                &[("vdag", "diamond"), ("node", "join")],
            )
            .await;
        joins.push(ran.unwrap_or_default());
    }
    // Random request ids: both instances take some (all 20 on one: 2^-19).
    assert!(
        joins.iter().all(|&n| n > 0.0),
        "joins per instance: {joins:?}"
    );
    assert_eq!(
        joins.iter().sum::<f64>(),
        DIAMONDS as f64 + 1.0,
        "one join run per request (the routed one too)"
    );
}

/// A node whose block fails, mid-graph, fails the request at once with an
/// error naming the node; a node slower than the deadline fails it at the
/// deadline, naming the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_and_a_slow_one_are_named_promptly() {
    let (block, _models) = vdag_block().await;
    let mesh = Mesh::start(block.grpc, block.grpc).await;

    let started = Instant::now();
    let failed = mesh
        .call("broken", input_x(&expected()), CALL_TIMEOUT)
        .await;
    let took = started.elapsed();
    assert_status(
        failed,
        Code::NotFound,
        &["vDAG broken", "node missing", "no_such_model"],
        "a node whose block fails",
    );
    assert!(took < Duration::from_secs(2), "the failure took {took:?}");

    // ~0.35 ms per unit of work: 3000 units is about a second.
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let late = mesh
        .call("slow", probe_request(&[1.0], 3000), deadline)
        .await;
    let took = started.elapsed();
    assert_status(
        late,
        Code::DeadlineExceeded,
        &["vDAG slow", "node probe", "deadline"],
        "a node slower than the deadline",
    );
    // The graph gets 90% of the client's time; the rest is for the late
    // node's report to reach the client before its own deadline does.
    assert!(
        took >= deadline * 9 / 10 && took < deadline + Duration::from_millis(500),
        "the deadline error came after {took:?}"
    );
}

/// A block killed while it runs a node's hop fails the request within
/// about a second, naming the node — long before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_killed_mid_request_fails_it_within_a_second() {
    let (block, _models) = vdag_block().await;
    let (mut doomed, _doomed_models) = vdag_block().await;
    let mesh = Mesh::start(doomed.grpc, block.grpc).await;
    let call = mesh.call("slow", probe_request(&[1.0], 30_000), CALL_TIMEOUT);
    let killed = async {
        probe_running(&doomed).await;
        // While it runs, the admin views show where the request is.
        let (status, held) = mesh.sidecars["a"].admin_get("/vdags").await;
        assert_eq!(status, 200, "{held}");
        let held: Value = serde_json::from_str(&held).unwrap();
        assert_eq!(held["heldHops"]["slow"]["probe"], 1, "{held}");
        let (_, origin) = mesh.origin.admin_get("/vdags").await;
        let origin: Value = serde_json::from_str(&origin).unwrap();
        assert_eq!(origin["originRequests"]["slow"], 1, "{origin}");
        doomed.kill().await;
        Instant::now()
    };
    let (answer, killed_at) = tokio::join!(call, killed);
    assert_failed_after_kill(answer, killed_at, "slow", "a block killed mid-request");
}

/// A node instance whose block is gone fails its hop as retryable, and the
/// sender tries the node's other instance: every request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_is_retried_at_another_instance() {
    let (block, _models) = vdag_block().await;
    let (mut gone, _gone_models) = vdag_block().await;
    gone.kill().await;
    // Node cluster node-ab: sidecar a (its block gone) and sidecar b.
    let mesh = Mesh::start(gone.grpc, block.grpc).await;
    for i in 0..10 {
        let answer = mesh
            .call("retried", input_x(&expected()), CALL_TIMEOUT)
            .await;
        answer.unwrap_or_else(|s| panic!("request {i}: {s:?}"));
    }
    let retries = mesh
        .origin
        .metric(
            "gridmesh_vdag_hop_retries_total",
            &[("vdag", "retried"), ("node", "pre")],
        )
        .await;
    assert!(
        retries.is_some_and(|r| r > 0.0),
        "hops retried: {retries:?}"
    );
    let failures = mesh.sidecars["a"]
        .metric(
            "gridmesh_vdag_node_failures_total",
            &[("vdag", "retried"), ("node", "pre"), ("grpc_status", "14")],
        )
        .await;
    assert_eq!(failures, retries, "every retry followed a failure at a");

    // With one instance, the retry goes back to it and runs again (a
    // failed hop is not remembered as done): a prompt error, two tries.
    let started = Instant::now();
    let alone = mesh
        .call("retried-alone", input_x(&expected()), CALL_TIMEOUT)
        .await;
    assert_status(
        alone,
        Code::Unavailable,
        &["vDAG retried-alone", "node pre"],
        "a node whose only instance fails",
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let tries = mesh.sidecars["a"]
        .metric(
            "gridmesh_vdag_node_failures_total",
            &[
                ("vdag", "retried-alone"),
                ("node", "pre"),
                ("grpc_status", "14"),
            ],
        )
        .await;
    assert_eq!(tries, Some(2.0));
}

/// A hop sent twice to one instance (a sender's retry after a lost answer)
/// runs the block once; both copies are handed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_hop_runs_once() {
    let (block, _models) = vdag_block().await;
    let mesh = Mesh::start(block.grpc, block.grpc).await;
    let mut stats_client = block.client().await;
    let before = model_stats(&mut stats_client, "vdag_right", "1")
        .await
        .inference_count;
    let features = TensorData::new("features", "FP32", &[1, 4], &[0.1, 0.2, 0.3, 0.4]);
    let hop = Hop {
        request_id: "duplicate-1".into(),
        vdag: "chain".into(),
        version: "1".into(),
        node: "c".into(),
        from: "b".into(),
        origin: mesh.origin.addr("in").to_string(),
        origin_identity: String::new(),
        request: Some(infer_request("", "", &[features], Form::Raw)),
    };
    let sidecar = mesh.sidecars["c"].addr("in");
    let mut client = VDagHopClient::connect(format!("http://{sidecar}"))
        .await
        .unwrap();
    for copy in ["first", "second"] {
        let mut request = tonic::Request::new(hop.clone());
        request.set_timeout(Duration::from_secs(10));
        let progress = client.forward(request).await.unwrap().into_inner();
        assert!(
            matches!(progress.step, Some(hop_progress::Step::HandedOn(_))),
            "{copy} copy: {progress:?}"
        );
    }
    let after = model_stats(&mut stats_client, "vdag_right", "1")
        .await
        .inference_count;
    assert_eq!(after - before, 1, "the block ran the hop once");
    let labels = [("vdag", "chain"), ("node", "c")];
    let duplicates = mesh.sidecars["c"]
        .metric("gridmesh_vdag_duplicate_hops_total", &labels)
        .await;
    assert_eq!(
        duplicates,
        Some(1.0),
        "the second copy counted as a duplicate"
    );
}

/// 200 vDAG requests at once all succeed, and nothing is held for them
/// afterwards at any sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_all_finish_and_leave_nothing_behind() {
    let (block, _models) = vdag_block().await;
    let mesh = Mesh::start(block.grpc, block.grpc).await;
    let expected = expected();
    let calls = (0..200).map(|_| mesh.call("chain", input_x(&expected), CALL_TIMEOUT));
    let answers = futures_util::future::join_all(calls).await;
    let failed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, first {:?}",
        failed.len(),
        failed.first()
    );
    let ok = mesh
        .origin
        .metric(
            "gridmesh_vdag_requests_total",
            &[("vdag", "chain"), ("grpc_status", "0")],
        )
        .await;
    assert_eq!(ok, Some(200.0));
    for (name, node) in [("a", "a"), ("b", "b"), ("c", "c")] {
        let labels = [("vdag", "chain"), ("node", node)];
        let sidecar = &mesh.sidecars[name];
        let ran = sidecar
            .metric("gridmesh_vdag_node_duration_seconds_count", &labels)
            .await;
        assert_eq!(ran, Some(200.0), "sidecar {name}");
        let held = sidecar
            .metric("gridmesh_vdag_hops_in_flight", &labels)
            .await;
        assert_eq!(held, Some(0.0), "sidecar {name} still holds hops");
    }
}

/// Every hop and delivery over mutual TLS (inbound listeners STRICT), one
/// node's sidecar a real process; SIGKILLed while it holds a hop, the
/// request fails within about a second, naming the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hops_go_over_mtls_and_a_killed_sidecar_fails_the_request_within_a_second() {
    let (block, _models) = vdag_block().await;
    let pki = TestPki::new();
    let files = pki.workload("block");
    let id = TestPki::id("block").to_string();
    let hops = Hops::Mtls {
        files: &files,
        id: &id,
    };
    let base = sidecar_yaml(block.grpc, &[], "", hops);
    let mut sidecars = HashMap::new();
    for name in ["a", "c", "d", "e"] {
        sidecars.insert(name, harness::proxy(&base).await);
    }
    let origin = harness::proxy(&base).await;
    let addr = |name: &str| sidecars[name].addr("in");
    let nodes = |b: Vec<SocketAddr>| {
        [
            ("a", vec![addr("a")]),
            ("b", b),
            ("c", vec![addr("c")]),
            ("d", vec![addr("d"), addr("e")]),
            ("ab", vec![addr("a")]),
        ]
    };
    // b knows the others from the start; they learn its port once bound.
    let yaml = format!(
        "admin: {{ address: \"127.0.0.1:0\" }}\n{}",
        sidecar_yaml(block.grpc, &nodes(vec![]), VDAGS, hops)
    );
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    let mut b = ProxyProcess::start(
        &binary,
        "sidecar-b",
        ProxyConfig::Yaml(yaml),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("sidecar b did not start: {e:#}"));
    let b_addr = b.listener_address("in").unwrap();
    let full = sidecar_yaml(block.grpc, &nodes(vec![b_addr]), VDAGS, hops);
    for proxy in sidecars.values().chain([&origin]) {
        proxy.apply(harness::snapshot(&full)).unwrap();
    }
    let mesh = Mesh { sidecars, origin };

    let expected = expected();
    let answer = mesh.call("chain", input_x(&expected), CALL_TIMEOUT).await;
    assert_composed(&expected, "chain", answer, "chain");

    let call = mesh.call("slow-b", probe_request(&[1.0], 30_000), CALL_TIMEOUT);
    let killed = async {
        probe_running(&block).await;
        b.kill().await;
        Instant::now()
    };
    let (answer, killed_at) = tokio::join!(call, killed);
    assert_failed_after_kill(answer, killed_at, "slow-b", "a sidecar killed mid-hop");
}

/// Every hop adds its spans to the caller's trace: the origin's server span
/// and its client span for the graph, then at each node's sidecar a server
/// span for the hop (a child of the origin's client span) and a client span
/// for its block call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_adds_spans_to_the_callers_trace() {
    let (block, _models) = vdag_block().await;
    let collector = OtlpReceiver::start().await;
    let mesh = Mesh::start_traced(block.grpc, block.grpc, Some(&collector)).await;
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut client = Client::connect(format!("http://{}", mesh.origin.addr("out")))
        .await
        .unwrap();
    let mut request = tonic::Request::new(input_x(&expected()));
    let metadata = request.metadata_mut();
    metadata.insert("x-gridmesh-vdag", "chain".parse().unwrap());
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    metadata.insert("traceparent", traceparent.parse().unwrap());
    client.model_infer(request).await.unwrap();

    let services = ["sidecar-origin", "sidecar-a", "sidecar-b", "sidecar-c"];
    let spans = collector
        .wait_for(
            "server and client spans from the origin and every node",
            Duration::from_secs(20),
            |spans| {
                services.iter().all(|service| {
                    [otlp::SERVER, otlp::CLIENT].iter().all(|kind| {
                        spans.iter().any(|s| {
                            s.service == *service
                                && s.span.kind == *kind
                                && s.trace_id() == TRACE_ID
                        })
                    })
                })
            },
        )
        .await;
    let in_trace: Vec<_> = spans
        .into_iter()
        .filter(|s| s.trace_id() == TRACE_ID)
        .collect();
    // A sidecar's server span for gRPC method `method` (the origin also
    // serves the tail's Deliver).
    let server = |service: &str, method: &str| {
        in_trace
            .iter()
            .find(|s| {
                s.service == service
                    && s.span.kind == otlp::SERVER
                    && s.attribute("rpc.method").as_deref() == Some(method)
            })
            .unwrap_or_else(|| panic!("no {service} {method} server span: {in_trace:#?}"))
    };
    let origin_server = server("sidecar-origin", "ModelInfer");
    let origin_client = otlp::find(&in_trace, "sidecar-origin", otlp::CLIENT);
    assert_eq!(origin_server.parent_span_id(), "00f067aa0ba902b7");
    assert_eq!(origin_client.parent_span_id(), origin_server.span_id());
    for node in ["sidecar-a", "sidecar-b", "sidecar-c"] {
        let hop = server(node, "Forward");
        let block_call = otlp::find(&in_trace, node, otlp::CLIENT);
        assert_eq!(hop.parent_span_id(), origin_client.span_id(), "{node}");
        assert_eq!(block_call.parent_span_id(), hop.span_id(), "{node}");
    }
}
