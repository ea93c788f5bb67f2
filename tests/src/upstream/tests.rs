//! The sample upstream over real sockets, with real hyper and tonic clients.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::StreamExt;
use gridmesh_proto::testing::echo_client::EchoClient;
use gridmesh_proto::testing::{EchoRequest, StreamRequest};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Channel;

use super::{UpstreamHandle, spawn};

async fn start(name: &str) -> UpstreamHandle {
    spawn("127.0.0.1:0".parse().unwrap(), name).await.unwrap()
}

async fn http1_client(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

async fn http2_client(addr: SocketAddr) -> http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

async fn grpc_client(addr: SocketAddr) -> EchoClient<Channel> {
    EchoClient::connect(format!("http://{addr}")).await.unwrap()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://upstream{path}"))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn http1_echo_streams_body_and_x_headers_back() {
    let upstream = start("echo-a").await;
    let mut client = http1_client(upstream.local_addr()).await;
    let request = Request::post("http://upstream/echo")
        .header("x-tenant", "blue")
        .header("content-type", "text/plain")
        .header("accept", "*/*")
        .body(Full::new(Bytes::from_static(b"hello upstream")))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["x-upstream"], "echo-a");
    assert_eq!(headers["x-echo-x-tenant"], "blue");
    assert_eq!(headers["content-type"], "text/plain");
    assert!(!headers.contains_key("x-echo-accept"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello upstream");
    assert_eq!(upstream.stats().http_requests(), 1);
    assert_eq!(upstream.stats().connections(), 1);
}

#[tokio::test]
async fn status_bytes_and_bad_parameters() {
    let upstream = start("a").await;
    let mut client = http1_client(upstream.local_addr()).await;
    let response = client.send_request(get("/status/503")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-upstream"], "a");
    response.into_body().collect().await.unwrap();

    let response = client.send_request(get("/bytes/100000")).await.unwrap();
    assert_eq!(response.headers()["content-length"], "100000");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 100_000);

    let response = client.send_request(get("/delay/soon")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sse_sends_the_requested_events() {
    let upstream = start("a").await;
    let mut client = http1_client(upstream.local_addr()).await;
    let response = client
        .send_request(get("/sse?count=3&interval_ms=1"))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        "id: 0\ndata: event 0\n\nid: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\n"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_on_the_same_port_with_trailers() {
    let upstream = start("a").await;
    let mut client = http2_client(upstream.local_addr()).await;
    let response = client.send_request(get("/trailers")).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(trailers["x-upstream"], "a");
    assert_eq!(collected.to_bytes(), "trailers follow\n");
}

#[tokio::test]
async fn reset_aborts_without_a_response() {
    let upstream = start("a").await;
    let mut h1 = http1_client(upstream.local_addr()).await;
    assert!(h1.send_request(get("/reset")).await.is_err());

    let mut h2 = http2_client(upstream.local_addr()).await;
    assert!(h2.send_request(get("/reset")).await.is_err());
    // Only the stream was reset: the HTTP/2 connection still serves.
    let response = h2.send_request(get("/echo")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn grpc_unary_echoes_and_fails_on_request() {
    let upstream = start("grpc-a").await;
    let mut client = grpc_client(upstream.local_addr()).await;
    let reply = client
        .unary(EchoRequest {
            payload: b"ping".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload, b"ping");
    assert_eq!(reply.server, "grpc-a");

    let status = client
        .unary(EchoRequest {
            fail_with_code: Code::Unavailable as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(upstream.stats().grpc_requests(), 2);
    assert_eq!(upstream.stats().http_requests(), 0);
}

#[tokio::test]
async fn grpc_streams_number_their_replies() {
    let upstream = start("a").await;
    let mut client = grpc_client(upstream.local_addr()).await;
    let replies: Vec<_> = client
        .server_stream(StreamRequest {
            count: 5,
            payload_size: 3,
            interval_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .map(|reply| reply.unwrap())
        .collect()
        .await;
    assert_eq!(
        replies.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert!(replies.iter().all(|r| r.payload.len() == 3));

    let messages = ["ab", "cd"].map(|p| EchoRequest {
        payload: p.into(),
        ..Default::default()
    });
    let reply = client
        .client_stream(futures_util::stream::iter(messages.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload, b"abcd");

    let replies: Vec<_> = client
        .bidi(futures_util::stream::iter(messages))
        .await
        .unwrap()
        .into_inner()
        .map(|reply| reply.unwrap())
        .collect()
        .await;
    assert_eq!(replies.len(), 2);
    assert_eq!(
        (replies[1].seq, replies[1].payload.as_slice()),
        (1, &b"cd"[..])
    );
}

#[tokio::test]
async fn dropping_the_handle_closes_the_port_and_connections() {
    let upstream = start("a").await;
    let addr = upstream.local_addr();
    let mut client = http1_client(addr).await;
    client.send_request(get("/echo")).await.unwrap();
    drop(upstream);
    assert!(client.send_request(get("/echo")).await.is_err());
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let upstream = start("a").await;
    let mut client = http1_client(upstream.local_addr()).await;
    let slow = tokio::spawn(async move { client.send_request(get("/delay/100")).await });
    // Shut down once the request is in flight.
    let in_flight = async {
        while upstream.stats().http_requests() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), in_flight)
        .await
        .expect("the request reaches the upstream");
    upstream.shutdown().await;
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
}
