//! Retries, timeouts and circuit breakers through the real proxy, with real
//! upstreams and clients on loopback sockets.
//!
//! Besides the sample upstream, some tests use a *scripted* upstream (below)
//! that answers the n-th request it receives as the test says (503, a
//! trailers-only gRPC UNAVAILABLE, a dropped connection, a body that breaks
//! midway, silence), so that a retry can be seen landing somewhere else and
//! attempts can be counted exactly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use gridmesh_proto::testing::{EchoRequest, StreamRequest};
use gridmesh_tests::harness::{
    self, Body, ERROR_HEADER, TestProxy, collect, ended_with_status, full, get, grpc_echo_client,
    h2c_client, http1_client, render, within,
};
use gridmesh_tests::ports::RefusingPort;
use gridmesh_tests::upstream::UpstreamHandle;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Code;

// ---------------------------------------------------------------- helpers

/// A proxy with listener `in` sending everything to cluster `up` with
/// `route` (a YAML flow mapping's extra keys, e.g. `retryPolicy: {...}`) and
/// `cluster` (extra keys of the cluster).
async fn proxy(route: &str, cluster: &str, endpoints: &[SocketAddr]) -> TestProxy {
    harness::proxy(&config(route, cluster, endpoints)).await
}

fn config(route: &str, cluster: &str, endpoints: &[SocketAddr]) -> String {
    let sep = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            format!(", {s}")
        }
    };
    render(
        r#"
drainTimeout: 1s
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes: [{ name: all, route: { cluster: up${route} } }]
clusters: [{ name: up${cluster} }]
endpoints: [{ cluster: up, endpoints: ${up} }]
"#,
        &[
            ("route", &sep(route)),
            ("cluster", &sep(cluster)),
            ("up", &harness::endpoints(endpoints)),
        ],
    )
}

async fn upstream(name: &str) -> UpstreamHandle {
    harness::upstream(name).await
}

/// The cluster's retry counter; it exists (at 0) from the cluster's start.
async fn retries(proxy: &TestProxy) -> f64 {
    proxy
        .metric("gridmesh_upstream_retries_total", &[("cluster", "up")])
        .await
        .expect("the cluster's retry counter")
}

fn post(path: &str, body: Body) -> Request<Body> {
    Request::post(path)
        .header("host", "svc")
        .header("content-type", "application/octet-stream")
        .body(body)
        .unwrap()
}

/// Polls `condition` every 10 ms until it holds (bounded).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// What a scripted upstream does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// This status, empty body.
    Status(u16),
    /// This status at once, without reading the request body.
    EarlyStatus(u16),
    /// A trailers-only gRPC response with grpc-status 14.
    GrpcUnavailable,
    /// Drop the connection (HTTP/1.1) or reset the stream (HTTP/2) without
    /// answering.
    Reset,
    /// 200 with the request body.
    Echo,
    /// 200, a first chunk of body, then the body fails.
    BrokenBody,
    /// Never answer.
    Stall,
}

/// An upstream that reads each request's whole body, records it, and does
/// what `plan(n)` says for the n-th request (0-based).
struct Scripted {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    task: JoinHandle<()>,
}

type ScriptBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

async fn scripted(
    name: &'static str,
    plan: impl Fn(usize) -> Act + Send + Sync + 'static,
) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let plan: Plan = Arc::new(plan);
    let count = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn({
        let bodies = bodies.clone();
        async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (bodies, plan, count) = (bodies.clone(), plan.clone(), count.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (bodies, plan, count) = (bodies.clone(), plan.clone(), count.clone());
                        answer(name, req, bodies, plan, count)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });
    Scripted { addr, bodies, task }
}

