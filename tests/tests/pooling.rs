//! Upstream connection pools: HTTP/1.1 keep-alive connections are reused
//! request after request, HTTP/2 multiplexes concurrent streams on one
//! connection up to the upstream's stream limit, and concurrency beyond one
//! HTTP/1.1 connection (or that limit) opens more.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::future::join_all;
use gridmesh_tests::harness::{
    forward_all, get, h2c_client, http1_client, proxy, upstream, within,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

#[tokio::test]
async fn http1_connections_are_kept_alive_and_reused() {
    let block = upstream("block").await;
    let proxy = proxy(&forward_all(&[block.local_addr()])).await;
    let client = http1_client();
    for _ in 0..50 {
        let reply = client.get(proxy.addr("in"), "block", "/echo").await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(block.stats().http_requests(), 50);
    assert_eq!(
        block.stats().connections(),
        1,
        "sequential requests share one pooled upstream connection"
    );
}

/// A response abandoned mid-body leaves the rest of it on the connection:
/// that connection is closed, never handed to the next request, which gets
/// a fresh one; a response read to the end gives its connection back.
#[tokio::test]
async fn a_connection_whose_response_was_abandoned_is_not_reused() {
    let block = upstream("block").await;
    let proxy = proxy(&forward_all(&[block.local_addr()])).await;
    let client = http1_client();
    let reply = client.get(proxy.addr("in"), "block", "/echo").await;
    assert_eq!(reply.status, 200);
    let mut conn = client.connect(proxy.addr("in")).await;
    let mut events = conn
        .send(get("block", "/sse?count=100&interval_ms=20"))
        .await
        .expect("the stream starts")
        .into_body();
    let first = events.frame().await.expect("a first event");
    assert!(first.is_ok(), "{first:?}");
    assert_eq!(
        block.stats().connections(),
        1,
        "the stream took the pooled one"
    );
    drop(events);
    drop(conn);
    for _ in 0..3 {
        let reply = client.get(proxy.addr("in"), "block", "/echo").await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!(
        block.stats().connections(),
        2,
        "one fresh connection, then reused"
    );
}

#[tokio::test]
async fn http2_streams_share_one_upstream_connection() {
    let block = upstream("block").await;
    let proxy = proxy(&forward_all(&[block.local_addr()])).await;
    let conn = h2c_client().connect(proxy.addr("in")).await;
    let replies = within(
        "100 concurrent h2c requests",
        join_all((0..100).map(|_| {
            let mut stream = conn.stream();
            async move {
                let rsp = stream.send(get("block", "/delay/20")).await.unwrap();
                rsp.status()
            }
        })),
    )
    .await;
    assert!(replies.iter().all(|s| *s == 200), "{replies:?}");
    assert_eq!(block.stats().http_requests(), 100);
    assert_eq!(
        block.stats().connections(),
        1,
        "concurrent HTTP/2 requests are multiplexed on one upstream connection"
    );
}

/// An HTTP/2 upstream (h2c) that lets a client open two streams at a time
/// per connection and holds every answer until released.
struct TwoStreamUpstream {
    addr: std::net::SocketAddr,
    /// Accepted connections.
    connections: Arc<AtomicUsize>,
    /// Requests that have arrived.
    arrived: watch::Receiver<usize>,
    release: watch::Sender<bool>,
}

async fn upstream_allowing_two_streams() -> TwoStreamUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (arrive, arrived) = watch::channel(0);
    let (release, released) = watch::channel(false);
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            let (arrive, released) = (arrive.clone(), released.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<Incoming>| {
                    arrive.send_modify(|n| *n += 1);
                    let mut released = released.clone();
                    async move {
                        let _ = released.wait_for(|go| *go).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(2)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TwoStreamUpstream {
        addr,
        connections,
        arrived,
        release,
    }
}

/// Streams beyond what the upstream's SETTINGS allow on one connection go
/// out on another connection, instead of queueing inside the HTTP/2 client:
/// all six are at the upstream at once (before, two were, the rest queued).
#[tokio::test]
async fn http2_streams_beyond_the_peers_limit_open_another_connection() {
    let TwoStreamUpstream {
        addr,
        connections,
        mut arrived,
        release,
    } = upstream_allowing_two_streams().await;
    let proxy = proxy(&forward_all(&[addr])).await;
    let conn = h2c_client().connect(proxy.addr("in")).await;
    let calls = tokio::spawn(join_all((0..6).map(|_| {
        let mut stream = conn.stream();
        async move { stream.send(get("block", "/")).await.unwrap().status() }
    })));
    within(
        "six streams in at the upstream at once",
        arrived.wait_for(|n| *n == 6),
    )
    .await
    .unwrap();
    release.send(true).unwrap();
    let replies = within("the six replies", calls).await.unwrap();
    assert!(replies.iter().all(|s| *s == 200), "{replies:?}");
    assert_eq!(
        connections.load(Ordering::Relaxed),
        3,
        "six concurrent streams, two per connection"
    );
}

#[tokio::test]
async fn concurrent_http1_requests_open_more_connections_then_reuse_them() {
    let block = upstream("block").await;
    let proxy = proxy(&forward_all(&[block.local_addr()])).await;
    let client = http1_client();
    let wave = || {
        join_all((0..8).map(|_| async {
            client
                .get(proxy.addr("in"), "block", "/delay/50")
                .await
                .status
        }))
    };
    let first = within("first wave", wave()).await;
    assert!(first.iter().all(|s| *s == 200), "{first:?}");
    let opened = block.stats().connections();
    assert!(
        (2..=8).contains(&opened),
        "HTTP/1.1 carries one request at a time, so concurrency opens connections: {opened}"
    );
    let second = within("second wave", wave()).await;
    assert!(second.iter().all(|s| *s == 200), "{second:?}");
    assert_eq!(
        block.stats().connections(),
        opened,
        "the second wave reuses the pooled connections"
    );
}

/// An address whose SYNs go unanswered, like a blackholed host: a listener
/// with a zero backlog whose accept queue is already full (Linux then drops
/// new SYNs). Unreachable for as long as it is alive.
struct Unreachable {
    addr: std::net::SocketAddr,
    _listener: socket2::Socket,
    _queued: Vec<std::net::TcpStream>,
}

fn unreachable_address() -> Unreachable {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    while let Ok(stream) =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
    {
        queued.push(stream);
        assert!(queued.len() < 16, "the accept queue never filled up");
    }
    Unreachable {
        addr,
        _listener: listener,
        _queued: queued,
    }
}

#[tokio::test]
async fn requests_queued_behind_an_unreachable_http2_endpoint_fail_within_one_connect_timeout() {
    let unreachable = unreachable_address();
    let proxy = proxy(&gridmesh_tests::harness::render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes: [{ name: all, route: { cluster: up } }]
clusters: [{ name: up, protocol: HTTP2, connectTimeout: 0.3s }]
endpoints: [{ cluster: up, endpoints: [{ address: "${up}" }] }]
"#,
        &[("up", &unreachable.addr)],
    ))
    .await;
    let conn = h2c_client().connect(proxy.addr("in")).await;
    let started = tokio::time::Instant::now();
    let replies = within(
        "10 requests to an unreachable endpoint",
        join_all((0..10).map(|_| {
            let mut stream = conn.stream();
            async move {
                let rsp = stream.send(get("up", "/")).await.unwrap();
                gridmesh_tests::harness::collect(rsp).await.unwrap()
            }
        })),
    )
    .await;
    for reply in &replies {
        assert_eq!(reply.status, 503);
        assert_eq!(reply.error(), Some("upstream_connect_timeout"));
    }
    // One connect timeout (plus scheduling), not ten of them in a row.
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
}
