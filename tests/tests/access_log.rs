//! Access logs through the real proxy (in-process) with real clients: one
//! JSON line per request with its fields, for HTTP/1.1, gRPC and replies
//! the proxy makes itself; sampling; a destination that cannot be opened
//! refuses the config.

use std::path::Path;
use std::time::Duration;

use gridmesh_proto::testing::EchoRequest;
use gridmesh_tests::harness::{self, TestProxy, grpc_echo_client, proxy, render, upstream, within};
use serde_json::Value;

const AUTHORITY: &str = "echo.blocks";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// Every key a line has, present even when its value is null.
const FIELDS: [&str; 24] = [
    "start_time",
    "listener",
    "protocol",
    "method",
    "authority",
    "path",
    "grpc_service",
    "grpc_method",
    "status",
    "grpc_status",
    "duration_ms",
    "to_first_byte_ms",
    "bytes_received",
    "bytes_sent",
    "route",
    "cluster",
    "upstream",
    "attempts",
    "peer",
    "peer_identity",
    "trace_id",
    "request_id",
    "user_agent",
    "error",
];

/// Two listeners logging to `log`: `logged` every request, `quiet` none.
async fn logging_proxy(log: &Path, upstream: std::net::SocketAddr) -> TestProxy {
    let yaml = render(
        r#"
listeners:
  - { name: logged, address: "127.0.0.1:0", routeTable: rt, accessLog: { path: "${log}" } }
  - { name: quiet, address: "127.0.0.1:0", routeTable: rt, accessLog: { path: "${log}", samplingRatio: 0 } }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - { name: echo, match: { prefix: /e }, route: { cluster: echo } }
          - { name: grpc, match: { prefix: /gridmesh. }, route: { cluster: echo } }
clusters: [{ name: echo }]
endpoints: [{ cluster: echo, endpoints: [{ address: "${upstream}" }] }]
"#,
        &[("log", &log.display()), ("upstream", &upstream)],
    );
    proxy(&yaml).await
}