/// Why a scripted upstream ends an exchange without a (complete) answer.
#[derive(Debug)]
struct ScriptError(&'static str);

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ScriptError {}

type Plan = Arc<dyn Fn(usize) -> Act + Send + Sync>;

async fn answer(
    name: &'static str,
    req: Request<Incoming>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    plan: Plan,
    count: Arc<AtomicUsize>,
) -> Result<Response<ScriptBody>, ScriptError> {
    let n = count.fetch_add(1, Ordering::SeqCst);
    let act = plan(n);
    let body = if let Act::EarlyStatus(_) = act {
        Bytes::new()
    } else {
        match req.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return Err(ScriptError("request body failed")),
        }
    };
    bodies.lock().unwrap().push(body.clone());
    let boxed = |b: Bytes| {
        http_body_util::Full::new(b)
            .map_err(|never| match never {})
            .boxed()
    };
    let mut rsp = match act {
        Act::Status(code) | Act::EarlyStatus(code) => {
            let mut rsp = Response::new(boxed(Bytes::new()));
            *rsp.status_mut() = StatusCode::from_u16(code).unwrap();
            rsp
        }
        Act::GrpcUnavailable => {
            let mut rsp = Response::new(boxed(Bytes::new()));
            let h = rsp.headers_mut();
            h.insert("content-type", HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from_static("14"));
            h.insert("grpc-message", HeaderValue::from_static("scripted"));
            rsp
        }
        Act::Reset => return Err(ScriptError("scripted reset")),
        Act::Echo => Response::new(boxed(body)),
        Act::BrokenBody => {
            let frames = futures_util::stream::unfold(0, |i| async move {
                match i {
                    0 => Some((Ok(Frame::data(Bytes::from_static(b"partial\n"))), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let error: Box<dyn std::error::Error + Send + Sync> =
                            Box::new(ScriptError("scripted body failure"));
                        Some((Err(error), 2))
                    }
                    _ => None,
                }
            });
            Response::new(BodyExt::boxed(StreamBody::new(frames)))
        }
        Act::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            unreachable!()
        }
    };
    rsp.headers_mut()
        .insert("x-upstream", HeaderValue::from_static(name));
    Ok(rsp)
}

impl Scripted {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn requests(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    fn bodies(&self) -> Vec<Bytes> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn grpc_request(delay_ms: u32, fail_with_code: Code) -> EchoRequest {
    EchoRequest {
        payload: b"ping".to_vec(),
        fail_with_code: fail_with_code as i32,
        delay_ms,
    }
}

/// A gRPC request to the proxy built by hand over h2c, so the test can look
/// at the raw response (a trailers-only reply has `grpc-status` in its
/// headers and nothing after them). The body is one empty message.
fn raw_grpc(path: &str) -> Request<Body> {
    Request::post(path)
        .header("host", "svc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap()
}

// ---------------------------------------------------------------- retries

#[tokio::test]
async fn connect_failure_is_retried_onto_a_live_endpoint() {
    let live = upstream("live").await;
    let dead = RefusingPort::new();
    let proxy = proxy(
        "retryPolicy: { maxRetries: 2, retryOn: [CONNECT_FAILURE], backoff: 0.001s }",
        "",
        &[dead.addr(), live.local_addr()],
    )
    .await;
    for i in 0..6 {
        let reply = http1_client().get(proxy.addr("in"), "svc", "/echo").await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {reply:?}");
        assert_eq!(reply.upstream(), Some("live"));
    }
    assert_eq!(live.stats().http_requests(), 6);
    assert!(retries(&proxy).await >= 1.0, "no retry was counted");
    assert!(
        proxy
            .metric(
                "gridmesh_upstream_connect_errors_total",
                &[("cluster", "up")]
            )
            .await
            .is_some_and(|n| n >= 1.0)
    );
}

#[tokio::test]
async fn connect_failure_without_a_retry_policy_fails_fast() {
    let refused = RefusingPort::new();
    let proxy = proxy("", "", &[refused.addr()]).await;
    let reply = http1_client().get(proxy.addr("in"), "svc", "/echo").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error(), Some("upstream_connect_failure"));
    assert_eq!(retries(&proxy).await, 0.0);
}

#[tokio::test]
async fn status_503_is_retried_and_attempts_are_bounded() {
    // Every attempt answers 503: one try plus maxRetries, then the 503
    // goes back to the client.
    let up = upstream("a").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 2, retryOn: [UNAVAILABLE_503], backoff: 0.001s }",
        "",
        &[up.local_addr()],
    )
    .await;
    let reply = http1_client()
        .get(proxy.addr("in"), "svc", "/status/503")
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error(), None, "the upstream's own 503 passes through");
    assert_eq!(up.stats().http_requests(), 3);
    assert_eq!(retries(&proxy).await, 2.0);

    // A status the policy does not name is not retried.
    let reply = http1_client()
        .get(proxy.addr("in"), "svc", "/status/500")
        .await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(up.stats().http_requests(), 4);
}

