//! The sidecar's delta ADS client against a scripted control plane
//! (`gridmesh_tests::xds_script`): every request the proxy sends is checked,
//! and every response is written by the test. The proxy runs in process
//! with a bootstrap that has nothing but `admin` and `xds`; its listeners,
//! routes, clusters and endpoints all come over the stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gridmesh_proto::resource::Kind;
use gridmesh_tests::harness::{self, TestProxy, get, http1_client, render, upstream, within};
use gridmesh_tests::ports::ReservedPort;
use gridmesh_tests::upstream::UpstreamHandle;
use gridmesh_tests::xds_script::{ScriptServer, ScriptStream, parse, resources, resources_yaml};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::net::TcpStream;

/// Listener `in` -> route table `rt` -> cluster `up` (plus an unused
/// cluster `b`, so routes can move to it).
fn config(listen: &str, up: &[SocketAddr], b: &[SocketAddr]) -> String {
    render(
        r#"
listeners:
  - { name: in, address: "${listen}", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: all, route: { cluster: up } }] }]
clusters: [{ name: up, connectTimeout: 1s }, { name: b, connectTimeout: 1s }]
endpoints:
  - { cluster: up, endpoints: ${up} }
  - { cluster: b, endpoints: ${b} }
"#,
        &[
            ("listen", &listen),
            ("up", &harness::endpoints(up)),
            ("b", &harness::endpoints(b)),
        ],
    )
}

fn route_to(table: &str, cluster: &str) -> String {
    render(
        r#"
routeTables:
  - name: ${table}
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: all, route: { cluster: ${cluster} } }] }]
"#,
        &[("table", &table), ("cluster", &cluster)],
    )
}

async fn sidecar(cp: &ScriptServer, extra: &str) -> TestProxy {
    harness::proxy(&format!(
        "xds: {{ address: \"{}\"{extra} }}\ndrainTimeout: 1s\n",
        cp.addr()
    ))
    .await
}

/// A control plane, a sidecar following it, and a stream on which the
/// sidecar has subscribed and ACKed `config` at version "1".
struct Setup {
    cp: ScriptServer,
    proxy: TestProxy,
    stream: ScriptStream,
    a: UpstreamHandle,
    b: UpstreamHandle,
}

async fn setup_on(listen: &str) -> Setup {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let mut cp = ScriptServer::start().await;
    let proxy = sidecar(&cp, "").await;
    let mut stream = cp.next_stream().await;
    stream.subscriptions().await;
    let set = parse(&config(listen, &[a.local_addr()], &[b.local_addr()]));
    stream.serve(&set, "1").await;
    Setup {
        cp,
        proxy,
        stream,
        a,
        b,
    }
}

async fn setup() -> Setup {
    setup_on("127.0.0.1:0").await
}

/// Which upstream answers a fresh request on listener `listener`.
async fn answered_by(proxy: &TestProxy, listener: &str) -> String {
    let reply = http1_client()
        .get(proxy.addr(listener), "svc", "/echo")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.upstream().unwrap_or_default().to_string()
}

async fn config_dump(proxy: &TestProxy) -> serde_json::Value {
    let (status, body) = proxy.admin_get("/config_dump").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).expect("config_dump is JSON")
}

/// The version `/config_dump` shows for a resource.
fn served_version(dump: &serde_json::Value, kind: Kind, name: &str) -> Option<String> {
    dump["resources"][kind.label()]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .map(|r| r["version"].as_str().unwrap_or_default().to_string())
}

