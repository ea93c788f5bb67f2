//! Downstream connection idleness: the listener's `idleTimeout` closes a
//! connection that has no request in flight and sends nothing, which bounds
//! both idle keep-alive connections and clients that stall in the middle of
//! a request head (slowloris), but never a quiet stream still being served.

use std::time::Duration;

use gridmesh_tests::harness::{
    collect, get, http1_client, proxy, raw_http1_until_close, raw_status, render, upstream, within,
};
use tokio::time::Instant;

/// Everything to one upstream, with a 200 ms listener idle timeout.
fn config(upstream: std::net::SocketAddr) -> String {
    render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt, idleTimeout: 0.2s }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes: [{ name: all, route: { cluster: up } }]
clusters: [{ name: up }]
endpoints: [{ cluster: up, endpoints: [{ address: "${up}" }] }]
"#,
        &[("up", &upstream)],
    )
}

#[tokio::test]
async fn a_client_stalled_mid_request_head_is_disconnected() {
    let block = upstream("block").await;
    let proxy = proxy(&config(block.local_addr())).await;
    let started = Instant::now();
    let response = raw_http1_until_close(
        proxy.addr("in"),
        "GET /echo HTTP/1.1\r\nhost: block\r\nx-slow: ",
    )
    .await;
    assert!(
        raw_status(&response).is_none(),
        "no response to half a request: {response:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after one to two idle periods, took {:?}",
        started.elapsed()
    );
    assert_eq!(block.stats().requests(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let block = upstream("block").await;
    let proxy = proxy(&config(block.local_addr())).await;
    let mut conn = http1_client().connect(proxy.addr("in")).await;
    let reply = collect(conn.send(get("block", "/echo")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let idle_since = Instant::now();
    conn.closed().await;
    // The watchdog looks once per 0.2 s period, counting from the
    // connection's start: it closes one to two periods in, so the idle time
    // since the reply is a period, less the exchange, up to two. Closing at
    // once would be a bug.
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(100) && idle < Duration::from_secs(2),
        "closed after {idle:?} idle, the timeout is 0.2 s"
    );
    assert!(conn.send(get("block", "/echo")).await.is_err());
}

#[tokio::test]
async fn a_quiet_stream_in_flight_is_not_cut() {
    let block = upstream("block").await;
    let proxy = proxy(&config(block.local_addr())).await;
    // Three events 500 ms apart: the client sends nothing for 1.5 s, more
    // than twice the idle timeout, while the response is still streaming.
    let reply = within(
        "slow SSE stream",
        http1_client().get(proxy.addr("in"), "block", "/sse?count=3&interval_ms=500"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text().matches("data:").count(), 3, "{}", reply.text());
}