#[tokio::test]
async fn status_503_is_retried_onto_a_healthy_endpoint() {
    let failing = scripted("failing", |_| Act::Status(503)).await;
    let good = upstream("good").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 1, retryOn: [UNAVAILABLE_503], backoff: 0.001s }",
        "",
        &[failing.addr(), good.local_addr()],
    )
    .await;
    for _ in 0..6 {
        let reply = http1_client().get(proxy.addr("in"), "svc", "/echo").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.upstream(), Some("good"));
    }
    assert!(failing.requests() >= 1);
    assert_eq!(retries(&proxy).await, failing.requests() as f64);
}

#[tokio::test]
async fn grpc_unavailable_trailers_only_is_retried() {
    let up = upstream("a").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 3, retryOn: [GRPC_UNAVAILABLE], backoff: 0.001s }",
        "",
        &[up.local_addr()],
    )
    .await;
    let mut client = grpc_echo_client(proxy.addr("in"), "svc").await;
    let status = within("unary", client.unary(grpc_request(0, Code::Unavailable)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(up.stats().grpc_requests(), 4, "one try and three retries");
    // Other codes are not retried.
    let status = within("unary", client.unary(grpc_request(0, Code::Internal)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(up.stats().grpc_requests(), 5);
}

#[tokio::test]
async fn grpc_unavailable_is_retried_onto_a_healthy_endpoint() {
    let failing = scripted("failing", |_| Act::GrpcUnavailable).await;
    let good = upstream("good").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 1, retryOn: [GRPC_UNAVAILABLE], backoff: 0.001s }",
        "",
        &[failing.addr(), good.local_addr()],
    )
    .await;
    let mut client = grpc_echo_client(proxy.addr("in"), "svc").await;
    for _ in 0..6 {
        let reply = within("unary", client.unary(grpc_request(0, Code::Ok)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.server, "good");
    }
    assert!(failing.requests() >= 1);
    assert_eq!(good.stats().grpc_requests(), 6);
}

#[tokio::test]
async fn reset_before_the_response_is_retried() {
    let up = upstream("a").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 2, retryOn: [RESET], backoff: 0.001s }",
        "",
        &[up.local_addr()],
    )
    .await;
    for client in [http1_client(), h2c_client()] {
        let before = up.stats().http_requests();
        let reply = client.get(proxy.addr("in"), "svc", "/reset").await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_GATEWAY,
            "{:?}",
            client.protocol
        );
        assert_eq!(reply.error(), Some("upstream_reset"));
        assert_eq!(
            up.stats().http_requests() - before,
            3,
            "{:?}",
            client.protocol
        );
    }
}

#[tokio::test]
async fn reset_is_retried_onto_a_healthy_endpoint() {
    // The first attempt's connection is dropped; the second succeeds.
    let flaky = scripted("flaky", |n| if n == 0 { Act::Reset } else { Act::Echo }).await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 1, retryOn: [RESET], backoff: 0.001s }",
        "",
        &[flaky.addr()],
    )
    .await;
    let reply = http1_client()
        .request(proxy.addr("in"), post("/echo", full("hello")))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.text(), "hello");
    assert_eq!(flaky.requests(), 2);
}

#[tokio::test]
async fn reset_without_reset_in_retry_on_is_not_retried() {
    let up = upstream("a").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 2, retryOn: [UNAVAILABLE_503], backoff: 0.001s }",
        "",
        &[up.local_addr()],
    )
    .await;
    let reply = http1_client().get(proxy.addr("in"), "svc", "/reset").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(up.stats().http_requests(), 1);
}