async fn refuses_connections(addr: SocketAddr) {
    within("the listener to stop accepting", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn subscribes_to_every_kind_in_order_with_the_node_on_the_first_request_only() {
    let mut cp = ScriptServer::start().await;
    let _proxy = sidecar(&cp, "").await;
    let mut stream = cp.next_stream().await;
    let requests = stream.subscriptions().await;

    let urls: Vec<&str> = requests.iter().map(|r| r.type_url.as_str()).collect();
    let expected: Vec<&str> = Kind::PUSH_ORDER.iter().map(|k| k.type_url()).collect();
    assert_eq!(
        urls, expected,
        "clusters, endpoints, authorization policies, listeners, route tables"
    );
    let node = requests[0]
        .node
        .as_ref()
        .expect("node on the first request");
    assert!(!node.id.is_empty());
    assert_eq!(node.user_agent_name, "gridmesh-proxy");
    for r in &requests {
        assert_eq!(r.resource_names_subscribe, ["*"], "wildcard: {r:?}");
        assert!(
            r.initial_resource_versions.is_empty(),
            "nothing held yet: {r:?}"
        );
        assert!(
            r.response_nonce.is_empty() && r.error_detail.is_none(),
            "{r:?}"
        );
    }
    assert!(
        requests[1..].iter().all(|r| r.node.is_none()),
        "the node goes with the first request only"
    );
}

#[tokio::test]
async fn named_listeners_are_subscribed_by_name_when_the_bootstrap_lists_them() {
    let mut cp = ScriptServer::start().await;
    let _proxy = sidecar(&cp, ", listeners: [in, out]").await;
    let mut stream = cp.next_stream().await;
    for r in stream.subscriptions().await {
        if r.type_url == Kind::Listener.type_url() {
            assert_eq!(r.resource_names_subscribe, ["in", "out"]);
        } else {
            assert_eq!(r.resource_names_subscribe, ["*"], "{}", r.type_url);
        }
    }
}

#[tokio::test]
async fn ready_only_once_every_kind_has_answered_then_traffic_flows_over_the_xds_listener() {
    let a = upstream("a").await;
    let mut cp = ScriptServer::start().await;
    let proxy = sidecar(&cp, "").await;
    let mut stream = cp.next_stream().await;
    stream.subscriptions().await;
    let set = parse(&config("127.0.0.1:0", &[a.local_addr()], &[a.local_addr()]));

    assert_eq!(
        proxy.admin_get("/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    for kind in Kind::PUSH_ORDER {
        let nonce = stream.push(kind, resources(kind, &set, "1"), &[]);
        let ack = stream.ack(&nonce).await;
        // An ACK is the type and the nonce, nothing else.
        assert_eq!(ack.type_url, kind.type_url());
        assert!(ack.node.is_none() && ack.resource_names_subscribe.is_empty());
        assert!(ack.initial_resource_versions.is_empty());
        let ready = proxy.admin_get("/ready").await.0;
        if Some(&kind) == Kind::PUSH_ORDER.last() {
            assert_eq!(ready, StatusCode::OK, "every kind has answered");
        } else {
            assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "after {kind}");
        }
    }
    assert_eq!(answered_by(&proxy, "in").await, "a");

    let dump = config_dump(&proxy).await;
    assert_eq!(
        served_version(&dump, Kind::RouteTable, "rt").as_deref(),
        Some("1")
    );
    let source = &dump["resources"]["listener"][0]["source"];
    assert_eq!(source, &serde_json::json!(format!("xds:{}", cp.addr())));
    assert_eq!(dump["xds"]["connected"], true);
}

#[tokio::test]
async fn ready_waits_for_kinds_the_control_plane_has_nothing_of() {
    let mut cp = ScriptServer::start().await;
    let proxy = sidecar(&cp, "").await;
    let mut stream = cp.next_stream().await;
    stream.subscriptions().await;
    let (last, first) = Kind::PUSH_ORDER.split_last().expect("kinds");
    for &kind in first {
        let nonce = stream.push(kind, Vec::new(), &[]);
        stream.ack(&nonce).await;
    }
    assert_eq!(
        proxy.admin_get("/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let nonce = stream.push(*last, Vec::new(), &[]);
    stream.ack(&nonce).await;
    assert_eq!(proxy.admin_get("/ready").await.0, StatusCode::OK);
}

#[tokio::test]
async fn bad_resources_are_nacked_by_name_and_the_last_good_config_keeps_serving() {
    let Setup {
        proxy,
        mut stream,
        cp: _cp,
        a: _a,
        b: _b,
    } = setup().await;

    let bad_regex = r#"
routeTables:
  - name: rt
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: r, match: { regex: "(" }, route: { cluster: b } }] }]
"#;
    let nonce = stream.push(
        Kind::RouteTable,
        resources_yaml(Kind::RouteTable, bad_regex, "2"),
        &[],
    );
    let message = stream.nack(&nonce).await;
    assert!(message.contains("routeTable \"rt\""), "{message}");
    assert!(message.contains("match.regex"), "{message}");
    assert_eq!(
        answered_by(&proxy, "in").await,
        "a",
        "the last good table serves"
    );

    let missing = route_to("rt", "nope");
    let nonce = stream.push(
        Kind::RouteTable,
        resources_yaml(Kind::RouteTable, &missing, "3"),
        &[],
    );
    let message = stream.nack(&nonce).await;
    assert!(message.contains("routeTable \"rt\""), "{message}");
    assert!(message.contains("nope"), "{message}");
    assert_eq!(answered_by(&proxy, "in").await, "a");

    // Bytes that are no Listener at all, next to a good new listener.
    let mut sent = resources_yaml(
        Kind::Listener,
        r#"listeners: [{ name: second, address: "127.0.0.1:0", routeTable: rt }]"#,
        "2",
    );
    let mut junk = sent[0].clone();
    junk.name = "junk".into();
    junk.resource.as_mut().unwrap().value = vec![0xff, 0xff, 0xff].into();
    sent.push(junk);
    let nonce = stream.push(Kind::Listener, sent, &[]);
    let message = stream.nack(&nonce).await;
    assert!(message.contains("\"junk\""), "{message}");
    assert!(!message.contains("\"second\""), "{message}");
    assert_eq!(answered_by(&proxy, "second").await, "a", "the rest applied");
    assert_eq!(answered_by(&proxy, "in").await, "a");

    let unknown = "type.googleapis.com/gridmesh.v1.Nope";
    let nonce = stream.push_type(unknown, Vec::new(), &[]);
    let message = stream.nack(&nonce).await;
    assert!(message.contains(unknown), "{message}");

    let dump = config_dump(&proxy).await;
    assert_eq!(
        served_version(&dump, Kind::RouteTable, "rt").as_deref(),
        Some("1")
    );
    let rejected = dump["xds"]["rejected"]["routeTable"].to_string();
    assert!(rejected.contains("nope"), "{rejected}");

    // And a good update is still taken.
    let nonce = stream.push(
        Kind::RouteTable,
        resources_yaml(Kind::RouteTable, &route_to("rt", "b"), "4"),
        &[],
    );
    stream.ack(&nonce).await;
    assert_eq!(answered_by(&proxy, "in").await, "b");
}

