//! The admin server: `/ready`, `/live`, `/metrics` after real traffic,
//! `/config_dump`, `/clusters`, errors for unknown paths and wrong methods,
//! and its loopback-only default.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use gridmesh_proto::config::Bootstrap;
use gridmesh_proto::testing::EchoRequest;
use gridmesh_tests::harness::{
    self, TestProxy, collect, get, grpc_echo_client, http1_client, render, within,
};
use gridmesh_tests::ports::RefusingPort;
use gridmesh_tests::process::{self, GRIDMESH_PROXY, ProxyConfig, ProxyProcess};
use gridmesh_tests::prometheus;
use gridmesh_tests::upstream::UpstreamHandle;
use http::StatusCode;
use tonic::Code;

const YAML: &str = r#"
admin: { address: "127.0.0.1:0" }
drainTimeout: 1s
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["svc"]
        routes:
          - { name: dead, match: { prefix: /dead }, route: { cluster: dead } }
          - { name: all, route: { cluster: up, retryPolicy: { maxRetries: 1, retryOn: [UNAVAILABLE_503], backoff: 0.001s } } }
clusters:
  - { name: up, lbPolicy: ROUND_ROBIN, connectTimeout: 1s }
  - { name: dead, connectTimeout: 0.5s }
endpoints:
  - { cluster: up, endpoints: ${up} }
  - { cluster: dead, endpoints: ${dead} }
"#;

struct Setup {
    proxy: TestProxy,
    yaml: String,
    upstreams: Vec<UpstreamHandle>,
    dead: RefusingPort,
}

async fn setup() -> Setup {
    let upstreams = vec![harness::upstream("a").await, harness::upstream("b").await];
    let dead = RefusingPort::new();
    let up: Vec<SocketAddr> = upstreams.iter().map(|u| u.local_addr()).collect();
    let yaml = render(
        YAML,
        &[
            ("up", &harness::endpoints(&up)),
            ("dead", &harness::endpoints(&[dead.addr()])),
        ],
    );
    let proxy = harness::proxy(&yaml).await;
    Setup {
        proxy,
        yaml,
        upstreams,
        dead,
    }
}

/// Every series (name and labels) in the text.
fn series(metrics: &str) -> BTreeSet<(String, Vec<(String, String)>)> {
    prometheus::parse(metrics)
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.labels))
        .collect()
}

