//! Upstream connection pools: HTTP/1.1 keep-alive connections are reused
//! request after request, HTTP/2 multiplexes concurrent streams on one
//! connection, and concurrency beyond one HTTP/1.1 connection opens more.

use futures_util::future::join_all;
use gridmesh_tests::harness::{
    forward_all, get, h2c_client, http1_client, proxy, upstream, within,
};

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