#[tokio::test]
async fn no_retry_once_response_bytes_were_sent() {
    // A 200 whose body fails midway: the client sees the failure, and the
    // request is not sent again (its response had already started).
    let broken = scripted("broken", |_| Act::BrokenBody).await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 3, retryOn: [RESET, CONNECT_FAILURE, UNAVAILABLE_503], backoff: 0.001s }",
        "",
        &[broken.addr()],
    )
    .await;
    for client in [http1_client(), h2c_client()] {
        let before = broken.requests();
        let rsp = client
            .send(proxy.addr("in"), get("svc", "/anything"))
            .await
            .unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        let body = collect(rsp).await;
        assert!(
            body.is_err(),
            "{:?}: the broken body arrived whole",
            client.protocol
        );
        assert_eq!(broken.requests() - before, 1, "{:?}", client.protocol);
    }
    assert_eq!(retries(&proxy).await, 0.0);
}

#[tokio::test]
async fn sse_stream_breaking_midway_is_not_retried() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 3, retryOn: [RESET, CONNECT_FAILURE, UNAVAILABLE_503], backoff: 0.001s }",
        "",
        &[a.local_addr(), b.local_addr()],
    )
    .await;
    let rsp = http1_client()
        .send(
            proxy.addr("in"),
            get("svc", "/sse?count=100&interval_ms=20"),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let serving = rsp.headers()["x-upstream"].to_str().unwrap().to_string();
    let mut body = rsp.into_body();
    let first = within("first event", body.frame()).await.unwrap().unwrap();
    assert!(first.into_data().unwrap().starts_with(b"id: 0"));
    // The serving upstream crashes mid-stream.
    let (crashed, other) = if serving == "a" { (a, b) } else { (b, a) };
    assert_eq!(crashed.stats().http_requests(), 1);
    drop(crashed);
    let end = within("the broken stream to end", async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        }
    })
    .await;
    assert!(end.is_err(), "the stream ended cleanly although it broke");
    assert_eq!(other.stats().http_requests(), 0, "the stream was retried");
    assert_eq!(retries(&proxy).await, 0.0);
}

#[tokio::test]
async fn grpc_stream_breaking_midway_ends_with_unavailable_and_is_not_retried() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 3, retryOn: [RESET, CONNECT_FAILURE, GRPC_UNAVAILABLE], backoff: 0.001s }",
        "",
        &[a.local_addr(), b.local_addr()],
    )
    .await;
    let mut client = grpc_echo_client(proxy.addr("in"), "svc").await;
    let mut stream = within(
        "server stream",
        client.server_stream(StreamRequest {
            count: 100,
            payload_size: 8,
            interval_ms: 20,
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let first = within("first reply", stream.next()).await.unwrap().unwrap();
    let (crashed, other) = if first.server == "a" { (a, b) } else { (b, a) };
    drop(crashed);
    let (_, status) = ended_with_status("the broken stream to end", &mut stream).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(other.stats().grpc_requests(), 0, "the stream was retried");
}

#[tokio::test]
async fn request_bodies_within_the_replay_limit_are_replayed_intact() {
    let failing = scripted(
        "failing",
        |n| {
            if n == 0 { Act::Status(503) } else { Act::Echo }
        },
    )
    .await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 1, retryOn: [UNAVAILABLE_503], maxReplayBodyBytes: 65536, backoff: 0.001s }",
        "",
        &[failing.addr()],
    )
    .await;
    // 48 KiB sent in 3 KiB chunks while the request is in flight.
    let payload: Vec<u8> = (0..48 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut tx, body) = harness::streaming_body();
    let chunks: Vec<Bytes> = payload
        .chunks(3 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let writer = tokio::spawn(async move {
        for chunk in chunks {
            tx.send_data(chunk).await.unwrap();
        }
    });
    let reply = http1_client()
        .request(proxy.addr("in"), post("/upload", body))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), payload.len());
    assert!(reply.body == payload, "the replayed body differs");
    within("writer", writer).await.unwrap();
    let bodies = failing.bodies();
    assert_eq!(bodies.len(), 2);
    assert!(
        bodies.iter().all(|b| *b == payload),
        "an attempt saw a different body"
    );

    // The same with HTTP/2 and a body sent in one piece.
    let reply = h2c_client()
        .request(proxy.addr("in"), post("/upload", full(payload.clone())))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body == payload);
}

