//! gRPC through the real proxy (in-process), one and two hops, with a real
//! tonic client: all four call shapes, upstream statuses, the proxy's own
//! trailers-only errors, and `grpc-timeout` (honoured and propagated).

use std::time::Duration;

use gridmesh_proto::testing::echo_client::EchoClient;
use gridmesh_proto::testing::{EchoRequest, StreamRequest};
use gridmesh_tests::harness::{
    self, Reply, chain, endpoints, forward_all, grpc_echo_client, h2c_client, proxy,
    recording_upstream, render, upstream, within,
};
use gridmesh_tests::ports::RefusingPort;
use gridmesh_tests::process::{self, ProxyConfig, ProxyProcess};
use http::{Request, StatusCode};
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

const AUTHORITY: &str = "echo.blocks";
const START: Duration = Duration::from_secs(30);

fn msg(payload: &str) -> EchoRequest {
    EchoRequest {
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Every call shape, checked against the upstream named `upstream_name`.
async fn check_all_shapes(mut client: EchoClient<Channel>, upstream_name: &str) {
    // Unary.
    let reply = within("unary", client.unary(msg("ping")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload, b"ping");
    assert_eq!(reply.server, upstream_name);

    // Client streaming.
    let requests = futures_util::stream::iter(["a", "b", "c", "d"].map(msg));
    let reply = within("client stream", client.client_stream(requests))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload, b"abcd");

    // Server streaming.
    let mut stream = within(
        "server stream",
        client.server_stream(StreamRequest {
            count: 5,
            payload_size: 3,
            interval_ms: 0,
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let mut seqs = Vec::new();
    while let Some(reply) = within("server stream message", stream.message())
        .await
        .unwrap()
    {
        assert_eq!(reply.payload, vec![0; 3]);
        seqs.push(reply.seq);
    }
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    assert!(stream.trailers().await.unwrap().is_some(), "no trailers");

    // Bidi: each reply comes back before the next request is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut replies = within("bidi", client.bidi(outbound))
        .await
        .unwrap()
        .into_inner();
    for (i, word) in ["one", "two", "three"].iter().enumerate() {
        tx.send(msg(word)).await.unwrap();
        let reply = within("bidi reply", replies.message())
            .await
            .unwrap()
            .expect("a reply per request");
        assert_eq!(reply.payload, word.as_bytes());
        assert_eq!(reply.seq, i as u64);
    }
    drop(tx);
    assert!(
        within("bidi end", replies.message())
            .await
            .unwrap()
            .is_none()
    );
}

/// Upstream statuses arrive unchanged: code and message.
async fn check_upstream_statuses(mut client: EchoClient<Channel>) {
    for code in [
        Code::NotFound,
        Code::PermissionDenied,
        Code::Unavailable,
        Code::ResourceExhausted,
        Code::Internal,
    ] {
        let status = within(
            "failing unary",
            client.unary(EchoRequest {
                fail_with_code: code as i32,
                ..Default::default()
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(status.message(), "failure requested by fail_with_code");
        assert!(
            status.metadata().get(harness::ERROR_HEADER).is_none(),
            "an upstream status is not a proxy error: {status:?}"
        );
    }

    // A failure mid-stream: the replies before it, then the status in trailers.
    let requests = vec![
        msg("ok-1"),
        msg("ok-2"),
        EchoRequest {
            fail_with_code: Code::Aborted as i32,
            ..Default::default()
        },
        msg("never"),
    ];
    let mut replies = within("bidi", client.bidi(futures_util::stream::iter(requests)))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let status = loop {
        match within("bidi message", replies.message()).await {
            Ok(Some(reply)) => got.push(String::from_utf8(reply.payload).unwrap()),
            Ok(None) => panic!("stream ended without the requested error"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, ["ok-1", "ok-2"]);
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "failure requested by fail_with_code");
}

#[tokio::test]
async fn all_call_shapes_through_one_proxy() {
    let up = upstream("a").await;
    let p = proxy(&forward_all(&[up.local_addr()])).await;
    check_all_shapes(grpc_echo_client(p.addr("in"), AUTHORITY).await, "a").await;
    check_upstream_statuses(grpc_echo_client(p.addr("in"), AUTHORITY).await).await;
}

#[tokio::test]
async fn all_call_shapes_through_two_proxies() {
    let up = upstream("a").await;
    let mesh = chain(up.local_addr()).await;
    check_all_shapes(grpc_echo_client(mesh.entry(), AUTHORITY).await, "a").await;
    check_upstream_statuses(grpc_echo_client(mesh.entry(), AUTHORITY).await).await;
}

/// Write system calls a process has made (`syscw` in /proc/<pid>/io).
fn write_calls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/<pid>/io");
    io.lines()
        .find_map(|l| l.strip_prefix("syscw: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a syscw line")
}

/// A unary call that reaches the sidecar whole leaves it in one write each
/// way: HEADERS, DATA and END_STREAM upstream; HEADERS, DATA and trailers
/// downstream (the hyper patch in patches/hyper). Counted as the real
/// sidecar's write system calls over 50 calls on one connection: 4 per call
/// without the patch, each frame group flushed on its own.
#[tokio::test]
async fn a_whole_unary_call_leaves_the_sidecar_in_one_write_each_way() {
    const CALLS: u64 = 50;
    let up = upstream("a").await;
    let yaml = format!(
        "admin: {{ address: \"127.0.0.1:0\" }}\n{}",
        forward_all(&[up.local_addr()])
    );
    let binary = process::binary(process::GRIDMESH_PROXY).unwrap();
    // One worker: no wake-ups between worker threads among the writes.
    let sidecar = ProxyProcess::start_with_args(
        &binary,
        "sidecar",
        ProxyConfig::Yaml(yaml),
        &["--workers", "1"],
        START,
    )
    .await
    .unwrap();
    let pid = sidecar.pid().expect("running");
    let conn = h2c_client()
        .connect(sidecar.listener_address("in").unwrap())
        .await;
    let call = || async {
        let request = grpc_request("/gridmesh.testing.v1.Echo/Unary", &[]);
        let rsp = conn.stream().send(request).await.unwrap();
        let reply = harness::collect(rsp).await.unwrap();
        let status = reply.trailers.as_ref().and_then(|t| t.get("grpc-status"));
        assert_eq!(status.map(|s| s.as_bytes()), Some(&b"0"[..]), "{reply:?}");
    };
    // The connections up and warm first.
    call().await;
    let before = write_calls(pid);
    for _ in 0..CALLS {
        call().await;
    }
    let per_call = (write_calls(pid) - before) as f64 / CALLS as f64;
    assert!(per_call <= 2.2, "{per_call} writes per call");
}

#[tokio::test]
async fn long_server_stream_arrives_complete_and_in_order() {
    const COUNT: u32 = 10_000;
    let up = upstream("a").await;
    let mesh = chain(up.local_addr()).await;
    let mut client = grpc_echo_client(mesh.entry(), AUTHORITY).await;
    let mut stream = within(
        "server stream",
        client.server_stream(StreamRequest {
            count: COUNT,
            payload_size: 64,
            interval_ms: 0,
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let mut expected = 0u64;
    within("10,000 messages", async {
        while let Some(reply) = stream.message().await.unwrap() {
            assert_eq!(reply.seq, expected, "out of order");
            assert_eq!(reply.payload.len(), 64);
            expected += 1;
        }
    })
    .await;
    assert_eq!(expected, u64::from(COUNT));
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
}

// ------------------------------------------------------ proxy-made errors

/// A raw gRPC request (h2c, `content-type: application/grpc`) so the reply
/// can be checked frame by frame, not just as a tonic `Status`.
fn grpc_request(path: &str, extra: &[(&str, &str)]) -> Request<harness::Body> {
    let mut builder = Request::post(path)
        .header("host", AUTHORITY)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    // One empty EchoRequest message: flag 0, length 0.
    builder.body(harness::full(vec![0u8; 5])).unwrap()
}

/// Trailers-only: HTTP 200, `content-type: application/grpc`, `grpc-status`
/// in the headers of a response with no body and no separate trailers.
fn assert_trailers_only(reply: &Reply, code: Code, reason: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(
        reply.header("grpc-status"),
        Some((code as i32).to_string().as_str()),
        "{reply:?}"
    );
    assert_eq!(reply.error(), Some(reason), "{reply:?}");
    assert!(reply.header("grpc-message").is_some(), "{reply:?}");
    assert!(reply.body.is_empty(), "{reply:?}");
    assert!(reply.trailers.is_none(), "{reply:?}");
}

#[tokio::test]
async fn proxy_errors_are_trailers_only_with_the_right_status() {
    let up = upstream("a").await;
    let refused = RefusingPort::new();
    let yaml = render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: blocks
        domains: ["*"]
        routes:
          - name: unary-refused
            match: { grpc: { service: gridmesh.testing.v1.Echo, method: Unary } }
            route: { cluster: refused }
          - name: client-stream-empty
            match: { grpc: { service: gridmesh.testing.v1.Echo, method: ClientStream } }
            route: { cluster: empty }
          - name: bidi-ok
            match: { grpc: { service: gridmesh.testing.v1.Echo, method: Bidi } }
            route: { cluster: up }
clusters:
  - { name: up }
  - { name: empty }
  - { name: refused, connectTimeout: 1s }
endpoints:
  - { cluster: up, endpoints: ${up} }
  - { cluster: refused, endpoints: ${closed} }
"#,
        &[
            ("up", &endpoints(&[up.local_addr()])),
            ("closed", &endpoints(&[refused.addr()])),
        ],
    );
    let p = proxy(&yaml).await;
    let h2 = h2c_client();
    let entry = p.addr("in");

    let cases = [
        (
            "/gridmesh.testing.v1.Echo/ServerStream",
            Code::Unimplemented,
            "route_not_found",
        ),
        (
            "/gridmesh.testing.v1.Echo/Unary",
            Code::Unavailable,
            "upstream_connect_failure",
        ),
        (
            "/gridmesh.testing.v1.Echo/ClientStream",
            Code::Unavailable,
            "no_healthy_upstream",
        ),
    ];
    for (path, code, reason) in cases {
        let reply = h2.request(entry, grpc_request(path, &[])).await;
        assert_trailers_only(&reply, code, reason);
    }

    // The same through tonic: the codes a gRPC client acts on.
    let mut client = grpc_echo_client(entry, AUTHORITY).await;
    let status = client
        .server_stream(StreamRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let status = client.unary(msg("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "upstream_connect_failure");
    let status = client
        .client_stream(futures_util::stream::iter([msg("x")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(up.stats().grpc_requests(), 0);

    // HTTP/1.1 gRPC-looking requests get the same trailers-only answer.
    let reply = harness::http1_client()
        .request(
            entry,
            grpc_request("/gridmesh.testing.v1.Echo/ServerStream", &[]),
        )
        .await;
    assert_trailers_only(&reply, Code::Unimplemented, "route_not_found");
}

// ------------------------------------------------------------- grpc-timeout

fn timed<T>(timeout: Duration, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// A deadline shorter than the upstream's answer ends the call with
/// DEADLINE_EXCEEDED when the deadline passes, not when the upstream answers.
#[tokio::test]
async fn grpc_timeout_is_honoured() {
    let up = upstream("a").await;
    let mesh = chain(up.local_addr()).await;
    let mut client = grpc_echo_client(mesh.entry(), AUTHORITY).await;
    let slow = EchoRequest {
        delay_ms: 5_000,
        ..msg("slow")
    };

    // Raw requests: tonic's client also times out on its own (CANCELLED,
    // "Timeout expired") and would race the proxy; this way the answer can
    // only come from the proxy, as a trailers-only DEADLINE_EXCEEDED.
    let start = Instant::now();
    let reply = h2c_client()
        .request(
            mesh.entry(),
            grpc_request(
                "/gridmesh.testing.v1.Echo/Unary",
                &[("grpc-timeout", "200m")],
            )
            .map(|_| harness::full(encode(&slow))),
        )
        .await;
    let took = start.elapsed();
    assert_trailers_only(&reply, Code::DeadlineExceeded, "deadline_exceeded");
    assert!(took >= Duration::from_millis(150), "ended early: {took:?}");
    assert!(took < Duration::from_secs(2), "ended late: {took:?}");

    // A stream that has started is cut at the deadline with trailers (tonic's
    // own timeout only covers the wait for response headers).
    let mut stream = within(
        "server stream",
        client.server_stream(timed(
            Duration::from_millis(400),
            StreamRequest {
                count: 100,
                payload_size: 1,
                interval_ms: 50,
            },
        )),
    )
    .await
    .unwrap()
    .into_inner();
    let mut received = 0;
    let status = loop {
        match within("stream message", stream.message()).await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended normally after {received} messages"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        (2..20).contains(&received),
        "{received} messages before the deadline"
    );
}

/// The proxy passes on the time left, never more than the client gave.
#[tokio::test]
async fn grpc_timeout_is_propagated() {
    let up = recording_upstream().await;
    let mesh = chain(up.local_addr()).await;
    let mut client = grpc_echo_client(mesh.entry(), AUTHORITY).await;
    // The recording upstream answers grpc-status 0 without a message, which
    // tonic reports as an error for a unary call; only the headers matter here.
    let _ = within(
        "unary",
        client.unary(timed(Duration::from_secs(5), msg("x"))),
    )
    .await;
    let seen = up.last();
    let propagated = parse_grpc_timeout(
        seen.headers
            .get("grpc-timeout")
            .expect("grpc-timeout reached the upstream")
            .to_str()
            .unwrap(),
    );
    assert!(
        propagated <= Duration::from_secs(5),
        "upstream saw {propagated:?}, more than the client's 5s"
    );
    assert!(
        propagated > Duration::from_secs(4),
        "upstream saw {propagated:?}: far less than the time left"
    );

    // A route's max duration shorter than the client's timeout wins.
    let yaml = render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes: [{ name: all, route: { cluster: up, timeouts: { maxDuration: 1s } } }]
clusters: [{ name: up }]
endpoints: [{ cluster: up, endpoints: ${up} }]
"#,
        &[("up", &endpoints(&[up.local_addr()]))],
    );
    let p = proxy(&yaml).await;
    let reply = h2c_client()
        .request(
            p.addr("in"),
            grpc_request(
                "/gridmesh.testing.v1.Echo/Unary",
                &[("grpc-timeout", "30S")],
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let propagated = parse_grpc_timeout(
        up.last()
            .headers
            .get("grpc-timeout")
            .unwrap()
            .to_str()
            .unwrap(),
    );
    assert!(propagated <= Duration::from_secs(1), "{propagated:?}");
}

#[tokio::test]
async fn malformed_grpc_timeout_is_rejected() {
    let up = upstream("a").await;
    let p = proxy(&forward_all(&[up.local_addr()])).await;
    for bad in ["1.5S", "10", "S", "123456789S", "10x", "-5S"] {
        let reply = h2c_client()
            .request(
                p.addr("in"),
                grpc_request("/gridmesh.testing.v1.Echo/Unary", &[("grpc-timeout", bad)]),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{bad:?}: {reply:?}");
        assert_eq!(
            reply.error(),
            Some("bad_grpc_timeout"),
            "{bad:?}: {reply:?}"
        );
        assert_ne!(reply.header("grpc-status"), Some("0"), "{bad:?}");
        assert!(reply.header("grpc-status").is_some(), "{bad:?}: {reply:?}");
    }
    assert_eq!(
        up.stats().grpc_requests(),
        0,
        "no malformed call went upstream"
    );
}

// ------------------------------------------------------------------ helpers

/// One length-prefixed gRPC message.
fn encode(message: &impl prost::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}

fn parse_grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("bad grpc-timeout {value:?}"));
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("bad grpc-timeout unit in {value:?}"),
    }
}
