//! Hot config changes through `Proxy::apply` (what the xDS client does with
//! every accepted update), under steady load from HTTP/1.1 keep-alive, h2c
//! and gRPC clients: nothing fails, the change takes effect, and what did
//! not change (connections, pools, ports) stays.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridmesh_config::{Snapshot, load_str};
use gridmesh_proto::testing::EchoRequest;
use gridmesh_tests::harness::{
    self, Protocol, TestProxy, collect, get, grpc_echo_client, h2c_client, http1_client, render,
    upstream, within,
};
use gridmesh_tests::ports::ReservedPort;
use gridmesh_tests::upstream::UpstreamHandle;
use http::StatusCode;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

struct Vars<'a> {
    listen: &'a str,
    cluster: &'a str,
    up: &'a [SocketAddr],
    b: &'a [SocketAddr],
    up_settings: &'a str,
    listener_settings: &'a str,
}

impl Default for Vars<'_> {
    fn default() -> Self {
        Vars {
            listen: "127.0.0.1:0",
            cluster: "up",
            up: &[],
            b: &[],
            up_settings: "",
            listener_settings: "",
        }
    }
}

/// Listener `in` routes everything to `cluster` (`up` or `b`).
fn yaml(v: &Vars) -> String {
    render(
        r#"
admin: { address: "127.0.0.1:0" }
drainTimeout: 2s
listeners:
  - { name: in, address: "${listen}", routeTable: rt${listener_settings} }
routeTables:
  - name: rt
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: all, route: { cluster: ${cluster} } }] }]
clusters:
  - { name: up, connectTimeout: 1s${up_settings} }
  - { name: b, connectTimeout: 1s }
endpoints:
  - { cluster: up, endpoints: ${up} }
  - { cluster: b, endpoints: ${b} }
"#,
        &[
            ("listen", &v.listen),
            ("cluster", &v.cluster),
            ("up", &harness::endpoints(v.up)),
            ("b", &harness::endpoints(v.b)),
            ("up_settings", &v.up_settings),
            ("listener_settings", &v.listener_settings),
        ],
    )
}

fn snapshot(v: &Vars) -> Snapshot {
    load_str(&yaml(v), "hot_apply.yaml").unwrap_or_else(|e| panic!("{e}"))
}

async fn start(v: &Vars<'_>) -> TestProxy {
    harness::proxy(&yaml(v)).await
}

/// Clients sending back to back until stopped: two HTTP/1.1 keep-alive
/// connections, one h2c connection with two streams at a time, and a gRPC
/// channel. A client whose connection is closed gracefully (the proxy
/// drained it) opens another, as real clients do; any error response or
/// failed request counts as a failure.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<u64>>,
    failures: Arc<Mutex<Vec<String>>>,
    /// The upstream of each client's latest answer.
    latest: Arc<Mutex<Vec<String>>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let latest = Arc::new(Mutex::new(vec![String::new(); 5]));
        let mut tasks = Vec::new();
        for (i, protocol) in [
            Protocol::Http1,
            Protocol::Http1,
            Protocol::H2c,
            Protocol::H2c,
        ]
        .into_iter()
        .enumerate()
        {
            let (stop, failures, latest) = (stop.clone(), failures.clone(), latest.clone());
            tasks.push(tokio::spawn(async move {
                let client = harness::HttpClient { protocol };
                let mut sent = 0;
                let mut conn = client.connect(addr).await;
                while !stop.load(Ordering::Relaxed) {
                    let result = match conn.send(get("svc", "/echo")).await {
                        Ok(rsp) => collect(rsp).await.map_err(|e| e.to_string()),
                        // The connection had already closed (drained after
                        // a GOAWAY or `Connection: close`) and the request
                        // was never sent: reconnect and send it, as a
                        // pooling client does.
                        Err(e) if not_sent(&*e) => {
                            conn = client.connect(addr).await;
                            continue;
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    sent += 1;
                    match result {
                        Ok(reply) if reply.status == StatusCode::OK => {
                            latest.lock().unwrap()[i] = reply.upstream().unwrap_or("").into();
                            // Closed by the proxy after this answer: reconnect.
                            if reply.header("connection") == Some("close") {
                                conn = client.connect(addr).await;
                            }
                        }
                        Ok(reply) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{protocol:?}: {reply:?}")),
                        Err(e) => {
                            failures.lock().unwrap().push(format!("{protocol:?}: {e}"));
                            conn = client.connect(addr).await;
                        }
                    }
                }
                sent
            }));
        }
        let (stop2, failures2, latest2) = (stop.clone(), failures.clone(), latest.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = grpc_echo_client(addr, "svc").await;
            let mut sent = 0;
            while !stop2.load(Ordering::Relaxed) {
                sent += 1;
                match client.unary(EchoRequest::default()).await {
                    Ok(reply) => latest2.lock().unwrap()[4] = reply.into_inner().server,
                    Err(status) => failures2.lock().unwrap().push(format!("gRPC: {status:?}")),
                }
            }
            sent
        }));
        Load {
            stop,
            tasks,
            failures,
            latest,
        }
    }

    /// Waits until every client's latest answer came from `upstream`.
    async fn all_answered_by(&self, upstream: &str) {
        within("every client to see the change", async {
            while self.latest.lock().unwrap().iter().any(|u| u != upstream) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Stops, and checks that nothing failed and every client got through.
    async fn stop_and_check(self) {
        // Some more traffic after the change.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let sent = within("a load client to stop", task).await.unwrap();
            assert!(sent > 5, "a client got only {sent} requests through");
        }
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{} failed: {failures:#?}",
            failures.len()
        );
    }
}

/// Whether a request failed before any of it was sent: the client's
/// connection was already closed, or the server refused the stream.
fn not_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(|e| e.is_closed() || e.is_canceled())
}