#[tokio::test]
async fn a_listener_warms_until_its_route_table_arrives() {
    let Setup {
        proxy,
        mut stream,
        cp: _cp,
        a: _a,
        b: _b,
    } = setup().await;
    let listener = r#"listeners: [{ name: second, address: "127.0.0.1:0", routeTable: rt2 }]"#;
    let nonce = stream.push(
        Kind::Listener,
        resources_yaml(Kind::Listener, listener, "2"),
        &[],
    );
    stream.ack(&nonce).await;
    assert_eq!(
        proxy.listener_addr("second"),
        None,
        "not served while warming"
    );
    assert_eq!(
        config_dump(&proxy).await["xds"]["warming"],
        serde_json::json!(["second"])
    );

    let nonce = stream.push(
        Kind::RouteTable,
        resources_yaml(Kind::RouteTable, &route_to("rt2", "b"), "2"),
        &[],
    );
    stream.ack(&nonce).await;
    assert_eq!(answered_by(&proxy, "second").await, "b");
    assert_eq!(
        config_dump(&proxy).await["xds"]["warming"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn a_removed_listener_stops_accepting() {
    // Held for the test: once the listener goes, nothing else can take
    // the port, so a refused connection means the listener is gone.
    let reserved = ReservedPort::new();
    let port = reserved.addr();
    let Setup {
        proxy,
        mut stream,
        cp: _cp,
        a: _a,
        b: _b,
    } = setup_on(&port.to_string()).await;
    assert_eq!(answered_by(&proxy, "in").await, "a");
    let nonce = stream.push(Kind::Listener, Vec::new(), &["in"]);
    stream.ack(&nonce).await;
    refuses_connections(port).await;
    assert_eq!(proxy.listener_addr("in"), None);
}

#[tokio::test]
async fn an_endpoint_update_takes_effect_for_new_requests() {
    let Setup {
        proxy,
        mut stream,
        b,
        cp: _cp,
        a: _a,
    } = setup().await;
    assert_eq!(answered_by(&proxy, "in").await, "a");
    let moved = render(
        "endpoints: [{ cluster: up, endpoints: ${b} }]",
        &[("b", &harness::endpoints(&[b.local_addr()]))],
    );
    let nonce = stream.push(
        Kind::Endpoints,
        resources_yaml(Kind::Endpoints, &moved, "2"),
        &[],
    );
    stream.ack(&nonce).await;
    for _ in 0..3 {
        assert_eq!(answered_by(&proxy, "in").await, "b");
    }
}

/// What `/clusters` shows of one cluster.
async fn cluster_status(proxy: &TestProxy, name: &str) -> serde_json::Value {
    let (status, body) = proxy.admin_get("/clusters").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let clusters: serde_json::Value = serde_json::from_str(&body).expect("/clusters is JSON");
    clusters
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no cluster {name} in {clusters}"))
}

/// Updates of every kind that do not carry cluster `up` — another
/// cluster's settings and endpoints, a cluster added and one removed ahead
/// of it, a route table — leave `up` as it was: its pooled connection, the
/// request its breaker counts in flight, its endpoint's counters.
#[tokio::test]
async fn updates_leave_the_clusters_they_do_not_carry_as_they_are() {
    let Setup {
        proxy,
        mut stream,
        a,
        cp: _cp,
        b: _b,
    } = setup().await;
    // A streaming response held open across the updates, and a pooled
    // connection beside it.
    let mut open = http1_client().connect(proxy.addr("in")).await;
    let mut events = open
        .send(get("svc", "/sse?count=100&interval_ms=50"))
        .await
        .expect("the stream starts")
        .into_body();
    let first = events.frame().await.expect("a first event");
    assert!(first.is_ok(), "{first:?}");
    for _ in 0..3 {
        assert_eq!(answered_by(&proxy, "in").await, "a");
    }
    let before = cluster_status(&proxy, "up").await;
    assert_eq!(before["requestsInFlight"], 1, "{before}");
    assert_eq!(before["connectionsOpen"], 2, "{before}");
    assert_eq!(before["endpoints"][0]["requests"], 4, "{before}");
    assert_eq!(a.stats().connections(), 2);

    let updates = [
        (
            Kind::Cluster,
            "clusters: [{ name: b, connectTimeout: 2s }, { name: c }]",
            &[][..],
        ),
        (
            Kind::Endpoints,
            "endpoints: [{ cluster: c, endpoints: [] }]",
            &[],
        ),
        (Kind::RouteTable, &route_to("other", "c"), &[]),
        (Kind::Endpoints, "endpoints: []", &["b"]),
        (Kind::Cluster, "clusters: []", &["b"]),
    ];
    for (kind, yaml, removed) in updates {
        let nonce = stream.push(kind, resources_yaml(kind, yaml, "2"), removed);
        stream.ack(&nonce).await;
    }
    let names: Vec<String> = {
        let (_, body) = proxy.admin_get("/clusters").await;
        let clusters: serde_json::Value = serde_json::from_str(&body).unwrap();
        let all = clusters.as_array().cloned().unwrap_or_default();
        all.iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names, ["up", "c"], "the updates applied");

    let after = cluster_status(&proxy, "up").await;
    assert_eq!(after["requestsInFlight"], 1, "{after}");
    assert_eq!(after["connectionsOpen"], 2, "{after}");
    assert_eq!(after["endpoints"][0]["requests"], 4, "{after}");
    drop(events);
    drop(open);
    for _ in 0..3 {
        assert_eq!(answered_by(&proxy, "in").await, "a");
    }
    assert_eq!(
        a.stats().connections(),
        2,
        "the pooled connection served on"
    );
}

#[tokio::test]
async fn a_route_change_keeps_downstream_connections() {
    let Setup {
        proxy,
        mut stream,
        cp: _cp,
        a: _a,
        b: _b,
    } = setup().await;
    // A second table ahead of rt, so that rt's update reorders the tables.
    let nonce = stream.push(
        Kind::RouteTable,
        resources_yaml(Kind::RouteTable, &route_to("other", "b"), "1"),
        &[],
    );
    stream.ack(&nonce).await;
    let mut conn = http1_client().connect(proxy.addr("in")).await;
    let first = harness::collect(conn.send(get("svc", "/echo")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(first.upstream(), Some("a"));

    let nonce = stream.push(
        Kind::RouteTable,
        resources_yaml(Kind::RouteTable, &route_to("rt", "b"), "2"),
        &[],
    );
    stream.ack(&nonce).await;
    // Same connection, new route.
    for _ in 0..2 {
        let rsp = conn
            .send(get("svc", "/echo"))
            .await
            .expect("the keep-alive connection survives a route change");
        let reply = harness::collect(rsp).await.unwrap();
        assert_eq!(reply.upstream(), Some("b"));
        assert_eq!(reply.header("connection"), None, "not closing: {reply:?}");
    }
}

#[tokio::test]
async fn a_cut_stream_reconnects_with_the_acked_versions_and_not_the_rejected_ones() {
    let Setup {
        mut cp,
        proxy,
        mut stream,
        a: _a,
        b: _b,
    } = setup().await;
    let nonce = stream.push(
        Kind::RouteTable,
        resources_yaml(Kind::RouteTable, &route_to("rt", "nope"), "2"),
        &[],
    );
    stream.nack(&nonce).await;
    let nonce = stream.push(
        Kind::Endpoints,
        resources_yaml(
            Kind::Endpoints,
            "endpoints: [{ cluster: up, endpoints: [] }]",
            "2",
        ),
        &[],
    );
    stream.ack(&nonce).await;

    let cut = Instant::now();
    stream.cut(tonic::Status::unavailable("control plane restarting"));
    let mut again = cp.next_stream().await;
    let requests = again.subscriptions().await;
    let waited = cut.elapsed();
    // One working stream ended: the first retry comes after the shortest
    // backoff (10ms), not after seconds.
    assert!(
        waited < Duration::from_millis(500),
        "reconnected after {waited:?}"
    );

    let versions = |kind: Kind| {
        let r = requests
            .iter()
            .find(|r| r.type_url == kind.type_url())
            .unwrap();
        let mut v: Vec<(String, String)> =
            r.initial_resource_versions.clone().into_iter().collect();
        v.sort();
        v
    };
    let v = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(versions(Kind::Cluster), v(&[("b", "1"), ("up", "1")]));
    assert_eq!(versions(Kind::Endpoints), v(&[("b", "1"), ("up", "2")]));
    assert_eq!(versions(Kind::Listener), v(&[("in", "1")]));
    assert_eq!(
        versions(Kind::RouteTable),
        v(&[("rt", "1")]),
        "not the NACKed 2"
    );
    assert!(
        requests[0].node.is_some(),
        "the node again on the new stream"
    );
    // Still serving what it had (endpoints of `up` are now empty).
    let reply = http1_client().get(proxy.addr("in"), "svc", "/echo").await;
    assert_eq!(reply.error(), Some("no_healthy_upstream"), "{reply:?}");
}

#[tokio::test]
async fn with_the_control_plane_gone_the_proxy_keeps_serving_and_reconnects_on_the_same_port() {
    let Setup {
        mut cp,
        proxy,
        stream,
        a: _a,
        b: _b,
    } = setup().await;
    drop(stream);
    cp.stop().await;
    within("the proxy to notice the control plane is gone", async {
        while config_dump(&proxy).await["xds"]["connected"] != false {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // It keeps serving, and stays ready, through failed reconnects.
    let reconnects = |dump: serde_json::Value| dump["xds"]["reconnects"].as_u64().unwrap();
    let tried = reconnects(config_dump(&proxy).await);
    within("reconnects to fail", async {
        while reconnects(config_dump(&proxy).await) < tried + 3 {
            assert_eq!(answered_by(&proxy, "in").await, "a");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        proxy.admin_get("/ready").await.0,
        StatusCode::OK,
        "still ready"
    );

    cp.restart().await;
    // Backoff after a few failures is well under a second.
    let mut stream = cp.next_stream().await;
    let requests = stream.subscriptions().await;
    let listeners = requests
        .iter()
        .find(|r| r.type_url == Kind::Listener.type_url())
        .unwrap();
    assert_eq!(
        listeners
            .initial_resource_versions
            .get("in")
            .map(String::as_str),
        Some("1")
    );
    let nonce = stream.push(
        Kind::RouteTable,
        resources_yaml(Kind::RouteTable, &route_to("rt", "b"), "2"),
        &[],
    );
    stream.ack(&nonce).await;
    assert_eq!(answered_by(&proxy, "in").await, "b");
}

/// Listeners "taken" (on a port something else holds, returned to keep it
/// held) and "free", both routed with `table`.
fn taken_and_free_listeners(table: &str) -> (std::net::TcpListener, String) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listeners = render(
        r#"
listeners:
  - { name: taken, address: "${taken}", routeTable: ${table} }
  - { name: free, address: "127.0.0.1:0", routeTable: ${table} }
"#,
        &[("taken", &taken.local_addr().unwrap()), ("table", &table)],
    );
    (taken, listeners)
}

#[tokio::test]
async fn a_listener_whose_port_is_taken_is_nacked_and_the_rest_applies() {
    let Setup {
        proxy,
        mut stream,
        cp: _cp,
        a: _a,
        b: _b,
    } = setup().await;
    let (_held, listeners) = taken_and_free_listeners("rt");
    let nonce = stream.push(
        Kind::Listener,
        resources_yaml(Kind::Listener, &listeners, "2"),
        &[],
    );
    let message = stream.nack(&nonce).await;
    assert!(message.contains("\"taken\""), "{message}");
    assert!(!message.contains("\"free\""), "{message}");
    assert_eq!(answered_by(&proxy, "free").await, "a");
    assert_eq!(answered_by(&proxy, "in").await, "a");
    assert_eq!(proxy.listener_addr("taken"), None);
    let dump = config_dump(&proxy).await;
    assert_eq!(
        served_version(&dump, Kind::Listener, "free").as_deref(),
        Some("2")
    );
    assert_eq!(served_version(&dump, Kind::Listener, "taken"), None);
}

/// The usual order: the listener arrives first (warming), its route table
/// next, and only then is there something to bind. A taken port then
/// refuses that listener alone: the route table applies, a listener sharing
/// it serves, and the NACK names the listener that could not bind.
#[tokio::test]
async fn a_warming_listener_whose_port_is_taken_does_not_hold_back_its_route_table() {
    let Setup {
        proxy,
        mut stream,
        cp: _cp,
        a: _a,
        b: _b,
    } = setup().await;
    let (taken, listeners) = taken_and_free_listeners("rt2");
    let nonce = stream.push(
        Kind::Listener,
        resources_yaml(Kind::Listener, &listeners, "2"),
        &[],
    );
    stream.ack(&nonce).await;

    let nonce = stream.push(
        Kind::RouteTable,
        resources_yaml(Kind::RouteTable, &route_to("rt2", "b"), "2"),
        &[],
    );
    let message = stream.nack(&nonce).await;
    assert!(message.contains("\"taken\""), "{message}");
    assert!(!message.contains("rt2"), "{message}");
    assert_eq!(answered_by(&proxy, "free").await, "b");
    assert_eq!(proxy.listener_addr("taken"), None);
    let dump = config_dump(&proxy).await;
    assert_eq!(
        served_version(&dump, Kind::RouteTable, "rt2").as_deref(),
        Some("2")
    );

    // Once the control plane changes the listener, it is tried again.
    drop(taken);
    let nonce = stream.push(
        Kind::Listener,
        resources_yaml(Kind::Listener, &listeners, "3"),
        &[],
    );
    stream.ack(&nonce).await;
    assert!(
        proxy.listener_addr("taken").is_some(),
        "{:#}",
        config_dump(&proxy).await["resources"]
    );
}
