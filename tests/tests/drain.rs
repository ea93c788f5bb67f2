//! Draining: on SIGTERM or `POST /drain` the proxy stops accepting, lets
//! in-flight requests finish, tells HTTP/1.1 clients `Connection: close` and
//! HTTP/2 clients GOAWAY, ends gRPC streams still open at the drain deadline
//! with `grpc-status: UNAVAILABLE` trailers, and stops.
//!
//! The SIGTERM tests run the real `gridmesh-proxy` binary; the rest run the
//! proxy in process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gridmesh_proto::testing::{EchoRequest, StreamRequest};
use gridmesh_tests::harness::{
    self, ERROR_HEADER, collect, ended_with_status, get, grpc_echo_client, h2c_client,
    http1_client, raw_http1, raw_status, render, within, within_for,
};
use gridmesh_tests::ports::ReservedPort;
use gridmesh_tests::process::{self, GRIDMESH_PROXY, ProxyConfig, ProxyProcess};
use gridmesh_tests::upstream::UpstreamHandle;
use http::StatusCode;
use tokio::net::TcpStream;
use tonic::Code;

const DRAIN: Duration = Duration::from_secs(1);

fn yaml(upstream: SocketAddr, admin: SocketAddr, listen: SocketAddr) -> String {
    render(
        r#"
admin: { address: "${admin}" }
drainTimeout: 1s
listeners:
  - { name: in, address: "${listen}", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes: [{ name: all, route: { cluster: up } }]
clusters: [{ name: up, connectTimeout: 1s }]
endpoints: [{ cluster: up, endpoints: ${up} }]
"#,
        &[
            ("admin", &admin),
            ("listen", &listen),
            ("up", &harness::endpoints(&[upstream])),
        ],
    )
}

async fn upstream() -> UpstreamHandle {
    harness::upstream("a").await
}

/// Polls until `addr` refuses connections (bounded).
async fn refuses_connections(addr: SocketAddr) {
    within("the listener to close", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The real binary on `yaml(upstream, admin on port 0, listen)`; the
/// listener's port is reserved by the caller, so once the proxy lets it go
/// nothing else takes it and a refused connection means the proxy closed it.
async fn binary_proxy(name: &str, upstream: SocketAddr, listen: SocketAddr) -> ProxyProcess {
    let any_port = "127.0.0.1:0".parse().unwrap();
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    ProxyProcess::start(
        &binary,
        name,
        ProxyConfig::Yaml(yaml(upstream, any_port, listen)),
        Duration::from_secs(30),
    )
    .await
    .unwrap()
}

fn long_stream() -> StreamRequest {
    StreamRequest {
        count: 10_000,
        payload_size: 8,
        interval_ms: 50,
    }
}

fn slow_unary(delay_ms: u32) -> EchoRequest {
    EchoRequest {
        payload: b"in flight".to_vec(),
        delay_ms,
        ..Default::default()
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

// -------------------------------------------------------- the real binary

/// SIGTERM with an open gRPC server stream, an in-flight unary call and an
/// in-flight HTTP/1.1 request on a keep-alive connection.
#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let up = upstream().await;
    let reserved = ReservedPort::new();
    let listen = reserved.addr();
    let mut proxy = binary_proxy("drain-sigterm", up.local_addr(), listen).await;

    let mut client = grpc_echo_client(listen, "svc").await;
    let mut stream = within("open stream", client.server_stream(long_stream()))
        .await
        .unwrap()
        .into_inner();
    let first = within("first reply", stream.next()).await.unwrap().unwrap();
    assert_eq!(first.seq, 0);
    let unary = tokio::spawn({
        let mut client = client.clone();
        async move { client.unary(slow_unary(500)).await }
    });
    let mut h1 = http1_client().connect(listen).await;
    let h1_request = tokio::spawn(async move {
        let rsp = h1.send(get("svc", "/delay/500")).await?;
        let reply = collect(rsp).await?;
        // Another request on the same connection: the proxy closed it.
        let again = h1.send(get("svc", "/echo")).await;
        Ok::<_, harness::BoxError>((reply, again.is_err()))
    });
    eventually("both requests in flight upstream", || {
        up.stats().grpc_requests() == 2 && up.stats().http_requests() == 1
    })
    .await;

    let sigterm = Instant::now();
    let exit = tokio::spawn(async move {
        let status = proxy.terminate(Duration::from_secs(10)).await;
        (status, proxy)
    });

    refuses_connections(listen).await;

    let reply = within("in-flight unary", unary).await.unwrap().unwrap();
    assert_eq!(reply.into_inner().payload, b"in flight");
    let (reply, closed) = within("in-flight HTTP/1.1", h1_request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
    assert!(closed, "the keep-alive connection still took a request");

    let (more, status) =
        ended_with_status("the stream to be ended at the drain deadline", &mut stream).await;
    let replies = 1 + more;
    let ended = sigterm.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get(ERROR_HEADER)
            .map(|v| v.to_str().unwrap()),
        Some("draining"),
        "ended by something other than the drain: {status:?}"
    );
    assert!(ended >= DRAIN - Duration::from_millis(150), "{ended:?}");
    assert!(
        replies > 5,
        "the stream stalled during the drain ({replies})"
    );

    let (status, proxy) = within("the proxy to exit", exit).await.unwrap();
    let status = status.unwrap();
    assert_eq!(status.code(), Some(0), "{}", proxy.output());
    assert!(
        sigterm.elapsed() < DRAIN + Duration::from_secs(3),
        "exited {:?} after SIGTERM",
        sigterm.elapsed()
    );
}

#[tokio::test]
async fn sigterm_with_nothing_in_flight_exits_at_once() {
    let up = upstream().await;
    let reserved = ReservedPort::new();
    let listen = reserved.addr();
    let mut proxy = binary_proxy("drain-idle", up.local_addr(), listen).await;
    // An idle keep-alive connection does not hold the drain up.
    let mut conn = http1_client().connect(listen).await;
    let rsp = conn.send(get("svc", "/echo")).await.unwrap();
    collect(rsp).await.unwrap();
    let start = Instant::now();
    let status = proxy.terminate(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", proxy.output());
    assert!(start.elapsed() < DRAIN, "{:?}", start.elapsed());
}

#[tokio::test]
async fn admin_post_drain_stops_the_binary() {
    let up = upstream().await;
    let reserved = ReservedPort::new();
    let listen = reserved.addr();
    let mut proxy = binary_proxy("drain-admin", up.local_addr(), listen).await;
    let admin = proxy.admin_address().unwrap();
    let mut client = grpc_echo_client(listen, "svc").await;
    let mut stream = client
        .server_stream(long_stream())
        .await
        .unwrap()
        .into_inner();
    within("first reply", stream.next()).await.unwrap().unwrap();

    let start = Instant::now();
    let rsp = raw_http1(
        admin,
        "POST /drain HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&rsp), Some(200), "{rsp}");
    let ready = process::admin_get(admin, "/ready").await.unwrap();
    assert_eq!(ready.status, 503, "/ready while draining: {}", ready.body);
    refuses_connections(listen).await;

    let (_, status) = ended_with_status("the stream to end", &mut stream).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = proxy.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", proxy.output());
    assert!(start.elapsed() < DRAIN + Duration::from_secs(3));
}

// ------------------------------------------------------------- in process

fn in_process_yaml(upstream: SocketAddr) -> String {
    format!("drainTimeout: 1s\n{}", harness::forward_all(&[upstream]))
}

#[tokio::test]
async fn http2_clients_get_goaway_and_in_flight_streams_complete() {
    let up = upstream().await;
    let proxy = harness::proxy(&in_process_yaml(up.local_addr())).await;
    let conn = h2c_client().connect(proxy.addr("in")).await;
    let mut in_flight = conn.stream();
    let slow = tokio::spawn(async move {
        let rsp = in_flight.send(get("svc", "/delay/600")).await?;
        Ok::<_, harness::BoxError>(collect(rsp).await?)
    });
    eventually("the request upstream", || up.stats().http_requests() == 1).await;

    proxy.drain();
    within("draining", proxy.draining()).await;
    // New streams on the same connection: served while the GOAWAY is on
    // its way (the connection task sends it when it sees the drain), then
    // refused cleanly — never a hang.
    let mut served_before_goaway = 0;
    within("a new stream to be refused after GOAWAY", async {
        loop {
            let mut late = conn.stream();
            match late.send(get("svc", "/echo")).await {
                Ok(rsp) => {
                    collect(rsp).await.unwrap();
                    served_before_goaway += 1;
                }
                Err(_) => break,
            }
        }
    })
    .await;
    assert_eq!(
        up.stats().http_requests(),
        1 + served_before_goaway,
        "a refused stream reached upstream"
    );

    let reply = within("in-flight stream", slow).await.unwrap().unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.upstream(), Some("a"));
    within("the proxy to stop", proxy.into_inner().stopped()).await;
}

#[tokio::test]
async fn http1_in_flight_request_gets_connection_close() {
    let up = upstream().await;
    let proxy = harness::proxy(&in_process_yaml(up.local_addr())).await;
    let mut conn = http1_client().connect(proxy.addr("in")).await;
    let rsp = conn.send(get("svc", "/echo")).await.unwrap();
    let before = collect(rsp).await.unwrap();
    assert_ne!(before.header("connection"), Some("close"));

    let request = tokio::spawn(async move {
        let rsp = conn.send(get("svc", "/delay/400")).await?;
        let reply = collect(rsp).await?;
        let again = conn.send(get("svc", "/echo")).await;
        Ok::<_, harness::BoxError>((reply, again.is_err()))
    });
    eventually("the request upstream", || up.stats().http_requests() == 2).await;
    proxy.drain();
    let (reply, refused) = within("in-flight request", request).await.unwrap().unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
    assert!(refused, "the connection took another request after close");
    within("the proxy to stop", proxy.into_inner().stopped()).await;
}

#[tokio::test]
async fn admin_drain_turns_ready_off_and_stops_accepting() {
    let up = upstream().await;
    let proxy = harness::proxy(&in_process_yaml(up.local_addr())).await;
    let addr = proxy.addr("in");
    assert_eq!(proxy.admin_get("/ready").await.0, StatusCode::OK);

    let (status, _) = proxy.admin_post("/drain").await;
    assert_eq!(status, StatusCode::OK);
    within("draining", proxy.draining()).await;
    assert_eq!(
        proxy.admin_get("/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        proxy.admin_get("/live").await.0,
        StatusCode::OK,
        "live while draining"
    );
    refuses_connections(addr).await;
    // A second drain changes nothing.
    assert_eq!(proxy.admin_post("/drain").await.0, StatusCode::OK);
    within("the proxy to stop", proxy.into_inner().stopped()).await;
}

#[tokio::test]
async fn open_grpc_stream_ends_with_unavailable_at_the_drain_deadline() {
    let up = upstream().await;
    let proxy = harness::proxy(&in_process_yaml(up.local_addr())).await;
    let mut client = grpc_echo_client(proxy.addr("in"), "svc").await;
    let mut stream = client
        .server_stream(long_stream())
        .await
        .unwrap()
        .into_inner();
    within("first reply", stream.next()).await.unwrap().unwrap();

    let start = Instant::now();
    proxy.drain();
    let (_, status) = ended_with_status("the stream to end", &mut stream).await;
    let ended = start.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get(ERROR_HEADER)
            .map(|v| v.to_str().unwrap()),
        Some("draining")
    );
    assert!(
        ended >= DRAIN - Duration::from_millis(150) && ended < DRAIN + Duration::from_secs(1),
        "{ended:?}"
    );
    within_for(
        Duration::from_secs(3),
        "the proxy to stop after the deadline",
        proxy.into_inner().stopped(),
    )
    .await;
}

#[tokio::test]
async fn open_http_stream_is_closed_when_the_drain_deadline_passes() {
    let up = upstream().await;
    let proxy = harness::proxy(&in_process_yaml(up.local_addr())).await;
    let rsp = http1_client()
        .send(
            proxy.addr("in"),
            get("svc", "/sse?count=10000&interval_ms=50"),
        )
        .await
        .unwrap();
    let start = Instant::now();
    proxy.drain();
    let body = within("the stream to be cut", collect(rsp)).await;
    assert!(body.is_err(), "an endless stream ended cleanly");
    assert!(
        start.elapsed() >= DRAIN - Duration::from_millis(150),
        "cut before the deadline: {:?}",
        start.elapsed()
    );
    within_for(
        Duration::from_secs(3),
        "the proxy to stop",
        proxy.into_inner().stopped(),
    )
    .await;
}