/// Lets the load run a little before the change.
async fn warm_up(load: &Load, upstream: &str) {
    load.all_answered_by(upstream).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
}

struct Two {
    a: UpstreamHandle,
    b: UpstreamHandle,
}

async fn two() -> Two {
    Two {
        a: upstream("a").await,
        b: upstream("b").await,
    }
}

/// Serves from upstream "a" under load, applies the config `change` makes
/// (which must move traffic to upstream "b"), and checks that every client
/// sees "b" and that nothing failed. Returns the proxy for more checks.
async fn change_under_load(
    change: impl for<'a> FnOnce(&mut Vars<'a>, &'a [SocketAddr]),
) -> TestProxy {
    let Two { a, b } = two().await;
    let (up, bs) = ([a.local_addr()], [b.local_addr()]);
    let mut v = Vars {
        up: &up,
        b: &bs,
        ..Default::default()
    };
    let proxy = start(&v).await;
    let load = Load::start(proxy.addr("in"));
    warm_up(&load, "a").await;
    change(&mut v, &bs);
    proxy.apply(snapshot(&v)).unwrap();
    load.all_answered_by("b").await;
    load.stop_and_check().await;
    proxy
}

#[tokio::test]
async fn a_route_change_under_load_fails_nothing_and_takes_effect() {
    change_under_load(|v, _| v.cluster = "b").await;
}

#[tokio::test]
async fn an_endpoint_change_under_load_fails_nothing_and_takes_effect() {
    change_under_load(|v, b| v.up = b).await;
}

#[tokio::test]
async fn a_cluster_settings_change_under_load_fails_nothing_and_takes_effect() {
    // A new cluster (other settings), on other endpoints, so that the
    // effect shows in who answers too.
    let proxy = change_under_load(|v, b| {
        v.up_settings = ", lbPolicy: LEAST_REQUEST";
        v.up = b;
    })
    .await;
    let (_, clusters) = proxy.admin_get("/clusters").await;
    assert!(clusters.contains("LEAST_REQUEST"), "{clusters}");
}

