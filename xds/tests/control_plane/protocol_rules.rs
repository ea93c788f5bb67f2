//! Rules of the xDS protocol document (and go-control-plane) that a
//! scripted client checks one by one: malformed requests get a status, one
//! client cannot stall the others, stale SotW requests are ignored, an
//! empty SotW subscription after named ones means nothing, and delta
//! unsubscriptions the wildcard still covers are answered.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gridmesh_proto::discovery::{DeltaDiscoveryRequest, DiscoveryRequest};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::Code;

use crate::fixtures;
use crate::harness::*;

async fn started() -> Harness {
    Harness::start(&fixtures::as_refs(&fixtures::base())).await
}

const ADS: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService";
/// tonic's default limit on a decoded message.
const DECODE_LIMIT: usize = 4 * 1024 * 1024;

/// One raw gRPC call: a single message frame holding `payload`, then the
/// end of the request stream. Returns grpc-status and grpc-message, from
/// trailers-only headers or from trailers.
async fn raw_call(addr: SocketAddr, method: &str, payload: Vec<u8>) -> (String, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut frame = vec![0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    let request = http::Request::post(format!("http://{addr}{ADS}/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(frame)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), async {
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let trailers = body
            .collect()
            .await
            .ok()
            .and_then(|b| b.trailers().cloned());
        let pick = |name: &str| {
            parts
                .headers
                .get(name)
                .or_else(|| trailers.as_ref()?.get(name))
                .map(|v| v.to_str().unwrap_or("").to_string())
        };
        (
            pick("grpc-status").expect("a grpc-status"),
            pick("grpc-message").unwrap_or_default(),
        )
    })
    .await;
    response.expect("an answer within 10 s")
}

/// A length-delimited field: tag, varint length, bytes.
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128);
    let mut out = vec![(number << 3) | 2, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

#[tokio::test]
async fn malformed_requests_end_the_stream_with_a_status_naming_the_problem() {
    let h = started().await;
    let addr = h.control.xds_addr();
    let type_url = field(4, C.as_bytes());
    let cases: Vec<(&str, Vec<u8>, Code)> = vec![
        (
            "not protobuf",
            vec![0xff, 0xff, 0xff, 0xff, 0xff],
            Code::Internal,
        ),
        // type_url (field 4) sent as a varint.
        ("a wrong wire type", vec![4 << 3, 1], Code::Internal),
        (
            "invalid UTF-8 in a string",
            field(4, &[0xff, 0xfe, 0x80]),
            Code::Internal,
        ),
        (
            "a truncated message",
            type_url[..type_url.len() - 5].to_vec(),
            Code::Internal,
        ),
        (
            "a message over the decode limit",
            [
                type_url.clone(),
                field(1, b"x").repeat(DECODE_LIMIT / 3 + 1),
            ]
            .concat(),
            Code::ResourceExhausted,
        ),
    ];
    for method in ["StreamAggregatedResources", "DeltaAggregatedResources"] {
        for (what, payload, code) in &cases {
            let (status, message) = raw_call(addr, method, payload.clone()).await;
            assert_eq!(
                status,
                (*code as i32).to_string(),
                "{method}, {what}: {message}"
            );
            assert!(!message.is_empty(), "{method}, {what}: no grpc-message");
        }
    }
    // The server is unharmed: a well-formed stream is served.
    let mut client = h.delta("after").await;
    client.subscribe(C, &[]);
    assert_eq!(names(&client.recv().await), ["a", "b"]);
}

/// A subscription to 100,000 names (the most a stream may hold per type)
/// used to take time quadratic in the names and stall every other stream
/// and `/status` meanwhile; now it is linear, others are served while it
/// is handled, and one name more ends the stream.
#[tokio::test]
async fn one_client_cannot_stall_the_control_plane() {
    let h = started().await;
    let mut hog = h.delta("hog").await;
    let count = 100_000;
    hog.send(DeltaDiscoveryRequest {
        type_url: C.into(),
        resource_names_subscribe: (0..count).map(|i| format!("n{i:06}")).collect(),
        ..Default::default()
    });
    // Meanwhile a sidecar connects and gets its config (within the
    // harness's response timeout), and the status page answers.
    let mut other = h.delta("other").await;
    other.subscribe(C, &[]);
    assert_eq!(names(&other.recv().await), ["a", "b"]);
    tokio::time::timeout(RESPONSE_TIMEOUT, h.status())
        .await
        .expect("/status answers meanwhile");
    // The hog is answered too: none of its names exist.
    let mut removed = 0;
    while removed < count {
        let r = hog.recv().await;
        assert!(r.resources.is_empty());
        removed += r.removed_resources.len();
    }
    assert_eq!(removed, count);
    let status = h.status().await;
    let view = type_view(client_view(&status, "hog"), "cluster");
    assert_eq!(view.subscribed.count, count);
    assert!(view.subscribed.names.len() < count, "the view is bounded");
    // One more is past the bound.
    hog.subscribe(C, &["one-too-many"]);
    let error = hog.ended_with_error().await;
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    assert!(error.message().contains("100000"), "{error:?}");
}

#[tokio::test]
async fn sotw_ignores_requests_with_a_stale_nonce() {
    let h = started().await;
    let mut client = h.sotw("node-1").await;
    client.request(C, &["a"]);
    let first = client.recv().await;
    client.ack(&first, &["a"]);
    h.write("clusters.yaml", &fixtures::clusters_with_timeout("a", "2s"));
    let second = client.recv().await;
    assert_ne!(second.nonce, first.nonce);
    // Both predate the latest response, which supersedes them: the late
    // answer to the first response, and one with no nonce at all, though
    // each changes the subscription.
    client.send(DiscoveryRequest {
        version_info: first.version_info.clone(),
        type_url: C.into(),
        response_nonce: first.nonce.clone(),
        resource_names: vec!["b".into()],
        ..Default::default()
    });
    client.request(C, &["b"]);
    // Proof both were read: a request for another type on the same stream
    // is answered, and no cluster response came before it.
    client.request(E, &["a"]);
    let next = client.recv().await;
    assert_eq!(next.type_url, E, "a stale request was answered: {next:?}");
    // The same change with the latest nonce applies.
    client.ack(&second, &["b"]);
    let r = client.recv().await;
    assert_eq!((r.type_url.as_str(), sotw_names(&r)), (C, vec!["b".into()]));
}

#[tokio::test]
async fn sotw_empty_names_after_named_ones_unsubscribe_from_all() {
    let h = started().await;
    let mut client = h.sotw("node-1").await;
    // Never named: empty is the legacy wildcard, and stays so.
    client.request(C, &[]);
    let all = client.recv().await;
    assert_eq!(sotw_names(&all), ["a", "b"]);
    client.ack(&all, &[]);
    client.ack(&all, &["a"]);
    let only_a = client.recv().await;
    assert_eq!(sotw_names(&only_a), ["a"]);
    // Named once: empty now means nothing.
    client.ack(&only_a, &[]);
    let nothing = client.recv().await;
    assert_eq!(
        sotw_names(&nothing),
        Vec::<String>::new(),
        "empty after named means unsubscribed"
    );
    client.ack(&nothing, &[]);
    // And `*` named explicitly is the wildcard again.
    client.ack(&nothing, &["*"]);
    let all_again = client.recv().await;
    assert_eq!(sotw_names(&all_again), ["a", "b"]);
}

#[tokio::test]
async fn delta_unsubscribing_a_name_the_wildcard_covers_is_answered() {
    let h = started().await;
    let mut client = h.delta("node-1").await;
    client.subscribe(C, &["*", "a", "nope"]);
    let initial = client.recv_acked(2).await;
    assert_eq!(names(&initial[0]), ["a", "b"]);
    assert_eq!(removed(&initial[1]), ["nope"]);
    // The client cannot tell whether the wildcard still gives it `a`, or
    // whether `nope` exists: it is told, the resource again or its removal.
    client.unsubscribe(C, &["a", "nope"]);
    let again = client.recv_acked(2).await;
    assert_eq!((names(&again[0]), removed(&again[0])), (vec!["a"], vec![]));
    assert_eq!(
        (names(&again[1]), removed(&again[1])),
        (vec![], vec!["nope"])
    );
    // A phantom unsubscription (never subscribed) changes nothing; proof
    // it was read: the subscription after it is answered first.
    client.unsubscribe(C, &["never"]);
    client.subscribe(E, &["a"]);
    let next = client.recv().await;
    assert_eq!((next.type_url.as_str(), names(&next)), (E, vec!["a"]));
}