/// The failing attempt answers before it has read the request body, which
/// is still streaming in from the client: the retry must still carry the
/// whole body, in order.
#[tokio::test]
async fn a_body_still_streaming_when_the_first_attempt_failed_is_replayed_whole() {
    let early = scripted("early", |_| Act::EarlyStatus(503)).await;
    let good = upstream("good").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 1, retryOn: [UNAVAILABLE_503], backoff: 0.001s }",
        "",
        &[early.addr(), good.local_addr()],
    )
    .await;
    for client in [http1_client(), h2c_client()] {
        let before = (early.requests(), good.stats().http_requests());
        // Round robin: send until one request has gone to `early` first.
        loop {
            let payload: Vec<u8> = (0..5 * 1024).map(|i| (i % 241) as u8).collect();
            let (mut tx, body) = harness::streaming_body();
            let chunks: Vec<Bytes> = payload.chunks(1024).map(Bytes::copy_from_slice).collect();
            let writer = tokio::spawn(async move {
                for chunk in chunks {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    if tx.send_data(chunk).await.is_err() {
                        break;
                    }
                }
            });
            let reply = client.request(proxy.addr("in"), post("/echo", body)).await;
            let _ = within("writer", writer).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{:?}: {reply:?}",
                client.protocol
            );
            assert_eq!(reply.upstream(), Some("good"));
            assert_eq!(reply.body.len(), payload.len(), "{:?}", client.protocol);
            assert!(
                reply.body == payload,
                "{:?}: the body arrived altered",
                client.protocol
            );
            if early.requests() > before.0 {
                break;
            }
            assert!(
                good.stats().http_requests() - before.1 < 4,
                "never reached `early`"
            );
        }
    }
}

#[tokio::test]
async fn post_bodies_are_replayed_onto_another_endpoint() {
    let failing = scripted("failing", |_| Act::Status(503)).await;
    let good = upstream("good").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 1, retryOn: [UNAVAILABLE_503], backoff: 0.001s }",
        "",
        &[failing.addr(), good.local_addr()],
    )
    .await;
    for i in 0..4 {
        let text = format!("request number {i} with a body");
        let reply = http1_client()
            .request(proxy.addr("in"), post("/echo", full(text.clone())))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.upstream(), Some("good"));
        assert_eq!(reply.text(), text);
    }
    assert!(failing.requests() >= 1);
    assert!(
        failing
            .bodies()
            .iter()
            .all(|b| b.starts_with(b"request number"))
    );
}

#[tokio::test]
async fn bodies_over_the_replay_limit_are_not_retried() {
    let failing = scripted("failing", |_| Act::Status(503)).await;
    let good = upstream("good").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 2, retryOn: [UNAVAILABLE_503], maxReplayBodyBytes: 16384, backoff: 0.001s }",
        "",
        &[failing.addr(), good.local_addr()],
    )
    .await;
    let big = vec![7u8; 40 * 1024];
    let mut saw_503 = false;
    for _ in 0..4 {
        let reply = http1_client()
            .request(proxy.addr("in"), post("/echo", full(big.clone())))
            .await;
        match reply.upstream() {
            Some("failing") => {
                // Not retried: the 503 passes through.
                assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
                saw_503 = true;
            }
            Some("good") => assert!(reply.body == big),
            other => panic!("answered by {other:?}: {reply:?}"),
        }
    }
    assert!(saw_503, "no request reached the failing endpoint");
    assert_eq!(retries(&proxy).await, 0.0);
    assert!(failing.bodies().iter().all(|b| b.len() == big.len()));
}