/// The log's lines once there are `count`, each parsed as JSON.
async fn lines(log: &Path, count: usize) -> Vec<Value> {
    within("access log lines", async {
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            // Whole lines only: the writer may be mid-line.
            let complete: Vec<&str> = text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .collect();
            if complete.len() >= count {
                return complete
                    .iter()
                    .map(|line| {
                        serde_json::from_str(line)
                            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
                    })
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_one_json_line_with_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let echo = upstream("echo-1").await;
    let proxy = logging_proxy(&log, echo.local_addr()).await;
    let logged = proxy.addr("logged");

    // HTTP/1.1 with a body, a caller's trace context and request id.
    let request = http::Request::post("/echo")
        .header("host", AUTHORITY)
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .header("x-request-id", "req-1")
        .header("user-agent", "access-log-test")
        .body(harness::full("hello"))
        .unwrap();
    let reply = harness::http1_client().request(logged, request).await;
    assert_eq!(reply.status, 200);
    let echoed = reply.body.len() as u64;
    // A reply the proxy makes: no route for this path.
    let reply = harness::http1_client()
        .request(logged, harness::get(AUTHORITY, "/missing?x=1"))
        .await;
    assert_eq!(reply.status, 404);
    // gRPC over h2c.
    let mut client = grpc_echo_client(logged, AUTHORITY).await;
    client
        .unary(EchoRequest {
            payload: b"ping".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();

    let lines = lines(&log, 3).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for line in &lines {
        for field in FIELDS {
            assert!(line.get(field).is_some(), "no {field:?} in {line}");
        }
        assert_eq!(line["listener"], "logged");
        assert!(
            line["start_time"].as_str().unwrap().ends_with('Z'),
            "{line}"
        );
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
        assert!(
            line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
    }

    let http = &lines[0];
    assert_eq!(http["protocol"], "HTTP/1.1");
    assert_eq!(http["method"], "POST");
    assert_eq!(http["authority"], AUTHORITY);
    assert_eq!(http["path"], "/echo");
    assert_eq!(http["status"], 200);
    assert_eq!(http["grpc_status"], Value::Null);
    assert_eq!(http["route"], "echo");
    assert_eq!(http["cluster"], "echo");
    assert_eq!(http["upstream"], echo.local_addr().to_string());
    assert_eq!(http["attempts"], 1);
    assert_eq!(http["bytes_received"], 5);
    assert_eq!(http["bytes_sent"], echoed);
    assert_eq!(http["trace_id"], TRACE_ID);
    assert_eq!(http["request_id"], "req-1");
    assert_eq!(http["user_agent"], "access-log-test");
    assert_eq!(http["error"], Value::Null);
    let first_byte = http["to_first_byte_ms"].as_f64().unwrap();
    assert!(
        first_byte <= http["duration_ms"].as_f64().unwrap(),
        "{http}"
    );

    let missing = &lines[1];
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["path"], "/missing?x=1");
    assert_eq!(missing["error"], "route_not_found");
    assert_eq!(missing["route"], Value::Null);
    assert_eq!(missing["upstream"], Value::Null);

    let grpc = &lines[2];
    assert_eq!(grpc["protocol"], "HTTP/2");
    assert_eq!(grpc["grpc_service"], "gridmesh.testing.v1.Echo");
    assert_eq!(grpc["grpc_method"], "Unary");
    assert_eq!(grpc["status"], 200);
    assert_eq!(grpc["grpc_status"], 0);
    assert!(grpc["bytes_received"].as_u64().unwrap() > 4, "{grpc}");

    let metrics = proxy.metrics().await;
    assert_eq!(
        gridmesh_tests::prometheus::value(
            &metrics,
            "gridmesh_access_log_entries_total",
            &[("result", "written")]
        ),
        Some(3.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_sampling_nothing_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let echo = upstream("echo-1").await;
    let proxy = logging_proxy(&log, echo.local_addr()).await;

    for _ in 0..20 {
        let reply = harness::http1_client()
            .request(proxy.addr("quiet"), harness::get(AUTHORITY, "/echo/quiet"))
            .await;
        assert_eq!(reply.status, 200);
    }
    // The writer keeps order: once the logged listener's request is written,
    // anything the quiet one logged would be before it.
    let reply = harness::http1_client()
        .request(
            proxy.addr("logged"),
            harness::get(AUTHORITY, "/echo/logged"),
        )
        .await;
    assert_eq!(reply.status, 200);
    let lines = lines(&log, 1).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["path"], "/echo/logged");
}

#[test]
fn a_log_outside_a_file_path_or_stdout_is_refused() {
    for (log, problem) in [
        (
            r#"{ path: "access.log" }"#,
            "neither \"stdout\" nor an absolute",
        ),
        (
            r#"{ path: stdout, samplingRatio: 2 }"#,
            "2 is not between 0 and 1",
        ),
    ] {
        let yaml = format!(
            r#"
listeners: [{{ name: l, address: "127.0.0.1:0", routeTable: rt, accessLog: {log} }}]
routeTables: [{{ name: rt, virtualHosts: [{{ name: all, domains: ["*"], routes: [] }}] }}]
"#
        );
        let bootstrap = gridmesh_config::parse_bootstrap(&yaml, "test.yaml").unwrap();
        let error = gridmesh_config::build_snapshot(bootstrap, "test.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("accessLog") && error.contains(problem),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_that_cannot_be_opened_fails_the_start() {
    let yaml = r#"
listeners: [{ name: l, address: "127.0.0.1:0", routeTable: rt, accessLog: { path: /nonexistent-dir/access.log } }]
routeTables: [{ name: rt, virtualHosts: [{ name: all, domains: ["*"], routes: [] }] }]
"#;
    let error = gridmesh_proxy::Proxy::builder(harness::snapshot(yaml))
        .start()
        .await
        .err()
        .expect("the start fails")
        .to_string();
    assert!(
        error.contains("cannot open its access log /nonexistent-dir/access.log"),
        "{error}"
    );
}