#[tokio::test]
async fn ready_and_live() {
    let s = setup().await;
    assert_eq!(
        s.proxy.admin_get("/ready").await,
        (StatusCode::OK, "ready\n".into())
    );
    assert_eq!(
        s.proxy.admin_get("/live").await,
        (StatusCode::OK, "live\n".into())
    );
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods() {
    let s = setup().await;
    let (status, body) = s.proxy.admin_get("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body.contains("/metrics"),
        "the 404 lists what exists: {body}"
    );
    assert_eq!(
        s.proxy.admin_get("/metrics/extra").await.0,
        StatusCode::NOT_FOUND
    );
    for path in ["/ready", "/live", "/metrics", "/config_dump", "/clusters"] {
        assert_eq!(
            s.proxy.admin_post(path).await.0,
            StatusCode::METHOD_NOT_ALLOWED,
            "POST {path}"
        );
    }
    // Draining is never a GET: a crawler or a probe must not drain.
    assert_eq!(
        s.proxy.admin_get("/drain").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(s.proxy.admin_get("/ready").await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_after_traffic() {
    let s = setup().await;
    let addr = s.proxy.addr("in");
    for _ in 0..4 {
        let reply = http1_client().get(addr, "svc", "/echo").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // 404 from upstream, 503 from upstream (retried once), route not found,
    // connect failure to the dead cluster.
    assert_eq!(
        http1_client().get(addr, "svc", "/status/404").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http1_client().get(addr, "svc", "/status/503").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let reply = http1_client().get(addr, "other-host", "/echo").await;
    assert_eq!(reply.error(), Some("route_not_found"));
    let reply = http1_client().get(addr, "svc", "/dead").await;
    assert_eq!(reply.error(), Some("upstream_connect_failure"));
    let mut grpc = grpc_echo_client(addr, "svc").await;
    within("unary", grpc.unary(EchoRequest::default()))
        .await
        .unwrap();
    let status = within(
        "unary",
        grpc.unary(EchoRequest {
            fail_with_code: Code::NotFound as i32,
            ..Default::default()
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Open one more connection and keep it while reading the metrics.
    let mut open = http1_client().connect(addr).await;
    collect(open.send(get("svc", "/echo")).await.unwrap())
        .await
        .unwrap();

    let m = s.proxy.metrics().await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        prometheus::value(&m, name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in:\n{m}"))
    };
    let up = [("cluster", "up")];
    // 4 + 404 + 503 + route miss + dead + 2 gRPC + 1 = 11 requests.
    assert_eq!(
        value("gridmesh_downstream_requests_total", &[("listener", "in")]),
        11.0,
        "{m}"
    );
    assert_eq!(value("gridmesh_upstream_requests_total", &up), 9.0, "{m}");
    let responses = |code: &str, grpc: &str| {
        value(
            "gridmesh_upstream_responses_total",
            &[("cluster", "up"), ("code", code), ("grpc_status", grpc)],
        )
    };
    assert_eq!(responses("200", ""), 5.0, "{m}");
    assert_eq!(responses("404", ""), 1.0, "{m}");
    assert_eq!(responses("503", ""), 1.0, "{m}");
    assert_eq!(responses("200", "0"), 1.0, "{m}");
    assert_eq!(
        responses("200", "5"),
        1.0,
        "gRPC NOT_FOUND by its code: {m}"
    );
    assert_eq!(value("gridmesh_upstream_retries_total", &up), 1.0, "{m}");

    // The same requests as Istio counts them: a listener without a
    // direction reports as the source; replies the proxy made carry
    // Envoy's response flags.
    let istio = |labels: &[(&str, &str)]| {
        let labels = [&[("reporter", "source")], labels].concat();
        prometheus::sum(&m, "istio_requests_total", &labels)
            .unwrap_or_else(|| panic!("no istio_requests_total {labels:?} in:\n{m}"))
    };
    assert_eq!(istio(&[]), 11.0, "{m}");
    let http_ok = [
        ("destination_service", "up"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    assert_eq!(istio(&http_ok), 5.0, "{m}");
    let no_route = [("destination_service", "unknown"), ("response_flags", "NR")];
    assert_eq!(
        istio(&[&no_route[..], &[("response_code", "404")]].concat()),
        1.0
    );
    let dead = [("destination_service", "dead"), ("response_flags", "UF")];
    assert_eq!(
        istio(&[&dead[..], &[("response_code", "503")]].concat()),
        1.0
    );
    for grpc_status in ["0", "5"] {
        let grpc = [
            ("request_protocol", "grpc"),
            ("grpc_response_status", grpc_status),
        ];
        assert_eq!(istio(&grpc), 1.0, "{m}");
    }
    let count = prometheus::sum(&m, "istio_request_duration_milliseconds_count", &http_ok);
    assert_eq!(count, Some(5.0), "{m}");
    assert_eq!(
        value(
            "gridmesh_local_replies_total",
            &[("listener", "in"), ("reason", "route_not_found")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        value(
            "gridmesh_local_replies_total",
            &[("listener", "in"), ("reason", "upstream_connect_failure")]
        ),
        1.0,
        "{m}"
    );
    assert!(
        value("gridmesh_upstream_connections_total", &up) >= 2.0,
        "{m}"
    );
    assert!(
        value(
            "gridmesh_upstream_connect_errors_total",
            &[("cluster", "dead")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        value("gridmesh_upstream_connections_active", &up) >= 1.0,
        "{m}"
    );
    // The open HTTP/1.1 and gRPC connections (the one-shot clients'
    // connections close as they go).
    within("two connections active", async {
        loop {
            let v = s
                .proxy
                .metric(
                    "gridmesh_downstream_connections_active",
                    &[("listener", "in")],
                )
                .await
                .expect("the listener's active connections gauge");
            if v == 2.0 {
                break;
            }
            assert!(v > 2.0, "fewer connections active than open: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        value(
            "gridmesh_downstream_connections_total",
            &[("listener", "in")]
        ) == 10.0,
        "8 one-shot connections, the gRPC one and the open one: {m}"
    );

    // Latency histograms: cumulative buckets ending in +Inf == count.
    for histogram in [
        "gridmesh_upstream_request_duration_seconds",
        "gridmesh_upstream_response_headers_seconds",
    ] {
        let buckets: Vec<f64> = prometheus::parse(&m)
            .unwrap()
            .into_iter()
            .filter(|s| s.name == format!("{histogram}_bucket") && s.has(&up))
            .map(|s| s.value)
            .collect();
        assert!(buckets.len() >= 10, "{histogram}: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{histogram} not cumulative"
        );
        let count = value(&format!("{histogram}_count"), &up);
        assert_eq!(
            *buckets.last().unwrap(),
            count,
            "{histogram}: +Inf != count"
        );
        assert!(count >= 9.0, "{histogram}_count = {count}");
        assert!(m.contains(&format!("{histogram}_bucket{{cluster=\"up\",le=\"+Inf\"}}")));
    }

    // Closing a connection brings the gauge down.
    drop(open);
    drop(grpc);
    within("connections to close", async {
        loop {
            let v = s
                .proxy
                .metric(
                    "gridmesh_downstream_connections_active",
                    &[("listener", "in")],
                )
                .await
                .expect("the listener's active connections gauge");
            if v == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(s.upstreams);
}

#[tokio::test]
async fn metric_label_cardinality_is_bounded() {
    let s = setup().await;
    let addr = s.proxy.addr("in");
    let mut conn = http1_client().connect(addr).await;
    for i in 0..10 {
        let rsp = conn.send(get("svc", &format!("/path/{i}"))).await.unwrap();
        collect(rsp).await.unwrap();
    }
    let before = series(&s.proxy.metrics().await);
    for i in 10..210 {
        let path = format!("/path/{i}?user={i}");
        let mut req = get("svc", &path);
        req.headers_mut().insert(
            "x-user",
            http::HeaderValue::from_str(&format!("u{i}")).unwrap(),
        );
        let rsp = conn.send(req).await.unwrap();
        collect(rsp).await.unwrap();
    }
    let text = s.proxy.metrics().await;
    let after = series(&text);
    assert_eq!(
        after,
        before,
        "200 distinct paths added series: {:?}",
        after.difference(&before).collect::<Vec<_>>()
    );
    assert!(!text.contains("/path/"), "a path leaked into a label");
    assert_eq!(
        prometheus::value(
            &text,
            "gridmesh_downstream_requests_total",
            &[("listener", "in")]
        ),
        Some(210.0)
    );
}

#[tokio::test]
async fn config_dump_round_trips_the_bootstrap() {
    let s = setup().await;
    let (status, body) = s.proxy.admin_get("/config_dump").await;
    assert_eq!(status, StatusCode::OK);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["source"], "test.yaml", "{body}");
    let dumped: Bootstrap = serde_json::from_value(dump["bootstrap"].clone()).unwrap();
    let original = process::parse_bootstrap(&s.yaml).unwrap();
    assert_eq!(dumped, original);
    // What is dumped loads again as a bootstrap (JSON is YAML).
    let reloaded = gridmesh_config::load_str(
        &serde_json::to_string(&dump["bootstrap"]).unwrap(),
        "dump.json",
    )
    .unwrap();
    assert_eq!(reloaded.bootstrap, original);
    // Durations use the proto3 JSON form.
    assert_eq!(dump["bootstrap"]["drainTimeout"], "1s", "{body}");
}

#[tokio::test]
async fn config_dump_names_the_file_of_the_real_binary() {
    let up = harness::upstream("a").await;
    let yaml = render(
        r#"
admin: { address: "127.0.0.1:0" }
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - { name: rt, virtualHosts: [{ name: all, domains: ["*"], routes: [{ route: { cluster: up } }] }] }
clusters: [{ name: up }]
endpoints: [{ cluster: up, endpoints: ${up} }]
"#,
        &[("up", &harness::endpoints(&[up.local_addr()]))],
    );
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    let mut proxy = ProxyProcess::start(
        &binary,
        "admin-dump",
        ProxyConfig::Yaml(yaml.clone()),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let dump = proxy.admin_get("/config_dump").await.unwrap();
    assert_eq!(dump.status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
    assert_eq!(
        dump["source"].as_str(),
        Some(proxy.config_path().display().to_string().as_str())
    );
    let dumped: Bootstrap = serde_json::from_value(dump["bootstrap"].clone()).unwrap();
    assert_eq!(dumped, process::parse_bootstrap(&yaml).unwrap());
    let status = proxy.terminate(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn clusters_show_endpoints_with_stats() {
    let s = setup().await;
    let addr = s.proxy.addr("in");
    for _ in 0..6 {
        http1_client().get(addr, "svc", "/echo").await;
    }
    http1_client().get(addr, "svc", "/dead").await;
    let (status, body) = s.proxy.admin_get("/clusters").await;
    assert_eq!(status, StatusCode::OK);
    let clusters: serde_json::Value = serde_json::from_str(&body).unwrap();
    let clusters = clusters.as_array().expect("a list of clusters");
    let by_name = |name: &str| {
        clusters
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name} in {body}"))
    };
    let up = by_name("up");
    assert_eq!(up["lbPolicy"], "ROUND_ROBIN");
    let endpoints = up["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    let mut total = 0;
    for (endpoint, upstream) in endpoints.iter().zip(&s.upstreams) {
        assert_eq!(
            endpoint["address"],
            upstream.local_addr().to_string(),
            "{body}"
        );
        assert_eq!(endpoint["requestsInFlight"], 0, "{body}");
        assert_eq!(endpoint["weight"], 1);
        assert_eq!(endpoint["requests"], 3, "round robin over 6: {body}");
        assert_eq!(endpoint["failures"], 0);
        total += endpoint["requests"].as_u64().unwrap();
    }
    assert_eq!(total, 6);
    let dead = &by_name("dead")["endpoints"][0];
    assert_eq!(dead["address"], s.dead.addr().to_string());
    assert_eq!(dead["failures"], 1, "{body}");
}

#[tokio::test]
async fn admin_is_loopback_by_default() {
    let yaml = r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - { name: rt, virtualHosts: [{ name: all, domains: ["*"], routes: [{ route: { cluster: up } }] }] }
clusters: [{ name: up }]
"#;
    let snapshot = gridmesh_config::load_str(yaml, "default.yaml").unwrap();
    assert_eq!(snapshot.admin_addr, "127.0.0.1:15000".parse().unwrap());
    assert!(snapshot.admin_addr.ip().is_loopback());
    let s = setup().await;
    assert!(s.proxy.admin().ip().is_loopback());
}

/// Under xDS churn `/metrics` must not grow without bound: a cluster or a
/// listener that leaves the config takes its series with it, whatever
/// their other labels (response codes, breakers, reasons).
#[tokio::test]
async fn series_of_removed_clusters_and_listeners_go_with_them() {
    let up = harness::upstream("a").await;
    let config = |i: usize| {
        render(
            r#"
listeners:
  - { name: l${i}, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes: [{ name: all, route: { cluster: c${i} } }]
clusters: [{ name: c${i} }]
endpoints: [{ cluster: c${i}, endpoints: ${up} }]
"#,
            &[("i", &i), ("up", &harness::endpoints(&[up.local_addr()]))],
        )
    };
    let proxy = harness::proxy(&config(0)).await;
    for i in 0..20 {
        if i > 0 {
            proxy.apply(harness::snapshot(&config(i))).unwrap();
        }
        let listener = proxy.addr(&format!("l{i}"));
        assert_eq!(
            http1_client().get(listener, "svc", "/echo").await.status,
            200
        );
        assert_eq!(
            http1_client()
                .get(listener, "svc", "/status/503")
                .await
                .status,
            503
        );
        let text = proxy.metrics().await;
        let (cluster, name) = (format!("c{i}"), format!("l{i}"));
        assert_eq!(
            prometheus::value(
                &text,
                "gridmesh_upstream_responses_total",
                &[("cluster", &cluster), ("code", "503")]
            ),
            Some(1.0),
            "{text}"
        );
        let samples = prometheus::parse(&text).unwrap();
        let labelled = |label: &str| -> BTreeSet<String> {
            samples
                .iter()
                .filter_map(|s| s.label(label).map(str::to_string))
                .collect()
        };
        assert_eq!(labelled("cluster"), BTreeSet::from([cluster]), "{text}");
        assert_eq!(labelled("listener"), BTreeSet::from([name]), "{text}");
    }
}