#[tokio::test]
async fn the_retry_budget_limits_retries_under_sustained_failure() {
    // Floor: 1 retry per second over the 10 s window = 10 retries; 1% of
    // 20 requests adds nothing.
    let up = upstream("a").await;
    let proxy = proxy(
        "retryPolicy: { maxRetries: 1, retryOn: [UNAVAILABLE_503], backoff: 0.001s }",
        "retryBudget: { retryPercent: 1, minRetriesPerSecond: 1 }",
        &[up.local_addr()],
    )
    .await;
    for _ in 0..20 {
        let reply = http1_client()
            .get(proxy.addr("in"), "svc", "/status/503")
            .await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(retries(&proxy).await, 10.0);
    assert_eq!(up.stats().http_requests(), 30, "20 requests and 10 retries");
}

// --------------------------------------------------------------- timeouts

#[tokio::test]
async fn response_headers_timeout_gives_504() {
    let up = upstream("a").await;
    let proxy = proxy(
        "timeouts: { responseHeaders: 0.2s }",
        "",
        &[up.local_addr()],
    )
    .await;
    let start = Instant::now();
    let reply = http1_client()
        .get(proxy.addr("in"), "svc", "/delay/3000")
        .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.error(), Some("upstream_response_timeout"));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // A response in time is unaffected.
    let reply = http1_client()
        .get(proxy.addr("in"), "svc", "/delay/10")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn grpc_response_headers_timeout_is_deadline_exceeded_trailers_only() {
    let silent = scripted("silent", |_| Act::Stall).await;
    let proxy = proxy("timeouts: { responseHeaders: 0.2s }", "", &[silent.addr()]).await;
    let reply = h2c_client()
        .request(
            proxy.addr("in"),
            raw_grpc("/gridmesh.testing.v1.Echo/Unary"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("grpc-status"), Some("4"), "{reply:?}");
    assert_eq!(
        reply.header(ERROR_HEADER),
        Some("upstream_response_timeout")
    );
    assert!(reply.body.is_empty(), "a trailers-only reply has no body");
    assert!(reply.trailers.is_none(), "{reply:?}");

    let up = upstream("a").await;
    let proxy = self::proxy(
        "timeouts: { responseHeaders: 0.2s }",
        "",
        &[up.local_addr()],
    )
    .await;
    let mut client = grpc_echo_client(proxy.addr("in"), "svc").await;
    let status = within("unary", client.unary(grpc_request(3000, Code::Ok)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn no_timeout_by_default() {
    let up = upstream("a").await;
    let proxy = proxy("", "", &[up.local_addr()]).await;
    let reply = http1_client()
        .get(proxy.addr("in"), "svc", "/delay/1500")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut client = grpc_echo_client(proxy.addr("in"), "svc").await;
    let reply = within("unary", client.unary(grpc_request(1500, Code::Ok)))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().server, "a");
}

#[tokio::test]
async fn idle_timeout_cuts_a_stalled_stream_but_not_a_steady_one() {
    let up = upstream("a").await;
    let proxy = proxy("timeouts: { idle: 0.3s }", "", &[up.local_addr()]).await;
    // Steady: 8 events 100 ms apart take 0.7 s in all, each gap under 0.3 s.
    let reply = http1_client()
        .get(proxy.addr("in"), "svc", "/sse?count=8&interval_ms=100")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text().matches("data: ").count(), 8);

    // Stalled: the second event comes after 2 s.
    let start = Instant::now();
    let rsp = http1_client()
        .send(
            proxy.addr("in"),
            get("svc", "/sse?count=3&interval_ms=2000"),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let mut body = rsp.into_body();
    let first = within("first event", body.frame()).await.unwrap().unwrap();
    assert!(first.into_data().unwrap().starts_with(b"id: 0"));
    let next = within("the idle stream to be cut", body.frame()).await;
    assert!(
        matches!(next, Some(Err(_))),
        "expected the stream to fail, got {next:?}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(1800),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn grpc_idle_timeout_ends_the_stream_with_deadline_exceeded() {
    let up = upstream("a").await;
    let proxy = proxy("timeouts: { idle: 0.3s }", "", &[up.local_addr()]).await;
    let mut client = grpc_echo_client(proxy.addr("in"), "svc").await;
    let steady: Vec<_> = within(
        "steady stream",
        client
            .server_stream(StreamRequest {
                count: 6,
                payload_size: 4,
                interval_ms: 100,
            })
            .await
            .unwrap()
            .into_inner()
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(steady.len(), 6);
    assert!(steady.iter().all(|r| r.is_ok()), "{steady:?}");

    let mut stalled = client
        .server_stream(StreamRequest {
            count: 3,
            payload_size: 4,
            interval_ms: 2000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(within("first", stalled.next()).await.unwrap().is_ok());
    let status = within("the idle stream to end", stalled.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get(ERROR_HEADER)
            .map(|v| v.to_str().unwrap()),
        Some("stream_idle_timeout")
    );
}

#[tokio::test]
async fn max_duration_ends_a_long_grpc_stream_with_deadline_exceeded() {
    let up = upstream("a").await;
    let proxy = proxy("timeouts: { maxDuration: 0.5s }", "", &[up.local_addr()]).await;
    let mut client = grpc_echo_client(proxy.addr("in"), "svc").await;
    let start = Instant::now();
    let mut stream = client
        .server_stream(StreamRequest {
            count: 1000,
            payload_size: 4,
            interval_ms: 20,
        })
        .await
        .unwrap()
        .into_inner();
    let (received, status) = ended_with_status("the stream to be ended", &mut stream).await;
    // Trailers, not a reset: a reset would surface as another code.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get(ERROR_HEADER)
            .map(|v| v.to_str().unwrap()),
        Some("deadline_exceeded")
    );
    let elapsed = start.elapsed();
    assert!(received >= 5, "only {received} replies before the deadline");
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn max_duration_ends_a_long_http_stream() {
    let up = upstream("a").await;
    let proxy = proxy("timeouts: { maxDuration: 0.5s }", "", &[up.local_addr()]).await;
    let start = Instant::now();
    let rsp = http1_client()
        .send(
            proxy.addr("in"),
            get("svc", "/sse?count=1000&interval_ms=20"),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert!(collect(rsp).await.is_err(), "the stream was not cut");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_shorter_grpc_timeout_wins_over_max_duration() {
    let up = upstream("a").await;
    let proxy = proxy("timeouts: { maxDuration: 5s }", "", &[up.local_addr()]).await;
    let mut client = grpc_echo_client(proxy.addr("in"), "svc").await;
    let start = Instant::now();
    let mut request = tonic::Request::new(StreamRequest {
        count: 1000,
        payload_size: 4,
        interval_ms: 20,
    });
    request.set_timeout(Duration::from_millis(300));
    let mut stream = client.server_stream(request).await.unwrap().into_inner();
    let (_, status) = ended_with_status("the stream to be ended", &mut stream).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(2500),
        "{elapsed:?}"
    );

    // And a shorter maxDuration wins over a longer grpc-timeout.
    let proxy = self::proxy("timeouts: { maxDuration: 0.3s }", "", &[up.local_addr()]).await;
    let mut client = grpc_echo_client(proxy.addr("in"), "svc").await;
    let mut request = tonic::Request::new(grpc_request(2000, Code::Ok));
    request.set_timeout(Duration::from_secs(30));
    let start = Instant::now();
    let status = within("unary", client.unary(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(start.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn grpc_timeout_is_propagated_upstream_as_time_left() {
    let recorder = harness::recording_upstream().await;
    let proxy = proxy("", "", &[recorder.local_addr()]).await;
    let mut req = raw_grpc("/gridmesh.testing.v1.Echo/Unary");
    req.headers_mut()
        .insert("grpc-timeout", HeaderValue::from_static("2S"));
    let reply = h2c_client().request(proxy.addr("in"), req).await;
    assert_eq!(reply.header("grpc-status"), Some("0"));
    let seen = recorder.last();
    let left = seen.headers["grpc-timeout"].to_str().unwrap().to_string();
    let (digits, unit) = left.split_at(left.len() - 1);
    let n: u64 = digits.parse().unwrap();
    let left = match unit {
        "n" => Duration::from_nanos(n),
        "u" => Duration::from_micros(n),
        "m" => Duration::from_millis(n),
        "S" => Duration::from_secs(n),
        other => panic!("unit {other}"),
    };
    assert!(
        left <= Duration::from_secs(2) && left > Duration::from_millis(1500),
        "{left:?}"
    );
}

// ------------------------------------------------------ circuit breakers

#[tokio::test]
async fn max_requests_sheds_the_next_request_at_once() {
    let up = upstream("a").await;
    let proxy = proxy(
        "",
        "circuitBreakers: { maxRequests: 2 }",
        &[up.local_addr()],
    )
    .await;
    let addr = proxy.addr("in");
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { http1_client().get(addr, "svc", "/delay/1500").await }))
        .collect();
    eventually("two requests in flight upstream", || {
        up.stats().http_requests() == 2
    })
    .await;

    let start = Instant::now();
    let reply = http1_client().get(addr, "svc", "/echo").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error(), Some("overflow_requests"));
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "not shed at once"
    );

    let mut client = grpc_echo_client(addr, "svc").await;
    let status = within("unary", client.unary(grpc_request(0, Code::Ok)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        up.stats().requests(),
        2,
        "a shed request reached the upstream"
    );

    for task in slow {
        assert_eq!(within("slow", task).await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        proxy
            .metric(
                "gridmesh_upstream_overflow_total",
                &[("cluster", "up"), ("breaker", "requests")]
            )
            .await,
        Some(2.0)
    );
    // Capacity is back once they finished.
    let reply = http1_client().get(addr, "svc", "/echo").await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn max_connections_queues_http1_requests_as_pending() {
    let up = upstream("a").await;
    let proxy = proxy(
        "",
        "protocol: HTTP1, connectTimeout: 5s, circuitBreakers: { maxConnections: 1 }",
        &[up.local_addr()],
    )
    .await;
    let addr = proxy.addr("in");
    let start = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { http1_client().get(addr, "svc", "/delay/300").await }))
        .collect();
    for task in tasks {
        let reply = within("queued request", task).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    // One connection, so one request at a time.
    assert_eq!(up.stats().connections(), 1);
    assert!(
        start.elapsed() >= Duration::from_millis(850),
        "{:?}",
        start.elapsed()
    );
    for breaker in ["requests", "pending"] {
        assert_eq!(
            proxy
                .metric(
                    "gridmesh_upstream_overflow_total",
                    &[("cluster", "up"), ("breaker", breaker)]
                )
                .await,
            Some(0.0),
            "{breaker}"
        );
    }
}

#[tokio::test]
async fn max_pending_requests_sheds_with_overflow_pending() {
    let up = upstream("a").await;
    let proxy = proxy(
        "",
        "protocol: HTTP1, connectTimeout: 5s, circuitBreakers: { maxConnections: 1, maxPendingRequests: 1 }",
        &[up.local_addr()],
    )
    .await;
    let addr = proxy.addr("in");
    let first = tokio::spawn(async move { http1_client().get(addr, "svc", "/delay/1000").await });
    eventually("the first request upstream", || {
        up.stats().http_requests() == 1
    })
    .await;
    let second = tokio::spawn(async move { http1_client().get(addr, "svc", "/echo").await });
    // The second waits for the only connection.
    within("the second request to wait for a connection", async {
        loop {
            let (_, clusters) = proxy.admin_get("/clusters").await;
            let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
            if clusters[0]["requestsPending"] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let start = Instant::now();
    let reply = http1_client().get(addr, "svc", "/echo").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.error(), Some("overflow_pending"));
    assert!(start.elapsed() < Duration::from_millis(500));

    assert_eq!(within("first", first).await.unwrap().status, StatusCode::OK);
    assert_eq!(
        within("second", second).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(up.stats().connections(), 1);
    assert_eq!(
        proxy
            .metric(
                "gridmesh_upstream_overflow_total",
                &[("cluster", "up"), ("breaker", "pending")]
            )
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn breakers_in_one_cluster_do_not_shed_another() {
    let up = upstream("a").await;
    let yaml = render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - { name: small, match: { prefix: /delay }, route: { cluster: small } }
          - { name: big, route: { cluster: big } }
clusters:
  - { name: small, circuitBreakers: { maxRequests: 1 } }
  - { name: big }
endpoints:
  - { cluster: small, endpoints: ${up} }
  - { cluster: big, endpoints: ${up} }
"#,
        &[("up", &harness::endpoints(&[up.local_addr()]))],
    );
    let proxy = harness::proxy(&yaml).await;
    let addr = proxy.addr("in");
    let slow = tokio::spawn(async move { http1_client().get(addr, "svc", "/delay/800").await });
    eventually("the slow request upstream", || {
        up.stats().http_requests() == 1
    })
    .await;
    let shed = http1_client().get(addr, "svc", "/delay/1").await;
    assert_eq!(shed.error(), Some("overflow_requests"));
    let other = http1_client().get(addr, "svc", "/echo").await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(within("slow", slow).await.unwrap().status, StatusCode::OK);
}