#[tokio::test]
async fn a_listener_settings_change_under_load_fails_nothing_and_keeps_the_port() {
    let Two { a, b } = two().await;
    let (up, bs) = ([a.local_addr()], [b.local_addr()]);
    let mut v = Vars {
        up: &up,
        b: &bs,
        ..Default::default()
    };
    let proxy = start(&v).await;
    let addr = proxy.addr("in");
    let load = Load::start(addr);
    warm_up(&load, "a").await;
    v.listener_settings = ", maxRequestHeadersBytes: 16384";
    // And the route, to see when every client is on the new config.
    v.cluster = "b";
    proxy.apply(snapshot(&v)).unwrap();
    assert_eq!(proxy.addr("in"), addr, "the listener keeps its bound port");
    load.all_answered_by("b").await;
    load.stop_and_check().await;
    // The new limit applies: a 20 KiB header is now too large.
    let big = http::Request::get("/echo")
        .header("host", "svc")
        .header("x-big", "x".repeat(20 * 1024))
        .body(harness::empty())
        .unwrap();
    let reply = http1_client().request(addr, big).await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn a_changed_listener_never_refuses_a_connection() {
    let Two { a, b } = two().await;
    let (up, bs) = ([a.local_addr()], [b.local_addr()]);
    // The listener's port is fixed (a change must keep it); reserved, so no
    // other test can take it first.
    let reserved = ReservedPort::new();
    let port = reserved.addr().to_string();
    let mut v = Vars {
        up: &up,
        b: &bs,
        listen: &port,
        ..Default::default()
    };
    let proxy = start(&v).await;
    let addr = proxy.addr("in");
    let stop = Arc::new(AtomicBool::new(false));
    let tried = Arc::new(AtomicU64::new(0));
    let connector = tokio::spawn({
        let (stop, tried) = (stop.clone(), tried.clone());
        async move {
            let mut refused = 0;
            while !stop.load(Ordering::Relaxed) {
                tried.fetch_add(1, Ordering::Relaxed);
                if TcpStream::connect(addr).await.is_err() {
                    refused += 1;
                }
            }
            refused
        }
    });
    for i in 0..10 {
        v.listener_settings = if i % 2 == 0 { ", idleTimeout: 30s" } else { "" };
        proxy.apply(snapshot(&v)).unwrap();
        // Connections keep coming across each change.
        let before = tried.load(Ordering::Relaxed);
        within("connections after a change", async {
            while tried.load(Ordering::Relaxed) < before + 5 {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let refused = connector.await.unwrap();
    let tried = tried.load(Ordering::Relaxed);
    assert!(tried > 10, "{tried}");
    assert_eq!(refused, 0, "{refused} of {tried} connections refused");
    assert_eq!(answered_by(&proxy).await, "a");
}

async fn answered_by(proxy: &TestProxy) -> String {
    let reply = http1_client().get(proxy.addr("in"), "svc", "/echo").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.upstream().unwrap_or_default().to_string()
}

#[tokio::test]
async fn an_in_flight_request_finishes_on_the_endpoint_that_was_removed() {
    let Two { a, b } = two().await;
    let (up, bs) = ([a.local_addr()], [b.local_addr()]);
    let mut v = Vars {
        up: &up,
        b: &bs,
        ..Default::default()
    };
    let proxy = start(&v).await;
    let addr = proxy.addr("in");
    let slow = tokio::spawn(async move { http1_client().get(addr, "svc", "/delay/400").await });
    // Until the slow request is in flight at a.
    within("the slow request to reach a", async {
        while a.stats().http_requests() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    v.up = &bs;
    proxy.apply(snapshot(&v)).unwrap();
    assert_eq!(answered_by(&proxy).await, "b", "new requests go to b");
    let reply = within("the slow request", slow).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.upstream(), Some("a"));
}

#[tokio::test]
async fn pooled_upstream_connections_survive_an_unrelated_update() {
    let Two { a, b } = two().await;
    let (up, bs) = ([a.local_addr()], [b.local_addr()]);
    let mut v = Vars {
        up: &up,
        b: &bs,
        ..Default::default()
    };
    let proxy = start(&v).await;
    for _ in 0..3 {
        assert_eq!(answered_by(&proxy).await, "a");
    }
    assert_eq!(a.stats().connections(), 1, "one pooled connection to a");
    // Cluster b's settings and the listener's change; up does not.
    let mut v2 = Vars {
        up: &up,
        b: &[],
        ..Default::default()
    };
    v2.listener_settings = ", idleTimeout: 30s";
    proxy.apply(snapshot(&v2)).unwrap();
    v.listener_settings = ", idleTimeout: 20s";
    proxy.apply(snapshot(&v)).unwrap();
    for _ in 0..3 {
        assert_eq!(answered_by(&proxy).await, "a");
    }
    assert_eq!(
        a.stats().connections(),
        1,
        "the pooled connection was reused"
    );
    let (_, clusters) = proxy.admin_get("/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    assert_eq!(clusters[0]["name"], "up");
    assert_eq!(clusters[0]["endpoints"][0]["requests"], 6, "{clusters}");
}

#[tokio::test]
async fn a_removed_listener_stops_accepting_while_its_in_flight_request_finishes() {
    let a = upstream("a").await;
    let listener = |with_second: bool| {
        let second = if with_second {
            r#"  - { name: second, address: "127.0.0.1:0", routeTable: rt }"#
        } else {
            ""
        };
        render(
            r#"
admin: { address: "127.0.0.1:0" }
drainTimeout: 2s
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
${second}
routeTables:
  - name: rt
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: all, route: { cluster: up } }] }]
clusters: [{ name: up, connectTimeout: 1s }]
endpoints: [{ cluster: up, endpoints: ${up} }]
"#,
            &[
                ("second", &second),
                ("up", &harness::endpoints(&[a.local_addr()])),
            ],
        )
    };
    let proxy = harness::proxy(&listener(true)).await;
    let in_addr = proxy.addr("in");
    let second = proxy.addr("second");
    let slow = tokio::spawn(async move { http1_client().get(second, "svc", "/delay/400").await });
    within("the slow request to reach the upstream", async {
        while a.stats().http_requests() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    proxy
        .apply(load_str(&listener(false), "hot_apply.yaml").unwrap())
        .unwrap();
    within("the removed listener to stop accepting", async {
        while TcpStream::connect(second).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(proxy.listener_addr("second"), None);
    let reply = within("the in-flight request", slow).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    // The listener that stayed is untouched.
    assert_eq!(proxy.addr("in"), in_addr);
    let reply = h2c_client().get(in_addr, "svc", "/echo").await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn an_endpoint_may_change_from_an_address_to_a_dns_name() {
    let Two { a, b } = two().await;
    let (up, bs) = ([a.local_addr()], [b.local_addr()]);
    let v = Vars {
        up: &up,
        b: &bs,
        ..Default::default()
    };
    let proxy = start(&v).await;
    assert_eq!(answered_by(&proxy).await, "a");
    // Only up's endpoints change, to a name it has no resolver for.
    let named = yaml(&v).replacen(
        &harness::endpoints(&up),
        &format!("[{{ address: \"localhost:{}\" }}]", a.local_addr().port()),
        1,
    );
    let named = named.replace(
        "route: { cluster: up }",
        "route: { cluster: up, retryPolicy: { maxRetries: 3, retryOn: [CONNECT_FAILURE] } }",
    );
    proxy
        .apply(load_str(&named, "hot_apply.yaml").unwrap())
        .expect("a hostname endpoint is applied");
    let (_, clusters) = proxy.admin_get("/clusters").await;
    within("the DNS-named endpoint to answer", async {
        loop {
            let (_, clusters) = proxy.admin_get("/clusters").await;
            if clusters.contains(&format!("127.0.0.1:{}", a.local_addr().port())) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let _ = clusters;
    assert_eq!(answered_by(&proxy).await, "a");
}

/// Endpoints are identified by address: a weight change keeps the
/// endpoint's pooled connections, load history and counters.
#[tokio::test]
async fn a_weight_change_keeps_the_endpoints_connections_and_counters() {
    let a = upstream("a").await;
    let yaml = |weight: u32| {
        render(
            r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: all, route: { cluster: up } }] }]
clusters: [{ name: up, protocol: HTTP1 }]
endpoints: [{ cluster: up, endpoints: ${up} }]
"#,
            &[(
                "up",
                &harness::weighted_endpoints(&[(a.local_addr(), weight)]),
            )],
        )
    };
    let proxy = harness::proxy(&yaml(1)).await;
    let client = http1_client();
    for _ in 0..3 {
        let reply = client.get(proxy.addr("in"), "svc", "/echo").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(a.stats().connections(), 1, "one pooled upstream connection");

    proxy.apply(harness::snapshot(&yaml(5))).unwrap();
    for _ in 0..3 {
        let reply = client.get(proxy.addr("in"), "svc", "/echo").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(
        a.stats().connections(),
        1,
        "the reweighted endpoint kept its pooled connection"
    );
    let (_, clusters) = proxy.admin_get("/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let endpoint = &clusters[0]["endpoints"][0];
    assert_eq!(endpoint["weight"], 5, "{clusters:#}");
    assert_eq!(
        endpoint["requests"], 6,
        "counters carried over: {clusters:#}"
    );
}
